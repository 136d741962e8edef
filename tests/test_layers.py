"""The import layers, checked over the source with `ast`: lower layers never import higher ones.

    models ← notifications ← runtime base ← resolvers ← schema ← composition root (the rest of uidhub)

The runtime base (settings, the database and its sessions, transaction retries) sits
above notifications: a write transaction commits the buffered log (notifications.log)
and wakes subscribers; the operations above use it.

Imports inside functions count too (an import moved into a function still makes
a cycle); only imports under `if TYPE_CHECKING:` are exempt, since they never
run. Imports inside functions are allowed only with a `# lazy: <why>` comment (the
GraphQL types that refer to each other, CLI commands that need not load the app).
The folders are installed as `uidhub.<folder>` (pyproject's package-dir),
so a bare `import schema` would only work from the repository: it is refused.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAPPED = ("models", "notifications", "resolvers", "schema")
BASE = ("uidhub.settings", "uidhub.db", "uidhub.transactions", "uidhub.runtime")
LAYERS = {"models": 0, "notifications": 1, "base": 2, "resolvers": 3, "schema": 4, "root": 5}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts if parts[0] == "uidhub" else ["uidhub", *parts])


def layer_of(module: str) -> str:
    if module in BASE or any(module.startswith(b + ".") for b in BASE):
        return "base"
    second = module.split(".")[1] if module.count(".") else ""
    return second if second in MAPPED else "root"


def sources() -> list[Path]:
    files = [p for folder in (*MAPPED, "uidhub") for p in (ROOT / folder).rglob("*.py")]
    return sorted(p for p in files if "migrations" not in p.parts)


def imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every project import that runs (TYPE_CHECKING blocks left out)."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for orelse in child.orelse:
                    visit(orelse)
                continue
            if isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.append((child.lineno, child.module))
            elif isinstance(child, ast.Import):
                found.extend((child.lineno, alias.name) for alias in child.names)
            visit(child)

    visit(tree)
    return [(line, m) for line, m in found if m.split(".")[0] in ("uidhub", *MAPPED)]


def violations_in(path: Path, source: str) -> list[str]:
    here = module_name(path)
    problems = []
    for line, target in imports(ast.parse(source)):
        where = f"{path.relative_to(ROOT)}:{line}"
        if target.split(".")[0] in MAPPED:
            problems.append(f"{where}: bare `{target}` (import it as uidhub.{target})")
        elif LAYERS[layer_of(target)] > LAYERS[layer_of(here)]:
            problems.append(f"{where}: {layer_of(here)} module {here} imports {layer_of(target)} module {target}")
    return problems


def test_lower_layers_never_import_higher_ones() -> None:
    problems = [p for path in sources() for p in violations_in(path, path.read_text(encoding="utf-8"))]
    assert problems == []


@pytest.mark.parametrize(
    ("folder", "source"),
    [
        ("models", "from uidhub.resolvers.actor import Actor\n"),
        ("notifications", "from uidhub.db import Database\n"),
        ("notifications", "def f():\n    from uidhub.schema.context import Context\n"),
        ("resolvers", "import uidhub.app\n"),
        ("schema", "from uidhub import cli\n"),
        ("uidhub", "from schema.accounts import EndUser\n"),
    ],
)
def test_the_check_catches_an_upward_import(folder: str, source: str) -> None:
    """Each rule fails on a planted violation (so the test above could fail)."""
    assert violations_in(ROOT / folder / "planted.py", source) != []


def undocumented_lazy_imports(path: Path, source: str) -> list[str]:
    """Project imports inside functions without a `# lazy: <why>` comment on the line or the line above."""
    lines = source.split("\n")
    problems = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for inner in ast.walk(node):
            if isinstance(inner, ast.Import | ast.ImportFrom):
                module = inner.module if isinstance(inner, ast.ImportFrom) else inner.names[0].name
                if not module or module.split(".")[0] not in ("uidhub", *MAPPED):
                    continue
                here = lines[inner.lineno - 1]
                above = lines[inner.lineno - 2] if inner.lineno > 1 else ""
                if "# lazy:" not in here and not above.strip().startswith("# lazy:"):
                    problems.append(f"{path.relative_to(ROOT)}:{inner.lineno}: {here.strip()}")
    return problems


def test_imports_inside_functions_say_why() -> None:
    """An import moved into a function hides a cycle unless it is a documented lazy one."""
    problems = [p for path in sources() for p in undocumented_lazy_imports(path, path.read_text(encoding="utf-8"))]
    assert problems == []


def test_an_undocumented_lazy_import_is_caught() -> None:
    source = "def f():\n    from uidhub.resolvers import alerts\n"
    assert undocumented_lazy_imports(ROOT / "resolvers" / "planted.py", source) != []
    documented = "def f():\n    from uidhub.resolvers import alerts  # lazy: a reason\n"
    assert undocumented_lazy_imports(ROOT / "resolvers" / "planted.py", documented) == []


def test_type_checking_imports_are_exempt() -> None:
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from uidhub.app import AppState\n"
    assert imports(ast.parse(source)) == []

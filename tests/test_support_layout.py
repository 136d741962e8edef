"""The layout of the test helpers (issue 18): shared helpers live in tests/support, once.

No test module defines its own `link()` or `free_port()` (use tests.support.accounts.link,
tests.support.live.link_over_http and tests.support.net.free_port), and no module of
tests/support imports tests.conftest (fixtures build on the helpers, not the other way round).
Checked over the source with `ast`, imports inside functions included.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
SHARED = ("link", "free_port")


def defined_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 0:
                found.add(module)
                found.update(f"{module}.{alias.name}" for alias in node.names)
            else:  # relative: `from .. import conftest` or `from ..conftest import x`
                found.add("tests." + module if module else "tests")
                found.update(f"tests.{module + '.' if module else ''}{alias.name}" for alias in node.names)
    return found


def test_no_test_module_defines_a_shared_helper() -> None:
    offenders = {
        f"{path.name}: def {name}"
        for path in sorted(TESTS.glob("test_*.py"))
        for name in defined_functions(path) & set(SHARED)
    }
    assert offenders == set(), offenders


def test_support_never_imports_conftest() -> None:
    support = sorted((TESTS / "support").glob("*.py"))
    assert support, "tests/support is missing"
    offenders = {
        f"{path.name}: {module}"
        for path in support
        for module in imported_modules(path)
        if module == "conftest" or module.startswith(("tests.conftest", "conftest."))
    }
    assert offenders == set(), offenders


def test_the_checks_see_what_they_look_for(tmp_path: Path) -> None:
    sample = tmp_path / "test_sample.py"
    sample.write_text(
        "from tests.conftest import Api\n"
        "def free_port():\n    return 0\n"
        "async def f():\n    from tests import conftest\n    async def link():\n        pass\n",
        encoding="utf-8",
    )
    assert defined_functions(sample) & set(SHARED) == {"free_port", "link"}
    assert {"tests.conftest", "tests.conftest.Api"} <= imported_modules(sample)

"""Type-check uidhub as it is installed: `uidhub.schema`, `uidhub.models`, ... (pyproject's package-dir).

The four folders are mapped into the `uidhub` namespace at install time, and
mypy cannot follow setuptools' editable import hook. So this lays the
installed package out from symlinks in a temporary folder (uidhub/* and the
four mapped folders) and runs `mypy -p uidhub` there with the project's
configuration. Errors name `uidhub/schema/x.py` for the repository's `schema/x.py`.

    .venv/bin/python scripts/typecheck.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAPPED = ("schema", "models", "resolvers", "notifications")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="uidhub-mypy-") as tmp:
        package = Path(tmp) / "uidhub"
        package.mkdir()
        for entry in (ROOT / "uidhub").iterdir():
            if entry.name != "__pycache__":
                (package / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
        for name in MAPPED:
            (package / name).symlink_to(ROOT / name, target_is_directory=True)
        command = [
            sys.executable, "-m", "mypy",
            "--config-file", str(ROOT / "pyproject.toml"),
            "--cache-dir", str(ROOT / ".mypy_cache"),
            "-p", "uidhub",
        ]  # fmt: skip
        return subprocess.call(command, cwd=tmp)


if __name__ == "__main__":
    sys.exit(main())

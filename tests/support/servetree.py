"""Serve `uidhub.asgi:app` from another checkout of the repository (a baseline revision) with this virtualenv.

The installed package maps the top-level folders schema/, resolvers/, models/ and notifications/ to
`uidhub.schema` etc. through setuptools' editable finder, which always points at the tree that was
installed. PYTHONPATH alone would load the baseline's `uidhub/` but this tree's `uidhub.schema`; a
finder placed first on `sys.meta_path` maps all five packages to the other tree instead.

    python -m tests.support.servetree TREE PORT
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

PACKAGES = {
    "uidhub": "uidhub",
    "uidhub.schema": "schema",
    "uidhub.resolvers": "resolvers",
    "uidhub.models": "models",
    "uidhub.notifications": "notifications",
}


class TreeFinder(importlib.abc.MetaPathFinder):
    """Finds the five packages in `tree`; their modules are found through the packages' own paths."""

    def __init__(self, tree: Path) -> None:
        self.tree = tree

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        folder = PACKAGES.get(fullname)
        if folder is None:
            return None
        directory = self.tree / folder
        return importlib.util.spec_from_file_location(
            fullname, directory / "__init__.py", submodule_search_locations=[str(directory)]
        )


def main() -> None:
    import logging

    tree, port = Path(sys.argv[1]).resolve(), int(sys.argv[2])
    sys.meta_path.insert(0, TreeFinder(tree))
    import uvicorn

    import uidhub

    assert Path(uidhub.__file__ or "").resolve().is_relative_to(tree), uidhub.__file__
    logging.disable(logging.WARNING)
    uvicorn.run("uidhub.asgi:app", host="127.0.0.1", port=port, log_level="error", access_log=False)


if __name__ == "__main__":
    main()

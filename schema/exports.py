"""Export tasks (filled in by the exports work)."""

from __future__ import annotations


class ExportQueries:
    """Root query fields of the exports domain."""


class ExportMutations:
    """Root mutation fields of the exports domain."""


class ExportSubscriptions:
    """Root subscription fields of the exports domain."""

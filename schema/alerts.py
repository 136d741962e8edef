"""Alert events, notifications, credit alerts and the live subscriptions (filled in by the alerts work)."""

from __future__ import annotations


class AlertQueries:
    """Root query fields of the alerts domain."""


class AlertMutations:
    """Root mutation fields of the alerts domain."""


class AlertSubscriptions:
    """Root subscription fields of the alerts domain."""

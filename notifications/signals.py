"""What background work reports for measurement: email and webhook attempts, live events, finished exports.

Lower layers call these functions without knowing who listens; the metrics
module of the composition root (uidhub.metrics) connects its counters when
metrics are on. Nothing is connected otherwise, and a call costs one check.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime


@dataclass
class Listeners:
    email_attempted: Callable[[bool, bool], None] | None = None
    export_finished: Callable[[str, datetime | None], None] | None = None
    event_handed_over: Callable[[datetime | None], None] | None = None
    webhook_attempted: Callable[[bool, bool], None] | None = None


#: The process's listeners (set by uidhub.metrics when metrics are on).
LISTENERS = Listeners()


def email_attempted(sent: bool, final: bool) -> None:
    """One SMTP attempt recorded by the outbox; `final` marks a failure that ended in FAILED."""
    if LISTENERS.email_attempted is not None:
        LISTENERS.email_attempted(sent, final)


def export_finished(status: str, started_at: datetime | None) -> None:
    """An export task finished with `status` (it started at `started_at`)."""
    if LISTENERS.export_finished is not None:
        LISTENERS.export_finished(status, started_at)


def event_handed_over(occurred_at: datetime | None) -> None:
    """A live event leaves the feed for its subscriber (stored at `occurred_at`)."""
    if LISTENERS.event_handed_over is not None:
        LISTENERS.event_handed_over(occurred_at)


def webhook_attempted(delivered: bool, gave_up: bool) -> None:
    """One webhook POST recorded by the sender; `gave_up` marks a failure that ended the delivery FAILED."""
    if LISTENERS.webhook_attempted is not None:
        LISTENERS.webhook_attempted(delivered, gave_up)

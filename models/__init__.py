"""SQLAlchemy tables and the pure domain rules."""

from uidhub.models.base import Base
from uidhub.models.tables import (
    Account,
    AlertEvent,
    ApiToken,
    AuditEntry,
    CreditAlert,
    EmailNotification,
    ExportTask,
    IdempotencyRecord,
    Instance,
    LedgerEntry,
    Partner,
    QuotaAdjustment,
    QuotaPool,
    WebhookAttempt,
    WebhookCursor,
    WebhookDelivery,
    WebhookEndpoint,
)

__all__ = [
    "Account",
    "AlertEvent",
    "ApiToken",
    "AuditEntry",
    "Base",
    "CreditAlert",
    "EmailNotification",
    "ExportTask",
    "IdempotencyRecord",
    "Instance",
    "LedgerEntry",
    "Partner",
    "QuotaAdjustment",
    "QuotaPool",
    "WebhookAttempt",
    "WebhookCursor",
    "WebhookDelivery",
    "WebhookEndpoint",
]

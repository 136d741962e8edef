"""SQLAlchemy tables and the pure domain rules."""

from models.base import Base
from models.listing import AccountListing, PartnerAccountCounters
from models.tables import (
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
    "AccountListing",
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
    "PartnerAccountCounters",
    "QuotaAdjustment",
    "QuotaPool",
    "WebhookAttempt",
    "WebhookCursor",
    "WebhookDelivery",
    "WebhookEndpoint",
]

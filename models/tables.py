"""The tables. Money is integer cents in BIGINT columns, never NUMERIC or REAL."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from uidhub.models import rules
from uidhub.models.base import Base, BigId, StoredEnum, UTCDateTime, utcnow
from uidhub.models.enums import (
    AccountStatus,
    AccountType,
    AlertKind,
    AlertSeverity,
    AlertState,
    AuditAction,
    BillingMethod,
    CreditControlStatus,
    ExportFormat,
    ExportKind,
    ExportStatus,
    Language,
    LedgerKind,
    NotificationStatus,
    OperationMethod,
    PartnerKind,
    PaygFreezeStatus,
    PendingActionStatus,
    PurchaseControl,
    QuotaOperationType,
    Role,
    ShutdownPolicy,
    TemporaryCreditStatus,
    ThresholdAction,
    ThresholdKind,
    WebhookDeliveryStatus,
)


def enum_col(enum: type[StrEnum]) -> StoredEnum:
    """Enums stored as their names in a VARCHAR: portable, and migrations need no ALTER TYPE."""
    return StoredEnum(enum, native_enum=False, create_constraint=False, length=32, validate_strings=True)


Cents = BigInteger


class Partner(Base):
    __tablename__ = "partners"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    uid: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[PartnerKind] = mapped_column(enum_col(PartnerKind))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("partners.id"))
    alert_emails: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiToken(Base):
    """A bearer token: who acts (operator), for which partner, with which role and method."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    partner_id: Mapped[int] = mapped_column(ForeignKey("partners.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    #: The token's first characters ("uh_" and 8 more, 48 random bits): shown by `uidhub list-tokens` and
    #: accepted by `uidhub revoke-token`; too short to be used as the token. NULL for tokens older than it.
    prefix: Mapped[str | None] = mapped_column(String(16), index=True)
    role: Mapped[Role] = mapped_column(enum_col(Role))
    method: Mapped[OperationMethod] = mapped_column(enum_col(OperationMethod))
    operator_uid: Mapped[str] = mapped_column(String(64))
    operator_name: Mapped[str] = mapped_column(String(200))
    is_ram: Mapped[bool] = mapped_column(Boolean, default=False)
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class QuotaPool(Base):
    """The credit line of a master or standalone account, shared by its sub-accounts.

    The shutdown policy and the credit control status live here too: both
    belong to the pool owner and apply to every account spending from it.
    """

    __tablename__ = "quota_pools"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    partner_id: Mapped[int] = mapped_column(ForeignKey("partners.id"), index=True)
    amount_cents: Mapped[int] = mapped_column(Cents, default=0)
    deducted_cents: Mapped[int] = mapped_column(Cents, default=0)
    undeducted_cents: Mapped[int] = mapped_column(Cents, default=0)
    quota_created: Mapped[bool] = mapped_column(Boolean, default=False)
    warning_percent: Mapped[int | None] = mapped_column(Integer)
    # Which side of the warning level the pool was on at the last evaluation.
    warning_below: Mapped[bool] = mapped_column(Boolean, default=False)
    shutdown_policy: Mapped[ShutdownPolicy] = mapped_column(
        enum_col(ShutdownPolicy), default=ShutdownPolicy.IMMEDIATE_STOP
    )
    delay_credit_cents: Mapped[int] = mapped_column(Cents, default=0)
    credit_control_status: Mapped[CreditControlStatus] = mapped_column(
        enum_col(CreditControlStatus), default=CreditControlStatus.NORMAL
    )
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    #: How many alert rules watch this pool: its thresholds plus the enabled credit alerts of its accounts. Kept
    #: by triggers on quota_thresholds and credit_alerts (migration 0006), never written by the ORM: a balance
    #: change reads it from its own UPDATE … RETURNING (the locked, current row) and skips the alert rules'
    #: query when it is 0, as it is for most pools.
    alert_rules: Mapped[int] = mapped_column(Integer, server_default="0")

    @property
    def available_cents(self) -> int:
        return rules.available(self.amount_cents, self.deducted_cents, self.undeducted_cents)


class Account(Base):
    """A linked end-user account (UID)."""

    __tablename__ = "accounts"
    __table_args__ = (
        Index("ix_accounts_partner_linked", "partner_id", "linked_at", "uid"),
        Index("ix_accounts_partner_uid", "partner_id", "uid"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    partner_id: Mapped[int] = mapped_column(ForeignKey("partners.id"))
    uid: Mapped[str] = mapped_column(String(64), unique=True)
    account_type: Mapped[AccountType] = mapped_column(enum_col(AccountType))
    nickname: Mapped[str | None] = mapped_column(String(150))
    business_manager: Mapped[str | None] = mapped_column(String(50))
    remarks: Mapped[str | None] = mapped_column(Text)
    email: Mapped[str | None] = mapped_column(String(254))
    status: Mapped[AccountStatus] = mapped_column(enum_col(AccountStatus), default=AccountStatus.NORMAL)
    linked_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    master_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id"), index=True)
    pool_id: Mapped[int] = mapped_column(ForeignKey("quota_pools.id"), index=True)
    payg_freeze: Mapped[PaygFreezeStatus] = mapped_column(enum_col(PaygFreezeStatus), default=PaygFreezeStatus.NORMAL)
    purchase_control: Mapped[PurchaseControl] = mapped_column(enum_col(PurchaseControl), default=PurchaseControl.NORMAL)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    master: Mapped[Account | None] = relationship(remote_side=[id], lazy="raise")
    pool: Mapped[QuotaPool] = relationship(lazy="raise")


class QuotaAdjustment(Base):
    __tablename__ = "quota_adjustments"
    __table_args__ = (Index("ix_quota_adjustments_pool_time", "pool_id", "occurred_at", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    pool_id: Mapped[int] = mapped_column(ForeignKey("quota_pools.id"))
    operation_type: Mapped[QuotaOperationType] = mapped_column(enum_col(QuotaOperationType))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    before_cents: Mapped[int] = mapped_column(Cents)
    value_cents: Mapped[int] = mapped_column(Cents)
    after_cents: Mapped[int] = mapped_column(Cents)
    method: Mapped[OperationMethod] = mapped_column(enum_col(OperationMethod))
    operator_uid: Mapped[str | None] = mapped_column(String(64))
    operator_name: Mapped[str | None] = mapped_column(String(200))
    operator_is_ram: Mapped[bool] = mapped_column(Boolean, default=False)
    operator_role: Mapped[Role | None] = mapped_column(enum_col(Role))
    #: Why, when the change has one: a temporary credit's grant or revert (resolvers.tempcredit).
    reason: Mapped[str | None] = mapped_column(Text)


class TemporaryCredit(Base):
    """A raise of a pool's amount that the system lowers again at `ends_at` (resolvers.tempcredit).

    The durable schedule: the background worker reverts ACTIVE rows whose
    `ends_at` has passed, exactly once (the status moves away from ACTIVE in
    the revert's own transaction, under the pool's lock).
    """

    __tablename__ = "temporary_credits"
    __table_args__ = (
        # The worker's due scan, and the pool's active grants (Quota.temporaryCredits).
        Index("ix_temporary_credits_status_ends", "status", "ends_at"),
        Index("ix_temporary_credits_pool_status", "pool_id", "status"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    partner_id: Mapped[int] = mapped_column(ForeignKey("partners.id"))
    pool_id: Mapped[int] = mapped_column(ForeignKey("quota_pools.id"))
    #: The pool owner the grant was made on (the audit entries' account).
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    amount_cents: Mapped[int] = mapped_column(Cents)
    ends_at: Mapped[datetime] = mapped_column(UTCDateTime)
    reason: Mapped[str] = mapped_column(Text)
    status: Mapped[TemporaryCreditStatus] = mapped_column(
        enum_col(TemporaryCreditStatus), default=TemporaryCreditStatus.ACTIVE
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    method: Mapped[OperationMethod] = mapped_column(enum_col(OperationMethod))
    operator_uid: Mapped[str | None] = mapped_column(String(64))
    operator_name: Mapped[str | None] = mapped_column(String(200))
    operator_is_ram: Mapped[bool] = mapped_column(Boolean, default=False)
    operator_role: Mapped[Role | None] = mapped_column(enum_col(Role))
    #: Set by the revert: when, how much it took off (less than the amount when the amount was lowered
    #: meanwhile), and who revoked it early (NULL for the automatic revert).
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reverted_cents: Mapped[int | None] = mapped_column(Cents)
    ended_by_uid: Mapped[str | None] = mapped_column(String(64))
    ended_by_name: Mapped[str | None] = mapped_column(String(200))
    ended_by_is_ram: Mapped[bool] = mapped_column(Boolean, default=False)
    ended_by_role: Mapped[Role | None] = mapped_column(enum_col(Role))


class LedgerEntry(Base):
    """Consumption, deductions, repayments and subscription charges: high-volume, not audited."""

    __tablename__ = "ledger_entries"
    __table_args__ = (Index("ix_ledger_pool_time", "pool_id", "occurred_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    pool_id: Mapped[int] = mapped_column(ForeignKey("quota_pools.id"))
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    kind: Mapped[LedgerKind] = mapped_column(enum_col(LedgerKind))
    amount_cents: Mapped[int] = mapped_column(Cents)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    method: Mapped[OperationMethod] = mapped_column(enum_col(OperationMethod))
    operator_uid: Mapped[str | None] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(200))


class IdempotencyRecord(Base):
    """The first result of an operation under a key, per partner."""

    __tablename__ = "idempotency_records"
    __table_args__ = (UniqueConstraint("partner_id", "key", name="uq_idempotency_partner_key"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    partner_id: Mapped[int] = mapped_column(ForeignKey("partners.id"))
    key: Mapped[str] = mapped_column(String(200))
    operation: Mapped[str] = mapped_column(String(64))
    request_hash: Mapped[str] = mapped_column(String(64))
    response: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class AuditEntry(Base):
    """Append-only. Ids increase in commit order (see notifications.log)."""

    __tablename__ = "audit_entries"
    __table_args__ = (
        Index("ix_audit_account_id", "account_id", "id"),
        Index("ix_audit_partner_id", "partner_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    partner_id: Mapped[int] = mapped_column(ForeignKey("partners.id"))
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    action: Mapped[AuditAction] = mapped_column(enum_col(AuditAction))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    operator_uid: Mapped[str | None] = mapped_column(String(64))
    operator_name: Mapped[str | None] = mapped_column(String(200))
    operator_is_ram: Mapped[bool] = mapped_column(Boolean, default=False)
    operator_role: Mapped[Role | None] = mapped_column(enum_col(Role))
    method: Mapped[OperationMethod] = mapped_column(enum_col(OperationMethod))
    before: Mapped[Any] = mapped_column(JSON)
    after: Mapped[Any] = mapped_column(JSON)
    reason: Mapped[str | None] = mapped_column(Text)
    cascade_from_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id"))


class CreditAlert(Base):
    """An end user's own absolute available-credit alert."""

    __tablename__ = "credit_alerts"

    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    pool_id: Mapped[int] = mapped_column(ForeignKey("quota_pools.id"), index=True)
    enabled: Mapped[bool] = mapped_column(Boolean)
    threshold_cents: Mapped[int] = mapped_column(Cents)
    email: Mapped[str] = mapped_column(String(254))
    below: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class AlertEvent(Base):
    """One crossing of a threshold. Ids increase in commit order."""

    __tablename__ = "alert_events"
    __table_args__ = (Index("ix_alert_events_partner_id", "partner_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    partner_id: Mapped[int] = mapped_column(ForeignKey("partners.id"))
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    pool_id: Mapped[int] = mapped_column(ForeignKey("quota_pools.id"))
    kind: Mapped[AlertKind] = mapped_column(enum_col(AlertKind))
    state: Mapped[AlertState] = mapped_column(enum_col(AlertState))
    available_cents: Mapped[int] = mapped_column(Cents)
    threshold_cents: Mapped[int] = mapped_column(Cents)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: The pool threshold crossed (QUOTA_WARNING events since thresholds exist). No foreign key: a removed
    #: threshold's events stay in the log with the id it had.
    threshold_id: Mapped[int | None] = mapped_column(BigInteger)
    threshold_kind: Mapped[ThresholdKind | None] = mapped_column(enum_col(ThresholdKind))
    severity: Mapped[AlertSeverity | None] = mapped_column(enum_col(AlertSeverity))
    #: RUNS_OUT_WITHIN_DAYS only: the forecast's days left at the crossing (None: no forecast).
    days_left: Mapped[int | None] = mapped_column(Integer)


class QuotaThreshold(Base):
    """One of a pool's (at most 10) alert thresholds, with the side it was on at the last evaluation.

    The first PERCENT_OF_QUOTA threshold (lowest id) is the pool's warning: `QuotaPool.warning_percent` and
    `warning_below` mirror its value and side, so the SQL filters on the warning level keep working.
    """

    __tablename__ = "quota_thresholds"
    __table_args__ = (Index("ix_quota_thresholds_pool", "pool_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    partner_id: Mapped[int] = mapped_column(ForeignKey("partners.id"))
    pool_id: Mapped[int] = mapped_column(ForeignKey("quota_pools.id"))
    kind: Mapped[ThresholdKind] = mapped_column(enum_col(ThresholdKind))
    #: Percent (1..100), cents (AVAILABLE_BELOW) or days (1..365), by kind.
    value: Mapped[int] = mapped_column(BigInteger)
    severity: Mapped[AlertSeverity] = mapped_column(enum_col(AlertSeverity))
    #: None: the partner's alert emails at the time of the breach.
    recipients: Mapped[list[str] | None] = mapped_column(JSON)
    action: Mapped[ThresholdAction | None] = mapped_column(enum_col(ThresholdAction))
    requires_approval: Mapped[bool] = mapped_column(Boolean, default=False)
    below: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class PendingAction(Base):
    """An automatic action a breach asked for, waiting for an operator (requiresApproval)."""

    __tablename__ = "pending_actions"
    __table_args__ = (Index("ix_pending_actions_partner", "partner_id", "status", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    partner_id: Mapped[int] = mapped_column(ForeignKey("partners.id"))
    pool_id: Mapped[int] = mapped_column(ForeignKey("quota_pools.id"))
    #: The pool owner the action applies to (cascading to its sub-accounts).
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    threshold_id: Mapped[int | None] = mapped_column(BigInteger)
    alert_event_id: Mapped[int | None] = mapped_column(BigInteger)
    action: Mapped[ThresholdAction] = mapped_column(enum_col(ThresholdAction))
    severity: Mapped[AlertSeverity] = mapped_column(enum_col(AlertSeverity))
    status: Mapped[PendingActionStatus] = mapped_column(
        enum_col(PendingActionStatus), default=PendingActionStatus.PENDING
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    decided_by: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(Text)


class EmailNotification(Base):
    """The outbox: one row per email, claimed by one sender at a time."""

    __tablename__ = "email_notifications"
    __table_args__ = (
        Index("ix_email_status_next", "status", "next_attempt_at"),
        Index("ix_email_partner_id", "partner_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    partner_id: Mapped[int] = mapped_column(ForeignKey("partners.id"))
    alert_event_id: Mapped[int | None] = mapped_column(ForeignKey("alert_events.id"))
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id"))
    recipients: Mapped[list[str]] = mapped_column(JSON)
    subject: Mapped[str] = mapped_column(String(300))
    body_text: Mapped[str] = mapped_column(Text)
    body_html: Mapped[str] = mapped_column(Text)
    message_id: Mapped[str] = mapped_column(String(200), unique=True)
    status: Mapped[NotificationStatus] = mapped_column(enum_col(NotificationStatus), default=NotificationStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # A sender holds a lease while it talks to the SMTP server; another sender
    # may take the row only after the lease has run out (a crashed worker).
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When an attempt wrote the whole message but got no final reply after DATA: the server may have it.
    # Such a row is retried once more with the same Message-ID, never again (notifications.outbox).
    maybe_sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Instance(Base):
    """A cloud resource bought by an order. Its status is derived, never stored."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    billing_method: Mapped[BillingMethod] = mapped_column(enum_col(BillingMethod))
    amount_cents: Mapped[int] = mapped_column(Cents, default=0)
    description: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ExportTask(Base):
    __tablename__ = "export_tasks"
    __table_args__ = (
        Index("ix_export_partner_id", "partner_id", "id"),
        # The worker's fair claim groups PENDING and RUNNING tasks by partner (resolvers.exports).
        Index("ix_export_status_partner", "status", "partner_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    partner_id: Mapped[int] = mapped_column(ForeignKey("partners.id"))
    # Set for END_USER tokens: only that account (and its subs) may download.
    scope_account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id"))
    kind: Mapped[ExportKind] = mapped_column(enum_col(ExportKind))
    format: Mapped[ExportFormat] = mapped_column(enum_col(ExportFormat))
    language: Mapped[Language] = mapped_column(enum_col(Language))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[ExportStatus] = mapped_column(enum_col(ExportStatus), default=ExportStatus.PENDING)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    row_count: Mapped[int | None] = mapped_column(Integer)
    file_name: Mapped[str | None] = mapped_column(String(300))
    file_path: Mapped[str | None] = mapped_column(String(1000))
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    operator_uid: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WebhookEndpoint(Base):
    """Where a partner's systems receive events as signed HTTP POSTs.

    The secret signs every body (HMAC-SHA256); it must be kept readable to
    sign, so it is stored as is and shown to the partner only once. After a
    rotation the previous secret keeps signing too until
    `previous_secret_expires_at`, so receivers can switch without a gap.
    """

    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index("ix_webhook_endpoints_partner", "partner_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    partner_id: Mapped[int] = mapped_column(ForeignKey("partners.id"))
    url: Mapped[str] = mapped_column(String(2000))
    description: Mapped[str | None] = mapped_column(String(500))
    event_kinds: Mapped[list[str]] = mapped_column(JSON, default=list)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    secret: Mapped[str] = mapped_column(String(200))
    previous_secret: Mapped[str | None] = mapped_column(String(200))
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: Since when every attempt has failed (cleared by a success); drives the automatic disabling.
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    disabled_reason: Mapped[str | None] = mapped_column(String(500))
    #: One sender at a time per endpoint, so its events go out in order (see notifications.webhooks).
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class WebhookDelivery(Base):
    """One event for one endpoint: the exact body, sent until a 2xx or until it is given up."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("endpoint_id", "event_id", name="uq_webhook_delivery_event"),
        Index("ix_webhook_deliveries_endpoint_status", "endpoint_id", "status", "id"),
        Index("ix_webhook_deliveries_status_next", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("webhook_endpoints.id"))
    partner_id: Mapped[int] = mapped_column(ForeignKey("partners.id"))
    event_id: Mapped[str] = mapped_column(String(100))
    event_kind: Mapped[str] = mapped_column(String(32))
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[WebhookDeliveryStatus] = mapped_column(
        enum_col(WebhookDeliveryStatus), default=WebhookDeliveryStatus.PENDING
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    #: The first failed attempt of the current run of failures: the retry window counts from it.
    first_failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WebhookAttempt(Base):
    """The delivery log: one row per POST tried."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (Index("ix_webhook_attempts_delivery", "delivery_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("webhook_deliveries.id"))
    attempted_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    status_code: Mapped[int | None] = mapped_column(Integer)
    duration_ms: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WebhookCursor(Base):
    """How far the dispatcher has read each stored log (audit entries, alert events) into deliveries."""

    __tablename__ = "webhook_cursors"

    source: Mapped[str] = mapped_column(String(32), primary_key=True)
    last_id: Mapped[int] = mapped_column(BigInteger, default=0)

"""The domain enums as GraphQL enums, each value described for GraphiQL and generated code."""

from __future__ import annotations

from enum import Enum

import strawberry

from models import enums as E


def describe(enum: type[Enum], description: str, values: dict[str, str]) -> None:
    """Register `enum` with strawberry and attach a description to every value."""
    strawberry.enum(enum, description=description)
    definition = enum.__strawberry_definition__  # type: ignore[attr-defined]
    missing = {v.name for v in definition.values} - values.keys()
    if missing:
        raise ValueError(f"{enum.__name__}: undescribed values {sorted(missing)}")
    for value in definition.values:
        value.description = values[value.name]


describe(E.PartnerKind, "What kind of channel partner this is.", {
    "DISTRIBUTOR": "A T1 distributor; may have resellers under it.",
    "RESELLER": "A T2 reseller, optionally under a distributor.",
    "AGENCY": "Agency partners may only edit nickname and remarks of their end users.",
})
describe(E.Role, "What an operator token may do.", {
    "ADMIN": "Everything within the partner.",
    "OPERATOR": "Edits accounts, policies and quotas; cannot manage tokens or alert recipients.",
    "VIEWER": "Read-only.",
    "BILLING": "A billing service: recordConsumption, deductConsumption, placeOrder, reads.",
    "END_USER": "An end user acting on its own account (and its sub-accounts): reads, setCreditAlert, "
    "confirming termination.",
})
describe(E.OperationMethod, "How a change was made.", {
    "PLATFORM": "Through the partner console (a PLATFORM token).",
    "API": "Through an API key.",
    "SYSTEM": "Done by the system itself, e.g. credit control after a consumption.",
})
describe(E.AccountType, "The kind of linked account.", {
    "END_USER": "An individual end user.",
    "ENTERPRISE": "An enterprise end user.",
    "RESELLER": "A T2 partner linked under a distributor.",
})
describe(E.AccountStatus, "The distribution relationship termination process.", {
    "NORMAL": "Active relationship.",
    "TO_BE_CONFIRMED": "Termination requested; waiting for the end user's confirmation (or cancellation).",
    "IN_PROCESS": "Termination confirmed; the relationship is being settled.",
    "TERMINATED": "Relationship ended; takes nothing but deletion.",
    "DELETED": "Removed from lists unless asked for.",
})
describe(E.PaygFreezeStatus, "PAYG freeze setting.", {
    "NORMAL": "PAYG instances run and new PAYG orders are allowed.",
    "FROZEN": "PAYG instances are stopped and no new PAYG order is allowed.",
})
describe(E.PurchaseControl, "Purchase control setting.", {
    "NORMAL": "Orders are allowed.",
    "BANNED": "No new orders at all, PAYG or subscription.",
})
describe(E.ShutdownPolicy, "What happens when the available quota falls below zero.", {
    "DELAY_STOP": "Shutdown-delay privilege: PAYG keeps running until available < -shutdownDelayCredit.",
    "NO_STOP": "Never shut down automatically; the partner manages it by hand.",
    "IMMEDIATE_STOP": "PAYG instances stop as soon as available < 0.",
})
describe(E.CreditControlStatus, "The PAYG shutdown status that credit control derives.", {
    "NORMAL": "Available quota is not negative.",
    "ARREARS_NOT_SHUTDOWN": "In arrears, but the policy keeps PAYG running.",
    "SHUTDOWN": "In arrears beyond what the policy allows: PAYG is stopped.",
})
describe(E.BillingMethod, "How an instance is billed.", {
    "PAYG": "Pay as you go: usage arrives later through recordConsumption.",
    "SUBSCRIPTION": "Paid up front: charged to the quota pool when ordered.",
})
describe(E.InstanceStatus, "Whether an instance runs.", {
    "RUNNING": "The instance runs.",
    "STOPPED": "The instance is stopped; see stopReasons.",
})
describe(E.StopReason, "Why a PAYG instance is stopped.", {
    "PAYG_FREEZE": "The account or its master is PAYG-frozen.",
    "CREDIT_SHUTDOWN": "Credit control shut PAYG down (available below what the policy allows).",
})
describe(E.PurchaseDenialReason, "Why an order is denied.", {
    "ACCOUNT_NOT_ACTIVE": "The account is not NORMAL (termination in progress or done).",
    "PURCHASE_BANNED": "Purchase control is BANNED on the account or its master.",
    "PAYG_FROZEN": "A PAYG order while the account or its master is frozen.",
    "CREDIT_SHUTDOWN": "A PAYG order while credit control is SHUTDOWN.",
    "INSUFFICIENT_QUOTA": "SUBSCRIPTION: amount above available; PAYG: nothing available.",
})
describe(E.QuotaOperationType, "Kind of quota record.", {
    "QUOTA_CREATE": "The first amount ever set on the pool.",
    "QUOTA_ADJUSTMENT": "A later change of the amount.",
})
describe(E.AlertKind, "Which threshold was crossed.", {
    "QUOTA_WARNING": "The partner's warning threshold (percent of the quota amount).",
    "CREDIT_ALERT": "The end user's own available credit alert (an absolute amount).",
})
describe(E.AlertState, "Direction of a crossing.", {
    "BREACHED": "Available fell below the threshold.",
    "RECOVERED": "Available came back to the threshold or above.",
})
describe(E.NotificationStatus, "Delivery state of an email.", {
    "PENDING": "Queued; waiting to be sent or retried (or for SMTP to be configured).",
    "SENT": "Accepted by the SMTP server.",
    "FAILED": "Every attempt failed; see lastError.",
})
describe(E.AuditAction, "What an audit entry records.", {
    "ACCOUNT_LINKED": "The account was linked to the partner.",
    "BASIC_INFO_UPDATED": "Nickname, business manager or remarks changed.",
    "ACCOUNT_STATUS_CHANGED": "A step of the termination process.",
    "PAYG_FROZEN": "PAYG freeze set (own setting, or effective through the master).",
    "PAYG_UNFROZEN": "PAYG freeze lifted (own setting, or effective through the master).",
    "PURCHASE_CONTROL_CHANGED": "Purchase control set or lifted.",
    "SHUTDOWN_POLICY_CHANGED": "Shutdown policy or its delay credit changed.",
    "CREDIT_CONTROL_CHANGED": "Credit control status changed (by the system).",
    "QUOTA_CREATED": "First quota amount set.",
    "QUOTA_ADJUSTED": "Quota amount changed.",
    "WARNING_THRESHOLD_CHANGED": "Warning threshold percent changed.",
    "CREDIT_ALERT_CHANGED": "The end user's credit alert changed.",
    "OUTSTANDING_REPAID": "Outstanding consumption repaid.",
    "ORDER_PLACED": "An order was placed and an instance created.",
})
describe(E.ExportKind, "What an export contains.", {
    "END_USERS": "The UID list matching a filter.",
    "QUOTA_ADJUSTMENTS": "One pool's quota records in a window.",
})
describe(E.ExportFormat, "File format of an export.", {
    "XLSX": "Excel workbook.",
    "CSV": "UTF-8 CSV with a BOM (opens correctly in Excel).",
})
describe(E.Language, "Language of export headers and labels.", {
    "EN": "English.",
    "ZH": "Simplified Chinese.",
    "JA": "Japanese.",
})
describe(E.ExportStatus, "Progress of an export task.", {
    "PENDING": "Queued.",
    "RUNNING": "Being written.",
    "SUCCEEDED": "Done; the file can be downloaded until it expires.",
    "FAILED": "Failed; see error.",
})
describe(E.ErrorCode, "Why a mutation did not change anything.", {
    "NOT_FOUND": "No such account visible to you.",
    "FORBIDDEN": "You may run this operation but not set this input field.",
    "INVALID_INPUT": "An input value breaks a rule; see field and message.",
    "ACCOUNT_NOT_ACTIVE": "The account is TERMINATED or DELETED.",
    "INVALID_STATUS_TRANSITION": "The termination process does not allow this step.",
    "OUTSTANDING_BALANCE": "Termination refused while money is owed or consumption is undeducted.",
    "QUOTA_MANAGED_BY_MASTER": "A sub-account spends from its master's quota.",
    "POLICY_INHERITED": "A sub-account follows its master's shutdown policy.",
    "IDEMPOTENCY_CONFLICT": "The idempotency key was used before with a different input.",
    "ALREADY_LINKED": "The UID is already linked.",
    "TOO_MANY_EXPORTS": "Your partner has as many exports queued or running as it may; wait for one to finish.",
})
describe(E.WebhookEventKind, "What a webhook endpoint receives; each event of the stored log has one kind.", {
    "ALERT_BREACHED": "A quota warning or credit alert threshold was crossed downwards.",
    "ALERT_RECOVERED": "A quota warning or credit alert threshold was crossed upwards again.",
    "ACCOUNT_LINKED": "An account was linked to the partner.",
    "ACCOUNT_UPDATED": "An account's basic info (nickname, business manager, remarks) changed.",
    "ACCOUNT_STATUS_CHANGED": "An account moved along the termination process.",
    "POLICY_CHANGED": "PAYG freeze, purchase control, shutdown policy or credit control changed.",
    "QUOTA_CHANGED": "A quota amount, warning threshold, credit alert or repayment changed a pool.",
    "ORDER_PLACED": "An order was placed for an account.",
    "EXPORT_FINISHED": "An export task succeeded or failed.",
    "TEST": "A test event sent with sendTestWebhook (always delivered to that endpoint).",
})
describe(E.WebhookDeliveryStatus, "Where a webhook delivery stands.", {
    "PENDING": "Waiting for its first attempt or for a retry.",
    "SUCCEEDED": "The receiver answered 2xx.",
    "FAILED": "Given up after the retry window (webhook_retry_hours) of failed attempts.",
})

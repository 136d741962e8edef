"""The one message catalogue for exports: column headers, sheet names and enum labels in EN, ZH and JA.

Everything a human reads in an exported file comes from `MESSAGES`, so a translation is fixed in one place and
`tests/test_export_writer.py` can prove that every language covers every header and every enum member. Keys are
flat strings ("header.uid", "sheet.END_USERS", "enum.AccountStatus.NORMAL") because several enums share member
values (`PaygFreezeStatus.NORMAL`, `PurchaseControl.NORMAL`, ...) whose labels may differ by enum.

Labels follow the wording of the UID management console (reference/uid-management-console.txt).
"""

from __future__ import annotations

from datetime import datetime, timedelta, tzinfo
from enum import StrEnum

from uidhub.models.enums import (
    AccountStatus,
    AccountType,
    CreditControlStatus,
    ExportKind,
    Language,
    OperationMethod,
    PaygFreezeStatus,
    PurchaseControl,
    QuotaOperationType,
    ShutdownPolicy,
)

#: The enums whose members can appear in an export cell; the completeness test iterates exactly this tuple.
LABELLED_ENUMS: tuple[type[StrEnum], ...] = (
    AccountStatus,
    AccountType,
    PaygFreezeStatus,
    PurchaseControl,
    ShutdownPolicy,
    CreditControlStatus,
    QuotaOperationType,
    OperationMethod,
)

#: Header keys of time columns: their header must name the display offset, so `header` refuses them without one.
TIME_KEYS: frozenset[str] = frozenset({"linked_time", "operation_time"})

MESSAGES: dict[Language, dict[str, str]] = {
    Language.EN: {
        # sheets
        "sheet.END_USERS": "End Users",
        "sheet.QUOTA_ADJUSTMENTS": "Quota Adjustments",
        # END_USERS headers
        "header.uid": "UID",
        "header.nickname": "Nickname",
        "header.account_type": "Account Type",
        "header.status": "Account Status",
        "header.business_manager": "Business Manager",
        "header.remarks": "Remarks",
        "header.linked_time": "Linked Time",
        "header.master_uid": "Master UID",
        "header.effective_payg_freeze": "PAYG Freeze Status",
        "header.effective_purchase_control": "Purchase Control",
        "header.shutdown_policy": "Shutdown Policy",
        "header.credit_control_status": "Credit Control Status",
        "header.quota_amount": "Quota Amount(USD)",
        "header.available_quota": "Available Quota(USD)",
        "header.warning_percent": "Quota Warning Threshold(%)",
        # QUOTA_ADJUSTMENTS headers
        "header.operation_type": "Operation Type",
        "header.operation_time": "Operation Time",
        "header.before": "Adjust Before(USD)",
        "header.value": "Operation Value(USD)",
        "header.after": "Adjust After(USD)",
        "header.method": "Operation Method",
        "header.operator": "Operator",
        # enum labels
        "enum.AccountStatus.NORMAL": "Normal",
        "enum.AccountStatus.TO_BE_CONFIRMED": "To Be Confirmed",
        "enum.AccountStatus.IN_PROCESS": "In Process",
        "enum.AccountStatus.TERMINATED": "Terminated",
        "enum.AccountStatus.DELETED": "Deleted",
        "enum.AccountType.END_USER": "End User",
        "enum.AccountType.ENTERPRISE": "Enterprise",
        "enum.AccountType.RESELLER": "Reseller",
        "enum.PaygFreezeStatus.NORMAL": "Normal",
        "enum.PaygFreezeStatus.FROZEN": "Frozen",
        "enum.PurchaseControl.NORMAL": "Normal",
        "enum.PurchaseControl.BANNED": "Banned",
        "enum.ShutdownPolicy.DELAY_STOP": "Delay Stop",
        "enum.ShutdownPolicy.NO_STOP": "No Stop",
        "enum.ShutdownPolicy.IMMEDIATE_STOP": "Immediate Stop",
        "enum.CreditControlStatus.NORMAL": "Normal",
        "enum.CreditControlStatus.ARREARS_NOT_SHUTDOWN": "Arrears (not shut down)",
        "enum.CreditControlStatus.SHUTDOWN": "Shutdown",
        "enum.QuotaOperationType.QUOTA_CREATE": "Quota Create",
        "enum.QuotaOperationType.QUOTA_ADJUSTMENT": "Quota Adjustment",
        "enum.OperationMethod.PLATFORM": "Platform",
        "enum.OperationMethod.API": "API",
        "enum.OperationMethod.SYSTEM": "System",
    },
    Language.ZH: {
        "sheet.END_USERS": "终端用户",
        "sheet.QUOTA_ADJUSTMENTS": "额度调整记录",
        "header.uid": "UID",
        "header.nickname": "昵称",
        "header.account_type": "账号类型",
        "header.status": "账号状态",
        "header.business_manager": "业务经理",
        "header.remarks": "备注",
        "header.linked_time": "关联时间",
        "header.master_uid": "主账号UID",
        "header.effective_payg_freeze": "按量付费冻结状态",
        "header.effective_purchase_control": "购买控制",
        "header.shutdown_policy": "停机策略",
        "header.credit_control_status": "信控状态",
        "header.quota_amount": "额度总额(USD)",
        "header.available_quota": "可用额度(USD)",
        "header.warning_percent": "额度预警阈值(%)",
        "header.operation_type": "操作类型",
        "header.operation_time": "操作时间",
        "header.before": "调整前(USD)",
        "header.value": "操作值(USD)",
        "header.after": "调整后(USD)",
        "header.method": "操作方式",
        "header.operator": "操作人",
        "enum.AccountStatus.NORMAL": "正常",
        "enum.AccountStatus.TO_BE_CONFIRMED": "待确认",
        "enum.AccountStatus.IN_PROCESS": "处理中",
        "enum.AccountStatus.TERMINATED": "已终止",
        "enum.AccountStatus.DELETED": "已删除",
        "enum.AccountType.END_USER": "终端用户",
        "enum.AccountType.ENTERPRISE": "企业",
        "enum.AccountType.RESELLER": "经销商",
        "enum.PaygFreezeStatus.NORMAL": "正常",
        "enum.PaygFreezeStatus.FROZEN": "已冻结",
        "enum.PurchaseControl.NORMAL": "正常",
        "enum.PurchaseControl.BANNED": "已禁止",
        "enum.ShutdownPolicy.DELAY_STOP": "延迟停机",
        "enum.ShutdownPolicy.NO_STOP": "不停机",
        "enum.ShutdownPolicy.IMMEDIATE_STOP": "立即停机",
        "enum.CreditControlStatus.NORMAL": "正常",
        "enum.CreditControlStatus.ARREARS_NOT_SHUTDOWN": "欠费未停机",
        "enum.CreditControlStatus.SHUTDOWN": "已停机",
        "enum.QuotaOperationType.QUOTA_CREATE": "额度创建",
        "enum.QuotaOperationType.QUOTA_ADJUSTMENT": "额度调整",
        "enum.OperationMethod.PLATFORM": "平台",
        "enum.OperationMethod.API": "API",
        "enum.OperationMethod.SYSTEM": "系统",
    },
    Language.JA: {
        "sheet.END_USERS": "エンドユーザー",
        "sheet.QUOTA_ADJUSTMENTS": "クォータ調整履歴",
        "header.uid": "UID",
        "header.nickname": "ニックネーム",
        "header.account_type": "アカウント種別",
        "header.status": "アカウントステータス",
        "header.business_manager": "ビジネスマネージャー",
        "header.remarks": "備考",
        "header.linked_time": "関連付け日時",
        "header.master_uid": "マスターUID",
        "header.effective_payg_freeze": "従量課金凍結ステータス",
        "header.effective_purchase_control": "購入制御",
        "header.shutdown_policy": "シャットダウンポリシー",
        "header.credit_control_status": "与信管理ステータス",
        "header.quota_amount": "クォータ額(USD)",
        "header.available_quota": "利用可能クォータ(USD)",
        "header.warning_percent": "クォータ警告しきい値(%)",
        "header.operation_type": "操作タイプ",
        "header.operation_time": "操作日時",
        "header.before": "調整前(USD)",
        "header.value": "操作値(USD)",
        "header.after": "調整後(USD)",
        "header.method": "操作方法",
        "header.operator": "操作者",
        "enum.AccountStatus.NORMAL": "正常",
        "enum.AccountStatus.TO_BE_CONFIRMED": "確認待ち",
        "enum.AccountStatus.IN_PROCESS": "処理中",
        "enum.AccountStatus.TERMINATED": "終了",
        "enum.AccountStatus.DELETED": "削除済み",
        "enum.AccountType.END_USER": "エンドユーザー",
        "enum.AccountType.ENTERPRISE": "企業",
        "enum.AccountType.RESELLER": "リセラー",
        "enum.PaygFreezeStatus.NORMAL": "正常",
        "enum.PaygFreezeStatus.FROZEN": "凍結",
        "enum.PurchaseControl.NORMAL": "正常",
        "enum.PurchaseControl.BANNED": "禁止",
        "enum.ShutdownPolicy.DELAY_STOP": "遅延停止",
        "enum.ShutdownPolicy.NO_STOP": "停止しない",
        "enum.ShutdownPolicy.IMMEDIATE_STOP": "即時停止",
        "enum.CreditControlStatus.NORMAL": "正常",
        "enum.CreditControlStatus.ARREARS_NOT_SHUTDOWN": "未払い（停止なし）",
        "enum.CreditControlStatus.SHUTDOWN": "停止済み",
        "enum.QuotaOperationType.QUOTA_CREATE": "クォータ作成",
        "enum.QuotaOperationType.QUOTA_ADJUSTMENT": "クォータ調整",
        "enum.OperationMethod.PLATFORM": "プラットフォーム",
        "enum.OperationMethod.API": "API",
        "enum.OperationMethod.SYSTEM": "システム",
    },
}


def _message(language: Language, key: str) -> str:
    """Look a key up, failing loudly: a missing translation is a bug, and a blank cell would hide it."""
    try:
        return MESSAGES[Language(language)][key]
    except KeyError:
        raise KeyError(f"no {Language(language).value} message for {key!r}") from None


def label(language: Language, enum_value: StrEnum) -> str:
    """The display label of an enum member, keyed by its class so equal member values of different enums differ."""
    return _message(language, f"enum.{type(enum_value).__name__}.{enum_value.value}")


def header(language: Language, key: str, tz_label: str | None = None) -> str:
    """A column header; time columns must be given `tz_label` so the reader knows which offset the times are in.

    The label is appended as " (UTC+08:00)" in every language, e.g. "Linked Time (UTC+08:00)" or
    "关联时间 (UTC+08:00)". A time column without a label raises rather than silently exporting ambiguous times.
    """
    text = _message(language, f"header.{key}")
    if tz_label is None:
        if key in TIME_KEYS:
            raise ValueError(f"header {key!r} is a time column and needs the display offset (tz_label)")
        return text
    return f"{text} ({tz_label})"


def sheet_name(language: Language, kind: ExportKind) -> str:
    """The worksheet name for an export kind (all names are short and free of the characters Excel forbids)."""
    return _message(language, f"sheet.{ExportKind(kind).value}")


def utc_offset_label(tz: tzinfo, at: datetime | None = None) -> str:
    """ "UTC+08:00" / "UTC-05:30" / "UTC+00:00" for a zone, as the console names its display offset.

    `at` only matters for zones with daylight saving; exports use a fixed `datetime.timezone`, whose offset does not
    depend on the instant.
    """
    offset = tz.utcoffset(at)
    if offset is None:
        raise ValueError("the display timezone has no UTC offset")
    sign = "-" if offset < timedelta(0) else "+"
    minutes = abs(offset) // timedelta(minutes=1)
    hours, minutes = divmod(minutes, 60)
    return f"UTC{sign}{hours:02d}:{minutes:02d}"

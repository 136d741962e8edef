"""Every setting of OPERATIONS.md, read from the environment and a `.env` file."""

from __future__ import annotations

import re
from datetime import timedelta, timezone
from functools import cached_property
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_OFFSET = re.compile(r"^([+-])(\d{2}):(\d{2})$")


class Settings(BaseSettings):
    """Process-wide configuration. Unknown `UIDHUB_*` variables are ignored."""

    model_config = SettingsConfigDict(env_prefix="UIDHUB_", env_file=".env", extra="ignore")

    database_url: str = "sqlite+aiosqlite:///./uidhub.db"
    redis_url: str | None = None
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_starttls: bool = False
    smtp_sender: str = "alerts@uidhub.localhost"
    export_dir: str = "./exports"
    display_timezone: str = "+08:00"

    # Beyond OPERATIONS.md: switches an operations team expects.
    graphiql: bool = True
    introspection: bool = True
    export_ttl_hours: float = Field(default=24.0, gt=0)
    smtp_max_attempts: int = Field(default=6, ge=1)
    smtp_backoff_seconds: float = Field(default=2.0, gt=0)
    smtp_timeout_seconds: float = Field(default=10.0, gt=0)
    # RFC 5321 4.5.3.2.6: wait 10 minutes for the reply to the end of the message (the server may be storing it).
    smtp_data_timeout_seconds: float = Field(default=600.0, gt=0)
    sender_poll_seconds: float = Field(default=1.0, gt=0)
    resync_seconds: float = Field(default=1.0, gt=0)
    #: The longest a revoked token's open websocket stays open without a Redis wake-up (uidhub.tokenwatch).
    token_recheck_seconds: float = Field(default=5.0, gt=0)
    #: How long a worker trusts a token it authenticated (resolvers.auth.ActorCache); 0 looks it up per request.
    #: Without Redis the bound on a revoked token's HTTP requests reaching another worker; with Redis it is at once.
    token_cache_seconds: float = Field(default=2.0, ge=0)
    #: How often each worker looks for lapsed temporary credits to revert (resolvers.tempcredit).
    temporary_credit_poll_seconds: float = Field(default=1.0, gt=0)
    #: How often the background pass re-evaluates RUNS_OUT_WITHIN_DAYS thresholds (time alone moves a forecast).
    forecast_alert_seconds: float = Field(default=300.0, gt=0)
    idempotency_ttl_hours: float = Field(default=48.0, ge=24)
    console_url: str = "http://127.0.0.1:8000"
    # A hung database must not hang the server: every statement and every new connection is bounded.
    db_statement_timeout_seconds: float = Field(default=30.0, gt=0)
    db_connect_timeout_seconds: float = Field(default=5.0, gt=0)
    readyz_timeout_seconds: float = Field(default=0.5, gt=0, le=10)
    # One partner's exports must not starve the others' (resolvers.exports).
    export_max_queued_per_partner: int = Field(default=20, ge=1)
    export_max_running_per_partner: int = Field(default=2, ge=1)

    # Webhooks (notifications.webhooks): timeouts, the retry window and what URLs may be called.
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    webhook_retry_hours: float = Field(default=24.0, gt=0)
    webhook_backoff_seconds: float = Field(default=5.0, gt=0)
    webhook_poll_seconds: float = Field(default=1.0, gt=0)
    webhook_allow_http_loopback: bool = False
    webhook_allow_private: bool = False

    # Operating (uidhub.metrics, uidhub.logs; tracing follows OTEL_EXPORTER_OTLP_ENDPOINT).
    metrics: bool = False
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_host: str = "127.0.0.1"
    log_format: Literal["text", "json"] = "text"
    #: Time budget of one HTTP GraphQL request (validation and execution); past it: REQUEST_TIMEOUT.
    request_timeout_seconds: float = Field(default=10.0, gt=0)
    #: Answer the hot read queries through the compiled read path (uidhub.compiled); false: always strawberry.
    compiled_reads: bool = True

    #: Serving processes (uidhub.asgi) freeze their start-up objects out of garbage collection and collect the
    #: young generation every `gc_gen0_threshold` net allocations instead of 700 (uidhub.gctune).
    gc_freeze: bool = True
    gc_gen0_threshold: int = Field(default=20_000, ge=100)

    # Connections (uidhub.db): one bounded request pool and one small background pool per process.
    # A process opens at most db_pool_size + db_max_overflow + db_background_pool_size connections;
    # times --workers, keep that below PostgreSQL's max_connections minus its reserved slots.
    # A fixed pool by default: an overflow connection is closed the moment it is returned while the pool is
    # full, so a load just above db_pool_size reconnects over and over (measured: ~10 new connections a second
    # at 16 concurrent requests with 10 + 5), each a PostgreSQL backend start and a handshake.
    db_pool_size: int = Field(default=15, ge=1)
    db_max_overflow: int = Field(default=0, ge=0)
    #: How long a request waits for a connection before it is answered 503 SERVICE_UNAVAILABLE.
    db_pool_timeout_seconds: float = Field(default=10.0, gt=0)
    #: Connections older than this are replaced on checkout (instead of a pre-ping on every checkout).
    db_pool_recycle_seconds: float = Field(default=1800.0, gt=0)
    #: The outbox sender, export worker, live feeds, housekeeping and the temporary credit worker share these.
    db_background_pool_size: int = Field(default=3, ge=1)
    #: The Retry-After of a 503 SERVICE_UNAVAILABLE answer.
    retry_after_seconds: int = Field(default=1, ge=1)
    #: How long the post-commit wake-up publish to Redis may take before it is dropped (in the background).
    redis_publish_timeout_seconds: float = Field(default=0.5, gt=0)

    # Rate limits and websocket caps (uidhub/ratelimit.py). 0 switches a limit off.
    rate_limit_token_per_second: float = Field(default=50.0, ge=0)
    rate_limit_token_burst: int = Field(default=500, ge=0)
    rate_limit_ip_per_second: float = Field(default=100.0, ge=0)
    rate_limit_ip_burst: int = Field(default=1000, ge=0)
    auth_failures_per_ip: int = Field(default=20, ge=0)
    auth_failure_window_seconds: float = Field(default=600.0, gt=0)
    ws_max_connections: int = Field(default=1000, ge=0)
    ws_max_connections_per_ip: int = Field(default=100, ge=0)
    ws_max_connections_per_token: int = Field(default=20, ge=0)
    rate_limit_redis_prefix: str = "uidhub:ratelimit:"

    @field_validator("display_timezone")
    @classmethod
    def _valid_offset(cls, value: str) -> str:
        match = _OFFSET.match(value.strip())
        if not match or int(match.group(2)) > 14 or int(match.group(3)) > 59:
            raise ValueError("must be an UTC offset such as +08:00")
        return value.strip()

    @field_validator("redis_url", "smtp_host", "smtp_username", "smtp_password", "metrics_port", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @cached_property
    def tz(self) -> timezone:
        """The display timezone as a fixed offset."""
        match = _OFFSET.match(self.display_timezone)
        assert match is not None
        sign = -1 if match.group(1) == "-" else 1
        delta = timedelta(hours=int(match.group(2)), minutes=int(match.group(3)))
        return timezone(sign * delta)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

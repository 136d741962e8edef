"""Rate limits and websocket connection caps, as one ASGI middleware in front of the whole app.

Why a middleware: it answers before any database work (a wrong-token flood
never reaches the token lookup once its address is blocked), it sees every
route (GraphQL and downloads) and it learns the outcome of authentication
from the response itself (401, or a websocket closed with 4403), so the
GraphQL endpoint needs no changes.

Limits (settings `UIDHUB_RATE_LIMIT_*`, `UIDHUB_AUTH_FAILURES_*`, `UIDHUB_WS_MAX_*`; 0 switches one off):

- requests per token and per client address: a token bucket (GCRA: one
  stored timestamp per key) with a sustained rate and a burst;
- failed authentication per client address: after `auth_failures_per_ip`
  wrong tokens within `auth_failure_window_seconds` every further request
  from that address is answered 429 without looking at its token;
- open websockets: in total, per client address (at the handshake) and per
  token (at `connection_init`).

HTTP refusals are 429 with `Retry-After` and the GraphQL error shape
(`extensions.code` RATE_LIMITED); websocket refusals close with 4429 and a
reason. Counters live in process memory, or in Redis when UIDHUB_REDIS_URL is
set so that every worker shares them. Should Redis fail or hang (1 s
timeout), requests pass and the limiter stops asking for 5 s (fail open,
logged): a limiter outage must not become an API outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import logging
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from resolvers.auth import bearer
from uidhub.settings import Settings

log = logging.getLogger(__name__)

#: The websocket close code of a refused or over-the-cap connection (documented in the README).
WS_RATE_LIMITED = 4429
#: Paths never limited: load balancers and orchestrators poll them.
EXEMPT_PATHS = frozenset({"/healthz", "/readyz"})
#: A `connection_init` larger than this is left to the protocol handler unparsed.
MAX_INIT_BYTES = 65_536
#: Websocket slots in Redis are leases, renewed while the socket is open, so a crashed worker frees its slots.
LEASE_SECONDS = 60.0
RENEW_SECONDS = 20.0
#: At most one warning per this many seconds while Redis fails.
WARN_EVERY_SECONDS = 60.0
#: After a storage failure the limiter lets requests through without asking for this long (a circuit breaker).
PAUSE_AFTER_FAILURE_SECONDS = 5.0
REDIS_TIMEOUT_SECONDS = 1.0
AUTH_BLOCKED = "Too many failed authentication attempts from your address."


@dataclass(frozen=True)
class Rate:
    """A token bucket: `burst` requests at once, refilled at `per_second`."""

    per_second: float
    burst: int

    @property
    def enabled(self) -> bool:
        return self.per_second > 0 and self.burst > 0

    @property
    def interval(self) -> float:
        return 1.0 / self.per_second


@dataclass(frozen=True)
class Refusal:
    """Why a request or socket is refused, and when to retry."""

    message: str
    retry_after: float

    @property
    def retry_after_seconds(self) -> int:
        return max(1, math.ceil(self.retry_after))


@dataclass
class Lease:
    """The websocket slots one connection holds (one member id in every slot key)."""

    member: str = field(default_factory=lambda: uuid.uuid4().hex)
    keys: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Take:
    """One bucket to count a request in; `peek` only asks whether the next one would pass."""

    key: str
    rate: Rate
    peek: bool = False


class Backend(Protocol):
    async def take(self, takes: list[Take]) -> tuple[int, float]:
        """Count a request in each bucket in turn until one refuses: (-1, 0.0), or (its index, seconds to wait).

        Buckets before the refusing one keep their count; one call, so Redis answers in one round trip.
        """
        ...

    async def acquire(self, lease: Lease, caps: list[tuple[str, int]]) -> int:
        """Add the lease to every slot key unless one is full; the index of the full one, or -1."""
        ...

    async def release(self, lease: Lease) -> None: ...

    async def close(self) -> None: ...


# ---------------------------------------------------------------- in process


class MemoryBackend:
    """Counters of one process. Stale buckets are swept once a minute (amortised, never per request)."""

    def __init__(self) -> None:
        self._tat: dict[str, float] = {}
        self._slots: dict[str, set[str]] = {}
        self._next_sweep = 0.0

    async def take(self, takes: list[Take]) -> tuple[int, float]:
        now = time.monotonic()
        if now >= self._next_sweep:
            self._tat = {k: v for k, v in self._tat.items() if v > now}
            self._next_sweep = now + 60.0
        for index, one in enumerate(takes):
            tat = max(self._tat.get(one.key, now), now)
            new_tat = tat + one.rate.interval
            allow_at = new_tat - one.rate.burst * one.rate.interval
            if allow_at > now:
                return index, allow_at - now
            if not one.peek:
                self._tat[one.key] = new_tat
        return -1, 0.0

    async def acquire(self, lease: Lease, caps: list[tuple[str, int]]) -> int:
        for index, (key, cap) in enumerate(caps):
            if len(self._slots.get(key, ())) >= cap:
                return index
        for key, _cap in caps:
            self._slots.setdefault(key, set()).add(lease.member)
            lease.keys.append(key)
        return -1

    async def release(self, lease: Lease) -> None:
        for key in lease.keys:
            members = self._slots.get(key)
            if members is not None:
                members.discard(lease.member)
                if not members:
                    del self._slots[key]
        lease.keys.clear()

    async def close(self) -> None:
        return None


# ---------------------------------------------------------------- Redis

# Both scripts take the time from the Redis server so that workers on several hosts agree.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[i * 3 - 2])
  local burst = tonumber(ARGV[i * 3 - 1])
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  local new_tat = tat + interval
  local allow_at = new_tat - burst * interval
  if allow_at > now then return {i, tostring(allow_at - now)} end
  if ARGV[i * 3] ~= '1' then
    redis.call('SET', key, tostring(new_tat), 'PX', math.max(1, math.ceil((new_tat - now) * 1000)))
  end
end
return {0, '0'}
"""

_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local lease = tonumber(ARGV[2])
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  if redis.call('ZCARD', key) >= tonumber(ARGV[i + 2]) then return i end
end
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + lease, ARGV[1])
  redis.call('EXPIRE', key, math.ceil(lease) + 1)
end
return 0
"""

_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local lease = tonumber(ARGV[2])
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', now + lease, ARGV[1])
  redis.call('EXPIRE', key, math.ceil(lease) + 1)
end
return 0
"""


class RedisBackend:
    """Counters shared by every worker through one Redis; websocket slots are leases renewed every 20 s."""

    def __init__(self, url: str, prefix: str) -> None:
        from redis.asyncio import Redis

        self.prefix = prefix
        # Short timeouts: a hung Redis must cost a request at most this, and then the limiter steps aside.
        self.client = Redis.from_url(url, socket_timeout=REDIS_TIMEOUT_SECONDS,
                                     socket_connect_timeout=REDIS_TIMEOUT_SECONDS)
        self._take = self.client.register_script(_TAKE)
        self._acquire = self.client.register_script(_ACQUIRE)
        self._renew = self.client.register_script(_RENEW)
        self._leases: dict[str, Lease] = {}
        self._renewer: asyncio.Task[None] | None = None

    async def take(self, takes: list[Take]) -> tuple[int, float]:
        args: list[str | int] = []
        for one in takes:
            args += [repr(one.rate.interval), one.rate.burst, int(one.peek)]
        index, wait = await self._take(keys=[self.prefix + one.key for one in takes], args=args)
        return int(index) - 1, float(wait)

    async def acquire(self, lease: Lease, caps: list[tuple[str, int]]) -> int:
        keys = [self.prefix + key for key, _cap in caps]
        full = int(await self._acquire(keys=keys, args=[lease.member, LEASE_SECONDS, *(cap for _k, cap in caps)]))
        if full:
            return full - 1
        lease.keys.extend(keys)
        self._leases[lease.member] = lease
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew_loop(), name="uidhub-ratelimit-renew")
        return -1

    async def release(self, lease: Lease) -> None:
        self._leases.pop(lease.member, None)
        if lease.keys:
            async with self.client.pipeline(transaction=False) as pipe:
                for key in lease.keys:
                    pipe.zrem(key, lease.member)
                await pipe.execute()
        lease.keys.clear()

    async def _renew_loop(self) -> None:
        """Renews the leases of this process's open sockets; ends when none is left."""
        while self._leases:
            await asyncio.sleep(RENEW_SECONDS)
            try:
                for lease in list(self._leases.values()):
                    await self._renew(keys=lease.keys, args=[lease.member, LEASE_SECONDS])
            except Exception:
                log.warning("could not renew websocket slots in Redis; retrying in %.0f s", RENEW_SECONDS)

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        await self.client.aclose()


# ---------------------------------------------------------------- the limiter


def token_key(token: str) -> str:
    """Counters are keyed by a hash: a token never lands in Redis or memory dumps in clear."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()[:32]


def client_key(scope: Scope) -> str:
    """The client address; IPv6 by /64, the block one host usually holds, so address hopping does not help."""
    client = scope.get("client")
    host = str(client[0]) if client else "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class RateLimiter:
    """The limits of the settings over one backend (memory or Redis)."""

    def __init__(self, settings: Settings, backend: Backend | None = None) -> None:
        self.per_token = Rate(settings.rate_limit_token_per_second, settings.rate_limit_token_burst)
        self.per_ip = Rate(settings.rate_limit_ip_per_second, settings.rate_limit_ip_burst)
        self.auth_failures = Rate(
            settings.auth_failures_per_ip / settings.auth_failure_window_seconds, settings.auth_failures_per_ip
        )
        self.ws_total = settings.ws_max_connections
        self.ws_per_ip = settings.ws_max_connections_per_ip
        self.ws_per_token = settings.ws_max_connections_per_token
        if backend is None:
            redis_url = settings.redis_url
            backend = RedisBackend(redis_url, settings.rate_limit_redis_prefix) if redis_url else MemoryBackend()
        self.backend = backend
        self._warned_at = -math.inf
        self._paused_until = -math.inf

    @property
    def _paused(self) -> bool:
        return time.monotonic() < self._paused_until

    def _failed(self, what: str) -> None:
        """Fail open, pause asking for a few seconds, warn at most once a minute (an outage must not flood the log)."""
        now = time.monotonic()
        self._paused_until = now + PAUSE_AFTER_FAILURE_SECONDS
        if now - self._warned_at >= WARN_EVERY_SECONDS:
            self._warned_at = now
            log.warning("rate limiter storage unavailable (%s); letting requests through", what, exc_info=True)

    async def _take(self, takes: list[tuple[Take, str]]) -> Refusal | None:
        """Count in the enabled buckets; the refusal (with its message) of the first one that is empty."""
        enabled = [(one, message) for one, message in takes if one.rate.enabled]
        if not enabled or self._paused:
            return None
        try:
            index, wait = await self.backend.take([one for one, _message in enabled])
        except Exception:
            self._failed("take")
            return None
        return Refusal(enabled[index][1], wait) if index >= 0 else None

    def _auth_block(self, ip: str) -> tuple[Take, str]:
        return Take(f"auth:{ip}", self.auth_failures, peek=True), AUTH_BLOCKED

    async def check_request(self, ip: str, token: str | None) -> Refusal | None:
        """One HTTP request (or websocket handshake): the address's auth block, then its bucket, then the token's."""
        takes = [self._auth_block(ip), (Take(f"ip:{ip}", self.per_ip), "Too many requests from your address.")]
        if token is not None:
            takes.append((Take(f"tok:{token_key(token)}", self.per_token), "Too many requests for this token."))
        return await self._take(takes)

    async def auth_failed(self, ip: str) -> None:
        await self._take([(Take(f"auth:{ip}", self.auth_failures), AUTH_BLOCKED)])

    async def _acquire(self, lease: Lease, caps: list[tuple[str, int, str]]) -> Refusal | None:
        wanted = [(key, cap) for key, cap, _message in caps if cap > 0]
        if not wanted or self._paused:
            return None
        try:
            full = await self.backend.acquire(lease, wanted)
        except Exception:
            self._failed("acquire")
            return None
        if full < 0:
            return None
        messages = [message for _key, cap, message in caps if cap > 0]
        return Refusal(messages[full], RENEW_SECONDS)

    async def open_socket(self, ip: str) -> tuple[Lease, Refusal | None]:
        """At the handshake: the address's request budget, then a slot in total and per address."""
        lease = Lease()
        refusal = await self.check_request(ip, None)
        if refusal is None:
            refusal = await self._acquire(lease, [
                ("ws:all", self.ws_total, "Too many open websocket connections in total."),
                (f"ws:ip:{ip}", self.ws_per_ip, "Too many open websocket connections from your address."),
            ])
        return lease, refusal

    async def socket_token(self, ip: str, lease: Lease, token: str) -> Refusal | None:
        """At `connection_init`: the address's auth block, then a slot per token.

        The handshake already counted against the address's request budget;
        the token's open sockets are bounded by count instead of by rate.
        """
        refusal = await self._take([self._auth_block(ip)])
        if refusal is None:
            message = "Too many open websocket connections for this token."
            refusal = await self._acquire(lease, [(f"ws:tok:{token_key(token)}", self.ws_per_token, message)])
        return refusal

    async def close_socket(self, lease: Lease) -> None:
        try:
            await self.backend.release(lease)
        except Exception:
            self._failed("release")  # the lease expires by itself

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.backend.close()


# ---------------------------------------------------------------- ASGI


def rate_limited_response(refusal: Refusal) -> JSONResponse:
    """429 in the GraphQL-over-HTTP error shape, on every route (GraphQL and downloads alike)."""
    seconds = refusal.retry_after_seconds
    message = f"{refusal.message} Retry after {seconds} s."
    return JSONResponse(
        {"data": None, "errors": [{"message": message, "extensions": {"code": "RATE_LIMITED", "retryAfter": seconds}}]},
        status_code=429,
        headers={"Retry-After": str(seconds)},
    )


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


def _init_token(message: Message) -> str | None:
    """The bearer token of a graphql-transport-ws `connection_init`, if this message is one."""
    raw: str | bytes | None = message.get("text")
    if raw is None:
        raw = message.get("bytes")
    if raw is None or len(raw) > MAX_INIT_BYTES:
        return None
    try:
        parsed: Any = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(parsed, dict) or parsed.get("type") != "connection_init":
        return None
    payload = parsed.get("payload")
    if not isinstance(payload, dict):
        return None
    value = payload.get("authorization") or payload.get("Authorization")
    return bearer(value) if isinstance(value, str) else None


class RateLimitMiddleware:
    """Applies a RateLimiter to every HTTP request and websocket of the app (health checks excepted)."""

    def __init__(self, app: ASGIApp, limiter: RateLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path") not in EXEMPT_PATHS:
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        ip = client_key(scope)
        token = bearer(_header(scope, b"authorization"))
        refusal = await self.limiter.check_request(ip, token)
        if refusal is not None:
            await rate_limited_response(refusal)(scope, receive, send)
            return
        status = 0

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            if status == 401 and token is not None:  # a wrong token (a missing one is no guess)
                await self.limiter.auth_failed(ip)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        ip = client_key(scope)
        lease, refusal = await self.limiter.open_socket(ip)
        if refusal is not None:
            await self.limiter.close_socket(lease)
            await _refuse_socket(scope, receive, send, refusal)
            return
        init_seen = False
        token_sent = False
        closed_by_us = False
        rejected = False

        async def guarded_receive() -> Message:
            nonlocal init_seen, token_sent, closed_by_us
            message = await receive()
            if init_seen or message["type"] != "websocket.receive":
                return message
            init_seen = True
            token = _init_token(message)
            if token is None:
                return message
            token_sent = True
            refusal = await self.limiter.socket_token(ip, lease, token)
            if refusal is None:
                return message
            closed_by_us = True
            await send({"type": "websocket.close", "code": WS_RATE_LIMITED, "reason": _reason(refusal)})
            return {"type": "websocket.disconnect", "code": WS_RATE_LIMITED}

        async def guarded_send(message: Message) -> None:
            nonlocal rejected
            if closed_by_us:
                return  # the socket is closed already; the handler is only winding down
            if message["type"] == "websocket.close" and message.get("code") == 4403 and token_sent:
                rejected = True
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        finally:
            await self.limiter.close_socket(lease)
            if rejected:
                await self.limiter.auth_failed(ip)


def _reason(refusal: Refusal) -> str:
    """A close reason (at most 123 bytes by RFC 6455)."""
    return f"{refusal.message} Retry after {refusal.retry_after_seconds} s."[:123]


async def _refuse_socket(scope: Scope, receive: Receive, send: Send, refusal: Refusal) -> None:
    """Accept, then close with 4429 and a reason: a browser's WebSocket sees a code, not a failed handshake."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    offered = scope.get("subprotocols") or []
    subprotocol = "graphql-transport-ws" if "graphql-transport-ws" in offered else None
    await send({"type": "websocket.accept", "subprotocol": subprotocol})
    await send({"type": "websocket.close", "code": WS_RATE_LIMITED, "reason": _reason(refusal)})

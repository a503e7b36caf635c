"""The edge, as plain ASGI middleware (cheap per request), outermost first:

RequestContext (request id, security headers, access log, last-resort 500)
→ BodyLimit (413) → CORS (deny by default) → Auth (who is calling; 401)
→ RateLimit (per key, per IP when unauthenticated; 429) → Audit (every authenticated call)
→ InputSanity (400 for NUL / unpaired surrogates, which the back ends would store differently).

Unlike the reference, security headers are sent on every response, rate limited or not.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from certctl.api.errors import error_response
from certctl.api.ratelimit import TokenBuckets, retry_after_header
from certctl.domain.actor import ANONYMOUS, Actor
from certctl.domain.enums import ActorType
from certctl.domain.keys import KeyStore, agent_of_key, key_matches
from certctl.logs import request_id_var
from certctl.services.audit import AuditSink, build_event
from certctl.services.rate_limits import RateLimits

log = logging.getLogger("certctl.http")

SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"strict-transport-security", b"max-age=31536000; includeSubDomains"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer-when-downgrade"),
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
    ),
]
PUBLIC_PATHS = frozenset(
    {"/health", "/ready", "/api/v1/auth/info", "/api/v1/version", "/api/v1/openapi.json", "/api/v1/docs"}
)
PUBLIC_PREFIXES = ("/.well-known/", "/scep", "/acme/")
UNAUDITED_PATHS = frozenset({"/health", "/ready", "/api/v1/version"})
_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def needs_auth(path: str) -> bool:
    if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
        return False
    return path.startswith("/api/")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _state(scope: Scope) -> MutableMapping[str, Any]:
    state: MutableMapping[str, Any] = scope.setdefault("state", {})
    return state


async def _send_error(
    scope: Scope, send: Send, status: int, message: str, headers: dict[str, str] | None = None
) -> None:
    response = error_response(status, message, headers=headers)
    await response(scope, _noop_receive, send)


async def _noop_receive() -> Message:
    return {"type": "http.disconnect"}


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        inbound = _header(scope, b"x-request-id")
        rid = inbound if inbound and _REQUEST_ID_OK.match(inbound) else str(uuid.uuid4())
        token = request_id_var.set(rid)
        _state(scope)["request_id"] = rid
        started = time.perf_counter()
        status_holder = [0]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder[0] = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", rid.encode()))
                headers.extend(SECURITY_HEADERS)
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            log.exception("unhandled error in request")
            if status_holder[0] == 0:
                status_holder[0] = 500
                await _send_error(scope, send_with_headers, 500, "internal error; see the server log")
        finally:
            log.info(
                "request",
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status_holder[0],
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    "actor": getattr(_state(scope).get("actor"), "name", None),
                },
            )
            request_id_var.reset(token)


class BodyLimitMiddleware:
    """413 when the body exceeds the limit, whether announced by Content-Length or sent chunked.

    A chunked body (no Content-Length) is read up to the limit before the app sees it, so the app
    never starts on a body it would have to abandon half-way; bodies are small (1 MiB default).
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit():
            if int(declared) > self.max_bytes:
                await _send_error(scope, send, 413, f"request body exceeds {self.max_bytes} bytes")
                return
            # The HTTP server enforces Content-Length framing; nothing more to count.
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message], receive), send)  # client went away
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await _send_error(scope, send, 413, f"request body exceeds {self.max_bytes} bytes")
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        whole: Message = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([whole], receive), send)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return replay


class InputSanityMiddleware:
    """400 for text no back end can store the same way: NUL characters and unpaired UTF-16 surrogates.

    PostgreSQL refuses both (SQLite keeps them), so without this check the same request would be
    stored on one back end and fail on the other. JSON can carry them only as `\\u` escapes and a
    URL only as `%00`, so ordinary requests pass on a substring test without being parsed twice.
    Innermost, after authentication and rate limiting, so a refused call is limited and audited.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if b"%00" in scope.get("query_string", b"") or "\x00" in scope["path"]:
            await _send_error(scope, send, 400, "the URL contains a NUL character")
            return
        messages: list[Message] = []
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.request")
        if b"\\u" in body and _has_unstorable_text(body):
            await _send_error(
                scope, send, 400, "the request body contains a NUL character or an unpaired surrogate escape"
            )
            return
        await self.app(scope, _replay(messages, receive), send)


def _has_unstorable_text(body: bytes) -> bool:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        # orjson refuses lone surrogates itself; otherwise the body is not JSON and the app says so.
        return b"\\ud" in body.lower() or b"\\u0000" in body
    return _bad_text(value)


def _bad_text(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_bad_text(k) or _bad_text(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_bad_text(item) for item in value)
    return False


class CorsMiddleware:
    """Deny by default. With origins configured, allow `*` or an exact list (with `Vary: Origin`)."""

    METHODS = b"GET, POST, PUT, DELETE, PATCH, OPTIONS"
    HEADERS = b"Content-Type, Authorization, X-Request-ID"

    def __init__(self, app: ASGIApp, origins: tuple[str, ...]) -> None:
        self.app = app
        self.any_origin = "*" in origins
        self.origins = frozenset(origins)

    def _allowed(self, origin: str | None) -> bool:
        return origin is not None and (self.any_origin or origin in self.origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        origin = _header(scope, b"origin")
        preflight = scope["method"] == "OPTIONS" and _header(scope, b"access-control-request-method")
        if preflight:
            if not self._allowed(origin):
                await _send_error(scope, send, 403, "cross-origin request not allowed")
                return
            assert origin is not None
            headers = [
                (b"access-control-allow-origin", b"*" if self.any_origin else origin.encode()),
                (b"access-control-allow-methods", self.METHODS),
                (b"access-control-allow-headers", self.HEADERS),
                (b"access-control-max-age", b"86400"),
                (b"vary", b"Origin"),
                (b"content-length", b"0"),
            ]
            await send({"type": "http.response.start", "status": 204, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        if not self._allowed(origin):
            await self.app(scope, receive, send)
            return
        assert origin is not None

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"access-control-allow-origin", b"*" if self.any_origin else origin.encode()))
                headers.append((b"vary", b"Origin"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_cors)


class AgentKeyCache:
    """Agent credentials, checked against the stored hash of the agent the key names.

    Hashes are kept for `ttl` seconds per process (so a rotated or retired agent's old key stops
    working everywhere within that time) and looked up with the function the app provides.
    """

    def __init__(self, lookup: Callable[[str], Awaitable[str | None]], *, ttl: float = 60.0) -> None:
        self.lookup = lookup
        self.ttl = ttl
        self._hashes: dict[str, tuple[float, str | None]] = {}

    async def verify(self, token: str) -> str | None:
        """The agent id when the token is that agent's current key."""
        agent_id = agent_of_key(token)
        if agent_id is None:
            return None
        now = time.monotonic()
        cached = self._hashes.get(agent_id)
        if cached is None or cached[0] < now:
            if len(self._hashes) > 100_000:
                self._hashes.clear()
            cached = (now + self.ttl, await self.lookup(agent_id))
            self._hashes[agent_id] = cached
        stored = cached[1]
        return agent_id if stored is not None and key_matches(token, stored) else None

    def forget(self, agent_id: str) -> None:
        self._hashes.pop(agent_id, None)


class AuthMiddleware:
    """Resolves the caller; rejects with 401 only after the rate limiter has seen the attempt.

    An agent's own key is good for its own `/api/v1/agents/{id}` routes only (403 elsewhere).
    """

    def __init__(
        self, app: ASGIApp, *, auth_type: str, keys: KeyStore, bootstrap_token: str | None,
        agent_keys: Callable[[], AgentKeyCache | None] = lambda: None,
    ) -> None:
        self.app = app
        self.auth_type = auth_type
        self.keys = keys
        self.bootstrap_token = bootstrap_token.encode() if bootstrap_token else None
        self.agent_keys = agent_keys

    async def resolve(self, scope: Scope) -> Actor | None:
        if self.auth_type == "none":
            return ANONYMOUS  # never admin, and never enough to decide an approval
        header = _header(scope, b"authorization")
        if not header or header[:7].lower() != "bearer ":
            return None
        token = header[7:].strip()
        if not token:
            return None
        identity = self.keys.verify(token)
        if identity is not None:
            return Actor(identity.name, ActorType.USER, admin=identity.admin)
        if (
            self.bootstrap_token is not None
            and scope["method"] == "POST"
            and scope["path"].rstrip("/") == "/api/v1/agents"
            and hmac.compare_digest(token.encode(), self.bootstrap_token)
        ):
            return Actor("agent-bootstrap", ActorType.AGENT, admin=False)
        cache = self.agent_keys()
        if cache is not None:
            agent_id = await cache.verify(token)
            if agent_id is not None:
                return Actor(agent_id, ActorType.AGENT, admin=False)
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = _state(scope)
        actor = await self.resolve(scope)
        if actor is not None:
            state["actor"] = actor
        state["auth_required"] = needs_auth(scope["path"])
        if (
            actor is not None and actor.actor_type is ActorType.AGENT and actor.name != "agent-bootstrap"
            and state["auth_required"] and not _agent_may(actor.name, scope["path"])
        ):
            await _send_error(scope, send, 403, "an agent key may only call its own /api/v1/agents/{id} routes")
            return
        await self.app(scope, receive, send)


def _agent_may(agent_id: str, path: str) -> bool:
    own = f"/api/v1/agents/{agent_id}"
    return path == own or path.startswith(own + "/") or path == "/api/v1/auth/check"


class RateLimitMiddleware:
    """Per API key name, else per client IP. The buckets are the shared ones of `services.rate_limits` (every
    replica, across restarts) once the app has started; `per_key`/`per_ip` give their size and rate, and decide
    alone only before that (or when no shared limiter is given)."""

    def __init__(
        self, app: ASGIApp, *, enabled: bool, per_key: TokenBuckets, per_ip: TokenBuckets,
        shared: Callable[[], RateLimits | None] | None = None,
    ) -> None:
        self.app = app
        self.enabled = enabled
        self.per_key = per_key
        self.per_ip = per_ip
        self.shared = shared

    async def _wait(self, buckets: TokenBuckets, key: str) -> float:
        limiter = self.shared() if self.shared is not None else None
        if limiter is None:
            return buckets.take(key)
        decision = await limiter.hit(f"api:{key}", int(buckets.burst), buckets.burst / buckets.rate)
        return 0.0 if decision.allowed else max(decision.retry_after, 1e-3)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = _state(scope)
        actor: Actor | None = state.get("actor")
        # Relying parties fetch CRLs and CA certificates from behind shared NATs; OCSP has its own per-IP limit.
        # ACME clients are limited per account and per identifier by the ACME server (docs/acme.md).
        if self.enabled and scope["path"] not in ("/health", "/ready") and not scope["path"].startswith(
            ("/.well-known/pki/", "/acme/")
        ):
            if actor is not None and actor.authenticated:
                wait = await self._wait(self.per_key, f"key:{actor.name}")
            else:
                client = scope.get("client")
                wait = await self._wait(self.per_ip, f"ip:{client[0] if client else 'unknown'}")
            if wait > 0:
                await _send_error(
                    scope, send, 429, "rate limit exceeded; slow down",
                    headers={"Retry-After": retry_after_header(wait)},
                )
                return
        if state.get("auth_required") and actor is None:
            await _send_error(
                scope, send, 401, "missing or invalid API key",
                headers={"WWW-Authenticate": 'Bearer realm="certctl"'},
            )
            return
        await self.app(scope, receive, send)


class AuditMiddleware:
    """One `api_<method>` event per authenticated call, written off the request path."""

    def __init__(self, app: ASGIApp, sink: Callable[[], AuditSink | None], clock: Callable[[], Any]) -> None:
        self.app = app
        self.sink = sink
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        actor: Actor | None = _state(scope).get("actor") if scope["type"] == "http" else None
        path = scope.get("path", "")
        if actor is None or path in UNAUDITED_PATHS or not path.startswith("/api/"):
            await self.app(scope, receive, send)
            return
        digest = hashlib.sha256()
        status = [0]
        started = time.perf_counter()

        async def hashing_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                digest.update(message.get("body", b""))
            return message

        async def status_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, hashing_receive, status_send)
        finally:
            sink = self.sink()
            if sink is not None:
                details = {
                    "method": scope["method"],
                    "path": path,
                    "body_hash": digest.hexdigest()[:16],
                    "status": status[0] or 500,
                    "latency_ms": round((time.perf_counter() - started) * 1000, 2),
                }
                sink.submit(
                    build_event(actor, f"api_{scope['method'].lower()}", "api", path, details, self.clock())
                )


Middleware = Callable[[Scope, Receive, Send], Awaitable[None]]

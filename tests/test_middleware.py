"""The edge: security headers, request ids, body limit, CORS, rate limits, auth and the per-request audit trail.

Each test runs on SQLite and PostgreSQL. Tests that need other settings build their own app with
`make_settings` / `start_api`, and a probe router that gives them an admin-only route, an
actor-only route outside /api and a route that crashes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError

from certctl.api.deps import ActorDep, AdminDep, require_admin
from certctl.api.middleware import SECURITY_HEADERS
from certctl.api.ratelimit import TokenBuckets, retry_after_header
from certctl.config import SettingsError
from certctl.domain.models.common import PageParams
from certctl.logs import JsonFormatter
from certctl.store.database import Database
from certctl.store.schema import audit_events
from tests.conftest import ADMIN_KEY, USER_KEY, Api, make_settings, start_api, stop_api

EXPECTED_HEADERS = {name.decode(): value.decode() for name, value in SECURITY_HEADERS}
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")

probe = APIRouter()


@probe.get("/api/v1/_probe/admin")
async def probe_admin(actor: AdminDep) -> dict[str, str]:
    return {"actor": actor.name}


@probe.get("/_probe/actor")
async def probe_actor(actor: ActorDep) -> dict[str, str]:
    return {"actor": actor.name}


@probe.get("/api/v1/_probe/boom")
async def probe_boom() -> dict[str, str]:
    raise RuntimeError("secret internal detail")


class _DriverError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"driver error {sqlstate}")
        self.sqlstate = sqlstate


@probe.get("/api/v1/_probe/db-error/{sqlstate}")
async def probe_db_error(sqlstate: str) -> dict[str, str]:
    raise DBAPIError("SELECT 1", {}, _DriverError(sqlstate))


def client(app: FastAPI, key: str | None = None, ip: str = "127.0.0.1", **headers: str) -> httpx.AsyncClient:
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=(ip, 40000)), base_url="https://testserver", headers=headers
    )


@asynccontextmanager
async def custom_api(database_url: str, tmp_path: Path, **overrides: Any) -> AsyncIterator[Api]:
    running, lifespan = await start_api(make_settings(database_url, tmp_path / "data", **overrides))
    running.app.include_router(probe)
    try:
        yield running
    finally:
        await stop_api(running, lifespan)


def assert_edge_headers(response: httpx.Response) -> None:
    for name, value in EXPECTED_HEADERS.items():
        assert response.headers.get(name) == value, f"{response.status_code}: {name} missing"
    assert response.headers.get("x-request-id"), f"{response.status_code}: X-Request-ID missing"


def assert_error_body(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) >= {"error", "message", "request_id"}
    assert body["request_id"] == response.headers["x-request-id"]
    return body


async def api_events(api: Api, path: str | None = None) -> list[dict[str, Any]]:
    await api.services.audit_sink.flush()
    events, _ = await api.services.audit.list(PageParams(page=1, per_page=500), resource_type="api", resource_id=path)
    return [e.model_dump() for e in events]


# --- security headers and request ids -------------------------------------------------------------------


async def test_security_headers_on_every_response(database_url: str, tmp_path: Path) -> None:
    # Rate limiting on (the reference drops the headers then), a small body limit and CORS configured.
    async with custom_api(
        database_url, tmp_path, rate_limit_enabled=True, rate_limit_rps=1000.0, rate_limit_burst=1000,
        rate_limit_per_user_rps=0.001, rate_limit_per_user_burst=3, max_body_size=2048,
        cors_origins=("https://ui.example.com",),
    ) as api:
        responses = {
            200: await api.anon.get("/health"),
            401: await api.anon.get("/api/v1/teams"),
            404: await api.anon.get("/no/such/page"),
            405: await api.anon.delete("/health"),
            413: await api.anon.post("/api/v1/teams", content=b"x" * 3000),
            204: await api.anon.options(
                "/api/v1/teams",
                headers={"Origin": "https://ui.example.com", "Access-Control-Request-Method": "POST"},
            ),
            403: await api.anon.options(
                "/api/v1/teams", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}
            ),
        }
        responses[400] = await api.admin.post("/api/v1/teams", json={})
        for _ in range(5):
            last = await api.admin.get("/api/v1/teams")
        responses[429] = last
        for status, response in responses.items():
            assert response.status_code == status, (status, response.text)
            assert_edge_headers(response)


async def test_request_id_generated_echoed_or_replaced(api: Api) -> None:
    generated = await api.admin.get("/api/v1/teams")
    assert UUID.match(generated.headers["x-request-id"])

    echoed = await api.admin.get("/api/v1/teams", headers={"X-Request-ID": "trace-42.a:b_c"})
    assert echoed.headers["x-request-id"] == "trace-42.a:b_c"

    for insane in ("has spaces in it", "x" * 129, "quote\"s", "<script>"):
        replaced = await api.admin.get("/api/v1/teams", headers={"X-Request-ID": insane})
        assert UUID.match(replaced.headers["x-request-id"]), insane

    missing = await api.admin.get("/api/v1/teams/nope", headers={"X-Request-ID": "req-404"})
    assert assert_error_body(missing, 404)["request_id"] == "req-404"
    unauthorized = await api.anon.get("/api/v1/teams", headers={"X-Request-ID": "req-401"})
    assert assert_error_body(unauthorized, 401)["request_id"] == "req-401"


async def test_every_log_line_of_a_request_carries_its_id(api: Api) -> None:
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Collect()
    handler.setFormatter(JsonFormatter())
    http_log = logging.getLogger("certctl.http")
    http_log.addHandler(handler)
    level = http_log.level
    http_log.setLevel(logging.INFO)
    try:
        await api.admin.get("/api/v1/teams", headers={"X-Request-ID": "log-me-1"})
    finally:
        http_log.removeHandler(handler)
        http_log.setLevel(level)
    entries = [orjson.loads(line) for line in lines]
    access = [e for e in entries if e["msg"] == "request"]
    assert len(access) == 1
    assert access[0]["request_id"] == "log-me-1"
    assert access[0]["method"] == "GET" and access[0]["path"] == "/api/v1/teams"
    assert access[0]["status"] == 200 and access[0]["actor"] == "alice"
    assert "Bearer" not in lines[0] and ADMIN_KEY not in lines[0]


async def test_unhandled_error_is_a_500_without_internals(database_url: str, tmp_path: Path) -> None:
    async with custom_api(database_url, tmp_path) as api:
        response = await api.admin.get("/api/v1/_probe/boom")
        body = assert_error_body(response, 500)
        assert "secret internal detail" not in response.text
        assert body["error"] == "Internal Server Error"
        assert_edge_headers(response)
        # Still one audit event, with the failure recorded.
        [event] = await api_events(api, "/api/v1/_probe/boom")
        assert event["details"]["status"] == 500


# --- body limit -----------------------------------------------------------------------------------------


async def test_body_limit_content_length_and_chunked(database_url: str, tmp_path: Path) -> None:
    async with custom_api(database_url, tmp_path, max_body_size=4096) as api:
        declared = await api.admin.post("/api/v1/teams", content=b"{" + b" " * 5000 + b"}")
        assert assert_error_body(declared, 413)["message"] == "request body exceeds 4096 bytes"

        async def chunks(total: int) -> AsyncIterator[bytes]:
            sent = 0
            while sent < total:
                yield b" " * 1000
                sent += 1000

        chunked = await api.admin.post(
            "/api/v1/teams", content=chunks(10_000), headers={"content-type": "application/json"}
        )
        assert "content-length" not in chunked.request.headers
        assert_error_body(chunked, 413)
        assert_edge_headers(chunked)

        # A chunked body under the limit reaches the handler intact.
        async def small() -> AsyncIterator[bytes]:
            yield b'{"name": '
            yield b'"chunked-team"}'

        created = await api.admin.post("/api/v1/teams", content=small(), headers={"content-type": "application/json"})
        assert created.status_code == 201, created.text
        assert created.json()["name"] == "chunked-team"
        assert (await api.admin.get("/api/v1/teams")).json()["total"] == 1, "oversized bodies left rows"


# --- text no back end stores alike ------------------------------------------------------------------------


async def test_nul_and_unpaired_surrogates_are_refused_on_both_back_ends(api: Api) -> None:
    json_headers = {"content-type": "application/json"}
    for raw in (rb'{"name": "a\u0000b"}', rb'{"name": "x\udb77y"}', rb'{"name": "ok", "description": "\uDC00"}'):
        refused = await api.admin.post("/api/v1/teams", content=raw, headers=json_headers)
        assert_error_body(refused, 400)
        assert_edge_headers(refused)
    assert_error_body(await api.admin.get("/api/v1/teams", params={"name": "a\x00"}), 400)
    assert (await api.admin.get("/api/v1/teams")).json()["total"] == 0, "a refused body left a row"

    # A surrogate pair is one ordinary character; an escaped backslash is ordinary text.
    emoji = await api.admin.post("/api/v1/teams", content=rb'{"name": "team \ud83d\ude00"}', headers=json_headers)
    assert emoji.status_code == 201 and emoji.json()["name"] == "team \U0001f600"
    literal = await api.admin.post("/api/v1/teams", content=rb'{"name": "C:\\u0000"}', headers=json_headers)
    assert literal.status_code == 201 and literal.json()["name"] == "C:\\u0000"
    # Refused calls by a known key are still audited.
    statuses = [e["details"]["status"] for e in await api_events(api, "/api/v1/teams")]
    assert statuses.count(400) == 4


async def test_values_the_database_refuses_are_a_400(database_url: str, tmp_path: Path) -> None:
    async with custom_api(database_url, tmp_path) as api:
        for sqlstate in ("22003", "22021", "22P05"):  # out of range, bad character, untranslatable
            response = await api.admin.get(f"/api/v1/_probe/db-error/{sqlstate}")
            assert assert_error_body(response, 400)["message"].startswith("a value in the request")
        broken = await api.admin.get("/api/v1/_probe/db-error/08006")  # connection failure: our problem
        assert_error_body(broken, 500)
        assert "driver error" not in broken.text


# --- CORS ---------------------------------------------------------------------------------------------------


def preflight(origin: str, method: str = "POST") -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": "content-type"}


async def test_cors_denied_by_default(api: Api) -> None:
    denied = await api.anon.options("/api/v1/teams", headers=preflight("https://ui.example.com"))
    assert_error_body(denied, 403)
    assert "access-control-allow-origin" not in denied.headers
    simple = await api.admin.get("/api/v1/teams", headers={"Origin": "https://ui.example.com"})
    assert simple.status_code == 200
    assert "access-control-allow-origin" not in simple.headers


async def test_cors_exact_list(database_url: str, tmp_path: Path) -> None:
    allowed = "https://ui.example.com"
    async with custom_api(database_url, tmp_path, cors_origins=(allowed, "http://localhost:3000")) as api:
        ok = await api.anon.options("/api/v1/teams", headers=preflight(allowed))
        assert ok.status_code == 204
        assert ok.headers["access-control-allow-origin"] == allowed
        assert ok.headers["vary"] == "Origin"
        assert ok.headers["access-control-max-age"] == "86400"
        assert set(ok.headers["access-control-allow-methods"].split(", ")) == {
            "GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"
        }
        assert "Authorization" in ok.headers["access-control-allow-headers"]
        assert_edge_headers(ok)

        other = await api.anon.options("/api/v1/teams", headers=preflight("https://ui.example.com.evil.test"))
        assert other.status_code == 403 and "access-control-allow-origin" not in other.headers

        actual = await api.admin.get("/api/v1/teams", headers={"Origin": allowed})
        assert actual.status_code == 200
        assert actual.headers["access-control-allow-origin"] == allowed and actual.headers["vary"] == "Origin"
        foreign = await api.admin.get("/api/v1/teams", headers={"Origin": "https://elsewhere.test"})
        assert "access-control-allow-origin" not in foreign.headers
        # CORS never bypasses auth: an allowed origin without a key is still 401.
        assert (await api.anon.get("/api/v1/teams", headers={"Origin": allowed})).status_code == 401


async def test_cors_wildcard(database_url: str, tmp_path: Path) -> None:
    async with custom_api(database_url, tmp_path, cors_origins=("*",)) as api:
        ok = await api.anon.options("/api/v1/teams", headers=preflight("https://anything.test", "DELETE"))
        assert ok.status_code == 204 and ok.headers["access-control-allow-origin"] == "*"
        actual = await api.admin.get("/api/v1/teams", headers={"Origin": "https://anything.test"})
        assert actual.headers["access-control-allow-origin"] == "*"


# --- rate limiting ----------------------------------------------------------------------------------------


def test_token_bucket_refills_at_the_configured_rate() -> None:
    buckets = TokenBuckets(rate=2.0, burst=3)
    assert [buckets.take("k", now=100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = buckets.take("k", now=100.0)
    assert wait == pytest.approx(0.5)
    assert buckets.take("k", now=100.25) == pytest.approx(0.25)
    assert buckets.take("k", now=100.5) == 0.0
    assert buckets.take("other", now=100.5) == 0.0, "buckets are per key"
    assert buckets.take("k", now=200.0) == 0.0 and buckets.take("k", now=200.0) == 0.0
    assert retry_after_header(0.01) == "1" and retry_after_header(1.2) == "2"


def test_token_buckets_forget_full_buckets_beyond_max_keys() -> None:
    buckets = TokenBuckets(rate=1.0, burst=1, max_keys=10)
    for i in range(10):
        buckets.take(f"ip:{i}", now=0.0)
    buckets.take("ip:new", now=100.0)
    assert len(buckets._buckets) <= 10


async def test_rate_limit_per_api_key(database_url: str, tmp_path: Path) -> None:
    async with custom_api(
        database_url, tmp_path, rate_limit_enabled=True, rate_limit_rps=0.01, rate_limit_burst=4,
        rate_limit_per_user_rps=0.01, rate_limit_per_user_burst=2,
    ) as api:
        assert [(await api.admin.get("/api/v1/teams")).status_code for _ in range(2)] == [200, 200]
        limited = await api.admin.get("/api/v1/teams")
        body = assert_error_body(limited, 429)
        assert body["error"] == "Too Many Requests"
        assert int(limited.headers["retry-after"]) >= 1
        # Another key, same IP: its own bucket.
        assert (await api.user.get("/api/v1/teams")).status_code == 200
        # The same key from another address shares the key's bucket.
        async with client(api.app, ADMIN_KEY, ip="10.9.8.7") as elsewhere:
            assert (await elsewhere.get("/api/v1/teams")).status_code == 429
        # A limited call leaves no audit event (it never reached the app).
        assert len(await api_events(api, "/api/v1/teams")) == 3


async def test_rate_limit_per_user_inherits_global(database_url: str, tmp_path: Path) -> None:
    async with custom_api(
        database_url, tmp_path, rate_limit_enabled=True, rate_limit_rps=0.01, rate_limit_burst=3,
    ) as api:
        statuses = [(await api.user.get("/api/v1/teams")).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]


async def test_rate_limit_per_ip_for_unauthenticated(database_url: str, tmp_path: Path) -> None:
    async with custom_api(
        database_url, tmp_path, rate_limit_enabled=True, rate_limit_rps=0.01, rate_limit_burst=3,
        rate_limit_per_user_burst=100,
    ) as api:
        async with client(api.app, ip="192.0.2.1") as a, client(api.app, "wrong-key", ip="192.0.2.1") as a_bad:
            # Guessing keys spends the caller's IP budget: 401, 401, 401, then 429.
            statuses = [(await a_bad.get("/api/v1/teams")).status_code for _ in range(3)]
            assert statuses == [401, 401, 401]
            limited = await a.get("/api/v1/auth/info")
            assert_error_body(limited, 429)
            assert "retry-after" in limited.headers
        async with client(api.app, ip="192.0.2.2") as b:
            assert (await b.get("/api/v1/auth/info")).status_code == 200
        # Health probes are never limited, nor CRLs and CA certificates (OCSP has its own per-IP limit).
        async with client(api.app, ip="192.0.2.1") as a:
            assert (await a.get("/health")).status_code == 200
            for _ in range(5):
                assert (await a.get("/.well-known/pki/crl/iss-local")).status_code == 200
        # An authenticated caller from the exhausted IP is limited by its key, not the IP.
        async with client(api.app, USER_KEY, ip="192.0.2.1") as keyed:
            assert (await keyed.get("/api/v1/teams")).status_code == 200


async def test_rate_limit_off_by_setting(database_url: str, tmp_path: Path) -> None:
    async with custom_api(
        database_url, tmp_path, rate_limit_enabled=False, rate_limit_rps=0.01, rate_limit_burst=1
    ) as api:
        assert {(await api.admin.get("/api/v1/teams")).status_code for _ in range(5)} == {200}


# --- authentication and authorization ---------------------------------------------------------------


async def test_401_names_the_bearer_scheme(api: Api) -> None:
    attempts = [
        {},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": f"Basic {ADMIN_KEY}"},
        {"Authorization": ADMIN_KEY},
    ]
    for headers in attempts:
        response = await api.anon.get("/api/v1/teams", headers=headers)
        body = assert_error_body(response, 401)
        assert response.headers["www-authenticate"] == 'Bearer realm="certctl"', headers
        assert body["error"] == "Unauthorized"
    # Public routes need no key.
    for path in ("/health", "/ready", "/api/v1/version", "/api/v1/auth/info", "/api/v1/openapi.json"):
        assert (await api.anon.get(path)).status_code == 200, path
    # The scheme name is case-insensitive (RFC 7235 §2.1).
    assert (await api.anon.get("/api/v1/teams", headers={"Authorization": f"bearer {ADMIN_KEY}"})).status_code == 200


async def test_401_from_a_handler_dependency_also_names_the_scheme(database_url: str, tmp_path: Path) -> None:
    async with custom_api(database_url, tmp_path) as api:
        response = await api.anon.get("/_probe/actor")
        assert_error_body(response, 401)
        assert response.headers["www-authenticate"] == 'Bearer realm="certctl"'
        assert (await api.user.get("/_probe/actor")).json() == {"actor": "bob"}


def admin_routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path) of every route that depends on `require_admin`, however deeply it is included."""

    def needs_admin(dependant: Any) -> bool:
        return any(d.call is require_admin or needs_admin(d) for d in dependant.dependencies)

    def walk(routes: list[Any], prefix: str, inherited: bool) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        for route in routes:
            if isinstance(route, APIRoute):
                if inherited or needs_admin(route.dependant):
                    found.extend((method, prefix + route.path) for method in sorted(route.methods))
            elif hasattr(route, "original_router"):  # FastAPI >= 0.130 wraps included routers
                context = route.include_context
                extra = any(d.dependency is require_admin for d in context.dependencies)
                found += walk(route.original_router.routes, prefix + context.prefix, inherited or extra)
        return found

    return walk(list(app.routes), "", False)


async def test_admin_routes_refuse_non_admin_keys(database_url: str, tmp_path: Path) -> None:
    async with custom_api(database_url, tmp_path) as api:
        routes = admin_routes(api.app)
        assert ("GET", "/api/v1/_probe/admin") in routes
        for method, path in routes:
            url = re.sub(r"\{[^}]+\}", "x", path)
            response = await api.user.request(method, url, json={})
            assert_error_body(response, 403)
            assert (await api.anon.request(method, url, json={})).status_code == 401, (method, path)
        assert (await api.admin.get("/api/v1/_probe/admin")).json() == {"actor": "alice"}


async def test_auth_none_is_loopback_only_and_never_admin(database_url: str, tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="CERTCTL_AUTH_TYPE"):
        make_settings(database_url, tmp_path, auth_type="none", host="0.0.0.0")
    with pytest.raises(SettingsError, match="loopback"):
        make_settings(database_url, tmp_path, auth_type="none", host="10.1.2.3")
    for host in ("127.0.0.1", "::1", "localhost", "127.5.5.5"):
        make_settings(database_url, tmp_path, auth_type="none", host=host)

    async with custom_api(database_url, tmp_path, auth_type="none", api_keys=()) as api:
        assert (await api.anon.get("/api/v1/teams")).status_code == 200
        assert_error_body(await api.anon.get("/api/v1/_probe/admin"), 403)
        info = (await api.anon.get("/api/v1/auth/info")).json()
        assert info == {"auth_type": "none", "required": False}
        [event] = await api_events(api, "/api/v1/teams")
        assert event["actor"] == "anonymous"
    assert not (tmp_path / "data" / "admin.key").exists(), "no admin key is generated without key auth"


# --- per-request audit trail -----------------------------------------------------------------------------


async def test_audit_event_per_authenticated_call(api: Api) -> None:
    await api.admin.get("/api/v1/teams", params={"page": 1, "per_page": 10, "secret": "do-not-store"})
    body = b'{"name": "audited"}'
    await api.user.post("/api/v1/teams", content=body, headers={"content-type": "application/json"})
    await api.admin.get("/api/v1/teams/missing")
    for path in ("/health", "/ready", "/api/v1/version"):
        await api.admin.get(path)
    await api.anon.get("/api/v1/teams")  # 401: not authenticated, not audited

    events = await api_events(api)
    by_path: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_path.setdefault(event["resource_id"], []).append(event)
    assert set(by_path) == {"/api/v1/teams", "/api/v1/teams/missing"}

    listing = next(e for e in by_path["/api/v1/teams"] if e["action"] == "api_get")
    post = next(e for e in by_path["/api/v1/teams"] if e["action"] == "api_post")
    assert len(by_path["/api/v1/teams"]) == 2
    assert listing["actor"] == "alice" and listing["actor_type"] == "User" and listing["resource_type"] == "api"
    details = listing["details"]
    assert set(details) == {"method", "path", "body_hash", "status", "latency_ms"}
    assert details["method"] == "GET" and details["path"] == "/api/v1/teams" and details["status"] == 200
    assert details["body_hash"] == hashlib.sha256(b"").hexdigest()[:16]
    assert isinstance(details["latency_ms"], float | int) and details["latency_ms"] >= 0
    assert "do-not-store" not in orjson.dumps(events).decode()

    assert post["actor"] == "bob" and post["details"]["status"] == 201
    assert post["details"]["body_hash"] == hashlib.sha256(body).hexdigest()[:16]
    [missing] = by_path["/api/v1/teams/missing"]
    assert missing["details"]["status"] == 404


async def test_audit_events_survive_a_clean_shutdown(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(database_url, tmp_path / "data")
    running, lifespan = await start_api(settings)
    calls = 400

    async def burst(make: Callable[[int], Any]) -> None:
        await asyncio.gather(*(make(i) for i in range(calls // 4)))

    for _ in range(4):
        await burst(lambda i: running.admin.get(f"/api/v1/teams/t-{i}"))
    # Stop straight away: the sink's queue and its in-flight batch must both reach the database.
    await stop_api(running, lifespan)

    db = Database(database_url)
    try:
        async with db.read() as conn:
            stored = await conn.scalar(
                select(func.count()).select_from(audit_events).where(audit_events.c.action == "api_get")
            )
    finally:
        await db.dispose()
    assert stored == calls

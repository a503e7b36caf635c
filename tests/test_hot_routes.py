"""The hot-route layer answers exactly as FastAPI's routing would, and picks the same route for every path."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from certctl.api.app import ROUTERS
from certctl.api.hot_routes import HotRoutes, RouteIndex, api_routes
from tests import factories
from tests.conftest import ADMIN_KEY, Api, make_settings, start_api, stop_api

BOOTSTRAP = "bootstrap-token-for-tests"


def _first_match(routes: list[APIRoute], method: str, path: str) -> APIRoute | None:
    """FastAPI's rule, spelled out: the first route in order whose pattern matches and that allows the method."""
    for route in routes:
        if route.path_regex.match(path) and method in route.methods:
            return route
    return None


def test_the_index_selects_the_route_fastapi_selects_for_every_template() -> None:
    routes = api_routes(ROUTERS)
    index = RouteIndex(routes, {})
    probes: set[tuple[str, str]] = set()
    for route in routes:
        for value in ("x1", "retired", "bulk-revoke", "a.b"):
            path = re.sub(r"\{[^}:]+(:path)?\}", lambda m, v=value: f"{v}/z" if m.group(1) else v, route.path)
            for method in ("GET", "POST", "PUT", "DELETE", "PATCH"):
                probes.add((method, path))
                probes.add((method, path + "/"))
    probes |= {("GET", "/api/v1/nothing"), ("GET", "/"), ("POST", "/api/v1/agents/a/heartbeat/x")}
    assert len(probes) > 1000
    for method, path in sorted(probes):
        expected = _first_match(routes, method, path)
        selected = index.select(method, path)
        assert (selected[0] if selected else None) is expected, (method, path)


@pytest.fixture
async def pair(database_url: str, tmp_path: Path) -> AsyncIterator[tuple[Api, Api]]:
    """Two apps on one database: the normal one, and one with the hot-route layer taken out."""
    hot, hot_lifespan = await start_api(make_settings(database_url, tmp_path / "hot"))
    routed, routed_lifespan = await start_api(make_settings(database_url, tmp_path / "routed"))
    routed.app.user_middleware = [m for m in routed.app.user_middleware if m.cls is not HotRoutes]
    routed.app.middleware_stack = routed.app.build_middleware_stack()
    try:
        yield hot, routed
    finally:
        await stop_api(routed, routed_lifespan)
        await stop_api(hot, hot_lifespan)


def _client(api: Api, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=api.app, client=("127.0.0.1", 50002)),
                             base_url="https://testserver", headers={"Authorization": f"Bearer {token}"})


def _comparable(response: httpx.Response) -> tuple[int, Any, str]:
    body = response.json() if response.content else None
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k not in ("request_id",)}
    return response.status_code, body, response.headers.get("content-type", "")


async def _same(pair: tuple[Api, Api], token: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
    answers = []
    for api in pair:
        async with _client(api, token) as client:
            answers.append(await client.request(method, path, **kwargs))
    assert _comparable(answers[0]) == _comparable(answers[1]), (method, path, answers[0].text, answers[1].text)
    return answers[0]


async def test_agent_routes_answer_alike(pair: tuple[Api, Api]) -> None:
    hot, _ = pair
    async with _client(hot, BOOTSTRAP) as bootstrap:
        registered = await bootstrap.post("/api/v1/agents", json={"name": factories.unique("hot"), "hostname": "h"})
    agent_id, key = registered.json()["id"], registered.json()["api_key"]
    beat = f"/api/v1/agents/{agent_id}/heartbeat"
    assert (await _same(pair, key, "POST", beat, json={"version": "2.0", "hostname": "h2"})).json() == \
        {"status": "ok"}
    await _same(pair, key, "POST", beat)  # no body: the heartbeat's body is optional
    for bad in ({"version": 7}, [1, 2]):
        assert (await _same(pair, key, "POST", beat, json=bad)).status_code == 400
    assert (await _same(pair, key, "POST", beat, content=b"{not json",
                        headers={"content-type": "application/json"})).status_code == 400
    assert (await _same(pair, key, "POST", beat, content=b'{"version": "1"}',
                        headers={"content-type": "text/plain"})).status_code == 400
    csr = f"/api/v1/agents/{agent_id}/csr"
    for bad in ({}, {"csr_pem": "not a CSR", "certificate_id": "mc-none"}):
        assert (await _same(pair, key, "POST", csr, json=bad)).status_code in (400, 404)
    work = await _same(pair, key, "GET", f"/api/v1/agents/{agent_id}/work")
    assert work.json() == {"jobs": [], "count": 0}
    assert (await _same(pair, ADMIN_KEY, "GET", "/api/v1/agents/no-such-agent/work")).status_code == 404
    assert (await _same(pair, ADMIN_KEY, "POST", "/api/v1/agents/no-such-agent/heartbeat", json={})).status_code \
        == 404
    async with _client(hot, ADMIN_KEY) as admin:
        assert (await admin.delete(f"/api/v1/agents/{agent_id}")).status_code in (200, 204)
    assert (await _same(pair, ADMIN_KEY, "POST", beat, json={})).status_code == 410


async def test_certificate_routes_answer_alike(pair: tuple[Api, Api]) -> None:
    hot, _ = pair
    async with _client(hot, ADMIN_KEY) as admin:
        template = await factories.certificate(admin)
    body = {k: template[k] for k in ("common_name", "owner_id", "team_id", "issuer_id", "renewal_policy_id")}
    body["name"] = factories.unique("hot-cert")
    async with _client(hot, ADMIN_KEY) as admin:  # created once (through the hot path): a second would differ by id
        created = await admin.post("/api/v1/certificates", json=body)
    assert created.status_code == 201, created.text
    cert_id = created.json()["id"]
    assert (await _same(pair, ADMIN_KEY, "GET", f"/api/v1/certificates/{cert_id}")).json()["id"] == cert_id
    assert (await _same(pair, ADMIN_KEY, "GET", "/api/v1/certificates/no-such-cert")).status_code == 404
    listed = await _same(pair, ADMIN_KEY, "GET", "/api/v1/certificates",
                         params={"sort": "-createdAt", "per_page": 5, "fields": "id,name"})
    assert listed.json()["data"][0] == {"id": cert_id, "name": body["name"]}
    assert (await _same(pair, ADMIN_KEY, "GET", "/api/v1/certificates", params={"per_page": 0})).status_code == 400
    for bad in ({**body, "name": ""}, {"name": "x"}, []):
        assert (await _same(pair, ADMIN_KEY, "POST", "/api/v1/certificates", json=bad)).status_code == 400
    assert (await _same(pair, ADMIN_KEY, "POST", "/api/v1/certificates")).status_code == 400
    # A name taken is refused alike, and nothing more is stored.
    assert (await _same(pair, ADMIN_KEY, "POST", "/api/v1/certificates", json=body)).status_code == 409
    async with _client(hot, ADMIN_KEY) as admin:
        names = [c["name"] for c in (await admin.get("/api/v1/certificates", params={"per_page": 500})).json()["data"]]
    assert names.count(body["name"]) == 1

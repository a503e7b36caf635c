"""Fixtures: every API test runs on SQLite and on PostgreSQL (127.0.0.1:5432), each test on a fresh database.

A migrated template is made once per back end and per xdist worker; each test gets a copy
(a file copy for SQLite, CREATE DATABASE … TEMPLATE for PostgreSQL), so tests never share rows.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import shutil
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from certctl.api.app import create_app
from certctl.config import NamedKey, Settings
from certctl.logs import QUIET_LIBRARIES, configure_logging
from certctl.services.container import Services
from certctl.store import migrate
from certctl.store.database import Database

PG_ADMIN_URL = os.environ.get("CERTCTL_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
ADMIN_KEY = "test-admin-key-0123456789"
USER_KEY = "test-user-key-0123456789"
TEST_KEYS = (NamedKey("alice", ADMIN_KEY, True), NamedKey("bob", USER_KEY, False))
BACKENDS = ["sqlite", "postgresql"]


def _worker() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


def _pg_url(database: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + database


async def _pg_admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _run(coro: Any) -> None:
    """Run a coroutine to completion from sync code, even while a test's event loop is running."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, coro).result()


async def _migrate(url: str) -> None:
    db = Database(url)
    try:
        await migrate.upgrade(db)
    finally:
        await db.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tpl") / "template.db"
    _run(_migrate(f"sqlite:///{path}"))
    return path


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    name = f"certctl_tpl_{_worker()}_{uuid.uuid4().hex[:6]}"
    _run(_pg_admin(f'CREATE DATABASE "{name}"'))
    _run(_migrate(_pg_url(name)))
    yield name
    _run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def database_url(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[str]:
    if backend == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        target = tmp_path / "certctl.db"
        shutil.copy(template, target)
        yield f"sqlite:///{target}"
        return
    template_name: str = request.getfixturevalue("pg_template")
    name = f"certctl_t_{uuid.uuid4().hex[:12]}"
    await _pg_admin(f'CREATE DATABASE "{name}" TEMPLATE "{template_name}"')
    try:
        yield _pg_url(name)
    finally:
        await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def make_settings(database_url: str, data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "database_url": database_url,
        "api_keys": TEST_KEYS,
        "rate_limit_enabled": False,
        "config_encryption_key": "x" * 40,
        "agent_bootstrap_token": "bootstrap-token-for-tests",
        "database_max_conns": 5,  # parallel test workers share PostgreSQL's 100 connections
    }
    values.update(overrides)
    values["extra"] = {"CERTCTL_SCHEDULER_ENABLED": "false", **values.get("extra", {})}  # tests drive loops directly
    return Settings(**values).validated()


@dataclass
class Api:
    """A running app plus clients for each kind of caller."""

    app: FastAPI
    admin: httpx.AsyncClient
    user: httpx.AsyncClient
    anon: httpx.AsyncClient

    @property
    def services(self) -> Services:
        services: Services = self.app.state.services
        return services

    async def audit_actions(self, resource_type: str | None = None) -> list[str]:
        await self.services.audit_sink.flush()
        params: dict[str, Any] = {"per_page": 500}
        if resource_type:
            params["resource_type"] = resource_type
        response = await self.admin.get("/api/v1/audit", params=params)
        assert response.status_code == 200, response.text
        return [event["action"] for event in response.json()["data"]]


def _client(app: FastAPI, key: str | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=("127.0.0.1", 50000)),
        base_url="https://testserver",
        headers=headers,
    )


async def start_api(settings: Settings, **app_kwargs: Any) -> tuple[Api, Any]:
    app = create_app(settings, **app_kwargs)
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    return Api(app, _client(app, ADMIN_KEY), _client(app, USER_KEY), _client(app, None)), lifespan


async def stop_api(api: Api, lifespan: Any) -> None:
    for client in (api.admin, api.user, api.anon):
        await client.aclose()
    await lifespan.__aexit__(None, None, None)


@pytest.fixture
async def api(database_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    running, lifespan = await start_api(make_settings(database_url, tmp_path / "data"))
    try:
        yield running
    finally:
        await stop_api(running, lifespan)


@pytest.fixture
def debug_log(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """Everything the server's own logging set-up writes at debug level, as JSON lines (secret-leak tests)."""
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, {n: logging.getLogger(n).level for n in QUIET_LIBRARIES})
    monkeypatch.setattr(sys, "stderr", stream)
    configure_logging("debug", "json")
    try:
        yield stream
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        for name, level in saved[2].items():
            logging.getLogger(name).setLevel(level)

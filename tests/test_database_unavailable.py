"""Losing the database is a 503 in the reference error shape, never a 500, and service resumes by itself."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from tests.conftest import PG_ADMIN_URL, make_settings, start_api, stop_api

OUTAGE_SUFFIX = "_away"


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_lost_database_gives_503_then_recovers(database_url: str, tmp_path: Path) -> None:
    api, lifespan = await start_api(make_settings(database_url, tmp_path / "data"))
    name = database_url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(PG_ADMIN_URL)
    renamed = False
    try:
        assert (await api.admin.get("/api/v1/teams")).status_code == 200
        await api.services.audit_sink.flush()  # nothing may reconnect between the cut and the rename
        # Cut every pooled connection and make the database unreachable by name.
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)
        await admin.execute(f'ALTER DATABASE "{name}" RENAME TO "{name}{OUTAGE_SUFFIX}"')
        renamed = True
        for path in ("/api/v1/teams", "/api/v1/teams", "/api/v1/certificates/nope", "/ready"):
            response = await api.admin.get(path)
            assert response.status_code == 503, (path, response.status_code, response.text)
            assert response.json()["error"] == "Service Unavailable" and response.json()["request_id"]
        created = await api.admin.post("/api/v1/teams", json={"name": "during-outage"})
        assert created.status_code == 503, created.text

        await admin.execute(f'ALTER DATABASE "{name}{OUTAGE_SUFFIX}" RENAME TO "{name}"')
        renamed = False
        assert (await api.admin.get("/api/v1/teams")).status_code == 200
        assert (await api.admin.post("/api/v1/teams", json={"name": "after-outage"})).status_code == 201
    finally:
        if renamed:
            await admin.execute(f'ALTER DATABASE "{name}{OUTAGE_SUFFIX}" RENAME TO "{name}"')
        await admin.close()
        await stop_api(api, lifespan)

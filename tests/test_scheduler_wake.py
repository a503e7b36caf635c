"""New Pending issuing jobs run at once in the process that queued them, not at the processor's next tick."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests import factories
from tests.conftest import make_settings, start_api, stop_api


async def test_a_renewal_with_server_keys_completes_without_waiting_for_the_tick(
    database_url: str, tmp_path: Path
) -> None:
    settings = make_settings(database_url, tmp_path / "wake", keygen_mode="server", extra={
        "CERTCTL_SCHEDULER_ENABLED": "true", "CERTCTL_SCHEDULER_JOB_PROCESSOR_INTERVAL": "300s"})
    api, lifespan = await start_api(settings)
    try:
        await asyncio.sleep(0.5)  # the loops' first runs at start are over
        cert = await factories.seed_certificate(api)
        job_id = (await api.admin.post(f"/api/v1/certificates/{cert['id']}/renew")).json()["job_id"]
        for _ in range(100):
            status = (await api.admin.get(f"/api/v1/jobs/{job_id}")).json()["status"]
            if status == "Completed":
                break
            await asyncio.sleep(0.05)
        assert status == "Completed"
    finally:
        await stop_api(api, lifespan)

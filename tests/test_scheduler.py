"""The scheduler: settings, the loop runner's guards, the leader lock (exclusivity, renewal, failover, release)
on SQLite and PostgreSQL, the job processor's concurrency bound, and the scheduler in the app's lifespan."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pytest

from certctl.config import Settings, SettingsError
from certctl.domain.clock import FakeClock
from certctl.scheduler import Loop, Scheduler, SchedulerSettings, build_scheduler
from certctl.scheduler.leader import LeaderLock
from certctl.store import leases_repo
from certctl.store.database import Database
from tests import factories
from tests.conftest import Api
from tests.scheduler_helpers import cert, clock_of, clocked_api, fake_clock, job

# ---- settings ---------------------------------------------------------------------------------------------


def test_settings_defaults_follow_the_reference() -> None:
    s = SchedulerSettings.from_env({})
    assert s.enabled and s.renewal_concurrency == 25
    assert s.job_lease == timedelta(minutes=5) and s.leader_lease == timedelta(seconds=30)
    assert s.renewal_check_interval == timedelta(hours=1)
    assert s.job_processor_interval == timedelta(seconds=30)
    assert s.job_timeout_interval == timedelta(minutes=10)
    assert s.agent_health_check_interval == timedelta(minutes=2)
    assert s.short_lived_expiry_check_interval == timedelta(seconds=30)
    assert s.awaiting_csr_timeout == timedelta(hours=24)
    assert s.awaiting_approval_timeout == timedelta(hours=168)


def test_settings_read_durations_and_numbers() -> None:
    s = SchedulerSettings.from_env({
        "CERTCTL_SCHEDULER_ENABLED": "off", "CERTCTL_RENEWAL_CONCURRENCY": "4", "CERTCTL_JOB_LEASE_SECONDS": "3",
        "CERTCTL_SCHEDULER_RENEWAL_CHECK_INTERVAL": "1h30m", "CERTCTL_SCHEDULER_JOB_PROCESSOR_INTERVAL": "250ms",
        "CERTCTL_JOB_AWAITING_CSR_TIMEOUT": "2d", "CERTCTL_SCHEDULER_LEASE_REAPER_INTERVAL": "0.5",
    })
    assert not s.enabled and s.renewal_concurrency == 4 and s.job_lease == timedelta(seconds=3)
    assert s.renewal_check_interval == timedelta(minutes=90)
    assert s.job_processor_interval == timedelta(milliseconds=250)
    assert s.awaiting_csr_timeout == timedelta(days=2)
    assert s.lease_reaper_interval == timedelta(milliseconds=500)


@pytest.mark.parametrize(("name", "value", "words"), [
    ("CERTCTL_RENEWAL_CONCURRENCY", "0", "between 1 and 1000"),
    ("CERTCTL_RENEWAL_CONCURRENCY", "many", "not an integer"),
    ("CERTCTL_JOB_LEASE_SECONDS", "0", "between 1 and 86400"),
    ("CERTCTL_SCHEDULER_LEADER_LEASE_SECONDS", "1", "between 2 and 3600"),
    ("CERTCTL_SCHEDULER_JOB_PROCESSOR_INTERVAL", "10 s", "not a duration"),
    ("CERTCTL_SCHEDULER_RENEWAL_CHECK_INTERVAL", "0s", "below the minimum"),
    ("CERTCTL_JOB_AWAITING_APPROVAL_TIMEOUT", "1w", "not a duration"),
    ("CERTCTL_SCHEDULER_ENABLED", "perhaps", "not a boolean"),
])
def test_bad_values_stop_the_server_naming_the_variable(name: str, value: str, words: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({name: value})
    assert str(caught.value).startswith(name) and words in str(caught.value)
    with pytest.raises(SettingsError, match=name):
        SchedulerSettings.from_env({name: value})


# ---- the runner -------------------------------------------------------------------------------------------

def _offline_lock() -> LeaderLock:
    # Loops below are not leader-only and hold no lease: the lock never reaches a database.
    return LeaderLock(cast(Database, None), FakeClock(), "test-holder", timedelta(seconds=30))


async def test_skip_if_running_timeout_and_failure_are_reported() -> None:
    release = asyncio.Event()
    runs: list[str] = []

    async def slow() -> str:
        runs.append("slow")
        await release.wait()
        return "done"

    async def hangs() -> None:
        await asyncio.Event().wait()

    async def broken() -> None:
        raise RuntimeError("boom")

    scheduler = Scheduler([
        Loop("slow", timedelta(hours=1), slow, leader_only=False),
        Loop("hangs", timedelta(hours=1), hangs, leader_only=False, timeout=timedelta(milliseconds=20)),
        Loop("broken", timedelta(hours=1), broken, leader_only=False),
    ], _offline_lock())
    first = asyncio.create_task(scheduler.run_once("slow"))
    await asyncio.sleep(0)
    second = await scheduler.run_once("slow")
    assert second.outcome == "skipped: running" and runs == ["slow"]
    release.set()
    assert (await first).outcome == "ran" and (await first).result == "done"
    assert (await scheduler.run_once("slow")).outcome == "ran"  # free again
    assert (await scheduler.run_once("hangs")).outcome == "timed out"
    assert (await scheduler.run_once("broken")).outcome == "failed"
    with pytest.raises(ValueError, match="already registered"):
        scheduler.add(Loop("slow", timedelta(hours=1), slow))


async def test_start_runs_loops_once_unless_told_not_and_stop_drains() -> None:
    ran: list[str] = []
    finishing = asyncio.Event()
    finished: list[str] = []

    async def quick() -> None:
        ran.append("quick")

    async def later() -> None:
        ran.append("later")

    async def long_run() -> None:
        ran.append("long")
        await finishing.wait()
        finished.append("long")

    scheduler = Scheduler([
        Loop("quick", timedelta(hours=1), quick, leader_only=False),
        Loop("later", timedelta(hours=1), later, leader_only=False, run_at_start=False),
        Loop("long", timedelta(hours=1), long_run, leader_only=False),
    ], _offline_lock(), drain_timeout=timedelta(seconds=5))
    await scheduler.start()
    for _ in range(100):
        if "quick" in ran and "long" in ran:
            break
        await asyncio.sleep(0.01)
    assert sorted(ran) == ["long", "quick"]  # "later" waits for its first interval

    stopping = asyncio.create_task(scheduler.stop())
    await asyncio.sleep(0.05)
    assert not stopping.done() and scheduler.stopping  # a run in progress is drained, not dropped
    finishing.set()
    await asyncio.wait_for(stopping, timeout=5)
    assert finished == ["long"] and sorted(ran) == ["long", "quick"]


async def test_stop_cancels_what_outlives_the_drain() -> None:
    async def forever() -> None:
        await asyncio.Event().wait()

    scheduler = Scheduler([Loop("forever", timedelta(hours=1), forever, leader_only=False,
                                timeout=timedelta(hours=1))], _offline_lock(), drain_timeout=timedelta(milliseconds=50))
    await scheduler.start()
    await asyncio.sleep(0.01)
    await asyncio.wait_for(scheduler.stop(), timeout=5)


async def test_loops_tick_at_their_interval() -> None:
    ticks: list[int] = []

    async def tick() -> None:
        ticks.append(1)

    scheduler = Scheduler([Loop("tick", timedelta(milliseconds=10), tick, leader_only=False)], _offline_lock())
    await scheduler.start()
    for _ in range(200):
        if len(ticks) >= 3:
            break
        await asyncio.sleep(0.01)
    await scheduler.stop()
    assert len(ticks) >= 3


# ---- the leader lock --------------------------------------------------------------------------------------

async def _leases(api: Api) -> dict[str, str]:
    async with api.services.ctx.db.read() as conn:
        return {row["name"]: row["holder"] for row in await leases_repo.all_leases(conn)}


async def test_two_schedulers_one_leader_then_failover_and_release(database_url: str, tmp_path: Path) -> None:
    clock = fake_clock()
    settings = SchedulerSettings(leader_lease=timedelta(seconds=30))
    async with clocked_api(database_url, tmp_path / "a", clock) as a, \
            clocked_api(database_url, tmp_path / "b", clock) as b:
        first, second = build_scheduler(a.services, settings), build_scheduler(b.services, settings)
        assert first.lock.holder != second.lock.holder
        assert (await first.run_once("agent_health")).outcome == "ran"
        assert (await second.run_once("agent_health")).outcome == "skipped: not leader"
        # Loops are leased one by one: the second server may lead another loop.
        assert (await second.run_once("renewal_scan")).outcome == "ran"
        assert (await first.run_once("renewal_scan")).outcome == "skipped: not leader"
        # The job processor runs everywhere.
        assert (await first.run_once("job_processor")).outcome == "ran"
        assert (await second.run_once("job_processor")).outcome == "ran"
        assert await _leases(a) == {"agent_health": first.lock.holder, "renewal_scan": second.lock.holder}

        # The leader's keeper renews its lease: 50 s later (lease 30 s) it still leads.
        clock.advance(timedelta(seconds=20))
        assert await first.lock.renew_all() == ["agent_health"]
        clock.advance(timedelta(seconds=20))
        assert (await second.run_once("agent_health")).outcome == "skipped: not leader"
        assert (await first.run_once("agent_health")).outcome == "ran"

        # The first server dies (no more renewals): after the lease runs out the second takes over.
        clock.advance(timedelta(seconds=29))
        assert (await second.run_once("agent_health")).outcome == "skipped: not leader"
        clock.advance(timedelta(seconds=2))
        assert (await second.run_once("agent_health")).outcome == "ran"
        assert (await _leases(a))["agent_health"] == second.lock.holder
        # ...and the old leader, back from a pause, does not run it: its renewal finds the lease gone.
        assert "agent_health" not in await first.lock.renew_all()
        assert not first.lock.holds("agent_health")
        assert (await first.run_once("agent_health")).outcome == "skipped: not leader"

        # A clean shutdown releases at once: no wait for expiry.
        await second.stop()
        assert await _leases(a) == {}
        assert (await first.run_once("agent_health")).outcome == "ran"
        assert (await first.run_once("renewal_scan")).outcome == "ran"
        await first.stop()


async def test_concurrent_acquisitions_elect_exactly_one(database_url: str, tmp_path: Path) -> None:
    clock = fake_clock()
    async with clocked_api(database_url, tmp_path / "a", clock) as api:
        db = api.services.ctx.db
        locks = [LeaderLock(db, clock, f"server-{i}", timedelta(seconds=30)) for i in range(5)]
        results = await asyncio.gather(*(lock.acquire("renewal_scan") for lock in locks))
        assert sorted(results) == [False, False, False, False, True]
        winner = locks[results.index(True)]
        assert await _leases(api) == {"renewal_scan": winner.holder}
        # Expired: again exactly one of the others (or the winner) takes it, never two.
        clock.advance(timedelta(seconds=31))
        results = await asyncio.gather(*(lock.acquire("renewal_scan") for lock in locks if lock is not winner))
        assert sorted(results) == [False, False, False, True]


# ---- the job processor ------------------------------------------------------------------------------------

async def test_job_processor_bounds_concurrency_and_stops_claiming_at_shutdown(
    database_url: str, tmp_path: Path
) -> None:
    async with clocked_api(database_url, tmp_path / "p", keygen_mode="server") as api:
        job_ids = []
        for _ in range(7):
            cert = await factories.seed_certificate(api)
            response = await api.admin.post(f"/api/v1/certificates/{cert['id']}/renew")
            assert response.status_code == 202, response.text
            job_ids.append(response.json()["job_id"])
        issuance = api.services.issuance
        real_execute = issuance.execute
        in_flight = 0
        peak = 0

        async def counting(job_id: str) -> str:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            try:
                await asyncio.sleep(0.01)  # let the rest of the batch start
                return await real_execute(job_id)
            finally:
                in_flight -= 1

        issuance.execute = counting  # type: ignore[method-assign]
        batches = 0

        def stop_after_first_batch() -> bool:
            nonlocal batches
            batches += 1
            return batches > 1

        maintenance = api.services.job_maintenance
        outcome = await maintenance.process_due_jobs(concurrency=3, should_stop=stop_after_first_batch)
        assert outcome == {"Completed": 3} and peak == 3
        statuses = sorted([(await job(api, j))["status"] for j in job_ids])
        assert statuses == ["Completed"] * 3 + ["Pending"] * 4  # nothing claimed after the stop

        assert await maintenance.process_due_jobs(concurrency=3) == {"Completed": 4}
        assert peak == 3


# ---- the scheduler in the server --------------------------------------------------------------------------

async def test_lifespan_starts_and_drains_the_scheduler_only_when_enabled(database_url: str, tmp_path: Path) -> None:
    async with clocked_api(database_url, tmp_path / "off") as api:
        assert api.app.state.scheduler is None
    on = {"CERTCTL_SCHEDULER_ENABLED": "true", "CERTCTL_SCHEDULER_RENEWAL_CHECK_INTERVAL": "1h"}
    async with clocked_api(database_url, tmp_path / "on", extra=on) as api:
        scheduler: Any = api.app.state.scheduler
        assert isinstance(scheduler, Scheduler)
        assert set(scheduler.loops) >= {
            "job_processor", "lease_reaper", "job_timeouts", "renewal_scan", "agent_health", "short_lived_expiry"}
        expected = {"lease_reaper", "job_timeouts", "renewal_scan", "agent_health", "short_lived_expiry"}
        for _ in range(300):  # every leader-only loop runs once at start and takes its lease
            if set(await _leases(api)) >= expected:  # (the notification loops take theirs too)
                break
            await asyncio.sleep(0.02)
        leases = await _leases(api)
        assert set(leases) >= expected
        assert set(leases.values()) == {api.services.issuance.holder}
    # Shut down: the leases were released (another server would take over at once).
    async with clocked_api(database_url, tmp_path / "after") as api:
        assert await _leases(api) == {}


async def test_each_loop_reaches_its_service(database_url: str, tmp_path: Path) -> None:
    """The wiring: every loop of the table, run through the scheduler's guards, does its work."""
    async with clocked_api(database_url, tmp_path / "w", keygen_mode="server") as api:
        clock = clock_of(api)
        scheduler = build_scheduler(api.services, SchedulerSettings())
        with_status = hasattr(api.services, "status")  # the CRL/OCSP service (built alongside this work)
        assert set(scheduler.loops) == {"job_processor", "lease_reaper", "job_timeouts", "renewal_scan",
                                        "agent_health", "short_lived_expiry"} | ({"crl_pregeneration"} if with_status
                                                                                 else set()) | {
            "notification_outbox", "expiry_alerts", "notification_delivery", "notification_retry"}
        assert [n for n, loop in scheduler.loops.items() if not loop.leader_only] == [
            "job_processor", "notification_delivery", "notification_retry"]

        agent_id = await factories.seed_agent(api, last_heartbeat_at=clock.now() - timedelta(minutes=10))
        short_lived = await factories.seed_profile(api, allow_short_lived=True, max_ttl_seconds=300)
        fleeting = await factories.seed_certificate(api, certificate_profile_id=short_lived,
                                                    expires_at=clock.now() - timedelta(seconds=1))
        due = await factories.seed_certificate(api, expires_at=clock.now() + timedelta(days=3))

        async def run(name: str) -> Any:
            result = await scheduler.run_once(name)
            assert result.outcome == "ran", result
            return result.result

        assert await run("agent_health") == (agent_id,)
        assert await run("short_lived_expiry") == 1
        assert (await cert(api, fleeting["id"]))["status"] == "Expired"
        [job_id] = (await run("renewal_scan")).renewals
        assert await run("job_processor") == {"Completed": 1}
        assert (await job(api, job_id))["status"] == "Completed" and (await cert(api, due["id"]))["status"] == "Active"
        assert await run("lease_reaper") == {}
        assert await run("job_timeouts") == {"orphaned_approvals_expired": 0}
        if with_status:
            assert not scheduler.loops["crl_pregeneration"].run_at_start  # the reference's "no first run"
            crl = await run("crl_pregeneration")
            assert isinstance(crl, dict) and crl.get("failed", 0) == 0
        await scheduler.stop()

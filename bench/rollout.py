"""Rollout: one certificate mapped to 1,000 targets on 100 simulated agents; how long until every deployment is done?

    .venv/bin/python bench/rollout.py [--agents 100] [--targets-per-agent 10] [--poll 30] [--workers 2]

A real `certctl server --workers N` on PostgreSQL (certctl_bench_rollout, recreated). The certificate's profile makes
server-side keys, so one renewal issues at once, and the issuance queues one deployment job per mapped target. The
simulated agents (asyncio, one process, each with its own key) poll `/work` every `--poll` seconds from a random phase,
report each deployment Running then Completed (no files are written: this measures the control plane), exactly as the
real agent's calls do. Reported: seconds from the renewal request to the last Completed report, the spread of the
per-job times, and the server CPU used.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import random
import secrets
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import orjson

if __package__ in (None, ""):  # run as `python bench/rollout.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    BENCH_KEY,
    add_json_flag,
    bench_result,
    cpu_seconds,
    create_database,
    json_mode,
    machine,
    percentile,
    pg_url,
    print_json,
    result_row,
    running_server,
    use_uvloop,
)

DATABASE = "certctl_bench_rollout"


async def seed(url: str, agents: int, per_agent: int) -> list[tuple[str, str]]:
    now = datetime.now(UTC)
    fleet = [(f"agent-roll-{i:04d}", f"cca.agent-roll-{i:04d}.{secrets.token_urlsafe(24)}") for i in range(agents)]
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("INSERT INTO teams (id, name, description, created_at, updated_at) VALUES "
                           "('t-roll', 'rollout', '', $1, $1)", now)
        await conn.execute("INSERT INTO owners (id, name, email, team_id, created_at, updated_at) VALUES "
                           "('o-roll', 'rollout', '', 't-roll', $1, $1)", now)
        await conn.execute(
            "INSERT INTO certificate_profiles (id, name, allowed_key_algorithms, allowed_ekus, required_san_patterns,"
            " required_csr_attributes, key_generation_mode, created_at, updated_at) VALUES ('p-roll', 'rollout',"
            " '[]', '[\"serverAuth\"]', '[]', '[]', 'server', $1, $1)", now)
        await conn.execute(
            "INSERT INTO managed_certificates (id, name, common_name, sans, owner_id, team_id, issuer_id,"
            " renewal_policy_id, certificate_profile_id, status, expires_at, tags, created_at, updated_at) VALUES"
            " ('mc-roll', 'rollout', 'www.example.com', '[\"www.example.com\"]', 'o-roll', 't-roll', 'iss-local',"
            " 'rp-default', 'p-roll', 'Active', $1, '{}', $2, $2)", now + timedelta(days=10), now)
        await conn.copy_records_to_table("agents", records=[
            (agent_id, agent_id, f"host-{i}", "Online", now, now, hashlib.sha256(key.encode()).hexdigest(), now, now)
            for i, (agent_id, key) in enumerate(fleet)
        ], columns=["id", "name", "hostname", "status", "last_heartbeat_at", "registered_at", "api_key_hash",
                    "created_at", "updated_at"])
        targets = [(f"tgt-{a}-{t}", f"t{t}", agent_id)
                   for a, (agent_id, _) in enumerate(fleet) for t in range(per_agent)]
        config = orjson.dumps({"cert_path": "/srv/tls/cert.pem", "key_path": "/srv/tls/key.pem"}).decode()
        await conn.copy_records_to_table("deployment_targets", records=[
            (tid, name, "Files", agent_id, config, True, now, now) for tid, name, agent_id in targets
        ], columns=["id", "name", "type", "agent_id", "config", "enabled", "created_at", "updated_at"])
        await conn.copy_records_to_table("certificate_target_mappings", records=[
            ("mc-roll", tid, now) for tid, _, _ in targets], columns=["certificate_id", "target_id", "created_at"])
    finally:
        await conn.close()
    return fleet


async def agent_loop(client: httpx.AsyncClient, agent_id: str, key: str, poll: float, done: dict[str, float],
                     expected: int, stop: asyncio.Event) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    await asyncio.sleep(random.uniform(0, poll))  # agents are not in step
    while not stop.is_set():
        work = (await client.get(f"/api/v1/agents/{agent_id}/work", headers=headers)).json()
        for job in work.get("jobs", []):
            if job["type"] != "Deployment":
                continue
            url = f"/api/v1/agents/{agent_id}/jobs/{job['id']}/status"
            await client.post(url, json={"status": "Running"}, headers=headers)
            await client.post(url, json={"status": "Completed", "deployment_result": {"changed": True}},
                              headers=headers)
            done[job["id"]] = time.perf_counter()
        if len(done) >= expected:
            stop.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=poll)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--targets-per-agent", type=int, default=10)
    parser.add_argument("--poll", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=2)
    add_json_flag(parser)
    args = parser.parse_args()
    json_mode(args)
    expected = args.agents * args.targets_per_agent
    await create_database(DATABASE, recreate=True)
    url = pg_url(DATABASE)
    print_json("setup", {"machine": machine(), "agents": args.agents, "targets": expected, "poll_s": args.poll})
    with running_server(url, port=18451, workers=args.workers, rate_limit=True, user_rps=100, user_burst=200,
                        db_conns=10) as server:
        fleet = await seed(url, args.agents, args.targets_per_agent)
        # uvicorn closes idle keep-alive connections after 5 s: the client lets them go first.
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64, keepalive_expiry=4)
        async with httpx.AsyncClient(base_url=server.base_url, verify=False, limits=limits, timeout=60) as client:
            pids = server.pids()
            cpu0 = cpu_seconds(pids)
            started = time.perf_counter()
            # force: the server's renewal scan (at start) may already have queued this certificate, which expires
            # inside rp-default's window; the forced renewal replaces that job, so exactly one rollout runs.
            renewed = await client.post("/api/v1/certificates/mc-roll/renew?force=true",
                                        headers={"Authorization": f"Bearer {BENCH_KEY}"})
            assert renewed.status_code == 202, renewed.text
            done: dict[str, float] = {}
            stop = asyncio.Event()
            await asyncio.wait_for(asyncio.gather(*(
                agent_loop(client, agent_id, key, args.poll, done, expected, stop) for agent_id, key in fleet
            )), timeout=args.poll * 10 + 120)
            elapsed = time.perf_counter() - started
            used = cpu_seconds(pids) - cpu0
        conn = await asyncpg.connect(url)
        try:
            completed = await conn.fetchval("SELECT count(*) FROM jobs WHERE type = 'Deployment' AND "
                                            "status = 'Completed' AND certificate_id = 'mc-roll'")
        finally:
            await conn.close()
    times = sorted(t - started for t in done.values())
    print_json("rollout", {
        "deployments": expected, "completed_in_database": completed,
        "seconds_to_last_completed": round(elapsed, 2),
        "per_job_seconds": {"p50": round(percentile(times, 50), 2), "p95": round(percentile(times, 95), 2),
                            "max": round(times[-1], 2) if times else None},
        "server_cpu_seconds": round(used, 2),
        "note": f"bounded below by the poll interval ({args.poll:g} s): an agent sees its jobs at its next poll",
    })
    bench_result([result_row(f"rollout: 1 renewal to {expected} targets on {args.agents} agents (poll {args.poll:g} s)",
                             p50_ms=round(percentile(times, 50) * 1000) if times else None,
                             p95_ms=round(percentile(times, 95) * 1000) if times else None,
                             throughput=round(completed / elapsed, 1), unit="deployments/s")])


if __name__ == "__main__":
    use_uvloop()
    asyncio.run(main())

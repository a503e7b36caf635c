"""A simulated agent fleet: 5,000 agents heartbeating every 60 s and polling for work every 30 s.

    .venv/bin/python bench/agent_fleet.py [--agents 5000] [--duration 60] [--workers 2]

A real `certctl server --workers N` on PostgreSQL (its own database, certctl_bench_fleet, recreated). The agents are
stored with keys of their own (as enrollment gives them), and every request uses its agent's key, so the server does
what it does for real agents: resolve the key (hash cached per process for a minute), scope it to the agent's own
routes, write the heartbeat, list work, and audit the call. The load is open loop (one process, asyncio): the fleet's
steady rate, agents/60 heartbeats/s + agents/30 polls/s (250 req/s for 5,000 agents), each agent's requests spread
evenly. Reported: p50/p95/p99 per kind against the 50 ms target, server CPU per request and per second.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import secrets
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

if __package__ in (None, ""):  # run as `python bench/agent_fleet.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    PostgresCpu,
    add_json_flag,
    bench_result,
    build_request,
    cpu_seconds,
    create_database,
    json_mode,
    machine,
    open_loop,
    pg_url,
    print_json,
    result_row,
    running_server,
    use_uvloop,
)

DATABASE = "certctl_bench_fleet"
TARGET_P99_MS = 50.0


async def seed_agents(url: str, count: int) -> list[tuple[str, str]]:
    now = datetime.now(UTC)
    fleet = [(f"agent-fleet-{i:05d}", f"cca.agent-fleet-{i:05d}.{secrets.token_urlsafe(24)}") for i in range(count)]
    conn = await asyncpg.connect(url)
    try:
        await conn.copy_records_to_table("agents", records=[
            (agent_id, agent_id, f"host-{i}", "Online", now, now, hashlib.sha256(key.encode()).hexdigest(), now, now)
            for i, (agent_id, key) in enumerate(fleet)
        ], columns=["id", "name", "hostname", "status", "last_heartbeat_at", "registered_at", "api_key_hash",
                    "created_at", "updated_at"])
    finally:
        await conn.close()
    return fleet


def fleet_mix(fleet: list[tuple[str, str]], kinds: list[str]) -> Any:
    heartbeat = b'{"version":"bench","hostname":"h"}'

    def make(index: int) -> tuple[bytes, Any]:
        # Requests cycle through the fleet: every third request is a heartbeat (60 s vs 30 s periods).
        agent_id, key = fleet[(index // 3) % len(fleet)] if index % 3 == 2 else fleet[index % len(fleet)]
        kind = "heartbeat" if index % 3 == 2 else "work"
        kinds.append(kind)
        if kind == "heartbeat":
            raw = build_request("POST", f"/api/v1/agents/{agent_id}/heartbeat", host="127.0.0.1", key=key,
                                body=heartbeat)
        else:
            raw = build_request("GET", f"/api/v1/agents/{agent_id}/work", host="127.0.0.1", key=key)
        return raw, None

    return make


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=5000)
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--workers", type=int, default=2)
    add_json_flag(parser)
    args = parser.parse_args()
    json_mode(args)
    await create_database(DATABASE, recreate=True)
    url = pg_url(DATABASE)
    rate = args.agents / 60 + args.agents / 30
    print_json("setup", {"machine": machine(), "agents": args.agents, "rate_req_per_s": round(rate, 1),
                         "workers": args.workers})
    with running_server(url, port=18449, workers=args.workers, rate_limit=True, user_rps=10, user_burst=20,
                        db_conns=10) as server:
        fleet = await seed_agents(url, args.agents)
        warm_kinds: list[str] = []
        await open_loop("warm-up", port=server.port, rate=rate, duration=10, make_request=fleet_mix(fleet, warm_kinds))
        kinds: list[str] = []
        pids = server.pids()
        cpu0 = cpu_seconds(pids)
        pg = PostgresCpu(DATABASE)
        report = await open_loop("fleet", port=server.port, rate=rate, duration=args.duration,
                                 make_request=fleet_mix(fleet, kinds))
        used = cpu_seconds(pids) - cpu0
        summary = report.summary()
        done = max(summary["requests"], 1)
        summary["server_cpu_ms_per_req"] = round(1000 * used / done, 3)
        summary["server_cpu_share_of_one_core"] = round(used / args.duration, 3)
        summary["postgres_cpu_ms_per_req"] = round(1000 * pg.used() / done, 3)
        summary["kinds"] = {k: kinds.count(k) for k in ("heartbeat", "work")}
        summary["rss_mb"] = round(server.rss_mb()[0], 1)
        summary["target_p99_ms"] = TARGET_P99_MS
        summary["met"] = summary["p99_ms"] <= TARGET_P99_MS and not summary["non_2xx"] and not summary["errors"]
        print_json(f"{args.agents} agents: heartbeats every 60 s, polls every 30 s", summary)
    bench_result([result_row(f"agent fleet: {args.agents} agents, heartbeat 60 s + poll 30 s", p50_ms=summary["p50_ms"],
                             p95_ms=summary["p95_ms"], p99_ms=summary["p99_ms"], throughput=summary["achieved_rate"],
                             rss_mb=summary["rss_mb"], baseline=f"target p99 {TARGET_P99_MS:g} ms",
                             ratio=round(TARGET_P99_MS / summary["p99_ms"], 3) if summary["p99_ms"] else None)])


if __name__ == "__main__":
    use_uvloop()
    asyncio.run(main())

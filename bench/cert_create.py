"""POST /api/v1/certificates with rate limiting ON: open-loop latency at fixed rates.

    .venv/bin/python bench/cert_create.py [--rates 100,200] [--duration 30] [--knee]

A real `certctl server` (HTTPS, PostgreSQL; by default the bench database seeded by
bench/seed_certs.py, so the name-uniqueness and reference checks run against 1M rows) with the
rate limiter enabled and a per-key budget of --user-rps (default 1,000 req/s, burst 1,000): the
limiter's code runs on every request, and the offered load stays inside the key's budget, as in
the reference's proposed method ("rate limiting on, a high-budget key").

For each rate: p50/p95/p99 measured from each request's scheduled send time, status counts
(any 429 is reported), server CPU per request, and a check that every 201 left exactly one row.
With --knee, rates step up by 100 req/s until p99 exceeds 100 ms (bounded at 1,500 req/s).
The rows created here are deleted at the end (their audit events stay: the trail is append-only).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import orjson

if __package__ in (None, ""):  # run as `python bench/cert_create.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    BENCH_DB,
    BENCH_KEY,
    PostgresCpu,
    Server,
    add_json_flag,
    bench_result,
    build_request,
    cpu_seconds,
    json_mode,
    machine,
    open_loop,
    pg_url,
    print_json,
    result_row,
    running_server,
    use_uvloop,
)

TARGET_P99_MS = 25.0


def create_mix(run: str, owners: list[tuple[str, str]]) -> Any:
    counter = itertools.count()

    def make(index: int) -> tuple[bytes, Any]:
        n = next(counter)
        owner_id, team_id = owners[n % len(owners)]
        name = f"bench-post-{run}-{n:06d}"
        body = orjson.dumps({
            "name": name,
            "common_name": f"{name}.example.com",
            "sans": [f"{name}.example.com", f"www.{name}.example.com"],
            "environment": "production",
            "owner_id": owner_id,
            "team_id": team_id,
            "issuer_id": "iss-local",
            "renewal_policy_id": "rp-default",
            "tags": {"app": "bench", "cost_center": "cc-01"},
        })
        return build_request("POST", "/api/v1/certificates", host="127.0.0.1", key=BENCH_KEY, body=body), None

    return make


async def measure(
    server: Server, run: str, rate: float, duration: float, owners: list[tuple[str, str]], database: str
) -> dict[str, Any]:
    pids = server.pids()
    cpu0 = cpu_seconds(pids)
    pg = PostgresCpu(database)
    report = await open_loop(f"POST {rate:g} req/s", port=server.port, rate=rate, duration=duration,
                             make_request=create_mix(run, owners))
    summary = report.summary()
    done = max(summary["requests"], 1)
    summary["server_cpu_ms_per_req"] = round(1000 * (cpu_seconds(pids) - cpu0) / done, 3)
    summary["postgres_cpu_ms_per_req"] = round(1000 * pg.used() / done, 3)
    summary["rate_limited_429"] = report.statuses.get(429, 0)
    return summary


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", default=BENCH_DB)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--duration", type=int, default=30)
    parser.add_argument("--rates", default="100,200")
    parser.add_argument("--user-rps", type=float, default=1000.0)
    parser.add_argument("--knee", action="store_true")
    parser.add_argument("--profile", action="store_true", help="py-spy the busiest worker at the first rate")
    parser.add_argument("--port", type=int, default=18445)
    add_json_flag(parser)
    args = parser.parse_args()
    json_mode(args)

    url = pg_url(args.database)
    conn = await asyncpg.connect(url)
    try:
        owners = [(r["id"], r["team_id"]) for r in await conn.fetch(
            "SELECT id, team_id FROM owners WHERE team_id IS NOT NULL ORDER BY id LIMIT 50")]
        existing = await conn.fetchval("SELECT count(*) FROM managed_certificates")
    finally:
        await conn.close()
    if not owners:
        raise SystemExit(f"{args.database} has no owners; run bench/seed_certs.py first")
    run = uuid.uuid4().hex[:8]
    print_json("setup", {"machine": machine(), "certificates_before": existing, "workers": args.workers,
                         "rate_limit": {"enabled": True, "per_key_rps": args.user_rps}, "run": run})

    rates = [float(r) for r in args.rates.split(",")]
    results: dict[str, Any] = {}
    created_ok = 0
    try:
        with running_server(url, port=args.port, workers=args.workers, rate_limit=True,
                            user_rps=args.user_rps, user_burst=int(args.user_rps)) as server:
            await measure(server, run + "w", 50, 3, owners, args.database)  # warm pools and caches
            for index, rate in enumerate(rates):
                profiling = None
                if args.profile and index == 0:
                    from bench.cert_list import py_spy

                    worker = server.busiest_worker()
                    profiling = asyncio.create_task(asyncio.to_thread(py_spy, worker, max(5, args.duration // 2)))
                summary = await measure(server, f"{run}r{rate:g}", rate, args.duration, owners, args.database)
                if profiling is not None:
                    summary["profile"] = await profiling
                created_ok += summary["ok"]
                results[f"{rate:g}"] = summary
                print_json(f"POST /api/v1/certificates at {rate:g} req/s", summary)
            if args.knee:
                rate = max(rates) + 100
                while rate <= 1500:
                    summary = await measure(server, f"{run}k{rate:g}", rate, min(args.duration, 15), owners,
                                            args.database)
                    created_ok += summary["ok"]
                    print_json(f"knee search: {rate:g} req/s", summary)
                    if summary["p99_ms"] > 100 or summary["errors"]:
                        results["knee_req_per_s"] = rate
                        break
                    rate += 100
            results["rss_mb"] = round(server.rss_mb()[0], 1)
    finally:
        conn = await asyncpg.connect(url)
        try:
            made = await conn.fetchval("SELECT count(*) FROM managed_certificates WHERE name LIKE $1",
                                       f"bench-post-{run}%")
            await conn.execute("DELETE FROM managed_certificates WHERE name LIKE $1", f"bench-post-{run}%")
        finally:
            await conn.close()
    warm_ok = made - created_ok  # rows from the warm-up phase
    print_json("summary", {
        **{f"p99_at_{k}_ms": v["p99_ms"] for k, v in results.items() if isinstance(v, dict)},
        "knee_req_per_s": results.get("knee_req_per_s"),
        "rows_created_vs_201": {"rows": made, "201s_measured": created_ok, "warm_up_rows": warm_ok},
        "rss_mb": results.get("rss_mb"),
        "targets": {f"p99 at {k} req/s <= {TARGET_P99_MS:g} ms": v["p99_ms"] <= TARGET_P99_MS
                    for k, v in results.items() if isinstance(v, dict)},
    })
    bench_result([
        result_row(f"create: POST /certificates at {k} req/s", p50_ms=v["p50_ms"], p95_ms=v["p95_ms"],
                   p99_ms=v["p99_ms"], throughput=v["achieved_rate"], rss_mb=results.get("rss_mb"),
                   baseline="reference p99 8.58 ms at 100 req/s (k6, list+create mix)",
                   ratio=round(8.58 / v["p99_ms"], 2) if v["p99_ms"] else None)
        for k, v in results.items() if isinstance(v, dict)
    ])


if __name__ == "__main__":
    use_uvloop()
    asyncio.run(main())

"""Rate-limit decision cost and memory with 1,000,000 distinct keys: the shared limiter (PostgreSQL and Redis back
ends) against the per-process TokenBuckets it replaced, measured in the same run.

    .venv/bin/python bench/rate_limit.py [--keys 1000000] [--hits 8] [--concurrency 1000] [--limit 100]
        [--window 2] [--backends tokenbuckets,postgresql,redis]

Workload: every key is a client that sends `--hits` requests back to back (a session); `--concurrency` sessions
run at once, in a random order of the keys, so 1,000,000 distinct keys pass through each limiter. The limit is the
API's default per-IP budget (100 tokens refilled at 50/s: `--limit 100 --window 2`). Each back end runs in its
own child process so its resident memory is its own; the decision time is measured around each
`await limiter.hit(...)` (or `TokenBuckets.take`) call, including waiting for a shared round trip.

Prints one JSON object per back end and a table: decisions/s, p50/p95/p99 in µs, share of decisions that waited
for the shared store, store round trips, peak RSS, and the ratio of each figure to TokenBuckets'.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import PG_ADMIN_URL, pg_url  # noqa: E402
from certctl.api.ratelimit import TokenBuckets  # noqa: E402
from certctl.services.rate_limits import DatabaseStore, RateLimits, RedisStore, SharedStore  # noqa: E402
from certctl.store import migrate  # noqa: E402
from certctl.store.database import Database  # noqa: E402
from certctl.store.rate_limits_repo import LeaseRequest, LeaseResult  # noqa: E402

REDIS_URL = os.environ.get("CERTCTL_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
BENCH_DB = "certctl_bench_rate_limit"


class Histogram:
    """Latencies in 0.1 µs steps below 1 ms, 0.1 ms steps above (a fixed 20,000 counters: no per-sample memory)."""

    def __init__(self) -> None:
        self.counts = [0] * 20_000
        self.total = 0

    def add(self, ns: int) -> None:
        index = ns // 100 if ns < 1_000_000 else min(19_999, 10_000 + (ns - 1_000_000) // 100_000)
        self.counts[index] += 1
        self.total += 1

    def percentile(self, fraction: float) -> float:
        """In µs."""
        target = fraction * self.total
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= target:
                return index / 10 if index < 10_000 else 1000 + (index - 10_000) * 100
        return float("nan")


class CountingStore:
    def __init__(self, inner: SharedStore) -> None:
        self.inner = inner
        self.name = inner.name
        self.round_trips = 0
        self.requests = 0

    async def lease(self, requests: Sequence[LeaseRequest]) -> list[LeaseResult]:
        self.round_trips += 1
        self.requests += len(requests)
        return await self.inner.lease(requests)

    async def purge(self) -> None:
        await self.inner.purge()

    async def aclose(self) -> None:
        await self.inner.aclose()


def _rss_mib() -> tuple[float, float]:
    with open("/proc/self/statm") as handle:
        current = int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return current, peak


async def _prepare_database() -> str:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{BENCH_DB}"')
    finally:
        await conn.close()
    url = pg_url(BENCH_DB)
    db = Database(url)
    await migrate.upgrade(db)
    await db.dispose()
    return url


async def run_one(backend: str, args: argparse.Namespace) -> dict[str, object]:
    order = list(range(args.keys))
    random.Random(7).shuffle(order)
    histogram = Histogram()
    slow_ns = 20_000  # a decision over 20 µs waited for the store (local ones take 1-3 µs)
    db: Database | None = None
    store: CountingStore | None = None
    limiter: RateLimits | None = None
    buckets: TokenBuckets | None = None
    if backend == "tokenbuckets":
        buckets = TokenBuckets(args.limit / args.window, args.limit)
    elif backend == "postgresql":
        db = Database(await _prepare_database(), pool_size=8)
        store = CountingStore(DatabaseStore(db))
    else:
        store = CountingStore(RedisStore(REDIS_URL, f"certctl-bench:{uuid.uuid4().hex[:8]}:"))
    if store is not None:
        limiter = RateLimits(store)
    rss_before = _rss_mib()[0]
    next_session = iter(order)
    allowed = 0
    slow = 0

    async def worker() -> None:
        nonlocal allowed, slow
        clock = time.perf_counter_ns
        for index in next_session:
            key = f"ip:10.{index >> 16 & 255}.{index >> 8 & 255}.{index & 255}"
            for _ in range(args.hits):
                if limiter is not None:
                    started = clock()
                    decision = await limiter.hit(key, args.limit, args.window)
                    spent = clock() - started
                    allowed += decision.allowed
                else:
                    assert buckets is not None
                    started = clock()
                    wait = buckets.take(key)
                    spent = clock() - started
                    allowed += wait == 0
                histogram.add(spent)
                slow += spent > slow_ns
            if limiter is None:
                await asyncio.sleep(0)  # interleave sessions like the shared run does

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    elapsed = time.perf_counter() - started
    rss_after, rss_peak = _rss_mib()
    local_entries = len(limiter._entries) if limiter is not None else len(buckets._buckets) if buckets else 0
    if limiter is not None:
        await limiter.aclose()
    if db is not None:
        await db.dispose()
    decisions = args.keys * args.hits
    return {
        "backend": backend, "keys": args.keys, "decisions": decisions, "allowed": allowed,
        "seconds": round(elapsed, 2), "decisions_per_s": round(decisions / elapsed),
        "p50_us": histogram.percentile(0.50), "p95_us": histogram.percentile(0.95),
        "p99_us": histogram.percentile(0.99), "waited_for_store": round(slow / decisions, 4),
        "store_round_trips": store.round_trips if store else 0, "store_requests": store.requests if store else 0,
        "local_entries": local_entries, "rss_before_mib": round(rss_before, 1), "rss_after_mib": round(rss_after, 1),
        "rss_peak_mib": round(rss_peak, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--hits", type=int, default=8, help="requests per key, back to back")
    parser.add_argument("--concurrency", type=int, default=1000)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--window", type=float, default=2.0)
    parser.add_argument("--backends", default="tokenbuckets,postgresql,redis")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="also print the result as one JSON line, last")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(run_one(args.child, args))), flush=True)
        return
    results: list[dict[str, object]] = []
    for backend in args.backends.split(","):
        command = [sys.executable, __file__, "--child", backend, "--keys", str(args.keys), "--hits", str(args.hits),
                   "--concurrency", str(args.concurrency), "--limit", str(args.limit), "--window", str(args.window)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        result = json.loads(output.strip().splitlines()[-1])
        print(json.dumps(result), flush=True)
        results.append(result)
    base = next((r for r in results if r["backend"] == "tokenbuckets"), None)
    print()
    print(f"{'backend':<13}{'dec/s':>10}{'p50 µs':>9}{'p95 µs':>9}{'p99 µs':>9}{'store%':>8}{'trips':>8}"
          f"{'RSS MiB':>9}{'p50 x':>7}{'p99 x':>10}{'rate x':>8}{'RSS x':>7}")
    for r in results:
        def ratio(name: str, r: dict[str, object] = r) -> str:
            if base is None or not base[name]:
                return "-"
            return f"{float(r[name]) / float(base[name]):.2f}"  # type: ignore[arg-type]
        print(f"{r['backend']:<13}{r['decisions_per_s']:>10}{r['p50_us']:>9}{r['p95_us']:>9}{r['p99_us']:>9}"
              f"{float(r['waited_for_store']) * 100:>7.1f}%{r['store_round_trips']:>8}{r['rss_peak_mib']:>9}"  # type: ignore[arg-type]
              f"{ratio('p50_us'):>7}{ratio('p99_us'):>10}{ratio('decisions_per_s'):>8}{ratio('rss_peak_mib'):>7}")
    if args.json:
        from bench.common import RESULT_MARK, result_row

        rows = [result_row(f"rate-limit decision, {args.keys:,} keys, {r['backend']}: p50/p95/p99 {r['p50_us']}/"
                           f"{r['p95_us']}/{r['p99_us']} µs", throughput=r["decisions_per_s"],  # type: ignore[arg-type]
                           unit="decisions/s", rss_mb=r["rss_peak_mib"],  # type: ignore[arg-type]
                           baseline="target p50 50 µs", ratio=round(50 / max(float(r["p50_us"]), 0.01), 1))  # type: ignore[arg-type]
                for r in results]
        print(RESULT_MARK + json.dumps({"rows": rows}), flush=True)


if __name__ == "__main__":
    main()

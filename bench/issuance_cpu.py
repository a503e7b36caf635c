"""Server CPU per CSR submission, in process: the whole ASGI app (middleware, hot handler, service, store)
against PostgreSQL, without sockets, TLS or a load generator.

    .venv/bin/python bench/issuance_cpu.py [--count 600] [--rounds 3] [--concurrency 16] [--framework] [--profile 40]

Seeds certificates whose renewal job waits in AwaitingCSR (as bench/issuance.py does), makes the CSRs
first, then submits them through the app `--concurrency` at a time and reports this process's CPU
(`time.process_time`) per CSR, and PostgreSQL's CPU per CSR over the same phase. The machine is shared:
CPU time per operation, unlike a rate, hardly depends on what else runs. With `--profile N`, a second
round runs under cProfile (timer: process CPU) and prints the N most expensive functions by own and
cumulative time.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/issuance_cpu.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import BENCH_KEY, create_database, pg_url, use_uvloop
from bench.issuance import DatabaseCpu, csrs_for, seed
from certctl.api.app import create_app
from certctl.config import NamedKey, Settings

DATABASE = "certctl_bench_issuance_cpu"


async def call(app: Any, path: str, body: bytes) -> int:
    """One request through the ASGI app; returns the status."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "https",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", b"127.0.0.1"), (b"authorization", f"Bearer {BENCH_KEY}".encode()),
                    (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8443), "state": {},
    }
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


_GROUPS = (("certctl/api/", "certctl.api"), ("certctl/services/", "certctl.services"),
           ("certctl/store/", "certctl.store"), ("certctl/pki/", "certctl.pki"), ("certctl/", "certctl (other)"),
           ("sqlalchemy/", "sqlalchemy"), ("asyncpg/", "asyncpg"), ("cryptography/", "cryptography"),
           ("starlette/", "starlette+fastapi"), ("fastapi/", "starlette+fastapi"), ("pydantic", "pydantic"),
           ("opentelemetry", "opentelemetry"), ("prometheus", "prometheus"), ("asyncio/", "asyncio"),
           ("bench/", "bench driver"))


def print_groups(profiler: cProfile.Profile) -> None:
    """Own CPU time by package: where the server's time goes, without the nesting of awaits."""
    stats = pstats.Stats(profiler)
    totals: dict[str, float] = {}
    for (filename, _, name), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        group = next((label for part, label in _GROUPS if part in filename), None)
        if group is None:
            group = f"builtin {name}" if filename == "~" else "other python"
            if group.startswith("builtin") and tottime < 0.05:
                group = "builtins (small)"
        totals[group] = totals.get(group, 0.0) + tottime
    whole = sum(totals.values())
    for group, seconds in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"  {group:50s} {seconds:7.2f} s  {100 * seconds / whole:5.1f} %")


async def submit_all(app: Any, agent: str, bodies: list[bytes], concurrency: int) -> dict[int, int]:
    queue = list(reversed(bodies))
    statuses: dict[int, int] = {}
    path = f"/api/v1/agents/{agent}/csr"

    async def worker() -> None:
        while queue:
            status = await call(app, path, queue.pop())
            statuses[status] = statuses.get(status, 0) + 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


async def framework_cost(app: Any, agent: str, bodies: list[bytes], concurrency: int, rounds: int) -> None:
    """The same requests with the issuance service answering at once: what the ASGI layers, the hot handler's
    body parsing and response, and the per-request audit event cost around it."""
    from certctl.domain.models.agent_work import CSRAccepted

    accepted = CSRAccepted(status="accepted", job_id="job-x", job_status="Completed", certificate_id="mc-x",
                           version_id="certver-x", serial_number="01")

    async def answer(*_: Any) -> CSRAccepted:
        return accepted

    issuance = app.state.services.issuance
    real = issuance.submit_csr
    issuance.submit_csr = answer
    try:
        best = float("inf")
        for _ in range(rounds):
            cpu0 = time.process_time()
            await submit_all(app, agent, bodies, concurrency)
            await app.state.services.audit_sink.flush()
            best = min(best, 1000 * (time.process_time() - cpu0) / len(bodies))
        print(f"framework only (service stubbed), best of {rounds}: {best:.2f} ms/request")
    finally:
        issuance.submit_csr = real


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds (best reported: the machine is shared)")
    parser.add_argument("--framework", action="store_true",
                        help="also measure the requests with the service stubbed (the layers around it)")
    parser.add_argument("--profile", type=int, default=0, help="print the N costliest functions (cProfile)")
    args = parser.parse_args()
    await create_database(DATABASE, recreate=True)
    url = pg_url(DATABASE)
    data_dir = Path(tempfile.mkdtemp(prefix="certctl-bench-cpu-"))
    settings = Settings(
        data_dir=data_dir, database_url=url, api_keys=(NamedKey("bench", BENCH_KEY, True),),
        rate_limit_enabled=False, config_encryption_key="bench-config-encryption-key-0123456789abcdef",
        database_max_conns=12, extra={"CERTCTL_SCHEDULER_ENABLED": "false"},
    ).validated()
    app = create_app(settings)
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    try:
        run = uuid.uuid4().hex[:6]
        rounds = [("warm", 200)] + [(f"measured{i}", args.count) for i in range(args.rounds)]
        rounds += [("profiled", args.count)] if args.profile else []
        seeded = {}
        for label, count in rounds:
            agent, certs = await seed(url, count, f"{run}{label[0]}{label[-1]}")
            seeded[label] = (agent, csrs_for(certs))
        agent, bodies = seeded["warm"]
        print("warm:", await submit_all(app, agent, bodies, args.concurrency))
        figures = []
        for i in range(args.rounds):
            agent, bodies = seeded[f"measured{i}"]
            pg = DatabaseCpu(DATABASE)
            await pg.begin()
            cpu0, wall0 = time.process_time(), time.perf_counter()
            statuses = await submit_all(app, agent, bodies, args.concurrency)
            await app.state.services.audit_sink.flush()
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            pg_cpu = await pg.used()
            n = len(bodies)
            figures.append((1000 * cpu / n, 1000 * pg_cpu / n))
            print(f"round {i}: {statuses}  server CPU {1000 * cpu / n:.2f} ms/CSR, PostgreSQL CPU "
                  f"{1000 * pg_cpu / n:.2f} ms/CSR (this database's backends), {n / wall:.0f} CSR/s wall")
        print(f"best of {args.rounds}: server {min(f[0] for f in figures):.2f} ms/CSR, PostgreSQL "
              f"{min(f[1] for f in figures):.2f} ms/CSR; load average {os.getloadavg()}")
        if args.framework:
            await framework_cost(app, seeded["warm"][0], seeded["warm"][1], args.concurrency, args.rounds)
        if args.profile:
            agent, bodies = seeded["profiled"]
            profiler = cProfile.Profile(time.process_time)
            profiler.enable()
            await submit_all(app, agent, bodies, args.concurrency)
            await app.state.services.audit_sink.flush()
            profiler.disable()
            profiler.dump_stats(str(Path(tempfile.gettempdir()) / "issuance_cpu.prof"))
            print_groups(profiler)
            for order in ("tottime", "cumulative"):
                out = io.StringIO()
                pstats.Stats(profiler, stream=out).sort_stats(order).print_stats(args.profile)
                print(out.getvalue())
    finally:
        await lifespan.__aexit__(None, None, None)


if __name__ == "__main__":
    use_uvloop()
    asyncio.run(main())

"""Server CPU per complete ACME order, in process: the whole ASGI app (ACME fast path, JWS, service, store)
against PostgreSQL, driven by bench/acme_orders.py's flow without sockets or TLS between client and server.

    .venv/bin/python bench/acme_cpu.py [--orders 300] [--modes trusted,http-01] [--profile 40]

One client at a time (so that the CPU spent inside each `await app(...)` is the server's alone): new account →
new order → authorization → (http-01: challenge, validated for real against an in-process responder) →
finalize → download. Prints the server's CPU per order (`time.process_time` inside the app calls), the whole
process's, and PostgreSQL's (the backends of this database), per mode. The machine is shared: CPU time per
operation, unlike a rate, hardly depends on what else runs. `--profile N` runs a second round under cProfile
(timer: process CPU) and prints the CPU by package and the N costliest functions.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

if __package__ in (None, ""):  # run as `python bench/acme_cpu.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.acme_orders import Answer, Headers, Responder, Run, _flow
from bench.common import BENCH_KEY, create_database, pg_url, use_uvloop
from bench.issuance import DatabaseCpu
from bench.issuance_cpu import print_groups
from certctl.api.app import create_app
from certctl.config import NamedKey, Settings

DATABASE = "certctl_bench_acme_cpu"
BASE = "https://acme.bench.test"


class AsgiHttp:
    """tests/acme_client.py's transport straight into the ASGI app; adds up the CPU spent inside the app."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.server_cpu = 0.0
        self.requests = 0
        self.by_kind: dict[str, float] = {}  # server CPU by resource kind (new-account, order, finalize, ...)

    async def get(self, url: str) -> Answer:
        return await self.request("GET", url)

    async def head(self, url: str) -> Answer:
        return await self.request("HEAD", url)

    async def post(self, url: str, *, content: bytes, headers: dict[str, str]) -> Answer:
        return await self.request("POST", url, content, headers)

    async def request(self, method: str, url: str, body: bytes = b"",
                      headers: dict[str, str] | None = None) -> Answer:
        parts = urlsplit(url)
        raw_headers = [(b"host", parts.netloc.encode()), (b"content-length", str(len(body)).encode())]
        raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "https",
            "path": parts.path, "raw_path": parts.path.encode(), "query_string": parts.query.encode(),
            "root_path": "", "headers": raw_headers, "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 443), "state": {},
        }
        sent = False
        status = 0
        fields: dict[str, str] = {}
        chunks: list[bytes] = []

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
                for name, value in message.get("headers", []):
                    key = name.decode().lower()
                    fields[key] = f"{fields[key]}, {value.decode()}" if key in fields else value.decode()
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        started = time.process_time()
        await self.app(scope, receive, send)
        spent = time.process_time() - started
        self.server_cpu += spent
        segments = parts.path.split("/")
        kind = f"{method} " + (segments[4] if len(segments) > 4 else segments[-1])
        kind += "/finalize" if parts.path.endswith("/finalize") else ""
        self.by_kind[kind] = self.by_kind.get(kind, 0.0) + spent
        self.requests += 1
        return Answer(status, Headers(fields), b"".join(chunks))


async def orders(app: Any, mode: str, count: int, responder: Responder) -> tuple[Run, AsgiHttp]:
    http = AsgiHttp(app)
    directory_url = f"{BASE}/acme/profile/{'p-trusted' if mode == 'trusted' else 'p-http'}/directory"
    directory = (await http.get(directory_url)).json()
    run = Run("certctl", mode, 1, 0.0)
    for n in range(count):
        await _flow(http, directory, directory_url, run, n, responder)
    return run, http


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=300)
    parser.add_argument("--modes", default="trusted,http-01")
    parser.add_argument("--profile", type=int, default=0, help="print the N costliest functions (cProfile)")
    args = parser.parse_args()
    responder = Responder()
    await responder.start()
    await create_database(DATABASE, recreate=True)
    settings = Settings(
        data_dir=Path(tempfile.mkdtemp(prefix="certctl-bench-acme-cpu-")), database_url=pg_url(DATABASE),
        api_keys=(NamedKey("bench", BENCH_KEY, True),), rate_limit_enabled=False,
        config_encryption_key="bench-config-encryption-key-0123456789abcdef", database_max_conns=12,
        extra={"CERTCTL_SCHEDULER_ENABLED": "false", "CERTCTL_ACME_SERVER_ENABLED": "true",
               "CERTCTL_ACME_HTTP01_PORT": str(responder.port), "CERTCTL_ACME_VALIDATION_ALLOW_LOOPBACK": "true",
               "CERTCTL_ACME_SERVER_RATE_LIMIT_IDENTIFIER_ORDERS_PER_HOUR": "0"},
    ).validated()
    app = create_app(settings)
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    try:
        api = AsgiHttp(app)
        for body in (b'{"id": "p-trusted", "name": "bench trusted"}',
                     b'{"id": "p-http", "name": "bench http-01", "acme_auth_mode": "challenge"}'):
            created = await api.post(f"{BASE}/api/v1/profiles", content=body, headers={
                "Authorization": f"Bearer {BENCH_KEY}", "Content-Type": "application/json"})
            assert created.status_code == 201, created.text
        for mode in args.modes.split(","):
            await orders(app, mode, 20, responder)  # warm: CA, pools, caches
            pg = DatabaseCpu(DATABASE)
            await pg.begin()
            cpu0, wall0 = time.process_time(), time.perf_counter()
            run, http = await orders(app, mode, args.orders, responder)
            await app.state.services.audit_sink.flush()
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            pg_cpu = await pg.used()
            n = len(run.flows)
            print(f"{mode}: {n} orders, {http.requests / n:.2f} requests/order, {run.polls / n:.2f} polls/order; "
                  f"server CPU {1000 * http.server_cpu / n:.2f} ms/order (in the app calls), whole process "
                  f"{1000 * cpu / n:.2f} ms/order (driver included), PostgreSQL {1000 * pg_cpu / n:.2f} ms/order; "
                  f"wall {n / wall:.1f} orders/s with one client", flush=True)
            print("  server CPU ms/order by request: " + ", ".join(
                f"{kind} {1000 * cpu / n:.2f}" for kind, cpu in sorted(http.by_kind.items(), key=lambda kv: -kv[1])))
            if args.profile:
                profiler = cProfile.Profile(time.process_time)
                profiler.enable()
                await orders(app, mode, args.orders, responder)
                await app.state.services.audit_sink.flush()
                profiler.disable()
                profiler.dump_stats(str(Path(tempfile.gettempdir()) / f"acme_cpu_{mode}.prof"))
                print_groups(profiler)
                for order in ("tottime", "cumulative"):
                    out = io.StringIO()
                    pstats.Stats(profiler, stream=out).sort_stats(order).print_stats(args.profile)
                    print(out.getvalue())
    finally:
        await lifespan.__aexit__(None, None, None)
        await responder.stop()


if __name__ == "__main__":
    use_uvloop()
    asyncio.run(main())

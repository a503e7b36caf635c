"""Complete ACME orders per second: certctl's ACME server (PostgreSQL) against pebble, same driver, same run.

    .venv/bin/python bench/acme_orders.py [--clients 1,10,50] [--seconds 10] [--workers 2]

Each of N concurrent clients loops: new account → new order → authorization → challenge → finalize →
download, timing every step. Two modes:
  - `trusted`: certctl's profile is `trust_authenticated` (the order is ready at once, no challenge step);
    pebble runs with PEBBLE_VA_ALWAYS_VALID=1 and PEBBLE_VA_NOSLEEP=1 (its challenge POST validates at once);
  - `http-01`: the order's identifier is 127.0.0.1 and the client answers http-01 from an in-process HTTP
    responder; certctl validates for real (it fetches the key authorization), pebble is still always-valid.
The driver is tests/acme_client.py (httpx, one connection pool per server, JWS signed per request); polls of
authorizations and orders wait 20 ms. Prints orders/s, p50/p95 per step, and certctl/pebble ratios.
Targets (issue 5): certctl ≥ pebble's throughput and ≥ 50 complete orders/s on this 2-core machine.
Uses its own database (certctl_bench_acme), recreated on each run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

if __package__ in (None, ""):  # run as `python bench/acme_orders.py`
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
from tests.acme_client import AcmeClient, b64, csr_der, new_key, thumbprint

DATABASE = "certctl_bench_acme"
POLL = 0.02
STEPS = ("account", "order", "authz", "challenge", "finalize", "download")


# ---- the in-process http-01 responder ---------------------------------------------------------------
class Responder:
    """Answers GET /.well-known/acme-challenge/<token> from a dict (HTTP/1.1, keep-alive)."""

    def __init__(self) -> None:
        self.answers: dict[str, bytes] = {}
        self.server: asyncio.Server | None = None
        self.port = 0
        self.served = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode()
                body = self.answers.get(path.rsplit("/", 1)[-1])
                self.served += 1
                if body is None:
                    writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
                                 % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, IndexError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


# ---- pebble -----------------------------------------------------------------------------------------
@contextlib.contextmanager
def running_pebble(port: int = 14000) -> Iterator[tuple[str, Path, int]]:
    """Debian's pebble on 127.0.0.1 with a TLS certificate made here; yields (directory URL, CA file, pid)."""
    work = Path(tempfile.mkdtemp(prefix="certctl-bench-pebble-"))
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    import ipaddress

    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    (work / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (work / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))
    config = {"pebble": {
        "listenAddress": f"127.0.0.1:{port}", "managementListenAddress": f"127.0.0.1:{port + 1}",
        "certificate": str(work / "cert.pem"), "privateKey": str(work / "key.pem"),
        "httpPort": 5002, "tlsPort": 5001, "ocspResponderURL": "", "externalAccountBindingRequired": False}}
    (work / "pebble.json").write_text(json.dumps(config))
    env = {**os.environ, "PEBBLE_VA_ALWAYS_VALID": "1", "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0",
           "PEBBLE_AUTHZREUSE": "0"}
    log = (work / "pebble.log").open("wb")
    process = subprocess.Popen(["pebble", "-config", str(work / "pebble.json")], env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    try:
        context = ssl.create_default_context(cafile=str(work / "cert.pem"))
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"https://127.0.0.1:{port}/dir", verify=context, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"pebble did not start: {(work / 'pebble.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield f"https://127.0.0.1:{port}/dir", work / "cert.pem", process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


# ---- the driver -------------------------------------------------------------------------------------
@dataclass
class Run:
    target: str
    mode: str
    clients: int
    seconds: float
    steps: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    flows: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    server_cpu: float = 0.0  # CPU seconds of the server's processes (not PostgreSQL's) during the run
    driver_cpu: float = 0.0

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "target": self.target, "mode": self.mode, "clients": self.clients, "orders": len(self.flows),
            "orders_per_s": round(len(self.flows) / self.elapsed, 1) if self.elapsed else 0.0,
            "errors": len(self.errors), "first_errors": self.errors[:3],
            "server_cpu_ms_per_order": round(self.server_cpu * 1000 / len(self.flows), 2) if self.flows else None,
            "driver_cpu_ms_per_order": round(self.driver_cpu * 1000 / len(self.flows), 2) if self.flows else None,
        }
        for step in (*STEPS, "flow"):
            values = sorted(self.flows if step == "flow" else self.steps.get(step, []))
            if values:
                out[f"{step}_p50_ms"] = round(percentile(values, 50) * 1000, 1)
                out[f"{step}_p95_ms"] = round(percentile(values, 95) * 1000, 1)
        return out


async def _poll(client: AcmeClient, url: str, done: tuple[str, ...]) -> dict[str, Any]:
    while True:
        response = await client.post(url, None)
        body: dict[str, Any] = response.json()
        if response.status_code != 200 or body.get("status") in (*done, "invalid"):
            return body
        await asyncio.sleep(POLL)


async def _flow(http: httpx.AsyncClient, directory: dict[str, Any], directory_url: str, run: Run, n: int,
                responder: Responder) -> None:
    client = AcmeClient(http, directory_url, key=new_key("ES256"))
    client.directory = directory
    marks = [time.perf_counter()]

    def mark(step: str) -> None:
        now = time.perf_counter()
        run.steps[step].append(now - marks[-1])
        marks.append(now)

    created = await client.register()
    assert created.status_code in (200, 201), created.text
    mark("account")
    name = "127.0.0.1" if run.mode == "http-01" else f"o{n}.bench.test"
    order_response = await client.order(name)
    assert order_response.status_code == 201, order_response.text
    order = order_response.json()
    order_url = order_response.headers["Location"]
    mark("order")
    authz = (await client.post(order["authorizations"][0], None)).json()
    mark("authz")
    if authz["status"] != "valid":
        challenge = next(c for c in authz["challenges"] if c["type"] == "http-01")
        responder.answers[challenge["token"]] = f"{challenge['token']}.{thumbprint(client.key)}".encode()
        answered = await client.post(challenge["url"], {})
        assert answered.status_code == 200, answered.text
        authz = await _poll(client, order["authorizations"][0], ("valid",))
        assert authz["status"] == "valid", authz
        responder.answers.pop(challenge["token"], None)
        mark("challenge")
    der, _ = csr_der([name])
    final = await client.post(order["finalize"], {"csr": b64(der)})
    assert final.status_code == 200, final.text
    body = final.json()
    if body["status"] != "valid":
        body = await _poll(client, order_url, ("valid",))
    assert body["status"] == "valid", body
    mark("finalize")
    cert = await client.post(body["certificate"], None)
    assert cert.status_code == 200 and b"BEGIN CERTIFICATE" in cert.content, cert.text
    mark("download")
    run.flows.append(marks[-1] - marks[0])


async def drive(target: str, directory_url: str, ca: Path, mode: str, clients: int, seconds: float,
                responder: Responder, pids: Callable[[], list[int]]) -> Run:
    run = Run(target, mode, clients, seconds)
    cpu_before, driver_before = cpu_seconds(pids()), time.process_time()
    context = ssl.create_default_context(cafile=str(ca))
    limits = httpx.Limits(max_connections=clients + 5, max_keepalive_connections=clients + 5)
    async with httpx.AsyncClient(verify=context, limits=limits, timeout=60) as http:
        directory = (await http.get(directory_url)).json()
        counter = iter(range(10**9))
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < deadline:
                try:
                    await _flow(http, directory, directory_url, run, next(counter), responder)
                except Exception as exc:  # counted and shown; the run goes on
                    run.errors.append(f"{type(exc).__name__}: {str(exc)[:300]}")
                    await asyncio.sleep(0.05)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        run.elapsed = time.perf_counter() - started
    run.server_cpu = cpu_seconds(pids()) - cpu_before
    run.driver_cpu = time.process_time() - driver_before
    return run


def setup_certctl(base_url: str, ca: Path) -> None:
    context = ssl.create_default_context(cafile=str(ca))
    with httpx.Client(base_url=base_url, verify=context, headers={"Authorization": f"Bearer {BENCH_KEY}"}) as api:
        for body in ({"id": "p-trusted", "name": "bench trusted"},
                     {"id": "p-http", "name": "bench http-01", "acme_auth_mode": "challenge"}):
            response = api.post("/api/v1/profiles", json=body)
            assert response.status_code in (201, 409), response.text


async def main_async(args: argparse.Namespace) -> None:
    clients = [int(c) for c in args.clients.split(",")]
    modes = args.modes.split(",")
    responder = Responder()
    await responder.start()
    print_json("machine", machine())
    results: list[dict[str, Any]] = []
    await create_database(DATABASE, recreate=True)
    extra = {
        "CERTCTL_ACME_SERVER_ENABLED": "true", "CERTCTL_ACME_HTTP01_PORT": str(responder.port),
        "CERTCTL_ACME_VALIDATION_ALLOW_LOOPBACK": "true",
        # One identifier (127.0.0.1) for every http-01 order: the per-identifier limit would stop the bench.
        "CERTCTL_ACME_SERVER_RATE_LIMIT_IDENTIFIER_ORDERS_PER_HOUR": "0",
        "CERTCTL_SCHEDULER_ENABLED": "false",
        **dict(item.split("=", 1) for item in args.env),
    }
    with running_server(pg_url(DATABASE), workers=args.workers, extra_env=extra, port=args.port,
                        db_conns=args.db_conns) as server:
        ca = server.data_dir / "tls" / "server.crt"
        setup_certctl(server.base_url, ca)
        for mode, profile in (("trusted", "p-trusted"), ("http-01", "p-http")):
            if mode not in modes:
                continue
            directory = f"{server.base_url}/acme/profile/{profile}/directory"
            await drive("certctl", directory, ca, mode, 1, 1.0, responder, server.pids)  # warm-up (CA load, pools)
            for n in clients:
                run = await drive("certctl", directory, ca, mode, n, args.seconds, responder, server.pids)
                results.append(run.summary())
                print_json(f"certctl {mode} x{n}", results[-1])
    with running_pebble(args.pebble_port) as (directory, ca, pebble_pid):
        def pebble_pids() -> list[int]:
            return [pebble_pid]

        for mode in modes:
            await drive("pebble", directory, ca, mode, 1, 1.0, responder, pebble_pids)
            for n in clients:
                run = await drive("pebble", directory, ca, mode, n, args.seconds, responder, pebble_pids)
                results.append(run.summary())
                print_json(f"pebble {mode} x{n}", results[-1])
    await responder.stop()
    table = []
    for mode in modes:
        for n in clients:
            ours = next(r for r in results if r["target"] == "certctl" and r["mode"] == mode and r["clients"] == n)
            theirs = next(r for r in results if r["target"] == "pebble" and r["mode"] == mode and r["clients"] == n)
            table.append({"mode": mode, "clients": n, "certctl_orders_per_s": ours["orders_per_s"],
                          "pebble_orders_per_s": theirs["orders_per_s"],
                          "ratio": round(ours["orders_per_s"] / theirs["orders_per_s"], 2)
                          if theirs["orders_per_s"] else None,
                          "certctl_flow_p95_ms": ours.get("flow_p95_ms"),
                          "pebble_flow_p95_ms": theirs.get("flow_p95_ms"),
                          "certctl_cpu_ms_per_order": ours["server_cpu_ms_per_order"],
                          "pebble_cpu_ms_per_order": theirs["server_cpu_ms_per_order"],
                          "errors": ours["errors"] + theirs["errors"]})
    print_json("summary (certctl / pebble)", {"rows": table})
    bench_result([result_row(f"ACME complete orders, {r['mode']}, {r['clients']} clients",
                             p95_ms=r["certctl_flow_p95_ms"], throughput=r["certctl_orders_per_s"], unit="orders/s",
                             baseline="pebble, same driver (orders/s)", ratio=r["ratio"]) for r in table])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="1,10,50")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--db-conns", type=int, default=16)
    parser.add_argument("--port", type=int, default=18460)
    parser.add_argument("--pebble-port", type=int, default=14000)
    parser.add_argument("--modes", default="trusted,http-01")
    parser.add_argument("--env", action="append", default=[], help="extra CERTCTL_*=value for the server")
    add_json_flag(parser)
    args = parser.parse_args()
    json_mode(args)
    use_uvloop()
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()

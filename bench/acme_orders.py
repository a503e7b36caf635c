"""Complete ACME orders per second: certctl's ACME server (PostgreSQL) against pebble, same driver, same run.

    .venv/bin/python bench/acme_orders.py [--clients 1,10,50] [--seconds 10] [--workers 2]

Each of N concurrent clients loops: new account → new order → authorization → challenge → finalize →
download, timing every step. Two modes:
  - `trusted`: certctl's profile is `trust_authenticated` (the order is ready at once, no challenge step);
    pebble runs with PEBBLE_VA_ALWAYS_VALID=1 and PEBBLE_VA_NOSLEEP=1 (its challenge POST validates at once);
  - `http-01`: the order's identifier is 127.0.0.1 and the client answers http-01 from an in-process HTTP
    responder; certctl validates for real (it fetches the key authorization), pebble is still always-valid.
The driver is tests/acme_client.py over a lean keep-alive HTTP/1.1 client (one pool per server, JWS signed per
request); polls of authorizations and orders wait what the server's Retry-After says (20 ms without one).
Prints orders/s, p50/p95 per step, server and driver CPU per order, and certctl/pebble ratios. `--profile N`
samples one certctl worker with py-spy during each run and prints its N costliest frames (own and total).
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
from urllib.parse import urlsplit

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
from tests.acme_client import AcmeClient, Transport, b64, csr_der, new_key, thumbprint

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


# ---- a lean HTTP/1.1 client ------------------------------------------------------------------------
class Headers(dict[str, str]):
    """Response headers by lower-cased name (repeated headers joined with ", ", as Link is)."""

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())


@dataclass
class Answer:
    """What tests/acme_client.py reads of a response (httpx.Response's names)."""

    status_code: int
    headers: Headers
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode(errors="replace")


class LeanHttp:
    """Keep-alive HTTP/1.1 over TLS on asyncio streams, one pool per server: a few tens of µs of CPU per request
    where httpx spends a millisecond or more. The bench machine runs driver, server and database on the same
    two cores, so the driver's CPU comes out of both servers' throughput alike."""

    def __init__(self, base_url: str, context: ssl.SSLContext) -> None:
        parsed = urlsplit(base_url)
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 443
        self.authority = parsed.netloc
        self.context = context
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.requests = 0

    async def get(self, url: str) -> Answer:
        return await self.request("GET", url)

    async def head(self, url: str) -> Answer:
        return await self.request("HEAD", url)

    async def post(self, url: str, *, content: bytes, headers: dict[str, str]) -> Answer:
        return await self.request("POST", url, content, headers)

    async def request(self, method: str, url: str, body: bytes = b"",
                      headers: dict[str, str] | None = None) -> Answer:
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.authority}", "Accept: */*"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if method == "POST":
            lines.append(f"Content-Length: {len(body)}")
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
        for attempt in (0, 1):
            reused = bool(self.idle)
            reader, writer = self.idle.pop() if reused else await asyncio.open_connection(
                self.host, self.port, ssl=self.context, limit=1 << 20)
            try:
                answer, keep = await asyncio.wait_for(self._exchange(reader, writer, raw, method), 15)
            except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
                writer.close()
                # A kept-alive connection the server closed while idle fails before any answer; anything else
                # (an answer cut short, a timeout) is not retried: the server may have spent the nonce.
                idle_close = isinstance(exc, ConnectionError) or (
                    isinstance(exc, asyncio.IncompleteReadError) and not exc.partial)
                if reused and attempt == 0 and idle_close:
                    continue
                raise
            except TimeoutError:
                writer.close()
                raise
            if keep:
                self.idle.append((reader, writer))
            else:
                writer.close()
            self.requests += 1
            return answer
        raise AssertionError("unreachable")

    @staticmethod
    async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes,
                        method: str) -> tuple[Answer, bool]:
        writer.write(raw)
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head[:-4].decode("latin-1").split("\r\n")
        status = int(lines[0][9:12])
        fields: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            key, value = name.strip().lower(), value.strip()
            fields[key] = f"{fields[key]}, {value}" if key in fields else value
        body = b""
        if method != "HEAD" and status not in (204, 304):
            if "chunked" in fields.get("transfer-encoding", "").lower():
                chunks = bytearray()
                while True:
                    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    if size == 0:
                        await reader.readuntil(b"\r\n")
                        break
                    chunks += (await reader.readexactly(size + 2))[:-2]
                body = bytes(chunks)
            else:
                length = int(fields.get("content-length", "0"))
                body = await reader.readexactly(length) if length else b""
        keep = fields.get("connection", "").lower() != "close"
        headers = Headers(fields)
        return Answer(status, headers, body), keep

    async def aclose(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


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
    requests: int = 0
    polls: int = 0  # POST-as-GET polls that found the authorization or order not final yet

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "target": self.target, "mode": self.mode, "clients": self.clients, "orders": len(self.flows),
            "orders_per_s": round(len(self.flows) / self.elapsed, 1) if self.elapsed else 0.0,
            "errors": len(self.errors), "first_errors": self.errors[:3],
            "server_cpu_ms_per_order": round(self.server_cpu * 1000 / len(self.flows), 2) if self.flows else None,
            "driver_cpu_ms_per_order": round(self.driver_cpu * 1000 / len(self.flows), 2) if self.flows else None,
            "requests_per_order": round(self.requests / len(self.flows), 2) if self.flows else None,
            "polls_per_order": round(self.polls / len(self.flows), 2) if self.flows else None,
        }
        for step in (*STEPS, "flow"):
            values = sorted(self.flows if step == "flow" else self.steps.get(step, []))
            if values:
                out[f"{step}_p50_ms"] = round(percentile(values, 50) * 1000, 1)
                out[f"{step}_p95_ms"] = round(percentile(values, 95) * 1000, 1)
        return out


async def _poll(client: AcmeClient, url: str, done: tuple[str, ...], run: Run) -> dict[str, Any]:
    """POST-as-GET until a final status, waiting what the server's Retry-After says (POLL without one)."""
    while True:
        response = await client.post(url, None)
        body: dict[str, Any] = response.json()
        if response.status_code != 200 or body.get("status") in (*done, "invalid"):
            return body
        run.polls += 1
        retry = response.headers.get("Retry-After")
        await asyncio.sleep(float(retry) if retry and retry.isdigit() else POLL)


async def _flow(http: Transport, directory: dict[str, Any], directory_url: str, run: Run, n: int,
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
        authz = await _poll(client, order["authorizations"][0], ("valid",), run)
        assert authz["status"] == "valid", authz
        responder.answers.pop(challenge["token"], None)
        mark("challenge")
    der, _ = csr_der([name])
    final = await client.post(order["finalize"], {"csr": b64(der)})
    assert final.status_code == 200, final.text
    body = final.json()
    if body["status"] != "valid":
        body = await _poll(client, order_url, ("valid",), run)
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
    http = LeanHttp(directory_url, context)
    try:
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
        run.requests = http.requests
    finally:
        await http.aclose()
    run.server_cpu = cpu_seconds(pids()) - cpu_before
    run.driver_cpu = time.process_time() - driver_before
    return run


def py_spy(pid: int, seconds: float, top: int) -> dict[str, Any]:
    """On-CPU samples of one worker (py-spy --gil: only while it runs Python): costliest frames, own and total."""
    raw = Path(tempfile.mkstemp(prefix="certctl-acme-pyspy-", suffix=".txt")[1])
    subprocess.run([str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid), "--duration",
                    str(max(1, int(seconds))), "--rate", "200", "--gil", "--nonblocking", "--format", "raw",
                    "-o", str(raw)], check=True, capture_output=True)
    own: dict[str, int] = defaultdict(int)
    total: dict[str, int] = defaultdict(int)
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        samples += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    raw.unlink(missing_ok=True)

    def share(counts: dict[str, int]) -> dict[str, str]:
        return {k: f"{100 * v / samples:.1f}%" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])[:top]}

    return {"samples": samples, "own": share(own), "total": share(total)}


def setup_certctl(base_url: str, ca: Path) -> None:
    context = ssl.create_default_context(cafile=str(ca))
    with httpx.Client(base_url=base_url, verify=context, headers={"Authorization": f"Bearer {BENCH_KEY}"}) as api:
        for body in ({"id": "p-trusted", "name": "bench trusted"},
                     {"id": "p-http", "name": "bench http-01", "acme_auth_mode": "challenge"}):
            response = api.post("/api/v1/profiles", json=body)
            assert response.status_code in (201, 409), response.text


async def certctl_runs(args: argparse.Namespace, clients: list[int], modes: list[str], responder: Responder,
                       results: list[dict[str, Any]]) -> None:
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
                sampling = asyncio.create_task(asyncio.to_thread(
                    py_spy, server.busiest_worker(), args.seconds - 1, args.profile)) if args.profile else None
                run = await drive("certctl", directory, ca, mode, n, args.seconds, responder, server.pids)
                results.append(run.summary())
                print_json(f"certctl {mode} x{n}", results[-1])
                if sampling is not None:
                    print_json(f"certctl {mode} x{n}: py-spy of one worker", await sampling)


async def pebble_runs(args: argparse.Namespace, clients: list[int], modes: list[str], responder: Responder,
                      results: list[dict[str, Any]]) -> None:
    # A fresh pebble per run: Debian's pebble 2.4 has been seen to stop answering (handlers that never return)
    # under concurrent new accounts; one run's stall must not carry into the next.
    for mode in modes:
        for n in clients:
            with running_pebble(args.pebble_port) as (directory, ca, pebble_pid):
                def pebble_pids(pid: int = pebble_pid) -> list[int]:
                    return [pid]

                await drive("pebble", directory, ca, mode, 1, 1.0, responder, pebble_pids)
                run = await drive("pebble", directory, ca, mode, n, args.seconds, responder, pebble_pids)
                results.append(run.summary())
                print_json(f"pebble {mode} x{n}", results[-1])


async def main_async(args: argparse.Namespace) -> None:
    clients = [int(c) for c in args.clients.split(",")]
    modes = args.modes.split(",")
    targets = args.targets.split(",")
    responder = Responder()
    await responder.start()
    print_json("machine", machine())
    results: list[dict[str, Any]] = []
    if "certctl" in targets:
        await certctl_runs(args, clients, modes, responder, results)
    if "pebble" in targets:
        await pebble_runs(args, clients, modes, responder, results)
    await responder.stop()
    if set(targets) != {"certctl", "pebble"}:
        return
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
                          "driver_cpu_ms_per_order": [ours["driver_cpu_ms_per_order"],
                                                      theirs["driver_cpu_ms_per_order"]],
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
    parser.add_argument("--targets", default="certctl,pebble")
    parser.add_argument("--profile", type=int, default=0, help="py-spy one certctl worker; print N frames")
    parser.add_argument("--env", action="append", default=[], help="extra CERTCTL_*=value for the server")
    add_json_flag(parser)
    args = parser.parse_args()
    json_mode(args)
    use_uvloop()
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()

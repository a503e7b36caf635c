"""Shared benchmark helpers: the bench database, a real `certctl server` process, an open-loop
HTTPS load generator, latency percentiles and resident memory.

Benchmarks are scripts that print figures; they are not part of the test suite. Everything they
start listens on 127.0.0.1 only, every loop is bounded in count and time, and every process they
start is stopped by its own pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

REPO = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get("CERTCTL_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
BENCH_DB = os.environ.get("CERTCTL_BENCH_DB", "certctl_bench")
BENCH_KEY = "bench-key-0123456789abcdef0123456789"
CONFIG_KEY = "bench-config-encryption-key-0123456789abcdef"  # fixed so cursors and sealed rows survive restarts


async def seeded_certificates(database: str) -> int:
    """The number of certificates in `database`; exits when bench/seed_certs.py has not filled it."""
    conn = await asyncpg.connect(pg_url(database))
    try:
        rows = int(await conn.fetchval("SELECT count(*) FROM managed_certificates"))
    finally:
        await conn.close()
    if rows < 1000:
        raise SystemExit(f"{database} holds {rows} certificates; run bench/seed_certs.py first")
    return rows


def pg_url(database: str) -> str:
    """PG_ADMIN_URL with `database` in place of its own (a `?host=/socket/dir` query is kept)."""
    base, sep, query = PG_ADMIN_URL.partition("?")
    return base.rsplit("/", 1)[0] + "/" + database + sep + query


def certctl_command() -> list[str]:
    """The installed console script when present, else the module (same code either way)."""
    script = Path(sys.executable).parent / "certctl"
    return [str(script)] if script.exists() else [sys.executable, "-m", "certctl"]


async def create_database(name: str, *, recreate: bool) -> bool:
    """Create `name`; returns True when it was created now."""
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists and recreate:
            await conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            exists = None
        if not exists:
            await conn.execute(f'CREATE DATABASE "{name}"')
            return True
        return False
    finally:
        await conn.close()


def db_upgrade(database_url: str) -> None:
    """The schema comes from the project's own migration command, as an operator would run it."""
    with tempfile.TemporaryDirectory(prefix="certctl-bench-") as data_dir:
        env = {**os.environ, "CERTCTL_DATABASE_URL": database_url, "CERTCTL_DATA_DIR": data_dir}
        subprocess.run([*certctl_command(), "db", "upgrade"], check=True, env=env, cwd=REPO)


# --- the server under test ------------------------------------------------------------------------

@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        """The server process and its worker processes (uvicorn's supervisor forks them)."""
        return [self.process.pid, *_descendants(self.process.pid)]

    def busiest_worker(self) -> int:
        """The process that has used the most CPU: a request-serving worker (or the single process)."""
        return max(self.pids(), key=lambda pid: cpu_seconds([pid]))

    def rss_mb(self) -> tuple[float, list[float]]:
        """(total, per process) resident memory in MB, the supervisor included."""
        per = [_status_kb(pid, "VmRSS:") / 1024 for pid in self.pids()]
        return sum(per), per

    def pss_mb(self) -> float:
        """Proportional set size summed over the processes: shared pages counted once."""
        return sum(_rollup_kb(pid, "Pss:") for pid in self.pids()) / 1024


@contextlib.contextmanager
def running_server(
    database_url: str,
    *,
    port: int = 18443,
    workers: int = 1,
    rate_limit: bool = True,
    user_rps: float = 1e9,
    user_burst: int = 1_000_000_000,
    demo: bool = False,
    db_conns: int = 16,
    extra_env: dict[str, str] | None = None,
) -> Iterator[Server]:
    """Start `certctl server` (HTTPS, the given database) and stop it by pid on exit."""
    data_dir = Path(tempfile.mkdtemp(prefix="certctl-bench-srv-"))
    log_path = data_dir / "server.log"
    env = {
        **os.environ,
        "CERTCTL_DATABASE_URL": database_url,
        "CERTCTL_DATA_DIR": str(data_dir),
        "CERTCTL_SERVER_HOST": "127.0.0.1",
        "CERTCTL_SERVER_PORT": str(port),
        "CERTCTL_SERVER_WORKERS": str(workers),
        "CERTCTL_API_KEYS_NAMED": f"bench:{BENCH_KEY}:admin",
        "CERTCTL_CONFIG_ENCRYPTION_KEY": CONFIG_KEY,
        "CERTCTL_RATE_LIMIT_ENABLED": "true" if rate_limit else "false",
        "CERTCTL_RATE_LIMIT_PER_USER_RPS": str(user_rps),
        "CERTCTL_RATE_LIMIT_PER_USER_BURST": str(user_burst),
        "CERTCTL_LOG_LEVEL": "warning",
        # Per worker (the pool may double under bursts): more connections than cores only queue
        # in PostgreSQL, and workers x 2 x 20 (the default) can exceed max_connections=100.
        "CERTCTL_DATABASE_MAX_CONNS": str(db_conns),
        **(extra_env or {}),
    }
    args = [*certctl_command(), "server"] + (["--demo"] if demo else [])
    with log_path.open("wb") as log:
        process = subprocess.Popen(args, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    server = Server(process, port, data_dir, log_path)
    try:
        _wait_ready(server, timeout=120)
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        kept = Path(tempfile.gettempdir()) / f"certctl-bench-server-{port}.log"
        shutil.copyfile(log_path, kept)  # kept for a look at errors after the run
        shutil.rmtree(data_dir, ignore_errors=True)


def _wait_ready(server: Server, timeout: float) -> None:
    import urllib.request

    context = insecure_tls()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"{server.base_url}/ready", context=context, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"server not ready after {timeout}s:\n{server.log_path.read_text()}")


def insecure_tls() -> ssl.SSLContext:
    """The bench server uses its generated self-signed certificate on loopback."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    stack = [pid]
    while stack:
        current = stack.pop()
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except FileNotFoundError:
            continue
        for task in tasks:
            try:
                children = Path(f"/proc/{current}/task/{task}/children").read_text().split()
            except FileNotFoundError:
                continue
            for child in map(int, children):
                found.append(child)
                stack.append(child)
    return found


def _status_kb(pid: int, field_name: str) -> int:
    return _field_kb(Path(f"/proc/{pid}/status"), field_name)


def _rollup_kb(pid: int, field_name: str) -> int:
    return _field_kb(Path(f"/proc/{pid}/smaps_rollup"), field_name)


def _field_kb(path: Path, field_name: str) -> int:
    try:
        for line in path.read_text().splitlines():
            if line.startswith(field_name):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def cpu_seconds(pids: list[int]) -> float:
    """User+system CPU time of the given processes (from /proc, clock ticks)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / ticks


class PostgresCpu:
    """CPU used by PostgreSQL since construction, all databases.

    Live processes are counted by their own utime+stime deltas; processes that exit meanwhile
    (overflow connections closed by the pool, parallel query workers, which do much of a big
    count(*)) are counted through the postmaster's children times (cutime+cstime), which the
    kernel adds when it reaps them. Other work on the same server adds to the figure: compare
    it with the load average printed beside it.
    """

    def __init__(self, database: str | None = None) -> None:
        self.database = database
        self.start = self._snapshot()

    @staticmethod
    def _snapshot() -> tuple[dict[int, float], float]:
        live: dict[int, float] = {}
        reaped = 0.0
        ticks = os.sysconf("SC_CLK_TCK")
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                comm = Path(f"/proc/{entry}/comm").read_text().strip()
                if comm not in ("postgres", "postmaster"):
                    continue
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, PermissionError, ProcessLookupError):
                continue
            live[int(entry)] = (int(fields[11]) + int(fields[12])) / ticks
            reaped += (int(fields[13]) + int(fields[14])) / ticks  # non-zero for the postmaster only
        return live, reaped

    def used(self) -> float:
        live, reaped = self._snapshot()
        start_live, start_reaped = self.start
        return sum(cpu - start_live.get(pid, 0.0) for pid, cpu in live.items()) + (reaped - start_reaped)


# --- statistics -----------------------------------------------------------------------------------

def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


@dataclass
class LatencyReport:
    name: str
    rate: float
    duration: float
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    late_starts: int = 0  # requests the generator itself could not send on time (>5 ms late)

    def summary(self) -> dict[str, Any]:
        values = sorted(self.latencies_ms)
        ok = sum(n for s, n in self.statuses.items() if 200 <= s < 300)
        return {
            "name": self.name,
            "target_rate": self.rate,
            "achieved_rate": round(len(values) / self.duration, 1) if self.duration else 0.0,
            "requests": len(values),
            "ok": ok,
            "non_2xx": {str(s): n for s, n in sorted(self.statuses.items()) if not 200 <= s < 300},
            "errors": self.errors,
            "late_starts": self.late_starts,
            "p50_ms": round(percentile(values, 50), 2),
            "p95_ms": round(percentile(values, 95), 2),
            "p99_ms": round(percentile(values, 99), 2),
            "max_ms": round(values[-1], 2) if values else float("nan"),
        }


# --- a small HTTP/1.1 keep-alive client: a few microseconds of CPU per request --------------------

class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int, context: ssl.SSLContext) -> Connection:
        reader, writer = await asyncio.open_connection(host, port, ssl=context, limit=1 << 22)
        return cls(reader, writer)

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = -1
        chunked = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            lowered = name.strip().lower()
            if lowered == b"content-length":
                length = int(value)
            elif lowered == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if chunked:
            body = bytearray()
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")
                    break
                body += await self.reader.readexactly(size + 2)
                del body[-2:]
            return status, bytes(body)
        return status, await self.reader.readexactly(length) if length > 0 else b""

    def close(self) -> None:
        self.writer.close()


def build_request(method: str, path: str, *, host: str, key: str, body: bytes | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Authorization: Bearer {key}", "Accept: application/json"]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


RequestMaker = Callable[[int], tuple[bytes, Callable[[int, bytes], None] | None]]


async def open_loop(
    name: str,
    *,
    port: int,
    rate: float,
    duration: float,
    make_request: RequestMaker,
    warm_connections: int = 16,
    max_connections: int = 256,
) -> LatencyReport:
    """Send requests at a fixed rate whatever the server does (open loop).

    Latency is measured from each request's *scheduled* send time, so a stalled server cannot hide
    its queueing delay by slowing the generator down (no coordinated omission).
    """
    loop = asyncio.get_running_loop()
    context = insecure_tls()
    idle: list[Connection] = [
        await Connection.open("127.0.0.1", port, context) for _ in range(warm_connections)
    ]
    opened = len(idle)
    report = LatencyReport(name, rate, duration)
    total = int(rate * duration)
    interval = 1.0 / rate
    tasks: set[asyncio.Task[None]] = set()

    async def one(index: int, scheduled: float) -> None:
        nonlocal opened
        raw, on_response = make_request(index)
        if idle:
            conn = idle.pop()
        elif opened < max_connections:
            opened += 1
            conn = await Connection.open("127.0.0.1", port, context)
        else:
            report.errors += 1
            return
        try:
            status, body = await asyncio.wait_for(conn.request(raw), timeout=30)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            conn.close()
            # A kept-alive connection the server closed while idle (uvicorn: 5 s) fails before any
            # byte of the answer: retry once on a new connection, as every HTTP client does.
            if not (isinstance(exc, asyncio.IncompleteReadError) and not exc.partial) and not isinstance(
                exc, ConnectionResetError
            ):
                report.errors += 1
                opened -= 1
                return
            try:
                conn = await Connection.open("127.0.0.1", port, context)
                status, body = await asyncio.wait_for(conn.request(raw), timeout=30)
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
                report.errors += 1
                conn.close()
                opened -= 1
                return
        except TimeoutError:
            report.errors += 1
            conn.close()
            opened -= 1
            return
        report.latencies_ms.append((loop.time() - scheduled) * 1000)
        report.statuses[status] = report.statuses.get(status, 0) + 1
        if on_response is not None:
            on_response(status, body)
        idle.append(conn)

    start = loop.time() + 0.05
    for index in range(total):
        scheduled = start + index * interval
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.005:
            report.late_starts += 1
        task = asyncio.create_task(one(index, scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=60)
    report.duration = max(loop.time() - start, duration)
    for conn in idle:
        conn.close()
    return report


def use_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


_JSON_MODE = [False]
RESULT_MARK = "BENCH_RESULT "


def add_json_flag(parser: Any) -> None:
    """`--json`: the human-readable blocks go to stderr and stdout's last line is `BENCH_RESULT {...}`."""
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line, last (run_all.py)")


def json_mode(args: Any) -> None:
    _JSON_MODE[0] = bool(getattr(args, "json", False))


def print_json(title: str, payload: dict[str, Any]) -> None:
    out = sys.stderr if _JSON_MODE[0] else sys.stdout
    print(f"== {title}", file=out)
    print(json.dumps(payload, indent=2, default=str), file=out)
    out.flush()


def result_row(scenario: str, *, p50_ms: float | None = None, p95_ms: float | None = None,
               p99_ms: float | None = None, throughput: float | None = None, unit: str = "req/s",
               rss_mb: float | None = None, baseline: str = "", ratio: float | None = None) -> dict[str, Any]:
    """One line of bench/run_all.py's table. `ratio` is against `baseline`, > 1 meaning certctl does better
    (baseline latency / ours, or our throughput / the baseline's)."""
    return {"scenario": scenario, "p50_ms": p50_ms, "p95_ms": p95_ms, "p99_ms": p99_ms, "throughput": throughput,
            "unit": unit, "rss_mb": rss_mb, "baseline": baseline, "ratio": ratio}


def bench_result(rows: list[dict[str, Any]], **extra: Any) -> None:
    """With --json: the machine-readable result, one line, printed last on stdout."""
    if _JSON_MODE[0]:
        print(RESULT_MARK + json.dumps({"rows": rows, **extra}, default=str))
        sys.stdout.flush()


def machine() -> dict[str, Any]:
    load = [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    info: dict[str, Any] = {"cpus": os.cpu_count(), "python": sys.version.split()[0], "loadavg": load}
    if load[0] > (os.cpu_count() or 1):
        info["warning"] = "the machine is busy with other work: absolute figures will be low; CPU per request holds"
    return info


def rng(seed: int = 7) -> random.Random:
    return random.Random(seed)  # workload shape only, not security related

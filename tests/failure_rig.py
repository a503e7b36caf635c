"""What the failure and replica tests share: a load driver that keeps calling the API from threads and records
every answer, a private PostgreSQL cluster (so a test may stop and start it without touching the machine's shared
one), and a private haproxy in front of several `certctl server` processes.

Everything listens on 127.0.0.1 on free ports, lives in temporary directories and is stopped by its own pid.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.test_server_process import free_port

ERROR_SHAPE = {"error", "message", "request_id"}


# ---- load -----------------------------------------------------------------------------------------------
@dataclass
class Answer:
    """One call of the load driver: what was sent, what came back (status 0: no HTTP answer), and when."""

    op: str
    status: int
    body: Any
    started: float  # time.monotonic()
    elapsed: float
    error: str = ""
    tag: Any = None  # what the step wants to remember (an id, a name)


Step = Callable[[httpx.Client, int], list[Answer]]


def call(client: httpx.Client, op: str, method: str, path: str, *, json: Any = None, tag: Any = None) -> Answer:
    started = time.monotonic()
    try:
        response = client.request(method, path, json=json)
    except httpx.HTTPError as exc:
        return Answer(op, 0, None, started, time.monotonic() - started, error=f"{type(exc).__name__}: {exc}", tag=tag)
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    return Answer(op, response.status_code, body, started, time.monotonic() - started, tag=tag)


@dataclass
class LoadDriver:
    """`threads` threads call `step(client, n)` (n = 0, 1, 2 ... per thread) until stopped; `pause` seconds between
    steps per thread. Each thread has its own keep-alive client; a client whose connection broke is replaced."""

    base_url: str
    step: Step
    key: str
    verify: ssl.SSLContext | bool = False
    threads: int = 2
    pause: float = 0.0
    timeout: float = 10.0
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _crashed: list[BaseException] = field(default_factory=list)

    def _client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, verify=self.verify, timeout=self.timeout,
                            headers={"Authorization": f"Bearer {self.key}"})

    def _run(self, index: int) -> None:
        try:
            self._loop(index)
        except BaseException as exc:  # surfaced by stop()
            self._crashed.append(exc)

    def _loop(self, index: int) -> None:
        client = self._client()
        n = 0
        try:
            while not self._stop.is_set():
                got = self.step(client, index * 1_000_000 + n)
                n += 1
                with self._lock:
                    self.answers.extend(got)
                if any(a.status == 0 for a in got):
                    client.close()
                    client = self._client()
                    self._stop.wait(0.05)  # a dead server: do not spin
                elif self.pause:
                    self._stop.wait(self.pause)
        finally:
            client.close()

    def start(self) -> LoadDriver:
        for i in range(self.threads):
            worker = threading.Thread(target=self._run, args=(i,), daemon=True, name=f"load-{i}")
            worker.start()
            self._workers.append(worker)
        return self

    def stop(self) -> list[Answer]:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=self.timeout + 5)
            assert not worker.is_alive(), "a load thread hung past its client timeout"
        if self._crashed:
            raise self._crashed[0]
        with self._lock:
            return list(self.answers)

    def snapshot(self) -> list[Answer]:
        with self._lock:
            return list(self.answers)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(interval)


# ---- a private PostgreSQL cluster --------------------------------------------------------------------------
def postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    assert found, "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin (apt-get install postgresql)"
    return Path(found[-1]).parent


class PrivatePostgres:
    """A throwaway cluster: `initdb` into a temporary directory, `pg_ctl` on a free port on 127.0.0.1, as the
    current user (as the `postgres` user when the tests run as root: PostgreSQL refuses to run as root)."""

    def __init__(self) -> None:
        self.bin = postgres_bin()
        # Not under pytest's tmp_path: as root that is 0700 root, which the postgres user cannot enter.
        self.root = Path(tempfile.mkdtemp(prefix="certctl-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            self._as = ["runuser", "-u", "postgres", "--"]

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str, timeout: float = 60) -> None:
        done = subprocess.run([*self._as, *argv], capture_output=True, text=True, timeout=timeout, check=False,
                              cwd=self.root)
        assert done.returncode == 0, f"{argv[0]} failed: {done.stdout}{done.stderr}\n{self.tail()}"

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def init(self) -> PrivatePostgres:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--no-sync", "--no-instructions")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(f"listen_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = '{self.root}'\n"
                       "max_connections = 60\nshared_buffers = 32MB\nfsync = off\nlog_min_messages = warning\n")
        return self

    def start(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "30", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def destroy(self) -> None:
        if self.running():
            subprocess.run([*self._as, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w",
                            "stop"], capture_output=True, timeout=30, check=False)
        shutil.rmtree(self.root, ignore_errors=True)


# ---- haproxy in front of several servers ---------------------------------------------------------------------
class Balancer:
    """haproxy (Debian package) in the foreground with a private config: plain HTTP on 127.0.0.1 in front, HTTPS to
    each `certctl server` behind it (their generated certificates are trusted through `ca_files`), health checks on
    /ready every 500 ms (a slow answer fails after 5 s; three failures take a server out: a replica starved of CPU
    on a loaded test machine stays in), and a retry on another server for a request that found its server gone
    before any answer (connection refused or closed, empty answer), as the high-availability guide configures it."""

    def __init__(self, root: Path, backends: list[tuple[str, int, Path]]) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.stats_port = free_port()
        self.backends = backends  # (name, port, CA file)
        self.process: subprocess.Popen[bytes] | None = None
        self.config = root / "haproxy.cfg"
        self.log = root / "haproxy.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_config(self) -> None:
        servers = "\n".join(
            f"  server {name} 127.0.0.1:{port} ssl verify required ca-file {ca} verifyhost localhost "
            f"check inter 500ms fall 3 rise 2"
            for name, port, ca in self.backends
        )
        self.config.write_text(f"""global
  log stderr format raw local0 notice
  maxconn 512
defaults
  mode http
  log global
  option httplog
  option dontlognull
  timeout connect 2s
  timeout check 5s
  timeout client 30s
  timeout server 30s
  timeout http-keep-alive 5s
  retries 3
  option redispatch 1
  retry-on conn-failure empty-response
frontend api
  bind 127.0.0.1:{self.port}
  default_backend certctl
backend certctl
  balance roundrobin
  option httpchk GET /ready
  http-check expect status 200
  default-server ssl-min-ver TLSv1.3
{servers}
listen stats
  bind 127.0.0.1:{self.stats_port}
  stats enable
  stats uri /stats
""")

    def start(self) -> Balancer:
        self.write_config()
        check = subprocess.run(["haproxy", "-c", "-f", str(self.config)], capture_output=True, text=True, timeout=30,
                               check=False)
        assert check.returncode == 0, check.stdout + check.stderr
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(["haproxy", "-W", "-db", "-f", str(self.config)], stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self._listening, "haproxy to listen", timeout=10)
        return self

    def _listening(self) -> bool:
        assert self.process is not None and self.process.poll() is None, self.log.read_text()[-2000:]
        try:
            httpx.get(f"http://127.0.0.1:{self.stats_port}/stats", timeout=1)
        except httpx.HTTPError:
            return False
        return True

    def server_states(self) -> dict[str, str]:
        """Backend server name -> haproxy's view (UP, DOWN, ...), from the CSV stats page."""
        text = httpx.get(f"http://127.0.0.1:{self.stats_port}/stats;csv", timeout=5).text
        states = {}
        for line in text.splitlines():
            parts = line.split(",")
            if len(parts) > 17 and parts[0] == "certctl" and parts[1] not in ("FRONTEND", "BACKEND"):
                states[parts[1]] = parts[17]
        return states

    def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

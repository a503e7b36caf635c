"""The real `certctl server` process, started as the README's first command starts it, checked with curl and openssl.

SQLite in one process (first start, TLS, SIGHUP certificate reload, restart, SIGTERM), and PostgreSQL
through CERTCTL_DATABASE_URL with `--workers 2` (its supervisor: SIGHUP replacement, a dead worker replaced, no
worker left behind by a killed supervisor).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import PG_ADMIN_URL, _pg_admin, _pg_url, _run

pytestmark = pytest.mark.slow

CERTCTL = Path(sys.executable).parent / "certctl"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    data_dir: Path
    env: dict[str, str]
    args: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    wrapper: list[str] = field(default_factory=list)  # a command the server runs under (e.g. `unshare ...`)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca(self) -> Path:
        return self.data_dir / "tls" / "server.crt"

    def out(self, n: int) -> Path:
        return self.data_dir.parent / f"stdout-{n}.txt"

    def err(self, n: int) -> Path:
        return self.data_dir.parent / f"stderr-{n}.txt"

    def start(self) -> str:
        """Start; return what it printed on stdout once it answers /health."""
        self.starts += 1
        n = self.starts
        with self.out(n).open("wb") as out, self.err(n).open("wb") as err:
            self.proc = subprocess.Popen(
                [*self.wrapper, str(CERTCTL), "server", "--data-dir", str(self.data_dir), "--port", str(self.port),
                 *self.args],
                env=self.env, stdout=out, stderr=err,
                start_new_session=True,  # its own process group: kill() takes `--workers` children down with it
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"server exited early: {self.err(n).read_text()[-3000:]}"
            if self.ca.exists() and self.curl("/health", check=False).returncode == 0:
                return self.out(n).read_text()
            time.sleep(0.3)
        raise AssertionError(f"server did not become healthy: {self.err(n).read_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=60)
        self.proc = None
        return code

    def curl(
        self, path: str, *args: str, key: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        command = ["curl", "-sS", "--max-time", "20", "--cacert", str(self.ca), *args]
        if key:
            command += ["-H", f"Authorization: Bearer {key}"]
        result = subprocess.run([*command, self.url + path], capture_output=True, text=True, timeout=30, check=False)
        if check:
            assert result.returncode == 0, result.stderr
        return result

    def status_and_json(self, path: str, *args: str, key: str | None = None) -> tuple[int, dict[str, object]]:
        result = self.curl(path, "-w", "\n%{http_code}", *args, key=key)
        body, _, status = result.stdout.rpartition("\n")
        return int(status), orjson.loads(body) if body else {}

    def s_client(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{self.port}", "-servername", "localhost",
             "-CAfile", str(self.ca), *args],
            input="", capture_output=True, text=True, timeout=30, check=False,
        )

    def kill(self) -> None:
        """SIGKILL the whole server: the supervisor and, with `--workers N`, its workers (a crash, not a stop)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTCTL_")}
    env.update(extra)
    return env


def printed_key(stdout: str) -> str:
    keys = [word for word in stdout.split() if word.startswith("cc_")]
    assert len(keys) == 1, stdout
    return keys[0]


@pytest.fixture
def sqlite_server(tmp_path: Path) -> Iterator[Server]:
    server = Server(tmp_path / "data", _env(CERTCTL_LOG_LEVEL="info"))
    try:
        yield server
    finally:
        server.kill()


def _write_new_certificate(cert_path: Path, key_path: Path, common_name: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1)).not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return common_name


def test_first_start_tls_reload_restart_and_clean_stop(sqlite_server: Server) -> None:
    server = sqlite_server
    stdout = server.start()
    key = printed_key(stdout)

    # The key file: the printed key, owner-only.
    key_file = server.data_dir / "admin.key"
    assert key_file.read_text().strip() == key
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert (server.data_dir / "tls" / "server.key").stat().st_mode & 0o777 == 0o600

    # Real curl, verifying the server certificate against the file the server wrote.
    status, body = server.status_and_json("/api/v1/auth/check", key=key)
    assert (status, body) == (200, {"status": "authenticated", "user": "admin", "admin": True})
    status, body = server.status_and_json("/api/v1/teams")
    assert status == 401 and body["error"] == "Unauthorized"
    headers = server.curl("/health", "-D", "-", "-o", "/dev/null").stdout.lower()
    assert "strict-transport-security: max-age=31536000; includesubdomains" in headers
    assert "x-request-id:" in headers and "server:" not in headers

    # A chunked upload over the body limit is refused by the real HTTP stack too.
    big = server.data_dir.parent / "big.json"
    big.write_bytes(b"{" + b" " * (2 << 20) + b"}")
    status, body = server.status_and_json(
        "/api/v1/teams", "-H", "Transfer-Encoding: chunked", "-H", "Content-Type: application/json",
        "--data-binary", f"@{big}", key=key,
    )
    assert status == 413 and body["message"].startswith("request body exceeds")

    # TLS 1.3 only: a TLS 1.2 client is turned away; 1.3 verifies against the CA file.
    tls13 = server.s_client("-tls1_3")
    assert "TLSv1.3" in tls13.stdout and "Verify return code: 0 (ok)" in tls13.stdout, tls13.stdout + tls13.stderr
    tls12 = server.s_client("-tls1_2")
    assert tls12.returncode != 0 and "Cipher is (NONE)" in tls12.stdout + tls12.stderr
    refused = server.curl("/health", "--tlsv1.2", "--tls-max", "1.2", check=False)
    assert refused.returncode != 0

    # The database holds the SHA-256 of the key, never the key.
    db_path = server.data_dir / "certctl.db"
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute("SELECT name, key_hash, admin FROM api_keys").fetchall()
    assert rows == [("admin", hashlib.sha256(key.encode()).hexdigest(), 1)]
    for path in server.data_dir.glob("certctl.db*"):
        assert key.encode() not in path.read_bytes(), path

    # SIGHUP: a new certificate on disk is served to new connections, without a restart.
    pid = server.proc.pid if server.proc else 0
    _write_new_certificate(server.data_dir / "tls" / "server.crt", server.data_dir / "tls" / "server.key", "rotated")
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + 20
    while "CN=rotated" not in server.s_client("-tls1_3").stdout.replace(" = ", "="):
        assert time.monotonic() < deadline, "certificate was not reloaded"
        time.sleep(0.3)
    assert server.proc is not None and server.proc.pid == pid and server.proc.poll() is None
    status, _ = server.status_and_json("/api/v1/teams", key=key)
    assert status == 200

    # SIGTERM: clean exit, and the audit trail has every call made above.
    assert server.stop() == 0
    with sqlite3.connect(db_path) as conn:
        audited = conn.execute("SELECT count(*) FROM audit_events WHERE action LIKE 'api_%'").fetchone()[0]
    assert audited == 3  # auth/check, the rejected upload, and the last teams list

    # Restart: no new key, the old one still works.
    again = server.start()
    assert "cc_" not in again
    assert key_file.read_text().strip() == key
    status, _ = server.status_and_json("/api/v1/auth/check", key=key)
    assert status == 200
    assert server.stop() == 0

    # Lost or exposed key: rotate it offline, restart; only the new key works.
    rotated = subprocess.run(
        [str(CERTCTL), "admin-key", "rotate", "--data-dir", str(server.data_dir)],
        env=server.env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert rotated.returncode == 0, rotated.stderr
    new_key = printed_key(rotated.stdout)
    assert new_key != key and key_file.read_text().strip() == new_key
    assert key_file.stat().st_mode & 0o777 == 0o600
    server.start()
    assert server.status_and_json("/api/v1/auth/check", key=key)[0] == 401
    assert server.status_and_json("/api/v1/auth/check", key=new_key)[0] == 200
    assert server.stop() == 0
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT count(*) FROM api_keys").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM audit_events WHERE action = 'api_key_rotated'").fetchone()[0] == 1
    err = server.err(1).read_text()
    assert key not in err, "the admin key reached the log"
    assert all(line.startswith("{") for line in err.splitlines() if line and not line.startswith("certctl ")), (
        "logs are JSON lines"
    )


@pytest.fixture
def pg_database() -> Iterator[str]:
    name = f"certctl_p_{uuid.uuid4().hex[:12]}"
    _run(_pg_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield _pg_url(name)
    finally:
        _run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_postgresql_with_workers(tmp_path: Path, pg_database: str) -> None:
    server = Server(tmp_path / "data", _env(CERTCTL_DATABASE_URL=pg_database), args=["--workers", "2"])
    try:
        key = printed_key(server.start())
        assert not (server.data_dir / "certctl.db").exists(), "PostgreSQL mode writes no SQLite file"
        assert (server.data_dir / "admin.key").stat().st_mode & 0o777 == 0o600
        # /health answers once the first worker serves; on a loaded machine the second may still be starting.
        deadline = time.monotonic() + 60
        while server.err(1).read_text().count('"msg":"certctl ready"') < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        for _ in range(6):  # spread over both workers
            status, body = server.status_and_json("/api/v1/auth/check", key=key)
            assert status == 200 and body["admin"] is True
        assert "TLSv1.3" in server.s_client("-tls1_3").stdout
        assert server.stop() == 0
        err = server.err(1).read_text()
        assert err.count('"msg":"certctl ready"') == 2, "two workers served"
        revisions = len(list(migrate_scripts().walk_revisions()))
        assert err.count("Running upgrade") == revisions, "each migration ran once, in the parent"
    finally:
        server.kill()

    rows = subprocess.run(
        ["psql", pg_database, "-At", "-c", "SELECT name || '|' || key_hash FROM api_keys"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout.split()
    assert rows == [f"admin|{hashlib.sha256(key.encode()).hexdigest()}"]
    audited = subprocess.run(
        ["psql", pg_database, "-At", "-c", "SELECT count(*) FROM audit_events WHERE action = 'api_get'"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout.strip()
    assert audited == "6", "every worker flushed its audit events on SIGTERM"
    assert PG_ADMIN_URL.startswith("postgresql://")


def migrate_scripts() -> ScriptDirectory:
    from certctl.store.migrate import MIGRATIONS_DIR

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return ScriptDirectory.from_config(cfg)


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False).stdout
    return sorted(int(p) for p in out.split())


def _workers_of(pid: int, count: int, *, within: float = 60.0) -> list[int]:
    """The supervisor's worker processes once there are `count` of them."""
    deadline = time.monotonic() + within
    while True:
        children = _children(pid)
        if len(children) == count or time.monotonic() > deadline:
            return children
        time.sleep(0.2)


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to reap it counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_the_worker_supervisor(tmp_path: Path, pg_database: str) -> None:
    """`--workers 2` (certctl.api.supervisor): a lean supervisor with no resource-tracker process; SIGHUP replaces
    the workers one at a time while every request is answered; a killed worker is replaced; a supervisor killed
    with SIGKILL takes its workers down (PR_SET_PDEATHSIG)."""
    server = Server(tmp_path / "data", _env(CERTCTL_DATABASE_URL=pg_database, CERTCTL_LOG_LEVEL="info"),
                    args=["--workers", "2"])
    try:
        key = printed_key(server.start())
        assert server.proc is not None
        supervisor = server.proc.pid
        first = _workers_of(supervisor, 2)
        assert len(first) == 2, "two workers and nothing else (no multiprocessing resource tracker)"
        maps = Path(f"/proc/{supervisor}/maps").read_text()
        assert "pydantic_core" not in maps and "sqlalchemy" not in maps, "the supervisor loads no application"
        rss_kb = int(Path(f"/proc/{supervisor}/status").read_text().split("VmRSS:")[1].split()[0])
        assert rss_kb < 30_000, f"supervisor RSS {rss_kb} kB"

        # SIGHUP: requests keep being answered while both workers are replaced.
        os.kill(supervisor, signal.SIGHUP)
        statuses = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            statuses.append(server.status_and_json("/api/v1/auth/check", key=key)[0])
            now = _children(supervisor)
            if len(now) == 2 and not set(now) & set(first):
                break
        replaced = _children(supervisor)
        assert len(replaced) == 2 and not set(replaced) & set(first), (first, replaced)
        assert statuses and set(statuses) == {200}, statuses
        assert not any(_alive(pid) for pid in first), "the old workers stopped"

        # A worker that dies is replaced.
        os.kill(replaced[0], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now = _children(supervisor)
            if len(now) == 2 and replaced[0] not in now:
                break
            time.sleep(0.2)
        assert len(now) == 2 and replaced[0] not in now, now
        status, _ = server.status_and_json("/api/v1/auth/check", key=key)
        assert status == 200

        # The supervisor killed outright: its workers go too.
        workers = _children(supervisor)
        os.kill(supervisor, signal.SIGKILL)
        server.proc.wait(timeout=30)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
            time.sleep(0.2)
        assert not any(_alive(pid) for pid in workers), "no worker serves on without its supervisor"
    finally:
        server.kill()

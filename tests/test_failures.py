"""The failure record (docs/operator/performance.md): real `certctl server` processes under load while things break.

1. SIGKILL 20 times during sustained issuance on PostgreSQL. A load driver creates certificates and asks for
   their issuance through the API without pause; the server is killed whenever a job is mid-issuance (or after
   1.5 s), and restarted. At the end: every accepted request (202 with a job id) has exactly one certificate
   version, or failed cleanly because the kills used up its attempts (no version, certificate Failed, one
   lease expiry per attempt), no job holds two, serials are unique, no job is left Pending or Running,
   nothing was half-written at any kill.
2. PostgreSQL stopped and started under load (a private cluster, so the machine's shared one is never touched):
   while it is down every request is answered quickly with a 503 in the reference's error shape (never a hang,
   never a 500), /ready says so, and the same server process serves again once the database is back; every
   write it acknowledged is there.
3. Disk full on the SQLite data directory (a small tmpfs mounted for the server in its own mount namespace): a
   write that cannot be stored is a 503 saying the storage is full, logged; reads keep working; once space is
   freed writes succeed again, and `PRAGMA integrity_check` says ok.
"""

from __future__ import annotations

import os
import random
import ssl
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.failure_rig import ERROR_SHAPE, Answer, LoadDriver, PrivatePostgres, call, wait_for
from tests.test_crash_safety import ADMIN, Api, _after_kill, _count, _psql, _server_env, pg_url
from tests.test_server_process import Server

pytestmark = pytest.mark.slow

__all__ = ["pg_url"]  # the crash-safety test's fixture: a fresh database on the shared PostgreSQL

KILLS = 20
ISSUING_OPEN = ("SELECT count(*) FROM jobs WHERE type IN ('Issuance', 'Renewal') "
                "AND status IN ('Pending', 'Running', 'AwaitingCSR', 'AwaitingApproval')")


def _failure_env(**extra: str) -> dict[str, str]:
    """The crash-safety settings (2 s job leases, 0.2 s processor ticks, 3 s leader leases), quieter logs."""
    return {**_server_env(), "CERTCTL_LOG_LEVEL": "warning", **extra}


def _setup_issuance(server: Server, prefix: str, *, rsa_bits: int = 2048) -> dict[str, str]:
    api = Api(server)
    team = api.post("/api/v1/teams", {"name": f"{prefix}-team"})
    owner = api.post("/api/v1/owners", {"name": f"{prefix}-owner", "email": "ops@example.com", "team_id": team["id"]})
    policy = api.post("/api/v1/renewal-policies", {"name": f"{prefix}-policy", "renewal_window_days": 30,
                                                   "max_retries": 10, "retry_interval_seconds": 60})
    profile = api.post("/api/v1/profiles", {
        "name": f"{prefix}-rsa", "allowed_key_algorithms": [{"algorithm": "RSA", "min_size": rsa_bits}],
        "allowed_ekus": ["serverAuth"],
    })
    return {"owner_id": owner["id"], "team_id": team["id"], "issuer_id": "iss-local",
            "renewal_policy_id": policy["id"], "certificate_profile_id": profile["id"]}


def _issuing_step(refs: dict[str, str], prefix: str) -> Any:
    """Create a certificate (with our own id, so a create whose answer was lost can be told apart by its 409)
    and ask for its issuance; a 202 is an accepted request that must end with exactly one version."""

    def step(client: httpx.Client, n: int) -> list[Answer]:
        cert_id = f"mc-{prefix}-{n}"
        body = {"id": cert_id, "name": cert_id, "common_name": f"{prefix}-{n}.example.com", **refs}
        out: list[Answer] = []
        for _ in range(200):  # until the certificate exists: the server may be down for a few seconds
            made = call(client, "create", "POST", "/api/v1/certificates", json=body, tag=cert_id)
            out.append(made)
            if made.status != 0:
                break
            time.sleep(0.1)
        if out[-1].status not in (201, 409):
            return out
        out.append(call(client, "renew", "POST", f"/api/v1/certificates/{cert_id}/renew", tag=cert_id))
        return out

    return step


def _driver(server: Server, step: Any, *, threads: int = 2, pause: float = 0.0) -> LoadDriver:
    verify = ssl.create_default_context(cafile=str(server.ca))
    return LoadDriver(server.url, step, ADMIN, verify=verify, threads=threads, pause=pause).start()


# ---- 1. SIGKILL x20 during sustained issuance ---------------------------------------------------------------
def test_sigkill_20_times_during_sustained_issuance(tmp_path: Path, pg_url: str) -> None:
    query = _psql(pg_url)
    server = Server(tmp_path / "data", _failure_env(CERTCTL_DATABASE_URL=pg_url))
    rng = random.Random(20)  # kill timing only
    driver: LoadDriver | None = None
    try:
        server.start()
        refs = _setup_issuance(server, "kill")
        driver = _driver(server, _issuing_step(refs, "kill"), threads=2, pause=0.15)
        running = "SELECT count(*) FROM jobs WHERE status = 'Running'"
        left_running = []
        for _ in range(KILLS):
            # Serve for a while, then kill while a job is mid-issuance (claimed, its RSA key being made or signed),
            # or after 1.5 s.
            time.sleep(0.5)
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline and _count(query, running) == 0:
                time.sleep(0.03)
            time.sleep(rng.uniform(0, 0.1))
            server.kill()
            left_running.append(_after_kill(query))  # nothing half-written, right after the kill
            server.start()
        time.sleep(1)
        answers = driver.stop()
        driver = None
        # After the last restart everything reaches a final state: the dead servers' claims are reaped.
        wait_for(lambda: _count(query, ISSUING_OPEN) == 0, "every issuing job to end", timeout=90, interval=0.3)
        assert server.stop() == 0
    finally:
        if driver is not None:
            driver.stop()
        server.kill()

    # The load really was sustained across the kills, and kills did land mid-issuance.
    accepted = {a.tag: a.body["job_id"] for a in answers if a.op == "renew" and a.status == 202}
    assert len(accepted) >= KILLS, Counter((a.op, a.status) for a in answers)
    assert sum(1 for n in left_running if n > 0) >= 5, left_running
    assert _count(query, "SELECT count(*) FROM audit_events WHERE action = 'job_lease_expired'") >= 1
    # Answers were 201/202, a 409 for a create whose first answer was lost, or no answer (the server was dead).
    statuses = Counter(a.status for a in answers)
    assert set(statuses) <= {0, 201, 202, 409}, statuses

    # No lost certificate: every accepted request has its job Completed with exactly one version, or Failed
    # cleanly because the kills used up its attempts. A killed claim counts as an attempt (docs/operations.md,
    # "Jobs and crashes"), and a job that a restarted server claims again is often the one the next kill catches.
    jobs = dict(query("SELECT id, status FROM jobs WHERE type IN ('Issuance', 'Renewal')"))
    versions = Counter(row[0] for row in query("SELECT job_id FROM certificate_versions"))
    killed = Counter(row[0] for row in query("SELECT resource_id FROM audit_events WHERE action = 'job_lease_expired'"))
    failed = {row[0]: row[1:] for row in query(
        "SELECT j.id, j.attempts, j.max_attempts, j.last_error, c.status FROM jobs j "
        "JOIN managed_certificates c ON c.id = j.certificate_id WHERE j.status = 'Failed'")}
    for job_id, (attempts, max_attempts, error, cert_status) in failed.items():
        assert attempts == max_attempts and error.endswith("no attempts left"), (job_id, attempts, error)
        assert killed[job_id] == int(max_attempts) - 1, (job_id, killed[job_id])
        assert cert_status == "Failed" and versions[job_id] == 0, (job_id, cert_status)
    for cert_id, job_id in accepted.items():
        assert jobs.get(job_id) in ("Completed", "Failed"), (cert_id, job_id, jobs.get(job_id))
        if jobs[job_id] == "Completed":
            assert versions[job_id] == 1, (cert_id, job_id, versions[job_id])
    assert Counter(jobs.values())["Completed"] >= KILLS, Counter(jobs.values())
    # No duplicate: no job with two versions, none without its job Completed, unique serials, one issuance event
    # and one stored key per version; every job final.
    assert max(versions.values()) == 1
    assert set(versions) == {job for job, status in jobs.items() if status == "Completed"}
    assert set(jobs.values()) <= {"Completed", "Failed"}, Counter(jobs.values())
    total = sum(versions.values())
    assert _count(query, "SELECT count(DISTINCT ca_id || ':' || serial_number) FROM certificate_versions") == total
    assert _count(query, "SELECT count(*) FROM audit_events WHERE action = 'certificate_issued'") == total
    assert _count(query, "SELECT count(*) FROM certificate_private_keys") == total
    # Every certificate with a Completed job is Active on its version.
    assert _count(query, "SELECT count(*) FROM managed_certificates c WHERE EXISTS (SELECT 1 FROM jobs j WHERE "
                         "j.certificate_id = c.id AND j.status = 'Completed') AND c.status <> 'Active'") == 0


# ---- 2. PostgreSQL restarted under load -----------------------------------------------------------------------
@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres().init()
    pg.start()
    try:
        yield pg
    finally:
        pg.destroy()


def _reads_and_writes(prefix: str) -> Any:
    def step(client: httpx.Client, n: int) -> list[Answer]:
        name = f"{prefix}-{n}"
        return [call(client, "write", "POST", "/api/v1/teams", json={"name": name}, tag=name),
                call(client, "read", "GET", "/api/v1/teams?per_page=5")]

    return step


def test_postgresql_restarted_under_load(tmp_path: Path, private_pg: PrivatePostgres) -> None:
    server = Server(tmp_path / "data", _failure_env(CERTCTL_DATABASE_URL=private_pg.url,
                                                   CERTCTL_DATABASE_MAX_CONNS="8"))
    driver: LoadDriver | None = None
    try:
        server.start()
        pid = server.proc.pid if server.proc else 0
        driver = _driver(server, _reads_and_writes("pgr"), threads=3, pause=0.02)
        wait_for(lambda: sum(a.status == 201 for a in driver.snapshot()) >= 20, "writes before the outage")
        down_at = time.monotonic()
        private_pg.stop("fast")
        time.sleep(3)
        ready_down, _ = server.status_and_json("/ready")
        up_at = time.monotonic()
        private_pg.start()
        # Served again by the same process, without a restart of its own.
        wait_for(lambda: server.status_and_json("/ready")[0] == 200, "/ready after the restart", timeout=20)
        recovered_at = time.monotonic()
        time.sleep(2)
        answers = driver.stop()
        driver = None
        assert server.proc is not None and server.proc.pid == pid and server.proc.poll() is None
        assert server.stop() == 0
    finally:
        if driver is not None:
            driver.stop()
        server.kill()

    assert ready_down == 503
    during = [a for a in answers if down_at + 0.5 < a.started < up_at]
    failed = [a for a in during if a.status != 200 and a.status != 201]
    assert len(during) >= 30 and len(failed) >= 30, Counter(a.status for a in during)
    # Failing cleanly: a 503 in the reference error shape, quickly (no hang), never a 500 or a dropped connection.
    for answer in failed:
        assert answer.status == 503, (answer.op, answer.status, answer.body, answer.error)
        assert isinstance(answer.body, dict) and set(answer.body) == ERROR_SHAPE, answer.body
        assert "database" in answer.body["message"]
    assert max(a.elapsed for a in answers) < 8, max(a.elapsed for a in answers)  # the client gives up at 10 s
    assert not [a for a in answers if a.status >= 500 and a.status != 503]
    # Once /ready says so, every request succeeds again: the pool replaced its dead connections as they failed.
    settled = [a for a in answers if a.started > recovered_at]
    assert len(settled) >= 20 and all(a.status in (200, 201) for a in settled), Counter(a.status for a in settled)
    # Every acknowledged write is stored, and no write that was refused left a row.
    query = _psql(private_pg.url)
    stored = {row[0] for row in query("SELECT name FROM teams WHERE name LIKE 'pgr-%'")}
    acknowledged = {a.tag for a in answers if a.op == "write" and a.status == 201}
    refused = {a.tag for a in answers if a.op == "write" and a.status == 503}
    assert acknowledged <= stored
    assert not refused & stored


# ---- 3. disk full on the SQLite data directory ---------------------------------------------------------------
TMPFS_MB = 24


def _namespace_wrapper(data_dir: Path) -> list[str]:
    """Run the server in its own mount namespace with `data_dir` on a small tmpfs holding a copy of what the
    directory held (database, TLS files, keys). As root a private mount namespace is enough; otherwise a user
    namespace maps the current user to root inside it. The mount disappears with the server."""
    unshare = ["unshare", "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        unshare[1:1] = ["--user", "--map-root-user"]
    script = ('set -e; seed="$0.seed"; cp -a "$0" "$seed"; mount -t tmpfs -o size=' + str(TMPFS_MB) + 'm tmpfs "$0";'
              ' cp -a "$seed/." "$0/"; rm -rf "$seed"; exec "$@"')
    return [*unshare, "sh", "-c", script, str(data_dir)]


def _sqlite_inside(server: Server, db: str, sql: str) -> list[str]:
    """sqlite3 run in the server's mount namespace (SQLite resolves /proc/<pid>/root to the outer file)."""
    assert server.proc is not None
    enter = ["nsenter", "-t", str(server.proc.pid), "-m"]
    if os.geteuid() != 0:
        enter += ["-U", "--preserve-credentials"]
    done = subprocess.run([*enter, "sqlite3", "-cmd", ".timeout 30000", db, sql], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_disk_full_on_the_sqlite_data_directory(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = Server(data_dir, _failure_env())
    try:
        server.start()  # first boot on the real disk: migrations, TLS files, keys
        api = Api(server)
        team = api.post("/api/v1/teams", {"name": "full-team"})
        assert server.stop() == 0
        server.wrapper = _namespace_wrapper(data_dir)
        server.start()
        assert server.proc is not None
        # The server's view of its data directory (its mount namespace), from outside.
        inside = Path(f"/proc/{server.proc.pid}/root") / data_dir.relative_to("/")
        assert (inside / "certctl.db").exists()
        df = os.statvfs(inside)
        assert df.f_blocks * df.f_frsize <= TMPFS_MB * 1024 * 1024, "the data directory is not on the small tmpfs"

        # Fill the file system to the last byte.
        filler = inside / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            for chunk in (1 << 20, 4096, 1):
                try:
                    while os.write(fd, b"\0" * chunk):
                        pass
                except OSError:
                    pass
        finally:
            os.close(fd)
        assert os.statvfs(inside).f_bavail == 0

        made: list[tuple[int, dict[str, Any], str]] = []
        for i in range(300):  # writes until the database cannot grow any more (the WAL has some slack first)
            status, body = server.status_and_json(
                "/api/v1/owners", "-X", "POST", "-H", "Content-Type: application/json",
                "--data-binary", f'{{"name": "full-{i}", "email": "f{i}@example.com", "team_id": "{team["id"]}"}}',
                key=ADMIN,
            )
            made.append((status, body, f"full-{i}"))
            if status != 201 and len([s for s, _, _ in made if s != 201]) >= 5:
                break
        refused = [(s, b) for s, b, _ in made if s != 201]
        assert len(refused) >= 5, Counter(s for s, _, _ in made)
        for status, body in refused:
            assert status == 503 and set(body) == ERROR_SHAPE, (status, body)
            assert "storage is full" in str(body["message"]), body
        # Reads are still served while the disk is full.
        status, page = server.status_and_json("/api/v1/owners?per_page=500", key=ADMIN)
        assert status == 200
        listed = {o["name"] for o in page["data"]}  # type: ignore[union-attr]
        acknowledged = {name for s, _, name in made if s == 201}
        assert acknowledged <= listed
        # ... and the refusals were logged as such.
        assert "storage is full" in server.err(server.starts).read_text()

        # Space freed: writes work again, without a restart; the database is intact.
        filler.unlink()
        status, body = server.status_and_json(
            "/api/v1/owners", "-X", "POST", "-H", "Content-Type: application/json",
            "--data-binary", f'{{"name": "after-full", "email": "a@example.com", "team_id": "{team["id"]}"}}',
            key=ADMIN,
        )
        assert status == 201, body
        db = str(data_dir / "certctl.db")
        assert _sqlite_inside(server, db, "PRAGMA integrity_check") == ["ok"]
        names = set(_sqlite_inside(server, db, "SELECT name FROM owners"))
        assert acknowledged | {"after-full"} <= names
        assert not {name for s, _, name in made if s != 201} & names
        assert server.stop() == 0
    finally:
        server.kill()

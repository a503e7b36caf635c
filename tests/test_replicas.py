"""Two real `certctl server` replicas on one PostgreSQL database behind haproxy, under load, with each replica
restarted in turn (SIGTERM, then started again) while the load runs.

Proves: zero failed requests during the rolling restart (haproxy's /ready health checks plus the server's
graceful drain on SIGTERM); no job, issuance or certificate version duplicated (every accepted issuance request
has exactly one job and one version, serials unique, one `certificate_issued` event per version); both replicas
served requests and ran the job processor; each scheduler leader loop was held by one replica at a time (the
lease passes only after its holder released it at shutdown).

ACME nonces across two real processes are tested in tests/test_acme_replicas.py, notifications sent once by two
real processes in tests/test_notification_replicas.py.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.failure_rig import Answer, Balancer, LoadDriver, call, wait_for
from tests.test_crash_safety import ADMIN, _count, _psql, _server_env, pg_url
from tests.test_failures import ISSUING_OPEN, _issuing_step, _setup_issuance
from tests.test_server_process import Server

pytestmark = pytest.mark.slow

__all__ = ["pg_url"]

LEADER_LOOPS = {"lease_reaper", "renewal_scan", "job_timeouts", "agent_health", "short_lived_expiry"}


def _replica_env(url: str) -> dict[str, str]:
    return {**_server_env(), "CERTCTL_DATABASE_URL": url, "CERTCTL_LOG_LEVEL": "info",
            "CERTCTL_CONFIG_ENCRYPTION_KEY": "replica-test-shared-encryption-key-0123456789",
            "CERTCTL_PUBLIC_URL": "https://certctl.example.com"}


def _mixed_step(refs: dict[str, str]) -> Any:
    issue = _issuing_step(refs, "ha")

    def step(client: httpx.Client, n: int) -> list[Answer]:
        return [*issue(client, n), call(client, "list", "GET", "/api/v1/certificates?per_page=20&sort=-createdAt")]

    return step


def _lease_events(server: Server) -> list[tuple[datetime, str, str, str]]:
    """(time, event, loop, holder) for every lease taken, lost or released at shutdown (a release counts as
    'lost'), plus (time, 'stopped', '', holder) at the end of each start that stopped cleanly, from the
    replica's JSON logs."""
    events = []
    for n in range(1, server.starts + 1):
        holder = ""
        last = None
        for line in server.err(n).read_text().splitlines():
            if not line.startswith("{"):
                continue
            entry = orjson.loads(line)
            last = datetime.fromisoformat(entry["time"])
            if entry["msg"] in ("scheduler lease taken", "scheduler lease lost"):
                events.append((last, entry["msg"].rsplit(" ", 1)[1], entry["loop"], entry["holder"]))
            elif entry["msg"] == "scheduler releasing leases":  # at shutdown, logged just before the release
                events.extend((last, "lost", loop, entry["holder"]) for loop in entry["loops"])
            elif entry["msg"] == "scheduler started":
                holder = entry["holder"]
        if holder and last is not None:
            events.append((last, "stopped", "", holder))
    return events


def test_two_replicas_behind_haproxy_rolling_restart(tmp_path: Path, pg_url: str) -> None:
    query = _psql(pg_url)
    a = Server(tmp_path / "a" / "data", _replica_env(pg_url))
    b = Server(tmp_path / "b" / "data", _replica_env(pg_url))
    balancer: Balancer | None = None
    driver: LoadDriver | None = None
    claimers: set[str] = set()
    done = threading.Event()
    a.data_dir.mkdir(parents=True)
    b.data_dir.mkdir(parents=True)
    try:
        a.start()
        # The replicas share the CA keys (one directory, as a shared volume would), the database and the
        # encryption key; each has its own TLS certificate.
        (b.data_dir / "keys").symlink_to(a.data_dir / "keys")
        b.start()
        balancer = Balancer(tmp_path / "haproxy", [("a", a.port, a.ca), ("b", b.port, b.ca)]).start()
        wait_for(lambda: set(balancer.server_states().values()) == {"UP"}, "both replicas UP in haproxy", 20)

        refs = _setup_issuance(a, "ha")
        sampler = threading.Thread(target=_sample_claims, args=(query, claimers, done), daemon=True)
        sampler.start()
        driver = LoadDriver(balancer.url, _mixed_step(refs), ADMIN, threads=3, pause=0.05).start()
        time.sleep(2)
        for replica, name in ((b, "b"), (a, "a")):  # a rolling restart
            assert replica.stop() == 0  # SIGTERM: drains, exits 0
            wait_for(lambda n=name: balancer.server_states()[n] != "UP", f"haproxy to see {name} down", 10)
            time.sleep(1)  # the other replica alone serves for a while
            replica.start()
            wait_for(lambda n=name: balancer.server_states()[n] == "UP", f"haproxy to see {name} back", 20)
            time.sleep(1.5)
        answers = driver.stop()
        driver = None
        wait_for(lambda: _count(query, ISSUING_OPEN) == 0, "every issuing job to end", timeout=60, interval=0.3)
        done.set()
        sampler.join(timeout=10)
        served = (_served(a), _served(b))
        assert a.stop() == 0 and b.stop() == 0
    finally:
        done.set()
        if driver is not None:
            driver.stop()
        if balancer is not None:
            balancer.stop()
        a.kill()
        b.kill()

    # Zero failed requests through the balancer while each replica was restarted.
    statuses = Counter((x.op, x.status) for x in answers)
    assert {s for _, s in statuses} <= {200, 201, 202}, (statuses, [x.error or x.body for x in answers
                                                                   if x.status not in (200, 201, 202)][:5])
    assert statuses[("renew", 202)] >= 20, statuses
    # Both replicas served API calls (round robin), in every start.
    assert all(n > 0 for n in served[0] + served[1]), served

    # No duplicated job or issuance: one job per accepted request, one version per job, unique serials.
    accepted = {x.tag: x.body["job_id"] for x in answers if x.op == "renew" and x.status == 202}
    jobs = query("SELECT certificate_id, id, status FROM jobs WHERE type IN ('Issuance', 'Renewal')")
    assert Counter(cert for cert, _, _ in jobs).most_common(1)[0][1] == 1
    assert {cert: job for cert, job, _ in jobs} == accepted
    assert {status for _, _, status in jobs} == {"Completed"}
    versions = Counter(row[0] for row in query("SELECT job_id FROM certificate_versions"))
    assert set(versions) == set(accepted.values()) and set(versions.values()) == {1}
    total = len(accepted)
    assert _count(query, "SELECT count(DISTINCT ca_id || ':' || serial_number) FROM certificate_versions") == total
    assert _count(query, "SELECT count(*) FROM audit_events WHERE action = 'certificate_issued'") == total
    # Jobs ran on both replicas (the job processor runs on every replica): the holders seen on Running jobs.
    assert len({holder.split(":")[1] for holder in claimers}) >= 2, claimers

    # One leader per loop at a time: a lease changes holder only after the previous holder lost or released it.
    events = sorted(_lease_events(a) + _lease_events(b))
    stopped_at = {holder: when for when, kind, _, holder in events if kind == "stopped"}
    for loop in LEADER_LOOPS:
        taken = [(when, holder) for when, kind, name, holder in events if kind == "taken" and name == loop]
        lost = {holder: when for when, kind, name, holder in events if kind == "lost" and name == loop}
        assert taken, loop
        for (_, before), (when, after) in pairwise(taken):
            if before == after:
                continue
            ended = min(lost.get(before, datetime.max.replace(tzinfo=when.tzinfo)), stopped_at[before])
            assert ended <= when, (loop, before, after, ended, when)
    assert len({holder for _, kind, _, holder in events if kind == "taken"}) >= 2  # the leadership moved


def _sample_claims(query: Any, claimers: set[str], done: threading.Event) -> None:
    """Which processes hold Running jobs, sampled every 0.2 s (`claimed_by` is host:pid:random)."""
    while not done.wait(0.2):
        claimers.update(row[0] for row in query("SELECT DISTINCT claimed_by FROM jobs WHERE status = 'Running' "
                                                "AND claimed_by IS NOT NULL"))


def _served(server: Server) -> list[int]:
    """How many API requests each start of the replica logged."""
    return [server.err(n).read_text().count('"path":"/api/v1/') for n in range(1, server.starts + 1)]

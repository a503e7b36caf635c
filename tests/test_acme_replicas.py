"""ACME on two real `certctl server` replicas sharing one PostgreSQL database (issue 6).

Proves: a nonce is single-use across replicas. The same signed JWS, sent to both processes at once, is accepted by
exactly one; the other answers `badNonce` with a fresh Replay-Nonce (which the next round spends, so it is a
working nonce). And complete orders work while every request goes to the other replica than the one before (a
nonce handed out by A is spent on B): account, order, finalize, download, with the inventory and audit rows.

Both replicas use one CERTCTL_ACME_SERVER_EXTERNAL_URL, as they would behind a load balancer: a JWS names the
public URL, so the same JWS is valid for either process.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.acme_client import JOSE, AcmeClient, b64, csr_der, jws
from tests.test_crash_safety import ADMIN, _psql, pg_url
from tests.test_replicas import _replica_env
from tests.test_server_process import Server

pytestmark = pytest.mark.slow

__all__ = ["pg_url"]

PUBLIC = "https://acme.replicas.test"
ROUNDS = 40


class Alternating:
    """tests/acme_client.py's transport over two replicas: each request goes to the other one than the last."""

    def __init__(self, clients: list[httpx.AsyncClient], urls: list[str]) -> None:
        self.clients = clients
        self.urls = urls
        self.turn = 0
        self.served: list[int] = []

    def _pick(self, url: str) -> tuple[httpx.AsyncClient, str]:
        index = self.turn % 2
        self.turn += 1
        self.served.append(index)
        assert url.startswith(PUBLIC), url
        return self.clients[index], self.urls[index] + url.removeprefix(PUBLIC)

    async def get(self, url: str) -> httpx.Response:
        client, real = self._pick(url)
        return await client.get(real)

    async def head(self, url: str) -> httpx.Response:
        client, real = self._pick(url)
        return await client.head(real)

    async def post(self, url: str, *, content: bytes, headers: dict[str, str]) -> httpx.Response:
        client, real = self._pick(url)
        return await client.post(real, content=content, headers=headers)


def _env(url: str) -> dict[str, str]:
    return {**_replica_env(url), "CERTCTL_ACME_SERVER_ENABLED": "true", "CERTCTL_ACME_SERVER_EXTERNAL_URL": PUBLIC,
            "CERTCTL_ACME_SERVER_DEFAULT_PROFILE_ID": "p-acme", "CERTCTL_SCHEDULER_ENABLED": "false"}


def test_acme_nonces_are_single_use_across_two_replicas(tmp_path: Path, pg_url: str) -> None:
    query = _psql(pg_url)
    a = Server(tmp_path / "a" / "data", _env(pg_url))
    b = Server(tmp_path / "b" / "data", _env(pg_url))
    a.data_dir.mkdir(parents=True)
    b.data_dir.mkdir(parents=True)
    try:
        a.start()
        (b.data_dir / "keys").symlink_to(a.data_dir / "keys")  # one CA key store, as a shared volume would be
        b.start()
        status, _ = a.status_and_json("/api/v1/profiles", "-X", "POST", "-H", "Content-Type: application/json",
                                      "-d", '{"id": "p-acme", "name": "acme replicas"}', key=ADMIN)
        assert status == 201
        outcome = asyncio.run(_exercise(a, b))
        assert a.stop() == 0 and b.stop() == 0
        finalized = [a.err(1).read_text().count('/finalize","status":200'),
                     b.err(1).read_text().count('/finalize","status":200')]
    finally:
        a.kill()
        b.kill()

    # Every round: one replica accepted, the other refused the replayed nonce; both kinds of answer came from
    # both replicas over the rounds (neither replica is always first).
    assert len(outcome["rounds"]) == ROUNDS
    assert all(sorted(r) == [200, 400] for r in outcome["rounds"]), outcome["rounds"]
    winners = {r.index(200) for r in outcome["rounds"]}
    assert winners == {0, 1}, outcome["rounds"]
    # The complete orders: finalized on both replicas (the requests alternated), issued once each, filed in
    # the inventory with source ACME, audited.
    assert sum(finalized) == 3 and min(finalized) >= 1, finalized
    versions = outcome["versions"]
    assert len(versions) == 3 and len(set(versions)) == 3
    listed = ",".join(f"'{v}'" for v in versions)
    assert query(f"SELECT count(*) FROM certificate_versions WHERE id IN ({listed})") == [("3",)]
    assert query("SELECT count(*) FROM managed_certificates WHERE source = 'ACME'") == [("3",)]
    assert query("SELECT count(*) FROM audit_events WHERE action = 'certificate_issued'") == [("3",)]
    assert query("SELECT count(*) FROM acme_orders WHERE status = 'valid'") == [("3",)]
    # Every nonce spent is recorded once, in the shared table: the rounds' nonces and every order request.
    spent = int(query("SELECT count(*) FROM acme_nonces")[0][0])
    assert spent >= ROUNDS + 3 * 4, spent


async def _exercise(a: Server, b: Server) -> dict[str, Any]:
    async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(a.ca)), timeout=30) as to_a, \
            httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(b.ca)), timeout=30) as to_b:
        clients, urls = [to_a, to_b], [a.url, b.url]
        directory = f"{PUBLIC}/acme/directory"

        # An account (registered through A), then the race rounds.
        account = AcmeClient(Alternating(clients, urls), directory)
        await account.start()
        assert (await account.register()).status_code == 201
        assert account.kid is not None and account.kid.startswith(PUBLIC)
        target = account.kid  # POST-as-GET... to the account: a POST with {} that changes nothing
        head = await to_a.head(f"{a.url}/acme/profile/p-acme/new-nonce")
        assert head.status_code == 200
        nonce = head.headers["Replay-Nonce"]
        rounds: list[list[int]] = []
        for n in range(ROUNDS):
            protected = {"alg": "ES256", "kid": account.kid, "nonce": nonce, "url": target}
            body = orjson.dumps(jws(account.key, protected, b"{}"))
            path = target.removeprefix(PUBLIC)
            # Alternate which replica gets the request first, then send both at once.
            order = [0, 1] if n % 2 == 0 else [1, 0]
            answers = await asyncio.gather(*(clients[i].post(urls[i] + path, content=body, headers=JOSE)
                                              for i in order))
            by_replica = [answers[order.index(0)], answers[order.index(1)]]
            statuses = [r.status_code for r in by_replica]
            rounds.append(statuses)
            assert sorted(statuses) == [200, 400], [r.text for r in by_replica]
            loser = by_replica[statuses.index(400)]
            assert loser.headers["content-type"] == "application/problem+json"
            assert loser.json()["type"] == "urn:ietf:params:acme:error:badNonce", loser.text
            winner = by_replica[statuses.index(200)]
            assert winner.json()["status"] == "valid"
            fresh = {loser.headers["Replay-Nonce"], winner.headers["Replay-Nonce"]}
            assert nonce not in fresh and len(fresh) == 2
            # The next round spends the nonce the refusing replica handed out: it is a fresh, working one.
            nonce = loser.headers["Replay-Nonce"]

        # Complete orders, each request on the other replica than the one before.
        versions = []
        transport = Alternating(clients, urls)
        client = AcmeClient(transport, directory)
        await client.start()
        assert (await client.register()).status_code == 201
        for n in range(3):
            name = f"r{n}.replicas.test"
            created = await client.order(name)
            assert created.status_code == 201, created.text
            order = created.json()
            assert order["status"] == "ready"  # the profile trusts authenticated accounts
            read = await client.post(created.headers["Location"], None)  # five requests per order: the
            assert read.status_code == 200 and read.json()["status"] == "ready"  # steps change replica per order
            authz = await client.post(order["authorizations"][0], None)
            assert authz.status_code == 200 and authz.json()["status"] == "valid", authz.text
            der, _ = csr_der([name])
            final = await client.post(order["finalize"], {"csr": b64(der)})
            assert final.status_code == 200 and final.json()["status"] == "valid", final.text
            chain = await client.post(final.json()["certificate"], None)
            assert chain.status_code == 200 and chain.text.count("BEGIN CERTIFICATE") >= 2, chain.text
            versions.append(final.json()["certificate"].rsplit("/", 1)[1])
        return {"rounds": rounds, "versions": versions}

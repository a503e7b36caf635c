"""The ACME server in process (SQLite and PostgreSQL): protocol flows, JWS rules and their negative cases,
EAB, key change, finalize checks, ownership, revocation, ARI and `replaces`. Real certbot: test_acme_certbot.py."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certctl.domain.clock import FakeClock
from certctl.services.acme import ari_cert_id, parse_ari_cert_id, serial_der_bytes
from certctl.store import acme_repo
from tests import factories
from tests.acme_client import JOSE, AcmeClient, b64, csr_der, eab_jws, jwk_of, jws, new_key, thumbprint
from tests.conftest import Api, make_settings, start_api, stop_api

PROBLEM = "application/problem+json"
ERR = "urn:ietf:params:acme:error:"
DIRECTORY = "https://testserver/acme/profile/p-acme/directory"
CHALLENGE_DIRECTORY = "https://testserver/acme/profile/p-chal/directory"
EAB_DIRECTORY = "https://testserver/acme/profile/p-eab/directory"


@dataclass(frozen=True)
class Outcome:
    valid: bool
    error_type: str | None
    detail: str
    record: dict[str, Any]


class StubValidator:
    """Stands in for certctl.services.acme_validation in process (the real one is exercised by certbot)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, str, str]] = []
        self.fail: set[str] = set()
        self.slow: dict[str, asyncio.Event] = {}  # identifier -> released when the validation may finish

    async def validate(self, challenge_type: str, identifier_type: str, identifier: str, token: str,
                       key_authorization: str) -> Outcome:
        self.calls.append((challenge_type, identifier_type, identifier, token, key_authorization))
        if identifier in self.slow:
            await self.slow[identifier].wait()
        if identifier in self.fail:
            return Outcome(False, "incorrectResponse", "wrong key authorization", {"hostname": identifier})
        return Outcome(True, None, "", {"hostname": identifier, "port": "80"})


class FakeLimiter:
    def __init__(self) -> None:
        self.refuse: set[str] = set()
        self.keys: list[str] = []

    async def hit(self, key: str, limit: int, window_seconds: float) -> Any:
        self.keys.append(key)
        refused = any(key.startswith(prefix) for prefix in self.refuse)

        @dataclass
        class Decision:
            allowed: bool
            retry_after: float

        return Decision(not refused, 42.5 if refused else 0.0)


@dataclass
class Acme:
    api: Api
    clock: FakeClock
    validator: StubValidator
    limiter: FakeLimiter

    def client(self, alg: str = "ES256", directory: str = DIRECTORY) -> AcmeClient:
        return AcmeClient(self.api.anon, directory, key=new_key(alg))

    async def account(self, alg: str = "ES256", directory: str = DIRECTORY) -> AcmeClient:
        client = self.client(alg, directory)
        await client.start()
        response = await client.register(contact=["mailto:ops@example.com"])
        assert response.status_code == 201, response.text
        return client


@pytest.fixture
async def acme(database_url: str, tmp_path: Path) -> AsyncIterator[Acme]:
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    settings = make_settings(database_url, tmp_path / "data", extra={
        "CERTCTL_ACME_SERVER_ENABLED": "true", "CERTCTL_ACME_SERVER_EAB_REQUIRED_PROFILES": "p-eab",
        "CERTCTL_ACME_SERVER_DEFAULT_PROFILE_ID": "p-acme",
        "CERTCTL_ACME_SERVER_RATE_LIMIT_CONCURRENT_ORDERS": "3", "CERTCTL_ACME_SERVER_VALIDATION_WAIT": "300ms"})
    api, lifespan = await start_api(settings, clock=clock)
    try:
        for body in ({"id": "p-acme", "name": "acme"},
                     {"id": "p-chal", "name": "challenge", "acme_auth_mode": "challenge"},
                     {"id": "p-eab", "name": "eab"}):
            response = await api.admin.post("/api/v1/profiles", json=body)
            assert response.status_code == 201, response.text
        validator, limiter = StubValidator(), FakeLimiter()
        api.services.acme._validator = validator
        api.services.acme.limiter = limiter
        yield Acme(api, clock, validator, limiter)
    finally:
        await stop_api(api, lifespan)


def problem(response: httpx.Response, type_: str, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    assert response.headers.get("Replay-Nonce"), "every answer, errors too, carries a fresh nonce"
    body: dict[str, Any] = response.json()
    assert body["type"] == ERR + type_, body
    return body


async def managed_acme_certificates(api: Api) -> list[dict[str, Any]]:
    response = await api.admin.get("/api/v1/certificates", params={"source": "ACME", "per_page": 100})
    assert response.status_code == 200
    data: list[dict[str, Any]] = response.json()["data"]
    return data


# ---- happy paths ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("alg", ["ES256", "RS256", "EdDSA"])
async def test_accounts_of_each_algorithm_issue_into_the_inventory(acme: Acme, alg: str) -> None:
    client = await acme.account(alg)
    rule = await factories.policy_rule(acme.api.admin, name="prod only")  # ACME certificates have no environment
    names = ("www.example.com", "*.apps.example.com", "192.0.2.7")
    pem, order = await client.issue(*names)
    certs = x509.load_pem_x509_certificates(pem.encode())
    assert len(certs) == 2  # leaf + the local CA
    sans = certs[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(map(str, sans.get_values_for_type(x509.DNSName))) == ["*.apps.example.com", "www.example.com"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["192.0.2.7"]
    certs[0].verify_directly_issued_by(certs[1])
    # Inventory: source ACME, the profile, the audit event of the issuance.
    [managed] = await managed_acme_certificates(acme.api)
    assert managed["source"] == "ACME" and managed["certificate_profile_id"] == "p-acme"
    assert managed["status"] == "Active" and managed["common_name"] == "www.example.com"
    assert "certificate_issued" in await acme.api.audit_actions("certificate")
    # The policy rules were evaluated in the issuing transaction.
    violations = (await acme.api.admin.get(f"/api/v1/policies/{rule['id']}/violations")).json()["data"]
    assert [v["certificate_id"] for v in violations] == [managed["id"]]
    # The account's orders list names the order.
    account = (await client.post(client.kid or "", None)).json()
    listed = (await client.post(account["orders"], None)).json()
    assert listed["orders"] == [order["finalize"].removesuffix("/finalize")]


async def test_directory_nonce_and_download_headers(acme: Acme) -> None:
    anon = acme.api.anon
    default = (await anon.get("https://testserver/acme/directory")).json()
    assert default["newAccount"] == "https://testserver/acme/profile/p-acme/new-account"
    assert default["meta"]["externalAccountRequired"] is False
    assert (await anon.get(EAB_DIRECTORY)).json()["meta"]["externalAccountRequired"] is True
    head = await anon.head(default["newNonce"])
    get = await anon.get(default["newNonce"])
    assert (head.status_code, get.status_code) == (200, 204)
    assert head.headers["Cache-Control"] == get.headers["Cache-Control"] == "no-store"
    assert head.headers["Replay-Nonce"] != get.headers["Replay-Nonce"]
    assert 'rel="index"' in head.headers["Link"]
    problem(await anon.get("https://testserver/acme/profile/nope/directory"), "malformed", 404)
    problem(await anon.get("https://testserver/acme/profile/p-acme/no-such-thing"), "malformed", 404)
    problem(await anon.post(default["newNonce"]), "malformed", 405)

    client = await acme.account()
    created = await client.order("a.example.com")
    order = created.json()
    der, _ = csr_der(["a.example.com"])
    final = (await client.post(order["finalize"], {"csr": b64(der)})).json()
    download = await client.post(final["certificate"], None)
    assert download.headers["content-type"] == "application/pem-certificate-chain"
    links = download.headers.get_list("Link")
    assert any(link.startswith("<https://testserver/.well-known/pki/ca/") and 'rel="up"' in link for link in links)
    up = next(link for link in links if 'rel="up"' in link).split(">")[0][1:]
    issuer_der = (await anon.get(up)).content
    leaf = x509.load_pem_x509_certificate(download.content)
    leaf.verify_directly_issued_by(x509.load_der_x509_certificate(issuer_der))


# ---- JWS and nonce rules (RFC 8555 §6) --------------------------------------------------------------------
async def test_jws_rules_refuse_bad_requests(acme: Acme) -> None:
    client = await acme.account()
    http = acme.api.anon
    new_order = client.directory["newOrder"]
    body = orjson.dumps({"identifiers": [{"type": "dns", "value": "x.example.com"}]})

    async def send(protected: dict[str, Any], payload: bytes = body, key: Any = None,
                   headers: dict[str, str] = JOSE) -> httpx.Response:
        return await http.post(new_order, content=orjson.dumps(jws(key or client.key, protected, payload)),
                               headers=headers)

    base = {"alg": "ES256", "kid": client.kid, "url": new_order}
    # A replayed nonce: badNonce, with a fresh Replay-Nonce to retry with.
    nonce = await client.nonce()
    assert (await send({**base, "nonce": nonce})).status_code == 201
    replay = await send({**base, "nonce": nonce})
    problem(replay, "badNonce", 400)
    assert (await send({**base, "nonce": replay.headers["Replay-Nonce"]})).status_code == 201
    # A forged nonce, and one past its lifetime.
    problem(await send({**base, "nonce": b64(b"\x00" * 40)}), "badNonce", 400)
    stale = await client.nonce()
    acme.clock.advance(timedelta(minutes=6))
    problem(await send({**base, "nonce": stale}), "badNonce", 400)
    # url must be the request URL exactly.
    problem(await send({**base, "nonce": await client.nonce(), "url": new_order + "x"}), "unauthorized", 401)
    # alg none and MACs are refused (with the accepted list).
    refused = problem(await send({**base, "nonce": await client.nonce(), "alg": "none"}), "badSignatureAlgorithm",
                      400)
    assert set(refused["algorithms"]) == {"ES256", "ES384", "RS256", "EdDSA"}
    problem(await send({**base, "nonce": await client.nonce(), "alg": "HS256"}), "badSignatureAlgorithm", 400)
    # An alg that does not fit the key.
    problem(await send({**base, "nonce": await client.nonce(), "alg": "RS256"}), "badSignatureAlgorithm", 400)
    # kid and jwk together, and jwk where a kid is required.
    problem(await send({**base, "nonce": await client.nonce(), "jwk": jwk_of(client.key)}), "malformed", 400)
    no_kid = {k: v for k, v in base.items() if k != "kid"}
    problem(await send({**no_kid, "nonce": await client.nonce(), "jwk": jwk_of(client.key)}), "malformed", 400)
    # Signed by another key than the account's.
    problem(await send({**base, "nonce": await client.nonce()}, key=new_key()), "malformed", 400)
    # A kid of another profile is no account here.
    other = base["kid"].replace("/p-acme/", "/p-chal/")
    problem(await send({**base, "kid": other, "nonce": await client.nonce()}), "accountDoesNotExist", 400)
    # Content-Type must be application/jose+json; the body must be a flattened JWS.
    problem(await send({**base, "nonce": await client.nonce()}, headers={"Content-Type": "application/json"}),
            "malformed", 415)
    problem(await http.post(new_order, content=b"[1]", headers=JOSE), "malformed", 400)
    problem(await http.post(new_order, content=b"x" * (65 * 1024), headers=JOSE), "malformed", 413)
    nul = orjson.dumps({"identifiers": [{"type": "dns", "value": "a\u0000.example.com"}]})
    problem(await send({**base, "nonce": await client.nonce()}, payload=nul), "malformed", 400)
    # Nothing was created by the refused requests: the two good orders only.
    listed = (await client.post((await client.post(client.kid or "", None)).json()["orders"], None)).json()
    assert len(listed["orders"]) == 2


# ---- accounts -----------------------------------------------------------------------------------------------
async def test_account_lookup_update_and_deactivation(acme: Acme) -> None:
    stranger = acme.client()
    await stranger.start()
    problem(await stranger.post(stranger.directory["newAccount"], {"onlyReturnExisting": True}, use_jwk=True),
            "accountDoesNotExist", 400)
    problem(await stranger.register(contact=["tel:+1555"]), "unsupportedContact", 400)
    problem(await stranger.register(contact=["mailto:not an address"]), "invalidContact", 400)

    # The same key registering twice at once: one account, both answers name it.
    twin_a, twin_b = acme.client(), acme.client()
    twin_b.key = twin_a.key
    await twin_a.start()
    await twin_b.start()
    answers = await asyncio.gather(twin_a.register(), twin_b.register())
    assert sorted(a.status_code for a in answers) == [200, 201]
    assert answers[0].headers["Location"] == answers[1].headers["Location"]
    # One account, one audit event: the loser of the race wrote nothing.
    assert (await acme.api.audit_actions("acme_account")).count("acme_account_created") == 1
    # The loser's path for certain (its lookup with the nonce found no account; its insert finds one).
    service = acme.api.services.acme
    raced, created = await service.new_account("p-acme", jwk_of(twin_a.key), thumbprint(twin_a.key), {},
                                               twin_a.directory["newAccount"], None, looked_up=True)
    assert not created and twin_a.kid == f"{DIRECTORY.removesuffix('/directory')}/account/{raced['id']}"
    assert (await acme.api.audit_actions("acme_account")).count("acme_account_created") == 1

    client = await acme.account()
    again = await client.post(client.directory["newAccount"], {"onlyReturnExisting": True}, use_jwk=True)
    assert again.status_code == 200 and again.headers["Location"] == client.kid
    updated = await client.post(client.kid or "", {"contact": ["mailto:new@example.com"]})
    assert updated.json()["contact"] == ["mailto:new@example.com"]
    gone = await client.post(client.kid or "", {"status": "deactivated"})
    assert gone.json()["status"] == "deactivated"
    problem(await client.order("x.example.com"), "unauthorized", 401)
    assert "acme_account_deactivated" in await acme.api.audit_actions("acme_account")


async def _order_and_authz_status(acme: Acme, order_url: str) -> tuple[str, list[str]]:
    order_id = order_url.rstrip("/").rsplit("/", 1)[-1]
    async with acme.api.services.acme.ctx.db.read() as conn:
        order = await acme_repo.get_order(conn, order_id)
        assert order is not None
        authzs = await acme_repo.authz_ids_of_order(conn, order_id)
    return str(order["status"]), [str(a["status"]) for a in authzs]


async def _audit_details(acme: Acme, action: str) -> list[dict[str, Any]]:
    await acme.api.services.audit_sink.flush()
    response = await acme.api.admin.get("/api/v1/audit", params={"per_page": 500, "resource_type": "acme_account"})
    assert response.status_code == 200, response.text
    return [e["details"] for e in response.json()["data"] if e["action"] == action]


async def test_deactivation_cancels_the_accounts_pending_work(acme: Acme) -> None:
    """RFC 8555 §7.3.6: a deactivated account's pending, ready and processing orders become invalid and its
    pending authorizations deactivated, in the transaction that deactivates it; its requests then get 401."""
    client = await acme.account(directory=CHALLENGE_DIRECTORY)
    other = await acme.account(directory=CHALLENGE_DIRECTORY)
    pending = await client.order("pending.example.com", "second.example.com")
    ready = await client.order("ready.example.com")
    authz = (await client.post(ready.json()["authorizations"][0], None)).json()
    assert (await client.post(authz["challenges"][0]["url"], {})).json()["status"] == "valid"
    await acme.api.services.acme.settle()
    done = await client.order("done.example.com")
    authz = (await client.post(done.json()["authorizations"][0], None)).json()
    await client.post(authz["challenges"][0]["url"], {})
    await acme.api.services.acme.settle()
    der, _ = csr_der(["done.example.com"])
    assert (await client.post(done.json()["finalize"], {"csr": b64(der)})).json()["status"] == "valid"
    untouched = await other.order("pending.example.com")
    assert await _order_and_authz_status(acme, ready.headers["Location"]) == ("ready", ["valid"])

    gone = await client.post(client.kid or "", {"status": "deactivated"})
    assert gone.status_code == 200 and gone.json()["status"] == "deactivated"
    assert await _order_and_authz_status(acme, pending.headers["Location"]) == \
        ("invalid", ["deactivated", "deactivated"])
    assert await _order_and_authz_status(acme, ready.headers["Location"]) == ("invalid", ["valid"])
    assert await _order_and_authz_status(acme, done.headers["Location"]) == ("valid", ["valid"])
    assert await _order_and_authz_status(acme, untouched.headers["Location"]) == ("pending", ["pending"])
    [details] = await _audit_details(acme, "acme_account_deactivated")
    assert details["orders_invalidated"] == 2 and details["authorizations_deactivated"] == 2
    # Every request signed by the account is refused from now on, reads included.
    for url, payload in ((pending.headers["Location"], None), (client.directory["newOrder"], {
            "identifiers": [{"type": "dns", "value": "x.example.com"}]}), (client.kid or "", None)):
        problem(await client.post(url, payload), "unauthorized", 401)


async def test_revocation_by_an_account_holding_authorizations_for_every_name(acme: Acme) -> None:
    """RFC 8555 §7.6: an account that did not order a certificate may revoke it when it holds valid, unexpired
    authorizations for all of its identifiers (a wildcard needs a wildcard authorization); others get 403."""
    owner = await acme.account()
    names = ("a.example.com", "*.b.example.com", "192.0.2.9")
    pem, _ = await owner.issue(*names)
    der = x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)
    url = owner.directory["revokeCert"]

    partial = await acme.account()  # validated only some of the names (trust_authenticated: ready at once)
    assert (await partial.order("a.example.com", "192.0.2.9")).status_code == 201
    denied = problem(await partial.post(url, {"certificate": b64(der)}), "unauthorized", 403)
    assert "authorizations" in denied["detail"]
    no_wildcard = await acme.account()  # b.example.com itself, but not the wildcard
    assert (await no_wildcard.order("a.example.com", "b.example.com", "192.0.2.9")).status_code == 201
    problem(await no_wildcard.post(url, {"certificate": b64(der)}), "unauthorized", 403)
    expired = await acme.account()  # every name, but its authorizations expire before it asks
    assert (await expired.order(*names)).status_code == 201
    acme.clock.advance(timedelta(days=2))
    expired._nonce = owner._nonce = None  # the nonces handed out before expired with the clock
    problem(await expired.post(url, {"certificate": b64(der)}), "unauthorized", 403)

    holder = await acme.account()
    assert (await holder.order(*names)).status_code == 201
    assert (await holder.post(url, {"certificate": b64(der), "reason": 4})).status_code == 200
    assert [c["status"] for c in await managed_acme_certificates(acme.api)] == ["Revoked"]
    problem(await owner.post(url, {"certificate": b64(der)}), "alreadyRevoked", 400)


async def test_revocation_after_real_challenges_on_a_challenge_profile(acme: Acme) -> None:
    """The same rule where names are proven by challenges: a second account that validated every name revokes;
    one whose validation failed for a name cannot."""
    owner = await acme.account(directory=CHALLENGE_DIRECTORY)

    async def validate(client: AcmeClient, *names: str) -> dict[str, Any]:
        order = (await client.order(*names)).json()
        for authz_url in order["authorizations"]:
            authz = (await client.post(authz_url, None)).json()
            await client.post(authz["challenges"][0]["url"], {})
        await acme.api.services.acme.settle()
        return order

    order = await validate(owner, "c.example.com", "d.example.com")
    der, _ = csr_der(["c.example.com", "d.example.com"])
    final = (await owner.post(order["finalize"], {"csr": b64(der)})).json()
    pem = (await owner.post(final["certificate"], None)).text
    cert_der = x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)
    url = owner.directory["revokeCert"]

    failing = await acme.account(directory=CHALLENGE_DIRECTORY)
    acme.validator.fail.add("d.example.com")
    await validate(failing, "c.example.com", "d.example.com")
    problem(await failing.post(url, {"certificate": b64(cert_der)}), "unauthorized", 403)
    acme.validator.fail.clear()
    prover = await acme.account(directory=CHALLENGE_DIRECTORY)
    await validate(prover, "c.example.com")
    await validate(prover, "d.example.com")  # the names may come from different orders
    # An account of another profile never can, whatever it validated there.
    trusted = await acme.account()
    assert (await trusted.order("c.example.com", "d.example.com")).status_code == 201
    cross = await trusted.post(url.replace("p-chal", "p-acme"), {"certificate": b64(cert_der)})
    problem(cross, "unauthorized", 403)
    assert (await prover.post(url, {"certificate": b64(cert_der)})).status_code == 200


async def test_key_change_checks_the_inner_jws(acme: Acme) -> None:
    client = await acme.account()
    url = client.directory["keyChange"]
    new = new_key("EdDSA")

    def inner(**changes: Any) -> dict[str, str]:
        protected = {"alg": "EdDSA", "jwk": jwk_of(new), "url": url, **changes.pop("protected", {})}
        payload = {"account": client.kid, "oldKey": jwk_of(client.key), **changes.pop("payload", {})}
        return jws(changes.pop("key", new), protected, orjson.dumps(payload))

    bad = {
        "signed by another key": inner(key=new_key("EdDSA")),
        "url differs": inner(protected={"url": url + "/other"}),
        "account differs": inner(payload={"account": f"{client.kid}x"}),
        "oldKey is not the account key": inner(payload={"oldKey": jwk_of(new_key())}),
        "inner carries a nonce": inner(protected={"nonce": "abc"}),
    }
    for reason, body in bad.items():
        response = await client.post(url, orjson.dumps(body))
        assert response.status_code == 400, (reason, response.text)
        assert response.json()["type"] == ERR + "malformed", reason
    # A new key already used by another account: 409 with that account's Location.
    other = await acme.account("EdDSA")
    taken = jws(other.key, {"alg": "EdDSA", "jwk": jwk_of(other.key), "url": url},
                orjson.dumps({"account": client.kid, "oldKey": jwk_of(client.key)}))
    conflict = await client.post(url, orjson.dumps(taken))
    assert conflict.status_code == 409 and conflict.headers["Location"] == other.kid
    # The good one: the new key signs from now on, the old one no longer does.
    assert (await client.post(url, orjson.dumps(inner()))).status_code == 200
    old_key, client.key = client.key, new
    assert (await client.order("k.example.com")).status_code == 201
    client.key = old_key  # an ES256 signature no longer fits the account's (Ed25519) key
    problem(await client.order("k.example.com"), "badSignatureAlgorithm", 400)


async def test_external_account_binding(acme: Acme) -> None:
    created = await acme.api.admin.post("/api/v1/acme/eab-keys", json={"profile_id": "p-eab", "description": "ci"})
    assert created.status_code == 201, created.text
    key = created.json()
    assert (await acme.api.user.post("/api/v1/acme/eab-keys", json={})).status_code == 403
    listed = (await acme.api.admin.get("/api/v1/acme/eab-keys")).json()["data"]
    assert [k["key_id"] for k in listed] == [key["key_id"]] and "hmac_key" not in listed[0]
    stored = await acme.api.services.acme.list_eab_keys()
    assert all(key["hmac_key"] not in str(value) for row in stored for value in row.values())  # sealed

    client = acme.client(directory=EAB_DIRECTORY)
    await client.start()
    url = client.directory["newAccount"]
    problem(await client.register(), "externalAccountRequired", 400)
    forged = eab_jws(key["key_id"], b64(b"wrong-secret-0123456789abcdef012"), jwk_of(client.key), url)
    problem(await client.register(externalAccountBinding=forged), "unauthorized", 401)
    other_key = eab_jws(key["key_id"], key["hmac_key"], jwk_of(new_key()), url)
    problem(await client.register(externalAccountBinding=other_key), "unauthorized", 401)
    good = eab_jws(key["key_id"], key["hmac_key"], jwk_of(client.key), url)
    assert (await client.register(externalAccountBinding=good)).status_code == 201
    # Single use: a second account cannot reuse the key.
    second = acme.client(directory=EAB_DIRECTORY)
    await second.start()
    reuse = eab_jws(key["key_id"], key["hmac_key"], jwk_of(second.key), url)
    problem(await second.register(externalAccountBinding=reuse), "unauthorized", 401)
    listed = (await acme.api.admin.get("/api/v1/acme/eab-keys")).json()["data"]
    assert listed[0]["account_id"] == client.kid.rsplit("/", 1)[1]  # type: ignore[union-attr]


# ---- orders, finalize, download -----------------------------------------------------------------------------
async def test_finalize_and_download_are_checked(acme: Acme) -> None:
    client = await acme.account()
    problem(await client.order("bad..name"), "rejectedIdentifier", 400)
    problem(await client.post(client.directory["newOrder"], {"identifiers": [{"type": "email", "value": "a@b"}]}),
            "unsupportedIdentifier", 400)
    order = (await client.order("www.example.com", "api.example.com")).json()
    for names in (["www.example.com"], ["www.example.com", "api.example.com", "evil.example.com"],
                  ["www.example.com", "other.example.com"]):
        der, _ = csr_der(names)
        body = problem(await client.post(order["finalize"], {"csr": b64(der)}), "badCSR", 400)
        assert "CSR" in body["detail"]
    weak, _ = csr_der(["www.example.com", "api.example.com"], new_key("EdDSA"))  # not allowed by the profile
    problem(await client.post(order["finalize"], {"csr": b64(weak)}), "badCSR", 400)
    assert await managed_acme_certificates(acme.api) == []  # nothing half-written
    assert (await client.post(order["finalize"].removesuffix("/finalize"), None)).json()["status"] == "ready"

    der, _ = csr_der(["api.example.com", "www.example.com"])
    final = (await client.post(order["finalize"], {"csr": b64(der)})).json()
    assert final["status"] == "valid"
    problem(await client.post(order["finalize"], {"csr": b64(der)}), "orderNotReady", 403)
    # Another account can neither read the order nor download the certificate.
    intruder = await acme.account()
    problem(await intruder.post(final["certificate"], None), "unauthorized", 403)
    problem(await intruder.post(order["finalize"].removesuffix("/finalize"), None), "unauthorized", 403)
    problem(await intruder.post(final["authorizations"][0], None), "unauthorized", 403)


async def test_challenge_mode_validates_off_the_request_path(acme: Acme) -> None:
    """A challenge POST starts its validation as a task of its own and waits for it a short while
    (CERTCTL_ACME_SERVER_VALIDATION_WAIT, 300 ms here): a prompt validation is answered at once, a slow one
    with `processing` and a Retry-After, and it completes after the request has been answered."""
    client = await acme.account(directory=CHALLENGE_DIRECTORY)
    acme.validator.slow["ok.example.com"] = gate = asyncio.Event()
    order = (await client.order("ok.example.com", "*.wild.example.com", "198.51.100.4")).json()
    assert order["status"] == "pending"
    authzs = [(await client.post(url, None)).json() for url in order["authorizations"]]
    types = {a["identifier"]["value"]: sorted(c["type"] for c in a["challenges"]) for a in authzs}
    assert types == {"ok.example.com": ["dns-01", "http-01", "tls-alpn-01"], "wild.example.com": ["dns-01"],
                     "198.51.100.4": ["http-01", "tls-alpn-01"]}
    assert [a.get("wildcard") for a in authzs] == [None, True, None]
    slow_url = ""
    for url, authz in zip(order["authorizations"], authzs, strict=True):
        challenge = authz["challenges"][0]
        assert len(base64.urlsafe_b64decode(challenge["token"] + "==")) >= 16  # ≥ 128 bits
        answered = await client.post(challenge["url"], {})
        assert f'<{url}>;rel="up"' in answered.headers["Link"]
        if authz["identifier"]["value"] == "ok.example.com":  # still validating when the wait ran out
            assert answered.json()["status"] == "processing" and answered.headers["Retry-After"] == "1"
            slow_url = url
            pending = await client.post(url, None)
            assert pending.json()["status"] == "pending" and pending.headers["Retry-After"] == "1"
        else:  # validated while the request waited: the answer is the outcome
            assert answered.json()["status"] == "valid" and "validated" in answered.json()
            assert "Retry-After" not in answered.headers
    gate.set()
    await acme.api.services.acme.settle()
    assert (await client.post(slow_url, None)).json()["status"] == "valid"
    kinds = {(c[0], c[2]) for c in acme.validator.calls}
    assert ("dns-01", "wild.example.com") in kinds
    assert all(c[4] == f"{c[3]}.{thumbprint(client.key)}" for c in acme.validator.calls)
    ready = (await client.post(order["finalize"].removesuffix("/finalize"), None)).json()
    assert ready["status"] == "ready"
    der, _ = csr_der(["ok.example.com", "*.wild.example.com", "198.51.100.4"])
    assert (await client.post(order["finalize"], {"csr": b64(der)})).json()["status"] == "valid"
    # A failed validation makes the authorization and the order invalid, with the error on the challenge.
    acme.validator.fail.add("bad.example.com")
    failing = (await client.order("bad.example.com")).json()
    authz = (await client.post(failing["authorizations"][0], None)).json()
    await client.post(authz["challenges"][0]["url"], {})
    await acme.api.services.acme.settle()
    after = (await client.post(authz["challenges"][0]["url"], None)).json()
    assert after["status"] == "invalid" and after["error"]["type"] == ERR + "incorrectResponse"
    assert (await client.post(failing["finalize"].removesuffix("/finalize"), None)).json()["status"] == "invalid"
    # Deactivating an authorization invalidates its order.
    third = (await client.order("deact.example.com")).json()
    gone = await client.post(third["authorizations"][0], {"status": "deactivated"})
    assert gone.json()["status"] == "deactivated"
    assert (await client.post(third["finalize"].removesuffix("/finalize"), None)).json()["status"] == "invalid"


async def test_reads_with_a_bad_signature_show_nothing(acme: Acme) -> None:
    """A POST-as-GET's resource is read with its nonce spend (PostgreSQL); a request whose signature does not
    verify gets the error and none of the resource, and its nonce is spent."""
    client = await acme.account()
    _pem, order = await client.issue("sig.example.com")
    order_url = order["finalize"].removesuffix("/finalize")
    forger = new_key("ES256")
    for url in (order_url, order["authorizations"][0], order["certificate"]):
        nonce = await client.nonce()
        body = jws(forger, {"alg": "ES256", "nonce": nonce, "url": url, "kid": client.kid}, b"")
        refused = await client.http.post(url, content=orjson.dumps(body), headers=JOSE)
        assert "does not verify" in problem(refused, "malformed", 400)["detail"]
        assert b"sig.example.com" not in refused.content and b"BEGIN CERTIFICATE" not in refused.content
        replay = jws(client.key, {"alg": "ES256", "nonce": nonce, "url": url, "kid": client.kid}, b"")
        problem(await client.http.post(url, content=orjson.dumps(replay), headers=JOSE), "badNonce", 400)
    # Signed by the account, the same reads answer (and a missing one is a 404).
    assert (await client.post(order_url, None)).json()["status"] == "valid"
    assert "BEGIN CERTIFICATE" in (await client.post(order["certificate"], None)).text
    problem(await client.post(order["certificate"] + "x", None), "malformed", 404)
    problem(await client.post(order_url + "x", None), "malformed", 404)


async def test_concurrent_responses_validate_a_challenge_once(acme: Acme) -> None:
    """Responses to one challenge sent at once: one claims it and starts the validation, every answer is a 200
    with the challenge's state; a challenge made needless by another one's success is answered as it is."""
    client = await acme.account(directory=CHALLENGE_DIRECTORY)
    order = (await client.order("once.example.com")).json()
    authz = (await client.post(order["authorizations"][0], None)).json()
    http01 = next(c for c in authz["challenges"] if c["type"] == "http-01")
    others = [c for c in authz["challenges"] if c["type"] != "http-01"]
    twins = [client]
    for _ in range(3):  # the same account's key, its own nonces
        twin = AcmeClient(client.http, client.directory_url, key=client.key, kid=client.kid,
                          directory=client.directory)
        twins.append(twin)
    answers = await asyncio.gather(*(t.post(http01["url"], {}) for t in twins))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    assert {a.json()["status"] for a in answers} <= {"processing", "valid"}
    await acme.api.services.acme.settle()
    assert [c[0] for c in acme.validator.calls] == ["http-01"]
    # The authorization is valid now: its other challenges were set invalid, and a response shows just that.
    other = await client.post(others[0]["url"], {})
    assert other.status_code == 200 and other.json()["status"] == "invalid"
    assert [c[0] for c in acme.validator.calls] == ["http-01"]


async def test_rate_limits_answer_with_retry_after(acme: Acme) -> None:
    client = await acme.account()
    for name in ("one", "two", "three"):
        assert (await client.order(f"{name}.example.com")).status_code == 201
    limited = problem(await client.order("four.example.com"), "rateLimited", 429)
    assert "open orders" in limited["detail"]
    # Each accepted order audited once; the refused one wrote nothing (no order, no event).
    assert (await acme.api.audit_actions("acme_order")).count("acme_order_created") == 3
    acme.limiter.refuse.add("acme:identifier:dns:busy.example.com")
    other = await acme.account()
    response = await other.order("busy.example.com")
    problem(response, "rateLimited", 429)
    assert response.headers["Retry-After"] == "43"
    assert any(k.startswith("acme:orders:") for k in acme.limiter.keys)


# ---- revocation, ARI, replaces --------------------------------------------------------------------------------
async def test_revocation_by_account_and_by_certificate_key(acme: Acme) -> None:
    client = await acme.account()
    pem_a, _ = await client.issue("rev-a.example.com")
    key_b = new_key("ES256")
    pem_b, _ = await client.issue("rev-b.example.com", key=key_b)
    url = client.directory["revokeCert"]
    der_a = x509.load_pem_x509_certificate(pem_a.encode()).public_bytes(serialization.Encoding.DER)
    der_b = x509.load_pem_x509_certificate(pem_b.encode()).public_bytes(serialization.Encoding.DER)

    stranger = await acme.account()
    problem(await stranger.post(url, {"certificate": b64(der_a)}), "unauthorized", 403)
    problem(await client.post(url, {"certificate": b64(der_a), "reason": 8}), "badRevocationReason", 400)
    assert (await client.post(url, {"certificate": b64(der_a), "reason": 1})).status_code == 200
    problem(await client.post(url, {"certificate": b64(der_a)}), "alreadyRevoked", 400)
    # By the certificate's own key (jwk), with no account at all.
    problem(await stranger.post(url, {"certificate": b64(der_b)}, use_jwk=True), "unauthorized", 403)
    assert (await stranger.post(url, {"certificate": b64(der_b)}, use_jwk=True, key=key_b)).status_code == 200
    statuses = {c["common_name"]: c["status"] for c in await managed_acme_certificates(acme.api)}
    assert statuses == {"rev-a.example.com": "Revoked", "rev-b.example.com": "Revoked"}
    # The revocation service published it: the CA's CRL lists both serials.
    leaf = x509.load_pem_x509_certificate(pem_a.encode())
    await acme.api.services.status.settle()  # the CRL rebuild that follows a revocation
    crl_der = (await acme.api.anon.get("/.well-known/pki/crl/iss-local")).content
    crl = x509.load_der_x509_crl(crl_der)
    revoked = {r.serial_number for r in crl}
    assert {leaf.serial_number, x509.load_der_x509_certificate(der_b).serial_number} <= revoked
    # ARI tells the holder of a revoked certificate to renew now.
    window = (await acme.api.anon.get(f"{client.directory['renewalInfo']}/{ari_cert_id(leaf)}")).json()
    assert datetime.fromisoformat(window["suggestedWindow"]["end"]) <= acme.clock.now() + timedelta(seconds=1)


async def test_driver_pool_waits_reuses_and_drops_broken_connections(acme: Acme) -> None:
    """PostgreSQL: the ACME server's own driver connections (acme_repo.DriverPool) are bounded, handed to waiters
    in turn, decode JSON as the engine does, and a connection whose use was cancelled is closed, not reused.
    SQLite has no such pool: single statements run on SQLAlchemy connections."""
    service = acme.api.services.acme
    if service.ctx.db.dialect != "postgresql":
        async with service._single() as conn:
            assert not isinstance(conn, asyncpg.Connection)
        return
    pool = acme_repo.DriverPool(service.ctx.db, 1)
    seen: list[asyncpg.Connection] = []
    release = asyncio.Event()

    async def use(hold: bool) -> None:
        async with pool.connection() as raw:
            seen.append(raw)
            if hold:
                await release.wait()

    try:
        holder = asyncio.create_task(use(True))
        await asyncio.sleep(0.05)
        waiter = asyncio.create_task(use(False))
        await asyncio.sleep(0.05)
        assert len(seen) == 1 and not waiter.done()  # one connection at most: the second user waits for it
        release.set()
        await asyncio.wait_for(asyncio.gather(holder, waiter), 5)
        assert seen[1] is seen[0]  # handed over, not a second connection
        async with pool.connection() as raw:
            assert await raw.fetchval("SELECT '{\"a\": [1, 2]}'::jsonb") == {"a": [1, 2]}
            assert await raw.fetchval("SELECT $1::jsonb", orjson.dumps({"b": None}).decode()) == {"b": None}
        stuck = asyncio.create_task(_use_slowly(pool))
        await asyncio.sleep(0.1)
        stuck.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stuck
        assert seen[0].is_closed()  # cut short mid-statement: closed, never reused
        async with pool.connection() as fresh:
            assert fresh is not seen[0] and await fresh.fetchval("SELECT 1") == 1
    finally:
        await pool.aclose()


async def _use_slowly(pool: acme_repo.DriverPool) -> None:
    async with pool.connection() as raw:
        await raw.fetchval("SELECT pg_sleep(5)")


def test_ari_certificate_id_matches_rfc_9773() -> None:
    # RFC 9773 §4.1 example: AKI 69:88:5B:6B:87:46:40:41:E1:B3:7B:84:7B:A0:AE:2C:DE:01:C8:D4, serial 00:87:65:43:21.
    aki, serial = parse_ari_cert_id("aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE")
    assert aki.hex() == "69885b6b87464041e1b37b847ba0ae2cde01c8d4" and serial == 0x87654321
    assert serial_der_bytes(0x87654321) == bytes.fromhex("0087654321")
    assert serial_der_bytes(0x7F) == b"\x7f" and serial_der_bytes(0x80) == b"\x00\x80"


async def test_renewal_info_and_replaces(acme: Acme) -> None:
    client = await acme.account()
    pem, first = await client.issue("ari.example.com")
    leaf = x509.load_pem_x509_certificate(pem.encode())
    # The id, computed independently from the DER (asn1crypto): AKI keyIdentifier and the serial's content octets.
    parsed = asn1_x509.Certificate.load(leaf.public_bytes(serialization.Encoding.DER))
    aki = parsed.authority_key_identifier
    serial_octets = parsed["tbs_certificate"]["serial_number"].contents
    cert_id = f"{b64(aki)}.{b64(serial_octets)}"
    assert cert_id == ari_cert_id(leaf)
    info = await acme.api.anon.get(f"{client.directory['renewalInfo']}/{cert_id}")
    assert info.status_code == 200 and info.headers["Retry-After"] == str(6 * 3600)
    window = info.json()["suggestedWindow"]
    start, end = datetime.fromisoformat(window["start"]), datetime.fromisoformat(window["end"])
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert abs(start - (leaf.not_valid_after_utc - lifetime / 3)) < timedelta(seconds=2)
    assert start < end < leaf.not_valid_after_utc
    problem(await acme.api.anon.get(f"{client.directory['renewalInfo']}/{b64(b'nope')}.{b64(b'1')}"),
            "malformed", 404)
    problem(await acme.api.anon.get(f"{client.directory['renewalInfo']}/not-an-id"), "malformed", 400)
    # replaces (RFC 9773 §5): another account may not; the owner may, once.
    intruder = await acme.account()
    problem(await intruder.order("ari.example.com", replaces=cert_id), "unauthorized", 403)
    renewal = await client.order("ari.example.com", replaces=cert_id)
    assert renewal.status_code == 201 and renewal.json()["replaces"] == cert_id
    problem(await client.order("ari.example.com", replaces=cert_id), "alreadyReplaced", 409)
    problem(await client.order("other.example.com", replaces=cert_id), "malformed", 400)
    assert first["status"] == "valid"


async def test_disabled_server_answers_404(database_url: str, tmp_path: Path) -> None:
    api, lifespan = await start_api(make_settings(database_url, tmp_path / "data"))
    try:
        response = await api.anon.get("https://testserver/acme/directory")
        assert response.status_code == 404 and response.headers["content-type"] == PROBLEM
        assert hashlib.sha256(response.content).digest()  # a body is there
    finally:
        await stop_api(api, lifespan)


def test_bad_acme_settings_stop_the_server_with_their_name() -> None:
    from certctl.config import Settings, SettingsError

    for name, value in (("CERTCTL_ACME_SERVER_NONCE_TTL", "soon"), ("CERTCTL_ACME_SERVER_ENABLED", "maybe"),
                        ("CERTCTL_ACME_SERVER_EXTERNAL_URL", "https://acme.example.com/path"),
                        ("CERTCTL_ACME_SERVER_RATE_LIMIT_ORDERS_PER_HOUR", "-1")):
        with pytest.raises(SettingsError, match=name):
            Settings.from_env({name: value})


async def test_gc_expires_orders_and_forgets_spent_nonces(acme: Acme) -> None:
    client = await acme.account(directory=CHALLENGE_DIRECTORY)
    order = (await client.order("late.example.com")).json()
    order_url = order["finalize"].removesuffix("/finalize")
    acme.clock.advance(timedelta(hours=25))
    swept = await acme.api.services.acme.gc()
    assert swept == {"orders": 1, "nonces": 2, "revalidated": 0}  # both spent nonces are past their expiry
    client._nonce = None  # the last one handed out expired too
    body = (await client.post(order_url, None)).json()
    assert body["status"] == "invalid"
    authz = (await client.post(order["authorizations"][0], None)).json()
    assert authz["status"] == "expired"
    problem(await client.post(authz["challenges"][0]["url"], {}), "malformed", 400)  # too late to answer


async def test_two_replicas_share_nonces_and_spend_each_once(acme: Acme, database_url: str, tmp_path: Path) -> None:
    """A nonce from one replica is good on the other (same configuration key), and only once on either."""
    settings = make_settings(database_url, tmp_path / "replica", extra={
        "CERTCTL_ACME_SERVER_ENABLED": "true", "CERTCTL_ACME_SERVER_DEFAULT_PROFILE_ID": "p-acme"})
    other, lifespan = await start_api(settings)
    try:
        client = await acme.account()
        new_order = client.directory["newOrder"]
        body = orjson.dumps({"identifiers": [{"type": "dns", "value": "replica.example.com"}]})

        def signed(nonce: str) -> bytes:
            return orjson.dumps(jws(client.key, {"alg": "ES256", "kid": client.kid, "url": new_order,
                                                 "nonce": nonce}, body))

        from_other = (await other.anon.head(client.directory["newNonce"])).headers["Replay-Nonce"]
        assert (await acme.api.anon.post(new_order, content=signed(from_other), headers=JOSE)).status_code == 201
        problem(await other.anon.post(new_order, content=signed(from_other), headers=JOSE), "badNonce", 400)
        # The same request sent to both replicas at once: exactly one of them accepts it. (A new account
        # each time: the fixture allows an account three pending orders.)
        for _ in range(3):
            client = await acme.account()
            new_order = client.directory["newOrder"]
            raw = signed(await client.nonce())
            answers = await asyncio.gather(*(replica.anon.post(new_order, content=raw, headers=JOSE)
                                             for replica in (acme.api, other)))
            assert sorted(a.status_code for a in answers) == [201, 400]
    finally:
        await stop_api(other, lifespan)

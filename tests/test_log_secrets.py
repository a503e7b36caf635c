"""No secret reaches a log line: every secret-bearing path, driven through a real app at debug level.

The logging set-up is the server's own (`configure_logging("debug", "json")`); every line written while the test
runs is captured and searched for every secret value it handled: API keys (configured, generated, wrong ones),
the agent bootstrap token and agent keys (enrolment, rotation), issuer and target credentials (create, update,
a refused request), EAB HMAC keys (ACME issuer config; the ACME server's EAB admin and clients using a good and a
wrong key), private keys (server and agent key generation) and
PKCS#12 export passwords.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from certctl.agent.client import ServerClient
from certctl.agent.runner import AgentRunner
from certctl.scheduler import SchedulerSettings, build_scheduler
from certctl.services.issuance import run_due_issuing_jobs
from certctl.store import issuance_repo
from tests import factories
from tests.conftest import ADMIN_KEY, USER_KEY, make_settings, start_api, stop_api
from tests.test_acme_server import EAB_DIRECTORY, Acme, acme, b64, eab_jws, jwk_of  # noqa: F401 - fixture
from tests.test_agent_runner import _config

BOOTSTRAP = "bootstrap-token-for-tests"


def _forms(secret: str) -> list[str]:
    """The value and the encodings a careless line might use."""
    raw = secret.encode()
    return [secret, base64.b64encode(raw).decode(), raw.hex(), repr(secret)[1:-1]]


def _key_forms(pem: str) -> list[str]:
    """A private key as it could leak: the PEM (raw or JSON-escaped), its first body line (which holds the start of
    the private scalar; later lines of a PKCS#8 EC key repeat the public key, also in the certificate), and the
    private number in hex and base64."""
    key = serialization.load_pem_private_key(pem.encode(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
    secret = key.private_numbers().private_value if isinstance(key, ec.EllipticCurvePrivateKey) else \
        key.private_numbers().d
    raw = secret.to_bytes((secret.bit_length() + 7) // 8, "big")
    body = [line for line in pem.strip().splitlines() if "-----" not in line]
    return [pem.strip(), orjson.dumps(pem.strip()).decode()[1:-1], body[0], raw.hex(), f"{secret:x}",
            base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode().rstrip("=")]


async def test_no_secret_in_any_log_line(debug_log: io.StringIO, database_url: str, tmp_path: Path) -> None:
    secrets: dict[str, list[str]] = {
        "configured admin key": _forms(ADMIN_KEY), "configured user key": _forms(USER_KEY),
        "bootstrap token": _forms(BOOTSTRAP), "wrong key": _forms("wrong-key-Q7xv9c2mZp4"),
    }
    api, lifespan = await start_api(make_settings(database_url, tmp_path / "data", keygen_mode="agent"))
    wrong = httpx.AsyncClient(transport=httpx.ASGITransport(app=api.app), base_url="https://testserver",
                              headers={"Authorization": "Bearer wrong-key-Q7xv9c2mZp4"})
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=api.app, client=("127.0.0.1", 50006)),
                             base_url="https://testserver")
    try:
        assert (await wrong.get("/api/v1/certificates")).status_code == 401

        # Issuer credentials, EAB HMAC of an ACME issuer, a refused request carrying a secret, an update.
        eab_hmac = "c2VjcmV0LWVhYi1obWFjLWtleS1mb3ItYWNtZS1pc3N1ZXI"
        vault_token = "hvs.VAULT-token-8f3k2m9x"
        sectigo_password = "Sectigo-pass-4u8w2q"
        secrets.update({"EAB HMAC": _forms(eab_hmac), "Vault token": _forms(vault_token),
                        "Sectigo password": _forms(sectigo_password)})
        acme = await api.admin.post("/api/v1/issuers", json={
            "name": factories.unique("acme"), "type": "ACME", "config": {
                "directory_url": "https://acme.example.test/directory", "email": "ops@example.com",
                "eab_kid": "kid-1", "eab_hmac": eab_hmac}})
        assert acme.status_code == 201, acme.text
        assert eab_hmac not in acme.text
        vault = await api.admin.post("/api/v1/issuers", json={
            "name": factories.unique("vault"), "type": "VaultPKI", "config": {
                "addr": "https://vault.example.test", "mount": "pki", "role": "web", "token": vault_token}})
        assert vault.status_code == 201, vault.text
        refused = await api.admin.post("/api/v1/issuers", json={
            "name": factories.unique("sectigo"), "type": "Sectigo", "config": {"login": "ops",
                                                                                "password": sectigo_password}})
        assert refused.status_code == 400 and sectigo_password not in refused.text
        rotated_token = "hvs.ROTATED-token-2k9d7w"
        secrets["rotated Vault token"] = _forms(rotated_token)
        update = await api.admin.put(f"/api/v1/issuers/{vault.json()['id']}", json={
            "name": vault.json()["name"], "type": "VaultPKI", "config": {
                "addr": "https://vault.example.test", "mount": "pki", "role": "web", "token": rotated_token}})
        assert update.status_code == 200, update.text

        # The agent: bootstrap token, its own key, a rotated key; a key made on its host for an agent-keygen CSR.
        runner = AgentRunner(_config(tmp_path), client=ServerClient(http, lambda: None))
        await runner.run_once()  # enrol
        stored_key = runner.state.credential
        assert stored_key
        secrets["agent key"] = _forms(stored_key)
        target = await api.admin.post("/api/v1/targets", json={
            "name": factories.unique("jks"), "type": "JavaKeystore", "agent_id": runner.agent_id, "config": {
                "keystore_path": "/etc/app/keystore.p12", "keystore_password": "Keystore-pass-7h3j1"}})
        assert target.status_code == 201, target.text
        secrets["keystore password"] = _forms("Keystore-pass-7h3j1")
        cert = await factories.seed_certificate(api)
        await factories.seed_mapping(api, cert["id"], target.json()["id"])
        assert (await api.admin.post(f"/api/v1/certificates/{cert['id']}/renew")).status_code == 202
        await runner.run_once()  # answers the CSR with a key made here; the server issues at once
        [key_file] = [p for p in runner.keys.directory.rglob("*") if p.is_file() and "PRIVATE KEY" in p.read_text()]
        secrets["agent-made private key"] = _key_forms(key_file.read_text())
        rotated = await api.admin.post(f"/api/v1/agents/{runner.agent_id}/rotate-key")
        assert rotated.status_code == 200
        secrets["rotated agent key"] = _forms(rotated.json()["api_key"])

        # Server key generation (a profile asking for it): the key is made and sealed on the server.
        profile_id = await factories.seed_profile(api, key_generation_mode="server")
        server_cert = await factories.seed_certificate(api, certificate_profile_id=profile_id)
        assert (await api.admin.post(f"/api/v1/certificates/{server_cert['id']}/renew")).status_code == 202
        assert await run_due_issuing_jobs(api.services.issuance) == {"Completed": 1}
        async with api.services.ctx.db.read() as conn:
            version = await issuance_repo.version_of_job(conn, (await api.admin.get(
                "/api/v1/jobs", params={"certificate_id": server_cert["id"]})).json()["data"][0]["id"])
            assert version is not None
            sealed = await _sealed_key(conn, version["id"])
        server_key = api.services.ctx.sealer.open(sealed)["private_key_pem"]
        secrets["server-made private key"] = _key_forms(server_key)

        # Exports: PEM (never a key) and a PKCS#12 under a password.
        assert (await api.admin.get(f"/api/v1/certificates/{server_cert['id']}/export/pem")).status_code == 200
        p12 = await api.admin.post(f"/api/v1/certificates/{server_cert['id']}/export/pkcs12",
                                   json={"password": "P12-export-pass-5t6y7u"})
        assert p12.status_code == 200, p12.text
        secrets["PKCS#12 password"] = _forms("P12-export-pass-5t6y7u")
        # The scheduler's loops (job processor included) log each run at debug level.
        scheduler = build_scheduler(api.services, SchedulerSettings.from_env({}))
        for loop in ("job_processor", "agent_health"):
            assert (await scheduler.run_once(loop)).outcome == "ran"
    finally:
        await wrong.aclose()
        await http.aclose()
        await stop_api(api, lifespan)

    # A start with no configured key: the generated admin key is printed once (stdout), never logged.
    api, lifespan = await start_api(make_settings(database_url, tmp_path / "fresh", api_keys=()))
    try:
        generated = (tmp_path / "fresh" / "admin.key").read_text().strip()
        secrets["generated admin key"] = _forms(generated)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=api.app), base_url="https://testserver",
                                   headers={"Authorization": f"Bearer {generated}"})
        assert (await client.get("/api/v1/auth/check")).status_code == 200
        await client.aclose()
    finally:
        await stop_api(api, lifespan)

    text = debug_log.getvalue()
    lines = text.splitlines()
    access = [line for line in lines if '"msg":"request"' in line]
    assert len(access) >= 20, "the requests were logged"
    assert any(orjson.loads(line).get("msg") == "scheduler loop ran" for line in lines), "debug lines are written"
    assert all(orjson.loads(line) for line in lines), "every line is one JSON object"
    for what, forms in secrets.items():
        assert forms
        leaked = [form for form in forms if form in text]
        assert not leaked, f"{what} appears in the log"


async def _sealed_key(conn: object, version_id: str) -> str:
    from sqlalchemy import select

    from certctl.store.schema import certificate_private_keys

    stmt = select(certificate_private_keys.c.sealed_key).where(certificate_private_keys.c.version_id == version_id)
    value: str = (await conn.execute(stmt)).scalar_one()  # type: ignore[attr-defined]
    return value


async def test_no_acme_server_eab_key_in_the_log(debug_log: io.StringIO, acme: Acme) -> None:  # noqa: F811
    """The ACME server's EAB admin: the HMAC key shown once at creation, then used (and misused) by clients."""
    created = await acme.api.admin.post("/api/v1/acme/eab-keys", json={"profile_id": "p-eab", "description": "ci"})
    assert created.status_code == 201, created.text
    key = created.json()
    client = acme.client(directory=EAB_DIRECTORY)
    await client.start()
    url = client.directory["newAccount"]
    wrong = b64(b"wrong-secret-0123456789abcdef012")
    forged = eab_jws(key["key_id"], wrong, jwk_of(client.key), url)
    assert (await client.register(externalAccountBinding=forged)).status_code == 401
    good = eab_jws(key["key_id"], key["hmac_key"], jwk_of(client.key), url)
    assert (await client.register(externalAccountBinding=good)).status_code == 201
    await client.issue("eab.example.com")
    text = debug_log.getvalue()
    assert '"msg":"request"' in text
    for what, secret in (("EAB HMAC key", key["hmac_key"]), ("wrong EAB HMAC key", wrong)):
        assert not [form for form in _forms(secret) if form in text], f"{what} appears in the log"

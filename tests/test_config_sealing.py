"""Connector configs at rest: sealed in the database, redacted on the wire and in the audit trail,
merged back on update, and a start-up refusal when the key cannot open what is stored."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from certctl.domain.errors import UnavailableError, ValidationError
from certctl.domain.redaction import REDACTED
from certctl.pki.sealing import ConfigSealer
from certctl.services.connector_config import (
    ConfigRules,
    SealedConfigKeyError,
    config_problems,
    merge_back,
    sealed_columns,
    unseal,
)
from certctl.store import rows
from certctl.store.schema import audit_events, deployment_targets, issuers
from tests import factories
from tests.conftest import Api, make_settings, start_api, stop_api

HMAC = "eab-hmac-very-secret-value-1234567890"
# A closed loopback port: the issuer test contacts the ACME directory, which fails at once and offline.
ACME = {"directory_url": "https://127.0.0.1:9/directory", "email": "pki@example.com",
        "eab_kid": "kid-1", "eab_hmac": HMAC}


async def _raw(api: Api, table: Any, row_id: str) -> dict[str, Any]:
    async with api.services.ctx.db.read() as conn:
        row = await rows.get_row(conn, table, row_id)
    assert row is not None
    return dict(row)


async def _all_audit_text(api: Api) -> str:
    await api.services.audit_sink.flush()
    async with api.services.ctx.db.read() as conn:
        found = await rows.list_rows(conn, audit_events, order_by=(audit_events.c.id,))
    return repr([dict(r) for r in found])


# ---- pure functions ------------------------------------------------------------------------------
def test_sealed_columns_hold_no_plaintext_secret() -> None:
    sealer = ConfigSealer("k" * 40)
    columns = sealed_columns(sealer, ACME)
    assert columns["config"]["eab_hmac"] == REDACTED
    assert columns["config"]["directory_url"] == ACME["directory_url"]
    assert HMAC not in repr(columns)
    assert sealer.open(columns["encrypted_config"]) == ACME
    assert sealed_columns(sealer, {}) == {"config": {}, "encrypted_config": None}


def test_unseal_falls_back_to_plain_rows_and_reports_wrong_key() -> None:
    sealer = ConfigSealer("k" * 40)
    assert unseal(sealer, {"id": "i", "config": {"a": 1}, "encrypted_config": None}, "issuer") == {"a": 1}
    blob = ConfigSealer("other" * 10).seal({"a": 1})
    with pytest.raises(UnavailableError, match="issuer 'i' cannot be decrypted"):
        unseal(sealer, {"id": "i", "config": {}, "encrypted_config": blob}, "issuer")


def test_merge_back_keeps_stored_secrets_and_guards_endpoints() -> None:
    stored = {"url": "https://ca.example.com", "token": "s3cret", "nested": {"password": "p"}}
    merged = merge_back({"url": "https://ca.example.com", "token": REDACTED, "nested": {"password": REDACTED}},
                        stored)
    assert merged == stored
    # A placeholder with nothing stored behind it is dropped, never stored as "********".
    assert merge_back({"token": REDACTED}, {}) == {}
    # Sending the stored token to a new server needs the token re-entered.
    with pytest.raises(ValidationError, match="url"):
        merge_back({"url": "https://evil.example.net", "token": REDACTED}, stored)
    assert merge_back({"url": "https://new.example.com", "token": "typed"}, stored)["token"] == "typed"


def test_config_problems_name_keys_not_values() -> None:
    rules = ConfigRules(required=(("ca_url", "url"), "role"), urls={"ca_url": ("https",)},
                        emails=("email",), ports=("port",), together=(("a", "b"),))
    problems = config_problems(rules, {"ca_url": "http://x", "email": "nope", "port": 70000, "a": "1",
                                       "reload_command": "nginx -s reload; rm -rf /"})
    text = "; ".join(problems)
    assert "role is required" in text
    assert "ca_url must be an https:// URL" in text
    assert "email must be an e-mail address" in text
    assert "port must be a TCP port" in text
    assert "a and b must be set together" in text
    assert "reload_command" in text and "rm -rf" not in text
    assert config_problems(rules, {"role": "r"}) == ["ca_url (or url) is required"]


# ---- through the API -----------------------------------------------------------------------------
async def test_issuer_secret_is_sealed_redacted_and_never_audited(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    created = await factories.issuer(api.admin, type="ACME", config=ACME)
    assert created["config"]["eab_hmac"] == REDACTED
    assert created["config"]["email"] == "pki@example.com"

    raw = await _raw(api, issuers, created["id"])
    assert HMAC not in repr(raw["config"]) and HMAC not in raw["encrypted_config"]
    assert raw["config"]["eab_hmac"] == REDACTED
    assert api.services.ctx.sealer.open(raw["encrypted_config"]) == ACME

    for response in (
        await api.admin.get(f"/api/v1/issuers/{created['id']}"),
        await api.admin.get("/api/v1/issuers"),
        await api.admin.put(f"/api/v1/issuers/{created['id']}", json={"config": {**ACME, "eab_hmac": REDACTED}}),
    ):
        assert response.status_code == 200, response.text
        assert HMAC not in response.text and "encrypted_config" not in response.text
    tested = await api.admin.post(f"/api/v1/issuers/{created['id']}/test")  # the config opened; the CA is down
    assert tested.status_code == 400 and "ACME server unreachable" in tested.text and HMAC not in tested.text

    assert HMAC not in await _all_audit_text(api)
    assert all(HMAC not in record.getMessage() and HMAC not in repr(record.__dict__) for record in caplog.records)


async def test_merge_back_on_update(api: Api) -> None:
    created = await factories.issuer(api.admin, type="ACME", config=ACME)
    changed = await api.admin.put(
        f"/api/v1/issuers/{created['id']}",
        json={"config": {**ACME, "email": "ops@example.com", "eab_hmac": REDACTED}},
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["config"]["email"] == "ops@example.com"
    stored = api.services.ctx.sealer.open((await _raw(api, issuers, created["id"]))["encrypted_config"])
    assert stored == {**ACME, "email": "ops@example.com"}

    # Replacing the secret works too.
    await api.admin.put(f"/api/v1/issuers/{created['id']}", json={"config": {**ACME, "eab_hmac": "new-hmac"}})
    stored = api.services.ctx.sealer.open((await _raw(api, issuers, created["id"]))["encrypted_config"])
    assert stored["eab_hmac"] == "new-hmac"

    # Moving the directory while keeping the stored secret is refused and changes nothing.
    moved = await api.admin.put(
        f"/api/v1/issuers/{created['id']}",
        json={"config": {**ACME, "directory_url": "https://elsewhere.example.net/dir", "eab_hmac": REDACTED}},
    )
    assert moved.status_code == 400 and "directory_url" in moved.json()["message"]
    stored = api.services.ctx.sealer.open((await _raw(api, issuers, created["id"]))["encrypted_config"])
    assert stored["directory_url"] == ACME["directory_url"]


async def test_placeholder_on_create_is_not_a_secret(api: Api) -> None:
    response = await api.admin.post("/api/v1/issuers", json={
        "name": "vault", "type": "VaultPKI",
        "config": {"addr": "https://vault.example.com", "mount": "pki", "role": "web", "token": REDACTED},
    })
    assert response.status_code == 400 and "token is required" in response.json()["message"]


async def test_target_secret_is_sealed(api: Api) -> None:
    config = {"host": "bigip.example.com", "username": "admin", "password": "f5-Pa55word!", "ssl_profile": "cs"}
    created = await factories.target(api.admin, type="F5", config=config)
    assert created["config"]["password"] == REDACTED and created["config"]["host"] == "bigip.example.com"
    raw = await _raw(api, deployment_targets, created["id"])
    assert "f5-Pa55word!" not in repr(raw)
    assert api.services.ctx.sealer.open(raw["encrypted_config"]) == config
    updated = await api.admin.put(f"/api/v1/targets/{created['id']}",
                                  json={"config": {**config, "password": REDACTED, "port": 8443}})
    assert updated.status_code == 200, updated.text
    raw = await _raw(api, deployment_targets, created["id"])
    assert api.services.ctx.sealer.open(raw["encrypted_config"]) == {**config, "port": 8443}
    assert "f5-Pa55word!" not in await _all_audit_text(api)


# ---- start-up key check --------------------------------------------------------------------------
async def _seal_one_issuer(settings: Any) -> None:
    running, lifespan = await start_api(settings)
    try:
        await factories.issuer(running.admin, type="ACME", config=ACME)
    finally:
        await stop_api(running, lifespan)


async def test_wrong_key_refuses_to_start(database_url: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    await _seal_one_issuer(make_settings(database_url, data, config_encryption_key="a" * 40))

    with pytest.raises(SealedConfigKeyError) as refused:
        await start_api(make_settings(database_url, data, config_encryption_key="b" * 40))
    message = str(refused.value)
    assert "refusing to start" in message and "CERTCTL_CONFIG_ENCRYPTION_KEY" in message and "issuer '" in message

    # The right key starts, and the config opens.
    running, lifespan = await start_api(make_settings(database_url, data, config_encryption_key="a" * 40))
    try:
        listed = (await running.admin.get("/api/v1/issuers")).json()["data"]
        acme = next(i for i in listed if i["type"] == "ACME")
        tested = await running.admin.post(f"/api/v1/issuers/{acme['id']}/test")  # a wrong key would be a 503
        assert tested.status_code == 400 and "ACME server unreachable" in tested.json()["message"]
    finally:
        await stop_api(running, lifespan)


async def test_lost_key_file_refuses_to_start(database_url: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    await _seal_one_issuer(make_settings(database_url, data, config_encryption_key=None))
    key_file = data / "config.key"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600

    # Same key file: starts again.
    running, lifespan = await start_api(make_settings(database_url, data, config_encryption_key=None))
    await stop_api(running, lifespan)

    key_file.unlink()
    with pytest.raises(SealedConfigKeyError, match=r"config\.key"):
        await start_api(make_settings(database_url, data, config_encryption_key=None))

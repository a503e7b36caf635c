"""JavaKeystore target against the real `keytool` of the installed JRE: PKCS12 and JKS keystores, the key entry
replaced in a copy swapped in atomically, idempotency by SHA-256, rollback on a failing reload or verification,
and the store password kept out of results, argv and logs."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from certctl.agent.deploy import DeployEngine
from certctl.connectors.targets.registry import create_connector
from certctl.connectors.tlsprobe import ProbeResult
from certctl.domain.errors import ValidationError
from tests.servers import IssuedCert, ThrowawayCA

PASSWORD = "s3cret-Store-pass-7781"


@pytest.fixture(scope="module")
def ca() -> ThrowawayCA:
    return ThrowawayCA("keystore tests")


def _connector(tmp_path: Path, engine: DeployEngine | None = None, **config: Any) -> Any:
    base = {"keystore_path": str(tmp_path / "server.p12"), "keystore_password": PASSWORD, "create_keystore": True}
    return create_connector("JavaKeystore", {**base, **config}, runner=engine or DeployEngine(tmp_path / "state"))


def _list(path: Path, store_type: str = "PKCS12", password: str = PASSWORD) -> str:
    return subprocess.run(["keytool", "-J-Duser.language=en", "-list", "-v", "-keystore", str(path), "-storetype",
                           store_type, "-storepass", password], capture_output=True, text=True, check=True).stdout


def _genkeypair(path: Path, alias: str, store_type: str) -> None:
    subprocess.run(["keytool", "-genkeypair", "-alias", alias, "-keyalg", "EC", "-dname", f"CN={alias}",
                    "-keystore", str(path), "-storetype", store_type, "-storepass", PASSWORD, "-keypass", PASSWORD],
                   capture_output=True, check=True)


def _fingerprints(listing: str, alias: str) -> list[str]:
    """SHA-256 of each certificate in the chain of `alias`, lowercase hex."""
    block = listing.split(f"Alias name: {alias}\n", 1)[1].split("Alias name:", 1)[0]
    assert "Entry type: PrivateKeyEntry" in block
    return [m.replace(":", "").lower() for m in re.findall(r"SHA256: ([0-9A-F:]{95})", block)]


def _no_secret(result: Any, caplog: pytest.LogCaptureFixture) -> None:
    text = json.dumps(result.to_dict())
    assert PASSWORD not in text and PASSWORD not in caplog.text
    assert "PRIVATE KEY" not in text


def test_keytool_is_installed() -> None:
    assert subprocess.run(["keytool", "-help"], capture_output=True).returncode == 0


def test_config_defaults_and_password_rules() -> None:
    connector = create_connector("javakeystore", {"keystore_path": "/etc/app/ks.p12", "keystore_password": PASSWORD},
                                 runner=DeployEngine("/nonexistent"))
    assert connector.config["alias"] == "server" and connector.config["keystore_type"] == "PKCS12"
    assert connector.config["create_keystore"] is False and connector.config["backup_retention"] == 3
    with pytest.raises(ValidationError) as err:
        create_connector("JavaKeystore", {"keystore_path": "/k.jks", "keystore_password": PASSWORD,
                                          "keystore_type": "BKS"}, runner=DeployEngine("/nonexistent"))
    assert "keystore_type" in err.value.message
    with pytest.raises(ValidationError) as err:
        create_connector("JavaKeystore", {"keystore_path": "/k.jks", "keystore_password": "abc12"},
                         runner=DeployEngine("/nonexistent"))
    assert "keystore_password" in err.value.message and "abc12" not in err.value.message


async def test_creates_pkcs12_then_unchanged(tmp_path: Path, ca: ThrowawayCA,
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    cert = ca.issue("app.example")
    connector = _connector(tmp_path)
    result = await connector.deploy(cert.request())
    assert result.success and result.status == "deployed", result.message
    path = tmp_path / "server.p12"
    assert os.stat(path).st_mode & 0o777 == 0o600
    chain = _fingerprints(_list(path), "server")
    assert chain[0] == cert.fingerprint and len(chain) == 2  # leaf + issuing CA
    _no_secret(result, caplog)
    before = path.read_bytes()
    inode = os.stat(path).st_ino
    again = await connector.deploy(cert.request())
    assert again.success and again.status == "unchanged" and not again.changed
    assert path.read_bytes() == before and os.stat(path).st_ino == inode
    assert not [p for p in os.listdir(tmp_path) if ".certctl-" in p]  # no backup: nothing was written


async def test_replaces_entry_in_existing_jks_keeping_other_entries(tmp_path: Path, ca: ThrowawayCA) -> None:
    path = tmp_path / "server.jks"
    _genkeypair(path, "other", "JKS")
    old, new = ca.issue("old.example"), ca.issue("new.example")
    connector = _connector(tmp_path, keystore_path=str(path), keystore_type="JKS", alias="tomcat",
                           create_keystore=False)
    assert (await connector.deploy(old.request())).status == "deployed"
    first = path.read_bytes()
    result = await connector.deploy(new.request())
    assert result.success and result.status == "deployed", result.message
    listing = _list(path, "JKS")
    assert _fingerprints(listing, "tomcat")[0] == new.fingerprint
    assert "Alias name: other" in listing and "Your keystore contains 2 entries" in listing
    backups = [p for p in os.listdir(tmp_path) if p.startswith("server.jks.certctl-bak.")]
    assert len(backups) == 2 and first in {(tmp_path / b).read_bytes() for b in backups}


async def test_failing_reload_leaves_the_old_keystore(tmp_path: Path, ca: ThrowawayCA,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    old, new = ca.issue("old.example"), ca.issue("new.example")
    path = tmp_path / "server.p12"
    assert (await _connector(tmp_path).deploy(old.request())).success
    before = path.read_bytes()
    result = await _connector(tmp_path, reload_command=_fails_once(tmp_path)).deploy(new.request())
    assert not result.success and result.status == "rolled_back" and result.rolled_back
    assert path.read_bytes() == before
    assert _fingerprints(_list(path), "server")[0] == old.fingerprint
    _no_secret(result, caplog)


async def test_verification_mismatch_rolls_back(tmp_path: Path, ca: ThrowawayCA) -> None:
    old, new = ca.issue("old.example"), ca.issue("new.example")

    async def prober(host: str, port: int, *, server_name: str | None = None, timeout: float = 5) -> ProbeResult:
        now = datetime.now(UTC)
        return ProbeResult(host, port, old.fingerprint, (), "CN=old", "CN=ca", "1", now, now, "TLSv1.3", "x", 1.0)

    engine = DeployEngine(tmp_path / "state", prober=prober, sleep=_no_sleep)
    assert (await _connector(tmp_path, engine).deploy(old.request())).success
    result = await _connector(tmp_path, engine, verify_endpoint="127.0.0.1:8443",
                              verify_attempts=2).deploy(new.request())
    assert result.status == "rolled_back" and result.verification.status == "failed"
    assert _fingerprints(_list(tmp_path / "server.p12"), "server")[0] == old.fingerprint


def _fails_once(tmp_path: Path) -> list[str]:
    """A reload that fails the first time (the deploy) and succeeds the second (the rollback's reload)."""
    marker = tmp_path / "reloaded-once"
    return ["sh", "-c", f"if [ -e {marker} ]; then exit 0; fi; touch {marker}; exit 1"]


async def _no_sleep(_: float) -> None:
    return None


async def test_wrong_password_and_missing_keystore_fail_without_writing(
        tmp_path: Path, ca: ThrowawayCA, caplog: pytest.LogCaptureFixture) -> None:
    cert: IssuedCert = ca.issue("app.example")
    path = tmp_path / "server.p12"
    missing = await _connector(tmp_path, create_keystore=False).deploy(cert.request())
    assert missing.status == "failed" and "create_keystore" in missing.message and not path.exists()
    assert (await _connector(tmp_path).deploy(cert.request())).success
    before = path.read_bytes()
    wrong = "Wrong-password-4242"
    result = await _connector(tmp_path, keystore_password=wrong).deploy(ca.issue("x.example").request())
    assert result.status == "failed" and "password" in result.message.lower()
    assert wrong not in result.message and path.read_bytes() == before
    dry = await _connector(tmp_path, keystore_password=wrong).dry_run(cert.request())
    assert not dry.success and wrong not in json.dumps(dry.to_dict())
    assert (await _connector(tmp_path).dry_run(cert.request())).success

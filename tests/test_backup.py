"""`certctl backup create | verify | restore`: the restore drill on both back ends, and what a bad archive does.

The drill: data made through the API (teams, certificates issued by the local CA, a revocation on the CRL),
`certctl backup create`, the database and data directory destroyed, `certctl backup verify` and
`certctl backup restore`, then a real `certctl server` process serves the same inventory and the same CRL.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic import command
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from sqlalchemy import create_engine, text

from certctl.pki import backup_archive
from certctl.pki.backup_archive import DamagedArchive, DecryptingReader, EncryptingWriter, TruncatedArchive
from certctl.services import backup
from certctl.services.issuance import run_due_issuing_jobs
from certctl.store import migrate
from tests import factories
from tests.conftest import ADMIN_KEY, Api, _pg_admin, make_settings, start_api, stop_api
from tests.servers import free_port

CERTCTL = Path(sys.executable).parent / "certctl"
PASSPHRASE = "drill-passphrase-0123456789"
CONFIG_KEY = "x" * 40  # make_settings' CERTCTL_CONFIG_ENCRYPTION_KEY


def _env(data_dir: Path, database_url: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTCTL_")}
    env.update({"CERTCTL_DATA_DIR": str(data_dir), "CERTCTL_BACKUP_PASSPHRASE": PASSPHRASE,
                "CERTCTL_API_KEYS_NAMED": f"alice:{ADMIN_KEY}:admin", "CERTCTL_LOG_LEVEL": "warning"})
    if database_url and database_url.startswith("postgresql"):
        env["CERTCTL_DATABASE_URL"] = database_url
    env.update(extra)
    return env


def certctl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CERTCTL), *args], env=env, capture_output=True, text=True, timeout=120, check=False)


# ---- the drill --------------------------------------------------------------------------------------------
async def _make_inventory(api: Api) -> dict[str, Any]:
    """Two teams, three certificates issued by the local CA through the API, one of them revoked."""
    team = await factories.team(api.admin, name="platform")
    await factories.team(api.admin, name="payments")
    issued = []
    for name in ("www", "api", "mail"):
        cert = await factories.certificate(api.admin, name=name, team_id=team["id"])
        response = await api.admin.post(f"/api/v1/certificates/{cert['id']}/renew")
        assert response.status_code == 202, response.text
        issued.append(cert["id"])
    await run_due_issuing_jobs(api.services.issuance)
    versions = {}
    for cert_id in issued:
        response = await api.admin.get(f"/api/v1/certificates/{cert_id}/versions")
        [version] = response.json()["data"]
        versions[cert_id] = version
    revoked = versions[issued[1]]
    response = await api.admin.post(f"/api/v1/certificates/{issued[1]}/revoke", json={"reason": "keyCompromise"})
    assert response.status_code == 200, response.text
    leaf = x509.load_pem_x509_certificate(revoked["pem_chain"].encode())
    chain = revoked["pem_chain"].split("-----END CERTIFICATE-----")
    ca_cert = x509.load_pem_x509_certificate((chain[1] + "-----END CERTIFICATE-----").strip().encode())
    async with api.services.ctx.db.read() as conn:
        ca_id = (await conn.execute(text("SELECT id FROM intermediate_cas WHERE owning_issuer_id = 'iss-local'"))
                 ).scalar_one()
    for _ in range(50):  # the CRL is rebuilt in the background right after the revocation commits
        crl = x509.load_der_x509_crl((await api.anon.get(f"/.well-known/pki/crl/{ca_id}")).content)
        if crl.get_revoked_certificate_by_serial_number(leaf.serial_number) is not None:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the revoked serial never reached the CRL")
    # An OCSP answer makes the CA's delegated responder (its key goes to the key directory, so into the archive).
    request = ocsp.OCSPRequestBuilder().add_certificate(leaf, ca_cert, hashes.SHA1()).build()
    answer = await api.anon.post(f"/.well-known/pki/ocsp/{ca_id}", content=request.public_bytes(
        serialization.Encoding.DER), headers={"Content-Type": "application/ocsp-request"})
    assert ocsp.load_der_ocsp_response(answer.content).certificate_status == ocsp.OCSPCertStatus.REVOKED
    await api.services.audit_sink.flush()
    return {"ca_id": ca_id, "ca_cert": ca_cert, "revoked_serial": leaf.serial_number,
            "inventory": await _inventory(api.admin)}


async def _inventory(client: httpx.AsyncClient) -> dict[str, Any]:
    certs = (await client.get("/api/v1/certificates", params={"per_page": 500})).json()["data"]
    teams = (await client.get("/api/v1/teams", params={"per_page": 500})).json()["data"]
    return {"certificates": sorted((c["id"], c["status"], c["common_name"]) for c in certs),
            "teams": sorted((t["id"], t["name"]) for t in teams)}


class RealServer:
    """`certctl server` as a child process on a free port; stopped by its pid."""

    def __init__(self, env: dict[str, str], data_dir: Path) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.log = data_dir.parent / f"server-{self.port}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen([str(CERTCTL), "server", "--port", str(self.port)], env=env,
                                         stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"server exited: {self.log.read_text()[-3000:]}"
            if (data_dir / "tls" / "server.crt").exists():
                try:
                    with self.client() as client:
                        if client.get("/health").status_code == 200:
                            return
                except httpx.TransportError:
                    pass
            time.sleep(0.2)
        raise AssertionError(f"server did not start: {self.log.read_text()[-3000:]}")

    def client(self) -> httpx.Client:
        ctx = ssl.create_default_context(cafile=str(self.data_dir / "tls" / "server.crt"))
        return httpx.Client(base_url=f"https://127.0.0.1:{self.port}", verify=ctx, timeout=20,
                            headers={"Authorization": f"Bearer {ADMIN_KEY}"})

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)


@pytest.mark.slow
async def test_restore_drill(backend: str, database_url: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    if backend == "sqlite":  # the default layout: the database inside the data directory
        data_dir.mkdir()
        shutil.move(database_url.removeprefix("sqlite:///"), data_dir / "certctl.db")
        database_url = f"sqlite:///{data_dir / 'certctl.db'}"
    # SQLite: the generated config.key travels in the archive; PostgreSQL: the key is in the environment.
    config_key = None if backend == "sqlite" else CONFIG_KEY
    settings = make_settings(database_url, data_dir, keygen_mode="server", config_encryption_key=config_key)
    api, lifespan = await start_api(settings)
    try:
        before = await _make_inventory(api)
        env = _env(data_dir, database_url, **({"CERTCTL_CONFIG_ENCRYPTION_KEY": CONFIG_KEY} if config_key else {}))
        archive = tmp_path / "backups" / "certctl.cbk"
        created = await asyncio.to_thread(certctl, env, "backup", "create", "-o", str(archive))
        assert created.returncode == 0, created.stderr
    finally:
        await stop_api(api, lifespan)
    assert archive.stat().st_mode & 0o777 == 0o600
    assert b"BEGIN" not in archive.read_bytes() and b"managed_certificates" not in archive.read_bytes()

    # Disaster: the database and the whole data directory are gone.
    if backend == "postgresql":
        name = database_url.rsplit("/", 1)[1]
        await _pg_admin(f'DROP DATABASE "{name}" WITH (FORCE)')
        await _pg_admin(f'CREATE DATABASE "{name}"')
    shutil.rmtree(data_dir)

    verified = await asyncio.to_thread(certctl, env, "backup", "verify", str(archive))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "row counts match the manifest" in verified.stdout
    assert "2 archived CA/OCSP keys load and match their certificates" in verified.stdout, verified.stdout
    assert "sealed connector configs open" in verified.stdout
    restored = await asyncio.to_thread(certctl, env, "backup", "restore", str(archive))
    assert restored.returncode == 0, restored.stderr
    assert f"database at revision {migrate.head_revision()}" in restored.stdout
    assert (data_dir / "keys").stat().st_mode & 0o777 == 0o700
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in (data_dir / "keys").iterdir())

    server = await asyncio.to_thread(RealServer, env, data_dir)
    try:
        with pytest.raises(backup.RestoreRefused, match="other sessions are connected"):  # the server has it open
            await backup.restore(settings, archive, PASSPHRASE, force=True)
        with server.client() as client:
            after_certs = client.get("/api/v1/certificates", params={"per_page": 500}).json()["data"]
            after_teams = client.get("/api/v1/teams", params={"per_page": 500}).json()["data"]
            crl_response = client.get(f"/.well-known/pki/crl/{before['ca_id']}")
            audit = client.get("/api/v1/audit", params={"per_page": 500}).json()["data"]
    finally:
        await asyncio.to_thread(server.stop)
    assert sorted((c["id"], c["status"], c["common_name"]) for c in after_certs) == before["inventory"]["certificates"]
    assert sorted((t["id"], t["name"]) for t in after_teams) == before["inventory"]["teams"]
    assert crl_response.status_code == 200
    crl = x509.load_der_x509_crl(crl_response.content)
    assert crl.get_revoked_certificate_by_serial_number(before["revoked_serial"]) is not None
    assert crl.issuer == before["ca_cert"].subject
    assert crl.is_signature_valid(before["ca_cert"].public_key())
    actions = [event["action"] for event in audit]
    assert "backup_restored" in actions and "certificate_revoked" in actions


# ---- a small SQLite backup for the negative tests -----------------------------------------------------------
@pytest.fixture
def small(tmp_path: Path, sqlite_template: Path) -> dict[str, Any]:
    """A data directory (database, a CA key, config.key) and its backup, made with cheap scrypt settings."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    shutil.copy(sqlite_template, data_dir / "certctl.db")
    (data_dir / "keys").mkdir(mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    (data_dir / "keys" / "ca.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (data_dir / "config.key").write_text("k" * 48 + "\n")
    settings = make_settings(f"sqlite:///{data_dir / 'certctl.db'}", data_dir, config_encryption_key=None)
    archive = tmp_path / "small.cbk"
    result = asyncio.run(backup.create(settings, archive, PASSPHRASE, log_n=14))
    return {"settings": settings, "archive": archive, "data_dir": data_dir, "manifest": result.manifest}


def test_manifest_describes_the_snapshot_and_every_member(small: dict[str, Any]) -> None:
    manifest = small["manifest"]
    assert manifest["format"] == "certctl-backup" and manifest["format_version"] == 1
    assert manifest["backend"] == "sqlite" and manifest["schema_revision"] == migrate.head_revision()
    tables = manifest["database"]["tables"]
    assert tables["alembic_version"] == 1 and "managed_certificates" in tables
    assert manifest["key_references"] == {"in_archive": [], "not_in_archive": [], "missing": []}  # no CA rows yet
    members = manifest["members"]
    assert set(members) == {"database/certctl.db.gz", "data/keys/ca.key", "data/config.key"}
    key_sha = hashlib.sha256((small["data_dir"] / "keys" / "ca.key").read_bytes()).hexdigest()
    assert members["data/keys/ca.key"] == {"sha256": key_sha, "size": 241, "mode": 0o600,
                                           "restore_to": "data:keys/ca.key"}
    assert small["archive"].stat().st_mode & 0o777 == 0o600
    with pytest.raises(backup.BackupError, match="already exists"):
        asyncio.run(backup.create(small["settings"], small["archive"], PASSPHRASE, log_n=14))


def test_cli_wrong_passphrase_tampered_truncated_and_no_passphrase(small: dict[str, Any], tmp_path: Path) -> None:
    archive: Path = small["archive"]
    env = _env(small["data_dir"], None)
    data = archive.read_bytes()

    wrong = certctl({**env, "CERTCTL_BACKUP_PASSPHRASE": "not-the-passphrase"}, "backup", "verify", str(archive))
    assert wrong.returncode == 4 and "wrong passphrase" in wrong.stderr

    tampered = tmp_path / "tampered.cbk"
    tampered.write_bytes(data[:200] + bytes([data[200] ^ 0x01]) + data[201:])
    result = certctl(env, "backup", "verify", str(tampered))
    assert result.returncode == 1 and "chunk 0 fails authentication" in result.stderr, result.stderr

    truncated = tmp_path / "truncated.cbk"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(TruncatedArchive, match="truncated inside chunk"):
        asyncio.run(backup.restore(small["settings"], truncated, PASSPHRASE))

    passphrase_file = tmp_path / "pass.txt"
    passphrase_file.write_text(PASSPHRASE + "\n")
    no_env = {k: v for k, v in env.items() if k != "CERTCTL_BACKUP_PASSPHRASE"}
    ok = certctl(no_env, "backup", "verify", "--passphrase-file", str(passphrase_file), str(archive))
    assert ok.returncode == 0 and "verified" in ok.stdout, ok.stdout + ok.stderr
    assert "skipped  no CA keys in the archive" in ok.stdout
    missing = subprocess.run([str(CERTCTL), "backup", "verify", str(archive)], env=no_env, capture_output=True,
                             text=True, timeout=60, check=False, stdin=subprocess.DEVNULL)
    assert missing.returncode == 2 and "no backup passphrase" in missing.stderr


def test_archive_chunks_are_authenticated_in_order_to_the_end() -> None:
    payload = os.urandom(5 * 4096 + 100)
    sink = io.BytesIO()
    writer = EncryptingWriter(sink, PASSPHRASE, log_n=14, chunk_size=4096)
    writer.write(payload)
    writer.close()
    blob = sink.getvalue()
    reader = DecryptingReader(io.BytesIO(blob), PASSPHRASE)
    assert reader.read() == payload
    reader.finish()

    header, body = blob[: backup_archive.HEADER_SIZE], blob[backup_archive.HEADER_SIZE:]
    chunks = []
    while body:
        length = int.from_bytes(body[:4], "big") + 4
        chunks.append(body[:length])
        body = body[length:]
    assert len(chunks) == 6

    def read_all(raw: bytes) -> bytes:
        r = DecryptingReader(io.BytesIO(raw), PASSPHRASE)
        out = r.read()
        r.finish()
        return out

    with pytest.raises(DamagedArchive, match="chunk 1 fails authentication"):  # two chunks swapped
        read_all(header + chunks[0] + chunks[2] + chunks[1] + b"".join(chunks[3:]))
    with pytest.raises(TruncatedArchive, match="without its end mark"):  # cut exactly at a chunk boundary
        read_all(header + b"".join(chunks[:-1]))
    with pytest.raises(DamagedArchive, match="follows the archive's end mark"):
        read_all(blob + b"\x00")
    with pytest.raises(DamagedArchive, match="fails authentication"):  # the last chunk passed off as a middle one
        read_all(header + chunks[-1])
    other = io.BytesIO()
    w2 = EncryptingWriter(other, PASSPHRASE, log_n=14, chunk_size=4096)
    w2.write(payload)
    w2.close()
    with pytest.raises(DamagedArchive, match="chunk 0 fails"):  # a chunk moved from another archive
        read_all(header + other.getvalue()[backup_archive.HEADER_SIZE:])
    with pytest.raises(backup_archive.WrongPassphrase):
        DecryptingReader(io.BytesIO(blob), PASSPHRASE + "x")
    with pytest.raises(backup_archive.ArchiveError, match="at least 12"):
        EncryptingWriter(io.BytesIO(), "short")


def _repack(archive: Path, out: Path, change: Callable[[dict[str, Any], Path], None]) -> None:
    """Unpack with the real reader, let `change` edit the manifest/files, encrypt again with the passphrase."""
    with backup.unpack(archive, PASSPHRASE) as unpacked:
        manifest = unpacked.manifest
        change(manifest, unpacked.root)
        with out.open("wb") as sink:
            writer = EncryptingWriter(sink, PASSPHRASE, log_n=14)
            with tarfile.open(fileobj=writer, mode="w|") as tar:  # type: ignore[call-overload]
                body = json.dumps(manifest).encode()
                info = tarfile.TarInfo("manifest.json")
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))
                for name in manifest["members"]:
                    path = unpacked.root / name
                    info = tarfile.TarInfo(name)
                    info.size = path.stat().st_size
                    with path.open("rb") as handle:
                        tar.addfile(info, handle)
            writer.close()


def test_altered_content_newer_schema_and_other_backend_are_refused(small: dict[str, Any], tmp_path: Path) -> None:
    settings = small["settings"]

    def bad_checksum(manifest: dict[str, Any], _root: Path) -> None:
        manifest["members"]["data/config.key"]["sha256"] = "0" * 64

    _repack(small["archive"], tmp_path / "sum.cbk", bad_checksum)
    with pytest.raises(backup.BackupError, match=r"checksum mismatch for 'data/config\.key'"):
        asyncio.run(backup.verify(settings, tmp_path / "sum.cbk", PASSPHRASE))

    def newer(manifest: dict[str, Any], _root: Path) -> None:
        manifest["schema_revision"] = manifest["database"]["schema_revision"] = "9999_from_the_future"

    _repack(small["archive"], tmp_path / "newer.cbk", newer)
    fresh = make_settings(f"sqlite:///{tmp_path / 'fresh' / 'certctl.db'}", tmp_path / "fresh",
                          config_encryption_key=None)
    with pytest.raises(backup.BackupError, match="9999_from_the_future is newer than this certctl"):
        asyncio.run(backup.restore(fresh, tmp_path / "newer.cbk", PASSPHRASE))
    assert not (tmp_path / "fresh" / "certctl.db").exists(), "nothing written"

    def postgres(manifest: dict[str, Any], _root: Path) -> None:
        manifest["backend"] = "postgresql"

    _repack(small["archive"], tmp_path / "pg.cbk", postgres)
    with pytest.raises(backup.BackupError, match="cross back-end restore is not supported"):
        asyncio.run(backup.restore(fresh, tmp_path / "pg.cbk", PASSPHRASE))


def test_verify_fails_when_the_archived_ca_key_does_not_match(tmp_path: Path, sqlite_template: Path) -> None:
    data_dir = tmp_path / "data"
    settings = make_settings(f"sqlite:///{data_dir / 'certctl.db'}", data_dir)

    async def with_ca() -> None:
        data_dir.mkdir()
        shutil.copy(sqlite_template, data_dir / "certctl.db")
        api, lifespan = await start_api(settings)  # first boot makes the local CA's root and key
        await stop_api(api, lifespan)
        await backup.create(settings, tmp_path / "ca.cbk", PASSPHRASE, log_n=14)

    asyncio.run(with_ca())
    good = asyncio.run(backup.verify(settings, tmp_path / "ca.cbk", PASSPHRASE))
    assert good.ok and any("signed a test certificate and CRL" in line for line in good.passed), good

    def other_key(manifest: dict[str, Any], root: Path) -> None:
        [name] = [n for n in manifest["members"] if n.startswith("data/keys/")]
        pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        (root / name).write_bytes(pem)
        manifest["members"][name].update(sha256=hashlib.sha256(pem).hexdigest(), size=len(pem))

    _repack(tmp_path / "ca.cbk", tmp_path / "swapped.cbk", other_key)
    bad = asyncio.run(backup.verify(settings, tmp_path / "swapped.cbk", PASSPHRASE))
    assert not bad.ok and any("does not belong to the CA certificate" in p for p in bad.problems), bad.problems


def _rows(db_file: Path, sql: str) -> Any:
    engine = create_engine(f"sqlite:///{db_file}")
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql)).scalar()
    finally:
        engine.dispose()


def test_restore_over_live_data_needs_force_and_keeps_the_replaced_files(small: dict[str, Any]) -> None:
    settings, data_dir = small["settings"], small["data_dir"]
    db_file = data_dir / "certctl.db"
    _rows(db_file, "SELECT 1")
    engine = create_engine(f"sqlite:///{db_file}")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO teams (id, name, description, created_at, updated_at) "
                          "VALUES ('t-after', 'made after the backup', '', '2026-01-01', '2026-01-01')"))
    engine.dispose()
    (data_dir / "keys" / "ca.key").write_text("a newer key\n")

    with pytest.raises(backup.RestoreRefused, match="already holds data"):
        asyncio.run(backup.restore(settings, small["archive"], PASSPHRASE))
    assert _rows(db_file, "SELECT count(*) FROM teams WHERE id = 't-after'") == 1, "refused: nothing changed"
    assert (data_dir / "keys" / "ca.key").read_text() == "a newer key\n"

    result = asyncio.run(backup.restore(settings, small["archive"], PASSPHRASE, force=True))
    assert _rows(db_file, "SELECT count(*) FROM teams WHERE id = 't-after'") == 0
    assert _rows(db_file, "SELECT count(*) FROM audit_events WHERE action = 'backup_restored'") == 1
    assert result.moved_aside is not None
    assert (result.moved_aside / "keys" / "ca.key").read_text() == "a newer key\n", "the replaced key is kept"
    assert _rows(result.moved_aside / "database" / "certctl.db",
                 "SELECT count(*) FROM teams WHERE id = 't-after'") == 1, "and the replaced database"
    assert (data_dir / "keys" / "ca.key").read_bytes().startswith(b"-----BEGIN PRIVATE KEY")


def test_a_backup_from_an_older_schema_is_migrated_to_head(tmp_path: Path) -> None:
    older = _older_revision()
    data_dir = tmp_path / "old"
    data_dir.mkdir()
    engine = create_engine(f"sqlite:///{data_dir / 'certctl.db'}")
    with engine.begin() as conn:
        cfg = _alembic_config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, older)
    engine.dispose()
    old_settings = make_settings(f"sqlite:///{data_dir / 'certctl.db'}", data_dir, config_encryption_key=None)
    result = asyncio.run(backup.create(old_settings, tmp_path / "old.cbk", PASSPHRASE, log_n=14))
    assert result.manifest["schema_revision"] == older

    target = tmp_path / "new"
    new_settings = make_settings(f"sqlite:///{target / 'certctl.db'}", target, config_encryption_key=None)
    restored = asyncio.run(backup.restore(new_settings, tmp_path / "old.cbk", PASSPHRASE))
    assert restored.revision == migrate.head_revision() != older


def _alembic_config() -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrate.MIGRATIONS_DIR))
    return cfg


def _older_revision() -> str:
    from alembic.script import ScriptDirectory

    revisions = [r.revision for r in ScriptDirectory.from_config(_alembic_config()).walk_revisions()]
    return revisions[len(revisions) // 2]


@pytest.fixture(autouse=True)
def _no_leftovers(tmp_path: Path) -> Iterator[None]:
    yield
    leftovers = [p for p in tmp_path.rglob(".certctl-*")]
    assert not leftovers, f"temporary material left behind: {leftovers}"


def test_outside_files_travel_and_return_to_their_paths(tmp_path: Path, sqlite_template: Path) -> None:
    """Sub-CA mode (CERTCTL_CA_CERT_PATH/KEY_PATH) and an operator TLS pair live outside the data directory:
    the archive carries them, verify signs with the outside CA key, restore puts them back where they were."""
    from datetime import UTC, datetime, timedelta

    from certctl.pki.ca import build_root, ca_name
    from certctl.pki.signers import SoftwareSigner

    ops = tmp_path / "etc"
    ops.mkdir()
    key = ec.generate_private_key(ec.SECP256R1())
    root = build_root(SoftwareSigner("m", key), ca_name("Corp CA"), datetime.now(UTC), timedelta(days=365))
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    files = {"ca.pem": root.public_bytes(pem), "ca.key": key_pem, "tls.crt": root.public_bytes(pem), "tls.key": key_pem}
    for name, content in files.items():
        (ops / name).write_bytes(content)
        (ops / name).chmod(0o600 if name.endswith(".key") else 0o644)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    shutil.copy(sqlite_template, data_dir / "certctl.db")
    settings = make_settings(f"sqlite:///{data_dir / 'certctl.db'}", data_dir, tls_cert_path=ops / "tls.crt",
                             tls_key_path=ops / "tls.key", extra={"CERTCTL_CA_CERT_PATH": str(ops / "ca.pem"),
                                                                  "CERTCTL_CA_KEY_PATH": str(ops / "ca.key")})

    async def make() -> dict[str, Any]:
        api, lifespan = await start_api(settings)  # first boot registers the operator's CA as iss-local's root
        await stop_api(api, lifespan)
        return (await backup.create(settings, tmp_path / "sub.cbk", PASSPHRASE, log_n=14)).manifest

    manifest = asyncio.run(make())
    outside = {m["restore_to"]: m["mode"] for m in manifest["members"].values() if m["restore_to"].startswith("path:")}
    assert outside == {f"path:{ops / 'tls.crt'}": 0o644, f"path:{ops / 'tls.key'}": 0o600,
                       f"path:{ops / 'ca.pem'}": 0o644, f"path:{ops / 'ca.key'}": 0o600}
    assert manifest["key_references"]["in_archive"] == [f"file:{ops / 'ca.key'}"]
    verified = asyncio.run(backup.verify(settings, tmp_path / "sub.cbk", PASSPHRASE))
    assert verified.ok and any("signed a test certificate and CRL" in line for line in verified.passed), verified

    shutil.rmtree(data_dir)
    shutil.rmtree(ops)
    asyncio.run(backup.restore(settings, tmp_path / "sub.cbk", PASSPHRASE))
    for name, content in files.items():
        assert (ops / name).read_bytes() == content
    assert (ops / "ca.key").stat().st_mode & 0o777 == 0o600

    (ops / "tls.crt").write_text("replaced by hand\n")  # an outside file that differs is not overwritten silently
    elsewhere = make_settings(f"sqlite:///{tmp_path / 'other' / 'certctl.db'}", tmp_path / "other",
                              tls_cert_path=ops / "tls.crt", tls_key_path=ops / "tls.key")
    with pytest.raises(backup.RestoreRefused, match=r"tls\.crt"):
        asyncio.run(backup.restore(elsewhere, tmp_path / "sub.cbk", PASSPHRASE))
    result = asyncio.run(backup.restore(elsewhere, tmp_path / "sub.cbk", PASSPHRASE, force=True))
    assert (ops / "tls.crt").read_bytes() == files["tls.crt"]
    assert result.moved_aside is not None
    assert (result.moved_aside / "external" / str(ops / "tls.crt").lstrip("/")).read_text() == "replaced by hand\n"


async def test_postgresql_forced_restore_replaces_the_whole_schema(pg_template: str, tmp_path: Path) -> None:
    """--force over a PostgreSQL database that holds data: everything of the schema is dropped (tables the backup
    does not know included) and the backup loaded in one transaction, audit triggers and all."""
    import uuid

    from sqlalchemy.exc import DBAPIError

    from certctl.store.database import Database
    from tests.conftest import _pg_url

    name = f"certctl_t_{uuid.uuid4().hex[:12]}"
    await _pg_admin(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    url = _pg_url(name)
    db = Database(url, pool_size=1)
    try:
        settings = make_settings(url, tmp_path / "data")
        async with db.engine.begin() as conn:
            await conn.execute(text("INSERT INTO teams (id, name, description, created_at, updated_at) "
                                    "VALUES ('t-kept', 'in the backup', '', now(), now())"))
        await db.dispose()
        await backup.create(settings, tmp_path / "pg.cbk", PASSPHRASE, log_n=14)
        async with db.engine.begin() as conn:
            await conn.execute(text("INSERT INTO teams (id, name, description, created_at, updated_at) "
                                    "VALUES ('t-later', 'after the backup', '', now(), now())"))
            await conn.execute(text("CREATE TABLE stray_from_elsewhere (x integer)"))
        await db.dispose()
        with pytest.raises(backup.RestoreRefused, match="already holds data"):
            await backup.restore(settings, tmp_path / "pg.cbk", PASSPHRASE)
        await backup.restore(settings, tmp_path / "pg.cbk", PASSPHRASE, force=True)
        async with db.engine.connect() as conn:
            teams = set((await conn.execute(text("SELECT id FROM teams"))).scalars())
            stray = (await conn.execute(text("SELECT to_regclass('stray_from_elsewhere')"))).scalar()
        assert teams == {"t-kept"} and stray is None
        with pytest.raises(DBAPIError, match="append-only"):
            async with db.engine.begin() as conn:
                await conn.execute(text("DELETE FROM audit_events"))
    finally:
        await db.dispose()
        await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

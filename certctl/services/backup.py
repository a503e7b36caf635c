"""`certctl backup create | verify | restore`: one encrypted archive with everything a restore needs.

The archive (see docs/operator/backup.md) is a tar stream inside the encrypted envelope of
`certctl.pki.backup_archive`, members in this order:

    manifest.json            format version, certctl version, back end, schema revision, creation time,
                             rows per table, and the SHA-256, size and mode of every other member
    database/...             the consistent snapshot (certctl.store.snapshot): a pg_dump custom-format
                             file, or the SQLite online-backup image, gzip-compressed
    data/...                 material from the data directory: keys/ (file-driver CA and OCSP responder
                             keys), config.key, admin.key, tls/server.{crt,key}
    external/<n>/<name>      operator files outside the data directory that the server needs: the
                             CERTCTL_TLS_*_PATH pair, CERTCTL_CA_CERT_PATH/CERTCTL_CA_KEY_PATH, and any CA
                             key referenced by absolute path (sub-CA mode); restored to their recorded paths

The manifest comes first so that restore and verify refuse a wrong back end or a newer schema before they
unpack gigabytes; the checksums are checked for every member as it is unpacked.

Restore is refused over a database that holds data or material that differs unless `force` is given; the
replaced files then move to `<data-dir>/pre-restore-<time>/` (CA keys are never deleted). PostgreSQL loads in
one transaction. Every restore is audited in the restored database (`backup_restored`), every backup in the
live one (`backup_created`, after the snapshot, so it is not in its own archive).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from certctl import __version__
from certctl.config import Settings
from certctl.domain.actor import Actor
from certctl.domain.clock import Clock
from certctl.pki import backup_archive
from certctl.pki.backup_archive import DecryptingReader, EncryptingWriter
from certctl.pki.backup_check import ca_signing_problems, responder_key_problems
from certctl.pki.sealing import ConfigSealer
from certctl.pki.signers import Signer, SignerError
from certctl.pki.signers.file import FileDriver
from certctl.services import audit
from certctl.services.connector_config import verify_sealed_configs
from certctl.services.context import ServiceContext
from certctl.store import migrate, snapshot
from certctl.store.database import Database

FORMAT = "certctl-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PG_MEMBER = "database/certctl.pgdump"
SQLITE_MEMBER = "database/certctl.db.gz"
DATA_FILES = ("config.key", "admin.key", "tls/server.crt", "tls/server.key")
_COPY = 1 << 20

NOT_INCLUDED = [
    "environment variables and secrets held outside files: CERTCTL_CONFIG_ENCRYPTION_KEY, CERTCTL_CA_KEY_PASSPHRASE, "
    "CERTCTL_API_KEYS_NAMED, CERTCTL_PKCS11_PIN and the rest of the server's configuration",
    "keys held in a PKCS#11 token (they cannot leave it; back the token up with its vendor's tools)",
    "private keys of managed certificates made on agents' hosts (they never reach the server)",
    "logs, and the SQLite -wal/-shm files (the snapshot already contains their committed changes)",
]


class BackupError(Exception):
    """The operation failed; the message says why (exit status 1)."""


class RestoreRefused(BackupError):
    """Restoring would overwrite live data; `--force` (and stopped servers) needed (exit status 3)."""


@dataclass
class Member:
    name: str  # inside the archive
    source: Path  # where it is read from now
    mode: int = 0o600
    restore_to: str = ""  # "data:<relative path>" | "path:<absolute path>" | "" (the database)


@dataclass
class CreateResult:
    path: Path
    size: int
    manifest: dict[str, Any]
    seconds: float


@dataclass
class VerifyResult:
    manifest: dict[str, Any]
    passed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class RestoreResult:
    manifest: dict[str, Any]
    revision: str
    files: list[str]
    moved_aside: Path | None
    seconds: float


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_COPY):
            digest.update(chunk)
    return digest.hexdigest()


# ---- what goes in -----------------------------------------------------------------------------------
def _data_members(settings: Settings) -> list[Member]:
    data = settings.data_dir
    found: list[Member] = []
    keys = data / "keys"
    if keys.is_dir():
        for path in sorted(keys.rglob("*")):
            if path.is_file() and not path.is_symlink():
                rel = path.relative_to(data).as_posix()
                found.append(Member(f"data/{rel}", path, 0o600, f"data:{rel}"))
    for rel in DATA_FILES:
        path = data / rel
        if path.is_file():
            mode = 0o644 if rel.endswith(".crt") else 0o600
            found.append(Member(f"data/{rel}", path, mode, f"data:{rel}"))
    return found


def _external_members(settings: Settings, key_refs: list[str]) -> list[Member]:
    paths: list[Path] = []
    env = settings.extra
    for candidate in (settings.tls_cert_path, settings.tls_key_path,
                      env.get("CERTCTL_CA_CERT_PATH"), env.get("CERTCTL_CA_KEY_PATH")):
        if candidate:
            paths.append(Path(candidate))
    for ref in key_refs:
        if ref.startswith("file:") and Path(ref[5:]).is_absolute():
            paths.append(Path(ref[5:]))
    found: list[Member] = []
    seen: set[Path] = set()
    for path in paths:
        absolute = path.resolve()
        if absolute in seen:
            continue
        seen.add(absolute)
        with contextlib.suppress(ValueError):
            absolute.relative_to(settings.data_dir.resolve())
            continue  # inside the data directory: already there as data/...
        if not absolute.is_file():
            raise BackupError(f"{path} is configured or referenced by a CA but cannot be read")
        mode = absolute.stat().st_mode & 0o777
        found.append(Member(f"external/{len(found)}/{absolute.name}", absolute, mode, f"path:{absolute}"))
    return found


def _tarinfo(name: str, size: int, mode: int, mtime: float) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, mode, int(mtime)
    info.uname = info.gname = "certctl"
    return info


async def create(settings: Settings, output: Path, passphrase: str, *, clock: Clock | None = None,
                 log_n: int = backup_archive.DEFAULT_LOG_N) -> CreateResult:
    """Snapshot the database, gather the operator material and write one encrypted archive (mode 0600)."""
    clock = clock or Clock()
    started = time.monotonic()
    backup_archive.check_passphrase(passphrase)
    _check_output(output)
    url = settings.effective_database_url
    backend = snapshot.backend_of(url)
    work = Path(tempfile.mkdtemp(prefix=".certctl-backup-", dir=output.parent))  # 0700, on the output's disk
    partial = output.with_name(output.name + ".partial")
    try:
        raw = work / "database"
        try:
            info = await snapshot.snapshot(url, raw)
        except snapshot.SnapshotError as exc:
            raise BackupError(f"database snapshot failed: {exc}") from None
        if backend == "sqlite":
            db_member = Member(SQLITE_MEMBER, work / "certctl.db.gz")
            with raw.open("rb") as src, gzip.open(db_member.source, "wb", compresslevel=6) as dst:
                shutil.copyfileobj(src, dst, _COPY)
            raw.unlink()
        else:
            db_member = Member(PG_MEMBER, raw)
        # Small files are read once into memory: the bytes hashed are the bytes archived, even if one changes.
        files = _data_members(settings) + _external_members(settings, info.key_refs)
        # A CA row whose key file is gone cannot sign now either; the backup is still made, and says so.
        missing = [r for r in info.key_refs if r.startswith("file:") and not Path(r[5:]).is_absolute()
                   and not (settings.data_dir / "keys" / r[5:]).is_file()]
        contents = {m.name: m.source.read_bytes() for m in files}
        members: dict[str, Any] = {
            db_member.name: {"sha256": _sha256(db_member.source), "size": db_member.source.stat().st_size,
                             "mode": 0o600, "restore_to": ""},
        }
        for m in files:
            members[m.name] = {"sha256": hashlib.sha256(contents[m.name]).hexdigest(), "size": len(contents[m.name]),
                               "mode": m.mode, "restore_to": m.restore_to}
        created_at = clock.now()
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "certctl_version": __version__,
            "created_at": created_at.isoformat(),
            "backend": backend,
            "database": {
                "member": db_member.name,
                "format": snapshot.PG_DUMP_FORMAT if backend == "postgresql" else snapshot.SQLITE_FORMAT,
                "server_version": info.server_version,
                "schema_revision": info.revision,
                "tables": info.tables,
            },
            "schema_revision": info.revision,
            "key_references": {
                "in_archive": [r for r in info.key_refs if r.startswith("file:") and r not in missing],
                "not_in_archive": [r for r in info.key_refs if not r.startswith("file:")],
                "missing": missing,
            },
            "config_encryption_key": "data/config.key" if "data/config.key" in members else (
                "CERTCTL_CONFIG_ENCRYPTION_KEY (not in the archive)" if settings.config_encryption_key else "none"),
            "members": members,
            "not_included": NOT_INCLUDED,
        }
        body = json.dumps(manifest, indent=2, sort_keys=True).encode()
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as sink:
            writer = EncryptingWriter(sink, passphrase, log_n=log_n)
            with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
                now = created_at.timestamp()
                tar.addfile(_tarinfo(MANIFEST, len(body), 0o600, now), io.BytesIO(body))
                with db_member.source.open("rb") as handle:
                    tar.addfile(_tarinfo(db_member.name, members[db_member.name]["size"], 0o600, now), handle)
                for m in files:
                    tar.addfile(_tarinfo(m.name, len(contents[m.name]), m.mode, now), io.BytesIO(contents[m.name]))
            writer.close()
            sink.flush()
            os.fsync(sink.fileno())
        try:
            os.link(partial, output)  # unlike a rename, never replaces a file that appeared meanwhile
        except FileExistsError:
            raise BackupError(f"{output} appeared while the backup was written; it was left alone") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    size = _size(output)
    await _audit(url, clock, "backup_created", {
        "file": output.name, "size": size, "backend": backend, "schema_revision": info.revision,
        "rows": sum(info.tables.values()), "members": len(members),
    })
    return CreateResult(output, size, manifest, time.monotonic() - started)


def _check_output(output: Path) -> None:
    if output.exists():
        raise BackupError(f"{output} already exists; choose a new name (backups are never overwritten)")
    output.parent.mkdir(parents=True, exist_ok=True)


def _size(path: Path) -> int:
    return path.stat().st_size


async def _audit(url: str, clock: Clock, action: str, details: dict[str, Any]) -> None:
    db = Database(url, pool_size=1)
    try:
        async with db.transaction() as conn:
            await audit.record(conn, clock, Actor.system(), action, "backup", details.get("file", "restore"), details)
    finally:
        await db.dispose()


# ---- reading an archive -----------------------------------------------------------------------------------
@dataclass
class Unpacked:
    root: Path
    manifest: dict[str, Any]

    def path(self, member: str) -> Path:
        return self.root / member

    @property
    def database(self) -> Path:
        return self.path(self.manifest["database"]["member"])


def _safe_name(name: str) -> bool:
    parts = PurePosixPath(name).parts
    return bool(parts) and not name.startswith("/") and ".." not in parts and "\\" not in name


@contextlib.contextmanager
def unpack(archive: Path, passphrase: str, *, into: Path | None = None,
           on_manifest: Callable[[dict[str, Any]], None] | None = None) -> Iterator[Unpacked]:
    """Decrypt and unpack into a private directory, checking every member's SHA-256 against the manifest.

    `on_manifest` sees the manifest (the first member) before anything else is unpacked, and may refuse it.
    """
    if not archive.is_file():
        raise BackupError(f"{archive} does not exist")
    root = Path(tempfile.mkdtemp(prefix=".certctl-unpack-", dir=into))
    try:
        with archive.open("rb") as source:
            reader = DecryptingReader(source, passphrase)
            manifest = _read_members(reader, root, on_manifest)
            reader.finish()  # the authenticated end: a cut after the tar's end is found here
        yield Unpacked(root, manifest)
    except tarfile.TarError as exc:
        raise BackupError(f"the archive's contents are damaged: {exc}") from None
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _read_members(reader: BinaryIO | DecryptingReader, root: Path,
                  on_manifest: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    manifest: dict[str, Any] | None = None
    seen: set[str] = set()
    with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
        for info in tar:
            if not info.isfile() or not _safe_name(info.name):
                raise BackupError(f"the archive holds an unexpected entry '{info.name}'")
            handle = tar.extractfile(info)
            assert handle is not None
            if manifest is None:
                if info.name != MANIFEST or info.size > 16 << 20:
                    raise BackupError("the archive does not start with its manifest")
                manifest = json.loads(handle.read())
                _check_manifest(manifest)
                if on_manifest is not None:
                    on_manifest(manifest)
                continue
            expected = manifest["members"].get(info.name)
            if expected is None or info.name in seen:
                raise BackupError(f"the archive holds '{info.name}', which its manifest does not list")
            seen.add(info.name)
            target = root / info.name
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            digest = hashlib.sha256()
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                while chunk := handle.read(_COPY):
                    digest.update(chunk)
                    out.write(chunk)
            if digest.hexdigest() != expected["sha256"]:
                raise BackupError(f"checksum mismatch for '{info.name}': the archive was altered before encryption")
    if manifest is None:
        raise BackupError("the archive is empty")
    missing = sorted(set(manifest["members"]) - seen)
    if missing:
        raise BackupError(f"the archive lacks members its manifest lists: {', '.join(missing)}")
    return manifest


def _check_manifest(manifest: Any) -> None:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError("the archive's manifest is not a certctl backup manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BackupError(f"backup format version {manifest.get('format_version')} is not supported by certctl "
                          f"{__version__} (it reads version {FORMAT_VERSION}); use a newer certctl")
    for name, member in manifest.get("members", {}).items():
        restore_to = str(member.get("restore_to", ""))
        if not _safe_name(name) or not (
            restore_to == ""
            or (restore_to.startswith("data:") and _safe_name(restore_to[5:]))
            or (restore_to.startswith("path:/") and ".." not in PurePosixPath(restore_to[5:]).parts)
        ):
            raise BackupError(f"the manifest names an unsafe member '{name}' ({restore_to})")


def _check_revision(manifest: dict[str, Any]) -> None:
    revision = manifest.get("schema_revision")
    if revision is not None and not snapshot.known_revision(revision):
        raise BackupError(
            f"the backup's schema revision {revision} is newer than this certctl {__version__} knows "
            f"(head {migrate.head_revision()}); restore it with the certctl version that made it "
            f"({manifest.get('certctl_version')}) or a newer one"
        )


# ---- verify ------------------------------------------------------------------------------------------------
async def verify(settings: Settings, archive: Path, passphrase: str, *, scratch_url: str | None = None,
                 clock: Clock | None = None) -> VerifyResult:
    """Decrypt, check every checksum, restore into a throwaway database, compare, and prove the CA keys sign."""
    clock = clock or Clock()
    started = time.monotonic()
    with unpack(archive, passphrase, on_manifest=_check_revision) as unpacked:
        manifest = unpacked.manifest
        result = VerifyResult(manifest)
        result.passed.append(f"decrypted and authenticated to the end; {len(manifest['members'])} members "
                             "match their SHA-256")
        if manifest["backend"] == "sqlite":
            await _verify_sqlite(unpacked, settings, result, clock)
        else:
            await _verify_postgresql(unpacked, settings, result, clock, scratch_url)
    result.seconds = time.monotonic() - started
    return result


async def _verify_sqlite(unpacked: Unpacked, settings: Settings, result: VerifyResult, clock: Clock) -> None:
    image = unpacked.root / "verify.db"
    with gzip.open(unpacked.database, "rb") as src, image.open("wb") as dst:
        shutil.copyfileobj(src, dst, _COPY)
    integrity = snapshot.check_sqlite_integrity(image)
    if integrity != "ok":
        result.problems.append(f"SQLite integrity check: {integrity}")
        return
    result.passed.append("SQLite integrity check: ok")
    await _verify_database(f"sqlite:///{image}", unpacked, settings, result, clock)


async def _verify_postgresql(unpacked: Unpacked, settings: Settings, result: VerifyResult, clock: Clock,
                             scratch_url: str | None) -> None:
    admin = scratch_url or settings.database_url
    if not admin or snapshot.backend_of(admin) != "postgresql":
        raise BackupError("verifying a PostgreSQL backup restores it into a throwaway database: set "
                          "CERTCTL_DATABASE_URL or --scratch-url to a PostgreSQL server where certctl may "
                          "CREATE DATABASE")
    try:
        scratch = await snapshot.create_scratch_database(admin)
    except Exception as exc:  # unreachable server, no CREATEDB privilege: say which
        raise BackupError(f"cannot create a throwaway database on {snapshot.libpq(admin)[0]}: {exc}") from None
    try:
        try:
            await snapshot.load_postgresql(scratch, unpacked.database, jobs=2)
        except snapshot.SnapshotError as exc:
            result.problems.append(f"pg_restore into a throwaway database failed: {exc}")
            return
        result.passed.append("pg_restore into a throwaway database: ok")
        await _verify_database(scratch, unpacked, settings, result, clock)
    finally:
        await snapshot.drop_scratch_database(admin, scratch)


async def _verify_database(url: str, unpacked: Unpacked, settings: Settings, result: VerifyResult,
                           clock: Clock) -> None:
    manifest = unpacked.manifest
    revision, counts = await snapshot.revision_and_counts(url)
    if revision != manifest["schema_revision"]:
        result.problems.append(
            f"schema revision {revision} does not match the manifest's {manifest['schema_revision']}")
    expected: dict[str, int] = manifest["database"]["tables"]
    wrong = [f"{t}: {counts.get(t)} rows, manifest says {n}" for t, n in sorted(expected.items()) if counts.get(t) != n]
    extra = sorted(set(counts) - set(expected))
    if wrong or extra:
        result.problems.append("row counts differ: " + "; ".join(wrong + [f"{t}: not in the manifest" for t in extra]))
    else:
        result.passed.append(f"row counts match the manifest ({len(expected)} tables, "
                             f"{sum(expected.values())} rows)")
    db = Database(url, pool_size=2)
    try:
        await migrate.upgrade(db)
        head = await migrate.current_revision(db)
        result.passed.append(f"schema revision {revision}; migrations bring it to {head}")
        await _verify_keys(url, unpacked, settings, result, clock)
        await _verify_sealed(db, unpacked, settings, result, clock)
    finally:
        await db.dispose()


def _signer_for(ref: str, unpacked: Unpacked, settings: Settings) -> Signer | None:
    """The archived key named by a CA row's reference, or None for keys that live in a token."""
    passphrase = settings.extra.get("CERTCTL_CA_KEY_PASSPHRASE") or None
    if not ref.startswith("file:"):
        return None
    raw = ref[5:]
    if Path(raw).is_absolute():
        for name, member in unpacked.manifest["members"].items():
            if member.get("restore_to") == f"path:{Path(raw).resolve()}" or member.get("restore_to") == f"path:{raw}":
                path = unpacked.path(name)
                return FileDriver(unpacked.root, passphrase=passphrase, allowed_files=[path]).load(f"file:{path}")
        raise SignerError(f"key '{ref}' is not in the archive")
    return FileDriver(unpacked.root / "data" / "keys", passphrase=passphrase).load(ref)


async def _verify_keys(url: str, unpacked: Unpacked, settings: Settings, result: VerifyResult,
                       clock: Clock) -> None:
    now = clock.now()
    checked = 0
    for row in await snapshot.key_rows(url):
        what = f"CA '{row.id}'" if row.kind == "ca" else f"OCSP responder of CA '{row.id}'"
        try:
            signer = _signer_for(row.key_ref, unpacked, settings)
        except SignerError as exc:
            result.problems.append(f"{what}: {exc}")
            continue
        if signer is None:
            result.skipped.append(f"{what}: key '{row.key_ref}' is in a hardware token, not in the archive")
            continue
        if row.kind == "ca":
            problems = ca_signing_problems(row.id, row.cert_pem, signer, now)
            if row.state != "active":  # a retired CA's expiry is expected; its key must still sign (CRLs)
                problems = [p for p in problems if "expired" not in p]
        else:
            problems = responder_key_problems(row.id, row.cert_pem, signer)
        result.problems.extend(problems)
        checked += not problems
    if checked:
        result.passed.append(f"{checked} archived CA/OCSP keys load and match their certificates; every CA key "
                             "signed a test certificate and CRL that verify against the CA certificate")
    elif not unpacked.manifest["key_references"]["in_archive"]:
        result.skipped.append("no CA keys in the archive to check")


async def _verify_sealed(db: Database, unpacked: Unpacked, settings: Settings, result: VerifyResult,
                         clock: Clock) -> None:
    archived = unpacked.path("data/config.key")
    key = archived.read_text().strip() if archived.is_file() else settings.config_encryption_key
    if key is None:
        result.skipped.append("connector credentials: no config.key in the archive and CERTCTL_CONFIG_ENCRYPTION_KEY "
                              "unset; they were not checked")
        return
    try:
        sealer = ConfigSealer(key)
    except ValueError as exc:
        result.problems.append(f"config encryption key: {exc}")
        return
    ctx = ServiceContext(db=db, clock=clock, settings=replace(settings, data_dir=unpacked.root / "data"),
                         sealer=sealer)
    try:
        await verify_sealed_configs(ctx)
    except Exception as exc:
        result.problems.append(f"connector credentials: {exc}")
        return
    source = "the archived config.key" if archived.is_file() else "CERTCTL_CONFIG_ENCRYPTION_KEY"
    result.passed.append(f"sealed connector configs open with {source}")


# ---- restore -----------------------------------------------------------------------------------------------
def _target_of(restore_to: str, settings: Settings) -> Path | None:
    if restore_to.startswith("data:"):
        return settings.data_dir / restore_to[5:]
    if restore_to.startswith("path:"):
        return Path(restore_to[5:])
    return None


def _differs(target: Path, sha256: str) -> bool:
    return target.exists() and (not target.is_file() or _sha256(target) != sha256)


async def restore(settings: Settings, archive: Path, passphrase: str, *, force: bool = False,
                  clock: Clock | None = None) -> RestoreResult:
    """Restore the archive into the configured database and data directory, then migrate to head."""
    clock = clock or Clock()
    started = time.monotonic()
    url = settings.effective_database_url
    backend = snapshot.backend_of(url)

    def acceptable(manifest: dict[str, Any]) -> None:
        if manifest["backend"] != backend:
            raise BackupError(f"the backup is of a {manifest['backend']} database and the configured database is "
                              f"{backend}; restore it into a {manifest['backend']} database (cross back-end restore is "
                              "not supported)")
        _check_revision(manifest)

    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with unpack(archive, passphrase, into=settings.data_dir, on_manifest=acceptable) as unpacked:
        manifest = unpacked.manifest
        revision = manifest.get("schema_revision")
        # Preflight: nothing changes until every check has passed.
        try:
            state = await snapshot.inspect(url)
        except Exception as exc:
            raise BackupError(f"cannot open the configured database: {exc}") from None
        if state.other_sessions:
            raise RestoreRefused(f"{state.other_sessions} other sessions are connected to the database (another "
                                 "process has it open): stop every certctl server (and other clients) before restoring")
        if state.holds_data and not force:
            rows = sum(n for t, n in state.tables.items() if t != "alembic_version")
            raise RestoreRefused(f"the configured database already holds data ({rows} rows); restoring replaces all "
                                 "of it. Stop the servers and run again with --force")
        files = [(name, m, _target_of(m["restore_to"], settings)) for name, m in manifest["members"].items()
                 if m.get("restore_to")]
        conflicts = [str(t) for _, m, t in files if t is not None and _differs(t, m["sha256"])]
        if conflicts and not force:
            raise RestoreRefused("these files exist and differ from the backup's: " + ", ".join(conflicts) +
                                 ". Run again with --force to replace them (the current ones are kept aside)")
        stamp = clock.now().strftime("%Y%m%dT%H%M%SZ")
        aside = settings.data_dir / f"pre-restore-{stamp}"
        # The database.
        try:
            if backend == "postgresql":
                await snapshot.clear_postgresql(url)
                await snapshot.load_postgresql(url, unpacked.database, jobs=1)
            else:
                image = unpacked.root / "restore.db"
                with gzip.open(unpacked.database, "rb") as src, image.open("wb") as dst:
                    shutil.copyfileobj(src, dst, _COPY)
                snapshot.install_sqlite(image, url, keep_old_in=aside / "database" if state.holds_data else None)
        except snapshot.SnapshotError as exc:
            raise BackupError(f"loading the database failed: {exc}. The database is now empty or as it was "
                              "(PostgreSQL loads in one transaction); run the restore again once the cause is "
                              "fixed") from None
        db = Database(url, pool_size=1)
        try:
            await migrate.upgrade(db)
            head = await migrate.current_revision(db) or ""
        finally:
            await db.dispose()
        # The files.
        restored: list[str] = []
        for name, member, target in files:
            if target is None:
                continue
            if target.exists():
                if not _differs(target, member["sha256"]):
                    restored.append(str(target))
                    continue
                keep = aside / (target.relative_to(settings.data_dir) if member["restore_to"].startswith("data:")
                                else Path("external") / str(target).lstrip("/"))
                keep.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                shutil.move(str(target), keep)
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if target.parent.name == "keys" and target.parent.parent == settings.data_dir:
                os.chmod(target.parent, 0o700)
            staging = target.with_name(f".{target.name}.restore")
            shutil.copyfile(unpacked.path(name), staging)
            os.chmod(staging, member["mode"])
            os.replace(staging, target)
            restored.append(str(target))
    await _audit(url, clock, "backup_restored", {
        "file": archive.name, "backup_created_at": manifest["created_at"],
        "certctl_version": manifest["certctl_version"],
        "schema_revision": revision, "migrated_to": head, "forced": force, "files": len(restored),
    })
    return RestoreResult(manifest, head, restored, aside if aside.exists() else None, time.monotonic() - started)


def describe(manifest: dict[str, Any]) -> str:
    """A short human summary of a manifest (for the CLI)."""
    db = manifest["database"]
    rows = sum(db["tables"].values())
    certs = db["tables"].get("managed_certificates", 0)
    created = datetime.fromisoformat(manifest["created_at"]).strftime("%Y-%m-%d %H:%M:%S UTC")
    return (f"certctl {manifest['certctl_version']} backup of {manifest['backend']} "
            f"(schema {manifest['schema_revision']}), taken {created}: {rows} rows in {len(db['tables'])} tables "
            f"({certs} certificates), {len(manifest['members']) - 1} files")

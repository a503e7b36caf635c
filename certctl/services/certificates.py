"""Managed certificates: the inventory use cases (create, read, list, update, archive, export).

Renewal, deployment and revocation change a certificate's state elsewhere; this service owns the
inventory record. Every change is one transaction holding the row, its target mappings, the
policy evaluation and the audit event, so a half-made certificate can never be observed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import random
import time
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from certctl.config import SettingsError
from certctl.domain.actor import Actor
from certctl.domain.enums import CertificateStatus
from certctl.domain.errors import ConflictError, NotFoundError, RateLimitedError, ValidationError
from certctl.domain.ids import new_id
from certctl.domain.models.certificates import (
    CERTIFICATE_FIELDS,
    NULLABLE_UPDATE_FIELDS,
    CertificateCreate,
    CertificateDeployment,
    CertificateUpdate,
    CertificateVersion,
    ManagedCertificate,
    PemExport,
)
from certctl.domain.models.common import PageParams
from certctl.pki import export as pki_export
from certctl.pki.sealing import load_or_create_key_file
from certctl.services import audit
from certctl.services.context import ServiceContext
from certctl.services.policy_engine import evaluate_certificate
from certctl.store import certificates_repo as repo
from certctl.store import rows
from certctl.store.certificates_repo import CertificateFilter, Sort

__all__ = ["CertificateFilter", "CertificateListing", "CertificateService", "ListQuery"]
from certctl.store.rows import Row
from certctl.store.schema import certificate_profiles, issuers, owners, renewal_policies, teams

RESOURCE = "certificate"
EXPORT_ACTIONS = ("cert_export_pem", "cert_export_pkcs12")
EXPORT_WINDOW = timedelta(hours=1)

# `sort=` names (the reference's camelCase, plus our snake_case columns) → column.
SORT_FIELDS: dict[str, str] = {
    "notAfter": "expires_at",
    "expiresAt": "expires_at",
    "createdAt": "created_at",
    "updatedAt": "updated_at",
    "commonName": "common_name",
    "name": "name",
    "status": "status",
    "environment": "environment",
    "expires_at": "expires_at",
    "created_at": "created_at",
    "updated_at": "updated_at",
    "common_name": "common_name",
}

log = logging.getLogger("certctl.certificates")

# Exact totals of big result sets cost a scan; above COUNT_CACHE_MIN rows a total is served from a per-process
# cache and recounted in the background. A count's cost grows with its size, and so does the time a figure is
# kept: total / COUNT_ROWS_PER_SECOND seconds, at least COUNT_CACHE_SECONDS and at most COUNT_CACHE_MAX_SECONDS
# (measured: 700,000 rows cost 110-270 ms of PostgreSQL CPU per count; every 10 s for each of a few filters, in
# each worker, that was a tenth of a core). A write through this process makes the figure due sooner, a tenth of
# that time after it was counted: a stream of writes costs one recount per interval, not one per write.
COUNT_CACHE_MIN = 10_000
COUNT_CACHE_SECONDS = 10.0
COUNT_CACHE_MAX_SECONDS = 60.0
COUNT_ROWS_PER_SECOND = 20_000
WRITE_RECOUNT_SHARE = 0.1
# Each figure is kept up to a fifth less than that, at random: workers (and replicas) started together would
# otherwise recount the same big total at the same moment, each count taking a core for ~100 ms, and with both
# cores of a small machine gone at once every request in flight waited (seen as p99 spikes every 35 s).
COUNT_CACHE_JITTER = 0.2
# A process without a figure for a filter serves the one shared by other processes while it is younger than this
# many times its time in a cache (recounting it in the background when it is due), and counts in the request
# only when there is none: a worker that had not yet served a big filter used to count it in the request, with
# parallel workers, while the other worker served from its cache.
SHARED_COUNT_SERVED_LIFETIMES = 10.0
# Shared totals older than this are deleted (at most once per interval, by a process that stores one): a filter
# with a moving bound (`created_after=<now>`) makes a new row with every count.
SHARED_COUNT_KEPT_SECONDS = SHARED_COUNT_SERVED_LIFETIMES * COUNT_CACHE_MAX_SECONDS


_now = time.monotonic  # the count cache's clock (tests move it)
_wall = time.time  # the clock of totals shared between processes (certificate_list_counts)


def count_cache_seconds(total: int) -> float:
    """How long a cached total of `total` rows is served before it is recounted."""
    return min(COUNT_CACHE_MAX_SECONDS, max(COUNT_CACHE_SECONDS, total / COUNT_ROWS_PER_SECOND))


@dataclass
class CertificateListing:
    """One page of certificates as plain rows (only the requested fields), ready to encode."""

    items: list[dict[str, Any]]
    total: int | None = None
    next_cursor: str | None = None


@dataclass
class _CachedCount:
    expires: float
    total: int
    counted_at: float
    refreshing: bool = False
    counted_wall: float = 0.0  # when it was counted, on the clock shared with other processes


@dataclass
class ListQuery:
    flt: CertificateFilter = field(default_factory=CertificateFilter)
    sort: str | None = None
    fields: str | None = None


class CertificateService:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.export_limit = _export_limit(ctx.settings.extra)
        self._count_cache: dict[tuple[Any, ...], _CachedCount] = {}
        self._recounts: set[asyncio.Task[None]] = set()
        self._last_write_wall = 0.0  # no shared figure counted before this process's last write is taken
        self._small_counts: set[tuple[Any, ...]] = set()  # filters last counted below COUNT_CACHE_MIN
        self._shared_purged_at = 0.0
        self._cursor_key: bytes | None = None

    # ---- reads ------------------------------------------------------------------------------
    async def get(self, certificate_id: str) -> ManagedCertificate:
        async with self.ctx.db.read() as conn:
            item = await repo.get_wire(conn, certificate_id, CERTIFICATE_FIELDS)
        if item is None:
            raise NotFoundError.of(RESOURCE, certificate_id)
        return ManagedCertificate.model_validate(item)

    async def list_page(self, query: ListQuery, page: PageParams) -> CertificateListing:
        sort = parse_sort(query.sort)
        fields = parse_fields(query.fields)
        async with self.ctx.db.read() as conn:
            items = await repo.list_page(conn, query.flt, sort, fields, limit=page.per_page, offset=page.offset)
            if page.offset == 0 and len(items) < page.per_page:
                total = len(items)  # the page holds everything: no count needed
            else:
                total = await self._count(conn, query.flt)
        return CertificateListing(items=items, total=total)

    async def list_keyset(self, query: ListQuery, cursor: str | None, page_size: int) -> CertificateListing:
        sort = parse_sort(query.sort)
        fields = parse_fields(query.fields)
        after = self._decode_cursor(cursor, sort) if cursor else None
        async with self.ctx.db.read() as conn:
            rows, more = await repo.list_keyset(conn, query.flt, sort, fields, after=after, limit=page_size)
        next_cursor = self._encode_cursor(sort, rows.last_key) if more and rows.last_key is not None else None
        return CertificateListing(items=rows.items, next_cursor=next_cursor)

    async def versions(self, certificate_id: str, page: PageParams) -> tuple[list[CertificateVersion], int]:
        async with self.ctx.db.read() as conn:
            if not await repo.exists(conn, certificate_id):
                raise NotFoundError.of(RESOURCE, certificate_id)
            rows, total = await repo.list_versions(conn, certificate_id, limit=page.per_page, offset=page.offset)
        return [CertificateVersion.model_validate(r) for r in rows], total

    async def deployments(
        self, certificate_id: str, page: PageParams
    ) -> tuple[list[CertificateDeployment], int]:
        async with self.ctx.db.read() as conn:
            if not await repo.exists(conn, certificate_id):
                raise NotFoundError.of(RESOURCE, certificate_id)
            rows, total = await repo.list_deployment_jobs(
                conn, certificate_id, limit=page.per_page, offset=page.offset
            )
        return [CertificateDeployment.model_validate(r) for r in rows], total

    # ---- writes -----------------------------------------------------------------------------
    async def create(self, actor: Actor, data: CertificateCreate) -> ManagedCertificate:
        now = self.ctx.clock.now()
        values = data.model_dump(exclude={"target_ids"})
        target_ids = list(dict.fromkeys(data.target_ids))
        values.update(
            id=data.id or new_id("cert"),
            status=CertificateStatus.PENDING.value,
            expires_at=None,
            source="",
            created_at=now,
            updated_at=now,
        )
        async with self.ctx.db.transaction() as conn:
            id_taken, name_taken = await repo.id_or_name_taken(conn, values["id"], values["name"])
            if id_taken:
                raise ConflictError(f"certificate '{values['id']}' already exists")
            if name_taken:
                raise ConflictError(f"a certificate named '{values['name']}' already exists")
            await _check_references(conn, values)
            await _check_targets(conn, target_ids)
            row = await repo.insert_certificate(conn, values)
            if target_ids:
                await repo.replace_targets(conn, values["id"], target_ids, now, new=True)
            await audit.record(
                conn, self.ctx.clock, actor, "certificate_created", RESOURCE, values["id"],
                {**_audit_values(values), "target_ids": target_ids},
            )
            await evaluate_certificate(conn, self.ctx, actor, {**row, "target_ids": target_ids}, new=True)
        self._writes_happened()
        return _model(row, target_ids)

    async def update(self, actor: Actor, certificate_id: str, data: CertificateUpdate) -> ManagedCertificate:
        changes = data.model_dump(exclude_unset=True)
        nulls = sorted(k for k, v in changes.items() if v is None and k not in NULLABLE_UPDATE_FIELDS)
        if nulls:
            raise ValidationError(f"field(s) {', '.join(nulls)} cannot be null")
        new_targets = changes.pop("target_ids", None)
        async with self.ctx.db.transaction() as conn:
            current = await repo.get(conn, certificate_id, for_update=True)
            if current is None:
                raise NotFoundError.of(RESOURCE, certificate_id)
            if current["status"] == CertificateStatus.ARCHIVED.value:
                raise ConflictError(f"certificate '{certificate_id}' is archived and cannot be changed")
            if "name" in changes and changes["name"] != current["name"]:
                await _ensure_name_free(conn, changes["name"], certificate_id)
            await _check_references(conn, changes)
            now = self.ctx.clock.now()
            if new_targets is not None:
                new_targets = list(dict.fromkeys(new_targets))
                await _check_targets(conn, new_targets)
                await repo.replace_targets(conn, certificate_id, new_targets, now)
            changes["updated_at"] = now
            await repo.update_certificate(conn, certificate_id, changes)
            row = await repo.get(conn, certificate_id)
            assert row is not None
            targets = (await repo.target_ids_for(conn, [certificate_id])).get(certificate_id, [])
            details = _audit_values(changes)
            if new_targets is not None:
                details["target_ids"] = new_targets
            await audit.record(conn, self.ctx.clock, actor, "certificate_updated", RESOURCE, certificate_id, details)
            await evaluate_certificate(conn, self.ctx, actor, {**row, "target_ids": targets})
        self._writes_happened()
        return _model(row, targets)

    async def archive(self, actor: Actor, certificate_id: str) -> None:
        """Soft delete (the reference's DELETE): the record and its history stay, status Archived."""
        async with self.ctx.db.transaction() as conn:
            current = await repo.get(conn, certificate_id, for_update=True)
            if current is None:
                raise NotFoundError.of(RESOURCE, certificate_id)
            if current["status"] == CertificateStatus.ARCHIVED.value:
                return  # already archived: repeating the call changes nothing
            await repo.update_certificate(
                conn, certificate_id,
                {"status": CertificateStatus.ARCHIVED.value, "updated_at": self.ctx.clock.now()},
            )
            await audit.record(
                conn, self.ctx.clock, actor, "certificate_archived", RESOURCE, certificate_id,
                {"name": current["name"], "previous_status": current["status"]},
            )
        self._writes_happened()

    # ---- exports ------------------------------------------------------------------------------
    async def export_pem(self, actor: Actor, certificate_id: str) -> PemExport:
        parts, _ = await self._export(actor, certificate_id, "pem", None)
        return PemExport(cert_pem=parts.cert_pem, chain_pem=parts.chain_pem, full_pem=parts.full_pem)

    async def export_pkcs12(self, actor: Actor, certificate_id: str, password: str) -> bytes:
        """The leaf and chain as a PKCS#12 trust store encrypted under `password`."""
        _, bundle = await self._export(actor, certificate_id, "pkcs12", password)
        assert bundle is not None
        return bundle

    async def _export(
        self, actor: Actor, certificate_id: str, fmt: str, password: str | None
    ) -> tuple[pki_export.PemParts, bytes | None]:
        limit = self.export_limit
        now = self.ctx.clock.now()
        missing: str | None = None
        async with self.ctx.db.transaction() as conn:
            cert = await repo.get(conn, certificate_id)
            if cert is None:
                raise NotFoundError.of(RESOURCE, certificate_id)
            if limit > 0:
                used, oldest = await repo.actor_events_since(conn, actor.name, EXPORT_ACTIONS, now - EXPORT_WINDOW)
                if used >= limit:
                    wait = (oldest + EXPORT_WINDOW - now).total_seconds() if oldest else EXPORT_WINDOW.total_seconds()
                    raise RateLimitedError(
                        f"export limit of {limit} per hour reached for '{actor.name}'",
                        extra={"retry_after_seconds": max(1, int(wait) + 1)},
                    )
            version = await repo.latest_version(conn, certificate_id)
            if version is None:
                missing = f"certificate '{certificate_id}' has no issued version to export yet"
                await audit.record(
                    conn, self.ctx.clock, actor, "cert_export_failed", RESOURCE, certificate_id,
                    {"format": fmt, "error": "no issued version"},
                )
            else:
                parts = pki_export.pem_parts(version["pem_chain"])
                bundle = (
                    pki_export.pkcs12_truststore(version["pem_chain"], password, friendly_name=cert["name"])
                    if password is not None else None
                )
                details: dict[str, Any] = {
                    "serial": parts.serial_hex, "version_id": version["id"], "certificates_only": True,
                }
                if fmt == "pkcs12":
                    details["cipher"] = pki_export.PKCS12_CIPHER
                await audit.record(
                    conn, self.ctx.clock, actor, f"cert_export_{fmt}", RESOURCE, certificate_id, details
                )
        if missing is not None:
            # Raised after the commit so the failed attempt stays in the audit trail.
            raise NotFoundError(missing)
        return parts, bundle

    # ---- helpers ------------------------------------------------------------------------------
    async def _count(self, conn: AsyncConnection, flt: CertificateFilter) -> int:
        """Exact below COUNT_CACHE_MIN. Above it, a cached figure is served at once; when it is due (its age,
        `count_cache_seconds`, or sooner after a write through this process) one background task recounts,
        so no request ever waits for a full count after the first one for that filter. Big totals are shared
        through the database: a process whose figure is due takes a fresher one that another process (worker or
        replica) counted instead of counting again, and a process without a figure serves the shared one
        (SHARED_COUNT_SERVED_LIFETIMES)."""
        key = flt.key()
        entry = self._count_cache.get(key)
        if entry is not None:
            if entry.expires <= _now() and not entry.refreshing:
                entry.refreshing = True
                self._spawn(self._recount(key, flt, entry))
            return entry.total
        shared = None if key in self._small_counts else await self._shared_total(
            conn, flt, newer_than=0.0, lifetimes=SHARED_COUNT_SERVED_LIFETIMES)
        if shared is not None:  # served at once, like a cached figure; recounted in the background when due
            entry = self._remember_count(key, *shared)
            if entry is not None and (entry.expires <= _now() or shared[1] <= self._last_write_wall):
                entry.refreshing = True
                self._spawn(self._recount(key, flt, entry))
            return shared[0]
        counted_wall = _wall()
        total = await repo.count(conn, flt)
        self._remember_count(key, total, counted_wall)
        if total >= COUNT_CACHE_MIN:
            self._spawn(self._share(flt, total, counted_wall))
        return total

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._recounts.add(task)
        task.add_done_callback(self._recounts.discard)

    async def _recount(self, key: tuple[Any, ...], flt: CertificateFilter, entry: _CachedCount) -> None:
        try:
            async with self.ctx.db.read() as conn:
                shared = await self._shared_total(
                    conn, flt, newer_than=max(entry.counted_wall, self._last_write_wall), lifetimes=1.0)
                if shared is None:
                    counted_wall = _wall()
                    shared = (await repo.count(conn, flt, background=True), counted_wall)
                    await self._share(flt, *shared)
        except Exception:  # keep serving the previous figure; the next request tries again
            log.warning("recounting certificates failed", exc_info=True)
            entry.refreshing = False
            return
        self._remember_count(key, *shared)

    async def _shared_total(
        self, conn: AsyncConnection, flt: CertificateFilter, *, newer_than: float, lifetimes: float,
    ) -> tuple[int, float] | None:
        """The shared (total, counted_wall) for `flt` when it was counted after `newer_than` and is younger than
        `lifetimes` times its time in a cache (`count_cache_seconds`); else None."""
        found = await repo.shared_count(conn, repo.count_key(flt))
        if found is None:
            return None
        total, counted_wall = found
        if counted_wall <= newer_than or total < COUNT_CACHE_MIN \
                or _wall() - counted_wall >= lifetimes * count_cache_seconds(total):
            return None
        return found

    async def _share(self, flt: CertificateFilter, total: int, counted_wall: float) -> None:
        if total < COUNT_CACHE_MIN:
            return
        try:
            async with self.ctx.db.transaction() as conn:
                await repo.store_shared_count(conn, repo.count_key(flt), total, counted_wall)
                if counted_wall - self._shared_purged_at >= SHARED_COUNT_KEPT_SECONDS:
                    self._shared_purged_at = counted_wall
                    await repo.purge_shared_counts(conn, counted_wall - SHARED_COUNT_KEPT_SECONDS)
        except Exception:  # the figure is still cached here; other processes count for themselves
            log.warning("storing a shared certificate total failed", exc_info=True)

    def _remember_count(
        self, key: tuple[Any, ...], total: int, counted_wall: float | None = None,
    ) -> _CachedCount | None:
        if total >= COUNT_CACHE_MIN:
            if len(self._count_cache) > 1024:
                self._count_cache.clear()
            wall = _wall() if counted_wall is None else counted_wall
            counted_at = _now() - max(0.0, _wall() - wall)  # a shared figure is as old as it is
            kept = count_cache_seconds(total) * (1.0 - COUNT_CACHE_JITTER * random.random())
            entry = self._count_cache[key] = _CachedCount(counted_at + kept, total, counted_at, counted_wall=wall)
            self._small_counts.discard(key)
            return entry
        self._count_cache.pop(key, None)
        if len(self._small_counts) > 1024:
            self._small_counts.clear()
        self._small_counts.add(key)  # counted exactly in each request: no shared figure to look for
        return None

    async def settle_counts(self) -> None:
        """Wait for background recounts (tests, shutdown)."""
        while self._recounts:
            await asyncio.gather(*list(self._recounts), return_exceptions=True)

    def _writes_happened(self) -> None:
        # Totals become due for a recount soon; they are still served until it lands.
        self._last_write_wall = _wall()
        for entry in self._count_cache.values():
            soon = entry.counted_at + WRITE_RECOUNT_SHARE * count_cache_seconds(entry.total)
            entry.expires = min(entry.expires, soon)

    def _key(self) -> bytes:
        if self._cursor_key is None:
            settings = self.ctx.settings
            secret = settings.config_encryption_key or load_or_create_key_file(settings.data_dir / "config.key")
            # Derived from the shared config key, so a cursor made by one replica works on another.
            self._cursor_key = hashlib.sha256(b"certctl/list-cursor/v1\0" + secret.encode()).digest()
        return self._cursor_key

    def _encode_cursor(self, sort: Sort, values: list[Any]) -> str:
        body = orjson.dumps([_sort_token(sort), values])
        mac = hmac.new(self._key(), body, hashlib.sha256).digest()[:16]
        return _b64(body) + "." + _b64(mac)

    def _decode_cursor(self, cursor: str, sort: Sort) -> list[Any]:
        try:
            body_part, mac_part = cursor.split(".", 1)
            body, mac = _unb64(body_part), _unb64(mac_part)
        except (ValueError, binascii.Error):
            raise ValidationError("cursor is not valid; start again without one") from None
        expected = hmac.new(self._key(), body, hashlib.sha256).digest()[:16]
        if not hmac.compare_digest(mac, expected):
            raise ValidationError("cursor is not valid; start again without one")
        token, values = orjson.loads(body)
        if token != _sort_token(sort):
            raise ValidationError("cursor was made for another sort order; start again without one")
        if not isinstance(values, list):
            raise ValidationError("cursor is not valid; start again without one")
        return values


def _export_limit(env: Mapping[str, str]) -> int:
    raw = env.get("CERTCTL_CERT_EXPORT_RATE_LIMIT_PER_ACTOR_HR", "").strip()
    if not raw:
        return 50
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"CERTCTL_CERT_EXPORT_RATE_LIMIT_PER_ACTOR_HR: '{raw}' is not an integer") from None
    if value < 0:
        raise SettingsError("CERTCTL_CERT_EXPORT_RATE_LIMIT_PER_ACTOR_HR must be >= 0 (0 disables the limit)")
    return value


def parse_sort(raw: str | None) -> Sort:
    if raw is None or raw.strip() == "":
        return Sort()
    text = raw.strip()
    descending = text.startswith("-")
    name = text.lstrip("+-")
    column = SORT_FIELDS.get(name)
    if column is None:
        allowed = "notAfter, expiresAt, createdAt, updatedAt, commonName, name, status, environment"
        raise ValidationError(f"sort: unknown field '{name}'; expected one of: {allowed} (prefix - for descending)")
    return Sort(column=column, descending=descending)


def parse_fields(raw: str | None) -> tuple[str, ...]:
    """Requested fields in wire order; `id` is always included."""
    if raw is None or raw.strip() == "":
        return CERTIFICATE_FIELDS
    asked = {part.strip() for part in raw.split(",") if part.strip()}
    unknown = sorted(asked.difference(CERTIFICATE_FIELDS))
    if unknown:
        raise ValidationError(f"fields: unknown field(s) {', '.join(unknown)}")
    asked.add("id")
    return tuple(f for f in CERTIFICATE_FIELDS if f in asked)


def _sort_token(sort: Sort) -> str:
    return ("-" if sort.descending else "") + sort.column


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _model(row: Row, target_ids: list[str]) -> ManagedCertificate:
    return ManagedCertificate.model_validate({**row, "target_ids": target_ids})


def _audit_values(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k not in ("created_at", "updated_at", "expires_at")}


async def _ensure_name_free(conn: AsyncConnection, name: str, own_id: str | None) -> None:
    holder = await repo.name_owner(conn, name)
    if holder is not None and holder != own_id:
        raise ConflictError(f"a certificate named '{name}' already exists")


_REFERENCES = (
    ("owner_id", owners),
    ("team_id", teams),
    ("issuer_id", issuers),
    ("renewal_policy_id", renewal_policies),
    ("certificate_profile_id", certificate_profiles),
)


async def _check_references(conn: AsyncConnection, values: dict[str, Any]) -> None:
    """Every named record must exist (400 naming the first missing field); one query for all of them."""
    checks = [(name, table, values[name]) for name, table in _REFERENCES if values.get(name) is not None]
    missing = await rows.missing_references(conn, checks)
    if missing:
        raise ValidationError(f"{missing[0]} '{values[missing[0]]}' does not exist")


async def _check_targets(conn: AsyncConnection, target_ids: Sequence[str]) -> None:
    unknown = await repo.unknown_targets(conn, target_ids)
    if unknown:
        names = ", ".join(repr(t) for t in unknown)
        raise ValidationError(f"target_ids: target(s) {names} do not exist or are retired")

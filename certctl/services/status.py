"""Status publication: each CA's CRL (RFC 5280) and OCSP answers (RFC 6960), kept fresh after revocations.

CRLs
- Kept signed in `crl_cache`, one row per CA; the CRL number is the highest ever published for the
  CA (cache row or event log) plus one, so it never goes back, across restarts and servers.
- Rebuilt when missing, when older than the generation interval (`CERTCTL_CRL_GENERATION_INTERVAL`,
  1 h; nextUpdate is thisUpdate + 24 h, so a CRL is stale once `next_update - (24 h - interval)` is
  past), or when the CA's revocation rows no longer number `revocations_seen`.
- One rebuild per CA at a time: an asyncio lock per CA in the process, and inside the transaction
  an advisory lock on PostgreSQL (SQLite write transactions already exclude each other). Whoever
  waited re-checks staleness under the lock, so a burst of readers or servers rebuilds once.
- `revoked()` (called by the revoke path after its commit) rebuilds the CRLs of those CAs in a
  background task, seconds at most. The count check on reads (at most every few seconds per CA and
  process) and the scheduler's `regenerate_all()` cover a revoking process that died before that.

OCSP
- Answers without a nonce are cached per (responder id in the URL, request bytes): the cached path
  is one dict lookup. They are re-signed after `OCSP_REUSE` (5 min) at the latest, so thisUpdate
  stays recent; an answer holding an `unknown` is kept for a second only (the serial may be issued).
- Answers with a nonce are built and signed for the request (RFC 6960 §4.4.1).
- Freshness across processes: every process reads the revocations recorded since its last look
  (`created_at` index range scan) at most every 250 ms, triggered by OCSP traffic, and drops cached
  answers for exactly those serials. A request never answers from a view older than 500 ms: past
  that it waits for the read in flight (unless the database is failing, when cached answers are
  still served: nothing can be revoked without it). With the revoke path's own `revoked()` dropping
  the whole CA's answers at once, a revocation shows in OCSP within a second on every server. The
  read overlaps the previous one by `POLL_OVERLAP` to catch transactions that committed late.
- A build that raced an invalidation of its CA is not cached (per-CA epoch), so a "good" computed
  just before a revocation cannot outlive it.
- Each CA answers through a delegated responder certificate (RFC 6960 §4.2.2.2), ECDSA P-256,
  issued by the CA for `CERTCTL_OCSP_RESPONDER_VALIDITY` (30 d), replaced when within
  `CERTCTL_OCSP_RESPONDER_ROTATION_GRACE` (7 d) of expiry or when its key cannot be loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy.ext.asyncio import AsyncConnection

from certctl.domain.actor import Actor
from certctl.domain.enums import IssuerType
from certctl.domain.errors import CertctlError, NotFoundError, NotSupportedError, UnavailableError
from certctl.domain.ids import new_id, slugify
from certctl.pki import ocsp
from certctl.pki.ca import IssuingCA
from certctl.pki.crl import DEFAULT_CRL_VALIDITY, RevokedEntry, SignedCRL, build_crl, crl_etag, keep_on_crl
from certctl.pki.serials import canonical_serial
from certctl.pki.signers import SignerError
from certctl.services import audit
from certctl.services.ca_service import CAService
from certctl.services.context import ServiceContext
from certctl.store import ca_repo, rows, status_repo
from certctl.store.rows import Row
from certctl.store.schema import issuers

log = logging.getLogger("certctl.status")

CRL_VALIDITY: Final = DEFAULT_CRL_VALIDITY
DEFAULT_CRL_INTERVAL: Final = timedelta(hours=1)
CRL_COUNT_CHECK_SECONDS: Final = 5.0  # how often a CRL read also counts the CA's revocations (per process)
CRL_THREAD_THRESHOLD: Final = 2_000  # bigger CRLs are encoded and signed off the event loop

OCSP_VALIDITY: Final = timedelta(hours=1)  # nextUpdate = thisUpdate + 1 h (protocols.md §9)
OCSP_REUSE: Final = timedelta(minutes=5)
OCSP_REUSE_UNKNOWN: Final = timedelta(seconds=1)
OCSP_CACHE_MAX: Final = 50_000
POLL_INTERVAL: Final = 0.25
POLL_MAX_STALENESS: Final = 0.5  # + the read's own time: under 1 s even when the database is slow to answer
POLL_OVERLAP: Final = timedelta(seconds=10)
DEFAULT_OCSP_LIMIT_PER_IP_MIN: Final = 1000
TARGET_TTL: Final = 5.0  # an issuer id in a URL is re-resolved to its issuing CA after this many seconds


@dataclass(frozen=True)
class CRLAnswer:
    der: bytes
    etag: str
    this_update: datetime
    next_update: datetime
    number: int


@dataclass(frozen=True, slots=True)
class OCSPAnswer:
    der: bytes
    cacheable: bool = False  # a successful answer without a nonce: HTTP caches may keep it until next_update
    this_update: datetime | None = None
    next_update: datetime | None = None


MALFORMED: Final = OCSPAnswer(ocsp.MALFORMED_REQUEST)
UNAUTHORIZED: Final = OCSPAnswer(ocsp.UNAUTHORIZED)
INTERNAL_ERROR: Final = OCSPAnswer(ocsp.INTERNAL_ERROR)
TRY_LATER: Final = OCSPAnswer(ocsp.TRY_LATER)


@dataclass(slots=True)
class _Cached:
    answer: OCSPAnswer
    ca_id: str
    serials: frozenset[str]
    reuse_until: datetime


@dataclass
class _Poll:
    """What this process has seen of the revocation log (see the module notes)."""

    watermark: datetime | None = None
    seen: dict[tuple[str, str], datetime] = field(default_factory=dict)
    done_at: float = float("-inf")  # monotonic start of the last successful read
    failed: bool = False
    task: asyncio.Task[None] | None = None


def parse_duration(name: str, raw: str | None, default: timedelta) -> timedelta:
    """`3600`, `90s`, `30m`, `1h`, `1h30m`, `7d` (Go-style durations plus days)."""
    if raw is None or not raw.strip():
        return default
    text = raw.strip().lower()
    if text.isdigit():
        seconds = int(text)
    else:
        parts = re.findall(r"(\d+)(d|h|m|s)", text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise ValueError(f"{name}: '{raw}' is not a duration like 90s, 30m, 1h or 7d")
        unit = {"d": 86400, "h": 3600, "m": 60, "s": 1}
        seconds = sum(int(n) * unit[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"{name}: must be longer than zero")
    return timedelta(seconds=seconds)


class StatusService:
    def __init__(self, ctx: ServiceContext, cas: CAService) -> None:
        self.ctx = ctx
        self.cas = cas
        env = ctx.settings.extra
        self.crl_interval = parse_duration("CERTCTL_CRL_GENERATION_INTERVAL",
                                           env.get("CERTCTL_CRL_GENERATION_INTERVAL"), DEFAULT_CRL_INTERVAL)
        if self.crl_interval >= CRL_VALIDITY:
            raise ValueError("CERTCTL_CRL_GENERATION_INTERVAL: must be shorter than the CRL validity (24h)")
        self.responder_validity = parse_duration("CERTCTL_OCSP_RESPONDER_VALIDITY",
                                                 env.get("CERTCTL_OCSP_RESPONDER_VALIDITY"), ocsp.RESPONDER_VALIDITY)
        self.responder_grace = parse_duration("CERTCTL_OCSP_RESPONDER_ROTATION_GRACE",
                                              env.get("CERTCTL_OCSP_RESPONDER_ROTATION_GRACE"),
                                              ocsp.RESPONDER_ROTATION_GRACE)
        if self.responder_grace >= self.responder_validity:
            raise ValueError("CERTCTL_OCSP_RESPONDER_ROTATION_GRACE: must be shorter than the responder validity")
        raw_limit = (env.get("CERTCTL_OCSP_RATE_LIMIT_PER_IP_MIN") or "").strip()
        if raw_limit and (not raw_limit.isdigit()):
            raise ValueError(f"CERTCTL_OCSP_RATE_LIMIT_PER_IP_MIN: '{raw_limit}' is not 0 (no limit) or a number")
        # OCSP requests per source IP and minute (protocols.md §4); enforced by the protocol front end.
        self.ocsp_limit_per_ip_min = int(raw_limit) if raw_limit else DEFAULT_OCSP_LIMIT_PER_IP_MIN
        # CRLs
        self._crl_locks: dict[str, asyncio.Lock] = {}
        self._crls: dict[str, CRLAnswer] = {}
        self._counted_at: dict[str, float] = {}
        self._dirty: set[str] = set()
        self._rebuilds: dict[str, asyncio.Task[None]] = {}
        # OCSP
        self._ocsp: dict[tuple[str, bytes], _Cached] = {}
        self._inflight: dict[tuple[str, bytes], asyncio.Future[OCSPAnswer]] = {}
        self._epochs: dict[str, int] = {}
        self._responders: dict[str, ocsp.Responder] = {}
        self._responder_locks: dict[str, asyncio.Lock] = {}
        self._loaded: dict[str, IssuingCA] = {}
        self._hashes: dict[str, ocsp.IssuerHashes] = {}
        self._targets: dict[str, tuple[str, float]] = {}
        self._poll = _Poll()

    # ---- resolving the id in the URL ------------------------------------------------------------
    async def _resolve(self, target: str) -> str:
        """A CA id as is; an issuer id → that issuer's issuing CA (its root is created on first use)."""
        known = self._targets.get(target)
        if known is not None and known[1] > time.monotonic():
            return known[0]
        async with self.ctx.db.read() as conn:
            ca_row = await ca_repo.get_ca(conn, target)
            if ca_row is not None:
                ttl = float("inf")
                ca_id = target
            else:
                issuer = await rows.get_row(conn, issuers, target)
                if issuer is None:
                    raise NotFoundError.of("issuer", target)
                if issuer["type"] != IssuerType.GENERIC_CA.value:
                    raise NotSupportedError(f"issuer '{target}' is a {issuer['type']} issuer; its CA publishes "
                                            "its own revocation status")
                ca_id = (await self.cas.issuing_ca_row(conn, issuer))["id"]
                ttl = TARGET_TTL
        self._targets[target] = (ca_id, time.monotonic() + ttl)
        return ca_id

    async def _ca(self, ca_id: str, conn: AsyncConnection | None = None) -> IssuingCA:
        """The signing view of a CA; its certificate and key never change, so it is kept for good."""
        ca = self._loaded.get(ca_id)
        if ca is None:
            if conn is None:
                async with self.ctx.db.read() as own:
                    ca = await self.cas.load_by_id(own, ca_id)
            else:
                ca = await self.cas.load_by_id(conn, ca_id)
            self._loaded[ca_id] = ca
        return ca

    async def ca_certificate(self, issuer_or_ca_id: str) -> bytes:
        """DER of the CA certificate behind an id (the target of the leaves' AIA caIssuers URL)."""
        ca = await self._ca(await self._resolve(issuer_or_ca_id))
        return ca.cert.public_bytes(serialization.Encoding.DER)

    # ---- CRL ------------------------------------------------------------------------------------
    def _stale(self, meta: Row, now: datetime, *, slack: float = 0.0) -> bool:
        """Older than the generation interval, i.e. past next_update minus (validity - interval)."""
        margin = CRL_VALIDITY - self.crl_interval * (1.0 - slack)
        return bool(now >= meta["next_update"] - margin)

    async def crl_for(self, issuer_or_ca_id: str) -> CRLAnswer:
        ca_id = await self._resolve(issuer_or_ca_id)
        now = self.ctx.clock.now()
        async with self.ctx.db.read() as conn:
            meta = await status_repo.crl_meta(conn, ca_id)
            fresh = meta is not None and not self._stale(meta, now)
            if fresh and meta is not None and time.monotonic() - self._counted_at.get(ca_id, 0.0) > \
                    CRL_COUNT_CHECK_SECONDS:
                fresh = await status_repo.count_revocations(conn, ca_id) == meta["revocations_seen"]
                self._counted_at[ca_id] = time.monotonic()
            if fresh and meta is not None:
                local = self._crls.get(ca_id)
                if local is not None and local.etag == meta["etag"]:
                    return local
                found = await status_repo.crl_der(conn, ca_id)
                if found is not None:
                    return self._keep(ca_id, found[0], meta)
        answer, _ = await self._regenerate(ca_id, "on_read")
        return answer

    def _keep(self, ca_id: str, der: bytes, meta: Row) -> CRLAnswer:
        answer = CRLAnswer(der=der, etag=crl_etag(der), this_update=meta["this_update"],
                           next_update=meta["next_update"], number=int(meta["crl_number"]))
        self._crls[ca_id] = answer
        return answer

    async def _regenerate(self, ca_id: str, trigger: str, *, force: bool = False,
                          slack: float = 0.0) -> tuple[CRLAnswer, bool]:
        """(the CA's current CRL, whether it was built now). One at a time per CA, here and across servers."""
        lock = self._crl_locks.setdefault(ca_id, asyncio.Lock())
        async with lock:
            started = time.perf_counter()
            now = self.ctx.clock.now()
            issuer_id = ""
            try:
                async with self.ctx.db.transaction() as conn:
                    await status_repo.lock(conn, f"crl:{ca_id}")
                    meta = await status_repo.crl_meta(conn, ca_id)
                    count = await status_repo.count_revocations(conn, ca_id)
                    if (not force and meta is not None and not self._stale(meta, now, slack=slack)
                            and count == meta["revocations_seen"]):
                        found = await status_repo.crl_der(conn, ca_id)
                        if found is not None:  # rebuilt by someone else while we waited
                            self._counted_at[ca_id] = time.monotonic()
                            return self._keep(ca_id, found[0], meta), False
                    ca = await self._ca(ca_id, conn)
                    issuer_id = ca.issuer_id
                    revocations = await status_repo.revocations_for_crl(conn, ca_id)
                    number = await status_repo.highest_crl_number(conn, ca_id) + 1
                    signed = await self._build_crl(ca, revocations, number, now)
                    etag = crl_etag(signed.der)
                    await status_repo.save_crl(conn, {
                        "ca_id": ca_id, "issuer_id": ca.issuer_id, "crl_number": signed.number,
                        "this_update": signed.this_update, "next_update": signed.next_update, "crl_der": signed.der,
                        "etag": etag, "entries": signed.entries, "revocations_seen": len(revocations),
                        "generated_at": now,
                    })
                    await status_repo.insert_crl_event(conn, {
                        "id": new_id("crlgen"), "ca_id": ca_id, "issuer_id": ca.issuer_id, "crl_number": signed.number,
                        "entries": signed.entries, "duration_ms": int((time.perf_counter() - started) * 1000),
                        "trigger": trigger, "error": None, "created_at": now,
                    })
            except Exception as exc:
                await self._record_failure(ca_id, issuer_id, trigger, exc, started, now)
                raise
            self._counted_at[ca_id] = time.monotonic()
            answer = CRLAnswer(der=signed.der, etag=etag, this_update=signed.this_update,
                               next_update=signed.next_update, number=signed.number)
            self._crls[ca_id] = answer
            log.info("CRL generated", extra={"ca_id": ca_id, "crl_number": signed.number, "entries": signed.entries,
                                             "trigger": trigger})
            return answer, True

    async def _build_crl(self, ca: IssuingCA, revocations: Sequence[Any], number: int, now: datetime) -> SignedCRL:
        def build() -> SignedCRL:
            entries = [
                RevokedEntry(int(serial, 16), revoked_at, reason_code)
                for serial, revoked_at, reason_code, not_after, short_lived in revocations
                if keep_on_crl(not_after=not_after, short_lived=short_lived, this_update=now)
            ]
            return build_crl(ca, entries, number=number, this_update=now, next_update=now + CRL_VALIDITY)

        if len(revocations) > CRL_THREAD_THRESHOLD:
            return await asyncio.to_thread(build)  # keep OCSP and the API answering meanwhile
        return build()

    async def _record_failure(self, ca_id: str, issuer_id: str, trigger: str, exc: BaseException, started: float,
                              now: datetime) -> None:
        message = exc.message if isinstance(exc, CertctlError) else f"{type(exc).__name__}: {exc}"[:500]
        if isinstance(exc, SignerError):
            message = f"signer error: {exc}"[:500]
        log.error("CRL generation failed", extra={"ca_id": ca_id, "trigger": trigger, "error": message})
        try:
            async with self.ctx.db.transaction() as conn:
                await status_repo.insert_crl_event(conn, {
                    "id": new_id("crlgen"), "ca_id": ca_id, "issuer_id": issuer_id, "crl_number": None,
                    "entries": 0, "duration_ms": int((time.perf_counter() - started) * 1000), "trigger": trigger,
                    "error": message, "created_at": now,
                })
        except Exception:  # the database itself may be what failed; the log line above stands
            log.warning("could not record the failed CRL generation", extra={"ca_id": ca_id})

    async def regenerate_all(self) -> dict[str, int]:
        """The scheduler's tick: rebuild every CA's CRL that is due. Returns counts by outcome."""
        now = self.ctx.clock.now()
        async with self.ctx.db.read() as conn:
            all_cas = await ca_repo.all_cas(conn)
        outcome = {"generated": 0, "fresh": 0, "failed": 0}
        for row in all_cas:
            if row["not_after"] <= now:
                continue  # an expired CA's certificates have all expired too
            try:
                # 10% slack: a tick that comes a little early still rebuilds an hour-old CRL.
                _, built = await self._regenerate(row["id"], "scheduled", slack=0.1)
            except Exception:
                outcome["failed"] += 1
                log.exception("scheduled CRL generation failed", extra={"ca_id": row["id"]})
                continue
            outcome["generated" if built else "fresh"] += 1
        return outcome

    # ---- after a revocation ---------------------------------------------------------------------
    async def revoked(self, ca_ids: set[str]) -> None:
        """Called after a revocation committed: OCSP answers of these CAs dropped now, CRLs rebuilt soon."""
        self._invalidate(cas=set(ca_ids))
        for ca_id in ca_ids:
            self._dirty.add(ca_id)
            task = self._rebuilds.get(ca_id)
            if task is None or task.done():
                self._rebuilds[ca_id] = asyncio.get_running_loop().create_task(self._rebuild_while_dirty(ca_id))

    async def _rebuild_while_dirty(self, ca_id: str) -> None:
        # A revocation that lands while a rebuild runs may have missed it: go round again.
        while ca_id in self._dirty:
            self._dirty.discard(ca_id)
            try:
                await self._regenerate(ca_id, "revocation")
            except Exception:
                log.exception("CRL rebuild after revocation failed; the next read or tick retries",
                              extra={"ca_id": ca_id})

    async def settle(self) -> None:
        """Wait for the background CRL rebuilds (tests, shutdown)."""
        while pending := [t for t in self._rebuilds.values() if not t.done()]:
            await asyncio.gather(*pending, return_exceptions=True)

    async def aclose(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.settle(), timeout=10)
        tasks = [t for t in (*self._rebuilds.values(), self._poll.task) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ---- OCSP -----------------------------------------------------------------------------------
    async def ocsp_response(self, issuer_or_ca_id: str, request_der: bytes, now: datetime | None = None) -> OCSPAnswer:
        """The DER OCSPResponse for a DER OCSPRequest sent to the responder of an issuer or CA id."""
        await self._fresh_revocations()
        now = now or self.ctx.clock.now()
        key = (issuer_or_ca_id, request_der)
        cached = self._ocsp.get(key)
        if cached is not None and now < cached.reuse_until:
            return cached.answer
        pending = self._inflight.get(key)
        if pending is not None:  # the same request is being answered: share it
            return await asyncio.shield(pending)
        future: asyncio.Future[OCSPAnswer] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            answer = await self._answer(key, now)
        except UnavailableError:
            answer = TRY_LATER  # RFC 6960 §2.3: the database is out of reach for now
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception:
            log.exception("OCSP answer failed", extra={"target": issuer_or_ca_id})
            answer = INTERNAL_ERROR
        finally:
            del self._inflight[key]
        future.set_result(answer)
        return answer

    async def ocsp_for_serial(self, issuer_or_ca_id: str, serial_text: str, now: datetime | None = None) -> OCSPAnswer:
        """The reference's GET debug form: an answer for one hex serial, as for a SHA-1 CertID request."""
        try:
            serial = int(canonical_serial(serial_text), 16)
        except ValueError:
            return MALFORMED
        try:
            ca_id = await self._resolve(issuer_or_ca_id)
        except UnavailableError:
            return TRY_LATER
        except CertctlError:
            return UNAUTHORIZED
        request = ocsp.single_request(self._issuer_hashes(await self._ca(ca_id)).sha1_cert_id(serial))
        return await self.ocsp_response(issuer_or_ca_id, request, now)

    def _issuer_hashes(self, ca: IssuingCA) -> ocsp.IssuerHashes:
        found = self._hashes.get(ca.id)
        if found is None:
            found = self._hashes[ca.id] = ocsp.IssuerHashes.of(ca.cert)
        return found

    async def _answer(self, key: tuple[str, bytes], now: datetime) -> OCSPAnswer:
        target, request_der = key
        try:
            request = ocsp.parse_request(request_der)
        except ocsp.MalformedRequestError:
            return MALFORMED
        try:
            ca_id = await self._resolve(target)
            ca = await self._ca(ca_id)
        except UnavailableError:
            raise
        except CertctlError:
            return UNAUTHORIZED  # RFC 6960 §2.3: not a responder for this issuer (unknown id, not our CA, ...)
        epoch = self._epochs.get(ca_id, 0)
        hashes = self._issuer_hashes(ca)
        ours = {c.serial: canonical_serial(c.serial) for c in request.cert_ids if c.serial >= 0 and hashes.matches(c)}
        if not ours:
            # Nothing asked about this CA: RFC 5019 §2.2.3 / RFC 6960 §2.3 "unauthorized". With some CertIDs
            # of this CA, the others are answered "unknown" (RFC 6960 §2.2).
            return UNAUTHORIZED
        async with self.ctx.db.read() as conn:
            found = await status_repo.serial_statuses(conn, ca_id, sorted(set(ours.values())))
        known: dict[str, Row] = {}
        for row in found:
            if row["kind"] == "r" and row["short_lived"]:
                continue  # short-lived certificates are never reported revoked (they are left off CRLs too)
            if row["serial_number"] not in known or row["kind"] == "r":
                known[row["serial_number"]] = row
        responder = await self._responder(ca, now)
        this_update = now.astimezone(UTC).replace(microsecond=0)
        next_update = this_update + OCSP_VALIDITY
        singles = []
        for cert_id in request.cert_ids:
            serial = ours.get(cert_id.serial) if hashes.matches(cert_id) else None
            status = known.get(serial) if serial is not None else None
            if status is None:
                singles.append(ocsp.SingleResponse(cert_id.der, "unknown", this_update, next_update))
            elif status["kind"] == "r":
                singles.append(ocsp.SingleResponse(cert_id.der, "revoked", this_update, next_update,
                                                   status["revoked_at"], int(status["reason_code"] or 0)))
            else:
                singles.append(ocsp.SingleResponse(cert_id.der, "good", this_update, next_update))
        der = ocsp.build_response(responder, singles, produced_at=this_update,
                                  nonce_extension=request.nonce_extension)
        answer = OCSPAnswer(der, cacheable=request.nonce_extension is None, this_update=this_update,
                            next_update=next_update)
        if request.nonce_extension is None and self._epochs.get(ca_id, 0) == epoch:
            unknown = any(s.status == "unknown" for s in singles)
            self._remember(key, _Cached(answer, ca_id, frozenset(ours.values()),
                                        this_update + (OCSP_REUSE_UNKNOWN if unknown else OCSP_REUSE)))
        return answer

    def _remember(self, key: tuple[str, bytes], entry: _Cached) -> None:
        if len(self._ocsp) >= OCSP_CACHE_MAX:
            for old in list(self._ocsp)[: OCSP_CACHE_MAX // 10]:  # oldest first (insertion order)
                del self._ocsp[old]
        self._ocsp[key] = entry

    def _invalidate(self, *, cas: set[str] | None = None, serials: set[tuple[str, str]] | None = None) -> None:
        cas = cas or set()
        serials = serials or set()
        touched = cas | {ca for ca, _ in serials}
        for ca_id in touched:
            self._epochs[ca_id] = self._epochs.get(ca_id, 0) + 1
        if not touched:
            return
        for key, entry in list(self._ocsp.items()):
            if entry.ca_id in cas or (entry.ca_id in touched and any((entry.ca_id, s) in serials
                                                                      for s in entry.serials)):
                del self._ocsp[key]

    async def _fresh_revocations(self) -> None:
        poll = self._poll
        elapsed = time.monotonic() - poll.done_at
        if elapsed < POLL_INTERVAL:
            return
        task = poll.task
        if task is None or task.done():
            task = poll.task = asyncio.get_running_loop().create_task(self._read_revocations())
        if elapsed > POLL_MAX_STALENESS and not poll.failed:
            await asyncio.shield(task)

    async def _read_revocations(self) -> None:
        poll = self._poll
        started = time.monotonic()
        try:
            async with self.ctx.db.read() as conn:
                if poll.watermark is None:
                    poll.watermark = await status_repo.newest_revocation_time(conn) or datetime(1970, 1, 1, tzinfo=UTC)
                found = await status_repo.revocations_since(conn, poll.watermark - POLL_OVERLAP)
        except Exception:
            if not poll.failed:
                log.warning("cannot read new revocations; OCSP answers from cache meanwhile", exc_info=True)
            poll.failed = True
            # Try again after one interval, without making requests wait for it.
            poll.done_at = max(poll.done_at, time.monotonic() - POLL_MAX_STALENESS)
            return
        new: set[tuple[str, str]] = set()
        for row in found:
            key = (row["ca_id"], row["serial_number"])
            if row["ca_id"] is not None and key not in poll.seen:
                new.add(key)
            poll.seen[key] = row["created_at"]
            if row["created_at"] > poll.watermark:
                poll.watermark = row["created_at"]
        horizon = poll.watermark - POLL_OVERLAP
        for key, created in list(poll.seen.items()):
            if created < horizon:
                del poll.seen[key]
        if new:
            self._invalidate(serials=new)
        poll.failed = False
        poll.done_at = started

    # ---- the delegated responder ----------------------------------------------------------------
    async def _responder(self, ca: IssuingCA, now: datetime) -> ocsp.Responder:
        current = self._responders.get(ca.id)
        if current is not None and current.valid_at(now, grace=self.responder_grace):
            return current
        lock = self._responder_locks.setdefault(ca.id, asyncio.Lock())
        async with lock:
            current = self._responders.get(ca.id)
            if current is not None and current.valid_at(now, grace=self.responder_grace):
                return current
            async with self.ctx.db.read() as conn:
                row = await status_repo.get_responder(conn, ca.id)
            responder = self._usable(row, ca, now)
            if responder is None:
                responder = await self._issue_responder(ca, now)
            self._responders[ca.id] = responder
            return responder

    def _usable(self, row: Row | None, ca: IssuingCA, now: datetime) -> ocsp.Responder | None:
        """The stored responder if it is valid for a while yet, belongs to this CA and its key loads."""
        if row is None:
            return None
        try:
            cert = x509.load_pem_x509_certificate(row["cert_pem"].encode())
            responder = ocsp.Responder(cert, self.ctx.signers.load(row["key_driver_id"]))
        except (ValueError, SignerError) as exc:
            log.warning("OCSP responder of CA unusable; issuing a new one", extra={"ca_id": ca.id, "error": str(exc)})
            return None
        if not responder.valid_at(now, grace=self.responder_grace) or not ocsp.responder_fits(responder, ca):
            return None
        return responder

    async def _issue_responder(self, ca: IssuingCA, now: datetime) -> ocsp.Responder:
        async with self.ctx.db.transaction() as conn:
            await status_repo.lock(conn, f"ocsp-responder:{ca.id}")
            row = await status_repo.get_responder(conn, ca.id)
            existing = self._usable(row, ca, now)
            if existing is not None:  # another server issued one meanwhile
                return existing
            try:
                signer = self.ctx.signers.generate(
                    ocsp.RESPONDER_KEY_SPEC, f"ocsp-{slugify(ca.id)}-{now:%Y%m%d%H%M%S}-{secrets.token_hex(3)}")
                cert = ocsp.build_responder_certificate(ca, signer.public_key(), now, validity=self.responder_validity)
            except SignerError as exc:
                raise UnavailableError(f"the OCSP responder key of CA '{ca.id}' cannot be made: {exc}") from None
            await status_repo.save_responder(conn, {
                "ca_id": ca.id, "cert_pem": cert.public_bytes(serialization.Encoding.PEM).decode(),
                "key_driver_id": signer.ref, "not_before": cert.not_valid_before_utc,
                "not_after": cert.not_valid_after_utc, "created_at": now, "updated_at": now,
            })
            await audit.record(conn, self.ctx.clock, Actor.system(), "ocsp_responder_issued", "intermediate_ca",
                               ca.id, {"serial_number": format(cert.serial_number, "x"),
                                       "not_after": cert.not_valid_after_utc.isoformat(),
                                       "replaced": row is not None})
        log.info("OCSP responder certificate issued", extra={"ca_id": ca.id})
        return ocsp.Responder(cert, signer)

    # ---- admin ----------------------------------------------------------------------------------
    async def crl_cache_state(self) -> dict[str, Any]:
        """Per CA: whether a CRL is cached, its number and times, staleness, and the latest generation events."""
        now = self.ctx.clock.now()
        async with self.ctx.db.read() as conn:
            cached = await status_repo.crl_cache_rows(conn)
            out = []
            for row in cached:
                events = await status_repo.recent_crl_events(conn, row["ca_id"])
                present = row["crl_number"] is not None
                out.append({
                    "issuer_id": row["issuer_id"], "ca_id": row["ca_id"], "ca_name": row["ca_name"],
                    "ca_state": row["state"], "cache_present": present, "crl_number": row["crl_number"],
                    "this_update": row["this_update"], "next_update": row["next_update"],
                    "generated_at": row["generated_at"], "entries": row["entries"],
                    "revocations_seen": row["revocations_seen"], "etag": row["etag"],
                    "is_stale": (not present) or now >= row["next_update"],
                    "recent_events": [{str(k): v for k, v in e.items()} for e in events],
                })
        return {"cache_rows": out, "row_count": len(out), "generated_at": now}

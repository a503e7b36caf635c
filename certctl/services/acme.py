"""The ACME server's protocol steps (RFC 8555, RFC 8738 IP identifiers, RFC 9773 ARI): the registration
authority of the ACME front end. JWS parsing and signature checks live in `certctl.protocols.acme`; this
module decides what may happen and records it.

Sequences (each write is one transaction with its audit event):
- **nonces** (§6.5): a nonce is `expiry ‖ random ‖ HMAC(key, expiry ‖ random)`, so issuing one costs no
  database write and every replica can check it (the key is derived from the config encryption key that all
  replicas share). Spending it inserts it into `acme_nonces` (primary key): a second use anywhere is refused
  (`badNonce`); expired rows are swept by the GC.
- **accounts** (§7.3): one per (profile, key thumbprint); EAB (§7.3.4) checked with the profile's keys;
  key rollover (§7.3.5) re-keys the row; deactivation is final and cancels the account's pending orders and
  authorizations (§7.3.6).
- **orders** (§7.4): identifiers checked (dns, ip, wildcards), the profile's SAN patterns applied, rate limits
  hit; `trust_authenticated` profiles create the order `ready` with valid authorizations, `challenge` profiles
  create pending authorizations with http-01 / dns-01 / tls-alpn-01 challenges (128+ bit tokens).
- **challenges** (§7.5.1): a POST moves the challenge to `processing` and starts its validation as a task of its
  own (it completes even if the client goes away); the POST waits for it up to CERTCTL_ACME_SERVER_VALIDATION_WAIT
  (2 s) and answers with the outcome, else `processing` with a Retry-After. The outcome updates challenge,
  authorization and order in one transaction.
- **finalize** (§7.4): the CSR must ask for exactly the order's identifiers and pass the profile's CSR rules
  (`certctl.pki.csr_policy.check_csr`, the same checks as every other issuance path); it is then signed by the
  configured issuer's CA and stored as a managed certificate with source `ACME`: certificate row, version,
  audit `certificate_issued` and policy evaluation in one transaction.
- **revocation** (§7.6): by the owning account, an account of the profile holding valid authorizations for all
  of the certificate's identifiers, or the certificate's key; it goes through
  `CertificateActionService.revoke`, so CRL and OCSP change at once.
- **ARI** (RFC 9773): certificate id = base64url(AKI keyIdentifier) "." base64url(serial DER bytes).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
import struct
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from sqlalchemy.ext.asyncio import AsyncConnection

from certctl.domain import acme as A
from certctl.domain.acme import AcmeProblem, subproblem
from certctl.domain.actor import Actor
from certctl.domain.enums import CertificateStatus, ExtendedKeyUsage, IssuerType, RevocationReason
from certctl.domain.errors import ConflictError, NotFoundError, ValidationError
from certctl.domain.models.profiles import CertificateProfile
from certctl.observability import metrics
from certctl.pki.csr_policy import CSRRejected, check_csr
from certctl.pki.leaf import LeafRequest, build_leaf
from certctl.pki.serials import new_serial, serial_hex
from certctl.services import audit
from certctl.services.acme_settings import AcmeSettings
from certctl.services.ca_service import CAService, RootMissing
from certctl.services.certificate_actions import CertificateActionService
from certctl.services.context import ServiceContext
from certctl.services.policy_engine import evaluate_certificate
from certctl.store import acme_repo, audit_repo, issuance_repo

log = logging.getLogger("certctl.acme")
# Rows as the store returns them (RowMapping) or as this module rebuilds them (dicts).
Row = Mapping[Any, Any]

DEFAULT_VALIDITY = timedelta(days=90)
DEFAULT_EKUS = (ExtendedKeyUsage.SERVER_AUTH, ExtendedKeyUsage.CLIENT_AUTH)
_DNS_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_EMAIL = re.compile(r"^[^@\s,]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$")
# RFC 5280 §5.3.1 reason codes ACME clients may send (§7.6); 7 is unused and 8 (removeFromCRL) is not a reason.
_REASONS = {r.code: r for r in RevocationReason}
STALE_PROCESSING = timedelta(minutes=5)


# ---- small helpers ----------------------------------------------------------------------------------
def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64d(text: str) -> bytes:
    if not isinstance(text, str) or "=" in text or "+" in text or "/" in text:
        raise ValueError("not unpadded base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64url") from exc


def _rand_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_urlsafe(12)}"


def serial_der_bytes(serial: int) -> bytes:
    """The content octets of the DER INTEGER (two's complement, minimal, a leading 0x00 when the top bit is set)."""
    return serial.to_bytes(serial.bit_length() // 8 + 1, "big", signed=True) if serial else b"\x00"


def ari_cert_id(cert: x509.Certificate) -> str:
    """RFC 9773 §4.1: base64url(AKI keyIdentifier) "." base64url(serial DER bytes)."""
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    if aki is None:
        raise ValueError("the certificate's AuthorityKeyIdentifier has no keyIdentifier")
    return f"{b64e(aki)}.{b64e(serial_der_bytes(cert.serial_number))}"


def parse_ari_cert_id(text: str) -> tuple[bytes, int]:
    aki_text, dot, serial_text = text.partition(".")
    try:
        if not dot or not aki_text or not serial_text:
            raise ValueError("no dot")
        aki, serial_bytes = b64d(aki_text), b64d(serial_text)
    except ValueError:
        raise AcmeProblem("malformed", "the certificate id is not base64url(AKI) \".\" base64url(serial)") from None
    serial = int.from_bytes(serial_bytes, "big", signed=True)
    if serial <= 0 or serial_der_bytes(serial) != serial_bytes:
        raise AcmeProblem("malformed", "the certificate id's serial is not a DER-encoded positive integer")
    return aki, serial


def normalize_identifier(raw: Any) -> dict[str, str]:
    """A checked, canonical identifier (RFC 8555 §9.7.7 dns, RFC 8738 ip); `rejectedIdentifier`/`malformed`."""
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str) or not isinstance(raw.get("value"), str):
        raise AcmeProblem("malformed", "an identifier is an object with string type and value")
    kind, value = raw["type"], raw["value"].strip()
    ident = {"type": kind, "value": value}
    if kind == "ip":
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            raise AcmeProblem("malformed", f"'{value}' is not an IP address", identifier=ident) from None
        return {"type": "ip", "value": address.compressed}
    if kind != "dns":
        raise AcmeProblem("unsupportedIdentifier", f"identifier type '{kind}' is not supported (dns, ip)",
                          identifier=ident)
    name = value.lower()
    if name.endswith("."):
        name = name[:-1]
    labels = name.split(".")
    body = labels[1:] if labels[0] == "*" else labels
    problem = AcmeProblem("rejectedIdentifier", f"'{value}' is not a valid DNS name", identifier=ident)
    if not body or len(name) > 253 or not all(_DNS_LABEL.match(label) for label in body):
        raise problem
    try:
        ipaddress.ip_address(name)
        raise AcmeProblem("rejectedIdentifier", f"'{value}' is an IP address; use an ip identifier",
                          identifier=ident)
    except ValueError:
        pass
    return {"type": "dns", "value": name}


def _general_name(ident: Mapping[str, str]) -> x509.GeneralName:
    if ident["type"] == "ip":
        return x509.IPAddress(ipaddress.ip_address(ident["value"]))
    return x509.DNSName(ident["value"])


def key_authorization(token: str, thumbprint: str) -> str:
    return f"{token}.{thumbprint}"


@dataclass
class OrderView:
    order: Row
    authzs: Sequence[Row]

    @property
    def status(self) -> str:
        return str(self.order["status"])


@dataclass
class AuthzView:
    authz: Row
    challenges: Sequence[Row]


@dataclass(frozen=True)
class IssuedChain:
    pem: str  # leaf + chain
    ca_id: str | None
    alternates: int  # how many alternate chains there are besides this one


@dataclass(frozen=True)
class RenewalWindow:
    start: datetime
    end: datetime
    retry_after: float


@dataclass
class _Tasks:
    running: set[asyncio.Task[None]] = field(default_factory=set)


class AcmeService:
    def __init__(
        self, ctx: ServiceContext, cas: CAService, actions: CertificateActionService,
        on_certificates_changed: Callable[[], None] | None = None, validator: Any = None,
    ) -> None:
        self.ctx = ctx
        self.cas = cas
        self.actions = actions
        self.settings = AcmeSettings.from_env(ctx.settings.extra)
        self._on_certificates_changed = on_certificates_changed
        self._nonce_key = self._derive_nonce_key()
        self._profiles: dict[tuple[str, Any], CertificateProfile] = {}
        self._profile_rows: dict[str, tuple[float, Row | None]] = {}
        self._inventory_ready = False
        self._tasks = _Tasks()
        self._last_gc = 0.0
        self._validator = validator
        self._issuing: tuple[float, Row, Any] | None = None
        self._driver_pool: acme_repo.DriverPool | None = None
        # The shared rate limiter (an object with `async hit(key, limit, window_seconds)` answering a decision
        # with `allowed` and `retry_after`); None: no limits.
        self.limiter: Any = None

    # ---- lifecycle ----------------------------------------------------------------------------------
    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        """A connection in autocommit: one round trip per statement, no BEGIN/ROLLBACK around single reads
        (and the single-statement nonce spend). Multi-statement writes use `ctx.db.transaction()`."""
        async with self.ctx.db.read() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            yield conn

    @asynccontextmanager
    async def _driver_transaction(self) -> AsyncIterator[AsyncConnection]:
        """PostgreSQL: one transaction shared by the store's driver-level statements and SQLAlchemy's (the
        connection is in autocommit mode, so SQLAlchemy opens none of its own)."""
        async with self._read() as conn, acme_repo.driver_transaction(conn):
            yield conn

    @property
    def validator(self) -> Any:
        if self._validator is None:
            from certctl.services.acme_validation import ChallengeValidator, ValidationSettings

            self._validator = ChallengeValidator(ValidationSettings.from_env(self.ctx.settings.extra))
        return self._validator

    async def settle(self) -> None:
        """Wait for the queued challenge validations (tests; shutdown)."""
        while self._tasks.running:
            await asyncio.gather(*list(self._tasks.running), return_exceptions=True)

    async def aclose(self) -> None:
        for task in list(self._tasks.running):
            task.cancel()
        await asyncio.gather(*list(self._tasks.running), return_exceptions=True)
        if self._driver_pool is not None:
            await self._driver_pool.aclose()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.running.add(task)
        task.add_done_callback(self._tasks.running.discard)
        return task

    def maybe_gc(self) -> None:
        """Run the sweep at most once per CERTCTL_ACME_SERVER_GC_INTERVAL, off the request path."""
        now = time.monotonic()
        if now - self._last_gc >= self.settings.gc_interval:
            self._last_gc = now
            self._spawn(self.gc())

    async def gc(self) -> dict[str, int]:
        """Spent nonces past expiry deleted, open orders past expiry invalidated, stuck validations re-run."""
        now = self.ctx.clock.now()
        try:
            async with self.ctx.db.transaction() as conn:
                nonces = await acme_repo.delete_expired_nonces(conn, now)
                orders = await acme_repo.expire_orders(conn, now)
                stale = await acme_repo.stale_processing_challenges(conn, now - STALE_PROCESSING, 100)
        except Exception:  # a failed sweep is retried at the next interval
            log.exception("ACME GC failed")
            return {}
        for challenge_id in stale:  # the process that started them went away
            self._spawn(self._validate(challenge_id))
        return {"nonces": nonces, "orders": orders, "revalidated": len(stale)}

    # ---- nonces -------------------------------------------------------------------------------------
    def _derive_nonce_key(self) -> bytes:
        settings = self.ctx.settings
        secret = settings.config_encryption_key
        if not secret:
            key_file = Path(settings.data_dir) / "config.key"
            secret = key_file.read_text().strip() if key_file.exists() else secrets.token_urlsafe(48)
        return hashlib.sha256(b"certctl acme nonce v1\x00" + secret.encode()).digest()

    def new_nonce(self) -> str:
        expiry = int(self.ctx.clock.now().timestamp() + self.settings.nonce_ttl)
        body = struct.pack(">Q", expiry) + secrets.token_bytes(16)
        return b64e(body + hmac.new(self._nonce_key, body, hashlib.sha256).digest()[:16])

    def _single(self) -> Any:
        """A connection for single statements: on PostgreSQL one of the ACME server's own driver connections
        (`acme_repo.DriverPool`: no SQLAlchemy pool checkout, no greenlet hop), each statement its own
        transaction; elsewhere (SQLite) a SQLAlchemy connection in autocommit."""
        if self.ctx.db.dialect != "postgresql":
            return self._read()
        if self._driver_pool is None:
            self._driver_pool = acme_repo.DriverPool(self.ctx.db, self.settings.database_conns)
        return self._driver_pool.connection()

    def _checked_nonce(self, nonce: str | None) -> tuple[str, datetime]:
        """The nonce's HMAC and expiry checked without the database: (nonce, expiry) or `badNonce`."""
        bad = AcmeProblem("badNonce", "the JWS nonce is unknown, expired or already used")
        try:
            raw = b64d(nonce or "")
        except ValueError:
            raise bad from None
        if len(raw) != 40:
            raise bad
        body, tag = raw[:24], raw[24:]
        if not hmac.compare_digest(tag, hmac.new(self._nonce_key, body, hashlib.sha256).digest()[:16]):
            raise bad
        expiry = struct.unpack(">Q", body[:8])[0]
        now = self.ctx.clock.now()
        if expiry <= now.timestamp():
            raise bad
        return nonce or "", datetime.fromtimestamp(expiry, now.tzinfo)

    async def spend_nonce(self, nonce: str | None, account_id: str | None = None) -> Row | None:
        """RFC 8555 §6.5.1: unknown, expired or already used nonces are `badNonce`. With `account_id` the
        account row comes back from the same round trip (None when there is no such account)."""
        value, expires = self._checked_nonce(nonce)
        async with self._single() as conn:  # on PostgreSQL one statement for nonce and account
            fresh, account = await acme_repo.spend_nonce(conn, value, expires, account_id)
        if not fresh:
            raise AcmeProblem("badNonce", "the JWS nonce is unknown, expired or already used")
        self.maybe_gc()
        return account

    async def spend_nonce_prefetch(
        self, nonce: str | None, account_id: str, kind: str, resource_id: str,
    ) -> tuple[Row | None, Any]:
        """spend_nonce for a read-only request (POST-as-GET of an `order`, `authz` or `cert`); on PostgreSQL the
        resource comes back from the same round trip, to hand to the service step once the signature verified
        (None elsewhere: the step reads it)."""
        if self.ctx.db.dialect != "postgresql":
            return await self.spend_nonce(nonce, account_id), None
        value, expires = self._checked_nonce(nonce)
        async with self._single() as conn:
            fresh, account, resource = await acme_repo.spend_nonce_prefetch(
                conn, value, expires, account_id, kind, resource_id)
        if not fresh:
            raise AcmeProblem("badNonce", "the JWS nonce is unknown, expired or already used")
        self.maybe_gc()
        return account, resource

    async def spend_nonce_for_key(self, nonce: str | None, profile_id: str, thumbprint: str) -> Row | None:
        """newAccount: the nonce spent and the profile's account of this key read in one round trip."""
        value, expires = self._checked_nonce(nonce)
        async with self._single() as conn:
            fresh, account = await acme_repo.spend_nonce_for_key(conn, value, expires, profile_id, thumbprint)
        if not fresh:
            raise AcmeProblem("badNonce", "the JWS nonce is unknown, expired or already used")
        self.maybe_gc()
        return account

    # ---- profiles -----------------------------------------------------------------------------------
    async def profile(self, profile_id: str) -> CertificateProfile:
        """The enabled profile behind a directory; read at most once a second per process."""
        cached = self._profile_rows.get(profile_id)
        now = time.monotonic()
        if cached is None or now - cached[0] > 1.0:
            async with self._read() as conn:
                fetched = await acme_repo.get_profile(conn, profile_id)
            cached = self._profile_rows[profile_id] = (now, fetched)
        row = cached[1]
        if row is None:
            raise AcmeProblem("malformed", f"ACME profile '{profile_id}' does not exist", 404)
        key = (row["id"], row["updated_at"])
        profile = self._profiles.get(key)
        if profile is None:
            profile = self._profiles[key] = CertificateProfile.model_validate(dict(row))
        if not profile.enabled:
            raise AcmeProblem("unauthorized", f"ACME profile '{profile_id}' is disabled", 403)
        return profile

    async def default_profile_id(self) -> str:
        """CERTCTL_ACME_SERVER_DEFAULT_PROFILE_ID, else the oldest enabled profile (created_at, then id)."""
        if self.settings.default_profile_id:
            return self.settings.default_profile_id
        async with self._read() as conn:
            found = await acme_repo.first_enabled_profile_id(conn)
        if found is None:
            raise AcmeProblem("userActionRequired",
                              "no certificate profile exists; create one or use /acme/profile/{id}/directory", 403)
        return found

    def eab_required(self, profile_id: str) -> bool:
        return self.settings.eab_required or profile_id in self.settings.eab_required_profiles

    # ---- rate limits --------------------------------------------------------------------------------
    async def _hit(self, key: str, limit: int, window: float, what: str) -> None:
        """One hit on a shared limit (`certctl.services.rate_limits`, wired as `limiter` by the container)."""
        if limit <= 0 or self.limiter is None:
            return
        decision = await self.limiter.hit(key, limit, window)
        if not decision.allowed:
            if key.startswith(("acme:orders:", "acme:identifier:")):
                metrics.acme_order("rate_limited")
            retry = max(1.0, float(decision.retry_after))
            raise AcmeProblem("rateLimited", f"too many {what}; retry after {int(retry + 0.999)} s", 429,
                              retry_after=retry)

    # ---- accounts -----------------------------------------------------------------------------------
    async def account(self, profile_id: str, account_id: str, row: Row | None = None, *, loaded: bool = False) -> Row:
        """The account behind a `kid`; it must belong to this profile and be valid (RFC 8555 §6.2).
        `loaded`: `row` was read already (with the nonce), None meaning there is no such account."""
        if not loaded:
            async with self._read() as conn:
                row = await acme_repo.get_account(conn, account_id)
        if row is None or row["profile_id"] != profile_id:
            raise AcmeProblem("accountDoesNotExist", "the JWS kid names no account of this profile", 400)
        if row["status"] != A.VALID:
            raise AcmeProblem("unauthorized", f"the account is {row['status']}", 401)
        return row

    async def new_account(
        self, profile_id: str, jwk: dict[str, Any], thumbprint: str, payload: Mapping[str, Any], url: str,
        existing: Row | None = None, *, looked_up: bool = False,
    ) -> tuple[Row, bool]:
        """RFC 8555 §7.3: returns (account, created). An existing key answers with its account.
        `looked_up`: `existing` was read already (with the nonce), None meaning the key has no account."""
        if not looked_up:
            async with self._read() as conn:
                existing = await acme_repo.account_by_thumbprint(conn, profile_id, thumbprint)
        if existing is not None:
            if existing["status"] != A.VALID:
                raise AcmeProblem("unauthorized", f"the account of this key is {existing['status']}", 401)
            return existing, False
        if payload.get("onlyReturnExisting") is True:
            raise AcmeProblem("accountDoesNotExist", "no account exists for this key", 400)
        contact = self._check_contact(payload.get("contact"))
        agreed = payload.get("termsOfServiceAgreed") is True
        if self.settings.tos_url and not agreed:
            raise AcmeProblem("userActionRequired", "the terms of service must be agreed to "
                              f"(termsOfServiceAgreed: true): {self.settings.tos_url}", 403,
                              headers={"Link": f'<{self.settings.tos_url}>;rel="terms-of-service"'})
        eab = payload.get("externalAccountBinding")
        if eab is None and self.eab_required(profile_id):
            raise AcmeProblem("externalAccountRequired", "this profile requires an external account binding", 400)
        await self._hit(f"acme:new-account:{profile_id}", self.settings.new_accounts_per_hour, 3600.0,
                        "new accounts")
        now = self.ctx.clock.now()
        account_id = _rand_id("acct")
        if eab is None and self.ctx.db.dialect == "postgresql":
            # The common case in one statement: account and audit event written together, or neither when the
            # same key registered at the same moment (then that account is the answer).
            values = {
                "id": account_id, "profile_id": profile_id, "thumbprint": thumbprint, "jwk": jwk,
                "status": A.VALID, "contact": contact, "terms_agreed": agreed, "eab_key_id": None,
                "created_at": now, "updated_at": now,
            }
            event = audit.build_event(self._actor(account_id), "acme_account_created", "acme_account", account_id,
                                      {"profile_id": profile_id, "thumbprint": thumbprint, "contact": contact,
                                       "eab_key_id": None, "terms_agreed": agreed}, now)
            async with self._single() as conn:
                if await acme_repo.insert_account_audited(conn, values, event):
                    return values, True
                raced = await acme_repo.account_by_thumbprint(conn, profile_id, thumbprint)
            if raced is None:
                raise ConflictError("the account could not be created; retry")
            return raced, False
        try:
            async with self.ctx.db.transaction() as conn:
                eab_key_id = await self._check_eab(conn, eab, profile_id, jwk, url, account_id, now) \
                    if eab is not None else None
                values = {
                    "id": account_id, "profile_id": profile_id, "thumbprint": thumbprint, "jwk": jwk,
                    "status": A.VALID, "contact": contact, "terms_agreed": agreed, "eab_key_id": eab_key_id,
                    "created_at": now, "updated_at": now,
                }
                await acme_repo.insert_account(conn, values)
                await audit.record(conn, self.ctx.clock, self._actor(account_id), "acme_account_created",
                                   "acme_account", account_id,
                                   {"profile_id": profile_id, "thumbprint": thumbprint, "contact": contact,
                                    "eab_key_id": eab_key_id, "terms_agreed": agreed})
        except ConflictError:  # the same key registered at the same moment: answer with that account
            async with self._read() as conn:
                raced = await acme_repo.account_by_thumbprint(conn, profile_id, thumbprint)
            if raced is None:
                raise
            return raced, False
        return values, True

    def _check_contact(self, raw: Any) -> list[str]:
        if raw is None:
            return []
        if not isinstance(raw, list) or not all(isinstance(c, str) for c in raw):
            raise AcmeProblem("malformed", "contact must be a list of URLs")
        if len(raw) > 10:
            raise AcmeProblem("malformed", "at most 10 contacts are accepted")
        for contact in raw:
            if not contact.startswith("mailto:"):
                raise AcmeProblem("unsupportedContact", f"contact '{contact}' is not a mailto: URL")
            address = contact.removeprefix("mailto:")
            if not _EMAIL.match(address) or "?" in address:
                raise AcmeProblem("invalidContact", f"contact '{contact}' is not a valid email address")
        return list(raw)

    async def _check_eab(
        self, conn: Any, eab: Any, profile_id: str, jwk: dict[str, Any], url: str, account_id: str, now: datetime,
    ) -> str:
        """RFC 8555 §7.3.4: a JWS with a MAC alg, kid = EAB key id, url = newAccount URL, payload = account JWK,
        HMAC under the key's secret; the key must belong to this profile (or to none) and be unused."""
        unauthorized = AcmeProblem("unauthorized", "the external account binding does not verify", 401)
        if not isinstance(eab, dict) or set(eab) != {"protected", "payload", "signature"} or \
                not all(isinstance(v, str) for v in eab.values()):
            raise AcmeProblem("malformed", "externalAccountBinding must be a flattened JWS")
        try:
            protected = orjson.loads(b64d(eab["protected"]))
            payload = orjson.loads(b64d(eab["payload"]))
            signature = b64d(eab["signature"])
        except (ValueError, orjson.JSONDecodeError):
            raise AcmeProblem("malformed", "externalAccountBinding is not base64url JSON") from None
        if not isinstance(protected, dict):
            raise AcmeProblem("malformed", "externalAccountBinding protected header is not an object")
        digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}.get(
            str(protected.get("alg")))
        if digest is None:
            raise AcmeProblem("badSignatureAlgorithm", "externalAccountBinding must use HS256, HS384 or HS512")
        if "nonce" in protected:
            raise AcmeProblem("malformed", "externalAccountBinding must not carry a nonce")
        if protected.get("url") != url:
            raise AcmeProblem("unauthorized", "externalAccountBinding url is not the newAccount URL", 401)
        if payload != jwk:
            raise AcmeProblem("unauthorized", "externalAccountBinding does not bind this account key", 401)
        key_id = protected.get("kid")
        if not isinstance(key_id, str):
            raise AcmeProblem("malformed", "externalAccountBinding has no kid")
        key_row = await acme_repo.get_eab_key(conn, key_id, for_update=True)
        if key_row is None or key_row["profile_id"] not in (None, profile_id):
            raise unauthorized
        secret = b64d(str(self.ctx.sealer.open(key_row["sealed_hmac_key"])["hmac_key"]))
        signing_input = (eab["protected"] + "." + eab["payload"]).encode()
        if not hmac.compare_digest(hmac.new(secret, signing_input, digest).digest(), signature):
            raise unauthorized
        if key_row["account_id"] is not None or not await acme_repo.bind_eab_key(conn, key_id, account_id, now):
            raise AcmeProblem("unauthorized", "this external account binding key is already used", 401)
        return key_id

    async def update_account(self, account: Row, payload: Mapping[str, Any]) -> Row:
        """RFC 8555 §7.3.2/§7.3.6: contact replaced, or status "deactivated"; `{}` changes nothing. Deactivation
        invalidates the account's pending, ready and processing orders and deactivates its pending authorizations
        in the same transaction (the audit event counts them)."""
        changes: dict[str, Any] = {}
        if "contact" in payload:
            changes["contact"] = self._check_contact(payload["contact"])
        if payload.get("termsOfServiceAgreed") is True and not account["terms_agreed"]:
            changes["terms_agreed"] = True
        if "status" in payload:
            if payload["status"] != A.DEACTIVATED:
                raise AcmeProblem("malformed", "an account's status can only be set to \"deactivated\"")
            changes["status"] = A.DEACTIVATED
        if not changes:
            return account
        now = self.ctx.clock.now()
        async with self.ctx.db.transaction() as conn:
            locked = await acme_repo.lock_account(conn, account["id"])
            if locked is None or locked["status"] != A.VALID:
                raise AcmeProblem("unauthorized", "the account is not valid", 401)
            await acme_repo.update_account(conn, account["id"], {**changes, "updated_at": now})
            details = dict(changes)
            if changes.get("status"):
                # RFC 8555 §7.3.6: the account's pending work is cancelled with it, in this transaction.
                orders, authzs = await acme_repo.cancel_account_work(conn, account["id"], now, {
                    "type": A.ERROR_NS + "unauthorized", "detail": "the account was deactivated"})
                details.update(orders_invalidated=orders, authorizations_deactivated=authzs)
            action = "acme_account_deactivated" if changes.get("status") else "acme_account_updated"
            await audit.record(conn, self.ctx.clock, self._actor(account["id"]), action, "acme_account",
                               account["id"], details)
            row = await acme_repo.get_account(conn, account["id"])
        assert row is not None
        return row

    async def key_change(self, account: Row, new_jwk: dict[str, Any], new_thumbprint: str, old_thumbprint: str) -> None:
        """RFC 8555 §7.3.5 after the front end checked the inner JWS: the oldKey must be the account's key,
        and the new key must not belong to another account of the profile (409 with its Location)."""
        if not hmac.compare_digest(old_thumbprint.encode(), str(account["thumbprint"]).encode()):
            raise AcmeProblem("malformed", "the inner JWS oldKey is not the account's current key")
        await self._hit(f"acme:key-change:{account['id']}", self.settings.key_changes_per_hour, 3600.0,
                        "key changes")
        now = self.ctx.clock.now()
        async with self.ctx.db.transaction() as conn:
            locked = await acme_repo.lock_account(conn, account["id"])
            if locked is None or locked["status"] != A.VALID:
                raise AcmeProblem("unauthorized", "the account is not valid", 401)
            if locked["thumbprint"] != account["thumbprint"]:
                raise AcmeProblem("malformed", "the account key changed concurrently", 409)
            other = await acme_repo.account_by_thumbprint(conn, account["profile_id"], new_thumbprint)
            if other is not None:
                problem = AcmeProblem("malformed", "the new key already belongs to an account", 409)
                problem.extra = {"account_id": other["id"]}
                raise problem
            await acme_repo.update_account(conn, account["id"], {
                "jwk": new_jwk, "thumbprint": new_thumbprint, "updated_at": now})
            await audit.record(conn, self.ctx.clock, self._actor(account["id"]), "acme_account_key_changed",
                               "acme_account", account["id"],
                               {"old_thumbprint": account["thumbprint"], "new_thumbprint": new_thumbprint})

    async def account_orders(self, account: Row, after: str | None, limit: int = 100) -> tuple[list[str], str | None]:
        async with self._read() as conn:
            ids = await acme_repo.order_ids_of_account(conn, account["id"], after=after, limit=limit + 1)
        more = len(ids) > limit
        ids = ids[:limit]
        return ids, (ids[-1] if more and ids else None)

    # ---- orders -------------------------------------------------------------------------------------
    async def new_order(self, account: Row, profile: CertificateProfile, payload: Mapping[str, Any]) -> OrderView:
        raw_identifiers = payload.get("identifiers")
        if not isinstance(raw_identifiers, list) or not raw_identifiers:
            raise AcmeProblem("malformed", "identifiers must be a non-empty list")
        if len(raw_identifiers) > 100:
            raise AcmeProblem("rejectedIdentifier", "at most 100 identifiers per order")
        if profile.requires_approval:
            raise AcmeProblem("unauthorized", f"profile '{profile.id}' requires an approval per issuance, "
                              "which ACME cannot wait for; use the API", 403)
        identifiers: list[dict[str, str]] = []
        problems: list[dict[str, Any]] = []
        for raw in raw_identifiers:
            try:
                ident = normalize_identifier(raw)
            except AcmeProblem as exc:
                problems.append(subproblem(exc.type, exc.message, exc.identifier or {
                    "type": str(raw.get("type", "")) if isinstance(raw, dict) else "",
                    "value": str(raw.get("value", "")) if isinstance(raw, dict) else ""}))
                continue
            if ident not in identifiers:
                identifiers.append(ident)
        patterns = [re.compile(p) for p in profile.required_san_patterns]
        for ident in identifiers:
            if ident["type"] == "dns" and patterns and not any(p.fullmatch(ident["value"]) for p in patterns):
                problems.append(subproblem("rejectedIdentifier",
                                           f"'{ident['value']}' matches none of the profile's SAN patterns", ident))
        if problems:
            first = problems[0]
            kind = first["type"].removeprefix(A.ERROR_NS)
            raise AcmeProblem(kind if len(problems) == 1 else "rejectedIdentifier",
                              "; ".join(p["detail"] for p in problems), subproblems=problems)
        not_before, not_after = self._order_validity(payload)
        replaced = await self._replaced_order(account, payload.get("replaces"), identifiers)
        now = self.ctx.clock.now()
        # Asked together: the shared limiter puts concurrent misses into one round trip.
        await asyncio.gather(
            self._hit(f"acme:orders:{account['id']}", self.settings.orders_per_hour, 3600.0, "new orders"),
            *(self._hit(f"acme:identifier:{ident['type']}:{ident['value']}", self.settings.identifier_orders_per_hour,
                        3600.0, f"orders for {ident['value']}") for ident in identifiers))
        trusted = profile.acme_auth_mode == "trust_authenticated"
        order_id = _rand_id("ord")
        expires = now + timedelta(seconds=self.settings.order_ttl)
        authz_expires = min(expires, now + timedelta(seconds=self.settings.authz_ttl))
        authzs: list[dict[str, Any]] = []
        challenges: list[dict[str, Any]] = []
        for ident in identifiers:
            wildcard = ident["value"].startswith("*.")
            authz_id = _rand_id("authz")
            authzs.append({
                "id": authz_id, "order_id": order_id, "account_id": account["id"], "identifier_type": ident["type"],
                "identifier_value": ident["value"][2:] if wildcard else ident["value"], "wildcard": wildcard,
                "status": A.VALID if trusted else A.PENDING, "expires_at": authz_expires,
                "created_at": now, "updated_at": now,
            })
            types = ["dns-01"] if wildcard else (["http-01", "tls-alpn-01"] if ident["type"] == "ip"
                                                 else ["http-01", "dns-01", "tls-alpn-01"])
            if trusted:
                types = types[:1]  # the record of a trusted authorization: one challenge, already valid
            for kind in types:
                challenges.append({
                    "id": _rand_id("chall"), "authz_id": authz_id, "type": kind,
                    "token": secrets.token_urlsafe(32),  # 256 bits (RFC 8555 §8.1 asks for at least 128)
                    "status": A.VALID if trusted else A.PENDING, "validated_at": now if trusted else None,
                    "error": None, "validation_record": None, "created_at": now, "updated_at": now,
                })
        order = {
            "id": order_id, "account_id": account["id"], "profile_id": profile.id,
            "status": A.READY if trusted else A.PENDING, "identifiers": identifiers,
            "not_before": not_before, "not_after": not_after, "expires_at": expires, "error": None,
            "certificate_id": None, "version_id": None,
            "replaces": payload.get("replaces") if replaced else None,
            "replaces_order_id": replaced["id"] if replaced else None, "created_at": now, "updated_at": now,
        }
        details = {"identifiers": identifiers, "profile_id": profile.id, "mode": profile.acme_auth_mode,
                   "replaces_order_id": order["replaces_order_id"]}
        if replaced is None and self.ctx.db.dialect == "postgresql":
            # The common case in one statement: the open-order limit checked and order, authorizations,
            # challenges and audit event written together, or nothing.
            event = audit.build_event(self._actor(account["id"]), "acme_order_created", "acme_order", order_id,
                                      details, now)
            async with self._single() as conn:
                written = await acme_repo.insert_order_audited(conn, order, authzs, challenges, event,
                                                               open_limit=self.settings.concurrent_orders)
            if not written:
                metrics.acme_order("rate_limited")
                raise AcmeProblem("rateLimited", f"at most {self.settings.concurrent_orders} open orders per "
                                  "account; finish or abandon one", 429, retry_after=60.0)
            metrics.acme_order("created")
            return OrderView(order, [{"id": a["id"], "status": a["status"], "expires_at": a["expires_at"]}
                                     for a in authzs])
        async with self.ctx.db.transaction() as conn:
            if self.settings.concurrent_orders and await acme_repo.count_open_orders(
                    conn, account["id"], now) >= self.settings.concurrent_orders:
                metrics.acme_order("rate_limited")
                raise AcmeProblem("rateLimited", f"at most {self.settings.concurrent_orders} open orders per "
                                  "account; finish or abandon one", 429, retry_after=60.0)
            if replaced is not None:
                current = await acme_repo.replacing_order(conn, replaced["id"])
                if current is not None:
                    if current["status"] != A.INVALID:
                        raise AcmeProblem("alreadyReplaced", "this certificate is already being replaced by "
                                          f"order {current['id']}", 409)
                    await acme_repo.update_order(conn, current["id"], {"replaces_order_id": None})
            await acme_repo.insert_order(conn, order, authzs, challenges)
            await audit.record(conn, self.ctx.clock, self._actor(account["id"]), "acme_order_created",
                               "acme_order", order_id, details)
        metrics.acme_order("created")
        return OrderView(order, [{"id": a["id"], "status": a["status"], "expires_at": a["expires_at"]}
                                 for a in authzs])

    def _order_validity(self, payload: Mapping[str, Any]) -> tuple[datetime | None, datetime | None]:
        values: list[datetime | None] = []
        for name in ("notBefore", "notAfter"):
            raw = payload.get(name)
            if raw is None:
                values.append(None)
                continue
            try:
                values.append(datetime.fromisoformat(str(raw).replace("Z", "+00:00")))
            except ValueError:
                raise AcmeProblem("malformed", f"{name} is not an RFC 3339 date") from None
            if values[-1].tzinfo is None:  # type: ignore[union-attr]
                raise AcmeProblem("malformed", f"{name} must carry a time zone")
        not_before, not_after = values
        if not_before and not_after and not_after <= not_before:
            raise AcmeProblem("malformed", "notAfter must be after notBefore")
        return not_before, not_after

    async def _replaced_order(self, account: Row, replaces: Any, identifiers: list[dict[str, str]]) -> Row | None:
        """RFC 9773 §5: `replaces` names a certificate of this account sharing an identifier with the order."""
        if replaces is None:
            return None
        if not isinstance(replaces, str):
            raise AcmeProblem("malformed", "replaces must be an ARI certificate id string")
        _version, order = await self._version_by_ari_id(replaces)
        if order is None or order["account_id"] != account["id"]:
            raise AcmeProblem("unauthorized" if order is not None else "malformed",
                              "replaces names no certificate issued to this account", 403 if order else 404)
        old = {(i["type"], i["value"]) for i in order["identifiers"]}
        if not old & {(i["type"], i["value"]) for i in identifiers}:
            raise AcmeProblem("malformed", "the order shares no identifier with the certificate it replaces")
        return order

    async def order(self, account: Row, order_id: str, found: Any = None) -> OrderView:
        """`found`: the order and its authorizations as read with the nonce (spend_nonce_prefetch)."""
        if found is None:
            async with self._single() as conn:
                found = await acme_repo.order_with_authzs(conn, order_id)
        order, authzs = found
        if order is None:
            raise AcmeProblem("malformed", "no such order", 404)
        self._own(account, order)
        return OrderView(self._expired(order), authzs)

    def _expired(self, order: Row) -> Row:
        if order["status"] in (A.PENDING, A.READY) and order["expires_at"] <= self.ctx.clock.now():
            return {**dict(order), "status": A.INVALID,
                    "error": {"type": A.ERROR_NS + "malformed", "detail": "the order expired"}}
        return order

    @staticmethod
    def _own(account: Row, resource: Row) -> None:
        if resource["account_id"] != account["id"]:
            raise AcmeProblem("unauthorized", "this resource belongs to another account", 403)

    # ---- authorizations and challenges --------------------------------------------------------------
    async def authorization(self, account: Row, authz_id: str, found: Any = None) -> AuthzView:
        """`found`: the authorization and its challenges as read with the nonce (spend_nonce_prefetch)."""
        if found is None:
            async with self._single() as conn:
                found = await acme_repo.authz_with_challenges(conn, authz_id)
        authz, challenges = found
        if authz is None:
            raise AcmeProblem("malformed", "no such authorization", 404)
        self._own(account, authz)
        if authz["status"] == A.PENDING and authz["expires_at"] <= self.ctx.clock.now():
            authz = {**dict(authz), "status": A.EXPIRED}
        return AuthzView(authz, challenges)

    async def deactivate_authorization(self, account: Row, authz_id: str) -> AuthzView:
        """RFC 8555 §7.5.2: a pending or valid authorization becomes deactivated (its order invalid)."""
        now = self.ctx.clock.now()
        async with self.ctx.db.transaction() as conn:
            authz = await acme_repo.get_authz(conn, authz_id, for_update=True)
            if authz is None:
                raise AcmeProblem("malformed", "no such authorization", 404)
            self._own(account, authz)
            if authz["status"] not in (A.PENDING, A.VALID):
                raise AcmeProblem("malformed", f"an authorization that is {authz['status']} cannot be deactivated")
            await acme_repo.update_authz(conn, authz_id, {"status": A.DEACTIVATED, "updated_at": now})
            order = await acme_repo.get_order(conn, authz["order_id"], for_update=True)
            if order is not None and order["status"] in (A.PENDING, A.READY):
                await acme_repo.update_order(conn, order["id"], {"status": A.INVALID, "updated_at": now, "error": {
                    "type": A.ERROR_NS + "unauthorized", "detail": "an authorization was deactivated"}})
            await audit.record(conn, self.ctx.clock, self._actor(account["id"]), "acme_authorization_deactivated",
                               "acme_authorization", authz_id, {"order_id": authz["order_id"]})
        return await self.authorization(account, authz_id)

    async def challenge(self, account: Row, challenge_id: str) -> tuple[Row, Row]:
        async with self._single() as conn:
            challenge, authz = await acme_repo.challenge_with_authz(conn, challenge_id)
        if challenge is None or authz is None:
            raise AcmeProblem("malformed", "no such challenge", 404)
        self._own(account, authz)
        return challenge, authz

    async def respond_challenge(self, account: Row, challenge_id: str) -> tuple[Row, Row]:
        """RFC 8555 §7.5.1: a pending challenge goes to processing and is validated by a task of its own; the
        answer waits for that task up to `validation_wait`, so a prompt validation is seen by the client's
        first poll instead of after a Retry-After."""
        if self.ctx.db.dialect == "postgresql":
            return await self._respond_challenge_pg(account, challenge_id)
        challenge, authz = await self.challenge(account, challenge_id)
        if challenge["status"] != A.PENDING:
            return challenge, authz  # already processing or decided: the answer shows its state
        if authz["status"] != A.PENDING or authz["expires_at"] <= self.ctx.clock.now():
            state = authz["status"] if authz["status"] != A.PENDING else "expired"
            raise AcmeProblem("malformed", f"the authorization is {state}")
        # CERTCTL_ACME_SERVER_RATE_LIMIT_CHALLENGE_RESPONSES_PER_HOUR needs no shared-store trip: only a pending
        # challenge's response starts a validation and the claim below is atomic, so each challenge is
        # validated at most once, within any limit of one or more.
        now = self.ctx.clock.now()
        async with self.ctx.db.transaction() as conn:
            locked = await acme_repo.get_challenge(conn, challenge_id, for_update=True)
            assert locked is not None
            if locked["status"] == A.PENDING:
                await acme_repo.update_challenge(conn, challenge_id, {"status": A.PROCESSING, "updated_at": now})
                started = True
            else:
                started = False
            after = await acme_repo.get_challenge(conn, challenge_id)
        assert after is not None
        if started:
            return await self._start_validation(challenge_id, after, None), authz
        return after, authz

    async def _respond_challenge_pg(self, account: Row, challenge_id: str) -> tuple[Row, Row]:
        """respond_challenge on PostgreSQL: read, checks and claim in one statement (the claim is made only for
        the owning account while the authorization is pending and unexpired; the checks below then explain a
        refusal from the same snapshot)."""
        now = self.ctx.clock.now()
        async with self._single() as conn:
            challenge, authz, claimed, authz_count = await acme_repo.respond_challenge(
                conn, challenge_id, account["id"], now)
        if challenge is None or authz is None:
            raise AcmeProblem("malformed", "no such challenge", 404)
        self._own(account, authz)
        if claimed:
            context = {"type": challenge["type"], "token": challenge["token"], "status": A.PROCESSING,
                       "identifier_type": authz["identifier_type"], "identifier_value": authz["identifier_value"],
                       "thumbprint": account["thumbprint"], "authz_id": authz["id"], "order_id": authz["order_id"],
                       "account_id": account["id"], "single": authz_count == 1}
            return await self._start_validation(challenge_id, challenge, context), authz
        if challenge["status"] != A.PENDING:
            return challenge, authz  # already processing or decided: the answer shows its state
        if authz["status"] == A.PENDING and authz["expires_at"] > now:
            # Claimed by a concurrent response after this statement's snapshot: answer with its state now.
            async with self._single() as conn:
                current, _ = await acme_repo.challenge_with_authz(conn, challenge_id)
            assert current is not None
            return current, authz
        state = authz["status"] if authz["status"] != A.PENDING else "expired"
        raise AcmeProblem("malformed", f"the authorization is {state}")

    async def _start_validation(self, challenge_id: str, claimed: Row, context: Row | None) -> Row:
        """The validation as a task of its own, waited for up to `validation_wait`: the challenge as recorded
        when it finished in time, else as claimed (processing)."""
        task = self._spawn(self._validate(challenge_id, context))
        if self.settings.validation_wait > 0:
            done, _ = await asyncio.wait({task}, timeout=self.settings.validation_wait)  # never cancels it
            if done and not task.cancelled() and task.exception() is None and task.result() is not None:
                return task.result()  # type: ignore[no-any-return]
        return claimed

    async def _validate(self, challenge_id: str, ctx: Row | None = None) -> Row | None:
        """Validate one processing challenge and record the outcome; returns the challenge as recorded.
        `ctx`: what validating needs, when the caller has it (else it is read)."""
        if ctx is None:
            async with self._read() as conn:
                ctx = await acme_repo.challenge_context(conn, challenge_id)
        if ctx is None or ctx["status"] != A.PROCESSING:
            return None
        try:
            outcome = await self.validator.validate(
                ctx["type"], ctx["identifier_type"], ctx["identifier_value"], ctx["token"],
                key_authorization(ctx["token"], ctx["thumbprint"]))
            valid, error_type, detail, record = outcome.valid, outcome.error_type, outcome.detail, outcome.record
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a validator bug must not leave the challenge processing forever
            log.exception("ACME challenge validation failed unexpectedly")
            valid, error_type, detail, record = False, "serverInternal", f"validation failed: {type(exc).__name__}", {}
        return await self.record_validation(challenge_id, valid, error_type, detail, record,
                                            ctx if ctx.get("single") else None)

    async def record_validation(
        self, challenge_id: str, valid: bool, error_type: str | None, detail: str, record: Mapping[str, Any],
        single: Row | None = None,
    ) -> Row | None:
        """One transaction: challenge, its authorization, the order (ready when all valid, invalid on a failure).
        Returns the challenge as recorded (None when it was no longer processing). `single`: the challenge's
        context when its order has one authorization (PostgreSQL then writes it all in one statement)."""
        now = self.ctx.clock.now()
        if self.ctx.db.dialect == "postgresql":
            if single is not None:
                return await self._record_single_pg(challenge_id, single, valid, error_type, detail, record, now)
            return await self._record_validation_pg(challenge_id, valid, error_type, detail, record, now)
        async with self.ctx.db.transaction() as conn:
            challenge = await acme_repo.get_challenge(conn, challenge_id, for_update=True)
            if challenge is None or challenge["status"] != A.PROCESSING:
                return None
            authz = await acme_repo.get_authz(conn, challenge["authz_id"], for_update=True)
            assert authz is not None
            order = await acme_repo.get_order(conn, authz["order_id"], for_update=True)
            assert order is not None
            changes = self._outcome_changes(valid, error_type, detail, record, now)
            error = changes["error"]
            await acme_repo.update_challenge(conn, challenge_id, changes)
            if authz["status"] == A.PENDING:
                await acme_repo.update_authz(conn, authz["id"], {
                    "status": A.VALID if valid else A.INVALID, "updated_at": now})
                if valid:  # RFC 8555 §7.1.6: the other challenges of a valid authorization are not needed
                    await acme_repo.set_other_challenges(conn, authz["id"], challenge_id, A.INVALID, now)
            if order["status"] == A.PENDING:
                if not valid:
                    await acme_repo.update_order(conn, order["id"], {"status": A.INVALID, "updated_at": now,
                                                                     "error": error})
                    metrics.acme_order("invalid")  # counted when this transaction commits
                else:
                    statuses = [a["status"] if a["id"] != authz["id"] else A.VALID
                                for a in await acme_repo.authz_ids_of_order(conn, order["id"])]
                    if all(s == A.VALID for s in statuses):
                        await acme_repo.update_order(conn, order["id"], {"status": A.READY, "updated_at": now})
            await audit.record(conn, self.ctx.clock, self._actor(authz["account_id"]), "acme_challenge_validated",
                               "acme_challenge", challenge_id,
                               {"type": challenge["type"], "identifier": authz["identifier_value"], "valid": valid,
                                "error_type": error_type, "detail": detail, "order_id": order["id"]})
        return {**dict(challenge), **changes}

    @staticmethod
    def _outcome_changes(
        valid: bool, error_type: str | None, detail: str, record: Mapping[str, Any], now: datetime,
    ) -> dict[str, Any]:
        error = None if valid else {"type": A.ERROR_NS + (error_type or "unauthorized"), "detail": detail,
                                    "status": 403 if error_type in (None, "unauthorized", "incorrectResponse")
                                    else 400}
        return {"status": A.VALID if valid else A.INVALID, "validated_at": now if valid else None,
                "error": error, "validation_record": [dict(record)] if record else None, "updated_at": now}

    async def _record_single_pg(
        self, challenge_id: str, ctx: Row, valid: bool, error_type: str | None, detail: str,
        record: Mapping[str, Any], now: datetime,
    ) -> Row | None:
        """record_validation on PostgreSQL for an order of one authorization: one statement."""
        changes = self._outcome_changes(valid, error_type, detail, record, now)
        event = audit.build_event(
            self._actor(ctx["account_id"]), "acme_challenge_validated", "acme_challenge", challenge_id,
            {"type": ctx["type"], "identifier": ctx["identifier_value"], "valid": valid,
             "error_type": error_type, "detail": detail, "order_id": ctx["order_id"]}, now)
        async with self._single() as conn:
            current, order_status = await acme_repo.record_single_outcome(
                conn, challenge_id, ctx["authz_id"], ctx["order_id"], changes, event)
        if order_status == A.INVALID:
            metrics.acme_order("invalid")
        return current

    async def _record_validation_pg(
        self, challenge_id: str, valid: bool, error_type: str | None, detail: str, record: Mapping[str, Any],
        now: datetime,
    ) -> Row | None:
        """record_validation on PostgreSQL: one transaction of two statements (lock, then every change)."""
        changes = self._outcome_changes(valid, error_type, detail, record, now)
        async with self.ctx.db.read() as conn, acme_repo.driver_transaction(conn):
            locked = await acme_repo.lock_outcome(conn, challenge_id)
            if locked is None or locked["challenge_status"] != A.PROCESSING:
                return None
            event = audit.build_event(
                self._actor(locked["account_id"]), "acme_challenge_validated", "acme_challenge", challenge_id,
                {"type": locked["type"], "identifier": locked["identifier_value"], "valid": valid,
                 "error_type": error_type, "detail": detail, "order_id": locked["order_id"]}, now)
            order_status = await acme_repo.record_outcome(conn, locked, challenge_id, changes, event)
            current, _ = await acme_repo.challenge_with_authz(conn, challenge_id)
        if order_status == A.INVALID:
            metrics.acme_order("invalid")
        return current

    # ---- finalize -----------------------------------------------------------------------------------
    async def finalize(self, account: Row, profile: CertificateProfile, order_id: str, csr_der: bytes) -> OrderView:
        for _ in range(3):
            try:
                return await self._finalize_once(account, profile, order_id, csr_der)
            except RootMissing as missing:  # the issuer's very first certificate: make its root, then again
                await self.cas.create_root(missing.issuer)
            except ConflictError as exc:
                if "serial" not in exc.message:
                    raise
        raise AcmeProblem("serverInternal", "could not draw a unique serial number; retry", 500)

    async def _finalize_once(
        self, account: Row, profile: CertificateProfile, order_id: str, csr_der: bytes,
    ) -> OrderView:
        try:
            csr = x509.load_der_x509_csr(csr_der)
        except ValueError:
            raise AcmeProblem("badCSR", "the CSR does not parse as DER PKCS#10") from None
        csr_pem = csr.public_bytes(serialization.Encoding.PEM).decode()
        now = self.ctx.clock.now()
        pg = self.ctx.db.dialect == "postgresql"
        authzs: Sequence[Row] = []
        async with (self._driver_transaction() if pg else self.ctx.db.transaction()) as conn:
            if pg:  # the order locked and its authorizations read in one statement
                locked, authzs = await acme_repo.lock_order_with_authzs(conn, order_id)
            else:
                locked = await acme_repo.get_order(conn, order_id, for_update=True)
            if locked is None:
                raise AcmeProblem("malformed", "no such order", 404)
            self._own(account, locked)
            order = self._expired(locked)
            if order["status"] != A.READY:
                raise AcmeProblem("orderNotReady", f"the order is {order['status']}, not ready", 403)
            issuer, ca = await self._issuing_ca(conn)
            validity = self._validity(issuer, profile, order, now)
            wanted = [_general_name(i) for i in order["identifiers"]]
            try:
                checked = check_csr(csr_pem, profile, allowed_names=wanted,
                                    ttl_seconds=int((validity[1] - validity[0]).total_seconds()))
            except CSRRejected as exc:
                raise AcmeProblem("badCSR", exc.message) from None
            except ValidationError as exc:
                raise AcmeProblem("badCSR", exc.message) from None
            missing = [str(n.value) for n in wanted if n not in checked.names]
            if missing:
                raise AcmeProblem("badCSR", "the CSR must ask for exactly the order's identifiers; missing: "
                                  + ", ".join(missing))
            dns_names = [i["value"] for i in order["identifiers"] if i["type"] == "dns"]
            common = dns_names[0] if dns_names else order["identifiers"][0]["value"]
            requested_cn = [str(a.value) for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
            if requested_cn and requested_cn[0].lower() in {i["value"] for i in order["identifiers"]}:
                common = requested_cn[0].lower()
            subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)]) if len(common) <= 64 \
                else x509.Name([])
            leaf = build_leaf(ca, LeafRequest(
                subject=subject, public_key=checked.public_key, sans=tuple(wanted),
                ekus=tuple(profile.allowed_ekus) or DEFAULT_EKUS, not_before=validity[0], not_after=validity[1],
                must_staple=profile.must_staple), new_serial())
            await self._ensure_inventory_rows(conn, now)
            changes = await self._store_issued(
                conn, account, profile, order, issuer, ca.id, ca.chain_pem, leaf, csr_pem,
                checked.key_algorithm.value, checked.key_size, common, now)
            if not pg:  # on PostgreSQL the order changed in the same statement as the certificate was stored
                await acme_repo.update_order(conn, order_id, changes)
                authzs = await acme_repo.authz_ids_of_order(conn, order_id)
        stored = {**dict(locked), **changes}
        if self._on_certificates_changed is not None:
            self._on_certificates_changed()
        metrics.acme_order("valid")
        return OrderView(stored, authzs)

    def _validity(
        self, issuer: Row, profile: CertificateProfile, order: Row, now: datetime,
    ) -> tuple[datetime, datetime]:
        config_days = (issuer["config"] or {}).get("validity_days")
        validity = timedelta(days=int(config_days)) if config_days else DEFAULT_VALIDITY
        if profile.max_ttl_seconds:
            validity = min(validity, timedelta(seconds=profile.max_ttl_seconds))
        not_before = now
        not_after = now + validity
        if order["not_after"] is not None and now < order["not_after"] < not_after:
            not_after = order["not_after"]  # a client may ask for less (RFC 8555 §7.4), never for more
        return not_before, not_after

    async def _ensure_inventory_rows(self, conn: Any, now: datetime) -> None:
        if self._inventory_ready:
            return
        s = self.settings
        await acme_repo.ensure_inventory_rows(
            conn,
            team={"id": s.team_id, "name": "ACME", "description": "Certificates issued by the ACME server",
                  "created_at": now, "updated_at": now},
            owner={"id": s.owner_id, "name": "ACME clients", "email": "", "team_id": s.team_id,
                   "created_at": now, "updated_at": now},
            # ACME clients renew their own certificates: the scheduler must not (auto_renew off).
            policy={"id": s.renewal_policy_id, "name": "ACME (client renews)", "renewal_window_days": 30,
                    "auto_renew": False, "max_retries": 0, "retry_interval_seconds": 3600,
                    "alert_thresholds_days": [], "alert_channels": {}, "alert_severity_map": {},
                    "created_at": now, "updated_at": now},
        )
        self._inventory_ready = True

    async def _store_issued(
        self, conn: Any, account: Row, profile: CertificateProfile, order: Row, issuer: Row, ca_id: str,
        chain_pem: str, leaf: x509.Certificate, csr_pem: str, key_algorithm: str, key_size: int, common: str,
        now: datetime,
    ) -> dict[str, Any]:
        """The inventory side of issuance: certificate (source ACME), version, audit, policy evaluation. Returns
        the order's changes (on PostgreSQL already written, in the statement that stored the certificate)."""
        cert_id = f"mc-acme-{order['id'].removeprefix('ord-')}"
        version_id = f"certver-acme-{order['id'].removeprefix('ord-')}"
        serial = serial_hex(leaf.serial_number)
        fingerprint = leaf.fingerprint(hashes.SHA256()).hex()
        sans = [i["value"] for i in order["identifiers"]]
        certificate = {
            "id": cert_id, "name": cert_id, "common_name": common, "sans": sans, "environment": "",
            "owner_id": self.settings.owner_id, "team_id": self.settings.team_id, "issuer_id": issuer["id"],
            "renewal_policy_id": self.settings.renewal_policy_id, "certificate_profile_id": profile.id,
            "status": CertificateStatus.ACTIVE.value, "expires_at": leaf.not_valid_after_utc,
            "tags": {"acme_account": account["id"], "acme_order": order["id"]}, "last_renewal_at": None,
            "last_deployment_at": None, "revoked_at": None, "revocation_reason": None, "source": "ACME",
            "created_at": now, "updated_at": now,
        }
        version = {
            "id": version_id, "certificate_id": cert_id, "serial_number": serial,
            "not_before": leaf.not_valid_before_utc, "not_after": leaf.not_valid_after_utc,
            "fingerprint_sha256": fingerprint,
            "pem_chain": leaf.public_bytes(serialization.Encoding.PEM).decode() + chain_pem, "csr_pem": csr_pem,
            "key_algorithm": key_algorithm, "key_size": key_size, "created_at": now, "ca_id": ca_id, "job_id": None,
        }
        actor = self._actor(account["id"])
        event = audit.build_event(actor, "certificate_issued", "certificate", cert_id, {
            "source": "ACME", "acme_account": account["id"], "acme_order": order["id"], "version_id": version_id,
            "serial_number": serial, "ca_id": ca_id, "issuer_id": issuer["id"], "profile_id": profile.id,
            "not_after": leaf.not_valid_after_utc.isoformat(), "fingerprint_sha256": fingerprint,
            "key_algorithm": key_algorithm, "key_generation": "acme-client", "sans": sans,
            "replaces_order_id": order["replaces_order_id"],
        }, now)
        changes = {"status": A.VALID, "certificate_id": cert_id, "version_id": version_id, "updated_at": now}
        if self.ctx.db.dialect == "postgresql":
            row = await acme_repo.store_issued(conn, certificate, version, event, order["id"], changes)
        else:
            row = await acme_repo.insert_certificate(conn, certificate)
            await issuance_repo.insert_version(conn, version)
            await audit_repo.add_events(conn, [event])
        await evaluate_certificate(conn, self.ctx, actor, {**dict(row), "target_ids": []}, new=True)
        return changes

    # ---- certificates -------------------------------------------------------------------------------
    async def certificate_chain(
        self, account: Row, version_id: str, alternate: int = 0, found: Any = None,
    ) -> IssuedChain:
        """RFC 8555 §7.4.2: the leaf and its chain; only the account that ordered it may download it.
        Alternate 1 (when it differs) leaves the self-signed root out. `found`: the version as read with the
        nonce (spend_nonce_prefetch); False when that read found none."""
        if found is None:
            async with self._single() as conn:
                found = await acme_repo.version_with_owner(conn, version_id)
        version = found or None
        if version is None or version["account_id"] is None:
            raise AcmeProblem("malformed", "no such certificate", 404)
        self._own(account, version)
        chains = _chains(version["pem_chain"])
        if alternate >= len(chains):
            raise AcmeProblem("malformed", "no such alternate chain", 404)
        return IssuedChain(chains[alternate], version["ca_id"], len(chains) - 1)

    async def revoke(
        self, account: Row | None, key_spki: bytes | None, cert_der: bytes, reason_code: Any,
    ) -> None:
        """RFC 8555 §7.6: by the account that ordered it (`kid`), by an account of the same ACME profile holding
        valid, unexpired authorizations for every identifier in the certificate (`kid`; a wildcard name needs a
        wildcard authorization of its base name), or by the certificate's own key (`jwk`)."""
        if reason_code is None:
            reason_code = 0
        if not isinstance(reason_code, int) or isinstance(reason_code, bool) or reason_code not in _REASONS:
            raise AcmeProblem("badRevocationReason", f"revocation reason {reason_code!r} is not accepted "
                              "(RFC 5280 codes 0-6 and 9)")
        try:
            cert = x509.load_der_x509_certificate(cert_der)
        except ValueError:
            raise AcmeProblem("malformed", "certificate is not a DER X.509 certificate") from None
        fingerprint = hashlib.sha256(cert_der).hexdigest()
        async with self._read() as conn:
            version = await acme_repo.version_by_fingerprint(conn, fingerprint)
            order = await acme_repo.order_of_version(conn, version["id"]) if version is not None else None
            managed = await acme_repo.get_certificate(conn, version["certificate_id"]) if version else None
            controls = account is not None and order is not None and order["account_id"] != account["id"] \
                and order["profile_id"] == account["profile_id"] \
                and await self._controls_all(conn, account, _certificate_identifiers(cert))
        if version is None or managed is None:
            raise AcmeProblem("malformed", "this server did not issue that certificate", 404)
        if account is not None:
            if order is None or (order["account_id"] != account["id"] and not controls):
                raise AcmeProblem("unauthorized", "the account neither ordered this certificate nor holds valid "
                                  "authorizations for all of its identifiers", 403)
            actor = self._actor(account["id"])
        else:
            spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
            if key_spki is None or not hmac.compare_digest(spki, key_spki):
                raise AcmeProblem("unauthorized", "the JWS key is not the certificate's key", 403)
            actor = Actor("acme:certificate-key")
        if managed["status"] == CertificateStatus.REVOKED.value:
            raise AcmeProblem("alreadyRevoked", "the certificate is already revoked")
        try:
            await self.actions.revoke(actor, managed["id"], _REASONS[reason_code])
        except ConflictError:
            raise AcmeProblem("alreadyRevoked", "the certificate is already revoked") from None
        if self._on_certificates_changed is not None:
            self._on_certificates_changed()

    async def _controls_all(self, conn: Any, account: Row, identifiers: set[tuple[str, str, bool]]) -> bool:
        """Whether the account holds a valid, unexpired authorization for each (type, value, wildcard)."""
        if not identifiers:
            return False
        held = await acme_repo.valid_authorizations(conn, account["id"], self.ctx.clock.now(),
                                                    sorted({value for _, value, _ in identifiers}))
        return identifiers <= held

    # ---- ARI ----------------------------------------------------------------------------------------
    async def _version_by_ari_id(self, cert_id: str) -> tuple[Row, Row | None]:
        aki, serial = parse_ari_cert_id(cert_id)
        async with self._read() as conn:
            candidates = await acme_repo.versions_by_serial(conn, serial_hex(serial))
            for version in candidates:
                leaf = x509.load_pem_x509_certificate(version["pem_chain"].encode())
                try:
                    found = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
                except x509.ExtensionNotFound:
                    continue
                if found == aki:
                    return version, await acme_repo.order_of_version(conn, version["id"])
        raise AcmeProblem("malformed", "no certificate with this id was issued here", 404)

    async def renewal_info(self, cert_id: str) -> RenewalWindow:
        """RFC 9773 §4.2: the suggested window. A third of the lifetime before expiry, for a ninth of it
        (the renewal policy's window when the certificate has one); now when revoked; now-to-a-day when
        expired or when the certificate was already replaced."""
        if not self.settings.ari_enabled:
            raise AcmeProblem("malformed", "ARI is disabled on this server", 404)
        version, _order = await self._version_by_ari_id(cert_id)
        now = self.ctx.clock.now()
        async with self._read() as conn:
            managed = await acme_repo.get_certificate(conn, version["certificate_id"])
        lifetime = version["not_after"] - version["not_before"]
        if managed is not None and managed["status"] == CertificateStatus.REVOKED.value:
            start, end = now - timedelta(hours=1), now
        elif version["not_after"] <= now:
            start, end = now, now + timedelta(days=1)
        else:
            start = version["not_after"] - lifetime / 3
            end = version["not_after"] - lifetime / 9
            if end <= now:
                start, end = now, max(version["not_after"], now + timedelta(hours=1))
        return RenewalWindow(start, end, self.settings.ari_retry_after)

    # ---- EAB keys (admin API) -----------------------------------------------------------------------
    async def create_eab_key(self, actor: Actor, profile_id: str | None, description: str) -> tuple[Row, str]:
        """A new key id and HMAC key (32 random bytes, base64url). The HMAC key is returned only here."""
        secret = b64e(secrets.token_bytes(32))
        now = self.ctx.clock.now()
        key_id = _rand_id("eab")
        async with self.ctx.db.transaction() as conn:
            if profile_id is not None and await acme_repo.get_profile(conn, profile_id) is None:
                raise ValidationError(f"profile '{profile_id}' does not exist")
            await acme_repo.insert_eab_key(conn, {
                "id": key_id, "profile_id": profile_id, "sealed_hmac_key": self.ctx.sealer.seal({"hmac_key": secret}),
                "description": description, "account_id": None, "created_by": actor.name, "created_at": now,
                "used_at": None})
            await audit.record(conn, self.ctx.clock, actor, "acme_eab_key_created", "acme_eab_key", key_id,
                               {"profile_id": profile_id, "description": description})
            row = await acme_repo.get_eab_key(conn, key_id)
        assert row is not None
        return row, secret

    async def list_eab_keys(self) -> Sequence[Row]:
        async with self._read() as conn:
            return await acme_repo.list_eab_keys(conn)

    async def delete_eab_key(self, actor: Actor, key_id: str) -> None:
        async with self.ctx.db.transaction() as conn:
            if not await acme_repo.delete_eab_key(conn, key_id):
                raise NotFoundError.of("EAB key", key_id)
            await audit.record(conn, self.ctx.clock, actor, "acme_eab_key_deleted", "acme_eab_key", key_id, {})

    # ---- shared -------------------------------------------------------------------------------------
    async def _issuing_ca(self, conn: Any) -> tuple[Row, Any]:
        """The issuer row and its signing CA, read at most every 2 s per process (finalize is the hot path;
        a disabled issuer or a new active CA is seen within that time)."""
        now = time.monotonic()
        if self._issuing is not None and now - self._issuing[0] < 2.0:
            return self._issuing[1], self._issuing[2]
        issuer = await self._issuer(conn)
        ca = await self.cas.issuing_ca(conn, issuer, create=False)
        self._issuing = (now, issuer, ca)
        return issuer, ca

    async def _issuer(self, conn: Any) -> Row:
        """The one configured issuer (CERTCTL_ACME_SERVER_ISSUER_ID): never a pick among several."""
        issuer = await acme_repo.get_issuer(conn, self.settings.issuer_id)
        if issuer is None:
            raise AcmeProblem("serverInternal", f"the ACME issuer '{self.settings.issuer_id}' does not exist", 500)
        if not issuer["enabled"] or issuer["type"] != IssuerType.GENERIC_CA.value:
            raise AcmeProblem("serverInternal",
                              f"the ACME issuer '{self.settings.issuer_id}' is not an enabled local CA", 500)
        return issuer

    @staticmethod
    def _actor(account_id: str) -> Actor:
        return Actor(f"acme:{account_id}")


def _certificate_identifiers(cert: x509.Certificate) -> set[tuple[str, str, bool]]:
    """The certificate's identifiers as authorizations name them: (type, value, wildcard), a wildcard DNS name
    by its base name (RFC 8555 §7.1.3); DNS and IP subjectAltNames, and a common name that is none of them."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        sans = x509.SubjectAlternativeName([])
    names = [str(n).lower().rstrip(".") for n in sans.get_values_for_type(x509.DNSName)]
    found = {("ip", a.compressed, False) for a in sans.get_values_for_type(x509.IPAddress)}
    for attribute in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        common = str(attribute.value).lower().rstrip(".")
        try:
            found.add(("ip", ipaddress.ip_address(common).compressed, False))
        except ValueError:
            names.append(common)
    for name in names:
        found.add(("dns", name[2:], True) if name.startswith("*.") else ("dns", name, False))
    return found


def _chains(pem_chain: str) -> list[str]:
    """The stored chain, and (when it ends in a self-signed root and has more than the leaf and root... or
    just the root) the same chain without that root."""
    blocks = re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n?", pem_chain, re.S)
    blocks = [b if b.endswith("\n") else b + "\n" for b in blocks]
    chains = ["".join(blocks)]
    if len(blocks) > 2:
        last = x509.load_pem_x509_certificate(blocks[-1].encode())
        if last.issuer == last.subject:
            chains.append("".join(blocks[:-1]))
    return chains

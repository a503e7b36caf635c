"""Issuer connectors seen from the services: building them from issuer rows, the sealed ACME account store,
ARI windows (RFC 9773) and telling the CA about revocations.

- `for_issuer(row)` builds (and caches per issuer id and `updated_at`) the connector of an issuer from its
  unsealed config through `certctl.connectors.issuers.registry`; an edit of the issuer rebuilds it.
- The account store seals the ACME account key with the config encryption key; every write is audited
  (`acme_account_key_created`, `acme_account_registered`), the key is never logged or returned.
- After an ACME issuance, `record_renewal_info` fetches the CA's renewal window and stores it with a moment
  picked uniformly inside it (RFC 9773 §4.2: pick once per window); the renewal scan calls
  `refresh_renewal_info` to ask again when Retry-After has passed, then renews at that moment.
- `notify_revocations(certificate_id)` runs after a revocation commits: every revoked outside-CA version of an
  issuer with a connector is revoked at the CA (RFC 8555 §7.6); success sets `issuer_notified`, failures are
  audited and left for an operator (the inventory's revocation stands either way, like the reference).
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from certctl.connectors.issuers.base import IssuerConnector, IssueResult, RenewalWindow, RevokeRequest, StoredAccount
from certctl.connectors.issuers.registry import ISSUER_CONNECTORS, IssuerDeps, create_issuer, has_connector
from certctl.domain.actor import Actor
from certctl.domain.enums import CertificateStatus
from certctl.domain.errors import CertctlError
from certctl.domain.ids import new_id
from certctl.services import audit
from certctl.services.connector_config import unseal
from certctl.services.context import ServiceContext
from certctl.store import acme_client_repo, ca_repo, rows
from certctl.store.schema import issuers

log = logging.getLogger("certctl.issuer_connectors")
# Retry-After outside these bounds is clamped: never hammer the CA, never wait past a day (RFC 9773 §4.3).
MIN_ARI_RECHECK = timedelta(minutes=1)
MAX_ARI_RECHECK = timedelta(hours=24)
_LIVE = (CertificateStatus.ACTIVE.value, CertificateStatus.EXPIRING.value)
_PEM = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\s*", re.S)


def leaf_of(pem_chain: str) -> str:
    found = _PEM.search(pem_chain)
    return found.group(0).strip() + "\n" if found else ""


class SealedAccountStore:
    """ACME accounts of one issuer, the key sealed at rest (implements connectors.issuers.acme.AccountStore)."""

    def __init__(self, ctx: ServiceContext, issuer_id: str) -> None:
        self.ctx = ctx
        self.issuer_id = issuer_id

    async def load(self, directory_url: str) -> StoredAccount | None:
        async with self.ctx.db.read() as conn:
            row = await acme_client_repo.get_account(conn, self.issuer_id, directory_url)
        if row is None:
            return None
        opened = self.ctx.sealer.open(row["sealed_key"])
        return StoredAccount(directory_url=directory_url, key_pem=str(opened["account_key_pem"]),
                             account_url=row["account_url"])

    async def create(self, directory_url: str, key_pem: str, contact: str) -> StoredAccount:
        now = self.ctx.clock.now()
        account_id = new_id("acmeacct")
        async with self.ctx.db.transaction() as conn:
            await acme_client_repo.insert_account_if_absent(conn, {
                "id": account_id, "issuer_id": self.issuer_id, "directory_url": directory_url, "account_url": None,
                "contact": contact, "sealed_key": self.ctx.sealer.seal({"account_key_pem": key_pem}),
                "created_at": now, "updated_at": now,
            })
            row = await acme_client_repo.get_account(conn, self.issuer_id, directory_url)
            if row is not None and row["id"] == account_id:
                await audit.record(conn, self.ctx.clock, Actor.system(), "acme_account_key_created", "issuer",
                                   self.issuer_id, {"directory_url": directory_url, "key_algorithm": "ECDSA-P256"})
        stored = await self.load(directory_url)
        assert stored is not None
        return stored

    async def registered(self, directory_url: str, account_url: str) -> None:
        async with self.ctx.db.transaction() as conn:
            await acme_client_repo.set_account_url(conn, self.issuer_id, directory_url, account_url,
                                                   self.ctx.clock.now())
            await audit.record(conn, self.ctx.clock, Actor.system(), "acme_account_registered", "issuer",
                               self.issuer_id, {"directory_url": directory_url, "account_url": account_url})


class IssuerConnectors:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self._cache: dict[str, tuple[Any, IssuerConnector]] = {}

    @staticmethod
    def handles(issuer_type: str) -> bool:
        return has_connector(issuer_type)

    def for_issuer(self, issuer: Mapping[Any, Any]) -> IssuerConnector:
        """The issuer's connector (a ValidationError when its stored config no longer passes)."""
        cached = self._cache.get(issuer["id"])
        if cached is not None and cached[0] == issuer["updated_at"]:
            return cached[1]
        config = unseal(self.ctx.sealer, issuer, "issuer")
        connector = create_issuer(str(issuer["type"]), config, IssuerDeps(
            accounts=SealedAccountStore(self.ctx, str(issuer["id"])), now=self.ctx.clock.now))
        self._cache[issuer["id"]] = (issuer["updated_at"], connector)
        return connector

    # ---- ARI ------------------------------------------------------------------------------------------
    def _pick(self, window: RenewalWindow, previous: Mapping[Any, Any] | None) -> datetime:
        """RFC 9773 §4.2: a uniformly random moment in the window, kept while the window stays the same."""
        if previous is not None and previous["renew_at"] is not None and previous["window_start"] == window.start \
                and previous["window_end"] == window.end:
            renew_at: datetime = previous["renew_at"]
            return renew_at
        span = (window.end - window.start).total_seconds()
        return window.start + timedelta(seconds=random.uniform(0, max(span, 0.0)))

    def _next_check(self, window: RenewalWindow | None, now: datetime) -> datetime:
        wanted = window.retry_after if window is not None else now + timedelta(hours=6)
        return min(max(wanted, now + MIN_ARI_RECHECK), now + MAX_ARI_RECHECK)

    async def record_renewal_info(self, issuer: Mapping[Any, Any], certificate_id: str, version_id: str,
                                  leaf_pem: str) -> RenewalWindow | None:
        """After an issuance: store the CA's window (best effort; a failure is logged and retried by the scan)."""
        connector = self.for_issuer(issuer)
        cert_id = connector.renewal_cert_id(leaf_pem)
        if cert_id is None:
            return None
        now = self.ctx.clock.now()
        try:
            window = await connector.renewal_info(leaf_pem)
        except CertctlError as exc:
            log.warning("ARI fetch failed", extra={"certificate_id": certificate_id, "error": exc.message})
            window = None
        async with self.ctx.db.transaction() as conn:
            await acme_client_repo.replace_renewal_info(conn, {
                "version_id": version_id, "certificate_id": certificate_id, "issuer_id": issuer["id"],
                "ari_cert_id": cert_id, "window_start": window.start if window else None,
                "window_end": window.end if window else None,
                "renew_at": self._pick(window, None) if window else None,
                "explanation_url": window.explanation_url if window else None,
                "next_check_at": self._next_check(window, now), "checked_at": now,
            })
        return window

    async def refresh_renewal_info(self, *, limit: int = 200, concurrency: int = 10) -> int:
        """Ask the CA again for the windows whose Retry-After has passed (at most `concurrency` fetches at once, so
        a slow CA cannot hold the scan for limit x timeout); returns how many were asked."""
        now = self.ctx.clock.now()
        async with self.ctx.db.read() as conn:
            due = await acme_client_repo.renewal_info_due_for_check(conn, now=now, statuses=_LIVE, limit=limit)
        gate = asyncio.Semaphore(concurrency)

        async def one(row: Mapping[Any, Any]) -> None:
            async with gate:
                async with self.ctx.db.read() as conn:
                    issuer = await rows.get_row(conn, issuers, row["issuer_id"])
                window: RenewalWindow | None = None
                if issuer is not None and self.handles(issuer["type"]):
                    try:
                        window = await self.for_issuer(issuer).renewal_info(leaf_of(row["pem_chain"]))
                    except CertctlError as exc:
                        log.warning("ARI fetch failed", extra={"certificate_id": row["certificate_id"],
                                                               "error": exc.message})
                values: dict[str, Any] = {"next_check_at": self._next_check(window, now), "checked_at": now}
                if window is not None:
                    values.update(window_start=window.start, window_end=window.end,
                                  renew_at=self._pick(window, row), explanation_url=window.explanation_url)
                async with self.ctx.db.transaction() as conn:
                    await acme_client_repo.update_renewal_info(conn, row["version_id"], values)

        await asyncio.gather(*(one(row) for row in due))
        return len(due)

    async def replaces_for(self, issuer: Mapping[Any, Any], certificate_id: str) -> str | None:
        """RFC 9773 §5: the ARI id of the certificate's newest outside-CA version, for a renewal order."""
        async with self.ctx.db.read() as conn:
            version = await acme_client_repo.newest_version_pem(conn, certificate_id)
        if version is None or version["ca_id"] is not None:
            return None
        return self.for_issuer(issuer).renewal_cert_id(leaf_of(version["pem_chain"]))

    async def after_issue(self, issuer: Mapping[Any, Any], certificate_id: str, version_id: str,
                          result: IssueResult) -> None:
        try:
            await self.record_renewal_info(issuer, certificate_id, version_id, result.leaf_pem)
        except Exception:  # the certificate is stored; ARI is a hint the scan fetches again
            log.exception("storing ARI window failed", extra={"certificate_id": certificate_id})

    # ---- revocation -----------------------------------------------------------------------------------
    async def retry_revocations(self, *, within: timedelta = timedelta(days=7), limit: int = 100) -> int:
        """Send again the revocations a CA has not accepted (CA down at the time); the renewal scan calls this.
        Older than `within`, they are left to an operator (each failure is in the audit trail)."""
        async with self.ctx.db.read() as conn:
            pending = await acme_client_repo.certificates_with_unnotified_revocations(
                conn, issuer_types=list(ISSUER_CONNECTORS), since=self.ctx.clock.now() - within, limit=limit)
        accepted = 0
        for certificate_id in pending:
            accepted += await self.notify_revocations(certificate_id)
        return accepted

    async def notify_revocations(self, certificate_id: str) -> int:
        """Revoke at the CA what the inventory just revoked; returns how many the CA accepted."""
        async with self.ctx.db.read() as conn:
            pending = await acme_client_repo.revocations_to_notify(conn, certificate_id)
        accepted = 0
        for revocation in pending:
            async with self.ctx.db.read() as conn:
                issuer = await rows.get_row(conn, issuers, revocation["issuer_id"])
            if issuer is None or not self.handles(issuer["type"]):
                continue
            details = {"serial_number": revocation["serial_number"], "issuer_id": issuer["id"],
                       "reason_code": revocation["reason_code"], "version_id": revocation["version_id"]}
            try:
                await self.for_issuer(issuer).revoke(RevokeRequest(
                    cert_pem=leaf_of(revocation["pem_chain"]), reason_code=int(revocation["reason_code"])))
            except CertctlError as exc:
                log.warning("revocation at the CA failed", extra={**details, "error": exc.message})
                async with self.ctx.db.transaction() as conn:
                    await audit.record(conn, self.ctx.clock, Actor.system(), "issuer_revocation_failed",
                                       "certificate", certificate_id, {**details, "error": exc.message})
                continue
            async with self.ctx.db.transaction() as conn:
                await ca_repo.mark_issuer_notified(conn, revocation["id"])
                await audit.record(conn, self.ctx.clock, Actor.system(), "certificate_revoked_at_issuer",
                                   "certificate", certificate_id, details)
            accepted += 1
        return accepted


# ---- first-boot seed from the environment (the reference's CERTCTL_ACME_* issuer variables) -------------------
ACME_SEED_ISSUER_ID = "iss-acme-prod"
_ACME_ENV = {  # variable -> config key (the reference's names, plus EAB and a CA bundle for private CAs)
    "CERTCTL_ACME_DIRECTORY_URL": "directory_url", "CERTCTL_ACME_EMAIL": "email",
    "CERTCTL_ACME_CHALLENGE_TYPE": "challenge_type", "CERTCTL_ACME_DNS_PRESENT_SCRIPT": "dns_present_script",
    "CERTCTL_ACME_DNS_CLEANUP_SCRIPT": "dns_cleanup_script", "CERTCTL_ACME_PROFILE": "profile",
    "CERTCTL_ACME_ARI_ENABLED": "ari_enabled", "CERTCTL_ACME_EAB_KID": "eab_kid",
    "CERTCTL_ACME_EAB_HMAC": "eab_hmac", "CERTCTL_ACME_CA_BUNDLE_PATH": "ca_bundle_path",
}


def acme_seed_config(env: Mapping[str, str]) -> dict[str, Any] | None:
    """The ACME issuer config the environment describes (None without CERTCTL_ACME_DIRECTORY_URL); a bad one
    raises SettingsError naming the variables' problems (checked by the connector itself)."""
    from certctl.config import SettingsError, env_bool
    from certctl.connectors.issuers.registry import validate_issuer_config
    from certctl.domain.errors import ValidationError

    if not (env.get("CERTCTL_ACME_DIRECTORY_URL") or "").strip():
        return None
    config: dict[str, Any] = {}
    for name, key in _ACME_ENV.items():
        value = (env.get(name) or "").strip()
        if value:
            config[key] = env_bool(env, name, True) if key == "ari_enabled" else value
    try:
        validate_issuer_config("ACME", config)
    except ValidationError as exc:
        raise SettingsError(f"CERTCTL_ACME_*: {exc.message}") from None
    return config

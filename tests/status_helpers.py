"""Helpers for the CRL/OCSP tests: CAs in memory, leaves with chosen serials, revocation rows, issued certificates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import NameOID

from certctl.domain.ids import new_id
from certctl.pki.ca import IssuingCA, PublicationUrls, build_root, ca_name
from certctl.pki.leaf import LeafRequest, build_leaf
from certctl.pki.serials import canonical_serial
from certctl.pki.signers import Signer, SoftwareSigner, generate_private_key
from certctl.store import ca_repo, rows
from certctl.store.schema import certificate_versions, issuers
from tests import factories
from tests.conftest import Api


class TokenLikeSigner(Signer):
    """A signer that never hands out its key object, like a PKCS#11 token: everything goes through `sign`."""

    def __init__(self, inner: SoftwareSigner) -> None:
        super().__init__("token:test", inner.key_spec)
        self.inner = inner
        self.calls = 0

    def public_key(self) -> CertificatePublicKeyTypes:
        return self.inner.public_key()

    def sign(self, data: bytes) -> bytes:
        self.calls += 1
        return self.inner.sign(data)


def memory_ca(spec: str = "ECDSA-P256", *, ca_id: str = "ica-test", name: str = "Status Test CA",
              token: bool = False) -> IssuingCA:
    software = SoftwareSigner(f"mem:{ca_id}", generate_private_key(spec))
    signer: Signer = TokenLikeSigner(software) if token else software
    now = datetime.now(UTC)
    root = build_root(software, ca_name(name), now, timedelta(days=3650))
    return IssuingCA(id=ca_id, issuer_id="iss-test", cert=root, parents=(), signer=signer,
                     urls=PublicationUrls.for_ca("https://pki.example.test", ca_id))


def leaf(ca: IssuingCA, serial: int, *, name: str = "leaf.example.com", days: int = 30,
         not_before: datetime | None = None) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or datetime.now(UTC) - timedelta(minutes=1)
    request = LeafRequest(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), key.public_key(),
                          (x509.DNSName(name),), (), start, start + timedelta(days=days))
    return build_leaf(ca, request, serial)


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def write_pem(path: Path, cert: x509.Certificate) -> Path:
    path.write_text(pem(cert))
    return path


async def local_ca(api: Api, issuer_id: str = "iss-local") -> IssuingCA:
    """The issuing CA of a local issuer, as the service resolves it (the root is made on first use)."""
    async with api.services.ctx.db.read() as conn:
        issuer = await rows.get_row(conn, issuers, issuer_id)
        assert issuer is not None
        return await api.services.cas.issuing_ca(conn, issuer)


async def stored_leaf(api: Api, ca: IssuingCA, serial: int, **kwargs: Any) -> x509.Certificate:
    """A leaf with the chosen serial, stored as a certificate version of `ca` (as issuance would)."""
    cert = leaf(ca, serial, **kwargs)
    managed = await factories.seed_certificate(api)
    now = datetime.now(UTC)
    async with api.services.ctx.db.transaction() as conn:
        await rows.insert_row(conn, certificate_versions, {
            "id": new_id("certver"), "certificate_id": managed["id"], "serial_number": canonical_serial(serial),
            "not_before": cert.not_valid_before_utc, "not_after": cert.not_valid_after_utc,
            "fingerprint_sha256": new_id("fp"), "pem_chain": pem(cert) + ca.chain_pem, "created_at": now,
            "ca_id": ca.id,
        })
    return cert


async def revoke_row(api: Api, ca: IssuingCA, serial: int, *, reason: str = "keyCompromise", code: int = 1,
                     revoked_at: datetime | None = None, not_after: datetime | None = None,
                     short_lived: bool = False) -> datetime:
    """A revocation record as the revoke path writes it; returns its revocation time."""
    now = datetime.now(UTC)
    when = revoked_at or now.replace(microsecond=0)
    async with api.services.ctx.db.transaction() as conn:
        await ca_repo.insert_revocation(conn, {
            "id": new_id("rev"), "issuer_id": ca.issuer_id, "ca_id": ca.id, "serial_number": canonical_serial(serial),
            "certificate_id": None, "version_id": None, "reason": reason, "reason_code": code, "revoked_at": when,
            "revoked_by": "test", "not_after": not_after or now + timedelta(days=30), "short_lived": short_lived,
            "issuer_notified": True, "created_at": now,
        })
    return when


def wire_revocation_hook(api: Api) -> None:
    """Until the revoke path calls `status.revoked` itself, the tests connect it as the container will."""
    if api.services.certificate_actions.after_revoke is None:
        api.services.certificate_actions.after_revoke = api.services.status.revoked

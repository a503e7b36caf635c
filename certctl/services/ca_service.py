"""The local CA's material: its persisted root (or operator sub-CA), and the issuing CA of an issuer.

A `GenericCA` issuer signs with a CA row of `intermediate_cas`:
- by default its self-signed root, generated once on first use with the issuer config's
  `key_algorithm` (ECDSA-P256 unless set) and kept: key through the signer registry (file or
  PKCS#11), certificate in the row (the reference made a new CA on every restart);
- in sub-CA mode the operator's CA certificate and key (`ca_cert_path`/`ca_key_path` in the issuer
  config, or `CERTCTL_CA_CERT_PATH`/`CERTCTL_CA_KEY_PATH` for `iss-local`), registered as the root
  of certctl's tree with its outside parents kept for the chain;
- an intermediate of its tree when the issuer config names one in `issuing_ca_id`.
Loaded CAs are cached per process; the row is re-read at each issuance so that a retired CA stops.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from certctl.domain.actor import Actor
from certctl.domain.enums import IssuerType
from certctl.domain.errors import ConflictError, NotFoundError, UnavailableError, ValidationError
from certctl.domain.ids import slugify
from certctl.pki.ca import IssuingCA, PublicationUrls, build_root, ca_name, is_self_signed, load_pem_chain
from certctl.pki.serials import serial_hex
from certctl.pki.signers import Signer, SignerError, SignerRegistry, key_spec_of, normalize_key_spec
from certctl.pki.signers.file import FileDriver
from certctl.services import audit
from certctl.services.connector_config import unseal
from certctl.services.context import ServiceContext
from certctl.store import ca_repo, rows
from certctl.store.rows import Row
from certctl.store.schema import issuers

DEFAULT_ROOT_VALIDITY = timedelta(days=3650)
DEFAULT_ROOT_NAME = "certctl Local CA"
ACTIVE = "active"


class RootMissing(Exception):
    """A local issuer has no CA yet and the caller cannot create one inside its transaction."""

    def __init__(self, issuer: dict[str, Any]) -> None:
        super().__init__(f"issuer '{issuer['id']}' has no root CA yet")
        self.issuer = issuer


def pem_of(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def subject_json(name: x509.Name) -> dict[str, str]:
    return {attribute.rfc4514_attribute_name: str(attribute.value) for attribute in name}


class CAService:
    """Finds, creates and loads the CAs that sign; the only service that asks the signer registry for CA keys."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self._loaded: dict[str, IssuingCA] = {}
        self._root_lock = asyncio.Lock()

    @property
    def signers(self) -> SignerRegistry:
        return self.ctx.signers

    # ---- resolving ------------------------------------------------------------------------------
    async def issuing_ca_row(self, conn: AsyncConnection, issuer: Mapping[Any, Any], *, create: bool = True) -> Row:
        """The active CA row that signs for a GenericCA issuer; creates the root on first use.

        With `create=False` (the caller holds a write transaction, and on SQLite the root's own transaction
        would wait for it) a missing root raises `RootMissing`, so the caller creates it first and retries.
        """
        if issuer["type"] != IssuerType.GENERIC_CA.value:
            raise ValidationError(f"issuer '{issuer['id']}' is a {issuer['type']} issuer, not the local CA")
        config = unseal(self.ctx.sealer, issuer, "issuer")
        wanted = str(config.get("issuing_ca_id") or "")
        if wanted:
            row = await ca_repo.get_ca(conn, wanted)
            if row is None or row["owning_issuer_id"] != issuer["id"]:
                raise ConflictError(f"issuer '{issuer['id']}' names issuing_ca_id '{wanted}', which is not its CA")
        else:
            row = await ca_repo.active_root(conn, issuer["id"])
            if row is None:
                if await ca_repo.cas_of_issuer(conn, issuer["id"]):
                    # Its root was retired on purpose: a new one is the operator's decision, never implicit.
                    raise ConflictError(
                        f"issuer '{issuer['id']}' has no active root CA; register one or set issuing_ca_id"
                    )
                if not create:
                    raise RootMissing(dict(issuer))
                row = await self._create_root(issuer, config)
        if row["state"] != ACTIVE:
            raise ConflictError(f"CA '{row['id']}' is {row['state']} and no longer issues certificates")
        return row

    def load(self, row: Row, chain_rows: list[Row]) -> IssuingCA:
        """The signing view of a CA row; `chain_rows` are its ancestors, parent first."""
        cached = self._loaded.get(row["id"])
        if cached is not None:
            return cached
        cert = x509.load_pem_x509_certificate(row["cert_pem"].encode())
        parents = [x509.load_pem_x509_certificate(r["cert_pem"].encode()) for r in chain_rows]
        top = chain_rows[-1] if chain_rows else row
        parents.extend(load_pem_chain(top["external_chain_pem"] or ""))
        try:
            signer = self._load_signer(row["key_driver_id"])
        except SignerError as exc:
            raise UnavailableError(f"the key of CA '{row['id']}' cannot be used: {exc}") from None
        urls = PublicationUrls.for_ca(self.ctx.settings.effective_pki_url, row["id"],
                                      ocsp_override=row["ocsp_responder_url"] or "")
        ca = IssuingCA(id=row["id"], issuer_id=row["owning_issuer_id"], cert=cert, parents=tuple(parents),
                       signer=signer, urls=urls)
        self._loaded[row["id"]] = ca
        return ca

    def signing_ca_id(self, issuer: Mapping[Any, Any], cas: list[tuple[str, str, str | None]]) -> str | None:
        """The active CA that `issuing_ca_row` would pick for a GenericCA issuer without a question, from the
        (id, state, parent_ca_id) of the issuer's CA rows as the caller just read them (so a CA retired meanwhile
        stops at once); None when there is none or it is not active (the caller then takes `issuing_ca_row`)."""
        if issuer["type"] != IssuerType.GENERIC_CA.value:
            return None
        wanted = str(unseal(self.ctx.sealer, issuer, "issuer").get("issuing_ca_id") or "")
        for ca_id, state, parent_id in cas:
            if (ca_id == wanted) if wanted else (parent_id is None and state == ACTIVE):
                return ca_id if state == ACTIVE else None
        return None

    def loaded(self, ca_id: str) -> IssuingCA | None:
        """The CA's signing view when this process has loaded it already (see `load`)."""
        return self._loaded.get(ca_id)

    async def load_by_id(self, conn: AsyncConnection, ca_id: str) -> IssuingCA:
        row = await ca_repo.get_ca(conn, ca_id)
        if row is None:
            raise NotFoundError.of("CA", ca_id)
        return await self._loaded_or_load(conn, row)

    async def issuing_ca(self, conn: AsyncConnection, issuer: Mapping[Any, Any], *, create: bool = True) -> IssuingCA:
        return await self._loaded_or_load(conn, await self.issuing_ca_row(conn, issuer, create=create))

    async def _loaded_or_load(self, conn: AsyncConnection, row: Row) -> IssuingCA:
        # A CA's certificate and parents never change: the ancestors are read once per process, not per issuance.
        return self._loaded.get(row["id"]) or self.load(row, await self.ancestors(conn, row))

    async def ancestors(self, conn: AsyncConnection, row: Row) -> list[Row]:
        found: list[Row] = []
        parent_id = row["parent_ca_id"]
        while parent_id is not None:
            parent = await ca_repo.get_ca(conn, parent_id)
            if parent is None or len(found) > 16:
                raise UnavailableError(f"the CA chain above '{row['id']}' is broken at '{parent_id}'")
            found.append(parent)
            parent_id = parent["parent_ca_id"]
        return found

    def _load_signer(self, ref: str) -> Signer:
        """Keys in the key directory or on a token go through the registry; an operator's own CA key file
        (sub-CA mode) sits at an absolute path that only an admin can have put into a CA row."""
        path = ref.removeprefix("file:")
        if ref.startswith("file:") and Path(path).is_absolute():
            key_dir = self.ctx.settings.data_dir / "keys"
            return FileDriver(key_dir, passphrase=self.ctx.settings.extra.get("CERTCTL_CA_KEY_PASSPHRASE") or None,
                              allowed_files=[Path(path)]).load(ref)
        return self.signers.load(ref)

    def forget(self, ca_id: str) -> None:
        self._loaded.pop(ca_id, None)

    # ---- the root -------------------------------------------------------------------------------
    async def ensure_local_roots(self) -> None:
        """First boot: every enabled GenericCA issuer gets its root now rather than on the first request."""
        async with self.ctx.db.read() as conn:
            local = await rows.list_rows(conn, issuers, issuers.c.type == IssuerType.GENERIC_CA.value,
                                         issuers.c.enabled.is_(True))
            missing = [i for i in local if not await ca_repo.cas_of_issuer(conn, i["id"])]
        for issuer in missing:
            await self._create_root(issuer, unseal(self.ctx.sealer, issuer, "issuer"))

    async def create_root(self, issuer: Mapping[Any, Any]) -> Row:
        """The issuer's first root, in a transaction of its own (see `issuing_ca_row(create=False)`)."""
        return await self._create_root(issuer, unseal(self.ctx.sealer, issuer, "issuer"))

    async def _create_root(self, issuer: Mapping[Any, Any], config: dict[str, Any]) -> Row:
        async with self._root_lock:  # one root per issuer even when requests race in this process
            async with self.ctx.db.read() as conn:
                existing = await ca_repo.active_root(conn, issuer["id"])
            if existing is not None:
                return existing
            values = self._operator_ca(issuer, config) or self._generated_root(issuer, config)
            try:
                async with self.ctx.db.transaction() as conn:
                    await ca_repo.insert_ca(conn, values)
                    await audit.record(conn, self.ctx.clock, Actor.system(), "ca_root_created", "intermediate_ca",
                                       values["id"], {"issuer_id": issuer["id"], "subject": values["subject"],
                                                      "key_algorithm": values["key_algorithm"],
                                                      "mode": values["metadata"]["mode"]})
            except IntegrityError:
                # Another server made the root first (unique active root per issuer): use theirs.
                pass
            async with self.ctx.db.read() as conn:
                row = await ca_repo.active_root(conn, issuer["id"])
            if row is None:
                raise UnavailableError(f"the root CA of issuer '{issuer['id']}' could not be created")
            return row

    def _root_values(self, issuer: Mapping[Any, Any], cert: x509.Certificate, key_ref: str, *, mode: str,
                     external_chain: str = "") -> dict[str, Any]:
        now = self.ctx.clock.now()
        name = "root" if mode == "self-signed" else "operator-ca"
        ca_id = f"ica-{slugify(issuer['id'])}-{name}-{serial_hex(cert.serial_number)[:8]}"
        return {
            "id": ca_id, "owning_issuer_id": issuer["id"], "parent_ca_id": None,
            "name": f"{name}-{serial_hex(cert.serial_number)[:8]}", "subject": subject_json(cert.subject),
            "state": ACTIVE, "cert_pem": pem_of(cert), "external_chain_pem": external_chain,
            "key_driver_id": key_ref, "key_algorithm": key_spec_of(cert.public_key()),
            "serial_number": serial_hex(cert.serial_number), "not_before": cert.not_valid_before_utc,
            "not_after": cert.not_valid_after_utc, "path_len_constraint": _path_len(cert),
            "name_constraints": [], "ocsp_responder_url": "", "metadata": {"mode": mode},
            "retired_at": None, "retire_note": None, "created_at": now, "updated_at": now,
        }

    def _generated_root(self, issuer: Mapping[Any, Any], config: dict[str, Any]) -> dict[str, Any]:
        try:
            spec = normalize_key_spec(str(config.get("key_algorithm") or "ECDSA-P256"))
        except SignerError as exc:
            raise ValidationError(f"issuer '{issuer['id']}' config key_algorithm: {exc}") from None
        days = int(config.get("ca_validity_days") or DEFAULT_ROOT_VALIDITY.days)
        common_name = str(config.get("ca_common_name") or (
            DEFAULT_ROOT_NAME if issuer["id"] == "iss-local" else f"{DEFAULT_ROOT_NAME} ({issuer['name']})"))
        signer = self.signers.generate(spec, f"ca-{slugify(issuer['id'])}-root-{self.ctx.clock.now():%Y%m%d%H%M%S}")
        cert = build_root(signer, ca_name(common_name, str(config.get("ca_organization") or "")),
                          self.ctx.clock.now(), timedelta(days=days))
        return self._root_values(issuer, cert, signer.ref, mode="self-signed")

    def _operator_ca(self, issuer: Mapping[Any, Any], config: dict[str, Any]) -> dict[str, Any] | None:
        cert_path, key_path = config.get("ca_cert_path"), config.get("ca_key_path")
        env = self.ctx.settings.extra
        if not cert_path and issuer["id"] == "iss-local" and env.get("CERTCTL_CA_CERT_PATH"):
            cert_path, key_path = env.get("CERTCTL_CA_CERT_PATH"), env.get("CERTCTL_CA_KEY_PATH")
        if not cert_path or not key_path:
            return None
        try:
            certs = load_pem_chain(Path(str(cert_path)).read_bytes())
        except OSError as exc:
            raise ValidationError(f"CA certificate '{cert_path}' cannot be read: {exc.strerror}") from None
        if not certs:
            raise ValidationError(f"CA certificate '{cert_path}' holds no PEM certificate")
        cert, outside = certs[0], certs[1:]
        signer = self._load_signer(f"file:{Path(str(key_path)).resolve()}")
        if _spki(signer.public_key()) != _spki(cert.public_key()):
            raise ValidationError(f"CA key '{key_path}' does not belong to the certificate '{cert_path}'")
        mode = "self-signed-operator" if is_self_signed(cert) else "sub-ca"
        return self._root_values(issuer, cert, signer.ref, mode=mode,
                                 external_chain="".join(pem_of(c) for c in outside))


def _spki(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _path_len(cert: x509.Certificate) -> int | None:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length
    except x509.ExtensionNotFound:
        return None

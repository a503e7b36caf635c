"""The CA hierarchy admin API: register a root, sign intermediates under a parent, list, get, retire.

A local (GenericCA) issuer signs with one CA of its tree (`issuing_ca_id` in its config, else the
root; see CAService). This service grows and prunes that tree. Each write is one transaction with
its audit event, and nothing is stored before the new certificate has passed RFC 5280 path
validation up to its root (certctl.pki.hierarchy).

Create a child, in order:
  1. check the issuer (exists, GenericCA), the body, the parent (exists, same issuer, active) and
     the rules the child keeps towards its ancestors (pathLen, name constraints, validity);
  2. generate the child's key through the signer registry (file or PKCS#11) and have the parent's
     signer sign the certificate;
  3. validate the new chain;
  4. in one transaction: re-read the parent under lock (still active?), insert the row, audit.
A refusal at step 4 leaves an unused key behind in the key store (never a row without its key).

Retire is two-step (drain first): active -> retiring (the CA signs no new CAs or leaves, its
children keep working), then with confirm=true retiring -> retired, refused while a child is
still active or retiring.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import NameOID
from sqlalchemy.ext.asyncio import AsyncConnection

from certctl.domain.actor import Actor
from certctl.domain.enums import IssuerType
from certctl.domain.errors import ConflictError, NotFoundError, ValidationError
from certctl.domain.ids import slugify
from certctl.domain.models.intermediates import (
    IntermediateCA,
    IntermediateCACreate,
    RetireIntermediateBody,
    RetireIntermediateResult,
    SubjectIn,
)
from certctl.pki.ca import IssuingCA, is_self_signed, load_pem_chain
from certctl.pki.hierarchy import (
    build_child_ca,
    check_child_name_constraints,
    child_path_len,
    child_validity,
    name_constraints_json,
    name_constraints_of,
    parse_name_constraints,
    validate_ca_chain,
)
from certctl.pki.serials import new_serial, serial_hex
from certctl.pki.signers import DEFAULT_KEY_SPEC, Signer, SignerError, key_spec_of, normalize_key_spec
from certctl.services import audit
from certctl.services.ca_service import CAService, pem_of, subject_json
from certctl.services.context import ServiceContext
from certctl.store import ca_repo, rows
from certctl.store.rows import Row
from certctl.store.schema import intermediate_cas, issuers

ACTIVE, RETIRING, RETIRED = "active", "retiring", "retired"
RESOURCE = "intermediate_ca"


def _subject_name(subject: SubjectIn) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COUNTRY_NAME, v) for v in subject.country]
    attributes += [x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, v) for v in subject.province]
    attributes += [x509.NameAttribute(NameOID.LOCALITY_NAME, v) for v in subject.locality]
    attributes += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, v) for v in subject.organization]
    attributes += [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, v) for v in subject.organizational_unit]
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, subject.common_name.strip()))
    return x509.Name(attributes)


def _spki(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _check_ocsp_url(url: str) -> str:
    if not url:
        return ""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError("ocsp_responder_url: must be an http or https URL")
    return url


def to_model(row: Row | Mapping[str, Any]) -> IntermediateCA:
    cert = x509.load_pem_x509_certificate(row["cert_pem"].encode())
    return IntermediateCA.model_validate({
        **dict(row), "subject": cert.subject.rfc4514_string(),
        "name_constraints": row["name_constraints"] or [], "metadata": row["metadata"] or {},
    })


class IntermediateService:
    def __init__(self, ctx: ServiceContext, cas: CAService) -> None:
        self.ctx = ctx
        self.cas = cas

    # ---- reads ----------------------------------------------------------------------------------
    async def list(self, issuer_id: str) -> list[IntermediateCA]:
        async with self.ctx.db.read() as conn:
            await self._local_issuer(conn, issuer_id)
            found = await ca_repo.cas_of_issuer(conn, issuer_id)
        return [to_model(r) for r in found]

    async def get(self, ca_id: str) -> IntermediateCA:
        async with self.ctx.db.read() as conn:
            row = await ca_repo.get_ca(conn, ca_id)
        if row is None:
            raise NotFoundError.of("intermediate CA", ca_id)
        return to_model(row)

    # ---- create ---------------------------------------------------------------------------------
    async def create(self, actor: Actor, issuer_id: str, data: IntermediateCACreate) -> IntermediateCA:
        if data.parent_ca_id:
            return await self._create_child(actor, issuer_id, data.parent_ca_id, data)
        return await self._register_root(actor, issuer_id, data)

    async def _register_root(self, actor: Actor, issuer_id: str, data: IntermediateCACreate) -> IntermediateCA:
        child_only = [f for f in ("subject", "algorithm", "ttl_days", "path_len_constraint")
                      if getattr(data, f) is not None] + (["name_constraints"] if data.name_constraints else [])
        if child_only:
            raise ValidationError(f"{', '.join(child_only)}: only for a child CA (give parent_ca_id); a root "
                                  "is registered from root_cert_pem and key_driver_id")
        if not data.root_cert_pem or not data.key_driver_id:
            raise ValidationError("root_cert_pem + key_driver_id are required when parent_ca_id is empty")
        ocsp_url = _check_ocsp_url(data.ocsp_responder_url)
        try:
            certs = load_pem_chain(data.root_cert_pem)
        except ValueError:
            certs = []
        if len(certs) != 1:
            raise ValidationError("root_cert_pem: must hold exactly one PEM certificate")
        cert = certs[0]
        if not is_self_signed(cert):
            raise ValidationError("root_cert_pem: the certificate is not self-signed, so it cannot be a root")
        try:
            key_algorithm = key_spec_of(cert.public_key())
        except SignerError as exc:
            raise ValidationError(f"root_cert_pem: {exc}") from None
        now = self.ctx.clock.now()
        validate_ca_chain(cert, [], now)
        signer = self._open_key(data.key_driver_id)
        if _spki(signer.public_key()) != _spki(cert.public_key()):
            raise ValidationError(f"key_driver_id: the key '{data.key_driver_id}' does not match the root "
                                  "certificate (CA key mismatch)")
        async with self.ctx.db.read() as conn:
            issuer = await self._local_issuer(conn, issuer_id)
            await self._refuse_taken_name(conn, issuer_id, data.name)
            ca_id = await self._new_id(conn, issuer, data.name)
        values = self._row(ca_id, issuer_id, None, data, cert, signer.ref, key_algorithm, ocsp_url)
        async with self.ctx.db.transaction() as conn:
            existing = await ca_repo.active_root(conn, issuer_id)
            if existing is not None:
                raise ConflictError(f"issuer '{issuer_id}' already has an active root CA '{existing['id']}'; "
                                    "retire it first")
            await ca_repo.insert_ca(conn, values)
            await audit.record(conn, self.ctx.clock, actor, "intermediate_ca_created", RESOURCE, ca_id,
                               self._audit_details(values, kind="root"))
        return to_model(values)

    async def _create_child(self, actor: Actor, issuer_id: str, parent_id: str,
                            data: IntermediateCACreate) -> IntermediateCA:
        if data.root_cert_pem or data.key_driver_id:
            raise ValidationError("root_cert_pem, key_driver_id: only for a root registration (no parent_ca_id); "
                                  "a child CA's key is generated by the server")
        try:
            key_spec = normalize_key_spec(data.algorithm or DEFAULT_KEY_SPEC)
        except SignerError as exc:
            raise ValidationError(f"algorithm: {exc}") from None
        ocsp_url = _check_ocsp_url(data.ocsp_responder_url)
        constraints = parse_name_constraints([c.model_dump() for c in data.name_constraints])
        subject = _subject_name(data.subject or SubjectIn(common_name=data.name[:64]))
        now = self.ctx.clock.now()

        # 1. the issuer, the parent and the rules
        async with self.ctx.db.read() as conn:
            issuer = await self._local_issuer(conn, issuer_id)
            parent_row = await ca_repo.get_ca(conn, parent_id)
            if parent_row is None or parent_row["owning_issuer_id"] != issuer_id:
                raise NotFoundError(f"parent CA '{parent_id}' not found under issuer '{issuer_id}'")
            self._require_active_parent(parent_row)
            await self._refuse_taken_name(conn, issuer_id, data.name)
            parent = self.cas.load(parent_row, await self.cas.ancestors(conn, parent_row))
            ca_id = await self._new_id(conn, issuer, data.name)
            serial = new_serial()
            while await ca_repo.serial_in_use(conn, parent_id, serial_hex(serial)):
                serial = new_serial()
        path_len = child_path_len(parent.cert, data.path_len_constraint)
        check_child_name_constraints(constraints, (parent.cert, *parent.parents))
        ttl = None if data.ttl_days is None else timedelta(days=data.ttl_days)
        not_before, not_after = child_validity(parent.cert, now, ttl)

        # 2. key and certificate (CPU and key-store I/O: off the event loop)
        label = f"ca-{ca_id}-{secrets.token_hex(4)}"
        cert, signer = await asyncio.to_thread(
            self._sign_child, parent, key_spec, label, subject, (not_before, not_after), path_len, constraints, serial)

        # 3. RFC 5280 path validation of the new CA up to its root
        validate_ca_chain(cert, (parent.cert, *parent.parents), now)

        # 4. store it, unless the parent stopped being active meanwhile
        values = self._row(ca_id, issuer_id, parent_id, data, cert, signer.ref, key_spec, ocsp_url)
        async with self.ctx.db.transaction() as conn:
            locked = await ca_repo.get_ca(conn, parent_id, for_update=True)
            if locked is None:
                raise NotFoundError(f"parent CA '{parent_id}' not found under issuer '{issuer_id}'")
            self._require_active_parent(locked)
            await ca_repo.insert_ca(conn, values)
            await audit.record(conn, self.ctx.clock, actor, "intermediate_ca_created", RESOURCE, ca_id,
                               self._audit_details(values, kind="child"))
        return to_model(values)

    def _sign_child(self, parent: IssuingCA, key_spec: str, label: str, subject: x509.Name,
                    validity: tuple[datetime, datetime], path_len: int | None,
                    constraints: x509.NameConstraints | None, serial: int) -> tuple[x509.Certificate, Signer]:
        not_before, not_after = validity
        try:
            signer = self.ctx.signers.generate(key_spec, label)
        except SignerError as exc:
            raise ValidationError(f"the child CA's key cannot be generated: {exc}") from None
        cert = build_child_ca(parent, subject, signer.public_key(), not_before, not_after, path_len, constraints,
                              serial=serial)
        return cert, signer

    # ---- retire ---------------------------------------------------------------------------------
    async def retire(self, actor: Actor, ca_id: str, body: RetireIntermediateBody) -> RetireIntermediateResult:
        now = self.ctx.clock.now()
        async with self.ctx.db.transaction() as conn:
            row = await ca_repo.get_ca(conn, ca_id, for_update=True)
            if row is None:
                raise NotFoundError.of("intermediate CA", ca_id)
            state = row["state"]
            if state == RETIRED:
                raise ConflictError(f"CA '{ca_id}' is already retired")
            if state == ACTIVE:
                # Step one whatever `confirm` says: a CA is always drained before it is retired.
                new_state, action = RETIRING, "intermediate_ca_retiring"
                changes: dict[str, Any] = {"state": RETIRING, "updated_at": now}
            elif not body.confirm:
                raise ConflictError(f"CA '{ca_id}' is already retiring; send confirm=true to retire it")
            else:
                live = await ca_repo.children(conn, ca_id, states=(ACTIVE, RETIRING))
                if live:
                    names = ", ".join(f"{c['id']} ({c['state']})" for c in live[:10])
                    raise ConflictError(f"CA '{ca_id}' still has {len(live)} active or retiring child CA(s): "
                                        f"{names}; retire them first", extra={"active_children": len(live)})
                new_state, action = RETIRED, "intermediate_ca_retired"
                changes = {"state": RETIRED, "retired_at": now, "updated_at": now}
            if body.note:
                changes["retire_note"] = body.note
            await ca_repo.update_ca(conn, ca_id, changes)
            await audit.record(conn, self.ctx.clock, actor, action, RESOURCE, ca_id, {
                "issuer_id": row["owning_issuer_id"], "from_state": state, "to_state": new_state,
                "confirm": body.confirm, "note": body.note,
            })
        self.cas.forget(ca_id)
        return RetireIntermediateResult(id=ca_id, decided_by=actor.name, confirmed=body.confirm, state=new_state)

    # ---- helpers --------------------------------------------------------------------------------
    async def _local_issuer(self, conn: AsyncConnection, issuer_id: str) -> Row:
        issuer = await rows.get_row(conn, issuers, issuer_id)
        if issuer is None:
            raise NotFoundError.of("issuer", issuer_id)
        if issuer["type"] != IssuerType.GENERIC_CA.value:
            raise ValidationError(f"issuer '{issuer_id}' is a {issuer['type']} issuer; a CA hierarchy belongs to a "
                                  f"local CA ({IssuerType.GENERIC_CA.value}) issuer")
        return issuer

    @staticmethod
    def _require_active_parent(parent: Row) -> None:
        if parent["state"] != ACTIVE:
            raise ConflictError(f"parent CA '{parent['id']}' is {parent['state']}; only an active CA signs new CAs")

    @staticmethod
    async def _refuse_taken_name(conn: AsyncConnection, issuer_id: str, name: str) -> None:
        if await ca_repo.name_taken(conn, issuer_id, name):
            raise ConflictError(f"issuer '{issuer_id}' already has a CA named '{name}'")

    @staticmethod
    async def _new_id(conn: AsyncConnection, issuer: Row, name: str) -> str:
        """`ica-<slug of the name>`, qualified by the issuer and then a random suffix when taken."""
        slug = slugify(name)[:64]
        for candidate in (f"ica-{slug}", f"ica-{slugify(issuer['id'])[:48]}-{slug}"):
            if not await rows.exists(conn, intermediate_cas, candidate):
                return candidate
        return f"ica-{slug}-{secrets.token_hex(3)}"

    def _open_key(self, ref: str) -> Signer:
        """A root's key by reference, through the signer registry: a file in the key directory or a token
        object. Arbitrary absolute paths are refused (an API call must not read files of its choosing)."""
        try:
            return self.ctx.signers.load(ref)
        except SignerError as exc:
            raise ValidationError(f"key_driver_id: {exc}") from None

    def _row(self, ca_id: str, issuer_id: str, parent_id: str | None, data: IntermediateCACreate,
             cert: x509.Certificate, key_ref: str, key_algorithm: str, ocsp_url: str) -> dict[str, Any]:
        now = self.ctx.clock.now()
        bc = next((e.value for e in cert.extensions if isinstance(e.value, x509.BasicConstraints)), None)
        return {
            "id": ca_id, "owning_issuer_id": issuer_id, "parent_ca_id": parent_id, "name": data.name,
            "subject": subject_json(cert.subject), "state": ACTIVE, "cert_pem": pem_of(cert),
            "external_chain_pem": "", "key_driver_id": key_ref, "key_algorithm": key_algorithm,
            "serial_number": serial_hex(cert.serial_number), "not_before": cert.not_valid_before_utc,
            "not_after": cert.not_valid_after_utc, "path_len_constraint": bc.path_length if bc else None,
            "name_constraints": name_constraints_json(name_constraints_of(cert)), "ocsp_responder_url": ocsp_url,
            "metadata": dict(data.metadata), "retired_at": None, "retire_note": None,
            "created_at": now, "updated_at": now,
        }

    @staticmethod
    def _audit_details(values: dict[str, Any], *, kind: str) -> dict[str, Any]:
        return {
            "kind": kind, "issuer_id": values["owning_issuer_id"], "parent_ca_id": values["parent_ca_id"],
            "name": values["name"], "subject": values["subject"], "serial_number": values["serial_number"],
            "key_algorithm": values["key_algorithm"], "key_driver_id": values["key_driver_id"],
            "path_len_constraint": values["path_len_constraint"], "name_constraints": values["name_constraints"],
            "not_after": values["not_after"].isoformat(),
        }



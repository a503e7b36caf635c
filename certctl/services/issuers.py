"""Issuers: inventory of the certificate authorities, with sealed configs and a local self-test.

`test` checks the per-type config; then for the local CA (GenericCA) its key pair on disk, and for a
type with a connector (ACME) the connector's own check against the CA (read-only). Other types are
checked without talking to anyone.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from certctl.connectors.issuers.registry import has_connector
from certctl.connectors.issuers.registry import validate_issuer_config as validate_connector_config
from certctl.domain.actor import Actor
from certctl.domain.enums import IssuerType
from certctl.domain.errors import ConflictError, NotFoundError, ValidationError
from certctl.domain.models.issuers import ConnectionTestResult, Issuer
from certctl.pki.ca_check import ca_pair_problems
from certctl.services import audit
from certctl.services.connector_config import (
    ConfigRules,
    apply_config_change,
    config_keys,
    config_problems,
    require_valid,
    sealed_columns,
    unseal,
    without_placeholders,
)
from certctl.services.crud import CrudService, refuse_if_referenced
from certctl.services.issuer_connectors import IssuerConnectors
from certctl.store import ca_repo, rows
from certctl.store.rows import Row
from certctl.store.schema import issuers, managed_certificates

log = logging.getLogger("certctl.issuers")

_HTTPS = ("https",)

ISSUER_RULES: dict[IssuerType, ConfigRules] = {
    IssuerType.ACME: ConfigRules(
        required=("directory_url", "email"),
        urls={"directory_url": _HTTPS},
        emails=("email",),
        ports=("http_port",),
        positive_ints=("ari_http_timeout_seconds",),  # dns_propagation_wait may be 0: the connector checks it
        choices={"challenge_type": ("http-01", "dns-01", "dns-persist-01")},
        together=(("eab_kid", "eab_hmac"),),
    ),
    IssuerType.GENERIC_CA: ConfigRules(
        positive_ints=("validity_days", "ca_validity_days"),
        together=(("ca_cert_path", "ca_key_path"),),
        # The root generated on first use (key spec names as in certctl.pki.signers).
        choices={"key_algorithm": ("ECDSA-P256", "ECDSA-P384", "RSA-2048", "RSA-3072", "RSA-4096", "Ed25519")},
    ),
    IssuerType.STEP_CA: ConfigRules(
        required=(("ca_url", "url"), ("provisioner_name", "provisioner")),
        urls={"ca_url": _HTTPS, "url": _HTTPS},
        positive_ints=("validity_days",),
    ),
    IssuerType.OPENSSL: ConfigRules(required=("sign_script",), positive_ints=("timeout_seconds",)),
    IssuerType.VAULT_PKI: ConfigRules(
        required=(("addr", "address"), "mount", "role", "token"),
        urls={"addr": ("https", "http"), "address": ("https", "http")},
    ),
    IssuerType.DIGICERT: ConfigRules(
        required=("api_key", "org_id"), urls={"base_url": _HTTPS}, positive_ints=("poll_max_wait_seconds",)
    ),
    IssuerType.SECTIGO: ConfigRules(
        required=("customer_uri", "login", "password"),
        urls={"base_url": _HTTPS},
        positive_ints=("term", "poll_max_wait_seconds"),
    ),
    IssuerType.GOOGLE_CAS: ConfigRules(
        required=("project", "location", "ca_pool", "credentials"),
        urls={"base_url": _HTTPS, "token_url": _HTTPS},
    ),
    IssuerType.AWS_ACM_PCA: ConfigRules(required=("region", "ca_arn"), positive_ints=("validity_days",)),
    IssuerType.ENTRUST: ConfigRules(
        required=("api_url", "ca_id"),
        urls={"api_url": _HTTPS},
        together=(("client_cert_path", "client_key_path"),),
    ),
    IssuerType.GLOBALSIGN: ConfigRules(
        required=("api_url", "api_key", "api_secret"),
        urls={"api_url": _HTTPS},
        together=(("client_cert_path", "client_key_path"),),
    ),
    IssuerType.EJBCA: ConfigRules(
        required=("api_url", "ca_name"),
        urls={"api_url": _HTTPS},
        choices={"auth_mode": ("mtls", "oauth2")},
    ),
}


def validate_issuer_config(issuer_type: IssuerType, config: Mapping[str, Any]) -> None:
    require_valid(f"{issuer_type.value} issuer", ISSUER_RULES[issuer_type], config)
    validate_connector_config(issuer_type.value, config)  # a connector's own checks, defaults applied


class IssuerService(CrudService[Issuer]):
    table = issuers
    model = Issuer
    resource = "issuer"
    id_prefix = "issuer"

    async def prepare_create(self, conn: AsyncConnection, values: dict[str, Any]) -> dict[str, Any]:
        issuer_type = IssuerType(values["type"])
        config = without_placeholders(values.get("config", {}))
        validate_issuer_config(issuer_type, config)
        values.update(type=issuer_type.value, source="database", **sealed_columns(self.ctx.sealer, config))
        return values

    async def prepare_update(self, conn: AsyncConnection, current: Row, changes: dict[str, Any]) -> dict[str, Any]:
        if "type" in changes:
            changes["type"] = IssuerType(changes["type"]).value
        apply_config_change(
            self.ctx.sealer, current, changes, "issuer",
            lambda issuer_type, config: validate_issuer_config(_issuer_type(issuer_type), config),
        )
        return changes

    async def check_delete(self, conn: AsyncConnection, current: Row) -> None:
        await refuse_if_referenced(
            conn, f"issuer '{current['id']}'",
            [("certificates", managed_certificates, managed_certificates.c.issuer_id == current["id"])],
        )
        # With no certificate left, its CAs signed nothing in the inventory: their rows go with it. The key files
        # stay in the key directory (or token) for the operator to destroy or keep.
        deleted = await ca_repo.delete_cas_of_issuer(conn, current["id"])
        if deleted:
            log.info("issuer CAs deleted with their issuer", extra={"issuer_id": current["id"], "cas": deleted})

    def audit_details(self, values: dict[str, Any]) -> dict[str, Any]:
        details: dict[str, Any] = {k: str(values[k]) for k in ("name", "type", "hierarchy_mode") if k in values}
        if "enabled" in values:
            details["enabled"] = bool(values["enabled"])
        if "config" in values:
            details["config_fields"] = config_keys(values["config"])
        return details

    async def _ensure_name_free(self, conn: AsyncConnection, name: str, own_id: str | None) -> None:
        clash = await rows.list_rows(conn, issuers, issuers.c.name == name, limit=1)
        if clash and clash[0]["id"] != own_id:
            raise ConflictError(f"an issuer named '{name}' already exists")

    # ---- POST /issuers/{id}/test ----------------------------------------------------------------
    async def test(self, actor: Actor, issuer_id: str) -> ConnectionTestResult:
        """Check the stored config (and the local CA's key pair); record and audit the result.

        A failed test answers 400 with the reasons, after the failure has been recorded.
        """
        async with self.ctx.db.read() as conn:
            row = await rows.get_row(conn, issuers, issuer_id)
        if row is None:
            raise NotFoundError.of("issuer", issuer_id)
        config = unseal(self.ctx.sealer, row, "issuer")
        try:
            issuer_type: IssuerType | None = IssuerType.parse(row["type"])
        except ValueError:
            issuer_type = None
        message = "configuration is complete (the CA itself was not contacted)"
        if issuer_type is None:
            problems = [f"unknown issuer type '{row['type']}'"]
        else:
            problems = config_problems(ISSUER_RULES[issuer_type], config)
        if issuer_type is IssuerType.GENERIC_CA and not problems:
            problems, message = self._local_ca_check(config)
        elif issuer_type is not None and not problems and has_connector(issuer_type.value):
            # The connector contacts the CA (ACME: its directory over verified TLS) without changing anything.
            problems = await IssuerConnectors(self.ctx).for_issuer(row).check()
            message = "the CA answered and offers what the configuration asks for"
        result = ConnectionTestResult(
            status="failed" if problems else "success",
            message="; ".join(problems) if problems else message,
        )
        now = self.ctx.clock.now()
        async with self.ctx.db.transaction() as conn:
            if not await rows.update_row(conn, issuers, issuer_id, {"last_tested_at": now,
                                                                       "test_status": result.status}):
                raise NotFoundError.of("issuer", issuer_id)
            await audit.record(
                conn, self.ctx.clock, actor, "issuer_tested", "issuer", issuer_id,
                {"status": result.status, "message": result.message},
            )
        if problems:
            raise ValidationError(f"issuer test failed: {result.message}")
        return result

    def _local_ca_check(self, config: Mapping[str, Any]) -> tuple[list[str], str]:
        """The local CA signs with a key pair from disk (sub-CA mode) or makes its own root."""
        extra = self.ctx.settings.extra
        cert_path = config.get("ca_cert_path") or extra.get("CERTCTL_CA_CERT_PATH")
        key_path = config.get("ca_key_path") or extra.get("CERTCTL_CA_KEY_PATH")
        if not cert_path and not key_path:
            return [], "local CA in self-signed mode: it creates its own root certificate"
        if not cert_path or not key_path:
            return ["the CA certificate path and the CA key path must be set together"], ""
        problems = ca_pair_problems(Path(str(cert_path)), Path(str(key_path)), self.ctx.clock.now())
        return problems, f"local CA key pair {cert_path} is usable for signing"


def _issuer_type(value: str) -> IssuerType:
    try:
        return IssuerType.parse(value)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None

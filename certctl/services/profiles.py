"""Certificate profiles."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from certctl.domain.errors import ValidationError
from certctl.domain.models.profiles import (
    DEFAULT_EKUS,
    SHORT_LIVED_TTL_SECONDS,
    CertificateProfile,
    KeyAlgorithmRuleInput,
    default_key_algorithms,
)
from certctl.services.crud import CrudService, refuse_if_referenced
from certctl.store.rows import Row
from certctl.store.schema import certificate_profiles, managed_certificates

_CREATE_DEFAULTS: dict[str, Any] = {
    "description": "",
    "max_ttl_seconds": 0,
    "required_san_patterns": [],
    "spiffe_uri_pattern": "",
    "allow_short_lived": False,
    "must_staple": False,
    "required_csr_attributes": [],
    "acme_auth_mode": "trust_authenticated",
    "requires_approval": False,
    "enabled": True,
    "key_generation_mode": "",
}


def _as_json(values: dict[str, Any]) -> dict[str, Any]:
    """Nested models and enums as plain JSON values for the JSON columns."""
    out = dict(values)
    if out.get("allowed_key_algorithms") is not None:
        # Partial updates arrive dumped with exclude_unset, which drops defaulted nested fields.
        out["allowed_key_algorithms"] = [
            KeyAlgorithmRuleInput.model_validate(rule).model_dump(mode="json")
            for rule in out["allowed_key_algorithms"]
        ] or [rule.model_dump(mode="json") for rule in default_key_algorithms()]
    if out.get("allowed_ekus") is not None:
        out["allowed_ekus"] = [str(eku) for eku in out["allowed_ekus"]] or [eku.value for eku in DEFAULT_EKUS]
    return out


def _check_short_lived(allow_short_lived: bool, max_ttl_seconds: int) -> None:
    # As in the reference: a short-lived profile must actually cap the lifetime under an hour.
    if allow_short_lived and max_ttl_seconds >= SHORT_LIVED_TTL_SECONDS:
        raise ValidationError(
            f"allow_short_lived requires max_ttl_seconds under {SHORT_LIVED_TTL_SECONDS}, got {max_ttl_seconds}"
        )


class ProfileService(CrudService[CertificateProfile]):
    table = certificate_profiles
    model = CertificateProfile
    resource = "certificate_profile"
    id_prefix = "prof"

    async def prepare_create(self, conn: AsyncConnection, values: dict[str, Any]) -> dict[str, Any]:
        values = _as_json(values)
        for key, default in _CREATE_DEFAULTS.items():
            values.setdefault(key, default)
        values.setdefault("allowed_key_algorithms", [r.model_dump(mode="json") for r in default_key_algorithms()])
        values.setdefault("allowed_ekus", [eku.value for eku in DEFAULT_EKUS])
        _check_short_lived(values["allow_short_lived"], values["max_ttl_seconds"])
        return values

    async def prepare_update(
        self, conn: AsyncConnection, current: Row, changes: dict[str, Any]
    ) -> dict[str, Any]:
        changes = _as_json(changes)
        _check_short_lived(
            changes.get("allow_short_lived", current["allow_short_lived"]),
            changes.get("max_ttl_seconds", current["max_ttl_seconds"]),
        )
        return changes

    async def check_delete(self, conn: AsyncConnection, current: Row) -> None:
        # The reference sets the certificates' profile to NULL, silently dropping their constraints
        # (and approval gates); refusing keeps an operator from loosening policy by accident.
        await refuse_if_referenced(
            conn, f"certificate profile '{current['id']}'",
            [("certificates", managed_certificates,
              managed_certificates.c.certificate_profile_id == current["id"])],
        )

"""The CA hierarchy of a local issuer: roots, intermediates and issuing CAs (admin only)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field, field_validator

from certctl.domain.models.common import InputModel, JsonObject, WireModel

CAState = Literal["active", "retiring", "retired"]


class NameConstraintSet(WireModel):
    """RFC 5280 §4.2.1.10 subtrees. Entries: `example.com` / `.example.com` (DNS), `10.0.0.0/8` (IP range),
    `email:example.com` or `user@example.com` (mail), `URI:.example.com` (URI host)."""

    permitted: list[str] = Field(default_factory=list)
    excluded: list[str] = Field(default_factory=list)


class IntermediateCA(WireModel):
    id: str
    owning_issuer_id: str
    parent_ca_id: str | None  # None: the root of the issuer's tree
    name: str
    subject: str  # RFC 4514 distinguished name, as in the certificate
    state: CAState
    cert_pem: str
    key_driver_id: str  # a reference to the key (file name, PKCS#11 URI), never key material
    path_len_constraint: int | None
    name_constraints: list[NameConstraintSet]
    ocsp_responder_url: str
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    # Beyond the reference: read from the certificate, and the retirement record.
    not_before: datetime
    not_after: datetime
    serial_number: str
    key_algorithm: str
    retired_at: datetime | None
    retire_note: str | None


class IntermediateCAList(WireModel):
    data: list[IntermediateCA]


class SubjectIn(InputModel):
    """The reference's subject object (Go pkix.Name fields); lists or single strings are accepted."""

    common_name: str = Field(min_length=1, max_length=64)  # ub-common-name, RFC 5280 appendix A
    organization: list[str] = Field(default_factory=list, max_length=8)
    organizational_unit: list[str] = Field(default_factory=list, max_length=8)
    country: list[str] = Field(default_factory=list, max_length=1)
    locality: list[str] = Field(default_factory=list, max_length=8)
    province: list[str] = Field(default_factory=list, max_length=8)

    @field_validator("organization", "organizational_unit", "country", "locality", "province", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("organization", "organizational_unit", "locality", "province")
    @classmethod
    def _bounded(cls, value: list[str]) -> list[str]:
        cleaned = [v.strip() for v in value if v.strip()]
        if any(len(v) > 64 for v in cleaned):
            raise ValueError("at most 64 characters per value")
        return cleaned

    @field_validator("country")
    @classmethod
    def _country(cls, value: list[str]) -> list[str]:
        cleaned = [v.strip().upper() for v in value if v.strip()]
        if any(len(v) != 2 or not v.isalpha() for v in cleaned):
            raise ValueError("a two-letter ISO 3166 country code")
        return cleaned


class NameConstraintIn(InputModel):
    permitted: list[str] = Field(default_factory=list, max_length=64)
    excluded: list[str] = Field(default_factory=list, max_length=64)


class IntermediateCACreate(InputModel):
    """Either a root registration (`root_cert_pem` + `key_driver_id`, no parent) or a child signed under
    `parent_ca_id`; the fields of the other kind are refused rather than ignored."""

    name: str = Field(min_length=1, max_length=128)
    parent_ca_id: str | None = Field(default=None, max_length=128)
    root_cert_pem: str | None = Field(default=None, max_length=65536)
    key_driver_id: str | None = Field(default=None, max_length=1024)
    subject: SubjectIn | None = None
    algorithm: str | None = Field(default=None, max_length=32)
    ttl_days: int | None = Field(default=None, ge=1, le=36500)
    path_len_constraint: int | None = Field(default=None, ge=0, le=32)
    name_constraints: list[NameConstraintIn] = Field(default_factory=list, max_length=16)
    ocsp_responder_url: str = Field(default="", max_length=2048)
    metadata: JsonObject = Field(default_factory=dict)


class RetireIntermediateBody(InputModel):
    note: str = Field(default="", max_length=2000)
    confirm: bool = False


class RetireIntermediateResult(WireModel):
    """The reference's answer (`id`, `decided_by`, `confirmed`) plus the state reached."""

    id: str
    decided_by: str
    confirmed: bool
    state: CAState

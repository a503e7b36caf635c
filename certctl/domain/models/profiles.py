"""Certificate profiles: what a certificate issued under the profile may look like."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal, Self

from pydantic import Field, StringConstraints, field_validator, model_validator

from certctl.domain.enums import ExtendedKeyUsage, KeyAlgorithm
from certctl.domain.models.common import InputModel, WireModel

# Short-lived certificates (ttl under an hour) rely on expiry instead of CRL/OCSP (core.md §1).
SHORT_LIVED_TTL_SECONDS = 3600
# Smallest accepted key per algorithm; Ed25519 has one fixed size.
MIN_KEY_SIZES = {KeyAlgorithm.RSA: 2048, KeyAlgorithm.ECDSA: 256, KeyAlgorithm.ED25519: 0}
MAX_KEY_SIZES = {KeyAlgorithm.RSA: 16384, KeyAlgorithm.ECDSA: 521, KeyAlgorithm.ED25519: 256}

AcmeAuthMode = Literal["trust_authenticated", "challenge"]
# "" defers to the server-wide CERTCTL_KEYGEN_MODE.
KeyGenerationMode = Literal["", "agent", "server"]
ShortText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)]


def default_key_algorithms() -> list[KeyAlgorithmRule]:
    return [
        KeyAlgorithmRule(algorithm=KeyAlgorithm.ECDSA, min_size=256),
        KeyAlgorithmRule(algorithm=KeyAlgorithm.RSA, min_size=2048),
    ]


DEFAULT_EKUS = [ExtendedKeyUsage.SERVER_AUTH]


class KeyAlgorithmRule(WireModel):
    algorithm: KeyAlgorithm
    min_size: int


class KeyAlgorithmRuleInput(InputModel):
    algorithm: KeyAlgorithm
    min_size: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _sizes(self) -> Self:
        floor, ceiling = MIN_KEY_SIZES[self.algorithm], MAX_KEY_SIZES[self.algorithm]
        if self.algorithm != KeyAlgorithm.ED25519 and self.min_size == 0:
            self.min_size = floor  # no size given: the weakest size still accepted
        if self.min_size < floor:
            raise ValueError(f"{self.algorithm.value} min_size must be at least {floor}, got {self.min_size}")
        if self.min_size > ceiling:
            raise ValueError(f"{self.algorithm.value} min_size must be at most {ceiling}, got {self.min_size}")
        return self


class CertificateProfile(WireModel):
    id: str
    name: str
    description: str
    allowed_key_algorithms: list[KeyAlgorithmRule]
    max_ttl_seconds: int
    allowed_ekus: list[ExtendedKeyUsage]
    required_san_patterns: list[str]
    spiffe_uri_pattern: str
    allow_short_lived: bool
    must_staple: bool
    required_csr_attributes: list[str]
    acme_auth_mode: AcmeAuthMode
    requires_approval: bool
    enabled: bool
    key_generation_mode: KeyGenerationMode
    created_at: datetime
    updated_at: datetime

    @property
    def is_short_lived(self) -> bool:
        return self.allow_short_lived and 0 < self.max_ttl_seconds < SHORT_LIVED_TTL_SECONDS


def _check_patterns(value: list[str] | None) -> list[str] | None:
    for pattern in value or []:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"'{pattern}' is not a valid regular expression: {exc}") from None
    return value


def _unique(values: list[ExtendedKeyUsage] | None) -> list[ExtendedKeyUsage] | None:
    return None if values is None else list(dict.fromkeys(values))


class _ProfileFields(InputModel):
    """Fields shared by create and update; None means "not given"."""

    description: str | None = Field(default=None, max_length=4096)
    # An empty list means "the defaults" (ECDSA-256 and RSA-2048), as in the reference.
    allowed_key_algorithms: list[KeyAlgorithmRuleInput] | None = Field(default=None, max_length=16)
    max_ttl_seconds: int | None = Field(default=None, ge=0, le=100 * 366 * 86400)
    allowed_ekus: list[ExtendedKeyUsage] | None = Field(default=None, max_length=16)
    required_san_patterns: list[Annotated[str, StringConstraints(min_length=1, max_length=1024)]] | None = Field(
        default=None, max_length=64
    )
    spiffe_uri_pattern: str | None = Field(default=None, max_length=1024)
    allow_short_lived: bool | None = None
    must_staple: bool | None = None
    required_csr_attributes: list[ShortText] | None = Field(default=None, max_length=64)
    acme_auth_mode: AcmeAuthMode | None = None
    requires_approval: bool | None = None
    enabled: bool | None = None
    key_generation_mode: KeyGenerationMode | None = None

    _patterns = field_validator("required_san_patterns")(_check_patterns)
    _ekus = field_validator("allowed_ekus")(_unique)


class ProfileCreate(_ProfileFields):
    id: str | None = Field(default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
    name: str = Field(min_length=1, max_length=255)


class ProfileUpdate(_ProfileFields):
    name: str | None = Field(default=None, min_length=1, max_length=255)

"""Managed certificates, their versions and exports (core.md §1 ManagedCertificate / CertificateVersion).

Names are validated here, once, so that the API, the CLI and every service share one idea of what
a certificate may be asked for: a common name is a hostname, a wildcard hostname or an e-mail
address; SANs are DNS names, IP addresses, e-mail addresses or URIs (RFC 5280 §4.2.1.6).
"""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from certctl.domain.enums import CertificateStatus
from certctl.domain.models.common import InputModel, WireModel

MAX_NAME_LENGTH = 253  # RFC 1035 §2.3.4 total length of a presentation-format name
MAX_SANS = 100
MAX_TAGS = 64

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")
_EMAIL_LOCAL = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}$")
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*$")
_ID_PATTERN = r"^[A-Za-z0-9._:-]+$"


def is_hostname(value: str, *, allow_wildcard: bool = True) -> bool:
    """A DNS name; with `allow_wildcard`, `*` may be the whole left-most label (RFC 6125 §6.4.3)."""
    if not value or len(value) > MAX_NAME_LENGTH:
        return False
    labels = value.removesuffix(".").split(".")
    if allow_wildcard and labels[0] == "*" and len(labels) > 1:
        labels = labels[1:]
    return all(_LABEL.match(label) for label in labels)


def is_email(value: str) -> bool:
    local, at, domain = value.rpartition("@")
    if not at or len(value) > MAX_NAME_LENGTH:
        return False
    if not _EMAIL_LOCAL.match(local) or local.startswith(".") or local.endswith(".") or ".." in local:
        return False
    return "." in domain and is_hostname(domain, allow_wildcard=False)


def is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def is_uri(value: str) -> bool:
    if len(value) > 2048 or any(ch.isspace() for ch in value):
        return False
    scheme, sep, _ = value.partition("://")
    if not sep or not _URI_SCHEME.match(scheme):
        return False
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return bool(parts.netloc)


def _check_common_name(value: str) -> str:
    if is_hostname(value) or is_email(value):
        return value
    raise ValueError(f"'{value}' is not a hostname, wildcard hostname or e-mail address (max 253 characters)")


def _check_san(value: str) -> str:
    if is_uri(value) or is_ip(value) or is_email(value) or is_hostname(value):
        return value
    raise ValueError(f"'{value}' is not a DNS name, IP address, e-mail address or URI")


def _check_tags(tags: dict[str, str]) -> dict[str, str]:
    for key in tags:
        if not key or len(key) > 128:
            raise ValueError("tag keys must be 1 to 128 characters")
    return tags


CommonName = Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH), AfterValidator(_check_common_name)]
SubjectAltName = Annotated[str, Field(min_length=1, max_length=2048), AfterValidator(_check_san)]
Tags = Annotated[dict[str, Annotated[str, Field(max_length=1024)]], Field(max_length=MAX_TAGS),
                 AfterValidator(_check_tags)]
RefId = Annotated[str, Field(min_length=1, max_length=128)]


class ManagedCertificate(WireModel):
    id: str
    name: str
    common_name: str
    sans: list[str]
    environment: str
    owner_id: str
    team_id: str
    issuer_id: str
    target_ids: list[str]
    renewal_policy_id: str
    certificate_profile_id: str | None
    status: CertificateStatus
    expires_at: datetime | None
    tags: dict[str, str]
    last_renewal_at: datetime | None
    last_deployment_at: datetime | None
    revoked_at: datetime | None
    revocation_reason: str | None
    source: str
    created_at: datetime
    updated_at: datetime


# Every field a client may name in `fields=`; `id` is always sent.
CERTIFICATE_FIELDS: tuple[str, ...] = tuple(ManagedCertificate.model_fields)


class CertificateCreate(InputModel):
    id: str | None = Field(default=None, min_length=1, max_length=128, pattern=_ID_PATTERN)
    name: str = Field(min_length=1, max_length=255)
    common_name: CommonName
    sans: list[SubjectAltName] = Field(default_factory=list, max_length=MAX_SANS)
    environment: str = Field(default="", max_length=64)
    owner_id: RefId
    team_id: RefId
    issuer_id: RefId
    renewal_policy_id: RefId
    certificate_profile_id: RefId | None = None
    tags: Tags = Field(default_factory=dict)
    target_ids: list[RefId] = Field(default_factory=list, max_length=500)


class CertificateUpdate(InputModel):
    """A partial update: omitted fields are kept. `target_ids` replaces the whole mapping set.

    `certificate_profile_id: null` detaches the profile; null is refused for the other fields.
    """

    name: str | None = Field(default=None, min_length=1, max_length=255)
    common_name: CommonName | None = None
    sans: list[SubjectAltName] | None = Field(default=None, max_length=MAX_SANS)
    environment: str | None = Field(default=None, max_length=64)
    owner_id: RefId | None = None
    team_id: RefId | None = None
    issuer_id: RefId | None = None
    renewal_policy_id: RefId | None = None
    certificate_profile_id: RefId | None = None
    tags: Tags | None = None
    target_ids: list[RefId] | None = Field(default=None, max_length=500)


NULLABLE_UPDATE_FIELDS = frozenset({"certificate_profile_id"})


class CertificateListParams(BaseModel):
    """Query parameters of `GET /certificates`, validated in one pass. Unknown parameters are
    ignored (cache busters and the like), as the reference does."""

    status: str | None = None
    environment: str | None = None
    owner_id: str | None = None
    team_id: str | None = None
    issuer_id: str | None = None
    agent_id: str | None = None
    profile_id: str | None = None
    expires_before: datetime | None = None
    expires_after: datetime | None = None
    created_after: datetime | None = None
    updated_after: datetime | None = None
    sort: str | None = None
    fields: str | None = None
    page: int | None = Field(default=None, ge=1, le=1_000_000)
    per_page: int | None = Field(default=None, ge=1, le=500)
    cursor: str | None = Field(default=None, max_length=2048)
    page_size: int | None = Field(default=None, ge=1, le=500)


class CertificateList(WireModel):
    """Offset mode: `{data, total, page, per_page}`."""

    data: list[ManagedCertificate]
    total: int
    page: int
    per_page: int


class CertificateCursorList(WireModel):
    """Keyset mode: `{data, next_cursor, page_size}`; `next_cursor` is null on the last page."""

    data: list[ManagedCertificate]
    next_cursor: str | None
    page_size: int


class CertificateVersion(WireModel):
    id: str
    certificate_id: str
    serial_number: str
    not_before: datetime
    not_after: datetime
    fingerprint_sha256: str
    pem_chain: str
    csr_pem: str
    key_algorithm: str
    key_size: int
    created_at: datetime


class CertificateDeployment(WireModel):
    """A Deployment job of one certificate, as listed by `/certificates/{id}/deployments`."""

    id: str
    type: str
    certificate_id: str | None
    target_id: str | None
    agent_id: str | None
    status: str
    attempts: int
    max_attempts: int
    last_error: str | None
    scheduled_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    verification_status: str | None
    verified_at: datetime | None
    created_at: datetime


class PemExport(WireModel):
    cert_pem: str
    chain_pem: str
    full_pem: str


class Pkcs12ExportRequest(InputModel):
    # Passwords are taken verbatim (no whitespace stripping). The reference allows an empty one;
    # we require one, since the bundle is always AES-256 encrypted under it.
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    password: str = Field(min_length=1, max_length=1024)

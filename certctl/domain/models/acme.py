"""Admin API models of the ACME server: external account binding keys (RFC 8555 §7.3.4)."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from certctl.domain.models.common import InputModel, WireModel


class EabKeyCreate(InputModel):
    # None: the key works on every profile's directory; a profile id: only on that one.
    profile_id: str | None = Field(default=None, min_length=1, max_length=128)
    description: str = Field(default="", max_length=1024)


class EabKey(WireModel):
    """A key as listed: never its HMAC secret."""

    key_id: str
    profile_id: str | None
    description: str
    account_id: str | None
    created_by: str
    created_at: datetime
    used_at: datetime | None


class EabKeyCreated(EabKey):
    """The answer to a create: the only time the HMAC key (base64url) is shown."""

    hmac_key: str

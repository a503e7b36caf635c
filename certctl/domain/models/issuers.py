"""Issuers: the certificate authorities certctl asks for certificates."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from certctl.domain.enums import IssuerType
from certctl.domain.models.common import InputModel, JsonObject, WireModel

_ID = Field(default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")


class Issuer(WireModel):
    """The wire shape. `config` is always the redacted view; the sealed config never leaves the server."""

    id: str
    name: str
    type: str
    config: dict[str, Any]
    enabled: bool
    last_tested_at: datetime | None
    test_status: str
    source: str
    hierarchy_mode: str
    created_at: datetime
    updated_at: datetime


class IssuerCreate(InputModel):
    id: str | None = _ID
    name: str = Field(min_length=1, max_length=255)
    type: IssuerType  # any case accepted; the canonical spelling is stored
    config: JsonObject = Field(default_factory=dict)
    enabled: bool = True
    hierarchy_mode: Literal["single", "tree"] = "single"


class IssuerUpdate(InputModel):
    name: str | None = Field(default=None, min_length=1, max_length=255)
    type: IssuerType | None = None
    # Replaces the whole config; a `********` value keeps the stored secret.
    config: JsonObject | None = None
    enabled: bool | None = None
    hierarchy_mode: Literal["single", "tree"] | None = None


class ConnectionTestResult(WireModel):
    """Body of `POST /issuers/{id}/test` and `/targets/{id}/test` (StatusMessageResponse)."""

    status: Literal["success", "failed"]
    message: str

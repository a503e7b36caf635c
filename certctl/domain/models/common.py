"""Shapes shared by every resource."""

from __future__ import annotations

from typing import Annotated, Any, Generic, TypeVar

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict

T = TypeVar("T")


class WireModel(BaseModel):
    """Response model: built from store rows, serialized straight to JSON bytes."""

    model_config = ConfigDict(frozen=True, from_attributes=True)


class InputModel(BaseModel):
    """Request model: unknown fields are rejected so typos fail loudly."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ErrorBody(BaseModel):
    error: str
    message: str
    request_id: str


class StatusBody(WireModel):
    status: str


class PageParams(BaseModel):
    page: int = 1
    per_page: int = 50

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.per_page


class Page(WireModel, Generic[T]):
    """The reference list envelope."""

    data: list[T]
    total: int
    page: int
    per_page: int


def _storable(value: dict[str, Any]) -> dict[str, Any]:
    try:
        orjson.dumps(value)  # what the JSON columns write
    except TypeError as exc:  # JSON bounds no integer; a stored one is 64-bit
        raise ValueError(f"cannot be stored: {exc}") from None
    return value


# A free-form JSON object from a request (connector configs, metadata) that the database can hold.
JsonObject = Annotated[dict[str, Any], AfterValidator(_storable)]

"""One internal error type, mapped to HTTP once at the edge (certctl.api.errors)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorKind(StrEnum):
    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    GONE = "gone"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNPROCESSABLE = "unprocessable"
    RATE_LIMITED = "rate_limited"
    NOT_SUPPORTED = "not_supported"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


class CertctlError(Exception):
    """A failure a caller can act on. `message` is shown to the client."""

    kind: ErrorKind = ErrorKind.INTERNAL

    def __init__(self, message: str, *, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        # Extra top-level fields for the error body (e.g. dependency counts on a 409).
        self.extra = extra or {}


class ValidationError(CertctlError):
    kind = ErrorKind.BAD_REQUEST


class UnprocessableError(CertctlError):
    kind = ErrorKind.UNPROCESSABLE


class UnauthorizedError(CertctlError):
    kind = ErrorKind.UNAUTHORIZED


class ForbiddenError(CertctlError):
    kind = ErrorKind.FORBIDDEN


class NotFoundError(CertctlError):
    kind = ErrorKind.NOT_FOUND

    @classmethod
    def of(cls, resource: str, resource_id: str) -> NotFoundError:
        return cls(f"{resource} '{resource_id}' not found")


class ConflictError(CertctlError):
    kind = ErrorKind.CONFLICT


class GoneError(CertctlError):
    kind = ErrorKind.GONE


class RateLimitedError(CertctlError):
    kind = ErrorKind.RATE_LIMITED


class NotSupportedError(CertctlError):
    kind = ErrorKind.NOT_SUPPORTED


class UnavailableError(CertctlError):
    kind = ErrorKind.UNAVAILABLE

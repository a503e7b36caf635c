"""ACME (RFC 8555) value objects shared by the service and the web front end: statuses, problem types, errors.

`AcmeProblem` is the one error type of the ACME server. It is a `CertctlError`, so the service layer raises
it like any other error; the ACME front end renders it as an RFC 7807 problem document with the RFC 8555
§6.7 type `urn:ietf:params:acme:error:<type>` (other `CertctlError`s are mapped by kind, see `problem_for`).
"""

from __future__ import annotations

from typing import Any

from certctl.domain.errors import CertctlError, ErrorKind

ERROR_NS = "urn:ietf:params:acme:error:"

# RFC 8555 §7.1.6 statuses.
PENDING, READY, PROCESSING, VALID, INVALID = "pending", "ready", "processing", "valid", "invalid"
DEACTIVATED, REVOKED, EXPIRED = "deactivated", "revoked", "expired"

CHALLENGE_TYPES = ("http-01", "dns-01", "tls-alpn-01")

_KIND_BY_STATUS = {
    400: ErrorKind.BAD_REQUEST, 401: ErrorKind.UNAUTHORIZED, 403: ErrorKind.FORBIDDEN, 404: ErrorKind.NOT_FOUND,
    405: ErrorKind.BAD_REQUEST, 409: ErrorKind.CONFLICT, 413: ErrorKind.PAYLOAD_TOO_LARGE,
    415: ErrorKind.BAD_REQUEST, 429: ErrorKind.RATE_LIMITED, 500: ErrorKind.INTERNAL, 503: ErrorKind.UNAVAILABLE,
}


class AcmeProblem(CertctlError):
    """An ACME error: `type` is the RFC 8555 §6.7 suffix ("badNonce", "malformed", ...)."""

    def __init__(
        self,
        type_: str,
        detail: str,
        status: int = 400,
        *,
        subproblems: list[dict[str, Any]] | None = None,
        identifier: dict[str, str] | None = None,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.type = type_
        self.status = status
        self.kind = _KIND_BY_STATUS.get(status, ErrorKind.BAD_REQUEST)
        self.subproblems = subproblems or []
        self.identifier = identifier
        self.retry_after = retry_after
        self.headers = headers or {}

    def document(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": ERROR_NS + self.type, "detail": self.message, "status": self.status}
        if self.identifier:
            body["identifier"] = self.identifier
        if self.subproblems:
            body["subproblems"] = self.subproblems
        return body


def subproblem(type_: str, detail: str, identifier: dict[str, str]) -> dict[str, Any]:
    return {"type": ERROR_NS + type_, "detail": detail, "identifier": identifier}


# The ACME type (and status) for the service layer's generic errors, mapped once here.
_TYPE_BY_KIND: dict[ErrorKind, tuple[str, int]] = {
    ErrorKind.BAD_REQUEST: ("malformed", 400),
    ErrorKind.UNPROCESSABLE: ("malformed", 400),
    ErrorKind.UNAUTHORIZED: ("unauthorized", 401),
    ErrorKind.FORBIDDEN: ("unauthorized", 403),
    ErrorKind.NOT_FOUND: ("malformed", 404),
    ErrorKind.CONFLICT: ("malformed", 409),
    ErrorKind.GONE: ("malformed", 404),
    ErrorKind.PAYLOAD_TOO_LARGE: ("malformed", 413),
    ErrorKind.RATE_LIMITED: ("rateLimited", 429),
    ErrorKind.NOT_SUPPORTED: ("malformed", 400),
    ErrorKind.UNAVAILABLE: ("serverInternal", 503),
    ErrorKind.INTERNAL: ("serverInternal", 500),
}


def problem_for(exc: CertctlError) -> AcmeProblem:
    if isinstance(exc, AcmeProblem):
        return exc
    type_, status = _TYPE_BY_KIND.get(exc.kind, ("serverInternal", 500))
    detail = exc.message if status < 500 else "the server could not complete the request; retry later"
    return AcmeProblem(type_, detail, status)

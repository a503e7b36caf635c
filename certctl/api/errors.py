"""The one table from error kind to HTTP status, and the reference error body `{error, message, request_id}`."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from certctl.domain.errors import CertctlError, ErrorKind
from certctl.logs import request_id_var

log = logging.getLogger("certctl.api")

STATUS_BY_KIND: dict[ErrorKind, int] = {
    ErrorKind.BAD_REQUEST: 400,
    ErrorKind.UNAUTHORIZED: 401,
    ErrorKind.FORBIDDEN: 403,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.CONFLICT: 409,
    ErrorKind.GONE: 410,
    ErrorKind.PAYLOAD_TOO_LARGE: 413,
    ErrorKind.UNPROCESSABLE: 422,
    ErrorKind.RATE_LIMITED: 429,
    ErrorKind.NOT_SUPPORTED: 501,
    ErrorKind.UNAVAILABLE: 503,
    ErrorKind.INTERNAL: 500,
}


# 401 names the scheme (RFC 6750 §3); 429 says when to come back.
_HEADERS_BY_STATUS: dict[int, dict[str, str]] = {
    401: {"WWW-Authenticate": 'Bearer realm="certctl"'},
    429: {"Retry-After": "1"},
}


def error_response(
    status: int, message: str, *, headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None
) -> Response:
    body: dict[str, Any] = {"error": HTTPStatus(status).phrase, "message": message, "request_id": request_id_var.get()}
    if extra:
        body.update(extra)
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
        where = ".".join(loc) or "request body"
        msg = err.get("msg", "invalid")
        if err.get("type") == "missing":
            msg = "is required"
        elif err.get("type") == "extra_forbidden":
            msg = "is not a known field"
        elif err.get("type") == "json_invalid":
            where, msg = "request body", "is not valid JSON"
        parts.append(f"{where}: {msg}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    async def on_domain_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, CertctlError)
        status = STATUS_BY_KIND[exc.kind]
        if status >= 500:
            log.error("request failed: %s", exc.message)
        headers = _HEADERS_BY_STATUS.get(status)
        return error_response(status, exc.message, headers=headers, extra=exc.extra)

    async def on_validation_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return error_response(400, _describe_validation(exc))

    async def on_http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        if exc.status_code == 404 and message == "Not Found":
            message = "no such endpoint"
        return error_response(exc.status_code, message, headers=dict(exc.headers or {}))

    async def on_database_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, DBAPIError)
        # SQLSTATE class 22 ("data exception": NUL or unpaired surrogate characters, numbers out of the
        # column's range) is PostgreSQL refusing a value the client sent; SQLite stores such values.
        # Nothing was written: the transaction rolled back.
        if str(getattr(exc.orig, "sqlstate", "") or "").startswith("22"):
            log.warning("database refused a value: %s", str(exc.orig).splitlines()[0])
            return error_response(
                400, "a value in the request is out of range or contains characters that cannot be stored"
            )
        return await on_unexpected(request, exc)

    async def on_unexpected(_: Request, exc: Exception) -> Response:
        # Details go to the log only; the client learns nothing about internals.
        log.exception("unhandled error", exc_info=exc)
        return error_response(500, "internal error; see the server log for this request id")

    app.add_exception_handler(CertctlError, on_domain_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(DBAPIError, on_database_error)
    app.add_exception_handler(Exception, on_unexpected)

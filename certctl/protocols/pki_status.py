"""CRL, OCSP and CA certificate publication under /.well-known/pki (RFC 8615; no API key), plus the admin view.

Handlers take the raw request and return pre-encoded bytes with their headers written once
(no pydantic, no header normalisation): the cached OCSP path is a dict lookup in the service and
has to keep up with thousands of requests per second.

- GET  /.well-known/pki/crl/{id}: DER CRL (application/pkix-crl), weak ETag and 304 on
  If-None-Match, `Cache-Control: public, max-age=3600, must-revalidate` (protocols.md §4). The id is a
  CA id (what leaves' CRL distribution points name) or an issuer id (its issuing CA).
- POST /.well-known/pki/ocsp/{id}: RFC 6960 §A.1 POST; Content-Type must contain "ocsp-request" (415).
- GET  /.well-known/pki/ocsp/{id}/{rest}: `rest` is either a hex serial (the reference's debug form) or
  the RFC 6960 §A.1 GET form, the URL-encoded base64 of the DER request (which may contain '/').
- GET  /.well-known/pki/ca/{id}: the CA certificate, DER (application/pkix-cert): leaves' AIA caIssuers.
- GET  /api/v1/admin/crl/cache: CRL cache state per CA (admin key only).

OCSP protocol errors are OCSP answers with HTTP 200 (RFC 6960 §2.3): malformedRequest, unauthorized
(unknown responder id; over the per-IP limit, with `Retry-After: 60` as the reference does), tryLater,
internalError.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from datetime import datetime
from email.utils import format_datetime
from functools import lru_cache
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from certctl.domain.actor import Actor
from certctl.domain.errors import ForbiddenError, UnauthorizedError
from certctl.logs import request_id_var
from certctl.services.container import Services
from certctl.services.status import MALFORMED, UNAUTHORIZED, CRLAnswer, OCSPAnswer

router = APIRouter(tags=["CRL & OCSP"])

MAX_OCSP_REQUEST = 64 * 1024  # a request with 64 CertIDs and a signature fits many times over
CRL_MAX_AGE = 3600
_HEX_SERIAL = re.compile(r"(0[xX])?[0-9a-fA-F:]{1,130}")

_OCSP_TYPE = (b"content-type", b"application/ocsp-response")
_NO_STORE = (b"cache-control", b"no-store")


class _Raw(Response):
    """A response whose header list is already in wire form."""

    def __init__(self, body: bytes, headers: list[tuple[bytes, bytes]], status_code: int = 200) -> None:
        self.status_code = status_code
        self.background = None
        self.body = body
        self.raw_headers = headers if status_code == 304 else [*headers, (b"content-length", b"%d" % len(body))]


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


@lru_cache(maxsize=4096)
def _http_date(moment: datetime) -> bytes:
    return format_datetime(moment, usegmt=True).encode()


# ---- CRL ----------------------------------------------------------------------------------------

def _matches(if_none_match: str, etag: str) -> bool:
    """RFC 9110 §13.1.2: weak comparison; `*` matches any current representation."""
    wanted = etag.removeprefix("W/")
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == wanted:
            return True
    return False


def _crl_headers(answer: CRLAnswer, now: datetime) -> list[tuple[bytes, bytes]]:
    max_age = max(0, min(CRL_MAX_AGE, int((answer.next_update - now).total_seconds())))
    return [
        (b"content-type", b"application/pkix-crl"),
        (b"etag", answer.etag.encode()),
        (b"cache-control", b"public, max-age=%d, must-revalidate" % max_age),
        (b"last-modified", _http_date(answer.this_update)),
        (b"expires", _http_date(answer.next_update)),
    ]


@router.get("/.well-known/pki/crl/{issuer_id}", summary="Get DER-encoded X.509 CRL (RFC 5280)",
            response_class=Response, responses={200: {"content": {"application/pkix-crl": {}}},
                                                304: {"description": "not modified"}, 404: {}, 501: {}})
async def get_crl(request: Request) -> Response:
    services = _services(request)
    answer = await services.status.crl_for(request.path_params["issuer_id"])
    headers = _crl_headers(answer, services.ctx.clock.now())
    if_none_match = request.headers.get("if-none-match")
    if if_none_match and _matches(if_none_match, answer.etag):
        return _Raw(b"", headers, status_code=304)
    return _Raw(answer.der, headers)


@router.get("/.well-known/pki/ca/{issuer_id}", summary="Get the CA certificate (DER), target of AIA caIssuers",
            response_class=Response, responses={200: {"content": {"application/pkix-cert": {}}}, 404: {}})
async def get_ca_certificate(request: Request) -> Response:
    der = await _services(request).status.ca_certificate(request.path_params["issuer_id"])
    return _Raw(der, [(b"content-type", b"application/pkix-cert"), (b"cache-control", b"public, max-age=86400")])


# ---- OCSP ---------------------------------------------------------------------------------------

class _PerIpLimit:
    """N requests per source IP per clock minute (protocols.md §4: 1000/min); 0 turns it off."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._minute = -1
        self._counts: dict[str, int] = {}

    def allow(self, ip: str) -> bool:
        if self.per_minute <= 0:
            return True
        minute = int(time.monotonic() // 60)
        if minute != self._minute:
            self._minute = minute
            self._counts.clear()
        count = self._counts.get(ip, 0) + 1
        self._counts[ip] = count
        return count <= self.per_minute


def _limit(app: Any) -> _PerIpLimit:
    state = app.state
    limit: _PerIpLimit | None = getattr(state, "ocsp_per_ip_limit", None)
    if limit is None:
        services: Services = state.services
        limit = state.ocsp_per_ip_limit = _PerIpLimit(services.status.ocsp_limit_per_ip_min)
    return limit


def _ocsp_reply(answer: OCSPAnswer, now: datetime) -> Response:
    if answer.cacheable and answer.this_update is not None and answer.next_update is not None:
        # RFC 5019 §6.2: caching headers for pre-produced (nonce-less) answers.
        max_age = max(0, int((answer.next_update - now).total_seconds()))
        return _Raw(answer.der, [
            _OCSP_TYPE,
            (b"cache-control", b"max-age=%d, public, no-transform, must-revalidate" % max_age),
            (b"last-modified", _http_date(answer.this_update)),
            (b"expires", _http_date(answer.next_update)),
        ])
    return _Raw(answer.der, [_OCSP_TYPE, _NO_STORE])


def _over_limit() -> Response:
    return _Raw(UNAUTHORIZED.der, [_OCSP_TYPE, _NO_STORE, (b"retry-after", b"60")])


async def ocsp_post_reply(app: Any, target: str, content_type: str, body: bytes, client_ip: str) -> Response:
    """POST form: the route below and `OcspFastPath` both answer through this."""
    if "ocsp-request" not in content_type:
        return _json_error(415, "Content-Type must be application/ocsp-request")
    if not _limit(app).allow(client_ip):
        return _over_limit()
    services: Services = app.state.services
    now = services.ctx.clock.now()
    if len(body) > MAX_OCSP_REQUEST:
        return _ocsp_reply(MALFORMED, now)
    return _ocsp_reply(await services.status.ocsp_response(target, body, now), now)


async def ocsp_get_reply(app: Any, target: str, rest: str, client_ip: str) -> Response:
    """GET forms: a hex serial, or the base64 DER request of RFC 6960 §A.1."""
    if not _limit(app).allow(client_ip):
        return _over_limit()
    services: Services = app.state.services
    now = services.ctx.clock.now()
    if _HEX_SERIAL.fullmatch(rest):
        answer = await services.status.ocsp_for_serial(target, rest, now)
    else:
        der = _from_base64(rest)
        if der is None or len(der) > MAX_OCSP_REQUEST:
            answer = MALFORMED
        else:
            answer = await services.status.ocsp_response(target, der, now)
    return _ocsp_reply(answer, now)


def _client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


@router.post("/.well-known/pki/ocsp/{issuer_id}", summary="OCSP responder (RFC 6960 §A.1.1, POST form)",
             response_class=Response, responses={200: {"content": {"application/ocsp-response": {}}}, 415: {}})
async def ocsp_post(request: Request) -> Response:
    return await ocsp_post_reply(request.app, request.path_params["issuer_id"],
                                 request.headers.get("content-type", ""), await request.body(), _client_ip(request))


@router.get("/.well-known/pki/ocsp/{issuer_id}/{rest:path}", summary="OCSP responder (RFC 6960 §A.1 GET form, "
            "or a hex serial)", response_class=Response,
            responses={200: {"content": {"application/ocsp-response": {}}}})
async def ocsp_get(request: Request) -> Response:
    return await ocsp_get_reply(request.app, request.path_params["issuer_id"], request.path_params["rest"],
                                _client_ip(request))


class OcspFastPath:
    """ASGI layer that answers OCSP before the generic API middleware and the router.

    Measured in-process, a cached OCSP answer cost about 600 µs through the API stack, most of it
    FastAPI matching the path against every API route of the routers before this one, then the
    API-key, rate-limit, audit and input layers, none of which apply to an unauthenticated binary
    protocol with its own per-IP limit and body limit. Installed just inside RequestContextMiddleware
    (request id, security headers, access log), it hands OCSP paths to the same functions as the
    routes above, which stay for the OpenAPI document and for apps built without this layer.
    """

    PREFIX = "/.well-known/pki/ocsp/"

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        app = scope.get("app")
        if (scope["type"] != "http" or not path.startswith(self.PREFIX) or app is None
                or getattr(app.state, "services", None) is None):
            await self.app(scope, receive, send)
            return
        target, slash, tail = path[len(self.PREFIX):].partition("/")
        client = scope.get("client")
        client_ip = client[0] if client else "unknown"
        method = scope["method"]
        if method == "POST" and target and not slash:
            content_type = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"content-type"), "")
            body = await _read_body(receive, MAX_OCSP_REQUEST)
            response = await ocsp_post_reply(app, target, content_type, body, client_ip)
        elif method == "GET" and target and tail:
            response = await ocsp_get_reply(app, target, tail, client_ip)
        else:
            await self.app(scope, receive, send)  # the router answers 404/405 as for any other path
            return
        await response(scope, receive, send)


async def _read_body(receive: Receive, limit: int) -> bytes:
    """The request body, cut one byte past `limit` (so that it is refused as too big without being kept)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        if size <= limit:
            chunks.append(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)[: limit + 1]


def _from_base64(text: str) -> bytes | None:
    """The path was percent-decoded already; tolerate base64url and a '+' turned into a space.

    A '/' at either end is part of the base64 (its alphabet has '/'), so nothing is stripped.
    """
    cleaned = text.replace(" ", "+").replace("-", "+").replace("_", "/")
    cleaned += "=" * (-len(cleaned) % 4)
    try:
        return base64.b64decode(cleaned, validate=True)
    except (binascii.Error, ValueError):
        return None


def _json_error(status: int, message: str) -> Response:
    """The reference error body, for a status no domain error kind maps to (415)."""
    body = {"error": HTTPStatus(status).phrase, "message": message, "request_id": request_id_var.get()}
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


# ---- admin --------------------------------------------------------------------------------------

def _admin(request: Request) -> Actor:
    actor: Actor | None = request.scope.get("state", {}).get("actor")
    if actor is None:
        raise UnauthorizedError("missing or invalid API key")
    if not actor.admin:
        raise ForbiddenError("this operation requires an admin API key")
    return actor


@router.get("/api/v1/admin/crl/cache", summary="Inspect CRL pre-generation cache (admin)", response_class=Response,
            responses={200: {"content": {"application/json": {}}}, 403: {"description": "Admin access required"}})
async def crl_cache(request: Request) -> Response:
    _admin(request)
    state: dict[str, Any] = await _services(request).status.crl_cache_state()
    return Response(orjson.dumps(state), media_type="application/json")

"""Per-request metrics and the request's trace span: the outermost ASGI layer.

Outermost so that the span covers the whole request, the access log line included (so that line carries
`trace_id`), and the duration is what the client waited. It reads what inner layers leave in the scope: the route
template FastAPI matched (`scope["route"]`) and the request id (`scope["state"]["request_id"]`).

Cost: one histogram observation per request; with tracing on, one span (W3C `traceparent` honoured). With
tracing off no OpenTelemetry code runs. Measured by `bench/telemetry_overhead.py`.
"""

from __future__ import annotations

import time
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from certctl.observability import metrics, tracing

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_OCSP = "/.well-known/pki/ocsp/"
_CRL = "/.well-known/pki/crl/"
_PROPAGATOR = TraceContextTextMapPropagator()
_CRL_RESULTS = {200: "ok", 304: "not_modified", 404: "not_found"}


class _HeaderGetter(Getter[list[tuple[bytes, bytes]]]):
    def get(self, carrier: list[tuple[bytes, bytes]], key: str) -> list[str] | None:
        wanted = key.lower().encode()
        values = [v.decode("latin-1") for k, v in carrier if k == wanted]
        return values or None

    def keys(self, carrier: list[tuple[bytes, bytes]]) -> list[str]:
        return [k.decode("latin-1") for k, _ in carrier]


_GETTER = _HeaderGetter()
# Bounded: route templates x methods x status codes.
_DURATIONS: dict[tuple[str, str, int], Any] = {}


def route_of(scope: Scope) -> str:
    """The route template, never the raw path (bounded label values)."""
    route = scope.get("route")
    template = getattr(route, "path", None)
    if template:
        # A mounted app's routes (the ACME server under /acme) are relative to the mount, which is in root_path.
        return str(scope.get("root_path", "")) + str(template)
    endpoint = scope.get("endpoint")
    if endpoint is not None:  # a plain Starlette route (no `route` in the scope): found by its endpoint
        try:
            found = _templates(scope.get("app")).get(endpoint)
        except TypeError:  # not hashable: a mounted Router whose routes matched nothing (a 404 under /acme)
            found = None
        if found:
            return found
    path: str = scope.get("path", "")
    if path.startswith(_OCSP):  # answered by pki_status.OcspFastPath before the router
        return _OCSP + "{issuer_id}" + ("/{rest}" if "/" in path[len(_OCSP):] else "")
    return "unmatched"


_TEMPLATES: dict[int, dict[Any, str]] = {}


def _templates(app: Any) -> dict[Any, str]:
    """Endpoint -> full path template of every route of the app, mounts included; built once per app."""
    if app is None:
        return {}
    found = _TEMPLATES.get(id(app))
    if found is None:
        found = {}
        _walk(getattr(app, "routes", ()), "", found)
        if len(_TEMPLATES) > 64:  # tests build many apps in one process
            _TEMPLATES.clear()
        _TEMPLATES[id(app)] = found
    return found


def _walk(routes: Any, prefix: str, found: dict[Any, str]) -> None:
    for route in routes:
        if isinstance(route, Mount):
            _walk(route.routes, prefix + route.path, found)
        elif isinstance(route, Route):
            found.setdefault(route.endpoint, prefix + route.path)


def _limiter(path: str) -> str:
    if path.startswith(_OCSP):
        return "ocsp"
    for prefix, name in (("/acme/", "acme"), ("/.well-known/est/", "est"), ("/scep", "scep")):
        if path.startswith(prefix):
            return name
    return "export" if path.endswith("/export") or "/export/" in path else "api"


class TelemetryMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        response: list[Any] = [0, False]  # status, Retry-After seen

        async def watching_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                response[0] = message["status"]
                if response[0] == 429 or scope["path"].startswith(_OCSP):
                    response[1] = any(k == b"retry-after" for k, _ in message.get("headers", ()))
            await send(message)

        tracer = tracing.tracer
        if tracer is None:
            try:
                await self.app(scope, receive, watching_send)
            finally:
                _record(scope, response, time.perf_counter() - started)
            return
        parent = _PROPAGATOR.extract(scope["headers"], getter=_GETTER) if _has_traceparent(scope) else None
        method = scope["method"]
        # start_span + attach rather than start_as_current_span: the same span, without the context-manager layers.
        span = tracer.start_span(method, context=parent, kind=SpanKind.SERVER)
        token = otel_context.attach(set_span_in_context(span))
        try:
            await self.app(scope, receive, watching_send)
        finally:
            route = _record(scope, response, time.perf_counter() - started)
            status = response[0] or 500
            state = scope.get("state", {})
            attributes: dict[str, Any] = {
                "http.request.method": method, "http.route": route, "url.path": scope["path"],
                "http.response.status_code": status,
            }
            if request_id := state.get("request_id"):
                attributes["certctl.request_id"] = request_id
            if (actor := state.get("actor")) is not None:
                attributes["certctl.actor"] = actor.name
            span.update_name(f"{method} {route}")
            span.set_attributes(attributes)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            otel_context.detach(token)
            span.end()


def _has_traceparent(scope: Scope) -> bool:
    return any(k == b"traceparent" for k, _ in scope["headers"])


def _record(scope: Scope, response: list[Any], seconds: float) -> str:
    status: int = response[0] or 500
    route = route_of(scope)
    method = scope["method"] if scope["method"] in _METHODS else "other"
    key = (route, method, status)
    child = _DURATIONS.get(key)
    if child is None:  # label children are cached: `labels()` costs more than the observation
        child = _DURATIONS[key] = metrics.HTTP_REQUEST_DURATION.labels(route, method, str(status))
    child.observe(seconds)
    path: str = scope["path"]
    rate_limited = status == 429 or (response[1] and path.startswith(_OCSP))
    if rate_limited:
        metrics.rate_limited(_limiter(path))
    if path.startswith(_OCSP):
        result = "rate_limited" if rate_limited else ("ok" if status == 200 else "error")
        metrics.OCSP_REQUESTS.labels(method, result).inc()
    elif path.startswith(_CRL):
        metrics.CRL_REQUESTS.labels(_CRL_RESULTS.get(status, "error")).inc()
    return route

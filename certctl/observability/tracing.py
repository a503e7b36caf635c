"""OpenTelemetry traces, exported over OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.

Spans: one per HTTP request (`certctl.api.telemetry`), per job execution, per issuer and target connector call and
per database transaction. When no OTLP endpoint is configured nothing is set up: `span()` hands back the shared
non-recording span and costs a function call, and the request layer skips tracing altogether.

The tracer provider is this module's own, not OpenTelemetry's global one: setting it up twice in one process (tests
start many apps) is allowed, and `shutdown()` flushes and turns tracing off again. Context propagation uses
OpenTelemetry's context (contextvars), so `opentelemetry.trace.get_current_span()` sees these spans; the log
formatter uses that to add `trace_id` and `span_id` to every line written inside one.
"""

from __future__ import annotations

import contextvars
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

log = logging.getLogger("certctl.tracing")

ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
_NOOP_SPAN: Span = trace.INVALID_SPAN

_provider: Any = None  # opentelemetry.sdk.trace.TracerProvider, imported only when tracing is on
tracer: Tracer | None = None


def configured() -> bool:
    """An OTLP endpoint is set and the SDK is not disabled (OTEL_SDK_DISABLED)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return any(os.environ.get(name, "").strip() for name in ENDPOINT_VARS)


def setup(service_name: str = "certctl-server") -> bool:
    """Start exporting spans if an OTLP endpoint is configured; True when this call started it.

    The exporter reads the standard `OTEL_EXPORTER_OTLP_*` settings (endpoint, headers, timeout, compression,
    certificate); `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` name the service.
    """
    global _provider, tracer
    if tracer is not None or not configured():
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from certctl import __version__

    resource = Resource.create({"service.name": service_name, "service.version": __version__})
    provider = TracerProvider(resource=resource)  # OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES take precedence
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    _provider = provider
    tracer = provider.get_tracer("certctl", __version__)
    log.info("tracing: exporting spans over OTLP/HTTP")
    return True


def shutdown() -> None:
    """Export what is buffered and stop tracing (the server's last step; tests call it between apps)."""
    global _provider, tracer
    provider, _provider, tracer = _provider, None, None
    if provider is not None:
        provider.shutdown()


@contextmanager
def span(
    name: str, attributes: Mapping[str, Any] | None = None, *, kind: SpanKind = SpanKind.INTERNAL
) -> Iterator[Span]:
    """A child of the current span (the current one for the block); a non-recording span when tracing is off.

    An exception leaving the block marks the span as an error and is re-raised.
    """
    current = tracer
    if current is None:
        yield _NOOP_SPAN
        return
    with current.start_as_current_span(name, attributes=dict(attributes or {}), kind=kind) as active:
        yield active


def mark_error(active: Span, description: str) -> None:
    if active.is_recording():
        active.set_status(Status(StatusCode.ERROR, description))


def ids() -> tuple[str, str] | None:
    """(trace_id, span_id) in hex of the current span, if there is a valid one."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


# ---- database transactions -----------------------------------------------------------------------

_after_commit: contextvars.ContextVar[list[Callable[[], None]] | None] = contextvars.ContextVar(
    "certctl_after_commit", default=None
)


def after_commit(callback: Callable[[], None]) -> None:
    """Run `callback` once the current database transaction commits (at once outside a transaction).

    Used for counters of things a transaction records: a rolled-back change is not counted.
    """
    pending = _after_commit.get()
    if pending is None:
        callback()
    else:
        pending.append(callback)


@contextmanager
def db_transaction(dialect: str) -> Iterator[None]:
    """Around one database transaction, commit included: its span, and the after-commit callbacks."""
    pending: list[Callable[[], None]] = []
    token = _after_commit.set(pending)
    try:
        if tracer is None:
            yield
        else:
            with tracer.start_as_current_span(
                "db.transaction", attributes={"db.system": dialect}, kind=SpanKind.CLIENT
            ):
                yield
    finally:
        _after_commit.reset(token)
    for callback in pending:  # only reached when the block (and so the commit) succeeded
        callback()

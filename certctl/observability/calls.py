"""Spans and metrics around the units of work other layers run: jobs and connector calls.

Each helper is a one-line wrapper at its call site: `@traced_job` on a job's execute function, `issuer_call(...)`
around one call to an issuer (local CA signing or an external CA connector), `target_call(...)` around one call
to a deployment target connector.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from opentelemetry.trace import Span

from certctl.observability import metrics, tracing

S = TypeVar("S")
R = TypeVar("R")


def traced_job(func: Callable[[S, str], Awaitable[R]]) -> Callable[[S, str], Awaitable[R]]:
    """A `job.execute` span around a method `execute(self, job_id)` that returns the job's new status."""

    async def wrapper(self: S, job_id: str) -> R:
        if tracing.tracer is None:
            return await func(self, job_id)
        with tracing.span("job.execute", {"certctl.job.id": job_id}) as active:
            result = await func(self, job_id)
            active.set_attribute("certctl.job.status", str(result))
            return result

    return functools.update_wrapper(wrapper, func)


@contextmanager
def issuer_call(issuer_type: str, issuer_id: str, **attributes: Any) -> Iterator[Span]:
    """One call to an issuer connector: an `issuer.issue` span and `certctl_issuance_duration_seconds`."""
    started = time.perf_counter()
    ok = False
    with tracing.span("issuer.issue", {"certctl.issuer.type": issuer_type, "certctl.issuer.id": issuer_id,
                                       **_prefixed(attributes)}) as active:
        try:
            yield active
            ok = True
        finally:
            metrics.issuance_observed(issuer_type, time.perf_counter() - started, ok)


@contextmanager
def target_call(target_type: str, operation: str = "deploy", **attributes: Any) -> Iterator[Span]:
    """One call to a deployment target connector: a `target.<operation>` span."""
    with tracing.span(f"target.{operation}", {"certctl.target.type": target_type, **_prefixed(attributes)}) as active:
        yield active


def _prefixed(attributes: dict[str, Any]) -> dict[str, Any]:
    return {f"certctl.{key.replace('_', '.', 1)}": value for key, value in attributes.items() if value is not None}

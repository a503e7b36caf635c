"""Cost of the telemetry layer per request, in process (no network, no database).

    .venv/bin/python bench/telemetry_overhead.py            # --requests N (default 20,000), --rounds R (5)

Drives a minimal ASGI app (answers 200 at once, sets a route as FastAPI would) directly, then the same app
wrapped in `certctl.api.telemetry.TelemetryMiddleware`: with tracing off (the default: one histogram
observation), and with tracing on (a span per request through a BatchSpanProcessor whose exporter drops
everything, so the export thread costs nothing here). Also the `db_transaction` wrapper the store puts around
every transaction, with tracing off. Prints the median µs per call of each, and the layer's added cost.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

if __package__ in (None, ""):  # run as `python bench/telemetry_overhead.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import add_json_flag, bench_result, json_mode, print_json, result_row
from certctl.api.telemetry import TelemetryMiddleware
from certctl.observability import tracing


class _Route:
    path = "/api/v1/certificates/{id}"


async def inner(scope: dict[str, Any], receive: Any, send: Any) -> None:
    scope["route"] = _Route
    scope.setdefault("state", {})["request_id"] = "bench-request"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b"{}"})


class _Drop(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _scope() -> dict[str, Any]:
    return {"type": "http", "method": "GET", "path": "/api/v1/certificates/mc-1", "scheme": "https",
            "headers": [(b"host", b"testserver"), (b"authorization", b"Bearer x")], "query_string": b""}


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(_: dict[str, Any]) -> None:
    return None


async def per_call_us(app: Any, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        await app(_scope(), _receive, _send)
    return (time.perf_counter() - started) / n * 1e6


async def transaction_us(n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        with tracing.db_transaction("postgresql"):
            pass
    return (time.perf_counter() - started) / n * 1e6


def loop_ms() -> float:
    """A CPU yardstick: one million iterations of a Python loop (about 50 ms on an idle core of this machine)."""
    started = time.perf_counter()
    total = 0
    for i in range(1_000_000):
        total += i
    return (time.perf_counter() - started) * 1e3


def sdk_span_us(provider: TracerProvider, n: int) -> float:
    """The OpenTelemetry SDK alone: start and end one span, no attributes."""
    tracer = provider.get_tracer("bench-sdk")
    started = time.perf_counter()
    for _ in range(n):
        tracer.start_span("GET").end()
    return (time.perf_counter() - started) / n * 1e6


async def main(requests: int, rounds: int) -> dict[str, Any]:
    layer = TelemetryMiddleware(inner)
    figures: dict[str, list[float]] = {
        "bare": [], "metrics": [], "metrics+tracing": [], "db_transaction": [], "sdk_span_alone": [], "loop_1m_ms": [],
    }
    await per_call_us(layer, 2000)  # warm-up: label children created, code paths loaded
    for _ in range(rounds):
        figures["bare"].append(await per_call_us(inner, requests))
        figures["metrics"].append(await per_call_us(layer, requests))
        figures["db_transaction"].append(await transaction_us(requests))
        figures["loop_1m_ms"].append(loop_ms())
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(_Drop(), max_queue_size=1_000_000))
    tracing.tracer = provider.get_tracer("bench")
    try:
        await per_call_us(layer, 2000)
        for _ in range(rounds):
            figures["metrics+tracing"].append(await per_call_us(layer, requests))
            figures["sdk_span_alone"].append(sdk_span_us(provider, requests))
    finally:
        tracing.tracer = None
        provider.shutdown()
    medians = {name: round(statistics.median(values), 2) for name, values in figures.items()}
    return {
        "load_average_1m": round(os.getloadavg()[0], 2),  # other work on the machine inflates every figure alike
        "requests_per_round": requests, "rounds": rounds, "median_us_per_call": medians,
        "added_us_tracing_off": round(medians["metrics"] - medians["bare"], 2),
        "added_us_tracing_on": round(medians["metrics+tracing"] - medians["bare"], 2),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    add_json_flag(parser)
    args = parser.parse_args()
    json_mode(args)
    result = asyncio.run(main(args.requests, args.rounds))
    print_json("telemetry overhead per request (µs)", result)
    medians = result["median_us_per_call"]
    bench_result([
        result_row(f"telemetry: metrics layer adds {result['added_us_tracing_off']} µs per request "
                   f"(tracing on: {result['added_us_tracing_on']} µs; bare layer {medians['bare']} µs)",
                   unit="µs", baseline="no telemetry layer"),
    ])

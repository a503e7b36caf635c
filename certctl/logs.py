"""JSON logs with the request id, and the trace and span ids when tracing is on, on every line."""

from __future__ import annotations

import contextvars
import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson
from opentelemetry import trace

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

# Attributes every record has, plus uvicorn's terminal colouring, which means nothing in JSON.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if rid := request_id_var.get():
            entry["request_id"] = rid
        if ids := _trace_ids():
            entry["trace_id"], entry["span_id"] = ids
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        rid = request_id_var.get()
        base = super().format(record)
        if rid:
            base = f"{base} request_id={rid}"
        if ids := _trace_ids():
            base = f"{base} trace_id={ids[0]} span_id={ids[1]}"
        return base


def _trace_ids() -> tuple[str, str] | None:
    """The current span's ids (hex), when a line is written inside a recorded span."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "warning": logging.WARNING,
           "error": logging.ERROR}


# Libraries whose debug output carries data, not events: aiosqlite and SQLAlchemy log every statement with its
# parameters (key hashes, sealed configs), the ACME client logs whole JWS requests, httpx/httpcore headers (bearer
# tokens). They stay at warning whatever CERTCTL_LOG_LEVEL says; debug is for certctl's own loggers.
QUIET_LIBRARIES = (
    "aiosqlite", "sqlalchemy", "asyncpg", "asyncio", "httpx", "httpcore", "hpack", "urllib3", "requests", "acme",
    "josepy", "asyncssh", "opentelemetry", "multipart", "python_multipart", "filelock",
)


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    text_format = "%(asctime)s %(levelname)s %(name)s %(message)s"
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(text_format))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[level.lower()])
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(_LEVELS[level.lower()], logging.WARNING))
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # our middleware logs each request once

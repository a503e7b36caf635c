"""The built-in http-01 responder (RFC 8555 §8.3): a tiny asyncio HTTP/1.1 server answering only
`GET /.well-known/acme-challenge/{token}` with the key authorization, 404 for anything else.

Choice: a listener of its own, opened on the issuer's `http_address`:`http_port` (default 0.0.0.0:80) only
while at least one order of this process needs it, and closed afterwards; not a route on the API listener,
because the CA must reach it on plain HTTP port 80 of the validated name, which the API (TLS, another port)
normally is not. Several orders (issuers, jobs) on one address share one listener through a reference count.
Tokens live in memory: the order that published a token answers its challenge from the same process.
"""

from __future__ import annotations

import asyncio
import logging
import re
import weakref
from dataclasses import dataclass, field

log = logging.getLogger("certctl.acme.http01")

_PATH = re.compile(r"^/\.well-known/acme-challenge/([A-Za-z0-9_-]{1,256})$")
_MAX_HEAD = 8192


@dataclass
class Http01Responder:
    host: str
    port: int
    tokens: dict[str, str] = field(default_factory=dict)
    users: int = 0
    server: asyncio.Server | None = None

    def publish(self, token: str, key_authorization: str) -> None:
        self.tokens[token] = key_authorization

    def withdraw(self, token: str) -> None:
        self.tokens.pop(token, None)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            request_line = head[:_MAX_HEAD].split(b"\r\n", 1)[0].decode("latin-1")
            parts = request_line.split(" ")
            status, body = "404 Not Found", b"not found\n"
            if len(parts) == 3 and parts[0] in ("GET", "HEAD"):
                found = _PATH.match(parts[1].split("?", 1)[0])
                value = self.tokens.get(found.group(1)) if found else None
                if value is not None:
                    status, body = "200 OK", value.encode()
                    log.info("http-01 challenge served", extra={"token": found.group(1) if found else ""})
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode() + (body if parts[0] != "HEAD" else b"")
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()


_responders: dict[tuple[str, int], Http01Responder] = {}
_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


def _lock() -> asyncio.Lock:
    """One lock per event loop (a lock used from two loops fails)."""
    loop = asyncio.get_running_loop()
    lock = _locks.get(loop)
    if lock is None:
        lock = _locks[loop] = asyncio.Lock()
    return lock


async def acquire(host: str, port: int) -> Http01Responder:
    """The listener for (host, port), opened on first use in this process."""
    async with _lock():
        responder = _responders.get((host, port))
        if responder is None:
            responder = Http01Responder(host, port)
            responder.server = await asyncio.start_server(
                responder._handle, host or None, port, reuse_address=True, limit=_MAX_HEAD)
            _responders[(host, port)] = responder
        responder.users += 1
        return responder


async def release(responder: Http01Responder) -> None:
    """One order done; the last user closes the listener."""
    async with _lock():
        responder.users -= 1
        if responder.users > 0:
            return
        _responders.pop((responder.host, responder.port), None)
        if responder.server is not None:
            responder.server.close()
            await responder.server.wait_closed()

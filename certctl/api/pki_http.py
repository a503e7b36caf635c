"""A plain-HTTP listener for `/.well-known/pki/` only: CRLs, OCSP and CA certificates.

Relying parties fetch these over plain HTTP (RFC 5280 §4.2.1.13 and §4.2.2.1 name http URIs; RFC 6960 §A.1 and
RFC 5019 describe OCSP over HTTP): the answers are signed, so TLS adds nothing, and an HTTPS URL for revocation
status would need revocation status to check. With `CERTCTL_PKI_HTTP_PORT` set, every server process listens
there too (SO_REUSEPORT, so `--workers N` share the port); anything outside `/.well-known/pki/` is a 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from certctl.api.errors import error_response

PKI_PREFIX = "/.well-known/pki/"


class PkiOnly:
    """The app's PKI routes, and nothing else, for the plain-HTTP port."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope["path"].startswith(PKI_PREFIX):
            response = error_response(404, f"only {PKI_PREFIX} is served on this port; the API is HTTPS only")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class PkiHttpListener:
    def __init__(self, app: ASGIApp, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.config = uvicorn.Config(PkiOnly(app), lifespan="off", log_config=None, access_log=False,
                                     server_header=False, http="httptools")
        self.server = uvicorn.Server(self.config)
        self._task: asyncio.Task[None] | None = None

    def _socket(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # one port for every worker process
        sock.bind((self.host.strip("[]"), self.port))
        sock.listen(2048)
        sock.setblocking(False)
        return sock

    async def start(self) -> None:
        sock = self._socket()
        # uvicorn's own serve() would take over the process's signal handlers, which belong to the main server.
        self._task = asyncio.create_task(self.server._serve(sockets=[sock]), name="certctl-pki-http")
        for _ in range(200):
            if self.server.started or self._task.done():
                break
            await asyncio.sleep(0.01)
        if self._task.done():
            self._task.result()  # raise why it could not start

    async def stop(self) -> None:
        if self._task is None:
            return
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self._task, timeout=10)
        self._task = None

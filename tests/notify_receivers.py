"""Real receivers for the notifier tests: an HTTP(S) server that records what it is sent, and an SMTP server
(aiosmtpd) with STARTTLS or implicit TLS and AUTH."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.servers import IssuedCert, ThrowawayCA, free_port


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class HttpReceiver:
    """Records every POST; answers each with the next of `statuses` (the last one repeats)."""

    statuses: list[int] = field(default_factory=lambda: [200])
    tls: ssl.SSLContext | None = None
    received: list[Received] = field(default_factory=list)
    port: int = 0
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"{'https://localhost' if self.tls else 'http://127.0.0.1'}:{self.port}"

    def start(self) -> HttpReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    receiver.received.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()},
                                                      body))
                    status = receiver.statuses.pop(0) if len(receiver.statuses) > 1 else receiver.statuses[0]
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if self.tls is not None:
            self._server.socket = self.tls.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def server_tls(cert: IssuedCert, directory: Path) -> ssl.SSLContext:
    chain, key = directory / "recv-chain.pem", directory / "recv-key.pem"
    chain.write_text(cert.fullchain_pem)
    key.write_text(cert.key_pem)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(chain, key)
    return context


def root_file(ca: ThrowawayCA, directory: Path) -> Path:
    from cryptography.hazmat.primitives import serialization

    path = directory / "notifier-ca.pem"
    path.write_bytes(ca.root.public_bytes(serialization.Encoding.PEM))
    return path


@dataclass
class Mail:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    tls: bool
    authenticated: bool


def _tls(server: SMTP, session: Session) -> bool:
    # STARTTLS sets session.ssl; an implicit-TLS transport carries its SSL object from the start.
    transport = server.transport
    return session.ssl is not None or (transport is not None and transport.get_extra_info("ssl_object") is not None)


class MailHandler:
    def __init__(self) -> None:
        self.messages: list[Mail] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.messages.append(Mail(str(envelope.mail_from), [str(r) for r in envelope.rcpt_tos],
                                  bytes(envelope.original_content or b""), _tls(server, session),
                                  bool(session.authenticated)))
        return "250 OK"


SMTP_USER = "mailer"
SMTP_PASSWORD = "smtp-pass-Zq81-never-logged"


def _authenticator(server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and auth_data.login == SMTP_USER.encode() \
        and auth_data.password == SMTP_PASSWORD.encode()
    return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535 itself


@contextmanager
def smtp_server(tls: ssl.SSLContext | None, *, implicit: bool = False) -> Iterator[tuple[int, MailHandler]]:
    """An SMTP server on 127.0.0.1: STARTTLS required and AUTH after it (or implicit TLS), or plain with no TLS."""
    handler = MailHandler()
    port = free_port()
    kwargs: dict[str, Any] = {"authenticator": _authenticator, "auth_required": tls is not None}
    if tls is not None and implicit:
        # aiosmtpd advertises AUTH "after TLS" only after STARTTLS; an implicit-TLS session is TLS from the start.
        # (AUTH stays optional there: aiosmtpd warns about requiring it without "TLS"; the test checks it happened.)
        kwargs.update(ssl_context=tls, auth_require_tls=False, auth_required=False)
    elif tls is not None:
        kwargs.update(tls_context=tls, require_starttls=True)
    controller = Controller(handler, hostname="127.0.0.1", port=port, server_hostname="localhost", **kwargs)
    controller.start()
    try:
        yield port, handler
    finally:
        controller.stop()

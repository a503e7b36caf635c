"""How the HTTPS server is configured: uvicorn's settings and the TLS context, shared by the single-process server
(`certctl server`) and each worker of `certctl server --workers N` (certctl.api.worker), which builds its own.

Kept free of the command line's modules (typer, click) so that a worker does not load them.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn

from certctl.config import Settings

log = logging.getLogger("certctl.server")

# TLS 1.3 only, like the reference: no TLS 1.2 cipher negotiation to get wrong.
TLS_MINIMUM = ssl.TLSVersion.TLSv1_3


def tls_context(config: uvicorn.Config, _default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    """uvicorn's `ssl_context_factory`: a server context with TLS 1.3 as the floor."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = TLS_MINIMUM
    ctx.options |= ssl.OP_NO_COMPRESSION
    assert config.ssl_certfile is not None
    ctx.load_cert_chain(str(config.ssl_certfile), str(config.ssl_keyfile) if config.ssl_keyfile else None)
    return ctx


def reload_certificate(ctx: ssl.SSLContext, cert: Path, key: Path) -> bool:
    """Load a new certificate into the live context; new connections use it, open ones keep theirs.

    The files are first tried in a scratch context so a broken pair never replaces a working one.
    """
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(str(cert), str(key))
        ctx.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        log.error("TLS certificate reload failed; keeping the current one", extra={"error": str(exc)})
        return False
    log.info("TLS certificate reloaded", extra={"cert": str(cert)})
    return True


def certificate_paths(settings: Settings) -> tuple[Path, Path]:
    """The server's TLS pair: CERTCTL_TLS_CERT_PATH/_KEY_PATH, else the one first boot generated."""
    if settings.tls_cert_path and settings.tls_key_path:
        return settings.tls_cert_path, settings.tls_key_path
    from certctl.pki.selfsigned import server_certificate_paths

    return server_certificate_paths(settings.data_dir)


def server_config(settings: Settings, app: Any, *, factory: bool = False) -> uvicorn.Config:
    """uvicorn's configuration for `app` (an ASGI app, or with `factory` an import string of a factory)."""
    cert, key = certificate_paths(settings)
    return uvicorn.Config(
        app,
        factory=factory,
        host=settings.host,
        port=settings.port,
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
        ssl_context_factory=tls_context,
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=int(settings.audit_flush_timeout_seconds),
        loop="uvloop",
        http="httptools",
    )

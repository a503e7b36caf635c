"""The TLS probe reports what an endpoint serves (the whole chain), and never outstays its timeout."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from pathlib import Path

import pytest

from certctl.connectors.tlsprobe import ProbeError, probe_tls
from tests.servers import ThrowawayCA


def _silent_tls_server(tmp_path: Path) -> tuple[int, str, threading.Event]:
    """Completes handshakes, serves leaf + issuing CA, then never reads or closes (no close_notify answer)."""
    issued = ThrowawayCA().issue("probe.example.com")
    (tmp_path / "full.pem").write_text(issued.fullchain_pem)
    (tmp_path / "key.pem").write_text(issued.key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "full.pem", tmp_path / "key.pem")
    listener = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()
    held: list[ssl.SSLSocket] = []

    def serve() -> None:
        listener.settimeout(0.2)
        while not done.is_set():
            try:
                raw, _ = listener.accept()
            except OSError:
                continue
            try:
                held.append(context.wrap_socket(raw, server_side=True))
            except (OSError, ssl.SSLError):
                raw.close()
        for conn in held:
            conn.close()
        listener.close()

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1], issued.fingerprint, done


async def test_reports_the_served_chain_and_does_not_wait_for_a_silent_peer(tmp_path: Path) -> None:
    port, fingerprint, done = _silent_tls_server(tmp_path)
    try:
        started = time.monotonic()
        result = await probe_tls("127.0.0.1", port, server_name="probe.example.com", timeout=2)
        assert time.monotonic() - started < 2
    finally:
        done.set()
    assert result.fingerprint_sha256 == fingerprint and len(result.chain_der) == 2
    assert result.subject == "CN=probe.example.com" and result.tls_version.startswith("TLS")


async def test_a_refused_port_is_a_probe_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ProbeError, match="failed"):
        await probe_tls("127.0.0.1", port, timeout=1)

"""CRL, OCSP and CA certificates over plain HTTP on CERTCTL_PKI_HTTP_PORT; nothing else is served there."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from certctl.services.issuance import run_due_issuing_jobs
from tests import factories
from tests.conftest import make_settings, start_api, stop_api
from tests.pki_helpers import openssl, split_pem


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_pki_routes_over_plain_http_and_nothing_else(database_url: str, tmp_path: Path) -> None:
    port = _free_port()
    settings = make_settings(database_url, tmp_path / "d", keygen_mode="server", pki_http_port=port)
    api, lifespan = await start_api(settings)
    try:
        cert = await factories.seed_certificate(api)
        await api.admin.post(f"/api/v1/certificates/{cert['id']}/renew")
        assert await run_due_issuing_jobs(api.services.issuance) == {"Completed": 1}
        [version] = (await api.admin.get(f"/api/v1/certificates/{cert['id']}/versions")).json()["data"]
        blocks = split_pem(version["pem_chain"])
        leaf, issuer = (x509.load_pem_x509_certificate(b.encode()) for b in blocks[:2])
        ocsp_url = leaf.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value[0].access_location
        assert ocsp_url.value.startswith(f"http://127.0.0.1:{port}/.well-known/pki/ocsp/")

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as plain:
            request = ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, hashes.SHA1()).build()
            answer = await plain.post(ocsp_url.value.split(str(port), 1)[1],
                                      content=request.public_bytes(serialization.Encoding.DER),
                                      headers={"Content-Type": "application/ocsp-request"})
            assert answer.status_code == 200
            assert ocsp.load_der_ocsp_response(answer.content).certificate_status == ocsp.OCSPCertStatus.GOOD
            crl_path = leaf.extensions.get_extension_for_class(x509.CRLDistributionPoints).value[0].full_name[0].value
            crl = await plain.get(crl_path.split(str(port), 1)[1])
            assert crl.status_code == 200 and crl.headers["content-type"] == "application/pkix-crl"
            refused = await plain.get("/api/v1/teams", headers={"Authorization": "Bearer whatever"})
            assert refused.status_code == 404 and "HTTPS only" in refused.json()["message"]

        (tmp_path / "leaf.pem").write_text(blocks[0])
        (tmp_path / "issuer.pem").write_text(blocks[1])
        # In a thread: the server answering it runs on this test's event loop.
        result = await asyncio.to_thread(
            openssl, "ocsp", "-issuer", str(tmp_path / "issuer.pem"), "-cert", str(tmp_path / "leaf.pem"),
            "-url", ocsp_url.value, "-CAfile", str(tmp_path / "issuer.pem"), "-nonce")
        assert "leaf.pem: good" in result.stdout and "Response verify OK" in result.stderr + result.stdout
    finally:
        await stop_api(api, lifespan)

"""Shared helpers for PKI tests: keys, CSRs, and running the real `openssl` on what we issue."""

from __future__ import annotations

import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID


def make_csr(
    names: list[str], key: CertificateIssuerPrivateKeyTypes | None = None, *, common_name: str | None = None
) -> tuple[str, CertificateIssuerPrivateKeyTypes]:
    key = key or ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name or names[0])])
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    digest = None if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)) else hashes.SHA256()
    csr = builder.sign(key, digest)  # type: ignore[arg-type]  # Ed25519 needs None
    return csr.public_bytes(serialization.Encoding.PEM).decode(), key


def openssl(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["openssl", *args], capture_output=True, text=True, cwd=cwd, timeout=60)
    if check and result.returncode != 0:
        raise AssertionError(
            f"openssl {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def split_pem(pem_chain: str) -> list[str]:
    marker = "-----END CERTIFICATE-----"
    return [block.strip() + "\n" + marker + "\n" for block in pem_chain.split(marker) if block.strip()]


def verify_chain(tmp: Path, pem_chain: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """`openssl verify` of the leaf against the root at the end of the chain, intermediates untrusted."""
    blocks = split_pem(pem_chain)
    (tmp / "leaf.pem").write_text(blocks[0])
    (tmp / "root.pem").write_text(blocks[-1])
    (tmp / "untrusted.pem").write_text("".join(blocks[1:-1]) or blocks[-1])
    return openssl("verify", "-CAfile", str(tmp / "root.pem"), "-untrusted", str(tmp / "untrusted.pem"), *extra,
                   str(tmp / "leaf.pem"), check=False)

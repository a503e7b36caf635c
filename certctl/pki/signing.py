"""Sign X.509 structures (certificates, CRLs, OCSP responses) with any `Signer`.

With a software key the `cryptography` builder signs directly (the fast path). A hardware key
never leaves its token, so the structure is built and signed by a throwaway key of the same
spec, and its to-be-signed bytes are then signed by the real key and spliced in.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.x509 import ocsp

from certctl.pki.signers import Signer, hash_for


def sign_certificate(builder: x509.CertificateBuilder, signer: Signer) -> x509.Certificate:
    key = signer.software_key()
    if key is not None:
        return builder.sign(key, hash_for(signer.key_spec))
    from certctl.pki.signers.external import sign_certificate_externally

    return sign_certificate_externally(builder, signer)


def sign_crl(builder: x509.CertificateRevocationListBuilder, signer: Signer) -> x509.CertificateRevocationList:
    key = signer.software_key()
    if key is not None:
        return builder.sign(key, hash_for(signer.key_spec))
    from certctl.pki.signers.external import sign_crl_externally

    return sign_crl_externally(builder, signer)


def sign_ocsp_response(builder: ocsp.OCSPResponseBuilder, signer: Signer) -> ocsp.OCSPResponse:
    key = signer.software_key()
    if key is not None:
        return builder.sign(key, hash_for(signer.key_spec))
    from certctl.pki.signers.external import sign_ocsp_externally

    return sign_ocsp_externally(builder, signer)

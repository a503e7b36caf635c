"""A PKCS#12 (RFC 7292) of a deploy bundle's key and chain, for `keytool -importkeystore` into a Java keystore.

The PKCS#12 is encrypted with the keystore's own password, so the imported key entry's password equals the
store password (what Tomcat, Jetty and Kafka expect when they are given only one). PBES2 with AES-256
(RFC 8018) is what JDK 8u301+/11.0.12+/17 read.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from certctl.domain.errors import ValidationError
from certctl.pki.bundle import DeployBundle


def keystore_pkcs12(bundle: DeployBundle, *, alias: str, password: str) -> bytes:
    """The key, the leaf and its chain under `alias` (the PKCS#12 friendly name), encrypted with `password`."""
    if not password:
        raise ValidationError("a keystore password is required")
    key = serialization.load_pem_private_key(bundle.key_pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey | dsa.DSAPrivateKey | ec.EllipticCurvePrivateKey
                      | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        raise ValidationError("this private key type cannot be stored in a keystore")
    leaf = x509.load_der_x509_certificate(bundle.leaf_der)
    chain = x509.load_pem_x509_certificates(bundle.chain_pem) if bundle.chain_pem else []
    return pkcs12.serialize_key_and_certificates(
        alias.encode(), key, leaf, chain or None,
        serialization.BestAvailableEncryption(password.encode()),
    )

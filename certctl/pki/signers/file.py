"""File signer driver: PKCS#8 PEM key files, 0600 in a 0700 directory, optionally passphrase-encrypted.

References look like `file:<name>.key`, relative to the driver's key directory; `..` and
absolute paths are refused, except the operator's own CA key file (`CERTCTL_CA_KEY_PATH`), which
is allowed by exact path. Reading accepts PKCS#1, SEC1 and PKCS#8; new keys are written PKCS#8,
encrypted with the passphrase when one is configured (`CERTCTL_CA_KEY_PASSPHRASE`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from certctl.pki.signers.base import Signer, SignerDriver, SignerError, SoftwareSigner, generate_private_key

_LABEL = re.compile(r"[^A-Za-z0-9._-]+")


class FileDriver(SignerDriver):
    scheme = "file"

    def __init__(self, key_dir: Path, *, passphrase: str | None = None, allowed_files: Iterable[Path] = ()) -> None:
        self.key_dir = key_dir
        self._passphrase = passphrase.encode() if passphrase else None
        self._allowed = {p.resolve() for p in allowed_files}

    def load(self, ref: str) -> Signer:
        path = self._path(ref)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise SignerError(f"key '{ref}' cannot be read: {exc.strerror}") from exc
        try:
            key = serialization.load_pem_private_key(data, password=self._passphrase if b"ENCRYPTED" in data else None)
        except (ValueError, TypeError) as exc:
            # Never include the file content: it is a private key.
            raise SignerError(f"key '{ref}' is not a readable private key (wrong passphrase or format)") from exc
        if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)):
            raise SignerError(f"key '{ref}' is a {type(key).__name__}, which cannot sign certificates")
        return SoftwareSigner(ref, key)

    def generate(self, key_spec: str, label: str) -> Signer:
        key = generate_private_key(key_spec)
        self._harden_dir()
        name = _LABEL.sub("-", label).strip("-.") or "key"
        path = self.key_dir / f"{name}.key"
        encryption: serialization.KeySerializationEncryption = serialization.NoEncryption()
        if self._passphrase:
            encryption = serialization.BestAvailableEncryption(self._passphrase)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never overwrite a CA key
        except FileExistsError:
            raise SignerError(f"key 'file:{name}.key' already exists; choose another label") from None
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        return SoftwareSigner(f"file:{name}.key", key)

    def _harden_dir(self) -> None:
        self.key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.key_dir, 0o700)

    def _path(self, ref: str) -> Path:
        if not ref.startswith("file:"):
            raise SignerError(f"'{ref}' is not a file key reference")
        raw = ref[len("file:"):]
        candidate = Path(raw)
        if candidate.is_absolute():
            if candidate.resolve() in self._allowed:
                return candidate
            raise SignerError(f"key reference '{ref}' is outside the key directory")
        if ".." in candidate.parts or not raw:
            raise SignerError(f"key reference '{ref}' must name a file inside the key directory")
        return self.key_dir / candidate

"""Signer drivers behind one interface, chosen by the scheme of a key reference (`file:`, `pkcs11:`)."""

from __future__ import annotations

from certctl.pki.signers.base import (
    DEFAULT_KEY_SPEC,
    KEY_SPECS,
    Signer,
    SignerDriver,
    SignerError,
    SoftwareSigner,
    generate_private_key,
    hash_for,
    key_spec_of,
    normalize_key_spec,
)


class SignerRegistry:
    """The configured drivers; loaded signers are kept, since opening a key (KDF, token login) is slow."""

    def __init__(self, drivers: list[SignerDriver], *, default_scheme: str = "file") -> None:
        self._drivers = {driver.scheme: driver for driver in drivers}
        if default_scheme not in self._drivers:
            raise SignerError(f"signer driver '{default_scheme}' is not configured")
        self.default_scheme = default_scheme
        self._loaded: dict[str, Signer] = {}

    def driver(self, scheme: str) -> SignerDriver:
        try:
            return self._drivers[scheme]
        except KeyError:
            raise SignerError(f"signer driver '{scheme}' is not configured") from None

    def load(self, ref: str) -> Signer:
        signer = self._loaded.get(ref)
        if signer is None:
            signer = self.driver(ref.split(":", 1)[0]).load(ref)
            self._loaded[ref] = signer
        return signer

    def generate(self, key_spec: str, label: str, *, scheme: str | None = None) -> Signer:
        signer = self.driver(scheme or self.default_scheme).generate(normalize_key_spec(key_spec), label)
        self._loaded[signer.ref] = signer
        return signer


__all__ = [
    "DEFAULT_KEY_SPEC", "KEY_SPECS", "Signer", "SignerDriver", "SignerError", "SignerRegistry", "SoftwareSigner",
    "generate_private_key", "hash_for", "key_spec_of", "normalize_key_spec",
]

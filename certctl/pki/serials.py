"""Certificate serial numbers: generation and the one canonical text form used everywhere.

The store keeps serials as lowercase hex without leading zeros, and every lookup (OCSP, CRL,
revocation, ACME, ARI) goes through `canonical_serial` first. The reference compared padded and
unpadded strings and lost about one serial in eight (protocols.md §4).
"""

from __future__ import annotations

import secrets

# RFC 5280 §4.1.2.2: positive, at most 20 octets. CA/B Forum BR 7.1: at least 64 bits from a CSPRNG.
# 127 random bits, top bit of the 16th octet clear, so the DER INTEGER stays within 16 octets and positive.
SERIAL_RANDOM_BITS = 127


def new_serial() -> int:
    """A random positive serial with 127 bits of entropy (never 0)."""
    while True:
        value = secrets.randbits(SERIAL_RANDOM_BITS)
        if value >= 1 << 64:  # at least 64 significant bits, as the BRs ask
            return value


def serial_hex(value: int) -> str:
    return format(value, "x")


def canonical_serial(text: str | int) -> str:
    """Any spelling of a serial (int, hex with or without 0x, padding, colons, upper case) as canonical hex.

    Raises ValueError for something that is not a serial.
    """
    if isinstance(text, int):
        if text < 0:
            raise ValueError("a serial number is never negative")
        return serial_hex(text)
    cleaned = text.strip().lower().replace(":", "").replace(" ", "")
    if cleaned.startswith("0x"):
        cleaned = cleaned[2:]
    if not cleaned or len(cleaned) > 64 or any(c not in "0123456789abcdef" for c in cleaned):
        raise ValueError(f"'{text[:80]}' is not a hexadecimal serial number")
    return serial_hex(int(cleaned, 16))

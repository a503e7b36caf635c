"""The encrypted envelope of a `certctl backup` archive: scrypt + AES-256-GCM in authenticated chunks.

Layout (all integers big-endian):

    header   b"CERTCTL-BACKUP\\x00" (15) | version u8 (1) | log2(N) u8 | r u8 | p u8 | chunk size u32 | salt (16)
             | HMAC-SHA256(mac key, the 39 bytes before it) (32)
    chunks   length u32 | AES-256-GCM ciphertext+tag of up to `chunk size` plaintext bytes
             nonce = chunk counter (11 bytes) | last-chunk flag (1 byte); associated data = the whole header

scrypt(passphrase, salt, N, r, p) gives 64 bytes: the AES key and the header's HMAC key. A fresh random salt
per archive makes the key unique to it, so a counter is a safe nonce. This is the STREAM construction
(Hoang, Reyhanitabar, Rogaway, Vizár 2015): every chunk is authenticated on its own (a flipped byte is found
in the chunk that holds it, without reading further), chunks cannot be reordered (the counter), dropped or
moved to another archive (the header is the associated data), and the end is authenticated (only the last
chunk carries the flag, so a file cut anywhere is reported as truncated, never read as complete).

The header HMAC tells a wrong passphrase apart from a damaged archive before any chunk is read.
Memory stays at one chunk (1 MiB) whatever the archive's size.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from typing import BinaryIO, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

MAGIC: Final = b"CERTCTL-BACKUP\x00"
VERSION: Final = 1
CHUNK_SIZE: Final = 1 << 20
# scrypt N=2^17, r=8, p=1: 128 MiB and about half a second per open; RFC 7914's interactive figure
# (2^14) is too cheap for a file that holds CA keys and may sit on a shared backup server for years.
DEFAULT_LOG_N: Final = 17
_PREFIX = struct.Struct(">15sBBBBI16s")
HEADER_SIZE: Final = _PREFIX.size + 32
_LENGTH = struct.Struct(">I")
_TAG = 16
MIN_PASSPHRASE: Final = 12


class ArchiveError(Exception):
    """The archive cannot be opened or read (a wrong passphrase, a damaged, truncated or foreign file)."""


class WrongPassphrase(ArchiveError):
    pass


class DamagedArchive(ArchiveError):
    pass


class TruncatedArchive(DamagedArchive):
    pass


def _derive(passphrase: str, salt: bytes, log_n: int, r: int, p: int) -> tuple[bytes, bytes]:
    material = Scrypt(salt=salt, length=64, n=1 << log_n, r=r, p=p).derive(passphrase.encode())
    return material[:32], material[32:]


def _nonce(counter: int, last: bool) -> bytes:
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def check_passphrase(passphrase: str) -> None:
    if len(passphrase) < MIN_PASSPHRASE:
        raise ArchiveError(f"the backup passphrase must be at least {MIN_PASSPHRASE} characters")


class EncryptingWriter:
    """A write-only binary stream that encrypts into `sink`; `close()` writes the authenticated last chunk."""

    def __init__(self, sink: BinaryIO, passphrase: str, *, log_n: int = DEFAULT_LOG_N,
                 chunk_size: int = CHUNK_SIZE) -> None:
        check_passphrase(passphrase)
        salt = os.urandom(16)
        key, mac_key = _derive(passphrase, salt, log_n, 8, 1)
        prefix = _PREFIX.pack(MAGIC, VERSION, log_n, 8, 1, chunk_size, salt)
        self._header = prefix + hmac.new(mac_key, prefix, hashlib.sha256).digest()
        self._aead = AESGCM(key)
        self._sink = sink
        self._chunk_size = chunk_size
        self._buffer = bytearray()
        self._counter = 0
        self._closed = False
        self.bytes_in = 0
        sink.write(self._header)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._closed:
            raise ValueError("write to a closed archive")
        self._buffer += data
        self.bytes_in += len(data)
        while len(self._buffer) > self._chunk_size:  # keep at least one byte back: the last chunk is never empty
            self._emit(bytes(self._buffer[: self._chunk_size]), last=False)
            del self._buffer[: self._chunk_size]
        return len(data)

    def _emit(self, plain: bytes, *, last: bool) -> None:
        sealed = self._aead.encrypt(_nonce(self._counter, last), plain, self._header)
        self._sink.write(_LENGTH.pack(len(sealed)) + sealed)
        self._counter += 1

    def flush(self) -> None:
        self._sink.flush()

    def close(self) -> None:
        if not self._closed:
            self._emit(bytes(self._buffer), last=True)
            self._buffer.clear()
            self._closed = True
            self._sink.flush()


class DecryptingReader:
    """A read-only binary stream over an archive; raises `ArchiveError` subclasses as soon as a problem shows.

    `finish()` reads to the end and checks that the authenticated last chunk was reached and nothing follows it:
    call it after the consumer (tarfile) has stopped reading, or a cut after the tar end would go unnoticed.
    """

    def __init__(self, source: BinaryIO, passphrase: str) -> None:
        header = source.read(HEADER_SIZE)
        if len(header) < HEADER_SIZE or not header.startswith(MAGIC):
            raise DamagedArchive("not a certctl backup archive (unknown header)")
        _magic, version, log_n, r, p, chunk_size, salt = _PREFIX.unpack(header[: _PREFIX.size])
        if version != VERSION:
            raise DamagedArchive(f"archive format version {version} is not supported (this certctl reads {VERSION})")
        # Bounds on what the header may ask for (scrypt needs 128 * r * N bytes: at most 1 GiB here), so that a
        # crafted file cannot make us allocate more before its HMAC can be checked.
        if not (14 <= log_n <= 20 and r == 8 and 1 <= p <= 4 and 4096 <= chunk_size <= 64 << 20):
            raise DamagedArchive("the archive header has out-of-range parameters")
        key, mac_key = _derive(passphrase, salt, log_n, r, p)
        expected = hmac.new(mac_key, header[: _PREFIX.size], hashlib.sha256).digest()
        if not hmac.compare_digest(expected, header[_PREFIX.size:]):
            raise WrongPassphrase("wrong passphrase (or the archive header was altered)")
        self._header = header
        self._aead = AESGCM(key)
        self._source = source
        self._max_sealed = chunk_size + _TAG
        self._counter = 0
        self._buffer = b""
        self._offset = 0
        self._done = False
        self.bytes_out = 0

    def _next_chunk(self) -> bool:
        """Decrypt the next chunk into the buffer; False at the authenticated end."""
        if self._done:
            return False
        raw = self._source.read(_LENGTH.size)
        if len(raw) < _LENGTH.size:
            raise TruncatedArchive(
                f"the archive is truncated: it ends after chunk {self._counter} without its end mark")
        (length,) = _LENGTH.unpack(raw)
        if not _TAG <= length <= self._max_sealed:
            raise DamagedArchive(f"chunk {self._counter} has an impossible length: the archive is damaged")
        sealed = self._source.read(length)
        if len(sealed) < length:
            raise TruncatedArchive(f"the archive is truncated inside chunk {self._counter}")
        plain = None
        for last in (False, True):
            try:
                plain = self._aead.decrypt(_nonce(self._counter, last), sealed, self._header)
            except InvalidTag:
                continue
            self._done = last
            break
        if plain is None:
            raise DamagedArchive(f"chunk {self._counter} fails authentication: the archive was altered or damaged")
        self._counter += 1
        self._buffer, self._offset = plain, 0
        self.bytes_out += len(plain)
        if self._done and self._source.read(1):
            raise DamagedArchive("data follows the archive's end mark: the archive was altered")
        return True

    def read(self, size: int = -1) -> bytes:
        parts: list[bytes] = []
        wanted = size if size >= 0 else None
        got = 0
        while wanted is None or got < wanted:
            if self._offset >= len(self._buffer) and not self._next_chunk():
                break
            take = len(self._buffer) - self._offset if wanted is None else min(wanted - got,
                                                                               len(self._buffer) - self._offset)
            parts.append(self._buffer[self._offset: self._offset + take])
            self._offset += take
            got += take
        return b"".join(parts)

    def finish(self) -> None:
        while self._next_chunk():
            pass

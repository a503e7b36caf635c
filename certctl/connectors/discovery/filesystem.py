"""The agent's filesystem discovery: every certificate in the configured directories (connectors.md §5).

Formats: PEM (every CERTIFICATE block of a file, so chains and bundles are reported whole), DER, and
PKCS#12 that opens without a password (absent or empty). Rules, after the reference:

- Directories are walked recursively. Symlinks are followed (Let's Encrypt's `live/` holds symlinks into
  `archive/`); a directory reached twice (a symlink loop, or two configured directories that overlap) is
  walked once. Devices, FIFOs and sockets are never opened.
- Files over 1 MiB are not read. `.key` files and files without an extension are skipped, as are certctl's
  own deployment backups (`*.certctl-bak.*`). `.pem .crt .cer .cert` are read as PEM (`.crt .cer .cert` as
  DER when they hold no PEM text), `.der` as DER, `.p12 .pfx` as PKCS#12; any other file is reported only
  when it holds a PEM CERTIFICATE block.
- Private keys are never reported: only CERTIFICATE blocks are decoded from PEM text (a combined
  cert + key file yields its certificates), each entry's `pem_data` is re-encoded from the certificate
  alone, and of a PKCS#12 only the certificates are kept.
- A file that cannot be read or parsed adds one line to `errors` (path and reason, never its content);
  the scan itself never fails.

The scan is synchronous file I/O: an asyncio caller runs it with `asyncio.to_thread(scan_directories, …)`.
`FilesystemScan.report_bodies(agent_id)` gives the `POST /api/v1/agents/{id}/discoveries` bodies, split so
each stays under the server's request size limit.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import stat
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from certctl.pki.serials import serial_hex

MAX_FILE_SIZE = 1 << 20  # 1 MiB, as the reference
MAX_FILES = 200_000  # files looked at per scan, so a directory list that names "/" still ends
MAX_ERRORS = 1000  # error lines kept per scan; the rest are counted in a final line
MAX_SOURCE_PATH_BYTES = 2048  # the server's limit (certctl.domain.models.discovery)

PEM_EXTENSIONS = frozenset({".pem", ".crt", ".cer", ".cert"})
DER_EXTENSIONS = frozenset({".der"})
PKCS12_EXTENSIONS = frozenset({".p12", ".pfx"})
KEY_EXTENSIONS = frozenset({".key"})
CANDIDATE_EXTENSIONS = PEM_EXTENSIONS | DER_EXTENSIONS | PKCS12_EXTENSIONS
BACKUP_MARKER = ".certctl-bak."  # the deploy engine's `<file>.certctl-bak.<nanos>` backups

# RFC 7468 §5: "CERTIFICATE" (and the legacy "X509 CERTIFICATE"). Only these labels are ever decoded.
_PEM_CERT = re.compile(rb"-----BEGIN (?P<label>(?:X509 )?CERTIFICATE)-----(?P<body>.*?)-----END (?P=label)-----", re.S)
_PEM_CERT_BEGIN = re.compile(rb"-----BEGIN (?:X509 )?CERTIFICATE-----")
_PEM_ANY = re.compile(rb"-----BEGIN [A-Z0-9 #]+-----")


@dataclass(frozen=True)
class DiscoveredEntry:
    """One certificate, with the reference's entry fields."""

    fingerprint_sha256: str
    common_name: str
    sans: tuple[str, ...]
    serial_number: str  # canonical lowercase hex (certctl.pki.serials)
    issuer_dn: str
    subject_dn: str
    not_before: datetime
    not_after: datetime
    key_algorithm: str
    key_size: int
    is_ca: bool
    pem_data: str
    source_path: str
    source_format: str  # PEM | DER | PKCS12 (the network scanner: TLS)

    def to_json(self) -> dict[str, Any]:
        return {
            "fingerprint_sha256": self.fingerprint_sha256,
            "common_name": self.common_name,
            "sans": list(self.sans),
            "serial_number": self.serial_number,
            "issuer_dn": self.issuer_dn,
            "subject_dn": self.subject_dn,
            "not_before": self.not_before.isoformat(),  # RFC 3339
            "not_after": self.not_after.isoformat(),
            "key_algorithm": self.key_algorithm,
            "key_size": self.key_size,
            "is_ca": self.is_ca,
            "pem_data": self.pem_data,
            "source_path": self.source_path,
            "source_format": self.source_format,
        }


@dataclass
class FilesystemScan:
    directories: list[str]
    certificates: list[DiscoveredEntry] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    files_seen: int = 0
    files_skipped: int = 0  # key files, oversized or extension-less files, backups, special files
    scan_duration_ms: int = 0

    def report(self, agent_id: str) -> dict[str, Any]:
        """The whole scan as one report body."""
        return {
            "agent_id": agent_id,
            "directories": list(self.directories),
            "certificates": [entry.to_json() for entry in self.certificates],
            "errors": list(self.errors),
            "scan_duration_ms": self.scan_duration_ms,
        }

    def report_bodies(self, agent_id: str, *, max_bytes: int = 900_000) -> list[dict[str, Any]]:
        """The report split into bodies of at most `max_bytes` of JSON each (the server takes 1 MiB by default).

        The first body carries the errors and the duration; every body lists the directories. A single
        entry larger than `max_bytes` (it cannot be: entries hold one certificate) would get a body alone.
        """
        first = self.report(agent_id)
        first["certificates"] = []
        bodies = [first]
        size = len(orjson.dumps(first))
        for entry in self.certificates:
            as_json = entry.to_json()
            entry_size = len(orjson.dumps(as_json)) + 1
            if size + entry_size > max_bytes and bodies[-1]["certificates"]:
                body = {**first, "certificates": [], "errors": [], "scan_duration_ms": 0}
                bodies.append(body)
                size = len(orjson.dumps(body))
            bodies[-1]["certificates"].append(as_json)
            size += entry_size
        return bodies


# ---- describing one certificate ---------------------------------------------------------------------------------


def key_description(cert: x509.Certificate) -> tuple[str, int]:
    """(algorithm, size in bits) of the certificate's public key; ("", 0) for a key type we do not know."""
    try:
        key = cert.public_key()
    except (ValueError, TypeError):  # an algorithm cryptography cannot load
        return "", 0
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA", key.key_size
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "ECDSA", key.curve.key_size
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519", 256
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448", 456
    if isinstance(key, dsa.DSAPublicKey):
        return "DSA", key.key_size
    return "", 0


def subject_alternative_names(cert: x509.Certificate) -> tuple[str, ...]:
    """DNS names, IP addresses, e-mail addresses and URIs of the SAN extension, as text."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return ()
    names: list[str] = []
    for kind in (x509.DNSName, x509.IPAddress, x509.RFC822Name, x509.UniformResourceIdentifier):
        names.extend(str(value) for value in ext.get_values_for_type(kind))
    return tuple(names)


def _common_name(name: x509.Name) -> str:
    for attribute in name.get_attributes_for_oid(x509.NameOID.COMMON_NAME):
        value = attribute.value
        return value if isinstance(value, str) else value.decode(errors="replace")
    return ""


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except (x509.ExtensionNotFound, ValueError):
        return False


def describe_certificate(cert: x509.Certificate, *, source_path: str, source_format: str) -> DiscoveredEntry:
    """The reference's entry fields for one certificate (raises ValueError for one that cannot be described)."""
    der = cert.public_bytes(serialization.Encoding.DER)
    algorithm, size = key_description(cert)
    serial = cert.serial_number
    if serial < 0:  # RFC 5280 §4.1.2.2 forbids it; such a file is reported as an error
        raise ValueError("the certificate has a negative serial number")
    return DiscoveredEntry(
        fingerprint_sha256=hashlib.sha256(der).hexdigest(),
        common_name=_common_name(cert.subject),
        sans=subject_alternative_names(cert),
        serial_number=serial_hex(serial),
        issuer_dn=cert.issuer.rfc4514_string(),
        subject_dn=cert.subject.rfc4514_string(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        key_algorithm=algorithm,
        key_size=size,
        is_ca=_is_ca(cert),
        pem_data=cert.public_bytes(serialization.Encoding.PEM).decode(),
        source_path=source_path,
        source_format=source_format,
    )


# ---- reading files ----------------------------------------------------------------------------------------------


class _Unreadable(Exception):
    """A file that should hold certificates but cannot be read or parsed (one error line)."""


def pem_certificates(data: bytes) -> tuple[list[x509.Certificate], list[str]]:
    """Every CERTIFICATE block of PEM text, and a problem line for each block that does not parse."""
    found: list[x509.Certificate] = []
    problems: list[str] = []
    blocks = list(_PEM_CERT.finditer(data))
    for number, match in enumerate(blocks, 1):
        try:
            der = base64.b64decode(re.sub(rb"\s+", b"", match["body"]), validate=True)
            found.append(x509.load_der_x509_certificate(der))
        except (binascii.Error, ValueError):
            problems.append(f"certificate block {number} does not parse")
    unterminated = len(_PEM_CERT_BEGIN.findall(data)) - len(blocks)
    if unterminated > 0:
        problems.append(f"{unterminated} certificate block(s) without an END line")
    return found, problems


def _pkcs12_certificates(data: bytes) -> list[x509.Certificate]:
    # cryptography has no certificates-only PKCS#12 reader: the key bag (if any) is loaded with the rest and
    # dropped here unused. Absent and empty passwords are both "no password" (openssl -passout pass:).
    for password in (None, b""):
        try:
            bundle = pkcs12.load_pkcs12(data, password)
        except ValueError:
            continue
        certs = [c.certificate for c in ([bundle.cert] if bundle.cert else []) + list(bundle.additional_certs)]
        del bundle
        return certs
    raise _Unreadable("PKCS#12 that cannot be opened without a password (or is damaged); skipped")


def _read_regular_file(path: str, limit: int) -> bytes | None:
    """The file's bytes, or None when it is not a regular file. O_NONBLOCK: a FIFO never blocks the scan."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    fd = os.open(path, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks: list[bytes] = []
        remaining = limit + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def certificates_in_file(data: bytes, suffix: str) -> tuple[list[tuple[x509.Certificate, str]], list[str]]:
    """(certificate, source format) pairs found in a file's bytes, and problems; raises _Unreadable."""
    if suffix in PKCS12_EXTENSIONS:
        return [(c, "PKCS12") for c in _pkcs12_certificates(data)], []
    has_pem = _PEM_ANY.search(data) is not None
    if has_pem:
        certs, problems = pem_certificates(data)
        if not certs and not problems:
            return [], []  # a key, CSR, CRL or parameters file: nothing to report, nothing wrong
        return [(c, "PEM") for c in certs], problems
    if suffix in DER_EXTENSIONS or suffix in PEM_EXTENSIONS - {".pem"}:
        try:
            return [(x509.load_der_x509_certificate(data), "DER")], []
        except ValueError:
            raise _Unreadable("neither PEM nor a DER certificate") from None
    if suffix == ".pem":
        raise _Unreadable("no PEM blocks in a .pem file")
    return [], []


def _walk(roots: Iterable[Path], errors: list[str], seen: set[tuple[int, int]]) -> Iterator[str]:
    """File paths under the roots, depth first in name order; each directory (by device and inode) once."""
    stack = [str(root) for root in reversed(list(roots))]
    while stack:
        directory = stack.pop()
        try:
            info = os.stat(directory)
            with os.scandir(directory) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError as exc:
            errors.append(f"{directory}: cannot read directory: {exc.strerror or exc}")
            continue
        key = (info.st_dev, info.st_ino)
        if key in seen:
            continue  # a symlink loop, or a directory already walked through another path
        seen.add(key)
        subdirectories: list[str] = []
        for entry in entries:
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir:
                subdirectories.append(entry.path)
            else:
                yield entry.path
        stack.extend(reversed(subdirectories))


def scan_directories(
    directories: Sequence[str | Path],
    *,
    max_file_size: int = MAX_FILE_SIZE,
    max_files: int = MAX_FILES,
) -> FilesystemScan:
    """Walk the directories and describe every certificate found; problems go to `errors`, never raised."""
    started = time.monotonic()
    result = FilesystemScan(directories=[str(Path(d).absolute()) for d in directories])
    errors: list[str] = []
    seen_keys: set[tuple[str, str]] = set()
    for path in _walk((Path(d) for d in result.directories), errors, set()):
        if result.files_seen >= max_files:
            errors.append(f"stopped after {max_files} files; narrow the discovery directories")
            break
        result.files_seen += 1
        entries, problem = _scan_file(path, max_file_size)
        if entries is None:
            result.files_skipped += 1
        for entry in entries or ():
            if (entry.fingerprint_sha256, entry.source_path) not in seen_keys:
                seen_keys.add((entry.fingerprint_sha256, entry.source_path))
                result.certificates.append(entry)
        if problem:
            errors.append(f"{path}: {problem}")
    if len(errors) > MAX_ERRORS:
        errors = [*errors[:MAX_ERRORS], f"... and {len(errors) - MAX_ERRORS} more errors"]
    result.errors = errors
    result.scan_duration_ms = int((time.monotonic() - started) * 1000)
    return result


def _scan_file(path: str, max_file_size: int) -> tuple[list[DiscoveredEntry] | None, str | None]:
    """(entries or None when skipped, problem line or None) for one file."""
    name = os.path.basename(path)
    suffix = os.path.splitext(name)[1].lower()
    if suffix in KEY_EXTENSIONS or not suffix or BACKUP_MARKER in name:
        return None, None
    candidate = suffix in CANDIDATE_EXTENSIONS
    if len(path.encode(errors="surrogateescape")) > MAX_SOURCE_PATH_BYTES:
        return None, (f"path longer than {MAX_SOURCE_PATH_BYTES} bytes; skipped" if candidate else None)
    try:
        info = os.stat(path)
    except OSError as exc:
        return None, (f"cannot read: {exc.strerror or exc}" if candidate or os.path.islink(path) else None)
    if not stat.S_ISREG(info.st_mode):
        return None, None
    if info.st_size > max_file_size:
        return None, (f"larger than {max_file_size} bytes; skipped" if candidate else None)
    try:
        data = _read_regular_file(path, max_file_size)
    except OSError as exc:
        return None, (f"cannot read: {exc.strerror or exc}" if candidate else None)
    if data is None:
        return None, None
    if len(data) > max_file_size:  # grew since the stat
        return None, (f"larger than {max_file_size} bytes; skipped" if candidate else None)
    try:
        found, problems = certificates_in_file(data, suffix)
    except _Unreadable as exc:
        return None, str(exc)
    entries: list[DiscoveredEntry] = []
    for cert, source_format in found:
        try:
            entries.append(describe_certificate(cert, source_path=path, source_format=source_format))
        except ValueError as exc:
            problems.append(str(exc))
    return entries, "; ".join(problems) or None

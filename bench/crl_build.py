"""CRL build + sign: 100,000 and 1,000,000 revoked entries through certctl.pki.crl, against cryptography's builder.

    .venv/bin/python bench/crl_build.py [--sizes 100000,1000000] [--baseline 5000,20000] [--key ECDSA-P256]
        [--repeat 3] [--database]

Prints, per size: seconds to encode and sign (median of --repeat runs), entries/s, CRL size, and a check that
`cryptography` parses the CRL with the right number of entries and a valid signature (and, for the first
size, that `openssl crl` reads it). The baseline is `cryptography`'s CertificateRevocationListBuilder with one
RevokedCertificateBuilder per entry, measured in the same run at smaller sizes (it is quadratic: it copies its
entry list on every addition). With --database, the whole service path on PostgreSQL too: 100,000 revocation
rows read by the status service, the CRL built, signed and stored in crl_cache (`StatusService._regenerate`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography import x509

from bench.common import add_json_flag, bench_result, json_mode, machine, print_json, result_row
from certctl.pki.ca import IssuingCA, PublicationUrls, build_root, ca_name
from certctl.pki.crl import RevokedEntry, build_crl
from certctl.pki.signers import SoftwareSigner, generate_private_key, hash_for

REASONS = [0, 1, 4, 5, 3]


def make_ca(spec: str) -> IssuingCA:
    signer = SoftwareSigner("mem:bench", generate_private_key(spec))
    now = datetime.now(UTC)
    cert = build_root(signer, ca_name("certctl CRL bench CA"), now, timedelta(days=3650))
    return IssuingCA(id="ica-bench", issuer_id="iss-bench", cert=cert, parents=(), signer=signer,
                     urls=PublicationUrls.for_ca("https://pki.example.com", "ica-bench"))


def entries(count: int, now: datetime) -> list[RevokedEntry]:
    # Revocation dates spread over a year, one per second at most: no two share an encoding by accident.
    return [RevokedEntry(secrets.randbits(127) | 1 << 64, now - timedelta(seconds=i * 31), REASONS[i % len(REASONS)])
            for i in range(count)]


def ours(ca: IssuingCA, items: list[RevokedEntry], now: datetime, repeat: int) -> tuple[float, bytes]:
    times = []
    der = b""
    for number in range(1, repeat + 1):
        started = time.perf_counter()
        der = build_crl(ca, items, number=number, this_update=now, next_update=now + timedelta(hours=24)).der
        times.append(time.perf_counter() - started)
    return statistics.median(times), der


def baseline(ca: IssuingCA, items: list[RevokedEntry], now: datetime) -> float:
    started = time.perf_counter()
    builder = x509.CertificateRevocationListBuilder().issuer_name(ca.cert.subject).last_update(now) \
        .next_update(now + timedelta(hours=24))
    flags = {1: x509.ReasonFlags.key_compromise, 4: x509.ReasonFlags.superseded,
             5: x509.ReasonFlags.cessation_of_operation, 3: x509.ReasonFlags.affiliation_changed}
    for item in items:
        revoked = x509.RevokedCertificateBuilder().serial_number(item.serial).revocation_date(item.revoked_at)
        if item.reason_code:
            revoked = revoked.add_extension(x509.CRLReason(flags[item.reason_code]), critical=False)
        builder = builder.add_revoked_certificate(revoked.build())
    builder = builder.add_extension(x509.CRLNumber(1), critical=False)
    key = ca.signer.software_key()
    assert key is not None
    builder.sign(key, hash_for(ca.signer.key_spec))
    return time.perf_counter() - started


def check(ca: IssuingCA, der: bytes, count: int, with_openssl: bool) -> dict[str, object]:
    crl = x509.load_der_x509_crl(der)
    result: dict[str, object] = {"parsed_entries": len(crl), "entries_ok": len(crl) == count,
                                 "signature_ok": crl.is_signature_valid(ca.cert.public_key())}  # type: ignore[arg-type]
    if with_openssl:
        with tempfile.NamedTemporaryFile(suffix=".crl") as handle:
            handle.write(der)
            handle.flush()
            text = subprocess.run(["openssl", "crl", "-inform", "DER", "-in", handle.name, "-noout", "-text"],
                                  capture_output=True, text=True, check=True).stdout
        result["openssl_entries"] = text.count("Serial Number:")
    return result


async def database_phase(count: int) -> dict[str, object]:
    """The service path on PostgreSQL: revocation rows → CRL in crl_cache."""
    from bench.common import CONFIG_KEY, create_database, db_upgrade, pg_url
    from certctl.api.app import create_app
    from certctl.config import Settings
    from certctl.store import rows
    from certctl.store.schema import certificate_revocations, issuers

    name = "certctl_bench_crl"
    await create_database(name, recreate=True)
    url = pg_url(name)
    db_upgrade(url)
    with tempfile.TemporaryDirectory(prefix="certctl-bench-crl-") as data_dir:
        settings = Settings(data_dir=Path(data_dir), database_url=url, config_encryption_key=CONFIG_KEY).validated()
        app = create_app(settings)
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        try:
            services = app.state.services
            async with services.ctx.db.read() as conn:
                issuer = await rows.get_row(conn, issuers, "iss-local")
                assert issuer is not None
                ca = await services.cas.issuing_ca(conn, issuer)
            now = datetime.now(UTC)
            values = [{
                "id": f"rev-{i}", "issuer_id": "iss-local", "ca_id": ca.id, "serial_number": format(e.serial, "x"),
                "certificate_id": None, "version_id": None, "reason": "keyCompromise", "reason_code": e.reason_code,
                "revoked_at": e.revoked_at, "revoked_by": "bench", "not_after": now + timedelta(days=90),
                "short_lived": False, "issuer_notified": True, "created_at": e.revoked_at,
            } for i, e in enumerate(entries(count, now))]
            started = time.perf_counter()
            async with services.ctx.db.transaction() as conn:
                for chunk in range(0, len(values), 10_000):
                    await conn.execute(certificate_revocations.insert(), values[chunk:chunk + 10_000])
            inserted = time.perf_counter() - started
            started = time.perf_counter()
            answer, built = await services.status._regenerate(ca.id, "scheduled", force=True)
            regenerate = time.perf_counter() - started
            assert built and len(x509.load_der_x509_crl(answer.der)) == count
            started = time.perf_counter()
            served = await services.status.crl_for(ca.id)
            served_s = time.perf_counter() - started
            return {"revocation_rows": count, "insert_s": round(inserted, 2),
                    "read_build_sign_store_s": round(regenerate, 2), "crl_bytes": len(answer.der),
                    "next_read_from_cache_ms": round(served_s * 1000, 1), "crl_number": served.number}
        finally:
            await lifespan.__aexit__(None, None, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--baseline", default="5000,20000", help="sizes for cryptography's builder ('' to skip)")
    parser.add_argument("--key", default="ECDSA-P256")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--database", action="store_true", help="also the service path on PostgreSQL (100k rows)")
    add_json_flag(parser)
    args = parser.parse_args()
    json_mode(args)
    ca = make_ca(args.key)
    now = datetime.now(UTC).replace(microsecond=0)
    print_json("machine", {**machine(), "key": args.key, "pid": os.getpid()})
    results = []
    for position, size in enumerate(int(s) for s in args.sizes.split(",") if s):
        items = entries(size, now)
        seconds, der = ours(ca, items, now, args.repeat if size <= 200_000 else 1)
        results.append({"entries": size, "build_and_sign_s": round(seconds, 3),
                        "entries_per_s": round(size / seconds), "crl_mb": round(len(der) / 1e6, 1),
                        "target_100k_le_2s": (seconds <= 2.0) if size == 100_000 else None,
                        **check(ca, der, size, with_openssl=position == 0)})
        print_json(f"certctl.pki.crl, {size:,} entries", results[-1])
    speedups = {}
    for size in (int(s) for s in args.baseline.split(",") if s):
        items = entries(size, now)
        theirs = baseline(ca, items, now)
        mine, _ = ours(ca, items, now, args.repeat)
        speedups[size] = round(theirs / mine, 1)
        print_json(f"cryptography builder vs certctl, {size:,} entries", {
            "cryptography_s": round(theirs, 3), "certctl_s": round(mine, 4), "speedup": round(theirs / mine, 1)})
    rows = [result_row(f"CRL build + sign, {r['entries']:,} entries ({r['build_and_sign_s']} s)",
                       throughput=r["entries_per_s"], unit="entries/s") for r in results]
    for size, speedup in speedups.items():
        rows.append(result_row(f"CRL build + sign, {size:,} entries, vs cryptography's builder",
                               baseline=f"cryptography CertificateRevocationListBuilder, {size:,} entries",
                               ratio=speedup))
    if args.database:
        print_json("service path on PostgreSQL", asyncio.run(database_phase(100_000)))
    bench_result(rows)


if __name__ == "__main__":
    main()

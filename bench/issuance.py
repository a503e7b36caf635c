"""Issuance speed: the signing engine against raw `cryptography`, and CSR-to-stored-certificate over HTTP.

    .venv/bin/python bench/issuance.py [--count 3000] [--http-count 6000] [--concurrency 32] [--workers 2]

1. In process (no database): ECDSA P-256 leaves signed by an ECDSA P-256 CA.
   - raw: `cryptography`'s CertificateBuilder with the same extensions, the least a caller can do;
   - certctl: `certctl.pki.leaf.build_leaf` (template, name-constraint check, signing through the
     Signer interface). Both measured in this run on the same keys; target certctl >= 60 % of raw.
2. End to end over HTTP (PostgreSQL, a real `certctl server --workers N`): agents POST CSRs to
   /api/v1/agents/{id}/csr, each for a certificate whose renewal job waits in AwaitingCSR; the
   server checks the CSR against the profile, signs, and commits version + certificate + job +
   audit row before it answers 202. Closed loop with --concurrency connections; reports
   certificates/s, p50/p95/p99, and checks that every 202 left exactly one version and one
   `certificate_issued` audit row. Target >= 500 certificates/s on this 2-core machine.
   Also the CPU per certificate of the server's processes, of the PostgreSQL backends serving the bench
   database, and of this client (CSRs are made before the timed phase; one keep-alive TLS connection per
   loop), with the rate those would allow on this machine's cores if nothing else ran: on a shared,
   loaded machine the CPU figures are the ones to compare.
Uses its own database (certctl_bench_issuance), recreated on each run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

if __package__ in (None, ""):  # run as `python bench/issuance.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    BENCH_KEY,
    Connection,
    add_json_flag,
    bench_result,
    build_request,
    cpu_seconds,
    create_database,
    insecure_tls,
    json_mode,
    machine,
    percentile,
    pg_url,
    print_json,
    result_row,
    running_server,
    use_uvloop,
)
from certctl.domain.enums import ExtendedKeyUsage
from certctl.pki.ca import IssuingCA, PublicationUrls, build_root, ca_name
from certctl.pki.leaf import LeafRequest, build_leaf
from certctl.pki.serials import new_serial
from certctl.pki.signers import SoftwareSigner

DATABASE = "certctl_bench_issuance"


# ---- 1. in process ---------------------------------------------------------------------------------

def in_process(count: int) -> dict[str, Any]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    signer = SoftwareSigner("memory", ca_key)
    now = datetime.now(UTC)
    root = build_root(signer, ca_name("bench root"), now, timedelta(days=3650))
    ca = IssuingCA(id="ica-bench", issuer_id="iss-bench", cert=root, parents=(), signer=signer,
                   urls=PublicationUrls.for_ca("https://pki.example.com", "ica-bench"))
    keys = [ec.generate_private_key(ec.SECP256R1()).public_key() for _ in range(min(count, 500))]
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())

    def raw(i: int) -> x509.Certificate:
        key = keys[i % len(keys)]
        name = f"host{i}.example.com"
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(root.subject).public_key(key).serial_number(new_serial())
            .not_valid_before(now).not_valid_after(now + timedelta(days=90))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
                [x509.UniformResourceIdentifier("https://pki.example.com/crl")], None, None, None)]), critical=False)
            .add_extension(x509.AuthorityInformationAccess([x509.AccessDescription(
                AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier("https://pki.example.com/ocsp"))]),
                critical=False)
            .sign(ca_key, hashes.SHA256())
        )

    def ours(i: int) -> x509.Certificate:
        name = f"host{i}.example.com"
        request = LeafRequest(
            subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), public_key=keys[i % len(keys)],
            sans=(x509.DNSName(name),), ekus=(ExtendedKeyUsage.SERVER_AUTH,), not_before=now,
            not_after=now + timedelta(days=90),
        )
        return build_leaf(ca, request, new_serial())

    rates = {}
    for label, make in (("raw_cryptography", raw), ("certctl_build_leaf", ours)):
        make(0)
        best = 0.0
        for _ in range(3):  # best of three: the machine is shared
            start = time.perf_counter()
            for i in range(count):
                make(i)
            best = max(best, count / (time.perf_counter() - start))
        rates[label] = round(best, 1)
    ratio = rates["certctl_build_leaf"] / rates["raw_cryptography"]
    return {"leaves_per_s": rates, "ratio": round(ratio, 3), "target_ratio": 0.6, "met": ratio >= 0.6}


class DatabaseCpu:
    """CPU used by the PostgreSQL backends serving one database (the server's pooled connections).

    PostgresCpu counts every database, and other work on this shared machine lands in it too; the
    backends connected to the bench's own database are ours alone. WAL writing and checkpoints done by
    the shared background processes are not included (the commit's own WAL flush is, in the backend).
    """

    def __init__(self, database: str) -> None:
        self.database = database
        self.start: dict[int, float] = {}

    async def _snapshot(self) -> dict[int, float]:
        conn = await asyncpg.connect(pg_url("postgres"))
        try:
            pids = [r[0] for r in await conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1",
                                                   self.database)]
        finally:
            await conn.close()
        return {pid: cpu_seconds([pid]) for pid in pids}

    async def begin(self) -> None:
        self.start = await self._snapshot()

    async def used(self) -> float:
        now = await self._snapshot()
        return sum(cpu - self.start.get(pid, 0.0) for pid, cpu in now.items())


# ---- 2. over HTTP ----------------------------------------------------------------------------------

async def seed(url: str, count: int, run: str) -> tuple[str, list[tuple[str, str]]]:
    """An agent, a target, `count` certificates mapped to it, each with a Renewal job in AwaitingCSR."""
    conn = await asyncpg.connect(url)
    now = datetime.now(UTC)
    try:
        await conn.execute("INSERT INTO teams (id, name, description, created_at, updated_at) "
                           "VALUES ($1, $1, '', $2, $2)", f"team-{run}", now)
        await conn.execute("INSERT INTO owners (id, name, email, team_id, created_at, updated_at) "
                           "VALUES ($1, $1, '', $2, $3, $3)", f"owner-{run}", f"team-{run}", now)
        agent = f"agent-{run}"
        await conn.execute("INSERT INTO agents (id, name, hostname, status, registered_at, created_at, updated_at) "
                           "VALUES ($1, $1, 'bench', 'Online', $2, $2, $2)", agent, now)
        await conn.execute("INSERT INTO deployment_targets (id, name, type, agent_id, config, enabled, created_at, "
                           "updated_at) VALUES ($1, $1, 'NGINX', $2, '{}', true, $3, $3)", f"tgt-{run}", agent, now)
        certs = [(f"mc-{run}-{i}", f"h{i}-{run}.example.com") for i in range(count)]
        await conn.copy_records_to_table("managed_certificates", records=[
            (cid, cid, cn, orjson.dumps([cn]).decode(), "bench", f"owner-{run}", f"team-{run}", "iss-local",
             "rp-default", None, "RenewalInProgress", now + timedelta(days=10), "{}", "", now, now)
            for cid, cn in certs
        ], columns=["id", "name", "common_name", "sans", "environment", "owner_id", "team_id", "issuer_id",
                    "renewal_policy_id", "certificate_profile_id", "status", "expires_at", "tags", "source",
                    "created_at", "updated_at"])
        await conn.copy_records_to_table("certificate_target_mappings", records=[
            (cid, f"tgt-{run}", now) for cid, _ in certs], columns=["certificate_id", "target_id", "created_at"])
        await conn.copy_records_to_table("jobs", records=[
            (f"job-{cid}", "Renewal", cid, "AwaitingCSR", 0, 3, now, now, now) for cid, _ in certs
        ], columns=["id", "type", "certificate_id", "status", "attempts", "max_attempts", "scheduled_at",
                    "created_at", "updated_at"])
        # Fresh statistics, as autovacuum would gather soon after a bulk load: plans as on a live system.
        await conn.execute("ANALYZE jobs, managed_certificates, certificate_target_mappings, deployment_targets")
    finally:
        await conn.close()
    return agent, certs


def csrs_for(certs: list[tuple[str, str]]) -> list[bytes]:
    bodies = []
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(64)]
    for i, (cid, cn) in enumerate(certs):
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
               .add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False)
               .sign(keys[i % len(keys)], hashes.SHA256()))
        bodies.append(orjson.dumps({"csr_pem": csr.public_bytes(serialization.Encoding.PEM).decode(),
                                    "certificate_id": cid}))
    return bodies


async def closed_loop(port: int, agent: str, bodies: list[bytes], concurrency: int) -> dict[str, Any]:
    context = insecure_tls()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    queue = list(reversed(bodies))
    path = f"/api/v1/agents/{agent}/csr"

    async def worker() -> None:
        conn = await Connection.open("127.0.0.1", port, context)
        try:
            while queue:
                raw = build_request("POST", path, host="127.0.0.1", key=BENCH_KEY, body=queue.pop())
                start = time.perf_counter()
                status, _ = await conn.request(raw)
                latencies.append((time.perf_counter() - start) * 1000)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            conn.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    values = sorted(latencies)
    return {
        "requests": len(values), "seconds": round(elapsed, 2), "statuses": statuses,
        "certificates_per_s": round(statuses.get(202, 0) / elapsed, 1),
        "p50_ms": round(percentile(values, 50), 2), "p95_ms": round(percentile(values, 95), 2),
        "p99_ms": round(percentile(values, 99), 2),
    }


async def over_http(count: int, concurrency: int, workers: int) -> dict[str, Any]:
    await create_database(DATABASE, recreate=True)
    url = pg_url(DATABASE)
    with running_server(url, port=18447, workers=workers, rate_limit=False, db_conns=12) as server:
        run = uuid.uuid4().hex[:6]
        warm_agent, warm = await seed(url, 300, run + "w")
        agent, certs = await seed(url, count, run)
        warm_bodies, bodies = csrs_for(warm), csrs_for(certs)
        await closed_loop(server.port, warm_agent, warm_bodies, concurrency)  # warm caches, pools, the CA key
        pids = server.pids()
        database_cpu = DatabaseCpu(DATABASE)
        await database_cpu.begin()
        cpu0, client0 = cpu_seconds(pids), time.process_time()
        result = await closed_loop(server.port, agent, bodies, concurrency)
        client_cpu, server_cpu = time.process_time() - client0, cpu_seconds(pids) - cpu0
        pg_cpu = await database_cpu.used()
        per = 1000 / max(1, count)
        result["cpu_ms_per_certificate"] = {
            "server": round(server_cpu * per, 2), "postgresql": round(pg_cpu * per, 2),
            "client": round(client_cpu * per, 2), "total": round((server_cpu + pg_cpu + client_cpu) * per, 2),
        }
        # What the machine's cores allow at that cost, were nothing else running on them.
        total = server_cpu + pg_cpu + client_cpu
        result["cpu_bound_per_s"] = round((os.cpu_count() or 1) * 1000 / max(0.01, total * per), 1)
        result["client_cpu_share"] = round(client_cpu / max(1e-9, total), 3)
        result["load_average"] = os.getloadavg()
        result["rss_mb"] = round(server.rss_mb()[0], 1)
    conn = await asyncpg.connect(url)
    try:
        versions = await conn.fetchval("SELECT count(*) FROM certificate_versions v JOIN jobs j ON j.id = v.job_id "
                                       "WHERE j.status = 'Completed' AND v.certificate_id LIKE $1", f"mc-{run}-%")
        audits = await conn.fetchval("SELECT count(*) FROM audit_events WHERE action = 'certificate_issued' "
                                     "AND resource_id LIKE $1", f"mc-{run}-%")
    finally:
        await conn.close()
    result["stored"] = {"versions_with_completed_job": versions, "certificate_issued_audit_rows": audits,
                        "all_202s_stored": versions == audits == result["statuses"].get(202, 0)}
    result["target_per_s"] = 500
    result["met"] = result["certificates_per_s"] >= 500
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=3000, help="leaves per in-process measurement")
    parser.add_argument("--http-count", type=int, default=6000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--skip-http", action="store_true")
    add_json_flag(parser)
    args = parser.parse_args()
    json_mode(args)
    print_json("setup", {"machine": machine(), "workers": args.workers, "concurrency": args.concurrency})
    local = in_process(args.count)
    print_json("in process: leaf build + sign (ECDSA P-256)", local)
    rows = [result_row("issuance in process: leaf build + sign", throughput=local["leaves_per_s"]["certctl_build_leaf"],
                       unit="certs/s", baseline="cryptography's builder, same extensions (raw)",
                       ratio=local.get("ratio"))]
    if not args.skip_http:
        http = await over_http(args.http_count, args.concurrency, args.workers)
        print_json("over HTTP: CSR in, stored certificate + audit row out", http)
        rows.append(result_row(f"issuance over HTTPS: CSR in, version stored ({args.concurrency} conns)",
                               p50_ms=http["p50_ms"], p95_ms=http["p95_ms"], p99_ms=http["p99_ms"],
                               throughput=http["certificates_per_s"], unit="certs/s", rss_mb=http.get("rss_mb")))
    bench_result(rows)


if __name__ == "__main__":
    use_uvloop()
    asyncio.run(main())

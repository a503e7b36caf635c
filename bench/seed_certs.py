"""Seed a PostgreSQL database with N managed certificates (default 1,000,000) for the benchmarks.

    .venv/bin/python bench/seed_certs.py [--rows 1000000] [--database certctl_bench] [--recreate]

Steps: create the database, migrate it with `certctl db upgrade`, insert the prerequisites
(teams, owners, issuers, renewal policies, profiles, agents, targets), then stream the
certificates and some target mappings with binary COPY (asyncpg `copy_records_to_table`).
Secondary indexes are dropped before the load and rebuilt after it (two at a time, one per core),
foreign-key triggers are skipped for the session (the rows are consistent by construction), and
the table is VACUUM ANALYZEd so the planner and index-only scans see the real data.

Last, the inventory is settled: a real `certctl server` runs on it until its scheduler has nothing left to
catch up on (its CPU falls idle). Seeded rows include ~68,000 renewable certificates inside their renewal window
with no renewal job, a backlog that a running deployment never has; without this step the first
benchmark after a seed would measure that one-off catch-up (renewal jobs created for every one of them)
instead of the API. The time it took is reported as `settle_s`.

Prints rows/s for the COPY phase and the time of each phase.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

if __package__ in (None, ""):  # run as `python bench/seed_certs.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    BENCH_DB,
    add_json_flag,
    bench_result,
    cpu_seconds,
    create_database,
    db_upgrade,
    json_mode,
    pg_url,
    print_json,
    result_row,
    rng,
    running_server,
    use_uvloop,
)

STATUSES = [  # (status, share)
    ("Active", 0.70), ("Expiring", 0.08), ("Expired", 0.05), ("RenewalInProgress", 0.02),
    ("Failed", 0.02), ("Revoked", 0.03), ("Archived", 0.08), ("Pending", 0.02),
]
ENVIRONMENTS = [("production", 0.5), ("staging", 0.25), ("development", 0.2), ("lab", 0.05)]
TEAMS = 40
OWNERS = 400
AGENTS = 100
TARGETS_PER_AGENT = 4
ISSUERS = ["iss-local", "iss-bench-acme", "iss-bench-vault"]
POLICIES = ["rp-default", "rp-bench-short", "rp-bench-manual"]
PROFILES = ["prof-bench-web", "prof-bench-mtls", "prof-bench-high"]
MAPPED_SHARE = 0.10  # one certificate in ten is mapped to one or two targets
CHUNK = 50_000

CERT_COLUMNS = [
    "id", "name", "common_name", "sans", "environment", "owner_id", "team_id", "issuer_id",
    "renewal_policy_id", "certificate_profile_id", "status", "expires_at", "tags", "last_renewal_at",
    "last_deployment_at", "revoked_at", "revocation_reason", "source", "created_at", "updated_at",
]


def _weighted(table: list[tuple[str, float]], count: int, seed: int) -> list[str]:
    r = rng(seed)
    names = [n for n, _ in table]
    weights = [w for _, w in table]
    return r.choices(names, weights, k=count)


async def prerequisites(conn: asyncpg.Connection, now: datetime) -> None:
    at = now - timedelta(days=1200)
    empty = json.dumps({})
    await conn.executemany(
        "INSERT INTO teams (id, name, description, created_at, updated_at) VALUES ($1, $2, '', $3, $3) "
        "ON CONFLICT DO NOTHING",
        [(f"team-b{i:03d}", f"Bench team {i:03d}", at) for i in range(TEAMS)],
    )
    await conn.executemany(
        "INSERT INTO owners (id, name, email, team_id, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $5) "
        "ON CONFLICT DO NOTHING",
        [(f"o-b{i:04d}", f"Owner {i:04d}", f"owner{i:04d}@example.com", f"team-b{i % TEAMS:03d}", at)
         for i in range(OWNERS)],
    )
    await conn.executemany(
        "INSERT INTO issuers (id, name, type, config, enabled, created_at, updated_at) "
        "VALUES ($1, $2, $3, $4::jsonb, true, $5, $5) ON CONFLICT DO NOTHING",
        [("iss-local", "Local CA", "GenericCA", empty, at),
         ("iss-bench-acme", "Bench ACME", "ACME", json.dumps({"directory_url": "https://acme.example.com/dir"}), at),
         ("iss-bench-vault", "Bench Vault", "VaultPKI", json.dumps({"address": "https://vault.example.com"}), at)],
    )
    alert = (json.dumps([30, 14, 7, 0]),
             json.dumps({"informational": ["Email"], "warning": ["Email"], "critical": ["Email"]}),
             json.dumps({"30": "informational", "14": "warning", "7": "warning", "0": "critical"}))
    await conn.executemany(
        "INSERT INTO certificate_profiles (id, name, description, allowed_key_algorithms, max_ttl_seconds, "
        "allowed_ekus, required_san_patterns, required_csr_attributes, created_at, updated_at) "
        "VALUES ($1, $2, '', $3::jsonb, 0, $4::jsonb, '[]'::jsonb, '[]'::jsonb, $5, $5) ON CONFLICT DO NOTHING",
        [(p, p, json.dumps([{"algorithm": "ECDSA", "min_size": 256}]), json.dumps(["serverAuth"]), at)
         for p in PROFILES],
    )
    await conn.executemany(
        "INSERT INTO renewal_policies (id, name, renewal_window_days, auto_renew, max_retries, "
        "retry_interval_seconds, alert_thresholds_days, alert_channels, alert_severity_map, created_at, updated_at) "
        "VALUES ($1, $2, $3, true, 3, 3600, $4::jsonb, $5::jsonb, $6::jsonb, $7, $7) ON CONFLICT DO NOTHING",
        [(p, n, w, *alert, at) for p, n, w in (
            ("rp-default", "Default", 30), ("rp-bench-short", "Bench short", 7),
            ("rp-bench-manual", "Bench manual", 45))],
    )
    await conn.executemany(
        "INSERT INTO agents (id, name, hostname, status, last_heartbeat_at, registered_at, os, architecture, "
        "ip_address, version, created_at, updated_at) VALUES ($1, $2, $3, 'Online', $4, $5, 'linux', 'amd64', "
        "$6, '1.0.0', $5, $5) ON CONFLICT DO NOTHING",
        [(f"agent-b{i:03d}", f"bench-{i:03d}", f"bench-{i:03d}.example.com", now, at,
          f"198.51.100.{i % 250}") for i in range(AGENTS)],
    )
    await conn.executemany(
        "INSERT INTO deployment_targets (id, name, type, agent_id, config, created_at, updated_at) "
        "VALUES ($1, $2, 'NGINX', $3, $4::jsonb, $5, $5) ON CONFLICT DO NOTHING",
        [(f"target-b{a:03d}-{t}", f"nginx-{t}", f"agent-b{a:03d}", empty, at)
         for a in range(AGENTS) for t in range(TARGETS_PER_AGENT)],
    )


def certificate_rows(start: int, count: int, total: int, now: datetime) -> Iterator[tuple[Any, ...]]:
    """Rows for certificates start..start+count; deterministic for a given index."""
    r = rng(start)
    statuses = _weighted(STATUSES, count, start + 1)
    environments = _weighted(ENVIRONMENTS, count, start + 2)
    span = timedelta(days=3 * 365).total_seconds()
    origin = now - timedelta(days=3 * 365)
    for offset in range(count):
        n = start + offset
        status = statuses[offset]
        env = environments[offset]
        created = origin + timedelta(seconds=span * n / total + r.uniform(0, 30))
        if status == "Pending":
            expires = None
        elif status in ("Expiring", "RenewalInProgress", "Failed"):
            expires = now + timedelta(days=r.uniform(0.5, 30))
        elif status == "Expired":
            expires = now - timedelta(days=r.uniform(1, 300))
        elif status == "Archived":
            expires = now + timedelta(days=r.uniform(-400, 300))
        else:
            expires = now + timedelta(days=r.uniform(31, 397))
        if expires is not None and expires < created:
            created = expires - timedelta(days=90)
        owner = r.randrange(OWNERS)
        host = f"svc{n:07d}.{env[:4]}.example.com"
        sans = json.dumps([host])
        tags = json.dumps({"app": f"app-{n % 997}", "cost_center": f"cc-{n % 89:02d}"})
        revoked = now - timedelta(days=r.uniform(1, 200)) if status == "Revoked" else None
        yield (
            f"mc-b{n:07d}", f"bench-{n:07d}", host, sans, env, f"o-b{owner:04d}", f"team-b{owner % TEAMS:03d}",
            ISSUERS[n % 3], POLICIES[n % 3], PROFILES[n % 3] if n % 4 else None, status, expires, tags,
            None, None, revoked, "keyCompromise" if revoked else None, "", created, created,
        )


def mapping_rows(start: int, count: int, now: datetime) -> Iterator[tuple[str, str, datetime]]:
    r = rng(start + 3)
    total_targets = AGENTS * TARGETS_PER_AGENT
    for n in range(start, start + count):
        if r.random() >= MAPPED_SHARE:
            continue
        first = r.randrange(total_targets)
        picks = {first, (first + 1) % total_targets} if r.random() < 0.3 else {first}
        for t in sorted(picks):
            yield f"mc-b{n:07d}", f"target-b{t // TARGETS_PER_AGENT:03d}-{t % TARGETS_PER_AGENT}", now


async def secondary_indexes(conn: asyncpg.Connection, table: str) -> list[tuple[str, str]]:
    """Indexes of `table` that back no constraint (those can be dropped and rebuilt freely)."""
    rows = await conn.fetch(
        "SELECT i.relname, pg_get_indexdef(i.oid) AS def FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
        "WHERE x.indrelid = $1::regclass AND NOT EXISTS "
        "(SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)",
        table,
    )
    return [(r["relname"], r["def"]) for r in rows]


async def rebuild(url: str, definitions: list[str]) -> None:
    """Build indexes two at a time (one per core); each connection gets more maintenance memory."""
    queue = list(definitions)

    async def worker() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("SET maintenance_work_mem = '512MB'")
            while queue:
                await conn.execute(queue.pop(0))
        finally:
            await conn.close()

    await asyncio.gather(worker(), worker())


def settle(url: str, *, idle_cpu_share: float = 0.05, window: float = 5.0, limit: float = 1800.0) -> bool:
    """Run a server on the database until its first renewal scan has finished (its "renewal scan" log line)
    and then a `window` passes in which it used < `idle_cpu_share` of a core (the other loops' catch-up).

    CPU alone is not enough: the scan waits on outside CAs (ARI lookups) with the CPU idle.
    """
    with running_server(url, workers=1, extra_env={"CERTCTL_LOG_LEVEL": "info"}) as server:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and '"msg":"renewal scan"' not in server.log_path.read_text():
            time.sleep(window)
        before = cpu_seconds(server.pids())
        while time.monotonic() < deadline:
            time.sleep(window)
            now = cpu_seconds(server.pids())
            if now - before < idle_cpu_share * window:
                return True
            before = now
    return False


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--database", default=BENCH_DB)
    parser.add_argument("--recreate", action="store_true", help="drop and recreate the database first")
    parser.add_argument("--no-settle", action="store_true",
                        help="skip the settle step (its server's first boot makes the local CA in a throwaway data "
                             "directory: a script that needs the CA's key in its own data directory passes this)")
    add_json_flag(parser)
    args = parser.parse_args()
    json_mode(args)

    url = pg_url(args.database)
    phases: dict[str, float] = {}
    t0 = time.perf_counter()
    await create_database(args.database, recreate=args.recreate)
    db_upgrade(url)
    phases["create+migrate_s"] = time.perf_counter() - t0

    now = datetime.now(UTC).replace(microsecond=0)
    conn = await asyncpg.connect(url)
    try:
        existing = await conn.fetchval("SELECT count(*) FROM managed_certificates")
        if existing:
            raise SystemExit(f"{args.database} already holds {existing} certificates; use --recreate")
        t = time.perf_counter()
        await prerequisites(conn, now)
        phases["prerequisites_s"] = time.perf_counter() - t

        t = time.perf_counter()
        dropped: list[str] = []
        for table in ("managed_certificates", "certificate_target_mappings"):
            for name, definition in await secondary_indexes(conn, table):
                await conn.execute(f'DROP INDEX "{name}"')
                dropped.append(definition)
        # FK triggers off for this session only: every reference above exists by construction.
        await conn.execute("SET session_replication_role = replica")
        await conn.execute("SET synchronous_commit = off")
        copied = mapped = 0
        for start in range(0, args.rows, CHUNK):
            count = min(CHUNK, args.rows - start)
            await conn.copy_records_to_table(
                "managed_certificates", records=certificate_rows(start, count, args.rows, now), columns=CERT_COLUMNS
            )
            links = list(mapping_rows(start, count, now))
            await conn.copy_records_to_table(
                "certificate_target_mappings", records=links, columns=["certificate_id", "target_id", "created_at"]
            )
            copied += count
            mapped += len(links)
        copy_seconds = time.perf_counter() - t
        phases["copy_s"] = copy_seconds
        await conn.execute("RESET session_replication_role")

        t = time.perf_counter()
        await rebuild(url, dropped)
        phases["index_rebuild_s"] = time.perf_counter() - t
        t = time.perf_counter()
        await conn.execute("VACUUM (ANALYZE) managed_certificates")
        await conn.execute("VACUUM (ANALYZE) certificate_target_mappings")
        await conn.execute("ANALYZE")
        phases["vacuum_analyze_s"] = time.perf_counter() - t
        settled = False
        if not args.no_settle:
            t = time.perf_counter()
            settled = await asyncio.to_thread(settle, url)
            phases["settle_s"] = time.perf_counter() - t
            await conn.execute("VACUUM (ANALYZE)")
        jobs = await conn.fetchval("SELECT count(*) FROM jobs")
        size = await conn.fetchval("SELECT pg_size_pretty(pg_total_relation_size('managed_certificates'))")
    finally:
        await conn.close()
    total = time.perf_counter() - t0
    print_json("seed_certs", {
        "database": args.database,
        "certificates": copied,
        "target_mappings": mapped,
        "copy_rows_per_s": round((copied + mapped) / copy_seconds),
        "certificates_per_s_end_to_end": round(copied / total),
        "indexes_rebuilt": len(dropped),
        "settled": settled,
        "jobs_after_settle": jobs,
        "phases_s": {k: round(v, 1) for k, v in phases.items()},
        "total_s": round(total, 1),
        "managed_certificates_size": size,
    })
    bench_result([result_row(f"seed: {copied:,} certificates by COPY ({round(total, 1)} s end to end)",
                             throughput=round(copied / total), unit="certs/s")])


if __name__ == "__main__":
    use_uvloop()
    asyncio.run(main())

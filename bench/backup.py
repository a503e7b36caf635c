"""`certctl backup create | verify | restore` on a 1,000,000-certificate PostgreSQL database.

    .venv/bin/python bench/backup.py [--rows 1000000] [--database certctl_bench_backup] [--reseed] [--skip-restore]

Steps: seed the database with bench/seed_certs.py unless it already holds --rows certificates (--reseed forces
it); run first boot once on it (`prepare_server`: the local CA's root and its key in a data directory, so that
verify has a CA to test-sign with, plus a few revocations); then, as an operator would, the real commands in
child processes:

1. `certctl backup create -o FILE`  (pg_dump of an exported REPEATABLE READ snapshot, scrypt + AES-256-GCM)
2. `certctl backup verify FILE`     (decrypt, checksums, pg_restore --jobs 2 into a throwaway database on the same
                                     server, row counts, migrations, CA test signatures; target < 120 s)
3. `certctl backup restore FILE`    into a new empty database (one transaction), unless --skip-restore

Prints wall seconds, peak RSS (of the certctl process: the archive is streamed, so it must not grow with the
database), archive size, and the database's own size for scale.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    CONFIG_KEY,
    REPO,
    add_json_flag,
    bench_result,
    certctl_command,
    create_database,
    json_mode,
    machine,
    pg_url,
    print_json,
    result_row,
)

PASSPHRASE = "bench-backup-passphrase-0123456789"


async def certificate_count(url: str) -> int:
    try:
        conn = await asyncpg.connect(url)
    except asyncpg.InvalidCatalogNameError:
        return -1
    try:
        return int(await conn.fetchval("SELECT count(*) FROM managed_certificates"))
    except asyncpg.UndefinedTableError:
        return -1
    finally:
        await conn.close()


def seed(rows: int, database: str) -> None:
    # No settle: first_boot below must make the local CA with its key in this script's own data directory.
    subprocess.run([sys.executable, str(REPO / "bench" / "seed_certs.py"), "--rows", str(rows), "--database",
                    database, "--recreate", "--no-settle"], check=True, cwd=REPO)


async def first_boot(url: str, data_dir: Path) -> None:
    """The local CA's root and key (as `certctl server` makes them on first start) and 1,000 revocations."""
    from certctl.api.app import prepare_server
    from certctl.config import Settings

    settings = Settings(data_dir=data_dir, database_url=url, config_encryption_key=CONFIG_KEY,
                        extra={"CERTCTL_SCHEDULER_ENABLED": "false"})
    await prepare_server(settings)
    conn = await asyncpg.connect(url)
    try:
        ca_id = await conn.fetchval("SELECT id FROM intermediate_cas WHERE owning_issuer_id = 'iss-local'")
        now = datetime.now(UTC)
        await conn.execute("DELETE FROM certificate_revocations WHERE id LIKE 'rev-bench-%'")
        await conn.executemany(
            "INSERT INTO certificate_revocations (id, issuer_id, ca_id, serial_number, reason, reason_code, "
            "revoked_at, revoked_by, created_at) VALUES ($1, 'iss-local', $2, $3, 'keyCompromise', 1, $4, 'bench', $4)",
            [(f"rev-bench-{i}", ca_id, f"{0x100000 + i:x}", now) for i in range(1000)],
        )
    finally:
        await conn.close()


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS of the child in MB, stdout) of one certctl command (its own rusage, via wait4)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=err)
        _pid, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[1:3])} failed ({proc.returncode}):\n{stdout}\n{stderr}")
    return seconds, usage.ru_maxrss / 1024, stdout


async def database_size(url: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        return str(await conn.fetchval("SELECT pg_size_pretty(pg_database_size(current_database()))"))
    finally:
        await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--database", default="certctl_bench_backup")
    parser.add_argument("--reseed", action="store_true")
    parser.add_argument("--skip-restore", action="store_true")
    add_json_flag(parser)
    args = parser.parse_args()
    json_mode(args)
    url = pg_url(args.database)

    if args.reseed or await certificate_count(url) != args.rows:
        seed(args.rows, args.database)
    work = Path(tempfile.mkdtemp(prefix="certctl-bench-backup-"))
    data_dir = work / "data"
    await first_boot(url, data_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTCTL_")}
    env.update({"CERTCTL_DATABASE_URL": url, "CERTCTL_DATA_DIR": str(data_dir),
                "CERTCTL_BACKUP_PASSPHRASE": PASSPHRASE, "CERTCTL_CONFIG_ENCRYPTION_KEY": CONFIG_KEY})
    archive = work / "certctl.cbk"
    cli = certctl_command()
    figures: dict[str, Any] = {"machine": machine(), "certificates": args.rows,
                               "database_size": await database_size(url)}

    create_s, create_rss, out = timed([*cli, "backup", "create", "-o", str(archive)], env)
    figures["create"] = {"seconds": round(create_s, 1), "peak_rss_mb": round(create_rss), "output": out.strip()}
    figures["archive_bytes"] = archive.stat().st_size
    figures["archive_mb"] = round(archive.stat().st_size / 1e6, 1)

    verify_s, verify_rss, out = timed([*cli, "backup", "verify", str(archive)], env)
    figures["verify"] = {"seconds": round(verify_s, 1), "peak_rss_mb": round(verify_rss),
                         "target_s": 120, "met": verify_s < 120, "output": out.strip().splitlines()}

    if not args.skip_restore:
        target = f"{args.database}_restored"
        await create_database(target, recreate=True)
        restore_env = {**env, "CERTCTL_DATABASE_URL": pg_url(target), "CERTCTL_DATA_DIR": str(work / "restored")}
        restore_s, restore_rss, out = timed([*cli, "backup", "restore", str(archive)], restore_env)
        figures["restore"] = {"seconds": round(restore_s, 1), "peak_rss_mb": round(restore_rss),
                              "restored_certificates": await certificate_count(pg_url(target)),
                              "output": out.strip().splitlines()}
        admin = await asyncpg.connect(pg_url("postgres"))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)')
        finally:
            await admin.close()
    archive.unlink()
    print_json("backup", figures)
    rows = [result_row(f"backup create, {args.rows:,} certificates: {figures['create']['seconds']} s, archive "
                       f"{figures['archive_mb']} MB", rss_mb=figures["create"]["peak_rss_mb"]),
            result_row(f"backup verify, {args.rows:,} certificates: {figures['verify']['seconds']} s",
                       rss_mb=figures["verify"]["peak_rss_mb"], baseline="target 120 s",
                       ratio=round(120 / max(figures["verify"]["seconds"], 0.1), 2))]
    if "restore" in figures:
        rows.append(result_row(f"backup restore, {args.rows:,} certificates: {figures['restore']['seconds']} s",
                               rss_mb=figures["restore"]["peak_rss_mb"]))
    bench_result(rows)


if __name__ == "__main__":
    asyncio.run(main())

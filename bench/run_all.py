"""Every capability's benchmark behind one command, and one table of their figures.

    .venv/bin/python bench/run_all.py            # short runs (a few seconds of load each; ~10-15 min in all)
    .venv/bin/python bench/run_all.py --full     # the scripts' own defaults (docs/operator/performance.md)
    .venv/bin/python bench/run_all.py --only cert_list,replicas --json-out /tmp/bench.json

Runs each bench/*.py script (known ones with short arguments unless --full; scripts added later are picked up and run
with their defaults) with `--json`, one after the other (they share the two cores), and reads the line
`BENCH_RESULT {...}` each prints last. A script that does not know `--json` yet is run without it and its last
`== summary` block is shown. Prints: scenario, p50/p95/p99, throughput, RSS, ratio to its baseline (> 1: certctl
does better than the baseline named in the row). The list benchmarks need the seeded database: it is seeded first
when missing (100,000 certificates in short mode, 1,000,000 with --full).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/run_all.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import BENCH_DB, RESULT_MARK, machine, pg_url

BENCH = Path(__file__).resolve().parent
NOT_BENCHMARKS = {"__init__", "common", "run_all", "seed_certs"}

# script -> (short arguments, full arguments). Order: cheap and independent first.
KNOWN: dict[str, tuple[list[str], list[str]]] = {
    "crl_build": (["--sizes", "100000", "--baseline", "5000", "--repeat", "1"], ["--database"]),
    "telemetry_overhead": (["--requests", "5000", "--rounds", "2"], []),
    "rate_limit": (["--keys", "100000", "--backends", "tokenbuckets,postgresql"], []),
    "cert_list": (["--duration", "5", "--rate", "200", "--skip-explain", "--skip-demo"], ["--skip-explain"]),
    "cert_create": (["--duration", "5", "--rates", "100"], []),
    "replicas": (["--duration", "5", "--rate", "100", "--skip-saturation"], []),
    "issuance": (["--count", "500", "--http-count", "600"], []),
    "ocsp_load": (["--duration", "3", "--warmup", "1", "--skip-openssl"], []),
    "agent_fleet": (["--agents", "1000", "--duration", "10"], []),
    "rollout": (["--agents", "20", "--targets-per-agent", "5", "--poll", "5"], []),
    "acme_orders": (["--clients", "1,10", "--seconds", "3"], []),
    "backup": (["--rows", "100000", "--database", "certctl_bench_backup_small", "--skip-restore"], []),
}
NEEDS_SEED = {"cert_list", "cert_create", "replicas"}


def scripts() -> list[str]:
    present = {p.stem for p in BENCH.glob("*.py")} - NOT_BENCHMARKS
    return [name for name in KNOWN if name in present] + sorted(present - set(KNOWN))


def seeded_rows(database: str) -> int:
    import asyncpg

    async def count() -> int:
        try:
            conn = await asyncpg.connect(pg_url(database))
        except asyncpg.InvalidCatalogNameError:
            return 0
        try:
            return int(await conn.fetchval("SELECT count(*) FROM managed_certificates"))
        except asyncpg.UndefinedTableError:
            return 0
        finally:
            await conn.close()

    return asyncio.run(count())


def run_script(name: str, args: list[str], timeout: float) -> dict[str, Any]:
    command = [sys.executable, str(BENCH / f"{name}.py"), *args]
    started = time.monotonic()
    done = _run([*command, "--json"], timeout)
    if done is not None and done.returncode == 2 and "unrecognized arguments: --json" in done.stderr:
        done = _run(command, timeout)
    seconds = round(time.monotonic() - started, 1)
    if done is None:
        return {"script": name, "args": args, "seconds": seconds, "error": f"timed out after {timeout:g} s"}
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-6:]
        error = f"exit {done.returncode}: " + " | ".join(tail)
        return {"script": name, "args": args, "seconds": seconds, "error": error}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return {"script": name, "args": args, "seconds": seconds, **json.loads(line[len(RESULT_MARK):])}
    return {"script": name, "args": args, "seconds": seconds, "rows": [_fallback_row(name, done.stdout)]}


def _run(command: list[str], timeout: float) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False,
                              cwd=BENCH.parent)
    except subprocess.TimeoutExpired:
        return None


def _fallback_row(name: str, stdout: str) -> dict[str, Any]:
    """A script without --json: the figures of its last `== title` JSON block, where they have the usual names."""
    blocks = re.split(r"^== (.*)$", stdout, flags=re.M)
    last = next((line.strip() for line in reversed(stdout.splitlines()) if line.strip()), "")
    title, payload = (blocks[-2], blocks[-1]) if len(blocks) >= 3 else (f"last line: {last[:90]}", "{}")
    try:
        data = json.loads(payload)
    except ValueError:
        data = {}
    flat = data if isinstance(data, dict) else {}
    return {"scenario": f"{name}: {title} (no --json)", "p50_ms": flat.get("p50_ms"), "p95_ms": flat.get("p95_ms"),
            "p99_ms": flat.get("p99_ms"), "throughput": flat.get("req_per_s") or flat.get("achieved_rate"),
            "unit": "req/s", "rss_mb": flat.get("rss_mb"), "baseline": "", "ratio": None}


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(results: list[dict[str, Any]]) -> str:
    head = ["scenario", "p50 ms", "p95 ms", "p99 ms", "throughput", "RSS MB", "vs baseline"]
    lines = [head]
    for result in results:
        if "error" in result:
            lines.append([f"{result['script']}: FAILED ({result['error'][:140]})", "", "", "", "", "", ""])
            continue
        for row in result.get("rows", []):
            throughput = row.get("throughput")
            ratio = row.get("ratio")
            lines.append([
                str(row.get("scenario", "")), _fmt(row.get("p50_ms")), _fmt(row.get("p95_ms")),
                _fmt(row.get("p99_ms")),
                f"{_fmt(throughput)} {row.get('unit', '')}" if throughput is not None else "-",
                _fmt(row.get("rss_mb"), 0),
                f"{ratio:g}x ({row.get('baseline')})" if ratio is not None else "-",
            ])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = []
    for index, line in enumerate(lines):
        cells = [line[0].ljust(widths[0])] + [cell.rjust(widths[i]) for i, cell in enumerate(line) if i]
        out.append("| " + " | ".join(cells) + " |")
        if index == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="the scripts' default (long) runs")
    parser.add_argument("--only", default="", help="comma-separated script names")
    parser.add_argument("--skip", default="", help="comma-separated script names")
    parser.add_argument("--timeout", type=float, default=0, help="seconds per script (default 900, 3600 with --full)")
    parser.add_argument("--json-out", type=Path, help="also write every result to this file")
    args = parser.parse_args()
    timeout = args.timeout or (3600 if args.full else 900)
    only = {s for s in args.only.split(",") if s}
    skip = {s for s in args.skip.split(",") if s}
    chosen = [s for s in scripts() if (not only or s in only) and s not in skip]
    print(f"machine: {machine()}; mode: {'full' if args.full else 'short'}; scripts: {', '.join(chosen)}", flush=True)

    results: list[dict[str, Any]] = []
    if NEEDS_SEED & set(chosen):
        wanted = 1_000_000 if args.full else 100_000
        have = seeded_rows(BENCH_DB)
        if have < (wanted if args.full else 1000):
            print(f"seeding {BENCH_DB} with {wanted:,} certificates (it holds {have:,})", flush=True)
            results.append(run_script("seed_certs", ["--rows", str(wanted), "--recreate"], timeout))
        else:
            print(f"{BENCH_DB} holds {have:,} certificates: the list figures are at that size", flush=True)

    for name in chosen:
        short, full = KNOWN.get(name, ([], []))
        script_args = full if args.full else short
        print(f"-- {name} {' '.join(script_args)}", flush=True)
        result = run_script(name, script_args, timeout)
        results.append(result)
        print(f"   {result['seconds']} s" + (f", {result['error']}" if "error" in result else ""), flush=True)

    print()
    print(table(results))
    if args.json_out:
        args.json_out.write_text(json.dumps({"machine": machine(), "full": args.full, "results": results}, indent=1))
    if any("error" in r for r in results):
        sys.exit(1)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()

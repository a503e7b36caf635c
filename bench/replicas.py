"""The foundation's list benchmark (bench/cert_list.py's request mix on the seeded database) through haproxy, with
one and with two `certctl server` replicas on one PostgreSQL, then a rolling restart of one replica during an
open-loop run, with the failed requests counted.

    .venv/bin/python bench/seed_certs.py                   # once: the bench database
    .venv/bin/python bench/replicas.py [--duration 15] [--rate 300] [--restart-rate 50] [--skip-saturation]

Each replica is `certctl server` with one worker (so two replicas use what `--workers 2` uses). haproxy (Debian
package, private config, 127.0.0.1) terminates TLS in front and speaks HTTPS to the replicas, checks /ready every
second (three failures take a replica out) and retries a request on the other replica when its server refused the
connection or closed it without an answer (the configuration of docs/operator/high-availability.md). Phases:

1. one replica: wrk saturation (cert_list's Lua mix) and an open loop at --rate;
2. two replicas: the same;
3. rolling restart: two replicas, an open loop at --restart-rate (default 50 req/s, well within what one replica serves
   alone) for max(20, 2 x --duration) s; after a third of it one replica gets SIGTERM (it drains), is started
   again, and rejoins once haproxy sees /ready. Failed requests (transport errors and non-2xx answers) are counted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/replicas.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cert_list import WALK_SHAPES, RssSampler, list_mix, saturate
from bench.common import (
    BENCH_DB,
    Server,
    add_json_flag,
    bench_result,
    cpu_seconds,
    json_mode,
    machine,
    open_loop,
    pg_url,
    print_json,
    result_row,
    running_server,
    seeded_certificates,
    use_uvloop,
)
from bench.common import _descendants as _descendants


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Replica:
    """One `certctl server` (one worker) that can be stopped (SIGTERM, drained) and started again on its port."""

    def __init__(self, name: str, url: str, db_conns: int) -> None:
        self.name = name
        self.url = url
        self.port = free_port()
        self.db_conns = db_conns
        self._cm: Any = None
        self.server: Server | None = None

    def start(self) -> None:
        self._cm = running_server(self.url, port=self.port, workers=1, db_conns=self.db_conns)
        self.server = self._cm.__enter__()

    def stop(self) -> None:
        if self._cm is not None:
            self._cm.__exit__(None, None, None)
        self._cm = None
        self.server = None

    def pids(self) -> list[int]:
        return self.server.pids() if self.server else []


class Group:
    """What cert_list.saturate needs of a server: the address wrk calls and the processes whose CPU counts."""

    def __init__(self, port: int, replicas: list[Replica]) -> None:
        self.port = port
        self.replicas = replicas

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        return [pid for r in self.replicas for pid in r.pids()]

    def busiest_worker(self) -> int:
        return max(self.pids(), key=lambda pid: cpu_seconds([pid]))

    def rss_mb(self) -> tuple[float, list[float]]:
        per = [mb for r in self.replicas if r.server for mb in r.server.rss_mb()[1]]
        return sum(per), per

    def pss_mb(self) -> float:
        return sum(r.server.pss_mb() for r in self.replicas if r.server)


class Haproxy:
    def __init__(self, replicas: list[Replica]) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="certctl-bench-haproxy-"))
        self.port = free_port()
        self.stats_port = free_port()
        self.replicas = replicas
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Haproxy:
        from certctl.pki.selfsigned import ensure_server_certificate

        cert, key = ensure_server_certificate(self.root, "127.0.0.1")
        pem = self.root / "front.pem"
        pem.write_text(cert.read_text() + key.read_text())
        servers = "\n".join(f"  server {r.name} 127.0.0.1:{r.port} ssl verify none check inter 1s fall 3 rise 2"
                            for r in self.replicas)
        config = self.root / "haproxy.cfg"
        config.write_text(f"""global
  maxconn 2048
  nbthread 1
defaults
  mode http
  timeout connect 2s
  timeout check 5s
  timeout client 30s
  timeout server 30s
  timeout http-keep-alive 10s
  retries 3
  option redispatch 1
  retry-on conn-failure empty-response
frontend api
  bind 127.0.0.1:{self.port} ssl crt {pem} ssl-min-ver TLSv1.3
  default_backend certctl
backend certctl
  balance roundrobin
  option httpchk GET /ready
  http-check expect status 200
  http-reuse safe
{servers}
listen stats
  bind 127.0.0.1:{self.stats_port}
  stats enable
  stats uri /stats
""")
        log = (self.root / "haproxy.log").open("wb")
        self.process = subprocess.Popen(["haproxy", "-W", "-db", "-f", str(config)], stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_all_up()
        return self

    def states(self) -> dict[str, str]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.stats_port}/stats;csv", timeout=5) as response:
            text = response.read().decode()
        return {p[1]: p[17] for p in (line.split(",") for line in text.splitlines())
                if len(p) > 17 and p[0] == "certctl" and p[1] not in ("FRONTEND", "BACKEND")}

    def wait_state(self, name: str, up: bool, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if (self.states().get(name) == "UP") == up:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"haproxy never saw {name} {'up' if up else 'down'}")

    def wait_all_up(self) -> None:
        for replica in self.replicas:
            self.wait_state(replica.name, True)

    def pids(self) -> list[int]:
        """The master and its worker (haproxy -W)."""
        return [self.process.pid, *_descendants(self.process.pid)] if self.process else []

    def stop(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)


async def measure(name: str, replicas: list[Replica], args: argparse.Namespace) -> dict[str, Any]:
    proxy = Haproxy(replicas).start()
    group = Group(proxy.port, replicas)
    try:
        with RssSampler(group) as rss:  # type: ignore[arg-type]
            result: dict[str, Any] = {"replicas": len(replicas)}
            saturate(group, database=args.database, duration=3, connections=args.connections,  # type: ignore[arg-type]
                     threads=len(WALK_SHAPES), profile=False)  # warm
            if not args.skip_saturation:
                sat = saturate(group, database=args.database, duration=int(args.duration),  # type: ignore[arg-type]
                               connections=args.connections, threads=len(WALK_SHAPES), profile=False)
                result["saturation"] = {k: sat[k] for k in ("req_per_s", "latency_ms", "non_2xx", "errors",
                                                              "server_cpu_ms_per_req", "postgres_cpu_ms_per_req")}
            cpu0 = cpu_seconds(proxy.pids())
            report = await open_loop(name, port=proxy.port, rate=args.rate, duration=args.duration,
                                     make_request=list_mix(3))
            result["open_loop"] = report.summary()
            result["haproxy_cpu_ms_per_req"] = round(1000 * (cpu_seconds(proxy.pids()) - cpu0)
                                                     / max(1, result["open_loop"]["requests"]), 3)
        result["rss_peak_mb"] = round(rss.peak_mb, 1)
        print_json(name, result)
        return result
    finally:
        proxy.stop()


async def rolling_restart(replicas: list[Replica], args: argparse.Namespace) -> dict[str, Any]:
    proxy = Haproxy(replicas).start()
    duration = max(20.0, 2 * args.duration)
    timeline: dict[str, float] = {}
    victim = replicas[-1]

    def restart() -> None:
        time.sleep(duration / 3)
        timeline["sigterm_s"] = time.monotonic() - started
        victim.stop()  # SIGTERM, waits for the drained exit
        timeline["exited_s"] = time.monotonic() - started
        proxy.wait_state(victim.name, False, timeout=10)
        victim.start()
        timeline["ready_again_s"] = time.monotonic() - started
        proxy.wait_state(victim.name, True)
        timeline["back_in_haproxy_s"] = time.monotonic() - started

    # Every non-2xx answer: when (s from the start), and who gave it (haproxy's own pages are HTML, certctl's JSON).
    refused: list[tuple[float, int, str]] = []
    mix = list_mix(4)

    def make(index: int) -> Any:
        raw, then = mix(index)

        def seen(status: int, body: bytes) -> None:
            if not 200 <= status < 300:
                source = "haproxy" if body.lstrip()[:1] == b"<" else "certctl"
                refused.append((time.monotonic() - started, status, source))
            if then is not None:
                then(status, body)

        return raw, seen

    try:
        started = time.monotonic()
        thread = threading.Thread(target=restart, name="restart")
        thread.start()
        report = await open_loop("rolling restart", port=proxy.port, rate=args.restart_rate, duration=duration,
                                 make_request=make)
        thread.join()
    finally:
        proxy.stop()
    summary = report.summary()
    failed = summary["errors"] + sum(summary["non_2xx"].values())
    window = (timeline.get("sigterm_s", 0.0), timeline.get("back_in_haproxy_s", duration) + 2)
    by_window = {"before_sigterm": 0, "sigterm_to_back_in_haproxy_plus_2s": 0, "after": 0}
    for when, _, _ in refused:
        key = ("before_sigterm" if when < window[0] else
               "sigterm_to_back_in_haproxy_plus_2s" if when <= window[1] else "after")
        by_window[key] += 1
    result = {"open_loop": summary, "restart_timeline_s": {k: round(v, 2) for k, v in timeline.items()},
              "failed_requests": failed, "transport_errors": summary["errors"],
              "non_2xx_by_source": {src: sum(1 for _, _, s in refused if s == src) for src in ("haproxy", "certctl")},
              "non_2xx_by_window": by_window}
    print_json(f"rolling restart of one of two replicas during {duration:g} s at {args.restart_rate:g} req/s", result)
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", default=BENCH_DB)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per load phase")
    parser.add_argument("--rate", type=float, default=300.0, help="open-loop rate, req/s")
    parser.add_argument("--restart-rate", type=float, default=50.0,
                        help="open-loop rate during the rolling restart (below what one replica can serve alone)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--db-conns", type=int, default=16, help="CERTCTL_DATABASE_MAX_CONNS per replica")
    parser.add_argument("--skip-saturation", action="store_true")
    add_json_flag(parser)
    args = parser.parse_args()
    json_mode(args)

    url = pg_url(args.database)
    rows = await seeded_certificates(args.database)
    print_json("setup", {"machine": machine(), "certificates": rows, "duration_s": args.duration, "rate": args.rate})

    replicas = [Replica("r1", url, args.db_conns), Replica("r2", url, args.db_conns)]
    try:
        replicas[0].start()
        one = await measure("one replica behind haproxy", replicas[:1], args)
        replicas[1].start()
        two = await measure("two replicas behind haproxy", replicas, args)
        restart = await rolling_restart(replicas, args)
    finally:
        for replica in replicas:
            replica.stop()

    rows_out = []
    for label, result in (("1 replica", one), ("2 replicas", two)):
        loop = result["open_loop"]
        if "saturation" in result:
            sat = result["saturation"]
            rows_out.append(result_row(f"list via haproxy, {label}: saturation (wrk {args.connections} conns)",
                                       p50_ms=sat["latency_ms"]["p50_ms"], p99_ms=sat["latency_ms"]["p99_ms"],
                                       throughput=sat["req_per_s"], rss_mb=result["rss_peak_mb"],
                                       baseline="1 replica" if label != "1 replica" else "",
                                       ratio=round(sat["req_per_s"] / one["saturation"]["req_per_s"], 2)
                                       if label != "1 replica" and one["saturation"]["req_per_s"] else None))
        rows_out.append(result_row(f"list via haproxy, {label}: open loop {args.rate:g} req/s",
                                   p50_ms=loop["p50_ms"], p95_ms=loop["p95_ms"], p99_ms=loop["p99_ms"],
                                   throughput=loop["achieved_rate"], rss_mb=result["rss_peak_mb"]))
    loop = restart["open_loop"]
    rows_out.append(result_row(f"list via haproxy, rolling restart of 1 of 2 at {args.restart_rate:g} req/s: "
                               f"{restart['failed_requests']} failed "
                               f"of {loop['requests']}", p50_ms=loop["p50_ms"], p95_ms=loop["p95_ms"],
                               p99_ms=loop["p99_ms"], throughput=loop["achieved_rate"]))
    print_json("summary", {"rows": rows_out, "failed_requests_during_restart": restart["failed_requests"]})
    bench_result(rows_out, failed_requests_during_restart=restart["failed_requests"])


if __name__ == "__main__":
    use_uvloop()
    asyncio.run(main())

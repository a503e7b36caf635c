"""The supervisor of `certctl server --workers N`: N worker processes serving one listening socket.

`certctl server` checks the settings, runs first boot, binds the socket (a taken port fails at once, status 3)
and then replaces itself (exec, same PID) with `python -m certctl.api.supervisor`. That process imports the
standard library and the log formatter only: about 16 MB resident, where the command line held 42 MB and the
`multiprocessing` supervisor it used before needed a resource-tracker process of 13 MB more. Each worker is
`python -m certctl.api.worker`, started with the listening socket inherited; it rebuilds its settings from the
environment the command line exported.

Signals, as with uvicorn's own supervisor:
- SIGHUP: the workers are replaced one at a time (new ones load the TLS certificate afresh); each new worker is
  started and has its application running before the old one is told to stop, so the port is always served.
- SIGTERM or SIGINT: every worker gets SIGTERM, finishes its requests and flushes its audit events; the
  supervisor waits for them (SIGKILL after the graceful timeout and 10 s more) and exits 0.
- A worker that exits on its own is started again (after a second, if it lived less than five).
Workers get SIGTERM from the kernel when the supervisor dies (PR_SET_PDEATHSIG): killing the supervisor, even
with SIGKILL, does not leave workers serving on.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from types import FrameType

log = logging.getLogger("certctl.server")

PR_SET_PDEATHSIG = 1
READY_TIMEOUT = 60.0  # seconds a new worker has to start its application during a SIGHUP replacement
QUICK_EXIT = 5.0  # a worker that exits sooner than this after its start is restarted after RESTART_PAUSE
RESTART_PAUSE = 1.0
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: SIGTERM when the supervisor goes away."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Worker:
    def __init__(self, process: subprocess.Popen[bytes], ready_fd: int) -> None:
        self.process = process
        self.ready_fd = ready_fd  # read end: the worker writes one byte once its application has started
        self.started_at = time.monotonic()

    def wait_ready(self, timeout: float) -> bool:
        readable, _, _ = select.select([self.ready_fd], [], [], timeout)
        return bool(readable) and os.read(self.ready_fd, 1) == b"1"

    def close(self) -> None:
        os.close(self.ready_fd)


class Supervisor:
    def __init__(self, fd: int, count: int, grace: float, metrics_dir: str | None) -> None:
        self.fd = fd
        self.count = count
        self.grace = grace
        self.metrics_dir = metrics_dir  # removed on exit: the command line made it for this run
        self.workers: list[Worker] = []
        self.stopping = False
        self.replace = False

    def start_worker(self) -> Worker:
        read_end, write_end = os.pipe()
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module, no shell
            [sys.executable, "-m", "certctl.api.worker", "--fd", str(self.fd), "--ready-fd", str(write_end)],
            pass_fds=(self.fd, write_end), preexec_fn=_die_with_parent,
        )
        os.close(write_end)
        return Worker(process, read_end)

    def on_stop(self, _sig: int, _frame: FrameType | None) -> None:
        self.stopping = True

    def on_hup(self, _sig: int, _frame: FrameType | None) -> None:
        self.replace = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.on_stop)
        signal.signal(signal.SIGINT, self.on_stop)
        signal.signal(signal.SIGHUP, self.on_hup)
        self.workers = [self.start_worker() for _ in range(self.count)]
        try:
            while not self.stopping:
                if self.replace:
                    self.replace = False
                    self.replace_all()
                self.restart_exited()
                time.sleep(0.2)
        finally:
            self.stop_all()
            if self.metrics_dir:
                shutil.rmtree(self.metrics_dir, ignore_errors=True)
        return 0

    def replace_all(self) -> None:
        log.info("replacing workers", extra={"workers": self.count})
        for index, old in enumerate(list(self.workers)):
            if self.stopping:
                return
            new = self.start_worker()
            if not new.wait_ready(READY_TIMEOUT):
                log.error("a new worker did not start; keeping the old one", extra={"pid": new.process.pid})
                self._terminate([new])
                continue
            self.workers[index] = new
            self._terminate([old])

    def restart_exited(self) -> None:
        for index, worker in enumerate(self.workers):
            code = worker.process.poll()
            if code is None or self.stopping:
                continue
            lived = time.monotonic() - worker.started_at
            log.warning("worker exited; starting another", extra={"pid": worker.process.pid, "status": code})
            worker.close()
            if lived < QUICK_EXIT:
                time.sleep(RESTART_PAUSE)  # a worker that cannot start must not spin
            self.workers[index] = self.start_worker()

    def stop_all(self) -> None:
        self._terminate(self.workers)
        self.workers = []

    def _terminate(self, workers: list[Worker]) -> None:
        for worker in workers:
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace + 10.0
        for worker in workers:
            try:
                worker.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker did not stop in time; killing it", extra={"pid": worker.process.pid})
                worker.process.kill()
                worker.process.wait()
            worker.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m certctl.api.supervisor")
    parser.add_argument("--fd", type=int, required=True, help="the listening socket, inherited")
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--grace", type=float, default=30.0, help="seconds a worker has to stop gracefully")
    parser.add_argument("--metrics-dir", default=None, help="remove this directory on exit")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--log-format", default="json")
    args = parser.parse_args(argv)
    from certctl.logs import configure_logging

    configure_logging(args.log_level, args.log_format)
    return Supervisor(args.fd, args.workers, args.grace, args.metrics_dir).run()


if __name__ == "__main__":
    sys.exit(main())

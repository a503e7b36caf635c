"""A worker process of `certctl server --workers N` (started by certctl.api.supervisor), and its app factory.

Kept apart from `certctl.cli` so that a worker loads the application and nothing of the command line
(typer, click's and rich's modules: several MB of resident memory in every worker).

    python -m certctl.api.worker --fd N [--ready-fd M]

serves the inherited listening socket N; once the application has started it writes one byte to M, so that the
supervisor replacing workers on SIGHUP stops an old one only when its successor serves.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

import uvicorn
from fastapi import FastAPI

from certctl.api.app import create_app
from certctl.api.serving import server_config
from certctl.config import Settings
from certctl.logs import configure_logging


def worker_app() -> FastAPI:
    """Each worker reads the settings the command line exported to the environment."""
    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings, prepare=False, server_process=True)


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, ready_fd: int | None) -> None:
        super().__init__(config)
        self.ready_fd = ready_fd

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.ready_fd is not None and self.started:
            os.write(self.ready_fd, b"1")
            os.close(self.ready_fd)
            self.ready_fd = None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m certctl.api.worker")
    parser.add_argument("--fd", type=int, required=True, help="the listening socket, inherited")
    parser.add_argument("--ready-fd", type=int, default=None, help="written to once the application has started")
    args = parser.parse_args(argv)
    listening = socket.socket(fileno=args.fd)
    settings = Settings.from_env()
    server = _Server(server_config(settings, "certctl.api.worker:worker_app", factory=True), args.ready_fd)
    server.run(sockets=[listening])
    return 0 if server.started else 3


if __name__ == "__main__":
    sys.exit(main())

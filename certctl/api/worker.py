"""The app factory that each `certctl server --workers N` worker process imports.

Kept apart from `certctl.cli` so that a worker loads the application and nothing of the command line
(typer, click's and rich's modules: several MB of resident memory in every worker).
"""

from __future__ import annotations

from fastapi import FastAPI

from certctl.api.app import create_app
from certctl.config import Settings
from certctl.logs import configure_logging


def worker_app() -> FastAPI:
    """Each worker reads the settings the supervisor exported to the environment."""
    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings, prepare=False, server_process=True)

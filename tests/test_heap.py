"""A server process tunes its garbage collector once its application has started (certctl.api.heap); an app built
without `server_process` (tests, tools) leaves the collector alone. Each case runs in a fresh interpreter: a frozen
heap cannot be undone for the rest of a process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import asyncio, gc, sys
from pathlib import Path
from certctl.api.app import create_app
from certctl.config import NamedKey, Settings

async def main(server_process: bool) -> None:
    data = Path(sys.argv[2])
    settings = Settings(data_dir=data, database_url=f"sqlite:///{data}/certctl.db",
                        api_keys=(NamedKey("admin", "heap-test-key-0123456789abcdef", True),),
                        extra={"CERTCTL_SCHEDULER_ENABLED": "false"}).validated()
    app = create_app(settings, server_process=server_process)
    async with app.router.lifespan_context(app):
        print(gc.get_freeze_count(), gc.get_threshold()[0])

asyncio.run(main(sys.argv[1] == "server"))
"""


def _frozen_and_threshold(kind: str, tmp_path: Path) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", SCRIPT, kind, str(tmp_path)], capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    return int(out[0]), int(out[1])


def test_a_server_process_freezes_its_startup_heap(tmp_path: Path) -> None:
    frozen, young = _frozen_and_threshold("server", tmp_path)
    assert frozen > 50_000  # the start-up objects: modules, metadata, routes, schemas
    assert young == 5000


def test_an_app_in_a_test_process_leaves_the_collector_alone(tmp_path: Path) -> None:
    frozen, young = _frozen_and_threshold("library", tmp_path)
    assert (frozen, young) == (0, 700)

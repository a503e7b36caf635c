"""What every service needs: the database, the clock, settings and the config sealer."""

from __future__ import annotations

from dataclasses import dataclass

from certctl.config import Settings
from certctl.domain.clock import Clock
from certctl.pki.sealing import ConfigSealer
from certctl.store.database import Database


@dataclass
class ServiceContext:
    db: Database
    clock: Clock
    settings: Settings
    sealer: ConfigSealer

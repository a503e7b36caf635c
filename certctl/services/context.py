"""What every service needs: the database, the clock, settings, the config sealer, and the CA key signers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from certctl.config import Settings
from certctl.domain.clock import Clock
from certctl.pki.sealing import ConfigSealer
from certctl.pki.signers import SignerRegistry
from certctl.store.database import Database


@dataclass
class ServiceContext:
    db: Database
    clock: Clock
    settings: Settings
    sealer: ConfigSealer
    _signers: SignerRegistry | None = field(default=None, repr=False)
    # Set by the app when a scheduler runs in this process: wakes its job processor.
    on_jobs_queued: Callable[[], None] | None = field(default=None, repr=False)

    def jobs_queued(self) -> None:
        """Call after committing new Pending issuing jobs, so they run now rather than at the next tick."""
        if self.on_jobs_queued is not None:
            self.on_jobs_queued()

    @property
    def signers(self) -> SignerRegistry:
        """Built on first use from CERTCTL_SIGNER_DRIVER and friends (a bad value fails at start, see first_boot)."""
        if self._signers is None:
            from certctl.pki.signers.factory import build_signer_registry

            ca_key = self.settings.extra.get("CERTCTL_CA_KEY_PATH")
            self._signers = build_signer_registry(
                data_dir=self.settings.data_dir, env=self.settings.extra,
                allowed_files=[Path(ca_key)] if ca_key else [],
            )
        return self._signers

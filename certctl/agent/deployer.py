"""Runs one deployment job on this host: the target's connector (validated config, defaults applied) over
the agent's deploy engine (atomic writes, config test, reload, TLS verification, rollback)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from certctl.agent.deploy import DeployEngine
from certctl.connectors.targets.base import DeployRequest
from certctl.connectors.targets.registry import create_connector
from certctl.domain.errors import CertctlError


class TargetDeployer:
    def __init__(self, engine: DeployEngine) -> None:
        self.engine = engine

    @classmethod
    def for_state_dir(cls, state_dir: Path) -> TargetDeployer:
        return cls(DeployEngine(state_dir))

    async def recover(self) -> list[str]:
        """At start: finish undoing any deployment a crash interrupted (all-old files, reloaded)."""
        return await self.engine.recover()

    async def __call__(
        self, target_type: str, target_config: dict[str, Any], *, cert_pem: str, chain_pem: str, key_pem: str,
        certificate_id: str, job_id: str, dry_run: bool = False,
    ) -> dict[str, Any]:
        try:
            connector = create_connector(target_type, target_config, runner=self.engine)
        except CertctlError as exc:  # unknown type, or a config the connector refuses
            return {"success": False, "status": "failed", "changed": False, "message": exc.message}
        request = DeployRequest(cert_pem=cert_pem, chain_pem=chain_pem, key_pem=key_pem,
                                certificate_id=certificate_id, job_id=job_id)
        result = await connector.deploy(request, dry_run=dry_run)
        return result.to_dict()

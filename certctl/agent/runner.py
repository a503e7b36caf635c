"""The agent's loop: enrol once, heartbeat, poll for work, answer CSR jobs, run deployments, back off.

- Enrollment: with `CERTCTL_AGENT_BOOTSTRAP_TOKEN` and no credential yet, the agent registers itself and
  keeps the key the server returns (0600 in its state directory); later runs use that key.
- CSR jobs: the key is made here (ECDSA P-256), filed by its public key, and only the CSR leaves the host.
  A restart mid-job sends a CSR for the same key again.
- Deployment jobs: reported Running, the chain fetched, the matching local key found, the target's
  connector run (atomic write, test, reload, verify, rollback), and the result reported.
- Discovery: the configured directories are scanned at start and every `discovery_interval` (6 h), and the
  certificates found (never keys) are reported for triage on the server.
- Trouble: while the server is unreachable, waits grow exponentially with jitter up to `max_backoff`;
  a 410 means this agent was retired: the agent records it and exits for good.
Private keys never appear in a log line.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from cryptography import x509

from certctl.agent.client import Refused, Retired, ServerClient, Unreachable
from certctl.agent.config import AgentConfig
from certctl.agent.keystore import KeyStore, build_csr
from certctl.agent.state import AgentState
from certctl.connectors.discovery.filesystem import scan_directories
from certctl.observability.calls import target_call
from certctl.pki.export import pem_parts

log = logging.getLogger("certctl.agent")


class Deployer(Protocol):
    """Runs one deployment on this host (see certctl.agent.deployer)."""

    async def __call__(
        self, target_type: str, target_config: dict[str, Any], *, cert_pem: str, chain_pem: str, key_pem: str,
        certificate_id: str, job_id: str, dry_run: bool = False,
    ) -> dict[str, Any]: ...


class AgentRunner:
    def __init__(
        self,
        config: AgentConfig,
        *,
        client: ServerClient | None = None,
        deployer: Deployer | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.state = AgentState.load(config.state_dir)
        self.keys = KeyStore(config.key_dir)
        self.client = client or ServerClient.connect(
            config.server_url, config.ca_bundle, self._token, config.request_timeout)
        if client is not None:
            client.token_source = self._token
        self.deployer = deployer
        self.sleep = sleep
        self.monotonic = monotonic
        self.failures = 0
        self._last_heartbeat: float | None = None
        self._last_discovery: float | None = None

    def _token(self) -> str | None:
        return self.state.credential or self.config.api_key

    @property
    def agent_id(self) -> str:
        agent_id = self.state.agent_id or self.config.agent_id
        if agent_id is None:
            raise RuntimeError("the agent has no id yet (not enrolled)")
        return agent_id

    # ---- the loop -------------------------------------------------------------------------------
    async def run(self, *, stop: asyncio.Event | None = None) -> int:
        """Until stopped (0) or retired (0, and recorded so a restart does not try again)."""
        stop = stop or asyncio.Event()
        if self.state.retired:
            log.error("this agent was retired by the server; remove it or enrol it again")
            return 0
        recover = getattr(self.deployer, "recover", None)
        if recover is not None:
            for action in await recover():  # a deployment cut short by a crash is rolled back before new work
                log.warning("recovered an interrupted deployment", extra={"action": action})
        while not stop.is_set():
            try:
                await self.run_once()
            except Retired:
                return self._retired()
            except Unreachable as exc:
                self.failures += 1
                wait = self.backoff()
                log.warning("server unreachable; waiting", extra={"error": str(exc), "wait_s": round(wait, 1),
                                                                  "failures": self.failures})
                await self._wait(stop, wait)
                continue
            self.failures = 0
            await self._wait(stop, self.config.poll_interval)
        return 0

    async def run_once(self) -> None:
        await self.enrol()
        now = self.monotonic()
        if self._last_heartbeat is None or now - self._last_heartbeat >= self.config.heartbeat_interval:
            await self.client.heartbeat(self.agent_id, self.config.hostname)
            self._last_heartbeat = now
        for item in await self.client.work(self.agent_id):
            await self.handle(item)
        if self.config.discovery_dirs and (
            self._last_discovery is None or now - self._last_discovery >= self.config.discovery_interval
        ):
            await self.discover()
            self._last_discovery = now

    async def discover(self) -> int:
        """Scan the discovery directories and report what is there (certificates only, never keys)."""
        scan = await asyncio.to_thread(scan_directories, self.config.discovery_dirs)
        for body in scan.report_bodies(self.agent_id):
            await self.client.discoveries(self.agent_id, body)
        log.info("discovery reported", extra={"certificates": len(scan.certificates), "errors": len(scan.errors)})
        return len(scan.certificates)

    def backoff(self) -> float:
        """poll interval x 2^(failures-1), ±20 % jitter, at most `max_backoff`."""
        base = self.config.poll_interval * (2 ** min(self.failures - 1, 16))
        return float(min(base * random.uniform(0.8, 1.2), self.config.max_backoff))

    async def _wait(self, stop: asyncio.Event, seconds: float) -> None:
        waiter = asyncio.ensure_future(stop.wait())
        sleeper = asyncio.ensure_future(self.sleep(seconds))
        try:
            await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (waiter, sleeper):
                task.cancel()

    def _retired(self) -> int:
        self.state.retired = True
        self.state.save()
        log.error("the server retired this agent; exiting")
        return 0

    async def dry_run(self) -> list[dict[str, Any]]:
        """Every pending deployment of this agent checked against its target, nothing changed or reported."""
        await self.enrol()
        results = []
        for item in await self.client.work(self.agent_id):
            if item.get("type") == "Deployment" and item.get("status") == "Pending":
                result = await self.deploy(item, dry_run=True)
                results.append({"job_id": item["id"], "target_id": item.get("target_id"), **result})
        return results

    # ---- enrollment -----------------------------------------------------------------------------
    async def enrol(self) -> None:
        if self.state.credential is not None or self.config.api_key is not None:
            if self.state.agent_id is None and self.config.agent_id is not None:
                self.state.agent_id = self.config.agent_id
                self.state.save()
            return
        if self.config.bootstrap_token is None:
            raise RuntimeError("no credential and no bootstrap token")
        name = self.config.agent_name or self.config.hostname
        registered = await self.client.register(self.config.bootstrap_token, name, self.config.hostname)
        self.state.save_credential(registered["api_key"])
        self.state.agent_id = registered["id"]
        self.state.save()
        log.info("enrolled", extra={"agent_id": registered["id"]})

    # ---- jobs -----------------------------------------------------------------------------------
    async def handle(self, item: dict[str, Any]) -> None:
        try:
            if item.get("status") == "AwaitingCSR":
                await self.answer_csr(item)
            elif item.get("type") == "Deployment":
                await self.deploy(item)
        except Refused as exc:
            log.warning("job refused by the server", extra={"job_id": item.get("id"), "error": str(exc)[:500]})

    async def answer_csr(self, item: dict[str, Any]) -> None:
        certificate_id, job_id = str(item["certificate_id"]), str(item["id"])
        key = self.keys.pending_key(certificate_id, job_id)
        csr_pem = build_csr(key, str(item.get("common_name") or ""), list(item.get("sans") or []))
        result = await self.client.submit_csr(self.agent_id, certificate_id, job_id, csr_pem)
        self.keys.finish_job(certificate_id, job_id)
        log.info("CSR answered", extra={"job_id": job_id, "certificate_id": certificate_id,
                                        "job_status": result.get("job_status"), "serial": result.get("serial_number")})

    async def deploy(self, item: dict[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
        job_id, certificate_id = str(item["id"]), str(item["certificate_id"])
        if not dry_run:
            await self.client.report(self.agent_id, job_id, {"status": "Running"})
        try:
            result = await self._deploy(item, dry_run=dry_run)
        except Exception as exc:  # a connector failure is the job's failure, never the agent's
            log.warning("deployment failed", extra={"job_id": job_id, "error": str(exc)})
            result = {"success": False, "message": f"{exc.__class__.__name__}: {exc}"}
        if not dry_run:
            body: dict[str, Any] = {
                "status": "Completed" if result.get("success") else "Failed",
                "error": None if result.get("success") else str(result.get("message") or "deployment failed"),
                "deployment_result": {k: v for k, v in result.items() if k != "verification"},
            }
            if isinstance(result.get("verification"), dict):
                body["verification"] = result["verification"]
            await self.client.report(self.agent_id, job_id, body)
        log.info("deployment finished", extra={"job_id": job_id, "certificate_id": certificate_id,
                                               "success": result.get("success"), "changed": result.get("changed")})
        return result

    async def _deploy(self, item: dict[str, Any], *, dry_run: bool) -> dict[str, Any]:
        if self.deployer is None:
            return {"success": False, "message": "this agent has no deployment connectors"}
        certificate_id = str(item["certificate_id"])
        picked = await self.client.certificate(self.agent_id, certificate_id)
        parts = pem_parts(picked["certificate_pem"])  # leaf first, then the chain
        leaf = x509.load_pem_x509_certificate(parts.cert_pem.encode())
        key_pem = self.keys.key_pem_for(certificate_id, leaf)
        if key_pem is None:
            return {"success": False,
                    "message": f"no private key on this host matches certificate '{certificate_id}' "
                               f"(serial {picked.get('serial_number')}); it was not made by this agent"}
        target_type = str(item.get("target_type") or "")
        with target_call(target_type, "dry_run" if dry_run else "deploy", job_id=str(item["id"]),
                         target_id=item.get("target_id"), certificate_id=certificate_id):
            return await self.deployer(
                target_type, dict(item.get("target_config") or {}), cert_pem=parts.cert_pem,
                chain_pem=parts.chain_pem, key_pem=key_pem, certificate_id=certificate_id,
                job_id=str(item["id"]), dry_run=dry_run,
            )

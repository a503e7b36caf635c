"""The agent's side of the REST API: typed calls, and the three ways a call can go wrong for an agent.

`Retired` (410: the server retired this agent, stop for good), `Unreachable` (network trouble or a 5xx:
back off and try again), and `Refused` (a 4xx: this request will not work as sent; report, don't retry).
"""

from __future__ import annotations

import platform
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from certctl import __version__


class AgentError(Exception):
    pass


class Retired(AgentError):
    """The server answered 410: this agent was retired."""


class Unreachable(AgentError):
    """The server could not be reached, or failed (5xx, 429): try again later."""


class Refused(AgentError):
    """The server refused this request (4xx)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


def tls_context(ca_bundle: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_3  # the server speaks TLS 1.3 only
    return context


class ServerClient:
    def __init__(self, http: httpx.AsyncClient, token_source: Callable[[], str | None]) -> None:
        self.http = http
        self.token_source = token_source

    @classmethod
    def connect(
        cls, base_url: str, ca_bundle: Path | None, token_source: Callable[[], str | None], timeout: float
    ) -> ServerClient:
        http = httpx.AsyncClient(base_url=base_url, verify=tls_context(ca_bundle), timeout=timeout,
                                 headers={"User-Agent": f"certctl-agent/{__version__}"})
        return cls(http, token_source)

    async def close(self) -> None:
        await self.http.aclose()

    async def _call(self, method: str, path: str, *, json: Any = None, token: str | None = None) -> Any:
        bearer = token if token is not None else self.token_source()
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        try:
            response = await self.http.request(method, path, json=json, headers=headers)
        except httpx.HTTPError as exc:
            raise Unreachable(f"{method} {path}: {exc.__class__.__name__}") from None
        if response.status_code == 410:
            raise Retired(_message(response))
        if response.status_code >= 500 or response.status_code == 429:
            raise Unreachable(f"{method} {path}: {response.status_code} {_message(response)}")
        if response.status_code >= 400:
            raise Refused(response.status_code, _message(response))
        return response.json() if response.content else {}

    async def register(self, bootstrap_token: str, name: str, hostname: str) -> dict[str, Any]:
        body = {"name": name, "hostname": hostname, "os": platform.system().lower(),
                "architecture": platform.machine().lower(), "version": __version__}
        result: dict[str, Any] = await self._call("POST", "/api/v1/agents", json=body, token=bootstrap_token)
        return result

    async def heartbeat(self, agent_id: str, hostname: str) -> None:
        await self._call("POST", f"/api/v1/agents/{agent_id}/heartbeat", json={
            "version": __version__, "hostname": hostname, "os": platform.system().lower(),
            "architecture": platform.machine().lower(),
        })

    async def work(self, agent_id: str) -> list[dict[str, Any]]:
        result = await self._call("GET", f"/api/v1/agents/{agent_id}/work")
        jobs: list[dict[str, Any]] = result.get("jobs", [])
        return jobs

    async def submit_csr(self, agent_id: str, certificate_id: str, job_id: str, csr_pem: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("POST", f"/api/v1/agents/{agent_id}/csr", json={
            "csr_pem": csr_pem, "certificate_id": certificate_id, "job_id": job_id})
        return result

    async def certificate(self, agent_id: str, certificate_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", f"/api/v1/agents/{agent_id}/certificates/{certificate_id}")
        return result

    async def discoveries(self, agent_id: str, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("POST", f"/api/v1/agents/{agent_id}/discoveries", json=body)
        return result

    async def report(self, agent_id: str, job_id: str, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("POST", f"/api/v1/agents/{agent_id}/jobs/{job_id}/status",
                                                  json=body)
        return result


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    return str(body.get("message") or body)[:500] if isinstance(body, dict) else str(body)[:200]

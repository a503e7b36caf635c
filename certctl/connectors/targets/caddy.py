"""Caddy: certificate files (file mode, the default) or the admin API (api mode).

File mode: `cert_file` (leaf + chain) and `key_file` in `cert_dir`, which the Caddyfile loads with
`tls <cert> <key>`. Caddy does not watch certificate files, so the default reload is `caddy reload --force`
(without `--force` Caddy skips a reload whose config text is unchanged). Survives Caddy restarts.

API mode: the pair goes to the admin API as one `apps.tls.certificates.load_pem` entry carrying
`"@id": <api_object_id>`: GET `/id/<id>` (same certificate and key: nothing to do), else PATCH it (or
append it to `load_pem` the first time). Caddy loads the whole new config atomically and refuses a bad
pair with the old config still running, which is its config test. On a failed verification the
previous entry is PATCHed back (or the new one deleted). Caddy serves loaded certificates by SNI with no
Caddyfile change, but API changes live in Caddy's memory: they survive a restart only with
`caddy run --resume`. With `fallback_to_files` (and a `cert_dir`), an unreachable admin API falls back
to file mode (the reference always fell back; here it is asked for).
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import httpx

from certctl.connectors.targets.base import (
    COMMON_FIELDS,
    ConfigField,
    DeployRequest,
    FileTarget,
    command_fields,
    file_meta_fields,
    path_field,
)
from certctl.connectors.targets.plan import (
    DeployResult,
    PlannedFile,
    StepResult,
    Verification,
    VerifySpec,
    failed,
    scrub_secrets,
)
from certctl.domain.errors import ValidationError
from certctl.pki.bundle import DeployBundle, deploy_bundle

LOAD_PEM = "/config/apps/tls/certificates/load_pem"


class CaddyAPIError(Exception):
    """The admin API could not be reached or refused a request (message scrubbed of key material)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class CaddyTarget(FileTarget):
    type_name = "Caddy"
    description = "Caddy: cert and key files plus caddy reload, or the admin API"
    fields = (
        ConfigField("mode", "choice", default="file", choices=("file", "api")),
        path_field("cert_dir", doc="file mode (and the API fallback)"),
        ConfigField("cert_file", "filename", default="cert.pem"),
        ConfigField("key_file", "filename", default="key.pem"),
        ConfigField("admin_api", "url", default="http://localhost:2019"),
        ConfigField("api_object_id", "text", default="certctl", doc="the @id of certctl's load_pem entry"),
        ConfigField("api_timeout_seconds", "number", default=10, minimum=0.1, maximum=300),
        ConfigField("fallback_to_files", "bool", default=False),
        *command_fields("caddy validate --config /etc/caddy/Caddyfile",
                        "caddy reload --config /etc/caddy/Caddyfile --force"),
        *file_meta_fields("cert"), *file_meta_fields("key"),
        *COMMON_FIELDS,
    )

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> list[str]:
        problems = []
        if config["cert_file"] == config["key_file"]:
            problems.append("cert_file and key_file must differ")
        if not config.get("cert_dir") and (config["mode"] == "file" or config["fallback_to_files"]):
            problems.append("cert_dir is required when mode is 'file'" if config["mode"] == "file"
                            else "cert_dir is required when fallback_to_files is true")
        object_id = config["api_object_id"]
        if not object_id or not all(c.isalnum() or c in "-_." for c in object_id):
            problems.append("api_object_id must be letters, digits, '-', '_' or '.'")
        return problems

    def planned_files(self, bundle: DeployBundle | None) -> list[PlannedFile]:
        c = self.config
        return [
            self.file("cert", os.path.join(c["cert_dir"], c["cert_file"]), bundle.fullchain_pem if bundle else None),
            self.file("key", os.path.join(c["cert_dir"], c["key_file"]), bundle.key_pem if bundle else None,
                      secret=True),
        ]

    # ---- api mode --------------------------------------------------------------------------------
    async def deploy(self, request: DeployRequest, dry_run: bool = False) -> DeployResult:
        if self.config["mode"] == "file" or dry_run:
            return await super().deploy(request, dry_run)
        try:
            bundle = deploy_bundle(request.cert_pem, request.chain_pem, request.key_pem)
        except ValidationError as exc:
            return failed(f"{self.label}: {exc.message}")
        return await self._deploy_api(bundle)

    async def dry_run(self, request: DeployRequest | None = None) -> DeployResult:
        if self.config["mode"] == "file":
            return await super().dry_run(request)
        steps: list[StepResult] = []
        try:
            bundle = deploy_bundle(request.cert_pem, request.chain_pem, request.key_pem) if request else None
        except ValidationError as exc:
            return failed(f"{self.label}: {exc.message}")
        try:
            current = await self._api(bundle).call("GET", self._object_path)
        except CaddyAPIError as exc:
            steps.append(StepResult("admin-api", False, str(exc)))
        else:
            steps.append(StepResult("admin-api", True, f"{self.config['admin_api']} answers; entry "
                                    f"'{self.config['api_object_id']}' {'exists' if current else 'is new'}"))
        spec = self.verify_spec(bundle)
        if spec is not None:
            probe = await self.runner.verify(replace(spec, attempts=1, expected_fingerprint="-"))
            steps.append(StepResult("verify-endpoint", probe.fingerprint is not None,
                                    f"serves SHA-256 {probe.fingerprint}" if probe.fingerprint else probe.error or ""))
        bad = [s for s in steps if not s.ok]
        message = (f"{self.label}: dry run passed ({len(steps)} checks)" if not bad else
                   f"{self.label}: dry run found {len(bad)} problem(s): " + "; ".join(f"{s.name}: {s.detail}"
                                                                                    for s in bad))
        return DeployResult(success=not bad, status="dry_run", changed=False, rolled_back=False, message=message,
                            verification=Verification("skipped", error="dry run"), steps=tuple(steps))

    @property
    def _object_path(self) -> str:
        return f"/id/{self.config['api_object_id']}"

    def _api(self, bundle: DeployBundle | None) -> _CaddyAdmin:
        return _CaddyAdmin(self.config["admin_api"], float(self.config["api_timeout_seconds"]),
                           [bundle.key_pem] if bundle else [])

    async def _deploy_api(self, bundle: DeployBundle) -> DeployResult:
        api = self._api(bundle)
        entry = {"@id": self.config["api_object_id"], "certificate": bundle.fullchain_pem.decode(),
                 "key": bundle.key_pem.decode(), "tags": ["certctl"]}
        try:
            current = await api.call("GET", self._object_path)
        except CaddyAPIError as exc:
            if self.config["fallback_to_files"]:
                result = await self.runner.apply(self.plan(bundle))
                return replace(result, message=f"{self.label}: the admin API failed ({exc}); fell back to files: "
                                               f"{result.message}")
            return failed(f"{self.label}: the admin API failed: {exc}")
        if (isinstance(current, dict) and current.get("certificate") == entry["certificate"]
                and current.get("key") == entry["key"]):
            return DeployResult(success=True, status="unchanged", changed=False, rolled_back=False,
                                message=f"{self.label}: Caddy already has this certificate; nothing sent",
                                verification=Verification("skipped", error="nothing changed"))
        step = "replace" if current is not None else "add"
        try:
            if current is not None:
                await api.call("PATCH", self._object_path, entry)
            else:
                await _add_entry(api, entry)
        except CaddyAPIError as exc:
            # Caddy loads a new config atomically: on refusal the old one keeps running.
            return failed(f"{self.label}: Caddy refused the new certificate (its running config is unchanged): "
                          f"{exc}", steps=[StepResult(step, False, str(exc))])
        steps = [StepResult(step, True, f"{step} load_pem entry '{self.config['api_object_id']}'")]
        spec: VerifySpec | None = self.verify_spec(bundle)
        if spec is None:
            verification = Verification("skipped", error="no verify_endpoint configured")
        else:
            verification = await self.runner.verify(spec)
        if verification.status == "failed":
            try:
                if current is not None:
                    await api.call("PATCH", self._object_path, current)
                else:
                    await api.call("DELETE", self._object_path)
            except CaddyAPIError as exc:
                steps.append(StepResult("rollback", False, str(exc)))
                return DeployResult(success=False, status="rollback_failed", changed=True, rolled_back=False,
                                    message=f"{self.label}: verification failed: {verification.error}; ROLLBACK "
                                            f"FAILED: {exc}", verification=verification, steps=tuple(steps))
            steps.append(StepResult("rollback", True, "previous load_pem entry restored" if current is not None
                                    else "new load_pem entry removed"))
            return DeployResult(success=False, status="rolled_back", changed=False, rolled_back=True,
                                message=f"{self.label}: verification failed: {verification.error}; the previous "
                                        "certificate was restored", verification=verification, steps=tuple(steps))
        return DeployResult(success=True, status="deployed", changed=True, rolled_back=False,
                            message=f"{self.label}: certificate loaded through the admin API" + (
                                "; the new certificate is served" if verification.status == "success" else ""),
                            verification=verification, steps=tuple(steps), deployed_at=self.runner.now())


async def _add_entry(api: _CaddyAdmin, entry: dict[str, Any]) -> None:
    """Append to apps.tls.certificates.load_pem, creating whatever part of that path is missing (POST
    appends to an existing array and sets a missing key; Caddy cannot traverse into a missing object)."""
    segments = LOAD_PEM.removeprefix("/config/").split("/")
    depth = len(segments)
    while depth > 0:
        try:
            found = await api.call("GET", "/config/" + "/".join(segments[:depth]))
        except CaddyAPIError as exc:
            if exc.status != 400:
                raise
            found = None
        if found is not None:
            break
        depth -= 1
    if depth == len(segments):
        await api.call("POST", LOAD_PEM, entry)
        return
    value: Any = [entry]
    for segment in reversed(segments[depth + 1:]):
        value = {segment: value}
    await api.call("POST", "/config/" + "/".join(segments[:depth + 1]), value)


class _CaddyAdmin:
    def __init__(self, base_url: str, timeout: float, secret_texts: list[bytes]) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.secret_texts = secret_texts

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        """JSON of the answer; None for a 404 on GET. Errors never carry the request body."""
        try:
            async with httpx.AsyncClient(base_url=self.base_url, timeout=self.timeout) as client:
                response = await client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise CaddyAPIError(f"{method} {path}: {exc.__class__.__name__}") from None
        if method == "GET" and response.status_code == 404:
            return None
        if response.status_code >= 400:
            text = scrub_secrets(response.content, self.secret_texts).decode("utf-8", "replace").strip()[:500]
            raise CaddyAPIError(f"{method} {path} answered {response.status_code}: {text}",
                                status=response.status_code)
        return response.json() if response.content.strip() else None

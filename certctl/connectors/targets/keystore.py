"""Java keystores (PKCS12 or JKS) through `keytool`, run without a shell.

Deploy: when the keystore already holds this exact leaf (SHA-256) as a key entry under `alias`, nothing is
written. Otherwise the key and chain become a PKCS#12 (`certctl.pki.keystore_bundle`), imported with
`keytool -importkeystore` into a private COPY of the keystore (an entry under the alias is
overwritten); the copy's bytes then replace the keystore through the deploy engine's atomic write (backup,
rename, reload, verify, rollback), so any failure leaves the old keystore in place. The reference
snapshotted with a `keytool -exportkeystore` that does not exist (JDK 17: "Illegal option") and changed
the live keystore in place.

`keystore_password` is a secret: it reaches keytool through the environment (`-storepass:env`), never
argv (visible in `ps`), and never appears in messages or results (keytool output is scrubbed of it).
`create_keystore` (default false) allows creating a missing keystore; otherwise a wrong path fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from certctl.connectors.targets.base import (
    COMMON_FIELDS,
    ConfigField,
    DeployRequest,
    FileTarget,
    file_meta_fields,
    path_field,
)
from certctl.connectors.targets.plan import (
    DeployResult,
    PlannedFile,
    StepResult,
    Verification,
    failed,
    scrub_secrets,
)
from certctl.domain.errors import ValidationError
from certctl.pki.bundle import DeployBundle, deploy_bundle
from certctl.pki.keystore_bundle import keystore_pkcs12

_PASS_ENV = "CERTCTL_KEYSTORE_PASSWORD"  # noqa: S105  # the variable's name, not a password
_ALIAS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$")
_OUTPUT_LIMIT = 2000


class KeystoreError(Exception):
    """keytool failed; the message is scrubbed of the password."""


class JavaKeystoreTarget(FileTarget):
    type_name = "JavaKeystore"
    description = "Java keystore (PKCS12 or JKS) via keytool: key entry under an alias, swapped in atomically"
    fields = (
        path_field("keystore_path", required=True, doc="the keystore file"),
        ConfigField("keystore_password", "text", required=True, doc="store password (secret, sealed)"),
        ConfigField("keystore_type", "choice", default="PKCS12", choices=("PKCS12", "JKS")),
        ConfigField("alias", "text", default="server", doc="the key entry's alias"),
        ConfigField("create_keystore", "bool", default=False, doc="create the keystore when it does not exist"),
        ConfigField("keytool_path", "text", default="keytool", doc="the keytool program"),
        ConfigField("reload_command", "command", default="", doc="makes the server load the new keystore"),
        *file_meta_fields("keystore"),
        *COMMON_FIELDS,
    )

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> list[str]:
        problems = []
        if not _ALIAS.match(config["alias"]):
            problems.append("alias must be 1-128 letters, digits, '_', '.', '@' or '-'")
        if len(config["keystore_password"]) < 6:
            problems.append("keystore_password must be at least 6 characters (keytool's minimum)")
        if not config["keytool_path"] or "\x00" in config["keytool_path"]:
            problems.append("keytool_path must name a program")
        return problems

    def planned_files(self, bundle: DeployBundle | None) -> list[PlannedFile]:
        # `deploy` builds the keystore bytes itself; this is the shape used by dry runs.
        return [self.file("keystore", self.config["keystore_path"], None, secret=True)]

    # ---- keytool ---------------------------------------------------------------------------------
    async def _keytool(self, name: str, args: Sequence[str]) -> StepResult:
        c = self.config
        # English output (parsed below); a quick-start JIT and GC: keytool runs for a fraction of a second.
        argv = (c["keytool_path"], "-J-Duser.language=en", "-J-Duser.country=US", "-J-XX:TieredStopAtLevel=1",
                "-J-XX:+UseSerialGC", *args)
        env = {**os.environ, _PASS_ENV: c["keystore_password"]}
        started = time.perf_counter()
        try:
            process = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, env=env, start_new_session=True)
        except OSError as exc:
            return StepResult(name, False, f"cannot run {argv[0]}: {exc.strerror or exc}", argv=argv)
        try:
            raw, _ = await asyncio.wait_for(process.communicate(), float(c["command_timeout_seconds"]))
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            return StepResult(name, False, "timed out", argv=argv, timed_out=True,
                              duration_ms=(time.perf_counter() - started) * 1000)
        output = self._scrub(raw)
        ok = process.returncode == 0
        return StepResult(name, ok, "" if ok else f"exit code {process.returncode}", argv=argv,
                          exit_code=process.returncode, output=output,
                          duration_ms=(time.perf_counter() - started) * 1000)

    def _scrub(self, raw: bytes) -> str:
        text = scrub_secrets(raw).decode(errors="replace").replace(self.config["keystore_password"], "[redacted]")
        return text.strip()[-_OUTPUT_LIMIT:]

    async def entry_fingerprint(self, keystore: str) -> str | None:
        """SHA-256 (lowercase hex) of the leaf of the key entry under the alias; None when there is none."""
        c = self.config
        step = await self._keytool("list", ["-list", "-v", "-alias", c["alias"], "-keystore", keystore,
                                            "-storetype", c["keystore_type"], "-storepass:env", _PASS_ENV])
        if not step.ok:
            if "does not exist" in step.output:
                return None
            raise KeystoreError(f"keytool -list failed ({step.detail}): {step.output}")
        if not re.search(r"^Entry type: PrivateKeyEntry", step.output, re.M):
            return None  # e.g. a trusted certificate under the same alias: replace it with a key entry
        match = re.search(r"SHA256: ([0-9A-F:]{95})", step.output)
        return match.group(1).replace(":", "").lower() if match else None

    async def _build(self, bundle: DeployBundle, existing: bool, work: str) -> bytes:
        """The new keystore's bytes: the old one copied, the alias replaced with the new key entry
        (`-importkeystore -noprompt` overwrites an existing entry under the alias)."""
        c = self.config
        copy = os.path.join(work, "keystore")
        if existing:
            shutil.copyfile(c["keystore_path"], copy)
        source = os.path.join(work, "new.p12")
        fd = os.open(source, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(keystore_pkcs12(bundle, alias=c["alias"], password=c["keystore_password"]))
        step = await self._keytool("import", [
            "-importkeystore", "-noprompt", "-srckeystore", source, "-srcstoretype", "PKCS12",
            "-srcstorepass:env", _PASS_ENV, "-srcalias", c["alias"], "-destkeystore", copy,
            "-deststoretype", c["keystore_type"], "-deststorepass:env", _PASS_ENV, "-destalias", c["alias"],
        ])
        if not step.ok:
            raise KeystoreError(f"keytool -importkeystore failed ({step.detail}): {step.output}")
        return await asyncio.to_thread(Path(copy).read_bytes)

    # ---- deploy ----------------------------------------------------------------------------------
    async def deploy(self, request: DeployRequest, dry_run: bool = False) -> DeployResult:
        if dry_run:
            return await self.dry_run(request)
        c = self.config
        try:
            bundle = deploy_bundle(request.cert_pem, request.chain_pem, request.key_pem)
        except ValidationError as exc:
            return failed(f"{self.label}: {exc.message}")
        path = c["keystore_path"]
        existing = os.path.exists(path)  # noqa: ASYNC240  # a stat, no waiting
        if not existing and not c["create_keystore"]:
            return failed(f"{self.label}: {path} does not exist (set create_keystore to create it)")
        try:
            current = await self.entry_fingerprint(path) if existing else None
            if current == bundle.fingerprint_sha256:
                return DeployResult(
                    success=True, status="unchanged", changed=False, rolled_back=False,
                    message=f"{self.label}: {path} already holds this certificate under alias '{c['alias']}'; "
                            "nothing written, nothing reloaded",
                    verification=Verification("skipped", error="nothing changed"))
            with tempfile.TemporaryDirectory(prefix="certctl-keystore-") as work:
                content = await self._build(bundle, existing, work)
        except (KeystoreError, OSError) as exc:
            return failed(f"{self.label}: {self._scrub(str(exc).encode()) if isinstance(exc, KeystoreError) else exc}")
        plan = replace(self.plan(bundle), files=(self.file("keystore", path, content, secret=True),))
        return await self.runner.apply(plan)

    async def dry_run(self, request: DeployRequest | None = None) -> DeployResult:
        result = await super().dry_run(request)
        path = self.config["keystore_path"]
        if os.path.exists(path):  # noqa: ASYNC240  # a stat, no waiting
            step = await self._keytool("keystore-readable", [
                "-list", "-keystore", path, "-storetype", self.config["keystore_type"],
                "-storepass:env", _PASS_ENV])
            step = replace(step, output="")  # the entry list is not needed in a dry-run report
        else:
            step = StepResult("keystore-exists", bool(self.config["create_keystore"]),
                              f"{path} does not exist" + ("; it will be created" if self.config["create_keystore"]
                                                           else " and create_keystore is false"))
        return replace(result, steps=(step, *result.steps), success=result.success and step.ok)

"""SSH: certificate files on a remote host over SFTP (asyncssh), with a pinned host key and atomic replacement.

The reference wrote the files in place (a reader could see a half-written key) and never checked the host key
(anyone on the path could take the key and the password). Here:
- `host_key` is REQUIRED: an OpenSSH known_hosts line (`[host]:port ssh-ed25519 AAAA...`, or just `type base64`)
  or a SHA-256 fingerprint (`SHA256:...`, as `ssh-keygen -lf` prints it). The server's key is checked during the
  key exchange (RFC 4253 section 8), before authentication: on a mismatch no password, key signature or file is
  sent. A known_hosts line also restricts the negotiated host key algorithm to the pinned key's.
- Each file is uploaded as `<path>.certctl-tmp.<nanos>` in the same remote directory (exclusive create, 0600,
  fsync when the server offers it), chmodded, and renamed over the old file with the `posix-rename@openssh.com`
  extension (an atomic rename(2)); the old file is first kept as `<path>.certctl-bak.<nanos>` (a hard link,
  `hardlink@openssh.com`, else a copy). Unchanged content (SHA-256 and mode) writes nothing and reloads nothing.
- The remote `reload_command` (refused shell metacharacters, sent quoted word by word) runs after the renames; when
  it fails, or the TLS probe of `verify_endpoint` (never guessed from `host`: port 22 is not a TLS server) does not
  see the new leaf, the backups are renamed back and the reload runs again.
Secrets (`password`, `private_key`, `passphrase`) are sealed by the server and never appear in results or logs;
remote output is scrubbed of key text.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import logging
import posixpath
import re
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import asyncssh

from certctl.connectors.targets.base import (
    COMMON_FIELDS,
    ConfigField,
    DeployRequest,
    TargetConnector,
    parse_endpoint,
    path_field,
)
from certctl.connectors.targets.plan import (
    Command,
    DeployResult,
    DeployStatus,
    FileResult,
    StepResult,
    Verification,
    VerifySpec,
    failed,
    scrub_secrets,
)
from certctl.domain.errors import ValidationError
from certctl.pki.bundle import deploy_bundle

log = logging.getLogger("certctl.connectors.ssh")

BACKUP_MARK = ".certctl-bak."
TEMP_MARK = ".certctl-tmp."
_KEY_TYPE = re.compile(r"^(ssh-(ed25519|rsa|dss|ed448)|ecdsa-sha2-nistp(256|384|521)|sk-[a-z0-9@.-]+)$")
_OUTPUT_LIMIT = 2000


@dataclass(frozen=True)
class HostKeyPin:
    fingerprint: str  # "SHA256:<base64 without padding>"
    key: asyncssh.SSHKey | None = None  # from a known_hosts line


def parse_host_key(value: str) -> HostKeyPin:
    """A known_hosts line or a SHA256 fingerprint; ValidationError (never quoting the value) otherwise."""
    text = value.strip()
    if text.startswith("SHA256:"):
        digest = text[len("SHA256:"):]
        try:
            raw = base64.b64decode(digest + "=" * (-len(digest) % 4), validate=True)
        except ValueError:
            raw = b""
        if len(raw) != 32:
            raise ValidationError("host_key fingerprint must be SHA256: followed by 43 base64 characters")
        return HostKeyPin(f"SHA256:{base64.b64encode(raw).decode().rstrip('=')}")
    words = text.split()
    if words and words[0].startswith("@"):
        raise ValidationError("host_key must be a plain known_hosts line (no @cert-authority or @revoked marker)")
    for i, word in enumerate(words[:-1]):
        if _KEY_TYPE.match(word):
            try:
                key = asyncssh.import_public_key(f"{word} {words[i + 1]}")
            except (asyncssh.KeyImportError, ValueError):
                break
            return HostKeyPin(key.get_fingerprint("sha256"), key)
    raise ValidationError("host_key must be a known_hosts line ('[host]:port ssh-ed25519 AAAA...') "
                          "or a fingerprint ('SHA256:...')")


class HostKeyMismatch(Exception):
    pass


class _PinnedClient(asyncssh.SSHClient):
    """Accepts exactly the pinned host key; records what the server presented (for the error message)."""

    def __init__(self, pin: HostKeyPin) -> None:
        self.pin = pin
        self.presented: str | None = None

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        self.presented = key.get_fingerprint("sha256")
        return hmac.compare_digest(self.presented, self.pin.fingerprint)


@dataclass
class _RemoteFile:
    path: str
    role: str
    content: bytes = field(repr=False)
    mode: int
    secret: bool
    sha256: str = ""
    existed: bool = False
    old: bytes | None = field(default=None, repr=False)
    unchanged: bool = False
    temp: str = ""
    backup: str | None = None
    renamed: bool = False


class SSHTarget(TargetConnector):
    type_name = "SSH"
    description = "Remote files over SFTP with a pinned host key: atomic rename, remote reload, rollback"
    fields = (
        ConfigField("host", "text", required=True),
        ConfigField("port", "int", default=22, minimum=1, maximum=65535),
        ConfigField("user", "text", required=True),
        ConfigField("auth_method", "choice", default="key", choices=("key", "password")),
        path_field("private_key_path", doc="the agent's SSH key file"),
        ConfigField("private_key", "text", doc="the SSH key inline (secret)"),
        ConfigField("passphrase", "text", doc="of the SSH key (secret)"),
        ConfigField("password", "text", doc="for auth_method password (secret)"),
        ConfigField("host_key", "text", doc="REQUIRED: known_hosts line or SHA256:fingerprint of the server's key"),
        path_field("cert_path", required=True, doc="remote: leaf + chain (the leaf alone when chain_path is set)"),
        path_field("key_path", required=True, doc="remote private key"),
        path_field("chain_path", doc="remote chain file, optional"),
        ConfigField("cert_mode", "mode", default="0644"),
        ConfigField("key_mode", "mode", default="0600"),
        ConfigField("chain_mode", "mode", default="0644"),
        ConfigField("reload_command", "command", default="", doc="run on the remote host after the renames"),
        ConfigField("timeout", "number", default=30, minimum=1, maximum=600, doc="connect timeout, seconds"),
        *COMMON_FIELDS,
    )

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> list[str]:
        problems = []
        if not config.get("host_key"):
            problems.append("host_key is required (the server's known_hosts line or SHA256 fingerprint): "
                            "an unchecked host key would hand the private key to whoever answers")
        else:
            try:
                parse_host_key(config["host_key"])
            except ValidationError as exc:
                problems.append(exc.message)
        if config["auth_method"] == "password":
            if not config.get("password"):
                problems.append("password is required when auth_method is 'password'")
        elif not (config.get("private_key_path") or config.get("private_key")):
            problems.append("private_key_path (or private_key) is required when auth_method is 'key'")
        paths = [config[k] for k in ("cert_path", "key_path", "chain_path") if config.get(k)]
        if len(set(paths)) != len(paths):
            problems.append("cert_path, key_path and chain_path must differ")
        return problems

    @property
    def label(self) -> str:
        return f"SSH target {self.config['user']}@{self.config['host']}:{self.config['port']}"

    # ---- connection ------------------------------------------------------------------------------
    async def _connect(self) -> asyncssh.SSHClientConnection:
        c = self.config
        pin = parse_host_key(c["host_key"])
        client = _PinnedClient(pin)
        options: dict[str, Any] = {}
        if c["auth_method"] == "password":
            options.update(password=c["password"], client_keys=None, preferred_auth="password,keyboard-interactive")
        else:
            passphrase = c.get("passphrase") or None
            if c.get("private_key"):
                keys = [asyncssh.import_private_key(c["private_key"], passphrase)]
            else:
                keys = [asyncssh.read_private_key(c["private_key_path"], passphrase)]
            options.update(client_keys=keys, preferred_auth="publickey")
        # Trust nothing but the pin: not ~/.ssh/known_hosts, not ~/.ssh/config, not an ssh-agent.
        known: tuple[list[asyncssh.SSHKey], list[asyncssh.SSHKey], list[asyncssh.SSHKey]] = (
            [pin.key] if pin.key else [], [], [])
        try:
            conn, _ = await asyncssh.create_connection(
                lambda: client, c["host"], c["port"], username=c["user"], known_hosts=known,
                x509_trusted_certs=None, agent_path=None, config=(), connect_timeout=float(c["timeout"]),
                login_timeout=float(c["timeout"]), **options)
        except asyncssh.HostKeyNotVerifiable:
            raise HostKeyMismatch(
                f"the server's host key ({client.presented or 'of another type'}) is not the pinned "
                f"{pin.fingerprint}; nothing was sent") from None
        return conn

    # ---- deploy ----------------------------------------------------------------------------------
    async def deploy(self, request: DeployRequest, dry_run: bool = False) -> DeployResult:
        if dry_run:
            return await self.dry_run(request)
        c = self.config
        try:
            bundle = deploy_bundle(request.cert_pem, request.chain_pem, request.key_pem)
        except ValidationError as exc:
            return failed(f"{self.label}: {exc.message}")
        files = [_RemoteFile(c["cert_path"], "cert", bundle.leaf_pem if c.get("chain_path") else bundle.fullchain_pem,
                             int(c["cert_mode"], 8), False),
                 _RemoteFile(c["key_path"], "key", bundle.key_pem, int(c["key_mode"], 8), True)]
        if c.get("chain_path"):
            files.append(_RemoteFile(c["chain_path"], "chain", bundle.chain_pem, int(c["chain_mode"], 8), False))
        verify = self._verify_spec(bundle.fingerprint_sha256)
        try:
            conn = await self._connect()
        except HostKeyMismatch as exc:
            return failed(f"{self.label}: {exc}")
        except (OSError, asyncssh.Error, ValueError, TimeoutError) as exc:
            return failed(f"{self.label}: cannot connect: {_describe(exc)}")
        try:
            async with conn, conn.start_sftp_client() as sftp:
                result = await _Remote(self, conn, sftp, files, [bundle.key_pem]).apply(verify)
        except (OSError, asyncssh.Error) as exc:
            result = failed(f"{self.label}: SSH session failed: {_describe(exc)}")
        log.info("deploy %s: %s", self.label, result.status, extra={"deploy_status": result.status})
        return result

    def _verify_spec(self, expected: str) -> VerifySpec | None:
        c = self.config
        endpoint = parse_endpoint(c["verify_endpoint"]) if c.get("verify_endpoint") else None
        if endpoint is None:
            return None
        return VerifySpec(host=endpoint[0], port=endpoint[1], expected_fingerprint=expected,
                          server_name=c.get("verify_server_name") or None, attempts=c["verify_attempts"],
                          backoff=float(c["verify_backoff_seconds"]),
                          max_backoff=float(c["verify_max_backoff_seconds"]),
                          timeout=float(c["verify_timeout_seconds"]))

    async def dry_run(self, request: DeployRequest | None = None) -> DeployResult:
        """Connect (host key and credentials checked), and check each remote directory is there."""
        c = self.config
        checks: list[StepResult] = []
        try:
            conn = await self._connect()
        except HostKeyMismatch as exc:
            checks.append(StepResult("connect", False, str(exc)))
        except (OSError, asyncssh.Error, ValueError, TimeoutError) as exc:
            checks.append(StepResult("connect", False, f"cannot connect: {_describe(exc)}"))
        else:
            checks.append(StepResult("connect", True, "host key matches the pin; authenticated"))
            async with conn, conn.start_sftp_client() as sftp:
                for key in ("cert_path", "key_path", "chain_path"):
                    if c.get(key):
                        directory = posixpath.dirname(c[key])
                        ok = await sftp.isdir(directory)
                        checks.append(StepResult(f"directory:{key}", ok, f"{directory} "
                                                 + ("exists" if ok else "does not exist")))
        ok = all(s.ok for s in checks)
        return DeployResult(success=ok, status="dry_run", changed=False, rolled_back=False,
                            message=f"{self.label}: dry run {'passed' if ok else 'failed'}",
                            verification=Verification("skipped", error="dry run"), steps=tuple(checks))


class _Remote:
    """One deploy on an open SFTP session."""

    def __init__(self, target: SSHTarget, conn: asyncssh.SSHClientConnection, sftp: asyncssh.SFTPClient,
                 files: list[_RemoteFile], secrets: Sequence[bytes]) -> None:
        self.t, self.conn, self.sftp, self.files, self.secrets = target, conn, sftp, files, secrets
        self.steps: list[StepResult] = []
        c = target.config
        self.reload = (Command.parse(c["reload_command"], timeout=float(c["command_timeout_seconds"]))
                       if c.get("reload_command") else None)

    def _result(self, success: bool, status: DeployStatus, message: str, verification: Verification,
                *, changed: bool = False, rolled_back: bool = False) -> DeployResult:
        files = tuple(FileResult(f.path, f.role, "unchanged" if f.unchanged else ("replaced" if f.existed
                                 else "created"), f.sha256, f.backup) for f in self.files)
        return DeployResult(success=success, status=status, changed=changed, rolled_back=rolled_back,
                            message=f"{self.t.label}: {message}", verification=verification, files=files,
                            steps=tuple(self.steps), deployed_at=self.t.runner.now() if success else None)

    async def apply(self, verify: VerifySpec | None) -> DeployResult:
        for f in self.files:
            f.sha256 = hashlib.sha256(f.content).hexdigest()
            try:
                attrs = await self.sftp.stat(f.path)
            except asyncssh.SFTPNoSuchFile:
                continue
            f.existed = True
            async with self.sftp.open(f.path, "rb") as src:
                data = await src.read()
            f.old = data if isinstance(data, bytes) else data.encode()
            f.unchanged = f.old == f.content and (attrs.permissions or 0) & 0o7777 == f.mode
        pending = [f for f in self.files if not f.unchanged]
        if not pending:
            return self._result(True, "unchanged", "every remote file already has this content and mode; "
                                "nothing written, nothing reloaded", Verification("skipped", error="nothing changed"))
        stamp = time.time_ns()
        try:
            for f in pending:  # temps and backups first: nothing live changes until every file is ready
                f.temp = f"{f.path}{TEMP_MARK}{stamp}"
                async with self.sftp.open(f.temp, "xb", asyncssh.SFTPAttrs(permissions=0o600)) as out:
                    await out.write(f.content)
                    # Without fsync@openssh.com the rename is still atomic; only durability across a remote crash
                    # is weaker.
                    with contextlib.suppress(asyncssh.SFTPOpUnsupported):
                        await out.fsync()
                await self.sftp.chmod(f.temp, f.mode)
                if f.existed:
                    f.backup = f"{f.path}{BACKUP_MARK}{stamp}"
                    await self._backup(f)
        except (OSError, asyncssh.Error) as exc:
            await self._discard(pending)
            return self._result(False, "failed", f"uploading failed, nothing replaced: {_describe(exc)}",
                                Verification("skipped", error="not deployed"))
        try:
            for f in pending:
                await self.sftp.posix_rename(f.temp, f.path)
                f.renamed = True
        except (OSError, asyncssh.Error) as exc:
            return await self._rollback(f"renaming failed: {_describe(exc)}", reload_again=False,
                                        verification=Verification("skipped", error="not deployed"))
        if self.reload is not None:
            step = await self._run("reload", self.reload)
            if not step.ok:
                return await self._rollback(f"reload failed: {_summary(step)}", reload_again=True,
                                            verification=Verification("skipped", error="reload failed"))
        verification = Verification("skipped", error="no verify_endpoint configured")
        if verify is not None:
            verification = await self.t.runner.verify(verify)
            if verification.status != "success":
                return await self._rollback(f"verification failed: {verification.error}", reload_again=True,
                                            verification=verification)
        warnings = await self._prune(pending)
        result = self._result(True, "deployed", f"{len(pending)} remote file(s) replaced", verification,
                              changed=True)
        return replace(result, warnings=tuple(warnings))

    async def _backup(self, f: _RemoteFile) -> None:
        assert f.backup is not None and f.old is not None
        try:
            await self.sftp.link(f.path, f.backup)  # the old inode itself, mode and owner untouched
        except asyncssh.SFTPOpUnsupported:
            attrs = await self.sftp.stat(f.path)
            async with self.sftp.open(f.backup, "xb", asyncssh.SFTPAttrs(permissions=0o600)) as out:
                await out.write(f.old)
            await self.sftp.chmod(f.backup, (attrs.permissions or 0o600) & 0o7777)

    async def _discard(self, files: Sequence[_RemoteFile]) -> list[str]:
        errors = []
        for f in files:
            for name in (f.temp if not f.renamed else "", f.backup if not f.renamed else None):
                if name:
                    try:
                        await self.sftp.remove(name)
                    except asyncssh.SFTPNoSuchFile:
                        pass
                    except (OSError, asyncssh.Error) as exc:
                        errors.append(f"could not remove {name}: {_describe(exc)}")
        return errors

    async def _rollback(self, reason: str, *, reload_again: bool, verification: Verification) -> DeployResult:
        errors: list[str] = []
        for f in self.files:
            if not f.renamed:
                continue
            try:
                if f.backup is not None:
                    await self.sftp.posix_rename(f.backup, f.path)  # atomic back to the old inode
                else:
                    await self.sftp.remove(f.path)
                f.renamed = False
                f.backup = None
            except (OSError, asyncssh.Error) as exc:
                errors.append(f"could not restore {f.path}: {_describe(exc)}")
        errors += await self._discard([f for f in self.files if not f.unchanged])
        if reload_again and self.reload is not None:
            step = await self._run("rollback-reload", self.reload)
            if not step.ok:
                errors.append(f"reloading after the restore failed: {_summary(step)}")
        log.warning("deploy %s rolled back: %s", self.t.label, reason)
        if errors:
            return self._result(False, "rollback_failed", f"{reason}; ROLLBACK FAILED: {'; '.join(errors)}",
                                verification)
        return self._result(False, "rolled_back", f"{reason}; the previous files were restored"
                            + (" and the server reloaded" if reload_again and self.reload else ""),
                            verification, rolled_back=True)

    async def _run(self, name: str, command: Command) -> StepResult:
        started = time.perf_counter()
        # Words quoted one by one: the remote shell sees exactly this argv (metacharacters were refused anyway).
        try:
            done = await self.conn.run(shlex.join(command.argv), check=False, timeout=command.timeout,
                                       stdin=asyncssh.DEVNULL, stderr=asyncssh.STDOUT, encoding=None)
        except asyncssh.TimeoutError:
            return StepResult(name, False, f"timed out after {command.timeout:g}s", argv=command.argv,
                              timed_out=True, duration_ms=_ms(started))
        except (OSError, asyncssh.Error) as exc:
            return StepResult(name, False, f"could not run: {_describe(exc)}", argv=command.argv,
                              duration_ms=_ms(started))
        raw = done.stdout if isinstance(done.stdout, bytes) else str(done.stdout or "").encode()
        output = scrub_secrets(raw, self.secrets).decode(errors="replace").strip()[-_OUTPUT_LIMIT:]
        code = done.exit_status
        ok = code == 0
        step = StepResult(name, ok, "" if ok else f"exit code {code}", argv=command.argv, exit_code=code,
                          output=output, duration_ms=_ms(started))
        self.steps.append(step)
        return step

    async def _prune(self, files: Sequence[_RemoteFile]) -> list[str]:
        keep = self.t.config["backup_retention"]
        if keep < 0:
            return []
        warnings = []
        for f in files:
            directory, base = posixpath.split(f.path)
            try:
                names = sorted(n for n in await self.sftp.listdir(directory)
                               if isinstance(n, str) and n.startswith(base + BACKUP_MARK))
                for old in names[: max(0, len(names) - keep)]:
                    await self.sftp.remove(posixpath.join(directory, old))
            except (OSError, asyncssh.Error) as exc:
                warnings.append(f"could not prune backups of {f.path}: {_describe(exc)}")
        return warnings


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


def _summary(step: StepResult) -> str:
    return f"`{shlex.join(step.argv)}` {step.detail}" + (f": {step.output[-300:]}" if step.output else "")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncssh.Error):
        return exc.reason or type(exc).__name__
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc) or type(exc).__name__

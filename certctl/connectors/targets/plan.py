"""The deployment plan a target connector hands to the agent's deploy engine, and what comes back.

A connector describes *what* to write (files with their bytes, mode and owner), *how to test* the
server's configuration, *how to reload* it and *where to check* that the new leaf is served. The
engine (`certctl.agent.deploy`) decides *how* to do it safely: atomic renames, backups, rollback.
Connectors see the engine only through `PlanRunner`, so this package never imports the agent.

Commands never go through a shell: a configured string is split with `shlex` and refused when it
holds a shell metacharacter (the reference's denylist), so `nginx -t && curl evil` cannot happen.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from certctl.domain.errors import ValidationError

# The reference agent's denylist for hook commands (see also certctl.services.connector_config).
SHELL_META = re.compile(r"[;|&$`(){}<>\\\"'\n\r\x00]")
MAX_COMMAND = 1024


@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]
    timeout: float = 60.0

    @classmethod
    def parse(cls, value: str | Sequence[str], *, timeout: float = 60.0, key: str = "command") -> Command:
        """A config value as argv: a string split like a shell would split words (and nothing more), or a list."""
        return cls(tuple(command_argv(value, key)), timeout)

    def __str__(self) -> str:
        return shlex.join(self.argv)


def command_problem(value: Any, key: str) -> str | None:
    """Why `value` cannot be a command (None when it can). Never echoes the value."""
    if isinstance(value, str):
        if len(value) > MAX_COMMAND or SHELL_META.search(value):
            return (f"{key} must be at most {MAX_COMMAND} characters without shell metacharacters "
                    "(; | & $ ` ( ) { } < > \\ \" ' or newlines); it runs without a shell")
        if not value.split():
            return f"{key} must name a program"
        return None
    if isinstance(value, list | tuple):
        if not value or not all(isinstance(a, str) and a and "\x00" not in a for a in value):
            return f"{key} as a list must be non-empty strings (argv)"
        if sum(len(a) for a in value) > MAX_COMMAND:
            return f"{key} must be at most {MAX_COMMAND} characters"
        return None
    return f"{key} must be a string or a list of strings"


def command_argv(value: str | Sequence[str], key: str = "command") -> list[str]:
    problem = command_problem(value, key)
    if problem:
        raise ValidationError(problem)
    return shlex.split(value) if isinstance(value, str) else list(value)


@dataclass(frozen=True)
class PlannedFile:
    path: str  # absolute
    content: bytes | None = field(repr=False)  # None only in a dry run without a certificate
    mode: int | None = None  # explicit: wins over the replaced file's mode
    owner: str | int | None = None  # explicit user name or uid
    group: str | int | None = None
    default_mode: int = 0o644  # for a file that does not exist yet
    secret: bool = False  # holds private key material: scrubbed from any command output
    role: str = "file"  # cert, key, chain, fullchain, combined, config: for messages


@dataclass(frozen=True)
class VerifySpec:
    """Probe `host:port` until the served leaf's SHA-256 equals `expected_fingerprint`."""

    host: str
    port: int
    expected_fingerprint: str
    server_name: str | None = None
    attempts: int = 5
    backoff: float = 1.0  # seconds before the second attempt, doubling
    max_backoff: float = 16.0
    timeout: float = 5.0


@dataclass(frozen=True)
class Plan:
    files: tuple[PlannedFile, ...]
    test: Command | None = None  # config test: runs after the new files are in place, before reload
    reload: Command | None = None
    verify: VerifySpec | None = None
    backup_retention: int = 3  # backups kept per file after a success; -1 keeps all
    label: str = "target"  # for messages and logs, e.g. "NGINX target"


_PEM_PRIVATE = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.S)


def scrub_secrets(raw: bytes, secret_texts: Sequence[bytes] = ()) -> bytes:
    """Remove private key text from something a program said (command output, an API error): any PEM
    private key block, and any line of the secret files being deployed (e.g. a key echoed without armour)."""
    raw = _PEM_PRIVATE.sub(b"[private key redacted]", raw)
    for secret in secret_texts:
        for line in secret.splitlines():
            line = line.strip()
            if len(line) >= 16 and not line.startswith(b"-----"):
                raw = raw.replace(line, b"[redacted]")
    return raw


# ---- results -------------------------------------------------------------------------------------
VerificationStatus = Literal["success", "failed", "skipped"]
DeployStatus = Literal["deployed", "unchanged", "rolled_back", "failed", "rollback_failed", "dry_run"]


@dataclass(frozen=True)
class Verification:
    status: VerificationStatus
    fingerprint: str | None = None  # what the endpoint served last
    expected_fingerprint: str | None = None
    error: str | None = None
    attempts: int = 0
    endpoint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "fingerprint": self.fingerprint,
                "expected_fingerprint": self.expected_fingerprint, "error": self.error,
                "attempts": self.attempts, "endpoint": self.endpoint}


@dataclass(frozen=True)
class StepResult:
    """One command or check. `output` is trimmed and scrubbed of key material."""

    name: str  # test, reload, rollback-reload, or a dry-run check name
    ok: bool
    detail: str = ""
    argv: tuple[str, ...] = ()
    exit_code: int | None = None
    output: str = ""
    duration_ms: float = 0.0
    timed_out: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "argv": list(self.argv),
                "exit_code": self.exit_code, "output": self.output, "duration_ms": self.duration_ms,
                "timed_out": self.timed_out}


@dataclass(frozen=True)
class FileResult:
    path: str
    role: str
    action: Literal["created", "replaced", "unchanged", "would_create", "would_replace"]
    sha256: str | None = None
    backup: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "role": self.role, "action": self.action, "sha256": self.sha256,
                "backup": self.backup}


@dataclass(frozen=True)
class DeployResult:
    success: bool
    status: DeployStatus
    changed: bool  # the files now on disk differ from before (False after a rollback)
    rolled_back: bool
    message: str
    verification: Verification
    files: tuple[FileResult, ...] = ()
    steps: tuple[StepResult, ...] = ()
    warnings: tuple[str, ...] = ()
    deployed_at: datetime | None = None

    @property
    def files_written(self) -> tuple[str, ...]:
        return tuple(f.path for f in self.files if f.action in ("created", "replaced"))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for the agent's report to the server."""
        return {
            "success": self.success, "status": self.status, "changed": self.changed,
            "rolled_back": self.rolled_back, "message": self.message,
            "verification": self.verification.to_dict(), "files": [f.to_dict() for f in self.files],
            "files_written": list(self.files_written), "steps": [s.to_dict() for s in self.steps],
            "warnings": list(self.warnings),
            "deployed_at": self.deployed_at.isoformat() if self.deployed_at else None,
        }


class PlanRunner(Protocol):
    """The deploy engine as connectors see it (implemented by certctl.agent.deploy.DeployEngine)."""

    async def apply(self, plan: Plan) -> DeployResult: ...

    async def dry_run(self, plan: Plan) -> DeployResult: ...

    async def verify(self, spec: VerifySpec) -> Verification: ...

    def now(self) -> datetime: ...


def failed(message: str, *, steps: Sequence[StepResult] = ()) -> DeployResult:
    """A deploy that stopped before touching anything."""
    return DeployResult(success=False, status="failed", changed=False, rolled_back=False, message=message,
                        verification=Verification("skipped", error="not deployed"), steps=tuple(steps))


def as_mapping(raw: Any, label: str) -> Mapping[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ValidationError(f"invalid {label} config: the config must be a JSON object")
    return raw

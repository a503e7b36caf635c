"""The target connector interface, and the base of every file-based target.

A target connector is one module: a class with a type string (the API's `type`), declared config
fields (validated with their defaults applied by `validate_config`, which the SERVER calls when a
target is created or updated so the stored config is the one the agent runs, and the constructor
calls again on the agent; the reference applied defaults only on the server path the agent skipped),
and a `deploy(request)` that builds a `Plan` for the agent's deploy engine.

Common keys of every file target (besides each target's paths):
- `validate_command`, `reload_command`: strings split like shell words but run WITHOUT a shell
  (metacharacters refused), or argv lists; "" disables an optional one.
- `command_timeout_seconds` (60), `backup_retention` (3; -1 keeps all).
- `verify_endpoint` ("host:port", "[::1]:port"), `verify_server_name` (SNI), `verify_attempts` (5),
  `verify_backoff_seconds` (1, doubling), `verify_max_backoff_seconds` (16), `verify_timeout_seconds` (5).
  No endpoint means verification is `skipped`: the endpoint is never guessed from other keys.
- `<file>_file_mode` (octal string "0640", or the reference's decimal int 416), `<file>_file_owner`,
  `<file>_file_group` (names or ids): explicit values win over the replaced file's; unset, a replaced
  file keeps its mode and owner, and a new file gets the target's default mode (keys 0600, others 0644).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from certctl.connectors.targets.plan import (
    Command,
    DeployResult,
    Plan,
    PlannedFile,
    PlanRunner,
    VerifySpec,
    as_mapping,
    command_problem,
    failed,
)
from certctl.domain.errors import ValidationError
from certctl.pki.bundle import DeployBundle, deploy_bundle


@dataclass(frozen=True)
class DeployRequest:
    cert_pem: str  # the leaf, optionally followed by its chain
    chain_pem: str
    key_pem: str
    certificate_id: str
    job_id: str

    def __repr__(self) -> str:  # never the key
        return f"DeployRequest(certificate_id={self.certificate_id!r}, job_id={self.job_id!r})"


# ---- declared config fields -----------------------------------------------------------------------
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?$")


@dataclass(frozen=True)
class ConfigField:
    name: str
    kind: str  # path, filename, command, mode, owner, int, number, bool, choice, endpoint, text, url
    required: bool = False
    default: Any = None  # applied when the key is missing or null
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    doc: str = ""


def path_field(name: str, *, required: bool = False, default: str | None = None, doc: str = "") -> ConfigField:
    return ConfigField(name, "path", required=required, default=default, doc=doc)


def file_meta_fields(prefix: str) -> tuple[ConfigField, ...]:
    return (
        ConfigField(f"{prefix}_file_mode", "mode", doc=f"explicit mode of the {prefix} file"),
        ConfigField(f"{prefix}_file_owner", "owner", doc=f"explicit owner of the {prefix} file"),
        ConfigField(f"{prefix}_file_group", "owner", doc=f"explicit group of the {prefix} file"),
    )


def command_fields(validate: str | None, reload: str | None, *, reload_required: bool = False
                   ) -> tuple[ConfigField, ...]:
    return (
        ConfigField("validate_command", "command", default=validate,
                    doc="config test, run after the new files are in place and before the reload"),
        ConfigField("reload_command", "command", required=reload_required, default=reload,
                    doc="makes the server load the new files"),
    )


COMMON_FIELDS: tuple[ConfigField, ...] = (
    ConfigField("command_timeout_seconds", "number", default=60, minimum=1, maximum=3600),
    ConfigField("backup_retention", "int", default=3, minimum=-1, maximum=1000),
    ConfigField("verify_endpoint", "endpoint", doc="host:port the agent probes after the reload"),
    ConfigField("verify_server_name", "text", doc="SNI name for the probe"),
    ConfigField("verify_attempts", "int", default=5, minimum=1, maximum=30),
    ConfigField("verify_backoff_seconds", "number", default=1, minimum=0, maximum=60),
    ConfigField("verify_max_backoff_seconds", "number", default=16, minimum=0, maximum=600),
    ConfigField("verify_timeout_seconds", "number", default=5, minimum=0.1, maximum=120),
)


def _check_field(spec: ConfigField, value: Any) -> tuple[Any, str | None]:
    """(normalised value, problem). Problems name the key, never the value (it could be a secret)."""
    key, kind = spec.name, spec.kind
    if kind in ("path", "filename", "text", "url"):
        if not isinstance(value, str):
            return value, f"{key} must be a string"
        if "\x00" in value or len(value) > 4096:
            return value, f"{key} must be at most 4096 characters without NUL"
        if kind == "path" and value and (not value.startswith("/") or "/../" in value + "/"):
            return value, f"{key} must be an absolute path without '..'"
        if kind == "filename" and value and ("/" in value or value in (".", "..")):
            return value, f"{key} must be a file name, not a path"
        if kind == "url" and value and not re.match(r"^https?://[^/\s]+", value):
            return value, f"{key} must be an http:// or https:// URL"
        return value, None
    if kind == "command":
        if value == "":
            return value, None
        problem = command_problem(value, key)
        return (list(value) if isinstance(value, list | tuple) and not problem else value), problem
    if kind == "mode":
        if type(value) is int:
            number = value  # the reference's JSON carried modes as decimal ints (0640 arrives as 416)
        elif isinstance(value, str) and re.fullmatch(r"0?[0-7]{3,4}", value):
            number = int(value, 8)
        else:
            return value, f"{key} must be an octal string such as \"0640\""
        if not 0 <= number <= 0o7777:
            return value, f"{key} must be between 0000 and 7777 (octal)"
        return f"{number:04o}", None
    if kind == "owner":
        if type(value) is int and value >= 0:
            return value, None
        if isinstance(value, str) and _NAME.match(value):
            return value, None
        return value, f"{key} must be a user or group name, or a numeric id"
    if kind in ("int", "number"):
        if type(value) is bool or not isinstance(value, int | float) or (kind == "int" and type(value) is not int):
            return value, f"{key} must be a {'whole ' if kind == 'int' else ''}number"
        if (spec.minimum is not None and value < spec.minimum) or (spec.maximum is not None and value > spec.maximum):
            return value, f"{key} must be between {spec.minimum:g} and {spec.maximum:g}"
        return value, None
    if kind == "bool":
        return value, None if isinstance(value, bool) else f"{key} must be true or false"
    if kind == "choice":
        return value, None if value in spec.choices else f"{key} must be one of: {', '.join(spec.choices)}"
    if kind == "endpoint":
        if value == "":
            return value, None
        if not isinstance(value, str) or parse_endpoint(value) is None:
            return value, f"{key} must be host:port (e.g. 127.0.0.1:443 or [::1]:443)"
        return value, None
    raise AssertionError(f"unknown field kind {kind}")


def parse_endpoint(value: str) -> tuple[str, int] | None:
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([A-Za-z0-9.-]+):(\d{1,5})", value.strip())
    if not match:
        return None
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    return (host, port) if 1 <= port <= 65535 else None


def apply_fields(label: str, fields: Sequence[ConfigField], raw: Any,
                 check: Callable[[dict[str, Any]], list[str]] | None = None) -> dict[str, Any]:
    config_in = as_mapping(raw, label)
    known = {f.name: f for f in fields}
    unknown = [f"'{k}'" for k in sorted(map(str, config_in)) if k not in known]
    problems = [f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} (known keys: "
                f"{', '.join(sorted(known))})"] if unknown else []
    config: dict[str, Any] = {}
    for spec in fields:
        value = config_in.get(spec.name)
        if value is None:
            if spec.default is None:
                if spec.required:
                    problems.append(f"{spec.name} is required")
                continue
            value = spec.default
        elif spec.required and value in ("", []):
            problems.append(f"{spec.name} is required")
            continue
        value, problem = _check_field(spec, value)
        if problem:
            problems.append(problem)
        config[spec.name] = value
    if not problems and check is not None:
        problems.extend(check(config))
    if problems:
        raise ValidationError(f"invalid {label} config: {'; '.join(problems)}")
    return config


# ---- the interface -----------------------------------------------------------------------------------
class TargetConnector(ABC):
    type_name: ClassVar[str]
    fields: ClassVar[tuple[ConfigField, ...]]
    description: ClassVar[str] = ""

    def __init__(self, config: Mapping[str, Any], *, runner: PlanRunner) -> None:
        self.config = self.validate_config(config)  # defaults applied here too, whatever the server stored
        self.runner = runner

    @classmethod
    def validate_config(cls, raw: Any) -> dict[str, Any]:
        """The config with every default applied; ValidationError naming each bad key."""
        return apply_fields(f"{cls.type_name} target", cls.fields, raw, cls.check_config)

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> list[str]:
        """Rules across keys (after defaults). Override where needed."""
        return []

    @abstractmethod
    async def deploy(self, request: DeployRequest, dry_run: bool = False) -> DeployResult: ...

    @abstractmethod
    async def dry_run(self, request: DeployRequest | None = None) -> DeployResult:
        """Validate the target without changing it."""


class FileTarget(TargetConnector):
    """A target that is a set of files, a config test, a reload and a TLS endpoint."""

    @abstractmethod
    def planned_files(self, bundle: DeployBundle | None) -> list[PlannedFile]:
        """The files to write; with `bundle` None (a dry run without a certificate) content is None."""

    @property
    def label(self) -> str:
        return f"{self.type_name} target"

    def verify_spec(self, bundle: DeployBundle | None) -> VerifySpec | None:
        """The TLS check from `verify_endpoint` (none configured: no check, verification `skipped`)."""
        config = self.config
        endpoint = parse_endpoint(config["verify_endpoint"]) if config.get("verify_endpoint") else None
        if endpoint is None:
            return None
        return VerifySpec(
            host=endpoint[0], port=endpoint[1], expected_fingerprint=bundle.fingerprint_sha256 if bundle else "",
            server_name=config.get("verify_server_name") or None,
            attempts=config["verify_attempts"], backoff=float(config["verify_backoff_seconds"]),
            max_backoff=float(config["verify_max_backoff_seconds"]), timeout=float(config["verify_timeout_seconds"]),
        )

    def plan(self, bundle: DeployBundle | None) -> Plan:
        return Plan(files=tuple(self.planned_files(bundle)), test=self._command("validate_command"),
                    reload=self._command(self.reload_key), verify=self.verify_spec(bundle),
                    backup_retention=self.config["backup_retention"], label=self.label)

    reload_key: ClassVar[str] = "reload_command"

    def _command(self, key: str) -> Command | None:
        value = self.config.get(key)
        if not value:
            return None
        return Command.parse(value, timeout=float(self.config["command_timeout_seconds"]), key=key)

    def file(self, role: str, path: str, content: bytes | None, *, secret: bool = False,
             meta: str | None = None) -> PlannedFile:
        """A planned file with the explicit mode/owner/group of config keys `<meta>_file_*`."""
        prefix = meta or role
        mode = self.config.get(f"{prefix}_file_mode")
        return PlannedFile(
            path=path, content=content, mode=int(mode, 8) if mode else None,
            owner=self.config.get(f"{prefix}_file_owner"), group=self.config.get(f"{prefix}_file_group"),
            default_mode=0o600 if secret else 0o644, secret=secret, role=role,
        )

    async def deploy(self, request: DeployRequest, dry_run: bool = False) -> DeployResult:
        if dry_run:
            return await self.dry_run(request)
        try:
            bundle = deploy_bundle(request.cert_pem, request.chain_pem, request.key_pem)
            plan = self.plan(bundle)
        except ValidationError as exc:
            return failed(f"{self.label}: {exc.message}")
        return await self.runner.apply(plan)

    async def dry_run(self, request: DeployRequest | None = None) -> DeployResult:
        try:
            bundle = deploy_bundle(request.cert_pem, request.chain_pem, request.key_pem) if request else None
            plan = self.plan(bundle)
        except ValidationError as exc:
            return failed(f"{self.label}: {exc.message}")
        return await self.runner.dry_run(plan)

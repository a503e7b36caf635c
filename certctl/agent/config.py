"""Agent settings from `CERTCTL_*` variables (or an env-style config file), checked at start.

A bad value raises `AgentConfigError` naming the variable, so `certctl agent` stops with a clear message.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit


class AgentConfigError(ValueError):
    """An agent setting is missing or invalid."""


_LINE = re.compile(r"^\s*([A-Z][A-Z0-9_]*)\s*=\s*(.*?)\s*$")


@dataclass(frozen=True)
class AgentConfig:
    server_url: str
    state_dir: Path
    key_dir: Path
    ca_bundle: Path | None = None
    api_key: str | None = None  # an operator-provisioned agent key; else the one from enrollment
    bootstrap_token: str | None = None  # enrollment: register once and keep the returned key
    agent_id: str | None = None
    agent_name: str = ""
    hostname: str = ""
    poll_interval: float = 30.0
    heartbeat_interval: float = 60.0
    max_backoff: float = 300.0
    request_timeout: float = 30.0
    discovery_dirs: tuple[Path, ...] = ()
    discovery_interval: float = 6 * 3600.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, config_file: Path | None = None) -> AgentConfig:
        values: dict[str, str] = {}
        if config_file is not None:
            values.update(read_env_file(config_file))
        values.update({k: v for k, v in (os.environ if env is None else env).items() if k.startswith("CERTCTL_")})
        get = values.get
        server_url = (get("CERTCTL_SERVER_URL") or "").rstrip("/")
        parsed = urlsplit(server_url)
        if parsed.scheme != "https" or not parsed.hostname:
            raise AgentConfigError("CERTCTL_SERVER_URL: must be an https:// URL of the certctl server")
        state_dir = Path(get("CERTCTL_AGENT_STATE_DIR") or "./certctl-agent")
        ca_bundle = Path(get("CERTCTL_SERVER_CA_BUNDLE_PATH") or "") if get("CERTCTL_SERVER_CA_BUNDLE_PATH") else None
        if ca_bundle is not None and not ca_bundle.is_file():
            raise AgentConfigError(f"CERTCTL_SERVER_CA_BUNDLE_PATH: file '{ca_bundle}' does not exist")
        config = cls(
            server_url=server_url,
            state_dir=state_dir,
            key_dir=Path(get("CERTCTL_KEY_DIR") or state_dir / "keys"),
            ca_bundle=ca_bundle,
            api_key=get("CERTCTL_API_KEY") or None,
            bootstrap_token=get("CERTCTL_AGENT_BOOTSTRAP_TOKEN") or None,
            agent_id=get("CERTCTL_AGENT_ID") or None,
            agent_name=get("CERTCTL_AGENT_NAME") or "",
            hostname=get("CERTCTL_AGENT_HOSTNAME") or socket.gethostname(),
            poll_interval=_seconds(values, "CERTCTL_AGENT_POLL_INTERVAL", 30.0),
            heartbeat_interval=_seconds(values, "CERTCTL_AGENT_HEARTBEAT_INTERVAL", 60.0),
            max_backoff=_seconds(values, "CERTCTL_AGENT_MAX_BACKOFF", 300.0),
            discovery_dirs=tuple(Path(p.strip()) for p in (get("CERTCTL_DISCOVERY_DIRS") or "").split(",")
                                 if p.strip()),
            discovery_interval=_seconds(values, "CERTCTL_AGENT_DISCOVERY_INTERVAL", 6 * 3600.0),
        )
        if config.api_key is None and config.bootstrap_token is None and not (state_dir / "credential").exists():
            raise AgentConfigError(
                "CERTCTL_API_KEY or CERTCTL_AGENT_BOOTSTRAP_TOKEN: one is needed until the agent has enrolled"
            )
        return config


def read_env_file(path: Path) -> dict[str, str]:
    """`KEY=value` lines (comments and blank lines allowed; optional quotes), as systemd's EnvironmentFile."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise AgentConfigError(f"config file '{path}' cannot be read: {exc.strerror}") from None
    found: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            raise AgentConfigError(f"config file '{path}' line {number}: expected KEY=value")
        value = match[2]
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        found[match[1]] = value
    return found


def _seconds(values: Mapping[str, str], name: str, default: float) -> float:
    raw = values.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw.removesuffix("s"))
    except ValueError:
        raise AgentConfigError(f"{name}: '{raw}' is not a number of seconds") from None
    if not 0.05 <= value <= 86400:
        raise AgentConfigError(f"{name}: {value} is not between 0.05 and 86400 seconds")
    return value

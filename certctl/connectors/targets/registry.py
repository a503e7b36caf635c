"""Target type string (as the API spells it) -> connector class. Adding a target is one line here."""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any

from certctl.connectors.targets.base import TargetConnector
from certctl.connectors.targets.plan import PlanRunner
from certctl.domain.errors import NotSupportedError

# type name -> "module:Class". Imported on first use: a server process that never deploys over SSH
# does not carry asyncssh (about 10 MB of resident memory per worker).
_CONNECTOR_PATHS: dict[str, str] = {
    "NGINX": "nginx:NginxTarget",
    "Apache": "apache:ApacheTarget",
    "HAProxy": "haproxy:HAProxyTarget",
    "Traefik": "traefik:TraefikTarget",
    "Caddy": "caddy:CaddyTarget",
    "Envoy": "envoy:EnvoyTarget",
    "Postfix": "mail:PostfixTarget",
    "Dovecot": "mail:DovecotTarget",
    "Files": "files:FilesTarget",
    "JavaKeystore": "keystore:JavaKeystoreTarget",
    "SSH": "ssh:SSHTarget",
}


class _Connectors(Mapping[str, type[TargetConnector]]):
    """Type name -> connector class, each module imported when its class is first asked for."""

    def __init__(self, paths: Mapping[str, str]) -> None:
        self._paths = dict(paths)
        self._loaded: dict[str, type[TargetConnector]] = {}

    def __getitem__(self, type_name: str) -> type[TargetConnector]:
        if type_name not in self._loaded:
            module, _, name = self._paths[type_name].partition(":")
            cls: type[TargetConnector] = getattr(importlib.import_module(f"{__package__}.{module}"), name)
            assert cls.type_name == type_name, f"{cls} registered as {type_name}"
            self._loaded[type_name] = cls
        return self._loaded[type_name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)


TARGET_CONNECTORS: Mapping[str, type[TargetConnector]] = _Connectors(_CONNECTOR_PATHS)


def _key(type_name: str) -> str:
    return type_name.replace("_", "").replace("-", "").lower()


_BY_KEY = {_key(name): name for name in _CONNECTOR_PATHS}


def find_connector(type_name: str) -> type[TargetConnector] | None:
    """The connector class for a type string (any case, like the API's enum), or None."""
    name = _BY_KEY.get(_key(type_name))
    return TARGET_CONNECTORS[name] if name is not None else None


def connector_class(type_name: str) -> type[TargetConnector]:
    found = find_connector(type_name)
    if found is None:
        raise NotSupportedError(
            f"target type '{type_name}' has no agent connector here (available: {', '.join(TARGET_CONNECTORS)})"
        )
    return found


def create_connector(type_name: str, config: Mapping[str, Any], *, runner: PlanRunner) -> TargetConnector:
    """A connector ready to deploy: its config validated again, defaults applied (whatever was stored)."""
    return connector_class(type_name)(config, runner=runner)

"""Target type string (as the API spells it) -> connector class. Adding a target is one line here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from certctl.connectors.targets.apache import ApacheTarget
from certctl.connectors.targets.base import TargetConnector
from certctl.connectors.targets.caddy import CaddyTarget
from certctl.connectors.targets.envoy import EnvoyTarget
from certctl.connectors.targets.files import FilesTarget
from certctl.connectors.targets.haproxy import HAProxyTarget
from certctl.connectors.targets.keystore import JavaKeystoreTarget
from certctl.connectors.targets.mail import DovecotTarget, PostfixTarget
from certctl.connectors.targets.nginx import NginxTarget
from certctl.connectors.targets.plan import PlanRunner
from certctl.connectors.targets.ssh import SSHTarget
from certctl.connectors.targets.traefik import TraefikTarget
from certctl.domain.errors import NotSupportedError

TARGET_CONNECTORS: dict[str, type[TargetConnector]] = {
    cls.type_name: cls
    for cls in (
        NginxTarget, ApacheTarget, HAProxyTarget, TraefikTarget, CaddyTarget, EnvoyTarget,
        PostfixTarget, DovecotTarget, FilesTarget,
        JavaKeystoreTarget,
        SSHTarget,
    )
}


def _key(type_name: str) -> str:
    return type_name.replace("_", "").replace("-", "").lower()


_BY_KEY = {_key(name): cls for name, cls in TARGET_CONNECTORS.items()}


def find_connector(type_name: str) -> type[TargetConnector] | None:
    """The connector class for a type string (any case, like the API's enum), or None."""
    return _BY_KEY.get(_key(type_name))


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

"""Issuer type string (as the API spells it) -> connector constructor. Adding a CA is one line here.

`validate_issuer_config` is what the issuer service calls on create/update (a ValidationError is the API's
400, raised before anything is stored); `create_issuer` builds a ready connector (its config parsed again
with the defaults applied, whatever was stored).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from certctl.connectors.issuers.base import AccountStore, IssuerConnector, IssuerNotSupported


@dataclass(frozen=True)
class IssuerDeps:
    """What the service gives a connector (bound to one issuer)."""

    accounts: AccountStore | None = None
    now: Callable[[], datetime] | None = None


# The ACME connector module loads certbot's `acme` library (with requests and pyOpenSSL, ~30 MB per process):
# imported when an ACME issuer is first checked or used, not by every server worker at start.
def _acme_config(config: Mapping[str, Any]) -> object:
    from certctl.connectors.issuers.acme import parse_config

    return parse_config(config)


def _acme(config: Mapping[str, Any], deps: IssuerDeps) -> IssuerConnector:
    if deps.accounts is None:
        raise IssuerNotSupported("an ACME issuer needs an account store")
    from certctl.connectors.issuers.acme import AcmeIssuer

    return AcmeIssuer(config, accounts=deps.accounts, now=deps.now)


# type -> (config check, constructor)
ISSUER_CONNECTORS: dict[str, tuple[Callable[[Mapping[str, Any]], object],
                                   Callable[[Mapping[str, Any], IssuerDeps], IssuerConnector]]] = {
    "ACME": (_acme_config, _acme),
}


def _key(type_name: str) -> str:
    return type_name.replace("_", "").replace("-", "").lower()


_BY_KEY = {_key(name): entry for name, entry in ISSUER_CONNECTORS.items()}


def has_connector(type_name: str) -> bool:
    return _key(type_name) in _BY_KEY


def validate_issuer_config(type_name: str, config: Mapping[str, Any]) -> None:
    """Raises ValidationError naming every problem; issuer types without a connector pass (nothing to check)."""
    entry = _BY_KEY.get(_key(type_name))
    if entry is not None:
        entry[0](config)


def create_issuer(type_name: str, config: Mapping[str, Any], deps: IssuerDeps) -> IssuerConnector:
    entry = _BY_KEY.get(_key(type_name))
    if entry is None:
        raise IssuerNotSupported(
            f"issuer type {type_name} has no certctl connector yet (available: {', '.join(ISSUER_CONNECTORS)})")
    return entry[1](config, deps)

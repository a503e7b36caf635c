"""The issuer connector interface (step-ca's `cas/apiv1` shape: one small interface, optional capabilities, a
typed "not supported" error, a registry of constructors that validate their own config).

A connector is built from an issuer's unsealed config (validated again, defaults applied) and whatever the
service hands it (an account store for ACME, the clock). Its coroutines may take seconds to minutes (a CA
answers in its own time): the issuance service calls them outside any database transaction, inside the job's
lease. A connector never imports the store: what it must persist goes through the interfaces given to it.

Errors: `IssuerError(retryable=...)` tells the job machinery whether another attempt can help (the CA is
down: yes; the CA refused the names: no). `IssuerNotSupported` is raised for a capability a connector lacks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Protocol

from certctl.domain.errors import CertctlError, NotSupportedError


class IssuerNotSupported(NotSupportedError):
    """The connector cannot do this (an optional capability it does not have)."""


class IssuerError(CertctlError):
    """The CA refused or failed; `retryable` says whether a later attempt may succeed."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class IssueRequest:
    csr_pem: str
    common_name: str
    sans: tuple[str, ...] = ()
    # RFC 9773 §5: the ARI certificate identifier of the certificate this order replaces (renewals only).
    replaces: str | None = None
    certificate_id: str = ""
    job_id: str = ""


@dataclass(frozen=True)
class RenewalWindow:
    """RFC 9773 §4.2: the CA's suggested renewal window for one certificate, and when to ask again."""

    cert_id: str
    start: datetime
    end: datetime
    retry_after: datetime
    explanation_url: str | None = None


@dataclass(frozen=True)
class IssueResult:
    leaf_pem: str
    chain_pem: str  # the issuing CA and above, possibly empty
    serial: str  # canonical lowercase hex
    not_before: datetime
    not_after: datetime
    order_id: str = ""  # the CA's handle for the order (ACME: the order URL)
    details: Mapping[str, Any] = field(default_factory=dict)  # safe to audit (no secrets)


@dataclass(frozen=True)
class RevokeRequest:
    cert_pem: str  # the leaf
    reason_code: int = 0  # RFC 5280 §5.3.1


class IssuerConnector(ABC):
    """One CA. Required: `issue`. Optional capabilities raise `IssuerNotSupported` unless overridden."""

    type_name: ClassVar[str]

    @abstractmethod
    async def issue(self, request: IssueRequest) -> IssueResult:
        """Have the CA sign the CSR; the leaf and its chain."""

    async def revoke(self, request: RevokeRequest) -> None:
        raise IssuerNotSupported(f"{self.type_name} issuers cannot revoke at the CA")

    async def renewal_info(self, cert_pem: str) -> RenewalWindow | None:
        """The CA's renewal window for a certificate it issued (None: the CA publishes none)."""
        raise IssuerNotSupported(f"{self.type_name} issuers publish no renewal information")

    async def check(self) -> list[str]:
        """Contact the CA without changing anything; the problems found (empty: usable)."""
        raise IssuerNotSupported(f"{self.type_name} issuers have no connection check")

    def renewal_cert_id(self, cert_pem: str) -> str | None:
        """The identifier a renewal order sends as `replaces` (None: not applicable)."""
        return None

    async def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release what the connector holds (sessions, listeners)."""


# ---- account persistence (for CAs with accounts, such as ACME; implemented by the service: a connector never
# touches the store)
@dataclass(frozen=True)
class StoredAccount:
    directory_url: str
    key_pem: str = field(repr=False)
    account_url: str | None = None


class AccountStore(Protocol):
    async def load(self, directory_url: str) -> StoredAccount | None:
        """The account of this issuer at this directory, if one was made."""

    async def create(self, directory_url: str, key_pem: str, contact: str) -> StoredAccount:
        """Store a new key (before registering); returns the stored account, which is another process's
        when it stored one first."""

    async def registered(self, directory_url: str, account_url: str) -> None:
        """Remember the account URL the CA gave the key."""

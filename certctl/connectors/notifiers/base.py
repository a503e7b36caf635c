"""The notifier interface (connectors.md §6): one small class per channel, a registry line each.

A notifier gets one `Notice` and delivers it, or raises `NotifierError` (retryable or not). Messages carry no
secret: an error names the channel and what went wrong (an HTTP status, a refused address), never a URL with a
token in it, a routing key, an API key, a webhook secret or an SMTP password.

Outbound HTTP goes through `GuardedHttp`: the URL's host is resolved here, every address is checked with the
SSRF guard the service hands in (the network scanner's `AddressPolicy`: link-local and cloud metadata addresses
never, loopback and private ranges only when allowed), and the request is sent to the address that passed
(TLS still verifies the name: it is the SNI and the checked host name), so a second DNS answer cannot redirect
it. Redirects are not followed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class NotifierError(Exception):
    """Delivery failed. `retryable=False`: trying again cannot help (a refused address, a bad recipient)."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


class AddressGuard(Protocol):
    """The SSRF guard: why an address must not be dialled, or None."""

    def refusal(self, address: IPAddress) -> str | None: ...


@dataclass(frozen=True)
class Notice:
    """One notification to deliver. `subject` is the notification type, as the reference sends it."""

    id: str
    type: str
    recipient: str
    message: str
    certificate_id: str | None
    created_at: datetime
    severity: str = "info"  # informational | warning | critical | info
    html: bool = False  # the digest: an HTML body (Email only)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def subject(self) -> str:
        return self.type


class Notifier(ABC):
    channel: ClassVar[str]

    @abstractmethod
    async def send(self, notice: Notice) -> None:
        """Deliver, or raise NotifierError."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook; most notifiers hold nothing
        """Release connections."""


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """Verifying TLS context: the system's trust store, or only the given CA bundle."""
    context = ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class GuardedHttp:
    """POSTs JSON to operator-configured URLs through the SSRF guard, with a timeout and no redirects."""

    def __init__(self, guard: AddressGuard, *, timeout: float = 30.0, ca_file: str | None = None) -> None:
        import httpx  # here, not at module level: the server's settings check reads this package's configs

        self.guard = guard
        self.timeout = timeout
        self._client = httpx.AsyncClient(timeout=timeout, verify=tls_context(ca_file), follow_redirects=False,
                                         trust_env=False)

    async def _addresses(self, host: str, port: int) -> list[str]:
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            pass
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise NotifierError(f"cannot resolve {host}: {exc.strerror or exc}") from None
        return list(dict.fromkeys(str(info[4][0]) for info in infos))

    async def post(self, channel: str, url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        """Send; any answer but 2xx is a NotifierError (4xx other than 408/429 is not retryable)."""
        import httpx

        parsed = httpx.URL(url)
        if parsed.scheme not in ("https", "http") or not parsed.host:
            raise NotifierError(f"{channel}: the configured URL is not an http(s) URL", retryable=False)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        allowed: list[str] = []
        reasons: list[str] = []
        for text in await self._addresses(parsed.host, port):
            reason = self.guard.refusal(ipaddress.ip_address(text))
            if reason is None:
                allowed.append(text)
            else:
                reasons.append(f"{text}: {reason}")
        if not allowed:
            raise NotifierError(f"{channel}: refused to connect to {parsed.host}: {'; '.join(reasons)}",
                                retryable=False)
        authority = parsed.host if parsed.port is None else f"{parsed.host}:{parsed.port}"
        if ":" in parsed.host:
            authority = f"[{parsed.host}]" + ("" if parsed.port is None else f":{parsed.port}")
        extensions = {"sni_hostname": parsed.host} if parsed.scheme == "https" else {}
        failures: list[str] = []
        for address in allowed:  # the checked addresses in turn, as a client tries a name's addresses
            try:
                response = await self._client.post(
                    parsed.copy_with(host=address), content=body, extensions=extensions,
                    headers={**headers, "Host": authority, "Content-Type": "application/json"},
                )
                break
            except httpx.ConnectError:
                failures.append(address)
            except httpx.TimeoutException:
                raise NotifierError(f"{channel}: {parsed.host} did not answer within {self.timeout:g} s") from None
            except httpx.HTTPError as exc:
                # The exception text can hold the URL (a Slack or Teams URL is itself a secret): the kind only.
                raise NotifierError(f"{channel}: sending to {parsed.host} failed ({type(exc).__name__})") from None
        else:
            raise NotifierError(f"{channel}: cannot connect to {parsed.host} ({', '.join(failures)})")
        if not 200 <= response.status_code < 300:
            retryable = response.status_code >= 500 or response.status_code in (408, 429)
            raise NotifierError(f"{channel}: {parsed.host} answered HTTP {response.status_code}", retryable=retryable)
        return response

    async def aclose(self) -> None:
        await self._client.aclose()

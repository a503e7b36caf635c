"""ACME issuer connector (RFC 8555) built on certbot's `acme` library, with ARI (RFC 9773) and profiles.

What the reference got wrong and this does instead (connectors.md §1):
- the account key is made ONCE, stored (sealed) through the account store the service passes in, and reused
  after restarts: same key, same account URL. It is stored before registering, so a crash between the two
  finds the key again and the CA answers newAccount with the existing account (RFC 8555 §7.3.1);
- renewal orders carry `replaces` (RFC 9773 §5) when the CA's directory offers `renewalInfo`;
- the ARI certificate identifier is base64url(AKI keyIdentifier) "." base64url(serial), RFC 9773 §4.1
  (the reference hashed the DER);
- DNS hooks run without a shell, with a timeout, and with only the variables they need.

Blocking work (the `acme` library uses `requests`; hooks are subprocesses; propagation waits) runs in a worker
thread via `asyncio.to_thread`; the http-01 responder stays on the event loop. Each call builds its own
`ClientV2` (one directory GET), so concurrent orders of one issuer share no nonce pool or session.

Config (snake_case, the reference's names first):
  directory_url (required, https), email (required), eab_kid + eab_hmac (base64url MAC key), profile,
  challenge_type http-01 | dns-01 | dns-persist-01 (treated as dns-01, like the reference),
  http_port (80), http_address ("" = all), http_webroot (write the token files under a directory another web
  server serves instead of listening), dns_present_script / dns_cleanup_script (a path or an argv list),
  dns_propagation_wait (30 s; the maximum wait when dns_check_resolver is set), dns_check_resolver
  ("ip" or "ip:port": wait until it answers the TXT value), dns_hook_timeout_seconds (120), dns_hook_env
  (extra environment for the hooks), ari_enabled (true), ari_http_timeout_seconds (15), insecure (false),
  ca_bundle_path (PEM file to trust for a private ACME CA), terms_of_service_agreed (true),
  order_timeout_seconds (120).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import re
import shlex
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import requests
from acme import challenges, errors, messages
from acme.client import ClientNetwork, ClientV2
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.json_util import field as jose_field
from josepy.jwa import ES256
from josepy.jwk import JWK, JWKEC

from certctl.connectors.issuers import http01
from certctl.connectors.issuers.base import (
    AccountStore,
    IssuerConnector,
    IssueRequest,
    IssuerError,
    IssueResult,
    RenewalWindow,
    RevokeRequest,
)
from certctl.domain.errors import ValidationError
from certctl.pki.serials import serial_hex

log = logging.getLogger("certctl.acme.client")

USER_AGENT = "certctl-acme-issuer"
DEFAULT_ARI_RETRY = timedelta(hours=6)  # RFC 9773 §4.3.3 suggests periodic re-checks when no Retry-After is sent
# ACME problem types after which trying again cannot help (RFC 8555 §6.7).
_PERMANENT = {"rejectedIdentifier", "caa", "unsupportedIdentifier", "badCSR", "badPublicKey",
              "badSignatureAlgorithm", "invalidProfile", "unsupportedContact", "invalidContact",
              "externalAccountRequired", "userActionRequired", "malformed", "unauthorized"}
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_B64URL = re.compile(r"^[A-Za-z0-9_-]+={0,2}$")


# ---- config ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AcmeConfig:
    directory_url: str
    email: str
    eab_kid: str = ""
    eab_hmac: str = field(default="", repr=False)
    profile: str = ""
    challenge_type: str = "http-01"
    http_port: int = 80
    http_address: str = ""
    http_webroot: str = ""
    dns_present_script: tuple[str, ...] = ()
    dns_cleanup_script: tuple[str, ...] = ()
    dns_propagation_wait: float = 30
    dns_check_resolver: str = ""
    dns_hook_timeout_seconds: float = 120
    dns_hook_env: Mapping[str, str] = field(default_factory=dict, repr=False)
    ari_enabled: bool = True
    ari_http_timeout_seconds: int = 15
    insecure: bool = False
    ca_bundle_path: str = ""
    terms_of_service_agreed: bool = True
    order_timeout_seconds: float = 120

    @property
    def dns(self) -> bool:
        return self.challenge_type in ("dns-01", "dns-persist-01")


def _argv(value: Any) -> tuple[str, ...] | None:
    if isinstance(value, str):
        try:
            return tuple(shlex.split(value))
        except ValueError:
            return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    return None


def parse_config(raw: Mapping[str, Any]) -> AcmeConfig:
    """Check an ACME issuer config and apply the defaults; ValidationError names every problem (never a value)."""
    problems: list[str] = []
    values: dict[str, Any] = {}

    def text(key: str, *, required: bool = False) -> None:
        value = raw.get(key)
        if value in (None, ""):
            if required:
                problems.append(f"{key} is required")
            return
        if not isinstance(value, str) or len(value) > 4096 or "\x00" in value:
            problems.append(f"{key} must be a string of at most 4096 characters")
            return
        values[key] = value

    def number(key: str, low: float, high: float, *, integer: bool = False) -> None:
        value = raw.get(key)
        if value is None:
            return
        ok = type(value) is int or (not integer and type(value) is float)
        if not ok or not low <= value <= high:
            problems.append(f"{key} must be a {'whole ' if integer else ''}number from {low:g} to {high:g}")
            return
        values[key] = value

    def flag(key: str) -> None:
        value = raw.get(key)
        if value is None:
            return
        if not isinstance(value, bool):
            problems.append(f"{key} must be true or false")
            return
        values[key] = value

    for key in ("directory_url", "email"):
        text(key, required=True)
    for key in ("eab_kid", "eab_hmac", "profile", "challenge_type", "http_address", "http_webroot",
                "dns_check_resolver", "ca_bundle_path"):
        text(key)
    number("http_port", 1, 65535, integer=True)
    number("dns_propagation_wait", 0, 3600)
    number("dns_hook_timeout_seconds", 1, 3600)
    number("ari_http_timeout_seconds", 1, 300, integer=True)
    number("order_timeout_seconds", 5, 3600)
    for key in ("ari_enabled", "insecure", "terms_of_service_agreed"):
        flag(key)

    url = values.get("directory_url")
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            problems.append("directory_url must be an https:// URL")
    if "email" in values and not _EMAIL.match(values["email"]):
        problems.append("email must be an e-mail address")
    if bool(values.get("eab_kid")) != bool(values.get("eab_hmac")):
        problems.append("eab_kid and eab_hmac must be set together")
    if values.get("eab_hmac") and not _B64URL.match(values["eab_hmac"]):
        problems.append("eab_hmac must be the base64url MAC key the CA gave")
    challenge = values.get("challenge_type", "http-01")
    if challenge not in ("http-01", "dns-01", "dns-persist-01"):
        problems.append("challenge_type must be one of: http-01, dns-01, dns-persist-01")
    for key in ("http_webroot", "ca_bundle_path"):
        if values.get(key) and not values[key].startswith("/"):
            problems.append(f"{key} must be an absolute path")
    for key in ("dns_present_script", "dns_cleanup_script"):
        if raw.get(key) in (None, "", []):
            continue
        argv = _argv(raw[key])
        if not argv or not argv[0].startswith("/"):
            problems.append(f"{key} must be an absolute program path (optionally with arguments) or an argv list")
        else:
            values[key] = argv
    if challenge in ("dns-01", "dns-persist-01") and "dns_present_script" not in values:
        problems.append(f"dns_present_script is required with challenge_type {challenge}")
    env = raw.get("dns_hook_env")
    if env not in (None, {}):
        if not isinstance(env, dict) or not all(
                isinstance(k, str) and re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k) and isinstance(v, str)
                for k, v in env.items()):
            problems.append("dns_hook_env must map variable names to strings")
        else:
            values["dns_hook_env"] = dict(env)
    resolver = values.get("dns_check_resolver")
    if resolver and _resolver_address(resolver) is None:
        problems.append("dns_check_resolver must be an IP address, optionally with :port")
    if problems:
        raise ValidationError(f"invalid ACME issuer config: {'; '.join(problems)}")
    return AcmeConfig(**values)


def _resolver_address(value: str) -> tuple[str, int] | None:
    import ipaddress

    host, port = value, 53
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else 53
    elif value.count(":") == 1:
        host, _, text = value.partition(":")
        if not text.isdigit():
            return None
        port = int(text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    return (host, port) if 0 < port < 65536 else None


# ---- RFC 9773 -------------------------------------------------------------------------------------------
def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def ari_cert_id(cert: x509.Certificate) -> str:
    """RFC 9773 §4.1: base64url(AKI keyIdentifier) "." base64url(DER INTEGER content of the serial)."""
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    if aki is None:
        raise ValueError("the certificate's Authority Key Identifier has no keyIdentifier")
    serial = cert.serial_number
    return f"{_b64url(aki)}.{_b64url(serial.to_bytes((serial.bit_length() + 8) // 8, 'big', signed=True))}"


def _retry_after(value: str | None, now: datetime) -> datetime:
    if value:
        if value.strip().isdigit():
            return now + timedelta(seconds=int(value.strip()))
        try:
            when = parsedate_to_datetime(value)
            return when if when.tzinfo else when.replace(tzinfo=UTC)
        except (TypeError, ValueError):
            pass
    return now + DEFAULT_ARI_RETRY


# ---- the ACME messages the library lacks ------------------------------------------------------------------
class _NewOrder(messages.NewOrder):
    """newOrder with RFC 9773 §5 `replaces`."""

    replaces: str | None = jose_field("replaces", omitempty=True)


class _Client(ClientV2):
    def new_order_replacing(self, csr_pem: bytes, profile: str | None, replaces: str | None
                            ) -> messages.OrderResource:
        """`ClientV2.new_order` plus `replaces` (the library's own has no such field)."""
        csr = x509.load_pem_x509_csr(csr_pem)
        identifiers = []
        for name in _csr_dns_names(csr):
            identifiers.append(messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=name))
        for ip in _csr_ips(csr):
            identifiers.append(messages.Identifier(typ=messages.IDENTIFIER_IP, value=ip))
        order = _NewOrder(identifiers=identifiers, profile=profile or None, replaces=replaces)
        response = self._post(self.directory["newOrder"], order)
        body = messages.Order.from_json(response.json())
        authorizations = [self._authzr_from_response(self._post_as_get(url), uri=url)
                          for url in body.authorizations]
        return messages.OrderResource(body=body, uri=response.headers.get("Location"),
                                      authorizations=authorizations, csr_pem=csr_pem)


def _csr_dns_names(csr: x509.CertificateSigningRequest) -> list[str]:
    names: list[str] = []
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [n.lower() for n in san.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        pass
    for attribute in csr.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME):
        value = str(attribute.value).lower()
        if value not in names and not _is_ip(value) and "@" not in value:
            names.insert(0, value)
    return names


def _csr_ips(csr: x509.CertificateSigningRequest) -> list[str]:
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]


def _is_ip(value: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return False


def _problem(exc: BaseException) -> IssuerError:
    """An ACME or transport failure as an IssuerError (retryable unless the CA said it never will work)."""
    if isinstance(exc, IssuerError):
        return exc
    if isinstance(exc, messages.Error):
        code = exc.code or ""
        detail = f"ACME error {code or exc.typ}: {exc.detail or exc.title or ''}".strip()
        for sub in exc.subproblems or ():
            detail += f"; {sub.identifier.value if sub.identifier else ''}: {sub.detail or sub.code}"
        return IssuerError(detail, retryable=code not in _PERMANENT)
    if isinstance(exc, errors.ValidationError):
        failed = []
        for authzr in exc.failed_authzrs:
            for challb in authzr.body.challenges:
                if challb.error is not None:
                    failed.append(f"{authzr.body.identifier.value}: {challb.error.detail or challb.error.code}")
        return IssuerError(f"ACME challenge validation failed: {'; '.join(failed) or 'invalid authorization'}",
                           retryable=True)
    if isinstance(exc, errors.TimeoutError):
        return IssuerError("the ACME order did not complete within order_timeout_seconds", retryable=True)
    if isinstance(exc, requests.RequestException):
        return IssuerError(f"ACME server unreachable: {type(exc).__name__}", retryable=True)
    if isinstance(exc, errors.Error):
        return IssuerError(f"ACME client error: {exc}", retryable=True)
    return IssuerError(f"ACME issuance failed: {type(exc).__name__}: {exc}", retryable=True)


# ---- the connector ----------------------------------------------------------------------------------------
class AcmeIssuer(IssuerConnector):
    type_name: ClassVar[str] = "ACME"

    def __init__(self, config: Mapping[str, Any], *, accounts: AccountStore,
                 now: Callable[[], datetime] | None = None) -> None:
        self.config = parse_config(config)
        self.accounts = accounts
        self._now = now or (lambda: datetime.now(UTC))
        self._key: JWKEC | None = None
        self._account_url: str | None = None
        self._account_lock = asyncio.Lock()

    # -- account --------------------------------------------------------------------------------------
    def _verify(self) -> bool | str:
        if self.config.insecure:
            return False
        return self.config.ca_bundle_path or True

    def _client(self, key: JWK | None, account_url: str | None,
                timeout: int = 45) -> _Client:
        net = ClientNetwork(key, alg=ES256, user_agent=USER_AGENT, timeout=timeout,
                            verify_ssl=self._verify())  # type: ignore[arg-type]  # requests takes a CA path too
        if account_url is not None:
            net.account = messages.RegistrationResource(body=messages.Registration(), uri=account_url)
        directory = ClientV2.get_directory(self.config.directory_url, net)
        return _Client(directory, net)

    async def account(self) -> tuple[JWKEC, str]:
        """The persisted account key and URL, registering (once) when there is none yet."""
        async with self._account_lock:
            if self._key is not None and self._account_url is not None:
                return self._key, self._account_url
            url = self.config.directory_url
            stored = await self.accounts.load(url)
            if stored is None:
                private = ec.generate_private_key(ec.SECP256R1())
                pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()).decode()
                stored = await self.accounts.create(url, pem, self.config.email)
            key = JWKEC(key=serialization.load_pem_private_key(stored.key_pem.encode(), password=None))
            account_url = stored.account_url
            if account_url is None:
                try:
                    account_url = await asyncio.to_thread(self._register, key)
                except Exception as exc:
                    raise _problem(exc) from None
                await self.accounts.registered(url, account_url)
                log.info("ACME account registered", extra={"directory_url": url, "account_url": account_url})
            self._key, self._account_url = key, account_url
            return key, account_url

    def _register(self, key: JWKEC) -> str:
        client = self._client(key, None)
        eab = None
        if self.config.eab_kid:
            eab = messages.ExternalAccountBinding.from_data(
                account_public_key=key.public_key(), kid=self.config.eab_kid,
                hmac_key=self.config.eab_hmac, directory=client.directory)
        elif client.external_account_required():
            raise IssuerError("the ACME CA requires external account binding: set eab_kid and eab_hmac",
                              retryable=False)
        registration = messages.NewRegistration.from_data(
            email=self.config.email, terms_of_service_agreed=self.config.terms_of_service_agreed,
            external_account_binding=eab)
        try:
            regr = client.new_account(registration)
        except errors.ConflictError as conflict:  # RFC 8555 §7.3.1: this key already has an account
            return str(conflict.location)
        return str(regr.uri)

    async def _forget_account(self) -> None:
        """The CA no longer knows the account (a wiped test CA): register the same key again."""
        async with self._account_lock:
            if self._key is not None:
                account_url = await asyncio.to_thread(self._register, self._key)
                await self.accounts.registered(self.config.directory_url, account_url)
                self._account_url = account_url

    async def check(self) -> list[str]:
        """The directory answers over verified TLS, and offers what the config asks for (EAB, profile)."""
        def run() -> list[str]:
            client = self._client(None, None, timeout=self.config.ari_http_timeout_seconds)
            problems = []
            if client.external_account_required() and not self.config.eab_kid:
                problems.append("the CA requires external account binding: set eab_kid and eab_hmac")
            offered = getattr(client.directory.meta, "profiles", None) or {}
            if self.config.profile and offered and self.config.profile not in offered:
                problems.append(f"the CA offers no profile '{self.config.profile}' "
                                f"(offered: {', '.join(sorted(offered))})")
            return problems

        try:
            return await asyncio.to_thread(run)
        except Exception as exc:
            return [_problem(exc).message]

    # -- issue ----------------------------------------------------------------------------------------
    async def issue(self, request: IssueRequest) -> IssueResult:
        key, account_url = await self.account()
        responder = None
        if not self.config.dns and not self.config.http_webroot:
            try:
                responder = await http01.acquire(self.config.http_address, self.config.http_port)
            except OSError as exc:
                raise IssuerError(f"the http-01 responder cannot listen on port {self.config.http_port}: "
                                  f"{exc.strerror}", retryable=True) from None
        try:
            for attempt in (1, 2):
                try:
                    return await asyncio.to_thread(self._issue_blocking, key, account_url, request, responder)
                except messages.Error as exc:
                    if attempt == 1 and exc.code == "accountDoesNotExist":
                        await self._forget_account()
                        account_url = self._account_url or account_url
                        continue
                    raise _problem(exc) from None
                except Exception as exc:
                    raise _problem(exc) from None
            raise IssuerError("the ACME account could not be used", retryable=True)
        finally:
            if responder is not None:
                await http01.release(responder)

    def _profile(self, directory: messages.Directory) -> str | None:
        wanted = self.config.profile
        if not wanted:
            return None
        offered = getattr(directory.meta, "profiles", None) or {}
        if not offered:
            log.warning("ACME profile ignored: the CA offers no profiles", extra={"profile": wanted})
            return None
        if wanted not in offered:
            raise IssuerError(f"the ACME CA offers no profile '{wanted}' (offered: {', '.join(sorted(offered))})",
                              retryable=False)
        return wanted

    def _issue_blocking(self, key: JWKEC, account_url: str, request: IssueRequest,
                        responder: http01.Http01Responder | None) -> IssueResult:
        client = self._client(key, account_url)
        directory = client.directory
        profile = self._profile(directory)
        replaces = request.replaces if self.config.ari_enabled and _has(directory, "renewalInfo") else None
        csr = request.csr_pem.encode()
        try:
            order = client.new_order_replacing(csr, profile, replaces)
        except messages.Error as exc:
            # RFC 9773 §5: a CA may refuse `replaces` (already replaced, unknown); the renewal still goes ahead.
            if replaces is None or exc.code not in ("alreadyReplaced", "conflict", "malformed"):
                raise
            log.warning("ACME CA refused replaces; ordering without it", extra={"error": exc.code})
            replaces = None
            order = client.new_order_replacing(csr, profile, None)
        deadline = datetime.now() + timedelta(seconds=self.config.order_timeout_seconds)
        undo: list[Callable[[], None]] = []
        try:
            answers: list[tuple[messages.ChallengeBody, challenges.ChallengeResponse]] = []
            records: list[tuple[str, str]] = []
            for authzr in order.authorizations:
                if authzr.body.status == messages.STATUS_VALID:
                    continue  # reused authorization (RFC 8555 §7.1.4)
                identifier = authzr.body.identifier.value
                challb = self._pick(authzr)
                chall = challb.chall
                if isinstance(chall, challenges.HTTP01):
                    response, validation = chall.response_and_validation(key)
                    token = chall.encode("token")
                    undo.append(self._publish_http(token, validation, responder))
                    answers.append((challb, response))
                elif isinstance(chall, challenges.DNS01):
                    fqdn = chall.validation_domain_name(identifier)
                    value = chall.validation(key)
                    undo.append(self._dns_present(identifier, fqdn, value, chall.encode("token")))
                    records.append((fqdn, value))
                    answers.append((challb, chall.response(key)))
            if records:
                self._wait_for_records(records)
            for challb, response in answers:
                client.answer_challenge(challb, response)
            order = client.poll_and_finalize(order, deadline)
        finally:
            for step in reversed(undo):
                try:
                    step()
                except Exception as exc:
                    log.warning("ACME challenge cleanup failed", extra={"error": str(exc)})
        return self._result(order, profile, replaces)

    def _pick(self, authzr: messages.AuthorizationResource) -> messages.ChallengeBody:
        wanted = challenges.DNS01 if self.config.dns else challenges.HTTP01
        for challb in authzr.body.challenges:
            if isinstance(challb.chall, wanted):
                return challb
        offered = ", ".join(sorted(str(c.chall.typ) for c in authzr.body.challenges))
        raise IssuerError(f"the ACME CA offers no {wanted.typ} challenge for {authzr.body.identifier.value} "
                          f"(offered: {offered})", retryable=False)

    def _publish_http(self, token: str, validation: str,
                      responder: http01.Http01Responder | None) -> Callable[[], None]:
        if self.config.http_webroot:
            directory = Path(self.config.http_webroot) / ".well-known" / "acme-challenge"
            directory.mkdir(parents=True, exist_ok=True)
            path = directory / token
            path.write_text(validation)
            path.chmod(0o644)
            return lambda: path.unlink(missing_ok=True)
        assert responder is not None
        responder.publish(token, validation)
        return lambda: responder.withdraw(token)

    # -- dns-01 hooks --------------------------------------------------------------------------------------
    def _hook_env(self, domain: str, fqdn: str, value: str, token: str) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
        env.update(self.config.dns_hook_env)
        env.update({"CERTCTL_DNS_DOMAIN": domain, "CERTCTL_DNS_FQDN": fqdn, "CERTCTL_DNS_VALUE": value,
                    "CERTCTL_DNS_TOKEN": token})
        return env

    def _run_hook(self, argv: Sequence[str], which: str, domain: str, fqdn: str, value: str, token: str) -> None:
        """argv + [fqdn, value], no shell, only the variables it needs, killed after the timeout."""
        try:
            done = subprocess.run(  # noqa: S603 - the operator's own hook, an argv list without a shell
                [*argv, fqdn, value], env=self._hook_env(domain, fqdn, value, token),
                                  capture_output=True, timeout=self.config.dns_hook_timeout_seconds,
                                  check=False, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise IssuerError(f"the DNS {which} hook did not finish within {self.config.dns_hook_timeout_seconds:g} s",
                              retryable=True) from None
        except OSError as exc:
            raise IssuerError(f"the DNS {which} hook cannot run: {exc.strerror}", retryable=False) from None
        if done.returncode != 0:
            tail = done.stderr.decode(errors="replace").strip().splitlines()[-3:]
            raise IssuerError(f"the DNS {which} hook exited with {done.returncode}: {' | '.join(tail)}"[:1000],
                              retryable=True)

    def _dns_present(self, domain: str, fqdn: str, value: str, token: str) -> Callable[[], None]:
        self._run_hook(self.config.dns_present_script, "present", domain, fqdn, value, token)
        cleanup = self.config.dns_cleanup_script
        if not cleanup:
            return lambda: None
        return lambda: self._run_hook(cleanup, "cleanup", domain, fqdn, value, token)

    def _wait_for_records(self, records: list[tuple[str, str]]) -> None:
        """Up to dns_propagation_wait: until dns_check_resolver answers every TXT value, or the whole wait."""
        wait = float(self.config.dns_propagation_wait)
        resolver_address = _resolver_address(self.config.dns_check_resolver) \
            if self.config.dns_check_resolver else None
        if resolver_address is None:
            time.sleep(wait)
            return
        import dns.exception
        import dns.resolver

        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [resolver_address[0]]
        resolver.port = resolver_address[1]
        resolver.lifetime = 2.0
        end = time.monotonic() + wait
        missing = list(records)
        while missing:
            still = []
            for fqdn, value in missing:
                try:
                    answer = resolver.resolve(fqdn, "TXT")
                    seen = {b"".join(r.strings).decode() for r in answer}
                except dns.exception.DNSException:
                    seen = set()
                if value not in seen:
                    still.append((fqdn, value))
            missing = still
            if not missing or time.monotonic() >= end:
                break
            time.sleep(0.2)
        if missing:
            log.warning("DNS records not seen before dns_propagation_wait ran out; asking the CA anyway",
                        extra={"records": [f for f, _ in missing]})

    # -- result ------------------------------------------------------------------------------------------
    def _result(self, order: messages.OrderResource, profile: str | None, replaces: str | None) -> IssueResult:
        blocks = re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\s*",
                            order.fullchain_pem or "", re.S)
        if not blocks:
            raise IssuerError("the ACME CA returned no certificate", retryable=True)
        leaf = x509.load_pem_x509_certificate(blocks[0].encode())
        chain = "".join(b.strip() + "\n" for b in blocks[1:])
        details: dict[str, Any] = {"acme_order_url": order.uri or "", "acme_challenge": self.config.challenge_type}
        if profile:
            details["acme_profile"] = profile
        if replaces:
            details["acme_replaces"] = replaces
        return IssueResult(
            leaf_pem=blocks[0].strip() + "\n", chain_pem=chain, serial=serial_hex(leaf.serial_number),
            not_before=leaf.not_valid_before_utc, not_after=leaf.not_valid_after_utc, order_id=order.uri or "",
            details=details,
        )

    # -- revoke ------------------------------------------------------------------------------------------
    async def revoke(self, request: RevokeRequest) -> None:
        """RFC 8555 §7.6, signed with the account key (kid form)."""
        key, account_url = await self.account()
        cert = x509.load_pem_x509_certificate(request.cert_pem.encode())

        def run() -> None:
            self._client(key, account_url).revoke(cert, request.reason_code)

        try:
            await asyncio.to_thread(run)
        except messages.Error as exc:
            if exc.code == "alreadyRevoked":
                return
            raise _problem(exc) from None
        except Exception as exc:
            raise _problem(exc) from None

    # -- ARI ----------------------------------------------------------------------------------------------
    def renewal_cert_id(self, cert_pem: str) -> str | None:
        if not self.config.ari_enabled:
            return None
        try:
            return ari_cert_id(x509.load_pem_x509_certificate(cert_pem.encode()))
        except (ValueError, x509.ExtensionNotFound):
            return None

    async def renewal_info(self, cert_pem: str) -> RenewalWindow | None:
        """RFC 9773 §4: GET {renewalInfo}/{certID}; None when ARI is off, not offered, or unknown (404)."""
        cert_id = self.renewal_cert_id(cert_pem)
        if cert_id is None:
            return None

        def run() -> RenewalWindow | None:
            client = self._client(None, None, timeout=self.config.ari_http_timeout_seconds)
            if not _has(client.directory, "renewalInfo"):
                return None
            url = client.directory["renewalInfo"].rstrip("/") + "/" + cert_id
            response = client.net.session.get(url, timeout=self.config.ari_http_timeout_seconds,
                                              verify=self._verify(), headers={"User-Agent": USER_AGENT})
            if response.status_code == 404:
                return None
            if not response.ok:
                raise IssuerError(f"ACME renewalInfo answered {response.status_code}", retryable=True)
            body = response.json()
            window = messages.RenewalInfo.from_json(body).suggested_window
            start, end = _utc(window.start), _utc(window.end)
            if end < start:
                raise IssuerError("ACME renewalInfo window ends before it starts", retryable=True)
            return RenewalWindow(
                cert_id=cert_id, start=start, end=end,
                retry_after=_retry_after(response.headers.get("Retry-After"), self._now()),
                explanation_url=body.get("explanationURL") if isinstance(body.get("explanationURL"), str) else None,
            )

        try:
            return await asyncio.to_thread(run)
        except Exception as exc:
            raise _problem(exc) from None


def _has(directory: messages.Directory, name: str) -> bool:
    try:
        directory[name]
    except KeyError:
        return False
    return True


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)

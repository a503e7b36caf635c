"""Server settings from `CERTCTL_*` environment variables (core.md §5), validated once at start.

A bad value raises `SettingsError` with a message naming the variable, so `certctl server`
can print it and exit instead of failing later on the first request.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$|^https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")


class SettingsError(ValueError):
    """A configuration value is missing or invalid."""


@dataclass(frozen=True)
class NamedKey:
    name: str
    key: str
    admin: bool


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("./certctl-data")
    host: str = "127.0.0.1"
    port: int = 8443
    workers: int = 1
    tls_cert_path: Path | None = None
    tls_key_path: Path | None = None
    database_url: str | None = None  # None: SQLite under data_dir
    database_max_conns: int = 20  # PostgreSQL pool size per process (fixed: no overflow)
    max_body_size: int = 1 << 20
    log_level: str = "info"
    log_format: str = "json"
    audit_flush_timeout_seconds: float = 30.0
    auth_type: str = "api-key"
    api_keys: tuple[NamedKey, ...] = ()
    agent_bootstrap_token: str | None = None
    cors_origins: tuple[str, ...] = ()
    rate_limit_enabled: bool = True
    rate_limit_rps: float = 50.0
    rate_limit_burst: int = 100
    rate_limit_per_user_rps: float = 0.0
    rate_limit_per_user_burst: int = 0
    config_encryption_key: str | None = None
    keygen_mode: str = "agent"
    agent_offline_after_seconds: int = 120
    demo_seed: bool = False
    public_url: str = ""  # base of the CRL/OCSP/CA URLs put into certificates; "" = https://host:port
    pki_http_port: int = 0  # plain-HTTP port for /.well-known/pki/ only; 0 = off
    pki_http_host: str = ""  # "" = the server's host
    pki_public_url: str = ""  # base of CRL/OCSP/caIssuers URLs in certificates; see effective_pki_url
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "certctl.db"

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.sqlite_path}"

    @property
    def effective_public_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    @property
    def effective_pki_url(self) -> str:
        """Where relying parties fetch CRLs, OCSP and CA certificates: CERTCTL_PKI_PUBLIC_URL, else the plain-HTTP
        PKI port when one is set (RFC 5280 names http URLs there), else CERTCTL_PUBLIC_URL."""
        if self.pki_public_url:
            return self.pki_public_url.rstrip("/")
        if self.pki_http_port:
            host = self.pki_http_host or self.host
            host = f"[{host}]" if ":" in host else host
            return f"http://{host}:{self.pki_http_port}"
        return self.effective_public_url

    @property
    def user_rps(self) -> float:
        return self.rate_limit_per_user_rps or self.rate_limit_rps

    @property
    def user_burst(self) -> int:
        return self.rate_limit_per_user_burst or self.rate_limit_burst

    def with_overrides(self, **changes: Any) -> Settings:
        clean = {k: v for k, v in changes.items() if v is not None}
        return replace(self, **clean).validated()

    def validated(self) -> Settings:
        """Raise `SettingsError` naming the variable for the first bad value; return self when all are good."""
        problem = next((message for message in self._problems()), None)
        if problem is not None:
            raise SettingsError(problem)
        return self

    def _problems(self) -> Iterator[str]:
        if not self.host.strip():
            yield "CERTCTL_SERVER_HOST: must not be empty"
        if not 1 <= self.port <= 65535:
            yield f"CERTCTL_SERVER_PORT: {self.port} is not a TCP port (1-65535)"
        if not 1 <= self.workers <= 64:
            yield f"CERTCTL_SERVER_WORKERS: {self.workers} is not between 1 and 64"
        if self.data_dir.exists() and not self.data_dir.is_dir():
            yield f"CERTCTL_DATA_DIR: '{self.data_dir}' exists and is not a directory"
        if self.auth_type not in ("api-key", "none"):
            yield f"CERTCTL_AUTH_TYPE: '{self.auth_type}' is not one of: api-key, none"
        elif self.auth_type == "none" and not _is_loopback(self.host):
            # Without keys anyone who can reach the port is an operator; only a loopback bind limits that.
            yield (
                "CERTCTL_AUTH_TYPE: 'none' is only allowed when the server binds to a loopback address "
                f"(CERTCTL_SERVER_HOST is '{self.host}')"
            )
        if self.keygen_mode not in ("agent", "server"):
            yield f"CERTCTL_KEYGEN_MODE: '{self.keygen_mode}' is not one of: agent, server"
        if self.config_encryption_key is not None and len(self.config_encryption_key) < 32:
            yield "CERTCTL_CONFIG_ENCRYPTION_KEY: must be at least 32 characters"
        if (self.tls_cert_path is None) != (self.tls_key_path is None):
            yield "CERTCTL_TLS_CERT_PATH and CERTCTL_TLS_KEY_PATH: must be set together"
        for name, path in (("CERTCTL_TLS_CERT_PATH", self.tls_cert_path), ("CERTCTL_TLS_KEY_PATH", self.tls_key_path)):
            if path is not None and not path.is_file():
                yield f"{name}: file '{path}' does not exist"
        if self.max_body_size < 1024:
            yield f"CERTCTL_MAX_BODY_SIZE: {self.max_body_size} is below the minimum of 1024 bytes"
        if self.audit_flush_timeout_seconds <= 0:
            yield f"CERTCTL_AUDIT_FLUSH_TIMEOUT_SECONDS: {self.audit_flush_timeout_seconds} must be greater than 0"
        if self.rate_limit_rps <= 0:
            yield f"CERTCTL_RATE_LIMIT_RPS: {self.rate_limit_rps} must be greater than 0"
        if self.rate_limit_burst < 1:
            yield f"CERTCTL_RATE_LIMIT_BURST: {self.rate_limit_burst} must be at least 1"
        if self.rate_limit_per_user_rps < 0:
            yield f"CERTCTL_RATE_LIMIT_PER_USER_RPS: {self.rate_limit_per_user_rps} must be 0 (inherit) or more"
        if self.rate_limit_per_user_burst < 0:
            yield f"CERTCTL_RATE_LIMIT_PER_USER_BURST: {self.rate_limit_per_user_burst} must be 0 (inherit) or more"
        if self.log_level not in ("debug", "info", "warning", "warn", "error"):
            yield f"CERTCTL_LOG_LEVEL: '{self.log_level}' is not one of: debug, info, warn, error"
        if self.log_format not in ("json", "text"):
            yield f"CERTCTL_LOG_FORMAT: '{self.log_format}' is not one of: json, text"
        if not 30 <= self.agent_offline_after_seconds <= 86400:
            yield (
                f"CERTCTL_AGENT_OFFLINE_AFTER_SECONDS: {self.agent_offline_after_seconds} is not between 30 and 86400"
            )
        if not 1 <= self.database_max_conns <= 1000:
            yield f"CERTCTL_DATABASE_MAX_CONNS: {self.database_max_conns} is not between 1 and 1000"
        if self.database_url is not None and not self.database_url.startswith(
            ("postgres://", "postgresql://", "postgresql+asyncpg://", "sqlite:///", "sqlite+aiosqlite:///")
        ):
            yield "CERTCTL_DATABASE_URL: must be a postgresql:// or sqlite:/// URL"
        if not 0 <= self.pki_http_port <= 65535 or (self.pki_http_port and self.pki_http_port == self.port):
            yield f"CERTCTL_PKI_HTTP_PORT: {self.pki_http_port} must be 0 (off) or a TCP port other than the HTTPS port"
        if self.pki_public_url and not re.match(r"^https?://[^/\s?#]+(/[^\s?#]*)?$", self.pki_public_url):
            yield f"CERTCTL_PKI_PUBLIC_URL: '{self.pki_public_url}' is not an http(s) URL like http://pki.example.com"
        if self.public_url and not re.match(r"^https?://[^/\s?#]+(/[^\s?#]*)?$", self.public_url):
            yield f"CERTCTL_PUBLIC_URL: '{self.public_url}' is not an http(s) URL like https://pki.example.com"
        for origin in self.cors_origins:
            if origin != "*" and not _ORIGIN.match(origin):
                yield f"CERTCTL_CORS_ORIGINS: '{origin}' is not '*' or an origin like https://app.example.com[:port]"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        get = env.get
        keys = parse_named_keys(get("CERTCTL_API_KEYS_NAMED", ""))
        legacy = [k.strip() for k in get("CERTCTL_AUTH_SECRET", "").split(",") if k.strip()]
        keys += tuple(NamedKey(f"legacy-key-{i}", k, False) for i, k in enumerate(legacy, 1))
        owner_of: dict[str, str] = {}
        for named in keys:
            # One secret under two names would make the actor (and the admin flag) ambiguous.
            if owner_of.setdefault(named.key, named.name) != named.name:
                raise SettingsError(
                    f"CERTCTL_API_KEYS_NAMED/CERTCTL_AUTH_SECRET: the same key is given to "
                    f"'{owner_of[named.key]}' and '{named.name}'"
                )
        settings = cls(
            data_dir=Path(get("CERTCTL_DATA_DIR", "./certctl-data")),
            host=get("CERTCTL_SERVER_HOST", "127.0.0.1"),
            port=_int(env, "CERTCTL_SERVER_PORT", 8443),
            workers=_int(env, "CERTCTL_SERVER_WORKERS", 1),
            tls_cert_path=_path(get("CERTCTL_TLS_CERT_PATH") or get("CERTCTL_SERVER_TLS_CERT_PATH")),
            tls_key_path=_path(get("CERTCTL_TLS_KEY_PATH") or get("CERTCTL_SERVER_TLS_KEY_PATH")),
            database_url=get("CERTCTL_DATABASE_URL") or None,
            database_max_conns=_int(env, "CERTCTL_DATABASE_MAX_CONNS", 20),
            max_body_size=_int(env, "CERTCTL_MAX_BODY_SIZE", 1 << 20),
            log_level=get("CERTCTL_LOG_LEVEL", "info").strip().lower(),
            log_format=get("CERTCTL_LOG_FORMAT", "json").strip().lower(),
            audit_flush_timeout_seconds=_float(env, "CERTCTL_AUDIT_FLUSH_TIMEOUT_SECONDS", 30.0),
            auth_type=get("CERTCTL_AUTH_TYPE", "api-key").lower().replace("apikey", "api-key"),
            api_keys=keys,
            agent_bootstrap_token=get("CERTCTL_AGENT_BOOTSTRAP_TOKEN") or None,
            agent_offline_after_seconds=_int(env, "CERTCTL_AGENT_OFFLINE_AFTER_SECONDS", 120),
            cors_origins=tuple(o.strip() for o in get("CERTCTL_CORS_ORIGINS", "").split(",") if o.strip()),
            rate_limit_enabled=env_bool(env, "CERTCTL_RATE_LIMIT_ENABLED", True),
            rate_limit_rps=_float(env, "CERTCTL_RATE_LIMIT_RPS", 50.0),
            rate_limit_burst=_int(env, "CERTCTL_RATE_LIMIT_BURST", 100),
            rate_limit_per_user_rps=_float(env, "CERTCTL_RATE_LIMIT_PER_USER_RPS", 0.0),
            rate_limit_per_user_burst=_int(env, "CERTCTL_RATE_LIMIT_PER_USER_BURST", 0),
            config_encryption_key=get("CERTCTL_CONFIG_ENCRYPTION_KEY") or None,
            keygen_mode=get("CERTCTL_KEYGEN_MODE", "agent").lower(),
            demo_seed=env_bool(env, "CERTCTL_DEMO_SEED", False),
            public_url=get("CERTCTL_PUBLIC_URL", "").strip(),
            pki_http_port=_int(env, "CERTCTL_PKI_HTTP_PORT", 0),
            pki_http_host=get("CERTCTL_PKI_HTTP_HOST", "").strip(),
            pki_public_url=get("CERTCTL_PKI_PUBLIC_URL", "").strip(),
            extra={k: v for k, v in env.items() if k.startswith("CERTCTL_")},
        )
        _check_service_variables(env)
        return settings.validated()


def _check_service_variables(env: Mapping[str, str]) -> None:
    """Variables that services read from `Settings.extra`, checked here so a bad one stops `certctl server`
    with its name at start-up rather than failing inside a worker."""
    if _int(env, "CERTCTL_CERT_EXPORT_RATE_LIMIT_PER_ACTOR_HR", 50) < 0:
        raise SettingsError("CERTCTL_CERT_EXPORT_RATE_LIMIT_PER_ACTOR_HR: must be 0 (no limit) or more")
    env_bool(env, "CERTCTL_APPROVAL_BYPASS", False)
    driver = (env.get("CERTCTL_SIGNER_DRIVER") or "file").strip().lower()
    if driver not in ("file", "pkcs11"):
        raise SettingsError(f"CERTCTL_SIGNER_DRIVER: '{driver}' is not one of: file, pkcs11")
    module = (env.get("CERTCTL_PKCS11_MODULE") or "").strip()
    if driver == "pkcs11" and not module:
        raise SettingsError("CERTCTL_PKCS11_MODULE: must name the PKCS#11 module for CERTCTL_SIGNER_DRIVER=pkcs11")
    if module and not Path(module).is_file():
        raise SettingsError(f"CERTCTL_PKCS11_MODULE: file '{module}' does not exist")
    ca_cert, ca_key = env.get("CERTCTL_CA_CERT_PATH") or None, env.get("CERTCTL_CA_KEY_PATH") or None
    if (ca_cert is None) != (ca_key is None):
        raise SettingsError("CERTCTL_CA_CERT_PATH and CERTCTL_CA_KEY_PATH: must be set together")
    for name, value in (("CERTCTL_CA_CERT_PATH", ca_cert), ("CERTCTL_CA_KEY_PATH", ca_key)):
        if value is not None and not Path(value).is_file():
            raise SettingsError(f"{name}: file '{value}' does not exist")
    # Scheduler and jobs (docs/operations.md "Scheduler and jobs"); read by certctl.scheduler.settings.
    env_bool(env, "CERTCTL_SCHEDULER_ENABLED", True)
    for name, default, low, high in SCHEDULER_INT_VARIABLES:
        if not low <= _int(env, name, default) <= high:
            raise SettingsError(f"{name}: '{env.get(name)}' is not between {low} and {high}")
    for name, fallback, minimum in SCHEDULER_DURATION_VARIABLES:
        parse_duration(name, env.get(name) or fallback, minimum)
    # Network discovery (docs/configuration.md "Discovery"); read by certctl.services.network_scan.
    for name in ("CERTCTL_NETWORK_SCAN_ENABLED", "CERTCTL_NETWORK_SCAN_ALLOW_LOOPBACK",
                 "CERTCTL_NETWORK_SCAN_ALLOW_PRIVATE"):
        env_bool(env, name, False)
    parse_duration("CERTCTL_NETWORK_SCAN_INTERVAL", env.get("CERTCTL_NETWORK_SCAN_INTERVAL") or "15m", 10.0)
    if not 1 <= _int(env, "CERTCTL_NETWORK_SCAN_CONCURRENCY", 50) <= 1000:
        raw = env.get("CERTCTL_NETWORK_SCAN_CONCURRENCY")
        raise SettingsError(f"CERTCTL_NETWORK_SCAN_CONCURRENCY: '{raw}' is not between 1 and 1000")
    # Endpoint health checks (docs/configuration.md "Endpoint health checks"); read by certctl.services.health_checks.
    for name in ("CERTCTL_HEALTH_CHECK_ENABLED", "CERTCTL_HEALTH_CHECK_AUTO_CREATE"):
        env_bool(env, name, False)
    for name, default, low, high in HEALTH_CHECK_INT_VARIABLES:
        if not low <= _int(env, name, default) <= high:
            raise SettingsError(f"{name}: '{env.get(name)}' is not between {low} and {high}")
    retention = env.get("CERTCTL_HEALTH_CHECK_HISTORY_RETENTION") or "720h"
    parse_duration("CERTCTL_HEALTH_CHECK_HISTORY_RETENTION", retention, 3600.0)
    # ACME server (docs/configuration.md "ACME server"); read by certctl.services.acme.
    from certctl.services.acme_settings import AcmeSettings  # imported here: services import this module

    AcmeSettings.from_env(env)
    # Notifiers and the digest (docs/notifications.md); read by certctl.services.notifications.
    from certctl.services.notification_settings import NotificationSettings

    NotificationSettings.from_env(env)


# (variable, default, minimum, maximum)
HEALTH_CHECK_INT_VARIABLES = (
    ("CERTCTL_HEALTH_CHECK_DEFAULT_INTERVAL", 300, 30, 7 * 86400),  # seconds
    ("CERTCTL_HEALTH_CHECK_DEFAULT_TIMEOUT", 5000, 100, 60_000),  # milliseconds
    ("CERTCTL_HEALTH_CHECK_MAX_CONCURRENT", 20, 1, 1000),
)


# (variable, default, minimum, maximum)
SCHEDULER_INT_VARIABLES = (
    ("CERTCTL_RENEWAL_CONCURRENCY", 25, 1, 1000),
    ("CERTCTL_JOB_LEASE_SECONDS", 300, 1, 86400),
    ("CERTCTL_SCHEDULER_LEADER_LEASE_SECONDS", 30, 2, 3600),
)
# (variable, default, minimum seconds); values are Go-style durations ("30s", "1h", "1h30m") or plain seconds.
SCHEDULER_DURATION_VARIABLES = (
    ("CERTCTL_SCHEDULER_RENEWAL_CHECK_INTERVAL", "1h", 0.1),
    ("CERTCTL_SCHEDULER_JOB_PROCESSOR_INTERVAL", "30s", 0.1),
    ("CERTCTL_SCHEDULER_LEASE_REAPER_INTERVAL", "30s", 0.1),
    ("CERTCTL_JOB_TIMEOUT_INTERVAL", "10m", 0.1),
    ("CERTCTL_SCHEDULER_AGENT_HEALTH_CHECK_INTERVAL", "2m", 0.1),
    ("CERTCTL_SHORT_LIVED_EXPIRY_CHECK_INTERVAL", "30s", 0.1),
    ("CERTCTL_JOB_AWAITING_CSR_TIMEOUT", "24h", 1.0),
    ("CERTCTL_JOB_AWAITING_APPROVAL_TIMEOUT", "168h", 1.0),
)
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(name: str, raw: str, minimum: float = 0.0) -> float:
    """Seconds from a Go-style duration as the reference takes them ("30s", "10m", "168h", "1h30m",
    "500ms"; also "7d") or a plain number of seconds; raises `SettingsError` naming the variable."""
    text = raw.strip()
    try:
        seconds = float(text)
    except ValueError:
        parts = _DURATION_PART.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            message = f"{name}: '{raw}' is not a duration like 30s, 10m, 1h30m, 7d or a number of seconds"
            raise SettingsError(message) from None
        seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    if not math.isfinite(seconds) or seconds < minimum:
        raise SettingsError(f"{name}: '{raw}' is below the minimum of {minimum:g} seconds")
    return seconds


def parse_named_keys(raw: str) -> tuple[NamedKey, ...]:
    """Parse `name:key[:admin],...`; a name may repeat (rotation) only with the same admin flag."""
    keys: list[NamedKey] = []
    admin_by_name: dict[str, bool] = {}
    for position, entry in enumerate((e.strip() for e in raw.split(",")), 1):
        if not entry:
            continue
        parts = entry.split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
            # Never echo the entry: a malformed one may be nothing but a key.
            raise SettingsError(f"CERTCTL_API_KEYS_NAMED: entry {position} must be name:key or name:key:admin")
        if len(parts) == 3 and parts[2] != "admin":
            raise SettingsError(f"CERTCTL_API_KEYS_NAMED: third field of '{parts[0]}' must be 'admin'")
        admin = len(parts) == 3
        if admin_by_name.setdefault(parts[0], admin) != admin:
            raise SettingsError(f"CERTCTL_API_KEYS_NAMED: key name '{parts[0]}' repeats with a different admin flag")
        keys.append(NamedKey(parts[0], parts[1], admin))
    return tuple(keys)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name}: '{raw}' is not an integer") from None


def env_int_between(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    """A `CERTCTL_*` integer within [low, high]; unset or blank is `default`."""
    raw = (env.get(name) or str(default)).strip()
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}: '{raw}' is not an integer") from None
    if not low <= value <= high:
        raise SettingsError(f"{name}: '{raw}' is not between {low} and {high}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}: '{raw}' is not a number") from None
    if not math.isfinite(value):
        raise SettingsError(f"{name}: '{raw}' is not a finite number")
    return value


def env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    """A `CERTCTL_*` boolean (1/true/yes/on, 0/false/no/off); unset or blank is `default`."""
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}: '{raw}' is not a boolean (true/false)")

"""Settings from CERTCTL_* variables: every bad value is refused with a message naming its variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from certctl.config import NamedKey, Settings, SettingsError

CERTCTL = Path(sys.executable).parent / "certctl"

BAD_VALUES: list[tuple[dict[str, str], str]] = [
    ({"CERTCTL_SERVER_HOST": " "}, "CERTCTL_SERVER_HOST"),
    ({"CERTCTL_SERVER_PORT": "http"}, "CERTCTL_SERVER_PORT"),
    ({"CERTCTL_SERVER_PORT": "0"}, "CERTCTL_SERVER_PORT"),
    ({"CERTCTL_SERVER_PORT": "70000"}, "CERTCTL_SERVER_PORT"),
    ({"CERTCTL_SERVER_WORKERS": "0"}, "CERTCTL_SERVER_WORKERS"),
    ({"CERTCTL_SERVER_WORKERS": "65"}, "CERTCTL_SERVER_WORKERS"),
    ({"CERTCTL_SERVER_WORKERS": "two"}, "CERTCTL_SERVER_WORKERS"),
    ({"CERTCTL_AUTH_TYPE": "jwt"}, "CERTCTL_AUTH_TYPE"),
    ({"CERTCTL_AUTH_TYPE": "none", "CERTCTL_SERVER_HOST": "0.0.0.0"}, "CERTCTL_AUTH_TYPE"),
    ({"CERTCTL_AUTH_TYPE": "none", "CERTCTL_SERVER_HOST": "certctl.example.com"}, "CERTCTL_AUTH_TYPE"),
    ({"CERTCTL_KEYGEN_MODE": "hsm"}, "CERTCTL_KEYGEN_MODE"),
    ({"CERTCTL_CONFIG_ENCRYPTION_KEY": "too-short"}, "CERTCTL_CONFIG_ENCRYPTION_KEY"),
    ({"CERTCTL_TLS_CERT_PATH": "/etc/hosts"}, "CERTCTL_TLS_KEY_PATH"),
    ({"CERTCTL_TLS_CERT_PATH": "/nonexistent.crt", "CERTCTL_TLS_KEY_PATH": "/etc/hosts"}, "CERTCTL_TLS_CERT_PATH"),
    ({"CERTCTL_TLS_CERT_PATH": "/etc/hosts", "CERTCTL_TLS_KEY_PATH": "/nonexistent.key"}, "CERTCTL_TLS_KEY_PATH"),
    ({"CERTCTL_MAX_BODY_SIZE": "100"}, "CERTCTL_MAX_BODY_SIZE"),
    ({"CERTCTL_MAX_BODY_SIZE": "1MB"}, "CERTCTL_MAX_BODY_SIZE"),
    ({"CERTCTL_AUDIT_FLUSH_TIMEOUT_SECONDS": "0"}, "CERTCTL_AUDIT_FLUSH_TIMEOUT_SECONDS"),
    ({"CERTCTL_AUDIT_FLUSH_TIMEOUT_SECONDS": "nan"}, "CERTCTL_AUDIT_FLUSH_TIMEOUT_SECONDS"),
    ({"CERTCTL_RATE_LIMIT_ENABLED": "maybe"}, "CERTCTL_RATE_LIMIT_ENABLED"),
    ({"CERTCTL_RATE_LIMIT_RPS": "0"}, "CERTCTL_RATE_LIMIT_RPS"),
    ({"CERTCTL_RATE_LIMIT_RPS": "inf"}, "CERTCTL_RATE_LIMIT_RPS"),
    ({"CERTCTL_RATE_LIMIT_RPS": "fast"}, "CERTCTL_RATE_LIMIT_RPS"),
    ({"CERTCTL_RATE_LIMIT_BURST": "0"}, "CERTCTL_RATE_LIMIT_BURST"),
    ({"CERTCTL_RATE_LIMIT_PER_USER_RPS": "-1"}, "CERTCTL_RATE_LIMIT_PER_USER_RPS"),
    ({"CERTCTL_RATE_LIMIT_PER_USER_BURST": "-2"}, "CERTCTL_RATE_LIMIT_PER_USER_BURST"),
    ({"CERTCTL_LOG_LEVEL": "loud"}, "CERTCTL_LOG_LEVEL"),
    ({"CERTCTL_LOG_FORMAT": "xml"}, "CERTCTL_LOG_FORMAT"),
    ({"CERTCTL_DATABASE_URL": "mysql://db/certctl"}, "CERTCTL_DATABASE_URL"),
    ({"CERTCTL_AGENT_OFFLINE_AFTER_SECONDS": "5"}, "CERTCTL_AGENT_OFFLINE_AFTER_SECONDS"),
    ({"CERTCTL_AGENT_OFFLINE_AFTER_SECONDS": "soon"}, "CERTCTL_AGENT_OFFLINE_AFTER_SECONDS"),
    ({"CERTCTL_DATABASE_MAX_CONNS": "0"}, "CERTCTL_DATABASE_MAX_CONNS"),
    ({"CERTCTL_DATABASE_MAX_CONNS": "many"}, "CERTCTL_DATABASE_MAX_CONNS"),
    ({"CERTCTL_CORS_ORIGINS": "ui.example.com"}, "CERTCTL_CORS_ORIGINS"),
    ({"CERTCTL_CORS_ORIGINS": "https://ui.example.com/app"}, "CERTCTL_CORS_ORIGINS"),
    ({"CERTCTL_DEMO_SEED": "perhaps"}, "CERTCTL_DEMO_SEED"),
    ({"CERTCTL_CERT_EXPORT_RATE_LIMIT_PER_ACTOR_HR": "-1"}, "CERTCTL_CERT_EXPORT_RATE_LIMIT_PER_ACTOR_HR"),
    ({"CERTCTL_CERT_EXPORT_RATE_LIMIT_PER_ACTOR_HR": "lots"}, "CERTCTL_CERT_EXPORT_RATE_LIMIT_PER_ACTOR_HR"),
    ({"CERTCTL_APPROVAL_BYPASS": "sometimes"}, "CERTCTL_APPROVAL_BYPASS"),
    ({"CERTCTL_CA_CERT_PATH": "/etc/hosts"}, "CERTCTL_CA_KEY_PATH"),
    ({"CERTCTL_CA_CERT_PATH": "/etc/hosts", "CERTCTL_CA_KEY_PATH": "/nonexistent/ca.key"}, "CERTCTL_CA_KEY_PATH"),
    ({"CERTCTL_API_KEYS_NAMED": "just-a-secret-value"}, "CERTCTL_API_KEYS_NAMED"),
    ({"CERTCTL_API_KEYS_NAMED": "ops:k1:root"}, "CERTCTL_API_KEYS_NAMED"),
    ({"CERTCTL_API_KEYS_NAMED": ":k1"}, "CERTCTL_API_KEYS_NAMED"),
    ({"CERTCTL_API_KEYS_NAMED": "ops:k1:admin,ops:k2"}, "CERTCTL_API_KEYS_NAMED"),
    ({"CERTCTL_API_KEYS_NAMED": "ops:same-key,ci:same-key"}, "CERTCTL_API_KEYS_NAMED"),
    ({"CERTCTL_API_KEYS_NAMED": "ops:same-key", "CERTCTL_AUTH_SECRET": "same-key"}, "CERTCTL_AUTH_SECRET"),
]

# Secret values used above: no error message may repeat them.
SECRETS = ("just-a-secret-value", "same-key", "too-short", "k1", "k2")


@pytest.mark.parametrize(("env", "variable"), BAD_VALUES, ids=[f"{v}-{i}" for i, (_, v) in enumerate(BAD_VALUES)])
def test_bad_value_names_its_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    message = str(caught.value)
    assert variable in message
    for secret in SECRETS:
        assert secret not in message, "a secret leaked into the error message"


def test_data_dir_that_is_a_file(tmp_path: Path) -> None:
    afile = tmp_path / "file"
    afile.write_text("")
    with pytest.raises(SettingsError, match="CERTCTL_DATA_DIR"):
        Settings.from_env({"CERTCTL_DATA_DIR": str(afile)})


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert (settings.host, settings.port, settings.workers) == ("127.0.0.1", 8443, 1)
    assert settings.auth_type == "api-key" and settings.api_keys == ()
    assert settings.rate_limit_enabled and (settings.rate_limit_rps, settings.rate_limit_burst) == (50.0, 100)
    assert (settings.user_rps, settings.user_burst) == (50.0, 100), "per-user limits inherit the global ones"
    assert settings.max_body_size == 1 << 20 and settings.cors_origins == ()
    assert settings.effective_database_url == f"sqlite:///{Path('certctl-data') / 'certctl.db'}"
    assert (settings.log_level, settings.log_format) == ("info", "json")


def test_values_are_read_and_normalised(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "CERTCTL_SERVER_HOST": "::1",
            "CERTCTL_SERVER_PORT": "9443",
            "CERTCTL_SERVER_WORKERS": "4",
            "CERTCTL_DATA_DIR": str(tmp_path),
            "CERTCTL_AUTH_TYPE": "APIKEY",
            "CERTCTL_API_KEYS_NAMED": "ops:k-ops-1:admin, ops:k-ops-2:admin ,ci:k-ci",
            "CERTCTL_AUTH_SECRET": "legacy-a,legacy-b",
            "CERTCTL_CORS_ORIGINS": "https://ui.example.com, http://localhost:3000,https://[::1]:8080",
            "CERTCTL_RATE_LIMIT_ENABLED": "off",
            "CERTCTL_RATE_LIMIT_PER_USER_RPS": "5",
            "CERTCTL_RATE_LIMIT_PER_USER_BURST": "7",
            "CERTCTL_LOG_LEVEL": "WARN",
            "CERTCTL_LOG_FORMAT": "Text",
            "CERTCTL_DATABASE_URL": "postgres://certctl@db/certctl?sslmode=require",
            "CERTCTL_KEYGEN_MODE": "Server",
        }
    )
    assert (settings.host, settings.port, settings.workers, settings.data_dir) == ("::1", 9443, 4, tmp_path)
    assert settings.auth_type == "api-key"
    assert settings.api_keys == (
        NamedKey("ops", "k-ops-1", True),
        NamedKey("ops", "k-ops-2", True),  # rotation: same name, same admin flag
        NamedKey("ci", "k-ci", False),
        NamedKey("legacy-key-1", "legacy-a", False),
        NamedKey("legacy-key-2", "legacy-b", False),
    )
    assert settings.cors_origins == ("https://ui.example.com", "http://localhost:3000", "https://[::1]:8080")
    assert not settings.rate_limit_enabled
    assert (settings.user_rps, settings.user_burst) == (5.0, 7)
    assert (settings.log_level, settings.log_format, settings.keygen_mode) == ("warn", "text", "server")


def test_overrides_are_validated_too() -> None:
    base = Settings.from_env({})
    assert base.with_overrides(port=9000, host=None).port == 9000
    with pytest.raises(SettingsError, match="CERTCTL_SERVER_WORKERS"):
        base.with_overrides(workers=0)
    with pytest.raises(SettingsError, match="CERTCTL_AUTH_TYPE"):
        Settings.from_env({"CERTCTL_AUTH_TYPE": "none"}).with_overrides(host="0.0.0.0")


def _certctl(*runs: tuple[list[str], dict[str, str]], cwd: Path) -> list[tuple[int, str]]:
    """Run several `certctl` invocations at once (start-up dominates); return (exit status, stderr) of each."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CERTCTL_")}
    procs = [
        subprocess.Popen(
            [str(CERTCTL), *args], env={**clean, **env}, cwd=cwd,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        for args, env in runs
    ]
    results = []
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        results.append((proc.returncode, err))
    return results


def test_server_refuses_to_start_on_a_bad_value_or_an_unreachable_database(tmp_path: Path) -> None:
    bad_env, bad_flag, exposed, no_db = _certctl(
        (["server"], {"CERTCTL_SERVER_PORT": "99999"}),
        (["server", "--workers", "0"], {}),
        (["server", "--host", "0.0.0.0"], {"CERTCTL_AUTH_TYPE": "none", "CERTCTL_DATA_DIR": str(tmp_path / "a")}),
        (
            ["server"],
            {"CERTCTL_DATA_DIR": str(tmp_path / "b"), "CERTCTL_DATABASE_URL": "postgresql://certctl@127.0.0.1:1/x"},
        ),
        cwd=tmp_path,
    )
    assert bad_env[0] == 2
    assert "configuration error: CERTCTL_SERVER_PORT: 99999 is not a TCP port" in bad_env[1]
    assert bad_flag[0] == 2 and "CERTCTL_SERVER_WORKERS" in bad_flag[1]
    assert exposed[0] == 2 and "loopback" in exposed[1]
    assert not (tmp_path / "a").exists(), "nothing is created when the settings are refused"
    assert not (tmp_path / "certctl-data").exists()
    assert no_db[0] == 1 and "certctl: cannot start:" in no_db[1]


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"CERTCTL_SIGNER_DRIVER": "bogus"}, "CERTCTL_SIGNER_DRIVER"),
        ({"CERTCTL_SIGNER_DRIVER": "pkcs11"}, "CERTCTL_PKCS11_MODULE"),
        ({"CERTCTL_PKCS11_MODULE": "/nonexistent/libsofthsm2.so"}, "CERTCTL_PKCS11_MODULE"),
    ],
)
def test_signer_settings_are_checked_before_anything_starts(env: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env(env)

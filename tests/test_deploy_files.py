"""The deployment files in deploy/: systemd units, the Dockerfile and the Helm chart.

What is checked, and what is not:
- systemd: `systemd-analyze verify` accepts both units without a warning (unknown keys, bad values), with
  ExecStart pointed at this checkout's `certctl`; the hardening settings are present.
- Dockerfile: parsed here (no docker engine on the test machines, so the image is not built): python:3.11-slim
  stages, every file it COPYs from the build context exists and is not excluded by .dockerignore, a non-root USER,
  a HEALTHCHECK whose Python compiles and asks /health over HTTPS, the entrypoint runs `certctl server`.
- Helm: `helm` is not installed here, so the chart is not rendered. Checked instead: Chart.yaml and values.yaml
  parse; every `{{ ... }}` action is closed and every if/range/with/define has its end; every `.Values.x.y` the
  templates read exists in values.yaml; every included template is defined; the probes ask /health and /ready
  over HTTPS; the documented failures (several replicas without PostgreSQL or shared keys) are in the chart.
- Everywhere: every CERTCTL_* variable the files set is one certctl reads (named in docs/configuration.md or
  the code).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "certctl"
CERTCTL = Path(sys.executable).parent / "certctl"


def _known_settings() -> set[str]:
    text = (ROOT / "docs" / "configuration.md").read_text()
    for path in (ROOT / "certctl").rglob("*.py"):
        text += path.read_text()
    return set(re.findall(r"CERTCTL_[A-Z0-9_]+", text))


def _settings_used(text: str) -> set[str]:
    return set(re.findall(r"CERTCTL_[A-Z0-9_]+", text))


# ---- systemd -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("unit", ["certctl-server.service", "certctl-agent.service"])
def test_systemd_unit_verifies_and_is_hardened(tmp_path: Path, unit: str) -> None:
    text = (DEPLOY / "systemd" / unit).read_text()
    local = tmp_path / unit
    local.write_text(text.replace("/opt/certctl/.venv/bin/certctl", str(CERTCTL)))
    done = subprocess.run(["systemd-analyze", "verify", str(local)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0 and not done.stderr.strip(), done.stdout + done.stderr
    keys = dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                       "PrivateTmp": "yes", "RestrictSUIDSGID": "yes", "CapabilityBoundingSet": "",
                       "UMask": "0077"}.items():
        assert keys.get(key) == value, (key, keys.get(key))
    assert keys.get("DynamicUser") == "yes" or keys.get("User") == "certctl"
    command = "server" if "server" in unit else "agent"
    assert keys["ExecStart"].split()[-1] == command
    assert _settings_used(text) <= _known_settings()


def test_systemd_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above is a real one: a misspelt key and a bad value are reported."""
    text = (DEPLOY / "systemd" / "certctl-server.service").read_text()
    broken = tmp_path / "broken.service"
    broken.write_text(text.replace("/opt/certctl/.venv/bin/certctl", str(CERTCTL))
                      .replace("ProtectSystem=strict", "ProtectSystem=sometimes"))
    done = subprocess.run(["systemd-analyze", "verify", str(broken)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert "protect system value" in done.stderr.lower(), done.stderr


# ---- Dockerfile ----------------------------------------------------------------------------------------------
def _instructions(path: Path) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _dockerignored(relative: str, patterns: list[str]) -> bool:
    from fnmatch import fnmatch

    return any(fnmatch(relative, p.lstrip("/")) or fnmatch(relative.split("/")[0], p.lstrip("/")) for p in patterns)


def test_dockerfile_copies_existing_files_runs_as_non_root_and_checks_health() -> None:
    steps = _instructions(DEPLOY / "docker" / "Dockerfile")
    froms = [rest for word, rest in steps if word == "FROM"]
    assert froms and all(f.split()[0] == "python:3.11-slim" for f in froms), froms
    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    copied = []
    for word, rest in steps:
        if word != "COPY" or rest.startswith("--from"):
            continue
        *sources, _dest = shlex.split(rest)
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such file in the build context"
            assert not _dockerignored(source, ignore), f"COPY {source} is excluded by .dockerignore"
            copied.append(source)
    assert {"pyproject.toml", "certctl"} <= set(copied)
    # The package data the server needs at run time (migrations) is inside the copied package.
    assert (ROOT / "certctl" / "store" / "migrations" / "env.py").exists()

    final = steps[max(i for i, (word, _) in enumerate(steps) if word == "FROM"):]
    users = [rest for word, rest in final if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root"), users
    health = [rest for word, rest in final if word == "HEALTHCHECK"]
    assert len(health) == 1
    exec_form = yaml.safe_load(health[0][health[0].index("CMD") + 3:].strip())
    assert exec_form[:2] == ["python", "-c"]
    compile(exec_form[2], "HEALTHCHECK", "exec")
    assert "https://127.0.0.1:" in exec_form[2] and "/health" in exec_form[2]
    entry = yaml.safe_load(next(rest for word, rest in final if word == "ENTRYPOINT"))
    cmd = yaml.safe_load(next(rest for word, rest in final if word == "CMD"))
    assert entry[-1] == "certctl" and cmd == ["server"]
    assert ("EXPOSE", "8443") in final
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    assert _settings_used(text) <= _known_settings()


# ---- Helm chart -----------------------------------------------------------------------------------------------
_ACTION = re.compile(r"{{-?\s*(.*?)\s*-?}}", re.S)
_BLOCK_OPEN = re.compile(r"^(if|range|with|define)\b")


def _templates() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((CHART / "templates").iterdir()) if p.is_file()}


def _has_path(values: dict[str, Any], dotted: str) -> bool:
    node: Any = values
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_helm_chart_templates_are_well_formed_and_read_only_defined_values() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "certctl" and chart["version"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    templates = _templates()
    assert {"deployment.yaml", "service.yaml", "secret.yaml", "ingress.yaml", "_helpers.tpl"} <= set(templates)

    defined: set[str] = set()
    included: set[str] = set()
    for name, text in templates.items():
        assert text.count("{{") == text.count("}}"), name
        depth = 0
        for action in _ACTION.findall(text):
            if action.startswith("/*"):
                continue
            if _BLOCK_OPEN.match(action):
                depth += 1
            elif action == "end":
                depth -= 1
                assert depth >= 0, f"{name}: 'end' without a block"
            for dotted in re.findall(r"\.Values\.([A-Za-z0-9_.]+)", action):
                assert _has_path(values, dotted), f"{name}: .Values.{dotted} is not in values.yaml"
            defined.update(re.findall(r'define\s+"([^"]+)"', action))
            included.update(re.findall(r'include\s+"([^"]+)"', action))
        assert depth == 0, f"{name}: a block is not closed"
    assert included <= defined, included - defined

    deployment = templates["deployment.yaml"]
    assert re.search(r"readinessProbe:\s*\n\s*httpGet: \{path: /ready, port: https, scheme: HTTPS\}", deployment)
    assert re.search(r"livenessProbe:\s*\n\s*httpGet: \{path: /health, port: https, scheme: HTTPS\}", deployment)
    assert "preStop" in deployment and "terminationGracePeriodSeconds" in deployment
    helpers = templates["_helpers.tpl"]
    assert "replicaCount > 1 needs an external PostgreSQL" in helpers
    assert "keys.existingClaim" in helpers
    # Values for the documented setup: external PostgreSQL, several replicas, secrets from Secrets.
    assert values["replicaCount"] >= 2
    assert {"existingSecret", "url", "maxConns"} <= set(values["database"])
    assert {"existingSecret", "encryptionKey", "apiKeysNamed"} <= set(values["secrets"])
    assert _settings_used("".join(templates.values())) <= _known_settings()


# ---- the high-availability guide's haproxy configuration -------------------------------------------------------
def test_high_availability_guide_haproxy_config_is_valid(tmp_path: Path) -> None:
    """The guide's haproxy block, with its certificate paths pointed at real files, passes `haproxy -c`; it keeps
    the settings the rolling-restart test depends on (tests/failure_rig.py: Balancer)."""
    from certctl.pki.selfsigned import ensure_server_certificate

    guide = (ROOT / "docs" / "operator" / "high-availability.md").read_text()
    blocks = re.findall(r"```haproxy\n(.*?)```", guide, re.S)
    assert len(blocks) == 1
    cert, key = ensure_server_certificate(tmp_path, "127.0.0.1")
    pem = tmp_path / "front.pem"
    pem.write_text(cert.read_text() + key.read_text())
    config = tmp_path / "haproxy.cfg"
    config.write_text(blocks[0].replace("/etc/haproxy/certctl.pem", str(pem))
                      .replace("/etc/haproxy/certctl-replicas-ca.pem", str(cert)))
    done = subprocess.run(["haproxy", "-c", "-f", str(config)], capture_output=True, text=True, timeout=30,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    rig = (ROOT / "tests" / "failure_rig.py").read_text()
    for line in ("option httpchk GET /ready", "http-check expect status 200", "retry-on conn-failure empty-response",
                 "option redispatch 1"):
        assert line in blocks[0] and line in rig, line

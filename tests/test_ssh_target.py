"""SSH target against a real OpenSSH server: `sshd` started by this module on 127.0.0.1 (a free high port) with a
private sshd_config (host key, authorized_keys and pid file in a temp dir, internal-sftp), run as the current user.
Proves: files land by rename (new inode, the old one kept as the backup), unchanged content writes nothing, a
wrong host key is refused before authentication, a failing reload or verification rolls back, and no secret reaches
results or logs."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from certctl.agent.deploy import DeployEngine
from certctl.connectors.targets.registry import create_connector
from certctl.connectors.targets.ssh import parse_host_key
from certctl.connectors.tlsprobe import ProbeResult
from certctl.domain.errors import ValidationError
from tests.servers import ThrowawayCA, free_port

PASSPHRASE = "client-key-passphrase-9931"


@dataclass
class Sshd:
    port: int
    host_key_line: str  # as known_hosts has it
    host_fingerprint: str
    client_key: str  # path, encrypted with PASSPHRASE
    other_host_key_line: str  # a key this server does not have
    log: Path
    remote: Path  # where the deployed files go


def _keygen(path: Path, passphrase: str = "") -> None:
    # -a 2: few bcrypt KDF rounds for the passphrase, so each test connection decrypts the key quickly.
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-a", "2", "-N", passphrase, "-C", "", "-f", str(path)],
                   check=True)


def _sshd_binary() -> str:
    found = shutil.which("sshd") or "/usr/sbin/sshd"
    assert os.access(found, os.X_OK), "sshd (openssh-server) is required: .ci/system-deps.sh installs it"
    return found


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    root = tmp_path_factory.mktemp("sshd")
    os.chmod(root, 0o755)
    _keygen(root / "host")
    _keygen(root / "other")
    _keygen(root / "client", PASSPHRASE)
    (root / "authorized_keys").write_text((root / "client.pub").read_text())
    port = free_port()
    config = root / "sshd_config"
    config.write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {root / "host"}
PidFile {root / "sshd.pid"}
AuthorizedKeysFile {root / "authorized_keys"}
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin prohibit-password
Subsystem sftp internal-sftp
LogLevel VERBOSE
""")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation directory sshd insists on
    log = root / "sshd.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([_sshd_binary(), "-D", "-e", "-f", str(config)], stdout=out, stderr=out,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            assert process.poll() is None, log.read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "sshd did not start"
                time.sleep(0.02)
        fingerprint = subprocess.run(["ssh-keygen", "-lf", str(root / "host.pub")], capture_output=True, text=True,
                                     check=True).stdout.split()[1]
        remote = root / "remote"
        remote.mkdir()
        yield Sshd(port, f"[127.0.0.1]:{port} {(root / 'host.pub').read_text().strip()}", fingerprint,
                   str(root / "client"), (root / "other.pub").read_text().strip(), log, remote)
    finally:
        process.terminate()
        process.wait(5)


@pytest.fixture(scope="module")
def ca() -> ThrowawayCA:
    return ThrowawayCA("ssh tests")


def _target(sshd: Sshd, directory: Path, engine: DeployEngine | None = None, **config: Any) -> Any:
    base = {"host": "127.0.0.1", "port": sshd.port, "user": os.environ.get("USER") or _user(),
            "private_key_path": sshd.client_key, "passphrase": PASSPHRASE, "host_key": sshd.host_key_line,
            "cert_path": str(directory / "cert.pem"), "key_path": str(directory / "key.pem"),
            "chain_path": str(directory / "chain.pem"), "timeout": 5}
    return create_connector("SSH", {**base, **config}, runner=engine or DeployEngine(directory / "state"))


def _user() -> str:
    import pwd
    return pwd.getpwuid(os.getuid()).pw_name


def _read(path: str) -> str:
    return Path(path).read_text()


def _dir(sshd: Sshd, name: str) -> Path:
    directory = sshd.remote / name
    directory.mkdir()
    return directory


def _certctl_files(directory: Path, mark: str) -> list[str]:
    return sorted(n for n in os.listdir(directory) if mark in n)


def test_config_requires_a_host_key_and_credentials() -> None:
    with pytest.raises(ValidationError) as err:
        create_connector("SSH", {"host": "h", "user": "u", "cert_path": "/c", "key_path": "/k"},
                         runner=DeployEngine("/nonexistent"))
    assert "host_key is required" in err.value.message and "private_key_path" in err.value.message
    with pytest.raises(ValidationError) as err:
        create_connector("SSH", {"host": "h", "user": "u", "cert_path": "/c", "key_path": "/k",
                                 "auth_method": "password", "password": "hunter2-pass", "host_key": "SHA256:nope"},
                         runner=DeployEngine("/nonexistent"))
    assert "host_key fingerprint" in err.value.message and "hunter2-pass" not in err.value.message
    assert parse_host_key("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl") \
        .fingerprint.startswith("SHA256:")


async def test_deploy_lands_by_rename_then_unchanged(sshd: Sshd, ca: ThrowawayCA) -> None:
    directory = _dir(sshd, "atomic")
    reloads = directory / "reloads"
    old, new = ca.issue("old.example"), ca.issue("new.example")
    target = _target(sshd, directory, reload_command=["sh", "-c", f"echo reloaded >> {reloads}"])
    first = await target.deploy(old.request())
    assert first.success and first.status == "deployed", first.message
    assert (directory / "key.pem").read_text() == old.key_pem.strip() + "\n"
    assert os.stat(directory / "key.pem").st_mode & 0o777 == 0o600
    assert os.stat(directory / "cert.pem").st_mode & 0o777 == 0o644
    old_inode = os.stat(directory / "cert.pem").st_ino

    result = await target.deploy(new.request())
    assert result.success and result.status == "deployed", result.message
    assert (directory / "cert.pem").read_text() == new.cert_pem
    assert (directory / "chain.pem").read_text() == new.chain_pem
    assert os.stat(directory / "cert.pem").st_ino != old_inode  # a rename, not an overwrite in place
    backups = _certctl_files(directory, ".certctl-bak.")
    cert_backups = [b for b in backups if b.startswith("cert.pem")]
    assert len(cert_backups) == 1 and os.stat(directory / cert_backups[0]).st_ino == old_inode  # the old inode
    assert (directory / cert_backups[0]).read_text() == old.cert_pem
    assert not _certctl_files(directory, ".certctl-tmp.")
    assert reloads.read_text().count("reloaded") == 2
    assert result.verification.status == "skipped"

    again = await target.deploy(new.request())
    assert again.success and again.status == "unchanged" and not again.changed
    assert reloads.read_text().count("reloaded") == 2 and _certctl_files(directory, ".certctl-bak.") == backups


async def test_wrong_host_key_is_refused_before_authentication(sshd: Sshd, ca: ThrowawayCA) -> None:
    directory = _dir(sshd, "mitm")
    auth_before = sshd.log.read_text().count("publickey for")
    for pin in (sshd.other_host_key_line, "SHA256:" + "A" * 43):
        result = await _target(sshd, directory, host_key=pin).deploy(ca.issue().request())
        assert result.status == "failed" and "not the pinned" in result.message, result.message
        assert "nothing was sent" in result.message
    assert os.listdir(directory) == []
    assert sshd.log.read_text().count("publickey for") == auth_before  # no authentication was even tried
    # The same server with its real fingerprint as the pin is accepted.
    ok = await _target(sshd, directory, host_key=sshd.host_fingerprint).deploy(ca.issue().request())
    assert ok.success, ok.message


async def test_failing_reload_rolls_back(sshd: Sshd, ca: ThrowawayCA) -> None:
    directory = _dir(sshd, "rollback")
    old, new = ca.issue("old.example"), ca.issue("new.example")
    assert (await _target(sshd, directory).deploy(old.request())).success
    inodes = {n: os.stat(directory / n).st_ino for n in ("cert.pem", "key.pem", "chain.pem")}
    marker = directory / "reloaded-once"
    reload = ["sh", "-c", f"if [ -e {marker} ]; then exit 0; fi; touch {marker}; echo broken config; exit 3"]
    result = await _target(sshd, directory, reload_command=reload).deploy(new.request())
    assert not result.success and result.status == "rolled_back" and result.rolled_back, result.message
    assert [s.name for s in result.steps] == ["reload", "rollback-reload"]
    assert result.steps[0].exit_code == 3 and "broken config" in result.steps[0].output
    assert (directory / "cert.pem").read_text() == old.cert_pem  # the leaf alone: chain_path is set
    assert (directory / "key.pem").read_text() == old.key_pem.strip() + "\n"
    assert {n: os.stat(directory / n).st_ino for n in inodes} == inodes  # the very same files are back
    assert not _certctl_files(directory, ".certctl-tmp.") and not _certctl_files(directory, ".certctl-bak.")


async def test_failed_verification_rolls_back(sshd: Sshd, ca: ThrowawayCA) -> None:
    directory = _dir(sshd, "verify")
    old, new = ca.issue("old.example"), ca.issue("new.example")

    async def prober(host: str, port: int, *, server_name: str | None = None, timeout: float = 5) -> ProbeResult:
        now = datetime.now(UTC)
        return ProbeResult(host, port, old.fingerprint, (), "CN=old", "CN=ca", "1", now, now, "TLSv1.3", "x", 1.0)

    async def no_sleep(_: float) -> None:
        return None

    engine = DeployEngine(directory / "state", prober=prober, sleep=no_sleep)
    assert (await _target(sshd, directory, engine).deploy(old.request())).success
    result = await _target(sshd, directory, engine, verify_endpoint="127.0.0.1:8443",
                           verify_attempts=2).deploy(new.request())
    assert result.status == "rolled_back" and result.verification.status == "failed"
    assert (directory / "key.pem").read_text() == old.key_pem.strip() + "\n"


async def test_secrets_stay_out_of_results_and_logs(sshd: Sshd, ca: ThrowawayCA,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    directory = _dir(sshd, "secrets")
    client_key = _read(sshd.client_key)
    cert = ca.issue("secret.example")
    reload = ["sh", "-c", f"cat {directory / 'key.pem'}; exit 1"]  # a reload that prints the deployed key
    results = [
        await _target(sshd, directory, private_key_path=None, private_key=client_key).deploy(cert.request()),
        await _target(sshd, directory, reload_command=reload).deploy(ca.issue("next.example").request()),
        await _target(sshd, directory, passphrase="wrong-passphrase-1234").deploy(cert.request()),
    ]
    assert [r.status for r in results] == ["deployed", "rollback_failed", "failed"]
    text = json.dumps([r.to_dict() for r in results]) + caplog.text + sshd.log.read_text()
    key_body = [line for line in cert.key_pem.splitlines() if not line.startswith("-----")]
    for secret in (PASSPHRASE, "wrong-passphrase-1234", *client_key.splitlines()[1:-1], *key_body):
        assert secret not in text
    assert "PRIVATE KEY-----\n" not in text

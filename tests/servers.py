"""Real TLS servers for deployment tests: nginx, apache2 and haproxy from Debian packages, each with a private
configuration in a temporary directory, listening on 127.0.0.1 on a free high port, in the foreground as a
child of the test (never the system service), and stopped with its whole process group afterwards.

Also a throwaway two-level CA whose leaves come with their keys (what an agent would hold).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import ssl
import subprocess
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certctl.connectors.targets.base import DeployRequest


# ---- certificates ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class IssuedCert:
    cert_pem: str  # the leaf alone
    chain_pem: str  # the issuing CA
    key_pem: str = field(repr=False)
    fingerprint: str  # SHA-256 of the leaf DER, lowercase hex
    common_name: str

    @property
    def fullchain_pem(self) -> str:
        return self.cert_pem + self.chain_pem

    def request(self, job_id: str = "job-test") -> DeployRequest:
        return DeployRequest(cert_pem=self.cert_pem, chain_pem=self.chain_pem, key_pem=self.key_pem,
                             certificate_id="mc-test", job_id=job_id)


class ThrowawayCA:
    """A root and an issuing CA (ECDSA) living only as long as the test."""

    def __init__(self, name: str = "certctl deploy tests") -> None:
        now = datetime.now(UTC)
        self._root_key = ec.generate_private_key(ec.SECP256R1())
        root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} root")])
        self.root = self._ca(root_name, root_name, self._root_key.public_key(), self._root_key, now, None)
        self._key = ec.generate_private_key(ec.SECP256R1())
        issuing_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} issuing")])
        self.issuing = self._ca(issuing_name, root_name, self._key.public_key(), self._root_key, now, 0)

    @staticmethod
    def _ca(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey,
            signer: ec.EllipticCurvePrivateKey, now: datetime, path_length: int | None) -> x509.Certificate:
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=30))
                .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
                .sign(signer, hashes.SHA256()))

    def issue(self, common_name: str = "localhost") -> IssuedCert:
        now = datetime.now(UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
                .issuer_name(self.issuing.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=7))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
                .sign(self._key, hashes.SHA256()))
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
        return IssuedCert(
            cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
            chain_pem=self.issuing.public_bytes(serialization.Encoding.PEM).decode(),
            key_pem=key_pem,
            fingerprint=hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest(),
            common_name=common_name,
        )


def served_fingerprint(port: int, host: str = "127.0.0.1") -> str:
    """What a plain TLS client sees (Python's ssl module, independent of certctl's probe)."""
    pem = ssl.get_server_certificate((host, port), timeout=5)
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


def settled_fingerprint(port: int, expected: str, *, within: float = 5.0) -> str:
    """What the server serves once it settles: right after a reload nginx's old worker still answers
    some handshakes for ~100 ms. Polls until five handshakes in a row show `expected` (then returns it),
    or returns the last fingerprint seen when that does not happen within `within` seconds."""
    deadline = time.monotonic() + within
    streak = 0
    seen = ""
    while streak < 5 and time.monotonic() < deadline:
        seen = served_fingerprint(port)
        streak = streak + 1 if seen == expected else 0
        time.sleep(0.02)
    return seen


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---- servers ----------------------------------------------------------------------------------------
class RealServer(ABC):
    """One server process group. Subclasses write a config and say how to start, test and reload."""

    kind: str
    target_type: str

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = root / "server-output.log"
        self._held: list[socket.socket] = []

    # what a subclass provides
    @abstractmethod
    def write_config(self) -> None: ...

    @abstractmethod
    def start_argv(self) -> list[str]: ...

    @abstractmethod
    def install(self, cert: IssuedCert) -> None: ...

    @abstractmethod
    def target_config(self) -> dict[str, Any]: ...

    @property
    @abstractmethod
    def config_path(self) -> Path: ...

    def break_config(self) -> None:
        """A syntax error the running server has not read yet."""
        with self.config_path.open("a") as handle:
            handle.write("\ncertctl_this_is_not_a_directive on\n")

    def break_reload_silently(self) -> None:
        """A change the reload command accepts but the running server cannot apply, so it keeps its old
        configuration and certificate (only a TLS check can tell). Only servers with such a failure mode have it."""
        raise TypeError(f"{self.kind} has no reload that fails silently to simulate")

    def common_target_config(self) -> dict[str, Any]:
        return {"verify_endpoint": f"127.0.0.1:{self.port}", "verify_attempts": 12,
                "verify_backoff_seconds": 0.05, "verify_max_backoff_seconds": 0.5, "verify_timeout_seconds": 3,
                "command_timeout_seconds": 20}

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    # process handling
    def start(self, cert: IssuedCert) -> RealServer:
        self.install(cert)
        self.write_config()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.start_argv(), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.root,
                                            env=self.environment())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.kind} exited with {self.process.returncode}:\n{self.output()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        raise AssertionError(f"{self.kind} did not listen on {self.port} within 10 s:\n{self.output()}")

    def output(self) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        for extra in self.root.glob("*error.log"):
            text += extra.read_text(errors="replace")
        return text[-4000:]

    def stop(self) -> None:
        if self.process is None:
            return
        pgid = self.process.pid  # start_new_session: the group id is the leader's pid
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + 5
            while _group_alive(pgid) and time.monotonic() < deadline:
                self.process.poll()  # reap the leader as soon as it exits
                time.sleep(0.02)
            if not _group_alive(pgid):
                break
        self.process.wait(timeout=5)
        for sock in self._held:
            sock.close()
        assert not _group_alive(pgid), f"{self.kind} left processes behind in group {pgid}"
        self.process = None

    def __enter__(self) -> RealServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # Zombies still count for kill(0); a group of zombies only is gone for our purposes.
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


class Nginx(RealServer):
    kind = "nginx"
    target_type = "NGINX"

    @property
    def config_path(self) -> Path:
        return self.root / "nginx.conf"

    def _base(self) -> list[str]:
        return ["nginx", "-p", str(self.root), "-c", str(self.config_path), "-e", str(self.root / "error.log")]

    def install(self, cert: IssuedCert) -> None:
        (self.root / "cert.pem").write_text(cert.fullchain_pem)
        (self.root / "key.pem").write_text(cert.key_pem)
        (self.root / "key.pem").chmod(0o600)

    def write_config(self) -> None:
        temp = self.root / "tmp"
        temp.mkdir(exist_ok=True)
        temps = " ".join(f"{kind}_temp_path {temp};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi",
                                                                   "scgi"))
        self.config_path.write_text(f"""daemon off;
master_process on;
worker_processes 1;
pid {self.root}/nginx.pid;
error_log {self.root}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log off;
  {temps}
  server {{
    listen 127.0.0.1:{self.port} ssl;
    ssl_certificate {self.root}/cert.pem;
    ssl_certificate_key {self.root}/key.pem;
    return 200 "ok";
  }}
}}
""")

    def start_argv(self) -> list[str]:
        return self._base()

    def break_reload_silently(self) -> None:
        # `nginx -s reload` parses the whole configuration (and loads the certificates) before it signals,
        # so a syntax error fails the command; a port already in use only fails in the master, which then
        # keeps its old configuration.
        busy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        self._held.append(busy)
        text = self.config_path.read_text().rstrip()
        assert text.endswith("}")
        self.config_path.write_text(text[:-1] + f"  server {{ listen 127.0.0.1:{busy.getsockname()[1]}; }}\n}}\n")

    def target_config(self) -> dict[str, Any]:
        base = " ".join(self._base())
        return {"cert_path": str(self.root / "cert.pem"), "key_path": str(self.root / "key.pem"),
                "validate_command": f"{base} -t -q", "reload_command": f"{base} -s reload",
                **self.common_target_config()}


class Apache(RealServer):
    kind = "apache2"
    target_type = "Apache"
    modules = Path("/usr/lib/apache2/modules")

    @property
    def config_path(self) -> Path:
        return self.root / "httpd.conf"

    def install(self, cert: IssuedCert) -> None:
        (self.root / "cert.pem").write_text(cert.fullchain_pem)
        (self.root / "key.pem").write_text(cert.key_pem)
        (self.root / "key.pem").chmod(0o600)

    def write_config(self) -> None:
        # As root, Apache insists on switching its children to another user; as anyone else it runs as them.
        user = "User www-data\nGroup www-data\n" if os.geteuid() == 0 else ""
        modules = "\n".join(f"LoadModule {name}_module {self.modules}/mod_{name}.so"
                            for name in ("mpm_event", "authz_core", "socache_shmcb", "ssl"))
        self.config_path.write_text(f"""ServerRoot {self.root}
ServerName localhost
Listen 127.0.0.1:{self.port}
PidFile {self.root}/httpd.pid
ErrorLog {self.root}/error.log
LogLevel error
DefaultRuntimeDir {self.root}
Mutex file:{self.root} default
{modules}
{user}StartServers 1
ServerLimit 1
ThreadsPerChild 8
MinSpareThreads 1
MaxSpareThreads 8
MaxRequestWorkers 8
DocumentRoot {self.root}
SSLSessionCache none
SSLEngine on
SSLCertificateFile {self.root}/cert.pem
SSLCertificateKeyFile {self.root}/key.pem
""")

    def start_argv(self) -> list[str]:
        return ["apache2", "-f", str(self.config_path), "-DFOREGROUND"]

    def target_config(self) -> dict[str, Any]:
        return {"cert_path": str(self.root / "cert.pem"), "key_path": str(self.root / "key.pem"),
                "validate_command": f"apache2 -f {self.config_path} -t",
                "reload_command": f"apache2 -f {self.config_path} -k graceful",
                **self.common_target_config()}


class HAProxy(RealServer):
    kind = "haproxy"
    target_type = "HAProxy"

    @property
    def config_path(self) -> Path:
        return self.root / "haproxy.cfg"

    def install(self, cert: IssuedCert) -> None:
        pem = self.root / "site.pem"
        pem.write_text(cert.fullchain_pem + cert.key_pem)
        pem.chmod(0o600)

    def write_config(self) -> None:
        self.config_path.write_text(f"""global
  log stderr format raw local0 err
defaults
  mode http
  timeout connect 2s
  timeout client 5s
  timeout server 5s
frontend tls
  bind 127.0.0.1:{self.port} ssl crt {self.root}/site.pem
  http-request return status 200 content-type text/plain string ok
""")

    def break_reload_silently(self) -> None:
        self.break_config()  # the master fails to load it and keeps the old worker; the signal "succeeds"

    def start_argv(self) -> list[str]:
        # Master-worker mode: SIGUSR2 to the master re-reads the config; a failed load keeps the old worker.
        return ["haproxy", "-W", "-f", str(self.config_path)]

    def target_config(self) -> dict[str, Any]:
        assert self.process is not None, "start the server first (the reload signals its master)"
        return {"pem_path": str(self.root / "site.pem"), "validate_command": f"haproxy -c -f {self.config_path}",
                "reload_command": f"kill -USR2 {self.process.pid}", **self.common_target_config()}


class Caddy(RealServer):
    """Caddy with a JSON config: the certificate comes from files (`load_files`, file mode) or, with
    `api_entry`, from a `load_pem` entry with that @id (as a previous API-mode deploy leaves it)."""

    kind = "caddy"
    target_type = "Caddy"

    def __init__(self, root: Path, *, api_entry: str | None = None, no_tls_app: bool = False) -> None:
        super().__init__(root)
        self.admin_port = free_port()
        self.api_entry = api_entry
        self.no_tls_app = no_tls_app
        self._cert: IssuedCert | None = None

    @property
    def config_path(self) -> Path:
        return self.root / "caddy.json"

    @property
    def admin(self) -> str:
        return f"127.0.0.1:{self.admin_port}"

    def install(self, cert: IssuedCert) -> None:
        self._cert = cert
        (self.root / "cert.pem").write_text(cert.fullchain_pem)
        (self.root / "key.pem").write_text(cert.key_pem)
        (self.root / "key.pem").chmod(0o600)

    def write_config(self) -> None:
        assert self._cert is not None
        if self.api_entry:
            entry = {"@id": self.api_entry, "certificate": self._cert.fullchain_pem, "key": self._cert.key_pem,
                     "tags": ["certctl"]}
            certificates: dict[str, Any] = {"load_pem": [entry]}
        else:
            certificates = {"load_files": [{"certificate": f"{self.root}/cert.pem", "key": f"{self.root}/key.pem"}]}
        apps: dict[str, Any] = {"http": {"grace_period": "100ms", "servers": {"s": {
            "listen": [f"127.0.0.1:{self.port}"],
            "routes": [{"handle": [{"handler": "static_response", "body": "ok"}]}],
            # Clients without SNI (the tests' plain TLS client) get the localhost certificate.
            "tls_connection_policies": [{"default_sni": "localhost"}],
            "automatic_https": {"disable": True},
        }}}}
        if not self.no_tls_app:
            apps["tls"] = {"certificates": certificates}
        config = {"admin": {"listen": self.admin}, "logging": {"logs": {"default": {"level": "ERROR"}}},
                  "storage": {"module": "file_system", "root": str(self.root / "data")}, "apps": apps}
        self.config_path.write_text(json.dumps(config, indent=1))

    def break_config(self) -> None:
        with self.config_path.open("a") as handle:
            handle.write("\n{ this is not json\n")

    def start_argv(self) -> list[str]:
        return ["caddy", "run", "--config", str(self.config_path)]

    def environment(self) -> dict[str, str]:
        # Caddy keeps its autosave and data under HOME / XDG dirs: the test's, never the machine's.
        return {**os.environ, "HOME": str(self.root), "XDG_DATA_HOME": str(self.root / "data"),
                "XDG_CONFIG_HOME": str(self.root / "config")}

    def target_config(self) -> dict[str, Any]:
        base = {**self.common_target_config(), "verify_server_name": "localhost"}
        if self.api_entry or self.no_tls_app:
            return {**base, "mode": "api", "admin_api": f"http://{self.admin}",
                    "api_object_id": self.api_entry or "certctl-web"}
        return {**base, "mode": "file", "cert_dir": str(self.root),
                "validate_command": f"caddy validate --config {self.config_path}",
                "reload_command": f"caddy reload --config {self.config_path} --address {self.admin} --force"}


SERVERS: dict[str, type[RealServer]] = {"nginx": Nginx, "apache2": Apache, "haproxy": HAProxy, "caddy": Caddy}

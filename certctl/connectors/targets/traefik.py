"""Traefik (file provider): Traefik watches its dynamic configuration directory and reloads by itself.

Files in `cert_dir`: `cert_file` (leaf + chain), `key_file`; optionally `dynamic_config_file`, a small
YAML that points Traefik's TLS store at those two files (written once, then unchanged). No test or reload
command by default; verification (`verify_endpoint`) is how the agent learns Traefik picked them up.
"""

from __future__ import annotations

import json
import os

from certctl.connectors.targets.base import (
    COMMON_FIELDS,
    ConfigField,
    FileTarget,
    command_fields,
    file_meta_fields,
    path_field,
)
from certctl.connectors.targets.plan import PlannedFile
from certctl.pki.bundle import DeployBundle


class TraefikTarget(FileTarget):
    type_name = "Traefik"
    description = "Traefik file provider: cert and key in a watched directory"
    fields = (
        path_field("cert_dir", required=True, doc="a directory Traefik's file provider reads"),
        ConfigField("cert_file", "filename", default="cert.pem"),
        ConfigField("key_file", "filename", default="key.pem"),
        ConfigField("dynamic_config_file", "filename", default="",
                    doc="if set, a YAML file naming the two files under tls.certificates"),
        *command_fields("", ""),
        *file_meta_fields("cert"), *file_meta_fields("key"),
        *COMMON_FIELDS,
    )

    @classmethod
    def check_config(cls, config: dict[str, object]) -> list[str]:
        names = [config["cert_file"], config["key_file"], config.get("dynamic_config_file") or None]
        given = [n for n in names if n]
        return ["cert_file, key_file and dynamic_config_file must differ"] if len(set(given)) != len(given) else []

    def planned_files(self, bundle: DeployBundle | None) -> list[PlannedFile]:
        c = self.config
        cert_path = os.path.join(c["cert_dir"], c["cert_file"])
        key_path = os.path.join(c["cert_dir"], c["key_file"])
        files = [
            self.file("cert", cert_path, bundle.fullchain_pem if bundle else None),
            self.file("key", key_path, bundle.key_pem if bundle else None, secret=True),
        ]
        if c.get("dynamic_config_file"):
            # JSON strings are valid YAML double-quoted scalars.
            yaml = ("# Written by certctl: Traefik's file provider loads this certificate.\n"
                    "tls:\n  certificates:\n"
                    f"    - certFile: {json.dumps(cert_path)}\n      keyFile: {json.dumps(key_path)}\n")
            files.append(PlannedFile(os.path.join(c["cert_dir"], c["dynamic_config_file"]), yaml.encode(),
                                     role="config"))
        return files

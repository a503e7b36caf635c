"""Envoy (file-based SDS): certificate files in `cert_dir`, optionally the SDS resource that names them.

Files: `cert_filename` (leaf + chain: Envoy's `certificate_chain`), `key_filename`, optional
`chain_filename` (the chain alone), and with `sds_config` true, `sds_filename` (default sds.json): one
`envoy.extensions.transport_sockets.tls.v3.Secret` named `sds_secret_name` whose `watched_directory` is
`cert_dir`, so Envoy reloads when certctl renames new files into that directory. No reload command.
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

SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"  # noqa: S105  # an Envoy type URL, not a password


class EnvoyTarget(FileTarget):
    type_name = "Envoy"
    description = "Envoy: certificate files for path-based SDS, optional sds.json"
    fields = (
        path_field("cert_dir", required=True),
        ConfigField("cert_filename", "filename", default="cert.pem"),
        ConfigField("key_filename", "filename", default="key.pem"),
        ConfigField("chain_filename", "filename", default=""),
        ConfigField("sds_config", "bool", default=False),
        ConfigField("sds_filename", "filename", default="sds.json"),
        ConfigField("sds_secret_name", "text", default="server_cert"),
        *command_fields("", ""),
        *file_meta_fields("cert"), *file_meta_fields("key"), *file_meta_fields("chain"),
        *COMMON_FIELDS,
    )

    @classmethod
    def check_config(cls, config: dict[str, object]) -> list[str]:
        names = [config["cert_filename"], config["key_filename"], config.get("chain_filename") or None,
                 config["sds_filename"] if config["sds_config"] else None]
        given = [n for n in names if n]
        problems = ["the file names in cert_dir must differ"] if len(set(given)) != len(given) else []
        if config["sds_config"] and not config["sds_secret_name"]:
            problems.append("sds_secret_name is required when sds_config is true")
        return problems

    def planned_files(self, bundle: DeployBundle | None) -> list[PlannedFile]:
        c = self.config
        directory = c["cert_dir"]
        cert_path = os.path.join(directory, c["cert_filename"])
        key_path = os.path.join(directory, c["key_filename"])
        files = [
            self.file("cert", cert_path, bundle.fullchain_pem if bundle else None),
            self.file("key", key_path, bundle.key_pem if bundle else None, secret=True),
        ]
        if c.get("chain_filename"):
            files.append(self.file("chain", os.path.join(directory, c["chain_filename"]),
                                   bundle.chain_pem if bundle else None))
        if c["sds_config"]:
            files.append(PlannedFile(os.path.join(directory, c["sds_filename"]),
                                     sds_document(c["sds_secret_name"], cert_path, key_path, directory),
                                     role="config"))
        return files


def sds_document(name: str, cert_path: str, key_path: str, directory: str) -> bytes:
    secret = {
        "@type": SECRET_TYPE,
        "name": name,
        "tls_certificate": {
            "certificate_chain": {"filename": cert_path},
            "private_key": {"filename": key_path},
            "watched_directory": {"path": directory},
        },
    }
    return (json.dumps({"resources": [secret]}, indent=2) + "\n").encode()

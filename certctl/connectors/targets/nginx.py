"""NGINX: the certificate file carries the full chain (nginx's `ssl_certificate` wants leaf + intermediates).

Files: `cert_path` (leaf + chain), `key_path` (0600 when new), optional `chain_path` (the chain alone, for
`ssl_trusted_certificate` / OCSP stapling). Test `nginx -t`, reload `nginx -s reload`. nginx answers a
reload signal at once and switches workers asynchronously; verification retries until the new leaf shows.
"""

from __future__ import annotations

from certctl.connectors.targets.base import (
    COMMON_FIELDS,
    FileTarget,
    command_fields,
    file_meta_fields,
    path_field,
)
from certctl.connectors.targets.plan import PlannedFile
from certctl.pki.bundle import DeployBundle


class NginxTarget(FileTarget):
    type_name = "NGINX"
    description = "nginx: certificate with its chain, key, optional chain file"
    fields = (
        path_field("cert_path", required=True, doc="leaf + chain (ssl_certificate)"),
        path_field("key_path", required=True, doc="private key (ssl_certificate_key)"),
        path_field("chain_path", doc="the chain alone (ssl_trusted_certificate), optional"),
        *command_fields("nginx -t", "nginx -s reload"),
        *file_meta_fields("cert"), *file_meta_fields("key"), *file_meta_fields("chain"),
        *COMMON_FIELDS,
    )

    def planned_files(self, bundle: DeployBundle | None) -> list[PlannedFile]:
        c = self.config
        files = [
            self.file("cert", c["cert_path"], bundle.fullchain_pem if bundle else None),
            self.file("key", c["key_path"], bundle.key_pem if bundle else None, secret=True),
        ]
        if c.get("chain_path"):
            files.append(self.file("chain", c["chain_path"], bundle.chain_pem if bundle else None))
        return files

"""Apache httpd (mod_ssl). Since 2.4.8 `SSLCertificateFile` may hold the chain after the leaf.

Files: `cert_path` (leaf + chain, or the leaf alone when `chain_path` is set, for configurations still
using `SSLCertificateChainFile`), `key_path`, optional `chain_path`. Test `apachectl configtest`,
reload `apachectl graceful`.
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


class ApacheTarget(FileTarget):
    type_name = "Apache"
    description = "Apache httpd: certificate (with chain unless chain_path is set), key, optional chain file"
    fields = (
        path_field("cert_path", required=True, doc="SSLCertificateFile"),
        path_field("key_path", required=True, doc="SSLCertificateKeyFile"),
        path_field("chain_path", doc="SSLCertificateChainFile; when set, cert_path holds the leaf alone"),
        *command_fields("apachectl configtest", "apachectl graceful"),
        *file_meta_fields("cert"), *file_meta_fields("key"), *file_meta_fields("chain"),
        *COMMON_FIELDS,
    )

    def planned_files(self, bundle: DeployBundle | None) -> list[PlannedFile]:
        c = self.config
        separate_chain = bool(c.get("chain_path"))
        cert = (bundle.leaf_pem if separate_chain else bundle.fullchain_pem) if bundle else None
        files = [
            self.file("cert", c["cert_path"], cert),
            self.file("key", c["key_path"], bundle.key_pem if bundle else None, secret=True),
        ]
        if separate_chain:
            files.append(self.file("chain", c["chain_path"], bundle.chain_pem if bundle else None))
        return files

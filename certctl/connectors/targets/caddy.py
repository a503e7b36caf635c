"""Caddy, file mode: certificate and key files that the Caddyfile loads with `tls <cert> <key>`.

Caddy does not watch certificate files, so the default reload is `caddy reload --force` (without
`--force` Caddy skips a reload whose config text is unchanged). API mode (pushing the pair to the
admin API) is not implemented: `mode` accepts only "file".
"""

from __future__ import annotations

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


class CaddyTarget(FileTarget):
    type_name = "Caddy"
    description = "Caddy (file mode): cert and key files, caddy reload"
    fields = (
        ConfigField("mode", "choice", default="file", choices=("file",),
                    doc="only file mode is implemented (the admin API mode is not)"),
        path_field("cert_dir", required=True),
        ConfigField("cert_file", "filename", default="cert.pem"),
        ConfigField("key_file", "filename", default="key.pem"),
        *command_fields("caddy validate --config /etc/caddy/Caddyfile",
                        "caddy reload --config /etc/caddy/Caddyfile --force"),
        *file_meta_fields("cert"), *file_meta_fields("key"),
        *COMMON_FIELDS,
    )

    @classmethod
    def check_config(cls, config: dict[str, object]) -> list[str]:
        return ["cert_file and key_file must differ"] if config["cert_file"] == config["key_file"] else []

    def planned_files(self, bundle: DeployBundle | None) -> list[PlannedFile]:
        c = self.config
        return [
            self.file("cert", os.path.join(c["cert_dir"], c["cert_file"]), bundle.fullchain_pem if bundle else None),
            self.file("key", os.path.join(c["cert_dir"], c["key_file"]), bundle.key_pem if bundle else None,
                      secret=True),
        ]

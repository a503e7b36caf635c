"""HAProxy: one combined PEM per certificate (leaf, chain, then key) for `bind ... ssl crt <pem_path>`.

Test `haproxy -c -f /etc/haproxy/haproxy.cfg`; `reload_command` is required because how HAProxy is
reloaded depends on how it runs (systemd, master-worker signal, master CLI).
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


class HAProxyTarget(FileTarget):
    type_name = "HAProxy"
    description = "HAProxy: combined PEM (leaf + chain + key)"
    fields = (
        path_field("pem_path", required=True, doc="combined PEM: leaf, chain, key (0600 when new)"),
        *command_fields("haproxy -c -f /etc/haproxy/haproxy.cfg", None, reload_required=True),
        *file_meta_fields("pem"),
        *COMMON_FIELDS,
    )

    def planned_files(self, bundle: DeployBundle | None) -> list[PlannedFile]:
        return [self.file("pem", self.config["pem_path"], bundle.combined_pem if bundle else None, secret=True)]

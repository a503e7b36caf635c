"""Generic files: write the certificate material wherever a program expects it, then optionally run one
command (without a shell).

Paths (at least one of cert_path, fullchain_path, combined_path): `cert_path` (the leaf), `key_path`,
`chain_path` (the chain alone), `fullchain_path` (leaf + chain), `combined_path` (leaf + chain + key).
`format`: PEM (default) or DER: the leaf and a PKCS#8 key in DER; chain, fullchain and combined files
hold several items and exist only in PEM. `post_deploy_command` plays the role of a reload: when it
fails, the previous files come back and it runs again.
"""

from __future__ import annotations

from typing import Any

from certctl.connectors.targets.base import (
    COMMON_FIELDS,
    ConfigField,
    FileTarget,
    file_meta_fields,
    path_field,
)
from certctl.connectors.targets.plan import PlannedFile
from certctl.pki.bundle import DeployBundle


class FilesTarget(FileTarget):
    type_name = "Files"
    description = "Generic files: cert/key/chain/fullchain/combined paths, PEM or DER, post-deploy command"
    reload_key = "post_deploy_command"
    fields = (
        path_field("cert_path", doc="the leaf"),
        path_field("key_path", doc="the private key (0600 when new)"),
        path_field("chain_path", doc="the chain alone (PEM only)"),
        path_field("fullchain_path", doc="leaf + chain (PEM only)"),
        path_field("combined_path", doc="leaf + chain + key (PEM only, 0600 when new)"),
        ConfigField("format", "choice", default="PEM", choices=("PEM", "DER")),
        ConfigField("validate_command", "command", default="", doc="optional check before the command below"),
        ConfigField("post_deploy_command", "command", default="", doc="optional, run after the files are in place"),
        *file_meta_fields("cert"), *file_meta_fields("key"), *file_meta_fields("chain"),
        *file_meta_fields("fullchain"), *file_meta_fields("combined"),
        *COMMON_FIELDS,
    )

    @classmethod
    def check_config(cls, config: dict[str, Any]) -> list[str]:
        problems = []
        if not any(config.get(k) for k in ("cert_path", "fullchain_path", "combined_path")):
            problems.append("cert_path, fullchain_path or combined_path is required")
        if config["format"] == "DER":
            problems += [f"{k} needs format PEM (DER holds one item)"
                         for k in ("chain_path", "fullchain_path", "combined_path") if config.get(k)]
        return problems

    def planned_files(self, bundle: DeployBundle | None) -> list[PlannedFile]:
        c = self.config
        der = c["format"] == "DER"
        wanted: list[tuple[str, bool, bytes | None]] = []
        if bundle is None:
            contents: dict[str, bytes | None] = dict.fromkeys(("cert", "key", "chain", "fullchain", "combined"))
        else:
            contents = {
                "cert": bundle.leaf_der if der else bundle.leaf_pem,
                "key": bundle.key_der() if der else bundle.key_pem,
                "chain": bundle.chain_pem, "fullchain": bundle.fullchain_pem, "combined": bundle.combined_pem,
            }
        for role in ("cert", "key", "chain", "fullchain", "combined"):
            if c.get(f"{role}_path"):
                wanted.append((role, role in ("key", "combined"), contents[role]))
        return [self.file(role, c[f"{role}_path"], content, secret=secret) for role, secret, content in wanted]

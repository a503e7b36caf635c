"""Postfix and Dovecot: working defaults for every path and command (the reference applied them only on
the server's validation path, which its agent never called; here the stored config carries them).

Files: `cert_path` (leaf + chain unless `chain_path` is set), `key_path`, optional `chain_path`.
Postfix: /etc/postfix/certs/{cert,key}.pem, `postfix check`, `postfix reload`.
Dovecot: /etc/dovecot/certs/{cert,key}.pem, `doveconf -n`, `doveadm reload`.
Verification needs an explicit endpoint (e.g. 127.0.0.1:465 or :993); STARTTLS ports cannot be probed.
"""

from __future__ import annotations

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


def _mail_fields(service: str, validate: str, reload: str) -> tuple[ConfigField, ...]:
    return (
        path_field("cert_path", default=f"/etc/{service}/certs/cert.pem"),
        path_field("key_path", default=f"/etc/{service}/certs/key.pem"),
        path_field("chain_path", doc="the chain alone; when set, cert_path holds the leaf alone"),
        *command_fields(validate, reload),
        *file_meta_fields("cert"), *file_meta_fields("key"), *file_meta_fields("chain"),
        *COMMON_FIELDS,
    )


class _MailTarget(FileTarget):
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


class PostfixTarget(_MailTarget):
    type_name = "Postfix"
    description = "Postfix: smtpd_tls_cert_file / key_file"
    fields = _mail_fields("postfix", "postfix check", "postfix reload")


class DovecotTarget(_MailTarget):
    type_name = "Dovecot"
    description = "Dovecot: ssl_cert / ssl_key"
    fields = _mail_fields("dovecot", "doveconf -n", "doveadm reload")

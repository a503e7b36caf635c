"""Enumerations of the reference contract, in its TitleCase wire spelling.

The reference mixes case (bug 13); `parse` accepts any case and snake/kebab
spelling on input so that old seeds and scripts keep working, and we always
emit the canonical value.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Self


class WireEnum(StrEnum):
    @classmethod
    def parse(cls, value: str) -> Self:
        wanted = value.replace("_", "").replace("-", "").lower()
        for member in cls:
            if member.value.replace("_", "").replace("-", "").lower() == wanted:
                return member
        allowed = ", ".join(m.value for m in cls)
        raise ValueError(f"invalid value '{value}'; expected one of: {allowed}")

    @classmethod
    def _missing_(cls, value: object) -> Self | None:
        if isinstance(value, str):
            try:
                return cls.parse(value)
            except ValueError:
                return None
        return None


class CertificateStatus(WireEnum):
    PENDING = "Pending"
    ACTIVE = "Active"
    EXPIRING = "Expiring"
    EXPIRED = "Expired"
    RENEWAL_IN_PROGRESS = "RenewalInProgress"
    FAILED = "Failed"
    REVOKED = "Revoked"
    ARCHIVED = "Archived"


class JobType(WireEnum):
    ISSUANCE = "Issuance"
    RENEWAL = "Renewal"
    DEPLOYMENT = "Deployment"
    VALIDATION = "Validation"


class JobStatus(WireEnum):
    PENDING = "Pending"
    AWAITING_CSR = "AwaitingCSR"
    AWAITING_APPROVAL = "AwaitingApproval"
    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELLED = "Cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


NON_TERMINAL_JOB_STATUSES = tuple(s for s in JobStatus if not s.terminal)


class AgentStatus(WireEnum):
    ONLINE = "Online"
    OFFLINE = "Offline"
    DEGRADED = "Degraded"


class IssuerType(WireEnum):
    ACME = "ACME"
    GENERIC_CA = "GenericCA"
    STEP_CA = "StepCA"
    OPENSSL = "OpenSSL"
    VAULT_PKI = "VaultPKI"
    DIGICERT = "DigiCert"
    SECTIGO = "Sectigo"
    GOOGLE_CAS = "GoogleCAS"
    AWS_ACM_PCA = "AWSACMPCA"
    ENTRUST = "Entrust"
    GLOBALSIGN = "GlobalSign"
    EJBCA = "EJBCA"


class TargetType(WireEnum):
    NGINX = "NGINX"
    APACHE = "Apache"
    HAPROXY = "HAProxy"
    F5 = "F5"
    IIS = "IIS"
    TRAEFIK = "Traefik"
    CADDY = "Caddy"
    ENVOY = "Envoy"
    POSTFIX = "Postfix"
    DOVECOT = "Dovecot"
    SSH = "SSH"
    WIN_CERT_STORE = "WinCertStore"
    JAVA_KEYSTORE = "JavaKeystore"
    KUBERNETES_SECRETS = "KubernetesSecrets"
    AWS_ACM = "AWSACM"
    AZURE_KEY_VAULT = "AzureKeyVault"
    FILES = "Files"  # certctl addition: generic files (cert/key/chain paths, formats, a post-deploy command)


class PolicyType(WireEnum):
    ALLOWED_ISSUERS = "AllowedIssuers"
    ALLOWED_DOMAINS = "AllowedDomains"
    REQUIRED_METADATA = "RequiredMetadata"
    ALLOWED_ENVIRONMENTS = "AllowedEnvironments"
    RENEWAL_LEAD_TIME = "RenewalLeadTime"
    CERTIFICATE_LIFETIME = "CertificateLifetime"


class PolicySeverity(WireEnum):
    WARNING = "Warning"
    ERROR = "Error"
    CRITICAL = "Critical"


class ActorType(WireEnum):
    USER = "User"
    SYSTEM = "System"
    AGENT = "Agent"


class KeyAlgorithm(WireEnum):
    RSA = "RSA"
    ECDSA = "ECDSA"
    ED25519 = "Ed25519"


class ExtendedKeyUsage(WireEnum):
    SERVER_AUTH = "serverAuth"
    CLIENT_AUTH = "clientAuth"
    CODE_SIGNING = "codeSigning"
    EMAIL_PROTECTION = "emailProtection"
    TIME_STAMPING = "timeStamping"


class RevocationReason(WireEnum):
    """RFC 5280 §5.3.1 CRLReason names and codes."""

    UNSPECIFIED = "unspecified"
    KEY_COMPROMISE = "keyCompromise"
    CA_COMPROMISE = "caCompromise"
    AFFILIATION_CHANGED = "affiliationChanged"
    SUPERSEDED = "superseded"
    CESSATION_OF_OPERATION = "cessationOfOperation"
    CERTIFICATE_HOLD = "certificateHold"
    PRIVILEGE_WITHDRAWN = "privilegeWithdrawn"

    @property
    def code(self) -> int:
        return _REASON_CODES[self]


_REASON_CODES = {
    RevocationReason.UNSPECIFIED: 0,
    RevocationReason.KEY_COMPROMISE: 1,
    RevocationReason.CA_COMPROMISE: 2,
    RevocationReason.AFFILIATION_CHANGED: 3,
    RevocationReason.SUPERSEDED: 4,
    RevocationReason.CESSATION_OF_OPERATION: 5,
    RevocationReason.CERTIFICATE_HOLD: 6,
    RevocationReason.PRIVILEGE_WITHDRAWN: 9,
}

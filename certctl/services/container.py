"""Wires every service once; the API and CLI receive this container, never build services themselves."""

from __future__ import annotations

from dataclasses import dataclass, field

from certctl.services.acme import AcmeService
from certctl.services.agent_groups import AgentGroupService
from certctl.services.agent_work import AgentWorkService
from certctl.services.agents import AgentService
from certctl.services.approvals import ApprovalService
from certctl.services.audit import AuditService, AuditSink
from certctl.services.ca_service import CAService
from certctl.services.certificate_actions import CertificateActionService
from certctl.services.certificates import CertificateService
from certctl.services.context import ServiceContext
from certctl.services.discovery import DiscoveryService
from certctl.services.health_checks import HealthCheckService
from certctl.services.intermediates import IntermediateService
from certctl.services.issuance import IssuanceService
from certctl.services.issuers import IssuerService
from certctl.services.job_maintenance import JobMaintenanceService
from certctl.services.jobs import JobService
from certctl.services.metrics import MetricsService
from certctl.services.network_scan import NetworkScanService, NetworkScanTargetService
from certctl.services.notifications import NotificationService
from certctl.services.org import OwnerService, TeamService
from certctl.services.policies import PolicyRuleService
from certctl.services.profiles import ProfileService
from certctl.services.rate_limits import RateLimits
from certctl.services.renewal import RenewalService
from certctl.services.renewal_policies import RenewalPolicyService
from certctl.services.stats import StatsService
from certctl.services.status import StatusService
from certctl.services.targets import TargetService


@dataclass
class Services:
    ctx: ServiceContext
    audit_sink: AuditSink
    audit: AuditService = field(init=False)
    teams: TeamService = field(init=False)
    owners: OwnerService = field(init=False)
    certificates: CertificateService = field(init=False)
    stats: StatsService = field(init=False)
    jobs: JobService = field(init=False)
    approvals: ApprovalService = field(init=False)
    certificate_actions: CertificateActionService = field(init=False)
    profiles: ProfileService = field(init=False)
    renewal_policies: RenewalPolicyService = field(init=False)
    policies: PolicyRuleService = field(init=False)
    agent_groups: AgentGroupService = field(init=False)

    issuers: IssuerService = field(init=False)
    targets: TargetService = field(init=False)
    agents: AgentService = field(init=False)
    cas: CAService = field(init=False)
    intermediates: IntermediateService = field(init=False)
    issuance: IssuanceService = field(init=False)
    agent_work: AgentWorkService = field(init=False)
    status: StatusService = field(init=False)
    renewal: RenewalService = field(init=False)
    job_maintenance: JobMaintenanceService = field(init=False)
    discovery: DiscoveryService = field(init=False)
    network_scan_targets: NetworkScanTargetService = field(init=False)
    network_scan: NetworkScanService = field(init=False)
    health_checks: HealthCheckService = field(init=False)
    acme: AcmeService = field(init=False)
    metrics: MetricsService = field(init=False)
    rate_limits: RateLimits = field(init=False)
    notifications: NotificationService = field(init=False)

    def __post_init__(self) -> None:
        self.audit = AuditService(self.ctx.db)
        self.teams = TeamService(self.ctx)
        self.owners = OwnerService(self.ctx)
        self.certificates = CertificateService(self.ctx)
        self.stats = StatsService(self.ctx)
        self.jobs = JobService(self.ctx)
        self.approvals = ApprovalService(self.ctx)
        self.certificate_actions = CertificateActionService(self.ctx)
        self.profiles = ProfileService(self.ctx)
        self.renewal_policies = RenewalPolicyService(self.ctx)
        self.policies = PolicyRuleService(self.ctx)
        self.agent_groups = AgentGroupService(self.ctx)
        self.issuers = IssuerService(self.ctx)
        self.targets = TargetService(self.ctx)
        self.agents = AgentService(self.ctx)
        self.cas = CAService(self.ctx)
        self.intermediates = IntermediateService(self.ctx, self.cas)
        self.issuance = IssuanceService(self.ctx, self.cas)
        self.agent_work = AgentWorkService(self.ctx)
        self.status = StatusService(self.ctx, self.cas)
        # A revocation reaches CRL and OCSP right after it commits, not at the next scheduled rebuild.
        self.certificate_actions.after_revoke = self.status.revoked
        # An ACME-issued certificate is also revoked at its CA (RFC 8555 §7.6) once the inventory's revocation commits.
        self.certificate_actions.revoke_at_issuer = self.issuance.connectors.notify_revocations
        self.renewal = RenewalService(self.ctx, self.certificate_actions, self.issuance.connectors)
        self.job_maintenance = JobMaintenanceService(self.issuance)
        self.discovery = DiscoveryService(self.ctx)
        self.network_scan_targets = NetworkScanTargetService(self.ctx)
        self.network_scan = NetworkScanService(self.ctx)
        self.health_checks = HealthCheckService(self.ctx)
        self.acme = AcmeService(self.ctx, self.cas, self.certificate_actions,
                                on_certificates_changed=self.certificates._writes_happened)
        self.metrics = MetricsService(self.ctx)
        # Shared by every replica: the database, or Redis with CERTCTL_REDIS_URL (docs/operations.md).
        self.rate_limits = RateLimits.from_settings(self.ctx.db, self.ctx.settings.extra)
        self.acme.limiter = self.rate_limits  # per account and per identifier, shared by replicas
        self.notifications = NotificationService(self.ctx)

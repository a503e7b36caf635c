"""Jobs, approval requests and the certificate lifecycle actions (renew, deploy, revoke, bulk).

The job state machine lives here as one table: every change of a job's status, wherever it is
made (API, scheduler, agent reports), goes through `plan_job_transition`, which refuses moves the
table does not list and says which timestamps and counters the move sets.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field, field_validator

from certctl.domain.enums import JobStatus, JobType, RevocationReason, WireEnum
from certctl.domain.errors import ConflictError
from certctl.domain.models.common import InputModel, WireModel

# ---- job state machine ----------------------------------------------------------------------

# Statuses a job may be created in: queued for the processor, waiting for an agent's CSR
# (agent key generation), or held for a second person's approval.
INITIAL_JOB_STATUSES = frozenset({JobStatus.PENDING, JobStatus.AWAITING_CSR, JobStatus.AWAITING_APPROVAL})

JOB_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    # Claimed by the processor or an agent; may wait for a CSR; may be cancelled or failed
    # before it ever runs (e.g. its issuer vanished).
    JobStatus.PENDING: frozenset(
        {JobStatus.RUNNING, JobStatus.AWAITING_CSR, JobStatus.CANCELLED, JobStatus.FAILED}
    ),
    # CSR received → signing; the reaper fails it after its timeout.
    JobStatus.AWAITING_CSR: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.FAILED}),
    # Approved → queued (or straight to waiting for the agent's CSR); rejected → cancelled.
    JobStatus.AWAITING_APPROVAL: frozenset(
        {JobStatus.PENDING, JobStatus.AWAITING_CSR, JobStatus.CANCELLED, JobStatus.FAILED}
    ),
    # Back to Pending: an attempt failed and a retry is scheduled (scheduled_at in the future), or
    # the server running it died and its lease ran out.
    JobStatus.RUNNING: frozenset(
        {JobStatus.PENDING, JobStatus.AWAITING_CSR, JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED}
    ),
    # The retry loop requeues a failed job while attempts < max_attempts (checked by the caller
    # through `can_retry`).
    JobStatus.FAILED: frozenset({JobStatus.PENDING}),
    JobStatus.COMPLETED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


def allowed_job_transition(current: JobStatus, new: JobStatus) -> bool:
    return new in JOB_TRANSITIONS[current]


def can_retry(attempts: int, max_attempts: int) -> bool:
    return attempts < max_attempts


def plan_job_transition(
    current: JobStatus | str, new: JobStatus, now: datetime, *, attempts: int = 0
) -> dict[str, Any]:
    """The column changes for moving a job from `current` to `new`, or a 409 if the move is illegal.

    Running counts an attempt and stamps started_at; a terminal status stamps completed_at; a
    requeue after failure clears completed_at and the previous error.
    """
    current = JobStatus(current)
    if not allowed_job_transition(current, new):
        if current.terminal:
            raise ConflictError(f"job is already {current.value}; it cannot become {new.value}")
        raise ConflictError(f"a job in status {current.value} cannot become {new.value}")
    changes: dict[str, Any] = {"status": new.value, "updated_at": now}
    if new is JobStatus.RUNNING:
        changes["started_at"] = now
        changes["attempts"] = attempts + 1
    if new.terminal:
        changes["completed_at"] = now
    if current is JobStatus.FAILED and new is JobStatus.PENDING:
        changes["completed_at"] = None
        changes["scheduled_at"] = now
    if new is not JobStatus.RUNNING:
        changes["claimed_by"] = None
        changes["lease_expires_at"] = None
    return changes


def check_initial_job_status(status: JobStatus) -> None:
    if status not in INITIAL_JOB_STATUSES:
        raise ConflictError(f"a job cannot be created in status {status.value}")


class ApprovalState(WireEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"


# ---- wire models --------------------------------------------------------------------------


class Job(WireModel):
    id: str
    type: JobType
    certificate_id: str | None
    target_id: str | None
    agent_id: str | None
    status: JobStatus
    attempts: int
    max_attempts: int
    last_error: str | None
    deployment_result: dict[str, Any] | None = None
    scheduled_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    verification_status: str | None = None
    verified_at: datetime | None = None
    verification_fingerprint: str | None = None
    verification_error: str | None = None
    created_at: datetime
    updated_at: datetime


class ApprovalRequest(WireModel):
    id: str
    certificate_id: str
    job_id: str
    profile_id: str
    requested_by: str
    state: ApprovalState
    decided_by: str | None
    decided_at: datetime | None
    decision_note: str | None
    metadata: dict[str, str]
    created_at: datetime
    updated_at: datetime


class ActionStatus(WireModel):
    """The reference's `{status: "..."}` answer to an action endpoint."""

    status: str


class RenewResult(WireModel):
    status: str  # "renewal_triggered"
    job_id: str
    job_status: JobStatus
    approval_id: str | None = None


class DeployResult(WireModel):
    status: str  # "deployment_triggered"
    job_ids: list[str]


class ApprovalDecisionResult(WireModel):
    id: str
    decided_by: str
    action: str  # "approved" | "rejected"


class BulkError(WireModel):
    certificate_id: str
    error: str


class BulkEnqueuedJob(WireModel):
    certificate_id: str
    job_id: str


class BulkRevokeResult(WireModel):
    total_matched: int
    total_revoked: int
    total_skipped: int
    total_failed: int
    errors: list[BulkError]


class BulkRenewResult(WireModel):
    total_matched: int
    total_enqueued: int
    total_skipped: int
    total_failed: int
    enqueued_jobs: list[BulkEnqueuedJob]
    errors: list[BulkError]


class BulkReassignResult(WireModel):
    total_matched: int
    total_reassigned: int
    total_skipped: int
    total_failed: int
    errors: list[BulkError]


# ---- request bodies -----------------------------------------------------------------------

MAX_BULK_IDS = 10_000


def _parse_reason(value: object) -> object:
    # RFC 5280 §5.3.1 names in any case, camelCase or snake_case ("key_compromise").
    if isinstance(value, str):
        return RevocationReason.parse(value.strip())
    return value


class JobRejectBody(InputModel):
    reason: str = Field(default="", max_length=4096)


class ApprovalDecisionBody(InputModel):
    note: str = Field(default="", max_length=4096)


class DeployBody(InputModel):
    target_id: str | None = Field(default=None, min_length=1, max_length=256)


class RevokeBody(InputModel):
    # Optional in the contract; an omitted reason is recorded as `unspecified` (code 0).
    reason: RevocationReason = RevocationReason.UNSPECIFIED

    normalize_reason = field_validator("reason", mode="before")(_parse_reason)


class BulkSelector(InputModel):
    """Which certificates a bulk call touches. IDs combined with other selectors = intersection."""

    profile_id: str | None = Field(default=None, min_length=1, max_length=256)
    owner_id: str | None = Field(default=None, min_length=1, max_length=256)
    agent_id: str | None = Field(default=None, min_length=1, max_length=256)
    issuer_id: str | None = Field(default=None, min_length=1, max_length=256)
    team_id: str | None = Field(default=None, min_length=1, max_length=256)
    certificate_ids: list[str] | None = Field(default=None, max_length=MAX_BULK_IDS)

    @field_validator("certificate_ids")
    @classmethod
    def _clean_ids(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        cleaned = [v.strip() for v in value]
        if any(not v for v in cleaned):
            raise ValueError("certificate_ids must not contain empty strings")
        return list(dict.fromkeys(cleaned))  # drop duplicates, keep order

    @property
    def has_criteria(self) -> bool:
        return any((self.profile_id, self.owner_id, self.agent_id, self.issuer_id, self.team_id))

    @property
    def is_empty(self) -> bool:
        return not self.has_criteria and not self.certificate_ids

    def audit_details(self) -> dict[str, Any]:
        details: dict[str, Any] = {
            k: v for k, v in self.model_dump(exclude={"certificate_ids"}).items() if v is not None
        }
        if self.certificate_ids:
            details["certificate_ids_count"] = len(self.certificate_ids)
            details["certificate_ids_sample"] = self.certificate_ids[:20]
        return details


class BulkRevokeBody(BulkSelector):
    reason: RevocationReason

    normalize_reason = field_validator("reason", mode="before")(_parse_reason)


class BulkRenewBody(BulkSelector):
    pass


class BulkReassignBody(InputModel):
    certificate_ids: list[str] = Field(min_length=1, max_length=MAX_BULK_IDS)
    owner_id: str = Field(min_length=1, max_length=256)
    team_id: str | None = Field(default=None, max_length=256)

    @field_validator("certificate_ids")
    @classmethod
    def _clean_ids(cls, value: list[str]) -> list[str]:
        cleaned = [v.strip() for v in value]
        if any(not v for v in cleaned):
            raise ValueError("certificate_ids must not contain empty strings")
        return list(dict.fromkeys(cleaned))

    @field_validator("team_id")
    @classmethod
    def _empty_team_is_none(cls, value: str | None) -> str | None:
        # The reference treats "" as "leave the team alone".
        return value or None

"""What an agent sees and sends: its work list, its CSR, and the signed certificate it picks up."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field, field_validator

from certctl.domain.enums import JobStatus, JobType
from certctl.domain.models.common import InputModel, JsonObject, WireModel


class WorkItem(WireModel):
    id: str
    type: JobType
    certificate_id: str | None
    common_name: str | None = None
    sans: list[str] = Field(default_factory=list)
    target_id: str | None = None
    target_type: str | None = None
    target_config: dict[str, Any] | None = None
    status: JobStatus


class WorkList(WireModel):
    jobs: list[WorkItem]
    count: int


class CSRSubmit(InputModel):
    csr_pem: str = Field(min_length=1, max_length=64 * 1024)
    certificate_id: str | None = Field(default=None, max_length=255)
    job_id: str | None = Field(default=None, max_length=255)  # certctl addition: names the job exactly


class CSRAccepted(WireModel):
    status: str
    job_id: str
    job_status: JobStatus | str
    certificate_id: str
    version_id: str | None = None
    serial_number: str | None = None


class CertificatePickup(WireModel):
    certificate_pem: str  # leaf, then the chain (as the reference's pem_chain)
    chain_pem: str
    version_id: str
    serial_number: str
    not_before: datetime
    not_after: datetime
    fingerprint_sha256: str


class VerificationReport(InputModel):
    status: Literal["success", "failed", "skipped"]
    fingerprint: str | None = Field(default=None, max_length=128)  # what the endpoint served last
    error: str | None = Field(default=None, max_length=4096)
    expected_fingerprint: str | None = Field(default=None, max_length=128)
    attempts: int | None = Field(default=None, ge=0, le=1000)
    endpoint: str | None = Field(default=None, max_length=300)


class JobStatusReport(InputModel):
    """What an agent says about a deployment job it runs (reference: `{status, error}`; the rest is ours)."""

    status: Literal["Running", "Completed", "Failed"]
    error: str | None = Field(default=None, max_length=4096)
    deployment_result: JsonObject | None = None
    verification: VerificationReport | None = None

    @field_validator("status", mode="before")
    @classmethod
    def _title_case(cls, value: Any) -> Any:
        return value.strip().title().replace("_", "") if isinstance(value, str) else value


class JobStatusAccepted(WireModel):
    status: str
    job_id: str
    job_status: JobStatus

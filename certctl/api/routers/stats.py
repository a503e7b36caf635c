"""/api/v1/stats: dashboard aggregates (any authenticated caller)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from certctl.api.deps import ServicesDep
from certctl.domain.models.stats import (
    CertificatesByStatus,
    DashboardSummary,
    ExpirationTimeline,
    IssuanceRate,
    JobTrends,
)

router = APIRouter(prefix="/api/v1/stats", tags=["Stats"])

Days = Annotated[int, Query(ge=1, le=365, description="Number of days (1-365)")]


@router.get("/summary", summary="Dashboard summary")
async def summary(services: ServicesDep) -> DashboardSummary:
    return await services.stats.summary()


@router.get("/certificates-by-status", summary="Certificate counts by status")
async def certificates_by_status(services: ServicesDep) -> CertificatesByStatus:
    return await services.stats.certificates_by_status()


@router.get("/expiration-timeline", summary="Certificates expiring per day, from today")
async def expiration_timeline(services: ServicesDep, days: Days = 30) -> ExpirationTimeline:
    return await services.stats.expiration_timeline(days)


@router.get("/job-trends", summary="Completed and failed jobs per day, up to today")
async def job_trends(services: ServicesDep, days: Days = 30) -> JobTrends:
    return await services.stats.job_trends(days)


@router.get("/issuance-rate", summary="Certificate versions issued per day, up to today")
async def issuance_rate(services: ServicesDep, days: Days = 30) -> IssuanceRate:
    return await services.stats.issuance_rate(days)

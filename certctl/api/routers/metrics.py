"""/api/v1/metrics (JSON, the contract's shape) and /api/v1/metrics/prometheus (text format 0.0.4).

Both need an API key, like every /api/v1 path of the contract. The figures about the inventory come from the
database at each call; the Prometheus text adds the event counters and histograms of every worker process.
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from certctl.api.deps import ActorDep, ServicesDep
from certctl.domain.models.metrics import MetricsCounters, MetricsGauges, MetricsResponse, MetricsUptime
from certctl.observability import metrics

router = APIRouter(prefix="/api/v1/metrics", tags=["Metrics"])


@router.get("", summary="System metrics")
async def get_metrics(services: ServicesDep, _actor: ActorDep) -> MetricsResponse:
    s = await services.metrics.snapshot()
    assert s.server_started is not None and s.measured_at is not None
    return MetricsResponse(
        gauge=MetricsGauges(
            certificate_total=s.certificate_total, certificate_active=s.certificate_active,
            certificate_expiring_soon=s.certificate_expiring_soon, certificate_expired=s.certificate_expired,
            certificate_revoked=s.certificate_revoked, agent_total=s.agent_total, agent_online=s.agent_online,
            job_pending=s.job_pending,
        ),
        counter=MetricsCounters(job_completed_total=s.job_completed_total, job_failed_total=s.job_failed_total),
        uptime=MetricsUptime(uptime_seconds=int(s.uptime_seconds), server_started=s.server_started,
                             measured_at=s.measured_at),
    )


@router.get(
    "/prometheus", summary="Prometheus metrics", response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                     "description": "Prometheus exposition format (text/plain; version=0.0.4)"}},
)
async def get_prometheus_metrics(services: ServicesDep, _actor: ActorDep) -> Response:
    snapshot = await services.metrics.snapshot()
    return Response(metrics.exposition(snapshot), media_type=metrics.CONTENT_TYPE)

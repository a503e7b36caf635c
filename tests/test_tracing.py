"""Traces: spans exported over OTLP/HTTP to a real receiver started by the test, decoded from protobuf.

A span per request (W3C traceparent honoured, request id attribute), per database transaction, per job
execution, per issuer call and per target connector call (the agent's); trace and span ids on log lines written
inside a span; nothing at all when no endpoint is configured.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from certctl.agent.client import ServerClient
from certctl.agent.runner import AgentRunner
from certctl.logs import JsonFormatter, TextFormatter, request_id_var
from certctl.observability import tracing
from certctl.services.issuance import run_due_issuing_jobs
from tests import factories
from tests.conftest import make_settings, start_api, stop_api
from tests.otlp_receiver import OtlpReceiver
from tests.test_agent_runner import _config

SERVER_KIND = 2  # opentelemetry.proto SpanKind values
CLIENT_KIND = 3
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[OtlpReceiver]:
    running = OtlpReceiver().start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", running.endpoint)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    try:
        yield running
    finally:
        tracing.shutdown()
        running.stop()


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("certctl")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]


async def test_request_spans_follow_traceparent_and_carry_the_request_id(
    receiver: OtlpReceiver, log_lines: io.StringIO, database_url: str, backend: str, tmp_path: Path
) -> None:
    api, lifespan = await start_api(make_settings(database_url, tmp_path / "data"))
    assert tracing.tracer is not None
    try:
        response = await api.admin.post(
            "/api/v1/teams", json={"name": factories.unique("traced")},
            headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "X-Request-ID": "req-traced-1"},
        )
        assert response.status_code == 201, response.text
        team_id = response.json()["id"]
        assert (await api.admin.get(f"/api/v1/teams/{team_id}")).status_code == 200
        assert (await api.anon.get("/api/v1/teams")).status_code == 401
    finally:
        await stop_api(api, lifespan)  # flushes the exporter

    assert receiver.requests >= 1
    [post] = [s for s in receiver.spans if s.name == "POST /api/v1/teams"]
    assert post.kind == SERVER_KIND and post.trace_id == TRACE_ID and post.parent_span_id == PARENT_ID
    assert post.attributes["http.route"] == "/api/v1/teams"
    assert post.attributes["http.request.method"] == "POST"
    assert post.attributes["http.response.status_code"] == 201
    assert post.attributes["certctl.request_id"] == "req-traced-1"
    assert post.attributes["certctl.actor"] == "alice"
    assert post.resource["service.name"] == "certctl-server"
    writes = [s for s in receiver.named("db.transaction") if s.parent_span_id == post.span_id]
    assert writes and all(s.trace_id == TRACE_ID and s.kind == CLIENT_KIND for s in writes)
    assert writes[0].attributes["db.system"] == backend

    [get] = [s for s in receiver.spans if s.name == "GET /api/v1/teams/{id}"]
    assert get.trace_id != TRACE_ID and get.parent_span_id == ""  # no traceparent: a new trace
    assert get.attributes["url.path"] == f"/api/v1/teams/{team_id}"
    [refused] = [s for s in receiver.spans if s.attributes.get("http.response.status_code") == 401]
    assert refused.name == "GET unmatched"  # refused before routing: no route template
    assert refused.attributes["url.path"] == "/api/v1/teams" and "certctl.actor" not in refused.attributes

    access = [line for line in _lines(log_lines) if line["msg"] == "request"]
    traced = [line for line in access if line.get("request_id") == "req-traced-1"]
    assert traced and traced[0]["trace_id"] == TRACE_ID and traced[0]["span_id"] == post.span_id
    assert all("trace_id" in line for line in access), "every line written inside a span has its ids"


async def test_job_issuer_and_target_spans(receiver: OtlpReceiver, database_url: str, tmp_path: Path) -> None:
    api, lifespan = await start_api(make_settings(database_url, tmp_path / "data", keygen_mode="server"))
    deployed: list[str] = []

    async def deployer(
        target_type: str, target_config: dict[str, Any], *, cert_pem: str, chain_pem: str, key_pem: str,
        certificate_id: str, job_id: str, dry_run: bool = False,
    ) -> dict[str, Any]:
        deployed.append(target_type)
        return {"success": True, "changed": True}

    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=api.app, client=("127.0.0.1", 50005)),
                             base_url="https://testserver")
    try:
        cert = await factories.seed_certificate(api)
        assert (await api.admin.post(f"/api/v1/certificates/{cert['id']}/renew")).status_code == 202
        assert await run_due_issuing_jobs(api.services.issuance) == {"Completed": 1}

        runner = AgentRunner(_config(tmp_path, key_dir=tmp_path / "agent" / "keys"),
                             client=ServerClient(http, lambda: None), deployer=deployer)
        await runner.run_once()  # enrol
        target_id = await factories.seed_target(api, runner.agent_id)
        deploy = await api.admin.post(f"/api/v1/certificates/{cert['id']}/deploy", json={"target_id": target_id})
        assert deploy.status_code in (200, 202), deploy.text
        # The server made this key (server key generation); the agent deploys only keys it made, so stand one in.
        runner.keys.key_pem_for = lambda *_: "-----BEGIN PRIVATE KEY-----\n"  # type: ignore[method-assign]
        await runner.run_once()
    finally:
        await http.aclose()
        await stop_api(api, lifespan)

    [job] = receiver.named("job.execute")
    assert job.attributes["certctl.job.status"] == "Completed" and job.attributes["certctl.job.id"].startswith("job")
    [issue] = receiver.named("issuer.issue")
    assert issue.parent_span_id == job.span_id and issue.trace_id == job.trace_id
    assert issue.attributes["certctl.issuer.type"] == "GenericCA"
    assert issue.attributes["certctl.issuer.id"] == "iss-local"
    assert issue.attributes["certctl.job.id"] == job.attributes["certctl.job.id"]
    assert any(s.parent_span_id == job.span_id for s in receiver.named("db.transaction"))

    assert deployed == ["NGINX"]
    [target] = receiver.named("target.deploy")
    assert target.attributes["certctl.target.type"] == "NGINX"
    assert target.attributes["certctl.target.id"] == target_id
    assert target.attributes["certctl.certificate.id"] == cert["id"]


async def test_nothing_is_traced_without_an_endpoint(
    monkeypatch: pytest.MonkeyPatch, log_lines: io.StringIO, database_url: str, tmp_path: Path
) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    api, lifespan = await start_api(make_settings(database_url, tmp_path / "data"))
    try:
        assert tracing.tracer is None
        response = await api.admin.get("/api/v1/teams", headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
        assert response.status_code == 200
        with tracing.span("anything") as span:
            assert not span.is_recording()
    finally:
        await stop_api(api, lifespan)
    access = [line for line in _lines(log_lines) if line["msg"] == "request"]
    assert access and not any("trace_id" in line for line in access)


def test_text_lines_end_with_request_and_trace_ids(receiver: OtlpReceiver) -> None:
    """CERTCTL_LOG_FORMAT=text: the same ids, as key=value at the end of the line."""
    assert tracing.setup()
    formatter = TextFormatter("%(levelname)s %(name)s %(message)s")
    record = logging.LogRecord("certctl.test", logging.INFO, __file__, 1, "inside", (), None)
    token = request_id_var.set("req-text-1")
    try:
        with tracing.span("work") as span:
            line = formatter.format(record)
            context = span.get_span_context()
        outside = formatter.format(record)
    finally:
        request_id_var.reset(token)
    assert line == (f"INFO certctl.test inside request_id=req-text-1 trace_id={context.trace_id:032x} "
                    f"span_id={context.span_id:016x}")
    assert outside == "INFO certctl.test inside request_id=req-text-1"

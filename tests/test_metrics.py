"""Metrics: the contract's JSON, the Prometheus text (prometheus_client), every event series, and a real
`certctl server --workers 2` whose workers' counts add up in every scrape."""

from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from certctl.observability import metrics, tracing
from certctl.services.issuance import run_due_issuing_jobs
from certctl.store import jobs_repo
from tests import factories
from tests.conftest import Api, make_settings, start_api, stop_api
from tests.test_acme_issuer import _acme_certificate, _renew_and_run, pebble, server_api  # noqa: F401 - fixtures
from tests.test_acme_server import acme  # noqa: F401 - the ACME server fixture
from tests.test_agent_credentials import _bearer, _deployment_job, _enrol
from tests.test_server_process import CERTCTL, Server, _env, printed_key

REFERENCE = Path("/work/shared/spec/reference-openapi.yaml")
Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Series:
    found: Series = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, frozenset(s.labels.items()))] = s.value
    return found


def value(series: Series, name: str, **labels: str) -> float:
    return series.get((name, frozenset(labels.items())), 0.0)


async def scrape(api: Api) -> Series:
    response = await api.admin.get("/api/v1/metrics/prometheus")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse(response.text)


def _contract_keys() -> dict[str, set[str]]:
    schema = yaml.safe_load(REFERENCE.read_text())["components"]["schemas"]["MetricsResponse"]["properties"]
    return {part: set(body["properties"]) for part, body in schema.items()}


async def test_json_follows_the_contract_and_both_endpoints_need_a_key(api: Api) -> None:
    now = datetime.now(UTC)
    await factories.seed_certificate(api)  # Active, 60 days left
    await factories.seed_certificate(api, expires_at=now + timedelta(days=10))  # Active, expiring soon
    await factories.seed_certificate(api, status="Revoked")
    await factories.seed_certificate(api, status="Expired", expires_at=now - timedelta(days=1))
    await factories.seed_certificate(api, status="Archived")
    await factories.seed_agent(api, last_heartbeat_at=now)
    await factories.seed_agent(api, last_heartbeat_at=now - timedelta(hours=1))
    pending = await factories.certificate(api.admin)
    assert (await api.admin.post(f"/api/v1/certificates/{pending['id']}/renew")).status_code == 202

    response = await api.user.get("/api/v1/metrics")  # any key, admin or not
    assert response.status_code == 200, response.text
    body = response.json()
    assert {part: set(fields) for part, fields in body.items()} == _contract_keys()
    assert body["gauge"] == {
        "certificate_total": 5, "certificate_active": 2, "certificate_expiring_soon": 1, "certificate_expired": 1,
        "certificate_revoked": 1, "agent_total": 2, "agent_online": 1, "job_pending": 1,
    }
    assert body["counter"] == {"job_completed_total": 0, "job_failed_total": 0}
    uptime = body["uptime"]
    assert isinstance(uptime["uptime_seconds"], int) and uptime["uptime_seconds"] >= 0
    assert datetime.fromisoformat(uptime["server_started"]) <= datetime.fromisoformat(uptime["measured_at"])

    series = await scrape(api)
    for field, count in body["gauge"].items():
        assert value(series, f"certctl_{field}") == count, field
    assert value(series, "certctl_certificates", status="Archived") == 1
    assert value(series, "certctl_job_queue_depth", type="Issuance", status="AwaitingCSR") == 1
    assert value(series, "certctl_job_queue_oldest_age_seconds", type="Issuance", status="AwaitingCSR") >= 0
    assert ("certctl_uptime_seconds", frozenset()) in series

    for path in ("/api/v1/metrics", "/api/v1/metrics/prometheus"):
        refused = await api.anon.get(path)
        assert refused.status_code == 401 and set(refused.json()) == {"error", "message", "request_id"}


async def test_requests_are_labelled_by_route_template_and_status(api: Api) -> None:
    cert = await factories.certificate(api.admin)
    before = await scrape(api)
    assert (await api.admin.get(f"/api/v1/certificates/{cert['id']}")).status_code == 200
    assert (await api.admin.get("/api/v1/certificates/mc-nope")).status_code == 404
    assert (await api.admin.get("/api/v1/no-such-thing")).status_code == 404
    after = await scrape(api)
    name = "certctl_http_request_duration_seconds_count"
    route = "/api/v1/certificates/{id}"
    assert value(after, name, route=route, method="GET", status="200") - \
        value(before, name, route=route, method="GET", status="200") == 1
    assert value(after, name, route=route, method="GET", status="404") - \
        value(before, name, route=route, method="GET", status="404") == 1
    assert value(after, name, route="unmatched", method="GET", status="404") - \
        value(before, name, route="unmatched", method="GET", status="404") == 1
    assert not any(cert["id"] in str(labels) or "mc-nope" in str(labels) for _, labels in after)
    text = (await api.admin.get("/api/v1/metrics/prometheus")).text
    for family in ("certctl_acme_orders_total", "certctl_notifications_total", "certctl_rate_limit_rejections_total"):
        assert f"# TYPE {family} counter" in text  # defined before their first event


async def test_issuance_jobs_ocsp_and_crl_are_counted(database_url: str, tmp_path: Path) -> None:
    api, lifespan = await start_api(make_settings(database_url, tmp_path / "data", keygen_mode="server"))
    try:
        before = await scrape(api)
        cert = await factories.seed_certificate(api)
        assert (await api.admin.post(f"/api/v1/certificates/{cert['id']}/renew")).status_code == 202
        assert (await run_due_issuing_jobs(api.services.issuance)) == {"Completed": 1}
        serial = (await api.admin.get(f"/api/v1/certificates/{cert['id']}/versions")).json()["data"][0]
        assert (await api.anon.get("/.well-known/pki/crl/iss-local")).status_code == 200
        ocsp = await api.anon.get(f"/.well-known/pki/ocsp/iss-local/{serial['serial_number']}")
        assert ocsp.status_code == 200
        after = await scrape(api)
    finally:
        await stop_api(api, lifespan)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("certctl_issuance_duration_seconds_count", issuer_type="GenericCA") == 1
    assert delta("certctl_issuance_total", issuer_type="GenericCA", result="success") == 1
    assert delta("certctl_job_outcomes_total", type="Renewal", outcome="completed") == 1
    assert value(after, "certctl_job_completed_total") == 1  # from the database
    assert delta("certctl_crl_requests_total", result="ok") == 1
    assert delta("certctl_ocsp_requests_total", method="GET", result="ok") == 1
    route = "/.well-known/pki/ocsp/{issuer_id}/{rest}"
    assert delta("certctl_http_request_duration_seconds_count", route=route, method="GET", status="200") == 1


async def test_deployments_by_target_type_and_result(api: Api) -> None:
    before = await scrape(api)
    agent_id, key = await _enrol(api)
    _, done_job = await _deployment_job(api, agent_id)
    _, failed_job = await _deployment_job(api, agent_id)
    async with _bearer(api, key) as agent:
        url = f"/api/v1/agents/{agent_id}/jobs/{{}}/status"
        assert (await agent.post(url.format(done_job), json={"status": "Completed"})).status_code == 200
        assert (await agent.post(url.format(failed_job), json={"status": "Failed", "error": "nginx -t"})).json()[
            "job_status"] == "Pending"
    after = await scrape(api)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("certctl_deployments_total", target_type="NGINX", result="success") == 1
    assert delta("certctl_deployments_total", target_type="NGINX", result="failure") == 1
    assert delta("certctl_job_outcomes_total", type="Deployment", outcome="completed") == 1
    assert delta("certctl_job_outcomes_total", type="Deployment", outcome="retry") == 1
    assert value(after, "certctl_job_queue_depth", type="Deployment", status="Pending") == 1


async def test_a_rolled_back_outcome_is_not_counted(api: Api) -> None:
    child = ("certctl_job_outcomes_total", {"type": "Validation", "outcome": "cancelled"})
    start = metrics.sample(*child)
    with pytest.raises(RuntimeError):
        async with api.services.ctx.db.transaction():
            metrics.job_outcome("Validation", "cancelled")
            raise RuntimeError("rolled back")
    assert metrics.sample(*child) == start
    async with api.services.ctx.db.transaction() as conn:
        metrics.job_outcome("Validation", "cancelled")
        assert metrics.sample(*child) == start, "not before the commit"
        await jobs_repo.get_job(conn, "job-none")
    assert metrics.sample(*child) == start + 1
    metrics.job_outcome("Validation", "cancelled")  # outside a transaction: at once
    assert metrics.sample(*child) == start + 2
    assert tracing.tracer is None


async def test_rate_limit_rejections_are_counted(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(database_url, tmp_path / "data", rate_limit_enabled=True, rate_limit_rps=0.01,
                             rate_limit_burst=1)
    api, lifespan = await start_api(settings)
    try:
        start = metrics.sample("certctl_rate_limit_rejections_total", {"limiter": "api"})
        statuses = [(await api.anon.get("/api/v1/version")).status_code for _ in range(3)]
        assert statuses == [200, 429, 429]
        assert metrics.sample("certctl_rate_limit_rejections_total", {"limiter": "api"}) == start + 2
    finally:
        await stop_api(api, lifespan)


class PatientServer(Server):
    """A server whose start may take up to three minutes: two workers importing the app on a loaded 2-core machine."""

    def start(self) -> str:
        self.starts += 1
        n = self.starts
        with self.out(n).open("wb") as out, self.err(n).open("wb") as err:
            self.proc = subprocess.Popen(
                [str(CERTCTL), "server", "--data-dir", str(self.data_dir), "--port", str(self.port), *self.args],
                env=self.env, stdout=out, stderr=err,
            )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"server exited early: {self.err(n).read_text()[-3000:]}"
            if self.ca.exists() and self.curl("/health", check=False).returncode == 0:
                return self.out(n).read_text()
            time.sleep(0.3)
        raise AssertionError(f"server did not become healthy: {self.err(n).read_text()[-3000:]}")


@pytest.mark.slow
def test_two_workers_add_up_in_every_scrape(tmp_path: Path) -> None:
    """A real `certctl server --workers 2`: requests land on both workers, every scrape counts all of them."""
    multiproc = tmp_path / "prom"
    server = PatientServer(tmp_path / "data", _env(PROMETHEUS_MULTIPROC_DIR=str(multiproc),
                                                   CERTCTL_LOG_LEVEL="debug"), args=["--workers", "2"])
    try:
        key = printed_key(server.start())
        sent = 0

        def check(_: int) -> int:
            result = server.curl("/api/v1/auth/check", "-o", "/dev/null", "-w", "%{http_code}", key=key)
            return int(result.stdout)

        with ThreadPoolExecutor(8) as pool:
            for _ in range(10):  # concurrent connections until both workers have served some
                assert list(pool.map(check, range(16))) == [200] * 16
                sent += 16
                if len(list(multiproc.glob("histogram_*.db"))) >= 2:
                    break
        assert len(list(multiproc.glob("histogram_*.db"))) == 2, "both workers recorded requests"
        with ThreadPoolExecutor(4) as pool:
            scrapes = list(pool.map(lambda _: server.curl("/api/v1/metrics/prometheus", key=key).stdout, range(6)))
        for text in scrapes:
            series = parse(text)
            assert value(series, "certctl_http_request_duration_seconds_count", route="/api/v1/auth/check",
                         method="GET", status="200") == sent
            assert value(series, "certctl_certificate_total") >= 0
        started = set()
        for _ in range(4):
            status, body = server.status_and_json("/api/v1/metrics", key=key)
            assert status == 200 and body["gauge"]["agent_total"] == 0
            started.add(str(body["uptime"]["server_started"]))  # type: ignore[index]
        assert len(started) == 1, "every worker reports the server's start, not its own"
        assert server.stop() == 0
    finally:
        server.kill()
    log = server.err(1).read_text()
    assert key not in log, "the generated admin key is printed on stdout, never logged (even at debug level)"
    assert '"level":"debug"' in log


async def test_acme_orders_by_result(acme: Any) -> None:  # noqa: F811 - the fixture imported above
    """The ACME server's orders: created, valid once issued, rate_limited (three open orders at most here)."""
    def count(result: str) -> float:
        return metrics.sample("certctl_acme_orders_total", {"result": result})

    before = {r: count(r) for r in ("created", "valid", "rate_limited")}
    limited_before = metrics.sample("certctl_rate_limit_rejections_total", {"limiter": "acme"})
    client = await acme.account()
    await client.issue("www.example.com")
    for name in ("one", "two", "three"):
        assert (await client.order(f"{name}.example.com")).status_code == 201
    assert (await client.order("four.example.com")).status_code == 429
    assert count("created") - before["created"] == 4
    assert count("valid") - before["valid"] == 1
    assert count("rate_limited") - before["rate_limited"] == 1
    assert metrics.sample("certctl_rate_limit_rejections_total", {"limiter": "acme"}) - limited_before == 1
    finalize = {"route": "/acme/profile/{profile_id}/order/{order_id}/finalize", "method": "POST", "status": "200"}
    assert metrics.sample("certctl_http_request_duration_seconds_count", finalize) >= 1  # the mount's prefix kept


async def test_external_issuer_calls_are_timed(server_api: Api, pebble: Any) -> None:  # noqa: F811 - fixtures
    """An ACME issuer (a real Pebble): its call is one issuer span and one issuance-duration observation."""
    def count() -> float:
        return metrics.sample("certctl_issuance_duration_seconds_count", {"issuer_type": "ACME"})

    before = count()
    _, cert = await _acme_certificate(server_api, pebble)
    assert (await _renew_and_run(server_api, cert["id"]))["status"] == "Completed"
    assert count() - before == 1
    assert metrics.sample("certctl_issuance_duration_seconds_sum", {"issuer_type": "ACME"}) > 0
    assert metrics.sample("certctl_issuance_total", {"issuer_type": "ACME", "result": "success"}) >= 1

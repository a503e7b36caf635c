"""`--demo` inventory: what it writes, that its dates make sense "now", that its PEMs are real, and that
it seeds once. Runs on SQLite and PostgreSQL (the `database_url` fixture)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import Table, func, select

from certctl.domain.clock import FakeClock
from certctl.domain.enums import CertificateStatus, JobStatus
from certctl.domain.redaction import REDACTED
from certctl.services.demo import ACME_ISSUER_ID, VAULT_ISSUER_ID, seed_demo
from certctl.store.schema import (
    agents,
    audit_events,
    certificate_profiles,
    certificate_target_mappings,
    certificate_versions,
    deployment_targets,
    issuance_approval_requests,
    issuers,
    jobs,
    managed_certificates,
    owners,
    policy_rules,
    policy_violations,
    renewal_policies,
    teams,
)
from tests.conftest import Api, make_settings, start_api, stop_api
from tests.factories import certificate, team

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


async def _start(database_url: str, data_dir: Path, *, demo: bool = True) -> tuple[Api, Any]:
    settings = make_settings(database_url, data_dir, demo_seed=demo)
    return await start_api(settings, clock=FakeClock(NOW))


@pytest.fixture
async def demo(database_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    running, lifespan = await _start(database_url, tmp_path / "data")
    try:
        yield running
    finally:
        await stop_api(running, lifespan)


async def _rows(api: Api, table: Table) -> list[dict[str, Any]]:
    async with api.services.ctx.db.read() as conn:
        result = await conn.execute(select(table))
        return [dict(r) for r in result.mappings()]


async def _count(api: Api, table: Table) -> int:
    async with api.services.ctx.db.read() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())


async def _counts(api: Api) -> dict[str, int]:
    tables = (teams, owners, issuers, agents, deployment_targets, certificate_profiles, renewal_policies,
              policy_rules, policy_violations, managed_certificates, certificate_versions,
              certificate_target_mappings, jobs, audit_events)
    return {t.name: await _count(api, t) for t in tables}


async def test_inventory_counts(demo: Api) -> None:
    counts = await _counts(demo)
    assert counts["teams"] == 4
    assert counts["owners"] == 6
    assert counts["issuers"] == 3  # iss-local from first boot + ACME + Vault
    assert counts["agents"] == 6
    assert counts["deployment_targets"] == 10
    assert counts["certificate_profiles"] == 3
    assert counts["renewal_policies"] == 4  # rp-default + 3
    assert counts["policy_rules"] == 5
    assert counts["policy_violations"] > 0
    assert counts["managed_certificates"] == 30
    assert counts["certificate_versions"] >= 30
    assert counts["certificate_target_mappings"] >= 15
    assert counts["jobs"] >= 200
    assert counts["audit_events"] >= 300

    owner_rows = await _rows(demo, owners)
    assert all("@" in o["email"] and o["team_id"] for o in owner_rows)
    agent_rows = await _rows(demo, agents)
    assert {a["status"] for a in agent_rows} >= {"Online", "Offline"}
    assert all(a["hostname"] and a["os"] and a["architecture"] and a["ip_address"] for a in agent_rows)
    assert all(a["last_heartbeat_at"] <= NOW for a in agent_rows)
    target_rows = await _rows(demo, deployment_targets)
    assert len({t["type"] for t in target_rows}) >= 6
    assert {t["agent_id"] for t in target_rows} == {a["id"] for a in agent_rows}


async def test_issuer_secrets_are_sealed_and_redacted(demo: Api) -> None:
    by_id = {i["id"]: i for i in await _rows(demo, issuers)}
    sealer = demo.services.ctx.sealer
    acme = by_id[ACME_ISSUER_ID]
    assert acme["type"] == "ACME"
    assert acme["config"]["eab_hmac_key"] == REDACTED
    assert acme["config"]["directory_url"].startswith("https://")
    full = sealer.open(acme["encrypted_config"])
    assert full["eab_hmac_key"] not in ("", REDACTED)
    vault = by_id[VAULT_ISSUER_ID]
    assert vault["config"]["token"] == REDACTED
    assert str(sealer.open(vault["encrypted_config"])["token"]).startswith("hvs.")
    f5 = next(t for t in await _rows(demo, deployment_targets) if t["type"] == "F5")
    assert f5["config"]["password"] == REDACTED
    assert sealer.open(f5["encrypted_config"])["password"] not in ("", REDACTED)


async def test_every_status_with_dates_that_fit_it(demo: Api) -> None:
    certs = await _rows(demo, managed_certificates)
    statuses = {c["status"] for c in certs}
    assert statuses == {s.value for s in CertificateStatus}
    for cert in certs:
        expires, status = cert["expires_at"], cert["status"]
        if status == "Active":
            assert expires > NOW + 30 * DAY, cert["name"]
        elif status in ("Expiring", "RenewalInProgress"):
            assert NOW < expires <= NOW + 30 * DAY, cert["name"]
        elif status == "Expired":
            assert expires < NOW, cert["name"]
        elif status == "Pending":
            assert expires is None, cert["name"]
        elif status == "Revoked":
            assert cert["revoked_at"] is not None and cert["revoked_at"] <= NOW
            assert cert["revocation_reason"]
        assert cert["created_at"] <= NOW and cert["updated_at"] <= NOW
        assert cert["created_at"] <= cert["updated_at"]

    open_jobs = [j for j in await _rows(demo, jobs) if not JobStatus(j["status"]).terminal]
    renewing = {c["id"] for c in certs if c["status"] == "RenewalInProgress"}
    assert renewing <= {j["certificate_id"] for j in open_jobs}
    approvals = await _rows(demo, issuance_approval_requests)
    assert len(approvals) == 1 and approvals[0]["state"] == "pending"


async def test_versions_hold_real_chains_matching_expiry(demo: Api) -> None:
    certs = {c["id"]: c for c in await _rows(demo, managed_certificates)}
    versions = await _rows(demo, certificate_versions)
    latest: dict[str, dict[str, Any]] = {}
    for version in versions:
        chain = x509.load_pem_x509_certificates(version["pem_chain"].encode())
        assert len(chain) == 2
        leaf, issuing = chain
        leaf.verify_directly_issued_by(issuing)
        der = leaf.public_bytes(serialization.Encoding.DER)
        assert hashlib.sha256(der).hexdigest() == version["fingerprint_sha256"]
        assert format(leaf.serial_number, "x") == version["serial_number"]
        assert leaf.not_valid_after_utc == version["not_after"]
        assert leaf.not_valid_before_utc == version["not_before"]
        cn = leaf.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value
        assert cn == certs[version["certificate_id"]]["common_name"]
        current = latest.get(version["certificate_id"])
        if current is None or version["created_at"] > current["created_at"]:
            latest[version["certificate_id"]] = version
    for cert_id, cert in certs.items():
        if cert["expires_at"] is None:
            assert cert_id not in latest
        else:
            assert latest[cert_id]["not_after"] == cert["expires_at"], cert["name"]


async def test_history_spreads_over_180_days(demo: Api) -> None:
    job_rows = await _rows(demo, jobs)
    assert {j["type"] for j in job_rows} >= {"Issuance", "Renewal", "Deployment"}
    assert {j["status"] for j in job_rows} >= {"Completed", "Failed", "Cancelled"}
    done = [j["completed_at"] for j in job_rows if j["completed_at"] is not None]
    assert all(NOW - 181 * DAY <= d <= NOW for d in done)
    assert min(done) <= NOW - 170 * DAY and max(done) >= NOW - 3 * DAY
    months = {(d.year, d.month) for d in done}
    assert len(months) >= 6
    for job in job_rows:
        assert job["scheduled_at"] <= (job["completed_at"] or NOW)
        if job["status"] == "Failed":
            assert job["last_error"]

    stamps = [e["timestamp"] for e in await _rows(demo, audit_events)]
    assert all(NOW - 180 * DAY <= t <= NOW for t in stamps)
    assert min(stamps) <= NOW - 170 * DAY
    assert len({t.date() for t in stamps}) >= 120


async def test_seeded_rows_read_back_through_the_api(demo: Api) -> None:
    listing = await demo.admin.get("/api/v1/certificates", params={"per_page": 100})
    assert listing.status_code == 200, listing.text
    assert listing.json()["total"] == 30
    expiring = await demo.admin.get("/api/v1/certificates", params={"status": "Expiring"})
    assert expiring.json()["total"] == 5
    versions = await demo.admin.get("/api/v1/certificates/mc-www-prod/versions")
    assert versions.status_code == 200 and versions.json()["total"] >= 2
    for path in ("/api/v1/jobs", "/api/v1/teams", "/api/v1/owners", "/api/v1/approvals", "/api/v1/issuers",
                 "/api/v1/targets", "/api/v1/agents", "/api/v1/profiles", "/api/v1/renewal-policies",
                 "/api/v1/policies", "/api/v1/agent-groups"):
        response = await demo.admin.get(path, params={"per_page": 500})
        assert response.status_code == 200, f"{path}: {response.text}"
        assert response.json()["total"] > 0, path
    violations = await demo.admin.get("/api/v1/policies/rule-allowed-domains/violations")
    assert violations.status_code == 200 and violations.json()["total"] > 0


async def test_dashboard_statistics_have_something_to_show(demo: Api) -> None:
    summary = (await demo.admin.get("/api/v1/stats/summary")).json()
    assert summary["total_certificates"] >= 28  # archived ones may be left out
    assert summary["expiring_certificates"] >= 5
    assert summary["expired_certificates"] >= 3 and summary["revoked_certificates"] == 2
    assert summary["total_agents"] == 6 and summary["offline_agents"] >= 2
    assert summary["failed_jobs"] > 0 and summary["complete_jobs"] > 0
    by_status = (await demo.admin.get("/api/v1/stats/certificates-by-status")).json()["status_counts"]
    assert {s["status"] for s in by_status if s["count"]} == {s.value for s in CertificateStatus}
    timeline = (await demo.admin.get("/api/v1/stats/expiration-timeline", params={"days": 30})).json()["buckets"]
    assert sum(b["count"] for b in timeline) >= 5
    trends = (await demo.admin.get("/api/v1/stats/job-trends", params={"days": 180})).json()["trends"]
    busy_days = [t for t in trends if t["completed_count"] or t["failed_count"]]
    assert len(busy_days) >= 100
    assert sum(t["failed_count"] for t in trends) > 0
    issued = (await demo.admin.get("/api/v1/stats/issuance-rate", params={"days": 180})).json()["rate"]
    assert sum(p["issued_count"] for p in issued) >= 20


async def test_seeding_is_idempotent(database_url: str, tmp_path: Path) -> None:
    running, lifespan = await _start(database_url, tmp_path / "data")
    try:
        before = await _counts(running)
        assert await seed_demo(running.services.ctx) is None
        assert await _counts(running) == before
    finally:
        await stop_api(running, lifespan)
    again, lifespan = await _start(database_url, tmp_path / "data")  # a second boot with --demo
    try:
        assert await _counts(again) == before
    finally:
        await stop_api(again, lifespan)


async def test_no_seed_when_certificates_exist(database_url: str, tmp_path: Path) -> None:
    running, lifespan = await _start(database_url, tmp_path / "data", demo=False)
    try:
        assert await _count(running, managed_certificates) == 0
        await certificate(running.admin)
        assert await seed_demo(running.services.ctx) is None
        assert await _count(running, managed_certificates) == 1
        assert await _count(running, agents) == 0
    finally:
        await stop_api(running, lifespan)


async def test_name_clash_leaves_the_database_untouched(database_url: str, tmp_path: Path) -> None:
    running, lifespan = await _start(database_url, tmp_path / "data", demo=False)
    try:
        await team(running.admin, name="Payments")
        assert await seed_demo(running.services.ctx) is None
        assert await _count(running, managed_certificates) == 0
        assert await _count(running, teams) == 1
        assert await _count(running, agents) == 0
    finally:
        await stop_api(running, lifespan)

"""An agent's CSR: the same outcome on SQLite (the general path) and PostgreSQL (one read, one atomic write).

On PostgreSQL `IssuanceService.submit_csr` reads everything in one statement and writes the version, the
certificate, the job, the deployment jobs and both audit rows in one statement that only completes the job
if it is unchanged since the read (services/issuance.py `_submit_csr_fast`). These tests check that path
stores exactly what the general path stores, sees profile and CA changes at once (nothing stale is cached),
and leaves anything that changed between its read and its write to the general path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from certctl.store import ca_repo, issuance_repo, rows
from certctl.store.schema import deployment_targets, issuers, managed_certificates
from tests import factories
from tests.conftest import Api
from tests.pki_helpers import make_csr, split_pem

Outcomes = list[issuance_repo.StoredIssuance]


@pytest.fixture
def fast_writes(monkeypatch: pytest.MonkeyPatch) -> Outcomes:
    """The outcomes of the PostgreSQL one-statement write, in order (it is never called on SQLite)."""
    seen: Outcomes = []
    original = issuance_repo.store_agent_issuance

    async def spy(*args: Any, **kwargs: Any) -> issuance_repo.StoredIssuance:
        stored = await original(*args, **kwargs)
        seen.append(stored)
        return stored

    monkeypatch.setattr(issuance_repo, "store_agent_issuance", spy)
    return seen


async def after_read(api: Api, monkeypatch: pytest.MonkeyPatch, change: Callable[[], Awaitable[None]]) -> None:
    """Run `change` once, between the fast path's read and its write (the local CA loaded first: its first
    use in a process reads again after loading it)."""
    async with api.services.ctx.db.read() as conn:
        issuer = await rows.get_row(conn, issuers, "iss-local")
        assert issuer is not None
        await api.services.issuance.cas.issuing_ca(conn, issuer)
    original = issuance_repo.csr_intake
    pending = [change]

    async def hooked(*args: Any, **kwargs: Any) -> issuance_repo.CSRIntake:
        found = await original(*args, **kwargs)
        if pending:
            await pending.pop()()
        return found

    monkeypatch.setattr(issuance_repo, "csr_intake", hooked)


async def _setup(api: Api, targets: int = 1, **cert_values: Any) -> tuple[dict[str, Any], str, list[str]]:
    cert = await factories.seed_certificate(api, **cert_values)
    agent_id = await factories.seed_agent(api)
    target_ids = [await factories.seed_target(api, agent_id) for _ in range(targets)]
    for target_id in target_ids:
        await factories.seed_mapping(api, cert["id"], target_id)
    return cert, agent_id, target_ids


async def _renew(api: Api, cert_id: str) -> str:
    response = await api.admin.post(f"/api/v1/certificates/{cert_id}/renew")
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


async def _submit(api: Api, agent_id: str, cert: dict[str, Any], csr_pem: str | None = None,
                  job_id: str | None = None) -> Any:
    body = {"csr_pem": csr_pem or make_csr([cert["common_name"]])[0], "certificate_id": cert["id"]}
    if job_id:
        body["job_id"] = job_id
    return await api.admin.post(f"/api/v1/agents/{agent_id}/csr", json=body)


async def _audit(api: Api, action: str, resource_id: str) -> list[dict[str, Any]]:
    await api.services.audit_sink.flush()
    response = await api.admin.get("/api/v1/audit", params={"action": action, "resource_id": resource_id})
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


async def _deployments(api: Api, cert_id: str) -> list[dict[str, Any]]:
    response = await api.admin.get("/api/v1/jobs", params={"certificate_id": cert_id, "type": "Deployment"})
    data: list[dict[str, Any]] = response.json()["data"]
    return data


async def test_a_csr_stores_version_certificate_job_deployments_and_audit(
    api: Api, backend: str, fast_writes: Outcomes
) -> None:
    cert, agent_id, (live, disabled, retired) = await _setup(api, targets=3)
    async with api.services.ctx.db.transaction() as conn:
        await rows.update_row(conn, deployment_targets, disabled, {"enabled": False})
        await rows.update_row(conn, deployment_targets, retired, {"retired_at": factories._now()})
    job_id = await _renew(api, cert["id"])
    csr_pem, key = make_csr([cert["common_name"]])

    response = await _submit(api, agent_id, cert, csr_pem, job_id=job_id)

    assert response.status_code == 202, response.text
    body = response.json()
    assert body["job_status"] == "Completed" and body["job_id"] == job_id
    assert [s.completed for s in fast_writes] == ([True] if backend == "postgresql" else [])
    job = (await api.admin.get(f"/api/v1/jobs/{job_id}")).json()
    assert job["status"] == "Completed" and job["attempts"] == 1 and job["agent_id"] == agent_id
    assert job["started_at"] is not None and job["completed_at"] is not None and job["last_error"] is None
    after = (await api.admin.get(f"/api/v1/certificates/{cert['id']}")).json()
    assert after["status"] == "Active"
    [version] = (await api.admin.get(f"/api/v1/certificates/{cert['id']}/versions")).json()["data"]
    assert version["id"] == body["version_id"] and version["serial_number"] == body["serial_number"]
    assert version["csr_pem"] == csr_pem.strip() + "\n"
    leaf = x509.load_pem_x509_certificate(split_pem(version["pem_chain"])[0].encode())
    assert leaf.public_key() == key.public_key()
    assert after["expires_at"].replace("Z", "+00:00")[:19] == leaf.not_valid_after_utc.isoformat()[:19]
    deployments = await _deployments(api, cert["id"])
    assert [(d["target_id"], d["status"], d["agent_id"]) for d in deployments] == [(live, "Pending", agent_id)]
    [issued] = await _audit(api, "certificate_issued", cert["id"])
    assert issued["details"]["deployment_jobs"] == [deployments[0]["id"]]
    assert issued["details"]["version_id"] == version["id"] and issued["details"]["key_generation"] == "agent"
    assert issued["details"]["serial_number"] == body["serial_number"] and issued["actor"] == "system"
    [submitted] = await _audit(api, "csr_submitted", job_id)
    assert submitted["details"]["agent_id"] == agent_id and submitted["details"]["attempt"] == 1


async def test_a_profile_change_applies_to_the_next_csr(api: Api, backend: str, fast_writes: Outcomes) -> None:
    profile = await factories.seed_profile(api)
    cert, agent_id, _ = await _setup(api, certificate_profile_id=profile)
    await _renew(api, cert["id"])
    assert (await _submit(api, agent_id, cert)).status_code == 202  # the parsed profile is now cached

    changed = await api.admin.put(f"/api/v1/profiles/{profile}", json={
        "allowed_key_algorithms": [{"algorithm": "RSA", "min_size": 3072}], "max_ttl_seconds": 7 * 86400})
    assert changed.status_code == 200, changed.text
    job_id = await _renew(api, cert["id"])
    refused = await _submit(api, agent_id, cert)  # an ECDSA key
    assert refused.status_code == 400 and "key_algorithm" in refused.json()["message"], refused.text
    assert (await api.admin.get(f"/api/v1/jobs/{job_id}")).json()["status"] == "AwaitingCSR"

    csr_pem, _ = make_csr([cert["common_name"]], rsa.generate_private_key(public_exponent=65537, key_size=3072))
    accepted = await _submit(api, agent_id, cert, csr_pem)
    assert accepted.status_code == 202, accepted.text
    versions = (await api.admin.get(f"/api/v1/certificates/{cert['id']}/versions")).json()["data"]
    newest = max(versions, key=lambda v: v["created_at"])
    leaf = x509.load_pem_x509_certificate(split_pem(newest["pem_chain"])[0].encode())
    assert (leaf.not_valid_after_utc - leaf.not_valid_before_utc).days == 7  # the new max TTL
    assert len(fast_writes) == (2 if backend == "postgresql" else 0)


async def test_a_retired_ca_stops_issuing_at_once(api: Api, fast_writes: Outcomes) -> None:
    cert, agent_id, _ = await _setup(api)
    await _renew(api, cert["id"])
    assert (await _submit(api, agent_id, cert)).status_code == 202  # the CA is now loaded in this process
    async with api.services.ctx.db.read() as conn:
        root = await ca_repo.active_root(conn, "iss-local")
    assert root is not None
    retired = await api.admin.post(f"/api/v1/intermediates/{root['id']}/retire", json={})
    assert retired.status_code == 200, retired.text

    job_id = await _renew(api, cert["id"])
    refused = await _submit(api, agent_id, cert)
    assert refused.status_code == 409 and "no active root CA" in refused.json()["message"], refused.text
    assert (await api.admin.get(f"/api/v1/jobs/{job_id}")).json()["status"] == "AwaitingCSR"
    assert len((await api.admin.get(f"/api/v1/certificates/{cert['id']}/versions")).json()["data"]) == 1


async def test_concurrent_csrs_for_one_job_store_one_version(api: Api) -> None:
    cert, agent_id, _ = await _setup(api)
    job_id = await _renew(api, cert["id"])
    answers = await asyncio.gather(*(_submit(api, agent_id, cert) for _ in range(6)))
    assert sorted(a.status_code for a in answers) == [202] + [409] * 5, [a.text for a in answers]
    assert (await api.admin.get(f"/api/v1/jobs/{job_id}")).json()["attempts"] == 1
    assert len((await api.admin.get(f"/api/v1/certificates/{cert['id']}/versions")).json()["data"]) == 1
    assert len(await _audit(api, "certificate_issued", cert["id"])) == 1
    assert len(await _audit(api, "csr_submitted", job_id)) == 1
    assert len(await _deployments(api, cert["id"])) == 1


# ---- PostgreSQL only: what the one-statement write does when things change after its read -------------

@pytest.mark.parametrize("backend", ["postgresql"])
async def test_a_job_cancelled_after_the_read_gets_nothing_written(
    api: Api, monkeypatch: pytest.MonkeyPatch, fast_writes: Outcomes
) -> None:
    cert, agent_id, _ = await _setup(api)
    job_id = await _renew(api, cert["id"])

    async def cancel() -> None:
        response = await api.admin.post(f"/api/v1/jobs/{job_id}/cancel")
        assert response.status_code in (200, 204), response.text

    await after_read(api, monkeypatch, cancel)
    response = await _submit(api, agent_id, cert)
    assert response.status_code == 409, response.text  # the general path's answer, with the job locked
    assert [s.completed for s in fast_writes] == [False]
    assert (await api.admin.get(f"/api/v1/jobs/{job_id}")).json()["status"] == "Cancelled"
    assert (await api.admin.get(f"/api/v1/certificates/{cert['id']}/versions")).json()["data"] == []
    assert await _audit(api, "csr_submitted", job_id) == []
    assert await _audit(api, "certificate_issued", cert["id"]) == []
    assert await _deployments(api, cert["id"]) == []


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_a_target_disabled_after_the_read_gets_no_deployment_and_the_audit_says_so(
    api: Api, monkeypatch: pytest.MonkeyPatch, fast_writes: Outcomes
) -> None:
    cert, agent_id, (kept, disabled) = await _setup(api, targets=2)
    await _renew(api, cert["id"])

    async def disable() -> None:
        async with api.services.ctx.db.transaction() as conn:
            await rows.update_row(conn, deployment_targets, disabled, {"enabled": False})

    await after_read(api, monkeypatch, disable)
    response = await _submit(api, agent_id, cert)
    assert response.status_code == 202, response.text
    assert [s.completed for s in fast_writes] == [True]
    deployments = await _deployments(api, cert["id"])
    assert [d["target_id"] for d in deployments] == [kept]
    [issued] = await _audit(api, "certificate_issued", cert["id"])
    assert issued["details"]["deployment_jobs"] == [deployments[0]["id"]]


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_a_certificate_revoked_after_the_read_keeps_its_status_and_queues_no_deployment(
    api: Api, monkeypatch: pytest.MonkeyPatch, fast_writes: Outcomes
) -> None:
    cert, agent_id, _ = await _setup(api)
    job_id = await _renew(api, cert["id"])

    async def revoke() -> None:
        async with api.services.ctx.db.transaction() as conn:
            await rows.update_row(conn, managed_certificates, cert["id"], {"status": "Revoked"})

    await after_read(api, monkeypatch, revoke)
    response = await _submit(api, agent_id, cert)
    assert response.status_code == 202, response.text
    assert [(s.completed, s.activated) for s in fast_writes] == [(True, False)]
    assert (await api.admin.get(f"/api/v1/certificates/{cert['id']}")).json()["status"] == "Revoked"
    assert (await api.admin.get(f"/api/v1/jobs/{job_id}")).json()["status"] == "Completed"
    assert len((await api.admin.get(f"/api/v1/certificates/{cert['id']}/versions")).json()["data"]) == 1
    assert await _deployments(api, cert["id"]) == []
    [issued] = await _audit(api, "certificate_issued", cert["id"])
    assert issued["details"]["deployment_jobs"] == []

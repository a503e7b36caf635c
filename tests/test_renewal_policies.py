"""Renewal policies: rp-<slug> ids, defaults, bounds, alert settings, conflicts, auth and audit."""

from __future__ import annotations

import pytest

from tests import factories
from tests.conftest import Api
from tests.test_policy_engine import insert_certificate


async def test_renewal_policy_defaults_and_crud(api: Api) -> None:
    seeded = (await api.admin.get("/api/v1/renewal-policies")).json()
    assert [p["id"] for p in seeded["data"]] == ["rp-default"]

    created = await factories.renewal_policy(api.admin, name="Fast Lane!")
    assert created["id"] == "rp-fast-lane"
    assert created["renewal_window_days"] == 30 and created["auto_renew"] is True
    assert created["max_retries"] == 3 and created["retry_interval_seconds"] == 3600
    assert created["alert_thresholds_days"] == [30, 14, 7, 0]
    assert created["alert_channels"] == {"informational": ["Email"], "warning": ["Email"], "critical": ["Email"]}
    assert created["alert_severity_map"] == {"30": "informational", "14": "warning", "7": "warning", "0": "critical"}
    assert created["certificate_profile_id"] is None

    got = await api.user.get(f"/api/v1/renewal-policies/{created['id']}")
    assert got.status_code == 200 and got.json() == created
    listed = (await api.admin.get("/api/v1/renewal-policies")).json()
    assert listed["total"] == 2

    updated = await api.admin.put(f"/api/v1/renewal-policies/{created['id']}", json={
        "renewal_window_days": 45, "max_retries": 0, "auto_renew": False,
        "alert_thresholds_days": [60, 30, 30, 1],
        "alert_channels": {"Critical": ["pagerduty", "Slack"], "warning": []},
        "alert_severity_map": {"60": "Informational", "1": "critical"},
    })
    assert updated.status_code == 200, updated.text
    body = updated.json()
    assert body["renewal_window_days"] == 45 and body["max_retries"] == 0 and body["auto_renew"] is False
    assert body["alert_thresholds_days"] == [60, 30, 1]
    assert body["alert_channels"] == {"critical": ["PagerDuty", "Slack"], "warning": []}
    assert body["alert_severity_map"] == {"60": "informational", "1": "critical"}
    assert body["name"] == "Fast Lane!" and body["id"] == "rp-fast-lane"

    assert (await api.admin.delete(f"/api/v1/renewal-policies/{created['id']}")).status_code == 204
    assert (await api.admin.get(f"/api/v1/renewal-policies/{created['id']}")).status_code == 404
    assert set(await api.audit_actions("renewal_policy")) == {
        "renewal_policy_created", "renewal_policy_updated", "renewal_policy_deleted",
    }


async def test_renewal_policy_ids(api: Api) -> None:
    explicit = await factories.renewal_policy(api.admin, id="rp-custom", name="custom")
    assert explicit["id"] == "rp-custom"
    # Another name with the same slug gets a suffix instead of a collision.
    first = await factories.renewal_policy(api.admin, name="Urgent")
    second = await factories.renewal_policy(api.admin, name="urgent!")
    assert (first["id"], second["id"]) == ("rp-urgent", "rp-urgent-2")
    again = await api.admin.post("/api/v1/renewal-policies", json={"id": "rp-custom", "name": "x"})
    assert again.status_code == 409


async def test_channels_partial_keeps_defaults_for_other_tiers(api: Api) -> None:
    created = await factories.renewal_policy(api.admin, alert_channels={"critical": ["Email", "Webhook"]})
    assert created["alert_channels"] == {
        "informational": ["Email"], "warning": ["Email"], "critical": ["Email", "Webhook"],
    }


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": 7}, "name"),
        ({"name": "x", "renewal_window_days": 0}, "renewal_window_days"),
        ({"name": "x", "renewal_window_days": 366}, "renewal_window_days"),
        ({"name": "x", "max_retries": 11}, "max_retries"),
        ({"name": "x", "max_retries": -1}, "max_retries"),
        ({"name": "x", "retry_interval_seconds": 59}, "retry_interval_seconds"),
        ({"name": "x", "retry_interval_seconds": 86401}, "retry_interval_seconds"),
        ({"name": "x", "alert_thresholds_days": [30, 400]}, "alert_thresholds_days"),
        ({"name": "x", "alert_thresholds_days": [-1]}, "alert_thresholds_days"),
        ({"name": "x", "alert_channels": {"urgent": ["Email"]}}, "unknown alert tier"),
        ({"name": "x", "alert_channels": {"critical": ["Carrier pigeon"]}}, "Carrier pigeon"),
        ({"name": "x", "alert_severity_map": {"soon": "warning"}}, "alert_severity_map"),
        ({"name": "x", "alert_severity_map": {"7": "panic"}}, "panic"),
        ({"name": "x", "certificate_profile_id": "prof-1"}, "certificate_profile_id"),
        ({"name": "x", "window": 3}, "window"),
    ],
)
async def test_renewal_policy_bad_input(api: Api, body: dict[str, object], expected: str) -> None:
    response = await api.admin.post("/api/v1/renewal-policies", json=body)
    assert response.status_code == 400, response.text
    assert expected in response.json()["message"]
    assert (await api.admin.get("/api/v1/renewal-policies")).json()["total"] == 1, "bad input left rows behind"


async def test_renewal_policy_update_errors(api: Api) -> None:
    assert (await api.admin.put("/api/v1/renewal-policies/nope", json={"max_retries": 1})).status_code == 404
    assert (await api.admin.delete("/api/v1/renewal-policies/nope")).status_code == 404
    created = await factories.renewal_policy(api.admin, name="other")
    rename = await api.admin.put(f"/api/v1/renewal-policies/{created['id']}", json={"name": "Default"})
    assert rename.status_code == 409 and "Default" in rename.json()["message"]
    out_of_range = await api.admin.put(f"/api/v1/renewal-policies/{created['id']}", json={"max_retries": 99})
    assert out_of_range.status_code == 400


async def test_duplicate_name_is_409(api: Api) -> None:
    clash = await api.admin.post("/api/v1/renewal-policies", json={"name": "Default"})
    assert clash.status_code == 409 and "Default" in clash.json()["message"]


async def test_renewal_policy_in_use_cannot_be_deleted(api: Api) -> None:
    await insert_certificate(api, id="mc-a", name="a")
    response = await api.admin.delete("/api/v1/renewal-policies/rp-default")
    assert response.status_code == 409
    assert "1 certificates" in response.json()["message"]
    assert (await api.admin.get("/api/v1/renewal-policies/rp-default")).status_code == 200


async def test_renewal_policy_auth(api: Api) -> None:
    assert (await api.anon.get("/api/v1/renewal-policies")).status_code == 401
    assert (await api.anon.delete("/api/v1/renewal-policies/rp-default")).status_code == 401
    assert (await api.user.post("/api/v1/renewal-policies", json={"name": "by bob"})).status_code == 201

"""Two real `certctl server` processes on one PostgreSQL database, each with its scheduler, and one webhook
receiver: revocations (the audit outbox) and expiring certificates (the expiry scan), made through both servers,
are each delivered exactly once, although both servers run the delivery loops (rows are leased with
FOR UPDATE SKIP LOCKED) and the leader loops move between them only by the lease."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from tests.failure_rig import wait_for
from tests.notify_receivers import HttpReceiver
from tests.test_crash_safety import Api, _psql, pg_url
from tests.test_replicas import _replica_env
from tests.test_server_process import Server

pytestmark = pytest.mark.slow

__all__ = ["pg_url"]

CERTS = 20
REVOKED = 8


def test_two_servers_deliver_each_notification_exactly_once(tmp_path: Path, pg_url: str) -> None:
    query = _psql(pg_url)
    hook = HttpReceiver().start()
    env = {**_replica_env(pg_url), "CERTCTL_WEBHOOK_URL": hook.url + "/hook",
           "CERTCTL_WEBHOOK_SECRET": "replica-webhook-secret", "CERTCTL_NOTIFIER_ALLOW_LOOPBACK": "true",
           "CERTCTL_NOTIFICATION_PROCESS_INTERVAL": "0.2s", "CERTCTL_NOTIFICATION_RETRY_INTERVAL": "0.5s",
           "CERTCTL_NOTIFICATION_EXPIRY_SCAN_INTERVAL": "0.3s"}
    a = Server(tmp_path / "a" / "data", env)
    b = Server(tmp_path / "b" / "data", env)
    a.data_dir.mkdir(parents=True)
    b.data_dir.mkdir(parents=True)
    try:
        a.start()
        (b.data_dir / "keys").symlink_to(a.data_dir / "keys")
        b.start()
        apis = [Api(a), Api(b)]
        team = apis[0].post("/api/v1/teams", {"name": "notify-team"})
        owner = apis[1].post("/api/v1/owners", {"name": "notify-owner", "email": "ops@example.com",
                                                "team_id": team["id"]})
        policy = apis[0].post("/api/v1/renewal-policies", {
            "name": "notify-policy", "alert_thresholds_days": [30, 7],
            "alert_channels": {tier: ["Webhook"] for tier in ("informational", "warning", "critical")},
        })
        ids = [apis[i % 2].post("/api/v1/certificates", {
            "name": f"notify-{i}", "common_name": f"notify-{i}.example.com", "owner_id": owner["id"],
            "team_id": team["id"], "issuer_id": "iss-local", "renewal_policy_id": policy["id"],
        })["id"] for i in range(CERTS)]
        for i, cert_id in enumerate(ids[:REVOKED]):  # through both servers
            apis[i % 2].post(f"/api/v1/certificates/{cert_id}/revoke", {"reason": "superseded"})
        expiring = ", ".join(f"'{cert_id}'" for cert_id in ids[REVOKED:])
        query(f"UPDATE managed_certificates SET status = 'Active', expires_at = now() + interval '5 days' "
              f"WHERE id IN ({expiring})")

        expected = CERTS  # one Revocation each for the revoked, one ExpirationWarning each for the others

        def delivered() -> bool:
            return len(hook.received) >= expected and \
                int(query("SELECT count(*) FROM notification_events WHERE status = 'sent'")[0][0]) >= expected

        wait_for(delivered, f"{expected} notifications delivered", timeout=90, interval=0.2)
        time.sleep(3)  # several more ticks of every loop on both servers: nothing more may arrive
    finally:
        a.kill()
        b.kill()
        hook.stop()

    deliveries = Counter(r.headers["x-certctl-notification-id"] for r in hook.received)
    assert len(hook.received) == expected and set(deliveries.values()) == {1}, deliveries.most_common(3)
    rows = query("SELECT id, type, certificate_id, status FROM notification_events ORDER BY certificate_id")
    assert len(rows) == expected and {r[3] for r in rows} == {"sent"}
    assert set(deliveries) == {r[0] for r in rows}
    by_cert = Counter((r[2], r[1]) for r in rows)
    assert by_cert == Counter({**{(c, "Revocation"): 1 for c in ids[:REVOKED]},
                               **{(c, "ExpirationWarning"): 1 for c in ids[REVOKED:]}})
    bodies = [orjson.loads(r.body) for r in hook.received]
    assert all(body["message" if body["type"] == "alert" else "body"] for body in bodies)
    senders = query("SELECT DISTINCT details::jsonb ->> 'sender' FROM audit_events "
                    "WHERE action = 'notification_sent'")
    assert 1 <= len(senders) <= 2  # both servers may have sent some (each row by one of them: checked above)
    print(f"senders: {len(senders)}")

"""GET /api/v1/certificates: filters, sorts, sparse fields, offset and keyset paging, query count."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event

from certctl.store import certificates_repo, rows, schema
from tests import factories
from tests.conftest import Api

CERTS = "/api/v1/certificates"
BASE = datetime(2026, 3, 1, tzinfo=UTC)
STATUSES = ["Pending", "Active", "Expiring", "Active", "Revoked", "Active", "Expired", "Archived"]


async def seed(api: Api, count: int, *, targets_per_cert: int = 0) -> dict[str, Any]:
    """`count` certificates with varied, deterministic columns, written straight to the store."""
    team_a, team_b = await factories.team(api.admin), await factories.team(api.admin)
    owner_a = await factories.owner(api.admin, team_id=team_a["id"])
    owner_b = await factories.owner(api.admin, team_id=team_b["id"])
    now = datetime.now(UTC)
    agents = ["agent-l1", "agent-l2"]
    async with api.services.ctx.db.transaction() as conn:
        await rows.insert_row(conn, schema.issuers, {
            "id": "iss-acme", "name": "ACME", "type": "ACME", "config": {}, "created_at": now, "updated_at": now,
        })
        await rows.insert_row(conn, schema.certificate_profiles, {
            "id": "prof-l", "name": "prof-l", "allowed_key_algorithms": [], "allowed_ekus": [],
            "required_san_patterns": [], "required_csr_attributes": [], "created_at": now, "updated_at": now,
        })
        for agent in agents:
            await rows.insert_row(conn, schema.agents, {
                "id": agent, "name": agent, "registered_at": now, "created_at": now, "updated_at": now,
            })
        target_ids = [f"tgt-{i}" for i in range(max(targets_per_cert, 2))]
        for i, target in enumerate(target_ids):
            await rows.insert_row(conn, schema.deployment_targets, {
                "id": target, "name": target, "type": "NGINX", "agent_id": agents[i % 2], "config": {},
                "created_at": now, "updated_at": now,
            })
        certs = []
        for i in range(count):
            even = i % 2 == 0
            certs.append({
                "id": f"c-{i:03d}", "name": f"cert-{(i * 7919) % 1000:03d}-{i}",
                "common_name": f"h{(i * 3) % 7}.example.com",
                "sans": [f"h{i}.example.com"], "environment": ["prod", "staging", "dev"][i % 3],
                "owner_id": owner_a["id"] if even else owner_b["id"],
                "team_id": team_a["id"] if even else team_b["id"],
                "issuer_id": "iss-local" if i % 4 else "iss-acme", "renewal_policy_id": "rp-default",
                "certificate_profile_id": "prof-l" if i % 5 == 0 else None,
                "status": STATUSES[i % len(STATUSES)],
                # Every third certificate has no expiry yet; the others spread around BASE with ties.
                "expires_at": None if i % 3 == 2 else BASE + timedelta(days=(i * 5) % 11),
                "tags": {"i": str(i)}, "source": "",
                "created_at": BASE - timedelta(days=30) + timedelta(hours=i // 2),  # pairs share created_at
                "updated_at": BASE - timedelta(days=10) + timedelta(minutes=(i * 13) % 29),
            })
        await rows.insert_many(conn, schema.managed_certificates, certs)
        mapping_rows = []
        for i, cert in enumerate(certs):
            default = [target_ids[i % 2]] if i % 4 == 1 else []
            chosen = target_ids[:targets_per_cert] if targets_per_cert else default
            mapping_rows += [{"certificate_id": cert["id"], "target_id": t, "created_at": now} for t in chosen]
        await rows.insert_many(conn, schema.certificate_target_mappings, mapping_rows)
    return {"certs": certs, "teams": (team_a, team_b), "owners": (owner_a, owner_b)}


async def ids(api: Api, **params: Any) -> list[str]:
    response = await api.admin.get(CERTS, params={"per_page": 500, **params})
    assert response.status_code == 200, response.text
    return [c["id"] for c in response.json()["data"]]


async def walk(api: Api, page_size: int, **params: Any) -> list[str]:
    """Every id, following next_cursor from the first page to the last."""
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(200):
        query = {"page_size": page_size, **params}
        if cursor:
            query["cursor"] = cursor
        response = await api.admin.get(CERTS, params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"data", "next_cursor", "page_size"} and body["page_size"] == page_size
        assert len(body["data"]) <= page_size
        seen += [c["id"] for c in body["data"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return seen
    raise AssertionError("cursor walk did not end")


def expected_order(certs: list[dict[str, Any]], column: str, descending: bool) -> list[str]:
    """The documented order: the sort column (NULL expiries last ascending, first descending), then
    created_at for the low-cardinality columns, then id."""
    ties = {"status": ["created_at"], "environment": ["created_at"]}.get(column, [])

    def key(c: dict[str, Any]) -> tuple[Any, ...]:
        value = c[column]
        null = value is None
        return (null, value if not null else BASE, *(c[t] for t in ties), c["id"])

    ordered = sorted(certs, key=key)
    if descending:
        ordered.reverse()
    return [c["id"] for c in ordered]


async def test_page_mode_envelope_and_total(api: Api) -> None:
    data = await seed(api, 7)
    first = (await api.admin.get(CERTS, params={"per_page": 3})).json()
    assert set(first) == {"data", "total", "page", "per_page"}
    assert first["total"] == 7 and first["page"] == 1 and first["per_page"] == 3 and len(first["data"]) == 3
    last = (await api.admin.get(CERTS, params={"per_page": 3, "page": 3})).json()
    assert last["total"] == 7 and len(last["data"]) == 1
    beyond = (await api.admin.get(CERTS, params={"per_page": 3, "page": 9})).json()
    assert beyond["total"] == 7 and beyond["data"] == []
    default = (await api.user.get(CERTS)).json()
    assert default["per_page"] == 50 and default["total"] == 7
    assert [c["id"] for c in default["data"]] == expected_order(data["certs"], "created_at", False)


async def test_list_item_matches_get(api: Api) -> None:
    t = await factories.team(api.admin)
    cert = await factories.certificate(api.admin, team_id=t["id"], tags={"a": "b"}, sans=["x.example.com"])
    listed = (await api.admin.get(CERTS)).json()["data"]
    assert listed == [cert]


async def test_filters(api: Api) -> None:
    data = await seed(api, 24)
    certs = data["certs"]
    team_a, _ = data["teams"]
    owner_a, owner_b = data["owners"]

    def where(pred: Any) -> list[str]:
        return expected_order([c for c in certs if pred(c)], "created_at", False)

    assert await ids(api, status="Active") == where(lambda c: c["status"] == "Active")
    assert await ids(api, status="active") == where(lambda c: c["status"] == "Active"), "enum case is normalised"
    assert await ids(api, environment="staging") == where(lambda c: c["environment"] == "staging")
    assert await ids(api, owner_id=owner_b["id"]) == where(lambda c: c["owner_id"] == owner_b["id"])
    assert await ids(api, team_id=team_a["id"]) == where(lambda c: c["team_id"] == team_a["id"])
    assert await ids(api, issuer_id="iss-acme") == where(lambda c: c["issuer_id"] == "iss-acme")
    assert await ids(api, profile_id="prof-l") == where(lambda c: c["certificate_profile_id"] == "prof-l")
    # agent-l2 owns tgt-1, mapped to every cert with i % 4 == 1 and (i % 2 == 1) → tgt index i % 2 == 1.
    assert await ids(api, agent_id="agent-l2") == where(lambda c: int(c["id"][2:]) % 4 == 1)
    assert await ids(api, agent_id="agent-l1") == []
    cut = BASE + timedelta(days=4)
    assert await ids(api, expires_before=cut.isoformat()) == where(
        lambda c: c["expires_at"] is not None and c["expires_at"] < cut)
    assert await ids(api, expires_after="2026-03-05T00:00:00Z") == where(
        lambda c: c["expires_at"] is not None and c["expires_at"] > cut)
    created_cut = BASE - timedelta(days=30) + timedelta(hours=5)
    assert await ids(api, created_after=created_cut.isoformat()) == where(lambda c: c["created_at"] > created_cut)
    updated_cut = BASE - timedelta(days=10) + timedelta(minutes=14)
    assert await ids(api, updated_after=updated_cut.isoformat()) == where(lambda c: c["updated_at"] > updated_cut)
    combined = await ids(api, status="Active", environment="prod", owner_id=owner_a["id"])
    assert combined == where(
        lambda c: c["status"] == "Active" and c["environment"] == "prod" and c["owner_id"] == owner_a["id"])
    assert (await api.admin.get(CERTS, params={"status": "Active", "per_page": 2})).json()["total"] == len(
        where(lambda c: c["status"] == "Active"))


async def test_bad_parameters_are_400(api: Api) -> None:
    await seed(api, 3)
    bad: list[dict[str, Any]] = [
        {"status": "Bogus"},
        {"expires_before": "not-a-date"},
        {"expires_after": "2026-13-01"},
        {"created_after": "yesterday"},
        {"updated_after": "x"},
        {"sort": "colour"},
        {"sort": "-"},
        {"fields": "id,colour"},
        {"page": 0},
        {"per_page": 501},
        {"page_size": 0},
        {"page_size": 501},
        {"page": 1, "cursor": "abc"},
        {"per_page": 10, "page_size": 10},
    ]
    for params in bad:
        response = await api.admin.get(CERTS, params=params)
        assert response.status_code == 400, (params, response.text)
        assert response.json()["error"] == "Bad Request" and response.json()["message"]
    sort_error = (await api.admin.get(CERTS, params={"sort": "colour"})).json()["message"]
    assert "colour" in sort_error and "notAfter" in sort_error
    assert (await api.anon.get(CERTS)).status_code == 401


async def test_sorts_match_the_documented_order(api: Api) -> None:
    data = await seed(api, 20)
    certs = data["certs"]
    for name, column in [
        ("notAfter", "expires_at"), ("expiresAt", "expires_at"), ("createdAt", "created_at"),
        ("updatedAt", "updated_at"), ("commonName", "common_name"), ("name", "name"),
        ("status", "status"), ("environment", "environment"),
    ]:
        for descending in (False, True):
            sort = ("-" if descending else "") + name
            assert await ids(api, sort=sort) == expected_order(certs, column, descending), sort


async def test_sparse_fields(api: Api) -> None:
    await seed(api, 4)
    body = (await api.admin.get(CERTS, params={"fields": "name,status"})).json()
    assert body["total"] == 4
    for item in body["data"]:
        assert list(item) == ["id", "name", "status"]
    with_targets = (await api.admin.get(CERTS, params={"fields": "target_ids, common_name ,id"})).json()["data"]
    assert all(set(item) == {"id", "common_name", "target_ids"} for item in with_targets)
    assert {item["id"]: item["target_ids"] for item in with_targets}["c-001"] == ["tgt-1"]
    keyset = (await api.admin.get(CERTS, params={"fields": "expires_at", "page_size": 2,
                                                   "sort": "-expiresAt"})).json()
    assert all(list(item) == ["id", "expires_at"] for item in keyset["data"])
    assert keyset["next_cursor"]


async def test_cursor_walk_covers_every_row_once_for_any_sort_and_filter(api: Api) -> None:
    data = await seed(api, 23)
    certs = data["certs"]
    for sort in ("createdAt", "-createdAt", "expiresAt", "-notAfter", "status", "-environment", "name",
                 "-commonName", "updatedAt"):
        full = await ids(api, sort=sort)
        assert len(full) == 23
        for size in (1, 4, 23, 50):
            assert await walk(api, size, sort=sort) == full, (sort, size)
    filtered = await ids(api, sort="-expiresAt", environment="prod")
    assert await walk(api, 2, sort="-expiresAt", environment="prod") == filtered
    active = [c for c in certs if c["status"] == "Active"]
    assert await walk(api, 3, status="Active") == expected_order(active, "created_at", False)
    assert await walk(api, 5, agent_id="nobody") == []


async def test_cursor_is_tamper_proof_and_bound_to_its_sort(api: Api) -> None:
    await seed(api, 6)
    first = (await api.admin.get(CERTS, params={"page_size": 2, "sort": "name"})).json()
    cursor = first["next_cursor"]
    assert cursor
    second = await api.admin.get(CERTS, params={"page_size": 2, "sort": "name", "cursor": cursor})
    assert second.status_code == 200 and second.json()["data"][0]["id"] not in {c["id"] for c in first["data"]}

    body, mac = cursor.split(".")
    flipped = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1]
    for bad in (flipped + "." + mac, body + "." + mac[::-1], "garbage", "a.b.c", "....", body):
        response = await api.admin.get(CERTS, params={"page_size": 2, "sort": "name", "cursor": bad})
        assert response.status_code == 400, bad
        assert "cursor" in response.json()["message"]
    other_sort = await api.admin.get(CERTS, params={"page_size": 2, "sort": "-name", "cursor": cursor})
    assert other_sort.status_code == 400 and "sort" in other_sort.json()["message"]


@contextmanager
def counting_queries(api: Api, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every statement sent: through SQLAlchemy, and straight on the driver connection (the list
    and get paths run there)."""
    statements: list[str] = []

    def on_execute(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        # The per-request audit sink writes on its own connection and schedule: not part of the cost.
        if "audit_events" not in statement and not statement.lstrip().upper().startswith(("BEGIN", "COMMIT")):
            statements.append(statement)

    real_fetch = certificates_repo._fetch

    async def counting_fetch(conn: Any, sql: str, params: Any) -> Any:
        statements.append(sql)
        return await real_fetch(conn, sql, params)

    engine = api.services.ctx.db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", on_execute)
    with monkeypatch.context() as patch:
        patch.setattr(certificates_repo, "_fetch", counting_fetch)
        try:
            yield statements
        finally:
            event.remove(engine, "before_cursor_execute", on_execute)


async def test_query_count_does_not_grow_with_the_page(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    await seed(api, 60, targets_per_cert=3)

    async def cost(path: str = CERTS, **params: Any) -> int:
        with counting_queries(api, monkeypatch) as statements:
            response = await api.admin.get(path, params=params)
            assert response.status_code == 200
        return len(statements)

    # Offset mode: the page (target_ids come from a sub-select in the same statement) + the count. The first list
    # of a filter in a process also looks for a total shared by another process; a small total is not shared,
    # so later lists of that filter do not look again.
    assert await cost(per_page=5) == 3
    assert await cost(per_page=5) == await cost(per_page=50) == 2
    page = (await api.admin.get(CERTS, params={"per_page": 50})).json()["data"]
    assert len(page) == 50 and all(len(c["target_ids"]) == 3 for c in page)
    # A first page holding everything needs no count; keyset mode never counts.
    assert await cost(per_page=500) == 1
    assert await cost(page_size=5) == await cost(page_size=50) == 1
    assert await cost(page_size=50, fields="id,name") == 1
    assert await cost(f"{CERTS}/c-001") == 1, "one certificate with its targets is one statement"


async def test_big_totals_are_cached_and_recounted_in_the_background(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    from certctl.services import certificates as service_module

    monkeypatch.setattr(service_module, "COUNT_CACHE_MIN", 5)
    monkeypatch.setattr(service_module, "WRITE_RECOUNT_SHARE", 0.0)  # due at once after a write (see below)
    service = api.services.certificates
    data = await seed(api, 7)

    async def total() -> int:
        response = await api.admin.get(CERTS, params={"per_page": 2})
        assert response.status_code == 200
        return int(response.json()["total"])

    assert await total() == 7
    extra = {**data["certs"][0], "id": "c-extra", "name": "extra"}
    async with api.services.ctx.db.transaction() as conn:  # behind the service's back: not seen yet
        await rows.insert_row(conn, schema.managed_certificates, extra)
    assert await total() == 7, "a big total may be a moment old"
    await service.settle_counts()
    assert await total() == 7, "still fresh: no recount was due"

    await factories.certificate(api.admin, team_id=data["teams"][0]["id"], owner_id=data["owners"][0]["id"])
    assert await total() == 7, "after a write the old figure is served while one recount runs"
    await service.settle_counts()
    assert await total() == 9, "the background recount landed"

    monkeypatch.setattr(service_module, "COUNT_CACHE_SECONDS", 0.0)
    async with api.services.ctx.db.transaction() as conn:
        await rows.delete_row(conn, schema.managed_certificates, "c-extra")
    assert await total() == 9  # the entry made before the change of TTL is still fresh
    service._count_cache.clear()
    assert await total() == 8, "no cached figure: counted exactly, in the request"


async def test_an_expired_total_is_recounted_once_not_by_every_request(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from certctl.services import certificates as service_module
    from certctl.store.certificates_repo import CertificateFilter

    service = api.services.certificates
    flt = CertificateFilter(status="Active")
    service._count_cache[flt.key()] = service_module._CachedCount(expires=0.0, total=123_456, counted_at=0.0)
    release = asyncio.Event()
    calls: list[bool] = []

    async def slow_count(conn: Any, flt: Any, *, background: bool = False) -> int:
        calls.append(background)
        await release.wait()
        return 200_000

    monkeypatch.setattr(certificates_repo, "count", slow_count)
    async with api.services.ctx.db.read() as conn:
        for _ in range(5):  # nobody waits for the recount: all get the previous figure at once
            assert await asyncio.wait_for(service._count(conn, flt), 1) == 123_456
    release.set()
    await service.settle_counts()
    assert calls == [True]  # one recount, run as a background one (no parallel workers on PostgreSQL)
    async with api.services.ctx.db.read() as conn:
        assert await service._count(conn, flt) == 200_000


async def test_a_total_is_kept_longer_the_bigger_it_is_and_writes_make_it_due_soon_not_at_once(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A count costs in proportion to its size: a total is kept total/20,000 s (10-60 s); a write through the
    process makes it due a tenth of that after it was counted, so a stream of writes costs one recount per
    interval, not one per write."""
    from certctl.services import certificates as service_module
    from certctl.store.certificates_repo import CertificateFilter

    assert [service_module.count_cache_seconds(n) for n in (10_000, 400_000, 700_000, 5_000_000)] == [10, 20, 35, 60]
    monkeypatch.setattr(service_module, "COUNT_CACHE_JITTER", 0.0)  # the spread has a test of its own
    clock = [1000.0]
    monkeypatch.setattr(service_module, "_now", lambda: clock[0])
    counts: list[int] = []

    async def counting(conn: Any, flt: Any, *, background: bool = False) -> int:
        counts.append(1)
        return 700_000

    monkeypatch.setattr(certificates_repo, "count", counting)
    service = api.services.certificates
    flt = CertificateFilter(status="Active")

    async def total() -> int:
        async with api.services.ctx.db.read() as conn:
            value = await service._count(conn, flt)
        await service.settle_counts()
        return value

    assert await total() == 700_000 and len(counts) == 1  # the first count, in the request
    clock[0] += 34
    await total()
    assert len(counts) == 1, "35 s for 700,000 rows: not due after 34 s"
    service._writes_happened()
    await total()
    assert len(counts) == 2, "a write made it due 3.5 s after its count: recounted"
    clock[0] += 1
    for _ in range(5):
        service._writes_happened()
        await total()
    assert len(counts) == 2, "more writes within 3.5 s of the recount: no recount per write"
    clock[0] += 3
    await total()
    assert len(counts) == 3


async def test_workers_started_together_do_not_recount_a_total_at_the_same_moment(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each cached total is kept 80-100 % of its time at random, so processes that counted it together (every
    worker at start) come due apart instead of all taking a core for the same big count at once."""
    from certctl.services import certificates as service_module
    from certctl.store.certificates_repo import CertificateFilter

    monkeypatch.setattr(service_module, "_now", lambda: 1000.0)
    service = api.services.certificates
    kept = []
    for _ in range(50):
        service._remember_count(CertificateFilter(status="Active").key(), 700_000)  # 35 s nominal
        kept.append(service._count_cache[CertificateFilter(status="Active").key()].expires - 1000.0)
    assert all(0.8 * 35 <= seconds <= 35 for seconds in kept), kept
    assert max(kept) - min(kept) > 3, "spread over the last fifth of the interval, not one moment"


async def test_a_background_recount_walks_the_index_in_short_steps_and_counts_exactly(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under no filter or one equality filter, a background recount is a series of statements each skipping
    COUNT_STEP rows (so none takes a core for long); the figure is exact, rows sharing a created_at included.
    Other filters count in one statement."""
    data = await seed(api, 61)
    monkeypatch.setattr(certificates_repo, "COUNT_STEP", 4)
    monkeypatch.setattr(certificates_repo, "COUNT_STEP_PAUSE", 0.0)
    team_a = data["teams"][0]["id"]
    cases = [
        (certificates_repo.CertificateFilter(), 61),
        (certificates_repo.CertificateFilter(team_id=team_a), 31),
        (certificates_repo.CertificateFilter(status="Active"), sum(c["status"] == "Active" for c in data["certs"])),
        (certificates_repo.CertificateFilter(environment="dev"), 20),
        (certificates_repo.CertificateFilter(environment="none-such"), 0),
    ]
    for flt, expected in cases:
        with counting_queries(api, monkeypatch) as statements:
            async with api.services.ctx.db.read() as conn:
                background = await certificates_repo.count(conn, flt, background=True)
                foreground = await certificates_repo.count(conn, flt)
        steps = [s for s in statements if "OFFSET 3" in s]
        assert background == foreground == expected, flt
        assert len(steps) == expected // 4 + 1, (flt, len(steps))  # the last step finds no 4th row
    two = certificates_repo.CertificateFilter(team_id=team_a, environment="dev")
    with counting_queries(api, monkeypatch) as statements:
        async with api.services.ctx.db.read() as conn:
            assert await certificates_repo.count(conn, two, background=True) == sum(
                c["team_id"] == team_a and c["environment"] == "dev" for c in data["certs"])
    assert not [s for s in statements if "OFFSET" in s], "two filters: one count statement"


async def test_big_totals_are_shared_between_processes(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two server processes (two services on one database): the second one's first list of a big filter takes the
    figure the first one counted instead of counting; a due recount takes a newer figure another process counted;
    a figure counted before a write through this process is served but recounted; a very old one is not served."""
    from certctl.services import certificates as service_module
    from certctl.services.certificates import CertificateService
    from certctl.store.certificates_repo import CertificateFilter

    monkeypatch.setattr(service_module, "COUNT_CACHE_MIN", 5)
    await seed(api, 7)
    counted: list[str] = []
    real_count = certificates_repo.count

    async def counting(conn: Any, flt: Any, *, background: bool = False) -> int:
        counted.append("background" if background else "request")
        return await real_count(conn, flt, background=background)

    monkeypatch.setattr(certificates_repo, "count", counting)
    first, second = CertificateService(api.services.ctx), CertificateService(api.services.ctx)
    flt = CertificateFilter()

    async def total(service: CertificateService) -> int:
        async with api.services.ctx.db.read() as conn:
            value = await service._count(conn, flt)
        await service.settle_counts()
        return value

    assert await total(first) == 7 and counted == ["request"]
    assert await total(second) == 7 and counted == ["request"], "taken from the first process"
    async with api.services.ctx.db.read() as conn:
        assert await certificates_repo.shared_count(conn, certificates_repo.count_key(flt)) is not None

    # The first process recounts after a change; the second one's due figure takes that newer count.
    await factories.certificate(api.admin, team_id=(await factories.team(api.admin))["id"],
                                owner_id=(await factories.owner(api.admin))["id"])
    first._count_cache[flt.key()].expires = 0.0
    await total(first)
    await first.settle_counts()
    assert await total(first) == 8 and counted == ["request", "background"]
    second._count_cache[flt.key()].expires = 0.0
    await total(second)
    assert await total(second) == 8 and counted == ["request", "background"], "no count of its own"

    # A write through the second process: the first one's figure predates it, so it is served (a process without a
    # figure serves a shared one rather than count in the request) but recounted at once, in the background.
    second._writes_happened()
    second._count_cache.clear()
    assert await total(second) == 8 and counted == ["request", "background", "background"]
    assert second._count_cache[flt.key()].counted_wall > second._last_write_wall

    # Shared figures far past their time are not served: no figure anywhere means a count in the request.
    monkeypatch.setattr(service_module, "_wall", lambda: time.time() + 10 * 10 + 1)  # 10 lifetimes of 10 s
    third = CertificateService(api.services.ctx)
    assert await total(third) == 8 and counted[-1] == "request"


async def test_old_shared_totals_are_deleted(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """A filter with a moving bound makes a new shared row with each count: rows older than
    SHARED_COUNT_KEPT_SECONDS go when a process next stores one (at most once per that interval)."""
    from certctl.services import certificates as service_module
    from certctl.services.certificates import CertificateService
    from certctl.store.certificates_repo import CertificateFilter

    service = CertificateService(api.services.ctx)
    kept = service_module.SHARED_COUNT_KEPT_SECONDS
    now = time.time()
    async with api.services.ctx.db.transaction() as conn:
        await certificates_repo.store_shared_count(conn, "old", 50_000, now - kept - 5)
        await certificates_repo.store_shared_count(conn, "recent", 50_000, now - kept + 60)
    await service._share(CertificateFilter(status="Active"), 60_000, now)
    async with api.services.ctx.db.read() as conn:
        assert await certificates_repo.shared_count(conn, "old") is None
        assert await certificates_repo.shared_count(conn, "recent") == (50_000, now - kept + 60)
        assert await certificates_repo.shared_count(conn, certificates_repo.count_key(
            CertificateFilter(status="Active"))) == (60_000, now)
    # A newer figure replaces an older one, never the reverse.
    async with api.services.ctx.db.transaction() as conn:
        await certificates_repo.store_shared_count(conn, "recent", 40_000, now - kept + 30)
    async with api.services.ctx.db.read() as conn:
        assert await certificates_repo.shared_count(conn, "recent") == (50_000, now - kept + 60)

"""Shared rate limits: leased token buckets in the database (SQLite and PostgreSQL) and in Redis (127.0.0.1:6379),
held across limiters ("replicas"), restarts and two API apps on one database."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from certctl.config import SettingsError
from certctl.services.rate_limits import (
    DatabaseStore,
    Decision,
    RateLimits,
    RateLimitSettings,
    RedisStore,
    SharedStore,
)
from certctl.store import rate_limits_repo
from certctl.store.database import Database
from certctl.store.rate_limits_repo import LeaseRequest, LeaseResult
from tests.conftest import make_settings, start_api, stop_api
from tests.test_middleware import assert_error_body

REDIS_URL = "redis://127.0.0.1:6379/0"


class FakeClock:
    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url, pool_size=4)
    yield database
    await database.dispose()


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    prefix = f"certctl-test:{uuid.uuid4().hex[:10]}:"
    yield prefix
    store = RedisStore(REDIS_URL, prefix)
    keys = [key async for key in store.client.scan_iter(match=prefix + "*")]
    if keys:
        await store.client.delete(*keys)
    await store.aclose()


def _db_limiter(db: Database, clock: FakeClock, **kwargs: Any) -> RateLimits:
    return RateLimits(DatabaseStore(db, wall=clock), clock=clock, wall=clock, **kwargs)


async def _spend(limiter: RateLimits, key: str, limit: int, window: float, count: int) -> list[Decision]:
    return [await limiter.hit(key, limit, window) for _ in range(count)]


# ---- database back end ----------------------------------------------------------------------------------------

async def test_limit_refill_and_retry_after(db: Database) -> None:
    clock = FakeClock()
    limiter = _db_limiter(db, clock)
    decisions = await _spend(limiter, "acct:1", 5, 10.0, 6)  # 5 per 10 s: one token every 2 s
    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    assert decisions[-1].retry_after == pytest.approx(2.0, abs=0.01)
    clock.now += 1.0
    refused = await limiter.hit("acct:1", 5, 10.0)
    assert not refused.allowed and refused.retry_after == pytest.approx(1.0, abs=0.01)  # remembered locally
    clock.now += 1.01
    assert (await limiter.hit("acct:1", 5, 10.0)).allowed
    assert not (await limiter.hit("acct:1", 5, 10.0)).allowed
    assert (await limiter.hit("acct:2", 5, 10.0)).allowed, "buckets are per key"
    assert (await limiter.hit("off", 0, 10.0)).allowed, "a limit of 0 is no limit"
    assert not (await limiter.hit("acct:3", 5, 10.0, cost=6)).allowed, "a cost above the limit never passes"
    await limiter.aclose()


async def test_two_replicas_share_one_bucket(db: Database) -> None:
    clock = FakeClock()
    a, b = _db_limiter(db, clock), _db_limiter(db, clock)
    allowed = 0
    for turn in range(12):
        limiter = a if turn % 2 == 0 else b
        allowed += (await limiter.hit("acme:account:x", 8, 3600.0)).allowed
    assert allowed == 8  # a limit under 20 leases one token at a time: exact across replicas
    for limiter in (a, b):
        refused = await limiter.hit("acme:account:x", 8, 3600.0)
        assert not refused.allowed and refused.retry_after > 400
    await a.aclose()
    await b.aclose()


async def test_concurrent_replicas_never_exceed_the_limit(db: Database) -> None:
    clock = FakeClock()
    replicas = [_db_limiter(db, clock) for _ in range(3)]
    decisions = await asyncio.gather(*(replicas[i % 3].hit("api:ip:203.0.113.9", 60, 60.0) for i in range(150)))
    allowed = sum(d.allowed for d in decisions)
    # Never more than the bucket holds; at most the replicas' leased-but-unspent tokens (≤ 10% each) fewer.
    assert 60 - 3 * 6 <= allowed <= 60
    for limiter in replicas:
        await limiter.aclose()
    # Closing gave the unspent tokens back: the bucket holds what was not admitted.
    async with db.read() as conn:
        stored = await rate_limits_repo.tokens_of(conn, "api:ip:203.0.113.9")
    assert stored == pytest.approx(60 - allowed)


async def test_limit_holds_across_a_restart(db: Database) -> None:
    clock = FakeClock()
    first = _db_limiter(db, clock)
    assert [d.allowed for d in await _spend(first, "api:key:alice", 30, 30.0, 31)] == [True] * 30 + [False]
    await first.aclose()
    second = _db_limiter(db, clock)  # a new process: nothing local
    refused = await second.hit("api:key:alice", 30, 30.0)
    assert not refused.allowed and refused.retry_after == pytest.approx(1.0, abs=0.01)
    clock.now += 10
    assert sum(d.allowed for d in await _spend(second, "api:key:alice", 30, 30.0, 20)) == 10
    await second.aclose()



async def test_a_lease_failing_half_way_writes_nothing_and_leaves_the_connection_clean(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lease's transaction (on PostgreSQL: two statements on the driver connection) fails after its rows were
    made and locked: nothing is stored, no transaction is left open on a pooled connection, the next lease works."""
    clock = FakeClock()
    store = DatabaseStore(db, wall=clock)
    real = rate_limits_repo.lease

    def failing(tokens: float, updated_at: float, request: LeaseRequest, now: float) -> tuple[int, float, float]:
        if request.key == "api:key:doomed":
            raise RuntimeError("failed between the two statements")
        return real(tokens, updated_at, request, now)

    monkeypatch.setattr(rate_limits_repo, "lease", failing)
    with pytest.raises(RuntimeError):
        await store.lease([LeaseRequest("api:key:fine", 10, 1.0, 5, 1), LeaseRequest("api:key:doomed", 10, 1.0, 5, 1)])
    async with db.read() as conn:
        assert await rate_limits_repo.tokens_of(conn, "api:key:fine") is None, "rolled back: no bucket was made"
        assert await rate_limits_repo.tokens_of(conn, "api:key:doomed") is None
    monkeypatch.setattr(rate_limits_repo, "lease", real)
    granted = []
    for _ in range(6):  # every pooled connection (pool_size 4) is usable: none was left inside a transaction
        [result] = await store.lease([LeaseRequest("api:key:fine", 10, 1.0, 5, 1)])
        granted.append(result.granted)
    assert granted == [5, 5, 0, 0, 0, 0]  # the fake clock stands still: no refill
    async with db.read() as conn:
        assert await rate_limits_repo.tokens_of(conn, "api:key:fine") == pytest.approx(0.0)

async def test_hot_key_touches_the_store_once_per_batch(db: Database) -> None:
    clock = FakeClock()
    store = CountingStore(DatabaseStore(db, wall=clock))
    limiter = RateLimits(store, clock=clock, wall=clock)
    decisions = await _spend(limiter, "api:key:busy", 1000, 10.0, 200)
    await asyncio.sleep(0)
    assert all(d.allowed for d in decisions)
    assert store.requests <= 30  # leases grow 2, 4, 8, ... up to 100 tokens (10% of the limit)
    await limiter.aclose()


async def test_full_buckets_are_purged(db: Database) -> None:
    clock = FakeClock()
    limiter = _db_limiter(db, clock)
    await _spend(limiter, "short", 10, 1.0, 3)
    await limiter.aclose()
    clock.now += 5
    async with db.transaction() as conn:
        assert await rate_limits_repo.purge_full(conn, clock()) == 1
        assert await rate_limits_repo.tokens_of(conn, "short") is None


class CountingStore:
    def __init__(self, inner: SharedStore) -> None:
        self.inner = inner
        self.name = inner.name
        self.requests = 0
        self.round_trips = 0

    async def lease(self, requests: Sequence[LeaseRequest]) -> list[LeaseResult]:
        self.requests += len(requests)
        self.round_trips += 1
        return await self.inner.lease(requests)

    async def purge(self) -> None:
        await self.inner.purge()

    async def aclose(self) -> None:
        await self.inner.aclose()


class BrokenStore:
    name = "broken"

    async def lease(self, requests: Sequence[LeaseRequest]) -> list[LeaseResult]:
        raise ConnectionError("store is down")

    async def purge(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


async def test_store_outage_falls_back_to_per_process_buckets(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    limiter = RateLimits(BrokenStore(), clock=clock, wall=clock)
    decisions = await _spend(limiter, "k", 3, 30.0, 4)
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert decisions[-1].retry_after == pytest.approx(10.0)
    assert limiter.store_failures == 1  # then local for 5 s without asking
    clock.now += 10.0
    assert (await limiter.hit("k", 3, 30.0)).allowed  # the store is tried again; locally 10 s refilled a token
    assert limiter.store_failures == 2
    assert sum("shared store is unavailable" in r.getMessage() for r in caplog.records) == 1  # once a minute
    await limiter.aclose()


class GatedStore:
    name = "gated"

    def __init__(self) -> None:
        self.gate = asyncio.Event()

    async def lease(self, requests: Sequence[LeaseRequest]) -> list[LeaseResult]:
        await self.gate.wait()
        return [LeaseResult(request.want, 0.0) for request in requests]

    async def purge(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


async def test_tokens_granted_after_the_caller_left_are_kept() -> None:
    clock = FakeClock()
    store = GatedStore()
    limiter = RateLimits(store, clock=clock, wall=clock)
    waiting = asyncio.create_task(limiter.hit("k", 100, 2.0))  # leases 10 tokens
    await asyncio.sleep(0.01)
    waiting.cancel()
    store.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await asyncio.sleep(0.01)
    assert limiter._entries["k"].credit == 10
    await limiter.aclose()


async def test_local_state_is_bounded_and_round_trips_are_shared(db: Database) -> None:
    clock = FakeClock()
    store = CountingStore(DatabaseStore(db, wall=clock))
    limiter = RateLimits(store, local_keys=1000, clock=clock, wall=clock)
    decisions = await asyncio.gather(*(limiter.hit(f"ip:{i}", 10, 10.0) for i in range(3000)))
    assert all(d.allowed for d in decisions)
    assert len(limiter._entries) <= 1000
    assert store.round_trips <= 12  # 3,000 new keys asked together: batches of up to 500
    await limiter.aclose()


def test_settings() -> None:
    assert RateLimitSettings.from_env({}) == RateLimitSettings()
    settings = RateLimitSettings.from_env({"CERTCTL_REDIS_URL": REDIS_URL, "CERTCTL_RATE_LIMIT_LOCAL_KEYS": "5000",
                                           "CERTCTL_REDIS_KEY_PREFIX": "prod:"})
    assert (settings.redis_url, settings.local_keys, settings.redis_prefix) == (REDIS_URL, 5000, "prod:")
    for bad in ({"CERTCTL_REDIS_URL": "127.0.0.1:6379"}, {"CERTCTL_RATE_LIMIT_LOCAL_KEYS": "10"}):
        with pytest.raises(SettingsError, match=next(iter(bad))):
            RateLimitSettings.from_env(bad)


# ---- Redis back end -------------------------------------------------------------------------------------------

async def test_redis_replicas_share_limits_and_restarts_keep_them(redis_prefix: str) -> None:
    a = RateLimits(RedisStore(REDIS_URL, redis_prefix))
    b = RateLimits(RedisStore(REDIS_URL, redis_prefix))
    allowed = 0
    for turn in range(10):
        allowed += (await (a if turn % 2 else b).hit("acme:ident:example.com", 6, 3600.0)).allowed
    assert allowed == 6
    concurrent = await asyncio.gather(*((a, b)[i % 2].hit("api:ip:198.51.100.7", 50, 3600.0) for i in range(120)))
    assert 50 - 2 * 5 <= sum(d.allowed for d in concurrent) <= 50
    await a.aclose()
    await b.aclose()
    restarted = RateLimits(RedisStore(REDIS_URL, redis_prefix))
    refused = await restarted.hit("acme:ident:example.com", 6, 3600.0)
    assert not refused.allowed and 500 < refused.retry_after <= 600
    await restarted.aclose()
    # What Redis keeps expires once the bucket would be full again.
    store = RedisStore(REDIS_URL, redis_prefix)
    ttl = await store.client.pttl(redis_prefix + "acme:ident:example.com")
    assert 3_500_000 < ttl <= 3_600_000
    await store.aclose()


# ---- the API: two apps on one database, a restart, Redis ------------------------------------------------------

def _limited_settings(database_url: str, data_dir: Path, **extra: str) -> Any:
    return make_settings(database_url, data_dir, rate_limit_enabled=True, rate_limit_rps=0.01, rate_limit_burst=50,
                         rate_limit_per_user_rps=0.01, rate_limit_per_user_burst=3, extra=extra)


async def _assert_limited(response: Any) -> None:
    body = assert_error_body(response, 429)
    assert body["error"] == "Too Many Requests"
    assert int(response.headers["retry-after"]) >= 50  # 1 token at 0.01/s: about 100 s


async def test_api_limits_hold_across_two_apps_and_a_restart(database_url: str, tmp_path: Path) -> None:
    first, first_life = await start_api(_limited_settings(database_url, tmp_path / "one"))
    second, second_life = await start_api(_limited_settings(database_url, tmp_path / "two"))
    try:
        assert (await first.admin.get("/api/v1/teams")).status_code == 200
        assert (await second.admin.get("/api/v1/teams")).status_code == 200
        assert (await first.admin.get("/api/v1/teams")).status_code == 200
        await _assert_limited(await second.admin.get("/api/v1/teams"))
        await _assert_limited(await first.admin.get("/api/v1/teams"))
        assert (await second.user.get("/api/v1/teams")).status_code == 200, "another key has its own bucket"
    finally:
        await stop_api(second, second_life)
        await stop_api(first, first_life)
    again, again_life = await start_api(_limited_settings(database_url, tmp_path / "one"))
    try:
        await _assert_limited(await again.admin.get("/api/v1/teams"))
    finally:
        await stop_api(again, again_life)


@pytest.mark.parametrize("backend", ["postgresql"])
async def test_api_limits_through_redis(database_url: str, tmp_path: Path, redis_prefix: str) -> None:
    extra = {"CERTCTL_REDIS_URL": REDIS_URL, "CERTCTL_REDIS_KEY_PREFIX": redis_prefix}
    first, first_life = await start_api(_limited_settings(database_url, tmp_path / "one", **extra))
    second, second_life = await start_api(_limited_settings(database_url, tmp_path / "two", **extra))
    try:
        assert first.services.rate_limits.backend == "redis"
        statuses = [(await api.user.get("/api/v1/teams")).status_code for api in (first, second, first)]
        assert statuses == [200, 200, 200]
        await _assert_limited(await second.user.get("/api/v1/teams"))
        async with second.services.ctx.db.read() as conn:  # nothing went to the database
            assert await rate_limits_repo.tokens_of(conn, "api:key:bob") is None
    finally:
        await stop_api(second, second_life)
        await stop_api(first, first_life)
    store = RedisStore(REDIS_URL, redis_prefix)
    assert await store.client.exists(redis_prefix + "api:key:bob")
    await store.aclose()

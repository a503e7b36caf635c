"""Rate limits shared by every replica and kept across restarts: token buckets in the database or Redis,
decided locally from leased batches of tokens.

`await services.rate_limits.hit(key, limit, window_seconds, cost=1)` answers `Decision(allowed, remaining,
retry_after)` for a token bucket of `limit` tokens refilled at `limit / window_seconds` per second. The API's
per-key and per-IP limiter (certctl.api.middleware.RateLimitMiddleware) and the ACME server's per-account and
per-identifier limits use it.

Design (docs/operations.md "Rate limits across replicas"):

- **The shared store holds the buckets**: a row per key in `rate_limit_buckets` (tokens, updated_at, the time
  it is full again), or a Redis hash per key when CERTCTL_REDIS_URL is set (expiring when full). A bucket that
  has refilled is deleted: a missing bucket is a full one, so the store holds only keys used recently.
- **Replicas lease tokens in batches.** A process takes up to `batch` tokens from the shared bucket in one atomic
  step (a locked row update, or a Lua script) and spends them locally; the store sees one operation per batch,
  not per request. Leased tokens are debited in the store at once, so the sum of what all replicas admit never
  exceeds what the shared bucket holds: no replica can spend another's tokens, and a restart starts from the
  stored state.
- **The batch is what the bucket refills in one second, at most 10% of the limit, at least one token**: the
  API's default per-IP budget (100 tokens, 50/s) leases 10 at a time, so a busy client touches the store once
  per 10 requests; an ACME limit of 100 orders per hour leases one token at a time, which is exact. A key's
  next batch is fetched in the background when half of the current one is spent, once a lease has run out
  before expiring (a steady client), so such a client's requests do not wait for the store.
- **A lease lives at most `batch / rate` seconds (and at most 1 s)**; unused tokens go back to the store when
  the key is seen again, evicted, or the process stops. While a lease lives its bucket in the store keeps
  refilling, so a burst can exceed the limit by at most what the bucket refills in one lease lifetime (≤ one
  batch, ≤ 10% of the limit; under one token for slow limits), and tokens another replica holds are out of
  reach for at most that long; the long-run rate is exact.
- **Round trips are shared**: every lease asked while round trips are in flight goes into the next one (up to
  500 keys per transaction or script call, at most 4 round trips at once per process), so a thousand new
  keys arriving together cost a few round trips, not a thousand.
- **The local state is bounded**: an insertion-ordered dict of at most CERTCTL_RATE_LIMIT_LOCAL_KEYS (100,000)
  entries; the least recently leased are evicted (their unused tokens returned). A refusal is remembered
  locally until its Retry-After, so a client hammering a limit costs the store nothing.
- **When the shared store fails**, decisions fall back to per-process buckets (the previous behaviour) for 5 s
  before the store is tried again, and a warning is logged at most once a minute: a Redis or database outage
  does not turn into refused or hanging requests (Redis calls time out after 2 s).

A decision on a key with live leased tokens is a dict lookup and a subtraction (about 1 µs); the store round
trip (Redis ~0.1-0.3 ms, PostgreSQL ~1 ms for a batch) is paid once per batch. bench/rate_limit.py measures it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from certctl.config import SettingsError, env_int_between
from certctl.store import rate_limits_repo
from certctl.store.database import Database
from certctl.store.rate_limits_repo import LeaseRequest, LeaseResult

log = logging.getLogger("certctl.rate_limits")

LEASE_FRACTION = 0.1  # the largest batch, as a share of the limit
MAX_LEASE_SECONDS = 1.0
MAX_KEYS_PER_ROUND_TRIP = 500
MAX_PARALLEL_ROUND_TRIPS = 4
PURGE_INTERVAL = 60.0  # seconds between deletions of refilled database buckets
STORE_RETRY_SECONDS = 5.0  # after a failed round trip, decisions are local this long before the store is tried again
REDIS_PREFIX = "certctl:rl:"


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    remaining: int  # tokens left, as far as this process knows
    retry_after: float  # seconds until the call could pass; 0 when allowed


_UNLIMITED = Decision(True, 0, 0.0)


@dataclass(frozen=True)
class RateLimitSettings:
    redis_url: str = ""  # CERTCTL_REDIS_URL; "" = the database
    redis_prefix: str = REDIS_PREFIX  # CERTCTL_REDIS_KEY_PREFIX: several deployments can share one Redis
    local_keys: int = 100_000  # CERTCTL_RATE_LIMIT_LOCAL_KEYS

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RateLimitSettings:
        redis_url = (env.get("CERTCTL_REDIS_URL") or "").strip()
        if redis_url and not redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise SettingsError(f"CERTCTL_REDIS_URL: '{redis_url}' is not a redis://, rediss:// or unix:// URL")
        return cls(redis_url=redis_url, redis_prefix=env.get("CERTCTL_REDIS_KEY_PREFIX") or REDIS_PREFIX,
                   local_keys=env_int_between(env, "CERTCTL_RATE_LIMIT_LOCAL_KEYS", 100_000, 1000, 10_000_000))


# ---- shared stores ----------------------------------------------------------------------------------------------

class SharedStore(Protocol):
    name: str

    async def lease(self, requests: Sequence[LeaseRequest]) -> list[LeaseResult]: ...

    async def purge(self) -> None: ...

    async def aclose(self) -> None: ...


class DatabaseStore:
    name = "database"

    def __init__(self, db: Database, wall: Callable[[], float] = time.time) -> None:
        self.db = db
        self.wall = wall

    async def lease(self, requests: Sequence[LeaseRequest]) -> list[LeaseResult]:
        if self.db.dialect == "postgresql":
            async with self.db.read() as conn:
                return await rate_limits_repo.lease_many_driver(conn, requests, self.wall())
        async with self.db.transaction() as conn:
            return await rate_limits_repo.lease_many(conn, requests, self.wall())

    async def purge(self) -> None:
        async with self.db.transaction() as conn:
            await rate_limits_repo.purge_full(conn, self.wall())

    async def aclose(self) -> None:
        pass


# The same arithmetic as rate_limits_repo.lease, on Redis's clock, for every key of a batch in one call. A bucket is
# one string "<tokens> <updated>" that expires when the bucket would be full again.
_LEASE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local out = {}
for i, key in ipairs(KEYS) do
  local base = (i - 1) * 5
  local capacity = tonumber(ARGV[base + 1])
  local rate = tonumber(ARGV[base + 2])
  local want = tonumber(ARGV[base + 3])
  local need = tonumber(ARGV[base + 4])
  local back = tonumber(ARGV[base + 5])
  local tokens = capacity
  local state = redis.call('GET', key)
  if state then
    local space = string.find(state, ' ', 1, true)
    tokens = tonumber(string.sub(state, 1, space - 1))
      + math.max(0, now - tonumber(string.sub(state, space + 1))) * rate
  end
  tokens = math.min(capacity, tokens + back)
  local available = math.floor(tokens + 1e-9)
  local granted = 0
  if need > 0 and available >= need then granted = math.min(want, available) end
  tokens = tokens - granted
  local ttl = math.ceil((capacity - tokens) / rate * 1000)
  if ttl > 0 then
    redis.call('SET', key, string.format('%.17g %.6f', tokens, now), 'PX', ttl)
  elseif state then
    redis.call('DEL', key)
  end
  out[i] = {granted, string.format('%.17g', tokens)}
end
return out
"""


class RedisStore:
    name = "redis"

    def __init__(self, url: str, prefix: str = REDIS_PREFIX) -> None:
        import redis.asyncio

        # Bounded waits: an unreachable Redis must fail fast so the limiter falls back instead of hanging requests.
        self.client: Any = redis.asyncio.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self.prefix = prefix
        self.script = self.client.register_script(_LEASE_SCRIPT)

    async def lease(self, requests: Sequence[LeaseRequest]) -> list[LeaseResult]:
        keys = [self.prefix + request.key for request in requests]
        args: list[Any] = []
        for request in requests:
            args += [request.capacity, repr(request.rate), request.want, request.need, request.back]
        out = await self.script(keys=keys, args=args)
        return [LeaseResult(int(granted), float(tokens)) for granted, tokens in out]

    async def purge(self) -> None:
        """Nothing to purge: the lease script sets each bucket key to expire when the bucket would be full again."""

    async def aclose(self) -> None:
        await self.client.aclose()


class StoreUnavailable(Exception):
    pass


# ---- the batcher: one round trip for every lease asked meanwhile ----------------------------------------------

class _Batcher:
    def __init__(self, store: SharedStore, wall: Callable[[], float]) -> None:
        self.store = store
        self.wall = wall
        self._leases: dict[str, tuple[LeaseRequest, asyncio.Future[LeaseResult] | None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_purge = wall()

    def lease(self, request: LeaseRequest) -> asyncio.Future[LeaseResult]:
        future: asyncio.Future[LeaseResult] = asyncio.get_running_loop().create_future()
        queued = self._leases.get(request.key)
        if queued is not None:  # only a give-back can be queued for a key that asks for a lease
            request = replace(request, back=request.back + queued[0].back)
        self._leases[request.key] = (request, future)
        self._kick()
        return future

    def give_back(self, key: str, capacity: int, rate: float, tokens: int) -> None:
        if tokens <= 0:
            return
        queued = self._leases.get(key)
        if queued is not None:
            self._leases[key] = (replace(queued[0], back=queued[0].back + tokens), queued[1])
        else:
            self._leases[key] = (LeaseRequest(key, capacity, rate, 0, 0, tokens), None)
        self._kick()

    def _kick(self) -> None:
        if len(self._tasks) < MAX_PARALLEL_ROUND_TRIPS:
            task = asyncio.get_running_loop().create_task(self._run())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self) -> None:
        while self._leases:
            batch = []
            for key in list(self._leases)[:MAX_KEYS_PER_ROUND_TRIP]:
                batch.append(self._leases.pop(key))
            try:
                results = await self.store.lease([request for request, _ in batch])
            except Exception as exc:  # the store is down: every waiter decides locally
                failure = StoreUnavailable(f"{self.store.name}: {exc.__class__.__name__}: {exc}")
                for _, future in batch:
                    if future is not None and not future.done():
                        future.set_exception(failure)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if future is not None and not future.done():
                    future.set_result(result)
            if self.wall() - self._last_purge >= PURGE_INTERVAL:
                self._last_purge = self.wall()
                try:
                    await self.store.purge()
                except Exception as exc:
                    log.warning("rate limits: purging refilled buckets failed: %s", exc)

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


# ---- the limiter ------------------------------------------------------------------------------------------------

class _Entry:
    """What this process knows of one key: leased tokens, until when, and a remembered refusal."""

    __slots__ = ("batch", "blocked_until", "credit", "expires", "hot", "limit", "pending", "rate", "shared")

    def __init__(self, batch: int, limit: int, rate: float) -> None:
        self.limit = limit  # the bucket's size and refill rate, for returning unused tokens
        self.rate = rate
        self.credit = 0  # leased tokens not spent yet
        self.expires = 0.0  # monotonic time the lease ends
        self.blocked_until = 0.0  # monotonic time before which the key is refused without asking
        self.batch = batch  # tokens to lease next
        self.shared = 0.0  # tokens the shared bucket had after our last lease
        self.pending: asyncio.Future[None] | None = None  # a lease in flight
        self.hot = False  # the last lease ran out while it was valid: fetch the next one ahead


class RateLimits:
    def __init__(
        self, store: SharedStore, *, local_keys: int = 100_000, clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.local_keys = local_keys
        self.clock = clock
        self._entries: dict[str, _Entry] = {}
        self._batcher = _Batcher(store, wall)
        self._fallback: dict[str, tuple[float, float]] = {}  # key -> (tokens, time): used while the store is down
        self._warned_at = -math.inf
        self._store_down_until = -math.inf  # after a failure, decide locally for STORE_RETRY_SECONDS
        self._background: set[asyncio.Task[None]] = set()
        self.store_failures = 0

    @classmethod
    def from_settings(cls, db: Database, env: Mapping[str, str]) -> RateLimits:
        settings = RateLimitSettings.from_env(env)
        store: SharedStore = (RedisStore(settings.redis_url, settings.redis_prefix) if settings.redis_url
                              else DatabaseStore(db))
        return cls(store, local_keys=settings.local_keys)

    @property
    def backend(self) -> str:
        return self.store.name

    async def hit(self, key: str, limit: int, window_seconds: float, cost: int = 1) -> Decision:
        """Spend `cost` tokens of `key`'s bucket (`limit` tokens per `window_seconds`), or say when to retry."""
        if limit <= 0:
            return _UNLIMITED  # 0 disables a limit (the reference's convention)
        entry = self._entries.get(key)
        if entry is not None:
            now = self.clock()
            if entry.credit >= cost and now < entry.expires:  # the hot path: tokens leased already
                entry.credit -= cost
                if entry.hot and entry.credit * 2 <= entry.batch and entry.pending is None:
                    self._prefetch(key, entry, limit, limit / window_seconds)
                return Decision(True, entry.credit + int(entry.shared), 0.0)
            if now < entry.blocked_until:
                return Decision(False, 0, entry.blocked_until - now)
        if cost > limit:
            return Decision(False, 0, float(window_seconds))  # can never pass
        return await self._slow(key, limit, limit / window_seconds, cost)

    # ---- leasing -------------------------------------------------------------------------------------------
    @staticmethod
    def batch_size(limit: int, rate: float) -> int:
        """Tokens per lease: what refills in a lease's longest life, ≤ 10% of the limit, ≥ 1."""
        return max(1, min(int(limit * LEASE_FRACTION), int(rate * MAX_LEASE_SECONDS)))

    def _entry(self, key: str, limit: int, rate: float) -> _Entry:
        entry = self._entries.get(key)
        if entry is None:
            if len(self._entries) >= self.local_keys:
                self._evict()
            entry = self._entries[key] = _Entry(self.batch_size(limit, rate), limit, rate)
        elif entry.limit != limit or entry.rate != rate:
            entry.limit, entry.rate, entry.batch = limit, rate, self.batch_size(limit, rate)
        return entry

    def _evict(self) -> None:
        """Drop the least recently leased entries, 1% of the bound at a time (unused tokens go back to the store).

        Entries with a lease in flight stay until it lands; the bound is checked again then."""
        count = max(self.local_keys // 100, len(self._entries) - self.local_keys, 1)
        now = self.clock()
        victims: list[str] = []
        for key, entry in self._entries.items():
            if len(victims) >= count:
                break
            if entry.pending is None:
                victims.append(key)
        for key in victims:
            entry = self._entries.pop(key)
            if entry.credit and now < entry.expires:
                self._batcher.give_back(key, entry.limit, entry.rate, entry.credit)

    async def _slow(self, key: str, limit: int, rate: float, cost: int) -> Decision:
        while True:  # each turn spends, refuses, or waits for a lease that grants or blocks: it ends
            entry = self._entry(key, limit, rate)
            now = self.clock()
            if entry.credit >= cost and now < entry.expires:
                entry.credit -= cost
                return Decision(True, entry.credit + int(entry.shared), 0.0)
            if now < entry.blocked_until:
                return Decision(False, 0, entry.blocked_until - now)
            if entry.pending is not None:
                await asyncio.shield(entry.pending)
                continue
            if now < self._store_down_until:
                return self._local(key, limit, rate, cost)
            return await self._lease(key, entry, limit, rate, cost, now)

    async def _lease(self, key: str, entry: _Entry, limit: int, rate: float, cost: int, now: float) -> Decision:
        back = 0
        if entry.credit:
            back, entry.credit = entry.credit, 0
        entry.hot = entry.batch >= 4 and now < entry.expires  # spent before it expired: a steady client
        want = max(cost, entry.batch)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry.pending = done
        # Recently leased keys are evicted last: move this one to the end of the insertion order.
        self._entries[key] = self._entries.pop(key)
        leased = self._batcher.lease(LeaseRequest(key, limit, rate, want, cost, back))
        try:
            result = await asyncio.shield(leased)
        except StoreUnavailable as exc:
            self._store_failed(exc)
            return self._local(key, limit, rate, cost)
        except asyncio.CancelledError:  # the caller went away: the tokens the store grants are still ours
            leased.add_done_callback(lambda landed: self._late_grant(entry, landed, rate))
            raise
        finally:
            entry.pending = None
            done.set_result(None)
        now = self.clock()
        if len(self._entries) > self.local_keys:
            self._evict()
        entry.shared = max(0.0, result.tokens)
        if result.granted >= cost:
            entry.credit = result.granted - cost
            entry.expires = now + min(MAX_LEASE_SECONDS, result.granted / rate)
            return Decision(True, entry.credit + int(entry.shared), 0.0)
        entry.expires = 0.0
        wait = max(0.0, (cost - result.tokens) / rate)
        entry.blocked_until = now + wait
        return Decision(False, 0, wait)

    def _late_grant(self, entry: _Entry, landed: asyncio.Future[LeaseResult], rate: float) -> None:
        if landed.cancelled() or landed.exception() is not None:
            return
        granted = landed.result().granted
        if granted:
            entry.credit += granted
            entry.expires = self.clock() + min(MAX_LEASE_SECONDS, entry.credit / rate)

    def _prefetch(self, key: str, entry: _Entry, limit: int, rate: float) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry.pending = done

        async def run() -> None:
            try:
                result = await self._batcher.lease(LeaseRequest(key, limit, rate, entry.batch, 1, 0))
            except StoreUnavailable as exc:
                self._store_failed(exc)
                return
            finally:
                entry.pending = None
                done.set_result(None)
            if result.granted:
                entry.credit += result.granted
                entry.expires = self.clock() + min(MAX_LEASE_SECONDS, entry.credit / rate)
            entry.shared = max(0.0, result.tokens)

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ---- when the store is down ----------------------------------------------------------------------------
    def _store_failed(self, exc: Exception) -> None:
        self.store_failures += 1
        now = self.clock()
        self._store_down_until = now + STORE_RETRY_SECONDS
        if now - self._warned_at >= 60.0:
            self._warned_at = now
            log.warning("rate limits: the shared store is unavailable, deciding per process meanwhile: %s", exc)

    def _local(self, key: str, limit: int, rate: float, cost: int) -> Decision:
        now = self.clock()
        tokens, last = self._fallback.get(key, (float(limit), now))
        tokens = min(float(limit), tokens + (now - last) * rate)
        if len(self._fallback) >= self.local_keys:
            self._fallback.clear()
        if tokens >= cost:
            self._fallback[key] = (tokens - cost, now)
            return Decision(True, int(tokens - cost), 0.0)
        self._fallback[key] = (tokens, now)
        return Decision(False, 0, (cost - tokens) / rate)

    async def aclose(self) -> None:
        """Return unused tokens, finish the round trip in flight and close the store's connections."""
        for task in list(self._background):
            await asyncio.gather(task, return_exceptions=True)
        now = self.clock()
        for key, entry in self._entries.items():
            if entry.credit and now < entry.expires:
                self._batcher.give_back(key, entry.limit, entry.rate, entry.credit)
        self._entries.clear()
        try:
            await self._batcher.drain()
        except Exception as exc:  # pragma: no cover (best effort at shutdown)
            log.warning("rate limits: returning unused tokens failed: %s", exc)
        await self.store.aclose()

"""SQL of the shared rate limits: token buckets leased from in batches (certctl.services.rate_limits).

One transaction serves a whole batch of keys (up to a few hundred), whichever replica sends it:

1. `INSERT ... ON CONFLICT (key) DO UPDATE SET key = excluded.key RETURNING tokens, updated_at` makes the
   missing buckets (full) and locks and reads the existing ones, in key order, so two replicas with overlapping
   batches queue on the rows instead of deadlocking (SQLite's write transaction, BEGIN IMMEDIATE, serializes
   writers anyway);
2. each bucket is refilled, takes back what a replica returns, grants what is asked if at least `need` tokens are
   there (`lease`), and is written back with one UPDATE (SQLite: executemany; PostgreSQL: one statement over
   arrays, both statements sent on the driver connection by `lease_many_driver`). PostgreSQL commits it without
   waiting for the WAL flush (`synchronous_commit = off` for this transaction only): a crash may forget the last
   few milliseconds of limiter state, never corrupt it.

So a grant is never counted twice, across replicas and restarts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from certctl.store.database import driver_call, driver_connection
from certctl.store.rows import cached_statement
from certctl.store.schema import rate_limit_buckets

_b = rate_limit_buckets.c


@dataclass(frozen=True, slots=True)
class LeaseRequest:
    key: str
    capacity: int  # the bucket's size (the limit)
    rate: float  # tokens per second (limit / window)
    want: int  # tokens to take at most
    need: int  # fewest tokens worth taking (the call's cost); 0 = only give back
    back: int = 0  # unused tokens of an earlier lease, returned first


@dataclass(frozen=True, slots=True)
class LeaseResult:
    granted: int
    tokens: float  # left in the shared bucket afterwards


def lease(tokens: float, updated_at: float, request: LeaseRequest, now: float) -> tuple[int, float, float]:
    """The bucket after one request: (granted, tokens left, when it is full again). Pure; also the Redis script."""
    refilled = min(float(request.capacity), tokens + max(0.0, now - updated_at) * request.rate + request.back)
    available = math.floor(refilled + 1e-9)
    granted = min(request.want, available) if request.need > 0 and available >= request.need else 0
    left = refilled - granted
    return granted, left, now + (request.capacity - left) / request.rate


def _grants(
    requests: Sequence[LeaseRequest], current: dict[str, tuple[float, float]], now: float,
) -> tuple[list[LeaseResult], dict[str, tuple[float, float]]]:
    """Every request applied to its bucket's (tokens, updated_at): the results in request order, and what each key's
    row becomes (tokens left, when it is full again)."""
    results: list[LeaseResult] = []
    rows: dict[str, tuple[float, float]] = {}
    for request in requests:
        granted, left, full_at = lease(*current[request.key], request, now)
        results.append(LeaseResult(granted, left))
        rows[request.key] = (left, full_at)
    return results, rows


async def lease_many(conn: AsyncConnection, requests: Sequence[LeaseRequest], now: float) -> list[LeaseResult]:
    """SQLite: apply one request per key (keys distinct) in the caller's write transaction (PostgreSQL:
    `lease_many_driver`)."""
    if not requests:
        return []

    def build() -> object:
        stmt = sqlite.insert(rate_limit_buckets)
        # The no-op update locks an existing row and returns it as it is; a new row comes back full.
        return stmt.on_conflict_do_update(index_elements=[_b.key], set_={"key": stmt.excluded.key}).returning(
            _b.key, _b.tokens, _b.updated_at)

    by_key = {request.key: request for request in requests}
    keys = sorted(by_key)
    rows = await conn.execute(cached_statement(("rate_limit_lock",), build), [
        {"key": key, "tokens": float(by_key[key].capacity), "updated_at": now, "expires_at": now} for key in keys])
    results, written = _grants(requests, {row.key: (row.tokens, row.updated_at) for row in rows}, now)
    write = cached_statement(
        ("rate_limit_update",),
        lambda: update(rate_limit_buckets).where(_b.key == bindparam("_key")).values(
            tokens=bindparam("_tokens"), updated_at=bindparam("_updated_at"), expires_at=bindparam("_expires_at")),
    )
    await conn.execute(write, [{"_key": key, "_tokens": written[key][0], "_updated_at": now,
                                "_expires_at": written[key][1]} for key in keys])
    return results


# PostgreSQL: the same two steps, as two statements on the driver connection in one transaction whose BEGIN carries
# the SET LOCAL (4 round trips, none through SQLAlchemy: a lease used to cost about 1 ms of CPU, which an ACME
# newOrder, whose limits lease one token at a time, paid on every call).
_PG_LOCK = f"""
INSERT INTO {rate_limit_buckets.name} (key, tokens, updated_at, expires_at)
SELECT key, capacity, $3::float8, $3::float8 FROM unnest($1::text[], $2::float8[]) AS r(key, capacity) ORDER BY key
ON CONFLICT (key) DO UPDATE SET key = excluded.key
RETURNING key, tokens, updated_at"""
_PG_WRITE = f"""
UPDATE {rate_limit_buckets.name} AS b SET tokens = r.tokens, updated_at = $4::float8, expires_at = r.expires_at
FROM unnest($1::text[], $2::float8[], $3::float8[]) AS r(key, tokens, expires_at) WHERE b.key = r.key"""


async def lease_many_driver(conn: AsyncConnection, requests: Sequence[LeaseRequest], now: float) -> list[LeaseResult]:
    """PostgreSQL: the lease in its own transaction on `conn`'s driver connection (which must be outside any
    SQLAlchemy transaction), committed without waiting for the WAL flush. A failure rolls back; a connection left
    in an unknown state leaves the pool."""
    if not requests:
        return []
    raw = await driver_connection(conn)
    by_key = {request.key: request for request in requests}
    keys = sorted(by_key)  # one lock order for every replica: no deadlocks

    async def run() -> list[LeaseResult]:
        await raw.execute("BEGIN; SET LOCAL synchronous_commit TO OFF")
        try:
            rows = await raw.fetch(_PG_LOCK, keys, [float(by_key[k].capacity) for k in keys], now)
            results, written = _grants(requests, {row["key"]: (row["tokens"], row["updated_at"]) for row in rows}, now)
            await raw.execute(_PG_WRITE, keys, [written[k][0] for k in keys], [written[k][1] for k in keys], now)
            await raw.execute("COMMIT")
        except BaseException:
            if not raw.is_closed() and raw.is_in_transaction():
                try:
                    await raw.execute("ROLLBACK")
                except BaseException:
                    await conn.invalidate()  # cancelled or broken mid-rollback: never reuse it
                    raise
            raise
        return results

    result: list[LeaseResult] = await driver_call(conn, run())
    return result


async def purge_full(conn: AsyncConnection, now: float) -> int:
    """Delete buckets that have refilled completely (they hold nothing a missing row would not)."""
    result = await conn.execute(delete(rate_limit_buckets).where(_b.expires_at < now))
    return int(result.rowcount or 0)


async def tokens_of(conn: AsyncConnection, key: str) -> float | None:
    """The stored (not refilled) token count of a bucket, for tests and the CLI."""
    row = (await conn.execute(select(_b.tokens).where(_b.key == key))).first()
    return None if row is None else float(row[0])

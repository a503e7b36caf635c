"""Policy rules and violations, plus the few certificate facts the rule evaluators read."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncConnection

from certctl.store.rows import Row, cached_statement, insert_many, list_rows, page_rows
from certctl.store.schema import certificate_versions, policy_rules, policy_violations, renewal_policies


async def list_enabled_rules(conn: AsyncConnection) -> list[Row]:
    # Evaluated on every certificate create and update: the statement is built once.
    stmt = cached_statement(("enabled_rules",), lambda: select(policy_rules).where(policy_rules.c.enabled.is_(True))
                            .order_by(policy_rules.c.created_at, policy_rules.c.id))
    return list((await conn.execute(stmt)).mappings().all())


async def replace_violations(
    conn: AsyncConnection, certificate_id: str, violations: Sequence[Mapping[str, Any]]
) -> None:
    """Swap a certificate's stored findings for a fresh set (the caller's transaction makes it atomic)."""
    await conn.execute(delete(policy_violations).where(policy_violations.c.certificate_id == certificate_id))
    await insert_many(conn, policy_violations, violations)


async def add_violations(conn: AsyncConnection, violations: Sequence[Mapping[str, Any]]) -> None:
    await insert_many(conn, policy_violations, violations)


async def page_violations_for_rule(
    conn: AsyncConnection, rule_id: str, *, limit: int, offset: int
) -> tuple[list[Row], int]:
    c = policy_violations.c
    return await page_rows(
        conn, policy_violations, c.rule_id == rule_id, limit=limit, offset=offset,
        order_by=(c.created_at.desc(), c.id),
    )


async def list_violations_for_certificate(conn: AsyncConnection, certificate_id: str) -> list[Row]:
    c = policy_violations.c
    return await list_rows(conn, policy_violations, c.certificate_id == certificate_id, order_by=(c.created_at, c.id))


async def renewal_window_days(conn: AsyncConnection, renewal_policy_id: str) -> int | None:
    result = await conn.execute(
        select(renewal_policies.c.renewal_window_days).where(renewal_policies.c.id == renewal_policy_id)
    )
    value = result.scalar_one_or_none()
    return None if value is None else int(value)


async def latest_version_validity(conn: AsyncConnection, certificate_id: str) -> tuple[datetime, datetime] | None:
    """(not_before, not_after) of the newest version; None before the first issuance."""
    c = certificate_versions.c
    result = await conn.execute(
        select(c.not_before, c.not_after)
        .where(c.certificate_id == certificate_id)
        .order_by(c.created_at.desc(), c.id.desc())
        .limit(1)
    )
    row = result.first()
    return None if row is None else (row.not_before, row.not_after)

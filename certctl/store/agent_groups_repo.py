"""Agent group membership: candidate agents for a group's criteria, and explicit include/exclude rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, and_, delete, false, func, insert, or_, select, true
from sqlalchemy.ext.asyncio import AsyncConnection

from certctl.store.rows import Row
from certctl.store.schema import agent_group_members, agents


@dataclass(frozen=True)
class Candidate:
    agent_id: str
    ip_address: str
    included: bool  # an explicit include row: member regardless of the criteria


async def member_candidates(
    conn: AsyncConnection,
    group_id: str,
    *,
    dynamic: bool,
    match_os: str,
    match_architecture: str,
    match_version: str,
) -> list[Candidate]:
    """Non-retired agents that match the group's column criteria or are explicitly included, minus exclusions.

    The CIDR criterion is left to the caller (containment is not portable SQL); only the id and
    address of each candidate are read, in (name, id) order.
    """
    m = agent_group_members.c
    included = select(m.agent_id).where(m.agent_group_id == group_id, m.membership_type == "include")
    excluded = select(m.agent_id).where(m.agent_group_id == group_id, m.membership_type == "exclude")
    criteria: list[ColumnElement[bool]] = []
    if match_os:
        criteria.append(func.lower(agents.c.os) == match_os.lower())
    if match_architecture:
        criteria.append(func.lower(agents.c.architecture) == match_architecture.lower())
    if match_version:
        criteria.append(agents.c.version == match_version)
    dynamic_match = and_(true(), *criteria) if dynamic else false()
    is_included = agents.c.id.in_(included)
    stmt = (
        select(agents.c.id, agents.c.ip_address, is_included.label("included"))
        .where(
            agents.c.retired_at.is_(None),
            or_(dynamic_match, is_included),
            agents.c.id.not_in(excluded),
        )
        .order_by(agents.c.name, agents.c.id)
    )
    result = await conn.execute(stmt)
    return [Candidate(r.id, r.ip_address, bool(r.included)) for r in result]


async def agents_by_ids(conn: AsyncConnection, agent_ids: Sequence[str]) -> list[Row]:
    if not agent_ids:
        return []
    result = await conn.execute(
        select(agents).where(agents.c.id.in_(list(agent_ids))).order_by(agents.c.name, agents.c.id)
    )
    return list(result.mappings().all())


async def set_membership(
    conn: AsyncConnection, group_id: str, agent_id: str, membership_type: str, now: datetime
) -> None:
    """Add or change an explicit include/exclude row."""
    await remove_membership(conn, group_id, agent_id)
    await conn.execute(insert(agent_group_members).values(
        agent_group_id=group_id, agent_id=agent_id, membership_type=membership_type, created_at=now,
    ))


async def remove_membership(conn: AsyncConnection, group_id: str, agent_id: str) -> None:
    m = agent_group_members.c
    await conn.execute(delete(agent_group_members).where(m.agent_group_id == group_id, m.agent_id == agent_id))

"""Agent groups and their members.

A group's members are the non-retired agents that match every criterion the group sets
(OS, architecture and version compared case-insensitively / exactly, the IP address contained in
`match_ip_cidr` as a real network test — the reference compared strings), plus agents with an
explicit `include` row, minus agents with an `exclude` row. A disabled group, or one with no
criteria, has only its explicit includes.
"""

from __future__ import annotations

import ipaddress
import logging

from certctl.domain.actor import Actor
from certctl.domain.errors import NotFoundError, ValidationError
from certctl.domain.models.agent_groups import AgentGroup, MembershipType
from certctl.domain.models.agents import Agent
from certctl.domain.models.common import PageParams
from certctl.services import audit
from certctl.services.crud import CrudService
from certctl.store import agent_groups_repo, rows
from certctl.store.rows import Row
from certctl.store.schema import agent_groups, agents

log = logging.getLogger("certctl.agent_groups")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _network(group: Row) -> IPNetwork | None:
    cidr = str(group["match_ip_cidr"] or "")
    if not cidr:
        return None
    return ipaddress.ip_network(cidr, strict=False)


def _contains(network: IPNetwork, address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return False  # an agent that reported no (or a garbled) address is in no network
    return ip.version == network.version and ip in network


class AgentGroupService(CrudService[AgentGroup]):
    table = agent_groups
    model = AgentGroup
    resource = "agent_group"
    id_prefix = "ag"

    async def members(self, group_id: str, page: PageParams) -> tuple[list[Agent], int]:
        async with self.ctx.db.read() as conn:
            group = await rows.get_row(conn, agent_groups, group_id)
            if group is None:
                raise NotFoundError.of(self.resource, group_id)
            try:
                network = _network(group)
                usable = True
            except ValueError:
                # Only rows written outside the API can hold a bad CIDR; match nothing dynamically.
                log.warning("agent group %s has an invalid match_ip_cidr %r", group_id, group["match_ip_cidr"])
                network, usable = None, False
            has_criteria = any(
                group[c] for c in ("match_os", "match_architecture", "match_ip_cidr", "match_version")
            )
            candidates = await agent_groups_repo.member_candidates(
                conn, group_id,
                dynamic=bool(group["enabled"]) and has_criteria and usable,
                match_os=group["match_os"], match_architecture=group["match_architecture"],
                match_version=group["match_version"],
            )
            # CIDR containment is not portable SQL, so it is applied to (id, address) pairs here;
            # only the requested page of full agent rows is then read.
            member_ids = [
                c.agent_id for c in candidates
                if c.included or network is None or _contains(network, c.ip_address)
            ]
            page_ids = member_ids[page.offset : page.offset + page.per_page]
            found = await agent_groups_repo.agents_by_ids(conn, page_ids)
        return [Agent.model_validate(dict(r)) for r in found], len(member_ids)

    async def set_member(self, actor: Actor, group_id: str, agent_id: str, membership: MembershipType) -> None:
        """Pin an agent in (`include`) or out (`exclude`) of a group, whatever its criteria say."""
        async with self.ctx.db.transaction() as conn:
            if not await rows.exists(conn, agent_groups, group_id):
                raise NotFoundError.of(self.resource, group_id)
            if not await rows.exists(conn, agents, agent_id):
                raise ValidationError(f"agent_id '{agent_id}' does not exist")
            await agent_groups_repo.set_membership(conn, group_id, agent_id, membership.value, self.ctx.clock.now())
            await audit.record(
                conn, self.ctx.clock, actor, "agent_group_member_set", self.resource, group_id,
                {"agent_id": agent_id, "membership_type": membership.value},
            )

    async def remove_member(self, actor: Actor, group_id: str, agent_id: str) -> None:
        async with self.ctx.db.transaction() as conn:
            if not await rows.exists(conn, agent_groups, group_id):
                raise NotFoundError.of(self.resource, group_id)
            await agent_groups_repo.remove_membership(conn, group_id, agent_id)
            await audit.record(
                conn, self.ctx.clock, actor, "agent_group_member_removed", self.resource, group_id,
                {"agent_id": agent_id},
            )

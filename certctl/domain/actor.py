"""Who is acting: the API key's name, an agent, or the system itself."""

from __future__ import annotations

from dataclasses import dataclass

from certctl.domain.enums import ActorType


@dataclass(frozen=True)
class Actor:
    name: str
    actor_type: ActorType = ActorType.USER
    admin: bool = False
    authenticated: bool = True

    @classmethod
    def system(cls) -> Actor:
        return cls("system", ActorType.SYSTEM, admin=True)


ANONYMOUS = Actor("anonymous", ActorType.USER, admin=False, authenticated=False)

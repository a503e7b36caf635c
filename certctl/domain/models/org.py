"""Teams and owners."""

from __future__ import annotations

from datetime import datetime

from pydantic import EmailStr, Field

from certctl.domain.models.common import InputModel, WireModel


class Team(WireModel):
    id: str
    name: str
    description: str
    created_at: datetime
    updated_at: datetime


class TeamCreate(InputModel):
    id: str | None = Field(default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
    name: str = Field(min_length=1, max_length=255)
    description: str = Field(default="", max_length=4096)


class TeamUpdate(InputModel):
    name: str | None = Field(default=None, min_length=1, max_length=255)
    description: str | None = Field(default=None, max_length=4096)


class Owner(WireModel):
    id: str
    name: str
    email: str
    team_id: str | None
    created_at: datetime
    updated_at: datetime


class OwnerCreate(InputModel):
    id: str | None = Field(default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
    name: str = Field(min_length=1, max_length=255)
    email: EmailStr | None = None
    team_id: str | None = Field(default=None, min_length=1)


class OwnerUpdate(InputModel):
    name: str | None = Field(default=None, min_length=1, max_length=255)
    email: EmailStr | None = None
    team_id: str | None = Field(default=None, min_length=1)

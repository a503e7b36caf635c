"""Health, readiness, version and auth introspection."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel

from certctl import __version__
from certctl.api.deps import ActorDep, ServicesDep

router = APIRouter()


class HealthBody(BaseModel):
    status: str


class VersionBody(BaseModel):
    version: str
    api_version: str
    name: str


class AuthInfo(BaseModel):
    auth_type: str
    required: bool


class AuthCheck(BaseModel):
    status: str
    user: str
    admin: bool


@router.get("/health", tags=["Health"])
async def health() -> HealthBody:
    return HealthBody(status="healthy")


@router.get("/ready", tags=["Health"], responses={503: {"description": "database unreachable"}})
async def ready(services: ServicesDep) -> HealthBody:
    await services.ctx.db.ping()
    return HealthBody(status="ready")


@router.get("/api/v1/version", tags=["Health"])
async def version() -> VersionBody:
    return VersionBody(version=__version__, api_version="v1", name="certctl")


@router.get("/api/v1/auth/info", tags=["Health"])
async def auth_info(request: Request) -> AuthInfo:
    auth_type = request.app.state.settings.auth_type
    return AuthInfo(auth_type=auth_type, required=auth_type != "none")


@router.get("/api/v1/auth/check", tags=["Health"])
async def auth_check(actor: ActorDep) -> AuthCheck:
    return AuthCheck(status="authenticated", user=actor.name, admin=actor.admin)

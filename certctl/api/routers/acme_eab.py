"""/api/v1/acme/eab-keys: external account binding keys of the ACME server (admin only; docs/acme.md)."""

from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Response

from certctl.api.deps import AdminDep, ServicesDep
from certctl.domain.models.acme import EabKey, EabKeyCreate, EabKeyCreated

router = APIRouter(prefix="/api/v1/acme/eab-keys", tags=["ACME"])


def _key(row: Mapping[Any, Any]) -> dict[str, Any]:
    return {"key_id": row["id"], "profile_id": row["profile_id"], "description": row["description"],
            "account_id": row["account_id"], "created_by": row["created_by"], "created_at": row["created_at"],
            "used_at": row["used_at"]}


@router.post("", status_code=201, response_model=EabKeyCreated, summary="Create an ACME EAB key (admin)")
async def create_eab_key(body: EabKeyCreate, services: ServicesDep, actor: AdminDep) -> Any:
    row, secret = await services.acme.create_eab_key(actor, body.profile_id, body.description)
    return EabKeyCreated(**_key(row), hmac_key=secret)


@router.get("", response_model=dict[str, list[EabKey]], summary="List ACME EAB keys (admin; no secrets)")
async def list_eab_keys(services: ServicesDep, _: AdminDep) -> Any:
    return {"data": [EabKey(**_key(row)) for row in await services.acme.list_eab_keys()]}


@router.delete("/{key_id}", status_code=204, summary="Delete an ACME EAB key (admin)")
async def delete_eab_key(key_id: str, services: ServicesDep, actor: AdminDep) -> Response:
    await services.acme.delete_eab_key(actor, key_id)
    return Response(status_code=204)

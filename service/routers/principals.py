"""Principals (admin): who keys act for and whom licences are granted to."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from refrain.service.db import Principal, PrincipalKindError
from refrain.service.deps import ServiceDep, admin_only
from refrain.service.errors import ApiError
from refrain.service.routers import error_responses
from refrain.service.schemas import PrincipalIn, PrincipalList, PrincipalOut

router = APIRouter(prefix="/v1/principals", tags=["principals (admin)"],
                   dependencies=[Depends(admin_only)])


def _out(principal: Principal) -> PrincipalOut:
    return PrincipalOut(principal_id=principal.principal_id, name=principal.name, kind=principal.kind,
                        created_at=principal.created_at)


@router.post("", status_code=201, response_model=PrincipalOut, summary="Create a principal",
             responses=error_responses(400, 408, 409))
def create_principal(body: PrincipalIn, service: ServiceDep) -> PrincipalOut:
    """Create a principal (an uploader organisation, a rights holder, an analyst team, an admin), e.g.
    to grant it a licence before it has keys. Creating an existing one of the same kind is a no-op;
    409 if it exists with another kind."""
    try:
        return _out(service.db.ensure_principal(body.name, body.kind))
    except PrincipalKindError as err:
        raise ApiError(409, "conflict", str(err)) from None


@router.get("", response_model=PrincipalList, summary="List principals", responses=error_responses())
def list_principals(service: ServiceDep) -> PrincipalList:
    return PrincipalList(items=[_out(p) for p in service.db.list_principals()])

"""API keys (admin). The first admin key comes from `refrain keys create --role admin --principal NAME`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from refrain.service.db import ApiKey, LastAdminKeyError, PrincipalKindError
from refrain.service.deps import AdminKey, ServiceDep
from refrain.service.errors import ApiError
from refrain.service.routers import error_responses
from refrain.service.schemas import KeyCreated, KeyIn, KeyList, KeyOut

router = APIRouter(prefix="/v1/keys", tags=["keys (admin)"])


def key_out(record: ApiKey) -> dict:
    """A key record as :class:`service.schemas.KeyOut` fields."""
    return {"prefix": record.prefix, "role": record.role, "principal": record.principal, "label": record.label,
            "created_at": record.created_at, "revoked_at": record.revoked_at}


@router.post("", status_code=201, response_model=KeyCreated, summary="Create an API key",
             responses=error_responses(400, 408, 409))
def create_key(body: KeyIn, service: ServiceDep, _: AdminKey) -> KeyCreated:
    """Make a key acting for `principal` (created if missing); the response holds the key itself,
    which is never shown again. 409 if the principal exists with a kind the role does not fit."""
    try:
        key, record = service.db.create_key(body.role, body.principal, body.label)
    except PrincipalKindError as err:
        raise ApiError(409, "conflict", str(err)) from None
    return KeyCreated(key=key, **key_out(record))


@router.get("", response_model=KeyList, summary="List API keys (prefixes only)",
            responses=error_responses())
def list_keys(service: ServiceDep, _: AdminKey) -> KeyList:
    return KeyList(items=[KeyOut(**key_out(k)) for k in service.db.list_keys()])


@router.delete("/{prefix}", response_model=KeyOut, summary="Revoke an API key",
               responses=error_responses(404, 409))
def revoke_key(prefix: Annotated[str, Path(max_length=100)], service: ServiceDep, _: AdminKey) -> KeyOut:
    """Revoke a key (revoking twice is a no-op). 409 for the last live admin key: make another first."""
    try:
        record = service.db.revoke_key(prefix)
    except LastAdminKeyError as err:
        raise ApiError(409, "last_admin_key", str(err)) from None
    if record is None:
        raise ApiError(404, "not_found", f"API key {prefix} not found")
    return KeyOut(**key_out(record))

"""API keys (admin). The first admin key comes from `refrain keys create --role admin`."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path

from refrain.service.core import MatchService
from refrain.service.db import ApiKey
from refrain.service.deps import get_service, require_role
from refrain.service.errors import ApiError
from refrain.service.routers import error_responses
from refrain.service.schemas import KeyCreated, KeyIn, KeyList, KeyOut

router = APIRouter(prefix="/v1/keys", tags=["keys (admin)"])


def _out(record: ApiKey) -> dict:
    return {"prefix": record.prefix, "role": record.role, "label": record.label,
            "created_at": record.created_at, "revoked_at": record.revoked_at}


@router.post("", status_code=201, response_model=KeyCreated, summary="Create an API key",
             responses=error_responses())
def create_key(body: KeyIn, service: MatchService = Depends(get_service),
               _: ApiKey = Depends(require_role("admin"))) -> KeyCreated:
    """Make a key; the response holds the key itself, which is never shown again."""
    key, record = service.db.create_key(body.role, body.label)
    return KeyCreated(key=key, **_out(record))


@router.get("", response_model=KeyList, summary="List API keys (prefixes only)",
            responses=error_responses())
def list_keys(service: MatchService = Depends(get_service),
              _: ApiKey = Depends(require_role("admin"))) -> KeyList:
    return KeyList(items=[KeyOut(**_out(k)) for k in service.db.list_keys()])


@router.delete("/{prefix}", response_model=KeyOut, summary="Revoke an API key",
               responses=error_responses(404))
def revoke_key(prefix: str = Path(max_length=100), service: MatchService = Depends(get_service),
               _: ApiKey = Depends(require_role("admin"))) -> KeyOut:
    record = service.db.revoke_key(prefix)
    if record is None:
        raise ApiError(404, "not_found", f"API key {prefix} not found")
    return KeyOut(**_out(record))

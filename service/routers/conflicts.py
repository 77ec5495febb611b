"""Ownership conflicts (admin): works registered although their recording copies another work."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Depends, Query

from refrain.service.core import MatchService
from refrain.service.deps import get_service, require_role
from refrain.service.routers import error_responses
from refrain.service.schemas import MAX_DB_INTEGER, ConflictList, ConflictOut

router = APIRouter(prefix="/v1/conflicts", tags=["conflicts (admin)"], dependencies=[Depends(require_role("admin"))])


@router.get("", response_model=ConflictList, summary="The conflict queue (oldest first)",
            responses=error_responses())
def list_conflicts(include_resolved: bool = Query(False, description="Also list resolved conflicts"),
                   limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0, le=MAX_DB_INTEGER),
                   service: MatchService = Depends(get_service)) -> ConflictList:
    """Works registered with `conflict=true` and the works their recordings copy."""
    conflicts, total = service.db.list_conflicts(include_resolved, limit, offset)
    return ConflictList(items=[ConflictOut(**asdict(c)) for c in conflicts], total=total, limit=limit, offset=offset)

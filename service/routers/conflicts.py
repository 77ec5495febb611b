"""Ownership conflicts (admin): works registered although their recording copies another work."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Depends, Path, Query

from refrain.service.core import close_conflict, conflict_claims, with_holds
from refrain.service.deps import AdminKey, JobsDep, ServiceDep, admin_only
from refrain.service.routers import error_responses
from refrain.service.routers.params import LimitQuery, OffsetQuery
from refrain.service.schemas import MAX_DB_INTEGER, ConflictList, ConflictOut, ConflictResolutionIn
from refrain.service.webhooks import notify

#: Most decisions a ``conflict.resolved`` notification names (those whose royalties the conflict held).
MAX_NOTIFIED_DECISIONS = 10_000

router = APIRouter(prefix="/v1/conflicts", tags=["conflicts (admin)"], dependencies=[Depends(admin_only)])


@router.get("", response_model=ConflictList, summary="The conflict queue (oldest first)",
            responses=error_responses())
def list_conflicts(*, include_resolved: Annotated[bool, Query(description="Also list resolved conflicts")] = False,
                   limit: LimitQuery = 50, offset: OffsetQuery = 0, service: ServiceDep) -> ConflictList:
    """Works registered with `conflict=true` and the works their recordings copy."""
    conflicts, total = service.db.list_conflicts(include_resolved, limit, offset)
    return ConflictList(items=[ConflictOut(**asdict(c)) for c in conflicts], total=total, limit=limit, offset=offset)


@router.post("/{conflict_id}/resolution", response_model=ConflictOut, summary="Resolve an ownership conflict",
             responses=error_responses(400, 404, 409))
def resolve_conflict(body: ConflictResolutionIn, tasks: BackgroundTasks,
                     conflict_id: Annotated[int, Path(ge=1, le=MAX_DB_INTEGER)], service: ServiceDep,
                     jobs: JobsDep, key: AdminKey) -> ConflictOut:
    """Say who keeps the conflicting span: `work` (the newer claim), `claimed_work` (the earlier) or `share`.
    The hold on the royalties of decisions matching either work over that span is lifted; unless both share, the
    loser's side of the span becomes an exclusion of its work (`GET /v1/works/{id}/exclusions`), so that it is
    never counted for that work again. 409 when already resolved. Webhooks subscribed to `conflict.resolved` get
    the conflict and the decisions whose royalties it held."""
    conflict = service.db.get_conflict(conflict_id)
    claims = conflict_claims([conflict]) if conflict is not None and conflict.resolved_at is None else []
    resolved = close_conflict(service.db, conflict_id, body.keeps, body.note, key.principal)
    held = []
    for work_id in (resolved.work_id, resolved.claimed_work_id):
        decisions, _ = service.db.list_decisions(work_id, None, None, MAX_NOTIFIED_DECISIONS, 0)
        held.extend(d.decision_id for d in decisions
                    if any(w["royalty"]["held"] for w in with_holds(d.body, claims)["works"]))
    out = ConflictOut(**asdict(resolved))
    tasks.add_task(notify, service.db, service.settings, jobs.deliveries, "conflict.resolved",
                   {**out.model_dump(mode="json"), "released_decision_ids": sorted(set(held))})
    return out

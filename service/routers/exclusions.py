"""Reference exclusions: spans of a work's recording that never count as evidence of a claim.

Admins and analysts manage any work's; a rights holder those of its own works only (403 elsewhere).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Response

from refrain.service.db import ApiKey
from refrain.service.deps import ServiceDep, require_role
from refrain.service.errors import ApiError
from refrain.service.routers import error_responses
from refrain.service.routers.params import WorkIdPath
from refrain.service.routers.works import managed_work
from refrain.service.schemas import MAX_DB_INTEGER, ExclusionIn, ExclusionList, ExclusionOut

__all__ = ["router"]

router = APIRouter(prefix="/v1/works/{work_id}/exclusions", tags=["exclusions"])

#: The roles that manage exclusions; a rights holder's key only on works its principal owns.
EXCLUSION_ROLES = ("admin", "analyst", "rights_holder")
_OVERSEERS = ("admin", "analyst")
#: The caller's key record, admitted with one of the :data:`EXCLUSION_ROLES`.
ExclusionKey = Annotated[ApiKey, Depends(require_role(*EXCLUSION_ROLES))]


@router.get("", response_model=ExclusionList, summary="A work's excluded reference spans",
            responses=error_responses(404))
def list_exclusions(work_id: WorkIdPath, service: ServiceDep, key: ExclusionKey) -> ExclusionList:
    """In reference order: those added here, by a dispute resolved with `release_and_exclude` and by a resolved
    ownership conflict."""
    managed_work(service, key, work_id, _OVERSEERS)
    return ExclusionList(items=[ExclusionOut(**asdict(e)) for e in service.db.list_exclusions(work_id)])


@router.post("", status_code=201, response_model=ExclusionOut, summary="Exclude a span of a work's recording",
             responses=error_responses(400, 404))
def add_exclusion(body: ExclusionIn, work_id: WorkIdPath, service: ServiceDep, key: ExclusionKey) -> ExclusionOut:
    """From now on the parts of a match aligned inside `ref_start`–`ref_end` of this work's recording are dropped
    before the policy counts anything; a match with nothing left is no claim. Decisions already stored change
    only through `refrain rescan uploads --apply`."""
    work = managed_work(service, key, work_id, _OVERSEERS)
    if body.ref_end <= body.ref_start:
        raise ApiError(422, "validation_error", "ref_end must be after ref_start")
    if body.ref_start >= work.duration:
        raise ApiError(422, "validation_error", f"ref_start is past the end of the recording ({work.duration:.1f} s)")
    made = service.db.add_exclusion(work_id, body.ref_start, min(body.ref_end, work.duration), body.reason,
                                    key.principal)
    return ExclusionOut(**asdict(made))


@router.delete("/{exclusion_id}", status_code=204, response_class=Response, summary="Remove an exclusion",
               responses=error_responses(404))
def delete_exclusion(work_id: WorkIdPath, exclusion_id: Annotated[int, Path(ge=1, le=MAX_DB_INTEGER)],
                     service: ServiceDep, key: ExclusionKey) -> Response:
    managed_work(service, key, work_id, _OVERSEERS)
    if not service.db.delete_exclusion(work_id, exclusion_id):
        raise ApiError(404, "not_found", f"work {work_id} has no exclusion {exclusion_id}")
    return Response(status_code=204)

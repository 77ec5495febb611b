"""Catalogue (admin): reference recordings with rights metadata, and their AI-use policies."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from refrain import policy
from refrain.service.core import MatchService, policy_out, work_out
from refrain.service.deps import get_service, require_role
from refrain.service.errors import ApiError
from refrain.service.routers import error_responses, multipart_body
from refrain.service.schemas import MAX_DB_INTEGER, PolicyBody, PolicyOut, WorkList, WorkOut
from refrain.service.uploads import receive_form

router = APIRouter(prefix="/v1/works", tags=["works (admin)"],
                   dependencies=[Depends(require_role("admin"))])

WorkId = Path(description="The work's id", ge=1, le=MAX_DB_INTEGER)


def _get_work(service: MatchService, work_id: int):
    work = service.db.get_work(work_id)
    if work is None:
        raise ApiError(404, "not_found", f"work {work_id} not found")
    return work


@router.post("", status_code=201, response_model=WorkOut, summary="Upload a reference recording",
             responses=error_responses(400, 408, 409, 413, 415),
             openapi_extra=multipart_body("WorkUploadForm"))
async def create_work(request: Request, service: MatchService = Depends(get_service)) -> WorkOut:
    """Ingest a reference recording into the index and register it as a work.

    The body is `multipart/form-data` (schema `WorkUploadForm`), streamed: an upload over
    the size limit is refused with 413 while it arrives. The work gets the default
    policy (deny everything) until `PUT /v1/works/{id}/policy` sets one.
    """
    with service.admission.upload():
        form = await receive_form(request, service.settings.max_upload_bytes, service.settings.upload_dir)
        with form:
            work = await service.analyse(form, service.settings.max_reference_seconds, service.add_work, form)
    return WorkOut(**work_out(work, None))


@router.get("", response_model=WorkList, summary="List works", responses=error_responses())
def list_works(limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0, le=MAX_DB_INTEGER),
               service: MatchService = Depends(get_service)) -> WorkList:
    works, total = service.db.list_works(limit, offset)
    policies = service.db.policies([w.work_id for w in works])
    return WorkList(items=[WorkOut(**work_out(w, policies.get(w.work_id))) for w in works],
                    total=total, limit=limit, offset=offset)


@router.get("/{work_id}", response_model=WorkOut, summary="Get a work", responses=error_responses(404))
def get_work(work_id: int = WorkId, service: MatchService = Depends(get_service)) -> WorkOut:
    work = _get_work(service, work_id)
    return WorkOut(**work_out(work, service.db.policies([work_id]).get(work_id)))


@router.delete("/{work_id}", status_code=204, response_class=Response,
               summary="Delete a work (removes it from the index)", responses=error_responses(404))
def delete_work(work_id: int = WorkId, service: MatchService = Depends(get_service)) -> Response:
    """Take the recording out of the index; stored decisions that matched it are kept for the audit."""
    service.delete_work(work_id)
    return Response(status_code=204)


@router.get("/{work_id}/policy", response_model=PolicyOut, summary="Get a work's policy",
            responses=error_responses(404))
def get_policy(work_id: int = WorkId, service: MatchService = Depends(get_service)) -> PolicyOut:
    _get_work(service, work_id)
    return PolicyOut(**policy_out(service.db.policies([work_id]).get(work_id)))


@router.put("/{work_id}/policy", response_model=PolicyOut, summary="Set a work's AI-use policy",
            responses=error_responses(400, 404, 408))
def put_policy(body: PolicyBody, work_id: int = WorkId,
               service: MatchService = Depends(get_service)) -> PolicyOut:
    """Replace the work's policy: an action for copies, remixes and covers, the royalty share, and the
    conditions under which a short match is allowed or reviewed instead."""
    _get_work(service, work_id)
    try:
        new = policy.Policy(copy=body.copy_, remix=body.remix, cover=body.cover, royalty_share=body.royalty_share,
                            conditions=tuple(policy.MatchCondition(**c.model_dump()) for c in body.conditions))
    except ValueError as err:  # what the schema cannot say: one condition per use
        raise ApiError(422, "validation_error", str(err)) from None
    service.db.set_policy(work_id, new)
    return PolicyOut(**policy_out(new))

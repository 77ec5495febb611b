"""Disputes: an uploader disputes the claims on its decision; analysts work through the dispute queue.

A rights holder's key reads the queue of the disputes of its own works' claims (matched directly or attributed
through a lineage); resolving stays with analysts.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, BackgroundTasks, Depends, Query

from refrain.service.core import MatchService, close_dispute, dispute_out, file_dispute
from refrain.service.db import ApiKey, Dispute
from refrain.service.deps import AnalystKey, JobsDep, ServiceDep, UploaderKey, require_role
from refrain.service.jobs import JobRunner
from refrain.service.routers import error_responses
from refrain.service.routers.params import DecisionIdPath, DisputeIdPath, LimitQuery, OffsetQuery
from refrain.service.errors import ApiError
from refrain.service.schemas import (MAX_DB_INTEGER, BoundedDatetime, DisputeIn, DisputeList, DisputeOut,
                                     DisputeReason, DisputeResolutionIn)
from refrain.service.webhooks import notify

__all__ = ["router", "notify_dispute"]

router = APIRouter(prefix="/v1", tags=["disputes"])


def notify_dispute(tasks: BackgroundTasks, service: MatchService, jobs: JobRunner, event: str,
                   dispute: Dispute) -> DisputeOut:
    """Queue the ``dispute.filed`` / ``dispute.resolved`` webhooks (sent after the answer); return the dispute.

    The payload is the dispute and its decision's verdict as it stands (re-derived by a resolution).
    """
    out = DisputeOut(**dispute_out(dispute))
    decision = service.db.get_decision(dispute.decision_id)
    tasks.add_task(notify, service.db, service.settings, jobs.deliveries, event,
                   {**out.model_dump(mode="json"), "verdict": decision.verdict,
                    "total_share_owed": decision.body["total_share_owed"]})
    return out


@router.post("/matches/{decision_id}/disputes", status_code=201, response_model=DisputeOut,
             summary="Dispute the claims on one of your decisions", responses=error_responses(400, 404, 409))
def create_dispute(body: DisputeIn, tasks: BackgroundTasks, decision_id: DecisionIdPath, service: ServiceDep,
                   jobs: JobsDep, key: UploaderKey) -> DisputeOut:
    """The principal whose key made the upload disputes its blocked or reviewed claims, with a reason from the
    fixed list and an explanation. 403 for another principal's decision, 409 `dispute_open` while a dispute of
    it is open, 422 when nothing on it is blocked or under review. Webhooks subscribed to `dispute.filed` are
    notified."""
    return notify_dispute(tasks, service, jobs, "dispute.filed",
                          file_dispute(service.db, decision_id, key, body.reason, body.text))


@router.get("/disputes", response_model=DisputeList, summary="The dispute queue (oldest first; a rights holder: "
                                                              "its works')",
            responses=error_responses())
def list_disputes(*, status: Annotated[Literal["open", "resolved", "all"],
                                        Query(description="Default `open`: the disputes waiting for an "
                                                          "analyst")] = "open",
                  reason: Annotated[DisputeReason | None, Query()] = None,
                  work_id: Annotated[int | None, Query(ge=1, le=MAX_DB_INTEGER,
                                                       description="Only disputes of decisions that matched this "
                                                                   "work")] = None,
                  since: Annotated[BoundedDatetime | None, Query(description="Filed at or after (ISO 8601; UTC if no "
                                                                 "zone)")] = None,
                  until: Annotated[BoundedDatetime | None, Query(description="Filed before (ISO 8601; UTC if no "
                                                                 "zone)")] = None,
                  limit: LimitQuery = 50, offset: OffsetQuery = 0, service: ServiceDep,
                  key: Annotated[ApiKey, Depends(require_role("analyst", "rights_holder"))]) -> DisputeList:
    """Analysts see every dispute; a rights holder those disputing a claim of one of its works (directly matched
    or an ancestor attributed through a lineage), with the same filters."""
    if since is not None and until is not None and until <= since:
        raise ApiError(422, "validation_error", "until must be after since")
    disputes, total = service.db.list_disputes(status, reason, work_id, since, until, limit, offset,
                                               holder_id=key.principal_id if key.role == "rights_holder" else None)
    return DisputeList(items=[DisputeOut(**dispute_out(d)) for d in disputes], total=total, limit=limit, offset=offset)


@router.get("/disputes/{dispute_id}", response_model=DisputeOut, summary="Get a dispute",
            responses=error_responses(404))
def get_dispute(dispute_id: DisputeIdPath, service: ServiceDep,
                key: Annotated[ApiKey, Depends(require_role("analyst", "rights_holder"))]) -> DisputeOut:
    """A rights holder reads the disputes of its own works' claims only (403 for any other)."""
    dispute = service.db.get_dispute(dispute_id)
    if dispute is None:
        raise ApiError(404, "not_found", f"dispute {dispute_id} not found")
    if key.role == "rights_holder" and not service.db.disputes_claims_of(dispute_id, key.principal_id):
        raise ApiError(403, "forbidden", f"dispute {dispute_id} disputes no claim of a work of {key.principal!r}")
    return DisputeOut(**dispute_out(dispute))


@router.post("/disputes/{dispute_id}/resolution", response_model=DisputeOut, summary="Resolve a dispute",
             responses=error_responses(400, 404, 409))
def resolve_dispute(body: DisputeResolutionIn, tasks: BackgroundTasks, dispute_id: DisputeIdPath,
                    service: ServiceDep, jobs: JobsDep, key: AnalystKey) -> DisputeOut:
    """`release` the disputed claims, `reinstate` them (confirmed: the block stands) or `release_and_exclude`
    (released, and each released work's matched reference span excluded from its future claims: see
    `GET /v1/works/{id}/exclusions`). The decision's verdict is re-derived and the change kept in its history
    (kind `dispute`, the analyst's principal, the note). 409 when the dispute is already resolved or the decision
    changed meanwhile. Webhooks subscribed to `dispute.resolved` are notified."""
    return notify_dispute(tasks, service, jobs, "dispute.resolved",
                          close_dispute(service.db, dispute_id, body.outcome, body.note, key.principal))

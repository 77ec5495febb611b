"""Reviews (analyst): resolve a stored decision, the review queue and its CSV export with royalty lines."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Depends, Query, Response

from refrain.policy import ConflictClaim
from refrain.service.core import MatchService, conflict_claims, resolve_decision, with_holds
from refrain.service.db import StoredDecision
from refrain.service.deps import AnalystKey, JobsDep, ServiceDep
from refrain.service.errors import ApiError
from refrain.service.jobs import JobRunner
from refrain.service.routers import error_responses
from refrain.service.routers.matches import stored_decision
from refrain.service.routers.params import DecisionIdPath, LimitQuery, OffsetQuery
from refrain.service.routers.webhooks import notify
from refrain.service.schemas import (MAX_DB_INTEGER, BoundedDatetime, DecisionDetail, DecisionList, DecisionSummary,
                                     Kind, ResolutionIn, Verdict)

router = APIRouter(prefix="/v1", tags=["reviews"])

#: Most decisions one CSV export holds: past it, narrow the filters or page with offset.
MAX_EXPORT_DECISIONS = 10_000

#: Columns of the CSV export: one line per matched work of each decision (one empty-work line
#: for a decision that matched nothing), with its royalty attribution.
EXPORT_COLUMNS = ("decision_id", "created_at", "verdict", "filename", "principal", "uploader_id", "work_id",
                  "track_id", "title", "rights_holder", "isrc", "kind", "use", "outcome", "licence_id",
                  "covered_seconds", "duration_share", "royalty_share", "share_owed", "excluded_seconds", "held",
                  "via_work_id")


@dataclass(frozen=True)
class QueueFilters:
    """The review queue's filters, shared by the listing and the export."""

    verdict: Verdict | None
    work_id: int | None
    uploader_id: str | None
    kind: str | None
    since: datetime | None
    until: datetime | None

    def query(self, service: MatchService, limit: int, offset: int) -> tuple[list[StoredDecision], int]:
        return service.db.list_decisions(self.work_id, self.verdict, self.since, limit, offset, until=self.until,
                                         uploader_id=self.uploader_id, kind=self.kind, oldest_first=True)


def queue_filters(verdict: Annotated[Verdict | None, Query(description="Only decisions with this verdict "
                                                                       "(default `review`: the decisions waiting "
                                                                       "for an analyst)")] = "review",
                  work_id: Annotated[int | None, Query(ge=1, le=MAX_DB_INTEGER,
                                                       description="Only decisions that matched this work "
                                                       "or claim it through a lineage (docs/lineage.md)")] = None,
                  uploader_id: Annotated[str | None, Query(max_length=200, description="Only uploads that declared "
                                                                                       "this uploader_id")] = None,
                  kind: Annotated[Kind | None, Query(description="Only decisions with a work matched as this "
                                                                 "kind")] = None,
                  since: Annotated[BoundedDatetime | None, Query(description="Made at or after this instant "
                                                                 "(ISO 8601; UTC if no zone)")] = None,
                  until: Annotated[BoundedDatetime | None, Query(description="Made before this instant (ISO 8601; "
                                                                 "UTC if no zone)")] = None) -> QueueFilters:
    if since is not None and until is not None and until <= since:
        raise ApiError(422, "validation_error", "until must be after since")
    return QueueFilters(verdict, work_id, uploader_id, kind, since, until)


@router.post("/matches/{decision_id}/resolution", response_model=DecisionDetail,
             summary="Resolve a stored decision (confirm, allow or release each work)",
             responses=error_responses(400, 404, 409))
def resolve(body: ResolutionIn, tasks: BackgroundTasks, decision_id: DecisionIdPath, service: ServiceDep,
            jobs: JobsDep, key: AnalystKey) -> DecisionDetail:
    """Confirm the block, allow the use or release the claim of each named work, with a required note.

    The verdict is re-derived from the works' new outcomes (a released work no longer counts;
    every claim released: `allowed`) and the change is kept in the decision's `history` with
    the analyst's principal and note. Works not named keep their outcome. 409 when a rescan
    or another analyst changed the decision meanwhile. Webhooks subscribed to `decision.resolved`
    are notified once the answer is sent.
    """
    resolutions: dict[int, str] = {}
    for item in body.works:
        if item.track_id in resolutions:
            raise ApiError(422, "validation_error", f"track {item.track_id} is resolved twice")
        resolutions[item.track_id] = item.resolution
    resolve_decision(service.db, decision_id, resolutions, body.note, key.principal)
    return notify_resolution(tasks, service, jobs, decision_id)


def notify_resolution(tasks: BackgroundTasks, service: MatchService, jobs: JobRunner,
                      decision_id: str) -> DecisionDetail:
    """Queue the ``decision.resolved`` webhooks of a decision just resolved (sent after the answer); return it."""
    detail = stored_decision(service, decision_id)
    change = detail.history[-1]
    tasks.add_task(notify, service.db, service.settings, jobs.deliveries, "decision.resolved",
                   {"decision_id": decision_id, **change.model_dump(mode="json"), "verdict": detail.verdict,
                    "total_share_owed": detail.total_share_owed})
    return detail


@router.get("/reviews", response_model=DecisionList, summary="The review queue (oldest first)",
            responses=error_responses())
def review_queue(*, filters: Annotated[QueueFilters, Depends(queue_filters)], limit: LimitQuery = 50,
                 offset: OffsetQuery = 0, service: ServiceDep, _: AnalystKey) -> DecisionList:
    """Stored decisions waiting for an analyst (or any verdict asked for), oldest first, filtered and paged."""
    decisions, total = filters.query(service, limit, offset)
    items = [DecisionSummary(decision_id=d.decision_id, created_at=d.created_at, verdict=d.verdict,
                             filename=d.body["filename"], uploader_id=d.body["uploader_id"],
                             work_ids=[w["work_id"] for w in d.body["works"]]) for d in decisions]
    return DecisionList(items=items, total=total, limit=limit, offset=offset)


def export_csv(decisions: list[StoredDecision], claims: list[ConflictClaim]) -> str:
    """The CSV export (:data:`EXPORT_COLUMNS`) of these decisions: a line per matched work, then per lineage claim
    (``via_work_id``: the matched derivative it comes through; docs/lineage.md); ``held`` says whether an open
    ownership conflict (``claims``: :func:`service.core.conflict_claims`) holds a line's royalties."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=EXPORT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for decision in decisions:
        body = with_holds(decision.body, claims)
        common = {"decision_id": decision.decision_id, "created_at": decision.created_at.isoformat(),
                  "verdict": decision.verdict, "filename": body["filename"], "principal": body.get("principal"),
                  "uploader_id": body["uploader_id"]}
        if not body["works"]:
            writer.writerow(common)
        for work in [*body["works"], *body.get("lineage", [])]:
            writer.writerow({**common, **{name: work.get(name) for name in ("work_id", "track_id", "title",
                                                                           "rights_holder", "isrc", "kind", "use",
                                                                           "outcome", "licence_id", "via_work_id")},
                             **{name: work["royalty"].get(name, 0.0) for name in ("covered_seconds",
                                                                                  "duration_share",
                                                                                  "royalty_share", "share_owed",
                                                                                  "excluded_seconds", "held")}})
    return out.getvalue()


@router.get("/reviews/export", response_class=Response, summary="CSV export of the filtered decisions",
            responses={**error_responses(), 200: {"content": {"text/csv": {}}, "description": "CSV, one line per "
                                                  "matched work with its royalty attribution"}})
def export_reviews(*, filters: Annotated[QueueFilters, Depends(queue_filters)],
                   limit: Annotated[int, Query(ge=1, le=MAX_EXPORT_DECISIONS,
                                               description="Most decisions exported")] = MAX_EXPORT_DECISIONS,
                   offset: OffsetQuery = 0, service: ServiceDep, _: AnalystKey) -> Response:
    """The decisions the same filters select (oldest first), one CSV line per matched work, then per lineage
    claim (`via_work_id`: the derivative it comes through), with its royalty lines (`covered_seconds`,
    `duration_share`, `royalty_share`, `share_owed`, `excluded_seconds`, and `held`: an open ownership
    conflict holds them). `X-Total-Count` gives how many
    decisions the filters select in all."""
    decisions, total = filters.query(service, limit, offset)
    return Response(export_csv(decisions, conflict_claims(service.db.open_conflicts())),
                    media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": 'attachment; filename="refrain-decisions.csv"',
                             "X-Total-Count": str(total)})

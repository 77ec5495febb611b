"""Royalty statements: what the decisions of a period owe one rights holder, directly and along lineages."""

from __future__ import annotations

import csv
import io
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Query
from fastapi.responses import Response

from refrain import policy
from refrain.service.core import conflict_claims, with_holds
from refrain.service.db import ApiKey, StoredDecision
from refrain.service.deps import ServiceDep, require_role
from refrain.service.errors import ApiError
from refrain.service.routers import error_responses
from refrain.service.schemas import BoundedDatetime, PrincipalName, RoyaltyLineOut, RoyaltyStatement

router = APIRouter(prefix="/v1/royalties", tags=["royalties"])

#: Columns of the CSV statement, one row per line.
CSV_COLUMNS = ["decision_id", "created_at", "verdict", "work_id", "title", "via_work_id", "share_owed", "held"]


def royalty_lines(decisions: list[StoredDecision], holder: str,
                  holds: list[policy.ConflictClaim]) -> list[RoyaltyLineOut]:
    """The non-zero shares these decisions owe ``holder``: its matched works' and its lineage claims'.

    A work matched directly and also reached through a matched derivative's lineage is
    paid once, through the lineage (its direct share is 0 then: docs/lineage.md). A line is
    ``held`` while an open ownership conflict (``holds``: :func:`service.core.conflict_claims`)
    claims its span, a lineage claim's as a direct one's.
    """
    lines = []
    for decision in decisions:
        body = with_holds(decision.body, holds)
        entries = ([(w, None) for w in body["works"]] + [(c, c["via_work_id"]) for c in body.get("lineage", [])])
        for entry, via in entries:
            owed = entry["royalty"]["share_owed"]
            if entry["rights_holder"] == holder and owed > 0:
                lines.append(RoyaltyLineOut(decision_id=decision.decision_id, created_at=decision.created_at,
                                            verdict=decision.verdict, work_id=entry["work_id"], title=entry["title"],
                                            via_work_id=via, share_owed=owed, held=entry["royalty"]["held"]))
    return lines


@router.get("", response_model=RoyaltyStatement, summary="A rights holder's royalty statement for a period",
            responses={**error_responses(), 200: {"content": {"text/csv": {}},
                                                  "description": "The statement (JSON), or its lines as CSV "
                                                                 "with `Accept: text/csv` or `format=csv`"}})
def statement(*, holder: Annotated[PrincipalName, Query(description="The rights holder, as works name it "
                                                                    "(`rights_holder`)")],
              since: Annotated[BoundedDatetime | None, Query(description="Decisions made at or after (ISO 8601; UTC "
                                                                         "if no zone)")] = None,
              until: Annotated[BoundedDatetime | None, Query(description="Decisions made before")] = None,
              format: Annotated[Literal["json", "csv"] | None,
                                Query(description="`csv`: as `Accept: text/csv`")] = None,
              accept: Annotated[str | None, Header()] = None,
              service: ServiceDep,
              key: Annotated[ApiKey, Depends(require_role("admin", "analyst", "rights_holder",
                                                          "uploader"))]) -> Response:
    """Sum the shares owed to `holder` by the stored decisions of `[since, until)` that let an upload
    be published (`allowed`, `licensed`): the shares of its matched works and of its works reached
    through a matched derivative's lineage. A share is a fraction of one upload's revenue; a line an open
    ownership conflict holds is marked `held` (and counted in `held_share` too). Admins and
    analysts ask for anyone; a rights holder (or an uploader that published derivatives) for itself."""
    if key.role not in ("admin", "analyst") and holder != key.principal:
        raise ApiError(403, "forbidden", f"a rights holder reads its own statement ({key.principal!r}), "
                                         f"not {holder!r}'s")
    if since is not None and until is not None and until <= since:
        raise ApiError(422, "validation_error", "until must be after since")
    lines = royalty_lines(service.db.decisions_owing(since, until), holder,
                          conflict_claims(service.db.open_conflicts()))
    if format == "csv" or (format is None and accept is not None and "text/csv" in accept):
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for line in lines:
            row = line.model_dump(mode="json")
            writer.writerow(["" if row[column] is None else row[column] for column in CSV_COLUMNS])
        return Response(buffer.getvalue(), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": 'attachment; filename="refrain-royalties.csv"'})
    body = RoyaltyStatement(holder=holder, since=since, until=until,
                            total_share_owed=round(sum(line.share_owed for line in lines), 6),
                            held_share=round(sum(line.share_owed for line in lines if line.held), 6),
                            decisions=len({line.decision_id for line in lines}), lines=lines)
    return Response(body.model_dump_json(), media_type="application/json")

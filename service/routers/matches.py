"""Matching (uploader), ad-hoc matching and the decision audit (analyst)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Header, Path, Query, Request, Response

from refrain.service.core import MatchService, conflict_claims, dispute_out, with_holds
from refrain.service.db import ApiKey
from refrain.service.deps import AnalystKey, JobsDep, ServiceDep, UploaderKey
from refrain.service.errors import ApiError
from refrain.service.routers import error_responses, multipart_body
from refrain.service.routers.jobs import submit_upload
from refrain.service.routers.params import DecisionIdPath, LimitQuery, OffsetQuery
from refrain.service.schemas import (MAX_DB_INTEGER, BoundedDatetime, DecisionDetail, DecisionList, DecisionOut,
                                     DecisionSummary, DisputeOut, EvidenceOut, JobOut, Verdict, VerdictChangeOut)
from refrain.service.uploads import receive_form

router = APIRouter(prefix="/v1/matches", tags=["matches"])

_MATCH_ERRORS = error_responses(400, 404, 408, 413, 415)
REPLAYED_HEADER = "Idempotent-Replayed"


async def _match(request: Request, service: MatchService, key: ApiKey, store: bool,
                 idempotency_key: str | None = None, response: Response | None = None) -> DecisionOut:
    with service.admission.upload():
        form = await receive_form(request, service.settings.max_upload_bytes, service.settings.upload_dir)
        with form:
            # Decoding and matching are CPU work: off the event loop, in the analysis pool.
            outcome = await service.analyse(form, service.settings.max_upload_seconds, service.match_upload,
                                            form, key, store, None, idempotency_key)
    if response is not None and outcome.replayed:
        response.headers[REPLAYED_HEADER] = "true"
    return DecisionOut(**with_holds(outcome.body, conflict_claims(service.db.open_conflicts())))


@router.post("", response_model=DecisionOut, summary="Check an upload (stored decision)",
             responses={**_MATCH_ERRORS, **error_responses(409),
                        200: {"description": "The decision (with `Idempotent-Replayed: true` when it is the one "
                                             "stored for an earlier request with the same `Idempotency-Key`)",
                              "headers": {REPLAYED_HEADER: {"description": "`true` on a replayed decision",
                                                            "schema": {"type": "string"}}}},
                        202: {"model": JobOut, "description": "`mode=async`: the upload is "
                                                              "queued as a job (`Location`: `/v1/jobs/{job_id}`)"}},
             openapi_extra=multipart_body("MatchUploadForm"))
async def match_upload(*, request: Request, response: Response,
                       mode: Annotated[Literal["sync", "async"],
                                       Query(description="`async`: answer 202 with a job at once, decide in the "
                                                         "background")] = "sync",
                       callback_url: Annotated[str | None,
                                               Query(description="`mode=async`: where to POST the signed "
                                                                 "`match.completed` / `match.failed` webhook")] = None,
                       idempotency_key: Annotated[str | None, Header(
                           alias="Idempotency-Key", min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$",
                           description="Makes a retry safe: the same key (per principal) with the same bytes "
                                       "answers the decision already made, as it stands now; with other bytes, "
                                       "409 `idempotency_key_reused`. `mode=sync` only")] = None,
                       service: ServiceDep, jobs: JobsDep, key: UploaderKey) -> DecisionOut:
    """Match an upload against the catalogue, apply each matched work's policy and the declared
    licences, store the decision for the audit and return it.

    The body is `multipart/form-data` (schema `MatchUploadForm`), streamed: over the size
    limit it is refused with 413 while it arrives. With `mode=async` the answer is 202 and a
    job to poll (`GET /v1/jobs/{job_id}`) or to be called back about (`callback_url`).
    """
    if mode == "async":
        if idempotency_key is not None:
            raise ApiError(422, "validation_error", "Idempotency-Key is only honoured with mode=sync")
        return await submit_upload(request, service, jobs, key, callback_url)
    if callback_url is not None:
        raise ApiError(422, "validation_error", "callback_url needs mode=async")
    return await _match(request, service, key, store=True, idempotency_key=idempotency_key, response=response)


@router.post("/adhoc", response_model=DecisionOut, summary="Ad-hoc match (not stored)",
             responses=_MATCH_ERRORS, openapi_extra=multipart_body("MatchUploadForm"))
async def match_adhoc(request: Request, service: ServiceDep, key: AnalystKey) -> DecisionOut:
    """The same analysis as `POST /v1/matches`, for an analyst's suspect file: nothing is stored."""
    return await _match(request, service, key, store=False)


@router.get("", response_model=DecisionList, summary="List stored decisions",
            responses=error_responses())
def list_decisions(*, work_id: Annotated[int | None, Query(ge=1, le=MAX_DB_INTEGER,
                                                           description="Only decisions that matched this work "
                                                           "or claim it through a lineage (docs/lineage.md)")] = None,
                   verdict: Annotated[Verdict | None, Query()] = None,
                   since: Annotated[BoundedDatetime | None, Query(description="Only decisions made at or after "
                                                                  "this instant (ISO 8601; UTC if no zone)")] = None,
                   limit: LimitQuery = 50, offset: OffsetQuery = 0, service: ServiceDep,
                   _: AnalystKey) -> DecisionList:
    """Newest first."""
    decisions, total = service.db.list_decisions(work_id, verdict, since, limit, offset)
    items = [DecisionSummary(decision_id=d.decision_id, created_at=d.created_at, verdict=d.verdict,
                             filename=d.body["filename"], uploader_id=d.body["uploader_id"],
                             work_ids=[w["work_id"] for w in d.body["works"]]) for d in decisions]
    return DecisionList(items=items, total=total, limit=limit, offset=offset)


def stored_decision(service: MatchService, decision_id: str) -> DecisionDetail:
    """A stored decision with its evidence; 404 if unknown."""
    stored = service.db.get_decision(decision_id)
    if stored is None:
        raise ApiError(404, "not_found", f"decision {decision_id} not found")
    evidence = service.db.decision_evidence(decision_id)
    items = []
    for work in stored.body["works"]:
        found = evidence.get(work["track_id"])
        items.append(EvidenceOut(
            track_id=work["track_id"], work_id=work["work_id"], offset=work["offset"],
            time_ratio=work["time_ratio"],
            points=[] if found is None else [(round(float(q), 3), round(float(r), 3)) for q, r in found.points],
            spectrogram_start=found.spectrogram_start if found else None,
            spectrogram_end=found.spectrogram_end if found else None))
    history = [VerdictChangeOut(kind=c.kind, run_id=c.run_id, actor=c.actor, changed_at=c.changed_at,
                                old_verdict=c.old_verdict, new_verdict=c.new_verdict, reason=c.reason)
               for c in service.db.decision_history(decision_id)]
    return DecisionDetail(**with_holds(stored.body, conflict_claims(service.db.open_conflicts())), evidence=items,
                          history=history,
                          disputes=[DisputeOut(**dispute_out(d)) for d in service.db.decision_disputes(decision_id)])


@router.get("/{decision_id}", response_model=DecisionDetail, summary="Get a stored decision with its evidence",
            responses=error_responses(404))
def get_decision(decision_id: DecisionIdPath, service: ServiceDep, _: AnalystKey) -> DecisionDetail:
    return stored_decision(service, decision_id)


@router.get("/{decision_id}/spectrogram/{track_id}", response_class=Response,
            summary="Spectrogram of the upload where a track matched (PNG)",
            responses={**error_responses(404), 200: {"content": {"image/png": {}},
                                                     "description": "PNG image"}})
def get_spectrogram(decision_id: DecisionIdPath, track_id: Annotated[int, Path(ge=1, le=MAX_DB_INTEGER)],
                    service: ServiceDep, _: AnalystKey) -> Response:
    if service.db.get_decision(decision_id) is None:
        raise ApiError(404, "not_found", f"decision {decision_id} not found")
    found = service.db.decision_evidence(decision_id).get(track_id)
    if found is None or found.spectrogram_png is None:
        raise ApiError(404, "not_found", f"decision {decision_id} has no evidence for track {track_id}")
    return Response(found.spectrogram_png, media_type="image/png")


AUDIO_SOURCE_HEADER = "X-Refrain-Audio-Source"


@router.get("/{decision_id}/audio/{track_id}", response_class=Response,
            summary="Audio of the region where a track matched (WAV): the reference's, or the upload's resynthesised",
            responses={**error_responses(404), 200: {
                "content": {"audio/wav": {}},
                "description": "16-bit WAV. `X-Refrain-Audio-Source`: `recording` (the reference as kept) or "
                               "`resynthesised-peaks` (the upload's audio, or a work published from an upload, is "
                               "not kept: a sine burst per fingerprint peak)",
                "headers": {AUDIO_SOURCE_HEADER: {"schema": {"type": "string"}}}}})
def get_audio(decision_id: DecisionIdPath, track_id: Annotated[int, Path(ge=1, le=MAX_DB_INTEGER)],
              side: Annotated[Literal["reference", "upload"],
                              Query(description="`reference`: the work's recording over the aligned region; "
                                                "`upload`: the upload's region")],
              service: ServiceDep, _: AnalystKey) -> Response:
    """The region shown on the decision page (the strongest span, padded 1 s): the reference recording over the
    stretch aligned with it, or the upload's region rebuilt from its stored fingerprint peaks."""
    audio, source = service.evidence_audio(decision_id, track_id, side)
    return Response(audio, media_type="audio/wav", headers={AUDIO_SOURCE_HEADER: source})

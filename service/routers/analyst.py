"""The analyst page: server-rendered HTML (Jinja2, no JavaScript) over the same operations as the API.

Sign in with an analyst key (kept in an HttpOnly, SameSite=Strict cookie), then
work through the review queue (filtered, paged, exported as CSV) and the dispute
queue, upload a suspect file (an ad-hoc match, not stored) or open a stored
decision. A decision page shows the verdict, its history and disputes, each matched
work with its policy, the alignment plot (the chroma alignment for a cover), the
spectrograms of the matched region of the upload and of the reference side by side
with their axes, both playable, and forms to resolve the decision or its dispute.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import quote

import numpy as np
from fastapi import APIRouter, BackgroundTasks, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from refrain.service.core import MatchService, close_dispute, conflict_claims, resolve_decision, with_holds
from refrain.matcher import KINDS
from refrain.policy import DISPUTE_OUTCOMES, DISPUTE_REASONS, VERDICTS
from refrain.service.db import ApiKey
from refrain.service.deps import ServiceDep, authenticate, get_jobs
from refrain.service.errors import ApiError
from refrain.service.render import alignment_svg, chroma_svg, spectrogram_figure
from refrain.service.routers.matches import stored_decision
from refrain.service.routers.reviews import (MAX_EXPORT_DECISIONS, QueueFilters, export_csv, notify_resolution,
                                             queue_filters)
from refrain.service.routers.disputes import notify_dispute
from refrain.service.schemas import (MAX_DB_INTEGER, BoundedDatetime, DbId, DisputeReason, DisputeResolutionIn, Kind,
                                     ResolutionIn, Verdict)
from refrain.service.uploads import receive_form

router = APIRouter(prefix="/analyst", include_in_schema=False)

COOKIE = "refrain_analyst_key"
_templates = Environment(loader=FileSystemLoader(Path(__file__).resolve().parents[1] / "templates"),
                         autoescape=select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)


def _page(name: str, status_code: int = 200, headers: dict[str, str] | None = None, **context) -> HTMLResponse:
    return HTMLResponse(_templates.get_template(name).render(**context), status_code=status_code, headers=headers)


def _signed_in(request: Request, service: MatchService) -> ApiKey | None:
    try:
        return authenticate(service, request.cookies.get(COOKIE), ("analyst",))
    except ApiError:
        return None


def _sign_in_page(message: str | None = None, status: int = 200) -> HTMLResponse:
    return _page("signin.html", status, error=message)


def _works_view(body: dict, evidence: dict, service: MatchService) -> list[dict]:
    """Per matched work: the body's fields plus the evidence figures and, for a stored decision, the audio.

    The alignment plot and every count on the page come from the same stored points (a cover's
    are its agreeing chroma frames). A stored decision also gets the reference's spectrogram
    of the aligned region beside the upload's, the cover's chroma alignment, and the URLs of
    both regions' audio (the upload's resynthesised from its fingerprint peaks).
    """
    params = service.refrain.params
    views = []
    for work in body["works"]:
        found = evidence.get(work["track_id"])
        points = found.points if found is not None else []
        spans = [(s["query_start"], s["query_end"], s["ref_start"], s["ref_end"]) for s in work["spans"]]
        label = work["title"] or f"track {work['track_id']}"
        svg = alignment_svg(points, work["offset"], work["time_ratio"], spans,
                            f"Alignment of the upload with {label}")
        view = {**work, "n_points": len(points), "plot": Markup(svg), "upload_figure": None,
                "reference_figure": None, "reference_missing": None, "chroma": None, "audio": None}
        if found is not None and found.spectrogram_png:
            view["upload_start"], view["upload_end"] = found.spectrogram_start, found.spectrogram_end
            view["upload_figure"] = Markup(spectrogram_figure(
                found.spectrogram_png, found.spectrogram_start, found.spectrogram_end, params,
                f"Spectrogram of the upload, {found.spectrogram_start:g}–{found.spectrogram_end:g} s",
                f"upload-spectrogram-{work['track_id']}"))
        if body.get("stored") and body.get("decision_id"):
            regions = service.matched_regions(body["decision_id"], work["track_id"])
            view["regions"] = regions
            base = f"/analyst/decisions/{quote(body['decision_id'], safe='')}/audio/{work['track_id']}"
            view["audio"] = {"upload": f"{base}/upload.wav",
                             "reference": f"{base}/reference.wav" if regions.work is not None else None}
            try:
                if regions.work is None:
                    raise ApiError(404, "not_found", "no registered work: the service keeps no reference recording "
                                                     "for it")
                view["reference_figure"] = Markup(spectrogram_figure(
                    service.reference_spectrogram(regions), regions.ref_start, regions.ref_end, params,
                    f"Spectrogram of the reference, {regions.ref_start:g}–{regions.ref_end:g} s",
                    f"reference-spectrogram-{work['track_id']}"))
            except ApiError as err:
                view["reference_missing"], view["audio"]["reference"] = err.message, None
                views.append(view)
                continue
            if work["kind"] == "cover":
                alignment = service.cover_view(body["decision_id"], regions)
                if alignment is not None:
                    times, ref_times, upload, ref, agreement = alignment
                    view["chroma"] = Markup(chroma_svg(times, upload, ref, agreement,
                                                       f"Chroma alignment of the upload with {label}"))
                    if not len(points):  # a cover stored before its chroma frames were kept as its points
                        points = np.column_stack([times, ref_times])[agreement > 0]
                        view["n_points"] = len(points)
                        view["plot"] = Markup(alignment_svg(points, work["offset"], work["time_ratio"], spans,
                                                            f"Alignment of the upload with {label}"))
        views.append(view)
    return views


QUEUE_PAGE_SIZE = 25


class ReviewQueueQuery(BaseModel):
    """The analyst page's review queue filters, as its form sends them (empty fields left out)."""

    model_config = ConfigDict(extra="forbid")

    verdict: Verdict | Literal["any"] = "review"
    work_id: DbId | None = None
    uploader_id: str | None = Field(None, max_length=200)
    kind: Kind | None = None  # type: ignore[valid-type]
    since: BoundedDatetime | None = None
    until: BoundedDatetime | None = None
    offset: int = Field(0, ge=0, le=MAX_DB_INTEGER)
    dispute_reason: DisputeReason | None = None
    dispute_offset: int = Field(0, ge=0, le=MAX_DB_INTEGER)


def _validation_message(err: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(part) for part in e['loc']) or 'form'}: {e['msg']}" for e in err.errors())


def _queue_query(request: Request) -> tuple[ReviewQueueQuery, QueueFilters]:
    """The queue form's filters (empty fields ignored); ApiError 422 for a bad one."""
    try:
        query = ReviewQueueQuery(**{name: value for name, value in request.query_params.items() if value.strip()})
    except ValidationError as err:
        raise ApiError(422, "validation_error", _validation_message(err)) from None
    filters = queue_filters(verdict=None if query.verdict == "any" else query.verdict, work_id=query.work_id,
                            uploader_id=query.uploader_id, kind=query.kind, since=query.since, until=query.until)
    return query, filters


@router.get("", response_class=HTMLResponse)
def home(request: Request, service: ServiceDep) -> HTMLResponse:
    key = _signed_in(request, service)
    if key is None:
        return _sign_in_page()
    try:
        query, filters = _queue_query(request)
    except ApiError as err:
        return _page("error.html", err.status, err.headers, key=key, status=err.status, message=err.message)
    queue, queue_total = filters.query(service, QUEUE_PAGE_SIZE, query.offset)
    disputes, disputes_total = service.db.list_disputes("open", query.dispute_reason, None, None, None,
                                                        QUEUE_PAGE_SIZE, query.dispute_offset)
    recent, total = service.db.list_decisions(None, None, None, 20, 0)
    filter_params = {name: value for name, value in request.query_params.items()
                     if name not in ("offset", "dispute_offset") and value}
    return _page("home.html", key=key, recent=recent, total=total, queue=queue, queue_total=queue_total,
                 query=query, page_size=QUEUE_PAGE_SIZE, filter_params=filter_params,
                 verdicts=VERDICTS, kinds=KINDS, disputes=disputes, disputes_total=disputes_total,
                 dispute_reasons=DISPUTE_REASONS)


@router.get("/export")
def export(request: Request, service: ServiceDep) -> Response:
    """The queue's CSV export, with the page's filters (as ``GET /v1/reviews/export``)."""
    key = _signed_in(request, service)
    if key is None:
        return _sign_in_page("sign in with an analyst key first", 401)
    try:
        query, filters = _queue_query(request)
    except ApiError as err:
        return _page("error.html", err.status, err.headers, key=key, status=err.status, message=err.message)
    decisions, _ = filters.query(service, MAX_EXPORT_DECISIONS, query.offset)
    return Response(export_csv(decisions, conflict_claims(service.db.open_conflicts())),
                    media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": 'attachment; filename="refrain-decisions.csv"'})


@router.post("/signin")
async def sign_in(request: Request, service: ServiceDep) -> Response:
    form = await request.form(max_files=0, max_fields=4)
    key = str(form.get("key", "")).strip()
    try:
        authenticate(service, key, ("analyst",))
    except ApiError as err:
        return _sign_in_page(err.message, err.status)
    response = RedirectResponse("/analyst", status_code=303)
    response.set_cookie(COOKIE, key, httponly=True, samesite="strict", path="/analyst",
                        secure=service.settings.cookie_secure)
    return response


@router.post("/signout")
def sign_out() -> Response:
    response = RedirectResponse("/analyst", status_code=303)
    response.delete_cookie(COOKIE, path="/analyst")
    return response


@router.post("/match", response_class=HTMLResponse)
async def match(request: Request, service: ServiceDep) -> HTMLResponse:
    key = _signed_in(request, service)
    if key is None:
        return _sign_in_page("sign in with an analyst key first", 401)
    try:
        with service.admission.upload():
            form = await receive_form(request, service.settings.max_upload_bytes, service.settings.upload_dir)
            with form:
                outcome = await service.analyse(form, service.settings.max_upload_seconds, service.match_upload,
                                                form, key, False)
    except ApiError as err:
        return _page("error.html", err.status, err.headers, key=key, status=err.status, message=err.message)
    evidence = {e.track_id: e for e in outcome.evidence}
    body = with_holds(outcome.body, [])
    return _page("decision.html", key=key, decision=body, works=_works_view(body, evidence, service),
                 dispute_outcomes=DISPUTE_OUTCOMES)


@router.get("/decisions", response_class=HTMLResponse)
def open_decision(request: Request, decision_id: str = "") -> Response:
    """The 'open a decision' form's target: on to the decision's page."""
    decision_id = decision_id.strip()
    target = f"/analyst/decisions/{quote(decision_id, safe='')}" if decision_id else "/analyst"
    return RedirectResponse(target, status_code=303)


@router.get("/decisions/{decision_id}", response_class=HTMLResponse)
def show_decision(decision_id: str, request: Request, service: ServiceDep) -> HTMLResponse:
    key = _signed_in(request, service)
    if key is None:
        return _sign_in_page("sign in with an analyst key first", 401)
    try:
        detail = stored_decision(service, decision_id)
    except ApiError as err:
        return _page("error.html", err.status, err.headers, key=key, status=err.status, message=err.message)
    body = detail.model_dump(mode="json", by_alias=True)
    return _page("decision.html", key=key, decision=body,
                 works=_works_view(body, service.db.decision_evidence(decision_id), service),
                 dispute_outcomes=DISPUTE_OUTCOMES)


@router.get("/decisions/{decision_id}/audio/{track_id}/{side}.wav")
def audio(decision_id: str, track_id: int, side: Literal["reference", "upload"], request: Request,
          service: ServiceDep) -> Response:
    """The decision page's ``<audio>`` sources (as ``GET /v1/matches/{id}/audio/{track_id}``), for the
    signed-in analyst."""
    key = _signed_in(request, service)
    if key is None:
        return _sign_in_page("sign in with an analyst key first", 401)
    try:
        wav, source = service.evidence_audio(decision_id, track_id, side)
    except ApiError as err:
        return _page("error.html", err.status, err.headers, key=key, status=err.status, message=err.message)
    return Response(wav, media_type="audio/wav", headers={"X-Refrain-Audio-Source": source})


@router.post("/disputes/{dispute_id}/resolution", response_class=HTMLResponse)
async def resolve_dispute(dispute_id: str, request: Request, tasks: BackgroundTasks,
                          service: ServiceDep) -> Response:
    """The decision page's dispute form (``outcome``, ``note``): as ``POST /v1/disputes/{id}/resolution``
    (webhooks included), then back to the decision's page."""
    key = _signed_in(request, service)
    if key is None:
        return _sign_in_page("sign in with an analyst key first", 401)
    form = await request.form(max_files=0, max_fields=4)
    try:
        try:
            body = DisputeResolutionIn(outcome=str(form.get("outcome", "")), note=str(form.get("note", "")))
        except ValidationError as err:
            raise ApiError(422, "validation_error", _validation_message(err)) from None
        dispute = close_dispute(service.db, dispute_id, body.outcome, body.note, key.principal)
    except ApiError as err:
        return _page("error.html", err.status, err.headers, key=key, status=err.status, message=err.message)
    notify_dispute(tasks, service, get_jobs(request), "dispute.resolved", dispute)
    return RedirectResponse(f"/analyst/decisions/{quote(dispute.decision_id, safe='')}", status_code=303)


@router.post("/decisions/{decision_id}/resolution", response_class=HTMLResponse)
async def resolve(decision_id: str, request: Request, tasks: BackgroundTasks, service: ServiceDep) -> Response:
    """The decision page's resolution form (``resolution-<track id>`` per work, ``note``): as
    ``POST /v1/matches/{id}/resolution`` (webhooks included), then back to the decision's page."""
    key = _signed_in(request, service)
    if key is None:
        return _sign_in_page("sign in with an analyst key first", 401)
    form = await request.form(max_files=0, max_fields=101)
    choices = [{"track_id": name.removeprefix("resolution-"), "resolution": value}
               for name, value in form.items() if name.startswith("resolution-") and value]
    try:
        if not choices:
            raise ApiError(422, "validation_error", "choose confirm, allow or release for at least one work")
        try:
            body = ResolutionIn(works=choices, note=str(form.get("note", "")))
        except ValidationError as err:
            raise ApiError(422, "validation_error", _validation_message(err)) from None
        resolve_decision(service.db, decision_id, {w.track_id: w.resolution for w in body.works}, body.note,
                         key.principal)
    except ApiError as err:
        return _page("error.html", err.status, err.headers, key=key, status=err.status, message=err.message)
    notify_resolution(tasks, service, get_jobs(request), decision_id)
    return RedirectResponse(f"/analyst/decisions/{quote(decision_id, safe='')}", status_code=303)

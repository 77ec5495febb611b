"""Operations: liveness, readiness and the Prometheus metrics (`/metrics`, admin key)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, FastAPI, Request, Response, Security
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from refrain.service.core import MatchService
from refrain.service.deps import ServiceDep, api_key_scheme, authenticate
from refrain.service.routers import error_responses
from refrain.service.schemas import ErrorBody, Health, Readiness, ReadinessChecks

__all__ = ["router", "service_gauges"]

router = APIRouter(tags=["operations"])

_bearer = HTTPBearer(auto_error=False, scheme_name="AdminBearer",
                     description="An admin API key as a bearer token (what Prometheus' `authorization` sends)")


@router.get("/v1/health/live", response_model=Health, summary="Liveness (no key needed)")
@router.get("/v1/health", response_model=Health, summary="Liveness (alias of /v1/health/live)")
def live(service: ServiceDep) -> Health:
    """200 as soon as the process serves; the matcher may still be warming up (see `/v1/health/ready`)."""
    return Health(status="ok", tracks=service.track_count())


@router.get("/v1/health/ready", response_model=Readiness, summary="Readiness (no key needed)",
            responses={503: {"model": Readiness, "description": "Not ready: see `checks` and `detail`"}})
def ready(request: Request, service: ServiceDep):
    """200 once the index is open, both databases answer and the warm-up is done; 503 before (and if the
    warm-up failed: `detail` says why). Route uploads to the service only when it is ready."""
    checks = ReadinessChecks(index=service.refrain.store.directory.is_dir(), database=service.db.ping(),
                             jobs=request.app.state.jobs.store.ping(), warm_up=service.warmed.is_set())
    failing = [name for name, passed in checks.model_dump().items() if not passed]
    if not failing:
        return Readiness(status="ready", checks=checks)
    detail = service.warm_up_error or "not ready: " + ", ".join(failing)
    body = Readiness(status="not_ready", checks=checks, detail=detail)
    return JSONResponse(body.model_dump(), status_code=503)


@router.get("/metrics", response_class=Response, summary="Prometheus metrics (admin key)",
            responses={**error_responses(), 200: {"content": {CONTENT_TYPE_LATEST: {}},
                                                  "description": "Prometheus text format"},
                       401: {"model": ErrorBody, "description": "Missing, unknown or revoked API key"}})
def metrics(request: Request, service: ServiceDep, key: Annotated[str | None, Security(api_key_scheme)],
            bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]) -> Response:
    """The service's metrics in Prometheus' text format. Needs an admin key, in `X-API-Key` or as
    `Authorization: Bearer <key>`."""
    authenticate(service, key or (bearer.credentials if bearer else None), ("admin",))
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def service_gauges(app: FastAPI) -> dict:
    """The state gauges of :class:`service.observability.Metrics`, read at scrape time."""
    service: MatchService | None = getattr(app.state, "service", None)
    if service is None:
        return {}
    # No index lock here: the catalogue totals are one SQLite query, and a scrape must not wait
    # behind a long catalogue write.
    tracks, seconds, landmarks = service.refrain.store.catalog.totals()
    try:
        index_bytes = sum(service.refrain.store.size_bytes().values())
    except OSError:  # a file replaced while listed (a commit): reported at the next scrape
        index_bytes = None
    gauges = {
        "refrain_index_tracks": ("Matchable recordings in the index", {(): tracks}, ()),
        "refrain_index_audio_seconds": ("Seconds of audio in the index", {(): seconds}, ()),
        "refrain_index_landmarks": ("Landmarks in the index", {(): landmarks}, ()),
        "refrain_ready": ("1 once the warm-up is done", {(): float(service.warmed.is_set())}, ()),
    }
    if index_bytes is not None:
        gauges["refrain_index_bytes"] = ("Bytes of the index directory", {(): index_bytes}, ())
    jobs = getattr(app.state, "jobs", None)
    if jobs is not None:
        gauges["refrain_jobs"] = ("Asynchronous upload jobs by state (queued and running: the queue)",
                                  {(state,): count for state, count in jobs.store.counts().items()}, ("state",))
    return gauges

"""Asynchronous uploads: submitted with `POST /v1/matches?mode=async`, followed at `GET /v1/jobs/{job_id}`."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse
from fastapi.encoders import jsonable_encoder

from refrain.service.core import MatchService
from refrain.service.db import ApiKey
from refrain.service.deps import JobsDep, require_role
from refrain.service.errors import ApiError
from refrain.service.jobs import JobRunner
from refrain.service.routers import error_responses
from refrain.service.schemas import JobOut
from refrain.service.uploads import receive_form

__all__ = ["router", "submit_upload"]

router = APIRouter(prefix="/v1/jobs", tags=["matches"])


def _check_callback(url: str | None, service: MatchService) -> None:
    if url is None:
        return
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or len(url) > 2000:
        raise ApiError(422, "validation_error", f"callback_url must be an absolute http(s) URL, not {url[:200]!r}")
    if service.settings.webhook_secret is None:
        raise ApiError(422, "validation_error", "this service sends no webhooks (no webhook_secret is "
                                               "configured): leave out callback_url and poll the job")
    allowed = service.settings.callback_hosts
    if allowed and not any(_host_matches(parts.hostname, pattern) for pattern in allowed):
        raise ApiError(422, "validation_error", f"callback_url host {parts.hostname!r} is not one this service "
                                               f"calls back (callback_hosts: {', '.join(allowed)})")


def _host_matches(host: str, pattern: str) -> bool:
    """``host`` is ``pattern``, or lies under it when ``pattern`` starts with a dot (host names are caseless)."""
    host, pattern = host.lower().rstrip("."), pattern.lower().rstrip(".")
    if pattern.startswith("."):
        return host == pattern[1:] or host.endswith(pattern)
    return host == pattern


async def submit_upload(request: Request, service: MatchService, jobs: JobRunner, key: ApiKey,
                        callback_url: str | None) -> JSONResponse:
    """Receive an upload as a queued job: 202 with the job, ``Location`` pointing at it."""
    _check_callback(callback_url, service)
    form = await receive_form(request, service.settings.max_upload_bytes, temp_dir=service.settings.jobs_dir)
    with form:
        job = jobs.submit(form, key, request.state.request_id, callback_url)
    location = f"/v1/jobs/{job.job_id}"
    return JSONResponse(jsonable_encoder(JobOut(**job.to_out())), status_code=202, headers={"Location": location})


@router.get("/{job_id}", response_model=JobOut, summary="Follow an asynchronous upload",
            responses=error_responses(404))
def get_job(job_id: Annotated[str, Path(description="The job's id (`job_…`)", max_length=100)],
            jobs: JobsDep,
            key: Annotated[ApiKey, Depends(require_role("uploader", "analyst", "admin"))]) -> JobOut:
    """The job's state; once `succeeded`, its `decision_id` and `verdict` (the decision itself:
    `GET /v1/matches/{decision_id}`, analyst role); once `failed`, the error a synchronous upload
    would have got. An uploader key sees only the jobs it submitted."""
    job = jobs.store.get(job_id)
    if job is None or (key.role == "uploader" and job.key_prefix != key.prefix):
        raise ApiError(404, "not_found", f"job {job_id} not found")
    return JobOut(**job.to_out())

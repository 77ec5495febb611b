"""The FastAPI application: ``create_app(settings)``; ``refrain serve`` runs it under uvicorn."""

from __future__ import annotations

import logging
import threading
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from refrain import __version__
from refrain.cluster import ShardUnavailableError
from refrain.index import IndexBusyError
from refrain.service.core import MatchService
from refrain.service.db import DatabaseBusyError
from refrain.service.docs import add_offline_docs
from refrain.service.errors import ApiError
from refrain.service.jobs import JobRunner, JobStore
from refrain.service.limits import BodyTimeoutMiddleware, SecurityHeadersMiddleware
from refrain.service.observability import Metrics, ObservabilityMiddleware
from refrain.service.routers import (analyst, conflicts, disputes, exclusions, health, jobs, keys, licences, lineage,
                                    matches, principals, reviews, royalties, webhooks, works)
from refrain.service.schemas import ErrorBody, MatchUploadForm, WorkUploadForm
from refrain.service.settings import ServiceSettings
from refrain.service.webhooks import DeliveryLog
from refrain.tuning import tune_process

__all__ = ["create_app"]

log = logging.getLogger("refrain.service")

DESCRIPTION = """\
Rights-aware match service: catches copies and AI derivatives of protected music at upload,
applies each work's AI-use policy and the uploader's licences, and keeps every decision
with its evidence. Authenticate with an API key in the `X-API-Key` header.
Every error is a JSON `ErrorBody`. Guide: `docs/service.md`.
"""

_STATUS_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                 405: "method_not_allowed", 408: "request_timeout", 409: "conflict", 413: "payload_too_large",
                 415: "unsupported_media_type", 422: "validation_error", 503: "busy"}


def _error(status: int, code: str, message: str, details=None, headers=None) -> JSONResponse:
    body = ErrorBody(code=code, message=message, details=details).model_dump()
    return JSONResponse(body, status_code=status, headers=headers)


def _validation_message(errors: list[dict]) -> str:
    parts = []
    for error in errors:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "request"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def create_app(settings: ServiceSettings) -> FastAPI:
    """The service application; the index and database are opened at startup, closed at shutdown.

    Parameters
    ----------
    settings : ServiceSettings
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        tune_process()
        service = await run_in_threadpool(MatchService, settings)
        app.state.service = service
        # Warm up in the background: liveness answers at once, readiness once it is done.
        threading.Thread(target=service.warm_up, name="refrain-warm-up", daemon=True).start()
        job_store, deliveries = JobStore(settings.jobs_db_path), DeliveryLog(settings.jobs_db_path)
        app.state.jobs = JobRunner(service, job_store, deliveries, app.state.metrics)
        app.state.jobs.start()
        try:
            yield
        finally:
            await run_in_threadpool(app.state.jobs.stop)
            job_store.close()
            deliveries.close()
            await run_in_threadpool(service.close)

    app = FastAPI(title="Refrain match service", version=__version__, description=DESCRIPTION,
                  lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.add_middleware(BodyTimeoutMiddleware, idle=settings.body_idle_timeout, total=settings.body_timeout)
    app.add_middleware(SecurityHeadersMiddleware)
    add_offline_docs(app)
    app.state.metrics = Metrics(lambda: health.service_gauges(app))
    app.add_middleware(ObservabilityMiddleware, metrics=app.state.metrics)

    @app.exception_handler(DatabaseBusyError)
    async def database_busy(request: Request, err: DatabaseBusyError):
        log.warning("%s %s: %s", request.method, request.url.path, err)
        return _error(503, "busy", "the service database is locked by another process; nothing was changed, "
                      f"retry in {settings.retry_after_seconds} s",
                      headers={"Retry-After": str(settings.retry_after_seconds)})

    @app.exception_handler(IndexBusyError)
    async def index_busy(request: Request, err: IndexBusyError):
        # Raised before the write began: the index and the database are as they were.
        log.warning("%s %s: %s", request.method, request.url.path, err)
        return _error(503, "index_busy", f"{err}; nothing was changed, retry in {settings.retry_after_seconds} s",
                      headers={"Retry-After": str(settings.retry_after_seconds)})

    @app.exception_handler(ShardUnavailableError)
    async def shard_unavailable(request: Request, err: ShardUnavailableError):
        # Never a verdict from part of the catalogue: a `clear` could hide a match in the missing shard.
        log.warning("%s %s: %s", request.method, request.url.path, err)
        return _error(503, "catalogue_unavailable", f"{err}; nothing was decided, retry in "
                      f"{settings.retry_after_seconds} s", headers={"Retry-After": str(settings.retry_after_seconds)})

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError):
        return _error(err.status, err.code, err.message, details=err.details, headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError):
        details = jsonable_encoder(err.errors(), exclude={"input", "ctx", "url"})
        return _error(422, "validation_error", _validation_message(details), details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        code = _STATUS_CODES.get(err.status_code, "error")
        message = err.detail if isinstance(err.detail, str) else code
        if err.status_code == 404 and message == "Not Found":
            message = f"no such endpoint: {request.method} {request.url.path}"
        return _error(err.status_code, code, message, headers=getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, err: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error(500, "internal_error", "internal error; it was logged on the server")

    for module in (works, exclusions, conflicts, licences, matches, reviews, disputes, webhooks, jobs, keys,
                   principals, analyst, health, lineage, royalties):
        app.include_router(module.router)

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            # The streamed multipart bodies are parsed by hand (service.uploads), so FastAPI
            # cannot infer them: their schemas are added here and referenced by the routes.
            for model in (WorkUploadForm, MatchUploadForm):
                components[model.__name__] = model.model_json_schema(
                    ref_template="#/components/schemas/{model}")
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return app

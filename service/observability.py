"""What an operator sees of the service: Prometheus metrics, one JSON log line per request, request ids.

Every HTTP request gets a request id (the client's ``X-Request-ID`` if it is well
formed, else a new one). It is returned in the ``X-Request-ID`` header and in every
error body, and it names the request's log line. While a request (or an
asynchronous job) runs, the code it calls adds what it learns to the current
:class:`RequestRecord` — the principal, the decision id and verdict, the audio
seconds, the time spent in each stage and matcher tier — through :func:`annotate`
and :func:`stage`; nothing has to be passed down. When the request ends the
record becomes one JSON log line and the metrics' observations.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import sys
import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["REQUEST_ID_HEADER", "RequestRecord", "Metrics", "ObservabilityMiddleware", "JsonLogFormatter",
           "annotate", "stage", "tier_timings", "recording", "new_request_id", "configure_logging"]

REQUEST_ID_HEADER = "X-Request-ID"
# A client's id is kept only if it is short and plain, so it can go into logs and headers as it is.
_WELL_FORMED_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
# Uploads: the routes whose requests count as in flight (the async form too).
_UPLOAD_PATH = "/v1/matches"

access_log = logging.getLogger("refrain.access")
log = logging.getLogger("refrain.service")


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


@dataclass
class RequestRecord:
    """What one request (or job) did, filled in while it runs.

    Attributes
    ----------
    request_id : str
    fields : dict
        Named facts for the log line: ``principal``, ``role``, ``decision_id``,
        ``verdict``, ``job_id``, ``audio_seconds``, ``matched_kinds``.
    stages : dict of str to float
        Seconds spent per stage (``decode``, ``fingerprint``, ``match``, ``evidence``, ``store``).
    tiers : dict of str to float
        Seconds spent per matcher tier (``pair``, ``triplet``, ``peaks``, ``melody``), filled by
        :meth:`refrain.api.Refrain.match_with_evidence`.
    """

    request_id: str
    fields: dict = field(default_factory=dict)
    stages: dict[str, float] = field(default_factory=dict)
    tiers: dict[str, float] = field(default_factory=dict)


_current: ContextVar[RequestRecord | None] = ContextVar("refrain_request_record", default=None)


@contextmanager
def recording(request_id: str) -> Iterator[RequestRecord]:
    """Make a new record current for the ``with`` block (a request, or a job run off a request)."""
    record = RequestRecord(request_id)
    token = _current.set(record)
    try:
        yield record
    finally:
        _current.reset(token)


def annotate(**fields) -> None:
    """Add facts to the current request's log line (nothing happens outside a request or job)."""
    record = _current.get()
    if record is not None:
        record.fields.update(fields)


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Time the ``with`` block as the stage ``name`` of the current request (added up if repeated)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        add_stage_seconds(name, time.perf_counter() - started)


def add_stage_seconds(name: str, seconds: float) -> None:
    """Count ``seconds`` to the stage ``name`` of the current request: stages that interleave (a streamed
    upload is decoded, fingerprinted and matched window by window) are timed by their caller."""
    record = _current.get()
    if record is not None:
        record.stages[name] = record.stages.get(name, 0.0) + seconds


def tier_timings() -> dict[str, float] | None:
    """The current request's per-tier timing dict for ``match_with_evidence(stats=...)``, or None."""
    record = _current.get()
    return None if record is None else record.tiers


# -- metrics -------------------------------------------------------------------------------------

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    """The service's Prometheus metrics, in a registry of their own (one per application).

    Parameters
    ----------
    state : callable
        Returns the gauges read at scrape time, as ``{name: (help, {label tuple: value}, label names)}``;
        see :func:`service.app.create_app` (index size and tracks, jobs by state, readiness).
    """

    def __init__(self, state: Callable[[], dict]):
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.requests = Counter("refrain_http_requests", "HTTP requests by method, route template and status",
                                ["method", "route", "status"], registry=registry)
        self.request_seconds = Histogram("refrain_http_request_duration_seconds",
                                         "HTTP request latency by method and route template",
                                         ["method", "route"], buckets=_LATENCY_BUCKETS, registry=registry)
        self.upload_audio_seconds = Counter("refrain_upload_audio_seconds",
                                            "Seconds of uploaded audio analysed (sync and async uploads)",
                                            registry=registry)
        self.uploads = Counter("refrain_uploads", "Uploads analysed", registry=registry)
        self.stage_seconds = Histogram("refrain_stage_duration_seconds",
                                       "Time per stage of an upload (decode, fingerprint, match, evidence, store)",
                                       ["stage"], buckets=_LATENCY_BUCKETS, registry=registry)
        self.match_seconds = Histogram("refrain_match_duration_seconds",
                                       "Matcher latency per tier (pair, triplet, peaks, melody)",
                                       ["tier"], buckets=_LATENCY_BUCKETS, registry=registry)
        self.verdicts = Counter("refrain_verdicts", "Upload verdicts by kind", ["verdict"], registry=registry)
        self.matched_works = Counter("refrain_matched_works", "Works found in uploads, by kind of use",
                                     ["kind"], registry=registry)
        self.webhooks = Counter("refrain_webhook_deliveries", "Webhooks sent, by event and outcome (delivered, failed)",
                                ["event", "outcome"], registry=registry)
        self.uploads_in_flight = Gauge("refrain_uploads_in_flight",
                                       "Upload requests being received or analysed now", registry=registry)
        registry.register(_StateCollector(state))

    def observe_analysis(self, record: RequestRecord) -> None:
        """Count one analysed upload from its record (a request's, or an async job's)."""
        if "audio_seconds" not in record.fields:
            return
        self.uploads.inc()
        self.upload_audio_seconds.inc(record.fields["audio_seconds"])
        for name, seconds in record.stages.items():
            self.stage_seconds.labels(name).observe(seconds)
        for tier, seconds in record.tiers.items():
            self.match_seconds.labels(tier).observe(seconds)
        if "verdict" in record.fields:
            self.verdicts.labels(record.fields["verdict"]).inc()
        for kind in record.fields.get("matched_kinds", ()):
            self.matched_works.labels(kind).inc()


class _StateCollector:
    """Gauges read when Prometheus scrapes: the service's state, not events."""

    def __init__(self, state: Callable[[], dict]):
        self.state = state

    def describe(self):
        return []  # the families depend on the state; nothing to check at registration

    def collect(self):
        for name, (help_text, values, labels) in self.state().items():
            family = GaugeMetricFamily(name, help_text, labels=list(labels))
            for label_values, value in values.items():
                family.add_metric(list(label_values), value)
            yield family


# -- logs ----------------------------------------------------------------------------------------


class JsonLogFormatter(logging.Formatter):
    """One JSON object per log record: time, level, logger, message, process id, and the record's ``fields``.

    The process id tells the lines of ``refrain serve --workers N``'s processes apart.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
                 "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage(),
                 "pid": record.process}
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str, json_lines: bool) -> None:
    """Send the ``refrain`` and ``uvicorn`` loggers to stdout, as JSON lines or as plain text.

    uvicorn's own records (startup, shutdown, server errors) get the same format, so that
    every line of the service's output parses alike (run uvicorn with ``log_config=None``).
    """
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonLogFormatter() if json_lines else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s %(fields)s",
                                           defaults={"fields": ""}))
    for name in ("refrain", "uvicorn"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False


# -- the middleware ------------------------------------------------------------------------------


def _milliseconds(seconds: dict[str, float]) -> dict[str, float]:
    return {name: round(value * 1000.0, 2) for name, value in seconds.items()}


class ObservabilityMiddleware:
    """Request ids, the access log line and the request metrics around every HTTP request.

    A pure ASGI middleware (not ``BaseHTTPMiddleware``), so uploads keep streaming
    through it. Error responses (status >= 400 with a JSON :class:`ErrorBody`) get the
    request id added to their body; an exception no handler caught becomes a 500
    ``internal_error`` body carrying the request id, and is logged with it.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(REQUEST_ID_HEADER.lower().encode(), b"").decode("latin-1")
        request_id = given if _WELL_FORMED_ID.match(given) else new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        method, path = scope["method"], scope["path"]
        is_upload = method == "POST" and path.startswith(_UPLOAD_PATH)
        response = {"status": 500, "started": False}
        held: dict = {}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                response["status"], response["started"] = message["status"], True
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
                content_type = MutableHeaders(scope=message).get("content-type", "")
                if message["status"] >= 400 and content_type.startswith("application/json"):
                    held["start"], held["body"] = message, []
                    return
            elif message["type"] == "http.response.body" and held:
                held["body"].append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                body = _with_request_id(b"".join(held["body"]), request_id)
                MutableHeaders(scope=held["start"])["content-length"] = str(len(body))
                await send(held.pop("start"))
                held.clear()
                message = {"type": "http.response.body", "body": body}
            await send(message)

        started = time.perf_counter()
        if is_upload:
            self.metrics.uploads_in_flight.inc()
        with recording(request_id) as record:
            try:
                await self.app(scope, receive, send_with_id)
            except Exception:
                log.exception("unhandled error on %s %s", method, path, extra={"fields": {"request_id": request_id}})
                if response["started"]:
                    raise
                await _internal_error(send, request_id)
                response["status"] = 500
            finally:
                if is_upload:
                    self.metrics.uploads_in_flight.dec()
                self._finish(scope, record, response["status"], time.perf_counter() - started)

    def _finish(self, scope: Scope, record: RequestRecord, status: int, seconds: float) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        method = scope["method"]
        self.metrics.requests.labels(method, template, str(status)).inc()
        self.metrics.request_seconds.labels(method, template).observe(seconds)
        self.metrics.observe_analysis(record)
        fields = {"request_id": record.request_id, "method": method, "route": template, "path": scope["path"],
                  "status": status, "duration_ms": round(seconds * 1000.0, 2), **record.fields}
        fields.pop("matched_kinds", None)
        if record.stages:
            fields["stages_ms"] = _milliseconds(record.stages)
        if record.tiers:
            fields["tiers_ms"] = _milliseconds(record.tiers)
        access_log.info("%s %s %s", method, template, status, extra={"fields": fields})


def _with_request_id(body: bytes, request_id: str) -> bytes:
    try:
        parsed = json.loads(body)
    except ValueError:
        return body
    if isinstance(parsed, dict) and "code" in parsed and "message" in parsed:
        parsed["request_id"] = request_id
        return json.dumps(parsed).encode()
    return body


async def _internal_error(send: Send, request_id: str) -> None:
    body = json.dumps({"code": "internal_error", "message": "internal error; it was logged on the server",
                       "details": None, "request_id": request_id}).encode()
    await send({"type": "http.response.start", "status": 500,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (REQUEST_ID_HEADER.lower().encode(), request_id.encode())]})
    await send({"type": "http.response.body", "body": body})

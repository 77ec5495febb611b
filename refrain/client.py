"""A typed Python client of the match service's HTTP API, for upload pipelines and admin scripts.

Every answer is parsed into the service's own pydantic schemas
(:mod:`refrain.service.schemas`), and every error answer raises
:class:`RefrainError` with the service's stable ``code`` and the ``request_id`` to quote.

Examples
--------
>>> from refrain.client import RefrainClient                          # doctest: +SKIP
>>> with RefrainClient("http://127.0.0.1:8000", api_key="rk_...") as client:
...     decision = client.upload("upload.mp3", uploader_id="user-42")
...     print(decision.verdict)
...     job = client.wait(client.submit("long-mix.flac").job_id)     # asynchronous upload
...     print(job.state, job.verdict)
"""

from __future__ import annotations

import os
import time
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Iterable, TypeVar

import httpx
from pydantic import BaseModel

from refrain.service.schemas import (DecisionDetail, DecisionList, DecisionOut, Health, JobOut, LicenceList,
                                     LicenceOut, PolicyOut, Readiness, Use, Verdict, WorkList, WorkOut)

__all__ = ["RefrainClient", "RefrainError", "AudioSource"]

#: A file to upload: a path, the bytes themselves, or an open binary file.
AudioSource = str | os.PathLike | bytes | BinaryIO

Model = TypeVar("Model", bound=BaseModel)


class RefrainError(Exception):
    """An error answer of the service.

    Attributes
    ----------
    status : int
        HTTP status.
    code : str
        The service's stable error code (``not_found``, ``payload_too_large``, ...).
    message : str
    request_id : str or None
        The request's id: quote it when reporting a problem (it names the server's log line).
    details : list of dict or None
        Per-field problems of a 422.
    """

    def __init__(self, status: int, code: str, message: str, request_id: str | None, details: list | None):
        super().__init__(f"{status} {code}: {message} (request {request_id})")
        self.status, self.code, self.message = status, code, message
        self.request_id, self.details = request_id, details


class RefrainClient:
    """The match service at ``base_url``, used with one API key.

    Parameters
    ----------
    base_url : str
        E.g. ``http://127.0.0.1:8000``.
    api_key : str, optional
        Sent as ``X-API-Key``; its role decides which calls are allowed.
    timeout : float
        Seconds allowed per request (default 120: a 20-minute upload takes ~20 s to match).
    transport : httpx.BaseTransport, optional
        For tests or custom networking.
    """

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float = 120.0,
                 transport: httpx.BaseTransport | None = None):
        headers = {"X-API-Key": api_key} if api_key else {}
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "RefrainClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- plumbing ------------------------------------------------------------------------------

    def _send(self, method: str, url: str, ok: tuple[int, ...] = (200,), **options) -> httpx.Response:
        response = self._http.request(method, url, **options)
        if response.status_code not in ok:
            try:
                body = response.json()
                code, message, details = body["code"], body["message"], body.get("details")
            except (ValueError, KeyError, TypeError):
                code, message, details = "http_error", response.text[:500] or response.reason_phrase, None
            raise RefrainError(response.status_code, code, message, response.headers.get("X-Request-ID"), details)
        return response

    def _get(self, model: type[Model], url: str, **options) -> Model:
        return model.model_validate(self._send("GET", url, **options).json())

    @staticmethod
    def _params(**values) -> dict:
        return {name: value.isoformat() if isinstance(value, datetime) else value
                for name, value in values.items() if value is not None}

    def _post_file(self, url: str, source: AudioSource, filename: str | None, data: dict, params: dict | None,
                   ok: tuple[int, ...]) -> httpx.Response:
        with ExitStack() as stack:
            if isinstance(source, (str, os.PathLike)):
                name, handle = Path(source).name, stack.enter_context(open(source, "rb"))
            elif isinstance(source, bytes):
                name, handle = "upload", source
            else:
                name, handle = Path(getattr(source, "name", "upload")).name, source
            return self._send("POST", url, ok=ok, params=params,
                              files={"file": (filename or name, handle, "application/octet-stream")},
                              data={k: v for k, v in data.items() if v is not None})

    # -- health --------------------------------------------------------------------------------

    def live(self) -> Health:
        """Liveness (``GET /v1/health/live``)."""
        return self._get(Health, "/v1/health/live")

    def ready(self) -> Readiness:
        """Readiness (``GET /v1/health/ready``): also returned, not raised, when not ready (503)."""
        return Readiness.model_validate(self._send("GET", "/v1/health/ready", ok=(200, 503)).json())

    # -- uploads (uploader key) ----------------------------------------------------------------

    def upload(self, source: AudioSource, *, uploader_id: str | None = None, licence_ids: Iterable[str] = (),
               filename: str | None = None) -> DecisionOut:
        """Check an upload and wait for its stored decision (``POST /v1/matches``)."""
        answer = self._post_file("/v1/matches", source, filename,
                                 {"uploader_id": uploader_id, "licence_id": list(licence_ids)}, None, (200,))
        return DecisionOut.model_validate(answer.json())

    def submit(self, source: AudioSource, *, uploader_id: str | None = None, licence_ids: Iterable[str] = (),
               callback_url: str | None = None, filename: str | None = None) -> JobOut:
        """Queue an upload as a job (``POST /v1/matches?mode=async``); follow it with :meth:`job` or :meth:`wait`."""
        answer = self._post_file("/v1/matches", source, filename,
                                 {"uploader_id": uploader_id, "licence_id": list(licence_ids)},
                                 self._params(mode="async", callback_url=callback_url), (202,))
        return JobOut.model_validate(answer.json())

    def job(self, job_id: str) -> JobOut:
        """An asynchronous upload's state (``GET /v1/jobs/{job_id}``)."""
        return self._get(JobOut, f"/v1/jobs/{job_id}")

    def wait(self, job_id: str, *, timeout: float = 600.0, interval: float = 0.5) -> JobOut:
        """Poll a job until it has succeeded or failed.

        Raises
        ------
        TimeoutError
            If it has not finished after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job.state in ("succeeded", "failed"):
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {job.state} after {timeout:g} s")
            time.sleep(interval)

    # -- decisions (analyst key) ---------------------------------------------------------------

    def adhoc(self, source: AudioSource, *, uploader_id: str | None = None, licence_ids: Iterable[str] = (),
              filename: str | None = None) -> DecisionOut:
        """Analyse a suspect file without storing a decision (``POST /v1/matches/adhoc``)."""
        answer = self._post_file("/v1/matches/adhoc", source, filename,
                                 {"uploader_id": uploader_id, "licence_id": list(licence_ids)}, None, (200,))
        return DecisionOut.model_validate(answer.json())

    def decisions(self, *, work_id: int | None = None, verdict: Verdict | None = None,
                  since: datetime | None = None, limit: int = 50, offset: int = 0) -> DecisionList:
        """Stored decisions, newest first (``GET /v1/matches``)."""
        return self._get(DecisionList, "/v1/matches", params=self._params(
            work_id=work_id, verdict=verdict, since=since, limit=limit, offset=offset))

    def decision(self, decision_id: str) -> DecisionDetail:
        """A stored decision with its evidence and history (``GET /v1/matches/{decision_id}``)."""
        return self._get(DecisionDetail, f"/v1/matches/{decision_id}")

    # -- works and policies (admin key) --------------------------------------------------------

    def add_work(self, source: AudioSource, *, title: str, artists: Iterable[str], rights_holder: str,
                 isrc: str | None = None, filename: str | None = None) -> WorkOut:
        """Upload a reference recording as a new work (``POST /v1/works``)."""
        answer = self._post_file("/v1/works", source, filename, {"title": title, "artists": list(artists),
                                                                 "rights_holder": rights_holder, "isrc": isrc},
                                 None, (201,))
        return WorkOut.model_validate(answer.json())

    def works(self, *, limit: int = 50, offset: int = 0) -> WorkList:
        return self._get(WorkList, "/v1/works", params={"limit": limit, "offset": offset})

    def work(self, work_id: int) -> WorkOut:
        return self._get(WorkOut, f"/v1/works/{work_id}")

    def delete_work(self, work_id: int) -> None:
        """Remove a work from the index and the catalogue (its decisions stay)."""
        self._send("DELETE", f"/v1/works/{work_id}", ok=(204,))

    def policy(self, work_id: int) -> PolicyOut:
        return self._get(PolicyOut, f"/v1/works/{work_id}/policy")

    def set_policy(self, work_id: int, *, copy: str, remix: str, cover: str, royalty_share: float) -> PolicyOut:
        """Replace a work's AI-use policy (actions: ``deny``, ``allow``, ``licence_required``)."""
        body = {"copy": copy, "remix": remix, "cover": cover, "royalty_share": royalty_share}
        return PolicyOut.model_validate(self._send("PUT", f"/v1/works/{work_id}/policy", json=body).json())

    # -- licences (admin key) ------------------------------------------------------------------

    def grant_licence(self, work_id: int, licensee: str, uses: Iterable[Use],
                      valid_until: datetime | None = None) -> LicenceOut:
        body = {"work_id": work_id, "licensee": licensee, "uses": list(uses),
                "valid_until": valid_until.isoformat() if valid_until else None}
        return LicenceOut.model_validate(self._send("POST", "/v1/licences", ok=(201,), json=body).json())

    def licences(self, *, work_id: int | None = None, licensee: str | None = None, limit: int = 50,
                 offset: int = 0) -> LicenceList:
        return self._get(LicenceList, "/v1/licences", params=self._params(
            work_id=work_id, licensee=licensee, limit=limit, offset=offset))

    def licence(self, licence_id: str) -> LicenceOut:
        return self._get(LicenceOut, f"/v1/licences/{licence_id}")

    def revoke_licence(self, licence_id: str) -> LicenceOut:
        return LicenceOut.model_validate(self._send("DELETE", f"/v1/licences/{licence_id}").json())

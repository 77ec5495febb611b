"""The service's one settings object; every field can be set by an env var ``REFRAIN_<NAME>``."""

from __future__ import annotations

from pathlib import Path

from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from refrain.policy import DEFAULT_REVIEW_CONFIDENCE

__all__ = ["ServiceSettings"]

MB = 1_000_000


class ServiceSettings(BaseSettings):
    """Settings of the match service, with their documented defaults.

    Attributes
    ----------
    index_dir : Path
        The Refrain index directory (the same one ``refrain ingest`` uses). Created if
        missing. The service matches on it read-only and takes its write lock for each
        write alone, so several service processes (``refrain serve --workers N``) and the
        CLI can share it (:mod:`service.access`). With ``cluster``, the cluster directory
        instead (``refrain cluster up``; ``refrain serve --cluster DIR``).
    cluster : bool
        Serve the cluster of shards in ``index_dir`` through its Dask scheduler (default
        False: one index directory). See docs/cluster.md.
    shard_deadline_seconds : float
        With ``cluster``: longest wait for every shard's answer to one upload (default
        10 s); a shard that misses it makes the upload fail with 503
        ``catalogue_unavailable``, never a verdict from part of the catalogue. Also the
        longest wait for the cluster's write lock.
    index_write_deadline_seconds : float
        Longest wait of a catalogue write (a new work, a takedown, a published derivative)
        for the index's write lock while another process writes (default 30 s); then 503
        ``index_busy`` with ``Retry-After``, and nothing was changed.
    db_path : Path or None
        The service's SQLite database (works, policies, licences, API keys,
        decisions). Default: ``<index_dir>.service.sqlite`` beside the index directory
        (not inside it: the index directory belongs to the index store).
    works_dir : Path or None
        Where uploaded reference recordings are kept (the catalogue's source files).
        Default: ``<index_dir>.works/``.
    max_upload_bytes : int
        Largest accepted upload, file part of the form (default 200 MB). A bigger
        upload is refused with 413 while it streams in.
    max_upload_seconds : float
        Longest accepted upload to match (default 1200 s = 20 min) → 413.
    max_reference_seconds : float
        Longest accepted reference recording (default 6 h, as ``refrain ingest``).
    review_confidence : float
        A match whose confidence is below this (default
        :data:`policy.DEFAULT_REVIEW_CONFIDENCE`, 1 - 1e-6: a chance above one in a million
        that unrelated music matches this well) is weak evidence: if the policy would
        block it, the verdict is ``review`` instead.
    spectrogram_max_seconds : float
        Longest stretch of an upload stored as a spectrogram image per matched work
        (default 30 s).
    host, port : str, int
        Where ``refrain serve`` listens (default 127.0.0.1:8000).
    cookie_secure : bool
        Mark the analyst page's sign-in cookie ``Secure`` (default False; set True
        behind HTTPS).
    match_covers : bool
        Also search the melody tier for covers (default True: it reports 95 % of the
        benchmark's covers, with no false cover on same-style or real music, see
        docs/benchmarks.md#covers); a cover's verdict follows the work's ``covers`` policy. False
        leaves only the landmark tiers (faster for uploads of 16 s or more).
    upload_dir : Path or None
        Where uploads are spooled while they stream in and are analysed. Default:
        ``<index_dir>.uploads/``. It belongs to the service: every file in it is deleted
        at startup (leftovers of a killed process).
    header_timeout : float
        Longest time for a request's headers to arrive, on a new connection or after a
        response (default 10 s); then the connection is closed.
    body_idle_timeout : float
        Longest wait for the next chunk of a request body (default 20 s); then 408 and
        the connection is closed. Stalled uploads do not hold a connection longer.
    body_timeout : float
        Longest time to receive a whole request body (default 900 s: 200 MB at 2 Mbit/s);
        then 408 and the connection is closed.
    keep_alive_timeout : float
        An idle keep-alive connection is closed after this (default 5 s; uvicorn's
        ``timeout_keep_alive``).
    max_connections : int
        Concurrent connections and requests uvicorn accepts (default 1000, uvicorn's
        ``limit_concurrency``); past it a new request gets 503 at once. Keep it under the
        process's open-file limit (``ulimit -n``) less the index's files.
    max_inflight_uploads : int
        Uploads (``POST /v1/matches``, ``/v1/matches/adhoc``, ``/v1/works``, the analyst
        page's check) receiving or being analysed at once (default 512); past it 503 with
        ``Retry-After`` before the body is read.
    analysis_budget_seconds : float
        Seconds of audio being decoded and analysed at once, across all uploads (default
        2400 s: two 20-minute uploads). An upload that would go over it gets 503 with
        ``Retry-After``; a longer reference recording waits for the whole budget. This is
        what bounds memory: see docs/service.md "Limits" for the RSS it implies.
    analysis_threads : int
        Threads that decode and match uploads (default 4): their own pool, so that
        health checks and other requests never queue behind matching.
    retry_after_seconds : int
        The ``Retry-After`` sent with a 503 (default 10 s).
    db_busy_timeout : float
        How long a request waits for the database when another process holds it locked
        (default 10 s); then 503 with ``Retry-After``, and nothing is changed.
    spectrogram_retention_days : float
        Stored decisions keep their spectrogram images this long (default 30 days; the
        aligned points are kept for ever). Older images are dropped at startup and hourly.
    startup_repairs : bool
        Repair at startup what an interrupted registration or deletion left, and empty
        ``upload_dir`` (:meth:`service.core.MatchService.reconcile`; default True).
        ``refrain serve --workers N`` runs the repairs once before it starts its workers
        and turns them off in each: a worker started again beside live ones must not undo
        their registrations in progress or delete the uploads they are reading.
    log_format : {"json", "text"}
        ``refrain serve`` logs one JSON object per line (default), or plain text.
    log_level : str
        Level of the ``refrain`` loggers under ``refrain serve`` (default ``info``).
    jobs_db_path : Path or None
        Asynchronous upload jobs and the webhook delivery log (SQLite). Default:
        ``<index_dir>.jobs.sqlite``.
    jobs_dir : Path or None
        Where asynchronous uploads wait for their job. Default: ``<index_dir>.jobs/``.
    job_workers : int
        Threads running asynchronous upload jobs (default 1).
    webhook_secret : str or None
        Key of the HMAC-SHA256 signature of every webhook (``X-Refrain-Signature``);
        without one, uploads asking for a ``callback_url`` are refused (422).
    callback_hosts : list of str
        Hosts a job's ``callback_url`` may name: a host name, or ``.example.com`` for that
        domain and every name under it (``REFRAIN_CALLBACK_HOSTS='["hooks.example.com"]'``).
        Empty (the default): any host. An uploader key chooses the URL the service then
        POSTs to from inside the platform's network; set this so that it can only be the
        upload pipeline's own receivers.
    webhook_attempts : int
        Deliveries tried before a webhook is given up (default 5).
    webhook_backoff_seconds : float
        Wait before the second attempt, doubled for each next one (default 1 s).
    webhook_timeout_seconds : float
        Time allowed for one delivery attempt (default 10 s).
    """

    model_config = SettingsConfigDict(env_prefix="REFRAIN_", extra="forbid")

    index_dir: Path
    cluster: bool = False
    shard_deadline_seconds: float = Field(10.0, gt=0)
    index_write_deadline_seconds: float = Field(30.0, gt=0)
    db_path: Path | None = None
    works_dir: Path | None = None
    max_upload_bytes: int = Field(200 * MB, gt=0)
    max_upload_seconds: float = Field(1200.0, gt=0)
    max_reference_seconds: float = Field(6 * 3600.0, gt=0)
    review_confidence: float = Field(DEFAULT_REVIEW_CONFIDENCE, ge=0.0, le=1.0)
    spectrogram_max_seconds: float = Field(30.0, gt=0)
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    cookie_secure: bool = False
    match_covers: bool = True
    upload_dir: Path | None = None
    header_timeout: float = Field(10.0, gt=0)
    body_idle_timeout: float = Field(20.0, gt=0)
    body_timeout: float = Field(900.0, gt=0)
    keep_alive_timeout: float = Field(5.0, gt=0)
    max_connections: int = Field(1000, ge=1)
    max_inflight_uploads: int = Field(512, ge=1)
    analysis_budget_seconds: float = Field(2400.0, gt=0)
    analysis_threads: int = Field(4, ge=1)
    retry_after_seconds: int = Field(10, ge=1)
    db_busy_timeout: float = Field(10.0, gt=0)
    spectrogram_retention_days: float = Field(30.0, ge=0)
    startup_repairs: bool = True
    log_format: Literal["json", "text"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    jobs_db_path: Path | None = None
    jobs_dir: Path | None = None
    job_workers: int = Field(1, ge=1, le=64)
    webhook_secret: SecretStr | None = None
    callback_hosts: list[str] = Field(default_factory=list)
    webhook_attempts: int = Field(5, ge=1, le=20)
    webhook_backoff_seconds: float = Field(1.0, ge=0)
    webhook_timeout_seconds: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _default_paths(self) -> "ServiceSettings":
        # Beside the index directory, never inside it: `IndexStore` owns that folder.
        base = self.index_dir.resolve()
        if self.db_path is None:
            self.db_path = base.with_name(base.name + ".service.sqlite")
        if self.works_dir is None:
            self.works_dir = base.with_name(base.name + ".works")
        if self.upload_dir is None:
            self.upload_dir = base.with_name(base.name + ".uploads")
        # Absolute: the startup reconciliation compares the index's track sources with them.
        self.works_dir, self.upload_dir = self.works_dir.resolve(), self.upload_dir.resolve()
        if self.analysis_budget_seconds < self.max_upload_seconds:
            raise ValueError(f"analysis_budget_seconds ({self.analysis_budget_seconds:g}) must be at least "
                             f"max_upload_seconds ({self.max_upload_seconds:g}), or the longest uploads "
                             "could never be analysed")
        if self.jobs_db_path is None:
            self.jobs_db_path = base.with_name(base.name + ".jobs.sqlite")
        if self.jobs_dir is None:
            self.jobs_dir = base.with_name(base.name + ".jobs")
        return self

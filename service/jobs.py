"""Asynchronous uploads: ``POST /v1/matches?mode=async`` stores the upload as a job and answers 202 at once.

A job's upload waits in ``jobs_dir`` and its record in the jobs database
(``jobs_db_path``) until a worker thread has matched it exactly as a synchronous
upload is matched (:meth:`service.core.MatchService.match_upload`, decision
stored). Jobs outlive the process: at startup every job still ``queued`` or
``running`` (the service stopped under it) is queued again, so an upload accepted
with 202 is decided — and only once: the decision is stored under an id derived
from the job's, so a job interrupted after storing it is not decided twice. When a
job ends, its ``callback_url`` (if any) receives a signed ``match.completed`` or
``match.failed`` webhook (:mod:`service.webhooks`); one a stop prevented is sent at
the next start.

Several service processes share one jobs database (``refrain serve --workers N``), so
a job's remaining work (deciding it, then its webhook) is *claimed* before it is done:
the claim records the runner (host, process, its start time, the runner object) in
one conditional update, taken only if the job's previous runner is none or no longer
alive. Every process resumes the unfinished jobs at its start, and a replaced process
resumes those of the one that died, but each job is run by one runner at a time and
each step happens once. The database belongs to the processes of one machine: a runner
recorded under another host name (a container started again) is taken as gone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import secrets
import socket
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from refrain.cluster import ShardUnavailableError
from refrain.service.core import MatchService
from refrain.service.db import ApiKey
from refrain.service.errors import ApiError
from refrain.service.observability import Metrics, annotate, recording
from refrain.service.uploads import ReceivedForm
from refrain.service.webhooks import Delivery, DeliveryLog, deliver

__all__ = ["Job", "JobStore", "JobRunner", "JOB_STATES"]

JOB_STATES = ("queued", "running", "succeeded", "failed")

log = logging.getLogger("refrain.service")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id        TEXT PRIMARY KEY,
    state         TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed')),
    created_at    TEXT NOT NULL,
    started_at    TEXT,
    finished_at   TEXT,
    request_id    TEXT NOT NULL,          -- of the request that made the job: its log lines share it
    key_prefix    TEXT NOT NULL,
    filename      TEXT NOT NULL,
    file_path     TEXT NOT NULL,          -- the upload, removed when the job ends
    file_bytes    INTEGER NOT NULL,
    fields        TEXT NOT NULL,          -- JSON: the form's text fields (uploader_id, licence_id)
    callback_url  TEXT,
    decision_id   TEXT,
    verdict       TEXT,
    error         TEXT,                   -- JSON {status, code, message} of a failed job
    webhook       TEXT,                   -- JSON Delivery of the completion webhook
    runner        TEXT                    -- who claimed the job's remaining work (see the module docstring)
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, created_at);
"""


def _process_started(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, Linux), "" where unknown; None if there is none.

    With the pid it names one process: a pid reused by a later process has another start time.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[19].decode()  # field 22, counted after the name
    except FileNotFoundError:
        return None if os.path.isdir("/proc") else _signalled(pid)
    except (OSError, IndexError):
        return ""


def _signalled(pid: int) -> str | None:
    """:func:`_process_started` where there is no ``/proc``: "" for a live process, its start unknown."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return ""


def runner_alive(runner: str) -> bool:
    """Whether the runner recorded as ``runner`` (:attr:`JobRunner.runner`) may still be running."""
    host, pid, started, _ = runner.split("/", 3)
    if host != socket.gethostname():
        return False
    now = _process_started(int(pid))
    return now is not None and (now == started or "" in (now, started))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _parse(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


@dataclass(frozen=True)
class Job:
    """An asynchronous upload and what became of it (see :class:`service.schemas.JobOut`)."""

    job_id: str
    state: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    request_id: str
    key_prefix: str
    filename: str
    file_path: str
    file_bytes: int
    fields: dict[str, list[str]]
    callback_url: str | None
    decision_id: str | None
    verdict: str | None
    error: dict | None
    webhook: dict | None

    def to_out(self) -> dict:
        """The fields of :class:`service.schemas.JobOut`."""
        return {"job_id": self.job_id, "state": self.state, "created_at": self.created_at,
                "started_at": self.started_at, "finished_at": self.finished_at, "filename": self.filename,
                "decision_id": self.decision_id, "verdict": self.verdict, "error": self.error,
                "callback_url": self.callback_url, "webhook": self.webhook}


class JobStore:
    """The jobs table in the SQLite database at ``path`` (created on open)."""

    def __init__(self, path: Path):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        if "runner" not in columns:  # a jobs database from before claims
            try:
                self._db.execute("ALTER TABLE jobs ADD COLUMN runner TEXT")
            except sqlite3.OperationalError:  # another process added it first
                pass

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def ping(self) -> bool:
        """Whether the database answers."""
        try:
            with self._lock:
                self._db.execute("SELECT 1").fetchone()
        except sqlite3.Error:
            return False
        return True

    def _execute(self, sql: str, params=()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    @staticmethod
    def _job(row: sqlite3.Row) -> Job:
        return Job(job_id=row["job_id"], state=row["state"], created_at=_parse(row["created_at"]),
                   started_at=_parse(row["started_at"]), finished_at=_parse(row["finished_at"]),
                   request_id=row["request_id"], key_prefix=row["key_prefix"], filename=row["filename"],
                   file_path=row["file_path"], file_bytes=row["file_bytes"], fields=json.loads(row["fields"]),
                   callback_url=row["callback_url"], decision_id=row["decision_id"], verdict=row["verdict"],
                   error=json.loads(row["error"]) if row["error"] else None,
                   webhook=json.loads(row["webhook"]) if row["webhook"] else None)

    def add(self, job_id: str, request_id: str, key_prefix: str, filename: str, file_path: Path,
            file_bytes: int, fields: dict[str, list[str]], callback_url: str | None) -> Job:
        self._execute("INSERT INTO jobs (job_id, state, created_at, request_id, key_prefix, filename, file_path,"
                      " file_bytes, fields, callback_url) VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?)",
                      (job_id, _now(), request_id, key_prefix, filename, str(file_path), file_bytes,
                       json.dumps(fields), callback_url))
        return self.get(job_id)

    def get(self, job_id: str) -> Job | None:
        rows = self._execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,))
        return self._job(rows[0]) if rows else None

    def unfinished(self) -> list[str]:
        """Ids of the jobs queued or running (interrupted by a stop), or ended with their webhook not yet
        tried, oldest first."""
        return [row[0] for row in self._execute(
            "SELECT job_id FROM jobs WHERE state IN ('queued', 'running')"
            " OR (callback_url IS NOT NULL AND webhook IS NULL) ORDER BY created_at, job_id")]

    def counts(self) -> dict[str, int]:
        """Jobs per state (every state present, 0 if none)."""
        counts = dict.fromkeys(JOB_STATES, 0)
        counts.update({row[0]: row[1] for row in self._execute("SELECT state, COUNT(*) FROM jobs GROUP BY state")})
        return counts

    def claim(self, job_id: str, runner: str) -> Job | None:
        """Make ``runner`` the one that does the job's remaining work; the job, or None if another has it.

        The claim is taken when no runner has the job, or when its runner is no longer alive
        (:func:`runner_alive`); the update is conditional on the runner read, so of two
        runners claiming at once one gets the job.
        """
        rows = self._execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,))
        if not rows:
            return None
        job, current = self._job(rows[0]), rows[0]["runner"]
        if current == runner:
            return job
        if current is not None and runner_alive(current):
            return None
        with self._lock:
            taken = self._db.execute("UPDATE jobs SET runner = ? WHERE job_id = ? AND runner IS ?",
                                     (runner, job_id, current)).rowcount
        # Only the runner holding a job changes it: as read, unless another took it first.
        return job if taken else None

    def release(self, runner: str) -> None:
        """Let other runners claim the jobs ``runner`` has (it stopped with none of them running)."""
        self._execute("UPDATE jobs SET runner = NULL WHERE runner = ?", (runner,))

    def start(self, job_id: str) -> None:
        self._execute("UPDATE jobs SET state = 'running', started_at = ? WHERE job_id = ?", (_now(), job_id))

    def succeed(self, job_id: str, decision_id: str, verdict: str) -> None:
        self._execute("UPDATE jobs SET state = 'succeeded', finished_at = ?, decision_id = ?, verdict = ?"
                      " WHERE job_id = ?", (_now(), decision_id, verdict, job_id))

    def fail(self, job_id: str, error: dict) -> None:
        self._execute("UPDATE jobs SET state = 'failed', finished_at = ?, error = ? WHERE job_id = ?",
                      (_now(), json.dumps(error), job_id))

    def set_webhook(self, job_id: str, delivery: Delivery) -> None:
        self._execute("UPDATE jobs SET webhook = ? WHERE job_id = ?", (json.dumps(delivery.to_dict()), job_id))


class JobRunner:
    """Worker threads that run the queued jobs of a :class:`JobStore` through the service.

    Parameters
    ----------
    service : MatchService
    store : JobStore
    deliveries : DeliveryLog
        Where the completion webhooks' attempts are logged.
    metrics : Metrics
        Observes each job's upload like a synchronous one.
    """

    def __init__(self, service: MatchService, store: JobStore, deliveries: DeliveryLog, metrics: Metrics):
        self.service = service
        self.settings = service.settings
        self.store = store
        self.deliveries = deliveries
        self.metrics = metrics
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        #: This runner in the jobs' records: host / pid / the process's start / this object.
        self.runner = (f"{socket.gethostname()}/{os.getpid()}/{_process_started(os.getpid()) or ''}/"
                       f"{secrets.token_hex(4)}")

    def start(self) -> None:
        """Queue the jobs left unfinished by an earlier run, and start the workers."""
        self.settings.jobs_dir.mkdir(parents=True, exist_ok=True)
        left = self.store.unfinished()
        if left:
            log.info("resuming %d upload jobs left unfinished", len(left))
        for job_id in left:
            self._queue.put(job_id)
        for number in range(self.settings.job_workers):
            thread = threading.Thread(target=self._work, name=f"refrain-job-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 30.0) -> None:
        """Let each worker finish its current job, then stop it; queued jobs stay queued for the next start."""
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout)
        if not any(thread.is_alive() for thread in self._threads):
            self.store.release(self.runner)
        self._threads.clear()

    def submit(self, form: ReceivedForm, key: ApiKey, request_id: str, callback_url: str | None) -> Job:
        """Keep an upload received into ``jobs_dir`` as a new queued job; the form's file becomes the job's."""
        job_id = "job_" + secrets.token_urlsafe(12)
        kept = self.settings.jobs_dir / (job_id + Path(form.filename).suffix.lower()[:16])
        form.file_path.rename(kept)
        form.file_path = None
        try:
            job = self.store.add(job_id, request_id, key.prefix, form.filename, kept, form.file_bytes,
                                 form.fields, callback_url)
        except BaseException:
            kept.unlink(missing_ok=True)
            raise
        self._queue.put(job_id)
        return job

    def _work(self) -> None:
        while (job_id := self._queue.get()) is not None:
            try:
                self.run(job_id)
            except Exception:  # a worker must survive any one job
                log.exception("upload job %s could not be run", job_id)

    def run(self, job_id: str) -> Job | None:
        """Match one job's upload, record the outcome and send its webhook; None if another runner has it.

        Each step happens once even when a stop interrupted the job: a decision already
        stored under the job's decision id is taken as the job's outcome, and a finished
        job only gets its webhook.
        """
        job = self.store.claim(job_id, self.runner)
        if job is None:
            return None
        if job.state in ("queued", "running"):
            decision = self._decide(job)
            job = self.store.get(job_id)
        else:
            stored = self.service.db.get_decision(job.decision_id) if job.decision_id else None
            decision = stored.body if stored else None
        if job.callback_url and job.webhook is None:
            delivery = self._notify(job, decision)
            self.store.set_webhook(job_id, delivery)
            self.metrics.webhooks.labels(delivery.event, "delivered" if delivery.delivered else "failed").inc()
            job = self.store.get(job_id)
        return job

    def _decide(self, job: Job) -> dict | None:
        """Run a queued (or interrupted) job; its decision body, or None when it failed."""
        decision_id = "dec_" + job.job_id.removeprefix("job_")
        stored = self.service.db.get_decision(decision_id)
        if stored is not None:  # decided before the service stopped, but not marked so
            self.store.succeed(job.job_id, decision_id, stored.verdict)
            return stored.body
        with recording(job.request_id) as record:
            annotate(job_id=job.job_id, principal=job.key_prefix)
            self.store.start(job.job_id)
            decision = self._match(job, decision_id)
            if decision is not None:
                self.store.succeed(job.job_id, decision_id, decision["verdict"])
            done = self.store.get(job.job_id)
            self.metrics.observe_analysis(record)
            log.info("upload job %s %s", job.job_id, done.state,
                     extra={"fields": {"request_id": job.request_id, "job_id": job.job_id, "state": done.state,
                                       "error": done.error, **record.fields,
                                       "stages_ms": {k: round(v * 1000, 2) for k, v in record.stages.items()}}})
        return decision

    def _match(self, job: Job, decision_id: str) -> dict | None:
        """The decision body, or None when the job failed (recorded as the error an HTTP upload gets)."""
        path = Path(job.file_path)
        try:
            with open(path, "rb") as handle:
                digest = hashlib.file_digest(handle, "sha256")
        except OSError as err:
            self.store.fail(job.job_id, {"status": 500, "code": "internal_error",
                                         "message": f"the job's upload is gone from the jobs folder ({err})"})
            return None
        form = ReceivedForm(fields=job.fields, file_path=path, filename=job.filename, file_bytes=job.file_bytes,
                            digest=digest)
        key = self.service.db.get_key(job.key_prefix)
        try:
            with form:
                return self.service.match_upload(form, key, store=True, decision_id=decision_id).body
        except ApiError as err:
            self.store.fail(job.job_id, {"status": err.status, "code": err.code, "message": err.message})
        except ShardUnavailableError as err:
            # As a synchronous upload gets it (service.app): never a verdict from part of the catalogue.
            log.warning("upload job %s: %s", job.job_id, err)
            self.store.fail(job.job_id, {"status": 503, "code": "catalogue_unavailable",
                                         "message": f"{err}; nothing was decided, send the upload again"})
        except Exception as err:
            log.exception("upload job %s failed", job.job_id)
            self.store.fail(job.job_id, {"status": 500, "code": "internal_error",
                                         "message": f"internal error; it was logged on the server "
                                                    f"({type(err).__name__})"})
        return None

    def _notify(self, job: Job, decision: dict | None) -> Delivery:
        settings = self.settings
        event = f"match.{'completed' if decision else 'failed'}"
        if settings.webhook_secret is None:  # configured away since the job was accepted
            return Delivery("", job.callback_url, event, delivered=False, attempts=0, last_status=None,
                            last_error="not sent: the service has no webhook_secret")
        payload = {"job_id": job.job_id, "state": job.state, "decision_id": job.decision_id,
                   "verdict": job.verdict, "error": job.error, "decision": decision}
        return deliver(job.callback_url, event, payload,
                       settings.webhook_secret.get_secret_value(), attempts=settings.webhook_attempts,
                       backoff_seconds=settings.webhook_backoff_seconds,
                       timeout_seconds=settings.webhook_timeout_seconds, log=self.deliveries)

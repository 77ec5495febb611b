"""What the HTTP routes call: the catalogue and match operations over Refrain, policy and the database.

No fingerprinting or matching logic lives here: audio goes through
:mod:`fingerprint` and :class:`refrain.api.Refrain`, verdicts come from
:func:`policy.decide`. This module only sequences those calls, holds the
readers–writer lock around the index, and stores what was decided.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import re
import secrets
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import numpy as np
from starlette.concurrency import run_in_threadpool

from refrain import policy
from refrain.fingerprint import (AudioDecodeError, AudioTooLongError, Fingerprint, FingerprintError,
                         fingerprint_signal, load_audio)
from refrain.fingerprint.decode import probe_duration
from refrain.fingerprint.serialize import fingerprint_to_bytes
from refrain.index import TrackMetadata
from refrain.api import QueryResult, Refrain, TrackMatch
from refrain.cluster import ClusterRefrain
from refrain.config import Config
from refrain.service.db import (ApiKey, CatalogueIntent, IdempotentDecision, ServiceDB, Work, WorkEvidence,
                                utc_now)
from refrain.service.errors import ApiError
from refrain.service.limits import Admission
from refrain.service.locking import ReadWriteLock
from refrain.service.observability import annotate, stage, tier_timings
from refrain.service.render import spectrogram_png
from refrain.service.settings import ServiceSettings
from refrain.service.uploads import ReceivedForm, safe_suffix

__all__ = ["MatchService", "MatchOutcome", "UploadDecision", "decide_upload", "decision_body", "resolve_decision",
           "jsonable", "policy_out", "work_out", "licence_out"]

log = logging.getLogger("refrain.service")

_ISRC = re.compile(r"^[A-Z]{2}[A-Z0-9]{3}[0-9]{7}$")
MAX_DECLARED_LICENCES = 32
SPECTROGRAM_PURGE_INTERVAL = 3600.0  # seconds between two purges of old spectrogram images
T = TypeVar("T")


@dataclass(frozen=True)
class MatchOutcome:
    """The answer to one upload (``body``, shaped as :class:`service.schemas.DecisionOut`) and its evidence.

    ``replayed``: the answer is the decision stored for an earlier request with the same
    idempotency key (no evidence is recomputed for it).
    """

    body: dict
    evidence: list[WorkEvidence]
    replayed: bool = False


def policy_out(policy_: policy.Policy | None) -> dict:
    """A work's policy as :class:`service.schemas.PolicyOut` fields (None: the default)."""
    effective = policy_ or policy.DEFAULT_POLICY
    return {"copy": effective.copy, "remix": effective.remix, "cover": effective.cover,
            "royalty_share": effective.royalty_share,
            "conditions": [{"use": c.use, "min_seconds": c.min_seconds, "min_share": c.min_share, "below": c.below}
                           for c in effective.conditions],
            "is_default": policy_ is None}


def work_out(work: Work, policy_: policy.Policy | None) -> dict:
    return {"work_id": work.work_id, "track_id": work.track_id, "title": work.title,
            "artists": work.artists, "rights_holder": work.rights_holder, "isrc": work.isrc,
            "filename": work.filename, "duration": work.duration, "created_at": work.created_at,
            "policy": policy_out(policy_)}


def licence_out(licence: policy.Licence, now: datetime) -> dict:
    if licence.revoked_at is not None:
        status = "revoked"
    elif licence.valid_until is not None and now > licence.valid_until:
        status = "expired"
    else:
        status = "active"
    return {"licence_id": licence.licence_id, "work_id": licence.work_id, "licensee": licence.licensee,
            "uses": sorted(licence.uses), "granted_at": licence.granted_at,
            "valid_until": licence.valid_until, "revoked_at": licence.revoked_at, "status": status}


def _audio_error(err: Exception, path: Path, filename: str) -> ApiError:
    """The HTTP error for audio the library refused, naming the upload rather than the temp file."""
    message = str(err).replace(str(path), filename)
    if isinstance(err, FingerprintError) and not message.startswith(filename):
        message = f"{filename}: {message}"
    if isinstance(err, FingerprintError):
        return ApiError(422, "unusable_audio", message)
    if isinstance(err, AudioTooLongError):  # the client's size problem, not unreadable audio
        return ApiError(413, "audio_too_long", message)
    return ApiError(415, "undecodable_audio", message)


class MatchService:
    """The index (opened writable: the service holds its write lock), the database and the lock.

    Parameters
    ----------
    settings : ServiceSettings
    """

    def __init__(self, settings: ServiceSettings):
        self.settings = settings
        self.db = ServiceDB(settings.db_path, settings.db_busy_timeout)
        config = Config(max_query_seconds=settings.max_upload_seconds,
                        max_track_seconds=settings.max_reference_seconds).searching_covers(settings.match_covers)
        try:
            self.refrain = (ClusterRefrain.open(settings.index_dir, config=config, writable=True,
                                                deadline_seconds=settings.shard_deadline_seconds)
                            if settings.cluster else
                            Refrain.open(settings.index_dir, config=config, writable=True, create=True))
        except BaseException:
            self.db.close()
            raise
        upgradable = self.refrain.store.upgradable()
        if upgradable:
            log.warning("%s: index from an earlier Refrain (%s tiers): converted in memory at every open "
                        "until `refrain upgrade --index %s` (with the service stopped)", settings.index_dir,
                        ", ".join(upgradable), settings.index_dir)
        self.lock = ReadWriteLock()
        for folder in (settings.works_dir, settings.upload_dir):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.admission = Admission(settings.max_inflight_uploads, settings.analysis_budget_seconds,
                                   settings.retry_after_seconds)
        # Decoding and matching get their own threads: the shared pool stays free for health
        # checks and every other request, however many uploads are being analysed.
        self.analysis_pool = ThreadPoolExecutor(settings.analysis_threads, thread_name_prefix="refrain-analysis")
        self._spectrograms_forgotten_at: float | None = None
        self._tracks = self.refrain.info().tracks
        self.warmed = threading.Event()
        self.warm_up_error: str | None = None
        try:
            self.reconcile()
            self.forget_old_spectrograms()
        except BaseException:
            self.close()
            raise

    def warm_up(self) -> None:
        """Compile the matcher's kernels (or load them from numba's cache); sets :attr:`warmed`.

        The application runs it in the background at startup, so that liveness answers at
        once and readiness only once no upload would wait for compilation. A failure is
        logged and kept in :attr:`warm_up_error` (the service then never turns ready).
        """
        try:
            with self.lock.read():
                self.refrain.warm_up()
        except Exception as err:
            self.warm_up_error = f"warm-up failed: {type(err).__name__}: {err}"
            log.exception("the matcher's warm-up failed")
            return
        self.warmed.set()

    def close(self) -> None:
        self.analysis_pool.shutdown(wait=True, cancel_futures=True)
        with self.lock.write():
            self.refrain.close()
            self.db.close()

    async def analyse(self, form: ReceivedForm, max_seconds: float, work: Callable[..., T], *args) -> T:
        """Run ``work(*args)`` on the analysis pool once the upload's audio fits the analysis budget.

        The audio's length is read from its header (``max_seconds`` when unknown or longer:
        the decoder refuses longer audio anyway); past the budget the upload gets 503.
        """
        seconds = await run_in_threadpool(probe_duration, form.file_path)
        with self.admission.analysis(min(seconds or max_seconds, max_seconds)):
            # In the request's context, so that the work's stage timings and ids reach its log line.
            context = contextvars.copy_context()
            return await asyncio.get_running_loop().run_in_executor(
                self.analysis_pool, functools.partial(context.run, work, *args))

    def forget_old_spectrograms(self) -> None:
        """Drop spectrogram images past ``spectrogram_retention_days`` (at most once an hour)."""
        last = self._spectrograms_forgotten_at
        if last is not None and time.monotonic() - last < SPECTROGRAM_PURGE_INTERVAL:
            return
        self._spectrograms_forgotten_at = time.monotonic()
        dropped = self.db.forget_spectrograms(utc_now() - timedelta(days=self.settings.spectrogram_retention_days))
        if dropped:
            log.info("dropped %d spectrogram images older than %g days", dropped,
                     self.settings.spectrogram_retention_days)

    def track_count(self) -> int:
        """Matchable recordings, as of the last catalogue write: never waits for a write in progress."""
        return self._tracks

    @contextmanager
    def _catalogue_write(self) -> Iterator[None]:
        """The index's write lock; the track count is refreshed before it is released."""
        with self.lock.write():
            try:
                yield
            finally:
                self._tracks = self.refrain.info().tracks

    # -- catalogue -----------------------------------------------------------------------------

    def add_work(self, form: ReceivedForm) -> Work:
        """Ingest an uploaded reference recording and register it as a work.

        A recording already registered as a work raises 409; one already in the index
        without a work (ingested with the CLI) is adopted as this work. A recording that
        copies a registered work (a re-encode, an excerpt: any match whose kind is a copy use,
        at least as confident as ``review_confidence``) raises 409 ``ownership_conflict``
        with the conflicting works, unless the form says ``conflict=true``: then the work is
        registered and each conflict enters the conflict queue. The index and the
        database change together or not at all: the intent is recorded first, undone here
        if a step fails, and by :meth:`reconcile` at the next start if the process dies.
        """
        title, rights_holder = form.first("title"), form.first("rights_holder")
        artists, isrc = form.all("artists"), form.first("isrc")
        as_conflict = form.first("conflict") or "false"
        problems = [f"{name} is required" for name, value in
                    (("title", title), ("rights_holder", rights_holder), ("artists", artists)) if not value]
        if as_conflict not in ("true", "false"):
            problems.append("conflict must be true or false")
        if isrc is not None:
            isrc = isrc.replace("-", "").upper()
            if not _ISRC.match(isrc):
                problems.append("isrc must be 12 characters: 2-letter country, 3 alphanumerics, "
                                "7 digits (e.g. GBAYE0601498)")
        if problems:
            raise ApiError(422, "validation_error", "; ".join(problems))

        # Decode once outside the lock: unreadable or over-long recordings fail fast, with the
        # decoder's typed error, and never hold up matches.
        try:
            samples = load_audio(form.file_path, self.refrain.params.sample_rate,
                                 self.settings.max_reference_seconds)
            fp = fingerprint_signal(samples, self.refrain.params, dense_peaks=True)
        except (AudioDecodeError, FingerprintError) as err:
            raise _audio_error(err, form.file_path, form.filename) from None

        stored = self.settings.works_dir / f"{form.sha256[:32]}{safe_suffix(form.filename)}"
        existing = self.db.work_by_stored_path(str(stored))
        if existing is not None:
            raise ApiError(409, "conflict", f"this recording is already in the catalogue as work "
                                            f"{existing.work_id}")
        conflicts = self._ownership_conflicts(fp, form.filename)
        if conflicts and as_conflict == "false":
            raise ApiError(409, "ownership_conflict",
                           "this recording copies work " + ", ".join(str(c["work_id"]) for c in conflicts)
                           + " (see details); register it with conflict=true to put both claims in the "
                             "conflict queue", details=conflicts)
        intent = self.db.begin_registration(str(stored))
        try:
            shutil.move(form.file_path, stored)
            form.file_path = None
            metadata = TrackMetadata(title=title, artist=", ".join(artists), isrc=isrc)
            with self._catalogue_write():
                # Refrain.ingest fingerprints inside this lock: the API has no way to add a
                # fingerprint computed beforehand (see the report to the lead).
                (result,) = list(self.refrain.ingest([stored], metadata=metadata))
            if result.status == "error":
                raise _audio_error(FingerprintError(result.error.replace(str(stored), form.filename)),
                                   stored, form.filename)
            existing = self.db.works_by_track([result.track_id]).get(result.track_id)
            if existing is not None:
                raise ApiError(409, "conflict", f"this recording is already in the catalogue as "
                                                f"work {existing.work_id}")
            return self.db.add_work(result.track_id, title, artists, rights_holder, isrc,
                                    form.filename, str(stored), result.duration, intent.intent_id,
                                    tuple(conflicts))
        except BaseException:
            self._settle(intent)
            raise

    def _ownership_conflicts(self, fp: Fingerprint, filename: str) -> list[dict]:
        """The registered works a new reference recording copies (confident matches of a copy use)."""
        with self.lock.read():
            result, _ = self.refrain.match_with_evidence(fp, filename)
            works = self.db.works_by_track([m.track_id for m in result.matches])
        return [{"work_id": works[m.track_id].work_id, "title": works[m.track_id].title,
                 "rights_holder": works[m.track_id].rights_holder, "kind": m.kind, "score": m.score,
                 "confidence": m.confidence, "spans": [s.to_dict() for s in m.spans]}
                for m in result.matches
                if m.track_id in works and policy.use_of_kind(m.kind) == "copy"
                and m.confidence >= self.settings.review_confidence]

    def delete_work(self, work_id: int) -> Work:
        """Remove a work from the catalogue and the index; its decisions stay for the audit.

        The work's row goes first, in the transaction that records the intent to remove
        its track: a failure before that changes nothing, one after it is finished here or
        by :meth:`reconcile` at the next start.
        """
        deleted = self.db.delete_work(work_id)
        if deleted is None:
            raise ApiError(404, "not_found", f"work {work_id} not found")
        work, intent = deleted
        self._settle(intent)
        return work

    def _settle(self, intent: CatalogueIntent) -> None:
        """Bring the index and the works folder in line with the database for one intent, then close it.

        What the database does not register is taken out: the intent's track (a deletion's,
        or one a failed registration added under its stored path) and its stored file.
        A track adopted from the CLI keeps its place (its source is not the stored file).
        """
        registered = self.db.work_track_ids()  # read before the lock: matches never wait on the database
        with self._catalogue_write():
            track = self.refrain.store.catalog.find_ready(source=intent.stored_path)
            candidates = {intent.track_id, track.track_id if track else None} - {None} - registered
            for track_id in candidates:
                try:
                    self.refrain.remove(track_id)
                except KeyError:
                    pass  # already gone: the removal was done before the interruption
        if self.db.work_by_stored_path(intent.stored_path) is None:
            Path(intent.stored_path).unlink(missing_ok=True)
        self.db.finish_intent(intent.intent_id)

    def reconcile(self) -> dict[str, int]:
        """Repair what an interrupted registration or deletion left between the index and the database.

        Run at startup, before any request: finishes or undoes each open intent, takes
        out index tracks stored in ``works_dir`` that no work registers, drops works whose
        track left the index, and deletes unregistered files in ``works_dir`` and every
        file in ``upload_dir`` (both folders belong to the service alone).

        Returns
        -------
        dict
            How many of each repair were made (logged when not all zero).
        """
        repairs = {"intents": 0, "orphan_tracks": 0, "works_without_track": 0, "orphan_files": 0,
                   "upload_files": 0}
        for intent in self.db.unfinished_intents():
            self._settle(intent)
            repairs["intents"] += 1
        works_dir = self.settings.works_dir
        with self._catalogue_write():
            registered = self.db.work_track_ids()
            ready = self.refrain.store.catalog.ready_tracks()
            for track_id, track in ready.items():
                if track_id not in registered and Path(track.source).parent == works_dir:
                    self.refrain.remove(track_id)
                    repairs["orphan_tracks"] += 1
            for track_id in registered - set(ready):
                work = self.db.works_by_track([track_id])[track_id]
                log.warning("work %s: its track %s is no longer in the index; the work is removed",
                            work.work_id, track_id)
                self.db.delete_work(work.work_id)
                repairs["works_without_track"] += 1
        for intent in self.db.unfinished_intents():  # the deletions just recorded: no track left
            self.db.finish_intent(intent.intent_id)
        kept = self.db.stored_paths()
        for path in works_dir.iterdir():
            if path.is_file() and str(path) not in kept:
                path.unlink()
                repairs["orphan_files"] += 1
        for path in self.settings.upload_dir.iterdir():
            if path.is_file():
                path.unlink()
                repairs["upload_files"] += 1
        if any(repairs.values()):
            log.warning("startup reconciliation: %s", ", ".join(f"{k}={v}" for k, v in repairs.items()))
        return repairs

    # -- matching ------------------------------------------------------------------------------

    def match_upload(self, form: ReceivedForm, key: ApiKey, store: bool,
                     decision_id: str | None = None, idempotency_key: str | None = None) -> MatchOutcome:
        """Decode, fingerprint, match, decide, and (if ``store``) record the decision.

        The upload is made as ``key``'s principal: licences are checked against it. The
        form's ``uploader_id`` only labels a sub-account of that principal, for the audit.
        ``decision_id`` names the stored decision (default: a new random id); an
        asynchronous job passes its own, so that a job run again after a restart can tell
        whether its decision was already stored. ``idempotency_key`` (stored decisions
        only): a key the principal already used with the same bytes answers that decision
        as it stands now, without analysing again; with other bytes, 409.
        """
        if idempotency_key is not None:
            earlier = self.db.idempotent_decision(key.principal_id, idempotency_key)
            if earlier is not None:
                return self._replay(earlier, form.sha256, idempotency_key)
        uploader_id = form.first("uploader_id")
        licence_ids = form.all("licence_id")
        if uploader_id is not None and len(uploader_id) > 200:
            raise ApiError(422, "validation_error", "uploader_id is longer than 200 characters")
        if len(licence_ids) > MAX_DECLARED_LICENCES:
            raise ApiError(422, "validation_error", f"more than {MAX_DECLARED_LICENCES} licence_id values")
        licences = []
        for licence_id in licence_ids:
            licence = self.db.get_licence(licence_id)
            if licence is None:
                raise ApiError(404, "not_found", f"licence {licence_id} not found")
            licences.append(licence)

        params = self.refrain.params
        try:
            with stage("decode"):
                samples = load_audio(form.file_path, params.sample_rate, self.settings.max_upload_seconds)
            with stage("fingerprint"):
                fp = fingerprint_signal(samples, params, dense_peaks=True)
        except (AudioDecodeError, FingerprintError) as err:
            raise _audio_error(err, form.file_path, form.filename) from None

        now = utc_now()
        with self.lock.read(), stage("match"):
            # One consistent snapshot: the index, the works and their policies cannot change
            # between the match and the decision (catalogue writes take the write side).
            decided = decide_upload(self.refrain, self.db, fp, form.filename, key.principal, licences, now,
                                    self.settings.review_confidence)

        with stage("evidence"):
            stored_evidence = [self._evidence(m, decided.points[m.track_id], decided.works.get(m.track_id),
                                              samples) for m in decided.result.matches]
        body = decision_body(decided, decision_id=(decision_id or "dec_" + secrets.token_urlsafe(12)) if store
                             else None,
                             stored=store, created_at=now, principal=key.principal, uploader_id=uploader_id,
                             licence_ids=licence_ids,
                             fingerprint={"sha256": form.sha256, "bytes": form.file_bytes,
                                          "duration": round(fp.duration, 3), "landmarks": len(fp),
                                          "landmarks_per_second": round(len(fp) / max(fp.duration, 1e-9), 2)})
        if store:
            self.forget_old_spectrograms()
            with stage("store"):
                earlier = self.db.add_decision(
                    body["decision_id"], now, decided.decision.verdict, uploader_id, key, form.filename,
                    jsonable(body), stored_evidence, fingerprint_to_bytes(fp, params),
                    idempotency=(idempotency_key, form.sha256) if idempotency_key is not None else None)
            if earlier is not None:  # a concurrent request with the same key stored its decision first
                return self._replay(earlier, form.sha256, idempotency_key)
        annotate(audio_seconds=round(fp.duration, 3), decision_id=body["decision_id"], verdict=body["verdict"],
                 matched_kinds=[m.kind for m in decided.result.matches])
        return MatchOutcome(body, stored_evidence)

    def _replay(self, earlier: IdempotentDecision, upload_sha256: str, idempotency_key: str) -> MatchOutcome:
        """The decision stored for an earlier use of an idempotency key; 409 if it was used for other bytes."""
        if earlier.upload_sha256 != upload_sha256:
            raise ApiError(409, "idempotency_key_reused",
                           f"Idempotency-Key {idempotency_key!r} was used for another upload (decision "
                           f"{earlier.decision_id}); use a new key for new bytes")
        stored = self.db.get_decision(earlier.decision_id)  # stored decisions are never deleted
        annotate(decision_id=stored.decision_id, verdict=stored.verdict, idempotent_replay=True)
        return MatchOutcome(stored.body, [], replayed=True)

    def _evidence(self, m: TrackMatch, points: np.ndarray, work: Work | None, samples: np.ndarray) -> WorkEvidence:
        """Aligned points and the spectrogram of the strongest span (padded 1 s, capped)."""
        rate = self.refrain.params.sample_rate
        start = max(0.0, m.query_start - 1.0)
        end = min(len(samples) / rate, m.query_end + 1.0, start + self.settings.spectrogram_max_seconds)
        png = spectrogram_png(samples[int(start * rate):int(end * rate)], self.refrain.params)
        return WorkEvidence(track_id=m.track_id, work_id=work.work_id if work else None,
                            points=np.asarray(points, dtype=np.float32), spectrogram_png=png,
                            spectrogram_start=round(start, 3), spectrogram_end=round(end, 3))


@dataclass(frozen=True)
class UploadDecision:
    """An upload's fingerprint matched against the index and decided under the current policies.

    Attributes
    ----------
    result : QueryResult
        Every catalogue track found.
    decision : policy.Decision
        The verdict, one :class:`policy.WorkDecision` per match (same order).
    works : dict of int to Work
        The registered work of each matched track that has one.
    policies : dict of int to policy.Policy
        The policies set for those works.
    points : dict of int to np.ndarray
        The aligned (query s, reference s) points behind each matched track.
    """

    result: QueryResult
    decision: policy.Decision
    works: dict[int, Work]
    policies: dict[int, policy.Policy]
    points: dict[int, np.ndarray]


def decide_upload(refrain: Refrain, db: ServiceDB, fp: Fingerprint, filename: str, principal: str | None,
                  licences: list[policy.Licence], at: datetime, review_confidence: float) -> UploadDecision:
    """Match an upload's fingerprint and decide its verdict: the one step uploads and rescans share.

    Parameters
    ----------
    refrain : Refrain
        The index (the caller keeps it from changing meanwhile, if it must).
    db : ServiceDB
        Works and policies.
    fp : Fingerprint
        The upload's fingerprint (fresh, or rebuilt from the stored one).
    filename : str
        The upload's name, as reported.
    principal : str or None
        The principal whose key made the upload; licences only cover their licensee
        principal (None: nobody's, e.g. a decision stored before principals existed).
    licences : list of policy.Licence
        The licences declared with the upload.
    at : datetime
        When the verdict is taken (licence validity is judged then).
    review_confidence : float
        See :class:`service.settings.ServiceSettings`.
    """
    result, points = refrain.match_with_evidence(fp, filename, stats=tier_timings())
    works = db.works_by_track([m.track_id for m in result.matches])
    policies = db.policies([w.work_id for w in works.values()])
    decision = policy.decide(
        [policy.MatchedWork(work_id=works[m.track_id].work_id if m.track_id in works else None,
                            track_id=m.track_id, kind=m.kind, confidence=m.confidence,
                            spans=tuple((s.query_start, s.query_end) for s in m.spans))
         for m in result.matches],
        policies, licences, principal, fp.duration, at, review_confidence)
    return UploadDecision(result, decision, works, policies, points)


def decision_body(decided: UploadDecision, *, decision_id: str | None, stored: bool, created_at: datetime,
                  principal: str | None, uploader_id: str | None, licence_ids: list[str], fingerprint: dict) -> dict:
    """The answer to an upload, shaped as :class:`service.schemas.DecisionOut`.

    ``fingerprint`` is the upload's summary (sha256, bytes, duration, landmarks,
    landmarks_per_second), kept as first reported when a rescan rewrites the answer.
    """
    by_track = {w.track_id: w for w in decided.decision.works}
    return {
        "decision_id": decision_id, "stored": stored, "created_at": created_at,
        "filename": decided.result.query, "principal": principal, "uploader_id": uploader_id,
        "licence_ids": licence_ids,
        "verdict": decided.decision.verdict, "reason": decided.decision.reason,
        "works": [_matched_work(m, decided.works.get(m.track_id), decided.policies, by_track[m.track_id])
                  for m in decided.result.matches],
        "total_share_owed": decided.decision.total_share_owed,
        "fingerprint": fingerprint,
    }


def _matched_work(m: TrackMatch, work: Work | None, policies: dict, decided: policy.WorkDecision) -> dict:
    return {
        **{name: value for name, value in m.to_dict().items() if name not in ("source", "title", "artist", "isrc")},
        "work_id": work.work_id if work else None,
        "title": work.title if work else m.title,
        "artists": work.artists if work else ([m.artist] if m.artist else []),
        "rights_holder": work.rights_holder if work else None,
        "isrc": work.isrc if work else m.isrc,
        "use": decided.use,
        "policy": policy_out(policies.get(work.work_id) if work else None),
        "action": decided.action, "outcome": decided.outcome, "licence_id": decided.licence_id,
        "reason": decided.reason,
        "royalty": {"covered_seconds": decided.covered_seconds,
                    "duration_share": decided.duration_share,
                    "royalty_share": decided.royalty_share, "share_owed": decided.share_owed},
    }


def resolve_decision(db: ServiceDB, decision_id: str, resolutions: dict[int, str], note: str,
                     actor: str) -> dict:
    """Apply an analyst's resolution to a stored decision and return its new answer.

    Parameters
    ----------
    db : ServiceDB
    decision_id : str
    resolutions : dict of int to str
        Track id -> one of :data:`policy.RESOLUTIONS`.
    note : str
        Why: kept in the decision history and in each resolved work's reason.
    actor : str
        The principal of the analyst's key.

    Raises
    ------
    ApiError
        404 for an unknown decision, 422 for a track the decision did not match, 409 when
        the decision changed while it was being resolved (nothing was changed).
    """
    stored = db.get_decision(decision_id)
    if stored is None:
        raise ApiError(404, "not_found", f"decision {decision_id} not found")
    body = stored.body
    works = [policy.WorkDecision(work_id=w["work_id"], track_id=w["track_id"], use=w["use"], action=w["action"],
                                 outcome=w["outcome"], licence_id=w["licence_id"], reason=w["reason"],
                                 covered_seconds=w["royalty"]["covered_seconds"],
                                 duration_share=w["royalty"]["duration_share"],
                                 royalty_share=w["royalty"]["royalty_share"], share_owed=w["royalty"]["share_owed"])
             for w in body["works"]]
    try:
        resolved = policy.resolve(works, resolutions, note)
    except ValueError as err:
        raise ApiError(422, "validation_error", f"decision {decision_id}: {err}") from None
    by_track = {w.track_id: w for w in resolved.works}
    new_body = {**body, "verdict": resolved.verdict, "reason": resolved.reason,
                "total_share_owed": resolved.total_share_owed,
                "works": [{**w, "outcome": by_track[w["track_id"]].outcome, "reason": by_track[w["track_id"]].reason,
                           "royalty": {**w["royalty"], "share_owed": by_track[w["track_id"]].share_owed}}
                          for w in body["works"]]}
    if not db.apply_resolution(decision_id, "rev_" + secrets.token_urlsafe(9), utc_now(), body, new_body, actor,
                               note):
        raise ApiError(409, "conflict", f"decision {decision_id} changed while it was being resolved; "
                                        "reload it and resolve again")
    annotate(decision_id=decision_id, verdict=resolved.verdict)
    return new_body


def jsonable(value):
    """The body with datetimes as ISO strings, for the decisions table."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value

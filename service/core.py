"""What the HTTP routes call: the catalogue and match operations over Refrain, policy and the database.

No fingerprinting or matching logic lives here: audio goes through
:mod:`fingerprint` and :class:`refrain.api.Refrain`, verdicts come from
:func:`policy.decide`. This module only sequences those calls, reads and writes the catalogue
through :mod:`service.access` (which lets several processes serve one index), and stores
what was decided.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import re
import secrets
import shutil
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
from starlette.concurrency import run_in_threadpool

from refrain import policy
from refrain.policy.lineage import (LineageClaim, LineageLink, decide_lineage, derivative_floor,
                                    derivative_policy_problem)
from refrain.fingerprint import (AudioDecodeError, AudioTooLongError, Fingerprint, FingerprintError,
                         fingerprint_signal, load_audio)
from refrain.fingerprint import FingerprintParams
from refrain.fingerprint.decode import probe_duration, stream_audio
from refrain.fingerprint.melody import chroma_sequence
from refrain.fingerprint.serialize import (STORED_SUFFIX, FingerprintFormatError, fingerprint_from_bytes,
                                          fingerprint_to_bytes, is_stored_fingerprint)
from refrain.fingerprint.spectrogram import log_frequency_spectrogram
from refrain.index import TrackMetadata
from refrain.api import QueryResult, Refrain, StreamedMatch, TrackMatch, audio_between, fingerprint_stream
from refrain.cluster import ClusterRefrain
from refrain.service.access import CatalogueAccess, ClusterAccess, SharedIndex
from refrain.config import Config
from refrain.service.db import (ApiKey, CatalogueIntent, Dispute, DisputeOpenError, IdempotentDecision, ServiceDB,
                                Work, WorkConflict, WorkEvidence, utc_now)
from refrain.service.errors import ApiError
from refrain.service.limits import Admission
from refrain.service.observability import add_stage_seconds, annotate, stage, tier_timings
from refrain.service.render import resynthesise_peaks, spectrogram_png, wav_bytes
from refrain.service.settings import ServiceSettings
from refrain.service.uploads import ReceivedForm, safe_suffix

__all__ = ["MatchService", "MatchOutcome", "UploadDecision", "decide_upload", "decision_body", "resolve_decision",
           "jsonable", "policy_out", "work_out", "licence_out", "file_dispute", "close_dispute", "close_conflict",
           "conflict_claims", "with_holds", "dispute_out", "SpanRegions", "cover_alignment", "decide_matched",
           "with_standing_resolutions", "derivative_floor_of"]

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


def dispute_out(dispute: Dispute) -> dict:
    """A dispute as :class:`service.schemas.DisputeOut` fields."""
    return {"dispute_id": dispute.dispute_id, "decision_id": dispute.decision_id, "principal": dispute.principal,
            "reason": dispute.reason, "text": dispute.text, "track_ids": dispute.track_ids,
            "filed_at": dispute.filed_at, "status": "open" if dispute.resolved_at is None else "resolved",
            "outcome": dispute.outcome, "note": dispute.note, "resolved_by": dispute.resolved_by,
            "resolved_at": dispute.resolved_at}


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


def _normal_isrc(isrc: str | None) -> tuple[str | None, str | None]:
    """An ISRC without dashes, in upper case; and what is wrong with it (None if nothing)."""
    if isrc is None:
        return None, None
    isrc = isrc.replace("-", "").upper()
    if not _ISRC.match(isrc):
        return isrc, ("isrc must be 12 characters: 2-letter country, 3 alphanumerics, 7 digits "
                      "(e.g. GBAYE0601498)")
    return isrc, None


def derivative_floor_of(db: ServiceDB, work_id: int) -> policy.Policy | None:
    """The most permissive policy a published derivative may have (None: the work is no derivative)."""
    links = [link for link in db.ancestor_links([work_id]) if link.work_id == work_id]
    if not links:
        return None
    policies = db.effective_policies([link.parent_work_id for link in links])
    return derivative_floor([(link.kind, policies.get(link.parent_work_id, policy.DEFAULT_POLICY)) for link in links])


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
    """The catalogue (:attr:`index`: read-only views, each write under the index's lock), the database, the pools.

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
            self.index: CatalogueAccess = (
                ClusterAccess(settings.index_dir, config, settings.shard_deadline_seconds) if settings.cluster
                else SharedIndex(settings.index_dir, config, settings.index_write_deadline_seconds))
        except BaseException:
            self.db.close()
            raise
        upgradable = self.refrain.store.upgradable()
        if upgradable:
            log.warning("%s: index from an earlier Refrain (%s tiers): converted in memory at every open "
                        "until `refrain upgrade --index %s` (with the service stopped)", settings.index_dir,
                        ", ".join(upgradable), settings.index_dir)
        for folder in (settings.works_dir, settings.upload_dir):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.admission = Admission(settings.max_inflight_uploads, settings.analysis_budget_seconds,
                                   settings.retry_after_seconds)
        # Decoding and matching get their own threads: the shared pool stays free for health
        # checks and every other request, however many uploads are being analysed.
        self.analysis_pool = ThreadPoolExecutor(settings.analysis_threads, thread_name_prefix="refrain-analysis")
        self._spectrograms_forgotten_at: float | None = None
        self.warmed = threading.Event()
        self.warm_up_error: str | None = None
        try:
            if settings.startup_repairs:
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
            with self.index.reading() as refrain:
                refrain.warm_up()
        except Exception as err:
            self.warm_up_error = f"warm-up failed: {type(err).__name__}: {err}"
            log.exception("the matcher's warm-up failed")
            return
        self.warmed.set()

    def close(self) -> None:
        self.analysis_pool.shutdown(wait=True, cancel_futures=True)
        self.index.close()
        self.db.close()

    @property
    def refrain(self) -> Refrain | ClusterRefrain:
        """The catalogue as last opened: for its settings and totals (matches go through ``index.reading()``)."""
        return self.index.current

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
        """Matchable recordings, as of the last committed write seen: never waits for a write in progress."""
        return self.index.track_count()

    # -- catalogue -----------------------------------------------------------------------------

    def add_work(self, form: ReceivedForm, owner: ApiKey | None = None) -> Work:
        """Ingest an uploaded reference recording and register it as a work.

        ``owner``: a rights holder's key registering the work for its principal (the
        form's ``rights_holder`` may be left out; any other name than the principal's is 422).

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
        problems = []
        if owner is not None:
            if rights_holder not in (None, owner.principal):
                problems.append(f"a rights holder registers works for itself: rights_holder must be "
                                f"{owner.principal!r} or left out")
            rights_holder = owner.principal
        problems += [f"{name} is required" for name, value in
                     (("title", title), ("rights_holder", rights_holder), ("artists", artists)) if not value]
        if as_conflict not in ("true", "false"):
            problems.append("conflict must be true or false")
        isrc, problem = _normal_isrc(isrc)
        if problem:
            problems.append(problem)
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
            with self.index.writing() as refrain:
                # The fingerprint made above: the write lock, which every service process and the CLI
                # share, is held for the commit alone.
                result = refrain.ingest_fingerprint(fp, str(stored), form.sha256, metadata)
            existing = self.db.works_by_track([result.track_id]).get(result.track_id)
            if existing is not None:
                raise ApiError(409, "conflict", f"this recording is already in the catalogue as "
                                                f"work {existing.work_id}")
            return self.db.add_work(result.track_id, title, artists, rights_holder, isrc,
                                    form.filename, str(stored), result.duration, intent.intent_id,
                                    tuple(conflicts), owner.principal_id if owner is not None else None)
        except BaseException:
            self._settle(intent)
            raise

    def publish(self, decision_id: str, key: ApiKey, title: str, artists: list[str], isrc: str | None,
                requested: policy.Policy | None) -> Work:
        """Register a stored upload that may be published (``allowed`` or ``licensed``) as a derivative work.

        The work belongs to ``key``'s principal (who made the upload), links to every
        registered work the decision allowed or licensed (with the match as evidence),
        and is added to the index from the upload's stored fingerprint, kept in
        ``works_dir`` as its reference. Its policy is ``requested`` or, by default, the
        most permissive its parents allow (:func:`policy.lineage.derivative_floor`).
        Like :meth:`add_work`, the index and the database change together or not at all.

        Raises
        ------
        ApiError
            404 unknown decision; 403 another principal's upload; 409 a verdict that does
            not allow publishing, a copy (kind ``copy``) of a work, a decision already
            published, no stored fingerprint, or a recording already in the catalogue;
            422 a bad ISRC or a policy more permissive than a parent allows.
        """
        stored = self.db.rescan_candidate(decision_id)
        if stored is None:
            raise ApiError(404, "not_found", f"decision {decision_id} not found")
        if stored.body.get("principal") != key.principal:
            raise ApiError(403, "forbidden", f"decision {decision_id} was made for another principal than "
                                             f"{key.principal!r}: only the uploader may publish its upload")
        if stored.verdict not in ("allowed", "licensed"):
            raise ApiError(409, "conflict", f"decision {decision_id} is {stored.verdict}: only an allowed or "
                                            "licensed upload may be published")
        published = self.db.published_work(decision_id)
        if published is not None:
            raise ApiError(409, "conflict", f"decision {decision_id} is already published as work "
                                            f"{published.work_id}")
        if stored.fingerprint is None:
            raise ApiError(409, "conflict", f"decision {decision_id} was stored before upload fingerprints were "
                                            "kept: register the recording with POST /v1/works instead")
        isrc, problem = _normal_isrc(isrc)
        if problem:
            raise ApiError(422, "validation_error", problem)
        matched = [w for w in stored.body["works"]
                   if w["work_id"] is not None and w["outcome"] in ("allowed", "licensed")]
        copied = [str(w["work_id"]) for w in matched if w["kind"] == "copy"]
        if copied:  # the same recording again: publishing it would claim another's work, not add a derivative
            raise ApiError(409, "conflict", f"decision {decision_id}: the upload is a copy of work "
                                            f"{', '.join(copied)}, not a derivative of it: only derivatives "
                                            "are published")
        parents = self.db.works_by_id([w["work_id"] for w in matched])
        links = [{"parent_work_id": w["work_id"], "kind": w["kind"], "score": w["score"],
                  "confidence": w["confidence"], "time_ratio": w["time_ratio"],
                  "pitch_shift_semitones": w["pitch_shift_semitones"],
                  "covered_seconds": w["royalty"]["covered_seconds"],
                  "share": min(1.0, w["royalty"]["duration_share"]), "spans": w["spans"]}
                 for w in matched if w["work_id"] in parents]
        parent_policies = self.db.effective_policies(list(parents))
        floor = derivative_floor([(link["kind"], parent_policies.get(link["parent_work_id"], policy.DEFAULT_POLICY))
                                  for link in links]) if links else None
        if requested is not None and floor is not None:
            problem = derivative_policy_problem(requested, floor)
            if problem:
                raise ApiError(422, "validation_error", f"a derivative of work "
                                                        f"{', '.join(str(p) for p in parents)}: {problem}")
        chosen = requested or floor or policy.DEFAULT_POLICY
        try:
            fp = fingerprint_from_bytes(stored.fingerprint, self.refrain.params)
        except (FingerprintFormatError, FingerprintError) as err:
            raise ApiError(409, "conflict", f"decision {decision_id}: its stored fingerprint is unusable ({err})") \
                from None

        stored_path = self.settings.works_dir / f"{decision_id}{STORED_SUFFIX}"
        intent = self.db.begin_registration(str(stored_path))
        try:
            stored_path.write_bytes(stored.fingerprint)
            metadata = TrackMetadata(title=title, artist=", ".join(artists), isrc=isrc)
            with self.index.writing() as refrain:
                result = refrain.ingest_fingerprint(fp, str(stored_path), stored.body["fingerprint"]["sha256"],
                                                    metadata)
            if result.status == "unchanged":
                owner = self.db.works_by_track([result.track_id]).get(result.track_id)
                raise ApiError(409, "conflict", "this recording is already in the catalogue"
                                                + (f" as work {owner.work_id}" if owner else ""))
            owner = self.db.get_principal(key.principal)
            try:
                return self.db.add_published_work(result.track_id, title, artists, owner, isrc,
                                                  stored.body["filename"], str(stored_path), fp.duration,
                                                  intent.intent_id, decision_id, chosen, links)
            except sqlite3.IntegrityError:  # a concurrent request published it first
                raise ApiError(409, "conflict", f"decision {decision_id} is already published") from None
        except BaseException:
            self._settle(intent)
            raise

    def _ownership_conflicts(self, fp: Fingerprint, filename: str) -> list[dict]:
        """The registered works a new reference recording copies (confident matches of a copy use)."""
        with self.index.reading() as refrain:
            result, _ = refrain.match_with_evidence(fp, filename)
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

        def unregistered(refrain: Refrain | ClusterRefrain) -> set[int]:
            track = refrain.store.catalog.find_ready(source=intent.stored_path)
            return {intent.track_id, track.track_id if track else None} - {None} - registered

        # The catalogue's rows as they are now (a view reads them live): the write lock only if a track
        # must go, so that a registration refused for a busy index does not wait for the lock twice.
        with self.index.reading() as refrain:
            needed = unregistered(refrain)
        if needed:
            with self.index.writing() as refrain:
                for track_id in unregistered(refrain):
                    try:
                        refrain.remove(track_id)
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
        with self.index.writing() as refrain:
            registered = self.db.work_track_ids()
            ready = refrain.store.catalog.ready_tracks()
            for track_id, track in ready.items():
                if track_id not in registered and Path(track.source).parent == works_dir:
                    refrain.remove(track_id)
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
        now = utc_now()
        try:
            with self.index.reading() as refrain:
                # One view of the index for the whole upload (another process's commit is seen by
                # the next upload). Decoding is inside it too: a streamed upload is decoded as it
                # is matched.
                streamed = self._match_stream(form, refrain)
                with stage("match"):
                    decided = decide_matched(self.db, streamed.result, streamed.points, streamed.windows.duration,
                                             key.principal, licences, now, self.settings.review_confidence)
            with stage("fingerprint"):
                fp = streamed.windows.fingerprint()
            with stage("evidence"):
                stored_evidence = self._evidence_of(decided, form.file_path, fp)
        except (AudioDecodeError, FingerprintError) as err:
            raise _audio_error(err, form.file_path, form.filename) from None
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

    def _match_stream(self, form: ReceivedForm, refrain: Refrain | ClusterRefrain) -> StreamedMatch:
        """Decode, fingerprint and match the upload window by window (:meth:`refrain.api.Refrain.match_stream`).

        No more than a window of the upload's audio is held at once, whatever its length. A
        cluster's router matches the whole fingerprint at once (its shards then search it
        window by window): the audio is still decoded and fingerprinted a window at a time.
        """
        blocks = stream_audio(form.file_path, refrain.params.sample_rate, self.settings.max_upload_seconds)
        stages: dict[str, float] = {}
        try:
            if isinstance(refrain, Refrain):
                return refrain.match_stream(blocks, form.filename, stats=tier_timings(), stages=stages)
            windows = fingerprint_stream(blocks, refrain.params, refrain.config.match.upload_window_seconds, stages)
            with stage("match"):
                result, points = refrain.match_with_evidence(windows.fingerprint(), form.filename,
                                                             stats=tier_timings())
            return StreamedMatch(result, points, windows)
        finally:
            for name, seconds in stages.items():
                add_stage_seconds(name, seconds)

    def _evidence_of(self, decided: UploadDecision, upload: Path, fp: Fingerprint) -> list[WorkEvidence]:
        """Each matched work's evidence, its spectrogram's audio read back from the upload's file.

        The stretches drawn (the strongest span of each match, padded 1 s, capped) are decoded
        in one pass that stops after the last of them: the upload's audio was not kept.
        """
        matches = decided.result.matches
        ranges = []
        for m in matches:
            start = max(0.0, m.query_start - 1.0)
            ranges.append((start, min(fp.duration, m.query_end + 1.0, start + self.settings.spectrogram_max_seconds)))
        audio = audio_between(upload, self.refrain.params.sample_rate, ranges, self.settings.max_upload_seconds)
        return [self._evidence(m, decided.points[m.track_id], decided.works.get(m.track_id), samples, span,
                               fp.melody) for m, samples, span in zip(matches, audio, ranges)]

    def _evidence(self, m: TrackMatch, points: np.ndarray, work: Work | None, samples: np.ndarray,
                  span: tuple[float, float], melody: np.ndarray | None) -> WorkEvidence:
        """Aligned points and the spectrogram of ``samples``, the upload's audio over ``span`` (seconds).

        A cover has no aligned landmarks: its points are the chroma frames of its spans that agree
        with the reference's on the matched line (:func:`cover_alignment`), when the work's
        reference recording is kept.
        """
        if m.kind == "cover" and len(points) == 0 and work is not None:
            try:
                alignment = cover_alignment(self.refrain.params, melody, m.to_dict(), self._reference_samples(work))
            except ApiError:  # logged: the decision stands without the cover's points
                alignment = None
            if alignment is not None:
                times, ref_times, _, _, agreement = alignment
                points = np.column_stack([times, ref_times])[agreement > 0]
        start, end = span
        png = spectrogram_png(samples, self.refrain.params)
        return WorkEvidence(track_id=m.track_id, work_id=work.work_id if work else None,
                            points=np.asarray(points, dtype=np.float32), spectrogram_png=png,
                            spectrogram_start=round(start, 3), spectrogram_end=round(end, 3))

    # -- evidence an analyst can look at and listen to -----------------------------------------

    def _reference_samples(self, work: Work) -> np.ndarray:
        """The work's kept reference recording; 404 for a published upload (kept as a fingerprint, not audio)
        or if it can no longer be read (the works folder was tampered with)."""
        if is_stored_fingerprint(work.stored_path):
            raise ApiError(404, "not_found", f"work {work.work_id} was published from an upload, whose audio the "
                                             "service does not keep: there is no reference recording to play")
        try:
            return load_audio(work.stored_path, self.refrain.params.sample_rate, self.settings.max_reference_seconds)
        except (AudioDecodeError, AudioTooLongError) as err:
            log.error("work %s: its reference recording cannot be read: %s", work.work_id, err)
            raise ApiError(404, "not_found", f"the reference recording of work {work.work_id} cannot be read") from None

    def matched_regions(self, decision_id: str, track_id: int) -> SpanRegions:
        """Where a stored decision's matched work sounds in the upload and in the reference; 404 if unknown.

        The upload region is the stored spectrogram's (the strongest span padded 1 s, capped), or
        that span padded if no image is kept; the reference region is the same stretch through
        ``ref = offset + time_ratio × upload``, clipped to the recording.
        """
        stored = _stored(self.db, decision_id)
        matched = next((w for w in stored.body["works"] if w["track_id"] == track_id), None)
        if matched is None:
            raise ApiError(404, "not_found", f"decision {decision_id} has no claim of track {track_id}")
        evidence = self.db.decision_evidence(decision_id).get(track_id)
        if evidence is not None and evidence.spectrogram_start is not None:
            start, end = evidence.spectrogram_start, evidence.spectrogram_end
        else:
            start = max(0.0, matched["query_start"] - 1.0)
            end = min(stored.body["fingerprint"]["duration"], matched["query_end"] + 1.0,
                      start + self.settings.spectrogram_max_seconds)
        work = self.db.get_work(matched["work_id"]) if matched["work_id"] is not None else None
        ref_start = matched["offset"] + matched["time_ratio"] * start
        ref_end = matched["offset"] + matched["time_ratio"] * end
        if work is not None:
            ref_start, ref_end = max(0.0, ref_start), min(work.duration, ref_end)
        return SpanRegions(matched, work, round(start, 3), round(end, 3), round(max(0.0, ref_start), 3),
                           round(max(ref_start, ref_end), 3))

    def reference_audio(self, regions: SpanRegions) -> tuple[np.ndarray, str]:
        """The reference's samples over the matched region, and their source: ``recording`` (as kept), or
        ``resynthesised-peaks`` for a work published from an upload (only its fingerprint is kept); 404 when
        the work is gone."""
        if regions.work is None:
            raise ApiError(404, "not_found", f"track {regions.matched['track_id']} has no registered work: its "
                                             "reference recording is not kept by the service")
        if is_stored_fingerprint(regions.work.stored_path):
            try:
                blob = Path(regions.work.stored_path).read_bytes()
            except OSError as err:
                log.error("work %s: its stored fingerprint cannot be read: %s", regions.work.work_id, err)
                raise ApiError(404, "not_found", f"the stored fingerprint of work {regions.work.work_id} cannot be "
                                                 "read") from None
            return self._resynthesised(blob, regions.ref_start, regions.ref_end)[0], "resynthesised-peaks"
        rate = self.refrain.params.sample_rate
        samples = self._reference_samples(regions.work)
        return samples[int(regions.ref_start * rate):int(regions.ref_end * rate)], "recording"

    def upload_resynthesis(self, decision_id: str, regions: SpanRegions) -> tuple[np.ndarray, int]:
        """The upload's matched region resynthesised from its stored fingerprint peaks (the upload's audio is not
        kept), and how many peaks it is made of; 404 for a decision stored before fingerprints were kept."""
        stored = self.db.rescan_candidate(decision_id)
        if stored is None or stored.fingerprint is None:
            raise ApiError(404, "not_found", f"decision {decision_id} was stored before upload fingerprints were "
                                             "kept: nothing to resynthesise")
        return self._resynthesised(stored.fingerprint, regions.start, regions.end)

    def _resynthesised(self, blob: bytes, start: float, end: float) -> tuple[np.ndarray, int]:
        """A stored fingerprint's peaks between ``start`` and ``end`` (s) as sound, and how many peaks that is."""
        params = self.refrain.params
        fp = fingerprint_from_bytes(blob, params)
        peaks = fp.dense_peaks if fp.dense_peaks is not None else fp.peaks
        seconds = peaks.frames * params.hop_length / params.sample_rate
        inside = (seconds >= start) & (seconds < end)
        audio = resynthesise_peaks(peaks.frames[inside], peaks.bins[inside], peaks.strength[inside], params,
                                   start, end)
        return audio, int(inside.sum())

    def evidence_audio(self, decision_id: str, track_id: int, side: str) -> tuple[bytes, str]:
        """WAV of a matched work's region: ``side`` ``reference`` (the kept recording, or a published work's
        fingerprint resynthesised) or ``upload`` (resynthesised from the fingerprint's peaks: the upload's audio is
        not kept); and which of the two it is."""
        regions = self.matched_regions(decision_id, track_id)
        rate = self.refrain.params.sample_rate
        if side == "reference":
            samples, source = self.reference_audio(regions)
            return wav_bytes(samples, rate), source
        return wav_bytes(self.upload_resynthesis(decision_id, regions)[0], rate), "resynthesised-peaks"

    def reference_spectrogram(self, regions: SpanRegions) -> bytes:
        """PNG of the reference's spectrogram over the matched region (as the upload's is drawn)."""
        return spectrogram_png(self.reference_audio(regions)[0], self.refrain.params)

    def cover_view(self, decision_id: str, regions: SpanRegions) -> tuple | None:
        """A cover's chroma alignment over its spans (:func:`cover_alignment`), from the stored fingerprint's
        chroma and the reference recording; None if either is missing."""
        stored = self.db.rescan_candidate(decision_id)
        if regions.work is None or stored is None or stored.fingerprint is None:
            return None
        melody = fingerprint_from_bytes(stored.fingerprint, self.refrain.params).melody
        return cover_alignment(self.refrain.params, melody, regions.matched, self._reference_samples(regions.work))


@dataclass(frozen=True)
class SpanRegions:
    """The upload and reference stretches shown for one matched work of a stored decision (seconds).

    Attributes
    ----------
    matched : dict
        The work as in the decision's answer.
    work : Work or None
        Its registered work (None: no reference recording is kept).
    start, end : float
        Upload region.
    ref_start, ref_end : float
        Reference region aligned with it.
    """

    matched: dict
    work: Work | None
    start: float
    end: float
    ref_start: float
    ref_end: float


def cover_alignment(params: FingerprintParams, upload_chroma: np.ndarray | None, matched: dict,
                    reference: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """How the upload's chroma lines up with the reference's along a cover match's line.

    Parameters
    ----------
    params : FingerprintParams
        The index's analysis settings (its melody settings make the chroma).
    upload_chroma : np.ndarray, shape (n, 12), or None
        The upload's chroma sequence (:attr:`fingerprint.Fingerprint.melody`).
    matched : dict
        The match (``spans``, ``offset``, ``time_ratio``, ``pitch_shift_semitones``).
    reference : np.ndarray
        The reference recording's samples.

    Returns
    -------
    (times, ref_times, upload, ref, agreement) or None
        For each upload chroma frame inside the match's spans: its time, the reference time on
        ``ref = offset + time_ratio × time``, both pitch-class profiles (the upload's rotated by the
        key shift onto the reference's key) and their correlation. None without chroma.
    """
    if upload_chroma is None or params.melody is None or len(upload_chroma) == 0:
        return None
    S_db = log_frequency_spectrogram(reference, params.sample_rate, params.n_fft, params.hop_length, params.fmin,
                                     params.fmax, params.bins_per_octave)
    ref_chroma = chroma_sequence(S_db, params.bins_per_octave, params.fmin, params.melody)
    frame = params.melody.frames_per_chroma * params.hop_length / params.sample_rate
    times = (np.arange(len(upload_chroma)) + 0.5) * frame
    inside = np.zeros(len(times), dtype=bool)
    for span in matched["spans"]:
        inside |= (times >= span["query_start"]) & (times < span["query_end"])
    ref_times = matched["offset"] + matched["time_ratio"] * times
    ref_frames = np.floor(ref_times / frame).astype(int)
    inside &= (ref_frames >= 0) & (ref_frames < len(ref_chroma))
    if not inside.any():
        return None
    shift = int(round(matched["pitch_shift_semitones"]))
    upload = np.roll(upload_chroma[inside], -shift, axis=1)
    ref = ref_chroma[ref_frames[inside]]
    agreement = np.einsum("ij,ij->i", upload, ref)
    return times[inside], ref_times[inside], upload, ref, agreement


@dataclass(frozen=True)
class UploadDecision:
    """An upload's fingerprint matched against the index and decided under the current policies.

    Attributes
    ----------
    result : QueryResult
        Every catalogue track found.
    decision : policy.Decision
        The verdict, one :class:`policy.WorkDecision` per match that is a claim (same order): a match
        aligned only inside its work's excluded reference spans has none.
    works : dict of int to Work
        The registered work of each matched track that has one.
    policies : dict of int to policy.Policy
        The policies set for those works.
    points : dict of int to np.ndarray
        The aligned (query s, reference s) points behind each matched track.
    claims : tuple of LineageClaim
        The ancestors of matched derivatives, attributed the upload too (:mod:`policy.lineage`).
    ancestors : dict of int to Work
        Those ancestors' works by work id (``policies`` has their policies in force).
    """

    result: QueryResult
    decision: policy.Decision
    works: dict[int, Work]
    policies: dict[int, policy.Policy]
    points: dict[int, np.ndarray]
    claims: tuple[LineageClaim, ...] = ()
    ancestors: dict[int, Work] = field(default_factory=dict)


def decide_upload(refrain: Refrain, db: ServiceDB, fp: Fingerprint, filename: str, principal: str | None,
                  licences: list[policy.Licence], at: datetime, review_confidence: float,
                  published_as: Work | None = None) -> UploadDecision:
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
    published_as : Work, optional
        The work this upload was published as (a rescan of its decision): the upload is
        that recording, so it is judged against the works it derives from, not itself.
    """
    result, points = refrain.match_with_evidence(fp, filename, stats=tier_timings())
    return decide_matched(db, result, points, fp.duration, principal, licences, at, review_confidence, published_as)


def decide_matched(db: ServiceDB, result: QueryResult, points: dict[int, np.ndarray], duration: float,
                   principal: str | None, licences: list[policy.Licence], at: datetime, review_confidence: float,
                   published_as: Work | None = None) -> UploadDecision:
    """:func:`decide_upload` of an upload already matched (e.g. streamed: :meth:`refrain.api.Refrain.match_stream`).

    Parameters
    ----------
    db : ServiceDB
    result : QueryResult
        The upload's matches.
    points : dict of int to np.ndarray
        The aligned points behind each matched track.
    duration : float
        The upload's length in seconds.
    principal, licences, at, review_confidence, published_as
        As for :func:`decide_upload`.
    """
    if published_as is not None:
        result = replace(result, matches=[m for m in result.matches if m.track_id != published_as.track_id])
    works = db.works_by_track([m.track_id for m in result.matches])
    links = db.ancestor_links([w.work_id for w in works.values()])
    ancestors = db.works_by_id(sorted({link.parent_work_id for link in links}))
    # Works without a policy of their own get their owner's default (a rights holder's consent given once).
    policies = db.effective_policies(sorted({w.work_id for w in works.values()} | set(ancestors)))
    # Ancestors' exclusions too: a lineage claim is cut by its work's excluded spans like a direct claim.
    exclusions = db.exclusions_by_work(sorted({w.work_id for w in works.values()} | set(ancestors)))
    matches = [policy.MatchedWork(work_id=works[m.track_id].work_id if m.track_id in works else None,
                                  track_id=m.track_id, kind=m.kind, confidence=m.confidence,
                                  spans=tuple((s.query_start, s.query_end) for s in m.spans),
                                  aligned_spans=tuple((s.query_start, s.query_end, s.ref_start, s.ref_end)
                                                      for s in m.spans))
               for m in result.matches]
    decision = policy.decide(matches, policies, licences, principal, duration, at, review_confidence,
                             exclusions=exclusions)
    if not links:
        return UploadDecision(result, decision, works, policies, points)
    parents: dict[int, list[LineageLink]] = {}
    for link in links:
        parents.setdefault(link.work_id, []).append(LineageLink(
            link.work_id, link.parent_work_id, link.kind, link.share,
            tuple((s["query_start"], s["query_end"], s["ref_start"], s["ref_end"]) for s in link.spans)))
    judged = decide_lineage(matches, decision, parents, {w.work_id: w.track_id for w in ancestors.values()},
                            policies, licences, principal, duration, at, review_confidence,
                            exclusions=exclusions)
    return UploadDecision(result, judged.decision, works, policies, points, judged.claims, ancestors)


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
                  for m in decided.result.matches if m.track_id in by_track],
        "total_share_owed": decided.decision.total_share_owed,
        "fingerprint": fingerprint,
        "lineage": [_lineage_claim(claim, decided.ancestors[claim.decision.work_id], decided.policies)
                    for claim in decided.claims],
    }


def _royalty_out(decided: policy.WorkDecision) -> dict:
    return {"covered_seconds": decided.covered_seconds, "duration_share": decided.duration_share,
            "royalty_share": decided.royalty_share, "share_owed": decided.share_owed,
            "excluded_seconds": decided.excluded_seconds}


def _lineage_claim(claim: LineageClaim, ancestor: Work, policies: dict) -> dict:
    """A lineage claim as :class:`service.schemas.LineageClaimOut` fields."""
    decided = claim.decision
    return {"work_id": ancestor.work_id, "track_id": ancestor.track_id, "title": ancestor.title,
            "rights_holder": ancestor.rights_holder, "via_work_id": claim.via_work_id,
            "via_track_id": claim.via_track_id, "path": list(claim.path), "kind": claim.kind, "use": decided.use,
            "policy": policy_out(policies.get(ancestor.work_id)), "action": decided.action,
            "outcome": decided.outcome, "licence_id": decided.licence_id, "reason": decided.reason,
            "royalty": _royalty_out(decided),
            "spans": [{"query_start": q0, "query_end": q1, "ref_start": r0, "ref_end": r1}
                      for q0, q1, r0, r1 in claim.spans]}


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
        "royalty": _royalty_out(decided),
    }


def _claims_of(body: dict) -> list[dict]:
    """Every claim of a stored answer: its matched works, then its lineage claims. They count alike (a track id
    names a work and its claims, docs/lineage.md); answers stored before lineage have none of the latter."""
    return [*body["works"], *body.get("lineage", [])]


def _work_decisions(body: dict) -> list[policy.WorkDecision]:
    """A stored answer's claims (:func:`_claims_of`) as the policy layer sees them."""
    return [policy.WorkDecision(work_id=w["work_id"], track_id=w["track_id"], use=w["use"], action=w["action"],
                                outcome=w["outcome"], licence_id=w["licence_id"], reason=w["reason"],
                                covered_seconds=w["royalty"]["covered_seconds"],
                                duration_share=w["royalty"]["duration_share"],
                                royalty_share=w["royalty"]["royalty_share"], share_owed=w["royalty"]["share_owed"],
                                excluded_seconds=w["royalty"].get("excluded_seconds", 0.0))
            for w in _claims_of(body)]


def _resolved_body(body: dict, resolutions: dict[int, str], note: str) -> tuple[dict, policy.Decision]:
    """A stored answer with ``resolutions`` applied and its verdict re-derived (ValueError from the policy)."""
    resolved = policy.resolve(_work_decisions(body), resolutions, note)
    updated = [{**w, "outcome": new.outcome, "reason": new.reason,
                "royalty": {**w["royalty"], "share_owed": new.share_owed}}
               for w, new in zip(_claims_of(body), resolved.works)]
    new_body = {**body, "verdict": resolved.verdict, "reason": resolved.reason,
                "total_share_owed": resolved.total_share_owed, "works": updated[:len(body["works"])]}
    if "lineage" in body:
        new_body["lineage"] = updated[len(body["works"]):]
    return new_body, resolved


def with_standing_resolutions(body: dict, standing: dict[int, tuple[str, str]]) -> dict:
    """A freshly decided answer with the analysts' standing resolutions applied again to the claims still found
    (a released claim stays released, a confirmed one blocked, an allowed one allowed): what a rescan stores.

    Parameters
    ----------
    body : dict
        The answer as :func:`decision_body` made it.
    standing : dict of int to (str, str)
        Track id -> (resolution, note), from :meth:`ServiceDB.standing_resolutions`.
    """
    for track_id, (resolution, note) in sorted(standing.items()):
        if any(w["track_id"] == track_id for w in _claims_of(body)):
            body, _ = _resolved_body(body, {track_id: resolution}, note)
    return body


def _stored(db: ServiceDB, decision_id: str):
    stored = db.get_decision(decision_id)
    if stored is None:
        raise ApiError(404, "not_found", f"decision {decision_id} not found")
    return stored


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
    body = _stored(db, decision_id).body
    try:
        new_body, resolved = _resolved_body(body, resolutions, note)
    except ValueError as err:
        raise ApiError(422, "validation_error", f"decision {decision_id}: {err}") from None
    if not db.apply_resolution(decision_id, "rev_" + secrets.token_urlsafe(9), utc_now(), body, new_body, actor,
                               note, resolutions):
        raise ApiError(409, "conflict", f"decision {decision_id} changed while it was being resolved; "
                                        "reload it and resolve again")
    annotate(decision_id=decision_id, verdict=resolved.verdict)
    return new_body


def file_dispute(db: ServiceDB, decision_id: str, key: ApiKey, reason: str, text: str) -> Dispute:
    """The uploader's principal disputes the claims on one of its stored decisions.

    Raises
    ------
    ApiError
        404 for an unknown decision, 403 when another principal made it, 422 when it holds
        no claim to dispute (nothing blocked or under review), 409 when a dispute of it is open.
    """
    body = _stored(db, decision_id).body
    if db.decision_principal_id(decision_id) != key.principal_id:
        raise ApiError(403, "forbidden", f"decision {decision_id} was made for another principal than "
                                         f"{key.principal!r}: only its uploader may dispute it")
    claims = policy.disputed_claims(_work_decisions(body))
    if not claims:
        raise ApiError(422, "validation_error", f"decision {decision_id} ({body['verdict']}) holds no blocked "
                                                "or reviewed claim to dispute")
    try:
        # A track id names a matched work and its lineage claims alike: each disputed track once.
        dispute = db.add_dispute(decision_id, key.principal_id, reason, text,
                                 list(dict.fromkeys(w.track_id for w in claims)))
    except DisputeOpenError as err:
        raise ApiError(409, "dispute_open", f"{err}: wait for an analyst to resolve it") from None
    annotate(decision_id=decision_id, dispute_id=dispute.dispute_id)
    return dispute


def close_dispute(db: ServiceDB, dispute_id: str, outcome: str, note: str, actor: str) -> Dispute:
    """An analyst closes an open dispute: the disputed claims are released or confirmed, the verdict
    re-derived and kept in the decision history (kind ``dispute``, who and why); ``release_and_exclude``
    also excludes each released work's matched reference span from its future claims.

    Raises
    ------
    ApiError
        404 for an unknown dispute, 409 when it is already resolved or its decision changed meanwhile.
    """
    dispute = db.get_dispute(dispute_id)
    if dispute is None:
        raise ApiError(404, "not_found", f"dispute {dispute_id} not found")
    if dispute.resolved_at is not None:
        raise ApiError(409, "conflict", f"dispute {dispute_id} was already resolved ({dispute.outcome})")
    body = _stored(db, dispute.decision_id).body
    works = [w for w in _work_decisions(body) if w.track_id in dispute.track_ids]
    resolutions = policy.dispute_resolutions(works, outcome)
    new_body, resolved = _resolved_body(body, resolutions, f"dispute {dispute_id} ({outcome}): {note}")
    exclusions = []
    if outcome == "release_and_exclude":
        for work in _claims_of(body):  # an ancestor's span too: a lineage claim's spans are on its recording
            if work["track_id"] in resolutions and work["work_id"] is not None:
                exclusions.extend((work["work_id"], start, end) for start, end in
                                  policy.merge_spans([(s["ref_start"], s["ref_end"]) for s in work["spans"]]))
    if not db.resolve_dispute(dispute_id, outcome, note, actor, body, new_body, exclusions, resolutions):
        raise ApiError(409, "conflict", f"dispute {dispute_id} or its decision changed while it was being "
                                        "resolved; reload it and resolve again")
    annotate(decision_id=dispute.decision_id, dispute_id=dispute_id, verdict=resolved.verdict)
    return db.get_dispute(dispute_id)


def close_conflict(db: ServiceDB, conflict_id: int, resolution: str, note: str, actor: str) -> WorkConflict:
    """An admin resolves an ownership conflict: the hold on royalties is lifted and, unless both share the span,
    the losing work's side of the span is excluded from its future claims.

    Raises
    ------
    ApiError
        404 for an unknown conflict, 409 when it is already resolved.
    """
    conflict = db.get_conflict(conflict_id)
    if conflict is None:
        raise ApiError(404, "not_found", f"conflict {conflict_id} not found")
    loser = policy.conflict_loser(resolution, conflict.work_id, conflict.claimed_work_id, conflict.spans)
    if not db.resolve_conflict(conflict_id, resolution, note, actor, loser):
        raise ApiError(409, "conflict", f"conflict {conflict_id} was already resolved")
    return db.get_conflict(conflict_id)


def conflict_claims(conflicts: list[WorkConflict]) -> list[policy.ConflictClaim]:
    """Both sides of each open conflict, as the policy's hold rule reads them."""
    claims = []
    for c in conflicts:
        claims.append(policy.ConflictClaim(c.conflict_id, c.work_id, tuple(
            policy.merge_spans([(s["query_start"], s["query_end"]) for s in c.spans]))))
        claims.append(policy.ConflictClaim(c.conflict_id, c.claimed_work_id, tuple(
            policy.merge_spans([(s["ref_start"], s["ref_end"]) for s in c.spans]))))
    return claims


def with_holds(body: dict, claims: list[policy.ConflictClaim]) -> dict:
    """A decision's answer with each royalty line marked ``held`` (and by which conflicts) while an open
    ownership conflict claims the span of the work it matched. Computed when read: a resolution lifts it."""
    def marked(work: dict) -> dict:
        held = policy.held_by(work["work_id"], [(s["ref_start"], s["ref_end"]) for s in work.get("spans", [])],
                              claims)
        return {**work, "royalty": {**work["royalty"], "held": bool(held), "held_by_conflicts": held}}

    marked_body = {**body, "works": [marked(work) for work in body["works"]]}
    if "lineage" in body:  # a lineage claim's spans are on its ancestor's recording: held like a direct claim
        marked_body["lineage"] = [marked(claim) for claim in body["lineage"]]
    return marked_body


def jsonable(value):
    """The body with datetimes as ISO strings, for the decisions table."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value

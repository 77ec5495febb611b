"""What the HTTP routes call: the catalogue and match operations over Refrain, policy and the database.

No fingerprinting or matching logic lives here: audio goes through
:mod:`fingerprint` and :class:`refrain.api.Refrain`, verdicts come from
:func:`policy.decide`. This module only sequences those calls, holds the
readers–writer lock around the index, and stores what was decided.
"""

from __future__ import annotations

import logging
import re
import secrets
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from refrain import policy
from refrain.fingerprint import (AudioDecodeError, AudioTooLongError, Fingerprint, FingerprintError,
                         fingerprint_signal, load_audio)
from refrain.fingerprint.serialize import fingerprint_to_bytes
from refrain.index import TrackMetadata
from refrain.api import QueryResult, Refrain, TrackMatch
from refrain.config import Config
from refrain.service.db import ApiKey, ServiceDB, Work, WorkEvidence, utc_now
from refrain.service.errors import ApiError
from refrain.service.locking import ReadWriteLock
from refrain.service.render import spectrogram_png
from refrain.service.settings import ServiceSettings
from refrain.service.uploads import ReceivedForm

__all__ = ["MatchService", "MatchOutcome", "UploadDecision", "decide_upload", "decision_body", "jsonable",
           "policy_out", "work_out", "licence_out"]

log = logging.getLogger("refrain.service")

_ISRC = re.compile(r"^[A-Z]{2}[A-Z0-9]{3}[0-9]{7}$")


@dataclass(frozen=True)
class MatchOutcome:
    """The answer to one upload (``body``, shaped as :class:`service.schemas.DecisionOut`) and its evidence."""

    body: dict
    evidence: list[WorkEvidence]


def policy_out(policy_: policy.Policy | None) -> dict:
    """A work's policy as :class:`service.schemas.PolicyOut` fields (None: the default)."""
    effective = policy_ or policy.DEFAULT_POLICY
    return {"copy": effective.copy, "remix": effective.remix, "cover": effective.cover,
            "royalty_share": effective.royalty_share, "is_default": policy_ is None}


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
        self.db = ServiceDB(settings.db_path)
        config = Config(max_query_seconds=settings.max_upload_seconds,
                        max_track_seconds=settings.max_reference_seconds).searching_covers(settings.match_covers)
        try:
            self.refrain = Refrain.open(settings.index_dir, config=config, writable=True, create=True)
        except BaseException:
            self.db.close()
            raise
        try:
            self.refrain.warm_up()  # the first upload must not wait for compilation
        except BaseException:
            self.refrain.close()
            self.db.close()
            raise
        upgradable = self.refrain.store.upgradable()
        if upgradable:
            log.warning("%s: index from an earlier Refrain (%s tiers): lookups are slower until "
                        "`refrain upgrade --index %s` (with the service stopped)", settings.index_dir,
                        ", ".join(upgradable), settings.index_dir)
        self.lock = ReadWriteLock()
        settings.works_dir.mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        with self.lock.write():
            self.refrain.close()
            self.db.close()

    def track_count(self) -> int:
        with self.lock.read():
            return self.refrain.info().tracks

    # -- catalogue -----------------------------------------------------------------------------

    def add_work(self, form: ReceivedForm) -> Work:
        """Ingest an uploaded reference recording and register it as a work.

        A recording already registered as a work raises 409; one already in the index
        without a work (ingested with the CLI) is adopted as this work.
        """
        title, rights_holder = form.first("title"), form.first("rights_holder")
        artists, isrc = form.all("artists"), form.first("isrc")
        problems = [f"{name} is required" for name, value in
                    (("title", title), ("rights_holder", rights_holder), ("artists", artists)) if not value]
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
            load_audio(form.file_path, self.refrain.params.sample_rate, self.settings.max_reference_seconds)
        except AudioDecodeError as err:
            raise _audio_error(err, form.file_path, form.filename) from None

        suffix = Path(form.filename).suffix.lower()[:16]
        stored = self.settings.works_dir / f"{form.sha256[:32]}{suffix}"
        shutil.move(form.file_path, stored)
        form.file_path = None
        metadata = TrackMetadata(title=title, artist=", ".join(artists), isrc=isrc)
        keep_file = False
        try:
            with self.lock.write():
                # Refrain.ingest fingerprints inside this lock: the API has no way to add a
                # fingerprint computed beforehand (see the report to the lead).
                (result,) = list(self.refrain.ingest([stored], metadata=metadata))
                if result.status == "error":
                    raise _audio_error(FingerprintError(result.error.replace(str(stored), form.filename)),
                                       stored, form.filename)
                existing = self.db.works_by_track([result.track_id]).get(result.track_id)
                if existing is not None:
                    keep_file = True  # the same bytes: it *is* the existing work's file
                    raise ApiError(409, "conflict", f"this recording is already in the catalogue as "
                                                    f"work {existing.work_id}")
                work = self.db.add_work(result.track_id, title, artists, rights_holder, isrc,
                                        form.filename, str(stored), result.duration)
                keep_file = True
                return work
        finally:
            if not keep_file:
                stored.unlink(missing_ok=True)

    def delete_work(self, work_id: int) -> Work:
        """Remove a work from the index and the catalogue; its decisions stay for the audit."""
        work = self.db.get_work(work_id)
        if work is None:
            raise ApiError(404, "not_found", f"work {work_id} not found")
        with self.lock.write():
            try:
                self.refrain.remove(work.track_id)
            except KeyError:
                log.warning("work %s: track %s was already gone from the index", work_id, work.track_id)
            self.db.delete_work(work_id)
        Path(work.stored_path).unlink(missing_ok=True)
        return work

    # -- matching ------------------------------------------------------------------------------

    def match_upload(self, form: ReceivedForm, key: ApiKey, store: bool) -> MatchOutcome:
        """Decode, fingerprint, match, decide, and (if ``store``) record the decision."""
        uploader_id = form.first("uploader_id")
        licence_ids = form.all("licence_id")
        if uploader_id is not None and len(uploader_id) > 200:
            raise ApiError(422, "validation_error", "uploader_id is longer than 200 characters")
        licences = []
        for licence_id in licence_ids:
            licence = self.db.get_licence(licence_id)
            if licence is None:
                raise ApiError(404, "not_found", f"licence {licence_id} not found")
            licences.append(licence)

        params = self.refrain.params
        try:
            samples = load_audio(form.file_path, params.sample_rate, self.settings.max_upload_seconds)
            fp = fingerprint_signal(samples, params, dense_peaks=True)
        except (AudioDecodeError, FingerprintError) as err:
            raise _audio_error(err, form.file_path, form.filename) from None

        now = utc_now()
        with self.lock.read():
            # One consistent snapshot: the index, the works and their policies cannot change
            # between the match and the decision (catalogue writes take the write side).
            decided = decide_upload(self.refrain, self.db, fp, form.filename, uploader_id, licences, now,
                                    self.settings.review_confidence)

        stored_evidence = [self._evidence(m, decided.points[m.track_id], decided.works.get(m.track_id), samples)
                           for m in decided.result.matches]
        body = decision_body(decided, decision_id=("dec_" + secrets.token_urlsafe(12)) if store else None,
                             stored=store, created_at=now, uploader_id=uploader_id, licence_ids=licence_ids,
                             fingerprint={"sha256": form.sha256, "bytes": form.file_bytes,
                                          "duration": round(fp.duration, 3), "landmarks": len(fp),
                                          "landmarks_per_second": round(len(fp) / max(fp.duration, 1e-9), 2)})
        if store:
            self.db.add_decision(body["decision_id"], now, decided.decision.verdict, uploader_id, key.prefix,
                                 form.filename, jsonable(body), stored_evidence,
                                 fingerprint_to_bytes(fp, params))
        return MatchOutcome(body, stored_evidence)

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


def decide_upload(refrain: Refrain, db: ServiceDB, fp: Fingerprint, filename: str, uploader_id: str | None,
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
    uploader_id : str or None
        Who uploaded; licences only cover their licensee.
    licences : list of policy.Licence
        The licences declared with the upload.
    at : datetime
        When the verdict is taken (licence validity is judged then).
    review_confidence : float
        See :class:`service.settings.ServiceSettings`.
    """
    result, points = refrain.match_with_evidence(fp, filename)
    works = db.works_by_track([m.track_id for m in result.matches])
    policies = db.policies([w.work_id for w in works.values()])
    decision = policy.decide(
        [policy.MatchedWork(work_id=works[m.track_id].work_id if m.track_id in works else None,
                            track_id=m.track_id, kind=m.kind, confidence=m.confidence,
                            spans=tuple((s.query_start, s.query_end) for s in m.spans))
         for m in result.matches],
        policies, licences, uploader_id, fp.duration, at, review_confidence)
    return UploadDecision(result, decision, works, policies, points)


def decision_body(decided: UploadDecision, *, decision_id: str | None, stored: bool, created_at: datetime,
                  uploader_id: str | None, licence_ids: list[str], fingerprint: dict) -> dict:
    """The answer to an upload, shaped as :class:`service.schemas.DecisionOut`.

    ``fingerprint`` is the upload's summary (sha256, bytes, duration, landmarks,
    landmarks_per_second), kept as first reported when a rescan rewrites the answer.
    """
    by_track = {w.track_id: w for w in decided.decision.works}
    return {
        "decision_id": decision_id, "stored": stored, "created_at": created_at,
        "filename": decided.result.query, "uploader_id": uploader_id, "licence_ids": licence_ids,
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


def jsonable(value):
    """The body with datetimes as ISO strings, for the decisions table."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value

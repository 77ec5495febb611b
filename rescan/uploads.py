"""Re-check past uploads: would each stored decision still get the same verdict today?

Every stored decision keeps its upload's fingerprint (peaks only, see
:mod:`fingerprint.serialize`). A rescan rebuilds it, matches it against the
current index and decides again through :func:`service.core.decide_upload` — the
very step ``POST /v1/matches`` runs — with the current works, policies and
licences, the licences and uploader id declared with the upload, at the run's
start time, the analysts' standing resolutions of its claims applied again (a
released claim stays released). A decision whose verdict would change is reported (old → new, and
why, work by work); with ``apply`` the new answer replaces the stored one, the
old one is kept in the decision's history (``decision_changes``), and each change
is sent to the webhooks an admin subscribed to ``decision.rescanned`` (signed,
retried, logged in the service's delivery log, as the service sends its own).

Decisions stored before fingerprints were kept are ``skipped`` items, not failures.

Outputs in the run's folder: ``items.jsonl`` (one record per decision) and
``summary.csv`` (the same, one row each).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import cast

import numpy as np

from refrain.fingerprint import FingerprintError
from refrain.fingerprint.serialize import FingerprintFormatError, fingerprint_from_bytes
from refrain.api import Refrain
from refrain.cluster import ClusterRefrain, open_for_matching
from refrain.rescan.jobs import RescanOptions, RunResult, RunUsageError, finish, run_items, write_csv, write_jsonl
from refrain.service.core import decide_upload, decision_body, jsonable, with_standing_resolutions
from refrain.service.db import ServiceDB, WorkEvidence
from refrain.service.settings import ServiceSettings
from refrain.service.webhooks import DeliveryLog, notify

__all__ = ["UploadsJob", "UploadsReport", "rescan_uploads", "explain_change", "SUMMARY_COLUMNS"]

#: Columns of ``summary.csv``: one row per stored decision looked at.
SUMMARY_COLUMNS = ["item", "status", "created_at", "filename", "uploader_id", "old_verdict", "new_verdict",
                   "changed", "applied", "why", "error"]

#: Record fields that only carry what ``apply`` writes; kept in the checkpoint, not in the outputs.
_APPLY_FIELDS = ("new_body", "new_evidence")


def _work_label(work: dict) -> str:
    return f"work {work['work_id']} ({work['title']})" if work["work_id"] is not None \
        else f"track {work['track_id']} (no registered work)"


def explain_change(old: dict, new: dict) -> list[str]:
    """Why a decision's answer changed, one sentence per matched work that appeared, went or changed outcome.

    Parameters
    ----------
    old, new : dict
        The stored answer and the recomputed one (``DecisionOut`` shape).
    """
    before: dict[int, dict] = {w["track_id"]: w for w in old["works"]}
    after: dict[int, dict] = {w["track_id"]: w for w in new["works"]}
    reasons = []
    for track_id in sorted(before.keys() | after.keys()):
        if track_id not in before:
            now = after[track_id]
            reasons.append(f"{_work_label(now)} now matches as {now['kind']}: {now['outcome']} ({now['reason']})")
        elif track_id not in after:
            reasons.append(f"{_work_label(before[track_id])} no longer matches")
        else:
            was, now = before[track_id], after[track_id]
            if (was["outcome"], was["work_id"]) != (now["outcome"], now["work_id"]):
                reasons.append(f"{_work_label(now)}: {was['outcome']} -> {now['outcome']} ({now['reason']})")
    # Ancestors attributed through a matched derivative's lineage (docs/lineage.md), by route.
    claims_before = {tuple(c["path"]): c for c in old.get("lineage", [])}
    claims_after = {tuple(c["path"]): c for c in new.get("lineage", [])}
    for path in sorted(claims_before.keys() | claims_after.keys()):
        if path not in claims_before:
            claim = claims_after[path]
            reasons.append(f"ancestor {_work_label(claim)} through work {path[0]} is now attributed: "
                           f"{claim['outcome']} ({claim['reason']})")
        elif path not in claims_after:
            reasons.append(f"ancestor {_work_label(claims_before[path])} through work {path[0]} is no longer "
                           "attributed")
        elif claims_before[path]["outcome"] != (claim := claims_after[path])["outcome"]:
            reasons.append(f"ancestor {_work_label(claim)} through work {path[0]}: "
                           f"{claims_before[path]['outcome']} -> {claim['outcome']} ({claim['reason']})")
    return reasons


@dataclass(frozen=True)
class UploadsJob:
    """The per-decision work of an uploads rescan (pickled to the workers).

    Attributes
    ----------
    index_dir, db_path : str
        The index directory and the service database, as every worker sees them.
    at : str
        ISO instant the verdicts are taken at (the run's start: the same for every item,
        also after a resume).
    review_confidence : float
        The service's setting (:class:`service.settings.ServiceSettings`).
    cluster : bool
        ``index_dir`` is a cluster directory (:mod:`refrain.cluster`): match through its router.
    """

    index_dir: str
    db_path: str
    at: str
    review_confidence: float
    cluster: bool = False

    def open(self) -> tuple[Refrain | ClusterRefrain, ServiceDB]:
        return open_for_matching(self.index_dir, self.cluster), ServiceDB(Path(self.db_path))

    def process(self, context: tuple[Refrain | ClusterRefrain, ServiceDB], decision_id: str) -> dict:
        """Decide one stored decision again; the record says whether its verdict changes."""
        refrain, db = context
        stored = db.rescan_candidate(decision_id)
        if stored is None:
            return {"status": "skipped", "why": "the decision is no longer stored"}
        old = stored.body
        head = {"created_at": old["created_at"], "filename": old["filename"],
                "uploader_id": old["uploader_id"], "old_verdict": stored.verdict}
        if stored.fingerprint is None:
            return {"status": "skipped", **head,
                    "why": "stored before upload fingerprints were kept: cannot be re-checked"}
        try:
            fp = fingerprint_from_bytes(stored.fingerprint, refrain.params)
        except (FingerprintFormatError, FingerprintError) as err:
            return {"status": "failed", **head, "error": f"stored fingerprint unusable: {err}"}
        # A licence is never deleted (revoking keeps it), so a missing id cannot cover anything.
        licences = [found for found in map(db.get_licence, old["licence_ids"]) if found is not None]
        # Licences are checked against the principal whose key made the upload, as at upload time.
        # A cluster's router has Refrain's matching API; decide_upload is annotated with Refrain alone.
        decided = decide_upload(cast(Refrain, refrain), db, fp, old["filename"], old.get("principal"), licences,
                                datetime.fromisoformat(self.at), self.review_confidence,
                                published_as=db.published_work(decision_id))
        new = jsonable(decision_body(decided, decision_id=decision_id, stored=True,
                                     created_at=stored.created_at, principal=old.get("principal"),
                                     uploader_id=old["uploader_id"],
                                     licence_ids=old["licence_ids"], fingerprint=old["fingerprint"]))
        # What analysts resolved (reviews, disputes) still stands on the claims found again.
        new = with_standing_resolutions(new, db.standing_resolutions(decision_id))
        record = {"status": "ok", **head, "new_verdict": new["verdict"],
                  "changed": new["verdict"] != stored.verdict}
        if record["changed"]:
            reasons = explain_change(old, new)
            record["why"] = "; ".join(reasons) if reasons else new["reason"]
            newly_matched = {w["track_id"] for w in new["works"]} - {w["track_id"] for w in old["works"]}
            record["new_body"] = new
            record["new_evidence"] = [
                {"track_id": m.track_id,
                 "work_id": decided.works[m.track_id].work_id if m.track_id in decided.works else None,
                 "points": np.asarray(decided.points[m.track_id]).round(3).tolist()}
                for m in decided.result.matches if m.track_id in newly_matched]
        return record


@dataclass(frozen=True)
class UploadsReport:
    """A finished uploads rescan: the run, and how many verdicts would change / were changed."""

    run: RunResult
    changed: int
    applied: int


def _apply(db: ServiceDB, run: RunResult, apply: bool) -> int:
    """Write every changed verdict of the run if ``apply``; marks each changed record ``applied``.

    Idempotent: a resumed run applies again safely (one history entry per run and decision).
    """
    applied = 0
    changed_at = run.state.started()
    for record in run.records:
        if not record.get("changed"):
            continue
        record["applied"] = False
        if not apply:
            continue
        evidence = [WorkEvidence(track_id=e["track_id"], work_id=e["work_id"],
                                 points=np.asarray(e["points"], dtype=np.float32).reshape(-1, 2),
                                 spectrogram_png=None, spectrogram_start=None, spectrogram_end=None)
                    for e in record["new_evidence"]]
        db.apply_rescan_change(record["item"], run.state.run_id, changed_at, record["old_verdict"],
                               record["new_body"], record["why"], evidence)
        record["applied"] = db.rescan_applied(record["item"], run.state.run_id)
        applied += record["applied"]
    return applied


def _notify_changes(db: ServiceDB, run: RunResult, settings: ServiceSettings) -> None:
    """Send each verdict this run applied to the ``decision.rescanned`` webhooks (one delivery per change)."""
    if not db.list_webhooks("decision.rescanned") or settings.jobs_db_path is None:
        return
    log = DeliveryLog(settings.jobs_db_path)
    try:
        for record in run.records:
            if record.get("applied"):
                notify(db, settings, log, "decision.rescanned",
                       {"decision_id": record["item"], "kind": "rescan", "run_id": run.state.run_id,
                        "changed_at": run.state.started(), "old_verdict": record["old_verdict"],
                        "new_verdict": record["new_verdict"], "reason": record["why"],
                        "total_share_owed": record["new_body"]["total_share_owed"]})
    finally:
        log.close()


def rescan_uploads(index_dir: os.PathLike, db_path: os.PathLike, out: os.PathLike,
                   review_confidence: float, since: datetime | None = None, apply: bool = False,
                   options: RescanOptions = RescanOptions(), resume: bool = False,
                   lineage_of: int | None = None, cluster: bool = False) -> UploadsReport:
    """Re-decide every stored decision (made at or after ``since``) and report the verdicts that change.

    Parameters
    ----------
    index_dir : path-like
        The index the service matches against (opened read-only: the service may keep running).
    db_path : path-like
        The service database.
    out : path-like
        Output folder (``items.jsonl``, ``summary.csv``; the checkpoint while unfinished).
    review_confidence : float
        The service's review threshold.
    since : datetime, optional
        Only decisions made at or after this instant (timezone-aware).
    apply : bool
        Write the changed verdicts to the database, with history.
    options : RescanOptions
    resume : bool
        Continue the interrupted run in ``out``.
    lineage_of : int, optional
        Only the decisions that matched this work or one of its published descendants:
        what a change of the work's policy or licences (a withdrawn consent) can change,
        since the descendants' uploads are judged by their ancestors' policies too.
    cluster : bool
        ``index_dir`` is a cluster directory: matches come from every shard.

    Raises
    ------
    FileNotFoundError
        No database at ``db_path``.
    index.IndexOpenError
        The index cannot be opened.
    rescan.jobs.RunUsageError
        ``out`` holds an unfinished run and ``resume`` is False (or the reverse), or
        ``lineage_of`` is not a registered work.
    """
    index_dir, db_path = Path(index_dir).resolve(), Path(db_path).resolve()
    if not db_path.is_file():  # ServiceDB would create an empty one: nothing to rescan, silently
        raise FileNotFoundError(f"{db_path}: no service database here")
    db = ServiceDB(db_path)  # migrates an older database once, before any worker opens it
    try:
        with open_for_matching(index_dir, cluster):
            pass  # fail here, once, on an index that cannot be opened
        arguments = {"index": str(index_dir), "db": str(db_path),
                     "since": since.isoformat() if since is not None else None, "apply": apply,
                     "review_confidence": review_confidence}
        decision_ids = db.rescan_ids(since)
        if lineage_of is not None:  # (only then an argument: runs begun before it existed still resume)
            if db.get_work(lineage_of) is None:
                raise RunUsageError(f"work {lineage_of} is not registered in {db_path}: no lineage to rescan")
            arguments["lineage_of"] = lineage_of
            family = {lineage_of, *(link.work_id for link in db.descendant_links([lineage_of]))}
            affected = set(db.decisions_matching(sorted(family)))
            decision_ids = [decision_id for decision_id in decision_ids if decision_id in affected]
        run = run_items(lambda state: UploadsJob(str(index_dir), str(db_path), state.started_at,
                                                 review_confidence, cluster),
                        "uploads", arguments, decision_ids, out, options, resume)
        applied = _apply(db, run, apply)
        if applied:
            # The operator's webhook settings (REFRAIN_* variables), as the running service reads them.
            _notify_changes(db, run, ServiceSettings.model_validate({"index_dir": index_dir, "db_path": db_path}))
    finally:
        db.close()
    out = Path(out)
    outputs = [{k: v for k, v in record.items() if k not in _APPLY_FIELDS} for record in run.records]
    write_jsonl(out / "items.jsonl", outputs)
    write_csv(out / "summary.csv", SUMMARY_COLUMNS, outputs)
    finish(out)
    return UploadsReport(run, changed=sum(bool(r.get("changed")) for r in run.records), applied=applied)

"""Catalogue self-scan: every catalogue track matched against the index, related works grouped.

Each ready track is fingerprinted again from its stored ``source`` file (a
published upload's source is the fingerprint its decision kept) and matched
like an upload; the match with itself is dropped, every other match is an edge
between two works (a copy, an excerpt, a sped-up or pitch-shifted derivative, a
mix). Connected components of those edges are the groups of
related works, each reported with the evidence of every edge.

Outputs in the run's folder: ``items.jsonl`` (one record per track),
``groups.jsonl`` (one per group of related works), ``summary.csv`` (one row
per related pair) and ``conflicts.jsonl``: the ownership conflicts between
registered works of the match service (when its database is there) — those
recorded (open or resolved) and the copies found between two works that none
records (works registered before the service refused such copies).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from refrain.fingerprint import AudioDecodeError, FingerprintError
from refrain.fingerprint.serialize import FingerprintFormatError, fingerprint_source
from refrain.api import Refrain, TrackMatch
from refrain.cluster import ClusterRefrain, open_for_matching
from refrain.policy import use_of_kind
from refrain.rescan.jobs import RescanOptions, RunResult, finish, run_items, write_csv, write_jsonl
from refrain.service.db import ServiceDB
from refrain.service.settings import ServiceSettings

__all__ = ["CatalogueJob", "CatalogueReport", "rescan_catalogue", "group_related", "catalogue_conflicts",
           "SUMMARY_COLUMNS"]

#: Most recorded conflicts a self-scan lists.
MAX_LISTED_CONFLICTS = 100_000

#: Columns of ``summary.csv``: one row per (track, related track) edge.
SUMMARY_COLUMNS = ["group", "track_id", "source", "related_track_id", "related_source", "kind", "score",
                   "confidence", "time_ratio", "pitch_shift_semitones", "query_start", "query_end",
                   "ref_start", "ref_end"]


def _evidence(m: TrackMatch) -> dict:
    """What a self-scan reports of one match: the related track, how it relates, where."""
    return {"related_track_id": m.track_id, "related_source": m.source, "title": m.title, "artist": m.artist,
            "kind": m.kind, "score": m.score, "aligned": m.aligned, "confidence": m.confidence,
            "time_ratio": m.time_ratio, "pitch_shift_semitones": m.pitch_shift_semitones,
            "query_start": m.query_start, "query_end": m.query_end, "ref_start": m.ref_start,
            "ref_end": m.ref_end, "spans": [span.to_dict() for span in m.spans]}


@dataclass(frozen=True)
class CatalogueJob:
    """The per-track work of a self-scan (pickled to the workers).

    Attributes
    ----------
    index_dir : str
        The index directory, as every worker sees it (absolute, on a cluster).
    cluster : bool
        ``index_dir`` is a cluster directory (:mod:`refrain.cluster`): match through its router.
    """

    index_dir: str
    cluster: bool = False

    def open(self) -> Refrain | ClusterRefrain:
        # Read-only and memory-mapped: the workers of one machine share the index's pages.
        return open_for_matching(self.index_dir, self.cluster)

    def process(self, refrain: Refrain, track_id: int) -> dict:
        """Fingerprint one catalogue track from its source and match it against the index."""
        track = refrain.store.catalog.get(track_id)
        if track is None:
            return {"status": "failed", "track_id": track_id,
                    "error": f"track {track_id} is no longer in the index"}
        try:
            fp = fingerprint_source(track.source, refrain.params, refrain.config.max_track_seconds,
                                    dense_peaks=True)
        except (AudioDecodeError, FingerprintError, FingerprintFormatError, OSError) as err:
            message = str(err) if str(err).startswith(track.source) else f"{track.source}: {err}"
            return {"status": "failed", "track_id": track_id, "source": track.source, "error": message}
        result = refrain.match_fingerprint(fp, track.source)
        return {"status": "ok", "track_id": track_id, "source": track.source, "duration": result.duration,
                "related": [_evidence(m) for m in result.matches if m.track_id != track_id]}


def group_related(records: list[dict]) -> list[dict]:
    """Groups of related tracks: connected components of the self-scan's match edges.

    Parameters
    ----------
    records : list of dict
        Self-scan item records (``failed`` ones contribute nothing).

    Returns
    -------
    list of dict
        ``{"group", "track_ids", "tracks", "pairs"}`` per group of two or more tracks,
        ordered by smallest track id; ``pairs`` holds every edge's evidence
        (``track_id`` is the track used as the query).
    """
    parent: dict[int, int] = {}

    def root(track_id: int) -> int:
        parent.setdefault(track_id, track_id)
        while parent[track_id] != track_id:
            parent[track_id] = parent[parent[track_id]]  # path halving
            track_id = parent[track_id]
        return track_id

    sources, pairs = {}, []
    for record in records:
        if record["status"] != "ok":
            continue
        sources[record["track_id"]] = record["source"]
        for edge in record["related"]:
            sources.setdefault(edge["related_track_id"], edge["related_source"])
            a, b = root(record["track_id"]), root(edge["related_track_id"])
            parent[max(a, b)] = min(a, b)
            pairs.append({"track_id": record["track_id"], "source": record["source"], **edge})
    members: dict[int, list[int]] = {}
    for track_id in parent:
        members.setdefault(root(track_id), []).append(track_id)
    groups = []
    for number, (first, track_ids) in enumerate(sorted(members.items()), start=1):
        track_ids.sort()
        groups.append({
            "group": number, "track_ids": track_ids,
            "tracks": [{"track_id": t, "source": sources[t]} for t in track_ids],
            "pairs": sorted((p for p in pairs if root(p["track_id"]) == first),
                            key=lambda p: (p["track_id"], p["related_track_id"]))})
    return groups


def catalogue_conflicts(groups: list[dict], db: ServiceDB) -> list[dict]:
    """The ownership conflicts between registered works: recorded ones, then copies no conflict records.

    Parameters
    ----------
    groups : list of dict
        :func:`group_related` output.
    db : ServiceDB
        The match service's database (its works and ``work_conflicts``).

    Returns
    -------
    list of dict
        ``{"conflict_id", "status", "work_id", "claimed_work_id", "kind", "score", "resolution"}``:
        ``status`` is ``open`` or ``resolved`` for a recorded conflict, ``unrecorded`` (and
        ``conflict_id`` None) for a pair of works whose recordings copy one another (a copy use:
        copy or excerpt, either way round) that no conflict records; ``work_id`` is then the
        later-registered work.
    """
    recorded, _ = db.list_conflicts(True, MAX_LISTED_CONFLICTS, 0)
    listed = [{"conflict_id": c.conflict_id, "status": "open" if c.resolved_at is None else "resolved",
               "work_id": c.work_id, "claimed_work_id": c.claimed_work_id, "kind": c.kind, "score": c.score,
               "resolution": c.resolution} for c in recorded]
    known = {frozenset((c.work_id, c.claimed_work_id)) for c in recorded}
    pairs = [p for g in groups for p in g["pairs"] if use_of_kind(p["kind"]) == "copy"]
    works = db.works_by_track(sorted({t for p in pairs for t in (p["track_id"], p["related_track_id"])}))
    for pair in pairs:
        if pair["track_id"] not in works or pair["related_track_id"] not in works:
            continue
        ids = sorted((works[pair["track_id"]].work_id, works[pair["related_track_id"]].work_id))
        if frozenset(ids) in known:
            continue
        known.add(frozenset(ids))
        listed.append({"conflict_id": None, "status": "unrecorded", "work_id": ids[1], "claimed_work_id": ids[0],
                       "kind": pair["kind"], "score": pair["score"], "resolution": None})
    return listed


@dataclass(frozen=True)
class CatalogueReport:
    """A finished self-scan: the run (records, failures, worker memory), the groups found and the ownership
    conflicts between registered works (empty without a service database)."""

    run: RunResult
    groups: list[dict]
    conflicts: list[dict]


def rescan_catalogue(index_dir: os.PathLike, out: os.PathLike, options: RescanOptions = RescanOptions(),
                     resume: bool = False, db_path: os.PathLike | None = None,
                     cluster: bool = False) -> CatalogueReport:
    """Self-scan every ready catalogue track and write ``items.jsonl``, ``groups.jsonl``, ``summary.csv``.

    Parameters
    ----------
    index_dir : path-like
        The index directory (opened read-only; another process may hold the write lock).
    out : path-like
        Output folder; also holds the checkpoint while the run is unfinished.
    options : RescanOptions
        Local processes or Dask, how many workers.
    resume : bool
        Continue the interrupted run in ``out`` instead of starting one.
    db_path : path-like, optional
        The match service's database, for :func:`catalogue_conflicts` (default: where the
        service keeps it for this index, see :class:`service.settings.ServiceSettings`; no
        conflicts are listed when there is none).
    cluster : bool
        ``index_dir`` is a cluster directory: tracks have cluster-wide ids, matches come from every shard.

    Raises
    ------
    index.IndexOpenError
        The index cannot be opened.
    rescan.jobs.RunUsageError
        ``out`` holds an unfinished run and ``resume`` is False (or the reverse).
    """
    index_dir = Path(index_dir).resolve()
    with open_for_matching(index_dir, cluster) as refrain:
        track_ids = sorted(refrain.store.catalog.ready_tracks())
    run = run_items(lambda state: CatalogueJob(str(index_dir), cluster), "catalogue", {"index": str(index_dir)},
                    track_ids, out, options, resume)
    groups = group_related(run.records)
    service_db = Path(db_path) if db_path is not None else ServiceSettings.model_validate(
        {"index_dir": index_dir}).db_path
    conflicts = []
    if service_db is not None and service_db.is_file():
        db = ServiceDB(service_db)
        try:
            conflicts = catalogue_conflicts(groups, db)
        finally:
            db.close()
    out = Path(out)
    write_jsonl(out / "items.jsonl", run.records)
    write_jsonl(out / "groups.jsonl", groups)
    write_jsonl(out / "conflicts.jsonl", conflicts)
    write_csv(out / "summary.csv", SUMMARY_COLUMNS,
              ({"group": group["group"], **pair} for group in groups for pair in group["pairs"]))
    finish(out)
    return CatalogueReport(run, groups, conflicts)

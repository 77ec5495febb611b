"""Catalogue self-scan: every catalogue track matched against the index, related works grouped.

Each ready track is fingerprinted again from its stored ``source`` file and
matched like an upload; the match with itself is dropped, every other match is
an edge between two works (a copy, an excerpt, a sped-up or pitch-shifted
derivative, a mix). Connected components of those edges are the groups of
related works, each reported with the evidence of every edge.

Outputs in the run's folder: ``items.jsonl`` (one record per track),
``groups.jsonl`` (one per group of related works) and ``summary.csv`` (one row
per related pair).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from refrain.fingerprint import AudioDecodeError, FingerprintError, fingerprint_file
from refrain.api import Refrain, TrackMatch
from refrain.cluster import ClusterRefrain, open_for_matching
from refrain.rescan.jobs import RescanOptions, RunResult, finish, run_items, write_csv, write_jsonl

__all__ = ["CatalogueJob", "CatalogueReport", "rescan_catalogue", "group_related", "SUMMARY_COLUMNS"]

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
            fp = fingerprint_file(track.source, refrain.params, refrain.config.max_track_seconds,
                                  dense_peaks=True)
        except (AudioDecodeError, FingerprintError, OSError) as err:
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


@dataclass(frozen=True)
class CatalogueReport:
    """A finished self-scan: the run (records, failures, worker memory) and the groups found."""

    run: RunResult
    groups: list[dict]


def rescan_catalogue(index_dir: os.PathLike, out: os.PathLike, options: RescanOptions = RescanOptions(),
                     resume: bool = False, cluster: bool = False) -> CatalogueReport:
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
    out = Path(out)
    write_jsonl(out / "items.jsonl", run.records)
    write_jsonl(out / "groups.jsonl", groups)
    write_csv(out / "summary.csv", SUMMARY_COLUMNS,
              ({"group": group["group"], **pair} for group in groups for pair in group["pairs"]))
    finish(out)
    return CatalogueReport(run, groups)

"""Align query landmarks with catalogue landmarks and score every candidate track.

A copy of a catalogue track shares landmarks with it at one constant time offset
(reference frame - query frame). Each lookup hit votes for its (track, offset);
a track matches where one offset collects far more votes than chance would give.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from fingerprint import Fingerprint
from index.landmarks import LandmarkIndex

__all__ = ["MatchParams", "Match", "match_fingerprint"]

@dataclass(frozen=True)
class MatchParams:
    """How hits are turned into reported matches.

    Attributes
    ----------
    min_score : float
        Lowest rarity-weighted score of a reported match (default 8.0). Calibrated
        with ``bench/accuracy.py`` on music that is not in the catalogue (see the
        README for the figures it was set from).
    min_aligned : int
        Fewest distinct query landmarks aligned at the matched offset (default 8).
    offset_tolerance : int
        Votes within this many frames of the best offset count as aligned
        (default 1), absorbing the frame quantisation of query and reference.
    max_hamming : int
        Hamming tolerance of the hash lookup in the high bits (default 0: exact).
    common_hash_entries_per_code : float
        Divisor defining a "typical" hash frequency (default 2**20, roughly the number
        of distinct pair codes music produces): a code with ``E = ntotal / this``
        entries or fewer weighs 1, a commoner one ``sqrt(E / entries)``.
    """

    min_score: float = 8.0
    min_aligned: int = 8
    offset_tolerance: int = 1
    max_hamming: int = 0
    common_hash_entries_per_code: float = float(1 << 20)


@dataclass(frozen=True)
class Match:
    """One catalogue track found in a query.

    Attributes
    ----------
    track_id : int
    score : float
        Rarity-weighted count of query landmarks aligned with the track at the matched
        offset: each counts ``min(1, sqrt(E / n))`` where ``n`` is how many catalogue
        entries share its hash. Common hashes (sustained tones, frequent intervals)
        are what unrelated music shares by chance, so they weigh less.
    aligned : int
        Distinct query landmarks aligned at the matched offset (unweighted).
    confidence : float
        ``score / (score + min_score)``-style margin in [0.5, 1): 0.5 at the threshold,
        0.9 at nine times it. A ranking aid for analysts, not a probability.
    query_start, query_end, ref_start, ref_end : float
        Matched spans in seconds (anchor times of the first and last aligned landmark).
    offset : float
        Reference time minus query time of the alignment, in seconds.
    """

    track_id: int
    score: float
    aligned: int
    confidence: float
    query_start: float
    query_end: float
    ref_start: float
    ref_end: float
    offset: float

    def to_dict(self) -> dict:
        return asdict(self)


def match_fingerprint(fp: Fingerprint, landmarks: LandmarkIndex, params: MatchParams,
                      frame_seconds: float, allowed_tracks=None) -> list[Match]:
    """Find every catalogue track the query copies.

    Parameters
    ----------
    fp : Fingerprint
        The query's landmarks.
    landmarks : LandmarkIndex
        The catalogue's landmark store.
    params : MatchParams
        Thresholds.
    frame_seconds : float
        Duration of one frame (to express spans in seconds).
    allowed_tracks : container of int, optional
        Only these track ids may be reported (e.g. the catalogue's ready tracks);
        hits on any other id are ignored.

    Returns
    -------
    list of Match
        Best first; empty when nothing passes the thresholds.
    """
    query_index, track_ids, ref_frames = landmarks.lookup(fp.hashes, params.max_hamming)
    entries = np.bincount(query_index, minlength=len(fp.hashes))
    typical = max(1.0, landmarks.ntotal / params.common_hash_entries_per_code)
    weights = np.minimum(1.0, np.sqrt(typical / np.maximum(entries, 1)))
    if allowed_tracks is not None and len(track_ids):
        keep = np.isin(track_ids, np.fromiter(allowed_tracks, dtype=np.int64))
        query_index, track_ids, ref_frames = query_index[keep], track_ids[keep], ref_frames[keep]
    if len(track_ids) == 0:
        return []
    query_frames = fp.frames[query_index].astype(np.int64)
    offsets = ref_frames - query_frames

    # Group hits by track with one sort; tracks with too few hits in total are skipped outright.
    order = np.argsort(track_ids, kind="stable")
    track_ids, offsets = track_ids[order], offsets[order]
    query_index, query_frames, ref_frames = query_index[order], query_frames[order], ref_frames[order]
    tracks, starts, sizes = np.unique(track_ids, return_index=True, return_counts=True)
    matches = []
    for track_id, start, size in zip(tracks, starts, sizes):
        if size < params.min_aligned:
            continue
        group = slice(start, start + size)
        match = _best_alignment(int(track_id), offsets[group], query_index[group],
                                query_frames[group], ref_frames[group], weights, params,
                                frame_seconds)
        if match is not None:
            matches.append(match)
    matches.sort(key=lambda m: (-m.score, m.track_id))
    return matches


def _best_alignment(track_id: int, offsets: np.ndarray, query_index: np.ndarray,
                    query_frames: np.ndarray, ref_frames: np.ndarray, weights: np.ndarray,
                    params: MatchParams, frame_seconds: float) -> Match | None:
    values, counts = np.unique(offsets, return_counts=True)
    tol = params.offset_tolerance
    # Votes within +-tol of each distinct offset, via prefix sums over the sorted values.
    cumulative = np.concatenate([[0], np.cumsum(counts)])
    window = cumulative[np.searchsorted(values, values + tol, side="right")] \
        - cumulative[np.searchsorted(values, values - tol, side="left")]
    if window.max() < params.min_aligned:
        return None
    best = values[np.argmax(window)]
    aligned = np.abs(offsets - best) <= tol
    landmarks = np.unique(query_index[aligned])
    score = float(weights[landmarks].sum())
    if len(landmarks) < params.min_aligned or score < params.min_score:
        return None
    q, r = query_frames[aligned], ref_frames[aligned]
    return Match(track_id=track_id, score=round(score, 2), aligned=len(landmarks),
                 confidence=round(score / (score + params.min_score), 4),
                 query_start=round(float(q.min()) * frame_seconds, 3),
                 query_end=round(float(q.max() + 1) * frame_seconds, 3),
                 ref_start=round(float(r.min()) * frame_seconds, 3),
                 ref_end=round(float(r.max() + 1) * frame_seconds, 3),
                 offset=round(float(best) * frame_seconds, 3))

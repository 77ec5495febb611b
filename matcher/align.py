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
    min_hash_weight : float
        Hits of codes weighing less than this are not counted at all (default 0.1,
        i.e. codes with over 100x the typical number of entries). On real music this
        halves the hits to sort while dropping about 5 % of a true match's weight.
    """

    min_score: float = 8.0
    min_aligned: int = 8
    offset_tolerance: int = 1
    max_hamming: int = 0
    common_hash_entries_per_code: float = float(1 << 20)
    min_hash_weight: float = 0.1


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
    if len(track_ids) == 0:
        return []
    entries = np.bincount(query_index, minlength=len(fp.hashes))
    typical = max(1.0, landmarks.ntotal / params.common_hash_entries_per_code)
    weights = np.minimum(1.0, np.sqrt(typical / np.maximum(entries, 1)))
    informative = weights[query_index] >= params.min_hash_weight
    query_index, track_ids, ref_frames = query_index[informative], track_ids[informative], \
        ref_frames[informative]
    if len(track_ids) == 0:
        return []
    query_frames = fp.frames[query_index].astype(np.int64)
    offsets = ref_frames - query_frames

    # Vote per (track, offset) for all tracks at once: one int64 key per hit, track in
    # the high bits, so sorted keys group by track, then by offset. Each vote carries
    # its landmark's rarity weight; a track is examined further only if some window of
    # +-tol offsets collects min_score of weight, an upper bound of its final score.
    keys = (track_ids << 32) + (offsets + (1 << 31))
    order = np.argsort(keys, kind="stable")
    keys, query_index = keys[order], query_index[order]
    query_frames, ref_frames = query_frames[order], ref_frames[order]
    values, first = np.unique(keys, return_index=True)
    vote_weight = np.add.reduceat(weights[query_index], first)
    tol = params.offset_tolerance
    cumulative = np.concatenate([[0.0], np.cumsum(vote_weight)])
    window = cumulative[np.searchsorted(values, values + tol, side="right")] \
        - cumulative[np.searchsorted(values, values - tol, side="left")]
    value_tracks = values >> 32
    tracks, track_first = np.unique(value_tracks, return_index=True)
    track_last = np.append(track_first[1:], len(values))
    best = np.array([first_ + np.argmax(window[first_:last_])
                     for first_, last_ in zip(track_first, track_last)])
    strong = window[best] >= params.min_score

    matches = []
    for track_id, best_value in zip(tracks[strong], best[strong]):
        if allowed_tracks is not None and int(track_id) not in allowed_tracks:
            continue
        best_key = values[best_value]
        hits = slice(np.searchsorted(keys, best_key - tol, side="left"),
                     np.searchsorted(keys, best_key + tol, side="right"))
        best_offset = int(best_key & 0xFFFFFFFF) - (1 << 31)
        match = _aligned_match(int(track_id), best_offset, query_index[hits], query_frames[hits],
                               ref_frames[hits], weights, params, frame_seconds)
        if match is not None:
            matches.append(match)
    matches.sort(key=lambda m: (-m.score, m.track_id))
    return matches


def _aligned_match(track_id: int, offset: int, query_index: np.ndarray, query_frames: np.ndarray,
                   ref_frames: np.ndarray, weights: np.ndarray, params: MatchParams,
                   frame_seconds: float) -> Match | None:
    """Score the hits aligned at ``offset`` and describe their spans, or None below threshold."""
    landmarks = np.unique(query_index)
    score = float(weights[landmarks].sum())
    if len(landmarks) < params.min_aligned or score < params.min_score:
        return None
    return Match(track_id=track_id, score=round(score, 2), aligned=len(landmarks),
                 confidence=round(score / (score + params.min_score), 4),
                 query_start=round(float(query_frames.min()) * frame_seconds, 3),
                 query_end=round(float(query_frames.max() + 1) * frame_seconds, 3),
                 ref_start=round(float(ref_frames.min()) * frame_seconds, 3),
                 ref_end=round(float(ref_frames.max() + 1) * frame_seconds, 3),
                 offset=round(offset * frame_seconds, 3))

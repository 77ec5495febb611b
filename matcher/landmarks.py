"""What the two landmark tiers share: alignments become spans, scores, a kind and a match.

The pair tier (:mod:`matcher.pair`) and the triplet tier (:mod:`matcher.triplet`)
each turn lookup hits into :class:`~matcher.types.Alignment` objects: hits of one
track on one time line. Here an alignment's hits are split into spans where the
query has gaps, each span scored with rarity weights and a per-second cap, and a
track's passing alignments become one :class:`~matcher.types.Match`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from refrain.matcher.types import Alignment, Calibration, Catalogue, Match, Query, Span

__all__ = ["LandmarkTierParams", "landmark_matches", "alignment_spans", "copy_or_excerpt"]


@dataclass(frozen=True)
class LandmarkTierParams:
    """Parameters both landmark tiers have (each tier has its own values).

    Attributes
    ----------
    min_score : float
        Lowest score of a match of a 10 s query, calibrated with ``bench/accuracy.py``
        and ``bench/derivatives.py`` on music that is not in the catalogue. The pass rule
        is the chance this score has over 10 s (the tier's :class:`Calibration`): a
        match of a query of any length passes when its score is at most that likely by
        chance over the query's length (:meth:`min_score_for`). A shorter query's
        scores are capped over fewer seconds, so it needs less (pair: 5.6 at 3 s, 6.9
        at 5 s), a longer one a little more (pair: 8.8 at 60 s). The tiers' candidate
        searches still drop tracks whose uncapped vote weight is under ``min_score``
        (a short real copy's is far above it).
    min_span_score : float
        A stretch of aligned hits scoring less than this is a stray vote next to a real
        span, not a span of its own (default 2.0).
    max_score_per_second : float
        Cap on what one second of query contributes to a span's score (default 2.0).
        Unrelated music agrees with a catalogue track in bursts — one chord struck in
        the same register — while a real copy agrees all along; the cap keeps a burst
        from ever adding up to a match.
    min_aligned : int
        Fewest distinct query landmarks in a span (default 8).
    max_gap_seconds : float
        Aligned hits further apart than this in query time belong to different spans
        (default 2.5): a looped or re-ordered section becomes a span of its own.
    span_edge_density : float
        Hits at a span's start or end with fewer than this fraction (default 0.15) of the
        median number of neighbours within 0.5 s are chance agreement next to the copied
        passage: the span's bounds leave them out (a mash-up's next section would
        otherwise be attributed to this work). They still count toward the score,
        where the per-second cap keeps them small.
    max_alignments : int
        Alignments sought per track (default 4): a sample looped at several places
        aligns at several offsets.
    max_candidates : int
        Tracks examined per round, strongest votes first (default 24): bounds the query
        time in a large catalogue, where many tracks collect some chance votes; an
        upload holding more works than this is reported partly.
    common_hash_entries_per_code : float
        A code with ``E = entries_in_tier / this`` entries or fewer weighs 1, a commoner
        one ``sqrt(E / entries)`` (default 2**20, about the number of distinct codes
        music produces): common codes are what unrelated music shares by chance.
    min_hash_weight : float
        Hits of codes weighing less than this are ignored (default 0.1).
    copy_ratio_tolerance, copy_pitch_tolerance : float
        An alignment within 1.5 % of tempo and 0.5 semitone of pitch is no tempo or
        pitch change.
    mixed_coverage : float
        A copy whose aligned landmarks are fewer than this fraction of the query's
        landmarks in the same spans is reported as ``mixed`` (default 0.12): the
        reference is only part of what sounds there.
    """

    #: Evidence adds up over time: a match's score is the sum of its spans'.
    additive: ClassVar[bool] = True

    min_score: float = 8.0
    min_span_score: float = 2.0
    max_score_per_second: float = 2.0
    min_aligned: int = 8
    max_gap_seconds: float = 2.5
    span_edge_density: float = 0.15
    max_alignments: int = 4
    max_candidates: int = 24
    common_hash_entries_per_code: float = float(1 << 20)
    min_hash_weight: float = 0.1
    copy_ratio_tolerance: float = 0.015
    copy_pitch_tolerance: float = 0.5
    mixed_coverage: float = 0.12

    def min_score_for(self, duration: float, calibration: Calibration) -> float:
        """The lowest score of a match of a ``duration``-second query: as rare by chance as ``min_score`` at 10 s.

        Judged against the calibration's catalogue, not the one searched, so that the
        threshold does not move as a catalogue grows (the reported ``chance`` does).
        """
        return round(calibration.equally_rare(self.min_score, duration), 4)


def landmark_matches(alignments: list[Alignment], query: Query, catalogue: Catalogue,
                     params: LandmarkTierParams, calibration: Calibration,
                     coverage_frames: np.ndarray) -> list[Match]:
    """One match per track from a landmark tier's alignments that pass the tier's threshold.

    The threshold is :meth:`LandmarkTierParams.min_score_for` the query's duration.

    Parameters
    ----------
    alignments : list of Alignment
        The tier's alignments of the query (reportable tracks only).
    query : Query
    catalogue : Catalogue
    params : LandmarkTierParams
        The tier's parameters.
    calibration : Calibration
        The tier's chance model, for ``confidence`` and ``chance``.
    coverage_frames : np.ndarray
        Frames of the query's own landmarks of this tier, to tell a copy from the same
        recording ``mixed`` under other material.

    Returns
    -------
    list of Match
    """
    frame_seconds = catalogue.fingerprint_params.frame_seconds
    min_score = params.min_score_for(query.fingerprint.duration, calibration)
    by_track: dict[int, list[tuple[Alignment, list[Span]]]] = {}
    for alignment in alignments:
        spans = alignment_spans(alignment, params, frame_seconds)
        if spans and sum(span.score for span in spans) >= min_score:
            by_track.setdefault(alignment.track_id, []).append((alignment, spans))
    bins_per_semitone = catalogue.fingerprint_params.bins_per_octave / 12.0
    return [_describe(track_id, found, params, calibration, frame_seconds, bins_per_semitone,
                      coverage_frames, query.fingerprint.duration, catalogue.size)
            for track_id, found in by_track.items()]


def alignment_spans(alignment: Alignment, params: LandmarkTierParams, frame_seconds: float) -> list[Span]:
    """Split an alignment's hits at query gaps, score each piece and bound it."""
    order = np.argsort(alignment.query_frames, kind="stable")
    q, r = alignment.query_frames[order], alignment.ref_frames[order]
    ids, weights = alignment.query_ids[order], alignment.weights[order]
    max_gap = params.max_gap_seconds / frame_seconds
    breaks = np.nonzero(np.diff(q) > max_gap)[0] + 1
    spans = []
    edge_window = 0.5 / frame_seconds
    for piece in np.split(np.arange(len(q)), breaks):
        # One vote per query landmark (a tolerant query code can hit twice).
        landmarks, first = np.unique(ids[piece], return_index=True)
        seconds = np.floor(q[piece][first] * frame_seconds).astype(np.int64)
        per_second = np.bincount(seconds - seconds.min(), weights=weights[piece][first])
        score = float(np.minimum(per_second, params.max_score_per_second).sum())
        if len(landmarks) < params.min_aligned // 2 or score < params.min_span_score:
            continue
        bounds = _trim_sparse_edges(q, piece, edge_window, params.span_edge_density)
        spans.append(Span(query_start=round(float(q[bounds].min()) * frame_seconds, 3),
                          query_end=round(float(q[bounds].max() + 1) * frame_seconds, 3),
                          ref_start=round(float(r[bounds].min()) * frame_seconds, 3),
                          ref_end=round(float(r[bounds].max() + 1) * frame_seconds, 3),
                          score=round(score, 2), aligned=len(landmarks)))
    return spans


def _trim_sparse_edges(query_frames: np.ndarray, piece: np.ndarray, window: float,
                       min_density: float) -> np.ndarray:
    """Drop hits at either end of a span where hits are much sparser than in its body.

    A hit's density is the number of the span's hits within ``window`` frames of it;
    hits at the ends whose density is below ``min_density`` times the span's median
    are cut. Stray agreement just past the end of a copied passage (a mash-up's next
    section) would otherwise stretch the span over query time that holds other music.
    """
    frames = query_frames[piece]
    density = (np.searchsorted(frames, frames + window, side="right")
               - np.searchsorted(frames, frames - window, side="left"))
    dense = np.nonzero(density >= min_density * np.median(density))[0]
    return piece[dense[0]:dense[-1] + 1]


def _describe(track_id: int, found: list[tuple[Alignment, list[Span]]], params: LandmarkTierParams,
              calibration: Calibration, frame_seconds: float, bins_per_semitone: float,
              coverage_frames: np.ndarray, query_duration: float, catalogue_tracks: int | None) -> Match:
    """One Match from all passing alignments of a track in one tier."""
    spans = distinct_spans([span for _, track_spans in found for span in track_spans])
    score = round(sum(span.score for span in spans), 2)
    strongest_alignment = max(found, key=lambda item: sum(s.score for s in item[1]))[0]
    strongest = max(spans, key=lambda s: s.score)
    time_ratio = float(strongest_alignment.time_ratio)
    pitch = float(strongest_alignment.pitch_bins) / bins_per_semitone
    kind = _kind(time_ratio, pitch, spans, params, coverage_frames * frame_seconds)
    points = np.concatenate([
        np.column_stack([a.query_frames, a.ref_frames])[_inside(a.query_frames * frame_seconds,
                                                                a_spans, spans)]
        for a, a_spans in found]) * frame_seconds
    return Match(track_id=track_id, score=score, aligned=sum(span.aligned for span in spans),
                 **calibration.rate(score, query_duration, catalogue_tracks),
                 query_start=strongest.query_start, query_end=strongest.query_end,
                 ref_start=strongest.ref_start, ref_end=strongest.ref_end,
                 offset=round(strongest_alignment.offset_frames * frame_seconds, 3),
                 time_ratio=round(time_ratio, 4), pitch_shift_semitones=round(pitch, 2), kind=kind,
                 spans=spans, tier=strongest_alignment.tier, points=np.unique(np.round(points, 3), axis=0))


def _inside(query_times: np.ndarray, own_spans: list[Span], kept: list[Span]) -> np.ndarray:
    """Hits of an alignment that fall in one of its spans that was kept."""
    mask = np.zeros(len(query_times), dtype=bool)
    for span in own_spans:
        if span in kept:
            mask |= (query_times >= span.query_start) & (query_times < span.query_end)
    return mask


def distinct_spans(spans: list[Span]) -> list[Span]:
    """Strongest-first, the spans that cover new query time, in query order.

    A repeated passage of the reference aligns with the same stretch of query at
    several offsets; only the best of those counts. A span mostly (over half) inside
    query time already covered is such a repeat; one elsewhere in the query is a
    looped or re-ordered section and is kept.
    """
    kept: list[Span] = []
    for span in sorted(spans, key=lambda s: -s.score):
        length = span.query_end - span.query_start
        covered = sum(max(0.0, min(span.query_end, k.query_end) - max(span.query_start, k.query_start))
                      for k in kept)
        if covered <= 0.5 * length:
            kept.append(span)
    return sorted(kept, key=lambda s: s.query_start)


def _kind(time_ratio: float, pitch: float, spans: list[Span], params: LandmarkTierParams,
          coverage_times: np.ndarray) -> str:
    """How the query uses the recording; ``copy`` may still turn out an excerpt (:func:`copy_or_excerpt`)."""
    tempo_changed = abs(time_ratio - 1.0) > params.copy_ratio_tolerance
    pitch_changed = abs(pitch) > params.copy_pitch_tolerance
    if tempo_changed and abs(pitch - 12.0 * np.log2(time_ratio)) <= params.copy_pitch_tolerance:
        return "speed_changed"   # resampled: tempo and pitch moved together
    if pitch_changed:
        return "pitch_shifted"
    if tempo_changed:
        return "time_stretched"
    # Same tempo and pitch: a copy (or an excerpt), or the reference under other material.
    inside = sum(int(np.count_nonzero((coverage_times >= s.query_start) & (coverage_times < s.query_end)))
                 for s in spans)
    return "mixed" if sum(s.aligned for s in spans) / max(inside, 1) < params.mixed_coverage else "copy"


def copy_or_excerpt(spans: list[Span], excerpt_fraction: float, track_duration: float | None) -> str:
    """``excerpt`` when the spans cover less than ``excerpt_fraction`` of the recording, else ``copy``."""
    if track_duration:
        covered = sum(span.ref_end - span.ref_start for span in spans)
        if covered < excerpt_fraction * track_duration:
            return "excerpt"
    return "copy"

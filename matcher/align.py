"""Find every catalogue track in a query: both tiers, spans, scores, and the kind of use.

The exact-copy tier (pair landmarks) and the derivative tier (tempo- and
pitch-invariant triplets) each yield alignments; an alignment's hits are split
into spans where the query has gaps, each span scored with rarity weights and a
per-second cap. A track is reported once, with all its spans, from the tier that
explains it: exact-copy alignments first (they are the more precise), derivative
ones for tracks that only the triplets found. Tracks neither found are then looked
for under other audio (:mod:`matcher.layers`), verified on their stored peaks.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from fingerprint import Fingerprint, FingerprintParams
from index.landmarks import LandmarkIndex
from matcher.copies import copy_alignments, copy_votes
from matcher.derivatives import derivative_alignments
from matcher.layers import layer_matches
from matcher.types import Alignment, Match, MatchParams, Span

__all__ = ["match_fingerprint"]


def match_fingerprint(fp: Fingerprint, tiers: Mapping[str, LandmarkIndex], params: MatchParams,
                      fingerprint_params: FingerprintParams,
                      track_durations: Mapping[int, float] | None = None) -> list[Match]:
    """Find every catalogue track the query copies or derives from.

    Parameters
    ----------
    fp : Fingerprint
        The query.
    tiers : mapping
        ``{"pair": LandmarkIndex, "triplet": LandmarkIndex, "peaks": PeakStore}`` of
        the catalogue; a missing tier is skipped.
    params : MatchParams
    fingerprint_params : FingerprintParams
        The catalogue's fingerprint settings (frame duration, log-frequency resolution,
        triplet zones).
    track_durations : mapping of int to float, optional
        Reportable tracks and their durations in seconds (used to tell an excerpt from
        a whole copy); hits on other track ids are ignored. None: every track, no
        excerpt detection.

    Returns
    -------
    list of Match
        Best first; empty when nothing passes the thresholds.
    """
    frame_seconds = fingerprint_params.frame_seconds
    bins_per_semitone = fingerprint_params.bins_per_octave / 12.0
    alignments: list[Alignment] = []
    use_layers = "layer" in params.tiers and "peaks" in tiers and fp.dense_peaks is not None
    votes = None
    if "pair" in tiers and ("pair" in params.tiers or use_layers):
        votes = copy_votes(fp, tiers["pair"], params)
    if votes is not None and "pair" in params.tiers:
        alignments += copy_alignments(votes, params)
    if "triplet" in tiers and "triplet" in params.tiers:
        alignments += derivative_alignments(fp, tiers["triplet"], params, fingerprint_params)

    by_track: dict[int, dict[str, list[tuple[Alignment, list[Span]]]]] = {}
    for alignment in alignments:
        if track_durations is not None and alignment.track_id not in track_durations:
            continue
        spans = _spans(alignment, params, frame_seconds)
        if sum(span.score for span in spans) >= _threshold(alignment.tier, params):
            by_track.setdefault(alignment.track_id, {}).setdefault(alignment.tier, []).append(
                (alignment, spans))

    matches = []
    for track_id, found in by_track.items():
        tier = "pair" if "pair" in found else "triplet"
        duration = track_durations.get(track_id) if track_durations is not None else None
        matches.append(_describe(track_id, tier, found[tier], fp, params, frame_seconds,
                                 bins_per_semitone, duration))
    if use_layers and votes is not None:
        matches += layer_matches(fp, votes, tiers["peaks"], params, fingerprint_params,
                                 allowed=None if track_durations is None else set(track_durations),
                                 skip={m.track_id for m in matches})
    matches.sort(key=lambda m: (-m.score, m.track_id))
    return matches


def _threshold(tier: str, params: MatchParams) -> float:
    """Lowest score of a match found in ``tier``."""
    return params.min_score if tier == "pair" else params.triplet_min_score


def _spans(alignment: Alignment, params: MatchParams, frame_seconds: float) -> list[Span]:
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
        # A lone stray vote next to a real span is noise, not a span of its own.
        if len(landmarks) < params.min_aligned // 2 or score < params.min_score / 4:
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


def _describe(track_id: int, tier: str, found: list[tuple[Alignment, list[Span]]], fp: Fingerprint,
              params: MatchParams, frame_seconds: float, bins_per_semitone: float,
              duration: float | None) -> Match:
    """One Match from all alignments of a track in one tier."""
    spans = _distinct_spans([span for _, track_spans in found for span in track_spans])
    score = round(sum(span.score for span in spans), 2)
    strongest_alignment = max(found, key=lambda item: sum(s.score for s in item[1]))[0]
    strongest = max(spans, key=lambda s: s.score)
    time_ratio = float(strongest_alignment.time_ratio)
    pitch = float(strongest_alignment.pitch_bins) / bins_per_semitone
    kind = _kind(time_ratio, pitch, spans, tier, fp, params, frame_seconds, duration)
    points = np.concatenate([
        np.column_stack([a.query_frames, a.ref_frames])[_inside(a.query_frames * frame_seconds,
                                                                a_spans, spans)]
        for a, a_spans in found]) * frame_seconds
    return Match(track_id=track_id, score=score, aligned=sum(span.aligned for span in spans),
                 confidence=round(score / (score + _threshold(tier, params)), 4),
                 query_start=strongest.query_start, query_end=strongest.query_end,
                 ref_start=strongest.ref_start, ref_end=strongest.ref_end,
                 offset=round(strongest_alignment.offset_frames * frame_seconds, 3),
                 time_ratio=round(time_ratio, 4), pitch_shift_semitones=round(pitch, 2), kind=kind,
                 spans=spans, tier=tier, points=np.unique(np.round(points, 3), axis=0))


def _inside(query_times: np.ndarray, own_spans: list[Span], kept: list[Span]) -> np.ndarray:
    """Hits of an alignment that fall in one of its spans that was kept."""
    mask = np.zeros(len(query_times), dtype=bool)
    for span in own_spans:
        if span in kept:
            mask |= (query_times >= span.query_start) & (query_times < span.query_end)
    return mask


def _distinct_spans(spans: list[Span]) -> list[Span]:
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


def _kind(time_ratio: float, pitch: float, spans: list[Span], tier: str, fp: Fingerprint,
          params: MatchParams, frame_seconds: float, duration: float | None) -> str:
    tempo_changed = abs(time_ratio - 1.0) > params.copy_ratio_tolerance
    pitch_changed = abs(pitch) > params.copy_pitch_tolerance
    if tempo_changed and abs(pitch - 12.0 * np.log2(time_ratio)) <= params.copy_pitch_tolerance:
        return "speed_changed"   # resampled: tempo and pitch moved together
    if pitch_changed:
        return "pitch_shifted"
    if tempo_changed:
        return "time_stretched"
    # Same tempo and pitch: a copy, an excerpt, or the reference under other material.
    if _coverage(spans, tier, fp, frame_seconds) < params.mixed_coverage:
        return "mixed"
    if duration:
        covered = sum(span.ref_end - span.ref_start for span in spans)
        if covered < params.excerpt_fraction * duration:
            return "excerpt"
    return "copy"


def _coverage(spans: list[Span], tier: str, fp: Fingerprint, frame_seconds: float) -> float:
    """Aligned landmarks / query landmarks of the same tier inside the spans."""
    # Triplet-tier spans are judged on the query's own triplets at tempo 1, the rule the
    # catalogue used: the tempo-hypothesis superset would dilute the fraction.
    frames = fp.frames if tier == "pair" else fp.triplets.anchor_frames
    times = frames * frame_seconds
    inside = sum(int(np.count_nonzero((times >= s.query_start) & (times < s.query_end)))
                 for s in spans)
    return sum(s.aligned for s in spans) / max(inside, 1)

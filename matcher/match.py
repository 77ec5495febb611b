"""Find every catalogue track in a query: both tiers, spans, scores, and the kind of use.

The exact-copy tier (pair landmarks) and the derivative tier (tempo- and
pitch-invariant triplets) each yield alignments; an alignment's hits are split
into spans where the query has gaps, each span scored with rarity weights and a
per-second cap. A track is reported once, with all its spans, from the tier that
explains it: exact-copy alignments first (they are the more precise), derivative
ones for tracks that only the triplets found. Tracks neither found are then looked
for under other audio (:mod:`matcher.layers`), verified on their stored peaks.
An upload longer than ``upload_window_seconds`` is searched one window at a time and
a work's alignments that run on across a boundary are joined again, so that a
whole-album upload needs the memory of one window, not of all its landmark hits at once.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Mapping

import numpy as np

from refrain.fingerprint import Fingerprint, FingerprintParams
from refrain.fingerprint.hashes import Triplets
from refrain.fingerprint.peaks import Peaks
from refrain.index.landmarks import LandmarkIndex
from refrain.matcher.copies import copy_alignments, copy_votes
from refrain.matcher.derivatives import derivative_alignments
from refrain.matcher.layers import layer_matches
from refrain.matcher.types import Alignment, Match, MatchParams, Span

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
    use_layers = "layer" in params.tiers and "peaks" in tiers and fp.dense_peaks is not None
    allowed = None if track_durations is None else set(track_durations)
    n_frames = int(np.ceil(fp.duration / frame_seconds))
    window = max(1, int(round(params.upload_window_seconds / frame_seconds)))
    windowed = n_frames > window
    alignments: list[Alignment] = []
    passed: list[tuple[Alignment, list[Span]]] = []
    layer_found: list[Match] = []
    for number, first in enumerate(range(0, max(n_frames, 1), window)):
        part = _excerpt(fp, first, first + window, frame_seconds) if windowed else fp
        votes = None
        if "pair" in tiers and ("pair" in params.tiers or use_layers):
            votes = copy_votes(part, tiers["pair"], params)
        found: list[Alignment] = []
        if votes is not None and "pair" in params.tiers:
            found += copy_alignments(votes, params)
        if "triplet" in tiers and "triplet" in params.tiers:
            found += derivative_alignments(part, tiers["triplet"], params, fingerprint_params)
        found = [a for a in found if allowed is None or a.track_id in allowed]
        passing = _passing(found, params, frame_seconds)
        if use_layers and votes is not None:
            layer_found += [_moved_match(m, first * frame_seconds)
                            for m in layer_matches(part, votes, tiers["peaks"], params, fingerprint_params,
                                                   allowed=allowed, skip={a.track_id for a, _ in passing})]
        if windowed:
            # A window's alignment that fell short may pass once joined with its neighbours.
            alignments += [_moved_alignment(a, first, number) for a in found]
        else:
            passed = passing
    if windowed:
        passed = _passing(_join_lines(alignments, params), params, frame_seconds)

    by_track: dict[int, dict[str, list[tuple[Alignment, list[Span]]]]] = {}
    for alignment, spans in passed:
        by_track.setdefault(alignment.track_id, {}).setdefault(alignment.tier, []).append((alignment, spans))

    matches = []
    for track_id, found_in in by_track.items():
        tier = "pair" if "pair" in found_in else "triplet"
        duration = track_durations.get(track_id) if track_durations is not None else None
        matches.append(_describe(track_id, tier, found_in[tier], fp, params, frame_seconds,
                                 bins_per_semitone, duration))
    matches += _join_layer_matches([m for m in layer_found if m.track_id not in by_track], frame_seconds)
    matches.sort(key=lambda m: (-m.score, m.track_id))
    return matches


def _passing(alignments: list[Alignment], params: MatchParams,
             frame_seconds: float) -> list[tuple[Alignment, list[Span]]]:
    """Each alignment whose spans score enough for its tier, with those spans."""
    scored = [(alignment, _spans(alignment, params, frame_seconds)) for alignment in alignments]
    return [(a, spans) for a, spans in scored if sum(span.score for span in spans) >= _threshold(a.tier, params)]


def _excerpt(fp: Fingerprint, first: int, end: int, frame_seconds: float) -> Fingerprint:
    """The query's landmarks and peaks anchored in frames ``first..end``, as a query of its own.

    Frames are counted from ``first``. Pair landmarks keep their whole hash (a target
    may lie past ``end``); the derivative tier builds its triplets from the peaks, so
    triplets across the boundary are lost. The stored catalogue triplets and the
    melody are not needed by the landmark and layer tiers and are left out.
    """
    def peaks_between(peaks: Peaks | None) -> Peaks | None:
        if peaks is None:
            return None
        lo, hi = np.searchsorted(peaks.frames, [first, end])
        return Peaks(frames=peaks.frames[lo:hi] - first, bins=peaks.bins[lo:hi],
                     strength=peaks.strength[lo:hi], bin_offsets=peaks.bin_offsets[lo:hi])

    inside = (fp.frames >= first) & (fp.frames < end)
    no_triplets = Triplets(**{f.name: getattr(fp.triplets, f.name)[:0] for f in fields(Triplets)})
    return Fingerprint(hashes=fp.hashes[inside], frames=fp.frames[inside] - first,
                       duration=min(fp.duration - first * frame_seconds, (end - first) * frame_seconds),
                       peaks=peaks_between(fp.peaks), triplets=no_triplets, melody=None,
                       dense_peaks=peaks_between(fp.dense_peaks))


def _moved_alignment(alignment: Alignment, first: int, window_number: int) -> Alignment:
    """An alignment found in the window starting at query frame ``first``, in upload frames.

    Query landmark ids are made distinct across windows (they only tell one landmark's
    hits from another's).
    """
    if first == 0:
        return alignment
    return replace(alignment, offset_frames=alignment.offset_frames - alignment.time_ratio * first,
                   query_frames=alignment.query_frames + first,
                   query_ids=alignment.query_ids + (window_number << 40))


def _join_lines(alignments: list[Alignment], params: MatchParams) -> list[Alignment]:
    """Alignments of windows side by side joined where they continue one time line.

    Two alignments of a track in one tier are on one line when their tempo ratios
    agree within ``copy_ratio_tolerance`` and their lines meet within ``line_tolerance``
    frames where the later one starts; the joined alignment keeps the geometry of the
    one with more weight.
    """
    joined: list[Alignment] = []
    for alignment in sorted(alignments, key=lambda a: (a.track_id, a.tier, int(a.query_frames.min()))):
        start = float(alignment.query_frames.min())
        for k, earlier in enumerate(joined):
            if earlier.track_id != alignment.track_id or earlier.tier != alignment.tier \
                    or abs(earlier.time_ratio / alignment.time_ratio - 1.0) > params.copy_ratio_tolerance:
                continue
            gap = (earlier.offset_frames + earlier.time_ratio * start) \
                - (alignment.offset_frames + alignment.time_ratio * start)
            if abs(gap) <= params.line_tolerance and earlier.query_frames.max() < start:
                heavier = earlier if earlier.weights.sum() >= alignment.weights.sum() else alignment
                joined[k] = replace(heavier, **{name: np.concatenate([getattr(earlier, name), getattr(alignment, name)])
                                               for name in ("query_frames", "ref_frames", "query_ids", "weights")})
                break
        else:
            joined.append(alignment)
    return joined


def _moved_match(match: Match, seconds: float) -> Match:
    """A match found in a window starting ``seconds`` into the upload, in upload time."""
    if seconds == 0:
        return match
    return replace(match, query_start=round(match.query_start + seconds, 3),
                   query_end=round(match.query_end + seconds, 3), offset=round(match.offset - seconds, 3),
                   spans=[replace(s, query_start=round(s.query_start + seconds, 3),
                                  query_end=round(s.query_end + seconds, 3)) for s in match.spans],
                   points=match.points + np.array([seconds, 0.0]))


def _join_layer_matches(matches: list[Match], frame_seconds: float) -> list[Match]:
    """One match per track from the under-mix matches of several windows.

    The best-verified window's match gives score, offset and confidence; the spans of
    all windows are kept, those that continue each other at one offset made one.
    """
    by_track: dict[int, list[Match]] = {}
    for match in matches:
        by_track.setdefault(match.track_id, []).append(match)
    joined = []
    for found in by_track.values():
        if len(found) == 1:
            joined.append(found[0])
            continue
        best = max(found, key=lambda m: m.score)
        spans: list[Span] = []
        for span in sorted((s for m in found for s in m.spans), key=lambda s: s.query_start):
            if spans and span.query_start - spans[-1].query_end <= 1.0 and abs(
                    (span.ref_start - span.query_start) - (spans[-1].ref_start - spans[-1].query_start)) \
                    <= 1.5 * frame_seconds:
                spans[-1] = replace(spans[-1], query_end=span.query_end, ref_end=span.ref_end,
                                    score=max(spans[-1].score, span.score),
                                    aligned=spans[-1].aligned + span.aligned)
            else:
                spans.append(span)
        joined.append(replace(best, spans=spans, aligned=sum(s.aligned for s in spans),
                              query_start=spans[0].query_start, query_end=spans[-1].query_end,
                              ref_start=spans[0].ref_start, ref_end=spans[-1].ref_end,
                              points=np.concatenate([m.points for m in found])))
    return joined


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

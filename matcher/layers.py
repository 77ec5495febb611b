"""Under-mix tier: a catalogue recording that plays 6-12 dB under new material.

Mixed under louder audio, a recording loses most of its landmarks: a pair needs
both of its peaks among the upload's strongest, so the few pair hits left cannot be
told from chance agreement. Its single peaks fare better: many still show as local
maxima of the upload's spectrogram once a denser set of peaks is picked
(:attr:`fingerprint.Fingerprint.dense_peaks`). So the weak pair votes only
*propose* (track, offset) candidates, and each candidate is *verified*: the fraction
of the track's stored peaks (:class:`index.peaks.PeakStore`) that meet a dense upload
peak at that offset, against the same fraction at many other offsets of the same
track: the background that a shared key, instruments and register give any two
pieces. Only a candidate standing far above its own background is reported, as
``kind: "mixed"``."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import maximum_filter

from fingerprint import Fingerprint, FingerprintParams
from index.peaks import PeakStore
from matcher.copies import OFFSET_BIAS, CopyVotes
from matcher.types import Match, MatchParams, Span

__all__ = ["layer_matches"]


def layer_matches(fp: Fingerprint, votes: CopyVotes, peaks: PeakStore, params: MatchParams,
                  fingerprint_params: FingerprintParams, allowed: set[int] | None = None,
                  skip: set[int] = frozenset()) -> list[Match]:
    """Catalogue tracks the query holds under other audio, verified peak by peak.

    Parameters
    ----------
    fp : Fingerprint
        The query, with :attr:`~fingerprint.Fingerprint.dense_peaks` (else nothing is
        searched).
    votes : CopyVotes
        The query's pair-tier votes (:func:`matcher.copies.copy_votes`): propose candidates.
    peaks : PeakStore
        The catalogue's peaks: verify them.
    params : MatchParams
    fingerprint_params : FingerprintParams
        The catalogue's settings (frame duration).
    allowed : set of int, optional
        Reportable track ids (None: all).
    skip : set of int
        Tracks already reported by another tier.

    Returns
    -------
    list of Match
        At most one per track (its best-verified offset), ``kind="mixed"``,
        ``tier="layer"``; ``score`` is the verification's standard
        score (how many background deviations the coincidence fraction lies above
        the background's mean).
    """
    if fp.dense_peaks is None or len(fp.dense_peaks) == 0:
        return []
    fpp = fingerprint_params
    dense = fp.dense_peaks
    n_frames = int(np.ceil(fp.duration / fpp.frame_seconds))
    # A catalogue peak "meets" the query when a dense query peak lies within one frame
    # and one bin of it: peak times and bins jitter by that much under re-encoding.
    met = np.zeros((int(dense.bins.max()) + 2, n_frames + 1), dtype=bool)
    met[dense.bins, np.minimum(dense.frames, n_frames)] = True
    met = maximum_filter(met, size=3)
    window = int(round(params.layer_window_seconds / fpp.frame_seconds))
    shifts = _background_shifts(params, fpp.frame_seconds)
    compared = np.concatenate([[0], shifts])

    best: dict[int, Match] = {}
    for track_id, offset, centre in _candidates(votes, params, allowed, skip):
        start = max(0, min(centre - window // 2, n_frames - window))
        end = min(n_frames, start + window)
        fractions, ref_frames, ref_bins = _coincidence(met, peaks, track_id, offset, start, end,
                                                       compared, params.layer_min_peaks)
        background = fractions[1:][~np.isnan(fractions[1:])]
        if np.isnan(fractions[0]) or len(background) < len(shifts) // 2:
            continue
        spread = max(float(np.std(background)), params.layer_min_spread)
        z = (float(fractions[0]) - float(np.mean(background))) / spread
        if z < params.layer_min_z or (track_id in best and best[track_id].score >= z):
            continue
        best[track_id] = _describe(track_id, offset, z, met, ref_frames, ref_bins, params, fpp.frame_seconds)
    return list(best.values())


def _background_shifts(params: MatchParams, frame_seconds: float) -> np.ndarray:
    """Offsets (frames, both signs) at which the background is measured."""
    lo, hi = (round(s / frame_seconds) for s in params.layer_background_seconds)
    one_side = np.unique(np.linspace(lo, hi, params.layer_background_shifts).round().astype(np.int64))
    return np.concatenate([-one_side[::-1], one_side])


def _candidates(votes: CopyVotes, params: MatchParams, allowed: set[int] | None,
                skip: set[int]) -> list[tuple[int, int, int]]:
    """(track, offset, query frame at the centre of its votes) of the best-voted offsets.

    The exact-copy tier's votes, with no threshold beyond ``layer_min_votes``:
    verification, not the vote, decides. (Pair landmarks of the dense peaks proposed
    the true offset slightly more often, 41 vs 39 of 60 real -12 dB mixes, at three
    times the query time.)
    """
    if len(votes) == 0:
        return []
    # Votes come sorted by (track, offset): one run per cell.
    keys = (votes.track_ids << 32) + votes.cells()
    firsts = np.concatenate([[0], np.flatnonzero(np.diff(keys)) + 1])
    cells = keys[firsts]
    cell_weights = np.add.reduceat(votes.weights, firsts)
    # Weight of each (track, offset) cell plus its two neighbouring offsets.
    summed = cell_weights.copy()
    next_is_neighbour = cells[1:] == cells[:-1] + 1
    summed[:-1] += np.where(next_is_neighbour, cell_weights[1:], 0.0)
    summed[1:] += np.where(next_is_neighbour, cell_weights[:-1], 0.0)
    cell_tracks = cells >> 32
    reportable = np.ones(len(cells), dtype=bool)
    if allowed is not None:
        reportable &= np.isin(cell_tracks, np.fromiter(allowed, dtype=np.int64))
    if skip:
        reportable &= ~np.isin(cell_tracks, np.fromiter(skip, dtype=np.int64))
    summed = np.where(reportable, summed, 0.0)
    wanted = params.layer_candidates * params.layer_offsets_per_candidate
    # Enough cells that ``wanted`` survive the per-track limit and the neighbour rule.
    pool = min(len(cells), 8 * wanted)
    best = np.argpartition(-summed, pool - 1)[:pool]
    best = best[np.argsort(-summed[best], kind="stable")]
    candidates: list[tuple[int, int, int]] = []
    taken: dict[int, list[int]] = {}
    for cell_index in best:
        if summed[cell_index] < params.layer_min_votes or len(candidates) == wanted:
            break
        track_id, offset = int(cell_tracks[cell_index]), int(cells[cell_index] & 0xFFFFFFFF) - OFFSET_BIAS
        track_offsets = taken.get(track_id, [])
        new_track_over_limit = not track_offsets and len(taken) == params.layer_candidates
        if new_track_over_limit or len(track_offsets) == params.layer_offsets_per_candidate \
                or any(abs(offset - other) <= 2 for other in track_offsets):
            continue
        taken[track_id] = track_offsets + [offset]
        lo, hi = np.searchsorted(keys, [cells[cell_index] - 1, cells[cell_index] + 2])
        candidates.append((track_id, offset, int(np.median(votes.query_frames[lo:hi]))))
    return candidates


def _coincidence(met: np.ndarray, peaks: PeakStore, track_id: int, offset: int, start: int, end: int,
                 shifts: np.ndarray, min_peaks: int):
    """Fraction of the track's peaks that meet a query peak, at ``offset`` plus each shift.

    Query frames ``start..end`` are compared with reference frames ``offset + start ..
    offset + end`` (shifted). Returns the fractions (NaN where the track has fewer than
    ``min_peaks`` peaks there) and the reference peaks of the unshifted comparison
    (``shifts[0]`` must be 0).
    """
    ref_frames, ref_bins = peaks.peaks_between(track_id, offset + start + shifts.min(),
                                               offset + end + shifts.max())
    query_frames = ref_frames[None, :].astype(np.int64) - offset - shifts[:, None]
    inside = (query_frames >= start) & (query_frames < end)
    usable = inside & (ref_bins < met.shape[0])[None, :]
    bins = np.broadcast_to(np.minimum(ref_bins, met.shape[0] - 1), query_frames.shape)
    hit = usable & met[bins, np.clip(query_frames, 0, met.shape[1] - 1)]
    counts = inside.sum(axis=1)
    fractions = np.where(counts >= min_peaks, hit.sum(axis=1) / np.maximum(counts, 1), np.nan)
    return fractions, ref_frames[inside[0]], ref_bins[inside[0]]


def _describe(track_id: int, offset: int, z: float, met: np.ndarray, ref_frames: np.ndarray,
              ref_bins: np.ndarray, params: MatchParams, frame_seconds: float) -> Match:
    """The Match of a verified candidate: its span is where its met peaks lie."""
    query_frames = ref_frames.astype(np.int64) - offset
    usable = ref_bins < met.shape[0]
    hit = np.zeros(len(ref_frames), dtype=bool)
    hit[usable] = met[ref_bins[usable], query_frames[usable]]
    q = query_frames[hit]
    q_start, q_end = float(q.min()) * frame_seconds, float(q.max() + 1) * frame_seconds
    score = round(z, 2)
    span = Span(query_start=round(q_start, 3), query_end=round(q_end, 3),
                ref_start=round(q_start + offset * frame_seconds, 3),
                ref_end=round(q_end + offset * frame_seconds, 3), score=score, aligned=int(hit.sum()))
    points = np.column_stack([q, q + offset]) * frame_seconds
    return Match(track_id=track_id, score=score, aligned=int(hit.sum()),
                 confidence=round(z / (z + params.layer_min_z), 4),
                 query_start=span.query_start, query_end=span.query_end, ref_start=span.ref_start,
                 ref_end=span.ref_end, offset=round(offset * frame_seconds, 3), time_ratio=1.0,
                 pitch_shift_semitones=0.0, kind="mixed", spans=[span], tier="layer",
                 points=np.round(points, 3))

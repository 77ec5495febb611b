"""Peaks tier: a catalogue recording that plays 6-12 dB under new material.

Mixed under louder audio, a recording loses most of its landmarks: a pair needs
both of its peaks among the upload's strongest, so the few pair hits left cannot be
told from chance agreement. Its single peaks fare better: many still show as local
maxima of the upload's spectrogram once a denser set of peaks is picked
(:attr:`fingerprint.Fingerprint.dense_peaks`). So the weak pair votes only
*propose* (track, offset) candidates, and each candidate is *verified*: the fraction
of the track's stored peaks (:class:`index.peaks.PeakStore`) that meet a dense upload
peak at that offset, against the same fraction at many other offsets of the same
track: the background that a shared key, instruments and register give any two
pieces. The peaks of the pair landmarks that proposed a candidate are left out of its
verification: they meet by construction, and counting them would score every chance
proposal above its background. Only a candidate standing far above its own background is reported, as
``kind: "mixed"``; the rest of a long upload is then walked at the same offset, so
the match's spans say everywhere the recording plays under the new material."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import AbstractSet, ClassVar

import numba
import numpy as np

from refrain.fingerprint import Fingerprint
from refrain.fingerprint.hashes import unhash_landmarks
from refrain.fingerprint.peaks import maximum_filter
from refrain.index.peaks import PeakStore
from refrain.matcher.pair import PairHits, PairTier, pair_cells, pair_hits, pair_votes_on
from refrain.matcher.types import Calibration, Catalogue, Match, Query, Span

__all__ = ["PeaksTier"]

_OFFSET_NEIGHBOURS = np.array([0, 1, -1])
# States of a query cell in the verification's surface (bits).
_MEETS, _EXCLUDED = np.uint8(1), np.uint8(2)
# The cells within one bin and one frame of a peak, as (bin, frame) steps.
_NEAR_BINS, _NEAR_FRAMES = (steps.ravel() for steps in np.meshgrid([-1, 0, 1], [-1, 0, 1]))


@dataclass(frozen=True)
class PeaksTier:
    """The peaks tier and its parameters.

    Attributes
    ----------
    candidates, offsets_per_candidate : int
        Tracks (default 10) and offsets per track (default 3) proposed by the pair
        tier's votes and verified. On 60 real 10 s mixes the true (track, offset) was
        among them for 53 at -6 dB and 39 at -12 dB; 40 tracks gave 41.
    min_votes : float
        Weakest vote (rarity-weighted hits within one frame of the offset) a candidate
        needs to be verified at all (default 1.0).
    window_seconds : float
        Query time verified per candidate, centred on its votes (default 10).
    background_seconds : (float, float)
        Range of the other offsets (either side, seconds) at which the background is
        measured (default 0.6-4.9 s: past a note's length, within one passage).
    background_shifts : int
        Background offsets per side (default 40). With 20 the background's spread was
        estimated loosely enough that unrelated music reached scores about 1 higher.
    min_peaks : int
        Fewest catalogue peaks a comparison needs to count (default 100, some 3 s of
        music): a few peaks of a track's fading end met by chance scored high on
        generated songs.
    min_spread : float
        Floor of the background's standard deviation (default 0.01), so that a nearly
        constant background cannot turn a small excess into a large score.
    min_z : float
        Lowest verification score reported (default 5.5): how many background standard
        deviations the coincidence fraction lies above the background's mean, the peaks
        of the proposing pair landmarks left out. Over every 10 s window (5 s apart) of
        the 50 held-out real tracks, alone and under another (76,000 candidates) the
        highest was 4.9; over the derivative harness's 299 unrelated queries 3.5, over
        120 unrelated generated songs 3.6.
    extend_z : float
        Score from which another window of a long upload joins a verified match's spans
        (default 4.5): the offset is then fixed, not one guess among many. A window of
        unrelated music at a fixed offset reaches it about once in 9,700 (126,623
        windows of the candidates of 200 whole-track queries).
    calibration : Calibration
        Chance that unrelated music reaches a verification score (``bench/calibrate.py``).
    """

    name: ClassVar[str] = "peaks"
    #: A verification score is a level, not a sum: a long upload reports its best window's.
    additive: ClassVar[bool] = False
    candidates: int = 10
    offsets_per_candidate: int = 3
    min_votes: float = 1.0
    window_seconds: float = 10.0
    background_seconds: tuple[float, float] = (0.6, 4.9)
    background_shifts: int = 40
    min_peaks: int = 100
    min_spread: float = 0.01
    min_z: float = 5.5
    extend_z: float = 4.5
    calibration: Calibration = field(default_factory=lambda: Calibration(
        anchor_score=2.834, anchor_chance=0.1004, scale=0.397, queries=1624, catalogue_tracks=150))

    def find(self, query: Query, catalogue: Catalogue, skip: AbstractSet[int]) -> list[Match]:
        """Tracks the query holds under louder audio (see :class:`~matcher.types.Tier`).

        Candidates come from the pair tier's hits of the same window (looked up here
        with the default pair weighting if the pair tier did not run); the index needs
        its pair tier and its peak store, the query its dense peaks.
        """
        if self.name not in catalogue.tiers or PairTier.name not in catalogue.tiers:
            return []
        return peaks_matches(query.fingerprint, pair_hits(query, catalogue, PairTier()),
                             catalogue.tiers[self.name], self, catalogue, skip)


def peaks_matches(fp: Fingerprint, hits: PairHits, peaks: PeakStore, params: PeaksTier,
                  catalogue: Catalogue, skip: AbstractSet[int] = frozenset()) -> list[Match]:
    """Catalogue tracks the query holds under other audio, verified peak by peak.

    Parameters
    ----------
    fp : Fingerprint
        The query, with :attr:`~fingerprint.Fingerprint.dense_peaks` (else nothing is
        searched).
    hits : PairHits
        The query's pair-tier hits (:func:`matcher.pair.pair_hits`): their votes propose candidates.
    peaks : PeakStore
        The catalogue's peaks: verify them.
    params : PeaksTier
    catalogue : Catalogue
        Reportable tracks, the fingerprint settings (frame duration).
    skip : set of int
        Tracks already reported by another tier.

    Returns
    -------
    list of Match
        At most one per track (its best-verified offset), ``kind="mixed"``,
        ``tier="peaks"``; ``score`` is the verification's standard
        score (how many background deviations the coincidence fraction lies above
        the background's mean); ``spans`` cover every window of the upload where the
        track holds at that offset (``extend_z``), not only the verified one.
    """
    if fp.dense_peaks is None or len(fp.dense_peaks) == 0:
        return []
    fpp = catalogue.fingerprint_params
    dense = fp.dense_peaks
    n_frames = int(np.ceil(fp.duration / fpp.frame_seconds))
    # A catalogue peak "meets" the query when a dense query peak lies within one frame
    # and one bin of it: peak times and bins jitter by that much under re-encoding.
    dense_cells = np.zeros((int(dense.bins.max()) + 2, n_frames + 1), dtype=bool)
    dense_cells[dense.bins, np.minimum(dense.frames, n_frames)] = True
    surface = maximum_filter(dense_cells, (3, 3)).astype(np.uint8)
    window = int(round(params.window_seconds / fpp.frame_seconds))
    compared = np.concatenate([[0], _background_shifts(params, fpp.frame_seconds)])

    best: dict[int, Match] = {}
    for track_id, offset, centre, proposing in _candidates(hits, params, catalogue, skip):
        start = max(0, min(centre - window // 2, n_frames - window))
        end = min(n_frames, start + window)
        excluded = _proposing_cells(fp, proposing, surface.shape)
        surface[excluded] |= _EXCLUDED
        z = _standard_score(_coincidence(surface, peaks, track_id, offset, start, end, compared,
                                         params.min_peaks), params)
        surface[excluded] &= _MEETS
        if not z >= params.min_z or (track_id in best and best[track_id].score >= z):
            continue
        # Once verified, the offset is no longer a guess: spans count every peak.
        windows = [(start, end, z)] + _other_windows(surface, peaks, track_id, offset, start, window,
                                                     compared, params)
        best[track_id] = _describe(track_id, offset, z, windows, surface, peaks, compared, params,
                                   fpp.frame_seconds, fp.duration, catalogue.size)
    return list(best.values())


def _standard_score(fractions: np.ndarray, params: PeaksTier) -> float:
    """How many background deviations the unshifted fraction lies above the background's mean.

    ``fractions[0]`` is the compared offset, the rest its background (NaN: too few
    peaks); NaN when either is unusable.
    """
    background = fractions[1:][~np.isnan(fractions[1:])]
    if np.isnan(fractions[0]) or len(background) < (len(fractions) - 1) // 2:
        return float("nan")
    spread = max(float(np.std(background)), params.min_spread)
    return (float(fractions[0]) - float(np.mean(background))) / spread


def _other_windows(surface: np.ndarray, peaks: PeakStore, track_id: int, offset: int, verified_start: int,
                   window: int, compared: np.ndarray, params: PeaksTier) -> list[tuple[int, int, float]]:
    """The query's other windows where a verified alignment also holds.

    The verified window covers at most ``window_seconds`` of a long upload; the
    rest of the overlap is walked in windows of that length, half a window apart and
    in step with the verified one, each scored against its own background. Its offset
    is no longer one guess among many, so ``extend_z`` suffices.

    Returns
    -------
    list of (start, end, z)
        Query frame ranges that pass, in query order.
    """
    n_frames = surface.shape[1] - 1
    hop = max(1, window // 2)
    first = max(0, -offset)
    bounds = {(max(first, int(start)), min(n_frames, int(start) + window))
              for start in np.arange(verified_start % hop - hop, n_frames, hop)}
    passed = []
    for start, end in sorted(bounds):
        if start == verified_start or end - start < hop:
            continue
        z = _standard_score(_coincidence(surface, peaks, track_id, offset, start, end, compared,
                                         params.min_peaks), params)
        if z >= params.extend_z:
            passed.append((start, end, z))
    return passed


def _background_shifts(params: PeaksTier, frame_seconds: float) -> np.ndarray:
    """Offsets (frames, both signs) at which the background is measured.

    One offset drawn in each of ``background_shifts`` equal strata of the range,
    on either side, with a fixed seed so that scores are reproducible. Evenly spaced
    offsets (every 7 frames) sampled a beat of that period, or a multiple, always at
    the same phase: two unrelated pieces at one tempo met at the background offsets
    only between their beats, so one offset on the beat scored 10.3 (a 10 s excerpt of
    a held-out real track reported as holding a catalogue track under it).
    """
    lo, hi = (round(s / frame_seconds) for s in params.background_seconds)
    edges = np.linspace(lo, hi + 1, params.background_shifts + 1)
    draw = np.random.default_rng(0)
    after, before = (np.floor(draw.uniform(edges[:-1], edges[1:])).astype(np.int64) for _ in range(2))
    return np.concatenate([-before[::-1], after])


def _candidates(hits: PairHits, params: PeaksTier, catalogue: Catalogue,
                skip: AbstractSet[int]) -> list[tuple[int, int, int, np.ndarray]]:
    """(track, offset, query frame at the centre of its votes, its votes' query landmarks) of the best-voted offsets.

    The pair tier's votes, with no threshold beyond ``min_votes``:
    verification, not the vote, decides. (Pair landmarks of the dense peaks proposed
    the true offset slightly more often, 41 vs 39 of 60 real -12 dB mixes, at three
    times the query time.) A candidate's votes are those of its offset and the two
    next to it, sorted by offset, ties in code order. Only the chosen candidates' votes
    are made: the cells' weights are scored from the hits grouped by track, and only the
    heaviest few hundred are held (:func:`~matcher.pair.pair_cells`; of equal weights at
    the edge of that pool, those of lower track ids and offsets).
    """
    wanted = params.candidates * params.offsets_per_candidate
    # The heaviest cells (weight of a (track, offset) plus its two neighbouring offsets) of
    # the tracks that may be candidates: enough that ``wanted`` survive the per-track limit
    # and the neighbour rule. (No early return without hits: a warm-up query compiles the kernel.)
    searched = catalogue.reportable_among(hits.tracks) & ~np.isin(hits.tracks, np.fromiter(skip, np.int64, len(skip)))
    cell_tracks, cell_offsets, summed = pair_cells(hits, _OFFSET_NEIGHBOURS, searched, 8 * wanted, params.min_votes)
    chosen: list[tuple[int, int]] = []
    taken: dict[int, list[int]] = {}
    for cell_index in range(len(summed)):
        if len(chosen) == wanted:
            break
        track_id, offset = int(cell_tracks[cell_index]), int(cell_offsets[cell_index])
        track_offsets = taken.get(track_id, [])
        new_track_over_limit = not track_offsets and len(taken) == params.candidates
        if new_track_over_limit or len(track_offsets) == params.offsets_per_candidate \
                or any(abs(offset - other) <= 2 for other in track_offsets):
            continue
        taken[track_id] = track_offsets + [offset]
        chosen.append((track_id, offset))
    votes = pair_votes_on(hits, np.array(sorted(taken), np.int64))
    candidates = []
    for track_id, offset in chosen:
        near = np.flatnonzero((votes.track_ids == track_id) & (np.abs(votes.offsets - offset) <= 1))
        own = votes[near[np.argsort(votes.offsets[near], kind="stable")]]
        candidates.append((track_id, offset, int(np.median(own.query_frames)), own.query_ids))
    return candidates


def _proposing_cells(fp: Fingerprint, query_ids: np.ndarray,
                     shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(bins, frames) of the query cells within one frame and one bin of the given pair landmarks' peaks.

    A candidate's proposing landmarks met the catalogue's by definition; a catalogue
    peak landing there says nothing more about the candidate. On the real-music harness
    (299 unrelated queries, 30 candidates each) leaving them out lowered the highest
    unrelated score from 5.3 to 4.0 (120 generated songs: 5.6 to 4.4; both with the
    earlier 20 evenly spaced background offsets), while a buried recording keeps most of
    its score: its other peaks meet too.
    """
    landmarks = unhash_landmarks(fp.hashes[query_ids], fp.frames[query_ids])
    bins = np.concatenate([landmarks.anchor_bins, landmarks.target_bins])[:, None] + _NEAR_BINS
    frames = np.concatenate([landmarks.anchor_frames, landmarks.target_frames])[:, None] + _NEAR_FRAMES
    on_grid = (bins >= 0) & (bins < shape[0]) & (frames >= 0) & (frames < shape[1])
    return bins[on_grid], frames[on_grid]


def _coincidence(surface: np.ndarray, peaks: PeakStore, track_id: int, offset: int, start: int, end: int,
                 shifts: np.ndarray, min_peaks: int) -> np.ndarray:
    """Fraction of the track's peaks that meet a query peak, at ``offset`` plus each shift.

    Query frames ``start..end`` are compared with reference frames ``offset + start ..
    offset + end`` (shifted); peaks landing on an excluded query cell are not
    counted. NaN where the track has fewer than ``min_peaks`` peaks there.
    """
    inside, met_count, *_ = _meetings(surface, peaks, track_id, offset, start, end, shifts, per_peak=False)
    return _fractions(inside, met_count, min_peaks)


def _meetings(surface: np.ndarray, peaks: PeakStore, track_id: int, offset: int, start: int, end: int,
              shifts: np.ndarray, per_peak: bool) -> tuple[np.ndarray, ...]:
    """Where the track's peaks fall in query frames ``start..end``, at ``offset`` plus each shift.

    Parameters
    ----------
    surface : np.ndarray of uint8, shape (n_bins, n_frames + 1)
        Per query cell, ``_MEETS`` when it lies within one frame and one bin of a dense
        query peak, ``_EXCLUDED`` when its catalogue peaks are left out.
    per_peak : bool
        Also return, for the first shift, the per-peak arrays (else they are empty).

    Returns
    -------
    inside, met_count : np.ndarray of int, shape (len(shifts),)
        Per shift, the peaks that lie in ``start..end`` off the excluded cells, and
        how many of them meet a query peak.
    query_frames, usable, hit : np.ndarray, shape (n_peaks,)
        Under the first shift: each peak's query frame; whether it lies in
        ``start..end``, off the excluded cells and within the bins of ``surface``;
        whether it then meets a query peak.
    """
    ref_frames, ref_bins = peaks.peaks_between(track_id, offset + start + shifts.min(),
                                               offset + end + shifts.max())
    return _meetings_of(surface, ref_frames, ref_bins, offset, start, end, shifts, per_peak)


@numba.njit(cache=True, nogil=True)
def _meetings_of(surface, ref_frames, ref_bins, offset, start, end, shifts, per_peak):
    """:func:`_meetings` for given reference peaks (sorted by frame), in one compiled pass.

    The peaks tier asks this of every candidate and shift (about 30 x 80 x 300 peaks
    per 10 s query), where numpy's many passes and fancy indexing cost most of its time.
    """
    n_bins, n_frames = surface.shape
    n_peaks = len(ref_frames) if per_peak else 0
    query_frames = ref_frames[:n_peaks] - offset - shifts[0]
    usable, hit = np.zeros(n_peaks, np.bool_), np.zeros(n_peaks, np.bool_)
    inside_count = np.zeros(len(shifts), np.int64)
    met_count = np.zeros(len(shifts), np.int64)
    for row in range(len(shifts)):
        # Peaks come sorted by frame: only those in the window are visited.
        first = np.searchsorted(ref_frames, start + offset + shifts[row])
        last = np.searchsorted(ref_frames, end + offset + shifts[row])
        for peak in range(first, last):
            frame = np.int64(ref_frames[peak]) - offset - shifts[row]
            on_grid = ref_bins[peak] < n_bins
            state = surface[ref_bins[peak], min(max(frame, 0), n_frames - 1)] if on_grid else 0
            if state & _EXCLUDED:
                continue
            inside_count[row] += 1
            meets = (state & _MEETS) != 0
            met_count[row] += meets
            if per_peak and row == 0:
                usable[peak], hit[peak] = on_grid, meets
    return inside_count, met_count, query_frames, usable, hit


def _fractions(inside: np.ndarray, met_count: np.ndarray, min_peaks: int) -> np.ndarray:
    """Per shift: the fraction of inside peaks that meet, NaN under ``min_peaks`` inside peaks."""
    return np.where(inside >= min_peaks, met_count / np.maximum(inside, 1), np.nan)


def _describe(track_id: int, offset: int, z: float, windows: list[tuple[int, int, float]], surface: np.ndarray,
              peaks: PeakStore, compared: np.ndarray, params: PeaksTier, frame_seconds: float,
              query_duration: float, catalogue_tracks: int | None) -> Match:
    """The Match of a verified candidate: one span per run of overlapping passing windows.

    A window that passes may hold the recording over only part of its length, and
    chance meetings happen everywhere, so each run is trimmed to the seconds where
    the meeting fraction stands out (:func:`_trim`). A span's score is its run's best
    window score; the match's score stays the verified window's.
    """
    runs: list[list[tuple[int, int, float]]] = []
    for window in sorted(windows):
        if runs and window[0] <= runs[-1][-1][1]:
            runs[-1].append(window)
        else:
            runs.append([window])
    spans, points = [], []
    for run in runs:
        start, end = run[0][0], max(w[1] for w in run)
        # One reading of the track's peaks: the unshifted row gives the run's peaks, the
        # background rows its chance level.
        inside_count, met_count, query_frames, usable, hit = _meetings(
            surface, peaks, track_id, offset, start, end, compared, per_peak=True)
        chance = float(np.nanmean(_fractions(inside_count[1:], met_count[1:], 1)))
        q = _trim(np.sort(query_frames[hit]), np.sort(query_frames[usable]), chance, round(1.0 / frame_seconds))
        if len(q) == 0:
            continue
        q_start, q_end = float(q.min()) * frame_seconds, float(q.max() + 1) * frame_seconds
        spans.append(Span(query_start=round(q_start, 3), query_end=round(q_end, 3),
                          ref_start=round(q_start + offset * frame_seconds, 3),
                          ref_end=round(q_end + offset * frame_seconds, 3),
                          score=round(max(w[2] for w in run), 2), aligned=len(q)))
        points.append(np.column_stack([q, q + offset]) * frame_seconds)
    score = round(z, 2)
    return Match(track_id=track_id, score=score, aligned=sum(span.aligned for span in spans),
                 **params.calibration.rate(score, query_duration, catalogue_tracks),
                 query_start=spans[0].query_start, query_end=spans[-1].query_end,
                 ref_start=spans[0].ref_start, ref_end=spans[-1].ref_end,
                 offset=round(offset * frame_seconds, 3), time_ratio=1.0,
                 pitch_shift_semitones=0.0, kind="mixed", spans=spans, tier=params.name,
                 points=np.round(np.concatenate(points), 3))


def _trim(met_frames: np.ndarray, ref_frames: np.ndarray, chance: float, frames_per_second: int) -> np.ndarray:
    """The met frames between the first and last second where meetings stand out.

    A second stands out when the meeting fraction of it and the next second lies
    above the midpoint between ``chance`` (the background's fraction) and the run's
    own fraction.

    Parameters
    ----------
    met_frames, ref_frames : np.ndarray of int
        Query frames of the run's met catalogue peaks and of all its catalogue peaks.
    chance : float
    frames_per_second : int

    Returns
    -------
    np.ndarray of int
        The kept met frames (all of them when no second stands out).
    """
    if len(met_frames) == 0:
        return met_frames
    first = int(ref_frames.min())
    n_seconds = (int(ref_frames.max()) - first) // frames_per_second + 1
    met = np.bincount((met_frames - first) // frames_per_second, minlength=n_seconds + 1)
    total = np.bincount((ref_frames - first) // frames_per_second, minlength=n_seconds + 1)
    pair_met, pair_total = met[:-1] + met[1:], total[:-1] + total[1:]
    cut = (chance + len(met_frames) / len(ref_frames)) / 2
    standing = np.flatnonzero(pair_met > cut * np.maximum(pair_total, 1))
    if len(standing) == 0:
        return met_frames
    lo = first + standing[0] * frames_per_second
    hi = first + (standing[-1] + 2) * frames_per_second
    return met_frames[(met_frames >= lo) & (met_frames < hi)]

"""Melody tier: find catalogue compositions re-performed in a query (covers).

Three stages:

1. **Candidates.** The query's chroma is re-timed to each tempo hypothesis
   (:attr:`MelodyTier.tempo_hypotheses`), cut into segments half the catalogue
   hop apart, and each segment's key- and shift-invariant descriptor is
   looked up in the melody index (top ``segment_neighbours``). Each hit implies a
   reference time offset; a track's vote under a hypothesis is how much of the query
   its hits cover on one time line (:func:`offset_votes`), so pieces that merely
   resemble the query patch by patch in any order (one chorale and another) fall
   behind the one it re-performs. The ``max_candidates`` best-voted tracks go on.
2. **Prescreen** (only when ``max_candidates`` exceeds ``verified_candidates``; not
   by default). A coarse verification (stage 3 on chroma of half the time resolution,
   at one tempo) orders the candidates, and the best ``verified_candidates`` are fully
   verified (:func:`prescreen`).
3. **Verification.** Descriptors forget where and in which key things happen, so a
   shared style or chord progression can look alike. The verification aligns the
   chroma sequences themselves, evened out (:func:`compress_chroma`) so that another
   instrumentation's re-weighting of a chord's tones matters less: the re-timed query
   is cut into windows, each window is correlated with the candidate's stored chroma
   at every time offset and under
   all 12 circular pitch shifts at once (one 2-D FFT), and the windows must agree on
   one time line, one key shift and one tempo. Each window's correlation is taken
   around its own mean pitch-class profile and that of the reference stretch it lies
   on, so only how the harmony *moves* counts: a drone, a held chord or a shared key
   profile agrees with much of any tonal piece and would otherwise pass for a cover.
   The run correlation is the mean over the best ``run_windows`` consecutive windows
   of one line; the **similarity** subtracts part of the query's *background* with
   that reference — how well it aligns elsewhere at the same key and tempo — so that
   repetitive, tonal music that resembles the reference at many offsets needs more.
   Only a similarity of at least ``min_similarity`` is reported, as ``kind="cover"``
   (calibrated on same-style compositions and real game music: ``bench/covers.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import AbstractSet, ClassVar, Collection

import numpy as np
import scipy.fft

from refrain.fingerprint.melody import (PITCH_CLASSES, MelodyParams, centred_unit_rows, resample_chroma,
                                        segment_descriptors, segment_starts)
from refrain.index.melody import MelodyIndex
from refrain.matcher.types import Calibration, Catalogue, Match, Query, Span, held_among

__all__ = ["MelodyTier", "CoverVerdict", "cover_candidates", "offset_votes", "prescreen", "shortlist",
           "tempo_grid", "verify_cover", "verify_candidates", "compress_chroma", "match_covers"]

#: _SHIFTED_CLASSES[k, c] = (c + k) % 12: indexing a pitch-class axis with it lists all 12 circular shifts.
_SHIFTED_CLASSES = (np.arange(PITCH_CLASSES)[None, :] + np.arange(PITCH_CLASSES)[:, None]) % PITCH_CLASSES

#: Fewest fully overlapping lines the background is taken from before falling back to all other lines.
_MIN_BACKGROUND_LINES = 8


@dataclass(frozen=True)
class MelodyTier:
    """The melody tier (covers) and how it searches and decides.

    On ``bench/covers.py`` it reports 94.7 % of the covers at the threshold, ranks 98.8 %
    first, with no false cover among 200 same-style compositions and none among 300
    real game-music excerpts (docs/benchmarks.md). It finds nothing in an index without
    a melody tier, or for a query shorter than one segment at every tempo hypothesis.

    Attributes
    ----------
    tempo_hypotheses : tuple of float
        Query tempo / catalogue tempo ratios the query is re-timed to for the candidate
        search (default nine steps of about 6 % over 0.8-1.25). Each costs one set of
        segment descriptors.
    query_hop_fraction : int
        Query segments start ``segment_hop / query_hop_fraction`` chroma frames apart
        (default 2, i.e. 2 s): some query segment then starts within a second of every
        catalogue segment, whose 16 s descriptor hardly changes over a second. Each
        segment costs a search of the catalogue's descriptors under every tempo
        hypothesis: at 4 (1 s) the candidate search took 0.3 of a 10-minute upload's
        0.5 CPU s in this tier.
    segment_neighbours : int
        Catalogue segments returned per query segment (default 32).
    nprobe : int
        Inverted lists searched per query segment once the catalogue's descriptors are in
        an IVF (``MelodyParams.ivf_min_segments``; default 64): a query segment compares
        with the ``4 sqrt(n)`` list centroids and about ``16 sqrt(n)`` stored descriptors
        instead of all ``n``. On ``bench/covers.py`` with its 3,023 descriptors in 201
        lists, 64 lists reported every cover the exact search did (94.7 %), 16 lists
        lost 2.8 points (91.9 %): covers in another instrumentation and key sit farther
        from their piece's descriptors than the list borders allow.
    vote_floor : float
        Descriptor similarity a hit must exceed to count in a vote; it counts by its
        excess (default 0.3, well below a typical hit's 0.6: a cut-off near the typical
        value leaves too many true pieces without a vote).
    vote_offset_bins : int
        Width, in offset bins of the query segment hop (2 s), of the time-line window a
        track's hits are gathered in (default 3, 6 s): a query segment lies within half a
        catalogue hop of the reference segment it matches, and the re-timed query drifts
        a little from the true tempo.
    max_candidates : int
        Best-voted tracks kept (default 5). More than ``verified_candidates`` sends them
        through a coarse verification (:func:`prescreen`) that picks the fully verified
        ones. With the order-aware vote the true piece is the best-voted track for 290 and
        among the best 3 for 303 of the 305 ``bench/covers.py`` covers it can report; a
        prescreen of 48 found the other 2 (95.3 % reported instead of 94.7 %) at 48 coarse
        verifications per query, 59 % of the tier's CPU on whole uploads.
    verified_candidates : int
        Tracks fully verified per query (default 5), best voted (or, with a prescreen,
        best coarse similarity) first.
    prescreen_decimation : int
        Chroma frames averaged into one for the coarse verification (default 2, 512 ms).
    verify_hypotheses : int
        Tempo hypotheses verified per candidate, best voted first (default 2): the
        descriptors tell tempo only roughly.
    refine_from : float
        Similarity at a track's best-voted tempo hypothesis from which it is verified under
        the whole tempo grid (``verify_hypotheses`` x ``tempo_refinement``; default 0.35):
        every ``bench/covers.py`` cover reported reaches 0.47 there, 98 % of the other
        verified tracks stay below 0.35, so a track costs one tempo ratio instead of six.
    tempo_refinement : tuple of float
        Factors applied to each verified tempo hypothesis (default 0.97, 1, 1.03):
        half a hypothesis step either way, so the re-timed query drifts at most about
        a chroma frame over a window, which ``offset_tolerance`` absorbs.
    run_windows : int
        Consecutive verification windows whose mean is the similarity (default 4:
        with 16.4 s windows 4.1 s apart, 28.7 s of the reference). A shorter query uses
        all of its windows.
    offset_tolerance : int
        Chroma frames a window may slip from the common time line (default 1).
    min_chroma_variance : float
        Floor of a stretch's chroma variance around its own mean profile when the
        verification normalises a correlation of changes (default 0.1, out of at most
        1 for unit-length frames): a stretch that hardly changes (a drone, a held chord)
        cannot reach a high correlation by being divided by almost nothing.
    background_margin : int
        Lines within this many chroma frames of the best one are not part of its
        background (default 8, 2 s): they are the same alignment, slightly off.
    background_quantile : float
        Which quantile of the other lines' correlations (same key shift and tempo) is the
        query's background with this reference (default 0.9).
    background_weight : float
        Share of the background subtracted from the best line's correlation to give the
        similarity (default 0.5): a query that correlates well with the reference at many
        offsets (repetitive, tonal music) needs more to be called a cover. 0.75 separated
        ``bench/covers.py``'s covers a little better offline (90.3 % reported instead of
        88.7 % at a threshold 0.02 above the best innocent), but pushes covers of
        loop-based songs (the generated test songs) under the threshold.
    verify_exponent : float
        Signed power applied to both chroma sequences before the full verification
        (default 0.7, :func:`compress_chroma`): another SoundFont or instrumentation
        re-weights a chord's tones; evened out a little more than the stored
        log-compressed chroma, the best unrelated real-music similarity falls from 0.544
        to 0.516 while true covers lose less (offline on ``bench/covers.py``'s cached
        queries: 90.3 % reported at a threshold 0.02 above the best innocent, against
        89.4 % with 1.0 and 90.0 % with 1.4).
    min_similarity : float
        Lowest similarity reported as a cover (default 0.57, from the threshold sweeps of
        ``bench/covers.py``: no same-style composition and no unrelated real game-music
        track reached it).
    calibration : Calibration
        Chance that unrelated music reaches a similarity (``bench/calibrate.py``).
    """

    name: ClassVar[str] = "melody"
    #: A similarity is a level, not a sum: a long upload reports its best window's.
    additive: ClassVar[bool] = False
    tempo_hypotheses: tuple[float, ...] = (0.8, 0.85, 0.9, 0.95, 1.0, 1.06, 1.12, 1.18, 1.25)
    query_hop_fraction: int = 2
    segment_neighbours: int = 32
    nprobe: int = 64
    vote_floor: float = 0.3
    vote_offset_bins: int = 3
    max_candidates: int = 5
    verified_candidates: int = 5
    prescreen_decimation: int = 2
    verify_hypotheses: int = 2
    tempo_refinement: tuple[float, ...] = (0.97, 1.0, 1.03)
    refine_from: float = 0.35
    run_windows: int = 4
    offset_tolerance: int = 1
    min_chroma_variance: float = 0.1
    background_margin: int = 8
    background_quantile: float = 0.9
    background_weight: float = 0.5
    verify_exponent: float = 0.7
    min_similarity: float = 0.57
    calibration: Calibration = field(default_factory=lambda: Calibration(
        anchor_score=0.3499, anchor_chance=0.03359, scale=0.0359, queries=516, catalogue_tracks=150))

    def find(self, query: Query, catalogue: Catalogue, skip: AbstractSet[int]) -> list[Match]:
        """Compositions the query re-performs (see :class:`~matcher.types.Tier`)."""
        melody_params = catalogue.fingerprint_params.melody
        if self.name not in catalogue.tiers or melody_params is None:
            return []
        return match_covers(query.fingerprint.melody, catalogue.tiers[self.name], self,
                            melody_params.chroma_seconds(catalogue.fingerprint_params.frame_seconds),
                            query.fingerprint.duration, catalogue.track_durations, skip, catalogue.size)


@dataclass(frozen=True)
class CoverVerdict:
    """The best chroma alignment of a query with one catalogue track.

    Attributes
    ----------
    similarity : float
        ``correlation - background_weight * background``: the evidence that this line,
        and not just the query's style, matches the reference.
    correlation : float
        Mean correlation of chroma changes along the aligned line over the best run of
        windows (-1..1).
    background : float
        The same measure on the other lines at the same key shift and tempo
        (``background_quantile``, at least 0).
    tempo_ratio : float
        Query tempo / reference tempo.
    key_shift : int
        Query key - reference key in semitones, in -5..+6 (chroma cannot tell octaves).
    offset_frames : int
        Reference chroma frame at query time 0, in reference time.
    window_starts : np.ndarray of int
        Start of each verification window in the re-timed query (chroma frames).
    window_similarity : np.ndarray of float
        Correlation of each window along the line.
    window_frames : int
        Length of a window (chroma frames, reference time).
    best_run : tuple of int
        First and last window of the run that gave ``similarity``.
    """

    similarity: float
    correlation: float
    background: float
    tempo_ratio: float
    key_shift: int
    offset_frames: int
    window_starts: np.ndarray
    window_similarity: np.ndarray
    window_frames: int
    best_run: tuple[int, int]


def cover_candidates(query_chroma: np.ndarray, index: MelodyIndex, params: MelodyTier,
                     allowed: Collection[int] | None = None) -> list[tuple[int, float, tuple[float, ...]]]:
    """Catalogue tracks whose segments resemble the query's *in the same order*, best first.

    Parameters
    ----------
    query_chroma : np.ndarray, shape (n, 12)
        The query's chroma sequence.
    index : MelodyIndex
    params : MelodyTier
    allowed : collection of int, optional
        Reportable track ids (a :class:`~matcher.types.TrackDurations` in a large
        catalogue); hits on others are ignored.

    Returns
    -------
    list of (track_id, vote, tempo_hypotheses)
        At most ``params.max_candidates`` tracks, each with its best vote
        (:func:`offset_votes`) and the ``params.verify_hypotheses`` tempo hypotheses it
        was voted for most.
    """
    melody = index.params
    hop = max(1, melody.segment_hop // params.query_hop_fraction)
    starts, descriptors = [], []
    for ratio in params.tempo_hypotheses:
        retimed = resample_chroma(query_chroma, ratio)
        starts.append(segment_starts(len(retimed), melody, hop))
        descriptors.append(segment_descriptors(retimed, starts[-1], melody))
    # Every hypothesis's segments in one search: one pass over the catalogue's descriptors.
    similarity, tracks, segments = index.search(np.concatenate(descriptors), params.segment_neighbours,
                                                params.nprobe)
    if allowed is not None and len(tracks):
        tracks = np.where((tracks >= 0) & held_among(allowed, tracks), tracks, -1)
    votes: dict[int, list[tuple[float, float]]] = {}
    first = 0
    for ratio, ratio_starts in zip(params.tempo_hypotheses, starts):
        if len(ratio_starts) == 0:
            continue
        rows = slice(first, first + len(ratio_starts))
        first += len(ratio_starts)
        for track, vote in offset_votes(similarity[rows], tracks[rows],
                                        segments[rows] * melody.segment_hop - ratio_starts[:, None], hop,
                                        params).items():
            votes.setdefault(track, []).append((vote, ratio))
    best = {track: sorted(found, reverse=True)[:params.verify_hypotheses] for track, found in votes.items()}
    ranked = sorted(best.items(), key=lambda item: (-item[1][0][0], item[0]))
    return [(track, found[0][0], tuple(ratio for _, ratio in found))
            for track, found in ranked[:params.max_candidates]]


def offset_votes(similarity: np.ndarray, tracks: np.ndarray, offsets: np.ndarray, bin_frames: int,
                 params: MelodyTier) -> dict[int, float]:
    """Each track's vote: how much of the query its segments match *on one time line*.

    A 2-D Fourier descriptor forgets where a patch lies, so chorales (or any pieces of
    one style) resemble each other patch by patch in no particular order; a cover
    matches the reference's patches one after the other. A hit (query segment ``j``,
    reference segment) implies a reference offset; hits are gathered in windows of
    ``vote_offset_bins`` offset bins of ``bin_frames``, each query segment counts its
    best hit once per window with ``similarity - vote_floor``, and a track's vote is its
    best window's sum divided by the number of query segments.

    Parameters
    ----------
    similarity : np.ndarray, shape (n_segments, k)
        Descriptor similarity of each hit (-inf for none).
    tracks : np.ndarray of int, shape (n_segments, k)
        Track of each hit, -1 for none (or not reportable).
    offsets : np.ndarray of int, shape (n_segments, k)
        Reference chroma frame of the hit's segment minus the query segment's start.
    bin_frames : int
        Offset bin width (the query segment hop: a query segment starts within a
        query hop of the reference segment it matches).
    params : MelodyTier

    Returns
    -------
    dict of int to float
    """
    n_segments = len(similarity)
    keep = (tracks >= 0) & (similarity > params.vote_floor)
    if not keep.any():
        return {}
    segment = np.broadcast_to(np.arange(n_segments)[:, None], tracks.shape)[keep]
    track, offset_bin = tracks[keep], np.floor_divide(offsets[keep], bin_frames)
    excess = similarity[keep] - params.vote_floor
    # Every hit supports each window (first offset bin) whose span holds its offset:
    # one row per (hit, window), keyed by (track, window, query segment) in one integer.
    spread = params.vote_offset_bins
    lowest_track, lowest_window = track.min(), offset_bin.min() - spread + 1
    n_windows = int(offset_bin.max() - lowest_window) + 1
    pair = ((track - lowest_track) * n_windows + (offset_bin - lowest_window))[:, None] - np.arange(spread)
    key = (pair * n_segments + segment[:, None]).ravel()
    excess = np.repeat(excess, spread)
    # One hit per (track, window, query segment), its best.
    order = np.argsort(key, kind="stable")
    key, excess = key[order], excess[order]
    firsts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    pair, excess = key[firsts] // n_segments, np.maximum.reduceat(excess, firsts)
    # Sum per (track, window): rows are sorted by track, window, then query segment.
    starts = np.flatnonzero(np.r_[True, pair[1:] != pair[:-1]])
    sums = np.add.reduceat(excess, starts) / n_segments
    window_track = pair[starts] // n_windows + lowest_track
    # Best window per track (window_track is sorted).
    track_starts = np.flatnonzero(np.r_[True, window_track[1:] != window_track[:-1]])
    best = np.maximum.reduceat(sums, track_starts)
    return dict(zip(window_track[track_starts].tolist(), best.tolist()))


def prescreen(query_chroma: np.ndarray, candidates: list[tuple[int, float, tuple[float, ...]]],
              index: MelodyIndex, params: MelodyTier) -> list[tuple[int, float, tuple[float, ...]]]:
    """The candidates worth a full verification: best of a coarse verification first.

    The coarse verification is :func:`verify_cover` on chroma averaged over
    ``prescreen_decimation`` frames, at each candidate's best tempo hypothesis only
    (no refinement): about a sixth of the full cost, and on ``bench/covers.py`` it keeps
    the true piece among its best 5 for all but 2 of the 307 covers it was given.

    Returns
    -------
    list of (track_id, coarse similarity, tempo_hypotheses)
        At most ``params.verified_candidates``, highest coarse similarity first.
    """
    if len(candidates) <= params.verified_candidates:
        return candidates
    factor = params.prescreen_decimation
    melody = index.params
    coarse_melody = replace(melody, segment_frames=melody.segment_frames // factor,
                            segment_hop=max(1, melody.segment_hop // factor))
    coarse_params = replace(params, tempo_refinement=(1.0,))
    query = resample_chroma(query_chroma, 1.0 / factor)
    scored, retimed = [], dict[float, np.ndarray]()
    for track, _, hypotheses in candidates:
        reference = resample_chroma(index.chroma(track), 1.0 / factor)
        verdict = verify_cover(query, reference, hypotheses[:1], coarse_melody, coarse_params, retimed)
        scored.append((-np.inf if verdict is None else verdict.similarity, track, hypotheses))
    scored.sort(key=lambda item: (-item[0], item[1]))
    return [(track, score, hypotheses) for score, track, hypotheses in scored[:params.verified_candidates]]


def shortlist(query_chroma: np.ndarray, index: MelodyIndex, params: MelodyTier,
              allowed: Collection[int] | None = None,
              skip: AbstractSet[int] = frozenset()) -> list[tuple[int, float, tuple[float, ...]]]:
    """The tracks :func:`match_covers` verifies: :func:`cover_candidates` other than ``skip``,
    then :func:`prescreen`."""
    candidates = [c for c in cover_candidates(query_chroma, index, params, allowed) if c[0] not in skip]
    return prescreen(query_chroma, candidates, index, params)


def tempo_grid(hypotheses: tuple[float, ...], params: MelodyTier) -> tuple[float, ...]:
    """The tempo ratios verification tries: each hypothesis times each refinement factor."""
    return tuple(h * f for h in hypotheses for f in params.tempo_refinement)


def verify_cover(query_chroma: np.ndarray, reference_chroma: np.ndarray, tempo_ratios: tuple[float, ...],
                 melody: MelodyParams, params: MelodyTier,
                 retimed: dict[float, np.ndarray] | None = None) -> CoverVerdict | None:
    """Align a query's chroma with a reference's under tempo, key shift and time offset.

    Parameters
    ----------
    query_chroma, reference_chroma : np.ndarray, shape (n, 12)
        Chroma sequences (rows unit length or zero).
    tempo_ratios : tuple of float
        Query tempo / reference tempo ratios to try.
    melody : MelodyParams
        Window length (``segment_frames``) and window hop (``segment_hop``).
    params : MelodyTier
    retimed : dict of float to np.ndarray, optional
        The query re-timed to each ratio (:func:`resample_chroma`), filled as needed: pass
        one dict for all candidates of a query, whose tempo grids mostly coincide.

    Returns
    -------
    CoverVerdict or None
        The tempo ratio with the highest similarity; None when either sequence is empty.
    """
    n_ref = len(reference_chroma)
    best: CoverVerdict | None = None
    if n_ref == 0:
        return None
    # The reference's spectrum under every circular pitch shift, once for all ratios:
    # shifted[f, c, k] = spectrum[f, (c + k) % 12].
    # Any transform length past the reference plus a window leaves the full-overlap
    # correlations unwrapped; a 5-smooth one is fast and on average a third shorter
    # than the next power of two.
    size = scipy.fft.next_fast_len(n_ref + melody.segment_frames, real=True)
    shifted = np.fft.rfft(reference_chroma, n=size, axis=0)[:, _SHIFTED_CLASSES]
    retimed = {} if retimed is None else retimed
    for ratio in tempo_ratios:
        if ratio not in retimed:
            retimed[ratio] = resample_chroma(query_chroma, ratio)
        if len(retimed[ratio]) == 0:
            continue
        found = _best_line(retimed[ratio], reference_chroma, shifted, size, melody, params)
        if best is None or found[0] > best.similarity:
            similarity, correlation, background, shift, offset, starts, values, length, run = found
            key_shift = int((-shift) % PITCH_CLASSES)  # query classes sit `shift` below the reference's
            if key_shift > PITCH_CLASSES // 2:
                key_shift -= PITCH_CLASSES
            best = CoverVerdict(similarity=similarity, correlation=correlation, background=background,
                                tempo_ratio=float(ratio), key_shift=key_shift, offset_frames=offset,
                                window_starts=starts, window_similarity=values, window_frames=length,
                                best_run=run)
    return best


def _centred_correlation(corr: np.ndarray, windows: np.ndarray, reference: np.ndarray,
                         min_variance: float) -> np.ndarray:
    """Turn window x reference frame correlations into correlations of the *changes*.

    ``corr[w, d, k]`` is the mean over a window's frames of the dot product of query and
    reference frames (reference ``d`` frames on, its classes shifted by ``k``). Removing
    each window's mean pitch-class profile and the mean profile of the reference stretch
    it lies on, and dividing by both stretches' variance around those profiles (each at
    least ``min_variance``), leaves a correlation of how the harmony moves: a drone, a
    held chord or a shared key profile, which agree with much of any tonal piece, count
    for nothing.
    """
    length, n_positions = windows.shape[1], corr.shape[1]
    window_mean = windows.mean(axis=1)                                              # (w, 12)
    window_variance = np.einsum("wtc,wtc->w", windows, windows) / length - np.einsum("wc,wc->w", window_mean,
                                                                                      window_mean)
    summed = np.concatenate([np.zeros((1, PITCH_CLASSES)), np.cumsum(reference, axis=0)])
    stretch_mean = (summed[length:length + n_positions] - summed[:n_positions]) / length     # (d, 12)
    energy = np.concatenate([[0.0], np.cumsum(np.einsum("nc,nc->n", reference, reference))])
    stretch_variance = ((energy[length:length + n_positions] - energy[:n_positions]) / length
                        - np.einsum("dc,dc->d", stretch_mean, stretch_mean))
    # mean_t (q_t - q_mean) . (r_t - r_mean) = mean_t q_t . r_t - q_mean . r_mean, for every shift k.
    covariance = corr - np.einsum("wc,dkc->wdk", window_mean, stretch_mean[:, _SHIFTED_CLASSES])
    scale = np.sqrt(np.maximum(window_variance, min_variance)[:, None, None]
                    * np.maximum(stretch_variance, min_variance)[None, :, None])
    return covariance / scale


def _best_line(query: np.ndarray, reference: np.ndarray, shifted_reference: np.ndarray, size: int,
               melody: MelodyParams, params: MelodyTier):
    """Best (similarity, correlation, background, pitch shift, offset, window starts, window values,
    window length, run)."""
    n_ref = len(reference)
    length = min(melody.segment_frames, len(query), n_ref)
    starts = np.arange(0, len(query) - length + 1, melody.segment_hop)
    windows = query[starts[:, None] + np.arange(length)[None, :]]                  # (w, L, 12)
    spectrum = np.fft.rfft(windows, n=size, axis=1)                                # (w, f, 12)
    # corr[w, d, k] = mean_t sum_c window_w[t, c] * reference[d + t, c + k]: a time
    # cross-correlation per pitch shift, all shifts in one product of spectra.
    product = np.matmul(np.conj(spectrum).transpose(1, 0, 2), shifted_reference)   # (f, w, k)
    n_positions = n_ref - length + 1                                              # full overlap only
    corr = np.fft.irfft(product, n=size, axis=0)[:n_positions].transpose(1, 0, 2) / length
    corr = _centred_correlation(corr, windows, reference, params.min_chroma_variance)
    if params.offset_tolerance:
        # A small share of the unfiltered value keeps the exact offset the best of its neighbours.
        corr = _neighbourhood_maximum(corr, params.offset_tolerance) + 1e-6 * corr
    # Line d0 puts window w at reference frame d0 + starts[w]; line index d0 + last holds
    # it (d0 may be negative: the query starts before the reference). A run of ``run``
    # consecutive windows is scored on every line by the mean of its windows' values,
    # a window off the reference on that line counting as 0 (no agreement). Only the
    # lines a run's windows reach are summed, as a band per run: a table over all lines
    # would grow with the square of the upload's length (460 MB per candidate for 10 min).
    last = int(starts[-1])
    n_lines = n_positions + last
    run = min(params.run_windows, len(starts))
    n_runs = len(starts) - run + 1
    hop = melody.segment_hop
    # Band column b of run r is line b + last - starts[r + run - 1]; the run's window i
    # adds its reference position p at column p + (run - 1 - i) * hop.
    band = np.zeros((n_runs, n_positions + (run - 1) * hop, PITCH_CLASSES))
    for i in range(run):
        lead = (run - 1 - i) * hop
        band[:, lead:lead + n_positions] += corr[i:i + n_runs]
    band /= run
    first, column, shift = np.unravel_index(int(np.argmax(band)), band.shape)
    band_line = last - int(starts[first + run - 1])          # line of the band's column 0
    line = band_line + int(column)
    same_shift = np.zeros(n_lines)
    same_shift[band_line:band_line + band.shape[1]] = band[first, :, shift]
    positions = line - last + starts                          # each window's position on the line
    on_reference = (positions >= 0) & (positions < n_positions)
    window_values = np.zeros(len(starts))
    window_values[on_reference] = corr[np.flatnonzero(on_reference), positions[on_reference], shift]
    correlation = float(band[first, column, shift])
    background = _background(same_shift, line, last, n_positions, params)
    return (correlation - params.background_weight * background, correlation, background, int(shift),
            line - last, starts, window_values, length, (int(first), int(first) + run - 1))


def _neighbourhood_maximum(corr: np.ndarray, reach: int) -> np.ndarray:
    """Maximum over offsets ``d - reach .. d + reach`` (axis 1), offsets off the reference counting as -1."""
    padded = np.full((corr.shape[0], corr.shape[1] + 2 * reach, corr.shape[2]), -1.0)
    padded[:, reach:reach + corr.shape[1]] = corr
    best = padded[:, :corr.shape[1]].copy()
    for step in range(1, 2 * reach + 1):
        np.maximum(best, padded[:, step:step + corr.shape[1]], out=best)
    return best


def _background(same_shift: np.ndarray, line: int, last: int, n_positions: int, params: MelodyTier) -> float:
    """How well the query aligns with the reference *anywhere else* at the same key shift.

    The ``background_quantile`` of the run correlations of the other lines (more than
    ``background_margin`` frames from the best one), preferably those on which every
    window lies inside the reference; never below 0.
    """
    lines = np.arange(len(same_shift))
    away = np.abs(lines - line) > params.background_margin
    inside = away & (lines >= last) & (lines < n_positions)
    pool = same_shift[inside] if inside.sum() >= _MIN_BACKGROUND_LINES else same_shift[away]
    if len(pool) == 0:  # no other line to compare with: the best one is its own background
        return max(float(same_shift[line]), 0.0)
    rank = int(params.background_quantile * (len(pool) - 1))  # a lower quantile: no interpolation
    return max(float(np.partition(pool, rank)[rank]), 0.0)


def match_covers(query_chroma: np.ndarray | None, index: MelodyIndex, params: MelodyTier,
                 chroma_seconds: float, query_duration: float, allowed: Collection[int] | None = None,
                 skip: AbstractSet[int] = frozenset(), catalogue_tracks: int | None = None) -> list[Match]:
    """Every catalogue composition the query re-performs, as ``kind="cover"`` matches.

    Parameters
    ----------
    query_chroma : np.ndarray, shape (n, 12), or None
        The query's chroma sequence (:attr:`fingerprint.Fingerprint.melody`).
    index : MelodyIndex
    params : MelodyTier
    chroma_seconds : float
        Duration of one chroma frame.
    query_duration : float
        Seconds of query (the chance of a similarity grows with it).
    allowed : collection of int, optional
        Reportable track ids (None: all), as for :func:`cover_candidates`.
    skip : set of int
        Tracks already matched by the landmark tiers: a copy or derivative of the
        recording is reported as such, not as a cover, and is not verified again.
    catalogue_tracks : int, optional
        Tracks of the catalogue searched, the scale of chance agreement (default: as many
        as ``allowed``; a cluster's shard passes the whole catalogue's).

    Returns
    -------
    list of Match
        Most similar first. ``score`` is the similarity, ``pitch_shift_semitones`` the
        key shift, ``time_ratio`` the tempo ratio, ``spans`` the aligned stretch.
    """
    if query_chroma is None or len(query_chroma) == 0 or index.ntotal == 0:
        return []
    tracks = catalogue_tracks if catalogue_tracks is not None else None if allowed is None else len(allowed)
    matches = [_describe(track_id, verdict, params, chroma_seconds, len(query_chroma), query_duration, tracks)
               for track_id, verdict in verify_candidates(query_chroma, index, params, allowed, skip)
               if verdict.similarity >= params.min_similarity]
    matches.sort(key=lambda m: (-m.score, m.track_id))
    return matches


def verify_candidates(query_chroma: np.ndarray, index: MelodyIndex, params: MelodyTier,
                      allowed: Collection[int] | None = None,
                      skip: AbstractSet[int] = frozenset()) -> list[tuple[int, CoverVerdict]]:
    """The full verification of every :func:`shortlist` track, whatever its similarity.

    Both chroma sequences are first evened out (:func:`compress_chroma` with
    ``params.verify_exponent``). A track is verified at its best-voted tempo hypothesis
    first, and under the whole :func:`tempo_grid` only when it reaches
    ``params.refine_from`` there: most candidates of a query (every one of an unrelated
    upload's windows) align nowhere, and a sixth of the work tells so.

    Returns
    -------
    list of (track_id, CoverVerdict)
        In shortlist order; a track whose verification found nothing is left out.
    """
    query = compress_chroma(query_chroma, params.verify_exponent)
    found, retimed = [], dict[float, np.ndarray]()
    for track_id, _, hypotheses in shortlist(query_chroma, index, params, allowed, skip):
        reference = compress_chroma(index.chroma(track_id), params.verify_exponent)
        # The best-voted tempo first; the rest of the grid only for a track that aligns there.
        verdict = verify_cover(query, reference, hypotheses[:1], index.params, params, retimed)
        if verdict is not None and verdict.similarity >= params.refine_from:
            verdict = verify_cover(query, reference, tempo_grid(hypotheses, params), index.params, params, retimed)
        if verdict is not None:
            found.append((track_id, verdict))
    return found


def compress_chroma(chroma: np.ndarray, exponent: float) -> np.ndarray:
    """Signed power of every chroma value, each row centred again and scaled to unit length.

    Which chord tones are strongest depends on the instruments and SoundFont; the stored
    chroma is already log-compressed, and the verification evens it out a little more
    with an exponent below 1. An exponent of 1 returns the chroma unchanged.
    """
    if exponent == 1.0 or len(chroma) == 0:
        return chroma
    return centred_unit_rows(np.sign(chroma) * np.abs(chroma) ** exponent).astype(np.float32)


def _describe(track_id: int, verdict: CoverVerdict, params: MelodyTier, chroma_seconds: float,
              query_frames: int, query_duration: float, catalogue_tracks: int | None) -> Match:
    """A cover Match: the best run, extended by neighbouring windows that also agree."""
    first, last = verdict.best_run
    values = verdict.window_similarity
    while first > 0 and values[first - 1] >= params.min_similarity:
        first -= 1
    while last + 1 < len(values) and values[last + 1] >= params.min_similarity:
        last += 1
    ratio = verdict.tempo_ratio
    start, end = int(verdict.window_starts[first]), int(verdict.window_starts[last]) + verdict.window_frames
    similarity = round(verdict.similarity, 4)
    span = Span(query_start=round(start / ratio * chroma_seconds, 3),
                query_end=round(min(end / ratio, query_frames) * chroma_seconds, 3),
                ref_start=round((verdict.offset_frames + start) * chroma_seconds, 3),
                ref_end=round((verdict.offset_frames + end) * chroma_seconds, 3),
                score=round(float(values[first:last + 1].mean()), 4), aligned=end - start)
    return Match(track_id=track_id, score=similarity, aligned=span.aligned,
                 **params.calibration.rate(similarity, query_duration, catalogue_tracks),
                 query_start=span.query_start, query_end=span.query_end, ref_start=span.ref_start,
                 ref_end=span.ref_end, offset=round(verdict.offset_frames * chroma_seconds, 3),
                 time_ratio=round(ratio, 4), pitch_shift_semitones=float(verdict.key_shift), kind="cover",
                 spans=[span], tier=params.name)

"""Parameters and results of the matcher."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

__all__ = ["MatchParams", "Span", "Match", "Alignment", "KINDS"]

#: ``cover`` comes from the melody tier (:mod:`matcher.cover`): the composition re-performed.
KINDS = ("copy", "excerpt", "speed_changed", "pitch_shifted", "time_stretched", "mixed", "cover")


@dataclass(frozen=True)
class MatchParams:
    """How lookup hits become reported matches.

    Attributes
    ----------
    tiers : tuple of str
        Fingerprint tiers searched (default all three): ``pair`` finds copies, excerpts and
        copies under other audio; ``triplet`` adds speed-changed, pitch-shifted and
        time-stretched derivatives at about twice the query time; ``layer`` verifies
        recordings mixed 6-12 dB under other audio peak by peak (:mod:`matcher.layers`;
        needs the index's peak store and a query fingerprinted with dense peaks).
    min_score : float
        Lowest score of an exact-copy (pair-tier) match (default 8.0), calibrated with
        ``bench/accuracy.py`` on music that is not in the catalogue (figures in README).
    triplet_min_score : float
        Lowest score of a derivative (triplet-tier) match (default 6.0). A triplet must
        agree on the track, the time offset, the tempo ratio and the pitch shift at once,
        so chance agreement stays far lower than in the pair tier: on 299 derived queries
        of music outside a 150-track catalogue no unrelated track passed 2.3 (the pair
        tier's chance matches reach 5.9). 6 keeps the same safety ratio as the pair tier.
    max_score_per_second : float
        Cap on what one second of query contributes to a span's score (default 2.0,
        so a match needs at least four seconds of agreement).
        Unrelated music agrees with a catalogue track in bursts — one chord struck in
        the same register — while a real copy agrees all along; the cap keeps a burst
        from ever adding up to a match.
    min_aligned : int
        Fewest distinct query landmarks in a span (default 8).
    offset_tolerance : int
        Exact-copy tier: votes within this many frames of the best offset are aligned (1).
    line_tolerance : float
        Derivative tier: hits within this many frames of the fitted time line are
        aligned (default 3).
    line_ratio_tolerance, line_pitch_tolerance : float
        Derivative tier: once a line is fitted, every hit of the track on it whose own
        tempo estimate is within this log ratio of the line's (default 0.05) and whose
        pitch shift is within this many bins of the alignment's (default 1.0) is aligned,
        not only those of the voting cell: single hits estimate the tempo to only +-3 %,
        so the cell held part of a true line (60 real tracks: 0.8x speed-ups found
        92 -> 97 %; highest chance score over 420 unrelated queries 3.65 -> 4.23).
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
        Tracks examined per tier and round, strongest votes first (default 24): bounds
        the query time in a large catalogue, where many tracks collect some chance
        votes; an upload holding more than 24 catalogue works is reported partly. In the
        triplet tier a true derivative is not always among the 12 strongest raw vote
        cells (a common code weighs in before the per-second cap): 24 found 5 % more
        1.25x speed-ups than 12, at no measurable cost in query time.
    cells_per_candidate : int
        Derivative tier: (tempo ratio, pitch shift) cells tried per candidate track,
        strongest first, until one holds a consistent time line (default 6). A track's
        strongest cell can be chance agreement of common codes scattered over many
        offsets, outweighing a true cell with 50-100 hits on one line: trying 6 cells
        instead of 1 found 8 % more 0.8x and 3 % more 1.25x speed-ups (60 real tracks).
    common_hash_entries_per_code : float
        A code with ``E = entries_in_tier / this`` entries or fewer weighs 1, a commoner
        one ``sqrt(E / entries)`` (default 2**20, about the number of distinct codes
        music produces): common codes are what unrelated music shares by chance.
    min_hash_weight : float
        Hits of codes weighing less than this are ignored (default 0.1).
    min_time_ratio, max_time_ratio : float
        Tempo ratios (query / reference) the derivative tier considers (0.75–1.34).
    max_pitch_shift_semitones : float
        Largest pitch shift the derivative tier considers (default 4.25: a 0.8-1.25x
        speed change moves pitch by 3.86 semitones). Wider costs query time.
    tempo_hypotheses : tuple of float
        Tempo ratios for which the query builds the triplets a reference would have
        built (default 0.8, 0.9, 1.0, 1.1, 1.25; see :func:`fingerprint.hashes.query_triplets`).
    ratio_bin : float
        Width of the tempo-ratio cells the derivative tier votes in, as a log ratio
        (default 0.03, about 3 %).
    copy_ratio_tolerance, copy_pitch_tolerance : float
        A derivative-tier alignment within 1.5 % of tempo and 0.5 semitone of pitch is
        no tempo or pitch change.
    mixed_coverage : float
        A copy whose aligned landmarks are fewer than this fraction of the query's
        landmarks in the same span is reported as ``mixed`` (default 0.12): the
        reference is only part of what sounds there.
    excerpt_fraction : float
        A copy covering less than this fraction of the reference track is an
        ``excerpt`` (default 0.8).
    layer_candidates, layer_offsets_per_candidate : int
        Under-mix tier: tracks (default 10) and offsets per track (default 3) proposed by
        the pair tier's votes and verified. On 60 real 10 s mixes the true (track,
        offset) was among them for 53 at -6 dB and 39 at -12 dB; 40 tracks gave 41.
    layer_min_votes : float
        Weakest vote (rarity-weighted hits within one frame of the offset) a candidate
        needs to be verified at all (default 1.0).
    layer_window_seconds : float
        Query time verified per candidate, centred on its votes (default 10).
    layer_background_seconds : (float, float)
        Range of the other offsets (either side, seconds) at which the background is
        measured (default 0.6-4.9 s: past a note's length, within one passage).
    layer_background_shifts : int
        Background offsets per side (default 40). With 20 the background's spread was
        estimated loosely enough that unrelated music reached scores about 1 higher.
    layer_min_peaks : int
        Fewest catalogue peaks a comparison needs to count (default 100, some 3 s of
        music): a few peaks of a track's fading end met by chance scored high on
        generated songs.
    layer_min_spread : float
        Floor of the background's standard deviation (default 0.01), so that a nearly
        constant background cannot turn a small excess into a large score.
    layer_min_z : float
        Lowest verification score reported (default 5.5): how many background standard
        deviations the coincidence fraction lies above the background's mean, the peaks of
        the proposing pair landmarks left out. Over every 10 s window (5 s apart) of the 50
        held-out real tracks, alone and under another (76,000 candidates) the highest was
        4.9; over the derivative harness's 299 unrelated queries 3.5, over 120 unrelated
        generated songs 3.6.
    layer_extend_z : float
        Score from which another window of a long upload joins a verified match's spans
        (default 4.5): the offset is then fixed, not one guess among many. A window of
        unrelated music at a fixed offset reaches it about once in 9,700 (126,623 windows
        of the candidates of 200 whole-track queries).
    upload_window_seconds : float
        Uploads longer than this (default 300 s) are searched one window of this length
        at a time, and each work's alignments that continue one time line across a
        window boundary are joined again: the landmark tiers' memory and time then grow
        with the upload's length, not faster (a 20-minute upload searched whole peaked
        at 4.2 GB). A derivative passage of a few seconds cut by a boundary may fall
        short on both sides; a recording under other audio is verified in each window
        on its own.
    """

    tiers: tuple[str, ...] = ("pair", "triplet", "layer")
    min_score: float = 8.0
    triplet_min_score: float = 6.0
    max_score_per_second: float = 2.0
    min_aligned: int = 8
    offset_tolerance: int = 1
    line_tolerance: float = 3.0
    line_ratio_tolerance: float = 0.05
    line_pitch_tolerance: float = 1.0
    max_gap_seconds: float = 2.5
    span_edge_density: float = 0.15
    max_alignments: int = 4
    max_candidates: int = 24
    cells_per_candidate: int = 6
    common_hash_entries_per_code: float = float(1 << 20)
    min_hash_weight: float = 0.1
    min_time_ratio: float = 0.75
    max_time_ratio: float = 1.34
    max_pitch_shift_semitones: float = 4.25
    tempo_hypotheses: tuple[float, ...] = (0.8, 0.9, 1.0, 1.1, 1.25)
    ratio_bin: float = 0.03
    copy_ratio_tolerance: float = 0.015
    copy_pitch_tolerance: float = 0.5
    mixed_coverage: float = 0.12
    excerpt_fraction: float = 0.8
    layer_candidates: int = 10
    layer_offsets_per_candidate: int = 3
    layer_min_votes: float = 1.0
    layer_window_seconds: float = 10.0
    layer_background_seconds: tuple[float, float] = (0.6, 4.9)
    layer_background_shifts: int = 40
    layer_min_peaks: int = 100
    layer_min_spread: float = 0.01
    layer_min_z: float = 5.5
    layer_extend_z: float = 4.5
    upload_window_seconds: float = 300.0


@dataclass(frozen=True)
class Span:
    """One stretch of the query aligned with one stretch of the reference (seconds)."""

    query_start: float
    query_end: float
    ref_start: float
    ref_end: float
    score: float
    aligned: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Match:
    """One catalogue track found in a query.

    Attributes
    ----------
    track_id : int
    score : float
        Sum of the span scores: rarity-weighted aligned landmarks, at most
        ``max_score_per_second`` per second of query.
    aligned : int
        Distinct query landmarks aligned, over all spans.
    confidence : float
        ``score / (score + threshold)`` (``min_score`` or ``triplet_min_score``, by the
        tier of the match): 0.5 at the threshold, towards 1 for strong
        matches. A ranking aid, not a probability.
    query_start, query_end, ref_start, ref_end : float
        The strongest span (seconds).
    offset : float
        Reference time at query time 0 on the strongest span's time line.
    time_ratio : float
        Query tempo / reference tempo (1.25: the upload plays 25 % faster).
    pitch_shift_semitones : float
        Query pitch - reference pitch.
    kind : str
        One of :data:`KINDS`.
    spans : list of Span
        Every aligned stretch, in query order.
    tier : str
        ``pair`` (exact-copy landmarks), ``triplet`` (tempo/pitch-invariant ones),
        ``layer`` (catalogue peaks verified under other audio: ``score`` is then the
        verification's standard score, ``aligned`` the peaks met) or ``melody`` (a cover: ``score`` is then the chroma similarity,
        ``pitch_shift_semitones`` the key shift, ``aligned`` chroma frames).
    points : np.ndarray, shape (n, 2)
        (query time, reference time) in seconds of every aligned landmark of the kept
        spans: the evidence an analyst plots against the fitted line.
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
    time_ratio: float
    pitch_shift_semitones: float
    kind: str
    spans: list[Span] = field(default_factory=list)
    tier: str = "pair"
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)), repr=False)


@dataclass
class Alignment:
    """Hits of one track that agree on one time line ``ref = offset + ratio * query`` (frames)."""

    track_id: int
    tier: str
    time_ratio: float
    offset_frames: float
    pitch_bins: float
    query_frames: np.ndarray
    ref_frames: np.ndarray
    query_ids: np.ndarray  # which query landmark each hit belongs to (distinctness, weights)
    weights: np.ndarray     # rarity weight of each hit

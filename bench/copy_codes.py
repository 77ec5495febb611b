"""Can exact-copy pair codes carry more bits and still survive re-encoding, noise and mixes? (issue 16)

    python bench/copy_codes.py ~/.cache/refrain-music --queries 50 --json /tmp/copycodes/result.json

A study, not a feature: nothing here changes the library. The pair tier finds exact copies only,
so its codes need no pitch or speed invariance and may quantise the two peaks' absolute
frequencies and their time difference as finely as those survive. For candidate pair-code designs
this measures, on the real corpus (split as in bench/accuracy.py, seed 1):

1. **Specificity** of the catalogue's codes: plug-in and Miller-Madow entropy, the collision
   entropy (which is what sets chance hits: a query code's expected run length is
   ``entries * sum(p**2)``), and the chance hits per 10 s query per catalogue hour, both predicted
   from the collision probability and counted directly (every hit of a real query's codes on an
   unrelated catalogue track, divided by the hours of those tracks).
2. **Survival**: for real 10 s queries (clean, MP3 64 kbit/s, pink noise 0 dB, white noise 10 dB,
   mixed 6 and 12 dB under a held-out track; bench/accuracy.py's and bench/derivatives.py's
   transforms), the number of the true track's entries the query's codes hit at the true time
   offset (the pair tier's tolerance of one frame), per design; the query's codes built like the
   catalogue's (32 peaks per second, 5 targets per anchor: *symmetric*) or from its dense peaks
   (128 per second, more targets per anchor: *asymmetric*, docs/scale.md step 4), each with or
   without tolerant neighbour codes at quantisation edges.
3. **The trade**: chance hits per query projected to 640 and 175,000 catalogue hours (every run
   grows in proportion to the catalogue), against the true hits kept.

The extra quantities come from the library's own analysis: the log-frequency spectrogram and peaks
of :mod:`fingerprint` (checked equal to :func:`fingerprint_signal`'s), each peak refined in time by
the library's parabola (``_parabolic_offsets`` along the frame axis) and in frequency on the linear
STFT (the strongest STFT bin under the peak's log bin, refined by the same parabola). Decoded and
analysed peaks are cached under ``--cache`` (default /tmp/copycodes), so a second run only counts.
The findings, and what they say about which code to build next: docs/copy-codes.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pickle
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.fft
import scipy.signal
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.accuracy import CONDITIONS, SOURCE_RATE, related_groups  # noqa: E402
from bench.corpus import add_split_arguments, split  # noqa: E402
from bench.derivatives import excerpt, mix_under  # noqa: E402
from refrain.fingerprint import FingerprintParams, fingerprint_signal, load_audio  # noqa: E402
from refrain.fingerprint.hashes import _quantise, _targets_in_zone, hash_landmarks, pair_landmarks  # noqa: E402
from refrain.fingerprint.peaks import Peaks, _parabolic_offsets, find_peaks  # noqa: E402
from refrain.fingerprint.spectrogram import log_frequency_axis, log_frequency_spectrogram  # noqa: E402
from refrain.matcher.pair import PairTier  # noqa: E402
from refrain.matcher.voting import rarity_weights  # noqa: E402

QUERY_SECONDS = 10.0
#: The pair tier's default settings (its rarity cut).
PAIR_TIER = PairTier()
#: The query conditions: bench/accuracy.py's transforms, and mixes under held-out music (bench/derivatives.py).
QUERY_CONDITIONS = ("clean_10s", "mp3_64k", "pink_0dB", "white_10dB", "mixed_-6dB", "mixed_-12dB")
MIX_LEVELS = {"mixed_-6dB": -6.0, "mixed_-12dB": -12.0}
#: Scales the projection is made at: the 640 h of bench/scale.py and a label's catalogue.
PROJECTED_HOURS = (640, 175_000)
#: Hit budgets of a bounded pair search: a few thousand, and the copy proposals' default (60,000).
BUDGETS = (5_000, 60_000)
#: The pair tier's min_score, and a weaker level for a tier that verifies its candidates.
SCORE_LEVELS = (8, 3)
#: Votes within this many frames of the true offset are aligned (``PairTier.offset_tolerance``).
OFFSET_TOLERANCE = 1
#: The true offset is looked for this many frames around the excerpt's nominal start (codec delays).
OFFSET_SEARCH = 4
#: Margin of a tolerant code (quantisation steps either side of a boundary), as the triplet tier's default.
TOLERANT_MARGIN = 0.2


# -- analysis: peaks with the extra quantities -------------------------------------------------

@dataclasses.dataclass(frozen=True)
class FinePeaks:
    """Peaks sorted by frame, with what finer codes could be made of.

    Attributes
    ----------
    frames, bins : np.ndarray of int64
        The library's peak positions (frame, log-frequency bin).
    strength : np.ndarray of float32
        Prominence in dB (the library's).
    log_positions : np.ndarray of float64
        ``bins + bin_offsets``: the library's sub-bin position on the log axis.
    stft_positions : np.ndarray of float64
        Frequency in STFT bins (7.8 Hz at 8 kHz / 1024), refined on the linear STFT.
    time_offsets : np.ndarray of float64
        Sub-frame position in [-0.5, 0.5] frames (parabola through the peak's frame neighbours).
    """

    frames: np.ndarray
    bins: np.ndarray
    strength: np.ndarray
    log_positions: np.ndarray
    stft_positions: np.ndarray
    time_offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.frames)


def linear_stft_db(y: np.ndarray, params: FingerprintParams) -> np.ndarray:
    """dB magnitude of the STFT the log spectrogram is mapped from, shape (n_fft // 2 + 1, n_frames).

    The same framing (Hann window, frame ``t`` starts at sample ``t * hop``) as
    :func:`fingerprint.spectrogram.log_frequency_spectrogram`, which keeps only the log-frequency map of it.
    """
    frames = np.lib.stride_tricks.sliding_window_view(y.astype(np.float32, copy=False), params.n_fft)
    window = scipy.signal.get_window("hann", params.n_fft, fftbins=True).astype(np.float32)
    magnitude = np.abs(scipy.fft.rfft(frames[::params.hop_length] * window, axis=1)).T
    return (20.0 * np.log10(np.maximum(magnitude, 1e-10))).astype(np.float32)


def refined(peaks: Peaks, S_db: np.ndarray, stft_db: np.ndarray, params: FingerprintParams) -> FinePeaks:
    """The library's peaks, refined in time on the log spectrogram and in frequency on the linear STFT."""
    frames, bins = peaks.frames.astype(np.int64), peaks.bins.astype(np.int64)
    # A peak's frequency lies between its two neighbouring log bins' centres; the strongest STFT
    # bin there is its STFT peak, and the library's parabola refines it to a fraction of a bin.
    centres = log_frequency_axis(params.fmin, params.fmax, params.bins_per_octave) * params.n_fft / params.sample_rate
    lowest = np.floor(centres[np.maximum(bins - 1, 0)]).astype(np.int64)
    highest = np.minimum(np.ceil(centres[np.minimum(bins + 1, len(centres) - 1)]).astype(np.int64),
                         stft_db.shape[0] - 1)
    width = int((highest - lowest).max(initial=0)) + 1
    candidates = lowest[:, None] + np.arange(width)[None, :]
    inside = candidates <= highest[:, None]
    levels = np.where(inside, stft_db[np.minimum(candidates, stft_db.shape[0] - 1), frames[:, None]], -np.inf)
    stft_bins = lowest + np.argmax(levels, axis=1)
    stft_positions = stft_bins + _parabolic_offsets(stft_db, stft_bins, frames).astype(np.float64)
    # The same parabola along the frame axis (the spectrogram transposed) gives a sub-frame time.
    time_offsets = _parabolic_offsets(S_db.T, frames, bins).astype(np.float64)
    return FinePeaks(frames, bins, peaks.strength, bins + peaks.bin_offsets.astype(np.float64), stft_positions,
                     time_offsets)


def analyse(y: np.ndarray, params: FingerprintParams, dense: bool) -> tuple[FinePeaks, FinePeaks | None]:
    """The signal's peaks (and its dense peaks if asked), picked as :func:`fingerprint_signal` picks them."""
    S_db = log_frequency_spectrogram(y, params.sample_rate, params.n_fft, params.hop_length, params.fmin,
                                     params.fmax, params.bins_per_octave)
    stft_db = linear_stft_db(y, params)
    peaks = find_peaks(S_db, params.frame_seconds, params.peak_time_radius, params.peak_freq_radius,
                       params.peak_floor_db, params.peak_min_prominence_db, params.peaks_per_second,
                       params.density_window)
    dense_peaks = (find_peaks(S_db, params.frame_seconds, params.dense_peak_time_radius,
                              params.dense_peak_freq_radius, params.peak_floor_db, 0.0,
                              params.dense_peaks_per_second, params.density_window) if dense else None)
    return (refined(peaks, S_db, stft_db, params),
            None if dense_peaks is None else refined(dense_peaks, S_db, stft_db, params))


def check_same_peaks(y: np.ndarray, params: FingerprintParams, peaks: FinePeaks) -> None:
    """Fail unless :func:`analyse` picked the library pipeline's peaks and today's pair codes follow from them."""
    fp = fingerprint_signal(y, params, dense_peaks=True)
    if not (np.array_equal(fp.peaks.frames, peaks.frames) and np.array_equal(fp.peaks.bins, peaks.bins)):
        raise SystemExit("bench/copy_codes.py: its peaks differ from fingerprint_signal's; update analyse()")
    library = hash_landmarks(pair_landmarks(fp.peaks, params.fanout, params.target_dt_min, params.target_dt_max,
                                            params.target_df_max))
    ours = codes_of(peaks, Design("check"), params.fanout, params.target_dt_min, params.target_dt_max,
                    params.target_df_max, tolerant=False)[0]
    # Landmark by landmark, one library code for each of ours and the other way round.
    pairs = np.unique(np.stack([library.astype(np.int64), ours]), axis=1)
    if len(library) != len(ours) or not pairs.shape[1] == len(np.unique(library)) == len(np.unique(ours)):
        raise SystemExit("bench/copy_codes.py: today's design does not reproduce the library's pair codes")


# -- code designs ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Design:
    """A pair-code design: which targets an anchor pairs with and how finely each quantity is coded.

    Attributes
    ----------
    name : str
    frequency : str
        ``"log"``: whole log bins (today); ``"logfine"``: the log position (bin + the library's
        parabolic offset) in steps of ``frequency_step`` log bins; ``"stft"``: the STFT-refined
        frequency in steps of ``frequency_step`` STFT bins.
    frequency_step : float
    time_step : float
        Step of the anchor-to-target time difference in frames; 1 is whole frames (today), below 1
        uses the peaks' sub-frame positions.
    strength_order : bool
        One more bit: whether the target is stronger than the anchor.
    zone : (int, int, int) or None
        (dt_min, dt_max, df_max) of the target zone; None for today's (1, 63, 48).
    """

    name: str
    frequency: str = "log"
    frequency_step: float = 1.0
    time_step: float = 1.0
    strength_order: bool = False
    zone: tuple[int, int, int] | None = None

    @property
    def fine_fields(self) -> int:
        """How many fields are quantised from a continuous value (each may take a tolerant neighbour)."""
        return 2 * (self.frequency != "log") + (self.time_step < 1.0)


DESIGNS = (
    Design("today (log bin, frame)"),
    Design("log 1/2 bin", "logfine", 0.5),
    Design("log 1/4 bin", "logfine", 0.25),
    Design("stft 1 bin", "stft", 1.0),
    Design("stft 1/2 bin", "stft", 0.5),
    Design("stft 1/4 bin", "stft", 0.25),
    Design("frame 1/2", time_step=0.5),
    Design("frame 1/4", time_step=0.25),
    Design("strength order", strength_order=True),
    Design("zone 1-127 frames, 96 bins", zone=(1, 127, 96)),
    Design("zone 16-79 frames", zone=(16, 79, 48)),
    Design("stft 1/2 + frame 1/2", "stft", 0.5, 0.5),
    Design("log 1/2 + frame 1/2", "logfine", 0.5, 0.5),
    Design("stft 1/2 + frame 1/2 + order", "stft", 0.5, 0.5, True),
    Design("stft 1/4 + frame 1/4", "stft", 0.25, 0.25),
    Design("stft 1/4 + frame 1/2 + order", "stft", 0.25, 0.5, True),
    Design("stft 1/4 + frame 1/4 + order", "stft", 0.25, 0.25, True),
    Design("stft 1/2 + zone 16-79", "stft", 0.5, zone=(16, 79, 48)),
)


def _frequency_values(peaks: FinePeaks, design: Design) -> np.ndarray:
    if design.frequency == "log":
        return peaks.bins.astype(np.float64)
    if design.frequency == "logfine":
        return peaks.log_positions / design.frequency_step
    return peaks.stft_positions / design.frequency_step


def codes_of(peaks: FinePeaks, design: Design, fanout: int, dt_min: int, dt_max: int, df_max: int,
             tolerant: bool) -> tuple[np.ndarray, np.ndarray]:
    """The pair codes of ``peaks`` under ``design`` (int64 keys, not packed into 32 bits) and their anchor frames.

    Each anchor is paired with its ``fanout`` nearest later peaks in the zone, as
    :func:`fingerprint.hashes.pair_landmarks` pairs them. With ``tolerant``, a fine field within
    :data:`TOLERANT_MARGIN` of a step boundary is also coded on the other side (every combination,
    each code once per landmark).
    """
    if design.zone is not None:
        dt_min, dt_max, df_max = design.zone
    anchors, targets = _targets_in_zone(peaks.frames, peaks.bins, fanout, dt_min, dt_max, df_max)
    frequency = _frequency_values(peaks, design)
    if design.time_step < 1.0:
        times = peaks.frames + peaks.time_offsets
        span = (times[targets] - times[anchors]) / design.time_step
    else:
        span = (peaks.frames[targets] - peaks.frames[anchors]).astype(np.float64)
    fine = design.frequency != "log"
    fields = [_quantise(frequency[anchors], tolerant and fine, TOLERANT_MARGIN),
              _quantise(frequency[targets], tolerant and fine, TOLERANT_MARGIN),
              _quantise(span, tolerant and design.time_step < 1.0, TOLERANT_MARGIN)]
    order = (peaks.strength[targets] > peaks.strength[anchors]).astype(np.int64) if design.strength_order \
        else np.zeros(len(anchors), np.int64)
    keys = []
    for choice in np.ndindex(*(2,) * len(fields)):
        # Fields fit 12, 12 and 11 bits (frequency <= 474 STFT bins / 1/4, span <= 127 frames / 1/4).
        anchor_value, target_value, span_value = (field[pick] + 1 for field, pick in zip(fields, choice))
        keys.append((((anchor_value << 12 | target_value) << 11 | span_value) << 1) | order)
        if not tolerant:
            break
    if not tolerant:
        return keys[0], peaks.frames[anchors]
    # One code per landmark and distinct key: tolerant variants that agree are the same lookup.
    # A key takes 36 bits, a landmark's row fewer than 22 (hours of peaks), so both share an int64.
    combined = np.unique((np.concatenate(keys) << 22) | np.tile(np.arange(len(anchors)), len(keys)))
    return combined >> 22, peaks.frames[anchors][combined & ((1 << 22) - 1)]


# -- the corpus, analysed once and cached ------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class QueryRecord:
    """One real query: its peaks (strongest and dense) and ground truth."""

    condition: str
    track: int              # position of the true track in the catalogue list
    nominal_offset: float   # reference frame - query frame at the excerpt's start, in frames
    peaks: FinePeaks
    dense: FinePeaks


def analysed_corpus(args: argparse.Namespace, catalogue: list[Path], held_out: list[Path],
                    params: FingerprintParams) -> tuple[list[FinePeaks], list[float], list[QueryRecord]]:
    """Catalogue peaks, catalogue durations (s) and the queries; read from ``--cache`` when it holds them."""
    key = f"cat{len(catalogue)}-neg{len(held_out)}-seed{args.seed}-q{args.queries}"
    cached = args.cache / f"corpus-{key}.pickle"
    if cached.exists():
        return pickle.loads(cached.read_bytes())
    started = time.process_time()
    references, durations = [], []
    for number, path in enumerate(catalogue):
        y = load_audio(path, params.sample_rate)
        peaks, _ = analyse(y, params, dense=False)
        if number == 0:
            check_same_peaks(y, params, peaks)
        references.append(peaks)
        durations.append(len(y) / params.sample_rate)
    print(f"catalogue analysed: {len(catalogue)} tracks, {sum(durations) / 3600:.2f} h, "
          f"{time.process_time() - started:.0f} CPU s", file=sys.stderr)
    rng = np.random.default_rng(args.seed)
    backgrounds = [load_audio(path, SOURCE_RATE) for path in held_out]
    chosen = rng.permutation(len(catalogue))[:args.queries]
    queries = []
    args.cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.cache) as scratch:  # the MP3 round trip's files
        workdir = Path(scratch)
        for number, track in enumerate(chosen):
            y = load_audio(catalogue[track], SOURCE_RATE)
            for condition in QUERY_CONDITIONS:
                cut = excerpt(catalogue[track], y, QUERY_SECONDS, rng)
                if condition in MIX_LEVELS:
                    # A held-out track per mix, taken in turn (the two mixes of a track get different ones).
                    background = backgrounds[(number + len(queries)) % len(backgrounds)]
                    start = rng.uniform(0, max(0.0, len(background) / SOURCE_RATE - QUERY_SECONDS))
                    under = background[int(start * SOURCE_RATE):int((start + QUERY_SECONDS) * SOURCE_RATE)]
                    x = mix_under(cut.samples, under, MIX_LEVELS[condition])
                else:
                    x = CONDITIONS[condition][1](cut.samples, rng, workdir)
                q = soxr.resample(x, SOURCE_RATE, params.sample_rate, quality="HQ").astype(np.float32)
                peaks, dense = analyse(q, params, dense=True)
                assert dense is not None
                if len(peaks) < 2:
                    continue
                first_sample = int(cut.start * SOURCE_RATE) / SOURCE_RATE * params.sample_rate
                queries.append(QueryRecord(condition, int(track), first_sample / params.hop_length, peaks, dense))
    print(f"{len(queries)} queries analysed, {time.process_time() - started:.0f} CPU s in all", file=sys.stderr)
    result = (references, durations, queries)
    cached.write_bytes(pickle.dumps(result))
    return result


# -- counting ----------------------------------------------------------------------------------------

@dataclasses.dataclass
class Catalogue:
    """One design's catalogue codes, sorted, with each entry's track and anchor frame."""

    keys: np.ndarray
    tracks: np.ndarray
    frames: np.ndarray

    def count(self, codes: np.ndarray) -> np.ndarray:
        """Run length of each code."""
        return np.searchsorted(self.keys, codes, side="right") - np.searchsorted(self.keys, codes, side="left")


def catalogue_codes(references: list[FinePeaks], design: Design, params: FingerprintParams) -> Catalogue:
    keys, tracks, frames = [], [], []
    for number, peaks in enumerate(references):
        codes, anchor_frames = codes_of(peaks, design, params.fanout, params.target_dt_min, params.target_dt_max,
                                        params.target_df_max, tolerant=False)
        keys.append(codes)
        tracks.append(np.full(len(codes), number, np.int32))
        frames.append(anchor_frames)
    all_keys = np.concatenate(keys)
    order = np.argsort(all_keys, kind="stable")
    return Catalogue(all_keys[order], np.concatenate(tracks)[order], np.concatenate(frames)[order])


def specificity(catalogue: Catalogue, hours: np.ndarray) -> dict:
    """Entropy of the catalogue's codes and their collision probability (see the module docstring).

    Also how the number of distinct codes grows with the catalogue (its first half of tracks
    against the whole): the run store spends 8 bytes per distinct code (its ``codes`` and
    ``starts``) besides each entry's id.
    """
    counts = np.unique(catalogue.keys, return_counts=True)[1].astype(np.float64)
    n = counts.sum()
    p = counts / n
    plug_in = float(-(p * np.log2(p)).sum())
    half = catalogue.tracks < len(hours) // 2
    distinct_half = len(np.unique(catalogue.keys[half]))
    growth = float(np.log(len(counts) / distinct_half) / np.log(hours.sum() / hours[:len(hours) // 2].sum()))
    return {"entries_per_hour": n / hours.sum(), "distinct_codes": int(len(counts)),
            "distinct_codes_half_catalogue": distinct_half, "distinct_growth_exponent": growth,
            "distinct_codes_per_hour_at_640_h": float(min(n / hours.sum() * 640, len(counts) * (
                640 / hours.sum()) ** growth) / 640),
            "entropy_plug_in_bits": plug_in,
            # Miller-Madow: the plug-in estimate is low by about (distinct - 1) / 2n nats.
            "entropy_miller_madow_bits": plug_in + (len(counts) - 1) / (2 * n) / np.log(2),
            # Unbiased estimate of sum(p**2) (collisions between distinct entries); -log2 of it is
            # the collision (Renyi-2) entropy, the figure that sets a random code's run length.
            "collision_probability": float((counts * (counts - 1)).sum() / (n * (n - 1))),
            "collision_entropy_bits": float(-np.log2((counts * (counts - 1)).sum() / (n * (n - 1))))}


def true_offset(query: QueryRecord, today: Catalogue, params: FingerprintParams) -> float:
    """The reference frame - query frame of the query's copy, found with today's codes near the nominal start.

    Codec delays move it by a frame or two, so the mode of today's true-track hits within
    :data:`OFFSET_SEARCH` frames of the nominal offset is taken (the nominal one where none is).
    """
    codes, frames = codes_of(query.peaks, DESIGNS[0], params.fanout, params.target_dt_min, params.target_dt_max,
                             params.target_df_max, tolerant=False)
    offsets = _true_track_offsets(today, query.track, codes, frames)
    near = offsets[np.abs(offsets - query.nominal_offset) <= OFFSET_SEARCH]
    if len(near) == 0:
        return float(round(query.nominal_offset))
    values, counts = np.unique(near, return_counts=True)
    return float(values[np.argmax(counts)])


def _true_track_offsets(catalogue: Catalogue, track: int, codes: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Reference frame - query frame of every hit of ``codes`` on ``track``."""
    left = np.searchsorted(catalogue.keys, codes, side="left")
    right = np.searchsorted(catalogue.keys, codes, side="right")
    lengths = right - left
    hit = np.repeat(left, lengths) + (np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths))
    query_frames = np.repeat(frames, lengths)
    own = catalogue.tracks[hit] == track
    return (catalogue.frames[hit[own]] - query_frames[own]).astype(np.float64)


def query_counts(query: QueryRecord, catalogue: Catalogue, design: Design, params: FingerprintParams,
                 offset: float, dense_fanout: int | None, tolerant: bool,
                 related: np.ndarray) -> dict[str, int]:
    """Codes asked, true hits at the true offset and hits on unrelated tracks of one query under one design.

    ``dense_fanout`` None builds the query's codes as the catalogue's; a number builds them from its
    dense peaks with that many targets per anchor. ``related`` flags catalogue tracks that share
    material with the true track (the true track included): their hits are not chance hits. Hits
    are counted over every code (``_all``) and over the codes the pair tier looks up: its rarity
    cut (``min_hash_weight``, :func:`matcher.voting.rarity_weights`) skips codes holding more than
    about 1/10,000 of the tier's entries, at every catalogue size.
    """
    peaks, fanout = (query.peaks, params.fanout) if dense_fanout is None else (query.dense, dense_fanout)
    codes, frames = codes_of(peaks, design, fanout, params.target_dt_min, params.target_dt_max,
                             params.target_df_max, tolerant)
    left = np.searchsorted(catalogue.keys, codes, side="left")
    right = np.searchsorted(catalogue.keys, codes, side="right")
    lengths = right - left
    looked_up = rarity_weights(lengths, len(catalogue.keys), PAIR_TIER) >= PAIR_TIER.min_hash_weight
    hit = np.repeat(left, lengths) + (np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths))
    hit_looked_up = np.repeat(looked_up, lengths)
    chance = ~related[catalogue.tracks[hit]]
    aligned = (catalogue.tracks[hit] == query.track) \
        & (np.abs(catalogue.frames[hit] - np.repeat(frames, lengths) - offset) <= OFFSET_TOLERANCE)
    return {"asked": len(codes), "looked_up": int(looked_up.sum()),
            "true_all": int(aligned.sum()), "true": int((aligned & hit_looked_up).sum()),
            "chance_all": int(chance.sum()), "chance": int((chance & hit_looked_up).sum())}


def kept_within_budget(true_hits: np.ndarray, chance_per_hour: np.ndarray, budget: int, hours: float) -> np.ndarray:
    """The true hits a query keeps when it may read ``budget`` hits of a ``hours`` catalogue.

    Reading a share of its codes keeps about that share of its true hits: the true track's hits come
    from runs of every length, like the chance hits (docs/scale.md, "Which codes"), so no ordering
    of the codes (rarest first) keeps them faster than it keeps the chance hits.
    """
    unbounded = chance_per_hour * hours
    return true_hits * np.minimum(1.0, budget / np.maximum(unbounded, 1.0))


def run(args: argparse.Namespace, catalogue: list[Path], held_out: list[Path]) -> dict:
    params = FingerprintParams()
    references, durations, queries = analysed_corpus(args, catalogue, held_out, params)
    durations_h = np.array(durations) / 3600
    groups = related_groups()
    names = [path.name for path in catalogue]
    related_masks = {}
    for track in {q.track for q in queries}:
        group = groups.get(names[track])
        related_masks[track] = np.array([i == track or (group is not None and groups.get(name) == group)
                                         for i, name in enumerate(names)])
    today = catalogue_codes(references, DESIGNS[0], params)
    offsets = [true_offset(q, today, params) for q in queries]
    variants = [("symmetric", None, False), ("symmetric, tolerant", None, True),
                ("dense", args.dense_fanout, False), ("dense, tolerant", args.dense_fanout, True),
                (f"dense, {args.dense_fanout // 2} targets", max(1, args.dense_fanout // 2), False)]
    report: dict = {"catalogue_tracks": len(references), "catalogue_hours": float(durations_h.sum()),
                    "queries": {c: sum(q.condition == c for q in queries) for c in QUERY_CONDITIONS},
                    "dense_fanout": args.dense_fanout, "designs": []}
    for design in DESIGNS:
        started = time.process_time()
        store = today if design == DESIGNS[0] else catalogue_codes(references, design, params)
        row: dict = {"design": design.name, **specificity(store, durations_h), "variants": {}}
        for variant, dense_fanout, tolerant in variants:
            if tolerant and design.fine_fields == 0:
                continue
            per_query = [query_counts(q, store, design, params, offset, dense_fanout, tolerant,
                                      related_masks[q.track]) for q, offset in zip(queries, offsets)]
            asked = np.array([c["asked"] for c in per_query])
            true_hits = np.array([c["true"] for c in per_query])
            unrelated_hours = np.array([durations_h.sum() - durations_h[related_masks[q.track]].sum()
                                        for q in queries])
            chance_per_hour = np.array([c["chance"] for c in per_query]) / unrelated_hours
            chance_all_per_hour = np.array([c["chance_all"] for c in per_query]) / unrelated_hours
            summary: dict = {"codes_asked_p50": float(np.median(asked)),
                             "codes_looked_up_p50": float(np.median([c["looked_up"] for c in per_query])),
                             "chance_hits_per_catalogue_hour_mean": float(chance_per_hour.mean()),
                             "chance_hits_per_catalogue_hour_every_code_mean": float(chance_all_per_hour.mean()),
                             "chance_hits_per_catalogue_hour_every_code_predicted": float(
                                 np.mean(asked) * row["entries_per_hour"] * row["collision_probability"]),
                             "projected_hits_per_query": {str(h): float(chance_per_hour.mean() * h)
                                                          for h in PROJECTED_HOURS},
                             "conditions": {}}
            for condition in QUERY_CONDITIONS:
                picked = np.array([q.condition == condition for q in queries])
                if not picked.any():
                    continue
                hits = true_hits[picked]
                every = np.array([c["true_all"] for c in per_query])[picked]
                summary["conditions"][condition] = {
                    "true_hits_p50": float(np.median(hits)), "true_hits_mean": float(hits.mean()),
                    "true_hits_every_code_p50": float(np.median(every)),
                    **{f"share_ge_{level}": float(np.mean(hits >= level)) for level in SCORE_LEVELS},
                    "share_ge_8_within_budget": {
                        f"{budget}@{hours}": float(np.mean(
                            kept_within_budget(hits, chance_per_hour[picked], budget, hours) >= SCORE_LEVELS[0]))
                        for budget in BUDGETS for hours in PROJECTED_HOURS}}
            summary["per_query"] = [[q.condition, int(a), int(t), float(c)]
                                    for q, a, t, c in zip(queries, asked, true_hits, chance_per_hour)]
            row["variants"][variant] = summary
        report["designs"].append(row)
        print(f"{design.name}: {time.process_time() - started:.0f} CPU s", file=sys.stderr)
    return report


def print_tables(report: dict) -> None:
    print(f"catalogue {report['catalogue_tracks']} tracks, {report['catalogue_hours']:.2f} h; "
          f"queries {report['queries']}; dense fanout {report['dense_fanout']}")
    print("\n| design | entries/h | distinct | H plug-in | H Miller-Madow | H2 collision | mean run at 640 h | "
          "distinct growth exponent | run-store code bytes per hour now / at 640 h |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in report["designs"]:
        run_640 = row["entries_per_hour"] * 640 * row["collision_probability"]
        print(f"| {row['design']} | {row['entries_per_hour']:,.0f} | {row['distinct_codes']:,} | "
              f"{row['entropy_plug_in_bits']:.1f} | {row['entropy_miller_madow_bits']:.1f} | "
              f"{row['collision_entropy_bits']:.1f} | {run_640:,.0f} | {row['distinct_growth_exponent']:.2f} | "
              f"{8 * row['distinct_codes'] / report['catalogue_hours'] / 1e6:.2f} / "
              f"{8 * row['distinct_codes_per_hour_at_640_h'] / 1e6:.2f} MB |")
    conditions = [c for c in QUERY_CONDITIONS if c in report["queries"]]
    print("\nAfter the pair tier's rarity cut (every code: chance hits measured / predicted from the collision "
          "probability)")
    print("\n| design | query codes | codes asked (looked up) p50 | chance hits per catalogue hour (every code: "
          "measured / predicted) | hits at 640 h | at 175,000 h | "
          + " | ".join(f"{c} p50 (>=8 / >=3)" for c in conditions) + " |")
    print("|---" * (6 + len(conditions)) + "|")
    for row in report["designs"]:
        for variant, s in row["variants"].items():
            cells = [f"{s['conditions'][c]['true_hits_p50']:.0f} ({100 * s['conditions'][c]['share_ge_8']:.0f} / "
                     f"{100 * s['conditions'][c]['share_ge_3']:.0f} %)" for c in conditions]
            print(f"| {row['design']} | {variant} | {s['codes_asked_p50']:,.0f} ({s['codes_looked_up_p50']:,.0f}) | "
                  f"{s['chance_hits_per_catalogue_hour_mean']:,.0f} "
                  f"({s['chance_hits_per_catalogue_hour_every_code_mean']:,.0f} / "
                  f"{s['chance_hits_per_catalogue_hour_every_code_predicted']:,.0f}) | "
                  f"{s['projected_hits_per_query']['640']:,.0f} | {s['projected_hits_per_query']['175000']:,.0f} | "
                  + " | ".join(cells) + " |")
    print("\nShare of queries keeping >= 8 true hits within a hit budget (budget@hours), mixed_-6dB / pink_0dB")
    for row in report["designs"]:
        for variant, s in row["variants"].items():
            shares = {c: s["conditions"][c]["share_ge_8_within_budget"] for c in ("mixed_-6dB", "pink_0dB")
                      if c in s["conditions"]}
            if len(shares) == 2:
                print(f"| {row['design']} | {variant} | " + " | ".join(
                    f"{key}: {100 * shares['mixed_-6dB'][key]:.0f} / {100 * shares['pink_0dB'][key]:.0f} %"
                    for key in shares["mixed_-6dB"]) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_split_arguments(parser)
    parser.add_argument("--queries", type=int, default=50, help="catalogue tracks queried per condition (50)")
    parser.add_argument("--dense-fanout", type=int, default=24,
                        help="targets per anchor of a query's codes from its dense peaks (default 24)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/copycodes"),
                        help="where analysed peaks are kept between runs (default /tmp/copycodes)")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    args = parser.parse_args()
    if args.queries < 1 or args.dense_fanout < 1:
        parser.error("--queries and --dense-fanout must be at least 1")
    catalogue, held_out = split(parser, args)
    report = run(args, catalogue, held_out)
    print_tables(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Landmark hashes: anchor peak + target peak, packed into 32-bit codes.

A landmark is an anchor peak paired with one of the next peaks in its target
zone (Wang 2003). Its geometry — anchor bin, bin difference, frame difference —
is quantised into named bit fields by a :class:`HashLayout`. Fields are packed
from the least significant bit up, and the index groups codes by their lowest
bits, so the layout decides both what a hash means and how lookups are bucketed.
:data:`PAIR_LAYOUT` codes exact copies; :data:`TRIPLET_LAYOUT` codes peak
triplets by quantities that a speed change, a pitch shift or a time-stretch leave
unchanged, so that derivatives of a recording share codes with it too.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numba
import numpy as np

from refrain.fingerprint.peaks import Peaks

__all__ = ["HashLayout", "PAIR_LAYOUT", "TRIPLET_LAYOUT", "TIER_PAYLOAD_BITS", "TRIPLET_MAX_SPAN", "Landmarks",
           "Triplets", "pair_landmarks", "hash_landmarks", "unhash_landmarks", "triplet_landmarks", "query_triplets",
           "hash_triplets", "triplet_payloads", "unpack_triplet_payload", "QUAD_LAYOUT", "Quads",
           "quad_landmarks", "query_quads", "hash_quads", "quad_payloads", "unpack_quad_payload", "QUAD_MAX_SPAN",
           "DOUBLE_LAYOUT", "Doubles", "double_landmarks", "sorted_distinct"]

# What an index entry of each tier carries besides its code and track id: the pair
# tier only the anchor frame (22 bits: 37 h at 32 ms frames); the triplet tier also
# the anchor's bin and the anchor-to-second-target span, from which every hit
# estimates the tempo ratio and pitch shift between query and reference; the quad
# tier the anchor frame and the anchor-to-farthest-target span (a tempo estimate); the
# double tier the anchor frame.
_FRAME_BITS, _BIN_BITS, _SPAN_BITS = 22, 8, 6
TIER_PAYLOAD_BITS = {"pair": _FRAME_BITS, "triplet": _FRAME_BITS + _BIN_BITS + _SPAN_BITS,
                     "quad": _FRAME_BITS + _SPAN_BITS, "double": _FRAME_BITS}
#: The longest anchor-to-second-target span (frames) a triplet entry can carry.
TRIPLET_MAX_SPAN = (1 << _SPAN_BITS) - 1
#: The longest anchor-to-farthest-target span (frames) a quad entry can carry.
QUAD_MAX_SPAN = (1 << _SPAN_BITS) - 1


@dataclass(frozen=True)
class HashLayout:
    """Named bit fields of a 32-bit landmark code, least significant first.

    Attributes
    ----------
    name : str
        Identifier stored in an index's manifest.
    fields : tuple of (str, int)
        Field names and widths; widths sum to at most 32.
    """

    name: str
    fields: tuple[tuple[str, int], ...]

    def __post_init__(self) -> None:
        if sum(width for _, width in self.fields) > 32:
            raise ValueError(f"layout {self.name} needs more than 32 bits")

    def pack(self, **values: np.ndarray) -> np.ndarray:
        """Pack non-negative integer arrays (one per field) into uint32 codes.

        Raises
        ------
        ValueError
            If a field is missing or a value does not fit its width.
        """
        missing = [name for name, _ in self.fields if name not in values]
        if missing:
            raise ValueError(f"layout {self.name}: missing fields {missing}")
        code = np.zeros(np.shape(values[self.fields[0][0]]), dtype=np.uint32)
        shift = 0
        for name, width in self.fields:
            value = np.asarray(values[name], dtype=np.int64)
            if value.size and (value.min() < 0 or value.max() >= 1 << width):
                raise ValueError(f"field {name} out of range for {width} bits")
            code |= value.astype(np.uint32) << np.uint32(shift)
            shift += width
        return code

    def unpack(self, code: np.ndarray) -> dict[str, np.ndarray]:
        """Inverse of :meth:`pack`."""
        code = np.asarray(code, dtype=np.uint32)
        out, shift = {}, 0
        for name, width in self.fields:
            out[name] = ((code >> np.uint32(shift)) & np.uint32((1 << width) - 1)).astype(np.int64)
            shift += width
        return out


# Anchor bin (<= 255 log bins), signed bin difference stored with an offset of 128,
# and frame difference (<= 127 frames). The low 16 bits (anchor, difference) key
# the index's inverted lists.
PAIR_LAYOUT = HashLayout("pair-v1", (("anchor_bin", 8), ("delta_bin", 8), ("delta_frames", 7)))
_DELTA_BIN_OFFSET = 128


@dataclass(frozen=True)
class Landmarks:
    """Anchor/target peak pairs (one row per landmark)."""

    anchor_frames: np.ndarray
    anchor_bins: np.ndarray
    target_frames: np.ndarray
    target_bins: np.ndarray

    def __len__(self) -> int:
        return len(self.anchor_frames)


def sorted_distinct(values: np.ndarray) -> np.ndarray:
    """The distinct values, increasing: ``np.unique(values)`` by one sort.

    NumPy 2.3 and later find plain ``np.unique``'s values by hashing, then sort them: on the
    tens of thousands of distinct keys a query makes that is some 25 times slower than a sort
    (50,000 int64: 4.4 against 0.18 ms).
    """
    ordered = np.sort(values)
    return ordered[np.concatenate([[True], ordered[1:] != ordered[:-1]])] if len(ordered) else ordered


def pair_landmarks(peaks: Peaks, fanout: int, dt_min: int, dt_max: int, df_max: int) -> Landmarks:
    """Pair each peak with the ``fanout`` nearest later peaks in its target zone.

    Parameters
    ----------
    peaks : Peaks
        Peaks sorted by frame.
    fanout : int
        Maximum number of targets per anchor.
    dt_min, dt_max : int
        Target zone in frames after the anchor (inclusive).
    df_max : int
        Maximum absolute bin difference between anchor and target.

    Returns
    -------
    Landmarks
        Sorted by anchor frame.
    """
    frames, bins = peaks.frames, peaks.bins
    anchor_idx, target_idx = _targets_in_zone(frames, bins, fanout, dt_min, dt_max, df_max)
    order = np.argsort(anchor_idx, kind="stable")
    anchor_idx, target_idx = anchor_idx[order], target_idx[order]
    return Landmarks(frames[anchor_idx], bins[anchor_idx], frames[target_idx], bins[target_idx])


def hash_landmarks(landmarks: Landmarks) -> np.ndarray:
    """Quantise landmarks into 32-bit codes of :data:`PAIR_LAYOUT`.

    Returns
    -------
    np.ndarray of uint32, shape (n_landmarks,)
    """
    return PAIR_LAYOUT.pack(
        anchor_bin=landmarks.anchor_bins,
        delta_bin=landmarks.target_bins - landmarks.anchor_bins + _DELTA_BIN_OFFSET,
        delta_frames=landmarks.target_frames - landmarks.anchor_frames,
    )


def unhash_landmarks(codes: np.ndarray, anchor_frames: np.ndarray) -> Landmarks:
    """The peaks of pair landmarks, from their codes and anchor frames.

    Inverse of :func:`hash_landmarks`: a code holds the anchor's bin and the target's
    offset from the anchor in bins and frames.

    Parameters
    ----------
    codes : np.ndarray of uint32
        Codes of :data:`PAIR_LAYOUT`.
    anchor_frames : np.ndarray of int
        The anchor frame of each code.

    Returns
    -------
    Landmarks
    """
    fields = PAIR_LAYOUT.unpack(codes)
    anchor_frames = np.asarray(anchor_frames, dtype=np.int64)
    return Landmarks(anchor_frames, fields["anchor_bin"], anchor_frames + fields["delta_frames"],
                     fields["anchor_bin"] + fields["delta_bin"] - _DELTA_BIN_OFFSET)


# Triplet codes hold only quantities that survive tempo and pitch changes: on a
# log-frequency axis a pitch shift adds the same number of bins to every peak, so
# bin differences are unchanged; a tempo change multiplies every time difference by
# the same factor, so their ratio is unchanged.
# The time ratio gets 16 levels: measured on real music, frame-quantised peak times
# jitter it by more than a 32nd, and 32 levels lost half of the unchanged copies' codes.
# The anchor's octave band is not pitch-invariant, but it is coarse: a query looks up
# the one or two bands a bounded pitch shift can have come from, which divides the
# entries each lookup returns by about three.
TRIPLET_LAYOUT = HashLayout("triplet-v2", (("delta_bin_12", 7), ("delta_bin_13", 7),
                                           ("time_ratio", 4), ("anchor_band", 3)))
_TRIPLET_DELTA_OFFSET = 64
_TIME_RATIO_LEVELS = 16
_BAND_BINS = 36


@dataclass(frozen=True)
class Triplets:
    """Anchor peak + two later target peaks (one row per triplet).

    Attributes
    ----------
    anchor_frames, anchor_bins : np.ndarray of int
        The anchor peak.
    anchor_positions : np.ndarray of float
        Anchor bin refined to sub-bin precision.
    delta_12, delta_13 : np.ndarray of float
        Sub-bin-precise log-frequency differences target 1 - anchor, target 2 - anchor.
    dt_12, dt_13 : np.ndarray of int
        Frame differences target 1 - anchor, target 2 - anchor (``dt_12 < dt_13``).
    """

    anchor_frames: np.ndarray
    anchor_bins: np.ndarray
    anchor_positions: np.ndarray
    delta_12: np.ndarray
    delta_13: np.ndarray
    dt_12: np.ndarray
    dt_13: np.ndarray

    def __len__(self) -> int:
        return len(self.anchor_frames)

    @property
    def time_ratio(self) -> np.ndarray:
        """``dt_12 / dt_13`` in (0, 1): invariant to a tempo change."""
        return self.dt_12 / self.dt_13


@numba.njit(cache=True, nogil=True)
def _targets_in_zone(frames: np.ndarray, bins: np.ndarray, count: int, dt_min: int, dt_max: int,
                     df_max: int) -> tuple[np.ndarray, np.ndarray]:
    """(anchor, target) index pairs: each peak with its ``count`` nearest later peaks in a zone.

    ``frames`` must be sorted. "Nearest" follows peak order (frame, then bin). Pairs come
    grouped by anchor, nearest target first. Compiled: a query asks for ten zones (two
    per tempo hypothesis), each a walk over every peak's later neighbours.
    """
    n = len(frames)
    anchors, targets = np.empty(n * count, np.int64), np.empty(n * count, np.int64)
    found = 0
    for anchor in range(n):
        taken = 0
        target = anchor + 1
        while target < n and taken < count and frames[target] - frames[anchor] <= dt_max:
            if frames[target] - frames[anchor] >= dt_min and abs(bins[target] - bins[anchor]) <= df_max:
                anchors[found], targets[found] = anchor, target
                found += 1
                taken += 1
            target += 1
    return anchors[:found], targets[:found]


def _nearest_targets(frames: np.ndarray, bins: np.ndarray, count: int, dt_min: int, dt_max: int,
                     df_max: int) -> np.ndarray:
    """Each peak's ``count`` nearest targets in a zone by rank, shape (n, count), -1 where it has fewer."""
    anchor, target = _targets_in_zone(frames, bins, count, dt_min, dt_max, df_max)
    table = np.full((len(frames), count), -1, dtype=np.int64)
    table[anchor, np.arange(len(anchor)) - np.searchsorted(anchor, anchor, side="left")] = target
    return table


def triplet_landmarks(peaks: Peaks, near_zone: tuple[int, int], far_zone: tuple[int, int],
                      per_zone: int, df_max: int) -> Triplets:
    """Combine each anchor with target pairs: one peak from a near zone, one from a far zone.

    Taking the two targets from disjoint zones keeps ``dt_13`` long enough (at least
    ``far_zone[0]`` frames) for the time ratio to be measured precisely from
    frame-quantised peak times, and spreads the ratio over its range. (Choosing
    targets by rank instead of by zone was measured too: it found fewer derivatives.)

    Parameters
    ----------
    peaks : Peaks
        Peaks sorted by frame.
    near_zone, far_zone : (int, int)
        Inclusive frame-difference ranges after the anchor for the first and second target.
    per_zone : int
        Nearest peaks taken from each zone; ``per_zone ** 2`` triplets per anchor at most.
    df_max : int
        Maximum absolute bin difference between the anchor and either target.

    Returns
    -------
    Triplets
        Sorted by anchor frame.
    """
    anchor, first, second = _triplet_indices(peaks, near_zone, far_zone, per_zone, df_max)
    return _triplets_of(peaks, anchor, first, second)


def _triplet_indices(peaks: Peaks, near_zone: tuple[int, int], far_zone: tuple[int, int], per_zone: int,
                     df_max: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Peak indices (anchor, near target, far target) of :func:`triplet_landmarks`, by anchor."""
    frames, bins = peaks.frames.astype(np.int64), peaks.bins.astype(np.int64)
    n = len(frames)
    # Each anchor's targets by rank (nearest first), -1 where it has fewer than per_zone.
    nearest = [_nearest_targets(frames, bins, per_zone, low, high, df_max) for low, high in (near_zone, far_zone)]
    # Columns (i, j) in row-major order: the i-th near target with the j-th far target.
    # Reading the table row by row puts the triplets in anchor order, and an anchor's
    # triplets in (i, j) order.
    first, second = np.repeat(nearest[0], per_zone, axis=1), np.tile(nearest[1], (1, per_zone))
    complete = (first >= 0) & (second >= 0)
    anchor = np.broadcast_to(np.arange(n, dtype=np.int64)[:, None], complete.shape)[complete]
    return anchor, first[complete], second[complete]


def _triplets_of(peaks: Peaks, anchor: np.ndarray, first: np.ndarray, second: np.ndarray) -> Triplets:
    """The :class:`Triplets` of peak index triples."""
    frames, bins = peaks.frames.astype(np.int64), peaks.bins.astype(np.int64)
    positions = bins + peaks.bin_offsets.astype(np.float64)
    return Triplets(anchor_frames=frames[anchor], anchor_bins=bins[anchor],
                    anchor_positions=positions[anchor],
                    delta_12=positions[first] - positions[anchor],
                    delta_13=positions[second] - positions[anchor],
                    dt_12=frames[first] - frames[anchor], dt_13=frames[second] - frames[anchor])


def query_triplets(peaks: Peaks, near_zone: tuple[int, int], far_zone: tuple[int, int],
                   per_zone: int, df_max: int, tempo_ratios: tuple[float, ...]) -> Triplets:
    """The triplets a query shares with its reference under any of ``tempo_ratios``.

    A reference picks its targets in fixed time zones. In a copy played ``R`` times
    faster those targets sit ``R`` times closer to the anchor, where the reference's
    zones would miss them; so the query also picks targets in the zones divided by
    each hypothesised ratio, and keeps the union.

    Parameters
    ----------
    peaks, near_zone, far_zone, per_zone, df_max
        As for :func:`triplet_landmarks` (the reference's settings).
    tempo_ratios : tuple of float
        Query tempo / reference tempo hypotheses; 1.0 reproduces the reference rule.

    Returns
    -------
    Triplets
        Without duplicates, sorted by anchor frame.
    """
    triples = np.concatenate([
        np.stack(_triplet_indices(peaks, (max(1, round(near_zone[0] / r)), round(near_zone[1] / r)),
                                  (round(far_zone[0] / r), round(far_zone[1] / r)), per_zone, df_max))
        for r in tempo_ratios], axis=1)
    # The same three peaks found under several hypotheses are one triplet: one key per
    # triple (peak indices stay below 2**21, some 18 hours of peaks), ordered by anchor.
    keys = sorted_distinct((triples[0] << 42) | (triples[1] << 21) | triples[2])
    mask = (1 << 21) - 1
    return _triplets_of(peaks, keys >> 42, (keys >> 21) & mask, keys & mask)


def _quantise(values: np.ndarray, tolerant: bool, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Nearest integer of each value and, when ``tolerant``, the other integer for values
    within ``margin`` of the half-way point (else the same integer)."""
    nearest = np.round(values)
    if not tolerant:
        return nearest.astype(np.int64), nearest.astype(np.int64)
    residual = values - nearest
    other = np.where(np.abs(residual) > 0.5 - margin, nearest + np.sign(residual), nearest)
    return nearest.astype(np.int64), other.astype(np.int64)


def hash_triplets(triplets: Triplets, tolerant: bool = False, margin: float = 0.2,
                  pitch_reach_bins: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Quantise triplets into :data:`TRIPLET_LAYOUT` codes.

    Parameters
    ----------
    triplets : Triplets
    tolerant : bool
        For queries: a field whose value lies within ``margin`` (in quantisation
        steps) of a step boundary is also coded on the other side of it, so that a
        transformation nudging it across the boundary still finds the catalogue code;
        and the anchor band is coded for every band within ``pitch_reach_bins``.
    margin : float
        Width of that boundary zone, in steps (0 < margin < 0.5).
    pitch_reach_bins : float
        Largest pitch shift, in bins, a tolerant query allows for (below one band).

    Returns
    -------
    codes : np.ndarray of uint32
    rows : np.ndarray of int64
        The triplet each code belongs to (a triplet has up to 16 codes when tolerant).
    """
    reach = pitch_reach_bins if tolerant else 0.0
    # Levels of the ratio are centred on (k + 0.5) / levels, so x.5 is a level boundary.
    return _tolerant_codes(TRIPLET_LAYOUT, [
        (_quantise(triplets.delta_12, tolerant, margin), _TRIPLET_DELTA_OFFSET, 127),
        (_quantise(triplets.delta_13, tolerant, margin), _TRIPLET_DELTA_OFFSET, 127),
        (_quantise(triplets.time_ratio * _TIME_RATIO_LEVELS - 0.5, tolerant, margin), 0, _TIME_RATIO_LEVELS - 1),
        (_anchor_bands(triplets.anchor_positions, reach), 0, 7)], tolerant)


def _anchor_bands(anchor_positions: np.ndarray, reach: float) -> tuple[np.ndarray, np.ndarray]:
    """The octave band of each anchor, lowest and highest within ``reach`` bins of it."""
    return (np.floor((anchor_positions - reach) / _BAND_BINS).astype(np.int64),
            np.floor((anchor_positions + reach) / _BAND_BINS).astype(np.int64))


def _tolerant_codes(layout: HashLayout, quantised: list[tuple[tuple[np.ndarray, np.ndarray], int, int]],
                    tolerant: bool) -> tuple[np.ndarray, np.ndarray]:
    """Pack quantised fields into codes, every combination of each field's two values when ``tolerant``.

    Parameters
    ----------
    layout : HashLayout
        Its fields, in order, are those of ``quantised``.
    quantised : list of ((nearest, other), offset, limit)
        Per field: its two candidate values per row (equal where the value is not near a
        boundary), the offset that makes them non-negative and the largest storable value.
    tolerant : bool
        Code the other values too; otherwise only the nearest.

    Returns
    -------
    codes : np.ndarray of uint32
    rows : np.ndarray of int64
        The row each code belongs to.
    """
    names = [name for name, _ in layout.fields]
    n_rows = len(quantised[0][0][0])
    zeros = np.zeros(n_rows, dtype=np.int64)
    # Each field's candidate values, clipped and shifted into place once: a variant's
    # code is then the OR of one of them per field (the variants would otherwise repeat
    # the clipping and packing of every field).
    placed, differs = [], []
    for name, ((nearest, other), offset, limit) in zip(names, quantised):
        alone = dict.fromkeys(names, zeros)
        placed.append([layout.pack(**{**alone, name: np.clip(value + offset, 0, limit)})
                       for value in ((nearest, other) if tolerant else (nearest,))])
        differs.append(other != nearest)
    rows = np.arange(n_rows)
    codes, code_rows = [], []
    for variant in itertools.product((False, True), repeat=len(names)) if tolerant else [(False,) * len(names)]:
        # A variant takes the other side of the boundary for the flagged fields; it exists
        # only for rows where every flagged field really is near a boundary.
        keep = np.ones(n_rows, dtype=bool)
        for flagged, field_differs in zip(variant, differs):
            if flagged:
                keep &= field_differs
        kept = np.flatnonzero(keep)
        code = np.zeros(len(kept), dtype=np.uint32)
        for flagged, field_values in zip(variant, placed):
            code |= field_values[flagged][kept]
        codes.append(code)
        code_rows.append(rows[kept])
    return np.concatenate(codes), np.concatenate(code_rows)


# Double codes propose candidate copies before the pair tier's search (:mod:`matcher.proposals`):
# an anchor and its two nearest targets in the pair tier's zone give the anchor's bin, two bin
# differences and two frame differences, 36 bits of geometry folded into one 32-bit code,
# where a pair code has 23 (measured: about 16 bits of entropy).
DOUBLE_LAYOUT = "double-v1"
_FOLD_MULTIPLIER = np.uint64(0xFF51AFD7ED558CCD)


@dataclass(frozen=True)
class Doubles:
    """Anchor peak + two pair targets, as codes (one row per double).

    Attributes
    ----------
    codes : np.ndarray of uint32
    anchor_frames : np.ndarray of int64
    """

    codes: np.ndarray
    anchor_frames: np.ndarray

    def __len__(self) -> int:
        return len(self.codes)


def double_landmarks(peaks: Peaks, dt_min: int, dt_max: int, df_max: int, slack: int = 0) -> Doubles:
    """Each anchor with its two nearest targets in the pair tier's zone, hashed.

    Parameters
    ----------
    peaks : Peaks
        Peaks sorted by frame.
    dt_min, dt_max, df_max : int
        The pair tier's target zone (``FingerprintParams.target_*``).
    slack : int
        For queries: each anchor's ``slack`` next-nearest targets are candidates too and
        every two of them make a double, so that a peak added by audio mixed over the
        recording leaves the reference's double among the query's.

    Returns
    -------
    Doubles
        Sorted by anchor frame.
    """
    frames, bins = peaks.frames.astype(np.int64), peaks.bins.astype(np.int64)
    count = 2 + slack
    table = _nearest_targets(frames, bins, count, dt_min, dt_max, df_max)
    # Row by row, every two of an anchor's targets: the doubles come out in anchor order.
    inner, outer = np.triu_indices(count, 1)
    first, second = table[:, inner].ravel(), table[:, outer].ravel()
    a = np.repeat(np.arange(len(frames)), len(inner))
    found = (first >= 0) & (second >= 0)
    a, first, second = a[found], first[found], second[found]
    packed = bins[a]
    for target in (first, second):
        packed = (((packed << 8) | (bins[target] - bins[a] + _DELTA_BIN_OFFSET)) << 6) | (frames[target] - frames[a])
    # Fold 36 bits into 32 with a 64-bit mix: distinct geometries rarely share a code.
    mixed = packed.astype(np.uint64)
    for _ in range(2):
        mixed = (mixed ^ (mixed >> np.uint64(33))) * _FOLD_MULTIPLIER
    codes = ((mixed ^ (mixed >> np.uint64(33))) & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    return Doubles(codes=codes, anchor_frames=frames[a])


# Quad codes propose candidate tracks before any tier's search (:mod:`matcher.proposals`):
# they must be specific — a posting list holds a handful of entries even in a large
# catalogue — and survive the same changes as triplets. An anchor, its nearest peak in the
# near zone and its two nearest in the far zone give three bin differences (pitch- and
# speed-invariant on the log axis) and two ratios of time differences (tempo-invariant):
# about twice a triplet's geometry in one 32-bit code.
QUAD_LAYOUT = HashLayout("quad-v1", (("delta_bin_near", 7), ("delta_bin_far", 7), ("delta_bin_farther", 7),
                                     ("ratio_near", 4), ("ratio_far", 4), ("anchor_band", 3)))


@dataclass(frozen=True)
class Quads:
    """Anchor peak + a near target + two far targets (one row per quad).

    Attributes
    ----------
    anchor_frames : np.ndarray of int
    anchor_positions : np.ndarray of float
        Anchor bin refined to sub-bin precision.
    deltas : np.ndarray of float, shape (n, 3)
        Sub-bin-precise log-frequency differences of the near, far and farther target
        from the anchor.
    spans : np.ndarray of int, shape (n, 3)
        Frame differences of the same targets from the anchor (increasing along a row).
    """

    anchor_frames: np.ndarray
    anchor_positions: np.ndarray
    deltas: np.ndarray
    spans: np.ndarray

    def __len__(self) -> int:
        return len(self.anchor_frames)


def _quad_indices(peaks: Peaks, near_zone: tuple[int, int], far_zone: tuple[int, int], near_count: int,
                  df_max: int, slack: int = 0) -> np.ndarray:
    """Peak indices (anchor, near, far, farther) of :func:`quad_landmarks`, one column per quad.

    With ``slack`` > 0, each zone's ``slack`` next-nearest peaks are candidates too and
    every choice of one near and two far candidates is a quad (see :func:`query_quads`).
    """
    frames, bins = peaks.frames.astype(np.int64), peaks.bins.astype(np.int64)
    n = len(frames)
    near = _nearest_targets(frames, bins, near_count + slack, near_zone[0], near_zone[1], df_max)
    far = _nearest_targets(frames, bins, 2 + slack, far_zone[0], far_zone[1], df_max)
    # Row by row, every near target with every two far ones: the quads come out in anchor order.
    far_first, far_second = np.triu_indices(far.shape[1], 1)
    near_column = np.repeat(np.arange(near.shape[1]), len(far_first))
    far_first, far_second = np.tile(far_first, near.shape[1]), np.tile(far_second, near.shape[1])
    quads = np.stack([np.repeat(np.arange(n), len(near_column)), near[:, near_column].ravel(),
                      far[:, far_first].ravel(), far[:, far_second].ravel()])
    return quads[:, (quads >= 0).all(axis=0)]


def _quads_of(peaks: Peaks, indices: np.ndarray) -> Quads:
    """The :class:`Quads` of peak index columns (anchor, near, far, farther)."""
    frames = peaks.frames.astype(np.int64)
    positions = peaks.bins.astype(np.int64) + peaks.bin_offsets.astype(np.float64)
    anchor, targets = indices[0], indices[1:]
    return Quads(anchor_frames=frames[anchor], anchor_positions=positions[anchor],
                 deltas=(positions[targets] - positions[anchor]).T,
                 spans=(frames[targets] - frames[anchor]).T)


def quad_landmarks(peaks: Peaks, near_zone: tuple[int, int], far_zone: tuple[int, int], near_count: int,
                   df_max: int) -> Quads:
    """Each anchor with each of its ``near_count`` nearest near-zone peaks and its two nearest far-zone peaks.

    Parameters
    ----------
    peaks : Peaks
        Peaks sorted by frame.
    near_zone, far_zone : (int, int)
        Inclusive frame-difference ranges after the anchor (the triplet zones).
    near_count : int
        Near targets per anchor: at most this many quads per anchor.
    df_max : int
        Largest absolute bin difference between the anchor and any target.

    Returns
    -------
    Quads
        Sorted by anchor frame.
    """
    return _quads_of(peaks, _quad_indices(peaks, near_zone, far_zone, near_count, df_max))


def query_quads(peaks: Peaks, near_zone: tuple[int, int], far_zone: tuple[int, int], near_count: int,
                df_max: int, tempo_ratios: tuple[float, ...], slack: int = 0) -> Quads:
    """The quads a query shares with its reference under any of ``tempo_ratios``.

    As :func:`query_triplets`: the zones are divided by each hypothesised ratio (query
    tempo / reference tempo) and the union kept, each quad once. A peak that another
    recording mixed over the reference adds, or one a zone boundary between two
    hypotheses cuts off, changes which peaks are the nearest; with ``slack`` the query
    also combines each zone's next ``slack`` peaks, so the reference's quad is still
    among its own.
    """
    found = np.concatenate([
        _quad_indices(peaks, (max(1, round(near_zone[0] / r)), round(near_zone[1] / r)),
                      (round(far_zone[0] / r), round(far_zone[1] / r)), near_count, df_max, slack)
        for r in tempo_ratios], axis=1)
    # One key per quad: the anchor's index and each target's distance from it in peaks
    # (a zone spans far fewer than 2 ** 12 peaks), ordered by anchor.
    anchor, gaps = found[0], found[1:] - found[0]
    keys = sorted_distinct((anchor << 36) | (gaps[0] << 24) | (gaps[1] << 12) | gaps[2])
    mask = (1 << 12) - 1
    anchor = keys >> 36
    return _quads_of(peaks, np.stack([anchor, anchor + ((keys >> 24) & mask), anchor + ((keys >> 12) & mask),
                                      anchor + (keys & mask)]))


def hash_quads(quads: Quads, tolerant: bool = False, margin: float = 0.2,
               pitch_reach_bins: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Quantise quads into :data:`QUAD_LAYOUT` codes (``tolerant`` and its arguments as for :func:`hash_triplets`).

    Returns
    -------
    codes : np.ndarray of uint32
    rows : np.ndarray of int64
        The quad each code belongs to.
    """
    reach = pitch_reach_bins if tolerant else 0.0
    farthest = quads.spans[:, 2]
    return _tolerant_codes(QUAD_LAYOUT, [
        (_quantise(quads.deltas[:, 0], tolerant, margin), _TRIPLET_DELTA_OFFSET, 127),
        (_quantise(quads.deltas[:, 1], tolerant, margin), _TRIPLET_DELTA_OFFSET, 127),
        (_quantise(quads.deltas[:, 2], tolerant, margin), _TRIPLET_DELTA_OFFSET, 127),
        (_quantise(quads.spans[:, 0] / farthest * _TIME_RATIO_LEVELS - 0.5, tolerant, margin),
         0, _TIME_RATIO_LEVELS - 1),
        (_quantise(quads.spans[:, 1] / farthest * _TIME_RATIO_LEVELS - 0.5, tolerant, margin),
         0, _TIME_RATIO_LEVELS - 1),
        (_anchor_bands(quads.anchor_positions, reach), 0, 7)], tolerant)


def quad_payloads(quads: Quads) -> np.ndarray:
    """Pack (anchor frame, anchor-to-farthest-target span) of each quad into one int64 index payload."""
    return (quads.anchor_frames.astype(np.int64) << _SPAN_BITS) | quads.spans[:, 2].astype(np.int64)


@numba.njit(cache=True, nogil=True)
def unpack_quad_payload(payload: int) -> tuple[int, int]:
    """Inverse of :func:`quad_payloads` for one payload: (anchor frame, anchor-to-farthest-target span)."""
    return payload >> _SPAN_BITS, payload & ((1 << _SPAN_BITS) - 1)


def triplet_payloads(triplets: Triplets) -> np.ndarray:
    """Pack (anchor frame, anchor bin, dt_13) of each triplet into one int64 index payload."""
    return (triplets.anchor_frames.astype(np.int64) << (_BIN_BITS + _SPAN_BITS)) \
        | (triplets.anchor_bins.astype(np.int64) << _SPAN_BITS) | triplets.dt_13.astype(np.int64)


@numba.njit(cache=True, nogil=True)
def unpack_triplet_payload(payload: int) -> tuple[int, int, int]:
    """Inverse of :func:`triplet_payloads` for one payload: (anchor frame, anchor bin, dt_13).

    Compiled, so that a compiled loop over a lookup's hits can unpack each one.
    """
    return (payload >> (_BIN_BITS + _SPAN_BITS), (payload >> _SPAN_BITS) & ((1 << _BIN_BITS) - 1),
            payload & ((1 << _SPAN_BITS) - 1))

"""Landmark hashes: anchor peak + target peak, packed into 32-bit codes.

A landmark is an anchor peak paired with one of the next peaks in its target
zone (Wang 2003). Its geometry — anchor bin, bin difference, frame difference —
is quantised into named bit fields by a :class:`HashLayout`. Fields are packed
from the least significant bit up, and the index groups codes by their lowest
bits, so the layout decides both what a hash means and how lookups are bucketed.
Another layout (e.g. tempo- and pitch-invariant ratios of peak triplets) can be
added beside :data:`PAIR_LAYOUT` without touching peak picking or the index.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fingerprint.peaks import Peaks

__all__ = ["HashLayout", "PAIR_LAYOUT", "Landmarks", "pair_landmarks", "hash_landmarks"]


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
        code = np.zeros(np.shape(next(iter(values.values()))), dtype=np.uint32)
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
    n = len(frames)
    taken = np.zeros(n, dtype=np.int32)
    anchors, targets = [], []
    for gap in range(1, n):
        anchor = np.arange(n - gap)
        target = anchor + gap
        dt = frames[target] - frames[anchor]
        if dt.min(initial=dt_max + 1) > dt_max:
            break  # frames are sorted, so larger gaps only reach further
        ok = (dt >= dt_min) & (dt <= dt_max) & (np.abs(bins[target] - bins[anchor]) <= df_max)
        ok &= taken[anchor] < fanout
        taken[anchor[ok]] += 1
        anchors.append(anchor[ok])
        targets.append(target[ok])
    if anchors:
        anchor_idx = np.concatenate(anchors)
        target_idx = np.concatenate(targets)
        order = np.argsort(anchor_idx, kind="stable")
        anchor_idx, target_idx = anchor_idx[order], target_idx[order]
    else:
        anchor_idx = target_idx = np.zeros(0, dtype=np.int64)
    return Landmarks(frames[anchor_idx], bins[anchor_idx], frames[target_idx], bins[target_idx])


def hash_landmarks(landmarks: Landmarks, layout: HashLayout = PAIR_LAYOUT) -> np.ndarray:
    """Quantise landmarks into 32-bit codes with ``layout``.

    Returns
    -------
    np.ndarray of uint32, shape (n_landmarks,)
    """
    if layout is not PAIR_LAYOUT:
        raise ValueError(f"no hashing rule for layout {layout.name}")
    return layout.pack(
        anchor_bin=landmarks.anchor_bins,
        delta_bin=landmarks.target_bins - landmarks.anchor_bins + _DELTA_BIN_OFFSET,
        delta_frames=landmarks.target_frames - landmarks.anchor_frames,
    )

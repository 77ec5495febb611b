"""Spectral peaks: 2-D local maxima of the log spectrogram, thinned to a target density."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["Peaks", "find_peaks"]

# Below this level (dB of STFT magnitude, about -108 dBFS for a sinusoid) there is
# nothing but dither; a silent file must give no peaks whatever its own maximum is.
_ABSOLUTE_FLOOR_DB = -60.0


@dataclass(frozen=True)
class Peaks:
    """Peaks sorted by frame, then by bin.

    Attributes
    ----------
    frames : np.ndarray of int32
        Frame index (hop units) of each peak.
    bins : np.ndarray of int32
        Log-frequency bin of each peak.
    strength : np.ndarray of float32
        Prominence above the local spectral background, in dB.
    """

    frames: np.ndarray
    bins: np.ndarray
    strength: np.ndarray

    def __len__(self) -> int:
        return len(self.frames)


def find_peaks(S_db: np.ndarray, frame_seconds: float, time_radius: int, freq_radius: int,
               floor_db: float, min_prominence_db: float, peaks_per_second: float,
               density_window: float) -> Peaks:
    """Pick landmark peaks from a dB spectrogram.

    A peak is a point that is the maximum of its ``(2 * freq_radius + 1) x
    (2 * time_radius + 1)`` neighbourhood, lies within ``floor_db`` of the
    spectrogram's maximum, and stands ``min_prominence_db`` above the local mean
    (a neighbourhood four times larger). All three tests are invariant to a gain
    change. Candidates are then ranked by prominence inside a sliding window of
    ``density_window`` seconds centred on each of them; a candidate survives when
    fewer than ``peaks_per_second * density_window`` stronger ones share its window.

    Parameters
    ----------
    S_db : np.ndarray, shape (n_bins, n_frames)
        Spectrogram in dB.
    frame_seconds : float
        Duration of one frame in seconds.
    time_radius, freq_radius : int
        Half-sizes of the local-maximum neighbourhood, in frames and bins.
    floor_db : float
        Dynamic range below the global maximum in which peaks are accepted.
    min_prominence_db : float
        Minimum height above the local background.
    peaks_per_second : float
        Target density.
    density_window : float
        Width in seconds of the sliding window the density is enforced in.

    Returns
    -------
    Peaks
    """
    empty = Peaks(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.float32))
    if S_db.size == 0:
        return empty
    floor = max(float(S_db.max()) - floor_db, _ABSOLUTE_FLOOR_DB)
    neighbourhood = (2 * freq_radius + 1, 2 * time_radius + 1)
    is_max = S_db == ndimage.maximum_filter(S_db, size=neighbourhood, mode="nearest")
    background = ndimage.uniform_filter(S_db, size=(4 * neighbourhood[0], 4 * neighbourhood[1]),
                                        mode="nearest")
    prominence = S_db - background
    candidate = is_max & (S_db > floor) & (prominence >= min_prominence_db)
    bins, frames = np.nonzero(candidate)
    if bins.size == 0:
        return empty
    strength = prominence[bins, frames]

    order = np.lexsort((bins, frames))
    frames, bins, strength = frames[order], bins[order], strength[order]
    keep = _rank_in_sliding_window(frames, strength, density_window / frame_seconds / 2.0) \
        < max(1, int(round(peaks_per_second * density_window)))
    return Peaks(frames[keep].astype(np.int32), bins[keep].astype(np.int32),
                 strength[keep].astype(np.float32))


def _rank_in_sliding_window(frames: np.ndarray, strength: np.ndarray, half_width: float) -> np.ndarray:
    """For each peak, how many peaks within ``half_width`` frames of it are stronger.

    ``frames`` must be sorted. Compares every pair that shares a window, one
    diagonal of the pair matrix at a time, so the cost is (peaks) x (peaks per window).
    """
    rank = np.zeros(len(frames), dtype=np.int32)
    for gap in range(1, len(frames)):
        earlier, later = slice(0, len(frames) - gap), slice(gap, None)
        close = (frames[later] - frames[earlier]) <= half_width
        if not close.any():
            break
        later_wins = close & (strength[later] > strength[earlier])
        earlier_wins = close & (strength[earlier] > strength[later])
        rank[earlier] += later_wins
        rank[later] += earlier_wins
    return rank

"""The peak store: every catalogue track's spectral peaks, for verifying matches under other audio.

A recording mixed 6-12 dB under new material keeps few of its landmarks (a pair needs
both of its peaks to survive, a triplet all three), but many of its single peaks still
show as peaks of the upload. :mod:`matcher.peaks` checks a weakly voted (track, offset)
by looking up the track's peaks at that offset in the upload; this store keeps them.

One file per index directory, a NumPy ``.npz`` archive: ``track_ids`` (sorted),
``starts`` (where each track's peaks begin in the flat arrays, plus the end),
``frames`` (int32) and ``bins`` (uint8), peaks sorted by frame within a track: five
bytes per peak, 0.6 MB per catalogue hour at 32 peaks per second. Saved atomically
like every file of the directory.

The archive is written uncompressed, so :meth:`PeakStore.load` memory-maps its arrays
(:func:`index.files.map_arrays`) instead of reading them. Opening costs the same at any
catalogue size, processes share the pages, and a matching process's memory holds only
the peaks its queries verified (the store used to
be read whole, and cut into one pair of arrays per track, by every process at open:
about 0.55 MB of private memory per catalogue hour). Tracks added or removed since
the file was written are kept beside it until :meth:`PeakStore.save`.
"""

from __future__ import annotations

import os

import numpy as np

from refrain.index.files import map_arrays, save_arrays

__all__ = ["PeakStore"]

_ARRAYS = ("track_ids", "starts", "frames", "bins")


def _empty() -> dict[str, np.ndarray]:
    return {"track_ids": np.zeros(0, np.int64), "starts": np.zeros(1, np.int64),
            "frames": np.zeros(0, np.int32), "bins": np.zeros(0, np.uint8)}


class PeakStore:
    """Frames and log-frequency bins of each catalogue track's peaks.

    Use :meth:`create` for an empty store or :meth:`load` for a saved one.

    Parameters
    ----------
    saved : dict of str to np.ndarray
        The arrays of the file (see the module docstring), usually memory-mapped.
    """

    def __init__(self, saved: dict[str, np.ndarray]):
        self._saved = saved
        # Changes since the file was written: added tracks' (frames, bins), and saved tracks
        # removed or replaced.
        self._added: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._dropped: set[int] = set()

    @classmethod
    def create(cls) -> "PeakStore":
        return cls(_empty())

    @classmethod
    def load(cls, path: os.PathLike) -> "PeakStore":
        """Memory-map a store written by :meth:`save`.

        Raises
        ------
        ValueError
            If the file is not a peak store (damaged or foreign).
        """
        try:
            saved = map_arrays(path, _ARRAYS)
        except ValueError as err:
            raise ValueError(f"unreadable peak store {path}: {err}") from err
        track_ids, starts = saved["track_ids"], saved["starts"]
        if (len(starts) != len(track_ids) + 1 or starts[-1] != len(saved["frames"])
                or len(saved["frames"]) != len(saved["bins"]) or np.any(np.diff(track_ids) <= 0)):
            raise ValueError(f"inconsistent peak store {path}")
        return cls(saved)

    def save(self, path: os.PathLike) -> None:
        """Write atomically (temporary file, fsync, rename), then map the written file."""
        kept = [int(t) for t in self._saved["track_ids"] if int(t) not in self._dropped]
        track_ids = np.array(sorted(kept + list(self._added)), dtype=np.int64)
        parts = [self._peaks_of(int(t)) for t in track_ids]
        starts = np.concatenate([[0], np.cumsum([len(frames) for frames, _ in parts], dtype=np.int64)])
        frames = np.concatenate([frames for frames, _ in parts] or [np.zeros(0, np.int32)])
        bins = np.concatenate([bins for _, bins in parts] or [np.zeros(0, np.uint8)])
        save_arrays(path, {"track_ids": track_ids, "starts": starts.astype(np.int64),
                           "frames": frames.astype(np.int32), "bins": bins.astype(np.uint8)})
        self._saved, self._added, self._dropped = map_arrays(path, _ARRAYS), {}, set()

    def add(self, track_id: int, frames: np.ndarray, bins: np.ndarray) -> None:
        """Store one track's peaks (frames sorted ascending, bins below 256)."""
        frames, bins = np.asarray(frames), np.asarray(bins)
        if len(frames) != len(bins):
            raise ValueError("frames and bins differ in length")
        if bins.size and (bins.min() < 0 or bins.max() > 255):
            raise ValueError("peak bins must lie in [0, 255]")
        order = np.argsort(frames, kind="stable")
        self._dropped.add(int(track_id))
        self._added[int(track_id)] = (frames[order].astype(np.int32), bins[order].astype(np.uint8))

    def remove(self, track_id: int) -> int:
        """Forget a track's peaks; returns how many were removed."""
        removed = len(self._peaks_of(int(track_id))[0])
        self._added.pop(int(track_id), None)
        self._dropped.add(int(track_id))
        return removed

    def peaks_between(self, track_id: int, first_frame: int, end_frame: int) -> tuple[np.ndarray, np.ndarray]:
        """(frames, bins) of the track's peaks with ``first_frame <= frame < end_frame``."""
        frames, bins = self._peaks_of(int(track_id))
        lo, hi = np.searchsorted(frames, [first_frame, end_frame])
        return frames[lo:hi], bins[lo:hi]

    @property
    def ntotal(self) -> int:
        """Number of peaks stored."""
        track_ids, starts = self._saved["track_ids"], self._saved["starts"]
        dropped = [int(t) for t in self._dropped]
        at = np.searchsorted(track_ids, dropped)
        saved = at < len(track_ids)
        saved[saved] = track_ids[at[saved]] == np.array(dropped, dtype=np.int64)[saved]
        dropped_peaks = int(np.sum(starts[at[saved] + 1] - starts[at[saved]]))
        return int(starts[-1]) - dropped_peaks + sum(len(frames) for frames, _ in self._added.values())

    def _peaks_of(self, track_id: int) -> tuple[np.ndarray, np.ndarray]:
        """A track's (frames, bins): added since the save, or a slice of the saved file."""
        if track_id in self._added:
            return self._added[track_id]
        track_ids = self._saved["track_ids"]
        at = int(np.searchsorted(track_ids, track_id))
        if track_id in self._dropped or at == len(track_ids) or track_ids[at] != track_id:
            return np.zeros(0, np.int32), np.zeros(0, np.uint8)
        start, end = int(self._saved["starts"][at]), int(self._saved["starts"][at + 1])
        return self._saved["frames"][start:end], self._saved["bins"][start:end]

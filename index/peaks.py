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
"""

from __future__ import annotations

import os
import zipfile

import numpy as np

from refrain.index.files import replace_atomically

__all__ = ["PeakStore"]


class PeakStore:
    """Frames and log-frequency bins of each catalogue track's peaks.

    Use :meth:`create` for an empty store or :meth:`load` for a saved one.
    """

    def __init__(self, tracks: dict[int, tuple[np.ndarray, np.ndarray]]):
        self._tracks = tracks

    @classmethod
    def create(cls) -> "PeakStore":
        return cls({})

    @classmethod
    def load(cls, path: os.PathLike) -> "PeakStore":
        """Read a store written by :meth:`save`.

        Raises
        ------
        ValueError
            If the file is not a peak store (damaged or foreign).
        """
        try:
            with np.load(path, allow_pickle=False) as archive:
                track_ids, starts = archive["track_ids"], archive["starts"]
                frames, bins = archive["frames"], archive["bins"]
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
            raise ValueError(f"unreadable peak store {path}: {err}") from err
        if len(starts) != len(track_ids) + 1 or starts[-1] != len(frames) or len(frames) != len(bins):
            raise ValueError(f"inconsistent peak store {path}")
        return cls({int(track): (frames[start:end], bins[start:end])
                    for track, start, end in zip(track_ids, starts[:-1], starts[1:])})

    def save(self, path: os.PathLike) -> None:
        """Write atomically (temporary file, fsync, rename)."""
        track_ids = np.array(sorted(self._tracks), dtype=np.int64)
        lengths = [len(self._tracks[int(t)][0]) for t in track_ids]
        starts = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
        frames = np.concatenate([self._tracks[int(t)][0] for t in track_ids] or [np.zeros(0, np.int32)])
        bins = np.concatenate([self._tracks[int(t)][1] for t in track_ids] or [np.zeros(0, np.uint8)])

        def write(tmp: str) -> None:
            with open(tmp, "wb") as handle:
                np.savez(handle, track_ids=track_ids, starts=starts, frames=frames.astype(np.int32),
                         bins=bins.astype(np.uint8))
        replace_atomically(path, write)

    def add(self, track_id: int, frames: np.ndarray, bins: np.ndarray) -> None:
        """Store one track's peaks (frames sorted ascending, bins below 256)."""
        frames, bins = np.asarray(frames), np.asarray(bins)
        if len(frames) != len(bins):
            raise ValueError("frames and bins differ in length")
        if bins.size and (bins.min() < 0 or bins.max() > 255):
            raise ValueError("peak bins must lie in [0, 255]")
        order = np.argsort(frames, kind="stable")
        self._tracks[int(track_id)] = (frames[order].astype(np.int32), bins[order].astype(np.uint8))

    def remove(self, track_id: int) -> int:
        """Forget a track's peaks; returns how many were removed."""
        removed = self._tracks.pop(int(track_id), None)
        return 0 if removed is None else len(removed[0])

    def peaks_between(self, track_id: int, first_frame: int, end_frame: int) -> tuple[np.ndarray, np.ndarray]:
        """(frames, bins) of the track's peaks with ``first_frame <= frame < end_frame``."""
        frames, bins = self._tracks.get(int(track_id), (np.zeros(0, np.int32), np.zeros(0, np.uint8)))
        lo, hi = np.searchsorted(frames, [first_frame, end_frame])
        return frames[lo:hi], bins[lo:hi]

    @property
    def ntotal(self) -> int:
        """Number of peaks stored."""
        return sum(len(frames) for frames, _ in self._tracks.values())

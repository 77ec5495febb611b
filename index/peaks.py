"""The peak store: every catalogue track's spectral peaks, for verifying matches under other audio.

A recording mixed 6-12 dB under new material keeps few of its landmarks (a pair needs
both of its peaks to survive, a triplet all three), but many of its single peaks still
show as peaks of the upload. :mod:`matcher.peaks` checks a weakly voted (track, offset)
by looking up the track's peaks at that offset in the upload; this store keeps them.

One file per index directory, a NumPy ``.npz`` archive: ``track_ids`` (sorted),
``starts`` (where each track's peaks begin in the flat arrays, plus the end),
``frames`` and ``bins`` (uint8), peaks sorted by frame within a track. ``frames`` (uint16)
holds each peak's frame minus the one before it in its track (the first's minus 0): three
bytes per peak, 0.33 MB per catalogue hour at 32 peaks per second. A file one of whose
tracks has a step of 65,536 frames or more (35 minutes without a peak) holds the frames
themselves (int32, five bytes per peak), as every file did before 2026-12-07; the type of
``frames`` says which, and both are read. Saved atomically like every file of the directory.

The archive is written uncompressed, so :meth:`PeakStore.load` memory-maps its arrays
(:func:`index.files.map_arrays`) instead of reading them. Opening costs the same at any
catalogue size, processes share the pages, and a matching process's memory holds only
the peaks its queries verified (the store used to
be read whole, and cut into one pair of arrays per track, by every process at open:
about 0.55 MB of private memory per catalogue hour). Tracks added or removed since
the file was written are kept beside it until saved.

A store is a main file and any number of *delta* files in the same layout, each holding
the tracks of one commit (:meth:`PeakStore.save_delta`; :mod:`index.store` decides when
and records them in the manifest), so that a commit writes its own tracks' peaks, not
the catalogue's. A track lies in one file. :meth:`PeakStore.save` writes everything as
one main file; it is the only way to save a store after a saved track was removed, so
that a takedown leaves no trace of the track in any file.
"""

from __future__ import annotations

import os

import numpy as np

from refrain.index.files import map_arrays, save_arrays

__all__ = ["PeakStore"]

_ARRAYS = ("track_ids", "starts", "frames", "bins")


class PeakStore:
    """Frames and log-frequency bins of each catalogue track's peaks.

    Use :meth:`create` for an empty store or :meth:`load` for a saved one.

    Parameters
    ----------
    segments : tuple of dict of str to np.ndarray
        The arrays of each saved file (see the module docstring), main first, usually
        memory-mapped; empty for a store not yet saved.
    """

    def __init__(self, segments: tuple[dict[str, np.ndarray], ...]):
        self._set_saved(segments)
        # Changes since the files were written: added tracks' (frames, bins), and saved tracks
        # removed or replaced.
        self._added: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._dropped: set[int] = set()
        # The saved files no longer describe the store (a new store, or a saved track dropped).
        self._rewrite = not segments

    @classmethod
    def create(cls) -> "PeakStore":
        return cls(())

    @classmethod
    def load(cls, path: os.PathLike, deltas: tuple[os.PathLike, ...] = ()) -> "PeakStore":
        """Memory-map a store written by :meth:`save`, and the delta files written after it.

        Raises
        ------
        ValueError
            If a file is not a peak store (damaged or foreign).
        """
        return cls(tuple(_mapped(file) for file in (path, *deltas)))

    def save(self, path: os.PathLike) -> None:
        """Write every track as one main file, atomically (temporary file, fsync, rename), then map it."""
        kept = [int(t) for segment in self._saved for t in segment["track_ids"] if int(t) not in self._dropped]
        _write(path, {t: self._peaks_of(t) for t in kept + list(self._added)})
        self._set_saved((_mapped(path),))
        self._added, self._dropped, self._rewrite = {}, set(), False

    def save_delta(self, path: os.PathLike) -> bool:
        """Write the tracks added since the last save as a delta file, and map it.

        Returns
        -------
        bool
            False if there was nothing to write (no file is written).

        Raises
        ------
        RuntimeError
            If the saved files no longer describe the store (:attr:`needs_rewrite`).
        """
        if self._rewrite:
            raise RuntimeError("this peak store must be saved whole (save), not as a delta")
        if not self._added:
            return False
        _write(path, self._added)
        self._set_saved(self._saved + (_mapped(path),))
        self._added = {}
        return True

    @property
    def needs_rewrite(self) -> bool:
        """Whether only :meth:`save` can write the store (it is new, or a saved track was removed)."""
        return self._rewrite

    def segment_bytes(self) -> list[int]:
        """Bytes of each saved file's arrays, main first."""
        return [sum(array.nbytes for array in segment.values()) for segment in self._saved]

    def write_merged(self, first: int, last: int, path: os.PathLike) -> tuple[dict[str, np.ndarray], ...]:
        """Write saved files ``first:last`` as one, atomically; the store is unchanged (see
        :meth:`index.landmarks.LandmarkIndex.write_merged`)."""
        merged = self._saved[first:last]
        _write(path, {int(t): _slice(segment, at) for segment in merged
                      for at, t in enumerate(segment["track_ids"])})
        return merged

    def adopt_merged(self, merged: tuple[dict[str, np.ndarray], ...], path: os.PathLike) -> None:
        """Replace the saved files ``merged`` (still consecutive) by the file :meth:`write_merged` wrote.

        Raises
        ------
        RuntimeError
            If the store no longer holds them.
        """
        segment, saved = _mapped(path), self._saved
        for at in range(len(saved) - len(merged) + 1):
            if all(a is b for a, b in zip(saved[at:at + len(merged)], merged)):
                self._set_saved(saved[:at] + (segment,) + saved[at + len(merged):])
                return
        raise RuntimeError("the merged peak files are no longer this store's")

    def add(self, track_id: int, frames: np.ndarray, bins: np.ndarray) -> None:
        """Store one track's peaks (frames sorted ascending, bins below 256)."""
        frames, bins = np.asarray(frames), np.asarray(bins)
        if len(frames) != len(bins):
            raise ValueError("frames and bins differ in length")
        if bins.size and (bins.min() < 0 or bins.max() > 255):
            raise ValueError("peak bins must lie in [0, 255]")
        order = np.argsort(frames, kind="stable")
        self._drop_saved(int(track_id))
        self._added[int(track_id)] = (frames[order].astype(np.int32), bins[order].astype(np.uint8))

    def remove(self, track_id: int) -> int:
        """Forget a track's peaks; returns how many were removed."""
        removed = len(self._peaks_of(int(track_id))[0])
        self._added.pop(int(track_id), None)
        self._drop_saved(int(track_id))
        return removed

    def peaks_between(self, track_id: int, first_frame: int, end_frame: int) -> tuple[np.ndarray, np.ndarray]:
        """(frames, bins) of the track's peaks with ``first_frame <= frame < end_frame``."""
        frames, bins = self._peaks_of(int(track_id))
        lo, hi = np.searchsorted(frames, [first_frame, end_frame])
        return frames[lo:hi], bins[lo:hi]

    @property
    def ntotal(self) -> int:
        """Number of peaks stored."""
        saved = sum(int(segment["starts"][-1]) for segment in self._saved)
        dropped = 0
        for track_id in self._dropped:
            found = self._saved_at(track_id)
            if found is not None:
                dropped += len(_slice(*found)[0])
        return saved - dropped + sum(len(frames) for frames, _ in self._added.values())

    def _drop_saved(self, track_id: int) -> None:
        if self._saved_at(track_id) is not None:
            self._dropped.add(track_id)
            self._rewrite = True

    def _set_saved(self, segments: tuple[dict[str, np.ndarray], ...]) -> None:
        """Make ``segments`` the saved files, with one sorted table of their tracks.

        The matcher asks for a track's peaks many times per query: one binary search in
        the table finds the file, instead of one per file.
        """
        ids = [np.asarray(segment["track_ids"], dtype=np.int64) for segment in segments]
        every = np.concatenate(ids) if ids else np.zeros(0, np.int64)
        order = np.argsort(every, kind="stable")  # a track in two files: the newer one last
        in_file = np.repeat(np.arange(len(ids)), [len(i) for i in ids])[order]
        position = (np.concatenate([np.arange(len(i)) for i in ids]) if ids else np.zeros(0, np.int64))[order]
        # One tuple, replaced whole: a concurrent reader sees one state or the other.
        self._saved_state = (segments, every[order], in_file, position)

    @property
    def _saved(self) -> tuple[dict[str, np.ndarray], ...]:
        return self._saved_state[0]

    def _saved_at(self, track_id: int) -> tuple[dict[str, np.ndarray], int] | None:
        """The saved file holding the track (the newest, should two) and its position there, or None."""
        segments, track_ids, in_file, position = self._saved_state
        at = int(np.searchsorted(track_ids, track_id, side="right")) - 1
        if at < 0 or track_ids[at] != track_id:
            return None
        return segments[in_file[at]], int(position[at])

    def _peaks_of(self, track_id: int) -> tuple[np.ndarray, np.ndarray]:
        """A track's (frames, bins): added since the save, or a slice of a saved file."""
        if track_id in self._added:
            return self._added[track_id]
        found = None if track_id in self._dropped else self._saved_at(track_id)
        if found is None:
            return np.zeros(0, np.int32), np.zeros(0, np.uint8)
        return _slice(*found)


def _slice(segment: dict[str, np.ndarray], at: int) -> tuple[np.ndarray, np.ndarray]:
    """(frames (int32), bins) of the ``at``-th track of a saved file."""
    start, end = int(segment["starts"][at]), int(segment["starts"][at + 1])
    frames = segment["frames"][start:end]
    if frames.dtype == np.uint16:  # steps from the previous peak (see the module docstring)
        frames = np.cumsum(frames, dtype=np.int64).astype(np.int32)
    return frames, segment["bins"][start:end]


def _mapped(path: os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of a peak file, memory-mapped and checked."""
    try:
        saved = map_arrays(path, _ARRAYS)
    except ValueError as err:
        raise ValueError(f"unreadable peak store {path}: {err}") from err
    track_ids, starts = saved["track_ids"], saved["starts"]
    if (len(starts) != len(track_ids) + 1 or starts[-1] != len(saved["frames"])
            or saved["frames"].dtype not in (np.int32, np.uint16)
            or len(saved["frames"]) != len(saved["bins"]) or np.any(np.diff(track_ids) <= 0)):
        raise ValueError(f"inconsistent peak store {path}")
    return saved


def _write(path: os.PathLike, peaks: dict[int, tuple[np.ndarray, np.ndarray]]) -> None:
    """Write tracks' (frames, bins) as one peak file, atomically."""
    track_ids = np.array(sorted(peaks), dtype=np.int64)
    parts = [peaks[int(t)] for t in track_ids]
    starts = np.concatenate([[0], np.cumsum([len(frames) for frames, _ in parts], dtype=np.int64)])
    frames = np.concatenate([frames for frames, _ in parts] or [np.zeros(0, np.int32)]).astype(np.int64)
    bins = np.concatenate([bins for _, bins in parts] or [np.zeros(0, np.uint8)])
    steps = np.diff(frames, prepend=0)
    steps[starts[:-1][np.diff(starts) > 0]] = frames[starts[:-1][np.diff(starts) > 0]]  # a track's first: from 0
    stored = (steps.astype(np.uint16) if not len(steps) or (steps.min() >= 0 and steps.max() < 1 << 16)
              else frames.astype(np.int32))
    save_arrays(path, {"track_ids": track_ids, "starts": starts.astype(np.int64),
                       "frames": stored, "bins": bins.astype(np.uint8)})

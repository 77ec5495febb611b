"""The landmark store: 32-bit hash codes in a FAISS binary inverted file.

Layout
------
``faiss.IndexBinaryIVF`` over 32-bit codes with ``2 ** list_bits`` inverted lists.
Its coarse quantizer is an ``IndexBinaryHash`` holding one centroid per value of
the code's low ``list_bits`` bits, so a code is filed under exactly its low bits
(one hash-table probe, no k-means) and a lookup scans one short list, comparing
the remaining bits by Hamming distance: radius 0 is an exact match, and a larger
radius tolerates quantisation changes in the high bits.

Each entry's FAISS id packs ``(track_id, anchor_frame)`` as
``track_id << FRAME_BITS | anchor_frame``, so all of a track's entries form one
id range: removing a track is an ``IDSelectorRange`` over the lists, with no
rebuild and no side copy of the codes. The IVF form (unlike ``IndexBinaryHash``)
supports ``remove_ids`` and can be memory-mapped on load.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import faiss
import numpy as np

__all__ = ["LandmarkIndex", "FRAME_BITS", "MAX_TRACK_FRAMES", "CODE_BITS"]

CODE_BITS = 32
FRAME_BITS = 22
MAX_TRACK_FRAMES = 1 << FRAME_BITS  # 37 h of audio at 32 ms frames
_CODE_BYTES = CODE_BITS // 8

# One OpenMP thread: a range search over one query's ~1,500 codes measured 2-4x slower
# with two threads than with one. Parallelism comes from processes and requests instead.
faiss.omp_set_num_threads(1)


def _as_code_bytes(hashes: np.ndarray) -> np.ndarray:
    """uint32 codes -> (n, 4) uint8 rows, little-endian so that FAISS reads the low bits first."""
    return np.ascontiguousarray(np.asarray(hashes, dtype="<u4")).view(np.uint8).reshape(-1, _CODE_BYTES)


class LandmarkIndex:
    """FAISS store of landmark codes, each resolving to (track id, anchor frame).

    Use :meth:`create` for a new, empty store or :meth:`load` for a saved one.
    """

    def __init__(self, index: faiss.IndexBinaryIVF, writable: bool):
        self._index = index
        self.writable = writable

    @classmethod
    def create(cls, list_bits: int = 16) -> "LandmarkIndex":
        """An empty store with ``2 ** list_bits`` inverted lists keyed by the codes' low bits."""
        nlist = 1 << list_bits
        quantizer = faiss.IndexBinaryHash(CODE_BITS, list_bits)
        quantizer.add(_as_code_bytes(np.arange(nlist, dtype=np.uint32)))
        index = faiss.IndexBinaryIVF(quantizer, CODE_BITS, nlist)
        index.own_fields = True
        quantizer.this.disown()
        index.nprobe = 1
        assert index.is_trained
        return cls(index, writable=True)

    @classmethod
    def load(cls, path: os.PathLike, mmap: bool = False) -> "LandmarkIndex":
        """Read a store written by :meth:`save`.

        Parameters
        ----------
        path : path-like
            The index file.
        mmap : bool
            Memory-map the inverted lists instead of reading them: near-instant load,
            pages shared between processes, but the store is then read-only.
        """
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        index = faiss.read_index_binary(str(path), flags)
        index.nprobe = 1
        return cls(index, writable=not mmap)

    def save(self, path: os.PathLike) -> None:
        """Write atomically: a temporary file in the same folder, fsync, then rename."""
        path = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            faiss.write_index_binary(self._index, tmp)
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @property
    def ntotal(self) -> int:
        """Number of landmark entries stored."""
        return int(self._index.ntotal)

    def add(self, track_id: int, hashes: np.ndarray, frames: np.ndarray) -> None:
        """Store one track's landmarks.

        Parameters
        ----------
        track_id : int
            Non-negative catalogue id of the track.
        hashes : np.ndarray of uint32
            Landmark codes.
        frames : np.ndarray of int
            Anchor frame of each code, ``0 <= frame < MAX_TRACK_FRAMES``.
        """
        self._require_writable()
        frames = np.asarray(frames, dtype=np.int64)
        if len(hashes) != len(frames):
            raise ValueError("hashes and frames differ in length")
        if frames.size and (frames.min() < 0 or frames.max() >= MAX_TRACK_FRAMES):
            raise ValueError(f"anchor frames must lie in [0, {MAX_TRACK_FRAMES})")
        ids = (np.int64(track_id) << FRAME_BITS) | frames
        self._index.add_with_ids(_as_code_bytes(hashes), ids)

    def remove(self, track_id: int) -> int:
        """Remove every entry of ``track_id``; returns how many were removed."""
        self._require_writable()
        selector = faiss.IDSelectorRange(int(track_id) << FRAME_BITS, (int(track_id) + 1) << FRAME_BITS)
        return int(self._index.remove_ids(selector))

    def lookup(self, hashes: np.ndarray, max_hamming: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Find every stored entry whose code matches each query code.

        Parameters
        ----------
        hashes : np.ndarray of uint32
            Query codes.
        max_hamming : int
            Largest Hamming distance accepted in the bits above the list key
            (0 = exact match).

        Returns
        -------
        query_index, track_ids, ref_frames : np.ndarray of int64
            One row per hit: which query code it answers, and the stored entry's
            track and anchor frame.
        """
        hashes = np.asarray(hashes, dtype=np.uint32)
        if hashes.size == 0 or self.ntotal == 0:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty
        lims, _, labels = self._index.range_search(_as_code_bytes(hashes), max_hamming + 1)
        query_index = np.repeat(np.arange(len(hashes), dtype=np.int64), np.diff(lims).astype(np.int64))
        labels = labels.astype(np.int64)
        return query_index, labels >> FRAME_BITS, labels & (MAX_TRACK_FRAMES - 1)

    def _require_writable(self) -> None:
        if not self.writable:
            raise PermissionError("this landmark index was opened read-only (memory-mapped)")

"""The landmark store: 32-bit hash codes in a FAISS binary inverted file.

Layout
------
``faiss.IndexBinaryIVF`` over 32-bit codes with ``2 ** list_bits`` inverted lists.
Its coarse quantizer is an ``IndexBinaryHash`` holding one centroid per value of
the code's low ``list_bits`` bits, so a code is filed under exactly its low bits
(one hash-table probe, no k-means) and a lookup scans one short list, comparing
the remaining bits by Hamming distance: radius 0 is an exact match, and a larger
radius tolerates quantisation changes in the high bits.

Each entry's FAISS id packs ``(track_id, payload)`` as
``track_id << payload_bits | payload``; the payload is whatever the fingerprint
tier needs back from a hit (the anchor frame; for triplets also the anchor bin and
span). All of a track's entries form one id range, so removing a track is an
``IDSelectorRange`` over the lists, with no rebuild and no side copy of the codes. The IVF form (unlike ``IndexBinaryHash``)
supports ``remove_ids`` and can be memory-mapped on load.
"""

from __future__ import annotations

import os

import faiss
import numpy as np

from index.files import replace_atomically

__all__ = ["LandmarkIndex", "CODE_BITS"]

CODE_BITS = 32
_ID_BITS = 63  # FAISS ids are signed 64-bit
_CODE_BYTES = CODE_BITS // 8

# One OpenMP thread: a range search over one query's ~1,500 codes measured 2-4x slower
# with two threads than with one. Parallelism comes from processes and requests instead.
faiss.omp_set_num_threads(1)


def _as_code_bytes(hashes: np.ndarray) -> np.ndarray:
    """uint32 codes -> (n, 4) uint8 rows, little-endian so that FAISS reads the low bits first."""
    return np.ascontiguousarray(np.asarray(hashes, dtype="<u4")).view(np.uint8).reshape(-1, _CODE_BYTES)


class LandmarkIndex:
    """FAISS store of landmark codes, each resolving to (track id, payload).

    Use :meth:`create` for a new, empty store or :meth:`load` for a saved one.

    Parameters
    ----------
    index : faiss.IndexBinaryIVF
    payload_bits : int
        Low bits of each id that hold the payload; track ids get the other
        ``63 - payload_bits``.
    writable : bool
    """

    def __init__(self, index: faiss.IndexBinaryIVF, payload_bits: int, writable: bool):
        if not 0 < payload_bits < _ID_BITS - 16:
            raise ValueError(f"payload_bits={payload_bits} leaves too few bits for track ids")
        self._index = index
        self.payload_bits = payload_bits
        self.writable = writable

    @classmethod
    def create(cls, payload_bits: int, list_bits: int = 16) -> "LandmarkIndex":
        """An empty store with ``2 ** list_bits`` inverted lists keyed by the codes' low bits."""
        nlist = 1 << list_bits
        quantizer = faiss.IndexBinaryHash(CODE_BITS, list_bits)
        quantizer.add(_as_code_bytes(np.arange(nlist, dtype=np.uint32)))
        index = faiss.IndexBinaryIVF(quantizer, CODE_BITS, nlist)
        index.own_fields = True
        quantizer.this.disown()
        index.nprobe = 1
        assert index.is_trained
        return cls(index, payload_bits, writable=True)

    @classmethod
    def load(cls, path: os.PathLike, payload_bits: int, mmap: bool = False) -> "LandmarkIndex":
        """Read a store written by :meth:`save`.

        Parameters
        ----------
        path : path-like
            The index file.
        payload_bits : int
            As given to :meth:`create` (recorded in the index manifest).
        mmap : bool
            Memory-map the inverted lists instead of reading them: near-instant load,
            pages shared between processes, but the store is then read-only.
        """
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        index = faiss.read_index_binary(str(path), flags)
        index.nprobe = 1
        return cls(index, payload_bits, writable=not mmap)

    def save(self, path: os.PathLike) -> None:
        """Write atomically: a temporary file in the same folder, fsync, then rename."""
        replace_atomically(path, lambda tmp: faiss.write_index_binary(self._index, tmp))

    @property
    def ntotal(self) -> int:
        """Number of landmark entries stored."""
        return int(self._index.ntotal)

    def add(self, track_id: int, hashes: np.ndarray, payloads: np.ndarray) -> None:
        """Store one track's landmarks.

        Parameters
        ----------
        track_id : int
            Non-negative catalogue id of the track, below ``2 ** (63 - payload_bits)``.
        hashes : np.ndarray of uint32
            Landmark codes.
        payloads : np.ndarray of int
            What each hit must return, ``0 <= payload < 2 ** payload_bits``.
        """
        self._require_writable()
        payloads = np.asarray(payloads, dtype=np.int64)
        if len(hashes) != len(payloads):
            raise ValueError("hashes and payloads differ in length")
        if payloads.size and (payloads.min() < 0 or payloads.max() >= 1 << self.payload_bits):
            raise ValueError(f"payloads must lie in [0, 2**{self.payload_bits})")
        if not 0 <= track_id < 1 << (_ID_BITS - self.payload_bits):
            raise ValueError(f"track id {track_id} out of range")
        ids = (np.int64(track_id) << self.payload_bits) | payloads
        self._index.add_with_ids(_as_code_bytes(hashes), ids)

    def remove(self, track_id: int) -> int:
        """Remove every entry of ``track_id``; returns how many were removed."""
        self._require_writable()
        selector = faiss.IDSelectorRange(int(track_id) << self.payload_bits,
                                         (int(track_id) + 1) << self.payload_bits)
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
        query_index, track_ids, payloads : np.ndarray of int64
            One row per hit: which query code it answers, and the stored entry's
            track and payload.
        """
        hashes = np.asarray(hashes, dtype=np.uint32)
        if hashes.size == 0 or self.ntotal == 0:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty
        lims, _, labels = self._index.range_search(_as_code_bytes(hashes), max_hamming + 1)
        query_index = np.repeat(np.arange(len(hashes), dtype=np.int64), np.diff(lims).astype(np.int64))
        labels = labels.astype(np.int64)
        return query_index, labels >> self.payload_bits, labels & ((1 << self.payload_bits) - 1)

    def _require_writable(self) -> None:
        if not self.writable:
            raise PermissionError("this landmark index was opened read-only (memory-mapped)")

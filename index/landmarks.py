"""The landmark store: 32-bit hash codes in a FAISS binary inverted file.

Layout
------
``faiss.IndexBinaryIVF`` over 32-bit codes with ``2 ** list_bits`` inverted lists.
Its coarse quantizer is an ``IndexBinaryHash`` holding one centroid per value of
the stored code's low ``list_bits`` bits, so a code is filed under exactly its low
bits (one hash-table probe, no k-means) and a lookup scans one list for entries whose
code is equal (Hamming distance 0).

What is stored is the landmark code passed through an invertible integer mix
(:func:`mix_codes`, xor-shifts and odd multiplications): the low bits of a raw code are
a few of its fields, so popular field values crowded a few lists, and an exact lookup
scanned 11 (triplet) to 15 (pair) entries per hit on the bench index; mixed codes
spread evenly over the lists and a lookup scans about 2. Being a bijection, the mix
keeps equal codes equal and distinct codes distinct. Stores from before the mix
(``hashed_lists=False``) keep filing raw codes and are read as before.

Each entry's FAISS id packs ``(track_id, payload)`` as
``track_id << payload_bits | payload``; the payload is whatever the fingerprint
tier needs back from a hit (the anchor frame; for triplets also the anchor bin and
span). All of a track's entries form one id range, so removing a track is an
``IDSelectorRange`` over the lists, with no rebuild and no side copy of the codes. The IVF form (unlike ``IndexBinaryHash``)
supports ``remove_ids`` and can be memory-mapped on load.

Next to the FAISS file, ``<file>.counts.npy`` holds how many entries each stored code
has: a sparse table, row 0 the distinct stored codes in increasing order, row 1 their
entry counts (uint32). Matching weighs a query code by that count, and knowing it before the
lookup lets the commonest codes, too light to count, skip the lookup altogether. The
table follows the FAISS file in :meth:`LandmarkIndex.save`; a table that is missing or
does not add up to the file's entry count (an index from before it existed, a crash
between the two renames) is recounted from the inverted lists.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import faiss
import numpy as np

from refrain.index.files import replace_atomically

__all__ = ["LandmarkIndex", "CODE_BITS", "counts_path", "mix_codes"]

CODE_BITS = 32
_ID_BITS = 63  # FAISS ids are signed 64-bit
_CODE_BYTES = CODE_BITS // 8
# Odd multipliers of :func:`mix_codes` (from the "lowbias32" integer hash).
_MIX_MULTIPLIERS = (np.uint32(0x7FEB352D), np.uint32(0x846CA68B))

def _as_code_bytes(hashes: np.ndarray) -> np.ndarray:
    """uint32 codes -> (n, 4) uint8 rows, little-endian so that FAISS reads the low bits first."""
    return np.ascontiguousarray(np.asarray(hashes, dtype="<u4")).view(np.uint8).reshape(-1, _CODE_BYTES)


def mix_codes(hashes: np.ndarray) -> np.ndarray:
    """An invertible mix of 32-bit codes whose low bits depend on every bit of the code.

    Each step is a bijection of the 32-bit integers (``x ^= x >> 16``; ``x *= odd``
    modulo ``2 ** 32``), so the mix maps distinct codes to distinct codes.
    """
    mixed = np.asarray(hashes, dtype=np.uint32)
    for multiplier in _MIX_MULTIPLIERS:
        mixed = (mixed ^ (mixed >> np.uint32(16))) * multiplier
    return mixed ^ (mixed >> np.uint32(16))


def counts_path(path: os.PathLike) -> Path:
    """Where the code-count table of the landmark file ``path`` is saved."""
    path = Path(path)
    return path.with_name(path.name + ".counts.npy")


def _count_codes(codes: np.ndarray) -> np.ndarray:
    """(2, n) uint32 table of the distinct ``codes`` in increasing order and their counts."""
    distinct, counts = np.unique(np.asarray(codes, dtype=np.uint32), return_counts=True)
    return np.stack([distinct, counts.astype(np.uint32)])


def _merge_counts(table: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Sum of two code-count tables (a new table; neither argument is modified)."""
    codes, counts = table
    position = np.searchsorted(codes, other[0])
    known = position < len(codes)
    known[known] = codes[position[known]] == other[0][known]
    merged_counts = counts.copy()
    merged_counts[position[known]] += other[1][known]
    fresh = ~known
    return np.stack([np.insert(codes, position[fresh], other[0][fresh]),
                     np.insert(merged_counts, position[fresh], other[1][fresh])])


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
    hashed_lists : bool
        Codes are stored mixed (:func:`mix_codes`); False for stores from before the mix.
    """

    def __init__(self, index: faiss.IndexBinaryIVF, payload_bits: int, writable: bool,
                 code_counts: np.ndarray | None = None, hashed_lists: bool = True):
        if not 0 < payload_bits < _ID_BITS - 16:
            raise ValueError(f"payload_bits={payload_bits} leaves too few bits for track ids")
        self._index = index
        self.payload_bits = payload_bits
        self.writable = writable
        self.hashed_lists = hashed_lists
        # The count table (see the module docstring), or None until recounted from the lists.
        self._counts = code_counts
        # Codes added since the table was last brought up to date: folding them in per
        # call to add would cost a copy of the table per track ingested.
        self._unfolded: list[np.ndarray] = []
        # Readers sharing the store may bring the table up to date concurrently.
        self._counts_lock = threading.Lock()

    @classmethod
    def create(cls, payload_bits: int, list_bits: int = 16) -> "LandmarkIndex":
        """An empty store with ``2 ** list_bits`` inverted lists, storing mixed codes."""
        nlist = 1 << list_bits
        quantizer = faiss.IndexBinaryHash(CODE_BITS, list_bits)
        quantizer.add(_as_code_bytes(np.arange(nlist, dtype=np.uint32)))
        index = faiss.IndexBinaryIVF(quantizer, CODE_BITS, nlist)
        index.own_fields = True
        quantizer.this.disown()
        index.nprobe = 1
        assert index.is_trained
        return cls(index, payload_bits, writable=True, code_counts=_count_codes(np.zeros(0, np.uint32)))

    @classmethod
    def load(cls, path: os.PathLike, payload_bits: int, mmap: bool = False,
             hashed_lists: bool = True) -> "LandmarkIndex":
        """Read a store written by :meth:`save`.

        Parameters
        ----------
        path : path-like
            The index file.
        payload_bits : int
            As given to :meth:`create` (recorded in the index manifest).
        mmap : bool
            Memory-map the inverted lists (and the code-count table) instead of reading
            them: near-instant load, pages shared between processes, but the store is
            then read-only.
        hashed_lists : bool
            Whether the store holds mixed codes (recorded in the index manifest).
        """
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        index = faiss.read_index_binary(str(path), flags)
        index.nprobe = 1
        try:
            code_counts = np.load(counts_path(path), mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError):  # missing (an index from before the table) or unreadable
            code_counts = None
        if code_counts is not None and (
                code_counts.dtype != np.uint32 or code_counts.ndim != 2 or len(code_counts) != 2
                or int(code_counts[1].sum(dtype=np.uint64)) != index.ntotal):
            code_counts = None  # stale: recounted from the lists when first needed
        return cls(index, payload_bits, writable=not mmap, code_counts=code_counts, hashed_lists=hashed_lists)

    def save(self, path: os.PathLike) -> None:
        """Write the FAISS file, then the code-count table, each atomically.

        Each goes through a temporary file in the same folder, fsync, then rename.
        """
        code_counts = self._settled_counts()
        replace_atomically(path, lambda tmp: faiss.write_index_binary(self._index, tmp))
        replace_atomically(counts_path(path), lambda tmp: _save_array(tmp, code_counts))

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
        codes = _as_code_bytes(self._stored_form(hashes))
        self._index.add_with_ids(codes, ids)
        with self._counts_lock:
            self._unfolded.append(codes.view("<u4").ravel().copy())

    def remove(self, track_id: int) -> int:
        """Remove every entry of ``track_id``; returns how many were removed."""
        self._require_writable()
        selector = faiss.IDSelectorRange(int(track_id) << self.payload_bits,
                                         (int(track_id) + 1) << self.payload_bits)
        removed = int(self._index.remove_ids(selector))
        if removed:
            # The removed entries' codes are not known without a scan of every list,
            # which the recount (when the table is next needed) does anyway.
            with self._counts_lock:
                self._counts, self._unfolded = None, []
        return removed

    def code_counts(self, hashes: np.ndarray) -> np.ndarray:
        """How many stored entries have each code: the hits :meth:`lookup` would return for it.

        Parameters
        ----------
        hashes : np.ndarray of uint32
            Codes.

        Returns
        -------
        np.ndarray of int64, same length
        """
        codes, counts = self._settled_counts()
        hashes = self._stored_form(hashes)
        if len(codes) == 0:
            return np.zeros(len(hashes), dtype=np.int64)
        position = np.minimum(np.searchsorted(codes, hashes), len(codes) - 1)
        return np.where(codes[position] == hashes, counts[position], 0).astype(np.int64)

    def lookup(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Find every stored entry whose code matches each query code.

        Parameters
        ----------
        hashes : np.ndarray of uint32
            Query codes.

        Returns
        -------
        query_index, track_ids, payloads : np.ndarray of int64
            One row per hit: which query code it answers, and the stored entry's
            track and payload.
        """
        first_hit, hits_per_code, labels = self.lookup_slices(hashes)
        # Each code's hits are one slice of the result: moved, in code order, to where
        # code order puts them.
        shift = first_hit - (np.cumsum(hits_per_code) - hits_per_code)
        labels = labels[np.repeat(shift, hits_per_code) + np.arange(len(labels))]
        query_index = np.repeat(np.arange(len(hits_per_code), dtype=np.int64), hits_per_code)
        return query_index, labels >> self.payload_bits, labels & ((1 << self.payload_bits) - 1)

    def lookup_slices(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`lookup`'s hits as FAISS returns them: one slice of entry ids per code.

        For a caller that walks the hits code by code anyway (a compiled loop), this
        spares the copy that puts them in code order.

        Parameters
        ----------
        hashes : np.ndarray of uint32
            Query codes.

        Returns
        -------
        first_hit, hits_per_code : np.ndarray of int64
            For each query code, where its hits start in ``labels`` and how many there are.
        labels : np.ndarray of int64
            Every hit's entry id, ``track_id << payload_bits | payload``.
        """
        hashes = self._stored_form(hashes)
        if hashes.size == 0 or self.ntotal == 0:
            empty = np.zeros(len(hashes), dtype=np.int64)
            return empty, empty, np.zeros(0, dtype=np.int64)
        # A stored code's list is its low bits (see the module docstring): computed here, it spares
        # the coarse quantizer's hash-table probe per code.
        lists = (hashes & np.uint32(self._index.nlist - 1)).astype(np.int64)
        # Searched in list order, the codes read the lists in memory order, which caches
        # and prefetches better: 20-25 % faster on the bench index, more than the sort
        # and the reordering of the hits back into code order cost.
        by_list = np.argsort(lists, kind="stable")
        lims, _, labels = self._index.range_search_preassigned(_as_code_bytes(hashes[by_list]), 1,
                                                               lists[by_list].reshape(-1, 1), None)
        hits_per_code, first_hit = np.empty((2, len(hashes)), dtype=np.int64)
        hits_per_code[by_list], first_hit[by_list] = np.diff(lims), lims[:-1]
        return first_hit, hits_per_code, labels

    def refiled(self) -> "LandmarkIndex":
        """A new in-memory store holding this one's entries, filed by mixed code.

        For a store from before the mix (``hashed_lists=False``): its entries move to
        the lists of their mixed codes, each code's entries keeping their order, so
        every lookup returns the same hits in the same order, scanning fewer entries.
        """
        if self.hashed_lists:
            raise ValueError("this store already files mixed codes")
        codes, ids = self._stored_entries()
        refiled = LandmarkIndex.create(self.payload_bits, list_bits=int(self._index.nlist).bit_length() - 1)
        mixed = mix_codes(codes)
        refiled._index.add_with_ids(_as_code_bytes(mixed), ids)
        refiled._counts = _count_codes(mixed)
        return refiled

    def _stored_form(self, hashes: np.ndarray) -> np.ndarray:
        """Landmark codes as this store files and counts them (mixed, or raw in an older store)."""
        hashes = np.asarray(hashes, dtype=np.uint32)
        return mix_codes(hashes) if self.hashed_lists else hashes

    def _settled_counts(self) -> np.ndarray:
        """The code-count table, recounted or with the codes added since folded in as needed."""
        with self._counts_lock:
            if self._counts is None:
                self._counts, self._unfolded = _count_codes(self._stored_codes()), []
            elif self._unfolded:
                self._counts = _merge_counts(self._counts, _count_codes(np.concatenate(self._unfolded)))
                self._unfolded = []
            return self._counts

    def _stored_codes(self) -> np.ndarray:
        """Every stored entry's (stored form of its) code, read from the inverted lists (about 50 ns per entry)."""
        return self._stored_entries(with_ids=False)[0]

    def _stored_entries(self, with_ids: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """Every stored entry's code (stored form) and, if asked, id: list by list, in list order."""
        lists = self._index.invlists
        codes, ids = [np.zeros(0, dtype=np.uint32)], [np.zeros(0, dtype=np.int64)]
        for list_no in range(self._index.nlist):
            size = lists.list_size(list_no)
            if size:
                pointer = lists.get_codes(list_no)
                codes.append(np.frombuffer(faiss.rev_swig_ptr(pointer, size * _CODE_BYTES), dtype="<u4").copy())
                lists.release_codes(list_no, pointer)
                if with_ids:
                    pointer = lists.get_ids(list_no)
                    ids.append(faiss.rev_swig_ptr(pointer, size).copy())
                    lists.release_ids(list_no, pointer)
        return np.concatenate(codes), np.concatenate(ids) if with_ids else None

    def _require_writable(self) -> None:
        if not self.writable:
            raise PermissionError("this landmark index was opened read-only (memory-mapped)")


def _save_array(path: str, array: np.ndarray) -> None:
    # Through a handle: given a name, np.save would append ".npy" to the temporary file's.
    with open(path, "wb") as handle:
        np.save(handle, np.ascontiguousarray(array), allow_pickle=False)

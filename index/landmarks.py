"""The landmark store: each code's entries in one contiguous run of a memory-mapped file.

Layout
------
One uncompressed ``.npz`` archive per tier (:func:`index.files.save_arrays`), read
memory-mapped (:func:`index.files.map_arrays`):

``codes``  (uint32)  the distinct stored codes, in increasing order;
``starts`` (uint32)  where each code's entries begin in ``ids``, plus the end (int64 in a
                     store of 2 ** 32 entries or more);
``ids``    (uint8)   every entry's id, ``track_id << payload_bits | payload``, in the
                     fewest little-endian bytes that hold ``payload_bits + TRACK_BITS``
                     (6 for the pair tier, 8 for the triplet tier), grouped by code.

An entry thus costs its id alone: the code is implied by the run it lies in, and each
distinct code costs 8 bytes once (the specific codes of the proposal tiers have about
one entry each, so this is a third of their store). A lookup is one binary search per code in
``codes`` and one copy of its run — exactly its hits, no neighbour's entries scanned —
and the run lengths are the entry counts that rarity weights need before any lookup.
A process maps the file: it opens in constant time at any catalogue size, its pages are
shared between processes, and its memory holds only the runs its queries read.

The FAISS binary inverted file this replaces (format of 2026-11 and before) stored the
32-bit code and an 8-byte id per entry (12 bytes), filed codes in ``2 ** 16`` lists and
scanned a whole list per lookup, and needed a count table beside it. Such a tier is read
with :meth:`LandmarkIndex.from_faiss` and rewritten by ``refrain upgrade``.

What is stored is the landmark code passed through an invertible integer mix
(:func:`mix_codes`): the FAISS lists were keyed by the low bits of the stored code,
which in a raw code are a few popular field values; stores from before the mix
(``hashed_lists=False``) keep raw codes and are read as before until upgraded.

Within a code's run, entries keep the order they were added in (a track's entries
after those of tracks added before it), as the FAISS lists kept them, so that every
lookup returns the same hits in the same order. Track ids are handed out in increasing
order and never reused (:mod:`index.catalog`), so a run is also sorted by track: a lookup
restricted to a few candidate tracks (:meth:`LandmarkIndex.lookup_slices` with
``tracks``) finds each one's entries by binary search in the run and reads nothing else.
Added entries stay in memory until :meth:`LandmarkIndex.save` merges them into the runs;
removing a track rewrites the runs without its entries.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import faiss
import numba
import numpy as np

from refrain.index.files import map_arrays, save_arrays

__all__ = ["LandmarkIndex", "CODE_BITS", "TRACK_BITS", "mix_codes", "unmix_codes"]

CODE_BITS = 32
#: Track ids of a landmark store lie below ``2 ** TRACK_BITS`` (67 million; ids are never
#: reused, so this bounds tracks ever added to one index; a larger catalogue is sharded by track).
TRACK_BITS = 26
_CODE_BYTES = CODE_BITS // 8
_ARRAYS = ("codes", "starts", "ids")
# Odd multipliers of :func:`mix_codes` (from the "lowbias32" integer hash).
_MIX_MULTIPLIERS = (np.uint32(0x7FEB352D), np.uint32(0x846CA68B))

def mix_codes(hashes: np.ndarray) -> np.ndarray:
    """An invertible mix of 32-bit codes whose low bits depend on every bit of the code.

    Each step is a bijection of the 32-bit integers (``x ^= x >> 16``; ``x *= odd``
    modulo ``2 ** 32``), so the mix maps distinct codes to distinct codes.
    """
    mixed = np.asarray(hashes, dtype=np.uint32)
    for multiplier in _MIX_MULTIPLIERS:
        mixed = (mixed ^ (mixed >> np.uint32(16))) * multiplier
    return mixed ^ (mixed >> np.uint32(16))


def unmix_codes(stored: np.ndarray) -> np.ndarray:
    """Inverse of :func:`mix_codes`: the landmark codes whose mixes are ``stored``.

    Each step of the mix is undone in reverse order (``x ^= x >> 16`` is its own
    inverse on 32 bits; a product by an odd number is undone by its inverse modulo ``2 ** 32``).
    """
    codes = np.asarray(stored, dtype=np.uint32)
    codes = codes ^ (codes >> np.uint32(16))
    for multiplier in reversed(_MIX_MULTIPLIERS):
        codes = codes * np.uint32(pow(int(multiplier), -1, 1 << 32))
        codes = codes ^ (codes >> np.uint32(16))
    return codes


def id_bytes(payload_bits: int) -> int:
    """Bytes an entry's id takes in a store whose payloads have ``payload_bits`` bits."""
    return -(-(payload_bits + TRACK_BITS) // 8)


def _packed(ids: np.ndarray, width: int) -> np.ndarray:
    """int64 ids -> (n, width) uint8 rows, little-endian, low bytes first."""
    return np.ascontiguousarray(np.asarray(ids, dtype="<i8").view(np.uint8).reshape(-1, 8)[:, :width])


@numba.njit(cache=True, nogil=True)
def _id_at(rows: np.ndarray, i: int) -> np.int64:
    """The id packed in row ``i`` of ``rows`` (little-endian bytes, see :func:`_packed`)."""
    value = np.int64(0)
    for b in range(rows.shape[1]):
        value |= np.int64(rows[i, b]) << (8 * b)
    return value


@numba.njit(cache=True, nogil=True)
def _unpacked(rows: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_packed`: (n, width) uint8 rows -> int64 ids."""
    ids = np.empty(rows.shape[0], np.int64)
    for i in range(rows.shape[0]):
        ids[i] = _id_at(rows, i)
    return ids


@numba.njit(cache=True, nogil=True)
def _gather_runs(rows: np.ndarray, first: np.ndarray, lengths: np.ndarray, total: int) -> np.ndarray:
    """The ids of the runs ``rows[first[k]:first[k] + lengths[k]]``, laid end to end."""
    labels = np.empty(total, np.int64)
    out = 0
    for k in range(len(first)):
        for i in range(first[k], first[k] + lengths[k]):
            labels[out] = _id_at(rows, i)
            out += 1
    return labels


@numba.njit(cache=True, nogil=True)
def _track_at(rows: np.ndarray, i: int, payload_bits: int) -> np.int64:
    """Track id of entry ``i`` of ``rows``."""
    return _id_at(rows, i) >> payload_bits


@numba.njit(cache=True, nogil=True)
def _first_of_track(rows: np.ndarray, low: int, high: int, track: int, payload_bits: int) -> int:
    """First position in ``rows[low:high]`` (sorted by track) whose track is ``track`` or later.

    Galloping from ``low`` (steps 1, 2, 4, ... then a binary search inside the last
    step): a lookup's candidates are visited in increasing order, so each search costs
    the log of the distance it moves, not of the run.
    """
    step = 1
    while low + step < high and _track_at(rows, low + step - 1, payload_bits) < track:
        low += step
        step *= 2
    high = min(high, low + step)
    while low < high:
        middle = (low + high) // 2
        if _track_at(rows, middle, payload_bits) < track:
            low = middle + 1
        else:
            high = middle
    return low


@numba.njit(cache=True, nogil=True)
def _gather_track_runs(rows: np.ndarray, first: np.ndarray, lengths: np.ndarray, tracks: np.ndarray,
                       payload_bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """As :func:`_gather_runs`, keeping only the entries of ``tracks`` (sorted): (first_hit, hits_per_code, ids)."""
    n_codes = len(first)
    bounds = np.empty((n_codes, len(tracks), 2), np.int64)
    hits_per_code = np.zeros(n_codes, np.int64)
    for k in range(n_codes):
        low, end = first[k], first[k] + lengths[k]
        for t in range(len(tracks)):
            start = _first_of_track(rows, low, end, tracks[t], payload_bits)
            stop = _first_of_track(rows, start, end, tracks[t] + 1, payload_bits)
            bounds[k, t, 0], bounds[k, t, 1] = start, stop
            hits_per_code[k] += stop - start
            low = stop
    first_hit = np.cumsum(hits_per_code) - hits_per_code
    labels = np.empty(hits_per_code.sum(), np.int64)
    out = 0
    for k in range(n_codes):
        for t in range(len(tracks)):
            for i in range(bounds[k, t, 0], bounds[k, t, 1]):
                labels[out] = _id_at(rows, i)
                out += 1
    return first_hit, hits_per_code, labels


class LandmarkIndex:
    """Landmark codes, each resolving to (track id, payload) entries.

    Use :meth:`create` for a new, empty store, :meth:`load` for a saved one and
    :meth:`from_faiss` for a tier of the earlier FAISS format.

    Parameters
    ----------
    payload_bits : int
        Low bits of each id that hold the payload; track ids get ``TRACK_BITS`` above them.
    codes, starts : np.ndarray
        The runs (see the module docstring).
    ids : np.ndarray of uint8, shape (n, id_bytes(payload_bits))
        Every entry's id, grouped by code.
    writable : bool
    hashed_lists : bool
        Codes are stored mixed (:func:`mix_codes`); False for stores from before the mix.
    """

    def __init__(self, payload_bits: int, codes: np.ndarray, starts: np.ndarray, ids: np.ndarray,
                 writable: bool, hashed_lists: bool = True):
        if not 0 < payload_bits <= 63 - TRACK_BITS:
            raise ValueError(f"payload_bits={payload_bits} leaves too few bits for track ids")
        self.payload_bits = payload_bits
        self.writable = writable
        self.hashed_lists = hashed_lists
        self._codes, self._starts, self._ids = codes, starts, ids
        # Entries added since the runs were last merged: (stored codes, ids) per add.
        self._added: list[tuple[np.ndarray, np.ndarray]] = []
        # Readers sharing a writer's store may merge the added entries concurrently.
        self._merge_lock = threading.Lock()

    @classmethod
    def create(cls, payload_bits: int, hashed_lists: bool = True) -> "LandmarkIndex":
        """An empty store."""
        return cls(payload_bits, np.zeros(0, np.uint32), np.zeros(1, np.int64),
                   np.zeros((0, id_bytes(payload_bits)), np.uint8), writable=True, hashed_lists=hashed_lists)

    @classmethod
    def load(cls, path: os.PathLike, payload_bits: int, mmap: bool = False,
             hashed_lists: bool = True) -> "LandmarkIndex":
        """Read a store written by :meth:`save`.

        Parameters
        ----------
        path : path-like
            The store's file.
        payload_bits : int
            As given to :meth:`create` (recorded in the index manifest).
        mmap : bool
            Leave the file memory-mapped (read-only) instead of reading it into memory
            for a writer.
        hashed_lists : bool
            Whether the store holds mixed codes (recorded in the index manifest).

        Raises
        ------
        ValueError
            If the file is not a landmark store of this payload width (damaged or foreign).
        """
        arrays = map_arrays(path, _ARRAYS)
        codes, starts, flat_ids = arrays["codes"], arrays["starts"], arrays["ids"]
        width = id_bytes(payload_bits)
        if (codes.dtype != np.uint32 or starts.dtype not in (np.uint32, np.int64) or flat_ids.dtype != np.uint8
                or len(starts) != len(codes) + 1 or starts[0] != 0 or starts[-1] * width != len(flat_ids)):
            raise ValueError(f"inconsistent landmark store {path}")
        ids = flat_ids.reshape(-1, width)
        if not mmap:
            codes, starts, ids = np.array(codes), np.array(starts, dtype=np.int64), np.array(ids)
        return cls(payload_bits, codes, starts, ids, writable=not mmap, hashed_lists=hashed_lists)

    @classmethod
    def from_faiss(cls, path: os.PathLike, payload_bits: int, hashed_lists: bool) -> "LandmarkIndex":
        """A store holding the entries of a FAISS-format tier (Refrain of 2026-11 and before).

        Every entry keeps its id and its order among its code's entries, so every lookup
        returns the same hits in the same order; the codes are mixed whatever the old
        file held (``hashed_lists`` says which it held).

        Raises
        ------
        ValueError
            If the file is not a FAISS binary inverted file.
        """
        try:
            index = faiss.read_index_binary(os.fspath(path))
        except RuntimeError as err:
            raise ValueError(f"unreadable FAISS landmark file {path}: {err}") from err
        if not isinstance(index, faiss.IndexBinaryIVF):
            raise ValueError(f"unreadable FAISS landmark file {path}: not a binary inverted file")
        lists: Any = index.invlists  # an ArrayInvertedLists: its release_* calls are not in the stubs
        codes, ids = [np.zeros(0, np.uint32)], [np.zeros(0, np.int64)]
        for list_no in range(lists.nlist):
            size = lists.list_size(list_no)
            if size:
                pointer = lists.get_codes(list_no)
                codes.append(np.frombuffer(faiss.rev_swig_ptr(pointer, size * _CODE_BYTES), dtype="<u4").copy())
                lists.release_codes(list_no, pointer)
                id_pointer = lists.get_ids(list_no)
                ids.append(faiss.rev_swig_ptr(id_pointer, size).copy())
                lists.release_ids(list_no, id_pointer)
        stored = np.concatenate(codes)
        store = cls.create(payload_bits)
        store._added.append((stored if hashed_lists else mix_codes(stored), np.concatenate(ids)))
        store._merge_added()
        return store

    def save(self, path: os.PathLike) -> None:
        """Write the store atomically (temporary file, fsync, rename)."""
        self._merge_added()
        starts = self._starts.astype(np.uint32) if self._starts[-1] < 1 << 32 else self._starts
        save_arrays(path, {"codes": self._codes, "starts": starts, "ids": self._ids.reshape(-1)})

    @property
    def ntotal(self) -> int:
        """Number of landmark entries stored."""
        return int(self._starts[-1]) + sum(len(ids) for _, ids in self._added)

    def add(self, track_id: int, hashes: np.ndarray, payloads: np.ndarray) -> None:
        """Store one track's landmarks.

        Parameters
        ----------
        track_id : int
            Non-negative catalogue id of the track, below ``2 ** TRACK_BITS``.
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
        if not 0 <= track_id < 1 << TRACK_BITS:
            raise ValueError(f"track id {track_id} out of range")
        with self._merge_lock:
            self._added.append((self._stored_form(hashes), (np.int64(track_id) << self.payload_bits) | payloads))

    def remove(self, track_id: int) -> int:
        """Remove every entry of ``track_id``; returns how many were removed."""
        self._require_writable()
        self._merge_added()
        with self._merge_lock:
            kept = (_unpacked(self._ids) >> self.payload_bits) != track_id
            removed = int(len(kept) - kept.sum())
            if removed:
                run_of_entry = np.repeat(np.arange(len(self._codes)), np.diff(self._starts))
                lengths = np.bincount(run_of_entry[kept], minlength=len(self._codes))
                self._codes = self._codes[lengths > 0]
                self._starts = np.concatenate([[0], np.cumsum(lengths[lengths > 0])]).astype(np.int64)
                self._ids = self._ids[kept]
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
        return self._runs(self._stored_form(hashes))[1]

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
        _, hits_per_code, labels = self.lookup_slices(hashes)
        query_index = np.repeat(np.arange(len(hits_per_code), dtype=np.int64), hits_per_code)
        return query_index, labels >> self.payload_bits, labels & ((1 << self.payload_bits) - 1)

    def lookup_slices(self, hashes: np.ndarray, tracks: np.ndarray | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`lookup`'s hits as one slice of entry ids per code.

        Parameters
        ----------
        hashes : np.ndarray of uint32
            Query codes.
        tracks : np.ndarray of int, optional
            Only hits on these tracks (sorted, distinct): each is found by binary search
            in each code's run, so the work follows the candidates, not the run lengths.

        Returns
        -------
        first_hit, hits_per_code : np.ndarray of int64
            For each query code, where its hits start in ``labels`` and how many there are
            (the slices follow each other in the order of ``hashes``).
        labels : np.ndarray of int64
            Every hit's entry id, ``track_id << payload_bits | payload``.
        """
        first, hits_per_code = self._runs(self._stored_form(hashes))
        if tracks is not None:
            return _gather_track_runs(self._ids, first, hits_per_code, np.asarray(tracks, np.int64),
                                      self.payload_bits)
        total = int(hits_per_code.sum())
        first_hit = np.cumsum(hits_per_code) - hits_per_code
        return first_hit, hits_per_code, _gather_runs(self._ids, first, hits_per_code, total)

    def refiled(self) -> "LandmarkIndex":
        """A new in-memory store holding this one's entries under mixed codes.

        For a store from before the mix (``hashed_lists=False``): each code's entries keep
        their order, so every lookup returns the same hits in the same order.
        """
        if self.hashed_lists:
            raise ValueError("this store already files mixed codes")
        self._merge_added()
        refiled = LandmarkIndex.create(self.payload_bits)
        raw = np.repeat(self._codes, np.diff(self._starts))
        refiled._added.append((mix_codes(raw), _unpacked(self._ids)))
        refiled._merge_added()
        return refiled

    def _stored_form(self, hashes: np.ndarray) -> np.ndarray:
        """Landmark codes as this store files them (mixed, or raw in an older store)."""
        hashes = np.asarray(hashes, dtype=np.uint32)
        return mix_codes(hashes) if self.hashed_lists else hashes

    def _runs(self, stored: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where each stored-form code's run starts in ``ids`` and its length (0 if absent)."""
        self._merge_added()
        codes, starts = self._codes, self._starts
        if len(codes) == 0:
            return np.zeros(len(stored), np.int64), np.zeros(len(stored), np.int64)
        at = np.minimum(np.searchsorted(codes, stored), len(codes) - 1)
        found = codes[at] == stored
        first = np.asarray(starts[at], dtype=np.int64)
        return first, np.where(found, np.asarray(starts[at + 1]) - first, 0).astype(np.int64)

    def _merge_added(self) -> None:
        """Merge the entries added since the last merge into the runs, after each run's own."""
        with self._merge_lock:
            if not self._added:
                return
            new_codes = np.concatenate([codes for codes, _ in self._added])
            new_ids = np.concatenate([ids for _, ids in self._added])
            self._added = []
            order = np.argsort(new_codes, kind="stable")
            new_codes, new_ids = new_codes[order], new_ids[order]
            codes, starts = self._codes, self._starts
            at = np.searchsorted(codes, new_codes)
            known = at < len(codes)
            known[known] = codes[at[known]] == new_codes[known]
            # A known code's new entries go after its run; a new code's where its run will be.
            self._ids = np.insert(self._ids, np.where(known, starts[np.minimum(at + 1, len(codes))], starts[at]),
                                  _packed(new_ids, self._ids.shape[1]), axis=0)
            distinct, counts = np.unique(new_codes, return_counts=True)
            lengths = np.diff(starts)
            at = np.searchsorted(codes, distinct)
            fresh = (at >= len(codes)) | (codes[np.minimum(at, max(len(codes) - 1, 0))] != distinct) \
                if len(codes) else np.ones(len(distinct), dtype=bool)
            lengths = lengths.copy()
            lengths[at[~fresh]] += counts[~fresh]
            self._codes = np.insert(codes, at[fresh], distinct[fresh])
            lengths = np.insert(lengths, at[fresh], counts[fresh])
            self._starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)

    def _require_writable(self) -> None:
        if not self.writable:
            raise PermissionError("this landmark index was opened read-only (memory-mapped)")

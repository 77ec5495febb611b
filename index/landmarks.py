"""The landmark store: each code's entries in one contiguous run of a memory-mapped file.

Layout (the compact encoding; its code table of version 2)
----------------------------------------------------------
One uncompressed ``.npz`` archive per segment (:func:`index.files.save_arrays`), read
memory-mapped (:func:`index.files.map_arrays`):

``stream``      (uint64)  every entry, bit-packed, run after run (little-endian words, one
                          spare word at the end);
``skip_bits``   (uint64)  the bit position of every ``SKIP``-th entry (entry 0, 64, 128, ...
``skip_tracks`` (uint32)  of the segment) and its track id: the skip points;
the code table  (below)   ``low``, ``runs``, ``long_lengths``, ``long_escapes``,
                          ``bucket_offsets``, ``group_codes``, ``group_entries``,
                          ``group_positions``, ``group_long`` (:class:`_BucketTable`);
``layout``      (int64)   version (2), ``SKIP``, the widths below, the smallest and largest
                          track, the stream's length in bits, the table's bucket and group bits.

An entry is ``[gap: g bits][payload: p bits]`` and, only when the gap field is all ones
(an *escape*), ``[track: G bits]``. The gap is the entry's track id minus the one before
it in its run (the run's first: minus 0); within a run entries are sorted by track, so a
gap is small and often 0 (a track holding the code several times). G is the bit length of
the segment's largest track id, p that of its largest payload (the anchor frame is a
payload's top field, so p follows the segment's longest track: 14 bits for tracks under
8.7 minutes where the tier reserves 22), and g the width that makes the stream shortest,
chosen at each save from the gaps' bit lengths (an escape costs G more bits). An entry
decodes from the one before it; a lookup decodes each run from its start, and a lookup
restricted to candidate tracks gallops over the run's skip points (their tracks are
stored) to the last one before a candidate and decodes at most ``SKIP`` entries from
there. Every reader returns the ids, ``track_id << payload_bits | payload``, of the plain
layout below, in the same order: the encoding is invisible above this module.

The code table. The stored codes are mixed (:func:`mix_codes`), so their top bits spread
them evenly: the table files them in ``2 ** b`` buckets by their top b bits and keeps of
each code only its low ``32 - b`` bits (``low``: 1, 2 or 4 bytes). b is chosen at each
save as the one that makes the table smallest among those leaving at most 8 codes a bucket
on average (640 catalogue hours: b = 24 and one byte for 15.6 million quad codes, b = 21
and two bytes for 11.1 million double codes). Each code has one byte for its run
(``runs``): its length and how many of its entries are escapes, 4 bits each, or 0 for a
run of more than 15 entries, whose length and escapes are the next of ``long_lengths`` and
``long_escapes``. Consecutive buckets form groups of about 64 codes (256 entries where
runs are long), each knowing its first code, entry and bit and the long runs before it;
a bucket's first code is an offset from its group's (``bucket_offsets``, one byte unless
a group holds more than 255 codes). A lookup reads its bucket's bounds, compares the low
bits of its few codes, and adds up the run bytes before it in its group: the run's first
entry and bit follow (a run of n entries with e escapes takes ``n * (g + p) + e * G``
bits), with no binary search and no entry decoded; a count (``code_counts``) is mostly
the code's own byte. Cost: 3.6 bytes per distinct code for the quad tier, 3.9 for the
double tier at 640 h (where version 1 took 10: their files lost 21 and 18 %), 12-14 for
the pair and triplet tiers, whose few codes have long runs (about 0.5 % of their files).

Why it stays small as the catalogue grows: a code's run grows in proportion to the
catalogue, so the gaps between its tracks keep their size (g and the share of escapes
stay the same); only G grows (14 bits at 13,000 tracks, 22 at 3.5 million), and it is
paid by the escapes and runs' first entries alone. Per entry: g + p + (escape share) * G
+ 96 / SKIP bits for the skip points, and the code table's bytes per distinct code
(docs/scale.md, step 6; docs/index-format.md).

The code table of version 1 (2026-12-07, index format 4): ``codes`` (uint32, the distinct
stored codes in increasing order), ``starts`` (uint32: each run's first entry, plus the
end; int64 from ``2 ** 32`` entries) and ``run_bits`` (uint16: each run's first bit after
the skip point at or before it): 10 bytes per code and a binary search per code looked up.
Such files are read as they are (:class:`_SortedTable`); a save, merge or ``refrain
upgrade`` writes their stream, unchanged, with a version-2 table.

The plain layout (before 2026-12-07)
------------------------------------
``codes`` and ``starts`` as in version 1, and ``ids`` (uint8): every entry's id in the fewest
little-endian bytes that hold ``payload_bits + TRACK_BITS`` (6 for the pair tier, 8 for
the triplet tier). Entries added in memory are kept this way until saved, and segment
files written by an earlier Refrain are read as they are (any segment may be of any
layout); every save, merge and ``refrain upgrade`` writes the compact encoding.

The code is implied by the run an entry lies in. A lookup finds each code's run (one
bucket read in the compact layout, a binary search in ``codes`` in the plain one) and
makes one pass over it — exactly its hits, no neighbour's entries read — and the run
lengths are the entry counts that rarity weights need before any lookup.
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
``tracks``) finds each one's entries by a search in the run and reads little else.

The track-major layout (format 6)
--------------------------------
A tier that the matcher searches only in a few candidate tracks per query (the triplet
tier once proposals bound it, :class:`index.store.IndexWriteParams`) may have its main
file written the other way round (``save(..., track_major=True)``): one run per *track*,
keyed by the track's mixed id, holding the track's entries sorted by raw landmark code
(the gap field then holds code steps, the payload stays the value), plus the entry count
of every code (``counted_codes``, the stored codes increasing, and ``code_counts``) for
rarity weights and ``code_counts``. A lookup restricted to candidate tracks decodes each
candidate's run once and keeps the entries whose code the query asks (a bit set): its
cost is the candidates' entries, the same at any catalogue size, where a code-major
lookup jumps into every code's run for every candidate (at 640 catalogue hours, 8,000
triplet codes x 32 candidates: 30 ms against 2.4, docs/scale.md step 11). A lookup of
every track reads the whole file, so a small catalogue, searched exhaustively, keeps the
code-major layout. Hits come back regrouped code after code, each code's by track: the
hits, in the order, of the code-major file. Codes must lie below ``2 ** TRACK_BITS``.

Segments
--------
A store is a *main* file and, after it, any number of *delta* segments in the same
format, each holding the entries of later tracks (:meth:`LandmarkIndex.save_delta`
writes the entries added since the last save as one; :mod:`index.store` decides when
and records the files in the manifest). Track ids only grow, so a code's entries in
segment order are its entries in the order they were added: a lookup reads each
segment's run of each code and lays them end to end, and returns exactly the hits,
in exactly the order, of one store holding everything; counts are the sums of the
segments' run lengths. :meth:`LandmarkIndex.save` writes everything as one main file
(the merge of an LSM tree); :meth:`LandmarkIndex.merged` merges consecutive segments
without touching the others, which a background merge needs. Added entries stay in
memory, as one more segment, until saved. Removing a track whose entries are saved
folds every segment into one in memory without its entries, and the next save
writes it whole: a takedown leaves no trace of the track in any file at once.
"""

from __future__ import annotations

import math
import os
import threading
from typing import Any, Callable, Sequence, cast

import faiss
import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from refrain.index.files import array_names, map_arrays, save_arrays

__all__ = ["LandmarkIndex", "CODE_BITS", "TRACK_BITS", "mix_codes", "unmix_codes", "stable_order", "equal_runs",
           "slice_positions"]

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


def equal_runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each run of equal values starts, and each value's run: ``values[starts][run_of] == values``.

    Codes put in the store's order (:func:`stable_order` of their mixes) lie with their
    repeats, so their distinct codes are the runs' first values.

    Parameters
    ----------
    values : np.ndarray

    Returns
    -------
    starts, run_of : np.ndarray of int64
    """
    starts = np.flatnonzero(np.concatenate([[len(values) > 0], values[1:] != values[:-1]]))
    return starts, np.repeat(np.arange(len(starts)), np.diff(np.append(starts, len(values))))


def stable_order(values: np.ndarray) -> np.ndarray:
    """``np.argsort(values, kind="stable")`` of non-negative integers, several times faster.

    Each value, shifted left, and its position in the low bits make one 64-bit key, and
    one plain sort of the keys orders the values with ties in their given order: 0.4 ms
    against 2.5 for a 10 s query's 43,000 double codes (a sort every tier and proposal
    makes to ask its codes in the store's order), 1.9 against 4.6 ms for 135,000 votes
    ranked by (track, cell). Values too wide to leave room for the position are argsorted.

    Returns
    -------
    np.ndarray of int64
    """
    values = np.asarray(values)
    if len(values) == 0:
        return np.zeros(0, np.int64)
    position_bits = (len(values) - 1).bit_length()
    if int(values.min()) < 0 or int(values.max()).bit_length() + position_bits > 63:
        return np.argsort(values, kind="stable")
    keys = (values.astype(np.int64) << position_bits) | np.arange(len(values), dtype=np.int64)
    keys.sort()
    return keys & ((1 << position_bits) - 1)


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
def _put_id(rows: np.ndarray, i: _Int, value: _Int) -> None:
    """Pack ``value`` into row ``i`` of ``rows``: the inverse of :func:`_id_at`."""
    for b in range(rows.shape[1]):
        rows[i, b] = (value >> (8 * b)) & 0xFF


@numba.njit(cache=True, nogil=True)
def _unpacked(rows: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_packed`: (n, width) uint8 rows -> int64 ids."""
    ids = np.empty(rows.shape[0], np.int64)
    for i in range(rows.shape[0]):
        ids[i] = _id_at(rows, i)
    return ids


@numba.njit(cache=True, nogil=True)
def _gather_runs_into(labels: np.ndarray, rows: np.ndarray, first: np.ndarray, lengths: np.ndarray,
                      dest: np.ndarray) -> None:
    """Copy the ids of the runs ``rows[first[k]:first[k] + lengths[k]]`` to ``labels[dest[k]:]``."""
    for k in range(len(first)):
        out = dest[k]
        for i in range(first[k], first[k] + lengths[k]):
            labels[out] = _id_at(rows, i)
            out += 1


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
def _track_span(rows: np.ndarray, payload_bits: int) -> tuple[np.int64, np.int64]:
    """(smallest, largest) track id of the entries ``rows``."""
    low, high = np.int64(1) << 62, np.int64(-1)
    for i in range(rows.shape[0]):
        track = _track_at(rows, i, payload_bits)
        low, high = min(low, track), max(high, track)
    return low, high


def slice_positions(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The positions ``starts[k], ..., starts[k] + lengths[k] - 1`` of every slice, slice after slice."""
    return np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(int(lengths.sum()))


@numba.njit(cache=True, nogil=True)
def _grown(labels: np.ndarray, count: _Int) -> np.ndarray:
    """A copy of the first ``count`` values of ``labels`` in an array twice as long."""
    grown = np.empty(2 * len(labels), labels.dtype)
    grown[:count] = labels[:count]
    return grown


@numba.njit(cache=True, nogil=True)
def _bit_set(values: np.ndarray, lowest: _Int, highest: _Int) -> np.ndarray:
    """Words of a bit set holding ``values - lowest`` (each value in ``[lowest, highest]``)."""
    words = np.zeros((highest - lowest) // 64 + 1, np.uint64)
    for value in values:
        words[(value - lowest) >> 6] |= np.uint64(1) << np.uint64((value - lowest) & 63)
    return words


@numba.njit(cache=True, nogil=True)
def _holds(words: np.ndarray, bit: _Int) -> np.int64:
    """1 if ``bit`` (within the words' range) is set, else 0."""
    return np.int64((words[bit >> 6] >> np.uint64(bit & 63)) & np.uint64(1))


@numba.njit(cache=True, nogil=True)
def _track_entries(rows: np.ndarray, first: np.ndarray, lengths: np.ndarray, tracks: np.ndarray,
                   payload_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """The hits of each run on ``tracks`` (sorted): how many per code, and their ids, code after code."""
    hits_per_code = np.zeros(len(first), np.int64)
    labels, count = np.empty(1024, np.int64), 0
    for k in range(len(first)):
        low, end = first[k], first[k] + lengths[k]
        for t in range(len(tracks)):
            start = _first_of_track(rows, low, end, tracks[t], payload_bits)
            low = _first_of_track(rows, start, end, tracks[t] + 1, payload_bits)
            for i in range(start, low):
                if count == len(labels):
                    labels = _grown(labels, count)
                labels[count] = _id_at(rows, i)
                count += 1
            hits_per_code[k] += low - start
    return hits_per_code, labels[:count]


# -- the compact encoding ----------------------------------------------------------------------
#
# A compact segment's entries are one bit stream (``stream``, little-endian 64-bit words), run
# after run; an entry is [gap: g bits][payload: p bits][track: G bits, only if the gap field is
# all ones], where the gap is the entry's track minus the previous entry's in the run (the first's
# minus 0). g, G (bits of the segment's largest track) and p (bits of its largest payload) are the
# segment's, in ``layout``. Every SKIP-th entry of the segment (global position) has a skip point:
# its bit position and its track, from which a lookup can decode forward without the entries
# before it. The code table says where each code's run begins, as an entry number and a bit.
#
# The code table (version 2) files the codes in 2 ** b buckets by their top b bits and keeps of each
# code its low 32 - b bits and its run's length and escapes; 2 ** h consecutive buckets form a group,
# which knows where its codes, entries, bits and long runs begin (see :class:`_BucketTable`).

#: An integer argument of the compiled helpers: a Python int or a numpy scalar.
_Int = int | np.int64
#: Layout of a compact segment: what ``layout`` holds, in this order (version 1 files hold the first 8).
_LAYOUT_FIELDS = ("version", "skip", "gap_bits", "track_bits", "payload_bits", "min_track", "max_track",
                  "stream_bits", "bucket_bits", "group_bits")
_COMPACT_VERSION = 2
_TABLE_ARRAYS = ("low", "runs", "long_lengths", "long_escapes", "bucket_offsets", "group_codes", "group_entries",
                 "group_positions", "group_long")
_BUCKET_ARRAYS = ("layout", *_TABLE_ARRAYS, "skip_bits", "skip_tracks", "stream")
#: Version 1 (2026-12-07, read as it is, rewritten as version 2): sorted codes, run starts, run bit offsets.
_SORTED_ARRAYS = ("layout", "codes", "starts", "run_bits", "skip_bits", "skip_tracks", "stream")
#: Entries between two skip points: a restricted lookup decodes at most this many before its first hit
#: in a run; each skip point costs 12 bytes (1.5 bits per entry).
SKIP = 64
#: Most codes a bucket holds on average: a lookup compares the low bits of a bucket's codes one by one.
_BUCKET_CODES = 8
#: Codes and entries a group holds on average, at most: a lookup adds up the runs of the codes before
#: it in its group (a few dozen bytes in one or two cache lines, and each long run's figures), and each
#: group costs 24 bytes (at most 0.38 bytes per code, 0.75 bits per entry).
_GROUP_CODES, _GROUP_ENTRIES = 64, 256
#: Codes ahead whose table bytes or run a lookup loop asks the memory for (:func:`_prefetch_intrinsic`).
_AHEAD = 16
#: Longest run (and most escapes) a code's byte holds: 4 bits each (proposal tiers: 95 % of the runs).
_SHORT_RUN = 15
#: Largest bucket bits: the low bits left are at least a byte, and the offsets at most 16 M bytes.
_MOST_BUCKET_BITS = 24


@intrinsic
def _prefetch_intrinsic(typingctx, array, index):
    """Ask the memory for the cache line of ``array[index]`` without waiting for it (LLVM's prefetch).

    A lookup loop branches on what it reads (a bucket's codes compared one by one, a run's
    entries decoded until it ends), and a mispredicted branch discards the loads the
    processor had started for the next codes: each code then waits for its own cache misses
    (~55 ns a code counted at 640 catalogue hours, ~120 with its run's start). Asked for
    :data:`_AHEAD` codes early, the lines are there when the loop reaches them. Numba has no
    such call; a prefetch never faults, so an index past the end is harmless.
    """
    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        address = builder.bitcast(builder.gep(data, [args[1]]), ir.IntType(8).as_pointer())
        int32 = ir.IntType(32)
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [address.type, int32, int32, int32]), "llvm.prefetch.p0")
        # read, keep in every cache level, data
        builder.call(function, [address, ir.Constant(int32, 0), ir.Constant(int32, 3), ir.Constant(int32, 1)])
        return context.get_dummy_value()
    return types.void(array, types.int64), codegen


#: :func:`_prefetch_intrinsic` as the compiled code calls it: ``_prefetch(array, index)``.
_prefetch = cast(Callable[[np.ndarray, _Int], None], _prefetch_intrinsic)


@numba.njit(cache=True, nogil=True)
def _read_bits(words: np.ndarray, position: _Int, count: int) -> np.int64:
    """The ``count`` (< 64) bits at bit ``position`` of ``words``, low bits first.

    Without a branch (the two words are read whether or not the bits cross into the second,
    which a stream's spare last word allows): a decoding loop mispredicts nothing.
    """
    offset = np.uint64(position & 63)
    word = position >> 6
    value = (words[word] >> offset) | ((words[word + 1] << np.uint64(1)) << (np.uint64(63) - offset))
    return np.int64(value & ((np.uint64(1) << np.uint64(count)) - np.uint64(1)))


@numba.njit(cache=True, nogil=True)
def _write_bits(words: np.ndarray, position: _Int, value: _Int, count: int) -> None:
    """Write ``value`` (< 2 ** count) as ``count`` bits at bit ``position`` of ``words`` (zeros there)."""
    if count == 0:
        return
    offset = position & 63
    bits = np.uint64(value)
    words[position >> 6] |= bits << np.uint64(offset)
    if offset + count > 64:
        words[(position >> 6) + 1] |= bits >> np.uint64(64 - offset)


@numba.njit(cache=True, nogil=True)
def _read_entry(words: np.ndarray, position: _Int, previous: _Int, gap_bits: int, track_bits: int,
                value_bits: int) -> tuple[np.int64, np.int64, np.int64]:
    """(track, payload, position after) of the entry at bit ``position``; ``previous`` is the track
    of the entry before it in its run (0 for a run's first)."""
    fields = _read_bits(words, position, gap_bits + value_bits)
    escape = (np.int64(1) << gap_bits) - 1
    gap, payload = fields & escape, fields >> gap_bits
    position += gap_bits + value_bits
    if gap == escape:
        return _read_bits(words, position, track_bits), payload, np.int64(position + track_bits)
    return previous + gap, payload, np.int64(position)


@numba.njit(cache=True, nogil=True)
def _bit_length(value: _Int) -> int:
    length = 0
    while value:
        value >>= 1
        length += 1
    return length


@numba.njit(cache=True, nogil=True)
def _gap_statistics(rows: np.ndarray, starts: np.ndarray, payload_bits: int
                    ) -> tuple[np.ndarray, np.int64, np.int64, np.int64]:
    """What the encoding's widths are chosen from: how many gaps have each bit length of ``gap + 1``
    (64: a negative gap), and the smallest track, largest track and largest payload."""
    lengths = np.zeros(65, np.int64)
    low, high, payloads = np.int64(1) << 62, np.int64(-1), np.int64(0)
    mask = (np.int64(1) << payload_bits) - 1
    for r in range(len(starts) - 1):
        previous = np.int64(0)
        for i in range(starts[r], starts[r + 1]):
            entry = _id_at(rows, i)
            track = entry >> payload_bits
            gap = track - previous
            lengths[_bit_length(gap + 1) if gap >= 0 else 64] += 1
            low, high, payloads = min(low, track), max(high, track), max(payloads, entry & mask)
            previous = track
    return lengths, low, high, payloads


@numba.njit(cache=True, nogil=True)
def _encode(rows: np.ndarray, starts: np.ndarray, payload_bits: int, gap_bits: int, track_bits: int,
            value_bits: int, skip: int, words: np.ndarray, run_positions: np.ndarray, skip_bits: np.ndarray,
            skip_tracks: np.ndarray) -> None:
    """Write the entries ``rows`` (runs at ``starts``) into ``words`` (zeros), with their skip points and
    the bit where each run starts."""
    escape = (np.int64(1) << gap_bits) - 1
    mask = (np.int64(1) << payload_bits) - 1
    position = np.int64(0)
    for r in range(len(starts) - 1):
        previous = np.int64(0)
        for i in range(starts[r], starts[r + 1]):
            entry = _id_at(rows, i)
            track = entry >> payload_bits
            if i % skip == 0:
                skip_bits[i // skip], skip_tracks[i // skip] = position, track
            if i == starts[r]:
                run_positions[r] = position
            gap = track - previous
            _write_bits(words, position, gap if 0 <= gap < escape else escape, gap_bits)
            _write_bits(words, position + gap_bits, entry & mask, value_bits)
            position += gap_bits + value_bits
            if not 0 <= gap < escape:
                _write_bits(words, position, track, track_bits)
                position += track_bits
            previous = track


@numba.njit(cache=True, nogil=True)
def _decode_rows(words: np.ndarray, starts: np.ndarray, gap_bits: int, track_bits: int, value_bits: int,
                 payload_bits: int, rows: np.ndarray) -> None:
    """Decode every entry into ``rows`` (the plain layout of :func:`_packed`): the runs lie end to end."""
    position = np.int64(0)
    for r in range(len(starts) - 1):
        previous = np.int64(0)
        for i in range(starts[r], starts[r + 1]):
            track, payload, position = _read_entry(words, position, previous, gap_bits, track_bits, value_bits)
            _put_id(rows, i, (track << payload_bits) | payload)
            previous = track


@numba.njit(cache=True, nogil=True)
def _compact_gather_into(labels: np.ndarray, words: np.ndarray, positions: np.ndarray, lengths: np.ndarray,
                         dest: np.ndarray, gap_bits: int, track_bits: int, value_bits: int,
                         payload_bits: int) -> None:
    """Decode ``lengths[k]`` entries from bit ``positions[k]`` (a run's start) to ``labels[dest[k]:]``, each run's
    first words fetched :data:`_AHEAD` runs early (:func:`_prefetch_intrinsic`)."""
    for k in range(len(positions)):
        if k + _AHEAD < len(positions):
            _prefetch(words, np.int64(positions[k + _AHEAD] >> 6))
        position, previous, out = positions[k], np.int64(0), dest[k]
        for _ in range(lengths[k]):
            track, payload, position = _read_entry(words, position, previous, gap_bits, track_bits, value_bits)
            labels[out] = (track << payload_bits) | payload
            previous = track
            out += 1


@numba.njit(cache=True, nogil=True)
def _compact_track_entries(words: np.ndarray, skip_bits: np.ndarray, skip_tracks: np.ndarray, skip: int,
                           gap_bits: int, track_bits: int, value_bits: int, payload_bits: int, first: np.ndarray,
                           lengths: np.ndarray, positions: np.ndarray, tracks: np.ndarray
                           ) -> tuple[np.ndarray, np.ndarray]:
    """The hits of each run on ``tracks`` (sorted): how many per code, and their ids, code after code.

    Within a run, the search for the next candidate gallops over the run's skip points (whose
    tracks are stored) to the last one before the candidate, then decodes forward: at most
    ``skip`` entries, wherever the candidate lies in the run. A hit is written as it is
    decoded: the stream is read once.

    A run of fewer than ``skip / 2`` entries per candidate is decoded whole instead, each
    entry's track tested against a bit set of the candidates: the search would decode
    nearly every entry of it anyway, and pay for galloping on top (the pair tier at 640
    catalogue hours, ~290 candidates: 24.5 -> 19.2 ms per 10 s query, docs/scale.md step 12).
    Each run's first words are asked for :data:`_AHEAD` codes early (:func:`_prefetch_intrinsic`).
    """
    hits_per_code = np.zeros(len(first), np.int64)
    labels, count, counted = np.empty(1024, np.int64), 0, 0
    if len(tracks) == 0:
        return hits_per_code, labels[:0]
    low_track, span = tracks[0], tracks[-1] - tracks[0]
    candidate_bits = _bit_set(tracks, low_track, tracks[-1])
    decoded_whole = (skip // 2) * len(tracks)
    for k in range(len(first)):
        if k + _AHEAD < len(first):
            _prefetch(words, np.int64(positions[k + _AHEAD] >> 6))
        i, end, position, previous = first[k], first[k] + lengths[k], positions[k], np.int64(0)
        if lengths[k] <= decoded_whole:
            while len(labels) < count + lengths[k]:
                labels = _grown(labels, count)
            for _ in range(lengths[k]):
                track, payload, position = _read_entry(words, position, previous, gap_bits, track_bits, value_bits)
                previous = track
                bit = track - low_track
                if 0 <= bit <= span and _holds(candidate_bits, bit):
                    labels[count] = (track << payload_bits) | payload
                    count += 1
            hits_per_code[k] = count - counted
            counted = count
            continue
        last_skip = (end - 1) // skip
        for t in range(len(tracks)):
            target = tracks[t]
            low = (i + skip - 1) // skip  # the first skip point not behind the decoder
            if low <= last_skip and skip_tracks[low] < target:
                step = 1
                while low + step <= last_skip and skip_tracks[low + step] < target:
                    low += step
                    step *= 2
                high = min(low + step, last_skip + 1)
                while high - low > 1:
                    middle = (low + high) // 2
                    if skip_tracks[middle] < target:
                        low = middle
                    else:
                        high = middle
                _, _, position = _read_entry(words, skip_bits[low], 0, gap_bits, track_bits, value_bits)
                i, previous = low * skip + 1, np.int64(skip_tracks[low])
            while i < end:
                track, _, after = _read_entry(words, position, previous, gap_bits, track_bits, value_bits)
                if track >= target:
                    break
                i, position, previous = i + 1, after, track
            while i < end:
                track, payload, after = _read_entry(words, position, previous, gap_bits, track_bits, value_bits)
                if track != target:
                    break
                if count == len(labels):
                    labels = _grown(labels, count)
                labels[count] = (track << payload_bits) | payload
                i, position, previous, count = i + 1, after, track, count + 1
        hits_per_code[k] = count - counted
        counted = count
    return hits_per_code, labels[:count]


@numba.njit(cache=True, nogil=True)
def _bucket_slots(stored: np.ndarray, bucket_bits: int, group_bits: int, bucket_offsets: np.ndarray,
                  group_codes: np.ndarray, low: np.ndarray) -> np.ndarray:
    """Where each stored-form code lies in a :class:`_BucketTable` (its index in ``low``), -1 if absent.

    In two passes, the second asking the memory for its bytes of the codes ahead
    (:func:`_prefetch_intrinsic`): the first, each bucket's bounds, has no branch, so its
    loads overlap anyway.
    """
    n = len(stored)
    low_bits = 32 - bucket_bits
    mask = (np.int64(1) << low_bits) - 1
    at, end = np.empty(n, np.int64), np.empty(n, np.int64)
    for k in range(n):  # each code's bucket: its first code and the next bucket's
        bucket = np.int64(stored[k]) >> low_bits
        at[k] = np.int64(group_codes[bucket >> group_bits]) + np.int64(bucket_offsets[bucket])
        end[k] = np.int64(group_codes[(bucket + 1) >> group_bits]) + np.int64(bucket_offsets[bucket + 1])
    for k in range(n):  # the code among its bucket's
        if k + _AHEAD < n:
            _prefetch(low, at[k + _AHEAD])
        wanted, j = np.int64(stored[k]) & mask, at[k]
        while j < end[k] and np.int64(low[j]) < wanted:
            j += 1
        at[k] = j if j < end[k] and np.int64(low[j]) == wanted else -1
    return at


@numba.njit(cache=True, nogil=True)
def _bucket_runs(stored: np.ndarray, slots: np.ndarray, bucket_bits: int, group_bits: int, group_codes: np.ndarray,
                 group_entries: np.ndarray, group_positions: np.ndarray, group_long: np.ndarray, runs: np.ndarray,
                 long_lengths: np.ndarray, long_escapes: np.ndarray, entry_bits: int, track_bits: int,
                 with_starts: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each stored-form code's run in a segment of :class:`_BucketTable`, given its slot
    (:func:`_bucket_slots`): its length and, if ``with_starts``, where it starts (entry) and the
    bit position of its first entry; all 0 if it is absent.

    An entry takes ``entry_bits`` (gap and payload fields) and, if escaped, ``track_bits`` more:
    a run's bits follow from its length and escapes, so no entry is read. What a code's run
    needs is asked for :data:`_AHEAD` codes early.
    """
    n = len(stored)
    first, run_lengths, positions = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64)
    low_bits = 32 - bucket_bits
    for k in range(n):
        # Twice as far ahead, the code's own byte and its group's figures; then, those at hand, the
        # group's run bytes and first long run (a count needs them for a long run: a third of the
        # proposal codes found).
        if k + 2 * _AHEAD < n and slots[k + 2 * _AHEAD] >= 0:
            group = (np.int64(stored[k + 2 * _AHEAD]) >> low_bits) >> group_bits
            _prefetch(runs, slots[k + 2 * _AHEAD])
            _prefetch(group_codes, group)
            _prefetch(group_long, group)
            if with_starts:
                _prefetch(group_entries, group)
                _prefetch(group_positions, group)
        if k + _AHEAD < n and slots[k + _AHEAD] >= 0:
            group = (np.int64(stored[k + _AHEAD]) >> low_bits) >> group_bits
            if with_starts or not runs[slots[k + _AHEAD]]:
                _prefetch(runs, np.int64(group_codes[group]))
                _prefetch(long_lengths, np.int64(group_long[group]))
                if with_starts:
                    _prefetch(long_escapes, np.int64(group_long[group]))
        j = slots[k]
        if j < 0:
            continue
        if runs[j] and not with_starts:  # its length is in its byte: no sum needed
            run_lengths[k] = np.int64(runs[j] & 15)
            continue
        group = (np.int64(stored[k]) >> low_bits) >> group_bits
        # The runs before it in its group: short ones summed from their bytes without a branch (a
        # loop the compiler vectorises; long runs are 5-7 % of the proposal tiers' and branching on
        # them cost half the time), then the long ones from their own arrays.
        entries, escapes, longs = np.int64(0), np.int64(0), np.int64(0)
        for i in range(np.int64(group_codes[group]), j):
            run = np.int64(runs[i])
            entries += run & 15
            escapes += run >> 4
            longs += run == 0
        rank = np.int64(group_long[group])
        for long_run in range(rank, rank + longs):
            entries += np.int64(long_lengths[long_run])
            escapes += np.int64(long_escapes[long_run])
        rank += longs
        run_lengths[k] = np.int64(runs[j] & 15) if runs[j] else np.int64(long_lengths[rank])
        first[k] = np.int64(group_entries[group]) + entries
        positions[k] = np.int64(group_positions[group]) + entries * entry_bits + escapes * track_bits
    return first, run_lengths, positions


def _find_runs(codes: np.ndarray, starts: np.ndarray, stored: np.ndarray, order: np.ndarray | None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each stored-form code's run in a segment: (its index, where it starts, its length: 0 if absent).

    ``order`` (``np.argsort(stored)``, optional) makes the binary searches run in increasing
    order, which walks ``codes`` once: worth it when several segments are searched.
    """
    if len(codes) == 0:
        zeros = np.zeros(len(stored), np.int64)
        return zeros, zeros, zeros
    if order is None:
        at = np.searchsorted(codes, stored)
    else:
        at = np.empty(len(stored), np.int64)
        at[order] = np.searchsorted(codes, stored[order])
    at = np.minimum(at, len(codes) - 1)
    found = codes[at] == stored
    first = np.asarray(starts[at], dtype=np.int64)
    return at, first, np.where(found, np.asarray(starts[at + 1]) - first, 0).astype(np.int64)


class _Runs:
    """One segment of a store in the plain layout: its distinct codes (sorted), where each code's run
    starts, its packed ids (``id_bytes`` bytes each).

    What entries added in memory are kept as, and how segment files from before the compact
    encoding (2026-12-07) are read. Never changed once made (a change makes a new one), so a
    reader may hold one while a writer replaces it.
    """

    __slots__ = ("codes", "starts", "ids", "_tracks")

    def __init__(self, codes: np.ndarray, starts: np.ndarray, ids: np.ndarray):
        self.codes, self.starts, self.ids = codes, starts, ids
        self._tracks: tuple[int, int] | None = None

    @classmethod
    def empty(cls, width: int) -> "_Runs":
        return cls(np.zeros(0, np.uint32), np.zeros(1, np.int64), np.zeros((0, width), np.uint8))

    @classmethod
    def load(cls, path: os.PathLike, width: int) -> "_Runs":
        """Map a segment file of the plain layout (read-only).

        Raises
        ------
        ValueError
            If the file is not a landmark store of this id width (damaged or foreign).
        """
        arrays = map_arrays(path, _ARRAYS)
        codes, starts, flat_ids = arrays["codes"], arrays["starts"], arrays["ids"]
        if (codes.dtype != np.uint32 or starts.dtype not in (np.uint32, np.int64) or flat_ids.dtype != np.uint8
                or len(starts) != len(codes) + 1 or starts[0] != 0 or starts[-1] * width != len(flat_ids)):
            raise ValueError(f"inconsistent landmark store {path}")
        # Plain views of the mapped file (no copy): indexing a np.memmap makes a memmap object
        # per result, which a lookup over several segments would pay thousands of times per query.
        return cls(np.asarray(codes), np.asarray(starts), np.asarray(flat_ids).reshape(-1, width))

    def save(self, path: os.PathLike, payload_bits: int) -> None:
        """Write the segment in the compact encoding, atomically (temporary file, fsync, rename)."""
        save_arrays(path, _compact_arrays(self, payload_bits))

    @property
    def ntotal(self) -> int:
        return int(self.starts[-1])

    @property
    def distinct(self) -> int:
        """Number of distinct codes."""
        return len(self.codes)

    @property
    def nbytes(self) -> int:
        """Bytes of the segment's arrays (its file's size, less the archive's headers)."""
        return int(self.codes.nbytes + self.starts.nbytes + self.ids.nbytes)

    def find(self, stored: np.ndarray, order: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Where each stored-form code's run starts in ``ids`` and its length (0 if absent): the
        arrays the other readers take, one element per code (see :func:`_find_runs`)."""
        return _find_runs(self.codes, self.starts, stored, order)[1:]

    def run_lengths(self, stored: np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
        """How many entries each stored-form code has in the segment (see :func:`_find_runs`)."""
        return _find_runs(self.codes, self.starts, stored, order)[2]

    def locate(self, stored: np.ndarray) -> tuple[np.ndarray, None]:
        """:meth:`run_lengths`, and what :meth:`find_located` needs besides the codes (nothing here)."""
        return self.run_lengths(stored), None

    def find_located(self, stored: np.ndarray, located: np.ndarray | None) -> tuple[np.ndarray, ...]:
        """:meth:`find` of codes :meth:`locate` was asked about."""
        return self.find(stored)

    def gather_into(self, labels: np.ndarray, found: tuple[np.ndarray, ...], dest: np.ndarray,
                    payload_bits: int) -> None:
        """Copy each found run's ids to ``labels[dest[k]:]``."""
        _gather_runs_into(labels, self.ids, found[0], found[1], dest)

    def track_entries(self, found: tuple[np.ndarray, ...], tracks: np.ndarray, payload_bits: int
                      ) -> tuple[np.ndarray, np.ndarray]:
        """The found runs' hits on ``tracks`` (sorted): how many per code, and their ids, code after code."""
        return _track_entries(self.ids, found[0], found[1], tracks, payload_bits)

    def rows(self) -> np.ndarray:
        """Every entry's packed id, in entry order."""
        return self.ids

    def plain(self) -> "_Runs":
        return self

    def entry_codes(self) -> np.ndarray:
        """Every entry's stored code, in entry order."""
        return np.repeat(self.codes, np.diff(self.starts))

    def with_entries(self, new_codes: np.ndarray, new_rows: np.ndarray) -> "_Runs":
        """A segment holding these entries and, after each code's own run, the new ones in the order given."""
        if len(new_codes) == 0:
            return self
        order = np.argsort(new_codes, kind="stable")
        new_codes, new_rows = new_codes[order], new_rows[order]
        codes, starts = self.codes, np.asarray(self.starts, dtype=np.int64)
        at = np.searchsorted(codes, new_codes)
        known = at < len(codes)
        known[known] = codes[at[known]] == new_codes[known]
        # A known code's new entries go after its run; a new code's where its run will be.
        ids = np.insert(self.ids, np.where(known, starts[np.minimum(at + 1, len(codes))], starts[at]),
                        new_rows, axis=0)
        distinct, counts = np.unique(new_codes, return_counts=True)
        lengths = np.diff(starts)
        at = np.searchsorted(codes, distinct)
        fresh = (at >= len(codes)) | (codes[np.minimum(at, max(len(codes) - 1, 0))] != distinct) \
            if len(codes) else np.ones(len(distinct), dtype=bool)
        lengths = lengths.copy()
        lengths[at[~fresh]] += counts[~fresh]
        lengths = np.insert(lengths, at[fresh], counts[fresh])
        return _Runs(np.insert(codes, at[fresh], distinct[fresh]),
                     np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), ids)

    def track_span(self, payload_bits: int) -> tuple[int, int]:
        """The smallest and largest track id of the segment's entries (read once, on first use)."""
        if self._tracks is None:
            low, high = _track_span(self.ids, payload_bits) if len(self.ids) else (0, -1)
            self._tracks = (int(low), int(high))
        return self._tracks

    def entries_of(self, track_id: int, payload_bits: int) -> int:
        """How many entries ``track_id`` has in this segment."""
        return int(np.count_nonzero((_unpacked(self.ids) >> payload_bits) == track_id))

    def without_track(self, track_id: int, payload_bits: int) -> tuple["_Runs", int]:
        """This segment without ``track_id``'s entries, and how many there were."""
        kept = (_unpacked(self.ids) >> payload_bits) != track_id
        removed = int(len(kept) - kept.sum())
        if not removed:
            return self, 0
        run_of_entry = np.repeat(np.arange(len(self.codes)), np.diff(self.starts))
        lengths = np.bincount(run_of_entry[kept], minlength=len(self.codes))
        return _Runs(self.codes[lengths > 0], np.concatenate([[0], np.cumsum(lengths[lengths > 0])]).astype(np.int64),
                     self.ids[kept]), removed


def _entry_dtype(total: int) -> type[np.unsignedinteger] | type[np.signedinteger]:
    """dtype of entry numbers and counts in a segment of ``total`` entries."""
    return np.uint32 if total < 1 << 32 else np.int64


def _bucket_shape(distinct: int, entries: int) -> tuple[int, int]:
    """(bucket bits b, group bits h) of a code table of ``distinct`` codes and ``entries`` entries.

    b is the one, among those that leave at most ``_BUCKET_CODES`` codes a bucket on average,
    that makes the table smallest: each code keeps its low 32 - b bits in 1, 2 or 4 bytes and each
    bucket costs a byte. A group holds about ``_GROUP_CODES`` codes or ``_GROUP_ENTRIES`` entries,
    whichever is fewer (at least a bucket): where runs are long, the table is small beside the
    stream and short groups keep a lookup's sum short.
    """
    if not distinct:
        return 0, 0
    fewest = min(max(0, (-(-distinct // _BUCKET_CODES) - 1).bit_length()), _MOST_BUCKET_BITS)
    bucket_bits = min(range(fewest, _MOST_BUCKET_BITS + 1),
                      key=lambda bits: distinct * np.dtype(_low_dtype(bits)).itemsize + (1 << bits))
    group_codes = min(_GROUP_CODES, _GROUP_ENTRIES * distinct / entries)
    return bucket_bits, min(bucket_bits, max(0, round(math.log2(group_codes * (1 << bucket_bits) / distinct))))


def _low_dtype(bucket_bits: int) -> type[np.unsignedinteger]:
    """dtype of a code's low bits below ``bucket_bits`` bucket bits."""
    low_bits = 32 - bucket_bits
    return np.uint8 if low_bits <= 8 else np.uint16 if low_bits <= 16 else np.uint32


class _SortedTable:
    """The code table of a version-1 compact segment (2026-12-07): the sorted distinct codes, their
    runs' starts (entry numbers, plus the end) and their first entries' bits after the skip point at
    or before it, 10 bytes per code; a code is found by binary search. Read as it is; a save writes
    its segment with a :class:`_BucketTable`."""

    __slots__ = ("codes", "starts", "run_bits")

    def __init__(self, codes: np.ndarray, starts: np.ndarray, run_bits: np.ndarray):
        self.codes, self.starts, self.run_bits = codes, starts, run_bits

    @property
    def nbytes(self) -> int:
        return int(self.codes.nbytes + self.starts.nbytes + self.run_bits.nbytes)

    def find(self, stored: np.ndarray, order: np.ndarray | None, runs: "_CompactRuns"
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """See :meth:`_CompactRuns.find`."""
        at, first, lengths = _find_runs(self.codes, self.starts, stored, order)
        if len(self.codes) == 0:
            return first, lengths, first
        return first, lengths, runs.skip_bits[first // runs.skip].astype(np.int64) + self.run_bits[at]

    def run_lengths(self, stored: np.ndarray, order: np.ndarray | None, runs: "_CompactRuns") -> np.ndarray:
        return _find_runs(self.codes, self.starts, stored, order)[2]

    def locate(self, stored: np.ndarray, runs: "_CompactRuns") -> tuple[np.ndarray, None]:
        return self.run_lengths(stored, None, runs), None

    def find_located(self, stored: np.ndarray, located: np.ndarray | None, runs: "_CompactRuns"
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.find(stored, None, runs)


class _BucketTable:
    """The code table of a compact segment (version 2): codes filed by their top bits, runs by length.

    The stored codes (mixed: uniformly spread) fall in ``2 ** bucket_bits`` buckets by their top
    bits; ``2 ** group_bits`` consecutive buckets form a group. Arrays, codes in increasing order:

    ``low``             (uint8/16/32) each code's low ``32 - bucket_bits`` bits;
    ``runs``            (uint8)       each code's run: its length (low 4 bits) and how many of its
                                      entries are escapes (high 4 bits); 0 for a run longer than 15;
    ``long_lengths``    (uint16/32)   the lengths of those long runs, in code order,
    ``long_escapes``    (uint16/32)   and their escapes;
    ``bucket_offsets``  (uint8/16/32) each bucket's first code, counted from its group's first (plus
                                      a last 0: the end);
    ``group_codes``     (uint32)      each group's first code, plus the number of codes;
    ``group_entries``   (uint32)      each group's first entry, plus the number of entries;
    ``group_positions`` (uint64)      the bit where each group's first entry starts, plus the end;
    ``group_long``      (uint32)      long runs before each group, plus their number.

    (Entry numbers are int64 in a segment of ``2 ** 32`` entries or more.) A lookup reads its
    bucket's bounds and compares the low bits of its few codes; a found code's run starts at its
    group's first entry and bit plus the lengths and bits of the runs before it in the group (a run
    of n entries with e escapes takes n * (g + p) + e * G bits).
    """

    __slots__ = ("bucket_bits", "group_bits", "low", "runs", "long_lengths", "long_escapes", "bucket_offsets",
                 "group_codes", "group_entries", "group_positions", "group_long")

    def __init__(self, bucket_bits: int, group_bits: int, arrays: dict[str, np.ndarray]):
        self.bucket_bits, self.group_bits = bucket_bits, group_bits
        # Plain views of the mapped file, as in _Runs.load.
        self.low, self.runs, self.long_lengths, self.long_escapes, self.bucket_offsets, self.group_codes, \
            self.group_entries, self.group_positions, self.group_long = (np.asarray(arrays[name])
                                                                         for name in _TABLE_ARRAYS)

    @classmethod
    def build(cls, codes: np.ndarray, starts: np.ndarray, run_positions: np.ndarray, entry_bits: int,
              track_bits: int) -> "_BucketTable":
        """The table of the runs of the sorted distinct ``codes`` starting at entries ``starts`` and at
        bits ``run_positions`` (both plus the end), in a stream whose entries take ``entry_bits``
        and escapes ``track_bits`` more."""
        codes, starts = np.asarray(codes, np.uint32), np.asarray(starts, np.int64)
        run_positions = np.asarray(run_positions, np.int64)
        bucket_bits, group_bits = _bucket_shape(len(codes), int(starts[-1]))
        low_bits = 32 - bucket_bits
        bucket_first = np.searchsorted(codes.astype(np.int64) >> low_bits, np.arange((1 << bucket_bits) + 1))
        group_codes = bucket_first[::1 << group_bits]
        offsets = bucket_first - group_codes[np.arange(len(bucket_first)) >> group_bits]
        lengths = np.diff(starts)
        escapes = (np.diff(run_positions) - lengths * entry_bits) // track_bits
        long = lengths > _SHORT_RUN
        long_before = np.concatenate([[0], np.cumsum(long)])
        long_dtype = np.min_scalar_type(max(1 << 8, int(lengths.max(initial=0))))
        return cls(bucket_bits, group_bits, {
            "low": (codes & np.uint32((1 << low_bits) - 1)).astype(_low_dtype(bucket_bits)),
            "runs": np.where(long, 0, lengths | escapes << 4).astype(np.uint8),
            "long_lengths": lengths[long].astype(long_dtype), "long_escapes": escapes[long].astype(long_dtype),
            "bucket_offsets": offsets.astype(np.min_scalar_type(int(offsets.max()))),
            "group_codes": group_codes.astype(np.uint32),
            "group_entries": starts[group_codes].astype(_entry_dtype(int(starts[-1]))),
            "group_positions": run_positions[group_codes].astype(np.uint64),
            "group_long": long_before[group_codes].astype(np.uint32)})

    def arrays(self) -> dict[str, np.ndarray]:
        """The table's arrays, as a segment file holds them."""
        return {name: getattr(self, name) for name in _TABLE_ARRAYS}

    @property
    def nbytes(self) -> int:
        return sum(int(array.nbytes) for array in self.arrays().values())

    @property
    def codes(self) -> np.ndarray:
        """Every code (uint32, increasing), decoded: a copy in memory."""
        bucket_first = (self.group_codes[np.arange(len(self.bucket_offsets)) >> self.group_bits].astype(np.int64)
                        + self.bucket_offsets)
        buckets = np.repeat(np.arange(len(bucket_first) - 1, dtype=np.int64), np.diff(bucket_first))
        return ((buckets << (32 - self.bucket_bits)) | self.low).astype(np.uint32)

    @property
    def starts(self) -> np.ndarray:
        """Where each code's run starts (int64), plus the end, decoded: a copy in memory."""
        lengths = (self.runs & 15).astype(np.int64)
        lengths[self.runs == 0] = self.long_lengths
        return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)

    def find(self, stored: np.ndarray, order: np.ndarray | None, runs: "_CompactRuns"
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """See :meth:`_CompactRuns.find` (``order`` is not needed: no search walks the codes)."""
        return self.find_located(stored, None, runs)

    def run_lengths(self, stored: np.ndarray, order: np.ndarray | None, runs: "_CompactRuns") -> np.ndarray:
        return self.locate(stored, runs)[0]

    def locate(self, stored: np.ndarray, runs: "_CompactRuns") -> tuple[np.ndarray, np.ndarray]:
        """See :meth:`_CompactRuns.locate`: the codes' slots in the table are what a later find needs."""
        slots = self._slots(stored)
        return self._runs(stored, slots, runs, False)[1], slots

    def find_located(self, stored: np.ndarray, slots: np.ndarray | None, runs: "_CompactRuns"
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`find` of codes whose slots :meth:`locate` gave."""
        return self._runs(stored, self._slots(stored) if slots is None else slots, runs, True)

    def _slots(self, stored: np.ndarray) -> np.ndarray:
        return _bucket_slots(stored, self.bucket_bits, self.group_bits, self.bucket_offsets, self.group_codes,
                             self.low)

    def _runs(self, stored: np.ndarray, slots: np.ndarray, runs: "_CompactRuns", with_starts: bool
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return _bucket_runs(stored, slots, self.bucket_bits, self.group_bits, self.group_codes, self.group_entries,
                            self.group_positions, self.group_long, self.runs, self.long_lengths, self.long_escapes,
                            runs.gap_bits + runs.value_bits, runs.track_bits, with_starts)


def _compact_arrays(runs: _Runs, payload_bits: int) -> dict[str, np.ndarray]:
    """The arrays of a compact segment file holding the entries of ``runs`` (see the module docstring).

    The gap field's width is the one that makes the stream shortest: each gap that does not
    fit costs the track's full width after the field.
    """
    starts = np.asarray(runs.starts, dtype=np.int64)
    n = int(starts[-1])
    lengths, low, high, payloads = _gap_statistics(runs.ids, starts, payload_bits) if n else (
        np.zeros(65, np.int64), 0, -1, 0)
    track_bits, value_bits = max(1, int(high).bit_length()), int(payloads).bit_length()
    escapes = lengths[::-1].cumsum()[::-1]  # escapes[b]: gaps whose gap + 1 has b bits or more
    cost = [n * g + int(escapes[g + 1]) * track_bits for g in range(track_bits + 1)]
    gap_bits = int(np.argmin(cost))
    total_bits = n * (gap_bits + value_bits) + int(escapes[gap_bits + 1]) * track_bits
    words = np.zeros(total_bits // 64 + 2, np.uint64)  # a spare word: a read may touch the one after
    skip_bits = np.zeros(-(-n // SKIP), np.uint64)
    skip_tracks = np.zeros(len(skip_bits), np.uint32)
    run_positions = np.full(len(runs.codes) + 1, total_bits, np.int64)
    _encode(runs.ids, starts, payload_bits, gap_bits, track_bits, value_bits, SKIP, words, run_positions, skip_bits,
            skip_tracks)
    layout = dict(skip=SKIP, gap_bits=gap_bits, track_bits=track_bits, payload_bits=value_bits,
                  min_track=int(low) if n else 0, max_track=int(high), stream_bits=total_bits)
    table = _BucketTable.build(runs.codes, starts, run_positions, gap_bits + value_bits, track_bits)
    return _CompactRuns.file_arrays(layout, table, skip_bits, skip_tracks, words)


class _CompactRuns:
    """One saved segment in the compact encoding (see the module docstring), memory-mapped.

    Answers every lookup as the plain segment of the same entries would, in the same order.
    Its code table is a :class:`_BucketTable`, or the :class:`_SortedTable` of a version-1 file.
    """

    __slots__ = ("table", "skip_bits", "skip_tracks", "stream", "skip", "gap_bits", "track_bits", "value_bits",
                 "_span", "_stream_bits", "_width", "_payload")

    def __init__(self, layout: dict[str, int], table: _BucketTable | _SortedTable, arrays: dict[str, np.ndarray],
                 payload_bits: int):
        self.table = table
        self.skip, self.gap_bits, self.track_bits = layout["skip"], layout["gap_bits"], layout["track_bits"]
        self.value_bits = layout["payload_bits"]
        self._span = (layout["min_track"], layout["max_track"])
        self._stream_bits = layout["stream_bits"]
        # The store's payload width: where the track starts in a plain id, and its bytes.
        self._payload, self._width = payload_bits, id_bytes(payload_bits)
        # Plain views of the mapped file, as in _Runs.load.
        self.stream = np.asarray(arrays["stream"])
        self.skip_bits, self.skip_tracks = np.asarray(arrays["skip_bits"]), np.asarray(arrays["skip_tracks"])

    @classmethod
    def load(cls, path: os.PathLike, payload_bits: int) -> "_CompactRuns":
        """Map a compact segment file (read-only), of either code table.

        Raises
        ------
        ValueError
            If the file is not a compact landmark store whose payloads fit ``payload_bits``.
        """
        table: _BucketTable | _SortedTable
        fields: tuple[str, ...]
        if "codes" in array_names(path):
            arrays = map_arrays(path, _SORTED_ARRAYS)
            codes, starts = arrays["codes"], arrays["starts"]
            fields, version = _LAYOUT_FIELDS[:8], 1
            consistent = (codes.dtype == np.uint32 and starts.dtype in (np.uint32, np.int64)
                          and len(starts) == len(codes) + 1 and len(arrays["run_bits"]) == len(codes)
                          and starts[0] == 0)
            table = _SortedTable(np.asarray(codes), np.asarray(starts), np.asarray(arrays["run_bits"]))
        else:
            arrays = map_arrays(path, _BUCKET_ARRAYS)
            fields, version = _LAYOUT_FIELDS, _COMPACT_VERSION
            consistent = (len(arrays["layout"]) == len(fields)
                          and 0 <= arrays["layout"][9] <= arrays["layout"][8] <= _MOST_BUCKET_BITS)
            if consistent:
                table = _BucketTable(int(arrays["layout"][8]), int(arrays["layout"][9]), arrays)
                groups = (1 << (table.bucket_bits - table.group_bits)) + 1
                consistent = (len(table.bucket_offsets) == (1 << table.bucket_bits) + 1
                              and len(table.group_codes) == len(table.group_entries) == len(table.group_long) == groups
                              and table.group_codes[0] == table.group_entries[0] == table.group_long[0] == 0
                              and len(table.low) == len(table.runs) == table.group_codes[-1]
                              and len(table.long_lengths) == len(table.long_escapes) == table.group_long[-1]
                              and len(table.group_positions) == groups
                              and table.group_positions[-1] == arrays["layout"][7]
                              and table.low.dtype == _low_dtype(table.bucket_bits))
        layout = arrays["layout"]
        if (not consistent or len(layout) != len(fields) or layout[0] != version
                or arrays["stream"].dtype != np.uint64 or len(arrays["stream"]) != layout[7] // 64 + 2
                or (len(arrays["skip_bits"]) and arrays["skip_bits"][-1] > layout[7])
                or len(arrays["skip_tracks"]) != len(arrays["skip_bits"])
                or layout[4] > payload_bits or layout[3] > TRACK_BITS):
            raise ValueError(f"inconsistent landmark store {path}")
        segment = cls(dict(zip(fields, (int(value) for value in layout))), table, arrays, payload_bits)
        if len(arrays["skip_bits"]) != -(-segment.ntotal // segment.skip):
            raise ValueError(f"inconsistent landmark store {path}")
        return segment

    @staticmethod
    def file_arrays(layout: dict[str, int], table: _BucketTable, skip_bits: np.ndarray, skip_tracks: np.ndarray,
                    stream: np.ndarray) -> dict[str, np.ndarray]:
        """The arrays of a segment file (version 2) of this stream and code table."""
        layout = dict(layout, version=_COMPACT_VERSION, bucket_bits=table.bucket_bits, group_bits=table.group_bits)
        return {"layout": np.array([layout[field] for field in _LAYOUT_FIELDS], np.int64), **table.arrays(),
                "skip_bits": skip_bits, "skip_tracks": skip_tracks, "stream": stream}

    def save(self, path: os.PathLike, payload_bits: int) -> None:
        """Write the segment atomically; a version-1 file's stream with a new code table."""
        table = self.table
        if isinstance(table, _SortedTable):
            starts = np.asarray(table.starts, np.int64)
            run_positions = np.append(self.skip_bits[starts[:-1] // self.skip].astype(np.int64) + table.run_bits,
                                      self._stream_bits)
            table = _BucketTable.build(table.codes, starts, run_positions, self.gap_bits + self.value_bits,
                                       self.track_bits)
        layout = dict(skip=self.skip, gap_bits=self.gap_bits, track_bits=self.track_bits, payload_bits=self.value_bits,
                      min_track=self._span[0], max_track=self._span[1], stream_bits=self._stream_bits)
        save_arrays(path, self.file_arrays(layout, table, self.skip_bits, self.skip_tracks, self.stream))

    @property
    def encoding(self) -> str:
        """``"compact"``, or ``"compact-v1"`` for a file with a version-1 code table."""
        return "compact" if isinstance(self.table, _BucketTable) else "compact-v1"

    @property
    def codes(self) -> np.ndarray:
        """The distinct codes, increasing (decoded from a version-2 table: a copy)."""
        return self.table.codes

    @property
    def starts(self) -> np.ndarray:
        """Where each code's run starts, plus the end (decoded from a version-2 table: a copy)."""
        return self.table.starts

    @property
    def ntotal(self) -> int:
        table = self.table
        return int(table.group_entries[-1] if isinstance(table, _BucketTable) else table.starts[-1])

    @property
    def distinct(self) -> int:
        table = self.table
        return int(table.group_codes[-1] if isinstance(table, _BucketTable) else len(table.codes))

    @property
    def nbytes(self) -> int:
        """Bytes of the segment's arrays (its file's size, less the archive's headers)."""
        return int(self.table.nbytes + self.skip_bits.nbytes + self.skip_tracks.nbytes + self.stream.nbytes)

    def widths(self) -> tuple[int, int, int]:
        """(gap, track, payload) field widths of the stream's entries."""
        return self.gap_bits, self.track_bits, self.value_bits

    def find(self, stored: np.ndarray, order: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Where each stored-form code's run starts (entry), its length (0 if absent), and the bit
        position of its first entry in ``stream``."""
        return self.table.find(stored, order, self)

    def run_lengths(self, stored: np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
        return self.table.run_lengths(stored, order, self)

    def locate(self, stored: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`run_lengths`, and what :meth:`find_located` needs besides the codes to find their runs
        without searching the table again (a version-2 table: each code's slot in it)."""
        return self.table.locate(stored, self)

    def find_located(self, stored: np.ndarray, located: np.ndarray | None) -> tuple[np.ndarray, ...]:
        """:meth:`find` of codes :meth:`locate` gave ``located`` for (the same codes, or a subset of both)."""
        return self.table.find_located(stored, located, self)

    def gather_into(self, labels: np.ndarray, found: tuple[np.ndarray, ...], dest: np.ndarray,
                    payload_bits: int) -> None:
        _, lengths, positions = found
        _compact_gather_into(labels, self.stream, positions, lengths, dest, *self.widths(), payload_bits)

    def track_entries(self, found: tuple[np.ndarray, ...], tracks: np.ndarray, payload_bits: int
                      ) -> tuple[np.ndarray, np.ndarray]:
        first, lengths, positions = found
        return _compact_track_entries(self.stream, self.skip_bits, self.skip_tracks, self.skip, *self.widths(),
                                      payload_bits, first, lengths, positions, tracks)

    def rows(self) -> np.ndarray:
        """Every entry's id in the plain layout (decoded: a copy in memory)."""
        starts = self.starts
        rows = np.empty((int(starts[-1]), self._width), np.uint8)
        _decode_rows(self.stream, np.asarray(starts, np.int64), *self.widths(), self._payload, rows)
        return rows

    def plain(self) -> _Runs:
        """The same entries in the plain layout, in memory."""
        return _Runs(self.codes, self.starts, self.rows())

    def entry_codes(self) -> np.ndarray:
        return np.repeat(self.codes, np.diff(self.starts))

    def with_entries(self, new_codes: np.ndarray, new_rows: np.ndarray) -> _Runs:
        return self.plain().with_entries(new_codes, new_rows)

    def track_span(self, payload_bits: int) -> tuple[int, int]:
        return self._span if self.ntotal else (0, -1)

    def entries_of(self, track_id: int, payload_bits: int) -> int:
        low, high = self.track_span(payload_bits)
        return self.plain().entries_of(track_id, payload_bits) if low <= track_id <= high else 0

    def without_track(self, track_id: int, payload_bits: int) -> tuple["_Runs | _CompactRuns", int]:
        if not self.entries_of(track_id, payload_bits):
            return self, 0
        return self.plain().without_track(track_id, payload_bits)


# -- the track-major layout ------------------------------------------------------------------

#: Arrays a track-major file holds beside its compact runs: the code table of the code-major view.
_COUNT_ARRAYS = ("counted_codes", "code_counts")


@numba.njit(cache=True, nogil=True)
def _scatter_by_track(words: np.ndarray, starts: np.ndarray, gap_bits: int, track_bits: int, value_bits: int,
                      run_keys: np.ndarray, by_track: bool, payload_bits: int, slot: np.ndarray, rows: np.ndarray,
                      code_counts: np.ndarray, counting: bool) -> None:
    """One pass over a compact segment's entries: count them per track (``counting``), or place each
    one's id ``code << payload_bits | payload`` in ``rows`` at its track's next ``slot`` and count its code.

    ``run_keys`` holds each run's raw code (a code-major segment) or track (``by_track``).
    """
    position = np.int64(0)
    for r in range(len(starts) - 1):
        previous = np.int64(0)
        for _ in range(starts[r], starts[r + 1]):
            field, payload, position = _read_entry(words, position, previous, gap_bits, track_bits, value_bits)
            previous = field
            track, code = (run_keys[r], field) if by_track else (field, run_keys[r])
            if counting:
                slot[track] += 1
                continue
            _put_id(rows, slot[track], (code << payload_bits) | payload)
            slot[track] += 1
            code_counts[code] += 1


@numba.njit(cache=True, nogil=True)
def _scatter_ids(tracks: np.ndarray, codes: np.ndarray, payloads: np.ndarray, payload_bits: int,
                 slot: np.ndarray, rows: np.ndarray, code_counts: np.ndarray) -> None:
    """:func:`_scatter_by_track`'s placing pass for entries given as columns (a plain segment)."""
    for i in range(len(tracks)):
        _put_id(rows, slot[tracks[i]], (np.int64(codes[i]) << payload_bits) | payloads[i])
        slot[tracks[i]] += 1
        code_counts[codes[i]] += 1


@numba.njit(cache=True, nogil=True)
def _sort_runs_by_code(rows: np.ndarray, starts: np.ndarray, payload_bits: int) -> None:
    """Sort each run's packed ids by code (their bits above ``payload_bits``), ties in their order."""
    for run in range(len(starts) - 1):
        low, high = starts[run], starts[run + 1]
        if high - low < 2:
            continue
        ids = np.empty(high - low, np.int64)
        keys = np.empty(high - low, np.int64)
        for k in range(high - low):
            ids[k] = _id_at(rows, low + k)
            keys[k] = ((ids[k] >> payload_bits) << 32) | k
        keys.sort()
        for k in range(high - low):
            _put_id(rows, low + k, ids[keys[k] & 0xFFFFFFFF])


@numba.njit(cache=True, nogil=True)
def _decode_columns(words: np.ndarray, starts: np.ndarray, gap_bits: int, track_bits: int, value_bits: int,
                    run_keys: np.ndarray, by_track: bool, tracks: np.ndarray, codes: np.ndarray,
                    payloads: np.ndarray, offset: int) -> None:
    """Decode a compact segment's entries into the columns from ``offset`` on.

    ``run_keys`` holds each run's raw code (a code-major segment, whose entries' track field
    holds tracks) or track (``by_track``: a track-major one, whose track field holds codes).
    """
    position = np.int64(0)
    for r in range(len(starts) - 1):
        previous = np.int64(0)
        for i in range(starts[r], starts[r + 1]):
            field, payload, position = _read_entry(words, position, previous, gap_bits, track_bits, value_bits)
            at = offset + i
            if by_track:
                tracks[at], codes[at] = run_keys[r], field
            else:
                tracks[at], codes[at] = field, run_keys[r]
            payloads[at] = payload
            previous = field


@numba.njit(cache=True, nogil=True)
def _entries_with_codes(words: np.ndarray, gap_bits: int, track_bits: int, value_bits: int, payload_bits: int,
                        lengths: np.ndarray, positions: np.ndarray, codes: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
    """The entries of track-major runs whose code is one of ``codes`` (non-negative).

    Each run is decoded once, start to end, and each entry tested against a bit set of
    ``codes`` (a 10 s query's ~8,000 triplet codes: 256 KB, in cache): the codes fall every few
    entries of a candidate's run, so skipping ahead would save nothing, and a walk
    through the sorted codes beside the run costs a mispredicted branch or two per
    entry (6x the decoding, measured). Every entry is written, and kept only if wanted.

    Returns
    -------
    hits_per_run : np.ndarray of int64
    hits : np.ndarray of int64
        ``code << payload_bits | payload`` of each hit, run after run, by code within a run.
    """
    if len(codes) == 0:
        return np.zeros(len(lengths), np.int64), np.zeros(0, np.int64)
    largest = np.int64(codes.max())
    wanted = _bit_set(codes, 0, largest)
    hits_per_run = np.zeros(len(lengths), np.int64)
    # About a tenth of a candidate's entries are hits (a lookup of every track reads the whole file);
    # room for a whole run is made before it, so that the loop over its entries has no test but the code's.
    hits = np.empty(lengths.sum() // 8 + 1024, np.int64)
    count = np.int64(0)
    for run in range(len(lengths)):
        while count + lengths[run] >= len(hits):
            hits = _grown(hits, count)
        position, previous, counted = positions[run], np.int64(0), count
        for _ in range(lengths[run]):
            code, payload, position = _read_entry(words, position, previous, gap_bits, track_bits, value_bits)
            previous = code
            hits[count] = (code << payload_bits) | payload
            inside = code if code < largest else largest  # codes are never negative
            count += _holds(wanted, inside) * (code <= largest)
        hits_per_run[run] = count - counted
    return hits_per_run, hits[:count]


@numba.njit(cache=True, nogil=True)
def _set_bits(word: np.uint64) -> np.int64:
    """How many bits of ``word`` are set (a popcount by halves, quarters, bytes)."""
    word = word - ((word >> np.uint64(1)) & np.uint64(0x5555555555555555))
    word = (word & np.uint64(0x3333333333333333)) + ((word >> np.uint64(2)) & np.uint64(0x3333333333333333))
    word = (word + (word >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return np.int64((word * np.uint64(0x0101010101010101)) >> np.uint64(56))


@numba.njit(cache=True, nogil=True)
def _regrouped_by_code(hits_per_run: np.ndarray, hits: np.ndarray, tracks: np.ndarray, distinct: np.ndarray,
                       slot_of: np.ndarray, payload_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """A track-major lookup's hits, code after code: how many per code, and their ids.

    ``hits`` holds each run's hits (``code << payload_bits | payload``, by code within a
    run), run after run, one run per track of ``tracks`` (increasing); ``distinct`` the
    codes asked (increasing), code ``distinct[k]`` laid out ``slot_of[k]``-th. A code's hits
    come out by track, as in its code-major run. A hit's code is ranked among ``distinct``
    by a bit set of them and the set bits before each word: a walk along ``distinct`` per
    run cost a step per code asked (~11,000) for each of the 64 candidates.
    """
    mask = (np.int64(1) << payload_bits) - 1
    counts = np.zeros(len(distinct), np.int64)
    labels = np.empty(len(hits), np.int64)
    if len(hits) == 0:
        return counts, labels
    words = _bit_set(distinct, 0, distinct[-1])
    before = np.empty(len(words), np.int64)
    ranked = np.int64(0)
    for w in range(len(words)):
        before[w] = ranked
        ranked += _set_bits(words[w])
    slot_of_hit = np.empty(len(hits), np.int64)
    for at in range(len(hits)):
        code = hits[at] >> payload_bits
        below = (np.uint64(1) << np.uint64(code & 63)) - np.uint64(1)
        slot = slot_of[before[code >> 6] + _set_bits(words[code >> 6] & below)]
        slot_of_hit[at] = slot
        counts[slot] += 1
    fill = np.empty(len(distinct), np.int64)
    total = 0
    for slot in range(len(distinct)):
        fill[slot] = total
        total += counts[slot]
    at = 0
    for run in range(len(hits_per_run)):
        track = np.int64(tracks[run])
        for _ in range(hits_per_run[run]):
            slot = slot_of_hit[at]
            labels[fill[slot]] = (track << payload_bits) | (hits[at] & mask)
            fill[slot] += 1
            at += 1
    return counts, labels


def _fill_columns(segment: "_Segment", payload_bits: int, tracks: np.ndarray, codes: np.ndarray,
                  payloads: np.ndarray, offset: int) -> None:
    """Write a segment's entries, as (track, raw code, payload), to the columns from ``offset`` on.

    A (code, track)'s entries keep their store order. Compact files are decoded straight
    into the columns: a 640-hour triplet tier holds 267 million entries.
    """
    runs = segment.runs if isinstance(segment, _TrackMajorRuns) else segment
    if isinstance(runs, _CompactRuns):
        by_track = isinstance(segment, _TrackMajorRuns)
        keys = unmix_codes(runs.codes).astype(np.int64)
        _decode_columns(runs.stream, np.asarray(runs.starts, np.int64), *runs.widths(), keys, by_track,
                        tracks, codes, payloads, offset)
        return
    ids = _unpacked(runs.rows())
    end = offset + len(ids)
    tracks[offset:end], payloads[offset:end] = ids >> payload_bits, ids & ((1 << payload_bits) - 1)
    codes[offset:end] = unmix_codes(runs.entry_codes())


def _largest_code(segment: "_Segment") -> int:
    """The largest raw code a segment holds (-1 if none), without decoding its entries."""
    if isinstance(segment, _TrackMajorRuns):
        return segment.runs.track_span(0)[1]
    return int(unmix_codes(segment.codes).max()) if segment.distinct else -1


def _scatter(segment: "_Segment", payload_bits: int, slot: np.ndarray, rows: np.ndarray, code_counts: np.ndarray,
             counting: bool) -> None:
    """:func:`_scatter_by_track` over any segment: compact files decoded in place, plain ones unpacked."""
    runs = segment.runs if isinstance(segment, _TrackMajorRuns) else segment
    if isinstance(runs, _CompactRuns):
        _scatter_by_track(runs.stream, np.asarray(runs.starts, np.int64), *runs.widths(),
                          unmix_codes(runs.codes).astype(np.int64), isinstance(segment, _TrackMajorRuns),
                          payload_bits, slot, rows, code_counts, counting)
        return
    ids = _unpacked(runs.rows())
    tracks = ids >> payload_bits
    if counting:
        slot += np.bincount(tracks, minlength=len(slot))
        return
    _scatter_ids(tracks, unmix_codes(runs.entry_codes()).astype(np.int64), ids & ((1 << payload_bits) - 1),
                 payload_bits, slot, rows, code_counts)


def _track_major_arrays(segments: tuple["_Segment", ...], payload_bits: int) -> dict[str, np.ndarray]:
    """The arrays of a track-major file holding the entries of consecutive ``segments`` (mixed codes).

    Each track's entries form one run of the compact encoding, keyed by the track's mixed id,
    its entries sorted by raw code (the gap field then holds code steps) with the payload as
    value; beside it the counts of the code-major view. Two passes over the entries: one
    counts them per track, the other places each at its track's next slot of the packed ids
    (a (code, track)'s entries keep their order); each track's are then sorted by code.
    Memory: the packed ids and the compact stream (a 640-hour triplet tier of 267 million
    entries: 2.1 and 1.3 GB).
    """
    total = sum(segment.ntotal for segment in segments)
    largest_track = max((segment.track_span(payload_bits)[1] for segment in segments), default=-1)
    largest_code = max((_largest_code(segment) for segment in segments), default=-1)
    if largest_code >= 1 << TRACK_BITS:
        raise ValueError(f"a track-major store needs codes below 2**{TRACK_BITS}")
    per_track = np.zeros(largest_track + 1, np.int64)
    rows = np.empty((total, id_bytes(payload_bits)), np.uint8)
    code_counts = np.zeros(largest_code + 1, np.int64)
    for segment in segments:
        _scatter(segment, payload_bits, per_track, rows, code_counts, counting=True)
    present = np.flatnonzero(per_track)
    keys = mix_codes(present.astype(np.uint32))
    by_key = np.argsort(keys)
    starts = np.concatenate([[0], np.cumsum(per_track[present[by_key]])]).astype(np.int64)
    slot = np.zeros(len(per_track), np.int64)
    slot[present[by_key]] = starts[:-1]
    for segment in segments:
        _scatter(segment, payload_bits, slot, rows, code_counts, counting=False)
    _sort_runs_by_code(rows, starts, payload_bits)
    used = np.flatnonzero(code_counts)
    counted = mix_codes(used.astype(np.uint32))
    by_stored = np.argsort(counted)
    return {**_compact_arrays(_Runs(keys[by_key], starts, rows), payload_bits), "counted_codes": counted[by_stored],
            "code_counts": code_counts[used[by_stored]].astype(_entry_dtype(total))}


class _TrackMajorRuns:
    """One saved segment in the track-major layout: each track's entries together, sorted by code.

    The same entries as a code-major segment, filed the other way round: a run per track (keyed
    by its mixed id in a compact segment whose "tracks" are raw codes), and the entry count of
    every code. A lookup restricted to a few candidate tracks reads each candidate's run
    once, start to end, merging it with the query's sorted codes: its cost is the
    candidates' entries, whatever the catalogue's size, where a code-major lookup jumps
    into every code's run for every candidate. A lookup of every track reads every entry.
    Answers every lookup with the hits, in the order, of the code-major segment.
    """

    __slots__ = ("runs", "counted_codes", "code_counts", "_tracks")

    def __init__(self, runs: _CompactRuns, counted_codes: np.ndarray, code_counts: np.ndarray):
        self.runs, self.counted_codes, self.code_counts = runs, counted_codes, code_counts
        self._tracks = np.sort(unmix_codes(runs.codes).astype(np.int64))

    @classmethod
    def load(cls, path: os.PathLike, payload_bits: int) -> "_TrackMajorRuns":
        """Map a track-major segment file (read-only).

        Raises
        ------
        ValueError
            If the file is not a track-major landmark store whose payloads fit ``payload_bits``.
        """
        runs = _CompactRuns.load(path, payload_bits)
        arrays = map_arrays(path, _COUNT_ARRAYS)
        counted_codes, code_counts = np.asarray(arrays["counted_codes"]), np.asarray(arrays["code_counts"])
        if (counted_codes.dtype != np.uint32 or len(code_counts) != len(counted_codes)
                or int(code_counts.sum(dtype=np.int64)) != runs.ntotal):
            raise ValueError(f"inconsistent landmark store {path}")
        return cls(runs, counted_codes, code_counts)

    def save(self, path: os.PathLike, payload_bits: int) -> None:
        """Write the segment in the compact encoding (code-major), as every segment's ``save`` does."""
        self.plain().save(path, payload_bits)

    @property
    def encoding(self) -> str:
        return "track-major"

    @property
    def codes(self) -> np.ndarray:
        """The distinct stored codes, increasing (of the code-major view)."""
        return self.counted_codes

    @property
    def starts(self) -> np.ndarray:
        """Where each code's run would start in the code-major view, plus the end."""
        return np.concatenate([[0], np.cumsum(self.code_counts, dtype=np.int64)])

    @property
    def ntotal(self) -> int:
        return self.runs.ntotal

    @property
    def distinct(self) -> int:
        return len(self.counted_codes)

    @property
    def nbytes(self) -> int:
        return int(self.runs.nbytes + self.counted_codes.nbytes + self.code_counts.nbytes)

    def find(self, stored: np.ndarray, order: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The raw codes of ``stored`` and how many entries each has: what the lookups below take."""
        return unmix_codes(stored).astype(np.int64), self.run_lengths(stored)

    def run_lengths(self, stored: np.ndarray, order: np.ndarray | None = None) -> np.ndarray:
        at = np.minimum(np.searchsorted(self.counted_codes, stored), max(len(self.counted_codes) - 1, 0))
        if not len(self.counted_codes):
            return np.zeros(len(stored), np.int64)
        return np.where(self.counted_codes[at] == stored, self.code_counts[at], 0).astype(np.int64)

    def locate(self, stored: np.ndarray) -> tuple[np.ndarray, None]:
        """:meth:`run_lengths`, and what :meth:`find_located` needs besides the codes (nothing here)."""
        return self.run_lengths(stored), None

    def find_located(self, stored: np.ndarray, located: np.ndarray | None) -> tuple[np.ndarray, ...]:
        """:meth:`find` of codes :meth:`locate` was asked about."""
        return self.find(stored)

    def track_entries(self, found: tuple[np.ndarray, ...], tracks: np.ndarray, payload_bits: int
                      ) -> tuple[np.ndarray, np.ndarray]:
        """The hits of the found codes on ``tracks`` (sorted): how many per code, and their ids, code after code."""
        codes = found[0]
        distinct, code_of = np.unique(codes, return_inverse=True)
        tracks = np.asarray(tracks, np.int64)
        _, lengths, positions = self.runs.find(mix_codes(tracks.astype(np.uint32)))
        hits_per_run, hits = _entries_with_codes(self.runs.stream, *self.runs.widths(), payload_bits, lengths,
                                                 positions, distinct)
        if len(distinct) == len(codes):  # each asked once: laid out in the order asked
            slot_of = np.empty(len(codes), np.int64)
            slot_of[code_of] = np.arange(len(codes))
            return _regrouped_by_code(hits_per_run, hits, tracks, distinct, slot_of, payload_bits)
        per_distinct, labels = _regrouped_by_code(hits_per_run, hits, tracks, distinct, np.arange(len(distinct)),
                                                  payload_bits)
        # Codes asked more than once: each gets its distinct code's slice.
        hits_per_code = per_distinct[code_of]
        source = np.cumsum(per_distinct) - per_distinct
        return hits_per_code, labels[slice_positions(source[code_of], hits_per_code)]

    def gather_into(self, labels: np.ndarray, found: tuple[np.ndarray, ...], dest: np.ndarray,
                    payload_bits: int) -> None:
        """Write each found code's hits on every track to ``labels[dest[k]:]``."""
        hits_per_code, hits = self.track_entries(found, self._tracks, payload_bits)
        labels[slice_positions(dest, hits_per_code)] = hits

    def plain(self) -> _Runs:
        """The same entries in the plain, code-major layout, in memory."""
        n = self.ntotal
        tracks, codes, payloads = np.empty(n, np.int32), np.empty(n, np.int32), np.empty(n, np.int64)
        _fill_columns(self, self.runs._payload, tracks, codes, payloads, 0)
        tracks = tracks.astype(np.int64)
        stored = mix_codes(codes.astype(np.uint32))
        # By stored code, then track; a (code, track)'s entries keep their order.
        order = np.lexsort((np.arange(len(tracks)), tracks, stored))
        ids = (tracks[order] << self.runs._payload) | payloads[order]
        return _Runs(self.counted_codes, self.starts, _packed(ids, id_bytes(self.runs._payload)))

    def rows(self) -> np.ndarray:
        return self.plain().ids

    def entry_codes(self) -> np.ndarray:
        return np.repeat(self.counted_codes, self.code_counts)

    def with_entries(self, new_codes: np.ndarray, new_rows: np.ndarray) -> _Runs:
        return self.plain().with_entries(new_codes, new_rows)

    def track_span(self, payload_bits: int) -> tuple[int, int]:
        return (int(self._tracks[0]), int(self._tracks[-1])) if len(self._tracks) else (0, -1)

    def entries_of(self, track_id: int, payload_bits: int) -> int:
        return int(self.runs.run_lengths(mix_codes(np.array([track_id], np.uint32)))[0])

    def track_run(self, track_id: int) -> tuple[np.ndarray, np.ndarray]:
        """One track's (raw codes, payloads), by code, a code's entries in their store order."""
        payload_bits = self.runs._payload
        _, lengths, positions = self.runs.find(mix_codes(np.array([track_id], np.uint32)))
        ids = np.empty(int(lengths[0]), np.int64)
        _compact_gather_into(ids, self.runs.stream, positions, lengths, np.zeros(1, np.int64), *self.runs.widths(),
                             payload_bits)
        return (ids >> payload_bits).astype(np.uint32), ids & ((1 << payload_bits) - 1)

    def without_track(self, track_id: int, payload_bits: int) -> tuple["_Segment", int]:
        if not self.entries_of(track_id, payload_bits):
            return self, 0
        return self.plain().without_track(track_id, payload_bits)


_Segment = _Runs | _CompactRuns | _TrackMajorRuns


def _load_segment(path: os.PathLike, payload_bits: int) -> _Segment:
    """Map a segment file, compact (either code table) or (written before 2026-12-07) plain.

    Raises
    ------
    ValueError
        If the file is not a landmark store of this payload width (damaged or foreign).
    """
    names = array_names(path)
    if "counted_codes" in names:
        return _TrackMajorRuns.load(path, payload_bits)
    if "stream" in names:
        return _CompactRuns.load(path, payload_bits)
    return _Runs.load(path, id_bytes(payload_bits))


def _merged(segments: tuple[_Segment, ...], width: int) -> _Segment:
    """One segment holding the entries of consecutive ``segments``, each code's in segment order.

    The first (usually the largest) is copied once; the others' entries are inserted after its runs.
    """
    if not segments:
        return _Runs.empty(width)
    if len(segments) == 1:
        return segments[0]
    rest = segments[1:]
    return segments[0].with_entries(np.concatenate([s.entry_codes() for s in rest]),
                                    np.concatenate([s.rows() for s in rest]))


class LandmarkIndex:
    """Landmark codes, each resolving to (track id, payload) entries.

    Use :meth:`create` for a new, empty store, :meth:`load` for a saved one and
    :meth:`from_faiss` for a tier of the earlier FAISS format.

    Parameters
    ----------
    payload_bits : int
        Low bits of each id that hold the payload; track ids get ``TRACK_BITS`` above them.
    segments : tuple of _Runs or _CompactRuns
        The saved segments, main first (see the module docstring); empty for a store not
        yet saved.
    writable : bool
    hashed_lists : bool
        Codes are stored mixed (:func:`mix_codes`); False for stores from before the mix.
    """

    def __init__(self, payload_bits: int, segments: tuple[_Segment, ...], writable: bool, hashed_lists: bool = True):
        if not 0 < payload_bits <= 63 - TRACK_BITS:
            raise ValueError(f"payload_bits={payload_bits} leaves too few bits for track ids")
        self.payload_bits = payload_bits
        self.writable = writable
        self.hashed_lists = hashed_lists
        self._width = id_bytes(payload_bits)
        # (saved segments, entries added since the last save as one more segment or None),
        # replaced as a whole so that a concurrent reader sees one state or the other.
        self._state: tuple[tuple[_Segment, ...], _Runs | None] = (segments, None)
        # Entries added since they were last folded into the unsaved segment: (stored codes, ids) per add.
        self._added: list[tuple[np.ndarray, np.ndarray]] = []
        # The saved files no longer hold this store's saved entries (a new store, or a removal).
        self._rewrite = not segments
        # Readers sharing a writer's store may fold the added entries concurrently.
        self._merge_lock = threading.Lock()

    @classmethod
    def create(cls, payload_bits: int, hashed_lists: bool = True) -> "LandmarkIndex":
        """An empty store."""
        return cls(payload_bits, (), writable=True, hashed_lists=hashed_lists)

    @classmethod
    def load(cls, path: os.PathLike, payload_bits: int, mmap: bool = False, hashed_lists: bool = True,
             deltas: tuple[os.PathLike, ...] = ()) -> "LandmarkIndex":
        """Map a store written by :meth:`save`, and the delta segments written after it by :meth:`save_delta`.

        Parameters
        ----------
        path : path-like
            The store's main file.
        payload_bits : int
            As given to :meth:`create` (recorded in the index manifest).
        mmap : bool
            Open read-only. A writable store maps its files too: changes go to new files.
        hashed_lists : bool
            Whether the store holds mixed codes (recorded in the index manifest).
        deltas : tuple of path-like
            Its delta segments, oldest first (recorded in the index manifest).

        Raises
        ------
        ValueError
            If a file is not a landmark store of this payload width (damaged or foreign).
        """
        segments = tuple(_load_segment(file, payload_bits) for file in (path, *deltas))
        return cls(payload_bits, segments, writable=not mmap, hashed_lists=hashed_lists)

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

    # -- saving ------------------------------------------------------------------------------

    def save(self, path: os.PathLike, track_major: bool = False) -> None:
        """Write every entry as one main file, atomically (temporary file, fsync, rename), and map it.

        The store's segments are then that file alone: the caller records it in place of
        the files it had (:mod:`index.store`).

        Parameters
        ----------
        path : path-like
        track_major : bool
            Write the track-major layout (each track's entries together; see
            :class:`_TrackMajorRuns`) instead of the code-major one: for a tier searched
            only in a few candidate tracks per query. Needs codes below ``2 ** TRACK_BITS``.
        """
        self._write(self._segments(), path, track_major)
        with self._merge_lock:
            self._state = ((_load_segment(path, self.payload_bits),), None)
            self._rewrite = False

    def _write(self, segments: tuple[_Segment, ...], path: os.PathLike, track_major: bool) -> None:
        """Write consecutive segments as one file, in either layout."""
        if track_major:
            if not self.hashed_lists:
                raise ValueError("a track-major store files mixed codes: re-file this one first")
            save_arrays(path, _track_major_arrays(segments, self.payload_bits))
        else:
            _merged(segments, self._width).save(path, self.payload_bits)

    def save_delta(self, path: os.PathLike, track_major: bool = False) -> bool:
        """Write the entries added since the last save as a delta segment, and map it.

        ``track_major`` as for :meth:`save`: a delta of a tier searched in candidate tracks
        is read as its main file is, one candidate's entries at a time.

        Returns
        -------
        bool
            False if there was nothing to write (no file is written).

        Raises
        ------
        RuntimeError
            If the saved files no longer describe the store (:attr:`needs_rewrite`): only
            :meth:`save` can write it.
        """
        if self._rewrite:
            raise RuntimeError("this landmark store must be saved whole (save), not as a delta")
        self._merge_added()
        saved, unsaved = self._state
        if unsaved is None or unsaved.ntotal == 0:
            return False
        self._write((unsaved,), path, track_major)
        with self._merge_lock:
            self._state = (saved + (_load_segment(path, self.payload_bits),), None)
        return True

    def segment_encodings(self) -> list[str]:
        """How each saved segment is encoded, main first: ``"compact"``; ``"track-major"`` for a main
        file written by ``save(..., track_major=True)``; ``"compact-v1"`` for a compact file with the
        version-1 code table, ``"plain"`` for a file written before the compact encoding (either read
        as it is; the next rewrite of it is ``"compact"`` or ``"track-major"``)."""
        return [segment.encoding if isinstance(segment, (_CompactRuns, _TrackMajorRuns)) else "plain"
                for segment in self._state[0]]

    @property
    def needs_rewrite(self) -> bool:
        """Whether only :meth:`save` can write the store (it is new, or a removal changed saved entries)."""
        return self._rewrite

    def segment_bytes(self) -> list[int]:
        """Bytes of each saved segment, main first."""
        return [segment.nbytes for segment in self._state[0]]

    def write_merged(self, first: int, last: int, path: os.PathLike, track_major: bool = False
                     ) -> tuple[_Segment, ...]:
        """Write saved segments ``first:last`` merged into one file, atomically; the store is unchanged.

        Reads only segments, which never change, so it may run beside lookups, adds and
        :meth:`save_delta` (a background merge); :meth:`adopt_merged` then puts the file
        in their place. ``track_major`` as for :meth:`save`.

        Returns
        -------
        tuple
            The segments merged, to give to :meth:`adopt_merged`.
        """
        merged = self._state[0][first:last]
        self._write(merged, path, track_major)
        return merged

    def adopt_merged(self, merged: tuple[_Segment, ...], path: os.PathLike) -> None:
        """Replace the saved segments ``merged`` (still consecutive) by the file :meth:`write_merged` wrote.

        Raises
        ------
        RuntimeError
            If the store no longer holds those segments (a removal or a save came between).
        """
        segment = _load_segment(path, self.payload_bits)
        with self._merge_lock:
            saved, unsaved = self._state
            for at in range(len(saved) - len(merged) + 1):
                if all(a is b for a, b in zip(saved[at:at + len(merged)], merged)):
                    self._state = (saved[:at] + (segment,) + saved[at + len(merged):], unsaved)
                    return
        raise RuntimeError("the merged segments are no longer this store's")

    # -- writing -----------------------------------------------------------------------------

    @property
    def ntotal(self) -> int:
        """Number of landmark entries stored."""
        saved, unsaved = self._state
        return (sum(segment.ntotal for segment in saved) + (unsaved.ntotal if unsaved is not None else 0)
                + sum(len(ids) for _, ids in self._added))

    def add(self, track_id: int, hashes: np.ndarray, payloads: np.ndarray) -> None:
        """Store one track's landmarks.

        Parameters
        ----------
        track_id : int
            Non-negative catalogue id of the track, below ``2 ** TRACK_BITS``, above every
            track id stored before (ids are never reused).
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
        """Remove every entry of ``track_id``; returns how many were removed.

        Entries not yet saved are simply dropped; if saved segments hold any, every
        segment is folded into one in memory without them, which the next :meth:`save`
        writes whole (:attr:`needs_rewrite`).
        """
        self._require_writable()
        self._merge_added()
        with self._merge_lock:
            saved, unsaved = self._state
            in_saved = any(segment.entries_of(track_id, self.payload_bits) for segment in saved)
            if in_saved:
                everything, removed = _merged(self._segments_of(saved, unsaved), self._width).without_track(
                    track_id, self.payload_bits)
                self._state, self._rewrite = ((), everything.plain()), True
                return removed
            if unsaved is None:
                return 0
            kept, removed = unsaved.without_track(track_id, self.payload_bits)
            self._state = (saved, kept)
            return removed

    # -- reading -----------------------------------------------------------------------------

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
        stored = self._stored_form(hashes)
        segments = self._segments()
        order = stable_order(stored) if len(segments) > 1 else None
        counts = np.zeros(len(stored), np.int64)
        for segment in segments:
            counts += segment.run_lengths(stored, order)
        return counts

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

        Each code's hits are its runs in the segments, laid end to end in segment order:
        the hits, in the order, of one merged store.

        Parameters
        ----------
        hashes : np.ndarray of uint32
            Query codes.
        tracks : np.ndarray of int, optional
            Only hits on these tracks (sorted, distinct): each is found by galloping over
            each code's run's skip points, so the work follows the candidates, not the run
            lengths — while they are sparse in the runs: a run with a candidate's entry every
            few dozen entries (the pair tier's ~290 candidates at 640 catalogue hours) is
            decoded whole, each entry tested against a bit set of the candidates.

        Returns
        -------
        first_hit, hits_per_code : np.ndarray of int64
            For each query code, where its hits start in ``labels`` and how many there are
            (the slices follow each other in the order of ``hashes``).
        labels : np.ndarray of int64
            Every hit's entry id, ``track_id << payload_bits | payload``.
        """
        stored = self._stored_form(hashes)
        segments: list[_Segment] = [segment for segment in self._segments() if segment.distinct] \
            or [_Runs.empty(self._width)]
        order = stable_order(stored) if len(segments) > 1 else None
        found = [segment.find(stored, order) for segment in segments]
        if tracks is not None:
            wanted = np.asarray(tracks, np.int64)
            hits_per_code, labels = segments[0].track_entries(found[0], wanted, self.payload_bits)
            deltas = []
            # Main holds most of the query's codes, a delta few: only the codes a delta holds are searched.
            for segment, located in zip(segments[1:], found[1:]):
                # A delta holds a few commits' tracks: candidates outside them are not searched for.
                low, high = segment.track_span(self.payload_bits)
                here = wanted[(wanted >= low) & (wanted <= high)]
                if not len(here):
                    continue
                held = np.flatnonzero(located[1])
                deltas.append((held, *segment.track_entries(tuple(array[held] for array in located), here,
                                                            self.payload_bits)))
            if not deltas:
                return np.cumsum(hits_per_code) - hits_per_code, hits_per_code, labels
            # Each code's hits of main, then of each delta in order, laid out code after code.
            parts = [(np.arange(len(hits_per_code)), hits_per_code, labels), *deltas]
            total = hits_per_code.copy()
            for held, hits, _ in deltas:
                total[held] += hits
            first_hit = np.cumsum(total) - total
            merged, dest = np.empty(int(total.sum()), np.int64), first_hit.copy()
            for held, hits, part in parts:
                merged[slice_positions(dest[held], hits)] = part
                dest[held] += hits
            return first_hit, total, merged
        return self._gathered(segments, found)

    def lookup_rarest(self, hashes: np.ndarray, max_hits: int,
                      counted_by: Callable[[np.ndarray], np.ndarray] | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The rarest of ``hashes`` whose hits fit in ``max_hits`` together, and their hits.

        A code's hits grow with the catalogue, and a common code's hits say least about which
        track a query uses: reading the rarest codes first bounds the work whatever the
        catalogue's size and spends it where a hit is most specific. Codes no track stores are
        left out (they would cost a lookup and return nothing); each code counts against the
        budget as often as it is given. Every code is found in the code table once, to count it,
        and the chosen ones' runs are read from where it was found (a second search of the
        ~40,000 codes a 10 s query's two proposals choose at 640 catalogue hours cost ~2 ms).

        Parameters
        ----------
        hashes : np.ndarray of uint32
            Query codes (repeats allowed).
        max_hits : int
            Hits the chosen codes may return together.
        counted_by : callable, optional
            What the budget counts a code's hits by, given codes (``code_counts`` of the
            whole catalogue, for a shard of it: every shard then chooses the same codes);
            by default this store's run lengths.

        Returns
        -------
        chosen : np.ndarray of int64
            Indices into ``hashes``, in the order the store files its codes
            (:func:`mix_codes`; ties in the given order).
        first_hit, hits_per_code : np.ndarray of int64
            Per chosen code, where its hits start in ``labels`` and how many there are; a
            repeated code's slice is shared, so the slices do not follow each other.
        labels : np.ndarray of int64
            The hits' entry ids, ``track_id << payload_bits | payload``, each code's by track.
        """
        stored = self._stored_form(hashes)
        filed = stable_order(stored)
        starts, run_of = equal_runs(stored[filed])
        distinct = stored[filed][starts]
        segments: list[_Segment] = [segment for segment in self._segments() if segment.distinct] \
            or [_Runs.empty(self._width)]
        located = [segment.locate(distinct) for segment in segments]
        counts = (np.sum([lengths for lengths, _ in located], axis=0) if counted_by is None
                  else np.asarray(counted_by(np.asarray(hashes, np.uint32)[filed][starts]), np.int64))[run_of]
        rarest_first = stable_order(counts)
        within_budget = rarest_first[np.cumsum(counts[rarest_first]) <= max_hits]
        chosen = np.sort(within_budget[counts[within_budget] > 0])
        needed_starts, slice_of = equal_runs(run_of[chosen])
        needed = run_of[chosen][needed_starts]
        found = [segment.find_located(distinct[needed], None if slots is None else slots[needed])
                 for segment, (_, slots) in zip(segments, located)]
        first_hit, hits_per_code, labels = self._gathered(segments, found)
        return filed[chosen], first_hit[slice_of], hits_per_code[slice_of], labels

    def _gathered(self, segments: list[_Segment], found: Sequence[tuple[np.ndarray, ...]]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every found code's hits, code after code, each code's runs in segment order."""
        hits_per_code = np.sum([located[1] for located in found], axis=0)
        first_hit = np.cumsum(hits_per_code) - hits_per_code
        labels = np.empty(int(hits_per_code.sum()), np.int64)
        dest = first_hit.copy()
        for segment, located in zip(segments, found):
            segment.gather_into(labels, located, dest, self.payload_bits)
            dest += located[1]
        return first_hit, hits_per_code, labels

    def code_table(self) -> tuple[np.ndarray, np.ndarray]:
        """Every distinct stored code (as stored: mixed, increasing) and its entry count, over all segments.

        What a catalogue-wide count table is built from (``cluster/counts.py``); reading a
        tier's main file alone would miss its deltas.

        Returns
        -------
        codes : np.ndarray of uint32
        counts : np.ndarray of int64
        """
        segments = [segment for segment in self._segments() if segment.distinct]
        if len(segments) <= 1:
            only = segments[0] if segments else _Runs.empty(self._width)
            return np.asarray(only.codes), np.diff(np.asarray(only.starts, dtype=np.int64))
        codes, inverse = np.unique(np.concatenate([segment.codes for segment in segments]), return_inverse=True)
        lengths = np.concatenate([np.diff(np.asarray(segment.starts, dtype=np.int64)) for segment in segments])
        return codes, np.bincount(inverse, weights=lengths, minlength=len(codes)).astype(np.int64)

    def track_entries(self, track_id: int) -> tuple[np.ndarray, np.ndarray]:
        """One track's (landmark codes, payloads), segment by segment, each in its store order
        (a code-major segment's by mixed code, a track-major one's by code).

        What moving a track to another index reads back (``cluster/rebalance.py``): adding
        them to a store gives the track exactly the entries it has here. A track-major
        segment reads the track's run alone; a code-major one decodes every entry.
        """
        codes, payloads = [np.zeros(0, np.uint32)], [np.zeros(0, np.int64)]
        for segment in self._segments():
            low, high = segment.track_span(self.payload_bits)
            if not low <= track_id <= high:
                continue
            if isinstance(segment, _TrackMajorRuns):  # the track's own run, by code
                track_codes, track_payloads = segment.track_run(track_id)
                codes.append(track_codes)
                payloads.append(track_payloads)
                continue
            ids = _unpacked(segment.rows())
            mine = np.flatnonzero((ids >> self.payload_bits) == track_id)
            stored = segment.codes[np.searchsorted(np.asarray(segment.starts), mine, side="right") - 1]
            codes.append(unmix_codes(stored) if self.hashed_lists else np.asarray(stored, np.uint32))
            payloads.append(ids[mine] & ((1 << self.payload_bits) - 1))
        return np.concatenate(codes), np.concatenate(payloads)

    def refiled(self) -> "LandmarkIndex":
        """A new in-memory store holding this one's entries under mixed codes.

        For a store from before the mix (``hashed_lists=False``): each code's entries keep
        their order, so every lookup returns the same hits in the same order.
        """
        if self.hashed_lists:
            raise ValueError("this store already files mixed codes")
        everything = _merged(self._segments(), self._width)
        refiled = LandmarkIndex.create(self.payload_bits)
        refiled._added.append((mix_codes(everything.entry_codes()), _unpacked(everything.rows())))
        refiled._merge_added()
        return refiled

    def _stored_form(self, hashes: np.ndarray) -> np.ndarray:
        """Landmark codes as this store files them (mixed, or raw in an older store)."""
        hashes = np.asarray(hashes, dtype=np.uint32)
        return mix_codes(hashes) if self.hashed_lists else hashes

    @staticmethod
    def _segments_of(saved: tuple[_Segment, ...], unsaved: _Runs | None) -> tuple[_Segment, ...]:
        return saved + (unsaved,) if unsaved is not None else saved

    def _segments(self) -> tuple[_Segment, ...]:
        """Every segment, saved ones first, the added entries last: one consistent state."""
        self._merge_added()
        return self._segments_of(*self._state)

    def _merge_added(self) -> None:
        """Fold the entries added since the last fold into the unsaved segment, after its own."""
        with self._merge_lock:
            if not self._added:
                return
            new_codes = np.concatenate([codes for codes, _ in self._added])
            new_ids = np.concatenate([ids for _, ids in self._added])
            self._added = []
            saved, unsaved = self._state
            base = unsaved if unsaved is not None else _Runs.empty(self._width)
            self._state = (saved, base.with_entries(new_codes, _packed(new_ids, self._width)))

    def _require_writable(self) -> None:
        if not self.writable:
            raise PermissionError("this landmark index was opened read-only (memory-mapped)")

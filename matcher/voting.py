"""Shared voting helpers: rarity weights and best cells per track."""

from __future__ import annotations

import numba
import numpy as np

from refrain.index.landmarks import LandmarkIndex, equal_runs, mix_codes, stable_order
from refrain.matcher.landmarks import LandmarkTierParams

__all__ = ["rarity_weights", "counts_in_store_order", "strongest_first", "weighted_codes",
           "lookup_in_store_order", "weighted_lookup", "vote_keys", "split_vote_keys", "vote_order",
           "best_cells_per_track", "strongest_tracks", "neighbourhood_sums", "ids_spread", "dense_track_numbers"]


def rarity_weights(entries_per_code: np.ndarray, entries_in_tier: int, params: LandmarkTierParams) -> np.ndarray:
    """Weight of each query code: ``min(1, sqrt(E / entries with that code))``.

    Parameters
    ----------
    entries_per_code : np.ndarray of int
        For each query code, the entries stored under it (the hits its lookup returns),
        from :meth:`index.landmarks.LandmarkIndex.code_counts`.
    entries_in_tier : int
        Entries stored in the tier looked up.
    params : LandmarkTierParams

    Returns
    -------
    np.ndarray, same length as ``entries_per_code``
    """
    typical = max(1.0, entries_in_tier / params.common_hash_entries_per_code)
    return np.minimum(1.0, np.sqrt(typical / np.maximum(entries_per_code, 1)))


def counts_in_store_order(tier: LandmarkIndex, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The order the store files ``codes`` in, and the entries of each code in that order.

    Asked in that order the code-table reads walk forward through the table (see
    :func:`lookup_in_store_order`), and a repeated code is counted once.

    Returns
    -------
    in_store_order : np.ndarray of int64
        Positions into ``codes``.
    counts : np.ndarray of int64
        ``tier.code_counts(codes[in_store_order])``.
    """
    in_store_order = stable_order(mix_codes(codes))
    starts, run_of = equal_runs(codes[in_store_order])
    return in_store_order, tier.code_counts(codes[in_store_order][starts])[run_of]


def weighted_codes(tier: LandmarkIndex, codes: np.ndarray, params: LandmarkTierParams
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The codes worth looking up, each weighed by rarity: those too common to count are left out.

    The rarity weight of a code follows from the tier's code-count table, so codes
    lighter than ``min_hash_weight`` are never looked up: most hits would be theirs.

    Parameters
    ----------
    tier : LandmarkIndex
    codes : np.ndarray of uint32
        Query codes.
    params : LandmarkTierParams

    Returns
    -------
    code_ids : np.ndarray of int64
        Which of ``codes`` to look up, in order.
    code_weights : np.ndarray of float
        The rarity weight of each.
    entries : np.ndarray of int64
        The entries stored under each: its hits, unless the lookup is restricted to some tracks.
    """
    in_store_order, counts = counts_in_store_order(tier, codes)
    entries_per_code = np.empty(len(codes), np.int64)
    entries_per_code[in_store_order] = counts
    code_weights = rarity_weights(entries_per_code, tier.ntotal, params)
    code_ids = np.flatnonzero(code_weights >= params.min_hash_weight)
    return code_ids, code_weights[code_ids], entries_per_code[code_ids]


def lookup_in_store_order(tier: LandmarkIndex, codes: np.ndarray, tracks: np.ndarray | None = None
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:meth:`index.landmarks.LandmarkIndex.lookup_slices` of ``codes``, each asked once, in the store's order.

    The store files its runs in the order of the mixed codes: asked in that order, its
    code-table reads and gathers walk forward through it (a 60 s window's 60,000 triplet
    codes: 30 instead of 46 ms, measured with the binary searches of format 4). A code the
    query holds more than once (a repeated note's pair, a triplet under several tempo
    hypotheses) is looked up once and its slice shared: at 640 catalogue hours 8-28 % of
    the entries a 10 s query's pair codes read were repeats'. Each code's hits are the
    same; only where its slice lies in ``labels`` differs, and ``first_hit`` says where.

    Returns
    -------
    first_hit, hits_per_code, labels : np.ndarray of int64
        Per code of ``codes``, in their order, where its hits start in ``labels`` and how
        many there are (the slices do not follow each other in that order, and a repeated
        code's is its first occurrence's).
    """
    in_store_order = stable_order(mix_codes(codes))
    starts, run_of = equal_runs(codes[in_store_order])
    first_hit, hits_per_code, labels = tier.lookup_slices(codes[in_store_order][starts], tracks)
    slice_of = np.empty(len(codes), np.int64)
    slice_of[in_store_order] = run_of
    return first_hit[slice_of], hits_per_code[slice_of], labels


def weighted_lookup(tier: LandmarkIndex, codes: np.ndarray, params: LandmarkTierParams,
                    tracks: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Look codes up, skipping those too common to count (:func:`weighted_codes`), and weigh each by rarity.

    Parameters
    ----------
    tier : LandmarkIndex
    codes : np.ndarray of uint32
        Query codes.
    params : LandmarkTierParams
    tracks : np.ndarray of int, optional
        Only hits on these tracks (sorted; the query's candidates), None for all.

    Returns
    -------
    code_ids : np.ndarray of int64
        Which of ``codes`` were looked up, in order.
    code_weights : np.ndarray of float
        The rarity weight of each.
    first_hit, hits_per_code, labels : np.ndarray of int64
        Their hits (:func:`lookup_in_store_order`): the tiers walk them code by code in
        compiled loops.
    """
    code_ids, code_weights, _ = weighted_codes(tier, codes, params)
    return code_ids, code_weights, *lookup_in_store_order(tier, codes[code_ids], tracks)


def strongest_first(best: np.ndarray, minimum: float, count: int) -> np.ndarray:
    """Positions of the ``count`` largest of ``best`` that reach ``minimum``, largest first, ties in position order.

    Most tracks with votes hold a few by chance and fall short of ``minimum``: only the
    rest are sorted.

    Parameters
    ----------
    best : np.ndarray
        Each track's best weight.
    minimum : float
    count : int

    Returns
    -------
    np.ndarray of int64
    """
    eligible = np.flatnonzero(best >= minimum)
    return eligible[np.argsort(-best[eligible], kind="stable")[:count]]


def vote_order(track_ids: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """The order that sorts votes by track, then cell, as :func:`best_cells_per_track` needs.

    Sorting once also leaves each track's votes in one contiguous slice. Votes with the
    same track and cell keep their given order (a stable sort).

    Parameters
    ----------
    track_ids, cells : np.ndarray of int64
        As for :func:`best_cells_per_track`.

    Returns
    -------
    np.ndarray of int64
        Positions into the arguments.
    """
    if len(track_ids) == 0:
        return np.zeros(0, dtype=np.int64)
    compact = _compact_vote_keys(track_ids, cells, 0)
    if compact is None:
        return np.argsort(vote_keys(track_ids, cells), kind="stable")
    return stable_order(compact[0])


def _compact_vote_keys(track_ids: np.ndarray, cells: np.ndarray, margin: int, spare_bits: int = 0
                       ) -> tuple[np.ndarray, int, int] | None:
    """Each vote's (track, cell) as one small non-negative integer in (track, cell) order.

    The tracks and cells of one query span little of their ranges, and small integers sort
    fastest (:func:`index.landmarks.stable_order`). Each track's cells get ``margin`` free
    places either side, so that a cell plus a difference up to ``margin`` stays among its
    track's keys.

    Returns
    -------
    (keys, width, lowest_track), or None if the keys would not fit in ``62 - spare_bits`` bits
        A key is ``(track - lowest_track) * width + cell - lowest cell + margin``.
    """
    lowest_track, lowest_cell = int(track_ids.min()), int(cells.min())
    width = int(cells.max()) - lowest_cell + 1 + 2 * margin
    if ((int(track_ids.max()) - lowest_track + 1) * width - 1).bit_length() > 62 - spare_bits:
        return None
    return (track_ids - lowest_track) * width + (cells - lowest_cell + margin), width, lowest_track


def vote_keys(track_ids: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """One int64 per vote, ordered by track, then cell (track ids of any integer type, cells int64)."""
    return (np.asarray(track_ids, np.int64) << 32) + cells


def split_vote_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (track ids, cells) that :func:`vote_keys` packed."""
    return keys >> 32, keys & 0xFFFFFFFF


def best_cells_per_track(track_ids: np.ndarray, cells: np.ndarray, weights: np.ndarray,
                         neighbourhood: np.ndarray, min_weight: float, max_tracks: int,
                         cells_per_track: int = 1):
    """For the strongest tracks, the vote cells with most weight in their neighbourhood.

    Parameters
    ----------
    track_ids : np.ndarray of int64
        Track of each vote (below 2**31).
    cells : np.ndarray of int64
        Non-negative cell index of each vote, below 2**32. Votes come sorted by track,
        then cell (:func:`vote_order`; any subset of sorted votes is sorted too).
    weights : np.ndarray of float
        Weight of each vote.
    neighbourhood : np.ndarray of int64
        Cell index differences summed together (e.g. ``[-1, 0, 1]``).
    min_weight : float
        Cells whose neighbourhood weighs less are dropped, and tracks without such a cell.
    max_tracks : int
        At most this many tracks are returned, strongest first: in a large catalogue
        many tracks reach ``min_weight`` by chance, and only the strongest can hold up.
    cells_per_track : int
        Cells returned per track (default 1), strongest first, none in the
        neighbourhood of a stronger one: when a track's strongest cell turns out to be
        chance agreement (no consistent time line), the next one may hold the match.

    Returns
    -------
    list of (track_id, list of cell)
    """
    if len(track_ids) == 0:
        return []
    values, summed, first, best = neighbourhood_sums(vote_keys(track_ids, cells), np.asarray(weights, np.float64),
                                                      np.asarray(neighbourhood, np.int64))
    value_tracks, value_cells = split_vote_keys(values)
    tracks = value_tracks[first]
    strongest = strongest_first(best, min_weight, max_tracks)
    result = []
    apart = {int(delta) for delta in neighbourhood}
    for track, start in zip(tracks[strongest], first[strongest]):
        stop = np.searchsorted(value_tracks, track, side="right")
        own_cells = value_cells[start:stop]
        chosen: list[int] = []
        for position in np.argsort(-summed[start:stop], kind="stable"):
            if len(chosen) == cells_per_track or summed[start + position] < min_weight:
                break
            cell = int(own_cells[position])
            if all(cell - other not in apart for other in chosen):
                chosen.append(cell)
        result.append((int(track), chosen))
    return result


#: Bits of a vote weight in :func:`strongest_tracks`: weights are integers below ``2 ** VOTE_WEIGHT_BITS``.
VOTE_WEIGHT_BITS = 7


def strongest_tracks(track_ids: np.ndarray, cells: np.ndarray, neighbourhood: np.ndarray, min_votes: int,
                     max_tracks: int, weights: np.ndarray) -> np.ndarray:
    """The tracks whose best neighbourhood of ``min_votes`` votes or more holds the most vote weight, strongest first.

    The proposals keep only the tracks, so no per-cell sums are needed: the votes in a
    cell's neighbourhood are those whose key falls in one of a few ranges of consecutive
    keys (one per run of consecutive ``neighbourhood`` differences: three for a 3 x 3
    neighbourhood), and a pointer per range end walks forward through the sorted keys. One
    pass over the votes per range instead of one per difference, and no sort of each track's
    cells: a 10 s query's two proposals at 640 h vote in 7-8 ms instead of 13.6
    (docs/scale.md, step 12). Votes that all weigh one give the tracks of
    :func:`best_cells_per_track`, without their cells.

    Ranked by weight (how rare each vote's code is), not by count: where thousands of tracks
    hold the same few votes by chance, the weights tell the true one apart (docs/scale.md,
    step 14). Each weight travels in its vote's key, below the key's bits, so the one sort
    orders both. Ties by track id.

    Parameters
    ----------
    track_ids, cells : np.ndarray of int64
        Track and non-negative cell of each vote, in any order.
    neighbourhood : np.ndarray of int64
        Cell differences counted together, as for :func:`best_cells_per_track`.
    min_votes : int
        Tracks whose best neighbourhood holds fewer votes are left out.
    max_tracks : int
        At most this many tracks, most weight first.
    weights : np.ndarray of int
        Each vote's weight, ``0 <= weight < 2 ** VOTE_WEIGHT_BITS``.

    Returns
    -------
    np.ndarray of int64
    """
    if len(track_ids) == 0:
        return np.zeros(0, np.int64)
    differences = np.unique(np.asarray(neighbourhood, np.int64))
    run_starts = np.flatnonzero(np.diff(differences, prepend=differences[0] - 2) != 1)
    lows = differences[run_starts]
    highs = differences[np.append(run_starts[1:], len(differences)) - 1]
    # No cell plus a difference may reach another track's keys.
    margin = max(abs(int(differences[0])), abs(int(differences[-1])))
    numbered = np.asarray(track_ids, np.int64)
    track_of = None
    compact = _compact_vote_keys(numbered, cells, margin, VOTE_WEIGHT_BITS)
    if compact is None:  # tracks too spread for their keys to hold a weight: numbered, they fit
        numbers, track_of = dense_track_numbers(numbered)
        numbered = numbers.astype(np.int64)
        compact = _compact_vote_keys(numbered, cells, margin, VOTE_WEIGHT_BITS)
        assert compact is not None, "fewer tracks than votes and 32-bit cells fit in 62 bits"
    keys, width, lowest_track = compact
    packed = (keys << VOTE_WEIGHT_BITS) | np.asarray(weights, np.int64)
    packed.sort()
    tracks, best = _best_per_track(packed, VOTE_WEIGHT_BITS, width, lows, highs, min_votes)
    strongest = tracks[strongest_first(best, 0, max_tracks)] + lowest_track
    return strongest if track_of is None else track_of[strongest]


@numba.njit(cache=True, nogil=True)
def _best_per_track(packed, weight_bits, width, lows, highs, min_votes):
    """Each track (``key // width``, ascending) and the largest weight of a neighbourhood of ``min_votes``
    votes or more (-1 if none has that many); ``packed`` sorted, each a vote's key above ``weight_bits``
    bits of its weight. A key's neighbourhood is the keys within ``[key + lows[r], key + highs[r]]``
    over ``r``."""
    n = len(packed)
    keys = packed >> weight_bits
    cumulative = np.zeros(n + 1, np.int64)
    for i in range(n):
        cumulative[i + 1] = cumulative[i] + (packed[i] & ((1 << weight_bits) - 1))
    votes = np.zeros(n, np.int64)
    weight = np.zeros(n, np.int64)
    for r in range(len(lows)):
        low, high = lows[r], highs[r]
        start = stop = 0
        for i in range(n):
            while start < n and keys[start] < keys[i] + low:
                start += 1
            while stop < n and keys[stop] <= keys[i] + high:
                stop += 1
            votes[i] += stop - start
            weight[i] += cumulative[stop] - cumulative[start]
    tracks = np.empty(n, np.int64)
    best = np.empty(n, np.int64)
    count, next_track_key = 0, keys[0]
    for i in range(n):
        if keys[i] >= next_track_key:
            tracks[count] = keys[i] // width
            best[count] = -1
            next_track_key = (tracks[count] + 1) * width
            count += 1
        if votes[i] >= min_votes and weight[i] > best[count - 1]:
            best[count - 1] = weight[i]
    return tracks[:count], best[:count]


@numba.njit(cache=True, nogil=True)
def neighbourhood_sums(keys, weights, deltas):
    """Distinct sorted vote keys, each one's neighbourhood weight, and each track's best.

    Parameters
    ----------
    keys : np.ndarray of int64
        Sorted vote keys (:func:`vote_keys`).
    weights : np.ndarray of float64
        Weight of each vote.
    deltas : np.ndarray of int64
        Cell differences summed together, in the order they are added.

    Returns
    -------
    values : np.ndarray of int64
        The distinct keys.
    summed : np.ndarray of float64
        For each, the weight of the votes whose key differs from it by one of ``deltas``.
    first : np.ndarray of int64
        Position in ``values`` of each track's first key.
    best : np.ndarray of float64
        Each track's largest ``summed``.
    """
    n = len(keys)
    values = np.empty(n, np.int64)
    cell_weight = np.empty(n, np.float64)
    distinct = 0
    for i in range(n):
        if i == 0 or keys[i] != keys[i - 1]:
            values[distinct] = keys[i]
            cell_weight[distinct] = weights[i]
            distinct += 1
        else:
            cell_weight[distinct - 1] += weights[i]
    values, cell_weight = values[:distinct], cell_weight[:distinct]
    summed = np.zeros(distinct, np.float64)
    # values + delta grows with the value, so each delta's match moves forward only.
    for delta in deltas:
        j = 0
        for i in range(distinct):
            wanted = values[i] + delta
            while j < distinct and values[j] < wanted:
                j += 1
            if j < distinct and values[j] == wanted:
                summed[i] += cell_weight[j]
    first = np.empty(distinct, np.int64)
    best = np.empty(distinct, np.float64)
    tracks = 0
    for i in range(distinct):
        if i == 0 or (values[i] >> 32) != (values[i - 1] >> 32):
            first[tracks] = i
            best[tracks] = summed[i]
            tracks += 1
        elif summed[i] > best[tracks - 1]:
            best[tracks - 1] = summed[i]
    return values, summed, first[:tracks], best[:tracks]


@numba.njit(cache=True, nogil=True)
def ids_spread(lowest, highest, count):
    """Whether ids within ``[lowest, highest]`` are too spread for a table over their range to cost no
    more than ``count`` items (as in any catalogue of up to tens of thousands of tracks it does not)."""
    return highest - lowest >= 4 * count + 65536


@numba.njit(cache=True, nogil=True)
def dense_track_numbers(track_ids):
    """The tracks of ``track_ids`` numbered 0, 1, ... in increasing order of id, so that
    arrays indexed by track follow the tracks with hits, not the catalogue's largest id.

    A table over the ids' range is used while that range costs no more than the hits (any
    catalogue of up to tens of thousands of tracks, :func:`ids_spread`); beyond, a hash table
    of the distinct tracks: a window's hits on 64 candidates among 3 million tracks would
    otherwise size arrays of 3 million entries, several times per window (numbering 300,000
    hits on 64 tracks: 0.8 ms; ranking them by track over 3 million ids: 28 ms more).

    Parameters
    ----------
    track_ids : np.ndarray of int32 or int64
        Non-negative.

    Returns
    -------
    numbers : np.ndarray of int32
        Each one's number.
    tracks : np.ndarray of int64
        The distinct track ids, increasing: ``tracks[numbers]`` gives ``track_ids`` back.
    """
    n = len(track_ids)
    numbers = np.empty(n, np.int32)
    if n == 0:
        return numbers, np.zeros(0, np.int64)
    lowest, highest = np.int64(track_ids.min()), np.int64(track_ids.max())
    if not ids_spread(lowest, highest, n):
        number_of = np.zeros(highest - lowest + 1, np.int32)
        for track in track_ids:
            number_of[track - lowest] = 1
        count = np.int32(0)
        for at in range(len(number_of)):
            seen = number_of[at]
            number_of[at] = count
            count += seen
        tracks = np.empty(count, np.int64)
        for i in range(n):
            numbers[i] = number_of[track_ids[i] - lowest]
            tracks[numbers[i]] = track_ids[i]
        return numbers, tracks
    # Open addressing by the high bits of a multiplicative hash, at most half full; a slot
    # holds a track id + 1, 0 when empty. The table doubles when it would pass half full, and
    # the walk over the hits resumes there (growing it inside the walk made each probe 4x slower).
    bits, held, walked = 10, 0, 0
    keys = np.zeros(1 << bits, np.int64)
    while True:
        held, walked = _insert_keys(keys, bits, track_ids, walked, held)
        if walked == n:
            break
        bits += 1
        keys = _rehashed(keys, bits)
    tracks = np.sort(keys[keys != 0]) - 1
    number_in_slot = np.zeros(len(keys), np.int32)
    for slot in range(len(keys)):
        if keys[slot] != 0:
            number_in_slot[slot] = np.searchsorted(tracks, keys[slot] - 1)
    for i in range(n):
        numbers[i] = number_in_slot[_hash_slot(keys, np.int64(track_ids[i]) + 1, bits)]
    return numbers, tracks


@numba.njit(cache=True, nogil=True, inline="always")
def _hash_slot(keys, key, bits):
    """The slot of ``key`` in a :func:`dense_track_numbers` table of ``2 ** bits`` slots, or the
    empty slot where it would go."""
    slot = np.int64((np.uint64(key) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(64 - bits))
    while keys[slot] != 0 and keys[slot] != key:
        slot = (slot + 1) & ((np.int64(1) << bits) - 1)
    return slot


@numba.njit(cache=True, nogil=True)
def _insert_keys(keys, bits, track_ids, first, held):
    """Insert ``track_ids[first:]`` (+ 1) until the table would pass half full: (keys held, hits walked)."""
    for i in range(first, len(track_ids)):
        key = np.int64(track_ids[i]) + 1
        slot = _hash_slot(keys, key, bits)
        if keys[slot] == 0:
            if 2 * (held + 1) > len(keys):
                return held, i
            keys[slot] = key
            held += 1
    return held, len(track_ids)


@numba.njit(cache=True, nogil=True)
def _rehashed(keys, bits):
    """The keys of a :func:`dense_track_numbers` table in a new one of ``2 ** bits`` slots."""
    grown = np.zeros(np.int64(1) << bits, np.int64)
    for key in keys:
        if key != 0:
            grown[_hash_slot(grown, key, bits)] = key
    return grown

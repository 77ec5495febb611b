"""Pair tier: exact copies, excerpts and copies under other audio.

Pair landmarks (two spectral peaks and their distance) of the query are looked up
and each hit votes for (track, reference frame - query frame); a copy's hits agree
on one constant time offset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import AbstractSet, Callable, ClassVar

import numba
import numpy as np

from refrain.index.landmarks import LandmarkIndex, stable_order
from refrain.matcher.landmarks import LandmarkTierParams, landmark_matches
from refrain.matcher.types import Alignment, Calibration, Catalogue, Match, Query, ShortQueryTail
from refrain.matcher.voting import (best_cells_per_track, dense_track_numbers, ids_spread, lookup_in_store_order,
                                    strongest_first, vote_order, weighted_codes)

__all__ = ["PairTier", "PairVotes", "PairHits", "group_pair_hits", "pair_hits", "pair_cells", "pair_votes_on",
           "pair_alignments_of_hits"]

#: Offsets are signed; vote cells must be non-negative.
_OFFSET_BIAS = 1 << 31


@dataclass(frozen=True)
class PairTier(LandmarkTierParams):
    """The pair tier and its parameters (those of :class:`~matcher.landmarks.LandmarkTierParams`, and:).

    Attributes
    ----------
    offset_tolerance : int
        Votes within this many frames of the best offset are aligned (default 1).
    first_round_entries, first_round_min_weight, first_round_tracks : int, float, int
        How a search bounded to proposed candidates (:attr:`~matcher.types.Query.candidates`)
        is made in two rounds. Finding a candidate's entries in a long run costs about what
        decoding 32 of them does, whatever the run's length, so a common code costs per
        candidate: at 640 catalogue hours, on ~300 candidates, the commonest fifth of a 10 s
        query's codes took half the tier's lookup time, and they weigh least
        (:func:`~matcher.voting.rarity_weights`). The rarest codes whose runs hold at most
        ``first_round_entries`` entries together (default 2,500,000) are searched in every
        candidate first; the others only in the candidates whose best offset then weighs at
        least ``first_round_min_weight`` (default 2.0) or which are among the
        ``first_round_tracks`` heaviest (default 64). Measured at 640 h (docs/scale.md step
        15): 64 (90th percentile 130) of ~318 candidates searched in the second round, the
        tier's CPU p50 per 10 s query 19.1-19.6 -> 14.0 ms and per 30 s query 57.5 -> 35.5 ms,
        the same top-1 on every condition; the one match that changed was of a track whose
        evidence lay nearly all in common codes (a recording's drones).
    calibration : Calibration
        Chance that unrelated music reaches a pair score (``bench/calibrate.py``).
    """

    name: ClassVar[str] = "pair"
    offset_tolerance: int = 1
    first_round_entries: int = 2_500_000
    first_round_min_weight: float = 2.0
    first_round_tracks: int = 64
    calibration: Calibration = field(default_factory=lambda: Calibration(
        anchor_score=3.26, anchor_chance=0.10283, scale=0.4465, queries=1624, catalogue_tracks=150,
        short_queries=(ShortQueryTail(seconds=3.0, anchor_score=2.548, anchor_chance=0.10013, scale=0.2927,
                                      queries=5553),
                       ShortQueryTail(seconds=5.0, anchor_score=2.853, anchor_chance=0.10006, scale=0.38,
                                      queries=3308))))

    def find(self, query: Query, catalogue: Catalogue, skip: AbstractSet[int]) -> list[Match]:
        """Tracks the query copies without a tempo or pitch change (see :class:`~matcher.types.Tier`)."""
        if self.name not in catalogue.tiers:
            return []
        alignments = [a for a in pair_alignments_of_hits(pair_hits(query, catalogue, self), self)
                      if a.track_id not in skip and catalogue.reportable(a.track_id)]
        return landmark_matches(alignments, query, catalogue, self, self.calibration, query.fingerprint.frames)


@dataclass(frozen=True)
class PairVotes:
    """Pair-tier hits of one query on a few tracks as votes (six numbers each).

    Made only for the tracks that can align (:func:`pair_alignments_of_hits`) or that the
    peaks tier verifies (:func:`pair_votes_on`), never for every hit.
    """

    query_ids: np.ndarray    # the query landmark of each hit
    track_ids: np.ndarray
    ref_frames: np.ndarray
    weights: np.ndarray      # rarity weight of each hit (float64)
    query_frames: np.ndarray
    offsets: np.ndarray      # ref_frames - query_frames

    def __len__(self) -> int:
        return len(self.track_ids)

    def __getitem__(self, rows: np.ndarray) -> PairVotes:
        """The votes at ``rows`` (positions or a mask), in their order."""
        return PairVotes(self.query_ids[rows], self.track_ids[rows], self.ref_frames[rows], self.weights[rows],
                         self.query_frames[rows], self.offsets[rows])


@dataclass(frozen=True)
class PairHits:
    """The query's pair-tier hits grouped by track, in code order within each track (:func:`group_pair_hits`).

    Four bytes per hit in all but extreme cases (:attr:`hits`), made once per query
    window for the pair tier (:func:`pair_alignments_of_hits`) and the peaks tier
    (:func:`pair_cells`, :func:`pair_votes_on`), which score them in place instead of
    making votes of them.
    """

    code_ids: np.ndarray       # which query landmarks were looked up, in increasing order
    code_weights: np.ndarray   # the rarity weight of each
    code_frames: np.ndarray    # the query frame of each
    tracks: np.ndarray         # the tracks with hits, increasing (int64)
    bounds: np.ndarray         # ``tracks[i]``'s hits are ``hits[bounds[i]:bounds[i + 1]]`` (int64)
    hits: np.ndarray           # each hit's ``code position << offset_bits | time offset - lowest`` (uint32 or int64)
    offset_bits: int
    lowest: int                # the range of the hits' time offsets (reference frame - query frame);
    highest: int               # (0, -1) without hits

    def __len__(self) -> int:
        return len(self.hits)

    def codes_and_offsets(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The code positions and time offsets (int64) of the hits at ``rows``."""
        packed = self.hits[rows].astype(np.int64)
        return packed >> self.offset_bits, (packed & ((1 << self.offset_bits) - 1)) + self.lowest


#: Hits a lookup decodes at once while the pair hits are grouped (bounded by the codes' entry counts; one code's
#: hits are never split). The store is read twice, once to count each track's hits and once to place them, so that
#: no array of every hit's entry id is held: at 640 catalogue hours a 30 s query has up to 52 M hits, 418 MB of ids.
_HITS_PER_LOOKUP = 1 << 20


def group_pair_hits(code_ids: np.ndarray, code_weights: np.ndarray, code_frames: np.ndarray,
                    entries: np.ndarray | None, payload_bits: int,
                    lookup: Callable[[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]]
                    ) -> PairHits:
    """The hits of the looked-up codes grouped by track: a counting sort over bounded lookups, most made twice.

    Codes are looked up a few at a time, in their order, by ``lookup``; each batch is read
    straight through once to count each track's hits and once more, after they are all
    counted, to place its hits (looked up again, but for the last batch). A hit is placed
    as its code's position and its time offset in one integer of the fewest bytes that
    hold both (4 unless the offsets span more than ``2 ** 32`` over the number of codes:
    catalogue tracks of hours).

    Parameters
    ----------
    code_ids, code_weights, code_frames : np.ndarray
        The looked-up query landmarks (increasing), their rarity weights and query frames.
    entries : np.ndarray of int64 or None
        Per code, at least its hits (its entry count): what bounds a batch. None: one
        batch, for a lookup restricted to candidate tracks, whose hits do not grow with the
        catalogue (sized by the entry counts, its searches in every run would be made twice).
    payload_bits : int
        Of the entry ids: the track is above them, the reference frame in them.
    lookup : callable
        ``lookup(start, stop)`` gives the hits of codes ``start:stop`` as
        :meth:`index.landmarks.LandmarkIndex.lookup_slices` does: ``first_hit``,
        ``hits_per_code``, ``labels`` (each code's hits one slice, sorted by track).

    Returns
    -------
    PairHits
    """
    # Batches of codes whose entries reach _HITS_PER_LOOKUP; at least one, so that a query without hits or codes
    # runs the kernels too (a warm-up query compiles them).
    if entries is None:
        starts = np.zeros(1, np.int64)
    else:
        before = np.cumsum(entries) - entries
        starts = np.unique(np.concatenate([[0], np.searchsorted(
            before, np.arange(_HITS_PER_LOOKUP, int(np.sum(entries)), _HITS_PER_LOOKUP))]))
    starts = starts[starts < max(len(code_ids), 1)]
    batches = list(zip(starts.tolist(), np.append(starts[1:], len(code_ids)).tolist()))
    first_track, counts = 0, np.zeros(0, np.int64)
    lowest, highest = 1 << 62, -(1 << 62)
    numbered: np.ndarray | None = None
    for start, stop in batches:
        found = lookup(start, stop)
        if len(batches) == 1:
            # The counts below are indexed by track over the hits' range of ids: spread over a large
            # catalogue (a restricted lookup's candidates among millions of tracks), the hits'
            # tracks are numbered first and the ids given back at the end.
            numbered, found = _numbered_if_spread(found, payload_bits)
        low_track, batch_counts, low, high = _count_by_track(code_frames[start:stop], *found, payload_bits)
        first_track, counts = _add_counts(first_track, counts, int(low_track), batch_counts)
        lowest, highest = min(lowest, int(low)), max(highest, int(high))
    if highest < lowest:
        lowest, highest = 0, -1
    offset_bits = max(highest - lowest, 0).bit_length()
    fits = offset_bits + max(len(code_ids) - 1, 0).bit_length() <= 32
    with_hits = np.flatnonzero(counts)
    place = np.cumsum(counts) - counts
    bounds = np.append(place[with_hits], int(np.sum(counts)))
    hits = np.empty(bounds[-1], np.uint32 if fits else np.int64)
    # The last batch's hits are still at hand: a query of one batch (under _HITS_PER_LOOKUP hits: a 10 s query on a
    # catalogue of tens of hours) is looked up once, as before batches.
    for number, (start, stop) in enumerate(batches):
        _place_by_track(code_frames[start:stop], start, *(found if number == len(batches) - 1 else lookup(start, stop)),
                        payload_bits, first_track, place, hits, offset_bits, lowest)
    tracks = with_hits + first_track
    return PairHits(code_ids, code_weights, code_frames, tracks if numbered is None else numbered[tracks], bounds,
                    hits, offset_bits, lowest, highest)


def _numbered_if_spread(found: tuple[np.ndarray, np.ndarray, np.ndarray], payload_bits: int
                        ) -> tuple[np.ndarray | None, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """A lookup's hits with each track id replaced by its number among the hits' tracks
    (:func:`matcher.voting.dense_track_numbers`) when their ids span more than the hits do;
    the tracks by number (None when the ids are kept)."""
    first_hit, hits_per_code, labels = found
    if not len(labels) or not ids_spread(int(labels.min()) >> payload_bits, int(labels.max()) >> payload_bits,
                                         len(labels)):
        return None, found
    numbers, tracks = dense_track_numbers(labels >> payload_bits)
    return tracks, (first_hit, hits_per_code,
                    (numbers.astype(np.int64) << payload_bits) | (labels & ((1 << payload_bits) - 1)))


def _add_counts(first_track: int, counts: np.ndarray, low_track: int, more: np.ndarray) -> tuple[int, np.ndarray]:
    """Per-track counts from ``first_track`` on, plus ``more`` from ``low_track`` on (either range may be wider)."""
    if not len(more):
        return first_track, counts
    if not len(counts):
        return low_track, more
    begin, end = min(first_track, low_track), max(first_track + len(counts), low_track + len(more))
    if (begin, end) != (first_track, first_track + len(counts)):
        wider = np.zeros(end - begin, np.int64)
        wider[first_track - begin:first_track - begin + len(counts)] = counts
        first_track, counts = begin, wider
    counts[low_track - first_track:low_track - first_track + len(more)] += more
    return first_track, counts


def pair_hits(query: Query, catalogue: Catalogue, tier: PairTier) -> PairHits:
    """The query's pair landmarks looked up (on the candidate tracks, if proposed) once per query window and shared.

    Parameters
    ----------
    query : Query
        The query window; the hits are kept in its ``shared`` results.
    catalogue : Catalogue
        Must hold a pair tier.
    tier : PairTier
        Rarity weighting.

    Returns
    -------
    PairHits
    """
    if PairTier.name not in query.shared:
        index: LandmarkIndex = catalogue.tiers[PairTier.name]
        fp = query.fingerprint
        code_ids, code_weights, entries = weighted_codes(index, fp.hashes, tier)
        looked_up, tracks = fp.hashes[code_ids], query.candidates.get(PairTier.name)
        code_frames = fp.frames[code_ids].astype(np.int64)
        if tracks is None:
            query.shared[PairTier.name] = group_pair_hits(
                code_ids, code_weights, code_frames, entries, index.payload_bits,
                lambda start, stop: lookup_in_store_order(index, looked_up[start:stop]))
        else:
            found = _lookup_in_two_rounds(index, code_ids, code_weights, code_frames, entries, looked_up,
                                          np.asarray(tracks, np.int64), tier)
            query.shared[PairTier.name] = group_pair_hits(code_ids, code_weights, code_frames, None,
                                                          index.payload_bits, lambda start, stop: found)
    return query.shared[PairTier.name]


def _lookup_in_two_rounds(index: LandmarkIndex, code_ids: np.ndarray, code_weights: np.ndarray,
                          code_frames: np.ndarray, entries: np.ndarray, looked_up: np.ndarray, tracks: np.ndarray,
                          tier: PairTier) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The hits of the codes ``looked_up`` on the candidate ``tracks``, the common codes' only on the promising ones.

    See ``PairTier.first_round_entries``. The rarest codes are searched in every candidate
    and scored as the tier scores them (:func:`_best_per_track`); the remaining codes only
    in the candidates that scored ``first_round_min_weight`` or are among the
    ``first_round_tracks`` best. With as few candidates, or codes as rare, the search is one
    round. Returns the lookup of :func:`~matcher.voting.lookup_in_store_order`, code by code
    in the given order.
    """
    rarest_first = stable_order(entries)
    first_round = np.zeros(len(looked_up), np.bool_)
    first_round[rarest_first[np.cumsum(entries[rarest_first]) <= tier.first_round_entries]] = True
    if first_round.all() or len(tracks) <= tier.first_round_tracks:
        return lookup_in_store_order(index, looked_up, tracks)
    early, late = np.flatnonzero(first_round), np.flatnonzero(~first_round)
    found_early = lookup_in_store_order(index, looked_up[early], tracks)
    scored = group_pair_hits(code_ids[early], code_weights[early], code_frames[early], None, index.payload_bits,
                             lambda start, stop: found_early)
    best = _best_per_track(scored.code_weights, scored.bounds, scored.hits, scored.offset_bits, scored.lowest,
                           scored.highest, np.arange(-tier.offset_tolerance, tier.offset_tolerance + 1))
    promising = best >= tier.first_round_min_weight
    promising[strongest_first(best, -np.inf, tier.first_round_tracks)] = True
    found_late = lookup_in_store_order(index, looked_up[late], np.sort(scored.tracks[promising]))
    # One lookup's arrays: both rounds' hits end to end, each code's slice found where its round put it.
    first_hit, hits_per_code = np.zeros(len(looked_up), np.int64), np.zeros(len(looked_up), np.int64)
    first_hit[early], hits_per_code[early] = found_early[0], found_early[1]
    first_hit[late], hits_per_code[late] = found_late[0] + len(found_early[2]), found_late[1]
    return first_hit, hits_per_code, np.concatenate([found_early[2], found_late[2]])


def pair_cells(hits: PairHits, deltas: np.ndarray, searched: np.ndarray | None = None, keep: int | None = None,
               min_weight: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The heaviest (track, time offset) cells that hits vote for, heaviest first, with their neighbourhood weights.

    Scored from the hits grouped by track (:class:`PairHits`): the weights are
    those of :func:`~matcher.voting.neighbourhood_sums` over every hit's vote (sorted by
    track, then offset, ties in code order), to the last bit, without making a vote of any
    hit; and only the best ``keep`` cells are ever held, so that memory does not grow with
    the hits (at 640 catalogue hours a 10 s query's 8 M hits vote for millions of cells).

    Parameters
    ----------
    hits : PairHits
    deltas : np.ndarray of int64
        Offset differences summed together, in the order they are added.
    searched : np.ndarray of bool, optional
        Per track with hits (``hits.tracks``), whether its cells count; all if None.
    keep : int, optional
        How many cells at most; all if None.
    min_weight : float
        Lighter cells are left out.

    Returns
    -------
    tracks, offsets : np.ndarray of int64
        Each cell's, by decreasing weight; equal weights in (track, offset) order.
    summed : np.ndarray of float64
        The rarity weight of the hits whose offset differs from the cell's by one of ``deltas``.
    """
    searched = np.ones(len(hits.tracks), np.bool_) if searched is None else np.asarray(searched, np.bool_)
    keep = len(hits) + 1 if keep is None else keep
    return _best_cells(hits.code_weights, hits.tracks, hits.bounds, hits.hits, hits.offset_bits, hits.lowest,
                       hits.highest, np.asarray(deltas, np.int64), searched, keep, float(min_weight))


def pair_votes_on(hits: PairHits, tracks: np.ndarray) -> PairVotes:
    """The hits on a few tracks as votes: track by track, in code order within each (as :class:`PairHits` holds them).

    Parameters
    ----------
    hits : PairHits
    tracks : np.ndarray of int64
        Sorted, distinct, each with hits.

    Returns
    -------
    PairVotes
        int64 fields, but the weights.
    """
    bounds = hits.bounds
    at = np.searchsorted(hits.tracks, tracks)
    rows = np.concatenate([np.arange(bounds[i], bounds[i + 1]) for i in at] + [np.zeros(0, np.int64)])
    own_codes, own_offsets = hits.codes_and_offsets(rows)
    query_frames = hits.code_frames[own_codes]
    return PairVotes(hits.code_ids[own_codes], np.repeat(np.asarray(tracks, np.int64), bounds[at + 1] - bounds[at]),
                     own_offsets + query_frames, hits.code_weights[own_codes], query_frames, own_offsets)


#: The lowest set bit of a word, by a de Bruijn sequence: ``_LOWEST_BIT[(bit * _DE_BRUIJN) >> 58]`` is ``log2(bit)``.
_DE_BRUIJN = np.uint64(0x03F79D71B4CB0A89)
_LOWEST_BIT = np.zeros(64, np.int64)
_LOWEST_BIT[[((1 << i) * int(_DE_BRUIJN) % (1 << 64)) >> 58 for i in range(64)]] = np.arange(64)


@numba.njit(cache=True, nogil=True)
def _count_by_track(code_frames, first_hit, hits_per_code, labels, payload_bits):
    """How many hits each track has in these codes' slices, and the range of their time offsets.

    Each code's slice is read straight through (:func:`group_pair_hits` places the hits
    likewise), where walking every slice at once track by track read a cache line per
    code and track (the cells of a 1-minute upload's 659,000 hits on 150 tracks: 25 ms, then 6).

    Returns
    -------
    first_track : int
    counts : np.ndarray of int64
        Hits of each track from ``first_track`` on, to the last with hits (empty without hits).
    lowest, highest : int
        The range of the offsets (reference frame - query frame); empty without hits.
    """
    payload_mask = (np.int64(1) << payload_bits) - 1
    # A code's slice is sorted by track: its ends bound its tracks.
    first_track, last_track = np.int64(1) << 62, np.int64(-1)
    for code in range(len(first_hit)):
        if hits_per_code[code]:
            first_track = min(first_track, labels[first_hit[code]] >> payload_bits)
            last_track = max(last_track, labels[first_hit[code] + hits_per_code[code] - 1] >> payload_bits)
    if last_track < 0:
        first_track = 0
    counts = np.zeros(last_track - first_track + 1, np.int64)
    lowest, highest = np.int64(1) << 62, -(np.int64(1) << 62)
    for code in range(len(first_hit)):
        for hit in range(first_hit[code], first_hit[code] + hits_per_code[code]):
            counts[(labels[hit] >> payload_bits) - first_track] += 1
            offset = (labels[hit] & payload_mask) - code_frames[code]
            lowest, highest = min(lowest, offset), max(highest, offset)
    return first_track, counts, lowest, highest


@numba.njit(cache=True, nogil=True)
def _place_by_track(code_frames, first_code, first_hit, hits_per_code, labels, payload_bits, first_track, place,
                    hits, offset_bits, lowest):
    """Place each hit of these codes' slices at ``place`` of its track (advanced), as its code position (counted
    from ``first_code``) and its time offset less ``lowest``, packed (:class:`PairHits`)."""
    payload_mask = (np.int64(1) << payload_bits) - 1
    for code in range(len(first_hit)):
        packed_code = (first_code + code) << offset_bits
        for hit in range(first_hit[code], first_hit[code] + hits_per_code[code]):
            slot = (labels[hit] >> payload_bits) - first_track
            hits[place[slot]] = packed_code | ((labels[hit] & payload_mask) - code_frames[code] - lowest)
            place[slot] += 1


@numba.njit(cache=True, nogil=True)
def _neighbourhood(cell_weight, place, deltas):
    """The weight at ``place`` + each of ``deltas``, added in their order."""
    summed = 0.0
    for delta in deltas:
        summed += cell_weight[place + delta]
    return summed


@numba.njit(cache=True, nogil=True)
def _best_per_track(code_weights, bounds, hits, offset_bits, lowest, highest, deltas):
    """Each track's best neighbourhood weight, from the hits grouped by track (:class:`PairHits`).

    A track's hits add their code's weight into a dense array over time offsets, in
    code order, so each cell's weight is the sum, in the order, that
    :func:`~matcher.voting.neighbourhood_sums` makes of the same votes sorted by (track,
    cell) with a stable sort; likewise each cell's neighbourhood sum, in the order of
    ``deltas`` (a neighbour without votes adds 0.0, which changes no sum of positive
    weights). The values are therefore the same to the last bit.

    Returns
    -------
    np.ndarray of float64
        Each track's largest neighbourhood sum (``neighbourhood_sums``' ``best``).
    """
    reach = np.max(np.abs(deltas)) if len(deltas) else 0
    cell_weight = np.zeros(highest - lowest + 1 + 2 * reach, np.float64)
    # A hit's place in cell_weight is its offset less lowest (as packed), plus reach.
    mask = (np.int64(1) << offset_bits) - 1
    best = np.empty(len(bounds) - 1, np.float64)
    for t in range(len(best)):
        for j in range(bounds[t], bounds[t + 1]):
            packed = np.int64(hits[j])
            cell_weight[(packed & mask) + reach] += code_weights[packed >> offset_bits]
        top = -np.inf
        for j in range(bounds[t], bounds[t + 1]):
            top = max(top, _neighbourhood(cell_weight, (np.int64(hits[j]) & mask) + reach, deltas))
        for j in range(bounds[t], bounds[t + 1]):
            cell_weight[(np.int64(hits[j]) & mask) + reach] = 0.0
        best[t] = top
    return best


@numba.njit(cache=True, nogil=True)
def _heaviest_first(tracks, offsets, summed, count, keep):
    """Reorder the first ``count`` cells by decreasing weight (a stable sort: ties keep their order) and keep
    ``keep`` of them; returns how many are kept."""
    order = np.argsort(-summed[:count], kind="mergesort")[:keep]
    kept = len(order)
    tracks[:kept], offsets[:kept], summed[:kept] = tracks[order], offsets[order], summed[order]
    return kept


@numba.njit(cache=True, nogil=True)
def _best_cells(code_weights, hit_tracks, bounds, hits, offset_bits, lowest, highest, deltas, searched, keep,
                min_weight):
    """The ``keep`` heaviest (track, time offset) cells of the searched tracks, and their neighbourhood weights.

    Each cell's weight is :func:`~matcher.voting.neighbourhood_sums`' over every hit's vote
    sorted by (track, offset) with a stable sort, to the last bit (the argument of
    :func:`_best_per_track`, whose dense array this fills alike from the hits grouped by
    track). A track's cells are read off in offset order from a bit set of the places its
    hits touched, a word of 64 offsets at a time (scanning the dense array itself cost
    ~1.6 ns per offset of a track's range, sorting its hits' places ~60 ns per hit). Cells
    enter a buffer of ``2 * keep``; a full buffer is cut to its ``keep`` heaviest, whose
    lightest weight a later cell must then exceed: cells come in (track, offset) order, so
    of equal weights the earlier one stays, as in the final order.

    Returns
    -------
    tracks, offsets : np.ndarray of int64
        Each cell's, by decreasing weight, ties in (track, offset) order.
    summed : np.ndarray of float64
        Each cell's weight within ``deltas`` (added in their order).
    """
    reach = np.max(np.abs(deltas)) if len(deltas) else 0
    cell_weight = np.zeros(highest - lowest + 1 + 2 * reach, np.float64)
    mask = (np.int64(1) << offset_bits) - 1   # places in cell_weight as in _best_per_track
    touched = np.zeros(len(cell_weight) // 64 + 1, np.uint64)
    room = min(2 * keep, len(hits)) + 1
    tracks, offsets, summed = np.empty(room, np.int64), np.empty(room, np.int64), np.empty(room, np.float64)
    count = 0
    floor, strict = min_weight, False   # a cell enters when its weight reaches floor (exceeds it, once cut)
    for t in range(len(hit_tracks)):
        if not searched[t]:
            continue
        begin, end = bounds[t], bounds[t + 1]
        track = hit_tracks[t]
        first = last = (np.int64(hits[begin]) & mask) + reach
        for j in range(begin, end):
            packed = np.int64(hits[j])
            place = (packed & mask) + reach
            cell_weight[place] += code_weights[packed >> offset_bits]
            touched[place >> 6] |= np.uint64(1) << np.uint64(place & 63)
            first, last = min(first, place), max(last, place)
        for word_index in range(first >> 6, (last >> 6) + 1):
            word = touched[word_index]
            touched[word_index] = 0
            while word:
                bit = word & (~word + np.uint64(1))
                word ^= bit
                place = word_index * 64 + _LOWEST_BIT[(bit * _DE_BRUIJN) >> np.uint64(58)]
                weight = _neighbourhood(cell_weight, place, deltas)
                if weight > floor or (weight == floor and not strict):
                    tracks[count], offsets[count], summed[count] = track, place - reach + lowest, weight
                    count += 1
                    if count == room:
                        count = _heaviest_first(tracks, offsets, summed, count, keep)
                        floor, strict = summed[count - 1], True
        for j in range(begin, end):
            cell_weight[(np.int64(hits[j]) & mask) + reach] = 0.0
    count = _heaviest_first(tracks, offsets, summed, count, keep)
    return tracks[:count], offsets[:count], summed[:count]


def pair_alignments_of_hits(hits: PairHits, params: PairTier) -> list[Alignment]:
    """:func:`pair_alignments` of every hit, with votes made only for the tracks that can align.

    Only the tracks whose best offset makes the first round's cut (the strongest
    ``max_candidates`` reaching ``min_score``) ever align, and a track's choice depends on
    its own votes alone: their best neighbourhood weights are scored from the hits grouped
    by track (:func:`_best_per_track`), then only their votes are made and aligned. The
    alignments are those of :func:`pair_alignments` over every vote, hit for hit.

    Parameters
    ----------
    hits : PairHits
    params : PairTier

    Returns
    -------
    list of Alignment
    """
    # No early return without hits: a warm-up query (few hits or none) compiles every kernel.
    tol = params.offset_tolerance
    best = _best_per_track(hits.code_weights, hits.bounds, hits.hits, hits.offset_bits, hits.lowest, hits.highest,
                           np.arange(-tol, tol + 1))
    # best_cells_per_track's choice of tracks.
    strongest = strongest_first(best, params.min_score, params.max_candidates)
    votes = pair_votes_on(hits, np.sort(hits.tracks[strongest]))
    return pair_alignments(votes[vote_order(votes.track_ids, votes.offsets + _OFFSET_BIAS)], params)


def pair_alignments(votes: PairVotes, params: PairTier) -> list[Alignment]:
    """Alignments of the query with catalogue tracks it copies without tempo or pitch change.

    Each hit votes for (track, reference frame - query frame); for every track the
    best offset (within ``offset_tolerance``) is taken, its hits removed, and the
    search repeated up to ``max_alignments`` times so that a section used several
    times yields several alignments.

    Parameters
    ----------
    votes : PairVotes
        The query's pair-tier hits, sorted by track, then offset (:func:`~matcher.voting.vote_order`).
    params : PairTier

    Returns
    -------
    list of Alignment
        With ``time_ratio = 1`` and ``pitch_bins = 0``.
    """
    if len(votes) == 0:
        return []
    query_ids, track_ids, ref_frames, hit_weights, query_frames, offsets = (
        votes.query_ids, votes.track_ids, votes.ref_frames, votes.weights, votes.query_frames, votes.offsets)
    tol = params.offset_tolerance

    alignments = []
    active = np.ones(len(track_ids), dtype=bool)
    for _ in range(params.max_alignments):
        remaining = np.nonzero(active)[0]
        best = best_cells_per_track(track_ids[remaining], offsets[remaining] + _OFFSET_BIAS,
                                   hit_weights[remaining], np.arange(-tol, tol + 1),
                                   params.min_score, params.max_candidates)
        if not best:
            break
        for track_id, (cell,) in best:
            offset = cell - _OFFSET_BIAS
            first, last = np.searchsorted(track_ids, [track_id, track_id + 1])
            own = np.arange(first, last)[active[first:last]]
            hits = own[np.abs(offsets[own] - offset) <= tol]
            active[hits] = False
            alignments.append(Alignment(track_id, "pair", 1.0, float(offset), 0.0, query_frames[hits],
                                        ref_frames[hits], query_ids[hits], hit_weights[hits]))
        # Only tracks that just aligned can align again (a looped or re-used section).
        active &= np.isin(track_ids, [track_id for track_id, _ in best])
    return alignments

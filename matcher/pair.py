"""Pair tier: exact copies, excerpts and copies under other audio.

Pair landmarks (two spectral peaks and their distance) of the query are looked up
and each hit votes for (track, reference frame - query frame); a copy's hits agree
on one constant time offset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import AbstractSet, ClassVar

import numba
import numpy as np

from refrain.index.landmarks import LandmarkIndex
from refrain.matcher.landmarks import LandmarkTierParams, landmark_matches
from refrain.matcher.types import Alignment, Calibration, Catalogue, Match, Query, ShortQueryTail
from refrain.matcher.voting import best_cells_per_track, split_vote_keys, vote_order, weighted_lookup

__all__ = ["PairTier", "PairVotes", "PairHits", "pair_votes", "pair_hits", "pair_alignments_of_hits"]

#: Offsets are signed; vote cells must be non-negative.
_OFFSET_BIAS = 1 << 31


@dataclass(frozen=True)
class PairTier(LandmarkTierParams):
    """The pair tier and its parameters (those of :class:`~matcher.landmarks.LandmarkTierParams`, and:).

    Attributes
    ----------
    offset_tolerance : int
        Votes within this many frames of the best offset are aligned (default 1).
    calibration : Calibration
        Chance that unrelated music reaches a pair score (``bench/calibrate.py``).
    """

    name: ClassVar[str] = "pair"
    offset_tolerance: int = 1
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
    """Pair-tier hits of one query as votes (six numbers each), sorted by (track, time offset).

    The pair tier makes them only for the tracks that can align (:func:`pair_alignments_of_hits`);
    every hit's vote is made once per query window, on demand, for the peaks tier
    (:mod:`matcher.peaks`), which takes its weak candidates from them (:func:`pair_votes`).
    """

    query_ids: np.ndarray    # the query landmark of each hit
    track_ids: np.ndarray
    ref_frames: np.ndarray
    weights: np.ndarray      # rarity weight of each hit (float64)
    query_frames: np.ndarray
    offsets: np.ndarray      # ref_frames - query_frames
    # The integer fields are int64, or int32 in :func:`pair_votes`' votes of every hit.

    def __len__(self) -> int:
        return len(self.track_ids)

    def cells(self) -> np.ndarray:
        """Non-negative vote cell of each hit (int64): its offset, biased."""
        return self.offsets.astype(np.int64) + _OFFSET_BIAS

    @staticmethod
    def track_offsets(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(track ids, time offsets in frames) of vote keys made from :meth:`cells`."""
        tracks, cells = split_vote_keys(keys)
        return tracks, cells - _OFFSET_BIAS


def pair_votes(query: Query, catalogue: Catalogue, tier: PairTier) -> PairVotes:
    """All of the query's pair-tier votes, sorted by (track, time offset), made once per query window and shared.

    The pair tier itself does not need them (:func:`pair_alignments_of_hits` reads the
    hits in place); the peaks tier takes its candidates from them.

    Parameters
    ----------
    query : Query
        The query window; the votes are kept in its ``shared`` results.
    catalogue : Catalogue
        Must hold a pair tier.
    tier : PairTier
        Rarity weighting (of the hits, if they were not looked up yet).

    Returns
    -------
    PairVotes
    """
    if _ALL_VOTES not in query.shared:
        hits = pair_hits(query, catalogue, tier)
        query.shared[_ALL_VOTES] = PairVotes(*_sorted_votes(
            hits.code_ids, hits.code_weights, hits.code_frames, hits.first_hit, hits.hits_per_code, hits.labels,
            hits.payload_bits))
    return query.shared[_ALL_VOTES]


@dataclass(frozen=True)
class PairHits:
    """The query's pair-tier hits as the index returned them: per looked-up code, one slice of entry ids.

    Eight bytes per hit (the entry id) and a few arrays per code: the pair tier scores
    them in place (:func:`pair_alignments_of_hits`) instead of making votes of them.
    Within a code's slice the hits are sorted by track (the store's runs are, see
    :mod:`index.landmarks`).
    """

    code_ids: np.ndarray       # which query landmarks were looked up, in increasing order
    code_weights: np.ndarray   # the rarity weight of each
    code_frames: np.ndarray    # the query frame of each
    first_hit: np.ndarray      # where each code's hits start in ``labels``
    hits_per_code: np.ndarray
    labels: np.ndarray         # every hit's entry id, ``track_id << payload_bits | reference frame``
    payload_bits: int

    def __len__(self) -> int:
        return int(self.hits_per_code.sum())


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
        code_ids, code_weights, first_hit, hits_per_code, labels = weighted_lookup(
            index, fp.hashes, tier, query.candidates.get(PairTier.name))
        query.shared[PairTier.name] = PairHits(code_ids, code_weights, fp.frames[code_ids].astype(np.int64),
                                               first_hit, hits_per_code, labels, index.payload_bits)
    return query.shared[PairTier.name]


#: Key of the query's :class:`PairVotes` in ``Query.shared`` (its :class:`PairHits` are under the tier's name).
_ALL_VOTES = "pair votes"
#: A code whose hits are all read: past every track id.
_NO_TRACK = np.int64(1) << 62


@numba.njit(cache=True, nogil=True)
def _offset_range(code_frames, first_hit, hits_per_code, labels, payload_bits):
    """(lowest, highest) time offset of any hit; (0, -1) without hits."""
    payload_mask = (np.int64(1) << payload_bits) - 1
    lowest, highest = np.int64(1) << 62, -(np.int64(1) << 62)
    for code in range(len(first_hit)):
        for hit in range(first_hit[code], first_hit[code] + hits_per_code[code]):
            offset = (labels[hit] & payload_mask) - code_frames[code]
            lowest, highest = min(lowest, offset), max(highest, offset)
    if highest < lowest:
        return np.int64(0), np.int64(-1)
    return lowest, highest


@numba.njit(cache=True, nogil=True)
def _next_track(labels, payload_bits, cursor, stop, next_track, track, involved, begin):
    """Move each code's cursor past its hits on ``track`` (the smallest track any cursor is at).

    The codes with hits on it are listed in ``involved`` (in code order), their hits on it
    being ``labels[begin[code]:cursor[code]]``. Returns how many codes are involved and
    the next track any cursor is at (``_NO_TRACK`` when every code's hits are read).
    """
    involved_count = 0
    following = _NO_TRACK
    for code in range(len(cursor)):
        if next_track[code] == track:
            involved[involved_count] = code
            involved_count += 1
            begin[code] = hit = cursor[code]
            while hit < stop[code] and (labels[hit] >> payload_bits) == track:
                hit += 1
            cursor[code] = hit
            next_track[code] = (labels[hit] >> payload_bits) if hit < stop[code] else _NO_TRACK
            if next_track[code] < track:
                raise ValueError("a code's hits are not sorted by track")
        following = min(following, next_track[code])
    return involved_count, following


@numba.njit(cache=True, nogil=True)
def _start_merge(labels, payload_bits, first_hit, hits_per_code):
    """Cursors for walking every code's hits track by track: (cursor, stop, next_track, first track)."""
    cursor = first_hit.copy()
    stop = first_hit + hits_per_code
    next_track = np.empty(len(first_hit), np.int64)
    first = _NO_TRACK
    for code in range(len(first_hit)):
        next_track[code] = (labels[cursor[code]] >> payload_bits) if hits_per_code[code] else _NO_TRACK
        first = min(first, next_track[code])
    return cursor, stop, next_track, first


@numba.njit(cache=True, nogil=True)
def _best_per_track(code_weights, code_frames, first_hit, hits_per_code, labels, payload_bits, deltas):
    """Each track's best neighbourhood weight, from the hits in place: no array per hit.

    The tracks are walked in increasing order, every code's slice at once (each is
    sorted by track); a track's hits add their code's weight into a dense array over time
    offsets, in code order, so each cell's weight is the sum, in the order, that
    :func:`~matcher.voting.neighbourhood_sums` makes of the same votes sorted by (track,
    cell) with a stable sort; likewise each cell's neighbourhood sum, in the order of
    ``deltas``. The values are therefore the same to the last bit.

    Returns
    -------
    tracks : np.ndarray of int64
        The tracks with hits, increasing.
    best : np.ndarray of float64
        Each one's largest neighbourhood sum (``neighbourhood_sums``' ``best``).
    """
    payload_mask = (np.int64(1) << payload_bits) - 1
    lowest, highest = _offset_range(code_frames, first_hit, hits_per_code, labels, payload_bits)
    reach = np.max(np.abs(deltas)) if len(deltas) else 0
    cell_weight = np.zeros(highest - lowest + 1 + 2 * reach, np.float64)
    base = reach - lowest    # an offset's place in cell_weight
    cursor, stop, next_track, track = _start_merge(labels, payload_bits, first_hit, hits_per_code)
    own_cells = np.empty(1024, np.int64)   # the current track's hits' places in cell_weight
    tracks = np.empty(1024, np.int64)
    best = np.empty(1024, np.float64)
    count = 0
    while track != _NO_TRACK:
        # Every code's hits on this track, in code order (as _next_track walks them, fused
        # with adding their weights: each hit is read once).
        own = 0
        following = _NO_TRACK
        for code in range(len(cursor)):
            if next_track[code] == track:
                weight, base_of_code = code_weights[code], base - code_frames[code]
                hit = cursor[code]
                while hit < stop[code] and (labels[hit] >> payload_bits) == track:
                    cell = (labels[hit] & payload_mask) + base_of_code
                    cell_weight[cell] += weight
                    if own == len(own_cells):
                        own_cells = np.concatenate((own_cells, np.empty(own, np.int64)))
                    own_cells[own] = cell
                    own += 1
                    hit += 1
                cursor[code] = hit
                next_track[code] = (labels[hit] >> payload_bits) if hit < stop[code] else _NO_TRACK
                if next_track[code] < track:
                    raise ValueError("a code's hits are not sorted by track")
            following = min(following, next_track[code])
        top = -np.inf
        for j in range(own):
            summed = 0.0
            for delta in deltas:
                summed += cell_weight[own_cells[j] + delta]
            top = max(top, summed)
        for j in range(own):
            cell_weight[own_cells[j]] = 0.0
        if count == len(tracks):
            tracks, best = np.concatenate((tracks, np.empty(count, np.int64))), np.concatenate(
                (best, np.empty(count, np.float64)))
        tracks[count], best[count] = track, top
        count += 1
        track = following
    return tracks[:count].copy(), best[:count].copy()


@numba.njit(cache=True, nogil=True)
def _radix_sorted(keys, spare, count, low_bit, bits):
    """``keys[:count]`` stably sorted by their bits ``low_bit`` to ``low_bit + bits``, a byte at a time.

    ``spare`` is as long as ``keys``; returns (sorted, the other buffer).
    """
    for shift in range(low_bit, low_bit + bits, 8):
        histogram = np.zeros(257, np.int64)
        for i in range(count):
            histogram[((keys[i] >> shift) & 0xFF) + 1] += 1
        for digit in range(256):
            histogram[digit + 1] += histogram[digit]
        for i in range(count):
            digit = (keys[i] >> shift) & 0xFF
            spare[histogram[digit]] = keys[i]
            histogram[digit] += 1
        keys, spare = spare, keys
    return keys, spare


@numba.njit(cache=True, nogil=True)
def _sorted_votes(code_ids, code_weights, code_frames, first_hit, hits_per_code, labels, payload_bits):
    """Every hit as a vote, sorted by (track, time offset), ties in code order: :class:`PairVotes`' fields.

    Made track by track (every code's slice is sorted by track): a track's hits, gathered in
    code order as (offset, code) pairs packed in one integer (a hit's vote follows from
    them), are sorted by offset with a stable radix sort. No array per hit is made beyond
    the votes themselves.

    Returns
    -------
    query_ids, track_ids, ref_frames, weights, query_frames, offsets : np.ndarray
        int32, but the weights (float64).
    """
    payload_mask = (np.int64(1) << payload_bits) - 1
    count = hits_per_code.sum()
    # Every hit's: four bytes where they suffice (track ids lie below 2 ** 26, frames far below 2 ** 31).
    query_ids, track_ids = np.empty(count, np.int32), np.empty(count, np.int32)
    ref_frames, frames = np.empty(count, np.int32), np.empty(count, np.int32)
    offsets, weights = np.empty(count, np.int32), np.empty(count, np.float64)
    lowest, highest = _offset_range(code_frames, first_hit, hits_per_code, labels, payload_bits)
    cursor, stop, next_track, track = _start_merge(labels, payload_bits, first_hit, hits_per_code)
    involved = np.empty(len(first_hit), np.int64)
    begin = np.empty(len(first_hit), np.int64)
    own_keys = np.empty(1024, np.int64)   # (offset - lowest) << 32 | code, of the current track's hits
    spare = np.empty(1024, np.int64)
    offset_bits = 0
    while (highest - lowest) >> offset_bits > 0:   # no hits: highest < lowest, no bits (and no endless shift of -1)
        offset_bits += 1
    vote = 0
    while track != _NO_TRACK:
        involved_count, following = _next_track(labels, payload_bits, cursor, stop, next_track, track,
                                                involved, begin)
        own = 0
        for j in range(involved_count):
            own += cursor[involved[j]] - begin[involved[j]]
        if own > len(own_keys):
            own_keys, spare = np.empty(2 * own, np.int64), np.empty(2 * own, np.int64)
        own = 0
        for j in range(involved_count):
            code = involved[j]
            for hit in range(begin[code], cursor[code]):
                own_keys[own] = (((labels[hit] & payload_mask) - code_frames[code] - lowest) << 32) | code
                own += 1
        own_keys, spare = _radix_sorted(own_keys, spare, own, 32, offset_bits)
        for key in own_keys[:own]:
            code = key & 0xFFFFFFFF
            offset = (key >> 32) + lowest
            query_ids[vote], weights[vote], frames[vote] = code_ids[code], code_weights[code], code_frames[code]
            track_ids[vote], ref_frames[vote], offsets[vote] = track, offset + code_frames[code], offset
            vote += 1
        track = following
    return query_ids, track_ids, ref_frames, weights, frames, offsets


@numba.njit(cache=True, nogil=True)
def _votes_in_code_order(code_weights, code_frames, first_hit, hits_per_code, labels, payload_bits, tracks):
    """The hits on ``tracks`` (sorted, distinct) as votes, in code order.

    Each code's hits on a track are found by binary search in its slice (sorted by track).

    Returns
    -------
    code_positions, track_ids, ref_frames, weights, query_frames, offsets : np.ndarray
        One row per hit; ``code_positions`` index the looked-up codes.
    """
    payload_mask = (np.int64(1) << payload_bits) - 1
    bounds = np.empty((len(first_hit), len(tracks), 2), np.int64)
    count = 0
    for code in range(len(first_hit)):
        low, end = first_hit[code], first_hit[code] + hits_per_code[code]
        for t in range(len(tracks)):
            for side in range(2):
                wanted, high = tracks[t] + side, end
                while low < high:
                    middle = (low + high) // 2
                    if (labels[middle] >> payload_bits) < wanted:
                        low = middle + 1
                    else:
                        high = middle
                bounds[code, t, side] = low
            count += bounds[code, t, 1] - bounds[code, t, 0]
    code_positions, track_ids = np.empty(count, np.int64), np.empty(count, np.int64)
    ref_frames, frames = np.empty(count, np.int64), np.empty(count, np.int64)
    offsets, weights = np.empty(count, np.int64), np.empty(count, np.float64)
    vote = 0
    for code in range(len(first_hit)):
        for t in range(len(tracks)):
            for hit in range(bounds[code, t, 0], bounds[code, t, 1]):
                code_positions[vote], weights[vote], frames[vote] = code, code_weights[code], code_frames[code]
                track_ids[vote], ref_frames[vote] = tracks[t], labels[hit] & payload_mask
                offsets[vote] = ref_frames[vote] - frames[vote]
                vote += 1
    return code_positions, track_ids, ref_frames, weights, frames, offsets


def pair_alignments_of_hits(hits: PairHits, params: PairTier) -> list[Alignment]:
    """:func:`pair_alignments` of every hit, with votes made only for the tracks that can align.

    Only the tracks whose best offset makes the first round's cut (the strongest
    ``max_candidates`` reaching ``min_score``) ever align, and a track's choice depends on
    its own votes alone: their best neighbourhood weights are scored from the hits in
    place (:func:`_best_per_track`), then only their votes are made and aligned. The
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
    tracks, best = _best_per_track(hits.code_weights, hits.code_frames, hits.first_hit, hits.hits_per_code,
                                   hits.labels, hits.payload_bits, np.arange(-tol, tol + 1))
    # best_cells_per_track's choice of tracks: strongest first, ties by track, down to min_score.
    strongest = np.argsort(-best, kind="stable")[:params.max_candidates]
    chosen = np.sort(tracks[strongest[best[strongest] >= params.min_score]])
    code_positions, track_ids, ref_frames, weights, query_frames, offsets = _votes_in_code_order(
        hits.code_weights, hits.code_frames, hits.first_hit, hits.hits_per_code, hits.labels, hits.payload_bits,
        chosen)
    order = vote_order(track_ids, offsets + _OFFSET_BIAS)
    votes = PairVotes(hits.code_ids[code_positions[order]], track_ids[order], ref_frames[order], weights[order],
                      query_frames[order], offsets[order])
    return pair_alignments(votes, params)


def pair_alignments(votes: PairVotes, params: PairTier) -> list[Alignment]:
    """Alignments of the query with catalogue tracks it copies without tempo or pitch change.

    Each hit votes for (track, reference frame - query frame); for every track the
    best offset (within ``offset_tolerance``) is taken, its hits removed, and the
    search repeated up to ``max_alignments`` times so that a section used several
    times yields several alignments.

    Parameters
    ----------
    votes : PairVotes
        The query's pair-tier hits (:func:`pair_votes`).
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

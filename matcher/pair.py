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

from refrain.fingerprint import Fingerprint
from refrain.index.landmarks import LandmarkIndex
from refrain.matcher.landmarks import LandmarkTierParams, landmark_matches
from refrain.matcher.types import Alignment, Calibration, Catalogue, Match, Query, ShortQueryTail
from refrain.matcher.voting import best_cells_per_track, split_vote_keys, vote_order, weighted_lookup

__all__ = ["PairTier", "PairVotes", "pair_votes"]

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
        votes = pair_votes(query, catalogue, self)
        alignments = [a for a in pair_alignments(votes, self)
                      if a.track_id not in skip and catalogue.reportable(a.track_id)]
        return landmark_matches(alignments, query, catalogue, self, self.calibration, query.fingerprint.frames)


@dataclass(frozen=True)
class PairVotes:
    """The pair tier's hits of one query, sorted by (track, time offset).

    Computed once per query window (:func:`pair_votes`): the pair tier aligns on
    them, and the peaks tier (:mod:`matcher.peaks`) takes its weak candidates from the
    same votes.
    """

    query_ids: np.ndarray    # the query landmark of each hit
    track_ids: np.ndarray
    ref_frames: np.ndarray
    weights: np.ndarray      # rarity weight of each hit
    query_frames: np.ndarray
    offsets: np.ndarray      # ref_frames - query_frames

    def __len__(self) -> int:
        return len(self.track_ids)

    def cells(self) -> np.ndarray:
        """Non-negative vote cell of each hit: its offset, biased."""
        return self.offsets + _OFFSET_BIAS

    @staticmethod
    def track_offsets(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(track ids, time offsets in frames) of vote keys made from :meth:`cells`."""
        tracks, cells = split_vote_keys(keys)
        return tracks, cells - _OFFSET_BIAS


def pair_votes(query: Query, catalogue: Catalogue, tier: PairTier) -> PairVotes:
    """The query's pair-tier votes, looked up once per query window and shared.

    Parameters
    ----------
    query : Query
        The query window; the votes are kept in its ``shared`` results.
    catalogue : Catalogue
        Must hold a pair tier.
    tier : PairTier
        Rarity weighting.

    Returns
    -------
    PairVotes
    """
    if PairTier.name not in query.shared:
        query.shared[PairTier.name] = _lookup_votes(query.fingerprint, catalogue.tiers[PairTier.name], tier,
                                                    query.candidates.get(PairTier.name))
    return query.shared[PairTier.name]


def _lookup_votes(fp: Fingerprint, index: LandmarkIndex, params: PairTier,
                  candidates: np.ndarray | None) -> PairVotes:
    """Look the query's pair landmarks up (on the candidate tracks) and sort the hits by (track, offset)."""
    query_ids, track_ids, ref_frames, weights, query_frames, offsets = _votes_in_code_order(
        *weighted_lookup(index, fp.hashes, params, candidates), index.payload_bits, fp.frames)
    order = vote_order(track_ids, offsets + _OFFSET_BIAS)
    return PairVotes(query_ids[order], track_ids[order], ref_frames[order], weights[order],
                     query_frames[order], offsets[order])


@numba.njit(cache=True, nogil=True)
def _votes_in_code_order(code_ids, code_weights, first_hit, hits_per_code, labels, payload_bits, query_frames):
    """Each hit of a :func:`~matcher.voting.weighted_lookup` as a vote, in code order.

    Returns
    -------
    query_ids, track_ids, ref_frames, weights, query_frames, offsets : np.ndarray
        One row per hit; a pair entry's payload is its reference frame.
    """
    count = hits_per_code.sum()
    query_ids, track_ids = np.empty(count, np.int64), np.empty(count, np.int64)
    ref_frames, frames = np.empty(count, np.int64), np.empty(count, np.int64)
    offsets, weights = np.empty(count, np.int64), np.empty(count, np.float64)
    payload_mask = (np.int64(1) << payload_bits) - 1
    vote = 0
    for code in range(len(code_ids)):
        query_frame = np.int64(query_frames[code_ids[code]])
        for hit in range(first_hit[code], first_hit[code] + hits_per_code[code]):
            query_ids[vote], weights[vote], frames[vote] = code_ids[code], code_weights[code], query_frame
            track_ids[vote], ref_frames[vote] = labels[hit] >> payload_bits, labels[hit] & payload_mask
            offsets[vote] = ref_frames[vote] - query_frame
            vote += 1
    return query_ids, track_ids, ref_frames, weights, frames, offsets


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

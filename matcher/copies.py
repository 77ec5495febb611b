"""Exact-copy tier: pair landmarks that agree on one constant time offset."""

from __future__ import annotations

import numpy as np

from fingerprint import Fingerprint
from index.landmarks import LandmarkIndex
from matcher.types import Alignment, MatchParams
from matcher.voting import best_cell_per_track, rarity_weights

__all__ = ["copy_alignments"]

_OFFSET_BIAS = 1 << 31  # offsets are signed; vote cells must be non-negative


def copy_alignments(fp: Fingerprint, tier: LandmarkIndex, params: MatchParams) -> list[Alignment]:
    """Alignments of the query with catalogue tracks it copies without tempo or pitch change.

    Each hit votes for (track, reference frame - query frame); for every track the
    best offset (within ``offset_tolerance``) is taken, its hits removed, and the
    search repeated up to ``max_alignments`` times so that a section used several
    times yields several alignments.

    Parameters
    ----------
    fp : Fingerprint
        The query.
    tier : LandmarkIndex
        The pair tier of the catalogue.
    params : MatchParams

    Returns
    -------
    list of Alignment
        With ``time_ratio = 1`` and ``pitch_bins = 0``.
    """
    query_ids, track_ids, ref_frames = tier.lookup(fp.hashes)
    if len(track_ids) == 0:
        return []
    code_weights = rarity_weights(query_ids, len(fp.hashes), tier.ntotal, params)
    hit_weights = code_weights[query_ids]
    keep = hit_weights >= params.min_hash_weight
    query_ids, track_ids, ref_frames, hit_weights = \
        query_ids[keep], track_ids[keep], ref_frames[keep], hit_weights[keep]
    query_frames = fp.frames[query_ids].astype(np.int64)
    offsets = ref_frames - query_frames
    tol = params.offset_tolerance

    alignments = []
    active = np.arange(len(track_ids))
    for _ in range(params.max_alignments):
        best = best_cell_per_track(track_ids[active], offsets[active] + _OFFSET_BIAS,
                                   hit_weights[active], np.arange(-tol, tol + 1), params.min_score)
        if not best:
            break
        used = np.zeros(len(track_ids), dtype=bool)
        for track_id, cell in best:
            offset = cell - _OFFSET_BIAS
            hits = active[(track_ids[active] == track_id) & (np.abs(offsets[active] - offset) <= tol)]
            used[hits] = True
            alignments.append(Alignment(track_id, "pair", 1.0, float(offset), 0.0, query_frames[hits],
                                        ref_frames[hits], query_ids[hits], hit_weights[hits]))
        # Only tracks that just aligned can align again; the rest had their chance.
        aligned_tracks = np.array([track_id for track_id, _ in best])
        active = active[~used[active] & np.isin(track_ids[active], aligned_tracks)]
    return alignments

"""Derivative tier: triplet landmarks that agree on one tempo ratio, pitch shift and time line.

A triplet code survives a speed change, a pitch shift or a time-stretch, and each
hit measures the change: the tempo ratio is the reference span over the query
span of the triplet, the pitch shift the difference of the anchors' log-frequency
bins. Hits vote in (tempo ratio, pitch shift) cells; the best cell's hits then
vote for the time line ``ref = offset + ratio * query``, which a least-squares
fit refines.
"""

from __future__ import annotations

import numpy as np

from fingerprint import Fingerprint, FingerprintParams
from fingerprint.hashes import hash_triplets, query_triplets, unpack_triplet_payloads
from index.landmarks import LandmarkIndex
from matcher.types import Alignment, MatchParams
from matcher.voting import best_cells_per_track, vote_order, weighted_lookup

__all__ = ["derivative_alignments"]

_CELL_CENTRE = 128   # ratio and pitch cells are stored with this bias (non-negative)
_PITCH_STRIDE = 256  # cell = ratio_cell * stride + pitch_cell
_NEIGHBOURS_2D = np.array([dr * _PITCH_STRIDE + dp for dr in (-1, 0, 1) for dp in (-1, 0, 1)])
# The time-line fit's first inliers lie within this many frames of the densest offset,
# which a 3 % ratio error over a 10 s query moves by about 10 frames.
_FIRST_INLIER_REACH = 10.0


def derivative_alignments(fp: Fingerprint, tier: LandmarkIndex, params: MatchParams,
                          fingerprint_params: FingerprintParams) -> list[Alignment]:
    """Alignments of the query with catalogue tracks, allowing tempo and pitch changes.

    Parameters
    ----------
    fp : Fingerprint
        The query.
    tier : LandmarkIndex
        The triplet tier of the catalogue.
    params : MatchParams
    fingerprint_params : FingerprintParams
        The catalogue's settings: the query's triplets are built with its zones.

    Returns
    -------
    list of Alignment
    """
    fpp = fingerprint_params
    bins_per_semitone = fpp.bins_per_octave / 12.0
    triplets = query_triplets(fp.peaks, fpp.triplet_near_zone, fpp.triplet_far_zone,
                              fpp.triplet_per_zone, fpp.triplet_df_max, params.tempo_hypotheses)
    if len(triplets) == 0:
        return []
    codes, rows = hash_triplets(triplets, tolerant=True,
                                pitch_reach_bins=params.max_pitch_shift_semitones * bins_per_semitone)
    code_ids, track_ids, payloads, hit_weights = weighted_lookup(tier, codes, params)
    if len(track_ids) == 0:
        return []
    query_ids = rows[code_ids]
    ref_frames, ref_bins, ref_spans = unpack_triplet_payloads(payloads)
    ratio = ref_spans / triplets.dt_13[query_ids]
    pitch = triplets.anchor_positions[query_ids] - ref_bins
    plausible = (ratio >= params.min_time_ratio) & (ratio <= params.max_time_ratio) \
        & (np.abs(pitch) <= params.max_pitch_shift_semitones * bins_per_semitone)
    # Positions, not the mask itself, select from each array: masking is several times slower.
    plausible = np.flatnonzero(plausible)
    if len(plausible) == 0:
        return []
    # The votes need each plausible hit's track, cells and weight; the other quantities
    # are taken below for the strongest tracks' hits only.
    track_ids, ratio, pitch, hit_weights = (a[plausible] for a in (track_ids, ratio, pitch, hit_weights))
    ratio_cells = np.round(np.log(ratio) / params.ratio_bin).astype(np.int64) + _CELL_CENTRE
    pitch_cells = np.round(pitch).astype(np.int64) + _CELL_CENTRE
    cells = ratio_cells * _PITCH_STRIDE + pitch_cells
    # Only the strongest tracks' hits go on to the sort and the per-cell search below.
    is_contender = np.zeros(int(track_ids.max()) + 1, dtype=bool)
    is_contender[_strongest_tracks(track_ids, ratio_cells, pitch_cells, hit_weights, params)] = True
    contenders = np.flatnonzero(is_contender[track_ids])
    order = contenders[vote_order(track_ids[contenders], cells[contenders])]
    track_ids, ratio, pitch, hit_weights, cells = (a[order] for a in (track_ids, ratio, pitch, hit_weights, cells))
    query_ids, ref_frames = (a[plausible[order]] for a in (query_ids, ref_frames))
    query_frames = triplets.anchor_frames[query_ids].astype(np.int64)
    ratio_cells, pitch_cells = cells // _PITCH_STRIDE, cells % _PITCH_STRIDE

    alignments = []
    active = np.ones(len(track_ids), dtype=bool)
    for _ in range(params.max_alignments):
        remaining = np.nonzero(active)[0]
        best = best_cells_per_track(track_ids[remaining], cells[remaining], hit_weights[remaining],
                                    _NEIGHBOURS_2D, params.triplet_min_score, params.max_candidates,
                                    params.cells_per_candidate)
        aligned_tracks = []
        owns, cell_hits = [], []
        for track_id, track_cells in best:
            first, last = np.searchsorted(track_ids, [track_id, track_id + 1])
            own = np.arange(first, last)[active[first:last]]
            centres = np.array(track_cells)
            near = (np.abs(ratio_cells[own, None] - centres // _PITCH_STRIDE) <= 1) \
                & (np.abs(pitch_cells[own, None] - centres % _PITCH_STRIDE) <= 1)
            owns.append(own)
            cell_hits.append([own[near[:, k]] for k in range(len(centres))])
        # Most (track, cell) candidates hold no line; one vectorized test over all of them
        # spares those the fit, which would reject them anyway.
        candidates = [in_cell for hits_of_track in cell_hits for in_cell in hits_of_track]
        may_hold = iter(_may_hold_a_line(candidates, query_frames, ref_frames, ratio, params).tolist())
        for (track_id, _), own, hits_of_track in zip(best, owns, cell_hits):
            worth_fitting = [in_cell for in_cell, possible in zip(hits_of_track, may_hold) if possible]
            for in_cell in worth_fitting:
                line = _fit_time_line(query_frames[in_cell], ref_frames[in_cell], ratio[in_cell],
                                      hit_weights[in_cell], params)
                if line is not None:
                    break
            else:
                continue
            offset, time_ratio, inliers = line
            hits = in_cell[inliers]
            # The cell keeps hits within a cell of the best tempo estimate; a hit's own
            # estimate is noisier than that (+-3 % at 0.8x), so every hit of the track with
            # a close enough estimate that lies on the fitted line joins the alignment.
            shift = np.median(pitch[hits])
            near_line = own[(np.abs(pitch[own] - shift) <= params.line_pitch_tolerance)
                            & (np.abs(np.log(ratio[own] / time_ratio)) <= params.line_ratio_tolerance)]
            on_line = np.abs(ref_frames[near_line] - (offset + time_ratio * query_frames[near_line])) \
                <= params.line_tolerance
            hits = np.union1d(hits, near_line[on_line])
            active[hits] = False
            aligned_tracks.append(track_id)
            alignments.append(Alignment(track_id, "triplet", time_ratio, offset,
                                        float(np.median(pitch[hits])), query_frames[hits],
                                        ref_frames[hits], query_ids[hits], hit_weights[hits]))
        if not aligned_tracks:
            break
        # Only tracks that just aligned can align again (a looped or re-used section).
        active &= np.isin(track_ids, aligned_tracks)
    return alignments


def _strongest_tracks(track_ids: np.ndarray, ratio_cells: np.ndarray, pitch_cells: np.ndarray,
                      weights: np.ndarray, params: MatchParams) -> np.ndarray:
    """The ``max_candidates`` tracks whose best (ratio, pitch) neighbourhood weighs most.

    The same ranking as the first round of :func:`matcher.voting.best_cells_per_track`
    with the 3 x 3 neighbourhood, computed on a dense (track, ratio cell, pitch cell)
    grid: no sort of all hits, whose count is what the derivative tier's time grows with.
    """
    present = np.zeros(int(track_ids.max()) + 1, dtype=bool)
    present[track_ids] = True
    compact = (np.cumsum(present) - 1)[track_ids]
    r, p = ratio_cells - ratio_cells.min(), pitch_cells - pitch_cells.min()
    shape = (int(present.sum()), int(r.max()) + 1, int(p.max()) + 1)
    flat = (compact * shape[1] + r) * shape[2] + p
    grid = np.bincount(flat, weights=weights, minlength=int(np.prod(shape))).reshape(shape)
    padded = np.pad(grid, ((0, 0), (1, 1), (1, 1)))
    summed = sum(padded[:, 1 + dr:1 + dr + shape[1], 1 + dp:1 + dp + shape[2]]
                 for dr in (-1, 0, 1) for dp in (-1, 0, 1))
    # As there, only cells holding a vote of their own are centres of a neighbourhood (the
    # weights are positive, so those are the cells of positive weight).
    occupied = grid > 0
    best = np.where(occupied, summed, 0.0).reshape(shape[0], -1).max(axis=1)
    strongest = np.argsort(-best, kind="stable")[:params.max_candidates]
    return np.flatnonzero(present)[strongest[best[strongest] >= params.triplet_min_score]]


def _may_hold_a_line(candidates: list[np.ndarray], query_frames: np.ndarray, ref_frames: np.ndarray,
                     ratio: np.ndarray, params: MatchParams) -> np.ndarray:
    """False for each candidate hit set in which :func:`_fit_time_line` cannot find a line.

    That fit's first inliers are the hits whose offset (under the set's median ratio)
    lies within ``_FIRST_INLIER_REACH`` (10) frames of a centre, so they span at most 20
    frames of offset; a set in which no 20-frame stretch holds ``min_aligned`` offsets
    fails there for certain.
    The converse does not hold: True only means the fit must decide.

    Parameters
    ----------
    candidates : list of np.ndarray of int
        Hit indices of each candidate (into the arrays below).
    query_frames, ref_frames, ratio : np.ndarray
        Every hit's query frame, reference frame and tempo ratio.
    params : MatchParams

    Returns
    -------
    np.ndarray of bool, one per candidate
    """
    sizes = np.array([len(c) for c in candidates], dtype=np.int64)
    may_hold = sizes >= params.min_aligned
    if not may_hold.any():
        return may_hold
    tested = np.flatnonzero(may_hold)
    hits = np.concatenate([candidates[i] for i in tested])
    group = np.repeat(np.arange(len(tested)), sizes[tested])
    starts = np.concatenate([[0], np.cumsum(sizes[tested])[:-1]])
    # The median ratio of each set, as np.median takes it (mean of the middle two of an even count).
    ranked = ratio[hits][np.lexsort((ratio[hits], group))]
    upper = ranked[starts + sizes[tested] // 2]
    lower = ranked[starts + (sizes[tested] - 1) // 2]
    median = np.where(sizes[tested] % 2 == 1, upper, (lower + upper) / 2)
    offsets = ref_frames[hits] - median[group] * query_frames[hits]
    # Sets laid end to end on one axis, far enough apart that no stretch spans two.
    lowest = np.minimum.reduceat(offsets, starts)
    gap = float(np.max(np.maximum.reduceat(offsets, starts) - lowest)) + 100.0
    placed = np.sort(group * gap + (offsets - lowest[group]))
    # A little over the stretch: placing the sets rounds their offsets in the last bits.
    stretch = 2 * _FIRST_INLIER_REACH + 1e-3
    within = np.searchsorted(placed, placed + stretch, side="right") - np.arange(len(placed))
    may_hold[tested] = np.maximum.reduceat(within, starts) >= params.min_aligned
    return may_hold


def _fit_time_line(query_frames: np.ndarray, ref_frames: np.ndarray, ratio: np.ndarray,
                   weights: np.ndarray, params: MatchParams):
    """(offset, ratio, inlier mask) of the dominant line ``ref = offset + ratio * query``.

    The cell's median ratio gives each hit an offset; the densest offset (votes
    weighted, in bins a few frames wide) picks the inliers, and a least-squares fit
    through them refines ratio and offset; hits within ``line_tolerance`` of the
    fitted line are the final inliers.
    """
    if len(query_frames) < params.min_aligned:
        return None
    first_ratio = float(np.median(ratio))
    offsets = ref_frames - first_ratio * query_frames
    # A 3 % ratio error over a 10 s query moves the offset by ~10 frames: bins of 4
    # frames and a +-2-bin window catch the line without merging unrelated ones.
    offset_bins = np.floor(offsets / 4.0).astype(np.int64)
    lowest = offset_bins.min()
    histogram = np.bincount(offset_bins - lowest, weights=weights)
    window = np.convolve(histogram, np.ones(5), mode="same")
    centre = (np.argmax(window) + lowest) * 4.0 + 2.0
    inliers = np.abs(offsets - centre) <= _FIRST_INLIER_REACH
    if inliers.sum() < params.min_aligned:
        return None
    time_ratio, offset = first_ratio, float(np.median(offsets[inliers]))
    for _ in range(2):
        if np.ptp(query_frames[inliers]) >= 30:  # about a second: enough lever arm to fit a slope
            time_ratio, offset = np.polyfit(query_frames[inliers], ref_frames[inliers], 1)
        residual = ref_frames - (offset + time_ratio * query_frames)
        inliers = np.abs(residual) <= params.line_tolerance
        if inliers.sum() < params.min_aligned:
            return None
    return float(offset), float(time_ratio), inliers

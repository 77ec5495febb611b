"""Triplet tier: speed-changed, pitch-shifted and time-stretched derivatives.

Triplet landmarks that agree on one tempo ratio, pitch shift and time line.

A triplet code survives a speed change, a pitch shift or a time-stretch, and each
hit measures the change: the tempo ratio is the reference span over the query
span of the triplet, the pitch shift the difference of the anchors' log-frequency
bins. Hits vote in (tempo ratio, pitch shift) cells; the best cell's hits then
vote for the time line ``ref = offset + ratio * query``, which a least-squares
fit refines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import AbstractSet, ClassVar

import numba
import numpy as np

from refrain.fingerprint import Fingerprint, FingerprintParams
from refrain.fingerprint.hashes import TRIPLET_MAX_SPAN, hash_triplets, query_triplets, unpack_triplet_payload
from refrain.index.landmarks import LandmarkIndex
from refrain.matcher.landmarks import LandmarkTierParams, landmark_matches
from refrain.matcher.types import Alignment, Calibration, Catalogue, Match, Query
from refrain.matcher.voting import best_cells_per_track, dense_track_numbers, strongest_first, weighted_lookup

__all__ = ["TripletTier"]

_CELL_CENTRE = 128   # ratio and pitch cells are stored with this bias (non-negative)
_PITCH_STRIDE = 256  # cell = ratio_cell * stride + pitch_cell
_NEIGHBOURS_2D = np.array([dr * _PITCH_STRIDE + dp for dr in (-1, 0, 1) for dp in (-1, 0, 1)])
# The time-line fit's first inliers lie within this many frames of the densest offset,
# which a 3 % ratio error over a 10 s query moves by about 10 frames.
_FIRST_INLIER_REACH = 10.0
# Line fits at most per candidate (10 s queries settle after two; whole tracks in a few more).
_MAX_FITS = 8
# Most (ratio, pitch) vote cells laid out for all tracks at once when ranking them (8 MB):
# a 150-track catalogue's grids take some 130,000.
_DENSE_GRID_CELLS = 1 << 20


@dataclass(frozen=True)
class TripletTier(LandmarkTierParams):
    """The triplet tier and its parameters (those of :class:`~matcher.landmarks.LandmarkTierParams`, and:).

    Attributes
    ----------
    min_score : float
        Lowest score of a match (default 6.0). A triplet must agree on the track, the
        time offset, the tempo ratio and the pitch shift at once, so chance agreement
        stays far lower than in the pair tier: on 299 derived queries of music outside
        a 150-track catalogue no unrelated track passed 2.3 (the pair tier's chance
        matches reach 5.9). 6 keeps the same safety ratio as the pair tier.
    line_tolerance : float
        Hits within this many frames of the fitted time line are aligned (default 3).
    line_ratio_tolerance, line_pitch_tolerance : float
        Once a line is fitted, every hit of the track on it whose own tempo estimate is
        within this log ratio of the line's (default 0.05) and whose pitch shift is
        within this many bins of the alignment's (default 1.0) is aligned, not only
        those of the voting cell: single hits estimate the tempo to only +-3 %, so the
        cell held part of a true line (60 real tracks: 0.8x speed-ups found 92 -> 97 %;
        highest chance score over 420 unrelated queries 3.65 -> 4.23).
    cells_per_candidate : int
        (tempo ratio, pitch shift) cells tried per candidate track, strongest first,
        until one holds a consistent time line (default 6). A track's strongest cell
        can be chance agreement of common codes scattered over many offsets,
        outweighing a true cell with 50-100 hits on one line: trying 6 cells instead of
        1 found 8 % more 0.8x and 3 % more 1.25x speed-ups (60 real tracks). In this
        tier a true derivative is not always among the 12 strongest raw vote cells (a
        common code weighs in before the per-second cap): ``max_candidates`` 24 found
        5 % more 1.25x speed-ups than 12, at no measurable cost in query time.
    min_time_ratio, max_time_ratio : float
        Tempo ratios (query / reference) considered (0.75-1.34).
    max_pitch_shift_semitones : float
        Largest pitch shift considered (default 4.25: a 0.8-1.25x speed change moves
        pitch by 3.86 semitones). Wider costs query time.
    tempo_hypotheses : tuple of float
        Tempo ratios for which the query builds the triplets a reference would have
        built (default 0.8, 0.9, 1.0, 1.1, 1.25; see :func:`fingerprint.hashes.query_triplets`).
    ratio_bin : float
        Width of the tempo-ratio cells hits vote in, as a log ratio (default 0.03, about 3 %).
    calibration : Calibration
        Chance that unrelated music reaches a triplet score (``bench/calibrate.py``).
    """

    name: ClassVar[str] = "triplet"
    min_score: float = 6.0
    line_tolerance: float = 3.0
    line_ratio_tolerance: float = 0.05
    line_pitch_tolerance: float = 1.0
    cells_per_candidate: int = 6
    min_time_ratio: float = 0.75
    max_time_ratio: float = 1.34
    max_pitch_shift_semitones: float = 4.25
    tempo_hypotheses: tuple[float, ...] = (0.8, 0.9, 1.0, 1.1, 1.25)
    ratio_bin: float = 0.03
    calibration: Calibration = field(default_factory=lambda: Calibration(
        anchor_score=2.0, anchor_chance=0.02217, scale=0.305, queries=1624, catalogue_tracks=150))

    def find(self, query: Query, catalogue: Catalogue, skip: AbstractSet[int]) -> list[Match]:
        """Tracks the query derives from by a tempo or pitch change (see :class:`~matcher.types.Tier`)."""
        if self.name not in catalogue.tiers:
            return []
        alignments = [a for a in triplet_alignments(query.fingerprint, catalogue.tiers[self.name], self,
                                                    catalogue.fingerprint_params, query.candidates.get(self.name))
                      if a.track_id not in skip and catalogue.reportable(a.track_id)]
        # Spans are judged on the query's own triplets at tempo 1, the rule the catalogue
        # used: the tempo-hypothesis superset would dilute the fraction.
        return landmark_matches(alignments, query, catalogue, self, self.calibration,
                                query.fingerprint.triplets.anchor_frames)


def triplet_alignments(fp: Fingerprint, tier: LandmarkIndex, params: TripletTier,
                       fingerprint_params: FingerprintParams, candidates: np.ndarray | None = None
                       ) -> list[Alignment]:
    """Alignments of the query with catalogue tracks, allowing tempo and pitch changes.

    Parameters
    ----------
    fp : Fingerprint
        The query.
    tier : LandmarkIndex
        The triplet tier of the catalogue.
    params : TripletTier
    fingerprint_params : FingerprintParams
        The catalogue's settings: the query's triplets are built with its zones.
    candidates : np.ndarray of int, optional
        The only tracks searched (sorted; :mod:`matcher.proposals`), None for all.

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
    code_ids, code_weights, first_hit, hits_per_code, labels = weighted_lookup(tier, codes, params, candidates)
    # A hit's tempo ratio is a reference span over a query span, both whole frames: a
    # table of every such ratio and its cell spares each hit a division and a logarithm.
    ratios = np.arange(TRIPLET_MAX_SPAN + 1)[None, :] / np.arange(1, int(triplets.dt_13.max()) + 1)[:, None]
    ratio_cells = np.round(np.log(np.where(ratios > 0, ratios, 1.0)) / params.ratio_bin).astype(np.int64)
    # One compiled pass over the hits keeps the plausible ones (tempo ratio and pitch shift
    # within bounds) with their cells: the triplet tier's time grows with its hits,
    # 100,000-500,000 per 10 s query, most of them chance hits of common codes.
    code_rows = rows[code_ids]
    track_ids, cells, hit_codes, hit_positions = _plausible_hits(
        first_hit, hits_per_code, labels, tier.payload_bits, code_rows, triplets.dt_13, triplets.anchor_positions,
        ratios, ratio_cells, params.min_time_ratio, params.max_time_ratio,
        params.max_pitch_shift_semitones * bins_per_semitone)
    if len(track_ids) == 0:
        return []
    # Only the strongest tracks' hits go on to the per-cell search below, sorted by
    # (track, cell) as best_cells_per_track needs them, with their geometry. Both steps index
    # arrays by track: by the tracks' numbers among those with hits, not by their ids.
    numbers, tracks_with_hits = dense_track_numbers(track_ids)
    numbers, cells, hit_weights, ratio, pitch, query_ids, ref_frames = _contenders_in_vote_order(
        numbers, cells, hit_codes, hit_positions, code_weights,
        _strongest_tracks(numbers, cells, code_weights[hit_codes], params), labels, tier.payload_bits,
        code_rows, triplets.dt_13, triplets.anchor_positions, ratios)
    track_ids = tracks_with_hits[numbers]
    query_frames = triplets.anchor_frames[query_ids].astype(np.int64)

    alignments = []
    active = np.ones(len(track_ids), dtype=bool)
    for _ in range(params.max_alignments):
        remaining = np.nonzero(active)[0]
        best = best_cells_per_track(track_ids[remaining], cells[remaining], hit_weights[remaining],
                                    _NEIGHBOURS_2D, params.min_score, params.max_candidates,
                                    params.cells_per_candidate)
        if not best:
            break
        tracks = np.array([track_id for track_id, _ in best])
        firsts, lasts = np.searchsorted(track_ids, tracks), np.searchsorted(track_ids, tracks + 1)
        members, sizes = _cell_members(firsts, lasts, active, cells,
                                       np.array([cell for _, track_cells in best for cell in track_cells]),
                                       np.array([len(track_cells) for _, track_cells in best]))
        # Most (track, cell) candidates hold no line; a quick test of each spares those
        # the fit, which would reject them anyway.
        may_hold = _may_hold_a_line(members, sizes, query_frames, ref_frames, ratio, params.min_aligned)
        ends = np.cumsum(sizes)
        aligned_tracks = []
        next_candidate = 0
        for (track_id, track_cells), first, last in zip(best, firsts, lasts):
            track_candidates = range(next_candidate, next_candidate + len(track_cells))
            next_candidate += len(track_cells)
            line = None
            for candidate in (c for c in track_candidates if may_hold[c]):
                in_cell = members[ends[candidate] - sizes[candidate]:ends[candidate]]
                line = _fit_time_line(query_frames[in_cell], ref_frames[in_cell], ratio[in_cell],
                                      hit_weights[in_cell], params)
                if line is not None:
                    break
            if line is None:
                continue
            own = np.arange(first, last)[active[first:last]]
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


@numba.njit(cache=True, nogil=True)
def _plausible_hits(first_hit, hits_per_code, labels, payload_bits, code_rows, dt_13, anchor_positions,
                    ratios, ratio_cells, min_ratio, max_ratio, max_pitch_bins):
    """The hits whose tempo ratio and pitch shift lie within bounds, with their vote cells.

    Parameters
    ----------
    first_hit, hits_per_code, labels : np.ndarray of int64
        The lookup's hits (:meth:`index.landmarks.LandmarkIndex.lookup_slices`), walked
        in code order; codes may share a slice.
    payload_bits : int
        The tier's payload width.
    code_rows : np.ndarray of int64
        The query triplet of each looked-up code.
    dt_13, anchor_positions : np.ndarray
        The query triplets' spans and anchor positions.
    ratios, ratio_cells : np.ndarray, shape (longest query span, TRIPLET_MAX_SPAN + 1)
        The tempo ratio of each (query span - 1, reference span) and its ratio cell.
    min_ratio, max_ratio, max_pitch_bins : float
        Bounds (see :class:`TripletTier`).

    Returns
    -------
    track_ids, cells, hit_codes, hit_positions : np.ndarray of int32
        One row per plausible hit, in code order: its track, its cell
        (``ratio_cell * _PITCH_STRIDE + pitch_cell``, both biased by ``_CELL_CENTRE``),
        which looked-up code it answers and where it lies in ``labels``.
    """
    # Each (query span, reference span)'s ratio cell, biased and strided, or -1 where its
    # ratio is out of bounds: one look-up per hit (two thirds of the hits fail a bound).
    ratio_parts = np.full(ratios.shape, -1, np.int64)
    for span_row in range(ratios.shape[0]):
        for ref_span in range(ratios.shape[1]):
            if min_ratio <= ratios[span_row, ref_span] <= max_ratio:
                ratio_parts[span_row, ref_span] = (ratio_cells[span_row, ref_span] + _CELL_CENTRE) * _PITCH_STRIDE
    count = hits_per_code.sum()  # a code's slice may be walked for several query triplets
    if len(labels) >= 2 ** 31 or len(first_hit) >= 2 ** 31:
        raise ValueError("too many triplet hits for one query window")
    # Four bytes a field (track ids lie below 2 ** 26, cells below 2 ** 16, a window's
    # codes and hits far below 2 ** 31): every hit is written, kept or not, so the
    # arrays' width is most of this pass's memory traffic.
    track_ids, cells = np.empty(count, np.int32), np.empty(count, np.int32)
    hit_codes, hit_positions = np.empty(count, np.int32), np.empty(count, np.int32)
    payload_mask = (np.int64(1) << payload_bits) - 1
    kept = 0
    for code in range(len(first_hit)):
        row = code_rows[code]
        parts, anchor = ratio_parts[dt_13[row] - 1], np.float64(anchor_positions[row])
        for hit in range(first_hit[code], first_hit[code] + hits_per_code[code]):
            _, ref_bin, ref_span = unpack_triplet_payload(labels[hit] & payload_mask)
            hit_pitch = anchor - ref_bin
            # Written whether kept or not, the next hit overwriting a rejected one: which
            # hits pass is as good as random, and a branch on it mispredicts.
            track_ids[kept] = np.int32(labels[hit] >> payload_bits)
            cells[kept] = np.int32(parts[ref_span] + np.int64(np.round(hit_pitch)) + _CELL_CENTRE)
            hit_codes[kept], hit_positions[kept] = np.int32(code), np.int32(hit)
            kept += (parts[ref_span] >= 0) & (abs(hit_pitch) <= max_pitch_bins)
    return track_ids[:kept], cells[:kept], hit_codes[:kept], hit_positions[:kept]


@numba.njit(cache=True, nogil=True)
def _contenders_in_vote_order(track_ids, cells, hit_codes, hit_positions, code_weights, strongest, labels,
                              payload_bits, code_rows, dt_13, anchor_positions, ratios):
    """The hits of the ``strongest`` tracks, sorted by (track, cell), with their weight and geometry.

    The order is :func:`matcher.voting.vote_order`'s (a stable sort by track, then
    cell), found by counting: a contender's tracks and cells span a few thousand
    (track, cell) pairs. Each hit's geometry is taken as the hits are walked in the
    lookup's order, which reads ``labels`` forward.

    Parameters
    ----------
    track_ids, cells, hit_codes, hit_positions : np.ndarray of int32
        The plausible hits (:func:`_plausible_hits`), their tracks as numbers among those
        with hits (:func:`matcher.voting.dense_track_numbers`).
    code_weights : np.ndarray of float64
        Each looked-up code's weight.
    strongest : np.ndarray of int64
        The tracks kept (numbers, as ``track_ids``).
    labels, payload_bits, code_rows, dt_13, anchor_positions, ratios
        As for :func:`_plausible_hits`.

    Returns
    -------
    track_ids, cells : np.ndarray of int64
    weights, ratio, pitch : np.ndarray of float64
        Each hit's weight, tempo ratio and pitch shift (bins).
    query_ids, ref_frames : np.ndarray of int64
        Each hit's query triplet and reference frame.
    """
    n_tracks = track_ids.max() + 1
    rank = np.full(n_tracks, -1, np.int64)
    for track in np.sort(strongest):
        if track < n_tracks:
            rank[track] = 0
    kept_tracks = 0
    for track in range(n_tracks):
        if rank[track] == 0:
            rank[track] = kept_tracks
            kept_tracks += 1
    lowest_cell = cells.min()
    cell_span = cells.max() - lowest_cell + 1
    keys = np.empty(len(track_ids), np.int64)
    slots = np.zeros(kept_tracks * cell_span + 1, np.int64)
    count = 0
    for hit in range(len(track_ids)):
        keys[hit] = -1 if rank[track_ids[hit]] < 0 else rank[track_ids[hit]] * cell_span + cells[hit] - lowest_cell
        if keys[hit] >= 0:
            slots[keys[hit] + 1] += 1
            count += 1
    slots = np.cumsum(slots)
    out_tracks, out_cells = np.empty(count, np.int64), np.empty(count, np.int64)
    weights, ratio, pitch = np.empty(count, np.float64), np.empty(count, np.float64), np.empty(count, np.float64)
    query_ids, ref_frames = np.empty(count, np.int64), np.empty(count, np.int64)
    payload_mask = (np.int64(1) << payload_bits) - 1
    for hit in range(len(track_ids)):
        if keys[hit] < 0:
            continue
        slot = slots[keys[hit]]
        slots[keys[hit]] += 1
        row = code_rows[hit_codes[hit]]
        ref_frame, ref_bin, ref_span = unpack_triplet_payload(labels[hit_positions[hit]] & payload_mask)
        out_tracks[slot], out_cells[slot] = track_ids[hit], cells[hit]
        weights[slot] = code_weights[hit_codes[hit]]
        ratio[slot] = ratios[dt_13[row] - 1, ref_span]
        pitch[slot] = np.float64(anchor_positions[row]) - ref_bin
        query_ids[slot], ref_frames[slot] = row, ref_frame
    return out_tracks, out_cells, weights, ratio, pitch, query_ids, ref_frames


def _strongest_tracks(track_ids: np.ndarray, cells: np.ndarray, weights: np.ndarray,
                      params: TripletTier) -> np.ndarray:
    """The ``max_candidates`` tracks whose best (ratio, pitch) neighbourhood weighs most.

    The same ranking as the first round of :func:`matcher.voting.best_cells_per_track`
    with the 3 x 3 neighbourhood, without a sort of all hits, whose count is what the
    triplet tier's time grows with.
    """
    tracks, best = _best_neighbourhood_per_track(track_ids, cells, weights)
    return tracks[strongest_first(best, params.min_score, params.max_candidates)]


@numba.njit(cache=True, nogil=True)
def _best_neighbourhood_per_track(track_ids, cells, weights, dense_grid_cells=_DENSE_GRID_CELLS):
    """Each track's heaviest 3 x 3 (ratio, pitch) neighbourhood centred on a cell with votes.

    ``track_ids`` are the tracks' numbers among those with hits (:func:`matcher.voting.dense_track_numbers`):
    the arrays below follow the tracks with hits, not the catalogue's largest id. Every
    track's votes lie on one small grid of the query's (ratio, pitch) cells with a border
    of one cell all round. When all tracks' grids together hold at most
    ``dense_grid_cells`` cells (up to about a thousand tracks with hits), the votes
    are laid on them in one pass and each grid's cells scanned once: the hits are
    walked once, not bucketed by track first. Otherwise the hits' cells and weights are
    bucketed by track (a counting sort, keeping their order) and each track's laid on
    one reused grid: time and memory then grow with the hits and the catalogue's
    tracks, not with their product. Weights are positive, so a cell has votes exactly
    when its sum is above 0.

    Returns
    -------
    tracks : np.ndarray of int64
        The tracks with hits, increasing.
    best : np.ndarray of float64
        Each one's heaviest neighbourhood.
    """
    ratio_cells, pitch_cells = cells // _PITCH_STRIDE, cells % _PITCH_STRIDE
    # A track's grid, border included, flattened row by row.
    lowest_ratio, lowest_pitch = ratio_cells.min() - 1, pitch_cells.min() - 1
    width = pitch_cells.max() - lowest_pitch + 2
    height = ratio_cells.max() - lowest_ratio + 2
    size = height * width
    n_tracks = track_ids.max() + 1
    # Summed in the order best_cells_per_track adds a neighbourhood: the same floats.
    neighbours = np.array([dr * width + dp for dr in (-1, 0, 1) for dp in (-1, 0, 1)])
    tracks, best = np.empty(n_tracks, np.int64), np.empty(n_tracks, np.float64)
    found = 0
    if n_tracks * size <= dense_grid_cells:
        grids = np.zeros(n_tracks * size)
        for hit in range(len(track_ids)):
            grids[track_ids[hit] * size + (ratio_cells[hit] - lowest_ratio) * width
                  + pitch_cells[hit] - lowest_pitch] += weights[hit]
        for track in range(n_tracks):
            top, voted = 0.0, False
            for row in range(1, height - 1):
                for cell in range(track * size + row * width + 1, track * size + row * width + width - 1):
                    if grids[cell] > 0.0:
                        voted = True
                        total = 0.0
                        for neighbour in neighbours:
                            total += grids[cell + neighbour]
                        top = max(top, total)
            if voted:
                tracks[found], best[found] = track, top
                found += 1
        return tracks[:found], best[:found]
    grid = np.zeros(size)
    bucket_end = np.zeros(n_tracks + 1, np.int64)
    for track in track_ids:
        bucket_end[track + 1] += 1
    bucket_end = np.cumsum(bucket_end)
    filled = bucket_end[:-1].copy()
    grid_cells, cell_weights = np.empty(len(cells), np.int64), np.empty(len(cells), np.float64)
    for hit in range(len(track_ids)):
        slot = filled[track_ids[hit]]
        grid_cells[slot] = (ratio_cells[hit] - lowest_ratio) * width + pitch_cells[hit] - lowest_pitch
        cell_weights[slot] = weights[hit]
        filled[track_ids[hit]] += 1
    for track in range(n_tracks):
        first, end = bucket_end[track], bucket_end[track + 1]
        if first == end:
            continue
        for slot in range(first, end):
            grid[grid_cells[slot]] += cell_weights[slot]
        top = 0.0
        for slot in range(first, end):
            total = 0.0
            for neighbour in neighbours:
                total += grid[grid_cells[slot] + neighbour]
            top = max(top, total)
        for slot in range(first, end):
            grid[grid_cells[slot]] = 0.0
        tracks[found], best[found] = track, top
        found += 1
    return tracks[:found], best[:found]


@numba.njit(cache=True, nogil=True)
def _cell_members(firsts, lasts, active, cells, centres, centres_per_track):
    """The active hits of each candidate (track, cell): those within one cell of its centre.

    A track's hits are sorted by cell (``ratio_cell * _PITCH_STRIDE + pitch_cell``), so
    the hits of each of the centre's three ratio rows are one slice, found by a binary
    search: the work follows the members, not the track's hits times its centres.

    Parameters
    ----------
    firsts, lasts : np.ndarray of int64
        Each candidate track's slice of the hits.
    active : np.ndarray of bool
        Hits not yet taken by an alignment.
    cells : np.ndarray of int64
        Every hit's cell, increasing within each track's slice.
    centres : np.ndarray of int64
        The candidate cells, track by track.
    centres_per_track : np.ndarray of int64
        How many of ``centres`` belong to each track.

    Returns
    -------
    members : np.ndarray of int64
        Hit indices, candidate by candidate, increasing within each.
    sizes : np.ndarray of int64
        How many of ``members`` belong to each candidate.
    """
    sizes = np.zeros(len(centres), np.int64)
    members = np.empty(0, np.int64)
    for filling in (False, True):
        if filling:
            members = np.empty(sizes.sum(), np.int64)
        kept = 0
        first_centre = 0
        for track in range(len(firsts)):
            own = cells[firsts[track]:lasts[track]]
            for centre in range(first_centre, first_centre + centres_per_track[track]):
                for row in (-1, 0, 1):
                    middle = centres[centre] + row * _PITCH_STRIDE
                    start = firsts[track] + np.searchsorted(own, middle - 1)
                    end = firsts[track] + np.searchsorted(own, middle + 1, side="right")
                    for hit in range(start, end):
                        if active[hit]:
                            if filling:
                                members[kept] = hit
                                kept += 1
                            else:
                                sizes[centre] += 1
            first_centre += centres_per_track[track]
    return members, sizes


@numba.njit(cache=True, nogil=True)
def _may_hold_a_line(members, sizes, query_frames, ref_frames, ratio, min_aligned):
    """False for each candidate hit set in which :func:`_fit_time_line` cannot find a line.

    That fit's first inliers are the hits whose offset (under the set's median ratio)
    lies within ``_FIRST_INLIER_REACH`` (10) frames of a centre, so they span at most 20
    frames of offset; a set in which no 20-frame stretch holds ``min_aligned`` offsets
    fails there for certain.
    The converse does not hold: True only means the fit must decide.

    Parameters
    ----------
    members, sizes : np.ndarray of int64
        The hit indices of each candidate, laid end to end, and how many each has
        (as :func:`_cell_members` returns them).
    query_frames, ref_frames, ratio : np.ndarray
        Every hit's query frame, reference frame and tempo ratio.
    min_aligned : int
        As in :class:`TripletTier`.

    Returns
    -------
    np.ndarray of bool, one per candidate
    """
    may_hold = np.zeros(len(sizes), np.bool_)
    # A little over the stretch, for the fit's own rounding.
    stretch = 2 * _FIRST_INLIER_REACH + 1e-3
    end = 0
    for candidate in range(len(sizes)):
        start, end = end, end + sizes[candidate]
        count = end - start
        if count < min_aligned:
            continue
        hits = members[start:end]
        median = np.median(ratio[hits])  # the fit's first ratio, as it takes it
        offsets = ref_frames[hits] - median * query_frames[hits]
        # In buckets one stretch wide, a stretch's offsets lie in three neighbouring
        # buckets at most (two, but for rounding): only buckets in a run of three that
        # holds min_aligned offsets can hold it, and only their offsets need sorting.
        buckets = ((offsets - offsets.min()) / stretch).astype(np.int64)
        in_bucket = np.zeros(buckets.max() + 3, np.int64)
        for bucket in buckets:
            in_bucket[bucket] += 1
        promising = np.zeros(len(in_bucket), np.bool_)
        for bucket in range(len(in_bucket) - 2):
            if in_bucket[bucket] + in_bucket[bucket + 1] + in_bucket[bucket + 2] >= min_aligned:
                promising[bucket:bucket + 3] = True
        offsets = np.sort(offsets[promising[buckets]])
        count = len(offsets)
        last = 0
        for first in range(count):
            while last < count and offsets[last] <= offsets[first] + stretch:
                last += 1
            if last - first >= min_aligned:
                may_hold[candidate] = True
                break
    return may_hold


def _fit_time_line(query_frames: np.ndarray, ref_frames: np.ndarray, ratio: np.ndarray,
                   weights: np.ndarray, params: TripletTier):
    """(offset, ratio, inlier mask) of the dominant line ``ref = offset + ratio * query``.

    The cell's median ratio gives each hit an offset; the densest offset (votes
    weighted, in bins a few frames wide) picks the inliers, and a least-squares fit
    through them refines ratio and offset; hits within ``line_tolerance`` of the
    fitted line are the final inliers.
    """
    if len(query_frames) < params.min_aligned:
        return None
    first_ratio, centre, first_inliers = _densest_offset(query_frames, ref_frames, ratio, weights)
    if first_inliers < params.min_aligned:
        return None
    offsets = ref_frames - first_ratio * query_frames
    inliers = np.abs(offsets - centre) <= _FIRST_INLIER_REACH
    time_ratio, offset = first_ratio, float(np.median(offsets[inliers]))
    # Refit until the inliers settle: over a whole track the first inliers hold only the
    # stretch where the cell's ratio stays within reach, and each fit reaches further.
    for _ in range(_MAX_FITS):
        if np.ptp(query_frames[inliers]) >= 30:  # about a second: enough lever arm to fit a slope
            time_ratio, offset = np.polyfit(query_frames[inliers], ref_frames[inliers], 1)
        residual = ref_frames - (offset + time_ratio * query_frames)
        settled = np.abs(residual) <= params.line_tolerance
        if settled.sum() < params.min_aligned:
            return None
        if np.array_equal(settled, inliers):
            break
        inliers = settled
    return float(offset), float(time_ratio), inliers


@numba.njit(cache=True, nogil=True)
def _densest_offset(query_frames, ref_frames, ratio, weights):
    """The start of :func:`_fit_time_line`: its first ratio, first inliers' centre and their count.

    The hits' median ratio gives each an offset; a 3 % ratio error over a 10 s query
    moves it by ~10 frames, so offsets vote (weighted) in bins of 4 frames and the
    heaviest window of 5 bins (``np.convolve(votes, np.ones(5), "same")``, first
    maximum) gives the centre. Compiled: most candidate cells end here, and this
    took most of their time in numpy (600 calls per 10-minute upload).

    Returns
    -------
    first_ratio : float
        The median of ``ratio``.
    centre : float
        Offset (frames) at the middle of the heaviest window.
    first_inliers : int
        Hits whose offset lies within ``_FIRST_INLIER_REACH`` of ``centre``.
    """
    count = len(ratio)
    first_ratio = np.median(ratio)
    offsets = np.empty(count)
    offset_bins = np.empty(count, np.int64)
    for hit in range(count):
        offsets[hit] = ref_frames[hit] - first_ratio * query_frames[hit]
        offset_bins[hit] = np.int64(np.floor(offsets[hit] / 4.0))
    lowest = offset_bins.min()
    votes = np.zeros(offset_bins.max() - lowest + 1)
    for hit in range(count):
        votes[offset_bins[hit] - lowest] += weights[hit]
    n_bins = len(votes)
    # np.convolve's "same" output has max(n_bins, 5) values; value i sums the votes of
    # bins i - shift - 2 .. i - shift + 2 that exist.
    n_windows = max(n_bins, 5)
    shift = 0 if n_bins >= 5 else 2 - (n_bins - 1) // 2
    best_window, best = 0, -np.inf
    for window in range(n_windows):
        total = 0.0
        for bin_ in range(max(0, window - shift - 2), min(n_bins, window - shift + 3)):
            total += votes[bin_]
        if total > best:
            best_window, best = window, total
    centre = (best_window + lowest) * 4.0 + 2.0
    first_inliers = 0
    for hit in range(count):
        if abs(offsets[hit] - centre) <= _FIRST_INLIER_REACH:
            first_inliers += 1
    return first_ratio, centre, first_inliers

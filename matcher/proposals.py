"""Proposals: the few catalogue tracks a query window may use, found by specific codes.

The tiers' own codes are not specific: a pair or triplet code carries about 16 bits of
geometry, so every code's run holds entries of a constant share of the catalogue, and a
full search read ~56,000 hits per catalogue hour per 10 s query (docs/scale.md), 76 % of
them the triplet tier's (five tempo hypotheses, tolerant variants). Two stores of
specific codes propose candidates first; each tier then searches only its candidates
(:attr:`matcher.types.Query.candidates`), reading just their entries
(:meth:`index.landmarks.LandmarkIndex.lookup_slices` with ``tracks``):

* **copies** (pair tier, and through its votes the peaks tier): a *double* code — an
  anchor and its two nearest targets (:func:`fingerprint.hashes.double_landmarks`) —
  votes for ``ref frame - query frame`` like a pair; the query builds its doubles from
  its dense peaks, where a recording under other audio keeps most of its peaks, and
  reads a bounded number of hits, rarest codes first;
* **derivatives** (triplet tier): a *quad* code — three bin differences and two time
  ratios, invariant to speed, pitch and tempo changes (:func:`fingerprint.hashes.hash_quads`)
  — looked up under the triplet tier's tempo hypotheses; each hit estimates a tempo
  ratio and so a time line ``ref = offset + ratio * query``, and hits of one track that
  agree on a (ratio, offset) neighbourhood propose it.

Both stores hold about one entry per anchor peak; their codes carry about twice a pair's
geometry, so a lookup returns a few hits where a pair lookup returns hundreds. A query
combines each zone's next-nearest peaks too (``slack``): a peak that other music mixed
over the recording adds then still leaves the reference's code among the query's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from refrain.fingerprint import Fingerprint, FingerprintParams
from refrain.fingerprint.hashes import (QUAD_MAX_SPAN, double_landmarks, hash_quads, query_quads, sorted_distinct,
                                        unpack_quad_payload)
from refrain.index.landmarks import LandmarkIndex, slice_positions
from refrain.matcher.triplet import TripletTier
from refrain.matcher.voting import VOTE_WEIGHT_BITS, strongest_tracks

__all__ = ["ProposalParams", "propose", "propose_copies", "rarity_vote_weights", "QUAD_TIER",
           "DOUBLE_TIER"]

#: The store keys of the quad and double codes (``IndexStore.tiers``).
QUAD_TIER, DOUBLE_TIER = "quad", "double"
_COPY_NEIGHBOURS = np.array([-1, 0, 1], dtype=np.int64)
_COPY_OFFSET_BIAS = 1 << 30
# Vote cells: (ratio cell + bias) * stride + (offset cell + bias), both biases keeping them non-negative.
_RATIO_BIAS, _OFFSET_BIAS = 64, 1 << 20
_STRIDE = 1 << 21
_NEIGHBOURS = np.array([dr * _STRIDE + do for dr in (-1, 0, 1) for do in (-1, 0, 1)], dtype=np.int64)


@dataclass(frozen=True)
class ProposalParams:
    """How a query window's candidate tracks are proposed.

    Attributes
    ----------
    min_catalogue_tracks : int
        Catalogues of fewer tracks are searched exhaustively (default 2,000, about 100
        hours). A bounded search has a fixed cost an exhaustive one has not (its own
        lookups, and every triplet code searched in each candidate): measured with
        ``bench/scale.py``, a 10 s query cost 69 ms of CPU bounded against 48 ms
        exhaustive at 10 h, 128 against 116 ms at 40 h and 328 against 389 ms at 160 h;
        and below the bound the search is exact.
    max_candidates : int
        Tracks proposed at most as derivatives (default 64), strongest first: the triplet
        tier verifies only these, so the query's work is bounded whatever the catalogue's
        size. An upload holding more works in one window than this is reported partly.
        Since the triplet tier reads each candidate's entries in one piece (its track-major
        file, docs/scale.md step 11) a candidate costs ~0.1 ms at any size: 64 instead of
        32 cost 1.2 ms more CPU per 10 s query at 640 h (30 s: 11 ms more wall time), and
        with every tier bounded on ``bench/derivatives.py``'s 150 tracks (``margin`` 0.15)
        found speed 1.25x at 98.0 % instead of 94.7 (exhaustive 98.7) and pitch +2 st under
        white noise at 96.0 instead of 95.3 (99.3), every other condition the same, 0 false
        matches (96 candidates: the same hit rates).
    copies : bool
        Also bound the pair tier (and through its votes the peaks tier) to proposed
        copies (default True). Measured with ``bench/scale.py`` on a catalogue grown from
        mashups of real music (docs/scale.md step 8; relabelled growth, steps 4-5, made the
        specific codes far less specific than real music's and lost 15 points here), 80 real
        10 s queries per condition at 640 h: top-1 clean / pink noise 0 dB / speed 1.1x /
        mixed 6 dB under other music equal to the exhaustive search's on every query, 0
        false matches, 10 s query CPU p50 173 against 447 ms, a 30 s query 0.44 against
        2.35 s, 1,268 hits per catalogue hour against 13,704, and the matching process's
        peak RSS 0.37 GB above the index's size (the exhaustive search: 0.90 GB).
    copy_min_votes : int
        Double hits agreeing on one time offset (within a frame) a track needs to be
        proposed as a copy (default 2): on 40 real 10 s excerpts mixed 6 dB under other
        music the true track had a median of 2.5, unrelated tracks 2.
    copy_max_candidates : int
        Tracks proposed at most as copies (default 256). The pair tier then reads only these
        tracks' entries of its codes (its common codes only in the candidates its rare ones
        promote, :class:`~matcher.pair.PairTier`), and its own votes rank them. 512 found one
        more of 60 recordings 6 dB under other music at 640 h with ids shuffled (46, as the
        exhaustive search) and no more under pink noise, for ~3 ms more per 10 s query: a
        candidate's hits still cost the pair tier (docs/scale.md step 15). Under noise or other
        music a recording keeps two or three doubles, as many as chance tracks: at 640 h some
        3,800 tracks hold two agreeing double hits. So the tracks are ranked by the rarity of
        their votes' codes (:func:`rarity_vote_weights`), not by their number: ranked by
        number, ties went by track id, and the true track made the cut only where its id was
        low. With the catalogue's ids shuffled (60 real 10 s queries per condition at 640 h,
        docs/scale.md step 14) the weights found 54 recordings under pink noise 0 dB where
        counting found 52 (128 candidates: 53; with the strongest peaks' doubles,
        :func:`propose_copies`, 55; the exhaustive search 59, the 4 more not among 1,024
        candidates), the same copies and mixes.
    copy_slack : int
        Next-nearest targets per anchor the query also combines into doubles (default 8:
        each anchor's 10 nearest targets two by two, 45 doubles). The query's doubles are
        built from its dense peaks, four times as many as a catalogue recording's, so the
        reference's two nearest targets are mostly among a query anchor's ten nearest; on
        real queries against 150 tracks the true track's hits grew from 4 (slack 1, the
        strongest peaks) to 10-25 under other music.
    copy_max_hits : int
        Hits the copy proposals read at most per query window (default 250,000), from its
        rarest codes up: the work stays bounded as the catalogue grows. At 640 h a budget of
        60,000 reached 13,963 of a 10 s query's 46,772 codes and lost 3 of 60 recordings 6 dB
        under other music that 250,000 kept (and an unbounded search), for ~9 ms more CPU.
    min_votes : int
        Agreeing quad hits a track needs to be proposed as a derivative (default 3).
        Unrelated tracks' hits scatter over the (ratio, offset) plane and rarely reach this.
        Among the tracks that do, the rarity of their hits' codes ranks them, as for copies
        (:func:`rarity_vote_weights`): ranked by count, ties went by track id, and at 640 h
        a recording under pink noise was found only through its low id (docs/scale.md step 14).
    max_hits : int
        Hits the derivative proposals read at most per query window (default 250,000),
        from its rarest quad codes up (:meth:`index.landmarks.LandmarkIndex.lookup_rarest`), as the copy
        proposals do: every quad code's run grows with the catalogue (a 10 s query's
        ~22,500 codes read 54,000 hits at 40 catalogue hours and 217,000 at 160), so
        without a budget so would the work. Once it binds it costs recall: on 60 real
        10 s derivatives per weak condition (speed 0.8x / 1.25x, pitch -4 st, stretch
        1.25x, under noise) against 150 tracks, with the budget scaled down to read what
        it reads of a larger catalogue (``bench/proposal_budget.py``), the true track was
        proposed for 96.7-100 % of the queries unbounded, 96.7-100 % with 60,000 hits at
        80 h, 93.3-100 % at 160 h and 63-92 % at 640 h. The default is about what a 10 s
        query reads unbounded at 200 catalogue hours; at 640 h it reads what 60,000 read
        at 160 h (measured there: 228,797 quad hits per query; speed 1.1x still 100 %).
    slack : int
        Next-nearest peaks per zone the query also combines into quads (default 1;
        :func:`fingerprint.hashes.query_quads`): one peak added by audio mixed over the
        recording, or cut off by a zone boundary between tempo hypotheses, then leaves
        the reference's quad among the query's.
    margin : float
        Quantisation margin of the query's tolerant quad codes (default 0.3 steps): a
        value this close to a quantisation boundary is also asked on its other side. 0.3
        asks 2.5 times the codes of 0.15 and keeps weak derivatives whose quads noise has
        moved: with every tier bounded on ``bench/derivatives.py``'s 150 tracks it found
        pitch +2 st under white noise at 98.0 % instead of 96.0 (exhaustive 99.3) and
        stretch 0.8x under pink noise at 90.0 instead of 88.7 (90.7), every other condition
        within 0.7 points of the exhaustive search, 0 false matches. At 640 h it cost 1-3 ms
        more CPU per 10 s query and found one more of 60 recordings mixed under other music
        (docs/scale.md step 12). ``slack=2`` as well reached 98.7 % on pitch under noise
        for 14-22 ms more.
    ratio_bin : float
        Width of the tempo-ratio cells, as a log ratio (default 0.04: one hit's ratio
        estimate is good to about 3 %).
    offset_bin_seconds : float
        Width of the time-offset cells (default 1.0 s): a 3 % ratio error moves the
        offset of a hit 30 s from the window's middle by about 1 s.
    """

    min_catalogue_tracks: int = 2000
    max_candidates: int = 64
    copies: bool = True
    copy_min_votes: int = 2
    copy_max_candidates: int = 256
    copy_slack: int = 8
    copy_max_hits: int = 250000
    min_votes: int = 3
    max_hits: int = 250000
    slack: int = 1
    margin: float = 0.3
    ratio_bin: float = 0.04
    offset_bin_seconds: float = 1.0


def propose_copies(fp: Fingerprint, doubles: LandmarkIndex, fingerprint_params: FingerprintParams,
                   params: ProposalParams) -> np.ndarray:
    """The tracks a query window may copy (also in part, or under other audio), strongest first.

    The query's doubles are built from its dense peaks when it has them
    (:attr:`fingerprint.Fingerprint.dense_peaks`), combining each anchor's
    ``2 + params.copy_slack`` nearest targets two by two: a catalogue recording's peaks
    under other audio are far more often among the dense peaks than among the
    strongest, and the extra dense peaks between them then do not hide its doubles.
    Its strongest peaks also make doubles by the catalogue's own rule (an anchor and its
    two nearest targets; about 330 more codes per 10 s): under broadband noise the dense
    peaks fill with the noise's, which pushes a recording's targets past an anchor's
    nearest ten, while its strongest peaks mostly stay the strongest. With ids shuffled
    (60 real 10 s queries per condition at 640 h, docs/scale.md step 14) the true track
    was among the first 64 candidates for 54 instead of 50 recordings under pink noise
    0 dB, as often as before for copies and mixes.
    The rarest codes are looked up first, until their hits would pass
    ``params.copy_max_hits``: the work is bounded whatever the catalogue's size, and
    goes to the codes whose hits say most. A track's votes weigh as rare as their codes
    are (:func:`rarity_vote_weights`).

    Parameters
    ----------
    fp : Fingerprint
        The query window.
    doubles : LandmarkIndex
        The catalogue's double codes.
    fingerprint_params : FingerprintParams
        The catalogue's settings (the pair tier's target zone).
    params : ProposalParams

    Returns
    -------
    np.ndarray of int64
        At most ``params.copy_max_candidates`` track ids.
    """
    fpp = fingerprint_params
    zone = (fpp.target_dt_min, fpp.target_dt_max, fpp.target_df_max)
    query = double_landmarks(fp.peaks if fp.dense_peaks is None else fp.dense_peaks, *zone, params.copy_slack)
    codes, anchor_frames = query.codes, query.anchor_frames.astype(np.int64)
    if fp.dense_peaks is not None:
        strongest = double_landmarks(fp.peaks, *zone)
        filed = sorted_distinct(np.concatenate([codes.astype(np.int64) << 32 | anchor_frames,
                                                strongest.codes.astype(np.int64) << 32 | strongest.anchor_frames]))
        codes, anchor_frames = (filed >> 32).astype(np.uint32), filed & 0xFFFFFFFF
    specific, first_hit, hits_per_code, labels = doubles.lookup_rarest(codes, params.copy_max_hits)
    # A code asked at several anchors shares its hits' slice: each anchor votes with all of them.
    labels = labels[slice_positions(first_hit, hits_per_code)]
    track_ids = labels >> doubles.payload_bits
    offsets = (labels & ((1 << doubles.payload_bits) - 1)) - np.repeat(anchor_frames[specific], hits_per_code)
    return strongest_tracks(track_ids, offsets + _COPY_OFFSET_BIAS, _COPY_NEIGHBOURS, params.copy_min_votes,
                            params.copy_max_candidates,
                            np.repeat(rarity_vote_weights(hits_per_code, params.copy_max_hits), hits_per_code))


def propose(fp: Fingerprint, quads: LandmarkIndex, fingerprint_params: FingerprintParams,
            params: ProposalParams, derivatives: TripletTier) -> np.ndarray:
    """The tracks a query window may derive from by a speed, pitch or tempo change, strongest first.

    Parameters
    ----------
    fp : Fingerprint
        The query window.
    quads : LandmarkIndex
        The catalogue's quad codes.
    fingerprint_params : FingerprintParams
        The catalogue's settings (zones, frame length, log-frequency resolution).
    params : ProposalParams
    derivatives : TripletTier
        The tier the proposals are for: its tempo hypotheses, the tempo ratios and the
        pitch shift it considers.

    Returns
    -------
    np.ndarray of int64
        At most ``params.max_candidates`` track ids.
    """
    fpp = fingerprint_params
    query = query_quads(fp.peaks, fpp.triplet_near_zone, fpp.triplet_far_zone, fpp.quad_near_targets,
                        fpp.triplet_df_max, derivatives.tempo_hypotheses, params.slack)
    if len(query) == 0:
        return np.zeros(0, dtype=np.int64)
    codes, rows = hash_quads(query, tolerant=True, margin=params.margin,
                             pitch_reach_bins=derivatives.max_pitch_shift_semitones * fpp.bins_per_octave / 12.0)
    # 15-30 % of the codes repeat another (quads of several tempo hypotheses, tolerant variants):
    # each distinct code is looked up once, and a repeat shares its hits' slice.
    specific, first_hit, hits_per_code, labels = quads.lookup_rarest(codes, params.max_hits)
    rows = rows[specific]
    middle = (int(fp.peaks.frames.min()) + int(fp.peaks.frames.max())) // 2
    track_ids, cells, weights = _hit_cells(first_hit, hits_per_code, labels, quads.payload_bits, rows,
                                           query.anchor_frames.astype(np.int64) - middle,
                                           query.spans[:, 2].astype(np.int64), derivatives.min_time_ratio,
                                           derivatives.max_time_ratio, params.ratio_bin,
                                           params.offset_bin_seconds / fpp.frame_seconds,
                                           rarity_vote_weights(hits_per_code, params.max_hits))
    return strongest_tracks(track_ids, cells, _NEIGHBOURS, params.min_votes, params.max_candidates, weights)


def rarity_vote_weights(hits_per_code: np.ndarray, max_hits: int) -> np.ndarray:
    """Each code's vote weight for :func:`matcher.voting.strongest_tracks`: how rare it is, in quarter bits.

    A code's hits are chance agreement in proportion to its run, so a hit of a code that
    holds a few entries says more than one of a code whose run would fill much of the
    budget: the weight is ``4 * log2(max_hits / hits)``, rounded, at least 1.
    """
    rarity = np.round(4.0 * np.log2(max_hits / np.maximum(hits_per_code, 1)))
    return np.clip(rarity, 1, (1 << VOTE_WEIGHT_BITS) - 1).astype(np.int64)


@numba.njit(cache=True, nogil=True)
def _hit_cells(first_hit, hits_per_code, labels, payload_bits, code_rows, query_frames, query_spans,
               min_ratio, max_ratio, ratio_bin, offset_bin_frames, code_weights):
    """Track, (tempo ratio, time offset) cell and vote weight (its code's) of every hit whose ratio is plausible.

    A hit's ratio is the reference span over the query span of its quad's farthest
    target; its offset ``ref_frame - ratio * query_frame`` with the query frame taken
    from the window's middle, so that a ratio error moves it least. The ratio's log is the
    difference of the spans' logs, looked up: a log per hit cost ~0.8 ms of a 10 s query's
    ~200,000 hits at 640 h, and every cell of the default ``ratio_bin`` is as from the log of the
    ratio (checked for every span the payload holds against query spans up to 4,095 frames).
    """
    count = hits_per_code.sum()  # a repeated code's slice is walked once for each of its quads
    track_ids, cells, weights = np.empty(count, np.int64), np.empty(count, np.int64), np.empty(count, np.int64)
    payload_mask = (np.int64(1) << payload_bits) - 1
    reference_logs = np.log(np.maximum(np.arange(QUAD_MAX_SPAN + 1), 1).astype(np.float64))
    query_logs = np.log(query_spans.astype(np.float64))
    kept = 0
    for code in range(len(first_hit)):
        row = code_rows[code]
        for hit in range(first_hit[code], first_hit[code] + hits_per_code[code]):
            ref_frame, ref_span = unpack_quad_payload(labels[hit] & payload_mask)
            ratio = ref_span / query_spans[row]
            if ratio < min_ratio or ratio > max_ratio:
                continue
            offset = ref_frame - ratio * query_frames[row]
            track_ids[kept] = labels[hit] >> payload_bits
            weights[kept] = code_weights[code]
            log_ratio = reference_logs[ref_span] - query_logs[row]
            cells[kept] = (np.int64(np.round(log_ratio / ratio_bin)) + _RATIO_BIAS) * _STRIDE \
                + np.int64(np.round(offset / offset_bin_frames)) + _OFFSET_BIAS
            kept += 1
    return track_ids[:kept], cells[:kept], weights[:kept]

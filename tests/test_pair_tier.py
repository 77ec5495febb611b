"""The pair and peaks tiers score the pair hits grouped by track and make votes only for the tracks they need.

The reference is the algorithm they replaced, kept here: every hit made a vote (six arrays
per hit), the votes were sorted by (track, offset) with :func:`~matcher.voting.vote_order`,
:func:`~matcher.pair.pair_alignments` searched them all and the peaks tier took its
candidates from their :func:`~matcher.voting.neighbourhood_sums`. The new tiers must give
the same alignments, hit for hit, and the same candidates with the same votes.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import soxr

from refrain.fingerprint import fingerprint_signal
from refrain.fingerprint.hashes import TIER_PAYLOAD_BITS
from refrain.index.landmarks import LandmarkIndex
from refrain.matcher import pair
from refrain.matcher.pair import (_OFFSET_BIAS, PairHits, PairTier, PairVotes, group_pair_hits, pair_alignments,
                                  pair_alignments_of_hits, pair_cells, pair_hits, pair_votes_on)
from refrain.matcher.peaks import _OFFSET_NEIGHBOURS, PeaksTier, _candidates
from refrain.matcher.types import Catalogue, Query
from refrain.matcher.voting import (lookup_in_store_order, neighbourhood_sums, vote_keys, vote_order, weighted_codes,
                                    weighted_lookup)
from refrain.synth import mix

SR = 22050
PAYLOAD_BITS = TIER_PAYLOAD_BITS["pair"]


def _reference_votes(index: LandmarkIndex, hashes: np.ndarray, frames: np.ndarray, params: PairTier,
                     candidates: np.ndarray | None = None) -> PairVotes:
    """Every hit as a vote, sorted by (track, offset): the votes the pair tier used to make."""
    code_ids, code_weights, first_hit, hits_per_code, labels = weighted_lookup(index, hashes, params, candidates)
    positions = np.concatenate([np.arange(first, first + count) for first, count in zip(first_hit, hits_per_code)]
                               + [np.zeros(0, np.int64)])
    query_ids = np.repeat(code_ids, hits_per_code)
    weights = np.repeat(code_weights, hits_per_code)
    query_frames = frames[query_ids].astype(np.int64)
    track_ids, ref_frames = labels[positions] >> PAYLOAD_BITS, labels[positions] & ((1 << PAYLOAD_BITS) - 1)
    offsets = ref_frames - query_frames
    order = vote_order(track_ids, offsets + _OFFSET_BIAS)
    return PairVotes(query_ids[order], track_ids[order], ref_frames[order], weights[order], query_frames[order],
                     offsets[order])


def _hits(index: LandmarkIndex, hashes: np.ndarray, frames: np.ndarray, params: PairTier,
          candidates: np.ndarray | None = None) -> PairHits:
    """The hits as :func:`~matcher.pair.pair_hits` groups them."""
    code_ids, code_weights, entries = weighted_codes(index, hashes, params)
    looked_up = hashes[code_ids]
    return group_pair_hits(code_ids, code_weights, frames[code_ids].astype(np.int64), entries, index.payload_bits,
                           lambda start, stop: lookup_in_store_order(index, looked_up[start:stop], candidates))


def _assert_same_alignments(expected, found):
    assert [(a.track_id, a.offset_frames) for a in found] == [(a.track_id, a.offset_frames) for a in expected]
    for old, new in zip(expected, found):
        assert (new.tier, new.time_ratio, new.pitch_bins) == (old.tier, old.time_ratio, old.pitch_bins)
        for name in ("query_frames", "ref_frames", "query_ids", "weights"):
            assert np.array_equal(getattr(new, name), getattr(old, name)), name


def _reference_candidates(votes: PairVotes, params: PeaksTier, catalogue: Catalogue,
                          skip: set[int]) -> list[tuple[int, int, int, np.ndarray]]:
    """The peaks tier's candidates as it took them from every vote (sorted by track, offset).

    Its pool of cells was an ``argpartition``, which took equal weights at the pool's edge
    in no defined order; here, as in the tier now, the earlier (track, offset) goes first.
    """
    if len(votes) == 0:
        return []
    keys = vote_keys(votes.track_ids, votes.offsets + _OFFSET_BIAS)
    cells, summed, _, _ = neighbourhood_sums(keys, votes.weights, _OFFSET_NEIGHBOURS)
    cell_tracks, cell_offsets = cells >> 32, (cells & 0xFFFFFFFF) - _OFFSET_BIAS
    searched = np.ones(int(cell_tracks.max()) + 1, dtype=bool)
    if catalogue.track_durations is not None:
        searched[:] = False
        searched[[t for t in catalogue.track_durations if t < len(searched)]] = True
    searched[[t for t in skip if t < len(searched)]] = False
    summed = np.where(searched[cell_tracks], summed, 0.0)
    wanted = params.candidates * params.offsets_per_candidate
    pool = min(len(cells), 8 * wanted)
    best = np.argsort(-summed, kind="stable")[:pool]
    candidates: list[tuple[int, int, int, np.ndarray]] = []
    taken: dict[int, list[int]] = {}
    for cell_index in best:
        if summed[cell_index] < params.min_votes or len(candidates) == wanted:
            break
        track_id, offset = int(cell_tracks[cell_index]), int(cell_offsets[cell_index])
        track_offsets = taken.get(track_id, [])
        new_track_over_limit = not track_offsets and len(taken) == params.candidates
        if new_track_over_limit or len(track_offsets) == params.offsets_per_candidate \
                or any(abs(offset - other) <= 2 for other in track_offsets):
            continue
        taken[track_id] = track_offsets + [offset]
        lo, hi = np.searchsorted(keys, [cells[cell_index] - 1, cells[cell_index] + 2])
        candidates.append((track_id, offset, int(np.median(votes.query_frames[lo:hi])), votes.query_ids[lo:hi]))
    return candidates


def _assert_same_candidates(expected, found):
    assert [c[:3] for c in found] == [c[:3] for c in expected]
    for old, new in zip(expected, found):
        assert np.array_equal(new[3], old[3])


def _assert_same_cells(votes: PairVotes, hits: PairHits, deltas: np.ndarray):
    """:func:`pair_cells` of the hits are ``neighbourhood_sums`` of their sorted votes, bit for bit, heaviest first;
    a bounded pool of them is the same list's first cells, and so is a pool of the searched tracks' cells."""
    keys = vote_keys(votes.track_ids, votes.offsets + _OFFSET_BIAS)
    cells, summed, _, _ = neighbourhood_sums(keys, votes.weights, deltas)
    order = np.argsort(-summed, kind="stable")   # ties in (track, offset) order
    tracks, offsets, found = pair_cells(hits, deltas)
    assert np.array_equal(tracks, cells[order] >> 32)
    assert np.array_equal(offsets, (cells[order] & 0xFFFFFFFF) - _OFFSET_BIAS)
    assert np.array_equal(found.view(np.int64), summed[order].view(np.int64))
    with_hits = hits.tracks
    searched = np.arange(len(with_hits)) % 3 != 1
    searched_cells = np.isin(tracks, with_hits[searched])
    for keep in (1, 7, 240, 5000):
        for min_weight in (0.0, float(np.median(found))):
            expected = searched_cells & (found >= min_weight)
            bounded = pair_cells(hits, deltas, searched, keep, min_weight)
            for values, every in zip(bounded, (tracks, offsets, found)):
                assert np.array_equal(values, every[expected][:keep])


@pytest.fixture(scope="module")
def crowded_store():
    """Many tracks over few codes, so that most tracks collect chance votes and many tie; three hold a copy.

    Returns (index, query hashes, query frames, the tracks holding the query).
    """
    rng = np.random.default_rng(7)
    index = LandmarkIndex.create(PAYLOAD_BITS)
    hashes = rng.integers(0, 3000, 1200).astype(np.uint32)
    frames = np.sort(rng.integers(0, 860, 1200))
    copies = {40: 500, 41: 120, 700: 2000}   # track -> offset of the query in it
    for track in range(900):
        count = int(rng.integers(30, 300))
        codes, payloads = rng.integers(0, 3000, count).astype(np.uint32), rng.integers(0, 4000, count)
        if track in copies:
            kept = rng.random(len(hashes)) < 0.3
            codes = np.concatenate([codes, hashes[kept]])
            payloads = np.concatenate([payloads, frames[kept] + copies[track]])
            if track == 700:   # the same passage again, further on: a second alignment
                codes = np.concatenate([codes, hashes[kept]])
                payloads = np.concatenate([payloads, frames[kept] + 3000])
        index.add(track, codes, payloads)
    return index, hashes, frames, sorted(copies)


@pytest.mark.parametrize("offset_tolerance", [0, 1, 2])
@pytest.mark.parametrize("max_candidates,min_score", [(1, 0.5), (3, 1.0), (24, 2.0), (24, 8.0), (500, 0.3)])
def test_alignments_are_those_of_every_vote(crowded_store, offset_tolerance, max_candidates, min_score):
    index, hashes, frames, copied = crowded_store
    params = PairTier(min_score=min_score, max_candidates=max_candidates, offset_tolerance=offset_tolerance,
                      common_hash_entries_per_code=2 ** 8)
    expected = pair_alignments(_reference_votes(index, hashes, frames, params), params)
    found = pair_alignments_of_hits(_hits(index, hashes, frames, params), params)
    _assert_same_alignments(expected, found)
    # Not a comparison of empty lists: the copies align, and chance tracks too but for the strictest cut.
    if max_candidates >= len(copied):
        assert set(copied) <= {a.track_id for a in found}
    assert len(found) >= (1 if min_score == 8.0 else max_candidates)


def test_candidate_tracks_and_empty_lookups(crowded_store):
    index, hashes, frames, copied = crowded_store
    params = PairTier(min_score=1.0, max_candidates=4, common_hash_entries_per_code=2 ** 8)
    candidates = np.array([3, 40, 41, 500, 899])
    expected = pair_alignments(_reference_votes(index, hashes, frames, params, candidates), params)
    _assert_same_alignments(expected, pair_alignments_of_hits(_hits(index, hashes, frames, params, candidates),
                                                              params))
    assert {40, 41} <= {a.track_id for a in expected}
    nowhere = np.array([5000, 5001], dtype=np.uint32)
    assert pair_alignments_of_hits(_hits(index, nowhere, frames[:2], params), params) == []


@pytest.mark.parametrize("deltas", [[0, 1, -1], [-1, 0, 1], [0], [0, 2, -2, 1, -1], []])
def test_every_cell_and_its_neighbourhood_weight_as_from_the_sorted_votes(crowded_store, deltas):
    index, hashes, frames, _ = crowded_store
    params = PairTier(common_hash_entries_per_code=2 ** 8)
    votes = _reference_votes(index, hashes, frames, params)
    assert len(votes) > 50_000
    _assert_same_cells(votes, _hits(index, hashes, frames, params), np.array(deltas, np.int64))


@pytest.mark.parametrize("peaks_params", [PeaksTier(), PeaksTier(candidates=3, offsets_per_candidate=1),
                                          PeaksTier(candidates=40, offsets_per_candidate=3, min_votes=0.5),
                                          PeaksTier(candidates=12, offsets_per_candidate=5, min_votes=2.5),
                                          PeaksTier(candidates=200, offsets_per_candidate=2, min_votes=0.1)])
@pytest.mark.parametrize("searched", ["all", "some"])
def test_the_peaks_tiers_candidates_are_those_of_every_vote(crowded_store, catalogue, songs, peaks_params,
                                                            searched):
    index, hashes, frames, copied = crowded_store
    params = PairTier(common_hash_entries_per_code=2 ** 8)
    durations = None if searched == "all" else {t: 100.0 for t in range(0, 900, 3)}
    crowded = Catalogue(tiers={"pair": index}, fingerprint_params=catalogue.params, track_durations=durations)
    skip = set() if searched == "all" else {copied[0], 300, 303}
    expected = _reference_candidates(_reference_votes(index, hashes, frames, params), peaks_params, crowded, skip)
    fp = dataclasses.replace(fingerprint_signal(songs[30].excerpt(0.0, 10.0), catalogue.params),
                             hashes=hashes, frames=frames)
    query = Query(fingerprint=fp)
    _assert_same_candidates(expected, _candidates(pair_hits(query, crowded, params), peaks_params, crowded, skip))
    assert len(expected) >= 3
    assert pair_hits(query, crowded, params) is query.shared["pair"]


@pytest.mark.parametrize("per_lookup", [1, 700, 1 << 30])
def test_hits_grouped_from_bounded_lookups_are_those_of_one_lookup(crowded_store, monkeypatch, per_lookup):
    # A query's codes are looked up a few at a time, twice (counting, placing): whatever the batches, each
    # track's hits come out the same, in code order, as from one lookup of every code.
    index, hashes, frames, _ = crowded_store
    params = PairTier(common_hash_entries_per_code=2 ** 8)
    whole = _hits(index, hashes, frames, params)
    lookups = []
    monkeypatch.setattr(pair, "_HITS_PER_LOOKUP", per_lookup)
    code_ids, code_weights, entries = weighted_codes(index, hashes, params)

    def lookup(start, stop):
        lookups.append((start, stop))
        return lookup_in_store_order(index, hashes[code_ids][start:stop])

    batched = group_pair_hits(code_ids, code_weights, frames[code_ids].astype(np.int64), entries, index.payload_bits,
                              lookup)
    for name in ("tracks", "bounds", "hits", "offset_bits", "lowest", "highest"):
        assert np.array_equal(getattr(batched, name), getattr(whole, name)), name
    assert batched.hits.dtype == np.uint32
    # Each batch twice, in code order, covering every code once; the last is placed from its first lookup.
    batches = lookups[:(len(lookups) + 1) // 2]
    assert lookups[(len(lookups) + 1) // 2:] == batches[:-1]
    ends = [stop for _, stop in batches]
    assert [start for start, _ in batches] == [0] + ends[:-1] and ends[-1] == len(code_ids)
    assert len(batches) == {1: len(code_ids), 700: len(batches), 1 << 30: 1}[per_lookup]
    assert 1 < len(batches) < len(code_ids) or per_lookup != 700
    _assert_same_cells(_reference_votes(index, hashes, frames, params), batched, _OFFSET_NEIGHBOURS)


def test_a_lookup_restricted_to_candidates_is_made_once(crowded_store, catalogue, songs, monkeypatch):
    # Its hits follow the candidates, not the runs: batches sized by the runs' entries would make every search in
    # them twice (at 640 catalogue hours the pair tier's 10 s CPU rose from 26 to 44 ms).
    index, hashes, frames, _ = crowded_store
    params = PairTier(common_hash_entries_per_code=2 ** 8)
    monkeypatch.setattr(pair, "_HITS_PER_LOOKUP", 1)
    code_ids, code_weights, entries = weighted_codes(index, hashes, params)
    candidates = np.array([40, 41, 700], np.int64)
    lookups = []

    def lookup(start, stop):
        lookups.append((start, stop))
        return lookup_in_store_order(index, hashes[code_ids][start:stop], candidates)

    restricted = group_pair_hits(code_ids, code_weights, frames[code_ids].astype(np.int64), None,
                                 index.payload_bits, lookup)
    assert lookups == [(0, len(code_ids))]
    batched = group_pair_hits(code_ids, code_weights, frames[code_ids].astype(np.int64), entries,
                              index.payload_bits, lambda start, stop: lookup_in_store_order(
                                  index, hashes[code_ids][start:stop], candidates))
    assert len(restricted.hits) > 0 and set(restricted.tracks.tolist()) <= set(candidates.tolist())
    for name in ("tracks", "bounds", "hits", "offset_bits", "lowest", "highest"):
        assert np.array_equal(getattr(restricted, name), getattr(batched, name)), name
    # The tier asks so whenever its window has candidates.
    crowded = Catalogue(tiers={"pair": index}, fingerprint_params=catalogue.params)
    fp = dataclasses.replace(fingerprint_signal(songs[30].excerpt(0.0, 10.0), catalogue.params),
                             hashes=hashes, frames=frames)
    asked = []
    monkeypatch.setattr(pair, "lookup_in_store_order", lambda *args: asked.append(args) or lookup_in_store_order(*args))
    hits = pair_hits(Query(fingerprint=fp, candidates={"pair": candidates}), crowded, params)
    assert len(asked) == 1 and np.array_equal(hits.hits, restricted.hits)


def test_common_codes_are_searched_only_in_the_candidates_the_rare_ones_promote(crowded_store, catalogue, songs):
    # Bounded to more candidates than first_round_tracks, the rarest codes (runs within first_round_entries) are
    # searched in every candidate, the others only in those whose best offset then weighs first_round_min_weight
    # or ranks among the first_round_tracks best: their hits are all of them, the other candidates' the rare codes'.
    index, hashes, frames, copied = crowded_store
    candidates = np.union1d(np.arange(0, 900, 2), copied)
    code_ids, _, entries = weighted_codes(index, hashes, PairTier(common_hash_entries_per_code=2 ** 8))
    rarest_first = np.argsort(entries, kind="stable")
    params = PairTier(common_hash_entries_per_code=2 ** 8, first_round_min_weight=3.0, first_round_tracks=8,
                      first_round_entries=int(np.cumsum(entries[rarest_first])[len(entries) // 2]))
    rare = np.isin(np.arange(len(hashes)), code_ids[rarest_first[:len(entries) // 2 + 1]])
    votes = _reference_votes(index, hashes, frames, params, candidates)
    early = votes[rare[votes.query_ids]]
    _, _, _, best = neighbourhood_sums(vote_keys(early.track_ids, early.offsets + _OFFSET_BIAS), early.weights,
                                       np.arange(-1, 2))
    # Six weigh 3 or more (the copies among them); two more are among the eight best (ties: lower ids first).
    heaviest = np.isin(np.arange(len(best)), np.argsort(-best, kind="stable")[:8])
    promoted = np.unique(early.track_ids)[(best >= 3.0) | heaviest]
    expected = votes[rare[votes.query_ids] | np.isin(votes.track_ids, promoted)]
    assert np.sum(best >= 3.0) == 6 and len(promoted) == 8 and set(copied) <= set(promoted.tolist())
    assert len(expected) < len(votes)

    crowded = Catalogue(tiers={"pair": index}, fingerprint_params=catalogue.params)
    fp = dataclasses.replace(fingerprint_signal(songs[30].excerpt(0.0, 10.0), catalogue.params),
                             hashes=hashes, frames=frames)
    hits = pair_hits(Query(fingerprint=fp, candidates={"pair": candidates}), crowded, params)
    found = pair_votes_on(hits, hits.tracks)
    assert sorted(zip(found.track_ids, found.query_ids, found.offsets)) == \
        sorted(zip(expected.track_ids, expected.query_ids, expected.offsets))
    # The copies are promoted: they align as in one round.
    one_round = pair_alignments_of_hits(_hits(index, hashes, frames, params, candidates), params)
    _assert_same_alignments(one_round, pair_alignments_of_hits(hits, params))
    assert set(copied) <= {a.track_id for a in one_round}


def test_offsets_too_wide_for_four_bytes_are_grouped_in_eight(crowded_store):
    # A track's entries 2 ** 22 frames in (a recording of hours) put the offsets that far apart: with the query's
    # 1,200 codes they no longer share 32 bits, and the hits are held in 64 (the same alignments and cells).
    index, hashes, frames, copied = crowded_store
    wide = LandmarkIndex.create(PAYLOAD_BITS)
    for track in (40, 41, 700):
        codes, payloads = index.track_entries(track)
        wide.add(track, codes, payloads)
    wide.add(900, hashes[::5], frames[::5] + (1 << PAYLOAD_BITS) - 1000)
    params = PairTier(min_score=1.0, common_hash_entries_per_code=2 ** 8)
    hits = _hits(wide, hashes, frames, params)
    assert hits.hits.dtype == np.int64 and hits.offset_bits + (len(hits.code_ids) - 1).bit_length() > 32
    expected = pair_alignments(_reference_votes(wide, hashes, frames, params), params)
    _assert_same_alignments(expected, pair_alignments_of_hits(hits, params))
    assert {40, 41, 700, 900} <= {a.track_id for a in expected}
    _assert_same_cells(_reference_votes(wide, hashes, frames, params), hits, _OFFSET_NEIGHBOURS)


def test_a_query_without_hits_gets_no_candidates(crowded_store, catalogue, songs):
    # Generated tones (the service's warm-up) look up codes that no track holds.
    index, hashes, frames, _ = crowded_store
    nowhere = np.full(len(hashes), 5000, dtype=np.uint32)
    fp = dataclasses.replace(fingerprint_signal(songs[30].excerpt(0.0, 10.0), catalogue.params),
                             hashes=nowhere, frames=frames)
    crowded = Catalogue(tiers={"pair": index}, fingerprint_params=catalogue.params)
    hits = pair_hits(Query(fingerprint=fp), crowded, PairTier(common_hash_entries_per_code=2 ** 8))
    assert len(hits) == 0
    assert all(len(values) == 0 for values in pair_cells(hits, _OFFSET_NEIGHBOURS))
    assert _candidates(hits, PeaksTier(), crowded, set()) == []
    # Nor does a query without a code to look up.
    params = PairTier()
    nothing = _hits(index, hashes[:0], frames[:0], params)
    assert len(nothing) == 0 and len(nothing.tracks) == 0 and nothing.bounds.tolist() == [0]
    assert pair_alignments_of_hits(nothing, params) == []
    assert all(len(values) == 0 for values in pair_cells(nothing, _OFFSET_NEIGHBOURS))


def test_real_audio_mix_of_two_songs(catalogue, catalogue_index, songs):
    # 12 s of one song, then 8 s of another 3 dB under a third: three copies, two partly covered.
    y = np.concatenate([songs[34].excerpt(8.0, 12.0), mix(songs[41].excerpt(3.0, 8.0), songs[44].excerpt(12.0, 8.0),
                                                           -3.0)])
    fp = fingerprint_signal(soxr.resample(y, SR, catalogue.params.sample_rate), catalogue.params)
    index = catalogue.store.tiers["pair"]
    for params in (PairTier(), PairTier(min_score=0.5, max_candidates=2), PairTier(min_score=0.2, max_alignments=2)):
        expected = pair_alignments(_reference_votes(index, fp.hashes, fp.frames, params), params)
        found = pair_alignments_of_hits(_hits(index, fp.hashes, fp.frames, params), params)
        _assert_same_alignments(expected, found)
        assert catalogue_index.track_ids[34] in {a.track_id for a in found}
    # The peaks tier's candidates too (its pair weighting is the default's).
    params = PairTier()
    votes = _reference_votes(index, fp.hashes, fp.frames, params)
    hits = _hits(index, fp.hashes, fp.frames, params)
    _assert_same_cells(votes, hits, _OFFSET_NEIGHBOURS)
    searched = Catalogue(tiers=catalogue.store.tiers, fingerprint_params=catalogue.params,
                         track_durations={t: 30.0 for t in catalogue_index.track_ids.values()})
    for peaks_params, skip in ((PeaksTier(), set()), (PeaksTier(candidates=4, min_votes=0.3),
                                                      {catalogue_index.track_ids[34]})):
        expected = _reference_candidates(votes, peaks_params, searched, skip)
        _assert_same_candidates(expected, _candidates(hits, peaks_params, searched, skip))
        assert catalogue_index.track_ids[41] in {c[0] for c in expected}

"""The pair tier scores its hits in place and makes votes only for the tracks that can align.

The reference is the algorithm it replaced, kept here: every hit made a vote (six arrays
per hit), the votes were sorted by (track, offset) with :func:`~matcher.voting.vote_order`,
and :func:`~matcher.pair.pair_alignments` searched them all. The new tier must give the
same alignments, hit for hit, and :func:`~matcher.pair.pair_votes` the same votes.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import soxr

from refrain.fingerprint import fingerprint_signal
from refrain.fingerprint.hashes import TIER_PAYLOAD_BITS
from refrain.index.landmarks import LandmarkIndex
from refrain.matcher.pair import (_OFFSET_BIAS, PairHits, PairTier, PairVotes, pair_alignments,
                                  pair_alignments_of_hits, pair_hits, pair_votes)
from refrain.matcher.types import Catalogue, Query
from refrain.matcher.voting import vote_order, weighted_lookup
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
    code_ids, code_weights, first_hit, hits_per_code, labels = weighted_lookup(index, hashes, params, candidates)
    return PairHits(code_ids, code_weights, frames[code_ids].astype(np.int64), first_hit, hits_per_code, labels,
                    index.payload_bits)


def _assert_same_alignments(expected, found):
    assert [(a.track_id, a.offset_frames) for a in found] == [(a.track_id, a.offset_frames) for a in expected]
    for old, new in zip(expected, found):
        assert (new.tier, new.time_ratio, new.pitch_bins) == (old.tier, old.time_ratio, old.pitch_bins)
        for name in ("query_frames", "ref_frames", "query_ids", "weights"):
            assert np.array_equal(getattr(new, name), getattr(old, name)), name


def _assert_same_votes(expected: PairVotes, found: PairVotes):
    for field in dataclasses.fields(PairVotes):
        assert np.array_equal(getattr(found, field.name), getattr(expected, field.name)), field.name


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


def test_the_peaks_tier_gets_every_vote_sorted_as_before(crowded_store, catalogue, songs):
    index, hashes, frames, _ = crowded_store
    params = PairTier(common_hash_entries_per_code=2 ** 8)
    expected = _reference_votes(index, hashes, frames, params)
    assert len(expected) == len(_hits(index, hashes, frames, params)) > 50_000
    fp = dataclasses.replace(fingerprint_signal(songs[30].excerpt(0.0, 10.0), catalogue.params),
                             hashes=hashes, frames=frames)
    query = Query(fingerprint=fp)
    crowded = Catalogue(tiers={"pair": index}, fingerprint_params=catalogue.params)
    _assert_same_votes(expected, pair_votes(query, crowded, params))
    assert pair_hits(query, crowded, params) is query.shared["pair"]


def test_a_query_without_hits_gets_no_votes(crowded_store, catalogue, songs):
    # Generated tones (the service's warm-up) look up codes that no track holds.
    index, hashes, frames, _ = crowded_store
    nowhere = np.full(len(hashes), 5000, dtype=np.uint32)
    fp = dataclasses.replace(fingerprint_signal(songs[30].excerpt(0.0, 10.0), catalogue.params),
                             hashes=nowhere, frames=frames)
    crowded = Catalogue(tiers={"pair": index}, fingerprint_params=catalogue.params)
    votes = pair_votes(Query(fingerprint=fp), crowded, PairTier(common_hash_entries_per_code=2 ** 8))
    assert all(len(getattr(votes, field.name)) == 0 for field in dataclasses.fields(PairVotes))


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

"""Proposals: specific quad codes name the few tracks a query can use; the tiers search only those."""

from __future__ import annotations

import importlib
from dataclasses import replace

import librosa
import numpy as np
import pytest
import soxr

from conftest import SR
from refrain.api import Refrain
from refrain.config import Config
from refrain.fingerprint import fingerprint_signal
from refrain.fingerprint.hashes import double_landmarks, hash_quads, quad_landmarks, query_quads
from refrain.fingerprint.peaks import Peaks
from refrain.index.landmarks import LandmarkIndex, equal_runs
from refrain.matcher import TripletTier
from refrain.matcher.proposals import ProposalParams, propose, propose_copies, rarity_vote_weights
from refrain.matcher.voting import VOTE_WEIGHT_BITS, strongest_tracks


def _at_rate(y: np.ndarray, rate: int) -> np.ndarray:
    return soxr.resample(y, SR, rate)


def test_a_lookup_restricted_to_tracks_returns_exactly_their_hits():
    rng = np.random.default_rng(3)
    store = LandmarkIndex.create(payload_bits=22)
    for track in range(1, 40):
        codes = rng.integers(0, 50, size=300).astype(np.uint32)
        store.add(track, codes, rng.integers(0, 1 << 22, size=300))
    store.add(41, np.zeros(0, np.uint32), np.zeros(0, np.int64))
    query = np.arange(60, dtype=np.uint32)  # ten codes no track has
    full_first, full_counts, full_labels = store.lookup_slices(query)
    for tracks in ([5], [1, 2, 39], [7, 8, 20, 33, 41], [40, 41], []):
        first, counts, labels = store.lookup_slices(query, np.array(tracks))
        for code in range(len(query)):
            everything = full_labels[full_first[code]:full_first[code] + full_counts[code]]
            wanted = everything[np.isin(everything >> 22, tracks)]
            np.testing.assert_array_equal(labels[first[code]:first[code] + counts[code]], wanted)


def test_quad_codes_survive_speed_pitch_and_tempo_changes(songs):
    """A derivative's query quads (under the tempo hypotheses) find most of the reference's codes."""
    params = Config().fingerprint
    zones = (params.triplet_near_zone, params.triplet_far_zone, params.quad_near_targets, params.triplet_df_max)
    reference = fingerprint_signal(_at_rate(songs[41].samples, params.sample_rate), params)
    stored = set(hash_quads(reference.quads)[0].tolist())
    clip = songs[41].excerpt(8.0, 10.0)
    derivatives = {
        "copy": _at_rate(clip, params.sample_rate),
        "speed 1.1": soxr.resample(clip, SR * 1.1, params.sample_rate),
        "pitch +2": _at_rate(librosa.effects.pitch_shift(clip, sr=SR, n_steps=2.0), params.sample_rate),
        "tempo 0.9": _at_rate(librosa.effects.time_stretch(clip, rate=0.9), params.sample_rate),
    }
    shared = {}
    for name, y in derivatives.items():
        peaks = fingerprint_signal(y, params).peaks
        query = query_quads(peaks, *zones, tempo_ratios=TripletTier().tempo_hypotheses,
                            slack=ProposalParams().slack)
        codes, rows = hash_quads(query, tolerant=True, margin=ProposalParams().margin, pitch_reach_bins=15.0)
        found = np.unique(rows[np.isin(codes, list(stored))])
        shared[name] = len(found)
    # An unrelated song shares hardly any: the codes are specific.
    other = fingerprint_signal(_at_rate(songs[30].excerpt(8.0, 10.0), params.sample_rate), params)
    codes, rows = hash_quads(query_quads(other.peaks, *zones, tempo_ratios=(1.0,)), tolerant=True,
                             margin=ProposalParams().margin)
    assert shared["copy"] >= 100, shared
    assert min(shared.values()) >= 10, shared
    assert len(np.unique(rows[np.isin(codes, list(stored))])) < min(shared.values()) / 4


def test_quads_are_the_reference_rule_at_tempo_one():
    frames = np.arange(0, 400, 3)
    rng = np.random.default_rng(0)
    peaks = Peaks(frames=frames, bins=rng.integers(0, 100, len(frames)), strength=np.ones(len(frames)),
                  bin_offsets=np.zeros(len(frames)))
    zones = ((2, 12), (14, 40), 2, 36)
    stored = quad_landmarks(peaks, *zones)
    queried = query_quads(peaks, *zones, tempo_ratios=(1.0,))
    assert len(stored) == len(queried) > 0
    assert set(hash_quads(stored)[0].tolist()) == set(hash_quads(queried)[0].tolist())


def test_copy_votes_of_rare_codes_outrank_as_many_votes_of_common_ones():
    # Thousands of tracks hold two agreeing double hits by chance: ranked by count, ties went by track id, and
    # a true track of high id missed the cut. With rarity weights, two hits of rare codes rank first.
    track_ids = np.concatenate([np.repeat(np.arange(1, 301), 2), [9000, 9000]])
    cells = np.concatenate([np.tile([50, 50], 300), [70, 71]]).astype(np.int64)
    hits_per_code = np.concatenate([np.full(600, 4000), [3, 5]])
    weights = rarity_vote_weights(hits_per_code, ProposalParams().copy_max_hits)
    assert weights.min() >= 1 and weights.max() < 1 << VOTE_WEIGHT_BITS and weights[-1] < weights[-2]
    neighbours = np.array([-1, 0, 1])
    by_count = np.ones(len(track_ids), np.int64)
    assert strongest_tracks(track_ids, cells, neighbours, 2, 10, by_count).tolist() == list(range(1, 11))
    assert strongest_tracks(track_ids, cells, neighbours, 2, 10, weights)[0] == 9000
    # A track needs copy_min_votes agreeing hits however rare: one hit of the rarest code is not proposed.
    lone = strongest_tracks(np.append(track_ids, 9500), np.append(cells, 10), neighbours, 2, 400,
                            np.append(weights, (1 << VOTE_WEIGHT_BITS) - 1))
    assert 9500 not in lone.tolist()


@pytest.mark.parametrize("transform", ["excerpt", "speed", "noisy", "tempo"])
def test_the_true_track_is_proposed(catalogue, catalogue_index, songs, transform):
    rate = catalogue.params.sample_rate
    clip = songs[44].excerpt(11.0, 10.0)
    y = {"excerpt": lambda: _at_rate(clip, rate),
         "speed": lambda: soxr.resample(clip, SR * 1.2, rate),
         "noisy": lambda: _at_rate(clip + np.random.default_rng(1).normal(0, 2 * clip.std(), len(clip)), rate),
         "tempo": lambda: _at_rate(librosa.effects.time_stretch(clip, rate=1.15), rate)}[transform]()
    fp = fingerprint_signal(y.astype(np.float32), catalogue.params)
    proposed = propose(fp, catalogue.store.tiers["quad"], catalogue.params, ProposalParams(), TripletTier())
    assert catalogue_index.track_ids[44] in proposed.tolist(), proposed
    # The six songs are one generator's: chance agreement proposes others too, never more than asked.
    fewer = propose(fp, catalogue.store.tiers["quad"], catalogue.params, ProposalParams(max_candidates=2),
                    TripletTier())
    assert len(fewer) <= 2 and fewer.tolist() == proposed[:len(fewer)].tolist()


def _copy_query(clip: np.ndarray, transform: str, background: np.ndarray, rate: int) -> np.ndarray:
    return {"excerpt": lambda: _at_rate(clip, rate),
            "noisy": lambda: _at_rate(clip + np.random.default_rng(2).normal(0, 2 * clip.std(), len(clip)), rate),
            "mixed": lambda: _at_rate(0.5 * clip + background[:len(clip)], rate)}[transform]().astype(np.float32)


@pytest.mark.parametrize("transform", ["excerpt", "noisy", "mixed"])
def test_a_copy_is_proposed_also_under_other_music(catalogue, catalogue_index, songs, unrelated_songs, transform):
    """As a query is fingerprinted for matching: with its dense peaks, from which its doubles are built."""
    params = catalogue.params
    y = _copy_query(songs[34].excerpt(6.0, 10.0), transform, unrelated_songs[45], params.sample_rate)
    fp = fingerprint_signal(y, params, dense_peaks=True)
    proposed = propose_copies(fp, catalogue.store.tiers["double"], params, ProposalParams())
    assert catalogue_index.track_ids[34] in proposed.tolist(), proposed
    fewer = propose_copies(fp, catalogue.store.tiers["double"], params, ProposalParams(copy_max_candidates=1))
    assert fewer.tolist() == proposed[:1].tolist()


class _CountingStore:
    """A landmark store that records the codes looked up and the hits they returned."""

    def __init__(self, store: LandmarkIndex):
        self._store, self.looked_up, self.hits = store, [], 0

    def __getattr__(self, name):
        return getattr(self._store, name)

    def lookup_rarest(self, hashes, max_hits):
        chosen, first_hit, hits_per_code, labels = self._store.lookup_rarest(hashes, max_hits)
        self.looked_up.append(np.asarray(hashes)[chosen])
        self.hits += int(hits_per_code.sum())
        return chosen, first_hit, hits_per_code, labels


def test_copy_proposals_read_at_most_their_budget_of_hits_rarest_codes_first(catalogue, catalogue_index, songs,
                                                                             unrelated_songs):
    params = catalogue.params
    store = catalogue.store.tiers["double"]
    y = _copy_query(songs[34].excerpt(6.0, 10.0), "mixed", unrelated_songs[45], params.sample_rate)
    fp = fingerprint_signal(y, params, dense_peaks=True)
    everything = _CountingStore(store)
    propose_copies(fp, everything, params, ProposalParams(copy_max_hits=10 ** 9))
    (all_codes,) = everything.looked_up
    counts = store.code_counts(all_codes)
    budget = int(counts.sum()) // 4
    assert budget > 0
    bounded = _CountingStore(store)
    proposed = propose_copies(fp, bounded, params, ProposalParams(copy_max_hits=budget))
    (kept,) = bounded.looked_up
    assert 0 < bounded.hits <= budget < everything.hits
    # The codes left out are the commonest: none is rarer than a code looked up.
    kept_counts = store.code_counts(kept)
    left_out = np.setdiff1d(all_codes, kept)
    assert store.code_counts(left_out).min() >= kept_counts.max()
    # A quarter of the hits, from the rarest codes, still name the song first.
    assert proposed[:1].tolist() == [catalogue_index.track_ids[34]], proposed



def test_derivative_proposals_read_at_most_their_budget_of_hits_rarest_codes_first(catalogue, catalogue_index,
                                                                                   songs):
    """In a catalogue where half of a song's quad codes are common (200 other tracks hold them too)."""
    params = catalogue.params
    store = LandmarkIndex.create(payload_bits=catalogue.store.tiers["quad"].payload_bits)
    for seed, song in songs.items():
        codes, payloads = fingerprint_signal(_at_rate(song.samples, params.sample_rate), params).index_entries()["quad"]
        store.add(catalogue_index.track_ids[seed], codes, payloads)
        if seed == 44:
            rng = np.random.default_rng(5)
            common = rng.choice(codes, size=len(codes) // 2, replace=False)
    for chance_track in range(1000, 1200):
        store.add(chance_track, common, rng.integers(0, 1 << store.payload_bits, size=len(common)))
    y = soxr.resample(songs[44].excerpt(11.0, 10.0), SR * 1.2, params.sample_rate).astype(np.float32)
    fp = fingerprint_signal(y, params)
    everything = _CountingStore(store)
    propose(fp, everything, params, ProposalParams(max_hits=10 ** 9), TripletTier())
    (all_codes,) = everything.looked_up
    assert store.code_counts(all_codes).min() > 0  # codes no track stores are not looked up
    budget = everything.hits // 10
    bounded = _CountingStore(store)
    proposed = propose(fp, bounded, params, ProposalParams(max_hits=budget), TripletTier())
    (kept,) = bounded.looked_up
    assert 0 < bounded.hits <= budget
    # The codes left out are the commonest: none is rarer than a code looked up.
    left_out = np.setdiff1d(all_codes, kept)
    assert store.code_counts(left_out).min() >= store.code_counts(kept).max()
    # A tenth of the hits, from the rarest codes, still name the sped-up song first.
    assert proposed[:1].tolist() == [catalogue_index.track_ids[44]], proposed

def test_copy_proposals_also_ask_the_strongest_peaks_doubles_by_the_catalogues_rule(catalogue, songs, unrelated_songs):
    # Under broadband noise the dense peaks fill with the noise's, pushing a recording's targets past an anchor's
    # nearest ten; its strongest peaks' doubles, made as the catalogue made its own, are asked as well.
    params = catalogue.params
    clip = songs[34].excerpt(6.0, 10.0)
    # Brown noise, its slowest drift taken out, as loud as the song: broadband, strongest in the low bins.
    noise = np.cumsum(np.random.default_rng(4).normal(0, 1, len(clip)))
    noise -= np.convolve(noise, np.ones(64) / 64, "same")
    noise *= clip.std() / noise.std()
    fp = fingerprint_signal(_at_rate(clip + noise, params.sample_rate).astype(np.float32), params, dense_peaks=True)
    store = catalogue.store.tiers["double"]
    asked = _CountingStore(store)
    propose_copies(fp, asked, params, ProposalParams(copy_max_hits=10 ** 9))
    (looked_up,) = asked.looked_up
    zone = (params.target_dt_min, params.target_dt_max, params.target_df_max)
    strongest = double_landmarks(fp.peaks, *zone).codes
    stored = strongest[store.code_counts(strongest) > 0]
    dense_only = double_landmarks(fp.dense_peaks, *zone, ProposalParams().copy_slack).codes
    assert len(np.setdiff1d(stored, dense_only)) > 0  # the dense doubles alone would not ask them all
    assert np.isin(stored, looked_up).all()


def test_dense_peaks_keep_copy_proposals_that_the_strongest_peaks_lose(catalogue, catalogue_index, songs,
                                                                       unrelated_songs):
    """12 dB under another song: few of the song's doubles survive among the strongest peaks."""
    params = catalogue.params
    song = songs[34].excerpt(6.0, 10.0)
    background = unrelated_songs[45][:len(song)]
    gain = np.sqrt(np.mean(background ** 2) / np.mean(song ** 2)) * 10 ** (-12 / 20)
    fp = fingerprint_signal(_at_rate(background + gain * song, params.sample_rate).astype(np.float32), params,
                            dense_peaks=True)
    store, true_track = catalogue.store.tiers["double"], catalogue_index.track_ids[34]
    with_dense = propose_copies(fp, store, params, ProposalParams())
    strongest_only = propose_copies(replace(fp, dense_peaks=None), store, params, ProposalParams(copy_slack=1))
    assert true_track in with_dense.tolist(), with_dense
    assert true_track not in strongest_only.tolist(), strongest_only


def _bounded(catalogue, copies: bool = False) -> Refrain:
    """The catalogue searched through proposals although it is small (and with copies bounded too)."""
    match = catalogue.config.match
    return Refrain(catalogue.store, replace(catalogue.config, match=replace(
        match, proposals=replace(match.proposals, min_catalogue_tracks=0, copies=copies))))


def test_a_catalogue_smaller_than_the_bound_is_searched_exhaustively(catalogue, songs, monkeypatch):
    proposed = []

    def counting(*args):
        proposed.append(args)
        return np.zeros(0, np.int64)

    # (refrain.matcher exports its match function under the module's name)
    monkeypatch.setattr(importlib.import_module("refrain.matcher.match"), "propose", counting)
    query = _at_rate(songs[30].excerpt(3.0, 10.0), catalogue.params.sample_rate).astype(np.float32)
    assert catalogue.match_signal(query, "q").matches and not proposed
    _bounded(catalogue).match_signal(query, "q")
    assert proposed


def test_with_bounded_copies_a_song_12_db_under_another_is_proposed_and_found_by_its_peaks(
        catalogue, catalogue_index, songs, unrelated_songs):
    rate = catalogue.params.sample_rate
    song = songs[34].samples[10 * SR:]
    background = unrelated_songs[45][:len(song)]
    gain = np.sqrt(np.mean(background ** 2) / np.mean(song ** 2)) * 10 ** (-12 / 20)
    result = _bounded(catalogue, copies=True).match_signal(_at_rate(background + gain * song, rate).astype(np.float32),
                                                     "remix")
    assert [(m.track_id, m.kind) for m in result.matches] == [(catalogue_index.track_ids[34], "mixed")]


def test_matching_with_proposals_finds_what_a_search_of_every_track_finds(catalogue, songs, unrelated_songs):
    rate = catalogue.params.sample_rate
    queries = [_at_rate(songs[30].excerpt(3.0, 10.0), rate),
               soxr.resample(songs[33].excerpt(5.0, 12.0), SR * 0.9, rate),
               _at_rate(np.concatenate([songs[49].excerpt(2.0, 9.0), songs[41].excerpt(20.0, 9.0)]), rate),
               _at_rate(0.5 * songs[34].excerpt(4.0, 12.0) + unrelated_songs[35][:12 * SR], rate)]
    every_track = Refrain(catalogue.store, replace(catalogue.config,
                                                   match=replace(catalogue.config.match, proposals=None)))
    for y in queries:
        searched_all = every_track.match_signal(y.astype(np.float32), "q").matches
        assert searched_all
        for bounded in (_bounded(catalogue), _bounded(catalogue, copies=True)):
            assert bounded.match_signal(y.astype(np.float32), "q").matches == searched_all


@pytest.mark.parametrize("codes", [[], [5], [5, 5, 5], [1, 2, 3], [7, 7, 2, 9, 9, 9, 7]])
def test_repeated_codes_are_looked_up_once_and_share_their_slice(codes):
    codes = np.array(codes, np.uint32)
    starts, runs = equal_runs(codes)
    np.testing.assert_array_equal(codes[starts][runs], codes)
    assert np.all(codes[starts][1:] != codes[starts][:-1])  # one start per run of equal codes

"""A query's work follows the tracks it finds, not the number or the ids of the catalogue's tracks."""

from __future__ import annotations

from dataclasses import replace
from typing import Iterator, Mapping

import numpy as np
import pytest
import soxr

from conftest import SR
from refrain.fingerprint import fingerprint_signal
from refrain.index.landmarks import TRACK_BITS, LandmarkIndex
from refrain.matcher import Catalogue, PairTier, Query, TrackDurations, TripletTier, match
from refrain.matcher.voting import dense_track_numbers


class _Unwalkable(Mapping[int, float]):
    """Reportable tracks that fail the test when walked: a query may only ask about the tracks it found."""

    def __init__(self, durations: Mapping[int, float]):
        self._durations = durations

    def __getitem__(self, track_id: int) -> float:
        return self._durations[track_id]

    def __contains__(self, track_id: object) -> bool:
        return track_id in self._durations

    def __len__(self) -> int:
        return len(self._durations)

    def __iter__(self) -> Iterator[int]:
        raise AssertionError("a query walked every track of the catalogue")


def test_track_durations_answer_as_the_dict_they_replace():
    rng = np.random.default_rng(3)
    ids = rng.choice(10 ** 9, 500, replace=False)
    seconds = rng.uniform(1.0, 600.0, 500)
    table, plain = TrackDurations(ids, seconds), dict(zip(ids.tolist(), seconds.tolist()))
    assert len(table) == 500 and list(table) == sorted(plain) and dict(table) == plain
    asked = np.concatenate([ids[:50], rng.integers(0, 10 ** 9, 50), [-1, 0, 2 ** 40]])
    assert table.holds(asked).tolist() == [int(t) in plain for t in asked]
    assert table.holds(asked.reshape(-1, 1)).shape == (len(asked), 1)
    assert all(table[int(t)] == plain[int(t)] and int(t) in table and np.int64(t) in table for t in ids[:20])
    assert "7" not in table and 1.5 not in table
    with pytest.raises(KeyError):
        table[-1]
    assert not TrackDurations(np.zeros(0), np.zeros(0)).holds(np.arange(3)).any()
    with pytest.raises(ValueError, match="distinct"):
        TrackDurations(np.array([4, 2, 4]), np.ones(3))


@pytest.mark.parametrize("count,spread", [(0, 10), (1, 1), (1000, 50), (20000, 13000), (20000, 3 * 10 ** 9),
                                          (5000, 10 ** 12)])
def test_tracks_are_numbered_by_rank_among_the_distinct_ids(count, spread):
    # 20,000 hits over 3e9 ids: the hash table, grown several times as new ids keep coming.
    ids = np.random.default_rng(count).integers(0, spread, count)
    numbers, tracks = dense_track_numbers(ids)
    distinct, rank = np.unique(ids, return_inverse=True)
    assert numbers.dtype == np.int32 and np.array_equal(tracks, distinct)
    assert np.array_equal(numbers, rank.ravel())


def _query(songs, rate: int) -> np.ndarray:
    """Two catalogue songs, the second sped up by 6 %, 30 s in all at ``rate``."""
    first = soxr.resample(songs[30].excerpt(3.0, 15.0), SR, rate)
    second = soxr.resample(songs[33].excerpt(5.0, 16.0), SR * 1.06, rate)
    return np.concatenate([first, second]).astype(np.float32)


@pytest.mark.parametrize("bounded", [False, True])
def test_a_query_asks_the_catalogue_only_about_the_tracks_it_found(catalogue, catalogue_index, songs, bounded):
    params = catalogue.config.match
    if bounded:  # the proposals' path too, although the catalogue is small
        params = replace(params, proposals=replace(params.proposals, min_catalogue_tracks=0, copies=True))
    durations = {track.track_id: track.duration for track in catalogue.tracks()}
    fp = fingerprint_signal(_query(songs, catalogue.params.sample_rate), catalogue.params)
    plain = match(fp, Catalogue(catalogue.store.tiers, catalogue.params, durations), params)
    assert {m.track_id for m in plain} >= {catalogue_index.track_ids[30], catalogue_index.track_ids[33]}
    assert match(fp, Catalogue(catalogue.store.tiers, catalogue.params, _Unwalkable(durations)), params) == plain
    table = TrackDurations(np.array(list(durations)), np.array(list(durations.values())))
    assert match(fp, Catalogue(catalogue.store.tiers, catalogue.params, table), params) == plain


@pytest.mark.parametrize("tier,speed", [(TripletTier(), 0.97), (PairTier(), 1.0)], ids=["triplet", "pair"])
def test_matches_do_not_depend_on_how_large_the_track_ids_are(catalogue, catalogue_index, songs, tier, speed):
    # The same entries filed under ids spread over tens of millions (a store's ids lie below
    # 2 ** TRACK_BITS), searched in every track as proposals name them: each tier numbers the
    # tracks with hits instead of sizing arrays by the largest id.
    stored: LandmarkIndex = catalogue.store.tiers[tier.name]
    spread = LandmarkIndex.create(stored.payload_bits)
    ids = np.array([track.track_id for track in catalogue.tracks()])
    scale = (1 << TRACK_BITS) // (int(ids.max()) + 1)
    for track_id in ids.tolist():
        spread.add(track_id * scale, *stored.track_entries(track_id))
    fp = fingerprint_signal(soxr.resample(songs[33].excerpt(5.0, 12.0), SR * speed, catalogue.params.sample_rate)
                            .astype(np.float32), catalogue.params)

    def found(tiers: dict[str, LandmarkIndex], candidates: np.ndarray) -> list:
        return tier.find(Query(fp, candidates={tier.name: candidates}), Catalogue(tiers, catalogue.params),
                         frozenset())

    as_stored = found({tier.name: stored}, np.sort(ids))
    assert [m.track_id for m in as_stored][:1] == [catalogue_index.track_ids[33]]
    as_spread = found({tier.name: spread}, np.sort(ids) * scale)
    assert [replace(m, track_id=m.track_id // scale) for m in as_spread] == as_stored

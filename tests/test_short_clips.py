"""Short clips: the landmark tiers' threshold follows the query's length through their chance model."""

from __future__ import annotations

import numpy as np
import pytest
import soxr

from refrain.matcher import Calibration, PairTier, TripletTier
from refrain.matcher.types import ShortQueryTail

SR = 22050
# (catalogue seed, clip start in s): starts off the 32 ms frame grid on purpose.
CLIPS = [(30, 4.37), (33, 12.01), (34, 0.0), (41, 25.5), (44, 17.23), (49, 8.6)]


def at_index_rate(y: np.ndarray, rate: int) -> np.ndarray:
    return soxr.resample(y, SR, rate).astype(np.float32)


@pytest.mark.parametrize("seed, start", CLIPS)
def test_a_3s_clip_is_found_by_the_pair_tier_at_its_position(catalogue, catalogue_index, songs, seed, start):
    result = catalogue.match_signal(at_index_rate(songs[seed].excerpt(start, 3.0), catalogue.params.sample_rate))
    assert [m.track_id for m in result.matches] == [catalogue_index.track_ids[seed]], result.matches
    (found,) = result.matches
    # An exact 3 s copy saturates the per-second cap: 3 seconds of 2 each, above the 3 s
    # threshold and below the 8 a 10 s query needs.
    pair = catalogue.config.match.tier("pair")
    assert found.tier == "pair" and found.kind in ("copy", "excerpt")
    assert pair.min_score_for(3.0, pair.calibration) <= found.score < pair.min_score
    assert found.offset == pytest.approx(start, abs=0.1)
    assert found.chance < 1e-4


def test_3s_windows_of_music_not_in_the_catalogue_match_nothing(catalogue, unrelated_songs):
    rate = catalogue.params.sample_rate
    for seed, y in unrelated_songs.items():
        for start in np.arange(0.0, len(y) / SR - 3.0, 1.5):
            clip = at_index_rate(y[int(start * SR):int((start + 3.0) * SR)], rate)
            assert catalogue.match_signal(clip).matches == [], (seed, start)


def test_a_clip_too_short_to_tell_from_chance_is_not_reported(catalogue, songs):
    # 1.5 s spans two seconds of the per-second cap: the pair score cannot reach the
    # threshold of the shortest measured length, which shorter clips keep.
    pair = catalogue.config.match.tier("pair")
    assert pair.min_score_for(1.5, pair.calibration) > 2 * pair.max_score_per_second
    result = catalogue.match_signal(at_index_rate(songs[41].excerpt(10.0, 1.5), catalogue.params.sample_rate))
    assert [m for m in result.matches if m.tier == "pair"] == []


@pytest.mark.parametrize("tier", [PairTier(), TripletTier()], ids=["pair", "triplet"])
def test_the_pass_rule_keeps_the_10s_threshold_and_follows_the_chance_model_elsewhere(tier):
    calibration = tier.calibration
    assert tier.min_score_for(10.0, calibration) == tier.min_score
    allowed = calibration.chance(tier.min_score, 10.0)
    for seconds in (3.0, 4.0, 5.0, 7.5, 60.0):
        threshold = tier.min_score_for(seconds, calibration)
        assert calibration.chance(threshold, seconds) == pytest.approx(allowed, rel=1e-3)
    # Longer queries have more chance agreement, shorter ones a lower per-second cap.
    thresholds = [tier.min_score_for(seconds, calibration) for seconds in (1.0, 3.0, 4.0, 5.0, 10.0, 20.0, 60.0)]
    assert thresholds == sorted(thresholds)
    # The calibration bench's "no threshold" (minus infinity) stays none at every length.
    assert calibration.equally_rare(float("-inf"), 3.0) == float("-inf")


def test_the_pair_tier_is_calibrated_on_3_and_5s_queries():
    # Its 3 s threshold is what an exact 3 s copy reaches (3 seconds at the cap of 2).
    pair = PairTier()
    assert [tail.seconds for tail in pair.calibration.short_queries] == [3.0, 5.0]
    assert pair.min_score_for(3.0, pair.calibration) < 3 * pair.max_score_per_second


def test_the_chance_model_interpolates_between_measured_lengths():
    three = ShortQueryTail(seconds=3.0, anchor_score=2.5, anchor_chance=0.1, scale=0.25, queries=100)
    five = ShortQueryTail(seconds=5.0, anchor_score=3.0, anchor_chance=0.1, scale=0.35, queries=100)
    calibration = Calibration(anchor_score=3.25, anchor_chance=0.1, scale=0.44, queries=100,
                              catalogue_tracks=150, short_queries=(three, five))
    flat = Calibration(anchor_score=3.25, anchor_chance=0.1, scale=0.44, queries=100, catalogue_tracks=150)
    score = 5.0
    assert calibration.chance(score, 3.0) == pytest.approx(0.1 * np.exp(-(score - 2.5) / 0.25))
    assert calibration.chance(score, 5.0) == pytest.approx(0.1 * np.exp(-(score - 3.0) / 0.35))
    # Shorter than measured: the shortest tail (no extrapolation towards less chance).
    assert calibration.chance(score, 1.0) == calibration.chance(score, 3.0)
    # Half way in length: half way in log chance.
    assert np.log(calibration.chance(score, 4.0)) == pytest.approx(
        0.5 * (np.log(calibration.chance(score, 3.0)) + np.log(calibration.chance(score, 5.0))))
    # From 10 s up, and in a larger catalogue, the reference tail and its tries, as before.
    for seconds, tracks in ((10.0, None), (60.0, None), (30.0, 1500)):
        assert calibration.chance(score, seconds, tracks) == flat.chance(score, seconds, tracks)
    assert flat.chance(score, 60.0) == pytest.approx(6 * 0.1 * np.exp(-(score - 3.25) / 0.44))


"""Whole uploads: a derivative of a whole track is reported with its kind, its ratio and one span over it."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import soxr

from refrain.api import Refrain
from refrain.config import Config
from refrain.matcher import MatchParams

SR = 22050


def covered_share(match, upload_seconds: float) -> float:
    return sum(s.query_end - s.query_start for s in match.spans) / upload_seconds


def stretched(samples: np.ndarray, ratio: float, rate: int) -> np.ndarray:
    """The whole song time-stretched (phase vocoder: pitch kept), at the index's rate."""
    return soxr.resample(librosa.effects.time_stretch(samples, rate=ratio), SR, rate).astype(np.float32)


@pytest.mark.parametrize("seed, ratio", [(33, 0.9), (41, 0.8), (30, 1.25)])
def test_a_whole_time_stretched_song_is_one_time_stretched_span_not_mixed_fragments(
        catalogue, catalogue_index, songs, seed, ratio):
    # The stretch keeps a few ratio-1 fragments the pair tier finds (as "mixed"); the
    # triplet tier must still get to explain the whole upload.
    rate = catalogue.params.sample_rate
    y = stretched(songs[seed].samples, ratio, rate)
    result = catalogue.match_signal(y, "stretched")
    (found,) = [m for m in result.matches if m.track_id == catalogue_index.track_ids[seed]]
    assert (found.tier, found.kind) == ("triplet", "time_stretched"), found
    assert found.time_ratio == pytest.approx(ratio, rel=0.01)
    assert found.pitch_shift_semitones == pytest.approx(0.0, abs=0.25)
    assert len(found.spans) <= 2 and covered_share(found, len(y) / rate) >= 0.9, found.spans
    assert [m.track_id for m in result.matches] == [found.track_id], result.matches


def test_a_time_stretched_song_across_upload_windows_is_joined_into_one_span(catalogue_index, songs):
    # 12 s windows: the 41 s stretched song crosses three boundaries.
    windowed = Config(match=MatchParams(upload_window_seconds=12.0))
    with Refrain.open(catalogue_index.directory, windowed, mmap=True) as refrain:
        y = stretched(songs[34].samples, 0.85, refrain.params.sample_rate)
        result = refrain.match_signal(y, "stretched")
    (found,) = result.matches
    assert found.track_id == catalogue_index.track_ids[34]
    assert found.kind == "time_stretched" and found.time_ratio == pytest.approx(0.85, rel=0.01)
    assert len(found.spans) == 1 and covered_share(found, len(y) / refrain.params.sample_rate) >= 0.9, found.spans


def test_a_copy_mixed_under_other_music_is_still_reported_as_mixed(catalogue, catalogue_index, songs,
                                                                   unrelated_songs):
    # The pair tier's "mixed" is tentative, yet when it is the right explanation the
    # later tiers (finding nothing better) leave it so.
    rate = catalogue.params.sample_rate
    song, background = songs[44].excerpt(2.0, 30.0), unrelated_songs[45][:int(30.0 * SR)]
    gain = np.sqrt(np.mean(background ** 2) / np.mean(song ** 2)) * 10 ** (-6 / 20)
    y = soxr.resample(background + gain * song, SR, rate).astype(np.float32)
    found = {m.track_id: m for m in catalogue.match_signal(y, "mixed").matches}
    assert set(found) == {catalogue_index.track_ids[44]}, found
    assert found[catalogue_index.track_ids[44]].kind == "mixed"

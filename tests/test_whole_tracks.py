"""Whole uploads: a derivative of a whole track is reported with its kind, its ratio and one span over it."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import soxr

from refrain.api import Refrain, audio_between
from refrain.config import Config
from refrain.fingerprint import fingerprint_signal, load_audio
from refrain.fingerprint.decode import stream_audio
from refrain.fingerprint.pipeline import fingerprint_windows, window_margin_frames
from refrain.matcher import MatchParams
from refrain.matcher.melody import MelodyTier
from refrain.matcher.peaks import PeaksTier

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


# -- streaming: an upload fingerprinted and searched window by window ------------------------------


def test_an_upload_no_longer_than_a_window_is_fingerprinted_as_a_whole(catalogue, songs):
    y = soxr.resample(songs[41].samples, SR, catalogue.params.sample_rate).astype(np.float32)
    blocks = [y[start:start + 5000] for start in range(0, len(y), 5000)]
    (window,) = fingerprint_windows(blocks, catalogue.params, 60.0, dense_peaks=True)
    whole = fingerprint_signal(y, catalogue.params, dense_peaks=True)
    assert window.duration == whole.duration
    assert np.array_equal(window.hashes, whole.hashes) and np.array_equal(window.frames, whole.frames)
    assert np.array_equal(window.peaks.frames, whole.peaks.frames)
    assert np.array_equal(window.dense_peaks.frames, whole.dense_peaks.frames)
    assert np.array_equal(window.triplets.anchor_frames, whole.triplets.anchor_frames)
    assert np.array_equal(window.melody, whole.melody)


def test_windows_hold_the_landmarks_of_the_whole_upload_and_arrive_before_the_upload_ends(catalogue, songs):
    params = catalogue.params
    y = soxr.resample(np.concatenate([songs[seed].samples for seed in (30, 33, 34)]), SR,
                      params.sample_rate).astype(np.float32)
    block = params.sample_rate  # one second
    consumed = []

    def blocks():
        for start in range(0, len(y), block):
            consumed.append(start + block)
            yield y[start:start + block]

    whole = fingerprint_signal(y, params, dense_peaks=True)
    window_frames = int(round(20.0 / params.frame_seconds))
    margin_seconds = (window_margin_frames(params) * params.hop_length + params.n_fft) / params.sample_rate
    windows = fingerprint_windows(blocks(), params, 20.0, dense_peaks=True)
    for number, part in enumerate(windows):
        # Yielded once its own samples and the margin after it came in, not at the end of the upload.
        end = min(len(y), (number + 1) * 20.0 * params.sample_rate)
        assert consumed[-1] <= end + (margin_seconds + 1.0) * params.sample_rate
        first = number * window_frames
        inside = (whole.frames >= first) & (whole.frames < first + window_frames)
        # The landmarks the whole signal has there, counted from the window's start.
        assert np.array_equal(np.sort(part.hashes), np.sort(whole.hashes[inside]))
        assert np.array_equal(np.sort(part.frames), np.sort(whole.frames[inside] - first))
    assert number == int(np.ceil(len(y) / params.sample_rate / 20.0)) - 1


def test_an_upload_file_matched_block_by_block_reports_what_the_signal_matched_whole_does(
        catalogue_index, songs, write_audio, tmp_path):
    # Three songs end to end in 20 s windows: the file is decoded, fingerprinted and
    # searched a window at a time, with the same result as the decoded signal.
    windowed = Config(match=MatchParams(upload_window_seconds=20.0))
    y = np.concatenate([songs[seed].samples for seed in (44, 49, 41)])
    path = write_audio(tmp_path / "upload.flac", y)
    with Refrain.open(catalogue_index.directory, windowed, mmap=True) as refrain:
        streamed = refrain.match_file(path, "upload")
        whole = refrain.match_with_evidence(
            fingerprint_signal(load_audio(path, refrain.params.sample_rate), refrain.params, dense_peaks=True),
            "upload")[0]
    ids = catalogue_index.track_ids
    assert {m.track_id for m in streamed.matches} == {ids[44], ids[49], ids[41]}
    assert streamed.duration == pytest.approx(len(y) / SR, abs=0.01)
    for found, expected in zip(streamed.matches, whole.matches):
        assert (found.track_id, found.kind, found.tier) == (expected.track_id, expected.kind, expected.tier)
        assert found.offset == pytest.approx(expected.offset, abs=0.1)
        assert [bound for s in found.spans for bound in (s.query_start, s.query_end)] == pytest.approx(
            [bound for s in expected.spans for bound in (s.query_start, s.query_end)], abs=0.5)


def test_a_streamed_upload_keeps_the_whole_uploads_fingerprint_and_times_each_stage_once(
        catalogue_index, songs, write_audio, tmp_path):
    # 12 s windows over a 41 s upload: four windows, joined into the fingerprint of the whole signal.
    windowed = Config(match=MatchParams(upload_window_seconds=12.0))
    path = write_audio(tmp_path / "upload.flac", np.concatenate([songs[44].samples, songs[41].excerpt(0.0, 6.0)]))
    with Refrain.open(catalogue_index.directory, windowed, mmap=True) as refrain:
        params = refrain.params
        stages: dict[str, float] = {}
        streamed = refrain.match_stream(stream_audio(path, params.sample_rate, block_seconds=1.0), "upload",
                                        stages=stages)
    y = load_audio(path, params.sample_rate)
    whole = fingerprint_signal(y, params, dense_peaks=True)
    joined = streamed.windows.fingerprint()
    assert streamed.windows.window_frames % params.melody.frames_per_chroma == 0
    assert joined.duration == pytest.approx(whole.duration) and streamed.windows.landmarks == len(joined)
    assert np.array_equal(joined.melody, whole.melody)
    assert len(joined) == pytest.approx(len(whole), rel=0.002)
    assert streamed.result.matches[0].track_id == catalogue_index.track_ids[44]
    assert set(stages) == {"decode", "fingerprint", "match"} and all(s > 0 for s in stages.values())


def test_audio_between_reads_the_ranges_a_whole_decode_holds(songs, write_audio, tmp_path):
    path = write_audio(tmp_path / "upload.wav", songs[30].samples)
    y = load_audio(path, 8000)
    ranges = [(0.0, 2.5), (12.25, 13.0), (30.0, 40.0), (1.0, 3.0)]
    parts = audio_between(path, 8000, ranges)
    for (start, end), part in zip(ranges, parts):
        assert np.array_equal(part, y[int(start * 8000):int(end * 8000)])
    assert audio_between(path, 8000, []) == []


def test_the_peaks_and_melody_tiers_search_only_the_windows_the_recordings_found_leave_unexplained(
        catalogue_index, songs, unrelated_songs, monkeypatch):
    # 12 s windows: two of a catalogue song, then two of music outside the catalogue.
    searched: list[str] = []
    for tier in (PeaksTier, MelodyTier):
        monkeypatch.setattr(tier, "find", lambda self, query, *args, find=tier.find, **kwargs: (
            searched.append(self.name), find(self, query, *args, **kwargs))[1])
    outcomes = {}
    for unexplained_tiers in [("peaks", "melody"), ()]:
        windowed = Config(match=MatchParams(upload_window_seconds=12.0, unexplained_tiers=unexplained_tiers))
        with Refrain.open(catalogue_index.directory, windowed, mmap=True) as refrain:
            rate = refrain.params.sample_rate
            upload = np.concatenate([songs[41].samples[:int(24.0 * SR)], unrelated_songs[45][:int(24.0 * SR)]])
            y = soxr.resample(upload, SR, rate).astype(np.float32)
            searched.clear()
            outcomes[unexplained_tiers] = refrain.match_signal(y, "copy then other"), sorted(searched)
    (result, skipping), (everywhere, all_windows) = outcomes[("peaks", "melody")], outcomes[()]
    assert skipping == ["melody"] * 2 + ["peaks"] * 2 and all_windows == ["melody"] * 4 + ["peaks"] * 4
    (found,) = result.matches
    assert found.track_id == catalogue_index.track_ids[41] and found.kind in ("copy", "excerpt")
    assert covered_share(found, 24.0) >= 0.9
    assert [m.track_id for m in everywhere.matches] == [found.track_id]

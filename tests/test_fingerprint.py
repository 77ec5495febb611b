"""Landmark fingerprints: deterministic, gain- and shift-invariant, of the documented density."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import soxr
from scipy import ndimage

from refrain.fingerprint import (PAIR_LAYOUT, FingerprintError, FingerprintParams, HashLayout,
                         fingerprint_signal)
from refrain.fingerprint.hashes import hash_landmarks, pair_landmarks, unhash_landmarks
from refrain.fingerprint.peaks import maximum_filter

PARAMS = FingerprintParams()
SEEDS = (30, 34, 41)  # ballad, chiptune, pop: sparse to dense arrangements


@pytest.fixture(scope="module")
def signals(render) -> dict[int, np.ndarray]:
    """30 s songs at the analysis rate."""
    return {seed: soxr.resample(render(seed, 30.0), 22050, PARAMS.sample_rate, quality="HQ")
            .astype(np.float32) for seed in SEEDS}


def landmark_set(fp, frame_shift: int = 0) -> set[tuple[int, int]]:
    return set(zip(fp.hashes.tolist(), (fp.frames.astype(np.int64) + frame_shift).tolist()))


@pytest.mark.parametrize("seed", SEEDS)
def test_fingerprint_is_deterministic(signals, seed):
    a = fingerprint_signal(signals[seed], PARAMS)
    b = fingerprint_signal(signals[seed].copy(), PARAMS)
    assert len(a) > 1000
    assert a.hashes.dtype == np.uint32
    np.testing.assert_array_equal(a.hashes, b.hashes)
    np.testing.assert_array_equal(a.frames, b.frames)
    assert np.all(np.diff(a.frames) >= 0), "landmarks must be sorted by anchor frame"


@pytest.mark.parametrize("seed", SEEDS)
def test_fingerprint_ignores_gain(signals, seed):
    full = landmark_set(fingerprint_signal(signals[seed], PARAMS))
    quiet = landmark_set(fingerprint_signal(signals[seed] * np.float32(10 ** (-20 / 20)), PARAMS))
    assert len(full & quiet) >= 0.95 * len(full)
    assert len(full & quiet) >= 0.95 * len(quiet)


@pytest.mark.parametrize("peaks_per_second", [8.0, 16.0, 32.0])
@pytest.mark.parametrize("seed", SEEDS)
def test_peak_density_follows_the_setting(signals, seed, peaks_per_second):
    params = replace(PARAMS, peaks_per_second=peaks_per_second)
    fp = fingerprint_signal(signals[seed], params)
    density = len(fp.peaks) / fp.duration
    # The cap is enforced in a window centred on each peak, not in fixed windows, so
    # the overall density may exceed the target a little; these songs have enough
    # candidate peaks to come close to it from below.
    assert 0.75 * peaks_per_second <= density <= 1.25 * peaks_per_second, density
    # Each anchor pairs with at most `fanout` targets.
    assert len(fp) <= params.fanout * len(fp.peaks)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("start_frame", [0, 250, 531])
def test_excerpt_landmarks_are_a_subset_of_the_full_track(signals, seed, start_frame):
    # An excerpt starting on a frame boundary sees the same STFT frames as the full
    # track, so all landmarks away from its edges must reappear, shifted by start_frame.
    y = signals[seed]
    start = start_frame * PARAMS.hop_length
    excerpt = y[start:start + 10 * PARAMS.sample_rate]
    full = landmark_set(fingerprint_signal(y, PARAMS))
    part = landmark_set(fingerprint_signal(excerpt, PARAMS), frame_shift=start_frame)
    assert len(part) > 200
    assert len(part & full) >= 0.9 * len(part), f"{len(part & full)} of {len(part)} found"


def test_excerpt_shorter_than_a_window_has_no_landmarks():
    with pytest.raises(FingerprintError, match="too short"):
        fingerprint_signal(np.ones(PARAMS.n_fft - 1, dtype=np.float32), PARAMS)


# -- hash layout --------------------------------------------------------------------------------


def test_layout_pack_unpack_round_trip():
    rng = np.random.default_rng(0)
    values = {name: rng.integers(0, 1 << width, 10_000) for name, width in PAIR_LAYOUT.fields}
    # The extremes of every field too.
    for name, width in PAIR_LAYOUT.fields:
        values[name][:2] = [0, (1 << width) - 1]
    codes = PAIR_LAYOUT.pack(**values)
    assert codes.dtype == np.uint32
    unpacked = PAIR_LAYOUT.unpack(codes)
    assert set(unpacked) == {name for name, _ in PAIR_LAYOUT.fields}
    for name in values:
        np.testing.assert_array_equal(unpacked[name], values[name])


def test_layout_fields_are_packed_from_the_low_bits_up():
    layout = HashLayout("test", (("a", 4), ("b", 12), ("c", 16)))
    code = layout.pack(a=np.array([0x3]), b=np.array([0xABC]), c=np.array([0xFFFF]))
    assert int(code[0]) == 0xFFFF_ABC3


@pytest.mark.parametrize("bad", [-1, 256])
def test_layout_pack_rejects_out_of_range_values(bad):
    values = {"anchor_bin": np.array([1, bad]), "delta_bin": np.array([0, 0]),
              "delta_frames": np.array([0, 0])}
    with pytest.raises(ValueError, match="anchor_bin out of range for 8 bits"):
        PAIR_LAYOUT.pack(**values)


def test_layout_pack_rejects_a_missing_field():
    # Documented: "ValueError if a field is missing".
    with pytest.raises(ValueError):
        PAIR_LAYOUT.pack(anchor_bin=np.array([1]), delta_bin=np.array([2]))


def test_layout_wider_than_32_bits_is_refused():
    with pytest.raises(ValueError, match="more than 32 bits"):
        HashLayout("too-wide", (("a", 16), ("b", 17)))


def test_a_landmark_code_and_its_anchor_frame_give_back_both_peaks(signals):
    fp = fingerprint_signal(signals[34], PARAMS)
    landmarks = pair_landmarks(fp.peaks, PARAMS.fanout, PARAMS.target_dt_min, PARAMS.target_dt_max,
                               PARAMS.target_df_max)
    np.testing.assert_array_equal(hash_landmarks(landmarks), fp.hashes)
    back = unhash_landmarks(fp.hashes, fp.frames)
    for field in ("anchor_frames", "anchor_bins", "target_frames", "target_bins"):
        np.testing.assert_array_equal(getattr(back, field), getattr(landmarks, field))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, bool])
def test_the_maximum_filter_gives_scipys_numbers(dtype):
    draw = np.random.default_rng(7)
    for shape in [(183, 400), (1, 1), (3, 2), (20, 7)]:
        # Values rounded to a tenth: plenty of ties, as a spectrogram's plateaus have.
        values = draw.random(shape) > 0.8 if dtype is bool else np.round(draw.standard_normal(shape), 1).astype(dtype)
        for size in [(13, 9), (7, 5), (3, 3), (1, 5), (31, 17)]:
            expected = ndimage.maximum_filter(values, size=size, mode="nearest")
            assert np.array_equal(maximum_filter(values, size), expected)
    with pytest.raises(ValueError, match="odd"):
        maximum_filter(values, (4, 3))

"""Decoding: every accepted format gives the original signal; every bad file gives a clear error."""

from __future__ import annotations

import re
import subprocess

import imageio_ffmpeg
import numpy as np
import pytest
import soundfile as sf
import soxr

from refrain.fingerprint import (AudioDecodeError, FingerprintError, FingerprintParams, fingerprint_file,
                         load_audio)
from refrain.fingerprint.decode import probe_duration, stream_audio

SR = 22050  # rate of the rendered songs
RATE = FingerprintParams().sample_rate  # the analysis rate load_audio is asked for
SECONDS = 12.0

# suffix -> (ffmpeg encoder, extra ffmpeg arguments, lossless?)
FORMATS = {
    "wav": ("pcm_s16le", [], True),
    "flac": ("flac", [], True),
    "ogg": ("libvorbis", ["-q:a", "5"], False),
    "opus": ("libopus", ["-b:a", "96k", "-ar", "48000"], False),
    "mp3": ("libmp3lame", ["-b:a", "128k"], False),
    "m4a": ("aac", ["-b:a", "128k"], False),
}


@pytest.fixture(scope="module")
def ffmpeg() -> str:
    return imageio_ffmpeg.get_ffmpeg_exe()


@pytest.fixture(scope="module")
def source(render) -> np.ndarray:
    """The 16-bit samples every encoded file starts from."""
    return np.round(render(5, SECONDS) * 32767.0).astype("<i2")


@pytest.fixture(scope="module")
def reference(source) -> np.ndarray:
    """What a perfect decoder returns: the source resampled to the analysis rate."""
    return soxr.resample(source.astype(np.float32) / 32767.0, SR, RATE, quality="HQ")


@pytest.fixture(scope="module")
def encoded(tmp_path_factory, ffmpeg, source) -> dict:
    """The song encoded by ffmpeg in every format (a missing encoder fails the run)."""
    listing = subprocess.run([ffmpeg, "-hide_banner", "-encoders"], capture_output=True, text=True,
                             check=True).stdout
    available = {line.split()[1] for line in listing.splitlines()
                 if len(line.split()) > 1 and line.startswith(" A")}
    missing = sorted(codec for codec, _, _ in FORMATS.values() if codec not in available)
    assert not missing, f"the bundled ffmpeg ({ffmpeg}) lacks encoders {missing}"
    folder = tmp_path_factory.mktemp("encoded")
    paths = {}
    for suffix, (codec, extra, _) in FORMATS.items():
        path = folder / f"song.{suffix}"
        subprocess.run([ffmpeg, "-nostdin", "-v", "error", "-y", "-f", "s16le", "-ar", str(SR),
                        "-ac", "1", "-i", "pipe:0", "-c:a", codec, *extra, str(path)],
                       input=source.tobytes(), check=True, capture_output=True)
        paths[suffix] = path
    return paths


def best_alignment(x: np.ndarray, ref: np.ndarray, max_lag: int) -> tuple[int, float]:
    """(lag, correlation) maximising the correlation of ``x[lag:]`` with ``ref``."""
    best = (0, -1.0)
    for lag in range(-max_lag, max_lag + 1):
        a = x[max(lag, 0):]
        b = ref[max(-lag, 0):]
        n = min(len(a), len(b))
        corr = float(np.corrcoef(a[:n], b[:n])[0, 1])
        if corr > best[1]:
            best = (lag, corr)
    return best


@pytest.mark.parametrize("suffix", list(FORMATS))
def test_every_format_decodes_to_the_original(encoded, reference, suffix):
    lossless = FORMATS[suffix][2]
    y = load_audio(encoded[suffix], RATE)

    assert y.dtype == np.float32 and y.ndim == 1
    # Encoder delay and padding must be trimmed (gapless info), else every match offset
    # of an MP3/AAC/Opus query is off: allow 5 ms of length error and 1 ms of delay.
    assert abs(len(y) - len(reference)) <= (0 if lossless else 0.005 * RATE), \
        f"{suffix}: {len(y) / RATE:.4f} s decoded, {len(reference) / RATE:.4f} s encoded"
    lag, corr = best_alignment(y, reference, max_lag=int(0.05 * RATE))
    assert abs(lag) <= (0 if lossless else 0.001 * RATE), f"{suffix}: shifted by {lag} samples"
    assert corr > (0.9999 if lossless else 0.95), f"{suffix}: correlation {corr:.4f}"


def test_stereo_at_another_rate_is_mixed_down_and_resampled(tmp_path, source, reference):
    left = source.astype(np.float32) / 32767.0
    stereo = np.stack([left, 0.5 * left], axis=1)
    up = soxr.resample(stereo, SR, 44100, quality="HQ")
    sf.write(tmp_path / "stereo.flac", np.round(up * 32767.0).astype("<i2"), 44100)
    y = load_audio(tmp_path / "stereo.flac", RATE)
    assert abs(len(y) - len(reference)) <= 1
    n = min(len(y), len(reference))
    assert np.corrcoef(y[:n], reference[:n])[0, 1] > 0.999
    # Mono is the mean of the channels: (1 + 0.5) / 2 of the left one.
    assert np.std(y[:n]) == pytest.approx(0.75 * np.std(reference[:n]), rel=0.01)


@pytest.mark.parametrize("channels", [2, 6])
def test_mono_is_exactly_the_mean_of_the_channels(tmp_path, channels):
    frames = np.random.default_rng(channels).uniform(-0.5, 0.5, (3 * RATE, channels)).astype(np.float32)
    sf.write(tmp_path / "many.wav", frames, RATE, subtype="FLOAT")
    expected = frames.mean(axis=1)
    assert np.array_equal(load_audio(tmp_path / "many.wav", RATE), expected)
    streamed = np.concatenate(list(stream_audio(tmp_path / "many.wav", RATE, block_seconds=1.0)))
    assert np.array_equal(streamed, expected)


# -- files that are not usable audio ------------------------------------------------------------


def _cut(path, fraction):
    data = path.read_bytes()
    return data[: int(len(data) * fraction)]


BAD_FILES = {
    # name: (file name, how to make its bytes from the encoded files, expected message)
    "empty": ("empty.wav", lambda e: b"", r"empty \(0 bytes\)"),
    "half a WAV": ("half.wav", lambda e: _cut(e["wav"], 0.5), r"truncated"),
    "half a FLAC": ("half.flac", lambda e: _cut(e["flac"], 0.5), r"truncated"),
    "half an MP3": ("half.mp3", lambda e: _cut(e["mp3"], 0.5), r"truncated"),
    # libsndfile reads a cut Ogg to the cut without complaint: the missing end-of-stream page tells.
    "40 % of an Ogg": ("cut.ogg", lambda e: _cut(e["ogg"], 0.4), r"corrupt or truncated audio"),
    "half an Opus": ("cut.opus", lambda e: _cut(e["opus"], 0.5), r"corrupt or truncated audio"),
    "an Ogg cut inside its last page": ("end.ogg", lambda e: e["ogg"].read_bytes()[:-10],
                                        r"corrupt or truncated audio"),
    "WAV header only": ("header.wav", lambda e: e["wav"].read_bytes()[:44],
                        r"truncated|not a readable audio file|no audio samples"),
    "MP3 header only": ("header.mp3", lambda e: e["mp3"].read_bytes()[:400],
                        r"truncated|not a readable audio file|no audio samples"),
    "text renamed .mp3": ("notes.mp3", lambda e: b"These are not the sounds you are looking for.\n" * 40,
                          r"not a readable audio file"),
    "random bytes .wav": ("noise.wav", lambda e: np.random.default_rng(3).bytes(30_000),
                          r"not a readable audio file"),
    "random bytes .flac": ("noise.flac", lambda e: np.random.default_rng(4).bytes(30_000),
                           r"not a readable audio file"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_is_reported_with_its_reason(tmp_path, encoded, case):
    name, make, reason = BAD_FILES[case]
    path = tmp_path / name
    path.write_bytes(make(encoded))
    with pytest.raises(AudioDecodeError) as info:
        load_audio(path, RATE)
    message = str(info.value)
    assert str(path) in message
    assert re.search(reason, message), message


def test_missing_file(tmp_path):
    with pytest.raises(AudioDecodeError, match="no such file"):
        load_audio(tmp_path / "nowhere.mp3", RATE)


def test_a_folder_is_not_audio(tmp_path):
    with pytest.raises(AudioDecodeError, match="not a regular file"):
        load_audio(tmp_path, RATE)


def test_zero_length_audio(tmp_path):
    path = tmp_path / "zero.wav"
    sf.write(path, np.zeros(0, dtype="<i2"), SR, subtype="PCM_16")
    assert path.stat().st_size > 0  # a valid header, no frames
    with pytest.raises(AudioDecodeError, match="zero-length audio"):
        load_audio(path, RATE)


@pytest.mark.parametrize("suffix", ["wav", "flac"])
def test_digital_silence_has_nothing_to_fingerprint(tmp_path, suffix):
    path = tmp_path / f"silence.{suffix}"
    sf.write(path, np.zeros(10 * SR, dtype="<i2"), SR, subtype="PCM_16")
    assert len(load_audio(path, RATE)) == 10 * RATE  # decodes fine ...
    with pytest.raises(FingerprintError, match="silent"):  # ... but holds no landmark
        fingerprint_file(path, FingerprintParams())


def test_very_quiet_dither_is_silence_too(tmp_path):
    # +-1 LSB of 16-bit noise: what a "silent" track exported with dither contains.
    dither = np.random.default_rng(0).integers(-1, 2, 10 * SR).astype("<i2")
    path = tmp_path / "dither.wav"
    sf.write(path, dither, SR, subtype="PCM_16")
    with pytest.raises(FingerprintError, match="silent"):
        fingerprint_file(path, FingerprintParams())


@pytest.mark.parametrize("suffix", ["wav", "mp3", "m4a"])  # header-checked and ffmpeg paths
def test_audio_over_max_duration_is_refused(encoded, suffix):
    with pytest.raises(AudioDecodeError, match="over the limit of 5 s"):
        load_audio(encoded[suffix], RATE, max_duration=5.0)
    assert len(load_audio(encoded[suffix], RATE, max_duration=SECONDS + 1)) > 0


@pytest.mark.parametrize("suffix", list(FORMATS))
def test_probe_duration_reads_the_length_without_decoding(encoded, suffix):
    assert probe_duration(encoded[suffix]) == pytest.approx(SECONDS, abs=0.1)


def test_probe_duration_of_a_non_audio_file_is_unknown(tmp_path):
    path = tmp_path / "notes.ogg"
    path.write_text("not audio\n" * 50)
    assert probe_duration(path) is None


# -- decoding block by block (long uploads) ------------------------------------------------------


def streamed(path, max_duration: float | None = None) -> np.ndarray:
    blocks = list(stream_audio(path, RATE, max_duration, block_seconds=1.0))
    assert all(len(block) > 0 and block.dtype == np.float32 for block in blocks)
    return np.concatenate(blocks)


@pytest.mark.parametrize("suffix", list(FORMATS))
def test_decoding_block_by_block_gives_the_whole_decoding(encoded, suffix):
    blocks = list(stream_audio(encoded[suffix], RATE, block_seconds=1.0))
    assert len(blocks) >= SECONDS - 1  # one second at a time, not the whole file at once
    y, whole = np.concatenate(blocks), load_audio(encoded[suffix], RATE)
    # The streaming resampler's output is the one-shot one's to rounding.
    assert abs(len(y) - len(whole)) <= 2
    n = min(len(y), len(whole))
    assert np.max(np.abs(y[:n] - whole[:n])) < 1e-3


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_file_streamed_is_reported_with_its_reason(tmp_path, encoded, case):
    name, make, reason = BAD_FILES[case]
    path = tmp_path / name
    path.write_bytes(make(encoded))
    with pytest.raises(AudioDecodeError) as info:
        streamed(path)
    assert str(path) in str(info.value)
    assert re.search(reason, str(info.value)), str(info.value)


def test_zero_length_audio_streamed(tmp_path):
    path = tmp_path / "zero.wav"
    sf.write(path, np.zeros(0, dtype="<i2"), SR, subtype="PCM_16")
    with pytest.raises(AudioDecodeError, match="zero-length audio"):
        streamed(path)


@pytest.mark.parametrize("suffix", ["wav", "mp3", "m4a"])  # header-checked and ffmpeg paths
def test_audio_over_max_duration_streamed_is_refused(encoded, suffix):
    with pytest.raises(AudioDecodeError, match="over the limit of 5 s"):
        streamed(encoded[suffix], max_duration=5.0)
    assert len(streamed(encoded[suffix], max_duration=SECONDS + 1)) > 0

"""The melody descriptor: chroma from the landmark spectrogram, invariances, the FAISS store, the synth covers."""

from __future__ import annotations

import numpy as np
import pytest

from refrain.fingerprint import FingerprintParams, MelodyParams
from refrain.fingerprint.melody import (chroma_sequence, descriptor_dim, resample_chroma, segment_descriptors,
                                segment_starts)
from refrain.fingerprint.spectrogram import log_frequency_spectrogram
import faiss

from refrain.index.melody import MelodyIndex, ivf_lists
from refrain.matcher.melody import MelodyTier, verify_cover
from refrain.synth import render_song

RATE = 8000
PARAMS = FingerprintParams()


def chroma_of(y: np.ndarray) -> np.ndarray:
    S = log_frequency_spectrogram(y, RATE, PARAMS.n_fft, PARAMS.hop_length, PARAMS.fmin, PARAMS.fmax,
                                  PARAMS.bins_per_octave)
    return chroma_sequence(S, PARAMS.bins_per_octave, PARAMS.fmin, PARAMS.melody)


def tone(midi: int, seconds: float = 3.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.5 * np.sin(2 * np.pi * 440.0 * 2 ** ((midi - 69) / 12) * t)).astype(np.float32)


def as_chroma(x: np.ndarray) -> np.ndarray:
    """Rows centred and unit length, like :func:`chroma_sequence` frames."""
    x = x - x.mean(axis=1, keepdims=True)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def random_chroma(n: int, seed: int) -> np.ndarray:
    return as_chroma(np.random.default_rng(seed).random((n, 12)) ** 4)


@pytest.mark.parametrize("midi, pitch_class", [(69, 9), (60, 0), (66, 6), (83, 11)])
def test_a_pure_tone_lands_in_its_pitch_class(midi, pitch_class):
    chroma = chroma_of(tone(midi))
    assert chroma.shape[1] == 12 and len(chroma) > 5
    assert set(np.argmax(chroma[1:-1], axis=1)) == {pitch_class}
    np.testing.assert_allclose(np.linalg.norm(chroma[1:-1], axis=1), 1.0, atol=1e-5)


def test_silence_gives_zero_chroma_frames():
    y = np.concatenate([tone(64, 2.0), np.zeros(2 * RATE, dtype=np.float32), tone(64, 2.0)])
    chroma = chroma_of(y)
    frames = PARAMS.melody.chroma_seconds(PARAMS.frame_seconds)
    silent = chroma[int(2.6 / frames):int(3.6 / frames)]
    assert len(silent) and not silent.any()


def test_descriptors_do_not_change_under_a_key_change_and_barely_under_a_time_shift():
    melody = MelodyParams()
    chroma = random_chroma(200, 1)
    starts = segment_starts(len(chroma), melody, melody.segment_hop)
    base = segment_descriptors(chroma, starts, melody)
    assert base.shape == (len(starts), descriptor_dim(melody))
    np.testing.assert_allclose(np.linalg.norm(base, axis=1), 1.0, atol=1e-5)
    transposed = segment_descriptors(np.roll(chroma, 5, axis=1), starts, melody)
    np.testing.assert_allclose(transposed, base, atol=1e-5)
    shifted = segment_descriptors(chroma, starts + 2, melody)
    unrelated = segment_descriptors(random_chroma(200, 2), starts, melody)
    assert np.min(np.sum(shifted * base, axis=1)) > np.max(np.sum(unrelated * base, axis=1))


def test_resampling_to_a_tempo_ratio_changes_the_length_only():
    chroma = random_chroma(100, 3)
    assert len(resample_chroma(chroma, 1.25)) == 125 and len(resample_chroma(chroma, 0.8)) == 80
    np.testing.assert_array_equal(resample_chroma(chroma, 1.0), chroma)


def test_verification_recovers_key_shift_tempo_and_offset():
    melody, params = MelodyParams(), MelodyTier()
    reference = random_chroma(300, 4)
    # The query: reference frames 80..200, played 1.25x faster and 3 semitones higher.
    query = np.roll(resample_chroma(reference[80:200], 1 / 1.25), 3, axis=1)
    verdict = verify_cover(query, reference, (1.0, 1.25), melody, params)
    assert verdict.key_shift == 3 and verdict.tempo_ratio == 1.25
    assert verdict.offset_frames == pytest.approx(80, abs=1) and verdict.correlation > 0.8
    assert verdict.similarity > 0.75  # well above min_similarity: the background is small
    unrelated = verify_cover(query, random_chroma(300, 5), (1.0, 1.25), melody, params)
    assert unrelated.similarity < 0.3


def test_melody_store_adds_finds_removes_and_reloads(tmp_path):
    melody = MelodyParams()
    store = MelodyIndex.create(melody)
    tracks = {7: random_chroma(150, 6), 9: random_chroma(100, 7)}
    added = {track: store.add(track, chroma) for track, chroma in tracks.items()}
    assert added == {t: len(segment_starts(len(c), melody, melody.segment_hop)) for t, c in tracks.items()}
    query = segment_descriptors(tracks[9], np.array([16]), melody)
    similarity, found, segments = store.search(query, 3)
    assert (found[0, 0], segments[0, 0]) == (9, 1) and similarity[0, 0] == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(store.chroma(7)[:150], tracks[7], atol=1.0 / 255 + 1e-6)  # 8-bit codes, half a step
    assert store.lists == 0  # two tracks: an exact search
    store.save(tmp_path / "melody.faiss")
    reloaded = MelodyIndex.load(tmp_path / "melody.faiss", melody, mmap=True)
    assert reloaded.ntotal == store.ntotal and not reloaded.writable
    with pytest.raises(PermissionError):
        reloaded.remove(7)
    assert store.remove(9) == added[9] and len(store.chroma(9)) == 0
    assert store.search(query, 3)[1][0, 0] == 7


def many_tracks(count: int, first_seed: int = 100) -> dict[int, np.ndarray]:
    return {track: random_chroma(160, first_seed + track) for track in range(count)}


def test_a_grown_store_searches_an_inverted_file_trained_at_its_save_and_again_as_it_grows(tmp_path):
    melody = MelodyParams(ivf_min_segments=200, ivf_lists_per_root=2.0)
    store, tracks = MelodyIndex.create(melody), many_tracks(40)
    for track, chroma in list(tracks.items())[:20]:
        store.add(track, chroma)
    store.save(tmp_path / "melody.faiss")
    assert store.ntotal == 140 and store.lists == 0  # below ivf_min_segments: flat
    for track, chroma in list(tracks.items())[20:30]:
        store.add(track, chroma)
    store.save(tmp_path / "melody.faiss")  # 210 descriptors: trained as an IVF at this save
    assert store.ntotal == 210 and store.lists == ivf_lists(210, melody) == 29
    # Every descriptor is found as its own nearest neighbour when every list is probed,
    # and mostly so with a few: the lists hold each descriptor near its centroid.
    query = segment_descriptors(tracks[25], segment_starts(160, melody, melody.segment_hop), melody)
    assert (store.search(query, 1, nprobe=29)[1][:, 0] == 25).all()
    assert (store.search(query, 1, nprobe=4)[1][:, 0] == 25).mean() >= 0.7
    reloaded = MelodyIndex.load(tmp_path / "melody.faiss", melody, mmap=True)
    assert reloaded.lists == 29 and (reloaded.search(query, 1, nprobe=29)[1][:, 0] == 25).all()
    # Taken out by its id range, as from a flat store.
    assert store.remove(25) == 7 and store.ntotal == 203 and 25 not in store.search(query, 5, nprobe=29)[1]
    # Past ivf_retrain_growth x the size its lists were chosen for (29 lists: 210), trained again.
    for track, chroma in list(tracks.items())[30:]:
        store.add(track, chroma)
    assert not store.rebuild_if_grown()  # 273 < 2 x 210
    more = many_tracks(30, first_seed=500)
    for track, chroma in more.items():
        store.add(100 + track, chroma)
    store.save(tmp_path / "melody.faiss")
    assert store.ntotal == 483 and store.lists == ivf_lists(483, melody) == 44
    query = segment_descriptors(more[3], segment_starts(160, melody, melody.segment_hop), melody)
    assert (store.search(query, 1, nprobe=44)[1][:, 0] == 103).all()


def test_a_store_written_before_compact_codes_opens_grows_and_moves_into_an_ivf(tmp_path):
    # The former files: float32 descriptors in an IndexFlatIP, float16 chroma.
    melody = MelodyParams(ivf_min_segments=100)
    old = MelodyIndex(faiss.IndexIDMap2(faiss.IndexFlatIP(descriptor_dim(melody))),
                      faiss.IndexIDMap2(faiss.IndexScalarQuantizer(12 * melody.segment_hop,
                                                                   faiss.ScalarQuantizer.QT_fp16)),
                      melody, writable=True)
    tracks = many_tracks(20)
    for track, chroma in list(tracks.items())[:10]:
        old.add(track, chroma)
    faiss.write_index(old._segments, str(tmp_path / "melody.faiss"))
    faiss.write_index(old._chroma, str(tmp_path / "melody-chroma.faiss"))
    reopened = MelodyIndex.load(tmp_path / "melody.faiss", melody, mmap=True)
    query = segment_descriptors(tracks[4], np.array([16]), melody)
    similarity, found, _ = reopened.search(query, 1)
    assert found[0, 0] == 4 and similarity[0, 0] == pytest.approx(1.0, abs=1e-5)  # float32, as written
    np.testing.assert_allclose(reopened.chroma(4)[:160], tracks[4], atol=2e-3)
    writable = MelodyIndex.load(tmp_path / "melody.faiss", melody)
    for track, chroma in list(tracks.items())[10:]:
        writable.add(track, chroma)
    writable.save(tmp_path / "melody.faiss")
    assert writable.ntotal == 140 and writable.lists == ivf_lists(140, melody)
    assert writable.search(query, 1, nprobe=writable.lists)[1][0, 0] == 4


def test_melody_params_round_trip_through_the_manifest_form():
    params = FingerprintParams(melody=MelodyParams(segment_hop=8))
    assert FingerprintParams.from_dict(params.to_dict()) == params
    old = params.to_dict()
    del old["melody"]
    assert FingerprintParams.from_dict(old).melody == MelodyParams()
    with pytest.raises(ValueError, match="unknown melody"):
        FingerprintParams.from_dict({"melody": {"segment_hops": 3}})


def test_synth_cover_options_keep_the_default_render_and_change_what_they_say():
    plain = render_song(7, 4.0)
    assert np.array_equal(render_song(7, 4.0, transpose=0, tempo=1.0, timbre_seed=None), plain)
    # Another timbre: the same notes sound different; another tempo: the notes move.
    assert not np.array_equal(render_song(7, 4.0, timbre_seed=8), plain)
    assert not np.array_equal(render_song(7, 4.0, tempo=1.2), plain)
    with pytest.raises(ValueError, match="tempo"):
        render_song(7, 4.0, tempo=0.0)
    # A transposed render aligns with the original at exactly that key shift.
    low, high = chroma_of(render_song(7, 20.0, RATE)), chroma_of(render_song(7, 20.0, RATE, transpose=4))
    verdict = verify_cover(high, low, (1.0,), MelodyParams(), MelodyTier())
    assert verdict.key_shift == 4 and verdict.offset_frames == 0


def test_a_drone_in_the_query_key_is_no_evidence_of_a_cover():
    # A reference that holds one pitch class and a query whose every frame stresses the
    # same class: their raw frame correlation is high at every offset, but nothing moves
    # together, which is what the verification measures.
    drone = as_chroma(np.eye(12)[2] + 0.05 * np.random.default_rng(8).random((300, 12)))
    query = as_chroma(random_chroma(120, 9) + np.eye(12)[2])
    assert float(np.mean(query @ drone[0])) > 0.6  # what a raw correlation sees, at any offset
    verdict = verify_cover(query, drone, (1.0,), MelodyParams(), MelodyTier())
    assert verdict.correlation < 0.2 and verdict.similarity < MelodyTier().min_similarity


def test_a_query_that_matches_the_reference_everywhere_is_judged_against_that_background():
    # A 2 s loop repeated: the query aligns as well with every repeat, so the best line
    # stands out from nothing; the same frames without repeats stand out clearly.
    loop = random_chroma(8, 10)
    looped = np.tile(loop, (40, 1))
    verdict = verify_cover(looped[:120], looped, (1.0,), MelodyParams(), MelodyTier())
    assert verdict.correlation > 0.9 and verdict.background > 0.9
    assert verdict.similarity < MelodyTier().min_similarity
    reference = random_chroma(320, 11)
    distinct = verify_cover(reference[100:220], reference, (1.0,), MelodyParams(), MelodyTier())
    assert distinct.correlation > 0.9 and distinct.background < 0.3
    assert distinct.similarity > MelodyTier().min_similarity and distinct.offset_frames == 100

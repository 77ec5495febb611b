"""The peaks tier: catalogue recordings far under other audio, verified on stored peaks."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from refrain.fingerprint import Fingerprint, FingerprintParams, Peaks
from refrain.fingerprint.hashes import TIER_PAYLOAD_BITS, Landmarks, hash_landmarks
from refrain.index.peaks import PeakStore
from refrain.index.store import IndexOpenError
from refrain.matcher import Catalogue, PeaksTier
from refrain.matcher.pair import PairHits, group_pair_hits
from refrain.matcher.peaks import _background_shifts, peaks_matches
from refrain.api import Refrain
from refrain.config import Config
from refrain.synth import mix

SR = 22050


def _hits_on(track_id: int, code_frames: np.ndarray, offsets: list[list[int]]) -> PairHits:
    """Pair hits of query codes 0, 1, ... (at ``code_frames``, weight 1 each) on one track, at given offsets of each."""
    bits = TIER_PAYLOAD_BITS["pair"]
    hits_per_code = np.array([len(own) for own in offsets], np.int64)
    labels = np.concatenate([(track_id << bits) | (frame + np.sort(np.asarray(own, np.int64)))
                             for frame, own in zip(code_frames, offsets)])
    first_hit = np.cumsum(hits_per_code) - hits_per_code
    return group_pair_hits(np.arange(len(code_frames)), np.ones(len(code_frames)), np.asarray(code_frames, np.int64),
                           hits_per_code, bits,
                           lambda start, stop: (first_hit[start:stop], hits_per_code[start:stop], labels))


def _under(background: np.ndarray, song: np.ndarray, gain_db: float) -> np.ndarray:
    """Ten seconds of ``song`` (from 10 s) mixed ``gain_db`` under ``background`` (from 5 s)."""
    return mix(background[5 * SR:15 * SR], song[10 * SR:20 * SR], gain_db)


@pytest.mark.parametrize("seed", [34, 44])
def test_a_song_18_db_under_another_is_found_only_by_verifying_its_peaks(catalogue, catalogue_index, songs,
                                                                         unrelated_songs, write_audio,
                                                                         tmp_path, seed):
    path = write_audio(tmp_path / "remix.wav", _under(unrelated_songs[45], songs[seed].samples, -18.0))
    result = catalogue.match_file(path)
    assert [m.track_id for m in result.matches] == [catalogue_index.track_ids[seed]]
    match = result.matches[0]
    assert match.kind == "mixed"
    assert match.offset == pytest.approx(10.0, abs=0.1)
    assert match.time_ratio == 1.0 and match.pitch_shift_semitones == 0.0
    assert match.spans[0].ref_start == pytest.approx(10.0 + match.spans[0].query_start, abs=0.1)
    assert match.spans[0].query_end - match.spans[0].query_start > 5.0
    assert match.score >= catalogue.config.match.tier("peaks").min_z and match.tier == "peaks"

    # The landmark tiers alone do not see it: what found it is the peak verification.
    landmarks_only = catalogue.config.match.only("pair", "triplet")
    with Refrain.open(catalogue_index.directory, Config(match=landmarks_only)) as plain:
        assert plain.match_file(path).matches == []


def test_two_songs_outside_the_catalogue_mixed_together_match_nothing(catalogue, unrelated_songs,
                                                                      write_audio, tmp_path):
    for gain_db in (-6.0, -12.0):
        path = write_audio(tmp_path / "other.wav", _under(unrelated_songs[45], unrelated_songs[35], gain_db))
        assert catalogue.match_file(path).matches == []


def test_a_removed_track_is_no_longer_verified(index_copy, catalogue_index, songs, unrelated_songs,
                                               write_audio, tmp_path):
    path = write_audio(tmp_path / "remix.wav", _under(unrelated_songs[45], songs[34].samples, -18.0))
    track_id = catalogue_index.track_ids[34]
    with Refrain.open(index_copy, writable=True) as refrain:
        assert [m.track_id for m in refrain.match_file(path).matches] == [track_id]
        refrain.remove(track_id)
    with Refrain.open(index_copy) as refrain:
        assert refrain.match_file(path).matches == []
        assert refrain.store.tiers["peaks"].peaks_between(track_id, 0, 1 << 30)[0].size == 0


def test_peak_store_round_trip(tmp_path):
    store = PeakStore.create()
    store.add(3, np.array([40, 10, 20]), np.array([5, 7, 9]))
    store.add(8, np.array([1, 2]), np.array([255, 0]))
    store.save(tmp_path / "peaks.npz")
    loaded = PeakStore.load(tmp_path / "peaks.npz")
    frames, bins = loaded.peaks_between(3, 10, 40)
    assert frames.tolist() == [10, 20] and bins.tolist() == [7, 9]
    assert loaded.ntotal == 5
    assert loaded.remove(3) == 3 and loaded.remove(3) == 0
    assert loaded.peaks_between(3, 0, 100)[0].size == 0
    with pytest.raises(ValueError, match="bins"):
        store.add(9, np.array([1]), np.array([256]))


def test_a_damaged_peak_store_is_a_clear_open_error(index_copy):
    (index_copy / "peaks.npz").write_bytes(b"not a peak store")
    with pytest.raises(IndexOpenError, match="damaged or unreadable"):
        Refrain.open(index_copy)


def test_an_index_without_a_peak_store_still_matches_copies(index_copy, songs, unrelated_songs,
                                                            catalogue_index, write_audio, tmp_path):
    manifest = json.loads((index_copy / "manifest.json").read_text())
    del manifest["tiers"]["peaks"]
    (index_copy / "manifest.json").write_text(json.dumps(manifest))
    (index_copy / "peaks.npz").unlink()
    copy = write_audio(tmp_path / "copy.wav", songs[41].excerpt(5.0, 10.0))
    buried = write_audio(tmp_path / "remix.wav", _under(unrelated_songs[45], songs[34].samples, -18.0))
    with Refrain.open(index_copy) as refrain:
        assert [m.track_id for m in refrain.match_file(copy).matches] == [catalogue_index.track_ids[41]]
        assert refrain.match_file(buried).matches == []


def test_a_looped_reference_verified_at_two_offsets_is_one_match():
    # A track whose 40-peak figure repeats every 400 frames (12.8 s, past the background
    # offsets): a 10 s query of that figure verifies at two offsets of the same loop.
    rng = np.random.default_rng(5)
    figure_frames, figure_bins = rng.integers(0, 400, 160), rng.integers(10, 100, 160)
    frames = np.concatenate([figure_frames + 400 * k for k in range(6)])
    bins = np.tile(figure_bins, 6)
    store = PeakStore.create()
    store.add(7, frames, bins)
    params = FingerprintParams()
    n_frames = int(10.0 / params.frame_seconds)
    in_query = (frames >= 500) & (frames < 500 + n_frames)
    dense = Peaks(frames=(frames[in_query] - 500).astype(np.int32), bins=bins[in_query].astype(np.int32),
                  strength=np.zeros(in_query.sum(), np.float32), bin_offsets=np.zeros(in_query.sum(), np.float32))
    # Two weak pair votes at each loop offset, from two query landmarks.
    query_frames = np.array([10, 50])
    fp = Fingerprint(hashes=hash_landmarks(Landmarks(query_frames, np.array([20, 30]), query_frames + 5,
                                                     np.array([25, 28]))),
                     frames=query_frames.astype(np.int32), duration=10.0, peaks=dense, triplets=None,
                     dense_peaks=dense)
    hits = _hits_on(7, query_frames, [[500, 900], [500, 900]])
    found = peaks_matches(fp, hits, store, PeaksTier(), Catalogue({}, params))
    assert [m.track_id for m in found] == [7]
    assert round(found[0].offset / params.frame_seconds) in (500, 900)
    assert found[0].kind == "mixed" and found[0].tier == "peaks"


@pytest.mark.parametrize("upload_window_seconds", [300.0, 15.0])
def test_a_long_buried_passage_is_reported_over_its_whole_length(catalogue, catalogue_index, songs,
                                                                 unrelated_songs, write_audio, tmp_path,
                                                                 upload_window_seconds):
    # 26 s of song 41 (from its 5 s) under 30 s of another song, from 2 s to 28 s of the
    # upload: the verified window holds 10 s of it, the spans must reach both ends. (With
    # this much of it the pair tier finds it too, in pieces: the peaks tier is asked alone.)
    # Searched in two 15 s upload windows, each verifies its part: one match again.
    background = unrelated_songs[45]
    song = np.zeros_like(background)
    song[2 * SR:28 * SR] = songs[41].samples[5 * SR:31 * SR]
    path = write_audio(tmp_path / "remix.wav", mix(background, song, -18.0))
    peaks_only = dataclasses.replace(catalogue.config.match.only("peaks"),
                                     upload_window_seconds=upload_window_seconds)
    with Refrain.open(catalogue_index.directory, Config(match=peaks_only)) as refrain:
        result = refrain.match_file(path)
    assert [m.track_id for m in result.matches] == [catalogue_index.track_ids[41]]
    match = result.matches[0]
    assert match.kind == "mixed" and match.offset == pytest.approx(3.0, abs=0.1)
    assert match.query_start == pytest.approx(2.0, abs=1.5)
    assert match.query_end == pytest.approx(28.0, abs=1.5)
    assert all(span.ref_start == pytest.approx(span.query_start + 3.0, abs=0.1) for span in match.spans)
    assert match.aligned == sum(span.aligned for span in match.spans)


def _peaks(frames: np.ndarray, bins: np.ndarray) -> Peaks:
    order = np.argsort(frames, kind="stable")
    return Peaks(frames=frames[order].astype(np.int32), bins=bins[order].astype(np.int32),
                 strength=np.zeros(len(frames), np.float32), bin_offsets=np.zeros(len(frames), np.float32))


@pytest.mark.parametrize("buried", [False, True])
def test_the_peaks_that_proposed_a_candidate_do_not_verify_it(buried):
    # A catalogue track and a 10 s query of unrelated peaks that happens to share 40 pair
    # landmarks with it at one offset: those 80 peaks meet by construction, and counted
    # they would lift the offset far above its background. Only when the track really
    # lies under the query (half of its other peaks there too) is it reported.
    rng = np.random.default_rng(11)
    params = FingerprintParams()
    n_frames, offset = int(10.0 / params.frame_seconds), 1000
    ref_frames, ref_bins = np.sort(rng.integers(0, 3000, 3000)), rng.integers(10, 120, 3000)
    store = PeakStore.create()
    store.add(7, ref_frames, ref_bins)

    in_window = np.flatnonzero((ref_frames >= offset) & (ref_frames < offset + n_frames - 40))
    anchors = rng.choice(in_window, 40, replace=False)
    targets = np.minimum(anchors + 3, len(ref_frames) - 1)
    landmarks = Landmarks(ref_frames[anchors] - offset, ref_bins[anchors], ref_frames[targets] - offset,
                          ref_bins[targets])
    shared = np.concatenate([anchors, targets])
    if buried:
        others = np.setdiff1d(np.flatnonzero((ref_frames >= offset) & (ref_frames < offset + n_frames)), shared)
        shared = np.concatenate([shared, rng.choice(others, len(others) // 2, replace=False)])
    dense = _peaks(np.concatenate([rng.integers(0, n_frames, 600), ref_frames[shared] - offset]),
                   np.concatenate([rng.integers(10, 120, 600), ref_bins[shared]]))
    fp = Fingerprint(hashes=hash_landmarks(landmarks), frames=landmarks.anchor_frames.astype(np.int32),
                     duration=10.0, peaks=dense, triplets=None, dense_peaks=dense)
    hits = _hits_on(7, landmarks.anchor_frames, [[offset]] * 40)

    found = peaks_matches(fp, hits, store, PeaksTier(), Catalogue({}, params))
    if buried:
        assert [m.track_id for m in found] == [7]
        assert round(found[0].offset / params.frame_seconds) == offset
    else:
        assert found == []


def test_background_offsets_sample_every_beat_period_at_many_phases():
    # Evenly spaced offsets land on one phase of a beat whose period divides their step,
    # so the background of two pieces at one tempo would be all off-beat (or all on-beat).
    shifts = _background_shifts(PeaksTier(), FingerprintParams().frame_seconds)
    periods = np.arange(3.0, 60.0, 0.05)[:, None]
    phase_concentration = np.abs(np.exp(2j * np.pi * shifts / periods).mean(axis=1))
    assert phase_concentration.max() < 0.5

"""Melody tier end to end: covers of catalogue songs are found, other songs of the same style are not.

A *cover* here is :func:`refrain.synth.render_song` of a catalogue seed with another
seed's instruments, drum kit and effects, transposed and played at another tempo:
the composition survives, none of the recording does.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soxr
from conftest import SR

from refrain.fingerprint import FingerprintParams, fingerprint_signal
from refrain.index import IndexOpenError
from refrain.api import Refrain
from refrain.config import Config
from refrain.synth import describe_song, render_song

#: The melody tier is searched by default; said explicitly here.
COVER_SEARCH = Config().searching_covers(True)
#: The library with the melody tier left out: landmark tiers only.
NO_COVER_SEARCH = Config().searching_covers(False)

#: (catalogue seed, semitones, tempo factor, timbre seed): the composition re-performed.
#: The synthesiser re-renders the very same notes at exactly scaled times, so with some timbre
#: seeds (e.g. 204 for the last case) enough of the catalogue recording's own spectral peaks
#: survive for the triplet tier to match it as the recording at 1.1x, +2 st; such a render
#: is reported from the landmark tiers and is not a test of the melody tier. The test checks
#: that these covers share no landmark evidence with the recording.
COVERS = [(30, -5, 0.9, 90), (41, -3, 0.9, 203), (41, 2, 1.1, 207)]
#: Songs never ingested that share genre, key and mode with catalogue seed 41 (pop, A major).
SAME_KEY_AND_STYLE = (131, 391)


def cover(seed: int, semitones: int, tempo: float, timbre_seed: int, seconds: float = 30.0) -> np.ndarray:
    return soxr.resample(render_song(seed, seconds, SR, transpose=semitones, tempo=tempo,
                                     timbre_seed=timbre_seed), SR, 8000)


@pytest.fixture
def catalogue(catalogue_index):
    """The session index, read-only and memory-mapped, with the melody tier searched."""
    with Refrain.open(catalogue_index.directory, COVER_SEARCH, mmap=True) as refrain:
        yield refrain


def test_covers_are_searched_by_default_and_not_when_switched_off(catalogue_index):
    with Refrain.open(catalogue_index.directory, mmap=True) as refrain:
        assert [m.kind for m in refrain.match_signal(cover(*COVERS[0]), "cover").matches] == ["cover"]
    with Refrain.open(catalogue_index.directory, NO_COVER_SEARCH, mmap=True) as refrain:
        assert refrain.match_signal(cover(*COVERS[0]), "cover").matches == []


def test_the_same_style_songs_really_share_key_and_genre():
    reference = describe_song(41)
    for seed in SAME_KEY_AND_STYLE:
        other = describe_song(seed)
        assert (other["genre"], other["key"]) == (reference["genre"], reference["key"])


@pytest.mark.parametrize("seed, semitones, tempo, timbre_seed", COVERS)
def test_a_transposed_re_timbred_rendering_is_found_as_a_cover(catalogue, catalogue_index, seed, semitones,
                                                                tempo, timbre_seed):
    query = cover(seed, semitones, tempo, timbre_seed)
    with Refrain.open(catalogue_index.directory, NO_COVER_SEARCH, mmap=True) as landmarks_only:
        assert landmarks_only.match_signal(query, "cover").matches == []  # none of the recording survives
    result = catalogue.match_signal(query, "cover")
    assert [m.kind for m in result.matches] == ["cover"], result.matches
    found = result.matches[0]
    assert found.track_id == catalogue_index.track_ids[seed]
    assert found.pitch_shift_semitones == semitones
    assert found.time_ratio == pytest.approx(tempo, rel=0.03)
    assert found.tier == "melody" and found.confidence == pytest.approx(1.0 - found.chance)
    assert found.score >= Config().match.tier("melody").min_similarity
    span, = found.spans
    # The cover starts at the song's beginning: query time t is reference time t * tempo.
    assert span.query_start <= 2.0 and span.query_end >= 20.0
    assert span.ref_start == pytest.approx(span.query_start * tempo, abs=1.0)


@pytest.mark.parametrize("seed", SAME_KEY_AND_STYLE)
def test_a_different_piece_in_the_same_key_and_style_is_not_a_cover(catalogue, seed):
    result = catalogue.match_signal(soxr.resample(render_song(seed, 30.0, SR), SR, 8000), "other")
    assert not [m for m in result.matches if m.kind == "cover"]


def test_a_recording_found_by_the_landmarks_is_not_also_reported_as_a_cover(catalogue, catalogue_index, songs):
    excerpt = soxr.resample(songs[41].excerpt(2.0, 30.0), SR, 8000)
    result = catalogue.match_signal(excerpt, "copy")
    assert [(m.track_id, m.kind) for m in result.matches] == [(catalogue_index.track_ids[41], "excerpt")]


def test_a_query_shorter_than_a_segment_skips_the_melody_tier(catalogue):
    result = catalogue.match_signal(cover(41, -3, 0.9, 203, seconds=8.0), "short")
    assert result.matches == []


def test_removing_a_track_removes_its_melody_vectors(index_copy, catalogue_index):
    track = catalogue_index.track_ids[41]
    with Refrain.open(index_copy, writable=True) as refrain:
        melody = refrain.store.melody
        before, stored = melody.ntotal, len(melody.chroma(track))
        assert stored > 0
        refrain.remove(track)
        assert len(melody.chroma(track)) == 0 and melody.ntotal < before
    with Refrain.open(index_copy, COVER_SEARCH, mmap=True) as refrain:
        assert refrain.store.melody.ntotal < before
        assert refrain.match_signal(cover(41, -3, 0.9, 203), "cover").matches == []


def test_the_melody_tier_persists_and_reloads(index_copy, catalogue_index, catalogue):
    track = catalogue_index.track_ids[30]
    with Refrain.open(index_copy, mmap=True) as reopened:
        assert reopened.store.melody.ntotal == catalogue.store.melody.ntotal > 0
        assert reopened.info().melody_segments == reopened.store.melody.ntotal
        np.testing.assert_array_equal(reopened.store.melody.chroma(track), catalogue.store.melody.chroma(track))


def test_an_interrupted_ingest_leaves_no_melody_vectors(index_copy, songs):
    with Refrain.open(index_copy, writable=True) as refrain:
        before = refrain.store.melody.ntotal
        fp = fingerprint_signal(soxr.resample(render_song(131, 40.0, SR), SR, 8000), refrain.params)
        track = refrain.store.add_track("never-committed.wav", "0" * 64, fp)
        assert refrain.store.melody.ntotal > before
        refrain.store.melody.save(index_copy / "melody.faiss")  # the crash comes after a save
    with Refrain.open(index_copy, writable=True) as refrain:  # recovery at the next writable open
        assert refrain.store.melody.ntotal == before
        assert len(refrain.store.melody.chroma(track)) == 0


def test_an_index_without_a_melody_tier_opens_and_says_so(tmp_path, songs, run_refrain):
    directory = tmp_path / "old-index"
    old_params = FingerprintParams(melody=None)  # what an index from before the melody tier holds
    with Refrain.open(directory, Config(fingerprint=old_params), create=True) as refrain:
        list(refrain.ingest([songs[41].path]))
    manifest = json.loads((directory / "manifest.json").read_text())
    assert "melody" not in manifest["tiers"]
    del manifest["fingerprint"]["melody"]  # older manifests do not know the setting at all
    (directory / "manifest.json").write_text(json.dumps(manifest))
    shutil.copy(songs[41].path, tmp_path / "copy.wav")
    with Refrain.open(directory, COVER_SEARCH, mmap=True) as refrain:
        assert refrain.store.melody is None and refrain.info().melody_segments is None
        assert refrain.match_signal(cover(41, -3, 0.9, 203), "cover").matches == []
        assert [m.kind for m in refrain.match_file(tmp_path / "copy.wav").matches] == ["copy"]
    shown = run_refrain("info", "--index", directory)
    assert shown.returncode == 0 and "melody     absent" in shown.stdout and "re-ingest" in shown.stdout


def test_an_index_built_with_the_former_chroma_asks_for_a_re_ingest(index_copy, run_refrain):
    # Stored chroma and descriptors of another chroma would be compared with the new
    # query chroma as if they were alike: refused, with what to do, not matched wrongly.
    manifest = json.loads((index_copy / "manifest.json").read_text())
    manifest["tiers"]["melody"]["layout"] = "chroma-2dftm-v1"
    (index_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexOpenError, match="melody tier was built with .*chroma-2dftm-v1.*re-ingest"):
        Refrain.open(index_copy, mmap=True)
    shown = run_refrain("info", "--index", index_copy)
    assert shown.returncode == 3 and "re-ingest" in shown.stderr and shown.stderr.count("\n") == 1


def test_refrain_match_reports_a_cover_unless_told_not_to(catalogue_index, run_refrain, write_audio, tmp_path):
    path = write_audio(tmp_path / "cover.wav", cover(41, -3, 0.9, 203), 8000)
    found = run_refrain("match", "--index", catalogue_index.directory, "--json", path)
    assert found.returncode == 0, found.stderr
    matches = json.loads(found.stdout)["matches"]
    assert [(m["track_id"], m["kind"], m["pitch_shift_semitones"]) for m in matches] == [
        (catalogue_index.track_ids[41], "cover", -3.0)]
    plain = run_refrain("match", "--index", catalogue_index.directory, "--json", "--no-covers", path)
    assert plain.returncode == 0 and json.loads(plain.stdout)["matches"] == []

"""Delta segments: commits that write their own tracks, lookups over main + deltas, merges, crashes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import replace

import numpy as np
import pytest

from refrain.api import Refrain
from refrain.config import Config
from refrain.index import IndexStore, IndexWriteParams, LandmarkIndex
from refrain.index.landmarks import mix_codes
from refrain.index.peaks import PeakStore
from refrain.index.store import FORMAT_VERSION

SR = 22050
# Every commit of a non-empty tier writes a delta; nothing is merged unless asked.
DELTAS_ONLY = IndexWriteParams(whole_below_bytes=0, merge_share=float("inf"))


def _tracks(rng, count, distinct_codes=400):
    """Random tracks: (track id, codes, payloads), codes repeating within and across tracks."""
    return [(track, rng.integers(0, distinct_codes, n, dtype=np.uint32), rng.integers(0, 1 << 22, n))
            for track, n in zip(range(1, count + 1), rng.integers(50, 400, count))]


def _same_answers(store: LandmarkIndex, reference: LandmarkIndex, rng) -> None:
    asked = np.concatenate([rng.integers(0, 450, 600, dtype=np.uint32), np.arange(20, dtype=np.uint32)])
    for got, want in zip(store.lookup(asked), reference.lookup(asked)):
        np.testing.assert_array_equal(got, want)  # the same hits in the same order
    candidates = np.array(sorted(rng.choice(np.arange(1, 30), 5, replace=False)))
    for got, want in zip(store.lookup_slices(asked, candidates), reference.lookup_slices(asked, candidates)):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(store.code_counts(asked), reference.code_counts(asked))
    assert store.ntotal == reference.ntotal
    for got, want in zip(store.code_table(), reference.code_table()):
        np.testing.assert_array_equal(got, want)


def test_a_store_of_deltas_answers_as_one_merged_store(tmp_path):
    rng = np.random.default_rng(11)
    tracks = _tracks(rng, 24)
    reference = LandmarkIndex.create(payload_bits=22)
    for track in tracks:
        reference.add(*track)
    reference.save(tmp_path / "one.npz")

    store = LandmarkIndex.create(payload_bits=22)
    for track in tracks[:10]:
        store.add(*track)
    store.save(tmp_path / "main.npz")
    deltas = []
    for first in range(10, 24, 4):  # four commits of four, then two tracks
        for track in tracks[first:first + 4]:
            store.add(*track)
        deltas.append(tmp_path / f"delta{first}.npz")
        assert store.save_delta(deltas[-1]) and not store.needs_rewrite
    assert not store.save_delta(tmp_path / "nothing.npz") and not (tmp_path / "nothing.npz").exists()
    assert len(store.segment_bytes()) == 5
    _same_answers(store, reference, rng)
    for mmap in (False, True):
        _same_answers(LandmarkIndex.load(tmp_path / "main.npz", 22, mmap=mmap, deltas=tuple(deltas)), reference, rng)

    # Merging the two newest deltas, then all into main: still the same answers.
    merged = store.write_merged(3, 5, tmp_path / "tail.npz")
    _same_answers(store, reference, rng)  # unchanged until adopted
    store.adopt_merged(merged, tmp_path / "tail.npz")
    assert len(store.segment_bytes()) == 4
    _same_answers(store, reference, rng)
    with pytest.raises(RuntimeError, match="no longer"):
        store.adopt_merged(merged, tmp_path / "tail.npz")
    store.adopt_merged(store.write_merged(0, 4, tmp_path / "merged.npz"), tmp_path / "merged.npz")
    assert len(store.segment_bytes()) == 1
    _same_answers(store, reference, rng)
    assert (tmp_path / "merged.npz").read_bytes() == (tmp_path / "one.npz").read_bytes()


def _rarest_by_counting(store: LandmarkIndex, asked: np.ndarray, max_hits: int):
    """:meth:`LandmarkIndex.lookup_rarest` by its definition: every code counted, the rarest taken (in the
    store's order, ties as asked) while their hits fit, each looked up on its own."""
    filed = np.argsort(mix_codes(asked), kind="stable")
    counts = store.code_counts(asked[filed])
    rarest_first = np.argsort(counts, kind="stable")
    within = rarest_first[np.cumsum(counts[rarest_first]) <= max_hits]
    chosen = filed[np.sort(within[counts[within] > 0])]
    return chosen, store.lookup_slices(asked[chosen])


def test_the_rarest_codes_within_a_budget_are_looked_up_across_main_deltas_and_added_entries(tmp_path):
    rng = np.random.default_rng(5)
    tracks = _tracks(rng, 30)
    store = LandmarkIndex.create(payload_bits=22)
    for number, track in enumerate(tracks):
        store.add(*track)
        if number == 9:
            store.save(tmp_path / "main.npz")
        if number == 19:
            store.save_delta(tmp_path / "delta.npz")
    assert len(store._segments()) == 3  # a compact main, a compact delta, the entries added since
    asked = np.concatenate([rng.integers(0, 450, 700, dtype=np.uint32), np.full(5, 3, np.uint32)])
    total = int(store.code_counts(asked).sum())
    for budget in (0, 40, total // 5, total // 2, total, 1 << 40):
        chosen, first_hit, hits_per_code, labels = store.lookup_rarest(asked, budget)
        expected_chosen, (_, expected_counts, expected_labels) = _rarest_by_counting(store, asked, budget)
        np.testing.assert_array_equal(chosen, expected_chosen)
        np.testing.assert_array_equal(hits_per_code, expected_counts)
        assert hits_per_code.sum() <= budget
        # Each chosen code's slice holds its hits in store order; a repeated code's is shared.
        got = [labels[start:start + count] for start, count in zip(first_hit, hits_per_code)]
        np.testing.assert_array_equal(np.concatenate(got + [np.zeros(0, np.int64)]), expected_labels)
        if budget >= total:  # every code a track holds, the repeats among them read once
            assert len(chosen) == np.sum(store.code_counts(asked) > 0) and len(labels) < len(expected_labels)


def test_removal_across_main_and_deltas_is_written_whole(tmp_path):
    rng = np.random.default_rng(12)
    tracks = _tracks(rng, 12)
    store, reference = LandmarkIndex.create(payload_bits=22), LandmarkIndex.create(payload_bits=22)
    for track in tracks:
        reference.add(*track)
    for track in tracks[:6]:
        store.add(*track)
    store.save(tmp_path / "main.npz")
    for track in tracks[6:]:
        store.add(*track)
    store.save_delta(tmp_path / "delta.npz")
    store.add(13, *tracks[0][1:])  # added, not saved
    reference.add(13, *tracks[0][1:])

    assert store.remove(13) == reference.remove(13) == len(tracks[0][1])
    assert not store.needs_rewrite  # only unsaved entries went
    for removed in (3, 9):  # one in main, one in the delta
        assert store.remove(removed) == reference.remove(removed) > 0
        assert store.needs_rewrite
        _same_answers(store, reference, rng)
    with pytest.raises(RuntimeError, match="saved whole"):
        store.save_delta(tmp_path / "delta2.npz")
    store.save(tmp_path / "rewritten.npz")
    assert not store.needs_rewrite and len(store.segment_bytes()) == 1
    _same_answers(LandmarkIndex.load(tmp_path / "rewritten.npz", 22), reference, rng)


def _peaks(store: PeakStore, track: int) -> tuple[list[int], list[int]]:
    frames, bins = store.peaks_between(track, 0, 1 << 30)
    return frames.tolist(), bins.tolist()


def test_peak_store_deltas_merge_and_removal(tmp_path):
    rng = np.random.default_rng(13)
    peaks = {t: (np.sort(rng.integers(0, 5000, n)), rng.integers(0, 256, n))
             for t, n in zip(range(1, 10), range(5, 50, 5))}
    store = PeakStore.create()
    for t in (1, 2, 3):
        store.add(t, *peaks[t])
    store.save(tmp_path / "main.npz")
    deltas = []
    for first in (4, 7):
        for t in range(first, first + 3):
            store.add(t, *peaks[t])
        deltas.append(tmp_path / f"d{first}.npz")
        assert store.save_delta(deltas[-1])
    expected = {t: (frames.tolist(), bins.tolist()) for t, (frames, bins) in peaks.items()}
    reopened = PeakStore.load(tmp_path / "main.npz", deltas=tuple(deltas))
    for view in (store, reopened):
        assert {t: _peaks(view, t) for t in peaks} == expected and view.ntotal == sum(range(5, 50, 5))
    merged = reopened.write_merged(0, 3, tmp_path / "merged.npz")
    reopened.adopt_merged(merged, tmp_path / "merged.npz")
    assert len(reopened.segment_bytes()) == 1 and {t: _peaks(reopened, t) for t in peaks} == expected
    assert store.remove(5) == 25 and store.needs_rewrite and _peaks(store, 5) == ([], [])
    store.save(tmp_path / "rewritten.npz")
    del expected[5]
    assert {t: _peaks(PeakStore.load(tmp_path / "rewritten.npz"), t) for t in expected} == expected


# -- whole indexes ------------------------------------------------------------------------------


def _queries(tmp_path, write_audio, songs):
    return [write_audio(tmp_path / f"q{seed}.wav", songs[seed].samples[int(start * SR):int((start + 8) * SR)])
            for seed, start in ((30, 3.0), (41, 12.0), (44, 20.0), (49, 5.0))]


def _answers(directory, queries, codes, mmap=True):
    """Every landmark tier's lookups of ``codes`` and each query's matches."""
    with Refrain.open(directory, mmap=mmap) as refrain:
        lookups = {name: [a.tolist() for a in tier.lookup(codes)] for name, tier in refrain.store.tiers.items()
                   if isinstance(tier, LandmarkIndex)}
        return lookups, [refrain.match_file(query).matches for query in queries]


def _fingerprint_codes(songs, params):
    from refrain.fingerprint import fingerprint_file
    return np.concatenate([fingerprint_file(songs[seed].path, params).hashes for seed in (30, 44)])


def test_an_index_committed_in_deltas_matches_as_one_committed_at_once(tmp_path, songs, write_audio):
    paths = [songs[seed].path for seed in sorted(songs)]
    at_once = Config()
    in_deltas = replace(Config(), commit_every=2, index_writes=DELTAS_ONLY)
    with Refrain.open(tmp_path / "once", create=True, config=at_once) as refrain:
        assert [r.status for r in refrain.ingest(paths)] == ["added"] * len(paths)
    with Refrain.open(tmp_path / "deltas", create=True, config=in_deltas) as refrain:
        assert [r.status for r in refrain.ingest(paths)] == ["added"] * len(paths)
        # Three commits of two tracks: three deltas, the two newest merged while of similar size.
        deltas = refrain.store.delta_segments()
        assert 2 <= deltas["pair"] <= 3 and deltas["peaks"] >= 2
    manifest = json.loads((tmp_path / "deltas" / "manifest.json").read_text())
    assert manifest["format"] == FORMAT_VERSION
    assert {tier: len(entry.get("deltas", [])) for tier, entry in manifest["tiers"].items()} == deltas

    queries = _queries(tmp_path, write_audio, songs)
    codes = _fingerprint_codes(songs, Config().fingerprint)
    expected = _answers(tmp_path / "once", queries, codes)
    assert all(expected[1])
    assert _answers(tmp_path / "deltas", queries, codes) == expected
    assert _answers(tmp_path / "deltas", queries, codes, mmap=False) == expected

    with IndexStore.open(tmp_path / "deltas", writable=True) as store:
        assert set(store.merge()) >= {"pair", "triplet", "quad", "double", "peaks"}
    manifest = json.loads((tmp_path / "deltas" / "manifest.json").read_text())
    assert manifest["format"] == FORMAT_VERSION and not any("deltas" in entry for entry in manifest["tiers"].values())
    assert len(list((tmp_path / "deltas").glob("pairs*"))) == 1  # the merged main alone
    assert _answers(tmp_path / "deltas", queries, codes) == expected


def test_takedown_of_tracks_in_main_and_in_a_delta(tmp_path, songs, write_audio):
    paths = [songs[seed].path for seed in sorted(songs)]
    queries = _queries(tmp_path, write_audio, songs)
    codes = _fingerprint_codes(songs, Config().fingerprint)
    for name, config in (("once", Config()), ("deltas", replace(Config(), commit_every=2, index_writes=DELTAS_ONLY))):
        with Refrain.open(tmp_path / name, create=True, config=config) as refrain:
            added = {r.path: r.track_id for r in refrain.ingest(paths)}
            for seed in (30, 44):  # the first commit's (main after the first commit) and a later delta's
                refrain.remove(added[str(songs[seed].path)])
            if name == "deltas":
                assert refrain.store.delta_segments()["pair"] == 0  # rewritten whole: no file keeps them
    expected = _answers(tmp_path / "once", queries, codes)
    assert _answers(tmp_path / "deltas", queries, codes) == expected
    assert [m.source for m in expected[1][1]] == [str(songs[41].path)] and expected[1][0] == []


def test_background_merges_keep_the_answers_and_few_deltas(tmp_path, songs, write_audio):
    paths = [songs[seed].path for seed in sorted(songs)]
    config = replace(Config(), commit_every=1, index_writes=IndexWriteParams(whole_below_bytes=0, merge_share=0.6))
    with Refrain.open(tmp_path / "index", create=True, config=config) as refrain:
        list(refrain.ingest(paths))
        refrain.store.wait_for_merge()
        # Six commits; a binary counter and merges into main keep at most log2(6) + 1 deltas.
        assert max(refrain.store.delta_segments().values()) <= 3
    with Refrain.open(tmp_path / "once", create=True) as refrain:
        list(refrain.ingest(paths))
    queries = _queries(tmp_path, write_audio, songs)
    codes = _fingerprint_codes(songs, Config().fingerprint)
    assert _answers(tmp_path / "index", queries, codes) == _answers(tmp_path / "once", queries, codes)
    listed = {name for entry in json.loads((tmp_path / "index" / "manifest.json").read_text())["tiers"].values()
              for name in [entry["file"], *entry.get("deltas", [])] if name.endswith(".npz")}
    assert {p.name for p in (tmp_path / "index").glob("*.npz")} == listed  # no file left behind


@pytest.mark.parametrize("when", ["before the manifest switch", "before deleting the merged files"])
def test_a_crash_in_the_middle_of_a_merge_leaves_a_consistent_index(tmp_path, songs, write_audio, when):
    paths = [str(songs[seed].path) for seed in sorted(songs)]
    directory = tmp_path / "index"
    with Refrain.open(directory, create=True, config=replace(Config(), commit_every=2,
                                                               index_writes=DELTAS_ONLY)) as refrain:
        list(refrain.ingest(paths))
    queries = _queries(tmp_path, write_audio, songs)
    codes = _fingerprint_codes(songs, Config().fingerprint)
    before = _answers(directory, queries, codes)
    files_before = sorted(p.name for p in directory.iterdir())
    # A real crash: a separate process merges and dies at the given point (no close, no cleanup).
    patch = ("LandmarkIndex.adopt_merged = lambda *args: os._exit(9)" if when.startswith("before the manifest")
             else "original = IndexStore._record_files\n"
                  "IndexStore._record_files = lambda self, *a: (original(self, *a), os._exit(9))")
    script = textwrap.dedent(f"""
        import os
        from refrain.index import IndexStore, LandmarkIndex
        store = IndexStore.open({str(directory)!r}, writable=True)
    """) + patch + "\nstore.merge()\n"
    crashed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert crashed.returncode == 9, crashed.stderr
    assert sorted(p.name for p in directory.iterdir()) != files_before  # the crash left a file behind
    assert _answers(directory, queries, codes) == before  # readers see one consistent index
    with IndexStore.open(directory, writable=True) as store:  # the next writer deletes what is not listed
        listed = {path.name for files in store._tier_files.values() for path in files if path.suffix == ".npz"}
        assert {p.name for p in directory.glob("*.npz")} == listed
        store.merge()
    assert _answers(directory, queries, codes) == before


def test_a_reader_opening_while_a_merge_deletes_its_files_opens_the_merged_index(tmp_path, songs, write_audio,
                                                                                  monkeypatch):
    paths = [songs[seed].path for seed in sorted(songs)]
    directory = tmp_path / "index"
    with Refrain.open(directory, create=True, config=replace(Config(), commit_every=3,
                                                               index_writes=DELTAS_ONLY)) as refrain:
        list(refrain.ingest(paths))
    queries = _queries(tmp_path, write_audio, songs)
    codes = _fingerprint_codes(songs, Config().fingerprint)
    expected = _answers(directory, queries, codes)
    writer = IndexStore.open(directory, writable=True)
    original, merged = LandmarkIndex.load, []

    def load_after_a_merge(cls, *args, **kwargs):
        if not merged:  # the reader has read the manifest; the writer merges and deletes the deltas
            merged.extend(writer.merge())
        return original(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(LandmarkIndex, "load", classmethod(load_after_a_merge))
        with Refrain.open(directory, mmap=True) as reader:
            assert "pair" in merged and set(reader.store.delta_segments().values()) == {0}
    writer.close()
    assert _answers(directory, queries, codes) == expected

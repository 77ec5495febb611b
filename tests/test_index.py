"""The index store: lookups, removal, persistence, crash safety, the write lock, re-ingest."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import replace

import numpy as np
import pytest
import soxr

from refrain.fingerprint import fingerprint_file, fingerprint_signal
from refrain.index import IndexBusyError, IndexOpenError, IndexStore, LandmarkIndex
from refrain.index.landmarks import mix_codes, stable_order, unmix_codes
from refrain.api import Refrain
from refrain.config import Config

SR = 22050


def hit_set(landmarks: LandmarkIndex, hashes: np.ndarray) -> set[tuple[int, int, int]]:
    """Every (query position, track id, reference frame) the store returns."""
    return set(zip(*(a.tolist() for a in landmarks.lookup(hashes))))


def fingerprint_of(song, params):
    return fingerprint_file(song.path, params)


def excerpt_file(tmp_path, write_audio, y, start, seconds=10.0, name="query.wav"):
    i = int(start * SR)
    return write_audio(tmp_path / name, y[i:i + int(seconds * SR)])


# -- the landmark store on its own ------------------------------------------------------------


def test_landmark_index_add_lookup_remove(tmp_path):
    rng = np.random.default_rng(1)
    codes = {7: rng.integers(0, 1 << 23, 500, dtype=np.uint32),
             8: rng.integers(0, 1 << 23, 300, dtype=np.uint32)}
    frames = {7: np.arange(500) * 3, 8: np.arange(300) + 100_000}
    store = LandmarkIndex.create(payload_bits=22)
    for track, hashes in codes.items():
        store.add(track, hashes, frames[track])
    assert store.ntotal == 800

    hits = hit_set(store, codes[7])
    assert {(i, 7, 3 * i) for i in range(500)} <= hits
    # Random 23-bit codes of the other track may collide now and then, never systematically.
    assert sum(1 for _, track, _ in hits if track == 8) < 5

    absent = np.setdiff1d(rng.integers(0, 1 << 23, 100, dtype=np.uint32),
                          np.concatenate(list(codes.values())))
    assert hit_set(store, absent) == set()

    assert store.remove(7) == 500
    assert store.ntotal == 300
    assert all(track == 8 for _, track, _ in hit_set(store, codes[7]))
    assert {(i, 8, 100_000 + i) for i in range(300)} <= hit_set(store, codes[8])

    store.save(tmp_path / "pairs.npz")
    for mmap in (False, True):
        loaded = LandmarkIndex.load(tmp_path / "pairs.npz", 22, mmap=mmap)
        assert loaded.ntotal == 300
        assert hit_set(loaded, codes[8]) == hit_set(store, codes[8])


def test_lookup_returns_hits_grouped_by_code_in_the_order_asked(tmp_path):
    # The lookup searches the codes in list order; its answer must still come code by code
    # in the order given, each code's hits in stored order, as one lookup per code gives.
    rng = np.random.default_rng(4)
    store = LandmarkIndex.create(payload_bits=22)
    stored = rng.integers(0, 1 << 12, 3000, dtype=np.uint32)  # few distinct codes: many hits each
    store.add(3, stored, np.arange(3000))
    store.add(5, stored[::7], np.arange(0, 3000, 7) + 1)
    asked = np.concatenate([rng.choice(stored, 200), rng.integers(1 << 12, 1 << 20, 50, dtype=np.uint32),
                            stored[:5], stored[:5]])  # repeated codes too
    rng.shuffle(asked)
    one_by_one = [store.lookup(asked[i:i + 1]) for i in range(len(asked))]
    expected = [np.concatenate([np.full(len(hits[0]), i) for i, hits in enumerate(one_by_one)])] + \
        [np.concatenate([hits[k] for hits in one_by_one]) for k in (1, 2)]
    for got, want in zip(store.lookup(asked), expected):
        np.testing.assert_array_equal(got, want)


def test_landmark_index_rejects_payloads_it_cannot_encode():
    store = LandmarkIndex.create(payload_bits=22)
    with pytest.raises(ValueError, match="payloads must lie in"):
        store.add(1, np.array([1, 2], dtype=np.uint32), np.array([0, -1]))
    with pytest.raises(ValueError, match="differ in length"):
        store.add(1, np.array([1, 2], dtype=np.uint32), np.array([0]))


def test_memory_mapped_store_is_read_only(tmp_path):
    store = LandmarkIndex.create(payload_bits=22)
    store.add(1, np.array([5], dtype=np.uint32), np.array([0]))
    store.save(tmp_path / "l.npz")
    mapped = LandmarkIndex.load(tmp_path / "l.npz", 22, mmap=True)
    with pytest.raises(PermissionError):
        mapped.add(2, np.array([6], dtype=np.uint32), np.array([0]))
    with pytest.raises(PermissionError):
        mapped.remove(1)


def hits_per_code(landmarks: LandmarkIndex, hashes: np.ndarray) -> np.ndarray:
    """What the code-count table must hold: how many hits the lookup returns for each code."""
    return np.bincount(landmarks.lookup(hashes)[0], minlength=len(hashes))


def test_code_counts_follow_adds_removals_and_saves(tmp_path):
    rng = np.random.default_rng(3)
    # Few distinct codes, so that codes repeat within a track and across tracks.
    codes = {track: rng.integers(0, 300, n, dtype=np.uint32) for track, n in ((1, 400), (2, 250), (3, 100))}
    probe = np.arange(320, dtype=np.uint32)  # every stored code, and some never stored
    counted = {track: np.bincount(c, minlength=len(probe)) for track, c in codes.items()}
    store = LandmarkIndex.create(payload_bits=22)
    np.testing.assert_array_equal(store.code_counts(probe), 0)
    store.add(1, codes[1], np.arange(400))
    np.testing.assert_array_equal(store.code_counts(probe), counted[1])
    store.add(2, codes[2], np.arange(250))
    store.add(3, codes[3], np.arange(100))
    expected = counted[1] + counted[2] + counted[3]
    np.testing.assert_array_equal(store.code_counts(probe), expected)
    np.testing.assert_array_equal(expected, hits_per_code(store, probe))

    path = tmp_path / "l.npz"
    store.save(path)
    for mmap in (False, True):
        np.testing.assert_array_equal(LandmarkIndex.load(path, 22, mmap=mmap).code_counts(probe), expected)

    loaded = LandmarkIndex.load(path, 22)
    loaded.add(4, codes[3], np.arange(100))  # folded into the table read from disk
    np.testing.assert_array_equal(loaded.code_counts(probe), expected + counted[3])
    assert loaded.remove(1) == 400
    expected = counted[2] + 2 * counted[3]
    np.testing.assert_array_equal(loaded.code_counts(probe), expected)
    loaded.add(5, codes[1][:50], np.arange(50))  # an add after a removal, before the recount
    expected = expected + np.bincount(codes[1][:50], minlength=len(probe))
    loaded.save(path)
    for mmap in (False, True):
        reloaded = LandmarkIndex.load(path, 22, mmap=mmap)
        np.testing.assert_array_equal(reloaded.code_counts(probe), expected)
        np.testing.assert_array_equal(expected, hits_per_code(reloaded, probe))


def _as_faiss_file(store: LandmarkIndex, path, raw_codes=None) -> None:
    """Write a store's entries as Refrain wrote a landmark tier up to 2026-11: a FAISS
    binary inverted file of 2**16 lists keyed by the stored code's low 16 bits."""
    import faiss
    from refrain.index.landmarks import _unpacked
    store.save(path.with_suffix(".npz"))  # merges every segment and the entries added since the last save
    [main] = store._state[0]
    codes = main.entry_codes() if raw_codes is None else raw_codes
    quantizer = faiss.IndexBinaryHash(32, 16)
    quantizer.add(np.arange(1 << 16, dtype="<u4").view(np.uint8).reshape(-1, 4))
    index = faiss.IndexBinaryIVF(quantizer, 32, 1 << 16)
    index.own_fields = True
    quantizer.this.disown()
    index.add_with_ids(np.ascontiguousarray(codes, dtype="<u4").view(np.uint8).reshape(-1, 4),
                       _unpacked(main.rows()))
    faiss.write_index_binary(index, str(path))


@pytest.mark.parametrize("mixed", [True, False])
def test_a_faiss_tier_of_an_earlier_refrain_gives_the_same_hits_in_the_same_order(tmp_path, mixed):
    rng = np.random.default_rng(6)
    store = LandmarkIndex.create(payload_bits=22, hashed_lists=mixed)
    stored = rng.integers(0, 1 << 12, 2000, dtype=np.uint32)
    store.add(3, stored, np.arange(2000))
    store.add(5, stored[::3], np.arange(0, 2000, 3) + 7)
    asked = np.concatenate([rng.choice(stored, 300), rng.integers(1 << 12, 1 << 20, 20, dtype=np.uint32)])
    _as_faiss_file(store, tmp_path / "l.faiss")
    converted = LandmarkIndex.from_faiss(tmp_path / "l.faiss", 22, hashed_lists=mixed)
    assert converted.hashed_lists and converted.ntotal == store.ntotal
    for got, want in zip(converted.lookup(asked), store.lookup(asked)):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(converted.code_counts(asked), store.code_counts(asked))
    (tmp_path / "junk.faiss").write_bytes(b"not FAISS")
    with pytest.raises(ValueError, match="unreadable FAISS"):
        LandmarkIndex.from_faiss(tmp_path / "junk.faiss", 22, hashed_lists=True)


def test_an_entry_costs_its_gap_and_payload_bits(tmp_path):
    # 100,000 entries of one track under 50 codes: in the compact encoding an entry costs a 1-bit
    # gap field (0: the same track as the entry before it in its run) and its payload's 17 bits;
    # a run's first entry adds the track's 4 bits; every 64 entries a skip point costs 12 bytes,
    # every distinct code at most 10 in the code table (here runs of 2,000: low bits, run byte,
    # long length and escapes), every group 24; then the archive's headers (11 arrays).
    store = LandmarkIndex.create(payload_bits=22)
    codes = np.arange(100_000, dtype=np.uint32) % 50
    store.add(9, codes, np.arange(100_000))
    store.save(tmp_path / "l.npz")
    stream_bytes = (100_000 * (1 + 17) + 50 * 4) // 8
    mapped = LandmarkIndex.load(tmp_path / "l.npz", 22, mmap=True)
    [segment] = mapped._state[0]
    assert segment.table.nbytes <= 50 * 10 + 24 * len(segment.table.group_codes)
    assert stream_bytes + 1563 * 12 + segment.table.nbytes <= (tmp_path / "l.npz").stat().st_size \
        <= stream_bytes + 1563 * 12 + segment.table.nbytes + 4_000
    assert mapped.lookup(np.array([7], np.uint32))[2].tolist() == list(range(7, 100_000, 50))
    assert mapped.lookup_slices(np.array([7], np.uint32), np.array([9]))[2].tolist() == \
        [9 << 22 | frame for frame in range(7, 100_000, 50)]


def test_track_ids_beyond_the_store_width_are_refused():
    from refrain.index.landmarks import TRACK_BITS
    store = LandmarkIndex.create(payload_bits=22)
    with pytest.raises(ValueError, match="out of range"):
        store.add(1 << TRACK_BITS, np.array([1], np.uint32), np.array([0]))


# -- a whole index directory --------------------------------------------------------------------


def test_every_landmark_of_a_track_is_found(catalogue_index, songs):
    with IndexStore.open(catalogue_index.directory) as store:
        for seed, song in songs.items():
            fp = fingerprint_of(song, store.fingerprint_params)
            track = catalogue_index.track_ids[seed]
            found = {(q, f) for q, t, f in hit_set(store.tiers["pair"], fp.hashes) if t == track}
            # Each landmark is found at its own frame (and, for a code repeated in the
            # track, also at the other frames of that code).
            assert set(zip(range(len(fp)), fp.frames.tolist())) <= found


def test_removed_track_leaves_no_hits_and_others_stay(index_copy, catalogue_index, songs):
    gone, kept = 33, [seed for seed in songs if seed != 33]
    gone_id = catalogue_index.track_ids[gone]
    with IndexStore.open(index_copy) as store:
        params = store.fingerprint_params
        prints = {seed: fingerprint_of(songs[seed], params) for seed in songs}
        before = {seed: hit_set(store.tiers["pair"], fp.hashes) for seed, fp in prints.items()}
    with IndexStore.open(index_copy, writable=True) as store:
        total = store.tiers["pair"].ntotal
        track = store.remove_track(gone_id)
        assert track.track_id == gone_id and track.source == str(songs[gone].path)
        assert store.tiers["pair"].ntotal == total - track.n_landmarks
        with pytest.raises(KeyError):
            store.remove_track(gone_id)
    for mmap in (False, True):  # and it stays removed on disk
        with IndexStore.open(index_copy, mmap=mmap) as store:
            assert store.catalog.get(gone_id) is None
            assert gone_id not in store.catalog.ready_tracks()
            assert all(t != gone_id for _, t, _ in hit_set(store.tiers["pair"], prints[gone].hashes))
            for seed in kept:
                expected = {hit for hit in before[seed] if hit[1] != gone_id}
                assert hit_set(store.tiers["pair"], prints[seed].hashes) == expected


@pytest.mark.parametrize("mmap", [False, True])
def test_reloaded_index_gives_identical_lookups(tmp_path, songs, mmap):
    rng = np.random.default_rng(2)
    with IndexStore.open(tmp_path / "idx", create=True) as store:
        params = store.fingerprint_params
        prints = {seed: fingerprint_of(songs[seed], params) for seed in (30, 44, 49)}
        for seed, fp in prints.items():
            store.add_track(str(songs[seed].path), str(seed), fp)
        store.commit()
        queries = np.concatenate([prints[30].hashes, prints[44].hashes,
                                  rng.integers(0, 1 << 23, 2000, dtype=np.uint32)])
        in_memory = store.tiers["pair"].lookup(queries)
        tracks = store.catalog.ready_tracks()
    assert len(tracks) == 3 and len(in_memory[0]) >= len(prints[30]) + len(prints[44])
    with IndexStore.open(tmp_path / "idx", mmap=mmap) as store:
        reloaded = store.tiers["pair"].lookup(queries)
        assert store.catalog.ready_tracks() == tracks
    for a, b in zip(in_memory, reloaded):
        np.testing.assert_array_equal(a, b)


def _as_faiss_index(directory) -> None:
    """Turn an index directory's landmark tiers into the FAISS files of Refrain up to 2026-11."""
    manifest = json.loads((directory / "manifest.json").read_text())
    with IndexStore.open(directory) as store:
        for tier, name in (("pair", "pairs"), ("triplet", "triplets")):
            _as_faiss_file(store.tiers[tier], directory / f"{name}.faiss")
            (directory / f"{name}.npz").unlink()
            del manifest["tiers"][tier]["store"]
            manifest["tiers"][tier]["file"] = f"{name}.faiss"
    (directory / "manifest.json").write_text(json.dumps(manifest))


def test_an_index_of_an_earlier_refrain_matches_as_before_and_upgrades_in_place(
        index_copy, catalogue, catalogue_index, songs, write_audio, tmp_path):
    _as_faiss_index(index_copy)
    queries = [excerpt_file(tmp_path, write_audio, songs[seed].samples, start, name=f"{seed}.wav")
               for seed, start in ((30, 3.0), (44, 12.5))]
    expected = [catalogue.match_file(query).matches for query in queries]
    with Refrain.open(index_copy, mmap=True) as legacy:
        assert legacy.info().upgradable == ["pair", "triplet"]
        assert [legacy.match_file(query).matches for query in queries] == expected
    with Refrain.open(index_copy, writable=True) as writer:
        assert writer.upgrade_index() == ["pair", "triplet"] and writer.upgrade_index() == []
    manifest = json.loads((index_copy / "manifest.json").read_text())
    assert [manifest["tiers"][tier].get("store") for tier in ("pair", "triplet")] == ["runs", "runs"]
    assert not list(index_copy.glob("*.faiss.counts.npy")) and not (index_copy / "pairs.faiss").exists()
    with Refrain.open(index_copy, mmap=True) as upgraded:
        assert upgraded.info().upgradable == []
        assert [upgraded.match_file(query).matches for query in queries] == expected
    manifest["tiers"]["pair"]["store"] = "by-the-moon"
    (index_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexOpenError, match="landmark store"):
        Refrain.open(index_copy)

def test_index_filed_before_the_code_mix_matches_as_a_new_one(tmp_path, pre_mix_index, songs, write_audio):
    with Refrain.open(tmp_path / "new", create=True) as refrain:
        list(refrain.ingest([songs[seed].path for seed in (30, 41, 44)]))
    queries = {seed: excerpt_file(tmp_path, write_audio, songs[seed].samples, start, name=f"{seed}.wav")
               for seed, start in ((30, 3.0), (44, 12.5))}
    with Refrain.open(pre_mix_index) as old, Refrain.open(tmp_path / "new") as new:
        assert not old.store.tiers["pair"].hashed_lists and new.store.tiers["pair"].hashed_lists
        assert not old.info().proposals and new.info().proposals
        for seed, query in queries.items():
            found = old.match_file(query).matches
            assert found and found[0].source == str(songs[seed].path)
            assert found == new.match_file(query).matches
    manifest = json.loads((pre_mix_index / "manifest.json").read_text())
    manifest["tiers"]["pair"]["lists"] = "by-the-moon"
    (pre_mix_index / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexOpenError, match="list filing"):
        Refrain.open(pre_mix_index)


def test_the_first_write_to_an_index_of_an_earlier_refrain_upgrades_it(index_copy, catalogue_index, songs,
                                                                      unrelated_songs, write_audio, tmp_path):
    _as_faiss_index(index_copy)
    newcomer = write_audio(tmp_path / "new.wav", unrelated_songs[45])
    with Refrain.open(index_copy, writable=True) as writer:
        assert writer.info().upgradable == ["pair", "triplet"]  # opening alone changes nothing
        [added] = writer.ingest([newcomer])
    manifest = json.loads((index_copy / "manifest.json").read_text())
    assert [manifest["tiers"][tier]["file"] for tier in ("pair", "triplet")] == ["pairs.npz", "triplets.npz"]
    assert not list(index_copy.glob("*.faiss.counts.npy"))
    with Refrain.open(index_copy, mmap=True) as upgraded:
        assert upgraded.info().upgradable == []
        assert [m.track_id for m in upgraded.match_file(newcomer).matches] == [added.track_id]
        query = excerpt_file(tmp_path, write_audio, songs[41].samples, 20.0)
        assert [m.track_id for m in upgraded.match_file(query).matches] == [catalogue_index.track_ids[41]]


def _lookups_and_matches(directory, queries, codes, mmap=False):
    with Refrain.open(directory, mmap=mmap) as refrain:
        hashed = [refrain.store.tiers[tier].hashed_lists for tier in ("pair", "triplet")]
        lookups = [a.tolist() for tier in ("pair", "triplet") for a in refrain.store.tiers[tier].lookup(codes)]
        return hashed, lookups, [refrain.match_file(query).matches for query in queries]


def test_upgrade_refiles_an_old_index_in_place(pre_mix_index, songs, write_audio, tmp_path):
    queries = [excerpt_file(tmp_path, write_audio, songs[seed].samples, start, name=f"{seed}.wav")
               for seed, start in ((30, 3.0), (41, 20.0), (44, 12.5))]
    codes = np.concatenate([fingerprint_of(songs[seed], Config().fingerprint).hashes for seed in (30, 44)])
    hashed, lookups, matches = _lookups_and_matches(pre_mix_index, queries, codes)
    assert hashed == [False, False] and all(matches)

    with Refrain.open(pre_mix_index, writable=True) as refrain:
        assert refrain.upgrade_index() == ["pair", "triplet"]
        assert refrain.upgrade_index() == []

    manifest = json.loads((pre_mix_index / "manifest.json").read_text())
    assert [manifest["tiers"][tier]["file"].split(".")[0] for tier in ("pair", "triplet")] == ["pairs", "triplets"]
    assert not (pre_mix_index / "pairs.npz").exists() and not (pre_mix_index / "triplets.npz").exists()
    for mmap in (False, True):
        assert _lookups_and_matches(pre_mix_index, queries, codes, mmap) == ([True, True], lookups, matches)


def test_interrupted_upgrade_leaves_the_index_as_it_was(pre_mix_index, songs, write_audio, tmp_path, monkeypatch):
    query = excerpt_file(tmp_path, write_audio, songs[41].samples, 20.0)
    codes = fingerprint_of(songs[41], Config().fingerprint).hashes
    before = _lookups_and_matches(pre_mix_index, [query], codes)

    def power_cut(directory, manifest):
        raise OSError("power cut before the manifest was replaced")

    with monkeypatch.context() as patch:
        patch.setattr(IndexStore, "_save_manifest", staticmethod(power_cut))
        with Refrain.open(pre_mix_index, writable=True) as refrain, pytest.raises(OSError, match="power cut"):
            refrain.upgrade_index()
    assert _lookups_and_matches(pre_mix_index, [query], codes) == before
    with Refrain.open(pre_mix_index, writable=True) as refrain:
        assert refrain.upgrade_index() == ["pair", "triplet"]
    assert _lookups_and_matches(pre_mix_index, [query], codes) == ([True, True], *before[1:])


def _match_ids(refrain, path):
    return [m.track_id for m in refrain.match_file(path).matches]


def test_track_added_but_never_committed_is_discarded(index_copy, catalogue_index, songs,
                                                      unrelated_songs, write_audio, tmp_path):
    newcomer = unrelated_songs[45]
    new_file = write_audio(tmp_path / "new.wav", newcomer)
    with IndexStore.open(index_copy) as store:
        before_total, before_tracks = store.tiers["pair"].ntotal, store.catalog.totals()
        fp = fingerprint_file(new_file, store.fingerprint_params)

    store = IndexStore.open(index_copy, writable=True)
    new_id = store.add_track(str(new_file), "0" * 64, fp)
    store.close()  # the process "dies" before commit()

    query = excerpt_file(tmp_path, write_audio, newcomer, 8.0)
    with Refrain.open(index_copy) as reader:  # readers never see a pending track
        assert new_id not in reader.store.catalog.ready_tracks()
        assert new_id not in _match_ids(reader, query)
    with IndexStore.open(index_copy, writable=True) as store:  # the next writer cleans up
        assert store.catalog.unfinished() == []
        assert store.catalog.totals() == before_tracks
        assert store.tiers["pair"].ntotal == before_total
        assert all(t != new_id for _, t, _ in hit_set(store.tiers["pair"], fp.hashes))
    with Refrain.open(index_copy, mmap=True) as reader:
        other = excerpt_file(tmp_path, write_audio, songs[41].samples, 11.0, name="other.wav")
        assert _match_ids(reader, other)[:1] == [catalogue_index.track_ids[41]]


def test_crash_between_saving_landmarks_and_publishing(index_copy, catalogue_index, songs,
                                                       unrelated_songs, write_audio, tmp_path):
    # A real crash: a separate process saves the FAISS file with a pending track in it
    # and dies (no close, no commit); its lock dies with it.
    newcomer = unrelated_songs[45]
    new_file = write_audio(tmp_path / "new.wav", newcomer)
    with IndexStore.open(index_copy) as store:
        before_total, before_tracks = store.tiers["pair"].ntotal, store.catalog.totals()
    script = textwrap.dedent(f"""
        import os, json
        from refrain.fingerprint import fingerprint_file
        from refrain.index import IndexStore
        store = IndexStore.open({str(index_copy)!r}, writable=True)
        fp = fingerprint_file({str(new_file)!r}, store.fingerprint_params)
        track_id = store.add_track({str(new_file)!r}, "0" * 64, fp)
        store.tiers["pair"].save(store.directory / "pairs.npz")
        print(json.dumps([track_id, len(fp)]), flush=True)
        os._exit(9)
    """)
    crashed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert crashed.returncode == 9, crashed.stderr
    new_id, n_new = json.loads(crashed.stdout)

    query = excerpt_file(tmp_path, write_audio, newcomer, 8.0)
    with Refrain.open(index_copy, mmap=True) as reader:
        assert reader.store.tiers["pair"].ntotal == before_total + n_new  # in FAISS ...
        assert new_id not in _match_ids(reader, query)  # ... but never reported
    with IndexStore.open(index_copy, writable=True) as store:
        assert store.tiers["pair"].ntotal == before_total
        assert store.catalog.unfinished() == []
        assert store.catalog.totals() == before_tracks
    with Refrain.open(index_copy, mmap=True) as reader:
        assert reader.store.tiers["pair"].ntotal == before_total
        other = excerpt_file(tmp_path, write_audio, songs[30].samples, 6.0, name="other.wav")
        assert _match_ids(reader, other)[:1] == [catalogue_index.track_ids[30]]


def test_second_writer_is_refused(index_copy):
    with IndexStore.open(index_copy, writable=True):
        with pytest.raises(IndexBusyError, match="another process is writing"):
            IndexStore.open(index_copy, writable=True)
        with pytest.raises(IndexBusyError):
            Refrain.open(index_copy, create=True)
        with Refrain.open(index_copy, mmap=True) as reader:  # readers are not blocked
            assert reader.info().tracks > 0
    with IndexStore.open(index_copy, writable=True):  # released on close
        pass


def test_writer_in_another_process_blocks_this_one(index_copy):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from refrain.index import IndexStore; "
         f"s = IndexStore.open({str(index_copy)!r}, writable=True); print('locked', flush=True); "
         "sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(IndexBusyError):
            IndexStore.open(index_copy, writable=True)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    IndexStore.open(index_copy, writable=True).close()


def test_reingesting_an_unchanged_file_is_a_no_op(index_copy, catalogue_index, songs):
    song = songs[34]
    pair_file = index_copy / "pairs.npz"
    stamp = pair_file.stat().st_mtime_ns
    with Refrain.open(index_copy, writable=True) as refrain:
        before = refrain.info()
        [result] = refrain.ingest([song.path])
        after = refrain.info()
    assert result.status == "unchanged"
    assert result.track_id == catalogue_index.track_ids[34]
    assert (after.tracks, after.landmarks) == (before.tracks, before.landmarks)
    assert pair_file.stat().st_mtime_ns == stamp


def test_a_commit_leaves_no_write_ahead_log_behind(index_copy, unrelated_songs, write_audio, tmp_path):
    path = tmp_path / "upload" / "track.wav"
    write_audio(path, unrelated_songs[45])
    with Refrain.open(index_copy, writable=True) as refrain:
        [result] = refrain.ingest([path])
        wal = index_copy / "catalog.sqlite-wal"
        # The writer is still open: without the checkpoint SQLite keeps the log it wrote here until it closes.
        assert result.status == "added"
        assert not wal.exists() or wal.stat().st_size == 0
        assert refrain.store.catalog.get(result.track_id) is not None


def test_same_path_with_new_content_replaces_the_track(index_copy, unrelated_songs, write_audio,
                                                       tmp_path):
    path = tmp_path / "upload" / "track.wav"
    old, new = unrelated_songs[45], unrelated_songs[35]
    write_audio(path, old)
    with Refrain.open(index_copy, writable=True) as refrain:
        tracks = refrain.info().tracks
        [first] = refrain.ingest([path])
        assert first.status == "added"
        write_audio(path, new)
        [second] = refrain.ingest([path])
        assert second.status == "updated"
        assert second.track_id != first.track_id
        assert refrain.info().tracks == tracks + 1
        assert refrain.store.catalog.get(first.track_id) is None
    with Refrain.open(index_copy, mmap=True) as reader:
        assert _match_ids(reader, excerpt_file(tmp_path, write_audio, new, 9.0))[:1] \
            == [second.track_id]
        assert first.track_id not in _match_ids(reader, excerpt_file(tmp_path, write_audio, old, 9.0))


def test_a_folder_that_is_not_an_index_is_refused(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(b"\xff\xd8\xff")
    with pytest.raises(IndexOpenError, match="not empty and holds no Refrain index"):
        Refrain.open(folder, create=True)
    with pytest.raises(IndexOpenError, match="no Refrain index here"):
        Refrain.open(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["cat.jpg"]  # left untouched
    with pytest.raises(IndexOpenError, match="no Refrain index here"):
        Refrain.open(tmp_path / "missing")


def test_an_index_from_a_newer_version_is_refused(index_copy):
    manifest = json.loads((index_copy / "manifest.json").read_text())
    manifest["format"] = 99
    (index_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexOpenError, match="format 99 is not supported"):
        Refrain.open(index_copy)


def test_index_keeps_its_fingerprint_settings(tmp_path, songs):
    config = Config(fingerprint=replace(Config().fingerprint, peaks_per_second=20.0))
    with Refrain.open(tmp_path / "idx", config=config, create=True) as refrain:
        list(refrain.ingest([songs[30].path]))
    with Refrain.open(tmp_path / "idx") as refrain:  # default Config, but the index's settings win
        assert refrain.params.peaks_per_second == 20.0
        y = soxr.resample(songs[30].excerpt(5.0, 10.0), SR, refrain.params.sample_rate)
        assert len(fingerprint_signal(y, refrain.params)) > 0
        assert [m.track_id for m in refrain.match_signal(y).matches][:1] == [1]


def _peaks(store, track_id):
    frames, bins = store.peaks_between(track_id, 0, 1 << 30)
    return frames.tolist(), bins.tolist()


def test_peak_store_is_mapped_from_its_file_and_keeps_changes_until_saved(tmp_path):
    from refrain.index.peaks import PeakStore
    store = PeakStore.create()
    store.add(3, np.array([40, 10, 20]), np.array([5, 7, 9]))
    store.add(8, np.array([1, 2]), np.array([255, 0]))
    store.add(12, np.array([7]), np.array([1]))
    store.save(tmp_path / "peaks.npz")
    loaded = PeakStore.load(tmp_path / "peaks.npz")
    assert isinstance(loaded.peaks_between(3, 0, 100)[1].base, np.memmap)  # frames: decoded from mapped steps
    assert _peaks(loaded, 3) == ([10, 20, 40], [7, 9, 5]) and loaded.ntotal == 6
    # Changes after the load: a new track, a removed one, a replaced one.
    loaded.add(20, np.array([5, 4]), np.array([2, 3]))
    assert loaded.remove(8) == 2 and loaded.remove(8) == 0
    loaded.add(12, np.array([9, 8]), np.array([4, 4]))
    assert _peaks(loaded, 20) == ([4, 5], [3, 2]) and _peaks(loaded, 8) == ([], [])
    assert _peaks(loaded, 12) == ([8, 9], [4, 4]) and loaded.ntotal == 3 + 2 + 2
    loaded.save(tmp_path / "peaks.npz")
    reread = PeakStore.load(tmp_path / "peaks.npz")
    for store_ in (loaded, reread):
        assert [_peaks(store_, t) for t in (3, 8, 12, 20)] == [
            ([10, 20, 40], [7, 9, 5]), ([], []), ([8, 9], [4, 4]), ([4, 5], [3, 2])]
        assert store_.ntotal == 7


@pytest.mark.parametrize("damage", ["compressed", "missing array", "not a zip"])
def test_a_peak_store_that_cannot_be_mapped_is_refused(tmp_path, damage):
    from refrain.index.peaks import PeakStore
    path = tmp_path / "peaks.npz"
    arrays = {"track_ids": np.array([1]), "starts": np.array([0, 1]), "frames": np.array([5], np.int32),
              "bins": np.array([3], np.uint8)}
    if damage == "compressed":
        np.savez_compressed(path, **arrays)
    elif damage == "missing array":
        np.savez(path, **{k: v for k, v in arrays.items() if k != "bins"})
    else:
        path.write_bytes(b"PK\x03\x04 nothing else")
    with pytest.raises(ValueError, match="unreadable peak store"):
        PeakStore.load(path)


def test_an_index_opened_for_matching_maps_its_peaks(index_copy, catalogue_index):
    track_id = catalogue_index.track_ids[34]
    with Refrain.open(index_copy, mmap=True) as refrain:
        frames, bins = refrain.store.tiers["peaks"].peaks_between(track_id, 0, 1 << 30)
        assert len(frames) > 100 and isinstance(bins.base, np.memmap)


def test_unmixing_a_stored_code_gives_back_the_landmark_code():
    codes = np.random.default_rng(5).integers(0, 1 << 32, size=10_000, dtype=np.uint64).astype(np.uint32)
    np.testing.assert_array_equal(unmix_codes(mix_codes(codes)), codes)


@pytest.mark.parametrize("dtype", [np.uint32, np.int64])
def test_stable_order_sorts_as_a_stable_argsort_does(dtype):
    rng = np.random.default_rng(8)
    values = rng.integers(0, 300, size=5_000).astype(dtype)  # many ties: their order must be kept
    np.testing.assert_array_equal(stable_order(values), np.argsort(values, kind="stable"))
    wide = np.array([1 << 40, 3, 1 << 40, 0], np.int64)  # beyond 32 bits: still right
    np.testing.assert_array_equal(stable_order(wide), [3, 1, 0, 2])
    widest = np.array([1 << 62, 3, 1 << 62, 0], np.int64)  # no room for the position: argsorted
    np.testing.assert_array_equal(stable_order(widest), [3, 1, 0, 2])
    assert stable_order(np.zeros(0, dtype)).dtype == np.int64

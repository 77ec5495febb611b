"""The compact entry encoding of the landmark run stores: the same answers as the plain ids it
replaces, at every width and shape of run; and indexes written in the plain encoding (Refrain
before 2026-12-07) opened as they are, written compact from their first rewrite or upgrade."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

from refrain.api import Refrain
from refrain.config import Config
from refrain.fingerprint import fingerprint_file
from refrain.index import IndexStore, IndexWriteParams, LandmarkIndex
from refrain.index.files import array_names, map_arrays, save_arrays
from refrain.index.landmarks import (_LAYOUT_FIELDS, SKIP, TRACK_BITS, _BucketTable, _CompactRuns, _load_segment,
                                     _Runs, unmix_codes)
from refrain.index.store import FORMAT_VERSION

SR = 22050


def _plain_twin(store: LandmarkIndex) -> LandmarkIndex:
    """The same saved segments in the plain encoding, read by the code that read them before."""
    segments = tuple(segment.plain() for segment in store._state[0])
    assert all(isinstance(segment, _Runs) for segment in segments)
    return LandmarkIndex(store.payload_bits, segments, writable=False)


def _assert_same_answers(store: LandmarkIndex, reference: LandmarkIndex, asked: np.ndarray,
                         candidate_sets: list[np.ndarray]) -> None:
    for got, want in zip(store.lookup(asked), reference.lookup(asked)):
        np.testing.assert_array_equal(got, want)  # the same hits in the same order
    for got, want in zip(store.lookup_slices(asked), reference.lookup_slices(asked)):
        np.testing.assert_array_equal(got, want)
    for tracks in candidate_sets:
        for got, want in zip(store.lookup_slices(asked, tracks), reference.lookup_slices(asked, tracks)):
            np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(store.code_counts(asked), reference.code_counts(asked))
    for budget in (0, int(reference.code_counts(asked).sum()) // 3, 1 << 40):
        for got, want in zip(store.lookup_rarest(asked, budget), reference.lookup_rarest(asked, budget)):
            np.testing.assert_array_equal(got, want)
    for got, want in zip(store.code_table(), reference.code_table()):
        np.testing.assert_array_equal(got, want)
    assert store.ntotal == reference.ntotal


def _random_store(rng, payload_bits: int, tracks: np.ndarray, distinct_codes: int) -> LandmarkIndex:
    """Tracks whose codes repeat within and across tracks (runs of every length, many skip points
    long) and whose payloads use the tier's full width."""
    store = LandmarkIndex.create(payload_bits)
    for track in tracks:
        n = int(rng.integers(1, 600))
        codes = (rng.zipf(1.3, n) % distinct_codes).astype(np.uint32)
        store.add(int(track), codes, rng.integers(0, 1 << payload_bits, n))
    return store


@pytest.mark.parametrize("payload_bits", [22, 28, 36])
@pytest.mark.parametrize("spread", ["dense", "sparse"])
def test_compact_segments_answer_exactly_as_plain_ones(tmp_path, payload_bits, spread):
    rng = np.random.default_rng(payload_bits)
    # Dense track ids (gaps of a few bits) or ids spread up to the largest a store takes (escapes).
    tracks = (np.arange(1, 160) if spread == "dense"
              else np.sort(rng.choice(1 << TRACK_BITS, 160, replace=False)))
    store = _random_store(rng, payload_bits, tracks[:100], distinct_codes=3000)
    store.save(tmp_path / "main.npz")
    for part, first in enumerate(range(100, 160, 20)):
        for track in tracks[first:first + 20]:
            n = int(rng.integers(1, 400))
            store.add(int(track), (rng.zipf(1.3, n) % 3000).astype(np.uint32), rng.integers(0, 1 << payload_bits, n))
        assert store.save_delta(tmp_path / f"delta{part}.npz")
    assert store.segment_encodings() == ["compact"] * 4
    assert max(np.diff(np.asarray(store._state[0][0].starts, np.int64))) > 8 * SKIP  # runs over many skip points
    asked = np.concatenate([rng.integers(0, 3000, 4000).astype(np.uint32), np.arange(5000, 5020, dtype=np.uint32)])
    candidate_sets = [tracks[[0]], tracks[-1:], tracks[::7], tracks[40:140:3], np.sort(rng.choice(tracks, 32)),
                      np.unique(np.concatenate([tracks[::11], tracks[::11] + 1])), np.array([], np.int64)]
    candidate_sets = [np.unique(c) for c in candidate_sets]
    for mmap in (False, True):
        loaded = LandmarkIndex.load(tmp_path / "main.npz", payload_bits, mmap=mmap,
                                    deltas=tuple(tmp_path / f"delta{part}.npz" for part in range(3)))
        _assert_same_answers(loaded, _plain_twin(loaded), asked, candidate_sets)
    # The entries decode back to the very ids they were encoded from.
    for segment in store._state[0]:
        np.testing.assert_array_equal(segment.rows(), segment.plain().rows())
    merged = LandmarkIndex.load(tmp_path / "main.npz", payload_bits,
                                deltas=tuple(tmp_path / f"delta{part}.npz" for part in range(3)))
    merged.save(tmp_path / "merged.npz")
    _assert_same_answers(LandmarkIndex.load(tmp_path / "merged.npz", payload_bits, mmap=True), _plain_twin(loaded),
                         asked, candidate_sets)


def test_tracks_added_out_of_order_and_edge_widths_still_decode(tmp_path):
    # Track ids added in decreasing order (negative gaps: written as escapes), payloads all 0
    # (a 0-bit payload field), one entry, an empty store.
    store = LandmarkIndex.create(payload_bits=22)
    for track in (900, 40, 7, (1 << TRACK_BITS) - 1, 0):
        store.add(track, np.array([5, 5, 9, track % 3], np.uint32), np.zeros(4, np.int64))
    store.save(tmp_path / "l.npz")
    loaded = LandmarkIndex.load(tmp_path / "l.npz", 22, mmap=True)
    [segment] = loaded._state[0]
    assert isinstance(segment, _CompactRuns) and segment.value_bits == 0
    asked = np.array([5, 9, 0, 1, 2, 3], np.uint32)
    for got, want in zip(loaded.lookup(asked), _plain_twin(loaded).lookup(asked)):
        np.testing.assert_array_equal(got, want)
    assert loaded.lookup(np.array([5], np.uint32))[1].tolist() == [900, 900, 40, 40, 7, 7, (1 << TRACK_BITS) - 1,
                                                                    (1 << TRACK_BITS) - 1, 0, 0]
    one = LandmarkIndex.create(payload_bits=36)
    one.add(3, np.array([1], np.uint32), np.array([(1 << 36) - 1]))
    one.save(tmp_path / "one.npz")
    assert LandmarkIndex.load(tmp_path / "one.npz", 36).lookup(np.array([1], np.uint32))[2].tolist() == [(1 << 36) - 1]
    LandmarkIndex.create(payload_bits=22).save(tmp_path / "empty.npz")
    empty = LandmarkIndex.load(tmp_path / "empty.npz", 22, mmap=True)
    assert empty.ntotal == 0 and empty.lookup_slices(asked, np.array([3]))[1].tolist() == [0] * 6


def test_a_damaged_or_mismatched_compact_file_is_refused(tmp_path):
    store = LandmarkIndex.create(payload_bits=22)
    store.add(1, np.arange(100, dtype=np.uint32), np.arange(100))
    store.save(tmp_path / "l.npz")
    with pytest.raises(ValueError, match="inconsistent landmark store"):
        LandmarkIndex.load(tmp_path / "l.npz", 6)  # payloads wider than the tier says
    (tmp_path / "junk.npz").write_bytes(b"not an archive")
    with pytest.raises(ValueError, match="unreadable"):
        LandmarkIndex.load(tmp_path / "junk.npz", 22)


def test_the_compact_encoding_costs_what_its_widths_say(tmp_path):
    # 2,000 tracks, every 3rd id, 200 entries each under 4,000 codes: gaps of a few bits, frames
    # of 13 bits. The stream holds each entry's gap field and payload, plus the track of each
    # escape; about 3 bytes an entry where the plain ids took 6.
    rng = np.random.default_rng(3)
    store = LandmarkIndex.create(payload_bits=22)
    for track in range(3, 6003, 3):
        store.add(track, rng.integers(0, 4000, 200).astype(np.uint32), rng.integers(0, 1 << 13, 200))
    store.save(tmp_path / "l.npz")
    [segment] = LandmarkIndex.load(tmp_path / "l.npz", 22)._state[0]
    assert (segment.value_bits, segment.track_bits) == (13, 13)
    plain = segment.plain()
    ids = plain.rows()
    tracks = (np.pad(ids, ((0, 0), (0, 2))).view("<u8").ravel().astype(np.int64)) >> 22
    first = np.zeros(len(tracks), bool)
    first[np.asarray(plain.starts[:-1], np.int64)] = True
    gaps = np.where(first, tracks, np.diff(tracks, prepend=0))
    escapes = int(np.count_nonzero(gaps >= (1 << segment.gap_bits) - 1))
    expected_bits = len(tracks) * (segment.gap_bits + 13) + escapes * 13
    assert segment.stream.nbytes == (expected_bits // 64 + 2) * 8
    assert segment.nbytes < 0.55 * plain.nbytes


def test_peak_frames_are_stored_as_steps_and_frame_files_still_read(tmp_path):
    from refrain.index.peaks import PeakStore
    rng = np.random.default_rng(4)
    tracks = {t: np.sort(rng.integers(0, 60_000, int(rng.integers(1, 500)))) for t in (2, 5, 9)}
    store = PeakStore.create()
    for track, frames in tracks.items():
        store.add(track, frames, frames % 256)
    store.save(tmp_path / "steps.npz")
    assert np.load(tmp_path / "steps.npz")["frames"].dtype == np.uint16
    # A track with 35 minutes without a peak: that file keeps the frames themselves.
    store.add(11, np.array([3, 70_000, 200_000]), np.array([1, 2, 3]))
    store.save(tmp_path / "frames.npz")
    assert np.load(tmp_path / "frames.npz")["frames"].dtype == np.int32
    # A file as the Refrain before wrote every peak file: frames (int32), not steps.
    save_arrays(tmp_path / "old.npz", {"track_ids": np.array(sorted(tracks), np.int64),
                                       "starts": np.cumsum([0] + [len(f) for f in tracks.values()]).astype(np.int64),
                                       "frames": np.concatenate(list(tracks.values())).astype(np.int32),
                                       "bins": (np.concatenate(list(tracks.values())) % 256).astype(np.uint8)})
    for name in ("steps.npz", "frames.npz", "old.npz"):
        loaded = PeakStore.load(tmp_path / name)
        for track, frames in tracks.items():
            got_frames, got_bins = loaded.peaks_between(track, 1_000, 50_000)
            kept = (frames >= 1_000) & (frames < 50_000)
            assert got_frames.dtype == np.int32
            np.testing.assert_array_equal(got_frames, frames[kept])
            np.testing.assert_array_equal(got_bins, frames[kept] % 256)
    assert PeakStore.load(tmp_path / "frames.npz").peaks_between(11, 0, 1 << 30)[0].tolist() == [3, 70_000, 200_000]


# -- indexes written before the compact encoding ------------------------------------------------


def _as_plain_index(directory) -> None:
    """Rewrite an index's landmark files as Refrain wrote them before the compact encoding
    (``codes``, ``starts`` and ``ids`` in id_bytes-wide rows), with that Refrain's manifest format."""
    manifest = json.loads((directory / "manifest.json").read_text())
    for entry in manifest["tiers"].values():
        if "payload_bits" not in entry:
            continue
        for name in (entry["file"], *entry.get("deltas", [])):
            segment = _load_segment(directory / name, entry["payload_bits"]).plain()
            starts = np.asarray(segment.starts, np.int64)
            save_arrays(directory / name, {"codes": segment.codes, "starts": starts.astype(np.uint32),
                                           "ids": segment.rows().reshape(-1)})
    manifest["format"] = 3 if any("deltas" in entry for entry in manifest["tiers"].values()) else 2
    (directory / "manifest.json").write_text(json.dumps(manifest))


_LANDMARK_TIERS = ("pair", "triplet", "quad", "double")


def _answers(directory, queries, codes, mmap=True):
    with Refrain.open(directory, mmap=mmap) as refrain:
        tiers = refrain.store.tiers
        lookups = [a.tolist() for name in _LANDMARK_TIERS for a in tiers[name].lookup_slices(codes)]
        restricted = [a.tolist() for name in _LANDMARK_TIERS
                      for a in tiers[name].lookup_slices(codes, np.array([1, 3, 4]))]
        return lookups, restricted, [refrain.match_file(query).matches for query in queries]


def _encodings(directory) -> dict[str, list[str]]:
    manifest = json.loads((directory / "manifest.json").read_text())
    return {name: ["compact" if "stream" in array_names(directory / file) else "plain"
                   for file in (manifest["tiers"][name]["file"], *manifest["tiers"][name].get("deltas", []))]
            for name in _LANDMARK_TIERS}


@pytest.fixture
def queries_and_codes(songs, write_audio, tmp_path):
    queries = []
    for seed, start in ((30, 3.0), (41, 20.0), (44, 12.5)):
        i = int(start * SR)
        queries.append(write_audio(tmp_path / f"q{seed}.wav", songs[seed].samples[i:i + int(10 * SR)]))
    codes = np.concatenate([fingerprint_file(songs[seed].path, Config().fingerprint).hashes for seed in (30, 44)])
    return queries, codes


def test_an_index_in_the_plain_encoding_opens_as_it_is_and_upgrades_in_place(
        index_copy, catalogue_index, queries_and_codes):
    queries, codes = queries_and_codes
    expected = _answers(catalogue_index.directory, queries, codes)
    assert all(expected[2])
    _as_plain_index(index_copy)
    assert set(sum(_encodings(index_copy).values(), [])) == {"plain"}
    for mmap in (True, False):
        assert _answers(index_copy, queries, codes, mmap) == expected
    with Refrain.open(index_copy, mmap=True) as reader:
        assert reader.info().upgradable == list(_LANDMARK_TIERS)
    plain_bytes = {name: (index_copy / name).stat().st_size for name in ("pairs.npz", "triplets.npz")}
    with Refrain.open(index_copy, writable=True) as writer:
        assert writer.upgrade_index() == list(_LANDMARK_TIERS) and writer.upgrade_index() == []
    manifest = json.loads((index_copy / "manifest.json").read_text())
    assert manifest["format"] == FORMAT_VERSION
    assert set(sum(_encodings(index_copy).values(), [])) == {"compact"}
    assert not (index_copy / "pairs.npz").exists()  # replaced, then deleted
    compact_bytes = {name: (index_copy / manifest["tiers"][tier]["file"]).stat().st_size
                     for name, tier in (("pairs.npz", "pair"), ("triplets.npz", "triplet"))}
    assert all(compact_bytes[name] < plain_bytes[name] for name in plain_bytes)
    assert _answers(index_copy, queries, codes) == expected
    with Refrain.open(index_copy, mmap=True) as reader:
        assert reader.info().upgradable == []


# Every commit a delta segment beside the main file, never merged into it.
_DELTAS_ONLY = replace(Config(), index_writes=IndexWriteParams(whole_below_bytes=0, merge_share=float("inf")))


def _answers_with_newcomer(catalogue_index, newcomer, tmp_path, queries, codes):
    """The answers of a current-layout copy of the catalogue index once ``newcomer`` is added to it."""
    shutil.copytree(catalogue_index.directory, tmp_path / "reference", ignore=shutil.ignore_patterns(".lock"))
    with Refrain.open(tmp_path / "reference", writable=True) as refrain:
        assert [r.status for r in refrain.ingest([newcomer])] == ["added"]
    return _answers(tmp_path / "reference", queries, codes)


def test_a_commit_to_a_plain_index_writes_compact_deltas_beside_plain_mains(
        index_copy, catalogue_index, unrelated_songs, write_audio, queries_and_codes, tmp_path):
    queries, codes = queries_and_codes
    newcomer = write_audio(tmp_path / "newcomer.wav", next(iter(unrelated_songs.values())))
    expected = _answers_with_newcomer(catalogue_index, newcomer, tmp_path, queries, codes)

    _as_plain_index(index_copy)
    with Refrain.open(index_copy, writable=True, config=_DELTAS_ONLY) as refrain:
        assert [r.status for r in refrain.ingest([newcomer])] == ["added"]
    assert _encodings(index_copy) == {name: ["plain", "compact"] for name in _LANDMARK_TIERS}
    assert json.loads((index_copy / "manifest.json").read_text())["format"] == FORMAT_VERSION
    assert _answers(index_copy, queries, codes) == expected
    assert _answers(index_copy, queries, codes, mmap=False) == expected

    with IndexStore.open(index_copy, writable=True) as store:  # the merge into main: compact
        assert set(store.merge()) >= set(_LANDMARK_TIERS)
    assert _encodings(index_copy) == {name: ["compact"] for name in _LANDMARK_TIERS}
    assert _answers(index_copy, queries, codes) == expected


def test_a_takedown_in_a_plain_index_rewrites_it_compact(index_copy, catalogue_index, queries_and_codes, tmp_path):
    queries, codes = queries_and_codes
    victim = catalogue_index.track_ids[41]
    shutil.copytree(catalogue_index.directory, tmp_path / "reference", ignore=shutil.ignore_patterns(".lock"))
    with IndexStore.open(tmp_path / "reference", writable=True) as store:
        store.remove_track(victim)
    expected = _answers(tmp_path / "reference", queries, codes)
    _as_plain_index(index_copy)
    with IndexStore.open(index_copy, writable=True) as store:
        store.remove_track(victim)
    assert set(sum(_encodings(index_copy).values(), [])) == {"compact"}
    assert _answers(index_copy, queries, codes) == expected
    with IndexStore.open(index_copy, mmap=True) as store:
        for name in _LANDMARK_TIERS:
            assert victim not in store.tiers[name].lookup(codes)[1]


def test_a_track_reads_back_its_entries_from_main_and_deltas(tmp_path):
    rng = np.random.default_rng(9)
    store = _random_store(rng, 28, np.arange(1, 30), distinct_codes=500)
    store.save(tmp_path / "main.npz")
    added = (rng.integers(0, 500, 300).astype(np.uint32), rng.integers(0, 1 << 28, 300))
    store.add(40, *added)
    assert store.save_delta(tmp_path / "delta.npz")
    loaded = LandmarkIndex.load(tmp_path / "main.npz", 28, mmap=True, deltas=(tmp_path / "delta.npz",))
    codes, payloads = loaded.track_entries(40)
    order = np.argsort(added[0], kind="stable")  # filed by (mixed) code, each code's in the order added
    assert sorted(zip(codes.tolist(), payloads.tolist())) == sorted(zip(added[0].tolist(), added[1].tolist()))
    assert len(codes) == len(order)
    copy = LandmarkIndex.create(28)
    for track in range(1, 30):
        copy.add(track, *loaded.track_entries(track))
    copy.add(40, codes, payloads)
    asked = rng.integers(0, 520, 800).astype(np.uint32)
    for got, want in zip(copy.lookup(asked), loaded.lookup(asked)):
        np.testing.assert_array_equal(got, want)


# -- the bucketed code table (compact layout version 2) and the version-1 table before it ---------


def _as_version_1(path, payload_bits: int) -> None:
    """Rewrite a compact segment file with the version-1 code table, as the Refrain before it wrote
    every compact file (sorted codes, uint32 run starts, uint16 run bits; the same stream)."""
    segment = _CompactRuns.load(path, payload_bits)
    layout = map_arrays(path, ("layout",))["layout"][:8].copy()
    layout[0] = 1
    codes, starts = segment.codes, segment.starts
    _, _, positions = segment.find(codes)
    run_bits = positions - segment.skip_bits[starts[:-1] // SKIP].astype(np.int64)
    assert len(run_bits) == 0 or run_bits.max() < 1 << 16
    save_arrays(path, {"layout": layout, "codes": codes,
                       "starts": starts.astype(np.uint32) if starts[-1] < 1 << 32 else starts,
                       "run_bits": run_bits.astype(np.uint16), "skip_bits": segment.skip_bits,
                       "skip_tracks": segment.skip_tracks, "stream": segment.stream})


def _code_sets(name: str, rng) -> list[tuple[int, np.ndarray]]:
    """(track, stored codes of its entries) of an adversarial segment."""
    if name == "empty":
        return []
    if name == "one code":
        return [(7, np.array([0x9E3779B9], np.uint32))]
    if name == "extreme codes":  # the first and the last bucket, the table's two ends
        extremes = np.array([0, 1, 1 << 31, (1 << 32) - 2, (1 << 32) - 1], np.uint32)
        others = rng.integers(0, 1 << 32, 3000, dtype=np.uint64).astype(np.uint32)
        return [(int(track), np.concatenate([extremes[rng.random(5) < 0.7], rng.choice(others, 100)]))
                for track in range(1, 30)]
    if name == "one bucket":  # every code under the same top 12 bits: wide bucket offsets, long scans
        codes = (0xABC00000 + rng.choice(1 << 20, 3000, replace=False)).astype(np.uint32)
        return [(int(track), rng.choice(codes, 200)) for track in range(1, 40)]
    if name == "long runs":  # lengths around each width (15, 16, 255, 256, 65536+), escapes by the thousand
        tracks = np.sort(rng.choice(1 << TRACK_BITS, 70, replace=False))
        sets = [(int(tracks[0]), np.full(70_000, 5, np.uint32))]
        for track in tracks[1:]:
            sets.append((int(track), np.concatenate([np.full(n, code, np.uint32) for code, n in
                                                     ((11, 1), (12, 15 * (track % 2)), (13, 16), (14, 255),
                                                      (15, 256))])))
        return sets
    # Proposal-tier-like: many codes, most runs of 1-3 entries, sparse and dense tracks.
    codes = rng.integers(0, 1 << 32, 60_000, dtype=np.uint64).astype(np.uint32)
    return [(int(track), rng.choice(codes, int(rng.integers(50, 1500)))) for track in
            np.unique(rng.integers(1, 1 << 20, 150))]


@pytest.mark.parametrize("name", ["empty", "one code", "extreme codes", "one bucket", "long runs", "random"])
def test_the_bucketed_code_table_answers_as_the_plain_layout_and_the_version_1_table(tmp_path, name):
    rng = np.random.default_rng(len(name))
    sets = _code_sets(name, rng)
    store = LandmarkIndex.create(payload_bits=22)
    for track, stored in sets:
        store.add(track, unmix_codes(stored), rng.integers(0, 1 << 22, len(stored)))
    store.save(tmp_path / "new.npz")
    shutil.copy(tmp_path / "new.npz", tmp_path / "old.npz")
    _as_version_1(tmp_path / "old.npz", 22)
    new, old = (LandmarkIndex.load(tmp_path / f"{version}.npz", 22, mmap=True) for version in ("new", "old"))
    assert new.segment_encodings() == ["compact"] and old.segment_encodings() == ["compact-v1"]
    [segment] = new._state[0]
    table = segment.table
    assert isinstance(table, _BucketTable)
    assert {"extreme codes": table.bucket_bits > 0, "one bucket": table.bucket_offsets.dtype == np.uint16,
            "long runs": table.long_lengths.dtype == np.uint32,
            "random": table.group_bits > 0 and segment.gap_bits == 0}.get(name, True)  # the shape each case is for
    present = np.unique(np.concatenate([stored for _, stored in sets] or [np.zeros(0, np.uint32)]))
    # Present codes, their neighbours (mostly absent, in the same buckets), the two ends, random codes.
    asked_stored = np.concatenate([present, present + np.uint32(1), present - np.uint32(1),
                                   np.array([0, (1 << 32) - 1], np.uint32),
                                   rng.integers(0, 1 << 32, 500, dtype=np.uint64).astype(np.uint32)])
    asked = unmix_codes(rng.permutation(asked_stored))
    tracks = np.array(sorted({track for track, _ in sets}), np.int64)
    candidate_sets = [tracks[:1], tracks[-1:], tracks[::5], tracks + 1, np.array([], np.int64)]
    reference = _plain_twin(new)
    for store_read in (new, old, LandmarkIndex.load(tmp_path / "new.npz", 22)):
        _assert_same_answers(store_read, reference, asked, candidate_sets)
    # The table decodes to the codes and run starts of the plain layout; every found run is where
    # the version-1 table puts it (same entry, length and bit), and absent codes have no entries.
    [plain], [legacy] = reference._state[0], old._state[0]
    np.testing.assert_array_equal(segment.codes, plain.codes)
    np.testing.assert_array_equal(segment.starts, plain.starts)
    found, legacy_found = segment.find(asked_stored), legacy.find(asked_stored)
    held = legacy_found[1] > 0
    for got, want in zip(found, legacy_found):
        np.testing.assert_array_equal(got[held], want[held])
    assert not found[1][~held].any()
    np.testing.assert_array_equal(segment.rows(), plain.rows())
    # A version-1 file is rewritten with the bucketed table: exactly the file written from plain entries.
    old.save(tmp_path / "upgraded.npz")
    names = tuple(sorted(array_names(tmp_path / "new.npz")))
    assert names == tuple(sorted(array_names(tmp_path / "upgraded.npz")))
    for array_name, array in map_arrays(tmp_path / "new.npz", names).items():
        rewritten = map_arrays(tmp_path / "upgraded.npz", names)[array_name]
        assert array.dtype == rewritten.dtype and np.array_equal(array, rewritten), array_name


def test_the_bucketed_code_table_of_a_proposal_tier_takes_under_4_bytes_a_code(tmp_path):
    # Runs of 1-3 entries mostly, as in the quad and double tiers: the version-1 table took 10 bytes a code.
    rng = np.random.default_rng(16)
    store = LandmarkIndex.create(payload_bits=22)
    codes = rng.integers(0, 1 << 32, 400_000, dtype=np.uint64).astype(np.uint32)
    for track in range(1, 400):
        store.add(track, rng.choice(codes, 1500), rng.integers(0, 1 << 14, 1500))
    store.save(tmp_path / "l.npz")
    [segment] = LandmarkIndex.load(tmp_path / "l.npz", 22)._state[0]
    table = segment.table
    assert isinstance(table, _BucketTable)
    assert segment.distinct / (1 << table.bucket_bits) <= 8  # a few codes a bucket: no search
    assert table.nbytes / segment.distinct < 4


def test_a_damaged_bucketed_table_is_refused(tmp_path):
    store = LandmarkIndex.create(payload_bits=22)
    store.add(1, np.arange(1000, dtype=np.uint32), np.arange(1000))
    store.save(tmp_path / "l.npz")
    arrays = map_arrays(tmp_path / "l.npz", tuple(array_names(tmp_path / "l.npz")))
    for name, damaged in (("runs", arrays["runs"][:-1]), ("group_codes", arrays["group_codes"][1:]),
                          ("layout", arrays["layout"][:8])):
        save_arrays(tmp_path / "damaged.npz", {**arrays, name: damaged})
        with pytest.raises(ValueError, match="inconsistent landmark store"):
            LandmarkIndex.load(tmp_path / "damaged.npz", 22)
    assert _LAYOUT_FIELDS[8:] == ("bucket_bits", "group_bits")


def _as_version_1_index(directory) -> None:
    """Rewrite an index's landmark files with the version-1 code table and the manifest format of the
    Refrain that wrote them (4)."""
    manifest = json.loads((directory / "manifest.json").read_text())
    for entry in manifest["tiers"].values():
        if "payload_bits" in entry:
            for name in (entry["file"], *entry.get("deltas", [])):
                _as_version_1(directory / name, entry["payload_bits"])
    manifest["format"] = 4
    (directory / "manifest.json").write_text(json.dumps(manifest))


def test_an_index_with_version_1_tables_opens_as_it_is_and_upgrades_in_place(
        index_copy, catalogue_index, queries_and_codes):
    queries, codes = queries_and_codes
    expected = _answers(catalogue_index.directory, queries, codes)
    _as_version_1_index(index_copy)
    with Refrain.open(index_copy, mmap=True) as reader:
        assert {name: reader.store.tiers[name].segment_encodings() for name in _LANDMARK_TIERS} == {
            name: ["compact-v1"] for name in _LANDMARK_TIERS}
        assert reader.info().upgradable == list(_LANDMARK_TIERS)
    for mmap in (True, False):
        assert _answers(index_copy, queries, codes, mmap) == expected
    version_1_bytes = {name: (index_copy / name).stat().st_size for name in ("quads.npz", "doubles.npz")}
    with Refrain.open(index_copy, writable=True) as writer:
        assert writer.upgrade_index() == list(_LANDMARK_TIERS) and writer.upgrade_index() == []
    manifest = json.loads((index_copy / "manifest.json").read_text())
    assert manifest["format"] == FORMAT_VERSION
    with Refrain.open(index_copy, mmap=True) as reader:
        assert all(reader.store.tiers[name].segment_encodings() == ["compact"] for name in _LANDMARK_TIERS)
        assert reader.info().upgradable == []
    upgraded_bytes = {name: (index_copy / manifest["tiers"][tier]["file"]).stat().st_size
                      for name, tier in (("quads.npz", "quad"), ("doubles.npz", "double"))}
    assert all(upgraded_bytes[name] < version_1_bytes[name] for name in version_1_bytes)
    assert _answers(index_copy, queries, codes) == expected


def test_a_commit_to_an_index_with_version_1_tables_writes_deltas_beside_them(
        index_copy, catalogue_index, unrelated_songs, write_audio, queries_and_codes, tmp_path):
    queries, codes = queries_and_codes
    newcomer = write_audio(tmp_path / "newcomer.wav", next(iter(unrelated_songs.values())))
    expected = _answers_with_newcomer(catalogue_index, newcomer, tmp_path, queries, codes)
    _as_version_1_index(index_copy)
    with Refrain.open(index_copy, writable=True, config=_DELTAS_ONLY) as refrain:
        assert [r.status for r in refrain.ingest([newcomer])] == ["added"]
        assert all(refrain.store.tiers[name].segment_encodings() == ["compact-v1", "compact"]
                   for name in _LANDMARK_TIERS)
    assert json.loads((index_copy / "manifest.json").read_text())["format"] == FORMAT_VERSION
    assert _answers(index_copy, queries, codes) == expected
    with IndexStore.open(index_copy, writable=True) as store:
        assert set(store.merge()) >= set(_LANDMARK_TIERS)
        assert all(store.tiers[name].segment_encodings() == ["compact"] for name in _LANDMARK_TIERS)
    assert _answers(index_copy, queries, codes) == expected


# -- the track-major layout (a tier searched in a few candidate tracks per query) -----------------


def _track_major_twin(store: LandmarkIndex, path) -> LandmarkIndex:
    """The same entries written as one track-major main file."""
    twin = LandmarkIndex(store.payload_bits, store._state[0], writable=True)
    twin.save(path, track_major=True)
    return LandmarkIndex.load(path, store.payload_bits, mmap=True)


@pytest.mark.parametrize("payload_bits", [22, 36])
def test_a_track_major_file_answers_exactly_as_the_code_major_one(tmp_path, payload_bits):
    rng = np.random.default_rng(payload_bits + 1)
    tracks = np.arange(1, 140)
    store = _random_store(rng, payload_bits, tracks, distinct_codes=3000)
    store.add(200, np.array([7, 7, 7, 2999, 0], np.uint32), np.array([3, 1, 2, 0, 0]))  # a code repeated in a track
    store.save(tmp_path / "code.npz")
    code_major = LandmarkIndex.load(tmp_path / "code.npz", payload_bits, mmap=True)
    track_major = _track_major_twin(code_major, tmp_path / "track.npz")
    assert track_major.segment_encodings() == ["track-major"]
    # Codes asked in any order, some twice, some stored nowhere; candidates present, absent or none.
    asked = np.concatenate([rng.integers(0, 3000, 3000).astype(np.uint32), np.array([7, 7, 5000, 0], np.uint32)])
    candidate_sets = [np.array([200]), tracks[::9], np.sort(rng.choice(tracks, 32, replace=False)),
                      np.array([3, 150, 200, 999]), np.array([], np.int64)]
    _assert_same_answers(track_major, code_major, asked, candidate_sets)
    for got, want in zip(track_major.lookup_slices(np.zeros(0, np.uint32), tracks[:3]),
                         code_major.lookup_slices(np.zeros(0, np.uint32), tracks[:3])):
        np.testing.assert_array_equal(got, want)
    # A track's entries read back from its own run (by code) are the code-major file's, and re-added
    # elsewhere they answer every lookup alike.
    moved = LandmarkIndex.create(payload_bits)
    for track in (1, 77, 200):
        got, want = track_major.track_entries(track), code_major.track_entries(track)
        assert sorted(zip(*(a.tolist() for a in got))) == sorted(zip(*(a.tolist() for a in want)))
        assert np.all(np.diff(got[0].astype(np.int64)) >= 0)
        moved.add(track, *got)
    reference = LandmarkIndex.create(payload_bits)
    for track in (1, 77, 200):
        reference.add(track, *code_major.track_entries(track))
    _assert_same_answers(moved, reference, asked, candidate_sets)
    # Back to code-major: the very file the code-major store wrote.
    LandmarkIndex(payload_bits, track_major._state[0], writable=True).save(tmp_path / "again.npz")
    for name in array_names(tmp_path / "code.npz"):
        np.testing.assert_array_equal(map_arrays(tmp_path / "again.npz", (name,))[name],
                                      map_arrays(tmp_path / "code.npz", (name,))[name])


def test_a_track_major_main_takes_deltas_merges_and_takedowns(tmp_path):
    rng = np.random.default_rng(5)
    reference = _random_store(rng, 36, np.arange(1, 60), distinct_codes=800)
    reference.save(tmp_path / "reference.npz")
    store = _track_major_twin(reference, tmp_path / "main.npz")
    store = LandmarkIndex.load(tmp_path / "main.npz", 36)  # writable
    asked = rng.integers(0, 820, 1500).astype(np.uint32)
    candidates = [np.array([3, 60, 61]), np.arange(1, 62, 4)]
    for track in (60, 61):
        codes, payloads = rng.integers(0, 820, 300).astype(np.uint32), rng.integers(0, 1 << 36, 300)
        store.add(track, codes, payloads)
        reference.add(track, codes, payloads)
    assert store.save_delta(tmp_path / "delta.npz")
    assert store.segment_encodings() == ["track-major", "compact"]
    _assert_same_answers(store, reference, asked, candidates)
    for track in (62, 63):  # and a track-major delta after it
        codes, payloads = rng.integers(0, 820, 300).astype(np.uint32), rng.integers(0, 1 << 36, 300)
        store.add(track, codes, payloads)
        reference.add(track, codes, payloads)
    assert store.save_delta(tmp_path / "delta2.npz", track_major=True)
    assert store.segment_encodings() == ["track-major", "compact", "track-major"]
    candidates.append(np.array([3, 61, 62, 63]))
    _assert_same_answers(store, reference, asked, candidates)
    store.adopt_merged(store.write_merged(0, 3, tmp_path / "merged.npz", track_major=True), tmp_path / "merged.npz")
    assert store.segment_encodings() == ["track-major"]
    _assert_same_answers(store, reference, asked, candidates)
    assert store.remove(3) == reference.remove(3) > 0 and store.needs_rewrite
    _assert_same_answers(store, reference, asked, candidates)
    store.save(tmp_path / "after.npz", track_major=True)
    _assert_same_answers(LandmarkIndex.load(tmp_path / "after.npz", 36, mmap=True), reference, asked, candidates)
    assert 3 not in LandmarkIndex.load(tmp_path / "after.npz", 36).lookup(asked)[1]


def test_a_damaged_track_major_file_or_an_unfit_store_is_refused(tmp_path):
    store = LandmarkIndex.create(payload_bits=22)
    store.add(1, np.arange(100, dtype=np.uint32), np.arange(100))
    store.save(tmp_path / "t.npz", track_major=True)
    arrays = {name: np.array(map_arrays(tmp_path / "t.npz", (name,))[name])
              for name in array_names(tmp_path / "t.npz")}
    save_arrays(tmp_path / "t.npz", {**arrays, "code_counts": arrays["code_counts"] * 2})
    with pytest.raises(ValueError, match="inconsistent landmark store"):
        LandmarkIndex.load(tmp_path / "t.npz", 22)
    wide = LandmarkIndex.create(payload_bits=22)
    wide.add(1, np.array([1 << TRACK_BITS], np.uint32), np.array([0]))
    with pytest.raises(ValueError, match="codes below"):
        wide.save(tmp_path / "wide.npz", track_major=True)


# The triplet tier track-major from the first track, every commit a delta: the layout a large
# catalogue gets, on the test catalogue.
_TRACK_MAJOR = replace(Config(), index_writes=IndexWriteParams(whole_below_bytes=0, merge_share=float("inf"),
                                                               track_major_from_tracks=1))


def test_an_index_upgrades_its_triplet_tier_track_major_and_answers_as_before(
        index_copy, catalogue_index, unrelated_songs, write_audio, queries_and_codes, tmp_path):
    queries, codes = queries_and_codes
    # The matcher searches each tier in the proposed candidates, as in a catalogue of 2,000 tracks.
    bounded = replace(Config(), match=replace(Config().match, proposals=replace(Config().match.proposals,
                                                                                 min_catalogue_tracks=1)))
    with Refrain.open(catalogue_index.directory, mmap=True, config=bounded) as refrain:
        bounded_matches = [refrain.match_file(query).matches for query in queries]
    assert all(bounded_matches)
    expected = _answers(catalogue_index.directory, queries, codes)
    manifest = json.loads((index_copy / "manifest.json").read_text())
    (index_copy / "manifest.json").write_text(json.dumps({**manifest, "format": 5}))  # the format before

    with Refrain.open(index_copy, mmap=True, config=_TRACK_MAJOR) as reader:
        assert reader.info().upgradable == ["triplet"]
    with Refrain.open(index_copy, writable=True, config=_TRACK_MAJOR) as writer:
        assert writer.upgrade_index() == ["triplet"] and writer.upgrade_index() == []
    assert json.loads((index_copy / "manifest.json").read_text())["format"] == FORMAT_VERSION == 6
    with IndexStore.open(index_copy, mmap=True) as store:
        assert store.tiers["triplet"].segment_encodings() == ["track-major"]
        assert store.tiers["pair"].segment_encodings() == ["compact"]
    assert _answers(index_copy, queries, codes) == expected
    with Refrain.open(index_copy, mmap=True, config=bounded) as refrain:
        assert [refrain.match_file(query).matches for query in queries] == bounded_matches

    # A commit writes a track-major delta beside it; the merge into main is track-major again.
    newcomer = write_audio(tmp_path / "newcomer.wav", next(iter(unrelated_songs.values())))
    expected = _answers_with_newcomer(catalogue_index, newcomer, tmp_path, queries, codes)
    with Refrain.open(index_copy, writable=True, config=_TRACK_MAJOR) as refrain:
        assert [r.status for r in refrain.ingest([newcomer])] == ["added"]
    with IndexStore.open(index_copy, mmap=True) as store:
        assert store.tiers["triplet"].segment_encodings() == ["track-major", "track-major"]
        assert store.tiers["pair"].segment_encodings() == ["compact", "compact"]
    assert _answers(index_copy, queries, codes) == expected
    with Refrain.open(index_copy, mmap=True, config=_TRACK_MAJOR) as reader:
        assert reader.info().upgradable == []
    with IndexStore.open(index_copy, writable=True, writes=_TRACK_MAJOR.index_writes) as store:
        assert "triplet" in store.merge()
        assert store.tiers["triplet"].segment_encodings() == ["track-major"]
        victim = catalogue_index.track_ids[41]
        store.remove_track(victim)
        assert store.tiers["triplet"].segment_encodings() == ["track-major"]
        assert victim not in store.tiers["triplet"].lookup(codes)[1]


def test_an_index_without_proposals_keeps_its_triplet_tier_code_major(pre_mix_index):
    # No quad tier: every query searches every track, which a track-major file would answer by decoding all of it.
    with Refrain.open(pre_mix_index, writable=True, config=_TRACK_MAJOR) as writer:
        assert writer.upgrade_index() == ["pair", "triplet"]
        assert writer.store.tiers["triplet"].segment_encodings() == ["compact"]
        assert writer.info().upgradable == []

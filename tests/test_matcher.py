"""Matching through the real index: which tracks a query copies, and where."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soxr

from refrain.fingerprint import fingerprint_signal
from refrain.fingerprint.hashes import hash_triplets, query_triplets
from refrain.matcher import MatchParams, PairTier, TripletTier
from refrain.matcher.landmarks import alignment_spans
from refrain.matcher.triplet import (_NEIGHBOURS_2D, _PITCH_STRIDE, _best_neighbourhood_per_track, _cell_members,
                                     _contenders_in_vote_order, _fit_time_line, _may_hold_a_line)
from refrain.matcher.types import Alignment
from refrain.matcher.voting import (VOTE_WEIGHT_BITS, best_cells_per_track, rarity_weights, strongest_tracks,
                                    vote_order, weighted_lookup)
from refrain.api import Refrain
from refrain.config import Config
from refrain.synth import add_noise

SR = 22050
# (catalogue seed, excerpt start in s): starts off the 32 ms frame grid on purpose.
EXCERPTS = [(30, 4.37), (33, 12.01), (34, 0.0), (41, 25.5), (44, 17.23), (49, 8.6)]


def noisy(y: np.ndarray, snr_db: float, seed: int) -> np.ndarray:
    y = add_noise(y, snr_db, np.random.default_rng(seed))
    return (0.9 * y / np.max(np.abs(y))).astype(np.float32)  # fits a 16-bit file


@pytest.mark.parametrize("seed, start", EXCERPTS)
def test_noisy_excerpt_finds_its_song_and_position(catalogue, catalogue_index, songs, write_audio,
                                                   tmp_path, seed, start):
    query = write_audio(tmp_path / "query.wav", noisy(songs[seed].excerpt(start, 10.0), 10.0, seed))
    result = catalogue.match_file(query)

    assert result.duration == pytest.approx(10.0, abs=0.01)
    assert result.matches, "no match for a 10 s excerpt at 10 dB SNR"
    top = result.matches[0]
    assert top.track_id == catalogue_index.track_ids[seed]
    assert top.source == str(songs[seed].path)
    # A real copy clears the threshold by far, not by luck: scores are capped per second of
    # query, so 10 s can reach at most about 10 * max_score_per_second.
    pair = catalogue.config.match.tier("pair")
    assert top.tier == "pair" and top.score >= 2 * pair.min_score
    assert max(span.score for span in top.spans) >= 0.8 * 10 * pair.max_score_per_second
    assert top.confidence == pytest.approx(1.0 - top.chance) and top.chance < 1e-4
    assert top.offset == pytest.approx(start, abs=0.1)
    # The query is the song from `start` on, all through.
    assert 0.0 <= top.query_start < 1.0
    assert 9.0 < top.query_end <= 10.0 + 0.1
    assert top.ref_start == pytest.approx(start + top.query_start, abs=1.0)
    assert top.ref_end == pytest.approx(start + top.query_end, abs=1.0)
    assert [m.track_id for m in result.matches] == [top.track_id], \
        f"other catalogue songs reported too: {result.matches[1:]}"


def test_two_songs_in_one_query_are_both_found_with_their_spans(catalogue, catalogue_index,
                                                                 songs):
    a, b = songs[44], songs[33]
    y = np.concatenate([a.excerpt(6.0, 8.0), b.excerpt(15.0, 8.0)])
    result = catalogue.match_signal(soxr.resample(y, SR, catalogue.params.sample_rate), "mashup")
    found = {m.track_id: m for m in result.matches}
    ids = catalogue_index.track_ids
    assert set(found) == {ids[44], ids[33]}, result.matches

    first, second = found[ids[44]], found[ids[33]]
    assert first.query_start == pytest.approx(0.0, abs=1.0)
    assert first.query_end == pytest.approx(8.0, abs=1.0)
    assert first.offset == pytest.approx(6.0, abs=0.1)
    assert second.query_start == pytest.approx(8.0, abs=1.0)
    assert second.query_end == pytest.approx(16.0, abs=1.0)
    assert second.offset == pytest.approx(15.0 - 8.0, abs=0.1)
    assert second.ref_start == pytest.approx(15.0, abs=1.0)


@pytest.mark.parametrize("seed", [45, 35])
def test_music_not_in_the_catalogue_matches_nothing(catalogue, unrelated_songs, write_audio,
                                                    tmp_path, seed):
    query = write_audio(tmp_path / "other.wav", unrelated_songs[seed][5 * SR:25 * SR])
    assert catalogue.match_file(query).matches == []


def test_a_derivative_search_left_without_plausible_hits_reports_nothing(catalogue_index, songs):
    # Tempo ratios no hit can have: every triplet hit is implausible, and none is left to vote.
    impossible = Config(match=MatchParams(tiers=(TripletTier(min_time_ratio=5.0, max_time_ratio=6.0),)))
    with Refrain.open(catalogue_index.directory, impossible, mmap=True) as refrain:
        assert refrain.match_signal(soxr.resample(songs[30].excerpt(4.0, 10.0), SR, 8000), "q").matches == []


def test_noise_alone_matches_nothing(catalogue):
    y = np.random.default_rng(11).standard_normal(10 * catalogue.params.sample_rate)
    assert catalogue.match_signal((0.1 * y).astype(np.float32)).matches == []


def test_removed_track_is_no_longer_reported(index_copy, catalogue_index, songs, write_audio,
                                             tmp_path):
    ids = catalogue_index.track_ids
    gone = write_audio(tmp_path / "gone.wav", songs[41].excerpt(10.0, 10.0))
    kept = write_audio(tmp_path / "kept.wav", songs[49].excerpt(10.0, 10.0))
    with Refrain.open(index_copy, writable=True) as refrain:
        assert [m.track_id for m in refrain.match_file(gone).matches][:1] == [ids[41]]
        refrain.remove(ids[41])
        # The same open index answers without the track at once ...
        assert ids[41] not in [m.track_id for m in refrain.match_file(gone).matches]
        assert [m.track_id for m in refrain.match_file(kept).matches][:1] == [ids[49]]
    # ... and so does a fresh reader.
    with Refrain.open(index_copy, mmap=True) as reader:
        assert ids[41] not in [m.track_id for m in reader.match_file(gone).matches]
        assert [m.track_id for m in reader.match_file(kept).matches][:1] == [ids[49]]


@pytest.mark.parametrize("tier", ["pair", "triplet"])
def test_code_counts_are_the_hits_each_code_gets(catalogue, songs, tier):
    # The rarity weights come from the code counts before the lookup, and the codes they
    # make too light are never looked up: exact only if every count is the hit count.
    landmarks = catalogue.store.tiers[tier]
    fp = fingerprint_signal(soxr.resample(songs[44].excerpt(2.0, 20.0), SR, catalogue.params.sample_rate),
                            catalogue.params)
    stored, _ = fp.index_entries()[tier]
    unknown = np.random.default_rng(5).integers(0, 1 << 32, 500, dtype=np.uint64).astype(np.uint32)
    codes = np.concatenate([stored, unknown])
    hits = np.bincount(landmarks.lookup(codes)[0], minlength=len(codes))
    np.testing.assert_array_equal(landmarks.code_counts(codes), hits)
    assert hits.max() > 1  # common codes are among them


def test_line_pre_screen_never_rejects_a_set_the_fit_accepts():
    # Hit sets as the triplet tier forms them: some hits on a line ref = offset + ratio * query,
    # the rest chance hits; the pre-screen may only reject sets that the fit rejects too.
    rng = np.random.default_rng(6)
    params = TripletTier()
    candidates, query_frames, ref_frames, ratios = [], [], [], []
    for on_line in list(range(0, 16)) * 12:
        n_chance = int(rng.integers(0, 40))
        true_ratio = rng.uniform(0.8, 1.25)
        query = rng.integers(0, 312, on_line + n_chance)
        ref = np.concatenate([5000 + true_ratio * query[:on_line] + rng.normal(0, 1.5, on_line),
                              rng.uniform(4000, 6000, n_chance)]).round().astype(np.int64)
        candidates.append(np.arange(len(query)) + sum(len(q) for q in query_frames))
        query_frames.append(query)
        ref_frames.append(ref)
        # Each hit's own tempo estimate is off, here all alike (up to 6 %), which spreads the
        # offsets of the line's hits over up to 20 frames: the screen's margin is tested.
        ratios.append(true_ratio * np.exp(rng.uniform(-0.06, 0.06) + rng.normal(0, 0.005, len(query))))
    query_frames, ref_frames, ratios = (np.concatenate(a) for a in (query_frames, ref_frames, ratios))
    may_hold = _may_hold_a_line(np.concatenate(candidates), np.array([len(c) for c in candidates]),
                                query_frames, ref_frames, ratios, params.min_aligned)
    fits = np.array([_fit_time_line(query_frames[c], ref_frames[c], ratios[c], np.ones(len(c)), params)
                     is not None for c in candidates])
    assert not (fits & ~may_hold).any()
    assert fits.sum() > 50 and (~may_hold).sum() > 50  # both kinds are there, and the screen acts


@pytest.mark.parametrize("track_range, cell_range", [(150, 6000), (1 << 30, 1 << 32)])
def test_vote_order_is_a_stable_sort_by_track_then_cell(track_range, cell_range):
    # Small spans take the packed sort, spans too wide to pack the argsort: same order.
    rng = np.random.default_rng(9)
    track_ids = rng.integers(0, track_range, 20_000)
    cells = rng.integers(0, cell_range, 20_000)
    track_ids[::3], cells[::3] = track_ids[1::3], cells[1::3]  # ties
    expected = np.lexsort((np.arange(20_000), cells, track_ids))
    np.testing.assert_array_equal(vote_order(track_ids, cells), expected)
    assert len(vote_order(track_ids[:0], cells[:0])) == 0


@pytest.mark.parametrize("neighbourhood", [np.arange(-2, 3),
                                           np.array([d * 256 + e for d in (-1, 0, 1) for e in (-1, 0, 1)])])
def test_best_cells_per_track_agrees_with_a_direct_count(neighbourhood):
    # The compiled neighbourhood sums against a plain dictionary count of the same votes.
    rng = np.random.default_rng(4)
    track_ids = rng.integers(0, 40, 30_000)
    cells = rng.integers(1000, 1000 + 3 * 256, 30_000)
    weights = rng.choice([0.25, 0.5, 1.0], 30_000)
    order = vote_order(track_ids, cells)
    track_ids, cells, weights = track_ids[order], cells[order], weights[order]
    per_cell: dict[tuple[int, int], float] = {}
    for track, cell, weight in zip(track_ids.tolist(), cells.tolist(), weights.tolist()):
        per_cell[track, cell] = per_cell.get((track, cell), 0.0) + weight
    summed = {(track, cell): sum(per_cell.get((track, cell + int(d)), 0.0) for d in neighbourhood)
              for track, cell in per_cell}
    best = {}
    for (track, cell), total in summed.items():
        best[track] = max(best.get(track, 0.0), total)
    min_weight = float(np.percentile(list(best.values()), 30))

    result = best_cells_per_track(track_ids, cells, weights, neighbourhood, min_weight, 12, cells_per_track=3)

    expected_tracks = sorted((track for track in best if best[track] >= min_weight), key=lambda t: (-best[t], t))[:12]
    assert [track for track, _ in result] == expected_tracks
    for track, chosen in result:
        assert summed[track, chosen[0]] == pytest.approx(best[track])
        assert all(summed[track, cell] >= min_weight for cell in chosen)
        assert all(a - b not in set(neighbourhood.tolist()) for a in chosen for b in chosen if a != b)


@pytest.mark.parametrize("neighbourhood", [np.arange(-1, 2), np.array([-5, 0, 5]),
                                           np.array([d * 256 + e for d in (-1, 0, 1) for e in (-1, 0, 1)])])
@pytest.mark.parametrize("track_range, cell_lows", [(40, [1000]), (1 << 31, [1000, (1 << 32) - 2000])])
def test_strongest_tracks_are_best_cells_per_track_of_votes_that_weigh_one(neighbourhood, track_range, cell_lows):
    # Counted with one walk per range of consecutive differences, in the proposals; the same tracks in the
    # same order (ties by track id) as the neighbourhood sums of votes of weight one. Tracks and cells too far
    # apart for compact ranks with a weight are numbered first.
    rng = np.random.default_rng(11)
    for trial in range(20):
        n = int(rng.integers(0, 4000))
        track_ids = rng.choice(rng.integers(0, track_range, 60), n)
        cells = rng.choice(cell_lows, n) + rng.integers(0, 3 * 256, n)
        min_votes, max_tracks = int(rng.integers(1, 5)), int(rng.integers(1, 50))
        order = vote_order(track_ids, cells)
        expected = [track for track, _ in best_cells_per_track(track_ids[order], cells[order], np.ones(n),
                                                               neighbourhood, min_votes, max_tracks)]
        ones = np.ones(n, np.int64)
        assert strongest_tracks(track_ids, cells, neighbourhood, min_votes, max_tracks, ones).tolist() == expected


@pytest.mark.parametrize("track_range", [40, 1 << 40])
def test_strongest_tracks_by_weight_rank_neighbourhoods_that_hold_enough_votes(track_range):
    # Weighted: a neighbourhood needs min_votes votes, and the tracks are ranked by the most weight such a
    # neighbourhood holds (ties by track id), checked against a direct count. Ids too spread for a weight in
    # their compact keys are numbered first.
    rng = np.random.default_rng(12)
    neighbourhood = np.array([-1, 0, 1])
    for trial in range(30):
        n = int(rng.integers(1, 3000))
        track_ids = rng.choice(rng.integers(0, track_range, 50), n)
        cells = 1000 + rng.integers(0, 200, n)
        weights = rng.integers(0, 1 << VOTE_WEIGHT_BITS, n)
        min_votes, max_tracks = int(rng.integers(1, 4)), int(rng.integers(1, 40))
        best = {}
        for track in np.unique(track_ids):
            own = track_ids == track
            for cell in np.unique(cells[own]):
                near = own & (np.abs(cells - cell) <= 1)
                if near.sum() >= min_votes:
                    best[int(track)] = max(best.get(int(track), -1), int(weights[near].sum()))
        expected = sorted(best, key=lambda track: (-best[track], track))[:max_tracks]
        assert strongest_tracks(track_ids, cells, neighbourhood, min_votes, max_tracks, weights).tolist() == expected


def test_stray_hits_past_a_copied_passage_do_not_stretch_its_span():
    # 5 s of dense agreement, then two chance hits at the same offset 1 s and 1.4 s later
    # (inside max_gap_seconds): the span must end with the passage, as in a mash-up.
    frame = 0.032
    query_frames = np.concatenate([np.arange(0, 156, 2), [int(6.0 / frame), int(6.4 / frame)]])
    alignment = Alignment(track_id=1, tier="pair", time_ratio=1.0, offset_frames=100.0, pitch_bins=0.0,
                          query_frames=query_frames, ref_frames=query_frames + 100,
                          query_ids=np.arange(len(query_frames)),
                          weights=np.ones(len(query_frames)))
    (span,) = alignment_spans(alignment, PairTier(), frame)
    assert span.query_start == pytest.approx(0.0) and span.query_end == pytest.approx(5.0, abs=0.1)
    assert span.ref_start == pytest.approx(100 * frame)
    assert span.aligned == len(query_frames)


def test_a_long_upload_searched_window_by_window_reports_each_work_once_across_boundaries(
        catalogue_index, catalogue, songs):
    # 6.9 s windows (216 frames, whole chroma frames: boundaries at 6.9, 13.8, 20.7, 27.6 s):
    # the 20 s copy of song 44 crosses two window boundaries, the sped-up (1.1x,
    # resampled) 15 s of song 33 after it crosses two more.
    rate = catalogue.params.sample_rate
    copy = soxr.resample(songs[44].excerpt(3.0, 20.0), SR, rate)
    sped_up = soxr.resample(songs[33].excerpt(10.0, 16.5), SR * 1.1, rate)
    y = np.concatenate([copy, sped_up]).astype(np.float32)
    windowed = Config(match=MatchParams(upload_window_seconds=6.9))
    with Refrain.open(catalogue_index.directory, windowed, mmap=True) as refrain:
        result = refrain.match_signal(y, "long")
    ids = catalogue_index.track_ids
    found = {m.track_id: m for m in result.matches}
    assert set(found) == {ids[44], ids[33]}, result.matches

    copied, derived = found[ids[44]], found[ids[33]]
    assert copied.kind == "excerpt" and len(copied.spans) == 1, copied.spans
    assert copied.query_start == pytest.approx(0.0, abs=1.0) and copied.query_end == pytest.approx(20.0, abs=1.0)
    assert copied.offset == pytest.approx(3.0, abs=0.1)
    assert derived.kind == "speed_changed" and len(derived.spans) == 1, derived.spans
    assert derived.time_ratio == pytest.approx(1.1, rel=0.01)
    assert derived.query_start == pytest.approx(20.0, abs=1.5) and derived.query_end == pytest.approx(35.0, abs=1.5)
    assert derived.ref_start == pytest.approx(10.0, abs=1.5)

    # The same upload searched whole finds the same works in the same places (but for the
    # 0.7 s of the speed-up left alone in the window before its boundary at 20.7 s).
    whole = {m.track_id: m for m in catalogue.match_signal(y, "long").matches}
    assert set(whole) == set(found)
    for track_id, match in found.items():
        assert match.query_start == pytest.approx(whole[track_id].query_start, abs=1.5)
        assert match.query_end == pytest.approx(whole[track_id].query_end, abs=1.0)


@pytest.mark.slow
def test_warm_up_compiles_the_kernels_a_query_needs(catalogue_index):
    # In a fresh interpreter, so that no earlier test has compiled them already.
    script = textwrap.dedent(f"""
        from refrain.fingerprint import hashes, peaks
        from refrain.index import landmarks
        from refrain.matcher import pair, peaks as peaks_tier, proposals, triplet, voting
        from refrain.api import Refrain
        kernels = [peaks._rank_in_sliding_window, hashes._targets_in_zone,
                   pair._count_by_track, pair._place_by_track, pair._best_per_track, pair._best_cells,
                   voting.neighbourhood_sums, triplet._plausible_hits, triplet._best_neighbourhood_per_track,
                   triplet._contenders_in_vote_order,
                   peaks_tier._meetings_of, proposals._hit_cells, landmarks._compact_track_entries]
        assert not any(kernel.signatures for kernel in kernels)
        with Refrain.open({str(catalogue_index.directory)!r}) as refrain:
            refrain.warm_up()
        print([len(kernel.signatures) for kernel in kernels])
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert all(count > 0 for count in json.loads(done.stdout.strip()))


def test_the_time_line_fit_follows_a_whole_track_from_a_rough_first_ratio():
    # Hits of a 1.1x speed-up along 3 minutes whose own tempo estimates lean to 1.08 (a
    # cell's median): the first inliers hold only the start, where that ratio stays
    # within reach; the fit must reach the whole line, not stop at the first stretch.
    rng = np.random.default_rng(3)
    query_frames = np.sort(rng.choice(5600, size=900, replace=False))
    ref_frames = np.round(40 + 1.1 * query_frames + rng.integers(-2, 3, len(query_frames))).astype(np.int64)
    ratios = rng.normal(1.08, 0.01, len(query_frames))
    offset, time_ratio, inliers = _fit_time_line(query_frames, ref_frames, ratios, np.ones(len(query_frames)),
                                                 TripletTier())
    assert time_ratio == pytest.approx(1.1, rel=1e-3) and offset == pytest.approx(40, abs=2)
    assert inliers.mean() > 0.99


def test_track_ranking_is_the_same_on_dense_grids_and_on_track_buckets():
    # Both ways of laying the votes out give each track's heaviest 3 x 3 neighbourhood,
    # to the last bit, as best_cells_per_track sums it.
    rng = np.random.default_rng(5)
    count = 20_000
    track_ids = rng.choice([0, 3, 4, 9, 40], size=count).astype(np.int64)
    cells = ((128 + rng.integers(-9, 10, count)) * _PITCH_STRIDE + 128 + rng.integers(-14, 15, count)).astype(np.int64)
    weights = rng.uniform(0.05, 1.0, count)
    dense = _best_neighbourhood_per_track(track_ids, cells, weights)
    bucketed = _best_neighbourhood_per_track(track_ids, cells, weights, 0)
    assert dense[0].tolist() == bucketed[0].tolist() == [0, 3, 4, 9, 40]
    assert dense[1].tolist() == bucketed[1].tolist()
    order = vote_order(track_ids, cells)
    ranked = best_cells_per_track(track_ids[order], cells[order], weights[order], _NEIGHBOURS_2D, 0.0, 5)
    heaviest = dict(zip(dense[0].tolist(), dense[1].tolist()))
    for track, (cell,) in ranked:
        in_reach = (track_ids == track) & (np.abs(cells // _PITCH_STRIDE - cell // _PITCH_STRIDE) <= 1) \
            & (np.abs(cells % _PITCH_STRIDE - cell % _PITCH_STRIDE) <= 1)
        assert heaviest[track] == pytest.approx(weights[in_reach].sum(), rel=1e-12)


def test_a_code_asked_twice_gets_the_hits_and_weight_of_one_lookup(catalogue, songs):
    # A query's triplets under several tempo hypotheses share codes; each distinct code
    # is looked up once and its slice shared, and every code gets the weight and the hits
    # a plain lookup of the codes in their own order gives it.
    fpp, params = catalogue.params, TripletTier()
    query = fingerprint_signal(soxr.resample(songs[44].excerpt(3.0, 12.0), SR, fpp.sample_rate), fpp)
    triplets = query_triplets(query.peaks, fpp.triplet_near_zone, fpp.triplet_far_zone, fpp.triplet_per_zone,
                              fpp.triplet_df_max, params.tempo_hypotheses)
    codes, _ = hash_triplets(triplets, tolerant=True, pitch_reach_bins=params.max_pitch_shift_semitones
                             * fpp.bins_per_octave / 12)
    assert len(np.unique(codes)) < len(codes)
    tier = catalogue.store.tiers["triplet"]
    code_ids, weights, first_hit, hits_per_code, labels = weighted_lookup(tier, codes, params, None)
    every_weight = rarity_weights(tier.code_counts(codes), tier.ntotal, params)
    assert code_ids.tolist() == np.flatnonzero(every_weight >= params.min_hash_weight).tolist()
    np.testing.assert_array_equal(weights, every_weight[code_ids])
    plain_first, plain_hits, plain_labels = tier.lookup_slices(codes[code_ids])
    assert hits_per_code.tolist() == plain_hits.tolist() and hits_per_code.sum() > 0
    for first, plain, count in zip(first_hit, plain_first, hits_per_code):
        assert labels[first:first + count].tolist() == plain_labels[plain:plain + count].tolist()
    assert len(labels) < len(plain_labels)


def test_the_strongest_tracks_hits_come_in_vote_order_with_their_geometry():
    # The counting sort keeps the hits of the kept tracks in vote_order's order (track,
    # then cell, ties as given), each with the weight and geometry its lookup gave.
    rng = np.random.default_rng(11)
    count, payload_bits, n_codes, n_rows = 5_000, 36, 300, 120
    track_ids = rng.choice([2, 5, 6, 17], size=count).astype(np.int64)
    cells = ((128 + rng.integers(-6, 7, count)) * _PITCH_STRIDE + 128 + rng.integers(-9, 10, count)).astype(np.int64)
    hit_codes = rng.integers(0, n_codes, count).astype(np.int64)
    frames, bins, spans = rng.integers(0, 1 << 20, count), rng.integers(0, 256, count), rng.integers(1, 64, count)
    labels = (track_ids << payload_bits) | (frames << 14) | (bins << 6) | spans
    hit_positions = rng.permutation(count).astype(np.int64)
    labels = labels[np.argsort(hit_positions)]
    code_weights, code_rows = rng.uniform(0.1, 1.0, n_codes), rng.integers(0, n_rows, n_codes).astype(np.int64)
    dt_13, anchor_positions = rng.integers(1, 50, n_rows).astype(np.int64), rng.uniform(0, 200, n_rows)
    ratios = np.arange(64)[None, :] / np.arange(1, 50)[:, None]
    found = _contenders_in_vote_order(track_ids, cells, hit_codes, hit_positions, code_weights,
                                      np.array([17, 5]), labels, payload_bits, code_rows, dt_13, anchor_positions,
                                      ratios)
    kept = np.flatnonzero(np.isin(track_ids, [5, 17]))
    order = kept[vote_order(track_ids[kept], cells[kept])]
    rows = code_rows[hit_codes[order]]
    expected = (track_ids[order], cells[order], code_weights[hit_codes[order]], ratios[dt_13[rows] - 1, spans[order]],
                anchor_positions[rows] - bins[order], rows, frames[order])
    for got, wanted in zip(found, expected):
        np.testing.assert_array_equal(got, wanted)


def test_a_candidate_cells_members_are_the_active_hits_within_one_cell_of_it():
    rng = np.random.default_rng(4)
    track_ids = np.sort(rng.choice([1, 3, 8], size=6_000)).astype(np.int64)
    cells = ((128 + rng.integers(-5, 6, 6_000)) * _PITCH_STRIDE + 128 + rng.integers(-7, 8, 6_000)).astype(np.int64)
    order = vote_order(track_ids, cells)
    track_ids, cells = track_ids[order], cells[order]
    active = rng.random(6_000) < 0.8
    tracks = np.array([3, 8])
    firsts, lasts = np.searchsorted(track_ids, tracks), np.searchsorted(track_ids, tracks + 1)
    centres = np.array([130 * _PITCH_STRIDE + 126, 128 * _PITCH_STRIDE + 128, 133 * _PITCH_STRIDE + 135,
                        124 * _PITCH_STRIDE + 121])
    members, sizes = _cell_members(firsts, lasts, active, cells, centres, np.array([3, 1]))
    expected = []
    for centre, track in zip(centres, [3, 3, 3, 8]):
        near = (track_ids == track) & active & (np.abs(cells // _PITCH_STRIDE - centre // _PITCH_STRIDE) <= 1) \
            & (np.abs(cells % _PITCH_STRIDE - centre % _PITCH_STRIDE) <= 1)
        expected.append(np.flatnonzero(near))
    assert sizes.tolist() == [len(e) for e in expected] and all(len(e) for e in expected)
    assert members.tolist() == np.concatenate(expected).tolist()


def test_line_pre_screen_sorts_only_promising_offsets_and_decides_as_a_full_sort_does():
    # The screen's answer is whether some stretch of 20 frames holds min_aligned offsets;
    # the buckets only spare it sorting the rest. A plain sort of every offset decides alike.
    rng = np.random.default_rng(9)
    min_aligned, sets = TripletTier().min_aligned, []
    for _ in range(400):
        n = int(rng.integers(1, 60))
        spread = float(rng.choice([15.0, 40.0, 400.0, 5000.0]))
        query, ratio = rng.integers(0, 2000, n), rng.uniform(0.99, 1.01, n)
        sets.append((query, (300 + query + rng.uniform(0, spread, n)).round(), ratio))
    query_frames, ref_frames, ratios = (np.concatenate(parts) for parts in zip(*sets))
    sizes = np.array([len(q) for q, _, _ in sets])
    may_hold = _may_hold_a_line(np.arange(len(query_frames)), sizes, query_frames, ref_frames.astype(np.int64),
                                ratios, min_aligned)
    expected = []
    for query, ref, ratio in sets:
        offsets = np.sort(ref - np.median(ratio) * query)
        expected.append(len(offsets) >= min_aligned and bool(
            (np.searchsorted(offsets, offsets + 2 * 10.0 + 1e-3, side="right") - np.arange(len(offsets))
             >= min_aligned).any()))
    assert may_hold.tolist() == expected
    assert 50 < sum(expected) < 350

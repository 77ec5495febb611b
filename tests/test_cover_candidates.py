"""The melody tier's candidate stage: time-line votes, the coarse prescreen, the tempo-first verification."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from refrain.fingerprint.melody import MelodyParams, resample_chroma
from refrain.index.melody import MelodyIndex
from refrain.matcher.melody import MelodyTier, compress_chroma, offset_votes, prescreen, verify_candidates

PARAMS = MelodyTier()
BIN = 8  # offset bin = the query segment hop (16 // 2 chroma frames)


def hits(per_segment: list[list[tuple[int, float, int]]], k: int = 4):
    """(similarity, tracks, offsets) arrays from (track, similarity, offset) hits per query segment."""
    similarity = np.full((len(per_segment), k), -np.inf, dtype=np.float32)
    tracks = np.full((len(per_segment), k), -1, dtype=np.int64)
    offsets = np.zeros((len(per_segment), k), dtype=np.int64)
    for row, found in enumerate(per_segment):
        for col, (track, sim, offset) in enumerate(found):
            similarity[row, col], tracks[row, col], offsets[row, col] = sim, track, offset
    return similarity, tracks, offsets


def test_hits_on_one_time_line_outvote_stronger_hits_in_no_order():
    # Track 1 matches every query segment at reference offset 40 (+-2 frames of jitter);
    # track 2 matches each one better, but each at another place in the reference.
    per_segment = [[(1, 0.7, 40 + jitter), (2, 0.8, 200 * row)] for row, jitter in enumerate((0, 2, -2, 1, 0, -1))]
    votes = offset_votes(*hits(per_segment), BIN, PARAMS)
    assert votes[1] == pytest.approx(0.7 - PARAMS.vote_floor)
    assert votes[2] == pytest.approx((0.8 - PARAMS.vote_floor) / 6)


def test_a_query_segment_counts_once_per_time_line_and_weak_hits_not_at_all():
    per_segment = [[(1, 0.9, 40), (1, 0.6, 41), (3, PARAMS.vote_floor - 0.01, 40)], [(1, 0.5, 42)]]
    votes = offset_votes(*hits(per_segment), BIN, PARAMS)
    assert votes == {1: pytest.approx(((0.9 - PARAMS.vote_floor) + (0.5 - PARAMS.vote_floor)) / 2)}
    assert offset_votes(*hits([[], []]), BIN, PARAMS) == {}


def chord_sequence(rng: np.random.Generator, n_chords: int, frames_per_chord: int = 4) -> np.ndarray:
    """A chroma sequence of random triads held for a few frames (rows centred, unit length)."""
    roots = rng.integers(0, 12, n_chords)
    frames = np.zeros((n_chords, 12), dtype=np.float32)
    for row, (root, third) in enumerate(zip(roots, rng.choice([3, 4], n_chords))):
        frames[row, [root, (root + third) % 12, (root + 7) % 12]] = 1.0
    frames = np.repeat(frames, frames_per_chord, axis=0)
    frames -= frames.mean(axis=1, keepdims=True)
    return frames / np.linalg.norm(frames, axis=1, keepdims=True)


def test_the_prescreen_puts_the_re_performed_piece_first_whatever_its_vote():
    rng = np.random.default_rng(5)
    index = MelodyIndex.create(MelodyParams())
    pieces = {track: chord_sequence(rng, 80) for track in range(8)}
    for track, chroma in pieces.items():
        index.add(track, chroma)
    query = np.roll(pieces[6][60:180], 3, axis=1)  # 30 s of piece 6, three semitones up
    # The true piece is voted last of eight; only two are to be verified.
    candidates = [(track, 1.0 - track / 10, (1.0,)) for track in (0, 1, 2, 3, 4, 5, 7, 6)]
    params = replace(PARAMS, verified_candidates=2)
    shortlist = prescreen(query, candidates, index, params)
    assert len(shortlist) == 2 and shortlist[0][0] == 6 and shortlist[0][2] == (1.0,)
    assert shortlist[0][1] > shortlist[1][1]
    assert prescreen(query, candidates[:2], index, params) == candidates[:2]  # nothing to leave out


def test_compressed_chroma_evens_out_a_frame_s_pitch_classes_and_stays_unit_length():
    rng = np.random.default_rng(2)
    chroma = chord_sequence(rng, 10)
    chroma[3] = 0.0  # a silent frame
    assert compress_chroma(chroma, 1.0) is chroma
    compressed = compress_chroma(chroma, 0.5)
    np.testing.assert_allclose(compressed.mean(axis=1), 0.0, atol=1e-6)
    norms = np.linalg.norm(compressed, axis=1)
    np.testing.assert_allclose(np.delete(norms, 3), 1.0, rtol=1e-5)
    assert norms[3] == 0.0
    # A frame with one loud and one quiet class: the quiet one gains on the loud one.
    frame = np.zeros((1, 12), dtype=np.float32)
    frame[0, 0], frame[0, 7] = 1.0, 0.2
    frame -= frame.mean()
    before, after = frame[0], compress_chroma(frame / np.linalg.norm(frame), 0.5)[0]
    assert after[7] / after[0] > before[7] / before[0]


def test_a_track_is_verified_under_the_whole_tempo_grid_only_when_it_aligns_at_its_best_voted_tempo():
    rng = np.random.default_rng(7)
    index = MelodyIndex.create(MelodyParams())
    pieces = {track: chord_sequence(rng, 90) for track in range(6)}
    for track, chroma in pieces.items():
        index.add(track, chroma)
    # 30 s of piece 4 played 1.06 x 0.97 faster: between the grid's steps, found at 1.06 x 0.97 only by refining.
    query = resample_chroma(pieces[4][60:200], 1 / (1.06 * 0.97))
    verdicts = dict(verify_candidates(query, index, PARAMS))
    assert verdicts[4].tempo_ratio == pytest.approx(1.06 * 0.97)
    assert verdicts[4].similarity >= PARAMS.min_similarity
    # Every other track stays below refine_from at its best-voted tempo: verified there alone.
    others = {track: v for track, v in verdicts.items() if track != 4}
    assert others and all(v.similarity < PARAMS.refine_from for v in others.values())
    assert all(v.tempo_ratio in PARAMS.tempo_hypotheses for v in others.values())
    # Refining nothing leaves the true piece at its best-voted tempo, with less similarity.
    unrefined = dict(verify_candidates(query, index, replace(PARAMS, refine_from=2.0)))
    assert unrefined[4].tempo_ratio in PARAMS.tempo_hypotheses
    assert unrefined[4].similarity < verdicts[4].similarity

"""An upload longer than a matching window, through the real HTTP app: streamed, yet answered as a whole.

A service of its own (uploads up to 10 minutes). The upload is 2.5 minutes of music,
three 60 s windows, with a whole catalogue song across the first window boundary and
an excerpt of another across the second. The service decodes, fingerprints and
matches it a window at a time; the answer, the stored fingerprint and the evidence
images must be those of the whole upload.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SR, private_service
from service_helpers import post_file

from refrain.config import Config
from refrain.fingerprint import fingerprint_signal, load_audio
from refrain.fingerprint.serialize import fingerprint_from_bytes
from refrain.service.db import ServiceDB
from refrain.service.render import spectrogram_png
from refrain.service.settings import ServiceSettings

#: Where each piece of the upload starts (seconds) and what it is.
WHOLE_SONG_AT = 50.0        # song 34 whole (34 s): across the boundary at 60 s
EXCERPT_AT = 110.0          # song 30 from 5 s on, 20 s: across the boundary at 120 s
UPLOAD_SECONDS = 150.0
PARAMS = Config().fingerprint  # the service's index is made with the default settings


@pytest.fixture(scope="module")
def long_service(tmp_path_factory, songs):
    """The running service with an admin and an uploader key and works for songs 34 and 30."""
    root = tmp_path_factory.mktemp("long-uploads")
    settings = ServiceSettings(index_dir=root / "index", max_upload_seconds=600.0)
    with private_service(settings, [("admin", "admin", "ops"), ("uploader", "uploader", "studio")]) as clients:
        works = {}
        for seed in (34, 30):
            with open(songs[seed].path, "rb") as handle:
                made = clients["admin"].post("/v1/works", files={"file": (songs[seed].path.name, handle, "audio/wav")},
                                             data={"title": f"Song {seed}", "artists": ["Ada"],
                                                   "rights_holder": "Label"})
            assert made.status_code == 201, made.text
            works[seed] = made.json()
        yield settings, clients, works


@pytest.fixture(scope="module")
def long_upload(tmp_path_factory, songs, unrelated_songs, write_audio):
    """The 2.5-minute FLAC upload and its samples as the service decodes them (at the index's rate)."""
    y = np.zeros(int(UPLOAD_SECONDS * SR), np.float32)
    filler = np.concatenate([unrelated_songs[45], unrelated_songs[35]])
    for start in range(0, len(y), len(filler)):  # unrelated music everywhere else
        y[start:start + len(filler)] = filler[:len(y) - start]
    whole, excerpt = songs[34].samples, songs[30].excerpt(5.0, 20.0)
    y[int(WHOLE_SONG_AT * SR):int(WHOLE_SONG_AT * SR) + len(whole)] = whole
    y[int(EXCERPT_AT * SR):int(EXCERPT_AT * SR) + len(excerpt)] = excerpt
    path = write_audio(tmp_path_factory.mktemp("long-upload") / "long-upload.flac", y)
    return path, load_audio(path, PARAMS.sample_rate)


def test_a_long_upload_is_answered_as_a_whole_with_its_fingerprint_and_evidence(long_service, long_upload, songs):
    settings, clients, works = long_service
    path, samples = long_upload
    answer = post_file(clients["uploader"], "/v1/matches", path)
    assert answer.status_code == 200, answer.text
    decision = answer.json()
    assert decision["fingerprint"]["duration"] == pytest.approx(UPLOAD_SECONDS, abs=0.01)

    by_work = {w["work_id"]: w for w in decision["works"]}
    assert set(by_work) == {works[34]["work_id"], works[30]["work_id"]}, decision["works"]
    song = by_work[works[34]["work_id"]]
    # One span over the whole song, joined across the window boundary at 60 s.
    assert song["kind"] == "copy" and len(song["spans"]) == 1, song
    assert song["spans"][0]["query_start"] == pytest.approx(WHOLE_SONG_AT, abs=1.5)
    assert song["spans"][0]["query_end"] == pytest.approx(WHOLE_SONG_AT + len(songs[34].samples) / SR, abs=3.0)
    assert song["offset"] == pytest.approx(-WHOLE_SONG_AT, abs=0.1)
    excerpt = by_work[works[30]["work_id"]]
    assert excerpt["kind"] == "excerpt" and len(excerpt["spans"]) == 1, excerpt
    assert excerpt["spans"][0]["query_start"] == pytest.approx(EXCERPT_AT, abs=1.5)
    assert excerpt["spans"][0]["query_end"] == pytest.approx(EXCERPT_AT + 20.0, abs=3.0)
    assert excerpt["offset"] == pytest.approx(5.0 - EXCERPT_AT, abs=0.1)

    # What is stored is the whole upload's fingerprint, though it was made a window at a time:
    # the windows' peaks, analysed with margins, are the whole signal's but for a few at the boundaries.
    whole = fingerprint_signal(samples, PARAMS, dense_peaks=True)
    db = ServiceDB(settings.db_path)
    try:
        stored = db.rescan_candidate(decision["decision_id"])
        evidence = db.decision_evidence(decision["decision_id"])
    finally:
        db.close()
    rebuilt = fingerprint_from_bytes(stored.fingerprint, PARAMS)
    assert rebuilt.duration == pytest.approx(UPLOAD_SECONDS, abs=0.01)
    assert decision["fingerprint"]["landmarks"] == len(rebuilt) == pytest.approx(len(whole), rel=0.001)
    for found, expected in ((rebuilt.peaks, whole.peaks), (rebuilt.dense_peaks, whole.dense_peaks)):
        shared = {*zip(found.frames.tolist(), found.bins.tolist())} & {*zip(expected.frames.tolist(),
                                                                         expected.bins.tolist())}
        assert len(shared) >= 0.999 * max(len(found.frames), len(expected.frames))
    # Windows of whole chroma frames: the melody joins on the upload's own grid, not drifting from it.
    assert np.array_equal(rebuilt.melody, whole.melody)

    # Each image is drawn from the upload's own samples over its stretch, read back from the file.
    for matched in decision["works"]:
        shown = evidence[matched["track_id"]]
        assert shown.spectrogram_start <= matched["query_start"] < shown.spectrogram_end
        rate = PARAMS.sample_rate
        start, end = int(shown.spectrogram_start * rate), int(shown.spectrogram_end * rate)
        assert shown.spectrogram_png == spectrogram_png(samples[start:end], PARAMS)
        assert len(shown.points) > 0


def test_a_long_upload_cut_short_is_refused_with_nothing_stored(long_service, long_upload, tmp_path):
    # The damage shows only at the end, after two windows were matched: no decision may come of them.
    settings, clients, _ = long_service
    path, _ = long_upload
    data = path.read_bytes()
    cut = tmp_path / "cut.flac"
    cut.write_bytes(data[:int(len(data) * 0.9)])
    before = _stored_decisions(settings)
    answer = post_file(clients["uploader"], "/v1/matches", cut)
    assert answer.status_code == 415, answer.text
    assert answer.json()["code"] == "undecodable_audio" and "cut.flac" in answer.json()["message"]
    assert _stored_decisions(settings) == before


def _stored_decisions(settings: ServiceSettings) -> int:
    db = ServiceDB(settings.db_path)
    try:
        return db.list_decisions(None, None, None, limit=1, offset=0)[1]
    finally:
        db.close()

"""Ownership conflicts through real HTTP: a copy of a registered work cannot be registered as a new work silently.

A service of its own: a work registered explicitly as a conflict would also be matched by
the shared service's uploads.
"""

from __future__ import annotations

import subprocess

import httpx
import imageio_ffmpeg
import numpy as np
import pytest
from conftest import SR, _ServerThread, free_port
from service_helpers import assert_error

from refrain.service.app import create_app
from refrain.service.db import ServiceDB
from refrain.service.settings import ServiceSettings


@pytest.fixture(scope="module")
def admin(tmp_path_factory, songs):
    """An admin client of a service whose catalogue holds one work (song 30)."""
    root = tmp_path_factory.mktemp("conflicts-service")
    settings = ServiceSettings(index_dir=root / "index")
    db = ServiceDB(settings.db_path)
    key = db.create_key("admin", "ops")[0]
    db.close()
    server = _ServerThread(create_app(settings), free_port())
    server.start()
    client = httpx.Client(base_url=f"http://127.0.0.1:{server.server.config.port}", headers={"X-API-Key": key},
                          timeout=120.0)
    try:
        assert _register(client, songs[30].path, "Song 30", "Label 30").status_code == 201
        yield client
    finally:
        client.close()
        server.stop()


def _register(admin, path, title: str, rights_holder: str, **extra) -> httpx.Response:
    with open(path, "rb") as handle:
        return admin.post("/v1/works", files={"file": (path.name, handle, "application/octet-stream")},
                          data={"title": title, "artists": ["Someone"], "rights_holder": rights_holder, **extra})


def _mp3(path, samples: np.ndarray) -> None:
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-f", "s16le", "-ar", str(SR),
                    "-ac", "1", "-i", "pipe:0", "-c:a", "libmp3lame", "-b:a", "128k", str(path)], input=pcm,
                   check=True)


def test_a_re_encoded_copy_and_an_excerpt_are_refused_with_the_conflicting_work(admin, songs, excerpt_file,
                                                                                tmp_path):
    reencoded = tmp_path / "song-30.mp3"
    _mp3(reencoded, songs[30].samples)
    for path in (reencoded, excerpt_file(30, 12.0, 10.0)):
        refused = assert_error(_register(admin, path, "Not Song 30", "Other Label"), 409, "ownership_conflict")
        (conflict,) = refused["details"]
        assert (conflict["title"], conflict["rights_holder"]) == ("Song 30", "Label 30"), conflict
        assert conflict["kind"] in ("copy", "excerpt") and conflict["score"] > 0 and conflict["spans"]
        assert "conflict=true" in refused["message"]
    excerpt_span = refused["details"][0]["spans"][0]
    assert excerpt_span["ref_start"] == pytest.approx(12.0, abs=1.0)
    assert admin.get("/v1/works").json()["total"] == 1  # nothing was registered


def test_an_explicit_conflict_is_registered_and_queued_and_unrelated_music_is_not(admin, songs, excerpt_file):
    assert_error(_register(admin, excerpt_file(30, 30.0, 10.0), "x", "y", conflict="maybe"), 422, "validation_error")
    made = _register(admin, excerpt_file(30, 30.0, 10.0), "Song 30 (claimed)", "Other Label", conflict="true")
    assert made.status_code == 201, made.text
    queue = admin.get("/v1/conflicts").json()
    assert queue["total"] == 1
    (conflict,) = queue["items"]
    assert conflict["work_id"] == made.json()["work_id"] and conflict["resolved_at"] is None
    assert conflict["claimed_work_id"] == admin.get("/v1/works").json()["items"][0]["work_id"]
    assert conflict["kind"] in ("copy", "excerpt") and conflict["spans"]

    unrelated = _register(admin, songs[41].path, "Song 41", "Label 41")
    assert unrelated.status_code == 201, unrelated.text
    assert admin.get("/v1/conflicts").json()["total"] == 1

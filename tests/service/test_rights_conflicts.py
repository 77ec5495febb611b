"""Ownership conflicts through real HTTP: a copy of a registered work cannot be registered as a new work silently.

A service of its own: a work registered explicitly as a conflict would also be matched by
the shared service's uploads.
"""

from __future__ import annotations

import subprocess

import imageio_ffmpeg
import numpy as np
import pytest
from conftest import SR
from service_helpers import assert_error, register


@pytest.fixture(scope="module")
def admin(private_admin, songs):
    """An admin client of a service of its own whose catalogue holds one work (song 30)."""
    assert register(private_admin, songs[30].path, "Song 30", "Label 30").status_code == 201
    return private_admin


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
        refused = assert_error(register(admin, path, "Not Song 30", "Other Label"), 409, "ownership_conflict")
        (conflict,) = refused["details"]
        assert (conflict["title"], conflict["rights_holder"]) == ("Song 30", "Label 30"), conflict
        assert conflict["kind"] in ("copy", "excerpt") and conflict["score"] > 0 and conflict["spans"]
        assert "conflict=true" in refused["message"]
    excerpt_span = refused["details"][0]["spans"][0]
    assert excerpt_span["ref_start"] == pytest.approx(12.0, abs=1.0)
    assert admin.get("/v1/works").json()["total"] == 1  # nothing was registered


def test_an_explicit_conflict_is_registered_and_queued_and_unrelated_music_is_not(admin, songs, excerpt_file):
    assert_error(register(admin, excerpt_file(30, 30.0, 10.0), "x", "y", conflict="maybe"), 422, "validation_error")
    made = register(admin, excerpt_file(30, 30.0, 10.0), "Song 30 (claimed)", "Other Label", conflict="true")
    assert made.status_code == 201, made.text
    queue = admin.get("/v1/conflicts").json()
    assert queue["total"] == 1
    (conflict,) = queue["items"]
    assert conflict["work_id"] == made.json()["work_id"] and conflict["resolved_at"] is None
    assert conflict["claimed_work_id"] == admin.get("/v1/works").json()["items"][0]["work_id"]
    assert conflict["kind"] in ("copy", "excerpt") and conflict["spans"]

    unrelated = register(admin, songs[41].path, "Song 41", "Label 41")
    assert unrelated.status_code == 201, unrelated.text
    assert admin.get("/v1/conflicts").json()["total"] == 1

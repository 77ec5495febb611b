"""Covers through real HTTP: the melody tier's matches get the verdict of the work's ``covers`` policy."""

from __future__ import annotations

import pytest
from conftest import SR
from service_helpers import LICENSEE, grant, post_file

from refrain.synth import render_song

#: The "remixable" work (seed 30) denies covers; this re-performance of it is another
#: timbre, 2 semitones higher and 10 % faster, a clear cover (similarity about 0.7): a
#: borderline one, just over the threshold, has a confidence under the service's
#: ``review_confidence`` and goes to review instead (see the last test).
COVER = dict(transpose=2, tempo=1.1, timbre_seed=204)
#: A weaker re-performance of the same work: found, but only just over the threshold.
BORDERLINE_COVER = dict(transpose=-5, tempo=0.9, timbre_seed=90)


@pytest.fixture(scope="module")
def cover_file(write_audio, upload_dir):
    return write_audio(upload_dir / "cover-of-30.wav", render_song(30, 30.0, SR, **COVER))


def the_cover(decision: dict, live_service) -> dict:
    assert [w["kind"] for w in decision["works"]] == ["cover"], decision["works"]
    matched = decision["works"][0]
    assert matched["work_id"] == live_service.works["remixable"]["work_id"]
    return matched


def test_a_cover_of_a_work_that_denies_covers_is_blocked(uploader, live_service, cover_file):
    done = post_file(uploader, "/v1/matches", cover_file, uploader_id="someone")
    assert done.status_code == 200, done.text
    decision = done.json()
    assert decision["verdict"] == "blocked_unlicensed_derivative"
    matched = the_cover(decision, live_service)
    assert matched["use"] == "cover" and matched["action"] == "deny" and matched["outcome"] == "blocked"
    assert matched["pitch_shift_semitones"] == COVER["transpose"]
    assert matched["time_ratio"] == pytest.approx(COVER["tempo"], rel=0.03)
    assert matched["confidence"] >= live_service.settings.review_confidence
    assert 0.5 <= matched["score"] <= 1.0 and matched["spans"]
    assert matched["royalty"]["covered_seconds"] > 20.0 and matched["royalty"]["share_owed"] == 0.0


def test_under_a_licence_required_covers_policy_a_cover_licence_makes_it_licensed(uploader, admin,
                                                                                  live_service, cover_file):
    work = live_service.works["remixable"]
    policy_url = f"/v1/works/{work['work_id']}/policy"
    original = {k: v for k, v in work["policy"].items() if k != "is_default"}
    changed = admin.put(policy_url, json={**original, "cover": "licence_required"})
    assert changed.status_code == 200, changed.text
    try:
        remix = grant(admin, work["work_id"], ["remix"])
        done = post_file(uploader, "/v1/matches", cover_file, uploader_id=LICENSEE,
                         licence_id=remix["licence_id"])
        assert done.status_code == 200 and done.json()["verdict"] == "blocked_unlicensed_derivative"

        cover = grant(admin, work["work_id"], ["cover"])
        done = post_file(uploader, "/v1/matches", cover_file, uploader_id=LICENSEE,
                         licence_id=cover["licence_id"])
        assert done.status_code == 200, done.text
        decision = done.json()
        assert decision["verdict"] == "licensed"
        matched = the_cover(decision, live_service)
        assert matched["action"] == "licence_required" and matched["outcome"] == "licensed"
        assert matched["licence_id"] == cover["licence_id"] and matched["royalty"]["share_owed"] > 0.0
    finally:
        restored = admin.put(policy_url, json=original)
        assert restored.status_code == 200, restored.text


def test_the_openapi_document_describes_cover_matches(live_service):
    with live_service.client() as client:
        schema = client.get("/openapi.json").json()["components"]["schemas"]["MatchedWorkOut"]["properties"]
    assert "cover" in schema["kind"]["description"]
    assert "key shift" in schema["pitch_shift_semitones"]["description"]
    assert "similarity" in schema["score"]["description"]


def test_a_borderline_cover_goes_to_review_rather_than_being_blocked(uploader, live_service, write_audio,
                                                                    upload_dir):
    path = write_audio(upload_dir / "borderline-cover-of-30.wav", render_song(30, 30.0, SR, **BORDERLINE_COVER))
    done = post_file(uploader, "/v1/matches", path, uploader_id="someone")
    assert done.status_code == 200, done.text
    decision = done.json()
    matched = the_cover(decision, live_service)
    assert matched["confidence"] < live_service.settings.review_confidence
    assert decision["verdict"] == "review"

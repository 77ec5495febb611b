"""Every verdict through real HTTP: catalogue songs, excerpts and sped-up derivatives as uploads."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from service_helpers import LICENSEE, grant, post_file

from refrain.policy import VERDICTS
from refrain.synth import mix

SR = 22050


def only_work(decision: dict) -> dict:
    assert len(decision["works"]) == 1, decision["works"]
    return decision["works"][0]


def test_an_excerpt_of_a_work_whose_policy_denies_copies_is_blocked_copy(uploader, live_service,
                                                                         excerpt_file):
    work = live_service.works["remixable"]
    done = post_file(uploader, "/v1/matches", excerpt_file(30, 8.0, 10.0), uploader_id="someone")
    assert done.status_code == 200, done.text
    decision = done.json()
    assert decision["verdict"] == "blocked_copy" and decision["stored"] and decision["decision_id"]
    matched = only_work(decision)
    assert matched["work_id"] == work["work_id"] and matched["rights_holder"] == "Label 30"
    assert matched["kind"] == "excerpt" and matched["use"] == "copy"
    assert matched["action"] == "deny" and matched["outcome"] == "blocked"
    assert matched["policy"] == {"copy": "deny", "remix": "licence_required", "cover": "deny",
                                 "royalty_share": 0.5, "conditions": [], "is_default": False}
    assert matched["ref_start"] == pytest.approx(8.0, abs=0.5)
    assert matched["spans"] and matched["time_ratio"] == pytest.approx(1.0, abs=0.02)
    # Blocked: nothing is owed, but the share of the upload is still attributed.
    assert matched["royalty"]["share_owed"] == 0.0 and decision["total_share_owed"] == 0.0
    assert matched["royalty"]["duration_share"] > 0.8
    assert decision["fingerprint"]["duration"] == pytest.approx(10.0, abs=0.01)


def test_a_sped_up_derivative_without_a_licence_is_blocked(uploader, live_service, sped_up_file):
    done = post_file(uploader, "/v1/matches", sped_up_file(30, 5.0, 12.0, 1.1), uploader_id=LICENSEE)
    assert done.status_code == 200, done.text
    decision = done.json()
    assert decision["verdict"] == "blocked_unlicensed_derivative", decision
    matched = only_work(decision)
    assert matched["work_id"] == live_service.works["remixable"]["work_id"]
    assert matched["kind"] == "speed_changed" and matched["use"] == "remix"
    assert matched["time_ratio"] == pytest.approx(1.1, abs=0.02)
    assert matched["action"] == "licence_required" and matched["outcome"] == "blocked"
    assert "no licence for this work was declared" in matched["reason"]


def test_a_work_buried_18_db_under_new_music_is_a_blocked_remix(uploader, live_service, songs,
                                                                unrelated_songs, write_audio, upload_dir):
    # An AI vocal or a new beat over the original: song 34 at -18 dB under a song outside the
    # catalogue. Only the peaks tier's verification finds it.
    beat = np.asarray(unrelated_songs[45][5 * SR:15 * SR])
    path = write_audio(upload_dir / "buried-34.wav", mix(beat, songs[34].excerpt(10.0, 10.0), -18.0))
    done = post_file(uploader, "/v1/matches", path, uploader_id=LICENSEE)
    assert done.status_code == 200, done.text
    decision = done.json()
    assert decision["verdict"] == "blocked_unlicensed_derivative", decision
    matched = only_work(decision)
    assert matched["work_id"] == live_service.works["default"]["work_id"]
    assert matched["kind"] == "mixed" and matched["use"] == "remix"
    assert matched["ref_start"] - matched["query_start"] == pytest.approx(10.0, abs=0.1)


def test_the_same_derivative_with_a_valid_licence_is_licensed_and_owes_royalties(
        uploader, admin, live_service, sped_up_file):
    work = live_service.works["remixable"]
    licence = grant(admin, work["work_id"], ["remix"],
                    valid_until=datetime.now(timezone.utc) + timedelta(days=30))
    assert licence["status"] == "active" and licence["licence_id"].startswith("lic_")
    done = post_file(uploader, "/v1/matches", sped_up_file(30, 5.0, 12.0, 1.1), uploader_id=LICENSEE,
                     licence_id=licence["licence_id"])
    assert done.status_code == 200, done.text
    decision = done.json()
    assert decision["verdict"] == "licensed", decision
    matched = only_work(decision)
    assert matched["outcome"] == "licensed" and matched["licence_id"] == licence["licence_id"]
    royalty = matched["royalty"]
    assert royalty["royalty_share"] == 0.5
    assert royalty["covered_seconds"] == pytest.approx(sum(s["query_end"] - s["query_start"]
                                                           for s in matched["spans"]), abs=0.01)
    assert royalty["duration_share"] == pytest.approx(royalty["covered_seconds"]
                                                      / decision["fingerprint"]["duration"], abs=1e-3)
    assert royalty["share_owed"] == pytest.approx(0.5 * royalty["duration_share"], abs=1e-3)
    assert decision["total_share_owed"] == royalty["share_owed"] > 0.3


@pytest.mark.parametrize("problem", ["other_licensee", "expired", "revoked", "wrong_use"])
def test_a_licence_that_does_not_apply_leaves_the_derivative_blocked(problem, uploader, admin,
                                                                     live_service, sped_up_file):
    work_id = live_service.works["remixable"]["work_id"]
    if problem == "other_licensee":
        licence, expected = grant(admin, work_id, ["remix"], licensee="someone-else"), "another licensee"
    elif problem == "expired":
        licence = grant(admin, work_id, ["remix"], valid_until=datetime.now(timezone.utc) - timedelta(days=1))
        assert licence["status"] == "expired"
        expected = "expired"
    elif problem == "revoked":
        licence = grant(admin, work_id, ["remix"])
        revoked = admin.delete(f"/v1/licences/{licence['licence_id']}")
        assert revoked.status_code == 200 and revoked.json()["status"] == "revoked", revoked.text
        expected = "revoked"
    else:
        licence, expected = grant(admin, work_id, ["cover"]), "does not grant remixes"
    done = post_file(uploader, "/v1/matches", sped_up_file(30, 5.0, 12.0, 1.1), uploader_id=LICENSEE,
                     licence_id=licence["licence_id"])
    assert done.status_code == 200, done.text
    assert done.json()["verdict"] == "blocked_unlicensed_derivative"
    assert expected in only_work(done.json())["reason"]


def test_an_excerpt_of_a_work_that_allows_copies_is_allowed_with_its_royalty(uploader, live_service,
                                                                             excerpt_file):
    done = post_file(uploader, "/v1/matches", excerpt_file(33, 10.0, 10.0))
    assert done.status_code == 200, done.text
    decision = done.json()
    assert decision["verdict"] == "allowed"
    matched = only_work(decision)
    assert matched["work_id"] == live_service.works["free"]["work_id"] and matched["outcome"] == "allowed"
    assert matched["royalty"]["share_owed"] == pytest.approx(0.1 * matched["royalty"]["duration_share"],
                                                             abs=1e-3)


def test_music_not_in_the_catalogue_is_clear(uploader, unrelated_songs, write_audio, upload_dir):
    path = write_audio(upload_dir / "unrelated.wav", unrelated_songs[45][:10 * 22050])
    done = post_file(uploader, "/v1/matches", path)
    assert done.status_code == 200, done.text
    assert done.json()["verdict"] == "clear" and done.json()["works"] == []


def test_a_match_weaker_than_the_review_threshold_goes_to_review(uploader, live_service, excerpt_file, monkeypatch):
    # By the calibrated chance model, 5 s of a clean copy is strong evidence in this catalogue: blocked.
    path = excerpt_file(34, 12.0, 5.0)
    done = post_file(uploader, "/v1/matches", path)
    assert done.status_code == 200, done.text
    matched = only_work(done.json())
    assert matched["work_id"] == live_service.works["default"]["work_id"]
    assert matched["policy"]["is_default"] and matched["action"] == "deny"
    assert matched["confidence"] == pytest.approx(1.0 - matched["chance"])
    assert matched["confidence"] >= live_service.settings.review_confidence
    assert done.json()["verdict"] == "blocked_copy", matched["chance"]

    # An operator who wants ten times less chance than that before anything is blocked gets it reviewed.
    monkeypatch.setattr(live_service.settings, "review_confidence", 1.0 - matched["chance"] / 10)
    assert matched["confidence"] < live_service.settings.review_confidence
    done = post_file(uploader, "/v1/matches", path)
    decision = done.json()
    matched = only_work(decision)
    assert decision["verdict"] == "review" and matched["outcome"] == "review"
    assert "weak" in matched["reason"]


def test_the_audit_lists_and_returns_stored_decisions_with_evidence(analyst, uploader, live_service,
                                                                    excerpt_file):
    since = datetime.now(timezone.utc)
    made = [post_file(uploader, "/v1/matches", excerpt_file(30, start, 10.0), uploader_id="audit").json()
            for start in (2.0, 14.0)]
    work_id = live_service.works["remixable"]["work_id"]
    listed = analyst.get("/v1/matches", params={"work_id": work_id, "verdict": "blocked_copy",
                                                "since": since.isoformat()})
    assert listed.status_code == 200, listed.text
    page = listed.json()
    assert page["total"] == 2 and [d["decision_id"] for d in page["items"]] == \
        [m["decision_id"] for m in reversed(made)]  # newest first
    assert all(d["work_ids"] == [work_id] for d in page["items"])
    second = analyst.get("/v1/matches", params={"work_id": work_id, "since": since.isoformat(),
                                                "limit": 1, "offset": 1}).json()
    assert second["total"] == 2 and [d["decision_id"] for d in second["items"]] == [made[0]["decision_id"]]
    assert analyst.get("/v1/matches", params={"verdict": "clear", "since": since.isoformat()}
                       ).json()["total"] == 0

    stored = analyst.get(f"/v1/matches/{made[0]['decision_id']}")
    assert stored.status_code == 200, stored.text
    detail = stored.json()
    assert {k: v for k, v in detail.items() if k not in ("evidence", "history", "disputes")} == made[0]
    assert detail["history"] == []  # never changed by a rescan
    (evidence,) = detail["evidence"]
    assert evidence["work_id"] == work_id and len(evidence["points"]) >= 20
    # The aligned landmarks lie on the fitted line: ref = offset + ratio * upload time.
    for q, r in evidence["points"]:
        assert r == pytest.approx(evidence["offset"] + evidence["time_ratio"] * q, abs=0.2)
    image = analyst.get(f"/v1/matches/{made[0]['decision_id']}/spectrogram/{evidence['track_id']}")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_adhoc_match_answers_like_an_upload_but_is_not_stored(analyst, live_service, excerpt_file):
    before = analyst.get("/v1/matches").json()["total"]
    done = post_file(analyst, "/v1/matches/adhoc", excerpt_file(30, 8.0, 10.0))
    assert done.status_code == 200, done.text
    assert done.json()["verdict"] == "blocked_copy"
    assert done.json()["decision_id"] is None and done.json()["stored"] is False
    assert analyst.get("/v1/matches").json()["total"] == before


def test_every_verdict_is_covered_by_this_module():
    tested = {"clear", "allowed", "licensed", "blocked_copy", "blocked_unlicensed_derivative", "review"}
    assert tested == set(VERDICTS)

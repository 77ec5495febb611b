"""Reviews through real HTTP: the review queue, its filters and CSV export, and an analyst's resolution."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import datetime

import pytest
from service_helpers import assert_error, post_file

from refrain.service.db import ServiceDB


@pytest.fixture(scope="module")
def queue(uploader, live_service, excerpt_file):
    """Two `review` decisions, one `blocked_copy` and one `allowed`, all declaring an uploader id of their own."""
    uploader_id = "reviews-" + uuid.uuid4().hex[:8]
    weak_path = excerpt_file(34, 12.0, 5.0)
    strong = post_file(uploader, "/v1/matches", weak_path, uploader_id=uploader_id).json()
    assert strong["verdict"] == "blocked_copy", strong
    chance = strong["works"][0]["chance"]
    # Ten times less chance than this clean 5 s copy has before anything is blocked: it goes to review.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(live_service.settings, "review_confidence", 1.0 - chance / 10)
        reviews = [post_file(uploader, "/v1/matches", weak_path, uploader_id=uploader_id).json() for _ in range(2)]
    assert [d["verdict"] for d in reviews] == ["review", "review"], reviews
    allowed = post_file(uploader, "/v1/matches", excerpt_file(33, 10.0, 10.0), uploader_id=uploader_id).json()
    assert allowed["verdict"] == "allowed", allowed
    return {"uploader_id": uploader_id, "blocked": strong, "reviews": reviews, "allowed": allowed}


def _ids(listing) -> list[str]:
    assert listing.status_code == 200, listing.text
    return [item["decision_id"] for item in listing.json()["items"]]


def test_the_queue_lists_reviews_oldest_first_filtered_and_paged(analyst, queue, live_service):
    mine = {"uploader_id": queue["uploader_id"]}
    first, second = (d["decision_id"] for d in queue["reviews"])
    assert _ids(analyst.get("/v1/reviews", params=mine)) == [first, second]
    assert _ids(analyst.get("/v1/reviews", params={**mine, "limit": 1, "offset": 1})) == [second]
    assert analyst.get("/v1/reviews", params={**mine, "limit": 1}).json()["total"] == 2
    assert _ids(analyst.get("/v1/reviews", params={**mine, "verdict": "blocked_copy"})) == [
        queue["blocked"]["decision_id"]]
    work_id = live_service.works["default"]["work_id"]
    assert _ids(analyst.get("/v1/reviews", params={**mine, "work_id": work_id})) == [first, second]
    assert _ids(analyst.get("/v1/reviews", params={**mine, "work_id": live_service.works["free"]["work_id"]})) == []
    assert _ids(analyst.get("/v1/reviews", params={**mine, "kind": "excerpt"})) == [first, second]
    assert _ids(analyst.get("/v1/reviews", params={**mine, "kind": "mixed"})) == []
    second_at = queue["reviews"][1]["created_at"]
    assert _ids(analyst.get("/v1/reviews", params={**mine, "since": second_at})) == [second]
    assert _ids(analyst.get("/v1/reviews", params={**mine, "until": second_at})) == [first]
    assert_error(analyst.get("/v1/reviews", params={"since": second_at, "until": second_at}), 422,
                 "validation_error")
    assert_error(analyst.get("/v1/reviews", params={"kind": "karaoke"}), 422, "validation_error")


def test_the_export_has_one_line_per_work_with_its_royalty_lines(analyst, queue):
    done = analyst.get("/v1/reviews/export", params={"uploader_id": queue["uploader_id"], "verdict": "allowed"})
    assert done.status_code == 200, done.text
    assert done.headers["content-type"].startswith("text/csv")
    assert done.headers["X-Total-Count"] == "1"
    rows = list(csv.DictReader(io.StringIO(done.text)))
    allowed = queue["allowed"]
    assert [row["decision_id"] for row in rows] == [allowed["decision_id"]] * len(allowed["works"])
    work = allowed["works"][0]
    assert rows[0]["work_id"] == str(work["work_id"]) and rows[0]["outcome"] == "allowed"
    assert float(rows[0]["share_owed"]) == pytest.approx(work["royalty"]["share_owed"]) and float(
        rows[0]["share_owed"]) > 0
    assert float(rows[0]["covered_seconds"]) == pytest.approx(work["royalty"]["covered_seconds"])


def test_an_analyst_resolves_a_review_and_the_history_keeps_who_and_why(analyst, uploader, queue):
    decision = queue["reviews"][0]
    url = f"/v1/matches/{decision['decision_id']}/resolution"
    track_id = decision["works"][0]["track_id"]
    allow = {"works": [{"track_id": track_id, "resolution": "allow"}], "note": "the uploader sent the licence"}
    assert_error(uploader.post(url, json=allow), 403, "forbidden")
    assert_error(analyst.post(url, json={**allow, "note": "  "}), 422, "validation_error")
    assert_error(analyst.post(url, json={"works": [], "note": "n"}), 422, "validation_error")
    assert_error(analyst.post(url, json={**allow, "works": [{"track_id": 999999, "resolution": "allow"}]}), 422,
                 "validation_error")
    assert_error(analyst.post(url, json={**allow, "works": allow["works"] * 2}), 422, "validation_error")
    assert_error(analyst.post("/v1/matches/dec_nope/resolution", json=allow), 404, "not_found")

    done = analyst.post(url, json=allow)
    assert done.status_code == 200, done.text
    resolved = done.json()
    assert resolved["verdict"] == "allowed" and resolved["works"][0]["outcome"] == "allowed"
    assert "the uploader sent the licence" in resolved["works"][0]["reason"]
    change = resolved["history"][-1]
    assert (change["kind"], change["actor"], change["old_verdict"], change["new_verdict"], change["reason"]) == (
        "resolution", "analysts", "review", "allowed", "the uploader sent the licence")
    assert change["run_id"].startswith("rev_")
    assert analyst.get(f"/v1/matches/{decision['decision_id']}").json() == resolved
    # Resolved: it left the review queue.
    assert _ids(analyst.get("/v1/reviews", params={"uploader_id": queue["uploader_id"]})) == [
        queue["reviews"][1]["decision_id"]]


def test_releasing_every_claim_allows_and_confirming_keeps_the_block(analyst, queue):
    decision = queue["reviews"][1]
    release = {"works": [{"track_id": w["track_id"], "resolution": "release"} for w in decision["works"]],
               "note": "public-domain recording"}
    resolved = analyst.post(f"/v1/matches/{decision['decision_id']}/resolution", json=release).json()
    assert resolved["verdict"] == "allowed" and resolved["total_share_owed"] == 0.0
    assert {w["outcome"] for w in resolved["works"]} == {"released"}

    blocked = queue["blocked"]
    confirm = {"works": [{"track_id": blocked["works"][0]["track_id"], "resolution": "confirm"}],
               "note": "a straight copy"}
    resolved = analyst.post(f"/v1/matches/{blocked['decision_id']}/resolution", json=confirm).json()
    assert resolved["verdict"] == "blocked_copy"
    assert [(c["kind"], c["old_verdict"], c["new_verdict"]) for c in resolved["history"]] == [
        ("resolution", "blocked_copy", "blocked_copy")]


def test_a_resolution_of_a_decision_changed_meanwhile_changes_nothing(live_service, queue):
    db = ServiceDB(live_service.settings.db_path)
    try:
        decision_id = queue["allowed"]["decision_id"]
        current = db.get_decision(decision_id)
        stale = {**current.body, "verdict": "review"}
        assert not db.apply_resolution(decision_id, "rev_stale", datetime.now().astimezone(), stale,
                                       {**current.body, "verdict": "blocked_copy"}, "analysts", "n")
        assert db.get_decision(decision_id).verdict == "allowed"
        assert db.decision_history(decision_id) == []
    finally:
        db.close()

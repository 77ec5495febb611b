"""Disputes and reference exclusions through real HTTP, on a service of the module's own (an exclusion changes
what the service decides for everyone).

An uploader disputes a blocked decision; an analyst works through the dispute queue and releases the claim and
excludes the matched reference span; the next upload of that span is no claim, and webhooks subscribed to the
dispute events receive them signed.
"""

from __future__ import annotations

import json

import httpx
import pytest
from service_helpers import LICENSEE, assert_error, post_file, register
from test_rights_webhooks import SECRET, receiver  # noqa: F401 (receiver is a fixture)

from refrain.rescan import RescanOptions, rescan_uploads
from refrain.service.db import ServiceDB
from refrain.service.webhooks import EVENT_HEADER, SIGNATURE_HEADER, verify


@pytest.fixture(scope="module")
def service(private_admin, songs):
    """The private service with song 44 registered (default policy: copies blocked) and a client per role:
    the uploader (principal LICENSEE), another uploader principal, and an analyst."""
    work = register(private_admin, songs[44].path, "Song 44", "Label 44")
    assert work.status_code == 201, work.text
    db = ServiceDB(private_admin.settings.db_path)
    keys = {"uploader": db.create_key("uploader", LICENSEE)[0], "other": db.create_key("uploader", "other-studio")[0],
            "analyst": db.create_key("analyst", "analysts")[0]}
    db.close()
    clients = {role: httpx.Client(base_url=private_admin.base_url, headers={"X-API-Key": key}, timeout=120)
               for role, key in keys.items()}
    try:
        yield {"work": work.json(), "admin": private_admin, **clients}
    finally:
        for client in clients.values():
            client.close()


def _blocked(service, excerpt_file, start=10.0, seconds=10.0) -> dict:
    decision = post_file(service["uploader"], "/v1/matches", excerpt_file(44, start, seconds)).json()
    assert decision["verdict"] == "blocked_copy", decision
    return decision


def test_an_uploader_disputes_and_an_analyst_releases_and_excludes(service, excerpt_file):
    uploader, analyst, work_id = service["uploader"], service["analyst"], service["work"]["work_id"]
    decision = _blocked(service, excerpt_file)
    url = f"/v1/matches/{decision['decision_id']}/disputes"
    dispute = {"reason": "public_domain", "text": "the intro is a 1920s recording"}
    assert_error(service["other"].post(url, json=dispute), 403, "forbidden")
    assert_error(analyst.post(url, json=dispute), 403, "forbidden")
    assert_error(uploader.post(url, json={**dispute, "reason": "because"}), 422, "validation_error")
    assert_error(uploader.post(url, json={**dispute, "text": " "}), 422, "validation_error")
    assert_error(uploader.post("/v1/matches/dec_nope/disputes", json=dispute), 404, "not_found")
    filed = uploader.post(url, json=dispute)
    assert filed.status_code == 201, filed.text
    filed = filed.json()
    assert (filed["status"], filed["principal"], filed["reason"], filed["outcome"]) == (
        "open", LICENSEE, "public_domain", None)
    assert filed["track_ids"] == [decision["works"][0]["track_id"]]
    assert_error(uploader.post(url, json=dispute), 409, "dispute_open")

    # The queue: oldest first, filtered, paged; analysts only.
    assert_error(uploader.get("/v1/disputes"), 403, "forbidden")
    queue = analyst.get("/v1/disputes").json()
    assert [d["dispute_id"] for d in queue["items"]] == [filed["dispute_id"]] and queue["total"] == 1
    assert analyst.get("/v1/disputes", params={"reason": "fair_use"}).json()["total"] == 0
    assert analyst.get("/v1/disputes", params={"work_id": work_id}).json()["total"] == 1
    assert analyst.get("/v1/disputes", params={"work_id": work_id + 1}).json()["total"] == 0
    assert analyst.get("/v1/disputes", params={"status": "resolved"}).json()["total"] == 0
    assert analyst.get("/v1/disputes", params={"until": filed["filed_at"]}).json()["total"] == 0
    assert analyst.get(f"/v1/matches/{decision['decision_id']}").json()["disputes"] == [filed]

    resolution = f"/v1/disputes/{filed['dispute_id']}/resolution"
    assert_error(analyst.post(resolution, json={"outcome": "shrug", "note": "n"}), 422, "validation_error")
    assert_error(uploader.post(resolution, json={"outcome": "release", "note": "n"}), 403, "forbidden")
    done = analyst.post(resolution, json={"outcome": "release_and_exclude", "note": "public-domain intro"})
    assert done.status_code == 200, done.text
    assert (done.json()["status"], done.json()["outcome"], done.json()["resolved_by"]) == (
        "resolved", "release_and_exclude", "analysts")
    assert_error(analyst.post(resolution, json={"outcome": "release", "note": "again"}), 409, "conflict")

    detail = analyst.get(f"/v1/matches/{decision['decision_id']}").json()
    assert detail["verdict"] == "allowed" and detail["works"][0]["outcome"] == "released"
    change = detail["history"][-1]
    assert (change["kind"], change["run_id"], change["actor"], change["old_verdict"], change["new_verdict"]) == (
        "dispute", filed["dispute_id"], "analysts", "blocked_copy", "allowed")
    assert "public-domain intro" in change["reason"]
    assert analyst.get("/v1/disputes").json()["total"] == 0

    # The matched reference span is excluded from the work's future claims.
    (exclusion,) = analyst.get(f"/v1/works/{work_id}/exclusions").json()["items"]
    span = decision["works"][0]["spans"][0]
    assert (exclusion["ref_start"], exclusion["ref_end"]) == (span["ref_start"], span["ref_end"])
    assert (exclusion["source"], exclusion["created_by"]) == (filed["dispute_id"], "analysts")
    again = post_file(uploader, "/v1/matches", excerpt_file(44, 10.0, 10.0)).json()
    assert (again["verdict"], again["works"]) == ("clear", []), again
    # A longer excerpt still claims what lies outside the excluded span, and only that.
    longer = post_file(uploader, "/v1/matches", excerpt_file(44, 10.0, 20.0)).json()
    assert longer["verdict"] == "blocked_copy", longer
    royalty = longer["works"][0]["royalty"]
    assert royalty["excluded_seconds"] == pytest.approx(span["query_end"] - span["query_start"], abs=0.5)
    assert royalty["covered_seconds"] + royalty["excluded_seconds"] == pytest.approx(20.0, abs=1.5)
    assert "excluded reference spans" in longer["works"][0]["reason"]


def test_a_reinstated_claim_stands_and_an_allowed_decision_has_nothing_to_dispute(service, excerpt_file, tmp_path):
    uploader, analyst = service["uploader"], service["analyst"]
    decision = _blocked(service, excerpt_file, start=0.0, seconds=8.0)
    filed = uploader.post(f"/v1/matches/{decision['decision_id']}/disputes",
                          json={"reason": "original_work", "text": "I wrote this"}).json()
    done = analyst.post(f"/v1/disputes/{filed['dispute_id']}/resolution",
                        json={"outcome": "reinstate", "note": "a straight copy of the label's recording"})
    assert done.status_code == 200 and done.json()["outcome"] == "reinstate", done.text
    detail = analyst.get(f"/v1/matches/{decision['decision_id']}").json()
    assert detail["verdict"] == "blocked_copy" and detail["works"][0]["outcome"] == "blocked"
    assert [(c["kind"], c["old_verdict"], c["new_verdict"]) for c in detail["history"]] == [
        ("dispute", "blocked_copy", "blocked_copy")]
    assert analyst.get("/v1/disputes", params={"status": "resolved", "reason": "original_work"}).json()["total"] == 1
    # Released on a second dispute: a decision may be disputed again once the first is closed.
    second = uploader.post(f"/v1/matches/{decision['decision_id']}/disputes",
                           json={"reason": "licence_held", "text": "licence attached to the ticket"})
    assert second.status_code == 201, second.text
    analyst.post(f"/v1/disputes/{second.json()['dispute_id']}/resolution", json={"outcome": "release", "note": "ok"})
    released = analyst.get(f"/v1/matches/{decision['decision_id']}").json()
    assert released["verdict"] == "allowed"
    # A rescan finds the same match again: the analyst's release stands (the claim is not silently reinstated).
    settings = service["admin"].settings
    report = rescan_uploads(settings.index_dir, settings.db_path, tmp_path / "recheck", settings.review_confidence,
                            apply=True, options=RescanOptions(progress=False))
    (record,) = [r for r in report.run.records if r["item"] == decision["decision_id"]]
    assert (record["status"], record["new_verdict"], record["changed"]) == ("ok", "allowed", False), record
    assert analyst.get(f"/v1/matches/{decision['decision_id']}").json()["verdict"] == "allowed"
    assert_error(uploader.post(f"/v1/matches/{decision['decision_id']}/disputes",
                               json={"reason": "fair_use", "text": "x"}), 422, "validation_error")


def test_exclusions_are_listed_added_and_removed_by_admins_and_analysts(service):
    admin, analyst, uploader = service["admin"], service["analyst"], service["uploader"]
    work = service["work"]
    url = f"/v1/works/{work['work_id']}/exclusions"
    span = {"ref_start": 30.0, "ref_end": 32.5, "reason": "a sample the label does not own"}
    assert_error(uploader.post(url, json=span), 403, "forbidden")
    assert_error(analyst.post(url, json={**span, "ref_end": 30.0}), 422, "validation_error")
    assert_error(analyst.post(url, json={**span, "ref_start": work["duration"] + 1, "ref_end": 9999}), 422,
                 "validation_error")
    assert_error(analyst.post("/v1/works/999999/exclusions", json=span), 404, "not_found")
    made = analyst.post(url, json=span)
    assert made.status_code == 201, made.text
    made = made.json()
    assert (made["source"], made["created_by"], made["ref_start"], made["ref_end"]) == ("api", "analysts", 30.0, 32.5)
    assert made in admin.get(url).json()["items"]
    assert admin.delete(f"{url}/{made['exclusion_id']}").status_code == 204
    assert made not in analyst.get(url).json()["items"]
    assert_error(admin.delete(f"{url}/{made['exclusion_id']}"), 404, "not_found")


def test_dispute_events_are_delivered_signed(service, excerpt_file, receiver):  # noqa: F811
    url, received = receiver
    hook = service["admin"].post("/v1/webhooks", json={"url": url, "events": ["dispute.filed", "dispute.resolved"],
                                                       "secret": SECRET})
    assert hook.status_code == 201, hook.text
    try:
        decision = _blocked(service, excerpt_file, start=20.0, seconds=6.0)
        filed = service["uploader"].post(f"/v1/matches/{decision['decision_id']}/disputes",
                                         json={"reason": "fair_use", "text": "a review quoting it"}).json()
        service["analyst"].post(f"/v1/disputes/{filed['dispute_id']}/resolution",
                                json={"outcome": "release", "note": "fair use: a short quotation"})
        events = []
        while len([e for e in events if e[0] == 200]) < 2:
            status, headers, body = received.get(timeout=30)  # the receiver fails the first POST: retried
            assert verify(SECRET, body, headers[SIGNATURE_HEADER])
            events.append((status, headers[EVENT_HEADER], json.loads(body)["data"]))
        delivered = {event: data for status, event, data in events if status == 200}
        assert delivered["dispute.filed"]["dispute_id"] == filed["dispute_id"]
        assert delivered["dispute.filed"]["verdict"] == "blocked_copy"
        resolved = delivered["dispute.resolved"]
        assert (resolved["outcome"], resolved["verdict"], resolved["resolved_by"]) == ("release", "allowed",
                                                                                        "analysts")
    finally:
        service["admin"].delete(f"/v1/webhooks/{hook.json()['webhook_id']}")

"""Ownership conflicts after registration, through real HTTP on a service of the module's own: an open conflict
holds the royalties of the span both works claim; an admin resolves it; a catalogue rescan lists conflicts, and
`rescan uploads --apply` re-decides past uploads and notifies the platform."""

from __future__ import annotations

import csv
import io
import json
import sqlite3

import httpx
import pytest
from service_helpers import LICENSEE, assert_error, post_file, register
from test_rights_webhooks import SECRET, receiver  # noqa: F401 (receiver is a fixture)

from refrain.rescan import RescanOptions, rescan_catalogue, rescan_uploads
from refrain.service.routers.analyst import COOKIE
from refrain.service.db import ServiceDB
from refrain.service.webhooks import EVENT_HEADER, SIGNATURE_HEADER, verify

QUIET = RescanOptions(progress=False)


@pytest.fixture(scope="module")
def service(private_admin, songs, excerpt_file):
    """Song 30 (copies allowed, royalty 0.5) and, registered explicitly as a conflict, its 12-22 s excerpt
    claimed by another label (default policy: copies denied); an uploader and an analyst client."""
    admin = private_admin
    original = register(admin, songs[30].path, "Song 30", "Label 30").json()
    assert admin.put(f"/v1/works/{original['work_id']}/policy",
                     json={"copy": "allow", "remix": "deny", "cover": "deny", "royalty_share": 0.5}).status_code == 200
    claimed = register(admin, excerpt_file(30, 12.0, 10.0), "Song 30 (claimed)", "Other Label", conflict="true")
    assert claimed.status_code == 201, claimed.text
    (conflict,) = admin.get("/v1/conflicts").json()["items"]
    db = ServiceDB(admin.settings.db_path)
    keys = {"uploader": db.create_key("uploader", LICENSEE)[0], "analyst": db.create_key("analyst", "analysts")[0]}
    db.close()
    clients = {role: httpx.Client(base_url=admin.base_url, headers={"X-API-Key": key}, timeout=120)
               for role, key in keys.items()}
    try:
        yield {"admin": admin, "original": original, "claimed": claimed.json(), "conflict": conflict, **clients}
    finally:
        for client in clients.values():
            client.close()


def _lines(decision: dict) -> dict[int, dict]:
    return {w["work_id"]: w for w in decision["works"]}


def test_an_open_conflict_holds_the_royalties_of_its_span_until_an_admin_resolves_it(service, excerpt_file,
                                                                                     receiver, tmp_path):  # noqa: F811
    admin, analyst, uploader = service["admin"], service["analyst"], service["uploader"]
    original, claimed, conflict = service["original"]["work_id"], service["claimed"]["work_id"], service["conflict"]
    inside = post_file(uploader, "/v1/matches", excerpt_file(30, 14.0, 6.0)).json()
    lines = _lines(inside)
    assert set(lines) == {original, claimed}, inside
    assert inside["verdict"] == "blocked_copy"  # the newer claim's default policy denies copies
    assert all(line["royalty"]["held"] and line["royalty"]["held_by_conflicts"] == [conflict["conflict_id"]]
               for line in lines.values())
    outside = post_file(uploader, "/v1/matches", excerpt_file(30, 0.0, 8.0)).json()
    assert outside["verdict"] == "allowed" and set(_lines(outside)) == {original}, outside
    assert not _lines(outside)[original]["royalty"]["held"] and outside["total_share_owed"] > 0
    stored = analyst.get(f"/v1/matches/{inside['decision_id']}").json()
    assert stored["works"] == inside["works"]
    export = analyst.get("/v1/reviews/export", params={"verdict": "blocked_copy"}).text
    assert {row["held"] for row in csv.DictReader(io.StringIO(export))} == {"True"}
    page_url = f"/analyst/decisions/{inside['decision_id']}"
    page = httpx.get(str(analyst.base_url).rstrip("/") + page_url, cookies={COOKIE: analyst.headers["X-API-Key"]})
    assert page.status_code == 200 and page.text.count('<strong class="held">held</strong>') == 2, page.text

    url, received = receiver
    hook = admin.post("/v1/webhooks", json={"url": url, "events": ["conflict.resolved", "decision.rescanned"],
                                            "secret": SECRET}).json()
    try:
        resolution = f"/v1/conflicts/{conflict['conflict_id']}/resolution"
        keep = {"keeps": "claimed_work", "note": "Label 30 holds the master; the other label licensed a copy"}
        assert_error(analyst.post(resolution, json=keep), 403, "forbidden")
        assert_error(admin.post(resolution, json={**keep, "keeps": "both"}), 422, "validation_error")
        assert_error(admin.post("/v1/conflicts/999999/resolution", json=keep), 404, "not_found")
        done = admin.post(resolution, json=keep)
        assert done.status_code == 200, done.text
        assert (done.json()["resolution"], done.json()["resolved_by"]) == ("claimed_work", "ops")
        assert done.json()["resolved_at"] is not None
        assert_error(admin.post(resolution, json=keep), 409, "conflict")
        assert admin.get("/v1/conflicts").json()["total"] == 0

        # The hold is lifted; the loser's side of the span is excluded from its work.
        after = analyst.get(f"/v1/matches/{inside['decision_id']}").json()
        assert not any(line["royalty"]["held"] for line in after["works"])
        page = httpx.get(str(analyst.base_url).rstrip("/") + page_url, cookies={COOKIE: analyst.headers["X-API-Key"]})
        assert page.status_code == 200 and 'class="held"' not in page.text
        (exclusion,) = admin.get(f"/v1/works/{claimed}/exclusions").json()["items"]
        assert exclusion["source"] == f"cfl_{conflict['conflict_id']}"
        assert exclusion["ref_start"] == pytest.approx(0.0, abs=1.0)
        assert exclusion["ref_end"] == pytest.approx(10.0, abs=1.0)
        status, headers, body = received.get(timeout=30)
        if status != 200:  # the receiver fails the first POST: retried
            status, headers, body = received.get(timeout=30)
        assert verify(SECRET, body, headers[SIGNATURE_HEADER]) and headers[EVENT_HEADER] == "conflict.resolved"
        data = json.loads(body)["data"]
        assert data["conflict_id"] == conflict["conflict_id"] and data["resolution"] == "claimed_work"
        assert inside["decision_id"] in data["released_decision_ids"]
        assert outside["decision_id"] not in data["released_decision_ids"]

        # Past uploads are re-decided by a rescan: the newer claim no longer counts, the verdict changes, and
        # the platform is told.
        settings = admin.settings
        report = rescan_uploads(settings.index_dir, settings.db_path, tmp_path / "uploads",
                                settings.review_confidence, apply=True, options=QUIET)
        assert report.applied == 1, [r for r in report.run.records if r.get("changed")]
        rescanned = analyst.get(f"/v1/matches/{inside['decision_id']}").json()
        assert rescanned["verdict"] == "allowed" and set(_lines(rescanned)) == {original}
        status, headers, body = received.get(timeout=30)
        assert status == 200 and verify(SECRET, body, headers[SIGNATURE_HEADER])
        sent = json.loads(body)
        assert sent["event"] == "decision.rescanned"
        assert (sent["data"]["decision_id"], sent["data"]["old_verdict"], sent["data"]["new_verdict"]) == (
            inside["decision_id"], "blocked_copy", "allowed")
        assert sent["data"]["run_id"] == report.run.state.run_id
    finally:
        admin.delete(f"/v1/webhooks/{hook['webhook_id']}")


def test_a_catalogue_rescan_lists_recorded_and_unrecorded_conflicts(service, tmp_path, run_refrain):
    settings = service["admin"].settings
    report = rescan_catalogue(settings.index_dir, tmp_path / "scan", QUIET)
    recorded = [c for c in report.conflicts if c["conflict_id"] == service["conflict"]["conflict_id"]]
    assert len(recorded) == 1 and recorded[0]["status"] in ("open", "resolved")
    assert not [c for c in report.conflicts if c["status"] == "unrecorded"]
    written = [json.loads(line) for line in (tmp_path / "scan" / "conflicts.jsonl").read_text().splitlines()]
    assert written == report.conflicts

    # A database from before the service refused copies: the same pair of works, no conflict recorded.
    with sqlite3.connect(settings.db_path) as db:
        db.execute("DELETE FROM work_conflicts")
    report = rescan_catalogue(settings.index_dir, tmp_path / "scan-again", QUIET)
    (found,) = report.conflicts
    assert (found["status"], found["conflict_id"]) == ("unrecorded", None)
    assert (found["work_id"], found["claimed_work_id"]) == (service["claimed"]["work_id"],
                                                            service["original"]["work_id"])
    assert found["kind"] in ("copy", "excerpt")

    printed = run_refrain("rescan", "catalogue", "--index", settings.index_dir, "--out", tmp_path / "cli-scan")
    assert printed.returncode == 0, printed.stderr
    assert (f"conflict (not recorded): work {found['work_id']} copies work {found['claimed_work_id']}"
            in printed.stdout), printed.stdout
    assert "1 ownership conflicts" in printed.stdout

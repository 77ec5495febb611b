"""Catalogue, policies, licences and keys (admin endpoints) through real HTTP."""

from __future__ import annotations

import pytest
from service_helpers import assert_error, post_file


def test_works_are_listed_and_fetched_with_their_policy(admin, live_service):
    listed = admin.get("/v1/works")
    assert listed.status_code == 200, listed.text
    by_id = {w["work_id"]: w for w in listed.json()["items"]}
    for name, work in live_service.works.items():
        assert by_id[work["work_id"]]["title"] == work["title"]
        fetched = admin.get(f"/v1/works/{work['work_id']}")
        assert fetched.status_code == 200 and fetched.json() == by_id[work["work_id"]]
    default = admin.get(f"/v1/works/{live_service.works['default']['work_id']}/policy").json()
    assert default == {"copy": "deny", "remix": "deny", "cover": "deny", "royalty_share": 0.0,
                       "conditions": [], "is_default": True}
    work = live_service.works["free"]
    assert work["artists"] == ["Ada", "Band 33"] and work["isrc"] == "GBABC2600033"
    assert work["duration"] == pytest.approx(32.0, abs=0.01)
    page = admin.get("/v1/works", params={"limit": 1, "offset": 1}).json()
    assert page["total"] >= 3 and len(page["items"]) == 1
    assert page["items"][0]["work_id"] == sorted(by_id)[1]


def test_uploading_the_same_recording_again_is_a_conflict(admin, live_service, songs):
    done = post_file(admin, "/v1/works", songs[30].path, title="Again", artists="Ada", rights_holder="X")
    body = assert_error(done, 409, "conflict")
    assert f"work {live_service.works['remixable']['work_id']}" in body["message"]


def test_a_work_is_added_matched_and_deleted_from_the_index(admin, live_service, songs, excerpt_file):
    made = post_file(admin, "/v1/works", songs[49].path, title="Temporary", artists="Bo",
                     rights_holder="Takedown Inc.")
    assert made.status_code == 201, made.text
    work = made.json()
    with live_service.client("uploader") as uploader:
        found = post_file(uploader, "/v1/matches", excerpt_file(49, 6.0, 10.0)).json()
        assert found["verdict"] == "blocked_copy" and found["works"][0]["work_id"] == work["work_id"]
        assert admin.delete(f"/v1/works/{work['work_id']}").status_code == 204
        assert post_file(uploader, "/v1/matches", excerpt_file(49, 6.0, 10.0)).json()["verdict"] == "clear"
    assert_error(admin.get(f"/v1/works/{work['work_id']}"), 404, "not_found")
    assert_error(admin.delete(f"/v1/works/{work['work_id']}"), 404, "not_found")
    with live_service.client() as anonymous:
        assert anonymous.get("/v1/health").json()["tracks"] == len(live_service.works)


@pytest.mark.parametrize("fields, problem", [
    ({"artists": "A", "rights_holder": "R"}, "title is required"),
    ({"title": "T", "rights_holder": "R"}, "artists is required"),
    ({"title": "T", "artists": "A"}, "rights_holder is required"),
    ({"title": "T", "artists": "A", "rights_holder": "R", "isrc": "nope"}, "isrc must be"),
])
def test_work_metadata_is_validated(fields, problem, admin, songs):
    body = assert_error(post_file(admin, "/v1/works", songs[41].path, **fields), 422, "validation_error")
    assert problem in body["message"]


def test_a_policy_is_replaced_and_validated(admin, live_service):
    work_id = live_service.works["free"]["work_id"]
    new = {"copy": "licence_required", "remix": "allow", "cover": "deny", "royalty_share": 0.25}
    original = {k: v for k, v in live_service.works["free"]["policy"].items() if k != "is_default"}
    try:
        done = admin.put(f"/v1/works/{work_id}/policy", json=new)
        assert done.status_code == 200 and done.json() == {**new, "conditions": [], "is_default": False}
        assert admin.get(f"/v1/works/{work_id}").json()["policy"] == {**new, "conditions": [], "is_default": False}
    finally:
        assert admin.put(f"/v1/works/{work_id}/policy", json=original).status_code == 200
    for bad in ({**new, "copy": "maybe"}, {**new, "royalty_share": 1.5}, {"copy": "deny"},
                {**new, "extra": 1}):
        assert_error(admin.put(f"/v1/works/{work_id}/policy", json=bad), 422, "validation_error")
    assert_error(admin.put("/v1/works/99999/policy", json=new), 404, "not_found")
    assert_error(admin.get("/v1/works/99999/policy"), 404, "not_found")


def test_licences_are_granted_listed_fetched_and_revoked(admin, live_service):
    work_id = live_service.works["default"]["work_id"]
    assert_error(admin.post("/v1/licences", json={"work_id": work_id, "licensee": "lister", "uses": ["cover"]}),
                 404, "not_found")  # a licence goes to a principal that exists
    assert admin.post("/v1/principals", json={"name": "lister", "kind": "uploader"}).status_code == 201
    made = admin.post("/v1/licences", json={"work_id": work_id, "licensee": "lister", "uses": ["cover", "remix"],
                                            "valid_until": "2099-01-01T00:00:00Z"})
    assert made.status_code == 201, made.text
    licence = made.json()
    assert licence["uses"] == ["cover", "remix"] and licence["status"] == "active"
    assert admin.get(f"/v1/licences/{licence['licence_id']}").json() == licence
    listed = admin.get("/v1/licences", params={"work_id": work_id, "licensee": "lister"}).json()
    assert listed["total"] == 1 and listed["items"] == [licence]
    revoked = admin.delete(f"/v1/licences/{licence['licence_id']}").json()
    assert revoked["status"] == "revoked" and revoked["revoked_at"]
    assert admin.delete(f"/v1/licences/{licence['licence_id']}").json() == revoked  # idempotent
    assert_error(admin.get("/v1/licences/lic_unknown"), 404, "not_found")
    assert_error(admin.delete("/v1/licences/lic_unknown"), 404, "not_found")
    assert_error(admin.post("/v1/licences", json={"work_id": 99999, "licensee": "x", "uses": ["copy"]}),
                 404, "not_found")
    for bad in ({"work_id": work_id, "licensee": "x", "uses": ["sell"]},
                {"work_id": work_id, "licensee": "x", "uses": []},
                {"work_id": work_id, "licensee": "", "uses": ["copy"]},
                {"work_id": work_id, "licensee": "x", "uses": ["copy"], "valid_until": "2099-01-01T00:00:00"},
                {"work_id": "one", "licensee": "x", "uses": ["copy"]}):
        assert_error(admin.post("/v1/licences", json=bad), 422, "validation_error")


def test_keys_are_created_listed_used_and_revoked(admin, live_service):
    made = admin.post("/v1/keys", json={"role": "uploader", "principal": "short-lived-studio", "label": "short-lived"})
    assert made.status_code == 201, made.text
    key = made.json()
    assert key["key"].startswith(key["prefix"]) and len(key["key"]) > 40
    listed = admin.get("/v1/keys").json()["items"]
    entry = next(k for k in listed if k["prefix"] == key["prefix"])
    assert entry["role"] == "uploader" and entry["principal"] == "short-lived-studio" and "key" not in entry
    principals = {p["name"]: p["kind"] for p in admin.get("/v1/principals").json()["items"]}
    assert principals["short-lived-studio"] == "uploader"  # made with its first key
    # A principal's kind is fixed: an admin key cannot act for an uploader organisation.
    assert_error(admin.post("/v1/keys", json={"role": "admin", "principal": "short-lived-studio"}), 409, "conflict")
    assert_error(admin.post("/v1/keys", json={"role": "uploader"}), 422, "validation_error")  # no principal
    with live_service.client() as client:
        headers = {"X-API-Key": key["key"]}
        assert_error(client.get("/v1/matches", headers=headers), 403, "forbidden")  # live, wrong role
        assert admin.delete(f"/v1/keys/{key['prefix']}").json()["revoked_at"]
        assert_error(client.get("/v1/matches", headers=headers), 401, "unauthorized")
    assert_error(admin.delete("/v1/keys/rk_nothere"), 404, "not_found")
    assert_error(admin.post("/v1/keys", json={"role": "root"}), 422, "validation_error")

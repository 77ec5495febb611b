"""Rights-holder accounts: the role's migration, its keys from the CLI and the API, and its default policy."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from service_helpers import assert_error

from refrain.service import db as service_db
from refrain.service.db import ServiceDB, WorkEvidence, hash_key

CONSENT = {"copy": "deny", "remix": "licence_required", "cover": "deny", "royalty_share": 0.4}


def test_a_database_from_before_rights_holders_keeps_its_keys_and_accepts_the_new_role(tmp_path):
    path = tmp_path / "old.sqlite"
    widened = next(i for i, script in enumerate(service_db._MIGRATIONS) if "api_keys_widened" in script)
    raw = sqlite3.connect(path)
    for number, script in enumerate(service_db._MIGRATIONS[:widened], start=1):
        raw.executescript(f"BEGIN; {script}; PRAGMA user_version={number}; COMMIT;")
    raw.execute("INSERT INTO principals (name, kind, created_at) VALUES ('ops', 'admin', '2026-01-01T00:00:00+00:00')")
    raw.execute("INSERT INTO api_keys (prefix, key_hash, role, label, created_at, principal_id)"
                " VALUES ('rk_oldadmin1', ?, 'admin', 'old', '2026-01-01T00:00:00+00:00', 1)", (hash_key("rk_old"),))
    raw.commit()
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        raw.execute("INSERT INTO api_keys (prefix, key_hash, role, created_at, principal_id)"
                    " VALUES ('rk_x', 'h', 'rights_holder', '2026-01-01T00:00:00+00:00', 1)")
    raw.close()
    db = ServiceDB(path)
    try:
        kept = db.authenticate("rk_old")
        assert (kept.prefix, kept.role, kept.principal, kept.label) == ("rk_oldadmin1", "admin", "ops", "old")
        key, record = db.create_key("rights_holder", "artist-a")
        assert db.authenticate(key).role == "rights_holder"
        assert db.get_principal("artist-a").kind == "rights_holder"
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            db._execute("INSERT INTO api_keys (prefix, key_hash, role, created_at, principal_id)"
                        " VALUES ('rk_y', 'h2', 'root', '2026-01-01T00:00:00+00:00', 1)")
    finally:
        db.close()


def test_the_cli_makes_a_rights_holder_key(tmp_path, run_refrain):
    path = tmp_path / "service.sqlite"
    made = run_refrain("keys", "create", "--role", "rights_holder", "--principal", "artist-x", "--db", path)
    assert made.returncode == 0, made.stderr
    db = ServiceDB(path)
    try:
        record = db.authenticate(made.stdout.strip())
        assert (record.role, record.principal, db.get_principal("artist-x").kind) == ("rights_holder", "artist-x",
                                                                                      "rights_holder")
    finally:
        db.close()


def test_a_rights_holder_sets_its_own_default_policy_only(private_admin):
    made = private_admin.post("/v1/keys", json={"role": "rights_holder", "principal": "artist-d"})
    assert made.status_code == 201 and made.json()["role"] == "rights_holder", made.text
    holder = {"X-API-Key": made.json()["key"]}
    assert private_admin.post("/v1/principals", json={"name": "studio-z", "kind": "uploader"}).status_code == 201
    assert_error(private_admin.post("/v1/keys", json={"role": "rights_holder", "principal": "studio-z"}), 409)

    assert private_admin.get("/v1/works/default-policy", headers=holder).json()["is_default"]
    done = private_admin.put("/v1/works/default-policy", json=CONSENT, headers=holder)
    assert done.status_code == 200 and {k: done.json()[k] for k in CONSENT} == CONSENT
    seen = private_admin.get("/v1/works/default-policy", params={"principal": "artist-d"}).json()  # the admin
    assert seen["royalty_share"] == 0.4 and not seen["is_default"]
    assert_error(private_admin.put("/v1/works/default-policy", json=CONSENT, params={"principal": "artist-e"},
                                   headers=holder), 403, "forbidden")
    assert_error(private_admin.put("/v1/works/default-policy", json=CONSENT), 422, "validation_error")
    assert_error(private_admin.get("/v1/works/default-policy", params={"principal": "nobody"}), 404, "not_found")
    bad = {**CONSENT, "conditions": [{"use": "copy"}, {"use": "copy"}]}
    assert_error(private_admin.put("/v1/works/default-policy", json=bad, headers=holder), 422)
    listed = private_admin.get("/v1/works", headers=holder)
    assert listed.status_code == 200 and listed.json()["items"] == []  # owns nothing yet
    assert_error(private_admin.get("/v1/licences", headers=holder), 422, "validation_error")
    assert_error(private_admin.get("/v1/royalties", params={"holder": "someone"}, headers=holder), 403)
    assert_error(private_admin.delete("/v1/works/99999", headers=holder), 403, "forbidden")  # admins delete


def test_the_new_routes_check_keys_and_roles_before_anything_else(private_admin):
    keys = {role: {"X-API-Key": private_admin.post("/v1/keys", json={"role": role, "principal": f"p-{role}"})
                   .json()["key"]} for role in ("uploader", "analyst", "rights_holder")}
    publish = ("POST", "/v1/matches/dec_unknown/publish", {"title": "t", "artists": ["a"]})
    lineage = ("GET", "/v1/works/99999/lineage", None)
    royalties = ("GET", "/v1/royalties?holder=p-analyst", None)
    default = ("PUT", "/v1/works/default-policy", CONSENT)
    for method, path, body in (publish, lineage, royalties, default):
        assert_error(private_admin.request(method, path, json=body, headers={"X-API-Key": ""}), 401, "unauthorized")
    for (method, path, body), role in ((publish, "analyst"), (publish, "rights_holder"), (royalties, "uploader"),
                                       (royalties, "rights_holder"), (default, "uploader"), (default, "analyst")):
        assert_error(private_admin.request(method, path, json=body, headers=keys[role]), 403, "forbidden")
    assert_error(private_admin.request(*publish[:2], json=publish[2], headers=keys["uploader"]), 404, "not_found")
    assert_error(private_admin.post(publish[1], json={"title": "", "artists": []}, headers=keys["uploader"]), 422,
                 "validation_error")
    assert_error(private_admin.get(lineage[1], headers=keys["analyst"]), 404, "not_found")
    assert private_admin.get(royalties[1], headers=keys["analyst"]).json()["lines"] == []
    assert_error(private_admin.get("/v1/royalties", params={"holder": "x", "since": "2026-02-01",
                                                            "until": "2026-01-01"}), 422, "validation_error")


def test_a_copy_is_not_published_as_a_derivative(private_admin, songs):
    song = songs[49]
    with open(song.path, "rb") as handle:
        work = private_admin.post("/v1/works", files={"file": (song.path.name, handle, "audio/wav")},
                                  data={"title": "Free song", "artists": ["F"], "rights_holder": "Label F"}).json()
    free = {"copy": "allow", "remix": "allow", "cover": "allow", "royalty_share": 0.1}
    assert private_admin.put(f"/v1/works/{work['work_id']}/policy", json=free).status_code == 200
    uploader = {"X-API-Key": private_admin.post("/v1/keys", json={"role": "uploader", "principal": "copier"})
                .json()["key"]}
    with open(song.path, "rb") as handle:
        decided = private_admin.post("/v1/matches", files={"file": ("same.wav", handle, "audio/wav")},
                                     headers=uploader).json()
    assert decided["verdict"] == "allowed" and decided["works"][0]["kind"] == "copy", decided
    refused = private_admin.post(f"/v1/matches/{decided['decision_id']}/publish",
                                 json={"title": "Mine", "artists": ["Copier"]}, headers=uploader)
    assert "copy of work" in assert_error(refused, 409, "conflict")["message"]


def test_a_work_filter_keeps_the_decisions_that_claim_the_work_through_a_lineage(tmp_path):
    db = ServiceDB(tmp_path / "service.sqlite")
    try:
        _, uploader = db.create_key("uploader", "studio")
        now = datetime.now(timezone.utc)
        # Work 2 is a published remix of work 1: one upload matched 1 itself, one only 2 (claiming 1 through it).
        bodies = {"dec_direct": {"works": [{"work_id": 1}], "lineage": []},
                  "dec_through": {"works": [{"work_id": 2}], "lineage": [{"work_id": 1, "via_work_id": 2}]},
                  "dec_other": {"works": [{"work_id": 3}], "lineage": []}}
        for number, (decision_id, body) in enumerate(bodies.items()):
            evidence = [WorkEvidence(track_id=w["work_id"], work_id=w["work_id"], points=np.zeros((0, 2), np.float32),
                                     spectrogram_png=None, spectrogram_start=None, spectrogram_end=None)
                        for w in body["works"]]
            db.add_decision(decision_id, now + timedelta(seconds=number), "review", None, uploader, "x.wav",
                            {**body, "verdict": "review"}, evidence)
        listed = {work_id: sorted(d.decision_id for d in db.list_decisions(work_id, None, None, 10, 0)[0])
                  for work_id in (1, 2, 3)}
        assert listed == {1: ["dec_direct", "dec_through"], 2: ["dec_through"], 3: ["dec_other"]}
        assert db.list_decisions(1, None, None, 10, 0)[1] == 2
    finally:
        db.close()

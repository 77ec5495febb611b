"""`Idempotency-Key` on `POST /v1/matches` through real HTTP: a retry gets the decision already made."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

from service_helpers import assert_error, post_file

from refrain.service.db import IdempotentDecision, ServiceDB, utc_now


def _post(client, path, key: str, **data):
    with open(path, "rb") as handle:
        return client.post("/v1/matches", files={"file": (path.name, handle, "audio/wav")}, data=data,
                           headers={"Idempotency-Key": key})


def test_a_retry_with_the_same_key_and_bytes_returns_the_same_decision(uploader, analyst, excerpt_file):
    key, uploader_id = "retry-" + uuid.uuid4().hex, "idem-" + uuid.uuid4().hex[:8]
    path = excerpt_file(30, 8.0, 10.0)
    first = _post(uploader, path, key, uploader_id=uploader_id)
    assert first.status_code == 200, first.text
    assert "Idempotent-Replayed" not in first.headers
    again = _post(uploader, path, key, uploader_id=uploader_id)
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true", again.text
    assert again.json() == first.json()
    listed = analyst.get("/v1/matches", params={"limit": 500}).json()["items"]
    assert [d["decision_id"] for d in listed if d["uploader_id"] == uploader_id] == [first.json()["decision_id"]]

    # Other bytes under the same key: refused, nothing stored.
    assert_error(_post(uploader, excerpt_file(30, 20.0, 10.0), key), 409, "idempotency_key_reused")
    # No key, or another key: a new decision.
    assert post_file(uploader, "/v1/matches", path).json()["decision_id"] != first.json()["decision_id"]
    assert _post(uploader, path, key + "-2").json()["decision_id"] != first.json()["decision_id"]


def test_concurrent_requests_with_one_key_make_one_decision(live_service, excerpt_file):
    key = "race-" + uuid.uuid4().hex
    path = excerpt_file(33, 4.0, 10.0)

    def send(_):
        with live_service.client("uploader") as client:
            return _post(client, path, key)

    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(send, range(3)))
    assert [a.status_code for a in answers] == [200, 200, 200], [a.text for a in answers]
    assert len({a.json()["decision_id"] for a in answers}) == 1
    assert sum(a.headers.get("Idempotent-Replayed") == "true" for a in answers) == 2


def test_a_bad_key_or_an_async_upload_with_a_key_is_refused(uploader, excerpt_file):
    path = excerpt_file(30, 8.0, 10.0)
    assert_error(_post(uploader, path, "has space"), 422, "validation_error")
    assert_error(_post(uploader, path, "k" * 201), 422, "validation_error")
    with open(path, "rb") as handle:
        refused = uploader.post("/v1/matches", params={"mode": "async"}, headers={"Idempotency-Key": "a"},
                                files={"file": (path.name, handle, "audio/wav")})
    assert_error(refused, 422, "validation_error")


def test_a_request_that_loses_the_race_stores_nothing_and_gets_the_winner(uploader, live_service, excerpt_file):
    key = "lost-" + uuid.uuid4().hex
    first = _post(uploader, excerpt_file(30, 8.0, 10.0), key).json()
    db = ServiceDB(live_service.settings.db_path)
    try:
        # What the losing request does once its analysis is done: the key is taken by then.
        record = db.authenticate(live_service.keys["uploader"])
        earlier = db.add_decision("dec_lost_race", utc_now(), "clear", None, record, "x.wav", {}, [], None,
                                  idempotency=(key, first["fingerprint"]["sha256"]))
        assert earlier == IdempotentDecision(first["decision_id"], first["fingerprint"]["sha256"])
        assert db.get_decision("dec_lost_race") is None
    finally:
        db.close()

"""Webhooks through real HTTP: an admin registers a receiver on loopback, a resolution reaches it signed."""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from service_helpers import assert_error, post_file

from refrain.service.webhooks import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, DeliveryLog, verify

SECRET = "receiver-secret-" + "x" * 8


@pytest.fixture
def receiver():
    """A loopback HTTP server: answers 500 to the first POST (to be retried), 200 after; yields (url, received)."""
    received: queue.Queue = queue.Queue()
    answered = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            status = 500 if not answered else 200
            answered.append(status)
            received.put((status, dict(self.headers), body))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hooks", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_a_resolution_is_delivered_signed_retried_and_logged(admin, analyst, uploader, live_service, receiver,
                                                             excerpt_file):
    url, received = receiver
    assert_error(admin.post("/v1/webhooks", json={"url": url, "events": ["decision.resolved"], "secret": "short"}),
                 422, "validation_error")
    assert_error(admin.post("/v1/webhooks", json={"url": "ftp://x/y", "events": ["decision.resolved"],
                                                  "secret": SECRET}), 422, "validation_error")
    assert_error(analyst.post("/v1/webhooks", json={"url": url, "events": ["decision.resolved"], "secret": SECRET}),
                 403, "forbidden")
    made = admin.post("/v1/webhooks", json={"url": url, "events": ["decision.resolved"], "secret": SECRET})
    assert made.status_code == 201, made.text
    hook = made.json()
    assert "secret" not in hook and hook in admin.get("/v1/webhooks").json()["items"]
    try:
        decision = post_file(uploader, "/v1/matches", excerpt_file(30, 8.0, 10.0),
                             uploader_id="hooks-" + uuid.uuid4().hex[:6]).json()
        track_id = decision["works"][0]["track_id"]
        done = analyst.post(f"/v1/matches/{decision['decision_id']}/resolution",
                            json={"works": [{"track_id": track_id, "resolution": "allow"}], "note": "licence on file"})
        assert done.status_code == 200, done.text

        first_status, _, first_body = received.get(timeout=30)
        status, headers, body = received.get(timeout=30)  # the retry, after the receiver's 500
        assert (first_status, status) == (500, 200) and body == first_body
        assert verify(SECRET, body, headers[SIGNATURE_HEADER])
        assert not verify("another-secret-xxxxxxxx", body, headers[SIGNATURE_HEADER])
        assert headers[EVENT_HEADER] == "decision.resolved"
        sent = json.loads(body)
        assert sent["event"] == "decision.resolved" and sent["delivery_id"] == headers[DELIVERY_HEADER]
        data = sent["data"]
        assert (data["decision_id"], data["old_verdict"], data["new_verdict"], data["actor"], data["reason"]) == (
            decision["decision_id"], "blocked_copy", "allowed", "analysts", "licence on file")

        log = DeliveryLog(live_service.settings.jobs_db_path)
        try:
            deadline = time.monotonic() + 10
            while len(log.attempts(sent["delivery_id"])) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert [(a["attempt"], a["status"]) for a in log.attempts(sent["delivery_id"])] == [(1, 500), (2, 200)]
        finally:
            log.close()
    finally:
        assert admin.delete(f"/v1/webhooks/{hook['webhook_id']}").status_code == 204
    assert_error(admin.delete(f"/v1/webhooks/{hook['webhook_id']}"), 404, "not_found")

"""Asynchronous uploads: 202 and a job, decided in the background, a signed webhook, and jobs that outlive
the process."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from conftest import _ServerThread, free_port
from service_helpers import assert_error, post_file

from refrain.service import webhooks
from refrain.cluster import ShardUnavailableError
from refrain.service.app import create_app
from refrain.service.core import MatchService
from refrain.service.jobs import JobRunner, JobStore, _process_started
from refrain.service.settings import ServiceSettings

SECRET = "webhook-test-secret"


class Receiver:
    """A webhook receiver on 127.0.0.1 that answers ``statuses`` in turn (then 204) and keeps every request."""

    def __init__(self, statuses=()):
        self.statuses = list(statuses)
        self.requests: list[tuple[dict, bytes]] = []
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.arrived:
                    receiver.requests.append((dict(self.headers), body))
                    status = receiver.statuses.pop(0) if receiver.statuses else 204
                    receiver.arrived.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/refrain"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, count: int, timeout: float = 60.0) -> list[tuple[dict, bytes]]:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.requests) >= count, timeout), self.requests
            return list(self.requests)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made = []

    def make(statuses=()):
        made.append(Receiver(statuses))
        return made[-1]

    yield make
    for r in made:
        r.close()


@pytest.fixture
def settings(tmp_path):
    return ServiceSettings(index_dir=tmp_path / "index", webhook_secret=SECRET, webhook_backoff_seconds=0.05)


class Running:
    """A service on ``settings`` with an admin and an uploader key, until :meth:`stop`."""

    def __init__(self, settings: ServiceSettings, keys: dict[str, str] | None = None):
        self.server = _ServerThread(create_app(settings), free_port())
        self.server.start()
        self.url = f"http://127.0.0.1:{self.server.server.config.port}"
        self.keys = keys or {}

    def client(self, role: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"X-API-Key": self.keys[role]}, timeout=60)

    def stop(self):
        self.server.stop()


@pytest.fixture
def running(settings, run_refrain, songs):
    """The service with work `Song 30` (default policy: copies blocked) and admin/uploader/analyst keys."""
    made = run_refrain("keys", "create", "--role", "admin", "--principal", "ops", "--index", settings.index_dir)
    assert made.returncode == 0, made.stderr
    service = Running(settings, {"admin": made.stdout.strip()})
    try:
        with service.client("admin") as admin:
            for role in ("uploader", "analyst"):
                made = admin.post("/v1/keys", json={"role": role, "principal": f"{role} team"})
                service.keys[role] = made.json()["key"]
            work = post_file(admin, "/v1/works", songs[30].path, title="Song 30", artists="Ada",
                             rights_holder="Label 30")
            assert work.status_code == 201, work.text
        yield service
    finally:
        service.stop()


def poll(client: httpx.Client, job_id: str, webhook: bool = False, timeout: float = 60.0) -> dict:
    """The job once finished (and, if ``webhook``, once its webhook's delivery is recorded)."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}")
        assert job.status_code == 200, job.text
        finished = job.json()["state"] in ("succeeded", "failed") and (job.json()["webhook"] or not webhook)
        if finished or time.monotonic() > deadline:
            return job.json()
        time.sleep(0.05)


def test_an_async_upload_is_202_then_decided_and_its_signed_webhook_arrives_after_a_retry(
        running, receiver, excerpt_file):
    hook = receiver(statuses=[503])  # the receiver fails once: the delivery is retried
    with running.client("uploader") as uploader:
        accepted = post_file(uploader, f"/v1/matches?mode=async&callback_url={hook.url}",
                             excerpt_file(30, 5.0, 12.0), uploader_id="user-9")
        assert accepted.status_code == 202, accepted.text
        job = accepted.json()
        assert job["state"] in ("queued", "running", "succeeded") and job["callback_url"] == hook.url
        assert accepted.headers["Location"] == f"/v1/jobs/{job['job_id']}"
        (first, second) = hook.wait(2)
        done = poll(uploader, job["job_id"], webhook=True)
    assert done["state"] == "succeeded" and done["verdict"] == "blocked_copy", done
    assert done["decision_id"].startswith("dec_") and done["error"] is None

    for headers, body in (first, second):
        assert webhooks.verify(SECRET, body, headers["X-Refrain-Signature"])
        assert not webhooks.verify("another secret", body, headers["X-Refrain-Signature"])
        assert headers["X-Refrain-Event"] == "match.completed"
    event = json.loads(second[1])
    assert event["event"] == "match.completed" and event["delivery_id"] == second[0]["X-Refrain-Delivery"]
    assert event["data"]["job_id"] == job["job_id"] and event["data"]["verdict"] == "blocked_copy"
    assert event["data"]["decision"]["decision_id"] == done["decision_id"]
    assert event["data"]["decision"]["uploader_id"] == "user-9"
    assert event["data"]["decision"]["works"][0]["title"] == "Song 30"
    assert done["webhook"] == {"delivery_id": event["delivery_id"], "url": hook.url, "event": "match.completed",
                               "delivered": True, "attempts": 2, "last_status": 204, "last_error": None}

    with running.client("admin") as admin:
        metrics = admin.get("/metrics").text
    assert 'refrain_webhook_deliveries_total{event="match.completed",outcome="delivered"} 1.0' in metrics
    assert 'refrain_jobs{state="succeeded"} 1.0' in metrics and "refrain_uploads_total 1.0" in metrics

    with running.client("analyst") as analyst:
        stored = analyst.get(f"/v1/matches/{done['decision_id']}")
        assert stored.status_code == 200 and stored.json()["verdict"] == "blocked_copy"
        assert analyst.get(f"/v1/jobs/{job['job_id']}").status_code == 200  # analysts see every job


def test_a_failed_job_records_the_error_a_synchronous_upload_gets(running, upload_dir, receiver):
    hook = receiver()
    noise = upload_dir / "not-audio.mp3"
    noise.write_bytes(b"this is not audio at all" * 100)
    with running.client("uploader") as uploader:
        accepted = post_file(uploader, f"/v1/matches?mode=async&callback_url={hook.url}", noise)
        assert accepted.status_code == 202
        done = poll(uploader, accepted.json()["job_id"], webhook=True)
    assert done["state"] == "failed" and done["decision_id"] is None
    assert done["error"]["status"] == 415 and done["error"]["code"] == "undecodable_audio"
    assert "not-audio.mp3" in done["error"]["message"]
    ((headers, body),) = hook.wait(1)
    assert headers["X-Refrain-Event"] == "match.failed" and json.loads(body)["data"]["error"] == done["error"]


def test_a_job_whose_catalogue_shard_is_down_fails_with_503_not_a_verdict(running, excerpt_file, monkeypatch):
    def shard_down(*args, **kwargs):
        raise ShardUnavailableError([2], 10.0)

    monkeypatch.setattr(MatchService, "match_upload", shard_down)
    with running.client("uploader") as uploader:
        accepted = post_file(uploader, "/v1/matches?mode=async", excerpt_file(30, 5.0, 12.0))
        assert accepted.status_code == 202
        done = poll(uploader, accepted.json()["job_id"])
    assert done["state"] == "failed" and done["decision_id"] is None and done.get("verdict") is None
    assert done["error"]["status"] == 503 and done["error"]["code"] == "catalogue_unavailable"
    assert "shard 2" in done["error"]["message"]


def test_async_uploads_are_refused_like_sync_ones_and_jobs_are_private_to_their_uploader(
        running, settings, excerpt_file):
    with running.client("uploader") as uploader, running.client("admin") as admin:
        assert_error(post_file(uploader, "/v1/matches?mode=async&callback_url=ftp://x/y",
                               excerpt_file(30, 5.0, 12.0)), 422, "validation_error")
        assert_error(post_file(uploader, "/v1/matches?callback_url=http://x/y", excerpt_file(30, 5.0, 12.0)),
                     422, "validation_error")
        assert_error(uploader.post("/v1/matches?mode=async", content=b"x",
                                   headers={"Content-Type": "text/plain"}), 415)
        assert_error(uploader.get("/v1/jobs/job_unknown"), 404, "not_found")
        other = admin.post("/v1/keys", json={"role": "uploader", "principal": "another studio"}).json()["key"]
        job = post_file(uploader, "/v1/matches?mode=async", excerpt_file(30, 5.0, 12.0)).json()
        with httpx.Client(base_url=running.url, headers={"X-API-Key": other}) as stranger:
            assert_error(stranger.get(f"/v1/jobs/{job['job_id']}"), 404, "not_found")
        assert poll(uploader, job["job_id"])["state"] == "succeeded"
    assert list(settings.jobs_dir.iterdir()) == []  # finished jobs leave no upload behind


def test_a_callback_needs_a_webhook_secret(tmp_path, run_refrain, excerpt_file):
    settings = ServiceSettings(index_dir=tmp_path / "index")
    made = run_refrain("keys", "create", "--role", "uploader", "--principal", "studio", "--index", settings.index_dir)
    service = Running(settings, {"uploader": made.stdout.strip()})
    try:
        with service.client("uploader") as uploader:
            refused = post_file(uploader, "/v1/matches?mode=async&callback_url=http://127.0.0.1:9/x",
                                excerpt_file(30, 5.0, 12.0))
            assert "webhook_secret" in assert_error(refused, 422, "validation_error")["message"]
    finally:
        service.stop()


def test_a_callback_may_only_name_the_configured_hosts(tmp_path, run_refrain, excerpt_file, receiver):
    hook = receiver()  # listens on 127.0.0.1
    settings = ServiceSettings(index_dir=tmp_path / "index", webhook_secret=SECRET,
                               callback_hosts=["hooks.example.com", ".pipeline.example", "127.0.0.1"])
    made = run_refrain("keys", "create", "--role", "uploader", "--principal", "studio", "--index", settings.index_dir)
    service = Running(settings, {"uploader": made.stdout.strip()})
    try:
        with service.client("uploader") as uploader:
            for url in ("http://10.0.0.7/admin", "http://localhost:8080/x", "https://hooks.example.com.evil.test/x",
                        "https://evilpipeline.example/x"):
                refused = post_file(uploader, f"/v1/matches?mode=async&callback_url={url}", excerpt_file(30, 5.0, 12.0))
                assert "callback_hosts" in assert_error(refused, 422, "validation_error")["message"], url
            accepted = post_file(uploader, f"/v1/matches?mode=async&callback_url={hook.url}",
                                 excerpt_file(30, 5.0, 12.0))
            assert accepted.status_code == 202
            assert poll(uploader, accepted.json()["job_id"], webhook=True)["webhook"]["delivered"]
    finally:
        service.stop()


def test_jobs_accepted_before_a_restart_are_decided_after_it(settings, running, receiver, excerpt_file, monkeypatch):
    hook = receiver()
    running.stop()  # its catalogue and keys are used by the two processes below, one after the other
    with monkeypatch.context() as patch:
        # The first process accepts jobs but dies before running them: its workers never start.
        patch.setattr(JobRunner, "start", lambda runner: None)
        first = Running(settings, running.keys)
        try:
            with first.client("uploader") as uploader:
                accepted = post_file(uploader, f"/v1/matches?mode=async&callback_url={hook.url}",
                                     excerpt_file(30, 5.0, 12.0))
                assert accepted.status_code == 202
                job_id = accepted.json()["job_id"]
                time.sleep(0.2)
                assert uploader.get(f"/v1/jobs/{job_id}").json()["state"] == "queued"
        finally:
            first.stop()
    second = Running(settings, running.keys)
    try:
        with second.client("uploader") as uploader:
            done = poll(uploader, job_id)
        assert done["state"] == "succeeded" and done["verdict"] == "blocked_copy"
        hook.wait(1)
    finally:
        second.stop()


def test_two_runners_resuming_the_same_jobs_decide_and_call_back_each_once(settings, running, receiver,
                                                                          excerpt_file, monkeypatch):
    """As N service processes (refrain serve --workers N) do when they start after a stop: each job is claimed once."""
    hook = receiver()
    running.stop()
    with monkeypatch.context() as patch:
        patch.setattr(JobRunner, "start", lambda runner: None)
        first = Running(settings, running.keys)
        try:
            with first.client("uploader") as uploader:
                job_ids = [post_file(uploader, f"/v1/matches?mode=async&callback_url={hook.url}",
                                     excerpt_file(30, 5.0 + n, 12.0 + n)).json()["job_id"] for n in range(3)]
        finally:
            first.stop()
    second = Running(settings, running.keys)  # its runner resumes the jobs at its start ...
    app = second.server.server.config.app
    store = JobStore(settings.jobs_db_path)
    other = JobRunner(app.state.service, store, app.state.jobs.deliveries, app.state.metrics)
    other.start()  # ... and so does another worker's, at the same time
    try:
        with second.client("uploader") as uploader, second.client("analyst") as analyst:
            done = [poll(uploader, job_id, webhook=True) for job_id in job_ids]
            decisions = analyst.get("/v1/matches", params={"limit": 500}).json()["items"]
        assert [d["state"] for d in done] == ["succeeded"] * 3 and all(d["webhook"]["delivered"] for d in done)
        assert sorted(d["decision_id"] for d in decisions) == sorted(d["decision_id"] for d in done)
        time.sleep(0.5)  # a second delivery of any job would have arrived by now
        assert len(hook.requests) == 3
    finally:
        other.stop()
        store.close()
        second.stop()


def test_a_dead_runners_claim_is_taken_over_and_a_live_ones_is_not(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite")
    try:
        store.add("job_a", "req", "rk_x", "a.wav", tmp_path / "a.wav", 1, {}, None)
        store.add("job_b", "req", "rk_x", "b.wav", tmp_path / "b.wav", 1, {}, None)
        dead = f"{socket.gethostname()}/{2 ** 22 + 1}/1/gone"  # above Linux's largest pid: no such process
        assert store.claim("job_a", dead) is not None
        assert store.claim("job_b", "another-host/1/1/gone") is not None
        me, sibling = (f"{socket.gethostname()}/{os.getpid()}/{_process_started(os.getpid())}/{token}"
                       for token in ("me", "sibling"))  # two runners of this process, as JobRunner names them
        assert store.claim("job_a", me).job_id == "job_a"  # its runner died: taken over
        assert store.claim("job_b", me).job_id == "job_b"  # recorded on another host: taken over
        assert store.claim("job_a", sibling) is None  # a live runner's claim stands
        store.release(me)
        assert store.claim("job_a", sibling) is not None
    finally:
        store.close()


def test_signatures_cover_the_body_and_the_time():
    body = b'{"event": "x"}'
    signature = webhooks.sign(SECRET, body, timestamp=1_800_000_000)
    assert signature.startswith("t=1800000000,v1=") and len(signature.split("v1=")[1]) == 64
    assert webhooks.verify(SECRET, body, signature, now=1_800_000_100)
    assert not webhooks.verify(SECRET, body + b" ", signature, now=1_800_000_100)
    assert not webhooks.verify(SECRET, body, signature, now=1_800_001_000)  # too old: a replay
    assert not webhooks.verify(SECRET, body, "v1=deadbeef", now=1_800_000_100)


def test_a_refused_webhook_is_not_retried_and_an_unreachable_one_is_given_up(receiver, tmp_path):
    log = webhooks.DeliveryLog(tmp_path / "log.sqlite")
    waits = []
    hook = receiver(statuses=[410])
    refused = webhooks.deliver(hook.url, "test.event", {"n": 1}, SECRET, log=log, sleep=waits.append)
    assert (refused.delivered, refused.attempts, refused.last_status) == (False, 1, 410) and waits == []
    nobody = f"http://127.0.0.1:{free_port()}/hook"
    gone = webhooks.deliver(nobody, "test.event", {"n": 2}, SECRET, attempts=3, backoff_seconds=0.5, log=log,
                            sleep=waits.append)
    assert (gone.delivered, gone.attempts, gone.last_status) == (False, 3, None) and "ConnectError" in gone.last_error
    assert waits == [0.5, 1.0]
    assert [a["attempt"] for a in log.attempts(gone.delivery_id)] == [1, 2, 3]
    assert log.attempts(refused.delivery_id)[0]["status"] == 410
    log.close()


def test_a_job_stopped_after_its_decision_was_stored_is_not_decided_twice_and_still_calls_back(
        settings, running, receiver, excerpt_file):
    import sqlite3

    hook = receiver()
    with running.client("uploader") as uploader, running.client("analyst") as analyst:
        job_id = post_file(uploader, f"/v1/matches?mode=async&callback_url={hook.url}",
                           excerpt_file(30, 5.0, 12.0)).json()["job_id"]
        first = poll(uploader, job_id, webhook=True)
        decisions = analyst.get("/v1/matches").json()["total"]
    hook.wait(1)
    running.stop()
    # As if the service had stopped between storing the decision and marking the job done.
    with sqlite3.connect(settings.jobs_db_path) as raw:
        raw.execute("UPDATE jobs SET state = 'running', finished_at = NULL, decision_id = NULL, verdict = NULL,"
                    " webhook = NULL WHERE job_id = ?", (job_id,))
    again = Running(settings, running.keys)
    try:
        with again.client("uploader") as uploader, again.client("analyst") as analyst:
            done = poll(uploader, job_id, webhook=True)
            assert analyst.get("/v1/matches").json()["total"] == decisions
        assert (done["state"], done["decision_id"], done["verdict"]) == \
            ("succeeded", first["decision_id"], first["verdict"])
        assert done["webhook"]["delivered"] and done["webhook"]["delivery_id"] != first["webhook"]["delivery_id"]
        (_, body) = hook.wait(2)[1]
        assert json.loads(body)["data"]["decision"]["decision_id"] == first["decision_id"]
    finally:
        again.stop()

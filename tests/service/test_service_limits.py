"""Limits under hostile clients: stalled bodies time out, excess uploads get 503, catalogue writes stay whole.

A server of its own (tight limits, its own index) so that stalling it, filling its
budget or breaking its database cannot disturb the other service tests.
"""

from __future__ import annotations

import json
import logging
import socket
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import _ServerThread, free_port
from service_helpers import assert_error, post_file

from refrain.service.app import create_app
from refrain.service.db import DatabaseBusyError, ServiceDB, WorkEvidence, utc_now
from refrain.service.settings import ServiceSettings

IDLE_TIMEOUT = 3.0
HEADER_TIMEOUT = 1.0
MAX_UPLOADS = 45
STALLED = 40


@pytest.fixture(scope="module")
def tight(tmp_path_factory):
    """(settings, app, clients by role) of a running server with small limits."""
    root = tmp_path_factory.mktemp("tight-service")
    settings = ServiceSettings(index_dir=root / "index", header_timeout=HEADER_TIMEOUT,
                               body_idle_timeout=IDLE_TIMEOUT, body_timeout=30.0,
                               max_inflight_uploads=MAX_UPLOADS, max_upload_seconds=60.0,
                               analysis_budget_seconds=120.0, retry_after_seconds=7, db_busy_timeout=0.3)
    db = ServiceDB(settings.db_path)
    keys = {role: db.create_key(role, principal)[0]
            for role, principal in (("admin", "ops"), ("uploader", "studio"))}
    db.close()
    app = create_app(settings)
    server = _ServerThread(app, free_port())
    server.start()
    url = f"http://127.0.0.1:{server.server.config.port}"
    clients = {role: httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=60.0)
               for role, key in keys.items()}
    try:
        yield settings, app, clients
    finally:
        for client in clients.values():
            client.close()
        server.stop()


def _stalled_upload(url: str, key: str) -> socket.socket:
    """A connection that sends an upload's headers and first bytes, then nothing."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    head = (f"POST /v1/matches HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {key}\r\n"
            "Content-Type: multipart/form-data; boundary=edge\r\nContent-Length: 1000000\r\n\r\n"
            "--edge\r\nContent-Disposition: form-data; name=\"file\"; filename=\"slow.wav\"\r\n\r\nRIFF")
    sock.sendall(head.encode())
    return sock


def _answer_and_close(sock: socket.socket) -> tuple[bytes, float]:
    """What the server sent until it closed the connection, and when it closed it (monotonic)."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received, time.monotonic()



def _health_answers_at_once(client) -> None:
    """Five health checks, none of which waited for a stalled body to time out.

    A check held up behind the stalled uploads or the busy analysis pool would take at
    least ``IDLE_TIMEOUT``; half of it leaves a loaded machine its slack. (The service's
    latency under 300 stalled uploads is measured by ``bench/edge_load.py``.)
    """
    latencies = []
    for _ in range(5):
        start = time.monotonic()
        assert client.get("/v1/health").status_code == 200
        latencies.append(time.monotonic() - start)
    assert max(latencies) < IDLE_TIMEOUT / 2, latencies

def test_stalled_uploads_are_closed_and_never_hold_up_health_or_real_uploads(tight, excerpt_file):
    settings, _, clients = tight
    url, key = str(clients["uploader"].base_url), clients["uploader"].headers["X-API-Key"]
    opened = time.monotonic()
    stalled = [_stalled_upload(url, key) for _ in range(STALLED)]
    try:
        time.sleep(0.2)  # all of them are in the server now
        _health_answers_at_once(clients["uploader"])
        done = post_file(clients["uploader"], "/v1/matches", excerpt_file(30, 8.0, 10.0))
        assert done.status_code == 200 and done.json()["verdict"] == "clear", done.text
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(_answer_and_close, stalled))
    finally:
        for sock in stalled:
            sock.close()
    for received, closed_at in answers:
        assert received.startswith(b"HTTP/1.1 408 "), received[:200]
        assert json.loads(received.partition(b"\r\n\r\n")[2])["code"] == "request_timeout"
        # Closed by the server within the idle timeout (plus the slack of a loaded machine).
        assert closed_at - opened < IDLE_TIMEOUT + 3.0
    assert not list(settings.upload_dir.iterdir())  # their temp files went with them


def test_connections_that_send_no_headers_or_half_of_them_are_closed(tight):
    _, _, clients = tight
    host, port = str(clients["uploader"].base_url).removeprefix("http://").split(":")
    silent = socket.create_connection((host, int(port)), timeout=30)
    partial = socket.create_connection((host, int(port)), timeout=30)
    partial.sendall(b"POST /v1/matches HTTP/1.1\r\nHost: x\r\nX-API-")
    kept_alive = socket.create_connection((host, int(port)), timeout=30)
    kept_alive.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
    opened = time.monotonic()
    try:
        received, silent_closed = _answer_and_close(silent)
        assert received == b""
        received, partial_closed = _answer_and_close(partial)
        assert received == b""
        time.sleep(0.2)
        kept_alive.sendall(b"GET /v1/he")  # after a response, the next headers stall half-way
        received, kept_closed = _answer_and_close(kept_alive)
        assert received.startswith(b"HTTP/1.1 200 ")
        for closed_at in (silent_closed, partial_closed):
            assert HEADER_TIMEOUT - 0.1 < closed_at - opened < HEADER_TIMEOUT + 2.0
        assert kept_closed - opened < 0.2 + HEADER_TIMEOUT + 2.0
    finally:
        for sock in (silent, partial, kept_alive):
            sock.close()


def test_uploads_past_the_limit_get_503_with_retry_after(tight, excerpt_file):
    _, _, clients = tight
    url, key = str(clients["uploader"].base_url), clients["uploader"].headers["X-API-Key"]
    stalled = [_stalled_upload(url, key) for _ in range(MAX_UPLOADS)]
    try:
        time.sleep(0.3)
        refused = post_file(clients["uploader"], "/v1/matches", excerpt_file(30, 8.0, 10.0))
        body = assert_error(refused, 503, "busy")
        assert refused.headers["retry-after"] == "7" and f"limit of {MAX_UPLOADS} uploads" in body["message"]
        assert clients["uploader"].get("/v1/health").status_code == 200
    finally:
        for sock in stalled:
            sock.close()


def test_audio_past_the_analysis_budget_gets_503_with_retry_after(tight, excerpt_file):
    settings, app, clients = tight
    admission = app.state.service.admission
    path = excerpt_file(30, 8.0, 10.0)
    with admission.analysis(settings.analysis_budget_seconds - 5.0):  # 115 s being analysed elsewhere
        refused = post_file(clients["uploader"], "/v1/matches", path)
        body = assert_error(refused, 503, "busy")
        assert refused.headers["retry-after"] == "7" and "needs 10 s" in body["message"]
    with admission.analysis(settings.analysis_budget_seconds):  # spent: refused before the body is read
        refused = post_file(clients["uploader"], "/v1/matches", path)
        assert_error(refused, 503, "busy")
        assert refused.headers["connection"] == "close" and "its budget of 120 s" in refused.json()["message"]
    assert admission.seconds == 0.0 and admission.uploads == 0
    assert post_file(clients["uploader"], "/v1/matches", path).status_code == 200


def _hold_catalogue_write(service, release: threading.Event, holding: threading.Event) -> None:
    with service.index.writing():  # as a long reference recording's ingest does
        holding.set()
        release.wait(30)


def test_health_answers_at_once_while_every_analysis_thread_is_busy_and_a_catalogue_write_runs(tight):
    settings, app, clients = tight
    release, holding = threading.Event(), threading.Event()
    service = app.state.service
    busy = [service.analysis_pool.submit(release.wait, 30) for _ in range(settings.analysis_threads)]
    writer = threading.Thread(target=_hold_catalogue_write, args=(service, release, holding))
    writer.start()
    try:
        assert holding.wait(10)
        _health_answers_at_once(clients["uploader"])
        assert clients["admin"].get("/v1/works").status_code == 200
    finally:
        release.set()
        writer.join(30)
        for future in busy:
            future.result(30)


def test_a_client_leaving_mid_upload_is_one_info_line(tight, caplog):
    _, _, clients = tight
    caplog.set_level(logging.INFO, logger="refrain.service")
    sock = _stalled_upload(str(clients["uploader"].base_url), clients["uploader"].headers["X-API-Key"])
    sock.sendall(b"\0" * 5000)
    time.sleep(0.2)
    sock.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any("went away" in r.getMessage() for r in caplog.records):
        time.sleep(0.05)
    went = [r for r in caplog.records if "went away" in r.getMessage()]
    assert len(went) == 1 and went[0].levelno == logging.INFO and went[0].exc_info is None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def _register(admin: httpx.Client, song) -> httpx.Response:
    with open(song.path, "rb") as handle:
        return admin.post("/v1/works", files={"file": (song.path.name, handle, "audio/wav")},
                          data={"title": "T", "artists": ["A"], "rights_holder": "R"})


def _assert_consistent(settings: ServiceSettings, app) -> None:
    """Index and database agree: every work's track is matchable, every stored track is a work's."""
    service = app.state.service
    ready = service.refrain.store.catalog.ready_tracks()
    works = service.db.list_works(500, 0)[0]
    assert {w.track_id for w in works} == set(ready)
    assert {Path(w.stored_path) for w in works} == set(settings.works_dir.iterdir())
    assert not service.db.unfinished_intents() and not list(settings.upload_dir.iterdir())


def test_a_registration_whose_database_write_fails_leaves_the_index_unchanged(tight, songs, monkeypatch):
    settings, app, clients = tight
    service = app.state.service

    def busy(*args, **kwargs):
        raise DatabaseBusyError("locked (test)")

    monkeypatch.setattr(service.db, "add_work", busy)  # after the index has the track
    refused = _register(clients["admin"], songs[33])
    assert_error(refused, 503, "busy")
    assert refused.headers["retry-after"] == "7"
    _assert_consistent(settings, app)
    monkeypatch.undo()
    made = _register(clients["admin"], songs[33])
    assert made.status_code == 201, made.text
    _assert_consistent(settings, app)


def test_catalogue_writes_while_another_process_locks_the_database_change_nothing(tight, songs, excerpt_file):
    settings, app, clients = tight
    admin = clients["admin"]
    made = _register(admin, songs[34])
    assert made.status_code == 201, made.text
    work_id = made.json()["work_id"]
    locker = sqlite3.connect(settings.db_path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    try:
        assert_error(_register(admin, songs[41]), 503, "busy")
        assert_error(admin.delete(f"/v1/works/{work_id}"), 503, "busy")
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    _assert_consistent(settings, app)
    assert admin.get(f"/v1/works/{work_id}").status_code == 200
    matched = post_file(clients["uploader"], "/v1/matches", excerpt_file(34, 5.0, 10.0)).json()
    assert [w["work_id"] for w in matched["works"]] == [work_id]
    assert admin.delete(f"/v1/works/{work_id}").status_code == 204
    _assert_consistent(settings, app)


def test_spectrograms_are_dropped_after_their_retention(tmp_path):
    db = ServiceDB(tmp_path / "s.sqlite")
    try:
        key = db.create_key("uploader", "studio")[1]
        evidence = [WorkEvidence(track_id=1, work_id=None, points=np.zeros((3, 2)),
                                 spectrogram_png=b"png", spectrogram_start=0.0, spectrogram_end=1.0)]
        body = {"principal": "studio", "works": []}
        db.add_decision("dec_old", utc_now(), "clear", None, key, "a.wav", body, evidence)
        assert db.forget_spectrograms(utc_now()) == 1
        kept = db.decision_evidence("dec_old")[1]
        assert kept.spectrogram_png is None and len(kept.points) == 3  # the evidence itself stays
    finally:
        db.close()

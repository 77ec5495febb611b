"""Liveness and readiness: the service answers at once and turns ready only when its warm-up is done."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from conftest import _ServerThread, free_port
from service_helpers import assert_error

from refrain.api import Refrain
from refrain.service.app import create_app
from refrain.service.settings import ServiceSettings


def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def serve(tmp_path):
    """``serve(app_hook=None)``: a server on a fresh index; returns its base URL. Stopped after the test."""
    servers = []

    def start(app_hook=None) -> str:
        app = create_app(ServiceSettings(index_dir=tmp_path / f"index{len(servers)}"))
        if app_hook is not None:
            app_hook(app)
        port = free_port()
        server = _ServerThread(app, port)
        server.start()
        servers.append(server)
        return f"http://127.0.0.1:{port}"

    yield start
    for server in servers:
        server.stop()


def test_liveness_answers_at_once_and_readiness_waits_for_the_warm_up(serve, monkeypatch):
    release, started = threading.Event(), threading.Event()
    real_warm_up = Refrain.warm_up

    def held_warm_up(refrain):
        started.set()
        release.wait(30)
        real_warm_up(refrain)

    monkeypatch.setattr(Refrain, "warm_up", held_warm_up)
    url = serve()
    assert started.wait(10)
    for path in ("/v1/health/live", "/v1/health"):
        live = httpx.get(url + path)
        assert live.status_code == 200 and live.json() == {"status": "ok", "tracks": 0}
    waiting = httpx.get(url + "/v1/health/ready")
    assert waiting.status_code == 503, waiting.text
    assert waiting.json() == {"status": "not_ready", "detail": "not ready: warm_up",
                              "checks": {"index": True, "database": True, "jobs": True, "warm_up": False}}
    release.set()
    wait_for(lambda: httpx.get(url + "/v1/health/ready").status_code == 200)
    assert httpx.get(url + "/v1/health/ready").json() == {
        "status": "ready", "detail": None, "checks": {"index": True, "database": True, "jobs": True, "warm_up": True}}


def test_a_failed_warm_up_keeps_the_service_unready_and_says_why(serve, monkeypatch):
    def broken_warm_up(refrain):
        raise RuntimeError("no space left for numba's cache")

    monkeypatch.setattr(Refrain, "warm_up", broken_warm_up)
    url = serve()
    wait_for(lambda: httpx.get(url + "/v1/health/ready").json()["detail"] != "not ready: warm_up")
    answer = httpx.get(url + "/v1/health/ready")
    assert answer.status_code == 503
    assert answer.json()["detail"] == "warm-up failed: RuntimeError: no space left for numba's cache"
    assert httpx.get(url + "/v1/health/live").status_code == 200


def test_an_unexpected_exception_is_a_500_body_with_the_request_id_and_a_logged_trace(serve, caplog):
    def add_broken_route(app):
        def broken():
            raise ZeroDivisionError("a bug")
        app.add_api_route("/v1/broken", broken)

    url = serve(add_broken_route)
    answer = httpx.get(url + "/v1/broken", headers={"X-Request-ID": "bug-report-1"})
    body = assert_error(answer, 500, "internal_error")
    assert body["request_id"] == "bug-report-1" and "a bug" not in body["message"]
    logged = [r for r in caplog.records if r.levelname == "ERROR" and r.name == "refrain.service"]
    assert logged and logged[-1].fields == {"request_id": "bug-report-1"}
    assert "ZeroDivisionError" in caplog.text

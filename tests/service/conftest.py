"""A real match service for the service tests: uvicorn on a free loopback port, real index, real audio.

The server runs in a background thread of the test process (session scope) and
is shut down by the fixture. Its catalogue is built through the HTTP API itself
(``POST /v1/works``) from the suite's synthetic songs; the first admin key comes
from ``refrain keys create``, as an operator would make it. The uploader key acts for
the principal ``LICENSEE`` (the AI studio the tests grant licences to).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
import soxr
import uvicorn

from refrain.service.app import create_app
from refrain.service.db import ServiceDB
from refrain.service.limits import header_timeout_protocol
from refrain.service.settings import ServiceSettings
from service_helpers import LICENSEE

SR = 22050
#: Small limits so that the over-limit tests send megabytes, not hundreds of them.
MAX_UPLOAD_BYTES = 3_000_000
MAX_UPLOAD_SECONDS = 60.0
#: Catalogue works and their policies. Song seeds come from tests/conftest.py CATALOGUE.
WORK_SEEDS = {"remixable": 30, "free": 33, "default": 34}
POLICIES = {
    "remixable": {"copy": "deny", "remix": "licence_required", "cover": "deny", "royalty_share": 0.5},
    "free": {"copy": "allow", "remix": "allow", "cover": "allow", "royalty_share": 0.1},
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveService:
    """A running server: its URL, settings, keys by role, and the registered works."""

    url: str
    settings: ServiceSettings
    keys: dict[str, str] = field(default_factory=dict)
    works: dict[str, dict] = field(default_factory=dict)

    def client(self, role: str | None = None, timeout: float = 60.0) -> httpx.Client:
        headers = {"X-API-Key": self.keys[role]} if role else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)


class _ServerThread:
    """uvicorn.Server in a thread (with the limits ``refrain serve`` sets), started and stopped with bounded waits."""

    def __init__(self, app, port: int):
        settings = app.state.settings
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                lifespan="on", timeout_graceful_shutdown=5,
                                timeout_keep_alive=settings.keep_alive_timeout,
                                limit_concurrency=settings.max_connections,
                                http=header_timeout_protocol(settings.header_timeout))
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="refrain-service", daemon=True)

    def start(self, timeout: float = 30.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the service did not start")
            time.sleep(0.02)

    def stop(self, timeout: float = 15.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the service did not shut down"


@contextmanager
def private_service(settings: ServiceSettings, keys: Iterable[tuple[str, str, str]],
                    timeout: float = 120.0) -> Iterator[dict[str, httpx.Client]]:
    """A running service of the caller's own on ``settings``: one client per ``(name, role, principal)`` key."""
    db = ServiceDB(settings.db_path)
    made = {name: db.create_key(role, principal)[0] for name, role, principal in keys}
    db.close()
    server = _ServerThread(create_app(settings), free_port())
    server.start()
    url = f"http://127.0.0.1:{server.server.config.port}"
    clients = {name: httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=timeout)
               for name, key in made.items()}
    try:
        yield clients
    finally:
        for client in clients.values():
            client.close()
        server.stop()


@pytest.fixture(scope="session")
def service_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("service")


@pytest.fixture(scope="session")
def live_service(service_root, songs, run_refrain) -> LiveService:
    """The running service with an admin, analyst and uploader key and three registered works."""
    settings = ServiceSettings(index_dir=service_root / "index", max_upload_bytes=MAX_UPLOAD_BYTES,
                               max_upload_seconds=MAX_UPLOAD_SECONDS, match_covers=True)
    made = run_refrain("keys", "create", "--role", "admin", "--principal", "catalogue-ops", "--label", "tests",
                       "--index", settings.index_dir)
    assert made.returncode == 0, made.stderr
    admin_key = made.stdout.strip()
    assert admin_key.startswith("rk_") and "shown only this once" in made.stderr

    port = free_port()
    server = _ServerThread(create_app(settings), port)
    server.start()
    try:
        live = LiveService(url=f"http://127.0.0.1:{port}", settings=settings, keys={"admin": admin_key})
        with live.client("admin") as admin:
            for role, principal in (("analyst", "analysts"), ("uploader", LICENSEE)):
                made = admin.post("/v1/keys", json={"role": role, "principal": principal, "label": f"test {role}"})
                assert made.status_code == 201, made.text
                live.keys[role] = made.json()["key"]
            for name, seed in WORK_SEEDS.items():
                song = songs[seed]
                with open(song.path, "rb") as handle:
                    made = admin.post("/v1/works", files={"file": (song.path.name, handle, "audio/wav")},
                                      data={"title": f"Song {seed}", "artists": ["Ada", f"Band {seed}"],
                                            "rights_holder": f"Label {seed}", "isrc": f"GB-ABC-26-{seed:05d}"})
                assert made.status_code == 201, made.text
                work = made.json()
                if name in POLICIES:
                    done = admin.put(f"/v1/works/{work['work_id']}/policy", json=POLICIES[name])
                    assert done.status_code == 200, done.text
                    work["policy"] = done.json()
                live.works[name] = work
        yield live
    finally:
        server.stop()


@pytest.fixture(scope="session")
def upload_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("uploads")


@pytest.fixture(scope="session")
def excerpt_file(songs, write_audio, upload_dir):
    """``excerpt_file(seed, start, seconds)``: a WAV excerpt of a catalogue song."""

    def make(seed: int, start: float, seconds: float) -> Path:
        path = upload_dir / f"excerpt-{seed}-{start:g}-{seconds:g}.wav"
        if not path.exists():
            write_audio(path, songs[seed].excerpt(start, seconds))
        return path

    return make


@pytest.fixture(scope="session")
def sped_up_file(songs, write_audio, upload_dir):
    """``sped_up_file(seed, start, seconds, ratio)``: an excerpt played ``ratio`` times faster.

    Resampling by ``ratio`` and playing at the original rate is what ffmpeg's
    ``asetrate`` does: tempo and pitch rise together, as in a sped-up AI remix.
    """

    def make(seed: int, start: float, seconds: float, ratio: float) -> Path:
        path = upload_dir / f"fast-{seed}-{start:g}-{seconds:g}-x{ratio:g}.wav"
        if not path.exists():
            y = soxr.resample(np.asarray(songs[seed].excerpt(start, seconds)), SR * ratio, SR)
            write_audio(path, y)
        return path

    return make


@pytest.fixture(scope="module")
def private_admin(tmp_path_factory):
    """An admin client of a service of the module's own, with an empty catalogue: for tests whose works or
    policies would change what the session's shared service decides."""
    settings = ServiceSettings(index_dir=tmp_path_factory.mktemp("private-service") / "index")
    with private_service(settings, [("admin", "admin", "ops")]) as clients:
        clients["admin"].settings = settings
        yield clients["admin"]


# One client per role and test module, with that role's key.
@pytest.fixture(scope="module")
def uploader(live_service):
    with live_service.client("uploader") as client:
        yield client


@pytest.fixture(scope="module")
def admin(live_service):
    with live_service.client("admin") as client:
        yield client


@pytest.fixture(scope="module")
def analyst(live_service):
    with live_service.client("analyst") as client:
        yield client

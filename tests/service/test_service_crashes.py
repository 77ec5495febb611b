"""kill -9 at any point of a registration, a deletion or an ingest, then a restart: nothing half-done is left.

Real processes: ``refrain serve`` on a free loopback port and ``refrain ingest --jobs 2``,
killed with SIGKILL at a spread of moments.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import free_port

from refrain.api import Refrain
from refrain.service.db import ServiceDB
from refrain.service.settings import ServiceSettings

pytestmark = pytest.mark.slow

#: Seconds after a request is sent at which the service is killed: from before the upload is in
#: to well into the ingest, the database write and the deletion.
KILL_AFTER = (0.1, 0.6, 1.5, 3.0)


def _children(pid: int) -> list[int]:
    """Live processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


class Service:
    """``refrain serve`` as a subprocess."""

    def __init__(self, command: list[str], index: Path):
        self.command, self.index, self.port = command, index, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([*self.command, "serve", "--index", str(self.index), "--port", str(self.port)],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.process.stdout.read()
            try:
                if httpx.get(f"{self.url}/v1/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError("the service did not start")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> str:
        self.process.terminate()
        output, _ = self.process.communicate(timeout=60)
        return output


def _assert_whole(settings: ServiceSettings, writable: bool) -> None:
    """Index and database agree, nothing in flight, no upload temp file.

    ``writable`` (the service stopped) also proves that no process holds the index lock.
    """
    db = ServiceDB(settings.db_path)
    try:
        works = db.list_works(500, 0)[0]
        assert not db.unfinished_intents()
    finally:
        db.close()
    with Refrain.open(settings.index_dir, writable=writable) as refrain:
        ready = refrain.store.catalog.ready_tracks()
        assert not refrain.store.catalog.unfinished()
    assert {w.track_id for w in works} == set(ready), (works, ready)
    assert {Path(w.stored_path) for w in works} == set(settings.works_dir.iterdir())
    assert not list(settings.upload_dir.iterdir())


def test_kill_9_during_registrations_and_deletions_leaves_nothing_half_done(tmp_path, songs, refrain_command,
                                                                             run_refrain):
    index = tmp_path / "index"
    settings = ServiceSettings(index_dir=index)
    key = run_refrain("keys", "create", "--role", "admin", "--principal", "ops", "--index", index).stdout.strip()
    headers = {"X-API-Key": key}
    service = Service(refrain_command, index)
    seeds = [30, 33, 34, 41, 44]
    service.start()
    for round_, delay in enumerate(KILL_AFTER):
        with httpx.Client(base_url=service.url, headers=headers, timeout=60) as client:
            works = client.get("/v1/works").json()["items"]
        song = songs[seeds[round_ % len(seeds)]]

        def register() -> None:
            with open(song.path, "rb") as handle, \
                    httpx.Client(base_url=service.url, headers=headers, timeout=60) as client:
                try:
                    client.post("/v1/works", files={"file": (song.path.name, handle, "audio/wav")},
                                data={"title": "T", "artists": ["A"], "rights_holder": "R"})
                except httpx.TransportError:
                    pass  # killed mid-request: expected

        def delete() -> None:
            with httpx.Client(base_url=service.url, headers=headers, timeout=60) as client:
                try:
                    client.delete(f"/v1/works/{works[0]['work_id']}")
                except httpx.TransportError:
                    pass

        requests = [threading.Thread(target=register)]
        if works and song.path.name not in {w["filename"] for w in works}:
            requests.append(threading.Thread(target=delete))
        for thread in requests:
            thread.start()
        time.sleep(delay)
        service.kill()
        for thread in requests:
            thread.join(60)
        # An upload spooled by the killed process, as a crash leaves it.
        (settings.upload_dir / "refrain-upload-leftover.wav").write_bytes(b"RIFF" * 100)
        service.start()  # the startup reconciliation repairs what the kill left
        _assert_whole(settings, writable=False)
    output = service.stop()
    assert "Traceback" not in output, output
    _assert_whole(settings, writable=True)


def test_kill_9_of_a_parallel_ingest_leaves_no_worker_and_no_lock(tmp_path, songs, refrain_command, run_refrain,
                                                                   write_audio):
    music = tmp_path / "music"
    for seed, song in songs.items():
        for copy in range(2):  # distinct recordings: a few seconds of work for two workers
            write_audio(music / f"{seed}-{copy}.wav", song.samples * (1.0 - 0.01 * copy))
    index = tmp_path / "index"
    ingest = subprocess.Popen([*refrain_command, "ingest", "--index", str(index), "--jobs", "2", str(music)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    workers: list[int] = []
    while time.monotonic() < deadline and len(workers) < 2:
        workers = _children(ingest.pid)
        time.sleep(0.05)
    assert len(workers) >= 2, "the ingest started no workers"
    time.sleep(0.5)
    ingest.send_signal(signal.SIGKILL)
    ingest.wait(30)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.05)
    assert not [pid for pid in workers if _alive(pid)], "ingest workers outlived their parent"
    again = run_refrain("ingest", "--index", index, "--jobs", "2", music)
    assert again.returncode == 0, again.stderr  # no lock left behind
    with Refrain.open(index) as refrain:
        assert refrain.info().tracks == 2 * len(songs)
    shutil.rmtree(music)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"

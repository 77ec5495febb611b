"""One index directory served by `refrain serve --index DIR --workers 2`: real processes, real HTTP.

Every worker matches on its own read-only view of the index and takes the index's write lock
for each write alone: a work registered through one worker is found by both, concurrent
registrations all land, a write that cannot get the lock in time is a 503 with Retry-After
(matches meanwhile are answered), and the index is never left half-written. Which worker
answered a request is read from its access log line (the JSON lines carry the process id).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest
from conftest import free_port
from service_helpers import assert_error, post_file, register

from refrain.api import Refrain

pytestmark = pytest.mark.slow

WRITE_DEADLINE_SECONDS = 2.0
#: Requests sent (in parallel batches) before both workers must have answered one.
MAX_REQUESTS = 48


class Workers:
    """`refrain serve --workers 2` on an index, its log lines, and which process answered each request."""

    def __init__(self, root: Path, run_refrain):
        self.index = root / "index"
        keys = {}
        for role, principal in (("admin", "ops"), ("uploader", "platform")):
            made = run_refrain("keys", "create", "--role", role, "--principal", principal, "--index", self.index)
            assert made.returncode == 0, made.stderr
            keys[role] = made.stdout.strip()
        self.url = f"http://127.0.0.1:{free_port()}"
        self.keys = keys
        self.log_path = root / "serve.log"
        env = {**os.environ, "REFRAIN_INDEX_WRITE_DEADLINE_SECONDS": str(WRITE_DEADLINE_SECONDS),
               "REFRAIN_RETRY_AFTER_SECONDS": "3"}
        with open(self.log_path, "w") as log:
            self.supervisor = subprocess.Popen(
                [sys.executable, "-m", "refrain.cli", "serve", "--index", str(self.index), "--port",
                 self.url.rsplit(":", 1)[1], "--workers", "2"], env=env, stdout=log, stderr=subprocess.STDOUT)

    def processes(self) -> list[psutil.Process]:
        return [p for p in psutil.Process(self.supervisor.pid).children()
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 120
        while len(self.processes()) != 2 or not all(self._ready() for _ in range(4)):
            assert self.supervisor.poll() is None and time.monotonic() < deadline, self.log_path.read_text()
            time.sleep(0.3)

    def _ready(self) -> bool:
        try:
            return httpx.get(self.url + "/v1/health/ready", timeout=5).is_success
        except httpx.TransportError:
            return False

    def client(self, role: str) -> httpx.Client:
        # No keep-alive: each request is a new connection, which the kernel hands to either worker.
        return httpx.Client(base_url=self.url, headers={"X-API-Key": self.keys[role]}, timeout=60,
                            limits=httpx.Limits(max_keepalive_connections=0))

    def pid_of(self, response: httpx.Response) -> int:
        """The process that answered ``response`` (its access line may be written a moment after the answer)."""
        request_id = response.headers["x-request-id"]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for line in self.log_path.read_text().splitlines():
                if request_id in line and '"refrain.access"' in line:
                    return json.loads(line)["pid"]
            time.sleep(0.05)
        raise AssertionError(f"no access line for request {request_id}")

    def stop(self) -> None:
        if self.supervisor.poll() is None:
            self.supervisor.send_signal(signal.SIGTERM)
            try:
                assert self.supervisor.wait(60) == 0
            finally:
                if self.supervisor.poll() is None:
                    self.supervisor.kill()


@pytest.fixture
def workers(tmp_path, run_refrain):
    served = Workers(tmp_path, run_refrain)
    try:
        served.wait_ready()
        yield served
    finally:
        served.stop()
    assert "Traceback" not in served.log_path.read_text()


def _matched_by_every_worker(workers: Workers, uploader: httpx.Client, queries: dict[Path, int | None]) -> None:
    """Send each query (upload -> the work it must match, None: no work) until both workers have answered every one."""
    answered: dict[Path, set[int]] = {path: set() for path in queries}
    sent = 0
    with ThreadPoolExecutor(4) as pool:
        while any(len(pids) < 2 for pids in answered.values()):
            assert sent < MAX_REQUESTS * len(queries), f"a worker never answered: {answered}"
            batch = [path for path, pids in answered.items() if len(pids) < 2 for _ in range(2)]
            for path, answer in zip(batch, pool.map(lambda p: post_file(uploader, "/v1/matches", p), batch)):
                assert answer.status_code == 200, answer.text
                found = [w["work_id"] for w in answer.json()["works"]]
                expected = queries[path]
                assert (found[:1] == [expected]) if expected is not None else not found, (path.name, found)
                answered[path].add(workers.pid_of(answer))
            sent += len(batch)


def test_two_workers_serve_one_index_and_its_writes(workers, songs, excerpt_file):
    admin, uploader = workers.client("admin"), workers.client("uploader")
    pids = {p.pid for p in workers.processes()}

    # Registered through one worker, found by both: the other re-opens its view at its next request.
    first = register(admin, songs[30].path, "First", "Label")
    assert first.status_code == 201, first.text
    first_work = first.json()["work_id"]
    _matched_by_every_worker(workers, uploader, {excerpt_file(30, 6.0, 10.0): first_work})

    # Concurrent registrations, spread over both workers, all land (their writes take turns on the lock).
    seeds = (33, 34, 41, 44)
    with ThreadPoolExecutor(len(seeds)) as pool:
        made = list(pool.map(lambda seed: register(admin, songs[seed].path, f"Song {seed}", "Label"), seeds))
    assert [m.status_code for m in made] == [201] * len(seeds), [m.text for m in made]
    work_ids = {seed: m.json()["work_id"] for seed, m in zip(seeds, made)}
    assert len({m.json()["track_id"] for m in made} | {first.json()["track_id"]}) == len(seeds) + 1
    _matched_by_every_worker(workers, uploader, {excerpt_file(seed, 8.0, 10.0): work_ids[seed] for seed in seeds})

    # Another process holds the index's write lock: a registration waits for it, then gets 503 with
    # Retry-After and changes nothing, while matches are answered as before.
    holder = Refrain.open(workers.index, writable=True)
    try:
        started = time.monotonic()
        refused = register(admin, songs[49].path, "Late", "Label")
        assert WRITE_DEADLINE_SECONDS <= time.monotonic() - started < WRITE_DEADLINE_SECONDS + 15
        body = assert_error(refused, 503, "index_busy")
        assert refused.headers["retry-after"] == "3" and "nothing was changed" in body["message"]
        matched = post_file(uploader, "/v1/matches", excerpt_file(41, 8.0, 10.0))
        assert matched.status_code == 200 and matched.json()["works"][0]["work_id"] == work_ids[41]
        # A write that gets the lock within the deadline waits for it and lands.
        release = threading.Timer(0.5 * WRITE_DEADLINE_SECONDS, holder.close)
        release.start()
        late = register(admin, songs[49].path, "Late", "Label")
        assert late.status_code == 201, late.text
        release.join()
    finally:
        holder.close()
    assert admin.get("/v1/works").json()["total"] == len(seeds) + 2

    # A takedown through one worker: neither finds the work any more.
    assert admin.delete(f"/v1/works/{first_work}").status_code == 204
    _matched_by_every_worker(workers, uploader, {excerpt_file(30, 6.0, 10.0): None,
                                                 excerpt_file(49, 5.0, 10.0): late.json()["work_id"]})
    assert {p.pid for p in workers.processes()} == pids  # no worker died on the way

    # Never half-written: every work's track is ready in the index, nothing is pending.
    with Refrain.open(workers.index, mmap=True) as index:
        ready = {t.track_id for t in index.tracks()}
        assert index.store.catalog.unfinished() == []
    listed = admin.get("/v1/works").json()["items"]
    assert {w["track_id"] for w in listed} == ready

"""`refrain serve` and `refrain keys create` as an operator runs them."""

from __future__ import annotations

import subprocess
import time

import httpx
import pytest
from conftest import free_port


@pytest.mark.slow
def test_refrain_serve_answers_on_its_port_and_stops(tmp_path, refrain_command, run_refrain, songs):
    index = tmp_path / "index"
    made = run_refrain("keys", "create", "--role", "admin", "--principal", "ops", "--index", index)
    assert made.returncode == 0 and made.stdout.startswith("rk_"), made.stderr
    port = free_port()
    server = subprocess.Popen([*refrain_command, "serve", "--index", str(index), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, health = time.monotonic() + 60, None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert health is not None and health.json() == {"status": "ok", "tracks": 0}, server.poll()
        works = httpx.get(f"http://127.0.0.1:{port}/v1/works", headers={"X-API-Key": made.stdout.strip()})
        assert works.status_code == 200 and works.json()["total"] == 0
        # The service takes the index's write lock only to write: a CLI ingest lands meanwhile, and the
        # service counts (and matches) its track from its next request on.
        ingested = run_refrain("ingest", "--index", index, songs[33].path)
        assert ingested.returncode == 0, ingested.stderr
        assert httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=5).json() == {"status": "ok", "tracks": 1}
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=30)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it (so the exit status is -15).
    assert server.returncode in (0, -15) and "Application shutdown complete" in output, output
    assert f"http://127.0.0.1:{port}" in output and "Traceback" not in output


def test_refrain_serve_on_a_foreign_directory_is_one_error_line(tmp_path, run_refrain):
    (tmp_path / "stuff.txt").write_text("not an index")
    done = run_refrain("serve", "--index", tmp_path, "--port", str(free_port()))
    assert done.returncode == 3 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: ") and "holds no Refrain index" in done.stderr


def test_refrain_keys_create_needs_a_database_and_a_known_role(run_refrain, tmp_path):
    assert run_refrain("keys", "create", "--role", "admin", "--principal", "ops").returncode == 2
    done = run_refrain("keys", "create", "--role", "root", "--principal", "ops", "--db", tmp_path / "s.sqlite")
    assert done.returncode == 2 and "invalid choice" in done.stderr

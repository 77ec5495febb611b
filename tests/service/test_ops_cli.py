"""The operator's command line: tracks, progress without a terminal, and a busy port found first."""

from __future__ import annotations

import json
import socket
import time

from conftest import free_port


def test_tracks_list_and_show_give_the_ids_remove_needs(catalogue_index, songs, run_refrain):
    listed = run_refrain("tracks", "list", "--index", catalogue_index.directory)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert len(lines) == len(songs) and listed.stderr.strip() == f"{len(songs)} tracks"
    for seed, track_id in catalogue_index.track_ids.items():
        (line,) = [line for line in lines if line.split()[0] == str(track_id)]
        assert str(songs[seed].path) in line

    as_json = run_refrain("tracks", "list", "--index", catalogue_index.directory, "--json")
    records = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert sorted(r["track_id"] for r in records) == sorted(catalogue_index.track_ids.values())

    track_id = catalogue_index.track_ids[33]
    shown = run_refrain("tracks", "show", "--index", catalogue_index.directory, "--json", track_id)
    record = json.loads(shown.stdout)
    assert record["track_id"] == track_id and record["source"] == str(songs[33].path)
    assert record["duration"] == round(record["duration"], 6) and 31.0 < record["duration"] < 33.0
    assert record == [r for r in records if r["track_id"] == track_id][0]
    text = run_refrain("tracks", "show", "--index", catalogue_index.directory, track_id).stdout
    assert f"track_id     {track_id}" in text and f"source       {songs[33].path}" in text

    missing = run_refrain("tracks", "show", "--index", catalogue_index.directory, 999999)
    assert missing.returncode == 1 and missing.stderr.startswith("error: no track with id 999999")


def test_ingest_without_a_terminal_writes_progress_lines_counting_audio_seconds(songs, run_refrain, tmp_path):
    files = [songs[seed].path for seed in (30, 33)]
    done = run_refrain("ingest", "--index", tmp_path / "index", "--progress-interval", "0", *files)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("progress: ")]
    # One line per file (interval 0) and the closing one.
    assert len(lines) == 3, done.stderr
    assert lines[0].startswith("progress: 1/2 files, 36.0 s of audio (")
    assert lines[1].startswith("progress: 2/2 files, 68.0 s of audio (") and "0 errors" in lines[1]
    assert "\r" not in done.stderr  # no bar redrawn on a file

    quiet = run_refrain("ingest", "--index", tmp_path / "other", *files)
    # The default interval is 30 s: only the closing line.
    assert sum(line.startswith("progress: 2/2 files") for line in quiet.stderr.splitlines()) == 1


def test_serve_on_a_busy_port_is_reported_before_the_index_and_warm_up(tmp_path, run_refrain):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        done = run_refrain("serve", "--index", tmp_path / "index", "--port", port)
        elapsed = time.monotonic() - started
    assert done.returncode == 4, (done.returncode, done.stderr)
    assert done.stderr == f"error: 127.0.0.1:{port} is already in use by another process: stop it or serve " \
                          f"on another --port\n"
    assert not (tmp_path / "index").exists()  # found before the index was even created
    assert elapsed < 20


def test_serve_logs_json_lines_with_request_ids(tmp_path, refrain_command):
    import subprocess

    import httpx

    port = free_port()
    server = subprocess.Popen([*refrain_command, "serve", "--index", str(tmp_path / "index"), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and server.poll() is None
            time.sleep(0.1)
        answer = httpx.get(f"http://127.0.0.1:{port}/v1/works", headers={"X-Request-ID": "ops-check-1"})
        assert answer.status_code == 401
    finally:
        server.terminate()
        stdout, stderr = server.communicate(timeout=30)
    entries = [json.loads(line) for line in stdout.splitlines()]  # every line is JSON, uvicorn's too
    (line,) = [e for e in entries if e.get("request_id") == "ops-check-1"]
    assert line["status"] == 401 and line["route"] == "/v1/works" and line["logger"] == "refrain.access"
    assert entries[0]["message"].startswith(f"serving {tmp_path / 'index'} on http://127.0.0.1:{port}")
    assert any(e["logger"] == "uvicorn.error" and e["message"] == "Application startup complete." for e in entries)
    assert stderr == ""

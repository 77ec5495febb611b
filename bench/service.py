"""Throughput and latency of the match service: 10 s uploads, 1 and 8 concurrent clients.

Starts ``refrain serve`` on a loopback port (a separate process, so the clients'
threads do not compete with the server for the GIL), registers a catalogue of
generated songs through ``POST /v1/works`` (or serves an existing ``--index``),
then fires a bounded number of ``POST /v1/matches`` with 10 s WAV uploads — excerpts
of catalogue songs, so every request goes through matching, evidence, the policy
and the decision store — and prints one JSON object::

    python bench/service.py [--songs 8] [--requests 100] [--clients 1 8] [--index DIR]

Figures: matches per second (requests completed / wall time), p50 and p99 latency
in milliseconds, measured at the client (upload + decode + match + decision + store).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

from refrain.synth import render_song

# Keys are made with the CLI rather than by importing the `service` package: run as a script,
# this file's own folder comes first on sys.path and `service` would name this very file.

SR = 22050
UPLOAD_SECONDS = 10.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(url: str, server: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"refrain serve exited with status {server.returncode}")
        try:
            httpx.get(url + "/v1/health", timeout=2).raise_for_status()
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise SystemExit("refrain serve did not answer in time")


def _stop(processes: list[subprocess.Popen]) -> None:
    """Ask every server to stop, then wait for each, killing one that does not stop within a minute."""
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()


def _run(url: str, key: str, uploads: list[Path], n_requests: int, clients: int) -> dict:
    def one(i: int) -> tuple[float, str]:
        path = uploads[i % len(uploads)]
        with open(path, "rb") as handle:
            started = time.perf_counter()
            response = client_for().post("/v1/matches", files={"file": (path.name, handle, "audio/wav")})
            elapsed = time.perf_counter() - started
        response.raise_for_status()
        return elapsed, response.json()["verdict"]

    local = threading.local()

    def client_for() -> httpx.Client:
        if not hasattr(local, "client"):  # one keep-alive connection per client thread
            local.client = httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=120)
        return local.client

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(min(clients * 2, n_requests))))  # warm-up: connections, caches
        started = time.perf_counter()
        results = list(pool.map(one, range(n_requests)))
        wall = time.perf_counter() - started
    latencies = np.array([elapsed for elapsed, _ in results]) * 1000.0
    verdicts: dict[str, int] = {}
    for _, verdict in results:
        verdicts[verdict] = verdicts.get(verdict, 0) + 1
    return {"clients": clients, "requests": n_requests, "matches_per_second": round(n_requests / wall, 2),
            "p50_ms": round(float(np.percentile(latencies, 50)), 1),
            "p99_ms": round(float(np.percentile(latencies, 99)), 1),
            "mean_ms": round(float(latencies.mean()), 1), "verdicts": verdicts}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--songs", type=int, default=8, help="generated catalogue songs (default 8)")
    parser.add_argument("--song-seconds", type=float, default=40.0)
    parser.add_argument("--requests", type=int, default=100, help="matches per client setting (default 100)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--index", type=Path, default=None,
                        help="serve this existing index instead of a generated one (uploads are then "
                             "generated songs, mostly not in it)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="refrain-bench-service-") as tmp:
        tmp = Path(tmp)
        songs = []
        for n in range(args.songs):
            y = render_song(1000 + n, args.song_seconds, sr=SR)
            path = tmp / f"song-{n}.wav"
            sf.write(path, y, SR, subtype="PCM_16")
            songs.append((path, y))
        uploads = []
        for n, (_, y) in enumerate(songs):
            for start in (3.0, 17.0):
                path = tmp / f"upload-{n}-{start:g}.wav"
                i = int(start * SR)
                sf.write(path, y[i:i + int(UPLOAD_SECONDS * SR)], SR, subtype="PCM_16")
                uploads.append(path)

        index = args.index or tmp / "index"
        refrain = [str(Path(sys.executable).with_name("refrain"))]
        admin_key, uploader_key = (
            subprocess.run([*refrain, "keys", "create", "--role", role, "--principal", principal, "--label", "bench",
                            "--index", str(index)], capture_output=True, text=True, check=True).stdout.strip()
            for role, principal in (("admin", "ops"), ("uploader", "bench")))

        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen([*refrain, "serve", "--index", str(index), "--port", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_for(url, server)
            ingest_started = time.perf_counter()
            if args.index is None:
                with httpx.Client(base_url=url, headers={"X-API-Key": admin_key}, timeout=300) as admin:
                    for n, (path, _) in enumerate(songs):
                        with open(path, "rb") as handle:
                            admin.post("/v1/works", files={"file": (path.name, handle, "audio/wav")},
                                       data={"title": f"Song {n}", "artists": "Bench",
                                             "rights_holder": "Bench Records"}).raise_for_status()
            report = {"catalogue_tracks": httpx.get(url + "/v1/health").json()["tracks"],
                      "catalogue_ingest_seconds": round(time.perf_counter() - ingest_started, 2),
                      "upload_seconds": UPLOAD_SECONDS, "cpus": os.cpu_count(),
                      "runs": [_run(url, uploader_key, uploads, args.requests, clients)
                               for clients in args.clients]}
        finally:
            _stop([server])
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

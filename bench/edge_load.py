"""The service under hostile load, at its default limits (issue 18's figures).

    flock /tmp/refrain-bench.lock python bench/edge_load.py stalled --connections 300
    flock /tmp/refrain-bench.lock python bench/edge_load.py long --uploaders 32 --minutes 20 --seconds 120

``stalled``: opens N uploads that send their headers and a few bytes, then nothing;
meanwhile measures ``/v1/health`` latency and makes one real 10 s upload; reports
when the server closed each stalled connection (its ``body_idle_timeout``).

``long``: N clients each upload a generated ``--minutes`` file again and again for
``--seconds``, honouring ``Retry-After``; samples the server's RSS every 0.2 s;
reports statuses (200 / 503 / other) and the peak RSS against the budget
docs/service.md documents.

Both run ``refrain serve`` (a subprocess on 127.0.0.1) on a fresh index holding the
bundled sample catalogue.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.fresh import status_mb  # noqa: E402
from bench.service import _free_port, _stop, _wait_for  # noqa: E402

REFRAIN = [sys.executable, "-m", "refrain.cli"]


def _serve(root: Path) -> tuple[subprocess.Popen, str, str]:
    """A service on a fresh index of the sample catalogue; (process, url, uploader key)."""
    index = root / "index"
    subprocess.run([*REFRAIN, "ingest", "--index", str(index), str(ROOT / "sample_audio" / "catalogue")],
                   check=True, capture_output=True)
    key = subprocess.run([*REFRAIN, "keys", "create", "--role", "uploader", "--principal", "load", "--index",
                          str(index)], check=True, capture_output=True, text=True).stdout.strip()
    port = _free_port()
    server = subprocess.Popen([*REFRAIN, "serve", "--index", str(index), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(url, server)
    except SystemExit:
        server.kill()
        raise
    return server, url, key


def _audio(path: Path, seconds: float, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    catalogue = sorted((ROOT / "sample_audio" / "catalogue").iterdir())
    y, rate = sf.read(catalogue[0], dtype="float32", always_2d=True)
    y = y.mean(axis=1)
    reps = int(np.ceil(seconds * rate / len(y)))
    signal = np.tile(y, reps)[:int(seconds * rate)] + 0.001 * rng.standard_normal(int(seconds * rate))
    sf.write(path, signal.astype(np.float32), rate, subtype="PCM_16")
    return path


def stalled(connections: int, root: Path) -> None:
    server, url, key = _serve(root)
    try:
        host, port = "127.0.0.1", int(url.rsplit(":", 1)[1])
        head = (f"POST /v1/matches HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {key}\r\n"
                "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 10000000\r\n\r\n"
                "--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"s.wav\"\r\n\r\nRIFF").encode()
        socks, opened = [], time.monotonic()
        for _ in range(connections):
            sock = socket.create_connection((host, port), timeout=120)
            sock.sendall(head)
            socks.append(sock)
        closed_after, first_lines = [], Counter()

        def watch(sock: socket.socket) -> None:
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            closed_after.append(time.monotonic() - opened)
            first_lines[data.split(b"\r\n", 1)[0].decode(errors="replace")] += 1

        watchers = [threading.Thread(target=watch, args=(s,), daemon=True) for s in socks]
        for thread in watchers:
            thread.start()
        time.sleep(1.0)
        latencies = []
        with httpx.Client(base_url=url, timeout=30) as client:
            for _ in range(20):
                start = time.perf_counter()
                assert client.get("/v1/health").status_code == 200
                latencies.append((time.perf_counter() - start) * 1000)
                time.sleep(0.1)
            path = _audio(root / "real.wav", 10.0, seed=1)
            start = time.perf_counter()
            with open(path, "rb") as handle:
                real = client.post("/v1/matches", headers={"X-API-Key": key},
                                   files={"file": ("real.wav", handle, "audio/wav")})
            real_ms = (time.perf_counter() - start) * 1000
        for thread in watchers:
            thread.join(120)
        print(f"{connections} stalled uploads open; /v1/health over 20 calls: median "
              f"{statistics.median(latencies):.1f} ms, max {max(latencies):.1f} ms")
        print(f"a real 10 s upload meanwhile: HTTP {real.status_code} ({real.json().get('verdict')}) "
              f"in {real_ms:.0f} ms")
        print(f"stalled connections closed by the server: {len(closed_after)} of {connections}, "
              f"after {min(closed_after):.1f}-{max(closed_after):.1f} s; answers: {dict(first_lines)}")
    finally:
        _stop([server])


def long_uploads(uploaders: int, minutes: float, seconds: float, root: Path) -> None:
    server, url, key = _serve(root)
    try:
        path = _audio(root / "long.wav", minutes * 60)
        baseline = status_mb("VmRSS", server.pid)
        statuses: Counter = Counter()
        peak = [baseline]
        stop = time.monotonic() + seconds
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], status_mb("VmRSS", server.pid))
                time.sleep(0.2)

        def client_loop() -> None:
            with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=600) as client:
                while time.monotonic() < stop:
                    with open(path, "rb") as handle:
                        try:
                            answer = client.post("/v1/matches", files={"file": ("long.wav", handle, "audio/wav")})
                        except httpx.TransportError as err:
                            statuses[f"transport error {type(err).__name__}"] += 1
                            continue
                    statuses[answer.status_code] += 1
                    if answer.status_code == 503:
                        wait = float(answer.headers.get("retry-after", "1"))
                        time.sleep(min(wait, max(0.0, stop - time.monotonic())))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        clients = [threading.Thread(target=client_loop) for _ in range(uploaders)]
        started = time.monotonic()
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join()
        done.set()
        sampler.join()
        print(f"{uploaders} uploaders x {minutes:g}-minute files for {time.monotonic() - started:.0f} s: "
              f"statuses {dict(statuses)}")
        print(f"server RSS: {baseline:.0f} MB at rest, peak {peak[0]:.0f} MB")
    finally:
        _stop([server])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="scenario", required=True)
    one = sub.add_parser("stalled")
    one.add_argument("--connections", type=int, default=300)
    two = sub.add_parser("long")
    two.add_argument("--uploaders", type=int, default=32)
    two.add_argument("--minutes", type=float, default=20.0)
    two.add_argument("--seconds", type=float, default=120.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="refrain-edge-load-") as tmp:
        if args.scenario == "stalled":
            stalled(args.connections, Path(tmp))
        else:
            long_uploads(args.uploaders, args.minutes, args.seconds, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())

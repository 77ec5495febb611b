"""The cluster on this machine: throughput, latency, router overhead, memory per shard, engine overheads.

For 1, 2 and 4 shards (a local cluster: a Dask scheduler and one worker process per
shard) over one generated catalogue, and 1 and 2 service processes
(``refrain serve --cluster``, the clients spread over them), a bounded number of 10 s
and 3-minute uploads (excerpts of catalogue songs and songs played back to back); then
the router's overhead per query against a single index of the same tracks (in this
process: the time the router adds to the slowest shard's own matching), the resident
memory of each shard process, and the per-call overhead of the engines compared in
docs/cluster.md (Dask tasks, Dask actors and, when ``ray`` is importable, Ray actors)::

    flock /work/bench.lock python bench/cluster.py [--songs 12] [--requests 40] [--long-requests 4]
    flock /work/bench.lock python bench/cluster.py --engines-only

Prints one JSON object. Wall-clock figures on a shared machine are noisy: the router's
overhead is also given in CPU time of this process, and the load average is reported.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import psutil
import soundfile as sf

from refrain.api import Refrain
from refrain.cluster import ClusterCatalog, ClusterRefrain, LocalCluster
from refrain.fingerprint import fingerprint_signal, load_audio
from refrain.synth import render_song
from service import _free_port, _wait_for  # bench/service.py

SR = 22050
SHORT_SECONDS, LONG_SECONDS = 10.0, 180.0


def _catalogue(tmp: Path, songs: int, seconds: float) -> tuple[list[Path], list[Path], list[Path]]:
    """(catalogue files, 10 s uploads, 3-minute uploads: five songs back to back, each an excerpt)."""
    files, samples = [], []
    for n in range(songs):
        y = render_song(2000 + n, seconds, sr=SR)
        files.append(tmp / f"song-{n}.wav")
        sf.write(files[-1], y, SR, subtype="PCM_16")
        samples.append(y)
    short, long = [], []
    for n, y in enumerate(samples):
        short.append(tmp / f"short-{n}.wav")
        sf.write(short[-1], y[3 * SR:3 * SR + int(SHORT_SECONDS * SR)], SR, subtype="PCM_16")
    per_song = int(LONG_SECONDS / 5 * SR)
    for n in range(max(1, len(samples) // 5)):
        parts = [np.resize(samples[(n * 5 + k) % len(samples)], per_song) for k in range(5)]
        long.append(tmp / f"long-{n}.wav")
        sf.write(long[-1], np.concatenate(parts), SR, subtype="PCM_16")
    return files, short, long


def _load(urls: list[str], key: str, uploads: list[Path], n_requests: int, clients: int) -> dict:
    """Uploads spread over the service processes; uploads/s and client-side latency percentiles."""
    local, threads = threading.local(), itertools.count()

    def one(i: int) -> float:
        if not hasattr(local, "client"):  # one keep-alive connection per client thread, threads spread over urls
            local.client = httpx.Client(base_url=urls[next(threads) % len(urls)], headers={"X-API-Key": key},
                                        timeout=600)
        path = uploads[i % len(uploads)]
        with open(path, "rb") as handle:
            started = time.perf_counter()
            response = local.client.post("/v1/matches", files={"file": (path.name, handle, "audio/wav")})
            elapsed = time.perf_counter() - started
        response.raise_for_status()
        return elapsed

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(clients)))  # warm-up: connections, page cache
        started = time.perf_counter()
        latencies = np.array(list(pool.map(one, range(n_requests))))
        wall = time.perf_counter() - started
    return {"requests": n_requests, "clients": clients, "uploads_per_second": round(n_requests / wall, 2),
            "p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 1),
            "p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 1)}


def _serve(refrain: list[str], directory: Path, workers: int) -> tuple[list[subprocess.Popen], list[str]]:
    processes, urls = [], []
    for _ in range(workers):
        port = _free_port()
        processes.append(subprocess.Popen([*refrain, "serve", "--cluster", str(directory), "--port", str(port)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        urls.append(f"http://127.0.0.1:{port}")
        _wait_for(urls[-1], processes[-1])
        while not httpx.get(urls[-1] + "/v1/health/ready", timeout=5).is_success:  # warmed up
            time.sleep(0.5)
    return processes, urls


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def _shard_rss_mb(local: LocalCluster) -> list[float]:
    """Resident memory of each shard's worker process (the nanny's child), MB."""
    sizes = []
    for workers in local.workers.values():
        for nanny in workers:
            children = psutil.Process(nanny.pid).children()
            sizes.append(round(sum(c.memory_info().rss for c in children) / 1e6, 1))
    return sizes


def _router_overhead(directory: Path, single: Path, uploads: list[Path]) -> dict:
    """What the router adds to a query: wall ms beyond the slowest shard's matching, and this process's CPU ms.

    Also the whole cluster query beside one index's match of the same fingerprint (wall ms):
    with one shard the difference is the router's and the engine's cost alone.
    """
    added, transport, cpu, single_ms, cluster_ms = [], [], [], [], []
    with Refrain.open(single, mmap=True) as index, ClusterRefrain.open(directory, deadline_seconds=120) as cluster:
        cluster.warm_up()
        for path in uploads * 5:
            fp = fingerprint_signal(load_audio(path, index.params.sample_rate, 60), index.params, dense_peaks=True)
            started = time.perf_counter()
            index.match_fingerprint(fp, "q")
            single_ms.append((time.perf_counter() - started) * 1000)
            cpu_started, started = time.process_time(), time.perf_counter()
            cluster.match_fingerprint(fp, "q")
            cluster_ms.append((time.perf_counter() - started) * 1000)
            cpu.append((time.process_time() - cpu_started) * 1000)
            spent = cluster.last_overhead
            added.append((spent["shards"] + spent["merged"] - spent["slowest_shard_matching"]) * 1000)
            transport.append((spent["shards"] - spent["slowest_shard_call"]) * 1000)
    return {"queries": len(added), "added_wall_ms_p50": round(float(np.median(added)), 1),
            "added_wall_ms_p90": round(float(np.percentile(added, 90)), 1),
            "engine_round_trip_ms_p50": round(float(np.median(transport)), 1),
            "router_cpu_ms_p50": round(float(np.median(cpu)), 1),
            "router_cpu_ms_p90": round(float(np.percentile(cpu, 90)), 1),
            "cluster_match_ms_p50": round(float(np.median(cluster_ms)), 1),
            "single_index_match_ms_p50": round(float(np.median(single_ms)), 1)}


def _noop(directory, payload):
    return len(payload)


class _Echo:
    def call(self, payload):
        return len(payload)


def _engines(tmp: Path, rounds: int = 50) -> dict:
    """Per-call overhead (ms per round of one no-op call to each of 3 shards, small and 200 kB arguments)."""
    from distributed import Client

    payloads = {"small": b"x", "200kB": np.zeros(200_000, np.uint8)}
    report: dict = {}
    directory = tmp / "engines"
    ClusterCatalog.create(directory, 3).close()
    catalog = ClusterCatalog(directory)
    shards = catalog.shards()

    def timed(call) -> float:
        for _ in range(5):
            call()
        started = time.perf_counter()
        for _ in range(rounds):
            call()
        return round((time.perf_counter() - started) / rounds * 1000, 2)

    with LocalCluster(directory, shards) as local:
        local.wait_ready()
        with Client(scheduler_file=str(local.scheduler_file), set_as_default=False) as client:
            for label, payload in payloads.items():
                report[f"dask_tasks_{label}_ms"] = timed(lambda: client.gather(
                    [client.submit(_noop, s.directory, payload, resources={s.resource: 1}, pure=False)
                     for s in shards]))
            with client.as_current():
                actors = [client.submit(_Echo, actor=True, resources={s.resource: 1}).result() for s in shards]
            for label, payload in payloads.items():
                report[f"dask_actors_{label}_ms"] = timed(lambda: [f.result() for f in
                                                                   [a.call(payload) for a in actors]])
    catalog.close()
    try:
        import ray
    except ImportError:
        report["ray"] = "not installed"
        return report
    ray.init(num_cpus=3, include_dashboard=False, logging_level="ERROR")
    try:
        echo = ray.remote(_Echo)
        ray_actors = [echo.remote() for _ in range(3)]
        for label, payload in payloads.items():
            report[f"ray_actors_{label}_ms"] = timed(lambda: ray.get([a.call.remote(payload) for a in ray_actors]))
    finally:
        ray.shutdown()
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--songs", type=int, default=12, help="generated catalogue songs (default 12)")
    parser.add_argument("--song-seconds", type=float, default=40.0)
    parser.add_argument("--requests", type=int, default=40, help="10 s uploads per setting (default 40)")
    parser.add_argument("--long-requests", type=int, default=4, help="3-minute uploads per setting (default 4)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent uploaders (default 4)")
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="service processes")
    parser.add_argument("--engines-only", action="store_true", help="only the engines' per-call overhead")
    args = parser.parse_args()
    refrain = [str(Path(sys.executable).with_name("refrain"))]
    report: dict = {"cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="refrain-bench-cluster-") as tmp:
        tmp = Path(tmp)
        report["engines"] = _engines(tmp)
        if args.engines_only:
            print(json.dumps(report, indent=2))
            return 0
        files, short, long = _catalogue(tmp, args.songs, args.song_seconds)
        with Refrain.open(tmp / "single", create=True) as single:
            list(single.ingest(files))
        report["catalogue"] = {"tracks": len(files), "hours": round(len(files) * args.song_seconds / 3600, 3)}
        report["runs"] = []
        for shards in args.shards:
            directory = tmp / f"cluster-{shards}"
            ClusterCatalog.create(directory, shards).close()
            with ClusterRefrain.open(directory, writable=True) as cluster:
                list(cluster.ingest(files))
            catalog = ClusterCatalog(directory)
            with LocalCluster(directory, catalog.shards()) as local:
                local.wait_ready()
                key = subprocess.run([*refrain, "keys", "create", "--role", "uploader", "--principal", "bench",
                                      "--db", str(directory.with_name(directory.name + ".service.sqlite"))],
                                     capture_output=True, text=True, check=True).stdout.strip()
                run = {"shards": shards, "router_overhead": _router_overhead(directory, tmp / "single", short[:4])}
                for workers in args.workers:
                    processes, urls = _serve(refrain, directory, workers)
                    try:
                        run[f"workers_{workers}"] = {
                            "uploads_10s": _load(urls, key, short, args.requests, args.clients),
                            "uploads_3min": _load(urls, key, long, args.long_requests, min(args.clients, 2))}
                    finally:
                        _stop(processes)
                run["shard_rss_mb"] = _shard_rss_mb(local)
                report["runs"].append(run)
                print(json.dumps(run), file=sys.stderr, flush=True)
            catalog.close()
    report["load_average_at_end"] = os.getloadavg()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The cluster on this machine: throughput, latency, router overhead, memory per shard, engine overheads.

First one index directory served by 1 and 2 service processes (``refrain serve --index
DIR --workers N``); then, for 1, 2 and 4
shards (a local cluster: a Dask scheduler and one worker process per shard) over the
same generated catalogue, ``refrain serve --cluster --workers N`` for N = 1 and 2: a
bounded number of 10 s and 3-minute uploads (excerpts of catalogue songs and songs
played back to back), each on a new connection; the router's overhead per query
against a single index of the same tracks (in this process: the time the router adds
to the slowest shard's own matching, and the engine's round trip beyond the shard's
whole call), the resident memory of each shard process, and the per-call overhead of
the engines compared in docs/cluster.md (Dask tasks, Dask actors and, when ``ray`` is
importable, Ray actors)::

    flock /work/bench.lock python bench/cluster.py [--songs 12] [--requests 40] [--long-requests 4]
    flock /work/bench.lock python bench/cluster.py --parts engines

Every service and shard process runs with one thread per BLAS/OpenMP/numba pool. CPU
is reported in cores (CPU seconds per wall second) for the service processes, the shard
processes and the load generator (this process), with the load average before and
after each load. Prints one JSON object (and each part on stderr as it is measured).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
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
from service import _free_port, _stop, _wait_for  # bench/service.py

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


#: Every service and shard process of a measurement runs with one thread per pool (BLAS, OpenMP, numba).
PINNED = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")}


def _cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def _load(urls: list[str], key: str, uploads: list[Path], n_requests: int, clients: int,
          servers: list[psutil.Process], shards: list[psutil.Process] = ()) -> dict:
    """Uploads spread over the services' addresses; uploads/s, client-side latency, CPU used by each side.

    Every upload opens a new connection (as many uploaders do), so that processes sharing
    one listening socket each accept their share. CPU is given in cores (CPU seconds per
    wall second) for the service processes, the shard processes and this load generator.
    """
    turn = itertools.count()
    # "Connection: close": the service closes each connection after its answer, the pool opens a new one.
    client = httpx.Client(timeout=600, headers={"X-API-Key": key, "Connection": "close"},
                          limits=httpx.Limits(max_connections=clients))

    def one(i: int) -> float:
        path = uploads[i % len(uploads)]
        with open(path, "rb") as handle:
            started = time.perf_counter()
            response = client.post(urls[next(turn) % len(urls)] + "/v1/matches",
                                   files={"file": (path.name, handle, "audio/wav")})
            elapsed = time.perf_counter() - started
        response.raise_for_status()
        return elapsed

    me = psutil.Process()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(2 * clients)))  # warm-up: page cache, every worker's first query
        cpu = [_cpu_seconds(servers), _cpu_seconds(list(shards)), _cpu_seconds([me])]
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        latencies = np.array(list(pool.map(one, range(n_requests))))
        wall = time.perf_counter() - started
        used = [_cpu_seconds(servers) - cpu[0], _cpu_seconds(list(shards)) - cpu[1], _cpu_seconds([me]) - cpu[2]]
    client.close()
    return {"requests": n_requests, "clients": clients, "uploads_per_second": round(n_requests / wall, 2),
            "p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 1),
            "p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 1),
            "service_cores": round(used[0] / wall, 2), "shard_cores": round(used[1] / wall, 2),
            "load_generator_cores": round(used[2] / wall, 2),
            "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)]}


def _serve(refrain: list[str], option: str, directory: Path, db: Path, workers: int
           ) -> tuple[subprocess.Popen, str, list[psutil.Process]]:
    """``refrain serve`` with ``workers`` processes, warmed up: (supervisor or server, url, serving processes)."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([*refrain, "serve", option, str(directory), "--db", str(db), "--port", str(port),
                                "--workers", str(workers)], env={**os.environ, **PINNED},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(url, process)
    supervisor = psutil.Process(process.pid)
    serving = supervisor.children() if workers > 1 else [supervisor]
    while len(serving) < workers:
        time.sleep(0.2)
        serving = supervisor.children()
    ready = 0
    while ready < 4 * workers:  # warmed up (readiness answers once the matcher's kernels are loaded)
        ready = ready + 1 if httpx.get(url + "/v1/health/ready", timeout=30).is_success else 0
        time.sleep(0.1)
    return process, url, serving


def _threads(serving: list[psutil.Process]) -> list[dict]:
    """What each serving process really runs with: its threads, and its pools' environment."""
    return [{"threads": p.num_threads(), **{name: p.environ().get(name) for name in PINNED}} for p in serving]


def _uploader_key(refrain: list[str], db: Path) -> str:
    """An uploader key of the service database ``db`` (created with the database)."""
    return subprocess.run([*refrain, "keys", "create", "--role", "uploader", "--principal", "bench", "--db", str(db)],
                          capture_output=True, text=True, check=True).stdout.strip()


def _index_workers(refrain: list[str], single: Path, short: list[Path], workers: int, requests: int,
                   clients: int) -> dict:
    """One index directory served by ``refrain serve --index DIR --workers N``: every process its own read-only view."""
    db = single.with_name(single.name + ".service.sqlite")
    key = _uploader_key(refrain, db)
    process, url, serving = _serve(refrain, "--index", single, db, workers)
    try:
        return {**_load([url], key, short, requests, clients, serving), "processes": _threads(serving)}
    finally:
        _stop([process])


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
    import pickle

    added, transport, cpu, single_ms, cluster_ms, sizes = [], [], [], [], [], []
    with Refrain.open(single, mmap=True) as index, ClusterRefrain.open(directory, deadline_seconds=120) as cluster:
        cluster.warm_up()
        for path in uploads * 5:
            fp = fingerprint_signal(load_audio(path, index.params.sample_rate, 60), index.params, dense_peaks=True)
            sizes.append(len(pickle.dumps((fp, "q", cluster.config.match), protocol=pickle.HIGHEST_PROTOCOL)))
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
            "single_index_match_ms_p50": round(float(np.median(single_ms)), 1),
            "query_bytes": int(np.median(sizes))}


def _engine_floor(local: LocalCluster, payload_bytes: int, rounds: int = 40) -> dict:
    """The engine alone: one no-op actor call to every shard worker, awaited together, ms per round.

    Once with a query's arguments in the call (as to a shard on another machine), once with
    a few bytes (as to a shard on the router's machine, which reads them from shared
    memory). Beside the router's overhead on real queries, this tells what the shards'
    matching adds to the round trip when the shard processes share this machine's cores
    with each other and the router.
    """
    import asyncio

    from distributed import Client

    async def together(calls):
        return await asyncio.gather(*[_awaited(call) for call in calls])

    report = {"payload_bytes": payload_bytes}
    with Client(scheduler_file=str(local.scheduler_file), set_as_default=False) as client:
        with client.as_current():
            actors = [client.submit(_Echo, actor=True, pure=False, resources={shard.resource: 1}).result()
                      for shard in local.shards.values()]
        for label, size in (("with_arguments", payload_bytes), ("few_bytes", 64)):
            payload = np.zeros(size, np.uint8).tobytes()
            rounds_ms = []
            for number in range(rounds + 5):
                started = time.perf_counter()
                client.sync(together, [actor.call(payload) for actor in actors])
                if number >= 5:
                    rounds_ms.append((time.perf_counter() - started) * 1000)
            report[f"{label}_round_ms_p50"] = round(float(np.median(rounds_ms)), 1)
            report[f"{label}_round_ms_p90"] = round(float(np.percentile(rounds_ms, 90)), 1)
    return report


async def _awaited(call):
    return await call


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
    parser.add_argument("--clients", type=int, default=8, help="concurrent uploaders (default 8)")
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="service processes")
    parser.add_argument("--parts", nargs="+", choices=["engines", "index", "cluster", "router"],
                        default=["engines", "index", "cluster"],
                        help="what to measure: the engines' per-call overhead, one index served by 1 and 2 "
                             "processes, the clusters (default these three); `router`: for each --shards, only "
                             "the router's overhead and the engine's no-op round trip (no service load)")
    args = parser.parse_args()
    refrain = [str(Path(sys.executable).with_name("refrain"))]
    report: dict = {"cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="refrain-bench-cluster-") as tmp:
        tmp = Path(tmp)
        if "engines" in args.parts:
            report["engines"] = _engines(tmp)
        files, short, long = _catalogue(tmp, args.songs, args.song_seconds)
        with Refrain.open(tmp / "single", create=True) as single:
            list(single.ingest(files))
        report["catalogue"] = {"tracks": len(files), "hours": round(len(files) * args.song_seconds / 3600, 3)}
        report["runs"] = []
        for workers in args.workers if "index" in args.parts else []:
            report[f"index_workers_{workers}"] = _index_workers(refrain, tmp / "single", short, workers,
                                                                args.requests, args.clients)
            print(json.dumps({f"index_workers_{workers}": report[f"index_workers_{workers}"]}), file=sys.stderr,
                  flush=True)
        for shards in args.shards if {"cluster", "router"} & set(args.parts) else []:
            directory = tmp / f"cluster-{shards}"
            ClusterCatalog.create(directory, shards).close()
            with ClusterRefrain.open(directory, writable=True) as cluster:
                list(cluster.ingest(files))
            catalog = ClusterCatalog(directory)
            with LocalCluster(directory, catalog.shards(), environment=PINNED) as local:
                local.wait_ready()
                db = directory.with_name(directory.name + ".service.sqlite")
                key = _uploader_key(refrain, db)
                run = {"shards": shards, "router_overhead": _router_overhead(directory, tmp / "single", short[:4])}
                if "cluster" not in args.parts:
                    run["engine_floor"] = _engine_floor(local, run["router_overhead"]["query_bytes"])
                    report["runs"].append(run)
                    print(json.dumps(run), file=sys.stderr, flush=True)
                    catalog.close()
                    continue
                shard_processes = [child for workers in local.workers.values() for nanny in workers
                                   for child in psutil.Process(nanny.pid).children()]
                for workers in args.workers:
                    process, url, serving = _serve(refrain, "--cluster", directory, db, workers)
                    try:
                        run[f"workers_{workers}"] = {
                            "uploads_10s": _load([url], key, short, args.requests, args.clients, serving,
                                                 shard_processes),
                            "processes": _threads(serving)}
                        if args.long_requests:
                            run[f"workers_{workers}"]["uploads_3min"] = _load(
                                [url], key, long, args.long_requests, min(args.clients, 2), serving, shard_processes)
                    finally:
                        _stop([process])
                run["shard_rss_mb"] = _shard_rss_mb(local)
                report["runs"].append(run)
                print(json.dumps(run), file=sys.stderr, flush=True)
            catalog.close()
    report["load_average_at_end"] = os.getloadavg()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

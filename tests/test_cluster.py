"""A catalogue on 3 shard processes answers as one index over the same tracks, and never `clear` from part of it.

A local Dask cluster (scheduler + one worker process per shard) is started by the
fixture; the suite's generated songs are ingested into it and into one index; real
queries go through the library and through the real service over HTTP.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields

import httpx
import numpy as np
import pytest
import uvicorn

from refrain.api import Refrain
from refrain.cluster import ClusterCatalog, ClusterRefrain, LocalCluster, ShardUnavailableError
from refrain.cluster.counts import TierCounts
from refrain.cluster.shard import CatalogueWideCounts
from refrain.fingerprint import fingerprint_signal
from refrain.index.landmarks import LandmarkIndex
from refrain.matcher import Match
from refrain.service.app import create_app
from refrain.service.db import ServiceDB
from refrain.service.settings import ServiceSettings

pytestmark = pytest.mark.slow

SHARDS = 3
SR = 22050
POLICY = {"copy": "deny", "remix": "licence_required", "cover": "deny", "royalty_share": 0.5}


@pytest.fixture(scope="module")
def cluster_and_index(tmp_path_factory, songs):
    """(cluster directory, LocalCluster, single index directory), both holding the catalogue songs."""
    root = tmp_path_factory.mktemp("cluster")
    files = [song.path for song in songs.values()]
    with Refrain.open(root / "single", create=True) as single:
        assert all(r.status == "added" for r in single.ingest(files))
    ClusterCatalog.create(root / "cluster", SHARDS).close()
    catalog = ClusterCatalog(root / "cluster")
    with LocalCluster(root / "cluster", catalog.shards()) as local:
        local.wait_ready()
        with ClusterRefrain.open(root / "cluster", writable=True) as cluster:
            assert [(r.status, r.track_id) for r in cluster.ingest(files)] == \
                [("added", i) for i in range(1, len(files) + 1)]
            # Placement by catalogue seconds spreads the six songs over every shard.
            assert all(seconds > 0 for seconds in catalog.seconds_per_shard().values())
            cluster.warm_up()
        yield root / "cluster", local, root / "single"
    catalog.close()


def _described(matches) -> list[tuple]:
    return [tuple(getattr(m, f.name) for f in fields(Match) if f.name != "points") + (m.source,) for m in matches]


def _queries(songs, render) -> dict[str, np.ndarray]:
    """Excerpts, a noisy excerpt, a tempo change, two songs back to back (windowed), unrelated music."""
    from refrain.synth import render_song
    song = songs[34]
    draw = np.random.default_rng(1)
    return {"excerpt": song.excerpt(8.0, 10.0),
            "noisy": song.excerpt(3.0, 12.0) + 0.05 * draw.standard_normal(int(12.0 * SR)).astype(np.float32),
            "faster": render_song(41, 20.0, sr=SR, tempo=1.1),
            "medley": np.concatenate([songs[30].samples, songs[49].samples]),
            "unrelated": render(45, 15.0)}


def test_cluster_matches_as_one_index(cluster_and_index, songs, render):
    directory, _, single_dir = cluster_and_index
    with Refrain.open(single_dir, mmap=True) as single, ClusterRefrain.open(directory) as cluster:
        import soxr
        for name, y in _queries(songs, render).items():
            y = soxr.resample(y, SR, single.params.sample_rate).astype(np.float32)
            fp = fingerprint_signal(y, single.params, dense_peaks=True)
            expected = single.match_fingerprint(fp, name)
            got = cluster.match_fingerprint(fp, name)
            assert _described(got.matches) == _described(expected.matches), name
            assert cluster.last_overhead["stale_counts"] == 0
            if name != "unrelated":
                assert got.matches, name
        assert [t.source for t in cluster.tracks()] == [t.source for t in single.tracks()]
        assert cluster.info().tracks == single.info().tracks == len(songs)


def test_the_count_table_holds_the_counts_of_one_index(cluster_and_index, tmp_path, songs):
    import json

    from refrain.cluster.counts import CountTable
    from refrain.index.landmarks import LandmarkIndex, unmix_codes
    directory, _, single_dir = cluster_and_index
    table = CountTable(directory / "counts.npz")
    with Refrain.open(single_dir, mmap=True) as single:
        manifest = json.loads((single_dir / "manifest.json").read_text())
        landmark_tiers = {name: tier for name, tier in single.store.tiers.items() if isinstance(tier, LandmarkIndex)}
        assert set(table.tiers) == set(landmark_tiers) and table.total_tracks == len(songs)
        for name, tier in landmark_tiers.items():
            stored, _ = LandmarkIndex.load(single_dir / manifest["tiers"][name]["file"], tier.payload_bits,
                                           mmap=True).code_table()
            codes = unmix_codes(stored)
            absent = (codes.astype(np.uint64) * 7 + 3).astype(np.uint32)  # mostly codes no track holds
            for asked in (codes, absent):
                assert np.array_equal(table.tiers[name].code_counts(asked), tier.code_counts(asked)), name
            assert table.tiers[name].entries == tier.ntotal

    # A takedown rewrites the table: the track's entries and the track leave the totals.
    grown = tmp_path / "takedown"
    ClusterCatalog.create(grown, 2).close()
    with ClusterRefrain.open(grown, writable=True) as cluster:
        list(cluster.ingest([song.path for song in songs.values()]))
        before = CountTable(grown / "counts.npz")
        removed = cluster.remove(1)
        after = CountTable(grown / "counts.npz")
    assert after.total_tracks == before.total_tracks - 1 == len(songs) - 1
    assert after.tiers["pair"].entries == before.tiers["pair"].entries - removed.n_landmarks


class _Server:
    def __init__(self, settings: ServiceSettings, port: int):
        self.server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                                    log_level="warning", timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{port}"

    def __enter__(self) -> "_Server":
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the service did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def test_the_count_table_counts_the_entries_of_shards_committed_in_deltas(tmp_path, songs):
    from dataclasses import replace

    from refrain.cluster.counts import CountTable
    from refrain.config import Config
    from refrain.index import IndexWriteParams
    from refrain.index.landmarks import LandmarkIndex
    # Every commit writes a delta, none is merged: as in a shard past a few catalogue hours.
    config = replace(Config(), commit_every=1,
                     index_writes=IndexWriteParams(whole_below_bytes=0, merge_share=float("inf")))
    paths = [song.path for song in songs.values()]
    directory = tmp_path / "deltas"
    ClusterCatalog.create(directory, 1).close()
    with ClusterRefrain.open(directory, config=config, writable=True) as cluster:
        list(cluster.ingest(paths))
    single_dir = tmp_path / "single"
    with Refrain.open(single_dir, writable=True, create=True) as single:
        list(single.ingest(paths))
    shard_dir = Path(ClusterCatalog(directory).placement().directory)
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    assert any(entry.get("deltas") for entry in manifest["tiers"].values())
    table = CountTable(directory / "counts.npz")
    with Refrain.open(single_dir, mmap=True) as single:
        for name, tier in single.store.tiers.items():
            if isinstance(tier, LandmarkIndex):
                codes, _ = tier.code_table()
                asked = np.concatenate([codes, codes + 1])
                assert np.array_equal(table.tiers[name].code_counts(asked), tier.code_counts(asked)), name
                assert table.tiers[name].entries == tier.ntotal


def _free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _service(settings: ServiceSettings, songs) -> tuple[_Server, str]:
    """A started service whose catalogue holds two songs registered as works; its uploader key."""
    db = ServiceDB(settings.db_path)
    try:
        admin, _ = db.create_key("admin", "ops")
        uploader, _ = db.create_key("uploader", "studio")
    finally:
        db.close()
    server = _Server(settings, _free_port()).__enter__()
    with httpx.Client(base_url=server.url, headers={"X-API-Key": admin}, timeout=120) as client:
        for seed in (34, 41):
            with open(songs[seed].path, "rb") as handle:
                made = client.post("/v1/works", files={"file": (songs[seed].path.name, handle, "audio/wav")},
                                   data={"title": f"Song {seed}", "artists": ["Ada"], "rights_holder": "Label"})
            assert made.status_code == 201, made.text
            assert client.put(f"/v1/works/{made.json()['work_id']}/policy", json=POLICY).status_code == 200
    return server, uploader


def _upload(url: str, key: str, path) -> httpx.Response:
    with open(path, "rb") as handle:
        return httpx.post(f"{url}/v1/matches", headers={"X-API-Key": key}, timeout=120,
                          files={"file": (path.name, handle, "audio/wav")})


def _decided(body: dict) -> tuple:
    return body["verdict"], [(w["title"], w["kind"], w["score"], w["confidence"]) for w in body["works"]]


def test_service_on_a_cluster_decides_as_on_one_index_and_never_clears_without_a_shard(
        tmp_path, cluster_and_index, songs, write_audio, render):
    _, local, _ = cluster_and_index
    # A fresh cluster for the service (it registers its own works), on the running engine's shards.
    directory = local.directory
    uploads = {"excerpt": write_audio(tmp_path / "excerpt.wav", songs[34].excerpt(5.0, 10.0)),
               "unrelated": write_audio(tmp_path / "unrelated.wav", render(45, 10.0)),
               "other": write_audio(tmp_path / "other.wav", songs[41].excerpt(12.0, 10.0))}
    single_settings = ServiceSettings(index_dir=tmp_path / "single", max_upload_seconds=60)
    with Refrain.open(single_settings.index_dir, create=True) as index:  # the cluster's tracks, in its order
        list(index.ingest([song.path for song in songs.values()]))
    cluster_settings = ServiceSettings(index_dir=directory, cluster=True, shard_deadline_seconds=4.0,
                                       db_path=tmp_path / "cluster.service.sqlite", works_dir=tmp_path / "works",
                                       upload_dir=tmp_path / "cluster-uploads", jobs_db_path=tmp_path / "jobs.sqlite",
                                       jobs_dir=tmp_path / "jobs", max_upload_seconds=60)
    single, single_key = _service(single_settings, songs)
    cluster, cluster_key = _service(cluster_settings, songs)
    try:
        expected = {name: _upload(single.url, single_key, path).json() for name, path in uploads.items()}
        for name, path in uploads.items():
            answer = _upload(cluster.url, cluster_key, path)
            assert answer.status_code == 200, answer.text
            assert _decided(answer.json()) == _decided(expected[name]), name
        assert expected["excerpt"]["verdict"] != "clear" and expected["unrelated"]["verdict"] == "clear"

        # One shard lost mid-load: every upload is refused with 503 or decided whole; none is `clear`
        # unless every shard answered, and the shard's return brings the answers back.
        victim = next(iter(local.workers))
        with ThreadPoolExecutor(4) as pool:
            pending = [pool.submit(_upload, cluster.url, cluster_key, uploads["excerpt"]) for _ in range(6)]
            time.sleep(0.3)
            local.kill_shard(victim)
            during = [f.result() for f in pending]
            during += [_upload(cluster.url, cluster_key, uploads[name]) for name in ("excerpt", "unrelated")]
        assert any(r.status_code == 503 for r in during), [(r.status_code, r.text[:300]) for r in during]
        for response in during:
            if response.status_code == 503:
                assert response.json()["code"] == "catalogue_unavailable"
                assert f"shard {victim}" in response.json()["message"]
            else:
                assert response.status_code == 200 and _decided(response.json()) == _decided(expected["excerpt"])
        restarted = time.monotonic()
        local.start_shard(victim)
        local.wait_ready()
        # Back once its process has imported the matcher and mapped its shard: a few seconds.
        while _upload(cluster.url, cluster_key, uploads["excerpt"]).status_code == 503:
            assert time.monotonic() - restarted < 60, "the restarted shard never answered"
        for name, path in uploads.items():
            answer = _upload(cluster.url, cluster_key, path)
            assert answer.status_code == 200, answer.text
            assert _decided(answer.json()) == _decided(expected[name]), name
        assert time.monotonic() - restarted < 60
    finally:
        cluster.__exit__()
        single.__exit__()


def test_a_missing_shard_fails_the_query_not_part_of_it(cluster_and_index, songs):
    directory, local, _ = cluster_and_index
    with ClusterRefrain.open(directory, deadline_seconds=1.0) as cluster:
        victim = next(iter(local.workers))
        local.kill_shard(victim)
        try:
            with pytest.raises(ShardUnavailableError, match=f"shard {victim}"):
                cluster.match_file(songs[34].path)
        finally:
            local.start_shard(victim)
            local.wait_ready()


def test_replicas_share_a_shards_calls_and_stand_in_for_a_lost_one(tmp_path, songs):
    import os
    import signal

    from refrain.fingerprint import load_audio

    directory = tmp_path / "replicated"
    ClusterCatalog.create(directory, 1).close()
    with ClusterRefrain.open(directory, writable=True) as cluster:
        assert [r.status for r in cluster.ingest([songs[34].path, songs[30].path])] == ["added", "added"]
    catalog = ClusterCatalog(directory)
    shards = catalog.shards()
    with LocalCluster(directory, shards, replicas=2) as local, \
            ClusterRefrain.open(directory, deadline_seconds=120) as cluster:
        local.wait_ready()
        rate = cluster.params.sample_rate
        fp = fingerprint_signal(load_audio(songs[34].path, rate, 60.0)[5 * rate:15 * rate], cluster.params,
                                dense_peaks=True)

        def answer():
            (shard_answer,) = cluster.engine.each(shards, "match", fp, "q", cluster.config.match)
            assert [m.track_id for m in shard_answer.matches][:1] == [1]
            return shard_answer.served_by

        assert sorted(answer() for _ in range(4)) == ["shard-000-0", "shard-000-0", "shard-000-1", "shard-000-1"]
        # One replica's processes killed: every query is still answered whole, by the other one.
        lost = local.workers[0][0]
        os.killpg(lost.pid, signal.SIGKILL)
        lost.wait()
        assert [answer() for _ in range(4)] == ["shard-000-1"] * 4
    catalog.close()


def _same_answers(cluster_dir, single_dir, songs, render) -> None:
    import soxr
    with Refrain.open(single_dir, mmap=True) as single, \
            ClusterRefrain.open(cluster_dir, deadline_seconds=120) as cluster:
        for name, y in _queries(songs, render).items():
            y = soxr.resample(y, SR, single.params.sample_rate).astype(np.float32)
            fp = fingerprint_signal(y, single.params, dense_peaks=True)
            # Every field but the source path: the grown cluster ingested copies of the songs.
            assert [m[:-1] for m in _described(cluster.match_fingerprint(fp, name).matches)] == \
                [m[:-1] for m in _described(single.match_fingerprint(fp, name).matches)], name


def test_added_shards_are_filled_by_a_rebalance_that_decodes_nothing(tmp_path, cluster_and_index, songs, render):
    import shutil

    from refrain import cli
    _, _, single_dir = cluster_and_index
    directory = tmp_path / "grown"
    ClusterCatalog.create(directory, 1).close()
    copies = []
    for song in songs.values():  # ingested from copies deleted before the move: nothing can be decoded again
        copies.append(tmp_path / song.path.name)
        shutil.copy(song.path, copies[-1])
    with ClusterRefrain.open(directory, writable=True) as cluster:
        assert [r.track_id for r in cluster.ingest(copies)] == list(range(1, len(copies) + 1))
    for copy in copies:
        copy.unlink()
    catalog = ClusterCatalog(directory)
    catalog.add_shard()
    catalog.add_shard()
    assert cli.main(["cluster", "rebalance", "--cluster", str(directory)]) == 0
    seconds = catalog.seconds_per_shard()
    assert len(seconds) == 3 and max(seconds.values()) - min(seconds.values()) < 40.0, seconds
    with LocalCluster(directory, catalog.shards()) as local:
        local.wait_ready()
        _same_answers(directory, single_dir, songs, render)
    catalog.close()


def test_cli_matches_a_cluster_as_an_index(cluster_and_index, songs, capsys):
    import json

    from refrain import cli
    directory, _, single_dir = cluster_and_index
    query = str(songs[41].path)
    assert cli.main(["match", "--index", str(single_dir), "--json", query]) == 0
    expected = json.loads(capsys.readouterr().out)
    assert cli.main(["match", "--cluster", str(directory), "--json", query]) == 0
    assert json.loads(capsys.readouterr().out) == expected and expected["matches"]
    assert cli.main(["info", "--cluster", str(directory)]) == 0
    assert f"tracks     {len(songs)}" in capsys.readouterr().out
    assert cli.main(["tracks", "list", "--cluster", str(directory), "--json"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(listed) == len(songs)
    assert cli.main(["tracks", "show", "--cluster", str(directory), "--json", str(listed[-1]["track_id"])]) == 0
    assert json.loads(capsys.readouterr().out) == listed[-1]


def test_a_catalogue_rescan_of_a_cluster_finds_what_one_index_finds(cluster_and_index, tmp_path, capsys):
    from refrain import cli
    directory, _, single_dir = cluster_and_index
    assert cli.main(["rescan", "catalogue", "--index", str(single_dir), "--out", str(tmp_path / "single")]) == 0
    assert cli.main(["rescan", "catalogue", "--cluster", str(directory), "--out", str(tmp_path / "cluster")]) == 0
    capsys.readouterr()
    for name in ("items.jsonl", "groups.jsonl"):
        assert (tmp_path / "cluster" / name).read_text() == (tmp_path / "single" / name).read_text()


def test_serve_runs_several_worker_processes_on_one_port(cluster_and_index, tmp_path, songs, write_audio, capsys):
    import os
    import signal
    import subprocess
    import sys

    import psutil

    from refrain import cli
    directory, _, _ = cluster_and_index
    db = tmp_path / "workers.service.sqlite"
    assert cli.main(["keys", "create", "--role", "uploader", "--principal", "t", "--db", str(db)]) == 0
    key = capsys.readouterr().out.strip()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "REFRAIN_WORKS_DIR": str(tmp_path / "works"), "REFRAIN_UPLOAD_DIR": str(tmp_path / "up"),
           "REFRAIN_JOBS_DB_PATH": str(tmp_path / "jobs.sqlite"), "REFRAIN_JOBS_DIR": str(tmp_path / "jobs")}
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env.pop(name, None)
    spooled = tmp_path / "up"
    spooled.mkdir()
    (spooled / "left-by-a-crash.wav").write_bytes(b"RIFF")
    supervisor = subprocess.Popen([sys.executable, "-m", "refrain.cli", "serve", "--cluster", str(directory),
                                   "--db", str(db), "--port", str(port), "--workers", "2"], env=env)
    try:
        def workers() -> list[psutil.Process]:
            return [p for p in psutil.Process(supervisor.pid).children() if p.is_running()
                    and p.status() != psutil.STATUS_ZOMBIE]

        def wait_ready(count: int) -> None:
            deadline = time.monotonic() + 120
            while len(workers()) != count or not all(_ready(url) for _ in range(4)):
                assert supervisor.poll() is None and time.monotonic() < deadline, "the workers did not start"
                time.sleep(0.5)

        wait_ready(2)
        started = time.monotonic()
        assert not (spooled / "left-by-a-crash.wav").exists()  # the startup repairs ran, once, before the workers
        threads = str(max(1, (os.cpu_count() or 1) // 2))
        assert [w.environ()["OMP_NUM_THREADS"] for w in workers()] == [threads, threads]
        upload = write_audio(tmp_path / "excerpt.wav", songs[34].excerpt(5.0, 10.0))
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: _upload(url, key, upload), range(8)))
        assert {a.status_code for a in answers} == {200}
        decided = [_decided(a.json()) for a in answers]
        assert decided == decided[:1] * len(decided)

        # A worker that dies after its start-up window is replaced; the port keeps answering.
        victim, first_pids = workers()[0], {w.pid for w in workers()}
        (spooled / "being-read-by-a-live-worker.wav").write_bytes(b"RIFF")
        time.sleep(max(0.0, cli._WORKER_CRASH_SECONDS - (time.monotonic() - started) + 0.5))
        victim.kill()
        victim.wait(10)
        deadline = time.monotonic() + 120
        while victim.pid in [w.pid for w in workers()] or len(workers()) != 2:
            assert time.monotonic() < deadline, "the worker was not replaced"
            time.sleep(0.2)
        wait_ready(2)
        (replacement,) = [w for w in workers() if w.pid not in first_pids]
        while True:  # until it has started up (opened the catalogue, warmed the matcher): it then idles
            busy = sum(replacement.cpu_times()[:2])
            time.sleep(1.0)
            if sum(replacement.cpu_times()[:2]) - busy < 0.05:
                break
            assert time.monotonic() < deadline, "the new worker did not settle"
        assert (spooled / "being-read-by-a-live-worker.wav").exists()  # the new worker repaired nothing
        assert _upload(url, key, upload).status_code == 200
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(60) == 0
    finally:
        if supervisor.poll() is None:
            supervisor.kill()


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/v1/health/ready", timeout=5).is_success
    except httpx.TransportError:
        return False


def test_a_shard_tells_when_the_count_table_does_not_describe_it(tmp_path, songs):
    from refrain.cluster.shard import shard_match
    from refrain.fingerprint import load_audio
    from refrain.matcher import MatchParams
    directory = tmp_path / "stale"
    ClusterCatalog.create(directory, 2).close()
    catalog = ClusterCatalog(directory)
    first, *extra = [song.path for song in songs.values()]
    with ClusterRefrain.open(directory, writable=True) as cluster:
        list(cluster.ingest([first]))
    shard = catalog.placement()  # the shard without the song
    with Refrain.open(shard.directory) as index:
        fp = fingerprint_signal(load_audio(songs[34].path, index.params.sample_rate, 60.0), index.params,
                                dense_peaks=True)

    def answer():
        return shard_match(shard.directory, shard.shard_id, str(catalog.counts_path), fp, "q", MatchParams())

    assert answer().counts_current
    with Refrain.open(shard.directory, writable=True) as index:  # behind the cluster's back: no recount
        list(index.ingest(extra[:1]))
    assert not answer().counts_current
    catalog.recount()
    assert answer().counts_current
    catalog.close()


def test_a_starting_router_removes_the_query_files_of_dead_routers_only(tmp_path):
    from refrain.cluster.engine import SHARED_PREFIX, remove_orphaned_query_files

    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    dead = tmp_path / f"{SHARED_PREFIX}{finished.pid}-abc"
    alive = tmp_path / f"{SHARED_PREFIX}{os.getpid()}-def"
    foreign = tmp_path / f"{SHARED_PREFIX}xyz-ghi"
    for path in (dead, alive, foreign):
        path.write_bytes(b"arguments")

    assert remove_orphaned_query_files(tmp_path) == 1
    assert not dead.exists() and alive.exists() and foreign.exists()


def test_a_shard_reads_the_rarest_codes_of_the_whole_catalogue_not_its_own():
    # The proposals read the rarest codes within a budget: a shard must choose them by the catalogue's counts, as
    # one index of every track would, and return its own hits of them.
    rng = np.random.default_rng(3)
    whole, shard = LandmarkIndex.create(payload_bits=22), LandmarkIndex.create(payload_bits=22)
    for track in range(1, 41):
        codes = rng.integers(0, 300, 200, dtype=np.uint32)
        payloads = rng.integers(0, 1 << 22, 200)
        whole.add(track, codes, payloads)
        if track % 4 == 0:   # the shard holds a quarter of the tracks: its own counts rank codes otherwise
            shard.add(track, codes, payloads)
    codes, entries = whole.code_table()
    table = TierCounts(codes=codes, counts=entries, entries=whole.ntotal)
    asked = rng.integers(0, 320, 500, dtype=np.uint32)
    budget = int(whole.code_counts(asked).sum()) // 3
    chosen, first_hit, hits_per_code, labels = CatalogueWideCounts(shard, table).lookup_rarest(asked, budget)
    np.testing.assert_array_equal(chosen, whole.lookup_rarest(asked, budget)[0])
    assert not np.array_equal(chosen, shard.lookup_rarest(asked, budget)[0])
    np.testing.assert_array_equal(hits_per_code, shard.lookup_slices(asked[chosen])[1])
    got = [labels[start:start + count] for start, count in zip(first_hit, hits_per_code)]
    np.testing.assert_array_equal(np.concatenate(got), shard.lookup_slices(asked[chosen])[2])

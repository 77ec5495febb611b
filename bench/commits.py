"""What a commit costs as the catalogue grows, with and without delta segments, and what deltas cost queries.

    flock /work/bench.lock python bench/commits.py ~/.cache/refrain-music --hours 10 40 160 --json commits.json

Grows one index as bench/scale.py does (real template tracks, then synthetic tracks
whose codes are relabelled within their frequency strata, under fresh track ids,
through ``IndexStore.add_track``), merged into one main file per tier at each size of
``--hours``. At each size it then measures, on the same writer:

* **whole rewrite** (the behaviour before deltas: ``IndexWriteParams.whole_below_bytes``
  above every tier's size): add ``--tracks`` synthetic tracks and commit;
* **delta**: add ``--tracks`` more and commit with the default write settings;
* query CPU (``time.process_time``, second of two passes, p50 and p99 over the
  queries) of real 10 s excerpts of the template tracks, matched by a reader that opens
  the index memory-mapped: with that one delta, with several (``--small-commits``
  commits of ``--small-tracks`` tracks each; tail deltas merge as a binary counter), and
  after :meth:`IndexStore.merge` (``merge_s``), on the same content, whose answers must be
  identical to the ones with several deltas (``answers_identical``).

A commit's figures: wall and CPU seconds, bytes the process wrote (``wchar`` of
/proc/self/io: every file, the catalogue's SQLite too) and files written. Commit wall
time includes fsync and is noisy on a shared machine; CPU time and bytes are the
stable figures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.accuracy import list_tracks  # noqa: E402
from bench.growth_model import code_strata, relabelled_track  # noqa: E402
from refrain.api import Refrain  # noqa: E402
from refrain.fingerprint import (AudioDecodeError, Fingerprint, FingerprintError, fingerprint_signal,  # noqa: E402
                                 load_audio)
from refrain.index import IndexStore, IndexWriteParams  # noqa: E402
from refrain.tuning import tune_process  # noqa: E402

# Deltas only: nothing merged into main unless the bench asks, so that each state is the one measured.
DELTAS = IndexWriteParams(merge_share=float("inf"), background=False)
WHOLE = IndexWriteParams(whole_below_bytes=1 << 62, merge_share=float("inf"), background=False)


def written_bytes() -> int:
    """Bytes this process has written so far (``wchar``: all write calls, page cache included)."""
    line = next(row for row in Path("/proc/self/io").read_text().splitlines() if row.startswith("wchar:"))
    return int(line.split()[1])


def file_states(directory: Path) -> dict[str, tuple[int, int]]:
    return {path.name: (path.stat().st_ino, path.stat().st_mtime_ns) for path in directory.iterdir() if path.is_file()}


class Grower:
    """Adds synthetic tracks to one writer."""

    def __init__(self, store: IndexStore, templates: list[Fingerprint], seed: int):
        self.store, self.templates = store, templates
        self.strata = code_strata(templates)
        self.rng = np.random.default_rng(seed)
        self.hours, self.added = sum(fp.duration for fp in templates) / 3600, 0

    def add(self, tracks: int) -> None:
        for _ in range(tracks):
            template = self.templates[int(self.rng.integers(len(self.templates)))]
            name = f"synthetic/{self.added}"
            self.store.add_track(name, hashlib.sha256(name.encode()).hexdigest(),
                                 relabelled_track(template, self.strata, self.rng))  # type: ignore[arg-type]
            self.added += 1
            self.hours += template.duration / 3600


def timed_commit(store: IndexStore, writes: IndexWriteParams) -> dict:
    store.writes = writes
    before_files, before_bytes = file_states(store.directory), written_bytes()
    wall, cpu = time.perf_counter(), time.process_time()
    store.commit()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    after = file_states(store.directory)
    changed = [name for name, state in after.items() if before_files.get(name) != state]
    return {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
            "mb_written": round((written_bytes() - before_bytes) / 1e6, 1),
            "files_written": len(changed), "deltas": max(store.delta_segments().values())}


def query_cpu(directory: Path, queries: list[Fingerprint]) -> tuple[dict, list]:
    """Query CPU p50/p99 (ms, second pass) on a fresh memory-mapped reader, and the answers."""
    with Refrain.open(directory, mmap=True) as refrain:
        for number, fp in enumerate(queries):  # first pass: pages in, compiled code warm
            refrain.match_fingerprint(fp, str(number))
        cpu, answers = [], []
        for number, fp in enumerate(queries):
            started = time.process_time()
            result = refrain.match_fingerprint(fp, str(number))
            cpu.append(1000 * (time.process_time() - started))
            answers.append(result.matches)
    return {f"p{q}_ms": round(float(np.percentile(cpu, q)), 1) for q in (50, 99)}, answers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("music", type=Path)
    parser.add_argument("--hours", type=float, nargs="+", default=[10, 40, 160])
    parser.add_argument("--templates", type=int, default=40, help="real tracks fingerprinted (default 40)")
    parser.add_argument("--queries", type=int, default=30, help="10 s excerpts of them queried (default 30)")
    parser.add_argument("--tracks", type=int, default=50, help="tracks per measured commit (default 50, "
                                                               "Config.commit_every)")
    parser.add_argument("--small-commits", type=int, default=7, help="commits making several deltas (default 7)")
    parser.add_argument("--small-tracks", type=int, default=10, help="tracks per such commit (default 10)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/refrain-commits"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    tune_process()

    tracks = list_tracks(args.music)
    random.Random(args.seed).shuffle(tracks)
    index_dir = args.workdir / "index"
    if args.workdir.exists():
        for path in sorted(args.workdir.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
    args.workdir.mkdir(parents=True, exist_ok=True)
    store = IndexStore.open(index_dir, create=True, writes=DELTAS)
    params = store.fingerprint_params
    templates, queries = [], []
    for path in tracks[:args.templates]:
        try:
            y = load_audio(path, params.sample_rate, 6 * 3600.0)
            fp = fingerprint_signal(y, params)
            if len(queries) < args.queries:
                start = len(y) // 3
                queries.append(fingerprint_signal(y[start:start + 10 * params.sample_rate], params, dense_peaks=True))
        except (AudioDecodeError, FingerprintError) as err:
            print(f"skipped {path.name}: {err}", file=sys.stderr)
            continue
        store.add_track(str(path), hashlib.sha256(str(path).encode()).hexdigest(), fp)
        templates.append(fp)
    store.commit()
    grower = Grower(store, templates, args.seed)
    results = []
    try:
        for size in args.hours:
            while grower.hours < size:
                grower.add(min(200, max(1, int((size - grower.hours) * 3600 / 200))))
                store.commit()
            store.merge()
            files = store.size_bytes()
            row: dict = {"hours": round(grower.hours, 1), "index_mb": round(sum(files.values()) / 1e6, 1)}
            for kind in ("pairs", "triplets", "quads", "doubles", "peaks", "melody", "catalog"):
                row[f"{kind}_mb"] = round(sum(size for name, size in files.items() if name.startswith(kind)) / 1e6, 1)
            row["query_cpu_no_delta"] = query_cpu(index_dir, queries)[0]
            grower.add(args.tracks)
            row["commit_whole_rewrite"] = timed_commit(store, WHOLE)
            grower.add(args.tracks)
            row["commit_delta"] = timed_commit(store, DELTAS)
            row["query_cpu_one_delta"] = query_cpu(index_dir, queries)[0]
            small = []
            for _ in range(args.small_commits):
                grower.add(args.small_tracks)
                small.append(timed_commit(store, DELTAS))
            row["small_commits"] = {"count": len(small), "wall_s_p50": float(np.median([c["wall_s"] for c in small])),
                                    "mb_written_p50": float(np.median([c["mb_written"] for c in small]))}
            row["deltas"] = store.delta_segments()
            with_deltas, answers_with = query_cpu(index_dir, queries)
            row["query_cpu_several_deltas"] = with_deltas
            before_bytes, wall, cpu = written_bytes(), time.perf_counter(), time.process_time()
            store.merge()
            row["merge"] = {"wall_s": round(time.perf_counter() - wall, 2),
                            "cpu_s": round(time.process_time() - cpu, 2),
                            "mb_written": round((written_bytes() - before_bytes) / 1e6, 1)}
            merged, answers_merged = query_cpu(index_dir, queries)
            row["query_cpu_merged"] = merged
            row["answers_identical"] = answers_with == answers_merged
            row["queries_matched"] = sum(1 for answer in answers_merged if answer)
            print(json.dumps(row), flush=True)
            results.append(row)
    finally:
        store.close()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

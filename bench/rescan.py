"""Catalogue self-scan of real music: one process vs two, and a local Dask cluster of two workers.

    flock /tmp/refrain-bench.lock python bench/rescan.py ~/.cache/refrain-music --catalogue 150

Ingests ``--catalogue`` tracks (the same seeded split as ``bench/accuracy.py``)
into a temporary index with ``refrain ingest --jobs 2``, then self-scans it three
times, each in a fresh process: ``--jobs 1``, ``--jobs 2`` and ``--dask local``
with 2 workers. Prints tracks per second, the speed-up over one process, peak RSS
per worker, whether the three runs wrote identical outputs, which groups of
``bench/related-tracks.tsv`` (corpus tracks known to share material) the scan
found and any other group; and the size of a stored upload fingerprint
(:mod:`fingerprint.serialize`) per minute of audio.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.accuracy import list_tracks, related_groups  # noqa: E402
from refrain.fingerprint import fingerprint_file  # noqa: E402
from refrain.fingerprint.serialize import fingerprint_to_bytes  # noqa: E402
from refrain.api import Refrain  # noqa: E402
from refrain.tuning import tune_process  # noqa: E402

MODES = {"jobs1": {"jobs": 1}, "jobs2": {"jobs": 2}, "dask2": {"jobs": 2, "dask": "local"}}
OUTPUTS = ("items.jsonl", "groups.jsonl", "summary.csv")


def run_one(mode: str, index: Path, out: Path) -> None:
    """Child process: one self-scan; prints its figures as one JSON line."""
    from refrain.rescan.catalogue import rescan_catalogue
    from refrain.rescan.jobs import RescanOptions

    started = time.perf_counter()
    report = rescan_catalogue(index, out, RescanOptions(progress=False, **MODES[mode]))
    wall = time.perf_counter() - started
    print(json.dumps({"mode": mode, "wall_s": wall, "tracks": len(report.run.records),
                      "failed": report.run.failed, "groups": len(report.groups),
                      "worker_peak_rss": report.run.worker_peak_rss}))


def fingerprint_bytes_per_minute(tracks: list[Path], params) -> float:
    total_bytes = total_seconds = 0.0
    for path in tracks:
        fp = fingerprint_file(path, params)
        total_bytes += len(fingerprint_to_bytes(fp, params))
        total_seconds += fp.duration
    return total_bytes / (total_seconds / 60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("music", type=Path)
    parser.add_argument("--catalogue", type=int, default=150)
    parser.add_argument("--seed", type=int, default=1, help="split seed (bench/accuracy.py's default)")
    parser.add_argument("--index", type=Path, help="reuse/keep the index here (default: temporary)")
    parser.add_argument("--run-one", nargs=3, metavar=("MODE", "INDEX", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    tune_process()
    if args.run_one:
        mode, index, out = args.run_one
        run_one(mode, Path(index), Path(out))
        return 0

    tracks = list_tracks(args.music)
    random.Random(args.seed).shuffle(tracks)
    catalogue = tracks[:args.catalogue]
    scratch = tempfile.TemporaryDirectory(prefix="refrain-rescan-bench-")
    work = Path(scratch.name)
    index = args.index or work / "index"
    refrain_cli = Path(sys.executable).with_name("refrain")
    ingest = subprocess.run([str(refrain_cli), "ingest", "--jobs", "2", "--index", str(index),
                             *map(str, catalogue)], capture_output=True, text=True)
    print(ingest.stdout.strip().splitlines()[-1] if ingest.stdout.strip() else ingest.stderr[-500:])
    with Refrain.open(index, mmap=True) as refrain:
        info, params = refrain.info(), refrain.params

    results = {}
    for mode in MODES:
        child = subprocess.run([sys.executable, __file__, args.music, "--run-one", mode, str(index),
                                str(work / mode)], capture_output=True, text=True)
        if child.returncode != 0:
            print(f"{mode}: failed\n{child.stderr[-2000:]}")
            return 1
        results[mode] = json.loads(child.stdout.strip().splitlines()[-1])
    identical = all((work / mode / name).read_bytes() == (work / "jobs1" / name).read_bytes()
                    for mode in MODES for name in OUTPUTS)

    groups = [json.loads(line) for line in (work / "jobs1" / "groups.jsonl").read_text().splitlines()]
    found = [{Path(t["source"]).name for t in g["tracks"]} for g in groups]
    known: dict[str, set[str]] = {}  # group -> its file names
    for name, group in related_groups().items():
        known.setdefault(group, set()).add(name)
    in_catalogue = {Path(p).name for p in catalogue}

    print(f"\nself-scan of {info.tracks} tracks ({info.hours:.2f} h) on {len(MODES)} set-ups")
    print(f"{'set-up':<22} {'wall s':>8} {'tracks/s':>9} {'speed-up':>9}  peak RSS per worker (MB)")
    base = results["jobs1"]["wall_s"]
    for mode, label in (("jobs1", "--jobs 1"), ("jobs2", "--jobs 2"), ("dask2", "--dask local, 2 workers")):
        r = results[mode]
        rss = ", ".join(f"{v / 1e6:.0f}" for v in sorted(r["worker_peak_rss"].values()))
        print(f"{label:<22} {r['wall_s']:>8.1f} {r['tracks'] / r['wall_s']:>9.3f} {base / r['wall_s']:>8.2f}x"
              f"  {rss}")
    print(f"failed items: {results['jobs1']['failed']}; outputs identical across set-ups: {identical}")
    print(f"\ngroups of related works found: {len(groups)}")
    matched_known = set()
    for name, members in sorted(known.items()):
        present = members & in_catalogue
        if len(present) < 2:
            print(f"  {name}: not in this catalogue split ({len(present)} of {len(members)} tracks)")
            continue
        hit = any(present <= group for group in found)
        matched_known |= {i for i, group in enumerate(found) if present <= group}
        print(f"  {name}: {'found' if hit else 'MISSED'} ({', '.join(sorted(present))})")
    for i, group in enumerate(found):
        if i not in matched_known:
            print(f"  other group: {', '.join(sorted(group))}")
    per_minute = fingerprint_bytes_per_minute(catalogue[:20], params)
    print(f"\nstored upload fingerprint (peaks, compressed): {per_minute / 1000:.1f} kB per minute of audio")
    return 0


if __name__ == "__main__":
    sys.exit(main())

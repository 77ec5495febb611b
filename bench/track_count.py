"""How a query's cost depends on the catalogue's tracks — how many, and how large their ids — at fixed hours.

    python bench/track_count.py --workdir /tmp/scale640
    python bench/track_count.py --workdir /tmp/scale640 --tracks 3000000 --id-strides 230 5000 --json tracks.json

``bench/scale.py`` grows hours: its 640 h index holds ~13,000 tracks with ids 1 to 13,000.
A label's catalogue holds ~3 million recordings (ids up to millions), a platform's ~100
million; a structure a query builds over every track, or sizes by the largest track id,
costs nothing at 13,000 tracks and dominates there. This bench re-measures an index kept
by ``bench/scale.py --keep`` (its queries too) as if its catalogue had more tracks:

* **more tracks** (``--tracks``): the reportable-track table the matcher is given holds
  that many tracks, the index's own and tracks without entries (what such a catalogue
  would list: every tier finds the same hits). All tiers, 10 s and 30 s queries.
* **larger ids** (``--id-strides``): every landmark tier answers as if each track were
  filed under ``id * stride`` (a wrapper multiplies the ids its lookups return and divides
  those it is asked about): the tracks with hits are the same, their ids spread over
  ``13,000 * stride``. The pair and triplet tiers (the proposals included); the peak and
  melody stores are not wrapped, so their tiers do not run here.

Each configuration runs in the same process after a warm-up, and its matches (ids
divided back) must be the plain index's: the bench fails otherwise. Prints query CPU p50
per configuration and its ratio to the plain index's.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.accuracy import bench_config  # noqa: E402
from bench.scale import Query  # noqa: E402,F401  (the pickled queries' class)
from refrain.api import Refrain  # noqa: E402
from refrain.index.landmarks import LandmarkIndex  # noqa: E402
from refrain.matcher import Catalogue, MatchParams, TrackDurations, match  # noqa: E402
from refrain.tuning import tune_process  # noqa: E402


class SpreadIds:
    """A landmark tier whose track ids read ``stride`` times larger than they are stored."""

    def __init__(self, tier: LandmarkIndex, stride: int):
        self._tier, self._stride = tier, stride

    def __getattr__(self, name):
        return getattr(self._tier, name)

    def lookup_slices(self, hashes, tracks=None):
        if tracks is not None:
            tracks = np.asarray(tracks, np.int64) // self._stride
        first_hit, hits_per_code, labels = self._tier.lookup_slices(hashes, tracks)
        return first_hit, hits_per_code, self._spread(labels)

    def lookup_rarest(self, hashes, max_hits):
        chosen, first_hit, hits_per_code, labels = self._tier.lookup_rarest(hashes, max_hits)
        return chosen, first_hit, hits_per_code, self._spread(labels)

    def _spread(self, labels):
        bits = self._tier.payload_bits
        return ((labels >> bits) * self._stride << bits) | (labels & ((1 << bits) - 1))


def timed_matches(queries: list[Query], catalogue: Catalogue, params: MatchParams, stride: int = 1
                  ) -> tuple[list[float], list]:
    """CPU seconds of each query and its matches (track ids divided by ``stride``)."""
    for query in queries[:3]:
        match(query.fingerprint, catalogue, params)
    cpu, found = [], []
    for query in queries:
        started = time.process_time()
        matches = match(query.fingerprint, catalogue, params)
        cpu.append(time.process_time() - started)
        found.append([(m.track_id // stride, m.kind, round(m.score, 4)) for m in matches])
    return cpu, found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True, help="a bench/scale.py --keep working directory")
    parser.add_argument("--tracks", type=int, default=3_000_000, help="reportable tracks (default 3,000,000)")
    parser.add_argument("--id-strides", type=int, nargs="*", default=[230, 5000],
                        help="id multipliers (default 230 and 5000: ids up to ~3 and ~65 million at 640 h)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    index_dir, queries_file = args.workdir / "index", args.workdir / "queries.pickle"
    if not index_dir.is_dir() or not queries_file.is_file():
        parser.error(f"no kept index and queries under {args.workdir} (bench/scale.py --keep makes them)")
    tune_process()
    queries: list[Query] = pickle.loads(queries_file.read_bytes())
    short = [q for q in queries if q.fingerprint.duration < 20]
    long = [q for q in queries if q.fingerprint.duration >= 20]
    rows = []
    with Refrain.open(index_dir, bench_config("none", []), mmap=True) as refrain:
        params = refrain.config.match
        own = refrain._searched_catalogue()
        durations = own.track_durations
        assert durations is not None
        if args.tracks <= len(durations):
            parser.error(f"--tracks must exceed the index's {len(durations)} tracks")
        ids = np.fromiter(durations, np.int64)
        extra = np.arange(int(ids.max()) + 1, int(ids.max()) + 1 + args.tracks - len(ids))
        padded = replace(own, track_durations=TrackDurations(
            np.concatenate([ids, extra]), np.concatenate([[durations[t] for t in ids.tolist()],
                                                          np.full(len(extra), 200.0)])))
        for name, group in (("10 s", short), ("30 s", long)):
            plain_cpu, plain = timed_matches(group, own, params)
            more_cpu, more = timed_matches(group, padded, params)
            if more != plain:
                raise SystemExit(f"{args.tracks:,} reportable tracks changed the matches of a {name} query")
            rows.append({"queries": name, "tiers": "all", "tracks": len(ids), "id_stride": 1,
                         "cpu_ms_p50": round(1000 * float(np.median(plain_cpu)), 1)})
            rows.append({"queries": name, "tiers": "all", "tracks": args.tracks, "id_stride": 1,
                         "cpu_ms_p50": round(1000 * float(np.median(more_cpu)), 1)})
        landmarks = params.only("pair", "triplet")
        # Unreportable is how a spread track would look to a table of the real ids: none here.
        plain_catalogue = replace(own, track_durations=None, total_tracks=len(ids))
        plain_cpu, plain = timed_matches(short, plain_catalogue, landmarks)
        rows.append({"queries": "10 s", "tiers": "pair, triplet", "tracks": len(ids), "id_stride": 1,
                     "cpu_ms_p50": round(1000 * float(np.median(plain_cpu)), 1)})
        for stride in args.id_strides:
            tiers = {name: SpreadIds(tier, stride) if isinstance(tier, LandmarkIndex) else tier
                     for name, tier in own.tiers.items()}
            cpu, found = timed_matches(short, replace(plain_catalogue, tiers=tiers), landmarks, stride)
            if found != plain:
                raise SystemExit(f"ids spread {stride}x changed the matches of a 10 s query")
            rows.append({"queries": "10 s", "tiers": "pair, triplet", "tracks": len(ids), "id_stride": stride,
                         "largest_id": int(ids.max()) * stride, "cpu_ms_p50": round(1000 * float(np.median(cpu)), 1)})
    base = {}
    print(f"{'queries':8} {'tiers':14} {'tracks':>10} {'id stride':>9} {'CPU p50':>9}  ratio")
    for row in rows:
        key = (row["queries"], row["tiers"])
        base.setdefault(key, row["cpu_ms_p50"])
        print(f"{row['queries']:8} {row['tiers']:14} {row['tracks']:>10,} {row['id_stride']:>9} "
              f"{row['cpu_ms_p50']:>7.1f} ms  {row['cpu_ms_p50'] / base[key]:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

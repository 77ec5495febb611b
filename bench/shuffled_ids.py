"""Does the order of the catalogue's track ids flatter the hit rates that `bench/scale.py` measures?

    python bench/shuffled_ids.py --workdir /tmp/scale640
    python bench/shuffled_ids.py --workdir /tmp/scale640 --queries /tmp/scale640/queries60.pickle --seed 7

``bench/scale.py`` ingests its real recordings first and grows the catalogue after them, so
every query's true track holds one of the lowest ids. Wherever the matcher breaks a tie by
track id (candidates with equal votes at the edge of a bounded list), that order favours the
true track, which a platform's ids, given in order of upload, would not. This bench re-runs
the queries of an index kept by ``bench/scale.py --keep`` with every track relabelled by a
fixed random bijection: the landmark tiers answer under the new ids (each code's hits
re-sorted by them, as a store filed by those ids would give them), the peak store and the
reportable tracks are asked under them, and the matches are mapped back. It prints top-1 per
condition and the negatives with any match, as grown and shuffled (``bench/scale.py`` tells the
false matches from those on grown tracks made from the query's own material). The pair, triplet
and peaks tiers run; the melody tier's index is not relabelled, so it does not.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from collections import Counter
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


class RelabelledTier:
    """A landmark tier that answers under ``new_id[id]``, each code's hits in the order of the new ids."""

    def __init__(self, tier: LandmarkIndex, new_id: np.ndarray, old_id: np.ndarray):
        self._tier, self._new_id, self._old_id = tier, new_id, old_id

    def __getattr__(self, name):
        return getattr(self._tier, name)

    def lookup_slices(self, hashes, tracks=None):
        if tracks is not None:
            tracks = np.sort(self._old_id[np.asarray(tracks, np.int64)])
        first_hit, hits_per_code, labels = self._tier.lookup_slices(hashes, tracks)
        return first_hit, hits_per_code, self._relabelled(first_hit, hits_per_code, labels)

    def lookup_rarest(self, hashes, max_hits):
        chosen, first_hit, hits_per_code, labels = self._tier.lookup_rarest(hashes, max_hits)
        return chosen, first_hit, hits_per_code, self._relabelled(first_hit, hits_per_code, labels)

    def _relabelled(self, first_hit, hits_per_code, labels):
        bits = self._tier.payload_bits
        relabelled = (self._new_id[labels >> bits] << bits) | (labels & ((1 << bits) - 1))
        # The slices (some shared) follow each other in ``labels``: sort within each, as a store filed by the
        # new ids would.
        slice_of = np.zeros(len(relabelled), np.int64)
        starts = np.unique(first_hit[hits_per_code > 0])
        slice_of[starts[1:]] = 1
        return relabelled[np.lexsort((relabelled, np.cumsum(slice_of)))]


class RelabelledPeaks:
    """The peak store asked under the new ids."""

    def __init__(self, store, old_id: np.ndarray):
        self._store, self._old_id = store, old_id

    def __getattr__(self, name):
        return getattr(self._store, name)

    def peaks_between(self, track_id, first_frame, end_frame):
        return self._store.peaks_between(int(self._old_id[track_id]), first_frame, end_frame)


def relabelled(catalogue: Catalogue, seed: int) -> tuple[Catalogue, np.ndarray]:
    """The catalogue under a random bijection of its ids, and the old id of each new one."""
    durations = catalogue.track_durations
    assert durations is not None
    ids = np.fromiter(durations, np.int64)
    new_id = np.random.default_rng(seed).permutation(int(ids.max()) + 1).astype(np.int64)
    old_id = np.empty_like(new_id)
    old_id[new_id] = np.arange(len(new_id))
    tiers = {name: RelabelledTier(tier, new_id, old_id) if isinstance(tier, LandmarkIndex)
             else RelabelledPeaks(tier, old_id) if name == "peaks" else tier
             for name, tier in catalogue.tiers.items()}
    order = np.argsort(new_id[ids])
    seconds = np.array([durations[t] for t in ids.tolist()])
    return replace(catalogue, tiers=tiers, track_durations=TrackDurations(new_id[ids][order], seconds[order])), old_id


def outcomes(queries: list[Query], catalogue: Catalogue, params: MatchParams,
             old_id: np.ndarray | None) -> tuple[Counter, Counter, int]:
    """Top-1 right and queries per condition, and negatives with any match (ids mapped back)."""
    right, asked, matched_negatives = Counter(), Counter(), 0
    for query in queries:
        found = [m.track_id if old_id is None else int(old_id[m.track_id])
                 for m in match(query.fingerprint, catalogue, params)]
        if query.track_id is None:
            matched_negatives += bool(found)
            continue
        asked[query.condition] += 1
        right[query.condition] += bool(found) and found[0] == query.track_id
    return right, asked, matched_negatives


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True, help="a bench/scale.py --keep working directory")
    parser.add_argument("--queries", type=Path, help="pickled queries (default: the workdir's queries.pickle)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the bijection (default 7)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    index_dir, queries_file = args.workdir / "index", args.queries or args.workdir / "queries.pickle"
    if not index_dir.is_dir() or not queries_file.is_file():
        parser.error(f"no kept index under {args.workdir} or no queries at {queries_file} "
                     "(bench/scale.py --keep makes them)")
    tune_process()
    queries: list[Query] = pickle.loads(queries_file.read_bytes())
    queries = [q for q in queries if q.fingerprint.duration < 20]
    with Refrain.open(index_dir, bench_config("none", []), mmap=True) as refrain:
        params = refrain.config.match.only("pair", "triplet", "peaks")
        own = refrain._searched_catalogue()
        shuffled, old_id = relabelled(own, args.seed)
        rows = {}
        for name, catalogue, back in (("as grown", own, None), ("ids shuffled", shuffled, old_id)):
            right, asked, matched_negatives = outcomes(queries, catalogue, params, back)
            rows[name] = {"top1": {c: round(100 * right[c] / asked[c], 1) for c in asked},
                          "right": dict(right), "queries": dict(asked), "matched_negatives": matched_negatives}
    conditions = list(rows["as grown"]["queries"])
    print(f"{'':14}" + "".join(f"{c:>14}" for c in conditions) + f"{'negatives matched':>19}")
    for name, row in rows.items():
        print(f"{name:14}" + "".join(f"{row['right'][c]:>7} / {row['queries'][c]:<4}" for c in conditions)
              + f"{row['matched_negatives']:>19}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

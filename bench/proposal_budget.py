"""How often the derivative proposals keep the true track when they read a budget of hits.

    python bench/proposal_budget.py ~/.cache/refrain-music --index INDEX --budgets 1000000000 5640 2820 1410 705

The quad proposals (:func:`matcher.proposals.propose`) read their query's rarest codes first
until ``ProposalParams.max_hits`` hits. Every quad code's run grows in proportion to the
catalogue, so a budget ``B`` at ``H`` catalogue hours reads about the same codes — the same
share of the query's hits, and the same hits on the true track — as a budget of
``B * h / H`` on a catalogue of ``h`` hours: on the 150-track index of ``bench/derivatives.py``
(7.5 h), 60,000 hits at 160 h is a budget of 2,820, at 640 h of 705. This bench asks that
question directly, without matching: derivatives of catalogue tracks (``bench/derivatives.py``'s
transforms, one random 10 s excerpt per track and condition) are fingerprinted once, and for
every budget (and every ``--variant`` of other ``ProposalParams`` fields) it reports the share
of queries whose true track is among the proposals. Chance tracks per hit read are the same
in the emulation; only the number of chance tracks competing for the ``max_candidates``
places is smaller than in the larger catalogue, so the figures are an upper bound.

``--index`` is an index of the first ``--catalogue`` tracks of the corpus as
``bench/derivatives.py --index`` builds it (seed 1); it is opened read-only.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.accuracy import SOURCE_RATE, list_tracks  # noqa: E402
from bench.derivatives import DERIVATIVES, derive  # noqa: E402
from refrain.api import Refrain  # noqa: E402
from refrain.fingerprint import FingerprintError, fingerprint_signal, load_audio  # noqa: E402
from refrain.matcher import TripletTier  # noqa: E402
from refrain.matcher.proposals import QUAD_TIER, ProposalParams, propose  # noqa: E402
from refrain.tuning import tune_process  # noqa: E402

WEAK_DERIVATIVES = ("speed_0.8", "speed_1.25", "pitch_-4", "stretch_1.25", "pitch_+2+white_10dB",
                    "stretch_0.8+pink_10dB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("music", type=Path)
    parser.add_argument("--index", type=Path, required=True, help="index of the catalogue tracks (read only)")
    parser.add_argument("--catalogue", type=int, default=150)
    parser.add_argument("--tracks", type=int, default=60, help="catalogue tracks queried per condition")
    parser.add_argument("--conditions", default=",".join(WEAK_DERIVATIVES))
    parser.add_argument("--budgets", type=int, nargs="+", default=[10 ** 9, 5640, 2820, 1410, 705])
    parser.add_argument("--variant", type=json.loads, action="append",
                        help='other ProposalParams fields as JSON, e.g. \'{"min_votes": 2}\' (repeatable; '
                             "default: the defaults)")
    parser.add_argument("--seed", type=int, default=1, help="the corpus split of the index (default 1)")
    parser.add_argument("--query-seed", type=int, default=7, help="where the excerpts are cut (default 7)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    conditions = args.conditions.split(",")
    unknown = set(conditions) - set(DERIVATIVES)
    if unknown:
        parser.error(f"unknown conditions {sorted(unknown)}")
    tune_process()

    tracks = list_tracks(args.music)
    random.Random(args.seed).shuffle(tracks)
    rng = np.random.default_rng(args.query_seed)
    cpu = time.process_time()
    report: dict = {"tracks": args.tracks, "budgets": args.budgets, "recall_percent": {}}
    with Refrain.open(args.index, mmap=True) as refrain, \
            tempfile.TemporaryDirectory(prefix="refrain-budget-") as workdir:
        track_ids = {track.source: track.track_id for track in refrain.tracks()}
        quads, params, tier = refrain.store.tiers[QUAD_TIER], refrain.params, TripletTier()
        queries: dict[str, list] = {condition: [] for condition in conditions}
        for path in tracks[:args.catalogue][:args.tracks]:
            if str(path) not in track_ids:
                sys.exit(f"{path} is not in {args.index}: build it with bench/derivatives.py --index")
            y = load_audio(path, SOURCE_RATE)
            for condition in conditions:
                q, _ = derive(path, y, DERIVATIVES[condition], rng, Path(workdir))
                try:
                    fp = fingerprint_signal(soxr.resample(q, SOURCE_RATE, params.sample_rate, quality="HQ")
                                            .astype(np.float32), params)
                except FingerprintError:  # a silent excerpt
                    continue
                queries[condition].append((track_ids[str(path)], fp))
        for condition, found in queries.items():
            for variant in args.variant or [{}]:
                recall = {}
                for budget in args.budgets:
                    proposal_params = ProposalParams(max_hits=budget, **variant)
                    recall[budget] = round(100 * float(np.mean(
                        [track_id in propose(fp, quads, params, proposal_params, tier).tolist()
                         for track_id, fp in found])), 1)
                key = condition + (" " + json.dumps(variant) if variant else "")
                report["recall_percent"][key] = recall
                print(f"{key:48} ({len(found)} queries) " + "  ".join(f"{b}: {r}" for b, r in recall.items()),
                      flush=True)
    report["cpu_seconds"] = round(time.process_time() - cpu, 1)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

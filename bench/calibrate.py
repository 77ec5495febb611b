"""Measure each tier's chance model: how high music that is not in the catalogue scores.

    python bench/calibrate.py ~/.cache/refrain-music --index DIR [--json OUT]

Splits the music like bench/accuracy.py (same shuffle and seed): the first ``--catalogue``
tracks are the catalogue (``--index`` is built from them if it does not exist), the next
``--negatives`` are held out. Every ``--seconds`` window (back to back) of each
held-out track is a query, alone and mixed 6 dB under a window of another held-out track
(``--melody-seconds`` windows for the melody tier, whose segments need more than 10 s).
Each tier is run alone on every query with its threshold lowered to almost nothing, and
the best score any catalogue track reaches is kept (0 when none). A tier's
:class:`~refrain.matcher.Calibration` is fitted to the upper tail of those best scores:
``anchor_score`` is their 90th percentile (or the lowest score reached, where fewer queries
score at all), ``anchor_chance`` the fraction at or above it, and
``scale`` the mean excess of those above it (an exponential tail's maximum-likelihood
scale); a query longer than 10 s counts as that many 10 s tries. Prints per tier the
fitted calibration, the highest unrelated score, and the chance the model gives a 10 s
query at the tier's threshold; paste the calibrations into the tiers' defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.accuracy import related_groups  # noqa: E402
from bench.corpus import add_split_arguments, split  # noqa: E402
from bench.derivatives import mix_under  # noqa: E402
from bench.unrelated_windows import MIX_DB, windows  # noqa: E402
from refrain.api import Refrain  # noqa: E402
from refrain.config import Config  # noqa: E402
from refrain.tuning import tune_process  # noqa: E402
from refrain.fingerprint import FingerprintError, fingerprint_signal, load_audio  # noqa: E402
from refrain.matcher import Calibration, Catalogue, MatchParams, Tier, match  # noqa: E402

#: Each tier with its match threshold lowered to almost nothing: every candidate's score is seen. What
#: makes a score (the landmark tiers' ``min_span_score``, below which a stretch is no span) stays as it is.
#: A landmark tier adds up a track's alignments that pass (a looped sample aligns at several offsets);
#: with no threshold every track would add up several chance alignments, so one alignment per track is
#: sought: a match reaches a score when one of its alignments does.
PERMISSIVE = {"pair": {"min_score": 0.5, "max_alignments": 1},
              "triplet": {"min_score": 0.5, "max_alignments": 1},
              "peaks": {"min_z": 0.0},
              "melody": {"min_similarity": 0.0}}
#: The field that holds each tier's threshold.
THRESHOLD = {"pair": "min_score", "triplet": "min_score", "peaks": "min_z", "melody": "min_similarity"}
#: Fraction of unrelated queries above the anchor score.
TAIL = 0.1


def fit(best: np.ndarray, seconds: float, catalogue_tracks: int) -> Calibration:
    """The exponential upper tail of the best unrelated scores of ``seconds``-long queries.

    A query of ``seconds`` is ``seconds / 10`` tries of the calibration's 10 s reference
    query, so the fraction above the anchor is divided by that many. Where fewer than
    ``TAIL`` of the queries score at all, the tail starts at the lowest score reached (a
    tier reports no score below its smallest span's).
    """
    reached = best[best > 0]
    if len(reached) < 10:
        raise ValueError(f"only {len(reached)} unrelated queries scored at all: too few queries")
    anchor = max(float(np.quantile(best, 1.0 - TAIL)), float(reached.min()))
    above = best[best >= anchor]
    if len(above) < 10:
        raise ValueError(f"only {len(above)} unrelated scores above the anchor {anchor}: too few queries")
    tries = max(1.0, seconds / Calibration.REFERENCE_SECONDS)
    return Calibration(anchor_score=round(anchor, 4), anchor_chance=round(len(above) / len(best) / tries, 5),
                       scale=round(float(np.mean(above - anchor)), 4), queries=len(best),
                       catalogue_tracks=catalogue_tracks)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_split_arguments(parser)
    parser.add_argument("--index", type=Path, required=True, help="index of the catalogue (built if missing)")
    parser.add_argument("--seconds", type=float, default=10.0, help="query length of the landmark and peaks tiers")
    parser.add_argument("--melody-seconds", type=float, default=30.0, help="query length of the melody tier")
    parser.add_argument("--tiers", nargs="+", default=["pair", "triplet", "peaks", "melody"],
                        help="calibrate only these tiers")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    tune_process()
    catalogue_files, held_out = split(parser, args)
    if not args.index.exists():
        with Refrain.open(args.index, create=True) as refrain:
            for result in refrain.ingest(catalogue_files, jobs=2):
                if result.error:
                    print(f"  {result.error}", file=sys.stderr)
    groups = related_groups()

    defaults = MatchParams().only(*args.tiers)
    tiers: list[Tier] = [dataclasses.replace(tier, **PERMISSIVE[tier.name]) for tier in defaults.tiers]
    seconds = {tier.name: args.melody_seconds if tier.name == "melody" else args.seconds for tier in tiers}
    best: dict[str, list[float]] = {tier.name: [] for tier in tiers}
    with Refrain.open(args.index, Config(), mmap=True) as refrain:
        ready = refrain.store.catalog.ready_tracks()
        sources = {track_id: Path(track.source).name for track_id, track in ready.items()}
        catalogue = Catalogue(refrain.store.tiers, refrain.params, {t: track.duration for t, track in ready.items()})
        rate = refrain.params.sample_rate
        audio = {path.name: load_audio(path, rate) for path in held_out}
        names = list(audio)
        rng = np.random.default_rng(args.seed)
        for variant in ("alone", "mixed"):
            for number, name in enumerate(names):
                other = names[(number + 1) % len(names)] if variant == "mixed" else None
                own = {groups.get(name), groups.get(other)} - {None}
                for length in sorted(set(seconds.values())):
                    for _, y in windows(audio[name], rate, length, length):
                        if other is not None:
                            background = audio[other]
                            first = int(rng.integers(0, max(1, len(background) - len(y) + 1)))
                            y = mix_under(y, background[first:first + len(y)], MIX_DB)
                            if len(y) < length * rate:
                                continue
                        try:
                            fp = fingerprint_signal(y, refrain.params, dense_peaks=True)
                        except FingerprintError:  # a silent stretch
                            continue
                        for tier in (t for t in tiers if seconds[t.name] == length):
                            # Tracks that share recorded material with the query are no chance agreement.
                            scores = [m.score for m in match(fp, catalogue, MatchParams(tiers=(tier,)))
                                      if groups.get(sources[m.track_id]) not in own]
                            best[tier.name].append(max(scores, default=0.0))
            print(f"{variant}: {max(len(b) for b in best.values())} queries so far", file=sys.stderr)

    report: dict = {"catalogue_tracks": len(catalogue_files), "held_out_tracks": len(held_out), "tiers": {}}
    for tier in defaults.tiers:
        scores = np.array(best[tier.name])
        calibration = fit(scores, seconds[tier.name], len(catalogue_files))
        threshold = getattr(tier, THRESHOLD[tier.name])
        report["tiers"][tier.name] = {
            "calibration": dataclasses.asdict(calibration), "query_seconds": seconds[tier.name],
            "best_unrelated_p50_p90_p99_max": [round(float(np.quantile(scores, q)), 3) for q in (0.5, 0.9, 0.99, 1.0)],
            "threshold": threshold, "chance_at_threshold_10s": calibration.chance(threshold, 10.0)}
        print(f"{tier.name:8s} {calibration}  max unrelated {scores.max():.3f} ({seconds[tier.name]:g} s queries)  "
              f"chance of a 10 s query at threshold {threshold}: {calibration.chance(threshold, 10.0):.1e}")
        if args.json:  # after each tier: a later tier's failure keeps the earlier figures
            args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

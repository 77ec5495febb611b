"""Measure each tier's chance model: how high music that is not in the catalogue scores.

    python bench/calibrate.py ~/.cache/refrain-music --index DIR [--json OUT]
    python bench/calibrate.py ~/.cache/refrain-music --index DIR --tiers pair triplet   # landmark tiers only

Splits the music like bench/accuracy.py (same shuffle and seed): the first ``--catalogue``
tracks are the catalogue (``--index`` is built from them if it does not exist), the next
``--negatives`` are held out. Every ``--seconds`` window (back to back) of each
held-out track is a query, alone and mixed 6 dB under a window of another held-out track
(``--melody-seconds`` windows for the melody tier, whose segments need more than 10 s); the
landmark tiers are also measured on ``--short-seconds`` windows (3 and 5 s), whose scores are
capped over fewer seconds and so have a tail of their own.
Each tier is run alone on every query with its threshold lowered to almost nothing, and
the best score any catalogue track reaches is kept (0 when none). A tier's
:class:`~refrain.matcher.Calibration` is fitted to the upper tail of those best scores:
``anchor_score`` is their 90th percentile (or the lowest score reached, where fewer queries
score at all), ``anchor_chance`` the fraction at or above it, and
``scale`` the mean excess of those above it (an exponential tail's maximum-likelihood
scale); a query longer than 10 s counts as that many 10 s tries. A landmark tier's
shorter lengths are fitted the same way into its ``short_queries``, those whose tail holds
at least ``MIN_SHORT_TAIL`` queries. Prints per tier the
fitted calibration, the highest unrelated score per length, the chance the model gives a
10 s query at the tier's threshold and the threshold that makes each shorter query as
rare by chance (:meth:`~matcher.landmarks.LandmarkTierParams.min_score_for`); paste the
calibrations into the tiers' defaults.
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
from refrain.matcher.landmarks import LandmarkTierParams  # noqa: E402
from refrain.matcher.types import ShortQueryTail  # noqa: E402

#: Each tier with its match threshold lowered to almost nothing: every candidate's score is seen. What
#: makes a score (the landmark tiers' ``min_span_score``, below which a stretch is no span) stays as it is.
#: A landmark tier's ``min_score`` is minus infinity, which its pass rule keeps at every query length
#: (the threshold of a length is derived from it through the calibration being measured: any finite value
#: would make the measurement depend on the old calibration).
#: A landmark tier adds up a track's alignments that pass (a looped sample aligns at several offsets);
#: with no threshold every track would add up several chance alignments, so one alignment per track is
#: sought: a match reaches a score when one of its alignments does.
PERMISSIVE = {"pair": {"min_score": float("-inf"), "max_alignments": 1},
              "triplet": {"min_score": float("-inf"), "max_alignments": 1},
              "peaks": {"min_z": 0.0},
              "melody": {"min_similarity": 0.0}}
#: The field that holds each tier's threshold.
THRESHOLD = {"pair": "min_score", "triplet": "min_score", "peaks": "min_z", "melody": "min_similarity"}
#: Fraction of unrelated queries above the anchor score.
TAIL = 0.1
#: Fewest unrelated queries above the anchor for a shorter length to get a tail of its own. The tail is
#: extrapolated to chances near 1e-7, where its scale's error is multiplied some 15 times: the triplet tier's
#: 3 s tail, fitted on 24 queries, put the threshold at 3.9 where one unrelated 3 s clip of a trial run
#: reached 4.0. A length with fewer is judged by the next longer one's tail (more chance, never less).
MIN_SHORT_TAIL = 100


def fit(best: np.ndarray, seconds: float) -> ShortQueryTail:
    """The exponential upper tail of the best unrelated scores of ``seconds``-long queries.

    A query longer than the 10 s reference is ``seconds / 10`` tries of it, so the
    fraction above the anchor is divided by that many. Where fewer than ``TAIL`` of the
    queries score at all, the tail starts at the lowest score reached (a tier reports no
    score below its smallest span's).
    """
    reached = best[best > 0]
    if len(reached) < 10:
        raise ValueError(f"only {len(reached)} unrelated {seconds:g} s queries scored at all: too few queries")
    anchor = max(float(np.quantile(best, 1.0 - TAIL)), float(reached.min()))
    above = best[best >= anchor]
    if len(above) < 10:
        raise ValueError(f"only {len(above)} unrelated scores above the anchor {anchor}: too few queries")
    tries = max(1.0, seconds / Calibration.REFERENCE_SECONDS)
    return ShortQueryTail(seconds=seconds, anchor_score=round(anchor, 4),
                          anchor_chance=round(len(above) / len(best) / tries, 5),
                          scale=round(float(np.mean(above - anchor)), 4), queries=len(best))


def calibration(best: dict[float, np.ndarray], reference_seconds: float, catalogue_tracks: int) -> Calibration:
    """A tier's chance model: the tail of its reference-length queries and those of its shorter ones.

    A shorter length whose tail holds fewer than ``MIN_SHORT_TAIL`` queries is left out.
    """
    reference = fit(best[reference_seconds], reference_seconds)
    short = [fit(best[length], length) for length in sorted(best) if length < reference_seconds]
    return Calibration(anchor_score=reference.anchor_score, anchor_chance=reference.anchor_chance,
                       scale=reference.scale, queries=reference.queries, catalogue_tracks=catalogue_tracks,
                       short_queries=tuple(tail for tail in short
                                           if tail.anchor_chance * tail.queries >= MIN_SHORT_TAIL))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_split_arguments(parser)
    parser.add_argument("--index", type=Path, required=True, help="index of the catalogue (built if missing)")
    parser.add_argument("--seconds", type=float, default=10.0, help="query length of the landmark and peaks tiers")
    parser.add_argument("--melody-seconds", type=float, default=30.0, help="query length of the melody tier")
    parser.add_argument("--short-seconds", type=float, nargs="*", default=[3.0, 5.0],
                        help="shorter query lengths the landmark tiers are also measured at (default 3 5)")
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
    reference = {tier.name: args.melody_seconds if tier.name == "melody" else args.seconds for tier in tiers}
    lengths = {tier.name: sorted({reference[tier.name]}
                                 | (set(args.short_seconds) if isinstance(tier, LandmarkTierParams) else set()))
               for tier in tiers}
    best: dict[str, dict[float, list[float]]] = {tier.name: {length: [] for length in lengths[tier.name]}
                                                 for tier in tiers}
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
                for length in sorted({length for tier_lengths in lengths.values() for length in tier_lengths}):
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
                        for tier in (t for t in tiers if length in lengths[t.name]):
                            # Tracks that share recorded material with the query are no chance agreement.
                            scores = [m.score for m in match(fp, catalogue, MatchParams(tiers=(tier,)))
                                      if groups.get(sources[m.track_id]) not in own]
                            best[tier.name][length].append(max(scores, default=0.0))
            counts = {tier: {length: len(scores) for length, scores in per_length.items()}
                      for tier, per_length in best.items()}
            print(f"{variant}: queries so far per tier and length {counts}", file=sys.stderr)

    report: dict = {"catalogue_tracks": len(catalogue_files), "held_out_tracks": len(held_out), "tiers": {}}
    for tier in defaults.tiers:
        scores = {length: np.array(found) for length, found in best[tier.name].items()}
        fitted = calibration(scores, reference[tier.name], len(catalogue_files))
        threshold = getattr(tier, THRESHOLD[tier.name])
        report["tiers"][tier.name] = {
            "calibration": dataclasses.asdict(fitted), "query_seconds": lengths[tier.name],
            "best_unrelated_p50_p90_p99_max": {
                length: [round(float(np.quantile(found, q)), 3) for q in (0.5, 0.9, 0.99, 1.0)]
                for length, found in scores.items()},
            "threshold": threshold, "chance_at_threshold_10s": fitted.chance(threshold, 10.0)}
        print(f"{tier.name:8s} {fitted}  chance of a 10 s query at threshold {threshold}: "
              f"{fitted.chance(threshold, 10.0):.1e}")
        for length, found in scores.items():
            print(f"         {length:g} s queries: max unrelated {found.max():.3f}")
        if isinstance(tier, LandmarkTierParams):
            thresholds = {length: tier.min_score_for(length, fitted) for length in (*args.short_seconds, 60.0)}
            report["tiers"][tier.name]["min_score_per_query_seconds"] = thresholds
            print(f"         thresholds as rare by chance as {threshold} at 10 s: {thresholds}")
        if args.json:  # after each tier: a later tier's failure keeps the earlier figures
            args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Every stretch of music the catalogue does not hold, as an upload: is anything accused?

    flock /tmp/refrain-bench.lock python bench/unrelated_windows.py ~/.cache/refrain-music --index DIR

Splits the music like bench/accuracy.py (same shuffle and seed): the first ``--catalogue``
tracks are the catalogue, which ``--index`` must already hold (e.g. the index
``bench/accuracy.py --index`` keeps); the next ``--negatives`` are not in it. Every
``--seconds`` window, ``--hop`` seconds apart, of each held-out track is matched as an
upload twice: alone, and mixed 6 dB under a window of another held-out track (new
material laid over old, as an AI remix does: the peaks tier's hardest negatives).
The other benches draw one random excerpt per held-out track and condition; this one
covers every part of every held-out track, which is where rare chance agreements show.

Any match is a false match, unless ``bench/related-tracks.tsv`` lists the two tracks as
sharing recorded material (then it is counted apart, as shared material). Prints per
variant: windows matched, false matches (with the window and the match's kind, tier
score and catalogue track), shared-material matches, and match time per window
(fingerprinting included, decode excluded).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.accuracy import related_groups  # noqa: E402
from bench.corpus import add_split_arguments, split  # noqa: E402
from bench.derivatives import mix_under  # noqa: E402
from refrain.fingerprint import FingerprintError, load_audio  # noqa: E402
from refrain.index.store import IndexOpenError  # noqa: E402
from refrain.api import Refrain  # noqa: E402
from refrain.config import Config  # noqa: E402
from refrain.tuning import tune_process  # noqa: E402

#: How far (dB, RMS) the held-out window lies under the other held-out track in the mixed variant.
MIX_DB = -6.0


def windows(y: np.ndarray, sample_rate: int, seconds: float, hop: float) -> list[tuple[float, np.ndarray]]:
    """(start in seconds, samples) of every full window of ``y``."""
    length, step = int(seconds * sample_rate), int(hop * sample_rate)
    return [(start / sample_rate, y[start:start + length]) for start in range(0, len(y) - length + 1, step)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_split_arguments(parser)
    parser.add_argument("--index", type=Path, required=True, help="an index holding the catalogue tracks")
    parser.add_argument("--seconds", type=float, default=10.0, help="window length (default 10)")
    parser.add_argument("--hop", type=float, default=5.0, help="seconds between window starts (default 5)")
    parser.add_argument("--json", type=Path, help="also write all figures to this file")
    args = parser.parse_args()
    tune_process()
    if args.seconds <= 0 or args.hop <= 0:
        parser.error("--seconds and --hop must be positive")

    catalogue, held_out = split(parser, args)
    groups = related_groups()

    try:
        refrain = Refrain.open(args.index, Config())
    except (IndexOpenError, FileNotFoundError) as error:
        parser.error(f"--index {args.index}: {error}")
    with refrain:
        indexed = {Path(track.source).name for track in refrain.store.catalog.ready_tracks().values()}
        missing = [path.name for path in catalogue if path.name not in indexed]
        if missing:
            parser.error(f"--index {args.index} lacks {len(missing)} catalogue tracks, e.g. {missing[0]}")
        stray = [path.name for path in held_out if path.name in indexed]
        if stray:
            parser.error(f"--index {args.index} holds held-out tracks, e.g. {stray[0]}")
        refrain.warm_up()
        rate = refrain.params.sample_rate
        audio = {path.name: load_audio(path, rate) for path in held_out}
        names = list(audio)
        rng = np.random.default_rng(args.seed)

        report: dict = {"catalogue_tracks": len(catalogue), "held_out_tracks": len(held_out),
                        "window_seconds": args.seconds, "hop_seconds": args.hop, "mix_db": MIX_DB}
        for variant in ("alone", "mixed"):
            false, shared, times, count = [], [], [], 0
            for number, name in enumerate(names):
                # The other track is fixed per held-out track, its window drawn at random.
                other = names[(number + 1) % len(names)] if variant == "mixed" else None
                for start, y in windows(audio[name], rate, args.seconds, args.hop):
                    if other is not None:
                        background = audio[other]
                        first = int(rng.integers(0, max(1, len(background) - len(y) + 1)))
                        y = mix_under(y, background[first:first + len(y)], MIX_DB)
                        if len(y) < args.seconds * rate:
                            continue
                    started = time.perf_counter()
                    try:
                        result = refrain.match_signal(y, name)
                    except FingerprintError:  # a silent stretch
                        continue
                    times.append(time.perf_counter() - started)
                    count += 1
                    own = {groups.get(name), groups.get(other)} - {None}
                    for match in result.matches:
                        line = (f"{name}" + (f" under {other}" if other else "") + f" @ {start:.0f} s -> "
                                f"{Path(match.source).name} ({match.kind}, score {match.score})")
                        (shared if groups.get(Path(match.source).name) in own else false).append(line)
            report[variant] = {"windows": count, "false_matches": len(false), "false_match_details": false,
                               "shared_material_matches": shared,
                               "match_ms_p50": round(1000 * float(np.median(times)), 1) if times else None}
            print(f"{variant:6s} {count:5d} windows  false matches {len(false)}  shared material {len(shared)}  "
                  f"match {report[variant]['match_ms_p50']} ms p50")
            for line in false:
                print("   false:", line)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

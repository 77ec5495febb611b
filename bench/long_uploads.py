"""Whole-track and album-length uploads: match time and memory as the upload grows.

    flock /tmp/refrain-bench.lock python bench/long_uploads.py INDEX --minutes 3 10 20

INDEX is an index of real music (e.g. the one ``bench/accuracy.py --index`` keeps;
with a melody tier, covers are searched too unless ``--no-covers``). Each upload is
the index's own tracks, in track-id order from ``--skip``, decoded and laid end to
end up to the given length, so every work in it is a catalogue copy (the last one cut
short: an excerpt). Each length runs in a fresh process, so that its peak RSS is its
own. Prints per length: match seconds, seconds per upload minute, times realtime,
peak RSS, the works found of those laid in, and any other work reported (marked when
``bench/related-tracks.tsv`` lists it as sharing material with one laid in).
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

from bench.accuracy import peak_rss_mb, related_groups  # noqa: E402
from bench.fresh import run_fresh  # noqa: E402
from refrain.fingerprint.decode import load_audio  # noqa: E402
from refrain.api import Refrain  # noqa: E402
from refrain.config import Config  # noqa: E402
from refrain.tuning import tune_process  # noqa: E402

#: A work counts as laid in when at least this many seconds of it are in the upload.
MIN_SECONDS_LAID_IN = 10.0


def one_upload(index: Path, minutes: float, skip: int, covers: bool) -> dict:
    """Build one upload of ``minutes`` and match it; the figures of that run."""
    config = Config().searching_covers(covers)
    with Refrain.open(index, config, mmap=True) as refrain:
        rate = refrain.params.sample_rate
        wanted = int(minutes * 60 * rate)
        pieces, laid_in, total = [], {}, 0
        for track_id, track in sorted(refrain.store.catalog.ready_tracks().items())[skip:]:
            y = load_audio(track.source, rate)[:wanted - total]
            pieces.append(y)
            total += len(y)
            if len(y) >= MIN_SECONDS_LAID_IN * rate:
                laid_in[track_id] = Path(track.source).name
            if total >= wanted:
                break
        if total < wanted:
            sys.exit(f"{index} holds only {total / rate / 60:.1f} min of audio after --skip {skip}")
        upload = np.concatenate(pieces)
        refrain.match_signal(upload[:10 * rate], "warm-up")
        started = time.perf_counter()
        result = refrain.match_signal(upload, "upload")
        seconds = time.perf_counter() - started
    groups = related_groups()
    laid_groups = {groups.get(name) for name in laid_in.values()} - {None}
    others = [f"{Path(m.source).name} ({m.kind}"
              f"{', shares material' if groups.get(Path(m.source).name) in laid_groups else ''})"
              for m in result.matches if m.track_id not in laid_in]
    return {"minutes": minutes, "match_seconds": round(seconds, 2),
            "seconds_per_upload_minute": round(seconds / minutes, 2),
            "x_realtime": round(minutes * 60 / seconds, 1),
            "peak_rss_MB": round(peak_rss_mb()),
            "works_laid_in": len(laid_in),
            "works_found": sum(m.track_id in laid_in for m in result.matches),
            "other_works_reported": others}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("index", type=Path)
    parser.add_argument("--minutes", type=float, nargs="+", default=[3.0, 10.0, 20.0])
    parser.add_argument("--skip", type=int, default=10, help="tracks to skip before the first laid in")
    parser.add_argument("--covers", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child run: one length
    args = parser.parse_args()
    tune_process()
    if not (args.index / "manifest.json").exists():
        parser.error(f"{args.index} is not a Refrain index (no manifest.json)")
    if args.one:
        print(json.dumps(one_upload(args.index, args.minutes[0], args.skip, args.covers)))
        return 0
    report = []
    for minutes in args.minutes:
        row = run_fresh([sys.executable, __file__, str(args.index), "--minutes", str(minutes), "--skip", str(args.skip),
                         "--covers" if args.covers else "--no-covers", "--one"], f"{minutes} min upload")
        report.append(row)
        print(f"{row['minutes']:5.1f} min  {row['match_seconds']:6.1f} s  {row['seconds_per_upload_minute']:5.2f} s/min"
              f"  {row['x_realtime']:6.1f}x realtime  peak RSS {row['peak_rss_MB']:5d} MB"
              f"  works found {row['works_found']}/{row['works_laid_in']}"
              + (f"  also: {'; '.join(row['other_works_reported'])}" if row["other_works_reported"] else ""),
              flush=True)
    if args.json:
        args.json.write_text(json.dumps({"covers": args.covers, "runs": report}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Whole tracks, as the upload pipeline sends them: right work, right kind, right span?

    flock /tmp/refrain-bench.lock python bench/whole_tracks.py ~/.cache/refrain-music \\
        --index /tmp/refrain-bench/index-150 --limit 10 --json whole.json

INDEX must hold the catalogue of the benches' split (``bench/corpus.py``: the first
``--catalogue`` tracks of the seeded shuffle; e.g. the index ``bench/accuracy.py --index``
keeps); it is opened read-only. Each condition transforms whole tracks with ffmpeg
(the transforms of ``bench/derivatives.py`` and ``bench/accuracy.py``) and matches the
whole result with every tier:

- speed 0.8-1.25 (tempo and pitch together), pitch ±4 st, tempo (time stretch) 0.8-1.25,
  mp3 at 64 kbit/s, white noise at 10 dB SNR: the whole catalogue track;
- ``mixed_-6dB`` / ``mixed_-12dB``: the catalogue track under a held-out track (looped
  to length) 6 / 12 dB louder;
- ``inserted_30s``: a held-out track with 30 s of a catalogue track laid in at a third;
- ``unrelated``: held-out tracks, whole.

Per condition it prints the share of uploads where the work is found with the right
kind, with its time ratio within 1 % and pitch within 0.25 semitone, and with spans
covering at least 90 % of the upload time where the work sounds; the false matches
(works reported that are not in the upload and share no material with it,
``bench/related-tracks.tsv``). Then, per upload length (``--minutes``, default 1 3 10
20), an upload of catalogue tracks time-stretched to 0.9 laid end to end is written to a
FLAC file and matched from it in a fresh process, as a request is (``Refrain.match_file``:
decoded, fingerprinted and searched window by window): CPU seconds of the match, decode
included (``time.process_time``: the machine may be shared), times realtime per core, and
the match's peak RSS (``VmHWM`` reset just before it) above the process before the match
(index open and warmed up, the upload on disk).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import soundfile
import soxr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.accuracy import CONDITIONS, SOURCE_RATE, related_groups  # noqa: E402
from bench.corpus import add_split_arguments, split  # noqa: E402
from bench.fresh import run_fresh, status_mb  # noqa: E402
from bench.derivatives import (PITCH_TOLERANCE, RATIO_TOLERANCE, Derivative, ffmpeg_filter,  # noqa: E402
                               mix_under, pitch, speed, stretch)
from refrain.api import Refrain  # noqa: E402
from refrain.config import Config  # noqa: E402
from refrain.fingerprint import load_audio  # noqa: E402
from refrain.tuning import tune_process  # noqa: E402

#: A work counts as covered when its spans cover this share of where it sounds.
MIN_COVERAGE = 0.9
INSERTED_SECONDS = 30.0


@dataclass(frozen=True)
class WholeCondition:
    """How an upload is made from a whole track, and what it should be reported as.

    Attributes
    ----------
    derivative : Derivative
        The transform (its ground-truth time ratio and pitch shift).
    kinds : tuple of str
        The kinds that describe the upload rightly.
    inserted : bool
        The work is 30 s laid into a held-out track, not the whole upload.
    """

    derivative: Derivative
    kinds: tuple[str, ...]
    inserted: bool = False


WHOLE_CONDITIONS = {
    "speed_0.8": WholeCondition(speed(0.8), ("speed_changed",)),
    "speed_0.9": WholeCondition(speed(0.9), ("speed_changed",)),
    "speed_1.1": WholeCondition(speed(1.1), ("speed_changed",)),
    "speed_1.25": WholeCondition(speed(1.25), ("speed_changed",)),
    "pitch_-4": WholeCondition(pitch(-4), ("pitch_shifted",)),
    "pitch_+2": WholeCondition(pitch(2), ("pitch_shifted",)),
    "pitch_+4": WholeCondition(pitch(4), ("pitch_shifted",)),
    "tempo_0.8": WholeCondition(stretch(0.8), ("time_stretched",)),
    "tempo_0.9": WholeCondition(stretch(0.9), ("time_stretched",)),
    "tempo_1.1": WholeCondition(stretch(1.1), ("time_stretched",)),
    "tempo_1.25": WholeCondition(stretch(1.25), ("time_stretched",)),
    "mp3_64k": WholeCondition(Derivative(core="mp3_64k"), ("copy",)),
    "white_10dB": WholeCondition(Derivative(core="white_10dB"), ("copy",)),
    "mixed_-6dB": WholeCondition(Derivative(mix_db=-6.0), ("mixed",)),
    "mixed_-12dB": WholeCondition(Derivative(mix_db=-12.0), ("mixed",)),
    "inserted_30s": WholeCondition(Derivative(), ("excerpt",), inserted=True),
}
UNRELATED = "unrelated"


def looped(x: np.ndarray, n: int) -> np.ndarray:
    """``x`` repeated to ``n`` samples."""
    return np.resize(x, n)


def make_upload(y: np.ndarray, condition: WholeCondition, background: np.ndarray, rng,
                workdir: Path) -> tuple[np.ndarray, tuple[float, float]]:
    """The upload made from the whole track ``y`` and where (s) the work sounds in it."""
    d = condition.derivative
    if condition.inserted:
        piece = y[:int(INSERTED_SECONDS * SOURCE_RATE)]
        at = len(background) // 3
        upload = np.concatenate([background[:at], piece, background[at:]])
        return upload, (at / SOURCE_RATE, (at + len(piece)) / SOURCE_RATE)
    x = ffmpeg_filter(y, d.filters) if d.filters else y
    if d.mix_db is not None:
        x = mix_under(x, looped(background, len(x)), d.mix_db)
    if d.core:
        x = CONDITIONS[d.core][1](x, rng, workdir)
    return x, (0.0, len(x) / SOURCE_RATE)


def coverage(spans, sounds: tuple[float, float]) -> float:
    """Share of ``sounds`` (start, end) covered by the union of the spans' upload times."""
    begin, end = sounds
    edges = sorted((max(begin, s.query_start), min(end, s.query_end)) for s in spans)
    covered, reach = 0.0, begin
    for start, stop in edges:
        start = max(start, reach)
        if stop > start:
            covered += stop - start
            reach = stop
    return covered / max(end - begin, 1e-9)


def match_upload(refrain: Refrain, x: np.ndarray):
    """The whole upload (at SOURCE_RATE) matched; (result, CPU seconds)."""
    y = soxr.resample(x, SOURCE_RATE, refrain.params.sample_rate, quality="HQ").astype(np.float32)
    started = time.process_time()
    result = refrain.match_signal(y, "upload")
    return result, time.process_time() - started


def judge(result, track_id: int | None, condition: WholeCondition | None, sounds: tuple[float, float],
          upload_name: str, names: dict[int, str], groups: dict[str, str]) -> dict:
    """One upload's outcome against its ground truth (``track_id`` None: no work is in it)."""
    outcome: dict = {"false_matches": []}
    related = {upload_name, names.get(track_id, "")}
    for m in result.matches:
        if m.track_id == track_id:
            continue
        name = names[m.track_id]
        if not any(name in groups and groups[name] == groups.get(r) for r in related):
            outcome["false_matches"].append(f"{' + '.join(sorted(r for r in related if r))} -> {name} "
                                            f"({m.tier}, {m.kind}, confidence {m.confidence:.3f})")
    if track_id is None or condition is None:
        return outcome
    found = next((m for m in result.matches if m.track_id == track_id), None)
    d = condition.derivative
    outcome["found"] = found is not None
    if found is not None:
        outcome.update({
            "kind": found.kind, "tier": found.tier, "time_ratio": found.time_ratio,
            "pitch_shift_semitones": found.pitch_shift_semitones, "spans": len(found.spans),
            "kind_ok": found.kind in condition.kinds,
            "ratio_ok": abs(found.time_ratio / d.time_ratio - 1) <= RATIO_TOLERANCE,
            "pitch_ok": abs(found.pitch_shift_semitones - d.pitch_shift_semitones) <= PITCH_TOLERANCE,
            "coverage": round(coverage(found.spans, sounds), 3)})
        outcome["coverage_ok"] = outcome["coverage"] >= MIN_COVERAGE
    return outcome


def percent(outcomes: list[dict], key: str) -> float:
    return round(100 * float(np.mean([bool(o.get(key)) for o in outcomes])), 1) if outcomes else float("nan")


def run_conditions(args, catalogue: list[Path], held_out: list[Path]) -> dict:
    """Every condition over the first ``--limit`` catalogue (held-out) tracks."""
    rng = np.random.default_rng(args.seed)
    groups = related_groups()
    report: dict = {}
    with tempfile.TemporaryDirectory(prefix="refrain-whole-") as scratch, \
            Refrain.open(args.index, whole_track_config(args), mmap=True) as refrain:
        tracks = refrain.store.catalog.ready_tracks()
        names = {track_id: Path(t.source).name for track_id, t in tracks.items()}
        ids = {Path(t.source).name: track_id for track_id, t in tracks.items()}
        chosen = [p for p in catalogue if p.name in ids][:args.limit]
        missing = [p.name for p in catalogue if p.name not in ids]
        if len(missing) == len(catalogue):
            sys.exit(f"{args.index} holds none of the split's catalogue tracks")
        backgrounds = [load_audio(p, SOURCE_RATE) for p in held_out[:args.limit]]
        conditions = [c for c in args.conditions.split(",") if c]
        for name in conditions:
            outcomes, cpu, audio = [], 0.0, 0.0
            if name == UNRELATED:
                for path, x in zip(held_out, backgrounds):
                    result, seconds = match_upload(refrain, x)
                    outcomes.append(judge(result, None, None, (0, 0), path.name, names, groups))
                    cpu, audio = cpu + seconds, audio + len(x) / SOURCE_RATE
            else:
                condition = WHOLE_CONDITIONS[name]
                for i, path in enumerate(chosen):
                    y = load_audio(path, SOURCE_RATE)
                    background = backgrounds[i % len(backgrounds)]
                    x, sounds = make_upload(y, condition, background, rng, Path(scratch))
                    result, seconds = match_upload(refrain, x)
                    cpu, audio = cpu + seconds, audio + len(x) / SOURCE_RATE
                    outcome = judge(result, ids[path.name], condition, sounds,
                                    held_out[i % len(backgrounds)].name, names, groups)
                    outcome["upload"] = path.name
                    outcomes.append(outcome)
            row = {"uploads": len(outcomes),
                   "false_matches": sum(len(o["false_matches"]) for o in outcomes),
                   "false_match_details": [f for o in outcomes for f in o["false_matches"]],
                   "upload_minutes": round(audio / 60, 1),
                   "x_realtime_cpu": round(audio / max(cpu, 1e-9), 1)}
            if name != UNRELATED:
                row.update({
                    "found_percent": percent(outcomes, "found"),
                    "right_kind_percent": percent(outcomes, "kind_ok"),
                    "ratio_within_1pc_percent": percent(outcomes, "ratio_ok"),
                    "pitch_within_0.25st_percent": percent(outcomes, "pitch_ok"),
                    "coverage_90pc_percent": percent(outcomes, "coverage_ok"),
                    "all_right_percent": round(100 * float(np.mean([
                        all(o.get(k) for k in ("kind_ok", "ratio_ok", "pitch_ok", "coverage_ok"))
                        for o in outcomes])), 1),
                    "outcomes": [{k: v for k, v in o.items() if k != "false_matches"} for o in outcomes]})
            report[name] = row
            print(f"{name:14s} " + (
                f"found {row['found_percent']:5.1f}%  kind {row['right_kind_percent']:5.1f}%  "
                f"ratio {row['ratio_within_1pc_percent']:5.1f}%  pitch {row['pitch_within_0.25st_percent']:5.1f}%  "
                f"span>=90% {row['coverage_90pc_percent']:5.1f}%  all {row['all_right_percent']:5.1f}%  "
                if name != UNRELATED else "") +
                f"false {row['false_matches']}  ({row['uploads']} uploads, {row['x_realtime_cpu']}x realtime CPU)",
                flush=True)
    return report


def whole_track_config(args) -> Config:
    """The library's defaults, with the explained-window skip where ``--skip-explained`` asks for it."""
    if not args.skip_explained:
        return Config()
    return replace(Config(), match=replace(Config().match, unexplained_tiers=("peaks", "melody")))


def reset_peak_rss() -> None:
    """Start ``VmHWM`` afresh: opening the index and making the upload peak higher than a match may."""
    Path("/proc/self/clear_refs").write_text("5")


def stretched_upload(catalogue: list[Path], ids: dict[str, int], minutes: float) -> tuple[np.ndarray, set[int]]:
    """Catalogue tracks of the index (file name -> track id in ``ids``) time-stretched to 0.9, end to end to
    ``minutes`` (at ``SOURCE_RATE``); and the track ids laid in."""
    stretch = WHOLE_CONDITIONS["tempo_0.9"].derivative
    wanted, pieces, total, laid_in = int(minutes * 60 * SOURCE_RATE), [], 0, set()
    for path in catalogue:
        if path.name not in ids:
            continue
        x = ffmpeg_filter(load_audio(path, SOURCE_RATE), stretch.filters)[:wanted - total]
        pieces.append(x)
        total += len(x)
        laid_in.add(ids[path.name])
        if total >= wanted:
            break
    return np.concatenate(pieces), laid_in


def one_length(args, catalogue: list[Path], minutes: float) -> dict:
    """Catalogue tracks stretched to 0.9, laid end to end to ``minutes``, matched once (a child run)."""
    with Refrain.open(args.index, whole_track_config(args), mmap=True) as refrain:
        ids = {Path(t.source).name: track_id for track_id, t in refrain.store.catalog.ready_tracks().items()}
        x, laid_in = stretched_upload(catalogue, ids, minutes)
        refrain.match_signal(soxr.resample(x[:10 * SOURCE_RATE], SOURCE_RATE, refrain.params.sample_rate,
                                           quality="HQ").astype(np.float32), "warm-up")
        with tempfile.TemporaryDirectory(prefix="refrain-upload-") as folder:
            # The upload is a file, decoded (and resampled) as a request's is: block by block.
            upload = Path(folder) / "upload.flac"
            soundfile.write(upload, x, SOURCE_RATE, subtype="PCM_16")
            seconds = len(x) / SOURCE_RATE
            del x
            reset_peak_rss()
            idle = status_mb("VmRSS")
            started, wall = time.process_time(), time.perf_counter()
            result = refrain.match_file(upload, "upload")
            cpu, wall = time.process_time() - started, time.perf_counter() - wall
            peak = status_mb("VmHWM")
    return {"minutes": minutes, "match_cpu_seconds": round(cpu, 2), "match_wall_seconds": round(wall, 2),
            "x_realtime_per_core": round(seconds / cpu, 1), "rss_before_match_MB": round(idle),
            "peak_rss_MB": round(peak), "peak_above_before_MB": round(peak - idle),
            "works_laid_in": len(laid_in), "works_found": sum(m.track_id in laid_in for m in result.matches),
            "found_time_stretched": sum(m.track_id in laid_in and m.kind == "time_stretched"
                                        for m in result.matches)}


def run_lengths(args) -> list[dict]:
    rows = []
    for minutes in args.minutes:
        command = [sys.executable, __file__, str(args.music), "--index", str(args.index),
                   "--catalogue", str(args.catalogue), "--negatives", str(args.negatives),
                   "--seed", str(args.seed), "--minutes", str(minutes), "--one-length",
                   *(["--skip-explained"] if args.skip_explained else [])]
        row = run_fresh(command, f"{minutes} min upload")
        rows.append(row)
        print(f"{minutes:5.1f} min  {row['match_cpu_seconds']:7.1f} CPU s  {row['x_realtime_per_core']:6.1f}x "
              f"realtime/core  RSS before {row['rss_before_match_MB']} MB, peak {row['peak_rss_MB']} MB "
              f"(+{row['peak_above_before_MB']})  found {row['works_found']}/{row['works_laid_in']}, "
              f"time_stretched {row['found_time_stretched']}", flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_split_arguments(parser)
    parser.add_argument("--index", type=Path, required=True, help="an index of the split's catalogue (read-only)")
    parser.add_argument("--limit", type=int, default=10, help="tracks per condition (default 10)")
    parser.add_argument("--conditions", default=",".join([*WHOLE_CONDITIONS, UNRELATED]))
    parser.add_argument("--minutes", type=float, nargs="*", default=[1.0, 3.0, 10.0, 20.0],
                        help="upload lengths for speed and memory (none: skip)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--skip-explained", action="store_true",
                        help="the peaks and melody tiers skip windows the earlier tiers explain "
                             "(MatchParams.unexplained_tiers; off by default)")
    parser.add_argument("--one-length", action="store_true", help=argparse.SUPPRESS)  # a child run
    args = parser.parse_args()
    tune_process()
    if not (args.index / "manifest.json").exists():
        parser.error(f"{args.index} is not a Refrain index (no manifest.json)")
    unknown = set(args.conditions.split(",")) - {*WHOLE_CONDITIONS, UNRELATED, ""}
    if unknown:
        parser.error(f"unknown conditions: {', '.join(sorted(unknown))}")
    catalogue, held_out = split(parser, args)
    if args.one_length:
        print(json.dumps(one_length(args, catalogue, args.minutes[0])))
        return 0
    report = {"conditions": run_conditions(args, catalogue, held_out), "lengths": run_lengths(args)}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

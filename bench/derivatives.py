"""Derivatives of catalogue music: does Refrain catch them, and does it say what was done?

    python bench/derivatives.py ~/.cache/refrain-music --catalogue 150 --negatives 50
    python bench/derivatives.py ~/.cache/refrain-music --catalogue 20 --negatives 10 --limit 10
    python bench/derivatives.py ~/.cache/refrain-music --selfcheck

Splits the music like bench/accuracy.py (same shuffle and seed: the first ``--catalogue``
tracks are indexed, the next ``--negatives`` are not), then derives a 10 s query from a
random excerpt of each catalogue track (or of the first ``--limit``) per condition:
speed change (tempo and pitch together), pitch shift, time stretch (ffmpeg ``asetrate`` +
``aresample`` and ``rubberband``), the excerpt mixed 6 or 12 dB under a non-catalogue
track, a mash-up of 5 s of one catalogue track and 5 s of another, and transforms combined
with a condition of bench/accuracy.py. Each query knows its ground truth: time ratio
(query tempo / reference tempo), pitch shift in semitones and reference position.

Prints: per condition the top-1 hit rate, the rate at which the true track is reported at
all, the top-1 hits at the true reference position (within 1 s), and among hits the share
whose reported time ratio is within 1 % and pitch shift within 0.25 semitone of the truth,
the median errors and the reported ``kind``; for mash-ups the share where both tracks are
reported with their query spans within 1 s; false matches on derivatives of non-catalogue
tracks; query latency p50/p99 (match only: decode and transform excluded) and peak RSS.
It first checks the transforms themselves (time ratio and delay from a click train, pitch
from a harmonic tone and from the chroma of real music, query length); ``--selfcheck``
prints only that check.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
import librosa
import numpy as np
import soxr
from scipy import signal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.accuracy import (CONDITIONS, SOURCE_RATE, add_bounded_arguments, bench_config, list_tracks,  # noqa: E402
                            peak_rss_mb, related_groups)
from refrain.fingerprint import FingerprintError, load_audio  # noqa: E402
from refrain.api import Refrain  # noqa: E402
from refrain.tuning import tune_process  # noqa: E402

QUERY_SECONDS = 10.0
MARGIN_SECONDS = 0.5  # extra output asked of a transform before trimming to QUERY_SECONDS
MASHUP = "mashup"
POSITION_TOLERANCE = 1.0  # seconds, for reference positions and mash-up spans
RATIO_TOLERANCE = 0.01  # relative
PITCH_TOLERANCE = 0.25  # semitones


@dataclass(frozen=True)
class Derivative:
    """How a query is derived from a catalogue excerpt, and the ground truth it carries.

    Attributes
    ----------
    filters : str
        ffmpeg audio filter chain applied to the excerpt ("" for none).
    time_ratio : float
        Query tempo / reference tempo (a 1.25x speed-up is 1.25).
    pitch_shift_semitones : float
        Query pitch minus reference pitch.
    mix_db : float, optional
        Level (RMS) of the excerpt relative to a non-catalogue excerpt it is mixed under.
    core : str, optional
        A condition of bench/accuracy.py applied to the 10 s result.
    """

    filters: str = ""
    time_ratio: float = 1.0
    pitch_shift_semitones: float = 0.0
    mix_db: float | None = None
    core: str | None = None


def speed(factor: float, core: str | None = None) -> Derivative:
    """Resampling: tempo and pitch change together (ffmpeg needs an integer rate)."""
    rate = round(SOURCE_RATE * factor)
    ratio = rate / SOURCE_RATE
    return Derivative(f"asetrate={rate},aresample={SOURCE_RATE}", ratio, 12 * math.log2(ratio),
                      core=core)


def pitch(semitones: float, core: str | None = None) -> Derivative:
    """Pitch shift, tempo unchanged (rubberband)."""
    return Derivative(f"rubberband=pitch={2 ** (semitones / 12):.6f}", 1.0, semitones, core=core)


def stretch(ratio: float, core: str | None = None) -> Derivative:
    """Time stretch, pitch unchanged (rubberband)."""
    return Derivative(f"rubberband=tempo={ratio}", ratio, 0.0, core=core)


DERIVATIVES = {
    "speed_0.8": speed(0.8),
    "speed_0.9": speed(0.9),
    "speed_1.1": speed(1.1),
    "speed_1.25": speed(1.25),
    "pitch_-4": pitch(-4),
    "pitch_-2": pitch(-2),
    "pitch_-1": pitch(-1),
    "pitch_+1": pitch(1),
    "pitch_+2": pitch(2),
    "pitch_+4": pitch(4),
    "stretch_0.8": stretch(0.8),
    "stretch_1.25": stretch(1.25),
    "mixed_-6dB": Derivative(mix_db=-6.0),
    "mixed_-12dB": Derivative(mix_db=-12.0),
    "speed_1.1+mp3": speed(1.1, core="mp3_64k"),
    "pitch_+2+white_10dB": pitch(2, core="white_10dB"),
    "stretch_0.8+pink_10dB": stretch(0.8, core="pink_10dB"),
}
ALL_CONDITIONS = [*DERIVATIVES, MASHUP]
NEGATIVE_CONDITIONS = ["speed_1.25", "pitch_-4", "stretch_0.8", "mixed_-6dB"]


@dataclass(frozen=True)
class Excerpt:
    """Samples cut from a track at ``start`` seconds."""

    path: Path
    samples: np.ndarray
    start: float


# -- making queries ----------------------------------------------------------------------

def ffmpeg_filter(x: np.ndarray, filters: str) -> np.ndarray:
    """Run mono float32 PCM at SOURCE_RATE through an ffmpeg filter chain, in memory."""
    pcm = ["-f", "f32le", "-ac", "1", "-ar", str(SOURCE_RATE)]
    done = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", *pcm, "-i", "pipe:0",
                           "-af", filters, *pcm, "pipe:1"],
                          input=np.ascontiguousarray(x, np.float32).tobytes(),
                          capture_output=True, check=True)
    return np.frombuffer(done.stdout, np.float32)


def excerpt(path: Path, y: np.ndarray, seconds: float, rng) -> Excerpt:
    start = rng.uniform(0, max(0.0, len(y) / SOURCE_RATE - seconds))
    return Excerpt(path, y[int(start * SOURCE_RATE):int((start + seconds) * SOURCE_RATE)], start)


def mix_under(x: np.ndarray, background: np.ndarray, db: float) -> np.ndarray:
    """``x`` scaled to ``db`` below (RMS) ``background``, plus ``background``."""
    n = min(len(x), len(background))
    x, background = x[:n], background[:n]
    gain = np.sqrt(np.mean(background ** 2) / max(np.mean(x ** 2), 1e-12)) * 10 ** (db / 20)
    return (background + gain * x).astype(np.float32)


def derive(path: Path, y: np.ndarray, d: Derivative, rng, workdir: Path | None = None,
           background: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """A 10 s query derived from a random excerpt of ``y``, and the excerpt's start (s)."""
    cut = excerpt(path, y, (QUERY_SECONDS + MARGIN_SECONDS) * d.time_ratio, rng)
    x = ffmpeg_filter(cut.samples, d.filters) if d.filters else cut.samples
    q = x[:int(QUERY_SECONDS * SOURCE_RATE)]
    if d.mix_db is not None:
        q = mix_under(q, background, d.mix_db)
    if d.core:
        q = CONDITIONS[d.core][1](q, rng, workdir)
    return q, cut.start


# -- checking the transforms themselves ----------------------------------------------------

def click_train(seconds: float = 12.0, every: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Short clicks every ``every`` s; returns the signal and the click times."""
    times = np.arange(every, seconds - every / 2, every)
    x = np.zeros(int(seconds * SOURCE_RATE), np.float32)
    for t in times:
        i = int(t * SOURCE_RATE)
        x[i:i + 64] = np.hanning(64)
    return x, times


def click_mapping(times: np.ndarray, out: np.ndarray) -> tuple[float, float] | None:
    """Fit output click time = input time / ratio + delay; None if clicks were lost."""
    envelope = signal.convolve(np.abs(out), np.ones(32) / 32, mode="same")
    peaks, _ = signal.find_peaks(envelope, height=0.3 * envelope.max(),
                                 distance=int(0.25 * SOURCE_RATE))
    if len(peaks) != len(times):
        return None
    slope, delay = np.polyfit(times, peaks / SOURCE_RATE, 1)
    return float(1 / slope), float(delay)


def harmonic_tone(f0: float = 220.0, seconds: float = 3.0) -> np.ndarray:
    t = np.arange(int(seconds * SOURCE_RATE)) / SOURCE_RATE
    return (0.2 * sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 6))).astype(np.float32)


def tone_f0(x: np.ndarray) -> float:
    f0 = librosa.yin(x, fmin=60, fmax=1000, sr=SOURCE_RATE, frame_length=2048)
    return float(np.median(f0[len(f0) // 4:-len(f0) // 4]))


def chroma_shift(a: np.ndarray, b: np.ndarray) -> float:
    """Pitch of ``b`` minus pitch of ``a`` in semitones (mod 12), from 0.1-semitone chroma."""
    bins = 120

    def profile(x):
        return librosa.feature.chroma_stft(y=x, sr=SOURCE_RATE, n_chroma=bins, tuning=0.0,
                                           n_fft=4096).mean(axis=1)

    pa, pb = profile(a), profile(b)
    corr = np.array([np.dot(pa, np.roll(pb, -k)) for k in range(bins)])
    k = int(np.argmax(corr))
    y0, y1, y2 = corr[k - 1], corr[k], corr[(k + 1) % bins]
    k = k + 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2)
    return float((k / 10 + 6) % 12 - 6)


def selfcheck(path: Path, y: np.ndarray, rng) -> dict:
    """Measure what each ffmpeg transform really does, against its ground truth."""
    clicks, times = click_train()
    tone = harmonic_tone()
    music = excerpt(path, y, QUERY_SECONDS, rng).samples
    tone_in = tone_f0(tone)
    checks = {}
    for name, d in DERIVATIVES.items():
        if not d.filters or d.core:
            continue
        mapping = click_mapping(times, ffmpeg_filter(clicks, d.filters))
        if mapping is None:
            checks[name] = {"ok": False, "error": "the transform lost or added clicks"}
            continue
        ratio, delay = mapping
        tone_pitch = 12 * math.log2(tone_f0(ffmpeg_filter(tone, d.filters)) / tone_in)
        music_pitch = chroma_shift(music, ffmpeg_filter(music, d.filters))
        query_seconds = len(derive(path, y, d, rng)[0]) / SOURCE_RATE
        checks[name] = {
            "truth_time_ratio": round(d.time_ratio, 5),
            "clicks_time_ratio": round(ratio, 5),
            "clicks_delay_ms": round(1000 * delay, 1),
            "truth_pitch_semitones": round(d.pitch_shift_semitones, 3),
            "tone_pitch_semitones": round(tone_pitch, 3),
            "music_chroma_pitch_semitones": round(music_pitch, 2),
            "query_seconds": round(query_seconds, 3),
            "ok": bool(abs(ratio / d.time_ratio - 1) <= 0.002 and abs(delay) <= 0.02
                       and abs(tone_pitch - d.pitch_shift_semitones) <= 0.1
                       and abs(music_pitch - d.pitch_shift_semitones) <= PITCH_TOLERANCE
                       and abs(query_seconds - QUERY_SECONDS) < 0.01),
        }
    return {"music": path.name, "all_ok": all(c["ok"] for c in checks.values()), "checks": checks}


# -- matching and judging --------------------------------------------------------------------

def run_query(refrain: Refrain, q: np.ndarray):
    """Match a query made at SOURCE_RATE; returns (result or None if silent, seconds)."""
    y = soxr.resample(q, SOURCE_RATE, refrain.params.sample_rate, quality="HQ").astype(np.float32)
    started = time.perf_counter()
    try:
        result = refrain.match_signal(y)
    except FingerprintError:  # a silent stretch of the track: nothing to match
        return None, 0.0
    return result, time.perf_counter() - started


def judge(matches: list, track_id: int, start: float, d: Derivative) -> dict:
    """Outcome of one derived query against its ground truth."""
    top = matches[0] if matches else None
    outcome = {"hit": top is not None and top.track_id == track_id,
               "listed": any(m.track_id == track_id for m in matches)}
    if outcome["hit"]:
        # compare span midpoints: robust to which landmark happens to open a span
        query_mid, ref_mid = (top.query_start + top.query_end) / 2, (top.ref_start + top.ref_end) / 2
        outcome["position_ok"] = abs(ref_mid - (start + d.time_ratio * query_mid)) <= POSITION_TOLERANCE
        ratio = getattr(top, "time_ratio", None)
        shift = getattr(top, "pitch_shift_semitones", None)
        outcome["ratio_error"] = None if ratio is None else abs(ratio - d.time_ratio) / d.time_ratio
        outcome["pitch_error"] = None if shift is None else abs(shift - d.pitch_shift_semitones)
        outcome["kind"] = getattr(top, "kind", None)
    return outcome


def judge_mashup(matches: list, a: int, b: int) -> dict:
    """A mash-up is caught when both tracks are reported, A on 0-5 s and B on 5-10 s."""
    half = QUERY_SECONDS / 2

    def span_ok(track_id, begin, end):
        m = next((m for m in matches if m.track_id == track_id), None)
        return m is not None and abs(m.query_start - begin) <= POSITION_TOLERANCE \
            and abs(m.query_end - end) <= POSITION_TOLERANCE

    listed = {m.track_id for m in matches}
    return {"hit": bool(matches) and matches[0].track_id in (a, b),
            "both_listed": a in listed and b in listed,
            "both_spans_ok": span_ok(a, 0.0, half) and span_ok(b, half, QUERY_SECONDS)}


def percent(flags) -> float | None:
    flags = list(flags)
    return round(100 * float(np.mean(flags)), 1) if flags else None


def summarize(outcomes: dict[str, list[dict]]) -> dict:
    """Per-condition figures, keyed like bench/accuracy.py (figure -> condition -> value)."""
    report: dict = {key: {} for key in (
        "queries_per_condition", "top1_hit_rate_percent", "listed_rate_percent",
        "top1_with_position_within_1s_percent", "hits_time_ratio_within_1pct_percent",
        "hits_pitch_within_0.25st_percent", "hits_time_ratio_median_abs_error_percent",
        "hits_pitch_median_abs_error_semitones", "hits_kind")}
    for condition, rows in outcomes.items():
        if not rows or condition == MASHUP:
            continue
        hits = [r for r in rows if r["hit"]]
        ratio_errors = [r["ratio_error"] for r in hits if r["ratio_error"] is not None]
        pitch_errors = [r["pitch_error"] for r in hits if r["pitch_error"] is not None]
        report["queries_per_condition"][condition] = len(rows)
        report["top1_hit_rate_percent"][condition] = percent(r["hit"] for r in rows)
        report["listed_rate_percent"][condition] = percent(r["listed"] for r in rows)
        report["top1_with_position_within_1s_percent"][condition] = percent(
            r["hit"] and r["position_ok"] for r in rows)
        report["hits_time_ratio_within_1pct_percent"][condition] = percent(
            e <= RATIO_TOLERANCE for e in ratio_errors)
        report["hits_pitch_within_0.25st_percent"][condition] = percent(
            e <= PITCH_TOLERANCE for e in pitch_errors)
        report["hits_time_ratio_median_abs_error_percent"][condition] = \
            round(100 * float(np.median(ratio_errors)), 2) if ratio_errors else None
        report["hits_pitch_median_abs_error_semitones"][condition] = \
            round(float(np.median(pitch_errors)), 3) if pitch_errors else None
        report["hits_kind"][condition] = dict(Counter(str(r["kind"]) for r in hits))
    mashups = outcomes.get(MASHUP, [])
    if mashups:
        report["queries_per_condition"][MASHUP] = len(mashups)
        report["top1_hit_rate_percent"][MASHUP] = percent(r["hit"] for r in mashups)
        report["mashup_both_listed_percent"] = percent(r["both_listed"] for r in mashups)
        report["mashup_both_spans_within_1s_percent"] = percent(r["both_spans_ok"] for r in mashups)
    return report


# -- the run -----------------------------------------------------------------------------------

def related(a: str, b: str, groups: dict[str, str]) -> bool:
    """Whether two corpus files share recorded material (bench/related-tracks.tsv)."""
    return a in groups and groups.get(b) == groups[a]


def query_negatives(refrain: Refrain, negatives: list[Path], conditions: list[str],
                    sources: dict[int, str], rng, workdir: Path):
    """Derivatives of non-catalogue tracks: any match is false unless the tracks share material.

    The mixed negative puts a track 6 dB under the previous track's excerpt.

    Returns
    -------
    flags : dict
        Condition -> one bool per query: some unrelated track was reported.
    false_matches, shared_material : list of str
        One line per reported track.
    backgrounds : list of Excerpt
        A 10 s excerpt of each track: the non-catalogue audio of the mixed conditions.
    """
    groups = related_groups()
    flags = {c: [] for c in NEGATIVE_CONDITIONS if c in conditions}
    false_matches, shared_material, backgrounds = [], [], []
    for path in negatives:
        y = load_audio(path, SOURCE_RATE)
        for condition in flags:
            d = DERIVATIVES[condition]
            under = backgrounds[-1] if d.mix_db is not None and backgrounds else None
            if d.mix_db is not None and under is None:
                continue
            q, _ = derive(path, y, d, rng, workdir, under.samples if under else None)
            result, _ = run_query(refrain, q)
            if result is None:
                continue
            names = [path.name] + ([under.path.name] if under else [])
            unrelated = False
            for m in result.matches:
                matched = sources[m.track_id]
                line = f"{condition}: {' under '.join(names)} -> {matched} (score {m.score})"
                if any(related(name, matched, groups) for name in names):
                    shared_material.append(line)
                else:
                    unrelated = True
                    false_matches.append(line)
            flags[condition].append(unrelated)
        backgrounds.append(excerpt(path, y, QUERY_SECONDS, rng))
    return flags, false_matches, shared_material, backgrounds


def query_catalogue(refrain: Refrain, queried: list[Path], ingested: dict[str, int],
                    conditions: list[str], backgrounds: list[Excerpt], rng, workdir: Path):
    """Derivatives of catalogue tracks, judged against their ground truth.

    The mash-up of a track is 5 s of the previous queried track (A) then 5 s of it (B).
    Mixed conditions are skipped without non-catalogue audio (``--negatives 0``).

    Returns
    -------
    outcomes : dict
        Condition -> one dict per query (see :func:`judge`, :func:`judge_mashup`).
    latencies : list of float
        Seconds spent in ``match_signal`` per query.
    """
    groups = related_groups()
    outcomes = {c: [] for c in conditions}
    latencies, previous = [], None

    def match(q):
        result, elapsed = run_query(refrain, q)
        if result is not None:
            latencies.append(elapsed)
        return result

    for path in queried:
        track_id = ingested[str(path)]
        y = load_audio(path, SOURCE_RATE)
        for condition in conditions:
            d = DERIVATIVES.get(condition)
            if d is None or (d.mix_db is not None and not backgrounds):
                continue
            under = backgrounds[rng.integers(len(backgrounds))].samples if d.mix_db is not None else None
            q, start = derive(path, y, d, rng, workdir, under)
            result = match(q)
            if result is not None:
                outcomes[condition].append(judge(result.matches, track_id, start, d))
        if MASHUP in conditions:
            part = excerpt(path, y, QUERY_SECONDS / 2, rng)
            if previous is not None and not related(previous.path.name, path.name, groups):
                result = match(np.concatenate([previous.samples, part.samples]))
                if result is not None:
                    outcomes[MASHUP].append(judge_mashup(result.matches, ingested[str(previous.path)],
                                                         track_id))
            previous = part
    return outcomes, latencies


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("music", type=Path)
    parser.add_argument("--catalogue", type=int, default=150)
    parser.add_argument("--negatives", type=int, default=50,
                        help="non-catalogue tracks (also the audio the mixed conditions add)")
    parser.add_argument("--limit", type=int, help="query only the first N catalogue tracks")
    parser.add_argument("--conditions", default=",".join(ALL_CONDITIONS))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--index", type=Path, help="reuse/keep the index here (default: temporary)")
    parser.add_argument("--json", type=Path, help="also write all figures to this file")
    parser.add_argument("--selfcheck", action="store_true", help="only check the transforms")
    add_bounded_arguments(parser)
    args = parser.parse_args()
    tune_process()
    args.conditions = args.conditions.split(",")
    unknown = set(args.conditions) - set(ALL_CONDITIONS)
    if unknown:
        parser.error(f"unknown conditions {sorted(unknown)}; known: {','.join(ALL_CONDITIONS)}")
    return args


def run(args: argparse.Namespace, workdir: Path) -> dict:
    tracks = list_tracks(args.music)
    random.Random(args.seed).shuffle(tracks)
    catalogue = tracks[:args.catalogue]
    negatives = tracks[args.catalogue:args.catalogue + args.negatives]
    rng = np.random.default_rng(args.seed)
    index_dir = args.index or workdir / "index"
    config = bench_config(args.bounded, args.proposal)
    report: dict = {"bounded": args.bounded, "proposal_settings": dict(args.proposal),
                    "transform_selfcheck": selfcheck(tracks[0], load_audio(tracks[0], SOURCE_RATE), rng)}
    if args.selfcheck:
        return report

    # -- ingest (a no-op for tracks already in --index) -------------------------------------
    with Refrain.open(index_dir, config, create=True) as refrain:
        results = list(refrain.ingest(catalogue, jobs=os.cpu_count() or 1))
        index_tracks = refrain.info().tracks
    ingested = {r.path: r.track_id for r in results if r.track_id is not None}
    if index_tracks != len(ingested):
        sys.exit(f"{index_dir} holds {index_tracks - len(ingested)} tracks outside this catalogue "
                 "(they would count as false matches): use another --index")
    sources = {track_id: Path(path).name for path, track_id in ingested.items()}
    queried = [p for p in catalogue if str(p) in ingested][:args.limit]
    report.update(catalogue_tracks=len(catalogue), negative_tracks=len(negatives),
                  queried_tracks=len(queried),
                  ingest_errors=[r.error for r in results if r.status == "error"])

    # -- queries: negatives first, they provide the non-catalogue audio of the mixed conditions
    with Refrain.open(index_dir, config) as refrain:
        negative_flags, false_matches, shared_material, backgrounds = query_negatives(
            refrain, negatives, args.conditions, sources, rng, workdir)
        outcomes, latencies = query_catalogue(refrain, queried, ingested, args.conditions,
                                              backgrounds, rng, workdir)

    report.update(summarize(outcomes))
    report["false_matches_non_catalogue"] = {c: f"{sum(v)}/{len(v)}" for c, v in negative_flags.items()}
    report["false_match_details"] = false_matches
    report["shared_material_matches"] = shared_material
    report["threshold_min_score"] = config.match.tier("pair").min_score
    if latencies:
        lat = np.array(latencies) * 1000
        report["query_latency_10s_ms_p50"] = round(float(np.percentile(lat, 50)), 2)
        report["query_latency_10s_ms_p99"] = round(float(np.percentile(lat, 99)), 2)
    report["peak_rss_MB"] = round(peak_rss_mb(), 1)
    return report


def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="refrain-bench-") as workdir:
        report = run(args, Path(workdir))
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

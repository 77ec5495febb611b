"""Accuracy, speed and size of Refrain on a folder of real music.

    python bench/accuracy.py ~/.cache/refrain-music --catalogue 150 --negatives 50

Indexes ``--catalogue`` tracks, keeps ``--negatives`` other tracks out of the
index, cuts random excerpts of both, applies each condition, and prints: top-1
hit rate per condition, false matches on non-catalogue excerpts, ingest speed
(x realtime per core, decode included and excluded), query latency p50/p99
(decode excluded), index bytes per catalogue hour and peak RSS.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import soxr
from scipy import signal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from refrain.fingerprint import FingerprintError, fingerprint_signal, load_audio  # noqa: E402
from refrain.fingerprint.decode import ffmpeg_executable  # noqa: E402
from refrain.matcher import MatchParams  # noqa: E402
from refrain.matcher.proposals import ProposalParams  # noqa: E402
from refrain.api import Refrain, audio_files  # noqa: E402
from refrain.config import Config  # noqa: E402
from refrain.tuning import tune_process  # noqa: E402

SOURCE_RATE = 22050  # transformations are applied at this rate, before the analysis resampling


def white_noise(x, snr_db, rng):
    noise = rng.standard_normal(len(x))
    return _at_snr(x, noise, snr_db)


def pink_noise(x, snr_db, rng):
    spectrum = np.fft.rfft(rng.standard_normal(len(x)))
    spectrum /= np.sqrt(np.maximum(np.arange(len(spectrum)), 1))
    return _at_snr(x, np.fft.irfft(spectrum, len(x)), snr_db)


def _at_snr(x, noise, snr_db):
    gain = np.sqrt(np.mean(x ** 2) / (np.mean(noise ** 2) * 10 ** (snr_db / 10)))
    return (x + gain * noise).astype(np.float32)


def phone_band(x, _rng):
    sos = signal.butter(6, [300, 3400], btype="bandpass", fs=SOURCE_RATE, output="sos")
    return signal.sosfilt(sos, x).astype(np.float32)


def mp3_64k(x, _rng, workdir: Path):
    wav, mp3 = workdir / "q.wav", workdir / "q.mp3"
    import soundfile
    soundfile.write(wav, x, SOURCE_RATE)
    subprocess.run([ffmpeg_executable(), "-v", "error", "-y", "-i", str(wav), "-c:a", "libmp3lame",
                    "-b:a", "64k", str(mp3)], check=True)
    return load_audio(mp3, SOURCE_RATE)


CONDITIONS = {
    "clean_10s": (10.0, lambda x, rng, w: x),
    "clean_5s": (5.0, lambda x, rng, w: x),
    "clean_3s": (3.0, lambda x, rng, w: x),
    "mp3_64k": (10.0, lambda x, rng, w: mp3_64k(x, rng, w)),
    "white_10dB": (10.0, lambda x, rng, w: white_noise(x, 10, rng)),
    "white_0dB": (10.0, lambda x, rng, w: white_noise(x, 0, rng)),
    "pink_10dB": (10.0, lambda x, rng, w: pink_noise(x, 10, rng)),
    "pink_0dB": (10.0, lambda x, rng, w: pink_noise(x, 0, rng)),
    "phone_band": (10.0, lambda x, rng, w: phone_band(x, rng)),
}
NEGATIVE_CONDITIONS = ["clean_10s", "clean_5s", "clean_3s", "mp3_64k", "white_0dB", "phone_band"]


def related_groups() -> dict[str, str]:
    """File name -> group, for corpus tracks known to share material (bench/related-tracks.tsv)."""
    rows = (Path(__file__).with_name("related-tracks.tsv")).read_text().splitlines()
    return {row.split("\t")[1]: row.split("\t")[0] for row in rows if row and not row.startswith("#")}


def list_tracks(folder: Path) -> list[Path]:
    inventory = folder / "INVENTORY.tsv"
    if inventory.exists():
        rows = inventory.read_text().splitlines()[1:]
        return [folder / row.split("\t")[0] for row in rows]
    return audio_files([folder])


def pair_tier_latency(index_dir: Path, tracks: list[Path], params) -> dict:
    """Latency of 10 s queries (one per track) with the pair tier alone."""
    config = Config(match=MatchParams().only("pair"))
    latencies = []
    with Refrain.open(index_dir, config) as refrain:
        for path in tracks:
            y = load_audio(path, params.sample_rate)
            start = len(y) // 3
            try:
                fp = fingerprint_signal(y[start:start + 10 * params.sample_rate], params)
            except FingerprintError:
                continue
            started = time.perf_counter()
            refrain.match_fingerprint(fp, path.name)
            latencies.append((time.perf_counter() - started) * 1000)
    return {"pair_tier_only_match_ms_p50": round(float(np.percentile(latencies, 50)), 2),
            "pair_tier_only_match_ms_p99": round(float(np.percentile(latencies, 99)), 2)}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


#: ``--bounded`` choices: which tiers a small catalogue's queries search through proposals.
BOUNDED_CHOICES = ("none", "derivatives", "copies")


def bench_config(bounded: str, proposal_settings: Sequence[tuple[str, object]] = ()) -> Config:
    """The default settings, with proposals bounding the tiers at every catalogue size if asked.

    ``none``: the defaults (below ``ProposalParams.min_catalogue_tracks`` every tier searches
    every track); ``derivatives``: the triplet tier searches only proposed tracks;
    ``copies``: the pair and peaks tiers too (``ProposalParams.copies``). A bench's
    150 tracks are far below the bound, so this is how it measures a bounded search.
    ``proposal_settings`` (``--proposal``, :func:`proposal_setting`) then replace
    ``ProposalParams`` fields, e.g. a hit budget scaled down to what it reads of a
    larger catalogue.
    """
    config = Config()
    proposals = config.match.proposals
    if bounded != "none":
        proposals = dataclasses.replace(proposals, min_catalogue_tracks=0, copies=bounded == "copies")
    proposals = dataclasses.replace(proposals, **dict(proposal_settings))
    return dataclasses.replace(config, match=dataclasses.replace(config.match, proposals=proposals))


def proposal_setting(text: str) -> tuple[str, object]:
    """``--proposal NAME=VALUE``: one ``ProposalParams`` field and its value, of the field's type."""
    name, _, value = text.partition("=")
    defaults = {f.name: getattr(ProposalParams(), f.name) for f in dataclasses.fields(ProposalParams)}
    if name not in defaults or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE with NAME one of {', '.join(defaults)}")
    kind = type(defaults[name])
    if kind is bool:
        if value not in ("true", "false"):
            raise argparse.ArgumentTypeError(f"{name} takes true or false")
        return name, value == "true"
    try:
        return name, kind(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name} takes a {kind.__name__}, not {value!r}") from None


def add_bounded_arguments(parser: argparse.ArgumentParser) -> None:
    """The benches' ``--bounded`` and ``--proposal`` options (:func:`bench_config`)."""
    parser.add_argument("--bounded", choices=BOUNDED_CHOICES, default="none",
                        help="search through proposals although the catalogue is small: none (the defaults), "
                             "derivatives (the triplet tier), copies (the pair and peaks tiers too)")
    parser.add_argument("--proposal", type=proposal_setting, action="append", default=[], metavar="NAME=VALUE",
                        help="set a ProposalParams field, e.g. max_hits=2800 (repeatable)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("music", type=Path)
    parser.add_argument("--catalogue", type=int, default=150)
    parser.add_argument("--negatives", type=int, default=50)
    parser.add_argument("--queries", type=int, default=1, help="excerpts per track and condition")
    parser.add_argument("--conditions", default=",".join(CONDITIONS))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--index", type=Path, help="reuse/keep the index here (default: temporary)")
    parser.add_argument("--json", type=Path, help="also write all figures to this file")
    add_bounded_arguments(parser)
    args = parser.parse_args()
    tune_process()

    tracks = list_tracks(args.music)
    random.Random(args.seed).shuffle(tracks)
    catalogue = tracks[:args.catalogue]
    negatives = tracks[args.catalogue:args.catalogue + args.negatives]
    conditions = args.conditions.split(",")
    rng = np.random.default_rng(args.seed)
    scratch = tempfile.TemporaryDirectory(prefix="refrain-bench-")
    workdir = Path(scratch.name)
    index_dir = args.index or workdir / "index"
    config = bench_config(args.bounded, args.proposal)
    report: dict = {"catalogue_tracks": len(catalogue), "negative_tracks": len(negatives), "bounded": args.bounded,
                    "proposal_settings": dict(args.proposal)}

    # -- ingest, decode included (one process) ---------------------------------------------
    with Refrain.open(index_dir, config, create=True) as refrain:
        started = time.perf_counter()
        results = list(refrain.ingest(catalogue, jobs=1))
        ingest_wall = time.perf_counter() - started
        errors = [r for r in results if r.status == "error"]
        audio_seconds = sum(r.duration or 0 for r in results)
        info = refrain.info()
        params = refrain.params
    fresh = sum(r.status in ("added", "updated") for r in results)
    report["ingest_errors"] = [r.error for r in errors]
    if fresh == len(catalogue) - len(errors):
        report["ingest_x_realtime_decode_included"] = round(audio_seconds / ingest_wall, 1)
    report["index_tracks"] = info.tracks
    report["index_hours"] = info.hours
    report["pair_landmarks_per_second_of_audio"] = round(info.landmarks / (info.hours * 3600), 1)
    report["index_bytes_per_hour_MB"] = round(info.bytes / info.hours / 1e6, 2)
    # A tier is a main file and its delta segments, named after it once rewritten (pairs.npz, pairs.7.npz).
    for tier in ("pairs", "triplets"):
        tier_bytes = sum(size for name, size in info.files.items() if name.split(".")[0] == tier)
        report[f"{tier}_bytes_per_hour_MB"] = round(tier_bytes / info.hours / 1e6, 2)

    # -- fingerprint speed from decoded PCM (decode excluded) ------------------------------
    sample = catalogue[:20]
    pcm = [load_audio(p, params.sample_rate) for p in sample]
    started = time.perf_counter()
    for y in pcm:
        fingerprint_signal(y, params)
    fp_wall = time.perf_counter() - started
    report["fingerprint_x_realtime_decode_excluded"] = round(
        sum(len(y) for y in pcm) / params.sample_rate / fp_wall, 1)
    del pcm

    # -- queries ---------------------------------------------------------------------------
    ingested = {r.path: r.track_id for r in results if r.track_id is not None}
    sources = {track_id: path for path, track_id in ingested.items()}
    # Half the operating threshold: how close non-catalogue music comes to a match.
    pair = config.match.tier("pair")
    permissive = Config(match=config.match.with_tier(
        dataclasses.replace(pair, min_score=pair.min_score / 2, min_span_score=pair.min_span_score / 2)))
    hits = {c: [] for c in conditions}
    offset_ok = {c: [] for c in conditions}
    true_scores = {c: [] for c in conditions}
    negative_hits = {c: [] for c in NEGATIVE_CONDITIONS if c in conditions}
    negative_top_scores, false_matches, shared_material, latencies = [], [], [], []
    groups = related_groups()

    def excerpt(y, length):
        start = rng.uniform(0, max(0.0, len(y) / SOURCE_RATE - length))
        return y[int(start * SOURCE_RATE):int((start + length) * SOURCE_RATE)], start

    def run_query(refrain, x):
        y = soxr.resample(x, SOURCE_RATE, params.sample_rate, quality="HQ").astype(np.float32)
        started = time.perf_counter()
        try:
            result = refrain.match_signal(y)
        except FingerprintError:  # a silent stretch of the track: nothing to match
            return None, 0.0
        return result, time.perf_counter() - started

    with Refrain.open(index_dir, config) as refrain, \
            Refrain.open(index_dir, permissive) as raw:
        for path in catalogue:
            if str(path) not in ingested:
                continue
            track_id = ingested[str(path)]
            y = load_audio(path, SOURCE_RATE)
            for _ in range(args.queries):
                for condition in conditions:
                    length, transform = CONDITIONS[condition]
                    x, start = excerpt(y, length)
                    q = transform(x, rng, workdir)
                    result, elapsed = run_query(refrain, q)
                    if result is None:
                        continue
                    if length == 10.0:
                        latencies.append(elapsed)
                    top = result.matches[0] if result.matches else None
                    hit = top is not None and top.track_id == track_id
                    hits[condition].append(hit)
                    offset_ok[condition].append(hit and abs(top.offset - start) <= 1.0)
                    loose = result if hit else run_query(raw, q)[0]
                    true_scores[condition].append(next(
                        (m.score for m in loose.matches if m.track_id == track_id), 0.0))
        for path in negatives:
            y = load_audio(path, SOURCE_RATE)
            for condition in negative_hits:
                length, transform = CONDITIONS[condition]
                x, _ = excerpt(y, length)
                q = transform(x, rng, workdir)
                result, _ = run_query(refrain, q)
                if result is None:
                    continue
                unrelated = []
                for m in result.matches:
                    matched = Path(sources[m.track_id]).name
                    line = f"{condition}: {path.name} -> {matched} (score {m.score})"
                    if path.name in groups and groups.get(matched) == groups[path.name]:
                        shared_material.append(line)
                    else:
                        unrelated.append(m)
                        false_matches.append(line)
                negative_hits[condition].append(bool(unrelated))
                loose, _ = run_query(raw, q)
                negative_top_scores.append(max(
                    (m.score for m in loose.matches
                     if groups.get(Path(sources[m.track_id]).name, "-") != groups.get(path.name)),
                    default=0.0))

    report["top1_hit_rate_percent"] = {c: round(100 * np.mean(v), 1) for c, v in hits.items() if v}
    report["top1_with_offset_within_1s_percent"] = {c: round(100 * np.mean(v), 1)
                                                    for c, v in offset_ok.items() if v}
    report["queries_per_condition"] = len(next(iter(hits.values())))
    report["false_matches_non_catalogue"] = {c: f"{sum(v)}/{len(v)}" for c, v in negative_hits.items()}
    report["false_match_details"] = false_matches
    report["shared_material_matches"] = shared_material
    report["true_track_score_p5"] = {c: round(float(np.percentile(v, 5)), 1)
                                     for c, v in true_scores.items() if v}
    report["non_catalogue_top_score_at_half_threshold_max"] = float(max(negative_top_scores, default=0))
    report["threshold_min_score"] = config.match.tier("pair").min_score
    lat = np.array(latencies) * 1000
    report["query_latency_10s_ms_p50"] = round(float(np.percentile(lat, 50)), 2)
    report["query_latency_10s_ms_p99"] = round(float(np.percentile(lat, 99)), 2)
    report["query_x_realtime"] = round(10.0 / (np.mean(lat) / 1000), 1)
    report.update(pair_tier_latency(index_dir, catalogue[:50], params))
    report["peak_rss_MB"] = round(peak_rss_mb(), 1)

    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where ingest's CPU goes, stage by stage, on real catalogue tracks (issue 16: >= 300x realtime per core).

    flock /work/bench.lock python bench/ingest_stages.py ~/.cache/refrain-music --tracks 20 [--json OUT]
    flock /work/bench.lock python bench/ingest_stages.py ~/.cache/refrain-music --tracks 20 --ingest

The first ``--tracks`` catalogue tracks of the benches' split (``bench/corpus.py``) are
fingerprinted as ``refrain ingest`` fingerprints a recording (:func:`fingerprint.fingerprint_file`:
decode to mono at the analysis rate, log-frequency spectrogram, peaks, melody chroma,
then every tier's landmarks and codes, :meth:`fingerprint.Fingerprint.index_entries`),
each stage timed on the CPU clock of this one process (``time.process_time``: the
machine may be shared). The index write is not part of it: ``--ingest`` also runs
``Refrain.ingest`` (one process, ``jobs=1``) into a fresh temporary index and times the
whole, commits included. Prints CPU seconds and times realtime per core per stage.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import soundfile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.corpus import add_split_arguments, split  # noqa: E402
from refrain.api import Refrain  # noqa: E402
from refrain.config import Config  # noqa: E402
from refrain.fingerprint import load_audio  # noqa: E402
from refrain.fingerprint.melody import chroma_sequence  # noqa: E402
from refrain.fingerprint.peaks import find_peaks  # noqa: E402
from refrain.fingerprint.pipeline import fingerprint_peaks  # noqa: E402
from refrain.fingerprint.spectrogram import log_frequency_spectrogram  # noqa: E402
from refrain.tuning import tune_process  # noqa: E402

STAGES = ("decode", "spectrogram", "peaks", "melody", "landmarks and codes")


def fingerprint_by_stage(paths: list[Path], config: Config) -> dict[str, float]:
    """CPU seconds of each of :data:`STAGES` over ``paths``, as ``fingerprint_file`` runs them."""
    params = config.fingerprint
    seconds = dict.fromkeys(STAGES, 0.0)

    def timed(stage: str, work):
        started = time.process_time()
        result = work()
        seconds[stage] += time.process_time() - started
        return result

    for path in paths:
        y = timed("decode", lambda: load_audio(path, params.sample_rate, config.max_track_seconds))
        S_db = timed("spectrogram", lambda: log_frequency_spectrogram(
            y, params.sample_rate, params.n_fft, params.hop_length, params.fmin, params.fmax,
            params.bins_per_octave))
        peaks = timed("peaks", lambda: find_peaks(
            S_db, params.frame_seconds, params.peak_time_radius, params.peak_freq_radius, params.peak_floor_db,
            params.peak_min_prominence_db, params.peaks_per_second, params.density_window))
        melody = None if params.melody is None else timed(
            "melody", lambda: chroma_sequence(S_db, params.bins_per_octave, params.fmin, params.melody))
        timed("landmarks and codes",
              lambda: fingerprint_peaks(peaks, len(y) / params.sample_rate, params, melody).index_entries())
    return seconds


def ingest_seconds(paths: list[Path], config: Config) -> float:
    """CPU seconds of ``Refrain.ingest`` of ``paths`` into a fresh index (one process, commits included)."""
    with tempfile.TemporaryDirectory(prefix="refrain-ingest-") as folder:
        with Refrain.open(Path(folder) / "index", config, create=True) as refrain:
            started = time.process_time()
            outcomes = [result.status for result in refrain.ingest(paths, jobs=1)]
            cpu = time.process_time() - started
    if outcomes != ["added"] * len(paths):
        sys.exit(f"ingest did not add every track: {outcomes}")
    return cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_split_arguments(parser)
    parser.add_argument("--tracks", type=int, default=20, help="catalogue tracks fingerprinted (default 20)")
    parser.add_argument("--ingest", action="store_true", help="also time Refrain.ingest into a fresh index")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    tune_process()
    catalogue, _ = split(parser, args)
    paths = catalogue[:args.tracks]
    config = Config()
    audio = sum(soundfile.info(str(path)).duration for path in paths)
    fingerprint_by_stage(paths[:1], config)  # compiled kernels loaded, caches warm
    seconds = fingerprint_by_stage(paths, config)
    report: dict = {"tracks": len(paths), "audio_minutes": round(audio / 60, 1),
                    "cpu_seconds": {stage: round(s, 3) for stage, s in seconds.items()},
                    "x_realtime_per_core": {stage: round(audio / max(s, 1e-9)) for stage, s in seconds.items()}}
    total = sum(seconds.values())
    report["fingerprint_with_decode_x_realtime_per_core"] = round(audio / total)
    report["fingerprint_without_decode_x_realtime_per_core"] = round(audio / (total - seconds["decode"]))
    print(f"{len(paths)} tracks, {audio / 60:.1f} min of audio; CPU seconds (x realtime per core):")
    for stage, s in seconds.items():
        print(f"  {stage:20s} {s:7.2f}  ({audio / max(s, 1e-9):,.0f}x)")
    print(f"  {'all, decode included':20s} {total:7.2f}  ({audio / total:,.0f}x); "
          f"without decode {audio / (total - seconds['decode']):,.0f}x")
    if args.ingest:
        cpu = ingest_seconds(paths, config)
        report["ingest_cpu_seconds"] = round(cpu, 2)
        report["ingest_x_realtime_per_core"] = round(audio / cpu)
        print(f"  Refrain.ingest into a fresh index, commits included: {cpu:.2f} CPU s ({audio / cpu:,.0f}x)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

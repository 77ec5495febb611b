"""Synthetic-cover benchmark of the melody tier: real compositions, re-performed.

    flock /tmp/refrain-bench.lock python bench/covers.py [--catalogue 340] [--negatives 200]

Needs ``music21`` (pinned in the ``bench`` extra) and Debian's ``fluidsynth`` with the
``fluid-soundfont-gm``, ``timgm6mb-soundfont``, ``musescore-general-soundfont-lossless``
(the uncompressed SF2 of MuseScore General: the SF3 one takes 18 s to load per render)
and ``opl3-soundfont`` packages. Renders are cached under ``~/.cache/refrain-covers``.

* **Catalogue:** Bach chorales (one harmonisation per chorale title, so no two pieces
  share a tune) and Irish dance tunes from O'Neill's *Music of Ireland* (1850), both
  shipped with music21, rendered with FluidR3 GM: chorales on church organ at 84 BPM,
  tunes on piano at 112 BPM, each tune played twice like a repeated verse.
* **Covers:** each catalogue piece again with another SoundFont (TimGM6mb, MuseScore
  General or OPL-3 FM) and other instruments per part, transposed -5..+6 semitones,
  tempo 0.8-1.25x, a third with a drum kit added and a third with pink noise at
  10-20 dB SNR; a random 30 s excerpt of each is the query.
* **Negatives:** other chorales and other tunes (same styles, not in the catalogue),
  rendered and excerpted like the covers: the hardest innocents.

Prints top-1 / top-10 / MAP of the melody tier's ranking, the reported-cover rate at
the operating threshold, key-shift accuracy, false cover matches on the negatives
(a negative that shares a tune with a catalogue piece, :func:`share_a_tune`, may match
that piece: counted apart), the similarity distributions and a threshold sweep that
calibrate the threshold, melody-tier query latency for 30 s, and the melody tier's
ingest cost and bytes per catalogue hour. ``--real-music`` instead counts cover
matches between unrelated real tracks, with its own threshold sweep.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from refrain.fingerprint import fingerprint_signal, load_audio  # noqa: E402
from refrain.fingerprint.melody import chroma_sequence, segment_descriptors, segment_starts  # noqa: E402
from refrain.fingerprint.spectrogram import log_frequency_spectrogram  # noqa: E402
from refrain.matcher import Catalogue, match  # noqa: E402
from refrain.matcher.melody import match_covers, verify_candidates  # noqa: E402
from refrain.api import Refrain  # noqa: E402
from refrain.config import Config  # noqa: E402
from refrain.tuning import tune_process  # noqa: E402

CACHE = Path.home() / ".cache" / "refrain-covers"
RATE = 16000  # Refrain analyses at 8 kHz; 16 kHz keeps the renders small
SOUNDFONTS = {"fluid": "/usr/share/sounds/sf2/FluidR3_GM.sf2", "timgm": "/usr/share/sounds/sf2/TimGM6mb.sf2",
              "musescore": "/usr/share/sounds/sf2/MuseScore_General_Full.sf2",
              "opl3": "/usr/share/sounds/sf2/OPL-3_FM_128M.sf2"}
COVER_FONTS = ("timgm", "musescore", "opl3")
# General MIDI programs: catalogue instrument, and the pool covers draw from.
STYLES = {
    "chorale": dict(bpm=84.0, program=19, cover_programs=(48, 52, 56, 71, 24, 4, 68, 60, 0, 42)),
    "folk": dict(bpm=112.0, program=0, cover_programs=(73, 40, 22, 24, 65, 81, 11, 105, 71, 56)),
}
EXCERPT_SECONDS = 30.0
#: Thresholds (min_similarity) the benchmarks print the effect of.
SWEEP = np.round(np.arange(0.3, 0.701, 0.025), 3)


# --------------------------------------------------------------------------- the pieces


def list_pieces() -> dict[str, list[str]]:
    """Piece keys per style: ``chorale:<corpus path>`` and ``folk:<opus file>#<number>``."""
    from music21 import corpus
    chorales = [str(path) for path in sorted(corpus.getComposer("bach"), key=str)
                if Path(path).name.startswith("bwv")]
    tunes = []
    root = Path(corpus.__file__).parent / "oneills1850"
    for opus in sorted(root.glob("*.abc")):
        numbers = [int(line[2:].strip()) for line in opus.read_text(errors="replace").splitlines()
                   if line.startswith("X:") and line[2:].strip().isdigit()]
        tunes += [f"{opus}#{n}" for n in numbers]
    return {"chorale": [f"chorale:{c}" for c in chorales], "folk": [f"folk:{t}" for t in tunes]}


@functools.lru_cache(maxsize=64)
def _tunes(path: str) -> dict[int, str]:
    """The ABC text of each tune of an opus file, by its X: number (parsing one tune is fast)."""
    tunes, number, lines = {}, None, []
    for line in Path(path).read_text(errors="replace").splitlines():
        if line.startswith("X:"):
            if number is not None:
                tunes[number] = "\n".join(lines)
            number, lines = int(line[2:].strip() or -1), []
        lines.append(line)
    if number is not None:
        tunes[number] = "\n".join(lines)
    return tunes


def load_score(key: str):
    from music21 import converter
    style, ref = key.split(":", 1)
    if style == "chorale":
        return converter.parse(ref)
    path, number = ref.rsplit("#", 1)
    return converter.parse(_tunes(path)[int(number)], format="abc")


def score_notes(score) -> list[tuple[float, float, int, int]]:
    """(onset, duration in quarter notes, MIDI pitch, part) of every sounding note."""
    from music21 import harmony
    notes = []
    parts = list(score.parts) or [score]
    for p, part in enumerate(parts):
        for n in part.stripTies().flatten().notes:
            if isinstance(n, harmony.ChordSymbol):  # chord names of a lead sheet, not notes
                continue
            for pitch in n.pitches:
                notes.append((float(n.offset), float(n.quarterLength), int(pitch.midi), p))
    return notes


def melody_signature(notes: list) -> list[int]:
    """The top part's first intervals: two harmonisations of one chorale tune share them."""
    return top_part_intervals(notes)[:24]


def top_part_intervals(notes: list) -> list[int]:
    """Every interval of the top part, in order (the tune, for a chorale or a dance tune)."""
    pitches = [pitch for _, _, pitch, part in sorted(notes) if part == 0]
    return [int(b - a) for a, b in zip(pitches, pitches[1:])]


def beat_intervals(notes: list) -> list[list[int]]:
    """Each part's intervals between the pitches sounding on successive quarter-note beats.

    Sampling on the beat drops passing and ornamental notes, which Bach varied from one
    setting of a tune to the next; the highest note sounding is taken for a chord.
    """
    by_part: dict[int, list] = {}
    for onset, duration, pitch, part in notes:
        by_part.setdefault(part, []).append((onset, onset + duration, pitch))
    lines = []
    for events in by_part.values():
        events = np.array(events)
        beats = np.arange(np.floor(events[:, 0].min()), events[:, 1].max(), 1.0)
        sounding = (events[None, :, 0] <= beats[:, None]) & (beats[:, None] < events[None, :, 1])
        pitches = np.where(sounding, events[None, :, 2], -1).max(axis=1)
        pitches = pitches[pitches >= 0]
        lines.append([int(b - a) for a, b in zip(pitches, pitches[1:])])
    return lines


def share_a_tune(notes_a: list, notes_b: list, run: int = 10, beat_run: int = 12, beat_moves: int = 8) -> bool:
    """Whether two pieces share a tune: one composition, whose cover match is no false match.

    The selection keeps one piece per opening (:func:`melody_signature`), but Bach set
    many chorale melodies more than once: the top parts share ``run`` consecutive
    intervals, or — when a passing note differs or the tune lies under an instrumental
    descant (BWV 12.7 and BWV 250 set "Was Gott tut, das ist wohlgetan" so) — some part
    of each shares ``beat_run`` consecutive beat intervals (:func:`beat_intervals`),
    ``beat_moves`` of them not a repeated pitch.
    """
    a, b = top_part_intervals(notes_a), top_part_intervals(notes_b)
    grams = {tuple(a[i:i + run]) for i in range(len(a) - run + 1)}
    if any(tuple(b[i:i + run]) in grams for i in range(len(b) - run + 1)):
        return True
    beat_grams = {tuple(line[i:i + beat_run]) for line in beat_intervals(notes_a)
                  for i in range(len(line) - beat_run + 1)
                  if np.count_nonzero(line[i:i + beat_run]) >= beat_moves}
    return any(tuple(line[i:i + beat_run]) in beat_grams for line in beat_intervals(notes_b)
               for i in range(len(line) - beat_run + 1))


def _vlq(value: int) -> bytes:
    out = [value & 0x7F]
    while value > 0x7F:
        value >>= 7
        out.append(0x80 | (value & 0x7F))
    return bytes(reversed(out))


def write_midi(path: Path, notes: list, bpm: float, programs: tuple, transpose: int) -> None:
    """A format-0 MIDI file: one channel and GM program per part, one tempo."""
    ticks = 480
    events = []  # (tick, order, bytes): note-offs sort before note-ons at the same tick
    n_parts = max(part for *_, part in notes) + 1
    for part in range(n_parts):
        channel = part if part < 9 else part + 1  # channel 10 is percussion
        events.append((0, 0, bytes([0xC0 | channel, programs[part % len(programs)]])))
    for onset, length, pitch, part in notes:
        channel = part if part < 9 else part + 1
        key = min(127, max(0, pitch + transpose))
        start, end = int(round(onset * ticks)), int(round((onset + length) * ticks))
        events.append((start, 2, bytes([0x90 | channel, key, 90])))
        events.append((max(end, start + 1), 1, bytes([0x80 | channel, key, 0])))
    events.sort(key=lambda e: (e[0], e[1]))
    tempo = int(round(60_000_000 / bpm))
    track = bytearray(b"\x00\xff\x51\x03" + tempo.to_bytes(3, "big"))
    now = 0
    for tick, _, data in events:
        track += _vlq(tick - now) + data
        now = tick
    track += b"\x00\xff\x2f\x00"
    header = b"MThd" + (6).to_bytes(4, "big") + (0).to_bytes(2, "big") + (1).to_bytes(2, "big") \
        + ticks.to_bytes(2, "big")
    path.write_bytes(header + b"MTrk" + len(track).to_bytes(4, "big") + bytes(track))


# --------------------------------------------------------------------------- rendering


def _drum_track(n: int, bpm: float, rng: random.Random) -> np.ndarray:
    """Kick on beats 1 and 3, snare on 2 and 4, eighth-note hats: a pop kit over the cover."""
    out = np.zeros(n)
    beat = 60.0 / bpm * RATE
    noise = np.random.default_rng(rng.randrange(1 << 30))
    t = np.arange(int(0.25 * RATE)) / RATE
    kick = np.sin(2 * np.pi * (50 + 80 * np.exp(-t / 0.03)) * t) * np.exp(-t / 0.12)
    snare = noise.standard_normal(t.size) * np.exp(-t / 0.06)
    hat = np.diff(noise.standard_normal(t.size + 1)) * np.exp(-t / 0.015) * 0.4
    for i in range(int(n / beat * 2) + 1):
        at = int(i * beat / 2)
        for wave, on in ((kick, i % 4 == 0), (snare, i % 4 == 2), (hat, True)):
            if on and at < n:
                seg = wave[:n - at]
                out[at:at + seg.size] += seg
    return out


def render(key: str, variant: dict) -> Path:
    """Render one piece with ``variant`` (font, programs, transpose, tempo, extra, seed); cached."""
    name = key.replace("/", "_").replace(":", "_").replace("#", "_")[-80:]
    tag = "_".join(str(variant[k]) for k in ("font", "transpose", "tempo", "extra", "seed"))
    tag += "_p" + "-".join(map(str, variant["programs"]))
    out = CACHE / "renders" / f"{name}__{tag}.flac"
    if out.exists():
        return out
    style = key.split(":", 1)[0]
    bpm = STYLES[style]["bpm"] * variant["tempo"]
    with tempfile.TemporaryDirectory() as tmp:
        mid, wav = Path(tmp) / "piece.mid", Path(tmp) / "piece.wav"
        write_midi(mid, variant["notes"], bpm, variant["programs"], variant["transpose"])
        subprocess.run(["fluidsynth", "-ni", "-q", "-g", "0.5", "-r", str(RATE), "-F", str(wav),
                        SOUNDFONTS[variant["font"]], str(mid)], check=True, capture_output=True)
        y, rate = sf.read(wav, dtype="float32", always_2d=True)
    assert rate == RATE
    y = y.mean(axis=1)
    nonzero = np.nonzero(np.abs(y) > 1e-4)[0]
    if len(nonzero) == 0:
        raise RuntimeError(f"{key}: fluidsynth rendered silence")
    y = y[nonzero[0]:nonzero[-1] + 1]
    if style == "folk":  # a tune is played twice, like a repeated verse
        y = np.concatenate([y, y])
    rng = random.Random(variant["seed"])
    if variant["extra"] == "drums":
        drums = _drum_track(len(y), bpm, rng)
        y = y + drums * (np.sqrt(np.mean(y ** 2)) / max(np.sqrt(np.mean(drums ** 2)), 1e-9)) * 0.5
    elif variant["extra"] == "noise":
        spectrum = np.fft.rfft(np.random.default_rng(variant["seed"]).standard_normal(len(y)))
        noise = np.fft.irfft(spectrum / np.sqrt(np.maximum(np.arange(len(spectrum)), 1)), len(y))
        snr = rng.uniform(10, 20)
        y = y + noise * np.sqrt(np.mean(y ** 2) / (np.mean(noise ** 2) * 10 ** (snr / 10)))
    y = (0.9 * y / max(float(np.abs(y).max()), 1e-9)).astype(np.float32)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".tmp.flac")
    sf.write(tmp_out, y, RATE, subtype="PCM_16")
    os.replace(tmp_out, out)
    return out


def catalogue_variant(key: str) -> dict:
    style = key.split(":", 1)[0]
    return dict(font="fluid", programs=(STYLES[style]["program"],), transpose=0, tempo=1.0, extra="clean", seed=0)


def cover_variant(key: str, rng: random.Random) -> dict:
    style = key.split(":", 1)[0]
    pool = STYLES[style]["cover_programs"]
    return dict(font=rng.choice(COVER_FONTS), programs=tuple(rng.sample(pool, 4)),
                transpose=rng.randint(-5, 6), tempo=round(float(np.exp(rng.uniform(np.log(0.8), np.log(1.25)))), 3),
                extra=rng.choice(("clean", "drums", "noise")), seed=rng.randrange(1 << 30))


def _render_job(job):
    key, variant, notes = job
    try:
        return key, variant, str(render(key, {**variant, "notes": notes})), None
    except Exception as err:  # a score music21 cannot render is dropped, and said so
        return key, variant, None, f"{type(err).__name__}: {err}"


def render_all(jobs: list, workers: int) -> list:
    results = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for i, result in enumerate(pool.map(_render_job, jobs, chunksize=4)):
            results.append(result)
            if result[3]:
                print(f"  skipped {result[0]}: {result[3]}", file=sys.stderr)
            if (i + 1) % 100 == 0:
                print(f"  rendered {i + 1}/{len(jobs)}", file=sys.stderr)
    return results


def _notes_job(key: str):
    try:
        return key, score_notes(load_score(key))
    except Exception:  # a score music21 cannot read is left out
        return key, None


# --------------------------------------------------------------------------- measuring


def excerpt(path: str, rng: random.Random) -> np.ndarray:
    y = load_audio(path, 8000)
    n = int(EXCERPT_SECONDS * 8000)
    if len(y) <= n:
        return y
    start = rng.randrange(len(y) - n)
    return y[start:start + n]


def pct(values, q):
    return float(np.percentile(values, q)) if len(values) else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--catalogue", type=int, default=340, help="catalogue pieces, half of each style")
    parser.add_argument("--negatives", type=int, default=200, help="negative pieces, half of each style")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--ivf-min-segments", type=int, metavar="N",
                        help="build the catalogue's melody store as an IVF from N descriptors (default: the "
                             "setting's 8,000, more than this catalogue's ~3,000, so an exact search)")
    parser.add_argument("--nprobe", type=int, help="IVF lists searched per query segment (default: the tier's)")
    parser.add_argument("--real-music", type=Path, metavar="MUSIC_DIR",
                        help="instead: false covers on real music, 30 s excerpts of the tracks "
                             "bench/accuracy.py keeps out of its index (needs --real-index)")
    parser.add_argument("--real-index", type=Path, metavar="INDEX",
                        help="the index of bench/accuracy.py --index from MUSIC_DIR; built here "
                             "(the same 150 catalogue tracks) if the directory does not exist")
    args = parser.parse_args()
    tune_process()
    if args.real_music:
        if not args.real_index:
            parser.error("--real-music needs --real-index")
        figures = real_music_check(args.real_music, args.real_index)
        print(json.dumps(figures, indent=2))
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2) + "\n")
        return 0
    if shutil.which("fluidsynth") is None:
        parser.error("needs Debian's fluidsynth and the SoundFont packages (see the module docstring)")
    rng = random.Random(args.seed)

    # Pieces: distinct tunes only (a chorale tune harmonised twice is one composition).
    pieces = list_pieces()
    chosen: dict[str, list[str]] = {}
    notes_path = CACHE / "notes.json"
    all_notes = json.loads(notes_path.read_text()) if notes_path.exists() else {}
    for style, keys in pieces.items():
        rng.shuffle(keys)
        need = args.catalogue + args.negatives
        todo = [k for k in keys[:int(need * 1.15)] if k not in all_notes]
        if todo:
            with ProcessPoolExecutor(max_workers=args.workers) as pool:
                for key, notes in pool.map(_notes_job, todo, chunksize=8):
                    all_notes[key] = notes
            CACHE.mkdir(parents=True, exist_ok=True)
            notes_path.write_text(json.dumps(all_notes))
        seen, picked = set(), []
        for key in keys:
            notes = all_notes.get(key)
            sig = tuple(melody_signature(notes)) if notes else ()
            if len(sig) < 8 or sig in seen:
                continue
            seen.add(sig)
            picked.append(key)
            if len(picked) == need:
                break
        chosen[style] = picked
        print(f"{style}: {len(picked)} distinct pieces", file=sys.stderr)
    # Negatives: half of each style; the catalogue: the other chorales, then tunes.
    negative_split = {style: len(keys) - args.negatives // 2 for style, keys in chosen.items()}
    negatives = [k for style, keys in chosen.items() for k in keys[negative_split[style]:]]
    catalogue = chosen["chorale"][:min(args.catalogue // 2, negative_split["chorale"])]
    catalogue += chosen["folk"][:min(args.catalogue - len(catalogue), negative_split["folk"])]

    jobs = [(k, catalogue_variant(k), all_notes[k]) for k in catalogue]
    jobs += [(k, cover_variant(k, rng), all_notes[k]) for k in catalogue + negatives]
    t0 = time.time()
    rendered = render_all(jobs, args.workers)
    print(f"rendered {len(rendered)} files in {time.time() - t0:.0f} s", file=sys.stderr)
    catalogue_files = {key: path for key, variant, path, err in rendered[:len(catalogue)] if path}
    covers = [(key, variant, path) for key, variant, path, err in rendered[len(catalogue):]
              if path and (key in catalogue_files or key in negatives)]
    same_tune = {negative: {key for key in catalogue_files if key.split(":")[0] == negative.split(":")[0]
                            and share_a_tune(all_notes[negative], all_notes[key])} for negative in negatives}

    config = Config()
    if args.ivf_min_segments is not None:
        melody = replace(config.fingerprint.melody, ivf_min_segments=args.ivf_min_segments)
        config = replace(config, fingerprint=replace(config.fingerprint, melody=melody))
    if args.nprobe is not None:
        config = replace(config, match=config.match.with_tier(replace(config.match.tier("melody"), nprobe=args.nprobe)))
    with tempfile.TemporaryDirectory() as tmp:
        index_dir = Path(tmp) / "index"
        t0 = time.time()
        with Refrain.open(index_dir, config, create=True) as refrain:
            results = list(refrain.ingest(sorted(catalogue_files.values()), jobs=1))
        ingest_seconds = time.time() - t0
        track_of = {r.path: r.track_id for r in results if r.track_id is not None}
        audio_seconds = sum(r.duration for r in results if r.duration)
        # The melody tier's own share of ingest: chroma + descriptors, on decoded audio.
        params = config.fingerprint
        melody_cost = audio_cost = 0.0
        for path in sorted(catalogue_files.values())[:60]:
            y = load_audio(path, params.sample_rate)
            S = log_frequency_spectrogram(y, params.sample_rate, params.n_fft, params.hop_length,
                                          params.fmin, params.fmax, params.bins_per_octave)
            t_spec = time.perf_counter()
            chroma = chroma_sequence(S, params.bins_per_octave, params.fmin, params.melody)
            segment_descriptors(chroma, segment_starts(len(chroma), params.melody, params.melody.segment_hop),
                                params.melody)
            melody_cost += time.perf_counter() - t_spec
            audio_cost += len(y) / params.sample_rate
        with Refrain.open(index_dir, config, mmap=True) as refrain:
            info = refrain.info()
            melody_bytes = info.files.get("melody.faiss", 0) + info.files.get("melody-chroma.faiss", 0)
            melody_lists = refrain.store.melody.lists
            figures = evaluate(refrain, catalogue_files, track_of, covers, negatives, same_tune, rng)
    hours = audio_seconds / 3600.0
    figures.update(flat_search_scaling(info.melody_segments, config))
    figures.update({
        "catalogue_pieces": len(track_of), "catalogue_hours": round(hours, 3),
        "ingest_x_realtime_all_tiers": round(audio_seconds / ingest_seconds, 1),
        "melody_tier_ingest_x_realtime": round(audio_cost / max(melody_cost, 1e-9), 1),
        "melody_bytes_per_catalogue_hour": int(melody_bytes / max(hours, 1e-9)),
        "melody_segments": info.melody_segments,
        "melody_ivf_lists": melody_lists,
    })
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


def real_music_check(music: Path, index_dir: Path, catalogue: int = 150, negatives: int = 50, seed: int = 1,
                     per_track: int = 3) -> dict:
    """Cover matches on real music: none may appear except between genuinely related tracks.

    The split is bench/accuracy.py's (same seed, same order), whose 10 s queries are
    too short for the melody tier; here every held-out track gives ``per_track``
    random 30 s excerpts, and every catalogue track one (its own recording is matched
    by the landmarks and left out, so any cover it gets is of *another* track). Tracks
    of one group of ``bench/related-tracks.tsv`` may match each other.
    """
    from accuracy import list_tracks, related_groups
    tracks = list_tracks(music)
    random.Random(seed).shuffle(tracks)
    held_out = tracks[catalogue:catalogue + negatives]
    groups = related_groups()
    if not index_dir.exists():
        with Refrain.open(index_dir, create=True) as refrain:
            for result in refrain.ingest(tracks[:catalogue]):
                if result.error:
                    print(f"  {result.error}", file=sys.stderr)
    rng = random.Random(seed)
    covers, related, queries, best_unrelated = [], [], 0, []
    config = Config()
    with Refrain.open(index_dir, config, mmap=True) as refrain:
        sources = {t: Path(track.source).name for t, track in refrain.store.catalog.ready_tracks().items()}
        melody, cover_params = refrain.store.melody, config.match.tier("melody")
        for path, count in [(p, per_track) for p in held_out] + [(p, 1) for p in tracks[:catalogue]]:
            y = load_audio(path, refrain.params.sample_rate)
            for _ in range(count):
                start = rng.uniform(0, max(0.0, len(y) / refrain.params.sample_rate - EXCERPT_SECONDS))
                x = y[int(start * refrain.params.sample_rate):][:int(EXCERPT_SECONDS * refrain.params.sample_rate)]
                try:
                    fp = fingerprint_signal(x, refrain.params)
                except Exception:  # a silent stretch: nothing to match
                    continue
                queries += 1
                # As Refrain.match_signal decides, but keeping every verified similarity for the sweep.
                landmark = {m.track_id for m in landmark_matches(refrain, fp)}
                unrelated = [-1.0]
                own = {track for track, source in sources.items() if source == path.name}  # its own recording
                for track, verdict in verify_candidates(fp.melody, melody, cover_params, skip=landmark | own):
                    is_related = path.name in groups and groups.get(sources[track]) == groups[path.name]
                    if not is_related:
                        unrelated.append(verdict.similarity)
                    if verdict.similarity >= cover_params.min_similarity:
                        line = (f"{path.name} -> {sources[track]} (similarity {verdict.similarity:.3f}, "
                                f"key {verdict.key_shift:+d})")
                        (related if is_related else covers).append(line)
                best_unrelated.append(max(unrelated))
    best = np.array(best_unrelated)
    return {"real_music_queries_30s": queries, "threshold": cover_params.min_similarity,
            "cover_matches_unrelated": len(covers), "cover_match_details": covers,
            "cover_matches_between_related_tracks": related,
            "best_unrelated_similarity_p50_p99_max": [round(pct(best, q), 3) for q in (50, 99, 100)],
            # Queries that another threshold would report an unrelated cover for.
            "threshold_sweep_queries_with_unrelated_covers": {f"{t:.3f}": int(np.sum(best >= t)) for t in SWEEP}}


def landmark_matches(refrain: Refrain, fp) -> list:
    """What Refrain's tiers before the melody tier find in a query (their tracks are no cover)."""
    return match(fp, Catalogue(refrain.store.tiers, refrain.params), refrain.config.match.without("melody"))


def flat_search_scaling(segments: int, config: Config) -> dict:
    """Exact search time of one 30 s query's descriptors against 100,000 stored segments.

    What the IndexFlatIP costs as the catalogue grows (it is linear in the segments
    stored); random unit vectors, since only the arithmetic is measured.
    """
    import faiss
    from refrain.fingerprint.melody import descriptor_dim
    melody, cover = config.fingerprint.melody, config.match.tier("melody")
    rng = np.random.default_rng(0)
    stored = rng.standard_normal((100_000, descriptor_dim(melody))).astype(np.float32)
    stored /= np.linalg.norm(stored, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(stored.shape[1])
    index.add(stored)
    query_hop = melody.segment_hop // cover.query_hop_fraction
    per_query = len(cover.tempo_hypotheses) * (1 + (117 - melody.segment_frames) // query_hop)
    queries = stored[:per_query] + 0.01
    t = time.perf_counter()
    for _ in range(3):
        index.search(queries, cover.segment_neighbours)
    return {"flat_search_ms_per_100k_segments": round((time.perf_counter() - t) / 3 * 1000, 1),
            "query_descriptors_per_30s": per_query}


def evaluate(refrain: Refrain, catalogue_files: dict, track_of: dict, covers: list, negatives: list,
             same_tune: dict, rng: random.Random) -> dict:
    """Rank, report and time every cover and negative query.

    ``same_tune`` maps each negative to the catalogue pieces it shares a tune with
    (:func:`share_a_tune`): a cover match to one of those is no false match and is left
    out of the false-match figures (and counted apart).
    """
    melody, cover_params = refrain.store.melody, refrain.config.match.tier("melody")
    chroma_seconds = refrain.params.melody.chroma_seconds(refrain.params.frame_seconds)
    negative_keys = set(negatives)
    ranks, reported, key_right, latencies = [], [], [], []
    true_sims, negative_best, false_matches, landmark_hits, same_tune_matches = [], [], [], 0, 0
    sweep_covers, sweep_negatives = [], []  # top unmatched similarity: truth's (else -1) / any
    for key, variant, path in covers:
        y = excerpt(path, rng)
        fp = fingerprint_signal(y, refrain.params)
        if len(latencies) < 150:  # the melody tier as Refrain runs it, timed on the first queries
            t = time.perf_counter()
            match_covers(fp.melody, melody, cover_params, chroma_seconds, fp.duration)
            latencies.append(time.perf_counter() - t)
        # What Refrain reports: landmark matches first, covers only of tracks they did not find.
        landmark = {m.track_id for m in landmark_matches(refrain, fp)}
        landmark_hits += len(landmark)
        # The full ranking behind the threshold: every verified candidate by similarity.
        verified = sorted(((v.similarity, track, v) for track, v in verify_candidates(fp.melody, melody, cover_params,
                                                                                    skip=landmark)),
                          key=lambda item: -item[0])
        reported_covers = [(sim, track, v) for sim, track, v in verified if sim >= cover_params.min_similarity]
        unmatched = [(sim, track) for sim, track, _ in verified]
        if key in negative_keys:
            tune = {track_of[catalogue_files[k]] for k in same_tune[key]}
            same_tune_matches += any(track in tune for _, track, _ in reported_covers)
            innocent = [(sim, track) for sim, track in unmatched if track not in tune]
            negative_best.append(innocent[0][0] if innocent else -1.0)
            false_matches.append(any(track not in tune for _, track, _ in reported_covers))
            sweep_negatives.append(innocent[0][0] if innocent else -1.0)
            continue
        truth = track_of[catalogue_files[key]]
        order = [track for _, track, _ in verified]
        ranks.append(order.index(truth) + 1 if truth in order else None)
        hit = bool(reported_covers) and reported_covers[0][1] == truth
        sweep_covers.append(unmatched[0][0] if unmatched and unmatched[0][1] == truth else -1.0)
        reported.append(hit)
        if truth in order:
            true_sims.append(verified[order.index(truth)][0])
        if hit:
            key_right.append(reported_covers[0][2].key_shift == variant["transpose"])
    found_ranks = [r for r in ranks if r is not None]
    n = len(ranks)
    latencies_ms = np.array(latencies) * 1000
    return {
        "cover_queries": n, "negative_queries": len(negative_best),
        "top1_reported": round(float(np.mean(reported)), 4),
        "top1_ranking": round(sum(r == 1 for r in found_ranks) / n, 4),
        "top10_ranking": round(sum(r <= 10 for r in found_ranks) / n, 4),
        "map": round(sum(1.0 / r for r in found_ranks) / n, 4),
        "key_shift_exact_of_hits": round(float(np.mean(key_right)), 4) if key_right else None,
        "negatives_sharing_a_tune_with_the_catalogue": sum(bool(v) for v in same_tune.values()),
        "cover_matches_of_a_shared_tune": same_tune_matches,
        "false_cover_matches": int(sum(false_matches)),
        "false_cover_rate": round(float(np.mean(false_matches)), 4),
        "landmark_matches_on_all_queries": landmark_hits,
        "threshold": cover_params.min_similarity,
        "true_similarity_p1_p5_p50": [round(pct(true_sims, q), 3) for q in (1, 5, 50)],
        "negative_best_similarity_p50_p99_max": [round(pct(negative_best, q), 3) for q in (50, 99, 100)],
        "melody_query_ms_p50_p99": [round(pct(latencies_ms, 50), 1), round(pct(latencies_ms, 99), 1)],
        # What another threshold would give: (top-1 reported, false cover rate).
        "threshold_sweep": {f"{t:.3f}": [round(float(np.mean(np.array(sweep_covers) >= t)), 4),
                                         round(float(np.mean(np.array(sweep_negatives) >= t)), 4)]
                            for t in SWEEP},
    }


if __name__ == "__main__":
    sys.exit(main())

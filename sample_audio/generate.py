#!/usr/bin/env python3
"""Regenerate everything in ``sample_audio/`` from :mod:`refrain.synth`.

Run from the repository root::

    python sample_audio/generate.py            # (re)write sample_audio/
    python sample_audio/generate.py --check    # regenerate in a temp dir, compare bytes

Every file here except this script is written by it: the catalogue songs, the
queries derived from them, ``manifest.json`` (machine-readable expected matches)
and ``README.md``. All audio is synthesised from fixed seeds, so it is original
and public domain (CC0) by construction. The output is deterministic: with the same
numpy/scipy, libsndfile (FLAC) and imageio-ffmpeg binary (Vorbis, MP3) a second run
writes byte-identical files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# The refrain package next to this script, whether or not refrain is installed.
sys.path.insert(0, str(ROOT))

from refrain.synth import add_noise, describe_song, render_song  # noqa: E402

SR = 22050
SONG_SECONDS = 30.0
#: (track number, seed). The genre in each file name comes from describe_song(seed).
CATALOGUE = ((1, 7), (2, 12), (3, 11), (4, 21))
UNRELATED_SEED = 14  # a pop song like song 01, but not in the catalogue
NOISE_SEED = 2024  # seed of the noise added to query (a)
VORBIS_QUALITY = 5  # libvorbis -q:a (about 60 kbit/s for 22.05 kHz mono)
FADE_SECONDS = 0.005  # at the mash-up joint, to avoid a click (timing unchanged)
SPEED_UP = 1.25  # the "nightcore" query (e): resampled this much faster
#: The AI-cover query (f): song 03's notes re-rendered with the instruments, drum kit and
#: effects of this seed, this many semitones lower, at this tempo.
COVER_TIMBRE_SEED, COVER_SEMITONES, COVER_TEMPO = 90, -3, 0.9


def pcm16(y: np.ndarray) -> np.ndarray:
    """Float samples to int16 (clipped, rounded) — the exact samples every file holds."""
    return np.round(np.clip(y, -1.0, 1.0) * 32767.0).astype("<i2")


def seconds(t: float) -> int:
    return int(round(t * SR))


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def write_ffmpeg(path: Path, y: np.ndarray, codec: list[str]) -> None:
    """Encode with ffmpeg, bit-exact mode and no metadata, so the bytes are reproducible."""
    cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-v", "error", "-y",
           "-f", "s16le", "-ar", str(SR), "-ac", "1", "-i", "pipe:0",
           "-map_metadata", "-1", "-fflags", "+bitexact", "-flags:a", "+bitexact",
           *codec, str(path)]
    subprocess.run(cmd, input=pcm16(y).tobytes(), check=True, capture_output=True)


def write_audio(path: Path, y: np.ndarray) -> None:
    suffix = path.suffix.lower()
    if suffix == ".flac":
        sf.write(path, pcm16(y), SR, subtype="PCM_16", format="FLAC")
    elif suffix == ".ogg":  # ffmpeg, not libsndfile: libsndfile picks a random Ogg serial number
        write_ffmpeg(path, y, ["-c:a", "libvorbis", "-q:a", str(VORBIS_QUALITY)])
    elif suffix == ".mp3":
        write_ffmpeg(path, y, ["-c:a", "libmp3lame", "-b:a", "64k"])
    else:
        raise ValueError(path)


def build(out: Path) -> dict:
    """Write all audio into ``out`` and return the manifest."""
    (out / "catalogue").mkdir(parents=True, exist_ok=True)
    (out / "queries").mkdir(parents=True, exist_ok=True)
    for sub in ("catalogue", "queries"):  # both folders are entirely generated
        for stale in (out / sub).iterdir():
            if stale.suffix.lower() in (".flac", ".ogg", ".mp3", ".wav"):
                stale.unlink()

    songs, catalogue = {}, []
    for number, seed in CATALOGUE:
        info = describe_song(seed)
        name = f"song-{number:02d}-{info['genre']}"
        songs[number] = (name, render_song(seed, SONG_SECONDS, SR))
        write_audio(out / "catalogue" / f"{name}.ogg", songs[number][1])
        catalogue.append(dict(track=name, file=f"catalogue/{name}.ogg", seed=seed, duration=SONG_SECONDS,
                              genre=info["genre"], tempo_bpm=info["tempo_bpm"], key=info["key"],
                              lead=info["lead"], harmony=info["harmony"], bass=info["bass"]))

    def excerpt(number: int, start: float, length: float) -> np.ndarray:
        return songs[number][1][seconds(start) : seconds(start) + seconds(length)].astype(np.float64)

    def expect(number: int, query_start: float, query_end: float, reference_start: float,
               time_ratio: float = 1.0, pitch_shift_semitones: float = 0.0,
               kind: str | None = None) -> dict:
        found = dict(track=songs[number][0], query_start=query_start, query_end=query_end,
                     reference_start=reference_start, time_ratio=time_ratio,
                     pitch_shift_semitones=round(pitch_shift_semitones, 3))
        return found | ({"kind": kind} if kind else {})

    queries = []

    # (a) 10 s of song 1 from 12 s, white noise at 5 dB SNR, lossless.
    y = add_noise(excerpt(1, 12.0, 10.0), 5.0, np.random.default_rng(NOISE_SEED), "white")
    y *= 0.9 / np.max(np.abs(y))  # a gain does not change the SNR
    name = f"{songs[1][0]}-excerpt-12s-noise5db.flac"
    write_audio(out / "queries" / name, y)
    queries.append(dict(file=f"queries/{name}", duration=10.0,
                        description="song 01, 12.0-22.0 s, white Gaussian noise added at 5 dB SNR (FLAC)",
                        expected=[expect(1, 0.0, 10.0, 12.0)]))

    # (b) 10 s of song 2 from 5 s, MP3 at 64 kbit/s.
    name = f"{songs[2][0]}-excerpt-5s-mp3-64k.mp3"
    write_audio(out / "queries" / name, excerpt(2, 5.0, 10.0))
    queries.append(dict(file=f"queries/{name}", duration=10.0,
                        description="song 02, 5.0-15.0 s, MP3 64 kbit/s (LAME via ffmpeg)",
                        expected=[expect(2, 0.0, 10.0, 5.0)]))

    # (c) mash-up: 8 s of song 3 from 3 s, then 8 s of song 4 from 10 s.
    a, b = excerpt(3, 3.0, 8.0), excerpt(4, 10.0, 8.0)
    fade = np.linspace(1.0, 0.0, seconds(FADE_SECONDS))
    a[-fade.size :] *= fade
    b[: fade.size] *= fade[::-1]
    name = f"mashup-{songs[3][0]}-at-3s-then-{songs[4][0]}-at-10s.flac"
    write_audio(out / "queries" / name, np.concatenate([a, b]))
    queries.append(dict(file=f"queries/{name}", duration=16.0,
                        description="song 03 3.0-11.0 s, then song 04 10.0-18.0 s, hard cut (FLAC)",
                        expected=[expect(3, 0.0, 8.0, 3.0), expect(4, 8.0, 16.0, 10.0)]))

    # (e) a "nightcore" derivative: 12.5 s of song 4 from 6 s, resampled 1.25x faster
    # (tempo and pitch together, ffmpeg asetrate), so 10 s long and 3.86 semitones up.
    name = f"{songs[4][0]}-nightcore-speed-1.25x.ogg"
    write_ffmpeg(out / "queries" / name, excerpt(4, 6.0, 12.5),
                 ["-af", f"asetrate={int(SR * SPEED_UP)},aresample={SR}",
                  "-c:a", "libvorbis", "-q:a", str(VORBIS_QUALITY)])
    queries.append(dict(file=f"queries/{name}", duration=10.0,
                        description=f"song 04 6.0-18.5 s played {SPEED_UP:g}x faster: tempo and pitch "
                                    "(+3.86 semitones) changed together (ffmpeg asetrate, Ogg Vorbis)",
                        expected=[expect(4, 0.0, 10.0, 6.0, SPEED_UP, 12 * np.log2(SPEED_UP),
                                         "speed_changed")]))

    # (f) an "AI cover": song 3's composition re-performed with other instruments, drums and
    # effects, lower and slower; no sound of the recording survives, only its notes.
    name = f"{songs[3][0]}-cover-other-instruments-{abs(COVER_SEMITONES)}st-lower-{COVER_TEMPO:g}x-tempo.ogg"
    write_audio(out / "queries" / name, render_song(CATALOGUE[2][1], SONG_SECONDS, SR, transpose=COVER_SEMITONES,
                                                    tempo=COVER_TEMPO, timbre_seed=COVER_TIMBRE_SEED))
    queries.append(dict(file=f"queries/{name}", duration=SONG_SECONDS,
                        description=f"song 03's notes re-performed with the instruments, drum kit and effects of "
                                    f"seed {COVER_TIMBRE_SEED}, {abs(COVER_SEMITONES)} semitones lower, at "
                                    f"{COVER_TEMPO:g}x tempo: a cover, none of the recording (Ogg Vorbis)",
                        expected=[expect(3, 0.0, SONG_SECONDS, 0.0, COVER_TEMPO, COVER_SEMITONES, "cover")]))

    # (d) unrelated music: a seed that is not in the catalogue.
    info = describe_song(UNRELATED_SEED)
    name = f"unrelated-{info['genre']}-no-match.ogg"
    write_audio(out / "queries" / name, render_song(UNRELATED_SEED, 20.0, SR)[seconds(10.0) :])
    queries.append(dict(file=f"queries/{name}", duration=10.0,
                        description=f"10.0-20.0 s of seed {UNRELATED_SEED} ({info['genre']}, "
                                    f"{info['tempo_bpm']} BPM, {info['key']}), not in the catalogue",
                        expected=[]))

    return dict(sample_rate=SR, generator="sample_audio/generate.py", licence="CC0-1.0",
                catalogue=catalogue, queries=queries)


README = """\
# Sample audio

Synthetic music for demos and tests, written entirely by
[`generate.py`](generate.py) from `refrain.synth.render_song` — no recording, no
sample, no third-party material. Everything here is public domain
([CC0 1.0](https://creativecommons.org/publicdomain/zero/1.0/)) by construction.

Do not edit these files by hand; change `generate.py` (or `refrain/synth.py`) and
regenerate. [`manifest.json`](manifest.json) holds the same facts as the tables
below in machine-readable form (seeds, expected track and offsets).

## Catalogue (`catalogue/`)

{sr} Hz mono, {song:.0f} s each, Ogg Vorbis (libvorbis `-q:a {vq}`).

| file | seed | genre | tempo | key | lead / harmony / bass |
| --- | --- | --- | --- | --- | --- |
{catalogue_rows}

## Queries (`queries/`) and what a matcher should answer

`reference start` is the position in the catalogue track that lines up with the
query's `query start`: a query second *t* in that span is track second
*t - query start + reference start*.

| file | what it is | expected match |
| --- | --- | --- |
{query_rows}

Notes:

- All offsets are sample-exact. The MP3 carries a LAME gapless header: libsndfile
  (mpg123) and ffmpeg both drop the encoder delay and return exactly 10.0 s lined up
  with 5.0 s. A decoder that ignores the header returns 1105 samples (50 ms) of
  encoder delay first, so the match then appears at about 4.95 s.
- The unrelated clip is deliberately of the same genre as song 01: no catalogue
  song shares any material with it, so a match is a false positive.

## Regenerating

From the repository root, with numpy, scipy, soundfile and imageio-ffmpeg installed:

```
python sample_audio/generate.py           # rewrites catalogue/, queries/, manifest.json, README.md
python sample_audio/generate.py --check   # regenerates in a temp dir and compares bytes
```

The script finds `refrain` next to it (no install needed). Output is byte-identical
from run to run for the same numpy/scipy, libsndfile (FLAC) and imageio-ffmpeg
binary (Vorbis, MP3); another encoder version may change the bytes but not the music.
"""


def readme(manifest: dict) -> str:
    cat_rows = "\n".join(
        f"| `{c['file']}` | {c['seed']} | {c['genre']} | {c['tempo_bpm']} BPM | {c['key']} | "
        f"{c['lead']} / {c['harmony']} / {c['bass']} |" for c in manifest["catalogue"])
    q_rows = []
    for q in manifest["queries"]:
        if q["expected"]:
            exp = "; ".join(f"query {e['query_start']:g}–{e['query_end']:g} s → `{e['track']}` "
                            f"at reference start {e['reference_start']:g} s"
                            + (f", tempo ×{e['time_ratio']:g}, pitch {e['pitch_shift_semitones']:+g} st"
                               if e["time_ratio"] != 1.0 else "") for e in q["expected"])
        else:
            exp = "**no match**"
        q_rows.append(f"| `{q['file']}` | {q['description']} | {exp} |")
    return README.format(sr=manifest["sample_rate"], song=SONG_SECONDS, vq=VORBIS_QUALITY,
                         catalogue_rows=cat_rows, query_rows="\n".join(q_rows))


def generate(out: Path) -> list[Path]:
    manifest = build(out)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    (out / "README.md").write_text(readme(manifest), encoding="utf-8")
    files = [out / "README.md", out / "manifest.json"]
    files += [out / c["file"] for c in manifest["catalogue"]]
    files += [out / q["file"] for q in manifest["queries"]]
    return files


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="regenerate into a temporary folder and compare with sample_audio/")
    args = parser.parse_args(argv)
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            fresh = generate(Path(tmp))
            bad = [p.relative_to(tmp) for p in fresh
                   if not (HERE / p.relative_to(tmp)).is_file() or md5(HERE / p.relative_to(tmp)) != md5(p)]
        for rel in bad:
            print(f"differs or missing: sample_audio/{rel}")
        print("sample_audio/ is up to date" if not bad else f"{len(bad)} file(s) differ")
        return 1 if bad else 0
    files = generate(HERE)
    total = 0
    for p in files:
        size = p.stat().st_size
        total += size
        print(f"{size:>9,d}  {md5(p)}  {p.relative_to(ROOT)}")
    print(f"{total:>9,d}  total")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Shared fixtures: synthetic songs written to disk and a small catalogue index built from them.

All audio comes from :func:`refrain.synth.render_song` (deterministic per seed), so
the suite needs no downloaded material and gives the same result on every run.
Session-scoped fixtures are built once; tests that modify an index work on a copy
(:func:`index_copy`).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from refrain import cli
from refrain.api import Refrain
from refrain.synth import render_song

SR = 22050
#: Catalogue seeds -> song length in seconds; six genres so that the songs differ in kind.
CATALOGUE = {30: 36.0, 33: 32.0, 34: 34.0, 41: 38.0, 44: 35.0, 49: 33.0}
#: Songs that are never ingested (a pop and a ballad, genres also in the catalogue).
UNRELATED = (45, 35)


@dataclass(frozen=True)
class Song:
    """A rendered song and the file it was written to."""

    seed: int
    path: Path
    samples: np.ndarray  # float32 at SR, exactly what the file holds (after 16-bit rounding)

    def excerpt(self, start: float, seconds: float) -> np.ndarray:
        i = int(round(start * SR))
        return self.samples[i:i + int(round(seconds * SR))]


@dataclass(frozen=True)
class CatalogueIndex:
    """The session's index directory and the track id of each catalogue seed."""

    directory: Path
    track_ids: dict[int, int]


def pcm16(y: np.ndarray) -> np.ndarray:
    return np.round(np.clip(y, -1.0, 1.0) * 32767.0).astype("<i2")


def _write_audio(path: Path, y: np.ndarray, sr: int = SR) -> Path:
    """Write 16-bit WAV or FLAC (by suffix); the parent folder is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, pcm16(y), sr, subtype="PCM_16")
    return path


@functools.lru_cache(maxsize=None)
def _render(seed: int, duration: float) -> np.ndarray:
    y = render_song(seed, duration, sr=SR)
    y.setflags(write=False)  # shared between tests: nobody may modify it in place
    return y


@pytest.fixture(scope="session")
def render():
    """``render(seed, duration)``: a cached :func:`render_song` at 22050 Hz (read-only array)."""
    return _render


@pytest.fixture(scope="session")
def write_audio():
    """``write_audio(path, y, sr=22050)``: write 16-bit WAV/FLAC (by suffix), return the path."""
    return _write_audio


@pytest.fixture(scope="session")
def songs(tmp_path_factory) -> dict[int, Song]:
    """The catalogue songs, alternately WAV and FLAC, in one folder."""
    folder = tmp_path_factory.mktemp("songs")
    result = {}
    for n, (seed, duration) in enumerate(CATALOGUE.items()):
        y = _render(seed, duration)
        path = _write_audio(folder / f"song-{seed}.{'wav' if n % 2 == 0 else 'flac'}", y)
        samples = (pcm16(y) / 32767.0).astype(np.float32)
        samples.setflags(write=False)
        result[seed] = Song(seed, path, samples)
    return result


@pytest.fixture(scope="session")
def unrelated_songs() -> dict[int, np.ndarray]:
    """Songs that are not in the catalogue, 30 s each, at 22050 Hz."""
    return {seed: _render(seed, 30.0) for seed in UNRELATED}


@pytest.fixture(scope="session")
def catalogue_index(tmp_path_factory, songs) -> CatalogueIndex:
    """An index of every catalogue song, built once through the library API."""
    directory = tmp_path_factory.mktemp("catalogue") / "index"
    with Refrain.open(directory, create=True) as refrain:
        folder = next(iter(songs.values())).path.parent
        results = list(refrain.ingest([folder]))
    assert [r.status for r in results] == ["added"] * len(songs), results
    by_path = {Path(r.path): r.track_id for r in results}
    return CatalogueIndex(directory, {seed: by_path[song.path] for seed, song in songs.items()})


@pytest.fixture(scope="session")
def catalogue(catalogue_index):
    """The session index opened read-only and memory-mapped, as ``refrain match`` opens it."""
    with Refrain.open(catalogue_index.directory, mmap=True) as refrain:
        yield refrain


@pytest.fixture
def index_copy(catalogue_index, tmp_path) -> Path:
    """A private copy of the session index, for tests that write to it."""
    target = tmp_path / "index"
    shutil.copytree(catalogue_index.directory, target, ignore=shutil.ignore_patterns(".lock"))
    return target


@pytest.fixture
def pre_mix_index(tmp_path, songs, monkeypatch) -> Path:
    """An index of songs 30, 41 and 44 as Refrain wrote them before mixed list filing.

    Raw codes in the landmark lists, no "lists" key in the manifest (index.landmarks),
    and no proposal tiers (they came later).
    """
    from refrain.index import landmarks
    directory = tmp_path / "pre-mix"
    with monkeypatch.context() as patch:
        patch.setattr(landmarks, "mix_codes", lambda hashes: np.asarray(hashes, dtype=np.uint32))
        with Refrain.open(directory, create=True) as refrain:
            list(refrain.ingest([songs[seed].path for seed in (30, 41, 44)]))
    manifest = json.loads((directory / "manifest.json").read_text())
    for tier in ("pair", "triplet"):
        del manifest["tiers"][tier]["lists"]
    for tier in ("quad", "double"):
        (directory / manifest["tiers"].pop(tier)["file"]).unlink()
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


@pytest.fixture(scope="session")
def refrain_command() -> list[str]:
    """How to run the installed ``refrain`` console script."""
    script = Path(sys.executable).with_name("refrain")
    return [str(script)] if script.exists() else [sys.executable, "-m", "refrain.cli"]


@pytest.fixture(scope="session")
def run_refrain():
    """``run_refrain(*args, cwd=None)`` -> CompletedProcess: the CLI run in this process.

    ``refrain.cli.main`` with the arguments, its stdout and stderr captured and its exit
    code returned, as a subprocess would give them but without starting an interpreter
    (about 1.7 s each). A few tests run the installed script for real (``run_refrain_process``).
    """

    def run(*args, cwd=None, timeout=None):
        arguments = list(map(str, args))
        out, err = io.StringIO(), io.StringIO()
        previous = os.getcwd()
        try:
            if cwd is not None:
                os.chdir(cwd)
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    code = cli.main(arguments)
                except SystemExit as exit_:  # argparse's usage errors
                    code = exit_.code if isinstance(exit_.code, int) else 2
        finally:
            os.chdir(previous)
        return subprocess.CompletedProcess(["refrain", *arguments], code, out.getvalue(), err.getvalue())

    return run


@pytest.fixture(scope="session")
def run_refrain_process(refrain_command):
    """``run_refrain_process(*args, cwd=None)`` -> CompletedProcess of the installed ``refrain`` script."""

    def run(*args, cwd=None, timeout=300):
        return subprocess.run([*refrain_command, *map(str, args)], capture_output=True, text=True,
                              cwd=cwd, timeout=timeout, check=False)

    return run

"""Catalogue self-scan and the batch runner: planted relatives found, outputs the same however run.

The catalogue is five of the suite's synthetic songs plus four planted relatives
(a re-encoded duplicate, a whole-track speed-up, an excerpt, a pitch shift) and one
track whose source file is deleted after ingest (a bad item the scan must report
and step over).
"""

from __future__ import annotations

import json
import signal
import subprocess
import time

import librosa
import numpy as np
import pytest
import soxr

from refrain.fingerprint import FingerprintParams, fingerprint_signal, load_audio
from refrain.fingerprint.serialize import FingerprintFormatError, fingerprint_from_bytes, fingerprint_to_bytes
from refrain.api import Refrain
from refrain.cli import main as cli_main
from refrain.rescan.catalogue import rescan_catalogue
from refrain.rescan.jobs import RescanOptions, RunUsageError

SR = 22050
ORIGINALS = (30, 33, 34, 41, 44, 49)
#: Planted relative -> (original seed, expected kind of the relative matched against the original).
PLANTED = {"dup-33": 33, "fast-30": 30, "excerpt-41": 41, "pitch-44": 44}
OUTPUTS = ("items.jsonl", "groups.jsonl", "summary.csv")


@pytest.fixture(scope="module")
def planted(tmp_path_factory, songs, write_audio, render):
    """(index dir, {name: track id}) of the planted catalogue; the 'gone' track's file no longer exists."""
    root = tmp_path_factory.mktemp("rescan")
    music = root / "music"
    files = {f"song-{seed}": write_audio(music / f"song-{seed}.flac", songs[seed].samples) for seed in ORIGINALS}
    files["dup-33"] = write_audio(music / "dup-33.wav", songs[33].samples * 0.8)  # other bytes, same music
    files["fast-30"] = write_audio(music / "fast-30.wav", soxr.resample(songs[30].samples, SR * 1.2, SR))
    files["excerpt-41"] = write_audio(music / "excerpt-41.wav", songs[41].excerpt(10.0, 14.0))
    files["pitch-44"] = write_audio(music / "pitch-44.wav",
                                    librosa.effects.pitch_shift(songs[44].samples, sr=SR, n_steps=2.0))
    files["gone"] = write_audio(music / "gone.wav", render(35, 20.0))
    with Refrain.open(root / "index", create=True) as refrain:
        results = list(refrain.ingest(files.values()))
    assert [r.status for r in results] == ["added"] * len(files), results
    by_path = {r.path: r.track_id for r in results}
    files["gone"].unlink()
    return root / "index", {name: by_path[str(path)] for name, path in files.items()}


@pytest.fixture(scope="module")
def uninterrupted(planted, tmp_path_factory):
    """The reference run: one process."""
    out = tmp_path_factory.mktemp("scan") / "jobs1"
    return rescan_catalogue(planted[0], out, RescanOptions(progress=False)), out


def test_self_scan_groups_exactly_the_planted_relatives(planted, uninterrupted):
    _, ids = planted
    report, _ = uninterrupted
    found = {frozenset(group["track_ids"]) for group in report.groups}
    expected = {frozenset({ids[f"song-{seed}"], ids[name]}) for name, seed in PLANTED.items()}
    assert found == expected

    pairs = {(p["track_id"], p["related_track_id"]): p for g in report.groups for p in g["pairs"]}
    fast = pairs[ids["fast-30"], ids["song-30"]]
    assert fast["kind"] == "speed_changed" and fast["time_ratio"] == pytest.approx(1.2, abs=0.02)
    pitched = pairs[ids["pitch-44"], ids["song-44"]]
    assert pitched["kind"] == "pitch_shifted" and pitched["pitch_shift_semitones"] == pytest.approx(2.0, abs=0.3)
    excerpt = pairs[ids["excerpt-41"], ids["song-41"]]
    assert excerpt["kind"] == "excerpt" and excerpt["ref_start"] == pytest.approx(10.0, abs=1.0)
    assert pairs[ids["dup-33"], ids["song-33"]]["kind"] == "copy"
    assert all(p["spans"] and p["score"] >= 8 for p in pairs.values())


def test_a_missing_source_is_a_failed_item_and_the_rest_is_scanned(planted, uninterrupted):
    _, ids = planted
    report, out = uninterrupted
    failed = [r for r in report.run.records if r["status"] == "failed"]
    assert [r["item"] for r in failed] == [ids["gone"]]
    assert "gone.wav" in failed[0]["error"]
    assert sum(r["status"] == "ok" for r in report.run.records) == len(ids) - 1
    lines = (out / "items.jsonl").read_text().splitlines()
    assert [json.loads(line)["item"] for line in lines] == sorted(ids.values())
    assert not (out / "checkpoint.jsonl").exists()  # finished: only the outputs stay


def _outputs(folder) -> dict[str, str]:
    return {name: (folder / name).read_text() for name in OUTPUTS}


def test_process_pool_and_dask_give_identical_outputs(planted, uninterrupted, tmp_path):
    _, reference = uninterrupted
    rescan_catalogue(planted[0], tmp_path / "jobs2", RescanOptions(jobs=2, progress=False))
    # Dask's LocalCluster with thread workers: the same submit/as_completed path, quicker to start.
    dask = rescan_catalogue(planted[0], tmp_path / "dask", RescanOptions(jobs=2, dask="local",
                                                                      dask_processes=False, progress=False))
    assert _outputs(tmp_path / "jobs2") == _outputs(reference)
    assert _outputs(tmp_path / "dask") == _outputs(reference)
    assert dask.run.worker_peak_rss and all(rss > 0 for rss in dask.run.worker_peak_rss.values())


def _lines(path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_output(planted, uninterrupted, tmp_path, refrain_command, run_refrain,
                                                 capsys):
    index, ids = planted
    _, reference = uninterrupted
    out = tmp_path / "killed"
    run = subprocess.Popen([*refrain_command, "rescan", "catalogue", "--index", str(index), "--out", str(out)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while _lines(out / "checkpoint.jsonl") < 3 and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    run.send_signal(signal.SIGKILL)
    assert run.wait(30) == -signal.SIGKILL, "the run finished before it could be killed"
    done_before = _lines(out / "checkpoint.jsonl")
    assert 3 <= done_before < len(ids)

    assert cli_main(["rescan", "catalogue", "--index", str(index), "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err

    resumed = run_refrain("rescan", "catalogue", "--index", index, "--out", out, "--resume")
    assert resumed.returncode == 1, resumed.stderr  # the missing source is still a failed item
    assert "Traceback" not in resumed.stderr
    assert f"({done_before} from the interrupted run)" in resumed.stdout, resumed.stdout
    assert _outputs(out) == _outputs(reference)


def test_usage_errors_are_one_line_and_exit_2(planted, tmp_path, capsys):
    def run(*args, kind="catalogue") -> tuple[int, str]:
        try:
            code = cli_main(["rescan", kind, *map(str, args)])
        except SystemExit as exit_:  # argparse's own usage errors
            code = exit_.code
        return code, capsys.readouterr().err

    code, err = run("--index", planted[0], "--out", tmp_path / "x", "--resume")
    assert code == 2 and "no interrupted run" in err and "Traceback" not in err
    code, err = run("--index", planted[0], "--out", tmp_path / "x", "--dask", "nowhere")
    assert code == 2 and "tcp://" in err
    code, err = run("--index", tmp_path / "no-index", "--out", tmp_path / "y")
    assert code == 3 and "no Refrain index" in err
    code, err = run("--index", planted[0], "--out", tmp_path / "z", kind="uploads")
    assert code == 3 and "no service database" in err
    code, err = run("--index", planted[0], "--db", tmp_path / "db", "--since", "last week", "--out",
                    tmp_path / "z", kind="uploads")
    assert code == 2 and "--since" in err


def test_resume_refuses_another_jobs_folder(planted, uninterrupted, tmp_path):
    out = tmp_path / "other"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"job": "uploads", "arguments": {}, "keys": [], "run_id": "x",
                                              "started_at": "2026-01-01T00:00:00+00:00"}))
    (out / "checkpoint.jsonl").touch()
    with pytest.raises(RunUsageError, match="not `catalogue`"):
        rescan_catalogue(planted[0], out, RescanOptions(progress=False), resume=True)


# -- stored fingerprints ---------------------------------------------------------------------


def test_a_stored_fingerprint_round_trips_exactly(songs):
    params = FingerprintParams()
    y = soxr.resample(songs[41].excerpt(3.0, 20.0), SR, params.sample_rate)
    fp = fingerprint_signal(y, params)
    back = fingerprint_from_bytes(fingerprint_to_bytes(fp, params), params)
    assert back.duration == fp.duration
    for name in ("hashes", "frames"):
        assert np.array_equal(getattr(back, name), getattr(fp, name)) and \
            getattr(back, name).dtype == getattr(fp, name).dtype
    for part in ("peaks", "triplets"):
        for name, value in vars(getattr(fp, part)).items():
            assert np.array_equal(getattr(getattr(back, part), name), value), (part, name)
    assert len(fingerprint_to_bytes(fp, params)) < 20_000  # about 32 peaks a second, compressed


def test_a_stored_upload_keeps_the_dense_peak_positions_the_under_mix_tier_needs(songs):
    params = FingerprintParams()
    y = soxr.resample(songs[41].excerpt(3.0, 20.0), SR, params.sample_rate)
    fp = fingerprint_signal(y, params, dense_peaks=True)
    blob = fingerprint_to_bytes(fp, params)
    back = fingerprint_from_bytes(blob, params)
    assert np.array_equal(back.dense_peaks.frames, fp.dense_peaks.frames)
    assert np.array_equal(back.dense_peaks.bins, fp.dense_peaks.bins)
    assert fingerprint_from_bytes(fingerprint_to_bytes(fingerprint_signal(y, params), params), params) \
        .dense_peaks is None
    assert len(blob) < 30_000  # 20 s; the dense positions add about a quarter, compressed


def test_a_bad_or_foreign_fingerprint_blob_is_refused(songs):
    params = FingerprintParams()
    fp = fingerprint_signal(soxr.resample(songs[41].excerpt(0.0, 8.0), SR, params.sample_rate), params)
    with pytest.raises(FingerprintFormatError, match="not a stored fingerprint"):
        fingerprint_from_bytes(b"not a blob", params)
    with pytest.raises(FingerprintFormatError, match="other settings"):
        fingerprint_from_bytes(fingerprint_to_bytes(fp, params), FingerprintParams(bins_per_octave=24))


def test_a_published_upload_is_scanned_from_its_stored_fingerprint(songs, write_audio, tmp_path):
    """A published derivative enters the catalogue from its decision's stored fingerprint: no audio to decode."""
    works = tmp_path / "works"
    works.mkdir()
    with Refrain.open(tmp_path / "index", create=True) as refrain:
        parent = next(iter(refrain.ingest([write_audio(tmp_path / "song-41.flac", songs[41].samples)]))).track_id
        ids = {}
        for name, samples in (("dec_1", songs[41].excerpt(10.0, 14.0)), ("dec_2", songs[44].samples)):
            # As the service keeps an upload: decoded at the index's rate, a query's dense peaks, stored as bytes.
            upload = load_audio(write_audio(tmp_path / f"{name}.wav", samples), refrain.params.sample_rate)
            blob = fingerprint_to_bytes(fingerprint_signal(upload, refrain.params, dense_peaks=True), refrain.params)
            (works / f"{name}.fingerprint").write_bytes(blob)
            ids[name] = refrain.ingest_fingerprint(fingerprint_from_bytes(blob, refrain.params),
                                                   str(works / f"{name}.fingerprint"), name * 8).track_id
    (works / "dec_2.fingerprint").write_bytes(b"damaged")

    report = rescan_catalogue(tmp_path / "index", tmp_path / "scan", RescanOptions(progress=False))
    records = {r["item"]: r for r in report.run.records}
    assert records[ids["dec_1"]]["status"] == "ok"
    assert {frozenset(group["track_ids"]) for group in report.groups} == {frozenset({parent, ids["dec_1"]})}
    damaged = records[ids["dec_2"]]
    assert damaged["status"] == "failed" and "dec_2.fingerprint: not a stored fingerprint" in damaged["error"]

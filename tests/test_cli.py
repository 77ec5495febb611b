"""The ``refrain`` command line, run in-process as `refrain.cli.main` (a few tests start the real script)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from refrain.index import IndexStore

SR = 22050
MATCH_FIELDS = {"track_id", "source", "title", "artist", "isrc", "score", "aligned", "confidence", "chance",
                "query_start", "query_end", "ref_start", "ref_end", "offset", "time_ratio",
                "pitch_shift_semitones", "kind", "spans", "tier"}
SEEDS = (33, 41, 49)


def assert_clean_errors(stderr: str) -> None:
    """Library errors reach the user as `error: ...` lines, never as a traceback."""
    assert "Traceback" not in stderr, stderr


@pytest.fixture(scope="module")
def cli_index(tmp_path_factory, songs, run_refrain_process):
    """An index built by the installed `refrain ingest` script from a folder of three songs and one broken file."""
    root = tmp_path_factory.mktemp("cli")
    folder = root / "music"
    (folder / "sub").mkdir(parents=True)
    for n, seed in enumerate(SEEDS):
        target = folder / ("sub" if n == 0 else "") / songs[seed].path.name
        shutil.copyfile(songs[seed].path, target)
    (folder / "broken.mp3").write_text("not audio at all\n" * 20)
    (folder / "notes.txt").write_text("not an audio extension: never looked at\n")

    done = run_refrain_process("ingest", "--index", root / "index", folder)
    return root / "index", folder, done


def test_ingest_reports_the_bad_file_and_adds_the_others(cli_index):
    index, folder, done = cli_index
    assert done.returncode == 1, done.stderr
    assert_clean_errors(done.stderr)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(folder / "broken.mp3") in errors[0], done.stderr
    assert "not a readable audio file" in errors[0]
    assert re.search(r"\b3 added, 0 updated, 0 unchanged, 1 errors\b", done.stdout), done.stdout
    assert "index now 3 tracks" in done.stdout


def test_ingest_again_changes_nothing(cli_index, run_refrain):
    index, folder, _ = cli_index
    done = run_refrain("ingest", "--index", index, folder / "sub", *folder.glob("*.flac"),
                       *folder.glob("*.wav"))
    assert done.returncode == 0, done.stderr
    assert re.search(r"\b0 added, 0 updated, 3 unchanged, 0 errors\b", done.stdout), done.stdout


def test_match_json_gives_one_line_per_query(cli_index, songs, write_audio, tmp_path, run_refrain_process):
    index, folder, _ = cli_index
    sources = {seed: str(next(folder.rglob(songs[seed].path.name))) for seed in SEEDS}
    first = write_audio(tmp_path / "a.wav", songs[41].excerpt(9.0, 10.0))
    broken = tmp_path / "broken.mp3"
    broken.write_bytes(b"ID3" + bytes(500))
    second = write_audio(tmp_path / "b.flac", songs[33].excerpt(3.0, 10.0))
    in_folder = write_audio(tmp_path / "more" / "c.wav", songs[49].excerpt(20.0, 10.0))
    queries = [str(first), str(broken), str(second), str(tmp_path / "more")]

    done = run_refrain_process("match", "--index", index, "--json", *queries)
    assert done.returncode == 1, done.stderr
    assert_clean_errors(done.stderr)
    assert any(line.startswith("error: ") and str(broken) in line for line in done.stderr.splitlines())

    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["query"] for line in lines] == [str(first), str(broken), str(second), str(in_folder)]
    assert set(lines[1]) == {"query", "error"} and "not a readable audio file" in lines[1]["error"]
    for line, (seed, start) in zip([lines[0], lines[2], lines[3]], [(41, 9.0), (33, 3.0), (49, 20.0)]):
        assert set(line) == {"query", "duration", "matches"}
        assert line["duration"] == pytest.approx(10.0, abs=0.01)
        assert line["matches"], line
        top = line["matches"][0]
        assert set(top) == MATCH_FIELDS
        assert top["source"] == sources[seed]
        assert top["offset"] == pytest.approx(start, abs=0.1)
        assert isinstance(top["track_id"], int) and top["title"] is None


def test_match_prints_readable_results(cli_index, songs, write_audio, tmp_path, run_refrain):
    index, folder, _ = cli_index
    query = write_audio(tmp_path / "q.wav", songs[49].excerpt(12.0, 10.0))
    done = run_refrain("match", "--index", index, query)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"{query}  (10.0 s)"
    assert re.fullmatch(rf"  track \d+  {re.escape(str(folder / songs[49].path.name))}", lines[1])
    assert re.match(r"    excerpt  pair score [\d.]+ \(\d+ aligned\)  chance if unrelated \de-\d+  tempo ×1\.000  "
                    r"pitch [+-]0\.00 st", lines[2]), lines[2]
    assert re.search(r"query 0\.\d–(9\.\d|10\.0) s ↔ ref 12\.\d–(21\.\d|22\.0) s", lines[3]), lines[3]


def test_ingest_with_metadata_for_one_file(tmp_path, unrelated_songs, write_audio, run_refrain):
    song = write_audio(tmp_path / "master.flac", unrelated_songs[45])
    done = run_refrain("ingest", "--index", tmp_path / "idx", "--title", "Blue", "--artist",
                       "Nobody", "--isrc", "XX-000-26-00001", song)
    assert done.returncode == 0, done.stderr
    query = write_audio(tmp_path / "q.wav", unrelated_songs[45][4 * SR:14 * SR])
    line = json.loads(run_refrain("match", "--index", tmp_path / "idx", "--json", query).stdout)
    assert {k: line["matches"][0][k] for k in ("title", "artist", "isrc")} == \
        {"title": "Blue", "artist": "Nobody", "isrc": "XX-000-26-00001"}

    again = run_refrain("ingest", "--index", tmp_path / "idx", "--title", "T", song, query)
    assert again.returncode == 2
    assert "exactly one file" in again.stderr


def test_remove_unknown_track(cli_index, run_refrain):
    index = cli_index[0]
    done = run_refrain("remove", "--index", index, "9999")
    assert done.returncode == 1
    assert done.stderr == f"error: no track with id 9999 in {index}\n"
    assert done.stdout == ""


def test_remove_then_info(cli_index, tmp_path, run_refrain):
    index = tmp_path / "index"
    shutil.copytree(cli_index[0], index, ignore=shutil.ignore_patterns(".lock"))
    before = json.loads(run_refrain("info", "--index", index, "--json").stdout)
    with IndexStore.open(index) as store:
        track = min(store.catalog.ready_tracks().values(), key=lambda t: t.track_id)
    done = run_refrain("remove", "--index", index, track.track_id)
    assert done.returncode == 0, done.stderr
    assert f"removed track {track.track_id}: {track.source}" in done.stdout
    after = json.loads(run_refrain("info", "--index", index, "--json").stdout)
    assert after["tracks"] == before["tracks"] - 1
    assert after["landmarks"] == before["landmarks"] - track.n_landmarks


def test_info_json(cli_index, songs, run_refrain):
    index = cli_index[0]
    done = run_refrain("info", "--index", index, "--json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert set(info) == {"directory", "tracks", "hours", "landmarks", "bytes", "files", "melody_segments",
                         "upgradable", "proposals"}
    assert info["tracks"] == 3 and info["upgradable"] == [] and info["proposals"] is True
    seconds = sum(len(songs[seed].samples) / SR for seed in SEEDS)
    assert info["hours"] == pytest.approx(seconds / 3600, abs=1e-3)
    assert info["landmarks"] > 3 * 500
    assert "pairs.npz" in info["files"] and "manifest.json" in info["files"]
    assert info["bytes"] == sum(info["files"].values())

    text = run_refrain("info", "--index", index)
    assert text.returncode == 0
    assert re.search(r"^tracks\s+3$", text.stdout, re.M), text.stdout


def test_index_that_cannot_be_opened_exits_3(tmp_path, cli_index, songs, run_refrain):
    not_index = tmp_path / "photos"
    not_index.mkdir()
    (not_index / "cat.jpg").write_bytes(b"\xff\xd8")
    for args in (["info", "--index", not_index], ["match", "--index", not_index, songs[33].path],
                 ["ingest", "--index", not_index, songs[33].path],
                 ["remove", "--index", tmp_path / "missing", "1"]):
        done = run_refrain(*args)
        assert done.returncode == 3, (args, done.stderr)
        assert_clean_errors(done.stderr)
        assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr

    with IndexStore.open(cli_index[0], writable=True):  # another writer holds the lock
        done = run_refrain("ingest", "--index", cli_index[0], songs[30].path)
    assert done.returncode == 3
    assert "another process is writing" in done.stderr
    assert_clean_errors(done.stderr)


def test_damaged_index_exits_3(tmp_path, cli_index, run_refrain):
    index = tmp_path / "index"
    shutil.copytree(cli_index[0], index, ignore=shutil.ignore_patterns(".lock"))
    (index / "pairs.npz").write_bytes(b"\0" * 100)
    done = run_refrain("info", "--index", index)
    assert done.returncode == 3
    assert_clean_errors(done.stderr)
    assert done.stderr.startswith(f"error: {index}: cannot open the index")


def test_usage_errors_exit_2_and_help_documents_exit_codes(run_refrain):
    assert run_refrain("match", "x.mp3").returncode == 2  # no --index
    assert run_refrain("frobnicate").returncode == 2
    assert run_refrain("ingest", "--index", "i", "--jobs", "0", "x.wav").returncode == 2
    assert run_refrain("remove", "--index", "i", "seven").returncode == 2
    help_text = run_refrain("--help").stdout
    for code in ("0", "1", "2", "3"):
        assert re.search(rf"^\s+{code}\s+\S", help_text, re.M), help_text


def parse_human_output(text: str) -> dict[str, list[str]]:
    """Query line (up to the duration) -> the lines printed under it."""
    blocks: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        match = re.fullmatch(r"(\S.*)  \(\d+\.\d s\)", line)
        if match:
            current = blocks.setdefault(match.group(1), [])
        elif current is not None and line.startswith("  "):
            current.append(line.strip())
        else:
            current = None
    return blocks


@pytest.mark.slow
def test_demo_matches_each_sample_query(run_refrain, tmp_path):
    manifest = json.loads((Path(__file__).resolve().parents[1] / "sample_audio" /
                           "manifest.json").read_text())
    done = run_refrain("demo", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert_clean_errors(done.stderr)
    blocks = parse_human_output(done.stdout)
    assert sorted(blocks) == sorted(q["file"] for q in manifest["queries"]), done.stdout
    for query in manifest["queries"]:
        lines = blocks[query["file"]]
        if not query["expected"]:
            assert lines == ["no match"], (query["file"], lines)
            continue
        reported = [line for line in lines if line.startswith("track ")]
        for expected in query["expected"]:
            assert any(line.endswith(f"/{expected['track']}.ogg") for line in reported), \
                (query["file"], lines)
    index = re.search(r"^Indexing .* into (.+)$", done.stdout, re.M).group(1)
    assert not Path(index).parent.exists(), "the temporary index was not removed"
    assert list(tmp_path.iterdir()) == []  # nothing written to the working directory


@pytest.mark.slow
def test_demo_keeps_the_index_it_is_given(run_refrain, tmp_path):
    done = run_refrain("demo", "--index", tmp_path / "demo-index")
    assert done.returncode == 0, done.stderr
    info = json.loads(run_refrain("info", "--index", tmp_path / "demo-index", "--json").stdout)
    assert info["tracks"] == 4


def test_a_folder_without_audio_is_an_error(cli_index, tmp_path, run_refrain):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no audio here")
    done = run_refrain("match", "--index", cli_index[0], "--json", tmp_path / "empty")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == f"error: {tmp_path / 'empty'}: no audio files in this folder\n"


def test_upgrade_brings_an_old_index_up_to_date_once(pre_mix_index, run_refrain):
    info = run_refrain("info", "--index", pre_mix_index)
    assert info.returncode == 0 and "refrain upgrade --index" in info.stdout
    info = json.loads(run_refrain("info", "--index", pre_mix_index, "--json").stdout)
    assert info["upgradable"] == ["pair", "triplet"]
    done = run_refrain("upgrade", "--index", pre_mix_index)
    assert done.returncode == 0, done.stderr
    assert "upgraded the pair and triplet tiers" in done.stdout
    again = run_refrain("upgrade", "--index", pre_mix_index)
    assert again.returncode == 0 and "already current" in again.stdout
    assert "refrain upgrade" not in run_refrain("info", "--index", pre_mix_index).stdout
    missing = run_refrain("upgrade", "--index", pre_mix_index / "nowhere")
    assert missing.returncode == 3 and "no Refrain index here" in missing.stderr
    assert_clean_errors(missing.stderr)


def test_tracks_list_and_show_one_record(cli_index, run_refrain):
    index = cli_index[0]
    listed = run_refrain("tracks", "list", "--index", index, "--json")
    assert listed.returncode == 0, listed.stderr
    records = [json.loads(line) for line in listed.stdout.splitlines()]
    assert len(records) == 3 and [r["track_id"] for r in records] == sorted(r["track_id"] for r in records)
    assert run_refrain("tracks", "list", "--index", index).stderr == "3 tracks\n"
    shown = run_refrain("tracks", "show", "--index", index, records[1]["track_id"], "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == records[1]
    text = run_refrain("tracks", "show", "--index", index, records[1]["track_id"])
    assert re.search(rf"^source\s+{re.escape(records[1]['source'])}$", text.stdout, re.M), text.stdout
    missing = run_refrain("tracks", "show", "--index", index, 9999)
    assert missing.returncode == 1 and missing.stderr == f"error: no track with id 9999 in {index}\n"

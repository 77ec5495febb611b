"""End to end on the bundled ``sample_audio/``: every query gives what ``manifest.json`` expects."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from refrain.api import Refrain

SAMPLES = Path(__file__).resolve().parents[1] / "sample_audio"
MANIFEST = json.loads((SAMPLES / "manifest.json").read_text())


@pytest.fixture(scope="module")
def sample_index(tmp_path_factory):
    directory = tmp_path_factory.mktemp("samples") / "index"
    with Refrain.open(directory, create=True) as refrain:
        results = list(refrain.ingest([SAMPLES / "catalogue"], jobs=2))
    assert sorted((Path(r.path).name, r.status) for r in results) == \
        sorted((Path(t["file"]).name, "added") for t in MANIFEST["catalogue"])
    with Refrain.open(directory, mmap=True) as refrain:
        yield refrain


@pytest.mark.parametrize("query", MANIFEST["queries"], ids=lambda q: Path(q["file"]).stem)
def test_sample_query_matches_the_manifest(sample_index, query):
    result = sample_index.match_file(SAMPLES / query["file"])
    assert result.duration == pytest.approx(query["duration"], abs=0.01)
    found = {Path(m.source).stem: m for m in result.matches}
    assert sorted(found) == sorted(e["track"] for e in query["expected"]), result.matches
    for expected in query["expected"]:
        m = found[expected["track"]]
        # Offsets are sample-exact in the manifest; the landmark tiers resolve one 32 ms
        # frame, the melody tier (a cover) one 256 ms chroma frame, and its spans end on a
        # 16.4 s segment laid every 4.1 s.
        cover = expected.get("kind") == "cover"
        span_tolerance, offset_tolerance = (4.5, 0.3) if cover else (1.0, 0.1)
        assert m.query_start == pytest.approx(expected["query_start"], abs=span_tolerance), m
        assert m.query_end == pytest.approx(expected["query_end"], abs=span_tolerance), m
        # The time line is ref = offset + time_ratio * query.
        ratio = expected["time_ratio"]
        true_offset = expected["reference_start"] - ratio * expected["query_start"]
        assert m.time_ratio == pytest.approx(ratio, rel=0.01), m
        assert m.pitch_shift_semitones == pytest.approx(expected["pitch_shift_semitones"], abs=0.25), m
        assert m.offset == pytest.approx(true_offset, abs=offset_tolerance), m
        assert m.ref_start == pytest.approx(true_offset + ratio * m.query_start, abs=offset_tolerance + 0.05), m
        if "kind" in expected:
            assert m.kind == expected["kind"], m

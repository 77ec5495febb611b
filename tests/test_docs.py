"""The documentation stays in step with the code: the README's match-field table, its length, the bench scripts
and the links the docs name."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from refrain.api import TrackMatch

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_README_LINES = 250

_ROW = re.compile(r"^\| `(?P<name>\w+)` \| (?P<doc>.*) \|$")
_LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")


def match_field_rows(text: str) -> list[tuple[str, str]]:
    """(field, meaning) of each row between the README's ``match-fields`` markers."""
    start, end = "<!-- match-fields -->", "<!-- /match-fields -->"
    assert text.count(start) == 1 and text.count(end) == 1, "the README needs one match-fields block"
    block = text.split(start, 1)[1].split(end, 1)[0].strip().splitlines()
    assert block[:2] == ["| field | meaning |", "|---|---|"], "the block starts with the table's header"
    rows = []
    for line in block[2:]:
        row = _ROW.match(line)
        assert row, f"not a `| `field` | meaning |` row: {line!r}"
        rows.append((row["name"], row["doc"]))
    return rows


def heading_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    anchors = set()
    for line in markdown.splitlines():
        heading = re.match(r"^#{1,6} (.+)$", line)
        if heading:
            text = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


def test_readme_match_fields_are_the_match_record():
    expected = [(f.name, f.metadata["doc"]) for f in fields(TrackMatch) if f.name != "points"]
    assert match_field_rows(README.read_text(encoding="utf-8")) == expected


def test_match_field_rows_reject_a_drifted_table():
    table = ("<!-- match-fields -->\n| field | meaning |\n|---|---|\n| `track_id` | The catalogue track |\n"
             "<!-- /match-fields -->")
    assert match_field_rows(table) == [("track_id", "The catalogue track")]
    expected = [(f.name, f.metadata["doc"]) for f in fields(TrackMatch) if f.name != "points"]
    assert match_field_rows(table) != expected
    with pytest.raises(AssertionError):
        match_field_rows(table.replace("| `track_id` |", "| track_id |"))


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; keep it to {MAX_README_LINES}"


def test_every_bench_script_named_in_benchmarks_exists():
    named = set(re.findall(r"bench/[\w-]+\.py", (DOCS / "benchmarks.md").read_text(encoding="utf-8")))
    assert named, "docs/benchmarks.md names no bench script"
    missing = sorted(name for name in named if not (ROOT / name).is_file())
    assert not missing, f"docs/benchmarks.md names scripts that do not exist: {missing}"


@pytest.mark.parametrize("page", ["README.md", "docs/design.md", "docs/benchmarks.md"])
def test_relative_links_resolve(page):
    source = ROOT / page
    broken = []
    for target in _LINK.findall(source.read_text(encoding="utf-8")):
        if re.match(r"^[a-z]+:", target):
            continue  # an external address
        path, _, anchor = target.partition("#")
        linked = (source.parent / path).resolve() if path else source
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked.read_text(encoding="utf-8")):
            broken.append(target)
    assert not broken, f"{page} links to missing files or headings: {broken}"

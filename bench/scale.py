"""How Refrain's query cost, memory and index size grow with the catalogue.

    python bench/scale.py ~/.cache/refrain-music --hours 10 40 160 --json scale.json
    python bench/scale.py ~/.cache/refrain-music --hours 10 40 160 640 --workdir /tmp/refrain-scale
    python bench/scale.py ~/.cache/refrain-music --hours 640 --keep --workdir /tmp/scale640 --grow-only
    python bench/scale.py ~/.cache/refrain-music --reuse --workdir /tmp/scale640 --json after.json

Grows one index honestly, through the store's own API (``IndexStore.add_track`` /
``commit``): first the real catalogue (the first ``--catalogue`` tracks of the
corpus, split and shuffled as in bench/accuracy.py), then, up to each size of
``--hours``, synthetic tracks under fresh track ids, made as ``--growth`` says
(bench/growth_model.py, which also checks both ways against real music). By default a
synthetic track is a *mashup*: the peaks of two real templates, each played backwards
at a random tempo, the second a few dB under the first, merged as one analysis would
keep them, and every tier hashed from those peaks by the library. Its codes are as new
or as common as real music's: of a new half of the corpus, ~75 % of the quad and double
entries carry a code the other half lacks, and mashups grown from one half show the
same (the scale study's *relabel* model maps every code onto a real one: 0 %). Played
backwards, no tier can take one for a real recording; its chroma is played backwards
with the pitch classes permuted (not rotated), so the melody tier cannot either.

Queries are real: 10 s excerpts of catalogue tracks (clean, pink noise 0 dB, speed
1.1x, mixed 6 dB under held-out music) and 30 s clean excerpts, plus held-out
negatives (10 s and 30 s); each is fingerprinted once and matched at every size with
``Refrain.match_fingerprint`` on the index opened read-only and memory-mapped, in a
fresh process per size (so its peak RSS is the matching process's own). Prints per
size: index hits per 10 s query by tier (and which codes make them: hits by the
length of the code's list), 10 s and 30 s query CPU (``time.process_time``, the
primary figure on a shared machine) and wall p50/p99, RSS after open and peak, bytes
per catalogue hour by file, ingest rate, commit time, the real queries' top-1 hit
rate per condition and their false matches (negatives matching anything unrelated,
and any query matching a synthetic track). ``--json OUT`` writes the same figures.

Fingerprinting is excluded from query times (5-8 ms per 10 s query). Indexes are
written under ``--workdir`` and deleted at the end unless ``--keep``. A kept index
(its queries and what the growth recorded are kept beside it) is measured again
without re-growing it with ``--reuse``: another build of the matcher, or other search
settings, on the same index and queries. ``--grow-only`` grows and keeps the index
without measuring it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import pickle
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import faiss
import numpy as np
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.accuracy import (BOUNDED_CHOICES, CONDITIONS, SOURCE_RATE, add_bounded_arguments,  # noqa: E402
                            bench_config, list_tracks, proposal_setting, related_groups)
from bench.fresh import status_mb  # noqa: E402
from bench.derivatives import DERIVATIVES, derive, excerpt, mix_under  # noqa: E402
from bench.growth_model import GROWTH_MODELS, code_strata, mashup_track, relabelled_track  # noqa: E402
from refrain.api import Refrain, file_digest  # noqa: E402
from refrain.config import Config  # noqa: E402
from refrain.fingerprint import (AudioDecodeError, Fingerprint, FingerprintError, fingerprint_file,  # noqa: E402
                                 fingerprint_signal, load_audio)
from refrain.index import IndexStore  # noqa: E402
from refrain.index.landmarks import LandmarkIndex, slice_positions  # noqa: E402
from refrain.tuning import tune_process  # noqa: E402

SHORT_CONDITIONS = ("clean_10s", "pink_0dB", "speed_1.1", "mixed_-6dB")
LONG_CONDITION = "clean_30s"
NEGATIVE_CONDITIONS = ("negative_10s", "negative_30s")
# Hits grouped by the length of the list (entries under the code) that produced them.
LIST_LENGTH_EDGES = (10, 30, 100, 300, 1_000, 3_000, 10_000, 30_000)
# Beside a kept index (``--keep``): what its growth recorded, for ``--reuse``.
GROWTH_RECORD = "growth.json"


# -- queries -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Query:
    """A fingerprinted query and its ground truth (track id None for a negative), and the music it is mixed under."""

    condition: str
    source: str
    track_id: int | None
    fingerprint: Fingerprint
    background: str | None = None


def build_queries(catalogue: dict[str, int], negatives: list[Path], per_condition: int, long_queries: int,
                  params, rng: np.random.Generator) -> list[Query]:
    """Fingerprint each query once.

    ``per_condition`` catalogue tracks give a 10 s query per condition of
    :data:`SHORT_CONDITIONS`, the first ``long_queries`` of them also a 30 s one; every
    negative gives a 10 s query, the first ``long_queries`` also a 30 s one.
    """
    def fingerprinted(x: np.ndarray) -> Fingerprint | None:
        y = soxr.resample(x, SOURCE_RATE, params.sample_rate, quality="HQ").astype(np.float32)
        try:
            return fingerprint_signal(y, params, dense_peaks=True)
        except FingerprintError:  # a silent stretch: nothing to match
            return None

    backgrounds = [load_audio(path, SOURCE_RATE) for path in negatives]
    queries = []
    paths = sorted(catalogue)
    chosen = [paths[i] for i in rng.permutation(len(paths))[:per_condition]]
    for number, source in enumerate(chosen):
        y = load_audio(source, SOURCE_RATE)
        made = {}
        for condition in SHORT_CONDITIONS:
            if condition in CONDITIONS:
                cut = excerpt(Path(source), y, CONDITIONS[condition][0], rng)
                made[condition] = CONDITIONS[condition][1](cut.samples, rng, None)
            elif condition == "mixed_-6dB":
                background = backgrounds[number % len(backgrounds)]
                start = rng.uniform(0, max(0.0, len(background) / SOURCE_RATE - 10.0))
                cut = background[int(start * SOURCE_RATE):int((start + 10.0) * SOURCE_RATE)]
                made[condition] = mix_under(excerpt(Path(source), y, 10.0, rng).samples, cut, -6.0)
            else:
                made[condition] = derive(Path(source), y, DERIVATIVES[condition], rng)[0]
        if number < long_queries:
            made[LONG_CONDITION] = excerpt(Path(source), y, 30.0, rng).samples
        for condition, x in made.items():
            fp = fingerprinted(x)
            if fp is not None:
                background_source = str(negatives[number % len(negatives)]) if condition == "mixed_-6dB" else None
                queries.append(Query(condition, source, catalogue[source], fp, background_source))
    for number, (path, y) in enumerate(zip(negatives, backgrounds)):
        for condition, seconds in zip(NEGATIVE_CONDITIONS[:2 if number < long_queries else 1], (10.0, 30.0)):
            fp = fingerprinted(excerpt(path, y, seconds, rng).samples)
            if fp is not None:
                queries.append(Query(condition, str(path), None, fp))
    return queries


# -- measuring one size ------------------------------------------------------------------------

class CountingLandmarks:
    """A landmark tier that counts what the matcher looks up in it, and which lists the hits come from.

    ``true_track`` (set before each query) is the query's own track: its hits are
    counted apart, by the length of the list they came from, to show which codes
    carry the evidence and which only chance agreement.
    """

    def __init__(self, tier: LandmarkIndex):
        self._tier = tier
        self.true_track = None
        self.reset()

    def reset(self) -> None:
        self.codes_asked = self.codes_looked_up = self.hits = 0
        self.hits_by_list_length = np.zeros(len(LIST_LENGTH_EDGES) + 1, np.int64)
        self.true_hits_by_list_length = np.zeros(len(LIST_LENGTH_EDGES) + 1, np.int64)
        self._asked: set[bytes] = set()

    def __getattr__(self, name):
        return getattr(self._tier, name)

    def code_counts(self, hashes):
        self.codes_asked += len(hashes)
        return self._tier.code_counts(hashes)

    def lookup_slices(self, hashes, tracks=None):
        first_hit, hits_per_code, labels = self._tier.lookup_slices(hashes, tracks)
        # The pair tier reads most batches of its codes twice (matcher.pair.group_pair_hits): their hits count once.
        asked = np.asarray(hashes).tobytes() + (b"" if tracks is None else b"|" + np.asarray(tracks).tobytes())
        if asked not in self._asked:
            self._asked.add(asked)
            self._count(first_hit, hits_per_code, labels)
        return first_hit, hits_per_code, labels

    def lookup_rarest(self, hashes, max_hits):
        chosen, first_hit, hits_per_code, labels = self._tier.lookup_rarest(hashes, max_hits)
        self.codes_asked += len(hashes)
        # A code chosen more than once shares its slice, read once: count each slice once.
        _, distinct = np.unique(first_hit, return_index=True)
        self._count(first_hit[distinct], hits_per_code[distinct], labels)
        return chosen, first_hit, hits_per_code, labels

    def _count(self, first_hit, hits_per_code, labels) -> None:
        self.codes_looked_up += len(hits_per_code)
        self.hits += int(hits_per_code.sum())
        buckets = np.searchsorted(LIST_LENGTH_EDGES, hits_per_code, side="right")
        self.hits_by_list_length += np.bincount(buckets, weights=hits_per_code,
                                                minlength=len(LIST_LENGTH_EDGES) + 1).astype(np.int64)
        if self.true_track is not None and len(labels):
            # Each code's hits are one slice of labels: the code of every hit.
            code_of_hit = np.repeat(np.arange(len(hits_per_code)), hits_per_code)
            own = (labels[slice_positions(first_hit, hits_per_code)] >> self._tier.payload_bits) == self.true_track
            self.true_hits_by_list_length += np.bincount(buckets[code_of_hit[own]],
                                                         minlength=len(LIST_LENGTH_EDGES) + 1)


class CountingPeaks:
    """The peak store, counting the stored peaks the under-mix tier reads."""

    def __init__(self, store):
        self._store = store
        self.reset()

    def reset(self) -> None:
        self.candidates = self.peaks_read = 0

    def __getattr__(self, name):
        return getattr(self._store, name)

    def peaks_between(self, track_id, first_frame, end_frame):
        frames, bins = self._store.peaks_between(track_id, first_frame, end_frame)
        self.candidates += 1
        self.peaks_read += len(frames)
        return frames, bins


class CountingMelody:
    """The melody tier, counting descriptor comparisons and verified candidates."""

    def __init__(self, index):
        self._index = index
        self.reset()

    def reset(self) -> None:
        self.comparisons = self.chroma_reads = 0

    def __getattr__(self, name):
        return getattr(self._index, name)

    def search(self, descriptors, k, nprobe=1):
        # An IVF compares with every list centroid, then with the entries of the lists probed.
        compared = faiss.cvar.indexIVF_stats.ndis
        found = self._index.search(descriptors, k, nprobe)
        self.comparisons += (len(descriptors) * self._index.lists + faiss.cvar.indexIVF_stats.ndis - compared
                             if self._index.lists else len(descriptors) * self._index.ntotal)
        return found

    def chroma(self, track_id):
        self.chroma_reads += 1
        return self._index.chroma(track_id)


class TierCosts:
    """Each tier's CPU time and peak memory per query, measured around its ``find`` (while patched in).

    The tiers' classes are patched, not wrapped, so that the matcher still recognises
    them. ``VmHWM`` is read and reset (``/proc/self/clear_refs``) as each tier starts and
    read as it ends: a tier's figure is the peak above the resident memory it started
    with, and ``peak_mb`` the process's peak over everything, resets included.
    """

    def __init__(self, tiers):
        self._classes = {type(tier) for tier in tiers}
        self._saved = {}
        self.peak_mb = 0.0
        self.reset()

    def reset(self) -> None:
        self.cpu_s: dict[str, float] = {}
        self.rise_mb: dict[str, float] = {}

    def __enter__(self):
        for cls in self._classes:
            self._saved[cls] = cls.find
            setattr(cls, "find", self._measured(cls.find))
        return self

    def __exit__(self, *exc):
        for cls, find in self._saved.items():
            setattr(cls, "find", find)

    def _measured(self, find):
        def measured_find(tier, query, catalogue, skip):
            self.peak_mb = max(self.peak_mb, status_mb("VmHWM"))
            Path("/proc/self/clear_refs").write_text("5")
            start_mb, cpu = status_mb(), time.process_time()
            try:
                return find(tier, query, catalogue, skip)
            finally:
                self.cpu_s[tier.name] = self.cpu_s.get(tier.name, 0.0) + time.process_time() - cpu
                peak = status_mb("VmHWM")
                self.peak_mb = max(self.peak_mb, peak)
                self.rise_mb[tier.name] = max(self.rise_mb.get(tier.name, 0.0), peak - start_mb)
        return measured_find


def measure(index_dir: str, queries_file: str, bounded: str = "none",
            proposal_settings: Sequence[tuple[str, object]] = (), count_reads: bool = True) -> dict:
    """Match every query on the index (run in a fresh process); per-query figures and outcomes.

    ``bounded``, ``proposal_settings``: which tiers search through proposals at every size,
    and with which settings (:func:`bench.accuracy.bench_config`). ``count_reads``: match
    every query a second time through counting tiers (what each reads); without it,
    ``reads`` is empty.
    """
    tune_process()
    queries: list[Query] = pickle.loads(Path(queries_file).read_bytes())
    with Refrain.open(index_dir, bench_config(bounded, proposal_settings), mmap=True) as refrain:
        rss_open = status_mb()
        # Kernels and catalogue rows, warmed by one query of each condition: a kernel only some conditions reach
        # (numba compiles it on first use, and again after its module's source changed) would otherwise be
        # compiled inside one timed query, which a p99 shows.
        first_of_each: dict[str, Query] = {}
        for query in queries:
            first_of_each.setdefault(query.condition, query)
        for query in first_of_each.values():
            refrain.match_fingerprint(query.fingerprint, "warm-up")
        timed, tier_costs = [], []
        with TierCosts(refrain.config.match.tiers) as tiers:
            for query in queries:
                tiers.reset()
                wall, cpu = time.perf_counter(), time.process_time()
                result = refrain.match_fingerprint(query.fingerprint, query.source)
                timed.append((time.process_time() - cpu, time.perf_counter() - wall,
                              [(m.track_id, m.kind) for m in result.matches]))
                tier_costs.append({"cpu_s": tiers.cpu_s, "rise_mb": tiers.rise_mb})
        rss_after_queries, peak = status_mb(), max(tiers.peak_mb, status_mb("VmHWM"))
        # A second pass through counting tiers: what each 10 s and 30 s query reads.
        counters = {name: CountingLandmarks(tier) for name, tier in refrain.store.tiers.items()
                    if isinstance(tier, LandmarkIndex)}
        if "peaks" in refrain.store.tiers:
            counters["layer"] = CountingPeaks(refrain.store.tiers["peaks"])
        if refrain.store.melody is not None:
            counters["melody"] = CountingMelody(refrain.store.melody)
        refrain.store.tiers.update({("peaks" if name == "layer" else name): counter
                                    for name, counter in counters.items()})
        reads = []
        for query in queries if count_reads else []:
            for counter in counters.values():
                counter.reset()
                if isinstance(counter, CountingLandmarks):
                    counter.true_track = query.track_id
            refrain.match_fingerprint(query.fingerprint, query.source)
            row = {}
            for name, counter in counters.items():
                if isinstance(counter, CountingLandmarks):
                    row[name] = {"codes_asked": counter.codes_asked, "codes_looked_up": counter.codes_looked_up,
                                 "hits": counter.hits,
                                 "hits_by_list_length": counter.hits_by_list_length.tolist(),
                                 "true_hits_by_list_length": counter.true_hits_by_list_length.tolist()}
                elif isinstance(counter, CountingPeaks):
                    row[name] = {"candidates": counter.candidates, "peaks_read": counter.peaks_read}
                else:
                    row[name] = {"comparisons": counter.comparisons, "chroma_reads": counter.chroma_reads}
            reads.append(row)
    return {"timed": timed, "reads": reads, "rss_open_mb": rss_open, "rss_after_queries_mb": rss_after_queries,
            "rss_peak_mb": peak, "tier_costs": tier_costs}


def percentile(values, q) -> float | None:
    return round(float(np.percentile(values, q)), 2) if len(values) else None


def summarize(hours: float, queries: list[Query], measured: dict, real_ids: set[int], groups: dict[str, str],
              sources: dict[int, str], index_bytes: dict[str, int], made_from: dict[int, list[str]]) -> dict:
    """The figures of one size from the measuring process's raw results.

    A match on a synthetic track made from the query's own recording, the music it is
    mixed under, or one sharing material with either (``made_from``) is counted apart,
    not as false: played backwards, a drone or a held chord is still itself, and the
    tiers rightly find it.
    """
    def group_of(source: str) -> str:
        return groups.get(Path(source).name, str(source))

    rows = {"hours": round(hours, 2)}
    short = [i for i, q in enumerate(queries) if q.condition in SHORT_CONDITIONS + ("negative_10s",)]
    long = [i for i, q in enumerate(queries) if q.condition in (LONG_CONDITION, "negative_30s")]
    timed, reads = measured["timed"], measured["reads"]
    for label, chosen in (("query10", short), ("query30", long)):
        cpu = [timed[i][0] * 1000 for i in chosen]
        wall = [timed[i][1] * 1000 for i in chosen]
        rows.update({f"{label}_cpu_ms_p50": percentile(cpu, 50), f"{label}_cpu_ms_p99": percentile(cpu, 99),
                     f"{label}_wall_ms_p50": percentile(wall, 50), f"{label}_wall_ms_p99": percentile(wall, 99)})
    costs = measured["tier_costs"]
    rows["tiers"] = {name: {
        "query10_cpu_ms_p50": percentile([1000 * costs[i]["cpu_s"].get(name, 0.0) for i in short], 50),
        "query30_cpu_ms_p50": percentile([1000 * costs[i]["cpu_s"].get(name, 0.0) for i in long], 50),
        # The most a tier's memory rose above what the process held as it started, over all queries.
        "rss_rise_mb_max": round(max(cost["rise_mb"].get(name, 0.0) for cost in costs), 1)}
        for name in costs[0]["cpu_s"]}
    rows["rss_mb"] = round(measured["rss_peak_mb"], 1)
    rows["rss_open_mb"] = round(measured["rss_open_mb"], 1)
    total_bytes = sum(index_bytes.values())
    rows["index_bytes"] = total_bytes
    # rss_mb is in MiB (as /proc reports kB); the bound is on bytes: index bytes + 400 MB.
    rows["rss_over_index_mb"] = round(measured["rss_peak_mb"] * 1.048576 - total_bytes / 1e6, 1)
    rows["bytes_per_hour"] = round(total_bytes / hours)
    rows["bytes_per_hour_by_file"] = {name: round(size / hours) for name, size in sorted(index_bytes.items())}
    if reads:  # the counting pass ran (not --no-reads)
        landmark_tiers = [name for name in reads[0] if "hits" in reads[0][name]]
        hits10 = [sum(reads[i][name]["hits"] for name in landmark_tiers) for i in short]
        rows["hits_per_query_p50"] = percentile(hits10, 50)
        rows["hits_per_query_p99"] = percentile(hits10, 99)
        rows["hits_per_catalogue_hour_p50"] = round(rows["hits_per_query_p50"] / hours)
        breakdown = {}
        for name in reads[0]:
            per_query = [reads[i][name] for i in short]
            if name in landmark_tiers:
                by_length = np.sum([r["hits_by_list_length"] for r in per_query], axis=0)
                own = [r["true_hits_by_list_length"] for r, i in zip(per_query, short)
                       if queries[i].track_id is not None]
                true_by_length = np.sum(own, axis=0)
                labels = [f"<{LIST_LENGTH_EDGES[0]}"] + [f"{lo}-{hi}" for lo, hi in
                                                        zip(LIST_LENGTH_EDGES[:-1], LIST_LENGTH_EDGES[1:])] \
                    + [f">={LIST_LENGTH_EDGES[-1]}"]
                breakdown[name] = {
                    "hits_p50": percentile([r["hits"] for r in per_query], 50),
                    "hits_mean": round(float(np.mean([r["hits"] for r in per_query]))),
                    "codes_asked_mean": round(float(np.mean([r["codes_asked"] for r in per_query]))),
                    "codes_looked_up_mean": round(float(np.mean([r["codes_looked_up"] for r in per_query]))),
                    "share_of_hits_by_list_length": {label: round(float(v / max(by_length.sum(), 1)), 4)
                                                     for label, v in zip(labels, by_length)},
                    # Of the catalogue queries' hits on their own track (true and chance alike).
                    "own_track_hits_mean": round(float(true_by_length.sum() / max(len(own), 1)), 1),
                    "share_of_own_track_hits_by_list_length": {
                        label: round(float(v / max(true_by_length.sum(), 1)), 4)
                        for label, v in zip(labels, true_by_length)}}
            elif name == "layer":
                breakdown[name] = {"candidates_mean": round(float(np.mean([r["candidates"] for r in per_query])), 1),
                                   "peaks_read_mean": round(float(np.mean([r["peaks_read"] for r in per_query])))}
        if "melody" in reads[0]:
            per_query = [reads[i]["melody"] for i in long]
            breakdown["melody"] = {"comparisons_per_30s_query_mean": round(float(np.mean(
                [r["comparisons"] for r in per_query]))), "verified_candidates_mean": round(float(np.mean(
                    [r["chroma_reads"] for r in per_query])), 1)}
        total_mean = sum(breakdown[name]["hits_mean"] for name in landmark_tiers) or 1
        for name in landmark_tiers:
            breakdown[name]["share_of_hits"] = round(breakdown[name]["hits_mean"] / total_mean, 3)
        rows["hits_by_tier"] = breakdown

    top1, false_matches, synthetic_matches, template_matches = {}, [], [], []
    for query, (_, _, matched) in zip(queries, timed):
        if query.track_id is not None:
            top1.setdefault(query.condition, []).append(bool(matched) and matched[0][0] == query.track_id)
        for track_id, kind in matched:
            if track_id not in real_ids:
                found = (f"{query.condition}: {Path(query.source).name} -> synthetic {track_id} ({kind}, made from "
                         f"{' + '.join(Path(made).name for made in made_from.get(track_id, []))})")
                # Queries pickled before the background was recorded have no such attribute.
                heard = [query.source] + [source for source in [getattr(query, "background", None)] if source]
                if any(group_of(made) == group_of(source) for made in made_from.get(track_id, []) for source in heard):
                    template_matches.append(found)
                else:
                    synthetic_matches.append(found)
            elif query.track_id is None and group_of(query.source) != group_of(sources[track_id]):
                false_matches.append(f"{query.condition}: {Path(query.source).name} -> "
                                     f"{Path(sources[track_id]).name} ({kind})")
    rows["top1"] = {condition: round(100 * float(np.mean(hits)), 1) for condition, hits in top1.items()}
    rows["queries"] = {condition: sum(q.condition == condition for q in queries)
                       for condition in SHORT_CONDITIONS + (LONG_CONDITION,) + NEGATIVE_CONDITIONS}
    rows["false_matches"] = len(false_matches) + len(synthetic_matches)
    rows["false_match_details"] = false_matches + synthetic_matches
    rows["template_matches"] = len(template_matches)
    rows["template_match_details"] = template_matches
    return rows


# -- the run -----------------------------------------------------------------------------------

def search_variant(text: str) -> tuple[str, list[tuple[str, object]]]:
    """``--also BOUNDED[,NAME=VALUE...]``: a ``--bounded`` choice and ``--proposal`` settings."""
    bounded, *settings = text.split(",")
    if bounded not in BOUNDED_CHOICES:
        raise argparse.ArgumentTypeError(f"{bounded!r} is not one of {', '.join(BOUNDED_CHOICES)}")
    return bounded, [proposal_setting(setting) for setting in settings]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("music", type=Path)
    parser.add_argument("--hours", type=float, nargs="+", default=[10, 40, 160],
                        help="catalogue sizes to measure, ascending (default 10 40 160; add 640 for the full study)")
    parser.add_argument("--catalogue", type=int, default=164, help="real catalogue tracks (default 164)")
    parser.add_argument("--negatives", type=int, default=50, help="held-out tracks (default 50)")
    parser.add_argument("--queries", type=int, default=40, help="catalogue tracks queried per condition (default 40)")
    parser.add_argument("--long-queries", type=int, default=20,
                        help="catalogue and held-out tracks also queried for 30 s (default 20)")
    parser.add_argument("--commit-every-hours", type=float, default=40.0,
                        help="while growing, commit every this many added hours (default 40): bounds "
                             "the writer's memory for entries not yet merged")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--growth", choices=GROWTH_MODELS, default="mashup",
                        help="how synthetic catalogue hours are made (bench/growth_model.py; default mashup: new "
                             "peaks from two real tracks, every tier hashed from them; relabel: the scale study's "
                             "relabelled copies, which hold no code outside the real corpus)")
    add_bounded_arguments(parser)
    parser.add_argument("--also", type=search_variant, action="append", default=[],
                        metavar="BOUNDED[,NAME=VALUE...]",
                        help="also measure every size with these settings (--bounded, then --proposal fields), "
                             "on the same index and queries, e.g. copies,copy_max_candidates=256 (repeatable)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/refrain-scale"))
    parser.add_argument("--keep", action="store_true", help="keep the index under --workdir")
    parser.add_argument("--no-reads", action="store_true",
                        help="skip the second pass that counts what each query reads (hits per tier): "
                             "halves a measurement")
    parser.add_argument("--grow-only", action="store_true",
                        help="grow the index to the last size of --hours and keep it, measuring nothing")
    parser.add_argument("--reuse", action="store_true",
                        help="measure the index kept under --workdir (--keep) again, without growing it; "
                             "--hours, --catalogue, --negatives, --queries, --long-queries are those of its growth")
    parser.add_argument("--json", type=Path, help="also write the figures (a list, one object per size) here")
    args = parser.parse_args()
    if sorted(args.hours) != list(args.hours):
        parser.error("--hours must be ascending: one index grows through every size")
    if args.reuse:
        if not (args.workdir / GROWTH_RECORD).is_file():
            parser.error(f"--reuse: no kept index under {args.workdir} (grow one with --keep)")
        results = measure_kept(args.workdir, [(args.bounded, args.proposal), *args.also], args.json,
                               not args.no_reads)
        print_table(results)
        return 0
    args.keep = args.keep or args.grow_only

    tracks = list_tracks(args.music)
    random.Random(args.seed).shuffle(tracks)
    catalogue_paths = tracks[:args.catalogue]
    negatives = tracks[args.catalogue:args.catalogue + args.negatives]
    index_dir = args.workdir / "index"
    if index_dir.exists():
        shutil.rmtree(index_dir)
    args.workdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    config = Config()
    results = []
    try:
        store = IndexStore.open(index_dir, create=True, params=config.fingerprint)
        params = store.fingerprint_params
        # -- the real catalogue: decode, fingerprint, add (CPU time of this process) -------------
        templates, catalogue, audio_seconds = [], {}, 0.0
        cpu = time.process_time()
        for path in catalogue_paths:
            try:
                fp = fingerprint_file(path, params, config.max_track_seconds)
            except (AudioDecodeError, FingerprintError) as err:
                print(f"skipped {path.name}: {err}", file=sys.stderr)
                continue
            catalogue[str(path)] = store.add_track(str(path), file_digest(path), fp)
            templates.append(fp)
            audio_seconds += fp.duration
        ingest_cpu = time.process_time() - cpu
        started = time.perf_counter()
        store.commit()
        commit_seconds = time.perf_counter() - started
        ingest = {"ingest_x_realtime_per_core": round(audio_seconds / ingest_cpu, 1),
                  "real_catalogue_hours": round(audio_seconds / 3600, 2), "real_tracks": len(catalogue)}
        print(json.dumps(ingest), flush=True)
        real_ids = set(catalogue.values())
        sources = {track_id: source for source, track_id in catalogue.items()}
        template_sources = list(catalogue)  # in the order of ``templates``
        made_from: dict[int, list[str]] = {}
        strata = code_strata(templates) if args.growth == "relabel" else None
        queries = build_queries(catalogue, negatives, args.queries, args.long_queries, params, rng)
        queries_file = args.workdir / "queries.pickle"
        queries_file.write_bytes(pickle.dumps(queries))
        groups = related_groups()

        hours, synthetic = audio_seconds / 3600, 0
        spawn = multiprocessing.get_context("spawn")
        for size in args.hours:
            added_seconds, add_cpu, commits = 0.0, 0.0, []
            since_commit = 0.0
            while hours < size:
                chosen = [int(rng.integers(len(templates)))]
                if strata is not None:
                    track = relabelled_track(templates[chosen[0]], strata, rng)
                else:
                    chosen.append(int(rng.integers(len(templates))))
                    track = mashup_track(templates[chosen[0]], templates[chosen[1]], params, rng)
                name = f"synthetic/{synthetic}"
                cpu = time.process_time()
                track_id = store.add_track(name, hashlib.sha256(name.encode()).hexdigest(), track)
                add_cpu += time.process_time() - cpu
                made_from[track_id] = [template_sources[i] for i in chosen]
                synthetic += 1
                hours += track.duration / 3600
                added_seconds += track.duration
                since_commit += track.duration / 3600
                if since_commit >= args.commit_every_hours and hours < size:
                    started = time.perf_counter()
                    store.commit()
                    commits.append(time.perf_counter() - started)
                    since_commit = 0.0
            started = time.perf_counter()
            store.commit()
            commit_seconds = time.perf_counter() - started if added_seconds else commit_seconds
            growth = dict(ingest, tracks=len(catalogue) + synthetic, commit_s=round(commit_seconds, 2),
                          commits_while_growing_s=[round(seconds, 1) for seconds in commits])
            if added_seconds:
                growth["add_track_ms_per_synthetic_track"] = round(1000 * add_cpu / (synthetic or 1), 2)
            if args.keep:
                (args.workdir / GROWTH_RECORD).write_text(json.dumps(
                    {"hours": hours, "growth": growth, "growth_model": args.growth,
                     "sources": {str(k): v for k, v in sources.items()},
                     "made_from": {str(k): v for k, v in made_from.items()}}))
            if args.grow_only:
                continue
            for bounded, proposal_settings in [(args.bounded, args.proposal), *args.also]:
                with spawn.Pool(1) as pool:
                    measured = pool.apply(measure, (str(index_dir), str(queries_file), bounded, proposal_settings,
                                                    not args.no_reads))
                row = summarize(hours, queries, measured, real_ids, groups, sources, store.size_bytes(), made_from)
                row.update(growth, bounded=bounded, proposal_settings=dict(proposal_settings))
                results.append(row)
                print(json.dumps(row, indent=2), flush=True)
                if args.json:
                    args.json.write_text(json.dumps(results, indent=2) + "\n")
        store.close()
    finally:
        if not args.keep:
            shutil.rmtree(index_dir, ignore_errors=True)
    print_table(results)
    return 0


def measure_kept(workdir: Path, searches: list[tuple[str, list[tuple[str, object]]]],
                 json_out: Path | None, count_reads: bool = True) -> list[dict]:
    """Measure an index kept by an earlier run (``--keep``) with each search setting, as that run measured it.

    Parameters
    ----------
    workdir : Path
        The earlier run's ``--workdir``: its index, queries and growth record.
    searches : list of (bounded, proposal settings)
    json_out : Path, optional
        Where the figures are also written.
    count_reads : bool
        Also count what each query reads (a second pass over the queries).

    Returns
    -------
    list of dict
        One row per search setting, as :func:`summarize` makes them.
    """
    record = json.loads((workdir / GROWTH_RECORD).read_text())
    sources = {int(track_id): source for track_id, source in record["sources"].items()}
    queries = pickle.loads((workdir / "queries.pickle").read_bytes())
    index_dir = workdir / "index"
    store = IndexStore.open(index_dir, mmap=True)
    try:
        index_bytes = store.size_bytes()
    finally:
        store.close()
    spawn = multiprocessing.get_context("spawn")
    results = []
    for bounded, proposal_settings in searches:
        with spawn.Pool(1) as pool:
            measured = pool.apply(measure, (str(index_dir), str(workdir / "queries.pickle"), bounded,
                                            proposal_settings, count_reads))
        made_from = {int(track_id): made for track_id, made in record.get("made_from", {}).items()}
        row = summarize(record["hours"], queries, measured, set(sources), related_groups(), sources, index_bytes,
                        made_from)
        row.update(record["growth"], bounded=bounded, proposal_settings=dict(proposal_settings), reused=True)
        results.append(row)
        print(json.dumps(row, indent=2), flush=True)
        if json_out:
            json_out.write_text(json.dumps(results, indent=2) + "\n")
    return results


def print_table(results: list[dict]) -> None:
    """The headline figures, one line per size."""
    print(f"{'hours':>7} {'search':>12} {'hits/q p50':>11} {'hits/h':>8} {'10s cpu p50/p99 ms':>19} "
          f"{'10s wall p50':>12} {'30s wall p50':>12} {'rss MiB':>7} {'>index':>6} {'MB/h':>6} {'false':>5} {'tmpl':>4}"
          "  top-1 %")
    for row in results:
        search = row["bounded"] + "".join(f" {name}={value}" for name, value in row["proposal_settings"].items())
        hits = (f"{row['hits_per_query_p50']:>11,.0f} {row['hits_per_catalogue_hour_p50']:>8,}"
                if "hits_per_query_p50" in row else f"{'-':>11} {'-':>8}")
        print(f"{row['hours']:>7} {search:>12} {hits} {row['query10_cpu_ms_p50']:>9} / "
              f"{row['query10_cpu_ms_p99']:<7} {row['query10_wall_ms_p50']:>12} "
              f"{row['query30_wall_ms_p50']:>12} {row['rss_mb']:>7} {row['rss_over_index_mb']:>6} "
              f"{row['bytes_per_hour'] / 1e6:>6.2f} "
              f"{row['false_matches']:>5} {row.get('template_matches', 0):>4}  "
              + " ".join(f"{c} {v}" for c, v in row["top1"].items()))
        print(f"{'':>7} per tier (10 s CPU p50 ms / 30 s CPU p50 ms / largest memory rise MB): " + ", ".join(
            f"{name} {tier['query10_cpu_ms_p50']} / {tier['query30_cpu_ms_p50']} / {tier['rss_rise_mb_max']}"
            for name, tier in row["tiers"].items()))


if __name__ == "__main__":
    sys.exit(main())

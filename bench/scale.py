"""How Refrain's query cost, memory and index size grow with the catalogue.

    python bench/scale.py ~/.cache/refrain-music --hours 10 40 160 --json scale.json
    python bench/scale.py ~/.cache/refrain-music --hours 10 40 160 640 --workdir /tmp/refrain-scale
    python bench/scale.py ~/.cache/refrain-music --hours 640 --keep --workdir /tmp/scale640 --grow-only
    python bench/scale.py ~/.cache/refrain-music --reuse --workdir /tmp/scale640 --json after.json

Grows one index honestly, through the store's own API (``IndexStore.add_track`` /
``commit``): first the real catalogue (the first ``--catalogue`` tracks of the
corpus, split and shuffled as in bench/accuracy.py), then, up to each size of
``--hours``, synthetic tracks under fresh track ids. A synthetic track copies a real
template track's entries of every tier (payloads, peaks, chroma) with each landmark
code relabelled by a random bijection inside its frequency stratum — the codes that
occur about equally often in the real catalogue — so that codes per hour and the
rarity profile of the codes are those of real music. Its time line is the template's
played backwards (every entry's anchor frame and every peak), so that no synthetic
track shares a time line with a real one even where the relabelling cannot move a
code: the codes a looped track repeats are popular enough to sit in strata of a few
codes, and a forward copy of one (cave.ogg) kept 20 of its codes at their frames and
matched its query as ``mixed`` at 160 h. Its chroma's pitch classes are permuted (not
rotated) for the same reason: the melody tier searches them but cannot take them for covers.

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
from refrain.api import Refrain, file_digest  # noqa: E402
from refrain.config import Config  # noqa: E402
from refrain.fingerprint import (AudioDecodeError, Fingerprint, FingerprintError, fingerprint_file,  # noqa: E402
                                 fingerprint_signal, load_audio)
from refrain.fingerprint.hashes import TIER_PAYLOAD_BITS  # noqa: E402
from refrain.fingerprint.peaks import Peaks  # noqa: E402
from refrain.index import IndexStore  # noqa: E402
from refrain.index.landmarks import LandmarkIndex  # noqa: E402
from refrain.tuning import tune_process  # noqa: E402

SHORT_CONDITIONS = ("clean_10s", "pink_0dB", "speed_1.1", "mixed_-6dB")
LONG_CONDITION = "clean_30s"
NEGATIVE_CONDITIONS = ("negative_10s", "negative_30s")
# Codes counted alike up to this many entries; above it, strata of a quarter octave of counts.
EXACT_STRATUM_COUNTS = 8
# Hits grouped by the length of the list (entries under the code) that produced them.
LIST_LENGTH_EDGES = (10, 30, 100, 300, 1_000, 3_000, 10_000, 30_000)
# Beside a kept index (``--keep``): what its growth recorded, for ``--reuse``.
GROWTH_RECORD = "growth.json"


# -- queries -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Query:
    """A fingerprinted query and its ground truth (track id None for a negative)."""

    condition: str
    source: str
    track_id: int | None
    fingerprint: Fingerprint


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
                queries.append(Query(condition, source, catalogue[source], fp))
    for number, (path, y) in enumerate(zip(negatives, backgrounds)):
        for condition, seconds in zip(NEGATIVE_CONDITIONS[:2 if number < long_queries else 1], (10.0, 30.0)):
            fp = fingerprinted(excerpt(path, y, seconds, rng).samples)
            if fp is not None:
                queries.append(Query(condition, str(path), None, fp))
    return queries


# -- synthetic tracks ------------------------------------------------------------------------

class CodeStrata:
    """The real catalogue's codes of one tier, grouped by how often they occur.

    Parameters
    ----------
    codes : np.ndarray of uint32
        Every entry's code in the real catalogue.
    """

    def __init__(self, codes: np.ndarray):
        self.distinct, counts = np.unique(np.asarray(codes, np.uint32), return_counts=True)
        quarter_octaves = np.floor(4 * np.log2(np.maximum(counts, 1))).astype(np.int64)
        stratum_key = np.where(counts <= EXACT_STRATUM_COUNTS, counts, EXACT_STRATUM_COUNTS + quarter_octaves)
        keys, self.stratum = np.unique(stratum_key, return_inverse=True)
        order = np.argsort(self.stratum, kind="stable")
        self.members = self.distinct[order]  # codes grouped by stratum
        self.sizes = np.bincount(self.stratum, minlength=len(keys)).astype(np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])
        self.rank = np.empty(len(self.distinct), np.int64)
        self.rank[order] = np.arange(len(order)) - np.repeat(self.starts, self.sizes)

    def relabelling(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A random bijection per stratum, rank -> (a * rank + b) mod size, as (a, b)."""
        a = rng.integers(1, np.maximum(self.sizes, 2))
        while True:
            bad = np.gcd(a, self.sizes) != 1
            if not bad.any():
                break
            a[bad] = rng.integers(1, np.maximum(self.sizes[bad], 2))
        return a, rng.integers(0, np.maximum(self.sizes, 1))

    def relabel(self, codes: np.ndarray, bijection: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """Each code replaced by its image under ``bijection`` (codes must be real catalogue codes)."""
        a, b = bijection
        where = np.searchsorted(self.distinct, codes)
        stratum, rank = self.stratum[where], self.rank[where]
        new_rank = (a[stratum] * rank + b[stratum]) % self.sizes[stratum]
        return self.members[self.starts[stratum] + new_rank]


class SyntheticTrack:
    """What ``IndexStore.add_track`` reads of a fingerprint, for a relabelled copy of a real track.

    Its peaks are the template's played backwards, like its entries' anchor frames: the
    same number and spread, but no real track's (the under-mix tier verifies candidates on them).
    """

    def __init__(self, template: Fingerprint, entries: dict[str, tuple[np.ndarray, np.ndarray]],
                 melody: np.ndarray | None, last_frame: int):
        self.duration, self.melody = template.duration, melody
        frames = template.peaks.frames
        self.peaks = Peaks(frames=(last_frame - frames)[::-1].copy(), bins=template.peaks.bins[::-1].copy(),
                           strength=template.peaks.strength[::-1].copy(),
                           bin_offsets=template.peaks.bin_offsets[::-1].copy())
        self._entries = entries

    def __len__(self) -> int:
        return len(self._entries["pair"][0])

    def index_entries(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return self._entries


def far_from_rotations(rng: np.random.Generator) -> np.ndarray:
    """A permutation of the 12 pitch classes that agrees with every rotation on at most 2."""
    while True:
        permutation = rng.permutation(12)
        agreement = max(int(np.sum(permutation == (np.arange(12) + shift) % 12)) for shift in range(12))
        if agreement <= 2:
            return permutation


def reversed_payloads(payloads: np.ndarray, tier: str, last_frame: int) -> np.ndarray:
    """Payloads with their anchor frame ``f`` replaced by ``last_frame - f``.

    Every tier's payload holds the anchor frame in its high bits, above the bits of
    what else it carries (the pair tier's payload is the frame alone).
    """
    shift = TIER_PAYLOAD_BITS[tier] - TIER_PAYLOAD_BITS["pair"]
    payloads = np.asarray(payloads, np.int64)
    return ((last_frame - (payloads >> shift)) << shift) | (payloads & ((1 << shift) - 1))


def synthetic_track(template: Fingerprint, strata: dict[str, CodeStrata], rng: np.random.Generator) -> SyntheticTrack:
    entries = {}
    tiers = template.index_entries()
    last_frame = max([int(template.peaks.frames.max()) if len(template.peaks.frames) else 0]
                     + [int(payloads.max()) >> (TIER_PAYLOAD_BITS[tier] - TIER_PAYLOAD_BITS["pair"])
                        for tier, (_, payloads) in tiers.items() if len(payloads)])
    for tier, (codes, payloads) in tiers.items():
        entries[tier] = (strata[tier].relabel(codes, strata[tier].relabelling(rng)),
                         reversed_payloads(payloads, tier, last_frame))
    # Backwards in time and with pitch classes permuted: no real composition's chroma.
    melody = None if template.melody is None else template.melody[::-1, far_from_rotations(rng)].copy()
    return SyntheticTrack(template, entries, melody, last_frame)


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
        if asked in self._asked:
            return first_hit, hits_per_code, labels
        self._asked.add(asked)
        self.codes_looked_up += len(hashes)
        self.hits += int(hits_per_code.sum())
        buckets = np.searchsorted(LIST_LENGTH_EDGES, hits_per_code, side="right")
        self.hits_by_list_length += np.bincount(buckets, weights=hits_per_code,
                                                minlength=len(LIST_LENGTH_EDGES) + 1).astype(np.int64)
        if self.true_track is not None and len(labels):
            # FAISS returns each code's hits as one slice of labels: the code of every hit.
            code_of_hit = np.repeat(np.arange(len(hits_per_code)), hits_per_code)
            hit_order = np.repeat(first_hit, hits_per_code) + (
                np.arange(len(code_of_hit)) - np.repeat(np.cumsum(hits_per_code) - hits_per_code, hits_per_code))
            own = (labels[hit_order] >> self._tier.payload_bits) == self.true_track
            self.true_hits_by_list_length += np.bincount(buckets[code_of_hit[own]],
                                                         minlength=len(LIST_LENGTH_EDGES) + 1)
        return first_hit, hits_per_code, labels


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
        refrain.match_fingerprint(queries[0].fingerprint, "warm-up")  # kernels, catalogue rows
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
              sources: dict[int, str], index_bytes: dict[str, int]) -> dict:
    """The figures of one size from the measuring process's raw results."""
    def group_of(source: str) -> str | None:
        return groups.get(Path(source).name)

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

    top1, false_matches, synthetic_matches = {}, [], []
    for query, (_, _, matched) in zip(queries, timed):
        if query.track_id is not None:
            top1.setdefault(query.condition, []).append(bool(matched) and matched[0][0] == query.track_id)
        for track_id, kind in matched:
            if track_id not in real_ids:
                synthetic_matches.append(f"{query.condition}: {Path(query.source).name} -> synthetic {track_id}"
                                         f" ({kind})")
            elif query.track_id is None and not (
                    group_of(query.source) and group_of(query.source) == group_of(sources[track_id])):
                false_matches.append(f"{query.condition}: {Path(query.source).name} -> "
                                     f"{Path(sources[track_id]).name} ({kind})")
    rows["top1"] = {condition: round(100 * float(np.mean(hits)), 1) for condition, hits in top1.items()}
    rows["queries"] = {condition: sum(q.condition == condition for q in queries)
                       for condition in SHORT_CONDITIONS + (LONG_CONDITION,) + NEGATIVE_CONDITIONS}
    rows["false_matches"] = len(false_matches) + len(synthetic_matches)
    rows["false_match_details"] = false_matches + synthetic_matches
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
        strata = {tier: CodeStrata(np.concatenate([fp.index_entries()[tier][0] for fp in templates]))
                  for tier in templates[0].index_entries()}
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
                template = templates[int(rng.integers(len(templates)))]
                track = synthetic_track(template, strata, rng)
                name = f"synthetic/{synthetic}"
                cpu = time.process_time()
                store.add_track(name, hashlib.sha256(name.encode()).hexdigest(), track)
                add_cpu += time.process_time() - cpu
                synthetic += 1
                hours += template.duration / 3600
                added_seconds += template.duration
                since_commit += template.duration / 3600
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
                    {"hours": hours, "growth": growth, "sources": {str(k): v for k, v in sources.items()}}))
            if args.grow_only:
                continue
            for bounded, proposal_settings in [(args.bounded, args.proposal), *args.also]:
                with spawn.Pool(1) as pool:
                    measured = pool.apply(measure, (str(index_dir), str(queries_file), bounded, proposal_settings,
                                                    not args.no_reads))
                row = summarize(hours, queries, measured, real_ids, groups, sources, store.size_bytes())
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
        row = summarize(record["hours"], queries, measured, set(sources), related_groups(), sources, index_bytes)
        row.update(record["growth"], bounded=bounded, proposal_settings=dict(proposal_settings), reused=True)
        results.append(row)
        print(json.dumps(row, indent=2), flush=True)
        if json_out:
            json_out.write_text(json.dumps(results, indent=2) + "\n")
    return results


def print_table(results: list[dict]) -> None:
    """The headline figures, one line per size."""
    print(f"{'hours':>7} {'search':>12} {'hits/q p50':>11} {'hits/h':>8} {'10s cpu p50/p99 ms':>19} "
          f"{'10s wall p50':>12} {'30s wall p50':>12} {'rss MB':>7} {'MB/h':>6} {'false':>5}  top-1 %")
    for row in results:
        search = row["bounded"] + "".join(f" {name}={value}" for name, value in row["proposal_settings"].items())
        hits = (f"{row['hits_per_query_p50']:>11,.0f} {row['hits_per_catalogue_hour_p50']:>8,}"
                if "hits_per_query_p50" in row else f"{'-':>11} {'-':>8}")
        print(f"{row['hours']:>7} {search:>12} {hits} {row['query10_cpu_ms_p50']:>9} / "
              f"{row['query10_cpu_ms_p99']:<7} {row['query10_wall_ms_p50']:>12} "
              f"{row['query30_wall_ms_p50']:>12} {row['rss_mb']:>7} {row['bytes_per_hour'] / 1e6:>6.2f} "
              f"{row['false_matches']:>5}  " + " ".join(f"{c} {v}" for c, v in row["top1"].items()))
        print(f"{'':>7} per tier (10 s CPU p50 ms / 30 s CPU p50 ms / largest memory rise MB): " + ", ".join(
            f"{name} {tier['query10_cpu_ms_p50']} / {tier['query30_cpu_ms_p50']} / {tier['rss_rise_mb_max']}"
            for name, tier in row["tiers"].items()))


if __name__ == "__main__":
    sys.exit(main())

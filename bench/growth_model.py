"""How bench/scale.py makes catalogue hours beyond the real corpus, and a check of each way against real music.

    python bench/growth_model.py ~/.cache/refrain-music            # ~3 CPU minutes

A grown catalogue is only a fair test of a search if a query meets its synthetic
tracks' codes as often as it would meet real music's. Two models:

* ``relabel`` (the scale study's): a synthetic track is a real template's entries with
  every code relabelled by a random bijection among the real codes that occur about
  equally often. Codes per hour and the rarity profile stay those of the real corpus,
  but no code outside the real corpus ever appears. That is right for codes the corpus
  already holds nearly all of (pairs, triplets: ~3 % of a new half-corpus's entries
  carry a code the other half lacks), and wrong for specific codes (quads, doubles:
  ~75 %): every synthetic copy of a template repeats a code seen once, so at 85 times
  the corpus each such code holds ~85 entries where real music gives it ~14.
* ``mashup``: a synthetic track is new peaks — two real templates, each played
  backwards, moved by a random key (up to two semitones) and tempo (0.85-1.18), the
  second a few dB under the first at a random time, their peaks merged as one
  spectrogram's would be (local maxima of the union, then the analysis' density) — and
  every tier's codes are hashed from those peaks by the library itself. Codes are then
  as new or as common as the geometry of real music makes them; played backwards, no
  tier can take one for a real recording.

The check splits the real corpus in two halves by related-track group (seed 1 and 2)
and compares, per tier, what the second half's entries look like from the first half
with what synthetic tracks grown from the first half's templates look like: the share
of entries whose code the first half lacks, how often a code seen k times there recurs
(per entry, relative to the bench's assumption of k), and the chance hits per hour that
the other half's real 10 s excerpts meet (Σ over their codes of the run length).
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.accuracy import list_tracks, related_groups  # noqa: E402
from refrain.config import Config  # noqa: E402
from refrain.fingerprint import AudioDecodeError, Fingerprint, FingerprintError, fingerprint_file  # noqa: E402
from refrain.fingerprint.hashes import TIER_PAYLOAD_BITS  # noqa: E402
from refrain.fingerprint.params import FingerprintParams  # noqa: E402
from refrain.fingerprint.peaks import Peaks, maximum_filter  # noqa: E402
from refrain.fingerprint.pipeline import fingerprint_peaks  # noqa: E402
from refrain.fingerprint.spectrogram import log_frequency_axis  # noqa: E402

GROWTH_MODELS = ("mashup", "relabel")
# Codes counted alike up to this many entries; above it, strata of a quarter octave of counts.
EXACT_STRATUM_COUNTS = 8
# The mashup's tempo range and how far under the first part the second sounds.
MASHUP_TEMPO = (0.85, 1.18)
MASHUP_UNDER_DB = (0.0, 6.0)


# -- relabel ----------------------------------------------------------------------------------

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


def code_strata(templates: list[Fingerprint]) -> dict[str, CodeStrata]:
    """Every tier's :class:`CodeStrata` over the templates' entries."""
    return {tier: CodeStrata(np.concatenate([fp.index_entries()[tier][0] for fp in templates]))
            for tier in templates[0].index_entries()}


class RelabelledTrack:
    """What ``IndexStore.add_track`` reads of a fingerprint, for a relabelled copy of a real track.

    Its peaks are the template's played backwards, like its entries' anchor frames: the
    same number and spread, but no real track's (the under-mix tier verifies candidates on them).
    """

    def __init__(self, template: Fingerprint, entries: dict[str, tuple[np.ndarray, np.ndarray]],
                 melody: np.ndarray | None, last_frame: int):
        self.duration, self.melody = template.duration, melody
        self.peaks = _backwards(template.peaks, last_frame)
        self._entries = entries

    def __len__(self) -> int:
        return len(self._entries["pair"][0])

    def index_entries(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return self._entries


def _backwards(peaks: Peaks, last_frame: int) -> Peaks:
    return Peaks(frames=(last_frame - peaks.frames)[::-1].copy(), bins=peaks.bins[::-1].copy(),
                 strength=peaks.strength[::-1].copy(), bin_offsets=peaks.bin_offsets[::-1].copy())


def reversed_payloads(payloads: np.ndarray, tier: str, last_frame: int) -> np.ndarray:
    """Payloads with their anchor frame ``f`` replaced by ``last_frame - f``.

    Every tier's payload holds the anchor frame in its high bits, above the bits of
    what else it carries (the pair tier's payload is the frame alone).
    """
    shift = TIER_PAYLOAD_BITS[tier] - TIER_PAYLOAD_BITS["pair"]
    payloads = np.asarray(payloads, np.int64)
    return ((last_frame - (payloads >> shift)) << shift) | (payloads & ((1 << shift) - 1))


def relabelled_track(template: Fingerprint, strata: dict[str, CodeStrata],
                     rng: np.random.Generator) -> RelabelledTrack:
    """A synthetic track of the ``relabel`` model."""
    entries = {}
    tiers = template.index_entries()
    last_frame = max([int(template.peaks.frames.max()) if len(template.peaks.frames) else 0]
                     + [int(payloads.max()) >> (TIER_PAYLOAD_BITS[tier] - TIER_PAYLOAD_BITS["pair"])
                        for tier, (_, payloads) in tiers.items() if len(payloads)])
    for tier, (codes, payloads) in tiers.items():
        entries[tier] = (strata[tier].relabel(codes, strata[tier].relabelling(rng)),
                         reversed_payloads(payloads, tier, last_frame))
    return RelabelledTrack(template, entries, foreign_melody(template.melody, rng), last_frame)


# -- mashup -----------------------------------------------------------------------------------

def far_from_rotations(rng: np.random.Generator) -> np.ndarray:
    """A permutation of the 12 pitch classes that agrees with every rotation on at most 2."""
    while True:
        permutation = rng.permutation(12)
        agreement = max(int(np.sum(permutation == (np.arange(12) + shift) % 12)) for shift in range(12))
        if agreement <= 2:
            return permutation


def foreign_melody(melody: np.ndarray | None, rng: np.random.Generator) -> np.ndarray | None:
    """A chroma sequence played backwards with its pitch classes permuted: no real composition's."""
    return None if melody is None else melody[::-1, far_from_rotations(rng)].copy()


def _backwards_at(peaks: Peaks, tempo: float) -> Peaks:
    """Peaks played backwards and ``tempo`` times faster."""
    last = int(peaks.frames.max()) if len(peaks) else 0
    frames = np.round((last - peaks.frames.astype(np.float64)) / tempo).astype(np.int32)
    return Peaks(frames, peaks.bins, peaks.strength, peaks.bin_offsets)


def merged_peaks(parts: list[Peaks], n_bins: int, params: FingerprintParams) -> Peaks:
    """The peaks one analysis would keep of several sources' peaks sounding together.

    A source's peak survives where it is the strongest of the union within the peak
    picker's neighbourhood, and then only the ``params.peaks_per_second`` strongest
    of each second are kept, as :func:`fingerprint.peaks.find_peaks` keeps them.
    """
    frames = np.concatenate([p.frames for p in parts])
    bins = np.concatenate([p.bins for p in parts])
    strength = np.concatenate([p.strength for p in parts]).astype(np.float32)
    offsets = np.concatenate([p.bin_offsets for p in parts])
    image = np.full((n_bins, int(frames.max()) + 1), -np.inf, np.float32)
    # The stronger of two peaks landing on one cell keeps it (ties: either, once).
    order = np.argsort(strength, kind="stable")
    image[bins[order], frames[order]] = strength[order]
    neighbourhood = (2 * params.peak_freq_radius + 1, 2 * params.peak_time_radius + 1)
    is_max = image == maximum_filter(image, neighbourhood)
    keep = is_max[bins, frames] & (image[bins, frames] == strength)
    cells = bins[keep].astype(np.int64) * image.shape[1] + frames[keep]
    _, first = np.unique(cells, return_index=True)
    kept = np.flatnonzero(keep)[first]
    frame_seconds = params.hop_length / params.sample_rate
    second = (frames[kept] * frame_seconds / params.density_window).astype(np.int64)
    by_strength = kept[np.lexsort((-strength[kept], second))]
    second = (frames[by_strength] * frame_seconds / params.density_window).astype(np.int64)
    starts = np.searchsorted(second, second, side="left")
    rank = np.arange(len(second)) - starts
    chosen = by_strength[rank < max(1, int(round(params.peaks_per_second * params.density_window)))]
    chosen = chosen[np.lexsort((bins[chosen], frames[chosen]))]
    return Peaks(frames[chosen].astype(np.int32), bins[chosen].astype(np.int32), strength[chosen],
                 offsets[chosen].astype(np.float32))


def mashup_track(first: Fingerprint, second: Fingerprint, params: FingerprintParams,
                 rng: np.random.Generator) -> Fingerprint:
    """A synthetic track of the ``mashup`` model: ``second`` under ``first``, both moved, hashed anew.

    Parameters
    ----------
    first, second : Fingerprint
        Real catalogue fingerprints (their peaks are used; ``first`` sets the length).
    params : FingerprintParams
        The index's analysis settings.
    rng : np.random.Generator

    Returns
    -------
    Fingerprint
    """
    n_bins = len(log_frequency_axis(params.fmin, params.fmax, params.bins_per_octave))
    tempo = float(rng.uniform(*MASHUP_TEMPO))
    lead = _backwards_at(first.peaks, tempo)
    under = _backwards_at(second.peaks, float(rng.uniform(*MASHUP_TEMPO)))
    length = int(lead.frames.max()) + 1
    under_frames = (under.frames + int(rng.integers(0, length))) % length
    under = Peaks(under_frames.astype(np.int32), under.bins,
                  (under.strength - rng.uniform(*MASHUP_UNDER_DB)).astype(np.float32), under.bin_offsets)
    peaks = merged_peaks([lead, under], n_bins, params)
    return fingerprint_peaks(peaks, first.duration / tempo, params, melody=foreign_melody(first.melody, rng))


# -- the check --------------------------------------------------------------------------------

def _counts_of(codes: np.ndarray, distinct: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """How many entries under each of ``codes`` (``distinct``/``counts`` from ``np.unique``)."""
    at = np.minimum(np.searchsorted(distinct, codes), len(distinct) - 1)
    return np.where(distinct[at] == codes, counts[at], 0)


def compare(first_half: list[Fingerprint], other: list[Fingerprint], probes: list[Fingerprint]) -> dict:
    """Per tier: how ``other`` (a real half, or synthetic tracks) looks from ``first_half``."""
    hours_first = sum(fp.duration for fp in first_half) / 3600
    hours_other = sum(fp.duration for fp in other) / 3600
    report = {}
    for tier in first_half[0].index_entries():
        first_codes = np.concatenate([fp.index_entries()[tier][0] for fp in first_half])
        other_codes = np.concatenate([fp.index_entries()[tier][0] for fp in other])
        first_distinct, first_counts = np.unique(first_codes, return_counts=True)
        other_distinct, other_counts = np.unique(other_codes, return_counts=True)
        recurrence = {}
        seen_in_other = _counts_of(first_distinct, other_distinct, other_counts)
        per_entry = len(other_codes) / len(first_codes)
        for k in (1, 2, 4):
            chosen = first_counts == k
            recurrence[k] = float(seen_in_other[chosen].mean() / (per_entry * k)) if chosen.any() else None
        unseen = _counts_of(other_codes, first_distinct, first_counts) == 0
        probe_codes = np.concatenate([fp.index_entries()[tier][0] for fp in probes])
        hits = _counts_of(probe_codes, other_distinct, other_counts).sum()
        report[tier] = {"entries_per_hour": len(other_codes) / hours_other,
                        "unseen_share": float(unseen.mean()), "recurrence": recurrence,
                        "chance_hits_per_hour_per_probe": float(hits / hours_other / len(probes))}
    report["hours"] = {"first": hours_first, "other": hours_other}
    return report


def distinct_shares(tracks: list, marks: list[float]) -> dict[str, list[float | None]]:
    """Per tier, distinct codes per entry among the first ``mark`` hours of ``tracks`` (None past their end)."""
    hours = np.cumsum([track.duration for track in tracks]) / 3600
    shares: dict[str, list[float | None]] = {}
    for tier in tracks[0].index_entries():
        codes = [track.index_entries()[tier][0] for track in tracks]
        ends = np.cumsum([len(c) for c in codes])
        every = np.concatenate(codes)
        shares[tier] = []
        for mark in marks:
            last = int(np.searchsorted(hours, mark))
            shares[tier].append(None if last >= len(tracks) else
                                float(len(np.unique(every[:ends[last]])) / ends[last]))
    return shares


def three_parts(names: list[str], seed: int) -> tuple[list[str], list[str], list[str]]:
    """Templates, real other music and probes: 40 / 40 / 20 % of the related-track groups."""
    groups = related_groups()
    keys = sorted({groups.get(name, name) for name in names})
    random.Random(seed).shuffle(keys)
    part = {key: 0 if i < 0.4 * len(keys) else 1 if i < 0.8 * len(keys) else 2 for i, key in enumerate(keys)}
    return tuple([n for n in names if part[groups.get(n, n)] == which] for which in range(3))  # type: ignore


def probe_excerpts(fingerprints: list[Fingerprint], params: FingerprintParams,
                   rng: np.random.Generator) -> list[Fingerprint]:
    """A 10 s excerpt of each, hashed from its peaks as the catalogue hashes a recording."""
    frames = int(round(10.0 * params.sample_rate / params.hop_length))
    probes = []
    for fp in fingerprints:
        start = int(rng.integers(0, max(1, int(fp.peaks.frames.max()) - frames)))
        chosen = (fp.peaks.frames >= start) & (fp.peaks.frames < start + frames)
        part = Peaks(fp.peaks.frames[chosen] - start, fp.peaks.bins[chosen], fp.peaks.strength[chosen],
                     fp.peaks.bin_offsets[chosen])
        try:
            probes.append(fingerprint_peaks(part, 10.0, params))
        except FingerprintError:
            continue
    return probes


def grow(model: str, templates: list[Fingerprint], hours: float, params: FingerprintParams,
         rng: np.random.Generator, strata: dict[str, CodeStrata] | None = None) -> list:
    """Synthetic tracks of ``model`` from ``templates`` until they last ``hours``."""
    tracks: list = []
    made = 0.0
    while made < hours * 3600:
        template = templates[int(rng.integers(len(templates)))]
        if model == "relabel":
            track = relabelled_track(template, strata or code_strata(templates), rng)
        else:
            track = mashup_track(template, templates[int(rng.integers(len(templates)))], params, rng)
        tracks.append(track)
        made += track.duration
    return tracks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("music", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    config = Config()
    params = config.fingerprint
    fingerprints: dict[str, Fingerprint] = {}
    for path in list_tracks(args.music):
        try:
            fingerprints[path.name] = fingerprint_file(path, params, config.max_track_seconds)
        except (AudioDecodeError, FingerprintError) as err:
            print(f"skipped {path.name}: {err}", file=sys.stderr)
    print(f"{len(fingerprints)} tracks, {sum(fp.duration for fp in fingerprints.values()) / 3600:.2f} h")
    print("tier      seed  model     entries/h  unseen share  recurrence k=1/2/4  chance hits per hour per 10 s probe")
    for seed in args.seeds:
        template_names, other_names, probe_names = three_parts(sorted(fingerprints), seed)
        templates = [fingerprints[n] for n in template_names]
        other = [fingerprints[n] for n in other_names]
        rng = np.random.default_rng(seed)
        probes = probe_excerpts([fingerprints[n] for n in probe_names], params, rng)
        hours = sum(fp.duration for fp in other) / 3600
        strata = code_strata(templates)
        # Each model grows two sets from the same templates; the second is read from the first, as the
        # real other music is read from the templates: how much a grown catalogue repeats itself.
        sets = {"real": (templates, other)}
        for model in GROWTH_MODELS:
            sets[model] = (grow(model, templates, hours, params, rng, strata),
                           grow(model, templates, hours, params, rng, strata))
        for model, (first, second) in sets.items():
            report = compare(first, second, probes)
            for tier, row in report.items():
                if tier == "hours":
                    continue
                rec = "/".join("-" if v is None else f"{v:.2f}" for v in row["recurrence"].values())
                print(f"{tier:9s} {seed:4d}  {model:8s} {row['entries_per_hour']:9,.0f}  {row['unseen_share']:11.1%}"
                      f"  {rec:>18s}  {row['chance_hits_per_hour_per_probe']:12,.0f}")
    # How the share of new codes falls as one grown catalogue gets longer, against the whole real corpus.
    marks = [1.0, 2.0, 4.0, 8.0, 10.0, 20.0, 40.0]
    every = [fingerprints[n] for n in sorted(fingerprints)]
    random.Random(args.seeds[0]).shuffle(every)
    rng = np.random.default_rng(args.seeds[0])
    curves = {"real": distinct_shares(every, marks)}
    for model in GROWTH_MODELS:
        curves[model] = distinct_shares(grow(model, every, marks[-1] + 1, params, rng, code_strata(every)), marks)
    print("\ndistinct codes per entry after " + " / ".join(f"{m:g}" for m in marks)
          + " h (templates: the whole corpus)")
    for tier in curves["real"]:
        for model, curve in curves.items():
            print(f"{tier:9s} {model:8s} " + " / ".join("-" if v is None else f"{v:.3f}" for v in curve[tier]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What a shard process does: hold its index memory-mapped, count the query's codes, match with global statistics.

These functions run in the engine's shard workers (they pickle by reference: module-level).
A worker opens its shard read-only and memory-mapped on the first call (constant time at
any size: the pages are the page cache's) and re-opens it when a writer has replaced
its files, so a restarted shard process answers again within seconds.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

import numpy as np

from refrain.api import Refrain, TrackMatch
from refrain.fingerprint import Fingerprint
from refrain.index.landmarks import LandmarkIndex
from refrain.matcher import Catalogue, Match, MatchParams, match

__all__ = ["CodeCounts", "CatalogueStatistics", "ShardAnswer", "CatalogueWideCounts", "shard_code_counts",
           "shard_match", "open_shard"]


@dataclass(frozen=True)
class CodeCounts:
    """A landmark tier's entries under each of some codes, and its entries in all.

    ``codes`` are distinct and sorted; ``counts`` is aligned with them.
    """

    codes: np.ndarray
    counts: np.ndarray
    entries: int


@dataclass(frozen=True)
class CatalogueStatistics:
    """What the whole catalogue's index would know that one shard does not.

    Attributes
    ----------
    tiers : dict of str to CodeCounts
        Per landmark tier, the cluster's entry count of every code the query looks up, and
        the cluster's total entries: the rarity weights (:func:`matcher.voting.rarity_weights`).
    total_tracks : int
        Tracks of the cluster: the scale of chance agreement (:class:`matcher.types.Calibration`).
    """

    tiers: dict[str, CodeCounts]
    total_tracks: int


@dataclass
class ShardAnswer:
    """One shard's matches (shard-local track ids) and how many looked-up codes the router had not counted."""

    matches: list[TrackMatch] = field(default_factory=list)
    uncounted_codes: int = 0
    tier_seconds: dict[str, float] = field(default_factory=dict)


class CatalogueWideCounts:
    """A shard's landmark tier that reports the whole catalogue's code counts and size.

    Lookups are the shard's own (its hits); :meth:`code_counts` and :attr:`ntotal` answer
    from the router's cluster-wide table, so that each code weighs what it weighs in
    one index of the whole catalogue. A code missing from the table (none, when the
    router ran the same matcher: see :func:`refrain.cluster.router.looked_up_codes`)
    falls back to the shard's own count and is counted in :attr:`uncounted`.
    """

    def __init__(self, tier: LandmarkIndex, counts: CodeCounts):
        self._tier = tier
        self._counts = counts
        self.payload_bits = tier.payload_bits
        self.uncounted = 0

    @property
    def ntotal(self) -> int:
        return self._counts.entries

    def code_counts(self, hashes: np.ndarray) -> np.ndarray:
        codes = self._counts.codes
        where = np.minimum(np.searchsorted(codes, hashes), max(len(codes) - 1, 0))
        known = (codes[where] == hashes) if len(codes) else np.zeros(len(hashes), bool)
        if known.all():
            return self._counts.counts[where]
        self.uncounted += int((~known).sum())
        return np.where(known, self._counts.counts[where] if len(codes) else 0, self._tier.code_counts(hashes))

    def lookup_slices(self, hashes: np.ndarray, tracks: np.ndarray | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self._tier.lookup_slices(hashes, tracks)

    def lookup(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self._tier.lookup(hashes)


_opened: dict[str, tuple[tuple, Refrain]] = {}
_opening = threading.Lock()


def _signature(directory: str) -> tuple:
    """What changes when a writer commits to the shard: its files' inodes, sizes and times."""
    entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
    return tuple((e.name, e.inode(), e.stat().st_size, e.stat().st_mtime_ns) for e in entries
                 if e.is_file() and e.name != ".lock")


def open_shard(directory: str) -> Refrain:
    """The shard's index, read-only and memory-mapped, re-opened when its files have changed."""
    signature = _signature(directory)
    with _opening:
        held = _opened.get(directory)
        if held is not None and held[0] == signature:
            return held[1]
        refrain = Refrain.open(directory, mmap=True)
        _opened[directory] = (signature, refrain)
        # The replaced view is left to the garbage collector: a match still running on
        # another thread may hold it.
        return refrain


def shard_code_counts(directory: str, codes: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray],
                                                                                   dict[str, int], int]:
    """The shard's entries under each code of each landmark tier, its entries per tier, and its tracks.

    Parameters
    ----------
    directory : str
        The shard's index directory.
    codes : mapping of str to np.ndarray of uint32
        Per tier, the query's distinct codes.

    Returns
    -------
    counts : dict of str to np.ndarray of int64
    entries : dict of str to int
    tracks : int
    """
    refrain = open_shard(directory)
    tiers = refrain.store.tiers
    landmarks = {name: tier for name, tier in tiers.items() if isinstance(tier, LandmarkIndex)}
    counts = {name: landmarks[name].code_counts(tier_codes) for name, tier_codes in codes.items() if name in landmarks}
    entries = {name: landmarks[name].ntotal for name in codes if name in landmarks}
    return counts, entries, len(refrain.tracks())


def shard_match(directory: str, fp: Fingerprint, name: str, params: MatchParams,
                statistics: CatalogueStatistics) -> ShardAnswer:
    """Match a query fingerprint against one shard as the whole catalogue's index would rate it.

    Parameters
    ----------
    directory : str
        The shard's index directory.
    fp : Fingerprint
        The query, fingerprinted once by the router.
    name : str
        The query's name.
    params : MatchParams
        The router's matcher settings (which tiers run).
    statistics : CatalogueStatistics
        The cluster-wide code counts and track total.

    Returns
    -------
    ShardAnswer
        Matches with shard-local track ids and their metadata.
    """
    refrain = open_shard(directory)
    ready = {t.track_id: t for t in refrain.tracks()}
    tiers: dict[str, Any] = dict(refrain.store.tiers)
    wide = {name: CatalogueWideCounts(tier, statistics.tiers[name]) for name, tier in tiers.items()
            if isinstance(tier, LandmarkIndex) and name in statistics.tiers}
    tiers.update(wide)
    catalogue = Catalogue(tiers, refrain.params, {t: track.duration for t, track in ready.items()},
                          total_tracks=statistics.total_tracks)
    timings: dict[str, float] = {}
    found = match(fp, catalogue, params, timings=timings)
    matches = [TrackMatch(**{f.name: getattr(m, f.name) for f in fields(Match)}, source=ready[m.track_id].source,
                          title=ready[m.track_id].title, artist=ready[m.track_id].artist,
                          isrc=ready[m.track_id].isrc) for m in found]
    return ShardAnswer(matches, sum(w.uncounted for w in wide.values()), timings)

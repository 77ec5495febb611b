"""What a shard process does: hold its index and the cluster's count table memory-mapped, and match.

These functions run in the engine's shard workers (they pickle by reference: module-level).
A worker opens its shard read-only and memory-mapped on the first call (constant time at
any size: the pages are the page cache's) and re-opens it when a writer has replaced
its files, so a restarted shard process answers again within seconds. It maps the
cluster's count table (:mod:`refrain.cluster.counts`) the same way, so that it weighs
each code as one index of the whole catalogue would without asking the other shards.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from refrain.api import Refrain, TrackMatch
from refrain.cluster.counts import CountTable, TierCounts
from refrain.fingerprint import Fingerprint
from refrain.index.landmarks import LandmarkIndex
from refrain.matcher import Catalogue, MatchParams, TrackDurations, match

__all__ = ["ShardAnswer", "CatalogueWideCounts", "shard_match", "open_shard", "open_count_table",
           "directory_signature"]


@dataclass
class ShardAnswer:
    """One shard's matches (shard-local track ids), its matching time per tier and in all, and whether the count
    table described its files (False only while a writer is between the shard's commit and the table's rewrite)."""

    matches: list[TrackMatch] = field(default_factory=list)
    tier_seconds: dict[str, float] = field(default_factory=dict)
    counts_current: bool = True
    #: The whole call in the shard (its tiers' matching, opening checks, the answer's making).
    seconds: float = 0.0
    #: The name of the shard's worker (replica) that answered.
    served_by: str = ""


class CatalogueWideCounts:
    """A shard's landmark tier that reports the whole catalogue's code counts and size.

    Lookups are the shard's own (its hits); :meth:`code_counts` and :attr:`ntotal` answer
    from the cluster's count table, so that each code weighs what it weighs in one index
    of the whole catalogue.
    """

    def __init__(self, tier: LandmarkIndex, counts: TierCounts):
        self._tier = tier
        self._counts = counts
        self.payload_bits = tier.payload_bits

    @property
    def ntotal(self) -> int:
        return self._counts.entries

    def code_counts(self, hashes: np.ndarray) -> np.ndarray:
        return self._counts.code_counts(hashes)

    def lookup_slices(self, hashes: np.ndarray, tracks: np.ndarray | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self._tier.lookup_slices(hashes, tracks)

    def lookup(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self._tier.lookup(hashes)

    def lookup_rarest(self, hashes: np.ndarray, max_hits: int
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The shard's hits of the codes one index of the whole catalogue would choose."""
        return self._tier.lookup_rarest(hashes, max_hits, counted_by=self._counts.code_counts)


_opened: dict[str, tuple[tuple, Any]] = {}
_opening = threading.Lock()


def _file_signature(path: str) -> tuple:
    status = os.stat(path)
    return status.st_ino, status.st_size, status.st_mtime_ns


def directory_signature(directory: str | os.PathLike[str]) -> tuple:
    """What changes when a writer commits to an index directory: its files' inodes, sizes and times.

    Every commit replaces the tier files and writes the catalogue. Left out: the write lock
    and SQLite's shared-memory index (``-shm``), which readers write to as well; SQLite's
    write-ahead log (``-wal``) counts by its size and time, and only while it holds
    something: a reader's connection creates it empty, and the last connection to close
    removes it.
    """
    signature: list[tuple] = []
    for entry in sorted(os.scandir(os.fspath(directory)), key=lambda entry: entry.name):
        if not entry.is_file() or entry.name == ".lock" or entry.name.endswith("-shm"):
            continue
        try:
            status = entry.stat()
        except FileNotFoundError:  # replaced or removed since the listing: the next call sees what is there
            continue
        if not entry.name.endswith("-wal"):
            signature.append((entry.name, entry.inode(), status.st_size, status.st_mtime_ns))
        elif status.st_size:
            signature.append((entry.name, status.st_size, status.st_mtime_ns))
    return tuple(signature)


def _held(path: str, signature: tuple, opener):
    """The object ``opener(path)`` made for ``path``'s files as they are now, made again when they changed."""
    with _opening:
        held = _opened.get(path)
        if held is not None and held[0] == signature:
            return held[1]
        opened = opener(path)
        _opened[path] = (signature, opened)
        # The replaced view is left to the garbage collector: a match still running on
        # another thread may hold it.
        return opened


@dataclass(frozen=True)
class _ShardView:
    """A shard opened for matching, with what every query reads of it prepared once per opening."""

    refrain: Refrain
    durations: TrackDurations
    landmarks: dict[str, LandmarkIndex]
    entries: dict[str, int]

    @classmethod
    def open(cls, directory: str) -> "_ShardView":
        refrain = Refrain.open(directory, mmap=True)
        landmarks = {name: tier for name, tier in refrain.store.tiers.items() if isinstance(tier, LandmarkIndex)}
        return cls(refrain, TrackDurations(*refrain.store.catalog.ready_durations()), landmarks,
                   {name: tier.ntotal for name, tier in landmarks.items()})


def open_shard(directory: str) -> _ShardView:
    """The shard's index, read-only and memory-mapped, re-opened when its files have changed."""
    return _held(directory, directory_signature(directory), _ShardView.open)


def open_count_table(path: str) -> CountTable:
    """The cluster's count table, memory-mapped, re-opened when a writer has replaced it."""
    return _held(path, _file_signature(path), CountTable)


def shard_match(directory: str, shard_id: int, counts_path: str, fp: Fingerprint, name: str,
                params: MatchParams) -> ShardAnswer:
    """Match a query fingerprint against one shard as the whole catalogue's index would rate it.

    Parameters
    ----------
    directory : str
        The shard's index directory.
    shard_id : int
        The shard's number (its row in the count table).
    counts_path : str
        The cluster's count table (``DIR/counts.npz``).
    fp : Fingerprint
        The query, fingerprinted once by the router.
    name : str
        The query's name.
    params : MatchParams
        The router's matcher settings (which tiers run).

    Returns
    -------
    ShardAnswer
        Matches with shard-local track ids and their metadata.
    """
    started = time.perf_counter()
    shard = open_shard(directory)
    table = open_count_table(counts_path)
    tiers: dict[str, Any] = dict(shard.refrain.store.tiers)
    tiers.update({name: CatalogueWideCounts(tier, table.tiers[name]) for name, tier in shard.landmarks.items()
                  if name in table.tiers})
    catalogue = Catalogue(tiers, shard.refrain.params, shard.durations, total_tracks=table.total_tracks)
    timings: dict[str, float] = {}
    found = match(fp, catalogue, params, timings=timings)
    return ShardAnswer(shard.refrain.with_metadata(found), timings,
                       table.describes(shard_id, len(shard.durations), shard.entries), time.perf_counter() - started)

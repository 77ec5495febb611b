"""The cluster-wide count table: every landmark code's entries in the whole catalogue, beside the shards.

Rarity weights (:func:`refrain.matcher.voting.rarity_weights`) and every tier's chance
scale (:class:`refrain.matcher.types.Calibration`) depend on the whole catalogue: each
code's entry count, each tier's entry total and the number of tracks. The writer that
commits a shard rewrites this table from every shard's run store
(:func:`write_count_table`), and each shard process maps it
(:class:`CountTable`), so that a shard weighs every code as one index of the whole
catalogue would, with no round trip to learn the counts at query time.

Layout: ``DIR/counts.npz``, one uncompressed archive written atomically
(:func:`refrain.index.files.save_arrays`) and read memory-mapped
(:func:`refrain.index.files.map_arrays`):

``<tier>.codes``         (uint32) the tier's distinct codes over all shards, mixed as the run
                         stores file them (:func:`refrain.index.landmarks.mix_codes`), increasing;
``<tier>.counts``        (uint32, or int64 past ``2 ** 32``) each code's entries over all shards;
``<tier>.shard_entries`` (int64) each shard's entries in the tier, in ``shards`` order;
``shards``               (int64) the shard ids the table was built from;
``shard_tracks``         (int64) each shard's tracks, in ``shards`` order.

A tier's entry total is the sum of its ``shard_entries`` and the catalogue's tracks the
sum of ``shard_tracks``. The per-shard figures let a shard see that the table does not
describe its files (a writer between the shard's commit and the table's rewrite, or a
shard changed behind the cluster's back): :meth:`CountTable.describes`.

Building the table reads each shard's ``codes`` and ``starts`` arrays (8 bytes per
distinct code, not the entries) and merges them: linear in the distinct codes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from refrain.fingerprint.hashes import TIER_PAYLOAD_BITS
from refrain.index import IndexStore
from refrain.index.files import map_arrays, save_arrays
from refrain.index.landmarks import LandmarkIndex, mix_codes

__all__ = ["COUNTS_FILE", "CountTable", "TierCounts", "write_count_table"]

COUNTS_FILE = "counts.npz"


def _shard_runs(directory: Path) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], int]:
    """Per landmark tier of a shard, its distinct mixed codes and each one's entries; and its tracks."""
    with IndexStore.open(directory, mmap=True) as store:
        if store.upgradable():
            raise ValueError(f"{directory}: a shard from an earlier Refrain: run `refrain upgrade --index "
                             f"{directory}` first")
        tracks = len(store.catalog.ready_tracks())
        # Over the main file and its delta segments: a large shard's recent commits live in deltas.
        runs = {name: tier.code_table() for name, tier in store.tiers.items()
                if name in TIER_PAYLOAD_BITS and isinstance(tier, LandmarkIndex)}
    return runs, tracks


def write_count_table(cluster_directory: str | os.PathLike, shards: Sequence[tuple[int, str | os.PathLike]]) -> Path:
    """Rewrite ``DIR/counts.npz`` from the committed files of every shard.

    Parameters
    ----------
    cluster_directory : path-like
        The cluster directory.
    shards : sequence of (int, path-like)
        Every shard's id and index directory.

    Returns
    -------
    Path
        The table's file.
    """
    arrays: dict[str, np.ndarray] = {}
    per_shard = [_shard_runs(Path(directory)) for _, directory in shards]
    arrays["shards"] = np.array([shard_id for shard_id, _ in shards], np.int64)
    arrays["shard_tracks"] = np.array([tracks for _, tracks in per_shard], np.int64)
    tiers = sorted({name for runs, _ in per_shard for name in runs})
    for name in tiers:
        held = [runs[name] for runs, _ in per_shard if name in runs]
        codes, inverse = np.unique(np.concatenate([codes for codes, _ in held]), return_inverse=True)
        counts = np.bincount(inverse, weights=np.concatenate([lengths for _, lengths in held]),
                             minlength=len(codes)).astype(np.int64)
        arrays[f"{name}.codes"] = codes.astype(np.uint32)
        arrays[f"{name}.counts"] = counts.astype(np.uint32) if counts.max(initial=0) < 1 << 32 else counts
        arrays[f"{name}.shard_entries"] = np.array(
            [int(runs[name][1].sum()) if name in runs else 0 for runs, _ in per_shard], np.int64)
    path = Path(cluster_directory) / COUNTS_FILE
    save_arrays(path, arrays)
    return path


@dataclass(frozen=True)
class TierCounts:
    """One landmark tier's cluster-wide counts: distinct mixed codes, their entries, and the tier's total."""

    codes: np.ndarray
    counts: np.ndarray
    entries: int

    def code_counts(self, hashes: np.ndarray) -> np.ndarray:
        """Cluster-wide entries under each landmark code (0 for a code no shard holds)."""
        stored = mix_codes(np.asarray(hashes, dtype=np.uint32))
        if len(self.codes) == 0:
            return np.zeros(len(stored), np.int64)
        at = np.minimum(np.searchsorted(self.codes, stored), len(self.codes) - 1)
        return np.where(self.codes[at] == stored, self.counts[at], 0).astype(np.int64)


class CountTable:
    """A cluster's count table, memory-mapped (see the module docstring).

    Parameters
    ----------
    path : path-like
        ``DIR/counts.npz``.

    Raises
    ------
    FileNotFoundError
        If the cluster has no table yet.
    ValueError
        If the file is not a count table.
    """

    def __init__(self, path: os.PathLike):
        self.path = Path(path)
        header = map_arrays(self.path, ("shards", "shard_tracks"))
        self.shards = [int(s) for s in header["shards"]]
        self.shard_tracks = [int(t) for t in header["shard_tracks"]]
        self.tiers: dict[str, TierCounts] = {}
        self.shard_entries: dict[str, list[int]] = {}
        for name in TIER_PAYLOAD_BITS:
            try:
                arrays = map_arrays(self.path, (f"{name}.codes", f"{name}.counts", f"{name}.shard_entries"))
            except (KeyError, ValueError):
                continue  # shards without this tier (an index from before it)
            entries = [int(e) for e in arrays[f"{name}.shard_entries"]]
            self.tiers[name] = TierCounts(arrays[f"{name}.codes"], arrays[f"{name}.counts"], sum(entries))
            self.shard_entries[name] = entries

    @property
    def total_tracks(self) -> int:
        """The cluster's tracks when the table was written."""
        return sum(self.shard_tracks)

    def describes(self, shard_id: int, tracks: int, entries: dict[str, int]) -> bool:
        """Whether the table was built from a shard with these tracks and entries per landmark tier."""
        if shard_id not in self.shards:
            return False
        at = self.shards.index(shard_id)
        return self.shard_tracks[at] == tracks and all(
            name in self.shard_entries and self.shard_entries[name][at] == count for name, count in entries.items())

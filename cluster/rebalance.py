"""Moving tracks between shards without decoding their audio again.

What an index keeps of a track is not its fingerprint but each tier's entries: the pair
and triplet tiers' (code, payload) entries, filed under mixed codes in the run store
(:mod:`refrain.index.landmarks`, whose file layout is documented there); the peak
store's (frame, bin) peaks; the melody tier's chroma sequence. :func:`stored_track`
reads them back from the source shard and :class:`StoredTrack` hands them to the
destination's :meth:`refrain.index.IndexStore.add_track` in the shape it reads from a
fingerprint, so the moved track has exactly the entries it had (the melody tier's
segment descriptors are recomputed from the stored chroma, its zero padding trimmed).

A move adds the track to its new shard and commits it there (a second, unrecorded
copy: never reported), records the new place in the cluster catalogue (the switch),
then removes the old copy; a crash between steps leaves at most an unrecorded copy,
which :func:`remove_unrecorded` takes out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refrain.api import Refrain
from refrain.cluster.layout import ClusterCatalog, Shard
from refrain.index import IndexStore, TrackMetadata
from refrain.index.landmarks import LandmarkIndex

__all__ = ["StoredTrack", "stored_track", "rebalance", "remove_unrecorded", "Move"]


@dataclass(frozen=True)
class _StoredPeaks:
    frames: np.ndarray
    bins: np.ndarray


@dataclass(frozen=True)
class StoredTrack:
    """A track's stored entries, in the shape :meth:`IndexStore.add_track` reads from a fingerprint."""

    entries: dict[str, tuple[np.ndarray, np.ndarray]]
    peaks: _StoredPeaks
    melody: np.ndarray | None
    duration: float

    def index_entries(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return self.entries

    def __len__(self) -> int:
        return len(self.entries["pair"][0])  # a fingerprint's length: its pair landmarks


def stored_track(store: IndexStore, track_id: int) -> StoredTrack:
    """Read back every tier's entries of a committed track of ``store``."""
    entries = {name: tier.track_entries(track_id) for name, tier in store.tiers.items()
               if isinstance(tier, LandmarkIndex)}
    track = store.catalog.get(track_id)
    if track is None:
        raise KeyError(track_id)
    peaks = store.tiers.get("peaks")
    frames, bins = peaks.peaks_between(track_id, 0, np.iinfo(np.int64).max) if peaks is not None else ([], [])
    melody = None
    if store.melody is not None:
        chroma = store.melody.chroma(track_id)
        # The chroma store pads each track to whole blocks with zero frames: not the track's.
        kept = np.flatnonzero(chroma.any(axis=1))
        melody = chroma[:kept[-1] + 1] if len(kept) else chroma[:0]
    return StoredTrack(entries, _StoredPeaks(np.asarray(frames), np.asarray(bins)), melody, track.duration)


@dataclass(frozen=True)
class Move:
    """One track moved: its cluster-wide id, seconds, and the shards it left and joined."""

    track_id: int
    seconds: float
    source: int
    destination: int


def _plan(catalog: ClusterCatalog) -> list[tuple[int, int, int]]:
    """(track, from shard, to shard) moves that even out catalogue seconds, longest tracks first.

    A track moves from the fullest shard to the emptiest while that narrows their gap.
    """
    seconds = catalog.seconds_per_shard()
    tracks = sorted(((t.duration, t.track_id) for t in catalog.ready_tracks().values()), reverse=True)
    where = {track_id: catalog.locate(track_id)[0].shard_id for _, track_id in tracks}
    moves = []
    while True:
        fullest, emptiest = max(seconds, key=seconds.get), min(seconds, key=seconds.get)
        gap = seconds[fullest] - seconds[emptiest]
        movable = [(d, t) for d, t in tracks if where[t] == fullest and 0 < d < gap]
        if not movable:
            return moves
        duration, track_id = movable[0]
        moves.append((track_id, fullest, emptiest))
        where[track_id] = emptiest
        seconds[fullest] -= duration
        seconds[emptiest] += duration


def rebalance(catalog: ClusterCatalog) -> list[Move]:
    """Move tracks so that every shard holds about as many catalogue seconds; nothing is decoded.

    Takes the cluster's write lock (:meth:`ClusterCatalog.writing`; raises
    :class:`refrain.index.store.IndexBusyError` at once if another writer holds it) and
    every shard's. Readers keep answering:
    each track is reported by exactly one shard throughout (see the module's notes).
    """
    with catalog.writing(timeout=0.0):
        return _rebalance(catalog)


def _rebalance(catalog: ClusterCatalog) -> list[Move]:
    remove_unrecorded(catalog)
    moves = []
    writers: dict[int, Refrain] = {}
    try:
        for track_id, source, destination in _plan(catalog):
            for shard_id in (source, destination):
                if shard_id not in writers:
                    writers[shard_id] = Refrain.open(catalog.shard(shard_id).directory, writable=True)
            place = catalog.locate(track_id)
            track = catalog.get(track_id)
            assert place is not None and track is not None  # the plan lists recorded tracks
            old_store, new_store = writers[source].store, writers[destination].store
            moved = stored_track(old_store, place[1])
            local = old_store.catalog.get(place[1])
            assert local is not None
            new_id = new_store.add_track(local.source, local.content_hash, moved,  # type: ignore[arg-type]
                                         TrackMetadata(local.title, local.artist, local.isrc))
            new_store.commit()
            catalog.recount()
            catalog.move(track_id, destination, new_id)
            old_store.remove_track(place[1])
            catalog.recount()
            moves.append(Move(track_id, track.duration, source, destination))
    finally:
        for writer in writers.values():
            writer.close()
    return moves


def remove_unrecorded(catalog: ClusterCatalog) -> int:
    """Take out of every shard the tracks the cluster catalogue does not record (a crash's leftovers)."""
    removed = 0
    for shard in catalog.shards():
        removed += _remove_unrecorded_in(catalog, shard)
    return removed


def _remove_unrecorded_in(catalog: ClusterCatalog, shard: Shard) -> int:
    with Refrain.open(shard.directory, writable=True) as writer:
        leftovers = catalog.unrecorded(shard, set(writer.store.catalog.ready_tracks()))
        for local_id in leftovers:
            writer.remove(local_id)
    if leftovers:
        catalog.recount()
    return len(leftovers)

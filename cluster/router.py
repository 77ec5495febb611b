"""The router: one object with :class:`refrain.api.Refrain`'s API over a cluster of shards.

A query is fingerprinted once, here, and sent to every shard in parallel, once
(:func:`refrain.cluster.shard.shard_match`). Each shard weighs the query's codes by the
cluster's count table (:mod:`refrain.cluster.counts`: every code's entries in the whole
catalogue, rewritten by the writer at each commit and memory-mapped by every shard), so
it rates each match as one index of the whole catalogue would; the router maps
shard-local track ids to cluster-wide ones and ranks the union as :func:`matcher.match`
ranks one index's matches.

A shard that does not answer within the deadline fails the whole query with
:class:`ShardUnavailableError`: never an answer from part of the catalogue.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from refrain.api import (IndexInfo, IngestResult, QueryResult, Refrain, TrackMatch, _warm_up_signal, audio_files,
                         file_digest)
from refrain.cluster.engine import ShardEngine, ShardUnavailableError
from refrain.cluster.layout import SCHEDULER_FILE, ClusterCatalog, Shard
from refrain.config import Config
from refrain.fingerprint import Fingerprint, FingerprintParams, fingerprint_signal, load_audio
from refrain.index import IndexStore, Track, TrackMetadata

log = logging.getLogger("refrain.cluster")

__all__ = ["ClusterRefrain", "open_for_matching", "ShardUnavailableError"]

#: How long a query waits for every shard by default (seconds).
DEFAULT_DEADLINE_SECONDS = 10.0
#: How long the warm-up waits for the shards (they may be compiling the matcher's kernels).
WARM_UP_DEADLINE_SECONDS = 300.0


class _ClusterStore:
    """What code written against :attr:`Refrain.store` reads of a cluster: its catalogue."""

    def __init__(self, catalog: ClusterCatalog):
        self.catalog = catalog
        self.directory = catalog.directory

    def upgradable(self) -> list[str]:
        # Shards are upgraded one by one with `refrain upgrade --index SHARD_DIR`.
        return []


class ClusterRefrain:
    """A catalogue partitioned into shards, opened for matching (and, if ``writable``, for ingest and removal).

    It has :class:`refrain.api.Refrain`'s catalogue and matching API, with cluster-wide
    track ids, so that the service, the CLI and rescans use either alike.

    Parameters
    ----------
    catalog : ClusterCatalog
    config : Config
    params : FingerprintParams
        The shards' fingerprint settings.
    writable : bool
    deadline_seconds : float
        Longest wait for every shard's answer to one query (default 10 s).
    """

    def __init__(self, catalog: ClusterCatalog, config: Config, params: FingerprintParams,
                 writable: bool = False, deadline_seconds: float = DEFAULT_DEADLINE_SECONDS):
        self.catalog = catalog
        self.config = config
        self.deadline_seconds = deadline_seconds
        self._engine: ShardEngine | None = None
        self._params = params
        self.writable = writable
        self.store = _ClusterStore(catalog)
        self.last_overhead: dict[str, float] = {}

    @classmethod
    def open(cls, directory: str | os.PathLike, config: Config | None = None, writable: bool = False,
             deadline_seconds: float = DEFAULT_DEADLINE_SECONDS) -> "ClusterRefrain":
        """Open the cluster in ``directory``; queries go through its scheduler (``DIR/scheduler.json``).

        The scheduler is reached at the first query: ingest and removal write the shards'
        directories and need no running shard.

        Raises
        ------
        ClusterOpenError
            If ``directory`` holds no cluster.
        """
        catalog = ClusterCatalog(directory)
        try:
            with IndexStore.open(Path(catalog.shards()[0].directory)) as first:
                params = first.fingerprint_params
        except BaseException:
            catalog.close()
            raise
        try:
            if not catalog.counts_path.exists():  # a cluster made before the count table
                catalog.recount()
        except BaseException:
            catalog.close()
            raise
        return cls(catalog, config or Config(), params, writable, deadline_seconds)

    @property
    def engine(self) -> ShardEngine:
        """The connection to the shards (made at first use).

        Raises
        ------
        ShardUnavailableError
            If the scheduler does not answer.
        """
        if self._engine is None:
            self._engine = ShardEngine(Path(self.catalog.directory) / SCHEDULER_FILE, self.catalog.counts_path,
                                       self.deadline_seconds)
        return self._engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
        self.catalog.close()

    def __enter__(self) -> "ClusterRefrain":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def params(self) -> FingerprintParams:
        """The fingerprint settings of the cluster's shards (queries use them too)."""
        return self._params

    def tracks(self) -> list[Track]:
        """The matchable catalogue recordings, by cluster-wide track id."""
        ready = self.catalog.ready_tracks()
        return [ready[track_id] for track_id in sorted(ready)]

    def track(self, track_id: int) -> Track | None:
        """The matchable recording with this cluster-wide id, or None."""
        return self.catalog.get(track_id)

    def track_count(self) -> int:
        """How many recordings are matchable (counted by the catalogue, not listed)."""
        return self.catalog.totals()[0]

    # -- catalogue writes ----------------------------------------------------------------------

    def _require_writable(self) -> None:
        if not self.writable:
            raise PermissionError(f"{self.catalog.directory}: cluster opened read-only; open it writable to change it")

    def ingest(self, paths: Iterable[os.PathLike], jobs: int = 1,
               metadata: TrackMetadata = TrackMetadata()) -> Iterator[IngestResult]:
        """:meth:`refrain.api.Refrain.ingest` over the cluster: each new track goes to :meth:`ClusterCatalog.placement`.

        A file already in the cluster (same bytes, in any shard) is ``unchanged``; a file
        whose source path is in the cluster with other bytes replaces that track, wherever
        it lives. Each shard written to is saved every ``config.commit_every`` tracks and
        when the generator ends. The cluster's write lock is held until the generator ends
        (:meth:`ClusterCatalog.writing`: another writer is waited for up to the deadline).
        """
        self._require_writable()
        with self.catalog.writing(self.deadline_seconds):
            yield from self._ingest(paths, jobs, metadata)

    def _ingest(self, paths: Iterable[os.PathLike], jobs: int, metadata: TrackMetadata) -> Iterator[IngestResult]:
        todo: list[tuple[str, str]] = []
        queued: set[str] = set()
        for path in audio_files(paths):
            source = str(path)
            try:
                digest = file_digest(path)
            except OSError as err:
                yield IngestResult(source, "error", error=f"{source}: {err.strerror or err}")
                continue
            existing = self.catalog.find_ready(content_hash=digest)
            if existing is not None:
                yield IngestResult(source, "unchanged", existing.track_id, existing.duration, existing.n_landmarks)
            elif digest in queued:
                yield IngestResult(source, "duplicate")
            else:
                queued.add(digest)
                todo.append((source, digest))
        if not todo:
            return
        writers: dict[int, Refrain] = {}
        placement = self.catalog.placement()
        writers[placement.shard_id] = self._writer(placement)
        yield from self._add(writers[placement.shard_id]._fingerprint_all(todo, jobs), writers, metadata)

    def ingest_fingerprint(self, fp: Fingerprint, source: str, content_hash: str,
                           metadata: TrackMetadata = TrackMetadata()) -> IngestResult:
        """:meth:`refrain.api.Refrain.ingest_fingerprint` over the cluster: the track goes to the placement's shard.

        Committed (and counted in the count table) before this returns; ``unchanged`` if a
        recording with these bytes is in the cluster already.
        """
        self._require_writable()
        with self.catalog.writing(self.deadline_seconds):
            existing = self.catalog.find_ready(content_hash=content_hash)
            if existing is not None:
                return IngestResult(source, "unchanged", existing.track_id, existing.duration, existing.n_landmarks)
            (result,) = self._add([(source, content_hash, fp)], {}, metadata)
            return result

    def _add(self, fingerprinted: Iterable[tuple[str, str, Fingerprint | Exception]], writers: dict[int, Refrain],
             metadata: TrackMetadata) -> Iterator[IngestResult]:
        """Add each (source, digest, fingerprint or its error) where the placement says; commit, close ``writers``."""
        uncommitted: dict[int, list[int]] = {}  # per shard, cluster-wide ids its next commit publishes

        def commit(shard_id: int) -> None:
            writers[shard_id].store.commit()
            published = uncommitted.pop(shard_id, [])
            if published:
                # The counts before the tracks: a query that reports a new track weighs its codes.
                self.catalog.recount()
                self.catalog.publish(published)

        try:
            for source, digest, outcome in fingerprinted:
                if isinstance(outcome, Exception):
                    yield IngestResult(source, "error", error=str(outcome))
                    continue
                replaced = self.catalog.find_ready(source=source)
                if replaced is not None:
                    self._remove(replaced.track_id, writers)
                shard = self.catalog.placement()
                if shard.shard_id not in writers:
                    writers[shard.shard_id] = self._writer(shard)
                writer = writers[shard.shard_id]
                local_id = writer.store.add_track(source, digest, outcome, metadata)
                track = Track(local_id, source, digest, outcome.duration, len(outcome), metadata.title,
                              metadata.artist, metadata.isrc, "pending", "")
                track_id = self.catalog.record(shard.shard_id, track)
                pending = uncommitted.setdefault(shard.shard_id, [])
                pending.append(track_id)
                if len(pending) >= self.config.commit_every:
                    commit(shard.shard_id)
                yield IngestResult(source, "updated" if replaced else "added", track_id, outcome.duration,
                                   len(outcome))
        finally:
            for shard_id, writer in writers.items():
                try:
                    commit(shard_id)
                finally:
                    writer.close()

    def _writer(self, shard: Shard) -> Refrain:
        return Refrain.open(shard.directory, config=self.config, writable=True)

    def remove(self, track_id: int) -> Track:
        """Remove a track (takedown) from its shard and the cluster; raises KeyError for an unknown id."""
        self._require_writable()
        writers: dict[int, Refrain] = {}
        with self.catalog.writing(self.deadline_seconds):
            try:
                return self._remove(track_id, writers)
            finally:
                for writer in writers.values():
                    writer.close()

    def _remove(self, track_id: int, writers: dict[int, Refrain]) -> Track:
        track, place = self.catalog.get(track_id), self.catalog.locate(track_id)
        if track is None or place is None:
            raise KeyError(track_id)
        shard, local_id = place
        # Forgotten first: a crash before the shard's removal leaves an unrecorded track,
        # which the router never reports.
        self.catalog.forget(track_id)
        if shard.shard_id not in writers:
            writers[shard.shard_id] = self._writer(shard)
        try:
            writers[shard.shard_id].remove(local_id)
        except KeyError:
            return track  # added in this call and not yet committed: its commit will not publish it
        self.catalog.recount()
        return track

    # -- queries -------------------------------------------------------------------------------

    def match_fingerprint(self, fp: Fingerprint, name: str) -> QueryResult:
        """Match an already computed query fingerprint against every shard (see :meth:`match_with_evidence`)."""
        return self.match_with_evidence(fp, name)[0]

    def match_with_evidence(self, fp: Fingerprint, name: str,
                            stats: dict[str, float] | None = None) -> tuple[QueryResult, dict[int, np.ndarray]]:
        """:meth:`refrain.api.Refrain.match_with_evidence` over every shard at once.

        Raises
        ------
        ShardUnavailableError
            If a shard does not answer within the deadline: no partial answer is given.
        """
        return self._search(fp, name, stats)

    def _search(self, fp: Fingerprint, name: str, stats: dict[str, float] | None = None,
                deadline_seconds: float | None = None) -> tuple[QueryResult, dict[int, np.ndarray]]:
        started = time.perf_counter()
        shards = self.catalog.shards()
        answers = self.engine.each(shards, "match", fp, name, self.config.match, deadline_seconds=deadline_seconds)
        answered = time.perf_counter()
        matches: list[TrackMatch] = []
        for shard, answer in zip(shards, answers):
            for m in answer.matches:
                track_id = self.catalog.cluster_id(shard.shard_id, m.track_id)
                if track_id is not None:  # else a track a crash left unrecorded
                    matches.append(replace(m, track_id=track_id))
            if stats is not None:
                for tier, seconds in answer.tier_seconds.items():
                    stats[tier] = max(stats.get(tier, 0.0), seconds)
        matches.sort(key=lambda m: (-m.confidence, -m.score, m.track_id))
        stale = [shard.shard_id for shard, answer in zip(shards, answers) if not answer.counts_current]
        if stale:
            log.warning("shards %s matched with a count table that did not describe their files (a writer "
                        "between a shard's commit and the table's rewrite): rarity weights may differ "
                        "slightly from one index's", stale)
        self.last_overhead = {"shards": answered - started, "merged": time.perf_counter() - answered,
                              "slowest_shard_matching": max((sum(a.tier_seconds.values()) for a in answers),
                                                            default=0.0),
                              "slowest_shard_call": max((a.seconds for a in answers), default=0.0),
                              "stale_counts": float(len(stale))}
        result = QueryResult(query=name, duration=round(fp.duration, 3), matches=matches)
        return result, {m.track_id: m.points for m in matches}

    def match_signal(self, y: np.ndarray, name: str = "<signal>") -> QueryResult:
        """Match mono samples already at ``self.params.sample_rate``."""
        return self.match_fingerprint(fingerprint_signal(y, self.params, dense_peaks=True), name)

    def match_file(self, path: os.PathLike, name: str | None = None) -> QueryResult:
        """Decode and match one query file (raises AudioDecodeError, FingerprintError as Refrain does)."""
        y = load_audio(path, self.params.sample_rate, self.config.max_query_seconds)
        return self.match_signal(y, str(path) if name is None else name)

    def warm_up(self, deadline_seconds: float = WARM_UP_DEADLINE_SECONDS) -> None:
        """Compile (or load) the matcher's kernels here and in every shard process.

        The shards get ``deadline_seconds`` (default 300 s): a fresh install compiles the
        kernels in every shard process at once.
        """
        signal = _warm_up_signal(self.params.sample_rate)
        self._search(fingerprint_signal(signal, self.params, dense_peaks=True), "<warm-up>",
                     deadline_seconds=deadline_seconds)

    def info(self) -> IndexInfo:
        """Tracks, hours, landmarks of the cluster; bytes and files of all its shards."""
        tracks, seconds, landmarks = self.catalog.totals()
        files: dict[str, int] = {}
        melody_segments: int | None = 0
        for shard in self.catalog.shards():
            with Refrain.open(shard.directory, mmap=True) as refrain:
                prefix = Path(shard.directory).name
                files.update({f"{prefix}/{name}": size for name, size in refrain.store.size_bytes().items()})
                segments = refrain.info().melody_segments
                melody_segments = None if segments is None or melody_segments is None else melody_segments + segments
        return IndexInfo(directory=str(self.catalog.directory), tracks=tracks, hours=round(seconds / 3600.0, 4),
                         landmarks=landmarks, bytes=sum(files.values()), files=files,
                         melody_segments=melody_segments, upgradable=[])



def open_for_matching(directory: str | os.PathLike, cluster: bool = False,
                      config: Config | None = None) -> Refrain | ClusterRefrain:
    """A catalogue opened read-only for matching: an index directory (memory-mapped), or a cluster's router.

    Parameters
    ----------
    directory : path-like
        The index directory, or with ``cluster`` the cluster directory.
    cluster : bool
    config : Config, optional
    """
    if cluster:
        return ClusterRefrain.open(directory, config=config)
    return Refrain.open(directory, config=config, mmap=True)

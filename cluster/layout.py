"""A cluster directory: its shards (ordinary index directories) and the catalogue of who holds which track.

::

    DIR/cluster.sqlite       every track of the cluster: its cluster-wide id, the shard holding it, its
                             id in that shard and its catalogue metadata (:class:`ClusterCatalog`)
    DIR/shards/shard-000/    one Refrain index directory per shard (:class:`refrain.index.IndexStore`)
    DIR/counts.npz           every landmark code's entries over all shards (:mod:`refrain.cluster.counts`),
                             rewritten by the writer at each commit, memory-mapped by every shard
    DIR/scheduler.json       where the engine's scheduler listens (``dask scheduler --scheduler-file``)

The catalogue is partitioned by track: a shard holds every tier of the tracks it owns,
so a takedown, a verification against the peak store or the melody tier's chroma, and
a rebalance touch one shard. A new track goes to the shard holding the fewest catalogue
seconds, so a shard added to a cluster takes the new tracks until it has caught up.

Writes follow the index's own protocol: a new track is recorded here ``pending`` with its
shard-local id, added to its shard, and marked ``ready`` here once the shard has committed
it. Only ready records are read or reported. A crash leaves pending records, whose shard
rows are pending too (removed by that shard's next writer): :meth:`ClusterCatalog.drop_pending`
deletes them when the cluster is next opened for writing. A takedown forgets the record
first, so a crash before the shard's removal leaves an unrecorded shard track, which the
router never reports.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from refrain.cluster.counts import COUNTS_FILE, write_count_table
from refrain.fingerprint import FingerprintParams
from refrain.index import IndexStore, Track
from refrain.index.store import IndexBusyError, IndexOpenError

__all__ = ["ClusterCatalog", "Shard", "ClusterOpenError", "CLUSTER_FILE", "SCHEDULER_FILE"]

CLUSTER_FILE = "cluster.sqlite"
SCHEDULER_FILE = "scheduler.json"
_WRITE_LOCK = ".write.lock"
_SHARDS = "shards"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS shards (
    shard_id  INTEGER PRIMARY KEY,
    directory TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS tracks (
    track_id     INTEGER PRIMARY KEY AUTOINCREMENT,
    shard_id     INTEGER NOT NULL REFERENCES shards (shard_id),
    local_id     INTEGER NOT NULL,
    source       TEXT    NOT NULL,
    content_hash TEXT    NOT NULL,
    duration     REAL    NOT NULL,
    n_landmarks  INTEGER NOT NULL,
    title        TEXT,
    artist       TEXT,
    isrc         TEXT,
    added_at     TEXT    NOT NULL,
    status       TEXT    NOT NULL CHECK (status IN ('pending', 'ready')),
    UNIQUE (shard_id, local_id)
);
CREATE INDEX IF NOT EXISTS tracks_by_content ON tracks (content_hash);
CREATE INDEX IF NOT EXISTS tracks_by_source ON tracks (source);
"""


class ClusterOpenError(IndexOpenError):
    """The directory is not a usable Refrain cluster."""


@dataclass(frozen=True)
class Shard:
    """One shard: its number and its index directory (absolute, as every shard process sees it)."""

    shard_id: int
    directory: str

    @property
    def resource(self) -> str:
        """The engine resource only this shard's processes have: tasks for the shard ask for it."""
        return f"shard-{self.shard_id:03d}"


class ClusterCatalog:
    """The ``cluster.sqlite`` of a cluster directory: shards, and each track's shard and metadata.

    It answers the questions an index's own catalogue answers (``get``, ``find_ready``,
    ``ready_tracks``, ``totals``), with cluster-wide track ids, so that code written
    against one index's catalogue reads a cluster's the same way.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory).resolve()
        path = self.directory / CLUSTER_FILE
        if not path.exists():
            raise ClusterOpenError(f"{directory}: no Refrain cluster here (no {CLUSTER_FILE}); "
                                   "create one with `refrain cluster up --shards N --cluster DIR`")
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA busy_timeout=10000")

    @classmethod
    def create(cls, directory: os.PathLike, shards: int, params: FingerprintParams | None = None) -> "ClusterCatalog":
        """Make a cluster of ``shards`` empty shards in ``directory`` (which must be empty or missing)."""
        if shards < 1:
            raise ValueError("a cluster needs at least one shard")
        directory = Path(directory)
        if directory.exists() and any(directory.iterdir()):
            raise ClusterOpenError(f"{directory}: directory is not empty and holds no Refrain cluster")
        directory.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(str(directory / CLUSTER_FILE), isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(_SCHEMA)
        db.close()
        catalog = cls(directory)
        for _ in range(shards):
            catalog.add_shard(params)
        return catalog

    def close(self) -> None:
        self._db.close()

    # -- shards ------------------------------------------------------------------------------

    def shards(self) -> list[Shard]:
        """Every shard, by number."""
        return [Shard(row["shard_id"], row["directory"])
                for row in self._db.execute("SELECT * FROM shards ORDER BY shard_id")]

    def add_shard(self, params: FingerprintParams | None = None) -> Shard:
        """Create a new, empty shard; new tracks go to it until it holds as many seconds as the others.

        ``params``: the fingerprint settings of a new cluster (later shards take the first shard's).
        """
        existing = self.shards()
        if existing:
            with IndexStore.open(Path(existing[0].directory)) as first:
                params = first.fingerprint_params
        shard_id = max((s.shard_id for s in existing), default=-1) + 1
        directory = self.directory / _SHARDS / f"shard-{shard_id:03d}"
        IndexStore.open(directory, create=True, params=params).close()
        self._db.execute("INSERT INTO shards (shard_id, directory) VALUES (?, ?)", (shard_id, str(directory)))
        self.recount()
        return Shard(shard_id, str(directory))

    @property
    def counts_path(self) -> Path:
        """The cluster's count table (:mod:`refrain.cluster.counts`)."""
        return self.directory / COUNTS_FILE

    def recount(self) -> None:
        """Rewrite the count table from every shard's committed files: after each commit, removal or new shard."""
        write_count_table(self.directory, [(s.shard_id, s.directory) for s in self.shards()])

    def shard(self, shard_id: int) -> Shard:
        row = self._db.execute("SELECT * FROM shards WHERE shard_id = ?", (shard_id,)).fetchone()
        if row is None:
            raise KeyError(shard_id)
        return Shard(row["shard_id"], row["directory"])

    def seconds_per_shard(self) -> dict[int, float]:
        """Catalogue seconds each shard holds."""
        held = dict(self._db.execute("SELECT shard_id, SUM(duration) FROM tracks GROUP BY shard_id").fetchall())
        return {s.shard_id: float(held.get(s.shard_id) or 0.0) for s in self.shards()}

    def placement(self) -> Shard:
        """The shard a new track goes to: the one holding the fewest seconds (the lowest number on a tie)."""
        seconds = self.seconds_per_shard()
        return self.shard(min(seconds, key=lambda shard_id: (seconds[shard_id], shard_id)))

    # -- tracks --------------------------------------------------------------------------------

    def record(self, shard_id: int, track: Track, track_id: int | None = None) -> int:
        """Record, ``pending``, that ``shard_id`` holds ``track`` (its shard-local row); returns the cluster-wide id.

        ``track_id``: keep this cluster-wide id (a track moved between shards); default a new one.
        """
        cursor = self._db.execute(
            "INSERT INTO tracks (track_id, shard_id, local_id, source, content_hash, duration, n_landmarks,"
            " title, artist, isrc, added_at, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending')",
            (track_id, shard_id, track.track_id, track.source, track.content_hash, track.duration,
             track.n_landmarks, track.title, track.artist, track.isrc,
             track.added_at or datetime.now(timezone.utc).isoformat(timespec="seconds")))
        assert cursor.lastrowid is not None  # an INSERT always sets it
        return cursor.lastrowid

    def move(self, track_id: int, shard_id: int, local_id: int) -> None:
        """Record that track ``track_id`` now lives in ``shard_id`` as ``local_id``."""
        self._db.execute("UPDATE tracks SET shard_id = ?, local_id = ? WHERE track_id = ?",
                         (shard_id, local_id, track_id))

    def publish(self, track_ids: list[int]) -> None:
        """Mark recorded tracks ``ready``, once their shard has committed them."""
        self._db.executemany("UPDATE tracks SET status = 'ready' WHERE track_id = ?", [(t,) for t in track_ids])

    @contextmanager
    def writing(self, timeout: float) -> Iterator[None]:
        """Hold the cluster's write lock (``DIR/.write.lock``): one writer at a time, across processes.

        Waits up to ``timeout`` seconds for another writer (a second service worker, a CLI
        ingest) to finish. Records still ``pending`` when the lock is taken were left by a
        crashed writer: they are dropped (:meth:`drop_pending`).

        Raises
        ------
        IndexBusyError
            If another writer held the lock for the whole ``timeout``.
        """
        with open(self.directory / _WRITE_LOCK, "a+") as handle:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise IndexBusyError(f"{self.directory}: another process has been writing to this cluster "
                                             f"for over {timeout:g} s") from None
                    time.sleep(0.05)
            try:
                self.drop_pending()
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def drop_pending(self) -> int:
        """Delete the records a crashed writer left ``pending``; returns how many."""
        return self._db.execute("DELETE FROM tracks WHERE status = 'pending'").rowcount

    def forget(self, track_id: int) -> None:
        self._db.execute("DELETE FROM tracks WHERE track_id = ?", (track_id,))

    def locate(self, track_id: int) -> tuple[Shard, int] | None:
        """(shard, shard-local id) of a recorded track, or None."""
        row = self._db.execute("SELECT shard_id, local_id FROM tracks WHERE track_id = ? AND status = 'ready'",
                               (track_id,)).fetchone()
        return None if row is None else (self.shard(row["shard_id"]), row["local_id"])

    def cluster_id(self, shard_id: int, local_id: int) -> int | None:
        """The cluster-wide id of a shard's track, or None if it is not recorded."""
        row = self._db.execute("SELECT track_id FROM tracks WHERE shard_id = ? AND local_id = ? AND status = 'ready'",
                               (shard_id, local_id)).fetchone()
        return None if row is None else row[0]

    def cluster_ids(self, shard_id: int) -> dict[int, int]:
        """Shard-local id -> cluster-wide id of every track the shard holds."""
        return dict(self._db.execute("SELECT local_id, track_id FROM tracks WHERE shard_id = ? AND status = 'ready'",
                                     (shard_id,)).fetchall())

    def _track(self, row: sqlite3.Row) -> Track:
        return Track(track_id=row["track_id"], source=row["source"], content_hash=row["content_hash"],
                     duration=row["duration"], n_landmarks=row["n_landmarks"], title=row["title"],
                     artist=row["artist"], isrc=row["isrc"], status="ready", added_at=row["added_at"])

    def get(self, track_id: int) -> Track | None:
        """The track with this cluster-wide id, or None."""
        row = self._db.execute("SELECT * FROM tracks WHERE track_id = ? AND status = 'ready'",
                               (track_id,)).fetchone()
        return None if row is None else self._track(row)

    def find_ready(self, content_hash: str | None = None, source: str | None = None) -> Track | None:
        """A track with this content hash (or, failing that filter, this source path), as in one index."""
        column, value = ("content_hash", content_hash) if content_hash is not None else ("source", source)
        row = self._db.execute(f"SELECT * FROM tracks WHERE {column} = ? AND status = 'ready' "
                               "ORDER BY track_id LIMIT 1",
                               (value,)).fetchone()
        return None if row is None else self._track(row)

    def ready_tracks(self) -> dict[int, Track]:
        """Every track of the cluster by cluster-wide id."""
        rows = self._db.execute("SELECT * FROM tracks WHERE status = 'ready'")
        return {row["track_id"]: self._track(row) for row in rows}

    def totals(self) -> tuple[int, float, int]:
        """(tracks, their total seconds, their landmarks)."""
        row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(duration), 0), COALESCE(SUM(n_landmarks), 0)"
                               " FROM tracks WHERE status = 'ready'").fetchone()
        return int(row[0]), float(row[1]), int(row[2])

    def unrecorded(self, shard: Shard, local_ids: set[int]) -> set[int]:
        """Of a shard's tracks, those this catalogue does not record (a crash between the two writes)."""
        return local_ids - set(self.cluster_ids(shard.shard_id))

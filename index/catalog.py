"""Track metadata in SQLite, beside the FAISS files of an index directory.

A track row moves through ``pending`` (landmarks being added, not yet saved) ->
``ready`` (saved and matchable) -> ``removing`` (takedown under way) -> deleted.
Only ``ready`` tracks are ever reported by the matcher; a row left ``pending`` or
``removing`` by a crash is finished off the next time the index is opened for
writing, so a killed ingest never leaves a half-visible track.
"""

from __future__ import annotations

import itertools
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

import numpy as np

__all__ = ["Catalog", "Track", "TrackMetadata"]

# Ids bound in one "IN (...)" statement: well under SQLite's limit on bound variables (999 before 3.32).
_IDS_PER_STATEMENT = 500

# Each entry upgrades the schema by one version (PRAGMA user_version); never edit a
# released entry, append a new one.
_MIGRATIONS = [
    """
    CREATE TABLE tracks (
        track_id     INTEGER PRIMARY KEY AUTOINCREMENT,
        source       TEXT    NOT NULL,
        content_hash TEXT    NOT NULL,
        duration     REAL    NOT NULL,
        n_landmarks  INTEGER NOT NULL,
        title        TEXT,
        artist       TEXT,
        isrc         TEXT,
        status       TEXT    NOT NULL CHECK (status IN ('pending', 'ready', 'removing')),
        added_at     TEXT    NOT NULL
    );
    CREATE INDEX tracks_by_content ON tracks (content_hash);
    CREATE INDEX tracks_by_source ON tracks (source);
    """,
]


@dataclass(frozen=True)
class TrackMetadata:
    """Optional descriptive metadata given at ingest."""

    title: str | None = None
    artist: str | None = None
    isrc: str | None = None


@dataclass(frozen=True)
class Track:
    """One catalogue recording."""

    track_id: int
    source: str
    content_hash: str
    duration: float
    n_landmarks: int
    title: str | None
    artist: str | None
    isrc: str | None
    status: str
    added_at: str


class Catalog:
    """The ``tracks`` table of one index directory."""

    def __init__(self, path: Path, writable: bool = True):
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA busy_timeout=10000")
        if writable:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._migrate()
        elif self._schema_version() != len(_MIGRATIONS):
            raise sqlite3.DatabaseError(f"catalogue schema v{self._schema_version()} needs a "
                                        f"writable open to migrate to v{len(_MIGRATIONS)}")

    def _schema_version(self) -> int:
        return self._db.execute("PRAGMA user_version").fetchone()[0]

    def _migrate(self) -> None:
        version = self._schema_version()
        if version > len(_MIGRATIONS):
            raise sqlite3.DatabaseError(f"catalogue schema v{version} is newer than this Refrain "
                                        f"(v{len(_MIGRATIONS)})")
        for number, script in enumerate(_MIGRATIONS[version:], start=version + 1):
            self._db.executescript(f"BEGIN; {script}; PRAGMA user_version={number}; COMMIT;")

    def close(self) -> None:
        self._db.close()

    def checkpoint(self) -> None:
        """Copy the write-ahead log into the database file and empty it.

        SQLite keeps a WAL file at its largest (~4 MB) until the last connection closes,
        and a writer that stays open (the service, a long ingest) never closes: at 10
        catalogue hours that file was 6 % of the index. A reader in the middle of a
        transaction only makes the checkpoint partial (SQLite then retries at the next).
        """
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def insert_pending(self, source: str, content_hash: str, duration: float, n_landmarks: int,
                       metadata: TrackMetadata = TrackMetadata()) -> int:
        """Insert a ``pending`` row and return its new, never reused, track id."""
        cursor = self._db.execute(
            "INSERT INTO tracks (source, content_hash, duration, n_landmarks, title, artist, isrc,"
            " status, added_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?)",
            (source, content_hash, duration, n_landmarks, metadata.title, metadata.artist,
             metadata.isrc, datetime.now(timezone.utc).isoformat(timespec="seconds")),
        )
        assert cursor.lastrowid is not None  # an INSERT always sets it
        return cursor.lastrowid

    def set_status(self, track_ids: list[int], status: str) -> None:
        self._db.executemany("UPDATE tracks SET status = ? WHERE track_id = ?",
                             [(status, track_id) for track_id in track_ids])

    def delete(self, track_ids: list[int]) -> None:
        self._db.executemany("DELETE FROM tracks WHERE track_id = ?", [(t,) for t in track_ids])

    def get(self, track_id: int) -> Track | None:
        """The ready track with this id, or None."""
        row = self._db.execute("SELECT * FROM tracks WHERE track_id = ? AND status = 'ready'",
                               (track_id,)).fetchone()
        return Track(**row) if row else None

    def find_ready(self, content_hash: str | None = None, source: str | None = None) -> Track | None:
        """A ready track with this content hash (or, failing that filter, this source path)."""
        column, value = ("content_hash", content_hash) if content_hash is not None else ("source", source)
        row = self._db.execute(f"SELECT * FROM tracks WHERE {column} = ? AND status = 'ready' "
                               "ORDER BY track_id LIMIT 1", (value,)).fetchone()
        return Track(**row) if row else None

    def ready_tracks(self) -> dict[int, Track]:
        """All matchable tracks by id."""
        rows = self._db.execute("SELECT * FROM tracks WHERE status = 'ready'").fetchall()
        return {row["track_id"]: Track(**row) for row in rows}

    def ready_durations(self) -> tuple[np.ndarray, np.ndarray]:
        """The matchable tracks' ids (int64, increasing) and durations (float64, seconds).

        Read straight into arrays, without a Python object per track: what a query asks of a
        catalogue of millions of recordings.
        """
        rows = self._db.execute("SELECT track_id, duration FROM tracks WHERE status = 'ready' ORDER BY track_id")
        pairs = np.fromiter(itertools.chain.from_iterable(rows), np.float64).reshape(-1, 2)
        return pairs[:, 0].astype(np.int64), pairs[:, 1].copy()

    def tracks_by_id(self, track_ids: Iterable[int]) -> dict[int, Track]:
        """The ready tracks among ``track_ids``, by id (an id not ready is left out)."""
        wanted = sorted({int(t) for t in track_ids})
        found: dict[int, Track] = {}
        for first in range(0, len(wanted), _IDS_PER_STATEMENT):
            chunk = wanted[first:first + _IDS_PER_STATEMENT]
            rows = self._db.execute(f"SELECT * FROM tracks WHERE status = 'ready' AND track_id IN "
                                    f"({','.join('?' * len(chunk))})", chunk).fetchall()
            found.update((row["track_id"], Track(**row)) for row in rows)
        return found

    def unfinished(self) -> list[int]:
        """Ids of tracks a crash left ``pending`` or ``removing``."""
        rows = self._db.execute("SELECT track_id FROM tracks WHERE status != 'ready'").fetchall()
        return [row[0] for row in rows]

    def totals(self) -> tuple[int, float, int]:
        """(ready tracks, their total seconds, their landmarks)."""
        row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(duration), 0), COALESCE(SUM(n_landmarks), 0)"
                               " FROM tracks WHERE status = 'ready'").fetchone()
        return int(row[0]), float(row[1]), int(row[2])

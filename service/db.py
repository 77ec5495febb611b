"""The service's SQLite database: works, policies, licences, API keys and stored decisions.

The landmark index and its track catalogue live in the index directory
(:mod:`index.store`); this database only adds what the rights service needs on
top, keyed by the index's track ids. Schema upgrades follow ``index/catalog.py``:
a list of migrations applied in order, the version kept in ``PRAGMA user_version``.

One connection is shared by the server's worker threads behind a lock: every
statement is short, and SQLite serialises writers anyway.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from refrain.policy import Licence, Policy

__all__ = ["ServiceDB", "SchemaError", "Work", "ApiKey", "StoredDecision", "DecisionChange", "RescanCandidate",
           "WorkEvidence", "ROLES", "hash_key", "utc_now"]

ROLES = ("uploader", "analyst", "admin")
KEY_PREFIX_LENGTH = 12  # "rk_" + 9 characters: shown in listings and logs, never enough to use

# Each entry upgrades the schema by one version; never edit a released entry, append one.
_MIGRATIONS = [
    """
    CREATE TABLE works (
        work_id       INTEGER PRIMARY KEY AUTOINCREMENT,
        track_id      INTEGER NOT NULL UNIQUE,
        title         TEXT    NOT NULL,
        artists       TEXT    NOT NULL,           -- JSON list of names
        rights_holder TEXT    NOT NULL,
        isrc          TEXT,
        filename      TEXT    NOT NULL,           -- as uploaded
        stored_path   TEXT    NOT NULL,           -- the reference recording kept by the service
        duration      REAL    NOT NULL,
        created_at    TEXT    NOT NULL
    );
    CREATE TABLE policies (
        work_id       INTEGER PRIMARY KEY REFERENCES works (work_id) ON DELETE CASCADE,
        copy          TEXT    NOT NULL,
        remix         TEXT    NOT NULL,
        cover         TEXT    NOT NULL,
        royalty_share REAL    NOT NULL,
        updated_at    TEXT    NOT NULL
    );
    CREATE TABLE licences (
        licence_id    TEXT    PRIMARY KEY,
        work_id       INTEGER NOT NULL,           -- kept after the work is deleted: audit history
        licensee      TEXT    NOT NULL,
        uses          TEXT    NOT NULL,           -- JSON list
        granted_at    TEXT    NOT NULL,
        valid_until   TEXT,
        revoked_at    TEXT
    );
    CREATE INDEX licences_by_work ON licences (work_id);
    CREATE TABLE api_keys (
        prefix        TEXT    PRIMARY KEY,
        key_hash      TEXT    NOT NULL UNIQUE,    -- sha256 hex of the whole key
        role          TEXT    NOT NULL CHECK (role IN ('uploader', 'analyst', 'admin')),
        label         TEXT,
        created_at    TEXT    NOT NULL,
        revoked_at    TEXT
    );
    CREATE TABLE decisions (
        decision_id   TEXT    PRIMARY KEY,
        created_at    TEXT    NOT NULL,
        verdict       TEXT    NOT NULL,
        uploader_id   TEXT,
        key_prefix    TEXT    NOT NULL,
        filename      TEXT    NOT NULL,
        body          TEXT    NOT NULL            -- the JSON answer given to the uploader
    );
    CREATE INDEX decisions_by_time ON decisions (created_at, decision_id);
    CREATE INDEX decisions_by_verdict ON decisions (verdict, created_at);
    CREATE TABLE decision_works (
        decision_id   TEXT    NOT NULL REFERENCES decisions (decision_id) ON DELETE CASCADE,
        work_id       INTEGER,
        track_id      INTEGER NOT NULL,
        points        BLOB    NOT NULL,           -- float32 (n, 2): (query s, reference s)
        spectrogram   BLOB,                       -- PNG of the matched region of the upload
        spectrogram_start REAL,
        spectrogram_end   REAL,
        PRIMARY KEY (decision_id, track_id)
    );
    CREATE INDEX decision_works_by_work ON decision_works (work_id);
    """,
    """
    CREATE TABLE decision_fingerprints (
        decision_id   TEXT    PRIMARY KEY REFERENCES decisions (decision_id) ON DELETE CASCADE,
        fingerprint   BLOB    NOT NULL            -- fingerprint.serialize blob: the upload's peaks
    );
    CREATE TABLE decision_changes (
        change_id     INTEGER PRIMARY KEY AUTOINCREMENT,
        decision_id   TEXT    NOT NULL REFERENCES decisions (decision_id) ON DELETE CASCADE,
        run_id        TEXT    NOT NULL,           -- the rescan run that changed it
        changed_at    TEXT    NOT NULL,
        old_verdict   TEXT    NOT NULL,
        new_verdict   TEXT    NOT NULL,
        reason        TEXT    NOT NULL,           -- why the verdict changed, for the analyst
        old_body      TEXT    NOT NULL,           -- the answer as it stood before the change
        UNIQUE (run_id, decision_id)
    );
    CREATE INDEX decision_changes_by_decision ON decision_changes (decision_id, change_id);
    """,
]


class SchemaError(RuntimeError):
    """The database was written by a newer version of the service."""


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


def _parse(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def hash_key(key: str) -> str:
    """How an API key is stored: its SHA-256 (keys are long random tokens, so no salt is needed)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Work:
    """A catalogue work: a reference recording in the index and its rights metadata."""

    work_id: int
    track_id: int
    title: str
    artists: list[str]
    rights_holder: str
    isrc: str | None
    filename: str
    stored_path: str
    duration: float
    created_at: datetime


@dataclass(frozen=True)
class ApiKey:
    """A stored API key (never the key itself)."""

    prefix: str
    role: str
    label: str | None
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class StoredDecision:
    """A stored decision: the answer given and the per-work evidence."""

    decision_id: str
    created_at: datetime
    verdict: str
    body: dict


@dataclass(frozen=True)
class DecisionChange:
    """A verdict changed after the fact by a rescan (``decision_changes``): what it was, when, why."""

    decision_id: str
    run_id: str
    changed_at: datetime
    old_verdict: str
    new_verdict: str
    reason: str
    old_body: dict


@dataclass(frozen=True)
class RescanCandidate:
    """A stored decision as a rescan sees it: its answer and its fingerprint blob (None before schema v2)."""

    decision_id: str
    created_at: datetime
    verdict: str
    body: dict
    fingerprint: bytes | None


@dataclass(frozen=True)
class WorkEvidence:
    """Evidence of one matched work in a stored decision."""

    track_id: int
    work_id: int | None
    points: np.ndarray
    spectrogram_png: bytes | None
    spectrogram_start: float | None
    spectrogram_end: float | None


class ServiceDB:
    """The service database at ``path`` (created and migrated on open)."""

    def __init__(self, path: Path):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(_MIGRATIONS):
            raise SchemaError(f"{self.path}: service database schema v{version} is newer than this "
                              f"Refrain (v{len(_MIGRATIONS)})")
        for number, script in enumerate(_MIGRATIONS[version:], start=version + 1):
            self._db.executescript(f"BEGIN; {script}; PRAGMA user_version={number}; COMMIT;")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def ping(self) -> bool:
        """Whether the database answers (for the readiness check)."""
        try:
            self._query("SELECT 1")
        except sqlite3.Error:
            return False
        return True

    def _query(self, sql: str, params=()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def _execute(self, sql: str, params=()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, params)

    # -- works ---------------------------------------------------------------------------------

    @staticmethod
    def _work(row: sqlite3.Row) -> Work:
        return Work(work_id=row["work_id"], track_id=row["track_id"], title=row["title"],
                    artists=json.loads(row["artists"]), rights_holder=row["rights_holder"],
                    isrc=row["isrc"], filename=row["filename"], stored_path=row["stored_path"],
                    duration=row["duration"], created_at=_parse(row["created_at"]))

    def add_work(self, track_id: int, title: str, artists: list[str], rights_holder: str,
                 isrc: str | None, filename: str, stored_path: str, duration: float) -> Work:
        cursor = self._execute(
            "INSERT INTO works (track_id, title, artists, rights_holder, isrc, filename, stored_path,"
            " duration, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (track_id, title, json.dumps(artists), rights_holder, isrc, filename, stored_path,
             duration, _iso(utc_now())))
        return self.get_work(int(cursor.lastrowid))

    def get_work(self, work_id: int) -> Work | None:
        rows = self._query("SELECT * FROM works WHERE work_id = ?", (work_id,))
        return self._work(rows[0]) if rows else None

    def works_by_track(self, track_ids: list[int]) -> dict[int, Work]:
        if not track_ids:
            return {}
        marks = ",".join("?" * len(track_ids))
        rows = self._query(f"SELECT * FROM works WHERE track_id IN ({marks})", track_ids)
        return {row["track_id"]: self._work(row) for row in rows}

    def list_works(self, limit: int, offset: int) -> tuple[list[Work], int]:
        rows = self._query("SELECT * FROM works ORDER BY work_id LIMIT ? OFFSET ?", (limit, offset))
        total = self._query("SELECT COUNT(*) FROM works")[0][0]
        return [self._work(row) for row in rows], int(total)

    def delete_work(self, work_id: int) -> None:
        self._execute("DELETE FROM works WHERE work_id = ?", (work_id,))

    # -- policies ------------------------------------------------------------------------------

    def policies(self, work_ids: list[int]) -> dict[int, Policy]:
        """The policies set for these works (works without one are absent)."""
        if not work_ids:
            return {}
        marks = ",".join("?" * len(work_ids))
        rows = self._query(f"SELECT * FROM policies WHERE work_id IN ({marks})", work_ids)
        return {row["work_id"]: Policy(copy=row["copy"], remix=row["remix"], cover=row["cover"],
                                       royalty_share=row["royalty_share"]) for row in rows}

    def set_policy(self, work_id: int, policy: Policy) -> None:
        self._execute(
            "INSERT INTO policies (work_id, copy, remix, cover, royalty_share, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (work_id) DO UPDATE SET copy = excluded.copy,"
            " remix = excluded.remix, cover = excluded.cover,"
            " royalty_share = excluded.royalty_share, updated_at = excluded.updated_at",
            (work_id, policy.copy, policy.remix, policy.cover, policy.royalty_share,
             _iso(utc_now())))

    # -- licences ------------------------------------------------------------------------------

    @staticmethod
    def _licence(row: sqlite3.Row) -> Licence:
        return Licence(licence_id=row["licence_id"], work_id=row["work_id"], licensee=row["licensee"],
                       uses=frozenset(json.loads(row["uses"])), granted_at=_parse(row["granted_at"]),
                       valid_until=_parse(row["valid_until"]), revoked_at=_parse(row["revoked_at"]))

    def add_licence(self, work_id: int, licensee: str, uses: list[str],
                    valid_until: datetime | None) -> Licence:
        licence_id = "lic_" + secrets.token_urlsafe(12)
        self._execute(
            "INSERT INTO licences (licence_id, work_id, licensee, uses, granted_at, valid_until)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (licence_id, work_id, licensee, json.dumps(sorted(set(uses))), _iso(utc_now()),
             _iso(valid_until)))
        return self.get_licence(licence_id)

    def get_licence(self, licence_id: str) -> Licence | None:
        rows = self._query("SELECT * FROM licences WHERE licence_id = ?", (licence_id,))
        return self._licence(rows[0]) if rows else None

    def list_licences(self, work_id: int | None, licensee: str | None, limit: int,
                      offset: int) -> tuple[list[Licence], int]:
        where, params = [], []
        if work_id is not None:
            where.append("work_id = ?")
            params.append(work_id)
        if licensee is not None:
            where.append("licensee = ?")
            params.append(licensee)
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        rows = self._query(f"SELECT * FROM licences{clause} ORDER BY granted_at, licence_id"
                           " LIMIT ? OFFSET ?", (*params, limit, offset))
        total = self._query(f"SELECT COUNT(*) FROM licences{clause}", params)[0][0]
        return [self._licence(row) for row in rows], int(total)

    def revoke_licence(self, licence_id: str) -> Licence | None:
        self._execute("UPDATE licences SET revoked_at = ? WHERE licence_id = ? AND revoked_at IS NULL",
                      (_iso(utc_now()), licence_id))
        return self.get_licence(licence_id)

    # -- API keys ------------------------------------------------------------------------------

    def create_key(self, role: str, label: str | None = None) -> tuple[str, ApiKey]:
        """Make a new key; returns (the key — shown once, never stored — and its record)."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
        key = "rk_" + secrets.token_urlsafe(32)
        prefix = key[:KEY_PREFIX_LENGTH]
        self._execute("INSERT INTO api_keys (prefix, key_hash, role, label, created_at)"
                      " VALUES (?, ?, ?, ?, ?)", (prefix, hash_key(key), role, label, _iso(utc_now())))
        return key, self.get_key(prefix)

    @staticmethod
    def _key(row: sqlite3.Row) -> ApiKey:
        return ApiKey(prefix=row["prefix"], role=row["role"], label=row["label"],
                      created_at=_parse(row["created_at"]), revoked_at=_parse(row["revoked_at"]))

    def get_key(self, prefix: str) -> ApiKey | None:
        rows = self._query("SELECT * FROM api_keys WHERE prefix = ?", (prefix,))
        return self._key(rows[0]) if rows else None

    def authenticate(self, key: str) -> ApiKey | None:
        """The live key record matching this key, or None (unknown or revoked)."""
        rows = self._query("SELECT * FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL",
                           (hash_key(key),))
        return self._key(rows[0]) if rows else None

    def list_keys(self) -> list[ApiKey]:
        return [self._key(row) for row in self._query("SELECT * FROM api_keys ORDER BY created_at")]

    def revoke_key(self, prefix: str) -> ApiKey | None:
        self._execute("UPDATE api_keys SET revoked_at = ? WHERE prefix = ? AND revoked_at IS NULL",
                      (_iso(utc_now()), prefix))
        return self.get_key(prefix)

    # -- decisions -----------------------------------------------------------------------------

    def add_decision(self, decision_id: str, created_at: datetime, verdict: str,
                     uploader_id: str | None, key_prefix: str, filename: str, body: dict,
                     evidence: list[WorkEvidence], fingerprint: bytes | None = None) -> None:
        """Store a decision, its evidence and (for later rescans) the upload's fingerprint blob."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.execute(
                    "INSERT INTO decisions (decision_id, created_at, verdict, uploader_id, key_prefix,"
                    " filename, body) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (decision_id, _iso(created_at), verdict, uploader_id, key_prefix, filename,
                     json.dumps(body)))
                self._db.executemany(
                    "INSERT INTO decision_works (decision_id, work_id, track_id, points, spectrogram,"
                    " spectrogram_start, spectrogram_end) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(decision_id, e.work_id, e.track_id,
                      np.ascontiguousarray(e.points, dtype="<f4").tobytes(), e.spectrogram_png,
                      e.spectrogram_start, e.spectrogram_end) for e in evidence])
                if fingerprint is not None:
                    self._db.execute("INSERT INTO decision_fingerprints (decision_id, fingerprint)"
                                     " VALUES (?, ?)", (decision_id, fingerprint))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def get_decision(self, decision_id: str) -> StoredDecision | None:
        rows = self._query("SELECT * FROM decisions WHERE decision_id = ?", (decision_id,))
        if not rows:
            return None
        row = rows[0]
        return StoredDecision(row["decision_id"], _parse(row["created_at"]), row["verdict"],
                              json.loads(row["body"]))

    def decision_evidence(self, decision_id: str) -> dict[int, WorkEvidence]:
        """Evidence of a stored decision by track id."""
        rows = self._query("SELECT * FROM decision_works WHERE decision_id = ?", (decision_id,))
        return {row["track_id"]: WorkEvidence(
            track_id=row["track_id"], work_id=row["work_id"],
            points=np.frombuffer(row["points"], dtype="<f4").reshape(-1, 2),
            spectrogram_png=row["spectrogram"], spectrogram_start=row["spectrogram_start"],
            spectrogram_end=row["spectrogram_end"]) for row in rows}

    def list_decisions(self, work_id: int | None, verdict: str | None, since: datetime | None,
                       limit: int, offset: int) -> tuple[list[StoredDecision], int]:
        """Stored decisions, newest first, filtered; and how many match the filters in all."""
        where, params = [], []
        if work_id is not None:
            where.append("decision_id IN (SELECT decision_id FROM decision_works WHERE work_id = ?)")
            params.append(work_id)
        if verdict is not None:
            where.append("verdict = ?")
            params.append(verdict)
        if since is not None:
            where.append("created_at >= ?")
            params.append(_iso(since))
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        rows = self._query(f"SELECT * FROM decisions{clause} ORDER BY created_at DESC, decision_id DESC"
                           " LIMIT ? OFFSET ?", (*params, limit, offset))
        total = self._query(f"SELECT COUNT(*) FROM decisions{clause}", params)[0][0]
        return ([StoredDecision(r["decision_id"], _parse(r["created_at"]), r["verdict"],
                                json.loads(r["body"])) for r in rows], int(total))

    # -- rescans -------------------------------------------------------------------------------

    def rescan_ids(self, since: datetime | None) -> list[str]:
        """Ids of the stored decisions made at or after ``since`` (all if None), oldest first."""
        clause, params = ("WHERE created_at >= ?", (_iso(since),)) if since is not None else ("", ())
        rows = self._query(f"SELECT decision_id FROM decisions {clause} ORDER BY created_at, decision_id",
                           params)
        return [row[0] for row in rows]

    def rescan_candidate(self, decision_id: str) -> RescanCandidate | None:
        """A decision with its fingerprint blob (None: stored before fingerprints were kept)."""
        rows = self._query("SELECT d.*, f.fingerprint FROM decisions d LEFT JOIN decision_fingerprints f"
                           " USING (decision_id) WHERE decision_id = ?", (decision_id,))
        if not rows:
            return None
        row = rows[0]
        return RescanCandidate(row["decision_id"], _parse(row["created_at"]), row["verdict"],
                               json.loads(row["body"]), row["fingerprint"])

    def apply_rescan_change(self, decision_id: str, run_id: str, changed_at: datetime, old_verdict: str,
                            new_body: dict, reason: str, evidence: list[WorkEvidence]) -> bool:
        """Replace a decision's verdict and answer after a rescan, keeping the old answer in its history.

        Idempotent per ``(run_id, decision_id)``, so a resumed run can apply again.
        Evidence rows are added for tracks the decision did not match before (points
        only: the upload's audio is not kept); existing evidence stays as recorded.

        Returns
        -------
        bool
            False when nothing was changed: already applied by this run, or the decision is
            gone or no longer has ``old_verdict`` (changed since the rescan read it).
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = self._db.execute("SELECT verdict, body FROM decisions WHERE decision_id = ?",
                                        (decision_id,)).fetchall()
                done = self._db.execute("SELECT 1 FROM decision_changes WHERE run_id = ? AND decision_id = ?",
                                        (run_id, decision_id)).fetchall()
                if not rows or done or rows[0]["verdict"] != old_verdict:
                    self._db.execute("ROLLBACK")
                    return False
                self._db.execute(
                    "INSERT INTO decision_changes (decision_id, run_id, changed_at, old_verdict, new_verdict,"
                    " reason, old_body) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (decision_id, run_id, _iso(changed_at), old_verdict, new_body["verdict"], reason,
                     rows[0]["body"]))
                self._db.execute("UPDATE decisions SET verdict = ?, body = ? WHERE decision_id = ?",
                                 (new_body["verdict"], json.dumps(new_body), decision_id))
                self._db.executemany(
                    "INSERT INTO decision_works (decision_id, work_id, track_id, points) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (decision_id, track_id) DO NOTHING",
                    [(decision_id, e.work_id, e.track_id, np.ascontiguousarray(e.points, dtype="<f4").tobytes())
                     for e in evidence])
                self._db.execute("COMMIT")
                return True
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def rescan_applied(self, decision_id: str, run_id: str) -> bool:
        """Whether the rescan run ``run_id`` changed this decision."""
        return bool(self._query("SELECT 1 FROM decision_changes WHERE run_id = ? AND decision_id = ?",
                                (run_id, decision_id)))

    def decision_history(self, decision_id: str) -> list[DecisionChange]:
        """Every rescan change of a decision, oldest first."""
        rows = self._query("SELECT * FROM decision_changes WHERE decision_id = ? ORDER BY change_id",
                           (decision_id,))
        return [DecisionChange(row["decision_id"], row["run_id"], _parse(row["changed_at"]), row["old_verdict"],
                               row["new_verdict"], row["reason"], json.loads(row["old_body"])) for row in rows]

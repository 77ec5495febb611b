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
import os
import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np

from refrain.policy import Licence, MatchCondition, Policy

__all__ = ["ServiceDB", "SchemaError", "DatabaseBusyError", "LastAdminKeyError", "PrincipalKindError", "Work",
           "ApiKey", "Principal", "StoredDecision", "DecisionChange", "RescanCandidate", "WorkEvidence",
           "CatalogueIntent", "IdempotentDecision",
           "WorkConflict", "Webhook", "Dispute", "Exclusion", "DisputeOpenError", "WorkLink",
           "ROLES", "PRINCIPAL_KINDS", "KIND_OF_ROLE", "hash_key", "utc_now"]

ROLES = ("uploader", "analyst", "admin", "rights_holder")
PRINCIPAL_KINDS = ("uploader", "rights_holder", "analyst_team", "admin")
#: The kind of principal a key of each role belongs to.
KIND_OF_ROLE = {"uploader": "uploader", "analyst": "analyst_team", "admin": "admin", "rights_holder": "rights_holder"}
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
    # Principals: who a key acts for and whom a licence is granted to. Existing keys get one
    # principal per (label, role) — the label is the only owner the old schema recorded —
    # and existing licences the principal named by their licensee; old decisions record the
    # principal of the key that made them, so a rescan checks licences against it.
    """
    CREATE TABLE principals (
        principal_id  INTEGER PRIMARY KEY AUTOINCREMENT,
        name          TEXT    NOT NULL UNIQUE,
        kind          TEXT    NOT NULL CHECK (kind IN ('uploader', 'rights_holder', 'analyst_team', 'admin')),
        created_at    TEXT    NOT NULL
    );
    ALTER TABLE api_keys ADD COLUMN principal_id INTEGER REFERENCES principals (principal_id);
    ALTER TABLE licences ADD COLUMN licensee_principal_id INTEGER REFERENCES principals (principal_id);
    ALTER TABLE decisions ADD COLUMN principal_id INTEGER REFERENCES principals (principal_id);
    CREATE TEMP TABLE key_owners AS
        SELECT prefix,
               COALESCE(NULLIF(TRIM(label), ''), 'keys') || ' (' || role || ')' AS name,
               CASE role WHEN 'uploader' THEN 'uploader' WHEN 'analyst' THEN 'analyst_team'
                         ELSE 'admin' END AS kind,
               created_at
        FROM api_keys;
    INSERT INTO principals (name, kind, created_at)
        SELECT name, kind, MIN(created_at) FROM key_owners GROUP BY name, kind;
    UPDATE api_keys SET principal_id = (SELECT p.principal_id FROM key_owners o JOIN principals p
                                        ON p.name = o.name WHERE o.prefix = api_keys.prefix);
    DROP TABLE key_owners;
    INSERT INTO principals (name, kind, created_at)
        SELECT licensee, 'uploader', MIN(granted_at) FROM licences
        WHERE licensee NOT IN (SELECT name FROM principals) GROUP BY licensee;
    UPDATE licences SET licensee_principal_id = (SELECT principal_id FROM principals
                                                 WHERE name = licences.licensee);
    UPDATE decisions SET principal_id = (SELECT principal_id FROM api_keys
                                         WHERE api_keys.prefix = decisions.key_prefix);
    UPDATE decisions SET body = json_set(body, '$.principal',
                                         (SELECT name FROM principals
                                          WHERE principals.principal_id = decisions.principal_id));
    CREATE INDEX api_keys_by_principal ON api_keys (principal_id);
    CREATE INDEX licences_by_principal ON licences (licensee_principal_id);
    """,
    # Catalogue intents: a registration or deletion in flight between the index and this
    # database. Written before the first side changes and removed with the last, so the
    # startup reconciliation knows what to finish or undo after a crash.
    """
    CREATE TABLE catalogue_intents (
        intent_id     INTEGER PRIMARY KEY AUTOINCREMENT,
        action        TEXT    NOT NULL CHECK (action IN ('register', 'delete')),
        stored_path   TEXT    NOT NULL,           -- the reference recording in works_dir
        track_id      INTEGER,                    -- for a deletion: the track to take out
        created_at    TEXT    NOT NULL
    );
    """,
    # Reviews: an analyst's resolution changes a verdict like a rescan does, so it joins the
    # same history, saying who made it (the key's principal) and of which kind it was.
    """
    ALTER TABLE decision_changes ADD COLUMN kind TEXT NOT NULL DEFAULT 'rescan'
        CHECK (kind IN ('rescan', 'resolution'));
    ALTER TABLE decision_changes ADD COLUMN actor TEXT;
    """,
    # Idempotency keys: a retried upload (same principal, same key, same bytes) gets the decision
    # already made instead of a second one. Stored with the decision, in its transaction.
    """
    CREATE TABLE idempotency_keys (
        principal_id  INTEGER NOT NULL REFERENCES principals (principal_id),
        idempotency_key TEXT  NOT NULL,
        upload_sha256 TEXT    NOT NULL,
        decision_id   TEXT    NOT NULL REFERENCES decisions (decision_id) ON DELETE CASCADE,
        created_at    TEXT    NOT NULL,
        PRIMARY KEY (principal_id, idempotency_key)
    );
    """,
    # Ownership conflicts: a work registered although its recording copies an existing work
    # (the admin said so explicitly). Both claims stay in this queue until resolved.
    """
    CREATE TABLE work_conflicts (
        conflict_id   INTEGER PRIMARY KEY AUTOINCREMENT,
        work_id       INTEGER NOT NULL REFERENCES works (work_id) ON DELETE CASCADE,  -- the newer claim
        claimed_work_id INTEGER NOT NULL REFERENCES works (work_id) ON DELETE CASCADE,  -- the earlier one
        kind          TEXT    NOT NULL,           -- the matcher's kind of the newer recording vs the earlier
        score         REAL    NOT NULL,
        confidence    REAL    NOT NULL,
        spans         TEXT    NOT NULL,           -- JSON list of matcher spans (newer s, earlier s)
        created_at    TEXT    NOT NULL,
        resolved_at   TEXT
    );
    CREATE INDEX work_conflicts_open ON work_conflicts (resolved_at, conflict_id);
    """,
    # Policy conditions: per use, the minimum a match must reach before the policy's action applies.
    """
    ALTER TABLE policies ADD COLUMN conditions TEXT NOT NULL DEFAULT '[]';  -- JSON list of MatchCondition fields
    """,
    # Webhooks an admin registered for decision changes. The secret is kept as given: it signs.
    """
    CREATE TABLE webhooks (
        webhook_id    TEXT    PRIMARY KEY,
        url           TEXT    NOT NULL,
        events        TEXT    NOT NULL,           -- JSON list of event names
        secret        TEXT    NOT NULL,
        created_at    TEXT    NOT NULL
    );
    """,
    # Disputes, reference exclusions and conflict resolutions (issue 19). A dispute's outcome joins
    # the decision history as its own kind of change; decision_changes is rebuilt to allow it
    # (SQLite cannot alter a CHECK constraint).
    """
    CREATE TABLE decision_changes_v2 (
        change_id     INTEGER PRIMARY KEY AUTOINCREMENT,
        decision_id   TEXT    NOT NULL REFERENCES decisions (decision_id) ON DELETE CASCADE,
        run_id        TEXT    NOT NULL,           -- the rescan run, review (rev_…) or dispute (dsp_…)
        changed_at    TEXT    NOT NULL,
        old_verdict   TEXT    NOT NULL,
        new_verdict   TEXT    NOT NULL,
        reason        TEXT    NOT NULL,
        old_body      TEXT    NOT NULL,
        kind          TEXT    NOT NULL DEFAULT 'rescan' CHECK (kind IN ('rescan', 'resolution', 'dispute')),
        actor         TEXT,
        UNIQUE (run_id, decision_id)
    );
    INSERT INTO decision_changes_v2 (change_id, decision_id, run_id, changed_at, old_verdict, new_verdict, reason,
                                     old_body, kind, actor)
        SELECT change_id, decision_id, run_id, changed_at, old_verdict, new_verdict, reason, old_body, kind, actor
        FROM decision_changes;
    DROP TABLE decision_changes;
    ALTER TABLE decision_changes_v2 RENAME TO decision_changes;
    CREATE INDEX decision_changes_by_decision ON decision_changes (decision_id, change_id);
    CREATE TABLE disputes (
        dispute_id    TEXT    PRIMARY KEY,
        decision_id   TEXT    NOT NULL REFERENCES decisions (decision_id) ON DELETE CASCADE,
        principal_id  INTEGER NOT NULL REFERENCES principals (principal_id),  -- who filed it
        reason        TEXT    NOT NULL,
        text          TEXT    NOT NULL,
        track_ids     TEXT    NOT NULL,           -- JSON list: the disputed claims when it was filed
        filed_at      TEXT    NOT NULL,
        outcome       TEXT    CHECK (outcome IN ('release', 'reinstate', 'release_and_exclude')),
        note          TEXT,
        resolved_by   TEXT,                       -- the analyst's principal
        resolved_at   TEXT
    );
    CREATE UNIQUE INDEX disputes_one_open ON disputes (decision_id) WHERE resolved_at IS NULL;
    CREATE INDEX disputes_queue ON disputes (resolved_at, filed_at);
    CREATE TABLE work_exclusions (
        exclusion_id  INTEGER PRIMARY KEY AUTOINCREMENT,
        work_id       INTEGER NOT NULL REFERENCES works (work_id) ON DELETE CASCADE,
        ref_start     REAL    NOT NULL,
        ref_end       REAL    NOT NULL CHECK (ref_end > ref_start),
        reason        TEXT    NOT NULL,
        source        TEXT    NOT NULL,           -- 'api', a dispute (dsp_…) or a conflict (cfl_<id>)
        created_by    TEXT    NOT NULL,
        created_at    TEXT    NOT NULL
    );
    CREATE INDEX work_exclusions_by_work ON work_exclusions (work_id, ref_start);
    -- The resolution standing on each claim an analyst resolved (a review or a dispute's outcome): a rescan
    -- re-decides the upload and applies them again, so that a released claim stays released.
    CREATE TABLE decision_resolutions (
        decision_id   TEXT    NOT NULL REFERENCES decisions (decision_id) ON DELETE CASCADE,
        track_id      INTEGER NOT NULL,
        resolution    TEXT    NOT NULL CHECK (resolution IN ('confirm', 'allow', 'release')),
        run_id        TEXT    NOT NULL,           -- the review (rev_…) or dispute (dsp_…) that made it
        note          TEXT    NOT NULL,
        PRIMARY KEY (decision_id, track_id)
    );
    ALTER TABLE work_conflicts ADD COLUMN resolution TEXT CHECK (resolution IN ('work', 'claimed_work', 'share'));
    ALTER TABLE work_conflicts ADD COLUMN resolution_note TEXT;
    ALTER TABLE work_conflicts ADD COLUMN resolved_by TEXT;
    """,
    # Lineage: keys of rights holders (the role CHECK is widened by rebuilding the table: SQLite
    # cannot alter a CHECK), works owned by a principal, a principal's default policy for its
    # works without one, and published derivatives with the evidence of each link to a parent.
    """
    CREATE TABLE api_keys_widened (
        prefix        TEXT    PRIMARY KEY,
        key_hash      TEXT    NOT NULL UNIQUE,
        role          TEXT    NOT NULL CHECK (role IN ('uploader', 'analyst', 'admin', 'rights_holder')),
        label         TEXT,
        created_at    TEXT    NOT NULL,
        revoked_at    TEXT,
        principal_id  INTEGER REFERENCES principals (principal_id)
    );
    INSERT INTO api_keys_widened (prefix, key_hash, role, label, created_at, revoked_at, principal_id)
        SELECT prefix, key_hash, role, label, created_at, revoked_at, principal_id FROM api_keys;
    DROP TABLE api_keys;
    ALTER TABLE api_keys_widened RENAME TO api_keys;
    CREATE INDEX api_keys_by_principal ON api_keys (principal_id);
    ALTER TABLE works ADD COLUMN owner_principal_id INTEGER REFERENCES principals (principal_id);
    ALTER TABLE works ADD COLUMN published_from TEXT;   -- the decision a published derivative was
    CREATE INDEX works_by_owner ON works (owner_principal_id);
    CREATE UNIQUE INDEX works_by_publication ON works (published_from) WHERE published_from IS NOT NULL;
    CREATE TABLE principal_policies (
        principal_id  INTEGER PRIMARY KEY REFERENCES principals (principal_id),
        copy          TEXT    NOT NULL,
        remix         TEXT    NOT NULL,
        cover         TEXT    NOT NULL,
        royalty_share REAL    NOT NULL,
        conditions    TEXT    NOT NULL DEFAULT '[]',
        updated_at    TEXT    NOT NULL
    );
    CREATE TABLE work_links (
        work_id       INTEGER NOT NULL REFERENCES works (work_id) ON DELETE CASCADE,   -- the derivative
        parent_work_id INTEGER NOT NULL REFERENCES works (work_id) ON DELETE CASCADE,
        decision_id   TEXT    NOT NULL,           -- the decision the derivative was published from
        kind          TEXT    NOT NULL,           -- the matcher's kind of the derivative vs the parent
        score         REAL    NOT NULL,
        confidence    REAL    NOT NULL,
        time_ratio    REAL    NOT NULL,
        pitch_shift_semitones REAL NOT NULL,
        covered_seconds REAL  NOT NULL,           -- seconds of the derivative where the parent sounds
        share         REAL    NOT NULL,           -- covered_seconds / the derivative's duration
        spans         TEXT    NOT NULL,           -- JSON list of matcher spans (derivative s, parent s)
        created_at    TEXT    NOT NULL,
        PRIMARY KEY (work_id, parent_work_id)
    );
    CREATE INDEX work_links_by_parent ON work_links (parent_work_id);
    """,
]


class SchemaError(RuntimeError):
    """The database was written by a newer version of the service."""


class DatabaseBusyError(RuntimeError):
    """Another process held the database locked for longer than the busy timeout; nothing was changed."""


class LastAdminKeyError(ValueError):
    """Revoking this key would leave no live admin key: nobody could manage the service any more."""


class PrincipalKindError(ValueError):
    """A key's role does not fit the kind of the principal it would belong to."""


class DisputeOpenError(ValueError):
    """The decision already has an open dispute."""


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


def _within_period(where: list[str], params: list, column: str, since: datetime | None,
                   until: datetime | None) -> None:
    """Add the conditions ``since <= column < until`` (either bound left out when None) to a query's WHERE parts."""
    if since is not None:
        where.append(f"{column} >= ?")
        params.append(_iso(since))
    if until is not None:
        where.append(f"{column} < ?")
        params.append(_iso(until))


def _parse(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


@contextmanager
def _busy_as_error() -> Iterator[None]:
    try:
        yield
    except sqlite3.OperationalError as err:
        if "locked" in str(err) or "busy" in str(err):
            raise DatabaseBusyError(f"the service database is locked by another process ({err})") from err
        raise


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
    owner_principal_id: int | None = None  # the principal whose keys manage it (None: admins only)
    published_from: str | None = None  # a published derivative: the decision it was published from


@dataclass(frozen=True)
class Principal:
    """Who acts: an uploader organisation, a rights holder, an analyst team or an administrator."""

    principal_id: int
    name: str
    kind: str
    created_at: datetime


@dataclass(frozen=True)
class ApiKey:
    """A stored API key (never the key itself) and the principal it acts for."""

    prefix: str
    role: str
    label: str | None
    created_at: datetime
    revoked_at: datetime | None
    principal_id: int
    principal: str


@dataclass(frozen=True)
class CatalogueIntent:
    """A work registration or deletion begun but not finished (see ``catalogue_intents``)."""

    intent_id: int
    action: str
    stored_path: str
    track_id: int | None


@dataclass(frozen=True)
class StoredDecision:
    """A stored decision: the answer given and the per-work evidence."""

    decision_id: str
    created_at: datetime
    verdict: str
    body: dict


@dataclass(frozen=True)
class DecisionChange:
    """A verdict changed after the fact (``decision_changes``): what it was, when, why, by whom.

    ``kind`` is ``rescan`` (``run_id`` is the rescan run, ``actor`` None) or ``resolution``
    (an analyst's review: ``run_id`` is the review's id, ``actor`` the analyst's principal,
    ``reason`` their note).
    """

    decision_id: str
    run_id: str
    changed_at: datetime
    old_verdict: str
    new_verdict: str
    reason: str
    old_body: dict
    kind: str
    actor: str | None


@dataclass(frozen=True)
class RescanCandidate:
    """A stored decision as a rescan sees it: its answer and its fingerprint blob (None before schema v2)."""

    decision_id: str
    created_at: datetime
    verdict: str
    body: dict
    fingerprint: bytes | None


@dataclass(frozen=True)
class Webhook:
    """A receiver of decision-change notifications, registered by an admin."""

    webhook_id: str
    url: str
    events: list[str]
    secret: str
    created_at: datetime


@dataclass(frozen=True)
class WorkConflict:
    """Two works claiming one recording (``work_conflicts``): the newer work copies the earlier one."""

    conflict_id: int
    work_id: int
    claimed_work_id: int
    kind: str
    score: float
    confidence: float
    spans: list[dict]
    created_at: datetime
    resolved_at: datetime | None
    resolution: str | None = None
    resolution_note: str | None = None
    resolved_by: str | None = None


@dataclass(frozen=True)
class Dispute:
    """An uploader's dispute of the claims on one of their decisions, and how an analyst closed it."""

    dispute_id: str
    decision_id: str
    principal: str
    reason: str
    text: str
    track_ids: list[int]
    filed_at: datetime
    outcome: str | None
    note: str | None
    resolved_by: str | None
    resolved_at: datetime | None


@dataclass(frozen=True)
class Exclusion:
    """A span of a work's reference recording that never counts as evidence of a claim."""

    exclusion_id: int
    work_id: int
    ref_start: float
    ref_end: float
    reason: str
    source: str
    created_by: str
    created_at: datetime


@dataclass(frozen=True)
class IdempotentDecision:
    """The decision an idempotency key was first used for, and the SHA-256 of the upload it was used with."""

    decision_id: str
    upload_sha256: str


@dataclass(frozen=True)
class WorkEvidence:
    """Evidence of one matched work in a stored decision."""

    track_id: int
    work_id: int | None
    points: np.ndarray
    spectrogram_png: bytes | None
    spectrogram_start: float | None
    spectrogram_end: float | None


@dataclass(frozen=True)
class WorkLink:
    """A published derivative's link to one parent work, with the match evidence it was published on."""

    work_id: int
    parent_work_id: int
    decision_id: str
    kind: str
    score: float
    confidence: float
    time_ratio: float
    pitch_shift_semitones: float
    covered_seconds: float
    share: float
    spans: list[dict]
    created_at: datetime


class ServiceDB:
    """The service database at ``path`` (created and migrated on open).

    Parameters
    ----------
    path : Path
    busy_timeout : float
        Seconds a statement waits for another process's lock before
        :class:`DatabaseBusyError` (nothing changed).
    """

    def __init__(self, path: Path, busy_timeout: float = 10.0):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        # Key hashes, licences and upload evidence: readable by the service's user only. SQLite
        # gives its -wal and -shm files the database file's mode. The file is only opened here
        # when new: closing a descriptor of a database this process has open would drop the
        # POSIX locks SQLite holds on it.
        try:
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass
        for existing in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            if existing.exists():
                existing.chmod(0o600)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(_MIGRATIONS):
            raise SchemaError(f"{self.path}: service database schema v{version} is newer than this "
                              f"Refrain (v{len(_MIGRATIONS)})")
        for number, script in enumerate(_MIGRATIONS[version:], start=version + 1):
            try:
                self._db.executescript(f"BEGIN IMMEDIATE; {script}; PRAGMA user_version={number}; COMMIT;")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

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
        with self._lock, _busy_as_error():
            return self._db.execute(sql, params).fetchall()

    def _execute(self, sql: str, params=()) -> sqlite3.Cursor:
        with self._lock, _busy_as_error():
            return self._db.execute(sql, params)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (taken at once: no upgrade deadlock); rolled back on any error."""
        with self._lock, _busy_as_error():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    # -- works ---------------------------------------------------------------------------------

    @staticmethod
    def _work(row: sqlite3.Row) -> Work:
        return Work(work_id=row["work_id"], track_id=row["track_id"], title=row["title"],
                    artists=json.loads(row["artists"]), rights_holder=row["rights_holder"],
                    isrc=row["isrc"], filename=row["filename"], stored_path=row["stored_path"],
                    duration=row["duration"], created_at=_parse(row["created_at"]),
                    owner_principal_id=row["owner_principal_id"], published_from=row["published_from"])

    def add_work(self, track_id: int, title: str, artists: list[str], rights_holder: str,
                 isrc: str | None, filename: str, stored_path: str, duration: float, intent_id: int,
                 conflicts: tuple[dict, ...] = (), owner_principal_id: int | None = None) -> Work:
        """Register a work and close its registration intent, in one transaction.

        ``conflicts``: the existing works its recording copies, registered as ownership
        conflicts with it (keys ``work_id``, ``kind``, ``score``, ``confidence``, ``spans``).
        ``owner_principal_id``: the principal whose keys may manage it (a rights holder's).
        """
        now = _iso(utc_now())
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO works (track_id, title, artists, rights_holder, isrc, filename, stored_path,"
                " duration, created_at, owner_principal_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (track_id, title, json.dumps(artists), rights_holder, isrc, filename, stored_path,
                 duration, now, owner_principal_id))
            work_id = int(cursor.lastrowid)
            db.executemany("INSERT INTO work_conflicts (work_id, claimed_work_id, kind, score, confidence, spans,"
                           " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                           [(work_id, c["work_id"], c["kind"], c["score"], c["confidence"], json.dumps(c["spans"]),
                             now) for c in conflicts])
            db.execute("DELETE FROM catalogue_intents WHERE intent_id = ?", (intent_id,))
        return self.get_work(work_id)

    def list_conflicts(self, include_resolved: bool, limit: int, offset: int) -> tuple[list[WorkConflict], int]:
        """Ownership conflicts, oldest first (open ones only unless ``include_resolved``); and how many in all."""
        clause = "" if include_resolved else " WHERE resolved_at IS NULL"
        rows = self._query(f"SELECT * FROM work_conflicts{clause} ORDER BY conflict_id LIMIT ? OFFSET ?",
                           (limit, offset))
        total = self._query(f"SELECT COUNT(*) FROM work_conflicts{clause}")[0][0]
        return [self._conflict(row) for row in rows], int(total)

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

    def delete_work(self, work_id: int) -> tuple[Work, CatalogueIntent] | None:
        """Delete a work's row and record the intent to take its track out of the index, atomically.

        Returns None for an unknown work. The caller removes the track and then
        :meth:`finish_intent`; after a crash the startup reconciliation does.
        """
        with self._transaction() as db:
            rows = db.execute("SELECT * FROM works WHERE work_id = ?", (work_id,)).fetchall()
            if not rows:
                return None
            work = self._work(rows[0])
            db.execute("DELETE FROM works WHERE work_id = ?", (work_id,))
            cursor = db.execute("INSERT INTO catalogue_intents (action, stored_path, track_id, created_at)"
                                " VALUES ('delete', ?, ?, ?)", (work.stored_path, work.track_id, _iso(utc_now())))
        return work, CatalogueIntent(int(cursor.lastrowid), "delete", work.stored_path, work.track_id)

    def work_by_stored_path(self, stored_path: str) -> Work | None:
        rows = self._query("SELECT * FROM works WHERE stored_path = ?", (stored_path,))
        return self._work(rows[0]) if rows else None

    # -- catalogue intents ---------------------------------------------------------------------

    def begin_registration(self, stored_path: str) -> CatalogueIntent:
        """Record that ``stored_path`` is about to be ingested (before the index changes)."""
        cursor = self._execute("INSERT INTO catalogue_intents (action, stored_path, created_at)"
                               " VALUES ('register', ?, ?)", (stored_path, _iso(utc_now())))
        return CatalogueIntent(int(cursor.lastrowid), "register", stored_path, None)

    def finish_intent(self, intent_id: int) -> None:
        self._execute("DELETE FROM catalogue_intents WHERE intent_id = ?", (intent_id,))

    def unfinished_intents(self) -> list[CatalogueIntent]:
        rows = self._query("SELECT * FROM catalogue_intents ORDER BY intent_id")
        return [CatalogueIntent(row["intent_id"], row["action"], row["stored_path"], row["track_id"])
                for row in rows]

    def stored_paths(self) -> set[str]:
        """The reference recordings registered works keep."""
        return {row[0] for row in self._query("SELECT stored_path FROM works")}

    def work_track_ids(self) -> set[int]:
        return {row[0] for row in self._query("SELECT track_id FROM works")}

    # -- policies ------------------------------------------------------------------------------

    def policies(self, work_ids: list[int]) -> dict[int, Policy]:
        """The policies set for these works (works without one are absent)."""
        if not work_ids:
            return {}
        marks = ",".join("?" * len(work_ids))
        rows = self._query(f"SELECT * FROM policies WHERE work_id IN ({marks})", work_ids)
        return {row["work_id"]: self._policy(row) for row in rows}

    @staticmethod
    def _policy(row: sqlite3.Row) -> Policy:
        return Policy(copy=row["copy"], remix=row["remix"], cover=row["cover"], royalty_share=row["royalty_share"],
                      conditions=tuple(MatchCondition(**c) for c in json.loads(row["conditions"])))

    def set_policy(self, work_id: int, policy: Policy) -> None:
        self._execute(
            "INSERT INTO policies (work_id, copy, remix, cover, royalty_share, conditions, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (work_id) DO UPDATE SET copy = excluded.copy,"
            " remix = excluded.remix, cover = excluded.cover, royalty_share = excluded.royalty_share,"
            " conditions = excluded.conditions, updated_at = excluded.updated_at",
            (work_id, policy.copy, policy.remix, policy.cover, policy.royalty_share,
             json.dumps([asdict(c) for c in policy.conditions]), _iso(utc_now())))

    # -- webhooks ------------------------------------------------------------------------------

    @staticmethod
    def _webhook(row: sqlite3.Row) -> Webhook:
        return Webhook(row["webhook_id"], row["url"], json.loads(row["events"]), row["secret"],
                       _parse(row["created_at"]))

    def add_webhook(self, url: str, events: list[str], secret: str) -> Webhook:
        webhook_id = "wh_" + secrets.token_urlsafe(9)
        self._execute("INSERT INTO webhooks (webhook_id, url, events, secret, created_at) VALUES (?, ?, ?, ?, ?)",
                      (webhook_id, url, json.dumps(events), secret, _iso(utc_now())))
        return self._webhook(self._query("SELECT * FROM webhooks WHERE webhook_id = ?", (webhook_id,))[0])

    def list_webhooks(self, event: str | None = None) -> list[Webhook]:
        """The registered webhooks (those subscribed to ``event`` if given), oldest first."""
        hooks = [self._webhook(row) for row in self._query("SELECT * FROM webhooks ORDER BY created_at, webhook_id")]
        return [hook for hook in hooks if event is None or event in hook.events]

    def delete_webhook(self, webhook_id: str) -> bool:
        return self._execute("DELETE FROM webhooks WHERE webhook_id = ?", (webhook_id,)).rowcount > 0

    # -- licences ------------------------------------------------------------------------------

    _LICENCES = ("SELECT l.*, p.name AS licensee_name FROM licences l"
                 " LEFT JOIN principals p ON p.principal_id = l.licensee_principal_id")

    @staticmethod
    def _licence(row: sqlite3.Row) -> Licence:
        # The licensee is the principal's name (unique): policy compares it with the name of
        # the principal whose key made the upload, never with anything the client typed.
        return Licence(licence_id=row["licence_id"], work_id=row["work_id"],
                       licensee=row["licensee_name"] or row["licensee"],
                       uses=frozenset(json.loads(row["uses"])), granted_at=_parse(row["granted_at"]),
                       valid_until=_parse(row["valid_until"]), revoked_at=_parse(row["revoked_at"]))

    def add_licence(self, work_id: int, licensee: Principal, uses: list[str],
                    valid_until: datetime | None) -> Licence:
        licence_id = "lic_" + secrets.token_urlsafe(12)
        self._execute(
            "INSERT INTO licences (licence_id, work_id, licensee, licensee_principal_id, uses, granted_at,"
            " valid_until) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (licence_id, work_id, licensee.name, licensee.principal_id, json.dumps(sorted(set(uses))),
             _iso(utc_now()), _iso(valid_until)))
        return self.get_licence(licence_id)

    def get_licence(self, licence_id: str) -> Licence | None:
        rows = self._query(f"{self._LICENCES} WHERE licence_id = ?", (licence_id,))
        return self._licence(rows[0]) if rows else None

    def list_licences(self, work_id: int | None, licensee: str | None, limit: int,
                      offset: int) -> tuple[list[Licence], int]:
        where, params = [], []
        if work_id is not None:
            where.append("l.work_id = ?")
            params.append(work_id)
        if licensee is not None:
            where.append("p.name = ?")
            params.append(licensee)
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        rows = self._query(f"{self._LICENCES}{clause} ORDER BY l.granted_at, l.licence_id"
                           " LIMIT ? OFFSET ?", (*params, limit, offset))
        total = self._query("SELECT COUNT(*) FROM licences l LEFT JOIN principals p"
                            f" ON p.principal_id = l.licensee_principal_id{clause}", params)[0][0]
        return [self._licence(row) for row in rows], int(total)

    def revoke_licence(self, licence_id: str) -> Licence | None:
        self._execute("UPDATE licences SET revoked_at = ? WHERE licence_id = ? AND revoked_at IS NULL",
                      (_iso(utc_now()), licence_id))
        return self.get_licence(licence_id)

    # -- principals ----------------------------------------------------------------------------

    @staticmethod
    def _principal(row: sqlite3.Row) -> Principal:
        return Principal(principal_id=row["principal_id"], name=row["name"], kind=row["kind"],
                         created_at=_parse(row["created_at"]))

    def get_principal(self, name: str) -> Principal | None:
        rows = self._query("SELECT * FROM principals WHERE name = ?", (name,))
        return self._principal(rows[0]) if rows else None

    def list_principals(self) -> list[Principal]:
        return [self._principal(row) for row in self._query("SELECT * FROM principals ORDER BY principal_id")]

    def ensure_principal(self, name: str, kind: str) -> Principal:
        """The principal called ``name``, created with ``kind`` if missing.

        Raises
        ------
        PrincipalKindError
            If it exists with another kind.
        """
        if kind not in PRINCIPAL_KINDS:
            raise ValueError(f"unknown principal kind {kind!r}; kinds: {', '.join(PRINCIPAL_KINDS)}")
        with self._transaction() as db:
            db.execute("INSERT INTO principals (name, kind, created_at) VALUES (?, ?, ?)"
                       " ON CONFLICT (name) DO NOTHING", (name, kind, _iso(utc_now())))
            found = self._principal(db.execute("SELECT * FROM principals WHERE name = ?", (name,)).fetchone())
        if found.kind != kind:
            raise PrincipalKindError(f"principal {name!r} is of kind {found.kind}, not {kind}")
        return found

    # -- API keys ------------------------------------------------------------------------------

    def create_key(self, role: str, principal: str, label: str | None = None) -> tuple[str, ApiKey]:
        """Make a new key acting for ``principal`` (created if missing, with the kind the role implies).

        Returns
        -------
        key : str
            The key itself: shown once, never stored.
        record : ApiKey

        Raises
        ------
        PrincipalKindError
            If the principal exists with a kind the role does not fit.
        """
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
        owner = self.ensure_principal(principal, KIND_OF_ROLE[role])
        key = "rk_" + secrets.token_urlsafe(32)
        prefix = key[:KEY_PREFIX_LENGTH]
        self._execute("INSERT INTO api_keys (prefix, key_hash, role, label, created_at, principal_id)"
                      " VALUES (?, ?, ?, ?, ?, ?)",
                      (prefix, hash_key(key), role, label, _iso(utc_now()), owner.principal_id))
        return key, self.get_key(prefix)

    _KEYS = ("SELECT k.*, p.name AS principal_name FROM api_keys k"
             " JOIN principals p ON p.principal_id = k.principal_id")

    @staticmethod
    def _key(row: sqlite3.Row) -> ApiKey:
        return ApiKey(prefix=row["prefix"], role=row["role"], label=row["label"],
                      created_at=_parse(row["created_at"]), revoked_at=_parse(row["revoked_at"]),
                      principal_id=row["principal_id"], principal=row["principal_name"])

    def get_key(self, prefix: str) -> ApiKey | None:
        rows = self._query(f"{self._KEYS} WHERE k.prefix = ?", (prefix,))
        return self._key(rows[0]) if rows else None

    def authenticate(self, key: str) -> ApiKey | None:
        """The live key record matching this key, or None (unknown or revoked)."""
        rows = self._query(f"{self._KEYS} WHERE k.key_hash = ? AND k.revoked_at IS NULL", (hash_key(key),))
        return self._key(rows[0]) if rows else None

    def list_keys(self) -> list[ApiKey]:
        return [self._key(row) for row in self._query(f"{self._KEYS} ORDER BY k.created_at, k.prefix")]

    def revoke_key(self, prefix: str) -> ApiKey | None:
        """Revoke a key (a no-op if it already is); None if unknown.

        Raises
        ------
        LastAdminKeyError
            If it is the last live admin key.
        """
        with self._transaction() as db:
            row = db.execute("SELECT role, revoked_at FROM api_keys WHERE prefix = ?", (prefix,)).fetchone()
            if row is None:
                return None
            if row["role"] == "admin" and row["revoked_at"] is None:
                live_admins = db.execute("SELECT COUNT(*) FROM api_keys WHERE role = 'admin'"
                                         " AND revoked_at IS NULL").fetchone()[0]
                if live_admins <= 1:
                    raise LastAdminKeyError(f"key {prefix} is the last live admin key: create another "
                                            "admin key before revoking it")
            db.execute("UPDATE api_keys SET revoked_at = ? WHERE prefix = ? AND revoked_at IS NULL",
                       (_iso(utc_now()), prefix))
        return self.get_key(prefix)

    # -- decisions -----------------------------------------------------------------------------

    def add_decision(self, decision_id: str, created_at: datetime, verdict: str,
                     uploader_id: str | None, key: ApiKey, filename: str, body: dict,
                     evidence: list[WorkEvidence], fingerprint: bytes | None = None,
                     idempotency: tuple[str, str] | None = None) -> IdempotentDecision | None:
        """Store a decision made for ``key``'s principal, its evidence and the upload's fingerprint blob.

        ``idempotency`` is ``(idempotency key, upload sha256)``: stored with the decision. If
        the principal already used that key (a concurrent retry won the race), nothing is
        stored and the earlier decision is returned instead; otherwise None.
        """
        with self._lock, _busy_as_error():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT INTO decisions (decision_id, created_at, verdict, uploader_id, key_prefix,"
                    " filename, body, principal_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (decision_id, _iso(created_at), verdict, uploader_id, key.prefix, filename,
                     json.dumps(body), key.principal_id))
                self._db.executemany(
                    "INSERT INTO decision_works (decision_id, work_id, track_id, points, spectrogram,"
                    " spectrogram_start, spectrogram_end) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(decision_id, e.work_id, e.track_id,
                      np.ascontiguousarray(e.points, dtype="<f4").tobytes(), e.spectrogram_png,
                      e.spectrogram_start, e.spectrogram_end) for e in evidence])
                if fingerprint is not None:
                    self._db.execute("INSERT INTO decision_fingerprints (decision_id, fingerprint)"
                                     " VALUES (?, ?)", (decision_id, fingerprint))
                if idempotency is not None:
                    earlier = self._idempotent(key.principal_id, idempotency[0])
                    if earlier is not None:
                        self._db.execute("ROLLBACK")
                        return earlier
                    self._db.execute("INSERT INTO idempotency_keys (principal_id, idempotency_key, upload_sha256,"
                                     " decision_id, created_at) VALUES (?, ?, ?, ?, ?)",
                                     (key.principal_id, *idempotency, decision_id, _iso(created_at)))
                self._db.execute("COMMIT")
                return None
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _idempotent(self, principal_id: int, idempotency_key: str) -> IdempotentDecision | None:
        row = self._db.execute("SELECT decision_id, upload_sha256 FROM idempotency_keys"
                               " WHERE principal_id = ? AND idempotency_key = ?",
                               (principal_id, idempotency_key)).fetchone()
        return IdempotentDecision(row["decision_id"], row["upload_sha256"]) if row else None

    def idempotent_decision(self, principal_id: int, idempotency_key: str) -> IdempotentDecision | None:
        """The decision this principal's idempotency key was first used for; None if unused."""
        with self._lock, _busy_as_error():
            return self._idempotent(principal_id, idempotency_key)

    def forget_spectrograms(self, before: datetime) -> int:
        """Drop the spectrogram images of decisions made before ``before``; how many were dropped.

        The aligned points stay: they are the evidence; the image only illustrates it.
        """
        cursor = self._execute(
            "UPDATE decision_works SET spectrogram = NULL WHERE spectrogram IS NOT NULL AND decision_id IN"
            " (SELECT decision_id FROM decisions WHERE created_at < ?)", (_iso(before),))
        return cursor.rowcount

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
                       limit: int, offset: int, *, until: datetime | None = None, uploader_id: str | None = None,
                       kind: str | None = None, oldest_first: bool = False) -> tuple[list[StoredDecision], int]:
        """Stored decisions, newest first (or oldest first), filtered; and how many match the filters in all.

        ``work_id`` keeps decisions that matched the work or claim it as the ancestor of a
        matched derivative (a lineage claim, docs/lineage.md); ``since`` is inclusive, ``until``
        exclusive; ``kind`` keeps decisions with a work matched as that matcher kind.
        """
        where, params = [], []
        if work_id is not None:
            where.append("(decision_id IN (SELECT decision_id FROM decision_works WHERE work_id = ?)"
                         " OR EXISTS (SELECT 1 FROM json_each(decisions.body, '$.lineage')"
                         " WHERE json_extract(value, '$.work_id') = ?))")
            params.extend([work_id, work_id])
        if verdict is not None:
            where.append("verdict = ?")
            params.append(verdict)
        _within_period(where, params, "created_at", since, until)
        if uploader_id is not None:
            where.append("uploader_id = ?")
            params.append(uploader_id)
        if kind is not None:
            where.append("EXISTS (SELECT 1 FROM json_each(decisions.body, '$.works')"
                         " WHERE json_extract(value, '$.kind') = ?)")
            params.append(kind)
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        order = "ASC" if oldest_first else "DESC"
        rows = self._query(f"SELECT * FROM decisions{clause} ORDER BY created_at {order}, decision_id {order}"
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
                self._record_change(decision_id, run_id, changed_at, old_verdict, new_body, reason,
                                    rows[0]["body"], "rescan", None)
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

    def _record_change(self, decision_id: str, run_id: str, changed_at: datetime, old_verdict: str,
                       new_body: dict, reason: str, old_body_json: str, kind: str, actor: str | None) -> None:
        """Within a caller's write transaction: keep the old answer in the history, store the new one."""
        self._db.execute(
            "INSERT INTO decision_changes (decision_id, run_id, changed_at, old_verdict, new_verdict,"
            " reason, old_body, kind, actor) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (decision_id, run_id, _iso(changed_at), old_verdict, new_body["verdict"], reason,
             old_body_json, kind, actor))
        self._db.execute("UPDATE decisions SET verdict = ?, body = ? WHERE decision_id = ?",
                         (new_body["verdict"], json.dumps(new_body), decision_id))

    def apply_resolution(self, decision_id: str, review_id: str, resolved_at: datetime, old_body: dict,
                         new_body: dict, actor: str, note: str, resolutions: dict[int, str] | None = None) -> bool:
        """Store an analyst's resolution of a decision, keeping the old answer in its history.

        ``resolutions`` (track id -> resolution) are kept as the claims' standing resolutions
        (:meth:`standing_resolutions`), in the same transaction.

        Returns
        -------
        bool
            False when nothing was changed: the decision is gone, or its answer is no longer
            ``old_body`` (a rescan or another review changed it since it was read).
        """
        with self._lock, _busy_as_error():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT body FROM decisions WHERE decision_id = ?",
                                       (decision_id,)).fetchone()
                if row is None or json.loads(row["body"]) != old_body:
                    self._db.execute("ROLLBACK")
                    return False
                self._record_change(decision_id, review_id, resolved_at, old_body["verdict"], new_body, note,
                                    row["body"], "resolution", actor)
                self._keep_resolutions(decision_id, resolutions or {}, review_id, note)
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
        """Every change of a decision (rescans and resolutions), oldest first."""
        rows = self._query("SELECT * FROM decision_changes WHERE decision_id = ? ORDER BY change_id",
                           (decision_id,))
        return [DecisionChange(row["decision_id"], row["run_id"], _parse(row["changed_at"]), row["old_verdict"],
                               row["new_verdict"], row["reason"], json.loads(row["old_body"]), row["kind"],
                               row["actor"]) for row in rows]

    # -- disputes, reference exclusions and conflict resolutions ---------------------------------

    @staticmethod
    def _conflict(row: sqlite3.Row) -> WorkConflict:
        return WorkConflict(row["conflict_id"], row["work_id"], row["claimed_work_id"], row["kind"], row["score"],
                            row["confidence"], json.loads(row["spans"]), _parse(row["created_at"]),
                            _parse(row["resolved_at"]), row["resolution"], row["resolution_note"],
                            row["resolved_by"])

    def get_conflict(self, conflict_id: int) -> WorkConflict | None:
        rows = self._query("SELECT * FROM work_conflicts WHERE conflict_id = ?", (conflict_id,))
        return self._conflict(rows[0]) if rows else None

    def open_conflicts(self) -> list[WorkConflict]:
        """Every unresolved ownership conflict (they hold royalties), oldest first."""
        return [self._conflict(row) for row in
                self._query("SELECT * FROM work_conflicts WHERE resolved_at IS NULL ORDER BY conflict_id")]

    def resolve_conflict(self, conflict_id: int, resolution: str, note: str, actor: str,
                         exclusion: tuple[int, list[tuple[float, float]]] | None) -> bool:
        """Close an open conflict; the losing work's span (``exclusion``: work id, reference spans) is excluded
        in the same transaction. False if the conflict is unknown or already resolved."""
        now = _iso(utc_now())
        with self._transaction() as db:
            done = db.execute("UPDATE work_conflicts SET resolved_at = ?, resolution = ?, resolution_note = ?,"
                              " resolved_by = ? WHERE conflict_id = ? AND resolved_at IS NULL",
                              (now, resolution, note, actor, conflict_id)).rowcount
            if done and exclusion is not None:
                work_id, spans = exclusion
                db.executemany("INSERT INTO work_exclusions (work_id, ref_start, ref_end, reason, source, created_by,"
                               " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                               [(work_id, start, end, note, f"cfl_{conflict_id}", actor, now)
                                for start, end in spans])
        return bool(done)

    @staticmethod
    def _exclusion(row: sqlite3.Row) -> Exclusion:
        return Exclusion(row["exclusion_id"], row["work_id"], row["ref_start"], row["ref_end"], row["reason"],
                         row["source"], row["created_by"], _parse(row["created_at"]))

    def add_exclusion(self, work_id: int, ref_start: float, ref_end: float, reason: str, created_by: str) -> Exclusion:
        cursor = self._execute("INSERT INTO work_exclusions (work_id, ref_start, ref_end, reason, source, created_by,"
                               " created_at) VALUES (?, ?, ?, ?, 'api', ?, ?)",
                               (work_id, ref_start, ref_end, reason, created_by, _iso(utc_now())))
        return self._exclusion(self._query("SELECT * FROM work_exclusions WHERE exclusion_id = ?",
                                           (cursor.lastrowid,))[0])

    def list_exclusions(self, work_id: int) -> list[Exclusion]:
        rows = self._query("SELECT * FROM work_exclusions WHERE work_id = ? ORDER BY ref_start, exclusion_id",
                           (work_id,))
        return [self._exclusion(row) for row in rows]

    def exclusions_by_work(self, work_ids: list[int]) -> dict[int, list[tuple[float, float]]]:
        """The excluded reference spans of these works (works without any are absent)."""
        if not work_ids:
            return {}
        marks = ",".join("?" * len(work_ids))
        found: dict[int, list[tuple[float, float]]] = {}
        for row in self._query(f"SELECT work_id, ref_start, ref_end FROM work_exclusions WHERE work_id IN ({marks})"
                               " ORDER BY ref_start", work_ids):
            found.setdefault(row["work_id"], []).append((row["ref_start"], row["ref_end"]))
        return found

    def delete_exclusion(self, work_id: int, exclusion_id: int) -> bool:
        return self._execute("DELETE FROM work_exclusions WHERE work_id = ? AND exclusion_id = ?",
                             (work_id, exclusion_id)).rowcount > 0

    def decision_principal_id(self, decision_id: str) -> int | None:
        """The principal whose key made a stored decision (None: unknown decision, or stored before principals)."""
        rows = self._query("SELECT principal_id FROM decisions WHERE decision_id = ?", (decision_id,))
        return rows[0][0] if rows else None

    _DISPUTES = ("SELECT d.*, p.name AS principal_name FROM disputes d"
                 " JOIN principals p ON p.principal_id = d.principal_id")

    @staticmethod
    def _dispute(row: sqlite3.Row) -> Dispute:
        return Dispute(row["dispute_id"], row["decision_id"], row["principal_name"], row["reason"], row["text"],
                       json.loads(row["track_ids"]), _parse(row["filed_at"]), row["outcome"], row["note"],
                       row["resolved_by"], _parse(row["resolved_at"]))

    def add_dispute(self, decision_id: str, principal_id: int, reason: str, text: str,
                    track_ids: list[int]) -> Dispute:
        """File a dispute.

        Raises
        ------
        DisputeOpenError
            If the decision already has an open dispute (nothing is stored).
        """
        dispute_id = "dsp_" + secrets.token_urlsafe(9)
        try:
            self._execute("INSERT INTO disputes (dispute_id, decision_id, principal_id, reason, text, track_ids,"
                          " filed_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                          (dispute_id, decision_id, principal_id, reason, text, json.dumps(track_ids),
                           _iso(utc_now())))
        except sqlite3.IntegrityError:
            raise DisputeOpenError(f"decision {decision_id} already has an open dispute") from None
        return self.get_dispute(dispute_id)

    def disputes_claims_of(self, dispute_id: str, holder_id: int) -> bool:
        """Whether a dispute disputes a claim of a work that principal owns (its rights holder may follow it)."""
        return bool(self._query("SELECT 1 FROM disputes d, json_each(d.track_ids) t JOIN works w"
                                " ON w.track_id = t.value WHERE d.dispute_id = ? AND w.owner_principal_id = ?"
                                " LIMIT 1", (dispute_id, holder_id)))

    def get_dispute(self, dispute_id: str) -> Dispute | None:
        rows = self._query(f"{self._DISPUTES} WHERE d.dispute_id = ?", (dispute_id,))
        return self._dispute(rows[0]) if rows else None

    def decision_disputes(self, decision_id: str) -> list[Dispute]:
        """Every dispute of one decision, oldest first."""
        return [self._dispute(row) for row in
                self._query(f"{self._DISPUTES} WHERE d.decision_id = ? ORDER BY d.filed_at", (decision_id,))]

    def list_disputes(self, status: str, reason: str | None, work_id: int | None, since: datetime | None,
                      until: datetime | None, limit: int, offset: int,
                      holder_id: int | None = None) -> tuple[list[Dispute], int]:
        """Disputes, oldest first, filtered (``status``: ``open``, ``resolved`` or ``all``; ``work_id``: the
        decision matched that work or disputes its lineage claim; ``holder_id``: a disputed claim is of a work
        that principal owns, directly or through a lineage); and how many match the filters in all."""
        where: list[str] = []
        params: list = []
        if holder_id is not None:
            where.append("d.dispute_id IN (SELECT dispute_id FROM disputes, json_each(disputes.track_ids) t"
                         " JOIN works w ON w.track_id = t.value WHERE w.owner_principal_id = ?)")
            params.append(holder_id)
        if status != "all":
            where.append("d.resolved_at IS NULL" if status == "open" else "d.resolved_at IS NOT NULL")
        if reason is not None:
            where.append("d.reason = ?")
            params.append(reason)
        if work_id is not None:  # matched directly, or disputed as an ancestor attributed through a lineage
            where.append("(d.decision_id IN (SELECT decision_id FROM decision_works WHERE work_id = ?)"
                         " OR d.dispute_id IN (SELECT dispute_id FROM disputes, json_each(disputes.track_ids) t"
                         " JOIN works w ON w.track_id = t.value WHERE w.work_id = ?))")
            params.extend([work_id, work_id])
        _within_period(where, params, "d.filed_at", since, until)
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        rows = self._query(f"{self._DISPUTES}{clause} ORDER BY d.filed_at, d.dispute_id LIMIT ? OFFSET ?",
                           (*params, limit, offset))
        total = self._query(f"SELECT COUNT(*) FROM disputes d{clause}", params)[0][0]
        return [self._dispute(row) for row in rows], int(total)

    def resolve_dispute(self, dispute_id: str, outcome: str, note: str, actor: str, old_body: dict,
                        new_body: dict, exclusions: list[tuple[int, float, float]],
                        resolutions: dict[int, str]) -> bool:
        """Close an open dispute: its decision gets ``new_body`` (the old one kept in its history as a change of
        kind ``dispute``), the claims their standing ``resolutions`` (track id -> resolution) and ``exclusions``
        (work id, reference start, end) are added, in one transaction.

        Returns
        -------
        bool
            False when nothing was changed: the dispute is no longer open, or its decision's answer is no
            longer ``old_body`` (changed since it was read).
        """
        now = utc_now()
        with self._lock, _busy_as_error():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                dispute = self._db.execute("SELECT decision_id FROM disputes WHERE dispute_id = ?"
                                           " AND resolved_at IS NULL", (dispute_id,)).fetchone()
                row = None if dispute is None else self._db.execute(
                    "SELECT body FROM decisions WHERE decision_id = ?", (dispute["decision_id"],)).fetchone()
                if row is None or json.loads(row["body"]) != old_body:
                    self._db.execute("ROLLBACK")
                    return False
                self._record_change(dispute["decision_id"], dispute_id, now, old_body["verdict"], new_body,
                                    f"dispute {outcome}: {note}", row["body"], "dispute", actor)
                self._db.execute("UPDATE disputes SET outcome = ?, note = ?, resolved_by = ?, resolved_at = ?"
                                 " WHERE dispute_id = ?", (outcome, note, actor, _iso(now), dispute_id))
                self._keep_resolutions(dispute["decision_id"], resolutions, dispute_id, f"dispute {outcome}: {note}")
                self._db.executemany("INSERT INTO work_exclusions (work_id, ref_start, ref_end, reason, source,"
                                     " created_by, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                                     [(work_id, start, end, note, dispute_id, actor, _iso(now))
                                      for work_id, start, end in exclusions])
                self._db.execute("COMMIT")
                return True
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _keep_resolutions(self, decision_id: str, resolutions: dict[int, str], run_id: str, note: str) -> None:
        """Within a caller's write transaction: the standing resolution of each resolved claim (the latest wins)."""
        self._db.executemany(
            "INSERT INTO decision_resolutions (decision_id, track_id, resolution, run_id, note) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (decision_id, track_id) DO UPDATE SET resolution = excluded.resolution,"
            " run_id = excluded.run_id, note = excluded.note",
            [(decision_id, track_id, resolution, run_id, note) for track_id, resolution in resolutions.items()])

    def standing_resolutions(self, decision_id: str) -> dict[int, tuple[str, str]]:
        """Track id -> (resolution, note) of each claim of this decision an analyst resolved (last one standing)."""
        return {row["track_id"]: (row["resolution"], row["note"]) for row in
                self._query("SELECT track_id, resolution, note FROM decision_resolutions WHERE decision_id = ?",
                            (decision_id,))}

    # -- lineage: owners, principal default policies, published derivatives -------------------

    def works_owned_by(self, principal_id: int, limit: int, offset: int) -> tuple[list[Work], int]:
        """The works a principal owns, by id; and how many in all."""
        rows = self._query("SELECT * FROM works WHERE owner_principal_id = ? ORDER BY work_id LIMIT ? OFFSET ?",
                           (principal_id, limit, offset))
        total = self._query("SELECT COUNT(*) FROM works WHERE owner_principal_id = ?", (principal_id,))[0][0]
        return [self._work(row) for row in rows], int(total)

    def principal_policy(self, principal_id: int) -> Policy | None:
        """The default policy a principal set for its works without one of their own (None: not set)."""
        rows = self._query("SELECT * FROM principal_policies WHERE principal_id = ?", (principal_id,))
        return self._policy(rows[0]) if rows else None

    def set_principal_policy(self, principal_id: int, policy: Policy) -> None:
        self._execute(
            "INSERT INTO principal_policies (principal_id, copy, remix, cover, royalty_share, conditions, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (principal_id) DO UPDATE SET copy = excluded.copy,"
            " remix = excluded.remix, cover = excluded.cover, royalty_share = excluded.royalty_share,"
            " conditions = excluded.conditions, updated_at = excluded.updated_at",
            (principal_id, policy.copy, policy.remix, policy.cover, policy.royalty_share,
             json.dumps([asdict(c) for c in policy.conditions]), _iso(utc_now())))

    def effective_policies(self, work_ids: list[int]) -> dict[int, Policy]:
        """The policy in force for each work: its own, else its owner's default (absent: neither is set)."""
        if not work_ids:
            return {}
        marks = ",".join("?" * len(work_ids))
        rows = self._query(f"SELECT w.work_id, pp.* FROM works w JOIN principal_policies pp"
                           f" ON pp.principal_id = w.owner_principal_id WHERE w.work_id IN ({marks})", work_ids)
        return {**{row["work_id"]: self._policy(row) for row in rows}, **self.policies(work_ids)}

    def works_by_id(self, work_ids: list[int]) -> dict[int, Work]:
        if not work_ids:
            return {}
        marks = ",".join("?" * len(work_ids))
        return {row["work_id"]: self._work(row)
                for row in self._query(f"SELECT * FROM works WHERE work_id IN ({marks})", work_ids)}

    def published_work(self, decision_id: str) -> Work | None:
        """The work published from this decision, if any."""
        rows = self._query("SELECT * FROM works WHERE published_from = ?", (decision_id,))
        return self._work(rows[0]) if rows else None

    def add_published_work(self, track_id: int, title: str, artists: list[str], owner: Principal, isrc: str | None,
                           filename: str, stored_path: str, duration: float, intent_id: int, decision_id: str,
                           policy: Policy, links: list[dict]) -> Work:
        """Register a published derivative, its policy and its links to its parents; close the intent; atomically.

        ``links``: one dict per parent with the :class:`WorkLink` fields but ``work_id``,
        ``decision_id`` and ``created_at``.
        """
        now = _iso(utc_now())
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO works (track_id, title, artists, rights_holder, isrc, filename, stored_path, duration,"
                " created_at, owner_principal_id, published_from) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (track_id, title, json.dumps(artists), owner.name, isrc, filename, stored_path, duration, now,
                 owner.principal_id, decision_id))
            work_id = int(cursor.lastrowid)
            db.execute("INSERT INTO policies (work_id, copy, remix, cover, royalty_share, conditions, updated_at)"
                       " VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (work_id, policy.copy, policy.remix, policy.cover, policy.royalty_share,
                        json.dumps([asdict(c) for c in policy.conditions]), now))
            db.executemany(
                "INSERT INTO work_links (work_id, parent_work_id, decision_id, kind, score, confidence, time_ratio,"
                " pitch_shift_semitones, covered_seconds, share, spans, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(work_id, link["parent_work_id"], decision_id, link["kind"], link["score"], link["confidence"],
                  link["time_ratio"], link["pitch_shift_semitones"], link["covered_seconds"], link["share"],
                  json.dumps(link["spans"]), now) for link in links])
            db.execute("DELETE FROM catalogue_intents WHERE intent_id = ?", (intent_id,))
        return self.get_work(work_id)

    @staticmethod
    def _link(row: sqlite3.Row) -> WorkLink:
        return WorkLink(row["work_id"], row["parent_work_id"], row["decision_id"], row["kind"], row["score"],
                        row["confidence"], row["time_ratio"], row["pitch_shift_semitones"], row["covered_seconds"],
                        row["share"], json.loads(row["spans"]), _parse(row["created_at"]))

    def ancestor_links(self, work_ids: list[int]) -> list[WorkLink]:
        """Every link on the way up from these works to their furthest ancestors."""
        return self._lineage_links(work_ids, "work_id", "parent_work_id")

    def descendant_links(self, work_ids: list[int]) -> list[WorkLink]:
        """Every link on the way down from these works to their furthest descendants."""
        return self._lineage_links(work_ids, "parent_work_id", "work_id")

    def _lineage_links(self, work_ids: list[int], start: str, step: str) -> list[WorkLink]:
        if not work_ids:
            return []
        marks = ",".join("?" * len(work_ids))
        # UNION (not UNION ALL) stops at works already reached: a corrupt cycle cannot loop.
        rows = self._query(
            f"WITH RECURSIVE reached (id) AS (SELECT value FROM json_each(json_array({marks}))"
            f" UNION SELECT l.{step} FROM work_links l JOIN reached r ON l.{start} = r.id)"
            f" SELECT l.* FROM work_links l WHERE l.{start} IN (SELECT id FROM reached)"
            f" ORDER BY l.work_id, l.parent_work_id", work_ids)
        return [self._link(row) for row in rows]

    def decisions_matching(self, work_ids: list[int]) -> list[str]:
        """Ids of the stored decisions that matched any of these works, oldest first."""
        if not work_ids:
            return []
        marks = ",".join("?" * len(work_ids))
        rows = self._query(f"SELECT decision_id FROM decisions WHERE decision_id IN (SELECT decision_id FROM"
                           f" decision_works WHERE work_id IN ({marks})) ORDER BY created_at, decision_id", work_ids)
        return [row[0] for row in rows]

    def decisions_owing(self, since: datetime | None, until: datetime | None) -> list[StoredDecision]:
        """The stored decisions that let an upload be published (``allowed``, ``licensed``) in ``[since, until)``."""
        where, params = ["verdict IN ('allowed', 'licensed')"], []
        _within_period(where, params, "created_at", since, until)
        rows = self._query(f"SELECT * FROM decisions WHERE {' AND '.join(where)} ORDER BY created_at, decision_id",
                           params)
        return [StoredDecision(r["decision_id"], _parse(r["created_at"]), r["verdict"], json.loads(r["body"]))
                for r in rows]

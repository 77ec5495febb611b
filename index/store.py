"""An index directory: manifest, FAISS landmark file and SQLite catalogue, kept consistent.

::

    DIR/manifest.json        format version, fingerprint settings, one entry per fingerprint tier
    DIR/pairs.npz            exact-copy tier: pair landmarks (:class:`index.landmarks.LandmarkIndex`)
    DIR/triplets.npz         derivative tier: tempo- and pitch-invariant triplet landmarks
    DIR/quads.npz            proposals of derivatives: specific tempo- and pitch-invariant quad codes
    DIR/doubles.npz          proposals of copies: specific anchor + two targets codes (:mod:`matcher.proposals`)
    DIR/melody.faiss         melody tier: key- and tempo-invariant segment descriptors
    DIR/melody-chroma.faiss  melody tier: the chroma sequences its candidates are verified on
    DIR/peaks.npz            every track's spectral peaks, to verify a recording mixed under other audio
    DIR/catalog.sqlite       track metadata (:class:`index.catalog.Catalog`)
    DIR/.lock                held (flock) by the one process allowed to write

Tiers are named in the manifest and handled alike (add, remove, save, crash
recovery), sharing the catalogue and its track ids. The melody tier
(:class:`index.melody.MelodyIndex`) is optional: an index built before it existed
has no ``melody`` entry in its manifest and still opens, without cover matching
(``IndexStore.melody`` is None) until the catalogue is re-ingested into a new index.
An index from before the proposal tiers (``quad``, ``double``; 2026-12) opens likewise:
without proposals every track is a candidate of every query, as it was, until the
catalogue is re-ingested.
The peak store (:class:`index.peaks.PeakStore`) is optional the same way: without
it the matcher does not look for recordings mixed under other audio.

An index from an earlier Refrain is read as it is and can be brought up to date in
place (:meth:`IndexStore.upgrade`, ``refrain upgrade``): landmark tiers in a FAISS
inverted file (no ``store`` key in their manifest entry, up to 2026-11) are converted to
the run store at every open until then, and tiers from before mixed codes are re-filed.

Writes follow one protocol: a new track's row is committed as ``pending``, its
landmarks are added in memory, :meth:`IndexStore.commit` saves the tier files
atomically and only then marks the rows ``ready``. A crash at any point leaves
either the old index or the new one, never a torn file, and the next writer
removes whatever a ``pending``/``removing`` row may have left in the tiers.

Delta segments (docs/index-format.md). Once a landmark tier's or the peak store's
main file is large (:attr:`IndexWriteParams.whole_below_bytes`), a commit no longer
rewrites it: it writes the new tracks' entries as a *delta* file in the same layout
(``pairs.7.npz``), listed after the main file in the tier's manifest entry
(``"deltas"``); lookups read main and deltas and return the hits of one merged file.
Small deltas are merged with each other as they accumulate (the two newest while the
older is under twice the newer: a binary counter, so a tier has about log2(commits)
deltas), and once a tier's deltas reach :attr:`IndexWriteParams.merge_share` of its
main file a background thread merges them into a new main file. Every change of files
is a new file, then one atomic manifest switch, then the deletion of the files it
replaced: a crash leaves the old set or the new one, and the next writer deletes files
the manifest does not name.

Every manifest written says format 6: a landmark tier's main file may be track-major (each
track's entries together, :attr:`IndexWriteParams.track_major_tiers`), which a Refrain from
before it refuses to open rather than misread. Formats 2 (no deltas), 3 (deltas), 4 (compact
files of version 1) and 5 (the compact encoding's bucketed code table, version 2) are read as
they are, their plain and version-1 landmark files included; the first rewrite of a file, or
:meth:`IndexStore.upgrade`, writes it in the current layout.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from refrain.fingerprint import Fingerprint, FingerprintParams
from refrain.fingerprint.hashes import DOUBLE_LAYOUT, PAIR_LAYOUT, QUAD_LAYOUT, TIER_PAYLOAD_BITS, TRIPLET_LAYOUT
from refrain.index.catalog import Catalog, Track, TrackMetadata
from refrain.index.files import replace_atomically
from refrain.index.landmarks import LandmarkIndex
from refrain.index.melody import MELODY_LAYOUT, MelodyIndex
from refrain.index.peaks import PeakStore

__all__ = ["IndexStore", "IndexOpenError", "IndexBusyError", "IndexWriteParams"]

#: One of the index structures a tier is stored in.
_Store = TypeVar("_Store", LandmarkIndex, MelodyIndex, PeakStore)

#: Format of every manifest this Refrain writes: a landmark tier's main file may be track-major
#: (index/landmarks.py), which a Refrain before it would misread as code-major; it refuses format 6.
FORMAT_VERSION = 6
#: Formats read: 2 (no delta segments) and 3 (deltas) were written before the compact encoding, 4
#: with its version-1 code table (sorted codes), 5 with the bucketed table (compact layout version 2)
#: but no track-major file; their landmark files are read as they are.
_READABLE_FORMATS = (2, 3, 4, 5, FORMAT_VERSION)
# How many times a reader re-reads a manifest a writer replaced while the reader opened its files.
_OPEN_ATTEMPTS = 5
_MANIFEST, _CATALOG, _LOCK = "manifest.json", "catalog.sqlite", ".lock"
_TIER_FILES = {"pair": "pairs.npz", "triplet": "triplets.npz", "quad": "quads.npz", "double": "doubles.npz"}
_MELODY_FILE = "melody.faiss"
_PEAKS_FILE = "peaks.npz"
#: Layout of the peak store: (frame, log-frequency bin) of every peak, as ``find_peaks`` picks them.
PEAKS_LAYOUT = "peaks-v1"
_TIER_LAYOUTS = {"pair": PAIR_LAYOUT.name, "triplet": TRIPLET_LAYOUT.name, "quad": QUAD_LAYOUT.name,
                 "double": DOUBLE_LAYOUT, "melody": MELODY_LAYOUT,
                 "peaks": PEAKS_LAYOUT}
# How a landmark tier files its codes in lists: "hashed" (mixed codes, see index.landmarks);
# a tier without the key is from before the mix and files raw codes.
_HASHED_LISTS = "hashed"
# How a landmark tier is stored: "runs" (index.landmarks); a tier without the key is a
# FAISS inverted file of an earlier Refrain.
_RUN_STORE = "runs"


@dataclass(frozen=True)
class IndexWriteParams:
    """When a commit writes delta segments instead of rewriting tier files, and when they are merged.

    Attributes
    ----------
    whole_below_bytes : int
        A landmark tier or peak store whose main file is smaller than this (and has no
        delta) is rewritten whole at each commit, as before deltas: that costs little more
        than a delta (hundredths of a second at 8 MiB), keeps small indexes one file
        per tier, and readable by a Refrain from before deltas. Default 8 MiB (about 2.5
        catalogue hours in the pair or triplet tier, 3.4 MB per hour each).
    merge_share : float
        Once a tier's deltas hold this share of its main file's bytes, they are merged
        into a new main file. Each merge rewrites ``1 + merge_share`` times the main file
        for ``merge_share`` of new entries: about ``(1 + merge_share) / merge_share`` bytes
        written per byte added (5 at 0.25), where rewriting every tier at each 50-track
        commit wrote ~54 at 160 h. A smaller share merges more often; a larger one lets
        more deltas pile up (each costs lookups one code-table read per code) and makes
        each merge longer. Default 0.25.
    background : bool
        Merge into main in a background thread (the commit that triggers it returns at
        once; a removal or :meth:`IndexStore.close` waits for it). False merges within
        the commit. Default True.
    track_major_tiers : tuple of str
        Landmark tiers whose files (main, deltas, merges) are written track-major (each
        track's entries together, :meth:`index.landmarks.LandmarkIndex.save`) once the catalogue holds
        ``track_major_from_tracks`` tracks, in an index with the quad tier that proposes
        their candidates (default the triplet tier). The matcher then
        searches that tier only in each query's ~64 proposed derivatives
        (:class:`matcher.proposals.ProposalParams`), and reading each candidate's entries
        in one piece costs its entries, not a jump into every code's run per candidate:
        at 640 catalogue hours a 10 s query's triplet lookup took 30 ms code-major
        (docs/scale.md, step 11). The pair tier's ~290 candidates read most of each run
        either way, and the proposal tiers are searched whole, so they stay code-major.
    track_major_from_tracks : int
        Catalogue size from which those tiers' files are written track-major (default
        2,000, :attr:`matcher.proposals.ProposalParams.min_catalogue_tracks`): below it
        every query searches every track, which reads a code-major file's runs once and a
        track-major file whole. A delta is written so too: a code-major delta of a quarter
        of the entries costs a restricted search nearly what a code-major main does (at
        640 h: the triplet tier 26 against 13 ms per 10 s query). The main file's layout
        changes at its next rewrite (a merge into main, a removal,
        :meth:`IndexStore.upgrade`).
    """

    whole_below_bytes: int = 8 << 20
    merge_share: float = 0.25
    background: bool = True
    track_major_tiers: tuple[str, ...] = ("triplet",)
    track_major_from_tracks: int = 2000


def _hashed_lists(tier_entry: dict) -> bool:
    """Whether a landmark tier's manifest entry says its lists hold mixed codes."""
    lists = tier_entry.get("lists")
    if lists not in (None, _HASHED_LISTS):
        raise ValueError(f"unknown list filing {lists!r}")
    return lists == _HASHED_LISTS


def _in_faiss_file(tier_entry: dict) -> bool:
    """Whether a landmark tier's manifest entry says it is an earlier Refrain's FAISS file."""
    store = tier_entry.get("store")
    if store not in (None, _RUN_STORE):
        raise ValueError(f"unknown landmark store {store!r}")
    return store is None


class IndexOpenError(RuntimeError):
    """The directory is not a usable Refrain index (missing, foreign, or from a newer version)."""


class IndexBusyError(IndexOpenError):
    """Another process holds the index's write lock."""


#: A tier kept as a main file and delta segments.
_Segmented = (LandmarkIndex, PeakStore)


def _layout(tier: LandmarkIndex | PeakStore, track_major: bool) -> dict[str, bool]:
    """The layout arguments of a segmented tier's writes: a landmark tier may be filed by track, peaks are not."""
    return {"track_major": track_major} if isinstance(tier, LandmarkIndex) else {}


class IndexStore:
    """One index directory opened for reading or writing.

    Use :meth:`open`; close with :meth:`close` or a ``with`` block.
    """

    def __init__(self, directory: Path, params: FingerprintParams,
                 tiers: dict[str, LandmarkIndex | MelodyIndex | PeakStore],
                 tier_files: dict[str, list[Path]], catalog: Catalog, lock_handle,
                 faiss_tiers: frozenset[str] = frozenset(), writes: IndexWriteParams = IndexWriteParams()):
        self.directory = directory
        # Each tier's files: its main file, then its delta segments, as the manifest lists them.
        self._tier_files = tier_files
        # Landmark tiers read from an earlier Refrain's FAISS file (converted in memory).
        self._faiss_tiers = set(faiss_tiers)
        self.fingerprint_params = params
        self.tiers = tiers
        self.catalog = catalog
        self.writes = writes
        self._lock_handle = lock_handle
        self._pending: list[int] = []
        # Held while files and the manifest change: by the writer and by a background merge.
        self._files_lock = threading.RLock()
        self._next_file = 1
        self._merge_thread: threading.Thread | None = None
        self._merge_error: BaseException | None = None
        # Tier -> how many of its first segments the background merge is merging.
        self._merging: dict[str, int] = {}

    @classmethod
    def open(cls, directory: os.PathLike, writable: bool = False, create: bool = False,
             params: FingerprintParams | None = None, mmap: bool = False,
             writes: IndexWriteParams = IndexWriteParams()) -> "IndexStore":
        """Open (or create) an index directory.

        Parameters
        ----------
        directory : path-like
            The index directory.
        writable : bool
            Take the write lock; fails fast with :class:`IndexBusyError` if held.
        create : bool
            Create the index if the directory has none (implies ``writable``).
        params : FingerprintParams, optional
            Settings for a new index; an existing index keeps the ones it was built with.
        mmap : bool
            Memory-map the landmark file (read-only opens only).
        writes : IndexWriteParams
            When commits write delta segments and when those are merged (writers only).
        """
        directory = Path(directory)
        manifest_path = directory / _MANIFEST
        writable = writable or create
        if not manifest_path.exists():
            if not create:
                raise IndexOpenError(f"{directory}: no Refrain index here (no {_MANIFEST}); "
                                     "create one with `refrain ingest --index DIR FILES`")
            if directory.exists() and any(directory.iterdir()):
                raise IndexOpenError(f"{directory}: directory is not empty and holds no Refrain index")
            directory.mkdir(parents=True, exist_ok=True)
        lock_handle = cls._acquire_lock(directory) if writable else None
        try:
            if not manifest_path.exists():
                params = params or FingerprintParams()
                for tier, filename in _TIER_FILES.items():
                    LandmarkIndex.create(TIER_PAYLOAD_BITS[tier]).save(directory / filename)
                if params.melody is not None:
                    MelodyIndex.create(params.melody).save(directory / _MELODY_FILE)
                PeakStore.create().save(directory / _PEAKS_FILE)
                Catalog(directory / _CATALOG).close()
                cls._write_manifest(directory, params)
            store = cls._load(directory, writable, mmap, lock_handle, writes)
        except BaseException:
            if lock_handle:
                lock_handle.close()
            raise
        if writable:
            store._delete_unlisted_segments()
            store._finish_interrupted_writes()
        return store

    @classmethod
    def _load(cls, directory: Path, writable: bool, mmap: bool, lock_handle,
              writes: IndexWriteParams) -> "IndexStore":
        # A writer may replace the manifest and delete the files it no longer lists while a
        # reader opens them: the reader then tries again with the new manifest.
        for attempt in range(_OPEN_ATTEMPTS):
            manifest = cls._read_manifest(directory)
            try:
                return cls._load_manifest(directory, manifest, writable, mmap, lock_handle, writes)
            except IndexOpenError:
                if attempt + 1 == _OPEN_ATTEMPTS or cls._read_manifest(directory) == manifest:
                    raise
        raise AssertionError("unreachable")

    @classmethod
    def _load_manifest(cls, directory: Path, manifest: dict, writable: bool, mmap: bool, lock_handle,
                       writes: IndexWriteParams) -> "IndexStore":
        if not (directory / _CATALOG).exists():
            raise IndexOpenError(f"{directory}: the catalogue file {_CATALOG} is missing")
        try:
            params = FingerprintParams.from_dict(manifest["fingerprint"])
            tier_files = {tier: [directory / name for name in _segment_names(entry)]
                          for tier, entry in manifest["tiers"].items()}
            tiers: dict[str, LandmarkIndex | MelodyIndex | PeakStore] = {}
            faiss_tiers: set[str] = set()
            for tier, entry in manifest["tiers"].items():
                main, *deltas = tier_files[tier]
                if tier == "melody":
                    if params.melody is None:
                        raise ValueError("the manifest has a melody tier but no melody parameters")
                    if deltas:
                        raise ValueError("the melody tier has no delta segments")
                    tiers[tier] = MelodyIndex.load(main, params.melody, mmap=mmap and not writable)
                elif tier == "peaks":
                    tiers[tier] = PeakStore.load(main, deltas=tuple(deltas))
                elif _in_faiss_file(entry):
                    tiers[tier] = LandmarkIndex.from_faiss(main, entry["payload_bits"],
                                                           hashed_lists=_hashed_lists(entry))
                    faiss_tiers.add(tier)
                else:
                    tiers[tier] = LandmarkIndex.load(main, entry["payload_bits"], mmap=mmap and not writable,
                                                     hashed_lists=_hashed_lists(entry), deltas=tuple(deltas))
            catalog = Catalog(directory / _CATALOG, writable=writable)
        except (RuntimeError, sqlite3.DatabaseError, KeyError, ValueError) as err:
            raise IndexOpenError(f"{directory}: cannot open the index: it is damaged or "
                                 f"unreadable ({err})") from err
        return cls(directory, params, tiers, tier_files, catalog, lock_handle, frozenset(faiss_tiers), writes)

    @staticmethod
    def _acquire_lock(directory: Path):
        handle = open(directory / _LOCK, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise IndexBusyError(f"{directory}: another process is writing to this index") from None
        return handle

    @staticmethod
    def _write_manifest(directory: Path, params: FingerprintParams) -> None:
        tiers = {tier: {"file": filename, "payload_bits": TIER_PAYLOAD_BITS[tier],
                        "layout": _TIER_LAYOUTS[tier], "lists": _HASHED_LISTS, "store": _RUN_STORE}
                 for tier, filename in _TIER_FILES.items()}
        if params.melody is not None:
            tiers["melody"] = {"file": _MELODY_FILE, "layout": MELODY_LAYOUT}
        tiers["peaks"] = {"file": _PEAKS_FILE, "layout": PEAKS_LAYOUT}
        IndexStore._save_manifest(directory, {"format": FORMAT_VERSION, "fingerprint": params.to_dict(),
                                              "tiers": tiers})

    @staticmethod
    def _save_manifest(directory: Path, manifest: dict) -> None:
        text = json.dumps(manifest, indent=2) + "\n"
        replace_atomically(directory / _MANIFEST, lambda tmp: Path(tmp).write_text(text))

    @staticmethod
    def _read_manifest(directory: Path) -> dict:
        try:
            manifest = json.loads((directory / _MANIFEST).read_text())
        except (OSError, ValueError) as err:
            raise IndexOpenError(f"{directory}: unreadable {_MANIFEST} ({err})") from err
        if manifest.get("format") not in _READABLE_FORMATS:
            raise IndexOpenError(f"{directory}: index format {manifest.get('format')} is not "
                                 f"supported (this Refrain reads formats "
                                 f"{' and '.join(map(str, _READABLE_FORMATS))})")
        # Codes of another hash layout would be looked up as if they were ours: silently
        # wrong matches. Such an index must be rebuilt from its recordings.
        for tier, entry in manifest.get("tiers", {}).items():
            if entry.get("layout") != _TIER_LAYOUTS.get(tier):
                raise IndexOpenError(f"{directory}: the {tier} tier was built with hash layout "
                                     f"{entry.get('layout')}, this Refrain uses "
                                     f"{_TIER_LAYOUTS.get(tier)}: re-ingest the catalogue")
        return manifest

    def _record_files(self, tier_files: dict[str, list[Path]] | None = None,
                      entry_updates: dict[str, dict] | None = None) -> None:
        """Make the manifest list the tiers' files (by default as they are now), in one atomic switch.

        Parameters
        ----------
        tier_files : dict of str to list of Path, optional
            Each tier's main file and delta segments.
        entry_updates : dict of str to dict, optional
            More keys to set in tiers' manifest entries.
        """
        tier_files = self._tier_files if tier_files is None else tier_files
        manifest = self._read_manifest(self.directory)
        for name, files in tier_files.items():
            entry = manifest["tiers"][name]
            entry["file"] = files[0].name
            entry.pop("deltas", None)
            if len(files) > 1:
                entry["deltas"] = [path.name for path in files[1:]]
            entry.update((entry_updates or {}).get(name, {}))
        manifest["format"] = FORMAT_VERSION
        self._save_manifest(self.directory, manifest)

    def _delete_unlisted_segments(self) -> None:
        """Delete segment files of the tiers that the manifest does not list (left by a crash)."""
        listed = {path.name for files in self._tier_files.values() for path in files}
        pattern = re.compile(r"(?P<stem>[a-z]+)(\.(?P<number>\d+))?\.npz")
        stems = {Path(name).stem for name in (*_TIER_FILES.values(), _PEAKS_FILE)}
        for path in self.directory.iterdir():
            found = pattern.fullmatch(path.name)
            if found and found["stem"] in stems:
                if path.name not in listed:
                    path.unlink(missing_ok=True)
                elif found["number"]:
                    self._next_file = max(self._next_file, int(found["number"]) + 1)

    def _new_segment_file(self, name: str, main: bool = False) -> Path:
        """A file name for a new segment of tier ``name``: ``pairs.7.npz``, or ``pairs.npz`` for a main if free."""
        with self._files_lock:
            stem = Path(_PEAKS_FILE if name == "peaks" else _TIER_FILES[name]).stem
            canonical = self.directory / f"{stem}.npz"
            if main and not canonical.exists():
                return canonical
            path = self.directory / f"{stem}.{self._next_file}.npz"
            self._next_file += 1
            return path

    def _finish_interrupted_writes(self) -> None:
        leftovers = self.catalog.unfinished()
        if not leftovers:
            return
        for track_id in leftovers:
            for tier in self.tiers.values():
                tier.remove(track_id)
        self._save_tiers()
        self.catalog.delete(leftovers)

    def _segmented_tiers(self) -> dict[str, LandmarkIndex | PeakStore]:
        return {name: tier for name, tier in self.tiers.items() if isinstance(tier, _Segmented)}

    def _save_tiers(self) -> None:
        """Save every tier's changes: a delta segment, or the whole tier where it is small or a removal
        changed its saved entries; then switch the manifest and delete the files it no longer lists."""
        if self._faiss_tiers:  # this Refrain cannot write an earlier Refrain's FAISS files
            self.upgrade()
        with self._files_lock:
            replaced: list[Path] = []
            for name, tier in self.tiers.items():
                files = self._tier_files[name]
                if not isinstance(tier, _Segmented):
                    tier.save(files[0])
                    continue
                if len(files) == 1 and (tier.needs_rewrite or tier.segment_bytes()[0] < self.writes.whole_below_bytes):
                    self._save_main(name, tier, files[0])  # alone in the manifest: replaced atomically in place
                elif tier.needs_rewrite:
                    main = self._new_segment_file(name, main=True)
                    self._save_main(name, tier, main)
                    replaced += files
                    self._tier_files[name] = [main]
                else:
                    delta = self._new_segment_file(name)
                    if tier.save_delta(delta, **_layout(tier, self._track_major(name))):
                        files.append(delta)
            self._record_files()
        for path in replaced:
            path.unlink(missing_ok=True)

    def _track_major(self, name: str) -> bool:
        """Whether tier ``name``'s files are to be written track-major (:class:`IndexWriteParams`).

        Only in an index with the quad tier: without proposals (an index from before them) the
        matcher searches every track, which a track-major file answers by decoding all of it.
        """
        # The tracks being committed count: the commit that passes the size writes its delta so.
        return (name in self.writes.track_major_tiers and "quad" in self.tiers
                and self.catalog.totals()[0] + len(self._pending) >= self.writes.track_major_from_tracks)

    def _save_main(self, name: str, tier: LandmarkIndex | PeakStore, path: Path) -> None:
        """Write a tier whole as its main file, in the layout it is due."""
        tier.save(path, **_layout(tier, self._track_major(name)))

    def _merge_segments(self, name: str, first: int, last: int, track_major: bool = False) -> None:
        """Merge segments ``first:last`` of tier ``name`` into one new file (into main if ``first`` is 0),
        track-major if ``track_major`` (see :meth:`_track_major`, which asks the catalogue and so is
        called by the writer's thread, not a background merge's).

        Only the switch holds the files lock: a background merge writes its file while
        commits add deltas after the segments it merges.
        """
        tier = self._segmented_tiers()[name]
        with self._files_lock:
            merged_files = self._tier_files[name][first:last]
            path = self._new_segment_file(name, main=first == 0)
        merged = tier.write_merged(first, last, path, **_layout(tier, track_major))
        with self._files_lock:
            tier.adopt_merged(merged, path)  # type: ignore[arg-type]  # the segments write_merged returned
            files = self._tier_files[name]
            at = files.index(merged_files[0])
            files[at:at + len(merged_files)] = [path]
            self._record_files()
        for old in merged_files:
            old.unlink(missing_ok=True)

    def _merge_due_deltas(self) -> None:
        """After a commit: merge the newest deltas while the older is under twice the newer's size
        (a binary counter: about log2(commits) deltas), then, once a tier's deltas reach
        ``writes.merge_share`` of its main file, merge them into main (in the background)."""
        for name, tier in self._segmented_tiers().items():
            while True:
                sizes = tier.segment_bytes()
                if len(sizes) - 2 < max(1, self._merging.get(name, 0)) or sizes[-2] >= 2 * sizes[-1]:
                    break
                self._merge_segments(name, len(sizes) - 2, len(sizes), self._track_major(name))
        if self._merge_thread is not None and self._merge_thread.is_alive():
            return
        self._raise_merge_error()
        due = {name: len(tier.segment_bytes()) for name, tier in self._segmented_tiers().items()
               if sum(tier.segment_bytes()[1:]) > 0
               and sum(tier.segment_bytes()[1:]) >= self.writes.merge_share * tier.segment_bytes()[0]}
        if not due:
            return
        track_major = {name: self._track_major(name) for name in due}
        if not self.writes.background:
            for name, count in due.items():
                self._merge_segments(name, 0, count, track_major[name])
            return
        self._merging = due
        self._merge_thread = threading.Thread(target=self._merge_in_background, args=(due, track_major),
                                              name=f"refrain-merge {self.directory.name}", daemon=True)
        self._merge_thread.start()

    def _merge_in_background(self, due: dict[str, int], track_major: dict[str, bool]) -> None:
        try:
            for name, count in due.items():
                self._merge_segments(name, 0, count, track_major[name])
        except BaseException as err:  # reported by the writer's next call that waits for merges
            self._merge_error = err
        finally:
            self._merging = {}

    def wait_for_merge(self) -> None:
        """Wait for a background merge to finish.

        Raises
        ------
        OSError
            What stopped the merge (a full disk, say); the index is as it was before it.
        """
        if self._merge_thread is not None:
            self._merge_thread.join()
            self._merge_thread = None
        self._raise_merge_error()

    def _raise_merge_error(self) -> None:
        error, self._merge_error = self._merge_error, None
        if error is not None:
            raise error

    def merge(self) -> list[str]:
        """Merge every tier's delta segments into its main file now (after any background merge).

        Returns
        -------
        list of str
            The tiers merged.
        """
        self._require_writable()
        self.wait_for_merge()
        merged = [name for name, files in self._tier_files.items() if len(files) > 1]
        for name in merged:
            self._merge_segments(name, 0, len(self._tier_files[name]), self._track_major(name))
        return merged

    def _require_writable(self) -> None:
        if self._lock_handle is None:
            raise PermissionError(f"{self.directory}: index opened read-only; open it writable to change it")

    # -- writing ---------------------------------------------------------------------------

    def add_track(self, source: str, content_hash: str, fp: Fingerprint,
                  metadata: TrackMetadata = TrackMetadata()) -> int:
        """Add a track's landmarks; it becomes matchable at the next :meth:`commit`."""
        self._require_writable()
        melody = self.melody
        if melody is not None and fp.melody is None:
            raise ValueError("the fingerprint has no melody, but this index has a melody tier")
        track_id = self.catalog.insert_pending(source, content_hash, fp.duration, len(fp), metadata)
        self._pending.append(track_id)
        for name, (codes, payloads) in fp.index_entries().items():
            if name in self.tiers:  # an index from before the proposal tiers has none
                self._tier(name, LandmarkIndex).add(track_id, codes, payloads)
        if melody is not None and fp.melody is not None:
            melody.add(track_id, fp.melody)
        if "peaks" in self.tiers:
            self._tier("peaks", PeakStore).add(track_id, fp.peaks.frames, fp.peaks.bins)
        return track_id

    def commit(self) -> None:
        """Save the pending tracks' entries (delta segments of a large index), then publish the tracks.

        Deltas due for merging are merged after the tracks are published (into main in
        the background: see :class:`IndexWriteParams`).
        """
        if not self._pending:
            return
        self._require_writable()
        self._save_tiers()
        self.catalog.set_status(self._pending, "ready")
        self.catalog.checkpoint()
        self._pending = []
        self._merge_due_deltas()

    def upgradable(self) -> list[str]:
        """The tiers :meth:`upgrade` would bring to the current layout."""
        return [name for name, tier in self.tiers.items()
                if isinstance(tier, LandmarkIndex) and (
                    not tier.hashed_lists or name in self._faiss_tiers
                    or set(tier.segment_encodings()[1:]) - {"compact", "track-major"}
                    or tier.segment_encodings()[:1] != ["track-major" if self._track_major(name) else "compact"])]

    def upgrade(self) -> list[str]:
        """Bring an index built by an earlier Refrain to the current layout, in place.

        Landmark tiers in an earlier Refrain's FAISS file are written as run stores (see
        :mod:`index.landmarks`: same entries, same hits in the same order, about half the
        bytes, no conversion at open), tiers from before mixed codes are re-filed, and tiers
        with files in the plain id encoding (before 2026-12-07) or with the compact encoding's
        version-1 code table are rewritten compact with the bucketed table, main and deltas as one
        file (plain: a third to a half of the bytes; version 1: the proposal tiers' files lose a
        fifth, their code tables 10 -> 3.6-3.9 bytes a code). Each goes to a new file; the
        manifest then switches to it in one atomic rename, and only then is the old file
        deleted, so an interrupted upgrade leaves the index as it was (at most a stray new
        file, deleted by the next writer). The first save of an index with FAISS tiers (a
        commit, a removal) upgrades it first: this Refrain cannot write that format.

        Returns
        -------
        list of str
            The tiers upgraded (empty if the index was already current).
        """
        self._require_writable()
        self.wait_for_merge()
        stale = self.upgradable()
        if not stale:
            return []
        with self._files_lock:
            refiled, old_files = {}, []
            for name in stale:
                files = self._tier_files[name]
                tier = self.tiers[name]
                assert isinstance(tier, LandmarkIndex)  # upgradable() lists landmark tiers only
                if not tier.hashed_lists:
                    tier = tier.refiled()
                new_file = self._new_segment_file(name, main=True)
                self._save_main(name, tier, new_file)
                refiled[name] = (tier, new_file)
                old_files += files
                if name in self._faiss_tiers:
                    old_files.append(files[0].with_name(files[0].name + ".counts.npy"))  # its code-count table
            self._record_files({**self._tier_files, **{name: [new_file] for name, (_, new_file) in refiled.items()}},
                               {name: {"lists": _HASHED_LISTS, "store": _RUN_STORE} for name in refiled})
            for name, (tier, new_file) in refiled.items():
                self.tiers[name], self._tier_files[name] = tier, [new_file]
            self._faiss_tiers.clear()
        for path in old_files:
            path.unlink(missing_ok=True)
        return stale

    def remove_track(self, track_id: int) -> Track:
        """Take a track out of the index and the catalogue (takedown, consent withdrawn).

        The tiers holding its saved entries are rewritten whole, so that no file keeps
        them (see :class:`IndexWriteParams` for what a commit writes).

        Raises
        ------
        KeyError
            If no ready track has this id.
        """
        self._require_writable()
        track = self.catalog.get(track_id)
        if track is None:
            raise KeyError(track_id)
        self.wait_for_merge()
        self.catalog.set_status([track_id], "removing")
        for tier in self.tiers.values():
            tier.remove(track_id)
        self._save_tiers()
        self.catalog.delete([track_id])
        return track

    # -- reading ---------------------------------------------------------------------------

    @property
    def melody(self) -> MelodyIndex | None:
        """The melody tier, or None for an index built before it existed."""
        return self._tier("melody", MelodyIndex) if "melody" in self.tiers else None

    def _tier(self, name: str, kind: type[_Store]) -> _Store:
        """The stored tier ``name``, which is a ``kind``."""
        tier = self.tiers[name]
        assert isinstance(tier, kind), (name, type(tier))
        return tier

    def delta_segments(self) -> dict[str, int]:
        """How many delta segments each tier has beside its main file."""
        return {name: len(files) - 1 for name, files in self._tier_files.items()}

    def size_bytes(self) -> dict[str, int]:
        """Bytes on disk per file of the directory."""
        return {path.name: path.stat().st_size for path in self.directory.iterdir()
                if path.is_file() and path.name != _LOCK}

    def close(self) -> None:
        try:
            if self._lock_handle:
                self.wait_for_merge()
        finally:
            self.catalog.close()
            if self._lock_handle:
                self._lock_handle.close()
                self._lock_handle = None

    def __enter__(self) -> "IndexStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _segment_names(tier_entry: dict) -> list[str]:
    """A tier's files as its manifest entry lists them: main first, then its delta segments."""
    deltas = tier_entry.get("deltas", [])
    if not isinstance(deltas, list) or not all(isinstance(name, str) and "/" not in name for name in deltas):
        raise ValueError(f"unreadable delta list {deltas!r}")
    return [tier_entry["file"], *deltas]

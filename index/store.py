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
landmarks are added in memory, :meth:`IndexStore.commit` saves the FAISS file
atomically and only then marks the rows ``ready``. A crash at any point leaves
either the old index or the new one, never a torn file, and the next writer
removes whatever a ``pending``/``removing`` row may have left in FAISS.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
from pathlib import Path
from typing import TypeVar

from refrain.fingerprint import Fingerprint, FingerprintParams
from refrain.fingerprint.hashes import DOUBLE_LAYOUT, PAIR_LAYOUT, QUAD_LAYOUT, TIER_PAYLOAD_BITS, TRIPLET_LAYOUT
from refrain.index.catalog import Catalog, Track, TrackMetadata
from refrain.index.files import replace_atomically
from refrain.index.landmarks import LandmarkIndex
from refrain.index.melody import MELODY_LAYOUT, MelodyIndex
from refrain.index.peaks import PeakStore

__all__ = ["IndexStore", "IndexOpenError", "IndexBusyError"]

#: One of the index structures a tier is stored in.
_Store = TypeVar("_Store", LandmarkIndex, MelodyIndex, PeakStore)

FORMAT_VERSION = 2
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


class IndexStore:
    """One index directory opened for reading or writing.

    Use :meth:`open`; close with :meth:`close` or a ``with`` block.
    """

    def __init__(self, directory: Path, params: FingerprintParams,
                 tiers: dict[str, LandmarkIndex | MelodyIndex | PeakStore],
                 tier_files: dict[str, Path], catalog: Catalog, lock_handle, faiss_tiers: frozenset[str] = frozenset()):
        self.directory = directory
        self._tier_files = tier_files
        # Landmark tiers read from an earlier Refrain's FAISS file (converted in memory).
        self._faiss_tiers = set(faiss_tiers)
        self.fingerprint_params = params
        self.tiers = tiers
        self.catalog = catalog
        self._lock_handle = lock_handle
        self._pending: list[int] = []

    @classmethod
    def open(cls, directory: os.PathLike, writable: bool = False, create: bool = False,
             params: FingerprintParams | None = None, mmap: bool = False) -> "IndexStore":
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
            store = cls._load(directory, writable, mmap, lock_handle)
        except BaseException:
            if lock_handle:
                lock_handle.close()
            raise
        if writable:
            store._finish_interrupted_writes()
        return store

    @classmethod
    def _load(cls, directory: Path, writable: bool, mmap: bool, lock_handle) -> "IndexStore":
        manifest = cls._read_manifest(directory)
        if not (directory / _CATALOG).exists():
            raise IndexOpenError(f"{directory}: the catalogue file {_CATALOG} is missing")
        try:
            params = FingerprintParams.from_dict(manifest["fingerprint"])
            tier_files = {tier: directory / entry["file"] for tier, entry in manifest["tiers"].items()}
            tiers: dict[str, LandmarkIndex | MelodyIndex | PeakStore] = {}
            faiss_tiers: set[str] = set()
            for tier, entry in manifest["tiers"].items():
                if tier == "melody":
                    if params.melody is None:
                        raise ValueError("the manifest has a melody tier but no melody parameters")
                    tiers[tier] = MelodyIndex.load(tier_files[tier], params.melody, mmap=mmap and not writable)
                elif tier == "peaks":
                    tiers[tier] = PeakStore.load(tier_files[tier])
                elif _in_faiss_file(entry):
                    tiers[tier] = LandmarkIndex.from_faiss(tier_files[tier], entry["payload_bits"],
                                                           hashed_lists=_hashed_lists(entry))
                    faiss_tiers.add(tier)
                else:
                    tiers[tier] = LandmarkIndex.load(tier_files[tier], entry["payload_bits"],
                                                     mmap=mmap and not writable,
                                                     hashed_lists=_hashed_lists(entry))
            catalog = Catalog(directory / _CATALOG, writable=writable)
        except (RuntimeError, sqlite3.DatabaseError, KeyError, ValueError) as err:
            raise IndexOpenError(f"{directory}: cannot open the index: it is damaged or "
                                 f"unreadable ({err})") from err
        return cls(directory, params, tiers, tier_files, catalog, lock_handle, frozenset(faiss_tiers))

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
        if manifest.get("format") != FORMAT_VERSION:
            raise IndexOpenError(f"{directory}: index format {manifest.get('format')} is not "
                                 f"supported (this Refrain reads format {FORMAT_VERSION})")
        # Codes of another hash layout would be looked up as if they were ours: silently
        # wrong matches. Such an index must be rebuilt from its recordings.
        for tier, entry in manifest.get("tiers", {}).items():
            if entry.get("layout") != _TIER_LAYOUTS.get(tier):
                raise IndexOpenError(f"{directory}: the {tier} tier was built with hash layout "
                                     f"{entry.get('layout')}, this Refrain uses "
                                     f"{_TIER_LAYOUTS.get(tier)}: re-ingest the catalogue")
        return manifest

    def _finish_interrupted_writes(self) -> None:
        leftovers = self.catalog.unfinished()
        if not leftovers:
            return
        for track_id in leftovers:
            for tier in self.tiers.values():
                tier.remove(track_id)
        self._save_tiers()
        self.catalog.delete(leftovers)

    def _save_tiers(self) -> None:
        if self._faiss_tiers:  # this Refrain cannot write an earlier Refrain's FAISS files
            self.upgrade()
        for name, tier in self.tiers.items():
            tier.save(self._tier_files[name])

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
        """Save the landmark file atomically, then publish the pending tracks."""
        if not self._pending:
            return
        self._require_writable()
        self._save_tiers()
        self.catalog.set_status(self._pending, "ready")
        self._pending = []

    def upgradable(self) -> list[str]:
        """The tiers :meth:`upgrade` would bring to the current layout."""
        return [name for name, tier in self.tiers.items()
                if isinstance(tier, LandmarkIndex) and (not tier.hashed_lists or name in self._faiss_tiers)]

    def upgrade(self) -> list[str]:
        """Bring an index built by an earlier Refrain to the current layout, in place.

        Landmark tiers in an earlier Refrain's FAISS file are written as run stores (see
        :mod:`index.landmarks`: same entries, same hits in the same order, about half the
        bytes, no conversion at open), and tiers from before mixed codes are re-filed.
        Each goes to a new file; the manifest then switches to it in one atomic rename,
        and only then is the old file deleted, so an interrupted upgrade leaves the index
        as it was (at most a stray new file, overwritten by the next upgrade). The first
        save of an index with FAISS tiers (a commit, a removal) upgrades it first: this
        Refrain cannot write that format.

        Returns
        -------
        list of str
            The tiers upgraded (empty if the index was already current).
        """
        self._require_writable()
        stale = self.upgradable()
        if not stale:
            return []
        manifest = self._read_manifest(self.directory)
        refiled, old_files = {}, []
        for name in stale:
            old_file = self._tier_files[name]
            tier = self.tiers[name]
            assert isinstance(tier, LandmarkIndex)  # upgradable() lists landmark tiers only
            if not tier.hashed_lists:
                tier = tier.refiled()
            new_file = self.directory / _TIER_FILES[name]
            if new_file == old_file:
                new_file = old_file.with_name(old_file.stem + "-hashed" + old_file.suffix)
            tier.save(new_file)
            refiled[name] = (tier, new_file)
            manifest["tiers"][name].update(file=new_file.name, lists=_HASHED_LISTS, store=_RUN_STORE)
            old_files.append(old_file)
            if name in self._faiss_tiers:
                old_files.append(old_file.with_name(old_file.name + ".counts.npy"))  # its code-count table
        self._save_manifest(self.directory, manifest)
        for name, (tier, new_file) in refiled.items():
            self.tiers[name], self._tier_files[name] = tier, new_file
        self._faiss_tiers.clear()
        for path in old_files:
            path.unlink(missing_ok=True)
        return stale

    def remove_track(self, track_id: int) -> Track:
        """Take a track out of the index and the catalogue (takedown, consent withdrawn).

        Raises
        ------
        KeyError
            If no ready track has this id.
        """
        self._require_writable()
        track = self.catalog.get(track_id)
        if track is None:
            raise KeyError(track_id)
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

    def size_bytes(self) -> dict[str, int]:
        """Bytes on disk per file of the directory."""
        return {path.name: path.stat().st_size for path in self.directory.iterdir()
                if path.is_file() and path.name != _LOCK}

    def close(self) -> None:
        self.catalog.close()
        if self._lock_handle:
            self._lock_handle.close()
            self._lock_handle = None

    def __enter__(self) -> "IndexStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

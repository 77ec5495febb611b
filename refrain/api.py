"""The library API: ingest catalogue recordings, match queries, remove tracks, describe an index."""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import signal
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Generator, Iterable, Iterator, cast

import numpy as np

from refrain.config import Config
from refrain.fingerprint import (AudioDecodeError, Fingerprint, FingerprintError, FingerprintParams,
                                 fingerprint_file, fingerprint_signal)
from refrain.fingerprint.decode import stream_audio
from refrain.fingerprint.peaks import Peaks
from refrain.fingerprint.pipeline import fingerprint_peaks, fingerprint_windows
from refrain.index import IndexStore, Track, TrackMetadata
from refrain.matcher import Catalogue, Match, TrackDurations, match
from refrain.matcher.match import match_windows, upload_window_frames
from refrain.matcher.proposals import DOUBLE_TIER, QUAD_TIER
from refrain.matcher.types import match_field

__all__ = ["Refrain", "IngestResult", "QueryResult", "TrackMatch", "IndexInfo", "StreamedMatch", "UploadWindows",
           "audio_files", "audio_between", "fingerprint_stream", "AUDIO_EXTENSIONS"]

AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac",
                              ".mp4", ".aif", ".aiff", ".wma", ".webm", ".mka"})


def audio_files(paths: Iterable[os.PathLike]) -> list[Path]:
    """Expand files and folders (recursively, audio extensions only) into a sorted file list.

    A path given explicitly is kept whatever its extension, so that a bad file named
    on the command line is reported rather than silently skipped.
    """
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*")
                                if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS))
        else:
            found.append(path)
    return found


def file_digest(path: os.PathLike) -> str:
    """SHA-256 of a file's bytes: the identity of a catalogue recording."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class IngestResult:
    """What happened to one file given to :meth:`Refrain.ingest`.

    ``status`` is ``added``, ``updated`` (same source path, new content: the old
    track was replaced), ``unchanged`` (already in the catalogue: nothing done) or
    ``error`` (``error`` says why; the index is untouched by this file), or ``duplicate``
    (the same bytes as another file of the same call, which is ingested instead).
    """

    path: str
    status: str
    track_id: int | None = None
    duration: float | None = None
    n_landmarks: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class TrackMatch(Match):
    """A :class:`matcher.Match` with the matched track's catalogue metadata: the one match record.

    :meth:`to_dict` gives its JSON form (``refrain match --json``), without the evidence
    ``points`` (:meth:`Refrain.match_with_evidence` returns those).
    """

    source: str = match_field("The file the catalogue track was ingested from", default="")
    title: str | None = match_field("The track's title, if given at ingest", default=None)
    artist: str | None = match_field("The track's artist, if given at ingest", default=None)
    isrc: str | None = match_field("The track's ISRC, if given at ingest", default=None)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) if f.name != "spans" else [s.to_dict() for s in self.spans]
                for f in fields(self) if f.name != "points"}


@dataclass(frozen=True)
class QueryResult:
    """Every catalogue track found in one query."""

    query: str
    duration: float
    matches: list[TrackMatch] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"query": self.query, "duration": self.duration, "matches": [m.to_dict() for m in self.matches]}


class UploadWindows:
    """A streamed upload's window fingerprints, kept as the whole upload's fingerprint needs them.

    Each window's peaks, dense peaks and melody frames are kept in upload time (a few
    tens of kB per minute), never its audio, spectrogram or landmarks; :meth:`fingerprint`
    then rebuilds from them the fingerprint of the whole upload: that of
    :func:`fingerprint.fingerprint_signal` but for a few peaks at window boundaries
    (each window is analysed with margins, :func:`fingerprint.pipeline.window_margin_frames`).

    Parameters
    ----------
    params : FingerprintParams
    window_seconds : float
        The matcher's ``upload_window_seconds``: windows are :attr:`window_seconds` long
        (:func:`matcher.match.upload_window_frames`), as :func:`matcher.match_windows` places them.
    """

    def __init__(self, params: FingerprintParams, window_seconds: float):
        self.params = params
        self.window_frames = upload_window_frames(params, window_seconds)
        self.window_seconds = self.window_frames * params.frame_seconds
        self.duration = 0.0
        self.landmarks = 0
        self._peaks: list[Peaks] = []
        self._dense: list[Peaks] = []
        self._melody: list[np.ndarray] = []
        self._only: Fingerprint | None = None
        self._whole: Fingerprint | None = None

    def kept(self, windows: Iterable[Fingerprint]) -> Iterator[Fingerprint]:
        """Pass ``windows`` through, keeping what :meth:`fingerprint` needs of each."""
        for number, window in enumerate(windows):
            first = number * self.window_frames
            self._only = window if number == 0 else None
            self.duration += window.duration
            self.landmarks += len(window)
            self._peaks.append(_moved_peaks(window.peaks, first))
            if window.dense_peaks is not None:
                self._dense.append(_moved_peaks(window.dense_peaks, first))
            if window.melody is not None:
                self._melody.append(window.melody)
            yield window

    def fingerprint(self) -> Fingerprint:
        """The whole upload's fingerprint (an upload of one window: that window's, as it is)."""
        if self._only is not None:
            return self._only
        if not self._peaks:
            raise FingerprintError("no audio samples to fingerprint")
        if self._whole is None:
            self._whole = fingerprint_peaks(_joined_peaks(self._peaks), self.duration, self.params,
                                            np.concatenate(self._melody) if self._melody else None,
                                            _joined_peaks(self._dense) if self._dense else None)
        return self._whole


def _moved_peaks(peaks: Peaks, frames: int) -> Peaks:
    return replace(peaks, frames=(peaks.frames + frames).astype(peaks.frames.dtype, copy=False))


def _joined_peaks(parts: list[Peaks]) -> Peaks:
    return Peaks(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Peaks)})


class _StageClock:
    """Seconds spent in each stage of a chain of generators, each second counted once.

    A stage's pull that waits on the stage it draws from (fingerprinting waiting for
    decoded blocks) counts only its own time; the wait is the inner stage's.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._counted = 0.0

    def timed(self, items: Iterable, stage: str) -> Iterator:
        iterator, end = iter(items), object()
        self.seconds.setdefault(stage, 0.0)
        while True:
            started, counted_before = time.perf_counter(), self._counted
            item = next(iterator, end)
            own = time.perf_counter() - started - (self._counted - counted_before)
            self.seconds[stage] += own
            self._counted += own
            if item is end:
                return
            yield item

    def add_to(self, stages: dict[str, float] | None) -> None:
        """Add the seconds counted to ``stages`` (if given)."""
        if stages is None:
            return
        for stage, seconds in self.seconds.items():
            stages[stage] = stages.get(stage, 0.0) + seconds


def fingerprint_stream(blocks: Iterable[np.ndarray], params: FingerprintParams, window_seconds: float,
                       stages: dict[str, float] | None = None) -> UploadWindows:
    """Fingerprint a signal that arrives in blocks one window at a time, keeping only what the whole
    upload's fingerprint needs (:class:`UploadWindows`): for a matcher that searches a whole fingerprint.

    Parameters
    ----------
    blocks : iterable of np.ndarray
        As for :meth:`Refrain.match_stream`.
    params : FingerprintParams
    window_seconds : float
        Window length (the matcher's ``upload_window_seconds``).
    stages : dict, optional
        If given, the seconds spent getting ``blocks`` (``decode``) and fingerprinting
        (``fingerprint``) are added to it.

    Raises
    ------
    FingerprintError
        When no window holds a landmark; and whatever ``blocks`` raises.
    """
    clock, windows = _StageClock(), UploadWindows(params, window_seconds)
    for _ in windows.kept(clock.timed(fingerprint_windows(clock.timed(blocks, "decode"), params,
                                                          windows.window_seconds, dense_peaks=True), "fingerprint")):
        pass
    clock.add_to(stages)
    return windows


@dataclass(frozen=True)
class StreamedMatch:
    """What :meth:`Refrain.match_stream` found in an upload, and the upload's fingerprint.

    Attributes
    ----------
    result : QueryResult
    points : dict of int to np.ndarray, shape (n, 2)
        The aligned points behind each matched track (as :meth:`Refrain.match_with_evidence`).
    windows : UploadWindows
        The upload's windows as kept: ``windows.fingerprint()`` is the whole upload's
        fingerprint (e.g. to store it), ``windows.landmarks`` its landmark count.
    """

    result: QueryResult
    points: dict[int, np.ndarray]
    windows: UploadWindows


def audio_between(path: os.PathLike, sample_rate: int, ranges: list[tuple[float, float]],
                  max_duration: float | None = None) -> list[np.ndarray]:
    """The samples of ``path`` in each (start, end) range in seconds, decoded block by block.

    Only the ranges are kept, and decoding stops at the last range's end: an upload's
    evidence (a few seconds around each match) is read back from its file rather than
    held while the upload is matched. The samples are those :func:`fingerprint.decode.stream_audio`
    gives for the whole file, cut at ``int(seconds * sample_rate)``.

    Raises
    ------
    AudioDecodeError, AudioTooLongError
        As :func:`fingerprint.decode.stream_audio`.
    """
    if not ranges:
        return []
    bounds = [(int(start * sample_rate), int(end * sample_rate)) for start, end in ranges]
    parts: list[list[np.ndarray]] = [[] for _ in bounds]
    last = max((end for _, end in bounds), default=0)
    # A generator: closed as soon as the last range is read, which stops the decoder.
    blocks = cast(Generator[np.ndarray, None, None], stream_audio(path, sample_rate, max_duration))
    try:
        first = 0
        for block in blocks:
            for (start, end), part in zip(bounds, parts):
                if start < first + len(block) and end > first:
                    part.append(block[max(0, start - first):max(0, end - first)])
            first += len(block)
            if first >= last:
                break
    finally:
        blocks.close()
    return [np.concatenate(part) if part else np.zeros(0, np.float32) for part in parts]


@dataclass(frozen=True)
class IndexInfo:
    """Size of an index.

    ``melody_segments`` is the number of melody-tier segment descriptors, or None for
    an index built without a melody tier (covers are then not searched).
    ``upgradable`` lists the tiers :meth:`Refrain.upgrade_index` would bring up to date
    (an index from an earlier Refrain: slower lookups until then). ``proposals`` says
    whether the index holds the codes that bound a query's search to proposed tracks
    (:mod:`matcher.proposals`); an index from before them searches every track until its
    recordings are ingested into a new index.
    """

    directory: str
    tracks: int
    hours: float
    landmarks: int
    bytes: int
    files: dict[str, int]
    melody_segments: int | None = None
    upgradable: list[str] = field(default_factory=list)
    proposals: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def _warm_up_signal(sample_rate: int, seconds: float = 12.0) -> np.ndarray:
    """Tones of random pitch, a quarter second each, over faint noise: every stage finds peaks in it."""
    draw = np.random.default_rng(0)
    note = int(sample_rate / 4)
    t = np.arange(note) / sample_rate
    tones = [np.sin(2 * np.pi * 110.0 * 2 ** (draw.integers(0, 48) / 12) * t) * np.hanning(note)
             for _ in range(int(seconds * 4))]
    return (0.5 * np.concatenate(tones) + 0.01 * draw.standard_normal(note * len(tones))).astype(np.float32)


_PR_SET_PDEATHSIG = 1  # prctl(2) option: the signal a process gets when its parent dies


def _die_with_parent(parent_pid: int) -> None:
    """Worker initializer: be killed with the ingest that started us (Linux), even by SIGKILL.

    Forked workers inherit the index's lock file descriptor; a worker that outlived a
    killed ingest would hold the write lock until someone killed it by hand.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: workers still exit when their queues close
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _fingerprint_job(path: str, params: FingerprintParams, max_seconds: float) -> Fingerprint:
    # Runs in worker processes: must stay a module-level function so it pickles.
    return fingerprint_file(path, params, max_seconds)


class Refrain:
    """A catalogue index opened for matching (and, if ``writable``, for ingest and removal).

    Examples
    --------
    >>> with Refrain.open("catalogue-index", create=True) as refrain:   # doctest: +SKIP
    ...     for result in refrain.ingest(["music/"]):
    ...         print(result.status, result.path)
    ...     print(refrain.match_file("upload.mp3").matches)
    """

    def __init__(self, store: IndexStore, config: Config):
        self.store = store
        self.config = config
        self._catalogue: Catalogue | None = None

    @classmethod
    def open(cls, directory: str | os.PathLike, config: Config | None = None, writable: bool = False,
             create: bool = False, mmap: bool = False) -> "Refrain":
        """Open the index in ``directory`` (see :meth:`index.IndexStore.open`)."""
        config = config or Config()
        store = IndexStore.open(Path(directory), writable=writable, create=create,
                                params=config.fingerprint, mmap=mmap, writes=config.index_writes)
        return cls(store, config)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "Refrain":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def params(self) -> FingerprintParams:
        """The fingerprint settings of this index (queries use them too)."""
        return self.store.fingerprint_params

    def _searched_catalogue(self) -> Catalogue:
        """What the matcher searches: built once per catalogue change, not per query.

        Its reportable tracks are two arrays (:class:`matcher.types.TrackDurations`), read
        from the catalogue without a Python object per track.
        """
        catalogue = self._catalogue
        if catalogue is None:
            catalogue = self._catalogue = Catalogue(self.store.tiers, self.params,
                                                    TrackDurations(*self.store.catalog.ready_durations()))
        return catalogue

    # -- catalogue writes ----------------------------------------------------------------

    def ingest(self, paths: Iterable[os.PathLike], jobs: int = 1,
               metadata: TrackMetadata = TrackMetadata()) -> Iterator[IngestResult]:
        """Fingerprint and add recordings, yielding one result per file as it completes.

        Files already in the catalogue (same bytes) are skipped; a file whose source
        path is in the catalogue with other bytes replaces that track. The index is
        saved every ``config.commit_every`` new tracks and when the generator ends —
        also when it is closed early or interrupted — so finished work is kept.

        Parameters
        ----------
        paths : iterable of path-like
            Files and folders (see :func:`audio_files`).
        jobs : int
            Worker processes for decoding and fingerprinting.
        metadata : TrackMetadata
            Title/artist/ISRC applied to every file of this call (for single-file ingests).
        """
        files = audio_files(paths)
        todo: list[tuple[str, str]] = []
        queued: dict[str, str] = {}  # digest -> source, for identical files within this call
        for path in files:
            source = str(path)
            try:
                digest = file_digest(path)
            except OSError as err:
                yield IngestResult(source, "error", error=f"{source}: {err.strerror or err}")
                continue
            existing = self.store.catalog.find_ready(content_hash=digest)
            if existing is not None:
                yield IngestResult(source, "unchanged", existing.track_id, existing.duration,
                                   existing.n_landmarks)
                continue
            if digest in queued:
                yield IngestResult(source, "duplicate")
                continue
            queued[digest] = source
            todo.append((source, digest))

        added_since_commit = 0
        try:
            for source, digest, outcome in self._fingerprint_all(todo, jobs):
                if isinstance(outcome, Exception):
                    yield IngestResult(source, "error", error=str(outcome))
                    continue
                replaced = self.store.catalog.find_ready(source=source)
                if replaced is not None:
                    self.store.remove_track(replaced.track_id)
                track_id = self.store.add_track(source, digest, outcome, metadata)
                self._catalogue = None
                added_since_commit += 1
                if added_since_commit >= self.config.commit_every:
                    self.store.commit()
                    self._catalogue = None  # the committed tracks are matchable now
                    added_since_commit = 0
                yield IngestResult(source, "updated" if replaced else "added", track_id,
                                   outcome.duration, len(outcome))
        finally:
            self.store.commit()
            self._catalogue = None

    def _fingerprint_all(self, todo: list[tuple[str, str]], jobs: int):
        """Yield (source, digest, Fingerprint or the input error) as each file finishes."""
        params, limit = self.params, self.config.max_track_seconds
        if jobs <= 1 or len(todo) <= 1:
            for source, digest in todo:
                try:
                    yield source, digest, _fingerprint_job(source, params, limit)
                except (AudioDecodeError, FingerprintError) as err:
                    yield source, digest, err
            return
        with ProcessPoolExecutor(max_workers=jobs, initializer=_die_with_parent, initargs=(os.getpid(),)) as pool:
            futures = {pool.submit(_fingerprint_job, source, params, limit): (source, digest)
                       for source, digest in todo}
            try:
                for future in as_completed(futures):
                    source, digest = futures[future]
                    try:
                        yield source, digest, future.result()
                    except (AudioDecodeError, FingerprintError) as err:
                        yield source, digest, err
            finally:
                for future in futures:
                    future.cancel()

    def ingest_fingerprint(self, fp: Fingerprint, source: str, content_hash: str,
                           metadata: TrackMetadata = TrackMetadata()) -> IngestResult:
        """Add a recording whose fingerprint is already computed (e.g. rebuilt from a stored one).

        For a recording whose audio is no longer at hand: a published upload is kept
        only as its fingerprint (:mod:`fingerprint.serialize`). The track is committed
        before this returns. Same rules as :meth:`ingest`: a recording with these bytes
        already in the catalogue is left ``unchanged``; a track of the same ``source``
        with other bytes is replaced (``updated``).

        Parameters
        ----------
        fp : Fingerprint
            Made with :attr:`params` (a query fingerprint's dense peaks are ignored).
        source : str
            What the track is recorded as coming from (the catalogue's ``source``).
        content_hash : str
            SHA-256 hex of the recording's bytes: its identity in the catalogue.
        metadata : TrackMetadata

        Raises
        ------
        ValueError
            When ``fp`` lacks what this index stores (a melody for an index with a melody
            tier); the index is unchanged.
        """
        existing = self.store.catalog.find_ready(content_hash=content_hash)
        if existing is not None:
            return IngestResult(source, "unchanged", existing.track_id, existing.duration, existing.n_landmarks)
        if self.store.melody is not None and fp.melody is None:
            raise ValueError("the fingerprint has no melody, but this index has a melody tier")
        replaced = self.store.catalog.find_ready(source=source)
        if replaced is not None:
            self.store.remove_track(replaced.track_id)
        try:
            track_id = self.store.add_track(source, content_hash, fp, metadata)
        finally:
            self.store.commit()
            self._catalogue = None
        return IngestResult(source, "updated" if replaced else "added", track_id, fp.duration, len(fp))

    def tracks(self) -> list[Track]:
        """The matchable catalogue recordings, by track id."""
        ready = self.store.catalog.ready_tracks()
        return [ready[track_id] for track_id in sorted(ready)]

    def track(self, track_id: int) -> Track | None:
        """The matchable recording with this id, or None."""
        return self.store.catalog.get(track_id)

    def track_count(self) -> int:
        """How many recordings are matchable (counted by the catalogue, not listed)."""
        return self.store.catalog.totals()[0]

    def remove(self, track_id: int) -> Track:
        """Remove a track (takedown or consent withdrawn); raises KeyError for an unknown id."""
        track = self.store.remove_track(track_id)
        self._catalogue = None
        return track

    # -- queries ---------------------------------------------------------------------------

    def match_fingerprint(self, fp: Fingerprint, name: str) -> QueryResult:
        """Match an already computed query fingerprint: landmark tiers, then the melody tier.

        A track the landmark tiers find is reported from them (a copy or derivative of
        the recording); the melody tier reports, as ``cover``, only compositions whose
        recording did not match.
        """
        return self.match_with_evidence(fp, name)[0]

    def match_with_evidence(self, fp: Fingerprint, name: str,
                            stats: dict[str, float] | None = None) -> tuple[QueryResult, dict[int, np.ndarray]]:
        """:meth:`match_fingerprint`, plus the aligned points behind each matched track.

        For analysts: the points of a track are its :attr:`matcher.Match.points`, the
        (query time, reference time) pairs behind the verdict, to plot against
        ``offset + time_ratio * query time`` (empty for a cover).

        Parameters
        ----------
        fp : Fingerprint
        name : str
            The query's name in the result.
        stats : dict, optional
            If given, the seconds spent in each tier are added to it under the tier's name
            (for the service's metrics).

        Returns
        -------
        result : QueryResult
        points : dict of int to np.ndarray, shape (n, 2)
            Per matched track id.
        """
        found = match(fp, self._searched_catalogue(), self.config.match, timings=stats)
        return self._reported(found, fp.duration, name)

    def match_blocks(self, blocks: Iterable[np.ndarray], name: str,
                     stats: dict[str, float] | None = None) -> tuple[QueryResult, dict[int, np.ndarray]]:
        """:meth:`match_with_evidence` of a signal that arrives in blocks (:meth:`match_stream`)."""
        streamed = self.match_stream(blocks, name, stats)
        return streamed.result, streamed.points

    def match_stream(self, blocks: Iterable[np.ndarray], name: str, stats: dict[str, float] | None = None,
                     stages: dict[str, float] | None = None) -> StreamedMatch:
        """:meth:`match_with_evidence` of a signal that arrives in blocks, held one window at a time.

        Each window of ``config.match.upload_window_seconds`` is fingerprinted and searched
        as soon as its samples (and the few seconds after it its landmarks reach) have
        arrived, then dropped (:func:`fingerprint.pipeline.fingerprint_windows`): memory
        follows the window, not the upload. What the whole upload's fingerprint needs
        (peaks and melody, tens of kB per minute) is kept in :attr:`StreamedMatch.windows`.

        Parameters
        ----------
        blocks : iterable of np.ndarray
            Consecutive pieces of a mono signal at ``self.params.sample_rate`` (e.g.
            :func:`fingerprint.decode.stream_audio`).
        name : str
        stats : dict, optional
            As for :meth:`match_with_evidence`.
        stages : dict, optional
            If given, the seconds spent getting ``blocks`` (``decode``), fingerprinting
            (``fingerprint``) and the rest (``match``) are added to it, each second once.

        Raises
        ------
        FingerprintError
            When no window holds a landmark; and whatever ``blocks`` raises.
        """
        started, clock = time.perf_counter(), _StageClock()
        windows = UploadWindows(self.params, self.config.match.upload_window_seconds)
        fingerprinted = fingerprint_windows(clock.timed(blocks, "decode"), self.params, windows.window_seconds,
                                            dense_peaks=True)
        found = match_windows(windows.kept(clock.timed(fingerprinted, "fingerprint")), self._searched_catalogue(),
                              self.config.match, timings=stats)
        result, points = self._reported(found, windows.duration, name)
        clock.seconds["match"] = time.perf_counter() - started - sum(clock.seconds.values())
        clock.add_to(stages)
        return StreamedMatch(result, points, windows)

    def with_metadata(self, found: list[Match]) -> list[TrackMatch]:
        """The matches with their tracks' catalogue metadata, read for those tracks only.

        A match on a track removed while the query ran is left out.
        """
        ready = self.store.catalog.tracks_by_id(m.track_id for m in found)
        return [TrackMatch(**{f.name: getattr(m, f.name) for f in fields(Match)}, source=ready[m.track_id].source,
                           title=ready[m.track_id].title, artist=ready[m.track_id].artist,
                           isrc=ready[m.track_id].isrc) for m in found if m.track_id in ready]

    def _reported(self, found: list[Match], seconds: float,
                  name: str) -> tuple[QueryResult, dict[int, np.ndarray]]:
        """The matches with their tracks' metadata, and the aligned points behind each."""
        matches = self.with_metadata(found)
        result = QueryResult(query=name, duration=round(seconds, 3), matches=matches)
        return result, {m.track_id: m.points for m in matches}

    def upgrade_index(self) -> list[str]:
        """Bring an index built by an earlier Refrain to the current layout, in place.

        Needs the index opened writable. See :meth:`index.IndexStore.upgrade`.

        Returns
        -------
        list of str
            The tiers upgraded (empty if the index was already current).
        """
        return self.store.upgrade()

    def warm_up(self) -> None:
        """Compile the matcher's kernels now, or load them from numba's cache.

        The per-hit loops of fingerprinting and matching are numba kernels, compiled on
        first use: about 15 s in a fresh install (then cached on disk next to the
        sources, or under ``NUMBA_CACHE_DIR``), about half a second to load from the
        cache. A long-running service calls this at startup so that no upload waits for
        it: a few seconds of generated tones are matched through the real index, with
        and without proposals (tones propose no candidate, and the derivative search
        must compile too), and the results dropped.
        """
        fp = fingerprint_signal(_warm_up_signal(self.params.sample_rate), self.params, dense_peaks=True)
        proposals = self.config.match.proposals
        bounded = None if proposals is None else replace(proposals, min_catalogue_tracks=0)
        for params in (replace(self.config.match, proposals=bounded), replace(self.config.match, proposals=None)):
            match(fp, self._searched_catalogue(), params)

    def match_signal(self, y: np.ndarray, name: str = "<signal>") -> QueryResult:
        """Match mono samples already at ``self.params.sample_rate`` (window by window, :meth:`match_blocks`)."""
        return self.match_blocks([y], name)[0]

    def match_file(self, path: os.PathLike, name: str | None = None) -> QueryResult:
        """Decode and match one query file, block by block (:func:`fingerprint.decode.stream_audio`).

        Raises
        ------
        AudioDecodeError, FingerprintError
            For a file that is not usable audio; the message says why.
        """
        blocks = stream_audio(path, self.params.sample_rate, self.config.max_query_seconds)
        return self.match_blocks(blocks, str(path) if name is None else name)[0]

    def info(self) -> IndexInfo:
        """Tracks, hours, landmarks and bytes of the index."""
        tracks, seconds, landmarks = self.store.catalog.totals()
        files = self.store.size_bytes()
        melody = self.store.melody
        return IndexInfo(directory=str(self.store.directory), tracks=tracks,
                         hours=round(seconds / 3600.0, 4), landmarks=landmarks,
                         bytes=sum(files.values()), files=files,
                         melody_segments=None if melody is None else melody.ntotal,
                         upgradable=self.store.upgradable(),
                         proposals=all(tier in self.store.tiers for tier in (QUAD_TIER, DOUBLE_TIER)))

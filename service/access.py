"""How one service process reads and writes its catalogue while other processes serve it too.

``refrain serve --index DIR --workers N`` runs N processes over one index directory. Each
matches on a read-only, memory-mapped view of the committed index (:class:`SharedIndex`)
and opens the index writable only for the length of one write — an ingest, a takedown, a
published derivative — under the index's own write lock (``IndexStore``'s ``DIR/.lock``),
so that writes from every process and from the CLI take turns and a reader never sees a
half-written index. A process notices another's commit at its next request: the index
files' identities (inode, size, time: :func:`refrain.cluster.shard.directory_signature`)
changed, and it opens a new view; the queries still running finish on the old one, which
is closed when the last of them lets it go (its memory maps and its catalogue connection
are released with the object).

A cluster (``--cluster``) is written through its router, whose writes take the cluster's
own write lock; within a process its matches and writes take turns on a
:class:`~refrain.service.locking.ReadWriteLock` (:class:`ClusterAccess`).
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

from refrain.api import Refrain
from refrain.cluster import ClusterRefrain
from refrain.cluster.shard import directory_signature
from refrain.config import Config
from refrain.fingerprint import FingerprintParams
from refrain.index import IndexBusyError, IndexOpenError
from refrain.service.locking import ReadWriteLock

__all__ = ["CatalogueAccess", "SharedIndex", "ClusterAccess"]

log = logging.getLogger("refrain.service")

#: Between two attempts at the index's write lock (seconds).
_WRITE_LOCK_POLL_SECONDS = 0.05
#: Opens of a new view tried in a row while writers keep committing; then the old view serves until the next request.
_VIEW_OPEN_ATTEMPTS = 3


class CatalogueAccess(Protocol):
    """What :class:`service.core.MatchService` needs of its catalogue, an index directory or a cluster."""

    params: FingerprintParams

    @property
    def current(self) -> Refrain | ClusterRefrain:
        """The catalogue as last opened, for quick reads (its settings, totals); matches use :meth:`reading`."""

    def reading(self) -> Iterator[Refrain | ClusterRefrain]:
        """The catalogue to match against, unchanged for the ``with`` block."""

    def writing(self) -> Iterator[Refrain | ClusterRefrain]:
        """The catalogue opened for one write; raises :class:`refrain.index.IndexBusyError` past the deadline."""

    def track_count(self) -> int:
        """Matchable recordings as of the last committed write seen (never waits for a write in progress)."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class _View:
    """One read-only opening of the index, the files it was opened from, and its matchable tracks."""

    refrain: Refrain
    signature: tuple
    tracks: int


class SharedIndex:
    """An index directory that several processes serve: read-only views, each write under the index's write lock.

    Parameters
    ----------
    directory : Path
        The index directory (created, empty, if it holds nothing yet).
    config : Config
    write_deadline_seconds : float
        Longest wait for the index's write lock, held by another process's write; then
        :class:`refrain.index.IndexBusyError` (the service answers 503 with ``Retry-After``).
    """

    def __init__(self, directory: Path, config: Config, write_deadline_seconds: float):
        self.directory = Path(directory)
        self.config = config
        self.write_deadline_seconds = write_deadline_seconds
        self._reopening = threading.Lock()  # one thread opens a new view; the others use the old one meanwhile
        self._writer = threading.Lock()  # this process's writes take turns before they wait on other processes
        if not (self.directory.is_dir() and any(self.directory.iterdir())):
            with self._writable():  # a new, empty index
                pass
        view = self._open_view()
        while view is None:  # a writer committed while the view was opened
            view = self._open_view()
        self._view = view
        self.params = view.refrain.params

    def _open_view(self) -> _View | None:
        """The committed index, read-only and mapped; None if a writer changed it while it was being opened."""
        before = directory_signature(self.directory)
        refrain = Refrain.open(self.directory, config=self.config, mmap=True)
        try:
            tracks = refrain.track_count()  # the ready tracks read now, beside the files they describe
        except BaseException:
            refrain.close()
            raise
        if directory_signature(self.directory) != before:
            refrain.close()
            return None
        return _View(refrain, before, tracks)

    @property
    def current(self) -> Refrain:
        return self._view.refrain

    def track_count(self) -> int:
        self.refresh(wait=False)
        return self._view.tracks

    def refresh(self, wait: bool = True) -> None:
        """Open a new view if the index's files changed since the current one was opened (another writer's commit).

        Queries running on the old view finish on it. While writers keep committing the old
        view stays (tried again at the next request); a view that cannot be opened is logged
        and the old one kept.

        Parameters
        ----------
        wait : bool
            If another thread is opening a new view already: wait for it and look again
            (a match, which must see every write answered before it began), or return at
            once and leave the view as it is (the liveness probe's track count).
        """
        if directory_signature(self.directory) == self._view.signature:
            return
        if not self._reopening.acquire(blocking=wait):
            return
        try:
            if directory_signature(self.directory) == self._view.signature:
                return
            try:
                fresh = None
                for _ in range(_VIEW_OPEN_ATTEMPTS):
                    fresh = self._open_view()
                    if fresh is not None:
                        break
            except (IndexOpenError, OSError) as err:
                log.warning("%s: the index changed but could not be opened again (%s); matching on the "
                            "previous view", self.directory, err)
                return
            if fresh is not None:
                # The old view is not closed here: queries still running hold it, and it goes with the last.
                self._view = fresh
        finally:
            self._reopening.release()

    @contextmanager
    def reading(self) -> Iterator[Refrain]:
        self.refresh()
        yield self._view.refrain

    @contextmanager
    def writing(self) -> Iterator[Refrain]:
        try:
            with self._writable() as refrain:
                yield refrain
        finally:
            self.refresh()  # this process's next match sees what it just wrote

    @contextmanager
    def _writable(self) -> Iterator[Refrain]:
        """The index opened writable, its write lock held for the ``with`` block; waits up to the deadline."""
        deadline = time.monotonic() + self.write_deadline_seconds
        busy = IndexBusyError(f"{self.directory}: another process has been writing to this index for over "
                              f"{self.write_deadline_seconds:g} s")
        if not self._writer.acquire(timeout=self.write_deadline_seconds):
            raise busy
        try:
            while True:
                try:
                    refrain = Refrain.open(self.directory, config=self.config, writable=True, create=True)
                    break
                except IndexBusyError:
                    if time.monotonic() >= deadline:
                        raise busy from None
                    time.sleep(_WRITE_LOCK_POLL_SECONDS)
            with refrain:
                yield refrain
        finally:
            self._writer.release()

    def close(self) -> None:
        with self._writer, self._reopening:
            self._view.refrain.close()


class ClusterAccess:
    """A cluster through its router (opened for writing), matches and writes taking turns within this process.

    Parameters
    ----------
    directory : Path
        The cluster directory.
    config : Config
    deadline_seconds : float
        Longest wait for every shard's answer, and for the cluster's write lock.
    """

    def __init__(self, directory: Path, config: Config, deadline_seconds: float):
        self.refrain = ClusterRefrain.open(directory, config=config, writable=True, deadline_seconds=deadline_seconds)
        self.params = self.refrain.params
        self.lock = ReadWriteLock()
        self._tracks = self.refrain.track_count()

    @property
    def current(self) -> ClusterRefrain:
        return self.refrain

    def track_count(self) -> int:
        return self._tracks

    @contextmanager
    def reading(self) -> Iterator[ClusterRefrain]:
        with self.lock.read():
            yield self.refrain

    @contextmanager
    def writing(self) -> Iterator[ClusterRefrain]:
        with self.lock.write():
            try:
                yield self.refrain
            finally:
                self._tracks = self.refrain.track_count()

    def close(self) -> None:
        with self.lock.write():
            self.refrain.close()

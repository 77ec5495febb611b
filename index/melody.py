"""The melody store: segment descriptors and chroma sequences of catalogue tracks in FAISS.

Two FAISS files per index directory:

* the **segment file** holds one unit-length float32 descriptor per catalogue
  segment (:func:`fingerprint.melody.segment_descriptors`) in an ``IndexFlatIP``
  wrapped in an ``IndexIDMap2``: an inner product is a correlation, the search is
  exact, and ``remove_ids`` takes a track out without a rebuild;
* the **chroma file** keeps each track's chroma sequence, in blocks of
  ``segment_hop`` frames stored as float16 vectors (``IndexScalarQuantizer``,
  ``QT_fp16``, no training) in another ``IndexIDMap2``, so that the matcher can
  verify a candidate by aligning whole chroma sequences.

A FAISS id packs ``(track_id, segment or block number)`` as
``track_id << 20 | number``; all of a track's entries form one id range, removed
with one ``IDSelectorRange``. Both files are saved atomically (temporary file,
fsync, rename) and can be memory-mapped on load.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import cast

import faiss
import numpy as np

from refrain.fingerprint.melody import (PITCH_CLASSES, MelodyParams, descriptor_dim, segment_descriptors,
                                segment_starts)
from refrain.index.files import replace_atomically

__all__ = ["MelodyIndex", "SEGMENT_BITS", "MELODY_LAYOUT"]

#: What the melody files hold, recorded in the index manifest: 2-D Fourier magnitudes of
#: patches of log-compressed chroma (:func:`fingerprint.melody.chroma_sequence`). Changed
#: whenever the chroma or the descriptors change, so that an index built with another
#: chroma is refused with a re-ingest message instead of being compared with new queries.
#: v1 (power-2 folded chroma) -> v2 (log-compressed semitone energies, then folded).
MELODY_LAYOUT = "chroma-log-2dftm-v2"

#: Low bits of a FAISS id that number a track's segments (2**20 segments of 4 s: 48 days).
SEGMENT_BITS = 20
_ID_BITS = 63



def chroma_path(path: os.PathLike) -> Path:
    """The chroma file that goes with the segment file ``path``."""
    path = Path(path)
    return path.with_name(path.stem + "-chroma" + path.suffix)


class MelodyIndex:
    """Segment descriptors (searchable) and chroma sequences (for verification) of tracks.

    Use :meth:`create` for an empty store or :meth:`load` for a saved one.

    Parameters
    ----------
    segments : faiss.IndexIDMap2
        Over an ``IndexFlatIP`` of ``descriptor_dim(params)`` dimensions.
    chroma : faiss.IndexIDMap2
        Over a float16 ``IndexScalarQuantizer`` of ``12 * params.segment_hop`` dimensions.
    params : MelodyParams
    writable : bool
    """

    def __init__(self, segments: faiss.IndexIDMap2, chroma: faiss.IndexIDMap2, params: MelodyParams,
                 writable: bool):
        if segments.d != descriptor_dim(params) or chroma.d != PITCH_CLASSES * params.segment_hop:
            raise ValueError("melody index dimensions do not match its melody parameters")
        self._segments = segments
        self._chroma = chroma
        self.params = params
        self.writable = writable
        self._chroma_ids: np.ndarray | None = None  # ids of the chroma blocks, in storage order

    @classmethod
    def create(cls, params: MelodyParams) -> "MelodyIndex":
        """An empty store for descriptors made with ``params``."""
        segments = faiss.IndexIDMap2(faiss.IndexFlatIP(descriptor_dim(params)))
        chroma = faiss.IndexIDMap2(faiss.IndexScalarQuantizer(PITCH_CLASSES * params.segment_hop,
                                                              faiss.ScalarQuantizer.QT_fp16))
        return cls(segments, chroma, params, writable=True)

    @classmethod
    def load(cls, path: os.PathLike, params: MelodyParams, mmap: bool = False) -> "MelodyIndex":
        """Read a store written by :meth:`save` (``path`` and its :func:`chroma_path`).

        Parameters
        ----------
        path : path-like
            The segment file.
        params : MelodyParams
            The settings it was built with (recorded in the index manifest).
        mmap : bool
            Memory-map both files: the store is then read-only.
        """
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        # Both files hold the IndexIDMap2 that save() wrote (SWIG returns the concrete class).
        segments = cast(faiss.IndexIDMap2, faiss.read_index(str(path), flags))
        chroma = cast(faiss.IndexIDMap2, faiss.read_index(str(chroma_path(path)), flags))
        return cls(segments, chroma, params, writable=not mmap)

    def save(self, path: os.PathLike) -> None:
        """Write both files atomically (chroma first: a segment hit must find its chroma)."""
        replace_atomically(chroma_path(path), lambda tmp: faiss.write_index(self._chroma, tmp))
        replace_atomically(path, lambda tmp: faiss.write_index(self._segments, tmp))

    @property
    def ntotal(self) -> int:
        """Number of segment descriptors stored."""
        return int(self._segments.ntotal)

    def add(self, track_id: int, chroma: np.ndarray) -> int:
        """Store one track's segment descriptors and chroma sequence.

        Parameters
        ----------
        track_id : int
            Non-negative catalogue id, below ``2 ** 43``.
        chroma : np.ndarray, shape (n, 12)
            The track's chroma sequence (:attr:`fingerprint.Fingerprint.melody`).

        Returns
        -------
        int
            Segment descriptors added: 0 for a track shorter than one segment
            (``segment_frames`` chroma frames), which the melody tier then cannot find.
        """
        self._require_writable()
        if not 0 <= track_id < 1 << (_ID_BITS - SEGMENT_BITS):
            raise ValueError(f"track id {track_id} out of range")
        hop = self.params.segment_hop
        n_blocks = -(-len(chroma) // hop)
        if n_blocks >= 1 << SEGMENT_BITS:
            raise ValueError(f"track {track_id} is too long for the melody tier")
        base = np.int64(track_id) << SEGMENT_BITS
        starts = segment_starts(len(chroma), self.params, hop)
        if len(starts):
            self._segments.add_with_ids(segment_descriptors(chroma, starts, self.params),
                                        base + starts // hop)
        if n_blocks:
            padded = np.zeros((n_blocks * hop, PITCH_CLASSES), dtype=np.float32)
            padded[:len(chroma)] = chroma
            self._chroma.add_with_ids(padded.reshape(n_blocks, -1), base + np.arange(n_blocks))
            self._chroma_ids = None
        return len(starts)

    def remove(self, track_id: int) -> int:
        """Remove every descriptor and chroma block of ``track_id``; returns descriptors removed."""
        self._require_writable()
        selector = faiss.IDSelectorRange(int(track_id) << SEGMENT_BITS, (int(track_id) + 1) << SEGMENT_BITS)
        self._chroma.remove_ids(selector)
        self._chroma_ids = None
        return int(self._segments.remove_ids(selector))

    def search(self, descriptors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The ``k`` most similar catalogue segments of each query descriptor.

        Returns
        -------
        similarity : np.ndarray, shape (n, k), float32
            Inner products (correlations), best first; -inf where fewer than ``k`` exist.
        track_ids, segments : np.ndarray, shape (n, k), int64
            Track and segment number of each hit (-1 where there is none).
        """
        n = len(descriptors)
        if n == 0 or self.ntotal == 0:
            return (np.full((n, k), -np.inf, dtype=np.float32), np.full((n, k), -1, dtype=np.int64),
                    np.full((n, k), -1, dtype=np.int64))
        similarity, ids = self._segments.search(np.ascontiguousarray(descriptors, dtype=np.float32), k)
        missing = ids < 0
        similarity[missing] = -np.inf
        track_ids = np.where(missing, -1, ids >> SEGMENT_BITS)
        segments = np.where(missing, -1, ids & ((1 << SEGMENT_BITS) - 1))
        return similarity, track_ids, segments

    def chroma(self, track_id: int) -> np.ndarray:
        """The stored chroma sequence of a track, shape (n, 12) (zero-padded to whole blocks)."""
        if self._chroma_ids is None:
            self._chroma_ids = faiss.vector_to_array(self._chroma.id_map).astype(np.int64)
        positions = np.nonzero((self._chroma_ids >> SEGMENT_BITS) == track_id)[0]
        if len(positions) == 0:
            return np.zeros((0, PITCH_CLASSES), dtype=np.float32)
        order = np.argsort(self._chroma_ids[positions])
        blocks = self._chroma.index.reconstruct_batch(positions[order].astype(np.int64))
        return blocks.reshape(-1, PITCH_CLASSES).astype(np.float32)

    def _require_writable(self) -> None:
        if not self.writable:
            raise PermissionError("this melody index was opened read-only (memory-mapped)")

"""The melody store: segment descriptors and chroma sequences of catalogue tracks in FAISS.

Two FAISS files per index directory:

* the **segment file** holds one unit-length descriptor per catalogue segment
  (:func:`fingerprint.melody.segment_descriptors`), an inner product being a
  correlation. A small store keeps them as float32 in an ``IndexFlatIP`` inside an
  ``IndexIDMap2``: an exact search through BLAS (3.7x faster than over 8-bit codes at
  6,000 descriptors). From ``MelodyParams.ivf_min_segments`` descriptors on they move
  into an ``IndexIVFScalarQuantizer`` of 8-bit codes (inverted file: a query descriptor
  compares with the list centroids and with the ``nprobe`` nearest lists only), trained
  at the save (commit) that first passes the size and again whenever the store has
  grown ``ivf_retrain_growth`` times;
* the **chroma file** keeps each track's chroma sequence, in blocks of
  ``segment_hop`` frames, in another ``IndexIDMap2`` over an 8-bit
  ``IndexScalarQuantizer``, so that the matcher can verify a candidate by aligning
  whole chroma sequences.

The 8-bit codes span a fixed range (``QT_8bit_uniform``, "trained" on the range itself:
no data needed, the same codes in every store): descriptor values lie within ±0.5
(measured -0.19..0.32 on real music) and chroma values, rows of unit length, within
±1; a step of 1/255 of the range moves a correlation by about 0.001. A chroma file
written before (float16) opens and grows as it is.

A FAISS id packs ``(track_id, segment or block number)`` as
``track_id << 20 | number``; all of a track's entries form one id range, removed
with one ``IDSelectorRange`` (flat or IVF alike). Both files are saved atomically
(temporary file, fsync, rename) and can be memory-mapped on load.
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

__all__ = ["MelodyIndex", "SEGMENT_BITS", "MELODY_LAYOUT", "ivf_lists"]

#: What the melody files hold, recorded in the index manifest: 2-D Fourier magnitudes of
#: patches of log-compressed chroma (:func:`fingerprint.melody.chroma_sequence`). Changed
#: whenever the chroma or the descriptors change, so that an index built with another
#: chroma is refused with a re-ingest message instead of being compared with new queries.
#: v1 (power-2 folded chroma) -> v2 (log-compressed semitone energies, then folded).
MELODY_LAYOUT = "chroma-log-2dftm-v2"

#: Low bits of a FAISS id that number a track's segments (2**20 segments of 4 s: 48 days).
SEGMENT_BITS = 20
_ID_BITS = 63

#: The value ranges the 8-bit codes span (see the module docstring).
_DESCRIPTOR_RANGE = 0.5
_CHROMA_RANGE = 1.0

#: Training vectors per IVF list: k-means runs on a sample (773 lists over 37,000 descriptors: 2.2 CPU s).
_TRAINING_POINTS_PER_LIST = 64

#: Descriptors decoded and re-added at a time while the IVF is (re)built.
_REBUILD_CHUNK = 65_536


def ivf_lists(n_segments: int, params: MelodyParams) -> int:
    """Inverted lists for a store of ``n_segments`` descriptors; 0: search them all (flat)."""
    if n_segments < params.ivf_min_segments:
        return 0
    return max(1, int(round(params.ivf_lists_per_root * np.sqrt(n_segments))))


def _eight_bit(dim: int, value_range: float) -> faiss.IndexScalarQuantizer:
    """An inner-product store of 8-bit codes over ``[-value_range, value_range]``."""
    store = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit_uniform, faiss.METRIC_INNER_PRODUCT)
    _set_range(store.sq, dim, value_range)
    store.is_trained = True
    return store


def _set_range(quantizer: faiss.ScalarQuantizer, dim: int, value_range: float) -> None:
    """Train a uniform 8-bit quantizer on its range alone."""
    quantizer.train(np.array([[-value_range] * dim, [value_range] * dim], dtype=np.float32))


def chroma_path(path: os.PathLike) -> Path:
    """The chroma file that goes with the segment file ``path``."""
    path = Path(path)
    return path.with_name(path.stem + "-chroma" + path.suffix)


class MelodyIndex:
    """Segment descriptors (searchable) and chroma sequences (for verification) of tracks.

    Use :meth:`create` for an empty store or :meth:`load` for a saved one.

    Parameters
    ----------
    segments : faiss.Index
        ``descriptor_dim(params)`` dimensions: an ``IndexIDMap2`` over an ``IndexFlatIP``,
        or an ``IndexIVFScalarQuantizer`` (see the module docstring).
    chroma : faiss.IndexIDMap2
        Over an ``IndexScalarQuantizer`` (8-bit; float16 when written before) of
        ``12 * params.segment_hop`` dimensions.
    params : MelodyParams
    writable : bool
    """

    def __init__(self, segments: faiss.Index, chroma: faiss.IndexIDMap2, params: MelodyParams,
                 writable: bool):
        if segments.d != descriptor_dim(params) or chroma.d != PITCH_CLASSES * params.segment_hop:
            raise ValueError("melody index dimensions do not match its melody parameters")
        self._segments = segments
        self._chroma = chroma
        self.params = params
        self.writable = writable
        self._chroma_ids: np.ndarray | None = None  # ids of the chroma blocks, sorted
        self._chroma_positions: np.ndarray | None = None  # their positions in the chroma store

    @classmethod
    def create(cls, params: MelodyParams) -> "MelodyIndex":
        """An empty store for descriptors made with ``params``."""
        segments = faiss.IndexIDMap2(faiss.IndexFlatIP(descriptor_dim(params)))
        chroma = faiss.IndexIDMap2(_eight_bit(PITCH_CLASSES * params.segment_hop, _CHROMA_RANGE))
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
        # The segment file holds an IndexIDMap2 or an IndexIVFScalarQuantizer, the chroma file an
        # IndexIDMap2 (SWIG returns the concrete class).
        segments = faiss.read_index(str(path), flags)
        chroma = cast(faiss.IndexIDMap2, faiss.read_index(str(chroma_path(path)), flags))
        return cls(segments, chroma, params, writable=not mmap)

    def save(self, path: os.PathLike) -> None:
        """Write both files atomically (chroma first: a segment hit must find its chroma).

        A store that has reached ``ivf_min_segments`` descriptors, or has grown
        ``ivf_retrain_growth`` times since its IVF was trained, is first rebuilt as an IVF
        trained on its own descriptors (:meth:`rebuild_if_grown`).
        """
        self.rebuild_if_grown()
        replace_atomically(chroma_path(path), lambda tmp: faiss.write_index(self._chroma, tmp))
        replace_atomically(path, lambda tmp: faiss.write_index(self._segments, tmp))

    @property
    def ntotal(self) -> int:
        """Number of segment descriptors stored."""
        return int(self._segments.ntotal)

    @property
    def lists(self) -> int:
        """Inverted lists of the descriptor search; 0 for an exact (flat) search."""
        return int(self._segments.nlist) if isinstance(self._segments, faiss.IndexIVF) else 0

    def rebuild_if_grown(self) -> bool:
        """Move the descriptors into an IVF trained on them, when the store's size calls for one.

        That is when a flat store holds ``ivf_min_segments`` or more, or an IVF store
        ``ivf_retrain_growth`` times the descriptors its list count was chosen for. The
        lists are :func:`ivf_lists` of the size; k-means runs on a sample of
        ``_TRAINING_POINTS_PER_LIST`` descriptors per list (seeded: the same store gives the
        same lists). Returns whether it rebuilt.
        """
        lists, wanted = self.lists, ivf_lists(self.ntotal, self.params)
        trained_for = (lists / self.params.ivf_lists_per_root) ** 2
        if wanted == 0 or (lists and self.ntotal < self.params.ivf_retrain_growth * trained_for):
            return False
        self._require_writable()
        dim = descriptor_dim(self.params)
        ivf = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(dim), dim, wanted,
                                            faiss.ScalarQuantizer.QT_8bit_uniform, faiss.METRIC_INNER_PRODUCT,
                                            False)  # codes of the descriptors, not of residuals
        ivf.cp.max_points_per_centroid = _TRAINING_POINTS_PER_LIST
        sample = np.sort(np.random.default_rng(0).choice(
            self.ntotal, min(self.ntotal, wanted * _TRAINING_POINTS_PER_LIST), replace=False))
        training = np.concatenate([vectors[np.isin(np.arange(first, first + len(vectors)), sample)]
                                   for first, vectors, _ in self._stored_descriptors()])
        ivf.train(training)                       # the k-means lists (and a range for the codes,
        _set_range(ivf.sq, dim, _DESCRIPTOR_RANGE)  # set back to the fixed one)
        for _, vectors, ids in self._stored_descriptors():
            ivf.add_with_ids(vectors, ids)
        self._segments = ivf
        return True

    def _stored_descriptors(self):
        """Every stored descriptor, decoded, as chunks ``(position of the first, vectors, ids)``."""
        if isinstance(self._segments, faiss.IndexIVF):
            invlists, first = self._segments.invlists, 0
            for number in range(self._segments.nlist):
                size = invlists.list_size(number)
                if size == 0:
                    continue
                codes = faiss.rev_swig_ptr(invlists.get_codes(number), size * invlists.code_size)
                ids = faiss.rev_swig_ptr(invlists.get_ids(number), size).astype(np.int64)
                yield first, self._segments.sq.decode(np.asarray(codes).reshape(size, -1)), ids
                first += size
            return
        ids = faiss.vector_to_array(self._segments.id_map).astype(np.int64)
        for first in range(0, len(ids), _REBUILD_CHUNK):
            count = min(_REBUILD_CHUNK, len(ids) - first)
            yield first, self._segments.index.reconstruct_n(first, count), ids[first:first + count]

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
            self._chroma_ids = self._chroma_positions = None
        return len(starts)

    def remove(self, track_id: int) -> int:
        """Remove every descriptor and chroma block of ``track_id``; returns descriptors removed."""
        self._require_writable()
        selector = faiss.IDSelectorRange(int(track_id) << SEGMENT_BITS, (int(track_id) + 1) << SEGMENT_BITS)
        self._chroma.remove_ids(selector)
        self._chroma_ids = self._chroma_positions = None
        return int(self._segments.remove_ids(selector))

    def search(self, descriptors: np.ndarray, k: int,
               nprobe: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The ``k`` most similar catalogue segments of each query descriptor.

        Parameters
        ----------
        descriptors : np.ndarray, shape (n, descriptor_dim)
        k : int
        nprobe : int
            Inverted lists searched per descriptor when the store is an IVF (:attr:`lists`);
            a flat store compares with every descriptor and ignores it.

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
        search = None
        if self.lists:
            search = faiss.SearchParametersIVF()
            search.nprobe = nprobe
        similarity, ids = self._segments.search(np.ascontiguousarray(descriptors, dtype=np.float32), k,
                                                params=search)
        missing = ids < 0
        similarity[missing] = -np.inf
        track_ids = np.where(missing, -1, ids >> SEGMENT_BITS)
        segments = np.where(missing, -1, ids & ((1 << SEGMENT_BITS) - 1))
        return similarity, track_ids, segments

    def chroma(self, track_id: int) -> np.ndarray:
        """The stored chroma sequence of a track, shape (n, 12) (zero-padded to whole blocks)."""
        if self._chroma_ids is None or self._chroma_positions is None:
            ids = faiss.vector_to_array(self._chroma.id_map).astype(np.int64)
            self._chroma_positions = np.argsort(ids, kind="stable")
            self._chroma_ids = ids[self._chroma_positions]
        positions = self._chroma_positions
        first, end = np.searchsorted(self._chroma_ids, [int(track_id) << SEGMENT_BITS,
                                                        (int(track_id) + 1) << SEGMENT_BITS])
        if first == end:
            return np.zeros((0, PITCH_CLASSES), dtype=np.float32)
        blocks = self._chroma.index.reconstruct_batch(positions[first:end])
        return blocks.reshape(-1, PITCH_CLASSES).astype(np.float32)

    def _require_writable(self) -> None:
        if not self.writable:
            raise PermissionError("this melody index was opened read-only (memory-mapped)")

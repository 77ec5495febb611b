"""Process-wide settings that Refrain's speed figures were measured with.

Importing Refrain changes nothing in the process; the CLI, the service and the
benchmarks call :func:`tune_process` once at startup. A program that embeds the
library decides for itself whether to call it (it affects every FAISS and malloc
user of the process).
"""

from __future__ import annotations

import ctypes
import ctypes.util

import faiss

__all__ = ["tune_process"]


def tune_process() -> None:
    """Set FAISS's threads and BLAS threshold and glibc's malloc thresholds for matching.

    - One OpenMP thread for FAISS: a range search over one query's ~1,500 codes measured
      2-4x slower with two threads than with one. Parallelism comes from processes and
      requests instead.
    - Flat searches through BLAS from 20 queries on: FAISS 1.15 does so only from
      128,000, and a query's ~130 melody descriptors then took the one-by-one path,
      10x slower (2.2 s vs 0.19 s against 100,000 segments).
    - glibc keeps a query's large temporary arrays instead of unmapping them after each
      query: arrays up to 32 MiB come from the heap and up to 256 MiB of free heap is
      kept. With glibc's adaptive defaults a 10 s query on the 150-track bench index took
      134 ms p50 (pages faulted in anew on every query), 84 ms with these. A no-op
      where the C library is not glibc.
    """
    faiss.omp_set_num_threads(1)
    faiss.cvar.distance_compute_blas_threshold = 20
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        set_option = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    set_option(m_mmap_threshold, 32 << 20)
    set_option(m_trim_threshold, 256 << 20)

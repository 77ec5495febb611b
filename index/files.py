"""Atomic file replacement, the one way every file of an index directory is written, and
memory-mapped arrays, the way the large ones are read."""

from __future__ import annotations

import os
import struct
import threading
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["replace_atomically", "save_arrays", "map_arrays", "array_names"]


def replace_atomically(path: os.PathLike, write: Callable[[str], object]) -> None:
    """Write ``path`` through a temporary file in the same folder, fsync it, then rename.

    A crash at any point leaves either the old file or the new one, never a torn file.

    Parameters
    ----------
    path : path-like
        The file to (re)place.
    write : callable
        Called with the temporary file's path; writes the whole content there.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., file name length, extra field length
_LOCAL_SIGNATURE = b"PK\x03\x04"
# numpy parses a .npy header with ast.literal_eval, which CPython 3.11.7 cannot run in two
# threads at once (python/cpython#106905: a spurious "AST constructor recursion depth
# mismatch"); shard and service threads map files concurrently.
_HEADER_PARSE_LOCK = threading.Lock()


def save_arrays(path: os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Write flat arrays as an uncompressed ``.npz`` archive, atomically (see :func:`map_arrays`)."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            contiguous: dict[str, Any] = {name: np.ascontiguousarray(array) for name, array in arrays.items()}
            np.savez(handle, **contiguous)
    replace_atomically(path, write)


def array_names(path: os.PathLike) -> set[str]:
    """The names of the arrays an ``.npz`` archive holds (what tells one file layout from another).

    Raises
    ------
    ValueError
        If the file is not a zip archive.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            return {name.removesuffix(".npy") for name in archive.namelist()}
    except (OSError, zipfile.BadZipFile) as err:
        raise ValueError(f"unreadable {Path(path).name}: {err}") from err


def map_arrays(path: os.PathLike, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The named flat arrays of an uncompressed ``.npz`` archive, memory-mapped read-only.

    ``np.savez`` stores each array as a plain ``.npy`` block inside the zip file: mapped
    where it lies, an array costs nothing at open, its pages are shared between
    processes, and a process's memory holds only the parts it reads.

    Raises
    ------
    ValueError
        If the file is not such an archive or lacks one of ``names``.
    """
    arrays = {}
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename: info for info in archive.infolist()}
        with open(path, "rb") as handle:
            for name in names:
                info = members[name + ".npy"]
                if info.compress_type != zipfile.ZIP_STORED:
                    raise ValueError(f"{name} is compressed")
                handle.seek(info.header_offset)
                signature, name_length, extra_length = _LOCAL_HEADER.unpack(handle.read(_LOCAL_HEADER.size))
                if signature != _LOCAL_SIGNATURE:
                    raise ValueError(f"no local header for {name}")
                handle.seek(info.header_offset + _LOCAL_HEADER.size + name_length + extra_length)
                version = np.lib.format.read_magic(handle)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                with _HEADER_PARSE_LOCK:
                    shape, fortran_order, dtype = read_header(handle)
                if fortran_order or len(shape) != 1 or dtype.hasobject:
                    raise ValueError(f"{name} is not a flat array")
                arrays[name] = (np.memmap(path, dtype=dtype, mode="r", offset=handle.tell(), shape=shape)
                                if shape[0] else np.zeros(0, dtype))
    except (OSError, KeyError, ValueError, struct.error, zipfile.BadZipFile) as err:
        raise ValueError(f"unreadable {Path(path).name}: {err}") from err
    return arrays

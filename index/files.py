"""Atomic file replacement, the one way every file of an index directory is written."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

__all__ = ["replace_atomically"]


def replace_atomically(path: os.PathLike, write: Callable[[str], None]) -> None:
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

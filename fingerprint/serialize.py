"""A fingerprint as bytes, to keep an upload's fingerprint without its audio.

Only the spectral peaks (and the melody tier's chroma sequence and a query's dense
peak positions, when there are any) are stored (with the duration and the analysis settings
that shape peaks); the landmark hashes of every tier are rebuilt from them by
:func:`fingerprint.pipeline.fingerprint_peaks`, the same code a fresh
fingerprint goes through. A stored fingerprint therefore follows changes of the
hashing rules, and is about a tenth of the size of its index entries (about 17 kB per
minute of audio).

The blob is a compressed NumPy ``.npz`` archive of named arrays plus a format
version, so a later kind of fingerprint (a melody-level one) can add arrays of
its own without breaking the old ones.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from refrain.fingerprint.params import FingerprintParams
from refrain.fingerprint.peaks import Peaks
from refrain.fingerprint.pipeline import Fingerprint, fingerprint_file, fingerprint_peaks

__all__ = ["FORMAT_VERSION", "STORED_SUFFIX", "FingerprintFormatError", "fingerprint_to_bytes",
           "fingerprint_from_bytes", "fingerprint_source", "is_stored_fingerprint"]

#: Version of the blob layout; bump it when an array changes meaning, not when one is added.
FORMAT_VERSION = 1

#: File suffix of a stored fingerprint kept as a catalogue track's source: a published
#: upload enters the catalogue without its audio, from the fingerprint its decision kept.
STORED_SUFFIX = ".fingerprint"

#: The settings that decide where peaks are: stored peaks only make sense under the same ones.
_PEAK_SETTINGS = ("sample_rate", "n_fft", "hop_length", "fmin", "fmax", "bins_per_octave")

_PEAK_ARRAYS = {"peak_frames": ("frames", np.int32), "peak_bins": ("bins", np.int32),
                "peak_strength": ("strength", np.float32), "peak_bin_offsets": ("bin_offsets", np.float32)}


class FingerprintFormatError(ValueError):
    """The bytes are not a stored fingerprint this version can read, or were made with other settings."""


def _peak_settings(params: FingerprintParams) -> np.ndarray:
    return np.array([float(getattr(params, name)) for name in _PEAK_SETTINGS], dtype=np.float64)


def fingerprint_to_bytes(fp: Fingerprint, params: FingerprintParams) -> bytes:
    """Serialise a fingerprint's peaks and duration.

    Parameters
    ----------
    fp : Fingerprint
        The fingerprint to store.
    params : FingerprintParams
        The settings ``fp`` was made with (their peak-stage part is stored and checked on load).

    Returns
    -------
    bytes
        A compressed ``.npz`` archive.
    """
    arrays: dict[str, Any] = {name: np.ascontiguousarray(getattr(fp.peaks, field), dtype=dtype)
                              for name, (field, dtype) in _PEAK_ARRAYS.items()}
    if fp.melody is not None:
        arrays["melody"] = np.ascontiguousarray(fp.melody, dtype=np.float32)
    if fp.dense_peaks is not None:
        # The peaks tier looks up positions only: strengths and sub-bin offsets of
        # the dense set are not kept (they would triple the blob).
        arrays["dense_frames"] = np.ascontiguousarray(fp.dense_peaks.frames, dtype=np.int32)
        arrays["dense_bins"] = np.ascontiguousarray(fp.dense_peaks.bins, dtype=np.int16)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, format_version=np.int32(FORMAT_VERSION),
                        duration=np.float64(fp.duration), peak_settings=_peak_settings(params),
                        **arrays)
    return buffer.getvalue()


def fingerprint_from_bytes(blob: bytes, params: FingerprintParams) -> Fingerprint:
    """Rebuild a fingerprint stored by :func:`fingerprint_to_bytes`.

    Parameters
    ----------
    blob : bytes
    params : FingerprintParams
        The index's settings: hashes are rebuilt with them.

    Returns
    -------
    Fingerprint
        Equal, array for array, to the fingerprint that was stored (when ``params``
        hash as they did then), except that dense peaks come back with zero strengths
        and sub-bin offsets.

    Raises
    ------
    FingerprintFormatError
        For bytes that are not a stored fingerprint, a newer format version, or peaks
        found with other analysis settings than ``params``.
    FingerprintError
        When the stored peaks yield no landmark.
    """
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise FingerprintFormatError(f"not a stored fingerprint ({err})") from None
    missing = {"format_version", "duration", "peak_settings", *_PEAK_ARRAYS} - set(arrays)
    if missing:
        raise FingerprintFormatError(f"stored fingerprint lacks {', '.join(sorted(missing))}")
    version = int(arrays["format_version"])
    if version > FORMAT_VERSION:
        raise FingerprintFormatError(f"stored fingerprint format v{version} is newer than this "
                                     f"Refrain (v{FORMAT_VERSION})")
    if not np.array_equal(arrays["peak_settings"], _peak_settings(params)):
        stored = dict(zip(_PEAK_SETTINGS, arrays["peak_settings"].tolist()))
        raise FingerprintFormatError(f"stored fingerprint was analysed with other settings ({stored}) "
                                     "than this index's")
    peaks = Peaks(**{field: arrays[name].astype(dtype, copy=False)
                     for name, (field, dtype) in _PEAK_ARRAYS.items()})
    dense = None
    if "dense_frames" in arrays and "dense_bins" in arrays:
        dense_frames = arrays["dense_frames"].astype(np.int32, copy=False)
        zeros = np.zeros(len(dense_frames), dtype=np.float32)
        dense = Peaks(frames=dense_frames, bins=arrays["dense_bins"].astype(np.int32), strength=zeros,
                      bin_offsets=zeros)
    return fingerprint_peaks(peaks, float(arrays["duration"]), params, arrays.get("melody"), dense)


def is_stored_fingerprint(path: os.PathLike | str) -> bool:
    """Whether a catalogue source is a stored fingerprint (a published upload's), not audio."""
    return Path(path).suffix == STORED_SUFFIX


def fingerprint_source(path: os.PathLike | str, params: FingerprintParams, max_duration: float | None = None,
                       dense_peaks: bool = False) -> Fingerprint:
    """The fingerprint of a catalogue track's source file, whichever kind it is.

    Parameters
    ----------
    path : path-like
        A stored fingerprint (named ``*`` + :data:`STORED_SUFFIX`), read back; or an
        audio file, decoded and fingerprinted (:func:`fingerprint.pipeline.fingerprint_file`).
    params : FingerprintParams
    max_duration : float, optional
        Longest audio decoded (seconds).
    dense_peaks : bool
        Also pick the dense peaks a query needs (a stored fingerprint holds them if its
        upload was fingerprinted with them).

    Raises
    ------
    FingerprintFormatError
        A stored fingerprint this version cannot read.
    AudioDecodeError, FingerprintError, OSError
        As :func:`fingerprint.pipeline.fingerprint_file`, or the file cannot be read.
    """
    if is_stored_fingerprint(path):
        return fingerprint_from_bytes(Path(path).read_bytes(), params)
    return fingerprint_file(path, params, max_duration, dense_peaks)

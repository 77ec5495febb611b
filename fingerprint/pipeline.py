"""The whole landmark pipeline: samples -> spectrogram -> peaks -> hashes.

:func:`fingerprint_signal` fingerprints a signal at once; :func:`fingerprint_windows`
fingerprints one that arrives in blocks (a long upload being decoded), one window
at a time, so that memory follows the window and not the upload.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from refrain.fingerprint.decode import load_audio
from refrain.fingerprint.hashes import (Doubles, Quads, Triplets, double_landmarks, hash_landmarks, hash_quads,
                                         hash_triplets, pair_landmarks, quad_landmarks, quad_payloads,
                                         triplet_landmarks, triplet_payloads)
from refrain.fingerprint.melody import chroma_sequence
from refrain.fingerprint.params import FingerprintParams
from refrain.fingerprint.peaks import Peaks, find_peaks
from refrain.fingerprint.spectrogram import log_frequency_spectrogram

__all__ = ["Fingerprint", "FingerprintError", "fingerprint_signal", "fingerprint_file", "fingerprint_peaks",
           "fingerprint_windows", "peaks_between"]


class FingerprintError(ValueError):
    """Audio decoded, but holds nothing to fingerprint (silence, or shorter than a window)."""


@dataclass(frozen=True)
class Fingerprint:
    """Landmark hashes of one recording.

    Attributes
    ----------
    hashes : np.ndarray of uint32
        One code per landmark (layout :data:`fingerprint.hashes.PAIR_LAYOUT`).
    frames : np.ndarray of int32
        Anchor frame of each landmark.
    duration : float
        Length of the analysed audio in seconds.
    peaks : Peaks
        The peaks the landmarks were built from (kept for evidence plots).
    triplets : Triplets
        Tempo- and pitch-invariant peak triplets (the triplet tier).
    melody : np.ndarray, shape (n, 12), float32, or None
        Chroma sequence of the melody tier (:func:`fingerprint.melody.chroma_sequence`);
        None when ``FingerprintParams.melody`` is None.
    dense_peaks : Peaks or None
        A query's denser peak set (``FingerprintParams.dense_peaks_per_second``), in
        which catalogue peaks are looked up to verify a recording mixed under other
        audio; None for catalogue recordings and stored fingerprints.
    quads : Quads or None
        The specific, tempo- and pitch-invariant codes that propose candidate
        derivatives (the quad tier); None in a fingerprint built without them.
    doubles : Doubles or None
        The specific codes that propose candidate copies (the double tier); None in a
        fingerprint built without them.
    """

    hashes: np.ndarray
    frames: np.ndarray
    duration: float
    peaks: Peaks
    triplets: Triplets
    melody: np.ndarray | None = None
    dense_peaks: Peaks | None = None
    quads: Quads | None = None
    doubles: Doubles | None = None

    def __len__(self) -> int:
        return len(self.hashes)

    def index_entries(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """(codes, payloads) per index tier, as a catalogue recording is stored."""
        triplet_codes, rows = hash_triplets(self.triplets)
        entries = {"pair": (self.hashes, self.frames.astype(np.int64)),
                   "triplet": (triplet_codes, triplet_payloads(self.triplets)[rows])}
        if self.quads is not None:
            quad_codes, rows = hash_quads(self.quads)
            entries["quad"] = (quad_codes, quad_payloads(self.quads)[rows])
        if self.doubles is not None:
            entries["double"] = (self.doubles.codes, self.doubles.anchor_frames)
        return entries


def fingerprint_peaks(peaks: Peaks, duration: float, params: FingerprintParams,
                      melody: np.ndarray | None = None, dense_peaks: Peaks | None = None) -> Fingerprint:
    """Build the landmark hashes of both tiers from peaks (the second half of the pipeline).

    Stored fingerprints keep only their peaks (:mod:`fingerprint.serialize`) and are
    rebuilt here, so they always hash exactly as a fresh :func:`fingerprint_signal`.

    Parameters
    ----------
    peaks : Peaks
        The signal's peaks (as :func:`fingerprint_signal` finds them).
    duration : float
        Seconds of audio the peaks were taken from.
    params : FingerprintParams
        Analysis settings (the same the peaks were found with).
    melody : np.ndarray, optional
        The melody tier's chroma sequence, passed through to the fingerprint (it comes
        from the spectrogram, not from the peaks).
    dense_peaks : Peaks, optional
        A query's denser peak set, passed through likewise.

    Returns
    -------
    Fingerprint

    Raises
    ------
    FingerprintError
        When the peaks yield no landmark (silent, or too short for one window).
    """
    landmarks = pair_landmarks(peaks, params.fanout, params.target_dt_min,
                               params.target_dt_max, params.target_df_max)
    if len(landmarks) == 0:
        raise FingerprintError(
            f"no landmarks in {duration:.2f} s of audio: it is silent, too quiet or too short"
        )
    triplets = triplet_landmarks(peaks, params.triplet_near_zone, params.triplet_far_zone,
                                 params.triplet_per_zone, params.triplet_df_max)
    quads = quad_landmarks(peaks, params.triplet_near_zone, params.triplet_far_zone, params.quad_near_targets,
                           params.triplet_df_max)
    doubles = double_landmarks(peaks, params.target_dt_min, params.target_dt_max, params.target_df_max)
    return Fingerprint(hash_landmarks(landmarks),
                       landmarks.anchor_frames.astype(np.int32), duration, peaks, triplets, melody,
                       dense_peaks, quads, doubles)


def fingerprint_signal(y: np.ndarray, params: FingerprintParams, dense_peaks: bool = False) -> Fingerprint:
    """Fingerprint mono samples already at ``params.sample_rate``.

    Parameters
    ----------
    y : np.ndarray, shape (n,)
        Mono signal.
    params : FingerprintParams
        Analysis settings.
    dense_peaks : bool
        Also pick the denser peak set a query is verified against
        (:attr:`Fingerprint.dense_peaks`); catalogue recordings do not need it.

    Returns
    -------
    Fingerprint

    Raises
    ------
    FingerprintError
        When the signal yields no landmark (silent, or too short for one window).
    """
    peaks, dense, melody = _analyse(y, params, dense_peaks)
    return fingerprint_peaks(peaks, len(y) / params.sample_rate, params, melody, dense)


def _analyse(y: np.ndarray, params: FingerprintParams,
             dense_peaks: bool) -> tuple[Peaks, Peaks | None, np.ndarray | None]:
    """Peaks, dense peaks (if asked) and melody chroma of a signal."""
    S_db = log_frequency_spectrogram(y, params.sample_rate, params.n_fft, params.hop_length,
                                     params.fmin, params.fmax, params.bins_per_octave)
    peaks = find_peaks(S_db, params.frame_seconds, params.peak_time_radius,
                       params.peak_freq_radius, params.peak_floor_db,
                       params.peak_min_prominence_db, params.peaks_per_second,
                       params.density_window)
    dense = (find_peaks(S_db, params.frame_seconds, params.dense_peak_time_radius,
                        params.dense_peak_freq_radius, params.peak_floor_db, 0.0,
                        params.dense_peaks_per_second, params.density_window)
             if dense_peaks else None)
    melody = (None if params.melody is None
              else chroma_sequence(S_db, params.bins_per_octave, params.fmin, params.melody))
    return peaks, dense, melody


def peaks_between(peaks: Peaks, first: int, end: int) -> Peaks:
    """The peaks of frames ``first..end``, with frames counted from ``first``."""
    lo, hi = np.searchsorted(peaks.frames, [first, end])
    return Peaks(frames=peaks.frames[lo:hi] - first, bins=peaks.bins[lo:hi],
                 strength=peaks.strength[lo:hi], bin_offsets=peaks.bin_offsets[lo:hi])


def window_margin_frames(params: FingerprintParams) -> int:
    """Frames of audio a window is analysed with on either side of its own.

    Enough that the window's peaks and landmarks are those of the whole signal: a peak's
    neighbourhood and density window reach ``peak_time_radius`` frames and half
    ``density_window`` either way, a landmark's target up to ``target_dt_max`` frames
    on. Rounded up to whole chroma frames so that the melody's frames stay aligned.
    """
    reach = (params.target_dt_max + params.peak_time_radius
             + math.ceil(params.density_window / 2 / params.frame_seconds))
    per_chroma = 1 if params.melody is None else params.melody.frames_per_chroma
    return per_chroma * math.ceil(reach / per_chroma)


def fingerprint_windows(blocks: Iterable[np.ndarray], params: FingerprintParams, window_seconds: float,
                        dense_peaks: bool = False) -> Iterator[Fingerprint]:
    """Fingerprint a signal that arrives in blocks, one window of ``window_seconds`` at a time.

    Each window is analysed with :func:`window_margin_frames` of audio on either side
    and keeps the landmarks anchored in it (their targets may lie past its end), its
    peaks, dense peaks and melody frames, counted from its own start: a window is a
    query of its own, as the matcher searches an upload (:func:`matcher.match_windows`).
    Only a window and its margins are held, whatever the signal's length. A signal
    no longer than one window gives exactly :func:`fingerprint_signal`'s fingerprint.

    Parameters
    ----------
    blocks : iterable of np.ndarray
        Consecutive pieces of a mono signal at ``params.sample_rate`` (e.g.
        :func:`fingerprint.decode.stream_audio`).
    params : FingerprintParams
    window_seconds : float
        Window length; rounded to whole frames.
    dense_peaks : bool
        Also keep the dense peak set a query is verified against.

    Yields
    ------
    Fingerprint
        One per window, in order; every window but the last lasts ``window_seconds``.
        A silent window holds no landmark.

    Raises
    ------
    FingerprintError
        After the last window, when no window held a landmark (as
        :func:`fingerprint_signal` raises at once).
    """
    window = max(1, int(round(window_seconds / params.frame_seconds)))
    margin, hop = window_margin_frames(params), params.hop_length
    pending: list[np.ndarray] = []
    buffer, buffer_first, received = np.zeros(0, np.float32), 0, 0  # buffer[0] is sample buffer_first
    core, landmarks = 0, 0  # the next window's first frame; landmarks yielded so far

    def chunk_end(first_frame: int) -> int:
        return (first_frame + window + margin) * hop + params.n_fft

    def next_window() -> Fingerprint:
        nonlocal buffer, buffer_first, core, landmarks
        if pending:
            buffer = np.concatenate([buffer, *pending])
            pending.clear()
        chunk_first = max(0, core - margin)
        start = chunk_first * hop - buffer_first
        fp = _window_fingerprint(buffer[start:chunk_end(core) - buffer_first], params, core - chunk_first,
                                 window, dense_peaks,
                                 min(window * params.frame_seconds, received / params.sample_rate
                                     - core * params.frame_seconds))
        landmarks += len(fp)
        core += window
        drop = max(0, (core - margin) * hop - buffer_first)
        buffer, buffer_first = buffer[drop:], buffer_first + drop
        return fp

    for block in blocks:
        pending.append(np.asarray(block, dtype=np.float32))
        received += len(block)
        while received >= chunk_end(core):
            yield next_window()
    if received == 0:
        raise FingerprintError("no audio samples to fingerprint")
    while core == 0 or core * hop < received:
        yield next_window()
    if landmarks == 0:
        raise FingerprintError(
            f"no landmarks in {received / params.sample_rate:.2f} s of audio: it is silent, too quiet or too short")


def _window_fingerprint(y: np.ndarray, params: FingerprintParams, lead: int, window: int, dense_peaks: bool,
                        duration: float) -> Fingerprint:
    """The fingerprint of frames ``lead..lead + window`` of ``y``, frames counted from ``lead``."""
    peaks, dense, melody = _analyse(y, params, dense_peaks)
    landmarks = pair_landmarks(peaks, params.fanout, params.target_dt_min, params.target_dt_max,
                               params.target_df_max)
    inside = (landmarks.anchor_frames >= lead) & (landmarks.anchor_frames < lead + window)
    own = peaks_between(peaks, lead, lead + window)
    if melody is not None and params.melody is not None:
        per_chroma = params.melody.frames_per_chroma
        melody = melody[-(-lead // per_chroma):(lead + window) // per_chroma]
    return Fingerprint(hash_landmarks(landmarks)[inside],
                       (landmarks.anchor_frames[inside] - lead).astype(np.int32), duration, own,
                       triplet_landmarks(own, params.triplet_near_zone, params.triplet_far_zone,
                                         params.triplet_per_zone, params.triplet_df_max),
                       melody, None if dense is None else peaks_between(dense, lead, lead + window))


def fingerprint_file(path, params: FingerprintParams, max_duration: float | None = None,
                     dense_peaks: bool = False) -> Fingerprint:
    """Decode ``path`` and fingerprint it (see :func:`fingerprint.decode.load_audio` and
    :func:`fingerprint_signal`)."""
    return fingerprint_signal(load_audio(path, params.sample_rate, max_duration), params, dense_peaks)

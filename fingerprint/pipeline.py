"""The whole landmark pipeline: samples -> spectrogram -> peaks -> hashes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refrain.fingerprint.decode import load_audio
from refrain.fingerprint.hashes import (Doubles, Quads, Triplets, double_landmarks, hash_landmarks, hash_quads,
                                         hash_triplets, pair_landmarks, quad_landmarks, quad_payloads,
                                         triplet_landmarks, triplet_payloads)
from refrain.fingerprint.melody import chroma_sequence
from refrain.fingerprint.params import FingerprintParams
from refrain.fingerprint.peaks import Peaks, find_peaks
from refrain.fingerprint.spectrogram import log_frequency_spectrogram

__all__ = ["Fingerprint", "FingerprintError", "fingerprint_signal", "fingerprint_file", "fingerprint_peaks"]


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
    return fingerprint_peaks(peaks, len(y) / params.sample_rate, params, melody, dense)


def fingerprint_file(path, params: FingerprintParams, max_duration: float | None = None,
                     dense_peaks: bool = False) -> Fingerprint:
    """Decode ``path`` and fingerprint it (see :func:`fingerprint.decode.load_audio` and
    :func:`fingerprint_signal`)."""
    return fingerprint_signal(load_audio(path, params.sample_rate, max_duration), params, dense_peaks)

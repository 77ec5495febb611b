"""Log-frequency, log-magnitude spectrogram: the surface peaks are picked from."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import scipy.fft
import scipy.signal
import scipy.sparse

__all__ = ["log_frequency_spectrogram", "log_frequency_axis"]


def log_frequency_axis(fmin: float, fmax: float, bins_per_octave: int) -> np.ndarray:
    """Centre frequencies (Hz) of the log-frequency bins.

    Parameters
    ----------
    fmin, fmax : float
        Lowest and highest centre frequency in Hz.
    bins_per_octave : int
        Bins per octave; bin ``k`` is ``fmin * 2 ** (k / bins_per_octave)``.

    Returns
    -------
    np.ndarray, shape (n_bins,)
    """
    n_bins = int(np.floor(bins_per_octave * np.log2(fmax / fmin))) + 1
    return fmin * 2.0 ** (np.arange(n_bins) / bins_per_octave)


@lru_cache(maxsize=8)
def _log_frequency_map(sample_rate: int, n_fft: int, fmin: float, fmax: float,
                       bins_per_octave: int) -> scipy.sparse.csr_matrix:
    """Sparse matrix taking STFT magnitudes to log-frequency bins.

    Each log bin linearly interpolates the two STFT bins around its centre, so a
    single sinusoid lands in exactly the log bin nearest its frequency and a pitch
    shift moves it by a whole number of bins.
    """
    centres = log_frequency_axis(fmin, fmax, bins_per_octave)
    position = centres * n_fft / sample_rate  # fractional STFT bin of each centre
    lower = np.floor(position).astype(int)
    weight_upper = position - lower
    rows = np.repeat(np.arange(len(centres)), 2)
    cols = np.stack([lower, lower + 1], axis=1).ravel()
    weights = np.stack([1.0 - weight_upper, weight_upper], axis=1).ravel()
    return scipy.sparse.csr_matrix(
        (weights.astype(np.float32), (rows, cols)), shape=(len(centres), n_fft // 2 + 1)
    )


def log_frequency_spectrogram(y: np.ndarray, sample_rate: int, n_fft: int, hop_length: int,
                              fmin: float, fmax: float, bins_per_octave: int) -> np.ndarray:
    """Magnitude spectrogram in dB on a log-frequency axis.

    Parameters
    ----------
    y : np.ndarray, shape (n,)
        Mono signal.
    sample_rate : int
        Rate of ``y`` in Hz.
    n_fft, hop_length : int
        STFT window and hop in samples (Hann window, no centring so that frame ``t``
        starts at sample ``t * hop_length`` of the given signal).
    fmin, fmax : float
        Frequency range in Hz; ``fmax`` must stay below the Nyquist frequency.
    bins_per_octave : int
        Log-frequency resolution.

    Returns
    -------
    S_db : np.ndarray, shape (n_bins, n_frames), float32
        ``20 log10`` magnitude; a gain change of the input adds a constant to it.
        ``n_frames`` is 0 when ``y`` is shorter than one window.
    """
    if fmax >= sample_rate / 2:
        raise ValueError(f"fmax={fmax} Hz must be below Nyquist ({sample_rate / 2} Hz)")
    n_bins = len(log_frequency_axis(fmin, fmax, bins_per_octave))
    if len(y) < n_fft:
        return np.zeros((n_bins, 0), dtype=np.float32)
    # A plain framed FFT: librosa.stft gives the same numbers but costs ~3 s of
    # just-in-time compilation on its first call in every process (each CLI run, each worker).
    frames = np.lib.stride_tricks.sliding_window_view(y.astype(np.float32, copy=False), n_fft)[::hop_length]
    window = scipy.signal.get_window("hann", n_fft, fftbins=True).astype(np.float32)
    magnitude = np.abs(scipy.fft.rfft(frames * window, axis=1)).T
    mapped = _log_frequency_map(sample_rate, n_fft, fmin, fmax, bins_per_octave) @ magnitude
    return (20.0 * np.log10(np.maximum(mapped, 1e-10))).astype(np.float32)

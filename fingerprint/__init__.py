"""Landmark fingerprints: decode -> spectrogram -> peaks -> hashes, one stage a module."""

from fingerprint.decode import AudioDecodeError, AudioTooLongError, load_audio
from fingerprint.hashes import PAIR_LAYOUT, HashLayout
from fingerprint.melody import MelodyParams
from fingerprint.params import FingerprintParams
from fingerprint.peaks import Peaks, find_peaks
from fingerprint.pipeline import Fingerprint, FingerprintError, fingerprint_file, fingerprint_signal

__all__ = ["AudioDecodeError", "AudioTooLongError", "Fingerprint", "FingerprintError", "FingerprintParams", "HashLayout",
           "MelodyParams", "PAIR_LAYOUT", "Peaks", "find_peaks", "fingerprint_file", "fingerprint_signal", "load_audio"]

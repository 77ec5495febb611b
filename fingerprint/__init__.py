"""Landmark fingerprints: decode -> spectrogram -> peaks -> hashes, one stage a module."""

from refrain.fingerprint.decode import AudioDecodeError, AudioTooLongError, load_audio
from refrain.fingerprint.hashes import PAIR_LAYOUT, HashLayout
from refrain.fingerprint.melody import MelodyParams
from refrain.fingerprint.params import FingerprintParams
from refrain.fingerprint.peaks import Peaks, find_peaks
from refrain.fingerprint.pipeline import Fingerprint, FingerprintError, fingerprint_file, fingerprint_signal

__all__ = ["AudioDecodeError", "AudioTooLongError", "Fingerprint", "FingerprintError", "FingerprintParams",
           "HashLayout", "MelodyParams", "PAIR_LAYOUT", "Peaks", "find_peaks", "fingerprint_file",
           "fingerprint_signal", "load_audio"]

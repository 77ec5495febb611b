"""Parameters of the landmark fingerprint, with their documented defaults.

Every stage function in :mod:`fingerprint` takes its parameters explicitly; this
dataclass only gathers the defaults in one place so that an index can record the
exact settings it was built with (a query must be fingerprinted the same way).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from refrain.fingerprint.melody import MelodyParams


@dataclass(frozen=True)
class FingerprintParams:
    """How audio becomes landmark hashes.

    Attributes
    ----------
    sample_rate : int
        Analysis rate in Hz (default 8000). Everything a phone line or a low-bit-rate
        codec keeps lies below 4 kHz, and a low rate makes decoding and the STFT cheap.
    n_fft : int
        STFT window length in samples (default 1024 = 128 ms at 8 kHz): fine frequency
        resolution (7.8 Hz) so that tonal peaks are sharp and pitch changes measurable.
    hop_length : int
        STFT hop in samples (default 256 = 32 ms). One *frame* is one hop.
    fmin, fmax : float
        Band analysed, in Hz (default 110–3700). Below 110 Hz bins are too coarse to
        separate notes; above 3.7 kHz a phone band and most 64 kbit/s encoders remove energy.
    bins_per_octave : int
        Resolution of the log-frequency axis (default 36, a third of a semitone). On a
        log axis a pitch change is a translation, which the hash layout relies on.
    peak_time_radius : int
        Half-size, in frames, of the neighbourhood a peak must dominate (default 4).
    peak_freq_radius : int
        Half-size, in log-frequency bins, of that neighbourhood (default 6, two semitones).
    peak_floor_db : float
        A peak must exceed the loudest point of the whole signal minus this many dB
        (default 70). Relative, so a gain change does not move any peak; it keeps
        dithering noise and fade tails out.
    peak_min_prominence_db : float
        A peak must stand this far above the local spectral background (default 4 dB).
    peaks_per_second : float
        Target peak density (default 32). Peaks are ranked by prominence inside a sliding
        window of ``density_window`` seconds and only the strongest ``peaks_per_second *
        density_window`` of each window are kept — shift-invariant, so an excerpt keeps
        the same peaks as the full track.
    density_window : float
        Width of that sliding window in seconds (default 1.0).
    fanout : int
        Targets paired with each anchor peak (default 5).
    target_dt_min, target_dt_max : int
        Target zone in frames after the anchor (default 1–63, i.e. up to 2 s).
    target_df_max : int
        Largest |log-frequency difference| between anchor and target, in bins
        (default 48, 16 semitones).
    triplet_near_zone, triplet_far_zone : (int, int)
        Frame ranges after an anchor from which a triplet's first and second targets
        are drawn (defaults 2–12 and 14–40 frames, i.e. 64–384 ms and 0.45–1.3 s): far
        enough apart that their time ratio is well measured.
    triplet_per_zone : int
        Nearest peaks taken from each zone (default 2): up to 4 triplets per anchor.
    triplet_df_max : int
        Largest |bin difference| between an anchor and its triplet targets (default 36,
        one octave).
    quad_near_targets : int
        Quads per anchor (default 1): each of its nearest near-zone peaks with its two
        nearest far-zone peaks (:func:`fingerprint.hashes.quad_landmarks`, the same zones).
        Quads only propose candidates, and the query combines each zone's next peaks
        too (``ProposalParams.slack``): on 40 derived queries of real music one quad per
        anchor proposed the true track of 100 % of speed, pitch and tempo changes, as
        two did, at half the index bytes.
    dense_peaks_per_second, dense_peak_time_radius, dense_peak_freq_radius : float, int, int
        The second, denser peak set a query keeps (default 128 per second, local maxima
        of 5 frames x 7 bins, any prominence): the peaks of a recording mixed 6-12 dB
        under other audio are mostly not among the upload's 32 strongest per second,
        but many are local maxima of a smaller neighbourhood; the matcher looks
        catalogue peaks up in this set to verify such a mix (:mod:`matcher.peaks`).
    melody : MelodyParams or None
        Settings of the melody tier's chroma and segment descriptors (see
        :class:`fingerprint.melody.MelodyParams`); None computes no melody.
    """

    sample_rate: int = 8000
    n_fft: int = 1024
    hop_length: int = 256
    fmin: float = 110.0
    fmax: float = 3700.0
    bins_per_octave: int = 36
    peak_time_radius: int = 4
    peak_freq_radius: int = 6
    peak_floor_db: float = 70.0
    peak_min_prominence_db: float = 4.0
    peaks_per_second: float = 32.0
    density_window: float = 1.0
    fanout: int = 5
    target_dt_min: int = 1
    target_dt_max: int = 63
    target_df_max: int = 48
    triplet_near_zone: tuple[int, int] = (2, 12)
    triplet_far_zone: tuple[int, int] = (14, 40)
    triplet_per_zone: int = 2
    triplet_df_max: int = 36
    quad_near_targets: int = 1
    dense_peaks_per_second: float = 128.0
    dense_peak_time_radius: int = 2
    dense_peak_freq_radius: int = 3
    melody: MelodyParams | None = field(default_factory=MelodyParams)

    @property
    def frame_seconds(self) -> float:
        """Duration of one analysis frame (one hop) in seconds."""
        return self.hop_length / self.sample_rate

    def to_dict(self) -> dict:
        """Plain-JSON form, stored in an index's manifest."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "FingerprintParams":
        """Inverse of :meth:`to_dict`; unknown keys are an error, missing ones take defaults."""
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown fingerprint parameters: {sorted(unknown)}")
        # JSON has no tuples; the zones come back as lists.
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        if isinstance(values.get("melody"), dict):
            values["melody"] = MelodyParams.from_dict(values["melody"])
        return cls(**values)

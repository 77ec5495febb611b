"""Deterministic synthetic music for demos and tests.

:func:`render_song` turns an integer seed into a short piece of music: a tempo, a
key and mode, diatonic chord progressions, a through-composed melody, a bass line
and a drum kit, played by instruments whose timbres are also drawn from the seed
(additive synth, FM electric piano and bell, Karplus–Strong plucked string,
detuned band-limited saw pad, ...), with an echo on the lead and a little reverb.

The generator uses only ``numpy.random.default_rng(seed)`` (and generators seeded
from it), never global random state, so the same seed always gives bit-identical
samples, while different seeds give unrelated music: a fingerprinter must *not*
match one seed against another.

The musical content does not depend on ``duration``: a shorter render contains the
same notes as the start of a longer one. The samples differ slightly (peak
normalisation, the end fade and reverb tails are computed on the rendered length),
so compare short excerpts with a correlation, not bit for bit.

Examples
--------
>>> y = render_song(7, 5.0)
>>> y.dtype, y.shape
(dtype('float32'), (110250,))
>>> bool(abs(float(abs(y).max()) - 0.9) < 1e-6)
True
>>> bool((render_song(7, 5.0) == y).all())
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import signal

__all__ = ["GENRES", "add_noise", "describe_song", "mix", "render_song"]

#: Peak level of :func:`render_song` output.
PEAK = 0.9

_STEPS_PER_BAR = 16  # sixteenth notes in a 4/4 bar

_MODES = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "mixolydian": (0, 2, 4, 5, 7, 9, 10),
}
_PITCH_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
_ROMAN = ("I", "II", "III", "IV", "V", "VI", "VII")

# Each genre biases the draws: tempo range (BPM), modes, instrument choices per role,
# step probabilities (16 steps per bar) of the drum and bass patterns, melody note
# lengths (in steps, with weights) and effect amounts.
_GENRES: dict[str, dict] = {
    "ballad": dict(
        tempo=(80, 96), modes=("major", "minor", "major", "dorian"), swing=(0.0, 0.06),
        sevenths=0.5, lead=("ep", "flute", "bell"),
        harmony=(("pad", "saw_pad"), ("arp8", "pluck"), ("pad", "organ")),
        bass=("sub", "fm_bass"), bass_len="legato", bass_notes=(0.7, 0.2, 0.0, 0.1),
        lead_durs={2: 0.15, 4: 0.35, 6: 0.15, 8: 0.35}, rest=0.12,
        kick={0: 1, 6: 0.2, 8: 0.3, 10: 0.6}, snare={4: 1, 12: 1},
        hat={s: 0.9 for s in range(0, 16, 2)}, bass_steps={0: 1, 8: 0.7, 12: 0.2, 14: 0.2},
        comp={}, reverb=(1.6, 2.4), wet=(0.22, 0.32), echo=0.5, hat_gain=-16.0,
    ),
    "pop": dict(
        tempo=(100, 124), modes=("major", "minor", "major", "mixolydian"), swing=(0.0, 0.04),
        sevenths=0.2, lead=("pluck", "lead_saw", "ep", "flute"),
        harmony=(("comp", "ep"), ("arp8", "pluck"), ("pad", "saw_pad")),
        bass=("pluck_bass", "fm_bass", "sub"), bass_len="medium", bass_notes=(0.6, 0.25, 0.1, 0.05),
        lead_durs={1: 0.05, 2: 0.45, 3: 0.15, 4: 0.25, 6: 0.1}, rest=0.1,
        kick={0: 1, 3: 0.2, 6: 0.4, 8: 1, 10: 0.5, 14: 0.2}, snare={4: 1, 12: 1},
        hat={**{s: 1.0 for s in range(0, 16, 2)}, **{s: 0.25 for s in range(1, 16, 2)}},
        bass_steps={0: 1, 3: 0.4, 6: 0.5, 8: 0.9, 10: 0.5, 14: 0.4},
        comp={0: 0.9, 3: 0.4, 6: 0.6, 8: 0.7, 10: 0.4, 12: 0.3, 14: 0.5}, comp_len=2,
        reverb=(1.0, 1.8), wet=(0.12, 0.22), echo=0.5, hat_gain=-15.0,
    ),
    "house": dict(
        tempo=(120, 130), modes=("minor", "dorian", "major"), swing=(0.0, 0.05),
        sevenths=0.6, lead=("bell", "lead_saw", "pluck"),
        harmony=(("comp", "organ"), ("comp", "ep"), ("pad", "saw_pad")),
        bass=("fm_bass", "square_bass"), bass_len="short", bass_notes=(0.7, 0.1, 0.2, 0.0),
        lead_durs={1: 0.1, 2: 0.5, 3: 0.2, 4: 0.2}, rest=0.15,
        kick={0: 1, 4: 1, 8: 1, 12: 1}, snare={4: 1, 12: 1},
        hat={**{s: 1.0 for s in (2, 6, 10, 14)}, **{s: 0.35 for s in (1, 3, 5, 7, 9, 11, 13, 15)}},
        bass_steps={0: 0.2, 2: 1, 6: 1, 10: 1, 14: 1, 11: 0.2},
        comp={0: 0.1, 2: 0.95, 6: 0.95, 10: 0.95, 11: 0.3, 14: 0.95}, comp_len=1,
        reverb=(1.2, 2.0), wet=(0.15, 0.25), echo=0.7, hat_gain=-14.0,
    ),
    "funk": dict(
        tempo=(96, 116), modes=("dorian", "mixolydian", "minor"), swing=(0.05, 0.15),
        sevenths=0.9, lead=("square", "ep", "lead_saw"),
        harmony=(("comp", "ep"), ("comp", "organ")),
        bass=("pluck_bass", "fm_bass"), bass_len="short", bass_notes=(0.55, 0.15, 0.25, 0.05),
        lead_durs={1: 0.3, 2: 0.4, 3: 0.2, 4: 0.1}, rest=0.2,
        kick={0: 1, 3: 0.6, 6: 0.5, 10: 0.7, 11: 0.3, 14: 0.3},
        snare={4: 1, 12: 1, 7: 0.35, 9: 0.35, 15: 0.35}, hat={s: 0.9 for s in range(16)},
        bass_steps={0: 1, 3: 0.6, 6: 0.5, 7: 0.3, 10: 0.7, 11: 0.3, 14: 0.6, 15: 0.3},
        comp={0: 0.5, 3: 0.6, 4: 0.3, 6: 0.7, 7: 0.3, 10: 0.6, 11: 0.3, 14: 0.6, 15: 0.3},
        comp_len=1, reverb=(0.8, 1.4), wet=(0.08, 0.16), echo=0.3, hat_gain=-17.0,
    ),
    "chiptune": dict(
        tempo=(132, 150), modes=("major", "minor"), swing=(0.0, 0.0),
        sevenths=0.0, lead=("square", "pulse"), harmony=(("arp16", "pulse"), ("arp16", "square")),
        bass=("square_bass",), bass_len="short", bass_notes=(0.5, 0.2, 0.3, 0.0),
        lead_durs={1: 0.45, 2: 0.4, 4: 0.15}, rest=0.08,
        kick={0: 1, 2: 0.3, 8: 1, 10: 0.5}, snare={4: 1, 12: 1}, hat={s: 0.8 for s in range(16)},
        bass_steps={s: 0.85 for s in range(0, 16, 2)}, comp={},
        reverb=(0.5, 0.9), wet=(0.04, 0.1), echo=0.4, hat_gain=-18.0,
    ),
    "folk": dict(
        tempo=(88, 120), modes=("major", "mixolydian", "minor", "dorian"), swing=(0.0, 0.12),
        sevenths=0.1, lead=("flute", "bell", "pluck"), harmony=(("arp8", "pluck"), ("arp8", "ep")),
        bass=("pluck_bass", "sub"), bass_len="legato", bass_notes=(0.6, 0.4, 0.0, 0.0),
        lead_durs={2: 0.4, 4: 0.4, 6: 0.1, 8: 0.1}, rest=0.1,
        kick={0: 1, 7: 0.3, 8: 0.7}, snare={4: 0.6, 12: 1}, hat={s: 0.7 for s in range(0, 16, 2)},
        bass_steps={0: 1, 4: 0.3, 8: 1, 12: 0.3}, comp={},
        reverb=(1.4, 2.2), wet=(0.18, 0.28), echo=0.3, hat_gain=-18.0,
    ),
}

#: Names of the genres a seed can fall in (also the ``"genre"`` of :func:`describe_song`).
GENRES: tuple[str, ...] = tuple(_GENRES)


# --------------------------------------------------------------------------- helpers


def mix(a: np.ndarray, b: np.ndarray, gain_db: float = 0.0) -> np.ndarray:
    """Add signal ``b``, scaled by ``gain_db``, to signal ``a``.

    Parameters
    ----------
    a, b : np.ndarray, shape (n,) and (m,)
        Mono signals at the same sample rate. The shorter one is treated as if
        padded with trailing zeros.
    gain_db : float, optional
        Gain applied to ``b`` in dB (default 0: equal weight).

    Returns
    -------
    y : np.ndarray, shape (max(n, m),)
        ``a + 10 ** (gain_db / 20) * b``, float64 unless both inputs are float32.
        Not clipped or normalised.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    dtype = np.result_type(a.dtype, b.dtype, np.float32)
    y = np.zeros(max(a.size, b.size), dtype=dtype)
    y[: a.size] += a
    y[: b.size] += b * dtype.type(10.0 ** (gain_db / 20.0))
    return y


def add_noise(x: np.ndarray, snr_db: float, rng: np.random.Generator, colour: str = "white") -> np.ndarray:
    """Add white or pink Gaussian noise at a given signal-to-noise ratio.

    Parameters
    ----------
    x : np.ndarray, shape (n,)
        Mono signal; must not be silent.
    snr_db : float
        Wanted ratio of the mean power of ``x`` to the mean power of the noise, in dB
        (measured over the whole signal).
    rng : np.random.Generator
        Source of the noise, e.g. ``np.random.default_rng(0)``: same generator state,
        same noise.
    colour : {"white", "pink"}, optional
        ``"white"``: flat spectrum. ``"pink"``: power falling as 1/f (3 dB per octave),
        shaped in the frequency domain, no DC.

    Returns
    -------
    y : np.ndarray, shape (n,)
        ``x + noise``, same float dtype as ``x`` (float64 for integer input). Not
        clipped: rescale before writing to a fixed-point file.

    Raises
    ------
    ValueError
        If ``x`` is empty or silent, or ``colour`` is unknown.
    """
    x = np.asarray(x)
    dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.dtype(np.float64)
    power = float(np.mean(np.square(x, dtype=np.float64))) if x.size else 0.0
    if power <= 0.0:
        raise ValueError("add_noise: the signal is empty or silent, the SNR is undefined")
    if colour == "white":
        noise = rng.standard_normal(x.size)
    elif colour == "pink":
        spectrum = np.fft.rfft(rng.standard_normal(x.size))
        freqs = np.arange(spectrum.size, dtype=np.float64)
        freqs[0] = np.inf  # drop DC
        noise = np.fft.irfft(spectrum / np.sqrt(freqs), n=x.size)
    else:
        raise ValueError(f"add_noise: colour must be 'white' or 'pink', not {colour!r}")
    noise *= math.sqrt(power / 10.0 ** (snr_db / 10.0) / float(np.mean(noise**2)))
    return (x + noise).astype(dtype, copy=False)


def _midi_hz(midi: float) -> float:
    return 440.0 * 2.0 ** ((midi - 69.0) / 12.0)


def _pick(rng: np.random.Generator, weights: dict):
    """Draw a key of ``weights`` with probability proportional to its value."""
    keys = list(weights)
    p = np.array([weights[k] for k in keys], dtype=np.float64)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def _choice(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _envelope(n: int, points: list[tuple[int, float]]) -> np.ndarray:
    """Piecewise-linear envelope of length ``n`` through (sample, level) points."""
    xs, ys = zip(*points)
    return np.interp(np.arange(n, dtype=np.float64), xs, ys)


def _adsr(n: int, gate: int, sr: int, a: float, d: float, s: float, r: float) -> np.ndarray:
    """Attack-decay-sustain-release envelope: key held ``gate`` samples, ``n`` total."""
    ia, id_ = max(1, int(a * sr)), max(1, int(d * sr))
    at_gate = float(np.interp(gate, [0, ia, ia + id_], [0.0, 1.0, s]))
    pts = [(0, 0.0), (ia, 1.0), (ia + id_, s)]
    pts = [p for p in pts if p[0] < gate] + [(gate, at_gate), (gate + max(1, int(r * sr)), 0.0)]
    return _envelope(n, pts)


def _release(n: int, gate: int, r_samples: int) -> np.ndarray:
    """Flat gain of 1 until ``gate``, then a linear fade to 0 over ``r_samples``."""
    return _envelope(n, [(0, 1.0), (gate, 1.0), (gate + max(1, r_samples), 0.0)])


_TABLE = 2048


def _harmonic_table(amps: np.ndarray) -> np.ndarray:
    """One period of ``sum_k amps[k-1] sin(2 pi k t)``, peak 1, plus a wrap sample."""
    spec = np.zeros(_TABLE // 2 + 1, dtype=np.complex128)
    spec[1 : amps.size + 1] = -0.5j * _TABLE * amps
    table = np.fft.irfft(spec, _TABLE)
    table /= np.max(np.abs(table))
    return np.append(table, table[0])


def _table_osc(table: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """Read ``table`` at ``phase`` (in cycles) with linear interpolation."""
    pos = (phase % 1.0) * _TABLE
    i = pos.astype(np.int64)
    frac = pos - i
    return table[i] * (1.0 - frac) + table[i + 1] * frac


# ------------------------------------------------------------------------ instruments


class _Instrument:
    """A timbre with per-seed parameters; renders (and caches) one note at a time.

    ``note(midi, gate)`` returns a unit-amplitude waveform for a key held ``gate``
    samples, including the release tail. Velocity is applied by the caller.
    """

    def __init__(self, name: str, rng: np.random.Generator, sr: int):
        self.name = name
        self.sr = sr
        self.rng = rng  # used lazily for noise excitations / oscillator phases
        self.cache: dict = {}
        self.p = self._params(name, rng)

    @staticmethod
    def _params(name: str, rng: np.random.Generator) -> dict:
        u = rng.uniform
        if name in ("flute", "lead_saw", "square", "pulse", "organ", "sub", "square_bass"):
            if name == "flute":
                n, tilt, even = 6, u(1.8, 2.6), u(0.3, 0.8)
                env = (u(0.03, 0.08), u(0.1, 0.2), u(0.7, 0.9), u(0.08, 0.15))
            elif name == "lead_saw":
                n, tilt, even = 24, u(0.9, 1.3), u(0.6, 1.0)
                env = (u(0.005, 0.02), u(0.1, 0.3), u(0.5, 0.8), u(0.05, 0.12))
            elif name in ("square", "square_bass"):
                n, tilt, even = 31, u(1.0, 1.2), 0.0
                env = (0.004, u(0.05, 0.15), u(0.6, 0.9), u(0.02, 0.05))
            elif name == "pulse":
                n, tilt, even = 31, u(0.9, 1.1), u(0.5, 0.8)
                env = (0.004, u(0.05, 0.15), u(0.5, 0.8), u(0.02, 0.05))
            elif name == "organ":
                n, tilt, even = 8, u(0.6, 1.0), u(0.6, 1.0)
                env = (0.01, 0.05, 1.0, u(0.04, 0.08))
            else:  # sub bass: sine with a touch of 2nd/3rd harmonic
                n, tilt, even = 3, u(2.5, 3.5), u(0.5, 1.0)
                env = (0.01, u(0.1, 0.3), u(0.6, 0.9), u(0.05, 0.1))
            k = np.arange(1, n + 1, dtype=np.float64)
            amps = k**-tilt * np.where(k % 2 == 0, even, 1.0)
            if name == "organ":  # drawbar-like: emphasise octaves
                amps *= np.where(np.isin(k, (1, 2, 4, 8)), 1.0, u(0.2, 0.5))
            vib = (u(4.5, 6.0), u(0.002, 0.005)) if name in ("flute", "lead_saw") else (0.0, 0.0)
            return dict(kind="additive", amps=amps, env=env, vibrato=vib)
        if name in ("ep", "bell", "fm_bass"):
            if name == "ep":
                return dict(kind="fm", ratio=1.0, index=u(1.5, 3.0), index_tau=u(0.15, 0.4),
                            index_sus=u(0.1, 0.4), tau=u(0.8, 1.6), attack=0.003, release=u(0.06, 0.12))
            if name == "bell":
                return dict(kind="fm", ratio=_choice(rng, (3.5, 2.76, 1.4, 4.0)), index=u(2.0, 4.0),
                            index_tau=u(0.3, 0.8), index_sus=u(0.2, 0.5), tau=u(0.9, 1.8),
                            attack=0.002, release=u(0.2, 0.4))
            return dict(kind="fm", ratio=_choice(rng, (1.0, 0.5, 2.0)), index=u(1.5, 3.5),
                        index_tau=u(0.05, 0.15), index_sus=u(0.3, 0.8), tau=u(0.5, 1.2),
                        attack=0.004, release=u(0.03, 0.06))
        if name in ("pluck", "pluck_bass"):
            bass = name == "pluck_bass"
            return dict(kind="pluck", dark=u(0.3, 0.7) if bass else u(0.0, 0.5),
                        t60=u(0.8, 1.5) if bass else u(1.2, 3.0), release=u(0.04, 0.08))
        if name == "saw_pad":
            return dict(kind="pad", detune=u(6.0, 16.0), env=(u(0.08, 0.3), 0.3, u(0.7, 0.9), u(0.3, 0.5)))
        raise ValueError(name)

    def note(self, midi: int, gate: int) -> np.ndarray:
        key = (midi, gate)
        wave = self.cache.get(key)
        if wave is None:
            wave = self.cache[key] = getattr(self, "_" + self.p["kind"])(midi, gate).astype(np.float32)
        return wave

    # --- note renderers (float64, unit peak-ish)

    def _additive(self, midi: int, gate: int) -> np.ndarray:
        p, sr = self.p, self.sr
        f0 = _midi_hz(midi)
        a, d, s, r = p["env"]
        n = gate + int(r * sr) + 1
        kmax = max(1, min(p["amps"].size, int(0.45 * sr / f0)))
        table = self.cache.get(("table", kmax))
        if table is None:
            table = self.cache[("table", kmax)] = _harmonic_table(p["amps"][:kmax])
        t = np.arange(n) / sr
        rate, depth = p["vibrato"]
        phase = f0 * t
        if depth:  # vibrato fading in after 0.2 s
            ramp = np.clip((t - 0.2) / 0.3, 0.0, 1.0)
            phase = phase + f0 * depth * ramp * np.sin(2 * np.pi * rate * t) / (2 * np.pi * rate)
        return _table_osc(table, phase) * _adsr(n, gate, sr, a, d, s, r)

    def _pad(self, midi: int, gate: int) -> np.ndarray:
        p, sr = self.p, self.sr
        a, d, s, r = p["env"]
        n = gate + int(r * sr) + 1
        t = np.arange(n) / sr
        out = np.zeros(n)
        for cents in (-p["detune"], 0.0, p["detune"]):
            f = _midi_hz(midi + cents / 100.0)
            kmax = max(1, int(0.45 * sr / f))
            table = self.cache.get(("saw", kmax))
            if table is None:
                table = self.cache[("saw", kmax)] = _harmonic_table(1.0 / np.arange(1, kmax + 1))
            out += _table_osc(table, f * t + self.rng.random())
        return out / 3.0 * _adsr(n, gate, sr, a, d, s, r)

    def _fm(self, midi: int, gate: int) -> np.ndarray:
        p, sr = self.p, self.sr
        fc = _midi_hz(midi)
        fm = fc * p["ratio"]
        rel = int(p["release"] * sr)
        n = min(gate, int(5 * p["tau"] * sr)) + rel + 1
        t = np.arange(n) / sr
        index = p["index"] * np.exp(-t / p["index_tau"]) + p["index_sus"]
        # Carson's rule: keep the sidebands below 0.45 sr (no aliasing).
        limit = max(0.0, (0.45 * sr - fc) / fm - 1.0)
        index *= min(1.0, limit / (p["index"] + p["index_sus"]))
        y = np.sin(2 * np.pi * fc * t + index * np.sin(2 * np.pi * fm * t))
        env = np.minimum(t / p["attack"], 1.0) * np.exp(-t / p["tau"])
        return y * env * _release(n, min(gate, n - rel - 1), rel)

    def _pluck(self, midi: int, gate: int) -> np.ndarray:
        p, sr = self.p, self.sr
        raw = self.cache.get(("string", midi))
        if raw is None:
            raw = self.cache[("string", midi)] = _karplus_strong(
                _midi_hz(midi), int(min(2.0, p["t60"]) * sr), sr, self.rng, p["dark"], p["t60"])
        rel = int(p["release"] * sr)
        n = min(gate + rel + 1, raw.size)
        return raw[:n] * _release(n, min(gate, n - rel - 1), rel)


def _karplus_strong(f0: float, n: int, sr: int, rng: np.random.Generator, dark: float,
                    t60: float) -> np.ndarray:
    """Plucked string: noise burst into a tuned, lossy delay loop (one ``lfilter`` call).

    Loop = delay of ``N`` samples, a two-point lowpass L(z) = (1 - s) + s z^-1 (``s``
    samples of delay, lighter for high notes so they ring as long as low ones) and a
    first-order all-pass A(z) = (c + z^-1) / (1 + c z^-1) supplying the fractional
    rest of the period, so the pitch is exact. The string Y = X / (1 - g z^-N L A) is a
    rational filter of order N + 2.
    """
    period = sr / f0
    s = float(np.clip(0.5 * 300.0 / f0, 0.1, 0.5))
    N = max(2, int(math.floor(period - s - 0.1)))
    frac = period - s - N  # in [0.1, 1.1) once the period exceeds ~2.6 samples
    c = (1.0 - frac) / (1.0 + frac)
    w = 2.0 * math.pi * f0 / sr
    loss = math.sqrt(1.0 - 2.0 * s * (1.0 - s) * (1.0 - math.cos(w)))  # |L| at f0
    g = min(0.9995, 10.0 ** (-3.0 / (t60 * f0)) / loss)  # loop gain for the wanted T60
    a = np.zeros(N + 3)
    a[0], a[1] = 1.0, c
    a[N] -= g * (1.0 - s) * c
    a[N + 1] -= g * ((1.0 - s) + s * c)
    a[N + 2] -= g * s
    burst = rng.uniform(-1.0, 1.0, N)
    burst = signal.lfilter([1.0 - dark], [1.0, -dark], burst - burst.mean())
    x = np.zeros(n)
    x[:N] = burst
    y = signal.lfilter([1.0, c], a, x)
    return y / np.max(np.abs(y))


# ----------------------------------------------------------------------------- drums


def _drum_kit(rng: np.random.Generator, sr: int) -> dict[str, list[np.ndarray]]:
    """Per-seed kick, snare, closed and open hi-hat, three takes each."""
    u = rng.uniform
    nyq = sr / 2.0
    kick_hi, kick_lo, kick_sweep, kick_tau = u(110, 200), u(40, 62), u(0.02, 0.06), u(0.12, 0.3)
    sn_lo, sn_hi = u(900, 2000), min(u(4500, 8000), 0.9 * nyq)
    sn_body, sn_tau, sn_mix = u(160, 250), u(0.05, 0.12), u(0.3, 0.6)
    hat_cut, hat_tau = min(u(5500, 8500), 0.75 * nyq), u(0.012, 0.03)
    sn_sos = signal.butter(2, [sn_lo, sn_hi], btype="bandpass", fs=sr, output="sos")
    hat_sos = signal.butter(4, hat_cut, btype="highpass", fs=sr, output="sos")
    kit: dict[str, list[np.ndarray]] = {"kick": [], "snare": [], "hat": [], "open_hat": []}
    for _ in range(3):
        t = np.arange(int(0.45 * sr)) / sr
        freq = kick_lo + (kick_hi - kick_lo) * np.exp(-t / kick_sweep)
        kick = np.sin(2 * np.pi * np.cumsum(freq) / sr) * np.exp(-t / kick_tau)
        kick[: int(0.003 * sr)] += 0.3 * rng.uniform(-1, 1, int(0.003 * sr))
        kit["kick"].append(np.tanh(1.5 * kick) / np.tanh(1.5))
        t = np.arange(int(0.3 * sr)) / sr
        noise = signal.sosfilt(sn_sos, rng.standard_normal(t.size))
        noise /= np.max(np.abs(noise))
        body = np.sin(2 * np.pi * sn_body * t) * np.exp(-t / 0.04)
        snare = (sn_mix * noise * np.exp(-t / sn_tau) + (1 - sn_mix) * body)
        kit["snare"].append(snare / np.max(np.abs(snare)))
        for key, tau, dur in (("hat", hat_tau, 0.12), ("open_hat", 6 * hat_tau, 0.4)):
            t = np.arange(int(dur * sr)) / sr
            hat = signal.sosfilt(hat_sos, rng.standard_normal(t.size)) * np.exp(-t / tau)
            kit[key].append(hat / np.max(np.abs(hat)))
    return kit


# ---------------------------------------------------------------------------- style


@dataclass
class _Style:
    seed: int
    genre: str
    tempo: float
    tonic: int  # pitch class 0..11
    mode: str
    scale: tuple
    progressions: dict
    sevenths: bool
    swing: float
    lead: str
    harmony: tuple
    bass: str
    gains: dict
    reverb_rt60: float
    reverb_wet: float
    echo: float
    rngs: dict = field(repr=False)
    g: dict = field(repr=False)

    @property
    def bar_seconds(self) -> float:
        return 4 * 60.0 / self.tempo


def _progression(rng: np.random.Generator, scale: tuple, length: int) -> list[int]:
    """Diatonic progression of scale degrees (0 = tonic), no diminished triads."""
    allowed = []
    for d in range(7):
        third = (scale[(d + 2) % 7] - scale[d]) % 12
        fifth = (scale[(d + 4) % 7] - scale[d]) % 12
        if fifth == 7 and third in (3, 4):
            allowed.append(d)
    common = {0: 1.0, 1: 0.7, 2: 0.4, 3: 1.0, 4: 1.0, 5: 0.9, 6: 0.5}
    prog = [0]
    while len(prog) < length:
        options = {d: common[d] for d in allowed if d != prog[-1]}
        if len(prog) == length - 1:  # end away from the tonic so the loop turns over
            options.pop(0, None)
        prog.append(_pick(rng, options))
    return prog


def _make_style(seed: int) -> _Style:
    """Everything fixed per song, from ``default_rng(seed)``."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, not {seed!r}")
    master = np.random.default_rng(int(seed))
    # Independent streams so each part's draws depend only on its own earlier bars.
    names = ("style", "arrange", "lead", "harmony", "bass", "drums",
             "lead_snd", "harmony_snd", "bass_snd", "drum_snd", "fx",
             "lead_time", "harmony_time", "bass_time", "drums_time")
    child_seeds = master.integers(0, 2**63 - 1, len(names))
    rngs = {k: np.random.default_rng(int(s)) for k, s in zip(names, child_seeds)}
    rng = rngs["style"]
    genre = _choice(rng, GENRES)
    g = _GENRES[genre]
    mode = _choice(rng, g["modes"])
    scale = _MODES[mode]
    n_a = int(_pick(rng, {4: 0.5, 5: 0.1, 6: 0.15, 8: 0.25}))
    n_b = int(_pick(rng, {4: 0.6, 6: 0.2, 8: 0.2}))
    progressions = {"A": _progression(rng, scale, n_a), "B": _progression(rng, scale, n_b)}
    return _Style(
        seed=int(seed), genre=genre, tempo=float(np.round(rng.uniform(*g["tempo"]), 1)),
        tonic=int(rng.integers(12)), mode=mode, scale=scale, progressions=progressions,
        sevenths=bool(rng.random() < g["sevenths"]), swing=float(rng.uniform(*g["swing"])),
        lead=_choice(rng, g["lead"]), harmony=_choice(rng, g["harmony"]), bass=_choice(rng, g["bass"]),
        # Track loudness (RMS) in dB relative to the lead.
        gains=dict(harmony=rng.uniform(-6, -3), bass=rng.uniform(-5, -2), kick=rng.uniform(-5, -3),
                   snare=rng.uniform(-9, -6), hat=g["hat_gain"] + rng.uniform(-2, 2)),
        reverb_rt60=float(rng.uniform(*g["reverb"])), reverb_wet=float(rng.uniform(*g["wet"])),
        echo=float(rng.uniform(0.2, 0.4)) if rng.random() < g["echo"] else 0.0,
        rngs=rngs, g=g,
    )


def describe_song(seed: int) -> dict:
    """Musical facts of the song :func:`render_song` makes from ``seed``.

    Parameters
    ----------
    seed : int
        Non-negative song seed.

    Returns
    -------
    info : dict
        ``genre`` (one of :data:`GENRES`), ``tempo_bpm``, ``key`` (e.g. ``"F# dorian"``),
        ``progressions`` (``{"A": [...], "B": [...]}`` as Roman numerals, upper case =
        major triad), ``sevenths``, ``swing``, ``lead``, ``harmony`` (``"pad"``,
        ``"comp"``, ``"arp8"`` or ``"arp16"`` with an instrument), ``bass``, ``echo``,
        ``reverb_rt60``.
    """
    st = _make_style(seed)

    def roman(d: int) -> str:
        third = (st.scale[(d + 2) % 7] - st.scale[d]) % 12
        return _ROMAN[d] if third == 4 else _ROMAN[d].lower()

    return dict(
        seed=st.seed, genre=st.genre, tempo_bpm=st.tempo,
        key=f"{_PITCH_NAMES[st.tonic]} {st.mode}",
        progressions={k: [roman(d) for d in v] for k, v in st.progressions.items()},
        sevenths=st.sevenths, swing=round(st.swing, 3), lead=st.lead,
        harmony=" ".join(st.harmony), bass=st.bass, echo=st.echo > 0,
        reverb_rt60=round(st.reverb_rt60, 2),
    )


# ----------------------------------------------------------------------- composition


@dataclass
class _Bar:
    degree: int  # chord root as a scale degree
    section: str  # "A" or "B"
    intensity: int  # 0 sparse .. 2 full
    last: bool  # last bar of its section (drum fill)
    bass: bool


def _arrange(st: _Style, n_bars: int) -> list[_Bar]:
    """Sections of one pass through progression A or B, each with an intensity.

    Intensity 0 is a sparse section (lead, harmony, maybe bass, hi-hats only), 1 adds
    the full drum kit and bass, 2 plays everything louder.
    """
    rng = st.rngs["arrange"]
    bars: list[_Bar] = []
    while len(bars) < n_bars:
        first = not bars
        name = "A" if first else ("A" if rng.random() < 0.5 else "B")
        intensity = int(_pick(rng, {0: 0.35, 1: 0.45, 2: 0.2} if first else {0: 0.12, 1: 0.4, 2: 0.48}))
        bass = bool(intensity > 0 or rng.random() < 0.6)
        prog = st.progressions[name]
        for i, d in enumerate(prog):
            bars.append(_Bar(d, name, intensity, i == len(prog) - 1, bass))
    return bars[:n_bars]


def _chord_degrees(st: _Style, degree: int) -> list[int]:
    return [degree + k for k in ((0, 2, 4, 6) if st.sevenths else (0, 2, 4))]


def _degree_midi(st: _Style, degree: int, base: int) -> int:
    """MIDI note of a scale degree (may be negative or > 6) above tonic note ``base``."""
    return base + 12 * (degree // 7) + st.scale[degree % 7]


def _base_note(st: _Style, low: int) -> int:
    """MIDI note of the tonic in the octave starting at ``low``."""
    return low + (st.tonic - low) % 12


def _pattern(rng: np.random.Generator, probs: dict) -> list[int]:
    return [s for s in range(_STEPS_PER_BAR)
            if probs.get(s, 0.0) >= 1.0 or rng.random() < probs.get(s, 0.0)]


def _mutate(rng: np.random.Generator, steps: list[int], probs: dict, p: float = 0.08) -> list[int]:
    """Per-bar variation of a pattern: drop or add a few hits (never a certain one)."""
    out = []
    for s in range(_STEPS_PER_BAR):
        on = s in steps
        if probs.get(s, 0.0) < 1.0 and rng.random() < p:
            on = not on
        if on:
            out.append(s)
    return out


Note = tuple  # (step, length_steps, midi, velocity)


def _compose_lead(st: _Style, bars: list[_Bar]) -> list[Note]:
    rng = st.rngs["lead"]
    base = _base_note(st, 60 if st.lead not in ("bell",) else 64)
    lo, hi = -3, 10
    degree = int(rng.integers(0, 5))
    moves = {-4: 0.03, -3: 0.05, -2: 0.15, -1: 0.22, 0: 0.08, 1: 0.22, 2: 0.15, 3: 0.06, 4: 0.04}
    notes: list[Note] = []
    rhythm: list | None = None
    for b, bar in enumerate(bars):
        if rhythm is None or rng.random() > 0.35:  # new rhythm, or repeat last bar's
            rhythm, s = [], int(_pick(rng, {0: 0.8, 2: 0.15, 4: 0.05}))
            while s < _STEPS_PER_BAR:
                length = min(int(_pick(rng, st.g["lead_durs"])), _STEPS_PER_BAR - s)
                rhythm.append((s, length, bool(rng.random() < st.g["rest"])))
                s += length
        chord = [d % 7 for d in _chord_degrees(st, bar.degree)]
        for s, length, rest in rhythm:
            degree += int(_pick(rng, moves))
            if degree < lo or degree > hi:
                degree = 2 * (lo if degree < lo else hi) - degree
            if s % 8 == 0 and rng.random() < 0.75:  # strong beats land on chord tones
                cands = [d for d in range(degree - 3, degree + 4) if d % 7 in chord and lo <= d <= hi]
                if cands:
                    degree = min(cands, key=lambda d: (abs(d - degree), d))
            if rest:
                continue
            vel = (1.0 if s % 4 == 0 else 0.85) * rng.uniform(0.8, 1.0) * (0.8 + 0.1 * bar.intensity)
            notes.append((b * _STEPS_PER_BAR + s, length, _degree_midi(st, degree, base), vel))
    return notes


def _voicing(st: _Style, degree: int, low: int) -> list[int]:
    """Chord tones in close position within [low, low + 12)."""
    base = _base_note(st, 0)
    return sorted(low + (_degree_midi(st, d, base) - low) % 12 for d in _chord_degrees(st, degree))


def _arp_figure(rng: np.random.Generator, n_steps: int, n_tones: int) -> list:
    """Random walk over chord-tone indices (``None`` = rest): a per-song arpeggio figure."""
    idx, figure = int(rng.integers(n_tones)), []
    for i in range(n_steps):
        figure.append(None if i and rng.random() < 0.12 else idx)
        idx += int(_pick(rng, {-3: 0.05, -2: 0.2, -1: 0.25, 1: 0.25, 2: 0.2, 3: 0.05}))
        if not 0 <= idx < n_tones:  # reflect at the ends of the range
            idx = -idx if idx < 0 else 2 * (n_tones - 1) - idx
    return figure


def _compose_harmony(st: _Style, bars: list[_Bar]) -> list[Note]:
    rng = st.rngs["harmony"]
    style, inst = st.harmony
    notes: list[Note] = []
    low = int(rng.integers(53, 58))
    patterns: dict[str, list] = {}
    for b, bar in enumerate(bars):
        start = b * _STEPS_PER_BAR
        # Voicing (inversion) moves with a per-bar shift of the register.
        chord = _voicing(st, bar.degree, low + int(rng.integers(-2, 3)))
        vel = (0.7 + 0.12 * bar.intensity) * rng.uniform(0.9, 1.0)
        if style == "pad":
            notes += [(start, _STEPS_PER_BAR, m, vel) for m in chord]
        elif style == "comp":
            if bar.section not in patterns:
                patterns[bar.section] = _pattern(rng, st.g["comp"]) or [0]
            hits = _mutate(rng, patterns[bar.section], st.g["comp"]) or [0]
            for s in hits:
                v = vel * rng.uniform(0.8, 1.0)
                voiced = chord if rng.random() < 0.7 else chord[1:] + [chord[0] + 12]
                notes += [(start + s, st.g["comp_len"], m, v) for m in voiced]
        else:  # arpeggio over two octaves, figure per section, varied per bar
            rate = 2 if style == "arp8" else 1
            tones = chord + [m + 12 for m in chord]
            n_steps = _STEPS_PER_BAR // rate
            if bar.section not in patterns:
                patterns[bar.section] = _arp_figure(rng, n_steps, len(tones))
            figure = [int(rng.integers(len(tones))) if rng.random() < 0.15 else k
                      for k in patterns[bar.section]]
            for i, k in enumerate(figure):
                if k is None:
                    continue
                s = i * rate
                accent = 1.0 if s % 4 == 0 else 0.8
                notes.append((start + s, rate * (2 if inst == "pluck" else 1), tones[k],
                              vel * accent * rng.uniform(0.85, 1.0)))
    return notes


def _compose_bass(st: _Style, bars: list[_Bar]) -> list[Note]:
    rng = st.rngs["bass"]
    base = _base_note(st, 33)
    probs = st.g["bass_steps"]
    w_root, w_fifth, w_oct, w_third = st.g["bass_notes"]
    patterns: dict[str, list[int]] = {}
    notes: list[Note] = []
    for b, bar in enumerate(bars):
        if bar.section not in patterns:
            patterns[bar.section] = _pattern(rng, probs) or [0]
        hits = _mutate(rng, patterns[bar.section], probs, 0.06) or [0]
        if not bar.bass:
            continue
        root = _degree_midi(st, bar.degree, base)
        nxt = _degree_midi(st, bars[b + 1].degree, base) if b + 1 < len(bars) else root
        for i, s in enumerate(hits):
            gap = (hits[i + 1] if i + 1 < len(hits) else _STEPS_PER_BAR) - s
            length = {"legato": gap, "medium": min(gap, 3),
                      "short": min(gap, 1 + int(rng.random() < 0.3))}[st.g["bass_len"]]
            if s == 0:
                m = root
            elif i == len(hits) - 1 and s >= 12 and nxt != root and rng.random() < 0.3:
                m = nxt + (1 if rng.random() < 0.5 else -1)  # chromatic approach to next root
            else:
                kind = _pick(rng, {"r": w_root, "f": w_fifth, "o": w_oct, "t": w_third + 1e-9})
                m = {"r": root, "f": _degree_midi(st, bar.degree + 4, base), "o": root + 12,
                     "t": _degree_midi(st, bar.degree + 2, base)}[kind]
            vel = (1.0 if s % 4 == 0 else 0.85) * rng.uniform(0.85, 1.0)
            notes.append((b * _STEPS_PER_BAR + s, length, m, vel))
    return notes


def _compose_drums(st: _Style, bars: list[_Bar]) -> list[tuple]:
    """Drum hits as (step, voice, velocity)."""
    rng = st.rngs["drums"]
    g = st.g
    patterns: dict[tuple, list[int]] = {}
    hits: list[tuple] = []
    open_hat = rng.random() < 0.5
    for b, bar in enumerate(bars):
        start = b * _STEPS_PER_BAR
        for voice in ("kick", "snare", "hat"):
            key = (voice, bar.section)
            if key not in patterns:
                patterns[key] = _pattern(rng, g[voice])
            steps = _mutate(rng, patterns[key], g[voice], 0.06 if voice != "hat" else 0.1)
            if bar.intensity == 0 and voice != "hat":
                continue
            if voice == "snare" and bar.last and bar.intensity > 0 and rng.random() < 0.6:
                steps = [s for s in steps if s < 12] + [12, 13, 14, 15]  # fill
            for s in steps:
                if voice == "hat":
                    accent = 1.0 if (s % 4 == 2 if st.genre == "house" else s % 4 == 0) else 0.65
                    name = "open_hat" if open_hat and s % 8 == 6 and rng.random() < 0.5 else "hat"
                    vel = accent * rng.uniform(0.7, 1.0) * (0.7 if bar.intensity == 0 else 1.0)
                else:
                    name = voice
                    strong = g[voice].get(s, 0.0) >= 1.0
                    vel = (1.0 if strong else 0.55) * rng.uniform(0.85, 1.0)
                    if voice == "snare" and bar.last and s >= 12:
                        vel = 0.5 + 0.12 * (s - 12)
                hits.append((start + s, name, vel))
    return hits


# ------------------------------------------------------------------------- rendering


def _reverb_ir(rng: np.random.Generator, sr: int, rt60: float) -> np.ndarray:
    """Exponentially decaying, darkened noise tail with a short pre-delay; unit energy."""
    n = int(rt60 * sr)
    t = np.arange(n) / sr
    ir = rng.standard_normal(n) * np.exp(-6.91 * t / rt60)
    ir = signal.sosfilt(signal.butter(1, min(4000.0, 0.4 * sr), fs=sr, output="sos"), ir)
    ir = np.concatenate([np.zeros(int(0.02 * sr)), ir])
    return ir / np.sqrt(np.sum(ir**2))


def _echo(x: np.ndarray, delay: int, feedback: float, taps: int = 3) -> np.ndarray:
    """Feedback-style echo as a few explicit delayed copies (FIR, cheap)."""
    y = x.copy()
    for k in range(1, taps + 1):
        if k * delay < x.size:
            y[k * delay :] += feedback**k * x[: x.size - k * delay]
    return y


def render_song(seed: int, duration: float, sr: int = 22050, transpose: int = 0, tempo: float = 1.0,
                timbre_seed: int | None = None) -> np.ndarray:
    """Render the song of ``seed`` as mono audio.

    Each seed picks a genre (:data:`GENRES`), a tempo in 80–150 BPM, a key and mode,
    two diatonic chord progressions of 4–8 chords, instruments for the lead, the
    harmony (pad, rhythmic comping or arpeggio) and the bass, a drum kit (pitch-swept
    sine kick, band-passed noise snare, high-passed noise hi-hats), mix levels, an
    echo and a reverb. The melody is generated bar by bar (never a loop) and the
    accompaniment patterns vary from bar to bar, so no two stretches of a song are
    identical, and two seeds are unrelated music.

    Parameters
    ----------
    seed : int
        Non-negative integer; the only source of randomness
        (``numpy.random.default_rng(seed)``). Same seed, same samples, bit for bit.
    duration : float
        Length in seconds (> 0). The notes do not depend on it: a shorter render is
        the beginning of a longer one (up to normalisation and the final 10 ms fade).
    sr : int, optional
        Sample rate in Hz (default 22050, at least 8000).
    transpose : int, optional
        Semitones added to every note (default 0): the same composition in another key.
    tempo : float, optional
        Tempo factor (default 1.0; 1.25 plays 25 % faster): the same notes on a
        stretched time grid, so a render covers ``tempo`` times as much of the piece.
    timbre_seed : int, optional
        Take the instruments, drum kit, mix levels, echo and reverb from this seed's
        song instead (default: the song's own). With ``transpose`` and ``tempo`` this
        renders a *cover*: the composition of ``seed``, re-performed — no stretch of
        its recording survives. The defaults render the song bit-identically to a call
        without these arguments.

    Returns
    -------
    y : np.ndarray, shape (round(duration * sr),), float32
        Samples with a peak of exactly 0.9 (:data:`PEAK`).

    Raises
    ------
    ValueError
        For a negative or non-integer seed or timbre seed, a duration under one sample,
        ``sr < 8000`` or a tempo factor outside (0, 4].

    See Also
    --------
    describe_song : the genre, tempo, key, progressions and instruments of a seed.
    """
    if not duration > 0:
        raise ValueError(f"duration must be positive, not {duration!r}")
    if int(sr) != sr or sr < 8000:
        raise ValueError(f"sr must be an integer >= 8000, not {sr!r}")
    if not 0 < tempo <= 4:
        raise ValueError(f"tempo must be in (0, 4], not {tempo!r}")
    sr = int(sr)
    st = _make_style(seed)
    st.tempo *= tempo
    # Composition comes from ``st``; the sound (instruments, kit, mix, effects) from ``sound``.
    sound = st if timbre_seed is None else _make_style(timbre_seed)
    n_out = int(round(duration * sr))
    if n_out == 0:
        raise ValueError(f"duration {duration!r} s is shorter than one sample")
    bar_len = st.bar_seconds
    step_len = bar_len / _STEPS_PER_BAR
    n_bars = int(math.ceil(duration / bar_len))
    n_buf = n_out + int(3.0 * sr)
    bars = _arrange(st, n_bars)

    def onset(step: int, rng: np.random.Generator, jitter: float) -> int:
        t = step * step_len + (st.swing * step_len if step % 2 else 0.0)
        return int(round((t + rng.normal(0.0, jitter)) * sr)) if jitter else int(round(t * sr))

    def play(notes: list[Note], inst: _Instrument, rng: np.random.Generator, legato: float) -> np.ndarray:
        track = np.zeros(n_buf)
        for step, length, midi, vel in notes:
            i = max(0, onset(step, rng, 0.004))
            if i >= n_out:
                continue
            gate = max(int(0.03 * sr), int(length * step_len * legato * sr))
            wave = inst.note(int(midi) + transpose, gate)[: n_buf - i]
            track[i : i + wave.size] += vel * wave
        return track

    lead = play(_compose_lead(st, bars), _Instrument(sound.lead, sound.rngs["lead_snd"], sr),
                st.rngs["lead_time"], 0.9)
    harmony = play(_compose_harmony(st, bars), _Instrument(sound.harmony[1], sound.rngs["harmony_snd"], sr),
                   st.rngs["harmony_time"], 1.0 if st.harmony[0] == "pad" else 0.85)
    bass = play(_compose_bass(st, bars), _Instrument(sound.bass, sound.rngs["bass_snd"], sr),
                st.rngs["bass_time"], 0.9)

    kit = _drum_kit(sound.rngs["drum_snd"], sr)
    drums = {name: np.zeros(n_buf) for name in ("kick", "snare", "hat")}
    pick = sound.rngs["drum_snd"]
    for step, name, vel in _compose_drums(st, bars):
        i = max(0, onset(step, st.rngs["drums_time"], 0.002))
        if i >= n_out:
            continue
        wave = kit[name][int(pick.integers(3))][: n_buf - i]
        drums["hat" if name == "open_hat" else name][i : i + wave.size] += vel * wave

    fx = sound.rngs["fx"]
    if st.harmony[0] == "pad":  # soften the saw / organ pad
        cutoff = min(fx.uniform(1500.0, 3500.0), 0.4 * sr)
        harmony = signal.sosfilt(signal.butter(2, cutoff, fs=sr, output="sos"), harmony)
    if sound.echo:
        lead = _echo(lead, int(round(step_len * _choice(fx, (3, 4, 6)) * sr)), sound.echo)

    def unit_rms(x: np.ndarray) -> np.ndarray:
        rms = float(np.sqrt(np.mean(x[:n_out] ** 2)))
        return x / rms if rms > 0 else x

    gains = sound.gains
    dry = mix(unit_rms(lead), unit_rms(harmony), gains["harmony"])
    dry = mix(dry, unit_rms(bass), gains["bass"])
    send = dry.copy()
    for name in ("kick", "snare", "hat"):
        drums[name] = unit_rms(drums[name])
        dry = mix(dry, drums[name], gains[name])
    send = mix(send, drums["snare"], gains["snare"] - 6.0)
    wet = signal.oaconvolve(send, _reverb_ir(fx, sr, sound.reverb_rt60))[:n_buf]
    rms_dry, rms_wet = np.sqrt(np.mean(send**2)), np.sqrt(np.mean(wet**2))
    out = mix(dry, wet * (rms_dry / max(rms_wet, 1e-12)), 20 * math.log10(sound.reverb_wet))[:n_out]

    fade = min(n_out, int(0.01 * sr))
    out[n_out - fade :] *= np.linspace(1.0, 0.0, fade)
    peak = float(np.max(np.abs(out)))
    if peak > 0:
        out *= PEAK / peak
    return out.astype(np.float32)

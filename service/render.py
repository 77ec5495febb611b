"""Evidence for analysts: the alignment plot (inline SVG), spectrograms (PNG, framed with time and frequency
axes), the chroma alignment of a cover (SVG), and the audio of matched spans (WAV).

All are drawn on the server from numbers the library already produced — the
aligned landmark points of :meth:`refrain.api.Refrain.match_with_evidence`, the fitted line
``ref = offset + time_ratio * q``, the spans, the fingerprint's peaks and chroma —
so the analyst page needs no JavaScript and no plotting library.
"""

from __future__ import annotations

import base64
import io
from html import escape

import numpy as np
import soundfile
from PIL import Image

from refrain.fingerprint import FingerprintParams
from refrain.fingerprint.spectrogram import log_frequency_axis, log_frequency_spectrogram

__all__ = ["alignment_svg", "spectrogram_png", "spectrogram_figure", "chroma_svg", "resynthesise_peaks", "wav_bytes",
           "MAX_PLOTTED_POINTS"]

MAX_PLOTTED_POINTS = 4000  # beyond this the page gets heavy and the cloud is no clearer
_WIDTH, _HEIGHT, _MARGIN_LEFT, _MARGIN_BOTTOM, _MARGIN = 640, 400, 56, 40, 14
# A dark-to-bright ramp (black, purple, orange, pale yellow), readable in print and for most
# colour-vision deficiencies because brightness rises monotonically.
_RAMP = np.array([[0, 0, 4], [60, 15, 110], [180, 54, 122], [251, 136, 97], [252, 253, 191]], float)


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round-numbered ticks covering [low, high]."""
    span = max(high - low, 1e-9)
    raw = span / count
    magnitude = 10 ** np.floor(np.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = np.ceil(low / step) * step
    return [round(float(v), 6) for v in np.arange(first, high + step * 1e-6, step)]


def alignment_svg(points: np.ndarray, offset: float, time_ratio: float,
                  spans: list[tuple[float, float, float, float]], title: str) -> str:
    """The alignment plot: upload time (x) against reference time (y).

    Parameters
    ----------
    points : np.ndarray, shape (n, 2)
        (upload s, reference s) of each aligned landmark.
    offset, time_ratio : float
        The fitted line ``ref = offset + time_ratio * upload``.
    spans : list of (query_start, query_end, ref_start, ref_end)
        Drawn as rectangles.
    title : str
        Accessible name of the figure.

    Returns
    -------
    str
        An ``<svg>`` element; landmarks are ``circle.landmark``, the line
        ``line.fit-line``, the spans ``rect.span``.
    """
    points = np.asarray(points, dtype=float).reshape(-1, 2)
    if len(points) > MAX_PLOTTED_POINTS:  # an even thinning keeps the cloud's shape
        points = points[np.linspace(0, len(points) - 1, MAX_PLOTTED_POINTS).astype(int)]
    xs = [p[0] for p in points] + [s[0] for s in spans] + [s[1] for s in spans]
    ys = [p[1] for p in points] + [s[2] for s in spans] + [s[3] for s in spans]
    x0, x1 = (min(xs), max(xs)) if xs else (0.0, 1.0)
    y0, y1 = (min(ys), max(ys)) if ys else (0.0, 1.0)
    pad_x, pad_y = max(0.5, 0.05 * (x1 - x0)), max(0.5, 0.05 * (y1 - y0))
    x0, x1, y0, y1 = max(0.0, x0 - pad_x), x1 + pad_x, max(0.0, y0 - pad_y), y1 + pad_y
    plot_w = _WIDTH - _MARGIN_LEFT - _MARGIN
    plot_h = _HEIGHT - _MARGIN_BOTTOM - _MARGIN

    def sx(x: float) -> float:
        return round(_MARGIN_LEFT + (x - x0) / (x1 - x0) * plot_w, 2)

    def sy(y: float) -> float:
        return round(_MARGIN + plot_h - (y - y0) / (y1 - y0) * plot_h, 2)

    out = [f'<svg class="alignment-plot" xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" '
           f'height="{_HEIGHT}" viewBox="0 0 {_WIDTH} {_HEIGHT}" role="img" '
           f'aria-label="{escape(title)}"><title>{escape(title)}</title>',
           f'<rect x="{_MARGIN_LEFT}" y="{_MARGIN}" width="{plot_w}" height="{plot_h}" '
           'fill="#fff" stroke="#888"/>']
    for tick in _ticks(x0, x1):
        out.append(f'<line x1="{sx(tick)}" y1="{sy(y0)}" x2="{sx(tick)}" y2="{sy(y0) + 5}" stroke="#444"/>'
                   f'<text class="tick" x="{sx(tick)}" y="{sy(y0) + 18}" text-anchor="middle" '
                   f'font-size="11">{tick:g}</text>')
    for tick in _ticks(y0, y1):
        out.append(f'<line x1="{_MARGIN_LEFT - 5}" y1="{sy(tick)}" x2="{_MARGIN_LEFT}" y2="{sy(tick)}" '
                   f'stroke="#444"/><text class="tick" x="{_MARGIN_LEFT - 8}" y="{sy(tick) + 4}" '
                   f'text-anchor="end" font-size="11">{tick:g}</text>')
    out.append(f'<text x="{_MARGIN_LEFT + plot_w / 2}" y="{_HEIGHT - 6}" text-anchor="middle" '
               'font-size="12">upload time (s)</text>'
               f'<text x="14" y="{_MARGIN + plot_h / 2}" text-anchor="middle" font-size="12" '
               f'transform="rotate(-90 14 {_MARGIN + plot_h / 2})">reference time (s)</text>')
    for q_start, q_end, r_start, r_end in spans:
        out.append(f'<rect class="span" x="{sx(q_start)}" y="{sy(r_end)}" '
                   f'width="{max(1.0, sx(q_end) - sx(q_start))}" height="{max(1.0, sy(r_start) - sy(r_end))}" '
                   f'fill="#4a90d9" fill-opacity="0.15" stroke="#4a90d9" stroke-dasharray="4 3">'
                   f'<title>upload {q_start:.1f}–{q_end:.1f} s ↔ reference {r_start:.1f}–{r_end:.1f} s'
                   '</title></rect>')
    # The fitted line, clipped to the plotted upload-time range.
    out.append(f'<line class="fit-line" x1="{sx(x0)}" y1="{sy(offset + time_ratio * x0)}" '
               f'x2="{sx(x1)}" y2="{sy(offset + time_ratio * x1)}" stroke="#d0021b" stroke-width="1.5" '
               f'clip-path="url(#plot-area)"><title>ref = {offset:.3f} + {time_ratio:.4f} × upload'
               '</title></line>')
    out.append(f'<clipPath id="plot-area"><rect x="{_MARGIN_LEFT}" y="{_MARGIN}" width="{plot_w}" '
               f'height="{plot_h}"/></clipPath>')
    out.append('<g class="landmarks" fill="#222" fill-opacity="0.7">')
    out.extend(f'<circle class="landmark" cx="{sx(q)}" cy="{sy(r)}" r="1.8"/>' for q, r in points)
    out.append("</g></svg>")
    return "".join(out)


def spectrogram_png(samples: np.ndarray, params: FingerprintParams, dynamic_range_db: float = 70.0,
                    max_width: int = 900) -> bytes:
    """A PNG of the log-frequency spectrogram the fingerprint is computed from.

    Parameters
    ----------
    samples : np.ndarray
        Mono samples at ``params.sample_rate`` (the region to show).
    params : FingerprintParams
        The index's analysis settings (window, hop, frequency range).
    dynamic_range_db : float
        Levels further than this below the loudest cell are black.
    max_width : int
        Images wider than this many frames are scaled down.

    Returns
    -------
    bytes
        PNG data, one pixel per frame (32 ms) and log-frequency bin; low frequencies at the bottom.
    """
    S_db = log_frequency_spectrogram(samples, params.sample_rate, params.n_fft, params.hop_length,
                                     params.fmin, params.fmax, params.bins_per_octave)
    if S_db.shape[1] == 0:
        S_db = np.full((S_db.shape[0], 1), -200.0, dtype=np.float32)
    level = np.clip((S_db - (S_db.max() - dynamic_range_db)) / dynamic_range_db, 0.0, 1.0)[::-1]
    position = level * (len(_RAMP) - 1)
    low = np.minimum(position.astype(int), len(_RAMP) - 2)
    frac = (position - low)[..., None]
    rgb = (_RAMP[low] * (1 - frac) + _RAMP[low + 1] * frac).astype(np.uint8)
    image = Image.fromarray(rgb, "RGB")
    n_bins, n_frames = level.shape
    if n_frames > max_width:
        image = image.resize((max_width, n_bins), Image.Resampling.BILINEAR)
    # One pixel per frame and bin (the page scales it up), fast compression: a spectrogram is
    # made for every matched work of every upload, so its cost is paid on the upload path.
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


_PITCH_CLASSES = ("C", "C♯", "D", "D♯", "E", "F", "F♯", "G", "G♯", "A", "A♯", "B")


def _frequency_ticks(low: float, high: float) -> list[float]:
    """1-2-5 frequencies (Hz) within [low, high], for a log axis."""
    ticks = []
    for decade in range(int(np.floor(np.log10(low))), int(np.ceil(np.log10(high))) + 1):
        ticks.extend(m * 10.0 ** decade for m in (1, 2, 5) if low <= m * 10.0 ** decade <= high)
    return ticks


def spectrogram_figure(png: bytes, start: float, end: float, params: FingerprintParams, title: str,
                       figure_id: str, width: int = 460, height: int = 300) -> str:
    """A :func:`spectrogram_png` framed with its axes: time (s) below, frequency (Hz, log scale) on the left.

    Parameters
    ----------
    png : bytes
        The image (one pixel per frame and log-frequency bin, low frequencies at the bottom).
    start, end : float
        Seconds of the recording the image spans.
    params : FingerprintParams
        The analysis settings it was made with (its frequency axis).
    title : str
        Accessible name and caption of the figure.
    figure_id : str
        The ``id`` of the ``<svg>``.

    Returns
    -------
    str
        A ``<figure class="spectrogram-figure">``: the image (``img.spectrogram``) over an ``<svg>`` drawing its
        frame and axes; tick labels are ``text.time-tick`` and ``text.freq-tick``.
    """
    left, bottom, top, right = 52, 34, 8, 8
    plot_w, plot_h = width - left - right, height - top - bottom
    centres = log_frequency_axis(params.fmin, params.fmax, params.bins_per_octave)
    low, high = float(centres[0]), float(centres[-1])
    uri = "data:image/png;base64," + base64.b64encode(png).decode()
    out = [f'<figure class="spectrogram-figure" id="{escape(figure_id)}" style="position: relative; margin: 0; '
           f'width: {width}px; height: {height}px">',
           f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           f'role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>',
           f'<rect x="{left - 1}" y="{top - 1}" width="{plot_w + 2}" height="{plot_h + 2}" fill="none" stroke="#888"/>']
    for tick in _ticks(start, max(end, start + 1e-3)):
        if not start <= tick <= end:
            continue
        x = round(left + (tick - start) / max(end - start, 1e-9) * plot_w, 2)
        out.append(f'<line x1="{x}" y1="{top + plot_h}" x2="{x}" y2="{top + plot_h + 5}" stroke="#444"/>'
                   f'<text class="time-tick" x="{x}" y="{top + plot_h + 17}" text-anchor="middle" '
                   f'font-size="11">{tick:g}</text>')
    for tick in _frequency_ticks(low, high):
        y = round(top + plot_h - np.log2(tick / low) / np.log2(high / low) * plot_h, 2)
        label = f"{tick / 1000:g}k" if tick >= 1000 else f"{tick:g}"
        out.append(f'<line x1="{left - 5}" y1="{y}" x2="{left}" y2="{y}" stroke="#444"/>'
                   f'<text class="freq-tick" x="{left - 7}" y="{y + 4}" text-anchor="end" font-size="11">'
                   f'{label}</text>')
    out.append(f'<text x="{left + plot_w / 2}" y="{height - 4}" text-anchor="middle" font-size="12">time (s)</text>'
               f'<text x="12" y="{top + plot_h / 2}" text-anchor="middle" font-size="12" '
               f'transform="rotate(-90 12 {top + plot_h / 2})">frequency (Hz)</text></svg>')
    out.append(f'<img class="spectrogram" alt="{escape(title)}" src="{uri}" style="position: absolute; left: {left}px; '
               f'top: {top}px; width: {plot_w}px; height: {plot_h}px; border: 0; image-rendering: pixelated"></figure>')
    return "".join(out)


def chroma_svg(times: np.ndarray, upload_chroma: np.ndarray, reference_chroma: np.ndarray,
               agreement: np.ndarray, title: str, width: int = 640) -> str:
    """A cover's chroma alignment: the upload's pitch classes (re-keyed to the reference), the reference's on the
    aligned time line, and how well each frame agrees.

    Parameters
    ----------
    times : np.ndarray, shape (n,)
        Upload seconds of each chroma frame.
    upload_chroma, reference_chroma : np.ndarray, shape (n, 12)
        Unit-length, centred pitch-class profiles of the same frames (the reference's read at
        ``offset + time_ratio * time``), column 0 = C.
    agreement : np.ndarray, shape (n,)
        Correlation of each pair of frames, -1..1.
    title : str

    Returns
    -------
    str
        An ``<svg class="chroma-alignment">``: two 12-row heat maps and an agreement strip
        (``rect.agreement``, one per frame).
    """
    left, right, row, gap = 64, 8, 9, 16
    n = len(times)
    plot_w = width - left - right
    cell = plot_w / max(n, 1)
    band = 12 * row
    height = 2 * band + 3 * gap + 30 + 40
    out = [f'<svg class="chroma-alignment" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>']

    def heat(chroma: np.ndarray, y0: float, label: str) -> None:
        out.append(f'<text x="4" y="{y0 + band / 2 + 4}" font-size="11">{label}</text>')
        for pitch in range(12):
            y = y0 + (11 - pitch) * row
            if pitch in (0, 4, 7):
                out.append(f'<text x="{left - 4}" y="{y + row - 1}" text-anchor="end" font-size="9">'
                           f'{_PITCH_CLASSES[pitch]}</text>')
            for i in range(n):
                level = float(np.clip(chroma[i, pitch], 0.0, 1.0))
                if level > 0.05:
                    out.append(f'<rect x="{left + i * cell:.2f}" y="{y}" width="{cell + 0.3:.2f}" height="{row}" '
                               f'fill="#3b0f70" fill-opacity="{level:.2f}"/>')
        out.append(f'<rect x="{left}" y="{y0}" width="{plot_w}" height="{band}" fill="none" stroke="#888"/>')

    heat(upload_chroma, gap, "upload")
    heat(reference_chroma, 2 * gap + band, "reference")
    y0 = 3 * gap + 2 * band
    out.append(f'<text x="4" y="{y0 + 18}" font-size="11">agreement</text>')
    for i, value in enumerate(agreement):
        colour = "#2e7d32" if value > 0 else "#c62828"
        out.append(f'<rect class="agreement" x="{left + i * cell:.2f}" y="{y0}" width="{cell + 0.3:.2f}" height="30" '
                   f'fill="{colour}" fill-opacity="{min(1.0, abs(float(value))):.2f}">'
                   f'<title>{times[i]:.2f} s: {float(value):+.2f}</title></rect>')
    out.append(f'<rect x="{left}" y="{y0}" width="{plot_w}" height="30" fill="none" stroke="#888"/>')
    if n:
        for tick in _ticks(float(times[0]), float(times[-1])):
            if times[0] <= tick <= times[-1]:
                x = left + (tick - times[0]) / max(float(times[-1] - times[0]), 1e-9) * (plot_w - cell) + cell / 2
                out.append(f'<text class="time-tick" x="{x:.2f}" y="{y0 + 46}" text-anchor="middle" '
                           f'font-size="11">{tick:g}</text>')
    out.append(f'<text x="{left + plot_w / 2}" y="{height - 2}" text-anchor="middle" font-size="12">'
               'upload time (s)</text></svg>')
    return "".join(out)


def resynthesise_peaks(frames: np.ndarray, bins: np.ndarray, strength: np.ndarray, params: FingerprintParams,
                       start: float, end: float) -> np.ndarray:
    """Audio made from spectral peaks alone: a short sine burst per peak, at its frequency, louder when stronger.

    Not the recording: what the fingerprint kept of it, to listen to where the audio is not stored.

    Parameters
    ----------
    frames, bins : np.ndarray of int
        Each peak's frame (hop units from the recording's start) and log-frequency bin.
    strength : np.ndarray
        Each peak's prominence in dB.
    params : FingerprintParams
    start, end : float
        Seconds of the recording to render.

    Returns
    -------
    np.ndarray, float32
        Samples at ``params.sample_rate``, peak-normalised to 0.5 (silence if no peak lies in the range).
    """
    rate, hop = params.sample_rate, params.hop_length
    out = np.zeros(max(1, int(round((end - start) * rate))), dtype=np.float32)
    burst = 2 * hop
    envelope = np.hanning(burst).astype(np.float32)
    t = np.arange(burst) / rate
    centres = log_frequency_axis(params.fmin, params.fmax, params.bins_per_octave)
    for frame, bin_, level in zip(frames, bins, strength):
        first = int(round(frame * hop - start * rate))
        if first < 0 or first >= len(out) or not 0 <= bin_ < len(centres):
            continue
        piece = envelope * np.sin(2 * np.pi * centres[bin_] * t) * (10 ** (float(level) / 20))
        stop = min(len(out), first + burst)
        out[first:stop] += piece[:stop - first].astype(np.float32)
    loudest = float(np.abs(out).max())
    return out * (0.5 / loudest) if loudest > 0 else out


def wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """16-bit PCM WAV of mono samples."""
    buffer = io.BytesIO()
    soundfile.write(buffer, np.asarray(samples, dtype=np.float32), sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()

"""Evidence pictures for analysts: the alignment plot (inline SVG) and a spectrogram (PNG).

Both are drawn on the server from numbers the library already produced — the
aligned landmark points of :meth:`refrain.api.Refrain.match_with_evidence`, the fitted line
``ref = offset + time_ratio * q`` and the spans — so the analyst page needs no
JavaScript and no plotting library.
"""

from __future__ import annotations

import io
from html import escape

import numpy as np
from PIL import Image

from refrain.fingerprint import FingerprintParams
from refrain.fingerprint.spectrogram import log_frequency_spectrogram

__all__ = ["alignment_svg", "spectrogram_png", "MAX_PLOTTED_POINTS"]

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

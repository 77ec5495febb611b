"""Reference exclusions: stretches of a work's recording that are never evidence of a claim.

A rights holder (or an analyst closing a dispute) excludes a span of a reference
recording — a public-domain intro, a sample the label does not own. A match's
aligned spans that fall inside an excluded span are dropped before the policy
counts them: what is left of each span is kept (its upload side mapped through
the span's own alignment), and a match with nothing left is not a claim at all.

Pure functions over plain tuples: the service applies them at decision time and
rescans apply them through the same step.
"""

from __future__ import annotations

from typing import Sequence

__all__ = ["AlignedSpan", "RefSpan", "merge_spans", "exclude_spans", "overlaps"]

#: ``(query_start, query_end, ref_start, ref_end)`` seconds: one stretch of the upload aligned with one stretch
#: of the reference (:class:`matcher.Span` without its score).
AlignedSpan = tuple[float, float, float, float]
#: ``(start, end)`` seconds of a reference recording.
RefSpan = tuple[float, float]

#: Pieces of a span shorter than this (s) after an exclusion are rounding left-overs, not evidence.
MIN_PIECE_SECONDS = 0.05


def merge_spans(spans: Sequence[RefSpan]) -> list[RefSpan]:
    """The union of ``(start, end)`` spans as sorted, disjoint spans (empty and reversed spans are dropped)."""
    merged: list[list[float]] = []
    for start, end in sorted((float(s), float(e)) for s, e in spans if e > s):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(start, end) for start, end in merged]


def overlaps(a: RefSpan, b: RefSpan) -> bool:
    """Whether two ``(start, end)`` spans share more than a point."""
    return min(a[1], b[1]) > max(a[0], b[0])


def exclude_spans(spans: Sequence[AlignedSpan], excluded: Sequence[RefSpan]) -> tuple[AlignedSpan, ...]:
    """What of a match's aligned spans lies outside every excluded reference span.

    Parameters
    ----------
    spans : sequence of (query_start, query_end, ref_start, ref_end)
        The match's aligned spans.
    excluded : sequence of (ref_start, ref_end)
        The work's excluded reference spans (any order, may overlap).

    Returns
    -------
    tuple of (query_start, query_end, ref_start, ref_end)
        Each span cut where its reference side enters an excluded span; the upload side of
        each piece follows the span's linear alignment. Pieces shorter than
        :data:`MIN_PIECE_SECONDS` on the reference side are dropped; empty when the whole
        match lies in excluded spans.
    """
    holes = merge_spans(excluded)
    kept: list[AlignedSpan] = []
    for q0, q1, r0, r1 in spans:
        if r1 <= r0:  # no reference extent to cut: kept unless it sits inside a hole
            if not any(start <= r0 <= end for start, end in holes):
                kept.append((q0, q1, r0, r1))
            continue
        scale = (q1 - q0) / (r1 - r0)
        cursor = r0
        pieces: list[RefSpan] = []
        for start, end in holes:
            if end <= cursor or start >= r1:
                continue
            if start > cursor:
                pieces.append((cursor, min(start, r1)))
            cursor = max(cursor, end)
            if cursor >= r1:
                break
        if cursor < r1:
            pieces.append((cursor, r1))
        kept.extend((round(q0 + (a - r0) * scale, 3), round(q0 + (b - r0) * scale, 3), round(a, 3), round(b, 3))
                    for a, b in pieces if b - a >= MIN_PIECE_SECONDS)
    return tuple(kept)

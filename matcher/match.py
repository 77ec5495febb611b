"""Run the tiers over a query: every catalogue recording it uses, where, how, and how surely.

The tiers run in order (by default pair, triplet, peaks, melody); each skips the
tracks an earlier one found, so a track is reported once, by the most precise tier
that explains it: an exact copy is not also reported as a derivative, a derivative of
the recording not also as a cover. But a *tentative* match — the pair tier's
``mixed`` or over less than half the query: a few ratio-1 fragments are also what a
time-stretched recording leaves to the pair tier — does not make later tiers skip the
track, and a later tier's explanation of it that covers clearly more of the upload is
reported instead. An upload longer than ``upload_window_seconds`` is
searched one window at a time — memory then follows the window, not the upload — and
each track's matches of consecutive windows are joined into one match whose spans
continue across the boundaries.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields, replace
from typing import Iterable, Iterator

import numpy as np

from refrain.fingerprint import Fingerprint, FingerprintParams
from refrain.fingerprint.hashes import Triplets
from refrain.fingerprint.pipeline import peaks_between
from refrain.matcher.landmarks import copy_or_excerpt
from refrain.matcher.melody import MelodyTier
from refrain.matcher.pair import PairTier
from refrain.matcher.peaks import PeaksTier
from refrain.matcher.proposals import DOUBLE_TIER, QUAD_TIER, ProposalParams, propose, propose_copies
from refrain.matcher.triplet import TripletTier
from refrain.matcher.types import Catalogue, Match, Query, Span, Tier, covered_seconds

__all__ = ["MatchParams", "match", "match_windows", "upload_windows", "upload_window_frames"]


def _default_tiers() -> tuple[Tier, ...]:
    return (PairTier(), TripletTier(), PeaksTier(), MelodyTier())


@dataclass(frozen=True)
class MatchParams:
    """Which tiers run, in which order, and how a whole upload's matches are put together.

    Attributes
    ----------
    tiers : tuple of Tier
        The tiers, each with its own parameters, in the order they run (default pair,
        triplet, peaks, melody): ``pair`` finds copies, excerpts and copies under other
        audio; ``triplet`` speed-changed, pitch-shifted and time-stretched derivatives;
        ``peaks`` recordings mixed 6-12 dB under other audio, verified peak by peak;
        ``melody`` covers (the composition re-performed). :meth:`without` and
        :meth:`tier` select and read them by name.
    upload_window_seconds : float
        Uploads longer than this (default 60 s; rounded up to whole melody chroma frames,
        :func:`upload_window_frames`) are searched one window of this length
        at a time and each track's matches of consecutive windows joined: the tiers'
        memory and time then grow with the upload's length, not faster (a 20-minute
        upload searched whole peaked at 4.2 GB), and a tempo-changed work's time line
        is fitted per window: a whole 3-minute 1.1x speed-up fitted at once came out at
        1.08 in fragments over 45 % of it, in 60 s windows at 1.100 over 99 %.
    join_gap_seconds : float
        Spans of consecutive windows are one span when the later starts at most this
        long after the earlier ends (default 2.5, a landmark tier's ``max_gap_seconds``)
        and both lie on one time line within ``join_line_seconds`` (default 0.2).
    excerpt_fraction : float
        A copy whose spans cover less than this fraction of the reference recording is
        an ``excerpt`` (default 0.8).
    tentative_tiers, settled_coverage : tuple of str, float
        Tiers whose ``mixed`` matches, and matches over less than ``settled_coverage`` of
        the query (a window), do not make later tiers skip the track (default the pair
        tier, 0.5). A time-stretched recording keeps ratio-1 fragments the pair tier finds
        (as ``mixed`` or an ``excerpt``); were the track then skipped, the triplet tier
        could not report the stretch that explains the whole upload.
    better_coverage : float
        A later tier's explanation of a track replaces an earlier one's when its spans
        cover more upload time by at least this fraction of the upload (default 0.1);
        otherwise the earlier, more precise tier reports it.
    unexplained_tiers, explained_coverage : tuple of str, float
        Tiers that search only what the earlier tiers left unexplained: they skip a window
        whose settled matches (see ``tentative_tiers``) cover at least
        ``explained_coverage`` of it (default none, 0.9; ``("peaks", "melody")`` cuts a
        whole upload of catalogue derivatives by about a third). Off by default: a cluster's
        shard can only see its own tracks' settled matches, so with several shards it would
        skip other windows than one index and answer differently; and the works it no longer
        reports are ones an analyst may want to see. Why it holds the hit rates where
        it is on: audio that is a catalogue recording or its derivative throughout is that recording: a cover
        the melody tier finds in it relates two catalogue works (a re-orchestration of a
        theme), not the upload to a third; and a second recording mixed under it still
        leaves the pair tier's ``mixed`` match (of 48 real 60 s mash-ups, a catalogue
        track at 1.0 or 0.9x over another 6 or 12 dB under it, the one under was reported
        as ``mixed`` 43 times with or without the peaks tier, whose explanation had
        replaced the pair tier's in 6 of them). On a 10-minute upload of time-stretched catalogue tracks the two tiers
        took 0.8 of 3.3 CPU s.
    proposals : ProposalParams or None
        How each window's candidate derivatives (and, with ``copies``, copies) are
        proposed by the catalogue's specific quad and double codes
        (:mod:`matcher.proposals`) once the catalogue holds ``min_catalogue_tracks``;
        the triplet tier (and the pair and peaks tiers) then search only those, so that
        work follows the candidates, not the catalogue. None, a smaller catalogue, or
        one without those codes (an index from before them) is searched exhaustively
        (None on a catalogue that large reads its track-major triplet file whole,
        :class:`index.store.IndexWriteParams`: about a second per query at 640 hours).
    """

    tiers: tuple[Tier, ...] = field(default_factory=_default_tiers)
    upload_window_seconds: float = 60.0
    join_gap_seconds: float = 2.5
    join_line_seconds: float = 0.2
    excerpt_fraction: float = 0.8
    tentative_tiers: tuple[str, ...] = ("pair",)
    settled_coverage: float = 0.5
    better_coverage: float = 0.1
    unexplained_tiers: tuple[str, ...] = ()
    explained_coverage: float = 0.9
    proposals: ProposalParams | None = field(default_factory=ProposalParams)

    def tier(self, name: str) -> Tier:
        """The tier called ``name``; KeyError if it does not run."""
        for tier in self.tiers:
            if tier.name == name:
                return tier
        raise KeyError(name)

    def without(self, *names: str) -> "MatchParams":
        """The same parameters with the named tiers left out."""
        return replace(self, tiers=tuple(t for t in self.tiers if t.name not in names))

    def only(self, *names: str) -> "MatchParams":
        """The same parameters with only the named tiers, in their order here."""
        return replace(self, tiers=tuple(t for t in self.tiers if t.name in names))

    def with_tier(self, tier: Tier) -> "MatchParams":
        """The same parameters with ``tier`` in place of the tier of its name."""
        return replace(self, tiers=tuple(tier if t.name == tier.name else t for t in self.tiers))


def match(fp: Fingerprint, catalogue: Catalogue, params: MatchParams,
          timings: dict[str, float] | None = None) -> list[Match]:
    """Find every catalogue recording the query copies or derives from.

    Parameters
    ----------
    fp : Fingerprint
        The query (an upload of any length).
    catalogue : Catalogue
        The index's tiers, its fingerprint settings and the reportable tracks.
    params : MatchParams
    timings : dict of str to float, optional
        If given, the seconds each tier took are added to it under the tier's name (a
        tier that skipped an explained window took the time of that decision).

    Returns
    -------
    list of Match
        Best first (by confidence, then score); empty when nothing passes a tier's threshold.
    """
    return match_windows(upload_windows(fp, catalogue.fingerprint_params, params.upload_window_seconds),
                         catalogue, params, timings)


def upload_window_frames(fingerprint_params: FingerprintParams, window_seconds: float) -> int:
    """Frames in one upload window: ``window_seconds`` rounded up to whole melody chroma frames.

    A window's chroma frames are counted from its own start; on a whole number of them
    every window's lie on the whole upload's grid (a 60 s window of 1875 frames would
    start each later window 3/8 of a chroma frame off it, and joined windows' melody
    would drift from the upload's time by 0.375 frames per window).
    """
    per_chroma = 1 if fingerprint_params.melody is None else fingerprint_params.melody.frames_per_chroma
    frames = max(1, int(round(window_seconds / fingerprint_params.frame_seconds)))
    return per_chroma * math.ceil(frames / per_chroma)


def upload_windows(fp: Fingerprint, fingerprint_params: FingerprintParams,
                   window_seconds: float) -> Iterator[Fingerprint]:
    """A whole upload's fingerprint as the windows :func:`match_windows` searches.

    An upload no longer than one window is one window; a longer one is cut into
    windows of ``window_seconds`` (whole frames) as :func:`fingerprint.fingerprint_windows`
    cuts a signal arriving in blocks (:func:`upload_window_frames` each).
    """
    n_frames = int(np.ceil(fp.duration / fingerprint_params.frame_seconds))
    window = upload_window_frames(fingerprint_params, window_seconds)
    if n_frames <= window:
        yield fp
        return
    for first in range(0, n_frames, window):
        yield _excerpt(fp, first, first + window, fingerprint_params)


def match_windows(windows: Iterable[Fingerprint], catalogue: Catalogue, params: MatchParams,
                  timings: dict[str, float] | None = None) -> list[Match]:
    """:func:`match` of an upload given as consecutive windows, each searched as it comes.

    Window ``k`` starts ``k`` windows of :func:`upload_window_frames` into the upload;
    only the matches found so far are kept between windows, so a caller that
    fingerprints the upload window by window (:func:`fingerprint.fingerprint_windows`)
    holds one window's fingerprint at a time.
    """
    frame_seconds = catalogue.fingerprint_params.frame_seconds
    window_frames = upload_window_frames(catalogue.fingerprint_params, params.upload_window_seconds)
    found: dict[str, dict[int, list[Match]]] = {tier.name: {} for tier in params.tiers}
    upload_seconds = 0.0
    for number, part in enumerate(windows):
        query, in_window = Query(part, candidates=_candidates(part, catalogue, params)), set[int]()
        settled: list[Match] = []
        upload_seconds += part.duration
        for tier in params.tiers:
            started = time.perf_counter()
            explained = tier.name in params.unexplained_tiers and _explained(settled, part.duration, params)
            for m in [] if explained else tier.find(query, catalogue, skip=in_window):
                if _settles(m, tier, params, part.duration):
                    in_window.add(m.track_id)
                    settled.append(m)
                found[tier.name].setdefault(m.track_id, []).append(
                    _moved(m, number * window_frames * frame_seconds))
            if timings is not None:
                timings[tier.name] = timings.get(tier.name, 0.0) + time.perf_counter() - started

    explanations: dict[int, list[Match]] = {}
    for tier in params.tiers:
        for track_id, windows_found in found[tier.name].items():
            explanations.setdefault(track_id, []).append(
                _join(windows_found, tier, params, catalogue, upload_seconds))
    matches = [_decide_excerpt(_best_explanation(explained, params, upload_seconds), catalogue, params)
               for explained in explanations.values()]
    matches.sort(key=lambda m: (-m.confidence, -m.score, m.track_id))
    return matches


def _candidates(fp: Fingerprint, catalogue: Catalogue, params: MatchParams) -> dict[str, np.ndarray]:
    """The window's proposed, reportable tracks per bounded tier (sorted); a tier not named searches every track.

    The triplet tier searches the proposed derivatives; the pair tier, when
    ``ProposalParams.copies``, the union of proposed copies and derivatives.
    """
    proposals = params.proposals
    size = catalogue.size
    if proposals is None or (size is not None and size < proposals.min_catalogue_tracks):
        return {}

    def reportable(proposed: np.ndarray) -> np.ndarray:
        return np.sort(proposed[catalogue.reportable_among(proposed)]).astype(np.int64)

    found = {}
    derivatives = next((tier for tier in params.tiers if isinstance(tier, TripletTier)), None)
    if QUAD_TIER in catalogue.tiers and derivatives is not None:
        found[TripletTier.name] = reportable(propose(fp, catalogue.tiers[QUAD_TIER], catalogue.fingerprint_params,
                                                     proposals, derivatives))
    if proposals.copies and DOUBLE_TIER in catalogue.tiers and TripletTier.name in found:
        copies = propose_copies(fp, catalogue.tiers[DOUBLE_TIER], catalogue.fingerprint_params, proposals)
        found[PairTier.name] = np.union1d(reportable(copies), found[TripletTier.name])
    return found


def _excerpt(fp: Fingerprint, first: int, end: int, fingerprint_params: FingerprintParams) -> Fingerprint:
    """The query's landmarks, peaks and melody of frames ``first..end``, as a query of its own.

    Frames are counted from ``first``. Pair landmarks keep their whole hash (a target
    may lie past ``end``); the triplet tier builds its triplets from the peaks, so
    triplets across the boundary are lost. The query's own tempo-1 triplets (used to
    tell a derivative ``mixed`` under other audio) are left out.
    """
    melody = None
    if fp.melody is not None and fingerprint_params.melody is not None:
        per_chroma = fingerprint_params.melody.frames_per_chroma
        melody = fp.melody[first // per_chroma:end // per_chroma]
    inside = (fp.frames >= first) & (fp.frames < end)
    no_triplets = Triplets(**{f.name: getattr(fp.triplets, f.name)[:0] for f in fields(Triplets)})
    frame_seconds = fingerprint_params.frame_seconds
    return Fingerprint(hashes=fp.hashes[inside], frames=fp.frames[inside] - first,
                       duration=min(fp.duration - first * frame_seconds, (end - first) * frame_seconds),
                       peaks=peaks_between(fp.peaks, first, end), triplets=no_triplets, melody=melody,
                       dense_peaks=None if fp.dense_peaks is None else peaks_between(fp.dense_peaks, first, end))


def _moved(match: Match, seconds: float) -> Match:
    """A match found in a window starting ``seconds`` into the upload, in upload time."""
    if seconds == 0:
        return match
    return replace(match, query_start=round(match.query_start + seconds, 3),
                   query_end=round(match.query_end + seconds, 3),
                   offset=round(match.offset - match.time_ratio * seconds, 3),
                   spans=[replace(s, query_start=round(s.query_start + seconds, 3),
                                  query_end=round(s.query_end + seconds, 3)) for s in match.spans],
                   points=match.points + np.array([seconds, 0.0]))


def _join(windows: list[Match], tier: Tier, params: MatchParams, catalogue: Catalogue,
          upload_seconds: float) -> Match:
    """One match of a track from its matches in consecutive windows of one tier.

    The best window's match gives the geometry (offset, tempo ratio, pitch) and kind.
    Spans of windows side by side that continue one time line become one span. The
    score adds up over the spans where the tier's evidence adds up (landmarks:
    ``tier.additive``), else it is the best window's; the confidence is then the
    tier's for that score over the whole upload.
    """
    if len(windows) == 1:
        return windows[0]
    best = max(windows, key=lambda m: m.score)
    spans: list[Span] = []
    for span in sorted((s for m in windows for s in m.spans), key=lambda s: s.query_start):
        if spans and _continues(spans[-1], span, best.time_ratio, params):
            last = spans[-1]
            spans[-1] = replace(last, query_end=span.query_end, ref_end=span.ref_end,
                                score=round(last.score + span.score if tier.additive
                                            else max(last.score, span.score), 2),
                                aligned=last.aligned + span.aligned)
        else:
            spans.append(span)
    score = round(sum(s.score for s in spans), 2) if tier.additive else best.score
    strongest = max(spans, key=lambda s: s.score)
    return replace(best, score=score, aligned=sum(s.aligned for s in spans), spans=spans,
                   **tier.calibration.rate(score, upload_seconds, catalogue.size),
                   query_start=strongest.query_start, query_end=strongest.query_end,
                   ref_start=strongest.ref_start, ref_end=strongest.ref_end,
                   points=np.concatenate([m.points for m in windows]))


def _continues(earlier: Span, later: Span, time_ratio: float, params: MatchParams) -> bool:
    """Whether ``later`` carries on ``earlier`` across a window boundary, on one time line."""
    gap = later.query_start - earlier.query_end
    drift = (later.ref_start - earlier.ref_end) - time_ratio * gap
    return -params.join_gap_seconds <= gap <= params.join_gap_seconds and abs(drift) <= params.join_line_seconds


def _best_explanation(explained: list[Match], params: MatchParams, upload_seconds: float) -> Match:
    """Of one track's matches by tiers in order, the first unless a later one covers clearly more."""
    best = explained[0]
    for later in explained[1:]:
        if _covered_seconds(later, upload_seconds) - _covered_seconds(best, upload_seconds) \
                >= params.better_coverage * upload_seconds:
            best = later
    return best


def _settles(m: Match, tier: Tier, params: MatchParams, window_seconds: float) -> bool:
    """Whether ``m`` makes later tiers skip its track in this window.

    A tentative tier's match does only when it is not ``mixed`` and covers at least
    ``settled_coverage`` of the window.
    """
    return tier.name not in params.tentative_tiers or (
        m.kind != "mixed" and _covered_seconds(m, window_seconds) >= params.settled_coverage * window_seconds)


def _explained(settled: list[Match], window_seconds: float, params: MatchParams) -> bool:
    """Whether the settled matches of a window cover at least ``explained_coverage`` of it."""
    covered = covered_seconds(((s.query_start, s.query_end) for m in settled for s in m.spans), window_seconds)
    return covered >= params.explained_coverage * window_seconds


def _covered_seconds(m: Match, upload_seconds: float) -> float:
    """Upload time the match's spans cover, overlaps counted once."""
    return covered_seconds(((s.query_start, s.query_end) for s in m.spans), upload_seconds)


def _decide_excerpt(m: Match, catalogue: Catalogue, params: MatchParams) -> Match:
    """A ``copy`` whose spans cover less than ``excerpt_fraction`` of the recording is an ``excerpt``."""
    if m.kind != "copy" or catalogue.track_durations is None:
        return m
    return replace(m, kind=copy_or_excerpt(m.spans, params.excerpt_fraction,
                                           catalogue.track_durations.get(m.track_id)))

"""What every tier shares: the query, the catalogue, the match record, the confidence scale, the seam.

A tier is one way of finding catalogue recordings in a query (exact-copy landmarks,
tempo/pitch-invariant landmarks, peaks under other audio, melody). Each is a frozen
dataclass of its own parameters that implements :class:`Tier`; :func:`matcher.match`
runs them in order, each skipping the tracks an earlier one found.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import AbstractSet, Any, ClassVar, Collection, Iterable, Iterator, Mapping, Protocol, TypedDict

import numpy as np

from refrain.fingerprint import Fingerprint, FingerprintParams

__all__ = ["KINDS", "Span", "Match", "Alignment", "Calibration", "ShortQueryTail", "Query", "TrackDurations",
           "held_among", "Catalogue", "Tier", "match_field", "covered_seconds"]

#: How an upload uses a catalogue work; ``cover`` comes from the melody tier.
KINDS = ("copy", "excerpt", "speed_changed", "pitch_shifted", "time_stretched", "mixed", "cover")


def match_field(doc: str, **kwargs: Any) -> Any:
    """A dataclass field of the match record with its documentation, which the service's schema reads."""
    return field(metadata={"doc": doc}, **kwargs)


def covered_seconds(spans: Iterable[tuple[float, float]], duration: float) -> float:
    """Length of the union of ``(start, end)`` spans, clipped to ``[0, duration]`` (overlaps count once)."""
    clipped = sorted((max(0.0, start), min(duration, end)) for start, end in spans)
    total, reach = 0.0, 0.0
    for start, end in clipped:
        start = max(start, reach)
        if end > start:
            total += end - start
            reach = end
    return total


@dataclass(frozen=True)
class Span:
    """One stretch of the query aligned with one stretch of the reference (seconds)."""

    query_start: float = match_field("Where the stretch starts in the upload (s)")
    query_end: float = match_field("Where it ends in the upload (s)")
    ref_start: float = match_field("Where it starts in the catalogue recording (s)")
    ref_end: float = match_field("Where it ends in the catalogue recording (s)")
    score: float = match_field("The evidence of this stretch alone, on the scale of the match's score")
    aligned: int = match_field("Agreeing landmarks (peaks, chroma frames) in this stretch")

    def to_dict(self) -> dict:
        return asdict(self)


class Rating(TypedDict):
    """A match's :attr:`Match.chance` and :attr:`Match.confidence`."""

    chance: float
    confidence: float


@dataclass(frozen=True)
class ShortQueryTail:
    """The upper tail of unrelated scores of queries shorter than the calibration's reference.

    Fitted like the reference tail (see :class:`Calibration`) on ``queries`` unrelated
    queries of ``seconds`` each: above ``anchor_score`` the chance that one such query
    scores ``s`` or more is ``anchor_chance * exp(-(s - anchor_score) / scale)``.
    """

    seconds: float
    anchor_score: float
    anchor_chance: float
    scale: float
    queries: int


@dataclass(frozen=True)
class Calibration:
    """How often music that is *not* in the catalogue reaches a score, in one tier.

    Measured by ``bench/calibrate.py`` on a catalogue of ``catalogue_tracks`` real
    tracks: the best score each unrelated 10 s query of held-out real music reaches in
    the tier (threshold lowered) has an exponential upper tail. Above ``anchor_score``
    the chance that an unrelated 10 s query scores ``s`` or more is
    ``anchor_chance * exp(-(s - anchor_score) / scale)``. Chance agreement has more
    tries in a longer query and in a larger catalogue: a query of ``d`` seconds against
    ``n`` tracks multiplies that chance by ``max(1, d / 10) * n / catalogue_tracks``.

    A shorter query is not a fraction of a try: its scores are capped per second, so
    its tail is steeper and lower (a 3 s query's best unrelated pair score has a 90th
    percentile near 2.5, a 10 s query's 3.25). ``short_queries`` holds the tails
    measured at shorter lengths (3 and 5 s for the landmark tiers); a query between two
    measured lengths gets their log-chances interpolated linearly in its length, one
    shorter than all of them the shortest's (more audio can only help chance agreement).

    Attributes
    ----------
    anchor_score : float
        A score that ``anchor_chance`` of unrelated 10 s queries reach.
    anchor_chance : float
        That fraction (about 0.1: the 90th percentile).
    scale : float
        Mean excess over ``anchor_score`` of the unrelated scores above it.
    queries : int
        Unrelated queries the figures were measured on.
    catalogue_tracks : int
        Tracks in the catalogue they were measured against.
    short_queries : tuple of ShortQueryTail
        Tails of queries shorter than 10 s, shortest first (default none: a shorter query
        counts as one 10 s try).
    """

    anchor_score: float
    anchor_chance: float
    scale: float
    queries: int
    catalogue_tracks: int
    short_queries: tuple[ShortQueryTail, ...] = ()

    #: Query seconds the calibration's queries lasted.
    REFERENCE_SECONDS: ClassVar[float] = 10.0

    def _log_tail(self, duration: float, catalogue_tracks: int | None) -> tuple[float, float]:
        """``(a, b)`` with ``log(chance) = a - b * score`` over the tail, before the chance is capped at 1."""
        tails = [(t.seconds, t.anchor_score, t.anchor_chance, t.scale) for t in self.short_queries]
        tails.append((self.REFERENCE_SECONDS, self.anchor_score, self.anchor_chance, self.scale))
        lines = [(np.log(chance) + anchor / scale, 1.0 / scale) for _, anchor, chance, scale in tails]
        lengths = [seconds for seconds, *_ in tails]
        # Linear in the query's length between measured lengths, flat outside them.
        weight = float(np.interp(duration, lengths, np.arange(len(lengths))))
        below = min(int(weight), len(lines) - 1)
        above = min(below + 1, len(lines) - 1)
        fraction = weight - below
        a = (1 - fraction) * lines[below][0] + fraction * lines[above][0]
        b = (1 - fraction) * lines[below][1] + fraction * lines[above][1]
        tries = max(1.0, duration / self.REFERENCE_SECONDS)
        if catalogue_tracks is not None:
            tries *= catalogue_tracks / self.catalogue_tracks
        return float(a + np.log(tries)), float(b)

    def chance(self, score: float, duration: float, catalogue_tracks: int | None = None) -> float:
        """Estimated chance that unrelated music of ``duration`` seconds scores ``score`` or more.

        ``catalogue_tracks`` is the size of the catalogue searched (None: the calibration's).
        """
        a, b = self._log_tail(duration, catalogue_tracks)
        return float(min(1.0, np.exp(a - b * score)))

    def equally_rare(self, score: float, duration: float, reference_duration: float | None = None) -> float:
        """The score a ``duration``-second query needs to be as rare by chance as ``score`` is.

        ``score`` is judged over ``reference_duration`` seconds (None: the calibration's
        10 s), both against the calibration's catalogue. Computed on the uncapped tails,
        so that it is defined for any score (``-inf`` gives ``-inf``).
        """
        a_ref, b_ref = self._log_tail(self.REFERENCE_SECONDS if reference_duration is None
                                      else reference_duration, None)
        a, b = self._log_tail(duration, None)
        return (a - (a_ref - b_ref * score)) / b

    def rate(self, score: float, duration: float, catalogue_tracks: int | None = None) -> Rating:
        """``chance`` and ``confidence = 1 - chance`` of a match, as :class:`Match` fields.

        The same evidence gives the same confidence whichever tier found it.
        """
        chance = self.chance(score, duration, catalogue_tracks)
        return {"chance": float(f"{chance:.3g}"), "confidence": 1.0 - chance}


@dataclass(frozen=True)
class Match:
    """One catalogue recording found in a query: the library's match record.

    The CLI's JSON, the service's ``MatchedWorkOut`` schema and the README's field table
    are all built from these fields and their documentation.
    """

    track_id: int = match_field("The catalogue track (index id)")
    score: float = match_field(
        "The tier's evidence. pair/triplet: query landmarks agreeing with the track on one time line, "
        "each weighted by its rarity, at most max_score_per_second per second of query; a 10 s query needs "
        "the tier's min_score (pair 8, triplet 6), a shorter one as rare by chance less (pair 5.6 at 3 s), "
        "a longer one a little more (pair 8.8 at 60 s). peaks: how many background standard deviations the "
        "track's peaks meet the upload above chance (needs min_z, 5.5). melody: the chroma similarity "
        "0-1 (needs min_similarity, 0.57)")
    aligned: int = match_field(
        "Agreeing landmarks over all spans; peaks tier: catalogue peaks met; melody tier: aligned chroma "
        "frames")
    confidence: float = match_field(
        "1 - chance: the same value means the same evidence whichever tier found the match")
    chance: float = match_field(
        "Estimated chance that music not in the catalogue scores this high in this tier (calibrated on "
        "held-out real music, scaled by the query's length)")
    query_start: float = match_field("The strongest span's start in the upload (s)")
    query_end: float = match_field("The strongest span's end in the upload (s)")
    ref_start: float = match_field("The strongest span's start in the catalogue recording (s)")
    ref_end: float = match_field("The strongest span's end in the catalogue recording (s)")
    offset: float = match_field(
        "Reference time at upload time 0 on the strongest span's line: ref = offset + time_ratio * query")
    time_ratio: float = match_field("Upload tempo / reference tempo (1.25: played 25 % faster)")
    pitch_shift_semitones: float = match_field(
        "Upload pitch - reference pitch; melody tier: the key shift in whole semitones, -5..+6 (chroma "
        "cannot tell octaves)")
    kind: str = match_field(
        "copy, excerpt (part of the recording), mixed (under other material), speed_changed (tempo and "
        "pitch together), pitch_shifted, time_stretched, or cover (the composition re-performed)")
    spans: list[Span] = match_field("Every stretch of the upload that uses the recording, in upload order",
                                    default_factory=list)
    tier: str = match_field("The tier that found it: pair, triplet, peaks or melody", default="pair")
    points: np.ndarray = match_field(
        "(upload time, reference time) of every aligned landmark of the spans, for evidence plots",
        default_factory=lambda: np.zeros((0, 2)), repr=False, compare=False)


@dataclass
class Alignment:
    """Hits of one track that agree on one time line ``ref = offset + ratio * query`` (frames)."""

    track_id: int
    tier: str
    time_ratio: float
    offset_frames: float
    pitch_bins: float
    query_frames: np.ndarray
    ref_frames: np.ndarray
    query_ids: np.ndarray  # which query landmark each hit belongs to (distinctness, weights)
    weights: np.ndarray     # rarity weight of each hit


@dataclass
class Query:
    """A query fingerprint (one window of an upload) and what the tiers computed from it.

    ``shared`` holds results one tier computes and a later one reuses (the pair tier's
    votes propose the peaks tier's candidates), keyed by the computing tier's name, so
    that nothing is computed twice per window. ``candidates`` are, by tier
    name, the only tracks that tier searches (:mod:`matcher.proposals`; sorted); a tier
    not named searches every track.
    """

    fingerprint: Fingerprint
    shared: dict[str, Any] = field(default_factory=dict)
    candidates: Mapping[str, np.ndarray] = field(default_factory=dict)


class TrackDurations(Mapping[int, float]):
    """The reportable tracks and their durations, held as two sorted arrays.

    A query asks the catalogue about the tracks it found, never walks all of them. At a
    label's 3 million recordings, a set built from a dict of every track cost each
    query window ~75 ms (``docs/scale.md``, step 13); here a question costs a binary
    search, and the table 16 bytes a track instead of a dict entry and a float object.

    Parameters
    ----------
    track_ids : np.ndarray of int
        Distinct track ids, in any order.
    durations : np.ndarray of float
        Each track's duration in seconds.
    """

    __slots__ = ("_ids", "_durations")

    def __init__(self, track_ids: np.ndarray, durations: np.ndarray):
        ids, seconds = np.asarray(track_ids, np.int64), np.asarray(durations, np.float64)
        if ids.shape != seconds.shape or ids.ndim != 1:
            raise ValueError("track_ids and durations must be 1-D arrays of one length")
        order = np.argsort(ids, kind="stable")
        self._ids, self._durations = ids[order], seconds[order]
        if len(ids) and bool(np.any(self._ids[1:] == self._ids[:-1])):
            raise ValueError("track ids must be distinct")

    def _position(self, track_id: int) -> int:
        """Where ``track_id`` is in the table, or -1."""
        at = int(np.searchsorted(self._ids, track_id))
        return at if at < len(self._ids) and self._ids[at] == track_id else -1

    def __getitem__(self, track_id: int) -> float:
        at = self._position(track_id)
        if at < 0:
            raise KeyError(track_id)
        return float(self._durations[at])

    def __contains__(self, track_id: object) -> bool:
        return isinstance(track_id, (int, np.integer)) and self._position(int(track_id)) >= 0

    def __iter__(self) -> Iterator[int]:
        return iter(self._ids.tolist())

    def __len__(self) -> int:
        return len(self._ids)

    def holds(self, track_ids: np.ndarray) -> np.ndarray:
        """Whether each of ``track_ids`` is in the table (bool array of the same shape)."""
        track_ids = np.asarray(track_ids, np.int64)
        if not len(self._ids):
            return np.zeros(track_ids.shape, bool)
        at = np.minimum(np.searchsorted(self._ids, track_ids), len(self._ids) - 1)
        return self._ids[at] == track_ids


def held_among(tracks: Collection[int] | None, track_ids: np.ndarray) -> np.ndarray:
    """Whether each of ``track_ids`` is one of ``tracks`` (None: all are), as a bool array of their shape.

    The work follows ``track_ids``, not ``tracks``: a :class:`TrackDurations` table answers
    in one vectorised search, any other collection is asked about each distinct id once.
    """
    track_ids = np.asarray(track_ids, np.int64)
    if tracks is None:
        return np.ones(track_ids.shape, bool)
    if isinstance(tracks, TrackDurations):
        return tracks.holds(track_ids)
    distinct, where = np.unique(track_ids, return_inverse=True)
    return np.array([int(t) in tracks for t in distinct.tolist()], bool)[where].reshape(track_ids.shape)


@dataclass(frozen=True)
class Catalogue:
    """What the tiers search.

    Attributes
    ----------
    tiers : mapping of str to index structure
        The index's stored tiers by name (``IndexStore.tiers``): a tier reads the one of
        its own name, and finds nothing in an index without it.
    fingerprint_params : FingerprintParams
        The catalogue's fingerprint settings (frame duration, frequency resolution, zones).
    track_durations : mapping of int to float, or None
        Reportable tracks and their durations in seconds (to tell an excerpt from a
        whole copy); hits on other tracks are ignored. None: every track, no excerpts.
        A large catalogue's is a :class:`TrackDurations`: a query asks it about the tracks
        it found and never walks it.
    total_tracks : int or None
        Tracks of the whole catalogue when these tiers hold one shard of it (a cluster,
        :mod:`refrain.cluster`): chance agreement scales with the whole catalogue, so a
        shard rates its matches as the whole index would. None: ``track_durations``'s.
    """

    tiers: Mapping[str, Any]
    fingerprint_params: FingerprintParams
    track_durations: Mapping[int, float] | None = None
    total_tracks: int | None = None

    def reportable(self, track_id: int) -> bool:
        return self.track_durations is None or track_id in self.track_durations

    def reportable_among(self, track_ids: np.ndarray) -> np.ndarray:
        """:meth:`reportable` of each of ``track_ids`` (:func:`held_among`)."""
        return held_among(self.track_durations, track_ids)

    @property
    def size(self) -> int | None:
        """Tracks of the catalogue searched, the scale of chance agreement (None: not known)."""
        if self.total_tracks is not None:
            return self.total_tracks
        return None if self.track_durations is None else len(self.track_durations)


class Tier(Protocol):
    """One way of finding catalogue recordings in a query.

    An implementation is a frozen dataclass of its documented parameters (including its
    :class:`Calibration`) in a module of the tier's name, with:

    ``name``
        The tier's one name: its module, its store key in ``IndexStore.tiers`` and
        :attr:`Match.tier`.
    ``additive``
        Whether its scores add up over time (landmark evidence) or are a level (a
        standard score, a similarity): how a long upload's windows are joined.
    ``find(query, catalogue, skip)``
        The matches of tracks not in ``skip`` whose evidence passes the tier's threshold,
        with ``confidence`` and ``chance`` from :meth:`Calibration.confidence`.
    """

    name: ClassVar[str]
    additive: ClassVar[bool]

    @property
    def calibration(self) -> Calibration: ...

    def find(self, query: Query, catalogue: Catalogue, skip: AbstractSet[int]) -> list[Match]: ...

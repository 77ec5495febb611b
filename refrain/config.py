"""One settings object for Refrain, gathering each layer's documented defaults."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from refrain.fingerprint import FingerprintParams
from refrain.index.store import IndexWriteParams
from refrain.matcher import MatchParams

__all__ = ["Config"]


@dataclass(frozen=True)
class Config:
    """Everything tunable, with defaults that the benchmarks were run with.

    Attributes
    ----------
    fingerprint : FingerprintParams
        Used when a new index is created; an existing index keeps its own (queries
        are always fingerprinted with the index's settings).
    match : MatchParams
        The matcher's tiers (pair, triplet, peaks, melody), each with its parameters and
        calibration, and how a long upload is windowed.
    max_query_seconds : float
        Longest query accepted by ``match`` (default 1200 s = 20 min).
    max_track_seconds : float
        Longest catalogue recording accepted by ``ingest`` (default 6 h).
    commit_every : int
        During ingest, save the index after this many new tracks (default 50), so an
        interrupted run keeps what it finished.
    index_writes : IndexWriteParams
        When a commit appends delta segments instead of rewriting tier files, and when
        they are merged (see :class:`index.store.IndexWriteParams` and docs/index-format.md).
    """

    fingerprint: FingerprintParams = field(default_factory=FingerprintParams)
    match: MatchParams = field(default_factory=MatchParams)
    max_query_seconds: float = 1200.0
    max_track_seconds: float = 6 * 3600.0
    commit_every: int = 50
    index_writes: IndexWriteParams = field(default_factory=IndexWriteParams)

    def searching_covers(self, enabled: bool) -> "Config":
        """This configuration with the melody tier (covers) searched, or left out."""
        return self if enabled else replace(self, match=self.match.without("melody"))

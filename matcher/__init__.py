"""Align and score: which catalogue tracks a query copies, and where."""

from matcher.align import Match, MatchParams, match_fingerprint

__all__ = ["Match", "MatchParams", "match_fingerprint"]

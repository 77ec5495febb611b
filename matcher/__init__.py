"""Align and score: which catalogue tracks a query copies or derives from, where, and how."""

from matcher.align import match_fingerprint
from matcher.cover import CoverParams, match_covers
from matcher.types import KINDS, Match, MatchParams, Span

__all__ = ["KINDS", "CoverParams", "Match", "MatchParams", "Span", "match_covers", "match_fingerprint"]

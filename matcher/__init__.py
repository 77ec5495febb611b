"""Align and score: which catalogue tracks a query copies or derives from, where, and how."""

from refrain.matcher.align import match_fingerprint
from refrain.matcher.cover import CoverParams, match_covers
from refrain.matcher.types import KINDS, Match, MatchParams, Span

__all__ = ["KINDS", "CoverParams", "Match", "MatchParams", "Span", "match_covers", "match_fingerprint"]

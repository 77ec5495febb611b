"""Align and score: which catalogue recordings a query copies or derives from, where, and how.

:func:`match` runs the tiers of :class:`MatchParams` in order; each tier is a module
of its own that implements :class:`Tier` (``pair``, ``triplet``, ``peaks``, ``melody``).
"""

from refrain.matcher.match import MatchParams, match
from refrain.matcher.melody import MelodyTier
from refrain.matcher.pair import PairTier
from refrain.matcher.peaks import PeaksTier
from refrain.matcher.triplet import TripletTier
from refrain.matcher.types import KINDS, Calibration, Catalogue, Match, Query, Span, Tier, TrackDurations

__all__ = ["KINDS", "Calibration", "Catalogue", "Match", "MatchParams", "MelodyTier", "PairTier", "PeaksTier",
           "Query", "Span", "Tier", "TrackDurations", "TripletTier", "match"]

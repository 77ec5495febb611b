"""Disputes and ownership conflicts: what their outcomes do to the claims on an upload.

Pure functions over plain data, like :mod:`policy.rules`: the service stores the
disputes and conflicts and calls these to re-derive verdicts and royalty holds.

Vocabulary
----------
dispute
    An uploader's objection to the claims on one of their decisions, with a reason
    from :data:`DISPUTE_REASONS`. An analyst closes it with one of
    :data:`DISPUTE_OUTCOMES`: ``release`` (the claims are released), ``reinstate``
    (the claims stand: confirmed) or ``release_and_exclude`` (released, and the
    matched reference spans are excluded from future claims of those works).
conflict
    Two works claiming one recording (a work registered explicitly although its
    recording copies another). Until an admin resolves it, royalties of either work
    for the conflicting span are held; :data:`CONFLICT_RESOLUTIONS` says who keeps the
    span: ``work`` (the newer claim), ``claimed_work`` (the earlier one) or ``share``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from refrain.policy.exclusions import RefSpan, merge_spans, overlaps
from refrain.policy.rules import WorkDecision

__all__ = ["DISPUTE_REASONS", "DISPUTE_OUTCOMES", "CONFLICT_RESOLUTIONS", "ConflictClaim", "disputed_claims",
           "dispute_resolutions", "held_by", "conflict_loser"]

#: Why an uploader disputes a claim.
DISPUTE_REASONS = ("original_work", "licence_held", "public_domain", "fair_use", "not_this_work")
#: How an analyst closes a dispute.
DISPUTE_OUTCOMES = ("release", "reinstate", "release_and_exclude")
#: Who keeps a conflicting span once an admin resolves an ownership conflict.
CONFLICT_RESOLUTIONS = ("work", "claimed_work", "share")

#: A dispute outcome as the review resolution (:data:`policy.RESOLUTIONS`) of each disputed claim.
_RESOLUTION_OF_OUTCOME = {"release": "release", "reinstate": "confirm", "release_and_exclude": "release"}


def disputed_claims(works: Sequence[WorkDecision]) -> list[WorkDecision]:
    """The claims a dispute of this decision is about: every matched work whose claim is not released, and
    that does not simply allow or license the use (nothing to object to there)."""
    return [w for w in works if w.outcome in ("blocked", "review")]


def dispute_resolutions(works: Sequence[WorkDecision], outcome: str) -> dict[int, str]:
    """What a dispute's outcome does to each disputed claim: track id -> :data:`policy.RESOLUTIONS`.

    Raises
    ------
    ValueError
        For an outcome not in :data:`DISPUTE_OUTCOMES`.
    """
    if outcome not in DISPUTE_OUTCOMES:
        raise ValueError(f"unknown dispute outcome {outcome!r}; known: {', '.join(DISPUTE_OUTCOMES)}")
    return {w.track_id: _RESOLUTION_OF_OUTCOME[outcome] for w in disputed_claims(works)}


@dataclass(frozen=True)
class ConflictClaim:
    """One side of an open ownership conflict: the work and its reference spans in dispute.

    Attributes
    ----------
    conflict_id : int
    work_id : int
    ref_spans : tuple of (start, end)
        Seconds of ``work_id``'s own recording that the other work also claims.
    """

    conflict_id: int
    work_id: int
    ref_spans: tuple[RefSpan, ...]


def held_by(work_id: int | None, matched_ref_spans: Sequence[RefSpan],
            claims: Sequence[ConflictClaim]) -> list[int]:
    """The open conflicts that hold the royalties of one matched work: those claiming a span of its
    recording that the match overlaps. Sorted conflict ids (empty: nothing held)."""
    if work_id is None:
        return []
    return sorted({c.conflict_id for c in claims if c.work_id == work_id
                   and any(overlaps(m, r) for m in matched_ref_spans for r in c.ref_spans)})


def conflict_loser(resolution: str, work_id: int, claimed_work_id: int,
                   spans: Sequence[Mapping[str, float]]) -> tuple[int, list[RefSpan]] | None:
    """The work that gives the conflicting span up, and that span of its own recording (to exclude).

    Parameters
    ----------
    resolution : str
        :data:`CONFLICT_RESOLUTIONS`.
    work_id, claimed_work_id : int
        The newer claim and the earlier work its recording copies.
    spans : sequence of dict
        The conflict's matcher spans: ``query_*`` seconds of ``work_id``'s recording,
        ``ref_*`` of ``claimed_work_id``'s.

    Returns
    -------
    (int, list of (start, end)) or None
        None for ``share``: both claims keep the span.

    Raises
    ------
    ValueError
        For a resolution not in :data:`CONFLICT_RESOLUTIONS`.
    """
    if resolution not in CONFLICT_RESOLUTIONS:
        raise ValueError(f"unknown conflict resolution {resolution!r}; known: {', '.join(CONFLICT_RESOLUTIONS)}")
    if resolution == "share":
        return None
    if resolution == "work":  # the newer claim keeps it: the earlier work gives up its side
        return claimed_work_id, merge_spans([(s["ref_start"], s["ref_end"]) for s in spans])
    return work_id, merge_spans([(s["query_start"], s["query_end"]) for s in spans])

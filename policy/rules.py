"""The verdict and royalty rules, as pure functions over frozen dataclasses.

Vocabulary
----------
use
    What an upload does with a work: ``copy`` (the recording itself, whole or an
    excerpt), ``remix`` (the recording reused but changed: speed, pitch, tempo, mixed
    under other material) or ``cover`` (the composition re-performed). The matcher's
    ``kind`` maps onto a use through :data:`KIND_TO_USE`.
action
    What a work's :class:`Policy` says about one use: ``deny``, ``allow`` or
    ``licence_required``.
outcome
    What happened to one matched work in one upload: ``allowed``, ``licensed``,
    ``blocked`` or ``review``.
verdict
    One word for the whole upload (:data:`VERDICTS`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Mapping, Sequence

from refrain.matcher.types import covered_seconds
from refrain.policy.exclusions import AlignedSpan, RefSpan, exclude_spans

__all__ = ["USES", "ACTIONS", "BELOW_ACTIONS", "MatchCondition", "OUTCOMES", "VERDICTS", "KIND_TO_USE", "Policy",
           "DEFAULT_POLICY",
           "Licence", "MatchedWork", "WorkDecision", "Decision", "use_of_kind", "licence_problem",
           "covered_seconds", "decide", "resolve", "RESOLUTIONS", "DEFAULT_REVIEW_CONFIDENCE", "without_exclusions"]

USES = ("copy", "remix", "cover")
ACTIONS = ("deny", "allow", "licence_required")
OUTCOMES = ("allowed", "licensed", "blocked", "review", "released")
VERDICTS = ("clear", "allowed", "licensed", "blocked_copy", "blocked_unlicensed_derivative", "review")
#: What an analyst's review does to one matched work: ``confirm`` its claim (the use stays
#: blocked), ``allow`` the use (royalties owed as the policy says) or ``release`` the claim
#: (the work no longer counts against the upload, nothing is owed).
RESOLUTIONS = ("confirm", "allow", "release")
#: What a :class:`MatchCondition` does with a match under its minimum: ``allow`` it or send it to ``review``.
BELOW_ACTIONS = ("allow", "review")

#: Below this confidence a match that the policy would block goes to ``review`` instead: the
#: calibrated chance that music not in the catalogue matches this well (:class:`matcher.Calibration`,
#: for the upload's length and the catalogue's size) is above one in a million. At 150 catalogue
#: tracks that is a 10 s pair-tier score under 8.3, a peaks-tier score under 7.4, a 30 s cover
#: similarity under 0.76; every triplet-tier match is stronger.
DEFAULT_REVIEW_CONFIDENCE = 1.0 - 1e-6

#: Matcher kinds (:data:`matcher.KINDS`, plus the melody tier's future ``cover``) -> use.
KIND_TO_USE = {
    "copy": "copy",
    "excerpt": "copy",
    "speed_changed": "remix",
    "pitch_shifted": "remix",
    "time_stretched": "remix",
    "mixed": "remix",
    "cover": "cover",
}


_PLURAL = {"copy": "copies", "remix": "remixes", "cover": "covers"}


def use_of_kind(kind: str) -> str:
    """The use (``copy``/``remix``/``cover``) a matcher kind amounts to.

    Raises
    ------
    ValueError
        For a kind this module does not know: a new matcher kind must be mapped
        deliberately, never defaulted to a permissive use.
    """
    try:
        return KIND_TO_USE[kind]
    except KeyError:
        raise ValueError(f"unknown match kind {kind!r}; known: {', '.join(KIND_TO_USE)}") from None


@dataclass(frozen=True)
class MatchCondition:
    """A minimum a match of one use must reach before the policy's action applies to it.

    Attributes
    ----------
    use : str
        :data:`USES`.
    min_seconds : float
        Seconds of the upload the work must cover (union of its spans; default 0).
    min_share : float
        Share (0–1) of the upload the work must cover (default 0).
    below : str
        :data:`BELOW_ACTIONS`: what a match under either minimum gets instead of a block
        (``allow``: allowed, nothing owed; ``review``: an analyst decides).
    """

    use: str
    min_seconds: float = 0.0
    min_share: float = 0.0
    below: str = "allow"

    def __post_init__(self):
        if self.use not in USES:
            raise ValueError(f"unknown use {self.use!r}; known: {', '.join(USES)}")
        if not (self.min_seconds >= 0.0) or math.isinf(self.min_seconds):
            raise ValueError(f"min_seconds must be a finite number of seconds >= 0, not {self.min_seconds}")
        if not (0.0 <= self.min_share <= 1.0):
            raise ValueError(f"min_share must be between 0 and 1, not {self.min_share}")
        if self.below not in BELOW_ACTIONS:
            raise ValueError(f"below must be one of {', '.join(BELOW_ACTIONS)}, not {self.below!r}")


@dataclass(frozen=True)
class Policy:
    """A work's AI-use policy: one action per use, and the royalty share owed on permitted uses.

    Attributes
    ----------
    copy, remix, cover : str
        One of :data:`ACTIONS` each (default ``deny``).
    royalty_share : float
        Fraction (0–1) of the revenue attributed to this work that is owed to its
        rights holder when a use is allowed or licensed (default 0).
    conditions : tuple of MatchCondition
        At most one per use: a match of that use under the minimum is not blocked but
        allowed or reviewed, as the condition says (default none).
    """

    copy: str = "deny"
    remix: str = "deny"
    cover: str = "deny"
    royalty_share: float = 0.0
    conditions: tuple[MatchCondition, ...] = ()

    def __post_init__(self):
        for use in USES:
            if getattr(self, use) not in ACTIONS:
                raise ValueError(f"policy for {_PLURAL[use]} must be one of {', '.join(ACTIONS)}, "
                                 f"not {getattr(self, use)!r}")
        if not (0.0 <= self.royalty_share <= 1.0) or math.isnan(self.royalty_share):
            raise ValueError(f"royalty_share must be between 0 and 1, not {self.royalty_share}")
        uses = [c.use for c in self.conditions]
        if len(set(uses)) != len(uses):
            raise ValueError("at most one condition per use")

    def condition(self, use: str) -> MatchCondition | None:
        """The condition set for one use, if any."""
        return next((c for c in self.conditions if c.use == use), None)

    def action(self, use: str) -> str:
        """The action for one use (``copy``, ``remix`` or ``cover``)."""
        if use not in USES:
            raise ValueError(f"unknown use {use!r}; known: {', '.join(USES)}")
        return getattr(self, use)


#: Applied to every work that has no policy of its own: nothing is permitted.
DEFAULT_POLICY = Policy()


@dataclass(frozen=True)
class Licence:
    """The right, granted to one licensee, to publish some uses of one work until a date.

    Attributes
    ----------
    licence_id : str
    work_id : int
    licensee : str
        Who may rely on it: the uploader id an upload must carry.
    uses : frozenset of str
        Uses granted (subset of :data:`USES`).
    granted_at : datetime
        Timezone-aware.
    valid_until : datetime or None
        Timezone-aware end of validity; None for no end.
    revoked_at : datetime or None
        When it was revoked; None while in force.
    """

    licence_id: str
    work_id: int
    licensee: str
    uses: frozenset[str]
    granted_at: datetime
    valid_until: datetime | None = None
    revoked_at: datetime | None = None


def licence_problem(licence: Licence, work_id: int | None, use: str, uploader_id: str | None,
                    at: datetime) -> str | None:
    """Why ``licence`` does not cover this use of this work by this uploader at ``at``; None if it does."""
    if work_id is None or licence.work_id != work_id:
        return f"licence {licence.licence_id} is for work {licence.work_id}, not this one"
    if use not in licence.uses:
        return f"licence {licence.licence_id} does not grant {_PLURAL[use]}"
    if licence.revoked_at is not None and licence.revoked_at <= at:
        return f"licence {licence.licence_id} was revoked on {licence.revoked_at.isoformat()}"
    if licence.valid_until is not None and at > licence.valid_until:
        return f"licence {licence.licence_id} expired on {licence.valid_until.isoformat()}"
    if uploader_id != licence.licensee:
        # A licence id alone is not a credential: it is only valid in its licensee's hands.
        return (f"licence {licence.licence_id} is granted to another licensee than "
                f"{'this uploader' if uploader_id else 'an anonymous upload'}")
    return None


@dataclass(frozen=True)
class MatchedWork:
    """One work found in an upload, as the policy needs it.

    Attributes
    ----------
    work_id : int or None
        None for a catalogue track no work is registered for (e.g. ingested with the
        CLI); it gets the default policy and no licence can cover it.
    track_id : int
    kind : str
        The matcher's kind (:data:`KIND_TO_USE` keys).
    confidence : float
        The matcher's confidence: 1 - the chance that unrelated music matches this well.
    spans : tuple of (float, float)
        The (start, end) seconds of the upload where the work sounds.
    aligned_spans : tuple of (query_start, query_end, ref_start, ref_end)
        The same stretches with their reference side, which reference exclusions are
        checked against (empty: the match cannot be checked against exclusions).
    """

    work_id: int | None
    track_id: int
    kind: str
    confidence: float
    spans: tuple[tuple[float, float], ...] = ()
    aligned_spans: tuple[AlignedSpan, ...] = ()


@dataclass(frozen=True)
class WorkDecision:
    """The policy applied to one matched work and what it leads to.

    Attributes
    ----------
    work_id, track_id : int
    use : str
        :data:`USES`.
    action : str
        The policy's action for that use.
    outcome : str
        :data:`OUTCOMES`.
    licence_id : str or None
        The declared licence that covers the use (outcome ``licensed``).
    reason : str
        One sentence an uploader or analyst can read.
    covered_seconds : float
        Seconds of the upload where the work sounds (union of its spans).
    duration_share : float
        ``covered_seconds / upload duration``, 0–1.
    royalty_share : float
        The policy's royalty share.
    share_owed : float
        ``duration_share * royalty_share`` for an ``allowed`` or ``licensed``
        outcome, else 0 (a blocked upload is not published; a reviewed one owes
        nothing until decided).
    excluded_seconds : float
        Seconds of the upload the matcher aligned with the work but that lie in the work's
        excluded reference spans: not counted in ``covered_seconds`` (default 0).
    """

    work_id: int | None
    track_id: int
    use: str
    action: str
    outcome: str
    licence_id: str | None
    reason: str
    covered_seconds: float
    duration_share: float
    royalty_share: float
    share_owed: float
    excluded_seconds: float = 0.0


@dataclass(frozen=True)
class Decision:
    """The verdict on one upload, with one :class:`WorkDecision` per matched work."""

    verdict: str
    reason: str
    works: tuple[WorkDecision, ...] = field(default_factory=tuple)
    total_share_owed: float = 0.0


def _decide_work(match: MatchedWork, policy: Policy, licences: Sequence[Licence],
                 uploader_id: str | None, at: datetime, review_confidence: float,
                 upload_seconds: float) -> WorkDecision:
    use = use_of_kind(match.kind)
    action = policy.action(use)
    weak = match.confidence < review_confidence
    licence_id = None
    if action == "allow":
        outcome, reason = "allowed", f"the policy allows {_PLURAL[use]}"
    elif action == "licence_required":
        problems = []
        for licence in licences:
            problem = licence_problem(licence, match.work_id, use, uploader_id, at)
            if problem is None:
                licence_id = licence.licence_id
                break
            if licence.work_id == match.work_id:  # other works' licences say nothing here
                problems.append(problem)
        if licence_id is not None:
            outcome, reason = "licensed", f"licence {licence_id} covers this {use}"
        else:
            outcome = "review" if weak else "blocked"
            reason = (f"the policy requires a licence for {_PLURAL[use]}: "
                      + ("; ".join(problems) if problems else "no licence for this work was declared"))
    else:
        outcome, reason = ("review" if weak else "blocked"), f"the policy denies {_PLURAL[use]}"
    if outcome == "review":
        reason += (f"; the evidence is weak (a chance of {1.0 - match.confidence:.1e} that unrelated music "
                   f"matches this well, above {1.0 - review_confidence:.1e}): an analyst must decide")
    seconds = covered_seconds(match.spans, upload_seconds)
    duration_share = seconds / upload_seconds if upload_seconds > 0 else 0.0
    condition = policy.condition(use)
    under_minimum = condition is not None and (seconds < condition.min_seconds
                                               or duration_share < condition.min_share)
    if condition is not None and under_minimum and outcome in ("blocked", "review"):
        outcome = "allowed" if condition.below == "allow" else "review"
        reason = (f"the match ({seconds:.1f} s, {duration_share:.0%} of the upload) is under the policy's minimum "
                  f"for {_PLURAL[use]} ({condition.min_seconds:g} s and {condition.min_share:.0%}): "
                  + ("allowed, nothing owed" if outcome == "allowed" else "an analyst must decide"))
    owed = duration_share * policy.royalty_share if outcome in ("allowed", "licensed") and not under_minimum else 0.0
    return WorkDecision(work_id=match.work_id, track_id=match.track_id, use=use, action=action,
                        outcome=outcome, licence_id=licence_id, reason=reason,
                        covered_seconds=round(seconds, 3), duration_share=round(duration_share, 4),
                        royalty_share=policy.royalty_share, share_owed=round(owed, 4))


def decide(matches: Sequence[MatchedWork], policies: Mapping[int, Policy],
           licences: Sequence[Licence], uploader_id: str | None, upload_seconds: float,
           at: datetime, review_confidence: float,
           default_policy: Policy = DEFAULT_POLICY,
           exclusions: Mapping[int, Sequence[RefSpan]] | None = None) -> Decision:
    """The verdict on one upload.

    Parameters
    ----------
    matches : sequence of MatchedWork
        Every work the matcher found in the upload.
    policies : mapping of work id to Policy
        Works without an entry get ``default_policy``.
    licences : sequence of Licence
        The licences the uploader declared (any number, any works).
    uploader_id : str or None
        Who uploads; a licence only covers uploads of its licensee.
    upload_seconds : float
        Duration of the analysed upload.
    at : datetime
        When the decision is made (licence validity is judged at this instant).
    review_confidence : float
        A match below this confidence that would be blocked goes to ``review``.
    default_policy : Policy
    exclusions : mapping of work id to sequence of (ref_start, ref_end), optional
        Each work's excluded reference spans: the parts of a match aligned inside them are
        dropped before anything is counted (:func:`policy.exclusions.exclude_spans`), and a
        match with nothing left is no claim: it is left out of the decision.

    Returns
    -------
    Decision
        ``verdict`` is, in this order of precedence: ``clear`` when nothing matched;
        ``blocked_copy`` when a confidently matched copy is not permitted;
        ``blocked_unlicensed_derivative`` when a confidently matched remix or cover is
        not permitted; ``review`` when only weakly matched uses stand in the way;
        ``licensed`` when every use is allowed or licensed and a licence was needed;
        ``allowed`` when the policies allow every use.
    """
    works = []
    for match in matches:
        excluded = (exclusions or {}).get(match.work_id, ()) if match.work_id is not None else ()
        counted, excluded_seconds = without_exclusions(match, excluded, upload_seconds)
        if counted is None:
            continue
        decided = _decide_work(counted, policies.get(match.work_id, default_policy) if match.work_id is not None
                               else default_policy, licences, uploader_id, at, review_confidence, upload_seconds)
        if excluded_seconds > 0:
            decided = replace(decided, excluded_seconds=round(excluded_seconds, 3),
                              reason=decided.reason + f"; {excluded_seconds:.1f} s of the match lie in the work's "
                                                      "excluded reference spans and were not counted")
        works.append(decided)
    return _verdict(tuple(works))


def without_exclusions(match: MatchedWork, excluded: Sequence[RefSpan],
                       upload_seconds: float) -> tuple[MatchedWork | None, float]:
    """A match with the parts aligned inside excluded reference spans dropped.

    Returns
    -------
    match : MatchedWork or None
        The match with its remaining spans; None when nothing is left (no claim).
    excluded_seconds : float
        Upload seconds the exclusions took away (union of spans before minus after).
    """
    if not excluded or not match.aligned_spans:
        return match, 0.0
    kept = exclude_spans(match.aligned_spans, excluded)
    if not kept:
        return None, covered_seconds(match.spans, upload_seconds)
    spans = tuple((q0, q1) for q0, q1, _, _ in kept)
    removed = covered_seconds(match.spans, upload_seconds) - covered_seconds(spans, upload_seconds)
    return replace(match, spans=spans, aligned_spans=kept), max(0.0, removed)


def _verdict(works: tuple[WorkDecision, ...]) -> Decision:
    """The upload's verdict from its works' outcomes (precedence documented in :func:`decide`)."""
    total_owed = round(min(1.0, sum(w.share_owed for w in works)), 4)
    claimed = [w for w in works if w.outcome != "released"]
    outcomes = {w.outcome for w in claimed}
    blocked = [w for w in claimed if w.outcome == "blocked"]
    if not works:
        verdict, reason = "clear", "no protected work was found"
    elif not claimed:
        verdict, reason = "allowed", "every claim on the upload was released"
    elif any(w.use == "copy" for w in blocked):
        verdict, reason = "blocked_copy", "the upload copies a protected recording without permission"
    elif blocked:
        verdict, reason = ("blocked_unlicensed_derivative",
                           "the upload derives from a protected work without a valid licence")
    elif "review" in outcomes:
        verdict, reason = "review", "a match is too weak to decide on: an analyst must review it"
    elif "licensed" in outcomes:
        verdict, reason = "licensed", "valid licences cover every use that needs one"
    else:
        verdict, reason = "allowed", "the policies allow every use found"
    return Decision(verdict=verdict, reason=reason, works=works, total_share_owed=total_owed)


def resolve(works: Sequence[WorkDecision], resolutions: Mapping[int, str], note: str) -> Decision:
    """The verdict on an upload once an analyst has resolved some of its matched works.

    Parameters
    ----------
    works : sequence of WorkDecision
        The upload's works as last decided.
    resolutions : mapping of track id to str
        One of :data:`RESOLUTIONS` per resolved work; works not named keep their outcome.
    note : str
        The analyst's reason, written into each resolved work's ``reason``.

    Returns
    -------
    Decision
        The verdict re-derived as :func:`decide` derives it; a released work is ignored by
        it (every claim released: ``allowed``). An allowed work owes
        ``duration_share * royalty_share``; a confirmed or released one owes nothing.

    Raises
    ------
    ValueError
        For a resolution not in :data:`RESOLUTIONS`, or a track id not among ``works``.
    """
    known = {w.track_id for w in works}
    for track_id, resolution in resolutions.items():
        if resolution not in RESOLUTIONS:
            raise ValueError(f"unknown resolution {resolution!r}; known: {', '.join(RESOLUTIONS)}")
        if track_id not in known:
            raise ValueError(f"track {track_id} was not matched in this upload")
    outcome_of = {"confirm": "blocked", "allow": "allowed", "release": "released"}
    resolved = []
    for work in works:
        chosen = resolutions.get(work.track_id)
        if chosen is None:
            resolved.append(work)
            continue
        outcome = outcome_of[chosen]
        owed = work.duration_share * work.royalty_share if outcome == "allowed" else 0.0
        resolved.append(replace(work, outcome=outcome, share_owed=round(owed, 4),
                                reason=f"an analyst chose to {chosen} this claim: {note}"))
    return _verdict(tuple(resolved))

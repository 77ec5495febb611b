"""Lineage: licensed derivatives published as works, and what an upload owes along their ancestry.

A *derivative* is a published upload (``POST /v1/matches/{id}/publish``): a work of its
own, with one :class:`LineageLink` to each work it was matched to. An upload that
matches a derivative is attributed to the derivative *and*, through the links, to each
of its ancestors; every ancestor's policy must permit the use, and the royalty the
derivative's match earns is split along the lineage.

Use along a path
    An upload's use of an ancestor is the most transforming use along the path from the
    upload to it (``copy`` < ``remix`` < ``cover``): a copy of a remix of A is a remix of
    A; a remix of a cover of A is a cover of A (:func:`kind_along`).

Royalty split (never more than the derivative's own share)
    The matched derivative D earns ``S = duration_share × royalty_share(D)`` of the
    upload's revenue, as any matched work does (:func:`policy.decide`). Each work ``n`` on
    the lineage passes part of what reaches it to each parent ``p``:
    ``r(p) × ℓ(n→p) / max(1, Σ_q r(q) × ℓ(n→q))`` of it, where ``r(p)`` is the parent's
    royalty share and ``ℓ(n→p)`` the share of ``n``'s duration where ``p`` sounds (the
    link's evidence); ``n`` keeps the rest, ``1 − min(1, Σ_q r(q) × ℓ(n→q))``. So every
    ancestor's share is part of ``S``, the shares of D and its ancestors add up to ``S``
    (to at most ``S`` when an ancestor's claim owes nothing, e.g. under review), and the
    upload's total stays at most 1 as before. A work matched directly *and* an ancestor
    of another matched work is paid through the lineage only (its direct share is 0:
    the same seconds would otherwise be paid twice); its policy still judges the use.

Exclusions and conflict holds along a path
    A claim through the lineage is cut by the ancestor's excluded reference spans exactly
    as a direct claim is (:func:`policy.decide`): the upload's aligned spans against the
    matched derivative are carried onto the ancestor's recording through each link's
    spans (:func:`through_link`), the parts inside the ancestor's exclusions are dropped,
    and a claim with nothing left is no claim. What the ancestor is owed shrinks with the
    seconds it keeps (its part of the split times kept / aligned seconds). The carried
    spans are kept with the claim, so that an open ownership conflict on the ancestor's
    span holds its royalties like a direct claim's. A derivative whose own claim is
    entirely excluded has no claim for its ancestors to come through.

Derivative policies
    A derivative's policy may not be more permissive than its parents allow: for each
    use, its action must be at least as strict (``allow`` < ``licence_required`` <
    ``deny``) as every parent's action for the use along the link, and its royalty share
    at least every parent's (:func:`derivative_floor`); the floor is its default.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Mapping, Sequence

from refrain.policy.exclusions import AlignedSpan, RefSpan
from refrain.policy.rules import (DEFAULT_POLICY, USES, Decision, Licence, MatchedWork, Policy, WorkDecision,
                                  _decide_work, _verdict, covered_seconds, use_of_kind, without_exclusions)

__all__ = ["LineageLink", "LineageClaim", "LineageDecision", "kind_along", "use_along", "ancestry",
           "derivative_floor", "derivative_policy_problem", "lineage_shares", "through_link", "decide_lineage"]

_USE_RANK = {"copy": 0, "remix": 1, "cover": 2}
_ACTION_RANK = {"allow": 0, "licence_required": 1, "deny": 2}
#: A matcher kind standing for each use, for a use not tied to one match (a derivative's own policy).
_KIND_OF_USE = {"copy": "copy", "remix": "mixed", "cover": "cover"}


@dataclass(frozen=True)
class LineageLink:
    """A derivative's link to one parent work, as recorded when it was published.

    Attributes
    ----------
    work_id : int
        The derivative.
    parent_work_id : int
    kind : str
        The matcher's kind of the derivative against the parent (e.g. ``speed_changed``).
    share : float
        Share (0–1) of the derivative's duration where the parent sounds.
    spans : tuple of (derivative_start, derivative_end, parent_start, parent_end)
        Where the parent sounds in the derivative (empty: unknown; the parent's exclusions
        then cannot be checked).
    """

    work_id: int
    parent_work_id: int
    kind: str
    share: float
    spans: tuple[AlignedSpan, ...] = ()

    def __post_init__(self):
        use_of_kind(self.kind)  # an unknown kind is refused, never read as a permissive use
        if not 0.0 <= self.share <= 1.0:
            raise ValueError(f"a link's share must be between 0 and 1, not {self.share}")


@dataclass(frozen=True)
class LineageClaim:
    """An ancestor of a matched derivative, attributed the upload through the lineage.

    Attributes
    ----------
    via_track_id, via_work_id : int
        The matched derivative the claim comes through.
    path : tuple of int
        Work ids from the matched derivative to this ancestor, both included.
    kind : str
        The upload's kind relative to the ancestor (:func:`kind_along`).
    decision : WorkDecision
        The ancestor's policy applied to that use, with the upload's declared licences.
        ``covered_seconds`` and ``duration_share`` are those of the derivative's match;
        ``share_owed`` is the ancestor's part of the split (module docstring).
    spans : tuple of (query_start, query_end, ref_start, ref_end)
        The upload's seconds against the ancestor's recording, carried through the links
        (:func:`through_link`) and cut by its exclusions (empty: the links hold no spans).
    """

    via_track_id: int
    via_work_id: int
    path: tuple[int, ...]
    kind: str
    decision: WorkDecision
    spans: tuple[AlignedSpan, ...] = ()


@dataclass(frozen=True)
class LineageDecision:
    """The verdict over the matched works and the lineage claims, and the claims themselves."""

    decision: Decision
    claims: tuple[LineageClaim, ...] = ()


def kind_along(kinds: Sequence[str]) -> str:
    """The kind, among those along a path, whose use transforms most (the first such).

    Raises
    ------
    ValueError
        For an empty path or an unknown kind.
    """
    if not kinds:
        raise ValueError("a path has at least one kind")
    return max(kinds, key=lambda kind: _USE_RANK[use_of_kind(kind)])


def use_along(kinds: Sequence[str]) -> str:
    """The use an upload makes of a work at the end of a path of these kinds (:func:`kind_along`)."""
    return use_of_kind(kind_along(kinds))


def ancestry(work_id: int, links: Mapping[int, Sequence[LineageLink]]) -> list[tuple[LineageLink, ...]]:
    """Every path of links from ``work_id`` up to an ancestor, shortest first.

    Parameters
    ----------
    work_id : int
    links : mapping of work id to its links to its parents

    Returns
    -------
    list of tuple of LineageLink
        One path per (ancestor, route): an ancestor reached by two routes appears twice.
        A link back to a work already on the path is not followed (a cycle cannot be
        published, but a stored graph is never trusted to be acyclic).
    """
    paths: list[tuple[LineageLink, ...]] = []
    frontier: list[tuple[LineageLink, ...]] = [(link,) for link in links.get(work_id, ())
                                                if link.parent_work_id != work_id]
    while frontier:
        paths.extend(frontier)
        following: list[tuple[LineageLink, ...]] = []
        for path in frontier:
            seen = {work_id, *(link.parent_work_id for link in path)}
            following.extend(path + (link,) for link in links.get(path[-1].parent_work_id, ())
                             if link.parent_work_id not in seen)
        frontier = following
    return paths


def derivative_floor(parents: Sequence[tuple[str, Policy]]) -> Policy:
    """The most permissive policy a derivative may have, and its default.

    Parameters
    ----------
    parents : sequence of (str, Policy)
        Each parent's link kind (the derivative's matcher kind against it) and policy in force.

    Returns
    -------
    Policy
        Per use, the strictest of the parents' actions for that use along the link;
        the largest of their royalty shares; no conditions.
    """
    if not parents:
        return DEFAULT_POLICY
    def strictest(use: str) -> str:
        return max((policy.action(use_along([_KIND_OF_USE[use], kind])) for kind, policy in parents),
                   key=_ACTION_RANK.__getitem__)

    return Policy(copy=strictest("copy"), remix=strictest("remix"), cover=strictest("cover"),
                  royalty_share=max(policy.royalty_share for _, policy in parents))


def derivative_policy_problem(policy: Policy, floor: Policy) -> str | None:
    """Why ``policy`` is more permissive than a derivative may be (``floor``: :func:`derivative_floor`); None if not."""
    problems = [f"{use} must be {floor.action(use)} or stricter (a parent's policy), not {policy.action(use)}"
                for use in USES if _ACTION_RANK[policy.action(use)] < _ACTION_RANK[floor.action(use)]]
    if policy.royalty_share < floor.royalty_share:
        problems.append(f"royalty_share must be at least {floor.royalty_share:g} (a parent's), "
                        f"not {policy.royalty_share:g}")
    return "; ".join(problems) or None


def lineage_shares(amount: float, work_id: int, links: Mapping[int, Sequence[LineageLink]],
                   royalty_shares: Mapping[int, float]) -> tuple[float, dict[tuple[int, ...], float]]:
    """Split what a matched derivative earns along its lineage (the rule of the module docstring).

    Parameters
    ----------
    amount : float
        What the derivative's match earns, ``S``.
    work_id : int
        The derivative.
    links : mapping of work id to its links to its parents
    royalty_shares : mapping of work id to float
        Each ancestor's royalty share (absent: 0).

    Returns
    -------
    kept : float
        What the derivative keeps.
    shares : dict of path to float
        What each ancestor keeps, per path of work ids from the derivative to it.
        ``kept + sum(shares.values()) == amount`` (to rounding).
    """
    weights: dict[int, float] = {}

    def passed(node: int) -> float:
        """What ``node``'s parents ask for in all: Σ_q r(q) × ℓ(node→q)."""
        if node not in weights:
            weights[node] = sum(royalty_shares.get(link.parent_work_id, 0.0) * link.share
                                for link in links.get(node, ()))
        return weights[node]

    shares: dict[tuple[int, ...], float] = {}
    reaching: dict[tuple[LineageLink, ...], float] = {(): amount}
    for path in ancestry(work_id, links):  # shortest first: a path's prefix is already reached
        link = path[-1]
        reaching[path] = (reaching[path[:-1]] * royalty_shares.get(link.parent_work_id, 0.0) * link.share
                          / max(1.0, passed(link.work_id)))
        shares[(work_id, *(step.parent_work_id for step in path))] = \
            reaching[path] * (1.0 - min(1.0, passed(link.parent_work_id)))
    return amount * (1.0 - min(1.0, passed(work_id))), shares


def through_link(spans: Sequence[AlignedSpan], link_spans: Sequence[AlignedSpan]) -> tuple[AlignedSpan, ...]:
    """Carry an upload's aligned spans against a derivative onto a parent's recording.

    Parameters
    ----------
    spans : sequence of (query_start, query_end, ref_start, ref_end)
        The upload's seconds against the derivative's.
    link_spans : sequence of (derivative_start, derivative_end, parent_start, parent_end)
        The link's evidence: where the parent sounds in the derivative.

    Returns
    -------
    tuple of (query_start, query_end, parent_start, parent_end)
        One piece per overlap of a span's derivative side with a link span's, each side
        mapped through its own span's linear alignment; empty where they do not overlap.
    """
    carried = []
    for q0, q1, r0, r1 in spans:
        for d0, d1, p0, p1 in link_spans:
            start, end = max(r0, d0), min(r1, d1)
            if end <= start or r1 <= r0 or d1 <= d0:
                continue
            to_query = (q1 - q0) / (r1 - r0)
            to_parent = (p1 - p0) / (d1 - d0)
            carried.append((round(q0 + (start - r0) * to_query, 3), round(q0 + (end - r0) * to_query, 3),
                            round(p0 + (start - d0) * to_parent, 3), round(p0 + (end - d0) * to_parent, 3)))
    return tuple(carried)


def decide_lineage(matches: Sequence[MatchedWork], decision: Decision, links: Mapping[int, Sequence[LineageLink]],
                   ancestor_tracks: Mapping[int, int], policies: Mapping[int, Policy], licences: Sequence[Licence],
                   uploader_id: str | None, upload_seconds: float, at: datetime, review_confidence: float,
                   default_policy: Policy = DEFAULT_POLICY,
                   exclusions: Mapping[int, Sequence[RefSpan]] | None = None) -> LineageDecision:
    """The verdict on an upload once its matched derivatives' ancestors are attributed it too.

    Parameters
    ----------
    matches : sequence of MatchedWork
        What the matcher found (as given to :func:`policy.decide`).
    decision : Decision
        :func:`policy.decide` over ``matches``: one WorkDecision per match that is a claim, same
        order (a match left with nothing by its work's exclusions has none).
    links : mapping of work id to its links to its parents
        At least every link reachable from the matched works.
    ancestor_tracks : mapping of work id to track id
        The index track of every work on those links.
    policies : mapping of work id to Policy
        The policy in force for each ancestor (absent: ``default_policy``).
    licences, uploader_id, upload_seconds, at, review_confidence, default_policy
        As for :func:`policy.decide`; an ancestor's licence must be declared with the upload.
    exclusions : mapping of work id to sequence of (ref_start, ref_end), optional
        Each work's excluded reference spans, as for :func:`policy.decide`; an ancestor's cut
        its claim (module docstring).

    Returns
    -------
    LineageDecision
        ``decision.works``: the matched works (same order), each keeping its part of the
        split; ``claims``: one per (matched derivative, ancestor path); the verdict is
        derived as :func:`policy.decide` derives it, over both.
    """
    matched_ids = {m.work_id for m in matches if m.work_id is not None}
    # decide() leaves out a match its exclusions emptied: the works that are claims, each with its match.
    claimed = [(next(m for m in matches if m.track_id == direct.track_id), direct) for direct in decision.works]
    claims: list[LineageClaim] = []
    kept_by_track: dict[int, float] = {}
    subsumed: dict[int, int] = {}  # a matched work that is an ancestor of another -> that other
    for match, direct in claimed:
        if match.work_id is None or not links.get(match.work_id):
            continue
        royalty_shares = {link.parent_work_id: policies.get(link.parent_work_id, default_policy).royalty_share
                          for paths in ancestry(match.work_id, links) for link in paths}
        kept, shares = lineage_shares(direct.share_owed, match.work_id, links, royalty_shares)
        kept_by_track[match.track_id] = kept
        for path in ancestry(match.work_id, links):
            ancestor = path[-1].parent_work_id
            if ancestor in matched_ids:
                subsumed.setdefault(ancestor, match.work_id)
            kind = kind_along([match.kind, *(link.kind for link in path)])
            work_ids = (match.work_id, *(link.parent_work_id for link in path))
            carried = tuple(match.aligned_spans)
            for link in path:
                carried = through_link(carried, link.spans) if link.spans else ()
            as_ancestor = replace(match, work_id=ancestor, track_id=ancestor_tracks[ancestor], kind=kind,
                                  aligned_spans=carried)
            # Cut by the ancestor's exclusions, it is judged on the upload's seconds where the ancestor sounds (as
            # a direct claim is); uncut, on the derivative's match as before.
            where_it_sounds = replace(as_ancestor, spans=tuple((q0, q1) for q0, q1, _, _ in carried))
            counted, excluded_seconds = without_exclusions(where_it_sounds, (exclusions or {}).get(ancestor, ()),
                                                           upload_seconds)
            if counted is None:  # everything the ancestor would claim lies in its excluded spans: no claim
                continue
            if excluded_seconds == 0:
                counted = as_ancestor
            judged = _decide_work(counted, policies.get(ancestor, default_policy), licences, uploader_id, at,
                                  review_confidence, upload_seconds)
            owed = shares[work_ids] if judged.outcome in ("allowed", "licensed") and judged.share_owed > 0 else 0.0
            reason = judged.reason
            if excluded_seconds > 0:
                aligned = covered_seconds(where_it_sounds.spans, upload_seconds)
                owed *= covered_seconds(counted.spans, upload_seconds) / aligned if aligned > 0 else 0.0
                judged = replace(judged, excluded_seconds=round(excluded_seconds, 3))
                reason += (f"; {excluded_seconds:.1f} s of the match lie in the work's excluded reference spans "
                           "and were not counted")
            route = " → ".join(f"work {w}" for w in work_ids)
            claims.append(LineageClaim(
                via_track_id=match.track_id, via_work_id=match.work_id, path=work_ids, kind=kind,
                decision=replace(judged, share_owed=round(owed, 4),
                                 reason=f"an ancestor of matched work {match.work_id} ({route}): {reason}"),
                spans=counted.aligned_spans))
    works = []
    for match, direct in claimed:
        if match.work_id in subsumed:
            direct = replace(direct, share_owed=0.0,
                             reason=f"{direct.reason}; owed through the lineage of work {subsumed[match.work_id]}")
        elif match.track_id in kept_by_track:
            direct = replace(direct, share_owed=round(kept_by_track[match.track_id], 4))
        works.append(direct)
    judged_all = _verdict(tuple(works) + tuple(c.decision for c in claims))
    return LineageDecision(replace(judged_all, works=tuple(works)), tuple(claims))

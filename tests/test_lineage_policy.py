"""Lineage rules of :mod:`policy.lineage` on plain data: uses along a path, derivative policies, the royalty split."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from refrain.policy import Licence, MatchedWork, Policy, decide
from refrain.policy.lineage import (LineageLink, ancestry, decide_lineage, derivative_floor,
                                    derivative_policy_problem, kind_along, lineage_shares, through_link, use_along)

NOW = datetime(2026, 6, 1, tzinfo=timezone.utc)
REVIEW = 0.6
A, B1, C2 = 1, 2, 3  # the original, a published remix of it, a remix of that remix
TRACKS = {A: 101, B1: 102, C2: 103}
#: B1 is a sped-up remix of A sounding over 90 % of B1; C2 a pitch-shifted remix of B1 over all of C2.
LINKS = {B1: [LineageLink(B1, A, "speed_changed", 0.9)], C2: [LineageLink(C2, B1, "pitch_shifted", 1.0)]}
POLICIES = {A: Policy(copy="deny", remix="licence_required", cover="deny", royalty_share=0.4),
            B1: Policy(copy="licence_required", remix="licence_required", cover="deny", royalty_share=0.5)}


def licence(work_id: int, uses: tuple[str, ...], licensee: str = "third") -> Licence:
    return Licence(licence_id=f"lic_{work_id}", work_id=work_id, licensee=licensee, uses=frozenset(uses),
                   granted_at=NOW - timedelta(days=1))


def matched(work_id: int, kind: str, spans=((0.0, 10.0),), confidence: float = 0.99) -> MatchedWork:
    return MatchedWork(work_id=work_id, track_id=TRACKS[work_id], kind=kind, confidence=confidence, spans=spans)


def judge(matches, licences=(), seconds=10.0, policies=POLICIES):
    direct = decide(matches, policies, list(licences), "third", seconds, NOW, REVIEW)
    return decide_lineage(matches, direct, LINKS, TRACKS, policies, list(licences), "third", seconds, NOW, REVIEW)


def test_the_use_along_a_path_is_its_most_transforming_one():
    assert kind_along(["excerpt", "speed_changed"]) == "speed_changed"
    assert use_along(["copy", "copy"]) == "copy"
    assert use_along(["copy", "pitch_shifted"]) == "remix"
    assert use_along(["speed_changed", "cover", "mixed"]) == "cover"
    with pytest.raises(ValueError, match="unknown match kind"):
        use_along(["copy", "karaoke"])
    with pytest.raises(ValueError):
        LineageLink(B1, A, "karaoke", 1.0)
    with pytest.raises(ValueError, match="share"):
        LineageLink(B1, A, "mixed", 1.5)


def test_ancestry_follows_every_route_once_and_never_loops():
    assert [[link.parent_work_id for link in path] for path in ancestry(C2, LINKS)] == [[B1], [B1, A]]
    assert ancestry(A, LINKS) == []
    looped = {**LINKS, A: [LineageLink(A, C2, "mixed", 1.0)]}  # a corrupt graph
    assert [[link.parent_work_id for link in path] for path in ancestry(C2, looped)] == [[B1], [B1, A]]
    diamond = {4: [LineageLink(4, B1, "mixed", 0.5), LineageLink(4, A, "mixed", 0.5)], **LINKS}
    assert sorted(tuple(link.parent_work_id for link in p) for p in ancestry(4, diamond)) == [(A,), (B1,), (B1, A)]


def test_a_derivative_may_not_be_more_permissive_than_its_parents_allow():
    floor = derivative_floor([("speed_changed", POLICIES[A])])
    # Any use of a remix of A is at least a remix of A: licence required, 40 % at least; covers stay denied.
    assert floor == Policy(copy="licence_required", remix="licence_required", cover="deny", royalty_share=0.4)
    assert derivative_policy_problem(floor, floor) is None
    assert derivative_policy_problem(POLICIES[B1], floor) is None  # stricter royalty: fine
    problem = derivative_policy_problem(Policy(copy="allow", remix="licence_required", cover="allow",
                                               royalty_share=0.1), floor)
    assert "copy must be licence_required or stricter" in problem and "cover must be deny" in problem
    assert "royalty_share must be at least 0.4" in problem
    strict = Policy(copy="deny", remix="deny", cover="deny", royalty_share=0.0)
    assert derivative_floor([("speed_changed", POLICIES[A]), ("excerpt", strict)]) \
        == Policy(copy="deny", remix="deny", cover="deny", royalty_share=0.4)


def test_the_split_passes_each_parent_its_share_of_what_reaches_it_and_never_more_than_the_whole():
    shares = {A: 0.4, B1: 0.5}
    kept, passed = lineage_shares(0.5, C2, LINKS, shares)
    # C2 passes 0.5 × 1.0 of 0.5 to B1 (0.25), B1 passes 0.4 × 0.9 of that to A (0.09).
    assert passed[(C2, B1)] == pytest.approx(0.25 * (1 - 0.36))
    assert passed[(C2, B1, A)] == pytest.approx(0.09)
    assert kept == pytest.approx(0.25)
    assert kept + sum(passed.values()) == pytest.approx(0.5)
    # Parents asking more than the whole between them share it in proportion; the child keeps nothing.
    greedy = {9: [LineageLink(9, A, "mixed", 1.0), LineageLink(9, B1, "mixed", 1.0)]}
    kept, passed = lineage_shares(0.3, 9, greedy, {A: 0.9, B1: 0.6})
    assert kept == 0.0 and passed == pytest.approx({(9, A): 0.18, (9, B1): 0.12})


def test_a_copy_of_a_derivative_needs_every_ancestors_licence_and_pays_them_as_documented():
    copy = [matched(B1, "excerpt")]
    assert judge(copy).decision.verdict == "blocked_copy"
    only_b = judge(copy, [licence(B1, ("copy",))])
    assert only_b.decision.verdict == "blocked_unlicensed_derivative"
    (claim,) = only_b.claims
    assert (claim.via_work_id, claim.path, claim.kind, claim.decision.use) == (B1, (B1, A), "speed_changed", "remix")
    assert claim.decision.outcome == "blocked" and claim.decision.share_owed == 0.0
    both = judge(copy, [licence(B1, ("copy",)), licence(A, ("remix",))])
    assert both.decision.verdict == "licensed"
    (work,), (claim,) = both.decision.works, both.claims
    # The upload is B1 for its whole 10 s: S = 1.0 × 0.5; A gets 0.4 × 0.9 of it, B1 keeps the rest.
    assert claim.decision.outcome == "licensed" and claim.decision.licence_id == "lic_1"
    assert claim.decision.share_owed == pytest.approx(0.5 * 0.36)
    assert work.share_owed == pytest.approx(0.5 * 0.64)
    assert both.decision.total_share_owed == pytest.approx(0.5)
    assert "ancestor of matched work 2" in claim.decision.reason


def test_an_ancestor_matched_directly_is_judged_but_paid_through_the_lineage_only():
    licences = [licence(B1, ("copy",)), licence(A, ("remix",))]
    alone = judge([matched(B1, "excerpt")], licences)
    both = judge([matched(B1, "excerpt"), matched(A, "speed_changed")], licences)
    assert both.decision.verdict == "licensed"
    assert both.decision.works[1].share_owed == 0.0 and "through the lineage of work 2" in both.decision.works[1].reason
    assert both.decision.total_share_owed == alone.decision.total_share_owed
    denied = {**POLICIES, A: Policy(copy="deny", remix="deny", cover="deny", royalty_share=0.4)}
    assert judge([matched(B1, "excerpt")], licences, policies=denied).decision.verdict \
        == "blocked_unlicensed_derivative"


def test_a_remix_of_a_remix_is_attributed_to_every_ancestor():
    remix = [matched(C2, "time_stretched", spans=((0.0, 5.0),))]
    policies = {**POLICIES, C2: Policy(copy="deny", remix="allow", cover="deny", royalty_share=0.6)}
    judged = judge(remix, [licence(B1, ("remix",)), licence(A, ("remix",))], policies=policies)
    assert judged.decision.verdict == "licensed"
    assert [c.path for c in judged.claims] == [(C2, B1), (C2, B1, A)]
    s = 0.5 * 0.6  # half the upload, C2's 60 %
    assert judged.claims[0].decision.share_owed == pytest.approx(s * 0.5 * (1 - 0.4 * 0.9), abs=1e-4)
    assert judged.claims[1].decision.share_owed == pytest.approx(s * 0.5 * 0.4 * 0.9, abs=1e-4)
    assert judged.decision.total_share_owed == pytest.approx(s, abs=1e-4)
    weak = judge([matched(C2, "time_stretched", confidence=0.3)], [licence(B1, ("remix",))], policies=policies)
    assert weak.decision.verdict == "review"  # A's claim lacks a licence, on weak evidence


def test_through_link_carries_an_uploads_seconds_onto_the_parents_recording():
    # Upload 0-10 s is B1's 20-30 s; B1's 25-40 s is A's 10-26.5 s (×1.1).
    carried = through_link([(0.0, 10.0, 20.0, 30.0)], [(25.0, 40.0, 10.0, 26.5)])
    assert carried == ((5.0, 10.0, 10.0, 15.5),)
    assert through_link([(0.0, 10.0, 20.0, 30.0)], [(31.0, 40.0, 0.0, 9.0)]) == ()


def test_an_ancestors_exclusions_cut_its_lineage_claim_like_a_direct_one():
    links = {B1: [LineageLink(B1, A, "speed_changed", 0.9, ((0.0, 20.0, 0.0, 22.0),))]}
    copy = MatchedWork(work_id=B1, track_id=TRACKS[B1], kind="excerpt", confidence=0.99, spans=((0.0, 10.0),),
                       aligned_spans=((0.0, 10.0, 0.0, 10.0),))
    licences = [licence(B1, ("copy",)), licence(A, ("remix",))]

    def claims(exclusions):
        direct = decide([copy], POLICIES, licences, "third", 10.0, NOW, REVIEW, exclusions=exclusions)
        return decide_lineage([copy], direct, links, TRACKS, POLICIES, licences, "third", 10.0, NOW, REVIEW,
                              exclusions=exclusions)

    whole = claims({})
    (claim,) = whole.claims
    assert claim.spans == ((0.0, 10.0, 0.0, 11.0),) and claim.decision.excluded_seconds == 0.0
    # A excludes its first 5.5 s: half the upload's seconds where A sounds are no longer A's evidence.
    (cut,) = claims({A: [(0.0, 5.5)]}).claims
    assert cut.spans == ((5.0, 10.0, 5.5, 11.0),) and cut.decision.excluded_seconds == pytest.approx(5.0)
    assert cut.decision.covered_seconds == pytest.approx(5.0)
    assert cut.decision.share_owed == pytest.approx(claim.decision.share_owed / 2, abs=1e-4)
    # Nothing left of A: no claim through B1, and B1's licence is enough.
    emptied = claims({A: [(0.0, 12.0)]})
    assert emptied.claims == () and emptied.decision.verdict == "licensed"
    # B1's own claim excluded entirely: no claim of B1, none of A through it (a derivative's claim carries them).
    assert claims({B1: [(0.0, 30.0)]}).decision.works == () and claims({B1: [(0.0, 30.0)]}).claims == ()

"""The verdict and royalty rules of :mod:`policy`, on plain data."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from refrain.policy import (DEFAULT_POLICY, KIND_TO_USE, Licence, MatchCondition, MatchedWork, Policy,
                            covered_seconds, decide,
                            resolve, use_of_kind)
from refrain.matcher import KINDS

NOW = datetime(2026, 6, 1, tzinfo=timezone.utc)
REVIEW = 0.6


def matched(work_id=1, kind="copy", confidence=0.9, spans=((0.0, 10.0),)):
    return MatchedWork(work_id=work_id, track_id=100 + (work_id or 0), kind=kind, confidence=confidence,
                       spans=spans)


def licence(work_id=1, uses=("remix",), licensee="ai", **times):
    return Licence(licence_id=f"lic_{work_id}", work_id=work_id, licensee=licensee, uses=frozenset(uses),
                   granted_at=NOW - timedelta(days=10), **times)


def verdict(matches, policies=None, licences=(), uploader="ai", seconds=20.0):
    return decide(matches, policies or {}, list(licences), uploader, seconds, NOW, REVIEW)


def test_every_matcher_kind_maps_to_a_use_and_unknown_kinds_are_refused():
    assert set(KINDS) <= set(KIND_TO_USE)
    assert {use_of_kind(k) for k in ("copy", "excerpt")} == {"copy"}
    assert {use_of_kind(k) for k in ("speed_changed", "pitch_shifted", "time_stretched", "mixed")} == {"remix"}
    assert use_of_kind("cover") == "cover"
    with pytest.raises(ValueError, match="unknown match kind"):
        use_of_kind("karaoke")


def test_nothing_matched_is_clear_and_the_default_policy_blocks():
    assert verdict([]).verdict == "clear"
    assert DEFAULT_POLICY == Policy("deny", "deny", "deny", 0.0)
    assert verdict([matched()]).verdict == "blocked_copy"
    assert verdict([matched(kind="mixed")]).verdict == "blocked_unlicensed_derivative"
    assert verdict([matched(work_id=None, kind="excerpt")]).verdict == "blocked_copy"  # unregistered track


def test_a_licence_turns_a_blocked_derivative_into_licensed_only_when_it_applies():
    policies = {1: Policy(remix="licence_required", royalty_share=0.5)}
    remix = [matched(kind="speed_changed")]
    assert verdict(remix, policies).verdict == "blocked_unlicensed_derivative"
    assert verdict(remix, policies, [licence()]).verdict == "licensed"
    for bad in (licence(licensee="other"), licence(uses=("cover",)), licence(work_id=2),
                licence(valid_until=NOW - timedelta(seconds=1)), licence(revoked_at=NOW - timedelta(days=1))):
        assert verdict(remix, policies, [bad]).verdict == "blocked_unlicensed_derivative", bad
    assert verdict(remix, policies, [licence(revoked_at=NOW + timedelta(days=1))]).verdict == "licensed"
    # A licence cannot override an explicit deny.
    assert verdict(remix, {1: Policy(remix="deny")}, [licence()]).verdict == "blocked_unlicensed_derivative"


def test_precedence_copy_block_then_derivative_block_then_review_then_licensed_then_allowed():
    policies = {1: Policy(copy="allow", remix="licence_required"), 2: Policy(copy="deny"),
                3: Policy(remix="deny")}
    allowed, licensed = matched(1), matched(1, kind="mixed")
    blocked_copy, blocked_remix = matched(2), matched(3, kind="pitch_shifted")
    weak = matched(2, confidence=0.55)
    lic = [licence(1)]
    assert verdict([allowed, licensed, blocked_remix, blocked_copy], policies, lic).verdict == "blocked_copy"
    assert verdict([allowed, blocked_remix, weak], policies, lic).verdict == "blocked_unlicensed_derivative"
    assert verdict([allowed, licensed, weak], policies, lic).verdict == "review"
    assert verdict([allowed, licensed], policies, lic).verdict == "licensed"
    assert verdict([allowed], policies).verdict == "allowed"
    # Weak evidence only matters where it would block: a weak allowed or licensed use is decided.
    assert verdict([matched(1, confidence=0.1)], policies).verdict == "allowed"


def test_royalties_are_the_covered_share_of_the_upload_times_the_policy_share():
    policies = {1: Policy(copy="allow", royalty_share=0.4), 2: Policy(copy="allow", royalty_share=1.0)}
    decision = verdict([matched(1, spans=((0.0, 6.0), (4.0, 10.0))), matched(2, spans=((12.0, 17.0),))],
                       policies, seconds=20.0)
    first, second = decision.works
    assert first.covered_seconds == 10.0 and first.duration_share == 0.5 and first.share_owed == 0.2
    assert second.duration_share == 0.25 and second.share_owed == 0.25
    assert decision.total_share_owed == 0.45
    blocked = verdict([matched(3)], {3: Policy(royalty_share=0.9)}).works[0]
    assert blocked.outcome == "blocked" and blocked.share_owed == 0.0 and blocked.duration_share == 0.5


def test_covered_seconds_merges_overlaps_and_clips_to_the_upload():
    assert covered_seconds([(5, 8), (0, 2), (1, 3), (7, 12)], 10.0) == 3 + 5
    assert covered_seconds([(-1, 1)], 10.0) == 1
    assert covered_seconds([], 10.0) == 0


def test_policies_are_validated():
    with pytest.raises(ValueError, match="copies must be one of"):
        Policy(copy="maybe")
    with pytest.raises(ValueError, match="royalty_share"):
        Policy(royalty_share=1.5)


def test_a_resolution_rederives_the_verdict_from_the_resolved_works():
    policies = {1: Policy(copy="deny", royalty_share=0.5), 2: Policy(remix="deny", royalty_share=0.2)}
    decided = verdict([matched(1, "excerpt"), matched(2, "mixed", spans=((0.0, 5.0),))], policies)
    assert decided.verdict == "blocked_copy"
    copy_track, remix_track = (w.track_id for w in decided.works)

    # Releasing the copy leaves the remix's block standing; confirming keeps a block.
    released = resolve(decided.works, {copy_track: "release"}, "public-domain recording")
    assert released.verdict == "blocked_unlicensed_derivative"
    assert released.works[0].outcome == "released" and released.works[0].share_owed == 0.0
    assert "public-domain recording" in released.works[0].reason
    assert released.works[1] == decided.works[1]
    assert resolve(decided.works, {copy_track: "confirm"}, "n").verdict == "blocked_copy"

    # Allowing owes the policy's share of the covered time; every claim released is allowed.
    allowed = resolve(decided.works, {copy_track: "allow", remix_track: "release"}, "licence on paper")
    assert allowed.verdict == "allowed"
    assert allowed.works[0].share_owed == pytest.approx(10.0 / 20.0 * 0.5)
    assert allowed.total_share_owed == pytest.approx(0.25)
    nothing = resolve(decided.works, {copy_track: "release", remix_track: "release"}, "not these works")
    assert (nothing.verdict, nothing.total_share_owed) == ("allowed", 0.0)
    assert nothing.reason == "every claim on the upload was released"


def test_a_resolution_of_an_unknown_track_or_with_an_unknown_action_is_refused():
    decided = verdict([matched(1, "copy")])
    with pytest.raises(ValueError, match="not matched"):
        resolve(decided.works, {999: "allow"}, "n")
    with pytest.raises(ValueError, match="unknown resolution"):
        resolve(decided.works, {decided.works[0].track_id: "forgive"}, "n")


def test_a_match_under_a_condition_is_allowed_or_reviewed_as_the_policy_says():
    allow_short = Policy(copy="deny", royalty_share=0.5,
                         conditions=(MatchCondition("copy", min_seconds=8.0, min_share=0.3, below="allow"),))
    short = verdict([matched(spans=((0.0, 5.0),))], {1: allow_short})
    assert short.verdict == "allowed" and short.works[0].share_owed == 0.0
    assert "under the policy's minimum" in short.works[0].reason
    # Long enough in seconds but under the share of a 60 s upload: still allowed.
    assert verdict([matched(spans=((0.0, 10.0),))], {1: allow_short}, seconds=60.0).verdict == "allowed"
    # Over both minimums: the policy's action stands.
    assert verdict([matched(spans=((0.0, 10.0),))], {1: allow_short}).verdict == "blocked_copy"
    # Another use's condition says nothing about this one.
    assert verdict([matched(kind="mixed", spans=((0.0, 5.0),))], {1: allow_short}).verdict == \
        "blocked_unlicensed_derivative"
    review_short = Policy(conditions=(MatchCondition("copy", min_seconds=8.0, below="review"),))
    reviewed = verdict([matched(spans=((0.0, 5.0),))], {1: review_short})
    assert reviewed.verdict == "review" and reviewed.works[0].outcome == "review"


def test_conditions_are_validated():
    with pytest.raises(ValueError, match="unknown use"):
        MatchCondition("sample")
    with pytest.raises(ValueError, match="min_share"):
        MatchCondition("copy", min_share=1.5)
    with pytest.raises(ValueError, match="min_seconds"):
        MatchCondition("copy", min_seconds=float("nan"))
    with pytest.raises(ValueError, match="below"):
        MatchCondition("copy", below="deny")
    with pytest.raises(ValueError, match="one condition per use"):
        Policy(conditions=(MatchCondition("copy"), MatchCondition("copy", min_seconds=3)))


# -- reference exclusions, disputes and conflicts -------------------------------------------------

from refrain.policy import (ConflictClaim, conflict_loser, dispute_resolutions, exclude_spans,  # noqa: E402
                            held_by, merge_spans)


def test_an_exclusion_cuts_the_aligned_spans_and_maps_the_rest_to_the_upload():
    # Upload 10-30 s aligned with reference 40-60 s at ratio 1; reference 45-50 s excluded.
    assert exclude_spans([(10.0, 30.0, 40.0, 60.0)], [(45.0, 50.0)]) == ((10.0, 15.0, 40.0, 45.0),
                                                                         (20.0, 30.0, 50.0, 60.0))
    # A sped-up upload (ratio 2 on the reference side): the upload side follows the span's own alignment.
    assert exclude_spans([(0.0, 10.0, 0.0, 20.0)], [(0.0, 10.0)]) == ((5.0, 10.0, 10.0, 20.0),)
    # Overlapping exclusions merge; a span wholly inside is gone; one outside is untouched.
    assert merge_spans([(5, 8), (0, 6), (9, 9)]) == [(0.0, 8.0)]
    assert exclude_spans([(0.0, 5.0, 2.0, 7.0), (6.0, 8.0, 20.0, 22.0)], [(5.0, 8.0), (0.0, 6.0)]) == (
        (6.0, 8.0, 20.0, 22.0),)


def test_an_excluded_match_is_no_claim_and_a_partly_excluded_one_counts_what_is_left():
    spans = ((0.0, 10.0),)
    whole = MatchedWork(work_id=1, track_id=101, kind="copy", confidence=0.9, spans=spans,
                        aligned_spans=((0.0, 10.0, 30.0, 40.0),))
    assert verdict([whole]).verdict == "blocked_copy"
    gone = decide([whole], {}, [], "ai", 20.0, NOW, REVIEW, exclusions={1: [(25.0, 45.0)]})
    assert (gone.verdict, gone.works) == ("clear", ())
    other_work = decide([whole], {}, [], "ai", 20.0, NOW, REVIEW, exclusions={2: [(25.0, 45.0)]})
    assert other_work.verdict == "blocked_copy" and other_work.works[0].excluded_seconds == 0
    policy = Policy(copy="allow", royalty_share=0.5)
    part = decide([whole], {1: policy}, [], "ai", 20.0, NOW, REVIEW, exclusions={1: [(30.0, 36.0)]})
    (work,) = part.works
    assert (work.covered_seconds, work.excluded_seconds, work.share_owed) == (4.0, 6.0, 0.1)
    assert "excluded reference spans" in work.reason
    # With a condition, what is left may fall under the minimum: excluded seconds never count.
    conditional = Policy(conditions=(MatchCondition(use="copy", min_seconds=5.0),))
    short = decide([whole], {1: conditional}, [], "ai", 20.0, NOW, REVIEW, exclusions={1: [(30.0, 36.0)]})
    assert short.verdict == "allowed"


def test_dispute_outcomes_release_or_confirm_the_disputed_claims_only():
    allowed = MatchedWork(work_id=2, track_id=102, kind="copy", confidence=0.9, spans=((0.0, 5.0),))
    decided = verdict([matched(), allowed], {2: Policy(copy="allow")})
    assert dispute_resolutions(decided.works, "release") == {101: "release"}
    assert dispute_resolutions(decided.works, "release_and_exclude") == {101: "release"}
    assert dispute_resolutions(decided.works, "reinstate") == {101: "confirm"}
    assert resolve(decided.works, dispute_resolutions(decided.works, "release"), "mine").verdict == "allowed"
    with pytest.raises(ValueError, match="unknown dispute outcome"):
        dispute_resolutions(decided.works, "shrug")


def test_an_open_conflict_holds_the_royalties_of_matches_overlapping_its_span():
    claims = [ConflictClaim(7, work_id=1, ref_spans=((10.0, 20.0),)), ConflictClaim(7, 2, ((0.0, 10.0),))]
    assert held_by(1, [(15.0, 30.0)], claims) == [7]
    assert held_by(1, [(20.0, 30.0)], claims) == []  # touching is not overlapping
    assert held_by(2, [(5.0, 6.0)], claims) == [7]
    assert held_by(3, [(5.0, 6.0)], claims) == [] and held_by(None, [(5.0, 6.0)], claims) == []
    spans = [{"query_start": 0.0, "query_end": 10.0, "ref_start": 30.0, "ref_end": 40.0}]
    assert conflict_loser("claimed_work", 5, 1, spans) == (5, [(0.0, 10.0)])
    assert conflict_loser("work", 5, 1, spans) == (1, [(30.0, 40.0)])
    assert conflict_loser("share", 5, 1, spans) is None
    with pytest.raises(ValueError, match="unknown conflict resolution"):
        conflict_loser("coin", 5, 1, spans)

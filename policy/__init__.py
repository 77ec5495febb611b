"""Rights policy: from matched works, their AI-use policies and the declared licences to one verdict.

Pure functions over plain data: no HTTP, no SQL, no audio. The service (and any
batch job) gathers the inputs — what the matcher found, each work's policy, the
licences the uploader declared, the works' excluded reference spans — and
:func:`decide` returns the verdict and the royalty attribution; :mod:`policy.claims`
says what disputes and ownership conflicts do to the claims. See
``docs/service.md`` for the rules in prose.
"""

from refrain.policy.claims import (CONFLICT_RESOLUTIONS, DISPUTE_OUTCOMES, DISPUTE_REASONS, ConflictClaim,
                                   conflict_loser, dispute_resolutions, disputed_claims, held_by)
from refrain.policy.exclusions import exclude_spans, merge_spans
from refrain.policy.rules import (ACTIONS, BELOW_ACTIONS, DEFAULT_POLICY, DEFAULT_REVIEW_CONFIDENCE, KIND_TO_USE,
                                  OUTCOMES, RESOLUTIONS, USES, VERDICTS, Decision, Licence, MatchCondition,
                                  MatchedWork, Policy, WorkDecision, covered_seconds, decide, licence_problem,
                                  resolve, use_of_kind, without_exclusions)

__all__ = ["ACTIONS", "BELOW_ACTIONS", "DEFAULT_POLICY", "DEFAULT_REVIEW_CONFIDENCE", "KIND_TO_USE", "OUTCOMES",
           "RESOLUTIONS", "USES", "VERDICTS", "Decision", "Licence", "MatchCondition", "MatchedWork", "Policy",
           "WorkDecision", "covered_seconds", "decide", "licence_problem", "resolve", "use_of_kind",
           "without_exclusions", "exclude_spans", "merge_spans", "CONFLICT_RESOLUTIONS", "DISPUTE_OUTCOMES",
           "DISPUTE_REASONS", "ConflictClaim", "conflict_loser", "dispute_resolutions", "disputed_claims",
           "held_by"]

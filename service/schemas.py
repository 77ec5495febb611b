"""Pydantic models of every request body, response body and error of the HTTP API."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from typing import Annotated, Any, Literal, get_type_hints

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, create_model

from refrain.matcher import KINDS, Match, Span

__all__ = [
    "Action", "Use", "Verdict", "Outcome", "Role", "ErrorBody", "ConditionBody", "PolicyBody", "PolicyOut", "WorkOut",
    "WorkList", "WorkUploadForm", "ConflictOut", "ConflictList", "LicenceIn", "LicenceOut", "LicenceList",
    "KeyIn", "KeyCreated",
    "KeyOut", "KeyList", "PrincipalIn", "PrincipalOut", "PrincipalList", "MatchUploadForm", "SpanOut",
    "RoyaltyOut", "MatchedWorkOut", "FingerprintSummary", "DecisionOut", "EvidenceOut", "VerdictChangeOut",
    "DecisionDetail", "WebhookIn", "WebhookOut", "WebhookList", "WorkResolutionIn", "ResolutionIn",
    "DecisionSummary", "DecisionList", "Health", "MAX_DB_INTEGER", "DbId", "BoundedDatetime",
    "BoundedAwareDatetime", "Readiness", "ReadinessChecks", "JobState", "JobError", "WebhookDeliveryOut", "JobOut",
    "DisputeReason", "DisputeOutcome", "DisputeIn", "DisputeOut", "DisputeList", "DisputeResolutionIn", "ExclusionIn",
    "ExclusionOut", "ExclusionList", "ConflictResolutionIn",
    "CarriedSpanOut", "LineageClaimOut", "PublishIn", "LineageLinkOut", "LineageOut", "RoyaltyLineOut",
    "RoyaltyStatement",
]

#: Ids and offsets are SQLite integers: larger ones cannot even be looked up.
MAX_DB_INTEGER = 2**63 - 1
#: Instants the service accepts: any time zone, as long as the instant in UTC is a real date.
EARLIEST_YEAR, LATEST_YEAR = 1970, 9998


def _within_calendar(moment: datetime) -> datetime:
    """The instant, in UTC when it has no zone, if it is between 1970 and 9998 (it is stored and compared in UTC)."""
    aware = moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment
    if not EARLIEST_YEAR <= aware.year <= LATEST_YEAR:
        raise ValueError(f"the date must be between {EARLIEST_YEAR} and {LATEST_YEAR}")
    return aware


#: A datetime with a time zone, within the years the service stores.
BoundedAwareDatetime = Annotated[AwareDatetime, AfterValidator(_within_calendar)]
#: A datetime within the years the service stores, read as UTC when it has no zone (always aware once validated).
BoundedDatetime = Annotated[datetime, AfterValidator(_within_calendar)]
DbId = Annotated[int, Field(ge=1, le=MAX_DB_INTEGER)]

Action = Literal["deny", "allow", "licence_required"]
Use = Literal["copy", "remix", "cover"]
Verdict = Literal["clear", "allowed", "licensed", "blocked_copy", "blocked_unlicensed_derivative",
                  "review"]
Outcome = Literal["allowed", "licensed", "blocked", "review", "released"]
Role = Literal["uploader", "analyst", "admin", "rights_holder"]
Kind = Literal[KINDS]  # type: ignore[valid-type]
Tier = Literal["pair", "triplet", "peaks", "melody"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(BaseModel):
    """Every error response: a stable code, a message for people, and details when there are several problems."""

    code: str = Field(description="Stable identifier, e.g. `not_found`, `payload_too_large`, "
                                  "`unsupported_media_type`, `validation_error` (see docs/service.md)")
    message: str = Field(description="What was wrong, in one sentence")
    details: list[dict] | None = Field(None, description="Per-field problems of a 422 validation error; the "
                                                         "conflicting works (work_id, title, rights_holder, "
                                                         "kind, score, confidence, spans) of a 409 "
                                                         "`ownership_conflict`")
    request_id: str | None = Field(None, description="The request's id, as in the `X-Request-ID` header: "
                                                     "quote it when reporting a problem")


# -- works and policies --------------------------------------------------------------------------


class ConditionBody(_Strict):
    """A minimum one use's matches must reach before the policy's action applies to them."""

    use: Use
    min_seconds: float = Field(0.0, ge=0.0, le=86400.0, description="Seconds of the upload the work must cover")
    min_share: float = Field(0.0, ge=0.0, le=1.0, description="Share (0–1) of the upload the work must cover")
    below: Literal["allow", "review"] = Field("allow", description="What a match under either minimum gets "
                                              "instead of a block: `allow` (nothing owed) or `review`")


class PolicyBody(_Strict):
    """A work's AI-use policy: one action per use and the royalty share owed on permitted uses."""

    # `copy` would shadow BaseModel.copy: the attribute is `copy_`, the JSON field `copy`.
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    copy_: Action = Field(alias="copy", description="Uploads of the recording itself, whole or an excerpt")
    remix: Action = Field(description="The recording reused but changed: speed, pitch, tempo, "
                                      "mixed under other material")
    cover: Action = Field(description="The composition re-performed")
    royalty_share: float = Field(ge=0.0, le=1.0, description="Fraction of the revenue attributed "
                                 "to this work owed to its rights holder on an allowed or licensed use")
    conditions: list[ConditionBody] = Field(default_factory=list, max_length=3,
                                            description="At most one per use (Content ID's match policies)")


class PolicyOut(PolicyBody):
    """The policy in force for a work."""

    is_default: bool = Field(description="True when the work has no policy of its own, its rights holder no "
                                         "default policy (docs/lineage.md), and the default (deny everything, "
                                         "royalty 0) applies")


class WorkOut(BaseModel):
    """A catalogue work: a reference recording in the index with its rights metadata."""

    work_id: int
    track_id: int = Field(description="The recording's id in the Refrain index (as `refrain match` shows)")
    title: str
    artists: list[str]
    rights_holder: str
    isrc: str | None
    filename: str = Field(description="The name the reference recording was uploaded under")
    duration: float = Field(description="Seconds")
    created_at: datetime
    policy: PolicyOut


class WorkList(BaseModel):
    items: list[WorkOut]
    total: int
    limit: int
    offset: int


class WorkUploadForm(BaseModel):
    """`multipart/form-data` body of `POST /v1/works`."""

    file: bytes = Field(description="The reference recording (any format ffmpeg or libsndfile reads)",
                        json_schema_extra={"format": "binary"})
    title: str = Field(max_length=500)
    artists: list[str] = Field(min_length=1, description="Repeat the field once per artist")
    rights_holder: str = Field(max_length=500)
    isrc: str | None = Field(None, description="12 characters, e.g. `GBAYE0601498` (hyphens allowed)")
    conflict: Literal["true", "false"] = Field(
        "false", description="`true`: register the work although its recording copies a registered work "
                             "(the 409 `ownership_conflict` lists them); each such claim enters the conflict "
                             "queue (`GET /v1/conflicts`)")


class ConflictOut(BaseModel):
    """Two works claiming one recording: ``work_id`` was registered (explicitly, as a conflict) although its
    recording copies ``claimed_work_id``."""

    conflict_id: int
    work_id: int = Field(description="The newer claim")
    claimed_work_id: int = Field(description="The earlier work its recording copies")
    kind: str = Field(description="The matcher's kind of the newer recording against the earlier one")
    score: float
    confidence: float
    spans: list[dict] = Field(description="Matched spans: `query_*` seconds of the newer recording, `ref_*` of "
                                          "the earlier one")
    created_at: datetime
    resolved_at: datetime | None
    resolution: Literal["work", "claimed_work", "share"] | None = Field(
        None, description="Who kept the span: `work` (the newer claim), `claimed_work` (the earlier) or `share`")
    resolution_note: str | None = None
    resolved_by: str | None = Field(None, description="The admin's principal")


class ConflictList(BaseModel):
    items: list[ConflictOut]
    total: int
    limit: int
    offset: int


# -- licences -----------------------------------------------------------------------------------


class LicenceIn(_Strict):
    """A licence to grant."""

    work_id: DbId
    licensee: str = Field(min_length=1, max_length=200,
                          description="The principal (by name) whose keys may rely on it: only uploads "
                                      "made with that principal's keys are covered")
    uses: list[Use] = Field(min_length=1, max_length=3, description="Uses granted")
    valid_until: BoundedAwareDatetime | None = Field(None, description="End of validity (with a time zone, "
                                                                       "years 1970-9998); null for no end")


class LicenceOut(BaseModel):
    licence_id: str
    work_id: int
    licensee: str = Field(description="The licensee principal's name")
    uses: list[Use]
    granted_at: datetime
    valid_until: datetime | None
    revoked_at: datetime | None
    status: Literal["active", "expired", "revoked"]


class LicenceList(BaseModel):
    items: list[LicenceOut]
    total: int
    limit: int
    offset: int


# -- API keys -----------------------------------------------------------------------------------


PrincipalName = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")]


class KeyIn(_Strict):
    role: Role
    principal: PrincipalName = Field(description="Who the key acts for (an organisation or team), by name; "
                                                 "created if missing, with the kind the role implies "
                                                 "(uploader, analyst_team, admin, rights_holder)")
    label: str | None = Field(None, max_length=200, description="Who or what the key is for")


class KeyOut(BaseModel):
    prefix: str = Field(description="The key's first characters: identifies it, cannot be used as it")
    role: Role
    principal: str = Field(description="The principal the key acts for")
    label: str | None
    created_at: datetime
    revoked_at: datetime | None


class KeyCreated(KeyOut):
    key: str = Field(description="The API key. Shown this once; only its SHA-256 is stored")


class KeyList(BaseModel):
    items: list[KeyOut]


PrincipalKind = Literal["uploader", "rights_holder", "analyst_team", "admin"]


class PrincipalIn(_Strict):
    name: PrincipalName
    kind: PrincipalKind


class PrincipalOut(BaseModel):
    """Who acts: keys belong to a principal, licences are granted to one."""

    principal_id: int
    name: str
    kind: PrincipalKind
    created_at: datetime


class PrincipalList(BaseModel):
    items: list[PrincipalOut]


# -- matches ------------------------------------------------------------------------------------


class MatchUploadForm(BaseModel):
    """`multipart/form-data` body of `POST /v1/matches` and `POST /v1/matches/adhoc`."""

    file: bytes = Field(description="The upload to check", json_schema_extra={"format": "binary"})
    uploader_id: str | None = Field(None, max_length=200, description="A sub-account of the key's principal, "
                                    "recorded with the decision. Never used for licensing: a licence covers "
                                    "the uploads made with its licensee principal's keys")
    licence_id: list[str] | None = Field(None, description="Declared licences; repeat the field for "
                                         "several")


def _model_of(record: type, name: str, description: str, types: dict[str, Any],
              leave_out: frozenset[str] = frozenset()) -> type[BaseModel]:
    """A response model with the fields of a library record and the documentation they carry.

    The library's dataclass (:class:`matcher.Match`, :class:`matcher.Span`) is the one
    place a match field is defined and documented; ``types`` narrows a field's type for
    the schema (a ``kind`` is one of the kinds, not any string).
    """
    hints = get_type_hints(record)
    definitions = {f.name: (types.get(f.name, hints[f.name]), Field(description=f.metadata.get("doc")))
                   for f in dataclasses.fields(record) if f.name not in leave_out}
    return create_model(name, __doc__=description, **definitions)  # type: ignore[call-overload]


SpanOut = _model_of(Span, "SpanOut", "One stretch of the upload aligned with one stretch of the work (seconds).",
                    {})
_MatchOut = _model_of(Match, "MatchOut", "What the matcher found of one work in the upload.",
                      {"kind": Kind, "tier": Tier, "spans": list[SpanOut]}, frozenset({"points"}))


class RoyaltyOut(BaseModel):
    """Royalty attribution of one work in one upload."""

    covered_seconds: float = Field(description="Seconds of the upload where the work sounds (union of spans)")
    duration_share: float = Field(description="covered_seconds / upload duration")
    royalty_share: float = Field(description="The policy's royalty share")
    share_owed: float = Field(description="duration_share × royalty_share if the use is allowed or "
                                          "licensed, else 0")
    excluded_seconds: float = Field(0.0, description="Seconds the matcher aligned inside the work's excluded "
                                                     "reference spans: not counted in covered_seconds")
    held: bool = Field(False, description="An open ownership conflict claims the span this work matched: its "
                                          "royalties are held until an admin resolves the conflict")
    held_by_conflicts: list[int] = Field(default_factory=list, description="The conflicts holding them")


class MatchedWorkOut(_MatchOut):  # type: ignore[misc, valid-type]
    """One work found in the upload (the match fields of :class:`matcher.Match`), the policy applied and
    what it leads to."""

    work_id: int | None = Field(description="null for an index track no work is registered for "
                                            "(e.g. ingested with the CLI): the default policy applies")
    title: str | None
    artists: list[str]
    rights_holder: str | None
    isrc: str | None
    use: Use
    policy: PolicyOut
    action: Action = Field(description="The policy's action for this use")
    outcome: Outcome
    licence_id: str | None = Field(description="The declared licence covering this use, if any")
    reason: str
    royalty: RoyaltyOut


class FingerprintSummary(BaseModel):
    """What was analysed."""

    sha256: str
    bytes: int
    duration: float
    landmarks: int
    landmarks_per_second: float


class CarriedSpanOut(BaseModel):
    """One stretch of the upload against an ancestor's recording, carried through the lineage's links (seconds)."""

    query_start: float
    query_end: float
    ref_start: float = Field(description="Seconds of the ancestor's recording")
    ref_end: float


class LineageClaimOut(BaseModel):
    """An ancestor of a matched published derivative: its policy judges the use, it shares the derivative's royalty."""

    work_id: int
    track_id: int
    title: str
    rights_holder: str
    via_work_id: int = Field(description="The matched derivative the claim comes through")
    via_track_id: int
    path: list[int] = Field(description="Work ids from the matched derivative up to this ancestor")
    kind: Kind = Field(description="The upload's kind relative to the ancestor: the most transforming along the path")
    use: Use
    policy: PolicyOut
    action: Action
    outcome: Outcome
    licence_id: str | None = Field(description="The declared licence of this ancestor covering the use, if any")
    reason: str
    royalty: RoyaltyOut = Field(description="share_owed: the ancestor's part of the derivative's share "
                                            "(docs/lineage.md); seconds and duration share: the derivative's match")
    spans: list[CarriedSpanOut] = Field(default_factory=list, description="Where the ancestor sounds in the upload: "
                                        "the match carried through the links and cut by the ancestor's excluded "
                                        "reference spans; an open conflict on them holds the claim's royalties")


class DecisionOut(BaseModel):
    """The answer to an upload."""

    decision_id: str | None = Field(description="Id of the stored decision; null for an ad-hoc match")
    stored: bool
    created_at: datetime
    filename: str
    principal: str | None = Field(description="The principal whose key made the upload (licences are checked "
                                              "against it); null for decisions stored before principals")
    uploader_id: str | None = Field(description="The sub-account label the upload declared")
    licence_ids: list[str]
    verdict: Verdict
    reason: str
    works: list[MatchedWorkOut]
    total_share_owed: float = Field(description="Sum of the works' and the lineage claims' share_owed, at most 1")
    fingerprint: FingerprintSummary
    lineage: list[LineageClaimOut] = Field(default_factory=list, description="The ancestors of matched published "
                                           "derivatives, attributed the upload too (docs/lineage.md)")


class EvidenceOut(BaseModel):
    """The aligned landmarks behind one matched work, to plot against the fitted line."""

    track_id: int
    work_id: int | None
    offset: float
    time_ratio: float
    points: list[tuple[float, float]] = Field(description="(upload s, reference s) of each aligned landmark")
    spectrogram_start: float | None = Field(description="Upload seconds the stored spectrogram starts at")
    spectrogram_end: float | None


class VerdictChangeOut(BaseModel):
    """A stored decision's verdict changed after the fact: by ``refrain rescan uploads --apply`` or an
    analyst's resolution."""

    kind: Literal["rescan", "resolution", "dispute"]
    run_id: str = Field(description="The rescan run (`kind=rescan`), the review (`rev_…`) or the dispute (`dsp_…`) "
                                    "that made the change")
    actor: str | None = Field(description="The principal of the analyst who resolved it; null for a rescan")
    changed_at: datetime
    old_verdict: Verdict
    new_verdict: Verdict
    reason: str = Field(description="Why the verdict changed: work by work for a rescan, the analyst's note "
                                    "for a resolution")


WebhookEvent = Literal["decision.resolved", "decision.rescanned", "dispute.filed", "dispute.resolved",
                       "conflict.resolved"]


class WebhookIn(_Strict):
    """A receiver of decision-change notifications."""

    url: str = Field(min_length=8, max_length=2000, pattern=r"^https?://[^\s]+$",
                     description="Where the signed JSON is POSTed (http or https)")
    events: list[WebhookEvent] = Field(min_length=1, description="`decision.resolved`: an analyst resolved a "
                                                                  "decision; `decision.rescanned`: `refrain rescan "
                                                                  "uploads --apply` changed one; `dispute.filed`, "
                                                                  "`dispute.resolved`; `conflict.resolved`")
    secret: str = Field(min_length=16, max_length=200, description="Key of the HMAC-SHA256 signature "
                        "(`X-Refrain-Signature`, see docs/operations.md); never shown again")


class WebhookOut(BaseModel):
    webhook_id: str
    url: str
    events: list[WebhookEvent]
    created_at: datetime


class WebhookList(BaseModel):
    items: list[WebhookOut]


class WorkResolutionIn(_Strict):
    """What the analyst decides about one matched work."""

    track_id: DbId = Field(description="The matched track (`works[].track_id` of the decision)")
    resolution: Literal["confirm", "allow", "release"] = Field(
        description="`confirm`: the claim stands, the use stays blocked; `allow`: the use is allowed, royalties "
                    "are owed as the policy says; `release`: the claim is dropped, nothing is owed")


class ResolutionIn(_Strict):
    """An analyst's resolution of a stored decision: one entry per work resolved, and why."""

    works: list[WorkResolutionIn] = Field(min_length=1, max_length=100)
    note: str = Field(min_length=1, max_length=2000, pattern=r"\S",
                      description="Why: kept in the decision history with the analyst's principal")


class DecisionDetail(DecisionOut):
    """A stored decision with its evidence, its verdict changes and its disputes (oldest first)."""

    evidence: list[EvidenceOut]
    history: list[VerdictChangeOut] = Field(default_factory=list)
    disputes: list["DisputeOut"] = Field(default_factory=list)


class DecisionSummary(BaseModel):
    decision_id: str
    created_at: datetime
    verdict: Verdict
    filename: str
    uploader_id: str | None
    work_ids: list[int | None]


class DecisionList(BaseModel):
    items: list[DecisionSummary]
    total: int
    limit: int
    offset: int


class Health(BaseModel):
    status: Literal["ok"]
    tracks: int = Field(description="Matchable recordings in the index")


class ReadinessChecks(BaseModel):
    index: bool = Field(description="The index is open")
    database: bool = Field(description="The service database answers")
    jobs: bool = Field(description="The jobs database answers")
    warm_up: bool = Field(description="The matcher's kernels are compiled (or loaded from numba's cache)")


class Readiness(BaseModel):
    """Whether the service should receive traffic: 200 when every check passes, else 503."""

    status: Literal["ready", "not_ready"]
    checks: ReadinessChecks
    detail: str | None = Field(None, description="What is not ready yet, or why it failed")


# -- asynchronous uploads -------------------------------------------------------------------------

JobState = Literal["queued", "running", "succeeded", "failed"]


class JobError(BaseModel):
    """Why a job failed: the error a synchronous upload would have answered."""

    status: int
    code: str
    message: str


class WebhookDeliveryOut(BaseModel):
    """The completion webhook of a job: where it went and how its delivery went."""

    delivery_id: str
    url: str
    event: str
    delivered: bool
    attempts: int = Field(description="Delivery attempts made")
    last_status: int | None = Field(description="HTTP status of the last attempt (null: no answer)")
    last_error: str | None


class JobOut(BaseModel):
    """An asynchronous upload (`POST /v1/matches?mode=async`): poll it until `succeeded` or `failed`."""

    job_id: str
    state: JobState
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    filename: str
    decision_id: str | None = Field(description="The stored decision, once the job succeeded "
                                                "(`GET /v1/matches/{decision_id}`)")
    verdict: Verdict | None
    error: JobError | None
    callback_url: str | None = Field(description="Where the completion webhook is sent")
    webhook: WebhookDeliveryOut | None = Field(description="The completion webhook's delivery, once tried")


# -- disputes, reference exclusions, conflict resolutions -----------------------------------------

DisputeReason = Literal["original_work", "licence_held", "public_domain", "fair_use", "not_this_work"]
DisputeOutcome = Literal["release", "reinstate", "release_and_exclude"]
Note = Annotated[str, Field(min_length=1, max_length=2000, pattern=r"\S")]


class DisputeIn(_Strict):
    """An uploader's dispute of the claims on one of its decisions."""

    reason: DisputeReason = Field(description="`original_work`: the uploader made it; `licence_held`: a licence "
                                              "the service does not know of; `public_domain`; `fair_use`; "
                                              "`not_this_work`: the match is wrong")
    text: Note = Field(description="The uploader's explanation, for the analyst")


class DisputeOut(BaseModel):
    dispute_id: str
    decision_id: str
    principal: str = Field(description="Who filed it: the principal of the uploader's key")
    reason: DisputeReason
    text: str
    track_ids: list[int] = Field(description="The disputed claims (matched tracks blocked or under review when "
                                             "it was filed)")
    filed_at: datetime
    status: Literal["open", "resolved"]
    outcome: DisputeOutcome | None
    note: str | None = Field(description="The analyst's reason for the outcome")
    resolved_by: str | None = Field(description="The analyst's principal")
    resolved_at: datetime | None


class DisputeList(BaseModel):
    items: list[DisputeOut]
    total: int
    limit: int
    offset: int


class DisputeResolutionIn(_Strict):
    """How an analyst closes a dispute."""

    outcome: DisputeOutcome = Field(description="`release`: the disputed claims are released; `reinstate`: they "
                                                "stand (confirmed); `release_and_exclude`: released, and each "
                                                "released work's matched reference span is excluded from its "
                                                "future claims")
    note: Note = Field(description="Why: kept in the decision history with the analyst's principal")


class ExclusionIn(_Strict):
    """A span of the work's reference recording that must never count as evidence of a claim."""

    ref_start: float = Field(ge=0, le=86400, description="Seconds into the reference recording")
    ref_end: float = Field(gt=0, le=86400, description="Seconds into the reference recording (after ref_start)")
    reason: Note = Field(description="Why (e.g. a public-domain intro, a sample the label does not own)")


class ExclusionOut(BaseModel):
    exclusion_id: int
    work_id: int
    ref_start: float
    ref_end: float
    reason: str
    source: str = Field(description="`api`, the dispute (`dsp_…`) or the conflict (`cfl_<id>`) that added it")
    created_by: str = Field(description="The principal who added it")
    created_at: datetime


class ExclusionList(BaseModel):
    items: list[ExclusionOut]


class ConflictResolutionIn(_Strict):
    """Who keeps the conflicting span."""

    keeps: Literal["work", "claimed_work", "share"] = Field(
        description="`work`: the newer claim keeps it (the span is excluded from the earlier work); "
                    "`claimed_work`: the earlier work keeps it (excluded from the newer one); `share`: both keep it")
    note: Note = Field(description="Why: kept with the conflict")



# -- lineage and royalties ------------------------------------------------------------------------


class PublishIn(_Strict):
    """`POST /v1/matches/{id}/publish`: the upload, licensed or allowed, becomes a work of the uploader's principal."""

    title: str = Field(min_length=1, max_length=300)
    artists: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(min_length=1, max_length=50)
    isrc: str | None = Field(None, max_length=20, description="12 characters once dashes are dropped")
    policy: PolicyBody | None = Field(None, description="The derivative's policy; default: the most permissive its "
                                                        "parents allow (docs/lineage.md). A more permissive one is 422")


class LineageLinkOut(BaseModel):
    """A published derivative's link to one parent, with the match evidence it was published on."""

    work_id: int = Field(description="The derivative")
    parent_work_id: int
    decision_id: str = Field(description="The decision the derivative was published from")
    kind: Kind = Field(description="The matcher's kind of the derivative against the parent")
    score: float
    confidence: float
    time_ratio: float
    pitch_shift_semitones: float
    covered_seconds: float = Field(description="Seconds of the derivative where the parent sounds")
    share: float = Field(description="covered_seconds / the derivative's duration (the split's ℓ)")
    spans: list[SpanOut] = Field(description="Derivative seconds (query_*) against parent seconds (ref_*)")
    created_at: datetime


class LineageOut(BaseModel):
    """A work with every ancestor and descendant, and the links between them."""

    work: WorkOut
    ancestors: list[WorkOut]
    descendants: list[WorkOut]
    links: list[LineageLinkOut]


class RoyaltyLineOut(BaseModel):
    """One share owed to the holder by one decision."""

    decision_id: str
    created_at: datetime
    verdict: Verdict
    work_id: int | None
    title: str | None
    via_work_id: int | None = Field(description="null for a work matched directly; else the matched derivative "
                                                "the share comes through")
    share_owed: float = Field(description="Fraction of the upload's revenue owed")
    held: bool = Field(description="An open ownership conflict claims the span: owed, but held until an admin "
                                   "resolves it")


class RoyaltyStatement(BaseModel):
    """What the decisions of a period owe one rights holder (uploads that may be published only)."""

    holder: str
    since: datetime | None
    until: datetime | None
    total_share_owed: float = Field(description="Sum of the lines' share_owed (upload-revenue units)")
    held_share: float = Field(description="The part of total_share_owed in held lines")
    decisions: int = Field(description="Decisions with at least one line")
    lines: list[RoyaltyLineOut]


DecisionDetail.model_rebuild()

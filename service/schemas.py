"""Pydantic models of every request body, response body and error of the HTTP API."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any, Literal, get_type_hints

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, create_model

from refrain.matcher import KINDS, Match, Span

__all__ = [
    "Action", "Use", "Verdict", "Outcome", "Role", "ErrorBody", "PolicyBody", "PolicyOut", "WorkOut",
    "WorkList", "WorkUploadForm", "LicenceIn", "LicenceOut", "LicenceList", "KeyIn", "KeyCreated",
    "KeyOut", "KeyList", "MatchUploadForm", "SpanOut", "RoyaltyOut", "MatchedWorkOut",
    "FingerprintSummary", "DecisionOut", "EvidenceOut", "VerdictChangeOut", "DecisionDetail", "DecisionSummary",
    "DecisionList", "Health",
]

Action = Literal["deny", "allow", "licence_required"]
Use = Literal["copy", "remix", "cover"]
Verdict = Literal["clear", "allowed", "licensed", "blocked_copy", "blocked_unlicensed_derivative",
                  "review"]
Outcome = Literal["allowed", "licensed", "blocked", "review"]
Role = Literal["uploader", "analyst", "admin"]
Kind = Literal[KINDS]  # type: ignore[valid-type]
Tier = Literal["pair", "triplet", "peaks", "melody"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(BaseModel):
    """Every error response: a stable code, a message for people, and details when there are several problems."""

    code: str = Field(description="Stable identifier, e.g. `not_found`, `payload_too_large`, "
                                  "`unsupported_media_type`, `validation_error` (see docs/service.md)")
    message: str = Field(description="What was wrong, in one sentence")
    details: list[dict] | None = Field(None, description="Per-field problems of a 422 validation error")


# -- works and policies --------------------------------------------------------------------------


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


class PolicyOut(PolicyBody):
    """The policy in force for a work."""

    is_default: bool = Field(description="True when the work has no policy of its own and the "
                                         "default (deny everything, royalty 0) applies")


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


# -- licences -----------------------------------------------------------------------------------


class LicenceIn(_Strict):
    """A licence to grant."""

    work_id: int
    licensee: str = Field(min_length=1, max_length=200, description="The uploader id that may rely on it")
    uses: list[Use] = Field(min_length=1, description="Uses granted")
    valid_until: AwareDatetime | None = Field(None, description="End of validity (with a time zone); "
                                                               "null for no end")


class LicenceOut(BaseModel):
    licence_id: str
    work_id: int
    licensee: str
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


class KeyIn(_Strict):
    role: Role
    label: str | None = Field(None, max_length=200, description="Who or what the key is for")


class KeyOut(BaseModel):
    prefix: str = Field(description="The key's first characters: identifies it, cannot be used as it")
    role: Role
    label: str | None
    created_at: datetime
    revoked_at: datetime | None


class KeyCreated(KeyOut):
    key: str = Field(description="The API key. Shown this once; only its SHA-256 is stored")


class KeyList(BaseModel):
    items: list[KeyOut]


# -- matches ------------------------------------------------------------------------------------


class MatchUploadForm(BaseModel):
    """`multipart/form-data` body of `POST /v1/matches` and `POST /v1/matches/adhoc`."""

    file: bytes = Field(description="The upload to check", json_schema_extra={"format": "binary"})
    uploader_id: str | None = Field(None, max_length=200, description="Who uploads: a licence only "
                                    "covers uploads by its licensee")
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


class DecisionOut(BaseModel):
    """The answer to an upload."""

    decision_id: str | None = Field(description="Id of the stored decision; null for an ad-hoc match")
    stored: bool
    created_at: datetime
    filename: str
    uploader_id: str | None
    licence_ids: list[str]
    verdict: Verdict
    reason: str
    works: list[MatchedWorkOut]
    total_share_owed: float = Field(description="Sum of the works' share_owed, at most 1")
    fingerprint: FingerprintSummary


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
    """A stored decision's verdict changed after the fact by ``refrain rescan uploads --apply``."""

    run_id: str = Field(description="The rescan run that made the change")
    changed_at: datetime
    old_verdict: Verdict
    new_verdict: Verdict
    reason: str = Field(description="Why the verdict changed, work by work")


class DecisionDetail(DecisionOut):
    """A stored decision with its evidence, and its verdict changes (oldest first; empty if never changed)."""

    evidence: list[EvidenceOut]
    history: list[VerdictChangeOut] = Field(default_factory=list)


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

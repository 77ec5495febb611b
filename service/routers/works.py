"""Catalogue: reference recordings with rights metadata, and their AI-use policies.

Admins manage every work. A rights holder's keys register works for their principal and
manage those only; an uploader principal manages the derivatives it published
(docs/lineage.md). Anyone else's work is 403.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response, Security

from refrain import policy
from refrain.policy.lineage import derivative_policy_problem
from refrain.service.core import MatchService, derivative_floor_of, policy_out, work_out
from refrain.service.db import ApiKey, Work
from refrain.service.deps import AdminKey, ServiceDep, api_key_scheme, authenticate, require_role
from refrain.service.errors import ApiError
from refrain.service.routers import error_responses, multipart_body
from refrain.service.routers.params import LimitQuery, OffsetQuery, WorkIdPath
from refrain.service.schemas import PolicyBody, PolicyOut, PrincipalName, WorkList, WorkOut
from refrain.service.uploads import receive_form

router = APIRouter(prefix="/v1/works", tags=["works"])


def require_manager(key: Annotated[str | None, Security(api_key_scheme)], service: ServiceDep) -> ApiKey:
    """Admins, rights holders, and uploaders whose principal owns published derivatives (401/403 otherwise)."""
    record = authenticate(service, key, ("admin", "rights_holder", "uploader"))
    if record.role == "uploader" and not service.db.works_owned_by(record.principal_id, 1, 0)[1]:
        raise ApiError(403, "forbidden", "this operation needs the admin or rights_holder role, or an uploader "
                                         "principal that published a derivative; this key has the uploader role")
    return record


#: The caller's key record, admitted by :func:`require_manager`.
ManagerKey = Annotated[ApiKey, Depends(require_manager)]


def managed_work(service: MatchService, key: ApiKey, work_id: int, overseers: tuple[str, ...] = ("admin",)) -> Work:
    """The work if the key may manage it: 404 if unknown, 403 if it belongs to another principal (keys of the
    ``overseers`` roles manage every work)."""
    work = existing_work(service, work_id)
    if key.role not in overseers and work.owner_principal_id != key.principal_id:
        raise ApiError(403, "forbidden", f"work {work_id} belongs to another rights holder than {key.principal!r}: "
                                         "only its owner or an admin may manage it")
    return work


def existing_work(service: MatchService, work_id: int) -> Work:
    """The work with this id; 404 if there is none."""
    work = service.db.get_work(work_id)
    if work is None:
        raise ApiError(404, "not_found", f"work {work_id} not found")
    return work


def policy_from_body(body: PolicyBody) -> policy.Policy:
    try:
        return policy.Policy(copy=body.copy_, remix=body.remix, cover=body.cover, royalty_share=body.royalty_share,
                             conditions=tuple(policy.MatchCondition(**c.model_dump()) for c in body.conditions))
    except ValueError as err:  # what the schema cannot say: one condition per use
        raise ApiError(422, "validation_error", str(err)) from None


@router.post("", status_code=201, response_model=WorkOut, summary="Upload a reference recording (admin, rights holder)",
             responses=error_responses(400, 408, 409, 413, 415),
             openapi_extra=multipart_body("WorkUploadForm"))
async def create_work(request: Request, service: ServiceDep,
                      key: Annotated[ApiKey, Depends(require_role("admin", "rights_holder"))]) -> WorkOut:
    """Ingest a reference recording into the index and register it as a work.

    The body is `multipart/form-data` (schema `WorkUploadForm`), streamed: an upload over
    the size limit is refused with 413 while it arrives. The work gets the default
    policy (deny everything) until `PUT /v1/works/{id}/policy` sets one. A rights
    holder's key registers the work for its own principal (its `rights_holder`, if
    given, must be that principal's name); its default policy applies until the work
    gets one of its own.
    """
    owner = key if key.role == "rights_holder" else None
    with service.admission.upload():
        form = await receive_form(request, service.settings.max_upload_bytes, service.settings.upload_dir)
        with form:
            work = await service.analyse(form, service.settings.max_reference_seconds, service.add_work, form, owner)
    return WorkOut(**work_out(work, service.db.effective_policies([work.work_id]).get(work.work_id)))


@router.get("", response_model=WorkList, summary="List works (a rights holder: its own)", responses=error_responses())
def list_works(*, limit: LimitQuery = 50, offset: OffsetQuery = 0, service: ServiceDep,
               key: ManagerKey) -> WorkList:
    works, total = (service.db.list_works(limit, offset) if key.role == "admin"
                    else service.db.works_owned_by(key.principal_id, limit, offset))
    policies = service.db.effective_policies([w.work_id for w in works])
    return WorkList(items=[WorkOut(**work_out(w, policies.get(w.work_id))) for w in works],
                    total=total, limit=limit, offset=offset)


def _default_policy_owner(service: MatchService, key: ApiKey, principal: str | None):
    """The principal whose default policy is meant: the key's own; an admin names a rights holder."""
    if key.role != "admin":
        if principal not in (None, key.principal):
            raise ApiError(403, "forbidden", f"a rights holder sets its own default policy, not {principal!r}'s")
        return service.db.get_principal(key.principal)
    if principal is None:
        raise ApiError(422, "validation_error", "an admin names the rights holder: ?principal=NAME")
    found = service.db.get_principal(principal)
    if found is None:
        raise ApiError(404, "not_found", f"principal {principal!r} not found")
    return found


DefaultPolicyPrincipal = Annotated[PrincipalName | None, Query(description="Admins only: the rights holder meant "
                                                                           "(default: the key's own principal)")]


@router.get("/default-policy", response_model=PolicyOut, summary="Get a rights holder's default policy",
            responses=error_responses(404))
def get_default_policy(*, principal: DefaultPolicyPrincipal = None, service: ServiceDep,
                       key: Annotated[ApiKey, Depends(require_role("rights_holder", "admin"))]) -> PolicyOut:
    """The policy applied to every work of the rights holder that has no policy of its own."""
    owner = _default_policy_owner(service, key, principal)
    return PolicyOut(**policy_out(service.db.principal_policy(owner.principal_id)))


@router.put("/default-policy", response_model=PolicyOut, summary="Set a rights holder's default policy",
            responses=error_responses(400, 404, 408))
def put_default_policy(*, body: PolicyBody, principal: DefaultPolicyPrincipal = None, service: ServiceDep,
                       key: Annotated[ApiKey, Depends(require_role("rights_holder", "admin"))]) -> PolicyOut:
    """Consent given once: the policy for every work of the rights holder without a policy of its own,
    now and later registered (a work's own policy still wins)."""
    owner = _default_policy_owner(service, key, principal)
    new = policy_from_body(body)
    service.db.set_principal_policy(owner.principal_id, new)
    return PolicyOut(**{**policy_out(new), "is_default": False})


@router.get("/{work_id}", response_model=WorkOut, summary="Get a work", responses=error_responses(404))
def get_work(work_id: WorkIdPath, service: ServiceDep, key: ManagerKey) -> WorkOut:
    work = managed_work(service, key, work_id)
    return WorkOut(**work_out(work, service.db.effective_policies([work_id]).get(work_id)))


@router.delete("/{work_id}", status_code=204, response_class=Response,
               summary="Delete a work (admin; removes it from the index)", responses=error_responses(404))
def delete_work(work_id: WorkIdPath, service: ServiceDep, _: AdminKey) -> Response:
    """Take the recording out of the index; stored decisions that matched it are kept for the audit."""
    service.delete_work(work_id)
    return Response(status_code=204)


@router.get("/{work_id}/policy", response_model=PolicyOut, summary="Get a work's policy",
            responses=error_responses(404))
def get_policy(work_id: WorkIdPath, service: ServiceDep, key: ManagerKey) -> PolicyOut:
    """The policy in force: the work's own, else its rights holder's default, else the default (`is_default`)."""
    managed_work(service, key, work_id)
    return PolicyOut(**policy_out(service.db.effective_policies([work_id]).get(work_id)))


@router.put("/{work_id}/policy", response_model=PolicyOut, summary="Set a work's AI-use policy",
            responses=error_responses(400, 404, 408))
def put_policy(body: PolicyBody, work_id: WorkIdPath, service: ServiceDep, key: ManagerKey) -> PolicyOut:
    """Replace the work's policy: an action for copies, remixes and covers, the royalty share, and the
    conditions under which a short match is allowed or reviewed instead. A published derivative's
    policy may not be more permissive than its parents allow (422, docs/lineage.md)."""
    managed_work(service, key, work_id)
    new = policy_from_body(body)
    floor = derivative_floor_of(service.db, work_id)
    problem = floor and derivative_policy_problem(new, floor)
    if problem:
        raise ApiError(422, "validation_error", f"work {work_id} is a derivative: {problem}")
    service.db.set_policy(work_id, new)
    return PolicyOut(**policy_out(new))

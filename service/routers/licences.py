"""Licences: the right of one licensee principal to publish some uses of one work, until a date.

Admins manage every licence; a work's owner (a rights holder, or the uploader principal
that published a derivative) grants, lists and revokes the licences of its own works only.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from refrain.service.core import MatchService, licence_out
from refrain.service.db import ApiKey, utc_now
from refrain.service.deps import ServiceDep
from refrain.service.errors import ApiError
from refrain.service.routers import error_responses
from refrain.service.routers.params import LicenceIdPath, LimitQuery, OffsetQuery
from refrain.service.routers.works import ManagerKey, managed_work
from refrain.service.schemas import MAX_DB_INTEGER, LicenceIn, LicenceList, LicenceOut

router = APIRouter(prefix="/v1/licences", tags=["licences"])


@router.post("", status_code=201, response_model=LicenceOut, summary="Grant a licence",
             responses=error_responses(400, 404, 408))
def grant(body: LicenceIn, service: ServiceDep, key: ManagerKey) -> LicenceOut:
    """Grant the principal `licensee` the right to publish the listed uses of a work until
    `valid_until`: uploads made with that principal's keys may rely on it, nobody else's.
    A rights holder grants licences for its own works only (403 for another's)."""
    managed_work(service, key, body.work_id)
    licensee = service.db.get_principal(body.licensee)
    if licensee is None:
        raise ApiError(404, "not_found", f"principal {body.licensee!r} not found: create it (POST /v1/principals "
                                         "or with its first key) before granting it a licence")
    licence = service.db.add_licence(body.work_id, licensee, list(body.uses), body.valid_until)
    return LicenceOut(**licence_out(licence, utc_now()))


@router.get("", response_model=LicenceList, summary="List licences", responses=error_responses(404))
def list_licences(*, work_id: Annotated[int | None, Query(ge=1, le=MAX_DB_INTEGER)] = None,
                  licensee: Annotated[str | None, Query(max_length=200,
                                                        description="The licensee principal's name")] = None,
                  limit: LimitQuery = 50, offset: OffsetQuery = 0, service: ServiceDep,
                  key: ManagerKey) -> LicenceList:
    """Every licence (admins); a work owner names one of its works with `work_id`."""
    if key.role != "admin":
        if work_id is None:
            raise ApiError(422, "validation_error", "name one of your works: ?work_id=ID")
        managed_work(service, key, work_id)
    licences, total = service.db.list_licences(work_id, licensee, limit, offset)
    now = utc_now()
    return LicenceList(items=[LicenceOut(**licence_out(x, now)) for x in licences], total=total,
                       limit=limit, offset=offset)


@router.get("/{licence_id}", response_model=LicenceOut, summary="Get a licence",
            responses=error_responses(404))
def get_licence(licence_id: LicenceIdPath, service: ServiceDep, key: ManagerKey) -> LicenceOut:
    licence = _managed_licence(service, key, licence_id)
    return LicenceOut(**licence_out(licence, utc_now()))


@router.delete("/{licence_id}", response_model=LicenceOut, summary="Revoke a licence",
               responses=error_responses(404))
def revoke(licence_id: LicenceIdPath, service: ServiceDep, key: ManagerKey) -> LicenceOut:
    """Revoke the licence from now on (the record stays, with `revoked_at`; revoking twice is a no-op)."""
    _managed_licence(service, key, licence_id)
    return LicenceOut(**licence_out(service.db.revoke_licence(licence_id), utc_now()))


def _managed_licence(service: MatchService, key: ApiKey, licence_id: str):
    """The licence if the key may manage its work: 404 if unknown, 403 if the work is another's."""
    licence = service.db.get_licence(licence_id)
    if licence is None:
        raise ApiError(404, "not_found", f"licence {licence_id} not found")
    if key.role != "admin":
        managed_work(service, key, licence.work_id)
    return licence

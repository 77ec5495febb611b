"""FastAPI dependencies: the settings, the service core, the job runner, and API-key authentication by role.

Endpoints declare them the ``Annotated`` way, through the aliases below (``service: ServiceDep``,
``key: AnalystKey``); a role set without an alias is declared at the endpoint as
``Annotated[ApiKey, Depends(require_role(...))]``.
"""

from __future__ import annotations

from typing import Annotated, Callable

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from refrain.service.core import MatchService
from refrain.service.db import ApiKey
from refrain.service.errors import ApiError
from refrain.service.jobs import JobRunner
from refrain.service.observability import annotate

__all__ = ["API_KEY_HEADER", "api_key_scheme", "get_service", "get_jobs", "require_role", "admin_only",
           "authenticate", "ServiceDep", "JobsDep", "AdminKey", "AnalystKey", "UploaderKey"]

API_KEY_HEADER = "X-API-Key"

api_key_scheme = APIKeyHeader(
    name=API_KEY_HEADER, scheme_name="ApiKey", auto_error=False,
    description="An API key made with `refrain keys create --role ROLE` or `POST /v1/keys`. "
                "Roles: `uploader` (POST /v1/matches), `analyst` (decisions, evidence, ad-hoc "
                "matches), `admin` (works, policies, licences, keys), `rights_holder` (its own works, their "
                "policies and licences, its default policy, its royalty statement).")


def get_service(request: Request) -> MatchService:
    return request.app.state.service


def get_jobs(request: Request) -> JobRunner:
    return request.app.state.jobs


#: The service core: ``service: ServiceDep``.
ServiceDep = Annotated[MatchService, Depends(get_service)]
#: The asynchronous upload jobs and webhook deliveries: ``jobs: JobsDep``.
JobsDep = Annotated[JobRunner, Depends(get_jobs)]


def authenticate(service: MatchService, key: str | None, roles: tuple[str, ...]) -> ApiKey:
    """The key's record if it is live and has one of ``roles``; else 401 or 403."""
    challenge = {"WWW-Authenticate": f'APIKey header="{API_KEY_HEADER}"'}
    if not key:
        raise ApiError(401, "unauthorized", f"missing API key: send it in the {API_KEY_HEADER} header",
                       challenge)
    record = service.db.authenticate(key)
    if record is None:
        raise ApiError(401, "unauthorized", "unknown or revoked API key", challenge)
    annotate(principal=record.prefix, role=record.role)
    if record.role not in roles:
        raise ApiError(403, "forbidden", f"this operation needs the {' or '.join(roles)} role; "
                                         f"this key has the {record.role} role")
    return record


def require_role(*roles: str) -> Callable[..., ApiKey]:
    """A dependency admitting only live keys of one of ``roles`` (401 otherwise, 403 for another role)."""

    def dependency(key: Annotated[str | None, Security(api_key_scheme)], service: ServiceDep) -> ApiKey:
        return authenticate(service, key, roles)

    return dependency


#: The admin role's dependency, one object: a router that requires it for every route and a route that also
#: takes the key (``AdminKey``) authenticate once per request (FastAPI caches a dependency per request).
admin_only = require_role("admin")

#: The caller's key record, admitted with this role only (401 without a live key, 403 with another role).
AdminKey = Annotated[ApiKey, Depends(admin_only)]
AnalystKey = Annotated[ApiKey, Depends(require_role("analyst"))]
UploaderKey = Annotated[ApiKey, Depends(require_role("uploader"))]

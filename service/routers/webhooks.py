"""Webhooks (admin): receivers of signed notifications when a stored decision changes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Response

from refrain.service.deps import ServiceDep, admin_only
from refrain.service.errors import ApiError
from refrain.service.routers import error_responses
from refrain.service.schemas import WebhookIn, WebhookList, WebhookOut
from refrain.service.webhooks import notify

__all__ = ["router", "notify"]

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks (admin)"], dependencies=[Depends(admin_only)])


def _out(hook) -> WebhookOut:
    return WebhookOut(webhook_id=hook.webhook_id, url=hook.url, events=hook.events, created_at=hook.created_at)


@router.post("", status_code=201, response_model=WebhookOut, summary="Register a webhook",
             responses=error_responses(400))
def create_webhook(body: WebhookIn, service: ServiceDep) -> WebhookOut:
    """Each event of `events` is POSTed to `url` as JSON signed with `secret` (`X-Refrain-Signature`),
    retried on failure; every attempt is kept in the delivery log."""
    return _out(service.db.add_webhook(body.url, sorted(set(body.events)), body.secret))


@router.get("", response_model=WebhookList, summary="List webhooks (without their secrets)",
            responses=error_responses())
def list_webhooks(service: ServiceDep) -> WebhookList:
    return WebhookList(items=[_out(hook) for hook in service.db.list_webhooks()])


@router.delete("/{webhook_id}", status_code=204, response_class=Response, summary="Remove a webhook",
               responses=error_responses(404))
def delete_webhook(webhook_id: Annotated[str, Path(max_length=100)], service: ServiceDep) -> Response:
    if not service.db.delete_webhook(webhook_id):
        raise ApiError(404, "not_found", f"webhook {webhook_id} not found")
    return Response(status_code=204)

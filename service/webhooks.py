"""Webhooks: JSON bodies signed with HMAC-SHA256, delivered with retries, every attempt logged.

A receiver checks a delivery with :func:`verify` (or by hand: HMAC-SHA256 with the
shared secret over ``"<t>." + body``, compared with ``v1`` of the
``X-Refrain-Signature: t=<unix seconds>,v1=<hex>`` header; refuse old ``t`` to stop
replays). Every webhook the service sends — completed upload jobs, and decision
changes — goes through :func:`deliver`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import httpx

from refrain.service.db import ServiceDB
from refrain.service.settings import ServiceSettings

__all__ = ["SIGNATURE_HEADER", "EVENT_HEADER", "DELIVERY_HEADER", "Delivery", "DeliveryLog", "sign", "verify",
           "deliver", "notify"]

SIGNATURE_HEADER = "X-Refrain-Signature"
EVENT_HEADER = "X-Refrain-Event"
DELIVERY_HEADER = "X-Refrain-Delivery"


def _key(secret: str | bytes) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else secret


def sign(secret: str | bytes, body: bytes, timestamp: int | None = None) -> str:
    """The ``X-Refrain-Signature`` value of ``body``: ``t=<unix seconds>,v1=<HMAC-SHA256 hex>``.

    Parameters
    ----------
    secret : str or bytes
        The key shared with the receiver.
    body : bytes
        The exact bytes sent.
    timestamp : int, optional
        Signing time in Unix seconds (default: now); it is signed with the body.
    """
    moment = int(time.time()) if timestamp is None else int(timestamp)
    mac = hmac.new(_key(secret), f"{moment}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={moment},v1={mac}"


def verify(secret: str | bytes, body: bytes, signature: str, tolerance_seconds: float = 300.0,
           now: float | None = None) -> bool:
    """Whether ``signature`` (an ``X-Refrain-Signature`` value) signs ``body`` with ``secret``, recently.

    Parameters
    ----------
    tolerance_seconds : float
        Oldest signature accepted (default 5 min), against replays.
    now : float, optional
        The current Unix time (default: the clock).
    """
    parts = dict(part.split("=", 1) for part in signature.split(",") if "=" in part)
    try:
        moment = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - moment) > tolerance_seconds:
        return False
    expected = sign(secret, body, moment).split(",v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


@dataclass(frozen=True)
class Delivery:
    """How one webhook's delivery went.

    Attributes
    ----------
    delivery_id : str
        Sent as ``X-Refrain-Delivery`` and in the body; a receiver can drop repeats by it.
    delivered : bool
        A 2xx answer was received.
    attempts : int
    last_status : int or None
        HTTP status of the last attempt (None: no answer, see ``last_error``).
    last_error : str or None
    """

    delivery_id: str
    url: str
    event: str
    delivered: bool
    attempts: int
    last_status: int | None
    last_error: str | None

    def to_dict(self) -> dict:
        return dict(vars(self))


class DeliveryLog:
    """Every delivery attempt, kept in the SQLite database at ``path`` (table ``webhook_attempts``)."""

    def __init__(self, path: Path):
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS webhook_attempts (delivery_id TEXT NOT NULL,"
                         " attempt INTEGER NOT NULL, url TEXT NOT NULL, event TEXT NOT NULL, at TEXT NOT NULL,"
                         " status INTEGER, error TEXT, PRIMARY KEY (delivery_id, attempt))")

    def record(self, delivery_id: str, attempt: int, url: str, event: str, status: int | None,
               error: str | None) -> None:
        with self._lock:
            self._db.execute("INSERT INTO webhook_attempts VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (delivery_id, attempt, url, event, datetime.now(timezone.utc).isoformat(),
                              status, error))

    def attempts(self, delivery_id: str) -> list[dict]:
        """The attempts of one delivery, in order: attempt, url, event, at, status, error."""
        with self._lock:
            rows = self._db.execute("SELECT attempt, url, event, at, status, error FROM webhook_attempts"
                                    " WHERE delivery_id = ? ORDER BY attempt", (delivery_id,)).fetchall()
        return [dict(zip(("attempt", "url", "event", "at", "status", "error"), row)) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _worth_retrying(status: int) -> bool:
    # A 4xx other than 408/429 means the receiver refuses this webhook: retrying will not help.
    return status >= 500 or status in (408, 429)


def deliver(url: str, event: str, payload: dict, secret: str | bytes, *, attempts: int = 5,
            backoff_seconds: float = 1.0, timeout_seconds: float = 10.0, log: DeliveryLog | None = None,
            sleep: Callable[[float], None] = time.sleep) -> Delivery:
    """POST a signed JSON webhook to ``url``, retrying connection failures, timeouts, 408, 429 and 5xx.

    The body is ``{"delivery_id", "event", "created_at", "data": payload}``; headers
    ``X-Refrain-Event``, ``X-Refrain-Delivery`` and ``X-Refrain-Signature`` (see
    :func:`sign`; re-signed on each attempt). Redirects are not followed.

    Parameters
    ----------
    url : str
        The receiver (http or https).
    event : str
        The event name, e.g. ``match.completed``.
    payload : dict
        JSON-serialisable data (datetimes are sent as ISO 8601 strings).
    secret : str or bytes
    attempts : int
        Attempts before giving up (default 5).
    backoff_seconds : float
        Wait after the first failed attempt, doubled after each next one.
    timeout_seconds : float
        Time allowed per attempt.
    log : DeliveryLog, optional
        Where each attempt is recorded.
    sleep : callable
        How to wait between attempts (tests pass a fake).

    Returns
    -------
    Delivery
    """
    delivery_id = "dlv_" + secrets.token_urlsafe(12)
    body = json.dumps({"delivery_id": delivery_id, "event": event,
                       "created_at": datetime.now(timezone.utc).isoformat(), "data": payload},
                      default=lambda value: value.isoformat() if isinstance(value, datetime) else str(value)
                      ).encode()
    status = error = None
    attempt = 0
    with httpx.Client(timeout=timeout_seconds, follow_redirects=False) as client:
        for attempt in range(1, attempts + 1):
            headers = {"Content-Type": "application/json", EVENT_HEADER: event, DELIVERY_HEADER: delivery_id,
                       SIGNATURE_HEADER: sign(secret, body)}
            try:
                status, error = client.post(url, content=body, headers=headers).status_code, None
            except httpx.HTTPError as err:
                status, error = None, f"{type(err).__name__}: {err}"
            if status is not None and not 200 <= status < 300:
                error = f"HTTP {status}"
            if log is not None:
                log.record(delivery_id, attempt, url, event, status, error)
            if error is None or (status is not None and not _worth_retrying(status)):
                break
            if attempt < attempts:
                sleep(backoff_seconds * 2 ** (attempt - 1))
    return Delivery(delivery_id, url, event, delivered=error is None, attempts=attempt, last_status=status,
                    last_error=error)


def notify(db: ServiceDB, settings: ServiceSettings, log: DeliveryLog | None, event: str,
           payload: dict) -> list[Delivery]:
    """Deliver ``event`` to every webhook an admin subscribed to it (each signed with its own secret, retried
    and logged as :func:`deliver` does, with the settings' attempts, backoff and timeout); one by one."""
    return [deliver(hook.url, event, payload, hook.secret, attempts=settings.webhook_attempts,
                    backoff_seconds=settings.webhook_backoff_seconds,
                    timeout_seconds=settings.webhook_timeout_seconds, log=log)
            for hook in db.list_webhooks(event)]

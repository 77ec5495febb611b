"""Assertions and request helpers shared by the service tests (imported as a plain module)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import httpx

#: The AI studio the tests grant licences to: the principal of the suite's uploader key.
LICENSEE = "studio-ai"


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    """The response is a JSON error body with this status (and code)."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"code", "message", "details", "request_id"}, body
    assert body["request_id"] == response.headers["X-Request-ID"], (body, response.headers)
    assert isinstance(body["message"], str) and body["message"], body
    if code is not None:
        assert body["code"] == code, body
    return body


def post_file(client: httpx.Client, url: str, path: Path, **data) -> httpx.Response:
    with open(path, "rb") as handle:
        return client.post(url, files={"file": (path.name, handle, "application/octet-stream")},
                           data={k: v for k, v in data.items() if v is not None})


def grant(admin: httpx.Client, work_id: int, uses: list[str], licensee: str = LICENSEE,
          valid_until: datetime | None = None) -> dict:
    """Grant a licence to the uploader principal ``licensee`` (made if missing) through the API; return it."""
    made = admin.post("/v1/principals", json={"name": licensee, "kind": "uploader"})
    assert made.status_code == 201, made.text
    made = admin.post("/v1/licences", json={"work_id": work_id, "licensee": licensee, "uses": uses,
                                            "valid_until": valid_until.isoformat() if valid_until else None})
    assert made.status_code == 201, made.text
    return made.json()


def register(admin: httpx.Client, path: Path, title: str, rights_holder: str, **extra) -> httpx.Response:
    """``POST /v1/works`` with this recording (``extra``: more form fields); the response."""
    with open(path, "rb") as handle:
        return admin.post("/v1/works", files={"file": (path.name, handle, "application/octet-stream")},
                          data={"title": title, "artists": ["Someone"], "rights_holder": rights_holder, **extra})

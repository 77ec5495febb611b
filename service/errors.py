"""The one error type routes raise, rendered as the JSON body of :class:`service.schemas.ErrorBody`."""

from __future__ import annotations

__all__ = ["ApiError"]


class ApiError(Exception):
    """An HTTP error with a stable machine-readable ``code`` and a message for people.

    Parameters
    ----------
    status : int
        HTTP status code.
    code : str
        Stable identifier (``not_found``, ``payload_too_large``, ...), documented in
        ``docs/service.md``.
    message : str
        One sentence saying what was wrong and, where it helps, what to do.
    headers : dict, optional
        Extra response headers (``WWW-Authenticate`` on 401).
    details : list of dict, optional
        Structured facts behind the error (e.g. the conflicting works of a 409).
    """

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None,
                 details: list[dict] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.details = details

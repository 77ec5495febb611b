"""What keeps one client, or many, from exhausting the service: body timeouts, upload and analysis admission.

Limits uvicorn enforces itself (keep-alive timeout, concurrent connections) are set
from the same settings by ``refrain serve``; the rest live here:

- :func:`header_timeout_protocol` closes connections whose request headers do not
  arrive in time (uvicorn has no such timeout).
- :class:`BodyTimeoutMiddleware` bounds how long a request body may take, in total
  and between two chunks: a stalled upload gets 408 and its connection is closed.
- :class:`Admission` counts uploads in flight and the audio seconds being analysed;
  past either limit the request gets 503 with ``Retry-After`` instead of queueing,
  so memory stays bounded (each analysed second of audio costs a known amount).
- :class:`SecurityHeadersMiddleware` adds the browser protections HTML pages need.
"""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import contextmanager
from typing import Iterator

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from refrain.service.errors import ApiError

__all__ = ["Admission", "BodyTimeout", "header_timeout_protocol", "BodyTimeoutMiddleware", "SecurityHeadersMiddleware",
           "HTML_SECURITY_HEADERS", "DOCS_SECURITY_HEADERS"]


def header_timeout_protocol(seconds: float) -> type[H11Protocol]:
    """Uvicorn's HTTP/1.1 protocol, closing a connection whose request headers take over ``seconds``.

    Uvicorn closes idle keep-alive connections, but not one that sends nothing, or half
    its headers (a byte is enough to cancel its keep-alive timer): each would hold a file
    descriptor for ever. Pass the class as ``uvicorn.run(..., http=...)``.
    """

    class HeaderTimeoutProtocol(H11Protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._await_headers()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._await_headers()

        def _await_headers(self) -> None:
            # A new request (its headers complete) replaces ``cycle``: if it has not by then, close.
            awaited = self.cycle

            def check() -> None:
                if self.cycle is awaited and not self.transport.is_closing():
                    self.transport.close()

            self.loop.call_later(seconds, check)

    return HeaderTimeoutProtocol


class BodyTimeout(HTTPException):
    """The request body did not arrive in time (408).

    An HTTP exception, not an :class:`ApiError`: FastAPI turns any other error raised
    while it reads a JSON body into a 400.
    """

    def __init__(self, message: str):
        # Without "close" uvicorn would keep the half-read connection until its keep-alive timeout.
        super().__init__(408, message, headers={"Connection": "close"})


class BodyTimeoutMiddleware:
    """Bound the time to receive a request body: ``idle`` s between chunks, ``total`` s in all.

    Uvicorn has a keep-alive timeout but none for a body that stops arriving; without
    this, a client that sends headers and then nothing holds its connection (and an
    upload slot) for ever. After the 408 the connection cannot be reused (the body was
    not read to its end), so the server closes it.
    """

    def __init__(self, app: ASGIApp, idle: float, total: float):
        self.app, self.idle, self.total = app, idle, total

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = time.monotonic() + self.total
        body_done = False

        async def timed_receive() -> Message:
            nonlocal body_done
            if body_done:  # after the body, receive() only waits for a disconnect: no limit
                return await receive()
            left = deadline - time.monotonic()
            try:
                message = await asyncio.wait_for(receive(), max(min(self.idle, left), 0.0))
            except TimeoutError:
                raise BodyTimeout(f"the request body stalled: no data for {self.idle:g} s" if self.idle < left
                                  else f"the request body took longer than {self.total:g} s") from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        await self.app(scope, timed_receive, send)


#: Sent with every HTML page: no framing, no content sniffing, no third-party content, no script. Media from
#: this origin only: the analyst page plays the matched spans.
HTML_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src 'self' data:; media-src 'self'; "
                               "style-src 'self' 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; "
                               "base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
#: The API documentation pages run Swagger UI / ReDoc: scripts (their bundles and the inline
#: call that starts them), the OpenAPI fetch and ReDoc's worker, all from this origin.
DOCS_PATHS = ("/docs", "/redoc")
DOCS_SECURITY_HEADERS = {
    **HTML_SECURITY_HEADERS,
    "Content-Security-Policy": "default-src 'none'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                               "script-src 'self' 'unsafe-inline'; worker-src 'self' blob:; connect-src 'self'; "
                               "font-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
}


class SecurityHeadersMiddleware:
    """``nosniff`` on every response; a strict CSP (no script but on the API docs) and no framing on HTML ones."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                is_html = any(name.lower() == b"content-type" and value.startswith(b"text/html")
                              for name, value in headers)
                if not is_html:
                    extra = {"X-Content-Type-Options": "nosniff"}
                else:
                    extra = DOCS_SECURITY_HEADERS if scope["path"] in DOCS_PATHS else HTML_SECURITY_HEADERS
                headers += [(name.lower().encode(), value.encode()) for name, value in extra.items()
                            if name.lower().encode() not in names]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class Admission:
    """Counts uploads in flight and audio seconds under analysis; refuses (503) past the limits.

    Parameters
    ----------
    max_uploads : int
        Uploads receiving or being analysed at once.
    budget_seconds : float
        Seconds of audio being decoded and analysed at once.
    retry_after : int
        Seconds a refused client is told to wait (``Retry-After``).
    """

    def __init__(self, max_uploads: int, budget_seconds: float, retry_after: int):
        self.max_uploads, self.budget_seconds, self.retry_after = max_uploads, budget_seconds, retry_after
        self._lock = threading.Lock()
        self.uploads = 0
        self.seconds = 0.0

    def _busy(self, message: str) -> ApiError:
        # "close": the refused upload's body may be unread, the connection cannot serve another request.
        return ApiError(503, "busy", f"{message}; retry in {self.retry_after} s",
                        {"Retry-After": str(self.retry_after), "Connection": "close"})

    @contextmanager
    def upload(self) -> Iterator[None]:
        """Hold one upload slot for the ``with`` block (503 if none is free or the analysis budget is spent).

        Refusing before the body is read spares the client sending, and the service
        spooling, an upload that could not be analysed anyway.
        """
        with self._lock:
            if self.uploads >= self.max_uploads:
                raise self._busy(f"the service is receiving its limit of {self.max_uploads} uploads")
            if self.seconds >= self.budget_seconds:
                raise self._busy(f"the service is analysing its budget of {self.budget_seconds:.0f} s of audio")
            self.uploads += 1
        try:
            yield
        finally:
            with self._lock:
                self.uploads -= 1

    @contextmanager
    def analysis(self, seconds: float) -> Iterator[None]:
        """Reserve ``seconds`` of the analysis budget for the ``with`` block (503 if it would run over).

        A request for more than the whole budget is admitted alone (it reserves all of it).
        """
        seconds = min(seconds, self.budget_seconds)
        with self._lock:
            if self.seconds + seconds > self.budget_seconds:
                raise self._busy(f"the service is analysing {self.seconds:.0f} s of audio, its budget is "
                                 f"{self.budget_seconds:.0f} s and this upload needs {seconds:.0f} s")
            self.seconds += seconds
        try:
            yield
        finally:
            with self._lock:
                self.seconds -= seconds

"""Multipart uploads streamed to a temporary file, refused with 413 as soon as they run over.

FastAPI's ``UploadFile`` parses the whole request body (spooling it to disk)
before the endpoint runs, so a 5 GB upload would be received in full before it
could be refused. Here the body is fed chunk by chunk to ``python-multipart``'s
streaming parser; the file part goes straight to a temporary file and the running
byte count is checked on every chunk.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from refrain.service.errors import ApiError

__all__ = ["ReceivedForm", "receive_form", "safe_suffix", "FIELD_MAX_BYTES", "FILENAME_MAX_CHARS"]

log = logging.getLogger("refrain.service")

FIELD_MAX_BYTES = 8 * 1024      # a text field (title, uploader id, ...) longer than this is refused
FILENAME_MAX_CHARS = 255        # what most file systems accept for one name
MAX_FIELDS = 64
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,15}$")


def safe_suffix(filename: str) -> str:
    """The filename's extension if it is plain (dot, letters and digits), lower-cased; else ''.

    Stored and temporary files are named by the service: only this much of the
    client's name reaches the file system (decoders may go by the extension).
    """
    found = _SUFFIX.search(filename)
    return found.group(0).lower() if found else ""
# Room for the form's text fields and part headers on top of the file's own limit.
FORM_OVERHEAD_BYTES = MAX_FIELDS * FIELD_MAX_BYTES


@dataclass
class ReceivedForm:
    """A parsed multipart form: its text fields and the one file part, on disk.

    Use as a context manager (or call :meth:`discard`) so the temporary file is removed.
    """

    fields: dict[str, list[str]] = field(default_factory=dict)
    file_path: Path | None = None
    filename: str | None = None
    file_bytes: int = 0
    digest: Any = field(default_factory=hashlib.sha256, repr=False)  # hashlib object

    @property
    def sha256(self) -> str:
        """SHA-256 hex of the file part, computed while it streamed in."""
        return self.digest.hexdigest()

    def first(self, name: str) -> str | None:
        """The first value of a text field, or None; empty values count as absent."""
        values = [v for v in self.fields.get(name, []) if v.strip()]
        return values[0].strip() if values else None

    def all(self, name: str) -> list[str]:
        """Every non-empty value of a repeatable text field."""
        return [v.strip() for v in self.fields.get(name, []) if v.strip()]

    def discard(self) -> None:
        if self.file_path is not None:
            self.file_path.unlink(missing_ok=True)

    def __enter__(self) -> "ReceivedForm":
        return self

    def __exit__(self, *exc) -> None:
        self.discard()


def _too_large(max_file_bytes: int) -> ApiError:
    return ApiError(413, "payload_too_large",
                    f"the upload is larger than the limit of {max_file_bytes:,} bytes")


class _FormCollector:
    """python-multipart callbacks that fill a :class:`ReceivedForm`."""

    def __init__(self, form: ReceivedForm, file_field: str, max_file_bytes: int, temp_dir: Path):
        self.form = form
        self.file_field = file_field
        self.max_file_bytes = max_file_bytes
        self.temp_dir = temp_dir
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._value = bytearray()
        self._handle = None
        self.n_parts = 0

    def callbacks(self) -> dict:
        return {"on_part_begin": self.part_begin, "on_header_field": self.header_field,
                "on_header_value": self.header_value, "on_header_end": self.header_end,
                "on_headers_finished": self.headers_finished, "on_part_data": self.part_data,
                "on_part_end": self.part_end}

    def part_begin(self) -> None:
        self.n_parts += 1
        if self.n_parts > MAX_FIELDS:
            raise ApiError(413, "payload_too_large", f"the form has more than {MAX_FIELDS} parts")
        self._headers, self._name, self._value = {}, None, bytearray()

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def header_end(self) -> None:
        self._headers[bytes(self._header_field).lower()] = bytes(self._header_value)
        self._header_field, self._header_value = bytearray(), bytearray()

    def headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        if self._name == self.file_field:
            if self.form.file_path is not None:
                raise ApiError(400, "bad_request", f"the form has more than one {self.file_field!r} part")
            filename = options.get(b"filename", b"").decode("utf-8", "replace")
            # Only the last path component: browsers on some systems send full paths.
            filename = os.path.basename(filename.replace("\\", "/")) or "upload"
            if _CONTROL_CHARACTERS.search(filename):
                raise ApiError(400, "bad_request", "the file name contains control characters (such as NUL)")
            if len(filename) > FILENAME_MAX_CHARS:
                raise ApiError(400, "bad_request", f"the file name is longer than {FILENAME_MAX_CHARS} characters")
            self.form.filename = filename
            handle = tempfile.NamedTemporaryFile(prefix="refrain-upload-", dir=self.temp_dir,
                                                 suffix=safe_suffix(filename), delete=False)
            self.form.file_path = Path(handle.name)
            self._handle = handle

    def part_data(self, data: bytes, start: int, end: int) -> None:
        if self._handle is not None:
            self.form.file_bytes += end - start
            if self.form.file_bytes > self.max_file_bytes:
                raise _too_large(self.max_file_bytes)
            self._handle.write(data[start:end])
            self.form.digest.update(data[start:end])
        else:
            self._value += data[start:end]
            if len(self._value) > FIELD_MAX_BYTES:
                raise ApiError(413, "payload_too_large",
                               f"form field {self._name!r} is longer than {FIELD_MAX_BYTES} bytes")

    def part_end(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        elif self._name:
            try:
                value = bytes(self._value).decode("utf-8")
            except UnicodeDecodeError:
                raise ApiError(400, "bad_request", f"form field {self._name!r} is not UTF-8 text") from None
            self.form.fields.setdefault(self._name, []).append(value)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


async def receive_form(request: Request, max_file_bytes: int, temp_dir: Path,
                       file_field: str = "file") -> ReceivedForm:
    """Stream a ``multipart/form-data`` request body; the file part is written to a temp file in ``temp_dir``.

    ``temp_dir`` is the service's own upload folder, so that files a killed process
    left behind are known to be its own (and deleted at the next start).

    Raises
    ------
    ApiError
        415 when the body is not multipart/form-data; 413 as soon as the file part
        passes ``max_file_bytes`` (or a declared ``Content-Length`` says it will);
        400 for a malformed form, an empty file, or a missing file part.
    """
    media_type, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if media_type != b"multipart/form-data" or not boundary:
        raise ApiError(415, "unsupported_media_type",
                       f"send the audio as multipart/form-data with a {file_field!r} part "
                       f"(got Content-Type {request.headers.get('content-type') or 'none'!r})")
    body_limit = max_file_bytes + FORM_OVERHEAD_BYTES
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > body_limit:
        # Refuse before reading a byte: the client said how much it will send.
        raise _too_large(max_file_bytes)

    form = ReceivedForm()
    collector = _FormCollector(form, file_field, max_file_bytes, temp_dir)
    parser = MultipartParser(boundary, collector.callbacks())
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > body_limit:
                raise _too_large(max_file_bytes)
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as err:
        form.discard()
        raise ApiError(400, "bad_request", f"malformed multipart/form-data body ({err})") from None
    except ClientDisconnect:
        form.discard()
        # Routine on real networks: one line, no traceback; nobody is left to read an answer.
        log.info("client went away during %s %s after %d bytes", request.method, request.url.path, received)
        raise ApiError(400, "client_disconnected", "the client closed the connection during the upload") from None
    except BaseException:
        form.discard()
        raise
    finally:
        collector.close()
    if form.file_path is None:
        raise ApiError(400, "bad_request", f"the form has no {file_field!r} file part"
                       + (" (the request body is empty)" if received == 0 else ""))
    if form.file_bytes == 0:
        form.discard()
        raise ApiError(400, "empty_upload", f"the uploaded file {form.filename!r} is empty (0 bytes)")
    return form

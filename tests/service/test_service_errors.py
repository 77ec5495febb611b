"""Role boundaries, bad input and the OpenAPI document: every error is a JSON body, never a 500."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import numpy as np
import pytest
from conftest import MAX_UPLOAD_BYTES, MAX_UPLOAD_SECONDS
from pydantic import BaseModel
from service_helpers import assert_error, post_file

from refrain.service import schemas as service_schemas

#: (method, path, the one role allowed). Ids are unknown or harmless: a wrong role must
#: be refused before anything is looked up or changed.
ENDPOINTS = [
    ("POST", "/v1/works", "admin"), ("GET", "/v1/works", "admin"), ("GET", "/v1/works/1", "admin"),
    ("DELETE", "/v1/works/99999", "admin"), ("GET", "/v1/works/1/policy", "admin"),
    ("PUT", "/v1/works/1/policy", "admin"), ("POST", "/v1/licences", "admin"),
    ("GET", "/v1/licences", "admin"), ("GET", "/v1/licences/lic_x", "admin"),
    ("DELETE", "/v1/licences/lic_x", "admin"), ("POST", "/v1/keys", "admin"), ("GET", "/v1/keys", "admin"),
    ("DELETE", "/v1/keys/rk_x", "admin"), ("POST", "/v1/matches", "uploader"),
    ("POST", "/v1/matches/adhoc", "analyst"), ("GET", "/v1/matches", "analyst"),
    ("GET", "/v1/matches/dec_x", "analyst"), ("GET", "/v1/matches/dec_x/spectrogram/1", "analyst"),
]
ROLES = ("uploader", "analyst", "admin")


def _request(client, method: str, path: str, **headers):
    if method in ("POST", "PUT"):
        body = {"copy": "deny", "remix": "deny", "cover": "deny", "royalty_share": 0}
        if path.endswith(("works", "matches", "adhoc")):
            return client.request(method, path, files={"file": ("a.wav", b"RIFF", "audio/wav")},
                                  headers=headers)
        return client.request(method, path, json=body, headers=headers)
    return client.request(method, path, headers=headers)


@pytest.mark.parametrize("method, path, allowed", ENDPOINTS)
def test_missing_wrong_and_revoked_keys_get_401_other_roles_403(method, path, allowed, live_service):
    with live_service.client() as anonymous:
        body = assert_error(_request(anonymous, method, path), 401, "unauthorized")
        assert "X-API-Key" in body["message"]
        assert_error(_request(anonymous, method, path, **{"X-API-Key": "rk_not-a-key"}), 401, "unauthorized")
    for role in ROLES:
        if role != allowed:
            with live_service.client(role) as client:
                body = assert_error(_request(client, method, path), 403, "forbidden")
                assert allowed in body["message"] and role in body["message"]


def test_an_empty_file_or_body_is_400(uploader, upload_dir):
    empty = upload_dir / "empty.wav"
    empty.write_bytes(b"")
    assert "empty" in assert_error(post_file(uploader, "/v1/matches", empty), 400, "empty_upload")["message"]
    no_body = uploader.post("/v1/matches", content=b"",
                            headers={"Content-Type": "multipart/form-data; boundary=xyz"})
    assert "empty" in assert_error(no_body, 400)["message"]
    no_file = uploader.post("/v1/matches", files={"other": ("a.txt", b"x")})
    assert "'file'" in assert_error(no_file, 400)["message"]


def test_a_body_that_is_not_a_form_is_415(uploader):
    body = assert_error(uploader.post("/v1/matches", json={"file": "x"}), 415, "unsupported_media_type")
    assert "multipart/form-data" in body["message"]


@pytest.mark.parametrize("name, content, reason", [
    ("notes.txt", b"this is not audio at all\n" * 50, "not a readable audio file"),
    ("fake.mp3", b"\xff\xfb" + bytes(range(256)) * 20, "audio"),
    ("cut.wav", None, "truncated"),
])
def test_undecodable_uploads_are_415_with_the_decoders_reason(name, content, reason, uploader, upload_dir,
                                                             songs, live_service):
    path = upload_dir / name
    path.write_bytes(content if content is not None else songs[30].path.read_bytes()[:50_000])
    for client, url in ((uploader, "/v1/matches"), (None, "/v1/works")):
        if client is None:
            with live_service.client("admin") as admin:
                done = post_file(admin, url, path, title="t", artists="a", rights_holder="r")
        else:
            done = post_file(client, url, path)
        body = assert_error(done, 415, "undecodable_audio")
        assert reason in body["message"] and body["message"].startswith(name), body
        assert str(upload_dir) not in body["message"] and "refrain-upload" not in body["message"]


def test_silent_audio_is_422_with_the_reason(uploader, upload_dir, write_audio):
    path = write_audio(upload_dir / "silence.wav", np.zeros(22050 * 5, dtype=np.float32))
    body = assert_error(post_file(uploader, "/v1/matches", path), 422, "unusable_audio")
    assert "silence.wav" in body["message"] and "silent" in body["message"]


def test_audio_over_the_duration_limit_is_413(uploader, upload_dir, write_audio):
    seconds = MAX_UPLOAD_SECONDS + 10
    path = write_audio(upload_dir / "long.wav", np.zeros(int(8000 * seconds), dtype=np.float32), sr=8000)
    assert path.stat().st_size < MAX_UPLOAD_BYTES  # the duration, not the size, is what is over
    body = assert_error(post_file(uploader, "/v1/matches", path), 413, "audio_too_long")
    assert "over the limit" in body["message"]


def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    """Read one HTTP/1.1 response (status, body) whose length is given by Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed in the middle of the response body"
        body += chunk
    return int(lines[0].split()[1]), body[:length]


def _open(live_service, headers: dict[str, str]) -> socket.socket:
    url = urlsplit(live_service.url)
    sock = socket.create_connection((url.hostname, url.port), timeout=10)
    head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": url.netloc, **headers}.items())
    sock.sendall(f"POST /v1/matches HTTP/1.1\r\n{head}\r\n".encode())
    return sock


def test_an_upload_announced_over_the_size_limit_is_413_before_its_body_is_sent(live_service):
    with _open(live_service, {"X-API-Key": live_service.keys["uploader"],
                              "Content-Type": "multipart/form-data; boundary=b0undary",
                              "Content-Length": str(200 * MAX_UPLOAD_BYTES)}) as sock:
        status, body = _read_response(sock)  # not one byte of the body was sent
    assert status == 413 and b"payload_too_large" in body


def test_a_streamed_upload_over_the_size_limit_is_refused_while_it_streams(live_service):
    """Chunked, with no length announced, and never finished: only a streaming server can answer."""
    boundary = "b0undary"
    sock = _open(live_service, {"X-API-Key": live_service.keys["uploader"],
                                "Content-Type": f"multipart/form-data; boundary={boundary}",
                                "Transfer-Encoding": "chunked"})
    with sock:
        def send_chunk(payload: bytes) -> None:
            sock.sendall(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")

        send_chunk(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n'
                   f'Content-Type: audio/wav\r\n\r\n'.encode())
        block, sent = b"\0" * 65536, 0
        sock.settimeout(2)
        try:
            while sent < MAX_UPLOAD_BYTES + 1_000_000:  # past the limit, yet far from any end
                send_chunk(block)
                sent += len(block)
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            pass  # the server stopped reading: it has refused the upload
        sock.settimeout(10)
        status, body = _read_response(sock)
    assert status == 413 and b"payload_too_large" in body, body


def test_unknown_ids_are_404(live_service, uploader, excerpt_file):
    with live_service.client("admin") as admin:
        for path in ("/v1/works/99999", "/v1/works/99999/policy", "/v1/licences/lic_nothing"):
            assert_error(admin.get(path), 404, "not_found")
    with live_service.client("analyst") as analyst:
        assert_error(analyst.get("/v1/matches/dec_nothing"), 404, "not_found")
        assert_error(analyst.get("/v1/matches/dec_nothing/spectrogram/1"), 404, "not_found")
    declared = post_file(uploader, "/v1/matches", excerpt_file(30, 8.0, 10.0), licence_id="lic_nothing")
    assert "lic_nothing" in assert_error(declared, 404, "not_found")["message"]
    assert_error(uploader.get("/v1/no-such-endpoint"), 404, "not_found")


def test_wrong_parameter_values_are_422(live_service, uploader, excerpt_file):
    with live_service.client("analyst") as analyst:
        for params in ({"verdict": "bogus"}, {"limit": 0}, {"limit": 100000}, {"offset": -1},
                       {"since": "yesterday"}, {"work_id": "one"}):
            body = assert_error(analyst.get("/v1/matches", params=params), 422, "validation_error")
            assert body["details"], body
    with live_service.client("admin") as admin:
        assert_error(admin.get("/v1/works/abc"), 422, "validation_error")
        assert_error(admin.get("/v1/works/0"), 422, "validation_error")
    too_long = post_file(uploader, "/v1/matches", excerpt_file(30, 8.0, 10.0), uploader_id="u" * 300)
    assert_error(too_long, 422, "validation_error")


def test_a_wrong_method_is_a_json_405(uploader):
    assert_error(uploader.patch("/v1/matches"), 405, "method_not_allowed")


def test_the_openapi_document_has_every_path_schema_error_and_the_key_scheme(live_service):
    with live_service.client() as client:
        document = client.get("/openapi.json").json()
    paths = document["paths"]
    for method, path, _ in ENDPOINTS:
        template = (path.replace("/1/", "/{work_id}/").replace("/99999", "/{work_id}")
                    .replace("/v1/works/1", "/v1/works/{work_id}").replace("lic_x", "{licence_id}")
                    .replace("rk_x", "{prefix}").replace("dec_x", "{decision_id}")
                    .replace("spectrogram/1", "spectrogram/{track_id}"))
        if template.startswith("/v1/matches/{decision_id}/spectrogram"):
            template = "/v1/matches/{decision_id}/spectrogram/{track_id}"
        assert method.lower() in paths.get(template, {}), (method, template, sorted(paths))
    assert "/v1/health" in paths
    assert document["components"]["securitySchemes"]["ApiKey"] == {
        "type": "apiKey", "in": "header", "name": "X-API-Key",
        "description": document["components"]["securitySchemes"]["ApiKey"]["description"]}
    schemas = document["components"]["schemas"]
    models = {name for name in service_schemas.__all__
              if isinstance(getattr(service_schemas, name), type)
              and issubclass(getattr(service_schemas, name), BaseModel)}
    assert models <= set(schemas), models - set(schemas)
    for path, operations in paths.items():
        for method, operation in operations.items():
            if path.startswith("/v1/health"):
                continue
            assert operation.get("security")[0] == {"ApiKey": []}, (method, path)
            for status in ("401", "403", "422"):
                content = operation["responses"][status]["content"]["application/json"]["schema"]
                assert content == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, status)
    for path, form in (("/v1/works", "WorkUploadForm"), ("/v1/matches", "MatchUploadForm"),
                       ("/v1/matches/adhoc", "MatchUploadForm")):
        body = paths[path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert body == {"$ref": f"#/components/schemas/{form}"}
    assert schemas["MatchUploadForm"]["properties"]["file"]["format"] == "binary"

"""Property-based fuzzing of the whole HTTP API from its OpenAPI (schemathesis): every operation, every role.

Valid and invalid requests alike (ids past SQLite's range, odd dates, random
bytes as audio, ...) must get a documented status, and never a 5xx. A server of
its own, so that the fuzzer's deletions and revocations touch nobody else's data.
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from conftest import _ServerThread, free_port
from hypothesis import HealthCheck, Phase, given, settings, strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import status_code_conformance

from refrain.service.app import create_app
from refrain.service.db import ServiceDB
from refrain.service.settings import ServiceSettings

#: Examples per operation and role: 4 roles x ~17 operations x this, about 30 s in all.
EXAMPLES = 8
ROLES = (None, "uploader", "analyst", "admin")


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory, songs):
    """(base URL, keys by role) of a running server with one registered work."""
    root = tmp_path_factory.mktemp("fuzzed-service")
    config = ServiceSettings(index_dir=root / "index", max_upload_bytes=2_000_000, max_upload_seconds=60.0)
    db = ServiceDB(config.db_path)
    keys = {role: db.create_key(role, principal)[0]
            for role, principal in (("admin", "ops"), ("uploader", "studio"), ("analyst", "audit"))}
    db.close()
    server = _ServerThread(create_app(config), free_port())
    server.start()
    url = f"http://127.0.0.1:{server.server.config.port}"
    try:
        with open(songs[30].path, "rb") as handle:
            made = httpx.post(f"{url}/v1/works", headers={"X-API-Key": keys["admin"]}, timeout=60,
                              files={"file": ("song.wav", handle, "audio/wav")},
                              data={"title": "T", "artists": ["A"], "rights_holder": "R"})
        assert made.status_code == 201, made.text
        yield url, keys
    finally:
        server.stop()


@pytest.mark.parametrize("role", ROLES)
def test_no_request_gets_a_server_error_or_an_undocumented_status(fuzzed, role):
    url, keys = fuzzed
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    headers = {"X-API-Key": keys[role]} if role else {}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    failures = []
    for operation in operations:
        strategy = st.one_of(operation.as_strategy(GenerationMode.POSITIVE),
                             operation.as_strategy(GenerationMode.NEGATIVE))

        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=strategy)
        def check(case):
            case.call_and_validate(base_url=url, headers=headers, timeout=60,
                                   checks=[not_a_server_error, status_code_conformance])

        try:
            check()
        except Exception as err:  # collect every operation's failure, not only the first
            failures.append(f"{operation.method.upper()} {operation.path}: {err}")
    assert not failures, "\n\n".join(failures)

"""Metrics, JSON log lines and request ids, observed on the running service as an operator would."""

from __future__ import annotations

import json
import logging
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families
from service_helpers import assert_error, post_file

from refrain.service.observability import JsonLogFormatter


def scrape(client) -> dict[tuple[str, tuple], float]:
    """/metrics as {(sample name, sorted labels): value}."""
    answer = client.get("/metrics")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(answer.text) for sample in family.samples}


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def access_line(caplog, request_id: str) -> dict:
    """The one access log record of a request, as the JSON object `refrain serve` writes.

    The line is written once the response is sent, so it may arrive a moment after the answer.
    """
    formatter = JsonLogFormatter()
    deadline = time.monotonic() + 5.0
    while True:
        lines = [json.loads(formatter.format(r)) for r in caplog.records if r.name == "refrain.access"]
        found = [line for line in lines if line["request_id"] == request_id]
        if found or time.monotonic() > deadline:
            assert len(found) == 1, (request_id, lines)
            return found[0]
        time.sleep(0.01)


def test_metrics_change_as_uploads_are_made(live_service, admin, uploader, excerpt_file):
    before = scrape(admin)
    upload = excerpt_file(34, 4.0, 12.0)
    answer = post_file(uploader, "/v1/matches", upload)
    assert answer.status_code == 200, answer.text
    decision = answer.json()
    assert decision["verdict"] == "blocked_copy"
    after = scrape(admin)

    route = dict(method="POST", route="/v1/matches", status="200")
    assert value(after, "refrain_http_requests_total", **route) == value(before, "refrain_http_requests_total",
                                                                           **route) + 1
    assert value(after, "refrain_uploads_total") == value(before, "refrain_uploads_total") + 1
    assert value(after, "refrain_upload_audio_seconds_total") - value(before, "refrain_upload_audio_seconds_total") \
        == pytest.approx(decision["fingerprint"]["duration"], abs=0.01)
    assert value(after, "refrain_verdicts_total", verdict="blocked_copy") == \
        value(before, "refrain_verdicts_total", verdict="blocked_copy") + 1
    assert value(after, "refrain_matched_works_total", kind="excerpt") + value(after, "refrain_matched_works_total",
                                                                              kind="copy") >= 1
    for tier in ("pair", "triplet", "peaks", "melody"):  # match latency by tier: one more observation each
        assert value(after, "refrain_match_duration_seconds_count", tier=tier) == \
            value(before, "refrain_match_duration_seconds_count", tier=tier) + 1
        assert value(after, "refrain_match_duration_seconds_sum", tier=tier) > \
            value(before, "refrain_match_duration_seconds_sum", tier=tier)
    for stage in ("decode", "fingerprint", "match", "evidence", "store"):
        assert value(after, "refrain_stage_duration_seconds_count", stage=stage) == \
            value(before, "refrain_stage_duration_seconds_count", stage=stage) + 1
    assert value(after, "refrain_uploads_in_flight") == 0
    assert value(after, "refrain_index_tracks") == len(live_service.works)
    assert value(after, "refrain_index_bytes") > 0 and value(after, "refrain_index_landmarks") > 0
    assert value(after, "refrain_ready") == 1
    assert ("refrain_jobs", (("state", "queued"),)) in after

    # Requests are counted under their route template, not the raw path.
    missing = admin.get("/v1/works/987654")
    assert missing.status_code == 404
    later = scrape(admin)
    template = dict(method="GET", route="/v1/works/{work_id}", status="404")
    assert value(later, "refrain_http_requests_total", **template) == value(after, "refrain_http_requests_total",
                                                                             **template) + 1


def test_metrics_need_an_admin_key_in_the_header_or_as_a_bearer_token(live_service, analyst):
    with live_service.client() as anonymous:
        assert_error(anonymous.get("/metrics"), 401, "unauthorized")
        bearer = anonymous.get("/metrics", headers={"Authorization": f"Bearer {live_service.keys['admin']}"})
        assert bearer.status_code == 200 and "refrain_http_requests_total" in bearer.text
    assert_error(analyst.get("/metrics"), 403, "forbidden")


def test_one_json_log_line_per_request_carries_the_ids_verdict_and_stage_durations(
        live_service, uploader, excerpt_file, caplog):
    caplog.set_level(logging.INFO, logger="refrain.access")
    answer = post_file(uploader, "/v1/matches", excerpt_file(30, 3.0, 10.0), uploader_id="someone")
    assert answer.status_code == 200, answer.text
    request_id = answer.headers["X-Request-ID"]
    assert request_id.startswith("req_")
    line = access_line(caplog, request_id)
    decision = answer.json()
    assert line["route"] == "/v1/matches" and line["method"] == "POST" and line["status"] == 200
    assert line["decision_id"] == decision["decision_id"] and line["verdict"] == decision["verdict"]
    assert line["principal"] == live_service.keys["uploader"][:12] and line["role"] == "uploader"
    assert line["audio_seconds"] == pytest.approx(10.0, abs=0.05)
    assert set(line["stages_ms"]) == {"decode", "fingerprint", "match", "evidence", "store"}
    assert set(line["tiers_ms"]) == {"pair", "triplet", "peaks", "melody"}
    assert line["duration_ms"] >= sum(line["stages_ms"].values()) > 0
    assert line["level"] == "info" and line["logger"] == "refrain.access"


def test_a_well_formed_client_request_id_is_kept_and_a_bad_one_replaced(analyst, caplog):
    caplog.set_level(logging.INFO, logger="refrain.access")
    kept = analyst.get("/v1/matches", headers={"X-Request-ID": "upload-pipeline.42:a"})
    assert kept.status_code == 200 and kept.headers["X-Request-ID"] == "upload-pipeline.42:a"
    replaced = analyst.get("/v1/matches", headers={"X-Request-ID": "bad id\twith spaces" + "x" * 200})
    assert replaced.headers["X-Request-ID"].startswith("req_")
    assert access_line(caplog, "upload-pipeline.42:a")["status"] == 200
    assert access_line(caplog, replaced.headers["X-Request-ID"])["route"] == "/v1/matches"


def test_every_error_body_carries_the_request_id(live_service, uploader, analyst):
    # assert_error checks body.request_id == the X-Request-ID header; here on each kind of error.
    with live_service.client() as anonymous:
        assert_error(anonymous.get("/v1/works"), 401)
        assert_error(anonymous.get("/v1/nowhere"), 404, "not_found")
    assert_error(uploader.get("/v1/matches"), 403)
    assert_error(analyst.get("/v1/matches", params={"limit": 0}), 422, "validation_error")
    given = analyst.get("/v1/matches/dec_nothing", headers={"X-Request-ID": "trace-7"})
    assert assert_error(given, 404)["request_id"] == "trace-7"
    assert_error(uploader.post("/v1/matches", content=b"x", headers={"Content-Type": "text/plain"}), 415)

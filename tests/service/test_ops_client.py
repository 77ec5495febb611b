"""refrain.client against the real running service: every call, typed answers, typed errors."""

from __future__ import annotations

import time

import pytest

from refrain.client import RefrainClient, RefrainError
from refrain.service.schemas import DecisionDetail, DecisionOut, JobOut, WorkOut


@pytest.fixture
def clients(live_service):
    made = {role: RefrainClient(live_service.url, key, timeout=60) for role, key in live_service.keys.items()}
    made["anonymous"] = RefrainClient(live_service.url)
    yield made
    for client in made.values():
        client.close()


def test_the_client_round_trips_every_call_of_the_upload_pipeline(clients, songs, excerpt_file, live_service):
    admin, uploader, analyst = clients["admin"], clients["uploader"], clients["analyst"]
    assert clients["anonymous"].live().status == "ok"
    deadline = time.monotonic() + 30
    while clients["anonymous"].ready().status != "ready":
        assert time.monotonic() < deadline
        time.sleep(0.1)

    # Works and policies.
    work = admin.add_work(songs[41].path, title="Song 41", artists=["Ada", "Band 41"], rights_holder="Label 41",
                          isrc="GB-ABC-26-00041")
    try:
        assert isinstance(work, WorkOut) and work.isrc == "GBABC2600041" and work.policy.is_default
        assert admin.work(work.work_id) == work
        assert work.work_id in [w.work_id for w in admin.works(limit=500).items]
        assert admin.policy(work.work_id).is_default
        policy = admin.set_policy(work.work_id, copy="allow", remix="licence_required", cover="deny",
                                  royalty_share=0.25)
        assert (policy.copy_, policy.remix, policy.royalty_share, policy.is_default) == \
            ("allow", "licence_required", 0.25, False)

        # Licences.
        licence = admin.grant_licence(work.work_id, "studio-ai", ["remix"])
        assert licence.status == "active" and admin.licence(licence.licence_id) == licence
        assert [x.licence_id for x in admin.licences(work_id=work.work_id).items] == [licence.licence_id]

        # Uploads: synchronous (a path, an open file) and asynchronous (bytes).
        upload = excerpt_file(41, 6.0, 12.0)
        decision = uploader.upload(upload, uploader_id="studio-ai", licence_ids=[licence.licence_id])
        assert isinstance(decision, DecisionOut) and decision.stored
        assert decision.verdict == "allowed" and decision.works[0].work_id == work.work_id
        with open(upload, "rb") as handle:
            assert uploader.upload(handle).verdict == "allowed"
        job = uploader.submit(upload.read_bytes(), uploader_id="someone", filename="as-bytes.wav")
        assert isinstance(job, JobOut) and job.filename == "as-bytes.wav"
        done = uploader.wait(job.job_id, timeout=60, interval=0.05)
        assert done.state == "succeeded" and done.verdict == "allowed" and done.decision_id
        assert uploader.job(job.job_id) == done

        # Decisions (analyst).
        detail = analyst.decision(decision.decision_id)
        assert isinstance(detail, DecisionDetail) and detail.evidence[0].work_id == work.work_id
        listed = analyst.decisions(work_id=work.work_id, verdict="allowed", since=decision.created_at)
        assert {decision.decision_id, done.decision_id} <= {d.decision_id for d in listed.items}
        suspect = analyst.adhoc(upload)
        assert not suspect.stored and suspect.decision_id is None

        assert admin.revoke_licence(licence.licence_id).status == "revoked"
    finally:
        admin.delete_work(work.work_id)
    with pytest.raises(RefrainError) as gone:
        admin.work(work.work_id)
    assert (gone.value.status, gone.value.code) == (404, "not_found")
    assert gone.value.request_id.startswith("req_")


def test_client_errors_carry_the_service_code_message_and_request_id(clients, excerpt_file):
    with pytest.raises(RefrainError) as forbidden:
        clients["uploader"].decisions()
    assert forbidden.value.status == 403 and forbidden.value.code == "forbidden"
    assert "analyst" in forbidden.value.message and forbidden.value.request_id
    with pytest.raises(RefrainError) as invalid:
        clients["analyst"].decisions(limit=0)
    assert invalid.value.code == "validation_error" and invalid.value.details
    with pytest.raises(RefrainError) as empty:
        clients["uploader"].upload(b"")
    assert (empty.value.status, empty.value.code) == (400, "empty_upload")
    with pytest.raises(RefrainError) as unknown:
        clients["uploader"].job("job_nope")
    assert unknown.value.status == 404

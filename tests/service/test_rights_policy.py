"""Policy conditions through real HTTP: a match shorter than the policy's minimum is allowed or reviewed."""

from __future__ import annotations

import httpx
from service_helpers import LICENSEE, assert_error, post_file, register

from refrain.service.db import ServiceDB


def test_a_short_match_is_allowed_by_a_condition_and_a_long_one_still_blocked(private_admin, songs, excerpt_file):
    work = register(private_admin, songs[34].path, "Song 34", "Label 34").json()
    url = f"/v1/works/{work['work_id']}/policy"
    short_allowed = {"copy": "deny", "remix": "deny", "cover": "deny", "royalty_share": 0.5,
                     "conditions": [{"use": "copy", "min_seconds": 8.0, "min_share": 0.0, "below": "allow"}]}
    done = private_admin.put(url, json=short_allowed)
    assert done.status_code == 200 and done.json() == {**short_allowed, "is_default": False}, done.text

    db = ServiceDB(private_admin.settings.db_path)
    key = db.create_key("uploader", LICENSEE)[0]
    db.close()
    uploader = httpx.Client(base_url=private_admin.base_url, headers={"X-API-Key": key}, timeout=120)
    with uploader:
        short = post_file(uploader, "/v1/matches", excerpt_file(34, 12.0, 5.0)).json()
        assert short["verdict"] == "allowed", short
        assert short["works"][0]["outcome"] == "allowed" and short["works"][0]["royalty"]["share_owed"] == 0.0
        assert "under the policy's minimum" in short["works"][0]["reason"]
        assert post_file(uploader, "/v1/matches", excerpt_file(34, 12.0, 12.0)).json()["verdict"] == "blocked_copy"

        review = {**short_allowed, "conditions": [{**short_allowed["conditions"][0], "below": "review"}]}
        assert private_admin.put(url, json=review).status_code == 200
        assert post_file(uploader, "/v1/matches", excerpt_file(34, 12.0, 5.0)).json()["verdict"] == "review"

    twice = {**short_allowed, "conditions": short_allowed["conditions"] * 2}
    assert "one condition per use" in assert_error(private_admin.put(url, json=twice), 422)["message"]
    bad = {**short_allowed, "conditions": [{"use": "copy", "min_share": 2}]}
    assert_error(private_admin.put(url, json=bad), 422, "validation_error")

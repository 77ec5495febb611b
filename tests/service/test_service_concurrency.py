"""Catalogue writes while matches run: no match fails or changes its answer."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from service_helpers import post_file

MATCHERS, MIN_MATCHES_EACH, MAX_MATCHES_EACH = 4, 3, 60


def test_works_added_and_deleted_during_matches_never_break_a_match(live_service, songs, excerpt_file):
    query = excerpt_file(30, 8.0, 10.0)           # a denied copy of a work that stays put
    newcomer = excerpt_file(41, 10.0, 10.0)       # a copy of the work that comes and goes
    expected_work = live_service.works["remixable"]["work_id"]
    writes_done = threading.Event()

    def match_repeatedly() -> list[tuple[int, str, tuple]]:
        """Match until the writer is done (bounded), so that matches surely overlap the writes."""
        answers = []
        with live_service.client("uploader") as uploader:
            while len(answers) < MAX_MATCHES_EACH and (len(answers) < MIN_MATCHES_EACH
                                                       or not writes_done.is_set()):
                done = post_file(uploader, "/v1/matches", query)
                body = done.json()
                answers.append((done.status_code, body.get("verdict"),
                                tuple(w["work_id"] for w in body.get("works", []))))
        return answers

    def add_and_delete() -> list[str]:
        """Add song 41 as a work, check it is matched, delete it, check it is gone; twice."""
        seen = []
        with live_service.client("admin") as admin, live_service.client("uploader") as uploader:
            for _ in range(2):
                made = post_file(admin, "/v1/works", songs[41].path, title="Comes and goes",
                                 artists="Cy", rights_holder="Churn Ltd")
                assert made.status_code == 201, made.text
                work_id = made.json()["work_id"]
                found = post_file(uploader, "/v1/matches", newcomer).json()
                seen.append((found["verdict"], [w["work_id"] for w in found["works"]] == [work_id]))
                assert admin.delete(f"/v1/works/{work_id}").status_code == 204
                seen.append((post_file(uploader, "/v1/matches", newcomer).json()["verdict"], True))
        writes_done.set()
        return seen

    with ThreadPoolExecutor(MATCHERS + 1) as pool:
        writer = pool.submit(add_and_delete)
        matchers = [pool.submit(match_repeatedly) for _ in range(MATCHERS)]
        answers = [answer for future in matchers for answer in future.result(timeout=240)]
        seen = writer.result(timeout=240)

    assert writes_done.is_set()
    assert seen == [("blocked_copy", True), ("clear", True)] * 2
    assert len(answers) >= MATCHERS * MIN_MATCHES_EACH
    assert all(len(f.result()) < MAX_MATCHES_EACH for f in matchers), "the writer was starved"
    assert set(answers) == {(200, "blocked_copy", (expected_work,))}, answers

"""The dispute queue and a dispute's resolution on the analyst page, in headless Chromium, on a service of the
module's own (release-and-exclude changes what it decides). Saves screenshots of the queue and of a decision page
when ``REFRAIN_SHOTS`` names a folder."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select
from service_helpers import LICENSEE, post_file, register
from test_service_analyst_page import browser, sign_in, submit  # noqa: F401 (browser is a fixture)

from refrain.service.db import ServiceDB


@pytest.fixture(scope="module")
def service(private_admin, songs, excerpt_file):
    """Song 44 registered; two blocked uploads, each disputed by its uploader; one upload in review."""
    work = register(private_admin, songs[44].path, "Song 44", "Label 44").json()
    db = ServiceDB(private_admin.settings.db_path)
    keys = {"uploader": db.create_key("uploader", LICENSEE)[0], "analyst": db.create_key("analyst", "analysts")[0]}
    db.close()
    with httpx.Client(base_url=private_admin.base_url, headers={"X-API-Key": keys["uploader"]},
                      timeout=120) as uploader:
        blocked = [post_file(uploader, "/v1/matches", excerpt_file(44, start, 10.0), uploader_id="channel-7").json()
                   for start in (10.0, 22.0)]
        disputes = [uploader.post(f"/v1/matches/{d['decision_id']}/disputes", json=body).json()
                    for d, body in zip(blocked, ({"reason": "public_domain", "text": "the intro is a 1920s recording"},
                                                 {"reason": "licence_held", "text": "licence LB-2291 from Label 44"}))]
        chance = blocked[0]["works"][0]["chance"]
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(private_admin.settings, "review_confidence", 1.0 - chance / 10)
            review = post_file(uploader, "/v1/matches", excerpt_file(44, 2.0, 5.0), uploader_id="channel-9").json()
    assert [d["verdict"] for d in blocked] == ["blocked_copy"] * 2 and review["verdict"] == "review"
    return SimpleNamespace(url=str(private_admin.base_url).rstrip("/"), keys=keys, admin=private_admin, work=work,
                           blocked=blocked, disputes=disputes, review=review)


def _shot(browser, name: str) -> None:  # noqa: F811 (a parameter, not the fixture)
    folder = os.environ.get("REFRAIN_SHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        height = browser.execute_script("return document.body.scrollHeight")
        browser.set_window_size(1200, max(800, height + 40))
        browser.save_screenshot(str(Path(folder) / name))
        browser.set_window_size(1200, 2400)


def test_an_analyst_resolves_a_dispute_with_release_and_exclude_on_the_page(browser, service):  # noqa: F811
    sign_in(browser, service, service.keys["analyst"])
    queue = browser.find_element(By.ID, "dispute-queue").text
    assert "(2 open, oldest first)" in browser.find_element(By.ID, "disputes-total").text
    assert "public_domain" in queue and "licence_held" in queue
    rows = browser.find_elements(By.CSS_SELECTOR, "#dispute-queue tr td:nth-child(2) a")
    assert [row.text for row in rows] == [d["decision_id"] for d in service.disputes]
    Select(browser.find_element(By.ID, "filter-dispute-reason")).select_by_value("licence_held")
    submit(browser, "filter-disputes")
    rows = browser.find_elements(By.CSS_SELECTOR, "#dispute-queue tr td:nth-child(2) a")
    assert [row.text for row in rows] == [service.disputes[1]["decision_id"]]
    browser.get(service.url + "/analyst")
    _shot(browser, "queue-page.png")

    decision = service.blocked[0]
    browser.find_element(By.LINK_TEXT, decision["decision_id"]).click()
    assert browser.find_element(By.ID, "verdict").text == "blocked_copy"
    disputes = browser.find_element(By.ID, "disputes").text
    assert "the intro is a 1920s recording" in disputes and "open" in disputes
    Select(browser.find_element(By.ID, "dispute-outcome")).select_by_value("release_and_exclude")
    browser.find_element(By.ID, "dispute-note").send_keys("public-domain intro: excluded from the work's claims")
    submit(browser, "resolve-dispute")

    assert browser.find_element(By.ID, "verdict").text == "allowed"
    history = browser.find_element(By.ID, "history").text
    assert "analysts" in history and "public-domain intro" in history and service.disputes[0]["dispute_id"] in history
    disputes = browser.find_element(By.ID, "disputes").text
    assert "release_and_exclude by analysts" in disputes and not browser.find_elements(By.ID, "dispute-form")
    track_id = decision["works"][0]["track_id"]
    assert browser.find_element(By.CSS_SELECTOR, f"#work-{track_id} td.outcome").text == "released"
    _shot(browser, "decision-page.png")

    # The span is excluded from the work's claims; the dispute left the queue.
    with httpx.Client(base_url=service.url, headers={"X-API-Key": service.keys["analyst"]}) as analyst:
        (exclusion,) = analyst.get(f"/v1/works/{service.work['work_id']}/exclusions").json()["items"]
    assert exclusion["source"] == service.disputes[0]["dispute_id"]
    browser.get(service.url + "/analyst")
    rows = browser.find_elements(By.CSS_SELECTOR, "#dispute-queue tr td:nth-child(2) a")
    assert [row.text for row in rows] == [service.disputes[1]["decision_id"]]

    # A resolution without a note is refused with a message, and nothing changes.
    browser.find_element(By.LINK_TEXT, service.disputes[1]["decision_id"]).click()
    browser.execute_script("document.getElementById('dispute-note').removeAttribute('required');")
    submit(browser, "resolve-dispute")
    assert "note" in browser.find_element(By.ID, "error-message").text
    browser.get(f"{service.url}/analyst/decisions/{service.disputes[1]['decision_id']}")
    assert browser.find_element(By.ID, "verdict").text == "blocked_copy"


def test_the_review_in_the_same_service_is_resolved_on_its_page(browser, service):  # noqa: F811
    sign_in(browser, service, service.keys["analyst"])
    browser.find_element(By.LINK_TEXT, service.review["decision_id"]).click()
    track_id = service.review["works"][0]["track_id"]
    Select(browser.find_element(By.ID, f"resolution-{track_id}")).select_by_value("allow")
    browser.find_element(By.ID, "note").send_keys("licence on file")
    submit(browser, "resolve")
    assert browser.find_element(By.ID, "verdict").text == "allowed"
    assert "licence on file" in browser.find_element(By.ID, "history").text


def test_a_reference_recording_that_cannot_be_read_is_said_so_not_a_server_error(browser, service):  # noqa: F811
    db = ServiceDB(service.admin.settings.db_path)
    stored = Path(db.get_work(service.work["work_id"]).stored_path)
    db.close()
    stored.write_bytes(b"not audio any more")
    decision = service.disputes[1]["decision_id"]
    track_id = service.blocked[1]["works"][0]["track_id"]
    with httpx.Client(base_url=service.url, headers={"X-API-Key": service.keys["analyst"]}) as analyst:
        refused = analyst.get(f"/v1/matches/{decision}/audio/{track_id}", params={"side": "reference"})
        assert refused.status_code == 404 and "cannot be read" in refused.json()["message"], refused.text
        assert analyst.get(f"/v1/matches/{decision}/audio/{track_id}", params={"side": "upload"}).status_code == 200
    sign_in(browser, service, service.keys["analyst"])
    browser.get(f"{service.url}/analyst/decisions/{decision}")
    side = browser.find_element(By.ID, f"reference-side-{track_id}").text
    assert "cannot be read" in side and not browser.find_elements(By.ID, f"reference-audio-{track_id}")
    assert browser.find_element(By.ID, f"upload-audio-{track_id}")

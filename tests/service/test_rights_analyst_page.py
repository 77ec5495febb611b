"""The review queue and the resolution form of the analyst page, in headless Chromium."""

from __future__ import annotations

import csv
import io
import uuid

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select
from service_helpers import post_file
from test_service_analyst_page import browser, sign_in, submit  # noqa: F401 (browser is a fixture)

from refrain.service.routers.analyst import COOKIE


@pytest.fixture(scope="module")
def review_decisions(live_service, excerpt_file):
    """Three `review` decisions of one uploader id of their own, oldest first."""
    uploader_id = "page-" + uuid.uuid4().hex[:8]
    path = excerpt_file(34, 12.0, 5.0)
    with live_service.client("uploader") as uploader, pytest.MonkeyPatch.context() as patch:
        chance = post_file(uploader, "/v1/matches", path, uploader_id="elsewhere").json()["works"][0]["chance"]
        patch.setattr(live_service.settings, "review_confidence", 1.0 - chance / 10)
        made = [post_file(uploader, "/v1/matches", path, uploader_id=uploader_id).json() for _ in range(3)]
    assert {d["verdict"] for d in made} == {"review"}, made
    return uploader_id, made


def _queue_ids(browser) -> list[str]:  # noqa: F811 (a parameter, not the fixture)
    rows = browser.find_elements(By.CSS_SELECTOR, "#queue tr td:nth-child(2) a")
    return [row.text for row in rows]


def test_the_queue_filters_pages_and_exports(browser, live_service, review_decisions, monkeypatch):  # noqa: F811
    uploader_id, made = review_decisions
    monkeypatch.setattr("refrain.service.routers.analyst.QUEUE_PAGE_SIZE", 2)
    sign_in(browser, live_service, live_service.keys["analyst"])
    browser.find_element(By.ID, "filter-uploader").send_keys(uploader_id)
    Select(browser.find_element(By.ID, "filter-kind")).select_by_value("excerpt")
    submit(browser, "filter")
    assert _queue_ids(browser) == [made[0]["decision_id"], made[1]["decision_id"]]
    assert "(3 decisions, oldest first)" in browser.find_element(By.ID, "queue-total").text
    submit(browser, "queue-next")
    assert _queue_ids(browser) == [made[2]["decision_id"]]
    Select(browser.find_element(By.ID, "filter-kind")).select_by_value("mixed")
    submit(browser, "filter")
    assert browser.find_element(By.ID, "queue-empty").is_displayed()

    # The export link carries the page's filters; it answers the signed-in analyst with CSV.
    Select(browser.find_element(By.ID, "filter-kind")).select_by_value("")
    submit(browser, "filter")
    href = browser.find_element(By.ID, "export").get_attribute("href")
    cookie = browser.get_cookie(COOKIE)["value"]
    done = httpx.get(href, cookies={COOKIE: cookie}, timeout=30)
    assert done.status_code == 200 and done.headers["content-type"].startswith("text/csv"), done.text
    rows = list(csv.DictReader(io.StringIO(done.text)))
    assert [row["decision_id"] for row in rows] == [d["decision_id"] for d in made]
    assert {row["outcome"] for row in rows} == {"review"} and all(row["covered_seconds"] for row in rows)

    browser.get(live_service.url + "/analyst?since=yesterday")
    assert "since" in browser.find_element(By.ID, "error-message").text


def test_an_analyst_resolves_a_review_on_its_page(browser, live_service, review_decisions):  # noqa: F811
    uploader_id, made = review_decisions
    decision = made[0]
    sign_in(browser, live_service, live_service.keys["analyst"])
    browser.get(f"{live_service.url}/analyst?uploader_id={uploader_id}")
    browser.find_element(By.LINK_TEXT, decision["decision_id"]).click()
    assert browser.find_element(By.ID, "verdict").text == "review"
    track_id = decision["works"][0]["track_id"]
    Select(browser.find_element(By.ID, f"resolution-{track_id}")).select_by_value("release")
    browser.find_element(By.ID, "note").send_keys("the intro is public domain")
    submit(browser, "resolve")
    assert browser.find_element(By.ID, "verdict").text == "allowed"
    history = browser.find_element(By.ID, "history").text
    assert "analysts" in history and "the intro is public domain" in history and "review" in history
    assert browser.find_element(By.CSS_SELECTOR, f"#work-{track_id} td.outcome").text == "released"

    # It left the queue; a resolution without a choice is refused with a message.
    browser.get(f"{live_service.url}/analyst?uploader_id={uploader_id}")
    assert decision["decision_id"] not in _queue_ids(browser)
    browser.find_element(By.LINK_TEXT, made[1]["decision_id"]).click()
    browser.find_element(By.ID, "note").send_keys("nothing chosen")
    submit(browser, "resolve")
    assert "at least one work" in browser.find_element(By.ID, "error-message").text

"""The analyst page in headless Chromium: sign in, upload a suspect file, open a stored decision."""

from __future__ import annotations

import re
import shutil
import tempfile

import pytest
from service_helpers import post_file

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser():
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.fail(f"{CHROMIUM} and {CHROMEDRIVER} are needed (Debian: apt-get install chromium "
                    "chromium-driver; `make test` installs them)")
    profile = tempfile.mkdtemp(prefix="refrain-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1200,2400"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def submit(browser, button_id: str) -> None:
    """Click a submit button and wait until the page it leads to has replaced this one.

    The old page is marked with a window property rather than watched through an element handle:
    chromedriver can answer a handle query made mid-navigation with an inspector error instead of
    "stale element", which made ``staleness_of`` flaky; a script run while the page unloads can fail
    the same way, so such errors only mean "not yet".
    """
    browser.execute_script("window.refrainPageBeforeSubmit = true;")
    browser.find_element(By.ID, button_id).click()
    WebDriverWait(browser, 60, ignored_exceptions=(WebDriverException,)).until(lambda driver: driver.execute_script(
        "return window.refrainPageBeforeSubmit === undefined && document.readyState === 'complete';"))


def sign_in(browser, live_service, key: str) -> None:
    browser.get(live_service.url + "/analyst")
    browser.delete_all_cookies()  # on the service's page, so its cookies are the ones deleted
    browser.get(live_service.url + "/analyst")
    browser.find_element(By.ID, "key").send_keys(key)
    submit(browser, "signin")


def assert_evidence_rendered(browser) -> None:
    plot = browser.find_element(By.CSS_SELECTOR, "section.work svg.alignment-plot")
    assert len(plot.find_elements(By.CSS_SELECTOR, "circle.landmark")) >= 20
    assert plot.find_elements(By.CSS_SELECTOR, "line.fit-line")
    assert plot.find_elements(By.CSS_SELECTOR, "rect.span")
    assert plot.size["width"] > 300 and plot.size["height"] > 200
    image = browser.find_element(By.CSS_SELECTOR, "img.spectrogram")
    assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image) > 50


def test_a_wrong_key_is_refused_and_an_uploader_key_too(browser, live_service):
    sign_in(browser, live_service, "rk_wrong")
    assert "unknown or revoked" in browser.find_element(By.ID, "signin-error").text
    sign_in(browser, live_service, live_service.keys["uploader"])
    assert "analyst role" in browser.find_element(By.ID, "signin-error").text


def test_an_analyst_uploads_a_suspect_file_and_sees_verdict_policy_and_plot(browser, live_service,
                                                                            sped_up_file):
    sign_in(browser, live_service, live_service.keys["analyst"])
    browser.find_element(By.ID, "file").send_keys(str(sped_up_file(30, 5.0, 12.0, 1.1)))
    submit(browser, "match")
    assert browser.find_element(By.ID, "verdict").text == "blocked_unlicensed_derivative"
    section = browser.find_element(By.CSS_SELECTOR, "section.work")
    assert "Song 30" in section.text and "Label 30" in section.text
    policy_text = section.find_element(By.CSS_SELECTOR, "td.policy").text
    assert re.match(r"copies (deny|allow|licence_required), remixes licence_required, covers ", policy_text), \
        policy_text
    assert "speed_changed" in section.text
    assert_evidence_rendered(browser)


def test_an_analyst_opens_a_stored_decision(browser, live_service, excerpt_file):
    with live_service.client("uploader") as uploader:
        decision = post_file(uploader, "/v1/matches", excerpt_file(30, 8.0, 10.0)).json()
    sign_in(browser, live_service, live_service.keys["analyst"])
    assert decision["decision_id"] in browser.find_element(By.ID, "recent").text
    browser.find_element(By.ID, "decision_id").send_keys(decision["decision_id"])
    submit(browser, "open")
    assert browser.find_element(By.ID, "verdict").text == "blocked_copy"
    assert decision["decision_id"] in browser.page_source
    assert_evidence_rendered(browser)

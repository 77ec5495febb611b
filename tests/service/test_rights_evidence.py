"""Evidence an analyst can use, through real HTTP and headless Chromium: the matched region of the upload and of
the reference side by side with time and frequency axes, both playable, a cover's chroma alignment, and one count
of the evidence wherever it is shown."""

from __future__ import annotations

import io
import re
import uuid

import httpx
import pytest
import soundfile
from selenium.webdriver.common.by import By
from service_helpers import assert_error, post_file
from test_rights_dispute_page import _shot
from test_service_analyst_page import browser, sign_in  # noqa: F401 (browser is a fixture)
from test_service_covers import COVER

from conftest import SR
from refrain.service.routers.analyst import COOKIE
from refrain.synth import render_song


@pytest.fixture(scope="module")
def decisions(live_service, excerpt_file, sped_up_file, write_audio, upload_dir):
    """A stored copy, a sped-up remix and a cover of catalogue works (uploader ids of their own)."""
    label = "evidence-" + uuid.uuid4().hex[:6]
    cover = write_audio(upload_dir / "evidence-cover-of-30.wav", render_song(30, 30.0, SR, **COVER))
    with live_service.client("uploader") as uploader:
        made = {name: post_file(uploader, "/v1/matches", path, uploader_id=label).json()
                for name, path in (("copy", excerpt_file(33, 4.0, 10.0)), ("remix", sped_up_file(30, 5.0, 12.0, 1.1)),
                                   ("cover", cover))}
    assert [made[name]["works"][0]["kind"] for name in made] == ["excerpt", "speed_changed", "cover"], made
    return made


def _wav(response: httpx.Response) -> tuple[float, float]:
    """Seconds and peak level of a WAV answer."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/wav"
    samples, rate = soundfile.read(io.BytesIO(response.content))
    return len(samples) / rate, float(abs(samples).max())


def test_both_regions_are_served_as_audio_to_analysts_only(analyst, uploader, decisions):
    decision = decisions["copy"]
    work = decision["works"][0]
    url = f"/v1/matches/{decision['decision_id']}/audio/{work['track_id']}"
    reference = analyst.get(url, params={"side": "reference"})
    seconds, level = _wav(reference)
    assert reference.headers["X-Refrain-Audio-Source"] == "recording" and level > 0.01
    upload = analyst.get(url, params={"side": "upload"})
    upload_seconds, level = _wav(upload)
    assert upload.headers["X-Refrain-Audio-Source"] == "resynthesised-peaks" and level > 0.01
    # Both cover the strongest span padded 1 s within the upload (an excerpt at ratio 1: the same length).
    padded = min(decision["fingerprint"]["duration"], work["query_end"] + 1) - max(0.0, work["query_start"] - 1)
    assert upload_seconds == pytest.approx(padded, abs=0.05)
    assert seconds == pytest.approx(upload_seconds, abs=0.1)
    assert_error(uploader.get(url, params={"side": "reference"}), 403, "forbidden")
    assert_error(analyst.get(url, params={"side": "mixdown"}), 422, "validation_error")
    assert_error(analyst.get(f"/v1/matches/{decision['decision_id']}/audio/999999", params={"side": "upload"}), 404,
                 "not_found")


def test_a_cover_s_evidence_is_its_agreeing_chroma_frames(analyst, decisions):
    decision = analyst.get(f"/v1/matches/{decisions['cover']['decision_id']}").json()
    (evidence,) = decision["evidence"]
    work = decision["works"][0]
    assert len(evidence["points"]) >= 20, evidence
    for q, r in evidence["points"]:  # on the matched line, inside a span
        assert r == pytest.approx(work["offset"] + work["time_ratio"] * q, abs=0.5)
        assert any(s["query_start"] <= q <= s["query_end"] for s in work["spans"])


def test_the_decision_page_shows_both_regions_with_axes_playable_and_counts_that_agree(
        browser, live_service, decisions):  # noqa: F811
    sign_in(browser, live_service, live_service.keys["analyst"])
    cookie = browser.get_cookie(COOKIE)["value"]
    for name, decision in decisions.items():
        browser.get(f"{live_service.url}/analyst/decisions/{decision['decision_id']}")
        track_id = decision["works"][0]["track_id"]
        section = browser.find_element(By.ID, f"work-{track_id}")
        circles = len(section.find_elements(By.CSS_SELECTOR, "svg.alignment-plot circle.landmark"))
        table = section.find_element(By.CSS_SELECTOR, "td.evidence-count").text
        heading = section.find_element(By.CSS_SELECTOR, "h3.plot-count").text
        unit = "agreeing chroma frames" if name == "cover" else "aligned points"
        assert f", {circles} {unit}," in table and f"Alignment: {circles} {unit}," in heading, (name, table, heading)
        assert circles >= 20, name

        for side in ("upload", "reference"):
            figure = section.find_element(By.ID, f"{side}-spectrogram-{track_id}")
            assert len(figure.find_elements(By.CSS_SELECTOR, "text.time-tick")) >= 2
            assert {t.text for t in figure.find_elements(By.CSS_SELECTOR, "text.freq-tick")} >= {"200", "1k", "2k"}
            image = figure.find_element(By.CSS_SELECTOR, "img.spectrogram")
            assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image) > 50
            player = section.find_element(By.ID, f"{side}-audio-{track_id}")
            source = player.get_attribute("src")
            seconds, level = _wav(httpx.get(source, cookies={COOKIE: cookie}, timeout=60))
            assert seconds > 2.0 and level > 0.01, (name, side)
            # Chromium itself can play it: metadata loads, with the duration served.
            browser.execute_script("arguments[0].preload = 'metadata'; arguments[0].load();", player)
            duration = browser.execute_script(
                "const a = arguments[0]; return new Promise(done => { if (a.readyState >= 1) done(a.duration);"
                " a.onloadedmetadata = () => done(a.duration); a.onerror = () => done(-1); });", player)
            assert duration == pytest.approx(seconds, abs=0.05), (name, side)
        assert "does not keep the upload's audio" in section.find_element(By.ID, f"upload-side-{track_id}").text
        reference_heading = section.find_element(By.CSS_SELECTOR, f"#reference-side-{track_id} h3").text
        start, end = map(float, re.findall(r"[\d.]+", reference_heading))
        work = decision["works"][0]
        assert start <= work["ref_start"] + 1.5 and end >= min(work["ref_end"], end) - 1.5
        chroma = section.find_elements(By.CSS_SELECTOR, "svg.chroma-alignment")
        if name == "cover":
            (chroma,) = chroma
            assert len(chroma.find_elements(By.CSS_SELECTOR, "rect.agreement")) >= circles
            _shot(browser, "decision-page-cover.png")
        else:
            assert not chroma
    # The page's audio is the signed-in analyst's: without the cookie, the sign-in page.
    refused = httpx.get(source, timeout=60)
    assert refused.status_code == 401 and "audio" not in refused.headers["content-type"]

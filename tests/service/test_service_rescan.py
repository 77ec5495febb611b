"""Re-checking past uploads: a real service stores decisions with fingerprints, the rescan re-decides them.

A service of its own (the session's shared one must not see works added or
licences revoked here) gets two works, a licence and four uploads; then a work is
added and a licence revoked, and each time the rescan must flag exactly the
decisions whose verdict changes — and, applied, show the change in the decision's
history through the API.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime

import httpx
import pytest
from conftest import private_service
from service_helpers import LICENSEE, grant, post_file

from refrain.rescan.jobs import RescanOptions
from refrain.rescan.uploads import rescan_uploads
from refrain.service.settings import ServiceSettings

QUIET = RescanOptions(progress=False)


def _register(admin, song, seed: int, policy: dict | None) -> dict:
    with open(song.path, "rb") as handle:
        made = admin.post("/v1/works", files={"file": (song.path.name, handle, "audio/wav")},
                          data={"title": f"Song {seed}", "artists": ["Ada"], "rights_holder": f"Label {seed}"})
    assert made.status_code == 201, made.text
    work = made.json()
    if policy is not None:
        assert admin.put(f"/v1/works/{work['work_id']}/policy", json=policy).status_code == 200
    return work


@pytest.fixture(scope="module")
def scene(tmp_path_factory, songs, excerpt_file, sped_up_file):
    """The running service, its settings, API clients by role and the stored decision ids by name."""
    root = tmp_path_factory.mktemp("rescan-service")
    settings = ServiceSettings(index_dir=root / "index")
    keys = [("admin", "admin", "ops"), ("uploader", "uploader", LICENSEE), ("analyst", "analyst", "analysts")]
    with private_service(settings, keys, timeout=60.0) as clients:
        admin, uploader = clients["admin"], clients["uploader"]
        remixable = _register(admin, songs[30], 30, {"copy": "deny", "remix": "licence_required",
                                                      "cover": "deny", "royalty_share": 0.5})
        _register(admin, songs[33], 33, {"copy": "allow", "remix": "allow", "cover": "allow",
                                         "royalty_share": 0.1})
        licence = grant(admin, remixable["work_id"], ["remix"])
        uploads = {"unknown-41": (excerpt_file(41, 6.0, 10.0), {"uploader_id": "someone"}, "clear"),
                   "licensed-30": (sped_up_file(30, 5.0, 12.0, 1.1),
                                   {"uploader_id": LICENSEE, "licence_id": licence["licence_id"]}, "licensed"),
                   "allowed-33": (excerpt_file(33, 4.0, 10.0), {"uploader_id": "someone"}, "allowed"),
                   "old-30": (excerpt_file(30, 8.0, 10.0), {"uploader_id": "someone"}, "blocked_copy")}
        decisions = {}
        for name, (path, data, verdict) in uploads.items():
            done = post_file(uploader, "/v1/matches", path, **data)
            assert done.status_code == 200 and done.json()["verdict"] == verdict, (name, done.text)
            decisions[name] = done.json()
        # As if stored before fingerprints were kept (schema v1): nothing to re-check it with.
        with sqlite3.connect(settings.db_path) as raw:
            raw.execute("DELETE FROM decision_fingerprints WHERE decision_id = ?",
                        (decisions["old-30"]["decision_id"],))
        yield settings, clients, decisions, licence


def _rescan(settings, out, **options):
    report = rescan_uploads(settings.index_dir, settings.db_path, out, settings.review_confidence,
                            options=options.pop("options", QUIET), **options)
    by_status = {}
    for record in report.run.records:
        by_status.setdefault(record["status"], set()).add(record["item"])
    return report, by_status


def _changed(report) -> dict[str, tuple[str, str]]:
    return {r["item"]: (r["old_verdict"], r["new_verdict"]) for r in report.run.records if r.get("changed")}


def test_uploads_rescan_flags_exactly_the_decisions_that_change(scene, songs, tmp_path, run_refrain):
    settings, clients, decisions, licence = scene
    ids = {name: d["decision_id"] for name, d in decisions.items()}

    # Nothing changed yet: every decision re-decides to its own verdict; the pre-fingerprint one is skipped.
    report, by_status = _rescan(settings, tmp_path / "before")
    assert _changed(report) == {} and report.run.failed == 0
    assert by_status == {"ok": {ids["unknown-41"], ids["licensed-30"], ids["allowed-33"]},
                         "skipped": {ids["old-30"]}}

    # A new protected work: the upload that used it, cleared back then, would now be blocked.
    added = _register(clients["admin"], songs[41], 41, None)
    report, _ = _rescan(settings, tmp_path / "work-added")
    assert _changed(report) == {ids["unknown-41"]: ("clear", "blocked_copy")}
    (record,) = [r for r in report.run.records if r.get("changed")]
    assert f"work {added['work_id']} (Song 41) now matches as excerpt" in record["why"]
    assert record["applied"] is False
    since = datetime.fromisoformat(decisions["licensed-30"]["created_at"])
    report, _ = _rescan(settings, tmp_path / "since", since=since)
    assert ids["unknown-41"] not in {r["item"] for r in report.run.records} and _changed(report) == {}

    # Applied through the CLI (database found beside the index, as `refrain serve` finds it).
    done = run_refrain("rescan", "uploads", "--index", settings.index_dir, "--out", tmp_path / "apply",
                       "--apply")
    assert done.returncode == 0, done.stderr
    assert f"{ids['unknown-41']}  clear -> blocked_copy  (applied)" in done.stdout, done.stdout
    assert "1 verdicts would change, 1 changed" in done.stdout
    detail = clients["analyst"].get(f"/v1/matches/{ids['unknown-41']}").json()
    assert detail["verdict"] == "blocked_copy" and [w["work_id"] for w in detail["works"]] == [added["work_id"]]
    (change,) = detail["history"]
    assert (change["old_verdict"], change["new_verdict"]) == ("clear", "blocked_copy")
    assert "now matches" in change["reason"] and change["changed_at"]
    (evidence,) = detail["evidence"]
    assert evidence["work_id"] == added["work_id"] and len(evidence["points"]) > 10
    # The analyst's page of that decision shows the change too.
    with httpx.Client(base_url=str(clients["analyst"].base_url), timeout=60.0) as browser:
        signed_in = browser.post("/analyst/signin", data={"key": clients["analyst"].headers["X-API-Key"]},
                                 follow_redirects=True)
        assert signed_in.status_code == 200, signed_in.text
        page = browser.get(f"/analyst/decisions/{ids['unknown-41']}")
    assert page.status_code == 200 and 'id="history"' in page.text
    history_table = page.text.split('id="history"', 1)[1].split("</table>", 1)[0]
    assert "<td>clear</td><td>blocked_copy</td>" in history_table and change["run_id"] in history_table
    listed = clients["analyst"].get("/v1/matches", params={"work_id": added["work_id"]}).json()
    assert [item["decision_id"] for item in listed["items"]] == [ids["unknown-41"]]

    # A revoked licence: the licensed remix would now be blocked, and nothing else changes.
    assert clients["admin"].delete(f"/v1/licences/{licence['licence_id']}").status_code in (200, 204)
    local, _ = _rescan(settings, tmp_path / "revoked")
    assert _changed(local) == {ids["licensed-30"]: ("licensed", "blocked_unlicensed_derivative")}
    (record,) = [r for r in local.run.records if r.get("changed")]
    assert f"licence {licence['licence_id']} was revoked" in record["why"]

    # The same run on Dask (a LocalCluster of thread workers) writes the same outputs.
    _rescan(settings, tmp_path / "revoked-dask",
            options=RescanOptions(jobs=2, dask="local", dask_processes=False, progress=False))
    for name in ("items.jsonl", "summary.csv"):
        assert (tmp_path / "revoked-dask" / name).read_text() == (tmp_path / "revoked" / name).read_text()


def test_service_on_an_index_from_an_earlier_refrain_warns_and_serves_it(pre_mix_index, songs, caplog):
    from refrain.service.core import MatchService
    settings = ServiceSettings(index_dir=pre_mix_index, db_path=pre_mix_index.parent / "service.sqlite")
    with caplog.at_level("WARNING", logger="refrain.service"):
        service = MatchService(settings)
    try:
        assert any("refrain upgrade --index" in record.getMessage() for record in caplog.records)
        assert service.track_count() == 3
    finally:
        service.close()

"""Where the rights workflow (issue 19) meets the lineage (issue 20), over real HTTP and the CLI.

The module's own service (the lineage end-to-end scene: artist A's song, studio B's licensed
sped-up remix published as B1). A lineage claim is held by an open ownership conflict on its
ancestor's span like a direct claim; a rights holder reads the disputes of its own works'
claims (including one attributed through a lineage) but never resolves them; an analyst's
release-and-exclude of a lineage claim excludes the span of the ancestor's recording, and the
same upload no longer carries the ancestor's claim; a rights holder manages the exclusions of
its own works only; `refrain rescan uploads --lineage-of` re-decides A's lineage.
"""

from __future__ import annotations

import csv
import io
import json

import httpx
import pytest
from service_helpers import assert_error, post_file, register
from test_lineage_e2e import B1_POLICY, CONSENT, _licence, _work, scene  # noqa: F401 (scene is a fixture)

from refrain.service.routers.analyst import COOKIE


def _claim_of(body: dict, work_id: int) -> dict | None:
    return next((c for c in body["lineage"] if c["work_id"] == work_id), None)


@pytest.fixture(scope="module")
def published(scene, songs):  # noqa: F811
    """A with its consent (remixes with a licence, 40 %), B's licensed remix published as B1."""
    _, clients, audio = scene
    a, b = clients["a"], clients["b"]
    work_a = _work(clients, songs)
    assert a.put("/v1/works/default-policy", json=CONSENT).status_code == 200
    remix = post_file(b, "/v1/matches", audio["remix"],
                      licence_id=_licence(a, work_a["work_id"], "studio-b", ["remix"])).json()
    assert remix["verdict"] == "licensed", remix
    made = b.post(f"/v1/matches/{remix['decision_id']}/publish",
                  json={"title": "B1", "artists": ["Studio B"], "policy": B1_POLICY})
    assert made.status_code == 201, made.text
    return work_a, made.json(), remix


def test_rights_workflow_along_a_lineage(scene, published, songs, excerpt_file, run_refrain, tmp_path):  # noqa: F811
    settings, clients, audio = scene
    a, b, third, analyst, admin, other = (clients[name] for name in ("a", "b", "third", "analyst", "admin", "other"))
    work_a, b1, remix = published
    b_copy = _licence(b, b1["work_id"], "listener-app", ["copy", "remix"])

    # A copy of B1 licensed by B only: A's claim through the lineage blocks it, with A's seconds carried.
    only_b = post_file(third, "/v1/matches", audio["b1_copy"], licence_id=b_copy).json()
    assert only_b["verdict"] == "blocked_unlicensed_derivative", only_b
    claim = _claim_of(only_b, work_a["work_id"])
    assert claim["outcome"] == "blocked" and claim["spans"], claim
    # B1's seconds 2-12 are A's from 4 s at ×1.1: about 6.2-17.2 s of A's recording.
    assert min(s["ref_start"] for s in claim["spans"]) == pytest.approx(6.2, abs=1.0)
    assert max(s["ref_end"] for s in claim["spans"]) == pytest.approx(17.2, abs=1.0)

    # An open ownership conflict on A's 12-22 s holds the royalties of A's lineage claim, as of a direct claim.
    claimed = register(admin, excerpt_file(44, 12.0, 10.0), "A, claimed", "Label C", conflict="true")
    assert claimed.status_code == 201, claimed.text
    (conflict,) = admin.get("/v1/conflicts").json()["items"]
    a_remix = _licence(a, work_a["work_id"], "listener-app", ["remix"])
    # The new claim matches the copy too: it needs a policy that can be licensed, and the licence.
    assert admin.put(f"/v1/works/{conflict['work_id']}/policy", json=CONSENT).status_code == 200
    c_remix = _licence(admin, conflict["work_id"], "listener-app", ["remix"])
    both = post_file(third, "/v1/matches", audio["b1_copy"], licence_id=[b_copy, a_remix, c_remix]).json()
    assert both["verdict"] == "licensed", both
    held = _claim_of(both, work_a["work_id"])
    assert held["outcome"] == "licensed" and held["royalty"]["share_owed"] > 0, held
    assert (held["royalty"]["held"], held["royalty"]["held_by_conflicts"]) == (True, [conflict["conflict_id"]])
    statement = a.get("/v1/royalties", params={"holder": "artist-a"}).json()
    (line,) = [line for line in statement["lines"] if line["decision_id"] == both["decision_id"]]
    assert line["held"] and line["via_work_id"] == b1["work_id"]
    assert statement["held_share"] == pytest.approx(sum(x["share_owed"] for x in statement["lines"] if x["held"]))
    page = httpx.get(f"{str(analyst.base_url).rstrip('/')}/analyst/decisions/{both['decision_id']}",
                     cookies={COOKIE: analyst.headers["X-API-Key"]})
    table = page.text[page.text.index('id="lineage-claims"'):]
    assert '<strong class="held">held</strong> by ownership conflict' in table[:table.index("</table>")]
    export = analyst.get("/v1/reviews/export", params={"verdict": "licensed"}).text
    rows = [row for row in csv.DictReader(io.StringIO(export)) if row["decision_id"] == both["decision_id"]]
    assert len(rows) == len(both["works"]) + len(both["lineage"])
    (through,) = [row for row in rows if row["via_work_id"]]
    assert (through["work_id"], through["via_work_id"], through["held"]) == (
        str(work_a["work_id"]), str(b1["work_id"]), "True")
    assert float(through["share_owed"]) == pytest.approx(held["royalty"]["share_owed"])
    resolved = admin.post(f"/v1/conflicts/{conflict['conflict_id']}/resolution",
                          json={"keeps": "claimed_work", "note": "A holds the master"})
    assert resolved.status_code == 200, resolved.text
    lifted = _claim_of(analyst.get(f"/v1/matches/{both['decision_id']}").json(), work_a["work_id"])
    assert not lifted["royalty"]["held"] and lifted["royalty"]["held_by_conflicts"] == []
    statement = a.get("/v1/royalties", params={"holder": "artist-a"}).json()
    assert statement["held_share"] == 0 and not any(line["held"] for line in statement["lines"])

    # The uploader disputes; A, whose claim it disputes, follows it in its queue; others do not see it.
    dispute = third.post(f"/v1/matches/{only_b['decision_id']}/disputes",
                         json={"reason": "licence_held", "text": "A licensed us by e-mail"})
    assert dispute.status_code == 201, dispute.text
    dispute = dispute.json()
    assert work_a["track_id"] in dispute["track_ids"] and len(set(dispute["track_ids"])) == len(dispute["track_ids"])
    for query in ({}, {"work_id": work_a["work_id"]}, {"reason": "licence_held"}):
        queue = a.get("/v1/disputes", params=query).json()
        assert [d["dispute_id"] for d in queue["items"]] == [dispute["dispute_id"]] and queue["total"] == 1, query
    assert a.get("/v1/disputes", params={"reason": "fair_use"}).json()["items"] == []
    assert a.get(f"/v1/disputes/{dispute['dispute_id']}").json()["status"] == "open"
    assert other.get("/v1/disputes").json() == {"items": [], "total": 0, "limit": 50, "offset": 0}
    assert_error(other.get(f"/v1/disputes/{dispute['dispute_id']}"), 403, "forbidden")
    for role_denied in (b.get("/v1/disputes"), admin.get("/v1/disputes"), third.get("/v1/disputes")):
        assert_error(role_denied, 403, "forbidden")
    # An analyst finds it by A's work too, although only A's lineage claim (not a direct match) names A.
    assert dispute["dispute_id"] in {d["dispute_id"] for d in analyst.get(
        "/v1/disputes", params={"work_id": work_a["work_id"]}).json()["items"]}
    outcome = {"outcome": "release_and_exclude", "note": "A confirmed the licence; that span is not A's to claim"}
    assert_error(a.post(f"/v1/disputes/{dispute['dispute_id']}/resolution", json=outcome), 403, "forbidden")

    # The analyst releases and excludes: the verdict weighs the lineage claim released, A's span is excluded.
    closed = analyst.post(f"/v1/disputes/{dispute['dispute_id']}/resolution", json=outcome)
    assert closed.status_code == 200, closed.text
    detail = analyst.get(f"/v1/matches/{only_b['decision_id']}").json()
    assert detail["verdict"] == "licensed", detail
    assert _claim_of(detail, work_a["work_id"])["outcome"] == "released"
    assert [(c["kind"], c["old_verdict"]) for c in detail["history"]] == [("dispute", "blocked_unlicensed_derivative")]
    exclusions = a.get(f"/v1/works/{work_a['work_id']}/exclusions").json()["items"]
    assert exclusions and {e["source"] for e in exclusions} == {dispute["dispute_id"]}
    assert min(e["ref_start"] for e in exclusions) <= min(s["ref_start"] for s in claim["spans"])
    assert max(e["ref_end"] for e in exclusions) >= max(s["ref_end"] for s in claim["spans"])
    # The same upload again: nothing of A is left to claim through B1, so B's licence is enough.
    again = post_file(third, "/v1/matches", audio["b1_copy"], licence_id=b_copy).json()
    assert _claim_of(again, work_a["work_id"]) is None and again["verdict"] == "licensed", again

    # A rights holder manages the exclusions of its own works only; analysts and admins any.
    span = {"ref_start": 0.0, "ref_end": 2.0, "reason": "a public-domain count-in"}
    made = a.post(f"/v1/works/{work_a['work_id']}/exclusions", json=span)
    assert made.status_code == 201 and made.json()["created_by"] == "artist-a", made.text
    for denied in (a.get(f"/v1/works/{b1['work_id']}/exclusions"),
                   a.post(f"/v1/works/{b1['work_id']}/exclusions", json=span),
                   other.delete(f"/v1/works/{work_a['work_id']}/exclusions/{made.json()['exclusion_id']}"),
                   b.get(f"/v1/works/{b1['work_id']}/exclusions")):  # an uploader key, although B1 is B's
        assert_error(denied, 403, "forbidden")
    assert analyst.get(f"/v1/works/{b1['work_id']}/exclusions").status_code == 200
    assert a.delete(f"/v1/works/{work_a['work_id']}/exclusions/{made.json()['exclusion_id']}").status_code == 204

    # A withdraws its consent; `refrain rescan uploads --lineage-of A` re-decides A's lineage only.
    unrelated = post_file(third, "/v1/matches", excerpt_file(30, 0.0, 8.0)).json()  # not a registered song
    assert unrelated["works"] == [], unrelated
    assert a.put("/v1/works/default-policy", json={**CONSENT, "remix": "deny"}).status_code == 200
    out = tmp_path / "withdrawn"
    done = run_refrain("rescan", "uploads", "--index", settings.index_dir, "--out", out, "--apply",
                       "--lineage-of", work_a["work_id"])
    assert done.returncode == 0, done.stderr
    records = {r["item"]: r for r in map(json.loads, (out / "items.jsonl").read_text().splitlines())}
    assert set(records) == {remix["decision_id"], only_b["decision_id"], both["decision_id"], again["decision_id"]}
    # B's remix matched A directly beyond the excluded span: A's withdrawn consent now blocks it.
    assert f"{remix['decision_id']}  licensed -> blocked_unlicensed_derivative  (applied)" in done.stdout
    # The copies of B1 no longer carry A's claim (its span there is excluded): A's consent cannot change them.
    assert not records[again["decision_id"]]["changed"], records[again["decision_id"]]
    everything = run_refrain("rescan", "uploads", "--index", settings.index_dir, "--out", tmp_path / "all")
    assert everything.returncode == 0, everything.stderr
    assert unrelated["decision_id"] in everything.stdout or unrelated["decision_id"] in \
        (tmp_path / "all" / "items.jsonl").read_text()
    unknown = run_refrain("rescan", "uploads", "--index", settings.index_dir, "--out", tmp_path / "unknown",
                          "--lineage-of", "999999")
    assert unknown.returncode == 2 and "work 999999 is not registered" in unknown.stderr, unknown
    assert "Traceback" not in unknown.stderr

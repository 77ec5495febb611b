"""One song, its licensed remix published as a work, and what follows: issue 20 end to end, over real HTTP.

A service of its own (the session's shared one must not see these works). Artist A, a
rights holder, registers a song and gives consent once: remixes with a licence, 40 %.
Studio B's licensed sped-up remix is published as work B1. A third uploader's copy of
B1 needs licences from both B and A and then owes both their documented shares; a
pitch-shifted remix of B1 is found and attributed to B1 and A; A withdraws consent and
a lineage rescan flips the descendants' decisions, with history; neither rights holder
can touch the other's works.
"""

from __future__ import annotations

import csv
import io

import httpx
import librosa
import pytest
import soundfile
from conftest import SR, private_service
from service_helpers import assert_error, post_file

from refrain.rescan.jobs import RescanOptions
from refrain.rescan.uploads import rescan_uploads
from refrain.service.settings import ServiceSettings

A_SEED = 44
CONSENT = {"copy": "deny", "remix": "licence_required", "cover": "deny", "royalty_share": 0.4}
B1_POLICY = {"copy": "licence_required", "remix": "licence_required", "cover": "deny", "royalty_share": 0.5}


@pytest.fixture(scope="module")
def scene(tmp_path_factory, songs, sped_up_file, write_audio):
    """The running service, a client per principal, and the audio of each step."""
    root = tmp_path_factory.mktemp("lineage-service")
    settings = ServiceSettings(index_dir=root / "index")
    keys = [("admin", "admin", "ops"), ("analyst", "analyst", "analysts"), ("a", "rights_holder", "artist-a"),
            ("other", "rights_holder", "label-c"), ("b", "uploader", "studio-b"), ("third", "uploader", "listener-app")]
    remix_path = sped_up_file(A_SEED, 4.0, 17.0, 1.1)
    b1_audio, rate = soundfile.read(remix_path, dtype="float32")
    assert rate == SR
    audio = {"remix": remix_path,
             "b1_copy": write_audio(root / "b1-copy.wav", b1_audio[2 * SR:12 * SR]),
             "b1_pitched": write_audio(root / "b1-pitched.wav",
                                       librosa.effects.pitch_shift(b1_audio, sr=SR, n_steps=2.0))}
    with private_service(settings, keys) as clients:
        yield settings, clients, audio


def _work(clients, songs) -> dict:
    song = songs[A_SEED]
    with open(song.path, "rb") as handle:
        made = clients["a"].post("/v1/works", files={"file": (song.path.name, handle, "audio/wav")},
                                 data={"title": "Song A", "artists": ["Artist A"]})
    assert made.status_code == 201, made.text
    return made.json()


def _licence(client: httpx.Client, work_id: int, licensee: str, uses: list[str]) -> str:
    made = client.post("/v1/licences", json={"work_id": work_id, "licensee": licensee, "uses": uses})
    assert made.status_code == 201, made.text
    return made.json()["licence_id"]


def _by_work(body: dict) -> dict[int, dict]:
    return {w["work_id"]: w for w in body["works"]}


def test_one_song_its_published_remix_and_everything_downstream(scene, songs):
    settings, clients, audio = scene
    a, b, third, analyst = clients["a"], clients["b"], clients["third"], clients["analyst"]

    # Artist A registers its song and consents once, for all its works: remixes with a licence, 40 %.
    work_a = _work(clients, songs)
    assert work_a["rights_holder"] == "artist-a" and work_a["policy"]["is_default"]
    assert a.put("/v1/works/default-policy", json=CONSENT).status_code == 200
    in_force = a.get(f"/v1/works/{work_a['work_id']}/policy").json()
    assert {k: in_force[k] for k in CONSENT} == CONSENT and not in_force["is_default"]
    remix_licence = _licence(a, work_a["work_id"], "studio-b", ["remix"])

    # Studio B's sped-up remix, licensed by A, owes A 40 % of the seconds where A sounds.
    made = post_file(b, "/v1/matches", audio["remix"], licence_id=remix_licence)
    assert made.status_code == 200, made.text
    remix = made.json()
    assert remix["verdict"] == "licensed", remix
    matched_a = _by_work(remix)[work_a["work_id"]]
    assert matched_a["kind"] == "speed_changed" and matched_a["royalty"]["share_owed"] == pytest.approx(
        0.4 * matched_a["royalty"]["duration_share"], abs=1e-4)

    # Only B may publish it, never more permissively than A's remix policy allows.
    assert_error(third.post(f"/v1/matches/{remix['decision_id']}/publish",
                            json={"title": "B1", "artists": ["Studio B"]}), 403, "forbidden")
    too_free = {**B1_POLICY, "copy": "allow", "royalty_share": 0.1}
    problem = assert_error(b.post(f"/v1/matches/{remix['decision_id']}/publish",
                                  json={"title": "B1", "artists": ["Studio B"], "policy": too_free}), 422)
    assert "copy must be licence_required" in problem["message"] and "at least 0.4" in problem["message"]
    made = b.post(f"/v1/matches/{remix['decision_id']}/publish",
                  json={"title": "B1", "artists": ["Studio B"], "policy": B1_POLICY})
    assert made.status_code == 201, made.text
    b1 = made.json()
    assert (b1["rights_holder"], b1["policy"]["royalty_share"]) == ("studio-b", 0.5)
    assert_error(b.post(f"/v1/matches/{remix['decision_id']}/publish",
                        json={"title": "B1 again", "artists": ["Studio B"]}), 409, "conflict")

    # The lineage: B1 derives from A, with the evidence of the remix's match.
    lineage = analyst.get(f"/v1/works/{b1['work_id']}/lineage").json()
    assert [w["work_id"] for w in lineage["ancestors"]] == [work_a["work_id"]] and lineage["descendants"] == []
    (link,) = lineage["links"]
    assert (link["parent_work_id"], link["kind"], link["decision_id"]) == (work_a["work_id"], "speed_changed",
                                                                          remix["decision_id"])
    assert link["time_ratio"] == pytest.approx(matched_a["time_ratio"]) and link["spans"]
    assert link["share"] == matched_a["royalty"]["duration_share"]
    assert [w["work_id"] for w in analyst.get(f"/v1/works/{work_a['work_id']}/lineage").json()["descendants"]] \
        == [b1["work_id"]]
    # ... drawn on the analyst page: a box per work, an arrow from B1 to A, the evidence in a table.
    page = httpx.get(f"{str(analyst.base_url).rstrip('/')}/analyst/works/{b1['work_id']}/lineage",
                     cookies={"refrain_analyst_key": analyst.headers["X-API-Key"]})
    assert page.status_code == 200 and "<svg" in page.text
    for needle in (f'id="lineage-work-{work_a["work_id"]}"', f'id="lineage-work-{b1["work_id"]}"',
                   f'data-child="{b1["work_id"]}" data-parent="{work_a["work_id"]}"', remix["decision_id"]):
        assert needle in page.text, needle

    # A third uploader's copy of B1 is blocked unless licensed by both B and A.
    blocked = post_file(third, "/v1/matches", audio["b1_copy"]).json()
    assert blocked["verdict"] == "blocked_copy", blocked
    assert_error(third.post(f"/v1/matches/{blocked['decision_id']}/publish",
                            json={"title": "Mine now", "artists": ["App"]}), 409, "conflict")
    b_copy = _licence(b, b1["work_id"], "listener-app", ["copy", "remix"])
    only_b = post_file(third, "/v1/matches", audio["b1_copy"], licence_id=b_copy).json()
    assert only_b["verdict"] == "blocked_unlicensed_derivative", only_b
    claim = next(c for c in only_b["lineage"] if c["work_id"] == work_a["work_id"])
    assert (claim["via_work_id"], claim["use"], claim["outcome"]) == (b1["work_id"], "remix", "blocked")
    a_remix = _licence(a, work_a["work_id"], "listener-app", ["remix"])
    made = post_file(third, "/v1/matches", audio["b1_copy"], licence_id=[b_copy, a_remix])
    licensed_copy = made.json()
    assert licensed_copy["verdict"] == "licensed", licensed_copy

    # ... and owes B and A their shares exactly as documented (docs/lineage.md).
    copied = _by_work(licensed_copy)[b1["work_id"]]
    claim = next(c for c in licensed_copy["lineage"] if c["work_id"] == work_a["work_id"])
    s = copied["royalty"]["duration_share"] * 0.5  # what B1's match earns
    assert claim["path"] == [b1["work_id"], work_a["work_id"]] and claim["licence_id"] == a_remix
    assert claim["royalty"]["share_owed"] == pytest.approx(s * 0.4 * link["share"], abs=2e-4)
    assert copied["royalty"]["share_owed"] == pytest.approx(s * (1 - 0.4 * link["share"]), abs=2e-4)
    direct_a = _by_work(licensed_copy).get(work_a["work_id"])  # A may be matched directly too: paid once
    assert direct_a is None or direct_a["royalty"]["share_owed"] == 0.0
    assert licensed_copy["total_share_owed"] == pytest.approx(s, abs=2e-4)

    # A remix of B1, pitch-shifted again, is found and attributed to B1 and, through it, to A.
    pitched = post_file(third, "/v1/matches", audio["b1_pitched"], licence_id=[b_copy, a_remix]).json()
    assert _by_work(pitched)[b1["work_id"]]["use"] == "remix", pitched
    assert [(c["via_work_id"], c["work_id"]) for c in pitched["lineage"]] == [(b1["work_id"], work_a["work_id"])]
    assert pitched["verdict"] == "licensed", pitched
    # An analyst looking into A sees the uploads that claim it through B1 beside those that matched it.
    listed = analyst.get("/v1/matches", params={"work_id": work_a["work_id"], "limit": 500})
    about_a = {d["decision_id"] for d in listed.json()["items"]}
    assert {only_b["decision_id"], licensed_copy["decision_id"], pitched["decision_id"]} <= about_a
    # B1 was published from an upload, so only its fingerprint is kept: its side of the evidence is resynthesised.
    heard = analyst.get(f"/v1/matches/{licensed_copy['decision_id']}/audio/{b1['track_id']}",
                        params={"side": "reference"})
    assert heard.status_code == 200 and heard.headers["X-Refrain-Audio-Source"] == "resynthesised-peaks"
    assert len(heard.content) > 10_000  # a WAV header, then the matched region as sound

    # Royalty statements: A is owed by B's remix directly and by the third's uploads through B1.
    statement = a.get("/v1/royalties", params={"holder": "artist-a"}).json()
    lines = {(line["decision_id"], line["via_work_id"]): line["share_owed"] for line in statement["lines"]}
    assert lines[(remix["decision_id"], None)] == matched_a["royalty"]["share_owed"]
    assert lines[(licensed_copy["decision_id"], b1["work_id"])] == claim["royalty"]["share_owed"]
    assert (pitched["decision_id"], b1["work_id"]) in lines and only_b["decision_id"] not in {d for d, _ in lines}
    assert statement["total_share_owed"] == pytest.approx(sum(lines.values()))
    as_csv = a.get("/v1/royalties", params={"holder": "artist-a"}, headers={"Accept": "text/csv"})
    assert as_csv.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert sum(float(r["share_owed"]) for r in rows) == pytest.approx(statement["total_share_owed"])
    assert a.get("/v1/royalties", params={"holder": "artist-a", "format": "csv"}).text == as_csv.text
    b_lines = b.get("/v1/royalties", params={"holder": "studio-b"}).json()["lines"]
    assert {line["decision_id"] for line in b_lines} == {licensed_copy["decision_id"], pitched["decision_id"]}
    assert_error(a.get("/v1/royalties", params={"holder": "studio-b"}), 403, "forbidden")

    # An analyst's resolution weighs the lineage claims too: allowing B1 leaves A's claim blocking the upload.
    resolved = analyst.post(f"/v1/matches/{only_b['decision_id']}/resolution",
                            json={"works": [{"track_id": b1["track_id"], "resolution": "allow"},
                                            {"track_id": work_a["track_id"], "resolution": "confirm"}],
                                  "note": "B's licence checked; A never licensed the app"})
    assert resolved.status_code == 200, resolved.text
    assert resolved.json()["verdict"] == "blocked_unlicensed_derivative"
    assert [c["reason"] for c in resolved.json()["lineage"]] == [
        "an analyst chose to confirm this claim: B's licence checked; A never licensed the app"]

    # A withdraws its consent: a rescan of A's lineage flips A's remix and every descendant's upload.
    assert a.put("/v1/works/default-policy", json={**CONSENT, "remix": "deny"}).status_code == 200
    report = rescan_uploads(settings.index_dir, settings.db_path, settings.index_dir.parent / "withdrawn",
                            settings.review_confidence, apply=True, options=RescanOptions(progress=False),
                            lineage_of=work_a["work_id"])
    flipped = {r["item"]: r for r in report.run.records}
    assert set(flipped) == {remix["decision_id"], blocked["decision_id"], only_b["decision_id"],
                            licensed_copy["decision_id"], pitched["decision_id"]}
    for decision in (remix, licensed_copy, pitched):
        assert flipped[decision["decision_id"]]["applied"], flipped[decision["decision_id"]]
        detail = analyst.get(f"/v1/matches/{decision['decision_id']}").json()
        assert detail["verdict"] == "blocked_unlicensed_derivative", detail
        (change,) = detail["history"]
        assert (change["old_verdict"], change["kind"]) == ("licensed", "rescan")
        assert "denies remixes" in change["reason"]
    assert not flipped[blocked["decision_id"]]["changed"]  # blocked before, blocked still
    assert a.get("/v1/royalties", params={"holder": "artist-a"}).json()["lines"] == []

    # Neither rights holder can touch the other's works; a rights holder registers for itself only.
    for denied in (a.put(f"/v1/works/{b1['work_id']}/policy", json=B1_POLICY),
                   a.post("/v1/licences", json={"work_id": b1["work_id"], "licensee": "artist-a", "uses": ["copy"]}),
                   a.get(f"/v1/works/{b1['work_id']}/lineage"), a.get(f"/v1/licences/{b_copy}"),
                   a.delete(f"/v1/licences/{b_copy}"), a.get("/v1/licences", params={"work_id": b1["work_id"]}),
                   b.put(f"/v1/works/{work_a['work_id']}/policy", json=CONSENT),
                   clients["other"].delete(f"/v1/licences/{a_remix}")):
        assert_error(denied, 403, "forbidden")
    assert [w["work_id"] for w in a.get("/v1/works").json()["items"]] == [work_a["work_id"]]
    assert [w["work_id"] for w in b.get("/v1/works").json()["items"]] == [b1["work_id"]]
    assert_error(third.get("/v1/works"), 403, "forbidden")  # an uploader that published nothing
    with open(audio["remix"], "rb") as handle:
        refused = clients["other"].post("/v1/works", files={"file": ("x.wav", handle, "audio/wav")},
                                        data={"title": "Not mine", "artists": ["C"], "rights_holder": "artist-a"})
    assert "registers works for itself" in assert_error(refused, 422, "validation_error")["message"]

"""Trust: licences bind to principals, the last admin key stays, hostile input gets a precise 4xx."""

from __future__ import annotations

import json
import re
import sqlite3
import stat

import httpx
import pytest
from service_helpers import LICENSEE, assert_error, grant, post_file

from refrain.service.db import _MIGRATIONS, LastAdminKeyError, ServiceDB, hash_key

SPED_UP = (30, 5.0, 12.0, 1.1)  # a sped-up remix of the "remixable" work (remix: licence_required)


def test_a_licence_covers_its_principal_and_nobody_who_types_its_name(live_service, admin, uploader,
                                                                      sped_up_file):
    work_id = live_service.works["remixable"]["work_id"]
    licence = grant(admin, work_id, ["remix"])  # to LICENSEE, the principal of the suite's uploader key
    rival = admin.post("/v1/keys", json={"role": "uploader", "principal": "rival-studio"}).json()["key"]
    path = sped_up_file(*SPED_UP)
    with live_service.client() as client:
        client.headers["X-API-Key"] = rival
        # Principal B's key, claiming to be A by every field a client controls.
        stolen = post_file(client, "/v1/matches", path, uploader_id=LICENSEE, licence_id=licence["licence_id"])
    assert stolen.status_code == 200, stolen.text
    body = stolen.json()
    assert body["verdict"] == "blocked_unlicensed_derivative" and body["principal"] == "rival-studio"
    assert body["uploader_id"] == LICENSEE  # recorded as the sub-account label it claimed, nothing more
    assert "another licensee" in body["works"][0]["reason"]
    own = post_file(uploader, "/v1/matches", path, uploader_id="team-b", licence_id=licence["licence_id"])
    assert own.status_code == 200 and own.json()["verdict"] == "licensed", own.text
    assert own.json()["principal"] == LICENSEE and own.json()["uploader_id"] == "team-b"


def test_the_last_admin_key_cannot_be_revoked(live_service, admin):
    own_prefix = live_service.keys["admin"][:12]
    spare = admin.post("/v1/keys", json={"role": "admin", "principal": "catalogue-ops"}).json()
    for key in admin.get("/v1/keys").json()["items"]:
        if key["role"] == "admin" and key["revoked_at"] is None and key["prefix"] != own_prefix:
            assert admin.delete(f"/v1/keys/{key['prefix']}").status_code == 200
    assert spare["prefix"] != own_prefix
    refused = assert_error(admin.delete(f"/v1/keys/{own_prefix}"), 409, "last_admin_key")
    assert "last live admin key" in refused["message"]
    assert admin.get("/v1/keys").status_code == 200  # still in charge


def test_keys_are_listed_and_revoked_from_the_cli(tmp_path, run_refrain):
    db = tmp_path / "service.sqlite"
    made = {}
    for role, principal in (("admin", "ops"), ("uploader", "studio-x")):
        done = run_refrain("keys", "create", "--role", role, "--principal", principal, "--db", db)
        assert done.returncode == 0, done.stderr
        made[role] = done.stdout.strip()[:12]
    listed = run_refrain("keys", "list", "--json", "--db", db)
    rows = {row["prefix"]: row for row in map(json.loads, listed.stdout.splitlines())}
    assert rows[made["uploader"]]["principal"] == "studio-x" and rows[made["admin"]]["role"] == "admin"
    assert run_refrain("keys", "revoke", made["uploader"], "--db", db).returncode == 0
    last = run_refrain("keys", "revoke", made["admin"], "--db", db)
    assert last.returncode == 1 and "last live admin key" in last.stderr and "Traceback" not in last.stderr
    assert run_refrain("keys", "revoke", "rk_nothere", "--db", db).returncode == 1
    text = run_refrain("keys", "list", "--db", db).stdout
    assert re.search(rf"{re.escape(made['uploader'])}\s+uploader\s+revoked", text)
    assert re.search(rf"{re.escape(made['admin'])}\s+admin\s+live", text)
    kind = run_refrain("keys", "create", "--role", "admin", "--principal", "studio-x", "--db", db)
    assert kind.returncode == 1 and "is of kind uploader" in kind.stderr


def _v2_database(path):
    """A service database as the previous release wrote it: schema v2, keys without principals."""
    raw = sqlite3.connect(path, isolation_level=None)
    for number, script in enumerate(_MIGRATIONS[:2], start=1):
        raw.executescript(f"BEGIN; {script}; PRAGMA user_version={number}; COMMIT;")
    now = "2026-01-01T00:00:00.000000+00:00"
    keys = [("rk_admin0001", "admin", "ops team"), ("rk_admin0002", "admin", None),
            ("rk_upload001", "uploader", "studio-ai"), ("rk_upload002", "uploader", "studio-ai"),
            ("rk_analyst01", "analyst", "audit")]
    for prefix, role, label in keys:
        raw.execute("INSERT INTO api_keys (prefix, key_hash, role, label, created_at) VALUES (?, ?, ?, ?, ?)",
                    (prefix, hash_key(prefix + "-secret"), role, label, now))
    raw.execute("INSERT INTO licences (licence_id, work_id, licensee, uses, granted_at) VALUES"
                " ('lic_1', 1, 'studio-ai', '[\"remix\"]', ?), ('lic_2', 1, 'other', '[\"copy\"]', ?)", (now, now))
    body = {"decision_id": "dec_1", "uploader_id": "studio-ai", "works": []}
    raw.execute("INSERT INTO decisions (decision_id, created_at, verdict, uploader_id, key_prefix, filename, body)"
                " VALUES ('dec_1', ?, 'clear', 'studio-ai', 'rk_upload001', 'a.wav', ?)", (now, json.dumps(body)))
    raw.close()


def test_an_existing_database_is_migrated_to_principals_in_place(tmp_path):
    path = tmp_path / "old.sqlite"
    _v2_database(path)
    path.chmod(0o644)
    db = ServiceDB(path)
    try:
        principals = {p.name: p.kind for p in db.list_principals()}
        # One principal per key owner the old schema knew (label and role); licensees by name.
        assert principals == {"ops team (admin)": "admin", "keys (admin)": "admin",
                              "studio-ai (uploader)": "uploader", "audit (analyst)": "analyst_team",
                              "studio-ai": "uploader", "other": "uploader"}
        keys = {k.prefix: k.principal for k in db.list_keys()}
        assert keys["rk_upload001"] == keys["rk_upload002"] == "studio-ai (uploader)"
        assert db.authenticate("rk_admin0002-secret").principal == "keys (admin)"
        assert db.get_licence("lic_1").licensee == "studio-ai"
        # The old binding was a typed name: the migrated keys do not inherit studio-ai's licence.
        assert db.get_licence("lic_1").licensee != keys["rk_upload001"]
        assert db.get_decision("dec_1").body["principal"] == "studio-ai (uploader)"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert db.revoke_key("rk_admin0001").revoked_at is not None
        with pytest.raises(LastAdminKeyError):
            db.revoke_key("rk_admin0002")
    finally:
        db.close()
    reopened = ServiceDB(path)  # nothing is migrated twice
    assert len(reopened.list_principals()) == len(principals)
    reopened.close()


def test_a_failed_migration_leaves_the_database_as_it_was(tmp_path):
    path = tmp_path / "old.sqlite"
    _v2_database(path)
    with sqlite3.connect(path) as raw:  # makes migration 3 fail half-way: its table already exists
        raw.execute("CREATE TABLE principals (x)")
    with pytest.raises(sqlite3.OperationalError):
        ServiceDB(path)
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == 2
        assert "principal_id" not in {row[1] for row in raw.execute("PRAGMA table_info(api_keys)")}


TOO_BIG = 2**63


@pytest.mark.parametrize("role, method, url", [
    ("admin", "GET", f"/v1/works/{TOO_BIG}"), ("admin", "DELETE", f"/v1/works/{TOO_BIG}"),
    ("admin", "GET", f"/v1/works?offset={TOO_BIG}"), ("admin", "GET", f"/v1/licences?work_id={TOO_BIG}"),
    ("admin", "GET", f"/v1/licences?offset={TOO_BIG}"), ("analyst", "GET", f"/v1/matches?work_id={TOO_BIG}"),
    ("analyst", "GET", f"/v1/matches?offset={TOO_BIG}"),
    ("analyst", "GET", "/v1/matches?since=9999-12-31T23:59:59-05:00"),
    ("analyst", "GET", "/v1/matches?since=0001-01-01T00:00:00%2B01:00"),
    ("analyst", "GET", f"/v1/matches/dec_x/spectrogram/{TOO_BIG}"),
])
def test_out_of_range_ids_offsets_and_dates_are_422(live_service, role, method, url):
    with live_service.client(role) as client:
        assert_error(client.request(method, url), 422, "validation_error")


@pytest.mark.parametrize("field, value", [("work_id", TOO_BIG), ("valid_until", "9999-12-31T23:59:59-05:00"),
                                          ("valid_until", "0001-01-01T00:00:00+01:00")])
def test_a_licence_out_of_range_is_422(admin, live_service, field, value):
    body = {"work_id": live_service.works["default"]["work_id"], "licensee": LICENSEE, "uses": ["copy"], field: value}
    assert_error(admin.post("/v1/licences", json=body), 422, "validation_error")


def test_a_nul_byte_in_a_filename_is_400(uploader, live_service, excerpt_file):
    data = excerpt_file(30, 8.0, 10.0).read_bytes()
    for name in (b"bad\x00name.wav", b"tab\tname.wav", b"x" * 300 + b".wav"):
        # By hand: HTTP clients escape such names, a hostile client does not.
        body = (b"--edge\r\nContent-Disposition: form-data; name=\"file\"; filename=\"" + name + b"\"\r\n"
                b"Content-Type: audio/wav\r\n\r\n" + data + b"\r\n--edge--\r\n")
        done = uploader.post("/v1/matches", content=body,
                             headers={"Content-Type": "multipart/form-data; boundary=edge"})
        assert_error(done, 400, "bad_request")
    assert not list(live_service.settings.upload_dir.iterdir())  # nothing left behind


def test_a_truncated_ogg_is_415_corrupt_or_truncated(uploader, songs, tmp_path, write_audio):
    import subprocess

    import imageio_ffmpeg
    wav = write_audio(tmp_path / "whole.wav", songs[30].excerpt(0.0, 20.0))
    ogg = tmp_path / "whole.ogg"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(wav), "-c:a", "libvorbis", str(ogg)],
                   check=True)
    data = ogg.read_bytes()
    done = uploader.post("/v1/matches", files={"file": ("cut.ogg", data[:int(len(data) * 0.4)], "audio/ogg")})
    body = assert_error(done, 415, "undecodable_audio")
    assert "corrupt or truncated audio" in body["message"] and "cut.ogg" in body["message"]


def test_analyst_page_answers_an_unknown_decision_and_a_non_audio_file_with_an_error_page(live_service):
    with httpx.Client(base_url=live_service.url, timeout=60.0) as browser:
        assert browser.post("/analyst/signin", data={"key": live_service.keys["analyst"]}).status_code == 303
        missing = browser.get("/analyst/decisions/dec_nothere")
        assert missing.status_code == 404 and "dec_nothere" in missing.text
        junk = browser.post("/analyst/match", files={"file": ("notes.mp3", b"not audio\n" * 200, "audio/mpeg")})
        assert junk.status_code == 415 and 'id="error-message"' in junk.text


def test_html_pages_carry_security_headers_and_the_docs_work_offline(live_service):
    with httpx.Client(base_url=live_service.url, timeout=30.0) as client:
        for url in ("/analyst", "/docs", "/redoc"):
            page = client.get(url)
            assert page.status_code == 200, url
            assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
            assert page.headers["x-frame-options"] == "DENY" and page.headers["x-content-type-options"] == "nosniff"
            # Every script and stylesheet comes from this server: nothing from a CDN.
            assert not re.search(r"""(src|href)=["']https?://""", page.text), url
            for asset in re.findall(r"""(?:src|href)=["'](/docs-assets/[^"']+)""", page.text):
                assert client.get(asset).status_code == 200, asset
        assert "script-src" not in client.get("/analyst").headers["content-security-policy"]  # no script at all
        assert client.get("/v1/health").headers["x-content-type-options"] == "nosniff"

"""Adding a recording from its stored fingerprint (``Refrain.ingest_fingerprint``): matchable like an ingested file."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from refrain.api import Refrain
from refrain.config import Config
from refrain.fingerprint import fingerprint_signal
from refrain.fingerprint.serialize import fingerprint_from_bytes, fingerprint_to_bytes
from refrain.index import TrackMetadata


def test_a_stored_upload_fingerprint_becomes_a_matchable_track(index_copy, unrelated_songs):
    seed, samples = next(iter(unrelated_songs.items()))
    with Refrain.open(index_copy, writable=True) as refrain:
        assert not refrain.match_signal(samples[:10 * 22050]).matches
        # As the service keeps an upload: a query fingerprint (dense peaks), stored as bytes.
        blob = fingerprint_to_bytes(fingerprint_signal(samples, refrain.params, dense_peaks=True), refrain.params)
        fp = fingerprint_from_bytes(blob, refrain.params)
        digest = hashlib.sha256(samples.tobytes()).hexdigest()
        before = refrain.info().tracks
        added = refrain.ingest_fingerprint(fp, "published/dec_1.fingerprint", digest,
                                           TrackMetadata(title="Published remix"))
        assert added.status == "added" and added.n_landmarks == len(fp)
        assert refrain.info().tracks == before + 1
        again = refrain.ingest_fingerprint(fp, "published/other.fingerprint", digest)
        assert (again.status, again.track_id) == ("unchanged", added.track_id)
    with Refrain.open(index_copy) as reopened:  # committed: another process sees it
        found = reopened.match_signal(samples[5 * 22050:15 * 22050]).matches
        assert [(m.track_id, m.title) for m in found] == [(added.track_id, "Published remix")]
        assert found[0].kind in ("copy", "excerpt")


def test_a_fingerprint_without_what_the_index_stores_is_refused(tmp_path, unrelated_songs):
    samples = next(iter(unrelated_songs.values()))
    with Refrain.open(tmp_path / "index", config=Config().searching_covers(True), writable=True,
                      create=True) as refrain:
        assert refrain.store.melody is not None
        fp = replace(fingerprint_signal(samples, refrain.params), melody=None)
        with pytest.raises(ValueError, match="no melody"):
            refrain.ingest_fingerprint(fp, "x", "0" * 64)
        assert refrain.info().tracks == 0

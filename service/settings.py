"""The service's one settings object; every field can be set by an env var ``REFRAIN_<NAME>``."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from refrain.policy import DEFAULT_REVIEW_CONFIDENCE

__all__ = ["ServiceSettings"]

MB = 1_000_000


class ServiceSettings(BaseSettings):
    """Settings of the match service, with their documented defaults.

    Attributes
    ----------
    index_dir : Path
        The Refrain index directory (the same one ``refrain ingest`` uses). Created if
        missing. The service holds its write lock while it runs.
    db_path : Path or None
        The service's SQLite database (works, policies, licences, API keys,
        decisions). Default: ``<index_dir>.service.sqlite`` beside the index directory
        (not inside it: the index directory belongs to the index store).
    works_dir : Path or None
        Where uploaded reference recordings are kept (the catalogue's source files).
        Default: ``<index_dir>.works/``.
    max_upload_bytes : int
        Largest accepted upload, file part of the form (default 200 MB). A bigger
        upload is refused with 413 while it streams in.
    max_upload_seconds : float
        Longest accepted upload to match (default 1200 s = 20 min) → 413.
    max_reference_seconds : float
        Longest accepted reference recording (default 6 h, as ``refrain ingest``).
    review_confidence : float
        A match whose confidence is below this (default
        :data:`policy.DEFAULT_REVIEW_CONFIDENCE`, 1 - 1e-6: a chance above one in a million
        that unrelated music matches this well) is weak evidence: if the policy would
        block it, the verdict is ``review`` instead.
    spectrogram_max_seconds : float
        Longest stretch of an upload stored as a spectrogram image per matched work
        (default 30 s).
    host, port : str, int
        Where ``refrain serve`` listens (default 127.0.0.1:8000).
    cookie_secure : bool
        Mark the analyst page's sign-in cookie ``Secure`` (default False; set True
        behind HTTPS).
    match_covers : bool
        Also search the melody tier for covers (default True: it reports 95 % of the
        benchmark's covers, with no false cover on same-style or real music, see
        docs/benchmarks.md#covers); a cover's verdict follows the work's ``covers`` policy. False
        leaves only the landmark tiers (faster for uploads of 16 s or more).
    """

    model_config = SettingsConfigDict(env_prefix="REFRAIN_", extra="forbid")

    index_dir: Path
    db_path: Path | None = None
    works_dir: Path | None = None
    max_upload_bytes: int = Field(200 * MB, gt=0)
    max_upload_seconds: float = Field(1200.0, gt=0)
    max_reference_seconds: float = Field(6 * 3600.0, gt=0)
    review_confidence: float = Field(DEFAULT_REVIEW_CONFIDENCE, ge=0.0, le=1.0)
    spectrogram_max_seconds: float = Field(30.0, gt=0)
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    cookie_secure: bool = False
    match_covers: bool = True

    @model_validator(mode="after")
    def _default_paths(self) -> "ServiceSettings":
        # Beside the index directory, never inside it: `IndexStore` owns that folder.
        base = self.index_dir.resolve()
        if self.db_path is None:
            self.db_path = base.with_name(base.name + ".service.sqlite")
        if self.works_dir is None:
            self.works_dir = base.with_name(base.name + ".works")
        return self

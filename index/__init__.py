"""The catalogue store: landmark hashes in FAISS, track metadata in SQLite, one directory."""

from index.catalog import Catalog, Track, TrackMetadata
from index.landmarks import LandmarkIndex
from index.melody import MelodyIndex
from index.store import IndexBusyError, IndexOpenError, IndexStore

__all__ = ["Catalog", "IndexBusyError", "IndexOpenError", "IndexStore", "LandmarkIndex", "MelodyIndex", "Track",
           "TrackMetadata"]

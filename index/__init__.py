"""The catalogue store: landmark hashes in FAISS, track metadata in SQLite, one directory."""

from refrain.index.catalog import Catalog, Track, TrackMetadata
from refrain.index.landmarks import LandmarkIndex
from refrain.index.melody import MelodyIndex
from refrain.index.store import IndexBusyError, IndexOpenError, IndexStore

__all__ = ["Catalog", "IndexBusyError", "IndexOpenError", "IndexStore", "LandmarkIndex", "MelodyIndex", "Track",
           "TrackMetadata"]

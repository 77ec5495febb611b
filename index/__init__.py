"""The catalogue store: landmark hashes in FAISS, track metadata in SQLite, one directory."""

from refrain.index.catalog import Catalog, Track, TrackMetadata
from refrain.index.landmarks import LandmarkIndex
from refrain.index.melody import MelodyIndex
from refrain.index.store import IndexBusyError, IndexOpenError, IndexStore, IndexWriteParams

__all__ = ["Catalog", "IndexBusyError", "IndexOpenError", "IndexStore", "IndexWriteParams", "LandmarkIndex",
           "MelodyIndex", "Track", "TrackMetadata"]

"""segstore: a crash-safe segmented log store for the Raft log of a partitioned service."""

from segstore.errors import SegstoreError

__version__ = "0.1.0"

__all__ = ["SegstoreError", "__version__"]

"""Raft contracts mirroring eBay NuRaft, and the in-memory reference ``LogStore``.

See docs/RAFT_CONTRACT.md for every ``LogStore`` method, NuRaft's semantics and
the quirks decided here.
"""

from __future__ import annotations

from segstore.raft.log_entry import DUMMY_ENTRY, LogEntry, LogValType
from segstore.raft.log_store import CompactCallback, LogStore
from segstore.raft.memory_store import InMemoryLogStore
from segstore.raft.pack import decode_pack, encode_pack
from segstore.raft.partition_entry import (
    LOG_HEADER_DTYPE,
    NO_PARTITION,
    decode_partition,
    encode_entry,
    entry_payload,
)
from segstore.raft.segmented_store import SegmentedLogStore
from segstore.raft.state_machine import (
    Snapshot,
    SnapshotDoneCallback,
    SnapshotObject,
    SnapshotType,
    StateMachine,
)
from segstore.raft.state_mgr import ClusterConfig, ServerConfig, ServerState, StateMgr

__all__ = [
    "DUMMY_ENTRY",
    "LOG_HEADER_DTYPE",
    "NO_PARTITION",
    "ClusterConfig",
    "CompactCallback",
    "InMemoryLogStore",
    "LogEntry",
    "LogStore",
    "LogValType",
    "SegmentedLogStore",
    "ServerConfig",
    "ServerState",
    "Snapshot",
    "SnapshotDoneCallback",
    "SnapshotObject",
    "SnapshotType",
    "StateMachine",
    "StateMgr",
    "decode_pack",
    "decode_partition",
    "encode_entry",
    "encode_pack",
    "entry_payload",
]

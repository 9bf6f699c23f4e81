"""``SegmentedStateMachine``: the one state machine a Raft engine sees.

It implements NuRaft's ``state_machine`` contract (:class:`StateMachine`) over a
:class:`~segstore.raft.segmented_store.SegmentedLogStore` and an
:class:`~segstore.applier.Applier`: ``commit(log_idx, data)`` looks up the entry's
partition and partition index in the store's header columns (the index the leader's
store assigned is not in the value) and queues it for that partition's
:class:`~segstore.applier.PartitionStateMachine`. Applies are asynchronous, so
``commit`` returns None; results reach :meth:`Applier.on_applied` callbacks.

Restart: right after an open, :meth:`last_commit_index` is the applier's durable floor,
so the engine re-commits from there and entries a partition already applied are skipped
(exactly once); later it is the in-memory apply progress.

Raft snapshots (logical objects): ``create_snapshot(s)`` waits until every entry up to
``s.last_log_idx`` is applied, checkpoints every partition and stores one blob (format
below, docs/FORMAT.md section 7.6) in the checkpoint store; ``read_logical_snp_obj``
serves it in chunks of :data:`SNAPSHOT_CHUNK_BYTES`; ``save_logical_snp_obj`` collects
a received one and ``apply_snapshot`` installs it into every partition.

Snapshot blob, little-endian: magic ``b"SGSNAP01"``; ``u64`` last_log_idx; ``u64``
last_log_term; ``u32`` length and UTF-8 JSON of the cluster config; ``u32`` N; N times
``u32`` partition id, ``u64`` applied index, ``u64`` applied raft index, ``u32`` length,
snapshot bytes; ``u32`` CRC32C of every byte before it.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict
from typing import Final

from segstore.applier import Applier, StateMachineFactory
from segstore.checkpoints import AppliedCheckpoint, AppliedUpdate
from segstore.errors import CorruptionError, InvalidArgumentError
from segstore.raft.pack import crc32c
from segstore.raft.partition_entry import NO_PARTITION, PARTITION_HEADER_BYTES, decode_partition
from segstore.raft.segmented_store import SegmentedLogStore
from segstore.raft.state_machine import (
    Snapshot,
    SnapshotDoneCallback,
    SnapshotObject,
    StateMachine,
)
from segstore.raft.state_mgr import ClusterConfig, ServerConfig

SNAPSHOT_MAGIC: Final = b"SGSNAP01"
SNAPSHOT_CHUNK_BYTES: Final = 1 << 20
"""Size of the logical snapshot objects sent to a follower."""

_HEAD = struct.Struct("<8sQQ")
_U32 = struct.Struct("<I")
_PART = struct.Struct("<IQQI")


def encode_snapshot(snapshot: Snapshot, states: dict[int, AppliedCheckpoint]) -> bytes:
    """The blob of a Raft snapshot: its metadata and every partition's state."""
    config = json.dumps(asdict(snapshot.last_config), sort_keys=True).encode()
    parts = [
        _HEAD.pack(SNAPSHOT_MAGIC, snapshot.last_log_idx, snapshot.last_log_term),
        _U32.pack(len(config)),
        config,
        _U32.pack(len(states)),
    ]
    for pid in sorted(states):
        state = states[pid]
        parts.append(
            _PART.pack(pid, state.applied_index, state.applied_raft_index, len(state.snapshot))
        )
        parts.append(state.snapshot)
    body = b"".join(parts)
    return body + _U32.pack(crc32c(body))


def decode_snapshot(blob: bytes) -> tuple[Snapshot, dict[int, AppliedCheckpoint]]:
    """Parse :func:`encode_snapshot`'s blob; :class:`CorruptionError` if damaged."""
    where = "<raft snapshot>"
    if len(blob) < _HEAD.size + 2 * _U32.size + _U32.size:
        raise CorruptionError(where, 0, f"snapshot of {len(blob)} bytes is too short")
    (stored,) = _U32.unpack_from(blob, len(blob) - 4)
    if crc32c(blob[:-4]) != stored:
        raise CorruptionError(where, len(blob) - 4, "snapshot CRC32C mismatch")
    magic, last_idx, last_term = _HEAD.unpack_from(blob)
    if magic != SNAPSHOT_MAGIC:
        raise CorruptionError(where, 0, f"bad snapshot magic {magic!r}")
    try:
        offset = _HEAD.size
        (size,) = _U32.unpack_from(blob, offset)
        raw = json.loads(blob[offset + 4 : offset + 4 + size])
        offset += 4 + size
        config = ClusterConfig(
            **{**raw, "servers": tuple(ServerConfig(**srv) for srv in raw["servers"])}
        )
        (count,) = _U32.unpack_from(blob, offset)
        offset += 4
        states: dict[int, AppliedCheckpoint] = {}
        for _ in range(count):
            pid, applied, applied_raft, size = _PART.unpack_from(blob, offset)
            offset += _PART.size
            states[pid] = AppliedCheckpoint(applied, applied_raft, blob[offset : offset + size])
            offset += size
    except (struct.error, ValueError, TypeError, KeyError) as exc:
        raise CorruptionError(where, 0, f"malformed snapshot: {exc}") from exc
    if offset != len(blob) - 4:
        raise CorruptionError(where, offset, "trailing bytes after the partition states")
    return Snapshot(last_idx, last_term, config), states


class SegmentedStateMachine(StateMachine):
    """NuRaft ``state_machine`` fanning committed entries out to partition state
    machines through an :class:`Applier` (see the module docstring)."""

    def __init__(
        self,
        store: SegmentedLogStore,
        factory: StateMachineFactory,
        *,
        apply_threads: int = 4,
        max_pending: int = 100_000,
        max_lag: int = 10_000_000,
    ) -> None:
        """Restore every partition from ``store``'s checkpoints; hold the store's log
        from the applier's floor on (a retention hold)."""
        self.store = store
        self.applier = Applier(
            store.checkpoints,
            store.partition_count,
            factory,
            threads=apply_threads,
            max_pending=max_pending,
            max_lag=max_lag,
        )
        """The partition state machines and their progress."""
        store.add_retention(self.applier.required_raft_index)
        stored = store.checkpoints.raft_snapshot()
        self._snapshot = None if stored is None else decode_snapshot(stored)[0]
        self._receiving = bytearray()
        self._received_objs = 0

    # -- commits ---------------------------------------------------------------------

    def commit(self, log_idx: int, data: bytes) -> bytes | None:
        """Queue the committed entry for its partition; results go to
        ``applier.on_applied`` callbacks, so this returns None."""
        pid, index = self.store.partition_of(log_idx)
        if pid == NO_PARTITION:
            self.applier.advance_commit(log_idx)
            return None
        if decode_partition(data)[0] != pid:
            raise InvalidArgumentError(
                f"commit({log_idx}) data names partition {decode_partition(data)[0]}, "
                f"but the log's entry belongs to partition {pid}"
            )
        self.applier.submit([log_idx], [pid], [index], [bytes(data[PARTITION_HEADER_BYTES:])])
        return None

    def commit_range(self, start: int, end: int) -> int:
        """Commit the stored entries ``[start, end)`` in one batch (what a host that
        learns a new commit index calls instead of ``commit`` per entry); returns
        how many were queued."""
        headers, values = self.store.read_records(start, end)
        queued = self.applier.submit(
            list(range(start, end)),
            headers["partition_id"].tolist(),
            headers["partition_index"].tolist(),
            [value[PARTITION_HEADER_BYTES:] for value in values],
        )
        if end > start:
            self.applier.advance_commit(end - 1)
        return queued

    def commit_config(self, log_idx: int, new_conf: ClusterConfig) -> None:
        """A conf entry committed: it belongs to no partition."""
        self.applier.advance_commit(log_idx)

    def last_commit_index(self) -> int:
        """Highest raft index up to which every committed entry is applied."""
        return self.applier.last_commit_index()

    # -- snapshots -------------------------------------------------------------------

    def last_snapshot(self) -> Snapshot | None:
        """The latest snapshot created or installed (durable)."""
        return self._snapshot

    def create_snapshot(self, s: Snapshot, when_done: SnapshotDoneCallback) -> None:
        """Apply everything up to ``s.last_log_idx``, checkpoint every partition and
        store the snapshot blob; ``when_done(ok, error)``."""
        try:
            committed = self.applier.commit_index
            if committed > s.last_log_idx:
                raise InvalidArgumentError(
                    f"cannot snapshot at {s.last_log_idx}: entries up to {committed} are "
                    "already committed"
                )
            if committed < s.last_log_idx:
                # The engine snapshots only at a committed index; entries it committed
                # without calling commit (types of no partition) are handed in here.
                self.commit_range(committed + 1, s.last_log_idx + 1)
            self.applier.wait_applied(s.last_log_idx)
            floor = self.applier.checkpoint()
            if floor < s.last_log_idx:  # a partition could not be snapshotted just now
                raise InvalidArgumentError(
                    f"cannot snapshot at {s.last_log_idx}: the applied checkpoint covers "
                    f"only up to {floor}"
                )
            blob = encode_snapshot(s, self.store.checkpoints.read_applied_all())
            self.store.checkpoints.write_applied(
                {}, applied_raft_floor=s.last_log_idx, raft_snapshot=blob
            )
            self._snapshot = s
        except Exception as exc:
            when_done(False, exc)
            return
        when_done(True, None)

    def read_logical_snp_obj(
        self, s: Snapshot, user_snp_ctx: object | None, obj_id: int
    ) -> SnapshotObject:
        """Chunk ``obj_id`` of the stored snapshot blob."""
        blob = self.store.checkpoints.raft_snapshot()
        if blob is None or self._snapshot is None or s.last_log_idx != self._snapshot.last_log_idx:
            raise InvalidArgumentError(f"no snapshot at {s.last_log_idx} is stored")
        start = obj_id * SNAPSHOT_CHUNK_BYTES
        if not 0 <= start < max(len(blob), 1):
            raise InvalidArgumentError(f"snapshot object {obj_id} does not exist")
        end = start + SNAPSHOT_CHUNK_BYTES
        return SnapshotObject(blob[start:end], end >= len(blob), user_snp_ctx)

    def save_logical_snp_obj(
        self, s: Snapshot, obj_id: int, data: bytes, is_first_obj: bool, is_last_obj: bool
    ) -> int:
        """Collect a received snapshot object; return the next id wanted. A resent
        object is ignored; one out of order raises (nothing is appended)."""
        if is_first_obj:
            self._receiving = bytearray()
            self._received_objs = 0
        if obj_id < self._received_objs:
            return self._received_objs  # resent: already have it
        if obj_id != self._received_objs:
            raise InvalidArgumentError(
                f"snapshot object {obj_id} arrived, but object {self._received_objs} is next"
            )
        self._receiving += data
        self._received_objs += 1
        return self._received_objs

    def apply_snapshot(self, s: Snapshot) -> bool:
        """Install the received snapshot into every partition."""
        blob = bytes(self._receiving)
        snapshot, states = decode_snapshot(blob)
        foreign = [pid for pid in states if pid >= self.applier.partition_count]
        if foreign:
            raise InvalidArgumentError(
                f"the snapshot holds partitions {foreign[:8]} but this store has "
                f"{self.applier.partition_count}: it comes from another layout"
            )
        if snapshot.last_log_idx != s.last_log_idx:
            raise InvalidArgumentError(
                f"received snapshot is at {snapshot.last_log_idx}, not {s.last_log_idx}"
            )
        next_indices = {pid: state.applied_index + 1 for pid, state in states.items()}

        def write(update: AppliedUpdate) -> None:
            # The state machines' new state, the partitions' and the log's, and the
            # restart marker: one LMDB transaction, then the store finishes its part.
            self.store.install_snapshot(s.last_log_idx, next_indices, applied=update)

        self.applier.install(states, s.last_log_idx, raft_snapshot=blob, write=write)
        self._snapshot = s
        self._receiving = bytearray()
        self._received_objs = 0
        return True

    def close(self) -> None:
        """Let queued applies finish, checkpoint them, stop the workers."""
        self.applier.wait_idle()
        self.applier.checkpoint()
        self.applier.close(wait=False)


__all__ = [
    "SNAPSHOT_CHUNK_BYTES",
    "SNAPSHOT_MAGIC",
    "SegmentedStateMachine",
    "decode_snapshot",
    "encode_snapshot",
]

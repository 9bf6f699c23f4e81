"""The embedded single-node pipeline: append, durable, partition log, apply, ack, truncate.

Issue #4's whole single-process system (DESIGN.md, layers 4 to 7) without a Raft
engine: the node is its own leader, so an entry is **committed once it is durable** in
the segmented log. A driver thread follows the durable index and, for every newly
durable record,

1. records it as landed in the :class:`~segstore.quorum.AckTracker` and acknowledges it
   for the local node (replicas acknowledge through :meth:`Pipeline.ack`);
2. hands it to the :class:`~segstore.applier.Applier` (the partition state machines).

The store's router meanwhile copies durable records into the partition logs. Every
``checkpoint_interval_s`` the driver checkpoints the applied state (snapshots, one LMDB
transaction), computes the :meth:`Pipeline.watermarks` and compacts the log below the
global minimum required raft index (invariant 6); the store's retention holds make the
physical deletion respect the applier's and the quorum's terms even between driver
checkpoints.

Recovery is the store's (undo/redo of partition logs) plus the applier's: every
partition state machine is restored from its snapshot and the driver replays committed
records from the applied floor + 1, skipping what each partition already applied.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Final

import numpy as np

from segstore.applier import Applier, PartitionStatus, StateMachineFactory
from segstore.errors import ClosedError, InvalidArgumentError
from segstore.masters import MasterPolicy
from segstore.quorum import AckTracker, QuorumRule
from segstore.raft.log_entry import LogEntry
from segstore.raft.partition_entry import NO_PARTITION, PARTITION_HEADER_BYTES, encode_entry
from segstore.raft.segmented_store import SegmentedLogStore
from segstore.watermarks import Watermarks, combine

DRIVE_BATCH_MAX: Final = 1 << 16
"""Records the driver reads from the log per step."""

DRIVE_INTERVAL_S: Final = 0.003
"""The driver waits this long after a durable advance before a step (batching)."""

CHECKPOINT_INTERVAL_S: Final = 0.5
"""Default time between applied checkpoints (and compactions)."""


class Pipeline:
    """One node's storage pipeline over a :class:`SegmentedLogStore`. Open with
    :meth:`open`; thread-safe; use as a context manager."""

    def __init__(self, *_args: object, **_kwargs: object) -> None:
        raise TypeError("use Pipeline.open(path, partitions=..., state_machine_factory=...)")

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        partitions: int | None = None,
        state_machine_factory: StateMachineFactory,
        node_id: str = "local",
        replicas: Iterable[str] = (),
        quorum_rule: QuorumRule | None = None,
        apply_threads: int = 4,
        max_pending: int = 100_000,
        max_lag: int = 10_000_000,
        checkpoint_interval_s: float = CHECKPOINT_INTERVAL_S,
        segment_bytes: int | None = None,
    ) -> Pipeline:
        """Open (or create) the store in ``path`` and recover the state machines.

        ``replicas``: ids of the other replicas whose :meth:`ack` counts towards each
        partition's quorum (with ``node_id``, under ``quorum_rule``, default majority);
        they are also the members masters are spread over. ``max_pending`` /
        ``max_lag``: the backpressure bounds of :meth:`submit`.
        """
        self = object.__new__(cls)
        self._init(
            os.fspath(path),
            partitions=partitions,
            factory=state_machine_factory,
            node_id=node_id,
            replicas=tuple(replicas),
            quorum_rule=quorum_rule,
            apply_threads=apply_threads,
            max_pending=max_pending,
            max_lag=max_lag,
            checkpoint_interval_s=checkpoint_interval_s,
            segment_bytes=segment_bytes,
        )
        return self

    def _init(
        self,
        path: str,
        *,
        partitions: int | None,
        factory: StateMachineFactory,
        node_id: str,
        replicas: tuple[str, ...],
        quorum_rule: QuorumRule | None,
        apply_threads: int,
        max_pending: int,
        max_lag: int,
        checkpoint_interval_s: float,
        segment_bytes: int | None,
    ) -> None:
        if not isinstance(checkpoint_interval_s, (int, float)) or checkpoint_interval_s <= 0:
            raise InvalidArgumentError("checkpoint_interval_s must be a positive number")
        if node_id in replicas:
            raise InvalidArgumentError(f"node_id {node_id!r} is also named in replicas")
        self._closed = True
        self.path = path
        self.node_id = node_id
        members = (node_id, *replicas)
        self.acks = AckTracker(members, quorum_rule)
        """Quorum state per partition (:class:`~segstore.quorum.AckTracker`)."""
        self.store = SegmentedLogStore.open(
            path, partitions=partitions, parallel=True, segment_bytes=segment_bytes
        )
        """The segmented log store underneath."""
        try:
            self.partition_count = self.store.partition_count
            self.masters = MasterPolicy.automatic(self.partition_count, members)
            """Partition masters over the node and its replicas."""
            self.applier = Applier(
                self.store.checkpoints,
                self.partition_count,
                factory,
                threads=apply_threads,
                max_pending=max_pending,
                max_lag=max_lag,
            )
            """The partition state machines."""
        except BaseException:
            self.store.close()
            raise
        self._checkpoint_interval_s = float(checkpoint_interval_s)
        self._lock = threading.Lock()  # producers: appends and their counters
        self._appended = {pid: n - 1 for pid, n in self.store.partition_next_indices().items()}
        # Everything up to here was landed in the ack tracker and handed to the applier.
        self._processed = self.store.first_retained_index() - 1
        self._driver_error: BaseException | None = None
        self._wakeup = threading.Event()
        self._stopping = False
        self._stop = threading.Event()  # cuts the driver's batching wait short at close
        self.store.set_notify_log_append_completion(self._on_durable)
        self.store.add_retention(self.applier.required_raft_index)
        self.store.add_retention(self._quorum_required)
        self._closed = False
        self._driver = threading.Thread(target=self._drive, name="segstore-pipeline", daemon=True)
        self._driver.start()
        self._wakeup.set()

    # -- producing -------------------------------------------------------------------

    def submit(self, partition_id: int, payload: bytes) -> int:
        """Append one entry for ``partition_id``; return its raft index. Raises
        :class:`~segstore.errors.BackpressureError` or
        :class:`~segstore.errors.PartitionFailedError` instead of queueing without
        bound. Durability follows by group commit (:meth:`flush` waits for it)."""
        return self.submit_many([partition_id], [payload])

    def submit_many(self, partition_ids: Sequence[int], payloads: Sequence[bytes]) -> int:
        """Append a batch (one write, one group commit); return the last raft index.
        Backpressure is checked for every partition before anything is appended."""
        if len(partition_ids) != len(payloads):
            raise InvalidArgumentError("partition_ids and payloads differ in length")
        values = [
            encode_entry(pid, payload) for pid, payload in zip(partition_ids, payloads, strict=True)
        ]
        if values:  # all or nothing: a refused entry must not leave others buffered
            self.store.check_value_size(max(values, key=len))
        counts: dict[int, int] = {}
        for pid in partition_ids:
            counts[pid] = counts.get(pid, 0) + 1
        with self._lock:
            self._check_open()
            appended = self._appended
            self.applier.check_capacity_many(
                {pid: appended.get(pid, 0) + count for pid, count in counts.items()}
            )
            store = self.store
            start = store.next_slot()
            term = 1
            for value in values:
                store.append(LogEntry(term, value))
            store.end_of_append_batch(start, len(values))
            for pid, count in counts.items():
                self._appended[pid] = self._appended.get(pid, 0) + count
            return start + len(values) - 1

    def flush(self) -> int:
        """Block until everything submitted is durable; return the durable index."""
        self._check_open()
        self.store.flush()
        return self.store.last_durable_index()

    def ack(self, replica_id: str, raft_index: int) -> bool:
        """Replica ``replica_id`` holds every entry up to ``raft_index``; True if that
        raised its acknowledgement. A replica cannot hold what is not durable here."""
        self._check_open()
        durable = self.store.last_durable_index()
        if isinstance(raft_index, int) and raft_index > durable:
            raise InvalidArgumentError(
                f"{replica_id} cannot hold raft index {raft_index}: only {durable} is durable"
            )
        return self.acks.ack(replica_id, raft_index)

    def wait_applied(self, raft_index: int, timeout: float | None = None) -> bool:
        """Block until every entry up to ``raft_index`` is durable and applied."""
        if raft_index >= self.store.next_slot():
            raise InvalidArgumentError(
                f"raft index {raft_index} was never submitted (next is {self.store.next_slot()})"
            )
        deadline = None if timeout is None else time.monotonic() + timeout
        self.store.flush()
        while self._processed < raft_index:
            self._raise_driver_error()
            if deadline is not None and time.monotonic() >= deadline:
                return False
            self._wakeup.set()
            time.sleep(0.001)
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        return self.applier.wait_applied(raft_index, left)

    # -- observing -------------------------------------------------------------------

    def status(self, partition_id: int) -> PartitionStatus:
        """Apply progress of one partition."""
        return self.applier.status(partition_id)

    def watermarks(self) -> Watermarks:
        """Every watermark of DESIGN.md invariant 6, each source read once."""
        self._check_open()
        return self._watermarks()

    def _watermarks(self) -> Watermarks:
        store, applier, acks = self.store, self.applier, self.acks
        durable = store.last_durable_index()
        routed_required, routed_by_pid = store.required_raft_indices()
        applied_by_pid = applier.required_raft_indices()
        statuses = applier.statuses()
        checkpoints = self.store.checkpoints.read_all()
        processed = self._processed
        partition_terms: dict[int, list[int | None]] = {}
        indices: dict[int, tuple[int, int, int, int]] = {}
        for status in statuses:
            pid = status.partition_id
            checkpoint = checkpoints.get(pid)
            indices[pid] = (
                checkpoint.durable_index if checkpoint else 0,
                status.applied_index,
                status.checkpointed_index,
                acks.quorum_index(pid),
            )
            partition_terms[pid] = [
                routed_by_pid.get(pid),
                applied_by_pid.get(pid),
                acks.first_pending_raft_index(pid),
            ]
        return combine(
            durable_index=durable,
            commit_index=processed,
            log_first_index=self.store.first_retained_index(),
            global_terms=[routed_required, applier.required_raft_index(), processed + 1],
            partition_terms=partition_terms,
            indices=indices,
        )

    def _quorum_required(self) -> int:
        """The ack tracker's term of invariant 6 (a store retention hold)."""
        first = self.acks.oldest_pending_raft_index()
        unlanded = self._processed + 1
        return unlanded if first is None else min(first, unlanded)

    # -- the driver ------------------------------------------------------------------

    def _on_durable(self, ok: bool) -> None:
        self._wakeup.set()

    def _drive(self) -> None:
        last_checkpoint = time.monotonic()
        try:
            while not self._stopping:
                self._wakeup.wait(self._checkpoint_interval_s)
                # Let group commits pile up: per step the ack tracker and the applier
                # cost a little per partition, whatever the number of records.
                if self._stop.wait(DRIVE_INTERVAL_S):
                    break
                self._wakeup.clear()
                self._step()
                now = time.monotonic()
                if now - last_checkpoint >= self._checkpoint_interval_s:
                    self._checkpoint_and_compact()
                    last_checkpoint = now
        except BaseException as exc:
            self._driver_error = exc

    def _step(self) -> None:
        """Land and hand in every record made durable since the last step."""
        durable = self.store.last_durable_index()
        while self._processed < durable:
            low = self._processed + 1
            high = min(durable, low + DRIVE_BATCH_MAX - 1)
            headers, values = self.store.read_records(low, high + 1)
            pids = headers["partition_id"]
            indices = headers["partition_index"]
            rafts = np.arange(low, high + 1, dtype=np.uint64)
            routed = pids != NO_PARTITION
            if routed.all():
                self.acks.record_landed_many(pids, indices, rafts)
            elif routed.any():
                self.acks.record_landed_many(pids[routed], indices[routed], rafts[routed])
            self.applier.submit(
                rafts.tolist(),
                pids.tolist(),
                indices.tolist(),
                [value[PARTITION_HEADER_BYTES:] for value in values],
            )
            self._processed = high
        self.applier.advance_commit(durable)
        if durable:
            self.acks.ack(self.node_id, durable)

    def _checkpoint_and_compact(self) -> None:
        self.applier.checkpoint()
        required = self._watermarks().required_raft_index
        if required - 1 >= self.store.start_index():
            self.store.compact(required - 1)

    def checkpoint(self) -> Watermarks:
        """Apply everything durable, checkpoint the applied state, compact the log below
        the watermark now; return the watermarks after it."""
        self._check_open()
        durable = self.store.last_durable_index()
        self.wait_applied(durable)
        self.store.sync_partitions()
        self._checkpoint_and_compact()
        return self.watermarks()

    def _raise_driver_error(self) -> None:
        if self._driver_error is not None:
            raise self._driver_error

    # -- lifetime --------------------------------------------------------------------

    def close(self) -> None:
        """Make everything durable, apply and checkpoint it, and release the files."""
        if self._closed:
            return
        self._stopping = True
        self._stop.set()
        self._wakeup.set()
        self._driver.join()
        try:
            if self._driver_error is None:
                self.store.flush()
                self._step()
                self.applier.wait_idle()
                self.store.sync_partitions()
                self.applier.checkpoint()
        finally:
            self._closed = True
            try:
                self.applier.close(wait=False)
            finally:
                self.store.close()
        self._raise_driver_error()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"Pipeline {self.path} is closed")
        self._raise_driver_error()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


__all__ = ["CHECKPOINT_INTERVAL_S", "DRIVE_BATCH_MAX", "DRIVE_INTERVAL_S", "Pipeline"]

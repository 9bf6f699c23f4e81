"""Feeding durable records of the segmented log into the partition logs.

The segmented log is the source of truth; partition logs are derived data that never
fsync per append. Their durable progress is checkpointed in LMDB together with
``routed_raft_index``, the raft index up to which every log record was routed and
checkpointed. Everything here works on numpy header tables: a routing step reads the
headers of a range once, groups it by partition with a stable argsort, and appends one
batch per partition.

Consistency rule (what recovery relies on): a partition's records at or below its
checkpoint always match the log, because ``rollback`` lowers checkpoints before it
truncates partitions, and partitions before the log. Only records above the
checkpoints (raft index above ``routed_raft_index``) need checking after a crash.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import numpy.typing as npt

from segstore.aof import Aof, PayloadSpan
from segstore.checkpoints import AppliedUpdate, CheckpointStore, PartitionCheckpoint
from segstore.errors import CorruptionError
from segstore.partitions import PartitionLogs, PartitionLogStore
from segstore.raft.partition_entry import NO_PARTITION, PARTITION_HEADER_BYTES


class Router:
    """Routes durable log records to partition logs; checkpoints; rolls back.

    Every method takes the router's lock: callers never see a half-routed range.
    """

    def __init__(self, log: Aof, partitions: PartitionLogs, checkpoints: CheckpointStore) -> None:
        self._log = log
        self._partitions = partitions
        self._checkpoints = checkpoints
        self._lock = threading.RLock()
        self._checkpoint_of = checkpoints.read_all()
        self._routed = checkpoints.routed_raft_index()
        self._checkpointed_routed = self._routed
        # Per partition: next partition index and raft index of the last routed record.
        self._next_index = {p: c.durable_index + 1 for p, c in self._checkpoint_of.items()}
        self._last_raft = {p: c.durable_raft_index for p, c in self._checkpoint_of.items()}
        if not checkpoints.restart_pending():  # (an unfinished restart creates them)
            self._check_partitions_exist(partitions, checkpoints.path)
        self._checked: set[int] = set()  # partitions whose log was reconciled this session
        # Partitions whose checkpoint a rollback lowered: PartitionLogs.sync_all reports
        # only changes since its last report, which may have come back to the same value.
        self._recheck: set[int] = set()
        self._required: tuple[int, dict[int, int]] = (1, {})
        self._publish_required()

    def _check_partitions_exist(self, partitions: PartitionLogs, path: str) -> None:
        """A checkpoint that claims records of a partition whose log is gone is corruption
        now, not later in the background router."""
        existing = set(partitions.existing_ids())
        for pid, checkpoint in sorted(self._checkpoint_of.items()):
            if checkpoint.durable_index and pid not in existing:
                raise CorruptionError(
                    path,
                    0,
                    f"the checkpoint of partition {pid} claims {checkpoint.durable_index} "
                    "durable records but its partition log is missing",
                )

    # -- state -----------------------------------------------------------------------

    @property
    def routed_raft_index(self) -> int:
        """Raft index up to which durable log records were routed."""
        return self._routed

    def next_partition_indices(self) -> dict[int, int]:
        """Next partition log index per partition (of what was routed)."""
        with self._lock:
            return dict(self._next_index)

    def required_raft_index(self) -> int:
        """The oldest raft index the partitions may still need from the log.

        Records not yet routed are needed, and so is everything after a partition's
        checkpoint while that partition has routed records above it.
        """
        return self.required_raft_indices()[0]

    def required_raft_indices(self) -> tuple[int, dict[int, int]]:
        """``required_raft_index`` and, for each partition with routed records not
        yet checkpointed, the raft index after its checkpoint.

        Read without the lock: routing holds it while it syncs partition logs, and
        watermark readers must not wait for that. The value is the one published at
        the end of the last route, checkpoint or rollback. Physical truncation reads
        it under ``paused()``, so it always acts on a settled value; a reader without
        the lock may see the value from before a route in progress."""
        required, by_partition = self._required
        return required, dict(by_partition)

    def _publish_required(self) -> None:
        """Recompute what ``required_raft_indices`` returns (lock held)."""
        required = self._routed + 1
        by_partition: dict[int, int] = {}
        for pid, last_raft in self._last_raft.items():
            checkpoint = self._checkpoint_of.get(pid)
            checkpointed_raft = checkpoint.durable_raft_index if checkpoint else 0
            if last_raft > checkpointed_raft:
                by_partition[pid] = checkpointed_raft + 1
                required = min(required, checkpointed_raft + 1)
        self._required = (required, by_partition)

    def next_indices_through(self, raft_index: int) -> dict[int, int]:
        """Partition next indices once everything up to ``raft_index`` is routed.

        From the checkpoints and the header columns of the records not routed yet, so
        a store can take appends before the router has caught up (recovery).
        """
        with self._lock:
            after = dict(self._next_index)
            low = max(self._routed + 1, self._log.first_index)
            if low <= raft_index:
                headers = self._log.headers(low, raft_index + 1)
                pids = headers["partition_id"][::-1]
                indices = headers["partition_index"][::-1]
                unique, last = np.unique(pids, return_index=True)
                for pid, position in zip(unique.tolist(), last.tolist(), strict=True):
                    if pid != NO_PARTITION:
                        after[pid] = int(indices[position]) + 1
            return after

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Hold off routing while the caller changes the log or the partitions."""
        with self._lock:
            yield

    # -- routing ---------------------------------------------------------------------

    def route(self, upto: int) -> int:
        """Route log records ``(routed_raft_index, upto]``; return how many."""
        with self._lock:
            upto = min(upto, self._log.last_index)
            low = max(self._routed + 1, self._log.first_index)
            if upto < low:
                self._routed = max(self._routed, upto)
                return 0
            for span in self._log.payload_spans(low, upto + 1):
                headers = self._log.headers(span.first_index, span.first_index + len(span.lengths))
                pids = headers["partition_id"]
                order = np.argsort(pids, kind="stable")
                cuts = np.flatnonzero(np.diff(pids[order])) + 1
                for positions in np.split(order, cuts):
                    pid = int(pids[positions[0]])
                    if pid != NO_PARTITION:
                        self._append(pid, positions, headers, span)
            self._routed = upto
            self._publish_required()
            return upto - low + 1

    def _append(
        self,
        pid: int,
        positions: npt.NDArray[np.intp],
        headers: npt.NDArray[np.void],
        span: PayloadSpan,
    ) -> None:
        raft = positions.astype(np.uint64) + np.uint64(span.first_index)
        indices = headers["partition_index"][positions]
        with self._partitions.pinned(pid) as plog:
            self._reconcile(pid, plog)
            # After a crash some of these may be in the partition log already (routed
            # but not checkpointed): they matched the log in _reconcile, so skip them.
            skip = int(raft.searchsorted(np.uint64(self._last_raft.get(pid, 0)), "right"))
            if skip == len(positions):
                return
            first = int(indices[skip])
            if first != plog.next_index:
                raise CorruptionError(
                    self._log.path,
                    0,
                    f"partition {pid}: log record {int(raft[skip])} has partition index "
                    f"{first} but the partition log's next index is {plog.next_index}",
                )
            # Partition payloads are the log's values past their partition header,
            # encoded straight from the log's mapping.
            kept = positions[skip:]
            plog.append_gathered(
                first,
                span.view,
                span.offsets[kept] + np.uint64(PARTITION_HEADER_BYTES),
                span.lengths[kept] - np.uint32(PARTITION_HEADER_BYTES),
                raft[skip:],
            )
            self._next_index[pid] = plog.next_index
            self._last_raft[pid] = int(raft[-1])

    def _reconcile(self, pid: int, plog: PartitionLogStore) -> None:
        """First use this session: keep only partition records that match the log.

        Records at or below the checkpoint match by the consistency rule; above it,
        a record whose raft index is gone from the log, or names another partition or
        index there, is cut (DESIGN.md recovery, "undo").
        """
        if pid in self._checked:
            return
        self._checked.add(pid)
        checkpoint = self._checkpoint_of.get(pid)
        base = checkpoint.durable_index if checkpoint else 0
        keep = base
        if plog.next_index - 1 > base:
            raft = plog.raft_indices(base + 1, plog.next_index)
            inside = (raft >= self._log.first_index) & (raft <= self._log.last_index)
            keep_count = int(np.argmin(inside)) if not inside.all() else len(raft)
            if keep_count:
                log_headers = self._log.headers(int(raft[0]), int(raft[keep_count - 1]) + 1)
                offsets = (raft[:keep_count] - raft[0]).astype(np.intp)
                same = (log_headers["partition_id"][offsets] == pid) & (
                    log_headers["partition_index"][offsets]
                    == np.arange(base + 1, base + 1 + keep_count, dtype=np.uint64)
                )
                keep_count = int(np.argmin(same)) if not same.all() else keep_count
            keep = base + keep_count
            if keep < plog.next_index - 1:
                cut_raft = int(raft[keep_count]) if keep_count < len(raft) else 0
                plog.truncate_from_raft_index(cut_raft)
        if plog.next_index - 1 < base:
            raise CorruptionError(
                plog.path,
                0,
                f"partition {pid} holds {plog.next_index - 1} records but its checkpoint "
                f"says {base} were durable",
            )
        self._next_index[pid] = plog.next_index
        self._last_raft[pid] = plog.last_raft_index if plog.next_index > 1 else 0
        if plog.next_index - 1 != base:
            # Routed before a crash but never checkpointed: sync_all reports only what
            # changes from now on, so name it for the next checkpoint explicitly.
            self._recheck.add(pid)

    # -- checkpoints -----------------------------------------------------------------

    def checkpoint(self) -> None:
        """Sync the partition logs and record their progress in one LMDB transaction."""
        with self._lock:
            changed = self._partitions.sync_all()
            for pid in self._recheck - changed.keys():
                with self._partitions.pinned(pid) as plog:
                    plog.sync()
                    changed[pid] = plog.durable_index
            self._recheck.clear()
            updates: dict[int, PartitionCheckpoint] = {}
            for pid, durable in changed.items():
                with self._partitions.pinned(pid) as plog:
                    first = plog.first_index
                    if durable >= first:
                        raft = int(plog.raft_indices(durable, durable + 1)[0])
                    else:  # emptied by a restart: nothing newer than the restart point
                        raft = plog.last_raft_index if durable else 0
                updates[pid] = PartitionCheckpoint(
                    durable_index=durable, durable_raft_index=raft, first_index=first
                )
            if not updates and self._routed == self._checkpointed_routed:
                return
            self._checkpoints.write(updates, routed_raft_index=self._routed)
            self._checkpoint_of.update(updates)
            self._checkpointed_routed = self._routed
            self._publish_required()

    # -- snapshot install ------------------------------------------------------------

    def restart(
        self,
        raft_index: int,
        next_indices: dict[int, int],
        applied: AppliedUpdate | None = None,
    ) -> None:
        """Every partition restarts empty at ``next_indices[pid]`` (absent: 1, the
        partition had nothing at the snapshot) after a Raft snapshot at ``raft_index``
        replaced the history; the log counts as routed through ``raft_index``.

        One checkpoint transaction records the new state with a ``restart_pending``
        marker (and ``applied``, the state machines' new state, when given), then the
        partition logs are restarted; the caller clears the marker
        (:meth:`clear_restart`) once its own part is done, and an open that finds it
        calls :meth:`restart_partitions` again.
        """
        with self._lock:
            updates: dict[int, PartitionCheckpoint] = {}
            for pid in sorted(set(self._partitions.existing_ids()) | set(next_indices)):
                target = next_indices.get(pid, 1)
                updates[pid] = PartitionCheckpoint(
                    durable_index=target - 1,
                    durable_raft_index=raft_index if target > 1 else 0,
                    first_index=target,
                )
            self._checkpoints.write(
                updates,
                routed_raft_index=raft_index,
                restart_pending=raft_index + 1,
                applied=applied,
            )
            self._checkpoint_of.update(updates)
            self._routed = self._checkpointed_routed = raft_index
            self.restart_partitions()

    def restart_partitions(self) -> None:
        """Restart every partition log to its checkpoint: empty at ``first_index``."""
        with self._lock:
            for pid in sorted(set(self._partitions.existing_ids()) | set(self._checkpoint_of)):
                checkpoint = self._checkpoint_of.get(pid)
                target = checkpoint.first_index if checkpoint else 1
                raft = checkpoint.durable_raft_index if checkpoint else 0
                with self._partitions.pinned(pid) as plog:
                    if plog.first_index != target or plog.next_index != target:
                        plog.restart_at(target, raft)
                    self._checked.add(pid)
                    self._next_index[pid] = target
                    self._last_raft[pid] = raft
            self._recheck.clear()
            self._publish_required()

    def clear_restart(self) -> None:
        """The snapshot install is complete: clear the ``restart_pending`` marker."""
        with self._lock:
            self._checkpoints.write({}, restart_pending=0)

    # -- rollback --------------------------------------------------------------------

    def rollback(self, raft_index: int) -> None:
        """Remove partition records with raft index >= ``raft_index`` (DESIGN invariant 3).

        Checkpoints are lowered first, then partitions cut, so a crash part way leaves
        checkpoints that never claim records that are gone.
        """
        with self._lock:
            affected = [pid for pid, last in self._last_raft.items() if last >= raft_index]
            lowered: dict[int, PartitionCheckpoint] = {}
            plans: dict[int, PartitionLogStore] = {}
            for pid in affected:
                with self._partitions.pinned(pid) as plog:
                    self._reconcile(pid, plog)
                    raft = plog.raft_indices(plog.first_index, plog.next_index)
                    keep = int(np.searchsorted(raft, np.uint64(raft_index), "left"))
                    last_kept = plog.first_index - 1 + keep
                    checkpoint = self._checkpoint_of.get(pid)
                    if checkpoint and checkpoint.durable_index > last_kept:
                        lowered[pid] = PartitionCheckpoint(
                            durable_index=last_kept,
                            durable_raft_index=int(raft[keep - 1]) if keep else 0,
                            first_index=checkpoint.first_index,
                        )
                    plans[pid] = plog
            routed = min(self._routed, raft_index - 1)
            if lowered or routed < self._checkpointed_routed:
                self._checkpoints.write(
                    lowered, routed_raft_index=min(routed, self._checkpointed_routed)
                )
                self._checkpoint_of.update(lowered)
                self._checkpointed_routed = min(routed, self._checkpointed_routed)
            for pid in plans:
                with self._partitions.pinned(pid) as plog:
                    plog.truncate_from_raft_index(raft_index)
                    self._next_index[pid] = plog.next_index
                    self._last_raft[pid] = plog.last_raft_index if plog.next_index > 1 else 0
            self._recheck.update(lowered)
            self._routed = routed
            self._publish_required()


__all__ = ["Router"]

"""Partition state machines and the applier that feeds them committed entries.

Layer 6 of DESIGN.md (issue #4). The user writes a :class:`PartitionStateMachine` per
partition; the :class:`Applier` hands each one its committed entries, in partition-index
order, **at most one apply in flight per partition**, partitions in parallel
(invariant 5), and checkpoints what was applied together with a snapshot of the state
(``CheckpointStore.write_applied``), so that after a restart no entry is applied twice
and none is skipped.

Threading model
---------------
* ``submit`` (any thread: the Raft engine's commit thread, the embedded pipeline's
  driver) appends committed entries to per-partition queues under one lock and
  schedules the partition if it is idle. It never runs an apply itself.
* A partition whose ``apply`` is a plain function is drained by one of ``threads``
  worker threads, which wait on a queue of ready partitions: the worker takes a run of
  queued entries and applies them one after the other, until the partition's queue is
  empty. Scheduling a partition costs a deque append and a notify, not a task object.
  A partition is scheduled at most once at a time, which is what keeps one apply in
  flight per partition and the order. CPython's GIL lets applies that release it (I/O,
  C code) overlap; pure-Python applies interleave.
* A partition whose ``apply`` is ``async def`` is drained by a task on one asyncio event
  loop running in its own thread, awaiting each apply in turn; many async partitions
  overlap on that loop.
* Each partition has an apply lock held around each apply and the index update;
  :meth:`Applier.checkpoint` takes it to snapshot a partition at an exact index.

Durability rule (what recovery relies on): a partition's applied checkpoint is its
``snapshot()`` taken at ``applied_index``; ``applied_raft_floor`` is stored with it in the
same LMDB transaction and is the highest raft index ``F`` such that every committed entry
up to ``F`` is covered by the checkpoints. After a restart the applier restores every
partition from its snapshot and expects committed entries again from ``F + 1``
(:meth:`Applier.last_commit_index`); entries at or below a partition's applied index are
skipped, so each takes effect exactly once. The log must keep everything from ``F + 1``
(:meth:`Applier.required_raft_index`).

A failing ``apply`` stops its partition: the exception is kept in its
:class:`PartitionStatus`, the entry and those after it stay queued, and the other
partitions go on. :meth:`Applier.resume` retries from the failed entry.

Backpressure: :meth:`Applier.check_capacity` raises
:class:`~segstore.errors.BackpressureError` when a partition has more than
``max_pending`` entries pending or its oldest unapplied entry lags the commit index by
more than ``max_lag`` raft indices, and :class:`~segstore.errors.PartitionFailedError`
when the partition is stopped. Producers call it before they append; ``submit`` itself
never refuses committed entries (Raft has already decided them).
"""

from __future__ import annotations

import abc
import asyncio
import inspect
import logging
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from segstore.checkpoints import AppliedCheckpoint, AppliedUpdate, CheckpointStore
from segstore.errors import (
    BackpressureError,
    ClosedError,
    InvalidArgumentError,
    PartitionFailedError,
)
from segstore.raft.partition_entry import NO_PARTITION

_log = logging.getLogger(__name__)

APPLY_RUN_MAX: Final = 1024
"""Entries a worker takes from a partition's queue at a time (one lock round trip)."""

AppliedCallback: TypeAlias = Callable[[int, int, int, list[Any]], object]
"""``callback(partition_id, first_index, first_raft_index, results)``: a run of
entries was applied; ``results[k]`` is what ``apply`` returned for partition index
``first_index + k``. Called on the applying thread, outside the applier's lock."""


class PartitionStateMachine(abc.ABC):
    """The user's state machine of one partition.

    ``apply`` may be a plain method or ``async def``; either way segstore calls it for
    one entry at a time, in partition-index order, never concurrently with itself or
    with ``snapshot``.
    """

    @abc.abstractmethod
    def apply(self, partition_index: int, payload: bytes) -> Any:
        """Apply the entry at ``partition_index``; return its result (any object)."""

    @abc.abstractmethod
    def snapshot(self) -> bytes:
        """The whole state as bytes, as of the last applied entry."""

    @abc.abstractmethod
    def restore(self, snapshot: bytes) -> None:
        """Replace the state with one ``snapshot`` returned (called at open)."""


StateMachineFactory: TypeAlias = Callable[[int], PartitionStateMachine]
"""``factory(partition_id)`` makes the (empty) state machine of one partition."""


@dataclass(frozen=True)
class PartitionStatus:
    """One partition's apply progress.

    Attributes:
        partition_id: the partition.
        applied_index: last partition index applied (0: none).
        applied_raft_index: raft index of that entry (0: none).
        checkpointed_index: last partition index covered by the durable checkpoint.
        pending: entries handed in and not yet applied.
        error: the exception that stopped the partition, or None.
    """

    partition_id: int
    applied_index: int
    applied_raft_index: int
    checkpointed_index: int
    pending: int
    error: BaseException | None


class _Partition:
    """Mutable state of one partition (guarded by the applier's lock, except ``sm``,
    which only the partition's current drainer or a holder of ``apply_lock`` touches)."""

    __slots__ = (
        "applied_index",
        "applied_raft",
        "apply_lock",
        "checkpointed_index",
        "checkpointed_raft",
        "error",
        "is_async",
        "next_index",
        "pid",
        "queue",
        "rafts",
        "scheduled",
        "sm",
    )

    def __init__(
        self, pid: int, sm: PartitionStateMachine, checkpoint: AppliedCheckpoint | None
    ) -> None:
        self.pid = pid
        self.sm = sm
        self.is_async = inspect.iscoroutinefunction(sm.apply)
        self.apply_lock = threading.Lock()
        applied = checkpoint.applied_index if checkpoint else 0
        applied_raft = checkpoint.applied_raft_index if checkpoint else 0
        self.applied_index = applied
        self.applied_raft = applied_raft
        self.checkpointed_index = applied
        self.checkpointed_raft = applied_raft
        self.next_index = applied + 1  # next partition index expected from submit
        self.queue: deque[tuple[int, int, bytes]] = deque()  # (index, raft, payload)
        # Raft indices of entries handed in after the checkpoint, in partition order:
        # rafts[k] belongs to partition index checkpointed_index + 1 + k.
        self.rafts: deque[int] = deque()
        self.scheduled = False
        self.error: PartitionFailedError | None = None

    def first_unapplied_raft(self) -> int | None:
        offset = self.applied_index - self.checkpointed_index
        return self.rafts[offset] if offset < len(self.rafts) else None


class Applier:
    """Applies committed entries to partition state machines; checkpoints them."""

    def __init__(
        self,
        checkpoints: CheckpointStore,
        partition_count: int,
        factory: StateMachineFactory,
        *,
        threads: int = 4,
        max_pending: int = 100_000,
        max_lag: int = 10_000_000,
    ) -> None:
        """Restore every partition's state machine from its checkpoint.

        ``factory(pid)`` makes partition ``pid``'s state machine; ``threads`` workers
        drain synchronous ones; ``max_pending`` and ``max_lag`` are the backpressure
        bounds of :meth:`check_capacity`.
        """
        for name, value in (
            ("partition_count", partition_count),
            ("threads", threads),
            ("max_pending", max_pending),
            ("max_lag", max_lag),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(f"{name} must be a positive int, not {value!r}")
        if not callable(factory):
            raise InvalidArgumentError("factory must be callable: factory(partition_id)")
        self._factory = factory
        self._checkpoints = checkpoints
        self.partition_count = partition_count
        self.max_pending = max_pending
        self.max_lag = max_lag
        self._lock = threading.Lock()
        self._checkpoint_lock = threading.Lock()  # one checkpoint at a time
        self._progress = threading.Condition(self._lock)
        self._callbacks: list[AppliedCallback] = []
        self._closed = False
        stored = checkpoints.read_applied_all()
        self._floor = checkpoints.applied_raft_floor()
        self._commit_index = self._floor
        self._parts = [self._restored(pid, stored.get(pid)) for pid in range(partition_count)]
        self._ready: deque[_Partition] = deque()  # synchronous partitions to drain
        self._work = threading.Condition(self._lock)
        self._workers = [
            threading.Thread(target=self._work_loop, name=f"segstore-apply-{n}", daemon=True)
            for n in range(threads)
        ]
        for worker in self._workers:
            worker.start()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None

    def _restored(self, pid: int, checkpoint: AppliedCheckpoint | None) -> _Partition:
        """A fresh partition from the factory, restored from ``checkpoint`` if any."""
        sm = self._factory(pid)
        if not isinstance(sm, PartitionStateMachine):
            raise InvalidArgumentError(
                f"factory({pid}) returned {type(sm).__name__}, not a PartitionStateMachine"
            )
        if checkpoint is not None:
            sm.restore(checkpoint.snapshot)
        return _Partition(pid, sm, checkpoint)

    # -- feeding ---------------------------------------------------------------------

    @property
    def commit_index(self) -> int:
        """The highest raft index handed in (everything up to it was committed)."""
        return self._commit_index

    def advance_commit(self, raft_index: int) -> None:
        """Everything up to ``raft_index`` is committed and handed in (entries of no
        partition need nothing else)."""
        with self._lock:
            if raft_index > self._commit_index:
                self._commit_index = raft_index
                self._progress.notify_all()  # wait_applied may be waiting for just this

    def submit(
        self,
        raft_indices: Sequence[int],
        partition_ids: Sequence[int],
        partition_indices: Sequence[int],
        payloads: Sequence[bytes],
    ) -> int:
        """Hand in committed entries (parallel sequences, raft order); return how many
        were queued. Entries of ``NO_PARTITION`` only advance the commit index; entries
        at or below what their partition already has are skipped (redelivery after a
        restart). An entry that leaves a gap in its partition raises
        :class:`InvalidArgumentError` and nothing of the call is queued."""
        count = len(raft_indices)
        if not len(partition_ids) == len(partition_indices) == len(payloads) == count:
            raise InvalidArgumentError("submit needs four sequences of the same length")
        if count == 0:
            return 0
        with self._lock:
            self._check_open()
            runs: dict[int, list[tuple[int, int, bytes]]] = {}
            expected: dict[int, int] = {}
            for raft, pid, index, payload in zip(
                raft_indices, partition_ids, partition_indices, payloads, strict=True
            ):
                if pid == NO_PARTITION:
                    continue
                if not 0 <= pid < self.partition_count:
                    raise InvalidArgumentError(
                        f"raft index {raft} names partition {pid}; there are {self.partition_count}"
                    )
                want = expected.get(pid)
                if want is None:
                    want = self._parts[pid].next_index
                if index < want:
                    continue  # applied or queued already
                if index != want:
                    raise InvalidArgumentError(
                        f"raft index {raft} carries partition {pid} index {index}, but the "
                        f"next one expected is {want}: an entry was skipped"
                    )
                expected[pid] = want + 1
                runs.setdefault(pid, []).append((index, raft, payload))
            queued = 0
            to_schedule: list[_Partition] = []
            for pid, run in runs.items():
                part = self._parts[pid]
                part.queue.extend(run)
                part.rafts.extend(raft for _, raft, _ in run)
                part.next_index = expected[pid]
                queued += len(run)
                if not part.scheduled and part.error is None:
                    part.scheduled = True
                    if part.is_async:
                        to_schedule.append(part)
                    else:
                        self._ready.append(part)
                        self._work.notify()
            self._commit_index = max(self._commit_index, max(raft_indices))
            self._progress.notify_all()  # (all of it may have been skipped or unrouted)
        for part in to_schedule:
            self._schedule(part)
        return queued

    def _schedule(self, part: _Partition) -> None:
        """Hand a partition just marked scheduled to its drainer (lock not held)."""
        if part.is_async:
            asyncio.run_coroutine_threadsafe(self._drain_async(part), self._event_loop())
        else:
            with self._lock:
                self._ready.append(part)
                self._work.notify()

    def _work_loop(self) -> None:
        """A worker: drain ready synchronous partitions until the applier closes."""
        while True:
            with self._lock:
                while not self._ready and not self._closed:
                    self._work.wait()
                if self._closed:
                    for part in self._ready:
                        part.scheduled = False
                    self._ready.clear()
                    self._progress.notify_all()
                    return
                part = self._ready.popleft()
            try:
                self._drain(part)
            except BaseException as exc:  # a bug, not an apply error: keep the worker
                _log.exception("applier worker: draining partition %d failed", part.pid)
                with self._lock:
                    part.error = part.error or PartitionFailedError(
                        part.pid, part.applied_index + 1, exc
                    )
                    part.scheduled = False
                    self._progress.notify_all()

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="segstore-apply-loop", daemon=True
                )
                thread.start()
                self._loop, self._loop_thread = loop, thread
            return self._loop

    # -- draining --------------------------------------------------------------------

    def _take_run(self, part: _Partition) -> list[tuple[int, int, bytes]] | None:
        """The next run to apply, or None (and the partition unscheduled)."""
        with self._lock:
            if not part.queue or part.error is not None or self._closed:
                part.scheduled = False
                self._progress.notify_all()
                return None
            queue = part.queue
            take = min(len(queue), APPLY_RUN_MAX)
            return [queue.popleft() for _ in range(take)]

    def _finish_run(
        self,
        part: _Partition,
        run: list[tuple[int, int, bytes]],
        done: int,
        results: list[Any],
        error: BaseException | None,
    ) -> None:
        """Record a run's outcome: ``done`` entries applied, then maybe a failure."""
        with self._lock:
            if error is not None:
                index = run[done][0]
                part.error = PartitionFailedError(part.pid, index, error)
                part.queue.extendleft(reversed(run[done:]))
            self._progress.notify_all()
        if done and self._callbacks:
            first_index, first_raft, _ = run[0]
            for callback in tuple(self._callbacks):
                try:
                    callback(part.pid, first_index, first_raft, results)
                except Exception:  # the entries are applied whatever the callback does
                    _log.exception("on_applied callback failed (partition %d)", part.pid)

    def _drain(self, part: _Partition) -> None:
        collect = bool(self._callbacks)
        while (run := self._take_run(part)) is not None:
            results: list[Any] = []
            done = 0
            error: BaseException | None = None
            apply = part.sm.apply
            for index, raft, payload in run:
                with part.apply_lock:
                    try:
                        result = apply(index, payload)
                    except BaseException as exc:  # SystemExit too: only this partition stops
                        error = exc
                        break
                    part.applied_index = index
                    part.applied_raft = raft
                if collect:
                    results.append(result)
                done += 1
            self._finish_run(part, run, done, results, error)

    async def _drain_async(self, part: _Partition) -> None:
        collect = bool(self._callbacks)
        while (run := self._take_run(part)) is not None:
            results: list[Any] = []
            done = 0
            error: BaseException | None = None
            apply: Callable[[int, bytes], Awaitable[Any]] = part.sm.apply
            for index, raft, payload in run:
                part.apply_lock.acquire()
                try:
                    result = await apply(index, payload)
                except BaseException as exc:  # CancelledError too: the run is re-queued
                    error = exc
                    break
                else:
                    part.applied_index = index
                    part.applied_raft = raft
                finally:
                    part.apply_lock.release()
                if collect:
                    results.append(result)
                done += 1
            self._finish_run(part, run, done, results, error)
            if isinstance(error, asyncio.CancelledError):
                raise error

    # -- observing -------------------------------------------------------------------

    def on_applied(self, callback: AppliedCallback) -> None:
        """Call ``callback(pid, first_index, first_raft_index, results)`` after every
        applied run (register before submitting: runs already started collect no
        results)."""
        if not callable(callback):
            raise InvalidArgumentError("callback must be callable")
        with self._lock:
            self._callbacks.append(callback)

    def status(self, partition_id: int) -> PartitionStatus:
        """Progress and error of one partition."""
        part = self._part(partition_id)
        with self._lock:
            return self._status_locked(partition_id, part)

    def statuses(self) -> list[PartitionStatus]:
        """Progress and error of every partition, by id."""
        with self._lock:
            return [self._status_locked(pid, part) for pid, part in enumerate(self._parts)]

    def _status_locked(self, pid: int, part: _Partition) -> PartitionStatus:
        return PartitionStatus(
            partition_id=pid,
            applied_index=part.applied_index,
            applied_raft_index=part.applied_raft,
            checkpointed_index=part.checkpointed_index,
            pending=part.next_index - 1 - part.applied_index,
            error=part.error,
        )

    def state_machine(self, partition_id: int) -> PartitionStateMachine:
        """Partition ``partition_id``'s state machine (read it only while idle)."""
        return self._part(partition_id).sm

    def _part(self, partition_id: int) -> _Partition:
        if isinstance(partition_id, bool) or not isinstance(partition_id, int):
            raise InvalidArgumentError(f"partition id must be an int, not {partition_id!r}")
        if not 0 <= partition_id < self.partition_count:
            raise InvalidArgumentError(
                f"partition {partition_id} does not exist (there are {self.partition_count})"
            )
        return self._parts[partition_id]

    def last_commit_index(self) -> int:
        """Highest raft index up to which every committed entry is applied."""
        with self._lock:
            last = self._commit_index
            for part in self._parts:
                first = part.first_unapplied_raft()
                if first is not None and first - 1 < last:
                    last = first - 1
            return last

    def required_raft_index(self) -> int:
        """The oldest raft index a restart would need again: the durable floor + 1."""
        return self._floor + 1

    def required_raft_indices(self) -> dict[int, int]:
        """Per partition with entries not covered by its checkpoint: the raft index of
        the first of them (what that partition needs the log to keep)."""
        with self._lock:
            return {pid: part.rafts[0] for pid, part in enumerate(self._parts) if part.rafts}

    def wait_applied(self, raft_index: int, timeout: float | None = None) -> bool:
        """Block until every committed entry up to ``raft_index`` is applied (True) or
        ``timeout`` passes (False). Raises the partition's
        :class:`~segstore.errors.PartitionFailedError` if one holding such an entry
        stopped."""
        failed: list[PartitionFailedError] = []

        def reached() -> bool:
            if self._commit_index < raft_index:
                return False
            for part in self._parts:
                first = part.first_unapplied_raft()
                if first is not None and first <= raft_index:
                    if part.error is not None:
                        failed.append(part.error)
                        return True
                    return False
            return True

        with self._lock:
            done = self._progress.wait_for(reached, timeout)
        if failed:
            raise failed[0]
        return done

    def check_capacity(self, partition_id: int, extra: int = 0) -> None:
        """Raise if the partition is stopped or backed up; ``extra`` counts entries the
        caller holds on top of those handed in (appended but not yet committed)."""
        part = self._part(partition_id)
        with self._lock:
            self._check_capacity_locked(part, part.next_index - 1 + extra)

    def check_capacity_many(self, appended_through: Mapping[int, int]) -> None:
        """:meth:`check_capacity` for several partitions under one lock:
        ``appended_through[pid]`` is the highest partition index the caller has
        appended or is about to append for ``pid``."""
        parts = [(self._part(pid), through) for pid, through in appended_through.items()]
        with self._lock:
            for part, through in parts:
                self._check_capacity_locked(part, max(through, part.next_index - 1))

    def _check_capacity_locked(self, part: _Partition, through: int) -> None:
        if part.error is not None:
            raise part.error
        pending = through - part.applied_index
        first = part.first_unapplied_raft()
        lag = self._commit_index - first + 1 if first is not None else 0
        if pending > self.max_pending:
            raise BackpressureError(part.pid, pending, lag, f"max_pending {self.max_pending}")
        if lag > self.max_lag:
            raise BackpressureError(part.pid, pending, lag, f"max_lag {self.max_lag}")

    def resume(self, partition_id: int) -> None:
        """Clear a stopped partition's error and retry from the entry that failed."""
        part = self._part(partition_id)
        with self._lock:
            self._check_open()
            if part.error is None:
                return
            part.error = None
            if part.queue and not part.scheduled:
                part.scheduled = True
            else:
                return
        self._schedule(part)

    # -- checkpoints -----------------------------------------------------------------

    def checkpoint(self) -> int:
        """Snapshot every partition that applied something since its last checkpoint
        and is not in the middle of an apply, and store the snapshots and the new floor
        in one LMDB transaction; return the floor (the durable ``last_commit_index``)."""
        with self._checkpoint_lock:
            return self._checkpoint_locked()

    def _checkpoint_locked(self) -> int:
        updates: dict[int, AppliedCheckpoint] = {}
        for pid, part in enumerate(self._parts):
            if part.applied_index == part.checkpointed_index:
                continue
            # Between two applies the state is exactly applied_index. A partition in
            # the middle of an apply keeps its older checkpoint this time: waiting for
            # a slow apply would stall every other partition's checkpoint with it.
            if not part.apply_lock.acquire(blocking=False):
                continue
            try:
                index, raft = part.applied_index, part.applied_raft
                updates[pid] = AppliedCheckpoint(index, raft, part.sm.snapshot())
            finally:
                part.apply_lock.release()
        with self._lock:
            floor = self._commit_index
            for pid, part in enumerate(self._parts):
                covered = updates[pid].applied_index if pid in updates else part.checkpointed_index
                skip = covered - part.checkpointed_index
                if skip < len(part.rafts):
                    floor = min(floor, part.rafts[skip] - 1)
        self._checkpoints.write_applied(updates, applied_raft_floor=floor)
        with self._lock:
            for pid, checkpoint in updates.items():
                part = self._parts[pid]
                for _ in range(checkpoint.applied_index - part.checkpointed_index):
                    part.rafts.popleft()
                part.checkpointed_index = checkpoint.applied_index
                part.checkpointed_raft = checkpoint.applied_raft_index
            self._floor = max(self._floor, floor)
        return floor

    def install(
        self,
        states: dict[int, AppliedCheckpoint],
        commit_index: int,
        *,
        raft_snapshot: bytes | None = None,
        write: Callable[[AppliedUpdate], None] | None = None,
    ) -> None:
        """Replace every partition's state (a Raft snapshot install): partitions in
        ``states`` are restored from them, the others start empty; queued entries are
        dropped; everything is checkpointed, with ``commit_index`` as the floor.

        ``write`` makes the new applied state durable (default: its own checkpoint
        transaction); a store's ``install_snapshot`` passes one that writes it in the
        same transaction as the store's own part. The caller excludes ``submit``
        meanwhile (a Raft engine installs a snapshot on the thread that commits).
        """
        self.wait_idle()
        with self._checkpoint_lock:
            parts = [self._restored(pid, states.get(pid)) for pid in range(self.partition_count)]
            durable = {
                pid: AppliedCheckpoint(p.applied_index, p.applied_raft, p.sm.snapshot())
                for pid, p in enumerate(parts)
            }
            update = AppliedUpdate(durable, commit_index, raft_snapshot)
            if write is None:
                self._checkpoints.write({}, applied=update)
            else:
                write(update)
            with self._lock:
                self._parts = parts
                self._commit_index = commit_index
                self._floor = commit_index

    # -- lifetime --------------------------------------------------------------------

    def close(self, *, wait: bool = True) -> None:
        """Stop; with ``wait``, first let queued entries be applied (not checkpointed:
        call :meth:`checkpoint` before if the progress should be durable)."""
        if wait and not self._closed:
            self.wait_idle()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._progress.notify_all()
            self._work.notify_all()
        for worker in self._workers:
            worker.join()
        loop = self._loop
        if loop is not None and self._loop_thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            self._loop_thread.join()
            loop.close()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no partition has an apply queued or running (failed partitions
        count as idle); False on timeout."""
        with self._lock:
            return self._progress.wait_for(
                lambda: all(not p.scheduled for p in self._parts), timeout
            )

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the applier is closed")


__all__ = [
    "APPLY_RUN_MAX",
    "AppliedCallback",
    "Applier",
    "PartitionStateMachine",
    "PartitionStatus",
    "StateMachineFactory",
]

"""``segstore.applier``: invariant 5 (one apply in flight per partition, partition-index
order, partitions concurrent; nothing applied twice or skipped across a restart), stopped
partitions, backpressure and checkpoints (issue #4, section 1).

Every wait here has a generous timeout only so that a broken applier fails instead of
hanging; nothing asserts on time.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from segstore.applier import Applier, PartitionStateMachine
from segstore.checkpoints import CheckpointStore
from segstore.errors import BackpressureError, InvalidArgumentError, PartitionFailedError
from segstore.raft.partition_entry import NO_PARTITION
from segstore.testing.kv import KeyValueStateMachine

WAIT = 20.0  # seconds; only ever a bound against hangs
STORE_ID = b"applier-tests"


def payload_for(pid: int, index: int) -> bytes:
    """Entry ``index`` of partition ``pid``: a deterministic ``key=value``."""
    return f"k{index % 3}=p{pid}i{index}".encode()


def model_of(pid: int, count: int) -> tuple[dict[bytes, bytes], list[bytes | None]]:
    """The key-value state after entries 1..count of ``pid`` applied once each, and the
    result (previous value) each apply returns."""
    data: dict[bytes, bytes] = {}
    results: list[bytes | None] = []
    for index in range(1, count + 1):
        key, _, value = payload_for(pid, index).partition(b"=")
        results.append(data.get(key))
        data[key] = value
    return data, results


class Feed:
    """Committed entries in raft order, with contiguous partition indices."""

    def __init__(self) -> None:
        self.raft = 0
        self.next_index: dict[int, int] = {}
        self.log: list[tuple[int, int, int, bytes]] = []  # (raft, pid, index, payload)

    def make(self, pids: list[int]) -> tuple[list[int], list[int], list[int], list[bytes]]:
        rafts, indices, payloads = [], [], []
        for pid in pids:
            self.raft += 1
            index = self.next_index.get(pid, 1)
            self.next_index[pid] = index + 1
            payload = payload_for(pid, index)
            self.log.append((self.raft, pid, index, payload))
            rafts.append(self.raft)
            indices.append(index)
            payloads.append(payload)
        return rafts, list(pids), indices, payloads

    def replay(self, first_raft: int) -> tuple[list[int], list[int], list[int], list[bytes]]:
        """Every entry from ``first_raft`` on again (a redelivery after a restart)."""
        rows = [row for row in self.log if row[0] >= first_raft]
        return (
            [r[0] for r in rows],
            [r[1] for r in rows],
            [r[2] for r in rows],
            [r[3] for r in rows],
        )

    def count(self, pid: int) -> int:
        return self.next_index.get(pid, 1) - 1


class Opened:
    """Appliers and checkpoint stores a test opened; closed at teardown."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.appliers: list[Applier] = []
        self.stores: list[CheckpointStore] = []

    def store(self) -> CheckpointStore:
        store = CheckpointStore.open(self.path / "checkpoints", store_id=STORE_ID)
        self.stores.append(store)
        return store

    def applier(
        self,
        partitions: int,
        factory: Callable[[int], PartitionStateMachine],
        store: CheckpointStore | None = None,
        **kwargs: Any,
    ) -> Applier:
        applier = Applier(store or self.store(), partitions, factory, **kwargs)
        self.appliers.append(applier)
        return applier

    def close(self) -> None:
        for applier in self.appliers:
            applier.close(wait=False)
        for store in self.stores:
            if not store.closed:
                store.close()


@pytest.fixture
def opened(tmp_path: Path) -> Iterator[Opened]:
    state = Opened(tmp_path)
    try:
        yield state
    finally:
        state.close()


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.002)


def idle(applier: Applier) -> None:
    assert applier.wait_idle(WAIT), "the applier never became idle"


# -- instrumented state machines --------------------------------------------------------------


class Probe:
    """Counts applies in flight per partition and records the highest count seen."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.in_flight: dict[int, int] = {}
        self.max_in_flight: dict[int, int] = {}
        self.order: dict[int, list[int]] = {}

    def enter(self, pid: int, index: int) -> None:
        with self.lock:
            now = self.in_flight.get(pid, 0) + 1
            self.in_flight[pid] = now
            self.max_in_flight[pid] = max(self.max_in_flight.get(pid, 0), now)
            self.order.setdefault(pid, []).append(index)

    def leave(self, pid: int) -> None:
        with self.lock:
            self.in_flight[pid] -= 1


class Recorder(KeyValueStateMachine):
    """A key-value state machine that reports each apply to a probe and holds it open
    for a moment (time.sleep releases the GIL), so that a second concurrent apply of
    the same partition would overlap it."""

    def __init__(self, pid: int, probe: Probe) -> None:
        super().__init__()
        self.pid = pid
        self.probe = probe

    def apply(self, partition_index: int, payload: bytes) -> bytes | None:
        self.probe.enter(self.pid, partition_index)
        try:
            time.sleep(0.0002)
            return super().apply(partition_index, payload)
        finally:
            self.probe.leave(self.pid)


class AsyncRecorder(KeyValueStateMachine):
    """The same with ``async def apply``, yielding to the loop inside the apply."""

    def __init__(self, pid: int, probe: Probe) -> None:
        super().__init__()
        self.pid = pid
        self.probe = probe

    async def apply(self, partition_index: int, payload: bytes) -> bytes | None:  # type: ignore[override]
        self.probe.enter(self.pid, partition_index)
        try:
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            return KeyValueStateMachine.apply(self, partition_index, payload)
        finally:
            self.probe.leave(self.pid)


class Flaky(KeyValueStateMachine):
    """Raises (before changing anything) on the partition indices in ``fail_at``."""

    def __init__(self, fail_at: set[int] | None = None) -> None:
        super().__init__()
        self.fail_at = fail_at if fail_at is not None else set()
        self.attempts: list[int] = []

    def apply(self, partition_index: int, payload: bytes) -> bytes | None:
        self.attempts.append(partition_index)
        if partition_index in self.fail_at:
            raise RuntimeError(f"boom at {partition_index}")
        return super().apply(partition_index, payload)


class AsyncFlaky(Flaky):
    async def apply(self, partition_index: int, payload: bytes) -> bytes | None:  # type: ignore[override]
        await asyncio.sleep(0)
        return Flaky.apply(self, partition_index, payload)


class Gated(KeyValueStateMachine):
    """Blocks in ``apply`` of the partition indices in ``gate_at`` until ``gate`` is set."""

    def __init__(self, gate: threading.Event, gate_at: set[int]) -> None:
        super().__init__()
        self.gate = gate
        self.gate_at = gate_at
        self.entered = threading.Event()

    def apply(self, partition_index: int, payload: bytes) -> bytes | None:
        if partition_index in self.gate_at:
            self.entered.set()
            assert self.gate.wait(WAIT), "the test never opened the gate"
        return super().apply(partition_index, payload)


def kv(applier: Applier, pid: int) -> KeyValueStateMachine:
    sm = applier.state_machine(pid)
    assert isinstance(sm, KeyValueStateMachine)
    return sm


def assert_matches_model(applier: Applier, feed: Feed, where: str) -> None:
    """Every partition's state is its entries applied exactly once, in order."""
    for pid in range(applier.partition_count):
        count = feed.count(pid)
        data, _ = model_of(pid, count)
        sm = kv(applier, pid)
        assert sm.applies == count, f"{where}: partition {pid} applied {sm.applies}, not {count}"
        assert sm.data == data, f"{where}: partition {pid} state differs from the model"
        status = applier.status(pid)
        assert status.applied_index == count, f"{where}: partition {pid} status {status}"
        assert status.pending == 0 and status.error is None, f"{where}: {status}"


# -- one in flight, order, parallelism --------------------------------------------------------


@pytest.mark.parametrize("kind", ["sync", "async", "mixed"])
def test_one_apply_in_flight_per_partition_in_partition_index_order(
    opened: Opened, kind: str
) -> None:
    # Invariant 5: many small submits over 8 partitions, 4 workers (and the event loop
    # for async partitions): no partition ever has two applies running, each sees its
    # indices 1, 2, 3, ... once each, and the state equals the model.
    probe = Probe()

    def factory(pid: int) -> PartitionStateMachine:
        use_async = kind == "async" or (kind == "mixed" and pid % 2 == 0)
        return AsyncRecorder(pid, probe) if use_async else Recorder(pid, probe)

    applier = opened.applier(8, factory, threads=4)
    feed = Feed()
    for step in range(40):
        pids = [(step * 3 + k) % 8 for k in range(12)]
        applier.submit(*feed.make(pids))
    idle(applier)
    for pid in range(8):
        assert probe.max_in_flight[pid] == 1, f"partition {pid} had concurrent applies"
        assert probe.order[pid] == list(range(1, feed.count(pid) + 1)), f"partition {pid}"
    assert_matches_model(applier, feed, kind)


class Rendezvous(KeyValueStateMachine):
    def __init__(self, mine: threading.Event, other: threading.Event) -> None:
        super().__init__()
        self.mine, self.other = mine, other
        self.met: bool | None = None

    def apply(self, partition_index: int, payload: bytes) -> bytes | None:
        if partition_index == 1:
            self.mine.set()
            self.met = self.other.wait(WAIT)
        return super().apply(partition_index, payload)


class AsyncRendezvous(Rendezvous):
    async def apply(self, partition_index: int, payload: bytes) -> bytes | None:  # type: ignore[override]
        if partition_index == 1:
            self.mine.set()
            deadline = time.monotonic() + WAIT
            while not self.other.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.001)  # awaits: lets the loop run the other partition
            self.met = self.other.is_set()
        return KeyValueStateMachine.apply(self, partition_index, payload)


@pytest.mark.parametrize(
    "kinds",
    [(Rendezvous, Rendezvous), (AsyncRendezvous, AsyncRendezvous), (Rendezvous, AsyncRendezvous)],
    ids=["sync", "async", "sync-and-async"],
)
def test_partitions_apply_in_parallel(opened: Opened, kinds: tuple[type, type]) -> None:
    # Invariant 5, "partitions concurrent": partition 0's first apply waits for
    # partition 1's to start and vice versa. A serial applier times one of them out.
    events = [threading.Event(), threading.Event()]
    machines = [kinds[0](events[0], events[1]), kinds[1](events[1], events[0])]
    applier = opened.applier(2, lambda pid: machines[pid], threads=2)
    feed = Feed()
    applier.submit(*feed.make([0, 1, 0, 1]))
    idle(applier)
    assert machines[0].met is True and machines[1].met is True, "the partitions ran one by one"
    assert_matches_model(applier, feed, "after the rendezvous")


def test_sync_and_async_applies_return_their_results_in_order(opened: Opened) -> None:
    # on_applied: each partition's results arrive in partition-index order, each run
    # starting where the previous one ended, and they are what apply returned (here the
    # key's previous value, checked against the model).
    seen: dict[int, list[tuple[int, int, list[Any]]]] = {}
    lock = threading.Lock()

    def callback(pid: int, first_index: int, first_raft: int, results: list[Any]) -> None:
        with lock:
            seen.setdefault(pid, []).append((first_index, first_raft, list(results)))

    probe = Probe()
    applier = opened.applier(
        4,
        lambda pid: AsyncRecorder(pid, probe) if pid % 2 else Recorder(pid, probe),
        threads=2,
    )
    applier.on_applied(callback)
    feed = Feed()
    for step in range(10):
        applier.submit(*feed.make([(step + k) % 4 for k in range(9)]))
    idle(applier)
    raft_of = {(pid, index): raft for raft, pid, index, _ in feed.log}
    for pid in range(4):
        runs = seen[pid]
        expected_first = 1
        results: list[Any] = []
        for first_index, first_raft, run in runs:
            assert first_index == expected_first, f"partition {pid}: runs {runs}"
            assert first_raft == raft_of[(pid, first_index)]
            expected_first += len(run)
            results += run
        assert results == model_of(pid, feed.count(pid))[1], f"partition {pid}"


# -- failures ---------------------------------------------------------------------------------


@pytest.mark.parametrize("machine", [Flaky, AsyncFlaky], ids=["sync", "async"])
def test_a_failing_apply_stops_only_its_partition_and_resume_retries(
    opened: Opened, machine: type[Flaky]
) -> None:
    machines = [machine({3} if pid == 1 else set()) for pid in range(3)]
    applier = opened.applier(3, lambda pid: machines[pid], threads=2)
    feed = Feed()
    applier.submit(*feed.make([0, 1, 2] * 5))
    idle(applier)
    status = applier.status(1)
    assert isinstance(status.error, PartitionFailedError)
    assert status.error.partition_id == 1 and status.error.partition_index == 3
    assert isinstance(status.error.__cause__, RuntimeError)
    assert status.applied_index == 2 and status.pending == 3
    assert machines[1].attempts == [1, 2, 3], "entries after the failure were applied"
    with pytest.raises(PartitionFailedError):
        applier.check_capacity(1)
    # The others went on, and still go on.
    applier.check_capacity(0)
    applier.submit(*feed.make([0, 1, 2] * 2))
    idle(applier)
    for pid in (0, 2):
        assert applier.status(pid).applied_index == 7 and applier.status(pid).error is None
    assert applier.status(1).applied_index == 2, "a stopped partition applied more"
    assert applier.status(1).pending == 5
    # resume retries the failed entry, then the rest, each exactly once.
    machines[1].fail_at.clear()
    applier.resume(1)
    idle(applier)
    assert machines[1].attempts == [1, 2, 3, 3, 4, 5, 6, 7]
    assert_matches_model(applier, feed, "after resume")
    applier.check_capacity(1)


def test_resume_of_a_partition_that_fails_again_stops_it_again(opened: Opened) -> None:
    machine = Flaky({2})
    applier = opened.applier(1, lambda pid: machine)
    feed = Feed()
    applier.submit(*feed.make([0, 0, 0]))
    idle(applier)
    applier.resume(0)
    idle(applier)
    error = applier.status(0).error
    assert isinstance(error, PartitionFailedError) and error.partition_index == 2
    assert machine.attempts == [1, 2, 2]
    assert applier.status(0).applied_index == 1


# -- backpressure -----------------------------------------------------------------------------


def test_backpressure_on_max_pending_clears_once_applies_catch_up(opened: Opened) -> None:
    gate = threading.Event()
    machines = [Gated(gate, {1}), KeyValueStateMachine()]
    applier = opened.applier(2, lambda pid: machines[pid], max_pending=3)
    feed = Feed()
    try:
        applier.submit(*feed.make([0, 0, 0]))
        assert machines[0].entered.wait(WAIT)
        applier.check_capacity(0)  # 3 pending: at the bound, not past it
        with pytest.raises(BackpressureError) as caught:
            applier.check_capacity(0, extra=1)  # entries the caller holds count too
        assert caught.value.partition_id == 0 and caught.value.pending == 4
        applier.submit(*feed.make([0, 0, 1]))
        with pytest.raises(BackpressureError, match="max_pending") as caught:
            applier.check_capacity(0)
        assert caught.value.pending == 5
        applier.check_capacity(1)  # the other partition is not backed up
    finally:
        gate.set()
    idle(applier)
    applier.check_capacity(0)
    applier.check_capacity(0, extra=3)
    assert_matches_model(applier, feed, "after catching up")


def test_backpressure_on_max_lag_clears_once_applies_catch_up(opened: Opened) -> None:
    gate = threading.Event()
    machines = [Gated(gate, {1}), KeyValueStateMachine()]
    applier = opened.applier(2, lambda pid: machines[pid], max_lag=10)
    feed = Feed()
    try:
        applier.submit(*feed.make([0]))  # raft 1, blocked
        assert machines[0].entered.wait(WAIT)
        applier.submit(*feed.make([1] * 9))  # rafts 2..10
        applier.check_capacity(0)  # lag 10: at the bound
        applier.submit(*feed.make([1] * 5))  # rafts 11..15
        with pytest.raises(BackpressureError, match="max_lag") as caught:
            applier.check_capacity(0)
        assert caught.value.lag == 15 and caught.value.pending == 1
        wait_until(lambda: applier.status(1).applied_index == 14, "partition 1 to apply")
        applier.check_capacity(1)
        applier.advance_commit(40)  # entries of no partition committed: the lag grows
        with pytest.raises(BackpressureError) as caught:
            applier.check_capacity(0)
        assert caught.value.lag == 40
    finally:
        gate.set()
    idle(applier)
    applier.check_capacity(0)
    assert_matches_model(applier, feed, "after catching up")


# -- redelivery and gaps ----------------------------------------------------------------------


def test_redelivered_entries_are_skipped(opened: Opened) -> None:
    applier = opened.applier(3, lambda pid: KeyValueStateMachine())
    feed = Feed()
    applier.submit(*feed.make([0, 1, 2, 0, 1, 0]))
    idle(applier)
    feed.make([2, 1, 0])
    rafts, pids, indices, payloads = feed.replay(1)
    assert applier.submit(rafts, pids, indices, payloads) == 3, "only the new entries count"
    # Redelivered while still queued, too.
    assert applier.submit(rafts, pids, indices, payloads) == 0
    idle(applier)
    assert_matches_model(applier, feed, "after redelivery")


def test_a_gap_raises_and_queues_nothing_of_the_call(opened: Opened) -> None:
    applier = opened.applier(2, lambda pid: KeyValueStateMachine())
    feed = Feed()
    applier.submit(*feed.make([0, 0]))
    with pytest.raises(InvalidArgumentError, match="skipped"):
        applier.submit([3, 4], [1, 0], [1, 4], [payload_for(1, 1), payload_for(0, 4)])
    with pytest.raises(InvalidArgumentError):
        applier.submit([3], [1], [2], [payload_for(1, 2)])  # a fresh partition starts at 1
    idle(applier)
    assert applier.status(1).applied_index == 0 and applier.status(1).pending == 0
    assert applier.status(0).applied_index == 2
    assert applier.commit_index == 2
    # The partitions continue from where they were.
    applier.submit(*feed.make([1, 0]))
    idle(applier)
    assert_matches_model(applier, feed, "after the refused gap")


def test_entries_of_no_partition_only_advance_the_commit_index(opened: Opened) -> None:
    applier = opened.applier(2, lambda pid: KeyValueStateMachine())
    assert applier.submit([1, 2], [NO_PARTITION, 0], [0, 1], [b"conf", payload_for(0, 1)]) == 1
    assert applier.submit([3], [NO_PARTITION], [0], [b"conf"]) == 0
    idle(applier)
    assert applier.commit_index == 3
    assert applier.last_commit_index() == 3
    assert kv(applier, 0).applies == 1


# -- checkpoints and restart ------------------------------------------------------------------


def reopen(opened: Opened, store: CheckpointStore, applier: Applier, partitions: int, factory):
    applier.close()
    store.close()
    store = opened.store()
    return store, opened.applier(partitions, factory, store=store)


def test_checkpoint_and_reopen_restore_state_and_commit_index(opened: Opened) -> None:
    # Invariant 5 across a restart: a new Applier over the same checkpoints restores
    # every snapshot and reports last_commit_index; redelivering the whole log applies
    # only what was not applied, once.
    store = opened.store()
    applier = opened.applier(4, lambda pid: KeyValueStateMachine(), store=store)
    feed = Feed()
    applier.submit(*feed.make([k % 4 for k in range(30)]))
    applier.submit([31], [NO_PARTITION], [0], [b"conf"])
    feed.raft = 31
    idle(applier)
    assert applier.checkpoint() == 31
    assert all(s.checkpointed_index == s.applied_index for s in applier.statuses())
    store, applier = reopen(opened, store, applier, 4, lambda pid: KeyValueStateMachine())
    assert applier.last_commit_index() == 31
    assert applier.required_raft_index() == 32
    assert_matches_model(applier, feed, "after reopen")
    assert applier.submit(*feed.replay(1)) == 0
    applier.submit(*feed.make([3, 2, 1, 0, 0]))
    idle(applier)
    assert_matches_model(applier, feed, "after more entries")


def test_progress_after_the_last_checkpoint_is_applied_again_exactly_once(
    opened: Opened,
) -> None:
    # Entries applied after the last checkpoint are lost with the process; the restored
    # snapshot is from before them, so applying them again makes the state right
    # (an applier that kept its in-memory index would skip them; one that ignored the
    # snapshot's index would apply the checkpointed ones twice).
    store = opened.store()
    applier = opened.applier(3, lambda pid: KeyValueStateMachine(), store=store)
    feed = Feed()
    applier.submit(*feed.make([k % 3 for k in range(12)]))
    idle(applier)
    assert applier.checkpoint() == 12
    applier.submit(*feed.make([k % 3 for k in range(9)]))
    idle(applier)
    store, applier = reopen(opened, store, applier, 3, lambda pid: KeyValueStateMachine())
    assert applier.last_commit_index() == 12
    for pid in range(3):
        assert kv(applier, pid).applies == 4 and applier.status(pid).applied_index == 4
    assert applier.submit(*feed.replay(applier.last_commit_index() + 1)) == 9
    idle(applier)
    assert_matches_model(applier, feed, "after the replay")


def test_checkpoint_floor_stops_below_a_stopped_partition(opened: Opened) -> None:
    # A stopped partition holds the floor (last_commit_index, required_raft_index) just
    # below its failed entry, while the others' progress is checkpointed; after a
    # restart, a redelivery from the floor applies the stopped partition's entries and
    # skips what the others had applied.
    store = opened.store()
    applier = opened.applier(4, lambda pid: Flaky({4} if pid == 2 else set()), store=store)
    feed = Feed()
    applier.submit(*feed.make([k % 4 for k in range(40)]))
    idle(applier)
    failed_raft = next(r for r, pid, index, _ in feed.log if (pid, index) == (2, 4))
    assert applier.last_commit_index() == failed_raft - 1
    assert applier.required_raft_indices() == {pid: pid + 1 for pid in range(4)}
    assert applier.checkpoint() == failed_raft - 1
    assert applier.required_raft_index() == failed_raft
    assert applier.required_raft_indices() == {2: failed_raft}
    store, applier = reopen(opened, store, applier, 4, lambda pid: KeyValueStateMachine())
    assert applier.last_commit_index() == failed_raft - 1
    assert applier.status(2).applied_index == 3 and kv(applier, 2).applies == 3
    assert applier.status(0).applied_index == 10 and kv(applier, 0).applies == 10
    applier.submit(*feed.replay(applier.last_commit_index() + 1))
    idle(applier)
    assert_matches_model(applier, feed, "after the restart")
    assert applier.checkpoint() == 40


def test_wait_applied_and_last_commit_index_follow_the_slowest_partition(
    opened: Opened,
) -> None:
    gate = threading.Event()
    machines = [KeyValueStateMachine(), Gated(gate, {2})]
    applier = opened.applier(2, lambda pid: machines[pid])
    feed = Feed()
    try:
        applier.submit(*feed.make([1, 0, 1, 0, 0]))  # partition 1 blocks at raft 3
        assert machines[1].entered.wait(WAIT)
        wait_until(lambda: applier.status(0).applied_index == 3, "partition 0")
        assert applier.last_commit_index() == 2
        assert applier.wait_applied(2, WAIT)
        assert not applier.wait_applied(3, 0.05)
    finally:
        gate.set()
    assert applier.wait_applied(5, WAIT)
    assert applier.last_commit_index() == 5


def test_checkpoint_does_not_wait_for_an_apply_in_flight(opened: Opened) -> None:
    # A slow partition must not stall checkpoints of the others (the pipeline's driver
    # checkpoints, so a checkpoint that waits for a blocked apply stops every
    # partition): partition 0 is stuck in its second apply; a checkpoint covers
    # partition 1 and keeps partition 0 at what it had applied before.
    gate = threading.Event()
    machines = [Gated(gate, {2}), KeyValueStateMachine()]
    applier = opened.applier(2, lambda pid: machines[pid])
    feed = Feed()
    try:
        applier.submit(*feed.make([0, 1, 0, 1, 1]))  # partition 0 blocks at raft 3
        assert machines[0].entered.wait(WAIT)
        wait_until(lambda: applier.status(1).applied_index == 3, "partition 1")
        floors: list[int] = []
        thread = threading.Thread(target=lambda: floors.append(applier.checkpoint()))
        thread.start()
        thread.join(10.0)
        assert not thread.is_alive(), "checkpoint() waits for partition 0's blocked apply"
        # Partition 0 cannot be snapshotted mid-apply, so it keeps its older checkpoint
        # (0 here) and the floor stops just below its first uncovered entry (raft 1).
        assert applier.status(0).checkpointed_index == 0
        assert floors == [0]
        assert applier.status(1).checkpointed_index == 3
    finally:
        gate.set()
    idle(applier)
    assert applier.checkpoint() == 5


def test_wait_applied_wakes_when_only_the_commit_index_moves(opened: Opened) -> None:
    """Entries of no partition (and skipped redeliveries) only raise the commit index:
    a waiter must be woken by that, not left waiting for its timeout."""
    applier = opened.applier(2, lambda pid: KeyValueStateMachine())
    results: list[bool] = []
    waiter = threading.Thread(target=lambda: results.append(applier.wait_applied(3, 600)))
    waiter.start()
    time.sleep(0.05)
    applier.advance_commit(3)
    waiter.join(WAIT)
    assert not waiter.is_alive(), "wait_applied slept through the commit index advance"
    assert results == [True]


def test_a_raising_on_applied_callback_neither_kills_a_worker_nor_stops_applies(
    opened: Opened,
) -> None:
    applier = opened.applier(2, lambda pid: KeyValueStateMachine(), threads=1)
    calls: list[int] = []

    def broken(pid: int, first: int, first_raft: int, results: list[object]) -> None:
        calls.append(first)
        raise RuntimeError("callback bug")

    applier.on_applied(broken)
    feed = Feed()
    applier.submit(*feed.make([0, 1]))
    assert applier.wait_applied(2, WAIT)
    applier.submit(*feed.make([0, 0, 1]))  # the one worker must still be alive
    assert applier.wait_applied(5, WAIT)
    assert applier.wait_idle(WAIT)
    assert applier.status(0).applied_index == 3 and applier.status(1).applied_index == 2
    assert applier.status(0).error is None and calls

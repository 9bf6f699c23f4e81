"""``segstore.pipeline``: the embedded single-node system (issue #4, section 4,
"Integration").

Many partitions go through append, durable, apply and acknowledgement cycles with
simulated replicas (:meth:`Pipeline.ack`); each quorum rule decides the quorum indices;
masters are the same in processes with other hash seeds; and truncation never removes a
record someone still needs (invariant 6): a lagging replica, a stopped partition and a
slow partition each hold the watermark, and once they catch up a checkpoint truncates.

Movement of masters on membership changes is tested in tests/test_masters.py; here only
what the pipeline adds (its members are the node and its replicas) is checked.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pipeline_crash_writer import model_state, payload_for

from segstore.errors import (
    BackpressureError,
    InvalidArgumentError,
    PartitionFailedError,
    RecordTooLargeError,
)
from segstore.masters import MasterPolicy
from segstore.pipeline import Pipeline
from segstore.quorum import All, Custom, Majority, QuorumRule, Threshold
from segstore.raft.partition_entry import PARTITION_HEADER_BYTES
from segstore.testing.kv import KeyValueStateMachine

WAIT = 30.0  # seconds; only a bound against hangs, never asserted on
STALL_WAIT = 10.0  # the same, where a known stall would otherwise cost WAIT
SEGMENT_BYTES = 64 << 10
REPO = Path(__file__).resolve().parents[1]


class Load:
    """What a test submitted: raft index -> (partition, partition index)."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self.counts = [0] * partitions
        self.at: dict[int, tuple[int, int]] = {}
        self.rafts: dict[int, list[int]] = {pid: [] for pid in range(partitions)}
        self.last = 0

    def submit(self, pipeline: Pipeline, pids: list[int]) -> int:
        payloads = []
        for pid in pids:
            self.counts[pid] += 1
            payloads.append(payload_for(pid, self.counts[pid]))
        last = pipeline.submit_many(pids, payloads)
        for offset, pid in enumerate(pids):
            raft = last - len(pids) + 1 + offset
            assert raft not in self.at
            self.at[raft] = (pid, len(self.rafts[pid]) + 1)
            self.rafts[pid].append(raft)
        self.last = last
        return last

    def quorum_indices(self, quorum_raft: int) -> dict[int, int]:
        """Each partition's highest index whose raft index is <= ``quorum_raft``."""
        return {
            pid: sum(1 for raft in rafts if raft <= quorum_raft)
            for pid, rafts in self.rafts.items()
        }

    def first_raft_after(self, raft: int) -> tuple[int, int]:
        """(raft, partition) of the first entry after ``raft``."""
        nxt = min(r for r in self.at if r > raft)
        return nxt, self.at[nxt][0]


class Opened:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.pipelines: list[Pipeline] = []

    def open(self, name: str = "store", **kwargs: Any) -> Pipeline:
        options: dict[str, Any] = {
            "state_machine_factory": lambda pid: KeyValueStateMachine(),
            "segment_bytes": SEGMENT_BYTES,
        }
        options.update(kwargs)
        pipeline = Pipeline.open(self.path / name, **options)
        self.pipelines.append(pipeline)
        return pipeline


@pytest.fixture
def opened(tmp_path: Path) -> Iterator[Opened]:
    state = Opened(tmp_path)
    try:
        yield state
    finally:
        for pipeline in state.pipelines:
            with contextlib.suppress(Exception):  # the test's own failure matters more
                pipeline.close()


def eventually(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Poll ``predicate`` until it holds (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    if not eventually(predicate):
        pytest.fail(f"timed out waiting for {what}")


def settle(pipeline: Pipeline, last: int) -> None:
    """Everything up to ``last`` durable, applied and acknowledged by the node itself."""
    assert pipeline.flush() >= last
    assert pipeline.wait_applied(last, WAIT), f"raft index {last} never applied"
    wait_until(
        lambda: pipeline.acks.acks().get(pipeline.node_id, 0) >= last,
        f"the node's own acknowledgement of {last}",
    )


def assert_states(pipeline: Pipeline, counts: list[int], where: str) -> None:
    """Every partition's state is its entries 1..count applied exactly once."""
    for pid, count in enumerate(counts):
        sm = pipeline.applier.state_machine(pid)
        assert isinstance(sm, KeyValueStateMachine)
        data, applies = model_state(pid, count)
        assert sm.applies == applies, f"{where}: partition {pid} applied {sm.applies}, not {count}"
        assert sm.data == data, f"{where}: partition {pid} differs from the model"


def assert_retained_intact(pipeline: Pipeline, load: Load, start: int, where: str) -> None:
    """The log still holds every record from ``start`` to the last, as submitted."""
    end = pipeline.store.last_durable_index() + 1
    assert pipeline.store.first_retained_index() <= start, f"{where}: truncated past {start}"
    headers, values = pipeline.store.read_records(start, end)
    for offset, (header, value) in enumerate(zip(headers, values, strict=True)):
        raft = start + offset
        pid, index = load.at[raft]
        assert (int(header["partition_id"]), int(header["partition_index"])) == (pid, index)
        assert value[PARTITION_HEADER_BYTES:] == payload_for(pid, index), f"{where}: {raft}"


# -- append, durable, apply, ack --------------------------------------------------------------


def test_many_partitions_through_append_durable_apply_and_ack_cycles(opened: Opened) -> None:
    # 64 partitions, two simulated replicas, majority of three: r1 acknowledges what
    # the previous cycle submitted, r2 what the cycle before it did. After each cycle
    # every state machine equals the model, every quorum index is the majority's
    # verdict (the second highest ack: r1's), the quorum callbacks reported exactly
    # those advances, and the partition logs hold each partition's entries.
    pipeline = opened.open(partitions=64, replicas=("r1", "r2"))
    advances: dict[int, list[int]] = {}
    lock = threading.Lock()

    def on_advance(pid: int, index: int) -> None:
        with lock:
            advances.setdefault(pid, []).append(index)

    pipeline.acks.on_quorum_advance(on_advance)
    load = Load(64)
    rng = random.Random(4)
    lasts = [0, 0]
    for cycle in range(6):
        last = 0
        for _ in range(3):
            last = load.submit(pipeline, [rng.randrange(64) for _ in range(rng.choice([1, 90]))])
        settle(pipeline, last)
        assert_states(pipeline, load.counts, f"cycle {cycle}")
        if lasts[-1]:
            assert pipeline.ack("r1", lasts[-1])
        if lasts[-2]:
            assert pipeline.ack("r2", lasts[-2])
        expected = load.quorum_indices(lasts[-1])
        marks = pipeline.watermarks()
        assert marks.durable_index == last and marks.commit_index == last
        for pid in range(64):
            assert pipeline.acks.quorum_index(pid) == expected[pid], f"cycle {cycle} p{pid}"
            assert marks.partitions[pid].quorum_index == expected[pid]
            assert marks.partitions[pid].applied_index == load.counts[pid]
        lasts.append(last)
    with lock:
        for pid in range(64):
            seen = advances.get(pid, [])
            assert seen == sorted(set(seen)), f"partition {pid}: advances {seen}"
            assert (seen[-1] if seen else 0) == pipeline.acks.quorum_index(pid)
    with pytest.raises(InvalidArgumentError):
        pipeline.ack("r1", load.last + 1)  # a replica cannot hold what is not durable
    pipeline.store.sync_partitions()
    for pid in range(64):
        with pipeline.store.partition_log(pid) as plog:
            assert plog.next_index - 1 == load.counts[pid]
            assert plog.raft_indices(1, plog.next_index).tolist() == load.rafts[pid]
            payloads = [bytes(view) for view in plog.entries(1, plog.next_index)]
            assert payloads == [payload_for(pid, k) for k in range(1, load.counts[pid] + 1)]


RULES: list[tuple[str, QuorumRule, Callable[[dict[str, int]], int]]] = [
    ("majority", Majority(), lambda a: sorted(a.values(), reverse=True)[2]),
    ("threshold-2", Threshold(2), lambda a: sorted(a.values(), reverse=True)[1]),
    ("threshold-4", Threshold(4), lambda a: min(a.values())),
    ("all", All(), lambda a: min(a.values())),
    ("custom-r2", Custom(lambda acked, replicas: "r2" in acked), lambda a: a["r2"]),
    ("custom-any", Custom(lambda acked, replicas: len(acked) >= 1), lambda a: max(a.values())),
]


@pytest.mark.parametrize(("rule", "verdict"), [r[1:] for r in RULES], ids=[r[0] for r in RULES])
def test_each_quorum_rule_decides_the_quorum_index(
    opened: Opened, rule: QuorumRule, verdict: Callable[[dict[str, int]], int]
) -> None:
    # Four members (the node and r1..r3) acknowledging 400, 300, 200 and 100: each rule
    # picks its own quorum raft index, and every partition's quorum index is its last
    # entry at or below it. Then the laggards catch up partially and the verdicts move.
    pipeline = opened.open(partitions=64, replicas=("r1", "r2", "r3"), quorum_rule=rule)
    load = Load(64)
    rng = random.Random(9)
    last = load.submit(pipeline, [rng.randrange(64) for _ in range(400)])
    settle(pipeline, last)
    assert last == 400
    for acks in ({"r1": 300, "r2": 200, "r3": 100}, {"r1": 320, "r2": 390, "r3": 250}):
        for replica, index in acks.items():
            pipeline.ack(replica, index)
        quorum_raft = verdict({"local": 400, **acks})
        assert pipeline.acks.quorum_raft_index(0) == quorum_raft
        expected = load.quorum_indices(quorum_raft)
        assert {p: pipeline.acks.quorum_index(p) for p in range(64)} == expected
        marks = pipeline.watermarks()
        assert {p: m.quorum_index for p, m in marks.partitions.items()} == expected
        # The quorum term of invariant 6: the first entry the rule has not passed.
        if quorum_raft < last:
            assert marks.required_raft_index <= load.first_raft_after(quorum_raft)[0]


# -- masters ----------------------------------------------------------------------------------

MASTERS_SCRIPT = """
import json, sys
from segstore.pipeline import Pipeline
from segstore.testing.kv import KeyValueStateMachine
with Pipeline.open(
    sys.argv[1], partitions=64, node_id="node-a", replicas=["node-b", "node-c"],
    state_machine_factory=lambda pid: KeyValueStateMachine(),
) as pipeline:
    print(json.dumps(pipeline.masters.snapshot()))
"""


@pytest.mark.parametrize("hash_seed", ["0", "4242"])
def test_pipeline_masters_are_the_same_in_processes_with_other_hash_seeds(
    opened: Opened, tmp_path: Path, hash_seed: str
) -> None:
    # Invariant 7 through the pipeline: its masters are spread over the node and its
    # replicas, and a process with another PYTHONHASHSEED assigns the same ones.
    pipeline = opened.open(partitions=64, node_id="node-a", replicas=("node-b", "node-c"))
    mine = pipeline.masters.snapshot()
    members = {"node-a", "node-b", "node-c"}
    assert mine == MasterPolicy.automatic(64, members).snapshot()
    assert set(mine.values()) == members
    env = dict(os.environ, PYTHONHASHSEED=hash_seed, PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "-c", MASTERS_SCRIPT, str(tmp_path / f"other-{hash_seed}")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    theirs = {int(pid): master for pid, master in json.loads(result.stdout).items()}
    assert theirs == mine


# -- truncation keeps what anyone needs (invariant 6) -----------------------------------------


def fill(pipeline: Pipeline, load: Load, count: int, seed: int) -> int:
    rng = random.Random(seed)
    return load.submit(pipeline, [rng.randrange(load.partitions) for _ in range(count)])


def test_a_lagging_replica_holds_the_watermark_until_it_catches_up(opened: Opened) -> None:
    # Rule All: r2 lags at 700 of 3,000 entries. Everything else is done, so the first
    # entry after 700 is the global minimum, its partition the one holder, and the log
    # keeps it and everything after it. Once r2 catches up, checkpoint truncates.
    pipeline = opened.open(
        partitions=16, replicas=("r1", "r2"), quorum_rule=All(), checkpoint_interval_s=0.05
    )
    load = Load(16)
    last = fill(pipeline, load, 3000, seed=1)
    settle(pipeline, last)
    pipeline.ack("r1", last)
    pipeline.ack("r2", 700)
    marks = pipeline.checkpoint()
    held, holder = load.first_raft_after(700)
    assert marks.required_raft_index == held
    assert marks.holders == (holder,)
    assert marks.partitions[holder].required_raft_index == held
    assert marks.log_first_index <= held
    assert_retained_intact(pipeline, load, held, "with r2 lagging")
    time.sleep(0.2)  # let the driver run its own checkpoints too (nothing may change)
    assert pipeline.store.first_retained_index() <= held
    pipeline.ack("r2", last)
    marks = pipeline.checkpoint()
    assert marks.required_raft_index == last + 1 and marks.holders == ()
    assert pipeline.store.first_retained_index() > held, "nothing was truncated"
    assert pipeline.store.first_retained_index() <= marks.required_raft_index
    pipeline.close()
    # The truncated log still restarts into the same states, and goes on.
    pipeline = opened.open(partitions=16, replicas=("r1", "r2"), quorum_rule=All())
    assert_states(pipeline, load.counts, "after reopening the truncated log")
    last = fill(pipeline, load, 400, seed=2)
    settle(pipeline, last)
    assert_states(pipeline, load.counts, "after more entries")


def test_a_lagging_minority_replica_does_not_hold_a_majority(opened: Opened) -> None:
    # The counterpart: under a majority of three, r2's lag does not matter once r1 has
    # acknowledged everything, so the checkpoint truncates past r2's ack.
    pipeline = opened.open(partitions=16, replicas=("r1", "r2"))
    load = Load(16)
    last = fill(pipeline, load, 2000, seed=3)
    settle(pipeline, last)
    pipeline.ack("r1", last)
    pipeline.ack("r2", 100)
    marks = pipeline.checkpoint()
    assert marks.required_raft_index == last + 1
    assert pipeline.store.first_retained_index() > 100


class FailOnce(KeyValueStateMachine):
    """Raises on partition indices in the shared ``fail`` set (until it is cleared)."""

    def __init__(self, pid: int, fail: set[tuple[int, int]]) -> None:
        super().__init__()
        self.pid = pid
        self.fail = fail

    def apply(self, partition_index: int, payload: bytes) -> bytes | None:
        if (self.pid, partition_index) in self.fail:
            raise RuntimeError(f"partition {self.pid} refuses {partition_index}")
        return super().apply(partition_index, payload)


def test_a_stopped_partition_holds_the_watermark_until_resumed(opened: Opened) -> None:
    fail = {(5, 40)}
    pipeline = opened.open(
        partitions=16,
        state_machine_factory=lambda pid: FailOnce(pid, fail),
        checkpoint_interval_s=0.05,
    )
    load = Load(16)
    last = fill(pipeline, load, 3000, seed=5)
    assert load.counts[5] > 40
    with pytest.raises(PartitionFailedError):
        pipeline.wait_applied(last, WAIT)
    status = pipeline.status(5)
    assert isinstance(status.error, PartitionFailedError) and status.applied_index == 39
    with pytest.raises(PartitionFailedError):
        pipeline.submit(5, payload_for(5, load.counts[5] + 1))
    with pytest.raises(PartitionFailedError):
        pipeline.checkpoint()
    wait_until(
        lambda: all(
            pipeline.status(pid).applied_index == load.counts[pid] for pid in range(16) if pid != 5
        ),
        "the other partitions to go on",
    )
    held = load.rafts[5][39]
    # What the driver does every 50 ms, and a Raft engine that compacts all but the last.
    pipeline.store.sync_partitions()
    pipeline.applier.checkpoint()
    assert pipeline.store.compact(last - 1)
    marks = pipeline.watermarks()
    assert marks.required_raft_index == held
    assert marks.holders == (5,)
    assert marks.partitions[5].required_raft_index == held
    assert marks.log_first_index <= held
    assert_retained_intact(pipeline, load, held, "with partition 5 stopped")
    fail.clear()
    pipeline.applier.resume(5)
    marks = pipeline.checkpoint()
    assert marks.required_raft_index == last + 1 and marks.holders == ()
    assert pipeline.store.first_retained_index() > held
    assert_states(pipeline, load.counts, "after resume")


class Slow(KeyValueStateMachine):
    """Blocks in the apply of ``block_at`` until ``gate`` is set (no gate: never)."""

    def __init__(self, gate: threading.Event | None, block_at: int = 30) -> None:
        super().__init__()
        self.gate = gate
        self.block_at = block_at
        self.entered = threading.Event()

    def apply(self, partition_index: int, payload: bytes) -> bytes | None:
        if self.gate is not None and partition_index == self.block_at:
            self.entered.set()
            assert self.gate.wait(WAIT)
        return super().apply(partition_index, payload)


def test_a_slow_partition_holds_the_watermark_even_against_raft_compaction(
    opened: Opened,
) -> None:
    # Partition 3 blocks in its 30th apply. The other partitions go on; the driver
    # checkpoints every 50 ms, and the "Raft engine" compacts all but the last entry:
    # the log still keeps the slow partition's unapplied entries, because the
    # applier's retention hold names them. Released, it applies them, and the next
    # checkpoint truncates.
    gate = threading.Event()
    machines = {pid: Slow(gate if pid == 3 else None) for pid in range(16)}
    pipeline = opened.open(
        partitions=16,
        state_machine_factory=lambda pid: machines[pid],
        checkpoint_interval_s=0.05,
    )
    load = Load(16)
    try:
        last = fill(pipeline, load, 2000, seed=7)
        assert machines[3].entered.wait(WAIT)
        held = load.rafts[3][29]
        # The others keep applying new entries while partition 3 is stuck (the driver
        # checkpoints meanwhile).
        for round_ in range(20):
            more = load.submit(pipeline, [pid for pid in range(16) if pid != 3])
            pipeline.flush()
            assert eventually(
                lambda: all(
                    pipeline.status(pid).applied_index == load.counts[pid]
                    for pid in range(16)
                    if pid != 3
                ),
                STALL_WAIT,
            ), f"round {round_}: the other partitions stalled behind the slow one"
        last = more
        pipeline.store.sync_partitions()
        checkpointer = threading.Thread(target=pipeline.applier.checkpoint, daemon=True)
        checkpointer.start()
        checkpointer.join(STALL_WAIT)
        assert not checkpointer.is_alive(), "Applier.checkpoint waits for the slow apply"
        assert pipeline.store.compact(last - 1)
        marks = pipeline.watermarks()
        # Partition 3 is snapshotted only between applies, so its checkpoint may be
        # older than the 29 entries it applied: it needs the log from its first entry
        # its checkpoint does not cover, which is at or before the stuck one.
        covered = pipeline.status(3).checkpointed_index
        assert covered <= 29
        assert marks.required_raft_index == load.rafts[3][covered] <= held
        assert marks.holders == (3,)
        assert pipeline.store.first_retained_index() <= marks.required_raft_index
        assert_retained_intact(pipeline, load, held, "with partition 3 slow")
    finally:
        gate.set()
    marks = pipeline.checkpoint()
    assert marks.required_raft_index == last + 1
    assert pipeline.store.first_retained_index() == last + 1
    assert_states(pipeline, load.counts, "after the slow partition caught up")


def test_compact_at_the_tail_keeps_what_the_pipeline_needs(opened: Opened) -> None:
    # Invariant 6 against a Raft engine that compacts up to its last entry (a snapshot
    # at the last committed index): a stopped partition's entries, and entries no
    # quorum has acknowledged, must stay in the log whatever compact allows.
    fail = {(2, 10)}
    pipeline = opened.open(
        partitions=4,
        replicas=("r1", "r2"),
        state_machine_factory=lambda pid: FailOnce(pid, fail),
    )
    load = Load(4)
    last = fill(pipeline, load, 400, seed=11)
    with pytest.raises(PartitionFailedError):
        pipeline.wait_applied(last, WAIT)
    held = load.rafts[2][9]
    pipeline.store.sync_partitions()
    pipeline.applier.checkpoint()
    assert pipeline.watermarks().required_raft_index <= held
    assert pipeline.store.compact(last)
    assert pipeline.store.first_retained_index() <= held, (
        "compact(last) truncated past the stopped partition's failed entry"
    )
    assert_retained_intact(pipeline, load, held, "after compact at the tail")


def test_a_partition_needs_what_it_has_not_made_durable(opened: Opened) -> None:
    # The partition-log term: records applied and acknowledged but not yet
    # checkpointed in their partition logs are needed until sync_partitions.
    pipeline = opened.open(partitions=4)
    load = Load(4)
    last = load.submit(pipeline, [0, 1, 2, 3] * 50)
    settle(pipeline, last)
    pipeline.applier.checkpoint()
    before = pipeline.store.checkpoints.routed_raft_index()
    marks = pipeline.watermarks()
    assert marks.required_raft_index <= before + 1
    assert pipeline.store.first_retained_index() <= before + 1
    marks = pipeline.checkpoint()
    assert marks.required_raft_index == last + 1


def test_submit_applies_backpressure_before_appending(opened: Opened) -> None:
    # A batch that would take a partition past max_pending is refused whole, before
    # anything of it is appended; once the partition catches up it goes in.
    gate = threading.Event()
    machines = {pid: Slow(gate if pid == 0 else None, block_at=1) for pid in range(2)}
    pipeline = opened.open(
        partitions=2, state_machine_factory=lambda pid: machines[pid], max_pending=40
    )
    load = Load(2)
    try:
        load.submit(pipeline, [0] * 35)
        assert machines[0].entered.wait(WAIT)
        next_slot = pipeline.store.next_slot()
        with pytest.raises(BackpressureError) as caught:
            pipeline.submit_many([1] + [0] * 6, [payload_for(1, 1)] + [b"k=v"] * 6)
        assert caught.value.partition_id == 0 and caught.value.pending == 41
        assert pipeline.store.next_slot() == next_slot, "a refused batch was appended"
        last = load.submit(pipeline, [1] + [0] * 5)  # exactly at the bound
    finally:
        gate.set()
    settle(pipeline, last)
    last = load.submit(pipeline, [0] * 30 + [1])
    settle(pipeline, last)
    assert_states(pipeline, load.counts, "after catching up")


def test_waiting_for_an_index_never_submitted_is_refused(opened: Opened) -> None:
    pipeline = opened.open(partitions=2)
    last = pipeline.submit_many([0, 1], [b"a=1", b"b=1"])
    assert pipeline.wait_applied(last, WAIT)
    with pytest.raises(InvalidArgumentError, match="never submitted"):
        pipeline.wait_applied(last + 1)


def test_an_oversize_payload_is_refused_and_the_pipeline_goes_on(opened: Opened) -> None:
    pipeline = opened.open(partitions=2)
    with pytest.raises(RecordTooLargeError):
        pipeline.submit_many([0, 1], [b"a=1", b"b=" + b"x" * SEGMENT_BYTES])
    last = pipeline.submit_many([0], [b"a=2"])
    assert pipeline.wait_applied(last, WAIT)
    sm = pipeline.applier.state_machine(0)
    assert isinstance(sm, KeyValueStateMachine)
    assert (sm.data, sm.applies) == ({b"a": b"2"}, 1)  # nothing of the refused batch

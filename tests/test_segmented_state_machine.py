"""``SegmentedStateMachine``: NuRaft's ``state_machine`` over the applier.

Commits reach the right partition with the partition index the leader's store assigned
(values carry index 0), conf entries only advance the commit index, ``last_commit_index``
is the durable floor across a restart (nothing applied twice, nothing skipped), and Raft
snapshots (docs/FORMAT.md section 7.6) are created, served in chunks, installed, pinned
byte for byte and refused loudly when damaged.

Every wait has a generous timeout only so that a broken applier fails instead of
hanging; nothing asserts on time.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import segstore.raft.segmented_state_machine as ssm_module
from segstore.applier import PartitionStateMachine
from segstore.checkpoints import AppliedCheckpoint, CheckpointStore
from segstore.errors import (
    CorruptionError,
    InvalidArgumentError,
    PartitionFailedError,
    SegstoreError,
)
from segstore.raft import (
    NO_PARTITION,
    ClusterConfig,
    LogEntry,
    LogValType,
    SegmentedLogStore,
    ServerConfig,
    Snapshot,
    decode_partition,
    encode_entry,
)
from segstore.raft.pack import crc32c
from segstore.raft.segmented_state_machine import (
    SNAPSHOT_MAGIC,
    SegmentedStateMachine,
    decode_snapshot,
    encode_snapshot,
)
from segstore.router import Router
from segstore.testing.kv import KeyValueStateMachine

PARTITIONS = 4
TERM = 3
WAIT = 20.0  # seconds; only ever a bound against hangs
CONFIG = ClusterConfig(
    log_idx=1,
    servers=(ServerConfig(1, "127.0.0.1:9001"), ServerConfig(2, "127.0.0.1:9002")),
)
CONF = object()
"""Marker in a log plan: a ``conf`` entry (it belongs to no partition)."""


def payload_for(pid: int, index: int) -> bytes:
    """Entry ``index`` of partition ``pid``: a deterministic ``key=value``."""
    return b"k%d=p%d.%d" % (index % 3, pid, index)


class RecordingKV(KeyValueStateMachine):
    """A key-value state machine that also records every ``(index, payload)`` applied."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, bytes]] = []

    def apply(self, partition_index: int, payload: bytes) -> bytes | None:
        self.seen.append((partition_index, bytes(payload)))
        return super().apply(partition_index, payload)


class FailingKV(KeyValueStateMachine):
    """Raises on any payload whose value is ``boom``."""

    def apply(self, partition_index: int, payload: bytes) -> bytes | None:
        if bytes(payload).endswith(b"=boom"):
            raise RuntimeError("this partition cannot apply boom")
        return super().apply(partition_index, payload)


@dataclass
class Row:
    """One log entry a test appended: where it went and what the store assigned."""

    raft: int
    entry: LogEntry
    pid: int  # NO_PARTITION for conf entries
    index: int  # partition index the store assigns (0 for conf entries)
    payload: bytes


@dataclass
class Plan:
    """The log a test appended, with the partition assignment computed independently."""

    rows: list[Row] = field(default_factory=list)
    next_index: dict[int, int] = field(default_factory=dict)

    def expected(self, pid: int, through: int | None = None) -> list[tuple[int, bytes]]:
        """``(index, payload)`` of every entry of ``pid`` up to raft ``through``."""
        return [
            (row.index, row.payload)
            for row in self.rows
            if row.pid == pid and (through is None or row.raft <= through)
        ]

    def model(self, pid: int, through: int | None = None) -> dict[bytes, bytes]:
        """The key-value state of ``pid`` after its entries up to ``through`` once each."""
        data: dict[bytes, bytes] = {}
        for _, payload in self.expected(pid, through):
            key, _, value = payload.partition(b"=")
            data[key] = value
        return data

    @property
    def last(self) -> int:
        return self.rows[-1].raft


class Node:
    """A SegmentedLogStore and its SegmentedStateMachine over one directory."""

    def __init__(
        self,
        path: Path,
        factory: Callable[[int], PartitionStateMachine],
        partitions: int,
    ) -> None:
        self.path = path
        self.factory = factory
        self.partitions = partitions
        self.store = SegmentedLogStore.open(path, partitions=partitions)
        self.ssm = SegmentedStateMachine(self.store, factory)
        self.open = True

    def append(self, plan: Plan, pids: list[object], payloads: list[bytes] | None = None) -> Plan:
        """Append app_log entries of ``pids`` (values carry index 0) and conf entries
        for ``CONF``; one ``end_of_append_batch``. Records them in ``plan``."""
        start = self.store.next_slot()
        for k, pid in enumerate(pids):
            raft = start + k
            if pid is CONF:
                entry = LogEntry(TERM, b"conf@%d" % raft, LogValType.conf)
                row = Row(raft, entry, NO_PARTITION, 0, b"")
            else:
                assert isinstance(pid, int)
                index = plan.next_index.get(pid, 1)
                plan.next_index[pid] = index + 1
                payload = payloads[k] if payloads is not None else payload_for(pid, index)
                entry = LogEntry(TERM, encode_entry(pid, payload))
                assert decode_partition(entry.value) == (pid, 0)  # the store assigns
                row = Row(raft, entry, pid, index, payload)
            assert self.store.append(entry) == raft
            plan.rows.append(row)
        self.store.end_of_append_batch(start, len(pids))
        return plan

    def commit_each(self, plan: Plan, first: int, last: int) -> None:
        """What NuRaft does: ``commit`` per app_log entry, ``commit_config`` per conf."""
        for row in plan.rows:
            if first <= row.raft <= last:
                if row.pid == NO_PARTITION:
                    self.ssm.commit_config(row.raft, CONFIG)
                else:
                    assert self.ssm.commit(row.raft, row.entry.value) is None

    def wait(self, raft: int) -> None:
        assert self.ssm.applier.wait_applied(raft, timeout=WAIT)
        assert self.ssm.applier.wait_idle(timeout=WAIT)

    def sm(self, pid: int) -> KeyValueStateMachine:
        sm = self.ssm.applier.state_machine(pid)
        assert isinstance(sm, KeyValueStateMachine)
        return sm

    def states(self) -> dict[int, tuple[dict[bytes, bytes], int, int]]:
        """Every partition's (data, applies, last_index)."""
        return {
            pid: (dict(self.sm(pid).data), self.sm(pid).applies, self.sm(pid).last_index)
            for pid in range(self.partitions)
        }

    def close(self) -> None:
        """A clean shutdown: the state machine checkpoints, then the store closes."""
        if self.open:
            self.open = False
            try:
                self.ssm.close()
            finally:
                self.store.close()

    def crash(self) -> None:
        """Stop without the state machine's final checkpoint (a process death after
        the last checkpoint: applies since then are lost, the log is not)."""
        if self.open:
            self.open = False
            try:
                self.ssm.applier.close(wait=False)
            finally:
                self.store.close()


class Nodes:
    """Nodes a test opened; closed at teardown."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.opened: list[Node] = []

    def open(
        self,
        name: str = "a",
        factory: Callable[[int], PartitionStateMachine] = lambda pid: RecordingKV(),
        partitions: int = PARTITIONS,
    ) -> Node:
        node = Node(self.root / name, factory, partitions)
        self.opened.append(node)
        return node

    def reopen(self, node: Node) -> Node:
        node.close()
        return self.open(node.path.name, node.factory, node.partitions)

    def close(self) -> None:
        for node in reversed(self.opened):
            node.close()


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Nodes]:
    state = Nodes(tmp_path)
    try:
        yield state
    finally:
        state.close()


MIXED = [0, 1, 1, CONF, 2, 0, 3, 3, 3, CONF, 1, 0, 2, 0, CONF, 3, 1]
"""Partitions interleaved unevenly, with conf entries between them."""


class Done:
    """A ``when_done`` callback that records its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[bool, BaseException | None]] = []

    def __call__(self, ok: bool, error: BaseException | None) -> None:
        self.calls.append((ok, error))


def snapshot_at(node: Node, raft: int) -> tuple[Snapshot, Done]:
    s = Snapshot(raft, TERM, CONFIG)
    done = Done()
    node.ssm.create_snapshot(s, done)
    return s, done


def read_chunks(node: Node, s: Snapshot) -> list[bytes]:
    """Every logical object of ``s``, as NuRaft's sender reads them."""
    chunks: list[bytes] = []
    ctx: object = object()
    for obj_id in range(10_000):
        obj = node.ssm.read_logical_snp_obj(s, ctx, obj_id)
        assert obj.user_snp_ctx is ctx
        chunks.append(obj.data)
        if obj.is_last_obj:
            return chunks
    raise AssertionError("read_logical_snp_obj never returned the last object")


def send(receiver: Node, s: Snapshot, chunks: list[bytes]) -> None:
    """Feed ``chunks`` to ``receiver`` as NuRaft's receiver does."""
    obj_id = 0
    for k, chunk in enumerate(chunks):
        wanted = receiver.ssm.save_logical_snp_obj(
            s, obj_id, chunk, is_first_obj=k == 0, is_last_obj=k == len(chunks) - 1
        )
        assert wanted == obj_id + 1
        obj_id = wanted


# -- commits ---------------------------------------------------------------------------


def test_commit_per_entry_reaches_each_partition_with_the_assigned_index(nodes: Nodes) -> None:
    node = nodes.open()
    plan = node.append(Plan(), MIXED)
    applied: list[tuple[int, int, int, int]] = []
    node.ssm.applier.on_applied(
        lambda pid, first, raft, results: applied.append((pid, first, raft, len(results)))
    )
    for row in plan.rows:
        assert node.store.partition_of(row.raft) == (row.pid, row.index)
    node.commit_each(plan, 1, plan.last)
    node.wait(plan.last)
    for pid in range(PARTITIONS):
        assert node.sm(pid).seen == plan.expected(pid)
        assert node.sm(pid).data == plan.model(pid)
    # Each applied run starts at the raft index of its first entry.
    by_raft = {(row.pid, row.index): row.raft for row in plan.rows}
    for pid, first, raft, count in applied:
        assert by_raft[(pid, first)] == raft
        assert count >= 1
    assert node.ssm.last_commit_index() == plan.last


def test_commit_range_reaches_each_partition_with_the_assigned_index(nodes: Nodes) -> None:
    node = nodes.open()
    plan = node.append(Plan(), MIXED)
    split = 7
    assert node.ssm.commit_range(1, split) == sum(
        1 for r in plan.rows[: split - 1] if r.pid != NO_PARTITION
    )
    node.wait(split - 1)
    assert node.ssm.last_commit_index() == split - 1
    for pid in range(PARTITIONS):
        assert node.sm(pid).seen == plan.expected(pid, through=split - 1)
    queued = node.ssm.commit_range(split, plan.last + 1)
    assert queued == sum(1 for r in plan.rows[split - 1 :] if r.pid != NO_PARTITION)
    node.wait(plan.last)
    for pid in range(PARTITIONS):
        assert node.sm(pid).seen == plan.expected(pid)
    assert node.ssm.last_commit_index() == plan.last
    assert node.ssm.commit_range(plan.last + 1, plan.last + 1) == 0
    assert node.ssm.last_commit_index() == plan.last


def test_conf_and_other_no_partition_entries_only_advance_the_commit_index(
    nodes: Nodes,
) -> None:
    node = nodes.open()
    plan = node.append(Plan(), [CONF, CONF])
    custom = LogEntry(TERM, b"not a partition entry", LogValType.custom)
    assert node.store.append(custom) == 3
    node.store.end_of_append_batch(3, 1)
    assert node.store.partition_of(3) == (NO_PARTITION, 0)

    node.ssm.commit_config(1, CONFIG)
    assert node.ssm.last_commit_index() == 1
    assert node.ssm.commit(2, plan.rows[1].entry.value) is None  # commit of a conf entry
    assert node.ssm.last_commit_index() == 2
    assert node.ssm.commit(3, custom.value) is None
    assert node.ssm.last_commit_index() == 3
    plan = node.append(plan, [CONF, CONF])
    assert node.ssm.commit_range(4, 6) == 0
    assert node.ssm.last_commit_index() == 5
    assert node.ssm.applier.wait_idle(timeout=WAIT)
    assert all(node.sm(pid).applies == 0 for pid in range(PARTITIONS))
    assert all(status.applied_index == 0 for status in node.ssm.applier.statuses())


def test_commit_with_data_of_another_partition_is_refused(nodes: Nodes) -> None:
    node = nodes.open()
    plan = node.append(Plan(), [0, 1, 2])
    node.commit_each(plan, 1, 1)
    node.wait(1)
    forged = encode_entry(3, plan.rows[1].payload)  # the log says partition 1
    with pytest.raises(InvalidArgumentError, match="partition"):
        node.ssm.commit(2, forged)
    assert node.ssm.applier.wait_idle(timeout=WAIT)
    assert node.ssm.last_commit_index() == 1
    assert node.sm(3).applies == 0
    assert node.sm(1).applies == 0
    # The genuine entry is still accepted afterwards.
    node.commit_each(plan, 2, 3)
    node.wait(3)
    assert [node.sm(pid).seen for pid in range(3)] == [plan.expected(pid) for pid in range(3)]


# -- restart: last_commit_index is the durable floor ----------------------------------


@pytest.mark.parametrize("style", ["each", "range"])
def test_reopen_resumes_from_last_commit_index_exactly_once(nodes: Nodes, style: str) -> None:
    node = nodes.open()
    plan = node.append(Plan(), MIXED * 3)
    committed = 29
    if style == "each":
        node.commit_each(plan, 1, committed)
    else:
        node.ssm.commit_range(1, committed + 1)
    node.wait(committed)
    assert node.ssm.last_commit_index() == committed

    node = nodes.reopen(node)
    assert node.ssm.last_commit_index() == committed
    assert node.store.checkpoints.applied_raft_floor() == committed
    for pid in range(PARTITIONS):
        assert node.sm(pid).data == plan.model(pid, through=committed)
        assert node.sm(pid).applies == len(plan.expected(pid, through=committed))
        assert node.sm(pid).seen == []  # restored from the checkpoint, nothing replayed

    first = node.ssm.last_commit_index() + 1
    if style == "each":
        node.commit_each(plan, first, plan.last)
    else:
        node.ssm.commit_range(first, plan.last + 1)
    node.wait(plan.last)
    for pid in range(PARTITIONS):
        after = [pair for pair in plan.expected(pid) if pair not in plan.expected(pid, committed)]
        assert node.sm(pid).seen == after  # nothing twice, nothing skipped
        assert node.sm(pid).applies == len(plan.expected(pid))
        assert node.sm(pid).data == plan.model(pid)
    assert node.ssm.last_commit_index() == plan.last

    # A redelivery of everything (an engine replaying from an older index) is a no-op.
    node.ssm.commit_range(1, plan.last + 1)
    node.commit_each(plan, 1, plan.last)
    node.wait(plan.last)
    assert all(node.sm(pid).applies == len(plan.expected(pid)) for pid in range(PARTITIONS))


def test_reopen_after_a_crash_reapplies_only_what_the_checkpoint_missed(nodes: Nodes) -> None:
    node = nodes.open()
    plan = node.append(Plan(), MIXED * 2)
    node.ssm.commit_range(1, 12)
    node.wait(11)
    assert node.ssm.applier.checkpoint() == 11
    node.ssm.commit_range(12, 25)
    node.wait(24)
    assert node.ssm.last_commit_index() == 24
    node.crash()  # entries 12..24 were applied but never checkpointed

    node = nodes.open("a")
    assert node.ssm.last_commit_index() == 11
    node.ssm.commit_range(node.ssm.last_commit_index() + 1, plan.last + 1)
    node.wait(plan.last)
    for pid in range(PARTITIONS):
        assert node.sm(pid).applies == len(plan.expected(pid))
        assert node.sm(pid).last_index == len(plan.expected(pid))
        assert node.sm(pid).data == plan.model(pid)
    assert node.ssm.last_commit_index() == plan.last


def test_last_commit_index_stops_below_an_unapplied_entry(nodes: Nodes) -> None:
    node = nodes.open(factory=lambda pid: FailingKV() if pid == 2 else RecordingKV())
    plan = node.append(Plan(), [0, 1, 2, 3, 0], [b"a=1", b"b=1", b"c=boom", b"d=1", b"e=1"])
    node.ssm.commit_range(1, plan.last + 1)
    assert node.ssm.applier.wait_idle(timeout=WAIT)
    assert node.ssm.applier.status(2).error is not None
    assert node.ssm.last_commit_index() == 2  # entry 3 (partition 2) is not applied
    node = nodes.reopen(node)
    assert node.ssm.last_commit_index() == 2
    # Partitions 0 and 3 checkpointed what they applied; committing again from 3
    # applies none of it twice, and partition 2 stops at its entry again.
    assert node.sm(0).data == {b"a": b"1", b"e": b"1"}
    node.ssm.commit_range(node.ssm.last_commit_index() + 1, plan.last + 1)
    assert node.ssm.applier.wait_idle(timeout=WAIT)
    assert [node.sm(pid).applies for pid in range(PARTITIONS)] == [2, 1, 0, 1]
    assert node.ssm.applier.status(2).error is not None
    assert node.ssm.last_commit_index() == 2


# -- Raft snapshots --------------------------------------------------------------------


def build_leader(
    nodes: Nodes, entries: list[object], payloads: list[bytes] | None = None
) -> tuple[Node, Plan]:
    node = nodes.open("leader")
    plan = node.append(Plan(), entries, payloads)
    node.ssm.commit_range(1, plan.last + 1)
    node.wait(plan.last)
    return node, plan


BIG = 700_000


@pytest.mark.parametrize("chunking", ["one chunk", "small chunks", "large states"])
def test_snapshot_round_trips_to_another_store(
    nodes: Nodes, monkeypatch: pytest.MonkeyPatch, chunking: str
) -> None:
    if chunking == "large states":
        # Two partitions holding ~0.7 MB each: more than one 1 MiB object.
        pids: list[object] = [*MIXED, 1, 2]
        payloads = [b"x=%d" % k for k in range(len(MIXED))] + [
            b"big=" + b"1" * BIG,
            b"big=" + b"2" * BIG,
        ]
        leader, plan = build_leader(nodes, pids, payloads)
    else:
        if chunking == "small chunks":
            monkeypatch.setattr(ssm_module, "SNAPSHOT_CHUNK_BYTES", 64)
        leader, plan = build_leader(nodes, MIXED * 2)
    s, done = snapshot_at(leader, plan.last)
    assert done.calls == [(True, None)]
    assert leader.ssm.last_snapshot() == s

    chunks = read_chunks(leader, s)
    blob = leader.store.checkpoints.raft_snapshot()
    assert b"".join(chunks) == blob
    assert blob is not None and blob.startswith(SNAPSHOT_MAGIC)
    if chunking == "one chunk":
        assert len(chunks) == 1
    else:
        assert len(chunks) > 1
        assert all(len(chunk) == ssm_module.SNAPSHOT_CHUNK_BYTES for chunk in chunks[:-1])
    decoded, states = decode_snapshot(blob)
    assert decoded == s
    assert states == leader.store.checkpoints.read_applied_all()

    follower = nodes.open("follower")
    other = follower.append(Plan(), [0, 0, 3])  # some state of its own, to be replaced
    follower.ssm.commit_range(1, other.last + 1)
    follower.wait(other.last)
    send(follower, s, chunks)
    assert follower.ssm.apply_snapshot(s) is True
    assert follower.ssm.last_snapshot() == s
    assert follower.ssm.last_commit_index() == plan.last
    assert follower.states() == leader.states()
    assert follower.store.checkpoints.raft_snapshot() == blob

    expected = leader.states()
    leader = nodes.reopen(leader)
    follower = nodes.reopen(follower)
    for node in (leader, follower):
        assert node.ssm.last_snapshot() == s
        assert node.states() == expected
        assert node.ssm.last_commit_index() == plan.last
    # The reopened leader still serves the same objects.
    assert b"".join(read_chunks(leader, s)) == blob


def test_snapshot_of_a_partly_checkpointed_store_covers_everything_applied(nodes: Nodes) -> None:
    leader, plan = build_leader(nodes, MIXED)
    leader.ssm.applier.checkpoint()
    more = leader.append(plan, [2, 2, CONF, 0])
    leader.ssm.commit_range(len(MIXED) + 1, more.last + 1)
    _, done = snapshot_at(leader, more.last)
    assert done.calls == [(True, None)]
    _, states = decode_snapshot(leader.store.checkpoints.raft_snapshot() or b"")
    for pid in range(PARTITIONS):
        expected = plan.expected(pid)
        assert states[pid].applied_index == len(expected)
        assert states[pid].applied_raft_index == max(r.raft for r in plan.rows if r.pid == pid)
    assert leader.store.checkpoints.applied_raft_floor() == more.last


def test_save_logical_snp_obj_restarts_on_a_first_object(nodes: Nodes) -> None:
    leader, plan = build_leader(nodes, MIXED)
    s, _ = snapshot_at(leader, plan.last)
    chunks = read_chunks(leader, s)
    follower = nodes.open("follower")
    follower.ssm.save_logical_snp_obj(s, 0, b"half of an abandoned transfer", True, False)
    send(follower, s, chunks)
    assert follower.ssm.apply_snapshot(s) is True
    assert follower.states() == leader.states()


def test_read_logical_snp_obj_refuses_unknown_snapshots_and_objects(nodes: Nodes) -> None:
    leader, plan = build_leader(nodes, MIXED)
    with pytest.raises(InvalidArgumentError):
        leader.ssm.read_logical_snp_obj(Snapshot(plan.last, TERM, CONFIG), None, 0)
    s, _ = snapshot_at(leader, plan.last)
    with pytest.raises(InvalidArgumentError):
        leader.ssm.read_logical_snp_obj(Snapshot(plan.last - 1, TERM, CONFIG), None, 0)
    assert len(read_chunks(leader, s)) == 1
    with pytest.raises(InvalidArgumentError):
        leader.ssm.read_logical_snp_obj(s, None, 1)


def test_create_snapshot_below_the_commit_index_fails(nodes: Nodes) -> None:
    leader, plan = build_leader(nodes, MIXED)
    _, done = snapshot_at(leader, plan.last - 3)
    assert len(done.calls) == 1
    ok, error = done.calls[0]
    assert ok is False
    assert isinstance(error, InvalidArgumentError)
    assert leader.ssm.last_snapshot() is None
    assert leader.store.checkpoints.raft_snapshot() is None

    good, done = snapshot_at(leader, plan.last)
    assert done.calls == [(True, None)]
    blob = leader.store.checkpoints.raft_snapshot()
    _, done = snapshot_at(leader, plan.last - 1)
    assert [ok for ok, _ in done.calls] == [False]
    assert leader.ssm.last_snapshot() == good  # the failed one replaced nothing
    assert leader.store.checkpoints.raft_snapshot() == blob


def test_create_snapshot_above_the_commit_index_does_not_claim_unapplied_entries(
    nodes: Nodes,
) -> None:
    """A snapshot at an index whose entries were never committed must not report them
    applied: either it fails, or it applies them first. Claiming them moves the durable
    floor past entries no partition has, so a restart skips them."""
    leader = nodes.open("leader")
    plan = leader.append(Plan(), MIXED)
    committed = 8
    leader.ssm.commit_range(1, committed + 1)
    leader.wait(committed)
    _, done = snapshot_at(leader, plan.last)
    assert len(done.calls) == 1
    ok, _ = done.calls[0]
    applied = sum(leader.sm(pid).applies for pid in range(PARTITIONS))
    if ok:
        assert applied == sum(1 for r in plan.rows if r.pid != NO_PARTITION), (
            f"snapshot at {plan.last} reported created, but only the entries up to "
            f"{committed} were applied; last_commit_index() = "
            f"{leader.ssm.last_commit_index()}"
        )
    else:
        assert leader.ssm.last_commit_index() == committed
        assert leader.store.checkpoints.applied_raft_floor() <= committed


def test_create_snapshot_reports_a_failing_partition(nodes: Nodes) -> None:
    node = nodes.open(factory=lambda pid: FailingKV() if pid == 1 else RecordingKV())
    plan = node.append(Plan(), [0, 1, 2, 1, 3], [b"a=1", b"b=1", b"c=1", b"b=boom", b"d=1"])
    node.ssm.commit_range(1, plan.last + 1)
    assert node.ssm.applier.wait_idle(timeout=WAIT)
    _, done = snapshot_at(node, plan.last)
    assert len(done.calls) == 1
    ok, error = done.calls[0]
    assert ok is False
    assert isinstance(error, PartitionFailedError)
    assert error.partition_id == 1
    assert node.ssm.last_snapshot() is None
    assert node.store.checkpoints.raft_snapshot() is None


def test_follower_applies_entries_after_installing_a_snapshot(nodes: Nodes) -> None:
    """NuRaft's follower: install the snapshot, compact its log up to it, then take
    the entries that follow from the leader (values carry partition index 0, so the
    follower's store assigns the indices). They must take effect as on the leader."""
    leader, plan = build_leader(nodes, MIXED)
    s, _ = snapshot_at(leader, plan.last)
    follower = nodes.open("follower")
    send(follower, s, read_chunks(leader, s))
    assert follower.ssm.apply_snapshot(s)
    follower.store.compact(s.last_log_idx)
    assert follower.store.next_slot() == s.last_log_idx + 1

    plan = leader.append(plan, [0, 1, CONF, 2, 3, 0])
    for row in plan.rows[len(MIXED) :]:
        assert follower.store.append(row.entry) == row.raft
    follower.store.end_of_append_batch(len(MIXED) + 1, 6)
    for node in (leader, follower):
        node.ssm.commit_range(len(MIXED) + 1, plan.last + 1)
        node.wait(plan.last)
    for pid in range(PARTITIONS):
        assert follower.sm(pid).data == plan.model(pid), f"partition {pid} lost entries"
    assert follower.states() == leader.states()
    for row in plan.rows[len(MIXED) :]:
        assert follower.store.partition_of(row.raft) == (row.pid, row.index)


def test_apply_snapshot_of_a_store_with_more_partitions_is_refused(nodes: Nodes) -> None:
    """Partitions the receiver does not have must not be dropped silently."""
    leader, plan = build_leader(nodes, MIXED)
    s, _ = snapshot_at(leader, plan.last)
    follower = nodes.open("follower", partitions=2)
    send(follower, s, read_chunks(leader, s))
    with pytest.raises(SegstoreError):
        follower.ssm.apply_snapshot(s)
    assert follower.ssm.last_snapshot() is None
    assert follower.ssm.last_commit_index() == 0


def test_apply_snapshot_of_another_index_is_refused(nodes: Nodes) -> None:
    leader, plan = build_leader(nodes, MIXED)
    s, _ = snapshot_at(leader, plan.last)
    follower = nodes.open("follower")
    send(follower, s, read_chunks(leader, s))
    with pytest.raises(InvalidArgumentError):
        follower.ssm.apply_snapshot(Snapshot(plan.last + 1, TERM, CONFIG))
    assert follower.ssm.last_snapshot() is None
    assert follower.ssm.last_commit_index() == 0


def flipped(blob: bytes, offset: int) -> bytes:
    damaged = bytearray(blob)
    damaged[offset] ^= 0x40
    return bytes(damaged)


def resealed(body: bytes) -> bytes:
    """``body`` with a correct CRC32C appended (damage the CRC cannot catch)."""
    return body + struct.pack("<I", crc32c(body))


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: flipped(b, 0), id="magic"),
        pytest.param(lambda b: flipped(b, 9), id="last_log_idx"),
        pytest.param(lambda b: flipped(b, 30), id="config-json"),
        pytest.param(lambda b: flipped(b, len(b) - 20), id="partition-state"),
        pytest.param(lambda b: flipped(b, len(b) - 1), id="crc"),
        pytest.param(lambda b: b[:-1], id="truncated-by-one"),
        pytest.param(lambda b: b[: len(b) // 2], id="truncated-to-half"),
        pytest.param(lambda b: b[:10], id="truncated-to-10"),
        pytest.param(lambda b: b"", id="empty"),
        pytest.param(lambda b: b + b"\0", id="one-byte-appended"),
        pytest.param(lambda b: resealed(b"XXSNAP01" + b[8:-4]), id="bad-magic-resealed"),
        pytest.param(lambda b: resealed(b[:-5]), id="short-state-resealed"),
        pytest.param(lambda b: resealed(b[:-4] + b"\0"), id="trailing-byte-resealed"),
        pytest.param(lambda b: resealed(b[:28] + b"[" + b[29:-4]), id="json-invalid-resealed"),
    ],
)
def test_damaged_snapshot_is_refused_with_corruption_error(
    nodes: Nodes, damage: Callable[[bytes], bytes]
) -> None:
    leader, plan = build_leader(nodes, MIXED)
    s, _ = snapshot_at(leader, plan.last)
    blob = b"".join(read_chunks(leader, s))
    bad = damage(blob)
    assert bad != blob
    with pytest.raises(CorruptionError):
        decode_snapshot(bad)
    follower = nodes.open("follower")
    send(follower, s, [bad[:50], bad[50:]])
    with pytest.raises(CorruptionError):
        follower.ssm.apply_snapshot(s)
    assert follower.ssm.last_snapshot() is None
    assert follower.ssm.last_commit_index() == 0
    assert follower.store.checkpoints.raft_snapshot() is None
    assert all(follower.sm(pid).applies == 0 for pid in range(PARTITIONS))


def test_a_damaged_partition_state_inside_a_valid_blob_is_refused(nodes: Nodes) -> None:
    config = ClusterConfig()
    s = Snapshot(5, TERM, config)
    blob = encode_snapshot(s, {0: AppliedCheckpoint(1, 5, b"\x01\x00")})  # not a kv state
    follower = nodes.open("follower")
    send(follower, s, [blob])
    with pytest.raises(CorruptionError):
        follower.ssm.apply_snapshot(s)
    assert follower.ssm.last_snapshot() is None
    assert follower.ssm.last_commit_index() == 0


# -- golden bytes (docs/FORMAT.md section 7.6) -----------------------------------------


GOLDEN_SNAPSHOT = Snapshot(
    last_log_idx=0x0102030405,
    last_log_term=7,
    last_config=ClusterConfig(
        log_idx=40,
        prev_log_idx=12,
        async_replication=True,
        user_ctx="ctx",
        servers=(
            ServerConfig(1, "10.0.0.1:20010"),
            ServerConfig(2, "10.0.0.2:20010", dc_id=3, aux="rack-b", learner=True, priority=0),
        ),
    ),
)
GOLDEN_STATES = {  # deliberately not in id order: the blob sorts them
    9: AppliedCheckpoint(3, 0x0102030404, b"nine"),
    0: AppliedCheckpoint(1, 17, b""),
}
GOLDEN_JSON = (
    b'{"async_replication": true, "log_idx": 40, "prev_log_idx": 12, "servers": ['
    b'{"aux": "", "dc_id": 0, "endpoint": "10.0.0.1:20010", "id": 1, "learner": false, '
    b'"priority": 1}, '
    b'{"aux": "rack-b", "dc_id": 3, "endpoint": "10.0.0.2:20010", "id": 2, "learner": true, '
    b'"priority": 0}], "user_ctx": "ctx"}'
)


def test_crc32c_is_castagnoli() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value


def test_encode_snapshot_golden_bytes() -> None:
    body = (
        b"SGSNAP01"
        + struct.pack("<Q", 0x0102030405)
        + struct.pack("<Q", 7)
        + struct.pack("<I", len(GOLDEN_JSON))
        + GOLDEN_JSON
        + struct.pack("<I", 2)
        + struct.pack("<IQQI", 0, 1, 17, 0)
        + struct.pack("<IQQI", 9, 3, 0x0102030404, 4)
        + b"nine"
    )
    expected = body + struct.pack("<I", crc32c(body))
    blob = encode_snapshot(GOLDEN_SNAPSHOT, GOLDEN_STATES)
    assert blob == expected
    assert len(blob) == 8 + 8 + 8 + 4 + len(GOLDEN_JSON) + 4 + 2 * 24 + 4 + 4
    assert decode_snapshot(blob) == (GOLDEN_SNAPSHOT, GOLDEN_STATES)


def test_encode_snapshot_of_no_partitions_and_an_empty_config() -> None:
    s = Snapshot(1, 1, ClusterConfig())
    config = (
        b'{"async_replication": false, "log_idx": 0, "prev_log_idx": 0, "servers": [], '
        b'"user_ctx": ""}'
    )
    body = b"SGSNAP01" + struct.pack("<QQI", 1, 1, len(config)) + config + struct.pack("<I", 0)
    assert encode_snapshot(s, {}) == body + struct.pack("<I", crc32c(body))
    assert decode_snapshot(body + struct.pack("<I", crc32c(body))) == (s, {})


def test_apply_snapshot_cut_short_after_its_transaction_is_finished_at_reopen(
    nodes: Nodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """apply_snapshot writes the state machines' new state, the partitions' and the
    restart marker in one transaction: a crash right after it (before the partition
    logs are restarted) reopens as a follower that installed the snapshot, whose next
    entries take the leader's partition indices; a crash before it changes nothing."""
    leader, plan = build_leader(nodes, MIXED)
    s, _ = snapshot_at(leader, plan.last)
    follower = nodes.open("follower")
    send(follower, s, read_chunks(leader, s))

    def crash(self: object) -> None:
        raise OSError(5, "injected crash")

    monkeypatch.setattr(Router, "restart_partitions", crash)
    with pytest.raises(OSError, match="injected crash"):
        follower.ssm.apply_snapshot(s)
    monkeypatch.undo()
    follower.crash()
    follower = nodes.reopen(follower)
    assert follower.ssm.last_snapshot() == s
    assert follower.ssm.last_commit_index() == s.last_log_idx
    assert follower.states() == leader.states()
    assert follower.store.next_slot() == s.last_log_idx + 1
    plan = leader.append(plan, [0, 3, CONF, 1])
    for row in plan.rows[len(MIXED) :]:
        assert follower.store.append(row.entry) == row.raft
    follower.store.end_of_append_batch(len(MIXED) + 1, 4)
    for node in (leader, follower):
        node.ssm.commit_range(len(MIXED) + 1, plan.last + 1)
        node.wait(plan.last)
    assert follower.states() == leader.states()
    for row in plan.rows[len(MIXED) :]:
        assert follower.store.partition_of(row.raft) == (row.pid, row.index)


def test_apply_snapshot_failing_before_its_transaction_changes_nothing(
    nodes: Nodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    leader, plan = build_leader(nodes, MIXED)
    s, _ = snapshot_at(leader, plan.last)
    follower = nodes.open("follower")
    follower.append(Plan(), [0, 1])
    follower.ssm.commit_range(1, 3)
    follower.wait(2)
    follower.ssm.applier.checkpoint()
    before = follower.states()
    send(follower, s, read_chunks(leader, s))

    def fail(self: object, *args: object, **kwargs: object) -> None:
        raise OSError(28, "injected ENOSPC")

    monkeypatch.setattr(CheckpointStore, "write", fail)
    with pytest.raises(OSError, match="ENOSPC"):
        follower.ssm.apply_snapshot(s)
    monkeypatch.undo()
    follower.crash()
    follower = nodes.reopen(follower)
    assert follower.ssm.last_snapshot() is None
    assert follower.states() == before
    assert follower.store.next_slot() == 3


def test_resent_snapshot_objects_are_ignored_and_gaps_refused(
    nodes: Nodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ssm_module, "SNAPSHOT_CHUNK_BYTES", 64)
    leader, plan = build_leader(nodes, MIXED)
    s, _ = snapshot_at(leader, plan.last)
    chunks = read_chunks(leader, s)
    assert len(chunks) >= 3
    follower = nodes.open("follower")
    last = len(chunks) - 1
    assert follower.ssm.save_logical_snp_obj(s, 0, chunks[0], True, last == 0) == 1
    assert follower.ssm.save_logical_snp_obj(s, 0, chunks[0], False, False) == 1  # resent
    with pytest.raises(InvalidArgumentError, match="object 1 is next"):
        follower.ssm.save_logical_snp_obj(s, 2, chunks[2], False, last == 2)
    for obj_id in range(1, len(chunks)):
        follower.ssm.save_logical_snp_obj(s, obj_id, chunks[obj_id], False, obj_id == last)
    assert follower.ssm.apply_snapshot(s)
    assert follower.states() == leader.states()

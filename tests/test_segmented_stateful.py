"""Hypothesis stateful test: SegmentedLogStore beside InMemoryLogStore and a partition model.

Both stores get the same operations. The partition model is the history of entries the
partitions must hold: ``(raft index, entry)`` in raft index order, kept by compaction and
cut by ``write_at`` (DESIGN invariant 3). Rules append (a random partition of four,
sometimes a conf entry, sometimes an explicit correct partition index, sometimes an
explicit wrong one that must raise PartitionError and change nothing), end the append
batch, write_at, compact (inside the log and past the tail), flush, sync the partitions,
and close and reopen. After every step the two stores agree on next_slot, start_index,
last_entry, every entry and term, and the store's next partition indices equal the
model's; after sync_partitions every partition log equals the model's projection.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from segstore.errors import PartitionError
from segstore.raft import (
    InMemoryLogStore,
    LogEntry,
    LogValType,
    SegmentedLogStore,
    decode_partition,
    encode_entry,
)
from segstore.raft.partition_entry import PARTITION_HEADER_BYTES

PARTITIONS = 4
SCRATCH_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else None
"""tmpfs when there is one: fsync is free there, so many more examples fit the budget."""

payloads = st.binary(max_size=40)
terms = st.integers(1, 5)


class SegmentedStoreMachine(RuleBasedStateMachine):
    """SegmentedLogStore, InMemoryLogStore and the partition model, side by side."""

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="segmented-stateful-", dir=SCRATCH_DIR))
        self.path = self.directory / "store"
        self.memory = InMemoryLogStore()
        self.store: SegmentedLogStore | None = None
        self.history: list[tuple[int, LogEntry]] = []
        self.batch_start = 1
        self.term = 1

    @initialize()
    def open_store(self) -> None:
        self.store = SegmentedLogStore.open(self.path, partitions=PARTITIONS)

    @property
    def seg(self) -> SegmentedLogStore:
        assert self.store is not None
        return self.store

    # -- the model ---------------------------------------------------------------------

    def model_next_indices(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for _, entry in self.history:
            if entry.val_type == LogValType.app_log:
                pid = decode_partition(entry.value)[0]
                counts[pid] = counts.get(pid, 0) + 1
        return {pid: count + 1 for pid, count in counts.items()}

    def projection(self, pid: int, upto: int) -> tuple[list[bytes], list[int]]:
        """Payloads and raft indices of partition ``pid``'s entries up to raft ``upto``."""
        payloads: list[bytes] = []
        raft: list[int] = []
        for index, entry in self.history:
            if (
                index <= upto
                and entry.val_type == LogValType.app_log
                and decode_partition(entry.value)[0] == pid
            ):
                payloads.append(entry.value[PARTITION_HEADER_BYTES:])
                raft.append(index)
        return payloads, raft

    def make_entry(
        self, pid: int | None, payload: bytes, mode: str, next_indices: dict[int, int]
    ) -> tuple[LogEntry, bool]:
        """The entry to add and whether the store must accept it."""
        if pid is None:
            return LogEntry(term=self.term, value=payload, val_type=LogValType.conf), True
        expected = next_indices.get(pid, 1)
        if mode == "auto":
            index = 0
        elif mode == "explicit":
            index = expected
        else:  # a wrong explicit index: taken, a gap, or far off
            index = {"below": expected - 1, "gap": expected + 1, "far": expected + 50}[mode]
            if index == 0:
                index = expected + 2
        value = encode_entry(pid, payload, index)
        return LogEntry(term=self.term, value=value, timestamp_us=len(payload)), index in (
            0,
            expected,
        )

    # -- rules -------------------------------------------------------------------------

    entry_args = {
        "pid": st.one_of(st.none(), st.integers(0, PARTITIONS - 1)),
        "payload": payloads,
        "mode": st.sampled_from(["auto", "auto", "auto", "explicit", "below", "gap", "far"]),
    }

    @rule(**entry_args)
    def append(self, pid: int | None, payload: bytes, mode: str) -> None:
        entry, accepted = self.make_entry(pid, payload, mode, self.model_next_indices())
        if not accepted:
            before = (self.seg.next_slot(), self.seg.partition_next_indices())
            try:
                self.seg.append(entry)
            except PartitionError:
                pass
            else:
                raise AssertionError(f"append of a wrong partition index was accepted: {entry}")
            assert (self.seg.next_slot(), self.seg.partition_next_indices()) == before
            return
        index = self.seg.append(entry)
        assert index == self.memory.append(entry)
        self.history.append((index, entry))

    @rule()
    def end_of_append_batch(self) -> None:
        next_slot = self.seg.next_slot()
        self.seg.end_of_append_batch(self.batch_start, max(0, next_slot - self.batch_start))
        self.batch_start = next_slot

    @rule(data=st.data(), **entry_args)
    def write_at(self, data: st.DataObject, pid: int | None, payload: bytes, mode: str) -> None:
        start, next_slot = self.memory.start_index(), self.memory.next_slot()
        index = data.draw(st.integers(start, next_slot), label="index")
        self.term += 1
        kept = [(i, e) for i, e in self.history if i < index]
        entry, accepted = self.make_entry(pid, payload, mode, _next_indices(kept))
        if not accepted:
            return  # refused entries: test_write_at_with_a_bad_entry_changes_nothing
        self.seg.write_at(index, entry)
        self.memory.write_at(index, entry)
        self.history = [*kept, (index, entry)]

    @rule(data=st.data())
    def compact(self, data: st.DataObject) -> None:
        start, next_slot = self.memory.start_index(), self.memory.next_slot()
        last = data.draw(st.integers(max(0, start - 2), next_slot + 4), label="last_log_index")
        assert self.seg.compact(last) is True
        assert self.memory.compact(last) is True
        self.batch_start = max(self.batch_start, self.seg.start_index())

    @rule()
    def flush(self) -> None:
        assert self.seg.flush() is True
        assert self.seg.last_durable_index() >= self.seg.next_slot() - 1

    @rule(flush_first=st.booleans())
    def sync_partitions(self, flush_first: bool) -> None:
        """sync_partitions routes what is durable: the projection of the durable prefix."""
        if flush_first:
            self.seg.flush()
        self.seg.sync_partitions()
        durable = self.seg.last_durable_index()
        if flush_first:
            assert durable >= self.seg.next_slot() - 1
        for pid in range(PARTITIONS):
            payloads, raft = self.projection(pid, durable)
            with self.seg.partition_log(pid) as plog:
                first, end = plog.first_index, plog.next_index
                assert first == 1
                got = [bytes(v) for v in plog.entries(first, end)] if end > first else []
                got_raft = plog.raft_indices(first, end).tolist() if end > first else []
            assert got == payloads, pid
            assert got_raft == raft, pid

    @precondition(lambda self: self.store is not None)
    @rule()
    def reopen(self) -> None:
        self.seg.close()
        self.store = SegmentedLogStore.open(self.path, partitions=PARTITIONS)
        self.batch_start = self.seg.next_slot()

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def stores_agree(self) -> None:
        if self.store is None:
            return
        seg, memory = self.store, self.memory
        start, next_slot = memory.start_index(), memory.next_slot()
        assert seg.next_slot() == next_slot
        assert seg.start_index() == start
        assert seg.last_entry() == memory.last_entry()
        entries = memory.log_entries(start, next_slot)
        assert seg.log_entries(start, next_slot) == entries
        for index in range(max(0, start - 2), next_slot):
            assert seg.term_at(index) == memory.term_at(index), index
            assert seg.entry_at(index) == memory.entry_at(index), index
        assert seg.entry_at(next_slot) is None
        live = [entry for index, entry in self.history if index >= start]
        assert entries == live

    @invariant()
    def partition_indices_agree(self) -> None:
        if self.store is None:
            return
        got = {pid: n for pid, n in self.store.partition_next_indices().items() if n > 1}
        assert got == self.model_next_indices()

    def teardown(self) -> None:
        if self.store is not None:
            self.store.close()
        shutil.rmtree(self.directory, ignore_errors=True)


def _next_indices(history: list[tuple[int, LogEntry]]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for _, entry in history:
        if entry.val_type == LogValType.app_log:
            pid = decode_partition(entry.value)[0]
            counts[pid] = counts.get(pid, 0) + 1
    return {pid: count + 1 for pid, count in counts.items()}


SegmentedStoreMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
test_segmented_store_matches_model = SegmentedStoreMachine.TestCase

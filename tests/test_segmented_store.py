"""SegmentedLogStore: the LogStore conformance suite, partition routing, rollback into the
partitions, compaction, packs, parallel appending, restarts and bad input."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import segstore.raft.segmented_store as segmented_store_module
from segstore.aof import Aof
from segstore.checkpoints import CHECKPOINTS_NAME
from segstore.errors import (
    ClosedError,
    CorruptionError,
    FailedStateError,
    IndexOutOfRangeError,
    InvalidArgumentError,
    NotAStoreError,
    PartitionError,
    RecordTooLargeError,
    StorageIOError,
)
from segstore.partitions import PartitionLogStore
from segstore.raft import (
    NO_PARTITION,
    LogEntry,
    LogStore,
    LogValType,
    SegmentedLogStore,
    decode_partition,
    encode_entry,
    encode_pack,
)
from segstore.raft.partition_entry import PARTITION_HEADER_BYTES
from segstore.router import Router
from segstore.testing.conformance import DurableLogStoreConformance
from segstore.testing.faults import FaultyIO

PARTITIONS = 8


def open_store(path: Path | str, **kwargs: object) -> SegmentedLogStore:
    """A SegmentedLogStore with PARTITIONS partitions in ``path``."""
    return SegmentedLogStore.open(path, partitions=PARTITIONS, **kwargs)  # type: ignore[arg-type]


class TestSegmentedLogStore(DurableLogStoreConformance):
    """SegmentedLogStore passes the suite; app_log values carry a partition header."""

    def make_store(self, tmp_path: Path) -> LogStore:
        """A new store with 8 partitions in ``tmp_path``."""
        return open_store(tmp_path)

    def reopen_store(self, store: LogStore, tmp_path: Path) -> LogStore:
        """Close and reopen over the same directory."""
        store.close()
        return open_store(tmp_path)

    def entry(
        self,
        seed: int,
        term: int = 1,
        value_bytes: int | None = None,
        *,
        value: bytes | None = None,
        val_type: LogValType | None = None,
        timestamp_us: int | None = None,
    ) -> LogEntry:
        """The suite's entry, its app_log value behind a partition header (partition
        ``seed % 8``, index assigned by the store)."""
        base = super().entry(
            seed, term, value_bytes, value=value, val_type=val_type, timestamp_us=timestamp_us
        )
        if base.val_type != LogValType.app_log:
            return base
        return dataclasses.replace(base, value=encode_entry(seed % PARTITIONS, base.value))


# -- helpers ---------------------------------------------------------------------------

History = list[tuple[int, LogEntry]]
"""(raft index, entry) of every entry the partitions must hold, in raft index order:
compaction keeps them, write_at removes them."""


def app(pid: int, payload: bytes, index: int = 0, term: int = 1) -> LogEntry:
    """An app_log entry for partition ``pid`` (index 0: the store assigns it)."""
    return LogEntry(term=term, value=encode_entry(pid, payload, index), timestamp_us=len(payload))


def conf(payload: bytes, term: int = 1) -> LogEntry:
    """A conf entry: it belongs to no partition."""
    return LogEntry(term=term, value=payload, val_type=LogValType.conf)


def append(store: SegmentedLogStore, history: History, entry: LogEntry) -> int:
    """Append to the store and the history."""
    index = store.append(entry)
    history.append((index, entry))
    return index


def write_at(store: SegmentedLogStore, history: History, index: int, entry: LogEntry) -> None:
    """write_at on the store and the history."""
    store.write_at(index, entry)
    history[:] = [(i, e) for i, e in history if i < index]
    history.append((index, entry))


def fill(store: SegmentedLogStore, history: History, count: int, seed: int = 0) -> None:
    """Append ``count`` entries over every partition, a conf entry every seventh."""
    for k in range(seed, seed + count):
        if k % 7 == 3:
            append(store, history, conf(b"conf-%d" % k))
        else:
            append(store, history, app((k * 5) % PARTITIONS, b"payload-%d" % k * (k % 4)))


def projection(history: History, pid: int) -> tuple[list[bytes], list[int]]:
    """Payloads (value minus the partition header) and raft indices of ``pid``'s entries."""
    payloads: list[bytes] = []
    raft: list[int] = []
    for index, entry in history:
        if entry.val_type == LogValType.app_log and decode_partition(entry.value)[0] == pid:
            payloads.append(entry.value[PARTITION_HEADER_BYTES:])
            raft.append(index)
    return payloads, raft


def expected_next_indices(history: History) -> dict[int, int]:
    """Next partition index per partition that has entries."""
    result: dict[int, int] = {}
    for pid in range(PARTITIONS):
        payloads, _ = projection(history, pid)
        if payloads:
            result[pid] = len(payloads) + 1
    return result


def partition_contents(store: SegmentedLogStore, pid: int) -> tuple[int, list[bytes], list[int]]:
    """(first index, payloads, raft indices) of partition ``pid``'s log."""
    with store.partition_log(pid) as plog:
        first, end = plog.first_index, plog.next_index
        payloads = [bytes(view) for view in plog.entries(first, end)] if end > first else []
        raft = [int(r) for r in plog.raft_indices(first, end)] if end > first else []
    return first, payloads, raft


def assert_partitions_match(store: SegmentedLogStore, history: History) -> None:
    """After sync_partitions every partition log is the history's projection onto it,
    with partition indices 1, 2, ... and the log's header columns agree."""
    store.sync_partitions()
    for pid in range(PARTITIONS):
        payloads, raft = projection(history, pid)
        first, got_payloads, got_raft = partition_contents(store, pid)
        assert first == 1, pid
        assert got_payloads == payloads, pid
        assert got_raft == raft, pid
    nexts = store.partition_next_indices()
    assert {pid: n for pid, n in nexts.items() if n > 1} == expected_next_indices(history)
    # The log's header columns name each record's partition and assigned index.
    log = store._log
    assigned: dict[int, tuple[int, int]] = {}
    counts: dict[int, int] = {}
    for index, entry in history:
        if entry.val_type == LogValType.app_log:
            pid = decode_partition(entry.value)[0]
            counts[pid] = counts.get(pid, 0) + 1
            assigned[index] = (pid, counts[pid])
        else:
            assigned[index] = (NO_PARTITION, 0)
    low, high = log.first_index, log.last_index
    if high >= low:
        headers = log.headers(low, high + 1)
        for offset, index in enumerate(range(low, high + 1)):
            if index in assigned:
                pid, pindex = assigned[index]
                assert int(headers["partition_id"][offset]) == pid, index
                if pid != NO_PARTITION:
                    assert int(headers["partition_index"][offset]) == pindex, index


def assert_log_is(store: SegmentedLogStore, history: History, start: int) -> None:
    """The store holds exactly the history's entries from ``start``."""
    live = [(i, e) for i, e in history if i >= start]
    next_slot = live[-1][0] + 1 if live else start
    assert store.start_index() == start
    assert store.next_slot() == next_slot
    assert store.log_entries(start, next_slot) == [e for _, e in live]
    assert [i for i, _ in live] == list(range(start, next_slot))


def hold_routing(store: SegmentedLogStore, monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Make the router route nothing while the returned event is set (clear it to let
    routing resume): durable entries then stay unrouted."""
    real_route = store._router.route
    held = threading.Event()
    held.set()

    def route(upto: int) -> int:
        return 0 if held.is_set() else real_route(upto)

    monkeypatch.setattr(store._router, "route", route)
    return held


def snapshot(store: SegmentedLogStore) -> tuple[object, ...]:
    """Every observable of ``store`` (partitions synced first)."""
    store.sync_partitions()
    start, next_slot = store.start_index(), store.next_slot()
    return (
        start,
        next_slot,
        store.log_entries(start, next_slot),
        store.partition_next_indices(),
        [partition_contents(store, pid) for pid in range(PARTITIONS)],
    )


# -- routing and partition indices -------------------------------------------------------


def test_opening_creates_every_partition_log_before_any_write(tmp_path: Path) -> None:
    """Creating a partition log costs fsyncs that would compete with the log's writer,
    so open creates every missing one (including one lost before its first record)."""
    path = tmp_path / "s"
    with open_store(path) as store:
        assert sorted(os.listdir(path / "partitions"), key=int) == [
            str(pid) for pid in range(PARTITIONS)
        ]
        first = store.next_slot()
        store.append(LogEntry(1, encode_entry(0, b"x")))
        store.end_of_append_batch(first, 1)
    shutil.rmtree(path / "partitions" / str(PARTITIONS - 1))  # never written
    with open_store(path) as store:
        assert (path / "partitions" / str(PARTITIONS - 1)).is_dir()
        store.sync_partitions()
        assert partition_contents(store, 0) == (1, [b"x"], [first])


def test_open_makes_partition_directory_entries_durable(tmp_path: Path) -> None:
    """A process killed while creating partition logs leaves entries never fsync'd; the
    next open finds the logs and must make their entries durable before any checkpoint
    can name them."""
    path = tmp_path / "s"
    open_store(path).close()
    io = FaultyIO()
    with SegmentedLogStore.open(path, io=io):
        assert io.calls_by_path[("fsync_dir", str(path / "partitions"))] >= 1


def test_routing_projects_the_log_onto_partitions(tmp_path: Path) -> None:
    """After sync_partitions each partition log is the log's projection onto it."""
    history: History = []
    with open_store(tmp_path / "s") as store:
        for batch in range(4):
            first = store.next_slot()
            fill(store, history, 25, seed=batch * 25)
            store.end_of_append_batch(first, 25)
        assert_log_is(store, history, 1)
        assert_partitions_match(store, history)
        assert all(expected_next_indices(history).get(pid, 1) > 1 for pid in range(PARTITIONS))


def test_partition_index_assignment(tmp_path: Path) -> None:
    """Index 0 gets the next; an explicit index must be exactly the next, else
    PartitionError and nothing changes; values are stored verbatim."""
    history: History = []
    with open_store(tmp_path / "s") as store:
        append(store, history, app(2, b"a"))  # 2:1
        append(store, history, app(2, b"b", index=2))  # explicit, correct
        append(store, history, app(5, b"c", index=1))  # first of partition 5
        append(store, history, app(2, b"d"))  # 2:3
        before = (store.next_slot(), store.partition_next_indices(), store.log_entries(1, 5))
        assert before[1] == {2: 4, 5: 2}
        for bad in (
            app(2, b"x", index=2),  # taken
            app(2, b"x", index=5),  # a gap
            app(2, b"x", index=1),
            app(5, b"x", index=3),
            app(6, b"x", index=2),  # partition 6 has nothing yet
            app(7, b"x", index=2**64 - 1),
        ):
            with pytest.raises(PartitionError):
                store.append(bad)
            assert (
                store.next_slot(),
                store.partition_next_indices(),
                store.log_entries(1, 5),
            ) == before
        append(store, history, app(6, b"e", index=1))
        append(store, history, app(2, b"f", index=4))
        store.end_of_append_batch(1, 6)
        assert store.entry_at(1) == app(2, b"a")  # verbatim: index 0 in the value
        assert_partitions_match(store, history)


def test_append_returns_the_index_when_the_buffer_is_written_early(tmp_path: Path) -> None:
    """Without end_of_append_batch the buffer is written every PENDING_RECORDS_MAX
    entries; the append that triggers it still returns its own index (it returned
    last_index + 4096 past the records it had just written)."""
    from segstore.raft.segmented_store import PENDING_RECORDS_MAX

    history: History = []
    with open_store(tmp_path / "s") as store:
        count = 2 * PENDING_RECORDS_MAX + 3
        indices = [append(store, history, app(k % PARTITIONS, b"%d" % k)) for k in range(count)]
        assert indices == list(range(1, count + 1))
        assert store.next_slot() == count + 1
        assert store._log.last_index == 2 * PENDING_RECORDS_MAX  # two early writes
        store.flush()
        assert_log_is(store, history, 1)
        assert_partitions_match(store, history)


def test_append_after_a_failed_flush_raises_on_every_path(tmp_path: Path) -> None:
    """Once a flush failed, append raises FailedStateError for every kind of entry:
    the compiled appender must not keep buffering behind the failure."""
    io = FaultyIO()
    with open_store(tmp_path / "s", io=io) as store:
        store.append(app(0, b"a"))
        io.fail_fsync(str(tmp_path / "s" / "log"), times=None)
        with pytest.raises(StorageIOError):
            store.end_of_append_batch(1, 1)
        next_slot = store.next_slot()
        for entry in (app(1, b"b"), app(1, b"c", index=1), conf(b"c")):
            with pytest.raises(FailedStateError):
                store.append(entry)
        assert store.next_slot() == next_slot


def test_append_after_a_failed_write_raises_at_once(tmp_path: Path) -> None:
    """A failed write of the buffer fails the store stop: later appends raise instead
    of buffering entries that can never be written."""
    io = FaultyIO()
    with open_store(tmp_path / "s", io=io) as store:
        store.append(app(0, b"a"))
        io.fail("pwrite", str(tmp_path / "s" / "log"))
        with pytest.raises(StorageIOError):
            store.end_of_append_batch(1, 1)
        with pytest.raises(FailedStateError):
            store.append(app(0, b"b"))
        assert store.next_slot() == 2


def test_a_subclass_overriding_append_keeps_its_override(tmp_path: Path) -> None:
    """The compiled append is bound only when ``append`` is SegmentedLogStore's own."""
    seen: list[LogEntry] = []

    class CountingStore(SegmentedLogStore):
        def append(self, entry: LogEntry) -> int:
            seen.append(entry)
            return super().append(entry)

    with CountingStore.open(tmp_path / "s", partitions=PARTITIONS) as store:
        assert store.append(app(0, b"a")) == 1
        store.write_at(1, app(0, b"b"))
        assert seen == [app(0, b"a"), app(0, b"b")]
        assert store.entry_at(1) == app(0, b"b")


def test_a_patch_of_append_reaches_stores_opened_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[LogEntry] = []
    original = SegmentedLogStore.append

    def counting(self: SegmentedLogStore, entry: LogEntry) -> int:
        seen.append(entry)
        return original(self, entry)

    monkeypatch.setattr(SegmentedLogStore, "append", counting)
    with open_store(tmp_path / "s") as store:
        assert store.append(app(0, b"a")) == 1
    assert seen == [app(0, b"a")]


def test_append_after_close_raises_closed(tmp_path: Path) -> None:
    store = open_store(tmp_path / "s")
    store.append(app(0, b"a"))
    store.close()
    with pytest.raises(ClosedError):
        store.append(app(0, b"b"))


def test_append_takes_entries_of_a_log_entry_subclass(tmp_path: Path) -> None:
    """An entry that is not exactly a LogEntry takes the Python path, same result."""

    @dataclasses.dataclass(frozen=True, slots=True)
    class TaggedEntry(LogEntry):
        pass

    with open_store(tmp_path / "s") as store:
        assert store.append(app(3, b"a")) == 1
        assert store.append(TaggedEntry(1, encode_entry(3, b"b"))) == 2
        assert store.append(app(3, b"c")) == 3
        store.flush()
        assert [store.partition_of(i) for i in (1, 2, 3)] == [(3, 1), (3, 2), (3, 3)]
        assert store.entry_at(2) == LogEntry(1, encode_entry(3, b"b"))


def test_explicit_index_checks_match_across_buffer_writes(tmp_path: Path) -> None:
    """Explicit partition indices are checked against the next indices counting both
    written and buffered entries, before and after the buffer is written, and after a
    write_at into the buffer rewinds them."""
    history: History = []
    with open_store(tmp_path / "s") as store:
        append(store, history, app(3, b"a"))  # 3:1, buffered
        append(store, history, app(3, b"b", index=2))  # explicit, buffered
        with pytest.raises(PartitionError, match="next one is 3"):
            store.append(app(3, b"x", index=2))
        store.end_of_append_batch(1, 2)  # written
        with pytest.raises(PartitionError, match="next one is 3"):
            store.append(app(3, b"x", index=4))
        append(store, history, app(3, b"c", index=3))  # after the write
        append(store, history, app(3, b"d"))  # 3:4, buffered
        write_at(store, history, 4, app(3, b"e", index=4))  # replaces 3:4 in the buffer
        assert store.partition_next_indices() == {3: 5}
        with pytest.raises(PartitionError, match="next one is 5"):
            store.append(app(3, b"x", index=4))
        store.flush()
        assert store.partition_of(4) == (3, 4)
        assert_log_is(store, history, 1)
        assert_partitions_match(store, history)


def test_partition_index_at_the_u64_limit_is_checked_like_any(tmp_path: Path) -> None:
    """A partition whose next index is past what a u64 holds refuses every explicit
    index and cannot assign one; nothing changes (the compiled path defers such numbers
    to the Python twin)."""
    with open_store(tmp_path / "s") as store:
        store._rows.next_indices[1] = 2**64
        before = (store.next_slot(), store.partition_next_indices())
        for bad in (app(1, b"x", index=2**64 - 1), app(1, b"x", index=1)):
            with pytest.raises(PartitionError):
                store.append(bad)
        assert (store.next_slot(), store.partition_next_indices()) == before
        store._rows.next_indices[1] = 2**64 - 1
        assert store.append(app(1, b"last", index=2**64 - 1)) == 1
        assert store.partition_next_indices()[1] == 2**64
        assert store._pending_headers()[["partition_id", "partition_index"]].tolist() == [
            (1, 2**64 - 1)
        ]
        # (never written: no partition log can hold that index; the test's doing, not
        # the store's, so it drops the entry before close routes it)
        store.write_at(1, conf(b"c"))
        assert store.partition_next_indices()[1] == 2**64 - 1


def test_non_app_entries_belong_to_no_partition(tmp_path: Path) -> None:
    """conf, custom and cluster_server entries are never routed, even when their value
    looks like a partition header."""
    history: History = []
    with open_store(tmp_path / "s") as store:
        append(store, history, conf(encode_entry(1, b"looks routed")))
        append(store, history, LogEntry(term=1, value=b"", val_type=LogValType.custom))
        append(store, history, app(1, b"real"))
        append(
            store,
            history,
            LogEntry(term=1, value=encode_entry(1, b"x", 9), val_type=LogValType.cluster_server),
        )
        store.flush()
        headers = store._log.headers(1, 5)
        assert headers["partition_id"].tolist() == [NO_PARTITION, NO_PARTITION, 1, NO_PARTITION]
        assert_partitions_match(store, history)
        assert partition_contents(store, 1)[1:] == ([b"real"], [3])


def test_app_value_without_header_or_partition_is_refused(tmp_path: Path) -> None:
    """An app_log value with no (or a foreign) header, or a partition id >= partitions,
    raises PartitionError and changes nothing."""
    history: History = []
    with open_store(tmp_path / "s") as store:
        fill(store, history, 10)
        store.flush()
        before = snapshot(store)
        good_header = encode_entry(1, b"")
        for value in (
            b"",
            b"short",
            b"\x00" * 16,
            b"XX" + good_header[2:] + b"payload",  # wrong magic
            good_header[:2] + b"\x02" + good_header[3:],  # unknown header version
            good_header[:3] + b"\x01" + good_header[4:],  # flags set
            encode_entry(PARTITIONS, b"p"),
            encode_entry(1000, b"p"),
            good_header[:4] + NO_PARTITION.to_bytes(4, "little") + good_header[8:],
        ):
            with pytest.raises(PartitionError):
                store.append(LogEntry(term=1, value=value))
            assert snapshot(store) == before, value


# -- write_at reaches the partitions (invariant 3) -----------------------------------------


def test_write_at_rolls_back_routed_partition_records(tmp_path: Path) -> None:
    """write_at(i) removes partition records with raft index >= i and rewinds the
    partitions' next index; later appends continue from there; reopening keeps it."""
    history: History = []
    store = open_store(tmp_path / "s")
    fill(store, history, 40)
    store.flush()
    assert_partitions_match(store, history)
    pid = decode_partition(history[20][1].value)[0]
    # An explicit index that is the next one *after* the rollback is accepted.
    rewound = len(projection([(i, e) for i, e in history if i < 12], pid)[0]) + 1
    write_at(store, history, 12, app(pid, b"new-12", index=rewound, term=2))
    assert store.partition_next_indices().get(pid) == rewound + 1
    fill(store, history, 9, seed=100)
    store.flush()
    assert_log_is(store, history, 1)
    assert_partitions_match(store, history)
    store.close()
    with open_store(tmp_path / "s") as again:
        assert_log_is(again, history, 1)
        assert_partitions_match(again, history)


def _buffered_rollback(store: SegmentedLogStore, history: History) -> None:
    fill(store, history, 20, seed=10)  # buffered
    assert store._log.last_index == 10
    write_at(store, history, 15, app(3, b"w15", term=2))
    assert store.partition_next_indices() == expected_next_indices(history)
    write_at(store, history, 16, conf(b"c16", term=2))
    write_at(store, history, 11, app(4, b"w11", term=3))
    assert store.partition_next_indices() == expected_next_indices(history)
    fill(store, history, 5, seed=50)
    assert store.partition_next_indices() == expected_next_indices(history)
    store.end_of_append_batch(11, 6)


def test_write_at_rolls_back_buffered_entries(tmp_path: Path) -> None:
    """write_at inside entries still buffered (no end_of_append_batch yet) rewinds the
    partition indices they took; everything before them was routed."""
    history: History = []
    with open_store(tmp_path / "s") as store:
        fill(store, history, 10)
        store.end_of_append_batch(1, 10)
        store.sync_partitions()
        _buffered_rollback(store, history)
        assert_log_is(store, history, 1)
        assert_partitions_match(store, history)


def test_write_at_rolls_back_buffered_entries_after_unrouted_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, but the durable entries before the buffer are not routed yet: the
    buffered entries' indices (newer) must win over the durable ones'."""
    history: History = []
    with open_store(tmp_path / "s") as store:
        held = hold_routing(store, monkeypatch)
        fill(store, history, 10)
        store.end_of_append_batch(1, 10)
        assert store._router.routed_raft_index == 0
        _buffered_rollback(store, history)
        held.clear()
        assert_log_is(store, history, 1)
        assert_partitions_match(store, history)


def test_write_at_rolls_back_durable_unrouted_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """write_at inside entries that are durable but not yet routed rewinds their
    partitions' next index too (their indices were taken in the log's headers)."""
    history: History = []
    with open_store(tmp_path / "s") as store:
        fill(store, history, 12)
        store.flush()
        store.sync_partitions()
        held = hold_routing(store, monkeypatch)
        fill(store, history, 20, seed=12)
        store.flush()
        assert store._router.routed_raft_index == 12
        assert store.partition_next_indices() == expected_next_indices(history)
        write_at(store, history, 20, app(5, b"w20", term=2))
        assert store.partition_next_indices() == expected_next_indices(history)
        nexts = expected_next_indices(history)
        # The rewound next index is the one an explicit entry must carry.
        write_at(store, history, 21, app(1, b"w21", index=nexts.get(1, 1), term=2))
        with pytest.raises(PartitionError):
            store.append(app(1, b"x", index=nexts.get(1, 1)))
        store.flush()
        held.clear()
        assert_log_is(store, history, 1)
        assert_partitions_match(store, history)


def test_write_at_with_a_bad_entry_changes_nothing(tmp_path: Path) -> None:
    """write_at with an entry the store refuses (no header, unknown partition, wrong
    explicit index) raises PartitionError before it truncates anything."""
    history: History = []
    with open_store(tmp_path / "s") as store:
        fill(store, history, 20)
        store.flush()
        fill(store, history, 5, seed=20)  # some buffered too
        before = snapshot(store)
        for index in (8, 23):
            for bad in (
                LogEntry(term=2, value=b"no header"),
                app(PARTITIONS, b"x", term=2),
                app(1, b"x", index=99, term=2),
            ):
                with pytest.raises(PartitionError):
                    store.write_at(index, bad)
                assert snapshot(store) == before, (index, bad)


def test_apply_pack_with_a_bad_entry_changes_nothing(tmp_path: Path) -> None:
    """A pack holding an entry the store refuses raises PartitionError and applies
    nothing (the contract: every check before any change)."""
    history: History = []
    with open_store(tmp_path / "s") as store:
        fill(store, history, 20)
        store.flush()
        before = snapshot(store)
        pack = encode_pack([app(1, b"ok", term=2), LogEntry(term=2, value=b"no header")])
        with pytest.raises(PartitionError):
            store.apply_pack(6, pack)
        assert snapshot(store) == before


# -- compaction ---------------------------------------------------------------------------


def test_compact_moves_start_at_once_and_partitions_keep_records(tmp_path: Path) -> None:
    """compact(L): start L+1 on return, reads below return None / term 0, partitions
    keep every record; compact past the tail moves next_slot and appends continue."""
    history: History = []
    with open_store(tmp_path / "s") as store:
        fill(store, history, 30)
        assert store.compact(10) is True  # some entries still buffered
        assert store.start_index() == 11
        assert store.entry_at(10) is None
        assert store.term_at(10) == 0
        assert store.term_at(1) == 0
        assert store.log_entries(10, 12) is None
        assert store.log_entries_ext(5, 12, 0) is None
        store.flush()
        assert_log_is(store, history, 11)
        assert_partitions_match(store, history)
        assert store.compact(50) is True
        assert store.start_index() == 51
        assert store.next_slot() == 51
        assert store.last_entry().term == 0
        assert store.entry_at(30) is None
        assert store.term_at(50) == 0
        fill(store, history, 10, seed=30)
        assert history[-10][0] == 51
        store.flush()
        assert_log_is(store, history, 51)
        assert_partitions_match(store, history)
        store.close()
        with open_store(tmp_path / "s") as again:
            assert_log_is(again, history, 51)
            assert_partitions_match(again, history)


def test_compact_at_the_tail_keeps_what_retention_holds_need(tmp_path: Path) -> None:
    """compact(L) with L the last index (a snapshot at the last entry) moves start and
    keeps next_slot, and, like any compact, keeps the records a retention hold still
    needs (invariant 6); it used to empty the log as if L were past the tail."""
    history: History = []
    with open_store(tmp_path / "s", segment_bytes=4096) as store:
        fill(store, history, 200)
        store.flush()
        store.sync_partitions()
        store.add_retention(lambda: 40)
        assert store.compact(200) is True
        assert store.start_index() == 201
        assert store.next_slot() == 201
        assert store.entry_at(200) is None and store.log_entries(200, 201) is None
        assert store.first_retained_index() <= 40
        headers, values = store.read_records(40, 201)
        assert values == [entry.value for index, entry in history if index >= 40]
        assert len(headers) == 161
        fill(store, history, 5, seed=200)
        assert history[-5][0] == 201
        store.flush()
        assert_log_is(store, history, 201)
        assert_partitions_match(store, history)
        store.close()
        with open_store(tmp_path / "s") as again:
            assert again.start_index() == 201
            assert_log_is(again, history, 201)


def test_physical_truncation_keeps_what_partitions_need(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """compact never removes log records a partition still needs (invariant 6): with
    routing held nothing is cut; after sync_partitions the log is cut at start."""
    history: History = []
    with open_store(tmp_path / "s", segment_bytes=4096) as store:
        held = hold_routing(store, monkeypatch)
        fill(store, history, 200)
        store.flush()
        store.compact(150)
        assert store.start_index() == 151
        assert store._log.first_index == 1  # nothing was routed: everything is needed
        assert store._router.required_raft_index() == 1
        held.clear()
        assert_partitions_match(store, history)
        assert store._log.first_index == 151
        assert_log_is(store, history, 151)


def test_write_at_after_compact_past_tail(tmp_path: Path) -> None:
    """write_at right after a compact past the tail (the log restarts at L+1)."""
    history: History = []
    with open_store(tmp_path / "s") as store:
        fill(store, history, 5)
        store.compact(20)
        write_at(store, history, 21, app(1, b"w21"))
        assert_log_is(store, history, 21)
        fill(store, history, 4, seed=5)
        write_at(store, history, 23, app(2, b"w23", term=2))
        store.flush()
        assert_log_is(store, history, 21)
        assert_partitions_match(store, history)


# -- packs --------------------------------------------------------------------------------


def test_pack_between_stores_gives_identical_stores(tmp_path: Path) -> None:
    """apply_pack of a whole log, and of a tail over a shorter copy, leaves the two
    stores identical: entries and partition projections."""
    history: History = []
    with (
        open_store(tmp_path / "source") as source,
        open_store(tmp_path / "whole") as whole,
        open_store(tmp_path / "tail") as tail,
    ):
        fill(source, history, 60)
        source.flush()
        whole.apply_pack(1, source.pack(1, 60))
        tail.apply_pack(1, source.pack(1, 30))
        tail.append(app(3, b"diverged"))
        tail.append(app(4, b"diverged"))
        tail.flush()
        tail.apply_pack(25, source.pack(25, 36))
        for target in (whole, tail):
            assert snapshot(target) == snapshot(source)
            assert_log_is(target, history, 1)
            assert_partitions_match(target, history)


# -- parallel appending -------------------------------------------------------------------


def test_parallel_mode_notifies_when_durable_advances(tmp_path: Path) -> None:
    """parallel=True: end_of_append_batch does not wait for the sync; the callback gets
    True as the durable index advances; last_durable_index never goes down."""
    calls: list[bool] = []
    changed = threading.Condition()

    def notify(ok: bool) -> None:
        with changed:
            calls.append(ok)
            changed.notify_all()

    history: History = []
    store = open_store(tmp_path / "s", parallel=True, notify_log_append_completion=notify)
    main = threading.get_ident()
    real_sync = store._log.sync
    synced_by_caller: list[int] = []

    def sync() -> int:
        if threading.get_ident() == main:
            synced_by_caller.append(1)
        return real_sync()

    try:
        store._log.sync = sync  # type: ignore[method-assign]
        seen = 0
        for batch in range(5):
            first = store.next_slot()
            fill(store, history, 20, seed=batch * 20)
            calls_before = len(calls)
            store.end_of_append_batch(first, 20)
            assert not synced_by_caller, "end_of_append_batch waited for a sync"
            deadline = time.monotonic() + 10
            with changed:
                while store.last_durable_index() < first + 19 or len(calls) == calls_before:
                    remaining = deadline - time.monotonic()
                    assert remaining > 0, "the durable index never reached the batch"
                    changed.wait(remaining)
            durable = store.last_durable_index()
            assert seen <= durable <= store.next_slot() - 1
            seen = durable
        assert calls and all(calls)
        assert_partitions_match(store, history)
    finally:
        store.close()
    with open_store(tmp_path / "s") as again:
        assert_log_is(again, history, 1)
        assert_partitions_match(again, history)


class _HeldFlushes:
    """A parallel store whose flushes wait at a gate, and whose log writes are recorded
    as (thread name, record count)."""

    def __init__(self, store: SegmentedLogStore) -> None:
        self.store = store
        self.gate = threading.Event()
        self.in_flush = threading.Event()
        self.writes: list[tuple[str, int]] = []
        commit = store._log._commit
        real_flush, real_append_batch = commit._flush, store._log.append_batch

        def flush() -> int:
            self.in_flush.set()
            assert self.gate.wait(30), "the test never opened the gate"
            return real_flush()

        def append_batch(payloads: list[bytes], headers: object = None) -> int:
            self.writes.append((threading.current_thread().name, len(payloads)))
            return real_append_batch(payloads, headers)

        commit._flush = flush  # type: ignore[method-assign]
        store._log.append_batch = append_batch  # type: ignore[method-assign]

    def wait_durable(self, index: int) -> None:
        deadline = time.monotonic() + 30
        while self.store.last_durable_index() < index:
            assert time.monotonic() < deadline, f"index {index} never became durable"
            time.sleep(0.001)


def _defer_three_batches(store: SegmentedLogStore, held: _HeldFlushes, history: History) -> None:
    """One batch written at once (no flush in flight), then three ended while its flush
    is held: they stay buffered, and reads see them."""
    fill(store, history, 10)
    store.end_of_append_batch(1, 10)
    assert held.writes == [("MainThread", 10)]
    assert held.in_flush.wait(30)  # the flusher is inside the flush of 1..10
    for batch in range(3):
        first = store.next_slot()
        fill(store, history, 7, seed=10 + 7 * batch)
        store.end_of_append_batch(first, 7)
    assert held.writes == [("MainThread", 10)]
    assert store._log.last_index == 10 and store.next_slot() == 32
    assert store.log_entries(1, 32) == [entry for _, entry in history]
    assert store.entry_at(31) == history[-1][1]


def test_parallel_mode_writes_batches_ended_during_a_flush_together(tmp_path: Path) -> None:
    """parallel=True: batches ended while a flush is in flight are written in one write
    when it ends (by the flushing thread, from the durability callback), and reported
    durable by the callback like any other."""
    calls: list[bool] = []
    history: History = []
    store = open_store(tmp_path / "s", parallel=True, notify_log_append_completion=calls.append)
    held = _HeldFlushes(store)
    try:
        _defer_three_batches(store, held, history)
        held.gate.set()
        held.wait_durable(31)
        assert held.writes == [("MainThread", 10), ("segstore-flusher", 21)]
        assert calls and all(calls)
        assert store.log_entries(1, 32) == [entry for _, entry in history]
        assert_partitions_match(store, history)
    finally:
        held.gate.set()
        store.close()
    with open_store(tmp_path / "s") as again:
        assert_log_is(again, history, 1)
        assert_partitions_match(again, history)


def test_parallel_mode_deferred_write_waits_for_a_busy_store_lock(tmp_path: Path) -> None:
    """When the flush ends while another thread holds the store lock (it may be waiting
    for that very flush), the callback does not wait: the deferred batches are written
    by the store's writer thread once the lock is free, then made durable."""
    history: History = []
    store = open_store(tmp_path / "s", parallel=True)
    held = _HeldFlushes(store)
    try:
        _defer_three_batches(store, held, history)
        with store._lock:
            held.gate.set()
            held.wait_durable(10)  # the flush of 1..10 ended, its callback ran
            assert held.writes == [("MainThread", 10)]
            assert store._log.last_index == 10
        held.wait_durable(31)
        assert held.writes == [("MainThread", 10), ("segstore-writer", 21)]
        assert_partitions_match(store, history)
    finally:
        held.gate.set()
        store.close()


def test_parallel_mode_batch_ended_as_the_flush_ends_is_written(tmp_path: Path) -> None:
    """A flush that ends after end_of_append_batch saw it in flight but before the
    batch was marked deferred must not strand the batch: it was left unwritten, never
    reported durable, until the next batch."""

    class FlushEndsOnRead:
        """The log, except that reading durable_index first lets the flush finish."""

        def __init__(self, log: Aof) -> None:
            self.log, self.armed = log, False

        def __getattr__(self, name: str) -> object:
            return getattr(self.log, name)

        @property
        def durable_index(self) -> int:
            value = self.log.durable_index
            if self.armed and value < self.log.last_index:
                self.armed = False
                flush = threading.Thread(target=self.log.sync)
                flush.start()
                flush.join()
            return value

    notified: list[bool] = []
    store = open_store(tmp_path / "s", parallel=True, notify_log_append_completion=notified.append)
    log = store._log
    store._log = proxy = FlushEndsOnRead(log)  # type: ignore[assignment]
    try:
        store.append(app(0, b"a"))
        store.end_of_append_batch(1, 1)  # written; its flush may still be to come
        store.append(app(0, b"b"))
        proxy.armed = True
        store.end_of_append_batch(2, 1)
        deadline = time.monotonic() + 10
        while store.last_durable_index() < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert store.last_durable_index() == 2
        assert notified and all(notified)
    finally:
        store._log = log
        store.close()


def test_parallel_mode_write_at_into_deferred_batches(tmp_path: Path) -> None:
    """write_at into deferred, still-buffered batches replaces them; what is written
    when the flush ends is the log after the write_at, nothing more."""
    history: History = []
    store = open_store(tmp_path / "s", parallel=True)
    held = _HeldFlushes(store)
    try:
        _defer_three_batches(store, held, history)
        write_at(store, history, 20, app(5, b"replaced", term=2))
        store.end_of_append_batch(20, 1)
        held.gate.set()
        held.wait_durable(20)
        assert [count for _, count in held.writes] == [10, 10]
        assert store.next_slot() == 21
        assert store.log_entries(1, 21) == [entry for _, entry in history]
        assert_partitions_match(store, history)
    finally:
        held.gate.set()
        store.close()
    with open_store(tmp_path / "s") as again:
        assert_log_is(again, history, 1)


# -- restarts and bad input ---------------------------------------------------------------


def test_reopen_keeps_entries_partitions_and_indices(tmp_path: Path) -> None:
    """Entries, start, partition logs and next partition indices survive reopening;
    explicit indices continue from there."""
    history: History = []
    store = open_store(tmp_path / "s")
    fill(store, history, 50)
    store.compact(20)
    write_at(store, history, 45, app(6, b"w45", term=2))
    store.flush()
    before = snapshot(store)
    store.close()
    with open_store(tmp_path / "s") as again:
        assert snapshot(again) == before
        assert again.partition_next_indices() == expected_next_indices(history)
        nexts = expected_next_indices(history)
        append(again, history, app(6, b"after", index=nexts[6]))
        again.flush()
        assert_log_is(again, history, 21)
        assert_partitions_match(again, history)


def test_bad_input_raises_and_leaves_data_intact(tmp_path: Path) -> None:
    """Bad indices, packs and types raise segstore errors; nothing changes, also after
    reopening."""
    history: History = []
    store = open_store(tmp_path / "s")
    fill(store, history, 30)
    store.compact(5)
    store.flush()
    before = snapshot(store)
    good = app(1, b"good")
    pack = store.pack(10, 5)
    damaged = bytearray(pack)
    damaged[len(damaged) // 2] ^= 0x10
    cases: list[tuple[type[Exception], Callable[[], object]]] = [
        (IndexOutOfRangeError, lambda: store.write_at(5, good)),
        (IndexOutOfRangeError, lambda: store.write_at(1, good)),
        (IndexOutOfRangeError, lambda: store.write_at(32, good)),
        (IndexOutOfRangeError, lambda: store.apply_pack(5, pack)),
        (IndexOutOfRangeError, lambda: store.apply_pack(40, pack)),
        (IndexOutOfRangeError, lambda: store.pack(3, 4)),
        (CorruptionError, lambda: store.apply_pack(10, bytes(damaged))),
        (CorruptionError, lambda: store.apply_pack(10, pack[:-3])),
        (CorruptionError, lambda: store.apply_pack(10, b"garbage")),
        (InvalidArgumentError, lambda: store.append(good.value)),  # type: ignore[arg-type]
        (InvalidArgumentError, lambda: store.write_at("10", good)),  # type: ignore[arg-type]
        (InvalidArgumentError, lambda: store.write_at(10, None)),  # type: ignore[arg-type]
        (InvalidArgumentError, lambda: store.write_at(True, good)),  # type: ignore[arg-type]
        (InvalidArgumentError, lambda: store.apply_pack(10, 123)),  # type: ignore[arg-type]
        (InvalidArgumentError, lambda: store.compact(-1)),
        (InvalidArgumentError, lambda: store.compact(1.5)),  # type: ignore[arg-type]
        (InvalidArgumentError, lambda: store.end_of_append_batch("1", 2)),  # type: ignore[arg-type]
        (InvalidArgumentError, lambda: store.log_entries(None, 3)),  # type: ignore[arg-type]
        (InvalidArgumentError, lambda: store.set_notify_log_append_completion(5)),  # type: ignore[arg-type]
    ]
    for position, (error, call) in enumerate(cases):
        with pytest.raises(error):
            call()
        assert snapshot(store) == before, f"bad call #{position} changed the store"
    for pid in (-1, PARTITIONS * 10**10, "1"):
        with pytest.raises(InvalidArgumentError), store.partition_log(pid):  # type: ignore[arg-type]
            pass
    store.close()
    with pytest.raises(InvalidArgumentError):
        open_store_with(tmp_path / "s", partitions=PARTITIONS + 1)
    with pytest.raises(InvalidArgumentError):
        open_store_with(tmp_path / "s", partitions=0)
    with open_store(tmp_path / "s") as again:
        assert snapshot(again) == before


def open_store_with(path: Path, partitions: int) -> None:
    """Open with another partition count (expected to fail), closing it if it opens."""
    SegmentedLogStore.open(path, partitions=partitions).close()


def test_oversized_app_value_is_refused_or_routed(tmp_path: Path) -> None:
    """An app_log value the log accepts must also fit the partition logs: a store must
    either refuse it at append (RecordTooLargeError, nothing changed) or store, route
    and reopen with it. Accepting it and then failing to route bricks the store."""
    big = app(1, bytes(range(256)) * 4096)  # 1 MiB payload: fits the log's segments
    store = open_store(tmp_path / "s")
    history: History = []
    fill(store, history, 3)
    with contextlib.suppress(RecordTooLargeError):
        append(store, history, big)
    store.flush()
    store.close()
    with open_store(tmp_path / "s") as again:
        assert_log_is(again, history, 1)
        assert_partitions_match(again, history)


def test_foreign_directory_is_not_a_store(tmp_path: Path) -> None:
    """A directory holding foreign files is refused and left alone."""
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_bytes(b"mine")
    with pytest.raises(NotAStoreError):
        open_store(foreign)
    assert sorted(os.listdir(foreign)) == ["notes.txt"]
    assert (foreign / "notes.txt").read_bytes() == b"mine"


def test_checkpoints_of_another_store_are_refused(tmp_path: Path) -> None:
    """A checkpoints.lmdb copied from another store's directory raises NotAStoreError."""
    history: History = []
    for name in ("a", "b"):
        with open_store(tmp_path / name) as store:
            fill(store, history, 10)
            store.flush()
    shutil.rmtree(tmp_path / "b" / CHECKPOINTS_NAME)
    shutil.copytree(tmp_path / "a" / CHECKPOINTS_NAME, tmp_path / "b" / CHECKPOINTS_NAME)
    with pytest.raises(NotAStoreError):
        open_store(tmp_path / "b")
    with open_store(tmp_path / "a") as a:  # the source is unharmed
        assert a.next_slot() == 11


def test_install_snapshot_restarts_partitions_at_the_snapshot(tmp_path: Path) -> None:
    """A follower behind a snapshot: its log goes, every partition log restarts at the
    snapshot's applied index + 1, and entries after it get the leader's indices, also
    after a reopen (the router checkpoints the restart)."""
    path = tmp_path / "store"
    with SegmentedLogStore.open(path, partitions=3) as store:
        for k in range(10):  # partition 0 gets 4 entries, 1 and 2 three each
            store.append(app(k % 3, b"old%d" % k))
        store.end_of_append_batch(1, 10)
        store.sync_partitions()
        store.install_snapshot(40, {0: 21, 1: 8})
        assert store.start_index() == store.next_slot() == 41
        assert store.entry_at(10) is None
        assert store.partition_next_indices() == {0: 21, 1: 8}
        store.append(app(0, b"new0"))
        store.append(app(2, b"new2"))
        store.end_of_append_batch(41, 2)
        assert store.partition_of(41) == (0, 21)
        assert store.partition_of(42) == (2, 1)  # no applied state: starts over at 1
        store.sync_partitions()
        with store.partition_log(0) as plog:
            assert (plog.first_index, plog.next_index) == (21, 22)
            assert bytes(plog.read(21)) == b"new0" and plog.raft_index(21) == 41
        with store.partition_log(1) as plog:
            assert (plog.first_index, plog.next_index) == (8, 8)
    with SegmentedLogStore.open(path) as store:
        assert store.partition_next_indices() == {0: 22, 1: 8, 2: 2}
        store.append(app(1, b"after reopen"))
        store.end_of_append_batch(43, 1)
        assert store.partition_of(43) == (1, 8)
        store.sync_partitions()
        with store.partition_log(1) as plog:
            assert bytes(plog.read(8)) == b"after reopen"


def test_install_snapshot_cuts_entries_after_the_snapshot(tmp_path: Path) -> None:
    with SegmentedLogStore.open(tmp_path / "store", partitions=2) as store:
        for k in range(6):
            store.append(app(k % 2, b"e%d" % k))
        store.end_of_append_batch(1, 6)
        store.install_snapshot(4, {0: 3, 1: 3})
        assert store.next_slot() == 5 and store.entry_at(5) is None
        store.append(app(1, b"x"))
        store.end_of_append_batch(5, 1)
        assert store.partition_of(5) == (1, 3)
        with pytest.raises(InvalidArgumentError):
            store.install_snapshot(9, {2: 1})  # no partition 2


def test_an_idle_router_still_checkpoints_what_it_routed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records routed just before the writes stop are checkpointed on the router's
    timer, not at the next write (which may never come): an idle store must not hold
    its log and the truncation watermark back."""
    monkeypatch.setattr(segmented_store_module, "CHECKPOINT_INTERVAL_S", 0.5)
    with SegmentedLogStore.open(tmp_path / "store", partitions=2) as store:
        for k in range(10):
            store.append(app(k % 2, b"v%d" % k))
        store.end_of_append_batch(1, 10)  # routed ~0.1 s later, before the interval
        deadline = time.monotonic() + 10
        while store.checkpoints.routed_raft_index() < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.checkpoints.routed_raft_index() == 10
        assert store.required_raft_indices() == (11, {})


def test_install_snapshot_cut_short_is_finished_at_the_next_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash after the checkpoint transaction and before every partition log was
    restarted: the reopened store finishes the restart from the marker instead of
    keeping stale records or calling the store corrupt."""
    path = tmp_path / "store"
    store = SegmentedLogStore.open(path, partitions=3)
    for k in range(9):
        store.append(app(k % 3, b"old%d" % k))
    store.end_of_append_batch(1, 9)
    store.sync_partitions()
    real_restart = PartitionLogStore.restart_at
    calls: list[int] = []

    def crash_on_second(self: PartitionLogStore, index: int, raft: int) -> None:
        calls.append(self.partition_id)
        if len(calls) == 2:
            raise OSError(5, "injected crash")
        real_restart(self, index, raft)

    monkeypatch.setattr(PartitionLogStore, "restart_at", crash_on_second)
    with pytest.raises(OSError, match="injected crash"):
        store.install_snapshot(30, {0: 11, 1: 6, 2: 4})
    with pytest.raises(FailedStateError):
        store.append(app(0, b"refused"))
    monkeypatch.setattr(PartitionLogStore, "restart_at", real_restart)
    with contextlib.suppress(Exception):
        store.close()
    with SegmentedLogStore.open(path) as store:
        assert store.checkpoints.restart_pending() == 0
        assert store.partition_next_indices() == {0: 11, 1: 6, 2: 4}
        for pid, first in ((0, 11), (1, 6), (2, 4)):
            with store.partition_log(pid) as plog:
                assert (plog.first_index, plog.next_index) == (first, first)
        start = store.next_slot()
        store.append(app(1, b"new"))
        store.end_of_append_batch(start, 1)
        assert store.partition_of(start) == (1, 6)
        store.sync_partitions()
        with store.partition_log(1) as plog:
            assert bytes(plog.read(6)) == b"new"


def test_install_snapshot_cut_short_before_a_partition_log_existed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The snapshot names partitions this store never had: a crash right after the
    checkpoint transaction must not make the next open call the store corrupt for
    their missing logs; the open creates and restarts them."""
    path = tmp_path / "store"
    store = SegmentedLogStore.open(path, partitions=3)
    store.append(app(0, b"only partition 0"))
    store.end_of_append_batch(1, 1)
    store.sync_partitions()

    def crash(self: object) -> None:
        raise OSError(5, "injected crash")

    monkeypatch.setattr(Router, "restart_partitions", crash)
    with pytest.raises(OSError, match="injected crash"):
        store.install_snapshot(30, {0: 11, 1: 6, 2: 4})
    monkeypatch.undo()
    with contextlib.suppress(Exception):
        store.close()
    with SegmentedLogStore.open(path) as store:
        assert store.partition_next_indices() == {0: 11, 1: 6, 2: 4}
        assert store.start_index() == store.next_slot() == 31
        with store.partition_log(2) as plog:
            assert (plog.first_index, plog.next_index) == (4, 4)


def test_compact_past_the_tail_is_refused_while_a_hold_needs_entries(tmp_path: Path) -> None:
    """Emptying the log would lose entries a retention hold (a state machine's
    applied floor, a quorum) still needs: refused, nothing changed."""
    with SegmentedLogStore.open(tmp_path / "store", partitions=2) as store:
        for k in range(5):
            store.append(app(k % 2, b"v%d" % k))
        store.end_of_append_batch(1, 5)
        needed = [1]
        store.add_retention(lambda: needed[0])
        with pytest.raises(InvalidArgumentError, match="still needed"):
            store.compact(9)
        assert (store.start_index(), store.next_slot()) == (1, 6)
        assert store.entry_at(1) is not None
        needed[0] = 6  # everything applied and acknowledged
        assert store.compact(9)
        assert store.start_index() == store.next_slot() == 10


def test_compact_past_the_tail_interrupted_before_its_metadata(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The records are dropped before start_index is written: a crash in between
    reopens at L + 1 with next_slot == start_index, never with start_index past
    next_slot (which would write the next entry into a hole)."""
    path = tmp_path / "store"
    store = SegmentedLogStore.open(path, partitions=2)
    for k in range(5):
        store.append(app(k % 2, b"v%d" % k))
    store.end_of_append_batch(1, 5)

    def crash(self: object, user: object) -> None:
        raise OSError(5, "injected crash")

    monkeypatch.setattr(Aof, "set_user_meta", crash)
    with pytest.raises(OSError, match="injected crash"):
        store.compact(19)
    monkeypatch.undo()
    with contextlib.suppress(Exception):
        store.close()
    with SegmentedLogStore.open(path) as store:
        assert store.start_index() == store.next_slot() == 20
        store.append(app(0, b"after"))
        store.end_of_append_batch(20, 1)
        assert store.entry_at(20) is not None and store.partition_of(20) == (0, 4)


def test_an_oversize_value_is_refused_at_append_and_blocks_nothing(tmp_path: Path) -> None:
    with SegmentedLogStore.open(
        tmp_path / "store", partitions=2, segment_bytes=1 << 20, parallel=True
    ) as store:
        store.append(app(0, b"fits"))
        with pytest.raises(RecordTooLargeError):
            store.append(app(1, b"x" * (2 << 20)))
        with pytest.raises(RecordTooLargeError):
            store.write_at(1, app(1, b"x" * (2 << 20)))
        store.append(app(1, b"fits too"))
        store.end_of_append_batch(1, 2)
        assert store.flush()
        assert [e.value for e in store.log_entries(1, 3) or []] == [
            app(0, b"fits").value,
            app(1, b"fits too").value,
        ]

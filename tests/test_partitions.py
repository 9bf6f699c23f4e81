"""PartitionLogStore and PartitionLogs: per-partition Aofs fed from the segmented log."""

from __future__ import annotations

import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segstore.errors import (
    ClosedError,
    IndexOutOfRangeError,
    InvalidArgumentError,
    NotAStoreError,
    PartitionError,
    StorageIOError,
)
from segstore.partitions import (
    PARTITIONS_DIR,
    PartitionLogs,
    PartitionLogStore,
    partition_directory,
)
from segstore.testing.faults import FaultyIO

SMALL_SEGMENT = 4096  # the Aof minimum: forces many segments with few records


def payload(raft_index: int) -> bytes:
    return b"entry-%d" % raft_index


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / PARTITIONS_DIR


@pytest.fixture
def log(root: Path) -> Any:
    with PartitionLogStore.open(root, 7, segment_bytes=SMALL_SEGMENT) as store:
        yield store


def fill(log: PartitionLogStore, rafts: list[int]) -> None:
    log.append_batch(log.next_index, [payload(r) for r in rafts], rafts)


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def disk_bytes(path: Path) -> int:
    total = 0
    for dirpath, _, names in os.walk(path):
        for name in names:
            total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


# -- PartitionLogStore --------------------------------------------------------------


def test_append_and_read(log: PartitionLogStore, root: Path) -> None:
    assert (log.first_index, log.next_index, log.last_index, len(log)) == (1, 1, 0, 0)
    assert log.last_raft_index == 0
    assert log.path == partition_directory(root, 7) == str(root / "7")
    assert log.append_batch(1, [b"a", b"bb"], [3, 5]) == 2
    assert log.append_batch(3, [b"", bytearray(b"ccc")], np.array([9, 10], np.uint64)) == 4
    assert log.next_index == 5
    assert bytes(log.read(2)) == b"bb"
    assert bytes(log.read(3)) == b""
    assert [log.raft_index(i) for i in range(1, 5)] == [3, 5, 9, 10]
    raft = log.raft_indices(2, 5)
    assert raft.dtype == np.uint64 and raft.tolist() == [5, 9, 10]
    assert log.raft_indices(3, 3).tolist() == []
    assert [bytes(v) for v in log.entries(1, 5)] == [b"a", b"bb", b"", b"ccc"]
    assert log.last_raft_index == 10
    with pytest.raises(IndexOutOfRangeError):
        log.read(5)
    with pytest.raises(IndexOutOfRangeError):
        log.raft_indices(1, 6)


def test_append_gathered_checks_indices_like_append_batch(log: PartitionLogStore) -> None:
    source = b"..alpha..beta.gamma"
    at = np.array([2, 9, 14], np.uint64)
    sizes = np.array([5, 4, 5], np.uint32)
    assert log.append_gathered(1, source, at[:2], sizes[:2], [4, 6]) == 2
    with pytest.raises(PartitionError, match="next index is 3"):
        log.append_gathered(2, source, at[2:], sizes[2:], [9])
    with pytest.raises(PartitionError, match="does not follow"):
        log.append_gathered(3, source, at[2:], sizes[2:], [6])
    with pytest.raises(InvalidArgumentError, match="one integer per payload"):
        log.append_gathered(3, source, at[2:], sizes[2:], [9, 10])
    assert log.append_gathered(3, source, at[2:], sizes[2:], [9]) == 3
    assert [bytes(v) for v in log.entries(1, 4)] == [b"alpha", b"beta", b"gamma"]
    assert log.raft_indices(1, 4).tolist() == [4, 6, 9]


def test_many_records_over_many_segments(log: PartitionLogStore) -> None:
    rafts = list(range(10, 3010, 3))
    for start in range(0, len(rafts), 97):
        fill(log, rafts[start : start + 97])
    assert len(log._aof.segment_paths()) > 10
    assert log.raft_indices(1, log.next_index).tolist() == rafts
    assert [bytes(v) for v in log.entries(1, log.next_index)] == [payload(r) for r in rafts]


def test_appends_never_fsync_until_sync(root: Path) -> None:
    io = FaultyIO(real_sync=False)
    with PartitionLogStore.open(root, 1, io=io) as log:
        log.append_batch(1, [b"x"], [1])  # the Aof's first write of an open bumps its epoch
        log._aof._spare.close()  # let the background spare preparation finish first
        syncs = io.fdatasync_count + io.fsync_count + io.fsync_dir_count
        for i in range(2, 200):
            log.append_batch(i, [b"x"], [i])
        assert io.fdatasync_count + io.fsync_count + io.fsync_dir_count == syncs
        assert log.unsynced and log.durable_index < 199
        fdatasyncs = io.count("fdatasync", ".seg")
        assert log.sync() == 199 == log.durable_index
        assert io.count("fdatasync", ".seg") == fdatasyncs + 1
        assert not log.unsynced


def test_contiguity_and_ordering_errors_change_nothing(log: PartitionLogStore) -> None:
    fill(log, [10, 11])
    for first in (1, 2, 4, 0):
        with pytest.raises(PartitionError, match="next index is 3"):
            log.append_batch(first, [b"x"], [20])
    with pytest.raises(PartitionError, match="does not follow"):
        log.append_batch(3, [b"x"], [11])
    with pytest.raises(PartitionError, match="strictly increasing: 14 is followed by 14"):
        log.append_batch(3, [b"x", b"y", b"z"], [12, 14, 14])
    with pytest.raises(PartitionError, match="strictly increasing"):
        log.append_batch(3, [b"x", b"y"], [13, 12])
    with pytest.raises(InvalidArgumentError, match="one integer per payload"):
        log.append_batch(3, [b"x", b"y"], [12])
    with pytest.raises(InvalidArgumentError, match="negative"):
        log.append_batch(3, [b"x"], [-12])
    with pytest.raises(InvalidArgumentError, match="integers"):
        log.append_batch(3, [b"x"], [12.0])
    with pytest.raises(InvalidArgumentError, match="integers"):
        log.append_batch(3, [b"x"], ["12"])
    with pytest.raises(InvalidArgumentError):
        log.append_batch(3, b"xy", [12, 13])
    with pytest.raises(InvalidArgumentError):
        log.append_batch(3, ["x"], [12])
    with pytest.raises(InvalidArgumentError):
        log.append_batch("3", [b"x"], [12])  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        log.append_batch(True, [b"x"], [12])
    with pytest.raises(InvalidArgumentError, match="start at 1"):
        log.append_batch(3, [b"x"], [0])
    assert log.next_index == 3
    assert log.raft_indices(1, 3).tolist() == [10, 11]
    assert log.append_batch(3, [], []) == 2  # an empty batch is a no-op
    fill(log, [2**64 - 2, 2**64 - 1])  # the whole u64 range
    assert log.raft_index(4) == 2**64 - 1


def test_bad_partition_ids(root: Path) -> None:
    for pid in (-1, 2**32, True, "1", 1.5):
        with pytest.raises(InvalidArgumentError):
            PartitionLogStore.open(root, pid)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"PartitionLogStore\.open"):
        PartitionLogStore()


def test_truncate_from_raft_index(log: PartitionLogStore) -> None:
    fill(log, [2, 4, 6, 8, 10])
    assert log.truncate_from_raft_index(11) == 6  # nothing at or above 11
    assert log.truncate_from_raft_index(7) == 4  # removes 8 and 10
    assert log.raft_indices(1, 4).tolist() == [2, 4, 6]
    assert log.last_raft_index == 6
    assert log.truncate_from_raft_index(6) == 3
    fill(log, [6, 7])  # the rewound next index takes the new entries
    assert log.raft_indices(1, 5).tolist() == [2, 4, 6, 7]
    assert bytes(log.read(4)) == payload(7)
    assert log.truncate_from_raft_index(1) == 1  # everything
    assert len(log) == 0 and log.last_raft_index == 0
    assert log.truncate_from_raft_index(1) == 1  # empty: no-op
    fill(log, [1])
    for bad in (-1, "3", 2.0, None):
        with pytest.raises(InvalidArgumentError):
            log.truncate_from_raft_index(bad)  # type: ignore[arg-type]


def test_truncate_from_raft_index_at_every_point_of_a_long_log(root: Path) -> None:
    """Every cut of a multi-segment log, against bisect on a list (window growth too)."""
    rng = np.random.default_rng(5)
    rafts = np.cumsum(rng.integers(1, 5, 3000)).tolist()
    with PartitionLogStore.open(root, 1, segment_bytes=SMALL_SEGMENT) as log:
        fill(log, rafts)
        # the search alone, at every raft index (and between them)
        for target in range(0, rafts[-1] + 3):
            expected = 1 + int(np.searchsorted(rafts, target, side="left"))
            assert log._first_partition_index_at_or_after(target) == expected
        # real cuts, from the tail backwards, far and near
        model = list(rafts)
        for target in (rafts[-1] + 1, rafts[-1], rafts[2900], rafts[2899] + 1, rafts[1500], 3):
            keep = [r for r in model if r < target]
            assert log.truncate_from_raft_index(target) == len(keep) + 1
            model = keep
            assert log.raft_indices(1, log.next_index).tolist() == model
    with PartitionLogStore.open(root, 1, create=False) as log:
        assert log.raft_indices(1, log.next_index).tolist() == model


def test_truncate_before(log: PartitionLogStore) -> None:
    fill(log, list(range(1, 301)))
    log.truncate_before(101)
    assert (log.first_index, log.next_index) == (101, 301)
    with pytest.raises(IndexOutOfRangeError):
        log.read(100)
    assert log.raft_index(101) == 101
    log.truncate_before(50)  # below first: nothing to do
    assert log.first_index == 101
    with pytest.raises(IndexOutOfRangeError):
        log.truncate_before(302)  # past next_index
    with pytest.raises(IndexOutOfRangeError):
        log.truncate_before(0)
    log.truncate_before(301)  # empties; the next record is still 301
    assert (log.first_index, log.next_index, len(log)) == (301, 301, 0)
    with pytest.raises(PartitionError, match="does not follow"):
        log.append_batch(301, [b"x"], [300])
    fill(log, [301])
    assert log.raft_indices(301, 302).tolist() == [301]


def test_reopen_keeps_synced_data(root: Path) -> None:
    with PartitionLogStore.open(root, 3) as log:
        fill(log, [5, 6, 7])
        log.sync()
        fill(log, [9])
        log.truncate_from_raft_index(7)
        log.truncate_before(2)
    with PartitionLogStore.open(root, 3, create=False) as log:
        assert (log.first_index, log.next_index, log.durable_index) == (2, 3, 2)
        assert log.raft_indices(2, 3).tolist() == [6]
        assert log.last_raft_index == 6
        with pytest.raises(PartitionError):
            log.append_batch(3, [b"x"], [6])
        fill(log, [8])
        assert bytes(log.read(3)) == payload(8)


def test_open_refusals(root: Path) -> None:
    with pytest.raises(NotAStoreError, match="create=True"):
        PartitionLogStore.open(root, 1, create=False)
    with PartitionLogStore.open(root, 1) as log:
        fill(log, [1])
    os.rename(root / "1", root / "2")  # a log under the wrong partition's name
    with pytest.raises(NotAStoreError, match="not the log of partition 2"):
        PartitionLogStore.open(root, 2)
    (root / "3").mkdir()
    (root / "3" / "junk").write_bytes(b"x")
    with pytest.raises(NotAStoreError):
        PartitionLogStore.open(root, 3)


def test_use_after_close(root: Path) -> None:
    log = PartitionLogStore.open(root, 1)
    fill(log, [1])
    log.close()
    log.close()
    assert log.closed
    with pytest.raises(ClosedError):
        log.read(1)
    with pytest.raises(ClosedError):
        log.append_batch(2, [b"x"], [2])
    with pytest.raises(ClosedError):
        log.append_batch(2, [], [])


@pytest.mark.parametrize("keep_fraction", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("seed", range(3))
def test_crash_keeps_what_was_synced(root: Path, keep_fraction: float, seed: int) -> None:
    """Records not synced may be lost; synced ones survive, and nothing comes back torn."""
    io = FaultyIO(real_sync=False)
    log = PartitionLogStore.open(root, 4, segment_bytes=SMALL_SEGMENT, io=io)
    rafts = list(range(1, 121))
    fill(log, rafts[:50])
    assert log.sync() == 50
    fill(log, rafts[50:])  # never synced, except segments sealed on the way (rollover syncs)
    sealed_through = max(
        [50] + [info.last_index for info in log._aof.segment_infos() if info.sealed]
    )
    io.crash(keep_unsynced_fraction=keep_fraction, seed=seed)
    with pytest.raises(StorageIOError):
        log.close()  # close tries to sync: the "machine" is down
    with PartitionLogStore.open(root, 4, create=False) as log:
        assert log.next_index >= 51
        survived = log.next_index - 1
        assert log.raft_indices(1, log.next_index).tolist() == rafts[:survived]
        assert [bytes(v) for v in log.entries(1, log.next_index)] == [
            payload(r) for r in rafts[:survived]
        ]
        if keep_fraction == 0.0:
            assert survived == sealed_through
        fill(log, [1000])  # the log takes appends again


# -- hypothesis: operations against a list model ------------------------------------

_ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.lists(st.integers(1, 4), min_size=1, max_size=40)),
        st.tuples(st.just("rollback"), st.integers(0, 100)),
        st.tuples(st.just("compact"), st.integers(0, 30)),
        st.tuples(st.just("sync"), st.just(0)),
        st.tuples(st.just("reopen"), st.just(0)),
    ),
    max_size=14,
)


@settings(max_examples=40, deadline=None)
@given(ops=_ops)
def test_operations_match_a_list_model(ops: list[tuple[str, Any]]) -> None:
    first = 1
    model: list[int] = []  # raft indices of partition indices first, first + 1, ...
    floor = 0  # raft index of the last compacted record: rollbacks never reach below it
    next_raft = 1
    with tempfile.TemporaryDirectory() as tmp:
        log = PartitionLogStore.open(tmp, 9, segment_bytes=SMALL_SEGMENT)
        try:
            for op, arg in ops:
                if op == "append":
                    rafts = (next_raft - 1 + np.cumsum(arg)).tolist()
                    fill(log, rafts)
                    model += rafts
                    next_raft = rafts[-1] + 1
                elif op == "rollback":
                    target = max(floor + 1, next_raft - arg)
                    model = [r for r in model if r < target]
                    assert log.truncate_from_raft_index(target) == first + len(model)
                    next_raft = target
                elif op == "compact":
                    index = min(first + arg, first + len(model))
                    log.truncate_before(index)
                    if index > first:
                        floor = model[index - first - 1]
                        model = model[index - first :]
                        first = index
                elif op == "sync":
                    assert log.sync() == first + len(model) - 1
                else:
                    log.close()
                    log = PartitionLogStore.open(tmp, 9, create=False)
                    if not model:
                        next_raft = max(next_raft, floor + 1)
                assert (log.first_index, log.next_index) == (first, first + len(model))
                assert log.raft_indices(first, log.next_index).tolist() == model
                assert [bytes(v) for v in log.entries(first, log.next_index)] == [
                    payload(r) for r in model
                ]
        finally:
            log.close()


# -- PartitionLogs --------------------------------------------------------------------


def test_partition_logs_open_lazily_and_list_existing(root: Path) -> None:
    with PartitionLogs(root, open_max=4) as logs:
        assert logs.existing_ids() == []
        for pid in (5, 0, 2**32 - 1):
            fill(logs.get(pid), [1, 2])
        assert logs.get(5) is logs.get(5)
        assert logs.existing_ids() == [0, 5, 2**32 - 1]
        (root / "junk").mkdir()
        (root / "007").mkdir()  # not a canonical id
        (root / "8").write_bytes(b"")  # not a directory
        assert logs.existing_ids() == [0, 5, 2**32 - 1]
        for pid in (-1, 2**32, "1", None):
            with pytest.raises(InvalidArgumentError):
                logs.get(pid)  # type: ignore[arg-type]
    with PartitionLogs(root, create=False) as logs:
        assert logs.open_ids() == []
        assert logs.get(5).raft_indices(1, 3).tolist() == [1, 2]
    with pytest.raises(ClosedError):
        logs.get(5)
    with pytest.raises(NotAStoreError):
        PartitionLogs(root.parent / "missing", create=False)
    with pytest.raises(InvalidArgumentError):
        PartitionLogs(root, open_max=0)


def test_lru_bound_closes_least_recently_used_after_syncing(root: Path) -> None:
    with PartitionLogs(root, open_max=3) as logs:
        handles = {}
        for pid in range(3):
            handles[pid] = logs.get(pid)
            fill(handles[pid], [pid + 1])
        logs.get(0)  # 0 is now the most recently used; 1 is the least
        fill(logs.get(3), [10])
        assert logs.open_ids() == [2, 0, 3]
        assert handles[1].closed
        assert handles[1].durable_index == 1  # closing synced it
        # reopened on demand, data intact
        assert logs.get(1).raft_indices(1, 2).tolist() == [2]
        assert len(logs.open_ids()) == 3


def test_pinned_logs_are_not_evicted(root: Path) -> None:
    with PartitionLogs(root, open_max=2) as logs:
        with logs.pinned(1) as one, logs.pinned(2) as two:
            three = logs.get(3)  # everything else pinned: the bound stretches
            assert sorted(logs.open_ids()) == [1, 2, 3]
            fill(one, [1])
            fill(two, [1])
            assert not one.closed and not two.closed and not three.closed
        # Releasing pin 2 (while 1 was still pinned) evicted 2, the least recently
        # used unpinned log: the bound is back.
        assert logs.open_ids() == [1, 3]
        assert two.closed and two.durable_index == 1


def test_sync_all_reports_changed_durable_indices(root: Path) -> None:
    with PartitionLogs(root, open_max=2) as logs:
        assert logs.sync_all() == {}
        fill(logs.get(1), [1, 2, 3])
        fill(logs.get(2), [4])
        assert logs.sync_all() == {1: 3, 2: 1}
        assert logs.sync_all() == {}  # nothing new
        fill(logs.get(1), [5])
        fill(logs.get(3), [6, 7])  # evicts 2 (synced already: no change)
        fill(logs.get(4), [8])  # evicts 1, whose close syncs record 4
        assert logs.sync_all() == {1: 4, 3: 2, 4: 1}
        logs.get(3).truncate_from_raft_index(7)  # a rollback lowers the durable index
        assert logs.sync_all() == {3: 1}


def test_threads_append_to_many_partitions(root: Path) -> None:
    with PartitionLogs(root, open_max=4) as logs:
        errors: list[BaseException] = []

        def writer(pids: range) -> None:
            try:
                for round_ in range(5):
                    for pid in pids:
                        with logs.pinned(pid) as log:
                            fill(log, [round_ + 1])
                    logs.sync_all()
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(range(k, 24, 4),)) for k in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert len(logs.open_ids()) <= 4
        for pid in range(24):
            assert logs.get(pid).raft_indices(1, 6).tolist() == [1, 2, 3, 4, 5]


def test_sync_all_survives_a_crash(root: Path) -> None:
    io = FaultyIO(real_sync=False)
    logs = PartitionLogs(root, open_max=2, io=io)
    for pid in range(4):
        fill(logs.get(pid), [1, 2])
    reported = logs.sync_all()
    assert reported == {0: 2, 1: 2, 2: 2, 3: 2}
    for pid in range(4):
        fill(logs.get(pid), [3])  # never synced (but eviction syncs some of them)
    io.crash()
    with pytest.raises(StorageIOError):
        logs.close()
    with PartitionLogs(root, create=False) as logs:
        assert logs.existing_ids() == [0, 1, 2, 3]
        for pid, durable in reported.items():
            assert logs.get(pid).next_index - 1 >= durable


def test_1024_partitions_bound_descriptors_and_disk(root: Path) -> None:
    """Creating a partition log costs several fsyncs (Aof meta, epoch): use 8 threads."""
    fds_before = fd_count()

    def write(pid: int) -> None:
        with logs.pinned(pid) as log:
            fill(log, [pid + 1, pid + 2])

    with PartitionLogs(root, open_max=32) as logs, ThreadPoolExecutor(8) as pool:
        for start in range(0, 1024, 256):
            list(pool.map(write, range(start, start + 256)))
            assert len(logs.open_ids()) <= 32
            # a few descriptors per open log (lock, active segment), nothing per closed
            assert fd_count() - fds_before <= 32 * 4 + 32
            reported = logs.sync_all()
            assert all(reported[pid] == 2 for pid in range(start, start + 256))
        assert logs.existing_ids() == list(range(1024))
    assert fd_count() - fds_before <= 4
    used = disk_bytes(root)
    assert used < 64 << 20, f"{used / (1 << 20):.1f} MiB for 1,024 partitions"
    with PartitionLogs(root, open_max=32) as logs:
        for pid in (0, 511, 1023):
            assert logs.get(pid).raft_indices(1, 3).tolist() == [pid + 1, pid + 2]

"""I/O faults injected through the Aof's file seam (segstore.testing.faults.FaultyIO).

DESIGN.md "Faults are a first-class input": EIO on fsync, ENOSPC, short and failing
writes. Invariant 8 (fail-stop): a failed fsync never advances the durable index and puts
the store into a failed state that every later write reports, with no retry.
"""

from __future__ import annotations

import errno
import threading
import time
from contextlib import suppress
from pathlib import Path

import pytest
from aof_helpers import append_range, assert_intact, batch, open_aof
from crash_writer import header_for, payload_for

from segstore.aof.aof import Aof
from segstore.aof.group_commit import GroupCommit
from segstore.errors import FailedStateError, SegstoreError, StorageIOError
from segstore.testing.faults import FaultyIO


def close_quietly(aof: Aof) -> None:
    with suppress(SegstoreError):
        aof.close()


# -- EIO on fsync ------------------------------------------------------------------------


def test_eio_on_fdatasync_fails_stop(tmp_path: Path) -> None:
    # Invariant 8: fail-stop. A failed fdatasync never advances the durable index, every
    # later write reports the failure, and nothing is retried as if the data were safe.
    io = FaultyIO(real_sync=False)
    aof = open_aof(tmp_path, io)
    events: list[int | BaseException] = []
    aof.on_durable(events.append)
    append_range(aof, 1, 6)
    assert aof.sync() == 5
    append_range(aof, 6, 11)
    io.fail_fsync(".seg", errno=errno.EIO, times=1)
    syncs_before = io.fdatasync_count

    with pytest.raises(FailedStateError) as caught:
        aof.sync()
    error = caught.value
    assert isinstance(error, StorageIOError)
    assert isinstance(error, OSError)
    assert error.errno == errno.EIO
    assert error.filename is not None and error.filename.endswith(".seg")
    assert aof.durable_index == 5
    assert isinstance(aof.failed, StorageIOError)
    # the callback heard about the failure, and never about an index past 5
    failures = [e for e in events if isinstance(e, BaseException)]
    assert len(failures) == 1 and isinstance(failures[0], StorageIOError)
    assert failures[0].errno == errno.EIO
    assert max(e for e in events if isinstance(e, int)) == 5

    # The fault was one-shot: a retry would now succeed, so any success here would be a
    # retry pretending the data is safe.
    with pytest.raises(FailedStateError):
        aof.append(b"x")
    with pytest.raises(FailedStateError):
        aof.append_batch([b"x", b"y"])
    with pytest.raises(FailedStateError):
        aof.sync()
    with pytest.raises(FailedStateError):
        aof.truncate_before(3)
    with pytest.raises(FailedStateError):
        aof.truncate_after(7)
    assert aof.durable_index == 5
    assert aof.last_index == 10
    assert io.fdatasync_count == syncs_before + 1  # the failed one, no retry
    close_quietly(aof)

    with open_aof(tmp_path) as reopened:
        assert reopened.first_index == 1
        assert reopened.last_index >= 5
        assert_intact(reopened, 1, reopened.last_index + 1)


def test_eio_on_fsync_dir_of_new_segment_fails_stop(tmp_path: Path) -> None:
    # Invariant 8: the directory fsync that makes a new segment's name durable is part of
    # the flush; its failure must not advance the durable index either.
    io = FaultyIO(real_sync=False)
    aof = open_aof(tmp_path, io)
    append_range(aof, 1, 4)
    assert aof.sync() == 3
    start = 4
    first_segments = len(aof.segment_paths())
    while len(aof.segment_paths()) == first_segments:
        aof.append(payload_for(start), header_for(start))
        start += 1
    io.fail("fsync_dir", path_substring=str(tmp_path), times=None)
    with pytest.raises(FailedStateError):
        aof.sync()
    assert aof.durable_index == 3
    with pytest.raises(FailedStateError):
        aof.append(b"more")
    close_quietly(aof)
    with open_aof(tmp_path) as reopened:
        assert reopened.last_index >= 3
        assert_intact(reopened, 1, reopened.last_index + 1)


def test_background_flusher_failure_is_seen_by_next_append(tmp_path: Path) -> None:
    # Invariant 8: with autosync the failure happens on the flusher thread; the next
    # append must report it, and on_durable must have received it.
    io = FaultyIO(real_sync=False)
    aof = open_aof(tmp_path, io, autosync=True)
    append_range(aof, 1, 4)
    assert aof.sync() == 3
    failed = threading.Event()
    events: list[int | BaseException] = []

    def callback(event: int | BaseException) -> None:
        events.append(event)
        if isinstance(event, BaseException):
            failed.set()

    aof.on_durable(callback)
    io.fail_fsync(".seg", times=None)
    aof.append(payload_for(4), header_for(4))  # wakes the flusher, which fails
    assert failed.wait(10), "the background flusher never reported the failure"
    assert aof.durable_index == 3
    with pytest.raises(FailedStateError):
        aof.append(payload_for(5), header_for(5))
    with pytest.raises(FailedStateError):
        aof.sync()
    assert all(e <= 3 for e in events if isinstance(e, int))
    close_quietly(aof)
    with open_aof(tmp_path) as reopened:
        assert reopened.last_index >= 3
        assert_intact(reopened, 1, reopened.last_index + 1)


# -- ENOSPC while preparing a segment ----------------------------------------------------


def test_enospc_preparing_new_segment(tmp_path: Path) -> None:
    # DESIGN "Faults": ENOSPC while preallocating the next segment must fail only the
    # append that needs it (StorageIOError, nothing damaged: preallocate.SparePool.take
    # says "nothing is damaged then and a later call tries again"); the store keeps
    # working once space is back, with no gap in the indices.
    with open_aof(tmp_path) as aof:
        append_range(aof, 1, 3)
    for spare in tmp_path.glob("spare.*.tmp"):
        spare.unlink()  # no spare left over: the next one must be prepared under ENOSPC
    io = FaultyIO(real_sync=False)
    io.fail_write("spare.", errno=errno.ENOSPC, times=None)
    aof = open_aof(tmp_path, io)
    next_index = 3
    segments = len(aof.segment_paths())
    with pytest.raises(StorageIOError) as caught:
        while True:  # fill the active segment until a new one is needed
            aof.append(payload_for(next_index), header_for(next_index))
            next_index += 1
    assert caught.value.errno == errno.ENOSPC
    assert not isinstance(caught.value, FailedStateError)
    assert aof.last_index == next_index - 1  # the failed append took no index
    assert len(aof.segment_paths()) == segments
    assert aof.failed is None, "ENOSPC on preallocation failed the whole store"
    assert aof.sync() == next_index - 1
    assert_intact(aof, 1, next_index)

    io.clear_faults()  # space is back
    assert aof.append(payload_for(next_index), header_for(next_index)) == next_index
    assert batch(aof, next_index + 1, next_index + 40) == next_index + 39
    assert aof.sync() == next_index + 39
    assert len(aof.segment_paths()) > segments
    aof.close()
    with open_aof(tmp_path) as reopened:
        assert (reopened.first_index, reopened.last_index) == (1, next_index + 39)
        assert_intact(reopened, 1, next_index + 40)


def test_enospc_preparing_new_segment_then_reopen_and_fill(tmp_path: Path) -> None:
    # Invariant 1 after ENOSPC: a segment sealed while no new segment could be made, then
    # reopened and written further, must still open with every durable record.
    with open_aof(tmp_path) as aof:
        append_range(aof, 1, 3)
    for spare in tmp_path.glob("spare.*.tmp"):
        spare.unlink()
    io = FaultyIO(real_sync=False)
    io.fail_write("spare.", errno=errno.ENOSPC, times=None)
    aof = open_aof(tmp_path, io)
    index = 3
    with pytest.raises(StorageIOError):
        while True:
            # big records, so the sealed segment still has room for small ones
            aof.append(payload_for(index) * 8, header_for(index))
            index += 1
    durable = aof.sync()
    assert durable == index - 1
    close_quietly(aof)

    # Space is back; reopen: the sealed-but-last segment becomes active again (it still
    # has a sidecar from its sealing). Add small records that fit in it and sync them,
    # then roll over and crash just before the flush rewrites that segment's sidecar.
    io = FaultyIO(real_sync=False)
    aof = open_aof(tmp_path, io)
    assert aof.last_index == durable
    first = aof.last_index + 1
    append_small = first
    for _ in range(5):
        aof.append(b"s%d" % append_small)
        append_small += 1
    last = aof.sync()
    assert last == append_small - 1
    segments = len(aof.segment_paths())
    while len(aof.segment_paths()) == segments:
        aof.append(b"s%d" % append_small)
        append_small += 1
    io.crash_before("open", ".idx")  # the sidecar rewrite in the flush
    with pytest.raises(StorageIOError):
        aof.sync()
    close_quietly(aof)
    with open_aof(tmp_path) as reopened:
        assert reopened.last_index >= last
        assert_intact(reopened, 1, 3)
        assert [bytes(v) for v in reopened.read_range(3, durable + 1)] == [
            payload_for(i) * 8 for i in range(3, durable + 1)
        ]
        assert [bytes(v) for v in reopened.read_range(first, last + 1)] == [
            b"s%d" % i for i in range(first, last + 1)
        ]


# -- short and failing writes ------------------------------------------------------------


@pytest.mark.parametrize("max_bytes", [1, 7, 100, 4096])
def test_short_writes_are_completed(tmp_path: Path, max_bytes: int) -> None:
    # DESIGN "Faults": pwrite may legally write fewer bytes than asked; the engine loops
    # and the data reads back exactly, in this session and after reopening.
    io = FaultyIO(real_sync=False)
    io.short_writes(max_bytes, ".seg")
    aof = open_aof(tmp_path, io)
    append_range(aof, 1, 20)
    assert batch(aof, 20, 80) == 79  # crosses a segment boundary
    append_range(aof, 80, 90)
    assert_intact(aof, 1, 90)
    assert aof.sync() == 89
    assert len(aof.segment_paths()) >= 2
    assert io.short_write_count > 0  # the short writes really happened
    aof.close()
    with open_aof(tmp_path) as reopened:
        assert (reopened.first_index, reopened.last_index) == (1, 89)
        assert_intact(reopened, 1, 90)


@pytest.mark.parametrize("partial", [False, True])
def test_failing_pwrite_fails_stop_and_loses_nothing_durable(tmp_path: Path, partial: bool) -> None:
    # Invariant 8 (fail-stop on a failed write) and invariant 1 (nothing durable lost).
    # With ``partial`` the failing write comes after a part of the frame was written.
    io = FaultyIO(real_sync=False)
    aof = open_aof(tmp_path, io)
    append_range(aof, 1, 30)
    assert aof.sync() == 29
    if partial:
        io.short_writes(50, ".seg")
        io.fail_write(".seg", errno=errno.EIO, after=2)
    else:
        io.fail_write(".seg", errno=errno.EIO)
    with pytest.raises(FailedStateError) as caught:
        aof.append(payload_for(30), header_for(30))
    assert caught.value.errno == errno.EIO
    assert aof.last_index == 29
    io.clear_faults()
    with pytest.raises(FailedStateError):
        aof.append(payload_for(30), header_for(30))
    with pytest.raises(FailedStateError):
        batch(aof, 30, 33)
    with pytest.raises(FailedStateError):
        aof.sync()
    assert aof.durable_index == 29
    close_quietly(aof)
    with open_aof(tmp_path) as reopened:
        assert reopened.last_index == 29
        assert_intact(reopened, 1, 30)
        assert reopened.append(payload_for(30), header_for(30)) == 30
        reopened.sync()
    with open_aof(tmp_path) as again:
        assert_intact(again, 1, 31)


def test_failed_truncate_after_fails_stop_and_reopens_whole(tmp_path: Path) -> None:
    # The epoch bump that commits truncate_after fails after the index was changed in
    # memory: the Aof must fail stop (an append here created a segment overlapping the
    # old tail, and the directory no longer opened). A reopen finds a gap-free log with
    # every record up to the cut intact, and possibly some after it: the segments past
    # the cut's own were dropped before the commit point, that segment was not cut.
    io = FaultyIO(real_sync=False)
    aof = open_aof(tmp_path, io)
    batch(aof, 1, 600)  # several segments
    aof.sync()
    cut = aof.segment_infos()[1].first_index + 10
    io.fail_rename("aof.meta", errno=errno.EIO, times=1)
    with pytest.raises(StorageIOError):
        aof.truncate_after(cut)
    with pytest.raises(FailedStateError):
        aof.append(payload_for(cut + 1), header_for(cut + 1))
    close_quietly(aof)
    with open_aof(tmp_path) as reopened:
        assert cut <= reopened.last_index <= 599
        assert_intact(reopened, 1, reopened.last_index + 1)


def test_failing_pwrite_in_second_chunk_of_batch(tmp_path: Path) -> None:
    # Invariant 8 and 1: a batch spanning two segments whose second write fails fails the
    # store; the durable prefix survives and the log stays gap-free.
    io = FaultyIO(real_sync=False)
    aof = open_aof(tmp_path, io)
    append_range(aof, 1, 10)
    assert aof.sync() == 9
    first_segment = aof.segment_paths()[-1]
    io.fail_write(".seg", errno=errno.EIO, after=1)  # the first chunk's write succeeds
    with pytest.raises(FailedStateError):
        batch(aof, 10, 100)  # ~150 KiB: several segments
    assert aof.durable_index == 9
    close_quietly(aof)
    with open_aof(tmp_path) as reopened:
        assert reopened.segment_paths()[0] == first_segment
        assert reopened.last_index >= 9
        assert_intact(reopened, 1, reopened.last_index + 1)


# -- group commit ------------------------------------------------------------------------


def test_background_flusher_covers_records_written_before_it_started() -> None:
    # nudge() skips the event while no flusher runs; starting one must still flush
    # what was written before.
    flushed: list[int] = []
    commit = GroupCommit(lambda: flushed.append(5) or 5, lambda: 5, 0)
    commit.nudge()
    commit.start_background(0.0)
    try:
        deadline = time.monotonic() + 5
        while commit.durable_index < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        commit.stop_background()
    assert commit.durable_index == 5
    assert flushed == [5]


def test_group_commit_groups_concurrent_syncs(tmp_path: Path) -> None:
    # Group commit (FORMAT 6 "append"): concurrent sync() calls share fdatasyncs, and each
    # caller's record is durable when its sync returns.
    io = FaultyIO(real_sync=True)
    aof = open_aof(tmp_path, io, segment_bytes=8 << 20)
    threads_n, rounds = 8, 25
    problems: list[str] = []
    barrier = threading.Barrier(threads_n)
    before = io.fdatasync_count

    def worker(worker_id: int) -> None:
        barrier.wait()
        for round_no in range(rounds):
            index = aof.append(b"w%d-%d" % (worker_id, round_no))
            durable = aof.sync()
            if durable < index:
                problems.append(f"sync returned {durable} < appended {index}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not problems
    syncs = threads_n * rounds
    fdatasyncs = io.fdatasync_count - before
    assert aof.durable_index == aof.last_index == syncs
    assert 0 < fdatasyncs < syncs, f"{fdatasyncs} fdatasyncs for {syncs} sync calls"
    aof.close()
    with open_aof(tmp_path, segment_bytes=8 << 20) as reopened:
        payloads = {bytes(v) for v in reopened.read_range(1, syncs + 1)}
        assert payloads == {b"w%d-%d" % (w, r) for w in range(threads_n) for r in range(rounds)}


def test_group_commit_with_background_flusher_and_callbacks(tmp_path: Path) -> None:
    # Group commit with autosync: on_durable reports a non-decreasing durable index and
    # ends at the last index; the flusher issues fewer fdatasyncs than appends.
    io = FaultyIO(real_sync=True)
    aof = open_aof(tmp_path, io, autosync=True, segment_bytes=8 << 20)
    seen: list[int | BaseException] = []
    done = threading.Event()
    total = 2000

    def callback(event: int | BaseException) -> None:
        seen.append(event)
        if isinstance(event, int) and event >= total:
            done.set()

    aof.on_durable(callback)
    before = io.fdatasync_count
    for index in range(1, total + 1):
        aof.append(b"%d" % index)
    assert done.wait(20)
    assert all(isinstance(e, int) for e in seen)
    ints = [e for e in seen if isinstance(e, int)]
    assert ints == sorted(ints)
    assert io.fdatasync_count - before < total
    aof.close()

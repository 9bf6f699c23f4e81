"""Crashes: simulated power loss at every point of a workload, and kill -9 of a writer.

Invariant 1: nothing reported durable is lost (unless a completed truncation removed
it); the log after recovery is a gap-free range whose records are exactly what was
appended. Invariant 2: torn tails are cut. FORMAT 4.2: the epoch rule keeps truncated
and torn records from coming back.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from aof_helpers import append_range, assert_intact, open_aof
from crash_sweep import sweep
from crash_writer import HEADER_DTYPE, header_for, payload_for

from segstore.aof.aof import Aof
from segstore.aof.fileio import FileIO
from segstore.errors import SegstoreError
from segstore.testing.faults import FaultyIO

WRITER = Path(__file__).with_name("crash_writer.py")
Record = tuple[bytes, tuple[int, int, int]]


def close_quietly(aof: Aof | None) -> None:
    if aof is not None:
        with suppress(SegstoreError):
            close_or_unstick(aof)


def close_or_unstick(aof: Aof, model: Model | None = None) -> None:
    """Close; if close hangs (the flusher livelock, see test_sync_target_above_truncated
    _tail_does_not_livelock), unstick the flusher by appending and fail the case."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            aof.close()
        except BaseException as exc:
            errors.append(exc)

    closer = threading.Thread(target=run, daemon=True)
    closer.start()
    closer.join(10)
    if closer.is_alive():
        for _ in range(100_000):
            if not closer.is_alive():
                break
            with suppress(SegstoreError):
                index = aof.append(b"unstick")
                if model is not None:
                    model.records[index] = (b"unstick", (0, 0, 0))
        closer.join(10)
        raise AssertionError("Aof.close() hung: the background flusher never finished")
    if errors:
        raise errors[0]


# -- a model of what the log may hold after a crash ------------------------------------------


@dataclass
class Model:
    """What was appended (including appends in flight) and what was reported durable."""

    records: dict[int, Record] = field(default_factory=dict)
    first: int = 1
    last: int = 0
    durable: int = 0
    pending_first: int | None = None  # truncate_before in flight
    pending_cut: int | None = None  # truncate_after in flight
    generation: int = 0

    def on_durable(self, event: int | BaseException) -> None:
        if isinstance(event, int):
            self.durable = max(self.durable, event)

    def record(self, index: int, size: int) -> Record:
        seed = (index * 1_000_003 + self.generation * 7919) & 0xFFFFFFFF
        body = random.Random(seed).randbytes(16)
        payload = (body * (size // 16 + 1))[:size]
        return payload, (index * 3 + self.generation, self.generation, index % 65536)


class Workload:
    """A scripted cycle of appends, syncs, truncations and reopens against one model."""

    def __init__(self, path: Path, io: FileIO, rng: random.Random, autosync: bool) -> None:
        self.path = path
        self.io = io
        self.rng = rng
        self.autosync = autosync
        self.model = Model()
        self.aof: Aof | None = None

    def open(self) -> None:
        self.aof = open_aof(self.path, self.io, autosync=self.autosync)
        self.aof.on_durable(self.model.on_durable)
        assert self.aof.last_index == self.model.last  # no crash yet: nothing lost

    def append(self, count: int, sizes: list[int] | None = None) -> None:
        assert self.aof is not None
        model = self.model
        sizes = sizes or [self.rng.choice([16, 200, 1500, 3000]) for _ in range(count)]
        start = model.last + 1
        records = [model.record(start + k, size) for k, size in enumerate(sizes)]
        for k, record in enumerate(records):
            model.records[start + k] = record  # may come back even if the call fails
        if len(records) == 1:
            index = self.aof.append(records[0][0], records[0][1])
        else:
            headers = np.array([r[1] for r in records], HEADER_DTYPE)
            index = self.aof.append_batch([r[0] for r in records], headers)
        assert index == start + len(records) - 1
        model.last = index

    def sync(self) -> None:
        assert self.aof is not None
        durable = self.aof.sync()
        assert durable >= self.model.last
        self.model.on_durable(durable)

    def truncate_before(self, index: int) -> None:
        assert self.aof is not None
        model = self.model
        model.pending_first = index
        self.aof.truncate_before(index)
        model.pending_first = None
        if index > model.first:
            model.first = index
            for gone in [i for i in model.records if i < index]:
                del model.records[gone]
            if index > model.last:
                model.last = index - 1
                model.durable = max(model.durable, index - 1)

    def truncate_after(self, index: int) -> None:
        assert self.aof is not None
        model = self.model
        model.pending_cut = index
        self.aof.truncate_after(index)
        model.pending_cut = None
        for gone in [i for i in model.records if i > index]:
            del model.records[gone]
        model.last = index
        model.durable = min(model.durable, index)
        model.generation += 1

    def reopen(self) -> None:
        assert self.aof is not None
        close_or_unstick(self.aof, self.model)
        self.aof = None
        self.open()

    def run(self) -> None:
        """One cycle; each step's size keeps 64 KiB segments rolling over."""
        self.open()
        for _ in range(2):
            self.append(1)
            self.append(1)
            self.sync()
            self.append(40)  # crosses a segment boundary
            self.append(3)
            self.sync()
            self.truncate_before(self.model.first + 30)
            self.append(25)
            cut = self.model.last - 10
            sizes = [len(self.model.records[i][0]) for i in range(cut + 1, cut + 9)]
            self.truncate_after(cut)
            self.append(8, sizes)  # same sizes: new frames line up with the old ones
            self.sync()
            cut = max(self.model.first, self.model.last - 45)  # into an earlier segment
            self.truncate_after(cut)
            self.append(30)
            self.append(1)
            self.sync()
            self.reopen()
            self.append(12)
        self.truncate_before(self.model.last + 5)  # past the tail: empties the log
        self.append(3)
        self.sync()
        self.append(2)


def verify_after_crash(path: Path, model: Model) -> None:
    """Invariant 1 and a gap-free log; appends continue at the right index."""
    with open_aof(path) as aof:
        first, last = aof.first_index, aof.last_index
        allowed_first = {model.first} | (
            {model.pending_first} if model.pending_first is not None else set()
        )
        assert first in allowed_first or (
            model.pending_first is not None and model.first <= first <= model.pending_first
        ), f"first index {first}, expected one of {allowed_first}"
        required = model.durable
        if model.pending_cut is not None:
            required = min(required, model.pending_cut)
        assert last >= max(required, first - 1), (
            f"durable record lost: log ends at {last}, {required} was reported durable"
        )
        if last >= first:
            views = aof.read_range(first, last + 1)  # gap-free, every CRC checked
            headers = aof.headers(first, last + 1)
            for index, view, header in zip(range(first, last + 1), views, headers, strict=True):
                assert index in model.records, f"record {index} was never appended"
                payload, expected_header = model.records[index]
                assert bytes(view) == payload, f"record {index} has the wrong payload"
                assert tuple(header.tolist()) == expected_header, f"record {index} header"
        assert aof.append(b"after crash") == last + 1
        assert aof.sync() == last + 1
    with open_aof(path) as aof:
        assert (aof.first_index, aof.last_index) == (first, last + 1)
        assert bytes(aof.read(last + 1)) == b"after crash"


def run_crash_case(
    path: Path,
    seed: int,
    crash: Callable[[FaultyIO], None],
    *,
    autosync: bool = False,
) -> int:
    """Run the workload with ``crash`` armed, crash at the end anyway, verify."""
    io = FaultyIO(real_sync=False)
    crash(io)
    workload = Workload(path, io, random.Random(seed), autosync)
    try:
        workload.run()
    except SegstoreError:
        assert io.crashed, "the workload failed without a crash"
    ops = io.op_count
    if not io.crashed:
        io.crash()
    close_quietly(workload.aof)
    verify_after_crash(path, workload.model)
    return ops


def count_ops(tmp_path: Path) -> int:
    return run_crash_case(tmp_path / "count", 1, lambda io: None)


def test_crash_at_every_point_of_the_cycle(tmp_path: Path) -> None:
    # Invariant 1 at every crash point: each I/O operation of the cycle (appends,
    # batches across segments, syncs, both truncations, reopen) in turn is where the
    # power goes.
    total = count_ops(tmp_path)
    assert total > 100
    points = range(0, total + 5, max(1, total // 250))
    for number, point in enumerate(points):
        run_crash_case(tmp_path / f"p{number}", 1, lambda io, p=point: io.crash_at_op(p))


def test_crash_keeping_random_unsynced_pages(tmp_path: Path) -> None:
    # Invariant 1 and 2 plus the epoch rule (FORMAT 4.2, 4.3) under out-of-order page
    # writeback: a random subset of unsynced pages (and of directory changes) survives.
    total = count_ops(tmp_path)
    rng = random.Random(2024)
    cases: list[tuple[str, Callable[[], object]]] = []
    for number in range(150):
        point = rng.randrange(total + 5)
        fraction = rng.choice([0.1, 0.5, 0.9])
        cases.append(
            (
                f"seed {number}: op {point}, keep {fraction}",
                lambda n=number, p=point, f=fraction: run_crash_case(
                    tmp_path / f"k{n}",
                    n,
                    lambda io: io.crash_at_op(p, keep_unsynced_fraction=f, seed=n),
                    autosync=n % 3 == 0,
                ),
            )
        )
    sweep(cases)


def test_crash_with_background_flusher(tmp_path: Path) -> None:
    # Invariant 1 with autosync: durability reported by the flusher thread (on_durable)
    # counts too.
    total = count_ops(tmp_path)
    sweep(
        [
            (
                f"crash before op {point}",
                lambda n=number, p=point: run_crash_case(
                    tmp_path / f"b{n}", 3, lambda io: io.crash_at_op(p), autosync=True
                ),
            )
            for number, point in enumerate(range(0, total, max(1, total // 60)))
        ]
    )


# -- stale data must not come back ---------------------------------------------------------


@pytest.mark.parametrize("keep", [0.0, 0.5, 1.0])
def test_truncated_records_do_not_resurrect(tmp_path: Path, keep: float) -> None:
    # FORMAT 4.2 (epochs): after truncate_after and re-appending records of the same
    # sizes (new frames line up exactly with the old ones), a crash before the sync
    # must bring back none of the truncated records.
    for attempt in range(6):
        path = tmp_path / f"a{attempt}"
        io = FaultyIO(real_sync=False)
        aof = open_aof(path, io)
        old = [b"old-%04d-" % i * (1 + (i * 37) % 90) for i in range(1, 61)]
        aof.append_batch(old)
        assert aof.sync() == 60
        aof.truncate_after(20)
        new = [b"NEW-%04d-" % i * (1 + (i * 37) % 90) for i in range(21, 61)]
        assert [len(n) for n in new] == [len(o) for o in old[20:]]
        assert aof.append_batch(new[:10]) == 30
        for index in range(31, 61):
            assert aof.append(new[index - 21]) == index
        io.crash(keep_unsynced_fraction=keep, seed=attempt)
        close_quietly(aof)
        with open_aof(path) as reopened:
            assert reopened.last_index >= 20
            for index in range(1, reopened.last_index + 1):
                payload = bytes(reopened.read(index))
                if index <= 20:
                    assert payload == old[index - 1]
                else:
                    assert payload == new[index - 21], f"truncated record {index} came back"
            assert reopened.append(b"z") == reopened.last_index
            reopened.sync()


def test_truncated_segments_do_not_resurrect(tmp_path: Path) -> None:
    # FORMAT 6 truncate_after: segments after the cut are unlinked before the commit; a
    # crash after the commit, with the segment unlinks kept or not, brings nothing back.
    for keep in (0.0, 1.0):
        path = tmp_path / f"k{keep}"
        io = FaultyIO(real_sync=False)
        aof = open_aof(path, io)
        aof.append_batch([b"%06d" % i * 200 for i in range(1, 201)])
        aof.sync()
        assert len(aof.segment_paths()) >= 3
        aof.truncate_after(5)
        io.crash(keep_unsynced_fraction=keep, seed=1)
        close_quietly(aof)
        with open_aof(path) as reopened:
            assert reopened.last_index == 5
            assert len(reopened.segment_paths()) == 1


# -- crash points found by reading the code ------------------------------------------------


def test_crash_inside_truncate_before_past_the_tail(tmp_path: Path) -> None:
    # Invariant 1 / FORMAT 6 truncate_before: a crash after the meta commit but before
    # the segment unlinks are durable leaves the last segment wholly below first_index.
    # Recovery must not append into it as if it continued at first_index.
    io = FaultyIO(real_sync=False)
    aof = open_aof(tmp_path, io)
    aof.append_batch([b"%05d" % i * 50 for i in range(1, 101)])
    aof.sync()
    io.crash_before("fsync_dir", after=1)  # the meta's own dir sync passes, the next not
    with pytest.raises(SegstoreError):
        aof.truncate_before(500)
    close_quietly(aof)
    with open_aof(tmp_path) as reopened:
        first = reopened.first_index
        assert first in (1, 500)
        assert reopened.last_index == (100 if first == 1 else 499)
        index = reopened.append(b"first after restart")
        assert index == reopened.last_index
        second = reopened.append(b"second after restart")
        assert bytes(reopened.read(index)) == b"first after restart"
        assert bytes(reopened.read(second)) == b"second after restart"
        reopened.sync()
    with open_aof(tmp_path) as again:
        assert again.last_index == second
        assert bytes(again.read(index)) == b"first after restart"
        assert bytes(again.read(second)) == b"second after restart"


def test_durable_index_after_restart_survives_power_loss(tmp_path: Path) -> None:
    # Invariant 1 across a process crash followed by a power loss: a writer is killed
    # (its unsynced records stay in the page cache); the next process opens, reads them
    # back and reports them durable without an fdatasync; then the power goes.
    io = FaultyIO(real_sync=False)
    aof = open_aof(tmp_path, io)
    aof.append_batch([b"synced %d" % i for i in range(1, 11)])
    assert aof.sync() == 10
    aof.append_batch([b"page cache only %d" % i for i in range(11, 21)])
    next_io = io.survivor()  # kill -9: no revert, the dying process can do nothing more
    close_quietly(aof)

    restarted = open_aof(tmp_path, next_io)
    assert restarted.last_index == 20
    reported = restarted.sync()
    next_io.crash()  # power loss
    close_quietly(restarted)
    with open_aof(tmp_path) as final:
        assert final.last_index >= reported, (
            f"records up to {reported} were reported durable, only {final.last_index} survived"
        )


def test_restart_makes_the_name_of_a_segment_the_killed_writer_rolled_to_durable(
    tmp_path: Path,
) -> None:
    # The killed writer rolled over (the new segment is a renamed spare, made durable
    # by the next flush's directory fsync, which never came) and wrote records into
    # it. The next process reports them durable: the directory entry must be too.
    io = FaultyIO(real_sync=False)
    aof = open_aof(tmp_path, io)
    append_range(aof, 1, 20)
    assert aof.sync() == 19
    segments = len(aof.segment_paths())
    stop = 20
    while len(aof.segment_paths()) == segments:
        append_range(aof, stop, stop + 1)
        stop += 1
    append_range(aof, stop, stop + 3)  # into the new segment, page cache only
    next_io = io.survivor()
    close_quietly(aof)

    restarted = open_aof(tmp_path, next_io)
    reported = restarted.sync()
    assert reported == stop + 2
    next_io.crash()
    close_quietly(restarted)
    with open_aof(tmp_path) as final:
        assert final.last_index >= reported, (
            f"records up to {reported} were reported durable, only {final.last_index} survived"
        )
        assert_intact(final, 1, reported + 1)


# -- kill -9 of a real writer process ---------------------------------------------------


def test_kill_dash_9_loop(tmp_path: Path) -> None:
    # Invariant 1 against real process death: every index the writer printed as durable
    # is intact after SIGKILL at a random time, and the log is gap-free.
    iterations = int(os.environ.get("SEGSTORE_CRASH_ITERATIONS", "5"))
    rng = random.Random(int(os.environ.get("SEGSTORE_CRASH_SEED", "99")))
    path = tmp_path / "store"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    best_durable = 0
    for iteration in range(iterations):
        process = subprocess.Popen(
            [sys.executable, str(WRITER), str(path), str(rng.randrange(1 << 30))],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        durable = [0]
        opened = threading.Event()

        def reader(
            proc: subprocess.Popen[bytes] = process,
            seen: list[int] = durable,
            ready: threading.Event = opened,
        ) -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                word, _, value = line.decode().partition(" ")
                if word == "durable":
                    seen[0] = max(seen[0], int(value))
                elif word == "opened":
                    ready.set()

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        assert opened.wait(30), process.stderr.read().decode() if process.stderr else ""
        time.sleep(rng.uniform(0.05, 0.6))
        process.send_signal(signal.SIGKILL)
        process.wait(30)
        thread.join(10)
        stderr = process.stderr.read().decode() if process.stderr else ""
        assert process.returncode == -signal.SIGKILL, stderr
        best_durable = max(best_durable, durable[0])
        with open_aof(path) as aof:
            assert aof.first_index == 1
            last = aof.last_index
            assert last >= best_durable, (
                f"iteration {iteration}: {best_durable} was printed durable, log ends at {last}"
            )
            views = aof.read_range(1, last + 1)
            assert len(views) == last
            for index in range(max(1, last - 300), last + 1):
                assert bytes(views[index - 1]) == payload_for(index), f"record {index}"
            step = max(1, last // 200)
            for index in range(1, last + 1, step):
                assert bytes(views[index - 1]) == payload_for(index), f"record {index}"
            expected = np.array([header_for(i) for i in range(1, last + 1)], HEADER_DTYPE)
            assert aof.headers(1, last + 1).tobytes() == expected.tobytes()
            best_durable = last  # reopen + close synced everything
        for leftover in path.iterdir():
            assert not leftover.name.startswith(".faultyio")


def test_sync_target_above_truncated_tail_does_not_livelock(tmp_path: Path) -> None:
    # Group commit after truncate_after: a flush request whose target was taken before
    # truncate_after lowered the tail (the background flusher's written_index(), or a
    # sync() racing the truncation) must finish, not spin forever; close() must return.
    hung = 0
    for attempt in range(30):
        aof = open_aof(tmp_path / f"a{attempt}", FileIO(), autosync=True)
        for round_no in range(5):
            aof.append_batch([b"r%d" % i for i in range(200)])
            aof.truncate_after(aof.last_index - 150 - round_no)
        try:
            close_or_unstick(aof)
        except AssertionError:
            hung += 1
    assert hung == 0, f"close() hung in {hung} of 30 attempts"


def test_crash_while_creating_store_leaves_it_openable(tmp_path: Path) -> None:
    # DESIGN "Faults" / FORMAT 1 ("*.tmp in-flight temporaries; deleted at open"): a
    # power loss while creating the store can leave LOCK and aof.meta.tmp without
    # aof.meta. Nothing was ever durable; the directory must open as a new store, not
    # be rejected as foreign.
    path = tmp_path / "store"
    io = FaultyIO(real_sync=False)
    io.crash_before("rename", "aof.meta")
    with pytest.raises(SegstoreError):
        open_aof(path, io)
    (path / "aof.meta.tmp").write_bytes(b"half")  # the temp's creation reached the disk
    with open_aof(path) as aof:
        assert aof.append(b"first") == 1
        aof.sync()
    with open_aof(path) as aof:
        assert bytes(aof.read(1)) == b"first"


def test_leftover_temp_files_do_not_race_with_new_temp_files(tmp_path: Path) -> None:
    # FORMAT 1 / 2: open deletes leftover *.tmp files, and then writes aof.meta through
    # aof.meta.tmp (epoch bump) and sidecars through *.idx.tmp. Deleting the leftovers
    # must not delete the new temporaries (open or the first append then fails).
    path = tmp_path / "store"
    with open_aof(path) as aof:
        aof.append_batch([b"%d" % i * 500 for i in range(300)])
    failures = []
    for attempt in range(25):
        (path / "aof.meta.tmp").write_bytes(b"leftover from a crash")
        (path / f"{attempt:020d}.idx.tmp").write_bytes(b"leftover")
        try:
            with open_aof(path) as aof:
                aof.append(b"x")
                aof.sync()
        except SegstoreError as exc:
            failures.append(f"attempt {attempt}: {exc!r}")
    assert not failures, failures[:3]

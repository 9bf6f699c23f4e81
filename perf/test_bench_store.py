"""pytest-benchmark versions of the SegmentedLogStore workloads S1-S5 (store_workloads.py)
at small sizes.

Run with the rest of the gate: ``pytest perf/ --benchmark-only`` (never collected by the
normal test run). ``perf/compare_store.py`` is the full-size report with the baselines
and targets; here each benchmark's group is its workload id, so a saved run can be
compared with ``--benchmark-compare``.
"""

from __future__ import annotations

import itertools
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import store_workloads as sw
import workloads as wl
from pytest_benchmark.fixture import BenchmarkFixture

from segstore.raft import LogEntry, SegmentedLogStore

APPEND_ENTRIES = 4_096
READ_ENTRIES = 20_000
S3_READS = 2_000
S4_CALLS = 200
S5_ENTRIES = 50_000
ROUNDS_SLOW = 5


def _pedantic(benchmark: BenchmarkFixture, target: Callable[..., Any], **kwargs: Any) -> Any:
    """``benchmark.pedantic`` (untyped upstream) behind a typed signature."""
    return benchmark.pedantic(target, **kwargs)  # type: ignore[no-untyped-call]


@pytest.fixture
def opened() -> Iterator[list[SegmentedLogStore]]:
    """Stores opened during a test; closed (untimed) at setup of the next round/teardown."""
    stores: list[SegmentedLogStore] = []
    yield stores
    for s in stores:
        s.close()


def _close_all(opened: list[SegmentedLogStore]) -> None:
    for s in opened:
        s.close()
    opened.clear()


@pytest.fixture(scope="module")
def work() -> list[LogEntry]:
    return sw.make_entries(APPEND_ENTRIES)


@pytest.fixture
def read_store(scratch_dir: Path) -> Iterator[SegmentedLogStore]:
    """A closed and reopened ``READ_ENTRIES`` store (S3, S4)."""
    path = scratch_dir / "reads"
    store = sw.open_store(path)
    try:
        for chunk in sw.entry_batches(READ_ENTRIES, 1_024):
            for entry in chunk:
                store.append(entry)
            store.end_of_append_batch(store.next_slot() - len(chunk), len(chunk))
    finally:
        store.close()
    store = sw.open_store(path)
    try:
        store.entry_at(READ_ENTRIES)
        yield store
    finally:
        store.close()


def test_s1_append(
    benchmark: BenchmarkFixture,
    scratch_dir: Path,
    opened: list[SegmentedLogStore],
    work: list[LogEntry],
) -> None:
    benchmark.group = f"S1 append x{sw.S1_BATCH} + end_of_append_batch ({APPEND_ENTRIES})"
    counter = itertools.count()

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        _close_all(opened)
        opened.append(sw.open_store(scratch_dir / f"s1-{next(counter)}"))
        return (opened[0],), {}

    def run(store: SegmentedLogStore) -> int:
        sw._drive(store, work, sw.S1_BATCH)
        return store.last_durable_index()

    durable = _pedantic(benchmark, run, setup=setup, rounds=ROUNDS_SLOW, iterations=1)
    assert durable == APPEND_ENTRIES


def test_s2_parallel_append(
    benchmark: BenchmarkFixture,
    scratch_dir: Path,
    opened: list[SegmentedLogStore],
    work: list[LogEntry],
) -> None:
    benchmark.group = f"S2 parallel append until callback reports durable ({APPEND_ENTRIES})"
    counter = itertools.count()
    reached = threading.Event()

    def notify(ok: bool) -> None:
        if not ok or (opened and opened[0].last_durable_index() >= APPEND_ENTRIES):
            reached.set()

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        _close_all(opened)
        reached.clear()
        opened.append(sw.open_store(scratch_dir / f"s2-{next(counter)}", parallel=True))
        opened[0].set_notify_log_append_completion(notify)
        return (opened[0],), {}

    def run(store: SegmentedLogStore) -> int:
        sw._drive(store, work, sw.S1_BATCH)
        assert reached.wait(60)
        return store.last_durable_index()

    durable = _pedantic(benchmark, run, setup=setup, rounds=ROUNDS_SLOW, iterations=1)
    assert durable == APPEND_ENTRIES


def test_s3_entry_at(benchmark: BenchmarkFixture, read_store: SegmentedLogStore) -> None:
    benchmark.group = f"S3 {S3_READS} random entry_at of {READ_ENTRIES}"
    idx: list[int] = (
        np.random.default_rng(wl.SEED + 11).integers(1, READ_ENTRIES + 1, S3_READS).tolist()
    )
    entry_at = read_store.entry_at

    def reads() -> None:
        for i in idx:
            entry_at(i)

    benchmark(reads)
    sw.verify_store(read_store, idx[:32], sw.PARTITIONS)


def test_s4_log_entries(benchmark: BenchmarkFixture, read_store: SegmentedLogStore) -> None:
    benchmark.group = f"S4 {S4_CALLS} log_entries of {sw.S4_SPAN} of {READ_ENTRIES}"
    span = sw.S4_SPAN
    starts: list[int] = (
        np.random.default_rng(wl.SEED + 12).integers(1, READ_ENTRIES - span + 2, S4_CALLS).tolist()
    )
    log_entries = read_store.log_entries

    def reads() -> int:
        total = 0
        for s in starts:
            got = log_entries(s, s + span)
            assert got is not None
            total += len(got)
        return total

    assert benchmark(reads) == S4_CALLS * span


@pytest.mark.parametrize("variant", ["killed", "clean"])
def test_s5_reopen(
    benchmark: BenchmarkFixture,
    scratch_dir: Path,
    opened: list[SegmentedLogStore],
    variant: str,
) -> None:
    """Reopen until ``entry_at(last)`` works: a fresh copy of a SIGKILLed writer's store
    per round ("killed": recovery routes again), or of that store after a clean close."""
    benchmark.group = f"S5 reopen {S5_ENTRIES} entries ({variant})"
    template = scratch_dir / "template"
    durable = sw.write_and_kill(template, S5_ENTRIES)
    if variant == "clean":
        sw.open_store(template).close()
    counter = itertools.count()

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        _close_all(opened)
        path = scratch_dir / f"round-{next(counter)}"
        shutil.copytree(template, path)
        return (path,), {}

    def reopen(path: Path) -> int:
        store = SegmentedLogStore.open(path, partitions=sw.PARTITIONS)
        opened.append(store)
        last = store.next_slot() - 1
        assert store.entry_at(last) is not None
        return last

    last = _pedantic(benchmark, reopen, setup=setup, rounds=ROUNDS_SLOW, iterations=1)
    assert last >= durable

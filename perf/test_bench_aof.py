"""pytest-benchmark versions of workloads W1-W8 (workloads.py) at small sizes, per store.

Run: ``pytest perf/ --benchmark-only`` (the release gate; pair it with
``--benchmark-autosave`` / ``--benchmark-compare --benchmark-compare-fail=median:15%``).
Sizes are small so the whole file runs in well under a minute; ``perf/compare.py`` is the
full-size, side-by-side report. Each benchmark's group is its workload id, so
pytest-benchmark's table lines the stores up against each other.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import workloads as wl
from baselines import STORES, LogLike, segstore_import_error
from pytest_benchmark.fixture import BenchmarkFixture

W1_ENTRIES = 4_096
W3_ENTRIES = 20_000
W3_READS = 2_000
BIG_ENTRIES = 50_000
ROUNDS_SLOW = 5

Factory = Callable[[Path], LogLike]


@pytest.fixture(params=list(STORES))
def factory(request: pytest.FixtureRequest) -> Factory:
    name: str = request.param
    if name == "segstore":
        missing = segstore_import_error()
        if missing:
            # A release gate must not pass without measuring segstore: fail, loudly.
            pytest.fail(f"segstore.aof not importable (build the extensions): {missing}")
    return STORES[name]


@pytest.fixture
def opened(scratch_dir: Path) -> Iterator[list[LogLike]]:
    """Stores opened during a test; closed (untimed) at teardown."""
    stores: list[LogLike] = []
    yield stores
    for s in stores:
        s.close()


def _fresh(
    factory: Factory, scratch_dir: Path, opened: list[LogLike], template: Path | None = None
) -> Callable[[], tuple[tuple[Any, ...], dict[str, Any]]]:
    """A pedantic ``setup``: a new store (a copy of ``template`` if given) per round."""
    counter = itertools.count()

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        for s in opened:
            s.close()
        opened.clear()
        path = scratch_dir / f"round-{next(counter)}"
        if template is not None:
            shutil.copytree(template, path)
        store = factory(path)
        opened.append(store)
        return (store,), {}

    return setup


def _pedantic(benchmark: BenchmarkFixture, target: Callable[..., Any], **kwargs: Any) -> Any:
    """``benchmark.pedantic`` (untyped upstream) behind a typed signature."""
    return benchmark.pedantic(target, **kwargs)  # type: ignore[no-untyped-call]


def _template(factory: Factory, path: Path, entries: int) -> Path:
    store = factory(path)
    try:
        wl.fill(store, entries)
    finally:
        store.close()
    return path


def _append_all(work: list[list[bytes]]) -> Callable[[LogLike], int]:
    def run(store: LogLike) -> int:
        append_batch, sync = store.append_batch, store.sync
        for b in work:
            append_batch(b)
            sync()
        return store.last_index

    return run


def test_w1_batched_append(
    benchmark: BenchmarkFixture, factory: Factory, scratch_dir: Path, opened: list[LogLike]
) -> None:
    benchmark.group = "W1 append batch 64 + sync (4096 entries)"
    run = _append_all(wl.batches(W1_ENTRIES, wl.W1_BATCH))
    setup = _fresh(factory, scratch_dir, opened)
    last = _pedantic(benchmark, run, setup=setup, rounds=ROUNDS_SLOW, iterations=1)
    assert last == W1_ENTRIES


def test_w2_append_sync_latency(
    benchmark: BenchmarkFixture, factory: Factory, scratch_dir: Path
) -> None:
    benchmark.group = "W2 single append + sync"
    store = factory(scratch_dir / "w2")
    pool = wl.payload_pool()
    try:
        payloads = itertools.cycle(pool)
        append, sync = store.append, store.sync

        def one() -> int:
            append(next(payloads))
            return sync()

        _pedantic(benchmark, one, rounds=500, iterations=1, warmup_rounds=16)
        assert store.last_index == 516
    finally:
        store.close()


def test_w3_random_read(benchmark: BenchmarkFixture, factory: Factory, scratch_dir: Path) -> None:
    benchmark.group = f"W3 {W3_READS} random reads after reopen"
    path = _template(factory, scratch_dir / "w3", W3_ENTRIES)
    idx: list[int] = (
        np.random.default_rng(wl.SEED + 3).integers(1, W3_ENTRIES + 1, W3_READS).tolist()
    )
    store = factory(path)
    try:
        read = store.read

        def reads() -> None:
            for i in idx:
                read(i)

        benchmark(reads)
        wl.verify(store, idx[:32])
    finally:
        store.close()


@pytest.mark.parametrize("mode", ["loop", "range"])
def test_w4_scan(
    benchmark: BenchmarkFixture, factory: Factory, scratch_dir: Path, mode: str
) -> None:
    benchmark.group = f"W4 full scan of {W3_ENTRIES} ({mode})"
    path = _template(factory, scratch_dir / "w4", W3_ENTRIES)
    store = factory(path)
    try:
        first, last = store.first_index, store.last_index

        def scan_loop() -> int:
            read = store.read
            return sum(len(read(i)) for i in range(first, last + 1))

        def scan_range() -> int:
            read_range = store.read_range
            total = 0
            for lo in range(first, last + 1, wl.RANGE_CHUNK):
                for r in read_range(lo, min(lo + wl.RANGE_CHUNK, last + 1)):
                    total += len(r)
            return total

        total = benchmark(scan_loop if mode == "loop" else scan_range)
        assert total == W3_ENTRIES * wl.PAYLOAD_BYTES
    finally:
        store.close()


def test_w5_reopen(
    benchmark: BenchmarkFixture, factory: Factory, scratch_dir: Path, opened: list[LogLike]
) -> None:
    benchmark.group = f"W5 reopen {BIG_ENTRIES} entries + read last"
    path = _template(factory, scratch_dir / "w5", BIG_ENTRIES)

    def close_previous() -> None:
        for s in opened:
            s.close()
        opened.clear()

    def reopen() -> int:
        store = factory(path)
        opened.append(store)
        return len(store.read(store.last_index))

    n = _pedantic(benchmark, reopen, setup=close_previous, rounds=ROUNDS_SLOW, iterations=1)
    assert n == wl.PAYLOAD_BYTES


def test_w6_truncate_before(
    benchmark: BenchmarkFixture, factory: Factory, scratch_dir: Path, opened: list[LogLike]
) -> None:
    benchmark.group = f"W6 truncate_before half of {BIG_ENTRIES}"
    template = _template(factory, scratch_dir / "template", BIG_ENTRIES)
    cut = 1 + BIG_ENTRIES // 2

    def truncate(store: LogLike) -> int:
        store.truncate_before(cut)
        return store.first_index

    setup = _fresh(factory, scratch_dir, opened, template)
    first = _pedantic(benchmark, truncate, setup=setup, rounds=ROUNDS_SLOW, iterations=1)
    assert first == cut
    wl.verify(opened[0], [cut, BIG_ENTRIES])


def test_w7_truncate_after(
    benchmark: BenchmarkFixture, factory: Factory, scratch_dir: Path, opened: list[LogLike]
) -> None:
    benchmark.group = f"W7 truncate_after last 10% of {BIG_ENTRIES}"
    template = _template(factory, scratch_dir / "template", BIG_ENTRIES)
    keep = BIG_ENTRIES - BIG_ENTRIES // 10

    def truncate(store: LogLike) -> int:
        store.truncate_after(keep)
        return store.last_index

    setup = _fresh(factory, scratch_dir, opened, template)
    last = _pedantic(benchmark, truncate, setup=setup, rounds=ROUNDS_SLOW, iterations=1)
    assert last == keep
    wl.verify(opened[0], [1, keep])


def test_w8_bulk_append(
    benchmark: BenchmarkFixture, factory: Factory, scratch_dir: Path, opened: list[LogLike]
) -> None:
    benchmark.group = f"W8 append batch 1024 + sync ({BIG_ENTRIES} entries)"
    run = _append_all(wl.batches(BIG_ENTRIES, wl.W8_BATCH))
    setup = _fresh(factory, scratch_dir, opened)
    last = _pedantic(benchmark, run, setup=setup, rounds=3, iterations=1)
    assert last == BIG_ENTRIES

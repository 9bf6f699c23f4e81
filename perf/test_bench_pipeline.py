"""pytest-benchmark versions of the embedded-pipeline workloads P1-P3
(pipeline_workloads.py) at small sizes.

Run with the rest of the gate: ``pytest perf/ --benchmark-only`` (never collected by the
normal test run: ``testpaths`` is ``tests``). ``perf/compare_pipeline.py`` is the
full-size report beside raw W1, with the latency percentiles; here each benchmark's
group is its workload id, so a saved run can be compared with ``--benchmark-compare``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pipeline_workloads as pw
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from segstore.pipeline import Pipeline

ENTRIES = 8_192
ROUNDS_SLOW = 5
ROUND_TRIPS = 200


def _pedantic(benchmark: BenchmarkFixture, target: Callable[..., Any], **kwargs: Any) -> Any:
    """``benchmark.pedantic`` (untyped upstream) behind a typed signature."""
    return benchmark.pedantic(target, **kwargs)  # type: ignore[no-untyped-call]


@pytest.fixture
def opened() -> Iterator[list[Pipeline]]:
    """Pipelines opened during a test; closed (untimed) at the next setup / teardown."""
    pipes: list[Pipeline] = []
    yield pipes
    for p in pipes:
        p.close()


def _close_all(opened: list[Pipeline]) -> None:
    for p in opened:
        p.close()
    opened.clear()


@pytest.mark.parametrize("batch", [pw.P1_BATCH, pw.P1_BIG_BATCH])
def test_p1_throughput(
    benchmark: BenchmarkFixture, scratch_dir: Path, opened: list[Pipeline], batch: int
) -> None:
    """P1: submit ``ENTRIES`` entries over 64 partitions until all are applied; a fresh
    pipeline per round."""
    benchmark.group = f"P1 submit_many x{batch} until applied ({ENTRIES})"
    work = pw.make_batches(ENTRIES, batch)
    counter = itertools.count()

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        _close_all(opened)
        opened.append(pw.open_pipeline(scratch_dir / f"p1-{batch}-{next(counter)}"))
        return (opened[0],), {}

    def run(pipe: Pipeline) -> int:
        return pw.drive(pipe, work)[0]

    last = _pedantic(benchmark, run, setup=setup, rounds=ROUNDS_SLOW, iterations=1)
    assert last == ENTRIES
    pw.verify(opened[0], ENTRIES, 1)


def test_p3_round_trip(benchmark: BenchmarkFixture, scratch_dir: Path) -> None:
    """P3 at its lowest load: one batch of 64 (one entry per partition) on an idle
    pipeline, from ``submit_many`` until the ``on_applied`` callbacks have seen all 64."""
    benchmark.group = f"P3 idle round trip, submit_many x{pw.P1_BATCH} until applied"
    pipe = pw.open_pipeline(scratch_dir / "p3")
    try:
        event, arm = pw.applied_event(pipe)
        batches = itertools.cycle(pw.make_batches(pw.P1_BATCH * 64, pw.P1_BATCH))

        submitted: list[int] = []

        def one() -> int:
            pids, payloads = next(batches)
            arm(len(pids))
            last = pipe.submit_many(pids, payloads)
            assert event.wait(pw.WAIT_S)
            submitted.append(last)
            return last

        _pedantic(benchmark, one, rounds=ROUND_TRIPS, iterations=1, warmup_rounds=8)
        # (--benchmark-disable runs it once: wait for what was submitted, not a count)
        assert submitted and pipe.wait_applied(submitted[-1], pw.WAIT_S)
        assert submitted[-1] == len(submitted) * pw.P1_BATCH
    finally:
        pipe.close()

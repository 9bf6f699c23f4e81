"""Workloads P1-P3 of issue #4 section 6: the embedded pipeline, end to end on one node.

``segstore.pipeline.Pipeline`` with 64 partitions and trivial state machines
(:class:`TrivialMachine`: ``apply`` keeps the index and a reference to the payload, so
the check afterwards can see the last entry each partition applied). Every entry is a
256-byte payload from workloads.py's pool; entry ``i`` (1-based) goes to partition
``(i - 1) % 64`` and carries pool entry ``(i - 1) % POOL_ENTRIES``. The producer calls
``submit_many`` (one append batch, one group commit each); the path measured is
append -> durable (the store's parallel group commit) -> partition log (router) and
apply (the pipeline's driver hands durable records to the applier's workers).
Opening and closing the pipeline, and building the batches, are untimed.

| id | what | metric |
| --- | --- | --- |
| P1 | 200,000 entries, ``submit_many`` batches of 64, as fast as it goes, from the | entries/s |
|    | first submit until ``wait_applied(last)``; no ``on_applied`` callback | |
| P1 | the same with batches of 1,024 (context: the per-batch costs amortised) | entries/s |
| P2 | P1 (batches of 64) with an ``on_applied`` callback stamping each applied run: | entries/s |
|    | latency at saturation, i.e. mostly queueing behind the producer (context) | p50/p99 us |
| P3 | 50,000 entries, batches of 64, offered at 20,000 entries/s (below P1): latency | p50/p99 us |
|    | from ``submit_many`` to the end of the applied run holding the entry | |

Latency without per-entry Python work on the hot path: the producer stamps each batch
(one ``perf_counter`` per ``submit_many``, taken just before the call) and the
``on_applied`` callback stamps each applied *run* (up to ``APPLY_RUN_MAX`` consecutive
entries of one partition, stamped once after the run's last apply). The per-entry
latencies are computed afterwards with numpy: an entry's latency is its run's stamp
minus its batch's stamp. So every entry is charged until the end of its run, an upper
bound by at most one run's applies (a few us for these trivial applies).
"""

from __future__ import annotations

import gc
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PERF_DIR = Path(__file__).resolve().parent
REPO_ROOT = PERF_DIR.parent
for _p in (str(PERF_DIR), str(REPO_ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import numpy as np  # noqa: E402
import workloads as wl  # noqa: E402

from segstore.applier import PartitionStateMachine  # noqa: E402
from segstore.pipeline import Pipeline  # noqa: E402

Metrics = dict[str, float]
Batch = tuple[list[int], list[bytes]]

PARTITIONS = 64
P1_ENTRIES, P1_BATCH, P1_BIG_BATCH = 200_000, 64, 1_024
P3_ENTRIES, P3_RATE = 50_000, 20_000.0
TARGET_ENTRIES_PER_S = 100_000
WAIT_S = 300.0

clock = wl.clock


class TrivialMachine(PartitionStateMachine):
    """A state machine that does almost nothing: it remembers the last entry."""

    __slots__ = ("index", "payload")

    def __init__(self) -> None:
        self.index = 0
        self.payload = b""

    def apply(self, partition_index: int, payload: bytes) -> None:
        self.index = partition_index
        self.payload = payload

    def snapshot(self) -> bytes:
        return self.index.to_bytes(8, "little")

    def restore(self, snapshot: bytes) -> None:
        self.index = int.from_bytes(snapshot, "little")


def factory(_pid: int) -> PartitionStateMachine:
    return TrivialMachine()


def open_pipeline(path: Path, partitions: int = PARTITIONS) -> Pipeline:
    return Pipeline.open(path, partitions=partitions, state_machine_factory=factory)


def make_batches(entries: int, batch: int, partitions: int = PARTITIONS) -> list[Batch]:
    """``(partition_ids, payloads)`` for entries ``1 .. entries`` in batches (untimed)."""
    pool = wl.payload_pool()
    out: list[Batch] = []
    for lo in range(1, entries + 1, batch):
        hi = min(lo + batch, entries + 1)
        out.append(
            (
                [(i - 1) % partitions for i in range(lo, hi)],
                [pool[(i - 1) % wl.POOL_ENTRIES] for i in range(lo, hi)],
            )
        )
    return out


def verify(pipe: Pipeline, entries: int, first_raft: int) -> None:
    """Raise unless every partition applied all its entries, the last one correctly."""
    parts = pipe.partition_count
    for pid in range(parts):
        want = len(range(pid, entries, parts))  # entries i with (i - 1) % parts == pid
        sm = pipe.applier.state_machine(pid)
        assert isinstance(sm, TrivialMachine)
        status = pipe.status(pid)
        if sm.index != want or status.applied_index != want or status.error is not None:
            raise AssertionError(
                f"partition {pid}: applied {sm.index} / {status.applied_index} of {want} "
                f"({status.error!r})"
            )
        if want:
            last_entry = pid + 1 + (want - 1) * parts
            if sm.payload != wl.payload_for(last_entry):
                raise AssertionError(f"partition {pid}: wrong payload for entry {last_entry}")
            if status.applied_raft_index != first_raft + last_entry - 1:
                raise AssertionError(
                    f"partition {pid}: applied raft {status.applied_raft_index}, "
                    f"expected {first_raft + last_entry - 1}"
                )


class RunStamps:
    """An ``on_applied`` callback recording ``(pid, first_raft, count, time)`` per run."""

    def __init__(self) -> None:
        self.runs: list[tuple[int, int, int, float]] = []
        self._append = self.runs.append  # list.append is atomic under the GIL

    def __call__(self, pid: int, first_index: int, first_raft: int, results: list[Any]) -> None:
        self._append((pid, first_raft, len(results), clock()))


def latencies_us(
    runs: list[tuple[int, int, int, float]],
    batch_starts: np.ndarray,
    batch_stamps: np.ndarray,
    partitions: int = PARTITIONS,
) -> np.ndarray:
    """Per-entry latency (us) from its batch's stamp to its run's stamp.

    Entries of one run are consecutive in their partition, so ``partitions`` raft
    indices apart (round-robin placement); a batch covers raft indices from its start
    up to the next batch's start."""
    arr = np.array(runs, dtype=np.float64).reshape(-1, 4)
    counts = arr[:, 2].astype(np.int64)
    total = int(counts.sum())
    run_of = np.repeat(np.arange(len(arr)), counts)
    offset = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    rafts = arr[run_of, 1].astype(np.int64) + offset * partitions
    batch_of = np.searchsorted(batch_starts, rafts, side="right") - 1
    if (batch_of < 0).any():
        raise AssertionError("an applied raft index precedes every submitted batch")
    lat: np.ndarray = (arr[run_of, 3] - batch_stamps[batch_of]) * 1e6
    return lat


def _percentiles(lat: np.ndarray, prefix: str) -> Metrics:
    return {
        f"{prefix}.p50_us": float(np.percentile(lat, 50)),
        f"{prefix}.p99_us": float(np.percentile(lat, 99)),
        f"{prefix}.max_us": float(lat.max()),
    }


def drive(
    pipe: Pipeline,
    work: list[Batch],
    *,
    rate: float | None = None,
    stamps: list[float] | None = None,
    starts: list[int] | None = None,
) -> tuple[int, float]:
    """Submit every batch (paced at ``rate`` entries/s if given), then wait until the
    last one is applied; return ``(last raft index, seconds from the first submit)``.
    ``stamps`` / ``starts`` collect each batch's submit time and first raft index."""
    submit_many = pipe.submit_many
    last = 0
    gc.collect()
    t0 = clock()
    if rate is None and stamps is None:
        for pids, payloads in work:
            last = submit_many(pids, payloads)
    else:
        due = t0
        for pids, payloads in work:
            if rate is not None:
                now = clock()
                if due > now:
                    time.sleep(due - now)
                due += len(pids) / rate
            t = clock()
            last = submit_many(pids, payloads)
            if stamps is not None and starts is not None:
                stamps.append(t)
                starts.append(last - len(pids) + 1)
    if not pipe.wait_applied(last, WAIT_S):
        raise AssertionError(f"raft index {last} not applied within {WAIT_S} s")
    return last, clock() - t0


def _first_raft(pipe: Pipeline) -> int:
    return pipe.store.next_slot()


def p1_throughput(
    root: Path, *, entries: int = P1_ENTRIES, batch: int = P1_BATCH, key: str = "P1"
) -> Metrics:
    """Saturated throughput, no callbacks: entries/s from the first submit to applied."""
    work = make_batches(entries, batch)
    pipe = open_pipeline(root / "p1")
    try:
        first = _first_raft(pipe)
        last, elapsed = drive(pipe, work)
        if last != first + entries - 1:
            raise AssertionError(f"last raft {last}, expected {first + entries - 1}")
        verify(pipe, entries, first)
    finally:
        pipe.close()
    return {f"{key}.entries_per_s": entries / elapsed}


def p_latency(
    root: Path,
    *,
    entries: int,
    batch: int = P1_BATCH,
    rate: float | None,
    key: str,
) -> Metrics:
    """Latency from submit to apply via ``on_applied`` run stamps (P2: ``rate`` None,
    saturated; P3: paced). Also reports the achieved entries/s."""
    work = make_batches(entries, batch)
    pipe = open_pipeline(root / key.lower())
    stamps: list[float] = []
    starts: list[int] = []
    recorder = RunStamps()
    try:
        pipe.applier.on_applied(recorder)
        first = _first_raft(pipe)
        _, elapsed = drive(pipe, work, rate=rate, stamps=stamps, starts=starts)
        verify(pipe, entries, first)
    finally:
        pipe.close()
    lat = latencies_us(
        recorder.runs, np.array(starts, dtype=np.int64), np.array(stamps, dtype=np.float64)
    )
    if len(lat) != entries:
        raise AssertionError(f"{len(lat)} entries stamped as applied, expected {entries}")
    out = {f"{key}.entries_per_s": entries / elapsed}
    out.update(_percentiles(lat, key))
    if rate is not None:
        out[f"{key}.offered_per_s"] = rate
    return out


def p2_saturated_latency(root: Path, *, entries: int = P1_ENTRIES) -> Metrics:
    return p_latency(root, entries=entries, rate=None, key="P2")


def p3_paced_latency(
    root: Path, *, entries: int = P3_ENTRIES, rate: float = P3_RATE, batch: int = P1_BATCH
) -> Metrics:
    return p_latency(root, entries=entries, batch=batch, rate=rate, key="P3")


def applied_event(pipe: Pipeline) -> tuple[threading.Event, Callable[[int], None]]:
    """An event set once ``target`` entries were applied (counted per run), and a
    function arming it for a new target; for the pytest-benchmark round trips."""
    event = threading.Event()
    lock = threading.Lock()
    state = [0, 0]  # applied so far, target

    def on_applied(pid: int, first_index: int, first_raft: int, results: list[Any]) -> None:
        with lock:
            state[0] += len(results)
            if state[0] >= state[1]:
                event.set()

    def arm(more: int) -> None:
        with lock:
            state[1] = state[0] + more
            event.clear()

    pipe.applier.on_applied(on_applied)
    return event, arm

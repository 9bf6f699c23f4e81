"""Workloads S1-S5 of issue #3 section 6: the ``SegmentedLogStore`` (segstore/raft).

The store is driven the way NuRaft drives a ``log_store``: ``append(LogEntry)`` per entry,
``end_of_append_batch(start, count)`` per batch. Every entry is an ``app_log`` entry whose
value is ``encode_entry(partition_id, payload)`` (16-byte partition header + payload);
payloads are the 256-byte pool of workloads.py. Entry ``i`` (1-based) goes to partition
``(i - 1) % partitions`` and carries pool entry ``(i - 1) % POOL_ENTRIES``, so any entry
can be checked from its index alone (:func:`value_for`). Timed sections exclude building
the ``LogEntry`` objects.

| id | what | metric |
| --- | --- | --- |
| S1 | 200,000 appends over 64 partitions, ``end_of_append_batch`` per 64 (durable) | entries/s |
| S2 | the same, ``parallel=True``, until the callback reports the last index durable | entries/s |
| S3 | uniform random ``entry_at`` after flush + close + reopen of S1's store | reads/s |
| S4 | ``log_entries(s, s + 100)`` at uniform random starts, same store | entries/s |
| S5 | reopen a 1,000,000-entry store until ``entry_at(last)`` works: after a kill -9 of | s |
|    | a writer process mid-load (routing redone), then after a clean close | s |

The baselines (raw W1, the Aof's W5, ...) come from workloads.py; ``compare_store.py``
runs them in the same process and repetition. This file is also the kill -9 writer:
``python store_workloads.py write DIR ENTRIES PARTITIONS BATCH`` (see :func:`writer_main`).
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

PERF_DIR = Path(__file__).resolve().parent
REPO_ROOT = PERF_DIR.parent
for _p in (str(PERF_DIR), str(REPO_ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import numpy as np  # noqa: E402
import workloads as wl  # noqa: E402

from segstore.raft import LogEntry, SegmentedLogStore, encode_entry  # noqa: E402

Metrics = dict[str, float]

PARTITIONS = 64
S1_ENTRIES, S1_BATCH = 200_000, 64
S3_READS = 200_000
S4_CALLS, S4_SPAN = 20_000, 100
S5_ENTRIES = 1_000_000
S5_WRITER_BATCH = 1_024  # the kill -9 writer's batch (untimed load, NuRaft-style calls)
READY = "READY"

clock = wl.clock


# -- data ------------------------------------------------------------------------------


def value_for(index: int, partitions: int = PARTITIONS) -> bytes:
    """The app_log value of 1-based entry ``index``: partition header + pool payload."""
    return encode_entry((index - 1) % partitions, wl.payload_for(index))


def make_entries(
    count: int, start: int = 1, partitions: int = PARTITIONS, term: int = 1
) -> list[LogEntry]:
    """``LogEntry`` objects for indices ``start .. start + count - 1`` (untimed setup)."""
    return [LogEntry(term, value_for(i, partitions)) for i in range(start, start + count)]


def entry_batches(
    count: int, batch: int, start: int = 1, partitions: int = PARTITIONS
) -> Iterator[list[LogEntry]]:
    """:func:`make_entries` in lists of ``batch``, built lazily (for big loads)."""
    for lo in range(start, start + count, batch):
        yield make_entries(min(batch, start + count - lo), lo, partitions)


def verify_store(store: SegmentedLogStore, indices: list[int], partitions: int) -> None:
    """Raise if an entry is not what the workloads wrote at its index."""
    for i in indices:
        entry = store.entry_at(i)
        if entry is None or entry.value != value_for(i, partitions) or entry.term != 1:
            raise AssertionError(f"SegmentedLogStore: entry {i} is wrong ({entry!r:.80})")


def _sample(first: int, last: int, n: int = 64) -> list[int]:
    rng = np.random.default_rng(wl.SEED + 7)
    picks: list[int] = rng.integers(first, last + 1, size=n).tolist()
    return sorted({first, last, *picks})


def open_store(
    path: Path, *, parallel: bool = False, partitions: int = PARTITIONS, notify: object = None
) -> SegmentedLogStore:
    return SegmentedLogStore.open(
        path,
        partitions=partitions,
        parallel=parallel,
        notify_log_append_completion=notify,  # type: ignore[arg-type]
    )


# -- S1 / S2 ---------------------------------------------------------------------------


def _drive(store: SegmentedLogStore, work: list[LogEntry], batch: int) -> None:
    """NuRaft's write path: ``append`` per entry, ``end_of_append_batch`` per batch."""
    append, end = store.append, store.end_of_append_batch
    for lo in range(0, len(work), batch):
        chunk = work[lo : lo + batch]
        for entry in chunk:
            append(entry)
        end(lo + 1, len(chunk))


def s1_append(
    path: Path,
    *,
    entries: int = S1_ENTRIES,
    batch: int = S1_BATCH,
    partitions: int = PARTITIONS,
    work: list[LogEntry] | None = None,
) -> Metrics:
    """S1; leaves a flushed, closed ``entries`` store at ``path`` for S3/S4."""
    work = work if work is not None else make_entries(entries, partitions=partitions)
    store = open_store(path, partitions=partitions)
    try:
        gc.collect()
        t0 = clock()
        _drive(store, work, batch)
        elapsed = clock() - t0
        if store.last_durable_index() < entries:
            raise AssertionError(f"durable {store.last_durable_index()} < {entries}")
        verify_store(store, _sample(1, entries), partitions)
        store.flush()
    finally:
        store.close()
    return {"S1.entries_per_s": entries / elapsed}


def s2_parallel_append(
    path: Path,
    *,
    entries: int = S1_ENTRIES,
    batch: int = S1_BATCH,
    partitions: int = PARTITIONS,
    work: list[LogEntry] | None = None,
) -> Metrics:
    """S2: parallel mode; the clock stops in the callback that reports ``entries`` durable.

    Also reports how fast the append loop itself returned (``S2.submit_entries_per_s``).
    """
    work = work if work is not None else make_entries(entries, partitions=partitions)
    durable_at: list[float] = []
    reached = threading.Event()
    holder: list[SegmentedLogStore] = []
    failures: list[bool] = []

    def notify(ok: bool) -> None:
        if not ok:
            failures.append(ok)
            reached.set()
        elif holder and not reached.is_set() and holder[0].last_durable_index() >= entries:
            durable_at.append(clock())
            reached.set()

    store = open_store(path, parallel=True, partitions=partitions, notify=notify)
    holder.append(store)
    try:
        gc.collect()
        t0 = clock()
        _drive(store, work, batch)
        submitted = clock() - t0
        if not reached.wait(120):
            raise AssertionError(f"callback never reported {entries} durable")
        if failures:
            raise AssertionError("notify_log_append_completion(False)")
        elapsed = durable_at[0] - t0
        verify_store(store, _sample(1, entries), partitions)
    finally:
        store.close()
    return {
        "S2.entries_per_s": entries / elapsed,
        "S2.submit_entries_per_s": entries / submitted,
    }


# -- S3 / S4 ---------------------------------------------------------------------------


def s3_s4_reads(
    path: Path,
    *,
    entries: int,
    reads: int = S3_READS,
    calls: int = S4_CALLS,
    span: int = S4_SPAN,
    partitions: int = PARTITIONS,
) -> Metrics:
    """Reopen the closed ``entries`` store at ``path``; time random ``entry_at`` (S3) and
    ``log_entries`` of ``span`` entries at random starts (S4)."""
    rng = np.random.default_rng(wl.SEED + 11)
    idx: list[int] = rng.integers(1, entries + 1, size=reads).tolist()
    starts: list[int] = rng.integers(1, entries - span + 2, size=calls).tolist()
    out: Metrics = {}
    store = open_store(path, partitions=partitions)
    try:
        entry_at, log_entries = store.entry_at, store.log_entries
        entry_at(entries)  # everything is open and mapped; S5 times the reopen itself
        gc.collect()
        t0 = clock()
        for i in idx:
            entry_at(i)
        out["S3.reads_per_s"] = reads / (clock() - t0)
        gc.collect()
        t0 = clock()
        for s in starts:
            log_entries(s, s + span)
        out["S4.entries_per_s"] = calls * span / (clock() - t0)
        got = log_entries(starts[0], starts[0] + span)
        if got is None or [e.value for e in got] != [
            value_for(i, partitions) for i in range(starts[0], starts[0] + span)
        ]:
            raise AssertionError("log_entries returned the wrong entries")
        verify_store(store, _sample(1, entries), partitions)
    finally:
        store.close()
    return out


# -- S5 --------------------------------------------------------------------------------


def writer_main(argv: list[str]) -> int:
    """The kill -9 writer: load ``ENTRIES`` entries in ``BATCH``-entry NuRaft batches
    (durable per batch), print ``READY <last>`` once they are durable, and keep loading
    the same way until killed (at most as much again)."""
    directory, entries, partitions, batch = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    store = open_store(Path(directory), partitions=partitions)
    next_index = store.next_slot()
    announced = False
    for chunk in entry_batches(2 * entries, batch, next_index, partitions):
        for entry in chunk:
            store.append(entry)
        store.end_of_append_batch(next_index, len(chunk))
        next_index += len(chunk)
        if not announced and store.last_durable_index() >= entries:
            print(f"{READY} {store.last_durable_index()}", flush=True)
            announced = True
    store.close()
    return 0


def write_and_kill(path: Path, entries: int, partitions: int = PARTITIONS) -> int:
    """Run the writer in a subprocess, SIGKILL it as soon as ``entries`` are durable
    (it is still loading); return the durable index it announced."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), str(PERF_DIR), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, str(Path(__file__).resolve()), "write", str(path), str(entries)]
    cmd += [str(partitions), str(S5_WRITER_BATCH)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    if not line.startswith(READY):
        raise AssertionError(f"writer exited ({proc.returncode}) before {entries} were durable")
    return int(line.split()[1])


def _timed_reopen(path: Path, partitions: int) -> tuple[float, SegmentedLogStore, int]:
    gc.collect()
    t0 = clock()
    store = SegmentedLogStore.open(path, partitions=partitions)
    last = store.next_slot() - 1
    if store.entry_at(last) is None:
        raise AssertionError(f"entry_at({last}) is None after reopen")
    return clock() - t0, store, last


def s5_reopen(root: Path, *, entries: int = S5_ENTRIES, partitions: int = PARTITIONS) -> Metrics:
    """S5: a writer subprocess loads ``entries`` and is SIGKILLed mid-load; time the reopen
    (recovery routes what the router had not checkpointed), close it cleanly (everything
    routed and checkpointed), and time the reopen again."""
    path = root / "s5"
    durable = write_and_kill(path, entries, partitions)
    out: Metrics = {}
    for variant in ("killed", "clean"):
        elapsed, store, last = _timed_reopen(path, partitions)
        try:
            if last < durable:
                raise AssertionError(f"{variant}: last {last} < announced durable {durable}")
            out[f"S5.{variant}_s"] = elapsed
            out[f"S5.{variant}_route_s"] = float(store.recovery_seconds)
            out[f"S5.{variant}_entries"] = float(last)
            verify_store(store, _sample(1, last, 16), partitions)
        finally:
            store.close()
    return out


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "write":
        raise SystemExit(writer_main(sys.argv[2:]))
    raise SystemExit("usage: store_workloads.py write DIR ENTRIES PARTITIONS BATCH")

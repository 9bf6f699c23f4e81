"""The benchmark workloads, written once against the common store interface of baselines.py.

Each workload takes a store factory (``path -> store``), a fresh directory it may fill, and
size knobs, and returns ``{metric_name: value}``. Timed sections exclude building the data
and creating the directory; a few records are checked afterwards (untimed) so a store that
is fast because it is wrong shows up as an error, not a win.

Payloads: 256 random bytes each, from a pool of ``POOL_ENTRIES`` distinct entries drawn
once with numpy from a fixed seed; record ``i`` (1-based, of a run) carries pool entry
``(i - 1) % POOL_ENTRIES``. The pool keeps memory flat at 1M entries; nothing in any store
can exploit the repetition (no store deduplicates or compresses).

| id | what | metric |
| --- | --- | --- |
| W1 | 200,000 appends in batches of 64, ``sync()`` after each batch | entries/s |
| W2 | 2,000 appends, each followed by its own ``sync()`` | p50 / p99 latency, us |
| W3 | 200,000 uniform random ``read(i)`` after reopen of a 200,000-entry log | reads/s |
| W4 | full sequential scan after reopen: ``read(i)`` loop, and ``read_range`` chunks | entries/s |
|    | (segstore also: ``read_range`` as zero-copy memoryviews, an extra row) | entries/s |
| W5 | reopen a 1,000,000-entry log until its last entry is read | seconds |
|    | (segstore also: in-memory index bytes per record after that reopen) | bytes |
| W6 | ``truncate_before`` half of that log | ms |
| W7 | ``truncate_after`` its last 10% (of the original count) | ms |
| W8 | 1,000,000 appends, batches of 1,024, ``sync()`` per batch (builds W5's log) | entries/s |
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from functools import cache
from pathlib import Path

import numpy as np
from baselines import LogLike

Factory = Callable[[Path], LogLike]
Metrics = dict[str, float]

PAYLOAD_BYTES = 256
POOL_ENTRIES = 65_536
SEED = 20_240_601
RANGE_CHUNK = 4_096

W1_ENTRIES, W1_BATCH = 200_000, 64
W2_ENTRIES = 2_000
W3_ENTRIES = W3_READS = 200_000
W5_ENTRIES, W8_BATCH = 1_000_000, 1_024

clock = time.perf_counter


@cache
def payload_pool() -> tuple[bytes, ...]:
    """The fixed pool of random payloads (generated once per process)."""
    rng = np.random.default_rng(SEED)
    arr = rng.integers(0, 256, size=(POOL_ENTRIES, PAYLOAD_BYTES), dtype=np.uint8)
    return tuple(row.tobytes() for row in arr)


def payload_for(index: int) -> bytes:
    """Payload of 1-based record ``index`` of a run that started at index 1."""
    return payload_pool()[(index - 1) % POOL_ENTRIES]


def batches(entries: int, batch: int, start: int = 1) -> list[list[bytes]]:
    """Payloads for records ``start .. start+entries-1`` cut into lists of ``batch``."""
    pool = payload_pool()
    out: list[list[bytes]] = []
    for lo in range(start, start + entries, batch):
        hi = min(lo + batch, start + entries)
        out.append([pool[(i - 1) % POOL_ENTRIES] for i in range(lo, hi)])
    return out


def scaled(n: int, scale: float, minimum: int = 1) -> int:
    return max(minimum, round(n * scale))


def verify(store: LogLike, indices: Iterable[int]) -> None:
    """Raise if a record's payload is not what the workload wrote."""
    for i in indices:
        got = bytes(store.read(i))
        if got != payload_for(i):
            raise AssertionError(f"{type(store).__name__}: record {i} has wrong payload")


def _sample(first: int, last: int, n: int = 64) -> list[int]:
    if last < first:
        return []
    rng = np.random.default_rng(SEED + 1)
    picks = rng.integers(first, last + 1, size=n).tolist()
    return sorted({first, last, *picks})


def fill(store: LogLike, entries: int, batch: int = W8_BATCH) -> None:
    """Append ``entries`` payloads in big batches with a single sync at the end (untimed)."""
    for b in batches(entries, batch, store.last_index + 1):
        store.append_batch(b)
    store.sync()


# --------------------------------------------------------------------------------------


def w1_batched_append(
    factory: Factory, root: Path, *, entries: int = W1_ENTRIES, batch: int = W1_BATCH
) -> Metrics:
    work = batches(entries, batch)
    store = factory(root / "w1")
    try:
        gc.collect()
        append_batch, sync = store.append_batch, store.sync
        t0 = clock()
        for b in work:
            append_batch(b)
            sync()
        elapsed = clock() - t0
        if store.last_index != entries:
            raise AssertionError(f"last_index {store.last_index} != {entries}")
        verify(store, _sample(1, entries))
    finally:
        store.close()
    return {"W1.entries_per_s": entries / elapsed}


def w2_single_append_latency(
    factory: Factory, root: Path, *, entries: int = W2_ENTRIES, warmup: int = 16
) -> Metrics:
    pool = payload_pool()
    store = factory(root / "w2")
    lat: list[float] = []
    try:
        append, sync = store.append, store.sync
        for i in range(1, warmup + 1):
            append(pool[i - 1])
            sync()
        gc.collect()
        for i in range(warmup + 1, warmup + entries + 1):
            p = pool[(i - 1) % POOL_ENTRIES]
            t0 = clock()
            append(p)
            sync()
            lat.append(clock() - t0)
        verify(store, _sample(1, warmup + entries))
    finally:
        store.close()
    lat.sort()
    return {
        "W2.p50_us": statistics.median(lat) * 1e6,
        "W2.p99_us": lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))] * 1e6,
    }


def w3_w4_reads(
    factory: Factory,
    root: Path,
    *,
    entries: int = W3_ENTRIES,
    reads: int = W3_READS,
    want: Sequence[str] = ("W3", "W4"),
) -> Metrics:
    """Build an ``entries`` log, then time random reads (W3) and full scans (W4)."""
    path = root / "w3"
    store = factory(path)
    try:
        fill(store, entries)
    finally:
        store.close()
    out: Metrics = {}
    if "W3" in want:
        rng = np.random.default_rng(SEED + 3)
        idx: list[int] = rng.integers(1, entries + 1, size=reads).tolist()
        store = factory(path)
        try:
            read = store.read
            read(entries)  # the read path is open and mapped; W5 times reopen itself
            gc.collect()
            t0 = clock()
            for i in idx:
                read(i)
            out["W3.reads_per_s"] = reads / (clock() - t0)
            verify(store, _sample(1, entries))
        finally:
            store.close()
    if "W4" in want:
        store = factory(path)
        try:
            read = store.read
            first, last = store.first_index, store.last_index
            gc.collect()
            t0 = clock()
            total = 0
            for i in range(first, last + 1):
                total += len(read(i))
            out["W4.loop_entries_per_s"] = entries / (clock() - t0)
            if total != entries * PAYLOAD_BYTES:
                raise AssertionError(f"scan read {total} bytes")
        finally:
            store.close()
        store = factory(path)
        try:
            read_range = store.read_range
            first, last = store.first_index, store.last_index
            gc.collect()
            t0 = clock()
            total = 0
            for lo in range(first, last + 1, RANGE_CHUNK):
                for r in read_range(lo, min(lo + RANGE_CHUNK, last + 1)):
                    total += len(r)
            out["W4.range_entries_per_s"] = entries / (clock() - t0)
            if total != entries * PAYLOAD_BYTES:
                raise AssertionError(f"read_range scan read {total} bytes")
        finally:
            store.close()
        # The like-for-like best: both scans above return what every baseline returns.
        out["W4.best_entries_per_s"] = max(
            out["W4.loop_entries_per_s"], out["W4.range_entries_per_s"]
        )
        store = factory(path)
        try:
            views = getattr(store, "read_range_views", None)
            if views is not None:  # segstore only: the zero-copy scan, an extra row
                first, last = store.first_index, store.last_index
                gc.collect()
                t0 = clock()
                total = 0
                for lo in range(first, last + 1, RANGE_CHUNK):
                    for r in views(lo, min(lo + RANGE_CHUNK, last + 1)):
                        total += len(r)
                out["W4.range_views_entries_per_s"] = entries / (clock() - t0)
                if total != entries * PAYLOAD_BYTES:
                    raise AssertionError(f"read_range_views scan read {total} bytes")
        finally:
            store.close()
    return out


def w8_bulk_append(
    factory: Factory, path: Path, *, entries: int = W5_ENTRIES, batch: int = W8_BATCH
) -> Metrics:
    """W8; leaves a closed ``entries`` log at ``path`` for W5-W7."""
    work = batches(entries, batch)
    store = factory(path)
    try:
        gc.collect()
        append_batch, sync = store.append_batch, store.sync
        t0 = clock()
        for b in work:
            append_batch(b)
            sync()
        elapsed = clock() - t0
        if store.last_index != entries:
            raise AssertionError(f"last_index {store.last_index} != {entries}")
    finally:
        store.close()
    return {"W8.entries_per_s": entries / elapsed}


def w5_reopen(factory: Factory, path: Path) -> tuple[Metrics, LogLike]:
    """Time open + reading the last entry; returns the open store for W6/W7."""
    gc.collect()
    t0 = clock()
    store = factory(path)
    store.read(store.last_index)
    elapsed = clock() - t0
    return {"W5.reopen_s": elapsed}, store


def index_memory(store: LogLike) -> Metrics:
    """In-memory index bytes per record of a freshly reopened store (segstore only).

    Untimed; taken right after W5's reopen. Stores without ``index_bytes`` report nothing.
    """
    index_bytes = getattr(store, "index_bytes", None)
    if index_bytes is None:
        return {}
    records = store.last_index - store.first_index + 1
    return {"W5.index_bytes_per_record": index_bytes() / max(records, 1)}


def w6_truncate_before(store: LogLike, entries: int) -> Metrics:
    cut = store.first_index + entries // 2
    gc.collect()
    t0 = clock()
    store.truncate_before(cut)
    elapsed = clock() - t0
    if store.first_index != cut:
        raise AssertionError(f"first_index {store.first_index} != {cut}")
    verify(store, [cut, store.last_index])
    return {"W6.truncate_before_ms": elapsed * 1e3}


def w7_truncate_after(store: LogLike, entries: int) -> Metrics:
    keep = store.last_index - entries // 10
    gc.collect()
    t0 = clock()
    store.truncate_after(keep)
    elapsed = clock() - t0
    if store.last_index != keep:
        raise AssertionError(f"last_index {store.last_index} != {keep}")
    verify(store, [store.first_index, keep])
    return {"W7.truncate_after_ms": elapsed * 1e3}


def w5_to_w8(
    factory: Factory,
    root: Path,
    *,
    entries: int = W5_ENTRIES,
    batch: int = W8_BATCH,
    want: Sequence[str] = ("W5", "W6", "W7", "W8"),
) -> Metrics:
    """W8 builds the big log, then W5 reopens it, W6 and W7 truncate it (in that order)."""
    path = root / "big"
    out = w8_bulk_append(factory, path, entries=entries, batch=batch)
    if "W8" not in want:
        out = {}
    m5, store = w5_reopen(factory, path)
    try:
        if "W5" in want:
            out.update(m5)
            out.update(index_memory(store))
        if "W6" in want or "W7" in want:
            out.update(w6_truncate_before(store, entries))
            out.update(w7_truncate_after(store, entries))
    finally:
        store.close()
    if "W6" not in want:
        out.pop("W6.truncate_before_ms", None)
    if "W7" not in want:
        out.pop("W7.truncate_after_ms", None)
    return out

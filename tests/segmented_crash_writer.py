"""A writer process for the SegmentedLogStore kill -9 test (tests/test_segmented_crash.py).

Usage: ``python segmented_crash_writer.py DIRECTORY SEED``. Opens (or creates) a
:class:`SegmentedLogStore` with :data:`PARTITIONS` partitions in DIRECTORY, continues
from whatever it recovered, and runs a mixed load forever: batches of appends closed by
``end_of_append_batch``, Raft-style rollbacks (``write_at`` with a new term),
``compact`` below the durable index, ``flush`` and ``sync_partitions``. The parent
kills it with SIGKILL at a random time.

Every entry's content is a function of (raft index, term) alone (:func:`entry_for`):
its type, partition, payload and timestamp. So a checker that knows the term of an index
knows the whole entry, and any entry can be checked for self-consistency without
knowing anything else.

Protocol (one line per event on stdout, flushed; :class:`Driver` emits them):

``O <durable> <start> <runs>``
    opened: everything up to ``durable`` is durable and the retained log starts at
    ``start``. ``runs`` gives the term of every index in ``[start, durable]``.
``W <index> <term>``
    about to ``write_at(index)`` with ``term``: from now on entries ``>= index`` may be
    gone (until the next ``D`` tells what is there).
``C <last>``
    about to ``compact(last)``: the start index may move to ``last + 1``.
``D <durable> <start> <runs>``
    a completed durable point (after ``end_of_append_batch`` or ``flush``): like ``O``.

``runs`` is ``-`` (empty range) or comma-separated ``first:term`` pairs, each giving the
term of indices from ``first`` up to the next pair's first (the last up to ``durable``).

The same :class:`Driver` runs in-process under :class:`~segstore.testing.faults.FaultyIO`
in the power-loss tests, with ``emit`` feeding the checker's model directly.
"""

from __future__ import annotations

import bisect
import hashlib
import random
import struct
import sys
from collections.abc import Callable

PARTITIONS = 64
SEGMENT_BYTES = 64 << 10
PAYLOAD_HEAD = struct.Struct("<QQ")  # every payload starts with (raft index, term)
CONF_ONE_IN = 29  # about one entry in CONF_ONE_IN is a conf entry (no partition)

Emit = Callable[[str], None]


def _digest(index: int, term: int) -> bytes:
    return hashlib.blake2b(PAYLOAD_HEAD.pack(index, term), digest_size=32).digest()


def partition_for(index: int, term: int, partitions: int = PARTITIONS) -> int | None:
    """The partition of entry (index, term), or None for a conf entry (no partition)."""
    digest = _digest(index, term)
    if int.from_bytes(digest[:4], "little") % CONF_ONE_IN == 0:
        return None
    return int.from_bytes(digest[4:8], "little") % partitions


def payload_for(index: int, term: int) -> bytes:
    """The payload (what the partition log stores) of entry (index, term): 16 to ~700
    bytes, starting with the raft index and term so a record checks itself."""
    digest = _digest(index, term)
    size = int.from_bytes(digest[8:10], "little") % 700
    return PAYLOAD_HEAD.pack(index, term) + (digest * (size // 32 + 1))[:size]


def timestamp_for(index: int, term: int) -> int:
    return index * 1000 + term


def entry_for(
    index: int, term: int, partitions: int = PARTITIONS, partition_index: int = 0
) -> object:
    """The LogEntry at raft ``index`` written in ``term`` (``partition_index`` 0: the
    store assigns it; otherwise the follower path, where the entry names it)."""
    from segstore.raft.log_entry import LogEntry, LogValType
    from segstore.raft.partition_entry import encode_entry

    pid = partition_for(index, term, partitions)
    payload = payload_for(index, term)
    stamp = timestamp_for(index, term)
    if pid is None:
        return LogEntry(term, payload, LogValType.conf, stamp)
    return LogEntry(term, encode_entry(pid, payload, partition_index), LogValType.app_log, stamp)


def format_runs(runs: list[tuple[int, int]], start: int, durable: int) -> str:
    """``runs`` (first index, term) restricted to ``[start, durable]``, as text."""
    if durable < start:
        return "-"
    out: list[str] = []
    for k, (first, term) in enumerate(runs):
        end = runs[k + 1][0] - 1 if k + 1 < len(runs) else durable
        if end < start or first > durable:
            continue
        out.append(f"{max(first, start)}:{term}")
    return ",".join(out) or "-"


def parse_runs(text: str) -> list[tuple[int, int]]:
    if text == "-":
        return []
    pairs = [item.split(":") for item in text.split(",")]
    return [(int(first), int(term)) for first, term in pairs]


class Driver:
    """Runs the mixed load on one open store and emits the protocol events.

    ``runs`` is the term of every index the store holds (appended, not necessarily
    durable), as (first index, term) pairs.
    """

    def __init__(self, store: object, rng: random.Random, emit: Emit) -> None:
        from segstore.raft.segmented_store import SegmentedLogStore

        assert isinstance(store, SegmentedLogStore)
        self.store = store
        self.rng = rng
        self.emit = emit
        self.partitions = store.partition_count
        self.runs: list[tuple[int, int]] = []
        start, end = store.start_index(), store.next_slot()
        previous = 0
        for first in range(start, end, 4096):  # one batch read per 4096 entries
            entries = store.log_entries(first, min(end, first + 4096))
            assert entries is not None
            for offset, entry in enumerate(entries):
                if entry.term != previous:
                    self.runs.append((first + offset, entry.term))
                    previous = entry.term
        self.term = max(1, previous)

    # -- events ------------------------------------------------------------------------

    def report(self, word: str = "D") -> None:
        store = self.store
        durable, start = store.last_durable_index(), store.start_index()
        self.emit(f"{word} {durable} {start} {format_runs(self.runs, start, durable)}")

    def _note(self, index: int, term: int) -> None:
        """Entry ``index`` (the new last one) has ``term``."""
        cut = bisect.bisect_left(self.runs, (index, -1))
        del self.runs[cut:]
        if not self.runs or self.runs[-1][1] != term:
            self.runs.append((index, term))

    # -- operations --------------------------------------------------------------------

    def append(self, count: int, *, explicit: bool = False) -> None:
        """``count`` appends closed by end_of_append_batch, then a durable report.

        ``explicit``: the entries name their partition index (a follower's appends).
        """
        store = self.store
        first = store.next_slot()
        for index in range(first, first + count):
            pindex = 0
            if explicit:
                pid = partition_for(index, self.term, self.partitions)
                if pid is not None:
                    pindex = store.partition_next_indices().get(pid, 1)
            got = store.append(entry_for(index, self.term, self.partitions, pindex))  # type: ignore[arg-type]
            assert got == index, (got, index)
            self._note(index, self.term)
        store.end_of_append_batch(first, count)
        self.report()

    def write_at(self, back: int, count: int) -> None:
        """A leader change: ``write_at`` ``back`` entries before next_slot in a new
        term, then ``count - 1`` more appends in one batch."""
        store = self.store
        end = store.next_slot()
        index = max(store.start_index(), end - back)
        self.term += 1
        self.emit(f"W {index} {self.term}")
        store.write_at(index, entry_for(index, self.term, self.partitions))  # type: ignore[arg-type]
        self._note(index, self.term)
        for extra in range(index + 1, index + count):
            assert store.append(entry_for(extra, self.term, self.partitions)) == extra  # type: ignore[arg-type]
            self._note(extra, self.term)
        store.end_of_append_batch(index, count)
        self.report()

    def compact(self, keep: int) -> None:
        """``compact`` up to ``keep`` entries below the durable index (if there are)."""
        store = self.store
        last = store.last_durable_index() - keep
        if last < store.start_index():
            return
        self.emit(f"C {last}")
        assert store.compact(last)
        self.report()

    def flush(self) -> None:
        assert self.store.flush()
        self.report()

    def sync_partitions(self) -> None:
        self.store.sync_partitions()
        self.report()

    def step(self) -> None:
        """One random operation of the mixed load."""
        roll = self.rng.random()
        if roll < 0.06:
            self.write_at(self.rng.randint(0, 8), self.rng.randint(1, 6))
        elif roll < 0.09:
            self.compact(self.rng.randint(20, 400))
        elif roll < 0.12:
            self.sync_partitions()
        elif roll < 0.15:
            self.flush()
        else:
            count = self.rng.choice([1, 2, 5, 16, 40])
            self.append(count, explicit=self.rng.random() < 0.2)


def main() -> None:
    from segstore.raft.segmented_store import SegmentedLogStore

    directory, seed = sys.argv[1], int(sys.argv[2])
    rng = random.Random(seed)
    failures: list[bool] = []

    def emit(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    parallel = rng.random() < 0.4
    store = SegmentedLogStore.open(
        directory,
        partitions=PARTITIONS,
        parallel=parallel,
        notify_log_append_completion=(lambda ok: failures.append(ok) if not ok else None),
        segment_bytes=SEGMENT_BYTES,
    )
    store.flush()
    driver = Driver(store, rng, emit)
    driver.report("O")
    while not failures:
        driver.step()
    raise SystemExit("notify_log_append_completion reported an I/O failure")


if __name__ == "__main__":
    main()

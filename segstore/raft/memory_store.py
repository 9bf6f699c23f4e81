"""``InMemoryLogStore``: the reference ``LogStore``, after NuRaft's ``inmem_log_store``.

Like NuRaft's ``examples/in_memory_log_store.cxx`` it keeps entries in memory
behind one lock and counts memory as durable, so ``flush()`` is True and
``last_durable_index() == next_slot() - 1``. Unlike it, every edge that NuRaft's
example leaves to ``assert`` or undefined behaviour is decided as
``segstore.raft.log_store`` documents (see docs/RAFT_CONTRACT.md), because the
conformance suite holds every other store to this one.
"""

from __future__ import annotations

import threading

from segstore.errors import ClosedError, IndexOutOfRangeError
from segstore.raft.log_entry import DUMMY_ENTRY, U32_MAX, LogEntry, check_uint
from segstore.raft.log_store import (
    LogStore,
    check_index,
    check_log_entry,
    check_range,
    check_size_hint,
)
from segstore.raft.pack import decode_pack, encode_pack

__all__ = ["InMemoryLogStore"]


class InMemoryLogStore(LogStore):
    """A thread-safe in-memory Raft log with NuRaft ``log_store`` semantics.

    Storage is a list whose item ``k`` is the entry at index ``start_index + k``:
    dense, so ``entry_at`` and ``term_at`` are O(1) and ``next_slot`` cannot
    disagree with what is stored (NuRaft derives ``next_slot`` from its map's size,
    which a gap would silently break).
    """

    def __init__(self) -> None:
        """Create an empty store: ``start_index() == next_slot() == 1``."""
        self._lock = threading.Lock()
        self._start_index = 1
        self._entries: list[LogEntry] = []
        self._closed = False

    # -- helpers (call with the lock held) -----------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("InMemoryLogStore is closed")

    def _next_slot_locked(self) -> int:
        return self._start_index + len(self._entries)

    # -- shape of the log ---------------------------------------------------------

    def next_slot(self) -> int:
        """Last log index + 1 (1 when empty, ``L + 1`` after ``compact(L)`` past the tail)."""
        with self._lock:
            self._check_open()
            return self._next_slot_locked()

    def start_index(self) -> int:
        """First retained index."""
        with self._lock:
            self._check_open()
            return self._start_index

    def last_entry(self) -> LogEntry:
        """The last entry, or ``DUMMY_ENTRY`` (term 0) when the store holds none."""
        with self._lock:
            self._check_open()
            return self._entries[-1] if self._entries else DUMMY_ENTRY

    # -- writes -------------------------------------------------------------------

    def append(self, entry: LogEntry) -> int:
        """Store ``entry`` at ``next_slot()`` and return that index."""
        check_log_entry(entry)
        with self._lock:
            self._check_open()
            index = self._next_slot_locked()
            self._entries.append(entry)
            return index

    def write_at(self, index: int, entry: LogEntry) -> None:
        """Replace the entry at ``index`` (in ``[start_index(), next_slot()]``) and
        truncate everything after it."""
        check_index("index", index)
        check_log_entry(entry)
        with self._lock:
            self._check_open()
            next_slot = self._next_slot_locked()
            if not self._start_index <= index <= next_slot:
                raise IndexOutOfRangeError(
                    f"write_at index {index} is outside [{self._start_index}, {next_slot}] "
                    "(start_index, next_slot)"
                )
            del self._entries[index - self._start_index :]
            self._entries.append(entry)

    def end_of_append_batch(self, start: int, count: int) -> None:
        """Nothing to group-commit in memory; checks the arguments and the store."""
        check_index("start", start)
        check_index("count", count)
        with self._lock:
            self._check_open()

    # -- reads --------------------------------------------------------------------

    def log_entries(self, start: int, end: int) -> list[LogEntry] | None:
        """Entries ``[start, end)``, or ``None`` if any of them is not held."""
        check_range(start, end)
        with self._lock:
            self._check_open()
            if start == end:
                return []
            if start < self._start_index or end > self._next_slot_locked():
                return None
            return self._entries[start - self._start_index : end - self._start_index]

    def log_entries_ext(
        self, start: int, end: int, batch_size_hint_in_bytes: int = 0
    ) -> list[LogEntry] | None:
        """``log_entries`` capped by value bytes; see ``LogStore.log_entries_ext``."""
        check_size_hint(batch_size_hint_in_bytes)
        check_range(start, end)
        with self._lock:
            self._check_open()
            if batch_size_hint_in_bytes < 0 or start == end:
                return []
            if start < self._start_index or end > self._next_slot_locked():
                return None
            first = start - self._start_index
            last = end - self._start_index
            if batch_size_hint_in_bytes == 0:
                return self._entries[first:last]
            result: list[LogEntry] = []
            total_bytes = 0
            for entry in self._entries[first:last]:
                result.append(entry)
                total_bytes += entry.value_bytes
                if total_bytes >= batch_size_hint_in_bytes:
                    break
            return result

    def entry_at(self, index: int) -> LogEntry | None:
        """The entry at ``index``, or ``None`` below ``start_index()`` or from ``next_slot()``."""
        check_index("index", index)
        with self._lock:
            self._check_open()
            position = index - self._start_index
            if 0 <= position < len(self._entries):
                return self._entries[position]
            return None

    def term_at(self, index: int) -> int:
        """Term at ``index``; 0 below ``start_index()``; raises from ``next_slot()`` on."""
        check_index("index", index)
        with self._lock:
            self._check_open()
            if index < self._start_index:
                return 0
            position = index - self._start_index
            if position >= len(self._entries):
                raise IndexOutOfRangeError(
                    f"term_at index {index} is at or past next_slot {self._next_slot_locked()}"
                )
            return self._entries[position].term

    # -- bulk copy ----------------------------------------------------------------

    def pack(self, index: int, count: int) -> bytes:
        """The ``count`` entries from ``index`` as a version-1 log pack."""
        check_index("index", index)
        check_uint("count", count, U32_MAX)
        with self._lock:
            self._check_open()
            next_slot = self._next_slot_locked()
            if index < self._start_index or index + count > next_slot:
                raise IndexOutOfRangeError(
                    f"pack [{index}, {index + count}) is not inside the stored range "
                    f"[{self._start_index}, {next_slot})"
                )
            selected = self._entries[index - self._start_index : index - self._start_index + count]
        # Encode outside the lock: the entries are immutable.
        return encode_pack(selected)

    def apply_pack(self, index: int, pack: bytes) -> None:
        """Write the pack's entries from ``index``, truncating what follows them."""
        check_index("index", index)
        entries = decode_pack(pack)  # all checks before any change
        with self._lock:
            self._check_open()
            if not self._entries:
                if index < max(self._start_index, 1):
                    raise IndexOutOfRangeError(
                        f"apply_pack index {index} is below start_index {self._start_index} "
                        "of an empty store"
                    )
                if entries:
                    # An empty store takes the pack's position as its new start, as
                    # NuRaft's in-memory store does (start = smallest stored index).
                    self._start_index = index
                    self._entries = entries
                return
            next_slot = self._next_slot_locked()
            if not self._start_index <= index <= next_slot:
                raise IndexOutOfRangeError(
                    f"apply_pack index {index} is outside [{self._start_index}, {next_slot}] "
                    "(start_index, next_slot) of a non-empty store"
                )
            if entries:
                del self._entries[index - self._start_index :]
                self._entries.extend(entries)

    # -- compaction ---------------------------------------------------------------

    def compact(self, last_log_index: int) -> bool:
        """Purge entries up to ``last_log_index``; start_index becomes at least its + 1."""
        check_index("last_log_index", last_log_index)
        with self._lock:
            self._check_open()
            if last_log_index < self._start_index:
                # NuRaft's later guard: never move start_index backwards.
                return True
            del self._entries[: last_log_index + 1 - self._start_index]
            self._start_index = last_log_index + 1
            return True

    # -- durability ---------------------------------------------------------------

    def flush(self) -> bool:
        """Memory counts as durable: always True."""
        with self._lock:
            self._check_open()
            return True

    def last_durable_index(self) -> int:
        """``next_slot() - 1``: every stored entry is as durable as memory gets."""
        with self._lock:
            self._check_open()
            return self._next_slot_locked() - 1

    # -- lifetime -----------------------------------------------------------------

    def close(self) -> None:
        """Drop the entries; every later call except ``close`` raises ``ClosedError``."""
        with self._lock:
            self._closed = True
            self._entries = []

"""The ``LogStore`` contract: NuRaft's ``log_store`` method for method.

Every method keeps NuRaft's name and semantics (``include/libnuraft/log_store.hxx``
in eBay/NuRaft). Where NuRaft's header leaves a case open, or its reference
in-memory store disagrees with the header, this module settles it and
``docs/RAFT_CONTRACT.md`` records why. ``segstore.testing.conformance`` pins all of
it; every implementation runs that suite.

Indices are NuRaft ``ulong``: ints in ``[0, 2**64 - 1]``. Index 0 never holds an
entry. A malformed argument raises ``InvalidArgumentError``; a well-formed index
outside the range an operation allows raises ``IndexOutOfRangeError`` (a subclass),
and nothing is changed in either case.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from types import TracebackType
from typing import TypeVar

from segstore.errors import InvalidArgumentError
from segstore.raft.log_entry import LogEntry, check_uint

__all__ = [
    "CompactCallback",
    "LogStore",
    "check_index",
    "check_log_entry",
]

_StoreT = TypeVar("_StoreT", bound="LogStore")

CompactCallback = Callable[[bool, "BaseException | None"], None]
"""``when_done(result, error)`` of ``compact_async``: NuRaft's
``async_result<bool>::handler_type`` (a result and an exception pointer)."""


def check_index(name: str, value: object) -> int:
    """Return ``value`` if it is a valid log index (int in ``[0, 2**64 - 1]``).

    Raises:
        InvalidArgumentError: not an int, or negative, or above ``2**64 - 1``.
    """
    return check_uint(name, value)


def check_range(start: object, end: object) -> None:
    """Check the ``[start, end)`` arguments of ``log_entries`` and friends.

    Raises:
        InvalidArgumentError: malformed indices or ``start > end``.
    """
    if check_index("start", start) > check_index("end", end):
        raise InvalidArgumentError(f"start {start} > end {end}")


def check_size_hint(hint: object) -> int:
    """Return ``log_entries_ext``'s ``batch_size_hint_in_bytes`` if it is an int.

    Raises:
        InvalidArgumentError: not an int (or a bool).
    """
    if isinstance(hint, bool) or not isinstance(hint, int):
        raise InvalidArgumentError(
            f"batch_size_hint_in_bytes must be an int, got {type(hint).__name__}"
        )
    return hint


def check_log_entry(value: object) -> LogEntry:
    """Return ``value`` if it is a ``LogEntry``.

    Raises:
        InvalidArgumentError: anything else (NuRaft takes ``ptr<log_entry>``; a
            null or foreign object there is a caller bug).
    """
    if not isinstance(value, LogEntry):
        raise InvalidArgumentError(f"expected a LogEntry, got {type(value).__name__}")
    return value


class LogStore(abc.ABC):
    """Storage for one Raft log, with NuRaft ``log_store`` semantics.

    Implementations must be safe to call from several threads at once: NuRaft
    appends from its Raft thread while its commit and compaction threads read and
    compact (its in-memory store guards every method with one mutex).
    """

    # -- shape of the log ---------------------------------------------------------

    @abc.abstractmethod
    def next_slot(self) -> int:
        """Last log index + 1: 1 when nothing was ever appended, ``L + 1`` right after
        ``compact(L)`` at or past the tail."""

    @abc.abstractmethod
    def start_index(self) -> int:
        """First retained index: 1 at first, ``L + 1`` as soon as ``compact(L)`` or
        ``compact_async(L)`` returns (even if nothing was erased); never decreases
        except by ``apply_pack`` into an empty store."""

    @abc.abstractmethod
    def last_entry(self) -> LogEntry:
        """The entry at ``next_slot() - 1``, or ``DUMMY_ENTRY`` (term 0) when the store
        holds no entry (fresh, or compacted past the tail)."""

    # -- writes -------------------------------------------------------------------

    @abc.abstractmethod
    def append(self, entry: LogEntry) -> int:
        """Store ``entry`` at ``next_slot()`` and return that index.

        Raises:
            InvalidArgumentError: ``entry`` is not a ``LogEntry``.
        """

    @abc.abstractmethod
    def write_at(self, index: int, entry: LogEntry) -> None:
        """Replace the entry at ``index`` and truncate every entry after it.

        ``index`` must lie in ``[start_index(), next_slot()]``; ``index == next_slot()``
        is an append (NuRaft's in-memory store erases nothing and inserts there).
        NuRaft itself only calls it for ``index < next_slot()``
        (``raft_server::handle_append_entries``).

        Raises:
            IndexOutOfRangeError: ``index`` outside ``[start_index(), next_slot()]``.
        """

    def end_of_append_batch(self, start: int, count: int) -> None:
        """Hook called after one append_entries request wrote ``count`` entries from
        ``start``: the group-commit point. NuRaft's default (kept here) does nothing."""
        check_index("start", start)
        check_index("count", count)

    # -- reads --------------------------------------------------------------------

    @abc.abstractmethod
    def log_entries(self, start: int, end: int) -> list[LogEntry] | None:
        """Entries with index in ``[start, end)``; ``None`` if any of them is not in the
        store (below ``start_index()`` or at/after ``next_slot()``). ``[]`` when
        ``start == end``.

        Raises:
            InvalidArgumentError: ``start > end``.
        """

    def log_entries_ext(
        self, start: int, end: int, batch_size_hint_in_bytes: int = 0
    ) -> list[LogEntry] | None:
        """``log_entries`` capped by a size hint from the follower's state machine.

        - ``hint < 0``: ``[]`` (the follower is busy; send nothing). An empty list,
          not ``None``: NuRaft treats ``None`` as "entries missing" and falls back to
          a snapshot (``raft_server::create_append_entries_req``).
        - ``hint == 0``: exactly ``log_entries(start, end)``.
        - ``hint > 0``: entries from ``start`` until their summed value bytes reach
          ``hint`` (the entry that reaches it is included), so at least one entry.

        ``None`` whenever ``hint >= 0`` and ``[start, end)`` is not all in the store.
        This default reads through ``entry_at``; stores may override it.

        Raises:
            InvalidArgumentError: ``start > end`` or a malformed argument.
        """
        check_size_hint(batch_size_hint_in_bytes)
        check_range(start, end)
        if batch_size_hint_in_bytes < 0:
            return []
        if batch_size_hint_in_bytes == 0:
            return self.log_entries(start, end)
        if start < self.start_index() or end > self.next_slot():
            return None if start != end else []
        result: list[LogEntry] = []
        total_bytes = 0
        for index in range(start, end):
            entry = self.entry_at(index)
            if entry is None:
                return None  # compacted or truncated under us
            result.append(entry)
            total_bytes += entry.value_bytes
            if total_bytes >= batch_size_hint_in_bytes:
                break
        return result

    @abc.abstractmethod
    def entry_at(self, index: int) -> LogEntry | None:
        """The entry at ``index``, or ``None`` if the store does not hold it: at or after
        ``next_slot()`` (as NuRaft's header says) and also below ``start_index()``
        (where NuRaft's in-memory store returns a fake term-0 entry)."""

    @abc.abstractmethod
    def term_at(self, index: int) -> int:
        """Term of the entry at ``index``; 0 if ``index < start_index()`` (including 0).

        Raises:
            IndexOutOfRangeError: ``index >= next_slot()`` (NuRaft: "suggest to stop
                the system"; its callers never ask).
        """

    # -- bulk copy ----------------------------------------------------------------

    @abc.abstractmethod
    def pack(self, index: int, count: int) -> bytes:
        """Encode the ``count`` entries from ``index`` as a log pack (``segstore.raft.pack``).

        Raises:
            IndexOutOfRangeError: ``[index, index + count)`` is not all in the store.
        """

    @abc.abstractmethod
    def apply_pack(self, index: int, pack: bytes) -> None:
        """Write the entries of ``pack`` at ``index``, ``index + 1``, ...

        The whole pack is decoded and checked before anything changes. With
        ``start_index() <= index <= next_slot()`` it acts as ``write_at(index, e0)``
        then appends the rest, so every entry after the pack is truncated. Into an
        empty store any ``index >= 1`` is allowed and becomes the new
        ``start_index()`` (the joining-member case NuRaft uses it for). An empty pack
        changes nothing.

        Raises:
            CorruptionError, FormatVersionError: the pack is damaged or foreign.
            IndexOutOfRangeError: ``index`` outside the range above.
        """

    # -- compaction ---------------------------------------------------------------

    @abc.abstractmethod
    def compact(self, last_log_index: int) -> bool:
        """Purge every entry up to and including ``last_log_index``.

        Afterwards ``start_index() == max(start_index(), last_log_index + 1)``; past
        the tail the store is empty and ``next_slot() == last_log_index + 1``.
        A ``last_log_index`` below ``start_index()`` changes nothing. Returns True
        on success.
        """

    def compact_async(self, last_log_index: int, when_done: CompactCallback) -> None:
        """``compact`` whose I/O may finish in the background.

        ``start_index()`` is ``last_log_index + 1`` as soon as this returns; once the
        purge is done, ``when_done(result, error)`` runs exactly once, on any thread,
        possibly before this returns. NuRaft's default (kept here) compacts
        synchronously and then calls ``when_done``; an exception from ``compact``
        reaches ``when_done`` as ``(False, error)``.

        Raises:
            InvalidArgumentError: malformed index or ``when_done`` not callable.
        """
        check_index("last_log_index", last_log_index)
        if not callable(when_done):
            raise InvalidArgumentError("when_done must be callable")
        try:
            result = self.compact(last_log_index)
        except Exception as error:  # handed to the callback, NuRaft's exception slot
            when_done(False, error)
            return
        when_done(result, None)

    # -- durability ---------------------------------------------------------------

    @abc.abstractmethod
    def flush(self) -> bool:
        """Make every entry appended so far durable; True on success."""

    def last_durable_index(self) -> int:
        """Highest index whose entry and all before it are durable.

        NuRaft's default (kept here) is ``next_slot() - 1``: right for stores whose
        appends are durable when they return.
        """
        return self.next_slot() - 1

    # -- lifetime -----------------------------------------------------------------

    def close(self) -> None:  # noqa: B027 -- a deliberate no-op default, like NuRaft's
        """Release resources; later calls may raise ``ClosedError``. Idempotent."""

    def __enter__(self: _StoreT) -> _StoreT:
        """Return the store itself; ``close()`` runs on leaving the block."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Close the store."""
        self.close()

"""``SegmentedLogStore``: NuRaft's log store over one segmented Aof, routed into partitions.

Directory layout::

    <store>/log/               the segmented log: an Aof, header LOG_HEADER_DTYPE
    <store>/partitions/<id>/   one small-segment Aof per partition (derived data)
    <store>/checkpoints.lmdb/  partition progress, one LMDB transaction per checkpoint

Write path: ``append`` validates the entry, assigns (or checks) its partition index and
buffers it, in one compiled call (``EntryAppender.append``, bound on the instance;
anything unusual, refusals included, goes to the Python method and its twin ``_row_of``,
so a wrong explicit partition index is a PartitionError raised by that ``append``, with
nothing changed). ``end_of_append_batch``
writes the buffer with one ``Aof.append_batch`` and, unless the store is in parallel mode,
waits for the group commit; in parallel mode a batch ended while a flush is in flight is
written when that flush ends, with every other batch ended meanwhile. Reads see the buffer.
A background router feeds durable records to the partition logs in large batches and
checkpoints them; ``compact`` truncates the log physically only below what the
partitions still need. See docs/ARCHITECTURE.md ("The segmented log store").
"""

from __future__ import annotations

import errno
import os
import struct
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import numpy as np

from segstore.aof import Aof, FileIO
from segstore.aof.kernels import ROW_SLOW, EntryAppender, LogRowBuffer, build_log_entries
from segstore.checkpoints import CHECKPOINTS_NAME, AppliedUpdate, CheckpointStore
from segstore.errors import (
    ClosedError,
    FailedStateError,
    IndexOutOfRangeError,
    InvalidArgumentError,
    NotAStoreError,
    PartitionError,
    RecordTooLargeError,
    SegstoreError,
    StorageIOError,
)
from segstore.partitions import PARTITIONS_DIR, PartitionLogs, PartitionLogStore
from segstore.raft.log_entry import (
    DUMMY_ENTRY,
    U32_MAX,
    U64_MAX,
    LogEntry,
    LogValType,
    check_uint,
)
from segstore.raft.log_store import (
    LogStore,
    check_index,
    check_log_entry,
    check_range,
    check_size_hint,
)
from segstore.raft.pack import decode_pack, encode_pack
from segstore.raft.partition_entry import (
    LOG_HEADER_DTYPE,
    NO_PARTITION,
    decode_partition,
)
from segstore.router import Router

LOG_DIR = "log"
STORE_KIND = "segstore.segmented_log"
PENDING_RECORDS_MAX = 4096  # buffered appends written early even without a batch end
ROUTE_INTERVAL_S = 0.1  # the router waits this long after a wakeup, batching records
CHECKPOINT_RECORDS = 1 << 16  # checkpoint after routing this many records...
CHECKPOINT_INTERVAL_S = 1.0  # ...or this long after the previous checkpoint

_VAL_TYPES = {int(t): t for t in LogValType}
_APP_LOG = LogValType.app_log
_HEADER = struct.Struct("<QQQIB")  # the first 29 bytes of LOG_HEADER_DTYPE
NotifyAppend = Callable[[bool], None]


# Entries read back were validated when appended: they are built in one compiled call
# that skips LogEntry's checks and sets the frozen dataclass's slots directly.
_ENTRY_SETTERS = tuple(
    LogEntry.__dict__[name] for name in ("term", "value", "val_type", "timestamp_us")
)
_VAL_TYPE_OF_BYTE = tuple(_VAL_TYPES.get(byte) for byte in range(256))


def _trusted_entries(headers: bytes | np.ndarray, values: list[bytes]) -> list[LogEntry]:
    """``LogEntry`` objects from log header rows (LOG_HEADER_DTYPE) and their values."""
    entries: list[LogEntry] = build_log_entries(
        LogEntry, _ENTRY_SETTERS, headers, values, _VAL_TYPE_OF_BYTE
    )
    return entries


class SegmentedLogStore(LogStore):
    """NuRaft ``log_store`` over one segmented Aof, every app_log entry routed to its
    partition's log. Open with :meth:`open`."""

    def __init__(self, *_args: object, **_kwargs: object) -> None:
        raise TypeError("use SegmentedLogStore.open(path, partitions=...)")

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        partitions: int | None = None,
        parallel: bool = False,
        notify_log_append_completion: NotifyAppend | None = None,
        segment_bytes: int | None = None,
        partitions_open_max: int = 64,
        create: bool = True,
        io: FileIO | None = None,
    ) -> SegmentedLogStore:
        """Open (or create) the store in directory ``path``.

        ``partitions``: how many partitions (ids ``0 .. partitions - 1``); required at
        creation, and must match when given later. ``parallel``: NuRaft's parallel log
        appending: ``end_of_append_batch`` never waits, and
        ``notify_log_append_completion(ok)`` is called whenever the durable index
        advances (``ok=False`` on an I/O failure). ``io``: the file-operation seam of the
        log and the partition logs (tests inject faults through it; LMDB does its own
        I/O).
        """
        self = object.__new__(cls)
        self._init(
            os.fspath(path),
            partitions=partitions,
            parallel=parallel,
            notify=notify_log_append_completion,
            segment_bytes=segment_bytes,
            partitions_open_max=partitions_open_max,
            create=create,
            io=io,
        )
        return self

    def _init(
        self,
        path: str,
        *,
        partitions: int | None,
        parallel: bool,
        notify: NotifyAppend | None,
        segment_bytes: int | None,
        partitions_open_max: int,
        create: bool,
        io: FileIO | None,
    ) -> None:
        self._closed = True
        self._appender: EntryAppender | None = None
        self.path = path
        if partitions is not None:
            check_uint("partitions", partitions, NO_PARTITION)
            if partitions == 0:
                raise InvalidArgumentError("a store needs at least one partition")
        if not os.path.isdir(path):
            if not create:
                raise NotAStoreError(f"{path} does not exist (open with create=True)")
            if partitions is None:
                raise InvalidArgumentError("creating a store needs partitions=N")
            os.makedirs(path)
        elif set(os.listdir(path)) - {LOG_DIR, PARTITIONS_DIR, CHECKPOINTS_NAME}:
            raise NotAStoreError(f"{path} is not a segmented log store (foreign files)")
        log_path = os.path.join(path, LOG_DIR)
        if not os.path.isdir(log_path) and partitions is None:
            raise InvalidArgumentError("creating a store needs partitions=N")
        self._log = Aof.open(
            log_path,
            header_dtype=LOG_HEADER_DTYPE,
            segment_bytes=segment_bytes,
            autosync=parallel,
            create=create,
            user={"kind": STORE_KIND, "partitions": partitions, "start_index": 1},
            io=io,
        )
        self._checkpoints: CheckpointStore | None = None
        self._partitions: PartitionLogs | None = None
        try:
            user = self._log.user_meta
            if user.get("kind") != STORE_KIND:
                raise NotAStoreError(f"{log_path} is an Aof but not a segmented log store")
            if partitions is not None and user["partitions"] != partitions:
                raise InvalidArgumentError(
                    f"{path} has {user['partitions']} partitions, not {partitions}"
                )
            self.partition_count: int = int(user["partitions"])
            self._start_index = max(int(user["start_index"]), self._log.first_index)
            self._checkpoints = CheckpointStore.open(
                os.path.join(path, CHECKPOINTS_NAME), store_id=self._log.store_id
            )
            # Partition segments are sparse, so matching the log's size costs no disk,
            # and any entry the log accepts fits in its partition's log.
            self._partitions = PartitionLogs(
                os.path.join(path, PARTITIONS_DIR),
                open_max=partitions_open_max,
                segment_bytes=self._log.segment_bytes,
                io=io,
            )
            self._router = Router(self._log, self._partitions, self._checkpoints)
            interrupted = self._checkpoints.restart_pending()
            if interrupted:  # a snapshot install was cut short: finish it first
                self._router.restart_partitions()
                self._finish_install(interrupted - 1)
            self._partitions.create(range(self.partition_count))
            # Recovery's undo and redo run in the router thread (woken below): reads
            # need no partitions, and appends only the next indices, which the header
            # columns of the records not yet routed give directly.
            started = time.perf_counter()
            next_indices = self._router.next_indices_through(self._log.last_index)
            self.recovery_seconds = time.perf_counter() - started
            """Time open spent on the store's recovery (the log's own is in its report)."""
        except BaseException:
            self._close_parts()
            raise
        self._lock = threading.RLock()
        self._parallel = parallel
        self._notify = notify
        self._pending: list[LogEntry] = []
        # The buffered entries' header rows and values, and the partition next indices
        # (counting buffered entries), which ``append`` assigns from in compiled code.
        self._rows = LogRowBuffer(self.partition_count, next_indices, PENDING_RECORDS_MAX)
        self._retention: list[Callable[[], int]] = []
        self._max_value_bytes = self._log.max_payload_bytes
        self._route_wakeup = threading.Event()
        self._route_error: BaseException | None = None
        self._failure: BaseException | None = None
        self._stopping = False
        self._stop = threading.Event()  # wakes the router out of its batching wait
        # Parallel mode: a batch ended while a flush is in flight stays buffered and is
        # written when that flush ends (by _on_durable, or this thread when the lock is
        # busy then), so one write and one fdatasync cover every batch ended meanwhile.
        self._write_deferred = False
        self._write_wakeup = threading.Event()
        self._writer_thread: threading.Thread | None = None
        # NuRaft calls ``append`` once per entry: the compiled appender runs the
        # common case of :meth:`append` with no Python frame, and hands everything
        # else (refusals included) to it. Bound on the instance, so it shadows the
        # method for callers while the method stays the one implementation of the
        # rules; a subclass that overrides ``append`` keeps its override.
        self._appender = EntryAppender(
            self._rows,
            self._pending,
            LogEntry,
            self._lock,
            self._log.last_index,
            self._max_value_bytes,
            PENDING_RECORDS_MAX,
            self._append_checked,
            self._write_pending,
        )
        if type(self).append is _STORE_APPEND:
            self.append = self._appender.append  # type: ignore[method-assign]
        self._closed = False
        self._log.on_durable(self._on_durable)
        if parallel:
            self._writer_thread = threading.Thread(
                target=self._deferred_write_loop, name="segstore-writer", daemon=True
            )
            self._writer_thread.start()
        self._router_thread = threading.Thread(
            target=self._route_loop, name="segstore-router", daemon=True
        )
        self._router_thread.start()
        self._route_wakeup.set()  # route what the last session left unrouted

    # -- lifetime ----------------------------------------------------------------------

    def close(self) -> None:
        """Make everything durable, route and checkpoint it, and release the files."""
        if self._closed:
            return
        try:
            with self._lock:
                self._write_pending()
            if self._log.failed is None:
                self._log.sync()
                self.sync_partitions()
        finally:
            self._appender.writable = False  # type: ignore[union-attr]
            self._closed = True
            self._stopping = True
            self._stop.set()
            self._route_wakeup.set()
            self._write_wakeup.set()
            self._router_thread.join()
            if self._writer_thread is not None:
                self._writer_thread.join()
            self._close_parts()

    def _close_parts(self) -> None:
        """Close every part even if one fails (a held lock would block the reopen that
        recovers the store), then raise the first failure."""
        first: BaseException | None = None
        for part in (self._partitions, self._checkpoints, self._log):
            if part is not None:
                try:
                    part.close()
                except BaseException as exc:
                    first = first or exc
        if first is not None:
            raise first

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"SegmentedLogStore {self.path} is closed")

    def _check_writable(self) -> None:
        self._check_open()
        if self._failure is not None:
            self._raise_failed()

    # -- positions ---------------------------------------------------------------------

    def next_slot(self) -> int:
        """Last index + 1."""
        with self._lock:
            self._check_open()
            return self._log.last_index + len(self._pending) + 1

    def start_index(self) -> int:
        """First retained index (moves to L + 1 as soon as compact(L) returns)."""
        with self._lock:
            self._check_open()
            return self._start_index

    def last_entry(self) -> LogEntry:
        """The last entry, or a dummy entry with term 0 when empty."""
        with self._lock:
            self._check_open()
            if self._pending:
                return self._pending[-1]
            last = self._log.last_index
            if last < self._start_index:
                return DUMMY_ENTRY
            entry = self._read_entry(last)
            return entry

    # -- writes ------------------------------------------------------------------------

    def append(self, entry: LogEntry) -> int:
        """Append ``entry`` at next_slot; app_log entries are routed to their partition."""
        return self._append_checked(entry)

    def _append_checked(self, entry: LogEntry) -> int:
        """``append`` in Python: every case the compiled appender hands over."""
        if type(entry) is not LogEntry:
            check_log_entry(entry)
        if len(entry.value) > self._max_value_bytes:
            self.check_value_size(entry.value)  # (refused here, not at the batch write)
        lock = self._lock  # acquire/release: cheaper than ``with`` on this per-entry path
        lock.acquire()
        try:
            if self._closed or self._failure is not None:
                self._check_writable()
            count = self._rows.add(entry.term, entry.timestamp_us, entry.val_type, entry.value)
            if count == ROW_SLOW:
                count = self._add_slow(entry)
            self._pending.append(entry)
            index: int = self._log.last_index + count
            if count >= PENDING_RECORDS_MAX:
                self._write_pending()
            return index
        finally:
            lock.release()

    def _add_slow(self, entry: LogEntry) -> int:
        """Buffer what the compiled ``LogRowBuffer.add`` did not: the Python twin raises
        the precise PartitionError (changing nothing) or computes the row itself."""
        row = self._row_of(entry, self._rows.next_indices)
        count = self._rows.add_row(*row, entry.value)
        if count != len(self._pending) + 1:
            raise SegstoreError(f"log row buffer holds {count} rows, not {len(self._pending) + 1}")
        return count

    def _row_of(
        self, entry: LogEntry, next_indices: dict[int, int]
    ) -> tuple[int, int, int, int, int]:
        """The log header row of ``entry``; assigns its partition index from
        ``next_indices``, which it advances (invariant 4)."""
        if entry.val_type is not _APP_LOG:
            return (entry.term, entry.timestamp_us, 0, NO_PARTITION, int(entry.val_type))
        pid, index = decode_partition(entry.value)
        if pid >= self.partition_count:
            raise PartitionError(
                f"partition {pid} does not exist (this store has {self.partition_count})"
            )
        expected = next_indices.get(pid, 1)
        if index == 0:
            index = expected
        elif index != expected:
            raise PartitionError(
                f"entry names partition index {index} of partition {pid}, but the next "
                f"one is {expected}: partition indices must be contiguous"
            )
        next_indices[pid] = index + 1
        return (entry.term, entry.timestamp_us, index, pid, 1)

    def check_value_size(self, value: bytes) -> None:
        """Raise :class:`RecordTooLargeError` if ``value`` cannot be appended (no log
        segment can hold it); what ``append`` and ``write_at`` check first."""
        if len(value) > self._max_value_bytes:
            raise RecordTooLargeError(
                f"a value of {len(value)} bytes does not fit in a log segment (at most "
                f"{self._max_value_bytes}); open the store with a larger segment_bytes"
            )

    def _check_entries(self, entries: list[LogEntry], next_indices: dict[int, int]) -> None:
        """Raise what appending ``entries`` after ``next_indices`` would raise; change nothing."""
        trial = dict(next_indices)
        for entry in entries:
            check_log_entry(entry)
            self.check_value_size(entry.value)
            self._row_of(entry, trial)

    def _next_indices_after_truncating(self, index: int) -> dict[int, int]:
        """Partition next indices once entries >= ``index`` are gone.

        A partition's next index becomes the index of its first removed entry: the
        assignment is a function of the log prefix, so no router state is needed.
        """
        after = dict(self._rows.next_indices)
        aof_last = self._log.last_index
        seen: set[int] = set()
        low = max(index, self._log.first_index)
        if low <= aof_last:
            headers = self._log.headers(low, aof_last + 1)
            pids = headers["partition_id"]
            firsts = np.unique(pids, return_index=True)
            for pid, position in zip(firsts[0].tolist(), firsts[1].tolist(), strict=True):
                if pid != NO_PARTITION:
                    after[pid] = int(headers["partition_index"][position])
                    seen.add(pid)
        first_pending = max(index - aof_last - 1, 0)
        pending = self._pending_headers()[first_pending:]
        for pindex, pid in zip(
            pending["partition_index"].tolist(), pending["partition_id"].tolist(), strict=True
        ):
            if pid != NO_PARTITION and pid not in seen:
                after[pid] = pindex
                seen.add(pid)
        return after

    def _pending_headers(self) -> np.ndarray:
        """The buffered entries' log header rows (a view of the row buffer)."""
        return np.frombuffer(self._rows.rows(), LOG_HEADER_DTYPE)

    def _write_pending(self) -> None:
        if not self._pending:
            return
        try:
            self._log.append_batch(self._rows.values, self._pending_headers())
        except StorageIOError as exc:
            self._fail(exc)  # the log failed stop: nothing more can be written
            raise
        finally:
            self._log_moved()
        self._pending.clear()
        self._rows.truncate(0)

    def _log_moved(self) -> None:
        """Tell the compiled appender where the log's tail is: after every change to it."""
        if self._appender is not None:
            self._appender.log_last_index = self._log.last_index

    def end_of_append_batch(self, start: int, count: int) -> None:
        """The group-commit point: write the batch; wait for it unless parallel.

        In parallel mode, while a flush is in flight the batch stays buffered (reads see
        it) and is written as soon as that flush ends, together with every batch ended
        meanwhile; ``notify_log_append_completion`` reports it durable as before.
        """
        check_index("start", start)
        check_index("count", count)
        with self._lock:
            self._check_writable()
            if self._parallel and self._pending:
                # The flag first: a flush that ends from here on finds it and writes
                # the batch; one that ended before the check below left it to us.
                self._write_deferred = True
                if self._log.durable_index < self._log.last_index:
                    return
                self._write_deferred = False
            self._write_pending()
        if not self._parallel:
            self._log.sync()

    def _write_deferred_batches(self, *, blocking: bool) -> bool:
        """Write what end_of_append_batch left buffered; False if the lock was busy."""
        if not self._lock.acquire(blocking):
            return False
        try:
            if self._write_deferred and not self._closed and self._failure is None:
                self._write_deferred = False
                self._write_pending()
        except Exception as exc:
            # A failed write failed the log stop (its callbacks reported ok=False);
            # the appending thread sees the failure on its next call.
            self._fail(exc)
        finally:
            self._lock.release()
        return True

    def _deferred_write_loop(self) -> None:
        while not self._stopping:
            self._write_wakeup.wait()
            self._write_wakeup.clear()
            if not self._stopping:
                self._write_deferred_batches(blocking=True)

    def write_at(self, index: int, entry: LogEntry) -> None:
        """Replace entry ``index`` and truncate everything after it (invariant 3)."""
        check_index("index", index)
        check_log_entry(entry)
        with self._lock:
            self._check_writable()
            next_slot = self._log.last_index + len(self._pending) + 1
            if not self._start_index <= index <= next_slot:
                raise IndexOutOfRangeError(
                    f"write_at index {index} is outside [{self._start_index}, {next_slot}] "
                    "(start_index, next_slot)"
                )
            after = self._next_indices_after_truncating(index)
            self._check_entries([entry], after)  # a refused entry changes nothing
            self._truncate_from(index, after)
            self.append(entry)

    def _truncate_from(self, index: int, after: dict[int, int]) -> None:
        """Drop entries >= ``index`` from the buffer, partitions and log (in that order);
        ``after`` are the partition next indices that leaves."""
        aof_last = self._log.last_index
        if index > aof_last:
            keep = index - aof_last - 1
            del self._pending[keep:]
            self._rows.truncate(keep)
        else:
            self._pending.clear()
            self._rows.truncate(0)
            with self._router.paused():
                try:
                    # Route first: a partition holding records from before a crash is
                    # reconciled on first touch, which must come before it is cut.
                    self._router.route(self._log.durable_index)
                    self._router.rollback(index)
                    self._log.truncate_after(max(index - 1, self._log.first_index - 1))
                except BaseException as exc:
                    # Half a rollback: the router's view may no longer match the files.
                    self._fail(exc)
                    raise
                finally:
                    self._log_moved()
        self._rows.next_indices = after

    # -- reads -------------------------------------------------------------------------

    def entry_at(self, index: int) -> LogEntry | None:
        """The entry at ``index``; None below start_index or past the tail."""
        if type(index) is not int or not 0 <= index <= U64_MAX:
            check_index("index", index)
        lock = self._lock  # acquire/release: cheaper than ``with`` on this hot path
        lock.acquire()
        try:
            if self._closed:
                self._check_open()
            if index < self._start_index:
                return None
            aof_last = self._log.last_index
            if index > aof_last:
                position = index - aof_last - 1
                return self._pending[position] if position < len(self._pending) else None
            return self._read_entry(index)
        finally:
            lock.release()

    def _read_entry(self, index: int) -> LogEntry:
        header, value = self._log.read_record(index)
        return _trusted_entries(header, [value])[0]

    def term_at(self, index: int) -> int:
        """Term at ``index``; 0 below start_index; raises past the tail."""
        check_index("index", index)
        with self._lock:
            self._check_open()
            if index < self._start_index:
                return 0
            aof_last = self._log.last_index
            if index > aof_last:
                position = index - aof_last - 1
                if position >= len(self._pending):
                    raise IndexOutOfRangeError(
                        f"term_at index {index} is at or past next_slot "
                        f"{aof_last + len(self._pending) + 1}"
                    )
                return self._pending[position].term
            return int(_HEADER.unpack_from(self._log.header_raw(index))[0])

    def log_entries(self, start: int, end: int) -> list[LogEntry] | None:
        """Entries ``[start, end)``, or None if any is missing; one batch read."""
        check_range(start, end)
        with self._lock:
            self._check_open()
            if start == end:
                return []
            aof_last = self._log.last_index
            if start < self._start_index or end > aof_last + len(self._pending) + 1:
                return None
            stored_end = min(end, aof_last + 1)
            entries: list[LogEntry] = []
            if start < stored_end:
                entries = _trusted_entries(
                    self._log.headers(start, stored_end),
                    self._log.read_range(start, stored_end, copy=True),
                )
            if end > aof_last + 1:
                entries.extend(self._pending[max(start - aof_last - 1, 0) : end - aof_last - 1])
            return entries

    def read_records(self, start: int, end: int) -> tuple[np.ndarray, list[bytes]]:
        """Log header rows (``LOG_HEADER_DTYPE``: term, timestamp, partition index and
        id, entry type) and values of the written records ``[start, end)``; one batch
        read. What the state machine layer and tools consume; entries still buffered
        by ``append`` are not included."""
        check_range(start, end)
        with self._lock:
            self._check_open()
            if start < self._log.first_index or end > self._log.last_index + 1:
                raise IndexOutOfRangeError(
                    f"records [{start}, {end}) are not inside the written log "
                    f"[{self._log.first_index}, {self._log.last_index + 1})"
                )
            if start == end:
                return np.empty(0, LOG_HEADER_DTYPE), []
            return self._log.headers(start, end), self._log.read_range(start, end, copy=True)

    def partition_of(self, index: int) -> tuple[int, int]:
        """``(partition id, partition index)`` of the written entry at raft ``index``;
        ``(NO_PARTITION, 0)`` for an entry of no partition."""
        check_index("index", index)
        with self._lock:
            self._check_open()
            if not self._log.first_index <= index <= self._log.last_index:
                raise IndexOutOfRangeError(
                    f"index {index} is not inside the written log "
                    f"[{self._log.first_index}, {self._log.last_index}]"
                )
            _, _, pindex, pid, _ = _HEADER.unpack_from(self._log.header_raw(index))
            return int(pid), int(pindex)

    def log_entries_ext(
        self, start: int, end: int, batch_size_hint_in_bytes: int = 0
    ) -> list[LogEntry] | None:
        """``log_entries`` capped by value bytes (see ``LogStore.log_entries_ext``).

        The cap is found from the index's payload lengths, without reading payloads.
        """
        hint = check_size_hint(batch_size_hint_in_bytes)
        if hint <= 0:
            return super().log_entries_ext(start, end, hint)
        check_range(start, end)
        with self._lock:
            self._check_open()
            aof_last = self._log.last_index
            if start == end:
                return []
            if start < self._start_index or end > aof_last + len(self._pending) + 1:
                return None
            sizes: list[int] = []
            stored_end = min(end, aof_last + 1)
            if start < stored_end:
                sizes = self._log.payload_lengths(start, stored_end).tolist()
            if end > aof_last + 1:
                sizes += [
                    e.value_bytes
                    for e in self._pending[max(start - aof_last - 1, 0) : end - aof_last - 1]
                ]
            reached = np.flatnonzero(np.cumsum(sizes, dtype=np.int64) >= hint)
            count = int(reached[0]) + 1 if len(reached) else len(sizes)
            return self.log_entries(start, start + count)

    # -- bulk copy ---------------------------------------------------------------------

    def pack(self, index: int, count: int) -> bytes:
        """``count`` entries from ``index`` in the documented pack format."""
        check_index("index", index)
        check_uint("count", count, U32_MAX)
        entries = self.log_entries(index, index + count)
        if entries is None:
            raise IndexOutOfRangeError(
                f"pack [{index}, {index + count}) is not inside the stored range "
                f"[{self.start_index()}, {self.next_slot()})"
            )
        return encode_pack(entries)

    def apply_pack(self, index: int, pack: bytes) -> None:
        """Write the pack's entries from ``index``, truncating what follows them."""
        check_index("index", index)
        entries = decode_pack(pack)  # every check before any change
        with self._lock:
            self._check_writable()
            if not entries:
                return
            next_slot = self._log.last_index + len(self._pending) + 1
            if next_slot == self._start_index:  # empty: the pack sets the position
                if index < self._start_index:
                    raise IndexOutOfRangeError(
                        f"apply_pack index {index} is below start_index "
                        f"{self._start_index} of an empty store"
                    )
                self._check_entries(entries, self._rows.next_indices)
                if index != next_slot:
                    self._compact_locked(index - 1)
            elif not self._start_index <= index <= next_slot:
                raise IndexOutOfRangeError(
                    f"apply_pack index {index} is outside [{self._start_index}, {next_slot}] "
                    "(start_index, next_slot) of a non-empty store"
                )
            else:
                after = self._next_indices_after_truncating(index)
                self._check_entries(entries, after)
                self._truncate_from(index, after)
            for entry in entries:
                self.append(entry)
            self._write_pending()
            self._log.sync()

    # -- compaction --------------------------------------------------------------------

    def compact(self, last_log_index: int) -> bool:
        """Purge entries up to ``last_log_index``; start_index is L + 1 on return.

        The log's segments are deleted only below what the partitions still need.
        """
        check_index("last_log_index", last_log_index)
        with self._lock:
            self._check_writable()
            if last_log_index < self._start_index:
                return True
            self._compact_locked(last_log_index)
            return True

    def install_snapshot(
        self,
        last_log_index: int,
        next_partition_indices: dict[int, int],
        *,
        applied: AppliedUpdate | None = None,
    ) -> None:
        """A Raft snapshot up to ``last_log_index`` replaced the state machines: drop
        the log through it (and any entry after it), restart every partition log
        empty at ``next_partition_indices[pid]`` (the snapshot's applied index + 1;
        absent: 1) so entries after the snapshot get the leader's partition indices.

        Crash-safe: one checkpoint transaction records the partitions' new state (and
        ``routed_raft_index`` = ``last_log_index``, and ``applied``: the state
        machines' new state, from ``Applier.install``) with a ``restart_pending`` marker
        before anything is dropped; the marker is cleared once the partition logs are
        restarted and the log is dropped through ``last_log_index``, and an open that
        finds it finishes both first.
        """
        check_index("last_log_index", last_log_index)
        for pid, index in next_partition_indices.items():
            check_uint("partition id", pid, self.partition_count - 1)
            check_index("next partition index", index)
            if index < 1:
                raise InvalidArgumentError(f"partition {pid}: next index {index} is below 1")
        with self._lock:
            self._check_writable()
            if last_log_index + 1 < self._start_index:
                raise IndexOutOfRangeError(
                    f"a snapshot at {last_log_index} is older than this store's start "
                    f"index {self._start_index}"
                )
            next_slot = self._log.last_index + len(self._pending) + 1
            if next_slot > last_log_index + 1:
                self._truncate_from(
                    last_log_index + 1, self._next_indices_after_truncating(last_log_index + 1)
                )
            self._pending.clear()  # whatever is still buffered lies below the snapshot
            self._rows.truncate(0)
            with self._router.paused():
                try:
                    self._router.restart(last_log_index, next_partition_indices, applied)
                    self._finish_install(last_log_index)
                except BaseException as exc:
                    # Half an install: a reopen finishes it from the marker.
                    self._fail(exc)
                    raise
            self._rows.next_indices = dict(next_partition_indices)

    def _drop_through(self, last_log_index: int) -> None:
        """Drop every record up to ``last_log_index``; start_index becomes L + 1.

        The records go first (durable), the metadata after: open takes the larger of
        the metadata's start_index and the log's first index, so a crash in between
        still opens at L + 1, never with start_index past next_slot.
        """
        start = last_log_index + 1
        with self._router.paused():
            try:
                self._log.truncate_before(start)
            finally:
                self._log_moved()
        if start > self._start_index:
            self._log.set_user_meta({**self._log.user_meta, "start_index": start})
            self._start_index = start

    def _finish_install(self, last_log_index: int) -> None:
        """Drop the log through a snapshot's last index, then clear the snapshot
        install's ``restart_pending`` marker (the partitions are restarted)."""
        self._drop_through(last_log_index)
        self._router.clear_restart()

    def _compact_locked(self, last_log_index: int) -> None:
        start = last_log_index + 1
        next_slot = self._log.last_index + len(self._pending) + 1
        if start > next_slot:
            # Past the tail: the log restarts at L + 1, so first let the partitions
            # take everything, then empty it. (L at the tail needs no restart: the log
            # keeps what the partitions and the retention holds still need, like any
            # compact.) A retention hold on a retained record refuses it: emptying the
            # log would lose entries a state machine or a quorum still needs (a host
            # that moves past them installs a snapshot instead).
            self._write_pending()
            self._log.sync()
            self.sync_partitions()
            needed = min((hold() for hold in self._retention), default=start)
            if needed <= self._log.last_index:
                raise InvalidArgumentError(
                    f"compact({last_log_index}) past the last index {next_slot - 1} would "
                    f"drop entries from {needed} on that are still needed (applied or "
                    "acknowledged state); install a snapshot first"
                )
            self._drop_through(last_log_index)
            return
        if start == next_slot:
            # Nothing buffered may sit below start_index, and (as past the tail) the
            # entries start_index passes are durable before it moves.
            self._write_pending()
            self._log.sync()
        self._log.set_user_meta({**self._log.user_meta, "start_index": start})
        self._start_index = start
        self._truncate_physically()

    def _truncate_physically(self) -> None:
        with self._router.paused():
            below = min(self._start_index, self._router.required_raft_index())
            for hold in self._retention:
                below = min(below, hold())
            if below > self._log.first_index:
                try:
                    self._log.truncate_before(below)
                finally:
                    self._log_moved()

    def add_retention(self, required_raft_index: Callable[[], int]) -> None:
        """Keep the log from ``required_raft_index()`` on, whatever ``compact`` allows.

        The function returns the oldest raft index its owner still needs (the state
        machines' and the quorum's terms of DESIGN.md invariant 6); it is called from
        the router thread and from ``compact``, ``sync_partitions`` and
        ``truncate_to_watermark`` on the caller's thread, so it must be quick and
        thread-safe. Register holds right after opening the store, before appending.
        """
        if not callable(required_raft_index):
            raise InvalidArgumentError("required_raft_index must be callable")
        self._retention.append(required_raft_index)

    def truncate_to_watermark(self) -> int:
        """Delete log segments below every holder's required raft index now; return
        the log's first physically retained index."""
        with self._lock:
            self._check_writable()
            self._truncate_physically()
            return self._log.first_index

    def required_raft_indices(self) -> tuple[int, dict[int, int]]:
        """The partition logs' term of invariant 6: the oldest raft index the routing
        and partition checkpoints still need, overall and per partition holding one."""
        self._check_open()
        return self._router.required_raft_indices()

    # -- durability --------------------------------------------------------------------

    def flush(self) -> bool:
        """Block until everything appended so far is durable."""
        with self._lock:
            self._check_writable()
            self._write_pending()
        self._log.sync()
        return True

    def last_durable_index(self) -> int:
        """Highest index covered by a completed fdatasync."""
        self._check_open()
        return self._log.durable_index

    def _raise_failed(self) -> None:
        failure = self._failure
        raise FailedStateError(
            getattr(failure, "errno", None) or errno.EIO,
            f"store failed stop after an error ({failure}); reopen it to recover",
            self.path,
        ) from failure

    def set_notify_log_append_completion(self, callback: NotifyAppend | None) -> None:
        """Register NuRaft's ``notify_log_append_completion(ok)`` for parallel mode."""
        if callback is not None and not callable(callback):
            raise InvalidArgumentError("the callback must be callable")
        self._notify = callback

    def _fail(self, failure: BaseException) -> None:
        """Fail the store stop: every later write raises (the first failure is kept)."""
        self._failure = self._failure or failure
        if self._appender is not None:
            self._appender.writable = False

    def _on_durable(self, event: int | BaseException) -> None:
        if isinstance(event, BaseException):
            self._fail(event)
        notify = self._notify
        if notify is not None:
            notify(not isinstance(event, BaseException))
        if not isinstance(event, BaseException):
            # A flush ended: write the batches deferred meanwhile (this runs on the
            # flushing thread, which may not wait for the store lock: whoever holds it
            # may be waiting for this flush, so a busy lock hands the write over).
            if self._write_deferred and not self._write_deferred_batches(blocking=False):
                self._write_wakeup.set()
            if not self._route_wakeup.is_set():  # (set until the router starts a route:
                self._route_wakeup.set()  # it reads the durable index after clearing it)

    # -- partitions --------------------------------------------------------------------

    def sync_partitions(self) -> None:
        """Route every durable entry, sync the partition logs, checkpoint them.

        Raises the error that stopped the background router, if one did.
        """
        self._check_open()
        if self._route_error is not None:
            raise self._route_error
        self._router.route(self._log.durable_index)
        self._router.checkpoint()
        self._truncate_physically()

    def partition_log(self, partition_id: int) -> AbstractContextManager[PartitionLogStore]:
        """A context manager yielding partition ``partition_id``'s log (kept open)."""
        self._check_open()
        if self._partitions is None:
            raise ClosedError(f"SegmentedLogStore {self.path} is closed")
        return self._partitions.pinned(partition_id)

    @property
    def checkpoints(self) -> CheckpointStore:
        """The store's LMDB checkpoint store (the state-machine layer writes its
        applied checkpoints there, in the same environment)."""
        self._check_open()
        assert self._checkpoints is not None  # set whenever the store is open
        return self._checkpoints

    def first_retained_index(self) -> int:
        """The first log index still physically present (<= start_index once entries
        below start_index are kept for the partitions or other retention holds)."""
        self._check_open()
        return self._log.first_index

    def partition_next_indices(self) -> dict[int, int]:
        """Next partition log index of every partition holding entries (absent: 1),
        counting entries not yet durable."""
        with self._lock:
            return {pid: n for pid, n in self._rows.next_indices.items() if n > 1}

    def _route_loop(self) -> None:
        last_checkpoint = time.monotonic()
        routed_since = 0
        while not self._stopping:
            # With routed records not yet checkpointed, wake up for the checkpoint even
            # if no new record comes: an idle store must not hold its log (and the
            # watermark) back until the next write.
            woken = self._route_wakeup.wait(CHECKPOINT_INTERVAL_S if routed_since else None)
            if self._stopping:
                return
            if woken and self._stop.wait(ROUTE_INTERVAL_S):
                return  # (the wait lets durable records pile up into one batch)
            self._route_wakeup.clear()
            try:
                routed_since += self._router.route(self._log.durable_index)
                now = time.monotonic()
                if routed_since >= CHECKPOINT_RECORDS or (
                    routed_since and now - last_checkpoint >= CHECKPOINT_INTERVAL_S
                ):
                    self._router.checkpoint()
                    with self._lock:
                        if not self._closed:
                            self._truncate_physically()
                    last_checkpoint = now
                    routed_since = 0
            except Exception as exc:
                self._route_error = exc
                return


_STORE_APPEND = SegmentedLogStore.append  # (open binds the compiled append only for it)

__all__ = ["SegmentedLogStore"]

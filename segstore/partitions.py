"""Partition logs: one small Aof per partition, fed from the segmented log.

Each partition's records live in ``<store>/partitions/<partition_id>/`` (decimal id),
an Aof whose record index is the partition log index (dense from 1) and whose 8-byte
record header is the record's raft index. Partition logs are derived data: the segmented
log is the source of truth and recovery replays it into them (DESIGN.md "Recovery"), so
they never fsync per append (``autosync=False``). They become durable when
:meth:`PartitionLogStore.sync` or :meth:`PartitionLogs.sync_all` is called, and the
caller records that progress in the :class:`~segstore.checkpoints.CheckpointStore`.

Segments are small (1 MiB) and preallocated sparse, so a store with 1,024 partitions
costs a few KiB of disk per idle partition rather than a large zero-filled file each.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from segstore.aof.aof import Aof, Payload
from segstore.aof.fileio import FileIO
from segstore.checkpoints import U64_MAX, check_partition_id
from segstore.errors import (
    ClosedError,
    IndexOutOfRangeError,
    InvalidArgumentError,
    NotAStoreError,
    PartitionError,
)

PARTITIONS_DIR = "partitions"
"""Name of the directory inside a store directory holding one directory per partition."""

PARTITION_SEGMENT_BYTES = 1 << 20
"""Default segment size of a partition log: small, since there may be thousands."""

OPEN_MAX_DEFAULT = 64
# Creations and fsyncs of partition logs run this many at a time: ext4 lets concurrent
# fsyncs share one journal commit, so the burst takes less time off the log's writer.
PARALLEL_FILE_OPS = 4
"""Default number of partition logs :class:`PartitionLogs` keeps open."""

RAFT_HEADER_DTYPE: np.dtype[Any] = np.dtype([("raft_index", "<u8")])
"""Header of every partition log record: the raft index of the entry it came from."""

_USER_KIND = "segstore.partition"
# Truncation searches the raft index column backwards from the tail in growing
# windows, so a rollback costs O(records removed), not O(partition length).
_TAIL_SEARCH_WINDOW = 256


def _as_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidArgumentError(f"{what} must be an integer, not {type(value).__name__}")
    number = int(value)
    if not 0 <= number <= U64_MAX:
        raise InvalidArgumentError(f"{what} must be in [0, {U64_MAX}], not {number}")
    return number


def partition_directory(directory: str | os.PathLike[str], partition_id: int) -> str:
    """The directory of partition ``partition_id``'s Aof under ``directory``."""
    return os.path.join(os.fspath(directory), str(check_partition_id(partition_id)))


def _parse_partition_name(name: str) -> int | None:
    """The partition id a directory name stands for, or None (canonical decimal u32)."""
    if not name.isascii() or not name.isdigit() or str(int(name)) != name:
        return None
    pid = int(name)
    return pid if pid <= 2**32 - 1 else None


class PartitionLogStore:
    """The append-only log of one partition: payloads by partition index, with raft indices.

    Open with :meth:`PartitionLogStore.open`. Appends must be contiguous
    (:meth:`append_batch`); rollback of the segmented log reaches the partition through
    :meth:`truncate_from_raft_index`. Nothing is fsync'd until :meth:`sync` (or
    :meth:`close`, which syncs).

    Thread-safety: mutations are serialised by a lock; reads take none (the Aof's reads
    are safe alongside appends).
    """

    def __init__(self, *_args: object, **_kwargs: object) -> None:
        raise TypeError("use PartitionLogStore.open(directory, partition_id) to open one")

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        partition_id: int,
        *,
        segment_bytes: int = PARTITION_SEGMENT_BYTES,
        create: bool = True,
        sync_parent: bool = True,
        io: FileIO | None = None,
    ) -> PartitionLogStore:
        """Open (or create) partition ``partition_id``'s log in ``directory/<id>/``.

        ``directory`` is the partitions directory (``<store>/partitions``), created if
        missing when ``create``. ``segment_bytes`` sizes new segment files.
        ``sync_parent``: when the log is created, fsync ``directory`` so its entry is
        durable; pass False only if the caller does that before relying on the log's
        durability (:class:`PartitionLogs` does it once per :meth:`~PartitionLogs.sync_all`
        for every log it created). ``io`` is the file-operation seam handed to the Aof
        (tests inject faults through it).
        """
        self = object.__new__(cls)
        self._init(
            os.fspath(directory), partition_id, segment_bytes, create, sync_parent, io or FileIO()
        )
        return self

    def _init(
        self,
        directory: str,
        partition_id: int,
        segment_bytes: int,
        create: bool,
        sync_parent: bool,
        io: FileIO,
    ) -> None:
        self.partition_id = pid = check_partition_id(partition_id)
        self.path = path = os.path.join(directory, str(pid))
        created = not os.path.exists(path)
        if created and create:
            _ensure_directory(io, directory)
        elif created:
            raise NotAStoreError(f"partition {pid} has no log at {path} (open with create=True)")
        aof = Aof.open(
            path,
            header_dtype=RAFT_HEADER_DTYPE,
            segment_bytes=segment_bytes,
            create=create,
            autosync=False,
            preallocate="sparse",
            user={"kind": _USER_KIND, "partition_id": pid},
            io=io,
        )
        try:
            if created and sync_parent:
                # The Aof makes its own files durable, not its entry in the parent.
                io.fsync_dir(directory)
            user = aof.user_meta
            if user.get("kind") != _USER_KIND or user.get("partition_id") != pid:
                raise NotAStoreError(
                    f"{path} is not the log of partition {pid} (its metadata says {user})"
                )
        except BaseException:
            aof.close()
            raise
        self._aof = aof
        self.created = created
        """Whether this open created the log (its directory entry may not be durable)."""
        self._lock = threading.Lock()
        self._last_raft_index = self._tail_raft_index()

    # -- properties ----------------------------------------------------------------

    @property
    def next_index(self) -> int:
        """The partition index the next appended record must have."""
        return self._aof.last_index + 1

    @property
    def first_index(self) -> int:
        """First retained partition index (``next_index`` when empty)."""
        return self._aof.first_index

    @property
    def last_index(self) -> int:
        """Last partition index (``first_index - 1`` when empty)."""
        return self._aof.last_index

    @property
    def last_raft_index(self) -> int:
        """Raft index of the last record (0 when empty)."""
        return self._last_raft_index

    @property
    def durable_index(self) -> int:
        """Highest partition index covered by a completed fdatasync."""
        return self._aof.durable_index

    @property
    def unsynced(self) -> bool:
        """Whether records were appended that :meth:`sync` has not yet made durable."""
        return self._aof.durable_index < self._aof.last_index

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._aof.closed

    def __len__(self) -> int:
        return len(self._aof)

    def __repr__(self) -> str:
        return f"<PartitionLogStore {self.partition_id} {self._aof!r}>"

    # -- appending -----------------------------------------------------------------

    def append_batch(
        self,
        first_partition_index: int,
        payloads: Sequence[Payload],
        raft_indices: Sequence[int] | npt.NDArray[np.integer[Any]],
    ) -> int:
        """Append records whose first partition index is ``first_partition_index``.

        ``first_partition_index`` must equal :attr:`next_index` (DESIGN invariant 4) and
        ``raft_indices`` (one per payload) must be strictly increasing and above the
        last record's; otherwise :class:`PartitionError` and nothing is written. Not
        durable until :meth:`sync`. Returns the last partition index (``last_index``).
        """
        if isinstance(payloads, (bytes, bytearray, memoryview, str)):
            raise InvalidArgumentError("payloads must be a sequence of byte buffers")
        try:
            count = len(payloads)
        except TypeError:
            raise InvalidArgumentError("payloads must be a sequence of byte buffers") from None
        return self._append(
            first_partition_index,
            raft_indices,
            count,
            lambda headers: self._aof.append_batch(payloads, headers),
        )

    def append_gathered(
        self,
        first_partition_index: int,
        source: Payload,
        offsets: npt.NDArray[np.uint64],
        lengths: npt.NDArray[np.uint32],
        raft_indices: Sequence[int] | npt.NDArray[np.integer[Any]],
    ) -> int:
        """:meth:`append_batch` with payload k at ``source[offsets[k]:offsets[k] +
        lengths[k]]`` (:meth:`Aof.append_gathered`: no Python object per payload)."""
        return self._append(
            first_partition_index,
            raft_indices,
            len(lengths),
            lambda headers: self._aof.append_gathered(source, offsets, lengths, headers),
        )

    def _append(
        self,
        first_partition_index: int,
        raft_indices: Sequence[int] | npt.NDArray[np.integer[Any]],
        count: int,
        write: Callable[[npt.NDArray[np.void]], int],
    ) -> int:
        """Check the partition and raft indices of ``count`` records, then ``write``
        them with their raft-index headers."""
        first = _as_int(first_partition_index, "first_partition_index")
        raft = _raft_column(raft_indices, count)
        with self._lock:
            if first != self.next_index:
                raise PartitionError(
                    f"partition {self.partition_id}: append at partition index {first}, "
                    f"but the next index is {self.next_index}; partition indices must be "
                    "contiguous"
                )
            if not len(raft):
                self._check_open()
                return self.last_index
            if int(raft[0]) <= self._last_raft_index:
                raise PartitionError(
                    f"partition {self.partition_id}: raft index {int(raft[0])} does not "
                    f"follow the last record's raft index {self._last_raft_index}"
                )
            last = write(raft.view(RAFT_HEADER_DTYPE))
            self._last_raft_index = int(raft[-1])
            return last

    # -- reading -------------------------------------------------------------------

    def read(self, partition_index: int) -> memoryview:
        """Payload of ``partition_index``, zero-copy (valid until truncated or closed)."""
        return self._aof.read(partition_index)

    def raft_index(self, partition_index: int) -> int:
        """Raft index of the record at ``partition_index``."""
        return int(self._aof.header(partition_index)["raft_index"])

    def raft_indices(self, start: int, end: int) -> npt.NDArray[np.uint64]:
        """Raft indices of partition indices ``[start, end)`` (a u64 array, a copy)."""
        return np.ascontiguousarray(self._aof.headers(start, end)["raft_index"], np.uint64)

    def entries(self, start: int, end: int) -> list[memoryview]:
        """Payloads of partition indices ``[start, end)`` (see :meth:`read`)."""
        return self._aof.read_range(start, end)

    # -- truncation ----------------------------------------------------------------

    def truncate_from_raft_index(self, raft_index: int) -> int:
        """Remove every record whose raft index is >= ``raft_index``; return next_index.

        This is how a rollback of the segmented log (``write_at``) reaches the partition
        (DESIGN invariant 3). Durable on return. Records already dropped by
        :meth:`truncate_before` are not considered: only committed entries are ever
        compacted, and committed entries are never rolled back.
        """
        target = _as_int(raft_index, "raft_index")
        with self._lock:
            cut = self._first_partition_index_at_or_after(target)
            if cut <= self._aof.last_index:
                self._aof.truncate_after(cut - 1)
                self._last_raft_index = self._tail_raft_index()
            return self.next_index

    def _first_partition_index_at_or_after(self, raft_index: int) -> int:
        """Smallest retained partition index whose raft index is >= ``raft_index``.

        Returns ``next_index`` if there is none. Raft indices are strictly increasing,
        so a window from the tail whose first raft index is below the target holds the
        answer; one ``np.searchsorted`` finds it.
        """
        first = self._aof.first_index
        end = self._aof.last_index + 1
        if end == first or self._last_raft_index < raft_index:
            return end
        width = _TAIL_SEARCH_WINDOW
        while end > first:
            start = max(first, end - width)
            column = self._aof.headers(start, end)["raft_index"]
            if int(column[0]) < raft_index:
                return start + int(np.searchsorted(column, np.uint64(raft_index), side="left"))
            end = start  # every record in [start, end) goes
            width *= 4
        return first

    def truncate_before(self, partition_index: int) -> None:
        """Drop records before ``partition_index`` (at most ``next_index``); durable on return."""
        index = _as_int(partition_index, "partition_index")
        with self._lock:
            if not 1 <= index <= self.next_index:
                raise IndexOutOfRangeError(
                    f"partition {self.partition_id}: truncate_before({index}) outside "
                    f"[1, {self.next_index}]"
                )
            # Emptying the log keeps _last_raft_index: later appends must still follow it.
            self._aof.truncate_before(index)

    def restart_at(self, partition_index: int, raft_index: int) -> None:
        """Drop every record; the next append gets ``partition_index`` and must follow
        ``raft_index`` (a Raft snapshot install replaced the partition's history).
        Durable on return."""
        index = _as_int(partition_index, "partition_index")
        raft = _as_int(raft_index, "raft_index")
        with self._lock:
            if index < self._aof.first_index:
                raise IndexOutOfRangeError(
                    f"partition {self.partition_id}: cannot restart at {index}, below its "
                    f"first retained index {self._aof.first_index}"
                )
            self._aof.truncate_after(self._aof.first_index - 1)
            self._aof.truncate_before(index)
            self._last_raft_index = raft

    def _check_open(self) -> None:
        if self._aof.closed:
            raise ClosedError(f"partition log {self.path} is closed")

    def _tail_raft_index(self) -> int:
        aof = self._aof
        return int(aof.header(aof.last_index)["raft_index"]) if len(aof) else 0

    # -- durability and closing ----------------------------------------------------

    def sync(self) -> int:
        """Make every record appended so far durable; return :attr:`durable_index`."""
        return self._aof.sync()

    def close(self) -> None:
        """Sync, then close. Idempotent. Views from :meth:`read` die with the store."""
        self._aof.close()

    def __enter__(self) -> PartitionLogStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _raft_column(raft_indices: object, count: int) -> npt.NDArray[np.uint64]:
    """Validated raft indices: ``count`` strictly increasing u64 values >= 1."""
    if isinstance(raft_indices, (bytes, bytearray, memoryview, str)):
        raise InvalidArgumentError("raft_indices must be a sequence of integers")
    try:
        column = np.asarray(raft_indices)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidArgumentError(f"raft_indices must be integers: {exc}") from None
    if column.ndim != 1 or len(column) != count:
        raise InvalidArgumentError(
            f"raft_indices must be one integer per payload ({count}), not shape {column.shape}"
        )
    if count == 0:
        return np.empty(0, np.uint64)
    if column.dtype.kind == "O":
        # Python ints beyond int64 (up to u64): check them one by one, off the hot path.
        values = [_as_int(v, "raft index") for v in column.tolist()]
        column = np.array(values, np.uint64)
    elif column.dtype.kind not in "iu":
        raise InvalidArgumentError(f"raft_indices must be integers, not {column.dtype}")
    elif column.dtype.kind == "i" and int(column.min()) < 0:
        raise InvalidArgumentError("raft indices must not be negative")
    column = np.ascontiguousarray(column, "<u8")  # the header's byte order
    if int(column[0]) < 1:
        raise InvalidArgumentError("raft indices start at 1")
    if count > 1 and not (column[1:] > column[:-1]).all():  # (the method: no Python wrapper)
        bad = int(np.argmin(column[1:] > column[:-1]))
        raise PartitionError(
            f"raft indices must be strictly increasing: {int(column[bad])} is followed by "
            f"{int(column[bad + 1])}"
        )
    return column


_Item = TypeVar("_Item")


def each_in_parallel(action: Callable[[_Item], object], items: Sequence[_Item]) -> None:
    """Call ``action`` on every item, ``PARALLEL_FILE_OPS`` at a time (blocking I/O,
    which releases the GIL); the first exception is raised once all calls are done."""
    if len(items) <= 1:
        for item in items:
            action(item)
        return
    with ThreadPoolExecutor(PARALLEL_FILE_OPS, thread_name_prefix="segstore-io") as pool:
        futures = [pool.submit(action, item) for item in items]
    for future in futures:
        future.result()


def _ensure_directory(io: FileIO, directory: str) -> None:
    """Create ``directory`` (and parents) durably if it does not exist."""
    if os.path.isdir(directory):
        return
    if os.path.exists(directory):
        raise NotAStoreError(f"{directory} is not a directory")
    parent = os.path.dirname(os.path.abspath(directory))
    _ensure_directory(io, parent)
    os.mkdir(directory)
    io.fsync_dir(parent)


class PartitionLogs:
    """The partition logs of one store, opened lazily, at most ``open_max`` at a time.

    ``root_dir`` is the partitions directory (``<store>/partitions``). :meth:`get`
    opens (creating on first use) and returns a partition's log, closing the least
    recently used one (closing syncs) when more than ``open_max`` are open. A log
    returned by :meth:`get` is closed when it is evicted, so a caller that holds one
    across other :meth:`get` calls, or beside other threads, should use
    :meth:`pinned`, which keeps it open for the duration.

    Thread-safe: one lock guards the LRU. Opening and closing (each a few fsyncs) run
    outside it, so threads opening different partitions proceed in parallel; a thread
    asking for a partition that another thread is opening or closing waits for it.
    """

    def __init__(
        self,
        root_dir: str | os.PathLike[str],
        *,
        open_max: int = OPEN_MAX_DEFAULT,
        segment_bytes: int = PARTITION_SEGMENT_BYTES,
        create: bool = True,
        io: FileIO | None = None,
    ) -> None:
        """Manage the partition logs under ``root_dir`` (created if missing and ``create``)."""
        if isinstance(open_max, bool) or not isinstance(open_max, int) or open_max < 1:
            raise InvalidArgumentError(f"open_max must be a positive integer, not {open_max!r}")
        self.root_dir = os.fspath(root_dir)
        self.open_max = open_max
        self._segment_bytes = segment_bytes
        self._create = create
        self._io = io or FileIO()
        if create:
            _ensure_directory(self._io, self.root_dir)
        elif not os.path.isdir(self.root_dir):
            raise NotAStoreError(f"{self.root_dir} does not exist (open with create=True)")
        self._lock = threading.Condition()
        self._open: OrderedDict[int, PartitionLogStore] = OrderedDict()
        self._busy: set[int] = set()  # partitions being opened or closed right now
        self._pins: dict[int, int] = {}
        # Durable index last returned by sync_all (or seen at open), per partition.
        self._reported: dict[int, int] = {}
        # Durable indices reached by closing evicted logs, still to be reported.
        self._evicted_durable: dict[int, int] = {}
        # A log was created since root_dir was last fsync'd: its entry is not durable.
        self._root_dirty = False
        self._sync_mutex = threading.Lock()
        self._closed = False

    # -- access ----------------------------------------------------------------------

    def get(self, partition_id: int) -> PartitionLogStore:
        """Partition ``partition_id``'s log, opened (or created) if needed."""
        return self._acquire(check_partition_id(partition_id), pin=False)

    @contextmanager
    def pinned(self, partition_id: int) -> Iterator[PartitionLogStore]:
        """``with logs.pinned(pid) as log:``: ``log`` is not evicted inside the block.

        While every open log is pinned, more than ``open_max`` may be open; the excess
        is closed as pins are released.
        """
        pid = check_partition_id(partition_id)
        log = self._acquire(pid, pin=True)
        try:
            yield log
        finally:
            with self._lock:
                self._unpin_locked(pid)
                victims = self._pick_victims_locked()
            self._close_victims(victims)

    def _acquire(self, pid: int, *, pin: bool) -> PartitionLogStore:
        with self._lock:
            while True:
                self._check_open()
                log = self._open.get(pid)
                if log is not None:
                    self._open.move_to_end(pid)
                    if pin:
                        self._pins[pid] = self._pins.get(pid, 0) + 1
                    return log
                if pid not in self._busy:
                    break
                self._lock.wait()
            self._busy.add(pid)
        try:
            log = PartitionLogStore.open(
                self.root_dir,
                pid,
                segment_bytes=self._segment_bytes,
                create=self._create,
                sync_parent=False,  # sync_all fsyncs root_dir once for all new logs
                io=self._io,
            )
        except BaseException:
            with self._lock:
                self._busy.discard(pid)
                self._lock.notify_all()
            raise
        with self._lock:
            self._busy.discard(pid)
            self._lock.notify_all()
            if self._closed:
                log.close()
                self._check_open()
            self._root_dirty |= log.created
            self._open[pid] = log
            self._reported.setdefault(pid, log.durable_index)
            if pin:
                self._pins[pid] = self._pins.get(pid, 0) + 1
            victims = self._pick_victims_locked(keep=pid)
        self._close_victims(victims)
        return log

    def _unpin_locked(self, pid: int) -> None:
        count = self._pins[pid] - 1
        if count:
            self._pins[pid] = count
        else:
            del self._pins[pid]

    def _pick_victims_locked(self, keep: int | None = None) -> list[PartitionLogStore]:
        """Take least recently used, unpinned logs out until ``open_max`` remain open.

        ``keep``: a partition never to evict now (the one a caller just asked for).
        The victims are marked busy; :meth:`_close_victims` closes them outside the lock.
        """
        excess = len(self._open) - self.open_max
        if excess <= 0:
            return []
        pids = [pid for pid in self._open if pid not in self._pins and pid != keep][:excess]
        self._busy.update(pids)
        return [self._open.pop(pid) for pid in pids]

    def _close_victims(self, victims: list[PartitionLogStore]) -> None:
        """Close (so sync) evicted logs; the first failure propagates after all are closed.

        A failed close (an I/O error while syncing) still releases the log, and its
        durable index stays where its last good sync left it.
        """
        errors: list[BaseException] = []
        for log in victims:
            try:
                log.close()
            except Exception as exc:
                errors.append(exc)
            with self._lock:
                self._evicted_durable[log.partition_id] = log.durable_index
                self._busy.discard(log.partition_id)
                self._lock.notify_all()
        if errors:
            raise errors[0]

    def existing_ids(self) -> list[int]:
        """Ids of the partitions that have a log directory, ascending (opens nothing)."""
        try:
            names = os.listdir(self.root_dir)
        except FileNotFoundError:
            return []
        ids = []
        for name in names:
            pid = _parse_partition_name(name)
            if pid is not None and os.path.isdir(os.path.join(self.root_dir, name)):
                ids.append(pid)
        return sorted(ids)

    def open_ids(self) -> list[int]:
        """Ids of the partitions whose logs are open now, least recently used first."""
        with self._lock:
            return list(self._open)

    # -- durability ------------------------------------------------------------------

    def sync_all(self) -> dict[int, int]:
        """Sync every open log with unsynced records; return changed durable indices.

        The result maps each partition whose durable index changed since the previous
        ``sync_all`` (including logs synced by being evicted, and rewound by a
        truncation) to its durable partition index: exactly what the caller must
        checkpoint. Every log in the result, directory entry included, is durable to
        that index when this returns. The fsyncs run outside the LRU lock, with the
        logs pinned; calls of ``sync_all`` are serialised.
        """
        with self._sync_mutex:
            with self._lock:
                self._check_open()
                dirty = [(pid, log) for pid, log in self._open.items() if log.unsynced]
                for pid, _ in dirty:
                    self._pins[pid] = self._pins.get(pid, 0) + 1
            try:
                each_in_parallel(lambda item: item[1].sync(), dirty)
            finally:
                with self._lock:
                    for pid, _ in dirty:
                        self._unpin_locked(pid)
                    victims = self._pick_victims_locked()
                self._close_victims(victims)
            with self._lock:
                changed = self._changes_locked()
            # Every log reported was created before this point, so one fsync of
            # root_dir now makes all their directory entries durable.
            self._sync_root()
            with self._lock:
                for pid, index in changed.items():
                    self._reported[pid] = index
                    if self._evicted_durable.get(pid) == index:
                        del self._evicted_durable[pid]
            return changed

    def create(self, partition_ids: Iterable[int]) -> None:
        """Create the logs of ``partition_ids`` that do not exist yet, so that no write
        waits for a log's creation later, and make every log's directory entry durable:
        a killed process may have created some without the fsync."""
        existing = set(self.existing_ids())
        each_in_parallel(self.get, [pid for pid in partition_ids if pid not in existing])
        with self._lock:
            self._root_dirty = True
        self._sync_root()

    def _sync_root(self) -> None:
        """fsync ``root_dir`` if a log was created since it was last synced."""
        with self._lock:
            root_dirty, self._root_dirty = self._root_dirty, False
        if root_dirty:
            try:
                self._io.fsync_dir(self.root_dir)
            except BaseException:
                with self._lock:
                    self._root_dirty = True
                raise

    def _changes_locked(self) -> dict[int, int]:
        durable = dict(self._evicted_durable)
        durable.update((pid, log.durable_index) for pid, log in self._open.items())
        return {
            pid: index for pid, index in sorted(durable.items()) if self._reported.get(pid) != index
        }

    # -- closing ---------------------------------------------------------------------

    def close(self) -> None:
        """Sync and close every open log. Idempotent.

        A log opened by another thread while this runs is closed when its open ends.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._lock.notify_all()
            while self._busy:  # let opens and evictions underway finish
                self._lock.wait()
            logs = list(self._open.values())
            self._open.clear()
        errors: list[BaseException] = []
        for log in logs:
            try:
                log.close()
            except Exception as exc:  # close the rest before reporting the first error
                errors.append(exc)
        if self._root_dirty and not errors:
            self._io.fsync_dir(self.root_dir)
            self._root_dirty = False
        if errors:
            raise errors[0]

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def __enter__(self) -> PartitionLogs:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<PartitionLogs {self.root_dir!r} open={len(self._open)}/{self.open_max}>"

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"PartitionLogs {self.root_dir} is closed")


__all__ = [
    "OPEN_MAX_DEFAULT",
    "PARTITIONS_DIR",
    "PARTITION_SEGMENT_BYTES",
    "RAFT_HEADER_DTYPE",
    "PartitionLogStore",
    "PartitionLogs",
    "partition_directory",
]

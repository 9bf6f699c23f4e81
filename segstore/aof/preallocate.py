"""Segment files off the hot path: a small pool of spares, recycling, gentle deletion.

Spare files (``spare.0.tmp``, ``spare.1.tmp``) are kept at full capacity ahead of need,
so rolling over to a new segment costs a header write and a rename. A new spare is
filled with written zeros (``preallocate="zero"``), so later fdatasyncs overwrite
blocks instead of allocating them (docs/PERFORMANCE.md measures the difference);
``"sparse"`` only sets the size.

Two ext4 behaviours shape the rest (measured in docs/PERFORMANCE.md):

- In ``data=ordered`` mode a journal commit waits for every dirty block allocated in
  it, so a foreground fsync would wait for a whole 64 MiB zero fill. The fill is
  therefore written and fdatasync'd a few MiB at a time.
- With the ``discard`` mount option, freeing a large file's blocks stalls the next
  commit for tens of milliseconds. A segment dropped by truncation therefore becomes a
  spare when a pool slot is free (its blocks are written already, so it is as good as
  a zeroed file and costs no I/O); otherwise it is renamed aside and shrunk gradually
  by a background thread before its unlink.

Stale frames in a recycled file are harmless: the scanner treats a checked frame whose
index is below the expected one as STALE, and the epoch rule kills the rest
(FORMAT.md 4.1, 4.2).
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Literal

from segstore.aof.fileio import FileIO
from segstore.aof.format import SEGMENT_BYTES_MIN, TEMP_SUFFIX, segment_name
from segstore.errors import StorageIOError

PreallocateMode = Literal["zero", "sparse"]
PREALLOCATE_MODES: tuple[PreallocateMode, ...] = ("zero", "sparse")
TRASH_SUFFIX = ".trash" + TEMP_SUFFIX
SPARE_SLOTS = 2
FILL_SYNC_BYTES = 4 << 20  # fdatasync the zero fill this often (see the module docstring)
# Freeing blocks on a discard mount stalls the next journal commit for ~1.5 ms per MiB
# here, so trash is freed 1 MiB at a time with pauses between, after a short delay that
# lets the truncation that made it finish first.
SHRINK_STEP_BYTES = 1 << 20
SHRINK_PAUSE_S = 0.002
DELETE_DELAY_S = 0.05


def spare_name(slot: int) -> str:
    """File name of spare slot ``slot``."""
    return f"spare.{slot}{TEMP_SUFFIX}"


SPARE_NAMES = frozenset(spare_name(slot) for slot in range(SPARE_SLOTS))


class SparePool:
    """Keeps spare segment files ready; recycles and deletes retired segments.

    Spares may differ in size (segments grow from ``SEGMENT_BYTES_INITIAL`` to the
    Aof's ``segment_bytes``, and recycled files keep theirs); a request is served by
    the smallest ready spare that is large enough.
    """

    def __init__(self, io: FileIO, directory: str, mode: PreallocateMode) -> None:
        self._io = io
        self._directory = directory
        self._mode = mode
        self._preparing: int | None = None
        self._thread: threading.Thread | None = None
        self._error: StorageIOError | None = None
        self._doomed: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._deleter: threading.Thread | None = None
        # Size of the ready spare in each slot, or None.
        self._ready: list[int | None] = [self._usable_size(slot) for slot in range(SPARE_SLOTS)]

    def _usable_size(self, slot: int) -> int | None:
        size = self._size_of(self._path(slot))
        if size >= SEGMENT_BYTES_MIN and size % 4096 == 0:
            return size
        if size >= 0:  # a fill cut short by a crash: start that slot over
            self.discard(self._path(slot))
        return None

    def _fitting_slot(self, capacity_bytes: int) -> int | None:
        fits = [
            (size, slot)
            for slot, size in enumerate(self._ready)
            if size is not None and size >= capacity_bytes
        ]
        return min(fits)[1] if fits else None

    def start(self, capacity_bytes: int) -> None:
        """Prepare a spare of ``capacity_bytes`` in the background unless one will do."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._wait()  # a finished fill's thread, if any
        if self._fitting_slot(capacity_bytes) is not None:
            return
        free = [slot for slot, size in enumerate(self._ready) if size is None]
        if not free:
            return
        self._error = None
        self._preparing = free[0]
        self._thread = threading.Thread(
            target=self._prepare_guarded,
            args=(free[0], capacity_bytes),
            name="segstore-prealloc",
            daemon=True,
        )
        self._thread.start()

    def take(
        self, first_index: int, capacity_bytes: int, make_header: Callable[[int], bytes]
    ) -> tuple[int, int]:
        """A spare of at least ``capacity_bytes`` as segment ``first_index``: (fd, size).

        ``make_header(size)`` gives the segment header for the spare's actual size; it
        is written and the file renamed (both made durable by the next flush). Raises
        :class:`StorageIOError` (ENOSPC, say) if no spare could be made; nothing is
        damaged then and a later call tries again.
        """
        slot = self._fitting_slot(capacity_bytes)
        if slot is None:
            self._wait()
            slot = self._fitting_slot(capacity_bytes)
        if slot is None:
            free = [k for k, size in enumerate(self._ready) if size is None]
            if not free:  # both spares too small: give one up
                free = [min(range(SPARE_SLOTS), key=lambda k: self._ready[k] or 0)]
                self.discard(self._path(free[0]))
                self._ready[free[0]] = None
            self._prepare_guarded(free[0], capacity_bytes)
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            slot = free[0]
        size = self._ready[slot]
        assert size is not None
        path = self._path(slot)
        final = os.path.join(self._directory, segment_name(first_index))
        fd = self._io.open(path, os.O_RDWR)
        try:
            self._io.write_all(fd, make_header(size), 0, path)
            self._io.rename(path, final)
        except BaseException:
            self._io.close(fd, path)
            raise
        self._ready[slot] = None
        return fd, size

    def retire(self, path: str) -> None:
        """Take a segment file out of the log: keep it as a spare, or delete it gently.

        Only renames happen here; the caller fsyncs the directory.
        """
        free = [
            slot
            for slot, size in enumerate(self._ready)
            if size is None and slot != self._preparing
        ]
        size = self._size_of(path)
        if free and size >= SEGMENT_BYTES_MIN and size % 4096 == 0:
            self._io.rename(path, self._path(free[0]))
            self._ready[free[0]] = size
            return
        self.discard(path)

    def discard(self, path: str) -> None:
        """Rename ``path`` aside (if it exists) and delete it gently in the background."""
        trash = path + TRASH_SUFFIX
        try:
            self._io.rename(path, trash)
        except StorageIOError as exc:
            if exc.errno == errno.ENOENT:
                return
            raise
        self.delete_later(trash)

    def delete_later(self, path: str) -> None:
        """Shrink and unlink ``path`` on the background deleter thread."""
        if self._deleter is None:
            self._deleter = threading.Thread(
                target=self._delete_loop, name="segstore-deleter", daemon=True
            )
            self._deleter.start()
        self._doomed.put(path)

    def close(self) -> None:
        """Wait for background work; spare files stay for the next open."""
        self._wait()
        if self._deleter is not None:
            self._doomed.put(None)
            self._deleter.join()
            self._deleter = None

    def _path(self, slot: int) -> str:
        return os.path.join(self._directory, spare_name(slot))

    @staticmethod
    def _size_of(path: str) -> int:
        try:
            return os.stat(path).st_size
        except OSError:
            return -1

    def _delete_loop(self) -> None:
        while (path := self._doomed.get()) is not None:
            time.sleep(DELETE_DELAY_S)
            # On failure the file is left for the next open, which deletes every *.tmp.
            with contextlib.suppress(StorageIOError):
                self._shrink_and_unlink(path)

    def _shrink_and_unlink(self, path: str) -> None:
        size = self._size_of(path)
        if size > SHRINK_STEP_BYTES:
            fd = self._io.open(path, os.O_RDWR)
            try:
                while size > SHRINK_STEP_BYTES:
                    size -= SHRINK_STEP_BYTES
                    self._io.set_size(fd, size, path)
                    time.sleep(SHRINK_PAUSE_S)
            finally:
                self._io.close(fd, path)
        self._io.unlink(path)

    def _wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _prepare_guarded(self, slot: int, capacity_bytes: int) -> None:
        path = self._path(slot)
        try:
            self._prepare(path, capacity_bytes)
            self._ready[slot] = capacity_bytes
        except StorageIOError as exc:
            self._error = exc
            # A half-made spare left behind is resized by the next attempt.
            with contextlib.suppress(StorageIOError):
                self._io.unlink(path)
        finally:
            self._preparing = None

    def _prepare(self, path: str, capacity_bytes: int) -> None:
        fd = self._io.open(path, os.O_RDWR | os.O_CREAT)
        try:
            self._io.set_size(fd, 0, path)
            if self._mode == "zero":
                for start in range(0, capacity_bytes, FILL_SYNC_BYTES):
                    end = min(start + FILL_SYNC_BYTES, capacity_bytes)
                    self._io.zero_range(fd, start, end, path)
                    self._io.fdatasync(fd, path)
            else:
                self._io.set_size(fd, capacity_bytes, path)
                self._io.fdatasync(fd, path)
        finally:
            self._io.close(fd, path)

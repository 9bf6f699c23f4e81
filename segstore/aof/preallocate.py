"""Segment files off the hot path: the spare, recycling, and deferred deletion.

A spare file (``spare.tmp``) is kept at full capacity ahead of need, so rolling over to
a new segment costs a header write and a rename. With ``"zero"`` a new spare is filled
with written zeros and fdatasync'd, so later fdatasyncs overwrite blocks instead of
allocating them (docs/PERFORMANCE.md measures the difference); ``"sparse"`` only sets
the size. A segment dropped by truncation becomes the next spare when one is wanted
(its blocks are already written, so it is as good as a zeroed file and costs no I/O);
otherwise it is renamed aside and unlinked by a background thread, because unlinking
a large written file is slow on a filesystem mounted with ``discard``.

Stale frames in a recycled file are harmless: the scanner treats a checked frame whose
index is below the expected one as STALE, and the epoch rule kills the rest
(FORMAT.md 4.1, 4.2).
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from typing import Literal

from segstore.aof.fileio import FileIO
from segstore.aof.format import SPARE_NAME, TEMP_SUFFIX, segment_name
from segstore.errors import StorageIOError

PreallocateMode = Literal["zero", "sparse"]
PREALLOCATE_MODES: tuple[PreallocateMode, ...] = ("zero", "sparse")
TRASH_SUFFIX = ".trash" + TEMP_SUFFIX


class SpareSegment:
    """Keeps one spare segment file ready; recycles and deletes retired segments."""

    def __init__(
        self, io: FileIO, directory: str, capacity_bytes: int, mode: PreallocateMode
    ) -> None:
        self._io = io
        self._directory = directory
        self._capacity_bytes = capacity_bytes
        self._mode = mode
        self._path = os.path.join(directory, SPARE_NAME)
        self._thread: threading.Thread | None = None
        self._error: StorageIOError | None = None
        self._ready = False
        self._doomed: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._deleter: threading.Thread | None = None

    def start(self) -> None:
        """Begin preparing a spare in the background if none is ready or underway."""
        if self._ready or self._thread is not None:
            return
        self._error = None
        self._thread = threading.Thread(
            target=self._prepare_guarded, name="segstore-prealloc", daemon=True
        )
        self._thread.start()

    def take(self, first_index: int, header: bytes) -> tuple[int, str]:
        """The spare as segment ``first_index``: header written, renamed; (fd, path).

        The header and the rename are made durable by the next flush. Raises
        :class:`StorageIOError` (ENOSPC, say) if no spare could be made; nothing is
        damaged then and a later call tries again.
        """
        self._wait()
        if not self._ready:
            self._prepare_guarded()
            if self._error is not None:
                error, self._error = self._error, None
                raise error
        final = os.path.join(self._directory, segment_name(first_index))
        fd = self._io.open(self._path, os.O_RDWR)
        try:
            self._io.write_all(fd, header, 0, self._path)
            self._io.rename(self._path, final)
        except BaseException:
            self._io.close(fd, self._path)
            raise
        self._ready = False
        return fd, final

    def retire(self, path: str) -> None:
        """Take a segment file out of the log: recycle it as the spare, or delete it.

        Only renames happen here; the caller fsyncs the directory. Deletion runs on a
        background thread.
        """
        self._wait()
        if not self._ready and self._size_of(path) == self._capacity_bytes:
            self._io.rename(path, self._path)
            self._ready = True
            return
        trash = path + TRASH_SUFFIX
        self._io.rename(path, trash)
        self.delete_later(trash)

    def delete_later(self, path: str) -> None:
        """Unlink ``path`` on the background deleter thread."""
        if self._deleter is None:
            self._deleter = threading.Thread(
                target=self._delete_loop, name="segstore-deleter", daemon=True
            )
            self._deleter.start()
        self._doomed.put(path)

    def close(self) -> None:
        """Wait for background work; the spare file stays for the next open."""
        self._wait()
        if self._deleter is not None:
            self._doomed.put(None)
            self._deleter.join()
            self._deleter = None

    def _size_of(self, path: str) -> int:
        try:
            return os.stat(path).st_size
        except OSError:
            return -1

    def _delete_loop(self) -> None:
        while (path := self._doomed.get()) is not None:
            # On failure the file is left for the next open, which deletes every *.tmp.
            with contextlib.suppress(StorageIOError):
                self._io.unlink(path)

    def _wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _prepare_guarded(self) -> None:
        try:
            self._prepare()
            self._ready = True
        except StorageIOError as exc:
            self._error = exc
            # A half-made spare left behind is resized by the next attempt.
            with contextlib.suppress(StorageIOError):
                self._io.unlink(self._path)

    def _prepare(self) -> None:
        fd = self._io.open(self._path, os.O_RDWR | os.O_CREAT)
        try:
            if self._io.file_size(fd, self._path) == self._capacity_bytes:
                return  # left ready by an earlier session
            self._io.set_size(fd, 0, self._path)
            if self._mode == "zero":
                self._io.zero_fill(fd, self._capacity_bytes, self._path)
            else:
                self._io.set_size(fd, self._capacity_bytes, self._path)
            self._io.fdatasync(fd, self._path)
        finally:
            self._io.close(fd, self._path)

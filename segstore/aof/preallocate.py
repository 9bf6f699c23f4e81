"""Preparing the next segment file off the hot path.

A spare file (``spare.tmp``) is created at full capacity ahead of need, so rolling over
to a new segment costs a header write and a rename. With ``"zero"`` the spare is filled
with written zeros and fdatasync'd, so later fdatasyncs overwrite blocks instead of
allocating them (docs/PERFORMANCE.md measures the difference); ``"sparse"`` only sets
the size, for stores where disk space matters more than sync latency.
"""

from __future__ import annotations

import os
import threading
from typing import Literal

from segstore.aof.fileio import FileIO
from segstore.aof.format import SPARE_NAME, segment_name
from segstore.errors import StorageIOError

PreallocateMode = Literal["zero", "sparse"]
PREALLOCATE_MODES: tuple[PreallocateMode, ...] = ("zero", "sparse")


class SpareSegment:
    """Keeps one spare segment file ready; hands it out renamed as a new segment."""

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

    def close(self) -> None:
        """Wait for a preparation underway; the spare file stays for the next open."""
        self._wait()

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

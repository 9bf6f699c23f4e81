"""One segment file: its descriptor, its read-only mapping and its in-memory index.

The index costs 8 bytes per record (u32 frame offset, u32 payload length) plus the
record header; record indices are implicit (``first_index + position``).
"""

from __future__ import annotations

import mmap
import os
import threading
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from segstore.aof.fileio import FileIO
from segstore.aof.format import (
    LENGTH_DTYPE,
    OFFSET_DTYPE,
    SEGMENT_HEADER_BYTES,
    SegmentIndexArrays,
    segment_name,
    sidecar_name,
)
from segstore.aof.kernels import RecordReader, SegmentIndexBase
from segstore.errors import IndexOutOfRangeError

_INITIAL_SLOTS = 1024


class Segment(SegmentIndexBase):
    """A segment's file and index. The Aof serialises every mutation."""

    def __init__(
        self,
        io: FileIO,
        directory: str,
        first_index: int,
        header_bytes: int,
        capacity_bytes: int,
    ) -> None:
        self.io = io
        self.first_index = first_index
        self.header_bytes = header_bytes
        self.capacity_bytes = capacity_bytes
        self.path = os.path.join(directory, segment_name(first_index))
        self.sidecar_path = os.path.join(directory, sidecar_name(first_index))
        self.count = 0
        self.end_offset = SEGMENT_HEADER_BYTES
        self.offsets: npt.NDArray[np.uint32] = np.empty(_INITIAL_SLOTS, OFFSET_DTYPE)
        self.lengths: npt.NDArray[np.uint32] = np.empty(_INITIAL_SLOTS, LENGTH_DTYPE)
        self.headers: npt.NDArray[np.uint8] = np.empty(_INITIAL_SLOTS * header_bytes, np.uint8)
        self.write_fd: int | None = None
        self.sealed = False
        self.sidecar_trusted = False  # a checked sidecar describes this segment
        self._map: mmap.mmap | None = None
        self._released = False
        self._map_lock = threading.Lock()
        self._view: memoryview | None = None
        self.reader = None

    @property
    def last_index(self) -> int:
        """Index of the segment's last record (``first_index - 1`` when empty)."""
        return self.first_index + self.count - 1

    @property
    def free_bytes(self) -> int:
        """Bytes still free for frames."""
        return self.capacity_bytes - self.end_offset

    def view(self) -> memoryview:
        """A read-only view of the whole file, mapped on first use.

        Raises :class:`IndexOutOfRangeError` once released: a lock-free read that found
        this segment before a truncation dropped it reads as if it came after.
        """
        return self._mapped()[0]

    def map_reader(self) -> RecordReader:
        """The zero-copy record reader of this segment, mapping the file if needed."""
        return self._mapped()[1]

    def _mapped(self) -> tuple[memoryview, RecordReader]:
        # Under the lock release() takes: a read must not map a file that a truncation
        # is dropping (it may be gone, or shrunk under the new mapping: SIGBUS).
        with self._map_lock:
            if self._released:
                raise IndexOutOfRangeError(f"{self.path} was dropped by a truncation")
            if self._view is None or self.reader is None:
                fd = self.io.open(self.path, os.O_RDONLY)
                try:
                    self._map = self.io.map_readonly(fd, self.capacity_bytes, self.path)
                finally:
                    self.io.close(fd, self.path)
                self._view = memoryview(self._map)
                self.reader = RecordReader(self._view)
            return self._view, self.reader

    def load(self, arrays: SegmentIndexArrays) -> None:
        """Adopt a complete index (from a sidecar or a scan)."""
        self.offsets = arrays.offsets
        self.lengths = arrays.lengths
        self.headers = arrays.headers
        self.count = len(arrays.offsets)
        self.end_offset = arrays.end_offset

    def index_arrays(self) -> SegmentIndexArrays:
        """The index as exact-size arrays (what a sidecar stores)."""
        return SegmentIndexArrays(
            self.offsets[: self.count],
            self.lengths[: self.count],
            self.headers[: self.count * self.header_bytes],
            self.end_offset,
        )

    def reserve(self, extra: int) -> None:
        """Make room for ``extra`` more records in the index arrays."""
        needed = self.count + extra
        if needed <= len(self.offsets) and self.offsets.flags.writeable:
            return
        slots = max(needed, 2 * len(self.offsets), _INITIAL_SLOTS)
        offsets = np.empty(slots, OFFSET_DTYPE)
        lengths = np.empty(slots, LENGTH_DTYPE)
        headers = np.empty(slots * self.header_bytes, np.uint8)
        offsets[: self.count] = self.offsets[: self.count]
        lengths[: self.count] = self.lengths[: self.count]
        used = self.count * self.header_bytes
        headers[:used] = self.headers[:used]
        self.offsets, self.lengths, self.headers = offsets, lengths, headers

    def cut(self, count: int) -> None:
        """Keep only the first ``count`` records; the write position moves back."""
        if count < self.count:
            self.end_offset = int(self.offsets[count])
            self.count = count

    def trim(self) -> None:
        """Release spare index capacity (a sealed segment never grows again)."""
        self.offsets = self.offsets[: self.count].copy()
        self.lengths = self.lengths[: self.count].copy()
        self.headers = self.headers[: self.count * self.header_bytes].copy()

    def release(self) -> bool:
        """Close the descriptor and drop the mapping; False if views still hold it.

        Views handed out by ``Aof.read`` keep the mapping alive until they are
        released, so ``mmap.close`` may refuse; dropping our reference is enough then,
        but the file must then keep its size (reading a mapped page past the end of a
        file is SIGBUS).
        """
        if self.write_fd is not None:
            fd, self.write_fd = self.write_fd, None
            self.io.close(fd, self.path)
        with self._map_lock:
            self._released = True
            self.reader = None  # its export of the view would keep the mapping open
            view_released = _let_go(None if self._view is None else self._view.release)
            map_closed = _let_go(None if self._map is None else self._map.close)
            self._view = self._map = None
            released = view_released and map_closed
        return released


def _let_go(close: Callable[[], None] | None) -> bool:
    """Release or close a mapping (None: there is none); False if views still hold it."""
    if close is not None:
        try:
            close()
        except BufferError:
            return False
    return True

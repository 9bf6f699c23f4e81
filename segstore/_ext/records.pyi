"""Type stubs for the compiled ``segstore._ext.records`` (source: ``_ext/records.pyx``).

Hand-written, as asyncpg does, so ``mypy --strict`` checks the Python layer against the
compiled one. Keep in step with the ``def`` signatures in ``_ext/records.pyx``.
"""

from collections.abc import Callable, Sequence
from typing import Any, Final, TypeAlias

import numpy as np
import numpy.typing as npt
from typing_extensions import Buffer

# Any C-contiguous buffer. numpy arrays are named too: their stubs declare __buffer__
# only for Python >= 3.12, and mypy checks this project as 3.11.
BufferLike: TypeAlias = Buffer | npt.NDArray[Any]

FRAME_HEADER_BYTES: Final[int]
FRAME_ALIGN_BYTES: Final[int]
DURABLE_LAG_UNKNOWN: Final[int]
SEGMENT_BYTES_MAX: Final[int]
PAYLOAD_BYTES_MAX: Final[int]
GIL_RELEASE_BYTES: Final[int]

END_CLEAN: Final[int]
END_STALE: Final[int]
END_TORN: Final[int]
END_FULL: Final[int]
END_CAPACITY: Final[int]

FRAME_OK: Final[int]
FRAME_BAD_CRC: Final[int]
FRAME_BAD_INDEX: Final[int]
FRAME_BAD_LENGTH: Final[int]
FRAME_OUT_OF_BOUNDS: Final[int]

def frame_bytes(header_bytes: int, payload_bytes: int) -> int:
    """Return the size of one frame: ``(24 + header_bytes + payload_bytes + 7) & ~7``."""

def batch_bytes(header_bytes: int, payload_lengths: npt.NDArray[np.uint32]) -> int:
    """Return the total frame bytes of a batch with the given payload lengths."""

def encode_one(
    out: BufferLike,
    out_offset: int,
    payload: BufferLike,
    header: BufferLike,
    index: int,
    epoch: int,
    durable_index: int,
) -> int:
    """Write one frame at ``out[out_offset:]`` and return its size."""

def encode_gathered(
    out: BufferLike,
    out_offset: int,
    source: BufferLike,
    payload_offsets: npt.NDArray[np.uint64],
    payload_lengths: npt.NDArray[np.uint32],
    start: int,
    headers: BufferLike,
    header_bytes: int,
    first_index: int,
    epoch: int,
    durable_index: int,
    base_offset: int,
    frame_offsets_out: npt.NDArray[np.uint32],
) -> int:
    """Write frames of payloads gathered from ``source``; return the bytes written."""

def measure_payloads(payloads: Sequence[BufferLike], lengths_out: npt.NDArray[np.uint32]) -> int:
    """Fill ``lengths_out`` with each payload's size; return the largest."""

def gathered_extent(
    offsets: npt.NDArray[np.uint64], lengths: npt.NDArray[np.uint32]
) -> tuple[int, int]:
    """(first byte past every payload, largest length); (0, 0) for none."""

def fit_frames(
    lengths: npt.NDArray[np.uint32], start: int, header_bytes: int, room_bytes: int
) -> tuple[int, int]:
    """How many frames from ``lengths[start:]`` fit in ``room_bytes``: (count, bytes)."""

def encode_payloads(
    out: BufferLike,
    out_offset: int,
    payloads: Sequence[BufferLike],
    start: int,
    payload_lengths: npt.NDArray[np.uint32],
    headers: BufferLike,
    header_bytes: int,
    first_index: int,
    epoch: int,
    durable_index: int,
    base_offset: int,
    frame_offsets_out: npt.NDArray[np.uint32],
) -> int:
    """Encode ``payloads[start:start + n]`` as frames; return the bytes written."""

def scan_segment(
    segment: BufferLike,
    start_offset: int,
    expected_index: int,
    header_bytes: int,
    meta_epoch: int,
    epoch_cut: int,
    offsets_out: npt.NDArray[np.uint32],
    lengths_out: npt.NDArray[np.uint32],
    headers_out: BufferLike,
) -> tuple[int, int, int]:
    """Read valid frames from ``start_offset``; return ``(count, end_offset, end_kind)``."""

def find_durable_evidence(
    segment: BufferLike,
    start_offset: int,
    expected_index: int,
    header_bytes: int,
    meta_epoch: int,
    epoch_cut: int = 0,
) -> int:
    """Return the offset of a frame proving record ``expected_index`` durable, else -1."""

def verify_frame(
    segment: BufferLike,
    offset: int,
    header_bytes: int,
    expected_index: int,
    payload_bytes: int,
) -> int:
    """Check the frame at ``offset``; return ``FRAME_OK`` (0) or a ``FRAME_*`` status."""

def verify_frames(
    segment: BufferLike,
    offsets: npt.NDArray[np.uint32],
    lengths: npt.NDArray[np.uint32],
    header_bytes: int,
    first_index: int,
) -> tuple[int, int]:
    """Verify n frames; ``(-1, FRAME_OK)`` when all are good, else ``(k, status)``."""

def read_frame_fields(segment: BufferLike, offset: int) -> tuple[int, int, int, int, int]:
    """Return the raw fields ``(crc, payload_bytes, index, epoch, durable_lag)``."""

class RecordReader:
    """Zero-copy record payloads of one mapped segment."""

    def __init__(self, mapping: BufferLike) -> None: ...
    @property
    def nbytes(self) -> int: ...
    def read(
        self,
        offsets: npt.NDArray[np.uint32],
        lengths: npt.NDArray[np.uint32],
        position: int,
        header_bytes: int,
        index: int,
        verify: bool,
    ) -> memoryview | None:
        """The payload at ``position``; None if the frame does not check out."""
    def read_copy(
        self,
        offsets: npt.NDArray[np.uint32],
        lengths: npt.NDArray[np.uint32],
        position: int,
        header_bytes: int,
        index: int,
        verify: bool,
    ) -> tuple[bytes, bytes] | None:
        """(header, payload) bytes at ``position``; None if the frame does not check out."""
    def read_many(
        self,
        offsets: npt.NDArray[np.uint32],
        lengths: npt.NDArray[np.uint32],
        start: int,
        end: int,
        header_bytes: int,
        first_index: int,
        verify: bool,
        copy: bool = False,
    ) -> list[memoryview] | list[bytes] | None:
        """Payloads of positions [start, end); None if any frame does not check out."""

class SegmentIndexBase:
    """The index fields of a segment, readable from C by ReadPath."""

    first_index: int
    count: int
    offsets: npt.NDArray[np.uint32]
    lengths: npt.NDArray[np.uint32]
    reader: RecordReader | None

class ReadPath:
    """Aof.read in one compiled call; None means "take the slow path"."""

    first_index: int
    header_bytes: int
    verify: bool
    slow: Callable[[int], memoryview]

    def set_segments(self, segments: list[SegmentIndexBase]) -> None: ...
    def read(self, index: object) -> memoryview | None: ...
    def payload(self, index: int) -> memoryview:
        """read(index), or slow(index) where read would return None."""
    def read_copy(self, index: object) -> tuple[bytes, bytes] | None: ...

# -- the segmented log's record header (FORMAT.md 7.2) and partition header (7.1) --------

LOG_ROW_BYTES: Final[int]
ROW_SLOW: Final[int]

class LogRowBuffer:
    """Header rows and values of buffered entries; assigns partition indices."""

    values: Final[list[bytes]]  # read-only attribute (the list itself is mutable)
    next_indices: dict[int, int]

    def __init__(
        self, partition_count: int, next_indices: dict[int, int], capacity: int = 4096
    ) -> None: ...
    def __len__(self) -> int: ...
    def add(self, term: int, timestamp_us: int, val_type: int, value: bytes) -> int:
        """Buffer one entry (val_type 1 = app_log): the new count, or ROW_SLOW."""
    def add_row(
        self,
        term: int,
        timestamp_us: int,
        partition_index: int,
        partition_id: int,
        val_type: int,
        value: bytes,
    ) -> int:
        """Buffer one entry whose row the caller computed; return the new count."""
    def rows(self) -> memoryview:
        """The buffered rows, len(self) * 32 bytes."""
    def truncate(self, count: int) -> None:
        """Keep the first ``count`` entries."""

class EntryAppender:
    """A log store's per-entry ``append`` in one compiled call (records.pyx)."""

    writable: bool
    log_last_index: int

    def __init__(
        self,
        rows: LogRowBuffer,
        pending: list[Any],
        entry_type: type[Any],
        lock: Any,
        log_last_index: int,
        max_value_bytes: int,
        full_count: int,
        slow: Callable[[Any], int],
        flush_full: Callable[[], None],
    ) -> None: ...
    def append(self, entry: Any) -> int:
        """Buffer ``entry`` (or hand it to ``slow``); return its index."""

def build_log_entries(
    entry_type: type[Any],
    setters: tuple[Any, ...],
    headers: BufferLike,
    values: list[bytes],
    val_types: tuple[object, ...],
) -> list[Any]:
    """Entries from header rows and values, slots set directly (no __init__)."""

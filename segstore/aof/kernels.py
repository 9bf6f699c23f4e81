"""The one door between Python and the compiled kernels (``_ext/*.pyx``).

Everything in segstore that needs CRC32C or record frames imports it from here, never
from ``segstore._ext`` directly. The kernels take buffers, ints and numpy arrays, run
without the GIL and report data problems as status codes; :func:`raise_for_frame_status`
is the only place those codes become exceptions (as ``h5py/_errors`` and
``pyarrow/error.pxi`` do).

The kernel functions are re-exported unwrapped: their typed signatures come from the
hand-written stubs ``segstore/_ext/*.pyi``, and a wrapper would add Python call overhead
to :func:`verify_frame`, which runs on every read.
"""

from __future__ import annotations

import enum
import os
from typing import TYPE_CHECKING

import numpy as np

from segstore._ext.crc32c import crc32c, crc32c_portable, hardware_accelerated
from segstore._ext.records import (
    DURABLE_LAG_UNKNOWN,
    END_CAPACITY,
    END_CLEAN,
    END_FULL,
    END_STALE,
    END_TORN,
    FRAME_ALIGN_BYTES,
    FRAME_BAD_CRC,
    FRAME_BAD_INDEX,
    FRAME_BAD_LENGTH,
    FRAME_HEADER_BYTES,
    FRAME_OK,
    FRAME_OUT_OF_BOUNDS,
    LOG_ROW_BYTES,
    PAYLOAD_BYTES_MAX,
    ROW_SLOW,
    SEGMENT_BYTES_MAX,
    EntryAppender,
    LogRowBuffer,
    ReadPath,
    RecordReader,
    SegmentIndexBase,
    batch_bytes,
    build_log_entries,
    encode_gathered,
    encode_one,
    encode_payloads,
    find_durable_evidence,
    fit_frames,
    frame_bytes,
    gathered_extent,
    measure_payloads,
    read_frame_fields,
    scan_segment,
    verify_frame,
    verify_frames,
)
from segstore.errors import CorruptionError, SegstoreError

if TYPE_CHECKING:
    # Stub-only alias: any C-contiguous buffer, numpy arrays included.
    from segstore._ext.records import BufferLike


class ScanEnd(enum.IntEnum):
    """What ended :func:`scan_segment` (FORMAT.md 4.1), as its ``end_kind``."""

    CLEAN = END_CLEAN
    """The next 24 frame-header bytes are zero: never written."""
    STALE = END_STALE
    """A frame whose CRC matches but is not live (FORMAT.md 4.2)."""
    TORN = END_TORN
    """Anything else; corruption if later evidence proves durability (FORMAT.md 4.3)."""
    FULL = END_FULL
    """Fewer than 24 bytes remain."""
    CAPACITY = END_CAPACITY
    """The out arrays are full; grow them and scan again from ``end_offset``."""


class FrameStatus(enum.IntEnum):
    """Result of :func:`verify_frame` and :func:`verify_frames`."""

    OK = FRAME_OK
    BAD_CRC = FRAME_BAD_CRC
    BAD_INDEX = FRAME_BAD_INDEX
    BAD_LENGTH = FRAME_BAD_LENGTH
    OUT_OF_BOUNDS = FRAME_OUT_OF_BOUNDS


def raise_for_frame_status(
    status: int,
    path: str | os.PathLike[str],
    offset: int,
    expected_index: int,
    *,
    segment: BufferLike | None = None,
    payload_bytes: int | None = None,
) -> None:
    """Raise the :class:`CorruptionError` that a ``FRAME_*`` status means; OK returns.

    ``path`` and ``offset`` name the file and the frame's offset in it. Pass the
    ``segment`` buffer (and the expected ``payload_bytes``) to have the message quote the
    index or length actually found; without them the message says what was expected.
    An unknown status is a kernel/facade mismatch and raises :class:`SegstoreError`.
    """
    if status == FRAME_OK:
        return
    fields = _frame_fields_or_none(segment, offset)
    if status == FRAME_BAD_CRC:
        what = f"CRC32C mismatch for record {expected_index}"
    elif status == FRAME_BAD_INDEX:
        found = f"record {fields[2]}" if fields else "a frame of another record"
        what = f"expected record {expected_index}, found {found}"
    elif status == FRAME_BAD_LENGTH:
        stored = f"{fields[1]} payload bytes" if fields else "another payload length"
        wanted = f" instead of {payload_bytes}" if payload_bytes is not None else ""
        what = f"record {expected_index}: frame holds {stored}{wanted}"
    elif status == FRAME_OUT_OF_BOUNDS:
        size = f" of {_buffer_bytes(segment)} bytes" if segment is not None else ""
        what = f"record {expected_index}: frame runs past the end of the file{size}"
    else:
        raise SegstoreError(f"unknown frame status {status} from the records kernel")
    raise CorruptionError(path, offset, what)


def check_frame(
    segment: BufferLike,
    path: str | os.PathLike[str],
    offset: int,
    header_bytes: int,
    expected_index: int,
    payload_bytes: int,
) -> None:
    """Verify one frame and raise :class:`CorruptionError` if it does not check out."""
    status = verify_frame(segment, offset, header_bytes, expected_index, payload_bytes)
    if status != FRAME_OK:
        raise_for_frame_status(
            status,
            path,
            offset,
            expected_index,
            segment=segment,
            payload_bytes=payload_bytes,
        )


def _buffer_bytes(segment: BufferLike) -> int:
    # numpy arrays are split off only because their stubs lack __buffer__ before 3.12.
    if isinstance(segment, np.ndarray):
        return int(segment.nbytes)
    return memoryview(segment).nbytes


def _frame_fields_or_none(
    segment: BufferLike | None, offset: int
) -> tuple[int, int, int, int, int] | None:
    # Only for error messages: a frame header that is itself out of bounds quotes nothing.
    if segment is None:
        return None
    try:
        return read_frame_fields(segment, offset)
    except ValueError:
        return None


__all__ = [
    "DURABLE_LAG_UNKNOWN",
    "END_CAPACITY",
    "END_CLEAN",
    "END_FULL",
    "END_STALE",
    "END_TORN",
    "FRAME_ALIGN_BYTES",
    "FRAME_BAD_CRC",
    "FRAME_BAD_INDEX",
    "FRAME_BAD_LENGTH",
    "FRAME_HEADER_BYTES",
    "FRAME_OK",
    "FRAME_OUT_OF_BOUNDS",
    "LOG_ROW_BYTES",
    "PAYLOAD_BYTES_MAX",
    "ROW_SLOW",
    "SEGMENT_BYTES_MAX",
    "EntryAppender",
    "FrameStatus",
    "LogRowBuffer",
    "ReadPath",
    "RecordReader",
    "ScanEnd",
    "SegmentIndexBase",
    "batch_bytes",
    "build_log_entries",
    "check_frame",
    "crc32c",
    "crc32c_portable",
    "encode_gathered",
    "encode_one",
    "encode_payloads",
    "find_durable_evidence",
    "fit_frames",
    "frame_bytes",
    "gathered_extent",
    "hardware_accelerated",
    "measure_payloads",
    "raise_for_frame_status",
    "read_frame_fields",
    "scan_segment",
    "verify_frame",
    "verify_frames",
]

"""Pure-Python twin of the record kernels (``_ext/records.pyx``), for tests.

Written straight from docs/FORMAT.md section 4 with ``struct`` and the ``crc32c`` PyPI
package, sharing no code with the kernels, so agreement between the two is evidence
that both follow the spec. Slow and simple on purpose.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import crc32c as crc32c_package

FRAME_HEADER = struct.Struct("<IIQII")  # crc, payload bytes, index, epoch, durable lag
LAG_UNKNOWN = 0xFFFFFFFF

CLEAN, STALE, TORN, FULL = "CLEAN", "STALE", "TORN", "FULL"
OK, BAD_CRC, BAD_INDEX, BAD_LENGTH, OUT_OF_BOUNDS = range(5)


def crc32c(data: bytes) -> int:
    """CRC32C from the independent ``crc32c`` package."""
    return int(crc32c_package.crc32c(data))


def frame_bytes(header_bytes: int, payload_bytes: int) -> int:
    """FORMAT.md 4 padding rule."""
    return (24 + header_bytes + payload_bytes + 7) & ~7


def durable_lag(index: int, durable_index: int) -> int:
    """The lag field: ``index - durable_index`` if it fits below 0xFFFFFFFF, else unknown."""
    lag = index - durable_index
    return lag if 0 <= lag < LAG_UNKNOWN else LAG_UNKNOWN


def encode_frame(
    payload: bytes, header: bytes, index: int, epoch: int, durable_index: int
) -> bytes:
    """Return one whole frame, padding included."""
    lag = durable_lag(index, durable_index)
    body = struct.pack("<IQII", len(payload), index, epoch, lag) + header + payload
    frame = struct.pack("<I", crc32c(body)) + body
    return frame + bytes(frame_bytes(len(header), len(payload)) - len(frame))


def frame_crc_ok(buf: bytes, offset: int, header_bytes: int) -> bool:
    """True when the frame at ``offset`` fits in ``buf`` and its CRC matches."""
    crc, payload_bytes, _, _, _ = FRAME_HEADER.unpack_from(buf, offset)
    if offset + frame_bytes(header_bytes, payload_bytes) > len(buf):
        return False
    return bool(crc == crc32c(buf[offset + 4 : offset + 24 + header_bytes + payload_bytes]))


@dataclass
class ScanResult:
    """What the twin's scan found: one entry per valid frame, and how it ended."""

    offsets: list[int] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    headers: list[bytes] = field(default_factory=list)
    end_offset: int = 0
    end_kind: str = FULL


def scan(
    buf: bytes,
    start_offset: int,
    expected_index: int,
    header_bytes: int,
    meta_epoch: int,
    epoch_cut: int,
) -> ScanResult:
    """FORMAT.md 4.1 / 4.2, one frame at a time, without capacity limits."""
    result = ScanResult()
    offset = start_offset
    while True:
        result.end_offset = offset
        if len(buf) - offset < 24:
            result.end_kind = FULL
            return result
        if buf[offset : offset + 24] == bytes(24):
            result.end_kind = CLEAN
            return result
        if not frame_crc_ok(buf, offset, header_bytes):
            result.end_kind = TORN
            return result
        _, payload_bytes, index, epoch, _ = FRAME_HEADER.unpack_from(buf, offset)
        live = epoch == meta_epoch or (epoch < meta_epoch and index <= epoch_cut)
        if not live:
            result.end_kind = STALE
            return result
        if index != expected_index + len(result.offsets):
            result.end_kind = TORN
            return result
        result.offsets.append(offset)
        result.lengths.append(payload_bytes)
        result.headers.append(bytes(buf[offset + 24 : offset + 24 + header_bytes]))
        offset += frame_bytes(header_bytes, payload_bytes)


def find_durable_evidence(
    buf: bytes,
    start_offset: int,
    expected_index: int,
    header_bytes: int,
    meta_epoch: int,
    epoch_cut: int = 0,
) -> int:
    """FORMAT.md 4.3: offset of a live frame proving ``expected_index`` durable, else -1."""
    for offset in range(start_offset + 8, len(buf) - 23, 8):
        _, _, index, epoch, lag = FRAME_HEADER.unpack_from(buf, offset)
        live = epoch == meta_epoch or (epoch < meta_epoch and index <= epoch_cut)
        if not live or lag == LAG_UNKNOWN or index - lag < expected_index:
            continue
        if buf[offset : offset + 24] != bytes(24) and frame_crc_ok(buf, offset, header_bytes):
            return offset
    return -1


def verify_frame(
    buf: bytes, offset: int, header_bytes: int, expected_index: int, payload_bytes: int
) -> int:
    """Status of the frame at ``offset``, in the kernel's order of checks."""
    if offset + frame_bytes(header_bytes, payload_bytes) > len(buf):
        return OUT_OF_BOUNDS
    _, stored_payload_bytes, index, _, _ = FRAME_HEADER.unpack_from(buf, offset)
    if stored_payload_bytes != payload_bytes:
        return BAD_LENGTH
    if not frame_crc_ok(buf, offset, header_bytes):
        return BAD_CRC
    if index != expected_index:
        return BAD_INDEX
    return OK

"""Byte layouts of the Aof's files (docs/FORMAT.md is the specification).

Pure encode/decode of the small fixed structures: the meta file, segment headers and
index sidecars. Record frames are encoded and scanned by the Cython kernels.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from segstore.aof.kernels import crc32c
from segstore.errors import CorruptionError, FormatVersionError, NotAStoreError

FORMAT_VERSION = 1

META_MAGIC = b"SGAOFMET"
SEGMENT_MAGIC = b"SGAOFSEG"
SIDECAR_MAGIC = b"SGAOFIDX"

META_NAME = "aof.meta"
LOCK_NAME = "LOCK"
SEGMENT_SUFFIX = ".seg"
SIDECAR_SUFFIX = ".idx"
TEMP_SUFFIX = ".tmp"

SEGMENT_HEADER_BYTES = 64
FRAME_HEADER_BYTES = 24
FRAME_ALIGNMENT = 8
SEGMENT_BYTES_MAX = 2**32 - 1  # frame offsets are u32 in the index (8 bytes/record)
SEGMENT_BYTES_MIN = 4096
EPOCH_MAX = 2**32 - 1

_META_PREFIX = struct.Struct("<8sII")
_SEGMENT_HEADER = struct.Struct("<8sIIQQ16s12x")
_SIDECAR_HEADER = struct.Struct("<8sIIQQI4x16s4x")
_U32 = struct.Struct("<I")

OFFSET_DTYPE = np.dtype("<u4")
LENGTH_DTYPE = np.dtype("<u4")


def frame_bytes(header_bytes: int, payload_bytes: int) -> int:
    """Bytes a record occupies on disk: the padding rule of FORMAT.md section 4."""
    return (FRAME_HEADER_BYTES + header_bytes + payload_bytes + 7) & ~7


def segment_name(first_index: int) -> str:
    """File name of the segment whose first record is ``first_index``."""
    return f"{first_index:020d}{SEGMENT_SUFFIX}"


def sidecar_name(first_index: int) -> str:
    """File name of the index sidecar of segment ``first_index``."""
    return f"{first_index:020d}{SIDECAR_SUFFIX}"


def parse_segment_name(name: str) -> int | None:
    """The first index a segment file name encodes, or None for other names."""
    stem, dot, suffix = name.partition(".")
    if dot and "." + suffix == SEGMENT_SUFFIX and len(stem) == 20 and stem.isdigit():
        return int(stem)
    return None


def dtype_to_json(dtype: np.dtype[Any] | None) -> list[Any] | str:
    """The JSON form of a header dtype: numpy's descr (``[]`` for none)."""
    if dtype is None or dtype.itemsize == 0:
        return []
    descr = np.lib.format.dtype_to_descr(dtype)
    as_json: list[Any] | str = json.loads(json.dumps(descr))
    return as_json


def dtype_from_json(descr: list[Any] | str) -> np.dtype[Any] | None:
    """Inverse of :func:`dtype_to_json`."""
    if isinstance(descr, str):
        return np.dtype(descr)
    if not descr:
        return None
    fields = [tuple(_tuple_shapes(item)) for item in descr]
    return np.lib.format.descr_to_dtype(fields)


def _tuple_shapes(item: list[Any]) -> list[Any]:
    # JSON turns descr tuples (and shapes) into lists; numpy wants tuples back.
    out: list[Any] = []
    for part in item:
        if isinstance(part, list) and part and all(isinstance(p, int) for p in part):
            out.append(tuple(part))
        elif isinstance(part, list):
            out.append([tuple(_tuple_shapes(p)) for p in part])
        else:
            out.append(part)
    return out


@dataclass(frozen=True)
class Meta:
    """The contents of ``aof.meta``."""

    store_id: bytes
    header_dtype: np.dtype[Any] | None
    segment_bytes: int
    first_index: int = 1
    epoch: int = 0
    epoch_cut: int = 0
    user: dict[str, Any] = field(default_factory=dict)

    @property
    def header_bytes(self) -> int:
        """Bytes of the record header (0 without a header dtype)."""
        return 0 if self.header_dtype is None else self.header_dtype.itemsize

    def with_changes(self, **changes: Any) -> Meta:
        """A copy with ``changes`` applied."""
        return replace(self, **changes)

    def encode(self) -> bytes:
        """The file's bytes (FORMAT.md section 2)."""
        body = json.dumps(
            {
                "store_id": self.store_id.hex(),
                "header_dtype": dtype_to_json(self.header_dtype),
                "header_bytes": self.header_bytes,
                "segment_bytes": self.segment_bytes,
                "first_index": self.first_index,
                "epoch": self.epoch,
                "epoch_cut": self.epoch_cut,
                "user": self.user,
            },
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
        head = _META_PREFIX.pack(META_MAGIC, FORMAT_VERSION, len(body)) + body
        return head + _U32.pack(crc32c(head))

    @classmethod
    def decode(cls, data: bytes, path: str) -> Meta:
        """Parse and check ``aof.meta`` bytes read from ``path``."""
        if len(data) < _META_PREFIX.size + 4 or data[:8] != META_MAGIC:
            raise NotAStoreError(f"{path} is not an Aof meta file (bad magic)")
        _, version, body_bytes = _META_PREFIX.unpack_from(data)
        if version != FORMAT_VERSION:
            raise FormatVersionError(
                f"{path} has format version {version}; this build reads {FORMAT_VERSION}"
            )
        end = _META_PREFIX.size + body_bytes
        if len(data) != end + 4:
            raise CorruptionError(path, 12, f"body length {body_bytes} does not match file")
        (stored_crc,) = _U32.unpack_from(data, end)
        if stored_crc != crc32c(data[:end]):
            raise CorruptionError(path, end, "CRC32C mismatch")
        body = json.loads(data[_META_PREFIX.size : end])
        return cls(
            store_id=bytes.fromhex(body["store_id"]),
            header_dtype=dtype_from_json(body["header_dtype"]),
            segment_bytes=int(body["segment_bytes"]),
            first_index=int(body["first_index"]),
            epoch=int(body["epoch"]),
            epoch_cut=int(body["epoch_cut"]),
            user=dict(body["user"]),
        )

    @staticmethod
    def new_store_id() -> bytes:
        """A fresh random store id."""
        return os.urandom(16)


@dataclass(frozen=True)
class SegmentHeader:
    """The 64-byte header at the start of every segment file."""

    header_bytes: int
    first_index: int
    segment_bytes: int
    store_id: bytes

    def encode(self) -> bytes:
        """The header's bytes (FORMAT.md section 3)."""
        head = _SEGMENT_HEADER.pack(
            SEGMENT_MAGIC,
            FORMAT_VERSION,
            self.header_bytes,
            self.first_index,
            self.segment_bytes,
            self.store_id,
        )
        return head + _U32.pack(crc32c(head))

    @classmethod
    def decode(cls, data: bytes | memoryview, path: str) -> SegmentHeader:
        """Parse and check a segment header read from ``path``."""
        raw = bytes(data[:SEGMENT_HEADER_BYTES])
        if len(raw) < SEGMENT_HEADER_BYTES:
            raise CorruptionError(path, 0, "segment file shorter than its header")
        magic, version, header_bytes, first_index, segment_bytes, store_id = (
            _SEGMENT_HEADER.unpack_from(raw)
        )
        if magic != SEGMENT_MAGIC:
            raise CorruptionError(path, 0, f"bad segment magic {magic!r}")
        if version != FORMAT_VERSION:
            raise FormatVersionError(
                f"{path} has format version {version}; this build reads {FORMAT_VERSION}"
            )
        (stored_crc,) = _U32.unpack_from(raw, 60)
        if stored_crc != crc32c(raw[:60]):
            raise CorruptionError(path, 60, "segment header CRC32C mismatch")
        return cls(header_bytes, first_index, segment_bytes, store_id)


@dataclass
class SegmentIndexArrays:
    """One segment's in-memory index: frame offsets, payload lengths, headers."""

    offsets: npt.NDArray[np.uint32]
    lengths: npt.NDArray[np.uint32]
    headers: npt.NDArray[np.uint8]  # count * header_bytes raw bytes
    end_offset: int


def encode_sidecar(
    header_bytes: int,
    first_index: int,
    store_id: bytes,
    arrays: SegmentIndexArrays,
) -> bytes:
    """The bytes of an index sidecar (FORMAT.md section 5)."""
    count = len(arrays.offsets)
    head = _SIDECAR_HEADER.pack(
        SIDECAR_MAGIC,
        FORMAT_VERSION,
        header_bytes,
        first_index,
        count,
        arrays.end_offset,
        store_id,
    )
    head += _U32.pack(crc32c(head))
    body = (
        arrays.offsets.astype(OFFSET_DTYPE, copy=False).tobytes()
        + arrays.lengths.astype(LENGTH_DTYPE, copy=False).tobytes()
        + arrays.headers[: count * header_bytes].tobytes()
    )
    pad = b"\0" * (-len(body) % 8)
    return head + body + pad + _U32.pack(crc32c(body)) + b"\0\0\0\0"


def decode_sidecar(
    data: bytes,
    path: str,
    *,
    header_bytes: int,
    first_index: int,
    store_id: bytes,
) -> SegmentIndexArrays | None:
    """Parse a sidecar; None when it does not check out (the caller rescans)."""
    if len(data) < SEGMENT_HEADER_BYTES + 8:
        return None
    magic, version, h, first, count, end_offset, sid = _SIDECAR_HEADER.unpack_from(data)
    (head_crc,) = _U32.unpack_from(data, 60)
    if magic != SIDECAR_MAGIC or head_crc != crc32c(data[:60]):
        return None
    if version != FORMAT_VERSION:
        raise FormatVersionError(
            f"{path} has format version {version}; this build reads {FORMAT_VERSION}"
        )
    if h != header_bytes or first != first_index or sid != store_id:
        return None
    body_bytes = count * (8 + header_bytes)
    body_end = SEGMENT_HEADER_BYTES + body_bytes
    padded_end = body_end + (-body_bytes % 8)
    if len(data) != padded_end + 8:
        return None
    (body_crc,) = _U32.unpack_from(data, padded_end)
    body = memoryview(data)[SEGMENT_HEADER_BYTES:body_end]
    if body_crc != crc32c(body):
        return None
    offsets = np.frombuffer(data, OFFSET_DTYPE, count, SEGMENT_HEADER_BYTES)
    lengths = np.frombuffer(data, LENGTH_DTYPE, count, SEGMENT_HEADER_BYTES + 4 * count)
    headers = np.frombuffer(data, np.uint8, count * header_bytes, SEGMENT_HEADER_BYTES + 8 * count)
    return SegmentIndexArrays(offsets, lengths, headers, end_offset)

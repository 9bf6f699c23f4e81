"""The partition header every app_log value carries, and the log's record header.

An ``app_log`` entry's value starts with a 16-byte partition header (docs/FORMAT.md
section 7) naming the partition and, optionally, the partition log index. The value is
stored verbatim; the index the store assigns lives in the log record's header columns.
"""

from __future__ import annotations

import struct
from typing import Final

import numpy as np

from segstore.errors import InvalidArgumentError, PartitionError
from segstore.raft.log_entry import U64_MAX

PARTITION_MAGIC: Final = b"SP"
PARTITION_HEADER_VERSION: Final = 1
PARTITION_HEADER_BYTES: Final = 16
NO_PARTITION: Final = 0xFFFFFFFF
"""Partition id column value of entries that belong to no partition (conf, custom...)."""
PARTITION_ID_MAX: Final = NO_PARTITION - 1

_HEADER = struct.Struct("<2sBBIQ")

LOG_HEADER_DTYPE: Final = np.dtype(
    {
        "names": ["term", "timestamp_us", "partition_index", "partition_id", "val_type"],
        "formats": ["<u8", "<u8", "<u8", "<u4", "u1"],
        "offsets": [0, 8, 16, 24, 28],
        "itemsize": 32,
    }
)
"""Header of every record of the segmented log (raft index is the record index)."""


def encode_entry(
    partition_id: int, payload: bytes | bytearray | memoryview, partition_index: int = 0
) -> bytes:
    """An app_log value for ``partition_id`` carrying ``payload``.

    ``partition_index`` 0 lets the leader's store assign the next index; a non-zero
    one must be exactly the next for the partition when the entry is appended.
    """
    if isinstance(partition_id, bool) or not isinstance(partition_id, int):
        raise InvalidArgumentError("partition_id must be an int")
    if not 0 <= partition_id <= PARTITION_ID_MAX:
        raise InvalidArgumentError(
            f"partition_id must be in [0, {PARTITION_ID_MAX}], not {partition_id}"
        )
    if isinstance(partition_index, bool) or not isinstance(partition_index, int):
        raise InvalidArgumentError("partition_index must be an int")
    if not 0 <= partition_index <= U64_MAX:
        raise InvalidArgumentError(f"partition_index must be in [0, {U64_MAX}]")
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise InvalidArgumentError(f"payload must be bytes-like, not {type(payload).__name__}")
    header = _HEADER.pack(
        PARTITION_MAGIC, PARTITION_HEADER_VERSION, 0, partition_id, partition_index
    )
    return header + bytes(payload)


def decode_partition(value: bytes | memoryview) -> tuple[int, int]:
    """``(partition_id, partition_index)`` of an app_log value; 0 means "assign".

    Raises:
        PartitionError: the value has no partition header (or a foreign one).
    """
    try:
        magic, version, flags, partition_id, partition_index = _HEADER.unpack_from(value)
    except struct.error:
        raise PartitionError(
            f"an app_log value must start with a {PARTITION_HEADER_BYTES}-byte partition "
            f"header (build values with segstore.raft.encode_entry); got {len(value)} bytes"
        ) from None
    if magic != PARTITION_MAGIC or version != PARTITION_HEADER_VERSION or flags:
        raise PartitionError(
            f"app_log value has no partition header this build reads (magic "
            f"{bytes(magic)!r}, version {version}, flags {flags}; expected {PARTITION_MAGIC!r}, "
            f"{PARTITION_HEADER_VERSION}, 0); build values with segstore.raft.encode_entry"
        )
    if partition_id == NO_PARTITION:
        raise PartitionError(f"partition id {NO_PARTITION:#x} is reserved")
    return partition_id, partition_index


def entry_payload(value: bytes | memoryview) -> bytes | memoryview:
    """The payload of an app_log value: what follows the partition header."""
    return value[PARTITION_HEADER_BYTES:]


__all__ = [
    "LOG_HEADER_DTYPE",
    "NO_PARTITION",
    "PARTITION_HEADER_BYTES",
    "PARTITION_ID_MAX",
    "decode_partition",
    "encode_entry",
    "entry_payload",
]

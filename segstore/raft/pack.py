"""The log pack: the byte format of ``LogStore.pack`` / ``LogStore.apply_pack``.

A leader packs a run of committed entries and ships them to a member that is
joining the cluster (NuRaft ``raft_server::sync_log_to_new_srv`` packs from the
joiner's ``next_slot``; ``handle_log_sync_req`` applies it there). The bytes cross
process and version boundaries, so the format is versioned and checksummed, and
every ``LogStore`` implementation must produce and accept exactly these bytes.

Format version 1, every integer little-endian, no padding (a pack is a message,
not a file on disk, so the 8-byte record alignment of segment files does not
apply):

=========  ======  ==================================================
offset     size    field
=========  ======  ==================================================
0          8       magic ``b"SGRFTPCK"``
8          4       ``u32`` format version = 1
12         4       ``u32`` N = number of entries
16         ...     N entries, each:
                     ``u64`` term, ``u8`` val_type (NuRaft byte),
                     ``u64`` timestamp_us, ``u32`` L = value length,
                     L bytes of value
end - 4    4       ``u32`` CRC32C of every byte before it
=========  ======  ==================================================

Where NuRaft differs: its in-memory store writes ``i32 count`` then, per entry,
``i32 size`` + ``log_entry::serialize()`` (``u64 term``, ``u8 type``, value),
with no magic, version or checksum, and it drops ``timestamp_us``
(``examples/in_memory_log_store.cxx``, ``pack``; ``log_entry.hxx``,
``serialize``). segstore keeps the timestamp so a pack round-trips an entry
exactly.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

# The one door to the compiled CRC32C kernel (STYLE.md); never zlib.crc32, which is
# a different polynomial.
from segstore.aof.kernels import crc32c as _crc32c_kernel
from segstore.errors import CorruptionError, FormatVersionError, InvalidArgumentError
from segstore.raft.log_entry import U32_MAX, LogEntry, LogValType

__all__ = [
    "PACK_ENTRY_HEADER_BYTES",
    "PACK_HEADER_BYTES",
    "PACK_MAGIC",
    "PACK_TRAILER_BYTES",
    "PACK_VERSION",
    "crc32c",
    "decode_pack",
    "encode_pack",
]

PACK_MAGIC = b"SGRFTPCK"
"""First 8 bytes of every log pack."""

PACK_VERSION = 1
"""The only format version this build writes and reads."""

_HEADER = struct.Struct("<8sII")  # magic, version, count
_ENTRY_HEADER = struct.Struct("<QBQI")  # term, val_type, timestamp_us, value length
_TRAILER = struct.Struct("<I")  # CRC32C

PACK_HEADER_BYTES = _HEADER.size
"""Bytes before the first entry (16)."""

PACK_ENTRY_HEADER_BYTES = _ENTRY_HEADER.size
"""Fixed bytes per entry before its value (21)."""

PACK_TRAILER_BYTES = _TRAILER.size
"""Bytes of the CRC32C trailer (4)."""

_PACK_WHERE = "<log pack>"  # CorruptionError names a file; a pack has none.
_KNOWN_VAL_TYPES = frozenset(t.value for t in LogValType)


def crc32c(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    """CRC32C (Castagnoli) of ``data``, continuing from ``value``; see docs/FORMAT.md."""
    return int(_crc32c_kernel(data, value))


def encode_pack(entries: Sequence[LogEntry]) -> bytes:
    """Encode ``entries`` (in index order) as a version-1 log pack.

    Raises:
        InvalidArgumentError: ``entries`` is not a sequence of ``LogEntry`` or has
            more than ``U32_MAX`` items.
    """
    if isinstance(entries, str | bytes | bytearray | memoryview) or not isinstance(
        entries, Sequence
    ):
        raise InvalidArgumentError(
            f"entries must be a sequence of LogEntry, got {type(entries).__name__}"
        )
    if len(entries) > U32_MAX:
        raise InvalidArgumentError(f"a pack holds at most {U32_MAX} entries, got {len(entries)}")
    parts: list[bytes] = [_HEADER.pack(PACK_MAGIC, PACK_VERSION, len(entries))]
    for position, entry in enumerate(entries):
        if not isinstance(entry, LogEntry):
            raise InvalidArgumentError(
                f"entries[{position}] must be a LogEntry, got {type(entry).__name__}"
            )
        parts.append(
            _ENTRY_HEADER.pack(
                entry.term, int(entry.val_type), entry.timestamp_us, len(entry.value)
            )
        )
        parts.append(entry.value)
    body = b"".join(parts)
    return body + _TRAILER.pack(crc32c(body))


def decode_pack(data: bytes | bytearray | memoryview) -> list[LogEntry]:
    """Decode a log pack made by ``encode_pack``; nothing is trusted before the CRC.

    Checks run in this order so each error says the most useful thing: type,
    minimum length, magic (is this a pack at all?), CRC32C over the whole body,
    version, then the entry framing, which must end exactly at the trailer.

    Raises:
        InvalidArgumentError: ``data`` is not bytes-like.
        CorruptionError: too short, bad magic, CRC mismatch, a length running past
            the end, an unknown entry type, or bytes left over; names the offset.
        FormatVersionError: an intact pack of a version this build does not read.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidArgumentError(f"a log pack must be bytes-like, got {type(data).__name__}")
    view = memoryview(data).cast("B")
    size = len(view)
    if size < PACK_HEADER_BYTES + PACK_TRAILER_BYTES:
        raise CorruptionError(
            _PACK_WHERE,
            0,
            f"{size} bytes is shorter than the smallest pack "
            f"({PACK_HEADER_BYTES + PACK_TRAILER_BYTES} bytes)",
        )
    magic, version, count = _HEADER.unpack_from(view, 0)
    if magic != PACK_MAGIC:
        raise CorruptionError(_PACK_WHERE, 0, f"magic {magic!r} is not {PACK_MAGIC!r}")
    body_end = size - PACK_TRAILER_BYTES
    (crc_stored,) = _TRAILER.unpack_from(view, body_end)
    crc_actual = crc32c(view[:body_end])
    if crc_stored != crc_actual:
        raise CorruptionError(
            _PACK_WHERE,
            body_end,
            f"CRC32C {crc_actual:#010x} of bytes [0, {body_end}) != stored {crc_stored:#010x}",
        )
    if version != PACK_VERSION:
        raise FormatVersionError(
            f"log pack format version {version} is not supported (this build reads "
            f"version {PACK_VERSION}); upgrade the receiving member"
        )
    # Refuse an impossible count before allocating anything for it.
    if count * PACK_ENTRY_HEADER_BYTES > body_end - PACK_HEADER_BYTES:
        raise CorruptionError(_PACK_WHERE, 12, f"{count} entries cannot fit in a {size}-byte pack")
    entries: list[LogEntry] = []
    offset = PACK_HEADER_BYTES
    for position in range(count):
        if offset + PACK_ENTRY_HEADER_BYTES > body_end:
            raise CorruptionError(
                _PACK_WHERE, offset, f"entry {position} header runs past the end of the pack"
            )
        term, val_type, timestamp_us, value_bytes = _ENTRY_HEADER.unpack_from(view, offset)
        value_offset = offset + PACK_ENTRY_HEADER_BYTES
        if value_offset + value_bytes > body_end:
            raise CorruptionError(
                _PACK_WHERE,
                offset,
                f"entry {position} value of {value_bytes} bytes runs past the end of the pack",
            )
        if val_type not in _KNOWN_VAL_TYPES:
            raise CorruptionError(
                _PACK_WHERE, offset + 8, f"entry {position} has unknown val_type {val_type}"
            )
        entries.append(
            LogEntry(
                term=term,
                value=bytes(view[value_offset : value_offset + value_bytes]),
                val_type=LogValType(val_type),
                timestamp_us=timestamp_us,
            )
        )
        offset = value_offset + value_bytes
    if offset != body_end:
        raise CorruptionError(
            _PACK_WHERE,
            offset,
            f"{body_end - offset} bytes left over after {count} entries",
        )
    return entries

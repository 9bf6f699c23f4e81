"""One Raft log entry, mirroring NuRaft's ``log_entry`` and ``log_val_type``.

NuRaft keeps a mutable buffer in each entry and clones it on every store
operation (``inmem_log_store::make_clone``) so that callers cannot change stored
data behind the store's back. Here the entry is a frozen dataclass holding
``bytes``, so sharing one is as safe as cloning it.

Fields NuRaft has and segstore leaves out: ``crc32_`` / ``has_crc32_`` (NuRaft's
optional on-the-wire payload check, ``crc_on_payload``); segstore frames every
record with its own CRC32C instead.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from segstore.errors import InvalidArgumentError

__all__ = [
    "DUMMY_ENTRY",
    "U32_MAX",
    "U64_MAX",
    "LogEntry",
    "LogValType",
    "check_uint",
]

U64_MAX = 2**64 - 1
"""Largest value of a NuRaft ``ulong`` (term, index, timestamp)."""

U32_MAX = 2**32 - 1
"""Largest value of a ``u32`` (value length and entry count in a log pack)."""


class LogValType(enum.IntEnum):
    """The kind of a log entry; values are NuRaft's ``log_val_type`` bytes verbatim."""

    app_log = 1
    conf = 2
    cluster_server = 3
    log_pack = 4
    snp_sync_req = 5
    custom = 231


def check_uint(name: str, value: object, value_max: int = U64_MAX) -> int:
    """Return ``value`` if it is an int in ``[0, value_max]``, else raise.

    ``bool`` is refused although it subclasses ``int``: a ``True`` term or index
    is always a caller bug.

    Raises:
        InvalidArgumentError: ``value`` is not an int, is negative or too large.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0 or value > value_max:
        raise InvalidArgumentError(f"{name} must be in [0, {value_max}], got {value}")
    return value


@dataclass(frozen=True, slots=True)
class LogEntry:
    """An immutable Raft log entry: NuRaft's ``log_entry`` as a value.

    Attributes:
        term: the term in which the leader created the entry (u64).
        value: the payload; bytes-like input is copied into ``bytes`` (NuRaft's
            ``make_clone``), so later changes to a caller's buffer never reach a store.
        val_type: what the payload is (NuRaft ``log_val_type``); a plain int is
            accepted if it is one of the known values.
        timestamp_us: creation time in microseconds since the epoch, 0 when unused
            (NuRaft fills it only with ``replicate_log_timestamp_``).

    Raises:
        InvalidArgumentError: on a wrong type or an out-of-range number.
    """

    term: int
    value: bytes
    val_type: LogValType = LogValType.app_log
    timestamp_us: int = 0

    def __post_init__(self) -> None:
        check_uint("LogEntry.term", self.term)
        check_uint("LogEntry.timestamp_us", self.timestamp_us)
        value: object = self.value
        if isinstance(value, bytearray | memoryview):
            # Copy, so the entry stays immutable whatever the caller does next.
            object.__setattr__(self, "value", bytes(value))
        elif not isinstance(value, bytes):
            raise InvalidArgumentError(
                f"LogEntry.value must be bytes-like, got {type(value).__name__}"
            )
        if len(self.value) > U32_MAX:
            # The pack format and every segstore record store the length as a u32.
            raise InvalidArgumentError(
                f"LogEntry.value is {len(self.value)} bytes; the maximum is {U32_MAX}"
            )
        val_type: object = self.val_type
        if isinstance(val_type, bool) or not isinstance(val_type, int):
            raise InvalidArgumentError(
                f"LogEntry.val_type must be a LogValType, got {type(val_type).__name__}"
            )
        if not isinstance(val_type, LogValType):
            try:
                val_type = LogValType(val_type)
            except ValueError:
                known = ", ".join(f"{t.name}={t.value}" for t in LogValType)
                raise InvalidArgumentError(
                    f"LogEntry.val_type {val_type} is not a NuRaft log_val_type ({known})"
                ) from None
            object.__setattr__(self, "val_type", val_type)

    @property
    def value_bytes(self) -> int:
        """Size of the payload in bytes: what ``log_entries_ext`` hints count."""
        return len(self.value)


DUMMY_ENTRY = LogEntry(term=0, value=b"")
"""What ``last_entry()`` returns for an empty store: term 0, empty value.

NuRaft's header promises "value set to null and term set to zero"
(``log_store.hxx``, ``last_entry``); its in-memory store actually returns a clone
of an index-0 entry holding an 8-byte zero buffer (``in_memory_log_store.cxx``,
constructor). Only the term is ever read, so segstore uses an empty value.
"""

"""A key-value partition state machine, for the demo, tests and benchmarks.

Payloads are ``b"key=value"``; ``apply`` stores the pair and returns the previous value
(or None). The state also counts applies, so applying an entry twice is visible even
when it rewrites the same value. Snapshots are a deterministic, versioned encoding:
``u32`` version, ``u64`` apply count, ``u32`` N, then N times ``u32`` key length, key,
``u32`` value length, value (little-endian, keys sorted).
"""

from __future__ import annotations

import struct

from segstore.applier import PartitionStateMachine
from segstore.errors import CorruptionError, InvalidArgumentError

_HEAD = struct.Struct("<IQI")
_LEN = struct.Struct("<I")
SNAPSHOT_VERSION = 1


def _field(snapshot: bytes, offset: int) -> tuple[bytes, int]:
    """One length-prefixed field at ``offset`` and the offset after it."""
    (size,) = _LEN.unpack_from(snapshot, offset)
    end = offset + 4 + size
    if end > len(snapshot):
        raise CorruptionError("<kv snapshot>", offset, f"a field of {size} bytes runs past the end")
    return snapshot[offset + 4 : end], end


class KeyValueStateMachine(PartitionStateMachine):
    """``key=value`` payloads into a dict; counts applies; last applied index kept."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.applies = 0
        self.last_index = 0

    def apply(self, partition_index: int, payload: bytes) -> bytes | None:
        """Store ``key=value``; return the key's previous value."""
        key, sep, value = bytes(payload).partition(b"=")
        if not sep:
            raise InvalidArgumentError(f"payload {payload[:32]!r} is not key=value")
        if partition_index != self.last_index + 1:
            raise InvalidArgumentError(
                f"applied index {partition_index} after {self.last_index}: out of order"
            )
        self.last_index = partition_index
        self.applies += 1
        previous = self.data.get(key)
        self.data[key] = value
        return previous

    def snapshot(self) -> bytes:
        """The state, in the encoding of the module docstring."""
        parts = [_HEAD.pack(SNAPSHOT_VERSION, self.applies, len(self.data))]
        for key in sorted(self.data):
            value = self.data[key]
            parts += [_LEN.pack(len(key)), key, _LEN.pack(len(value)), value]
        return b"".join(parts)

    def restore(self, snapshot: bytes) -> None:
        """Replace the state with a decoded ``snapshot``."""
        try:
            version, applies, count = _HEAD.unpack_from(snapshot)
            if version != SNAPSHOT_VERSION:
                raise CorruptionError("<kv snapshot>", 0, f"snapshot version {version}")
            offset = _HEAD.size
            data: dict[bytes, bytes] = {}
            for _ in range(count):
                key, offset = _field(snapshot, offset)
                data[key], offset = _field(snapshot, offset)
        except struct.error as exc:
            raise CorruptionError("<kv snapshot>", 0, f"truncated snapshot: {exc}") from exc
        if offset != len(snapshot):
            raise CorruptionError("<kv snapshot>", offset, "trailing bytes after the pairs")
        self.data = data
        self.applies = applies
        self.last_index = applies


__all__ = ["SNAPSHOT_VERSION", "KeyValueStateMachine"]

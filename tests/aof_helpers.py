"""Helpers the Aof test files share: an Aof of small segments whose records are derived
from their index (``crash_writer.payload_for`` / ``header_for``), so any record can be
checked from its index alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from crash_writer import HEADER_DTYPE, header_for, payload_for

from segstore.aof.aof import Aof
from segstore.aof.fileio import FileIO

SEGMENT_BYTES = 64 << 10


def open_aof(path: Path, io: FileIO | None = None, **kwargs: object) -> Aof:
    """Small segments, the test header dtype, and no background flusher (so
    ``durable_index`` moves only on ``sync``) unless ``kwargs`` say otherwise."""
    options: dict[str, object] = {
        "header_dtype": HEADER_DTYPE,
        "segment_bytes": SEGMENT_BYTES,
        "autosync": False,
    }
    options.update(kwargs)
    return Aof.open(path, io=io or FileIO(), **options)  # type: ignore[arg-type]


def append_range(aof: Aof, start: int, stop: int, *, sync_each: bool = False) -> None:
    """Append records [start, stop) one at a time, checking each index."""
    for index in range(start, stop):
        assert aof.append(payload_for(index), header_for(index)) == index
        if sync_each:
            aof.sync()


def batch(aof: Aof, start: int, stop: int) -> int:
    """Append records [start, stop) with one append_batch."""
    indices = range(start, stop)
    headers = np.array([header_for(i) for i in indices], HEADER_DTYPE)
    return aof.append_batch([payload_for(i) for i in indices], headers)


def assert_intact(aof: Aof, start: int, stop: int) -> None:
    """Records [start, stop) hold exactly the payloads and headers derived from the index."""
    if start >= stop:
        return
    views = aof.read_range(start, stop)
    assert [bytes(v) for v in views] == [payload_for(i) for i in range(start, stop)]
    expected = np.array([header_for(i) for i in range(start, stop)], HEADER_DTYPE)
    assert aof.headers(start, stop).tobytes() == expected.tobytes()

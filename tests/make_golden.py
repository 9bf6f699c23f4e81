"""Regenerate the golden files under ``tests/golden/`` (run from the repo root).

    .venv/bin/python tests/make_golden.py

The golden files pin every structure of docs/FORMAT.md byte for byte, and
``test_format_golden.py`` checks them both ways (fresh encoding == golden bytes, golden
bytes decode to the inputs below). Regenerate ONLY for a deliberate format change (and
bump the format version then); a diff in any golden file is a format change.

Determinism:
- the small structures (meta, segment header, frames, a whole segment, a sidecar) are
  written with the encoders in ``segstore/aof/format.py`` and the record kernels, from
  fixed inputs defined here, with the fixed store id :data:`STORE_ID`;
- the whole Aof directory ``aof_v1/`` is written by the real engine (``Aof.open``) with
  ``Meta.new_store_id`` patched to return :data:`STORE_ID`, ``autosync=False`` (so the
  durable lag in every frame depends only on the explicit calls below, never on a
  background flusher's timing) and a fixed sequence of calls. ``LOCK`` and the spare files
  are left out: they are not part of the format's content.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

from segstore.aof import Aof, kernels
from segstore.aof.format import (
    SEGMENT_HEADER_BYTES,
    Meta,
    SegmentHeader,
    SegmentIndexArrays,
    encode_sidecar,
)

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"

STORE_ID = b"segstore-golden!"  # 16 bytes, readable in a hex dump
HEADER_DTYPE = np.dtype([("term", "<u8"), ("kind", "u1")])  # H = 9: odd on purpose
H = HEADER_DTYPE.itemsize
SEGMENT_BYTES = 4096  # SEGMENT_BYTES_MIN: the smallest legal segment

# -- aof.meta --------------------------------------------------------------------------

META_CASES: dict[str, Meta] = {
    "meta.bin": Meta(
        store_id=STORE_ID,
        header_dtype=HEADER_DTYPE,
        segment_bytes=SEGMENT_BYTES,
        first_index=7,
        epoch=3,
        epoch_cut=12,
        user={"term": 5, "voted_for": "n1", "nested": {"b": [1, 2], "a": None}},
    ),
    "meta_no_header.bin": Meta(store_id=STORE_ID, header_dtype=None, segment_bytes=64 << 20),
    "meta_plain_header.bin": Meta(
        store_id=STORE_ID, header_dtype=np.dtype("<u8"), segment_bytes=1 << 20, first_index=2
    ),
}

# -- segment header ----------------------------------------------------------------------

SEGMENT_HEADER = SegmentHeader(
    header_bytes=H, first_index=4097, segment_bytes=SEGMENT_BYTES, store_id=STORE_ID
)

# -- record frames -------------------------------------------------------------------------


def frame_payload(size: int, salt: int) -> bytes:
    """A deterministic payload of ``size`` bytes."""
    return bytes((salt * 31 + k * 7 + 1) & 0xFF for k in range(size))


# (payload, header tuple or None, index, epoch, durable index) per frame. Payload sizes
# 0..15 make 24 + H + P hit every remainder mod 8 twice (for H = 0 and for H = 9).
FIRST_FRAME_INDEX = 4097
FRAME_EPOCH = 3


def frame_specs(header_bytes: int) -> list[tuple[bytes, bytes, int, int, int]]:
    """Inputs of the frames in ``frames_h<H>.bin``: (payload, header raw, index, epoch,
    durable index). Two runs of eight frames share a durable index (so encode_gathered can
    write each run); the last frame's durable lag does not fit in u32 (unknown)."""
    specs = []
    for k in range(16):
        index = FIRST_FRAME_INDEX + k
        header = np.array((index * 1000 + k, k), HEADER_DTYPE).tobytes() if header_bytes else b""
        durable_index = FIRST_FRAME_INDEX - 1 if k < 8 else FIRST_FRAME_INDEX + 5
        specs.append((frame_payload(k, index), header, index, FRAME_EPOCH, durable_index))
    big_index = 2**33 + 5  # lag = index - 0 >= 2**32 -> stored as 0xFFFFFFFF
    header = np.array((2**64 - 1, 255), HEADER_DTYPE).tobytes() if header_bytes else b""
    specs.append((frame_payload(40, 1), header, big_index, 2**32 - 1, 0))
    return specs


def encode_frames(header_bytes: int) -> bytes:
    """The frames of ``frame_specs`` back to back, encoded one by one by the kernel."""
    out = bytearray()
    for payload, header, index, epoch, durable_index in frame_specs(header_bytes):
        frame = bytearray(kernels.frame_bytes(header_bytes, len(payload)))
        kernels.encode_one(frame, 0, payload, header, index, epoch, durable_index)
        out += frame
    return bytes(out)


# -- a whole segment and its sidecar --------------------------------------------------------

SEGMENT_FIRST_INDEX = 1
SEGMENT_EPOCH = 1


def segment_records() -> list[tuple[bytes, tuple[int, int]]]:
    """Payload and header of each record in ``segment.seg`` (indices from 1)."""
    sizes = [0, 1, 2, 3, 4, 5, 6, 7, 100, 333, 1000]
    return [(frame_payload(size, i), (i * 10, i)) for i, size in enumerate(sizes, start=1)]


def encode_segment() -> tuple[bytes, SegmentIndexArrays]:
    """A full 4 KiB segment holding :func:`segment_records` (zero after the last frame),
    written as a writer would: durable index 0 for the first half, then 5."""
    data = bytearray(SEGMENT_BYTES)
    header = SegmentHeader(H, SEGMENT_FIRST_INDEX, SEGMENT_BYTES, STORE_ID).encode()
    data[:SEGMENT_HEADER_BYTES] = header
    offset = SEGMENT_HEADER_BYTES
    offsets, lengths, headers = [], [], bytearray()
    for k, (payload, head) in enumerate(segment_records()):
        index = SEGMENT_FIRST_INDEX + k
        raw_header = np.array(head, HEADER_DTYPE).tobytes()
        durable_index = 0 if index <= 5 else 5
        size = kernels.encode_one(
            data, offset, payload, raw_header, index, SEGMENT_EPOCH, durable_index
        )
        offsets.append(offset)
        lengths.append(len(payload))
        headers += raw_header
        offset += size
    arrays = SegmentIndexArrays(
        np.array(offsets, "<u4"),
        np.array(lengths, "<u4"),
        np.frombuffer(bytes(headers), np.uint8),
        offset,
    )
    return bytes(data), arrays


def encode_segment_sidecar() -> bytes:
    """The sidecar of ``segment.seg``."""
    _, arrays = encode_segment()
    return encode_sidecar(H, SEGMENT_FIRST_INDEX, STORE_ID, arrays)


# -- a whole Aof directory, written by the engine ----------------------------------------------

AOF_DIR_NAME = "aof_v1"
AOF_USER_META: dict[str, Any] = {"term": 2, "voted_for": "n3"}


def aof_records() -> list[tuple[bytes, tuple[int, int]]]:
    """Every record appended to ``aof_v1`` (indices from 1; record 1 is truncated away)."""
    sizes = [10, 1000, 1500, 0, 1200, 700, 7]
    return [(frame_payload(size, 100 + i), (i * 7, i)) for i, size in enumerate(sizes, start=1)]


AOF_FIRST_INDEX = 2
AOF_LAST_INDEX = 7


def write_aof_directory(path: Path) -> None:
    """Create the golden Aof in ``path`` (must not exist) by the engine's public API."""
    records = aof_records()
    with mock.patch.object(Meta, "new_store_id", staticmethod(lambda: STORE_ID)):
        aof = Aof.open(
            path,
            header_dtype=HEADER_DTYPE,
            segment_bytes=SEGMENT_BYTES,
            autosync=False,
            preallocate="zero",
        )
    with aof:
        if aof.store_id != STORE_ID:
            raise RuntimeError("Aof.open no longer takes its store id from Meta.new_store_id")
        for payload, header in records[:3]:
            aof.append(payload, header)
        aof.truncate_before(AOF_FIRST_INDEX)  # flushes: later frames carry a durable lag
        rest = records[3:]
        table = np.array([h for _, h in rest], HEADER_DTYPE)
        aof.append_batch([p for p, _ in rest], table)
        aof.set_user_meta(AOF_USER_META)
        if len(aof.segment_paths()) != 2 or aof.last_index != AOF_LAST_INDEX:
            raise RuntimeError(f"expected 2 segments, got {aof.segment_paths()}")
    for name in ("LOCK", "spare.0.tmp", "spare.1.tmp"):
        with_path = path / name
        if with_path.exists():
            with_path.unlink()


def golden_files() -> dict[str, bytes]:
    """Every single-file golden, by name."""
    files = {name: meta.encode() for name, meta in META_CASES.items()}
    files["segment_header.bin"] = SEGMENT_HEADER.encode()
    files["frames_h0.bin"] = encode_frames(0)
    files[f"frames_h{H}.bin"] = encode_frames(H)
    segment, _ = encode_segment()
    files["segment.seg"] = segment
    files["segment.idx"] = encode_segment_sidecar()
    return files


def main() -> int:
    GOLDEN_DIR.mkdir(exist_ok=True)
    for name, data in golden_files().items():
        (GOLDEN_DIR / name).write_bytes(data)
    with tempfile.TemporaryDirectory() as scratch:
        built = Path(scratch) / AOF_DIR_NAME
        write_aof_directory(built)
        target = GOLDEN_DIR / AOF_DIR_NAME
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(built, target)
    for name in sorted(os.listdir(GOLDEN_DIR)):
        print(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Opening an Aof: rebuild every segment's index and find where the records end.

The decision table (each row is pinned by the test named in ``tests/test_aof_recovery.py``):

| row | what open finds | what it does |
| --- | --- | --- |
| R1 | a sealed segment with a sidecar that checks out | loads the sidecar, no rescan |
| R2 | a sealed segment without a usable sidecar | scans it, writes a new sidecar |
| R3 | a segment wholly below ``first_index`` (crash in truncate_before) | deletes it |
| R4 | a last segment with a zero header or another index's (crash in rollover) | deletes it |
| R5 | a bad segment header, a gap, or a sealed segment whose records end early | Corruption |
| R6 | records end CLEAN, STALE or FULL in the last segment | normal end |
| R7 | records end TORN at e; e <= ``epoch_cut`` or a live frame proves e durable | Corruption |
| R8 | records end TORN in the last segment without such proof | torn tail: cut |

(Corruption: ``CorruptionError`` naming the file and offset.)

Only the last segment can end torn: a segment gets a successor only after it was
fdatasync'd whole, so a sealed segment that ends early lost durable records (R5).
Every record at or below ``epoch_cut`` was durable before the epoch bump that set it,
so damage there is corruption too (R7). A torn tail is cut in memory here; the Aof
makes the cut durable (zeroes the rest of the segment, bumps the epoch) before it
writes anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from segstore.aof import kernels
from segstore.aof.fileio import FileIO
from segstore.aof.format import (
    SEGMENT_HEADER_BYTES,
    Meta,
    SegmentHeader,
    decode_sidecar,
    parse_segment_name,
)
from segstore.aof.segment import Segment
from segstore.errors import CorruptionError


@dataclass
class RecoveryReport:
    """What opening found and did."""

    segments: int = 0
    sidecars_loaded: int = 0
    segments_scanned: int = 0
    records: int = 0
    torn_cut_at_index: int | None = None
    torn_cut_path: str | None = None
    torn_cut_offset: int | None = None
    removed_files: list[str] = field(default_factory=list)


@dataclass
class Recovered:
    """The segments that hold records, and the segment files open must delete."""

    segments: list[Segment]
    doomed: list[Segment]
    report: RecoveryReport


def list_segments(io: FileIO, directory: str) -> list[int]:
    """First indices of the segment files in ``directory``, ascending."""
    firsts = [parse_segment_name(name) for name in io.listdir(directory)]
    return sorted(first for first in firsts if first is not None)


def recover(io: FileIO, directory: str, meta: Meta) -> Recovered:
    """Rebuild the index of every segment; never writes (the caller acts on the result)."""
    report = RecoveryReport()
    segments: list[Segment] = []
    stale: list[Segment] = []
    firsts = list_segments(io, directory)
    for position, first in enumerate(firsts):
        next_first = firsts[position + 1] if position + 1 < len(firsts) else None
        if next_first is not None and next_first <= meta.first_index:
            stale.append(_segment(io, directory, first, meta))  # R3
            continue
        segment = _open_segment(io, directory, first, meta, last=next_first is None)
        if segment is None:
            stale.append(_segment(io, directory, first, meta))  # R4
            continue
        segments.append(segment)
    report.removed_files = [s.path for s in stale]

    for position, segment in enumerate(segments):
        successor = segments[position + 1] if position + 1 < len(segments) else None
        if successor is not None:
            _recover_sealed(io, segment, successor, meta, report)
            continue
        end_kind = _scan(segment, meta, limit=None)  # R6
        report.segments_scanned += 1
        if end_kind == kernels.END_TORN:
            _raise_if_durable(segment, meta)  # R7
            report.torn_cut_at_index = segment.last_index + 1  # R8
            report.torn_cut_path = segment.path
            report.torn_cut_offset = segment.end_offset

    while segments and segments[-1].last_index < meta.first_index:
        stale.insert(0, segments.pop())  # R3: truncate_before past the tail, then a crash
        report.torn_cut_at_index = report.torn_cut_path = report.torn_cut_offset = None
    report.removed_files = [s.path for s in stale]
    report.segments = len(segments)
    report.records = sum(s.count for s in segments)
    return Recovered(segments, stale, report)


def _recover_sealed(
    io: FileIO, segment: Segment, successor: Segment, meta: Meta, report: RecoveryReport
) -> None:
    expected_last = successor.first_index - 1
    if _load_sidecar(io, segment, meta):
        report.sidecars_loaded += 1  # R1
    else:
        _scan(segment, meta, limit=expected_last)  # R2
        report.segments_scanned += 1
        segment.trim()  # sealed: the index never grows again
    if segment.last_index != expected_last:
        raise CorruptionError(  # R5
            segment.path,
            segment.end_offset,
            f"records end at index {segment.last_index} but the next segment starts at "
            f"{successor.first_index}: durable records are missing or damaged",
        )


def _segment(io: FileIO, directory: str, first: int, meta: Meta) -> Segment:
    return Segment(io, directory, first, meta.header_bytes, meta.segment_bytes)


def _open_segment(
    io: FileIO, directory: str, first: int, meta: Meta, *, last: bool
) -> Segment | None:
    path = os.path.join(directory, f"{first:020d}.seg")
    fd = io.open(path, os.O_RDONLY)
    try:
        size = io.file_size(fd, path)
        raw = io.pread(fd, SEGMENT_HEADER_BYTES, 0, path)
    finally:
        io.close(fd, path)
    if last and raw.count(0) == len(raw):
        return None
    header = SegmentHeader.decode(raw, path)
    if last and header.first_index != first and header.store_id == meta.store_id:
        return None  # a recycled file renamed before its new header reached the disk
    problems = []
    if header.first_index != first:
        problems.append(f"header names first index {header.first_index}")
    if header.header_bytes != meta.header_bytes:
        problems.append(f"header bytes {header.header_bytes} != {meta.header_bytes}")
    if header.store_id != meta.store_id:
        problems.append("belongs to another store")
    if size < header.segment_bytes:
        problems.append(f"file is {size} bytes, header says {header.segment_bytes}")
    if problems:
        raise CorruptionError(path, 0, "; ".join(problems))
    return Segment(io, directory, first, meta.header_bytes, header.segment_bytes)


def _load_sidecar(io: FileIO, segment: Segment, meta: Meta) -> bool:
    try:
        data = io.read_file(segment.sidecar_path)
    except FileNotFoundError:
        return False
    except OSError:
        return False
    arrays = decode_sidecar(
        data,
        segment.sidecar_path,
        header_bytes=meta.header_bytes,
        first_index=segment.first_index,
        store_id=meta.store_id,
    )
    if arrays is None:
        return False
    segment.load(arrays)
    segment.sealed = True
    segment.sidecar_trusted = True
    return True


def _scan(segment: Segment, meta: Meta, *, limit: int | None) -> int:
    """Scan frames into the segment's index; return the kernel's end kind."""
    view = segment.view()
    offset = SEGMENT_HEADER_BYTES
    while True:
        room = 1 << 16
        if limit is not None:
            room = min(room, limit - segment.last_index)
            if room <= 0:
                return kernels.END_CAPACITY
        segment.reserve(room)
        start = segment.count
        count, offset, end_kind = kernels.scan_segment(
            view,
            offset,
            segment.first_index + start,
            meta.header_bytes,
            meta.epoch,
            meta.epoch_cut,
            segment.offsets[start : start + room],
            segment.lengths[start : start + room],
            segment.headers[start * meta.header_bytes : (start + room) * meta.header_bytes],
        )
        segment.count += count
        segment.end_offset = offset
        if end_kind != kernels.END_CAPACITY:
            return int(end_kind)


def _raise_if_durable(segment: Segment, meta: Meta) -> None:
    """R7: is the bad frame at the end of the last segment damage to durable data?"""
    expected = segment.last_index + 1
    if expected <= meta.epoch_cut:
        raise CorruptionError(
            segment.path,
            segment.end_offset,
            f"record {expected} is damaged but was durable: it is below the epoch cut "
            f"{meta.epoch_cut}",
        )
    found = kernels.find_durable_evidence(
        segment.view(),
        segment.end_offset,
        expected,
        meta.header_bytes,
        meta.epoch,
        meta.epoch_cut,
    )
    if found >= 0:
        raise CorruptionError(
            segment.path,
            segment.end_offset,
            f"record {expected} is damaged but was durable: the frame at offset {found} "
            "was written after it had been synced",
        )

"""Offline inspection of a store: what ``segstore dump`` and ``segstore verify`` print.

Opens the store readonly (taking its lock, so nothing writes meanwhile), never
changes a byte, and reports corruption with file and offset.
"""

from __future__ import annotations

import os
from typing import TextIO

from tqdm import tqdm

from segstore.aof import Aof

_MIB = 1 << 20


def _progress(total: int, label: str) -> tqdm:
    # disable=None: a bar on a terminal, nothing in pipes and CI logs.
    return tqdm(total=total, desc=label, unit="rec", unit_scale=True, disable=None, leave=False)


def dump_aof(
    path: str | os.PathLike[str],
    out: TextIO,
    *,
    records: bool = False,
    start: int | None = None,
    limit: int | None = None,
) -> int:
    """Print segments, index ranges and sizes, check every CRC; return an exit status.

    With ``records``, print each record's index, offset, payload size and header.
    """
    with Aof.open(path, readonly=True) as aof:
        dtype = aof.header_dtype
        print(f"aof {aof.path}", file=out)
        print(f"  store id      {aof.store_id.hex()}", file=out)
        print(f"  header dtype  {dtype.descr if dtype is not None else None}", file=out)
        print(
            f"  records       [{aof.first_index}, {aof.last_index}]  ({len(aof)} records)",
            file=out,
        )
        report = aof.recovery
        cut = (
            f", tail cut at record {report.torn_cut_at_index} "
            f"({report.torn_cut_path}:{report.torn_cut_offset})"
            if report.torn_cut_at_index is not None
            else ""
        )
        print(
            f"  open          {aof.recovery_seconds * 1000:.1f} ms: "
            f"{report.sidecars_loaded} sidecars loaded, "
            f"{report.segments_scanned} segments scanned{cut}",
            file=out,
        )
        infos = aof.segment_infos()
        print(f"  segments      {len(infos)}", file=out)
        for info in infos:
            state = "sealed" if info.sealed else "active"
            sidecar = "sidecar" if info.has_sidecar else "no sidecar"
            print(
                f"    {os.path.basename(info.path)}  [{info.first_index}, {info.last_index}]"
                f"  {info.records} records  {info.bytes_used / _MIB:.1f}"
                f"/{info.capacity_bytes / _MIB:.1f} MiB  {state}, {sidecar}",
                file=out,
            )
        if records:
            _print_records(aof, out, start, limit)
        return _verify_into(aof, out)


def verify_aof(path: str | os.PathLike[str], out: TextIO) -> int:
    """Open (running recovery's checks) and verify every record.

    Returns 0 when all is well; raises :class:`CorruptionError` naming file and offset.
    """
    with Aof.open(path, readonly=True) as aof:
        return _verify_into(aof, out)


def _verify_into(aof: Aof, out: TextIO) -> int:
    with _progress(len(aof), "verify") as bar:
        checked = aof.verify(bar.update)
    print(f"  verified      {checked} records: every CRC32C, index and length OK", file=out)
    return 0


def _print_records(aof: Aof, out: TextIO, start: int | None, limit: int | None) -> None:
    first = aof.first_index if start is None else max(start, aof.first_index)
    end = aof.last_index + 1 if limit is None else min(aof.last_index + 1, first + limit)
    if first >= end:
        return
    lengths = aof.payload_lengths(first, end)
    headers = aof.headers(first, end) if aof.header_dtype is not None else None
    names = headers.dtype.names or () if headers is not None else ()
    print(f"  {'index':>12} {'bytes':>8}  " + " ".join(f"{n:>12}" for n in names), file=out)
    for row, index in enumerate(range(first, end)):
        fields = " ".join(f"{headers[row][n]!s:>12}" for n in names) if headers is not None else ""
        print(f"  {index:>12} {int(lengths[row]):>8}  {fields}", file=out)


__all__ = ["dump_aof", "verify_aof"]

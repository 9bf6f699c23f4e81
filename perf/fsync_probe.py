#!/usr/bin/env python3
"""Measure what fdatasync costs on this disk for three ways of laying out a log file.

Question answered: does writing into a segment that was pre-filled with *written* zeros make
``fdatasync`` cheaper than appending to a growing file or writing into ``posix_fallocate``'d
(unwritten) extents?

Modes (all on the filesystem that holds this checkout, never tmpfs):

1. ``grow``      plain append with ``os.write`` to a file that grows (size change -> metadata
                 must reach the journal on every fdatasync).
2. ``fallocate`` ``os.posix_fallocate``'d file written with ``os.pwrite``; the extents are
                 allocated but *unwritten*, so the first write to each block converts the
                 extent state, which is again a journaled metadata change.
3. ``zerofill``  file pre-filled with written zero bytes (and fsynced), then overwritten with
                 ``os.pwrite``: a pure data overwrite, no metadata for fdatasync to flush.

Two operations are timed per mode, interleaved round-robin across the three modes so the
(shared, noisy) machine's noise lands on all of them alike:

* ``batch``:  64 records of 288 bytes (18 KiB) written with one call, then fdatasync.
* ``single``: one 288-byte record written, then fdatasync.

Run: ``python perf/fsync_probe.py [--reps 500] [--dir DIR]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

RECORD = 288
BATCH = 64
MODES = ("grow", "fallocate", "zerofill")
PERF_DIR = Path(__file__).resolve().parent


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q * (len(s) - 1))))
    return s[k]


def _check_not_tmpfs(path: Path) -> str:
    """Return the filesystem type of ``path`` (best effort) and refuse tmpfs."""
    best = ""
    fstype = "?"
    try:
        with open("/proc/mounts", encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                mnt, typ = parts[1], parts[2]
                p = str(path.resolve())
                if (p == mnt or p.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best):
                    best, fstype = mnt, typ
    except OSError:
        pass
    if fstype in ("tmpfs", "ramfs"):
        raise SystemExit(f"{path} is on {fstype}; fsync costs nothing there, use a real disk")
    return fstype


class _File:
    """One open probe file in a given mode, with a write cursor."""

    def __init__(self, path: Path, mode: str, capacity: int) -> None:
        self.mode = mode
        self.pos = 0
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        if mode == "fallocate":
            os.posix_fallocate(self.fd, 0, capacity)
            os.fsync(self.fd)
        elif mode == "zerofill":
            chunk = b"\0" * (1 << 20)
            left = capacity
            while left > 0:
                n = os.write(self.fd, chunk[: min(left, len(chunk))])
                left -= n
            os.fsync(self.fd)
        _fsync_dir(path.parent)

    def write(self, buf: bytes) -> None:
        grow = self.mode == "grow"
        n = os.write(self.fd, buf) if grow else os.pwrite(self.fd, buf, self.pos)
        if n != len(buf):
            raise OSError("short write")
        self.pos += n

    def close(self) -> None:
        os.close(self.fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _measure(
    root: Path, reps: int, payload: bytes, label: str
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Return per-mode (write+fdatasync seconds, fdatasync-only seconds) lists."""
    capacity = reps * len(payload) + (1 << 20)
    files = {m: _File(root / f"{label}-{m}.dat", m, capacity) for m in MODES}
    total: dict[str, list[float]] = {m: [] for m in MODES}
    sync_only: dict[str, list[float]] = {m: [] for m in MODES}
    clock: Callable[[], int] = time.perf_counter_ns
    try:
        for r in range(reps):
            order = MODES[r % 3 :] + MODES[: r % 3]  # rotate who goes first
            for m in order:
                f = files[m]
                t0 = clock()
                f.write(payload)
                t1 = clock()
                os.fdatasync(f.fd)
                t2 = clock()
                total[m].append((t2 - t0) / 1e9)
                sync_only[m].append((t2 - t1) / 1e9)
    finally:
        for f in files.values():
            f.close()
    return total, sync_only


def _segment_costs(root: Path, mib: int = 64) -> dict[str, float]:
    """Seconds to create a zero-filled segment, and to unlink one in each layout.

    Deleting written blocks can be expensive (``discard`` mounts trim them in the unlink
    path); deleting unwritten fallocate'd extents is not.
    """
    out: dict[str, float] = {}
    for mode in ("zerofill", "fallocate"):
        path = root / f"segment-{mode}.dat"
        t0 = time.perf_counter()
        f = _File(path, mode, mib << 20)
        t1 = time.perf_counter()
        f.close()
        t2 = time.perf_counter()
        path.unlink()
        t3 = time.perf_counter()
        out[f"create (+fsync) {mode}"] = t1 - t0
        out[f"unlink {mode}"] = t3 - t2
    return out


def _fmt_ms(s: float) -> str:
    return f"{s * 1e3:8.3f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=500, help="repetitions per mode and op")
    ap.add_argument(
        "--dir", type=Path, default=PERF_DIR / ".scratch", help="parent of the temp dir"
    )
    ap.add_argument("--zerofill-mib", type=int, default=64, help="segment size for create/unlink")
    args = ap.parse_args(argv)

    args.dir.mkdir(parents=True, exist_ok=True)
    fstype = _check_not_tmpfs(args.dir)
    root = Path(tempfile.mkdtemp(prefix="fsync-probe-", dir=args.dir))
    rng_bytes = os.urandom(RECORD)
    batch_payload = rng_bytes * BATCH
    try:
        py = sys.version.split()[0]
        print(f"# fsync probe: {root} ({fstype}), reps={args.reps}, python {py}")
        results = {}
        for label, payload in (("batch", batch_payload), ("single", rng_bytes)):
            results[label] = _measure(root, args.reps, payload, label)
        costs = _segment_costs(root, args.zerofill_mib)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    for label, nbytes in (("batch", len(batch_payload)), ("single", RECORD)):
        total, sync_only = results[label]
        base = statistics.median(total["grow"])
        print()
        print(f"## {label}: {nbytes} B write + fdatasync, {args.reps} reps (ms)")
        print()
        print("| mode | p50 write+sync | p99 write+sync | p50 fdatasync only | ratio p50 to grow |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for m in MODES:
            p50 = statistics.median(total[m])
            print(
                f"| {m} | {_fmt_ms(p50)} | {_fmt_ms(_pct(total[m], 0.99))} "
                f"| {_fmt_ms(statistics.median(sync_only[m]))} | {p50 / base:6.2f}x |"
            )
    print()
    mib = args.zerofill_mib
    for what, seconds in costs.items():
        print(f"{what} {mib} MiB segment: {seconds * 1e3:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

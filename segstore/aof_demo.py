"""``segstore demo --aof``: the Aof under a realistic load, a reopen, and a full verify."""

from __future__ import annotations

import io
import shutil
import sys
import tempfile
import time

import numpy as np
from tqdm import tqdm

from segstore.aof import Aof
from segstore.inspection import dump_aof

PAYLOAD_BYTES = 256
BATCH_RECORDS = 1024
HEADER_DTYPE = np.dtype([("term", "<u8"), ("partition", "<u4"), ("partition_index", "<u8")])


def run_aof_demo(*, records: int, directory: str | None, keep: bool) -> int:
    """Append ``records`` with group commit, reopen, verify; print what it measured."""
    root = directory or tempfile.mkdtemp(prefix="segstore-demo-")
    path = f"{root}/log"
    rng = np.random.default_rng(7)
    pool = rng.integers(0, 256, size=(BATCH_RECORDS, PAYLOAD_BYTES), dtype=np.uint8)
    payloads = [row.tobytes() for row in pool]
    try:
        started = time.perf_counter()
        syncs = 0
        with (
            Aof.open(path, header_dtype=HEADER_DTYPE) as aof,
            tqdm(total=records, desc="append", unit="rec", unit_scale=True, disable=None) as bar,
        ):
            while len(aof) < records:
                count = min(BATCH_RECORDS, records - len(aof))
                first = aof.last_index + 1
                headers = np.zeros(count, HEADER_DTYPE)
                headers["term"] = 1
                headers["partition"] = np.arange(first, first + count) % 64
                headers["partition_index"] = np.arange(first, first + count) // 64 + 1
                aof.append_batch(payloads[:count], headers)
                aof.sync()
                syncs += 1
                bar.update(count)
            durable = aof.durable_index
        append_seconds = time.perf_counter() - started

        started = time.perf_counter()
        with Aof.open(path) as aof:
            opened = time.perf_counter() - started
            last = bytes(aof.read(aof.last_index))
            ready = time.perf_counter() - started
            verify_started = time.perf_counter()
            checked = aof.verify()
            verify_seconds = time.perf_counter() - verify_started
            if aof.last_index != durable or last != payloads[(durable - 1) % BATCH_RECORDS]:
                print("demo: reopened log does not match what was made durable", file=sys.stderr)
                return 1

        megabytes = records * PAYLOAD_BYTES / 1e6
        print(f"appended   {records:,} records of {PAYLOAD_BYTES} B in {syncs:,} synced batches")
        print(
            f"throughput {records / append_seconds:,.0f} records/s, "
            f"{megabytes / append_seconds:,.1f} MB/s (durable after every batch)"
        )
        print(
            f"reopen     {opened * 1000:.1f} ms to open, {ready * 1000:.1f} ms until the "
            f"last record was read"
        )
        print(f"verify     {checked:,} CRCs in {verify_seconds * 1000:.0f} ms")
        summary = io.StringIO()
        dump_aof(path, summary)
        print("dump       " + summary.getvalue().strip().replace("\n", "\n           "))
        return 0
    finally:
        if not keep and directory is None:
            shutil.rmtree(root, ignore_errors=True)
        elif keep:
            print(f"data kept in {root}")

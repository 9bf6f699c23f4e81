#!/usr/bin/env python3
"""Measure the SegmentedLogStore (workloads S1-S5, store_workloads.py) against its targets.

Every number of one table comes from one process: each repetition runs the store's
workloads *and* their baselines from workloads.py (raw W1 for S1/S2, raw W3/W4 as
context for S3/S4, the Aof's W5 for S5, the bare Aof's W1 as context for S1), in an order
that rotates per repetition so the shared machine's noise lands on all of them alike.
Each cell is the median over ``--repeat`` repetitions; ratios are ratios of medians.
The table (markdown) is printed and written to ``perf/results/store_latest.md``, every
sample next to it as ``.json``.

Usage:
    python perf/compare_store.py [--repeat 3] [--scale 1.0] [--dir DIR] [--out FILE.md]

``--scale`` multiplies every entry count (0.1 for a quick run); the targets are defined
at scale 1, so scaled verdicts are indicative only. Exit status 0: a report, not a gate.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PERF_DIR = Path(__file__).resolve().parent
REPO_ROOT = PERF_DIR.parent
for _p in (str(PERF_DIR), str(REPO_ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import numpy as np  # noqa: E402
import store_workloads as sw  # noqa: E402
import workloads as wl  # noqa: E402
from baselines import RawLog, SegstoreLog  # noqa: E402
from compare import Job, Samples, fmt_value, median_of, run_rotated, write_report  # noqa: E402

from segstore.raft import LogEntry  # noqa: E402

Metrics = dict[str, float]


@dataclass(frozen=True)
class Row:
    """One table row: segstore's metric, the baseline it is shown against, the target."""

    id: str
    label: str
    key: str
    base_key: str | None
    base_label: str
    higher_is_better: bool
    #: "ratio": judge value/baseline against ``bound``; "abs": judge the value itself.
    kind: str = "none"
    bound: float = 0.0
    target_text: str = "-"


ROWS = (
    Row("S1", "append x64 + end_of_append_batch, durable per batch, entries/s",
        "S1.entries_per_s", "raw.W1.entries_per_s", "raw W1", True, "ratio", 0.8,
        ">= 0.8x raw W1"),
    Row("S1", "same, against the bare Aof's W1 (context)", "S1.entries_per_s",
        "aof.W1.entries_per_s", "Aof W1", True),
    Row("S2", "parallel, until the callback reports the last index durable, entries/s",
        "S2.entries_per_s", "raw.W1.entries_per_s", "raw W1", True, "abs", 300_000,
        ">= 300,000/s"),
    Row("S2", "parallel, append loop alone returned (context), entries/s",
        "S2.submit_entries_per_s", "raw.W1.entries_per_s", "raw W1", True),
    Row("S3", "entry_at, uniform random, after reopen, reads/s", "S3.reads_per_s",
        "raw.W3.reads_per_s", "raw W3 read(i)", True, "abs", 500_000, ">= 500,000/s"),
    Row("S4", "log_entries of 100 at random starts, entries/s", "S4.entries_per_s",
        "raw.W4.best_entries_per_s", "raw W4 scan", True, "abs", 2_000_000,
        ">= 2,000,000/s"),
    Row("S5", "reopen after kill -9 mid-load until entry_at(last), s", "S5.killed_s",
        "aof.W5.reopen_s", "Aof W5", False, "ratio", 10, "<= 10x Aof W5"),
    Row("S5", "of which recovery routing + checkpoint (context), s", "S5.killed_route_s",
        "aof.W5.reopen_s", "Aof W5", False),
    Row("S5", "reopen after clean close until entry_at(last), s", "S5.clean_s",
        "aof.W5.reopen_s", "Aof W5", False, "ratio", 10, "<= 10x Aof W5"),
)  # fmt: skip


def make_jobs(scale: float, work: list[LogEntry]) -> list[Job]:
    n1 = wl.scaled(wl.W1_ENTRIES, scale, 640)
    n3 = wl.scaled(wl.W3_ENTRIES, scale, 1000)
    n5 = wl.scaled(wl.W5_ENTRIES, scale, 10_000)
    s_entries = len(work)
    reads = wl.scaled(sw.S3_READS, scale, 1000)
    calls = wl.scaled(sw.S4_CALLS, scale, 100)

    def s1_s3_s4(root: Path) -> Metrics:
        out = sw.s1_append(root / "s1", entries=s_entries, work=work)
        out.update(sw.s3_s4_reads(root / "s1", entries=s_entries, reads=reads, calls=calls))
        return out

    return [
        Job("raw W1", "raw.", lambda r: wl.w1_batched_append(RawLog.open, r, entries=n1)),
        Job("S1+S3+S4", "", s1_s3_s4),
        Job("S2", "", lambda r: sw.s2_parallel_append(r / "s2", entries=s_entries, work=work)),
        Job("Aof W1", "aof.", lambda r: wl.w1_batched_append(SegstoreLog.open, r, entries=n1)),
        Job(
            "raw W3/W4",
            "raw.",
            lambda r: wl.w3_w4_reads(RawLog.open, r, entries=n3, reads=n3),
        ),
        Job(
            "Aof W5",
            "aof.",
            lambda r: wl.w5_to_w8(SegstoreLog.open, r, entries=n5, want=("W5",)),
        ),
        Job("S5", "", lambda r: sw.s5_reopen(r, entries=n5)),
    ]


def build_table(samples: Samples) -> list[str]:
    head = ["id", "metric", "segstore", "baseline", "baseline value", "ratio", "target",
            "verdict"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for row in ROWS:
        seg, base = median_of(samples.get(row.key)), median_of(samples.get(row.base_key or ""))
        ratio = seg / base if seg is not None and base else None
        verdict = "-"
        if row.kind == "ratio":
            verdict = "n/a"
            if ratio is not None:
                ok = ratio >= row.bound if row.higher_is_better else ratio <= row.bound
                verdict = "PASS" if ok else "FAIL"
        elif row.kind == "abs":
            verdict = "n/a"
            if seg is not None:
                ok = seg >= row.bound if row.higher_is_better else seg <= row.bound
                verdict = "PASS" if ok else "FAIL"
        cells = [row.id, row.label, fmt_value(seg), row.base_label, fmt_value(base),
                 f"{ratio:.2f}x" if ratio is not None else "-", row.target_text,
                 verdict]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _env_lines(args: argparse.Namespace, samples: Samples, entries: int) -> list[str]:
    killed = median_of(samples.get("S5.killed_entries"))
    return [
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %z')}; host: {platform.node()}, "
        f"{os.cpu_count()} cpus, {platform.platform()}; python {platform.python_version()}, "
        f"numpy {np.__version__}",
        f"- repeat {args.repeat} (median shown), scale {args.scale}, data under {args.dir}",
        f"- S1-S4: {entries:,} entries of {wl.PAYLOAD_BYTES}-byte payloads (+16-byte "
        f"partition header) over {sw.PARTITIONS} partitions, batches of {sw.S1_BATCH}; "
        f"S5: writer SIGKILLed at ~{fmt_value(killed)} entries (batches of {sw.S5_WRITER_BATCH})",
        *(["- scale < 1: targets are defined at scale 1; verdicts indicative"]
          if args.scale < 1 else []),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--dir", type=Path, default=PERF_DIR / ".scratch", help="parent of temp dirs")
    ap.add_argument("--out", type=Path, default=PERF_DIR / "results" / "store_latest.md")
    args = ap.parse_args(argv)

    args.dir.mkdir(parents=True, exist_ok=True)
    entries = wl.scaled(sw.S1_ENTRIES, args.scale, 640)
    work = sw.make_entries(entries)  # built once; LogEntry is immutable, so reusable
    jobs = make_jobs(args.scale, work)
    t_start = time.perf_counter()
    samples, errors = run_rotated(jobs, args.repeat, args.dir, "store-")

    lines = [
        "# SegmentedLogStore (issue #3 S1-S5) vs baselines, one run",
        "",
        *_env_lines(args, samples, entries),
        f"- wall time {time.perf_counter() - t_start:.0f} s",
        "",
        *build_table(samples),
    ]
    if errors:
        lines += ["", "Errors:", *(f"- {e}" for e in errors)]
    text = "\n".join(lines) + "\n"
    write_report(
        args.out,
        text,
        {"scale": args.scale, "repeat": args.repeat, "samples": samples, "errors": errors},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""Measure the embedded pipeline (workloads P1-P3, pipeline_workloads.py) beside raw W1.

Issue #4 section 6: append -> durable -> partition log -> apply on one node, 64
partitions, trivial state machines, 256-byte payloads; >= 100,000 entries/s, with p50 and
p99 latency from append to apply. Every number of one table comes from one process: each
repetition runs the pipeline workloads *and* raw W1 (workloads.py, batches of 64 +
fdatasync), in an order that rotates per repetition so the shared machine's noise lands
on all of them alike. Each cell is the median over ``--repeat`` repetitions; ratios are
ratios of medians. The table (markdown) is printed and written to
``perf/results/pipeline_latest.md``, every sample next to it as ``.json``.

Usage:
    python perf/compare_pipeline.py [--repeat 3] [--scale 1.0] [--rate 20000]
                                    [--dir DIR] [--out FILE.md]

``--scale`` multiplies every entry count (0.1 for a quick run); ``--rate`` is P3's
offered load in entries/s. Exit status 0: a report, not a gate.
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
import pipeline_workloads as pw  # noqa: E402
import workloads as wl  # noqa: E402
from baselines import RawLog  # noqa: E402
from compare import Job, Samples, fmt_value, median_of, run_rotated, write_report  # noqa: E402

Metrics = dict[str, float]


@dataclass(frozen=True)
class Row:
    """One table row: the pipeline's metric, shown beside raw W1, and its target."""

    id: str
    label: str
    key: str
    higher_is_better: bool
    #: "abs": judge the value itself against ``bound``; "none": context only.
    kind: str = "none"
    bound: float = 0.0
    target_text: str = "-"
    #: show the ratio to raw W1 (throughput rows only).
    ratio: bool = False


RAW_KEY = "raw.W1.entries_per_s"
TARGET = pw.TARGET_ENTRIES_PER_S

ROWS = (
    Row("P1", f"submit_many x{pw.P1_BATCH} until applied, entries/s", "P1.entries_per_s",
        True, "abs", TARGET, f">= {TARGET:,}/s", ratio=True),
    Row("P1", f"same, batches of {pw.P1_BIG_BATCH} (context), entries/s",
        "P1big.entries_per_s", True, "abs", TARGET, f">= {TARGET:,}/s", ratio=True),
    Row("P2", f"P1 x{pw.P1_BATCH} + on_applied stamps (saturated), entries/s",
        "P2.entries_per_s", True, ratio=True),
    Row("P2", "saturated: append -> apply p50, us (queueing)", "P2.p50_us", False),
    Row("P2", "saturated: append -> apply p99, us (queueing)", "P2.p99_us", False),
    Row("P3", "paced: append -> apply p50, us", "P3.p50_us", False, target_text="reported"),
    Row("P3", "paced: append -> apply p99, us", "P3.p99_us", False, target_text="reported"),
    Row("P3", "paced: append -> apply max, us", "P3.max_us", False),
    Row("P3", "paced: achieved entries/s", "P3.entries_per_s", True),
)  # fmt: skip


def make_jobs(scale: float, rate: float) -> list[Job]:
    n1 = wl.scaled(wl.W1_ENTRIES, scale, 640)
    n_p = wl.scaled(pw.P1_ENTRIES, scale, 640)
    n_p3 = wl.scaled(pw.P3_ENTRIES, scale, 640)
    return [
        Job("raw W1", "raw.", lambda r: wl.w1_batched_append(RawLog.open, r, entries=n1)),
        Job("P1", "", lambda r: pw.p1_throughput(r, entries=n_p)),
        Job(
            "P1 big",
            "",
            lambda r: pw.p1_throughput(r, entries=n_p, batch=pw.P1_BIG_BATCH, key="P1big"),
        ),
        Job("P2", "", lambda r: pw.p2_saturated_latency(r, entries=n_p)),
        Job("P3", "", lambda r: pw.p3_paced_latency(r, entries=n_p3, rate=rate)),
    ]


def _spread(samples: Samples, key: str) -> str:
    vals = samples.get(key)
    if not vals:
        return "-"
    return f"{fmt_value(min(vals))} - {fmt_value(max(vals))}"


def build_table(samples: Samples) -> list[str]:
    raw = median_of(samples.get(RAW_KEY))
    head = ["id", "metric", "pipeline (median)", "min - max", "raw W1", "pipeline/raw W1",
            "target", "verdict"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for row in ROWS:
        value = median_of(samples.get(row.key))
        ratio = value / raw if row.ratio and value is not None and raw else None
        verdict = "-"
        if row.kind == "abs":
            verdict = "n/a"
            if value is not None:
                ok = value >= row.bound if row.higher_is_better else value <= row.bound
                verdict = "PASS" if ok else "FAIL"
        cells = [row.id, row.label, fmt_value(value), _spread(samples, row.key),
                 fmt_value(raw) if row.ratio else "-",
                 f"{ratio:.2f}x" if ratio is not None else "-", row.target_text,
                 verdict]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _env_lines(args: argparse.Namespace) -> list[str]:
    return [
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %z')}; host: {platform.node()}, "
        f"{os.cpu_count()} cpus, {platform.platform()}; python {platform.python_version()}, "
        f"numpy {np.__version__}",
        f"- repeat {args.repeat} (median shown), scale {args.scale}, data under {args.dir}",
        f"- {pw.PARTITIONS} partitions, trivial state machines, {wl.PAYLOAD_BYTES}-byte "
        f"payloads (+16-byte partition header), entry i -> partition (i-1) % "
        f"{pw.PARTITIONS}; P1/P2 {wl.scaled(pw.P1_ENTRIES, args.scale, 640):,} entries, "
        f"P3 {wl.scaled(pw.P3_ENTRIES, args.scale, 640):,} entries offered at "
        f"{args.rate:,.0f} entries/s in batches of {pw.P1_BATCH}; raw W1 "
        f"{wl.scaled(wl.W1_ENTRIES, args.scale, 640):,} entries, batches of {wl.W1_BATCH}",
        "- latency: batch submit stamp -> stamp of the on_applied run holding the entry",
        *(["- scale < 1: the target is defined at scale 1; verdicts indicative"]
          if args.scale < 1 else []),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--rate", type=float, default=pw.P3_RATE, help="P3 offered entries/s")
    ap.add_argument("--dir", type=Path, default=PERF_DIR / ".scratch", help="parent of temp dirs")
    ap.add_argument("--out", type=Path, default=PERF_DIR / "results" / "pipeline_latest.md")
    args = ap.parse_args(argv)
    if args.rate <= 0:
        ap.error("--rate must be positive")

    args.dir.mkdir(parents=True, exist_ok=True)
    jobs = make_jobs(args.scale, args.rate)
    t_start = time.perf_counter()
    samples, errors = run_rotated(jobs, args.repeat, args.dir, "pipeline-")

    lines = [
        "# Embedded pipeline (issue #4 P1-P3) beside raw W1, one run",
        "",
        *_env_lines(args),
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
        {
            "scale": args.scale,
            "repeat": args.repeat,
            "rate": args.rate,
            "samples": samples,
            "errors": errors,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

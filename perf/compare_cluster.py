#!/usr/bin/env python3
"""Measure a three-node loopback cluster (issue #5 section 5) beside stock pysyncobj.

Configurations, each a fresh three-process cluster (perf/cluster_workloads.py):
``segstore`` (pysyncobj over the segmented store, durable), ``memory`` (stock
MemoryJournal) and ``file`` (stock FileJournal, which never fsyncs). Each runs C1 (a
load of ``--count`` 256-byte submissions over 64 partitions through the leader,
``--window`` in flight) and then C2 (SIGKILL the leader, time until a submission
through a survivor applies). Configurations rotate per repetition; each cell is the
median over ``--repeat``. ``--periods`` adds segstore rows with other append
batching periods (the latency/throughput trade-off). Targets: segstore >= 0.8x
FileJournal's throughput, p50 <= 20 ms.

Usage:
    python perf/compare_cluster.py [--repeat 3] [--count 20000] [--window 256]
                                   [--tick-ms 5] [--append-ms 10] [--periods 5,20]
                                   [--dir DIR] [--out FILE.md]

Writes the markdown table to ``perf/results/cluster_latest.md`` (and the samples as
``.json``). Exit status 0: a report, not a gate.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

PERF_DIR = Path(__file__).resolve().parent
if str(PERF_DIR) not in sys.path:
    sys.path.insert(0, str(PERF_DIR))

import cluster_workloads as cw  # noqa: E402
from compare import median_of  # noqa: E402

KEYS = (
    "throughput_per_s",
    "p50_ms",
    "p99_ms",
    "light_throughput_per_s",
    "light_p50_ms",
    "light_p99_ms",
    "failover_s",
)


def _median(values: Sequence[float | None]) -> float | None:
    """Median of the samples a run produced (a failed phase reports None)."""
    return median_of([v for v in values if v is not None])


def _fmt(value: float | None, key: str) -> str:
    if value is None:
        return "-"
    if key.endswith("throughput_per_s"):
        return f"{value:,.0f}/s"
    if key == "failover_s":
        return f"{value:.2f} s"
    return f"{value:.1f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    cw.add_load_options(parser, count=20_000)
    parser.add_argument("--periods", default="", help="extra segstore append periods, ms")
    parser.add_argument("--dir", default=None)
    parser.add_argument("--out", default=str(PERF_DIR / "results" / "cluster_latest.md"))
    args = parser.parse_args(argv)

    configs: list[tuple[str, str, float]] = [
        (f"segstore (append {args.append_ms:g} ms)", "segstore", args.append_ms),
        ("pysyncobj MemoryJournal", "memory", args.append_ms),
        ("pysyncobj FileJournal (no fsync)", "file", args.append_ms),
    ]
    for period in filter(None, args.periods.split(",")):
        configs.append((f"segstore (append {float(period):g} ms)", "segstore", float(period)))

    scratch = Path(args.dir or tempfile.mkdtemp(prefix="segstore-cluster-perf-"))
    samples: dict[str, dict[str, list[float]]] = {
        name: {k: [] for k in KEYS} for name, *_ in configs
    }
    try:
        for rep in range(args.repeat):
            order = configs[rep % len(configs) :] + configs[: rep % len(configs)]
            for name, kind, append_ms in order:
                root = scratch / f"r{rep}-{kind}-{append_ms:g}"
                started = time.monotonic()
                metrics = cw.run_config(
                    kind,
                    root,
                    count=args.count,
                    window=args.window,
                    tick_ms=args.tick_ms,
                    append_ms=append_ms,
                )
                for key in KEYS:
                    samples[name][key].append(metrics[key])
                print(
                    f"rep {rep} {name}: "
                    + ", ".join(f"{k}={_fmt(metrics[k], k)}" for k in KEYS)
                    + f" ({time.monotonic() - started:.1f} s)",
                    flush=True,
                )
                shutil.rmtree(root, ignore_errors=True)
    finally:
        if args.dir is None:
            shutil.rmtree(scratch, ignore_errors=True)

    file_tp = _median(samples["pysyncobj FileJournal (no fsync)"]["throughput_per_s"])
    lines = [
        "| configuration | throughput | vs FileJournal | p50 | p99 "
        "| light: throughput | light: p50 | light: p99 | failover |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, *_ in configs:
        med = {k: _median(samples[name][k]) for k in KEYS}
        tp = med["throughput_per_s"]
        ratio = f"{tp / file_tp:.2f}x" if tp and file_tp else "-"
        lines.append(
            f"| {name} | {_fmt(tp, 'throughput_per_s')} | {ratio} | "
            f"{_fmt(med['p50_ms'], 'p50_ms')} | {_fmt(med['p99_ms'], 'p99_ms')} | "
            f"{_fmt(med['light_throughput_per_s'], 'light_throughput_per_s')} | "
            f"{_fmt(med['light_p50_ms'], 'p50_ms')} | {_fmt(med['light_p99_ms'], 'p99_ms')} | "
            f"{_fmt(med['failover_s'], 'failover_s')} |"
        )
    env = [
        "",
        f"{args.repeat} repetitions, median; {args.count} submissions of "
        f"{cw.PAYLOAD_BYTES} bytes over {cw.PARTITIONS} partitions through the leader, "
        f"window {args.window}; light: {args.count // 10} with {cw.LIGHT_WINDOW} in flight; "
        f"tick {args.tick_ms:g} ms. Python {platform.python_version()}, "
        f"{platform.machine()}, {platform.node()}.",
    ]
    report = "\n".join(lines + env) + "\n"
    print(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    out.with_suffix(".json").write_text(json.dumps(samples, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

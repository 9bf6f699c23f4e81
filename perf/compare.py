#!/usr/bin/env python3
"""Compare segstore's Aof with the baseline stores on workloads W1-W8 (see workloads.py).

Every workload runs against every store in one process; within each repetition the store
order rotates so the shared machine's noise lands on all stores alike. Each cell of the
table is the median over ``--repeat`` repetitions. The table (markdown) is printed and
written to ``perf/results/latest.md``; all samples go to ``perf/results/latest.json``.

Usage:
    python perf/compare.py [--repeat 3] [--scale 1.0] [--only W1,W3]
                           [--stores raw,segstore,lmdb,sqlite] [--dir DIR] [--out FILE.md]
    python perf/compare.py --merge run1.json run2.json [--out FILE.md]

``--merge`` runs nothing: it pools the samples of earlier runs and prints their medians.

``--scale`` multiplies every entry count (0.1 for a quick run); absolute targets (W5's
speedup, W6, W7) are defined at scale 1 and are only indicative when scaled. If segstore
cannot be imported the baselines still run and the table says why segstore is missing.
Exit status: 0 (the table is a report, not a gate; the gate is ``pytest perf/``).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PERF_DIR = Path(__file__).resolve().parent
REPO_ROOT = PERF_DIR.parent
for _p in (str(PERF_DIR), str(REPO_ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import numpy as np  # noqa: E402
import workloads as wl  # noqa: E402
from baselines import STORES, LogLike, SegstoreLog, segstore_import_error  # noqa: E402

ALL_WORKLOADS = ("W1", "W2", "W3", "W4", "W5", "W6", "W7", "W8")
AHEAD_OF = ("lmdb", "sqlite")


@dataclass(frozen=True)
class Row:
    """One table row: a metric, how to judge segstore's number, and its target."""

    workload: str
    key: str
    label: str
    higher_is_better: bool
    #: target on segstore/raw ("ratio"), on segstore's own value ("abs"), or none.
    kind: str = "none"
    bound: float = 0.0
    target_text: str = ""
    ahead: bool = False  # must segstore beat lmdb and sqlite on this row?
    #: a metric only segstore reports (other stores show "n/a").
    segstore_only: bool = False
    #: raw's metric the ratio column divides by (default: ``key`` itself).
    raw_key: str = ""


ROWS = (
    Row("W1", "W1.entries_per_s", "batch 64 + sync, ops/s", True, "ratio", 1.2, ">= 1.2x", True),
    Row("W2", "W2.p50_us", "append + sync p50, us", False, "ratio", 0.8, "<= 0.8x", True),
    Row("W2", "W2.p99_us", "append + sync p99, us", False),
    Row("W3", "W3.reads_per_s", "random read, reads/s", True, "ratio", 1.2, ">= 1.2x", True),
    Row("W4", "W4.loop_entries_per_s", "scan, read(i) loop, entries/s", True),
    Row("W4", "W4.range_entries_per_s", "scan, read_range, entries/s", True),
    Row("W4", "W4.best_entries_per_s", "scan, best, entries/s", True, "ratio", 2, ">= 2x", True),
    Row(
        "W4",
        "W4.range_views_entries_per_s",
        "scan, read_range zero-copy views, entries/s (ratio to raw's best)",
        True,
        segstore_only=True,
        raw_key="W4.best_entries_per_s",
    ),
    Row("W5", "W5.reopen_s", "reopen + read last, s", False, "ratio", 1 / 15, "<= 0.067x"),
    Row(
        "W5",
        "W5.index_bytes_per_record",
        "index memory after reopen, bytes/record",
        False,
        "abs",
        16,
        "<= 16 B (no header dtype)",
        segstore_only=True,
    ),
    Row("W6", "W6.truncate_before_ms", "truncate_before 50%, ms", False, "abs", 5, "<= 5 ms", True),
    Row("W7", "W7.truncate_after_ms", "truncate_after 10%, ms", False, "abs", 25, "<= 25 ms", True),
    Row("W8", "W8.entries_per_s", "batch 1024 + sync, entries/s", True, "ratio", 2.0, ">= 2x"),
)


@dataclass
class Group:
    """Workloads that share one data set and therefore run together."""

    name: str
    workloads: tuple[str, ...]
    run: Callable[[Callable[[Path], LogLike], Path, float, tuple[str, ...]], wl.Metrics]


def _g1(f: Callable[[Path], LogLike], root: Path, s: float, want: tuple[str, ...]) -> wl.Metrics:
    return wl.w1_batched_append(f, root, entries=wl.scaled(wl.W1_ENTRIES, s, 640))


def _g2(f: Callable[[Path], LogLike], root: Path, s: float, want: tuple[str, ...]) -> wl.Metrics:
    return wl.w2_single_append_latency(f, root, entries=wl.scaled(wl.W2_ENTRIES, s, 200))


def _g34(f: Callable[[Path], LogLike], root: Path, s: float, want: tuple[str, ...]) -> wl.Metrics:
    n = wl.scaled(wl.W3_ENTRIES, s, 1000)
    return wl.w3_w4_reads(f, root, entries=n, reads=n, want=want)


def _g58(f: Callable[[Path], LogLike], root: Path, s: float, want: tuple[str, ...]) -> wl.Metrics:
    return wl.w5_to_w8(f, root, entries=wl.scaled(wl.W5_ENTRIES, s, 10_000), want=want)


GROUPS = (
    Group("W1", ("W1",), _g1),
    Group("W2", ("W2",), _g2),
    Group("W3-W4", ("W3", "W4"), _g34),
    Group("W5-W8", ("W5", "W6", "W7", "W8"), _g58),
)


def _default_dir() -> Path:
    return PERF_DIR / ".scratch"


def fmt_value(v: float | None) -> str:
    """A measurement for a report table: thousands separators for big values."""
    if v is None:
        return "-"
    if v >= 10_000:
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.4f}"


def run_in_scratch(
    run: Callable[[Path], dict[str, float]],
    parent: Path,
    prefix: str,
    label: str,
    errors: list[str],
) -> dict[str, float] | None:
    """``run(dir)`` in a fresh scratch directory, removed afterwards.

    A failure is recorded in ``errors`` (and printed with its traceback) so one broken
    workload does not stop the comparison; None then.
    """
    root = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        return run(root)
    except Exception as e:
        msg = f"{label}: {type(e).__name__}: {e}"
        errors.append(msg)
        print(f"ERROR {msg}", file=sys.stderr)
        traceback.print_exc(file=sys.stderr)
        return None
    finally:
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Job:
    """One unit of a repetition: a workload (or chain) and the prefix of its keys."""

    name: str
    prefix: str
    run: Callable[[Path], dict[str, float]]


def run_rotated(
    jobs: list[Job], repeat: int, parent: Path, scratch_prefix: str
) -> tuple[Samples, list[str]]:
    """Run every job ``repeat`` times, rotating their order per repetition (so none
    always runs first on a warm or cold disk); return the samples by key and the
    errors (a failing job is recorded and skipped, see :func:`run_in_scratch`)."""
    samples: Samples = {}
    errors: list[str] = []
    width = max(len(job.name) for job in jobs)
    for rep in range(repeat):
        k = rep % len(jobs)
        for job in jobs[k:] + jobs[:k]:
            metrics = run_in_scratch(
                job.run, parent, scratch_prefix, f"{job.name} rep {rep + 1}", errors
            )
            if metrics is None:
                continue
            for key, v in metrics.items():
                samples.setdefault(job.prefix + key, []).append(v)
            shown = ", ".join(f"{key}={fmt_value(v)}" for key, v in metrics.items())
            print(f"rep {rep + 1}/{repeat} {job.name:{width}s} {shown}", file=sys.stderr)
    return samples, errors


def _run_group(
    group: Group,
    factory: Callable[[Path], LogLike],
    scale: float,
    want: tuple[str, ...],
    root: Path,
) -> dict[str, float]:
    return group.run(factory, root, scale, want)


def write_report(out: Path, text: str, payload: dict[str, object]) -> None:
    """Print the markdown report and write it to ``out``, with ``payload`` as JSON beside."""
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    out.with_suffix(".json").write_text(
        json.dumps(payload, indent=1, sort_keys=True), encoding="utf-8"
    )
    print(f"written {out}", file=sys.stderr)


Samples = dict[str, list[float]]
"""Samples of one run by metric key (what :func:`run_rotated` collects)."""


def median_of(values: list[float] | None) -> float | None:
    """The median of ``values``; None when there are none (a job failed every time)."""
    return statistics.median(values) if values else None


def _median(samples: dict[str, dict[str, list[float]]], store: str, key: str) -> float | None:
    return median_of(samples.get(store, {}).get(key))


def build_table(
    samples: dict[str, dict[str, list[float]]],
    stores: list[str],
    selected: set[str],
    errors: dict[str, list[str]],
) -> list[str]:
    head = ["workload", "metric", *stores, "segstore/raw", "target", "verdict"]
    has_ahead = "segstore" in stores and all(s in stores for s in AHEAD_OF)
    if has_ahead:
        head.append("ahead of lmdb+sqlite")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for row in ROWS:
        if row.workload not in selected:
            continue
        med = {s: _median(samples, s, row.key) for s in stores}
        cells = [row.workload, row.label]
        for s in stores:
            bad = errors.get(s) and any(e.startswith(row.workload) for e in errors[s])
            if row.segstore_only and s != "segstore":
                cells.append("n/a")
            else:
                cells.append("ERR" if bad and med[s] is None else fmt_value(med[s]))
        seg = med.get("segstore")
        raw = _median(samples, "raw", row.raw_key or row.key) if "raw" in stores else None
        ratio = seg / raw if seg is not None and raw else None
        cells.append(f"{ratio:.2f}x" if ratio is not None else "-")
        cells.append(row.target_text or "-")
        verdict = "-"
        if row.kind == "ratio" and ratio is not None:
            ok = ratio >= row.bound if row.higher_is_better else ratio <= row.bound
            verdict = "PASS" if ok else "FAIL"
        elif row.kind == "abs" and seg is not None:
            verdict = "PASS" if seg <= row.bound else "FAIL"
        elif row.kind != "none":
            verdict = "n/a"
        cells.append(verdict)
        if has_ahead:
            if not row.ahead:
                cells.append("-")
            else:
                others = [med[s] for s in AHEAD_OF]
                if seg is None or any(o is None for o in others):
                    cells.append("n/a")
                else:
                    win = all(
                        (seg > o) if row.higher_is_better else (seg < o)
                        for o in others
                        if o is not None
                    )
                    cells.append("PASS" if win else "FAIL")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _env_lines(args: argparse.Namespace, stores: list[str], missing: str | None) -> list[str]:
    import lmdb

    return [
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %z')}; host: {platform.node()}, "
        f"{os.cpu_count()} cpus, {platform.platform()}",
        f"- python {platform.python_version()}, numpy {np.__version__}, "
        f"lmdb {lmdb.__version__}, sqlite {sqlite3.sqlite_version}",
        f"- repeat {args.repeat} (median shown), scale {args.scale}, stores {','.join(stores)}, "
        f"data under {args.dir}",
        *([f"- **segstore missing**: {missing}"] if missing else []),
        *(
            ["- scale < 1: W5/W6/W7 targets are defined at 1M entries; verdicts indicative"]
            if args.scale < 1
            else []
        ),
    ]


def merge(paths: list[Path], out: Path) -> int:
    """Pool every sample of earlier runs (their ``.json``) and print one table of medians."""
    runs = [json.loads(p.read_text(encoding="utf-8")) for p in paths]
    stores: list[str] = list(runs[0]["stores"])
    samples: dict[str, dict[str, list[float]]] = {s: {} for s in stores}
    errors: dict[str, list[str]] = {s: [] for s in stores}
    for run in runs:
        for s in stores:
            for key, vals in run["samples"].get(s, {}).items():
                samples[s].setdefault(key, []).extend(vals)
            errors[s].extend(run["errors"].get(s, []))
    selected = {key.split(".")[0] for per in samples.values() for key in per}
    repeats = "+".join(str(r["repeat"]) for r in runs)
    lines = [
        "# segstore vs baselines (merged)",
        "",
        f"- merged {len(runs)} runs ({', '.join(str(p) for p in paths)}): "
        f"repeat {repeats}, median of all samples",
        f"- scales {sorted({r['scale'] for r in runs})}, stores {','.join(stores)}",
        "",
        *build_table(samples, stores, selected, errors),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"written {out}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--only", default=",".join(ALL_WORKLOADS), help="e.g. W1,W3")
    ap.add_argument("--stores", default="raw,segstore,lmdb,sqlite")
    ap.add_argument("--dir", type=Path, default=_default_dir(), help="parent of the temp dirs")
    ap.add_argument("--segment-bytes", type=int, default=None, help="segstore segment size")
    ap.add_argument("--out", type=Path, default=PERF_DIR / "results" / "latest.md")
    ap.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="run nothing: pool the samples of earlier runs' .json files, print the table",
    )
    args = ap.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out)

    selected = {w.strip().upper() for w in args.only.split(",") if w.strip()}
    unknown = selected - set(ALL_WORKLOADS)
    if unknown:
        ap.error(f"unknown workloads {sorted(unknown)}; choose from {ALL_WORKLOADS}")
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    for s in stores:
        if s not in STORES:
            ap.error(f"unknown store {s!r}; choose from {sorted(STORES)}")
    missing = None
    if "segstore" in stores:
        missing = segstore_import_error()
        if missing:
            print(f"segstore is missing ({missing}); running the baselines only", file=sys.stderr)
            stores.remove("segstore")
    if not stores:
        ap.error("no store to run")
    SegstoreLog.segment_bytes = args.segment_bytes

    args.dir.mkdir(parents=True, exist_ok=True)
    samples: dict[str, dict[str, list[float]]] = {s: {} for s in stores}
    errors: dict[str, list[str]] = {s: [] for s in stores}
    groups = [g for g in GROUPS if selected & set(g.workloads)]
    t_start = time.perf_counter()
    for rep in range(args.repeat):
        for gi, group in enumerate(groups):
            k = (rep + gi) % len(stores)
            for store in stores[k:] + stores[:k]:
                want = tuple(w for w in group.workloads if w in selected)
                metrics = run_in_scratch(
                    functools.partial(_run_group, group, STORES[store], args.scale, want),
                    args.dir,
                    f"cmp-{store}-",
                    f"[{store}] {group.name} rep {rep + 1}",
                    errors[store],
                )
                if metrics is None:
                    continue
                for key, v in metrics.items():
                    samples[store].setdefault(key, []).append(v)
                shown = ", ".join(f"{k}={fmt_value(v)}" for k, v in metrics.items())
                print(f"rep {rep + 1}/{args.repeat} {store:8s} {shown}", file=sys.stderr)

    lines = [
        "# segstore vs baselines",
        "",
        *_env_lines(args, stores, missing),
        f"- wall time {time.perf_counter() - t_start:.0f} s",
        "",
        *build_table(samples, stores, selected, errors),
    ]
    errs = [f"- {s}: {e}" for s in stores for e in errors[s]]
    if errs:
        lines += ["", "Errors:", *errs]
    text = "\n".join(lines) + "\n"
    write_report(
        args.out,
        text,
        {
            "scale": args.scale,
            "repeat": args.repeat,
            "stores": stores,
            "segstore_missing": missing,
            "samples": samples,
            "errors": errors,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``segstore demo``: the whole single-node pipeline, a SIGKILL, recovery and a model check.

The demo runs a writer **process** (``python -m segstore.pipeline_demo --writer DIR``):
a :class:`~segstore.pipeline.Pipeline` with 64 partitions of
:class:`~segstore.testing.kv.KeyValueStateMachine`, one producer thread, three
simulated replicas (``r1`` and ``r2`` acknowledge what is durable every few
milliseconds, ``r3`` lags a second behind) and one deliberately slow partition whose
backlog meets backpressure. The writer prints one JSON status line every tick; the
parent draws them as a live display, then kills the writer with SIGKILL, reopens the
store (recovery), lets every partition catch up and checks each state machine against a
model fed every committed entry exactly once. ``segstore stats`` of the directory is
printed between the kill and the recovery, where it shows what the killed writer left:
the slow partition holding the truncation watermark back.

Entry ``i`` of partition ``p`` is ``k{i % 50}={p}:{i}``, so the model of a partition
that applied ``n`` entries is known from ``n`` alone.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any, Final

from segstore.applier import PartitionStateMachine
from segstore.errors import BackpressureError
from segstore.inspection import stats
from segstore.pipeline import Pipeline
from segstore.testing.kv import KeyValueStateMachine

PARTITIONS: Final = 64
SLOW_PARTITION: Final = 7
SLOW_APPLY_S: Final = 0.001
KEYS: Final = 50
BATCH: Final = 512
REPLICAS: Final = ("r1", "r2", "r3")
LAGGING_REPLICA: Final = "r3"
LAG_S: Final = 1.0
MAX_PENDING: Final = 1_000


class _SlowKeyValue(KeyValueStateMachine):
    """The demo's slow partition: every apply takes a couple of milliseconds."""

    def apply(self, partition_index: int, payload: bytes) -> bytes | None:
        time.sleep(SLOW_APPLY_S)
        return super().apply(partition_index, payload)


def _factory(pid: int) -> PartitionStateMachine:
    return _SlowKeyValue() if pid == SLOW_PARTITION else KeyValueStateMachine()


def payload_of(pid: int, index: int) -> bytes:
    """The demo's entry ``index`` of partition ``pid``."""
    return b"k%d=%d:%d" % (index % KEYS, pid, index)


def model_of(pid: int, applied: int) -> dict[bytes, bytes]:
    """A key-value state fed entries ``1 .. applied`` of ``pid`` exactly once."""
    first = max(1, applied - KEYS + 1)  # older entries are overwritten
    return {
        key: value
        for key, _, value in (payload_of(pid, i).partition(b"=") for i in range(first, applied + 1))
    }


# -- the writer process --------------------------------------------------------------


def _writer(directory: str, tick_s: float) -> int:
    """Run the pipeline until killed, printing one JSON status line per tick."""
    pipeline = Pipeline.open(
        directory,
        partitions=PARTITIONS,
        state_machine_factory=_factory,
        replicas=REPLICAS,
        max_pending=MAX_PENDING,
        checkpoint_interval_s=0.25,
    )
    next_index = {pid: 1 for pid in range(PARTITIONS)}
    next_index.update(pipeline.store.partition_next_indices())
    submitted = 0
    refused = 0
    stop = threading.Event()
    history: list[tuple[float, int]] = []

    def replicas() -> None:
        while not stop.wait(0.005):
            durable = pipeline.store.last_durable_index()
            now = time.monotonic()
            history.append((now, durable))
            for replica in REPLICAS:
                if replica != LAGGING_REPLICA:
                    pipeline.ack(replica, durable)
            while len(history) > 1 and history[1][0] <= now - LAG_S:
                history.pop(0)
            if history[0][0] <= now - LAG_S:
                pipeline.ack(LAGGING_REPLICA, history[0][1])

    threading.Thread(target=replicas, daemon=True).start()
    cursor = 0
    paused: dict[int, float] = {}
    last_tick = started = time.monotonic()
    while True:
        now = time.monotonic()
        pids: list[int] = []
        while len(pids) < BATCH:
            pid = cursor % PARTITIONS
            cursor += 1
            if paused.get(pid, 0.0) <= now:
                pids.append(pid)
        try:
            pipeline.submit_many(
                pids, [payload_of(pid, next_index[pid] + k) for k, pid in _ranks(pids)]
            )
        except BackpressureError as exc:
            refused += 1
            paused[exc.partition_id] = now + 0.2
            continue
        for pid in pids:
            next_index[pid] += 1
        submitted += len(pids)
        if now - last_tick >= tick_s:
            last_tick = now
            print(json.dumps(_status(pipeline, submitted, refused, now - started)), flush=True)


def _ranks(pids: list[int]) -> Iterator[tuple[int, int]]:
    """``(k, pid)`` where ``k`` counts earlier occurrences of ``pid`` in the batch."""
    seen: dict[int, int] = {}
    for pid in pids:
        k = seen.get(pid, 0)
        seen[pid] = k + 1
        yield k, pid


def _status(pipeline: Pipeline, submitted: int, refused: int, elapsed: float) -> dict[str, Any]:
    marks = pipeline.watermarks()
    parts = marks.partitions
    return {
        "elapsed": elapsed,
        "submitted": submitted,
        "refused": refused,
        "durable": marks.durable_index,
        "commit": marks.commit_index,
        "required": marks.required_raft_index,
        "first": marks.log_first_index,
        "holders": list(marks.holders),
        "acks": pipeline.acks.acks(),
        "landed": {pid: pipeline.acks.landed_index(pid) for pid in parts},
        "applied": {pid: p.applied_index for pid, p in parts.items()},
        "quorum": {pid: p.quorum_index for pid, p in parts.items()},
        "masters": _master_counts(pipeline),
    }


def _master_counts(pipeline: Pipeline) -> dict[str, int]:
    counts: dict[str, int] = {}
    for master in pipeline.masters.snapshot().values():
        counts[str(master)] = counts.get(str(master), 0) + 1
    return counts


# -- the parent: display, kill, recover, check ---------------------------------------


def _render(status: dict[str, Any], previous: dict[str, Any] | None) -> list[str]:
    rate = 0.0
    if previous is not None and status["elapsed"] > previous["elapsed"]:
        rate = (status["durable"] - previous["durable"]) / (status["elapsed"] - previous["elapsed"])
    landed = {int(k): v for k, v in status["landed"].items()}
    applied = {int(k): v for k, v in status["applied"].items()}
    quorum = {int(k): v for k, v in status["quorum"].items()}
    lags = sorted(((landed[p] - applied.get(p, 0), p) for p in landed), reverse=True)
    acks = ", ".join(f"{r} {i:,}" for r, i in sorted(status["acks"].items()))
    lines = [
        f"t={status['elapsed']:5.1f}s  submitted {status['submitted']:>9,}  "
        f"durable {status['durable']:>9,}  {rate:>9,.0f} entries/s  "
        f"backpressure refusals {status['refused']}",
        f"acks: {acks}",
        f"quorum index: min {min(quorum.values(), default=0):,} "
        f"max {max(quorum.values(), default=0):,}  "
        f"watermark: log first {status['first']:,}, required {status['required']:,}"
        f" (held by {status['holders'][:4] or 'routing/commit'})",
        "apply lag (landed - applied), worst partitions: "
        + "  ".join(f"p{p}:{lag:,}" for lag, p in lags[:6]),
        "masters: " + ", ".join(f"{m} {n}" for m, n in sorted(status["masters"].items())),
    ]
    return lines


def _display(lines: list[str], drawn: int, live: bool) -> int:
    if live:
        if drawn:
            sys.stdout.write(f"\x1b[{drawn}F")
        for line in lines:
            sys.stdout.write("\x1b[2K" + line + "\n")
        sys.stdout.flush()
        return len(lines)
    print(lines[0])
    return 0


def run_pipeline_demo(*, seconds: float, directory: str | None, keep: bool) -> int:
    """Run the writer for ``seconds``, SIGKILL it, recover and check; 0 if all is well."""
    root = directory or tempfile.mkdtemp(prefix="segstore-pipeline-demo-")
    path = os.path.join(root, "store")
    live = sys.stdout.isatty()
    try:
        print(
            f"pipeline demo: {PARTITIONS} partitions of key-value state machines, replicas "
            f"{', '.join(REPLICAS)} ({LAGGING_REPLICA} lags {LAG_S:.0f} s), partition "
            f"{SLOW_PARTITION} applies slowly; SIGKILL after {seconds:.0f} s"
        )
        last = _run_writer(path, seconds, live)
        if last is None:
            print("demo: the writer printed no status before it was killed", file=sys.stderr)
            return 1
        print(f"SIGKILL sent to the writer at durable index {last['durable']:,}")
        out = io.StringIO()
        stats(path, out)
        print(f"\nsegstore stats {path}  (as the killed writer left it)\n" + out.getvalue())
        return _recover_and_check(path, last)
    finally:
        if not keep and directory is None:
            shutil.rmtree(root, ignore_errors=True)
        elif keep:
            print(f"data kept in {root}")


def _run_writer(path: str, seconds: float, live: bool) -> dict[str, Any] | None:
    command = [sys.executable, "-m", "segstore.pipeline_demo", "--writer", path]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    last: dict[str, Any] | None = None
    previous: dict[str, Any] | None = None
    drawn = 0
    deadline = time.monotonic() + seconds
    try:
        for line in child.stdout:
            status = json.loads(line)
            drawn = _display(_render(status, previous), drawn, live)
            previous, last = last, status
            if time.monotonic() >= deadline:
                break
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    return last


def _recover_and_check(path: str, last: dict[str, Any]) -> int:
    started = time.perf_counter()
    with Pipeline.open(path, state_machine_factory=_factory, replicas=REPLICAS) as pipeline:
        opened = time.perf_counter() - started
        durable = pipeline.store.last_durable_index()
        pipeline.wait_applied(durable)
        caught_up = time.perf_counter() - started
        problems = []
        for pid in range(PARTITIONS):
            sm = pipeline.applier.state_machine(pid)
            assert isinstance(sm, KeyValueStateMachine)
            reported = int(last["landed"].get(str(pid), 0))
            if sm.last_index < reported:
                problems.append(f"partition {pid}: applied {sm.last_index} < durable {reported}")
            if sm.applies != sm.last_index or sm.data != model_of(pid, sm.last_index):
                problems.append(f"partition {pid}: state differs from the model")
        applied = sum(pipeline.status(pid).applied_index for pid in range(PARTITIONS))
        held = pipeline.watermarks().required_raft_index
        for replica in REPLICAS:  # the replicas reconnect and acknowledge everything
            pipeline.ack(replica, durable)
        marks = pipeline.checkpoint()
    print(
        f"recovered: reopened in {opened * 1000:.0f} ms, every partition caught up after "
        f"{caught_up * 1000:.0f} ms; durable index {durable:,}, {applied:,} entries applied"
    )
    if problems:
        for problem in problems:
            print("MODEL MISMATCH " + problem, file=sys.stderr)
        return 1
    print(
        f"model check: all {PARTITIONS} partition states equal a model fed every committed "
        "entry exactly once; nothing reported durable was lost"
    )
    kept = max(0, marks.durable_index - marks.log_first_index + 1)
    print(
        f"after recovery: watermark {held:,} until the replicas acknowledged again, then "
        f"{marks.required_raft_index:,}: the log was truncated to {kept:,} records "
        "(everything else is partition-durable, applied and acknowledged)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the writer process (``--writer DIR``)."""
    parser = argparse.ArgumentParser(prog="python -m segstore.pipeline_demo")
    parser.add_argument("--writer", required=True, help="store directory")
    parser.add_argument("--tick", type=float, default=0.25)
    args = parser.parse_args(argv)
    return _writer(args.writer, args.tick)


if __name__ == "__main__":
    sys.exit(main())

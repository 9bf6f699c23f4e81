"""kill -9 of the whole pipeline (issue #4, section 4, "Recovery"; invariants 1 and 5).

A writer process (tests/pipeline_crash_writer.py) submits to a Pipeline of key-value
partitions, acknowledges with simulated replicas and checkpoints all the time; it is
SIGKILLed at a random moment, sometimes while it is still recovering. Reopened
in-process: nothing it reported durable is lost, and every partition's state (data and
apply count) equals the model fed that partition's committed entries exactly once. The
next writer continues on the same directory, so applying after a recovery is checked
by the iteration after it.

``SEGSTORE_PIPELINE_CRASH_ITERATIONS`` (default 3) and ``SEGSTORE_PIPELINE_CRASH_SEED``
size and seed the loop.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from pipeline_crash_writer import REPLICAS, SEGMENT_BYTES, model_state, payload_for

from segstore.pipeline import Pipeline
from segstore.raft.partition_entry import NO_PARTITION, PARTITION_HEADER_BYTES
from segstore.testing.kv import KeyValueStateMachine

WRITER = Path(__file__).with_name("pipeline_crash_writer.py")
WAIT = 60.0  # seconds; a bound against hangs only


def run_writer(path: Path, seed: int, partitions: int, kill_after: float, early: bool):
    """Run one writer until SIGKILL; return its complete output lines."""
    process = subprocess.Popen(
        [sys.executable, str(WRITER), str(path), str(seed), str(partitions)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    lines: list[str] = []
    opened = threading.Event()

    def reader() -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            if raw.endswith(b"\n"):  # a line cut by the kill is not a report
                lines.append(raw.decode().strip())
                if lines[-1].startswith("O "):
                    opened.set()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    if not early and not opened.wait(WAIT):
        process.kill()
        process.wait(WAIT)
        stderr = process.stderr.read().decode() if process.stderr else ""
        pytest.fail(f"writer seed {seed} never opened:\n{stderr}")
    time.sleep(kill_after)
    process.send_signal(signal.SIGKILL)
    process.wait(WAIT)
    thread.join(WAIT)
    stderr = process.stderr.read().decode() if process.stderr else ""
    assert process.returncode == -signal.SIGKILL, f"writer seed {seed} died:\n{stderr}"
    return lines


def last_report(lines: list[str], partitions: int) -> tuple[int, list[int]] | None:
    for line in reversed(lines):
        kind, durable, *counts = line.split()
        assert kind in ("O", "D") and len(counts) == partitions, line
        return int(durable), [int(c) for c in counts]
    return None


def check(path: Path, partitions: int, durable: int, counts: list[int], where: str) -> None:
    """Reopen, let recovery apply everything, compare with the model; close cleanly."""
    pipeline = Pipeline.open(
        path,
        state_machine_factory=lambda pid: KeyValueStateMachine(),
        replicas=REPLICAS,
        segment_bytes=SEGMENT_BYTES,
    )
    try:
        store = pipeline.store
        assert pipeline.partition_count == partitions
        last = store.last_durable_index()
        assert last >= durable, f"{where}: durable index {last} < reported {durable}"
        assert pipeline.wait_applied(last, WAIT), f"{where}: recovery never applied {last}"
        nexts = store.partition_next_indices()
        held = [nexts.get(pid, 1) - 1 for pid in range(partitions)]
        for pid in range(partitions):
            assert held[pid] >= counts[pid], (
                f"{where}: partition {pid} holds {held[pid]} entries, {counts[pid]} were "
                "reported durable"
            )
            status = pipeline.status(pid)
            assert status.error is None, f"{where}: partition {pid} stopped: {status.error}"
            assert status.applied_index == held[pid], f"{where}: partition {pid} {status}"
            sm = pipeline.applier.state_machine(pid)
            assert isinstance(sm, KeyValueStateMachine)
            data, applies = model_state(pid, held[pid])
            assert sm.applies == applies, (
                f"{where}: partition {pid} applied {sm.applies} times, the model {applies}"
            )
            assert sm.data == data, f"{where}: partition {pid} state differs from the model"
        # The retained log is what the writers wrote: each record its partition's
        # deterministic payload, in partition-index order, ending at the partition's count.
        first = store.first_retained_index()
        headers, values = store.read_records(first, last + 1)
        seen: dict[int, int] = {}
        for raft, (header, value) in enumerate(zip(headers, values, strict=True), first):
            pid, index = int(header["partition_id"]), int(header["partition_index"])
            if pid == NO_PARTITION:
                continue
            assert seen.get(pid, index - 1) == index - 1, f"{where}: raft {raft} skips"
            seen[pid] = index
            assert value[PARTITION_HEADER_BYTES:] == payload_for(pid, index), f"{where}: {raft}"
        for pid, index in seen.items():
            assert index == held[pid], f"{where}: partition {pid} log ends at {index}"
        marks = pipeline.watermarks()
        assert marks.log_first_index <= marks.required_raft_index, where
    finally:
        pipeline.close()


def test_kill_dash_9_of_the_pipeline_loop(tmp_path: Path) -> None:
    iterations = int(os.environ.get("SEGSTORE_PIPELINE_CRASH_ITERATIONS", "3"))
    rng = random.Random(int(os.environ.get("SEGSTORE_PIPELINE_CRASH_SEED", "4")))
    partitions = rng.choice([8, 12, 16])
    path = tmp_path / "store"
    durable, counts = 0, [0] * partitions
    for iteration in range(iterations):
        seed = rng.randrange(1 << 30)
        early = iteration > 0 and rng.random() < 0.25  # killed while recovering
        kill_after = rng.uniform(0.05, 0.5) if early else rng.uniform(0.3, 1.5)
        lines = run_writer(path, seed, partitions, kill_after, early)
        report = last_report(lines, partitions)
        if report is not None:
            assert report[0] >= durable, f"iteration {iteration}: durable went back"
            for pid in range(partitions):
                assert report[1][pid] >= counts[pid], f"iteration {iteration}: p{pid}"
            durable, counts = report
        where = f"iteration {iteration} (writer seed {seed}, {len(lines)} reports)"
        check(path, partitions, durable, counts, where)

"""``segstore dump`` and ``segstore verify``: a single Aof and a whole segmented log store
(log, partition logs, checkpoints), clean and corrupted in each of the ways verify
must name."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from segstore.aof import Aof
from segstore.checkpoints import (
    CHECKPOINTS_NAME,
    AppliedCheckpoint,
    CheckpointStore,
    PartitionCheckpoint,
)
from segstore.cli import main
from segstore.partitions import RAFT_HEADER_DTYPE
from segstore.raft import (
    LOG_HEADER_DTYPE,
    LogEntry,
    LogValType,
    SegmentedLogStore,
    encode_entry,
)

PARTITIONS = 4
AOF_DTYPE = np.dtype([("term", "<u8")])


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``segstore argv...`` in-process: (exit status, stdout, stderr)."""
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def flip_byte(directory: Path, needle: bytes) -> str:
    """Flip one bit inside the only occurrence of ``needle`` in ``directory``'s segments;
    return the segment file's path."""
    hits = []
    for path in sorted(glob.glob(os.path.join(directory, "*.seg"))):
        data = Path(path).read_bytes()
        if needle in data:
            assert data.count(needle) == 1
            hits.append((path, data.index(needle)))
    assert len(hits) == 1, hits
    path, offset = hits[0]
    with open(path, "r+b") as f:
        f.seek(offset + len(needle) // 2)
        byte = f.read(1)[0]
        f.seek(offset + len(needle) // 2)
        f.write(bytes([byte ^ 0x10]))
    return path


# -- a single Aof ------------------------------------------------------------------------


@pytest.fixture
def aof_dir(tmp_path: Path) -> Path:
    """An Aof of 30 records in three synced batches (so damage to the first is provably
    damage to durable data)."""
    path = tmp_path / "aof"
    with Aof.open(path, header_dtype=AOF_DTYPE) as aof:
        for batch in range(3):
            for k in range(10):
                aof.append(b"aof-record-%04d" % (batch * 10 + k), (batch,))
            aof.sync()
    return path


def test_aof_dump(aof_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "dump", str(aof_dir))
    assert status == 0
    assert f"aof {aof_dir}" in out
    assert "records       [1, 30]  (30 records)" in out
    assert "verified      30 records" in out
    assert "term" not in out.split("segments")[1]  # no record table without --records


def test_aof_dump_records(aof_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "dump", str(aof_dir), "--records", "--start", "11", "--limit", "3")
    assert status == 0
    table = out.split("index    bytes")[1].split("verified")[0]
    rows = [line.split() for line in table.splitlines()[1:-1]]
    assert [row[0] for row in rows] == ["11", "12", "13"]
    assert all(row[1] == "15" and row[2] == "1" for row in rows)  # bytes, term


def test_aof_verify_ok(aof_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "verify", str(aof_dir))
    assert (status, err) == (0, "")
    assert "verified      30 records" in out


def test_aof_verify_flipped_bit(aof_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    segment = flip_byte(aof_dir, b"aof-record-0003")
    status, _, err = run(capsys, "verify", str(aof_dir))
    assert status == 1
    assert "CORRUPT" in err
    assert segment in err
    assert "at offset" in err


def test_partition_option_needs_a_store(aof_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "dump", str(aof_dir), "--partition", "0")
    assert status == 2
    assert "--partition needs a store" in err


# -- a whole store -----------------------------------------------------------------------


def payload(k: int) -> bytes:
    return b"payload-%05d" % k


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    """A closed store: 60 app_log entries over 3 of 4 partitions in synced batches, a
    conf entry, a write_at rollback, a compaction."""
    path = tmp_path / "store"
    store = SegmentedLogStore.open(path, partitions=PARTITIONS)
    for k in range(60):
        store.append(LogEntry(1, encode_entry(k % 3, payload(k))))
        if k % 10 == 9:
            store.end_of_append_batch(0, 0)
            store.sync_partitions()
    store.append(LogEntry(1, b"a conf entry", LogValType.conf))
    store.end_of_append_batch(0, 0)
    # Roll back the conf entry and entry 60 (partition 2), then write a new one there.
    store.write_at(60, LogEntry(2, encode_entry(1, b"rewritten")))
    store.end_of_append_batch(0, 0)
    store.sync_partitions()
    store.compact(30)
    store.sync_partitions()
    store.close()
    return path


def log_last_index(store: Path) -> int:
    with Aof.open(store / "log", readonly=True) as log:
        return log.last_index


def test_store_dump(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "dump", str(store_dir))
    assert status == 0
    assert f"store {store_dir}" in out
    assert "partitions    4" in out
    assert "start index   31" in out
    assert f"log {store_dir / 'log'}" in out
    assert "partition columns of the log" in out
    # All 4 partition logs exist (created with the store), partition 3 unused.
    assert f"partition logs {store_dir / 'partitions'} (4)" in out
    assert f"checkpoints {store_dir / CHECKPOINTS_NAME}" in out
    assert "routed raft index  60" in out
    section = out.split("partition logs")[1].split("checkpoints")[0]
    rows = {line.split()[0]: line.split() for line in section.splitlines()[2:]}
    # Entry k has raft index k + 1 and partition k % 3; partition 1: entries 1, 4, ...,
    # 58 (20 of them), then the rewritten entry at raft index 60.
    assert rows["1"][1:5] == ["[1,", "21]", "[2,", "60]"]
    assert rows["2"][1:5] == ["[1,", "19]", "[3,", "57]"]  # entry 60 rolled back
    assert rows["3"][1:4] == ["-", "-", "0"]
    checkpoints = out.split("routed raft index")[1]
    assert "durable index" in checkpoints and "first index" in checkpoints
    assert "OK" in out


def test_store_dump_applied(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The checkpoints section shows each partition's applied checkpoint and the floor."""
    with Aof.open(store_dir / "log", readonly=True) as log:
        store_id = log.store_id
    with CheckpointStore.open(store_dir / CHECKPOINTS_NAME, store_id=store_id) as checkpoints:
        checkpoints.write_applied(
            {0: AppliedCheckpoint(7, 19, b"snap-of-zero"), 2: AppliedCheckpoint(3, 9)},
            applied_raft_floor=21,
        )
    status, out, _ = run(capsys, "dump", str(store_dir))
    assert status == 0, out
    section = out.split(f"checkpoints {store_dir / CHECKPOINTS_NAME}")[1].split("verified")[0]
    assert "applied raft floor 21" in section
    lines = section.splitlines()
    header = next(line for line in lines if "applied index" in line)
    assert header.split()[-6:] == ["applied", "index", "applied", "raft", "snapshot", "bytes"]
    rows = {line.split()[0]: line.split() for line in lines if line.strip()[:1].isdigit()}
    # partition, durable index, durable raft, first index, applied, applied raft, snapshot
    assert rows["0"][4:] == ["7", "19", str(len(b"snap-of-zero"))]
    assert rows["1"][4:] == ["-", "-", "-"]
    assert rows["2"][4:] == ["3", "9", "0"]
    assert rows["1"][1:3] == ["21", "60"]  # the router's checkpoint is still shown


def test_store_dump_records(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "dump", str(store_dir), "--records")
    assert status == 0
    table = out.split("log records [")[1]
    assert table.startswith(f"31, {log_last_index(store_dir)}]")  # compacted to 30
    rows = [line.split() for line in table.splitlines()[2:] if line.strip()[:1].isdigit()]
    by_raft = {int(row[0]): row for row in rows}
    assert by_raft[31][1:5] == ["1", "app_log", "0", "11"]  # term, type, partition, index
    assert by_raft[60][1:5] == ["2", "app_log", "1", "21"]


def test_store_dump_partition(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "dump", str(store_dir), "--partition", "1", "--start", "20")
    assert status == 0
    table = out.split("partition 1 records [20, 21]")[1]
    rows = [line.split() for line in table.splitlines()[2:4]]
    assert rows == [["20", "59", str(len(payload(0)))], ["21", "60", str(len(b"rewritten"))]]
    status, _, err = run(capsys, "dump", str(store_dir), "--partition", "4")
    assert status == 2
    assert "partitions 0 to 3" in err


def test_store_verify_ok(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "verify", str(store_dir))
    assert status == 0, out
    assert "PROBLEM" not in out
    assert "partitions    verified 60 records in 4 partition logs" in out
    assert "OK" in out


def test_console_script(store_dir: Path) -> None:
    script = Path(sys.executable).parent / "segstore"
    done = subprocess.run(
        [str(script), "verify", str(store_dir)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "cross-check" in done.stdout
    assert done.stderr == ""  # no progress bars outside a terminal


def test_store_verify_flipped_partition_payload(
    store_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    segment = flip_byte(store_dir / "partitions" / "2", payload(5))
    status, out, _ = run(capsys, "verify", str(store_dir))
    assert status == 1
    problems = [line for line in out.splitlines() if "PROBLEM" in line]
    assert len(problems) == 1, out
    assert segment in problems[0] and "at offset" in problems[0]


def test_store_verify_extra_partition_record(
    store_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    last = log_last_index(store_dir)
    with Aof.open(store_dir / "partitions" / "0", header_dtype=RAFT_HEADER_DTYPE) as plog:
        plog.append(b"not in the log", (last + 1,))
    status, out, _ = run(capsys, "verify", str(store_dir))
    assert status == 1
    problems = [line for line in out.splitlines() if "PROBLEM" in line]
    assert len(problems) == 1, out
    assert str(store_dir / "partitions" / "0") in problems[0]
    assert f"partition 0: 1 records have raft indices past the log's last index {last}" in out
    assert f"partition index 21 (raft index {last + 1})" in out


def test_store_verify_partition_record_of_another(
    store_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A partition record at a raft index where the log has another partition's entry."""
    with Aof.open(store_dir / "partitions" / "2", header_dtype=RAFT_HEADER_DTYPE) as plog:
        plog.append(payload(59), (60,))
    status, out, _ = run(capsys, "verify", str(store_dir))
    assert status == 1
    assert "partition 2: 1 records do not match the log's record at their raft index" in out
    assert "partition index 20 (raft index 60): is partition 1 index 21" in out


def test_store_verify_payload_differs(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with Aof.open(store_dir / "partitions" / "1", header_dtype=RAFT_HEADER_DTYPE) as plog:
        plog.truncate_after(plog.last_index - 1)
        plog.append(b"different", (60,))
    status, out, _ = run(capsys, "verify", str(store_dir))
    assert status == 1
    problem = next(line for line in out.splitlines() if "PROBLEM" in line)
    assert str(store_dir / "partitions" / "1") in problem
    assert "1 payloads differ from the log value" in problem
    assert "partition index 21 (raft index 60)" in problem


def test_store_verify_missing_routed_records(
    store_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Records the checkpoints say were routed, gone from the partition log."""
    with Aof.open(store_dir / "partitions" / "1", header_dtype=RAFT_HEADER_DTYPE) as plog:
        plog.truncate_after(plog.last_index - 2)
    status, out, _ = run(capsys, "verify", str(store_dir))
    assert status == 1
    assert "2 records up to routed_raft_index 60 were routed and checkpointed" in out
    assert "durable index" in out and "is past the partition log's last index 19" in out


def test_store_verify_checkpoints(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with Aof.open(store_dir / "log", readonly=True) as log:
        store_id = log.store_id
    with CheckpointStore.open(store_dir / CHECKPOINTS_NAME, store_id=store_id) as checkpoints:
        checkpoints.write(
            {0: PartitionCheckpoint(durable_index=99, durable_raft_index=200)},
            routed_raft_index=1000,
        )
    status, out, _ = run(capsys, "verify", str(store_dir))
    assert status == 1
    assert "routed_raft_index 1000 is past the log's last index" in out
    assert "(partition 0): durable index 99 is past the partition log's last index 20" in out


def test_store_not_yet_routed_is_no_problem(
    store_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A durable log record the router never saw (a crash before routing) is noted."""
    last = log_last_index(store_dir)
    header = (3, 0, 20, 2, int(LogValType.app_log))
    with Aof.open(store_dir / "log", header_dtype=LOG_HEADER_DTYPE) as log:
        log.append(encode_entry(2, b"unrouted"), header)
    status, out, _ = run(capsys, "verify", str(store_dir))
    assert status == 0, out
    assert "1 records not yet routed (partition 2: 1)" in out
    # Opening the store routes it; then there is nothing left to note.
    SegmentedLogStore.open(store_dir).close()
    status, out, _ = run(capsys, "verify", str(store_dir))
    assert status == 0, out
    assert "not yet routed" not in out
    with Aof.open(store_dir / "partitions" / "2", readonly=True) as plog:
        assert (plog.last_index, bytes(plog.read(20))) == (20, b"unrouted")
    assert log_last_index(store_dir) == last + 1


def test_store_log_column_problems(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Log records whose partition columns skip an index or disagree with the value."""
    header = (3, 0, 25, 0, int(LogValType.app_log))
    with Aof.open(store_dir / "log", header_dtype=LOG_HEADER_DTYPE) as log:
        log.append(encode_entry(3, b"columns say partition 0"), header)
    status, out, _ = run(capsys, "verify", str(store_dir))
    assert status == 1
    assert "partition 0: partition indices are not contiguous" in out
    assert "has partition index 25 after 20" in out
    assert "the value names partition 3 index 0, the columns partition 0 index 25" in out


def test_store_locked(store_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = SegmentedLogStore.open(store_dir)
    try:
        status, _, err = run(capsys, "verify", str(store_dir))
    finally:
        store.close()
    assert status == 2
    assert "already open" in err


def test_not_a_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "stray.txt").write_text("hello")
    for command in ("dump", "verify"):
        status, _, err = run(capsys, command, str(tmp_path))
        assert status == 2
        assert "neither an Aof" in err
    status, _, err = run(capsys, "verify", str(tmp_path / "missing"))
    assert status == 2
    assert "does not exist" in err


def test_store_verify_corrupt_sealed_segments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Damage in sealed segments (sidecars loaded, so open does not rescan them) is
    found by verify's CRC pass, in the log and in a partition log alike; a corrupt log
    is not cross-checked, and every partition log is still verified."""
    path = tmp_path / "store"
    store = SegmentedLogStore.open(path, partitions=2, segment_bytes=1 << 20)
    for k in range(8):
        store.append(LogEntry(1, encode_entry(k % 2, payload(k) + bytes(300_000))))
        store.end_of_append_batch(0, 0)
    store.close()
    log_segment = flip_byte(path / "log", payload(2))
    partition_segment = flip_byte(path / "partitions" / "1", payload(1))
    status, out, _ = run(capsys, "verify", str(path))
    assert status == 1
    problems = [line for line in out.splitlines() if "PROBLEM" in line]
    assert len(problems) == 2, out
    assert log_segment in problems[0] and "the log: " in problems[0]
    assert partition_segment in problems[1] and "partition 1: " in problems[1]
    assert "CORRUPT: cross-checks against it skipped" in out
    assert "in 2 partition logs" in out

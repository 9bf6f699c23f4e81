"""``segstore stats``: each partition's required raft index and the partition holding the
truncation watermark back (DESIGN.md invariant 6), checked against a brute-force
computation that reads every log record one at a time, and read-only."""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from segstore.aof import Aof
from segstore.checkpoints import (
    CHECKPOINTS_NAME,
    AppliedCheckpoint,
    CheckpointStore,
    PartitionCheckpoint,
)
from segstore.cli import main
from segstore.inspection import QUORUM_OFFLINE
from segstore.partitions import RAFT_HEADER_DTYPE
from segstore.raft import (
    LOG_HEADER_DTYPE,
    NO_PARTITION,
    LogEntry,
    LogValType,
    SegmentedLogStore,
    encode_entry,
)

PARTITIONS = 4


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``segstore argv...`` in-process: (exit status, stdout, stderr)."""
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def run_json(capsys: pytest.CaptureFixture[str], path: Path) -> dict[str, Any]:
    status, out, err = run(capsys, "stats", str(path), "--json")
    assert (status, err) == (0, ""), err
    result: dict[str, Any] = json.loads(out)
    return result


def store_id(path: Path) -> bytes:
    with Aof.open(path / "log", readonly=True) as log:
        return log.store_id


def write_applied(path: Path, applied: dict[int, AppliedCheckpoint], floor: int) -> None:
    with CheckpointStore.open(path / CHECKPOINTS_NAME, store_id=store_id(path)) as checkpoints:
        checkpoints.write_applied(applied, applied_raft_floor=floor)


def value(k: int) -> bytes:
    """Payloads of different sizes, so byte counts catch an off-by-one row."""
    return b"v%d-" % k + bytes(k % 7)


def logged_bytes(k: int, used: int = 3) -> int:
    """Log payload size of entry k of :func:`build`: the value, partition header included."""
    return len(encode_entry(k % used, value(k)))


def build(path: Path, entries: int, partitions: int = PARTITIONS, used: int = 3) -> None:
    """A closed store: ``entries`` app_log entries round-robin over ``used`` partitions
    in synced batches of 10, then a conf entry; everything routed and checkpointed.
    Entry k has raft index k + 1, partition k % used and partition index k // used + 1."""
    store = SegmentedLogStore.open(path, partitions=partitions)
    for k in range(entries):
        store.append(LogEntry(1, encode_entry(k % used, value(k))))
        if k % 10 == 9:
            store.end_of_append_batch(0, 0)
    store.append(LogEntry(1, b"conf", LogValType.conf))
    store.end_of_append_batch(0, 0)
    store.sync_partitions()
    store.close()


# -- the brute force ---------------------------------------------------------------------


@dataclass
class Expected:
    required: dict[int, int | None]
    watermark: int
    holders: list[int]
    held_records: int
    held_bytes: int


def brute_force(path: Path) -> Expected:
    """The figures stats must show, from one record at a time in plain Python."""
    with CheckpointStore.open(path / CHECKPOINTS_NAME, store_id=store_id(path)) as checkpoints:
        durable = checkpoints.read_all()
        applied = checkpoints.read_applied_all()
        routed = checkpoints.routed_raft_index()
        floor = checkpoints.applied_raft_floor()
    with Aof.open(path / "log", readonly=True) as log:
        partitions = int(log.user_meta["partitions"])
        first, last = log.first_index, log.last_index
        required: dict[int, int | None] = dict.fromkeys(range(partitions))
        sizes = {}
        for raft in range(first, last + 1):
            header = log.header(raft)
            sizes[raft] = len(log.read(raft))
            pid = int(header["partition_id"])
            if pid == NO_PARTITION or required.get(pid) is not None:
                continue
            d = durable.get(pid)
            a = applied.get(pid)
            above_durable = raft > (d.durable_raft_index if d else 0)
            above_applied = int(header["partition_index"]) > (a.applied_index if a else 0)
            if above_durable or above_applied:
                required[pid] = raft
    terms = [r for r in required.values() if r is not None] + [routed + 1, floor + 1]
    watermark = min(terms)
    holders = [pid for pid, r in required.items() if r == watermark and watermark <= last]
    others = [r for pid, r in required.items() if r is not None and pid not in holders]
    end = min([last + 1, routed + 1, floor + 1, *others])
    held = [raft for raft in range(max(watermark, first), end)] if holders else []
    return Expected(
        required=required,
        watermark=watermark,
        holders=holders,
        held_records=len(held),
        held_bytes=sum(sizes[raft] for raft in held),
    )


def assert_matches(result: dict[str, Any], expected: Expected) -> None:
    required = {p["partition"]: p["required_raft_index"] for p in result["partitions"]}
    assert required == expected.required
    assert result["required_raft_index"] == expected.watermark
    if expected.holders:
        held = result["held_back"]
        assert held["partitions"] == expected.holders
        assert held["first_raft_index"] == expected.watermark
        assert (held["records"], held["bytes"]) == (expected.held_records, expected.held_bytes)
    else:
        assert result["held_back"] is None


# -- the lagging partition ---------------------------------------------------------------


@pytest.fixture
def lagging(tmp_path: Path) -> Path:
    """60 entries over partitions 0-2 (20 each), raft 61 a conf entry. Partition 1 has
    applied only 8 of its 20 (its 9th is raft index 26); the others everything."""
    path = tmp_path / "store"
    build(path, 60)
    write_applied(
        path,
        {
            0: AppliedCheckpoint(20, 58, b"snap0"),
            1: AppliedCheckpoint(8, 23, b"s1"),
            2: AppliedCheckpoint(20, 60),
        },
        floor=55,
    )
    return path


def test_names_the_lagging_partition(lagging: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_json(capsys, lagging)
    assert result["required_raft_index"] == 26
    assert result["bound_by"] == ["partition 1"]
    held = result["held_back"]
    # Without partition 1 the watermark would be applied_raft_floor + 1 = 56.
    assert (held["partitions"], held["first_raft_index"], held["end_raft_index"]) == ([1], 26, 56)
    assert held["records"] == 30
    assert held["bytes"] == sum(logged_bytes(k) for k in range(25, 55))
    assert_matches(result, brute_force(lagging))

    status, out, _ = run(capsys, "stats", str(lagging))
    assert status == 0
    watermark = out.split("\nwatermark\n")[1]
    assert "min required raft   26  (bound by partition 1;" in watermark
    assert "held back by        partition 1: 30 log records" in watermark
    assert "cannot show quorum offline" in watermark


def test_per_partition_figures(lagging: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_json(capsys, lagging)
    assert result["log"] == {
        "first_index": 1,
        "last_index": 61,
        "records": 61,
        "durable_index": 61,
        "segments": 1,
        "bytes": result["log"]["bytes"],
        "capacity_bytes": result["log"]["capacity_bytes"],
    }
    assert result["log"]["bytes"] > sum(logged_bytes(k) for k in range(60))
    assert (result["routed_raft_index"], result["applied_raft_floor"]) == (61, 55)
    by_pid = {p["partition"]: p for p in result["partitions"]}
    assert sorted(by_pid) == [0, 1, 2, 3]
    assert by_pid[1] == {
        "partition": 1,
        "log_records": 20,
        "log_bytes": sum(logged_bytes(k) for k in range(1, 60, 3)),
        "durable_index": 20,
        "durable_raft_index": 59,
        "applied_index": 8,
        "applied_raft_index": 23,
        "snapshot_bytes": 2,
        "required_raft_index": 26,
    }
    assert by_pid[0]["snapshot_bytes"] == 5
    assert by_pid[0]["required_raft_index"] is None
    assert by_pid[3]["log_records"] == 0 and by_pid[3]["required_raft_index"] is None

    status, out, _ = run(capsys, "stats", str(lagging))
    assert status == 0
    table = out.split("\npartitions\n")[1].split("\nwatermark\n")[0].splitlines()
    rows = {line.split()[0]: line.split() for line in table[1:]}
    assert rows["1"] == ["1", "20", str(by_pid[1]["log_bytes"]), "20", "59", "8", "23", "2", "26"]
    assert rows["0"][-1] == "-"
    assert "records             [1, 61]  (61 records)" in out
    assert "durable             [1, 61]" in out
    assert "applied raft floor  55" in out


def test_json_keys_are_stable(lagging: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_json(capsys, lagging)
    assert sorted(result) == [
        "applied_raft_floor",
        "bound_by",
        "checkpoint_error",
        "format_version",
        "held_back",
        "log",
        "partition_count",
        "partitions",
        "path",
        "quorum",
        "quorum_note",
        "required_raft_index",
        "routed_raft_index",
        "start_index",
    ]
    assert result["format_version"] == 1
    assert (result["quorum"], result["quorum_note"]) == (None, QUORUM_OFFLINE)
    assert result["path"] == str(lagging)


# -- what else can bind the watermark ----------------------------------------------------


def test_nothing_applied_binds_at_the_floor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No applied checkpoints: every partition needs its first record, the floor is 0."""
    path = tmp_path / "store"
    build(path, 30)
    result = run_json(capsys, path)
    assert result["required_raft_index"] == 1
    assert result["bound_by"] == ["partition 0", "applied_raft_floor"]
    held = result["held_back"]
    assert (held["partitions"], held["records"], held["bytes"]) == ([0], 0, 0)
    assert_matches(result, brute_force(path))


def test_caught_up_holds_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "store"
    build(path, 30)
    write_applied(path, {pid: AppliedCheckpoint(10, 28 + pid) for pid in range(3)}, floor=31)
    result = run_json(capsys, path)
    assert result["required_raft_index"] == 32
    assert result["bound_by"] == ["routed_raft_index", "applied_raft_floor"]
    assert result["held_back"] is None
    assert_matches(result, brute_force(path))
    _, out, _ = run(capsys, "stats", str(path))
    assert "held back by        nothing: no retained record is required" in out


def test_floor_below_partitions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A low applied floor binds: no partition is named."""
    path = tmp_path / "store"
    build(path, 30)
    write_applied(path, {pid: AppliedCheckpoint(10, 28 + pid) for pid in range(3)}, floor=12)
    result = run_json(capsys, path)
    assert (result["required_raft_index"], result["bound_by"]) == (13, ["applied_raft_floor"])
    assert result["held_back"] is None
    _, out, _ = run(capsys, "stats", str(path))
    assert "held back by        no partition (applied_raft_floor)" in out


def test_unrouted_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Durable log records the router never saw: needed by their partition (above its
    checkpoint) and by routing (routed_raft_index + 1)."""
    path = tmp_path / "store"
    build(path, 30)
    write_applied(path, {pid: AppliedCheckpoint(10, 28 + pid) for pid in range(3)}, floor=31)
    with Aof.open(path / "log", header_dtype=LOG_HEADER_DTYPE) as log:
        log.append(encode_entry(2, b"unrouted"), (3, 0, 11, 2, int(LogValType.app_log)))
        log.append(encode_entry(0, b"unrouted too"), (3, 0, 11, 0, int(LogValType.app_log)))
    result = run_json(capsys, path)
    assert result["required_raft_index"] == 32
    assert result["bound_by"] == ["partition 2", "routed_raft_index", "applied_raft_floor"]
    by_pid = {p["partition"]: p["required_raft_index"] for p in result["partitions"]}
    assert by_pid == {0: 33, 1: None, 2: 32, 3: None}
    assert_matches(result, brute_force(path))


def test_durable_checkpoint_behind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A router checkpoint behind the log keeps a partition's records above it, even when
    the state machine applied them."""
    path = tmp_path / "store"
    build(path, 30)
    write_applied(path, {pid: AppliedCheckpoint(10, 28 + pid) for pid in range(3)}, floor=31)
    with CheckpointStore.open(path / CHECKPOINTS_NAME, store_id=store_id(path)) as checkpoints:
        checkpoints.write({1: PartitionCheckpoint(4, 11)})
    result = run_json(capsys, path)
    assert (result["required_raft_index"], result["bound_by"]) == (14, ["partition 1"])
    held = result["held_back"]
    assert (held["end_raft_index"], held["records"]) == (32, 18)
    assert_matches(result, brute_force(path))


def test_compacted_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """After compaction a partition's requirement is among the retained records; the
    floor alone may put the watermark below the log's first index."""
    path = tmp_path / "store"
    store = SegmentedLogStore.open(path, partitions=2)
    for k in range(40):
        store.append(LogEntry(1, encode_entry(k % 2, value(k))))
    store.end_of_append_batch(0, 0)
    store.sync_partitions()
    store.compact(20)
    store.close()
    write_applied(path, {0: AppliedCheckpoint(20, 39), 1: AppliedCheckpoint(3, 6)}, floor=40)
    result = run_json(capsys, path)
    assert (result["start_index"], result["log"]["first_index"]) == (21, 21)
    # Partition 1's first retained record (raft 22, index 11) is above its applied 3.
    assert (result["required_raft_index"], result["bound_by"]) == (22, ["partition 1"])
    held = result["held_back"]
    assert (held["first_raft_index"], held["end_raft_index"], held["records"]) == (22, 41, 19)
    assert_matches(result, brute_force(path))
    write_applied(path, {}, floor=5)
    result = run_json(capsys, path)
    assert (result["required_raft_index"], result["bound_by"]) == (6, ["applied_raft_floor"])
    assert result["held_back"] is None
    assert_matches(result, brute_force(path))


@pytest.mark.parametrize("seed", range(8))
def test_random_stores_match_brute_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], seed: int
) -> None:
    rng = random.Random(seed)
    path = tmp_path / "store"
    partitions = rng.randint(1, 5)
    store = SegmentedLogStore.open(path, partitions=partitions)
    for k in range(rng.randint(1, 120)):
        if rng.random() < 0.05:
            store.append(LogEntry(1, b"conf", LogValType.conf))
        else:
            store.append(LogEntry(1, encode_entry(rng.randrange(partitions), value(k))))
        if rng.random() < 0.2:
            store.end_of_append_batch(0, 0)
    store.end_of_append_batch(0, 0)
    store.sync_partitions()
    last = store.next_slot() - 1
    if rng.random() < 0.5:
        store.compact(rng.randint(0, last))
    store.close()

    applied = {}
    with CheckpointStore.open(path / CHECKPOINTS_NAME, store_id=store_id(path)) as checkpoints:
        lowered = {}
        for pid, checkpoint in checkpoints.read_all().items():
            applied[pid] = AppliedCheckpoint(
                rng.randint(0, checkpoint.durable_index), 0, bytes(rng.randrange(4))
            )
            if rng.random() < 0.3 and checkpoint.durable_index:
                index = rng.randint(0, checkpoint.durable_index)
                with Aof.open(path / "partitions" / str(pid), readonly=True) as plog:
                    raft = int(plog.header(index)["raft_index"]) if index else 0
                lowered[pid] = PartitionCheckpoint(index, raft)
        checkpoints.write(lowered)
        checkpoints.write_applied(applied, applied_raft_floor=rng.randint(0, last))
    if rng.random() < 0.5:
        with Aof.open(path / "log", header_dtype=LOG_HEADER_DTYPE) as log:
            pid = rng.randrange(partitions)
            log.append(encode_entry(pid, b"late"), (2, 0, 10**6, pid, int(LogValType.app_log)))
    assert_matches(run_json(capsys, path), brute_force(path))


# -- offline, readonly, refusals ---------------------------------------------------------


def snapshot_files(path: Path) -> dict[str, tuple[bytes, int]]:
    """Every file's bytes and mtime, except LMDB's reader table (lock.mdb), which
    every LMDB reader updates."""
    files = {}
    for directory, _, names in os.walk(path):
        for name in names:
            if name == "lock.mdb":
                continue
            full = os.path.join(directory, name)
            files[full] = (Path(full).read_bytes(), os.stat(full).st_mtime_ns)
    return files


def test_readonly(lagging: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot_files(lagging)
    assert any(name.endswith("data.mdb") for name in before)
    assert run(capsys, "stats", str(lagging))[0] == 0
    assert run(capsys, "stats", str(lagging), "--json")[0] == 0
    assert snapshot_files(lagging) == before


def test_reads_no_payload(
    lagging: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only header columns and payload sizes: no record is read one by one."""
    expected = run_json(capsys, lagging)

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("stats read a record")

    for method in ("read", "read_range", "read_record", "header"):
        monkeypatch.setattr(Aof, method, refuse)
    assert run_json(capsys, lagging) == expected


def test_locked_store_is_refused_like_dump(
    lagging: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The tools take each Aof's lock: a store in use is refused (exit 2), as dump does."""
    store = SegmentedLogStore.open(lagging)
    try:
        dump_status, _, dump_err = run(capsys, "dump", str(lagging))
        status, out, err = run(capsys, "stats", str(lagging))
    finally:
        store.close()
    assert (status, dump_status) == (2, 2)
    assert "already open" in err and "already open" in dump_err
    assert out == ""
    assert run(capsys, "stats", str(lagging))[0] == 0  # once closed, it reads


def test_unreadable_checkpoints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Another store's checkpoints: exit 1, the error shown, every record counted as
    required (routed_raft_index and applied_raft_floor taken as 0)."""
    path, other = tmp_path / "store", tmp_path / "other"
    build(path, 12)
    build(other, 3)
    shutil.rmtree(path / CHECKPOINTS_NAME)
    shutil.copytree(other / CHECKPOINTS_NAME, path / CHECKPOINTS_NAME)
    status, out, _ = run(capsys, "stats", str(path), "--json")
    assert status == 1
    result = json.loads(out)
    assert "belongs to store" in result["checkpoint_error"]
    assert (result["routed_raft_index"], result["applied_raft_floor"]) == (0, 0)
    assert result["required_raft_index"] == 1
    status, out, _ = run(capsys, "stats", str(path))
    assert status == 1
    assert "cannot read:" in out and "belongs to store" in out


def test_needs_a_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with Aof.open(tmp_path / "aof", header_dtype=RAFT_HEADER_DTYPE) as aof:
        aof.append(b"x", (1,))
    status, _, err = run(capsys, "stats", str(tmp_path / "aof"))
    assert status == 2
    assert "stats needs a segmented log store directory" in err
    status, _, err = run(capsys, "stats", str(tmp_path / "missing"))
    assert status == 2
    assert "does not exist" in err

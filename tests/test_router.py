"""Router bookkeeping that the store's public behaviour does not show directly."""

from __future__ import annotations

from pathlib import Path

from segstore.checkpoints import CHECKPOINTS_NAME, CheckpointStore
from segstore.raft import LogEntry, SegmentedLogStore, encode_entry


def test_checkpoint_catches_up_after_write_at_returns_to_the_same_index(
    tmp_path: Path,
) -> None:
    # A rollback lowers partition 0's checkpoint to 2; the rewrite brings the partition
    # back to index 3. The checkpoint must follow it back up, or the log could never be
    # truncated past raft index 3 again.
    path = tmp_path / "store"
    with SegmentedLogStore.open(path, partitions=2) as store:
        for n in range(3):
            store.append(LogEntry(1, encode_entry(0, b"v%d" % n)))
        store.end_of_append_batch(1, 3)
        store.sync_partitions()
        store.write_at(3, LogEntry(2, encode_entry(0, b"rewritten")))
        store.flush()
        store.sync_partitions()
        store_id = store._log.store_id
    with CheckpointStore.open(path / CHECKPOINTS_NAME, store_id=store_id) as checkpoints:
        checkpoint = checkpoints.read(0)
        assert checkpoint is not None
        assert (checkpoint.durable_index, checkpoint.durable_raft_index) == (3, 3)
        assert checkpoints.routed_raft_index() == 3


def test_an_entry_larger_than_a_small_segment_routes_into_its_partition(
    tmp_path: Path,
) -> None:
    # Partition logs once had fixed 1 MiB segments: a bigger entry, which the log
    # accepts, made routing fail and stop for every partition.
    big = bytes(range(256)) * (5 << 12)  # 5 MiB
    with SegmentedLogStore.open(tmp_path / "store", partitions=2) as store:
        store.append(LogEntry(1, encode_entry(1, big)))
        store.append(LogEntry(1, encode_entry(1, b"small")))
        store.end_of_append_batch(1, 2)
        store.sync_partitions()
        with store.partition_log(1) as log:
            assert log.next_index == 3
            assert bytes(log.read(1)) == big
            assert bytes(log.read(2)) == b"small"

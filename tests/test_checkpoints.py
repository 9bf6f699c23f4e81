"""CheckpointStore: durable per-partition progress in LMDB."""

from __future__ import annotations

import errno
import struct
import tempfile
from pathlib import Path
from typing import Any

import lmdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segstore.checkpoints import (
    CHECKPOINTS_NAME,
    FORMAT_VERSION,
    CheckpointStore,
    PartitionCheckpoint,
)
from segstore.errors import (
    ClosedError,
    CorruptionError,
    FormatVersionError,
    InvalidArgumentError,
    NotAStoreError,
    StorageIOError,
    StoreLockedError,
)

STORE_ID = bytes(range(16))
OTHER_ID = bytes(range(1, 17))
U64_MAX = 2**64 - 1


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / CHECKPOINTS_NAME


@pytest.fixture
def store(path: Path) -> Any:
    with CheckpointStore.open(path, store_id=STORE_ID) as s:
        yield s


def _raw_put(store: CheckpointStore, key: bytes, value: bytes) -> None:
    """Write bytes behind the store's back, as corruption or an old writer would."""
    with store._env.begin(write=True) as txn:
        txn.put(key, value, db=store._partitions)


class _CountingEnv:
    """Wraps an lmdb Environment (a C type that cannot be monkeypatched) to count txns."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self.write_txns = 0

    def begin(self, **kwargs: Any) -> Any:
        if kwargs.get("write"):
            self.write_txns += 1
        return self.env.begin(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.env, name)


def test_round_trip(store: CheckpointStore) -> None:
    assert store.read_all() == {}
    assert store.read(7) is None
    updates = {
        7: PartitionCheckpoint(5, 50, first_index=2),
        0: PartitionCheckpoint(0, 0),
        2**32 - 1: PartitionCheckpoint(U64_MAX, U64_MAX, U64_MAX),
    }
    store.write(updates)
    assert store.read(7) == updates[7]
    assert store.read(0) == PartitionCheckpoint(0, 0, 1)
    assert store.read_all() == updates
    assert list(store.read_all()) == [0, 7, 2**32 - 1]  # cursor order is id order

    store.write({7: PartitionCheckpoint(6, 60, 2)})  # overwrite one, keep the rest
    assert store.read(7) == PartitionCheckpoint(6, 60, 2)
    assert len(store.read_all()) == 3


def test_value_layout_is_pinned() -> None:
    """The bytes FORMAT.md documents: version, 7 reserved, three u64 little-endian."""
    raw = PartitionCheckpoint(1, 0x0203, 5).encode()
    assert raw == bytes.fromhex(
        "02" + "00" * 7 + "0100000000000000" + "0302000000000000" + "0500000000000000"
    )
    assert PartitionCheckpoint.decode(raw, "x", 1) == PartitionCheckpoint(1, 0x0203, 5)


def test_many_partitions_in_one_write_transaction(store: CheckpointStore) -> None:
    counting = _CountingEnv(store._env)
    store._env = counting
    updates = {pid: PartitionCheckpoint(pid, pid * 3, pid // 2 + 1) for pid in range(1024)}
    store.write(updates)
    assert counting.write_txns == 1
    store.delete(range(0, 1024, 2))
    assert counting.write_txns == 2
    assert store.read_all() == {pid: updates[pid] for pid in range(1, 1024, 2)}


def test_reopen_persists(path: Path) -> None:
    updates = {pid: PartitionCheckpoint(pid + 1, pid + 10, 1) for pid in range(20)}
    with CheckpointStore.open(path, store_id=STORE_ID) as s:
        s.write(updates)
        s.delete([3, 4, 99])
    with CheckpointStore.open(path, store_id=STORE_ID, create=False) as s:
        expected = {pid: cp for pid, cp in updates.items() if pid not in (3, 4)}
        assert s.read_all() == expected


def test_foreign_store_id_is_refused(path: Path) -> None:
    with CheckpointStore.open(path, store_id=STORE_ID) as s:
        s.write({1: PartitionCheckpoint(1, 1)})
    with pytest.raises(NotAStoreError, match=rf"belongs to store {STORE_ID.hex()}, not"):
        CheckpointStore.open(path, store_id=OTHER_ID)
    # The refusal closed the environment: the right owner can still open it.
    with CheckpointStore.open(path, store_id=STORE_ID) as s:
        assert s.read(1) == PartitionCheckpoint(1, 1)


def test_open_refusals(tmp_path: Path, path: Path) -> None:
    with pytest.raises(NotAStoreError, match="does not exist"):
        CheckpointStore.open(path, store_id=STORE_ID, create=False)
    foreign = tmp_path / "not-lmdb"
    foreign.mkdir()
    (foreign / "something").write_bytes(b"x")
    with pytest.raises(NotAStoreError, match=r"no data\.mdb"):
        CheckpointStore.open(foreign, store_id=STORE_ID)
    a_file = tmp_path / "file"
    a_file.write_bytes(b"")
    with pytest.raises(NotAStoreError, match="not a directory"):
        CheckpointStore.open(a_file, store_id=STORE_ID)
    for bad_id in (b"", "abc", bytes(256), None):
        with pytest.raises(InvalidArgumentError, match="store_id"):
            CheckpointStore.open(path, store_id=bad_id)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"CheckpointStore.open"):
        CheckpointStore()


def test_second_open_in_process_is_refused(store: CheckpointStore, path: Path) -> None:
    with pytest.raises(StoreLockedError):
        CheckpointStore.open(path, store_id=STORE_ID)


def test_an_lmdb_without_store_id_is_not_a_store(path: Path) -> None:
    env = lmdb.open(str(path), max_dbs=2)
    partitions = env.open_db(b"partitions")  # outside the txn: open_db would nest one
    with env.begin(write=True) as txn:
        txn.put(b"\0\0\0\1", bytes(40), db=partitions)
    env.close()
    with pytest.raises(NotAStoreError, match="no store id"):
        CheckpointStore.open(path, store_id=STORE_ID)


def test_future_format_version_is_refused(store: CheckpointStore, path: Path) -> None:
    with store._env.begin(write=True) as txn:
        txn.put(b"format_version", struct.pack("<I", FORMAT_VERSION + 1), db=store._meta)
    store.close()
    with pytest.raises(FormatVersionError, match="version 2"):
        CheckpointStore.open(path, store_id=STORE_ID)


@pytest.mark.parametrize(
    "pid",
    [-1, 2**32, True, "1", 1.0, None],
)
def test_bad_partition_ids(store: CheckpointStore, pid: Any) -> None:
    with pytest.raises(InvalidArgumentError):
        store.write({pid: PartitionCheckpoint(1, 1)})
    with pytest.raises(InvalidArgumentError):
        store.read(pid)
    with pytest.raises(InvalidArgumentError):
        store.delete([pid])


@pytest.mark.parametrize(
    "args",
    [
        (-1, 0),
        (0, -1),
        (0, 0, -1),
        (0, 0, 0),  # first_index starts at 1
        (2**64, 0),
        (1.0, 0),
        ("1", 0),
        (True, 0),
        (None, 0),
    ],
)
def test_bad_checkpoint_values(args: tuple[Any, ...]) -> None:
    with pytest.raises(InvalidArgumentError):
        PartitionCheckpoint(*args)


def test_bad_write_input_changes_nothing(store: CheckpointStore) -> None:
    store.write({1: PartitionCheckpoint(1, 1)})
    with pytest.raises(InvalidArgumentError, match="PartitionCheckpoint"):
        store.write({2: PartitionCheckpoint(2, 2), 3: (3, 3)})  # type: ignore[dict-item]
    with pytest.raises(InvalidArgumentError):
        store.write({2: PartitionCheckpoint(2, 2), -3: PartitionCheckpoint(3, 3)})
    with pytest.raises(InvalidArgumentError, match="mapping"):
        store.write([(2, PartitionCheckpoint(2, 2))])  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        store.delete(b"\x01")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        store.delete(5)  # type: ignore[arg-type]
    assert store.read_all() == {1: PartitionCheckpoint(1, 1)}
    store.write({})
    store.delete([])
    assert store.read_all() == {1: PartitionCheckpoint(1, 1)}


@pytest.mark.parametrize(
    ("value", "what"),
    [
        (PartitionCheckpoint(1, 1).encode()[:-1], "31 bytes"),
        (PartitionCheckpoint(1, 1).encode() + b"\0", "33 bytes"),
        (b"\x01" + PartitionCheckpoint(1, 1).encode()[1:], "value version 1"),
        (b"\x02\x01" + PartitionCheckpoint(1, 1).encode()[2:], "reserved"),
        (PartitionCheckpoint(1, 1).encode()[:24] + bytes(8), "first_index 0"),
    ],
)
def test_corrupt_value_is_loud(store: CheckpointStore, value: bytes, what: str) -> None:
    store.write({4: PartitionCheckpoint(4, 4)})
    _raw_put(store, struct.pack(">I", 9), value)
    with pytest.raises(CorruptionError, match=what) as info:
        store.read(9)
    assert info.value.path == store.path
    assert "partition 9" in info.value.what
    with pytest.raises(CorruptionError, match=what):
        store.read_all()
    assert store.read(4) == PartitionCheckpoint(4, 4)  # the others still read


def test_corrupt_key_is_loud(store: CheckpointStore) -> None:
    _raw_put(store, b"\0\0\0\0\1", PartitionCheckpoint(1, 1).encode())
    with pytest.raises(CorruptionError, match="not 4 bytes"):
        store.read_all()


def test_use_after_close(path: Path) -> None:
    s = CheckpointStore.open(path, store_id=STORE_ID)
    s.close()
    s.close()  # idempotent
    assert s.closed
    for call in (
        lambda: s.read(1),
        s.read_all,
        lambda: s.write({1: PartitionCheckpoint(1, 1)}),
        lambda: s.delete([1]),
    ):
        with pytest.raises(ClosedError):
            call()


def test_full_map_is_a_clear_error_and_changes_nothing(path: Path) -> None:
    with CheckpointStore.open(path, store_id=STORE_ID, map_size=1 << 16) as s:
        s.write({0: PartitionCheckpoint(1, 1)})
        with pytest.raises(StorageIOError, match="full") as info:
            s.write({pid: PartitionCheckpoint(pid, pid) for pid in range(10_000)})
        assert info.value.errno == errno.ENOSPC
        assert s.read_all() == {0: PartitionCheckpoint(1, 1)}
        s.write({1: PartitionCheckpoint(2, 2)})  # the store keeps working
        assert s.read(1) == PartitionCheckpoint(2, 2)


_checkpoints = st.builds(
    PartitionCheckpoint,
    st.integers(0, U64_MAX),
    st.integers(0, U64_MAX),
    st.integers(1, U64_MAX),
)
_maps = st.dictionaries(st.integers(0, 2**32 - 1), _checkpoints, max_size=40)


@settings(max_examples=40, deadline=None)
@given(batches=st.lists(st.tuples(_maps, st.sets(st.integers(0, 2**32 - 1))), max_size=5))
def test_random_checkpoint_maps_round_trip(
    batches: list[tuple[dict[int, PartitionCheckpoint], set[int]]],
) -> None:
    model: dict[int, PartitionCheckpoint] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / CHECKPOINTS_NAME
        with CheckpointStore.open(path, store_id=STORE_ID) as s:
            for updates, deletions in batches:
                s.write(updates)
                model.update(updates)
                doomed = deletions | set(list(model)[:1])
                s.delete(doomed)
                for pid in doomed:
                    model.pop(pid, None)
                assert s.read_all() == dict(sorted(model.items()))
        with CheckpointStore.open(path, store_id=STORE_ID) as s:
            assert s.read_all() == dict(sorted(model.items()))
            for pid, checkpoint in model.items():
                assert s.read(pid) == checkpoint

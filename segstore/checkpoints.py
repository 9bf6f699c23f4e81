"""Durable per-partition progress, kept in LMDB (``<store>/checkpoints.lmdb``).

The partition logs never fsync per append; what the partition layer has made durable is
recorded here, and an LMDB commit (``sync=True``, ``metasync=True``) is the only fsync
the partition layer relies on. Every :meth:`CheckpointStore.write` is one write
transaction, so one commit (two fsyncs inside LMDB) covers any number of partitions.

The environment is opened without ``writemap``: LMDB then writes pages with ``pwrite``,
so a full disk is an error from the commit rather than a SIGBUS through a mapping.

On-disk layout (the LMDB environment directory holds ``data.mdb`` and ``lock.mdb``):

Named database ``meta`` (store metadata):

========================  =======================================================
key (ASCII bytes)         value
========================  =======================================================
``store_id``              the owning store's id, raw bytes (1 to 255 bytes)
``format_version``        u32 little-endian, currently 2
``routed_raft_index``     u64 little-endian: every log record up to this raft index
                          was routed to its partition log and checkpointed
                          (absent: 0)
``applied_raft_floor``    u64 little-endian: every committed log entry up to this
                          raft index is applied and covered by the ``applied``
                          checkpoints (the state machine's durable
                          ``last_commit_index``; absent: 0)
``raft_snapshot``         the latest Raft snapshot, opaque bytes written by
                          :mod:`segstore.raft.segmented_state_machine` (absent: none)
``restart_pending``       u64 little-endian: L + 1 of a snapshot install at raft
                          index L that wrote the partitions' new checkpoints but
                          has not yet restarted every partition log and dropped
                          the log through L (absent: none)
========================  =======================================================

Named database ``partitions`` (one entry per partition):

* key: the partition id as a big-endian u32 (4 bytes), so cursor order is id order;
* value: 32 bytes, little-endian, struct ``<B7xQQQ``:

======  =====  ======================  ==============================================
offset  size   field                   meaning
======  =====  ======================  ==============================================
0       1      ``version``             value layout version, currently 2
1       7      reserved                zero
8       8      ``durable_index``       u64: highest partition index durable in the
                                       partition's Aof (0: none)
16      8      ``durable_raft_index``  u64: raft index of that record (0: none)
24      8      ``first_index``         u64: the partition log's first retained
                                       index (>= 1)
======  =====  ======================  ==============================================

Named database ``applied`` (one entry per partition whose state machine applied
something; written only by the state-machine layer, never by the router, so the two
writers never overwrite each other's fields):

* key: the partition id as a big-endian u32;
* value: a 24-byte head, struct ``<B7xQQ``, then the snapshot bytes:

======  =====  ======================  ==============================================
offset  size   field                   meaning
======  =====  ======================  ==============================================
0       1      ``version``             value layout version, currently 1
1       7      reserved                zero
8       8      ``applied_index``       u64: the last partition index the snapshot
                                       includes (0: none)
16      8      ``applied_raft_index``  u64: raft index of that entry (0: none)
24      rest   ``snapshot``            the partition state machine's ``snapshot()``
======  =====  ======================  ==============================================

A value of another size, another version or with non-zero reserved bytes is
reported as :class:`~segstore.errors.CorruptionError`.
"""

from __future__ import annotations

import errno
import operator
import os
import struct
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import lmdb

from segstore.errors import (
    ClosedError,
    CorruptionError,
    FailedStateError,
    FormatVersionError,
    InvalidArgumentError,
    NotAStoreError,
    StorageIOError,
    StoreLockedError,
)

CHECKPOINTS_NAME = "checkpoints.lmdb"
"""Name of the checkpoint environment directory inside a store directory."""

FORMAT_VERSION = 2
"""Version of the environment as a whole (the ``format_version`` meta entry)."""

VALUE_VERSION = 2
"""Version byte of every ``partitions`` value."""

APPLIED_VERSION = 1
"""Version byte of every ``applied`` value."""

MAP_SIZE_DEFAULT = 1 << 30
"""LMDB map size: 1 GiB holds tens of millions of 40-byte entries; the file stays sparse."""

STORE_ID_MAX_BYTES = 255
U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1

_VALUE = struct.Struct("<B7xQQQ")
_APPLIED_HEAD = struct.Struct("<B7xQQ")
_KEY = struct.Struct(">I")
_VERSION = struct.Struct("<I")
_META_DB = b"meta"
_PARTITIONS_DB = b"partitions"
_APPLIED_DB = b"applied"
_STORE_ID_KEY = b"store_id"
_FORMAT_VERSION_KEY = b"format_version"
_ROUTED_KEY = b"routed_raft_index"
_FLOOR_KEY = b"applied_raft_floor"
_RESTART_KEY = b"restart_pending"
_RAFT_SNAPSHOT_KEY = b"raft_snapshot"
_U64 = struct.Struct("<Q")
_RESERVED_OFFSET = 1
_RESERVED_BYTES = 7


def _as_uint(value: object, what: str, maximum: int) -> int:
    """``value`` as an int in ``[0, maximum]``; bools and non-integers are refused."""
    if isinstance(value, bool):
        raise InvalidArgumentError(f"{what} must be an integer, not a bool")
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise InvalidArgumentError(
            f"{what} must be an integer, not {type(value).__name__}"
        ) from None
    if not 0 <= number <= maximum:
        raise InvalidArgumentError(f"{what} must be in [0, {maximum}], not {number}")
    return int(number)


def check_partition_id(partition_id: object) -> int:
    """``partition_id`` as an int if it is a u32; else :class:`InvalidArgumentError`."""
    return _as_uint(partition_id, "partition id", U32_MAX)


@dataclass(frozen=True)
class PartitionCheckpoint:
    """The durable progress of one partition.

    ``durable_index``: highest partition log index durable in the partition's Aof (0 if
    none); ``durable_raft_index``: raft index of that record (0 if none);
    ``first_index``: the partition log's first retained index.
    """

    durable_index: int
    durable_raft_index: int
    first_index: int = 1

    def __post_init__(self) -> None:
        # Validate at construction so a bad checkpoint can never reach a transaction.
        for name in ("durable_index", "durable_raft_index", "first_index"):
            object.__setattr__(self, name, _as_uint(getattr(self, name), name, U64_MAX))
        if self.first_index < 1:
            raise InvalidArgumentError("first_index must be at least 1 (indices start at 1)")

    def encode(self) -> bytes:
        """The 32-byte value stored in LMDB (layout in the module docstring)."""
        return _VALUE.pack(
            VALUE_VERSION, self.durable_index, self.durable_raft_index, self.first_index
        )

    @classmethod
    def decode(cls, data: bytes, path: str, partition_id: int) -> PartitionCheckpoint:
        """Parse a stored value; :class:`CorruptionError` if it is not one we wrote."""
        where = f"checkpoint of partition {partition_id}"
        if len(data) != _VALUE.size:
            raise CorruptionError(path, 0, f"{where} has {len(data)} bytes, expected {_VALUE.size}")
        if data[0] != VALUE_VERSION:
            raise CorruptionError(
                path, 0, f"{where} has value version {data[0]}, expected {VALUE_VERSION}"
            )
        if any(data[_RESERVED_OFFSET : _RESERVED_OFFSET + _RESERVED_BYTES]):
            raise CorruptionError(path, 0, f"{where} has non-zero reserved bytes")
        _, durable, durable_raft, first = _VALUE.unpack(data)
        if first < 1:
            raise CorruptionError(path, 0, f"{where} has first_index 0")
        return cls(durable, durable_raft, first)


@dataclass(frozen=True)
class AppliedCheckpoint:
    """What a partition's state machine applied, with the snapshot of its state then.

    ``applied_index``: the last partition index the snapshot includes (0 if none);
    ``applied_raft_index``: the raft index of that entry; ``snapshot``: the bytes of
    the partition state machine's ``snapshot()``.
    """

    applied_index: int
    applied_raft_index: int
    snapshot: bytes = b""

    def __post_init__(self) -> None:
        for name in ("applied_index", "applied_raft_index"):
            object.__setattr__(self, name, _as_uint(getattr(self, name), name, U64_MAX))
        if not isinstance(self.snapshot, bytes):
            raise InvalidArgumentError(
                f"snapshot must be bytes, not {type(self.snapshot).__name__}"
            )

    def encode(self) -> bytes:
        """The stored value: 24-byte head, then the snapshot (module docstring)."""
        head = _APPLIED_HEAD.pack(APPLIED_VERSION, self.applied_index, self.applied_raft_index)
        return head + self.snapshot

    @classmethod
    def decode(cls, data: bytes, path: str, partition_id: int) -> AppliedCheckpoint:
        """Parse a stored value; :class:`CorruptionError` if it is not one we wrote."""
        where = f"applied checkpoint of partition {partition_id}"
        if len(data) < _APPLIED_HEAD.size:
            raise CorruptionError(
                path, 0, f"{where} has {len(data)} bytes, fewer than {_APPLIED_HEAD.size}"
            )
        if data[0] != APPLIED_VERSION:
            raise CorruptionError(
                path, 0, f"{where} has value version {data[0]}, expected {APPLIED_VERSION}"
            )
        if any(data[_RESERVED_OFFSET : _RESERVED_OFFSET + _RESERVED_BYTES]):
            raise CorruptionError(path, 0, f"{where} has non-zero reserved bytes")
        _, applied, applied_raft = _APPLIED_HEAD.unpack_from(data)
        return cls(applied, applied_raft, bytes(data[_APPLIED_HEAD.size :]))


@dataclass(frozen=True)
class AppliedUpdate:
    """What the state-machine layer writes: applied checkpoints, the applied floor
    (``applied_raft_floor``) and optionally a Raft snapshot blob."""

    checkpoints: Mapping[int, AppliedCheckpoint]
    applied_raft_floor: int
    raft_snapshot: bytes | None = None

    def items(self) -> tuple[list[tuple[bytes, bytes]], bytes]:
        """Encoded ``(key, value)`` pairs, sorted, and the encoded floor; raises
        :class:`InvalidArgumentError` before anything is written."""
        floor = _U64.pack(_as_uint(self.applied_raft_floor, "applied_raft_floor", U64_MAX))
        if self.raft_snapshot is not None and not isinstance(self.raft_snapshot, bytes):
            raise InvalidArgumentError("raft_snapshot must be bytes or None")
        items = _encode_by_partition(self.checkpoints, AppliedCheckpoint, "applied checkpoints")
        items.sort()
        return items, floor


def _encode_by_partition(
    checkpoints: object, kind: type[AppliedCheckpoint] | type[PartitionCheckpoint], what: str
) -> list[tuple[bytes, bytes]]:
    """``(key, value)`` pairs of a mapping of partition id to ``kind``; raises
    :class:`InvalidArgumentError` for anything else (callers encode before writing)."""
    if not isinstance(checkpoints, Mapping):
        raise InvalidArgumentError(
            f"{what} must be a mapping of partition id to {kind.__name__}, "
            f"not {type(checkpoints).__name__}"
        )
    items: list[tuple[bytes, bytes]] = []
    for pid, checkpoint in checkpoints.items():
        key = _KEY.pack(check_partition_id(pid))
        if not isinstance(checkpoint, kind):
            raise InvalidArgumentError(
                f"{what} of partition {pid} must be a {kind.__name__}, "
                f"not {type(checkpoint).__name__}"
            )
        items.append((key, checkpoint.encode()))
    return items


class CheckpointStore:
    """Per-partition checkpoints in one LMDB environment, refusing a foreign store's.

    Open with :meth:`CheckpointStore.open`. Thread-safe: LMDB serialises write
    transactions and reads use their own read-only transactions.
    """

    def __init__(self, *_args: object, **_kwargs: object) -> None:
        raise TypeError("use CheckpointStore.open(path, store_id=...) to open a CheckpointStore")

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        store_id: bytes,
        create: bool = True,
        map_size: int = MAP_SIZE_DEFAULT,
    ) -> CheckpointStore:
        """Open (or create) the checkpoint environment directory ``path``.

        ``path`` is the environment directory itself, normally
        ``<store>/checkpoints.lmdb`` (:data:`CHECKPOINTS_NAME`). ``store_id`` is
        recorded at creation; opening with another id raises
        :class:`NotAStoreError`. ``map_size`` bounds the database size; a write that
        would exceed it raises :class:`StorageIOError` (ENOSPC) and changes nothing.
        """
        self = object.__new__(cls)
        self._init(os.fspath(path), store_id, create, map_size)
        return self

    def _init(self, path: str, store_id: bytes, create: bool, map_size: int) -> None:
        self._closed = True
        self.path = path
        if not isinstance(store_id, bytes) or not 1 <= len(store_id) <= STORE_ID_MAX_BYTES:
            raise InvalidArgumentError(
                f"store_id must be 1 to {STORE_ID_MAX_BYTES} bytes, not {store_id!r}"
            )
        map_size = _as_uint(map_size, "map_size", U64_MAX)
        if map_size < 1 << 16:
            raise InvalidArgumentError(f"map_size must be at least 64 KiB, not {map_size}")
        self._check_directory(create)
        try:
            env = lmdb.open(
                path,
                map_size=map_size,
                max_dbs=3,
                subdir=True,
                create=create,
                sync=True,
                metasync=True,
                writemap=False,
                readahead=False,
                max_spare_txns=4,
            )
        except lmdb.Error as exc:
            if "already open in this process" in str(exc):
                raise StoreLockedError(path) from exc
            raise NotAStoreError(f"{path} is not a checkpoint store: {exc}") from exc
        self._env: Any = env
        self._lock = threading.Lock()
        self._failure: StorageIOError | None = None
        self.map_size = map_size
        try:
            self._meta = env.open_db(_META_DB, create=True)
            self._partitions = env.open_db(_PARTITIONS_DB, create=True)
            self._applied = env.open_db(_APPLIED_DB, create=True)
            self._check_or_record_identity(store_id, create)
        except BaseException:
            env.close()
            raise
        self.store_id = store_id
        self._closed = False

    def _check_directory(self, create: bool) -> None:
        path = self.path
        if not os.path.exists(path):
            if not create:
                raise NotAStoreError(f"{path} does not exist (open with create=True)")
            return
        if not os.path.isdir(path):
            raise NotAStoreError(f"{path} is not a directory")
        names = set(os.listdir(path))
        if "data.mdb" not in names and names - {"lock.mdb"}:
            # Refuse to sprinkle an LMDB environment into someone else's directory.
            raise NotAStoreError(f"{path} is not a checkpoint store: it has files but no data.mdb")

    def _check_or_record_identity(self, store_id: bytes, create: bool) -> None:
        name = os.path.basename(os.path.normpath(self.path))
        with self._env.begin(write=True) as txn:
            stored_id = txn.get(_STORE_ID_KEY, db=self._meta)
            if stored_id is None:
                if not create or txn.stat(self._partitions)["entries"]:
                    raise NotAStoreError(
                        f"{self.path} has no store id; it is not a checkpoint store"
                    )
                txn.put(_STORE_ID_KEY, store_id, db=self._meta)
                txn.put(_FORMAT_VERSION_KEY, _VERSION.pack(FORMAT_VERSION), db=self._meta)
                return
            stored_id = bytes(stored_id)
            if stored_id != store_id:
                raise NotAStoreError(
                    f"{name} belongs to store {stored_id.hex()}, not {store_id.hex()}"
                )
            raw_version = txn.get(_FORMAT_VERSION_KEY, db=self._meta)
            if raw_version is None or len(raw_version) != _VERSION.size:
                raise CorruptionError(self.path, 0, "format_version entry is missing or malformed")
            (version,) = _VERSION.unpack(raw_version)
            if version != FORMAT_VERSION:
                raise FormatVersionError(
                    f"{self.path} has checkpoint format version {version}; "
                    f"this build reads version {FORMAT_VERSION}"
                )

    # -- lifecycle -----------------------------------------------------------------

    def close(self) -> None:
        """Close the environment. Idempotent; every committed write is already durable."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._env.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def __enter__(self) -> CheckpointStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<CheckpointStore {self.path!r} {state}>"

    # -- reading -------------------------------------------------------------------

    def read(self, partition_id: int) -> PartitionCheckpoint | None:
        """The checkpoint of ``partition_id``, or None if it has none."""
        pid = check_partition_id(partition_id)
        with self._lock:
            self._check_open()
            with self._env.begin(db=self._partitions) as txn:
                raw = txn.get(_KEY.pack(pid))
                return None if raw is None else PartitionCheckpoint.decode(raw, self.path, pid)

    def read_all(self) -> dict[int, PartitionCheckpoint]:
        """Every partition's checkpoint, in partition id order."""
        with self._lock:
            self._check_open()
            out: dict[int, PartitionCheckpoint] = {}
            with self._env.begin(db=self._partitions) as txn:
                for key, raw in txn.cursor():
                    if len(key) != _KEY.size:
                        raise CorruptionError(
                            self.path, 0, f"partition key {bytes(key).hex()} is not 4 bytes"
                        )
                    (pid,) = _KEY.unpack(key)
                    out[pid] = PartitionCheckpoint.decode(raw, self.path, pid)
            return out

    def routed_raft_index(self) -> int:
        """The raft index up to which every log record was routed and checkpointed."""
        return self._read_meta_u64(_ROUTED_KEY)

    def restart_pending(self) -> int:
        """L + 1 of an unfinished snapshot install at raft index L (0: none)."""
        return self._read_meta_u64(_RESTART_KEY)

    def applied_raft_floor(self) -> int:
        """Every committed entry up to this raft index is applied and checkpointed."""
        return self._read_meta_u64(_FLOOR_KEY)

    def _read_meta_u64(self, key: bytes) -> int:
        raw = self._read_meta(key)
        if raw is None:
            return 0
        if len(raw) != _U64.size:
            raise CorruptionError(self.path, 0, f"{key.decode()} entry is not 8 bytes")
        return int(_U64.unpack(raw)[0])

    def _read_meta(self, key: bytes) -> bytes | None:
        with self._lock:
            self._check_open()
            with self._env.begin(db=self._meta) as txn:
                raw = txn.get(key)
        return None if raw is None else bytes(raw)

    def raft_snapshot(self) -> bytes | None:
        """The latest Raft snapshot stored with :meth:`write_applied`, or None."""
        return self._read_meta(_RAFT_SNAPSHOT_KEY)

    def read_applied_all(self) -> dict[int, AppliedCheckpoint]:
        """Every partition's applied checkpoint, in partition id order."""
        with self._lock:
            self._check_open()
            out: dict[int, AppliedCheckpoint] = {}
            with self._env.begin(db=self._applied) as txn:
                for key, raw in txn.cursor():
                    if len(key) != _KEY.size:
                        raise CorruptionError(
                            self.path, 0, f"applied key {bytes(key).hex()} is not 4 bytes"
                        )
                    (pid,) = _KEY.unpack(key)
                    out[pid] = AppliedCheckpoint.decode(bytes(raw), self.path, pid)
            return out

    # -- writing -------------------------------------------------------------------

    def write(
        self,
        updates: Mapping[int, PartitionCheckpoint],
        *,
        routed_raft_index: int | None = None,
        restart_pending: int | None = None,
        applied: AppliedUpdate | None = None,
    ) -> None:
        """Store every checkpoint in ``updates`` in one durable write transaction.

        ``routed_raft_index``, ``restart_pending`` (0 clears it) and ``applied`` (the
        state-machine layer's part, as :meth:`write_applied`), when given, are stored
        in the same transaction. Either all of it is durable when this returns or, on
        an error, none is.
        """
        applied_items = None if applied is None else applied.items()
        routed = (
            None
            if routed_raft_index is None
            else _U64.pack(_as_uint(routed_raft_index, "routed_raft_index", 2**64 - 1))
        )
        restart = (
            None
            if restart_pending is None
            else _as_uint(restart_pending, "restart_pending", 2**64 - 1)
        )
        # Encode everything before the transaction: bad input must change nothing.
        items = _encode_by_partition(updates, PartitionCheckpoint, "updates")
        if not items and routed is None and restart is None and applied is None:
            return
        items.sort()  # sequential keys keep LMDB page splits cheap

        def apply(txn: Any) -> None:
            if items:
                txn.cursor(db=self._partitions).putmulti(items)
            if routed is not None:
                txn.put(_ROUTED_KEY, routed, db=self._meta)
            if restart:
                txn.put(_RESTART_KEY, _U64.pack(restart), db=self._meta)
            elif restart == 0:
                txn.delete(_RESTART_KEY, db=self._meta)
            if applied is not None and applied_items is not None:
                applied_rows, floor = applied_items
                if applied_rows:
                    txn.cursor(db=self._applied).putmulti(applied_rows)
                txn.put(_FLOOR_KEY, floor, db=self._meta)
                if applied.raft_snapshot is not None:
                    txn.put(_RAFT_SNAPSHOT_KEY, applied.raft_snapshot, db=self._meta)

        self._write_txn(apply)

    def write_applied(
        self,
        updates: Mapping[int, AppliedCheckpoint],
        *,
        applied_raft_floor: int,
        raft_snapshot: bytes | None = None,
    ) -> None:
        """Store applied checkpoints, the applied floor and optionally a Raft snapshot,
        all in one durable write transaction (all or nothing)."""
        self.write({}, applied=AppliedUpdate(updates, applied_raft_floor, raft_snapshot))

    def delete(self, partition_ids: Iterable[int]) -> None:
        """Remove the checkpoints of ``partition_ids`` (absent ones are ignored)."""
        if isinstance(partition_ids, (str, bytes)):
            raise InvalidArgumentError("partition_ids must be an iterable of integers")
        try:
            keys = sorted(_KEY.pack(check_partition_id(pid)) for pid in partition_ids)
        except TypeError:
            raise InvalidArgumentError("partition_ids must be an iterable of integers") from None
        if not keys:
            return

        def apply(txn: Any) -> None:
            for key in keys:
                txn.delete(key, db=self._partitions)

        self._write_txn(apply)

    def _write_txn(self, apply: Any) -> None:
        """Run ``apply(txn)`` in one write transaction and commit it durably.

        A full map aborts before anything is written, so the store keeps working. Any
        other LMDB error during a write may have come from a failed fsync, after which
        nothing about the file can be trusted (fsyncgate): the store fails stop.
        """
        with self._lock:
            self._check_open()
            if self._failure is not None:
                raise FailedStateError(
                    self._failure.errno,
                    f"checkpoint store failed stop after an I/O error ({self._failure}); "
                    "reopen it to recover",
                    self.path,
                ) from self._failure
            try:
                with self._env.begin(write=True) as txn:
                    apply(txn)
            except lmdb.MapFullError as exc:
                raise StorageIOError(
                    errno.ENOSPC,
                    f"checkpoint store is full (map_size {self.map_size} bytes); "
                    "nothing was written; reopen with a larger map_size",
                    self.path,
                ) from exc
            except lmdb.Error as exc:
                self._failure = StorageIOError(errno.EIO, f"LMDB write failed: {exc}", self.path)
                raise self._failure from exc

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"CheckpointStore {self.path} is closed")


__all__ = [
    "APPLIED_VERSION",
    "CHECKPOINTS_NAME",
    "FORMAT_VERSION",
    "MAP_SIZE_DEFAULT",
    "VALUE_VERSION",
    "AppliedCheckpoint",
    "AppliedUpdate",
    "CheckpointStore",
    "PartitionCheckpoint",
    "check_partition_id",
]

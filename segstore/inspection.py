"""Offline inspection: what ``segstore dump``, ``verify`` and ``stats`` print.

``PATH`` is either a single Aof directory (it has ``aof.meta``) or a segmented log store
directory (it has ``log/`` and ``checkpoints.lmdb/``, see
:mod:`segstore.raft.segmented_store`).

Every Aof is opened readonly (taking its lock, so nothing writes meanwhile) and no
byte of it is changed. A store is never opened as a ``SegmentedLogStore``: that would
route and checkpoint. Its log and partition logs are opened as readonly Aofs, one
partition at a time; the checkpoints through :class:`CheckpointStore`, which on an
existing environment only reads (its identity check runs in a write transaction that
writes nothing; LMDB itself updates its reader table in ``lock.mdb``).

Corruption is reported with file and offset. For a store, verify collects every problem
(CRC failures, partition logs that disagree with the log, checkpoints that claim more
than the partition logs hold) instead of stopping at the first one.

``stats`` (a store only) reads the log's header columns and payload sizes (numpy, no
per-record Python) and the checkpoints, never a payload or a partition log, and shows
which partition holds the truncation watermark back (DESIGN.md invariant 6). Quorum is
in memory only (:mod:`segstore.quorum`), so stats cannot show it offline.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from segstore.aof import Aof
from segstore.aof.format import META_NAME
from segstore.checkpoints import (
    CHECKPOINTS_NAME,
    AppliedCheckpoint,
    CheckpointStore,
    PartitionCheckpoint,
)
from segstore.errors import (
    CorruptionError,
    FormatVersionError,
    InvalidArgumentError,
    NotAStoreError,
    PartitionError,
)
from segstore.partitions import _USER_KIND as _PARTITION_KIND
from segstore.partitions import PARTITIONS_DIR, RAFT_HEADER_DTYPE, _parse_partition_name
from segstore.raft.log_entry import LogValType
from segstore.raft.partition_entry import (
    LOG_HEADER_DTYPE,
    NO_PARTITION,
    PARTITION_HEADER_BYTES,
    decode_partition,
)
from segstore.raft.segmented_store import LOG_DIR, STORE_KIND

_MIB = 1 << 20
_CHUNK = 1 << 16  # log records whose header columns are read at a time
_SHOWN = 3  # mismatches listed one by one per partition and kind, then a count
_APP_LOG = int(LogValType.app_log)
_TYPE_NAMES = {int(t): t.name for t in LogValType}


def _progress(total: int, label: str, unit: str = "rec") -> tqdm:
    # disable=None: a bar on a terminal, nothing in pipes and CI logs.
    return tqdm(total=total, desc=label, unit=unit, unit_scale=True, disable=None, leave=False)


# -- what PATH is ----------------------------------------------------------------------


def path_kind(path: str | os.PathLike[str]) -> str:
    """``"aof"`` or ``"store"``; :class:`NotAStoreError` if ``path`` is neither."""
    path = os.fspath(path)
    if os.path.isfile(os.path.join(path, META_NAME)):
        return "aof"
    if os.path.isdir(os.path.join(path, LOG_DIR)) and os.path.isdir(
        os.path.join(path, CHECKPOINTS_NAME)
    ):
        return "store"
    if not os.path.exists(path):
        raise NotAStoreError(f"{path} does not exist")
    raise NotAStoreError(
        f"{path} is neither an Aof (no {META_NAME}) nor a segmented log store "
        f"(no {LOG_DIR}/ and {CHECKPOINTS_NAME}/)"
    )


def dump(
    path: str | os.PathLike[str],
    out: TextIO,
    *,
    records: bool = False,
    start: int | None = None,
    limit: int | None = None,
    partition: int | None = None,
) -> int:
    """``segstore dump PATH``: an Aof or a whole store, by what ``path`` is."""
    if path_kind(path) == "store":
        return dump_store(path, out, records=records, start=start, limit=limit, partition=partition)
    if partition is not None:
        raise InvalidArgumentError(f"--partition needs a store directory; {path} is an Aof")
    return dump_aof(path, out, records=records, start=start, limit=limit)


def verify(path: str | os.PathLike[str], out: TextIO) -> int:
    """``segstore verify PATH``: an Aof or a whole store, by what ``path`` is."""
    if path_kind(path) == "store":
        return verify_store(path, out)
    return verify_aof(path, out)


# -- one Aof ---------------------------------------------------------------------------


def dump_aof(
    path: str | os.PathLike[str],
    out: TextIO,
    *,
    records: bool = False,
    start: int | None = None,
    limit: int | None = None,
) -> int:
    """Print segments, index ranges and sizes, check every CRC; return an exit status.

    With ``records``, print each record's index, offset, payload size and header.
    """
    with Aof.open(path, readonly=True) as aof:
        _print_aof_summary(aof, out, "aof")
        if records:
            _print_records(aof, out, start, limit)
        return _verify_into(aof, out)


def verify_aof(path: str | os.PathLike[str], out: TextIO) -> int:
    """Open (running recovery's checks) and verify every record.

    Returns 0 when all is well; raises :class:`CorruptionError` naming file and offset.
    """
    with Aof.open(path, readonly=True) as aof:
        return _verify_into(aof, out)


def _print_aof_summary(aof: Aof, out: TextIO, title: str) -> None:
    dtype = aof.header_dtype
    print(f"{title} {aof.path}", file=out)
    print(f"  store id      {aof.store_id.hex()}", file=out)
    print(f"  header dtype  {dtype.descr if dtype is not None else None}", file=out)
    print(
        f"  records       [{aof.first_index}, {aof.last_index}]  ({len(aof)} records)",
        file=out,
    )
    report = aof.recovery
    cut = (
        f", tail cut at record {report.torn_cut_at_index} "
        f"({report.torn_cut_path}:{report.torn_cut_offset})"
        if report.torn_cut_at_index is not None
        else ""
    )
    print(
        f"  open          {aof.recovery_seconds * 1000:.1f} ms: "
        f"{report.sidecars_loaded} sidecars loaded, "
        f"{report.segments_scanned} segments scanned{cut}",
        file=out,
    )
    infos = aof.segment_infos()
    print(f"  segments      {len(infos)}", file=out)
    for info in infos:
        state = "sealed" if info.sealed else "active"
        sidecar = "sidecar" if info.has_sidecar else "no sidecar"
        print(
            f"    {os.path.basename(info.path)}  [{info.first_index}, {info.last_index}]"
            f"  {info.records} records  {info.bytes_used / _MIB:.1f}"
            f"/{info.capacity_bytes / _MIB:.1f} MiB  {state}, {sidecar}",
            file=out,
        )


def _verify_into(aof: Aof, out: TextIO) -> int:
    with _progress(len(aof), "verify") as bar:
        checked = aof.verify(bar.update)
    print(f"  verified      {checked} records: every CRC32C, index and length OK", file=out)
    return 0


def _record_range(aof: Aof, start: int | None, limit: int | None) -> range:
    first = aof.first_index if start is None else max(start, aof.first_index)
    end = aof.last_index + 1 if limit is None else min(aof.last_index + 1, first + limit)
    return range(first, max(first, end))


def _print_records(aof: Aof, out: TextIO, start: int | None, limit: int | None) -> None:
    span = _record_range(aof, start, limit)
    if not span:
        return
    lengths = aof.payload_lengths(span.start, span.stop)
    headers = aof.headers(span.start, span.stop) if aof.header_dtype is not None else None
    names = headers.dtype.names or () if headers is not None else ()
    print(f"  {'index':>12} {'bytes':>8}  " + " ".join(f"{n:>12}" for n in names), file=out)
    for row, index in enumerate(span):
        fields = " ".join(f"{headers[row][n]!s:>12}" for n in names) if headers is not None else ""
        print(f"  {index:>12} {int(lengths[row]):>8}  {fields}", file=out)


# -- a whole store: opening ------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One thing verify found wrong: where (file, partition, index) and what."""

    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


@dataclass
class _Report:
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def problem(self, where: str, what: str) -> None:
        self.problems.append(Problem(where, what))

    def corruption(self, exc: CorruptionError, what: str = "") -> None:
        self.problem(f"{exc.path} at offset {exc.offset}", what + exc.what)

    def mismatches(self, where: str, what: str, details: list[str]) -> None:
        """One problem for a list of offending records: the first few, then a count."""
        shown = "; ".join(details[:_SHOWN])
        more = f"; and {len(details) - _SHOWN} more" if len(details) > _SHOWN else ""
        self.problem(where, f"{what}: {shown}{more}")


@dataclass
class _Store:
    """A store opened for reading: the log, its header columns, the checkpoints."""

    path: str
    log: Aof
    partition_count: int
    start_index: int
    checkpoints_path: str
    partitions_dir: str
    checkpoint_of: dict[int, PartitionCheckpoint]
    applied_of: dict[int, AppliedCheckpoint]
    routed_raft_index: int | None  # None: the checkpoints could not be read
    applied_raft_floor: int | None  # None: the checkpoints could not be read
    checkpoint_error: str | None
    pid: npt.NDArray[np.uint32]  # log header columns, row 0 is log.first_index
    pindex: npt.NDArray[np.uint64]
    val_type: npt.NDArray[np.uint8]
    groups: dict[int, npt.NDArray[np.intp]]  # rows of each partition id, raft order

    def partition_path(self, pid: int) -> str:
        return os.path.join(self.partitions_dir, str(pid))

    def log_rows(self, pid: int) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
        """Raft indices and partition indices of partition ``pid``'s log records."""
        rows = self.groups.get(pid, np.empty(0, np.intp))
        raft = rows.astype(np.uint64) + np.uint64(self.log.first_index)
        return raft, self.pindex[rows]

    def partition_ids(self) -> list[int]:
        """Every partition id the log, the partition logs or the checkpoints name."""
        ids = set(self.groups) | set(self.checkpoint_of)
        ids.update(pid for pid, _ in _partition_dirs(self.partitions_dir)[0])
        return sorted(ids)


@contextmanager
def _open_store(path: str | os.PathLike[str]) -> Iterator[_Store]:
    path = os.fspath(path)
    log_path = os.path.join(path, LOG_DIR)
    # verify_reads=False: verify checks every CRC itself, before anything is read.
    with Aof.open(log_path, create=False, readonly=True, verify_reads=False) as log:
        user = log.user_meta
        if user.get("kind") != STORE_KIND or log.header_dtype != LOG_HEADER_DTYPE:
            raise NotAStoreError(f"{log_path} is an Aof but not a segmented log store's log")
        checkpoints_path = os.path.join(path, CHECKPOINTS_NAME)
        checkpoint_of: dict[int, PartitionCheckpoint] = {}
        applied_of: dict[int, AppliedCheckpoint] = {}
        routed: int | None = None
        floor: int | None = None
        error: str | None = None
        try:
            with CheckpointStore.open(
                checkpoints_path, store_id=log.store_id, create=False
            ) as checkpoints:
                checkpoint_of = checkpoints.read_all()
                applied_of = checkpoints.read_applied_all()
                routed = checkpoints.routed_raft_index()
                floor = checkpoints.applied_raft_floor()
        except CorruptionError as exc:
            error = f"offset {exc.offset}: {exc.what}"
        except (NotAStoreError, FormatVersionError) as exc:
            error = str(exc)
        pid, pindex, val_type = _log_columns(log)
        yield _Store(
            path=path,
            log=log,
            partition_count=int(user["partitions"]),
            start_index=max(int(user.get("start_index", 1)), log.first_index),
            checkpoints_path=checkpoints_path,
            partitions_dir=os.path.join(path, PARTITIONS_DIR),
            checkpoint_of=checkpoint_of,
            applied_of=applied_of,
            routed_raft_index=routed,
            applied_raft_floor=floor,
            checkpoint_error=error,
            pid=pid,
            pindex=pindex,
            val_type=val_type,
            groups=_group_rows(pid),
        )


def _log_columns(
    log: Aof,
) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.uint64], npt.NDArray[np.uint8]]:
    """The partition id, partition index and type columns of every log record."""
    count = len(log)
    pid = np.empty(count, np.uint32)
    pindex = np.empty(count, np.uint64)
    val_type = np.empty(count, np.uint8)
    first = log.first_index
    for start in range(first, first + count, _CHUNK):
        end = min(first + count, start + _CHUNK)
        headers = log.headers(start, end)
        pid[start - first : end - first] = headers["partition_id"]
        pindex[start - first : end - first] = headers["partition_index"]
        val_type[start - first : end - first] = headers["val_type"]
    return pid, pindex, val_type


def _group_rows(pid: npt.NDArray[np.uint32]) -> dict[int, npt.NDArray[np.intp]]:
    """Rows of each partition id (NO_PARTITION left out), each in raft index order."""
    order = np.argsort(pid, kind="stable")
    cuts = np.flatnonzero(np.diff(pid[order])) + 1
    groups: dict[int, npt.NDArray[np.intp]] = {}
    for rows in np.split(order, cuts):
        if len(rows) and int(pid[rows[0]]) != NO_PARTITION:
            groups[int(pid[rows[0]])] = rows
    return groups


def _partition_dirs(directory: str) -> tuple[list[tuple[int, str]], list[str]]:
    """``([(partition id, path)], [foreign entries])`` of a partitions directory."""
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return [], []
    found: list[tuple[int, str]] = []
    foreign: list[str] = []
    for name in names:
        entry = os.path.join(directory, name)
        pid = _parse_partition_name(name)
        if pid is not None and os.path.isdir(entry):
            found.append((pid, entry))
        else:
            foreign.append(entry)
    found.sort()
    return found, foreign


@contextmanager
def _open_partition(path: str, pid: int) -> Iterator[Aof]:
    with Aof.open(path, create=False, readonly=True, verify_reads=False) as aof:
        user = aof.user_meta
        if (
            user.get("kind") != _PARTITION_KIND
            or user.get("partition_id") != pid
            or aof.header_dtype != RAFT_HEADER_DTYPE
        ):
            raise NotAStoreError(
                f"{path} is not the log of partition {pid} (metadata {user}, "
                f"header dtype {aof.header_dtype})"
            )
        yield aof


def _raft_column(plog: Aof) -> npt.NDArray[np.uint64]:
    if not len(plog):
        return np.empty(0, np.uint64)
    headers = plog.headers(plog.first_index, plog.last_index + 1)
    return np.ascontiguousarray(headers["raft_index"], np.uint64)


# -- a whole store: dump ---------------------------------------------------------------


def dump_store(
    path: str | os.PathLike[str],
    out: TextIO,
    *,
    records: bool = False,
    start: int | None = None,
    limit: int | None = None,
    partition: int | None = None,
) -> int:
    """Print the log, its partition columns, the partition logs and the checkpoints,
    then run :func:`verify_store`'s checks; return the exit status.

    ``records``: print the log's records with their partition columns (``start`` and
    ``limit`` in raft indices). ``partition``: print that partition log's records
    instead (``start`` and ``limit`` in partition indices).
    """
    with _open_store(path) as store:
        if partition is not None and not 0 <= partition < store.partition_count:
            raise InvalidArgumentError(
                f"--partition {partition}: the store has partitions 0 to "
                f"{store.partition_count - 1}"
            )
        print(f"store {store.path}", file=out)
        print(f"  partitions    {store.partition_count}", file=out)
        print(
            f"  start index   {store.start_index} (log records below it are kept only "
            "until the partitions have them)",
            file=out,
        )
        _print_aof_summary(store.log, out, "log")
        _print_partition_columns(store, out)
        _print_partition_logs(store, out)
        _print_checkpoints(store, out)
        if partition is not None:
            _print_partition_records(store, partition, out, start, limit)
        elif records:
            _print_log_records(store, out, start, limit)
        return _check_store(store, out)


def _print_partition_columns(store: _Store, out: TextIO) -> None:
    pid = store.pid
    routed = pid != NO_PARTITION
    valid = pid[routed & (pid < store.partition_count)]
    counts = np.bincount(valid, minlength=store.partition_count)
    print(
        f"partition columns of the log ({len(pid)} records: {int(routed.sum())} in "
        f"partitions, {len(pid) - int(routed.sum())} in none)",
        file=out,
    )
    if not routed.any():
        return
    print(f"  {'partition':>10} {'entries':>10}  partition indices", file=out)
    for partition in np.flatnonzero(counts).tolist():
        _, indices = store.log_rows(partition)
        print(
            f"  {partition:>10} {int(counts[partition]):>10}  "
            f"[{int(indices[0])}, {int(indices[-1])}]",
            file=out,
        )
    strays = sorted({int(p) for p in pid[routed & (pid >= store.partition_count)]})
    if strays:
        print(f"  partition ids out of range: {strays}", file=out)


def _print_partition_logs(store: _Store, out: TextIO) -> None:
    found, foreign = _partition_dirs(store.partitions_dir)
    print(f"partition logs {store.partitions_dir} ({len(found)})", file=out)
    if found:
        print(
            f"  {'partition':>10}  {'partition indices':<22} {'raft indices':<24}"
            f" {'records':>9} {'bytes':>12} {'segments':>8}",
            file=out,
        )
    for pid, entry in found:
        try:
            with _open_partition(entry, pid) as plog:
                raft = _raft_column(plog)
                span = f"[{plog.first_index}, {plog.last_index}]" if len(plog) else "-"
                rafts = f"[{int(raft[0])}, {int(raft[-1])}]" if len(raft) else "-"
                size = (
                    int(plog.payload_lengths(plog.first_index, plog.last_index + 1).sum())
                    if len(plog)
                    else 0
                )
                cut = plog.recovery.torn_cut_at_index
                torn = f"  (torn tail cut at {cut})" if cut is not None else ""
                print(
                    f"  {pid:>10}  {span:<22} {rafts:<24} {len(plog):>9} {size:>12}"
                    f" {len(plog.segment_infos()):>8}{torn}",
                    file=out,
                )
        except (CorruptionError, NotAStoreError, FormatVersionError) as exc:
            print(f"  {pid:>10}  cannot open: {exc}", file=out)
    for entry in foreign:
        print(f"  not a partition log: {entry}", file=out)


def _print_checkpoints(store: _Store, out: TextIO) -> None:
    print(f"checkpoints {store.checkpoints_path}", file=out)
    if store.checkpoint_error is not None:
        print(f"  cannot read: {store.checkpoint_error}", file=out)
        return
    print(f"  routed raft index  {store.routed_raft_index}", file=out)
    print(f"  applied raft floor {store.applied_raft_floor}", file=out)
    ids = sorted(set(store.checkpoint_of) | set(store.applied_of))
    if not ids:
        return
    print(
        f"  {'partition':>10} {'durable index':>14} {'durable raft':>14} {'first index':>12}"
        f" {'applied index':>14} {'applied raft':>14} {'snapshot bytes':>14}",
        file=out,
    )
    for pid in ids:
        checkpoint = store.checkpoint_of.get(pid)
        applied = store.applied_of.get(pid)
        durable = (
            f"{checkpoint.durable_index:>14} {checkpoint.durable_raft_index:>14}"
            f" {checkpoint.first_index:>12}"
            if checkpoint is not None
            else f"{'-':>14} {'-':>14} {'-':>12}"
        )
        applied_text = (
            f"{applied.applied_index:>14} {applied.applied_raft_index:>14}"
            f" {len(applied.snapshot):>14}"
            if applied is not None
            else f"{'-':>14} {'-':>14} {'-':>14}"
        )
        print(f"  {pid:>10} {durable} {applied_text}", file=out)


def _print_log_records(store: _Store, out: TextIO, start: int | None, limit: int | None) -> None:
    log = store.log
    span = _record_range(log, start, limit)
    if not span:
        print("log records: none in the requested range", file=out)
        return
    print(f"log records [{span.start}, {span.stop - 1}]", file=out)
    headers = log.headers(span.start, span.stop)
    lengths = log.payload_lengths(span.start, span.stop)
    print(
        f"  {'raft index':>12} {'term':>8} {'type':>14} {'partition':>10}"
        f" {'part. index':>12} {'bytes':>8}",
        file=out,
    )
    for row, index in enumerate(span):
        header = headers[row]
        val_type = int(header["val_type"])
        pid = int(header["partition_id"])
        in_partition = pid != NO_PARTITION
        print(
            f"  {index:>12} {int(header['term']):>8}"
            f" {_TYPE_NAMES.get(val_type, str(val_type)):>14}"
            f" {pid if in_partition else '-':>10}"
            f" {int(header['partition_index']) if in_partition else '-':>12}"
            f" {int(lengths[row]):>8}",
            file=out,
        )


def _print_partition_records(
    store: _Store, pid: int, out: TextIO, start: int | None, limit: int | None
) -> None:
    path = store.partition_path(pid)
    if not os.path.isdir(path):
        print(f"partition {pid} records: no partition log ({path})", file=out)
        return
    with _open_partition(path, pid) as plog:
        span = _record_range(plog, start, limit)
        if not span:
            print(f"partition {pid} records: none in the requested range ({path})", file=out)
            return
        print(f"partition {pid} records [{span.start}, {span.stop - 1}] ({path})", file=out)
        raft = plog.headers(span.start, span.stop)["raft_index"]
        lengths = plog.payload_lengths(span.start, span.stop)
        print(f"  {'part. index':>12} {'raft index':>12} {'bytes':>8}", file=out)
        for row, index in enumerate(span):
            print(f"  {index:>12} {int(raft[row]):>12} {int(lengths[row]):>8}", file=out)


# -- a whole store: stats --------------------------------------------------------------

QUORUM_OFFLINE = (
    "not shown: replica acknowledgements live in memory only (AckTracker), so stats "
    "cannot show quorum offline"
)
"""What ``segstore stats`` says about quorum, in text and in ``--json``."""

STATS_FORMAT_VERSION = 1
"""Version of the ``segstore stats --json`` dict; raised when a key changes meaning."""


@dataclass(frozen=True)
class PartitionStats:
    """One partition's progress and what it still needs from the log.

    ``log_records`` and ``log_bytes``: its records in the retained log (payload bytes).
    ``durable_index`` and ``durable_raft_index``: its router checkpoint (0: none);
    ``applied_index``, ``applied_raft_index`` and ``snapshot_bytes``: its applied
    checkpoint (0: none). ``required_raft_index``: the smallest raft index of a retained
    log record of the partition that is above ``durable_raft_index`` or whose partition
    index is above ``applied_index``; None if it needs no retained record.
    """

    partition: int
    log_records: int
    log_bytes: int
    durable_index: int
    durable_raft_index: int
    applied_index: int
    applied_raft_index: int
    snapshot_bytes: int
    required_raft_index: int | None


@dataclass(frozen=True)
class HeldBack:
    """Log records only ``partitions`` keep: raft indices ``[first_raft_index,
    end_raft_index)`` of the retained log, which the watermark would pass if they caught
    up (``end_raft_index`` is the watermark without them)."""

    partitions: tuple[int, ...]
    first_raft_index: int
    end_raft_index: int
    records: int
    bytes: int


@dataclass(frozen=True)
class StoreStats:
    """What ``segstore stats`` shows: the log, the checkpoints, each partition's
    progress and required raft index, and the watermark (DESIGN.md invariant 6).

    ``required_raft_index`` is the global minimum: the minimum of every partition's,
    ``routed_raft_index + 1`` and ``applied_raft_floor + 1``; ``bound_by`` names each term
    equal to it (``"partition 3"``, ``"routed_raft_index"``, ``"applied_raft_floor"``).
    ``held_back`` is None when no partition holds the watermark below the log's end.
    Quorum is not part of it: acknowledgements live in memory only.
    """

    path: str
    partition_count: int
    start_index: int
    log_first_index: int
    log_last_index: int
    log_durable_index: int
    log_segments: int
    log_bytes: int
    log_capacity_bytes: int
    routed_raft_index: int
    applied_raft_floor: int
    checkpoint_error: str | None
    partitions: tuple[PartitionStats, ...]
    required_raft_index: int
    bound_by: tuple[str, ...]
    held_back: HeldBack | None

    @property
    def log_records(self) -> int:
        return self.log_last_index - self.log_first_index + 1

    def as_dict(self) -> dict[str, Any]:
        """The ``--json`` dict: plain ints, strings, lists and None; keys are stable."""
        held = self.held_back
        return {
            "format_version": STATS_FORMAT_VERSION,
            "path": self.path,
            "partition_count": self.partition_count,
            "start_index": self.start_index,
            "log": {
                "first_index": self.log_first_index,
                "last_index": self.log_last_index,
                "records": self.log_records,
                "durable_index": self.log_durable_index,
                "segments": self.log_segments,
                "bytes": self.log_bytes,
                "capacity_bytes": self.log_capacity_bytes,
            },
            "routed_raft_index": self.routed_raft_index,
            "applied_raft_floor": self.applied_raft_floor,
            "checkpoint_error": self.checkpoint_error,
            "partitions": [asdict(p) for p in self.partitions],
            "required_raft_index": self.required_raft_index,
            "bound_by": list(self.bound_by),
            "held_back": None
            if held is None
            else {**asdict(held), "partitions": list(held.partitions)},
            "quorum": None,
            "quorum_note": QUORUM_OFFLINE,
        }


def stats(path: str | os.PathLike[str], out: TextIO, *, as_json: bool = False) -> int:
    """``segstore stats PATH``: print :func:`store_stats` as text or JSON.

    Returns 0, or 1 when the checkpoints could not be read (the figures then assume no
    checkpoints: everything retained counts as required).
    """
    result = store_stats(path)
    if as_json:
        json.dump(result.as_dict(), out, indent=2, sort_keys=True)
        print(file=out)
    else:
        _print_stats(result, out)
    return 0 if result.checkpoint_error is None else 1


def store_stats(path: str | os.PathLike[str]) -> StoreStats:
    """The watermark figures of the store at ``path``, offline and readonly.

    Opens the store like ``dump`` (:func:`_open_store`: readonly Aofs holding their
    locks, so a store in use is refused with :class:`StoreLockedError`); reads only
    the log's header columns and payload sizes, never payloads, and no partition log.
    """
    if path_kind(path) != "store":
        raise NotAStoreError(f"stats needs a segmented log store directory; {path} is an Aof")
    with _open_store(path) as store:
        return _store_stats(store)


def _store_stats(store: _Store) -> StoreStats:
    log = store.log
    first, last = log.first_index, log.last_index
    lengths = (
        log.payload_lengths(first, last + 1).astype(np.int64) if len(log) else np.empty(0, np.int64)
    )
    routed = store.routed_raft_index or 0
    floor = store.applied_raft_floor or 0
    ids_list = sorted(
        set(range(store.partition_count)) | set(store.partition_ids()) | set(store.applied_of)
    )
    ids = np.array(ids_list, np.uint32)
    durable_raft = np.array(
        [_durable_raft(store.checkpoint_of.get(pid)) for pid in ids_list], np.uint64
    )
    applied_index = np.array(
        [_applied_index(store.applied_of.get(pid)) for pid in ids_list], np.uint64
    )
    # Every retained record of a partition, as a position in ids; rows are raft order.
    rows = np.flatnonzero(store.pid != NO_PARTITION)
    position = np.searchsorted(ids, store.pid[rows])
    raft = rows.astype(np.uint64) + np.uint64(first)
    counts = np.bincount(position, minlength=len(ids))
    # float64 sums of integers are exact below 2**53 bytes.
    sizes = np.bincount(position, weights=lengths[rows], minlength=len(ids)).astype(np.int64)
    needed = (raft > durable_raft[position]) | (store.pindex[rows] > applied_index[position])
    # The first needed row of each partition holds its smallest needed raft index.
    holding, first_row = np.unique(position[needed], return_index=True)
    required: list[int | None] = [None] * len(ids)
    for k, raft_index in zip(holding.tolist(), raft[needed][first_row].tolist(), strict=True):
        required[k] = int(raft_index)

    partitions = tuple(
        _partition_stats(store, pid, int(counts[k]), int(sizes[k]), required[k])
        for k, pid in enumerate(ids_list)
    )
    terms: list[tuple[str, int]] = [
        (f"partition {p.partition}", p.required_raft_index)
        for p in partitions
        if p.required_raft_index is not None
    ]
    terms += [("routed_raft_index", routed + 1), ("applied_raft_floor", floor + 1)]
    watermark = min(value for _, value in terms)
    bound_by = tuple(name for name, value in terms if value == watermark)
    infos = log.segment_infos()
    return StoreStats(
        path=store.path,
        partition_count=store.partition_count,
        start_index=store.start_index,
        log_first_index=first,
        log_last_index=last,
        log_durable_index=log.durable_index,
        log_segments=len(infos),
        log_bytes=sum(info.bytes_used for info in infos),
        log_capacity_bytes=sum(info.capacity_bytes for info in infos),
        routed_raft_index=routed,
        applied_raft_floor=floor,
        checkpoint_error=store.checkpoint_error,
        partitions=partitions,
        required_raft_index=watermark,
        bound_by=bound_by,
        held_back=_held_back(partitions, terms, watermark, first, last, lengths),
    )


def _durable_raft(checkpoint: PartitionCheckpoint | None) -> int:
    return 0 if checkpoint is None else checkpoint.durable_raft_index


def _applied_index(applied: AppliedCheckpoint | None) -> int:
    return 0 if applied is None else applied.applied_index


def _partition_stats(
    store: _Store, pid: int, records: int, size: int, required: int | None
) -> PartitionStats:
    checkpoint = store.checkpoint_of.get(pid)
    applied = store.applied_of.get(pid)
    return PartitionStats(
        partition=pid,
        log_records=records,
        log_bytes=size,
        durable_index=0 if checkpoint is None else checkpoint.durable_index,
        durable_raft_index=_durable_raft(checkpoint),
        applied_index=_applied_index(applied),
        applied_raft_index=0 if applied is None else applied.applied_raft_index,
        snapshot_bytes=0 if applied is None else len(applied.snapshot),
        required_raft_index=required,
    )


def _held_back(
    partitions: tuple[PartitionStats, ...],
    terms: list[tuple[str, int]],
    watermark: int,
    first: int,
    last: int,
    lengths: npt.NDArray[np.int64],
) -> HeldBack | None:
    """The partitions whose requirement is the watermark, when it is below the log's
    end, and the retained records between it and where it would be without them."""
    holders = tuple(p.partition for p in partitions if p.required_raft_index == watermark)
    if not holders or watermark > last:
        return None
    names = {f"partition {pid}" for pid in holders}
    end = min([last + 1] + [value for name, value in terms if name not in names])
    # A holder's requirement is the raft index of a retained record: first <= watermark.
    return HeldBack(
        partitions=holders,
        first_raft_index=watermark,
        end_raft_index=end,
        records=end - watermark,
        bytes=int(lengths[watermark - first : end - first].sum()),
    )


def _print_stats(stats: StoreStats, out: TextIO) -> None:
    print(f"store {stats.path}", file=out)
    print(f"  partitions          {stats.partition_count}", file=out)
    print(f"  start index         {stats.start_index}", file=out)
    print("log", file=out)
    print(
        f"  records             [{stats.log_first_index}, {stats.log_last_index}]"
        f"  ({stats.log_records} records)",
        file=out,
    )
    print(f"  durable             [{stats.log_first_index}, {stats.log_durable_index}]", file=out)
    print(
        f"  segments            {stats.log_segments}  ({stats.log_bytes} bytes used, "
        f"{stats.log_capacity_bytes} allocated)",
        file=out,
    )
    print("checkpoints", file=out)
    if stats.checkpoint_error is not None:
        print(f"  cannot read: {stats.checkpoint_error} (figures below assume none)", file=out)
    print(f"  routed raft index   {stats.routed_raft_index}", file=out)
    print(
        f"  applied raft floor  {stats.applied_raft_floor}  (every committed entry up to it "
        "is applied and checkpointed)",
        file=out,
    )
    print("partitions", file=out)
    columns = (
        ("partition", 10),
        ("log records", 11),
        ("log bytes", 12),
        ("durable", 10),
        ("durable raft", 12),
        ("applied", 10),
        ("applied raft", 12),
        ("snapshot", 10),
        ("min required raft", 17),
    )
    print("  " + " ".join(f"{name:>{width}}" for name, width in columns), file=out)
    for p in stats.partitions:
        values = (
            p.partition,
            p.log_records,
            p.log_bytes,
            p.durable_index,
            p.durable_raft_index,
            p.applied_index,
            p.applied_raft_index,
            p.snapshot_bytes,
            "-" if p.required_raft_index is None else p.required_raft_index,
        )
        print(
            "  " + " ".join(f"{v!s:>{w}}" for v, (_, w) in zip(values, columns, strict=True)),
            file=out,
        )
    print("watermark", file=out)
    print(
        f"  min required raft   {stats.required_raft_index}  (bound by "
        f"{', '.join(stats.bound_by)}; routed_raft_index + 1 = {stats.routed_raft_index + 1}, "
        f"applied_raft_floor + 1 = {stats.applied_raft_floor + 1})",
        file=out,
    )
    print(f"  held back by        {_held_back_text(stats)}", file=out)
    print(f"  quorum              {QUORUM_OFFLINE}", file=out)


def _held_back_text(stats: StoreStats) -> str:
    held = stats.held_back
    if held is None:
        if stats.required_raft_index > stats.log_last_index:
            return "nothing: no retained record is required"
        return f"no partition ({', '.join(stats.bound_by)})"
    names = ", ".join(f"partition {pid}" for pid in held.partitions)
    return (
        f"{names}: {held.records} log records, {held.bytes} bytes "
        f"(raft indices [{held.first_raft_index}, {held.end_raft_index}); without "
        f"{'it' if len(held.partitions) == 1 else 'them'} the watermark would be "
        f"{held.end_raft_index})"
    )


# -- a whole store: verify -------------------------------------------------------------


def verify_store(path: str | os.PathLike[str], out: TextIO) -> int:
    """Check every CRC of the log and of each partition log, and cross-check them.

    Every partition record whose raft index the log retains must be the log's record
    of that partition (same raft index and partition index, payload equal to the log
    value after its partition header); partition indices must be contiguous; no
    checkpoint may claim more than its partition log holds, nor the routed raft index
    more than the log holds. Partition logs behind the log (records not yet routed
    when the store stopped) are reported, not counted as problems.

    Returns 0 when all is well, 1 when anything is wrong (each problem printed with
    where and what).
    """
    with _open_store(path) as store:
        print(f"store {store.path}", file=out)
        return _check_store(store, out)


@dataclass
class _Tally:
    records: int = 0
    logs: int = 0
    matched: int = 0
    unrouted: dict[int, int] = field(default_factory=dict)


def _check_store(store: _Store, out: TextIO) -> int:
    report = _Report()
    log = store.log
    log_ok = True
    if log.recovery.torn_cut_at_index is not None:
        report.notes.append(_tail_note("the log", log))
    with _progress(len(log), "verify log") as bar:
        try:
            checked = log.verify(bar.update)
            print(
                f"  log           verified {checked} records: every CRC32C, index and length OK",
                file=out,
            )
        except CorruptionError as exc:
            report.corruption(exc, "the log: ")
            log_ok = False
            print("  log           CORRUPT: cross-checks against it skipped", file=out)
    if log_ok:
        _check_log_columns(store, report)
    if store.checkpoint_error is not None:
        report.problem(
            store.checkpoints_path, f"cannot read the checkpoints: {store.checkpoint_error}"
        )
    routed = store.routed_raft_index
    if routed is not None and routed > log.last_index:
        report.problem(
            store.checkpoints_path,
            f"routed_raft_index {routed} is past the log's last index {log.last_index}",
        )
    _, foreign = _partition_dirs(store.partitions_dir)
    for entry in foreign:
        report.problem(entry, "not a partition log (partition directories are decimal ids)")
    tally = _Tally()
    ids = store.partition_ids()
    with _progress(len(ids), "verify partitions", unit="part") as bar:
        for pid in ids:
            _check_partition(store, pid, log_ok, report, tally)
            bar.update(1)
    print(
        f"  partitions    verified {tally.records} records in {tally.logs} partition logs",
        file=out,
    )
    if log_ok:
        print(
            f"  cross-check   {tally.matched} partition records match the log",
            file=out,
        )
    if tally.unrouted:
        per = ", ".join(f"partition {p}: {n}" for p, n in sorted(tally.unrouted.items()))
        report.notes.append(
            f"{sum(tally.unrouted.values())} records not yet routed ({per}); opening the "
            "store routes them"
        )
    for note in report.notes:
        print(f"  note          {note}", file=out)
    for problem in report.problems:
        print(f"  PROBLEM       {problem}", file=out)
    if report.problems:
        print(f"  {len(report.problems)} problems", file=out)
        return 1
    print("  OK", file=out)
    return 0


def _tail_note(what: str, aof: Aof) -> str:
    report = aof.recovery
    return (
        f"{what} ends before record {report.torn_cut_at_index} ({report.torn_cut_path}:"
        f"{report.torn_cut_offset}): the bytes there are not a record (a torn write, or "
        "leftovers of a truncation); the next writable open cuts them"
    )


def _check_log_columns(store: _Store, report: _Report) -> None:
    """The log's partition columns: valid ids, types, contiguous partition indices."""
    log = store.log
    where = log.path
    first = log.first_index
    pid = store.pid
    in_partition = pid != NO_PARTITION

    def rafts(mask: npt.NDArray[np.bool_]) -> list[str]:
        return [f"raft index {first + int(row)}" for row in np.flatnonzero(mask)]

    checks: list[tuple[npt.NDArray[np.bool_], str]] = [
        (
            in_partition & (pid >= store.partition_count),
            f"records name a partition id >= the store's {store.partition_count} partitions",
        ),
        (
            in_partition & (store.val_type != _APP_LOG),
            "records not of type app_log name a partition",
        ),
        (~in_partition & (store.val_type == _APP_LOG), "app_log records name no partition"),
        (in_partition & (store.pindex == 0), "records have partition index 0"),
    ]
    for mask, what in checks:
        if mask.any():
            report.mismatches(where, f"{int(mask.sum())} {what}", rafts(mask))
    for partition, rows in store.groups.items():
        indices = store.pindex[rows]
        if first == 1 and int(indices[0]) != 1:
            report.problem(
                where,
                f"partition {partition}: its first record (raft index {first + int(rows[0])}) "
                f"has partition index {int(indices[0])}, but the log is retained from raft "
                "index 1, so it must be 1",
            )
        breaks = np.flatnonzero(np.diff(indices) != 1)
        if len(breaks):
            report.mismatches(
                where,
                f"partition {partition}: partition indices are not contiguous",
                [
                    f"raft index {first + int(rows[k + 1])} has partition index "
                    f"{int(indices[k + 1])} after {int(indices[k])}"
                    for k in breaks.tolist()
                ],
            )


def _check_partition(store: _Store, pid: int, log_ok: bool, report: _Report, tally: _Tally) -> None:
    path = store.partition_path(pid)
    checkpoint = store.checkpoint_of.get(pid)
    if pid >= store.partition_count and (os.path.isdir(path) or checkpoint is not None):
        report.problem(
            path,
            f"partition {pid} does not exist in a store of {store.partition_count} partitions",
        )
    if not os.path.isdir(path):
        _check_checkpoint(store, pid, checkpoint, 1, 0, np.empty(0, np.uint64), report)
        if log_ok:
            _cross_check(store, pid, None, 1, 0, np.empty(0, np.uint64), report, tally)
        return
    try:
        with _open_partition(path, pid) as plog:
            tally.logs += 1
            if plog.recovery.torn_cut_at_index is not None:
                report.notes.append(_tail_note(f"partition {pid}", plog))
            try:
                tally.records += plog.verify()
                crc_ok = True
            except CorruptionError as exc:
                report.corruption(exc, f"partition {pid}: ")
                crc_ok = False
            first, last = plog.first_index, plog.last_index
            raft = _raft_column(plog)
            _check_checkpoint(store, pid, checkpoint, first, last, raft, report)
            steps = np.flatnonzero(np.diff(raft) <= 0)
            if (len(raft) and int(raft[0]) == 0) or len(steps):
                report.mismatches(
                    path,
                    f"partition {pid}: raft indices are not strictly increasing",
                    [
                        f"partition index {first + int(k) + 1} has raft index "
                        f"{int(raft[k + 1])} after {int(raft[k])}"
                        for k in steps.tolist()
                    ]
                    or [f"partition index {first} has raft index 0"],
                )
            elif log_ok and crc_ok:
                _cross_check(store, pid, plog, first, last, raft, report, tally)
    except CorruptionError as exc:
        report.corruption(exc, f"partition {pid}: ")
    except (NotAStoreError, FormatVersionError) as exc:
        report.problem(path, f"partition {pid}: {exc}")


def _check_checkpoint(
    store: _Store,
    pid: int,
    checkpoint: PartitionCheckpoint | None,
    first: int,
    last: int,
    raft: npt.NDArray[np.uint64],
    report: _Report,
) -> None:
    if checkpoint is None:
        return
    where = f"{store.checkpoints_path} (partition {pid})"
    durable = checkpoint.durable_index
    if durable > last:
        report.problem(
            where,
            f"durable index {durable} is past the partition log's last index {last}",
        )
    elif durable >= max(first, 1) and int(raft[durable - first]) != checkpoint.durable_raft_index:
        report.problem(
            where,
            f"durable index {durable} has durable raft index "
            f"{checkpoint.durable_raft_index}, but the partition log has raft index "
            f"{int(raft[durable - first])} there",
        )


def _cross_check(
    store: _Store,
    pid: int,
    plog: Aof | None,
    first: int,
    last: int,
    raft: npt.NDArray[np.uint64],
    report: _Report,
    tally: _Tally,
) -> None:
    """Partition ``pid``'s records [first, last] (raft indices ``raft``) against the log."""
    log = store.log
    where = plog.path if plog is not None else store.partition_path(pid)
    log_first, log_last = log.first_index, log.last_index
    log_raft, log_pindex = store.log_rows(pid)

    # Partition records whose raft index the log retains must be the log's records.
    inside = np.flatnonzero((raft >= log_first) & (raft <= log_last))
    rows = (raft[inside] - np.uint64(log_first)).astype(np.intp)
    wrong = (store.pid[rows] != pid) | (store.pindex[rows] != inside.astype(np.uint64) + first)
    if wrong.any():
        details = []
        for k, row in zip(inside[wrong].tolist(), rows[wrong].tolist(), strict=True):
            other = int(store.pid[row])
            there = (
                "belongs to no partition"
                if other == NO_PARTITION
                else f"is partition {other} index {int(store.pindex[row])}"
            )
            details.append(f"partition index {first + k} (raft index {int(raft[k])}): {there}")
        report.mismatches(
            where,
            f"partition {pid}: {int(wrong.sum())} records do not match the log's record at "
            "their raft index",
            details,
        )
    beyond = np.flatnonzero(raft > log_last)
    if len(beyond):
        report.mismatches(
            where,
            f"partition {pid}: {len(beyond)} records have raft indices past the log's last "
            f"index {log_last} (the log does not have them)",
            [f"partition index {first + k} (raft index {int(raft[k])})" for k in beyond.tolist()],
        )
    # The log's records of the partition that the partition log holds (by partition
    # index) must sit at the same raft index; a partition record below the log's first
    # index cannot be compared, but it cannot be one the log still has either.
    held = np.flatnonzero((log_pindex >= first) & (log_pindex <= last))
    elsewhere = held[raft[(log_pindex[held] - np.uint64(first)).astype(np.intp)] < log_first]
    if len(elsewhere):
        report.mismatches(
            where,
            f"partition {pid}: {len(elsewhere)} records the log has at other raft indices",
            [
                f"partition index {int(log_pindex[k])} is at raft index "
                f"{int(raft[int(log_pindex[k]) - first])}, the log has it at "
                f"{int(log_raft[k])}"
                for k in elsewhere.tolist()
            ],
        )
    # Log records past the partition log's end: not yet routed, unless the checkpoints
    # say they were (then they are lost), or the partition log skips indices.
    ahead = np.flatnonzero(log_pindex > last)
    if len(ahead):
        next_index = int(log_pindex[ahead[0]])
        if next_index != last + 1:
            report.problem(
                where,
                f"partition {pid}: the log's next record of the partition (raft index "
                f"{int(log_raft[ahead[0]])}) has partition index {next_index}, but the "
                f"partition log ends at {last}: indices {last + 1} to {next_index - 1} "
                "are in neither",
            )
        routed = store.routed_raft_index or 0
        lost = ahead[log_raft[ahead] <= routed]
        if len(lost):
            report.mismatches(
                where,
                f"partition {pid}: {len(lost)} records up to routed_raft_index {routed} "
                "were routed and checkpointed but are missing from the partition log",
                [
                    f"raft index {int(log_raft[k])} (partition index {int(log_pindex[k])})"
                    for k in lost.tolist()
                ],
            )
        if len(ahead) > len(lost):
            tally.unrouted[pid] = len(ahead) - len(lost)
    _compare_values(store, pid, plog, first, raft, log_raft, log_pindex, where, report, tally)


def _compare_values(
    store: _Store,
    pid: int,
    plog: Aof | None,
    first: int,
    raft: npt.NDArray[np.uint64],
    log_raft: npt.NDArray[np.uint64],
    log_pindex: npt.NDArray[np.uint64],
    where: str,
    report: _Report,
    tally: _Tally,
) -> None:
    """Each log value's partition header, and payloads of records both sides hold."""
    log = store.log
    bad_headers: list[str] = []
    bad_payloads: list[str] = []
    last = first + len(raft) - 1
    for r, q in zip(log_raft.tolist(), log_pindex.tolist(), strict=True):
        value = log.read(r)
        try:
            named, index = decode_partition(value)
            if named != pid or index not in (0, q):
                bad_headers.append(
                    f"raft index {r}: the value names partition {named} index {index}, "
                    f"the columns partition {pid} index {q}"
                )
        except PartitionError as exc:
            bad_headers.append(f"raft index {r}: {exc}")
        if plog is None or not first <= q <= last or int(raft[q - first]) != r:
            continue
        if value[PARTITION_HEADER_BYTES:] != plog.read(q):
            bad_payloads.append(f"partition index {q} (raft index {r})")
        else:
            tally.matched += 1
    if bad_headers:
        report.mismatches(
            log.path,
            f"partition {pid}: {len(bad_headers)} log values disagree with their partition columns",
            bad_headers,
        )
    if bad_payloads:
        report.mismatches(
            where,
            f"partition {pid}: {len(bad_payloads)} payloads differ from the log value "
            f"after its {PARTITION_HEADER_BYTES}-byte partition header",
            bad_payloads,
        )


__all__ = [
    "QUORUM_OFFLINE",
    "STATS_FORMAT_VERSION",
    "HeldBack",
    "PartitionStats",
    "Problem",
    "StoreStats",
    "dump",
    "dump_aof",
    "dump_store",
    "path_kind",
    "stats",
    "store_stats",
    "verify",
    "verify_aof",
    "verify_store",
]

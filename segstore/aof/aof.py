"""The append-only-file engine: dense u64 record indices over segment files.

Concurrency: any number of threads may call the methods of one ``Aof``. Writes
(append, truncation) are serialised by one lock; reads take no lock and are safe
alongside appends. Durability comes from :mod:`segstore.aof.group_commit`.
"""

from __future__ import annotations

import bisect
import contextlib
import operator
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, cast, overload

import numpy as np
import numpy.typing as npt

from segstore.aof import kernels
from segstore.aof.fileio import FileIO
from segstore.aof.format import (
    FRAME_HEADER_BYTES,
    LOCK_NAME,
    META_NAME,
    SEGMENT_BYTES_MAX,
    SEGMENT_BYTES_MIN,
    SEGMENT_HEADER_BYTES,
    TEMP_SUFFIX,
    Meta,
    SegmentHeader,
    encode_sidecar,
)
from segstore.aof.group_commit import DurableCallback, GroupCommit
from segstore.aof.preallocate import (
    PREALLOCATE_MODES,
    SPARE_NAMES,
    TRASH_SUFFIX,
    PreallocateMode,
    SparePool,
)
from segstore.aof.recovery import RecoveryReport, recover
from segstore.aof.segment import Segment
from segstore.errors import (
    ClosedError,
    CorruptionError,
    IndexOutOfRangeError,
    InvalidArgumentError,
    NotAStoreError,
    RecordTooLargeError,
    SegstoreError,
    StorageIOError,
)

SEGMENT_BYTES_DEFAULT = 64 << 20
SEGMENT_BYTES_INITIAL = 4 << 20  # a fresh log's first segment; each next one doubles
VERIFY_CHUNK_RECORDS = 1 << 16
AUTOSYNC_LINGER_S = 0.0005  # about one fdatasync on this class of disk; see ARCHITECTURE.md
Payload = bytes | bytearray | memoryview
_Read = TypeVar("_Read")


@dataclass(frozen=True)
class SegmentInfo:
    """One segment as the tools show it."""

    path: str
    first_index: int
    last_index: int
    records: int
    bytes_used: int
    capacity_bytes: int
    sealed: bool
    has_sidecar: bool


@dataclass(frozen=True)
class PayloadSpan:
    """Where the payloads of consecutive records lie in one segment's mapping.

    Record ``first_index + k`` has payload ``view[offsets[k]:offsets[k] + lengths[k]]``
    (the form :meth:`Aof.append_gathered` takes); ``view`` lives as long as
    :meth:`Aof.read`'s.
    """

    first_index: int
    view: memoryview
    offsets: npt.NDArray[np.uint64]
    lengths: npt.NDArray[np.uint32]


class Aof:
    """A segmented append-only file of records with dense u64 indices.

    Open with :meth:`Aof.open`. Records are appended with :meth:`append` or
    :meth:`append_batch`, made durable by group commit (:meth:`sync`,
    :attr:`durable_index`, :meth:`on_durable`), read zero-copy with :meth:`read`, and
    removed from either end with :meth:`truncate_before` and :meth:`truncate_after`.
    """

    def __init__(self, *_args: object, **_kwargs: object) -> None:
        raise TypeError("use Aof.open(path, ...) to open an Aof")

    # -- opening and closing -------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        header_dtype: npt.DTypeLike | None = None,
        segment_bytes: int | None = None,
        create: bool = True,
        autosync: bool = True,
        autosync_linger_s: float = AUTOSYNC_LINGER_S,
        preallocate: PreallocateMode = "zero",
        verify_reads: bool = True,
        readonly: bool = False,
        user: dict[str, Any] | None = None,
        io: FileIO | None = None,
    ) -> Aof:
        """Open (or create) the Aof in directory ``path``.

        ``header_dtype``: numpy dtype of each record's fixed-size header, fixed at
        creation (``None``: no header); when given for an existing Aof it must match.
        ``segment_bytes``: capacity of new segment files (default 64 MiB).
        ``autosync``: a background flusher syncs whatever is appended (group commit);
        without it records become durable only through :meth:`sync`.
        ``autosync_linger_s``: how long the flusher waits after an append before it
        syncs, so that callers of :meth:`sync` and bursts of appends share one flush;
        while callers' own syncs cover everything, it waits up to 16 times longer.
        ``preallocate``: ``"zero"`` fills new segments with zeros ahead of need (cheaper
        fdatasync), ``"sparse"`` only sizes them.
        ``verify_reads``: check each record's CRC32C when it is read.
        ``readonly``: never write (torn tails are cut in memory only); for tools.
        ``user``: initial user metadata at creation (see :attr:`user_meta`).
        ``io``: the file-operation seam (tests inject faults through it).
        """
        self = object.__new__(cls)
        self._init(
            os.fspath(path),
            header_dtype=header_dtype,
            segment_bytes=segment_bytes,
            create=create,
            autosync=autosync,
            autosync_linger_s=autosync_linger_s,
            preallocate=preallocate,
            verify_reads=verify_reads,
            readonly=readonly,
            user=user,
            io=io or FileIO(),
        )
        return self

    def _init(
        self,
        path: str,
        *,
        header_dtype: npt.DTypeLike | None,
        segment_bytes: int | None,
        create: bool,
        autosync: bool,
        autosync_linger_s: float,
        preallocate: PreallocateMode,
        verify_reads: bool,
        readonly: bool,
        user: dict[str, Any] | None,
        io: FileIO,
    ) -> None:
        self._closed = True
        self._io = io
        self.path = path
        dtype = _check_dtype(header_dtype)
        if segment_bytes is not None:
            _check_segment_bytes(segment_bytes)
        if preallocate not in PREALLOCATE_MODES:
            raise InvalidArgumentError(f"preallocate must be one of {PREALLOCATE_MODES}")
        started = time.perf_counter()
        self._lock_fd: int | None = self._prepare_directory(create and not readonly)
        try:
            meta = self._load_or_create_meta(dtype, segment_bytes, create and not readonly, user)
            if dtype is not None and meta.header_dtype != dtype:
                raise InvalidArgumentError(
                    f"{path} was created with header dtype {meta.header_dtype}, not {dtype}"
                )
            self._meta = meta
            self._segment_bytes = segment_bytes or meta.segment_bytes
            self._header_bytes = meta.header_bytes
            self._header_zero = bytes(self._header_bytes)
            self._verify_reads = verify_reads
            self._readonly = readonly
            self._write_lock = threading.RLock()
            # Odd while a truncation changes the index, bumped again when it is done:
            # a lock-free index lookup that saw it move runs again under the lock.
            self._truncations = 0
            self._epoch_bumped = self._created
            self._dir_dirty = False
            self._scratch = bytearray(1 << 16)
            self._sealed_without_sidecar: list[Segment] = []
            recovered = recover(io, path, meta)
            self.recovery: RecoveryReport = recovered.report
            self._read_path = kernels.ReadPath()
            self._read_path.header_bytes = self._header_bytes
            self._read_path.verify = verify_reads
            self._read_path.slow = self._read_slow
            if type(self).read is _AOF_READ:
                # Reads of a few hundred bytes take ~450 ns; a Python frame around the
                # compiled lookup was 60 of them. Bound on the instance, so callers skip
                # it while the method stays the reference (and a subclass's override, or
                # a patch of Aof.read, wins).
                self.read = self._read_path.payload  # type: ignore[method-assign]
            self._set_segments(recovered.segments)
            self._set_first_index(meta.first_index)
            self._last_index = self._segments[-1].last_index if self._segments else 0
            if self._last_index < self._first_index - 1:
                self._last_index = self._first_index - 1
            self._commit = GroupCommit(self._flush_io, lambda: self._last_index, self._last_index)
            self._spare = SparePool(io, path, preallocate)
            self._closed = False
            if not readonly:
                self._finish_recovery(recovered.doomed)
                if autosync:
                    self._commit.start_background(autosync_linger_s)
            self.recovery_seconds = time.perf_counter() - started
        except BaseException:
            self._release_all()
            raise

    def _prepare_directory(self, create: bool) -> int:
        path = self.path
        if not os.path.isdir(path):
            if os.path.exists(path):
                raise NotAStoreError(f"{path} is not a directory")
            if not create:
                raise NotAStoreError(f"{path} does not exist (open with create=True)")
            os.makedirs(path)
        names = {n for n in self._io.listdir(path) if not n.endswith(TEMP_SUFFIX)}
        if META_NAME not in names and names - {LOCK_NAME}:
            raise NotAStoreError(
                f"{path} is not an Aof: it has files but no {META_NAME}; "
                "use an empty or new directory"
            )
        return self._io.lock(os.path.join(path, LOCK_NAME))

    def _load_or_create_meta(
        self,
        dtype: np.dtype[Any] | None,
        segment_bytes: int | None,
        create: bool,
        user: dict[str, Any] | None,
    ) -> Meta:
        meta_path = os.path.join(self.path, META_NAME)
        self._created = False
        if not os.path.exists(meta_path):
            if not create:
                raise NotAStoreError(f"{self.path} is not an Aof (no {META_NAME})")
            # Epoch 1 from the start: a new Aof has no old bytes to kill, so its first
            # write needs no epoch bump (three fsyncs saved per new log).
            meta = Meta(
                store_id=Meta.new_store_id(),
                header_dtype=dtype,
                segment_bytes=segment_bytes or SEGMENT_BYTES_DEFAULT,
                epoch=1,
                user=dict(user or {}),
            )
            self._created = True
            self._io.replace_file(self.path, META_NAME, _encode_meta(meta))
            return meta
        return Meta.decode(self._io.read_file(meta_path), meta_path)

    def _finish_recovery(self, doomed: list[Segment]) -> None:
        """Make recovery's decisions durable before anything is written.

        The records the scan accepted may exist only in the page cache (the writer was
        killed, the machine was not), so they are fdatasync'd before any epoch bump
        names them as the cut: otherwise a later power loss could expose older frames
        at their positions that the cut would call live.
        """
        for name in self._io.listdir(self.path):
            if name.endswith(TRASH_SUFFIX):
                self._spare.delete_later(os.path.join(self.path, name))  # large: slow unlink
            elif name.endswith(TEMP_SUFFIX) and name not in SPARE_NAMES:
                self._io.unlink(os.path.join(self.path, name))
        for segment in doomed:
            self._remove_segment_files(segment)
        # The scan accepted records in files whose names a killed writer may never have
        # made durable (a rollover's rename waits for the next flush): one directory
        # fsync covers them and the removals above.
        self._io.fsync_dir(self.path)
        for segment in self._segments[:-1]:
            if not segment.sidecar_trusted:
                fd = self._io.open(segment.path, os.O_RDONLY)
                try:
                    self._io.fdatasync(fd, segment.path)
                finally:
                    self._io.close(fd, segment.path)
                self._write_sidecar(segment)
            segment.sealed = True
            segment.trim()
        if self._segments:
            self._activate(self._segments[-1], self.recovery.torn_cut_offset)
        else:
            self._spare.start(self._next_capacity(0))  # ready before the first append
        if self.recovery.torn_cut_at_index is not None:
            self._bump_epoch()  # the cut is durable from here on

    def close(self) -> None:
        """Sync what was appended (unless the store failed), then release everything.

        Idempotent. Views returned by :meth:`read` must not be used after close.
        """
        if self._closed:
            return
        try:
            if not self._readonly:
                self._commit.stop_background()
                if self._commit.failure is None:
                    self.sync()
        finally:
            self._closed = True
            self._release_all()

    def _release_all(self) -> None:
        spare = getattr(self, "_spare", None)
        if spare is not None:
            spare.close()
        for segment in getattr(self, "_segments", []):
            segment.release()
        lock_fd = getattr(self, "_lock_fd", None)
        if lock_fd is not None:
            self._io.unlock(lock_fd, os.path.join(self.path, LOCK_NAME))
            self._lock_fd = None

    def __enter__(self) -> Aof:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"[{self._first_index}, {self._last_index}]"
        return f"<Aof {self.path!r} {state}>"

    # -- properties ----------------------------------------------------------------

    @property
    def first_index(self) -> int:
        """Index of the first retained record (``last_index + 1`` when empty)."""
        return self._first_index

    @property
    def last_index(self) -> int:
        """Index of the last record (``first_index - 1`` when empty)."""
        return self._last_index

    def __len__(self) -> int:
        return self._last_index - self._first_index + 1

    @property
    def durable_index(self) -> int:
        """Highest index covered by a completed fdatasync.

        It only moves up, except that :meth:`truncate_after` lowers it to the cut.
        """
        return self._commit.durable_index

    @property
    def segment_bytes(self) -> int:
        """Capacity of the segment files this Aof creates."""
        return self._segment_bytes

    @property
    def header_dtype(self) -> np.dtype[Any] | None:
        """The record header dtype fixed at creation (None without headers)."""
        return self._meta.header_dtype

    @property
    def store_id(self) -> bytes:
        """Random 16-byte id made at creation; segments and sidecars repeat it."""
        return self._meta.store_id

    @property
    def user_meta(self) -> dict[str, Any]:
        """A copy of the user metadata stored in ``aof.meta``."""
        return dict(self._meta.user)

    @property
    def failed(self) -> StorageIOError | None:
        """The I/O error that failed the store stop, if any."""
        return self._commit.failure

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def segment_paths(self) -> list[str]:
        """Paths of the segment files holding records, oldest first."""
        return [s.path for s in self._segments]

    def segment_infos(self) -> list[SegmentInfo]:
        """A summary of every segment holding records, oldest first."""
        self._check_open()
        return [
            SegmentInfo(
                path=s.path,
                first_index=max(s.first_index, self._first_index),
                last_index=s.last_index,
                records=s.last_index - max(s.first_index, self._first_index) + 1,
                bytes_used=s.end_offset,
                capacity_bytes=s.capacity_bytes,
                sealed=s.sealed,
                has_sidecar=s.sidecar_trusted,
            )
            for s in self._segments
        ]

    def verify(self, progress: Callable[[int], None] | None = None) -> int:
        """Check the CRC, index and length of every retained record; return the count.

        Raises :class:`CorruptionError` naming the file and offset of the first bad
        record. ``progress(n)`` is called after each chunk of ``n`` records.
        """
        checked = 0
        for segment, lo, hi in self._spans(self._first_index, self._last_index + 1):
            for start in range(lo, hi, VERIFY_CHUNK_RECORDS):
                end = min(hi, start + VERIFY_CHUNK_RECORDS)
                self._check_frames(segment, start, end)
                checked += end - start
                if progress is not None:
                    progress(end - start)
        return checked

    # -- appending -----------------------------------------------------------------

    def append(self, payload: Payload, header: Any = None) -> int:
        """Append one record; return its index. Durable once :meth:`sync` covers it.

        ``header``: a structured scalar, tuple, or bytes matching the header dtype;
        None writes a zero header.
        """
        data = _payload_view(payload)
        header_raw = self._header_raw(header)
        size = kernels.frame_bytes(self._header_bytes, data.nbytes)
        with self._write_lock:
            self._check_writable()
            segment = self._segment_with_room(size)
            index = self._last_index + 1
            scratch = self._scratch_of(size)
            kernels.encode_one(
                scratch, 0, data, header_raw, index, self._meta.epoch, self._commit.durable_index
            )
            offset = segment.end_offset
            self._write(segment, memoryview(scratch)[:size])
            count = segment.count
            segment.reserve(1)
            segment.offsets[count] = offset
            segment.lengths[count] = data.nbytes
            if self._header_bytes:
                base = count * self._header_bytes
                segment.headers[base : base + self._header_bytes] = np.frombuffer(
                    header_raw, np.uint8
                )
            segment.count = count + 1
            segment.end_offset = offset + size
            self._last_index = index
        self._commit.nudge()
        return index

    def append_batch(self, payloads: Sequence[Payload], headers: Any = None) -> int:
        """Append records in order with one write per segment; return the last index.

        ``payloads``: a list or tuple of byte buffers. ``headers``: a numpy array of the
        header dtype with one row per payload, or None. The whole batch is checked
        before anything is written.
        """
        if not isinstance(payloads, (list, tuple)):
            payloads = _as_payload_list(payloads)
        count = len(payloads)
        if count == 0:
            raise InvalidArgumentError("append_batch needs at least one payload")
        lengths = np.empty(count, np.uint32)
        try:
            longest = kernels.measure_payloads(payloads, lengths)
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError(f"payloads must be byte buffers: {exc}") from None
        table = self._header_table(headers, count)
        return self._append_records(payloads, None, lengths, longest, table)

    def append_gathered(
        self,
        source: Payload,
        offsets: npt.ArrayLike,
        lengths: npt.ArrayLike,
        headers: Any = None,
    ) -> int:
        """Append records whose payloads lie in one buffer; return the last index.

        Payload k is ``source[offsets[k]:offsets[k] + lengths[k]]`` (another Aof's
        mapping, say, from :meth:`payload_spans`): encoded by one compiled call with the
        GIL released and no Python object per payload. Otherwise like
        :meth:`append_batch`, checks first included.
        """
        try:
            view = memoryview(source)
        except TypeError as exc:
            raise InvalidArgumentError(f"source must be a byte buffer: {exc}") from None
        if not view.c_contiguous:
            raise InvalidArgumentError("source must be a contiguous buffer")
        at = _unsigned_column(offsets, np.uint64, "offsets")
        sizes = _unsigned_column(lengths, np.uint32, "lengths")
        if at.shape != sizes.shape or not len(at):
            raise InvalidArgumentError(
                f"offsets and lengths must be two equal, non-empty 1-d arrays, not shapes "
                f"{at.shape} and {sizes.shape}"
            )
        end, longest = kernels.gathered_extent(at, sizes)
        if end > view.nbytes:
            raise InvalidArgumentError(f"a payload lies outside the {view.nbytes}-byte source")
        table = self._header_table(headers, len(at))
        return self._append_records(source, at, sizes, longest, table)

    def _append_records(
        self,
        payloads: Sequence[Payload] | Payload,
        offsets: npt.NDArray[np.uint64] | None,
        lengths: npt.NDArray[np.uint32],
        longest: int,
        header_table: npt.NDArray[np.uint8],
    ) -> int:
        """Write checked records, one pwrite per segment: ``payloads`` is a sequence of
        buffers, or with ``offsets`` one buffer holding them all; ``longest`` is the
        largest of ``lengths``."""
        count = len(lengths)
        self._check_fits(kernels.frame_bytes(self._header_bytes, longest))
        with self._write_lock:
            self._check_writable()
            done = 0
            while done < count:
                segment = self._segment_with_room(
                    kernels.frame_bytes(self._header_bytes, int(lengths[done]))
                )
                take, chunk_bytes = kernels.fit_frames(
                    lengths, done, self._header_bytes, segment.free_bytes
                )
                self._append_chunk(
                    segment, payloads, offsets, done, take, lengths, header_table, chunk_bytes
                )
                done += take
            last = self._last_index
        self._commit.nudge()
        return last

    def _append_chunk(
        self,
        segment: Segment,
        payloads: Sequence[Payload] | Payload,
        offsets: npt.NDArray[np.uint64] | None,
        done: int,
        take: int,
        lengths: npt.NDArray[np.uint32],
        header_table: npt.NDArray[np.uint8],
        chunk_bytes: int,
    ) -> None:
        """Encode payloads ``[done, done + take)`` and write them in one pwrite."""
        h = self._header_bytes
        start = segment.count
        segment.reserve(take)
        scratch = self._scratch_of(chunk_bytes)
        offset = segment.end_offset
        headers = header_table[done * h : (done + take) * h]
        frame_offsets = segment.offsets[start : start + take]
        first, epoch, durable = self._last_index + 1, self._meta.epoch, self._commit.durable_index
        if offsets is None:
            kernels.encode_payloads(
                scratch, 0, cast("Sequence[Payload]", payloads), done, lengths, headers, h,
                first, epoch, durable, offset, frame_offsets,
            )  # fmt: skip
        else:
            kernels.encode_gathered(
                scratch, 0, cast("Payload", payloads), offsets, lengths, done, headers, h,
                first, epoch, durable, offset, frame_offsets,
            )  # fmt: skip
        self._write(segment, memoryview(scratch)[:chunk_bytes])
        segment.lengths[start : start + take] = lengths[done : done + take]
        if h:
            segment.headers[start * h : (start + take) * h] = headers
        segment.count = start + take
        segment.end_offset = offset + chunk_bytes
        self._last_index += take

    def _write(self, segment: Segment, frames: memoryview) -> None:
        """pwrite frames at the segment's end; any failure fails the store stop.

        A failed or partial write may leave bytes in the page cache that a later,
        shorter write would not cover, so nothing more may be written this session.
        """
        if segment.write_fd is None:
            raise StorageIOError(0, "segment is not writable", segment.path)
        try:
            self._io.write_all(segment.write_fd, frames, segment.end_offset, segment.path)
        except StorageIOError as exc:
            self._commit.fail(exc)
            self._commit.check_failed()

    def _segment_with_room(self, frame_size: int) -> Segment:
        """The active segment, rolled over to a new one if ``frame_size`` won't fit."""
        self._check_fits(frame_size)
        if not self._epoch_bumped:
            self._bump_epoch()
        if not self._segments or self._segments[-1].sealed:
            return self._new_segment(self._last_index + 1, frame_size)
        active = self._segments[-1]
        if active.free_bytes >= frame_size:
            return active
        # A successor proves its predecessor whole (recovery row R5), so the predecessor
        # is made durable, and a sidecar left from before a truncate_after removed,
        # before the successor exists: one fdatasync per segment.
        self._fdatasync_or_fail(active)
        self._remove_stale_sidecar(active)
        successor = self._new_segment(self._last_index + 1, frame_size)  # ENOSPC: no change
        self._seal(active)
        return successor

    def _remove_stale_sidecar(self, segment: Segment) -> None:
        if os.path.exists(segment.sidecar_path):
            self._io.unlink(segment.sidecar_path)
            self._io.fsync_dir(self.path)
        segment.sidecar_trusted = False

    def _fdatasync_or_fail(self, segment: Segment) -> None:
        if segment.write_fd is None:
            return
        try:
            self._io.fdatasync(segment.write_fd, segment.path)
        except StorageIOError as exc:
            self._commit.fail(exc)
            self._commit.check_failed()

    @property
    def max_payload_bytes(self) -> int:
        """The largest payload one record can carry (a frame must fit in a segment)."""
        room = self._segment_bytes - SEGMENT_HEADER_BYTES
        return (room & ~7) - FRAME_HEADER_BYTES - self._header_bytes

    def _check_fits(self, frame_size: int) -> None:
        room = self._segment_bytes - SEGMENT_HEADER_BYTES
        if frame_size > room:
            raise RecordTooLargeError(
                f"a record of {frame_size} frame bytes does not fit in a segment "
                f"({room} bytes of room); open with a larger segment_bytes"
            )

    def _seal(self, segment: Segment) -> None:
        segment.sealed = True
        self._sealed_without_sidecar.append(segment)

    def _new_segment(self, first_index: int, frame_size: int) -> Segment:
        def header_for(capacity_bytes: int) -> bytes:
            return SegmentHeader(
                self._header_bytes, first_index, capacity_bytes, self._meta.store_id
            ).encode()

        fd, capacity = self._spare.take(first_index, self._next_capacity(frame_size), header_for)
        segment = Segment(self._io, self.path, first_index, self._header_bytes, capacity)
        segment.write_fd = fd
        self._set_segments([*self._segments, segment])
        self._dir_dirty = True
        self._spare.start(self._next_capacity(0))
        return segment

    def _next_capacity(self, frame_size: int) -> int:
        """Size of the next segment: doubling from SEGMENT_BYTES_INITIAL to the maximum.

        A fresh log thus starts with a small file whose zero fill is quick, and a log
        that lives long uses full-size segments.
        """
        last = self._segments[-1].capacity_bytes if self._segments else 0
        wanted = max(SEGMENT_BYTES_INITIAL, 2 * last)
        needed = -(-(SEGMENT_HEADER_BYTES + frame_size) // 4096) * 4096
        return min(self._segment_bytes, max(wanted, needed))

    def _set_segments(self, segments: list[Segment]) -> None:
        self._segments = segments
        self._firsts = [s.first_index for s in segments]
        self._read_path.set_segments(list(segments))

    def _set_first_index(self, first_index: int) -> None:
        self._first_index = first_index
        self._read_path.first_index = first_index

    def _activate(self, segment: Segment, torn_offset: int | None) -> None:
        """Reopen the last segment for writing after recovery; make its records durable.

        A sidecar left on it (its successor could not be made) would describe fewer
        records than it will hold, so it goes first. Bytes of a torn tail are zeroed, so
        the next open finds a clean end instead of the same torn frame.
        """
        self._remove_stale_sidecar(segment)
        segment.write_fd = self._io.open(segment.path, os.O_RDWR)
        if torn_offset is not None:
            self._io.zero_range(segment.write_fd, torn_offset, segment.capacity_bytes, segment.path)
        self._io.fdatasync(segment.write_fd, segment.path)
        segment.sealed = False
        self._spare.start(self._next_capacity(0))

    def _bump_epoch(self) -> None:
        """Start a new write generation: bytes past ``last_index`` are dead for good."""
        self._write_meta(
            self._meta.with_changes(epoch=self._meta.epoch + 1, epoch_cut=self._last_index)
        )
        self._epoch_bumped = True

    def _write_meta(self, meta: Meta) -> None:
        self._io.replace_file(self.path, META_NAME, _encode_meta(meta))
        self._meta = meta

    def set_user_meta(self, user: dict[str, Any]) -> None:
        """Replace the user metadata in ``aof.meta`` durably."""
        with self._write_lock:
            self._check_writable()
            self._write_meta(self._meta.with_changes(user=dict(user)))

    # -- durability ----------------------------------------------------------------

    def sync(self) -> int:
        """Block until every record appended so far is durable; return durable_index."""
        self._check_open()
        return self._commit.sync(self._last_index)

    def on_durable(self, callback: DurableCallback) -> None:
        """Call ``callback(durable_index)`` whenever it advances, or ``callback(error)``.

        Callbacks run on the flushing thread; they must be quick and must not call
        back into :meth:`sync` or the truncation methods.
        """
        self._check_open()
        self._commit.add_callback(callback)

    def _flush_io(self) -> int:
        """The group commit's I/O: runs with the flush mutex held.

        Sealed segments were fdatasync'd when they were sealed; they get their sidecar
        here, off the append path.
        """
        with self._write_lock:
            target = self._last_index
            if (
                target <= self._commit.durable_index
                and not self._sealed_without_sidecar
                and not self._dir_dirty
            ):
                return target  # a flush that ran meanwhile covered everything
            sealed = self._sealed_without_sidecar
            self._sealed_without_sidecar = []
            active = self._segments[-1] if self._segments else None
            dir_dirty, self._dir_dirty = self._dir_dirty, False
            active_fd = active.write_fd if active is not None else None
        try:
            if active is not None and active_fd is not None:
                self._io.fdatasync(active_fd, active.path)
            if dir_dirty:
                self._io.fsync_dir(self.path)
            for segment in sealed:
                self._write_sidecar(segment)
        except StorageIOError:
            with self._write_lock:
                self._sealed_without_sidecar = sealed + self._sealed_without_sidecar
                self._dir_dirty = self._dir_dirty or dir_dirty
            raise
        with self._write_lock:
            for segment in sealed:
                if segment.write_fd is not None:
                    fd, segment.write_fd = segment.write_fd, None
                    self._io.close(fd, segment.path)
                segment.trim()
        return target

    def _write_sidecar(self, segment: Segment) -> None:
        data = encode_sidecar(
            self._header_bytes, segment.first_index, self._meta.store_id, segment.index_arrays()
        )
        directory, name = os.path.split(segment.sidecar_path)
        # Not fsync'd: a sidecar lost or torn by a crash fails its checks and the
        # segment is rescanned, while two fsyncs here cost the flushing caller ~10 ms.
        self._io.replace_file(directory, name, data, durable=False)
        segment.sidecar_trusted = True

    # -- reading -------------------------------------------------------------------

    def read(self, index: int) -> memoryview:
        """The payload of record ``index``, zero-copy from the segment's mapping.

        The view stays valid until the record is truncated away or the Aof is closed;
        after that its content is unspecified, but reading it never crashes (the mapping
        lives as long as any view of it). Copy it with ``bytes(view)`` to keep it.
        """
        payload = self._read_path.read(index)  # the hot path: one compiled call
        if payload is not None:
            return payload
        return self._read_slow(index)

    def _read_slow(self, index: int) -> memoryview:
        return self._lock_free_read(lambda: self._read_located(index))

    def _lock_free_read(self, read: Callable[[], _Read]) -> _Read:
        """Run a read with no lock; run it again with writes held off if a truncation
        ran meanwhile (its counter odd or moved: the result may be shifted or short) or
        if it failed the way a racing rewrite can make it fail (a frame or a kernel's
        position check that no longer checks out). A failure under the lock is real."""
        before = self._truncations
        if not before & 1:
            try:
                found = read()
            except Exception as exc:
                frame_failed = isinstance(exc, CorruptionError) or (
                    isinstance(exc, ValueError) and not isinstance(exc, SegstoreError)
                )
                if not frame_failed and self._truncations == before:
                    raise  # out of range, closed, bad argument: the same under the lock
            else:
                if self._truncations == before:
                    return found
        with self._write_lock:
            return read()

    def _read_located(self, index: int) -> memoryview:
        segment, position = self._locate(index)
        payload = segment.map_reader().read(
            segment.offsets,
            segment.lengths,
            position,
            self._header_bytes,
            index,
            self._verify_reads,
        )
        if payload is None:
            view = segment.view()
            offset = int(segment.offsets[position])
            length = int(segment.lengths[position])
            status = kernels.verify_frame(view, offset, self._header_bytes, index, length)
            kernels.raise_for_frame_status(
                status or kernels.FRAME_OUT_OF_BOUNDS,
                segment.path,
                offset,
                index,
                segment=view,
                payload_bytes=length,
            )
        return payload  # type: ignore[return-value]

    def read_record(self, index: int) -> tuple[bytes, bytes]:
        """``(header, payload)`` of record ``index`` as raw ``bytes`` copies, CRC-checked
        like :meth:`read`; one compiled call on the common path."""
        record = self._read_path.read_copy(index)
        if record is not None:
            return record
        return self._lock_free_read(lambda: self._read_record_located(index))

    def _read_record_located(self, index: int) -> tuple[bytes, bytes]:
        segment, position = self._locate(index)
        record = segment.map_reader().read_copy(
            segment.offsets,
            segment.lengths,
            position,
            self._header_bytes,
            index,
            self._verify_reads,
        )
        if record is None:
            self._read_located(index)  # raises the precise CorruptionError
            raise AssertionError("unreachable: the frame did not check out")
        return record

    def header_raw(self, index: int) -> bytes:
        """The header of record ``index`` as its raw bytes (cheaper than :meth:`header`)."""
        return self._lock_free_read(lambda: self._header_raw_located(index))

    def _header_raw_located(self, index: int) -> bytes:
        segment, position = self._locate(index)
        h = self._header_bytes
        return segment.headers[position * h : (position + 1) * h].tobytes()

    def header(self, index: int) -> Any:
        """The header of record ``index`` as a structured numpy scalar."""
        dtype = self._require_dtype()
        raw = self._lock_free_read(lambda: self._header_raw_located(index))
        return np.frombuffer(raw, dtype)[0].copy()

    @overload
    def read_range(self, start: int, end: int) -> list[memoryview]: ...
    @overload
    def read_range(self, start: int, end: int, *, copy: Literal[False]) -> list[memoryview]: ...
    @overload
    def read_range(self, start: int, end: int, *, copy: Literal[True]) -> list[bytes]: ...

    def read_range(
        self, start: int, end: int, *, copy: bool = False
    ) -> list[memoryview] | list[bytes]:
        """Payloads of records ``[start, end)``, CRC-checked like :meth:`read`.

        Zero-copy views by default (see :meth:`read` for their lifetime); with ``copy``,
        ``bytes`` that outlive everything, which for records of a few hundred bytes is
        also the cheaper of the two in CPython.
        """
        return self._lock_free_read(lambda: self._read_range(start, end, copy))

    def _read_range(self, start: int, end: int, copy: bool) -> list[memoryview] | list[bytes]:
        parts: list[list[Any]] = []
        h = self._header_bytes
        for segment, lo, hi in self._spans(start, end):
            views = segment.map_reader().read_many(
                segment.offsets,
                segment.lengths,
                lo,
                hi,
                h,
                segment.first_index,
                self._verify_reads,
                copy,
            )
            if views is None:
                self._check_frames(segment, lo, hi, known_bad=True)
            else:
                parts.append(views)
        if len(parts) == 1:
            return parts[0]  # (most ranges lie in one segment: no copy of the list)
        return [view for part in parts for view in part]

    def payload_spans(self, start: int, end: int) -> list[PayloadSpan]:
        """Where the payloads of records ``[start, end)`` lie, one span per segment,
        after checking their CRCs like :meth:`read_range`; no payload is copied."""
        return self._lock_free_read(lambda: self._payload_spans(start, end))

    def _payload_spans(self, start: int, end: int) -> list[PayloadSpan]:
        spans = []
        h = self._header_bytes
        for segment, lo, hi in self._spans(start, end):
            if self._verify_reads:
                self._check_frames(segment, lo, hi)
            payloads = segment.offsets[lo:hi].astype(np.uint64) + np.uint64(FRAME_HEADER_BYTES + h)
            # A slice: it keeps the mapping alive after the segment releases its view.
            spans.append(
                PayloadSpan(
                    segment.first_index + lo, segment.view()[:], payloads, segment.lengths[lo:hi]
                )
            )
        return spans

    def _check_frames(self, segment: Segment, lo: int, hi: int, *, known_bad: bool = False) -> None:
        """Raise :class:`CorruptionError` (file, offset) for the first frame at positions
        ``[lo, hi)`` of ``segment`` that does not check out; with ``known_bad`` (a
        kernel already refused the span) raise even if no single check fails."""
        view = segment.view()
        offsets = segment.offsets[lo:hi]
        bad, status = kernels.verify_frames(
            view, offsets, segment.lengths[lo:hi], self._header_bytes, segment.first_index + lo
        )
        if bad >= 0 or known_bad:
            kernels.raise_for_frame_status(
                status or kernels.FRAME_OUT_OF_BOUNDS,
                segment.path,
                int(offsets[max(bad, 0)]),
                segment.first_index + lo + max(bad, 0),
                segment=view,
            )

    def headers(self, start: int, end: int) -> npt.NDArray[Any]:
        """Headers of records ``[start, end)`` as one structured array (a copy)."""
        dtype = self._require_dtype()
        h = self._header_bytes

        def lookup() -> npt.NDArray[np.uint8]:
            parts = [s.headers[lo * h : hi * h] for s, lo, hi in self._spans(start, end)]
            return np.concatenate(parts) if parts else np.empty(0, np.uint8)

        return self._lock_free_read(lookup).view(dtype)

    def payload_lengths(self, start: int, end: int) -> npt.NDArray[np.uint32]:
        """Payload sizes of records ``[start, end)`` without touching payloads."""

        def lookup() -> npt.NDArray[np.uint32]:
            parts = [segment.lengths[lo:hi] for segment, lo, hi in self._spans(start, end)]
            return np.concatenate(parts) if parts else np.empty(0, np.uint32)

        return self._lock_free_read(lookup)

    def _spans(self, start: int, end: int) -> list[tuple[Segment, int, int]]:
        """(segment, first position, end position) covering ``[start, end)``."""
        self._check_open()
        start = _as_index(start)
        end = _as_index(end)
        if start > end:
            raise InvalidArgumentError(f"range start {start} is after its end {end}")
        if start < self._first_index or end > self._last_index + 1:
            raise IndexOutOfRangeError(
                f"range [{start}, {end}) is outside the retained records "
                f"[{self._first_index}, {self._last_index + 1})"
            )
        spans: list[tuple[Segment, int, int]] = []
        if start == end:
            return spans
        k = bisect.bisect_right(self._firsts, start) - 1
        while start < end:
            segment = self._segments[k]
            hi = min(end, segment.last_index + 1)
            spans.append((segment, start - segment.first_index, hi - segment.first_index))
            start = hi
            k += 1
        return spans

    def _locate(self, index: int) -> tuple[Segment, int]:
        if self._closed:
            raise ClosedError("Aof is closed")
        index = _as_index(index)
        if not self._first_index <= index <= self._last_index:
            raise IndexOutOfRangeError(
                f"record {index} is outside the retained records "
                f"[{self._first_index}, {self._last_index}]"
            )
        segment = self._segments[-1]
        if index < segment.first_index:
            segment = self._segments[bisect.bisect_right(self._firsts, index) - 1]
        return segment, index - segment.first_index

    # -- truncation ----------------------------------------------------------------

    def truncate_before(self, index: int) -> None:
        """Drop records before ``index``; durable on return.

        Whole segments below ``index`` are deleted; ``index`` past the last record
        empties the Aof and the next append gets ``index``.
        """
        index = _as_index(index)
        if index < 1:
            raise IndexOutOfRangeError(f"record indices start at 1, not {index}")
        with self._commit.flush_exclusive(), self._write_lock:
            self._check_writable()
            if index <= self._first_index:
                return
            self._commit.flush_locked()
            self._write_meta(self._meta.with_changes(first_index=index))
            with self._changing_index():
                self._set_first_index(index)
                keep = [s for s in self._segments if s.last_index >= index]
                drop = self._segments[: len(self._segments) - len(keep)]
                if index > self._last_index:
                    drop, keep = self._segments, []
                    self._last_index = index - 1
                    self._commit.raise_to(index - 1)
                self._drop_segments(drop)
                self._set_segments(keep)

    def truncate_after(self, index: int) -> None:
        """Drop records after ``index``; durable on return.

        ``index`` may be ``first_index - 1`` to drop every record.
        """
        index = _as_index(index)
        with self._commit.flush_exclusive(), self._write_lock:
            self._check_writable()
            if not self._first_index - 1 <= index <= self._last_index:
                raise IndexOutOfRangeError(
                    f"truncate_after({index}) outside [{self._first_index - 1}, {self._last_index}]"
                )
            if index == self._last_index:
                return
            self._commit.flush_locked()
            keep = [s for s in self._segments if s.first_index <= index]
            drop = self._segments[len(keep) :]
            for segment in keep[-1:]:
                # Its sidecar now describes records that are gone. Recovery never trusts
                # the last segment's sidecar; the rollover removes it before a successor
                # exists (see _segment_with_room), which keeps this call cheap.
                segment.sidecar_trusted = False
            with self._changing_index():
                self._drop_segments(drop)
                self._set_segments(keep)
                self._last_index = index
                self._bump_epoch()  # commit point: records after index are dead
                if keep:
                    tail = keep[-1]
                    tail.cut(index - tail.first_index + 1)
                    if tail.write_fd is None:
                        tail.write_fd = self._io.open(tail.path, os.O_RDWR)
                    tail.sealed = False
            self._commit.lower(index)

    @contextlib.contextmanager
    def _changing_index(self) -> Iterator[None]:
        """Mark the index as changing for lock-free lookups (see :meth:`_lock_free_read`);
        an I/O error in the block fails the store stop, as the index may be half
        changed (a reopen rebuilds it from the files)."""
        self._truncations += 1
        try:
            yield
        except StorageIOError as exc:
            self._commit.fail(exc)
            raise
        finally:
            self._truncations += 1

    def _drop_segments(self, segments: list[Segment]) -> None:
        if not segments:
            return
        for segment in segments:
            self._remove_segment_files(segment)
            if segment in self._sealed_without_sidecar:
                self._sealed_without_sidecar.remove(segment)
        self._io.fsync_dir(self.path)

    def _remove_segment_files(self, segment: Segment) -> None:
        mapped = not segment.release()
        self._spare.discard(segment.sidecar_path)
        if mapped:
            # Views of it are alive: recycled or shrunk, the file would change under
            # them (or end before them: SIGBUS), so it is unlinked whole and its blocks
            # are freed when the last view goes.
            self._io.unlink(segment.path)
        else:
            self._spare.retire(segment.path)

    # -- checks --------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"Aof {self.path} is closed")

    def _check_writable(self) -> None:
        self._check_open()
        if self._readonly:
            raise InvalidArgumentError(f"Aof {self.path} was opened readonly")
        self._commit.check_failed()

    def _require_dtype(self) -> np.dtype[Any]:
        self._check_open()
        if self._meta.header_dtype is None:
            raise InvalidArgumentError(f"Aof {self.path} has no header dtype")
        return self._meta.header_dtype

    def _header_raw(self, header: Any) -> bytes:
        if header is None:
            return self._header_zero
        dtype = self._meta.header_dtype
        if dtype is None:
            raise InvalidArgumentError("this Aof has no header dtype; pass header=None")
        if isinstance(header, (bytes, bytearray, memoryview)):
            raw = bytes(header)
            if len(raw) != dtype.itemsize:
                raise InvalidArgumentError(
                    f"header has {len(raw)} bytes; the header dtype needs {dtype.itemsize}"
                )
            return raw
        try:
            row = np.array(header, dtype=dtype)
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError(f"header does not fit dtype {dtype}: {exc}") from None
        if row.shape != ():
            raise InvalidArgumentError(
                f"a record header is one {dtype} value, not an array of shape {row.shape}"
            )
        return row.tobytes()

    def _header_table(self, headers: Any, count: int) -> npt.NDArray[np.uint8]:
        h = self._header_bytes
        if headers is None:
            return np.zeros(count * h, np.uint8)
        dtype = self._meta.header_dtype
        if dtype is None:
            raise InvalidArgumentError("this Aof has no header dtype; pass headers=None")
        try:
            table = np.ascontiguousarray(headers, dtype=dtype)
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError(f"headers do not fit dtype {dtype}: {exc}") from None
        if table.shape != (count,):
            raise InvalidArgumentError(
                f"headers must have shape ({count},) to match the payloads, not {table.shape}"
            )
        return np.frombuffer(table, np.uint8)  # (a third of what view + reshape cost)

    def _scratch_of(self, size: int) -> bytearray:
        if len(self._scratch) < size:
            self._scratch = bytearray(max(size, 2 * len(self._scratch)))
        return self._scratch


_AOF_READ = Aof.read  # (as defined here: Aof.open binds the compiled read only for it)


def _unsigned_column(values: npt.ArrayLike, dtype: type[np.unsignedinteger[Any]], name: str) -> Any:
    """``values`` as a contiguous 1-d array of ``dtype``, refusing anything but
    integers that fit it (a plain cast would wrap or truncate them silently)."""
    if type(values) is np.ndarray and values.dtype == dtype and values.ndim == 1:
        return np.ascontiguousarray(values)  # (every value of the dtype fits it)
    try:
        column = np.asarray(values)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"{name} must be integers: {exc}") from None
    if column.ndim != 1:
        raise InvalidArgumentError(f"{name} must be a 1-d array, not shape {column.shape}")
    if len(column) and column.dtype.kind not in "iu":
        raise InvalidArgumentError(f"{name} must be integers, not {column.dtype}")
    if len(column) and (int(column.min()) < 0 or int(column.max()) > np.iinfo(dtype).max):
        raise InvalidArgumentError(f"{name} must lie in [0, {np.iinfo(dtype).max}]")
    return np.ascontiguousarray(column, dtype)


def _as_payload_list(payloads: Any) -> list[Payload]:
    if isinstance(payloads, (bytes, bytearray, memoryview, str)) or not isinstance(
        payloads, Sequence
    ):
        raise InvalidArgumentError(
            f"payloads must be a list or tuple of byte buffers, not {type(payloads).__name__}"
        )
    return list(payloads)


def _payload_view(payload: Payload) -> memoryview:
    if isinstance(payload, str):
        raise InvalidArgumentError("payload must be a bytes-like object, not str")
    try:
        view = memoryview(payload)
    except TypeError:
        raise InvalidArgumentError(
            f"payload must be a bytes-like object, not {type(payload).__name__}"
        ) from None
    if not view.c_contiguous:
        raise InvalidArgumentError("payload must be a contiguous buffer")
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


def _encode_meta(meta: Meta) -> bytes:
    try:
        return meta.encode()
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"user metadata must be JSON-serialisable: {exc}") from None


def _as_index(value: int) -> int:
    if isinstance(value, bool):
        raise InvalidArgumentError("a record index must be an integer, not a bool")
    try:
        return operator.index(value)
    except TypeError:
        raise InvalidArgumentError(
            f"a record index must be an integer, not {type(value).__name__}"
        ) from None


def _check_dtype(header_dtype: npt.DTypeLike | None) -> np.dtype[Any] | None:
    if header_dtype is None:
        return None
    try:
        dtype = np.dtype(header_dtype)
    except TypeError as exc:
        raise InvalidArgumentError(f"header_dtype is not a numpy dtype: {exc}") from None
    if dtype.hasobject:
        raise InvalidArgumentError("header_dtype may not contain Python objects")
    if dtype.itemsize == 0:
        return None
    return dtype


def _check_segment_bytes(segment_bytes: int) -> None:
    if isinstance(segment_bytes, bool) or not isinstance(segment_bytes, int):
        raise InvalidArgumentError("segment_bytes must be an integer")
    if not SEGMENT_BYTES_MIN <= segment_bytes <= SEGMENT_BYTES_MAX:
        raise InvalidArgumentError(
            f"segment_bytes must be in [{SEGMENT_BYTES_MIN}, {SEGMENT_BYTES_MAX}], "
            f"not {segment_bytes}"
        )


__all__ = ["SEGMENT_BYTES_DEFAULT", "Aof", "PayloadSpan", "SegmentInfo"]

"""Baseline log stores that segstore's Aof is measured against, plus an adapter for the Aof.

Every store here has the same small interface (the subset of ``segstore.aof.Aof`` the
workloads need), so each workload is written once:

* ``open(path)`` classmethod; ``path`` is a directory, created if missing.
* ``append(payload) -> int`` and ``append_batch(payloads) -> int`` (index of the last record).
* ``sync() -> int``: blocks until everything appended is durable; returns the durable index.
* ``read(i)``: the payload of record ``i`` (any bytes-like object).
* ``read_range(a, b)``: payloads of records ``[a, b)`` (the store's best bulk-read path).
* ``first_index`` / ``last_index`` properties. Indices are dense and start at 1; an empty
  log has ``last_index == first_index - 1``.
* ``truncate_before(i)``: drop records ``< i``; ``truncate_after(i)``: drop records ``> i``.
  Both are durable when they return.
* ``close()``; stores are also context managers.

Stores:

``RawLog``
    "The floor of what plain Python does": one file of u32-length-prefixed records written
    with one ``os.write`` per batch and ``os.fdatasync`` on ``sync()``; reads through a
    read-only mmap and a numpy uint64 offset table. Reopen rebuilds the table by walking
    the length prefixes in a plain Python loop. ``truncate_before`` copies the retained
    tail into a new file (write temp, fsync, rename, fsync dir), which costs O(retained
    bytes); ``truncate_after`` is ``ftruncate`` + ``fsync``. No CRCs, no torn-tail
    detection beyond "a length that runs past end of file".
``LmdbLog``
    py-lmdb, ``sync=True`` and default flags, big-endian u64 keys, one write transaction per
    batch (``putmulti(append=True)``), durable on commit. Reads reuse one read transaction
    until the next write.
``SqliteLog``
    sqlite3, WAL, ``synchronous=FULL``, ``log(idx INTEGER PRIMARY KEY, data BLOB)``, one
    transaction per batch, truncation as ``DELETE``.
``SegstoreLog``
    Thin pass-through adapter over ``segstore.aof.Aof``. Besides the common interface it
    offers ``read_range_views`` (the zero-copy scan) and ``index_bytes`` (in-memory index
    size), which the workloads use only when a store has them.
"""

from __future__ import annotations

import itertools
import mmap
import os
import sqlite3
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

Buffer = bytes | bytearray | memoryview


@runtime_checkable
class LogLike(Protocol):
    """The interface every benchmarked store offers."""

    @property
    def first_index(self) -> int: ...

    @property
    def last_index(self) -> int: ...

    def append(self, payload: bytes) -> int: ...

    def append_batch(self, payloads: Sequence[bytes]) -> int: ...

    def sync(self) -> int: ...

    def read(self, index: int) -> Buffer: ...

    def read_range(self, start: int, end: int) -> Sequence[Buffer]: ...

    def truncate_before(self, index: int) -> None: ...

    def truncate_after(self, index: int) -> None: ...

    def close(self) -> None: ...


StoreFactory = Callable[[Path], LogLike]


class _ContextMixin:
    def close(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def __enter__(self) -> _ContextMixin:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_range(store: LogLike, index: int) -> None:
    if not store.first_index <= index <= store.last_index:
        raise IndexError(
            f"index {index} outside [{store.first_index}, {store.last_index}] in {store!r}"
        )


# --------------------------------------------------------------------------------------
# RawLog
# --------------------------------------------------------------------------------------

_RAW_MAGIC = b"RAWLOG01"
_RAW_HEADER = struct.Struct("<8sQ")  # magic, first index
_RAW_HEADER_BYTES = _RAW_HEADER.size  # 16
_LEN = struct.Struct("<I")
_RAW_NAME = "raw.log"


class RawLog(_ContextMixin):
    """One file of ``u32 length + payload`` records; see the module docstring."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path / _RAW_NAME
        self._fd = -1
        self._mm: mmap.mmap | None = None
        self._mapped_bytes = 0
        # _offsets[k] = file offset of record first+k; _offsets[count] = end of data.
        self._offsets: npt.NDArray[np.uint64] = np.zeros(1024, dtype=np.uint64)
        # The same table as a memoryview: indexing it yields Python ints ~5x faster than
        # numpy scalar indexing. Refreshed whenever _offsets is replaced.
        self._offv = self._offsets.data
        self._count = 0
        self._first = 1
        self._durable = 0

    # -- lifecycle -----------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> RawLog:
        self = cls(Path(path))
        self.path.mkdir(parents=True, exist_ok=True)
        if self._file.exists():
            self._load()
        else:
            self._create(self._file, 1)
            _fsync_dir(self.path)
            self._open_fd()
            self._offsets[0] = _RAW_HEADER_BYTES
        self._durable = self.last_index
        return self

    def _create(self, file: Path, first: int) -> int:
        fd = os.open(file, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, _RAW_HEADER.pack(_RAW_MAGIC, first))
            os.fsync(fd)
        finally:
            os.close(fd)
        return first

    def _open_fd(self) -> None:
        self._fd = os.open(self._file, os.O_RDWR)
        os.lseek(self._fd, 0, os.SEEK_END)

    def _load(self) -> None:
        """Rebuild the offset table by walking the length prefixes in plain Python."""
        with open(self._file, "rb") as f:
            data = f.read()
        magic, first = _RAW_HEADER.unpack_from(data, 0)
        if magic != _RAW_MAGIC:
            raise ValueError(f"{self._file}: not a RawLog (magic {magic!r})")
        self._first = first
        offsets = [_RAW_HEADER_BYTES]
        pos = _RAW_HEADER_BYTES
        size = len(data)
        unpack = _LEN.unpack_from
        while pos + 4 <= size:
            (n,) = unpack(data, pos)
            end = pos + 4 + n
            if end > size:
                break  # torn tail
            pos = end
            offsets.append(pos)
        self._offsets = np.array(offsets, dtype=np.uint64)
        self._offv = self._offsets.data
        self._count = len(offsets) - 1
        if pos != size:
            with open(self._file, "r+b") as f:
                f.truncate(pos)
                os.fsync(f.fileno())
        self._open_fd()

    def close(self) -> None:
        if self._mm is not None:
            self._mm.close()
            self._mm = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # -- indices -------------------------------------------------------------------------
    @property
    def first_index(self) -> int:
        return self._first

    @property
    def last_index(self) -> int:
        return self._first + self._count - 1

    # -- writes --------------------------------------------------------------------------
    def append(self, payload: bytes) -> int:
        return self.append_batch((payload,))

    def append_batch(self, payloads: Sequence[bytes]) -> int:
        n = len(payloads)
        if n == 0:
            return self.last_index
        parts: list[bytes] = []
        lengths = np.empty(n, dtype=np.uint64)
        pack = _LEN.pack
        for k, p in enumerate(payloads):
            ln = len(p)
            lengths[k] = ln + 4
            parts.append(pack(ln))
            parts.append(p)
        buf = b"".join(parts)
        written = os.write(self._fd, buf)
        if written != len(buf):
            raise OSError(f"short write to {self._file}: {written} of {len(buf)}")
        need = self._count + n + 1
        if need > len(self._offsets):
            grown = np.zeros(max(need, 2 * len(self._offsets)), dtype=np.uint64)
            grown[: self._count + 1] = self._offsets[: self._count + 1]
            self._offsets = grown
            self._offv = grown.data
        base = self._offsets[self._count]
        np.cumsum(lengths, out=self._offsets[self._count + 1 : need])
        self._offsets[self._count + 1 : need] += base
        self._count += n
        return self.last_index

    def sync(self) -> int:
        os.fdatasync(self._fd)
        self._durable = self.last_index
        return self._durable

    # -- reads ---------------------------------------------------------------------------
    def _map(self, end: int) -> mmap.mmap:
        mm = self._mm
        if mm is None or end > self._mapped_bytes:
            if mm is not None:
                mm.close()
            size = os.fstat(self._fd).st_size
            mm = mmap.mmap(self._fd, size, access=mmap.ACCESS_READ)
            self._mm, self._mapped_bytes = mm, size
        return mm

    def read(self, index: int) -> bytes:
        k = index - self._first
        if not 0 <= k < self._count:
            _check_range(self, index)
        offv = self._offv
        start = offv[k] + 4
        end = offv[k + 1]
        mm = self._mm if end <= self._mapped_bytes else None
        if mm is None:
            mm = self._map(end)
        return mm[start:end]

    def read_range(self, start: int, end: int) -> list[bytes]:
        if start >= end:
            return []
        _check_range(self, start)
        _check_range(self, end - 1)
        k0, k1 = start - self._first, end - self._first
        offs = self._offsets[k0 : k1 + 1].tolist()
        mm = self._map(offs[-1])
        return [mm[a + 4 : b] for a, b in itertools.pairwise(offs)]

    # -- truncation ----------------------------------------------------------------------
    def truncate_before(self, index: int) -> None:
        """Drop records ``< index`` by copying the retained tail into a new file."""
        if index <= self._first:
            return
        if index > self.last_index + 1:
            raise IndexError(f"truncate_before({index}) past last index {self.last_index}")
        k = index - self._first
        src_start = int(self._offsets[k])
        src_end = int(self._offsets[self._count])
        tmp = self.path / (_RAW_NAME + ".tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, _RAW_HEADER.pack(_RAW_MAGIC, index))
            pos, left = src_start, src_end - src_start
            while left > 0:
                n = os.copy_file_range(self._fd, fd, left, pos)
                if n <= 0:
                    raise OSError(f"copy_file_range stalled copying {self._file}")
                pos += n
                left -= n
            os.fsync(fd)
        finally:
            os.close(fd)
        self.close()
        os.rename(tmp, self._file)
        _fsync_dir(self.path)
        shift = np.uint64(src_start - _RAW_HEADER_BYTES)
        remaining = self._count - k
        self._offsets = self._offsets[k : self._count + 1] - shift
        self._offv = self._offsets.data
        self._count = remaining
        self._first = index
        self._open_fd()

    def truncate_after(self, index: int) -> None:
        """Drop records ``> index`` with ftruncate + fsync."""
        if index >= self.last_index:
            return
        if index < self._first - 1:
            raise IndexError(f"truncate_after({index}) below first index {self._first}")
        keep = index - self._first + 1
        end = int(self._offsets[keep])
        if self._mm is not None:
            self._mm.close()
            self._mm, self._mapped_bytes = None, 0
        os.ftruncate(self._fd, end)
        os.fsync(self._fd)
        os.lseek(self._fd, 0, os.SEEK_END)
        self._count = keep
        self._durable = min(self._durable, self.last_index)


# --------------------------------------------------------------------------------------
# LmdbLog
# --------------------------------------------------------------------------------------

_KEY = struct.Struct(">Q")
_MAP_SIZE = 1 << 36  # 64 GiB of address space; the file only grows as used


class LmdbLog(_ContextMixin):
    """py-lmdb with ``sync=True``; one write transaction per batch."""

    def __init__(self, path: Path) -> None:
        import lmdb

        self.path = path
        self._env: Any = lmdb.open(str(path), map_size=_MAP_SIZE, sync=True)
        self._rtxn: Any = None
        self._first = 1
        self._last = 0
        with self._env.begin() as txn:
            cur = txn.cursor()
            if cur.first():
                self._first = _KEY.unpack(cur.key())[0]
                cur.last()
                self._last = _KEY.unpack(cur.key())[0]

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> LmdbLog:
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        return cls(p)

    def close(self) -> None:
        self._drop_reader()
        if self._env is not None:
            self._env.close()
            self._env = None

    @property
    def first_index(self) -> int:
        return self._first

    @property
    def last_index(self) -> int:
        return self._last

    def _drop_reader(self) -> None:
        if self._rtxn is not None:
            self._rtxn.abort()
            self._rtxn = None

    def append(self, payload: bytes) -> int:
        self._drop_reader()
        i = self._last + 1
        with self._env.begin(write=True) as txn:
            txn.put(_KEY.pack(i), payload, append=True)
        self._last = i
        return i

    def append_batch(self, payloads: Sequence[bytes]) -> int:
        if not payloads:
            return self._last
        self._drop_reader()
        first = self._last + 1
        pack = _KEY.pack
        items = [(pack(first + k), p) for k, p in enumerate(payloads)]
        with self._env.begin(write=True) as txn:
            txn.cursor().putmulti(items, append=True)
        self._last = first + len(payloads) - 1
        return self._last

    def sync(self) -> int:
        # Every commit is already synced (sync=True); nothing to wait for.
        return self._last

    def _reader(self) -> Any:
        if self._rtxn is None:
            self._rtxn = self._env.begin()
        return self._rtxn

    def read(self, index: int) -> bytes:
        value = self._reader().get(_KEY.pack(index))
        if value is None:
            _check_range(self, index)
            raise KeyError(f"record {index} missing from {self.path}")
        return bytes(value)

    def read_range(self, start: int, end: int) -> list[bytes]:
        if start >= end:
            return []
        _check_range(self, start)
        _check_range(self, end - 1)
        cur = self._reader().cursor()
        cur.set_key(_KEY.pack(start))
        out: list[bytes] = []
        append = out.append
        for _, value in cur:
            append(value)
            if len(out) == end - start:
                break
        return out

    def truncate_before(self, index: int) -> None:
        if index <= self._first:
            return
        self._drop_reader()
        stop = min(index, self._last + 1)
        with self._env.begin(write=True) as txn:
            cur = txn.cursor()
            if cur.set_range(_KEY.pack(self._first)):
                key_stop = _KEY.pack(stop)
                while cur.key() < key_stop and cur.delete():
                    pass
        self._first = index
        self._last = max(self._last, index - 1)

    def truncate_after(self, index: int) -> None:
        if index >= self._last:
            return
        self._drop_reader()
        with self._env.begin(write=True) as txn:
            cur = txn.cursor()
            if cur.set_range(_KEY.pack(index + 1)):
                while cur.delete():
                    pass
        self._last = max(index, self._first - 1)


# --------------------------------------------------------------------------------------
# SqliteLog
# --------------------------------------------------------------------------------------


class SqliteLog(_ContextMixin):
    """sqlite3 in WAL mode with ``synchronous=FULL``; one transaction per batch."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(path / "log.db", isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS log (idx INTEGER PRIMARY KEY, data BLOB)")
        lo, hi = self._db.execute("SELECT MIN(idx), MAX(idx) FROM log").fetchone()
        # An empty table forgets its first index; a real store would persist it.
        self._first = 1 if lo is None else int(lo)
        self._last = 0 if hi is None else int(hi)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> SqliteLog:
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        return cls(p)

    def close(self) -> None:
        self._db.close()

    @property
    def first_index(self) -> int:
        return self._first

    @property
    def last_index(self) -> int:
        return self._last

    def append(self, payload: bytes) -> int:
        i = self._last + 1
        self._db.execute("INSERT INTO log VALUES (?, ?)", (i, payload))  # autocommit
        self._last = i
        return i

    def append_batch(self, payloads: Sequence[bytes]) -> int:
        if not payloads:
            return self._last
        first = self._last + 1
        db = self._db
        db.execute("BEGIN")
        try:
            rows = zip(itertools.count(first), payloads, strict=False)
            db.executemany("INSERT INTO log VALUES (?, ?)", rows)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        self._last = first + len(payloads) - 1
        return self._last

    def sync(self) -> int:
        # Every commit is already durable (WAL + synchronous=FULL).
        return self._last

    def read(self, index: int) -> bytes:
        row = self._db.execute("SELECT data FROM log WHERE idx = ?", (index,)).fetchone()
        if row is None:
            _check_range(self, index)
            raise KeyError(f"record {index} missing from {self.path}")
        data: bytes = row[0]
        return data

    def read_range(self, start: int, end: int) -> list[bytes]:
        if start >= end:
            return []
        cur = self._db.execute(
            "SELECT data FROM log WHERE idx >= ? AND idx < ? ORDER BY idx", (start, end)
        )
        return [r[0] for r in cur]

    def truncate_before(self, index: int) -> None:
        if index <= self._first:
            return
        self._db.execute("DELETE FROM log WHERE idx < ?", (index,))  # autocommit, durable
        self._first = index
        self._last = max(self._last, index - 1)

    def truncate_after(self, index: int) -> None:
        if index >= self._last:
            return
        self._db.execute("DELETE FROM log WHERE idx > ?", (index,))
        self._last = max(index, self._first - 1)


# --------------------------------------------------------------------------------------
# SegstoreLog
# --------------------------------------------------------------------------------------


def segstore_import_error() -> str | None:
    """None if ``segstore.aof.Aof`` imports, else a one-line reason."""
    try:
        from segstore.aof import Aof  # noqa: F401
    except Exception as e:  # ImportError, or a half-built extension raising anything
        return f"{type(e).__name__}: {e}"
    return None


class SegstoreLog(_ContextMixin):
    """Pass-through adapter over ``segstore.aof.Aof`` with the common interface."""

    #: segment capacity used by the benchmarks (None: the Aof's default).
    segment_bytes: int | None = None

    def __init__(self, aof: Any) -> None:
        self._aof = aof
        self.append = aof.append
        self.append_batch = aof.append_batch
        self.sync = aof.sync
        self.read = aof.read
        self.truncate_before = aof.truncate_before
        self.truncate_after = aof.truncate_after

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> SegstoreLog:
        from segstore.aof import Aof

        kwargs: dict[str, Any] = {}
        if cls.segment_bytes is not None:
            kwargs["segment_bytes"] = cls.segment_bytes
        return cls(Aof.open(path, **kwargs))

    @property
    def first_index(self) -> int:
        return int(self._aof.first_index)

    @property
    def last_index(self) -> int:
        return int(self._aof.last_index)

    def read_range(self, start: int, end: int) -> Sequence[Buffer]:
        """Records ``[start, end)`` as ``bytes``, like every baseline's read_range.

        ``Aof.read_range(copy=True)``: the like-for-like comparison. The zero-copy form
        (a memoryview per record) costs more per record in CPython than copying a
        256-byte payload; docs/PERFORMANCE.md reports both.
        """
        result: Sequence[Buffer] = self._aof.read_range(start, end, copy=True)
        return result

    def read_range_views(self, start: int, end: int) -> list[memoryview]:
        """Records ``[start, end)`` as zero-copy memoryviews (``Aof.read_range`` default).

        segstore only: W4 reports it as an extra row, outside the like-for-like target.
        """
        views: list[memoryview] = self._aof.read_range(start, end)
        return views

    def index_bytes(self) -> int:
        """Bytes held by the in-memory index: every segment's offsets, lengths, headers."""
        return sum(
            s.offsets.nbytes + s.lengths.nbytes + s.headers.nbytes for s in self._aof._segments
        )

    @property
    def header_bytes(self) -> int:
        """Bytes of the header dtype per record (0: the benchmarks use no header dtype)."""
        return int(self._aof._header_bytes)

    def __len__(self) -> int:
        return len(self._aof)

    def close(self) -> None:
        self._aof.close()


STORES: dict[str, Callable[[str | os.PathLike[str]], LogLike]] = {
    "raw": RawLog.open,
    "segstore": SegstoreLog.open,
    "lmdb": LmdbLog.open,
    "sqlite": SqliteLog.open,
}

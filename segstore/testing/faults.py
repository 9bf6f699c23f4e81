"""Fault injection and crash simulation behind the Aof's file-operation seam.

:class:`FaultyIO` is a :class:`segstore.aof.fileio.FileIO` that really performs every
operation on the real file system, and besides:

* fails chosen operations with the :class:`~segstore.errors.StorageIOError` that
  ``FileIO`` itself would raise (errno and path attached): EIO on fsync, ENOSPC on
  write, failing renames and opens;
* makes ``pwrite`` write fewer bytes than asked (legal POSIX behaviour);
* counts every call (fdatasyncs, fsyncs, pwrites, ...), so tests can check that group
  commit really groups;
* simulates a power loss with :meth:`FaultyIO.crash`: every byte written since the
  file's last successful ``fdatasync``/``fsync`` reverts to its earlier content, and
  every directory change (creation, rename, unlink) since the directory's last
  ``fsync_dir`` is undone. Optionally a random subset of the unsynced 4 KiB pages (and
  a random prefix of each directory's unsynced changes) survives, as when the kernel
  writes pages back out of order before the power goes;
* simulates a process death (``kill -9``) with :meth:`FaultyIO.survivor`: the dying
  process's I/O is frozen while its unsynced writes stay in the "page cache", still
  exposed to a later :meth:`crash` through the returned instance.

To revert, it records the old bytes (via ``pread``) before each write: fine for tests,
not for production. Unlinks are renames to hidden backup names (hidden from
:meth:`listdir`) that are really deleted when the directory is fsync'd. The model
assumes every file that exists when it first sees it is durable.
"""

from __future__ import annotations

import errno as errno_codes
import itertools
import mmap
import os
import random
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from segstore.aof.fileio import FileIO
from segstore.errors import StorageIOError

PAGE_BYTES = 4096
"""Granularity of :meth:`FaultyIO.crash` with ``keep_unsynced_fraction``."""

BACKUP_PREFIX = ".faultyio-"
"""Name prefix of the hidden files that stand for unlinked or replaced files."""

OPERATIONS = frozenset(
    {"open", "pwrite", "fdatasync", "fsync", "fsync_dir", "rename", "unlink", "set_size"}
)
"""Operation names that fault rules and crash points can target."""

_backup_names = itertools.count()


def _io_error(code: int, path: str, what: str | None = None) -> StorageIOError:
    """The error ``FileIO`` raises for an ``OSError`` with ``code`` on ``path``."""
    return StorageIOError(code, what or os.strerror(code), path)


@dataclass
class _FileState:
    """What of one file (an inode) is not durable yet."""

    synced_size: int
    fd: int = -1  # private writable descriptor (a dup), opened at the first change
    undo: list[tuple[int, bytes]] = field(default_factory=list)  # (offset, old bytes)


@dataclass
class _DirOp:
    """One directory change since the directory's last fsync."""

    kind: str  # "create", "rename" or "unlink"
    path: str  # created / unlinked path, or rename destination
    source: str = ""  # rename source
    backup: str | None = None  # hidden name now holding the unlinked / replaced file


class _Disk:
    """Durability state shared by every FaultyIO that models one machine."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.files: dict[tuple[int, int], _FileState] = {}
        self.journals: dict[str, list[_DirOp]] = {}

    def reset(self) -> None:
        """Forget everything: what is on disk now is durable."""
        for state in self.files.values():
            if state.fd >= 0:
                os.close(state.fd)
        self.files.clear()
        self.journals.clear()


@dataclass
class _Rule:
    ops: frozenset[str]
    path_substring: str | None
    errno: int
    times: int | None  # None: forever
    after: int
    crash: bool = False
    keep_unsynced_fraction: float = 0.0
    seed: int | None = None
    seen: int = 0
    fired: int = 0

    def matches(self, op: str, path: str) -> bool:
        if op not in self.ops:
            return False
        if self.path_substring is not None and self.path_substring not in path:
            return False
        self.seen += 1
        if self.seen <= self.after:
            return False
        if self.times is not None and self.fired >= self.times:
            return False
        self.fired += 1
        return True


@contextmanager
def _raising(path: str) -> Iterator[None]:
    """Turn ``OSError`` into the ``StorageIOError`` FileIO would raise."""
    try:
        yield
    except StorageIOError:
        raise
    except OSError as exc:
        raise StorageIOError(exc.errno or errno_codes.EIO, exc.strerror or str(exc), path) from exc


def _parent(path: str) -> str:
    return os.path.dirname(os.path.abspath(path))


class FaultyIO(FileIO):
    """A :class:`FileIO` with injectable faults, call counters and simulated crashes.

    Thread-safe: the Aof calls it from its flusher and preallocation threads too.
    ``real_sync``: really call ``fdatasync``/``fsync`` (slower, realistic timing);
    without it syncs only update the durability model, which is all crashes need.
    """

    def __init__(self, *, real_sync: bool = True, _disk: _Disk | None = None) -> None:
        self.real_sync = real_sync
        self._disk = _disk or _Disk()
        self._lock = self._disk.lock
        self._fd_keys: dict[int, tuple[int, int]] = {}
        self._rules: list[_Rule] = []
        self._short_writes: tuple[int, str | None] | None = None
        self._frozen = False
        self._crash_at: tuple[int, float, int | None] | None = None
        self._ops = 0
        self.calls: Counter[str] = Counter()
        """Calls per operation name (``"fdatasync"``, ``"pwrite"``, ...), failed ones too."""
        self.calls_by_path: Counter[tuple[str, str]] = Counter()
        """Calls per (operation name, path)."""

    # -- configuration ---------------------------------------------------------------

    def fail(
        self,
        ops: str | set[str] | frozenset[str],
        path_substring: str | None = None,
        errno: int = errno_codes.EIO,
        times: int | None = 1,
        after: int = 0,
    ) -> None:
        """Make operations ``ops`` on paths containing ``path_substring`` raise.

        The first ``after`` matching calls succeed, the next ``times`` raise
        ``StorageIOError(errno)`` without doing anything (``times=None``: all of them).
        Operation names are those of :data:`OPERATIONS`; ``"open"`` covers
        :meth:`read_file` too.
        """
        names = frozenset({ops} if isinstance(ops, str) else ops)
        unknown = names - OPERATIONS
        if unknown:
            raise ValueError(f"unknown operations {sorted(unknown)}")
        with self._lock:
            self._rules.append(_Rule(names, path_substring, errno, times, after))

    def fail_fsync(
        self,
        path_substring: str | None = None,
        errno: int = errno_codes.EIO,
        times: int | None = 1,
        after: int = 0,
        *,
        include_dir: bool = False,
    ) -> None:
        """Make ``fdatasync`` and ``fsync`` (and ``fsync_dir`` if asked) fail."""
        ops = {"fdatasync", "fsync"} | ({"fsync_dir"} if include_dir else set())
        self.fail(ops, path_substring, errno, times, after)

    def fail_write(
        self,
        path_substring: str | None = None,
        errno: int = errno_codes.ENOSPC,
        times: int | None = 1,
        after: int = 0,
    ) -> None:
        """Make ``pwrite`` (and so ``zero_range`` and ``write_all``) fail."""
        self.fail("pwrite", path_substring, errno, times, after)

    def fail_rename(
        self,
        path_substring: str | None = None,
        errno: int = errno_codes.EIO,
        times: int | None = 1,
        after: int = 0,
    ) -> None:
        """Make ``rename`` fail (matched against the destination path)."""
        self.fail("rename", path_substring, errno, times, after)

    def fail_open(
        self,
        path_substring: str | None = None,
        errno: int = errno_codes.EIO,
        times: int | None = 1,
        after: int = 0,
    ) -> None:
        """Make ``open`` and ``read_file`` fail."""
        self.fail("open", path_substring, errno, times, after)

    def short_writes(self, max_bytes: int | None, path_substring: str | None = None) -> None:
        """Make each ``pwrite`` write at most ``max_bytes`` (None: stop doing so)."""
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        with self._lock:
            self._short_writes = None if max_bytes is None else (max_bytes, path_substring)

    def clear_faults(self) -> None:
        """Remove every fault rule, short-write setting and pending crash point."""
        with self._lock:
            self._rules.clear()
            self._short_writes = None
            self._crash_at = None

    def crash_before(
        self,
        ops: str | set[str] | frozenset[str],
        path_substring: str | None = None,
        after: int = 0,
        *,
        keep_unsynced_fraction: float = 0.0,
        seed: int | None = None,
    ) -> None:
        """Crash (see :meth:`crash`) just before the ``after + 1``-th matching call."""
        names = frozenset({ops} if isinstance(ops, str) else ops)
        if names - OPERATIONS:
            raise ValueError(f"unknown operations {sorted(names - OPERATIONS)}")
        rule = _Rule(
            names,
            path_substring,
            errno_codes.EIO,
            1,
            after,
            crash=True,
            keep_unsynced_fraction=keep_unsynced_fraction,
            seed=seed,
        )
        with self._lock:
            self._rules.append(rule)

    def crash_at_op(
        self, op_number: int, *, keep_unsynced_fraction: float = 0.0, seed: int | None = None
    ) -> None:
        """Crash just before the ``op_number``-th (0-based) counted operation from now.

        Counted operations are those of :data:`OPERATIONS`; :attr:`op_count` tells
        how many a workload performs, so a test can crash at every point of it.
        """
        with self._lock:
            self._crash_at = (self._ops + op_number, keep_unsynced_fraction, seed)

    # -- observations ----------------------------------------------------------------

    @property
    def op_count(self) -> int:
        """Counted operations (:data:`OPERATIONS`) performed or attempted so far."""
        return self._ops

    @property
    def fdatasync_count(self) -> int:
        """``fdatasync`` calls so far."""
        return self.calls["fdatasync"]

    @property
    def fsync_count(self) -> int:
        """``fsync`` calls so far (files; see :attr:`fsync_dir_count` for directories)."""
        return self.calls["fsync"]

    @property
    def fsync_dir_count(self) -> int:
        """``fsync_dir`` calls so far."""
        return self.calls["fsync_dir"]

    @property
    def pwrite_count(self) -> int:
        """``pwrite`` calls so far."""
        return self.calls["pwrite"]

    def count(self, op: str, path_substring: str | None = None) -> int:
        """Calls of ``op`` so far on paths containing ``path_substring``."""
        with self._lock:
            if path_substring is None:
                return self.calls[op]
            return sum(
                n
                for (name, path), n in self.calls_by_path.items()
                if name == op and path_substring in path
            )

    @property
    def short_write_count(self) -> int:
        """``pwrite`` calls that :meth:`short_writes` cut short."""
        return self.calls["short_pwrite"]

    @property
    def crashed(self) -> bool:
        """Whether this instance was frozen by :meth:`crash` or :meth:`survivor`."""
        return self._frozen

    # -- crashes ---------------------------------------------------------------------

    def crash(self, keep_unsynced_fraction: float = 0.0, seed: int | None = None) -> None:
        """Power loss: freeze this I/O and revert the files to what was durable.

        Every later call raises ``StorageIOError(EIO)`` (closing descriptors still
        works, so the dead Aof can release its lock). With ``keep_unsynced_fraction``
        > 0, each unsynced 4 KiB page keeps its new content with that probability and a
        random prefix of each directory's unsynced changes survives.
        """
        rng = random.Random(seed)
        with self._lock:
            self._frozen = True
            disk = self._disk
            for state in disk.files.values():
                self._revert_file(state, keep_unsynced_fraction, rng)
            for ops in disk.journals.values():
                keep = 0
                if keep_unsynced_fraction > 0 and ops:
                    keep = rng.randint(0, len(ops)) if rng.random() < keep_unsynced_fraction else 0
                for op in ops[:keep]:
                    self._commit_dir_op(op)
                for op in reversed(ops[keep:]):
                    self._undo_dir_op(op)
            disk.reset()

    def survivor(self) -> FaultyIO:
        """Process death (``kill -9``): freeze this I/O, keep its unsynced writes.

        Returns a fresh FaultyIO for the next process on the same "machine": what the
        dead process never synced is still not durable, so a later :meth:`crash` on
        the returned instance reverts it.
        """
        with self._lock:
            self._frozen = True
        return FaultyIO(real_sync=self.real_sync, _disk=self._disk)

    @staticmethod
    def _revert_file(state: _FileState, keep: float, rng: random.Random) -> None:
        if state.fd < 0:
            return
        kept: dict[int, bool] = {}
        for offset, old in reversed(state.undo):
            if keep <= 0:
                os.pwrite(state.fd, old, offset)
                continue
            position = offset
            end = offset + len(old)
            while position < end:
                page = position // PAGE_BYTES
                stop = min(end, (page + 1) * PAGE_BYTES)
                if page not in kept:
                    kept[page] = rng.random() < keep
                if not kept[page]:
                    piece = old[position - offset : stop - offset]
                    os.pwrite(state.fd, piece, position)
                position = stop
        if os.fstat(state.fd).st_size != state.synced_size:
            os.ftruncate(state.fd, state.synced_size)
        state.undo.clear()

    def _undo_dir_op(self, op: _DirOp) -> None:
        if op.kind == "create":
            if os.path.lexists(op.path):
                os.unlink(op.path)
        elif op.kind == "rename":
            os.rename(op.path, op.source)
            if op.backup is not None:
                os.rename(op.backup, op.path)
        elif op.kind == "unlink" and op.backup is not None:
            os.rename(op.backup, op.path)

    def _commit_dir_op(self, op: _DirOp) -> None:
        if op.backup is None:
            return
        try:
            info = os.stat(op.backup)
        except FileNotFoundError:
            return
        os.unlink(op.backup)
        if info.st_nlink <= 1:
            state = self._disk.files.pop((info.st_dev, info.st_ino), None)
            if state is not None and state.fd >= 0:
                os.close(state.fd)

    # -- bookkeeping -----------------------------------------------------------------

    def _enter(self, op: str, path: str) -> None:
        """Count ``op``; raise if frozen, a crash point or a fault rule says so."""
        if self._frozen:
            raise _io_error(errno_codes.EIO, path, "simulated crash: the I/O is frozen")
        self.calls[op] += 1
        self.calls_by_path[(op, path)] += 1
        if op not in OPERATIONS:
            return
        number = self._ops
        self._ops += 1
        if self._crash_at is not None and number >= self._crash_at[0]:
            _, keep, seed = self._crash_at
            self._crash_at = None
            self.crash(keep, seed)
            raise _io_error(errno_codes.EIO, path, f"simulated crash before {op}")
        for rule in self._rules:
            if rule.matches(op, path):
                if rule.crash:
                    self.crash(rule.keep_unsynced_fraction, rule.seed)
                    raise _io_error(errno_codes.EIO, path, f"simulated crash before {op}")
                raise _io_error(rule.errno, path)

    def _state(self, key: tuple[int, int], size: int) -> _FileState:
        state = self._disk.files.get(key)
        if state is None:
            state = self._disk.files[key] = _FileState(synced_size=size)
        return state

    def _writable_state(self, fd: int, path: str) -> _FileState:
        """The state of ``fd``'s file, with a private descriptor to revert through."""
        info = os.fstat(fd)
        key = (info.st_dev, info.st_ino)
        self._fd_keys.setdefault(fd, key)
        state = self._state(key, info.st_size)
        if state.fd < 0:
            with _raising(path):
                # reopen read-write: the caller's descriptor may be write-only
                state.fd = os.open(f"/proc/self/fd/{fd}", os.O_RDWR | os.O_CLOEXEC)
        return state

    def _journal(self, path: str) -> list[_DirOp]:
        return self._disk.journals.setdefault(_parent(path), [])

    @staticmethod
    def _backup_name(path: str) -> str:
        return os.path.join(_parent(path), f"{BACKUP_PREFIX}{os.getpid()}-{next(_backup_names)}")

    # -- FileIO overrides ------------------------------------------------------------

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        """``os.open``; creations are undone by a crash unless the directory was synced."""
        with self._lock:
            self._enter("open", path)
            existed = os.path.lexists(path)
            with _raising(path):
                fd = os.open(path, (flags & ~os.O_TRUNC) | os.O_CLOEXEC, mode)
            try:
                info = os.fstat(fd)
                key = (info.st_dev, info.st_ino)
                self._fd_keys[fd] = key
                self._state(key, 0 if not existed else info.st_size)
                if not existed:
                    self._journal(path).append(_DirOp("create", os.path.abspath(path)))
                if flags & os.O_TRUNC and info.st_size:
                    self._resize(fd, 0, path)
            except BaseException:
                os.close(fd)
                self._fd_keys.pop(fd, None)
                raise
            return fd

    def close(self, fd: int, path: str) -> None:
        """Close a descriptor (works even after a crash, so the lock is released)."""
        with self._lock:
            self._fd_keys.pop(fd, None)
            self.calls["close"] += 1
        with _raising(path):
            os.close(fd)

    def pwrite(self, fd: int, data: bytes | bytearray | memoryview, offset: int, path: str) -> int:
        """One ``pwrite`` (perhaps cut short); the old bytes are kept for a crash."""
        with self._lock:
            self._enter("pwrite", path)
            view = memoryview(data).cast("B")
            if self._short_writes is not None:
                limit, substring = self._short_writes
                if (substring is None or substring in path) and len(view) > limit:
                    view = view[:limit]
                    self.calls["short_pwrite"] += 1
            state = self._writable_state(fd, path)
            with _raising(path):
                old = os.pread(state.fd, len(view), offset)
                state.undo.append((offset, old))
                return os.pwrite(fd, view, offset)

    def pread(self, fd: int, size: int, offset: int, path: str) -> bytes:
        """One ``pread``."""
        self._check_alive(path)
        return super().pread(fd, size, offset, path)

    def fdatasync(self, fd: int, path: str) -> None:
        """Make the file's data durable (in the model; really too if ``real_sync``)."""
        self._sync("fdatasync", fd, path)

    def fsync(self, fd: int, path: str) -> None:
        """Make the file's data and metadata durable (not its directory entry)."""
        self._sync("fsync", fd, path)

    def _sync(self, op: str, fd: int, path: str) -> None:
        with self._lock:
            self._enter(op, path)
            with _raising(path):
                info = os.fstat(fd)
            key = (info.st_dev, info.st_ino)
            state = self._disk.files.get(key)
            mark = len(state.undo) if state is not None else 0
            size = info.st_size
        if self.real_sync:
            with _raising(path):
                if op == "fdatasync":
                    os.fdatasync(fd)
                else:
                    os.fsync(fd)
        with self._lock:
            if self._frozen:
                raise _io_error(errno_codes.EIO, path, "simulated crash during sync")
            if state is not None and self._disk.files.get(key) is state:
                del state.undo[:mark]
                state.synced_size = size

    def fsync_dir(self, path: str) -> None:
        """Make the directory's creations, renames and unlinks durable."""
        with self._lock:
            self._enter("fsync_dir", path)
            journal = self._journal(os.path.join(path, "x"))
            mark = len(journal)
        if self.real_sync:
            super().fsync_dir(path)
        with self._lock:
            if self._frozen:
                raise _io_error(errno_codes.EIO, path, "simulated crash during sync")
            for op in journal[:mark]:
                self._commit_dir_op(op)
            del journal[:mark]

    def rename(self, src: str, dst: str) -> None:
        """Atomically replace ``dst`` with ``src``; undone by a crash unless dir-synced."""
        with self._lock:
            self._enter("rename", dst)
            backup = None
            if os.path.lexists(dst):
                backup = self._backup_name(dst)
                with _raising(dst):
                    os.link(dst, backup)
            try:
                with _raising(dst):
                    os.rename(src, dst)
            except BaseException:
                if backup is not None:
                    os.unlink(backup)
                raise
            self._journal(dst).append(
                _DirOp("rename", os.path.abspath(dst), os.path.abspath(src), backup)
            )

    def unlink(self, path: str) -> None:
        """Remove a file (kept under a hidden name until the directory is synced)."""
        with self._lock:
            self._enter("unlink", path)
            if not os.path.lexists(path):
                return
            backup = self._backup_name(path)
            with _raising(path):
                os.rename(path, backup)
            self._journal(path).append(_DirOp("unlink", os.path.abspath(path), backup=backup))

    def listdir(self, path: str) -> list[str]:
        """Names in a directory, without the hidden backups."""
        self._check_alive(path)
        return [n for n in super().listdir(path) if not n.startswith(BACKUP_PREFIX)]

    def read_file(self, path: str) -> bytes:
        """A whole (small) file's contents."""
        with self._lock:
            self._enter("open", path)
        return super().read_file(path)

    def file_size(self, fd: int, path: str) -> int:
        """Current size of an open file."""
        self._check_alive(path)
        return super().file_size(fd, path)

    def set_size(self, fd: int, size: int, path: str) -> None:
        """``ftruncate``; a crash restores the size (and bytes) that were durable."""
        with self._lock:
            self._enter("set_size", path)
            self._resize(fd, size, path)

    def _resize(self, fd: int, size: int, path: str) -> None:
        state = self._writable_state(fd, path)
        with _raising(path):
            current = os.fstat(fd).st_size
            if size < current:
                state.undo.append((size, os.pread(state.fd, current - size, size)))
            os.ftruncate(fd, size)

    def map_readonly(self, fd: int, size: int, path: str) -> mmap.mmap:
        """A shared read-only mapping (refused after a crash)."""
        self._check_alive(path)
        return super().map_readonly(fd, size, path)

    def _check_alive(self, path: str) -> None:
        if self._frozen:
            raise _io_error(errno_codes.EIO, path, "simulated crash: the I/O is frozen")


__all__ = ["BACKUP_PREFIX", "OPERATIONS", "PAGE_BYTES", "FaultyIO"]

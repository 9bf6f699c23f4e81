"""The one seam every file operation of the Aof goes through.

Production code uses :class:`FileIO` (thin wrappers over ``os``); tests substitute
:class:`segstore.testing.faults.FaultyIO` to inject EIO on fsync, ENOSPC, short writes
and crashes that drop whatever was never made durable. Errors surface as
:class:`segstore.errors.StorageIOError` carrying errno and path.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from segstore.errors import StorageIOError, StoreLockedError

ZERO_FILL_CHUNK_BYTES = 1 << 20


def _storage_error(exc: OSError, path: str) -> StorageIOError:
    return StorageIOError(exc.errno or errno.EIO, exc.strerror or str(exc), path)


@contextmanager
def _os_errors(path: str) -> Iterator[None]:
    try:
        yield
    except StorageIOError:
        raise
    except OSError as exc:
        raise _storage_error(exc, path) from exc


class FileIO:
    """File operations with paths attached to every error.

    Methods take the path a descriptor belongs to, so an error can name it and fault
    injection can target one file.
    """

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        """``os.open`` with ``O_CLOEXEC``."""
        with _os_errors(path):
            return os.open(path, flags | os.O_CLOEXEC, mode)

    def close(self, fd: int, path: str) -> None:
        """Close a descriptor."""
        with _os_errors(path):
            os.close(fd)

    def pwrite(self, fd: int, data: bytes | bytearray | memoryview, offset: int, path: str) -> int:
        """One ``pwrite``; may write fewer bytes than asked (callers loop)."""
        try:  # (no context manager on the two per-append calls: it costs ~1 us each)
            return os.pwrite(fd, data, offset)
        except OSError as exc:
            raise _storage_error(exc, path) from exc

    def pread(self, fd: int, size: int, offset: int, path: str) -> bytes:
        """One ``pread``."""
        with _os_errors(path):
            return os.pread(fd, size, offset)

    def fdatasync(self, fd: int, path: str) -> None:
        """Make a file's data durable."""
        try:
            os.fdatasync(fd)
        except OSError as exc:
            raise _storage_error(exc, path) from exc

    def fsync(self, fd: int, path: str) -> None:
        """Make a file's data and metadata durable."""
        with _os_errors(path):
            os.fsync(fd)

    def fsync_dir(self, path: str) -> None:
        """Make a directory's entries (creations, renames, unlinks) durable."""
        with _os_errors(path):
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def rename(self, src: str, dst: str) -> None:
        """Atomically replace ``dst`` with ``src``."""
        with _os_errors(dst):
            os.rename(src, dst)

    def unlink(self, path: str) -> None:
        """Remove a file; a missing file is not an error."""
        with _os_errors(path), suppress(FileNotFoundError):
            os.unlink(path)

    def listdir(self, path: str) -> list[str]:
        """Names in a directory."""
        with _os_errors(path):
            return os.listdir(path)

    def read_file(self, path: str) -> bytes:
        """A whole (small) file's contents."""
        with _os_errors(path), open(path, "rb") as handle:
            return handle.read()

    def file_size(self, fd: int, path: str) -> int:
        """Current size of an open file."""
        with _os_errors(path):
            return os.fstat(fd).st_size

    def zero_range(self, fd: int, start: int, end: int, path: str) -> None:
        """Write zero bytes over ``[start, end)``."""
        zeros = bytes(min(ZERO_FILL_CHUNK_BYTES, max(end - start, 0)))
        offset = start
        while offset < end:
            chunk = memoryview(zeros)[: min(len(zeros), end - offset)]
            offset += self.pwrite(fd, chunk, offset, path)

    def set_size(self, fd: int, size: int, path: str) -> None:
        """Extend (sparsely) or cut a file to ``size`` bytes."""
        with _os_errors(path):
            os.ftruncate(fd, size)

    def map_readonly(self, fd: int, size: int, path: str) -> mmap.mmap:
        """A shared read-only mapping of ``[0, size)``.

        Read-only on purpose: a store through a mapping into a sparse file turns a full
        disk into SIGBUS; all writes go through ``pwrite``.
        """
        with _os_errors(path):
            return mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)

    def lock(self, path: str) -> int:
        """Take the store's exclusive lock; raise StoreLockedError if someone holds it."""
        fd = self.open(path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreLockedError(path) from None
        except OSError as exc:
            os.close(fd)
            raise StorageIOError(exc.errno or errno.EIO, str(exc), path) from exc
        return fd

    def unlock(self, fd: int, path: str) -> None:
        """Release the lock taken by :meth:`lock`."""
        self.close(fd, path)

    def write_all(
        self, fd: int, data: bytes | bytearray | memoryview, offset: int, path: str
    ) -> None:
        """``pwrite`` until every byte is written (short writes are legal)."""
        view = memoryview(data)
        while view:
            written = self.pwrite(fd, view, offset, path)
            if written <= 0:
                raise StorageIOError(errno.EIO, "pwrite wrote nothing", path)
            view = view[written:]
            offset += written

    def replace_file(self, directory: str, name: str, data: bytes, *, durable: bool = True) -> None:
        """Crash-safe replace: write temp, fsync, rename, fsync the directory.

        ``durable=False`` skips both fsyncs, for files whose readers detect a torn or
        missing copy and fall back (sidecars: a crash can only cost a rescan).
        """
        final = os.path.join(directory, name)
        temp = final + ".tmp"
        fd = self.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            self.write_all(fd, data, 0, temp)
            if durable:
                self.fsync(fd, temp)
        finally:
            self.close(fd, temp)
        self.rename(temp, final)
        if durable:
            self.fsync_dir(directory)

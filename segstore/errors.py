"""The one exception hierarchy of segstore.

Every error segstore raises derives from :class:`SegstoreError` and, where one fits,
from a builtin too (``ValueError`` for bad arguments, ``OSError`` for I/O), so callers
can catch either.
"""

from __future__ import annotations

import errno as errno_codes
import os


class SegstoreError(Exception):
    """Root of every error segstore raises."""


class InvalidArgumentError(SegstoreError, ValueError):
    """An argument has the wrong type or value; nothing was changed."""


class RecordTooLargeError(InvalidArgumentError):
    """A record does not fit in a segment (or exceeds the configured maximum)."""


class IndexOutOfRangeError(InvalidArgumentError, IndexError):
    """A record index lies outside the retained range."""


class ClosedError(SegstoreError, ValueError):
    """An operation on a store that was already closed."""


class NotAStoreError(SegstoreError):
    """A path is not a segstore directory (or not the kind of store expected)."""


class FormatVersionError(SegstoreError):
    """A file was written by a format version this build does not read."""


class StoreLockedError(SegstoreError, OSError):
    """The store is already open, in this process or another one."""

    def __init__(self, path: str) -> None:
        super().__init__(
            errno_codes.EWOULDBLOCK,
            f"store is already open (lock held on {path}); close the other user first",
            path,
        )


class CorruptionError(SegstoreError):
    """Data that was durable does not check out: names the file, offset and expectation."""

    def __init__(self, path: str | os.PathLike[str], offset: int, what: str) -> None:
        self.path = os.fspath(path)
        self.offset = offset
        self.what = what
        super().__init__(f"corruption in {self.path} at offset {offset}: {what}")


class StorageIOError(SegstoreError, OSError):
    """An I/O call failed; carries the errno and the file it concerned."""


class FailedStateError(StorageIOError):
    """The store failed stop after an I/O error; it accepts no more writes.

    A failed fsync leaves the kernel's page cache state unknown (see PostgreSQL's
    "fsyncgate"), so no retry can claim the data is safe: reopen the store to recover.
    """


class PartitionError(InvalidArgumentError):
    """An entry's partition header is missing, foreign, or out of sequence."""


class BackpressureError(SegstoreError):
    """A partition has too many entries pending or lags too far: retry later.

    Attributes ``partition_id``, ``pending`` (entries handed in, not yet applied) and
    ``lag`` (raft indices between the commit index and the partition's oldest
    unapplied entry) say which bound was crossed.
    """

    def __init__(self, partition_id: int, pending: int, lag: int, limit: str) -> None:
        self.partition_id = partition_id
        self.pending = pending
        self.lag = lag
        super().__init__(
            f"partition {partition_id} is backed up ({limit}; {pending} entries pending, "
            f"lagging {lag} raft indices); retry once it catches up"
        )


class PartitionFailedError(SegstoreError):
    """A partition's state machine raised in ``apply``; the partition is stopped.

    ``partition_id`` names it, ``partition_index`` the entry that failed and
    ``__cause__`` is the exception ``apply`` raised. Other partitions go on.
    """

    def __init__(self, partition_id: int, partition_index: int, cause: BaseException) -> None:
        self.partition_id = partition_id
        self.partition_index = partition_index
        super().__init__(
            f"partition {partition_id} stopped: apply of partition index "
            f"{partition_index} raised {type(cause).__name__}: {cause}"
        )
        self.__cause__ = cause


__all__ = [
    "BackpressureError",
    "ClosedError",
    "CorruptionError",
    "FailedStateError",
    "FormatVersionError",
    "IndexOutOfRangeError",
    "InvalidArgumentError",
    "NotAStoreError",
    "PartitionError",
    "PartitionFailedError",
    "RecordTooLargeError",
    "SegstoreError",
    "StorageIOError",
    "StoreLockedError",
]


class ClusterError(SegstoreError):
    """A multi-node cluster (``segstore.cluster``) could not do what was asked."""


class InsecureBindError(ClusterError, ValueError):
    """A node was asked to listen on a non-loopback address without a password.

    The Raft transport exchanges pickles, which a peer can use to run code: bind
    127.0.0.1 (the default), or set a password (pysyncobj's encryption, which needs
    the ``cryptography`` package) before listening anywhere else.
    """


class TruncationRefusedError(ClusterError):
    """The Raft host was asked to replace or drop log entries at or below the commit
    index. Raft never changes committed entries, so the node stops instead (fail-stop)
    rather than lose them; ``index`` is the entry and ``commit_index`` the commit
    index it would have undone."""

    def __init__(self, index: int, commit_index: int, detail: str) -> None:
        self.index = index
        self.commit_index = commit_index
        super().__init__(
            f"refusing to truncate the log at raft index {index}: entries up to "
            f"{commit_index} are committed ({detail}); the node stops (fail-stop) - "
            "inspect the data directory and the peers' logs before restarting it"
        )


class SubmitError(ClusterError):
    """A submission was not confirmed applied: the node failed, closed, or the
    submission timed out. Its outcome is unknown, but its request id makes sure it
    is applied at most once; submitting the payload again makes a new request."""


__all__ += ["ClusterError", "InsecureBindError", "SubmitError", "TruncationRefusedError"]

"""A :class:`~segstore.raft.host.RaftHost` over pysyncobj 0.3.17.

pysyncobj is a Raft engine that keeps its log in a *journal* object reached through
its module-level ``createJournal`` factory, and talks through a configurable transport
class. This module maps both onto segstore (docs/CLUSTER.md has the reasoning):

:class:`StoreJournal` is the journal, over a
:class:`~segstore.raft.segmented_store.SegmentedLogStore`:

* **Positions.** pysyncobj addresses the journal by 0-based list position
  (``journal[0]`` is its first entry, ``journal[-1]`` the last) and slices whole tails
  (``journal[k:]``). Position ``k`` is raft index ``start + k``; a slice is a lazy
  :class:`_EntrySlice` read from the store in batches of :data:`READ_BATCH_ENTRIES`,
  materialised only when pysyncobj cuts it for a message.
* **Entries.** pysyncobj entries are ``(command, index, term)``. A command of ours
  (a regular command queued by :meth:`_SegstoreSyncObj.submit_value`: the type byte,
  then the value, no pickle) becomes an app_log entry whose value is exactly the
  ``encode_entry`` value, so the store routes it to its partition; the command is
  rebuilt from the value when read. pysyncobj's
  own commands (its no-op, membership and version changes) are stored verbatim as
  ``custom`` (no-op, version) or ``conf`` (membership) entries, of no partition.
* **Truncation.** pysyncobj calls ``deleteEntriesFrom`` whenever an append request
  overlaps its log, even when the entries it would remove equal the incoming ones,
  committed ones included. Here ``deleteEntriesFrom`` only lowers the *visible* end,
  never below the commit index, and removes nothing; the ``add`` calls that follow
  compare each entry with the stored one: same term, it is kept as it is; a different
  term is a real conflict, and only then is the store cut, by ``write_at``. A conflict
  at or below the commit index raises :class:`~segstore.errors.TruncationRefusedError`
  and puts the node into fail-stop.
* **Term and vote** live in :class:`~segstore.raft.host.FileStateMgr` and are durable
  (fsync) before ``setCurrentTerm`` returns, that is before pysyncobj sends the
  ``request_vote`` or ``response_vote`` that depends on them.
* **Commit index** is kept monotone here (pysyncobj's own can move backwards), and
  saved at most every :data:`COMMIT_SAVE_INTERVAL_S`, never above the durable index.
* **Compaction** is the host's, not pysyncobj's (which pickles the whole ``SyncObj``
  and keeps two entries: switched off, ``deleteEntriesTo`` refused). Position 0 is an
  *anchor*: the host moves it up to ``min(node watermark, commit - reserved tail,
  handed off, applied)`` on the tick thread and compacts the store below it in the
  background. The membership as of the anchor is saved in the state file first.
* **Snapshots**: a follower behind the anchor gets, through pysyncobj's own snapshot
  messages, a :class:`SnapshotTransfer` (which stands in for its ``Serializer``)
  shipping a ``SegmentedStateMachine`` snapshot in objects; the follower installs it
  with ``save_logical_snp_obj`` + ``apply_snapshot`` and its journal becomes the
  snapshot's anchor alone (the ``clear()`` pysyncobj then calls is expected).

:class:`GroupCommitTransport` is the TCP transport with group commit: while the journal
holds appends that are not durable, every outgoing message waits in an outbox; once per
tick the host flushes the store (one fdatasync) and then sends the outbox, in order.
Nothing leaves a node before what it acknowledges is durable, and a follower that
received many append requests in one poll pays one fsync for all of them.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import pickle
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final, Generic, TypeVar

import numpy as np
import pysyncobj.syncobj as _syncobj_module  # type: ignore[import-untyped]
from pysyncobj import SyncObj, SyncObjConf
from pysyncobj.config import FAIL_REASON, SERIALIZER_STATE  # type: ignore[import-untyped]
from pysyncobj.journal import Journal  # type: ignore[import-untyped]
from pysyncobj.pipe_notifier import PipeNotifier  # type: ignore[import-untyped]
from pysyncobj.transport import TCPTransport  # type: ignore[import-untyped]

from segstore.errors import ClusterError, InvalidArgumentError, TruncationRefusedError
from segstore.raft.host import DoneCallback, FailedCallback, FileStateMgr, HostStatus, RaftHost
from segstore.raft.log_entry import LogEntry, LogValType
from segstore.raft.segmented_state_machine import SegmentedStateMachine
from segstore.raft.segmented_store import SegmentedLogStore
from segstore.raft.state_machine import Snapshot
from segstore.raft.state_mgr import ClusterConfig, ServerConfig

logger = logging.getLogger(__name__)

PYSYNCOBJ_VERSION: Final = "0.3.17"
"""The pysyncobj release this adapter was written and tested against (pinned)."""

READ_BATCH_ENTRIES: Final = 512
"""Entries an :class:`_EntrySlice` reads from the store at a time."""

RECENT_ENTRIES_MAX: Final = 16_384
"""Newest commands kept in memory, so sending fresh entries reads no store."""

COMMIT_SAVE_INTERVAL_S: Final = 0.2
"""Shortest time between two saves of the commit index (it is a hint on restart)."""

RESERVED_LOG_ITEMS: Final = 20_000
"""Committed entries kept before the commit index when compacting (NuRaft's
``reserved_log_items``): a member that far behind still catches up from the log."""

COMPACTION_INTERVAL_S: Final = 1.0
"""Shortest time between two compactions."""

STATUS_INTERVAL_S: Final = 0.02
"""Shortest time between two status snapshots taken on the tick thread."""

_JOURNAL_PREFIX: Final = "segstore-journal:"
_SNAPSHOT_PREFIX: Final = "segstore-snapshot:"
_Handed = TypeVar("_Handed")

# pysyncobj's command types (``_COMMAND_TYPE`` in pysyncobj/syncobj.py).
_REGULAR: Final = 0
_NO_OP: Final = 1
_MEMBERSHIP: Final = 2
_VERSION: Final = 3

_CONF = LogValType.conf
_CUSTOM = LogValType.custom
_APP_LOG = LogValType.app_log

PysyncobjEntry = tuple[bytes, int, int]
"""A pysyncobj journal entry: ``(command, raft index, term)``."""

_ANCHOR_COMMAND: Final = bytes((_NO_OP,))
"""The command shown for a snapshot's anchor entry (its own command is not kept)."""


def _apply_membership(members: set[str], command: bytes) -> None:
    """Apply one pysyncobj membership command (``['add'|'rem', address, node]``)."""
    try:
        request = pickle.loads(command[1:])
        kind, address = request[0], str(request[1])
    except Exception as exc:
        raise ClusterError(f"undecodable membership command: {exc}") from exc
    if kind == "add":
        members.add(address)
    elif kind == "rem":
        members.discard(address)


# -- the journal factory -------------------------------------------------------------


class _Handoff(Generic[_Handed]):
    """Objects handed to pysyncobj through a file-name argument it passes to a factory:
    :meth:`register` names one; the patched factory gets it back with :meth:`take`."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._pending: dict[str, _Handed] = {}
        self._lock = threading.Lock()

    def register(self, item: _Handed) -> str:
        """A file name under which the factory's next call gets ``item``."""
        token = f"{self._prefix}{id(item)}:{time.monotonic_ns()}"
        with self._lock:
            self._pending[token] = item
        return token

    def owns(self, name: object) -> bool:
        """Whether ``name`` is one of this handoff's file names."""
        return isinstance(name, str) and name.startswith(self._prefix)

    def take(self, name: str) -> _Handed:
        """The item registered as ``name`` (once); ClusterError if there is none."""
        with self._lock:
            item = self._pending.pop(name, None)
        if item is None:
            raise ClusterError(f"nothing of segstore's is registered as {name!r}")
        return item

    def discard(self, name: str) -> None:
        """Forget ``name`` if the factory never took it."""
        with self._lock:
            self._pending.pop(name, None)


# -- the journal factory -------------------------------------------------------------

_journals: _Handoff[StoreJournal] = _Handoff(_JOURNAL_PREFIX)
_original_create_journal: Callable[[str | None], Any] = _syncobj_module.createJournal


def _create_journal(journal_file: str | None = None) -> Any:
    """pysyncobj's ``createJournal``, serving a registered :class:`StoreJournal` for
    the ``segstore-journal:<token>`` file names and pysyncobj's own journals otherwise."""
    if _journals.owns(journal_file):
        return _journals.take(journal_file)  # type: ignore[arg-type]
    return _original_create_journal(journal_file)


_syncobj_module.createJournal = _create_journal


def register_journal(journal: StoreJournal) -> str:
    """The ``journalFile`` name under which pysyncobj's next ``createJournal`` call
    gets ``journal`` (pass it as ``SyncObjConf(journalFile=...)``)."""
    return _journals.register(journal)


_transfers: _Handoff[SnapshotTransfer] = _Handoff(_SNAPSHOT_PREFIX)
_original_serializer: Callable[..., Any] = _syncobj_module.Serializer


def _create_serializer(file_name: str | None, *args: Any) -> Any:
    """pysyncobj's ``Serializer`` class, serving a registered :class:`SnapshotTransfer`
    for ``fullDumpFile="segstore-snapshot:<token>"``."""
    if _transfers.owns(file_name):
        return _transfers.take(file_name)  # type: ignore[arg-type]
    return _original_serializer(file_name, *args)


_syncobj_module.Serializer = _create_serializer


def register_transfer(transfer: SnapshotTransfer) -> str:
    """The ``fullDumpFile`` name under which pysyncobj's next ``Serializer`` is
    ``transfer``."""
    return _transfers.register(transfer)


# -- entries -------------------------------------------------------------------------


_REGULAR_PREFIX: Final = bytes((_REGULAR,))


def _command_of_value(value: bytes) -> bytes:
    """The pysyncobj command of one of our app_log values: the type byte, then the
    value itself (no pickle: pysyncobj only reads a command's first byte, and our
    override of its apply ignores regular commands)."""
    return _REGULAR_PREFIX + value


def _entry_of_command(command: bytes, term: int) -> LogEntry:
    """The store entry of a pysyncobj command."""
    if not isinstance(command, bytes) or not command:
        raise ClusterError(f"pysyncobj handed the journal a {type(command).__name__} command")
    kind = command[0]
    if kind == _REGULAR:
        return LogEntry(term, command[1:], _APP_LOG)
    if kind == _MEMBERSHIP:
        return LogEntry(term, command, _CONF)
    if kind in (_NO_OP, _VERSION):
        return LogEntry(term, command, _CUSTOM)
    raise ClusterError(f"unknown pysyncobj command type {kind}")


def _command_of_entry(entry: LogEntry) -> bytes:
    if entry.val_type is _APP_LOG:
        return _command_of_value(entry.value)
    return entry.value


class _EntrySlice(Sequence[PysyncobjEntry]):
    """Journal entries ``[low, high)`` by raft index, read lazily in batches."""

    __slots__ = ("_high", "_journal", "_low")

    def __init__(self, journal: StoreJournal, low: int, high: int) -> None:
        self._journal = journal
        self._low = low
        self._high = max(low, high)

    def __len__(self) -> int:
        return self._high - self._low

    def __getitem__(self, item: Any) -> Any:
        count = self._high - self._low
        if isinstance(item, slice):
            start, stop, step = item.indices(count)
            if step != 1:
                return list(self)[item]
            return _EntrySlice(self._journal, self._low + start, self._low + stop)
        if item < 0:
            item += count
        if not 0 <= item < count:
            raise IndexError(f"journal slice position {item} outside [0, {count})")
        return self._journal.entry(self._low + item)

    def __iter__(self) -> Iterator[PysyncobjEntry]:
        low = self._low
        while low < self._high:
            high = min(self._high, low + READ_BATCH_ENTRIES)
            yield from self._journal.entries(low, high)
            low = high

    def __reversed__(self) -> Iterator[PysyncobjEntry]:
        high = self._high
        while high > self._low:
            low = max(self._low, high - READ_BATCH_ENTRIES)
            yield from reversed(self._journal.entries(low, high))
            high = low

    def __reduce__(self) -> tuple[Any, ...]:
        # pysyncobj puts slices into messages: they travel as plain lists.
        return (list, (list(self),))


# -- the journal ---------------------------------------------------------------------


class StoreJournal(Journal):  # type: ignore[misc]
    """pysyncobj's journal over a :class:`SegmentedLogStore` (module docstring)."""

    def __init__(
        self,
        store: SegmentedLogStore,
        state: FileStateMgr,
        *,
        snapshot: tuple[int, int] | None = None,
        initial_members: Sequence[str] = (),
    ) -> None:
        self._store = store
        self._state = state
        self._lock = threading.RLock()
        store_start = store.start_index()
        # Position 0 is the *anchor*: the entry just before the ones pysyncobj may send
        # (it reads its index and term as prevLogIdx/prevLogTerm). After a compaction
        # it is the store's first entry; after a snapshot install the store starts
        # empty at S + 1, and the anchor is the snapshot's (S, term), held here.
        self._anchor_term: int | None = None
        if snapshot is not None and snapshot[0] == store_start - 1 and snapshot[0] >= 1:
            self._start = snapshot[0]
            self._anchor_term = snapshot[1]
        else:
            self._start = store_start
        self._stored_last = store.next_slot() - 1
        self._tail = self._stored_last  # the visible end pysyncobj sees
        self._commit = min(state.commit_index(), self._stored_last)
        if self._start > 1:
            # Everything at or below the anchor was compacted or snapshotted: committed.
            self._commit = max(self._commit, self._start)
        self._expect_clear = False
        saved = state.members()
        self._members_base: tuple[int, frozenset[str]] = (
            saved if saved is not None else (0, frozenset(initial_members))
        )
        self._conf: dict[int, bytes] = self._scan_conf_entries()
        self._commit_saved = self._commit
        self._commit_saved_at = 0.0
        self._dirty = False
        self._recent: OrderedDict[int, PysyncobjEntry] = OrderedDict()
        self.failure: BaseException | None = None
        """The error that stopped this journal (fail-stop), or None."""
        self.counters: dict[str, int] = {
            "flushes": 0,
            "appended": 0,
            "skipped_matching": 0,
            "deferred_deletes": 0,
            "truncations": 0,
            "refused_truncations": 0,
        }
        self.on_truncate: Callable[[int], None] | None = None
        """Called with the raft index a real conflict truncated the log from."""

    def _scan_conf_entries(self) -> dict[int, bytes]:
        """The membership commands stored after the saved membership's index."""
        conf: dict[int, bytes] = {}
        low = max(self._store.start_index(), self._members_base[0] + 1)
        high = self._stored_last + 1
        while low < high:
            end = min(high, low + 4096)
            headers, values = self._store.read_records(low, end)
            for k in np.flatnonzero(headers["val_type"] == int(_CONF)).tolist():
                conf[low + k] = values[k]
            low = end
        return conf

    # -- what the host reads -----------------------------------------------------------

    @property
    def start_index(self) -> int:
        """Raft index of position 0, the anchor (pysyncobj's first journal entry)."""
        return self._start

    def members_at(self, index: int) -> frozenset[str]:
        """The voting members (addresses) as of raft ``index``: the saved membership
        plus the membership commands up to ``index``."""
        base_index, members = self._members_base
        if index < base_index:
            raise ClusterError(f"the membership at {index} is older than the saved {base_index}")
        current = set(members)
        for idx in sorted(i for i in self._conf if i <= index):
            _apply_membership(current, self._conf[idx])
        return frozenset(current)

    def compact_to(self, index: int) -> bool:
        """Move the anchor up to raft ``index`` (tick thread only: positions shift).
        The membership as of ``index`` is made durable first when it changed; the
        caller then compacts the store below ``index``. False if nothing moved."""
        with self._lock:
            self._check_ok()
            if index <= self._start or index > min(self._stored_last, self._commit):
                return False
            members = self.members_at(index)
            if members != self._members_base[1]:
                self._state.save_members(index, sorted(members))
            self._members_base = (index, members)
            for idx in [i for i in self._conf if i <= index]:
                del self._conf[idx]
            self._start = index
            self._anchor_term = None
            for stale in [i for i in self._recent if i < index]:
                del self._recent[stale]
            return True

    def has_entry(self, index: int, term: int) -> bool:
        """The journal holds raft ``index`` with ``term`` (or compacted past it)."""
        with self._lock:
            if index < self._start:
                return True
            if index > self._stored_last:
                return False
            return self._term_of(index) == term

    def _term_of(self, index: int) -> int:
        if index == self._start and self._anchor_term is not None:
            return self._anchor_term
        return self._store.term_at(index)

    def reset_to_snapshot(self, index: int, term: int, members: frozenset[str]) -> None:
        """A snapshot up to ``index`` was installed in the store: the journal is its
        anchor alone, and pysyncobj's ``clear()`` that follows is expected."""
        with self._lock:
            self._start = index
            self._anchor_term = term
            self._stored_last = self._store.next_slot() - 1
            if self._stored_last != index:
                raise ClusterError(
                    f"after installing a snapshot at {index} the store ends at {self._stored_last}"
                )
            self._tail = index
            self._commit = max(self._commit, index)
            self._dirty = False
            self._recent.clear()
            self._conf.clear()
            self._members_base = (index, members)
            self._expect_clear = True

    @property
    def dirty(self) -> bool:
        """Entries were appended since the last :meth:`flush`."""
        return self._dirty

    @property
    def commit_index(self) -> int:
        """The highest commit index pysyncobj reported (monotone)."""
        return self._commit

    @property
    def last_index(self) -> int:
        """The visible end of the log."""
        return self._tail

    def flush(self) -> None:
        """Make every appended entry durable: the group-commit point (one fdatasync)."""
        with self._lock:
            if not self._dirty:
                return
            self._store.flush()
            self._dirty = False
            self.counters["flushes"] += 1

    def save_commit_index(self, force: bool = False) -> None:
        """Save the commit index if it moved (at most every COMMIT_SAVE_INTERVAL_S),
        never above the durable index: on restart it is pysyncobj's starting point."""
        now = time.monotonic()
        if not force and now - self._commit_saved_at < COMMIT_SAVE_INTERVAL_S:
            return
        commit = min(self._commit, self._store.last_durable_index())
        if commit > self._commit_saved:
            self._state.save_commit_index(commit)
            self._commit_saved = commit
        self._commit_saved_at = now

    def entry(self, index: int) -> PysyncobjEntry:
        """The pysyncobj entry at raft ``index``."""
        cached = self._recent.get(index)
        if cached is not None:
            return cached
        with self._lock:
            if not self._start <= index <= self._stored_last:
                raise IndexError(f"raft index {index} is outside the journal")
            if index == self._start and self._anchor_term is not None:
                return (_ANCHOR_COMMAND, index, self._anchor_term)
            entry = self._store.entry_at(index)
            if entry is None:
                raise IndexError(f"raft index {index} is not in the store")
            return (_command_of_entry(entry), index, entry.term)

    def entries(self, low: int, high: int) -> list[PysyncobjEntry]:
        """The pysyncobj entries ``[low, high)``."""
        recent = self._recent
        if low in recent and (high - 1) in recent:
            try:
                return [recent[index] for index in range(low, high)]
            except KeyError:
                pass
        with self._lock:
            anchor: list[PysyncobjEntry] = []
            if low == self._start and self._anchor_term is not None and low < high:
                anchor = [(_ANCHOR_COMMAND, low, self._anchor_term)]
                low += 1
            entries = self._store.log_entries(low, high)
        if entries is None:
            raise IndexError(f"raft indices [{low}, {high}) are not all in the store")
        return anchor + [
            (_command_of_entry(entry), low + k, entry.term) for k, entry in enumerate(entries)
        ]

    def _remember(self, entry: PysyncobjEntry) -> None:
        self._recent[entry[1]] = entry
        if len(self._recent) > RECENT_ENTRIES_MAX:
            self._recent.popitem(last=False)

    def _forget_from(self, index: int) -> None:
        for stale in [i for i in self._recent if i >= index]:
            del self._recent[stale]

    def _check_ok(self) -> None:
        if self.failure is not None:
            raise ClusterError(f"the journal stopped after an error: {self.failure}")

    # -- pysyncobj's Journal interface -------------------------------------------------

    def add(self, command: bytes, idx: int, term: int) -> None:
        with self._lock:
            self._check_ok()
            if not self._start <= idx <= self._stored_last + 1:
                raise ClusterError(
                    f"pysyncobj added raft index {idx} to a log holding "
                    f"[{self._start}, {self._stored_last}]: a gap"
                )
            entry = _entry_of_command(command, term)
            if idx <= self._stored_last:
                stored_term = self._term_of(idx)
                if stored_term == term:
                    # The same index and term: the same entry (Raft's log matching).
                    self.counters["skipped_matching"] += 1
                else:
                    self._conflict(idx, term, stored_term, entry)
            else:
                self._store.append(entry)
                self._stored_last = idx
                self._dirty = True
                self.counters["appended"] += 1
                if entry.val_type is _CONF:
                    self._conf[idx] = command
            self._tail = min(max(self._tail, idx), self._stored_last)
            self._remember((command, idx, term))

    def _conflict(self, idx: int, term: int, stored_term: int, entry: LogEntry) -> None:
        """A real term conflict at ``idx``: cut the store there, unless committed."""
        if idx <= self._commit:
            self.counters["refused_truncations"] += 1
            error = TruncationRefusedError(
                idx,
                self._commit,
                f"an entry of term {term} would replace the committed one of term {stored_term}",
            )
            self.failure = error
            logger.critical("%s", error)
            raise error
        if idx == self._start:
            raise ClusterError(f"a conflict at the anchor {idx}, which is committed")
        self._store.write_at(idx, entry)
        self._stored_last = idx
        self._dirty = True
        self._forget_from(idx)
        for stale in [i for i in self._conf if i >= idx]:
            del self._conf[stale]
        if entry.val_type is _CONF:
            self._conf[idx] = entry.value
        self.counters["truncations"] += 1
        if self.on_truncate is not None:
            self.on_truncate(idx)

    def clear(self) -> None:
        # pysyncobj clears the journal after a snapshot install and then adds the
        # snapshot's entries; the install already reset the journal to the anchor.
        with self._lock:
            if not self._expect_clear:
                raise ClusterError(
                    "pysyncobj asked to clear the journal outside a snapshot install"
                )
            self._expect_clear = False

    def deleteEntriesFrom(self, entryFrom: int) -> None:
        with self._lock:
            self._check_ok()
            index = self._start + entryFrom
            # Nothing is removed: the visible end goes back (never below the commit
            # index, whose entries no leader can replace) and ``add`` compares.
            self._tail = min(self._tail, max(index - 1, min(self._commit, self._stored_last)))
            self.counters["deferred_deletes"] += 1

    def deleteEntriesTo(self, entryTo: int) -> None:
        raise ClusterError(
            "pysyncobj asked to compact the journal: its compaction keeps two entries "
            "and is switched off in the segstore host (the host compacts the store)"
        )

    def __getitem__(self, item: Any) -> Any:
        count = self._tail - self._start + 1
        if isinstance(item, slice):
            start, stop, step = item.indices(count)
            if step != 1:
                raise ClusterError("pysyncobj sliced the journal with a step")
            return _EntrySlice(self, self._start + start, self._start + stop)
        if item < 0:
            item += count
        if not 0 <= item < count:
            raise IndexError(f"journal position {item} outside [0, {count})")
        return self.entry(self._start + item)

    def __len__(self) -> int:
        return self._tail - self._start + 1

    def _destroy(self) -> None:
        pass  # the host closes the store once the tick thread is gone

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:
        with self._lock:
            if raftCommitIndex > self._commit:
                self._commit = min(raftCommitIndex, self._stored_last)

    def getRaftCommitIndex(self) -> int:
        return max(1, min(self._commit, self._stored_last))

    def setCurrentTerm(self, term: int, votedForNodeId: str | None) -> None:
        # Durable (fsync) before pysyncobj sends anything that depends on it.
        self._state.save_vote(term, votedForNodeId)

    def getCurrentTerm(self) -> int:
        return self._state.vote()[0]

    def getVotedForNodeId(self) -> str | None:
        return self._state.vote()[1]

    def onOneSecondTimer(self) -> None:
        pass  # the host saves the commit index after its flush


# -- snapshots -----------------------------------------------------------------------


class SnapshotTransfer:
    """Stands in for pysyncobj's ``Serializer``: ships SegmentedStateMachine snapshots.

    pysyncobj sends a follower whose next index is at or below the leader's first
    journal entry a snapshot: it calls ``getTransmissionData(node)`` until a chunk says
    it is the last, and the follower hands each chunk to ``setTransmissionData``; when
    that returns True it calls ``deserialize()``, clears its journal, adds the two
    entries it returns and takes the members it returns. pysyncobj's own compaction
    (``checkSerializing`` / ``serialize``) is never used: the host compacts the store.

    A chunk is ``({"index", "term", "members", "obj", "data"}, is_first, is_last)``:
    one :data:`~segstore.raft.segmented_state_machine.SNAPSHOT_CHUNK_BYTES` object of
    the snapshot blob (``read_logical_snp_obj``), with the snapshot's last index, its
    term and the members as of it.
    """

    def __init__(self, host: PysyncobjHost) -> None:
        self._host = host
        self._sending: dict[Any, tuple[int, int]] = {}  # node -> (snapshot index, next obj)
        self._receiving: tuple[int, int, int] | None = None  # (index, term, next obj)
        self._members: list[str] = []
        self._loaded: tuple[Any, ...] | None = None

    # pysyncobj's compaction: never started (the host compacts the store itself).
    def checkSerializing(self) -> tuple[int, None]:
        return SERIALIZER_STATE.NOT_SERIALIZING, None

    def serialize(self, data: Any, id: Any) -> None:
        logger.error("pysyncobj tried its own log compaction; ignored")

    def deserialize(self) -> tuple[Any, ...]:
        if self._loaded is None:
            raise ClusterError("pysyncobj loads a snapshot that was not installed")
        loaded, self._loaded = self._loaded, None
        return loaded

    def cancelTransmisstion(self, node: Any) -> None:  # sic: pysyncobj's name
        self._sending.pop(node, None)

    # -- the leader ------------------------------------------------------------------

    def getTransmissionData(self, node: Any) -> tuple[dict[str, Any], bool, bool] | None:
        """The next chunk for ``node``, or None while no snapshot is ready."""
        host = self._host
        snapshot = host.snapshot_for_sending()
        if snapshot is None:
            self._sending.pop(node, None)
            return None
        index, obj = self._sending.get(node, (snapshot.last_log_idx, 0))
        if index != snapshot.last_log_idx:
            index, obj = snapshot.last_log_idx, 0  # a newer snapshot replaced it: restart
        try:
            chunk = host.state_machine.read_logical_snp_obj(snapshot, None, obj)
        except Exception as exc:
            logger.warning("snapshot %d object %d unreadable: %s", index, obj, exc)
            self._sending.pop(node, None)
            return None
        if chunk.is_last_obj:
            self._sending.pop(node, None)
            host.counters["snapshots_sent"] += 1
        else:
            self._sending[node] = (index, obj + 1)
        payload = {
            "index": index,
            "term": snapshot.last_log_term,
            "members": [server.endpoint for server in snapshot.last_config.servers],
            "obj": obj,
            "data": bytes(chunk.data),
        }
        return payload, obj == 0, chunk.is_last_obj

    # -- the follower ----------------------------------------------------------------

    def setTransmissionData(self, data: Any) -> bool:
        """Collect one chunk; on the last, install the snapshot (True if installed)."""
        if data is None:
            return False
        payload, is_first, is_last = data
        index, term, obj = int(payload["index"]), int(payload["term"]), int(payload["obj"])
        if is_first:
            self._receiving = (index, term, 0)
            self._members = [str(member) for member in payload["members"]]
        expected = self._receiving
        if expected is None or expected[:2] != (index, term) or expected[2] != obj:
            self._receiving = None  # a chunk is missing: wait for the next first one
            return False
        snapshot = self._host.snapshot_meta(index, term, self._members)
        self._host.state_machine.save_logical_snp_obj(
            snapshot, obj, payload["data"], is_first, is_last
        )
        self._receiving = (index, term, obj + 1)
        if not is_last:
            return False
        self._receiving = None
        if not self._host.install_snapshot(snapshot, frozenset(self._members)):
            return False
        anchor = (_ANCHOR_COMMAND, index, term)
        others = [m for m in self._members if m != self._host.endpoint]
        self._loaded = (None, anchor, anchor, others)
        return True


# -- the transport -------------------------------------------------------------------


class GroupCommitTransport(TCPTransport):  # type: ignore[misc]
    """pysyncobj's TCP transport, holding messages back while appends are not durable."""

    def __init__(
        self,
        syncObj: Any,
        selfNode: Any,
        otherNodes: Any,
        *,
        journal: StoreJournal,
    ) -> None:
        self._journal = journal
        self._outbox: list[tuple[Any, Any]] = []
        self.held_messages = 0
        super().__init__(syncObj, selfNode, otherNodes)

    def send(self, node: Any, message: Any) -> bool:
        if self._journal.failure is not None:
            return False  # fail-stop: nothing leaves a stopped member
        if self._outbox or self._journal.dirty:
            self._outbox.append((node, message))
            self.held_messages += 1
            return True
        return bool(super().send(node, message))

    def flush_and_send(self) -> None:
        """The group commit: one flush, then every held message in order."""
        self._journal.flush()
        outbox, self._outbox = self._outbox, []
        for node, message in outbox:
            super().send(node, message)


# -- the engine ----------------------------------------------------------------------


class _SegstoreSyncObj(SyncObj):  # type: ignore[misc]
    """pysyncobj's SyncObj whose regular commands are our app_log values.

    :meth:`submit_value` queues ``value`` as a regular command (type byte + value, no
    pickle); pysyncobj's own apply of such a command is a no-op here (results come
    from the SegmentedStateMachine, driven by the host's tick), so it never unpickles
    one. Its other commands (no-op, membership, version) go to its own apply.
    """

    def submit_value(self, value: bytes, callback: Callable[[object, int], None]) -> None:
        self._applyCommand(value, callback, _REGULAR)

    def _SyncObj__doApplyCommand(self, command: bytes) -> Any:
        if command[0] == _REGULAR:
            return None
        return SyncObj._SyncObj__doApplyCommand(self, command)


_FAIL_NAMES: Final = {
    value: name for name, value in vars(FAIL_REASON).items() if not name.startswith("_")
}


class PysyncobjHost(RaftHost):
    """One Raft member: pysyncobj over a :class:`StoreJournal` and a
    :class:`GroupCommitTransport`, feeding a :class:`SegmentedStateMachine`."""

    def __init__(
        self,
        *,
        endpoint: str,
        peers: Sequence[str],
        store: SegmentedLogStore,
        state_machine: SegmentedStateMachine,
        state_mgr: FileStateMgr,
        password: str | None = None,
        tick_period_s: float = 0.005,
        append_period_s: float = 0.01,
        election_timeout_s: tuple[float, float] = (1.0, 2.5),
        append_batch_bytes: int = 1 << 18,
        reserved_log_items: int = RESERVED_LOG_ITEMS,
        compaction_interval_s: float = COMPACTION_INTERVAL_S,
        on_tick: Callable[[], None] | None = None,
    ) -> None:
        if endpoint in peers:
            raise InvalidArgumentError(f"endpoint {endpoint!r} is also named as a peer")
        if isinstance(reserved_log_items, bool) or not isinstance(reserved_log_items, int):
            raise InvalidArgumentError(
                f"reserved_log_items must be an int, not {reserved_log_items!r}"
            )
        if reserved_log_items < 0:
            raise InvalidArgumentError(f"reserved_log_items must be >= 0, not {reserved_log_items}")
        self.endpoint = endpoint
        self._store = store
        self._sm = state_machine
        self._state_mgr = state_mgr
        last = state_machine.last_snapshot()
        self.journal = StoreJournal(
            store,
            state_mgr,
            snapshot=None if last is None else (last.last_log_idx, last.last_log_term),
            initial_members=(endpoint, *peers),
        )
        # After a compaction or a snapshot the membership commands below the anchor
        # are gone: the saved membership as of the anchor replaces the given peers.
        if state_mgr.members() is not None:
            peers = sorted(self.journal.members_at(self.journal.start_index) - {endpoint})
        self._peers = tuple(peers)
        self._reserved_log_items = reserved_log_items
        self._compaction_interval_s = compaction_interval_s
        self._compaction_limit = 0
        self._compacted_at = 0.0
        self._store_compact_to = 0  # the background thread compacts the store below it
        self._snapshot_request: Snapshot | None = None
        self._hold_handoff = False
        self._installed_snapshot_index = 0
        self.counters: dict[str, int] = {
            "compactions": 0,
            "snapshots_created": 0,
            "snapshots_sent": 0,
            "snapshots_installed": 0,
            "snapshots_ignored": 0,
        }
        self._handed = state_machine.last_commit_index()
        self._password = password
        self._tick_period_s = tick_period_s
        self._append_period_s = append_period_s
        self._election_timeout_s = election_timeout_s
        self._append_batch_bytes = append_batch_bytes
        self._on_tick_hook = on_tick
        self._syncobj: Any = None
        self._transport: GroupCommitTransport | None = None
        self._status = HostStatus(endpoint=endpoint)
        self._status_at = 0.0
        self._failed: str | None = None
        self._closed = False
        self._notifier: Any = None
        self._woken = False  # a wake-up of the tick thread is pending
        self._appended_sent = 0
        self._stop_saver = threading.Event()
        self._wake_saver = threading.Event()
        self._saver: threading.Thread | None = None

    @property
    def state_machine(self) -> SegmentedStateMachine:
        """The state machine this host feeds."""
        return self._sm

    # -- lifetime ----------------------------------------------------------------------

    def start(self) -> None:
        token = register_journal(self.journal)
        transfer_token = register_transfer(SnapshotTransfer(self))
        low, high = self._election_timeout_s
        conf = SyncObjConf(
            journalFile=token,
            fullDumpFile=transfer_token,
            password=self._password,
            autoTick=True,
            autoTickPeriod=self._tick_period_s,
            appendEntriesPeriod=self._append_period_s,
            appendEntriesUseBatch=True,
            appendEntriesBatchSizeBytes=self._append_batch_bytes,
            raftMinTimeout=low,
            raftMaxTimeout=high,
            connectionTimeout=max(3.5, high),
            connectionRetryTime=0.5,
            leaderFallbackTimeout=max(5.0, 2 * high),
            dynamicMembershipChange=True,
            # Compaction pickles the whole SyncObj and keeps two entries: off.
            logCompactionMinEntries=2**62,
            logCompactionMinTime=1e12,
            useFork=False,
        )
        transport_class = functools.partial(GroupCommitTransport, journal=self.journal)
        try:
            self._syncobj = _SegstoreSyncObj(
                self.endpoint, list(self._peers), conf=conf, transportClass=transport_class
            )
        finally:
            _journals.discard(token)
            _transfers.discard(transfer_token)
        self._transport = self._syncobj._SyncObj__transport
        self._syncobj.addOnTickCallback(self._on_tick)
        self._saver = threading.Thread(
            target=self._background, name="segstore-host-background", daemon=True
        )
        self._saver.start()

    def _background(self) -> None:
        """Work that must stay off the tick thread (each is a file write with fsyncs,
        or waits for the applier): save the commit index (only pysyncobj's starting
        point on restart), compact the store below the anchor, create a snapshot."""
        while not self._stop_saver.is_set():
            self._wake_saver.wait(COMMIT_SAVE_INTERVAL_S)
            self._wake_saver.clear()
            if self._stop_saver.is_set():
                return
            if self._failed is not None or self.journal.failure is not None:
                return
            try:
                self.journal.save_commit_index(force=True)
                below = self._store_compact_to
                if below >= self._store.start_index():
                    self._store.compact(below)
                    self.counters["compactions"] += 1
                request = self._snapshot_request
                if request is not None:
                    self._create_snapshot(request)
            except Exception as exc:  # a failed save must not pass silently
                self._fail(exc)
                return

    # -- snapshots ---------------------------------------------------------------------

    def snapshot_meta(self, index: int, term: int, members: Sequence[str]) -> Snapshot:
        """A :class:`Snapshot` at ``index`` whose config lists ``members`` (pysyncobj
        names members by address: the ids are their 1-based rank)."""
        servers = tuple(
            ServerConfig(rank + 1, member) for rank, member in enumerate(sorted(members))
        )
        return Snapshot(index, term, ClusterConfig(log_idx=index, servers=servers))

    def snapshot_for_sending(self) -> Snapshot | None:
        """The snapshot a follower behind the anchor gets (tick thread), or None while
        one is being created: the latest one if it reaches the anchor, else a new one
        at the handed-off index is asked of the background thread."""
        last = self._sm.last_snapshot()
        if last is not None and last.last_log_idx >= self.journal.start_index:
            return last
        if self._snapshot_request is None and not self._hold_handoff:
            index = self._handed
            if index < self.journal.start_index:
                return None
            term = self.journal.entry(index)[2]
            # No hand-off until it is taken: create_snapshot needs the applier's
            # commit index to be exactly the snapshot's.
            self._hold_handoff = True
            self._snapshot_request = self.snapshot_meta(
                index, term, sorted(self.journal.members_at(index))
            )
            self._wake_saver.set()
        return None

    def _create_snapshot(self, snapshot: Snapshot) -> None:
        outcome: list[BaseException | None] = []

        def done(ok: bool, error: BaseException | None) -> None:
            outcome.append(None if ok else error)

        try:
            self._sm.create_snapshot(snapshot, done)
        finally:
            self._snapshot_request = None
            self._hold_handoff = False
        if outcome and outcome[0] is None:
            self.counters["snapshots_created"] += 1
        else:
            logger.warning("snapshot at %d failed: %s", snapshot.last_log_idx, outcome)

    def install_snapshot(self, snapshot: Snapshot, members: frozenset[str]) -> bool:
        """Install a snapshot received from the leader (tick thread); False if this
        member already holds its last entry (then the log goes on as it is)."""
        index, term = snapshot.last_log_idx, snapshot.last_log_term
        journal = self.journal
        if journal.has_entry(index, term):
            self.counters["snapshots_ignored"] += 1
            return False
        if index <= journal.commit_index:
            error = TruncationRefusedError(
                index,
                journal.commit_index,
                f"a snapshot of term {term} would replace committed entries",
            )
            journal.failure = error
            raise error
        # Entries after the snapshot's last one are cut with it: this member does not
        # hold entry `index` with its term, so they are not the leader's (log matching).
        self._state_mgr.save_members(index, sorted(members))
        self._sm.apply_snapshot(snapshot)
        journal.reset_to_snapshot(index, term, members)
        self._handed = index
        self._installed_snapshot_index = index
        self.counters["snapshots_installed"] += 1
        logger.info("%s installed a snapshot up to %d", self.endpoint, index)
        return True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop_saver.set()
        self._wake_saver.set()
        if self._saver is not None:
            self._saver.join()
        if self._syncobj is not None:
            self._syncobj.destroy()
            thread = self._syncobj._SyncObj__thread
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout=30)
        if self.journal.failure is None and self._failed is None:
            self.journal.flush()
            self._hand_committed()
            self.journal.save_commit_index(force=True)

    # -- requests ------------------------------------------------------------------------

    def submit(self, value: bytes, on_failed: FailedCallback) -> None:
        if self._failed is not None or self._syncobj is None:
            on_failed(self._failed or "not started")
            return

        def done(_result: object, error: int) -> None:
            if error != FAIL_REASON.SUCCESS:
                on_failed(_FAIL_NAMES.get(error, str(error)))

        self._syncobj.submit_value(value, done)
        notifier = self._notifier
        if notifier is not None and not self._woken:
            # Wake the tick thread out of its poll, once per tick (the tick callback
            # clears the flag; a full pipe: it is awake anyway).
            self._woken = True
            with contextlib.suppress(BlockingIOError):
                notifier.notify()

    def add_member(self, endpoint: str, done: DoneCallback) -> None:
        self._change(self._syncobj.addNodeToCluster, endpoint, done)

    def remove_member(self, endpoint: str, done: DoneCallback) -> None:
        self._change(self._syncobj.removeNodeFromCluster, endpoint, done)

    def _change(self, method: Callable[..., None], endpoint: str, done: DoneCallback) -> None:
        if self._failed is not None or self._syncobj is None:
            done(False, self._failed or "not started")
            return

        def callback(_result: object, error: int) -> None:
            ok = error == FAIL_REASON.SUCCESS
            done(ok, "" if ok else _FAIL_NAMES.get(error, str(error)))

        method(endpoint, callback=callback)

    def status(self) -> HostStatus:
        return self._status

    def compact(self, required_raft_index: int) -> None:
        self._compaction_limit = max(self._compaction_limit, int(required_raft_index))

    # -- the tick ----------------------------------------------------------------------

    def _on_tick(self) -> None:
        """Runs on pysyncobj's tick thread after each tick's work, before its poll."""
        if self._failed is not None:
            return
        try:
            if self.journal.failure is not None:
                raise self.journal.failure
            if self._notifier is None:
                self._notifier = PipeNotifier(self._syncobj._poller)
            self._woken = False
            transport = self._transport
            if transport is not None:
                transport.flush_and_send()
            appended = self.journal.counters["appended"]
            if appended != self._appended_sent and self._syncobj._isLeader():
                # The entries this tick appended are durable now: send them in this
                # tick rather than after the next poll (pysyncobj's private method,
                # on its own thread, as its tick would call it).
                self._appended_sent = appended
                self._syncobj._SyncObj__sendAppendEntries()
            self._hand_committed()
            now = time.monotonic()
            syncobj = self._syncobj
            if syncobj._SyncObj__raftLastApplied < self.journal.start_index:
                # After a restart or an install: entries up to the anchor are applied
                # (pysyncobj would otherwise look for them from index 2 on, forever).
                syncobj._SyncObj__raftLastApplied = self.journal.start_index
            if now - self._compacted_at >= self._compaction_interval_s:
                self._compacted_at = now
                self._compact_journal(int(syncobj._SyncObj__raftLastApplied))
            if now - self._status_at >= STATUS_INTERVAL_S:
                self._status_at = now
                self._status = self._snapshot_status()
            if self._on_tick_hook is not None:
                self._on_tick_hook()
        except BaseException as exc:
            self._fail(exc)

    def _compact_journal(self, last_applied: int) -> None:
        """Move the anchor up to ``min(node's watermark, commit - reserved tail,
        handed off, applied by pysyncobj)``; the store follows in the background."""
        journal = self.journal
        target = min(
            self._compaction_limit,
            journal.commit_index - self._reserved_log_items,
            self._handed,
            last_applied,
        )
        if target > journal.start_index and journal.compact_to(target):
            self._store_compact_to = target - 1
            self._wake_saver.set()

    def _hand_committed(self) -> None:
        """Hand newly committed, durable entries to the state machine (one batch)."""
        if self._hold_handoff:
            return
        target = min(self.journal.commit_index, self._store.last_durable_index())
        if target > self._handed:
            self._sm.commit_range(self._handed + 1, target + 1)
            self._handed = target

    def _fail(self, exc: BaseException) -> None:
        self._failed = f"{type(exc).__name__}: {exc}"
        logger.critical("segstore host %s stops (fail-stop): %s", self.endpoint, self._failed)
        self._status = self._snapshot_status()
        if self._syncobj is not None:
            self._syncobj.destroy()

    def _snapshot_status(self) -> HostStatus:
        syncobj = self._syncobj
        if syncobj is None:
            return HostStatus(endpoint=self.endpoint, failed=self._failed)
        raw = syncobj.getStatus()
        others = [node.id for node in syncobj.otherNodes]
        leader = raw.get("leader")
        counters = dict(self.journal.counters)
        counters.update(self.counters)
        if self._transport is not None:
            counters["held_messages"] = self._transport.held_messages
        last = self._sm.last_snapshot()
        return HostStatus(
            endpoint=self.endpoint,
            leader=None if leader is None else str(leader.id),
            is_leader=leader is not None and leader.id == self.endpoint,
            term=int(raw["raft_term"]),
            commit_index=self.journal.commit_index,
            last_index=self.journal.last_index,
            durable_index=self._store.last_durable_index(),
            applied_handed_index=self._handed,
            members=tuple(sorted([self.endpoint, *others])),
            match_indices={node: int(raw.get("match_idx_server_" + node, 0)) for node in others},
            connected={node: raw.get("partner_node_status_server_" + node) == 2 for node in others},
            failed=self._failed or (None if self.journal.failure is None else "journal"),
            counters=counters,
            log_start_index=self.journal.start_index,
            snapshot_index=0 if last is None else last.last_log_idx,
            installed_snapshot_index=self._installed_snapshot_index,
        )


__all__ = [
    "PYSYNCOBJ_VERSION",
    "GroupCommitTransport",
    "PysyncobjHost",
    "StoreJournal",
    "register_journal",
]

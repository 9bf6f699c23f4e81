"""The ``LogStore`` conformance suite: NuRaft semantics every store must pass.

Use it by subclassing in a test module (the subclass name must start with
``Test`` so pytest collects it; this base class is not collected)::

    class TestMyStore(LogStoreConformance):
        def make_store(self, tmp_path: Path) -> LogStore:
            return MyStore.open(tmp_path)

    class TestMyDurableStore(DurableLogStoreConformance):
        def make_store(self, tmp_path: Path) -> LogStore:
            return MyStore.open(tmp_path)

        def reopen_store(self, store: LogStore, tmp_path: Path) -> LogStore:
            store.close()
            return MyStore.open(tmp_path)

Each test states the rule it pins; docs/RAFT_CONTRACT.md says where in NuRaft the
rule comes from. ``DurableLogStoreConformance`` adds the restart tests for stores
that persist.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from segstore.errors import (
    ClosedError,
    CorruptionError,
    IndexOutOfRangeError,
    InvalidArgumentError,
)
from segstore.raft.log_entry import LogEntry, LogValType
from segstore.raft.log_store import LogStore
from segstore.raft.pack import decode_pack, encode_pack

__all__ = ["DurableLogStoreConformance", "LogStoreConformance", "ReferenceLog", "make_entry"]

CALLBACK_WAIT_S_MAX = 10.0
"""How long a test waits for a ``compact_async`` callback before failing."""

_VAL_TYPES = (LogValType.app_log, LogValType.app_log, LogValType.conf, LogValType.custom)


def make_entry(seed: int, term: int = 1, value_bytes: int | None = None) -> LogEntry:
    """A deterministic entry that differs from every other seed in value, type and time.

    ``value_bytes`` fixes the value size (for size-hint tests); by default it
    varies with ``seed`` and is sometimes empty, to catch off-by-one framing.
    """
    if value_bytes is None:
        value = seed.to_bytes(8, "little") * (seed % 5)
    else:
        value = bytes((seed + k) % 256 for k in range(value_bytes))
    return LogEntry(
        term=term,
        value=value,
        val_type=_VAL_TYPES[seed % len(_VAL_TYPES)],
        timestamp_us=1_700_000_000_000_000 + seed,
    )


def _ignore_compaction_result(result: bool, error: BaseException | None) -> None:
    """A ``compact_async`` callback for calls that must fail before calling it."""


class ReferenceLog:
    """A deliberately naive model of the contract (a start index and a list).

    The random-operation test runs every store, the in-memory reference included,
    against this model, so the model is kept too simple to share a bug with them.
    """

    def __init__(self) -> None:
        """An empty log: start 1, no entries."""
        self.start = 1
        self.entries: list[LogEntry] = []

    @property
    def next_slot(self) -> int:
        """Last index + 1."""
        return self.start + len(self.entries)

    def append(self, entry: LogEntry) -> int:
        """Append and return the index."""
        self.entries.append(entry)
        return self.next_slot - 1

    def write_at(self, index: int, entry: LogEntry) -> None:
        """Replace ``index`` and drop what follows."""
        self.entries = [*self.entries[: index - self.start], entry]

    def compact(self, last_log_index: int) -> None:
        """Drop entries up to ``last_log_index``; start never moves back."""
        if last_log_index < self.start:
            return
        self.entries = self.entries[last_log_index + 1 - self.start :]
        self.start = last_log_index + 1

    def apply_pack(self, index: int, entries: list[LogEntry]) -> None:
        """Write ``entries`` from ``index``, truncating after them."""
        if not entries:
            return
        if not self.entries:
            self.start = index
            self.entries = list(entries)
            return
        self.entries = self.entries[: index - self.start] + list(entries)

    def entry(self, index: int) -> LogEntry | None:
        """The entry at ``index`` or None."""
        if self.start <= index < self.next_slot:
            return self.entries[index - self.start]
        return None


class LogStoreConformance:
    """Base class of the conformance tests; override ``make_store`` (and ``reopen_store``)."""

    # -- hooks ----------------------------------------------------------------------

    def make_store(self, tmp_path: Path) -> LogStore:
        """Return a new, empty store that may keep its files in ``tmp_path`` (an
        existing empty directory that no other store uses)."""
        raise NotImplementedError("subclasses of LogStoreConformance must define make_store")

    def entry(
        self,
        seed: int,
        term: int = 1,
        value_bytes: int | None = None,
        *,
        value: bytes | None = None,
        val_type: LogValType | None = None,
        timestamp_us: int | None = None,
    ) -> LogEntry:
        """The entry the suite uses for ``seed``; every entry a test creates comes from here.

        Default: :func:`make_entry` (``value_bytes`` fixes the size of that raw value),
        with ``value``, ``val_type`` and ``timestamp_us`` replacing its fields when given.
        Stores that need more in a value override this and change what the default
        returns, e.g. put a partition header in front of every ``app_log`` value. Tests
        never assume a value's size: size-hint expectations are computed from the
        entries' ``value_bytes``.
        """
        made = make_entry(seed, term=term, value_bytes=value_bytes)
        return LogEntry(
            term=term,
            value=made.value if value is None else value,
            val_type=made.val_type if val_type is None else val_type,
            timestamp_us=made.timestamp_us if timestamp_us is None else timestamp_us,
        )

    # -- helpers --------------------------------------------------------------------

    def new_store(self, tmp_path: Path, name: str = "store") -> LogStore:
        """``make_store`` on a fresh subdirectory ``name`` of ``tmp_path``."""
        directory = tmp_path / name
        directory.mkdir()
        return self.make_store(directory)

    def filled_store(self, tmp_path: Path, count: int, name: str = "store") -> LogStore:
        """A new store holding ``self.entry(1) .. self.entry(count)`` at 1..count."""
        store = self.new_store(tmp_path, name)
        for seed in range(1, count + 1):
            assert store.append(self.entry(seed)) == seed
        return store

    @staticmethod
    def assert_matches(store: LogStore, model: ReferenceLog) -> None:
        """Every observable of ``store`` equals the model's."""
        assert store.start_index() == model.start
        assert store.next_slot() == model.next_slot
        last = store.last_entry()
        if model.entries:
            assert last == model.entries[-1]
        else:
            assert last.term == 0
        assert store.log_entries(model.start, model.next_slot) == model.entries
        for index in range(max(0, model.start - 2), model.next_slot + 2):
            assert store.entry_at(index) == model.entry(index), index
            if index < model.next_slot:
                expected = model.entry(index)
                assert store.term_at(index) == (expected.term if expected else 0), index

    # -- an empty store -------------------------------------------------------------

    def test_empty_store(self, tmp_path: Path) -> None:
        """Fresh store: next_slot 1, start 1, dummy last entry with term 0."""
        with self.new_store(tmp_path) as store:
            assert store.next_slot() == 1
            assert store.start_index() == 1
            dummy = store.last_entry()
            assert isinstance(dummy, LogEntry)
            assert dummy.term == 0
            assert store.entry_at(0) is None
            assert store.entry_at(1) is None
            assert store.term_at(0) == 0
            assert store.log_entries(1, 1) == []
            assert store.log_entries(1, 2) is None
            assert store.last_durable_index() == 0

    # -- append and read -------------------------------------------------------------

    def test_append_returns_consecutive_indices(self, tmp_path: Path) -> None:
        """append returns next_slot; entries read back equal, term_at agrees."""
        with self.new_store(tmp_path) as store:
            entries = [self.entry(seed, term=1 + seed // 4) for seed in range(1, 13)]
            for expected_index, entry in enumerate(entries, start=1):
                assert store.next_slot() == expected_index
                assert store.append(entry) == expected_index
            assert store.next_slot() == 13
            assert store.start_index() == 1
            assert store.last_entry() == entries[-1]
            for index, entry in enumerate(entries, start=1):
                assert store.entry_at(index) == entry
                assert store.term_at(index) == entry.term
            assert store.log_entries(1, 13) == entries
            assert store.log_entries(4, 7) == entries[3:6]

    def test_entry_fields_round_trip(self, tmp_path: Path) -> None:
        """Term, value, type and timestamp survive, including empty and 1 MiB values."""
        with self.new_store(tmp_path) as store:
            entries = [
                self.entry(1, term=7, value=b"", val_type=LogValType.app_log, timestamp_us=0),
                self.entry(
                    2, term=2**64 - 1, value=b"\x00" * 3, val_type=LogValType.conf, timestamp_us=0
                ),
                self.entry(
                    3,
                    term=9,
                    value=bytes(range(256)) * 4096,
                    val_type=LogValType.app_log,
                    timestamp_us=2**64 - 1,
                ),
                self.entry(4, term=9, value=b"x", val_type=LogValType.custom, timestamp_us=5),
            ]
            assert [entry.val_type for entry in entries] == [
                LogValType.app_log,
                LogValType.conf,
                LogValType.app_log,
                LogValType.custom,
            ]
            assert entries[0].timestamp_us == 0
            assert entries[2].value_bytes >= 2**20
            for entry in entries:
                store.append(entry)
            assert [store.entry_at(index) for index in range(1, 5)] == entries

    def test_entry_at_past_tail_is_none(self, tmp_path: Path) -> None:
        """entry_at returns None at and after next_slot (log_store.hxx, entry_at)."""
        with self.filled_store(tmp_path, 3) as store:
            assert store.entry_at(4) is None
            assert store.entry_at(1000) is None

    def test_term_at_past_tail_raises(self, tmp_path: Path) -> None:
        """term_at at or after next_slot raises: NuRaft says "stop the system"."""
        with self.filled_store(tmp_path, 3) as store:
            with pytest.raises(IndexOutOfRangeError):
                store.term_at(4)
            with pytest.raises(IndexOutOfRangeError):
                store.term_at(99)

    # -- write_at --------------------------------------------------------------------

    def test_write_at_truncates_after_index(self, tmp_path: Path) -> None:
        """write_at(i) replaces i and drops every later entry; append continues at i+1."""
        with self.filled_store(tmp_path, 10) as store:
            replacement = self.entry(100, term=5)
            store.write_at(5, replacement)
            assert store.next_slot() == 6
            assert store.entry_at(5) == replacement
            assert store.term_at(5) == 5
            assert store.entry_at(6) is None
            assert store.last_entry() == replacement
            assert store.log_entries(1, 5) == [self.entry(seed) for seed in range(1, 5)]
            assert store.log_entries(5, 7) is None
            assert store.append(self.entry(101, term=5)) == 6

    def test_write_at_last_index(self, tmp_path: Path) -> None:
        """write_at on the last entry replaces it and keeps next_slot."""
        with self.filled_store(tmp_path, 4) as store:
            store.write_at(4, self.entry(44, term=2))
            assert store.next_slot() == 5
            assert store.last_entry() == self.entry(44, term=2)

    def test_write_at_next_slot_appends(self, tmp_path: Path) -> None:
        """write_at(next_slot) is an append (NuRaft's in-memory store erases nothing)."""
        with self.filled_store(tmp_path, 3) as store:
            store.write_at(4, self.entry(40))
            assert store.next_slot() == 5
            assert store.entry_at(4) == self.entry(40)
            assert store.entry_at(3) == self.entry(3)

    def test_write_at_start_index_replaces_everything(self, tmp_path: Path) -> None:
        """write_at(start_index) leaves exactly one entry."""
        with self.filled_store(tmp_path, 8) as store:
            store.compact(3)
            store.write_at(4, self.entry(400, term=3))
            assert store.start_index() == 4
            assert store.next_slot() == 5
            assert store.log_entries(4, 5) == [self.entry(400, term=3)]

    def test_write_at_out_of_range_raises_and_changes_nothing(self, tmp_path: Path) -> None:
        """write_at past next_slot (a gap) or below start_index is refused."""
        with self.filled_store(tmp_path, 6) as store:
            store.compact(2)
            with pytest.raises(IndexOutOfRangeError):
                store.write_at(8, self.entry(80))
            with pytest.raises(IndexOutOfRangeError):
                store.write_at(2, self.entry(20))
            assert store.start_index() == 3
            assert store.next_slot() == 7
            assert store.log_entries(3, 7) == [self.entry(seed) for seed in range(3, 7)]

    # -- compaction ------------------------------------------------------------------

    def test_compact_middle_keeps_later_entries(self, tmp_path: Path) -> None:
        """compact(L) inside the log: start L+1, later entries intact, earlier gone."""
        with self.filled_store(tmp_path, 10) as store:
            assert store.compact(4) is True
            assert store.start_index() == 5
            assert store.next_slot() == 11
            assert store.entry_at(4) is None
            assert store.term_at(4) == 0
            assert store.term_at(1) == 0
            assert store.log_entries(5, 11) == [self.entry(seed) for seed in range(5, 11)]
            assert store.last_entry() == self.entry(10)
            assert store.append(self.entry(11)) == 11

    def test_compact_last_entry(self, tmp_path: Path) -> None:
        """compact(last index) empties the store without moving next_slot."""
        with self.filled_store(tmp_path, 5) as store:
            assert store.compact(5) is True
            assert store.start_index() == 6
            assert store.next_slot() == 6
            assert store.last_entry().term == 0
            assert store.entry_at(5) is None

    def test_compact_past_tail_moves_next_slot(self, tmp_path: Path) -> None:
        """compact(L) past the tail: start and next_slot become L+1 (log_store.hxx)."""
        with self.filled_store(tmp_path, 5) as store:
            assert store.compact(20) is True
            assert store.start_index() == 21
            assert store.next_slot() == 21
            assert store.last_entry().term == 0
            assert store.term_at(20) == 0
            assert store.entry_at(21) is None
            assert store.append(self.entry(21)) == 21
            assert store.start_index() == 21
            assert store.entry_at(21) == self.entry(21)

    def test_compact_empty_store(self, tmp_path: Path) -> None:
        """compact on a fresh store moves start even though nothing was erased."""
        with self.new_store(tmp_path) as store:
            assert store.compact(9) is True
            assert store.start_index() == 10
            assert store.next_slot() == 10

    def test_compact_below_start_changes_nothing(self, tmp_path: Path) -> None:
        """compact(L) with L < start_index must not move start back (NuRaft's later fix)."""
        with self.filled_store(tmp_path, 10) as store:
            store.compact(6)
            assert store.compact(3) is True
            assert store.start_index() == 7
            assert store.next_slot() == 11
            assert store.log_entries(7, 11) == [self.entry(seed) for seed in range(7, 11)]

    def test_compact_async_moves_start_on_return_and_calls_back(self, tmp_path: Path) -> None:
        """start_index is L+1 once compact_async returns; when_done fires once with True."""
        with self.filled_store(tmp_path, 10) as store:
            calls: list[tuple[bool, BaseException | None]] = []
            done = threading.Event()

            def when_done(result: bool, error: BaseException | None) -> None:
                calls.append((result, error))
                done.set()

            store.compact_async(6, when_done)
            assert store.start_index() == 7
            assert done.wait(CALLBACK_WAIT_S_MAX), "compact_async never called when_done"
            assert calls == [(True, None)]
            assert store.start_index() == 7
            assert store.log_entries(7, 11) == [self.entry(seed) for seed in range(7, 11)]

    def test_compact_async_past_tail(self, tmp_path: Path) -> None:
        """compact_async past the tail behaves like compact: next_slot L+1."""
        with self.filled_store(tmp_path, 3) as store:
            done = threading.Event()
            store.compact_async(8, lambda result, error: done.set())
            assert store.start_index() == 9
            assert store.next_slot() == 9
            assert done.wait(CALLBACK_WAIT_S_MAX)

    # -- log_entries and log_entries_ext ---------------------------------------------

    def test_log_entries_missing_range_is_none(self, tmp_path: Path) -> None:
        """Any index of [s, e) not held makes log_entries return None (log_store.hxx)."""
        with self.filled_store(tmp_path, 10) as store:
            store.compact(3)
            assert store.log_entries(2, 6) is None
            assert store.log_entries(1, 4) is None
            assert store.log_entries(8, 12) is None
            assert store.log_entries(11, 12) is None
            assert store.log_entries(4, 11) == [self.entry(seed) for seed in range(4, 11)]
            assert store.log_entries(6, 6) == []

    def test_log_entries_start_after_end_raises(self, tmp_path: Path) -> None:
        """log_entries(s, e) with s > e is a caller bug."""
        with self.filled_store(tmp_path, 5) as store:
            with pytest.raises(InvalidArgumentError):
                store.log_entries(4, 2)
            with pytest.raises(InvalidArgumentError):
                store.log_entries_ext(4, 2, 0)

    def test_log_entries_ext_hint_zero_is_uncapped(self, tmp_path: Path) -> None:
        """hint 0: all of [s, e)."""
        with self.filled_store(tmp_path, 10) as store:
            assert store.log_entries_ext(2, 10, 0) == [self.entry(seed) for seed in range(2, 10)]
            assert store.log_entries_ext(2, 10) == store.log_entries(2, 10)

    def test_log_entries_ext_positive_hint_caps_by_value_bytes(self, tmp_path: Path) -> None:
        """hint > 0: stop after the entry whose value bytes reach the hint (inclusive)."""
        with self.new_store(tmp_path) as store:
            entries = [self.entry(seed, value_bytes=10) for seed in range(1, 9)]
            for entry in entries:
                store.append(entry)
            # Running totals of the entries' actual value bytes (a store's entry hook may
            # add a header to the 10 raw bytes): entry k is the one that reaches sums[k].
            sums = [sum(entry.value_bytes for entry in entries[: k + 1]) for k in range(8)]
            assert sums[0] >= 10
            assert sums[2] - 5 > sums[1]
            assert store.log_entries_ext(1, 9, sums[2] - 5) == entries[:3]
            assert store.log_entries_ext(1, 9, sums[2]) == entries[:3]
            assert store.log_entries_ext(1, 9, sums[2] + 1) == entries[:4]
            assert store.log_entries_ext(3, 9, 1) == entries[2:3]
            assert store.log_entries_ext(1, 9, 10**9) == entries
            assert store.log_entries_ext(1, 4, 10**9) == entries[:3]

    def test_log_entries_ext_returns_at_least_one_entry(self, tmp_path: Path) -> None:
        """A positive hint smaller than the first entry still returns that entry."""
        with self.new_store(tmp_path) as store:
            store.append(self.entry(1, value_bytes=4096))
            store.append(self.entry(2, value_bytes=1))
            assert store.log_entries_ext(1, 3, 1) == [self.entry(1, value_bytes=4096)]

    def test_log_entries_ext_empty_values_do_not_count(self, tmp_path: Path) -> None:
        """Entries with empty values add 0 bytes, so they never reach the cap alone."""
        with self.new_store(tmp_path) as store:
            # Empty values, as conf entries: an app_log value may need a header (a
            # partition id) from the entry hook and so may never be empty in some stores.
            for term in range(1, 6):
                empty = self.entry(term, term=term, value=b"", val_type=LogValType.conf)
                assert empty.value_bytes == 0
                store.append(empty)
            store.append(self.entry(6, term=6, value=b"abc", val_type=LogValType.app_log))
            got = store.log_entries_ext(1, 7, 2)
            assert got is not None
            assert [entry.term for entry in got] == [1, 2, 3, 4, 5, 6]

    def test_log_entries_ext_negative_hint_is_empty_list(self, tmp_path: Path) -> None:
        """hint < 0: [] (not None: None would mean "missing" and trigger a snapshot)."""
        with self.filled_store(tmp_path, 5) as store:
            assert store.log_entries_ext(1, 6, -1) == []
            store.compact(2)
            assert store.log_entries_ext(1, 6, -1) == []

    def test_log_entries_ext_missing_range_is_none(self, tmp_path: Path) -> None:
        """hint >= 0 and a missing index in [s, e): None, as for log_entries."""
        with self.filled_store(tmp_path, 5) as store:
            store.compact(2)
            assert store.log_entries_ext(1, 5, 0) is None
            assert store.log_entries_ext(2, 5, 1) is None
            assert store.log_entries_ext(3, 7, 1) is None

    # -- pack and apply_pack ---------------------------------------------------------

    def test_pack_is_the_documented_format(self, tmp_path: Path) -> None:
        """pack bytes decode with segstore.raft.pack and equal encode_pack of the range."""
        with self.filled_store(tmp_path, 9) as store:
            packed = store.pack(3, 5)
            assert isinstance(packed, bytes)
            assert decode_pack(packed) == [self.entry(seed) for seed in range(3, 8)]
            assert packed == encode_pack([self.entry(seed) for seed in range(3, 8)])
            assert decode_pack(store.pack(4, 0)) == []

    def test_apply_pack_into_empty_store(self, tmp_path: Path) -> None:
        """A whole log packed into an empty store at 1 reproduces every entry."""
        with (
            self.filled_store(tmp_path, 20, name="source") as source,
            self.new_store(tmp_path, name="target") as target,
        ):
            target.apply_pack(1, source.pack(1, 20))
            assert target.start_index() == 1
            assert target.next_slot() == 21
            for index in range(1, 21):
                assert target.entry_at(index) == source.entry_at(index)
                assert target.term_at(index) == source.term_at(index)
            assert target.last_entry() == source.last_entry()

    def test_apply_pack_into_empty_store_sets_start(self, tmp_path: Path) -> None:
        """A pack from index k into an empty store makes k its start (a joining member)."""
        with (
            self.filled_store(tmp_path, 20, name="source") as source,
            self.new_store(tmp_path, name="target") as target,
        ):
            source.compact(6)
            target.apply_pack(7, source.pack(7, 10))
            assert target.start_index() == 7
            assert target.next_slot() == 17
            assert target.log_entries(7, 17) == source.log_entries(7, 17)
            assert target.term_at(6) == 0
            assert target.append(self.entry(17)) == 17

    def test_apply_pack_after_compact_past_tail(self, tmp_path: Path) -> None:
        """After a snapshot install (compact past the tail) a pack lands at next_slot."""
        with (
            self.filled_store(tmp_path, 30, name="source") as source,
            self.new_store(tmp_path, name="target") as target,
        ):
            target.compact(12)
            target.apply_pack(target.next_slot(), source.pack(13, 18))
            assert target.start_index() == 13
            assert target.next_slot() == 31
            assert target.log_entries(13, 31) == source.log_entries(13, 31)

    def test_apply_pack_below_start_of_a_compacted_empty_store_is_refused(
        self, tmp_path: Path
    ) -> None:
        """An empty store takes a pack at or after its start as its new position, but
        not below a start a compaction left: the entries below were purged on purpose,
        and a leader packs from the member's next_slot (RAFT_CONTRACT.md, apply_pack)."""
        with (
            self.filled_store(tmp_path, 12, name="source") as source,
            self.filled_store(tmp_path, 3, name="target") as target,
        ):
            target.compact(8)
            assert target.start_index() == target.next_slot() == 9
            with pytest.raises(IndexOutOfRangeError):
                target.apply_pack(5, source.pack(5, 4))
            assert target.start_index() == target.next_slot() == 9
            target.apply_pack(10, source.pack(10, 2))
            assert target.start_index() == 10
            assert target.next_slot() == 12
            assert target.log_entries(10, 12) == source.log_entries(10, 12)
            assert target.append(self.entry(12)) == 12

    def test_apply_pack_at_next_slot_appends(self, tmp_path: Path) -> None:
        """A pack applied at next_slot continues the log."""
        with (
            self.filled_store(tmp_path, 15, name="source") as source,
            self.filled_store(tmp_path, 10, name="target") as target,
        ):
            target.apply_pack(11, source.pack(11, 5))
            assert target.next_slot() == 16
            assert target.log_entries(1, 16) == source.log_entries(1, 16)

    def test_apply_pack_overwrites_tail(self, tmp_path: Path) -> None:
        """A pack inside the log replaces from its index and truncates after the pack."""
        with self.filled_store(tmp_path, 10) as store:
            newer = [self.entry(seed, term=2) for seed in (60, 61, 62)]
            store.apply_pack(6, encode_pack(newer))
            assert store.start_index() == 1
            assert store.next_slot() == 9
            assert store.log_entries(1, 6) == [self.entry(seed) for seed in range(1, 6)]
            assert store.log_entries(6, 9) == newer
            assert store.entry_at(9) is None
            assert store.last_entry() == newer[-1]

    def test_apply_empty_pack_changes_nothing(self, tmp_path: Path) -> None:
        """An empty pack is a no-op, even at the start of the log."""
        with self.filled_store(tmp_path, 4) as store:
            store.apply_pack(1, encode_pack([]))
            assert store.next_slot() == 5
            assert store.log_entries(1, 5) == [self.entry(seed) for seed in range(1, 5)]

    def test_apply_pack_out_of_range_raises(self, tmp_path: Path) -> None:
        """Into a non-empty store, a pack must start inside [start_index, next_slot]."""
        with self.filled_store(tmp_path, 6) as store:
            store.compact(2)
            pack = encode_pack([self.entry(90)])
            with pytest.raises(IndexOutOfRangeError):
                store.apply_pack(8, pack)
            with pytest.raises(IndexOutOfRangeError):
                store.apply_pack(2, pack)
            assert store.start_index() == 3
            assert store.next_slot() == 7

    def test_apply_corrupt_pack_raises_and_changes_nothing(self, tmp_path: Path) -> None:
        """A damaged pack raises CorruptionError before anything is written."""
        with self.filled_store(tmp_path, 6) as store:
            damaged = bytearray(store.pack(2, 4))
            damaged[len(damaged) // 2] ^= 0x40
            with pytest.raises(CorruptionError):
                store.apply_pack(3, bytes(damaged))
            with pytest.raises(CorruptionError):
                store.apply_pack(3, store.pack(2, 4)[:-1])
            assert store.next_slot() == 7
            assert store.log_entries(1, 7) == [self.entry(seed) for seed in range(1, 7)]

    def test_pack_out_of_range_raises(self, tmp_path: Path) -> None:
        """pack of indices the store does not hold is refused."""
        with self.filled_store(tmp_path, 6) as store:
            store.compact(2)
            with pytest.raises(IndexOutOfRangeError):
                store.pack(2, 2)
            with pytest.raises(IndexOutOfRangeError):
                store.pack(5, 3)
            with pytest.raises(InvalidArgumentError):
                store.pack(3, -1)

    # -- durability ------------------------------------------------------------------

    def test_flush_then_durable_index_covers_appends(self, tmp_path: Path) -> None:
        """flush() is True and then last_durable_index() >= the last appended index."""
        with self.new_store(tmp_path) as store:
            for seed in range(1, 8):
                store.append(self.entry(seed))
            assert store.flush() is True
            assert 7 <= store.last_durable_index() <= store.next_slot() - 1
            store.write_at(3, self.entry(30, term=2))
            assert store.flush() is True
            assert store.last_durable_index() >= 3

    def test_end_of_append_batch_is_callable(self, tmp_path: Path) -> None:
        """end_of_append_batch(start, count) after a batch returns without effect."""
        with self.new_store(tmp_path) as store:
            for seed in range(1, 4):
                store.append(self.entry(seed))
            store.end_of_append_batch(1, 3)
            store.end_of_append_batch(4, 0)
            assert store.log_entries(1, 4) == [self.entry(seed) for seed in range(1, 4)]

    # -- bad input -------------------------------------------------------------------

    def test_bad_input_raises_segstore_errors(self, tmp_path: Path) -> None:
        """Wrong types and negative indices raise InvalidArgumentError; nothing changes."""
        with self.filled_store(tmp_path, 3) as store:
            entry = self.entry(9)
            bad_calls: list[Callable[[], object]] = [
                lambda: store.append(b"not an entry"),  # type: ignore[arg-type]
                lambda: store.append(None),  # type: ignore[arg-type]
                lambda: store.write_at(-1, entry),
                lambda: store.write_at(2, "entry"),  # type: ignore[arg-type]
                lambda: store.write_at(1.0, entry),  # type: ignore[arg-type]
                lambda: store.entry_at(-1),
                lambda: store.entry_at("1"),  # type: ignore[arg-type]
                lambda: store.term_at(-1),
                lambda: store.log_entries(-1, 2),
                lambda: store.log_entries(3, 2),
                lambda: store.log_entries_ext(1, 2, 1.5),  # type: ignore[arg-type]
                lambda: store.compact(-1),
                lambda: store.compact_async(-1, _ignore_compaction_result),
                lambda: store.pack(-1, 1),
                lambda: store.pack(1, -1),
                lambda: store.apply_pack(-1, encode_pack([entry])),
                lambda: store.apply_pack(1, "pack"),  # type: ignore[arg-type]
                lambda: store.end_of_append_batch(-1, 1),
            ]
            for position, call in enumerate(bad_calls):
                with pytest.raises(InvalidArgumentError):
                    call()
                assert store.next_slot() == 4, f"bad call #{position} changed the store"
            assert store.start_index() == 1
            assert store.log_entries(1, 4) == [self.entry(seed) for seed in range(1, 4)]

    def test_closed_store_raises(self, tmp_path: Path) -> None:
        """After close() every call raises ClosedError; close() is idempotent."""
        store = self.filled_store(tmp_path, 2)
        with store:
            pass
        store.close()
        with pytest.raises(ClosedError):
            store.append(self.entry(3))
        with pytest.raises(ClosedError):
            store.next_slot()
        with pytest.raises(ClosedError):
            store.entry_at(1)

    # -- concurrency and a random walk against the model ---------------------------------

    def test_concurrent_appends_get_distinct_indices(self, tmp_path: Path) -> None:
        """Appends from several threads get distinct, dense indices holding their entry."""
        thread_count = 4
        appends_per_thread = 200
        with self.new_store(tmp_path) as store:
            results: list[list[tuple[int, LogEntry]]] = [[] for _ in range(thread_count)]
            barrier = threading.Barrier(thread_count)

            def worker(slot: int) -> None:
                barrier.wait()
                for k in range(appends_per_thread):
                    entry = self.entry(slot * 10_000 + k)
                    results[slot].append((store.append(entry), entry))

            threads = [threading.Thread(target=worker, args=(n,)) for n in range(thread_count)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            pairs = [pair for per_thread in results for pair in per_thread]
            total = thread_count * appends_per_thread
            assert sorted(index for index, _ in pairs) == list(range(1, total + 1))
            for index, entry in pairs:
                assert store.entry_at(index) == entry
            assert store.next_slot() == total + 1

    @pytest.mark.parametrize("seed", range(6))
    def test_random_operations_match_reference(self, tmp_path: Path, seed: int) -> None:
        """A seeded random mix of every write keeps the store equal to ReferenceLog."""
        rng = random.Random(seed)
        model = ReferenceLog()
        term = 1
        with self.new_store(tmp_path) as store:
            for step in range(250):
                op = rng.random()
                if op < 0.45:
                    entry = self.entry(step, term=term)
                    assert store.append(entry) == model.append(entry)
                elif op < 0.60:
                    index = rng.randint(model.start, model.next_slot)
                    term += 1
                    entry = self.entry(step, term=term)
                    store.write_at(index, entry)
                    model.write_at(index, entry)
                elif op < 0.72:
                    last_log_index = rng.randint(max(0, model.start - 3), model.next_slot + 2)
                    assert store.compact(last_log_index) is True
                    model.compact(last_log_index)
                elif op < 0.84:
                    if model.entries:
                        index = rng.randint(model.start, model.next_slot)
                    else:
                        index = rng.randint(model.start, model.next_slot + 3)
                    count = rng.randint(0, 4)
                    entries = [self.entry(step * 100 + k, term=term) for k in range(count)]
                    store.apply_pack(index, encode_pack(entries))
                    model.apply_pack(index, entries)
                elif op < 0.92:
                    if model.entries:
                        first = rng.randint(model.start, model.next_slot - 1)
                        count = rng.randint(0, model.next_slot - first)
                        assert (
                            decode_pack(store.pack(first, count))
                            == model.entries[first - model.start : first - model.start + count]
                        )
                else:
                    hint = rng.choice([-1, 0, 1, 17, 64, 10**6])
                    first = rng.randint(model.start, model.next_slot)
                    got = store.log_entries_ext(first, model.next_slot, hint)
                    if hint < 0 or first == model.next_slot:
                        assert got == []
                    else:
                        offset = first - model.start
                        assert got is not None
                        assert got == model.entries[offset : offset + len(got)]
                        assert len(got) >= 1
                        if hint == 0:
                            assert len(got) == model.next_slot - first
                        else:
                            # Stops right after the entry whose bytes reach the hint.
                            assert sum(e.value_bytes for e in got[:-1]) < hint
                            if len(got) < model.next_slot - first:
                                assert sum(e.value_bytes for e in got) >= hint
                self.assert_matches(store, model)


class DurableLogStoreConformance(LogStoreConformance):
    """The whole suite plus restart tests, for stores that persist; define ``reopen_store``."""

    def reopen_store(self, store: LogStore, tmp_path: Path) -> LogStore:
        """Close ``store`` and return a store reopened over the same ``tmp_path``."""
        raise NotImplementedError(
            "subclasses of DurableLogStoreConformance must define reopen_store"
        )

    def reopen(self, store: LogStore, tmp_path: Path, name: str = "store") -> LogStore:
        """``reopen_store`` for ``new_store``'s directory ``name``."""
        return self.reopen_store(store, tmp_path / name)

    # -- restart -------------------------------------------------------------------------

    def test_reopen_keeps_flushed_entries(self, tmp_path: Path) -> None:
        """Flushed entries, start and next_slot come back after reopening."""
        store = self.filled_store(tmp_path, 12)
        assert store.flush() is True
        with self.reopen(store, tmp_path) as reopened:
            assert reopened.start_index() == 1
            assert reopened.next_slot() == 13
            assert reopened.log_entries(1, 13) == [self.entry(seed) for seed in range(1, 13)]
            assert reopened.last_durable_index() >= 12
            assert reopened.append(self.entry(13)) == 13

    def test_reopen_keeps_compaction(self, tmp_path: Path) -> None:
        """start_index after compact (in the middle and past the tail) survives reopening."""
        store = self.filled_store(tmp_path, 12)
        store.compact(5)
        assert store.flush() is True
        reopened = self.reopen(store, tmp_path)
        assert reopened.start_index() == 6
        assert reopened.next_slot() == 13
        assert reopened.log_entries(6, 13) == [self.entry(seed) for seed in range(6, 13)]
        reopened.compact(40)
        assert reopened.flush() is True
        with self.reopen(reopened, tmp_path) as again:
            assert again.start_index() == 41
            assert again.next_slot() == 41
            assert again.last_entry().term == 0

    def test_reopen_keeps_write_at_truncation(self, tmp_path: Path) -> None:
        """Entries removed by write_at stay removed after reopening."""
        store = self.filled_store(tmp_path, 10)
        store.write_at(4, self.entry(400, term=3))
        assert store.flush() is True
        with self.reopen(store, tmp_path) as reopened:
            assert reopened.next_slot() == 5
            assert reopened.entry_at(4) == self.entry(400, term=3)
            assert reopened.entry_at(5) is None

    def test_reopen_keeps_applied_pack(self, tmp_path: Path) -> None:
        """A pack applied into an empty store (new start) survives reopening."""
        store = self.new_store(tmp_path)
        entries = [self.entry(seed) for seed in range(50, 60)]
        store.apply_pack(50, encode_pack(entries))
        assert store.flush() is True
        with self.reopen(store, tmp_path) as reopened:
            assert reopened.start_index() == 50
            assert reopened.next_slot() == 60
            assert reopened.log_entries(50, 60) == entries

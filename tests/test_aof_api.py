"""The public API of :class:`segstore.aof.Aof`, one behaviour per test.

Covers appends and reads (every payload kind, empty and near-capacity records), record
headers, batches across segments, durability (sync, autosync, on_durable), both
truncations and their reopen, sidecar loading, the index memory budget, view lifetime,
closing, locking, readonly opens, user metadata and header dtype checks. Small
``segment_bytes`` make segments roll after a few records so every path crosses segment
boundaries.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from segstore.aof import Aof, FileIO
from segstore.aof.format import SEGMENT_HEADER_BYTES, frame_bytes, segment_name, sidecar_name
from segstore.errors import (
    ClosedError,
    CorruptionError,
    IndexOutOfRangeError,
    InvalidArgumentError,
    StoreLockedError,
)

SEGMENT_BYTES = 16 * 1024
HEADER_DTYPE = np.dtype([("term", "<u8"), ("kind", "<u2"), ("flags", "u1")])  # 11 bytes, odd
DEADLINE_S = 10.0


def payload_of(index: int, size: int | None = None) -> bytes:
    """A deterministic payload for record ``index`` (size varies with the index)."""
    size = (index * 37) % 301 if size is None else size
    return bytes((index * 7 + k) & 0xFF for k in range(size))


def header_of(index: int) -> tuple[int, int, int]:
    return (index * 1000 + 3, index % 65536, index % 256)


def open_aof(path: Path, **kwargs: object) -> Aof:
    """Open with small segments and, unless asked otherwise, no background flusher
    (deterministic durable_index; see test_sync_racing_truncate_after_returns)."""
    kwargs.setdefault("segment_bytes", SEGMENT_BYTES)
    kwargs.setdefault("autosync", False)
    return Aof.open(path, **kwargs)  # type: ignore[arg-type]


def fill(aof: Aof, count: int, *, headers: bool = False) -> list[bytes]:
    """Append ``count`` records one at a time; return their payloads."""
    out = []
    for _ in range(count):
        index = aof.last_index + 1
        data = payload_of(index)
        got = aof.append(data, header_of(index) if headers else None)
        assert got == index
        out.append(data)
    return out


def segment_files(path: Path) -> list[str]:
    return sorted(name for name in os.listdir(path) if name.endswith(".seg"))


def wait_for(predicate, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + DEADLINE_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {DEADLINE_S} s waiting for {what}")
        time.sleep(0.005)


def assert_records(aof: Aof, expected: dict[int, bytes]) -> None:
    for index, data in expected.items():
        assert bytes(aof.read(index)) == data, f"record {index}"


# -- append and read ---------------------------------------------------------------


def test_empty_aof_has_first_index_one_and_no_records(tmp_path: Path) -> None:
    with open_aof(tmp_path / "a") as aof:
        assert (aof.first_index, aof.last_index, len(aof)) == (1, 0, 0)
        assert aof.read_range(1, 1) == []
        with pytest.raises(IndexOutOfRangeError):
            aof.read(1)


def test_indices_are_dense_from_one(tmp_path: Path) -> None:
    with open_aof(tmp_path / "a") as aof:
        got = [aof.append(payload_of(i)) for i in range(1, 201)]
        assert got == list(range(1, 201))
        assert aof.append_batch([b"a", b"b", b"c"]) == 203
        assert (aof.first_index, aof.last_index, len(aof)) == (1, 203, 203)


def test_empty_payload_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "a"
    with open_aof(path) as aof:
        index = aof.append(b"")
        aof.append(b"after")
        assert bytes(aof.read(index)) == b""
        assert aof.read(index).nbytes == 0
        assert aof.payload_lengths(1, 3).tolist() == [0, 5]
    with open_aof(path) as aof:
        assert bytes(aof.read(1)) == b""
        assert bytes(aof.read(2)) == b"after"


@pytest.mark.parametrize("header_dtype", [None, HEADER_DTYPE])
def test_largest_record_fills_a_segment_and_one_byte_more_is_refused(
    tmp_path: Path, header_dtype: np.dtype | None
) -> None:
    from segstore.errors import RecordTooLargeError

    h = 0 if header_dtype is None else header_dtype.itemsize
    room = SEGMENT_BYTES - SEGMENT_HEADER_BYTES
    largest = room - 24 - h  # frame_bytes(h, largest) == room exactly
    assert frame_bytes(h, largest) == room
    path = tmp_path / "a"
    with open_aof(path, header_dtype=header_dtype) as aof:
        aof.append(b"small")
        big = payload_of(2, largest)
        assert aof.append(big) == 2  # rolls to a fresh segment it fills exactly
        with pytest.raises(RecordTooLargeError):
            aof.append(bytes(largest + 1))
        assert aof.append(b"next") == 3
        assert len(segment_files(path)) == 3
        assert bytes(aof.read(2)) == big
    with open_aof(path) as aof:
        assert bytes(aof.read(2)) == big
        assert bytes(aof.read(3)) == b"next"
        assert aof.last_index == 3


def test_payload_buffer_kinds_round_trip(tmp_path: Path) -> None:
    data = payload_of(5, 100)
    words = np.arange(10, dtype="<u4")
    kinds = [
        data,
        bytearray(data),
        memoryview(data),
        memoryview(data)[10:60],
        np.frombuffer(data, np.uint8),
        np.frombuffer(data, np.uint8)[::1][5:20],
        words,  # a wider itemsize: its raw bytes are the payload
    ]
    expected = [bytes(memoryview(k).cast("B")) for k in kinds]
    path = tmp_path / "a"
    with open_aof(path) as aof:
        for kind in kinds:
            aof.append(kind)
        assert [bytes(v) for v in aof.read_range(1, len(kinds) + 1)] == expected
        assert aof.append_batch([bytearray(b"xy"), memoryview(b"z"), np.zeros(3, np.uint8)])
        assert [bytes(aof.read(i)) for i in range(8, 11)] == [b"xy", b"z", b"\0\0\0"]
    with open_aof(path) as aof:
        assert [bytes(aof.read(i)) for i in range(1, len(kinds) + 1)] == expected


def test_append_copies_payload_so_later_mutation_does_not_leak(tmp_path: Path) -> None:
    with open_aof(tmp_path / "a") as aof:
        buffer = bytearray(b"original")
        aof.append(buffer)
        buffer[:] = b"MUTATED!"
        assert bytes(aof.read(1)) == b"original"


# -- headers -----------------------------------------------------------------------


def test_header_and_headers_across_segment_boundaries(tmp_path: Path) -> None:
    path = tmp_path / "a"
    count = 400
    with open_aof(path, header_dtype=HEADER_DTYPE) as aof:
        fill(aof, count, headers=True)
        assert len(aof.segment_paths()) >= 3
        expected = np.array([header_of(i) for i in range(1, count + 1)], HEADER_DTYPE)
        for i in (1, 2, count // 2, count):
            assert aof.header(i).tolist() == header_of(i)
        boundary = int(os.path.basename(aof.segment_paths()[1]).split(".")[0])
        got = aof.headers(boundary - 3, boundary + 3)
        assert got.dtype == HEADER_DTYPE
        assert got.tolist() == expected[boundary - 4 : boundary + 2].tolist()
        assert aof.headers(1, count + 1).tolist() == expected.tolist()
        assert aof.headers(5, 5).shape == (0,)
        assert aof.headers(5, 5).dtype == HEADER_DTYPE
    with open_aof(path, header_dtype=HEADER_DTYPE) as aof:
        assert aof.headers(1, count + 1).tolist() == expected.tolist()
        assert aof.header(boundary).tolist() == header_of(boundary)


def test_header_accepts_scalar_tuple_and_bytes_and_none_is_zero(tmp_path: Path) -> None:
    with open_aof(tmp_path / "a", header_dtype=HEADER_DTYPE) as aof:
        scalar = np.array((9, 8, 7), HEADER_DTYPE)[()]
        aof.append(b"a", scalar)
        aof.append(b"b", (1, 2, 3))
        aof.append(b"c", np.array((4, 5, 6), HEADER_DTYPE).tobytes())
        aof.append(b"d")
        assert aof.headers(1, 5).tolist() == [(9, 8, 7), (1, 2, 3), (4, 5, 6), (0, 0, 0)]


def test_headers_result_is_a_copy(tmp_path: Path) -> None:
    with open_aof(tmp_path / "a", header_dtype=HEADER_DTYPE) as aof:
        aof.append(b"a", (1, 2, 3))
        got = aof.headers(1, 2)
        got["term"][0] = 99
        assert aof.header(1).tolist() == (1, 2, 3)


def test_headers_without_header_dtype_is_an_error(tmp_path: Path) -> None:
    with open_aof(tmp_path / "a") as aof:
        aof.append(b"a")
        with pytest.raises(InvalidArgumentError):
            aof.header(1)
        with pytest.raises(InvalidArgumentError):
            aof.headers(1, 2)


def test_plain_header_dtype_survives_reopen(tmp_path: Path) -> None:
    """A header dtype accepted at creation is accepted again at reopen, unchanged.

    Fails today: a plain (non-structured) dtype is stored as ``[["value", "<u8"]]``
    (format.dtype_to_json) and reads back as a one-field struct, so reopening with the
    very same ``header_dtype`` raises and ``header()`` changes type.
    """
    path = tmp_path / "a"
    try:
        aof = open_aof(path, header_dtype=np.uint64)
    except InvalidArgumentError:
        return  # refusing plain dtypes up front is a consistent contract too
    with aof:
        aof.append(b"a", 7)
        assert aof.header(1) == 7
    with open_aof(path, header_dtype=np.uint64) as aof:
        assert aof.header_dtype == np.dtype(np.uint64)
        assert aof.header(1) == 7
    with open_aof(path) as aof:
        assert aof.header_dtype == np.dtype(np.uint64)


# -- batches -------------------------------------------------------------------------


def test_append_batch_spans_several_segments_with_headers(tmp_path: Path) -> None:
    path = tmp_path / "a"
    first_batch = [payload_of(i) for i in range(1, 301)]
    heads = np.array([header_of(i) for i in range(1, 301)], HEADER_DTYPE)
    with open_aof(path, header_dtype=HEADER_DTYPE) as aof:
        assert aof.append_batch(first_batch, heads) == 300
        assert len(aof.segment_paths()) >= 3
        second = [payload_of(i) for i in range(301, 321)]
        assert aof.append_batch(second) == 320  # headers=None: zero headers
        assert aof.headers(301, 321).tolist() == [(0, 0, 0)] * 20
        assert aof.headers(1, 301).tolist() == heads.tolist()
        assert [bytes(v) for v in aof.read_range(1, 321)] == first_batch + second
        lengths = aof.payload_lengths(1, 321)
        assert lengths.tolist() == [len(p) for p in first_batch + second]
        # segment files are named by the first index they hold, contiguous
        firsts = [int(os.path.basename(p).split(".")[0]) for p in aof.segment_paths()]
        assert firsts[0] == 1
        assert firsts == sorted(firsts)
    with open_aof(path) as aof:
        assert [bytes(v) for v in aof.read_range(1, 321)] == first_batch + second
        assert aof.headers(1, 301).tolist() == heads.tolist()


def test_payload_spans_feed_append_gathered_across_segments(tmp_path: Path) -> None:
    # Records copied from one Aof to another straight from its mappings, each payload
    # cut by 2 bytes at the front, with headers; both logs span several segments.
    payloads = [payload_of(i) + b"xy" for i in range(1, 301)]
    heads = np.array([header_of(i) for i in range(1, 301)], HEADER_DTYPE)
    with (
        open_aof(tmp_path / "a") as source,
        open_aof(tmp_path / "b", header_dtype=HEADER_DTYPE) as target,
    ):
        source.append_batch(payloads)
        spans = source.payload_spans(1, 301)
        assert len(spans) == len(source.segment_paths()) >= 3
        assert sum(len(span.lengths) for span in spans) == 300
        assert [span.first_index for span in spans] == [
            info.first_index for info in source.segment_infos()
        ]
        done = 0
        for span in spans:
            rows = heads[done : done + len(span.lengths)]
            done = target.append_gathered(span.view, span.offsets + 2, span.lengths - 2, rows)
        assert done == 300
        assert len(target.segment_paths()) >= 3
        assert [bytes(v) for v in target.read_range(1, 301)] == [p[2:] for p in payloads]
        assert target.headers(1, 301).tolist() == heads.tolist()


def test_payload_spans_checks_crcs(tmp_path: Path) -> None:
    path = tmp_path / "a"
    with open_aof(path) as aof:
        aof.append_batch([payload_of(i) for i in range(1, 101)])
        segment = aof.segment_paths()[0]
        offset = int(aof._segments[0].offsets[5])
    with open(segment, "r+b") as f:
        f.seek(offset + 30)
        byte = f.read(1)
        f.seek(offset + 30)
        f.write(bytes([byte[0] ^ 0x10]))
    with open_aof(path) as aof:
        with pytest.raises(CorruptionError) as caught:
            aof.payload_spans(1, 101)
        assert caught.value.path == str(segment)
        assert caught.value.offset == offset


def test_read_range_across_segments_matches_read(tmp_path: Path) -> None:
    with open_aof(tmp_path / "a") as aof:
        expected = fill(aof, 500)
        assert len(aof.segment_paths()) >= 4
        for start, end in [(1, 501), (100, 101), (37, 444), (500, 501), (250, 250)]:
            got = [bytes(v) for v in aof.read_range(start, end)]
            assert got == expected[start - 1 : end - 1]
        with pytest.raises(IndexOutOfRangeError):
            aof.read_range(1, 502)
        with pytest.raises(InvalidArgumentError):
            aof.read_range(10, 9)


# -- durability ----------------------------------------------------------------------


def test_sync_returns_durable_index(tmp_path: Path) -> None:
    with open_aof(tmp_path / "a", autosync=False) as aof:
        fill(aof, 50)
        assert aof.sync() == 50
        assert aof.durable_index == 50
        aof.append_batch([b"x"] * 10)
        assert aof.sync() == 60


def test_autosync_false_leaves_durable_index_behind_until_sync(tmp_path: Path) -> None:
    with open_aof(tmp_path / "a", autosync=False) as aof:
        fill(aof, 300)  # rolls segments too: no roll may sync on its own
        time.sleep(0.05)
        assert aof.durable_index == 0
        assert aof.sync() == 300
        aof.append(b"more")
        time.sleep(0.05)
        assert aof.durable_index == 300
        assert aof.sync() == 301


def test_autosync_makes_records_durable_without_sync(tmp_path: Path) -> None:
    with open_aof(tmp_path / "a", autosync=True) as aof:
        fill(aof, 300)
        wait_for(lambda: aof.durable_index == 300, "durable_index to reach 300")
        aof.append_batch([b"y"] * 5)
        wait_for(lambda: aof.durable_index == 305, "durable_index to reach 305")
        assert aof.durable_index <= aof.last_index


def test_autosync_flushes_again_after_writers_synced_themselves(tmp_path: Path) -> None:
    # While writers' own syncs cover everything the flusher backs off (lingers up to
    # 16x longer); a record no writer syncs afterwards must still become durable, by
    # the flusher.
    flushers: list[str] = []
    with open_aof(tmp_path / "a", autosync=True, autosync_linger_s=0.001) as aof:
        aof.on_durable(lambda event: flushers.append(threading.current_thread().name))
        for _ in range(60):  # ~60 rounds' worth of writer-synced batches
            aof.append_batch([b"x"] * 8)
            aof.sync()
            time.sleep(0.001)
        assert aof.durable_index == 480
        synced_by_writer = len(flushers)
        aof.append(b"unsynced")
        wait_for(lambda: aof.durable_index == 481, "the flusher to cover record 481")
    assert flushers[synced_by_writer:] == ["segstore-flusher"]


def test_close_cuts_the_flushers_linger_short(tmp_path: Path) -> None:
    # A flusher lingering (30 s here, so any wait for it is unmistakable) must not
    # hold up close.
    aof = open_aof(tmp_path / "a", autosync=True, autosync_linger_s=30.0)
    aof.append(b"x")  # the flusher wakes and lingers
    closer = threading.Thread(target=aof.close)
    closer.start()
    closer.join(DEADLINE_S)
    assert not closer.is_alive(), "close waited for the flusher's linger"
    with open_aof(tmp_path / "a") as reopened:
        assert bytes(reopened.read(1)) == b"x"


def test_on_durable_sees_increasing_indices_up_to_the_last(tmp_path: Path) -> None:
    seen: list[int | BaseException] = []
    lock = threading.Lock()

    def callback(event: int | BaseException) -> None:
        with lock:
            seen.append(event)

    with open_aof(tmp_path / "a", autosync=True) as aof:
        aof.on_durable(callback)
        for _ in range(20):
            fill(aof, 10)
            time.sleep(0.001)
        aof.sync()
        wait_for(lambda: seen and seen[-1] == 200, "a callback with 200")
    assert all(isinstance(e, int) for e in seen), seen
    assert seen == sorted(set(seen)), f"not strictly increasing: {seen}"
    assert seen[0] >= 1 and seen[-1] == 200


def test_on_durable_with_explicit_sync(tmp_path: Path) -> None:
    seen: list[int | BaseException] = []
    with open_aof(tmp_path / "a", autosync=False) as aof:
        aof.on_durable(seen.append)
        fill(aof, 3)
        aof.sync()
        fill(aof, 4)
        aof.sync()
        aof.sync()  # nothing new: no callback
    assert seen == [3, 7]


class _BlockingIO(FileIO):
    """Blocks the first fdatasync after :meth:`arm` until :meth:`release`."""

    def __init__(self) -> None:
        self._armed = False
        self.entered = threading.Event()
        self._gate = threading.Event()

    def arm(self) -> None:
        self._armed = True

    def release(self) -> None:
        self._gate.set()

    def fdatasync(self, fd: int, path: str) -> None:
        if self._armed:
            self._armed = False
            self.entered.set()
            self._gate.wait(DEADLINE_S)
        super().fdatasync(fd, path)


def test_sync_racing_truncate_after_returns(tmp_path: Path) -> None:
    """A sync() that read last_index before a concurrent truncate_after lowered it must
    still return.

    Fails today (livelock): GroupCommit.sync(target) loops until durable_index >= target,
    but after truncate_after the flush can only reach the new, lower last_index, so the
    loop spins forever. The background flusher (autosync=True) hits the same race when a
    truncate_after follows appends, and close() then hangs joining it.
    """
    io = _BlockingIO()
    aof = open_aof(tmp_path / "a", io=io)
    try:
        fill(aof, 20)
        io.arm()
        truncating = threading.Thread(target=aof.truncate_after, args=(10,))
        truncating.start()
        assert io.entered.wait(DEADLINE_S)  # truncate_after holds the flush mutex now
        results: list[int] = []
        syncing = threading.Thread(target=lambda: results.append(aof.sync()), daemon=True)
        syncing.start()
        time.sleep(0.2)  # let sync() read last_index (20) and queue on the flush mutex
        io.release()
        truncating.join(DEADLINE_S)
        syncing.join(2.0)
        stuck = syncing.is_alive()
        if stuck:
            aof.append_batch([b"unstick"] * 10)  # lets the spinning sync reach its target
            syncing.join(DEADLINE_S)
        assert not stuck, "sync() spun forever after a concurrent truncate_after"
        assert results and results[0] >= 10
        assert aof.last_index == 10
    finally:
        io.release()
        aof.close()


# -- truncate_before -------------------------------------------------------------------


def _segment_firsts(aof: Aof) -> list[int]:
    return [int(os.path.basename(p).split(".")[0]) for p in aof.segment_paths()]


def test_truncate_before_inside_a_segment(tmp_path: Path) -> None:
    path = tmp_path / "a"
    with open_aof(path, header_dtype=HEADER_DTYPE) as aof:
        expected = fill(aof, 400, headers=True)
        firsts = _segment_firsts(aof)
        cut = firsts[1] + 5  # inside the second segment
        aof.truncate_before(cut)
        assert (aof.first_index, aof.last_index) == (cut, 400)
        assert segment_files(path) == [segment_name(f) for f in firsts[1:]]
        assert sidecar_name(firsts[0]) not in os.listdir(path)
        with pytest.raises(IndexOutOfRangeError):
            aof.read(cut - 1)
        assert_records(aof, {i: expected[i - 1] for i in (cut, cut + 1, 400)})
        assert aof.header(cut).tolist() == header_of(cut)
        assert aof.append(b"tail") == 401
    with open_aof(path) as aof:
        assert (aof.first_index, aof.last_index) == (cut, 401)
        assert [bytes(v) for v in aof.read_range(cut, 401)] == expected[cut - 1 :]
        with pytest.raises(IndexOutOfRangeError):
            aof.read(cut - 1)


def test_truncate_before_at_a_segment_boundary(tmp_path: Path) -> None:
    path = tmp_path / "a"
    with open_aof(path) as aof:
        expected = fill(aof, 400)
        firsts = _segment_firsts(aof)
        aof.truncate_before(firsts[2])
        assert aof.first_index == firsts[2]
        assert segment_files(path) == [segment_name(f) for f in firsts[2:]]
        assert bytes(aof.read(firsts[2])) == expected[firsts[2] - 1]
    with open_aof(path) as aof:
        assert aof.first_index == firsts[2]
        assert segment_files(path) == [segment_name(f) for f in firsts[2:]]
        assert [bytes(v) for v in aof.read_range(firsts[2], 401)] == expected[firsts[2] - 1 :]


def test_truncate_before_at_or_below_first_index_changes_nothing(tmp_path: Path) -> None:
    with open_aof(tmp_path / "a") as aof:
        fill(aof, 10)
        aof.truncate_before(5)
        aof.truncate_before(5)
        aof.truncate_before(2)
        assert (aof.first_index, aof.last_index) == (5, 10)


@pytest.mark.parametrize("past", [1, 1000])
def test_truncate_before_past_the_tail_empties_and_next_append_gets_that_index(
    tmp_path: Path, past: int
) -> None:
    path = tmp_path / "a"
    with open_aof(path) as aof:
        fill(aof, 300)
        target = 300 + past
        aof.truncate_before(target)
        assert (aof.first_index, aof.last_index, len(aof)) == (target, target - 1, 0)
        assert segment_files(path) == []
        assert aof.durable_index <= aof.last_index
        with pytest.raises(IndexOutOfRangeError):
            aof.read(300)
    with open_aof(path) as aof:
        assert (aof.first_index, aof.last_index, len(aof)) == (target, target - 1, 0)
        assert aof.append(b"first again") == target
        assert aof.append_batch([b"b1", b"b2"]) == target + 2
        assert aof.sync() == target + 2
    with open_aof(path) as aof:
        assert (aof.first_index, aof.last_index) == (target, target + 2)
        assert [bytes(v) for v in aof.read_range(target, target + 3)] == [
            b"first again",
            b"b1",
            b"b2",
        ]


# -- truncate_after --------------------------------------------------------------------


def test_truncate_after_inside_a_segment(tmp_path: Path) -> None:
    path = tmp_path / "a"
    with open_aof(path, header_dtype=HEADER_DTYPE) as aof:
        expected = fill(aof, 400, headers=True)
        firsts = _segment_firsts(aof)
        cut = firsts[1] + 3
        aof.truncate_after(cut)
        assert (aof.first_index, aof.last_index) == (1, cut)
        assert aof.durable_index <= cut
        assert segment_files(path) == [segment_name(f) for f in firsts[:2]]
        with pytest.raises(IndexOutOfRangeError):
            aof.read(cut + 1)
        assert aof.append(b"new", (1, 1, 1)) == cut + 1
        assert aof.append_batch([b"n2", b"n3"]) == cut + 3
        assert bytes(aof.read(cut + 1)) == b"new"
        assert aof.header(cut + 1).tolist() == (1, 1, 1)
    with open_aof(path) as aof:
        assert aof.last_index == cut + 3
        got = [bytes(v) for v in aof.read_range(1, cut + 4)]
        assert got == [*expected[:cut], b"new", b"n2", b"n3"]
        assert aof.header(cut).tolist() == header_of(cut)


def test_truncate_after_at_a_segment_boundary(tmp_path: Path) -> None:
    path = tmp_path / "a"
    with open_aof(path) as aof:
        expected = fill(aof, 400)
        firsts = _segment_firsts(aof)
        cut = firsts[2] - 1  # last record of the second segment
        aof.truncate_after(cut)
        assert aof.last_index == cut
        assert segment_files(path) == [segment_name(f) for f in firsts[:2]]
        # The tail is writable again: its sidecar no longer describes it. The file goes
        # before the segment gets a successor (test_aof_recovery pins that) or at open.
        assert not aof.segment_infos()[-1].has_sidecar
    with open_aof(path) as aof:
        assert sidecar_name(firsts[1]) not in os.listdir(path)
        assert aof.last_index == cut
        assert [bytes(v) for v in aof.read_range(1, cut + 1)] == expected[:cut]
        assert aof.append(b"after cut") == cut + 1
    with open_aof(path) as aof:
        assert aof.last_index == cut + 1
        assert bytes(aof.read(cut + 1)) == b"after cut"
        assert bytes(aof.read(cut)) == expected[cut - 1]


def test_truncate_after_to_first_index_minus_one_empties(tmp_path: Path) -> None:
    path = tmp_path / "a"
    with open_aof(path) as aof:
        fill(aof, 300)
        aof.truncate_before(50)
        aof.truncate_after(49)
        assert (aof.first_index, aof.last_index, len(aof)) == (50, 49, 0)
        assert aof.durable_index <= 49
    with open_aof(path) as aof:
        assert (aof.first_index, aof.last_index, len(aof)) == (50, 49, 0)
        assert aof.append(b"fresh") == 50
    with open_aof(path) as aof:
        assert (aof.first_index, aof.last_index) == (50, 50)
        assert bytes(aof.read(50)) == b"fresh"


def test_truncated_records_never_come_back_after_reopen(tmp_path: Path) -> None:
    """Stale frames past a truncate_after stay dead (FORMAT.md 4.2), even when the
    rewritten tail is shorter than what was there before."""
    path = tmp_path / "a"
    with open_aof(path) as aof:
        fill(aof, 20)
        aof.truncate_after(10)
        aof.append(b"x")  # index 11, shorter frame than the old 11
    with open_aof(path) as aof:
        assert aof.last_index == 11
        assert bytes(aof.read(11)) == b"x"
    with open_aof(path) as aof:
        aof.truncate_after(5)
    with open_aof(path) as aof:
        assert aof.last_index == 5


# -- reopen, sidecars and memory -------------------------------------------------------


def test_reopen_after_many_segments_loads_sidecars(tmp_path: Path) -> None:
    path = tmp_path / "a"
    with open_aof(path, header_dtype=HEADER_DTYPE) as aof:
        expected = fill(aof, 1000, headers=True)
        segments = len(aof.segment_paths())
    assert segments >= 6
    sidecars = sorted(n for n in os.listdir(path) if n.endswith(".idx"))
    assert len(sidecars) == segments - 1
    with open_aof(path) as aof:
        assert aof.recovery.sidecars_loaded == segments - 1
        assert aof.recovery.segments_scanned == 1  # only the active one
        assert aof.recovery.records == 1000
        assert [bytes(v) for v in aof.read_range(1, 1001)] == expected
        assert aof.headers(1, 1001).tolist() == [header_of(i) for i in range(1, 1001)]


def test_reopen_without_sidecars_rescans_and_rewrites_them(tmp_path: Path) -> None:
    path = tmp_path / "a"
    with open_aof(path) as aof:
        expected = fill(aof, 600)
        segments = len(aof.segment_paths())
    for name in os.listdir(path):
        if name.endswith(".idx"):
            os.unlink(path / name)
    with open_aof(path) as aof:
        assert aof.recovery.sidecars_loaded == 0
        assert aof.recovery.segments_scanned == segments
        assert [bytes(v) for v in aof.read_range(1, 601)] == expected
    with open_aof(path) as aof:
        assert aof.recovery.sidecars_loaded == segments - 1


class _ThreadsOfZeroFill(FileIO):
    """Records the name of every thread that zero-fills a file."""

    def __init__(self) -> None:
        self.fill_threads: set[str] = set()

    def zero_range(self, fd: int, start: int, end: int, path: str) -> None:
        self.fill_threads.add(threading.current_thread().name)
        super().zero_range(fd, start, end, path)


def _wait_for_background_fill() -> None:
    deadline = time.monotonic() + 30
    while any(t.name == "segstore-prealloc" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the spare fill never finished"
        time.sleep(0.01)


def test_every_rollover_finds_a_spare_filled_in_the_background(tmp_path: Path) -> None:
    # Segments grow 4, 8, 16 MiB; each rollover starts the next spare's fill in the
    # background. A finished fill once kept the next one from starting, so every other
    # rollover zero-filled a whole segment on the appending thread.
    io = _ThreadsOfZeroFill()
    payloads = [bytes(4000)] * 256  # ~1 MiB per batch
    with Aof.open(tmp_path / "a", io=io, autosync=False) as aof:
        while len(aof.segment_paths()) < 4:
            _wait_for_background_fill()
            aof.append_batch(payloads)
            aof.sync()
    assert io.fill_threads == {"segstore-prealloc"}


def _assert_sealed_index_exact(aof: Aof) -> None:
    h = 0 if aof.header_dtype is None else aof.header_dtype.itemsize
    sealed = aof._segments[:-1]
    assert sealed, "the test needs sealed segments"
    for segment in sealed:
        n = segment.count
        assert n > 0
        assert segment.offsets.nbytes == 4 * n, segment.path
        assert segment.lengths.nbytes == 4 * n, segment.path
        assert segment.headers.nbytes == h * n, segment.path
        total = segment.offsets.nbytes + segment.lengths.nbytes + segment.headers.nbytes
        assert total == (8 + h) * n


def test_sealed_segment_index_costs_eight_bytes_per_record_plus_header(tmp_path: Path) -> None:
    path = tmp_path / "a"
    with open_aof(path, header_dtype=HEADER_DTYPE, autosync=False) as aof:
        fill(aof, 800, headers=True)
        aof.sync()
        _assert_sealed_index_exact(aof)
    with open_aof(path) as aof:  # from sidecars
        _assert_sealed_index_exact(aof)
        for segment in aof._segments[:-1]:
            assert segment.offsets.base is None  # owns its memory, pins no larger buffer
    for name in os.listdir(path):
        if name.endswith(".idx"):
            os.unlink(path / name)
    with open_aof(path) as aof:  # from scans
        _assert_sealed_index_exact(aof)


def test_readonly_open_keeps_sealed_index_exact(tmp_path: Path) -> None:
    """Fails today: a readonly open never trims the scan's slack (recovery.py _scan
    reserves >= 2048 slots per segment; Aof._init skips _finish_recovery, which trims)."""
    path = tmp_path / "a"
    with open_aof(path, header_dtype=HEADER_DTYPE) as aof:
        fill(aof, 800, headers=True)
    for name in os.listdir(path):
        if name.endswith(".idx"):
            os.unlink(path / name)
    with open_aof(path, readonly=True) as aof:
        _assert_sealed_index_exact(aof)


# -- views, closing, locking -----------------------------------------------------------


def test_read_views_stay_valid_after_further_appends(tmp_path: Path) -> None:
    with open_aof(tmp_path / "a") as aof:
        aof.append(b"first record")
        view = aof.read(1)
        views = aof.read_range(1, 2)
        fill(aof, 500)  # several segment rolls
        assert bytes(view) == b"first record"
        assert bytes(views[0]) == b"first record"
        assert bytes(aof.read(1)) == b"first record"


def test_read_after_close_raises_closed_error(tmp_path: Path) -> None:
    aof = open_aof(tmp_path / "a", header_dtype=HEADER_DTYPE)
    aof.append(b"a", (1, 2, 3))
    aof.close()
    aof.close()  # idempotent
    assert aof.closed
    calls = [
        lambda: aof.read(1),
        lambda: aof.read_range(1, 2),
        lambda: aof.header(1),
        lambda: aof.headers(1, 2),
        lambda: aof.payload_lengths(1, 2),
        lambda: aof.append(b"b"),
        lambda: aof.append_batch([b"b"]),
        lambda: aof.sync(),
        lambda: aof.truncate_before(1),
        lambda: aof.truncate_after(0),
        lambda: aof.set_user_meta({}),
        lambda: aof.on_durable(lambda _: None),
    ]
    for call in calls:
        with pytest.raises(ClosedError):
            call()


def test_context_manager_closes_and_syncs(tmp_path: Path) -> None:
    path = tmp_path / "a"
    with open_aof(path, autosync=False) as aof:
        aof.append(b"kept")
    assert aof.closed
    with open_aof(path) as again:
        assert bytes(again.read(1)) == b"kept"


def test_second_open_of_same_path_raises_store_locked(tmp_path: Path) -> None:
    path = tmp_path / "a"
    with open_aof(path) as aof:
        aof.append(b"a")
        with pytest.raises(StoreLockedError) as info:
            open_aof(path)
        assert isinstance(info.value, OSError)
        with pytest.raises(StoreLockedError):
            open_aof(path, readonly=True)
        aof.append(b"b")  # the failed open disturbed nothing
        assert aof.last_index == 2
    with open_aof(path) as aof:  # the lock is free again after close
        assert aof.last_index == 2


def test_second_open_from_another_process_raises_store_locked(tmp_path: Path) -> None:
    path = tmp_path / "a"
    script = textwrap.dedent(
        """
        import sys
        from segstore.aof import Aof, FileIO
        from segstore.errors import StoreLockedError
        try:
            Aof.open(sys.argv[1])
        except StoreLockedError:
            print("locked")
        else:
            print("opened")
        """
    )
    with open_aof(path) as aof:
        aof.append(b"a")
        result = subprocess.run(
            [sys.executable, "-c", script, str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "locked"
    result = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.stdout.strip() == "opened", result.stderr


def test_views_of_truncated_segments_stay_readable(tmp_path: Path) -> None:
    # read() promises a view never crashes. Segments dropped by truncate_before used to
    # be recycled or shrunk by the background deleter while views still mapped them:
    # reading past the shrunk end was SIGBUS. Run in a child so that a crash is a
    # return code here.
    script = textwrap.dedent(
        """
        import sys, time
        from segstore.aof import Aof
        aof = Aof.open(sys.argv[1], segment_bytes=8 << 20)
        while len(aof.segment_paths()) < 6:
            aof.append(b"y" * 60000)
        aof.sync()
        views = [aof.read(s.last_index) for s in aof.segment_infos()[:-1]]
        aof.truncate_before(aof.segment_infos()[-1].first_index)
        time.sleep(1.0)  # the deleter's delay and shrink steps
        print(sum(bytes(v) == b"y" * 60000 for v in views), len(views))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "a")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, (result.returncode, result.stderr)
    kept, total = map(int, result.stdout.split())
    assert kept == total >= 5


def test_reads_racing_truncations_see_a_record_or_out_of_range(tmp_path: Path) -> None:
    # Reads take no lock. One that races a truncation must return the record (it came
    # first) or raise IndexOutOfRangeError (it came after): never another error, never
    # other bytes. A dropped segment is never mapped again.
    path = tmp_path / "a"
    problems: list[str] = []
    stop = threading.Event()
    with open_aof(path, autosync=False) as aof:
        expected = {i: payload_of(i) for i in range(1, 2001)}
        aof.append_batch([expected[i] for i in range(1, 2001)])

        def reader() -> None:
            rng = random.Random(5)
            while not stop.is_set():
                i = rng.randint(1, 2000)
                try:
                    got = bytes(aof.read(i))
                except IndexOutOfRangeError:
                    continue
                except Exception as exc:  # any other error is the failure
                    problems.append(f"read({i}): {exc!r}")
                    return
                if got != expected[i]:
                    problems.append(f"read({i}) returned other bytes")
                    return

        threads = [threading.Thread(target=reader) for _ in range(2)]
        for thread in threads:
            thread.start()
        try:
            dropped = aof._segments[0]
            for cut in range(1990, 1600, -30):  # truncate_after drops tail segments
                aof.truncate_after(cut)
                aof.append_batch([expected[i] for i in range(cut + 1, 2001)])
            aof.truncate_before(1500)  # and truncate_before head ones
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        with pytest.raises(IndexOutOfRangeError):
            dropped.view()
    assert not problems, problems


def test_index_lookups_racing_truncations_see_a_record_or_out_of_range(
    tmp_path: Path,
) -> None:
    # header, header_raw, headers and payload_lengths read the in-memory index with no
    # lock. Racing truncations, each must give what the records held (it came first)
    # or raise IndexOutOfRangeError (it came after): never a short or shifted result,
    # never another error.
    count = 2000
    problems: list[str] = []
    stop = threading.Event()
    with open_aof(tmp_path / "a", header_dtype=HEADER_DTYPE) as aof:
        rows = np.array([header_of(i) for i in range(1, count + 1)], HEADER_DTYPE)
        sizes = np.array([len(payload_of(i)) for i in range(1, count + 1)], np.uint32)

        def append_from(first: int) -> None:
            aof.append_batch([payload_of(i) for i in range(first, count + 1)], rows[first - 1 :])

        append_from(1)
        lookups: list[tuple[str, Callable[[int], object], Callable[[int], object]]] = [
            ("header", aof.header, lambda i: rows[i - 1]),
            ("header_raw", aof.header_raw, lambda i: rows[i - 1].tobytes()),
            ("headers", lambda i: aof.headers(i, i + 40).tobytes(),
             lambda i: rows[i - 1 : i + 39].tobytes()),
            ("payload_lengths", lambda i: aof.payload_lengths(i, i + 40).tolist(),
             lambda i: sizes[i - 1 : i + 39].tolist()),
        ]  # fmt: skip

        def reader(seed: int) -> None:
            rng = random.Random(seed)
            while not stop.is_set():
                name, lookup, expected = lookups[rng.randrange(len(lookups))]
                i = rng.randint(1, count - 40)
                try:
                    got = lookup(i)
                except IndexOutOfRangeError:
                    continue
                except Exception as exc:  # any other error is the failure
                    problems.append(f"{name}({i}): {exc!r}")
                    return
                if got != expected(i):
                    problems.append(f"{name}({i}) returned {got!r}, not {expected(i)!r}")
                    return

        threads = [threading.Thread(target=reader, args=(seed,)) for seed in (1, 2)]
        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)  # switch threads often: the races show up at once
        for thread in threads:
            thread.start()
        try:
            for cut in range(1990, 1500, -70):  # truncate_after drops tail segments
                aof.truncate_after(cut)
                append_from(cut + 1)
            for first in range(100, 1500, 100):  # and truncate_before head ones
                aof.truncate_before(first)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
            sys.setswitchinterval(interval)
    assert not problems, problems


def test_a_subclass_overriding_read_keeps_its_override(tmp_path: Path) -> None:
    # Aof binds its compiled read on the instance only when read is Aof's own.
    class UpperAof(Aof):
        def read(self, index: int) -> memoryview:
            return memoryview(bytes(super().read(index)).upper())

    with UpperAof.open(tmp_path / "a", segment_bytes=SEGMENT_BYTES) as aof:
        aof.append(b"abc")
        assert bytes(aof.read(1)) == b"ABC"
    with open_aof(tmp_path / "a") as aof:
        assert bytes(aof.read(1)) == b"abc"
    with pytest.raises(ClosedError):
        aof.read(1)


def test_a_patch_of_aof_read_reaches_aofs_opened_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tests patch Aof.read on the class (tests/test_stats.py makes it refuse).
    with open_aof(tmp_path / "a") as aof:
        aof.append(b"abc")
    monkeypatch.setattr(Aof, "read", lambda self, index: memoryview(b"patched"))
    with open_aof(tmp_path / "a") as aof:
        assert bytes(aof.read(1)) == b"patched"


def test_out_of_range_reads_never_wait_for_a_writer(tmp_path: Path) -> None:
    # Only a read that fails as a race can make it fail is retried under the write
    # lock; an out-of-range read raises at once even while a writer holds the lock.
    with open_aof(tmp_path / "a") as aof:
        aof.append(b"x")
        outcomes: list[str] = []

        def read_far() -> None:
            for call in (
                lambda: aof.read(10**6),
                lambda: aof.read_record(10**6),
                lambda: aof.read_range(10**6, 10**6 + 1),
            ):
                try:
                    call()
                except IndexOutOfRangeError:
                    outcomes.append("out of range")

        with aof._write_lock:
            reader = threading.Thread(target=read_far)
            reader.start()
            reader.join(5.0)
            assert not reader.is_alive(), "a read waited for the writer"
        assert outcomes == ["out of range"] * 3


def test_payload_span_views_outlive_close_and_truncation(tmp_path: Path) -> None:
    with open_aof(tmp_path / "a") as aof:
        payloads = fill(aof, 300)  # several segments
        spans = aof.payload_spans(1, 301)
        aof.truncate_before(250)
    got = [
        bytes(span.view[int(o) : int(o) + int(n)])
        for span in spans
        for o, n in zip(span.offsets, span.lengths, strict=True)
    ]
    assert got == payloads


def test_readonly_open_reads_but_cannot_write(tmp_path: Path) -> None:
    path = tmp_path / "a"
    with open_aof(path, header_dtype=HEADER_DTYPE) as aof:
        expected = fill(aof, 300, headers=True)
    before = {name: (path / name).read_bytes() for name in os.listdir(path)}
    with open_aof(path, readonly=True) as aof:
        assert [bytes(v) for v in aof.read_range(1, 301)] == expected
        for call in [
            lambda: aof.append(b"x"),
            lambda: aof.append_batch([b"x"]),
            lambda: aof.truncate_before(5),
            lambda: aof.truncate_after(5),
            lambda: aof.set_user_meta({"a": 1}),
        ]:
            with pytest.raises(InvalidArgumentError):
                call()
        assert aof.last_index == 300
    after = {name: (path / name).read_bytes() for name in os.listdir(path)}
    assert after == before


def test_readonly_open_of_missing_directory_creates_nothing(tmp_path: Path) -> None:
    from segstore.errors import NotAStoreError

    with pytest.raises(NotAStoreError):
        Aof.open(tmp_path / "missing", readonly=True)
    assert not (tmp_path / "missing").exists()


# -- metadata ----------------------------------------------------------------------------


def test_user_meta_persists(tmp_path: Path) -> None:
    path = tmp_path / "a"
    with open_aof(path, user={"term": 1, "voted_for": None}) as aof:
        assert aof.user_meta == {"term": 1, "voted_for": None}
        aof.append(b"a")
        aof.set_user_meta({"term": 2, "voted_for": "n3", "nested": {"k": [1, 2]}})
        copy = aof.user_meta
        copy["term"] = 999  # a copy: mutating it changes nothing
        assert aof.user_meta["term"] == 2
    with open_aof(path, user={"ignored": True}) as aof:
        assert aof.user_meta == {"term": 2, "voted_for": "n3", "nested": {"k": [1, 2]}}
        aof.truncate_after(0)
        aof.truncate_before(7)
    with open_aof(path) as aof:  # truncations rewrite the meta but keep user keys
        assert aof.user_meta["voted_for"] == "n3"
        assert aof.first_index == 7


def test_header_dtype_mismatch_on_reopen_raises_and_harms_nothing(tmp_path: Path) -> None:
    path = tmp_path / "a"
    with open_aof(path, header_dtype=HEADER_DTYPE) as aof:
        aof.append(b"a", (1, 2, 3))
    other = np.dtype([("term", "<u8"), ("kind", "<u2")])
    with pytest.raises(InvalidArgumentError):
        open_aof(path, header_dtype=other)
    with pytest.raises(InvalidArgumentError):
        open_aof(path, header_dtype=np.dtype([("term", ">u8"), ("kind", "<u2"), ("flags", "u1")]))
    with open_aof(tmp_path / "plain") as aof:
        aof.append(b"a")
    with pytest.raises(InvalidArgumentError):
        open_aof(tmp_path / "plain", header_dtype=HEADER_DTYPE)
    with open_aof(path) as aof:  # None adopts the stored dtype
        assert aof.header_dtype == HEADER_DTYPE
        assert aof.header(1).tolist() == (1, 2, 3)


def test_segment_bytes_is_stored_at_creation(tmp_path: Path) -> None:
    path = tmp_path / "a"
    with open_aof(path, segment_bytes=8192) as aof:
        fill(aof, 100)
    with Aof.open(path) as aof:  # no segment_bytes: the stored one
        fill(aof, 100)
        sizes = {os.path.getsize(p) for p in aof.segment_paths()}
        assert sizes == {8192}


def test_read_range_copy_returns_bytes_that_outlive_the_store(tmp_path: Path) -> None:
    aof = open_aof(tmp_path / "a")
    payloads = fill(aof, 300)  # several segments
    copies = aof.read_range(1, 301, copy=True)
    assert all(type(c) is bytes for c in copies)
    assert copies == payloads
    assert aof.read_range(5, 5, copy=True) == []
    aof.close()
    assert copies[-1] == payloads[-1]  # bytes, not views of a closed mapping


def test_read_range_copy_checks_crcs(tmp_path: Path) -> None:
    path = tmp_path / "a"
    with open_aof(path) as aof:
        fill(aof, 3)
        aof.sync()
        offset = int(aof._segments[0].offsets[1])
        segment = path / segment_name(1)
        with open(segment, "r+b") as handle:  # bit rot under an open store
            handle.seek(offset + 30)  # a payload byte of record 2
            byte = handle.read(1)
            handle.seek(offset + 30)
            handle.write(bytes([byte[0] ^ 0x01]))
        with pytest.raises(CorruptionError) as caught:
            aof.read_range(1, 4, copy=True)
        assert caught.value.offset == offset
        assert str(segment) in str(caught.value)


def test_segments_grow_from_a_small_first_one_to_segment_bytes(tmp_path: Path) -> None:
    # A fresh log's first segment is small, so its zero fill does not stall the first
    # append; each next one doubles up to segment_bytes. A record larger than the next
    # size gets a segment that fits it.
    from segstore.aof.aof import SEGMENT_BYTES_INITIAL

    with Aof.open(tmp_path / "a", segment_bytes=4 * SEGMENT_BYTES_INITIAL) as aof:
        record = bytes(SEGMENT_BYTES_INITIAL // 3)
        while len(aof.segment_paths()) < 4:
            aof.append(record)
        capacities = [info.capacity_bytes for info in aof.segment_infos()]
        assert capacities == [
            SEGMENT_BYTES_INITIAL,
            2 * SEGMENT_BYTES_INITIAL,
            4 * SEGMENT_BYTES_INITIAL,
            4 * SEGMENT_BYTES_INITIAL,
        ]
    with Aof.open(tmp_path / "b", segment_bytes=4 * SEGMENT_BYTES_INITIAL) as aof:
        big = bytes(3 * SEGMENT_BYTES_INITIAL)
        index = aof.append(big)
        assert aof.segment_infos()[0].capacity_bytes >= len(big)
        assert bytes(aof.read(index)) == big


def test_read_record_returns_header_and_payload_copies(tmp_path: Path) -> None:
    from segstore.errors import CorruptionError

    path = tmp_path / "a"
    with open_aof(path, header_dtype=HEADER_DTYPE) as aof:
        payloads = fill(aof, 300, headers=True)  # several segments
        for index in (1, 150, 300):
            header, payload = aof.read_record(index)
            assert payload == payloads[index - 1]
            assert header == np.array(header_of(index), HEADER_DTYPE).tobytes()
        offset = int(aof._segments[-1].offsets[0])
        first = aof._segments[-1].first_index
        segment = path / segment_name(first)
        with open(segment, "r+b") as handle:  # bit rot under an open store
            handle.seek(offset + 30)
            byte = handle.read(1)
            handle.seek(offset + 30)
            handle.write(bytes([byte[0] ^ 0x01]))
        with pytest.raises(CorruptionError) as caught:
            aof.read_record(first)
        assert caught.value.offset == offset

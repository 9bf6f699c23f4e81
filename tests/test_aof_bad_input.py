"""Bad input to :class:`segstore.aof.Aof`: each case raises the documented error class,
which is also the fitting builtin (segstore/errors.py), and leaves the data unharmed
(the store is reopened and compared with what was written before the bad call).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from segstore.aof import Aof
from segstore.aof.kernels import crc32c
from segstore.errors import (
    ClosedError,
    CorruptionError,
    FormatVersionError,
    IndexOutOfRangeError,
    InvalidArgumentError,
    NotAStoreError,
    RecordTooLargeError,
    SegstoreError,
)

SEGMENT_BYTES = 8192
HEADER_DTYPE = np.dtype([("term", "<u8"), ("kind", "u1")])
RECORDS = 60  # several segments of 8 KiB


def payload_of(index: int) -> bytes:
    return bytes((index + k) & 0xFF for k in range((index * 53) % 200))


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """An Aof of RECORDS records with headers, spread over several segments, closed."""
    path = tmp_path / "store"
    with Aof.open(
        path, header_dtype=HEADER_DTYPE, segment_bytes=SEGMENT_BYTES, autosync=False
    ) as aof:
        for i in range(1, RECORDS + 1):
            aof.append(payload_of(i), (i, i % 7))
        assert len(aof.segment_paths()) >= 2
    return path


def assert_unharmed(path: Path, last_index: int = RECORDS) -> None:
    """Reopen the store and compare every record and header with what was written."""
    with Aof.open(path, autosync=False) as aof:
        assert aof.recovery.torn_cut_at_index is None  # a refused call wrote nothing
        assert (aof.first_index, aof.last_index) == (1, last_index)
        assert [bytes(v) for v in aof.read_range(1, last_index + 1)] == [
            payload_of(i) for i in range(1, last_index + 1)
        ]
        assert aof.headers(1, last_index + 1).tolist() == [
            (i, i % 7) for i in range(1, last_index + 1)
        ]


def raises_in_open_store(
    store: Path, call: Callable[[Aof], Any], error: type[BaseException]
) -> BaseException:
    """Run ``call`` on the open store, expect ``error``; check the store still works."""
    with Aof.open(store, autosync=False) as aof:
        with pytest.raises(error) as info:
            call(aof)
        assert isinstance(info.value, SegstoreError)
        assert aof.last_index == RECORDS
        assert bytes(aof.read(RECORDS)) == payload_of(RECORDS)
        # the store still accepts good writes after the bad one, at the right index
        assert aof.append(b"good", (0, 0)) == RECORDS + 1
        aof.truncate_after(RECORDS)
    assert_unharmed(store)
    return info.value


# -- wrong types -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    ["text", 5, [1, 2, 3], None, 3.5, np.zeros((2, 2), np.uint8)[:, :1]],
    ids=["str", "int", "list", "None", "float", "non-contiguous"],
)
def test_append_refuses_non_buffer_payload(store: Path, payload: Any) -> None:
    error = raises_in_open_store(store, lambda aof: aof.append(payload), InvalidArgumentError)
    assert isinstance(error, ValueError)


@pytest.mark.parametrize(
    "payloads",
    [
        5,
        None,
        iter([b"a", b"b"]),
        (p for p in [b"a"]),
        b"bytes itself",
        "a str",
        [b"a", "b"],
        [b"a", 7],
    ],
    ids=[
        "int",
        "None",
        "iterator",
        "generator",
        "bytes",
        "str",
        "list-with-str",
        "list-with-int",
    ],
)
def test_append_batch_refuses_non_sequence_or_non_buffers(store: Path, payloads: Any) -> None:
    """Not a list/tuple of byte buffers: InvalidArgumentError, nothing written."""
    error = raises_in_open_store(
        store, lambda aof: aof.append_batch(payloads), InvalidArgumentError
    )
    assert isinstance(error, ValueError)


@pytest.mark.parametrize(
    "args",
    [
        (b"abcdef", [0, 2], [2]),  # shapes differ
        (b"abcdef", [], []),  # empty
        (b"abcdef", [[0]], [[2]]),  # not 1-d
        (b"abcdef", [4], [3]),  # runs past the end
        (b"abcdef", [7], [0]),  # starts past the end
        (b"abcdef", [-1], [2]),  # negative offset
        (b"abcdef", [0], [2**32]),  # length beyond u32
        ("text", [0], [2]),  # not a buffer
        (b"abcdef", ["a"], [2]),  # not integers
        (b"abcdef", [1.9], [2.7]),  # floats: a cast would truncate them
        (b"abcdef", np.array([0]), np.array([2**32 + 3])),  # a cast would wrap it to 3
        (np.zeros(64, np.uint8)[::2], [0], [4]),  # not contiguous
    ],
    ids=[
        "shapes",
        "empty",
        "2-d",
        "past-end",
        "start-past-end",
        "negative",
        "huge",
        "str",
        "str-offsets",
        "floats",
        "wrapping-length",
        "non-contiguous",
    ],
)
def test_append_gathered_refuses_bad_spans(store: Path, args: tuple[Any, Any, Any]) -> None:
    """Offsets and lengths that do not describe payloads inside the source: nothing
    written."""
    source, offsets, lengths = args
    raises_in_open_store(
        store,
        lambda aof: aof.append_gathered(source, offsets, lengths),
        InvalidArgumentError,
    )


def test_wide_buffers_are_stored_as_their_bytes(store: Path) -> None:
    """Any C-contiguous buffer is a payload of its raw bytes, as with ``os.write``."""
    wide = np.arange(3, dtype=np.uint32)
    with Aof.open(store) as aof:
        single = aof.append(wide)
        last = aof.append_batch([wide, b"x"])
        assert bytes(aof.read(single)) == wide.tobytes()
        assert [bytes(v) for v in aof.read_range(last - 1, last + 1)] == [wide.tobytes(), b"x"]


def test_append_batch_refuses_empty_batch(store: Path) -> None:
    raises_in_open_store(store, lambda aof: aof.append_batch([]), InvalidArgumentError)


@pytest.mark.parametrize(
    "header",
    [
        b"\0" * 8,  # one byte short
        b"\0" * 10,  # one byte long
        (1, 2, 3),  # too many fields
        "text",
        np.zeros(2, HEADER_DTYPE),  # two headers for one record
        [1, 2],  # a list is an array of two headers, not one tuple
    ],
    ids=["short-bytes", "long-bytes", "3-tuple", "str", "two-rows", "list"],
)
def test_append_refuses_header_of_wrong_size_or_type(store: Path, header: Any) -> None:
    """Fails today for two-rows/list: Aof._header_raw returns 2*H bytes for an array
    header without checking its size; the frame is written to disk and then numpy raises
    a bare ValueError while updating the index."""
    error = raises_in_open_store(store, lambda aof: aof.append(b"p", header), InvalidArgumentError)
    assert isinstance(error, ValueError)


def test_append_refuses_header_when_store_has_no_header_dtype(tmp_path: Path) -> None:
    path = tmp_path / "plain"
    with Aof.open(path, segment_bytes=SEGMENT_BYTES, autosync=False) as aof:
        aof.append(b"a")
        with pytest.raises(InvalidArgumentError):
            aof.append(b"b", (1, 2))
        with pytest.raises(InvalidArgumentError):
            aof.append_batch([b"b"], np.zeros(1, HEADER_DTYPE))
        assert aof.last_index == 1
    with Aof.open(path) as aof:
        assert aof.last_index == 1
        assert bytes(aof.read(1)) == b"a"


@pytest.mark.parametrize(
    "headers",
    [
        np.zeros(3, HEADER_DTYPE),
        np.zeros(1, HEADER_DTYPE),
        np.zeros((2, 1), HEADER_DTYPE),
        np.zeros((1, 2), HEADER_DTYPE),
        [(1, 2)],
        "zz",
        b"\0" * 18,
    ],
    ids=["3-rows", "1-row", "2x1", "1x2", "list-1", "str", "raw-bytes"],
)
def test_append_batch_refuses_headers_of_wrong_shape(store: Path, headers: Any) -> None:
    error = raises_in_open_store(
        store, lambda aof: aof.append_batch([b"a", b"b"], headers), InvalidArgumentError
    )
    assert isinstance(error, ValueError)


def test_set_user_meta_refuses_non_json_values(store: Path) -> None:
    """Fails today: json.dumps in Meta.encode raises a bare TypeError."""
    error = raises_in_open_store(
        store, lambda aof: aof.set_user_meta({"x": object()}), InvalidArgumentError
    )
    assert isinstance(error, ValueError)
    with Aof.open(store) as aof:
        assert aof.user_meta == {}


# -- sizes and indices -----------------------------------------------------------------


@pytest.mark.parametrize("how", ["append", "append_batch"])
def test_oversize_record_raises_record_too_large(store: Path, how: str) -> None:
    big = bytes(SEGMENT_BYTES)

    def call(aof: Aof) -> Any:
        if how == "append":
            return aof.append(big)
        return aof.append_batch([b"small", big])  # nothing of the batch is written

    error = raises_in_open_store(store, call, RecordTooLargeError)
    assert isinstance(error, InvalidArgumentError)
    assert isinstance(error, ValueError)


@pytest.mark.parametrize("index", [0, -1, -(2**63), RECORDS + 1, 2**64])
def test_read_out_of_range_raises_index_out_of_range(store: Path, index: int) -> None:
    for call in (
        lambda aof: aof.read(index),
        lambda aof: aof.header(index),
    ):
        error = raises_in_open_store(store, call, IndexOutOfRangeError)
        assert isinstance(error, IndexError)
        assert isinstance(error, ValueError)


@pytest.mark.parametrize(
    ("start", "end", "error"),
    [
        (0, 5, IndexOutOfRangeError),
        (1, RECORDS + 2, IndexOutOfRangeError),
        (-3, 2, IndexOutOfRangeError),
        (10, 5, InvalidArgumentError),
        (1.0, 5, InvalidArgumentError),
        (1, True, InvalidArgumentError),
    ],
)
def test_range_reads_out_of_range(
    store: Path, start: Any, end: Any, error: type[BaseException]
) -> None:
    for call in (
        lambda aof: aof.read_range(start, end),
        lambda aof: aof.headers(start, end),
        lambda aof: aof.payload_lengths(start, end),
    ):
        raises_in_open_store(store, call, error)


@pytest.mark.parametrize("index", [True, False, 1.0, 2.5, "3", None, b"1"])
def test_non_integer_index_raises_invalid_argument(store: Path, index: Any) -> None:
    for call in (
        lambda aof: aof.read(index),
        lambda aof: aof.truncate_before(index),
        lambda aof: aof.truncate_after(index),
    ):
        error = raises_in_open_store(store, call, InvalidArgumentError)
        assert isinstance(error, ValueError)


def test_numpy_integer_index_is_accepted(store: Path) -> None:
    with Aof.open(store) as aof:
        assert bytes(aof.read(np.int64(3))) == payload_of(3)
        assert bytes(aof.read(np.uint32(4))) == payload_of(4)


@pytest.mark.parametrize("index", [-1, RECORDS + 1, 2**64, -(2**70)])
def test_truncate_after_out_of_range(store: Path, index: int) -> None:
    error = raises_in_open_store(store, lambda aof: aof.truncate_after(index), IndexOutOfRangeError)
    assert isinstance(error, IndexError)


@pytest.mark.parametrize("index", [0, -1, -(2**70)])
def test_truncate_before_below_one(store: Path, index: int) -> None:
    error = raises_in_open_store(
        store, lambda aof: aof.truncate_before(index), IndexOutOfRangeError
    )
    assert isinstance(error, IndexError)


def test_truncate_after_below_first_index_minus_one(store: Path) -> None:
    with Aof.open(store) as aof:
        aof.truncate_before(10)
        with pytest.raises(IndexOutOfRangeError):
            aof.truncate_after(8)
        assert (aof.first_index, aof.last_index) == (10, RECORDS)
    with Aof.open(store) as aof:
        assert (aof.first_index, aof.last_index) == (10, RECORDS)
        assert bytes(aof.read(10)) == payload_of(10)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"segment_bytes": 100},
        {"segment_bytes": 2**32},
        {"segment_bytes": "big"},
        {"segment_bytes": True},
        {"preallocate": "maybe"},
        {"header_dtype": "not a dtype"},
        {"header_dtype": object},
    ],
    ids=["tiny", "huge", "str", "bool", "preallocate", "dtype-str", "dtype-object"],
)
def test_open_refuses_bad_options_and_creates_nothing(tmp_path: Path, kwargs: Any) -> None:
    path = tmp_path / "new"
    with pytest.raises(InvalidArgumentError) as info:
        Aof.open(path, **kwargs)
    assert isinstance(info.value, ValueError)
    assert not path.exists() or os.listdir(path) == []


# -- paths that are not stores -----------------------------------------------------------


def test_directory_with_other_files_is_not_a_store(tmp_path: Path) -> None:
    path = tmp_path / "other"
    path.mkdir()
    (path / "notes.txt").write_bytes(b"mine")
    (path / "00000000000000000001.seg").write_bytes(b"not a segment")
    with pytest.raises(NotAStoreError):
        Aof.open(path)
    assert sorted(os.listdir(path)) == ["00000000000000000001.seg", "notes.txt"]
    assert (path / "notes.txt").read_bytes() == b"mine"


def test_file_path_is_not_a_store(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_bytes(b"data")
    with pytest.raises(NotAStoreError):
        Aof.open(path)
    with pytest.raises(NotAStoreError):
        Aof.open(path, readonly=True)
    assert path.read_bytes() == b"data"


def test_create_false_on_missing_directory(tmp_path: Path) -> None:
    path = tmp_path / "missing"
    with pytest.raises(NotAStoreError):
        Aof.open(path, create=False)
    assert not path.exists()


def test_create_false_on_empty_directory(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.mkdir()
    with pytest.raises(NotAStoreError):
        Aof.open(path, create=False)
    assert not (path / "aof.meta").exists()


# -- damaged meta ---------------------------------------------------------------------------


def _rewrite_meta(store: Path, change: Callable[[bytearray], None], *, fix_crc: bool) -> bytes:
    """Apply ``change`` to aof.meta (optionally fixing its CRC); return the original."""
    meta_path = store / "aof.meta"
    original = meta_path.read_bytes()
    data = bytearray(original)
    change(data)
    if fix_crc:
        data[-4:] = struct.pack("<I", crc32c(bytes(data[:-4])))
    meta_path.write_bytes(bytes(data))
    return original


def _restore_and_check(store: Path, original: bytes) -> None:
    (store / "aof.meta").write_bytes(original)
    assert_unharmed(store)


@pytest.mark.parametrize("version", [0, 2, 0xFFFFFFFF])
def test_unknown_format_version_in_meta(store: Path, version: int) -> None:
    def patch(data: bytearray) -> None:
        data[8:12] = struct.pack("<I", version)

    original = _rewrite_meta(store, patch, fix_crc=True)
    files_before = sorted(os.listdir(store))
    for kwargs in ({}, {"readonly": True}, {"create": False}):
        with pytest.raises(FormatVersionError) as info:
            Aof.open(store, **kwargs)
        assert str(version) in str(info.value)
    assert sorted(os.listdir(store)) == files_before
    _restore_and_check(store, original)


@pytest.mark.parametrize(
    "damage",
    ["body-byte", "crc-byte", "truncated", "length-field"],
)
def test_corrupted_meta_raises_corruption(store: Path, damage: str) -> None:
    meta_path = store / "aof.meta"
    original = meta_path.read_bytes()
    data = bytearray(original)
    if damage == "body-byte":
        data[20] ^= 0x01
    elif damage == "crc-byte":
        data[-1] ^= 0x80
    elif damage == "truncated":
        data = data[:-3]
    else:
        data[12:16] = struct.pack("<I", len(original))
    meta_path.write_bytes(bytes(data))
    with pytest.raises(CorruptionError) as info:
        Aof.open(store)
    assert info.value.path.endswith("aof.meta")
    with pytest.raises(CorruptionError):
        Aof.open(store, readonly=True)
    assert meta_path.read_bytes() == bytes(data)  # open did not "repair" anything
    _restore_and_check(store, original)


def test_meta_with_bad_magic_is_not_a_store(store: Path) -> None:
    def patch(data: bytearray) -> None:
        data[0:8] = b"NOTMAGIC"

    original = _rewrite_meta(store, patch, fix_crc=True)
    with pytest.raises(NotAStoreError):
        Aof.open(store)
    _restore_and_check(store, original)


# -- closed stores -------------------------------------------------------------------------


def test_use_after_close_raises_closed_error(store: Path) -> None:
    aof = Aof.open(store)
    aof.close()
    calls: list[Callable[[], Any]] = [
        lambda: aof.append(b"x"),
        lambda: aof.append_batch([b"x"]),
        lambda: aof.read(1),
        lambda: aof.read_range(1, 2),
        lambda: aof.header(1),
        lambda: aof.headers(1, 2),
        lambda: aof.payload_lengths(1, 2),
        lambda: aof.sync(),
        lambda: aof.truncate_before(5),
        lambda: aof.truncate_after(5),
        lambda: aof.set_user_meta({"a": 1}),
        lambda: aof.on_durable(print),
    ]
    for call in calls:
        with pytest.raises(ClosedError) as info:
            call()
        assert isinstance(info.value, ValueError)
    assert_unharmed(store)

"""CRC32C kernel: RFC 3720 vectors and a cross-check against the ``crc32c`` package."""

from __future__ import annotations

import array
import mmap
from collections.abc import Callable

import crc32c as crc32c_package
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segstore.aof.kernels import crc32c, crc32c_portable, hardware_accelerated

BOTH_PATHS: list[Callable[..., int]] = [crc32c, crc32c_portable]

# RFC 3720 appendix B.4 plus the classic check value (FORMAT.md preamble).
VECTORS = [
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
    (b"123456789", 0xE3069283),
    (b"", 0),
]


LARGE = np.random.default_rng(11).integers(0, 256, 100_008, dtype=np.uint8).tobytes()


def reference(data: bytes, value: int = 0) -> int:
    return int(crc32c_package.crc32c(data, value))


@pytest.mark.parametrize("fn", BOTH_PATHS)
@pytest.mark.parametrize(("data", "expected"), VECTORS)
def test_known_vectors(fn: Callable[..., int], data: bytes, expected: int) -> None:
    assert fn(data) == expected


def test_hardware_accelerated_is_bool() -> None:
    assert isinstance(hardware_accelerated(), bool)


@pytest.mark.parametrize("fn", BOTH_PATHS)
@settings(max_examples=300)
@given(data=st.binary(max_size=3000), split=st.integers(min_value=0, max_value=3000))
def test_matches_reference_and_is_incremental(
    fn: Callable[..., int], data: bytes, split: int
) -> None:
    split = min(split, len(data))
    assert fn(data) == reference(data)
    assert fn(data[split:], fn(data[:split])) == reference(data)


@pytest.mark.parametrize("fn", BOTH_PATHS)
@given(data=st.binary(min_size=1, max_size=600), start=st.integers(0, 15))
def test_unaligned_starts(fn: Callable[..., int], data: bytes, start: int) -> None:
    # A memoryview slice at an odd offset exercises the byte steps before word loads.
    view = memoryview(data)[min(start, len(data)) :]
    assert fn(view) == reference(bytes(view))


@pytest.mark.parametrize("fn", BOTH_PATHS)
@settings(max_examples=40, deadline=None)
@given(size=st.integers(0, 100_000), start=st.integers(0, 7), split=st.integers(0, 100_000))
def test_large_sizes_cross_block_boundaries(
    fn: Callable[..., int], size: int, start: int, split: int
) -> None:
    # Sizes past 3 x 256 and 3 x 8192 bytes exercise the interleaved hardware streams and
    # the zero-append operators that merge them.
    data = LARGE[start : start + size]
    split = min(split, len(data))
    assert fn(data) == reference(data)
    assert fn(data[split:], fn(data[:split])) == reference(data)


@pytest.mark.parametrize("fn", BOTH_PATHS)
def test_large_buffer_releases_gil_path(fn: Callable[..., int]) -> None:
    data = np.random.default_rng(7).integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()
    assert fn(data) == reference(data)
    assert fn(data[3:], fn(data[:3])) == reference(data)


@pytest.mark.parametrize("fn", BOTH_PATHS)
def test_all_buffer_types(fn: Callable[..., int]) -> None:
    data = bytes(range(256)) * 3
    expected = reference(data)
    with mmap.mmap(-1, len(data)) as mapped:
        mapped[:] = data
        assert fn(mapped) == expected
    assert fn(bytearray(data)) == expected
    assert fn(memoryview(data)) == expected
    assert fn(np.frombuffer(data, dtype=np.uint8)) == expected
    # Any C-contiguous buffer counts by its bytes, whatever its item type.
    assert fn(np.frombuffer(data, dtype=np.uint32)) == expected
    assert fn(array.array("B", data)) == expected


@pytest.mark.parametrize("fn", BOTH_PATHS)
@pytest.mark.parametrize("bad", ["text", 12, None, [1, 2, 3], 1.5])
def test_wrong_type_raises_type_error(fn: Callable[..., int], bad: object) -> None:
    with pytest.raises(TypeError):
        fn(bad)


@pytest.mark.parametrize("fn", BOTH_PATHS)
def test_non_contiguous_or_bad_value_rejected(fn: Callable[..., int]) -> None:
    strided = np.arange(64, dtype=np.uint8)[::2]
    with pytest.raises((TypeError, ValueError)):
        fn(strided)
    with pytest.raises(TypeError):
        fn(b"abc", "0")
    for value in (-1, 1 << 32):
        with pytest.raises(ValueError):
            fn(b"abc", value)

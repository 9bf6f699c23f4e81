"""Record frame kernels against their pure-Python twin (tests/record_model.py).

Pins FORMAT.md section 4: frame bytes, where a segment's records end (4.1), the epoch
rule (4.2) and durability evidence (4.3). Invariant 2 ("torn tails are cut, corruption
is loud") rests on scan_segment and find_durable_evidence behaving exactly as tested here.
"""

from __future__ import annotations

import mmap
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import record_model as model
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from segstore.aof import kernels
from segstore.aof.kernels import (
    END_CAPACITY,
    END_CLEAN,
    END_FULL,
    END_STALE,
    END_TORN,
    FRAME_BAD_CRC,
    FRAME_BAD_INDEX,
    FRAME_BAD_LENGTH,
    FRAME_OK,
    FRAME_OUT_OF_BOUNDS,
    FrameStatus,
    ScanEnd,
    batch_bytes,
    check_frame,
    encode_gathered,
    encode_one,
    encode_payloads,
    find_durable_evidence,
    frame_bytes,
    raise_for_frame_status,
    read_frame_fields,
    scan_segment,
    verify_frame,
    verify_frames,
)
from segstore.errors import CorruptionError, SegstoreError

KIND_NAMES = {
    END_CLEAN: model.CLEAN,
    END_STALE: model.STALE,
    END_TORN: model.TORN,
    END_FULL: model.FULL,
}

header_sizes = st.integers(min_value=0, max_value=40)
payload_lists = st.lists(st.binary(max_size=300), min_size=1, max_size=12)
indices = st.integers(min_value=1, max_value=2**48)
epochs = st.integers(min_value=1, max_value=2**32 - 1)


@dataclass
class Scan:
    """A whole scan done through scan_segment, resuming after every CAPACITY."""

    offsets: list[int]
    lengths: list[int]
    headers: list[bytes]
    end_offset: int
    end_kind: str
    calls: int


def scan(
    buf: bytes | bytearray,
    header_bytes: int,
    meta_epoch: int,
    epoch_cut: int,
    expected_index: int,
    start_offset: int = 0,
    capacity: int = 64,
) -> Scan:
    offsets: list[int] = []
    lengths: list[int] = []
    headers: list[bytes] = []
    calls = 0
    while True:
        calls += 1
        offsets_out = np.zeros(capacity, np.uint32)
        lengths_out = np.zeros(capacity, np.uint32)
        headers_out = np.zeros(capacity * header_bytes, np.uint8)
        count, end_offset, kind = scan_segment(
            buf,
            start_offset,
            expected_index + len(offsets),
            header_bytes,
            meta_epoch,
            epoch_cut,
            offsets_out,
            lengths_out,
            headers_out,
        )
        assert 0 <= count <= capacity
        offsets += offsets_out[:count].tolist()
        lengths += lengths_out[:count].tolist()
        hdr = headers_out.tobytes()
        headers += [hdr[k * header_bytes : (k + 1) * header_bytes] for k in range(count)]
        if kind != END_CAPACITY:
            return Scan(offsets, lengths, headers, end_offset, KIND_NAMES[kind], calls)
        assert count == capacity
        start_offset = end_offset


def assert_same_as_model(
    buf: bytes | bytearray,
    header_bytes: int,
    meta_epoch: int,
    epoch_cut: int,
    expected_index: int,
    start_offset: int = 0,
    capacity: int = 64,
) -> Scan:
    got = scan(buf, header_bytes, meta_epoch, epoch_cut, expected_index, start_offset, capacity)
    want = model.scan(bytes(buf), start_offset, expected_index, header_bytes, meta_epoch, epoch_cut)
    assert (got.offsets, got.lengths, got.headers) == (want.offsets, want.lengths, want.headers)
    assert (got.end_offset, got.end_kind) == (want.end_offset, want.end_kind)
    return got


def model_frames(
    payloads: list[bytes],
    header_bytes: int,
    first_index: int,
    epoch: int,
    durable_index: int = 0,
) -> list[bytes]:
    return [
        model.encode_frame(p, header_for(k, header_bytes), first_index + k, epoch, durable_index)
        for k, p in enumerate(payloads)
    ]


def header_for(k: int, header_bytes: int) -> bytes:
    # Distinct, recognisable header bytes per record.
    return bytes((k * 7 + j + 1) & 0xFF for j in range(header_bytes))


def scattered(payloads: list[bytes]) -> tuple[bytes, np.ndarray]:
    """``payloads`` in one buffer in reverse order with junk between them, and each
    one's offset there: what ``encode_gathered`` reads from."""
    source = bytearray()
    offsets = [0] * len(payloads)
    for k in reversed(range(len(payloads))):
        source += b"junk"
        offsets[k] = len(source)
        source += payloads[k]
    return bytes(source + b"tail"), np.array(offsets, np.uint64)


def kernel_batch(
    payloads: list[bytes],
    header_bytes: int,
    first_index: int,
    epoch: int,
    durable_index: int = 0,
    base_offset: int = 0,
) -> tuple[bytearray, np.ndarray]:
    lengths = np.array([len(p) for p in payloads], np.uint32)
    out = bytearray(b"\xaa" * batch_bytes(header_bytes, lengths))
    offsets = np.zeros(len(payloads), np.uint32)
    headers = b"".join(header_for(k, header_bytes) for k in range(len(payloads)))
    source, payload_offsets = scattered(payloads)
    written = encode_gathered(
        out,
        0,
        source,
        payload_offsets,
        lengths,
        0,
        headers,
        header_bytes,
        first_index,
        epoch,
        durable_index,
        base_offset,
        offsets,
    )
    assert written == len(out)
    return out, offsets


# --- encoding ------------------------------------------------------------------------


def test_frame_bytes_padding_rule() -> None:
    for header_bytes in range(0, 41):
        for payload_bytes in range(0, 70):
            assert frame_bytes(header_bytes, payload_bytes) == model.frame_bytes(
                header_bytes, payload_bytes
            )
    assert frame_bytes(0, 0) == 24
    assert frame_bytes(0, 1) == 32
    assert frame_bytes(0, 2**32 - 1) == (24 + 2**32 - 1 + 7) & ~7


@settings(max_examples=300)
@given(
    payload=st.binary(max_size=300),
    header_bytes=header_sizes,
    index=indices,
    epoch=st.integers(0, 2**32 - 1),
    durable_index=st.integers(0, 2**49),
    out_offset=st.integers(0, 17),
)
def test_encode_one_matches_model(
    payload: bytes, header_bytes: int, index: int, epoch: int, durable_index: int, out_offset: int
) -> None:
    header = header_for(3, header_bytes)
    want = model.encode_frame(payload, header, index, epoch, durable_index)
    # Garbage-filled output proves the kernel writes (and zero-pads) every byte.
    out = bytearray(b"\xaa" * (out_offset + len(want) + 5))
    written = encode_one(out, out_offset, payload, header, index, epoch, durable_index)
    assert written == len(want) == frame_bytes(header_bytes, len(payload))
    assert bytes(out[out_offset : out_offset + written]) == want
    assert out[:out_offset] == b"\xaa" * out_offset
    assert out[out_offset + written :] == b"\xaa" * 5


def test_durable_lag_field() -> None:
    out = bytearray(64)
    cases = [
        (10, 0, 10),
        (10, 10, 0),
        (10, 11, 0xFFFFFFFF),  # durable index ahead of the record (after write_at)
        (0xFFFFFFFF, 0, 0xFFFFFFFF),  # a lag of exactly 0xFFFFFFFF would read as unknown
        (0xFFFFFFFE, 0, 0xFFFFFFFE),
        (2**40, 2**40 - 5, 5),
    ]
    for index, durable_index, lag in cases:
        encode_one(out, 0, b"x", b"", index, 1, durable_index)
        assert read_frame_fields(out, 0)[4] == lag
        assert model.durable_lag(index, durable_index) == lag


def test_gathered_extent_is_the_end_of_the_farthest_payload_and_the_longest() -> None:
    u64, u32 = np.uint64, np.uint32
    extent = kernels.gathered_extent
    assert extent(np.array([0, 100, 40], u64), np.array([10, 5, 90], u32)) == (130, 90)
    assert extent(np.empty(0, u64), np.empty(0, u32)) == (0, 0)
    # an end past 2**64 - 1 saturates instead of wrapping to a small number
    assert extent(np.array([2**64 - 4], u64), np.array([9], u32)) == (2**64 - 1, 9)
    with pytest.raises(ValueError):
        extent(np.zeros(2, u64), np.zeros(3, u32))


@settings(max_examples=200)
@given(
    payloads=payload_lists,
    header_bytes=header_sizes,
    first_index=indices,
    epoch=epochs,
    durable_index=st.integers(0, 2**49),
    out_offset=st.integers(0, 9),
    base_offset=st.integers(0, 2**20).map(lambda x: x * 8),
)
def test_encode_gathered_matches_model(
    payloads: list[bytes],
    header_bytes: int,
    first_index: int,
    epoch: int,
    durable_index: int,
    out_offset: int,
    base_offset: int,
) -> None:
    # Encode all but the first payload (start=1), gathered from a scattered source.
    frames = model_frames(payloads[1:], header_bytes, first_index, epoch, durable_index)
    lengths = np.array([len(p) for p in payloads], np.uint32)
    total = batch_bytes(header_bytes, lengths[1:])
    assert total == sum(len(f) for f in frames)
    out = bytearray(b"\x55" * (out_offset + total))
    offsets = np.zeros(len(payloads) - 1, np.uint32)
    headers = b"".join(header_for(k, header_bytes) for k in range(len(payloads) - 1))
    source, payload_offsets = scattered(payloads)
    written = encode_gathered(
        out,
        out_offset,
        source,
        payload_offsets,
        lengths,
        1,
        headers,
        header_bytes,
        first_index,
        epoch,
        durable_index,
        base_offset,
        offsets,
    )
    assert written == total
    assert bytes(out[out_offset:]) == b"".join(frames)
    starts = np.cumsum([0] + [len(f) for f in frames[:-1]])
    assert offsets.tolist() == (base_offset + starts[: len(frames)]).tolist()


def test_encode_rejects_unusable_arguments() -> None:
    lengths = np.array([3, 4], np.uint32)
    offsets = np.zeros(2, np.uint32)
    with pytest.raises(ValueError, match="does not fit"):
        encode_one(bytearray(31), 0, b"abcdefgh", b"", 1, 1, 0)
    with pytest.raises(ValueError, match="does not fit"):
        encode_one(bytearray(64), 40, b"abcdefgh", b"", 1, 1, 0)
    with pytest.raises((TypeError, ValueError)):
        encode_one(b"\x00" * 64, 0, b"abc", b"", 1, 1, 0)  # read-only output
    with pytest.raises(TypeError):
        encode_one(bytearray(64), 0, "text", b"", 1, 1, 0)  # type: ignore[arg-type]
    for bad in ({"index": -1}, {"epoch": 2**32}, {"epoch": -1}, {"durable_index": -1}):
        args = {"index": 1, "epoch": 1, "durable_index": 0, **bad}
        with pytest.raises(ValueError):
            encode_one(bytearray(64), 0, b"abc", b"", **args)
    out = bytearray(200)
    source, at = scattered([b"abc", b"defg"])
    with pytest.raises(ValueError, match="outside the 10-byte source"):
        encode_gathered(out, 0, source[:10], at, lengths, 0, b"", 0, 1, 1, 0, 0, offsets)
    with pytest.raises(ValueError, match="payload_offsets has 1"):
        encode_gathered(out, 0, source, at[:1], lengths, 0, b"", 0, 1, 1, 0, 0, offsets)
    with pytest.raises(ValueError, match="outside the 2 payloads"):
        encode_gathered(out, 0, source, at, lengths, 1, b"", 0, 1, 1, 0, 0, offsets)
    with pytest.raises(ValueError, match="headers"):
        encode_gathered(out, 0, source, at, lengths, 0, b"xx", 2, 1, 1, 0, 0, offsets)
    with pytest.raises(ValueError, match="does not fit"):
        encode_gathered(bytearray(40), 0, source, at, lengths, 0, b"", 0, 1, 1, 0, 0, offsets)
    with pytest.raises(ValueError, match="u32 offset"):
        encode_gathered(out, 0, source, at, lengths, 0, b"", 0, 1, 1, 0, 2**32 - 16, offsets)
    with pytest.raises(ValueError):  # wrong dtype
        encode_gathered(
            out, 0, source, at, lengths.astype(np.int64), 0, b"", 0, 1, 1, 0, 0, offsets
        )
    # Numbers chosen to wrap a sum or product that a check relies on (each once read
    # outside the arrays or copied 2**62 bytes).
    with pytest.raises(ValueError, match="outside the 2 payloads"):
        encode_gathered(out, 0, source, at, lengths, 2**63 - 1, b"", 0, 1, 1, 0, 0, offsets)
    with pytest.raises(ValueError, match="header_bytes"):
        encode_gathered(out, 0, source, at, lengths, 0, b"", 2**62, 1, 1, 0, 0, offsets)
    with pytest.raises(ValueError, match="headers has 0 bytes"):
        encode_gathered(out, 0, source, at, lengths, 0, b"", 2**31, 1, 1, 0, 0, offsets)
    with pytest.raises(ValueError, match="headers has 2 bytes"):
        encode_gathered(out, 0, source, at, lengths, 0, b"xx", 0, 1, 1, 0, 0, offsets)
    with pytest.raises(ValueError, match="outside the 2 payloads"):
        encode_payloads(out, 0, [b"abc", b"defg"], 2**63 - 1, lengths, b"", 0, 1, 1, 0, 0, offsets)
    with pytest.raises(ValueError, match="header_bytes"):
        encode_payloads(out, 0, [b"abc", b"defg"], 0, lengths, b"", 2**62, 1, 1, 0, 0, offsets)
    assert out == bytearray(200)  # nothing written by any refused call
    with pytest.raises(ValueError):
        frame_bytes(-1, 0)
    with pytest.raises(ValueError):
        frame_bytes(0, 2**32)


# --- scanning (FORMAT.md 4.1, 4.2) ---------------------------------------------------------


@settings(max_examples=150)
@given(payloads=payload_lists, header_bytes=header_sizes, first_index=indices, epoch=epochs)
def test_scan_frames_then_zeros_is_clean(
    payloads: list[bytes], header_bytes: int, first_index: int, epoch: int
) -> None:
    buf, offsets = kernel_batch(payloads, header_bytes, first_index, epoch)
    end = len(buf)
    buf += bytes(64)
    got = assert_same_as_model(buf, header_bytes, epoch, 0, first_index)
    assert got.end_kind == model.CLEAN
    assert got.end_offset == end
    assert got.offsets == offsets.tolist()
    assert got.lengths == [len(p) for p in payloads]
    assert got.headers == [header_for(k, header_bytes) for k in range(len(payloads))]


@settings(max_examples=100)
@given(payloads=payload_lists, header_bytes=header_sizes, first_index=indices, epoch=epochs)
def test_scan_exactly_full_buffer(
    payloads: list[bytes], header_bytes: int, first_index: int, epoch: int
) -> None:
    buf, _ = kernel_batch(payloads, header_bytes, first_index, epoch)
    for tail in range(0, 24):  # fewer than 24 bytes left after the last frame: FULL
        got = assert_same_as_model(buf + bytes(tail), header_bytes, epoch, 0, first_index)
        assert (got.end_kind, got.end_offset, len(got.offsets)) == (
            model.FULL,
            len(buf),
            len(payloads),
        )


@settings(max_examples=100)
@given(
    payloads=payload_lists,
    header_bytes=header_sizes,
    first_index=indices,
    old_epoch=st.integers(1, 1000),
    bump=st.integers(1, 1000),
)
def test_scan_stale_frame_from_older_epoch(
    payloads: list[bytes], header_bytes: int, first_index: int, old_epoch: int, bump: int
) -> None:
    # The log was cut after its records, the epoch bumped, then new records written over
    # the old ones: the next old frame beyond the cut is dead even though its CRC is fine.
    new_epoch = old_epoch + bump
    n = len(payloads)
    old = b"".join(model_frames([*payloads, b"old"], header_bytes, first_index, old_epoch))
    new, _ = kernel_batch(payloads, header_bytes, first_index, new_epoch)
    buf = bytearray(old)
    buf[: len(new)] = new
    cut = first_index + n - 1
    got = assert_same_as_model(buf, header_bytes, new_epoch, cut, first_index)
    assert (got.end_kind, got.end_offset, len(got.offsets)) == (model.STALE, len(new), n)
    # Same bytes read with the cut beyond the old frame: it is live and taken.
    got = assert_same_as_model(buf, header_bytes, new_epoch, cut + 1, first_index)
    assert len(got.offsets) == n + 1


def test_scan_epoch_rule() -> None:
    header_bytes = 4
    frames = model_frames([b"a", b"b", b"c"], header_bytes, 1, 1)  # epoch 1, indices 1..3
    frames += model_frames([b"d", b"e"], header_bytes, 4, 2)  # epoch 2, indices 4..5
    buf = b"".join(frames) + bytes(32)
    # meta epoch 3, cut 3: older frames up to index 3 are live, index 4 of epoch 2 is not.
    got = assert_same_as_model(buf, header_bytes, 3, 3, 1)
    assert (len(got.offsets), got.end_kind) == (3, model.STALE)
    got = assert_same_as_model(buf, header_bytes, 3, 5, 1)
    assert (len(got.offsets), got.end_kind) == (5, model.CLEAN)
    # meta epoch 2: epoch-2 frames are live whatever the cut; epoch-1 ones only to the cut.
    got = assert_same_as_model(buf, header_bytes, 2, 0, 1)
    assert (len(got.offsets), got.end_kind) == (0, model.STALE)
    got = assert_same_as_model(buf, header_bytes, 2, 3, 1)
    assert (len(got.offsets), got.end_kind) == (5, model.CLEAN)
    # A frame from a *newer* epoch than the meta's is never live.
    got = assert_same_as_model(buf, header_bytes, 1, 2**40, 1)
    assert (len(got.offsets), got.end_kind) == (3, model.STALE)


def test_scan_wrong_index_is_torn() -> None:
    buf = b"".join(model_frames([b"a", b"b"], 0, 10, 1) + model_frames([b"c"], 0, 13, 1))
    got = assert_same_as_model(buf + bytes(32), 0, 1, 0, 10)
    assert (len(got.offsets), got.end_kind, got.end_offset) == (2, model.TORN, 64)


@settings(max_examples=40, deadline=None)
@given(payloads=payload_lists, header_bytes=header_sizes, first_index=indices, epoch=epochs)
def test_scan_truncated_last_frame_at_every_byte(
    payloads: list[bytes], header_bytes: int, first_index: int, epoch: int
) -> None:
    buf, offsets = kernel_batch(payloads, header_bytes, first_index, epoch)
    last = int(offsets[-1])
    n = len(payloads)
    for cut in range(last, len(buf)):
        # The file ends mid-frame: TORN once 24 bytes are there, FULL before that.
        got = assert_same_as_model(buf[:cut], header_bytes, epoch, 0, first_index)
        assert len(got.offsets) == n - 1
        assert got.end_offset == last
        assert got.end_kind == (model.FULL if cut - last < 24 else model.TORN)
        # The write stopped mid-frame in a zero-filled file: TORN (CLEAN when nothing
        # landed), unless the bytes never written were zeros anyway.
        torn = buf[:cut] + bytes(len(buf) - cut + 16)
        got = assert_same_as_model(torn, header_bytes, epoch, 0, first_index)
        if torn[: len(buf)] == buf:
            assert len(got.offsets) == n
        else:
            assert len(got.offsets) == n - 1
            nothing_landed = torn[last : last + 24] == bytes(24)
            assert got.end_kind == (model.CLEAN if nothing_landed else model.TORN)


@settings(max_examples=150)
@given(
    payloads=payload_lists,
    header_bytes=header_sizes,
    epoch=epochs,
    garbage=st.binary(min_size=24, max_size=200),
)
def test_scan_garbage_after_frames_is_torn(
    payloads: list[bytes], header_bytes: int, epoch: int, garbage: bytes
) -> None:
    assume(garbage[:24] != bytes(24))
    buf, _ = kernel_batch(payloads, header_bytes, 1, epoch)
    got = assert_same_as_model(buf + garbage, header_bytes, epoch, 0, 1)
    assert (got.end_kind, got.end_offset, len(got.offsets)) == (
        model.TORN,
        len(buf),
        len(payloads),
    )


@settings(max_examples=100)
@given(
    payloads=st.lists(st.binary(max_size=40), min_size=1, max_size=30),
    header_bytes=header_sizes,
    capacity=st.integers(0, 5),
    tail=st.sampled_from([b"", bytes(40), b"\x01" * 40]),
)
def test_scan_capacity_resume_gives_same_total(
    payloads: list[bytes], header_bytes: int, capacity: int, tail: bytes
) -> None:
    buf, _ = kernel_batch(payloads, header_bytes, 7, 3)
    buf += tail
    if capacity == 0:
        # Nothing fits: report CAPACITY at the start without consuming anything.
        out = np.zeros(0, np.uint32)
        result = scan_segment(buf, 0, 7, header_bytes, 3, 0, out, out, bytearray())
        assert result == (0, 0, END_CAPACITY)
        return
    small = scan(buf, header_bytes, 3, 0, 7, capacity=capacity)
    whole = assert_same_as_model(buf, header_bytes, 3, 0, 7, capacity=1000)
    assert small == Scan(
        whole.offsets,
        whole.lengths,
        whole.headers,
        whole.end_offset,
        whole.end_kind,
        calls=-(-len(payloads) // capacity),
    )


def test_scan_from_start_offset_and_arguments() -> None:
    frames = model_frames([b"abc", b"defgh", b"i"], 2, 100, 5)
    buf = bytes(64) + b"".join(frames) + bytes(40)
    got = assert_same_as_model(buf, 2, 5, 0, 100, start_offset=64)
    assert (len(got.offsets), got.end_kind) == (3, model.CLEAN)
    assert got.offsets[0] == 64
    ok = np.zeros(4, np.uint32)
    assert scan_segment(buf, len(buf), 100, 2, 5, 0, ok, ok.copy(), bytearray(8))[2] == END_FULL
    with pytest.raises(ValueError, match="multiple of 8"):
        scan_segment(buf, 60, 100, 2, 5, 0, ok, ok.copy(), bytearray(8))
    with pytest.raises(ValueError, match="outside"):
        scan_segment(buf, len(buf) + 8, 100, 2, 5, 0, ok, ok.copy(), bytearray(8))
    with pytest.raises(ValueError, match="headers_out"):
        scan_segment(buf, 64, 100, 2, 5, 0, ok, ok.copy(), bytearray(7))
    with pytest.raises(ValueError, match="lengths_out"):
        scan_segment(buf, 64, 100, 2, 5, 0, ok, ok[:3].copy(), bytearray(8))
    with pytest.raises(ValueError):
        scan_segment(buf, 64, 100, 2, 5, 0, ok.astype(np.uint64), ok, bytearray(8))
    with pytest.raises((TypeError, ValueError)):
        scan_segment(buf, 64, 100, 2, 5, 0, ok, ok.copy(), bytes(8))  # read-only headers
    with pytest.raises(ValueError):
        scan_segment(buf, 64, 100, 2, -1, 0, ok, ok.copy(), bytearray(8))
    # A structured header array works directly as headers_out.
    hdr = np.zeros(4, dtype=[("a", "u1"), ("b", "u1")])
    assert scan_segment(buf, 64, 100, 2, 5, 0, ok, ok.copy(), hdr)[0] == 3
    assert hdr["a"].tolist()[:3] == [header_for(k, 2)[0] for k in range(3)]


# --- corruption and evidence (FORMAT.md 4.3) -------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    payloads=st.lists(st.binary(max_size=60), min_size=2, max_size=6),
    header_bytes=header_sizes,
    victim=st.integers(0, 5),
    data=st.data(),
)
def test_flipped_bit_stops_scan_and_fails_verify(
    payloads: list[bytes], header_bytes: int, victim: int, data: st.DataObject
) -> None:
    victim %= len(payloads)
    buf, offsets = kernel_batch(payloads, header_bytes, 1, 1)
    start = int(offsets[victim])
    covered = 24 + header_bytes + len(payloads[victim])  # padding is outside the CRC
    bit = data.draw(st.integers(0, covered * 8 - 1))
    bad = bytearray(buf) + bytes(32)
    bad[start + bit // 8] ^= 1 << (bit % 8)
    got = assert_same_as_model(bad, header_bytes, 1, 0, 1)
    assert (len(got.offsets), got.end_offset, got.end_kind) == (victim, start, model.TORN)
    status = verify_frame(bad, start, header_bytes, 1 + victim, len(payloads[victim]))
    assert status != FRAME_OK
    assert status == model.verify_frame(
        bytes(bad), start, header_bytes, 1 + victim, len(payloads[victim])
    )
    lengths = np.array([len(p) for p in payloads], np.uint32)
    assert verify_frames(bad, offsets, lengths, header_bytes, 1) == (victim, status)
    assert verify_frames(buf, offsets, lengths, header_bytes, 1) == (-1, FRAME_OK)


@settings(max_examples=200, deadline=None)
@given(
    payloads=st.lists(st.binary(max_size=600), min_size=1, max_size=12),
    header_bytes=header_sizes,
    victims=st.lists(st.integers(0, 11), max_size=3),
    cut=st.integers(0, 12),
    data=st.data(),
)
def test_verify_frames_reports_the_first_bad_frame_in_any_lane(
    payloads: list[bytes],
    header_bytes: int,
    victims: list[int],
    cut: int,
    data: st.DataObject,
) -> None:
    # verify_frames checks frames three at a time with interleaved CRCs: damage in any
    # lane, frames of unequal lengths and a buffer cut short inside a group must still
    # report the first bad frame as one-by-one checks (the model) would.
    buf, offsets = kernel_batch(payloads, header_bytes, 1, 1)
    lengths = np.array([len(p) for p in payloads], np.uint32)
    bad = bytearray(buf)
    for victim in {v % len(payloads) for v in victims}:
        covered = 24 + header_bytes + len(payloads[victim])
        bit = data.draw(st.integers(32, covered * 8 - 1))  # past the CRC field itself
        bad[int(offsets[victim]) + bit // 8] ^= 1 << (bit % 8)
    if cut < len(payloads):
        bad = bad[: int(offsets[cut]) + 8]  # frame `cut` runs past the end
    expected = (-1, FRAME_OK)
    for k, payload in enumerate(payloads):
        status = model.verify_frame(bytes(bad), int(offsets[k]), header_bytes, 1 + k, len(payload))
        if status != FRAME_OK:
            expected = (k, status)
            break
    assert verify_frames(bad, offsets, lengths, header_bytes, 1) == expected


def test_verify_frame_statuses() -> None:
    buf = bytearray(b"".join(model_frames([b"hello", b"world!"], 3, 17, 2)))
    second = frame_bytes(3, 5)
    assert verify_frame(buf, 0, 3, 17, 5) == FRAME_OK
    assert verify_frame(buf, second, 3, 18, 6) == FRAME_OK
    assert verify_frame(buf, 0, 3, 19, 5) == FRAME_BAD_INDEX
    assert verify_frame(buf, 0, 3, 17, 4) == FRAME_BAD_LENGTH
    assert verify_frame(buf, second, 3, 18, 600) == FRAME_OUT_OF_BOUNDS
    assert verify_frame(buf, len(buf) - 8, 3, 18, 0) == FRAME_OUT_OF_BOUNDS
    assert verify_frame(buf, -8, 3, 18, 6) == FRAME_OUT_OF_BOUNDS
    assert verify_frame(buf, 0, -1, 17, 5) == FRAME_OUT_OF_BOUNDS
    buf[30] ^= 0x10
    assert verify_frame(buf, 0, 3, 17, 5) == FRAME_BAD_CRC
    with pytest.raises(TypeError):
        verify_frame("text", 0, 3, 17, 5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        verify_frame(buf, 0, 3, -1, 5)


def test_verify_frames_finds_first_bad() -> None:
    payloads = [bytes([k]) * (k * 13) for k in range(20)]
    buf, offsets = kernel_batch(payloads, 8, 50, 1)
    lengths = np.array([len(p) for p in payloads], np.uint32)
    assert verify_frames(buf, offsets, lengths, 8, 50) == (-1, FRAME_OK)
    assert verify_frames(buf, offsets, lengths, 8, 51) == (0, FRAME_BAD_INDEX)
    assert verify_frames(buf, offsets[:0], lengths[:0], 8, 50) == (-1, FRAME_OK)
    damaged = bytearray(buf)
    damaged[int(offsets[12]) + 30] ^= 1
    damaged[int(offsets[15]) + 30] ^= 1
    assert verify_frames(damaged, offsets, lengths, 8, 50) == (12, FRAME_BAD_CRC)
    wrong_lengths = lengths.copy()
    wrong_lengths[3] += 1
    assert verify_frames(buf, offsets, wrong_lengths, 8, 50) == (3, FRAME_BAD_LENGTH)
    short = bytes(buf[: int(offsets[19])])
    assert verify_frames(short, offsets, lengths, 8, 50) == (19, FRAME_OUT_OF_BOUNDS)
    with pytest.raises(ValueError):
        verify_frames(buf, offsets, lengths[:5], 8, 50)


@settings(max_examples=100, deadline=None)
@given(
    payloads=st.lists(st.binary(max_size=50), min_size=3, max_size=10),
    header_bytes=header_sizes,
    durable=st.lists(st.integers(0, 12), min_size=10, max_size=10),
    victim=st.integers(0, 9),
    meta_epoch=st.sampled_from([0, 1, 7]),
)
def test_find_durable_evidence_matches_model(
    payloads: list[bytes],
    header_bytes: int,
    durable: list[int],
    victim: int,
    meta_epoch: int,
) -> None:
    victim %= len(payloads)
    frames = [
        model.encode_frame(p, header_for(k, header_bytes), 1 + k, meta_epoch, durable[k])
        for k, p in enumerate(payloads)
    ]
    buf = bytearray(b"".join(frames) + bytes(64))
    start = sum(len(f) for f in frames[:victim])
    buf[start + 2] ^= 0x40  # the victim's CRC no longer matches: the scan ends TORN there
    got = assert_same_as_model(buf, header_bytes, meta_epoch, 0, 1)
    assert (got.end_kind, got.end_offset) == (model.TORN, start)
    expected = 1 + victim
    found = find_durable_evidence(buf, start, expected, header_bytes, meta_epoch)
    assert found == model.find_durable_evidence(
        bytes(buf), start, expected, header_bytes, meta_epoch
    )
    proofs = [
        sum(len(f) for f in frames[:k])
        for k in range(victim + 1, len(frames))
        if durable[k] >= expected and durable[k] <= 1 + k
    ]
    assert found == (proofs[0] if proofs else -1)
    # Frames of an older epoch are dead past the cut, so they prove nothing...
    assert find_durable_evidence(buf, start, expected, header_bytes, meta_epoch + 1) == -1
    # ...but live below it (FORMAT.md 4.2), where they prove as much as current ones.
    cut = len(payloads)
    assert find_durable_evidence(buf, start, expected, header_bytes, meta_epoch + 1, cut) == (
        model.find_durable_evidence(bytes(buf), start, expected, header_bytes, meta_epoch + 1, cut)
    )
    assert find_durable_evidence(buf, start, expected, header_bytes, meta_epoch + 1, cut) == (
        proofs[0] if proofs else -1
    )


def test_find_durable_evidence_ignores_unknown_lag_and_the_frame_itself() -> None:
    frames = model_frames([b"a", b"b", b"c"], 0, 1, 4, durable_index=3)
    buf = bytearray(b"".join(frames) + bytes(32))
    # Frame 3 (index 3, lag 0) proves index 3 durable; the search starts past offset 0.
    assert find_durable_evidence(buf, 0, 3, 0, 4) == 64
    assert find_durable_evidence(buf, 64, 3, 0, 4) == -1  # only frames after the start
    assert find_durable_evidence(buf, 0, 4, 0, 4) == -1
    unknown = model.encode_frame(b"z", b"", 2, 4, 10)  # durable index ahead: lag unknown
    assert model.FRAME_HEADER.unpack_from(unknown)[4] == 0xFFFFFFFF
    buf2 = bytes(32) + unknown + bytes(32)
    assert find_durable_evidence(buf2, 0, 1, 0, 4) == -1
    with pytest.raises(ValueError, match="multiple of 8"):
        find_durable_evidence(buf, 4, 3, 0, 4)
    for start in (len(buf) - 32, len(buf) - 24, len(buf) - 16, len(buf) - 8, len(buf)):
        assert find_durable_evidence(buf, start, 1, 0, 4) == -1  # nothing left to search


@pytest.mark.parametrize("meta_epoch", [0, 1])
def test_find_durable_evidence_is_fast_on_a_mostly_zero_64mib_segment(meta_epoch: int) -> None:
    segment = bytearray(64 << 20)
    segment[64 : 64 + 32] = b"\x07" * 32  # the torn frame
    proof = model.encode_frame(b"p" * 100, b"", 9, meta_epoch, 5)
    at = (60 << 20) + 8
    segment[at : at + len(proof)] = proof
    began = time.perf_counter()
    assert find_durable_evidence(segment, 64, 5, 0, meta_epoch) == at
    assert find_durable_evidence(segment, 64, 6, 0, meta_epoch) == -1
    assert time.perf_counter() - began < 1.0


# --- threads and the facade ----------------------------------------------------------


def test_threads_scan_concurrently() -> None:
    rng = np.random.default_rng(3)
    payloads = [rng.bytes(int(n)) for n in rng.integers(0, 2000, 3000)]
    buf, offsets = kernel_batch(payloads, 16, 1, 2)
    segment = bytes(buf) + bytes(4096)
    lengths = np.array([len(p) for p in payloads], np.uint32)
    want = scan(segment, 16, 2, 0, 1, capacity=4096)
    results: list[tuple[Scan, tuple[int, int]]] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(20):
                scanned = scan(segment, 16, 2, 0, 1, capacity=4096)
                results.append((scanned, verify_frames(segment, offsets, lengths, 16, 1)))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(results) == 40
    assert all(result == (want, (-1, FRAME_OK)) for result in results)
    assert len(want.offsets) == len(payloads)


def test_facade_enums_match_kernel_constants() -> None:
    assert [int(e) for e in ScanEnd] == [END_CLEAN, END_STALE, END_TORN, END_FULL, END_CAPACITY]
    assert [int(s) for s in FrameStatus] == [
        FRAME_OK,
        FRAME_BAD_CRC,
        FRAME_BAD_INDEX,
        FRAME_BAD_LENGTH,
        FRAME_OUT_OF_BOUNDS,
    ]
    assert len(set(ScanEnd)) == 5 and len(set(FrameStatus)) == 5
    assert kernels.FRAME_HEADER_BYTES == 24 and kernels.FRAME_ALIGN_BYTES == 8


def test_raise_for_frame_status_messages() -> None:
    buf = bytearray(bytes(64) + b"".join(model_frames([b"hello"], 0, 19, 1)))
    raise_for_frame_status(FRAME_OK, "x.seg", 64, 17)
    cases = [
        (FRAME_BAD_CRC, {}, "CRC32C mismatch for record 17"),
        (FRAME_BAD_INDEX, {"segment": buf}, "expected record 17, found record 19"),
        (FRAME_BAD_INDEX, {}, "expected record 17, found a frame of another record"),
        (
            FRAME_BAD_LENGTH,
            {"segment": buf, "payload_bytes": 4},
            "record 17: frame holds 5 payload bytes instead of 4",
        ),
        (FRAME_OUT_OF_BOUNDS, {"segment": buf}, "past the end of the file of 96 bytes"),
    ]
    for status, extra, what in cases:
        with pytest.raises(CorruptionError) as info:
            raise_for_frame_status(status, "dir/x.seg", 64, 17, **extra)  # type: ignore[arg-type]
        assert info.value.path == "dir/x.seg"
        assert info.value.offset == 64
        assert what in info.value.what
        assert "dir/x.seg" in str(info.value) and "64" in str(info.value)
    with pytest.raises(SegstoreError, match="unknown frame status 99"):
        raise_for_frame_status(99, "x.seg", 0, 1)


def test_check_frame() -> None:
    buf = bytearray(b"".join(model_frames([b"hello"], 0, 19, 1)))
    check_frame(buf, "x.seg", 0, 0, 19, 5)
    with pytest.raises(CorruptionError, match="expected record 18, found record 19"):
        check_frame(buf, "x.seg", 0, 0, 18, 5)


def test_read_only_mmap_segment_and_no_leaked_buffer_exports(tmp_path: Path) -> None:
    # Segments are read through read-only mmaps; mmap.close() raises BufferError while any
    # buffer export is held, so this also proves every path (errors too) releases it.
    buf, offsets = kernel_batch([b"alpha", b"beta", b"gamma"], 4, 1, 1)
    path = tmp_path / "seg"
    path.write_bytes(bytes(buf) + bytes(64))
    lengths = np.array([5, 4, 5], np.uint32)
    with path.open("rb") as file:
        mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        out = np.zeros(8, np.uint32)
        assert scan_segment(mapped, 0, 1, 4, 1, 0, out, out.copy(), bytearray(32))[2] == END_CLEAN
        assert verify_frames(mapped, offsets, lengths, 4, 1) == (-1, FRAME_OK)
        assert verify_frame(mapped, int(offsets[1]), 4, 2, 4) == FRAME_OK
        assert find_durable_evidence(mapped, 0, 1, 4, 1) == -1
        assert read_frame_fields(mapped, 0)[2] == 1
        with pytest.raises(ValueError):
            scan_segment(mapped, 4, 1, 4, 1, 0, out, out.copy(), bytearray(32))
        with pytest.raises(ValueError):
            read_frame_fields(mapped, len(mapped) - 8)
        with pytest.raises((TypeError, ValueError)):
            encode_one(mapped, 0, b"x", b"abcd", 1, 1, 0)  # read-only
        mapped.close()


# -- the segmented log's rows (FORMAT.md 7.1, 7.2) against the Python twin ---------------
# LogRowBuffer.add against SegmentedLogStore._row_of (the twin the store falls back to),
# and build_log_entries against LogEntry's own constructor. Invariant 4 (partition
# indices are contiguous) rests on add assigning and refusing exactly as the twin does.


def _twin_row(
    entry: object, next_indices: dict[int, int], partition_count: int
) -> tuple[int, int, int, int, int] | None:
    """The twin's row for ``entry`` (advancing ``next_indices``), None if it refuses."""
    from segstore.errors import PartitionError
    from segstore.raft.segmented_store import SegmentedLogStore

    holder = object.__new__(SegmentedLogStore)
    holder.partition_count = partition_count
    try:
        return holder._row_of(entry, next_indices)  # type: ignore[arg-type]
    except PartitionError:
        return None


_row_entries = st.builds(
    lambda kind, pid, index, payload, raw, term, ts: (kind, pid, index, payload, raw, term, ts),
    st.sampled_from(["app", "app", "app", "conf", "raw"]),
    st.sampled_from([0, 1, 2, 3, 5, 0xFFFFFFFE]),
    st.one_of(st.just(0), st.just(0), st.integers(0, 6), st.just(2**64 - 1)),
    st.binary(max_size=8),
    st.binary(max_size=20),
    st.sampled_from([0, 1, 2**64 - 1]),
    st.sampled_from([0, 7, 2**64 - 1]),
)


@given(entries=st.lists(_row_entries, max_size=40), capacity=st.sampled_from([1, 3, 64]))
def test_log_row_buffer_add_matches_twin(
    entries: list[tuple[str, int, int, bytes, bytes, int, int]], capacity: int
) -> None:
    from segstore.raft import LogEntry, LogValType, encode_entry
    from segstore.raft.partition_entry import LOG_HEADER_DTYPE

    partitions = 4
    buffer = kernels.LogRowBuffer(partitions, {}, capacity)
    twin_indices: dict[int, int] = {}
    rows: list[tuple[int, int, int, int, int]] = []
    values: list[bytes] = []
    for kind, pid, index, payload, raw, term, ts in entries:
        if kind == "conf":
            entry = LogEntry(term, encode_entry(pid, payload, index), LogValType.conf, ts)
        elif kind == "raw":  # no header, a foreign one, or a damaged one
            entry = LogEntry(term, raw, LogValType.app_log, ts)
        else:
            entry = LogEntry(term, encode_entry(pid, payload, index), LogValType.app_log, ts)
        expected = _twin_row(entry, twin_indices, partitions)
        before = dict(buffer.next_indices)
        count = buffer.add(entry.term, entry.timestamp_us, entry.val_type, entry.value)
        if expected is None:
            assert count == kernels.ROW_SLOW
            assert buffer.next_indices == before
            continue
        assert count == len(rows) + 1, entry
        rows.append(expected)
        values.append(entry.value)
        assert buffer.next_indices == twin_indices
    assert len(buffer) == len(rows)
    assert buffer.values == values
    got = np.frombuffer(buffer.rows(), LOG_HEADER_DTYPE)
    assert got.tolist() == rows
    assert bytes(buffer.rows())[29::32] + bytes(buffer.rows())[30::32] == bytes(2 * len(rows))


def test_log_row_buffer_row_bytes_truncate_and_arguments() -> None:
    """Rows are the FORMAT.md 7.2 bytes, zero padded; add_row writes a given row;
    truncate keeps a prefix; a rows() view stays valid while the buffer grows."""
    from segstore.raft import encode_entry

    buffer = kernels.LogRowBuffer(8, {6: 9}, capacity=1)
    assert buffer.add(3, 4, 1, encode_entry(6, b"p")) == 1
    view = buffer.rows()
    assert buffer.add_row(5, 6, 0, 0xFFFFFFFF, 2, b"conf") == 2  # grows
    assert (
        bytes(view)
        == (3).to_bytes(8, "little")
        + (4).to_bytes(8, "little")
        + (9).to_bytes(8, "little")
        + (6).to_bytes(4, "little")
        + b"\x01\x00\x00\x00"
    )
    assert buffer.next_indices == {6: 10}
    assert buffer.values == [encode_entry(6, b"p"), b"conf"]
    assert (
        bytes(buffer.rows())[32:]
        == (5).to_bytes(8, "little")
        + (6).to_bytes(8, "little")
        + bytes(8)
        + b"\xff\xff\xff\xff\x02\x00\x00\x00"
    )
    buffer.truncate(1)
    assert len(buffer) == 1 and buffer.values == [encode_entry(6, b"p")]
    assert bytes(buffer.rows()) == bytes(view)
    with pytest.raises(ValueError):
        buffer.truncate(2)
    with pytest.raises(ValueError):
        buffer.add(1, 0, 256, b"")
    with pytest.raises(OverflowError):
        buffer.add(2**64, 0, 1, encode_entry(1, b""))
    assert len(buffer) == 1
    with pytest.raises(ValueError):
        kernels.LogRowBuffer(0, {})
    with pytest.raises(ValueError):
        kernels.LogRowBuffer(2**32, {})
    with pytest.raises(TypeError):
        kernels.LogRowBuffer(1, [])  # type: ignore[arg-type]


def test_entry_appender_buffers_the_common_case_and_hands_over_the_rest() -> None:
    """EntryAppender.append: exact-type entries that fit are buffered under the lock
    with index last_index + count, flush_full runs at full_count; wrong types, large
    values, rows LogRowBuffer refuses and a store that is not writable go to slow."""
    from segstore.raft import LogEntry, LogValType, encode_entry

    class CountingLock:
        def __init__(self) -> None:
            self.lock = threading.RLock()
            self.held = 0

        def acquire(self) -> bool:
            self.held += 1
            return self.lock.acquire()

        def release(self) -> None:
            self.held -= 1
            self.lock.release()

    rows = kernels.LogRowBuffer(4, {})
    pending: list[LogEntry] = []
    handed: list[object] = []
    flushes: list[tuple[int, int]] = []
    lock = CountingLock()
    appender = kernels.EntryAppender(
        rows, pending, LogEntry, lock, 100, 64, 3,
        lambda entry: handed.append(entry) or -1,
        lambda: flushes.append((len(pending), lock.held)),
    )  # fmt: skip
    first = LogEntry(1, encode_entry(2, b"a"))
    assert appender.append(first) == 101
    assert appender.append(LogEntry(1, b"c", LogValType.conf)) == 102
    assert flushes == [] and lock.held == 0
    assert pending == [first, LogEntry(1, b"c", LogValType.conf)]
    assert rows.next_indices == {2: 2}

    subclass = type("Sub", (LogEntry,), {"__slots__": ()})(1, encode_entry(2, b"s"))
    large = LogEntry(1, encode_entry(2, bytes(64)))
    refused = LogEntry(1, encode_entry(9, b"x"))  # no partition 9: add says ROW_SLOW
    for entry in (subclass, large, refused):
        assert appender.append(entry) == -1
    assert handed == [subclass, large, refused] and len(pending) == 2 and lock.held == 0

    third = LogEntry(1, encode_entry(2, b"b"))
    assert appender.append(third) == 103
    assert flushes == [(3, 1)] and rows.next_indices == {2: 3}  # under the lock

    appender.writable = False
    assert appender.append(third) == -1 and handed[-1] is third and len(pending) == 3


@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from([0, 1, 2**63, 2**64 - 1]),
            st.sampled_from([0, 1, 2**64 - 1]),
            st.sampled_from([1, 2, 3, 4, 5, 231]),
            st.binary(max_size=12),
        ),
        max_size=20,
    )
)
def test_build_log_entries_matches_constructor(rows: list[tuple[int, int, int, bytes]]) -> None:
    from segstore.raft import LogEntry, LogValType
    from segstore.raft.partition_entry import LOG_HEADER_DTYPE
    from segstore.raft.segmented_store import _trusted_entries

    headers = np.array([(t, ts, 0, 0, v) for t, ts, v, _ in rows], LOG_HEADER_DTYPE)
    values = [value for *_, value in rows]
    built = _trusted_entries(headers, values)
    expected = [LogEntry(t, value, LogValType(v), ts) for t, ts, v, value in rows]
    assert built == expected
    assert all(type(e) is LogEntry and type(e.val_type) is LogValType for e in built)
    assert [hash(e) for e in built] == [hash(e) for e in expected]


def test_build_log_entries_refuses_what_it_cannot_use() -> None:
    from segstore.raft import LogEntry
    from segstore.raft.partition_entry import LOG_HEADER_DTYPE
    from segstore.raft.segmented_store import _ENTRY_SETTERS, _VAL_TYPE_OF_BYTE

    rows = np.array([(1, 0, 0, 0, 1)], LOG_HEADER_DTYPE)
    bad_type = np.array([(1, 0, 0, 0, 9)], LOG_HEADER_DTYPE)
    build = kernels.build_log_entries
    with pytest.raises(ValueError, match="unknown val_type 9"):
        build(LogEntry, _ENTRY_SETTERS, bad_type, [b""], _VAL_TYPE_OF_BYTE)
    with pytest.raises(ValueError, match="not 2 rows"):
        build(LogEntry, _ENTRY_SETTERS, rows, [b"", b""], _VAL_TYPE_OF_BYTE)
    with pytest.raises(TypeError):
        build(LogEntry, (1, 2, 3, 4), rows, [b""], _VAL_TYPE_OF_BYTE)
    with pytest.raises(TypeError):
        build("LogEntry", _ENTRY_SETTERS, rows, [b""], _VAL_TYPE_OF_BYTE)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        build(LogEntry, _ENTRY_SETTERS[:3], rows, [b""], _VAL_TYPE_OF_BYTE)
    with pytest.raises(ValueError):
        build(LogEntry, _ENTRY_SETTERS, rows, [b""], _VAL_TYPE_OF_BYTE[:10])

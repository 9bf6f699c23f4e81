"""Golden files pin docs/FORMAT.md byte for byte, checked both ways.

Encode: the encoders (format.py, the record kernels, the pure-Python twin in
record_model.py, and the engine itself for the whole directory) must reproduce every
golden file exactly. Decode: every golden file must parse back, both through segstore's
decoders and through an independent reading of the FORMAT.md tables written here with
``struct`` and the ``crc32c`` package, to the inputs in tests/make_golden.py. A failure
here is a format change: bump FORMAT_VERSION and regenerate with
``.venv/bin/python tests/make_golden.py`` only if the change is deliberate.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import crc32c as crc32c_package
import make_golden as golden
import numpy as np
import pytest
import record_model

from segstore.aof import Aof, kernels
from segstore.aof.format import (
    FORMAT_VERSION,
    Meta,
    SegmentHeader,
    SegmentIndexArrays,
    decode_sidecar,
    dtype_to_json,
)

GOLDEN = golden.GOLDEN_DIR
H = golden.H


def crc(data: bytes) -> int:
    """CRC32C from the independent PyPI package, not segstore's kernel."""
    return int(crc32c_package.crc32c(data))


def read_golden(name: str) -> bytes:
    return (GOLDEN / name).read_bytes()


def test_crc32c_check_value_from_format_md() -> None:
    assert crc(b"123456789") == 0xE3069283
    assert kernels.crc32c(b"123456789") == 0xE3069283


def test_every_golden_file_is_present_and_nothing_else() -> None:
    expected = set(golden.golden_files()) | {golden.AOF_DIR_NAME}
    assert set(os.listdir(GOLDEN)) == expected


# -- aof.meta (FORMAT.md section 2) -----------------------------------------------------


@pytest.mark.parametrize("name", sorted(golden.META_CASES))
def test_meta_encodes_to_golden(name: str) -> None:
    assert golden.META_CASES[name].encode() == read_golden(name)


@pytest.mark.parametrize("name", sorted(golden.META_CASES))
def test_meta_golden_decodes(name: str) -> None:
    data = read_golden(name)
    meta = golden.META_CASES[name]
    decoded = Meta.decode(data, name)
    assert decoded == meta
    assert decoded.header_bytes == meta.header_bytes
    # independent reading of the table
    magic, version, body_bytes = struct.unpack_from("<8sII", data)
    assert (magic, version) == (b"SGAOFMET", 1)
    assert len(data) == 16 + body_bytes + 4
    (stored_crc,) = struct.unpack_from("<I", data, 16 + body_bytes)
    assert stored_crc == crc(data[: 16 + body_bytes])
    body_text = data[16 : 16 + body_bytes].decode("utf-8")
    body = json.loads(body_text)
    assert body_text == json.dumps(body, sort_keys=True, separators=(",", ":"))
    assert set(body) == {
        "store_id",
        "header_dtype",
        "header_bytes",
        "segment_bytes",
        "first_index",
        "epoch",
        "epoch_cut",
        "user",
    }
    assert body["store_id"] == golden.STORE_ID.hex()
    assert len(body["store_id"]) == 32
    assert body["header_bytes"] == meta.header_bytes
    assert body["segment_bytes"] == meta.segment_bytes
    assert (body["first_index"], body["epoch"], body["epoch_cut"]) == (
        meta.first_index,
        meta.epoch,
        meta.epoch_cut,
    )
    assert body["user"] == meta.user
    if meta.header_dtype is None:
        assert body["header_dtype"] == []
    else:
        descr = np.lib.format.dtype_to_descr(meta.header_dtype)
        assert body["header_dtype"] == json.loads(json.dumps(descr))
        assert body["header_dtype"] == dtype_to_json(meta.header_dtype)


def test_meta_golden_pins_the_exact_body_text() -> None:
    body = read_golden("meta.bin")[16:-4]
    assert body == (
        b'{"epoch":3,"epoch_cut":12,"first_index":7,'
        b'"header_bytes":9,"header_dtype":[["term","<u8"],["kind","|u1"]],'
        b'"segment_bytes":4096,"store_id":"' + golden.STORE_ID.hex().encode() + b'",'
        b'"user":{"nested":{"a":null,"b":[1,2]},"term":5,"voted_for":"n1"}}'
    )


# -- segment header (FORMAT.md section 3) -------------------------------------------------


def test_segment_header_encodes_to_golden() -> None:
    assert golden.SEGMENT_HEADER.encode() == read_golden("segment_header.bin")


def test_segment_header_golden_decodes() -> None:
    data = read_golden("segment_header.bin")
    assert len(data) == 64
    assert SegmentHeader.decode(data, "segment_header.bin") == golden.SEGMENT_HEADER
    magic, version, h, first, capacity, store_id = struct.unpack_from("<8sIIQQ16s", data)
    assert (magic, version, h, first, capacity, store_id) == (
        b"SGAOFSEG",
        1,
        H,
        4097,
        golden.SEGMENT_BYTES,
        golden.STORE_ID,
    )
    assert data[48:60] == bytes(12)
    assert struct.unpack_from("<I", data, 60)[0] == crc(data[:60])


# -- record frames (FORMAT.md section 4) ------------------------------------------------------


@pytest.mark.parametrize("header_bytes", [0, H])
def test_frames_encode_to_golden(header_bytes: int) -> None:
    expected = read_golden(f"frames_h{header_bytes}.bin")
    assert golden.encode_frames(header_bytes) == expected
    # the pure-Python twin, written from FORMAT.md alone, agrees
    twin = b"".join(
        record_model.encode_frame(payload, header, index, epoch, durable)
        for payload, header, index, epoch, durable in golden.frame_specs(header_bytes)
    )
    assert twin == expected


@pytest.mark.parametrize("header_bytes", [0, H])
def test_encode_gathered_matches_golden_frames(header_bytes: int) -> None:
    specs = golden.frame_specs(header_bytes)[:16]  # consecutive indices, one epoch
    durable = {s[4] for s in specs}
    expected = read_golden(f"frames_h{header_bytes}.bin")
    # encode_gathered takes one durable index per batch: check each run that shares one
    start = 0
    offset = 0
    while start < len(specs):
        end = start
        while end < len(specs) and specs[end][4] == specs[start][4]:
            end += 1
        run = specs[start:end]
        lengths = np.array([len(p) for p, *_ in run], np.uint32)
        size = kernels.batch_bytes(header_bytes, lengths)
        out = bytearray(size)
        offsets = np.zeros(len(run), np.uint32)
        written = kernels.encode_gathered(
            out,
            0,
            b"".join(p for p, *_ in run),
            np.concatenate([[0], np.cumsum(lengths[:-1])]).astype(np.uint64),
            lengths,
            0,
            np.frombuffer(b"".join(h for _, h, *_ in run), np.uint8),
            header_bytes,
            run[0][2],
            run[0][3],
            run[0][4],
            offset,
            offsets,
        )
        assert written == size
        assert bytes(out) == expected[offset : offset + size]
        offset += size
        start = end
    assert len(durable) == 2
    assert offset == len(expected) - kernels.frame_bytes(header_bytes, 40)


@pytest.mark.parametrize("header_bytes", [0, H])
def test_frames_golden_decodes(header_bytes: int) -> None:
    data = read_golden(f"frames_h{header_bytes}.bin")
    specs = golden.frame_specs(header_bytes)
    offset = 0
    remainders = set()
    for payload, header, index, epoch, durable_index in specs:
        stored_crc, p, got_index, got_epoch, lag = struct.unpack_from("<IIQII", data, offset)
        assert (p, got_index, got_epoch) == (len(payload), index, epoch)
        expected_lag = index - durable_index
        assert lag == (expected_lag if 0 <= expected_lag < 0xFFFFFFFF else 0xFFFFFFFF)
        body_end = offset + 24 + header_bytes + p
        assert stored_crc == crc(data[offset + 4 : body_end])
        assert data[offset + 24 : offset + 24 + header_bytes] == header
        assert data[offset + 24 + header_bytes : body_end] == payload
        size = (24 + header_bytes + p + 7) & ~7  # the padding rule
        assert size == kernels.frame_bytes(header_bytes, p)
        assert data[body_end : offset + size] == bytes(offset + size - body_end)
        assert kernels.read_frame_fields(data, offset) == (
            stored_crc,
            p,
            index,
            epoch,
            lag,
        )
        assert kernels.verify_frame(data, offset, header_bytes, index, p) == kernels.FRAME_OK
        remainders.add((24 + header_bytes + p) % 8)
        offset += size
    assert offset == len(data)
    assert remainders == set(range(8))  # every padding amount 0..7 is pinned


# -- a whole segment and its sidecar (FORMAT.md 3, 4.1, 5) -------------------------------------


def test_segment_encodes_to_golden() -> None:
    segment, _ = golden.encode_segment()
    assert segment == read_golden("segment.seg")


def _scan(data: bytes, *, epoch: int = golden.SEGMENT_EPOCH, cut: int = 0):  # type: ignore[no-untyped-def]
    room = 64
    offsets = np.zeros(room, np.uint32)
    lengths = np.zeros(room, np.uint32)
    headers = np.zeros(room * H, np.uint8)
    count, end, kind = kernels.scan_segment(
        data, 64, golden.SEGMENT_FIRST_INDEX, H, epoch, cut, offsets, lengths, headers
    )
    return count, end, kind, offsets[:count], lengths[:count], headers[: count * H]


def test_segment_golden_scans_with_the_kernel() -> None:
    data = read_golden("segment.seg")
    assert len(data) == golden.SEGMENT_BYTES
    header = SegmentHeader.decode(data, "segment.seg")
    assert header == SegmentHeader(
        H, golden.SEGMENT_FIRST_INDEX, golden.SEGMENT_BYTES, golden.STORE_ID
    )
    records = golden.segment_records()
    _, arrays = golden.encode_segment()
    count, end, kind, offsets, lengths, headers = _scan(data)
    assert count == len(records)
    assert kind == kernels.END_CLEAN
    assert end == arrays.end_offset
    assert offsets.tolist() == arrays.offsets.tolist()
    assert offsets[0] == 64 and all(o % 8 == 0 for o in offsets.tolist())
    assert lengths.tolist() == [len(p) for p, _ in records]
    assert headers.view(golden.HEADER_DTYPE).tolist() == [h for _, h in records]
    for k, (payload, _) in enumerate(records):
        start = int(offsets[k]) + 24 + H
        assert data[start : start + len(payload)] == payload
    assert data[end:] == bytes(len(data) - end)  # zero-filled past the records
    # the twin scans the same bytes to the same result
    twin = record_model.scan(data, 64, golden.SEGMENT_FIRST_INDEX, H, golden.SEGMENT_EPOCH, 0)
    assert twin.offsets == offsets.tolist()
    # epoch rule (4.2): a newer meta epoch whose cut is below some records ends them STALE
    count, end, kind, *_ = _scan(data, epoch=golden.SEGMENT_EPOCH + 1, cut=4)
    assert (count, kind) == (4, kernels.END_STALE)


def test_sidecar_encodes_to_golden() -> None:
    assert golden.encode_segment_sidecar() == read_golden("segment.idx")


def test_sidecar_golden_decodes() -> None:
    data = read_golden("segment.idx")
    _, arrays = golden.encode_segment()
    decoded = decode_sidecar(
        data,
        "segment.idx",
        header_bytes=H,
        first_index=golden.SEGMENT_FIRST_INDEX,
        store_id=golden.STORE_ID,
    )
    assert isinstance(decoded, SegmentIndexArrays)
    assert decoded.offsets.tolist() == arrays.offsets.tolist()
    assert decoded.lengths.tolist() == arrays.lengths.tolist()
    assert bytes(decoded.headers) == bytes(arrays.headers)
    assert decoded.end_offset == arrays.end_offset
    # independent reading of the table
    n = len(arrays.offsets)
    magic, version, h, first, count, end_offset = struct.unpack_from("<8sIIQQI", data)
    assert (magic, version, h, first, count, end_offset) == (
        b"SGAOFIDX",
        1,
        H,
        golden.SEGMENT_FIRST_INDEX,
        n,
        arrays.end_offset,
    )
    assert data[36:40] == bytes(4)
    assert data[40:56] == golden.STORE_ID
    assert data[56:60] == bytes(4)
    assert struct.unpack_from("<I", data, 60)[0] == crc(data[:60])
    body_end = 64 + 8 * n + H * n
    assert list(struct.unpack_from(f"<{n}I", data, 64)) == arrays.offsets.tolist()
    assert list(struct.unpack_from(f"<{n}I", data, 64 + 4 * n)) == arrays.lengths.tolist()
    assert data[64 + 8 * n : body_end] == bytes(arrays.headers)
    padded_end = (body_end + 7) & ~7
    assert data[body_end:padded_end] == bytes(padded_end - body_end)
    assert len(data) == padded_end + 8
    assert struct.unpack_from("<I", data, padded_end)[0] == crc(data[64:body_end])
    assert data[-4:] == bytes(4)


def test_sidecar_for_another_store_or_segment_is_not_trusted() -> None:
    data = read_golden("segment.idx")
    kwargs = {"header_bytes": H, "first_index": 1, "store_id": golden.STORE_ID}
    assert decode_sidecar(data, "x", **{**kwargs, "store_id": bytes(16)}) is None
    assert decode_sidecar(data, "x", **{**kwargs, "first_index": 2}) is None
    damaged = bytearray(data)
    damaged[70] ^= 1
    assert decode_sidecar(bytes(damaged), "x", **kwargs) is None


def test_format_version_is_one() -> None:
    assert FORMAT_VERSION == 1


# -- a whole Aof directory (backward compatibility) ----------------------------------------------


def _golden_aof_copy(tmp_path: Path) -> Path:
    path = tmp_path / golden.AOF_DIR_NAME
    shutil.copytree(GOLDEN / golden.AOF_DIR_NAME, path)
    return path


def _assert_golden_aof_content(aof: Aof) -> None:
    records = golden.aof_records()
    first, last = golden.AOF_FIRST_INDEX, golden.AOF_LAST_INDEX
    assert (aof.first_index, aof.last_index) == (first, last)
    assert aof.store_id == golden.STORE_ID
    assert aof.header_dtype == golden.HEADER_DTYPE
    assert aof.user_meta == golden.AOF_USER_META
    assert [bytes(v) for v in aof.read_range(first, last + 1)] == [
        p for p, _ in records[first - 1 :]
    ]
    assert aof.headers(first, last + 1).tolist() == [h for _, h in records[first - 1 :]]
    assert len(aof.segment_paths()) == 2


def test_golden_aof_directory_opens_readonly(tmp_path: Path) -> None:
    path = _golden_aof_copy(tmp_path)
    with Aof.open(path, readonly=True) as aof:
        _assert_golden_aof_content(aof)
        assert aof.recovery.sidecars_loaded == 1
        assert aof.recovery.torn_cut_at_index is None


def test_golden_aof_directory_opens_and_keeps_working(tmp_path: Path) -> None:
    path = _golden_aof_copy(tmp_path)
    with Aof.open(path, autosync=False) as aof:
        _assert_golden_aof_content(aof)
        assert aof.append(b"new", (1, 1)) == golden.AOF_LAST_INDEX + 1
    with Aof.open(path) as aof:
        assert bytes(aof.read(golden.AOF_LAST_INDEX + 1)) == b"new"
        assert bytes(aof.read(golden.AOF_FIRST_INDEX)) == golden.aof_records()[1][0]


def test_golden_aof_directory_files_parse(tmp_path: Path) -> None:
    directory = GOLDEN / golden.AOF_DIR_NAME
    meta = Meta.decode((directory / "aof.meta").read_bytes(), "aof.meta")
    assert meta.store_id == golden.STORE_ID
    assert meta.first_index == golden.AOF_FIRST_INDEX
    for name in sorted(os.listdir(directory)):
        if name.endswith(".seg"):
            header = SegmentHeader.decode((directory / name).read_bytes(), name)
            assert header.first_index == int(name.split(".")[0])
            assert header.store_id == golden.STORE_ID


def test_engine_still_writes_the_golden_aof_directory(tmp_path: Path) -> None:
    """The engine, driven through make_golden's recipe, writes the golden bytes exactly."""
    fresh = tmp_path / "fresh"
    golden.write_aof_directory(fresh)
    expected_dir = GOLDEN / golden.AOF_DIR_NAME
    assert sorted(os.listdir(fresh)) == sorted(os.listdir(expected_dir))
    for name in sorted(os.listdir(expected_dir)):
        assert (fresh / name).read_bytes() == (expected_dir / name).read_bytes(), name

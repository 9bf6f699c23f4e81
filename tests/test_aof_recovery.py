"""Opening an Aof: one test per row R1..R8 of segstore/aof/recovery.py's decision table,
torn tails at every byte of the last record, and loud corruption.

Invariant 2: torn tails are cut (durably), corruption in durable data is a clear error
naming file and offset, never silently skipped or repaired.
"""

from __future__ import annotations

import os
import random
import shutil
import struct
from contextlib import suppress
from pathlib import Path

import pytest
from aof_helpers import SEGMENT_BYTES, append_range, assert_intact, batch, open_aof
from crash_writer import HEADER_DTYPE, header_for, payload_for

from segstore.aof.format import Meta, SegmentHeader, frame_bytes
from segstore.errors import CorruptionError, SegstoreError
from segstore.testing.faults import FaultyIO

H = HEADER_DTYPE.itemsize
FRAME_HEADER = struct.Struct("<IIQII")


def segment_files(path: Path) -> list[Path]:
    return sorted(path.glob("*.seg"))


def frame_offsets(segment: Path) -> dict[int, tuple[int, int]]:
    """Record index -> (frame offset, frame bytes), walking the segment by FORMAT 3/4."""
    data = segment.read_bytes()
    first = SegmentHeader.decode(data[:64], str(segment)).first_index
    out: dict[int, tuple[int, int]] = {}
    offset, index = 64, first
    while offset + 24 <= len(data):
        _, size, found, _, _ = FRAME_HEADER.unpack_from(data, offset)
        if found != index or (size == 0 and data[offset : offset + 24] == bytes(24)):
            break
        out[index] = (offset, frame_bytes(H, size))
        offset += frame_bytes(H, size)
        index += 1
    return out


def segment_holding(path: Path, index: int) -> Path:
    firsts = [(int(p.stem), p) for p in segment_files(path)]
    return [p for first, p in firsts if first <= index][-1]


def flip_bit(path: Path, offset: int, bit: int = 0) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([byte ^ (1 << bit)]))


def build(path: Path, stop: int, *, sync_each: bool = False) -> None:
    """Records [1, stop) over several 64 KiB segments, closed cleanly."""
    with open_aof(path) as aof:
        append_range(aof, 1, stop, sync_each=sync_each)
        aof.sync()


def read_meta(path: Path) -> Meta:
    return Meta.decode((path / "aof.meta").read_bytes(), str(path / "aof.meta"))


# -- the decision table ------------------------------------------------------------------


def test_r1_sealed_segment_with_good_sidecar_is_loaded_not_rescanned(tmp_path: Path) -> None:
    # R1: a sealed segment whose sidecar checks out is loaded without a rescan. Proof: a
    # flipped payload bit in it is not noticed by open, only by the read (invariant 2).
    build(tmp_path, 150)
    segments = segment_files(tmp_path)
    assert len(segments) >= 3
    offsets = frame_offsets(segments[0])
    victim = 5
    offset, _ = offsets[victim]
    flip_bit(segments[0], offset + 24 + H + 3)
    with open_aof(tmp_path) as aof:
        assert aof.recovery.sidecars_loaded == len(segments) - 1
        assert aof.recovery.segments_scanned == 1
        assert aof.recovery.torn_cut_at_index is None
        assert aof.last_index == 149
        with pytest.raises(CorruptionError) as caught:
            aof.read(victim)
        assert caught.value.path == str(segments[0])
        assert caught.value.offset == offset
        assert_intact(aof, victim + 1, 150)


def test_r2_sealed_segment_without_usable_sidecar_is_rescanned(tmp_path: Path) -> None:
    # R2: a missing or damaged sidecar means a rescan and a new sidecar.
    build(tmp_path, 150)
    segments = segment_files(tmp_path)
    assert len(segments) >= 3
    sidecars = [s.with_suffix(".idx") for s in segments[:-1]]
    assert all(s.exists() for s in sidecars)
    sidecars[0].unlink()
    flip_bit(sidecars[1], 70)  # body CRC fails
    with open_aof(tmp_path) as aof:
        assert aof.recovery.segments_scanned == 3
        assert aof.recovery.sidecars_loaded == len(segments) - 3
        assert_intact(aof, 1, 150)
    assert sidecars[0].exists()
    with open_aof(tmp_path) as aof:  # the new sidecars check out
        assert aof.recovery.sidecars_loaded == len(segments) - 1
        assert aof.recovery.segments_scanned == 1
        assert_intact(aof, 1, 150)


def test_r2_sidecars_lost_in_a_power_loss_mean_a_rescan(tmp_path: Path) -> None:
    # Sidecars are written without fsync (a crash can only cost a rescan): after a power
    # loss that drops them, every durable record is read back from the segments.
    io = FaultyIO(real_sync=False)
    aof = open_aof(tmp_path, io)
    append_range(aof, 1, 150)
    aof.sync()
    segments = segment_files(tmp_path)
    assert len(segments) >= 3
    assert all(s.with_suffix(".idx").exists() for s in segments[:-1])
    io.crash()
    with suppress(SegstoreError):
        aof.close()
    with open_aof(tmp_path) as reopened:
        assert reopened.recovery.sidecars_loaded == 0
        assert reopened.recovery.segments_scanned == len(segments)
        assert_intact(reopened, 1, 150)


def test_r3_segment_below_first_index_is_deleted(tmp_path: Path) -> None:
    # R3: a crash in truncate_before after its commit point leaves segments wholly below
    # first_index; open deletes them.
    build(tmp_path, 150)
    segments = segment_files(tmp_path)
    saved = {p: p.read_bytes() for p in [segments[0], segments[0].with_suffix(".idx")]}
    cut = int(segments[2].stem)
    with open_aof(tmp_path) as aof:
        aof.truncate_before(cut + 1)
    assert not segments[0].exists()
    for file, data in saved.items():  # as if the unlinks never reached the disk
        file.write_bytes(data)
    with open_aof(tmp_path) as aof:
        assert str(segments[0]) in aof.recovery.removed_files
        assert (aof.first_index, aof.last_index) == (cut + 1, 149)
        assert_intact(aof, cut + 1, 150)
        assert aof.append(payload_for(150), header_for(150)) == 150
    assert not segments[0].exists()
    with open_aof(tmp_path) as aof:
        assert_intact(aof, cut + 1, 151)


def test_r4_last_segment_with_zero_header_is_deleted(tmp_path: Path) -> None:
    # R4: a crash while activating a segment can leave the renamed spare with an all-zero
    # header; open deletes it and appends continue.
    build(tmp_path, 40)
    bogus = tmp_path / f"{40:020d}.seg"
    bogus.write_bytes(bytes(SEGMENT_BYTES))
    with open_aof(tmp_path) as aof:
        assert str(bogus) in aof.recovery.removed_files
        assert aof.last_index == 39
        assert aof.append(payload_for(40), header_for(40)) == 40
        batch(aof, 41, 120)
        aof.sync()
    with open_aof(tmp_path) as aof:
        assert aof.last_index == 119
        assert_intact(aof, 1, 120)


@pytest.mark.parametrize("field_offset", [0, 12, 16, 24, 32, 60])
def test_r5_bad_segment_header_is_corruption(tmp_path: Path, field_offset: int) -> None:
    # R5: a segment header that does not check out is CorruptionError naming the file.
    build(tmp_path, 150)
    victim = segment_files(tmp_path)[1]
    flip_bit(victim, field_offset + 1)
    with pytest.raises(CorruptionError) as caught:
        open_aof(tmp_path)
    assert caught.value.path == str(victim)
    assert 0 <= caught.value.offset < 64


def test_r5_gap_between_segments_is_corruption(tmp_path: Path) -> None:
    # R5: a missing middle segment is a gap: CorruptionError, nothing silently dropped.
    build(tmp_path, 150)
    segments = segment_files(tmp_path)
    assert len(segments) >= 3
    segments[1].unlink()
    segments[1].with_suffix(".idx").unlink()
    with pytest.raises(CorruptionError) as caught:
        open_aof(tmp_path)
    assert caught.value.path == str(segments[0])


def test_r5_gap_without_sidecar_is_corruption(tmp_path: Path) -> None:
    # R5 with a rescan: the segment before the gap has no sidecar.
    build(tmp_path, 150)
    segments = segment_files(tmp_path)
    segments[1].unlink()
    segments[1].with_suffix(".idx").unlink()
    segments[0].with_suffix(".idx").unlink()
    with pytest.raises(CorruptionError) as caught:
        open_aof(tmp_path)
    assert caught.value.path == str(segments[0])


def test_r6_clean_end(tmp_path: Path) -> None:
    # R6 CLEAN: the bytes after the last record were never written.
    build(tmp_path, 30)
    with open_aof(tmp_path) as aof:
        assert aof.recovery.torn_cut_at_index is None
        assert aof.last_index == 29
        assert_intact(aof, 1, 30)


def test_r6_stale_end_after_truncate_after(tmp_path: Path) -> None:
    # R6 STALE: after truncate_after, valid frames of the old epoch lie past the end.
    build(tmp_path, 30)
    with open_aof(tmp_path) as aof:
        aof.truncate_after(20)
    segment = segment_files(tmp_path)[-1]
    data = segment.read_bytes()
    offset, _ = frame_offsets(segment)[20]
    after = offset + frame_bytes(H, len(payload_for(20)))
    assert FRAME_HEADER.unpack_from(data, after)[2] == 21  # the old frame is still there
    with open_aof(tmp_path) as aof:
        assert aof.recovery.torn_cut_at_index is None
        assert aof.last_index == 20
        assert_intact(aof, 1, 21)


def test_r6_full_end(tmp_path: Path) -> None:
    # R6 FULL: fewer than 24 bytes left in the last segment is a normal end.
    with open_aof(tmp_path, header_dtype=None, segment_bytes=4096) as aof:
        assert aof.append(b"f" * (4096 - 64 - 24)) == 1  # fills it exactly
        aof.sync()
        assert len(aof.segment_paths()) == 1
    with open_aof(tmp_path, header_dtype=None, segment_bytes=4096) as aof:
        assert aof.recovery.torn_cut_at_index is None
        assert aof.last_index == 1
        assert aof.append(b"next") == 2
        aof.sync()
    with open_aof(tmp_path, header_dtype=None, segment_bytes=4096) as aof:
        assert [bytes(v) for v in aof.read_range(1, 3)] == [b"f" * 4008, b"next"]


def test_r7_damaged_durable_record_with_later_proof_is_corruption(tmp_path: Path) -> None:
    # R7 / FORMAT 4.3: a bad record in the active segment followed by frames written
    # after it was durable is corruption, not a torn tail.
    build(tmp_path, 20, sync_each=True)
    segment = segment_files(tmp_path)[-1]
    offset, _ = frame_offsets(segment)[10]
    flip_bit(segment, offset + 24 + H + 1)
    with pytest.raises(CorruptionError) as caught:
        open_aof(tmp_path)
    assert caught.value.path == str(segment)
    assert caught.value.offset == offset


def test_r8_torn_tail_is_cut(tmp_path: Path) -> None:
    # R8: a bad last record with no later proof is a torn tail: cut at the last valid
    # record, reported, and appends continue from there.
    build(tmp_path, 20, sync_each=True)
    segment = segment_files(tmp_path)[-1]
    offset, _ = frame_offsets(segment)[19]
    flip_bit(segment, offset + 30)
    with open_aof(tmp_path) as aof:
        assert aof.recovery.torn_cut_at_index == 19
        assert aof.recovery.torn_cut_path == str(segment)
        assert aof.recovery.torn_cut_offset == offset
        assert aof.last_index == 18
        assert aof.append(b"new 19") == 19
        aof.sync()
    with open_aof(tmp_path) as aof:
        assert aof.last_index == 19
        assert bytes(aof.read(19)) == b"new 19"
        assert_intact(aof, 1, 19)


def test_torn_cut_then_append_reopens_without_torn_tail(tmp_path: Path) -> None:
    # Invariant 2 / R6: after a torn tail was cut and a shorter record written over it,
    # a clean close must reopen as a normal end. The remains of the torn frame past the
    # new record must not be reported as a fresh torn tail (and epoch bump) at every open.
    build(tmp_path, 20, sync_each=True)
    segment = segment_files(tmp_path)[-1]
    offset, _ = frame_offsets(segment)[19]
    flip_bit(segment, offset + 30)
    with open_aof(tmp_path) as aof:
        assert aof.recovery.torn_cut_at_index == 19
        assert aof.append(b"new 19") == 19
    with open_aof(tmp_path) as aof:
        assert aof.last_index == 19
        assert aof.recovery.torn_cut_at_index is None, aof.recovery


# -- torn tails at every byte --------------------------------------------------------------


@pytest.mark.parametrize("mode", ["zeros", "garbage"])
def test_torn_tail_at_every_byte_of_last_record(tmp_path: Path, mode: str) -> None:
    # Invariant 2 (torn tails are cut): the last record's write stopped at every possible
    # byte (rest zeros: never written; or garbage). The log ends at the previous record,
    # an append afterwards works and survives another reopen.
    pristine = tmp_path / "pristine"
    with open_aof(pristine) as aof:
        append_range(aof, 1, 8, sync_each=True)
        last_payload = bytes(range(1, 61))  # no zero byte: zeroing always damages
        assert aof.append(last_payload, (9, 9, 9)) == 8
        aof.sync()
    segment_name = segment_files(pristine)[-1].name
    offset, _ = frame_offsets(pristine / segment_name)[8]
    covered = 24 + H + len(last_payload)  # the CRC covers the frame up to here
    rng = random.Random(7)
    for cut in range(covered):
        work = tmp_path / f"w{cut}"
        shutil.copytree(pristine, work)
        seg = work / segment_name
        data = bytearray(seg.read_bytes())
        for position in range(offset + cut, offset + covered):
            if mode == "zeros":
                data[position] = 0
            else:
                data[position] ^= rng.randrange(1, 256)
        seg.write_bytes(bytes(data))
        with open_aof(work) as aof:
            assert aof.last_index == 7, f"cut at byte {cut}"
            if mode == "garbage" or cut > 0:
                assert aof.recovery.torn_cut_at_index == 8, f"cut at byte {cut}"
            assert_intact(aof, 7, 8)
            assert aof.append(b"replacement") == 8
            aof.sync()
        with open_aof(work) as aof:
            assert aof.last_index == 8
            assert bytes(aof.read(8)) == b"replacement"
            assert_intact(aof, 1, 8)
        shutil.rmtree(work)


def test_torn_cut_is_durable(tmp_path: Path) -> None:
    # Invariant 2 ("the cut is itself made durable"), FORMAT 4.2: open cuts a torn tail
    # by a durable epoch bump before anything else; a power loss right after that open
    # must not undo it, and the records past the cut are dead for good, even if the torn
    # frame's bytes later read back whole.
    with open_aof(tmp_path) as aof:
        append_range(aof, 1, 10, sync_each=True)
        batch(aof, 10, 20)  # no proof of durability for these
        aof.sync()
    segment = segment_files(tmp_path)[-1]
    offset, size = frame_offsets(segment)[12]
    original = segment.read_bytes()[offset : offset + size]
    flip_bit(segment, offset + 40)
    epoch_before = read_meta(tmp_path).epoch

    io = FaultyIO(real_sync=False)
    aof = open_aof(tmp_path, io)
    assert aof.recovery.torn_cut_at_index == 12
    io.crash()  # power loss right after open: nothing written by the session
    with suppress(SegstoreError):
        aof.close()
    meta = read_meta(tmp_path)
    assert meta.epoch > epoch_before
    assert meta.epoch_cut == 11

    # The torn frame "heals" (its bytes were in flight): records 12.. must not return.
    with open(segment, "r+b") as handle:
        handle.seek(offset)
        handle.write(original)
    with open_aof(tmp_path) as aof:
        assert aof.last_index == 11
        assert_intact(aof, 1, 12)
        assert aof.append(b"new 12") == 12
        aof.sync()
    with open_aof(tmp_path) as aof:
        assert aof.last_index == 12
        assert bytes(aof.read(12)) == b"new 12"


# -- corruption in sealed and active segments ---------------------------------------------


SEALED_SPOTS = {
    "payload": lambda off: off + 24 + H + 2,
    "record_header": lambda off: off + 24 + 1,
    "frame_length": lambda off: off + 4,
    "frame_index": lambda off: off + 8,
    "frame_crc": lambda off: off + 1,
}


@pytest.mark.parametrize("spot", sorted(SEALED_SPOTS))
def test_flipped_bit_in_sealed_segment_read_and_read_range(tmp_path: Path, spot: str) -> None:
    # Invariant 2: a bad record in a sealed (durable) segment raises CorruptionError
    # naming the file and the frame's offset from read() and read_range().
    build(tmp_path, 150)
    segment = segment_files(tmp_path)[0]
    victim = 7
    offset, _ = frame_offsets(segment)[victim]
    flip_bit(segment, SEALED_SPOTS[spot](offset), bit=3)
    with open_aof(tmp_path) as aof:
        with pytest.raises(CorruptionError) as caught:
            aof.read(victim)
        assert (caught.value.path, caught.value.offset) == (str(segment), offset)
        with pytest.raises(CorruptionError) as caught:
            aof.read_range(1, 100)
        assert (caught.value.path, caught.value.offset) == (str(segment), offset)
        assert str(segment) in str(caught.value)
        assert_intact(aof, victim + 1, 150)


@pytest.mark.parametrize("written", ["synced_each", "one_batch"])
@pytest.mark.parametrize("spot", sorted(SEALED_SPOTS))
def test_flipped_bit_in_sealed_segment_rescan_is_corruption(
    tmp_path: Path, spot: str, written: str
) -> None:
    # Invariant 2, FORMAT 4.3: "A scan of a sealed segment that ends before the index its
    # successor starts at is always CorruptionError." The sidecar is removed so open
    # rescans the segment; it must not cut the log there and drop later segments.
    with open_aof(tmp_path) as aof:
        if written == "synced_each":
            append_range(aof, 1, 150, sync_each=True)
        else:
            batch(aof, 1, 150)
        aof.sync()
    segment = segment_files(tmp_path)[0]
    segment.with_suffix(".idx").unlink()
    victim = 7
    offset, _ = frame_offsets(segment)[victim]
    flip_bit(segment, SEALED_SPOTS[spot](offset), bit=3)
    files_before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(CorruptionError) as caught:
        open_aof(tmp_path)
    assert (caught.value.path, caught.value.offset) == (str(segment), offset)
    assert sorted(p.name for p in tmp_path.iterdir()) == files_before  # nothing "repaired"


def test_flipped_bit_in_active_segment_after_truncate_after_is_corruption(
    tmp_path: Path,
) -> None:
    # Invariant 2 / R7: records 1..40 were each durable before the next was written; the
    # store was then truncated (an epoch bump) and closed without further writes. A bad
    # record 5 is corruption of durable data, not a torn tail to cut (which would drop
    # the durable records 6..40).
    build(tmp_path, 50, sync_each=True)
    with open_aof(tmp_path) as aof:
        aof.truncate_after(40)
    segment = segment_files(tmp_path)[-1]
    offset, _ = frame_offsets(segment)[5]
    flip_bit(segment, offset + 24 + H + 1)
    with pytest.raises(CorruptionError) as caught:
        open_aof(tmp_path)
    assert (caught.value.path, caught.value.offset) == (str(segment), offset)


def test_flipped_bit_in_active_segment_after_torn_cut_session_is_corruption(
    tmp_path: Path,
) -> None:
    # Invariant 2 / R7: a session that only cut a torn tail (an epoch bump, no writes)
    # must not make older proof of durability worthless.
    build(tmp_path, 30, sync_each=True)
    segment = segment_files(tmp_path)[-1]
    offset_29, _ = frame_offsets(segment)[29]
    flip_bit(segment, offset_29 + 30)  # torn tail at 29
    with open_aof(tmp_path) as aof:
        assert aof.recovery.torn_cut_at_index == 29
    offset, _ = frame_offsets(segment)[5]
    flip_bit(segment, offset + 24 + H + 1)
    with pytest.raises(CorruptionError) as caught:
        open_aof(tmp_path)
    assert (caught.value.path, caught.value.offset) == (str(segment), offset)


def test_corruption_error_leaves_files_untouched(tmp_path: Path) -> None:
    # Invariant 2: "never silently repaired": a failed open changes no file.
    build(tmp_path, 20, sync_each=True)
    segment = segment_files(tmp_path)[-1]
    offset, _ = frame_offsets(segment)[10]
    flip_bit(segment, offset + 24 + H + 1)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != "LOCK"}
    for _ in range(2):
        with pytest.raises(CorruptionError):
            open_aof(tmp_path)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != "LOCK"}
    assert after == before
    assert os.path.exists(segment)


def test_sidecar_left_by_truncate_after_is_gone_before_the_next_rollover(
    tmp_path: Path,
) -> None:
    # R1/R5: truncate_after into a sealed segment leaves its sidecar describing records
    # that no longer exist. If a successor appeared while that sidecar was still on
    # disk, a power loss before the flush rewrote it would make R1 trust it and the
    # store would not open. The rollover must remove it first.
    build(tmp_path, 150)
    segments = segment_files(tmp_path)
    assert len(segments) >= 3
    cut = int(segments[1].stem) + 3  # inside the second, sealed segment
    io = FaultyIO(real_sync=False)
    aof = open_aof(tmp_path, io)
    aof.truncate_after(cut)
    assert segments[1].with_suffix(".idx").exists()  # left alone: cheap truncation
    index = cut + 1
    while len(aof.segment_paths()) == 2:  # fill it with shorter records until it rolls over
        aof.append(payload_for(index)[:7], header_for(index))
        index += 1
    assert not segments[1].with_suffix(".idx").exists()
    io.crash_before("open", ".idx")  # power goes before the flush writes the new sidecar
    with suppress(SegstoreError):
        aof.sync()
    with suppress(SegstoreError):
        aof.close()
    with open_aof(tmp_path) as reopened:
        assert reopened.last_index >= index - 2  # the sealed segment was synced at rollover
        assert_intact(reopened, 1, cut + 1)
        assert [bytes(v) for v in reopened.read_range(cut + 1, index - 1)] == [
            payload_for(i)[:7] for i in range(cut + 1, index - 1)
        ]

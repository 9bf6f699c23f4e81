"""InMemoryLogStore against the LogStore conformance suite, plus LogEntry and pack units."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segstore.errors import (
    CorruptionError,
    FormatVersionError,
    InvalidArgumentError,
    SegstoreError,
)
from segstore.raft import (
    DUMMY_ENTRY,
    ClusterConfig,
    InMemoryLogStore,
    LogEntry,
    LogStore,
    LogValType,
    ServerConfig,
    ServerState,
    Snapshot,
)
from segstore.raft.pack import (
    PACK_HEADER_BYTES,
    PACK_MAGIC,
    PACK_TRAILER_BYTES,
    PACK_VERSION,
    crc32c,
    decode_pack,
    encode_pack,
)
from segstore.testing.conformance import LogStoreConformance, make_entry


class TestInMemoryLogStoreConformance(LogStoreConformance):
    """The reference store passes the suite every LogStore must pass."""

    def make_store(self, tmp_path: Path) -> LogStore:
        """A fresh in-memory store (it keeps nothing in ``tmp_path``)."""
        return InMemoryLogStore()


# -- InMemoryLogStore specifics --------------------------------------------------------


def test_memory_store_durable_index_tracks_last_index() -> None:
    """Memory is durable at once: last_durable_index is next_slot - 1, even down after
    write_at (the truncated entries no longer exist)."""
    store = InMemoryLogStore()
    for seed in range(1, 6):
        store.append(make_entry(seed))
    assert store.last_durable_index() == 5
    store.write_at(2, make_entry(20))
    assert store.last_durable_index() == 2
    store.compact(9)
    assert store.last_durable_index() == 9


def test_memory_store_empty_last_entry_is_dummy() -> None:
    """The dummy last entry is the module constant: term 0, empty value, app_log."""
    store = InMemoryLogStore()
    assert store.last_entry() is DUMMY_ENTRY
    assert LogEntry(term=0, value=b"", val_type=LogValType.app_log) == DUMMY_ENTRY


def test_memory_store_compact_async_callback_runs_before_return() -> None:
    """The in-memory store (LogStore's default compact_async) calls back synchronously."""
    store = InMemoryLogStore()
    store.append(make_entry(1))
    seen: list[tuple[bool, BaseException | None, int]] = []
    store.compact_async(1, lambda ok, error: seen.append((ok, error, 0)))
    assert seen == [(True, None, 0)]


# -- LogEntry ------------------------------------------------------------------------


def test_log_val_type_values_are_nuraft_bytes() -> None:
    """The enum values are NuRaft's log_val_type values verbatim."""
    assert {t.name: t.value for t in LogValType} == {
        "app_log": 1,
        "conf": 2,
        "cluster_server": 3,
        "log_pack": 4,
        "snp_sync_req": 5,
        "custom": 231,
    }


def test_log_entry_defaults_and_normalization() -> None:
    """Defaults match NuRaft (app_log, timestamp 0); bytes-likes are copied to bytes."""
    buffer = bytearray(b"abc")
    entry = LogEntry(term=3, value=buffer, val_type=2)  # type: ignore[arg-type]
    buffer[0] = ord("z")
    assert entry.value == b"abc"
    assert type(entry.value) is bytes
    assert entry.val_type is LogValType.conf
    assert LogEntry(term=1, value=memoryview(b"xy")).value == b"xy"  # type: ignore[arg-type]
    assert LogEntry(term=1, value=b"").timestamp_us == 0
    assert LogEntry(term=1, value=b"").val_type is LogValType.app_log


@pytest.mark.parametrize(
    "kwargs",
    [
        {"term": -1, "value": b""},
        {"term": 2**64, "value": b""},
        {"term": 1.0, "value": b""},
        {"term": True, "value": b""},
        {"term": "1", "value": b""},
        {"term": 1, "value": "text"},
        {"term": 1, "value": None},
        {"term": 1, "value": [1, 2]},
        {"term": 1, "value": b"", "val_type": 0},
        {"term": 1, "value": b"", "val_type": 6},
        {"term": 1, "value": b"", "val_type": "conf"},
        {"term": 1, "value": b"", "val_type": True},
        {"term": 1, "value": b"", "timestamp_us": -5},
        {"term": 1, "value": b"", "timestamp_us": 2**64},
    ],
)
def test_log_entry_rejects_bad_fields(kwargs: dict[str, object]) -> None:
    """Bad types and out-of-range numbers raise InvalidArgumentError (also a ValueError)."""
    with pytest.raises(InvalidArgumentError) as raised:
        LogEntry(**kwargs)  # type: ignore[arg-type]
    assert isinstance(raised.value, ValueError)
    assert isinstance(raised.value, SegstoreError)


def test_log_entry_is_frozen() -> None:
    """Entries are values: no field can change after construction."""
    entry = LogEntry(term=1, value=b"v")
    with pytest.raises(AttributeError):
        entry.term = 2  # type: ignore[misc]


# -- contracts' value types ----------------------------------------------------------------


def test_contract_values_validate() -> None:
    """ServerState, ServerConfig, ClusterConfig and Snapshot refuse bad fields."""
    assert ServerState() == ServerState(term=0, voted_for=-1, election_timer_allowed=True)
    with pytest.raises(InvalidArgumentError):
        ServerState(term=-1)
    with pytest.raises(InvalidArgumentError):
        ServerConfig(id=0, endpoint="h:1")
    with pytest.raises(InvalidArgumentError):
        ServerConfig(id=1, endpoint="h:1", aux="a\x00b")
    one, two = ServerConfig(id=1, endpoint="h:1"), ServerConfig(id=2, endpoint="h:2")
    config = ClusterConfig(log_idx=4, servers=[one, two])  # type: ignore[arg-type]
    assert config.servers == (one, two)
    assert config.get_server(2) is two
    assert config.get_server(3) is None
    with pytest.raises(InvalidArgumentError):
        ClusterConfig(servers=(one, one))
    with pytest.raises(InvalidArgumentError):
        Snapshot(last_log_idx=-1, last_log_term=1, last_config=config)
    assert Snapshot(last_log_idx=9, last_log_term=2, last_config=config).size == 0


# -- the pack format ---------------------------------------------------------------------

_entries = st.lists(
    st.builds(
        LogEntry,
        term=st.integers(min_value=0, max_value=2**64 - 1),
        value=st.binary(max_size=300),
        val_type=st.sampled_from(list(LogValType)),
        timestamp_us=st.integers(min_value=0, max_value=2**64 - 1),
    ),
    max_size=20,
)


@given(_entries)
@settings(max_examples=200, deadline=None)
def test_pack_round_trip(entries: list[LogEntry]) -> None:
    """decode_pack(encode_pack(x)) == x for any entries."""
    packed = encode_pack(entries)
    assert decode_pack(packed) == entries
    assert decode_pack(bytearray(packed)) == entries
    assert decode_pack(memoryview(packed)) == entries


@given(_entries.filter(bool), st.data())
@settings(max_examples=200, deadline=None)
def test_pack_any_flipped_byte_is_corruption(entries: list[LogEntry], data: st.DataObject) -> None:
    """Flipping any bit of any byte raises CorruptionError, never a wrong decode."""
    packed = bytearray(encode_pack(entries))
    position = data.draw(st.integers(min_value=0, max_value=len(packed) - 1))
    bit = data.draw(st.integers(min_value=0, max_value=7))
    packed[position] ^= 1 << bit
    with pytest.raises(CorruptionError):
        decode_pack(bytes(packed))


@given(_entries, st.data())
@settings(max_examples=100, deadline=None)
def test_pack_truncated_is_corruption(entries: list[LogEntry], data: st.DataObject) -> None:
    """Any proper prefix of a pack raises CorruptionError."""
    packed = encode_pack(entries)
    cut = data.draw(st.integers(min_value=0, max_value=len(packed) - 1))
    with pytest.raises(CorruptionError):
        decode_pack(packed[:cut])


def test_pack_layout_is_pinned() -> None:
    """The bytes of a one-entry pack, field by field (module docstring table)."""
    entry = LogEntry(term=0x0102, value=b"hi", val_type=LogValType.conf, timestamp_us=7)
    packed = encode_pack([entry])
    body = PACK_MAGIC + struct.pack("<II", PACK_VERSION, 1) + struct.pack("<QBQI", 0x0102, 2, 7, 2)
    body += b"hi"
    assert packed == body + struct.pack("<I", crc32c(body))
    assert len(encode_pack([])) == PACK_HEADER_BYTES + PACK_TRAILER_BYTES


def test_crc32c_check_value() -> None:
    """The CRC is Castagnoli (docs/FORMAT.md check value), not zlib's CRC-32."""
    assert crc32c(b"123456789") == 0xE3069283


def _with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", crc32c(body))


def test_pack_unknown_version_is_format_error() -> None:
    """An intact pack of another version raises FormatVersionError."""
    packed = _with_crc(PACK_MAGIC + struct.pack("<II", PACK_VERSION + 1, 0))
    with pytest.raises(FormatVersionError):
        decode_pack(packed)


def test_pack_structural_errors_with_valid_crc() -> None:
    """A writer bug under a valid CRC is still caught: counts, lengths, types, leftovers."""
    header = PACK_MAGIC + struct.pack("<II", PACK_VERSION, 1)
    cases = [
        _with_crc(PACK_MAGIC + struct.pack("<II", PACK_VERSION, 2**32 - 1)),  # huge count
        _with_crc(header + struct.pack("<QBQI", 1, 1, 0, 50) + b"short"),  # value past end
        _with_crc(header + struct.pack("<QBQI", 1, 99, 0, 0)),  # unknown val_type
        _with_crc(header + struct.pack("<QBQI", 1, 1, 0, 0) + b"extra"),  # leftovers
        _with_crc(b"NOTAPACK" + struct.pack("<II", PACK_VERSION, 0)),  # wrong magic
    ]
    for packed in cases:
        with pytest.raises(CorruptionError):
            decode_pack(packed)


def test_pack_rejects_bad_arguments() -> None:
    """Non-bytes input to decode_pack and non-entries to encode_pack are argument errors."""
    with pytest.raises(InvalidArgumentError):
        decode_pack("text")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        encode_pack([b"x"])  # type: ignore[list-item]
    with pytest.raises(InvalidArgumentError):
        encode_pack(b"x")  # type: ignore[arg-type]

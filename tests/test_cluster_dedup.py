"""Exactly-once request ids (issue #5, section 2): DedupStateMachine in isolation."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

from segstore.cluster import (
    DedupStateMachine,
    Node,
    RecordingStateMachine,
    RequestResult,
    decode_request,
    encode_request,
)
from segstore.errors import InvalidArgumentError

CLIENT = b"c" * 16
OTHER = b"o" * 16


def _sm() -> tuple[DedupStateMachine, RecordingStateMachine]:
    inner = RecordingStateMachine()
    return DedupStateMachine(inner), inner


def test_a_retried_request_applies_once_and_returns_the_first_result() -> None:
    sm, inner = _sm()
    first = sm.apply(1, encode_request(CLIENT, 7, 7, b"x"))
    again = sm.apply(2, encode_request(CLIENT, 7, 7, b"x"))
    assert first == RequestResult(CLIENT, 7, 1, False)
    assert again == RequestResult(CLIENT, 7, 1, True)
    assert inner.payloads == [b"x"]
    # Another client's seq 7 is another request.
    assert sm.apply(3, encode_request(OTHER, 7, 7, b"y")).duplicate is False
    assert inner.payloads == [b"x", b"y"]


def test_floor_forgets_resolved_results_and_drops_stale_copies() -> None:
    sm, inner = _sm()
    for seq in (1, 2, 3):
        sm.apply(seq, encode_request(CLIENT, seq, 1, b"p%d" % seq))
    sm.apply(4, encode_request(CLIENT, 4, 3, b"p4"))  # 1 and 2 resolved
    assert sorted(sm.clients[CLIENT][1]) == [3, 4]
    stale = sm.apply(5, encode_request(CLIENT, 2, 3, b"p2"))
    assert stale.duplicate and stale.result is None
    assert inner.payloads == [b"p1", b"p2", b"p3", b"p4"]


def test_snapshot_keeps_the_dedup_table() -> None:
    sm, _ = _sm()
    sm.apply(1, encode_request(CLIENT, 5, 5, b"a"))
    restored, inner = _sm()
    restored.restore(sm.snapshot())
    assert inner.payloads == [b"a"]
    assert restored.apply(2, encode_request(CLIENT, 5, 5, b"a")).duplicate
    assert inner.payloads == [b"a"]


def test_request_header_round_trip_and_refusal() -> None:
    data = encode_request(CLIENT, 9, 3, b"body")
    assert decode_request(data) == (CLIENT, 9, 3, b"body")
    with pytest.raises(InvalidArgumentError):
        decode_request(b"short")
    with pytest.raises(InvalidArgumentError):
        decode_request(b"XXXX" + data[4:])


def test_recording_snapshot_is_the_length_prefixed_history_across_restore() -> None:
    first = RecordingStateMachine()
    for payload in (b"a", b"", b"ccc"):
        first.apply(1, payload)
    blob = first.snapshot()
    assert blob == b"\x01\x00\x00\x00a" + b"\x00\x00\x00\x00" + b"\x03\x00\x00\x00ccc"
    second = RecordingStateMachine()
    second.restore(blob)
    second.apply(4, b"dd")
    assert second.payloads == [b"a", b"", b"ccc", b"dd"]
    assert second.snapshot() == blob + b"\x02\x00\x00\x00dd"
    first.apply(4, b"dd")
    assert first.digest() == second.digest()


def test_a_nodes_floor_is_its_least_pending_seq(tmp_path: Path) -> None:
    node = Node(1, tmp_path, "127.0.0.1:7000", [], 4, lambda pid: RecordingStateMachine())
    pending = cast(dict[int, Any], node._pending)
    assert node._floor_locked(1) == 1  # nothing pending: the next seq
    for seq in (1, 2, 3, 4):
        pending[seq] = object()
    assert node._floor_locked(5) == 1
    del pending[2], pending[1]
    assert node._floor_locked(5) == 3
    del pending[4]
    assert node._floor_locked(6) == 3  # 3 still pending: the floor stays
    del pending[3]
    assert node._floor_locked(6) == 6

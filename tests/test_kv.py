"""``KeyValueStateMachine``: the demo's and tests' partition state machine."""

from __future__ import annotations

import pytest

from segstore.errors import CorruptionError, InvalidArgumentError
from segstore.testing.kv import KeyValueStateMachine


def test_snapshot_round_trip_and_apply_rules() -> None:
    sm = KeyValueStateMachine()
    assert sm.apply(1, b"a=1") is None
    assert sm.apply(2, b"a=2") == b"1"
    with pytest.raises(InvalidArgumentError):
        sm.apply(4, b"b=1")  # out of order
    with pytest.raises(InvalidArgumentError):
        sm.apply(3, b"no separator")
    copy = KeyValueStateMachine()
    copy.restore(sm.snapshot())
    assert (copy.data, copy.applies, copy.last_index) == ({b"a": b"2"}, 2, 2)


@pytest.mark.parametrize("cut", [1, 5, 10])
def test_a_damaged_snapshot_is_refused(cut: int) -> None:
    sm = KeyValueStateMachine()
    sm.apply(1, b"key=value")
    blob = sm.snapshot()
    with pytest.raises(CorruptionError):
        KeyValueStateMachine().restore(blob[:-cut])  # a length runs past the end
    with pytest.raises(CorruptionError):
        KeyValueStateMachine().restore(blob + b"\0" * cut)  # trailing bytes

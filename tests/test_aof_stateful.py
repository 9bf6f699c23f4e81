"""Hypothesis stateful test: :class:`segstore.aof.Aof` against an in-memory model.

The model is the list of retained ``(payload, header)`` records and the first index.
Rules append one record or a batch, sync, truncate either end (inside a segment, at a
boundary, past the tail, to empty), and close and reopen. After every step the
invariants compare first/last index, durable_index and every retained record and header
with the model. Segments are 8 KiB so they roll every few records.

Runs without the background flusher (``autosync=False``) so ``durable_index`` is
deterministic; test_aof_api.py covers autosync.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from segstore.aof import Aof

SEGMENT_BYTES = 8192
HEADER_DTYPE = np.dtype([("term", "<u4"), ("kind", "u1")])  # 5 bytes: odd on purpose

payloads = st.one_of(
    st.binary(max_size=64),
    st.binary(min_size=500, max_size=3000),  # a few of these fill a segment
)
headers = st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 255))


class AofMachine(RuleBasedStateMachine):
    """Drives one Aof and a list model side by side."""

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="aof-stateful-"))
        self.path = self.directory / "aof"
        self.records: list[tuple[bytes, tuple[int, int]]] = []
        self.first = 1
        self.aof: Aof | None = None

    @initialize()
    def open_store(self) -> None:
        self.aof = self._open()

    def _open(self) -> Aof:
        return Aof.open(
            self.path, header_dtype=HEADER_DTYPE, segment_bytes=SEGMENT_BYTES, autosync=False
        )

    @property
    def last(self) -> int:
        return self.first + len(self.records) - 1

    # -- rules -------------------------------------------------------------------------

    @rule(payload=payloads, header=headers)
    def append(self, payload: bytes, header: tuple[int, int]) -> None:
        assert self.aof is not None
        assert self.aof.append(payload, header) == self.last + 1
        self.records.append((payload, header))

    @rule(batch=st.lists(st.tuples(payloads, headers), min_size=1, max_size=12))
    def append_batch(self, batch: list[tuple[bytes, tuple[int, int]]]) -> None:
        assert self.aof is not None
        table = np.array([h for _, h in batch], HEADER_DTYPE)
        got = self.aof.append_batch([p for p, _ in batch], table)
        self.records.extend(batch)
        assert got == self.last

    @rule()
    def sync(self) -> None:
        assert self.aof is not None
        assert self.aof.sync() == self.last
        assert self.aof.durable_index == self.last

    @rule(data=st.data())
    def truncate_before(self, data: st.DataObject) -> None:
        assert self.aof is not None
        # from below first_index (a no-op) to well past the tail (empties the store)
        index = data.draw(st.integers(max(1, self.first - 2), self.last + 6), label="index")
        self.aof.truncate_before(index)
        if index > self.first:
            drop = min(index - self.first, len(self.records))
            self.records = self.records[drop:]
            self.first = index
        assert self.aof.first_index == self.first

    @rule(data=st.data())
    def truncate_after(self, data: st.DataObject) -> None:
        assert self.aof is not None
        index = data.draw(st.integers(self.first - 1, self.last), label="index")
        self.aof.truncate_after(index)
        del self.records[index - self.first + 1 :]
        assert self.aof.last_index == self.last
        assert self.aof.durable_index <= self.last

    @rule()
    def truncate_at_segment_boundary(self) -> None:
        """truncate_after the last record of a sealed segment (a boundary case)."""
        assert self.aof is not None
        starts = [int(Path(p).name.split(".")[0]) for p in self.aof.segment_paths()]
        boundaries = [s - 1 for s in starts[1:] if self.first - 1 <= s - 1 <= self.last]
        if boundaries:
            self.aof.truncate_after(boundaries[-1])
            del self.records[boundaries[-1] - self.first + 1 :]

    @rule()
    def reopen(self) -> None:
        assert self.aof is not None
        self.aof.close()
        self.aof = self._open()
        assert self.aof.durable_index == self.last  # close synced everything

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def indices_match(self) -> None:
        if self.aof is None:
            return
        assert self.aof.first_index == self.first
        assert self.aof.last_index == self.last
        assert len(self.aof) == len(self.records)
        assert self.aof.durable_index <= self.aof.last_index

    @invariant()
    def records_match(self) -> None:
        if self.aof is None:
            return
        got = [bytes(v) for v in self.aof.read_range(self.first, self.last + 1)]
        assert got == [p for p, _ in self.records]
        assert self.aof.headers(self.first, self.last + 1).tolist() == [h for _, h in self.records]
        if self.records:
            assert bytes(self.aof.read(self.last)) == self.records[-1][0]
            assert self.aof.header(self.first).tolist() == self.records[0][1]

    def teardown(self) -> None:
        if self.aof is not None:
            self.aof.close()
        shutil.rmtree(self.directory, ignore_errors=True)


AofMachine.TestCase.settings = settings(
    max_examples=50,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
test_aof_matches_model = AofMachine.TestCase

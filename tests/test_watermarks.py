"""``segstore.watermarks`` and ``Pipeline.watermarks()``: invariant 6, truncation keeps
what anyone needs (issue #4, section 4, "Property tests ... of the watermark
arithmetic").

The property test drives a small Pipeline with random submits, replica
acknowledgements and checkpoints, and after each step recomputes every watermark from a
brute-force model of which entries are partition-durable (routed and checkpointed in
their partition logs), applied and checkpointed, and quorum-acknowledged (by counting
the replicas whose ack covers each raft index under the rule). To make "which entries
are partition-durable" a function of the steps alone, the store's background router is
held off (``ROUTE_INTERVAL_S`` patched), so partition logs change only in
``sync_partitions`` and ``Pipeline.checkpoint``, and the pipeline's own periodic
checkpoint never comes due.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pipeline_crash_writer import payload_for

import segstore.raft.segmented_store as segmented_store_module
from segstore.pipeline import Pipeline
from segstore.quorum import All, Custom, Majority, QuorumRule, Threshold
from segstore.testing.kv import KeyValueStateMachine
from segstore.watermarks import PartitionWatermarks, combine

WAIT = 30.0  # seconds; a bound against hangs only
PARTITIONS = 3
MEMBERS = ("local", "r1", "r2")

# -- combine ---------------------------------------------------------------------------------


def test_combine_takes_the_least_term_and_names_its_partitions() -> None:
    marks = combine(
        durable_index=50,
        commit_index=48,
        log_first_index=3,
        global_terms=[49, 45],
        partition_terms={0: [30, None, 41], 1: [None, None, None], 2: [12, 30], 3: [12]},
        indices={0: (1, 2, 3, 4), 1: (5, 6, 7, 8)},
    )
    assert marks.required_raft_index == 12
    assert marks.holders == (2, 3)
    assert (marks.durable_index, marks.commit_index, marks.log_first_index) == (50, 48, 3)
    assert marks.partitions[0] == PartitionWatermarks(0, 1, 2, 3, 4, 30)
    assert marks.partitions[1] == PartitionWatermarks(1, 5, 6, 7, 8, None)
    assert marks.partitions[2] == PartitionWatermarks(2, 0, 0, 0, 0, 12)
    assert list(marks.partitions) == [0, 1, 2, 3]


def test_combine_with_a_global_term_lowest_has_no_holders() -> None:
    marks = combine(
        durable_index=9,
        commit_index=9,
        log_first_index=1,
        global_terms=[4, 10],
        partition_terms={0: [5], 1: [None]},
        indices={},
    )
    assert marks.required_raft_index == 4
    assert marks.holders == ()


def test_combine_ties_between_a_global_term_and_a_partition_name_the_partition() -> None:
    marks = combine(
        durable_index=9,
        commit_index=9,
        log_first_index=1,
        global_terms=[6],
        partition_terms={0: [6], 1: [7]},
        indices={},
    )
    assert marks.required_raft_index == 6 and marks.holders == (0,)


def test_combine_with_nothing_needed_is_past_the_commit_index() -> None:
    marks = combine(
        durable_index=9,
        commit_index=7,
        log_first_index=8,
        global_terms=[],
        partition_terms={0: [None, None]},
        indices={0: (0, 0, 0, 0)},
    )
    assert marks.required_raft_index == 8
    assert marks.holders == ()
    assert marks.partitions[0].required_raft_index is None


@given(
    st.lists(st.integers(1, 60), max_size=4),
    st.dictionaries(
        st.integers(0, 5), st.lists(st.one_of(st.none(), st.integers(1, 60)), max_size=4)
    ),
    st.integers(0, 60),
)
def test_combine_matches_a_brute_force_minimum(
    global_terms: list[int], partition_terms: dict[int, list[int | None]], commit: int
) -> None:
    marks = combine(
        durable_index=commit,
        commit_index=commit,
        log_first_index=1,
        global_terms=global_terms,
        partition_terms=partition_terms,
        indices={},
    )
    needs = {
        pid: min((t for t in terms if t is not None), default=None)
        for pid, terms in partition_terms.items()
    }
    everything = global_terms + [n for n in needs.values() if n is not None]
    required = min(everything) if everything else commit + 1
    assert marks.required_raft_index == required
    assert marks.holders == tuple(sorted(pid for pid, n in needs.items() if n == required))
    assert {pid: p.required_raft_index for pid, p in marks.partitions.items()} == needs


# -- the pipeline's watermarks against a brute-force model ------------------------------------


def holds(rule: QuorumRule, acked: frozenset[str]) -> bool:
    """Whether ``acked`` is a quorum of MEMBERS under ``rule``, by the rule's words."""
    if not acked:
        return False
    if isinstance(rule, Majority):
        return len(acked) > len(MEMBERS) / 2
    if isinstance(rule, Threshold):
        return len(acked) >= rule.count
    if isinstance(rule, All):
        return acked == frozenset(MEMBERS)
    assert isinstance(rule, Custom)
    return bool(rule.predicate(acked, frozenset(MEMBERS)))


class Model:
    """Which entries are partition-durable, applied-and-checkpointed and acknowledged."""

    def __init__(self, rule: QuorumRule) -> None:
        self.rule = rule
        self.entries: list[tuple[int, int]] = []  # raft - 1 -> (pid, partition index)
        self.synced = 0  # entries up to this raft index are partition-durable
        self.applied_checkpoint = 0  # ... applied and covered by an applied checkpoint
        self.floor = 0  # the applier's durable floor
        self.acks = {"r1": 0, "r2": 0}

    @property
    def durable(self) -> int:
        return len(self.entries)

    def quorum_raft(self) -> int:
        acks = {"local": self.durable, **self.acks}
        for raft in range(self.durable, 0, -1):
            if holds(self.rule, frozenset(m for m, a in acks.items() if a >= raft)):
                return raft
        return 0

    def rafts_of(self, pid: int) -> list[int]:
        return [raft for raft, (p, _) in enumerate(self.entries, 1) if p == pid]

    def expected(self) -> tuple[int, dict[int, int | None], dict[int, tuple[int, ...]]]:
        """(global required raft index, per-partition required, per-partition indices)."""
        quorum = self.quorum_raft()
        done = min(quorum, self.applied_checkpoint)
        required: dict[int, int | None] = {}
        indices: dict[int, tuple[int, ...]] = {}
        for pid in range(PARTITIONS):
            rafts = self.rafts_of(pid)
            required[pid] = next((r for r in rafts if r > done), None)
            indices[pid] = (
                sum(1 for r in rafts if r <= self.synced),
                len(rafts),
                sum(1 for r in rafts if r <= self.applied_checkpoint),
                sum(1 for r in rafts if r <= quorum),
            )
        terms = [self.synced + 1, self.floor + 1, self.durable + 1]
        terms += [r for r in required.values() if r is not None]
        return min(terms), required, indices


def settle(pipeline: Pipeline, durable: int) -> None:
    assert pipeline.wait_applied(durable, WAIT)
    deadline = time.monotonic() + WAIT
    while pipeline.acks.acks().get("local", 0) < durable:
        assert time.monotonic() < deadline, "the node never acknowledged its own entries"
        time.sleep(0.001)


def compare(pipeline: Pipeline, model: Model, where: str) -> None:
    marks = pipeline.watermarks()
    required, per_partition, indices = model.expected()
    assert marks.durable_index == model.durable, where
    assert marks.commit_index == model.durable, where
    got = {pid: p.required_raft_index for pid, p in marks.partitions.items()}
    assert got == per_partition, f"{where}: per-partition required raft indices"
    got_indices = {
        pid: (p.durable_index, p.applied_index, p.checkpointed_applied_index, p.quorum_index)
        for pid, p in marks.partitions.items()
    }
    assert got_indices == indices, f"{where}: partition indices"
    assert marks.required_raft_index == required, f"{where}: global required raft index"
    holders = tuple(pid for pid, r in per_partition.items() if r == required)
    assert marks.holders == holders, f"{where}: holders"
    first = pipeline.store.first_retained_index()
    assert first <= required, f"{where}: the log was truncated to {first}, past {required}"
    assert marks.log_first_index <= marks.required_raft_index, where
    if required <= model.durable:  # what is needed is still there, as written
        headers, values = pipeline.store.read_records(required, model.durable + 1)
        for raft, header in enumerate(headers, required):
            pid, index = model.entries[raft - 1]
            assert (int(header["partition_id"]), int(header["partition_index"])) == (pid, index)
        assert values[0][16:] == payload_for(*model.entries[required - 1])


RULES = st.sampled_from(
    [
        Majority(),
        Threshold(1),
        Threshold(2),
        All(),
        Custom(lambda acked, replicas: "r1" in acked),
        Custom(lambda acked, replicas: "local" in acked and len(acked) >= 2),
    ]
)
STEPS = st.lists(
    st.one_of(
        st.tuples(
            st.just("submit"), st.lists(st.integers(0, PARTITIONS - 1), min_size=1, max_size=6)
        ),
        st.tuples(st.just("ack"), st.sampled_from(["r1", "r2"]), st.integers(0, 100)),
        st.tuples(st.just("sync_partitions")),
        st.tuples(st.just("applier_checkpoint")),
        st.tuples(st.just("checkpoint")),
    ),
    min_size=1,
    max_size=14,
)


def run(rule: QuorumRule, steps: list[tuple], directory: Path) -> None:
    model = Model(rule)
    counts = [0] * PARTITIONS
    pipeline = Pipeline.open(
        directory,
        partitions=PARTITIONS,
        state_machine_factory=lambda pid: KeyValueStateMachine(),
        replicas=("r1", "r2"),
        quorum_rule=rule,
        checkpoint_interval_s=3600,
    )
    try:
        for number, step in enumerate(steps):
            kind = step[0]
            if kind == "submit":
                pids = step[1]
                payloads = []
                for pid in pids:
                    counts[pid] += 1
                    payloads.append(payload_for(pid, counts[pid]))
                    model.entries.append((pid, counts[pid]))
                assert pipeline.submit_many(pids, payloads) == model.durable
                assert pipeline.flush() == model.durable
                settle(pipeline, model.durable)
            elif kind == "ack":
                if model.durable:
                    index = max(1, model.durable * step[2] // 100)
                    pipeline.ack(step[1], index)
                    model.acks[step[1]] = max(model.acks[step[1]], index)
            elif kind == "sync_partitions":
                pipeline.store.sync_partitions()
                model.synced = model.durable
            elif kind == "applier_checkpoint":
                assert pipeline.applier.checkpoint() == model.durable
                model.applied_checkpoint = model.floor = model.durable
            else:
                pipeline.checkpoint()
                model.synced = model.applied_checkpoint = model.floor = model.durable
            compare(pipeline, model, f"after step {number} {step}")
    finally:
        pipeline.close()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(rule=RULES, steps=STEPS)
def test_watermarks_match_a_brute_force_model(rule: QuorumRule, steps: list[tuple]) -> None:
    with pytest.MonkeyPatch.context() as patch, tempfile.TemporaryDirectory() as tmp:
        patch.setattr(segmented_store_module, "ROUTE_INTERVAL_S", 3600.0)
        run(rule, steps, Path(tmp) / "store")


def test_a_fixed_sequence_through_every_kind_of_step(tmp_path: Path) -> None:
    # One readable example of the property: r2 lags under All, so the first entry it
    # has not acknowledged holds the watermark through every checkpoint.
    steps: list[tuple] = [
        ("submit", [0, 1, 2, 0]),
        ("ack", "r1", 100),
        ("ack", "r2", 50),
        ("checkpoint",),
        ("submit", [2, 2, 1]),
        ("sync_partitions",),
        ("applier_checkpoint",),
        ("ack", "r2", 100),
        ("checkpoint",),
    ]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(segmented_store_module, "ROUTE_INTERVAL_S", 3600.0)
        run(All(), steps, tmp_path / "store")

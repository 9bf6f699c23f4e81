"""``segstore.quorum``: the quorum arithmetic against brute-force models (issue #4).

The brute-force model of a partition's quorum raft index tries every raft index r from
the highest ack down, counts the replicas with ack >= r and applies the rule. A
stateful test drives landings, acks, membership and rule changes, rollbacks and
truncations against a model that keeps every landed row and recomputes everything from
scratch after each step, including the exact sequence of advance callbacks.
Invariant 6 (truncation keeps what anyone needs): ``first_pending_raft_index``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from segstore.errors import InvalidArgumentError, SegstoreError
from segstore.quorum import AckTracker, All, Custom, Majority, QuorumRule, Threshold

REPLICA_POOL = ("r0", "r1", "r2", "r3", "r4", "r5")


# -- custom rules used by the properties (module level so they compare equal) ---------


def needs_r0_and_one_more(acked: frozenset[str], replicas: frozenset[str]) -> bool:
    return "r0" in acked and len(acked) >= min(2, len(replicas))


def even_count(acked: frozenset[str], replicas: frozenset[str]) -> bool:
    """Not monotone on purpose: the tracker evaluates such a rule literally."""
    return len(acked) % 2 == 0


def two_thirds(acked: frozenset[str], replicas: frozenset[str]) -> bool:
    return 3 * len(acked) >= 2 * len(replicas)


def holds(rule: QuorumRule, acked: frozenset[str], replicas: frozenset[str]) -> bool:
    """The model's reading of each rule, written independently of the tracker."""
    if isinstance(rule, Majority):
        return 2 * len(acked) > len(replicas)
    if isinstance(rule, Threshold):
        return len(acked) >= rule.count
    if isinstance(rule, All):
        return acked == replicas
    return bool(rule.predicate(acked, replicas))


def brute_quorum_raft_index(
    rule: QuorumRule, replicas: frozenset[str], acks: Mapping[str, int]
) -> int:
    top = max((acks.get(r, 0) for r in replicas), default=0)
    for r in range(top, 0, -1):
        if holds(rule, frozenset(x for x in replicas if acks.get(x, 0) >= r), replicas):
            return r
    return 0


def rules_for(replica_count: int) -> st.SearchStrategy[QuorumRule]:
    return st.one_of(
        st.just(Majority()),
        st.just(All()),
        st.integers(1, replica_count).map(Threshold),
        st.sampled_from([Custom(needs_r0_and_one_more), Custom(even_count), Custom(two_thirds)]),
    )


@st.composite
def replica_sets_and_rules(draw: st.DrawFn) -> tuple[frozenset[str], QuorumRule]:
    replicas = frozenset(draw(st.sets(st.sampled_from(REPLICA_POOL), min_size=1)))
    return replicas, draw(rules_for(len(replicas)))


# -- the arithmetic -----------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(
    config=replica_sets_and_rules(),
    acks=st.lists(st.tuples(st.sampled_from(REPLICA_POOL), st.integers(0, 40)), max_size=30),
)
def test_quorum_raft_index_matches_brute_force(
    config: tuple[frozenset[str], QuorumRule], acks: list[tuple[str, int]]
) -> None:
    replicas, quorum_rule = config
    tracker = AckTracker(replicas, quorum_rule)
    model: dict[str, int] = {}
    for replica, raft_index in acks:
        raised = tracker.ack(replica, raft_index)
        assert raised == (raft_index > model.get(replica, 0))  # lower acks are ignored
        model[replica] = max(model.get(replica, 0), raft_index)
        assert tracker.quorum_raft_index(7) == brute_quorum_raft_index(quorum_rule, replicas, model)
    assert tracker.acks() == {r: a for r, a in model.items() if a > 0}


@settings(max_examples=200, deadline=None)
@given(
    config=replica_sets_and_rules(),
    acks=st.dictionaries(st.sampled_from(REPLICA_POOL), st.integers(0, 30)),
    raft_gaps=st.lists(st.integers(1, 4), min_size=1, max_size=20),
)
def test_quorum_index_is_the_last_entry_at_or_below_the_quorum_raft_index(
    config: tuple[frozenset[str], QuorumRule], acks: dict[str, int], raft_gaps: list[int]
) -> None:
    replicas, quorum_rule = config
    raft_indices = np.cumsum(raft_gaps)
    tracker = AckTracker(replicas, quorum_rule)
    tracker.record_landed(3, np.arange(1, len(raft_indices) + 1), raft_indices)
    for replica, raft_index in acks.items():
        tracker.ack(replica, raft_index)
    quorum_raft = brute_quorum_raft_index(quorum_rule, replicas, acks)
    expected = sum(1 for r in raft_indices if r <= quorum_raft)
    if isinstance(quorum_rule, Custom) and quorum_rule.predicate is even_count:
        # Not monotone: an earlier ack may have published more than the final verdict.
        assert tracker.quorum_index(3) >= expected
    else:
        assert tracker.quorum_index(3) == expected
    assert tracker.quorum_index(3) <= tracker.landed_index(3)


# -- the stateful model -------------------------------------------------------------------


class Model:
    """Everything recomputed from scratch: rows are never forgotten here."""

    def __init__(self, replicas: frozenset[str], quorum_rule: QuorumRule) -> None:
        self.default_replicas = replicas
        self.default_rule = quorum_rule
        self.partition_replicas: dict[int, frozenset[str]] = {}
        self.partition_rules: dict[int, QuorumRule] = {}
        self.acks: dict[str, int] = {}
        self.rows: dict[int, list[tuple[int, int]]] = {}  # pid -> [(partition idx, raft)]
        self.first_index: dict[int, int] = {}
        self.published: dict[int, int] = {}

    def replicas_of(self, pid: int) -> frozenset[str]:
        return self.partition_replicas.get(pid, self.default_replicas)

    def rule_of(self, pid: int) -> QuorumRule:
        return self.partition_rules.get(pid, self.default_rule)

    def verdict(self, pid: int) -> int:
        return brute_quorum_raft_index(self.rule_of(pid), self.replicas_of(pid), self.acks)

    def publish(self) -> list[tuple[int, int]]:
        """Advance every partition; the advances in the order the tracker reports them."""
        events = []
        for pid in sorted(self.rows):
            verdict = self.verdict(pid)
            visible = [i for i, r in self.rows[pid] if r <= verdict]
            candidate = max(visible, default=0)
            if candidate > self.published[pid]:
                self.published[pid] = candidate
                events.append((pid, candidate))
        return events

    def published_raft_max(self) -> int:
        return max(
            (r for pid, rows in self.rows.items() for i, r in rows if i <= self.published[pid]),
            default=0,
        )


def config_fits(
    default_replicas: frozenset[str],
    default_rule: QuorumRule,
    partition_replicas: Mapping[int, frozenset[str]],
    partition_rules: Mapping[int, QuorumRule],
) -> bool:
    """No partition (nor the defaults) has a threshold above its replica count."""
    for pid in [-1, *partition_replicas, *partition_rules]:
        quorum_rule = partition_rules.get(pid, default_rule)
        replicas = partition_replicas.get(pid, default_replicas)
        if isinstance(quorum_rule, Threshold) and quorum_rule.count > len(replicas):
            return False
    return True


class QuorumMachine(RuleBasedStateMachine):
    """Random landings, acks, reconfigurations, rollbacks and truncations."""

    PARTITIONS = 4

    def __init__(self) -> None:
        super().__init__()
        replicas = frozenset(REPLICA_POOL[:3])
        self.tracker = AckTracker(replicas, Majority())
        self.model = Model(replicas, Majority())
        self.events: list[tuple[int, int]] = []
        self.tracker.on_quorum_advance(lambda pid, index: self.events.append((pid, index)))
        self.expected_events: list[tuple[int, int]] = []
        self.next_raft = 1

    def _publish(self) -> None:
        self.expected_events += self.model.publish()

    @rule(
        pid=st.integers(0, PARTITIONS - 1),
        count=st.integers(1, 5),
        gaps=st.lists(st.integers(1, 3), min_size=5, max_size=5),
        first=st.integers(1, 5),
        many=st.booleans(),
    )
    def land(self, pid: int, count: int, gaps: list[int], first: int, many: bool) -> None:
        rows = self.model.rows.setdefault(pid, [])
        if pid not in self.model.first_index:
            self.model.first_index[pid] = first
            self.model.published[pid] = first - 1
        start = rows[-1][0] + 1 if rows else self.model.first_index[pid]
        # After a rollback emptied it, a partition continues where its rows ended.
        start = max(start, self.model.published[pid] + 1)
        raft = []
        for gap in gaps[:count]:
            raft.append(self.next_raft + gap - 1)
            self.next_raft += gap
        indices = list(range(start, start + count))
        if many:
            self.tracker.record_landed_many([pid] * count, indices, raft)
        else:
            self.tracker.record_landed(pid, np.array(indices), np.array(raft, dtype=np.uint64))
        rows.extend(zip(indices, raft, strict=True))
        self._publish()

    @rule(
        landings=st.lists(
            st.tuples(st.integers(0, PARTITIONS - 1), st.integers(1, 2)), min_size=1, max_size=6
        )
    )
    def land_mixed_batch(self, landings: list[tuple[int, int]]) -> None:
        """One interleaved batch across partitions, as the router sees the log."""
        pids, indices, rafts = [], [], []
        next_of = {}
        for pid, gap in landings:
            rows = self.model.rows.setdefault(pid, [])
            if pid not in self.model.first_index:
                self.model.first_index[pid] = 1
                self.model.published[pid] = 0
            if pid not in next_of:
                next_of[pid] = max(
                    rows[-1][0] + 1 if rows else self.model.first_index[pid],
                    self.model.published[pid] + 1,
                )
            self.next_raft += gap
            pids.append(pid)
            indices.append(next_of[pid])
            rafts.append(self.next_raft - 1)
            rows.append((next_of[pid], self.next_raft - 1))
            next_of[pid] += 1
        self.tracker.record_landed_many(
            np.array(pids, dtype=np.uint32), np.array(indices), np.array(rafts)
        )
        self._publish()

    @rule(replica=st.sampled_from(REPLICA_POOL), delta=st.integers(-3, 6))
    def ack(self, replica: str, delta: int) -> None:
        raft_index = max(0, min(self.next_raft - 1, self.model.acks.get(replica, 0) + delta))
        self.tracker.ack(replica, raft_index)
        self.model.acks[replica] = max(self.model.acks.get(replica, 0), raft_index)
        self._publish()

    @rule(
        pid=st.one_of(st.none(), st.integers(0, PARTITIONS - 1)),
        replicas=st.sets(st.sampled_from(REPLICA_POOL), min_size=1),
    )
    def set_replicas(self, pid: int | None, replicas: set[str]) -> None:
        model = self.model
        default, overrides = model.default_replicas, dict(model.partition_replicas)
        if pid is None:
            default = frozenset(replicas)
        else:
            overrides[pid] = frozenset(replicas)
        if not config_fits(default, model.default_rule, overrides, model.partition_rules):
            with pytest.raises(InvalidArgumentError, match="Threshold"):
                self.tracker.set_replicas(pid, replicas)
            return
        self.tracker.set_replicas(pid, replicas)
        model.default_replicas, model.partition_replicas = default, overrides
        self._publish()

    @rule(
        pid=st.one_of(st.none(), st.integers(0, PARTITIONS - 1)),
        quorum_rule=rules_for(len(REPLICA_POOL)),
    )
    def set_rule(self, pid: int | None, quorum_rule: QuorumRule) -> None:
        if isinstance(quorum_rule, Custom) and quorum_rule.predicate is even_count:
            return  # not monotone: covered by the arithmetic properties
        model = self.model
        default, overrides = model.default_rule, dict(model.partition_rules)
        if pid is None:
            default = quorum_rule
        else:
            overrides[pid] = quorum_rule
        if not config_fits(model.default_replicas, default, model.partition_replicas, overrides):
            with pytest.raises(InvalidArgumentError, match="Threshold"):
                self.tracker.set_rule(pid, quorum_rule)
            return
        self.tracker.set_rule(pid, quorum_rule)
        model.default_rule, model.partition_rules = default, overrides
        self._publish()

    @rule(back=st.integers(0, 6))
    def rollback(self, back: int) -> None:
        raft_index = max(1, self.next_raft - back)
        if raft_index <= self.model.published_raft_max():
            before = (self.tracker.quorum_indices(), self.tracker.acks())
            with pytest.raises(InvalidArgumentError, match="quorum-visible"):
                self.tracker.rollback(raft_index)
            assert (self.tracker.quorum_indices(), self.tracker.acks()) == before
            return
        expected_removed = 0
        for pid, rows in self.model.rows.items():
            self.model.rows[pid] = [(i, r) for i, r in rows if r < raft_index]
            expected_removed += len(rows) - len(self.model.rows[pid])
        removed = self.tracker.rollback(raft_index)
        assert removed == expected_removed
        self.model.acks = {r: min(a, raft_index - 1) for r, a in self.model.acks.items()}
        self.next_raft = raft_index
        self._publish()

    @rule(ahead=st.integers(0, 8))
    def truncate_before(self, ahead: int) -> None:
        raft_index = max(0, self.next_raft - 8 + ahead)
        self.tracker.truncate_before(raft_index)  # the model keeps every row

    @invariant()
    def matches_the_model(self) -> None:
        assert self.events == self.expected_events
        for pid in range(self.PARTITIONS):
            published = self.model.published.get(pid, 0)
            assert self.tracker.quorum_index(pid) == published
            assert self.tracker.quorum_raft_index(pid) == self.model.verdict(pid)
            rows = self.model.rows.get(pid, [])
            landed = rows[-1][0] if rows else self.model.published.get(pid, 0)
            assert self.tracker.landed_index(pid) == landed
            assert published <= landed  # never past what landed
            pending = [r for i, r in rows if i > published]
            assert self.tracker.first_pending_raft_index(pid) == (min(pending) if pending else None)

    @precondition(lambda self: bool(self.events))
    @invariant()
    def advances_are_monotonic(self) -> None:
        last: dict[int, int] = {}
        for pid, index in self.events:
            assert index > last.get(pid, 0)
            last[pid] = index


QuorumMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestQuorumMachine = QuorumMachine.TestCase


# -- landing and publishing -----------------------------------------------------------------


def tracker_with_events(
    replicas: tuple[str, ...] = ("a", "b", "c"), quorum_rule: QuorumRule | None = None
) -> tuple[AckTracker, list[tuple[int, int]]]:
    tracker = AckTracker(replicas, quorum_rule)
    events: list[tuple[int, int]] = []
    tracker.on_quorum_advance(lambda pid, index: events.append((pid, index)))
    return tracker, events


def test_callbacks_fire_once_per_advance_with_the_new_index_in_order() -> None:
    tracker, events = tracker_with_events()
    tracker.record_landed(0, [1, 2, 3], [10, 20, 30])
    tracker.record_landed(1, [1, 2], [15, 25])
    tracker.ack("a", 25)
    assert events == []  # one replica of three is no majority
    tracker.ack("b", 22)
    assert events == [(0, 2), (1, 1)]
    tracker.ack("b", 24)  # moves the verdict but no entry: no callback
    assert events == [(0, 2), (1, 1)]
    tracker.ack("c", 40)
    assert events == [(0, 2), (1, 1), (1, 2)]  # verdict 25: partition 0 stays at 2
    tracker.ack("b", 40)
    assert events == [(0, 2), (1, 1), (1, 2), (0, 3)]


def test_acks_before_landing_publish_when_the_entries_land() -> None:
    tracker, events = tracker_with_events()
    tracker.ack("a", 100)
    tracker.ack("b", 50)
    tracker.record_landed(4, [1, 2, 3], [40, 50, 60])
    assert events == [(4, 2)]
    assert tracker.quorum_index(4) == 2
    assert tracker.first_pending_raft_index(4) == 60


def test_the_first_landing_may_start_past_one_and_counts_what_is_below_as_visible() -> None:
    # After recovery the log starts above entries truncated away, which invariant 6
    # allows only once they were quorum-acknowledged.
    tracker, events = tracker_with_events()
    tracker.record_landed(2, [41, 42], [500, 501])
    assert tracker.quorum_index(2) == 40
    assert events == []
    with pytest.raises(InvalidArgumentError, match="expected 43"):
        tracker.record_landed(2, [44], [502])


def test_record_landed_many_equals_one_call_per_partition() -> None:
    pids = np.array([3, 1, 3, 0, 1, 3], dtype=np.uint32)
    indices = np.array([1, 1, 2, 1, 2, 3], dtype=np.uint64)
    rafts = np.arange(1, 7, dtype=np.int64)
    batched, batched_events = tracker_with_events()
    batched.ack("a", 5)
    batched.ack("b", 5)
    batched.record_landed_many(pids, indices, rafts)
    single, single_events = tracker_with_events()
    single.ack("a", 5)
    single.ack("b", 5)
    for pid in (0, 1, 3):
        mask = pids == pid
        single.record_landed(pid, indices[mask], rafts[mask])
    assert batched.quorum_indices() == single.quorum_indices() == {0: 1, 1: 2, 3: 2}
    assert batched_events == single_events == [(0, 1), (1, 2), (3, 2)]


def test_a_bad_row_anywhere_rejects_the_whole_mixed_batch() -> None:
    tracker = AckTracker(["a"])
    with pytest.raises(InvalidArgumentError, match="partition 1"):
        tracker.record_landed_many([0, 1, 1], [1, 1, 3], [1, 2, 3])
    assert tracker.quorum_indices() == {}
    assert tracker.landed_index(0) == 0


def test_landing_a_million_rows_is_vectorised() -> None:
    tracker = AckTracker(["a", "b", "c"])
    count = 1_000_000
    pids = np.arange(count, dtype=np.uint32) % 64
    rafts = np.arange(1, count + 1, dtype=np.uint64)
    indices = rafts.copy()
    indices[np.argsort(pids, kind="stable")] = np.concatenate(
        [np.arange(1, int((pids == p).sum()) + 1, dtype=np.uint64) for p in range(64)]
    )
    tracker.record_landed_many(pids, indices, rafts)
    tracker.ack("a", count // 2)
    tracker.ack("b", count)
    assert sum(tracker.quorum_indices().values()) == count // 2
    assert tracker.truncate_before(count) == count // 2


def test_truncate_before_keeps_rows_a_quorum_decision_still_needs() -> None:
    tracker = AckTracker(["a"])
    tracker.record_landed(0, [1, 2, 3, 4], [1, 2, 3, 4])
    tracker.ack("a", 2)
    assert tracker.truncate_before(100) == 2  # rows 3 and 4 are still pending
    assert tracker.first_pending_raft_index(0) == 3
    tracker.ack("a", 4)
    assert tracker.quorum_index(0) == 4
    assert tracker.truncate_before(100) == 2
    tracker.record_landed(0, [5], [9])
    assert tracker.landed_index(0) == 5


def test_rows_survive_buffer_growth_and_compaction_while_pending() -> None:
    # Buffers start at 64 rows, grow by doubling and compact after truncations: the
    # pending rows and the quorum arithmetic must come through every move intact.
    tracker = AckTracker(["a"])
    landed = 0
    for step in range(1, 60):
        rafts = np.arange(landed + 1, landed + 1 + step, dtype=np.uint64) * 3
        tracker.record_landed(0, np.arange(landed + 1, landed + 1 + step), rafts)
        landed += step
        acked_entry = landed - step // 2 - 1
        tracker.ack("a", acked_entry * 3 + 1)  # between entries: visible up to acked_entry
        assert tracker.quorum_index(0) == acked_entry
        assert tracker.first_pending_raft_index(0) == (acked_entry + 1) * 3
        tracker.truncate_before(max(0, 3 * (acked_entry - step % 5)))
    assert tracker.landed_index(0) == landed


# -- membership and rule changes ------------------------------------------------------------


def test_adding_a_replica_without_acks_lowers_the_verdict_but_not_the_quorum_index() -> None:
    tracker, events = tracker_with_events(("a", "b", "c"))
    tracker.record_landed(0, [1, 2, 3], [1, 2, 3])
    tracker.ack("a", 2)
    tracker.ack("b", 2)
    assert tracker.quorum_index(0) == 2
    # Four replicas need three: the verdict falls to 0, the published index stays.
    tracker.set_replicas(None, ["a", "b", "c", "d"])
    assert tracker.quorum_raft_index(0) == 0
    assert tracker.quorum_index(0) == 2
    tracker.ack("a", 3)
    tracker.ack("b", 3)
    assert tracker.quorum_index(0) == 2  # two of four is not a majority
    tracker.ack("d", 3)
    assert tracker.quorum_index(0) == 3
    assert events == [(0, 2), (0, 3)]


def test_removing_a_lagging_replica_advances_at_once() -> None:
    tracker, events = tracker_with_events(("a", "b", "c"), All())
    tracker.record_landed(0, [1, 2], [1, 2])
    tracker.ack("a", 2)
    tracker.ack("b", 2)
    assert events == []
    tracker.set_replicas(0, ["a", "b"])
    assert events == [(0, 2)]
    tracker.set_replicas(0, None)  # back to the default set: nothing moves back
    assert tracker.replicas(0) == frozenset({"a", "b", "c"})
    assert tracker.quorum_index(0) == 2


def test_acks_of_a_replica_outside_every_set_count_once_it_joins() -> None:
    tracker = AckTracker(["a", "b", "c"])
    tracker.record_landed(0, [1], [7])
    tracker.ack("d", 7)
    tracker.ack("a", 7)
    assert tracker.quorum_index(0) == 0
    tracker.set_replicas(None, ["a", "d", "c"])
    assert tracker.quorum_index(0) == 1


def test_per_partition_rules_and_replica_sets() -> None:
    tracker = AckTracker(
        ["a", "b", "c"],
        partition_replicas={1: ["x", "y"]},
        partition_rules={0: Threshold(1), 2: All()},
    )
    for pid in range(3):
        tracker.record_landed(pid, [1], [pid + 1])
    tracker.ack("a", 10)
    tracker.ack("x", 10)
    assert tracker.quorum_indices() == {0: 1, 1: 0, 2: 0}
    tracker.ack("y", 10)
    tracker.ack("b", 10)
    assert tracker.quorum_indices() == {0: 1, 1: 1, 2: 0}
    tracker.set_rule(2, None)  # back to the default majority
    assert tracker.quorum_indices() == {0: 1, 1: 1, 2: 1}
    assert tracker.rule(2) == Majority()


# -- rollback ------------------------------------------------------------------------------


def test_rollback_refuses_to_undo_a_published_quorum_and_changes_nothing() -> None:
    tracker = AckTracker(["a"])
    tracker.record_landed(0, [1, 2, 3], [10, 20, 30])
    tracker.ack("a", 20)
    assert tracker.quorum_index(0) == 2
    with pytest.raises(InvalidArgumentError, match="partition 0"):
        tracker.rollback(20)
    assert tracker.landed_index(0) == 3
    assert tracker.acks() == {"a": 20}


def test_rollback_cuts_rows_rewinds_indices_and_lowers_acks() -> None:
    tracker, events = tracker_with_events(("a", "b", "c"))
    tracker.record_landed(0, [1, 2, 3], [10, 20, 30])
    tracker.record_landed(1, [1, 2], [15, 25])
    tracker.ack("a", 30)
    tracker.ack("b", 12)
    assert tracker.rollback(21) == 2  # partition 0 entry 3, partition 1 entry 2
    assert tracker.acks() == {"a": 20, "b": 12}
    assert (tracker.landed_index(0), tracker.landed_index(1)) == (2, 1)
    with pytest.raises(InvalidArgumentError, match="expected 3"):
        tracker.record_landed(0, [4], [40])
    with pytest.raises(InvalidArgumentError, match="must increase"):
        tracker.record_landed(0, [3], [20])
    tracker.record_landed(0, [3], [21])  # the rewritten entry at the cut
    tracker.ack("b", 21)
    assert tracker.quorum_index(0) == 2  # a holds only up to 20 of the new log
    tracker.ack("a", 21)
    assert tracker.quorum_index(0) == 3
    assert events == [(0, 1), (0, 2), (1, 1), (0, 3)]  # b and a both hold raft 15


# -- callbacks and threads -------------------------------------------------------------------


def test_a_callback_may_call_the_tracker_and_its_advances_follow_in_order() -> None:
    tracker = AckTracker(["a"])
    events: list[tuple[int, int]] = []

    def on_advance(pid: int, index: int) -> None:
        events.append((pid, index))
        if pid == 0:
            tracker.record_landed(1, [index], [100 + index])  # lands below a's ack

    tracker.on_quorum_advance(on_advance)
    tracker.ack("a", 200)
    tracker.record_landed(0, [1], [5])
    assert events == [(0, 1), (1, 1)]


def test_a_raising_callback_does_not_starve_the_others() -> None:
    tracker = AckTracker(["a"])
    seen: list[tuple[int, int]] = []

    def broken(pid: int, index: int) -> None:
        raise RuntimeError("callback bug")

    tracker.on_quorum_advance(broken)
    tracker.on_quorum_advance(lambda pid, index: seen.append((pid, index)))
    tracker.record_landed(0, [1], [1])
    tracker.record_landed(1, [1], [2])
    with pytest.raises(RuntimeError, match="callback bug"):
        tracker.ack("a", 2)
    assert seen == [(0, 1), (1, 1)]
    assert tracker.quorum_indices() == {0: 1, 1: 1}


def test_concurrent_acks_and_landings_deliver_increasing_advances() -> None:
    tracker = AckTracker(["a", "b", "c"])
    partitions, per_partition = 8, 400
    events: dict[int, list[int]] = {pid: [] for pid in range(partitions)}
    tracker.on_quorum_advance(lambda pid, index: events[pid].append(index))

    def lander(pid: int) -> None:
        for index in range(1, per_partition + 1):
            tracker.record_landed(pid, [index], [index * partitions + pid])

    def acker(replica: str) -> None:
        for raft_index in range(0, per_partition * partitions + partitions + 1, 7):
            tracker.ack(replica, raft_index)
        tracker.ack(replica, per_partition * partitions + partitions)

    threads = [threading.Thread(target=lander, args=(p,)) for p in range(partitions)]
    threads += [threading.Thread(target=acker, args=(r,)) for r in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert tracker.quorum_indices() == dict.fromkeys(range(partitions), per_partition)
    for indices in events.values():
        assert indices == sorted(set(indices))
        assert indices[-1] == per_partition


# -- bad input -------------------------------------------------------------------------------


def shrink_below_threshold(tracker: AckTracker) -> None:
    tracker.set_rule(1, Threshold(3))
    tracker.set_replicas(1, ["a"])


def raft_going_back(tracker: AckTracker) -> None:
    tracker.record_landed(0, [1], [5])
    tracker.record_landed(0, [2], [4])


def custom_returning_int(tracker: AckTracker) -> None:
    tracker.ack("a", 1)
    tracker.record_landed(0, [1], [1])
    tracker.set_rule(None, Custom(lambda acked, replicas: 1))


BAD_CALLS: list[tuple[str, Callable[[AckTracker], object]]] = [
    ("unknown rule", lambda t: t.set_rule(None, "majority")),  # type: ignore[arg-type]
    ("threshold above replicas", lambda t: t.set_rule(0, Threshold(4))),
    ("threshold shrinks set", shrink_below_threshold),
    ("empty replica set", lambda t: t.set_replicas(None, [])),
    ("replicas as a str", lambda t: t.set_replicas(0, "abc")),
    ("replica id not str", lambda t: t.ack(3, 1)),  # type: ignore[arg-type]
    ("empty replica id", lambda t: t.ack("", 1)),
    ("negative ack", lambda t: t.ack("a", -1)),
    ("bool ack", lambda t: t.ack("a", True)),
    ("ack past u64", lambda t: t.ack("a", 2**64)),
    ("partition id too big", lambda t: t.quorum_index(2**32 - 1)),
    ("partition id not int", lambda t: t.quorum_index("0")),  # type: ignore[arg-type]
    ("index zero", lambda t: t.record_landed(0, [0], [1])),
    ("raft zero", lambda t: t.record_landed(0, [1], [0])),
    ("lengths differ", lambda t: t.record_landed(0, [1, 2], [1])),
    ("float rows", lambda t: t.record_landed(0, [1.0], [1.0])),
    ("2-D rows", lambda t: t.record_landed(0, [[1]], [[1]])),
    ("gap in indices", lambda t: t.record_landed(0, [1, 3], [1, 2])),
    ("raft not increasing", lambda t: t.record_landed(0, [1, 2], [5, 5])),
    ("raft going back", raft_going_back),
    ("many: negative pid", lambda t: t.record_landed_many([-1], [1], [1])),
    ("many: shapes", lambda t: t.record_landed_many([0, 0], [1], [1])),
    ("rollback to 0", lambda t: t.rollback(0)),
    ("callback not callable", lambda t: t.on_quorum_advance(5)),  # type: ignore[arg-type]
    ("default replicas removed", lambda t: t.set_replicas(None, None)),
    ("custom returns int", custom_returning_int),
]


@pytest.mark.parametrize("call", [c for _, c in BAD_CALLS], ids=[n for n, _ in BAD_CALLS])
def test_bad_input_raises_invalid_argument(call: Callable[[AckTracker], object]) -> None:
    tracker = AckTracker(["a", "b", "c"])
    with pytest.raises(InvalidArgumentError):
        call(tracker)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Threshold(0),
        lambda: Threshold(True),
        lambda: Custom(42),  # type: ignore[arg-type]
        lambda: AckTracker(["a"], Threshold(2)),
        lambda: AckTracker(["a", "b"], partition_rules={5: Threshold(3)}),
        lambda: AckTracker([]),
        lambda: AckTracker(["a"], partition_replicas={-1: ["a"]}),
    ],
)
def test_bad_construction_raises_invalid_argument(make: Callable[[], object]) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        make()
    assert isinstance(info.value, SegstoreError) and isinstance(info.value, ValueError)


def test_a_custom_rule_that_raises_leaves_the_state_unchanged() -> None:
    def explode(acked: frozenset[str], replicas: frozenset[str]) -> bool:
        if "b" in acked or "c" in replicas:
            raise RuntimeError("rule bug")
        return True

    tracker = AckTracker(["a", "b"], Custom(explode))
    tracker.record_landed(0, [1, 2], [1, 2])
    tracker.ack("a", 1)
    assert tracker.quorum_index(0) == 1
    with pytest.raises(RuntimeError, match="rule bug"):
        tracker.ack("b", 2)
    assert tracker.acks() == {"a": 1}
    with pytest.raises(RuntimeError, match="rule bug"):
        tracker.set_replicas(None, ["a", "b", "c"])
    assert tracker.replicas(0) == frozenset({"a", "b"})


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(0, 6), min_size=1, max_size=5),
    acks=st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 40)), max_size=6),
)
def test_oldest_pending_raft_index_is_the_least_first_pending(
    counts: list[int], acks: list[tuple[str, int]]
) -> None:
    """The one-call overall term equals the minimum over partitions, brute force."""
    tracker = AckTracker(["a", "b", "c"])
    raft = 0
    for pid, count in enumerate(counts):
        if count:
            rafts = np.arange(raft + 1, raft + 1 + count, dtype=np.uint64)
            tracker.record_landed(pid, np.arange(1, count + 1, dtype=np.uint64), rafts)
            raft += count
    for replica, index in acks:
        tracker.ack(replica, index)
    firsts = [tracker.first_pending_raft_index(pid) for pid in range(len(counts))]
    present = [first for first in firsts if first is not None]
    assert tracker.oldest_pending_raft_index() == (min(present) if present else None)

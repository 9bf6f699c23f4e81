"""``segstore.masters``: invariant 7, masters are deterministic and move as little as
possible (issue #4).

Determinism is checked in subprocesses with different ``PYTHONHASHSEED`` values, and a
golden test pins the hash itself, so a change of hash (which would move partitions
between releases) fails here. Movement is checked against the rendezvous promise:
a joining member takes only partitions it wins, about 1 / (M + 1) of them; a leaving
member's partitions, and only those, move.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import segstore.masters as masters_module
from segstore.errors import InvalidArgumentError
from segstore.masters import (
    AUTOMATIC,
    DISABLED,
    Automatic,
    Disabled,
    Fixed,
    MasterPolicy,
    rendezvous_master,
    rendezvous_score,
)

PARTITIONS = 1024
FIVE = [f"node-{i}" for i in range(5)]
REPO = Path(__file__).resolve().parents[1]


def spec_score(member: str, partition_id: int) -> int:
    """The documented hash, written out again from the module docstring."""
    data = member.encode("utf-8") + b"\x00" + str(partition_id).encode("ascii")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


# -- determinism ---------------------------------------------------------------------------

SNAPSHOT_SCRIPT = """
import json, sys
from segstore.masters import MasterPolicy
members = json.loads(sys.argv[1])
print(json.dumps(MasterPolicy.automatic(int(sys.argv[2]), members).snapshot()))
"""


@pytest.mark.parametrize("hash_seed", ["0", "1", "2718281828"])
def test_assignments_are_the_same_in_processes_with_other_hash_seeds(hash_seed: str) -> None:
    # The member list goes in a different order too: order must not matter either.
    env = dict(os.environ, PYTHONHASHSEED=hash_seed, PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "-c", SNAPSHOT_SCRIPT, json.dumps(FIVE[::-1]), str(PARTITIONS)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    theirs = {int(pid): master for pid, master in json.loads(result.stdout).items()}
    assert theirs == MasterPolicy.automatic(PARTITIONS, FIVE).snapshot()


def test_golden_scores_and_masters_pin_the_hash() -> None:
    # Changing any of these moves partitions between releases: do not "fix" them.
    assert rendezvous_score("node-a", 0) == 0xAD071FA97EC241E0
    assert rendezvous_score("node-b", 0) == 0xB3FDC01B66C1FEFF
    assert rendezvous_score("node-a", 1) == 0x30D73A470CAEBEFA
    assert rendezvous_score("n\u00e9", 2**32 - 2) == 0xF8E6C9DC1AD6C1BE
    three = ["node-a", "node-b", "node-c"]
    assert [rendezvous_master(three, pid) for pid in range(8)] == [
        "node-b",
        "node-c",
        "node-a",
        "node-a",
        "node-b",
        "node-c",
        "node-c",
        "node-b",
    ]
    snapshot = MasterPolicy.automatic(PARTITIONS, FIVE).snapshot()
    digest = hashlib.sha256(json.dumps(snapshot, sort_keys=True).encode()).hexdigest()
    assert digest == "3eab20ac21854654a89269859848c393f3b7d6a694b8bd85e4f058167d6db889"


@settings(max_examples=100, deadline=None)
@given(member=st.text(min_size=1, max_size=20), partition_id=st.integers(0, 2**32 - 2))
def test_the_score_is_the_documented_blake2b(member: str, partition_id: int) -> None:
    try:
        member.encode("utf-8")
    except UnicodeEncodeError:
        with pytest.raises(InvalidArgumentError):
            rendezvous_master([member], partition_id)
        return
    assert rendezvous_score(member, partition_id) == spec_score(member, partition_id)


def test_equal_scores_go_to_the_name_that_sorts_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(masters_module, "rendezvous_score", lambda member, pid: 7)
    assert rendezvous_master(["b", "c", "a"], 0) == "a"
    policy = MasterPolicy.automatic(4, ["m", "z"])
    assert set(policy.snapshot().values()) == {"m"}
    policy.set_members(["m", "z", "c"])  # the incremental path breaks ties the same way
    assert set(policy.snapshot().values()) == {"c"}


# -- balance and movement --------------------------------------------------------------------


def test_five_members_share_1024_partitions_within_35_percent() -> None:
    counts = Counter(MasterPolicy.automatic(PARTITIONS, FIVE).snapshot().values())
    assert set(counts) == set(FIVE)
    share = PARTITIONS / 5
    for member, count in counts.items():
        assert 0.65 * share <= count <= 1.35 * share, (member, count)


def test_a_joining_member_takes_about_one_sixth_and_nothing_else_moves() -> None:
    policy = MasterPolicy.automatic(PARTITIONS, FIVE)
    before = policy.snapshot()
    changes: list[tuple[int, str | None, str | None]] = []
    policy.on_change(lambda pid, old, new: changes.append((pid, old, new)))
    moved = policy.set_members([*FIVE, "node-5"])
    after = policy.snapshot()
    assert all(new == "node-5" for _, new in moved.values())
    assert moved == {pid: (before[pid], after[pid]) for pid in before if before[pid] != after[pid]}
    assert changes == [(pid, old, new) for pid, (old, new) in sorted(moved.items())]
    share = PARTITIONS / 6
    assert 0.65 * share <= len(moved) <= 1.35 * share
    assert after == MasterPolicy.automatic(PARTITIONS, [*FIVE, "node-5"]).snapshot()


def test_a_leaving_member_moves_only_its_own_partitions() -> None:
    policy = MasterPolicy.automatic(PARTITIONS, FIVE)
    before = policy.snapshot()
    owned = {pid for pid, master in before.items() if master == "node-2"}
    changes: list[int] = []
    policy.on_change(lambda pid, old, new: changes.append(pid))
    moved = policy.set_members([m for m in FIVE if m != "node-2"])
    assert set(moved) == owned == set(changes)
    assert all(old == "node-2" and new in FIVE and new != "node-2" for old, new in moved.values())
    # The leaver's partitions spread over the rest rather than piling onto one member.
    assert len(Counter(new for _, new in moved.values())) == 4
    assert policy.snapshot() == MasterPolicy.automatic(PARTITIONS, policy.members).snapshot()


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.sets(st.sampled_from([f"m{i}" for i in range(8)]), max_size=8), min_size=1, max_size=6
    )
)
def test_incremental_changes_equal_a_fresh_computation(steps: list[set[str]]) -> None:
    policy = MasterPolicy.automatic(64, [])
    for members in steps:
        before = policy.snapshot()
        moved = policy.set_members(members)
        fresh = MasterPolicy.automatic(64, members).snapshot()
        assert policy.snapshot() == fresh
        assert moved == {p: (before[p], fresh[p]) for p in fresh if before[p] != fresh[p]}


def test_no_change_no_callback_and_no_new_generation() -> None:
    policy = MasterPolicy.automatic(16, FIVE)
    calls: list[int] = []
    policy.on_change(lambda pid, old, new: calls.append(pid))
    assert policy.set_members(list(reversed(FIVE))) == {}
    assert calls == []
    assert policy.generation == 0
    policy.set_members(FIVE[:4])
    assert policy.generation == 1


# -- modes ---------------------------------------------------------------------------------


def test_fixed_mode_ignores_membership_and_leaves_the_rest_unowned() -> None:
    policy = MasterPolicy.fixed(8, {0: "east", 5: "west"}, members=FIVE)
    assert policy.snapshot() == {
        0: "east",
        1: None,
        2: None,
        3: None,
        4: None,
        5: "west",
        6: None,
        7: None,
    }
    assert policy.mode_of(5) == Fixed("west") and policy.mode_of(1) == DISABLED
    calls: list[int] = []
    policy.on_change(lambda pid, old, new: calls.append(pid))
    assert policy.set_members(["east"]) == {}  # fixed means fixed, even when "west" left
    assert calls == []
    assert policy.master_of(5) == "west"


def test_fixed_with_an_automatic_default() -> None:
    policy = MasterPolicy.fixed(PARTITIONS, {3: "pinned"}, members=FIVE, default=AUTOMATIC)
    automatic = MasterPolicy.automatic(PARTITIONS, FIVE).snapshot()
    assert policy.snapshot() == {**automatic, 3: "pinned"}


def test_disabled_mode_owns_nothing_whatever_the_members() -> None:
    policy = MasterPolicy.disabled(32)
    policy.set_members(FIVE)
    assert set(policy.snapshot().values()) == {None}
    assert policy.partitions_of("node-0") == []


def test_automatic_with_no_members_is_unowned_until_one_joins() -> None:
    policy = MasterPolicy.automatic(4, [])
    assert policy.master_of(2) is None
    changes: list[tuple[int, str | None, str | None]] = []
    policy.on_change(lambda pid, old, new: changes.append((pid, old, new)))
    policy.set_members(["solo"])
    assert changes == [(pid, None, "solo") for pid in range(4)]
    assert policy.partitions_of("solo") == [0, 1, 2, 3]


def test_per_partition_overrides_fire_only_for_partitions_that_move() -> None:
    policy = MasterPolicy.automatic(16, FIVE)
    initial = policy.snapshot()
    changes: list[tuple[int, str | None, str | None]] = []
    policy.on_change(lambda pid, old, new: changes.append((pid, old, new)))
    policy.set_mode(3, Fixed(str(initial[3])))  # same master: no event
    assert changes == []
    policy.set_mode(4, Disabled())
    policy.set_mode(5, Fixed("elsewhere"))
    assert changes == [(4, initial[4], None), (5, initial[5], "elsewhere")]
    policy.set_mode(4, None)
    policy.set_mode(5, Automatic())
    assert policy.snapshot() == initial
    changes.clear()
    moved = policy.set_default(DISABLED)  # partitions 3 and 5 keep their overrides
    assert set(moved) == set(range(16)) - {3, 5}
    assert policy.master_of(3) == initial[3] and policy.master_of(5) == initial[5]
    assert [pid for pid, _, _ in changes] == sorted(moved)


def test_a_callback_may_change_the_policy_and_its_changes_follow_in_order() -> None:
    policy = MasterPolicy.automatic(2, ["a"])
    seen: list[tuple[int, str | None, str | None]] = []

    def on_change(pid: int, old: str | None, new: str | None) -> None:
        seen.append((pid, old, new))
        if pid == 0 and new is None:
            policy.set_mode(1, Fixed("z"))

    policy.on_change(on_change)
    policy.set_mode(0, DISABLED)
    assert seen == [(0, "a", None), (1, "a", "z")]


# -- bad input -------------------------------------------------------------------------------

BAD_CALLS: list[tuple[str, Callable[[], object]]] = [
    ("zero partitions", lambda: MasterPolicy.automatic(0, FIVE)),
    ("too many partitions", lambda: MasterPolicy.automatic(2**32, FIVE)),
    ("members as a str", lambda: MasterPolicy.automatic(4, "node-0")),
    ("empty member", lambda: MasterPolicy.automatic(4, ["a", ""])),
    ("member not str", lambda: MasterPolicy.automatic(4, [1])),  # type: ignore[list-item]
    ("surrogate member", lambda: MasterPolicy.automatic(4, ["\udc80"])),
    ("unknown default mode", lambda: MasterPolicy(4, FIVE, "auto")),  # type: ignore[arg-type]
    ("fixed pid out of range", lambda: MasterPolicy.fixed(4, {4: "a"})),
    ("fixed to empty member", lambda: MasterPolicy.fixed(4, {0: ""})),
    ("fixed not a mapping", lambda: MasterPolicy.fixed(4, [(0, "a")])),  # type: ignore[arg-type]
    ("master_of out of range", lambda: MasterPolicy.automatic(4, FIVE).master_of(4)),
    ("master_of bool", lambda: MasterPolicy.automatic(4, FIVE).master_of(True)),
    ("set_mode bad mode", lambda: MasterPolicy.automatic(4, FIVE).set_mode(0, "x")),  # type: ignore[arg-type]
    ("set_default None", lambda: MasterPolicy.automatic(4, FIVE).set_default(None)),  # type: ignore[arg-type]
    ("callback not callable", lambda: MasterPolicy.automatic(4, FIVE).on_change(3)),  # type: ignore[arg-type]
    ("rendezvous bad pid", lambda: rendezvous_master(FIVE, -1)),
]


@pytest.mark.parametrize("call", [c for _, c in BAD_CALLS], ids=[n for n, _ in BAD_CALLS])
def test_bad_input_raises_invalid_argument(call: Callable[[], object]) -> None:
    with pytest.raises(InvalidArgumentError):
        call()

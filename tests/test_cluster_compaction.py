"""Log compaction and snapshot catch-up in a cluster (issue #5 section 2).

Node processes run with a small reserved tail (``segstore node --reserved-log-items``), so
every node compacts its store below ``min(watermark, commit - reserved)`` within a
few hundred submissions. A member whose next entry the leader no longer holds (a new
member, or a follower kept down past the compaction) must catch up from a
``SegmentedStateMachine`` snapshot shipped by the leader; afterwards every node holds
the same partition states and every acknowledged submission is applied exactly once.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from cluster_helpers import (
    NodeProcess,
    compaction_args,
    free_ports,
    read_acked,
    start_cluster,
    statuses,
    wait_converged,
    wait_leader,
)

PARTITIONS = 16
RESERVED = 40
LOAD = 400


def _load(node: NodeProcess, count: int, tag: str, tmp: Path) -> Path:
    acked = tmp / f"acked-{tag}.txt"
    node.call(
        "load", count=count, window=32, prefix=f"{tag}-", partitions=PARTITIONS,
        acked_path=str(acked),
    )  # fmt: skip
    return acked


def _load_done(node: NodeProcess) -> dict[str, Any]:
    report: dict[str, Any] = node.call("load_wait", timeout=200, timeout_s=180)["load"]
    assert report["done"] and report["failed"] == 0, report
    return report


def _wait_compacted(nodes: list[NodeProcess], above: int, timeout: float = 60.0) -> None:
    """Wait until every node's log starts above ``above``, in the engine's view, the
    store's start index and the physically retained records."""
    deadline = time.monotonic() + timeout
    seen: list[tuple[int, int, int]] = []
    while time.monotonic() < deadline:
        seen = [
            (s["log_start_index"], s["store_start_index"], s["first_retained_index"])
            for s in statuses(nodes)
        ]
        if all(min(row) > above for row in seen):
            return
        time.sleep(0.2)
    raise AssertionError(f"not every node compacted above {above}: {seen}")


def _check_exactly_once(nodes: list[NodeProcess], acked: list[str]) -> None:
    payloads = [node.call("payloads")["payloads"] for node in nodes]
    assert all(p == payloads[0] for p in payloads[1:])
    applied = [p for pid in payloads[0] for p in payloads[0][pid]]
    assert [p for p, n in Counter(applied).items() if n > 1] == []
    assert set(acked) <= set(applied)
    where = {p: int(pid) for pid in payloads[0] for p in payloads[0][pid]}
    assert all(where[p] == int(p.rsplit("-", 1)[1]) % PARTITIONS for p in acked)


@pytest.mark.timeout(180)
def test_small_reserved_tail_compacts_every_node_and_loses_nothing(tmp_path: Path) -> None:
    nodes = start_cluster(tmp_path, 3, PARTITIONS, compaction_args(RESERVED))
    try:
        wait_leader(nodes)
        files = [_load(nodes[0], LOAD, "a", tmp_path)]
        _load_done(nodes[0])
        commit = wait_converged(nodes)[0]["status"]["commit_index"]
        # The start moves up on every node, to within the reserved tail of the commit
        # index (the watermark follows the applier and router checkpoints).
        _wait_compacted(nodes, commit - 3 * RESERVED)
        for status in statuses(nodes):
            assert status["log_start_index"] >= status["store_start_index"]
            assert status["commit_index"] - status["log_start_index"] >= RESERVED
        _check_exactly_once(nodes, read_acked(files))

        # A full restart from compacted logs: same state, and it goes on.
        before = wait_converged(nodes)[0]["digests"]
        for node in nodes:
            node.close()
        for node in nodes:
            node.start()
        wait_leader(nodes)
        assert wait_converged(nodes)[0]["digests"] == before
        files.append(_load(nodes[1], 50, "b", tmp_path))
        _load_done(nodes[1])
        wait_converged(nodes)
        _check_exactly_once(nodes, read_acked(files))
        assert len(read_acked(files)) == LOAD + 50
    finally:
        for node in nodes:
            node.close()


@pytest.mark.timeout(180)
def test_fourth_node_joins_after_compaction_by_snapshot(tmp_path: Path) -> None:
    env = compaction_args(RESERVED)
    addresses = [f"127.0.0.1:{port}" for port in free_ports(4)]
    first = addresses[:3]
    nodes = [
        NodeProcess(
            i + 1,
            tmp_path / f"n{i + 1}",
            a,
            [b for b in first if b != a],
            PARTITIONS,
            extra_args=env,
        )
        for i, a in enumerate(first)
    ]
    joiner = NodeProcess(4, tmp_path / "n4", addresses[3], first, PARTITIONS, extra_args=env)
    try:
        for node in nodes:
            node.start()
        wait_leader(nodes)
        files = [_load(nodes[0], LOAD, "a", tmp_path)]
        _load_done(nodes[0])
        commit = wait_converged(nodes)[0]["status"]["commit_index"]
        _wait_compacted(nodes, commit - 3 * RESERVED)

        joiner.start()
        nodes[1].call("add_member", address=joiner.address, timeout=90, timeout_s=60)
        everyone = [*nodes, joiner]
        joined = wait_converged(everyone)
        # The leader no longer held the first entries: the joiner got a snapshot.
        assert joined[3]["status"]["installed_snapshot_index"] > 1
        assert joined[3]["status"]["counters"]["snapshots_installed"] >= 1
        assert all(r["digests"] == joined[0]["digests"] for r in joined)
        assert sorted(joined[3]["status"]["members"]) == sorted(addresses)

        # It goes on with four members: submissions through the joiner, compaction
        # past the membership change, then a restart of an original member (started
        # with only its two original peers) still knows all four.
        files.append(_load(joiner, LOAD, "j", tmp_path))
        _load_done(joiner)
        commit = wait_converged(everyone)[0]["status"]["commit_index"]
        _wait_compacted(everyone, commit - 3 * RESERVED)
        nodes[2].close()
        nodes[2].start()
        deadline = time.monotonic() + 60
        while sorted(nodes[2].call("status")["status"]["members"]) != sorted(addresses):
            assert time.monotonic() < deadline, nodes[2].call("status")["status"]["members"]
            time.sleep(0.2)
        wait_converged(everyone)
        _check_exactly_once(everyone, read_acked(files))
        assert len(read_acked(files)) == 2 * LOAD
    finally:
        for node in [*nodes, joiner]:
            node.close()


@pytest.mark.timeout(180)
def test_follower_down_past_compaction_catches_up_by_snapshot(tmp_path: Path) -> None:
    nodes = start_cluster(tmp_path, 3, PARTITIONS, compaction_args(RESERVED))
    try:
        leader_address = wait_leader(nodes)
        leader = next(node for node in nodes if node.address == leader_address)
        follower = next(node for node in nodes if node is not leader)
        others = [node for node in nodes if node is not follower]
        files = [_load(leader, LOAD, "a", tmp_path)]
        while leader.call("load_wait", timeout_s=0.01)["load"]["acked"] < LOAD // 4:
            time.sleep(0.01)
        follower.kill9()  # mid-load
        down_at = max(s["commit_index"] for s in statuses(others))
        _load_done(leader)
        files.append(_load(leader, LOAD, "b", tmp_path))
        _load_done(leader)
        # The others compacted past everything the follower has. Not down_at + 1: the
        # commit index seen after the kill does not bound the follower's log (it may
        # hold a batch the others had not committed yet); but all of load "b" came
        # after the kill, so commit - 3 * RESERVED is past the follower's last entry.
        commit = max(s["commit_index"] for s in statuses(others))
        _wait_compacted(others, commit - 3 * RESERVED)

        follower.start()
        replies = wait_converged(nodes)
        status = replies[nodes.index(follower)]["status"]
        assert status["installed_snapshot_index"] > down_at
        assert status["counters"]["snapshots_installed"] >= 1
        _check_exactly_once(nodes, read_acked(files))
        assert len(read_acked(files)) == 2 * LOAD
    finally:
        for node in nodes:
            node.close()

"""Three node processes, 64 partitions, kill -9 a follower then the leader (issue #5).

Every node runs ``segstore node --control`` on 127.0.0.1 with a load generator that
appends each acknowledged payload to a file as its future resolves. A follower is
killed with SIGKILL mid-load and restarted, then the leader; after the loads end the
nodes must converge to the same commit index and identical partition states, and
every acknowledged payload must be applied exactly once on every node, in its
partition. ``SEGSTORE_CLUSTER_ITERATIONS`` sets the number of submissions (default
small; issue #5's full size is 20000).
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from cluster_helpers import (
    ITERATIONS,
    NodeProcess,
    read_acked,
    start_cluster,
    wait_converged,
    wait_leader,
)

PARTITIONS = 64


def _start_load(node: NodeProcess, count: int, tag: str, tmp: Path) -> Path:
    acked = tmp / f"acked-{tag}.txt"
    node.call(
        "load",
        count=count,
        window=64,
        prefix=f"{tag}-",
        partitions=PARTITIONS,
        acked_path=str(acked),
    )
    return acked


def _wait_some_acked(node: NodeProcess, at_least: int, timeout: float = 60.0) -> dict[str, Any]:
    """The load report once ``at_least`` submissions were acknowledged on ``node``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        report: dict[str, Any] = node.call("load_wait", timeout_s=0.01)["load"]
        if report["acked"] >= at_least or report["done"]:
            return report
        time.sleep(0.01)
    raise TimeoutError(f"node {node.node_id} acknowledged fewer than {at_least} in {timeout}s")


def _partition_of(payload: str) -> int:
    return int(payload.rsplit("-", 1)[1]) % PARTITIONS


@pytest.mark.timeout(240)
def test_kill9_follower_then_leader_converges_exactly_once(tmp_path: Path) -> None:
    nodes = start_cluster(tmp_path, 3, PARTITIONS)
    acked_files: list[Path] = []
    per_load = max(ITERATIONS // 6, 10)
    try:
        leader = wait_leader(nodes)
        by_address = {node.address: node for node in nodes}
        for node in nodes:
            acked_files.append(_start_load(node, per_load, f"a{node.node_id}", tmp_path))

        # 1. kill -9 a follower mid-load, restart it with a new load.
        follower = next(node for node in nodes if node.address != leader)
        report = _wait_some_acked(follower, per_load // 4)
        follower.kill9()
        assert not report["done"], "the follower must be killed mid-load"
        time.sleep(0.5)
        follower.start()
        acked_files.append(_start_load(follower, per_load, f"b{follower.node_id}", tmp_path))

        # 2. kill -9 the leader mid-load; the others elect a new one; restart it.
        old_leader = by_address[leader]
        old_leader.call("load_wait", timeout=200, timeout_s=180)  # its first load ended
        acked_files.append(_start_load(old_leader, per_load, f"l{old_leader.node_id}", tmp_path))
        report = _wait_some_acked(old_leader, per_load // 4)
        old_leader.kill9()
        assert not report["done"], "the leader must be killed mid-load"
        survivors = [node for node in nodes if node is not old_leader]
        new_leader = wait_leader(survivors, not_=leader)
        assert new_leader in {node.address for node in survivors}
        old_leader.start()
        acked_files.append(_start_load(old_leader, per_load, f"c{old_leader.node_id}", tmp_path))

        for node in nodes:
            report = node.call("load_wait", timeout=200, timeout_s=180)["load"]
            assert report["done"], f"node {node.node_id} load did not finish: {report}"
            assert report["failed"] == 0, report

        replies = wait_converged(nodes)
        commit = replies[0]["status"]["commit_index"]
        payloads = [node.call("payloads")["payloads"] for node in nodes]
    finally:
        for node in nodes:
            node.close()

    acked = read_acked(acked_files)
    assert len(acked) >= 4 * per_load  # four loads ran to completion
    assert len(set(acked)) == len(acked)
    assert commit > len(acked)
    # Identical partition states on every node.
    assert payloads[0] == payloads[1] == payloads[2]
    applied = payloads[0]
    assert len(applied) == PARTITIONS
    everything = [p for pid in applied for p in applied[pid]]
    # Nothing applied twice (retries and re-deliveries deduplicated) ...
    duplicates = [p for p, n in Counter(everything).items() if n > 1]
    assert duplicates == []
    # ... and every acknowledged submission applied, in its own partition.
    where = {p: int(pid) for pid in applied for p in applied[pid]}
    missing = [p for p in acked if p not in where]
    assert missing == []
    assert all(where[p] == _partition_of(p) for p in acked)


@pytest.mark.timeout(120)
def test_restarted_cluster_recovers_state_from_disk(tmp_path: Path) -> None:
    """Close every node cleanly, restart all three: same state, and it goes on."""
    nodes = start_cluster(tmp_path, 3, 8)
    try:
        wait_leader(nodes)
        for i in range(20):
            nodes[i % 3].call("submit", partition=i % 8, payload=f"r-{i}")
        before = wait_converged(nodes)
        for node in nodes:
            node.close()
        for node in nodes:
            node.start()
        wait_leader(nodes)
        after = wait_converged(nodes)
        assert after[0]["digests"] == before[0]["digests"]
        assert after[0]["status"]["term"] > before[0]["status"]["term"]
        result = nodes[0].call("submit", partition=1, payload="r-after")["result"]
        # RecordingStateMachine returns the partition's entry count: 20 / 8 rounded up + 1.
        assert result == 4
        wait_converged(nodes)
    finally:
        for node in nodes:
            node.close()

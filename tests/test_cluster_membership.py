"""Membership (issue #5, section 4): a fourth node joins and catches up by log replay,
then a node is removed and the remaining three go on without it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cluster_helpers import NodeProcess, free_ports, wait_converged, wait_leader

from segstore.node_process import NodeProcessError

PARTITIONS = 16


def _members(node: NodeProcess) -> list[str]:
    return list(node.call("status")["status"]["members"])


def _wait_members(nodes: list[NodeProcess], expected: set[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    seen: list[list[str]] = []
    while time.monotonic() < deadline:
        seen = [_members(node) for node in nodes]
        if all(set(members) == expected for members in seen):
            return
        time.sleep(0.1)
    raise AssertionError(f"members did not become {sorted(expected)}: {seen}")


@pytest.mark.timeout(150)
def test_fourth_node_joins_catches_up_then_one_is_removed(tmp_path: Path) -> None:
    addresses = [f"127.0.0.1:{port}" for port in free_ports(4)]
    first = addresses[:3]
    nodes = [
        NodeProcess(i + 1, tmp_path / f"n{i + 1}", a, [b for b in first if b != a], PARTITIONS)
        for i, a in enumerate(first)
    ]
    for node in nodes:
        node.start()
    joiner = NodeProcess(4, tmp_path / "n4", addresses[3], first, PARTITIONS)
    try:
        wait_leader(nodes)
        for i in range(60):
            nodes[i % 3].call("submit", partition=i % PARTITIONS, payload=f"before-{i}")
        before = wait_converged(nodes)

        # Join: start the new node with every member as a peer, then add it.
        joiner.start()
        nodes[0].call("add_member", address=joiner.address, timeout=90, timeout_s=60)
        everyone = [*nodes, joiner]
        _wait_members(everyone, set(addresses))
        joined = wait_converged(everyone)
        # The new node replayed the whole log: same partition states as the others.
        assert joined[3]["digests"] == before[0]["digests"]
        assert joined[3]["status"]["commit_index"] >= before[0]["status"]["commit_index"]

        for i in range(20):
            joiner.call("submit", partition=i % PARTITIONS, payload=f"joined-{i}")
        wait_converged(everyone)

        # Remove a follower among the first three, asked through another member; the
        # others no longer count it. (pysyncobj cannot remove its leader: refused.)
        leader = wait_leader(everyone)
        removed = next(node for node in reversed(nodes) if node.address != leader)
        asker = next(n for n in everyone if n is not removed and n.address != leader)
        with pytest.raises(NodeProcessError, match="is the leader"):
            asker.call("remove_member", address=leader, timeout=30, timeout_s=5)
        asker.call("remove_member", address=removed.address, timeout=90, timeout_s=60)
        remaining = [node for node in everyone if node is not removed]
        _wait_members(remaining, set(addresses) - {removed.address})
        removed.close()
        for i in range(20):
            remaining[i % 3].call("submit", partition=i % PARTITIONS, payload=f"after-{i}")
        final = wait_converged(remaining)
        payloads = [node.call("payloads")["payloads"] for node in remaining]
    finally:
        for node in [*nodes, joiner]:
            node.close()

    assert payloads[0] == payloads[1] == payloads[2]
    applied = [p for pid in payloads[0] for p in payloads[0][pid]]
    assert sorted(applied) == sorted(
        [f"before-{i}" for i in range(60)]
        + [f"joined-{i}" for i in range(20)]
        + [f"after-{i}" for i in range(20)]
    )
    # Masters follow membership: nobody names the removed node.
    masters = {p["master"] for p in final[0]["status"]["partitions"]}
    assert removed.address not in masters
    assert masters <= set(addresses)

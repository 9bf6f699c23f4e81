"""Node processes for the cluster tests: ``segstore node --control`` on 127.0.0.1.

Each :class:`~segstore.node_process.NodeProcess` is one real process, driven with
JSON-line commands (:func:`segstore.cluster.serve_control`); ``kill9`` sends SIGKILL.
Replies are read by a thread, so a hung node fails the test with a timeout instead of
hanging it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from segstore.node_process import NodeProcess, free_ports

REPO = Path(__file__).resolve().parent.parent

ITERATIONS = int(os.environ.get("SEGSTORE_CLUSTER_ITERATIONS", "3000"))
"""Submissions of the convergence test (issue #5 asks 20,000: set the knob)."""


def start_cluster(
    tmp: Path, count: int, partitions: int, extra_args: list[str] | None = None
) -> list[NodeProcess]:
    """``count`` node processes forming one cluster, each with its own data dir."""
    addresses = [f"127.0.0.1:{port}" for port in free_ports(count)]
    nodes = []
    for i, address in enumerate(addresses):
        peers = [a for a in addresses if a != address]
        node = NodeProcess(
            i + 1, tmp / f"n{i + 1}", address, peers, partitions, extra_args=extra_args or ()
        )
        nodes.append(node.start())
    return nodes


def compaction_args(reserved_log_items: int, interval_s: float = 0.2) -> list[str]:
    """``segstore node`` options of nodes that compact with a small reserved tail."""
    return [
        "--reserved-log-items",
        str(reserved_log_items),
        "--compaction-interval-s",
        str(interval_s),
    ]


def statuses(nodes: list[NodeProcess]) -> list[dict[str, Any]]:
    """Every node's status."""
    return [node.call("status")["status"] for node in nodes]


def wait_leader(nodes: list[NodeProcess], timeout: float = 60.0, *, not_: str | None = None) -> str:
    """The address of the leader every given node agrees on (other than ``not_``:
    right after a leader is killed, the survivors still agree on it for a while)."""
    deadline = time.monotonic() + timeout
    leaders: list[Any] = []
    while time.monotonic() < deadline:
        leaders = [node.call("status")["status"]["leader"] for node in nodes]
        agreed = leaders[0] is not None and all(leader == leaders[0] for leader in leaders)
        if agreed and leaders[0] != not_:
            return str(leaders[0])
        time.sleep(0.1)
    raise TimeoutError(f"no agreed leader in {timeout}s: {leaders}")


def wait_converged(nodes: list[NodeProcess], timeout: float = 90.0) -> list[dict[str, Any]]:
    """Wait until every node reports the same commit index, all of it applied, and
    the same partition digests; return the digest replies."""
    deadline = time.monotonic() + timeout
    replies: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        replies = [node.call("digest") for node in nodes]
        commits = {r["status"]["commit_index"] for r in replies}
        applied = {r["status"]["applied_index"] for r in replies}
        digests = [r["digests"] for r in replies]
        if len(commits) == 1 and applied == commits and all(d == digests[0] for d in digests):
            return replies
        time.sleep(0.3)
    summary = [(r["status"]["commit_index"], r["status"]["applied_index"]) for r in replies]
    raise AssertionError(f"nodes did not converge in {timeout}s: (commit, applied) {summary}")


def read_acked(paths: list[Path]) -> list[str]:
    """Every acknowledged payload recorded in the load generators' files."""
    acked: list[str] = []
    for path in paths:
        if path.exists():
            acked += [line for line in path.read_text().splitlines() if line]
    return acked

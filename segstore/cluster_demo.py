"""``segstore demo``: a three-node cluster on loopback, a SIGKILLed leader, failover,
catch-up and a convergence check.

Three ``segstore node`` processes (:mod:`segstore.node_process`) with 64 partitions
each form one Raft group on 127.0.0.1. A follower generates the load (its submissions
are forwarded to the leader); a live view shows the leader, term, commit and applied
indices, throughput, partition lag, masters and watermarks. Mid-load the leader is
killed with SIGKILL; the view shows the failover. The killed node is restarted and
catches up; when the load is done every node must hold identical partition states
(digests), every acknowledged submission must be applied exactly once on every node,
and ``segstore stats`` of each data directory is printed.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from typing import Any, Final

from segstore.inspection import stats
from segstore.node_process import NodeProcess, NodeProcessError, free_ports

PARTITIONS: Final = 64
NODES: Final = 3
PAYLOAD_BYTES: Final = 256
TICK_S: Final = 0.5


def _statuses(nodes: list[NodeProcess]) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for node in nodes:
        if node.running:
            with contextlib.suppress(NodeProcessError):  # a node busy or just killed
                out[node.node_id] = node.call("status", timeout=10)["status"]
    return out


def _leader_of(statuses: dict[int, dict[str, Any]]) -> tuple[int, int] | None:
    """``(node id, term)`` of the node that says it leads, with the highest term."""
    leaders = [(s["term"], nid) for nid, s in statuses.items() if s["is_leader"]]
    if not leaders:
        return None
    term, nid = max(leaders)
    return nid, term


def _render(
    statuses: dict[int, dict[str, Any]], nodes: list[NodeProcess], rate: float, note: str
) -> list[str]:
    lines = [
        f"{'node':>6} {'role':>9} {'term':>5} {'commit':>8} {'applied':>8} "
        f"{'durable':>8} {'watermark':>9} {'lag max':>8}"
    ]
    for node in nodes:
        status = statuses.get(node.node_id)
        if status is None:
            state = "running, not answering" if node.running else "KILLED"
            lines.append(f"{node.node_id:>6} {state}")
            continue
        lag = max((p["pending"] for p in status["partitions"]), default=0)
        role = "leader" if status["is_leader"] else "follower"
        lines.append(
            f"{node.node_id:>6} {role:>9} {status['term']:>5} {status['commit_index']:>8,} "
            f"{status['applied_index']:>8,} {status['durable_index']:>8,} "
            f"{status['watermark']:>9,} {lag:>8,}"
        )
    leading = _leader_of(statuses)
    masters: Counter[str] = Counter()
    if leading is not None:
        for part in statuses[leading[0]]["partitions"]:
            masters[str(part["master"])] += 1
    lines.append(
        f"throughput {rate:>8,.0f} commits/s   masters: "
        + (", ".join(f"{m} {n}" for m, n in sorted(masters.items())) or "-")
    )
    lines.append(note)
    return lines


class _View:
    """Redraws the live view in place on a terminal, or prints a line per tick."""

    def __init__(self) -> None:
        self.live = sys.stdout.isatty()
        self.drawn = 0

    def show(self, lines: list[str]) -> None:
        if self.live:
            if self.drawn:
                sys.stdout.write(f"\x1b[{self.drawn}F")
            for line in lines:
                sys.stdout.write("\x1b[2K" + line + "\n")
            sys.stdout.flush()
            self.drawn = len(lines)
        else:
            print(" | ".join(line.strip() for line in lines[1:]))

    def message(self, text: str) -> None:
        self.drawn = 0
        print(text)


def run_cluster_demo(*, count: int, directory: str | None, keep: bool) -> int:
    """Run the demo with ``count`` submissions; 0 if the cluster converged exactly once."""
    root = directory or tempfile.mkdtemp(prefix="segstore-cluster-demo-")
    addresses = [f"127.0.0.1:{port}" for port in free_ports(NODES)]
    nodes = [
        NodeProcess(
            i + 1,
            os.path.join(root, f"n{i + 1}"),
            address,
            [a for a in addresses if a != address],
            PARTITIONS,
        )
        for i, address in enumerate(addresses)
    ]
    view = _View()
    try:
        print(
            f"cluster demo: {NODES} node processes on 127.0.0.1, {PARTITIONS} partitions, "
            f"{count:,} submissions of {PAYLOAD_BYTES} B; the leader is killed mid-load"
        )
        for node in nodes:
            node.start()
        nodes[0].call("wait_leader", timeout=90, timeout_s=60)
        statuses = _statuses(nodes)
        leading = _leader_of(statuses)
        if leading is None:
            print("demo: no leader was elected", file=sys.stderr)
            return 1
        leader = next(n for n in nodes if n.node_id == leading[0])
        source = next(n for n in nodes if n is not leader)
        acked_path = os.path.join(root, "acked.txt")
        source.call(
            "load",
            count=count,
            window=256,
            payload_bytes=PAYLOAD_BYTES,
            acked_path=acked_path,
            prefix="demo-",
        )
        view.message(
            f"node {leader.node_id} leads (term {leading[1]}); node {source.node_id} submits"
        )
        failover = _drive(nodes, leader, source, count, view)
        if failover is None:
            return 1
        report = source.call("load_wait", timeout=600, timeout_s=540)["load"]
        view.message(
            f"load done: {report['acked']:,} acknowledged, {report['failed']} failed, "
            f"p50 {report['p50_ms'] or 0:.1f} ms, p99 {report['p99_ms'] or 0:.1f} ms "
            f"(submit to applied, through a follower, failover included)"
        )
        ok = _check(nodes, acked_path)
        for node in nodes:
            node.close()
        for node in nodes:
            out = io.StringIO()
            stats(os.path.join(node.data_dir, "store"), out)
            print(f"\nsegstore stats {node.data_dir}/store\n" + _summary(out.getvalue()))
        return 0 if ok else 1
    finally:
        for node in nodes:
            node.kill9()  # nothing left to do for nodes already closed
        if not keep and directory is None:
            shutil.rmtree(root, ignore_errors=True)
        elif keep:
            print(f"data kept in {root}")


def _drive(
    nodes: list[NodeProcess],
    leader: NodeProcess,
    source: NodeProcess,
    count: int,
    view: _View,
) -> float | None:
    """Live view until the load is done; kills the leader a third of the way, restarts
    it once a new leader commits; returns the failover time (None: no new leader)."""
    killed_at: float | None = None
    failover: float | None = None
    restarted = False
    first_commit: int | None = None
    previous: tuple[float, int] | None = None
    note = "running"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        statuses = _statuses(nodes)
        now = time.monotonic()
        leading = _leader_of(statuses)
        commit = statuses[leading[0]]["commit_index"] if leading else None
        rate = 0.0
        if commit is not None:
            if previous is not None and now > previous[0]:
                rate = max(0.0, (commit - previous[1]) / (now - previous[0]))
            previous = (now, commit)
            if first_commit is None:
                first_commit = commit
        if killed_at is None and commit is not None and first_commit is not None:
            if commit - first_commit >= count // 3:
                leader.kill9()
                killed_at = time.monotonic()
                note = f"SIGKILL sent to leader node {leader.node_id}"
        elif killed_at is not None and failover is None:
            if leading is not None and leading[0] != leader.node_id:
                failover = now - killed_at
                note = (
                    f"failover: node {leading[0]} leads term {leading[1]} "
                    f"{failover:.2f} s after the kill"
                )
        elif failover is not None and not restarted:
            leader.start()
            restarted = True
            note += f"; node {leader.node_id} restarted, catching up"
        view.show(_render(statuses, nodes, rate, note))
        if restarted and _caught_up(statuses, leader, source):
            break
        time.sleep(TICK_S)
    if failover is None:
        print("demo: no new leader after the kill", file=sys.stderr)
        return None
    view.message(f"node {leader.node_id} caught up; failover took {failover:.2f} s")
    return failover


def _caught_up(
    statuses: dict[int, dict[str, Any]], restarted: NodeProcess, source: NodeProcess
) -> bool:
    mine = statuses.get(restarted.node_id)
    other = statuses.get(source.node_id)
    if mine is None or other is None:
        return False
    return bool(mine["applied_index"] >= other["applied_index"] > 0)


def _check(nodes: list[NodeProcess], acked_path: str) -> bool:
    """Identical partition digests on every node; every acknowledged payload applied
    exactly once everywhere."""
    digests = {n.node_id: n.call("digest", timeout=120, timeout_s=100)["digests"] for n in nodes}
    first = digests[nodes[0].node_id]
    same = all(d == first for d in digests.values())
    with open(acked_path) as handle:
        acked = {line.strip() for line in handle if line.strip()}
    problems = []
    for node in nodes:
        payloads = node.call("payloads", timeout=120, timeout_s=100)["payloads"]
        applied = Counter(p for values in payloads.values() for p in values)
        twice = [p for p, n in applied.items() if n > 1]
        missing = [p for p in acked if p not in applied]
        if twice or missing:
            problems.append(
                f"node {node.node_id}: {len(twice)} applied twice, {len(missing)} "
                "acknowledged but not applied"
            )
    if same and not problems:
        print(
            f"convergence: all {len(nodes)} nodes hold identical states in all "
            f"{PARTITIONS} partitions; all {len(acked):,} acknowledged submissions "
            "applied exactly once on every node"
        )
        return True
    if not same:
        print("MISMATCH: partition digests differ between nodes", file=sys.stderr)
    for problem in problems:
        print("MISMATCH " + problem, file=sys.stderr)
    return False


def _summary(text: str) -> str:
    """The stats report without its per-partition table (64 rows per node)."""
    lines = text.rstrip().splitlines()
    keep: list[str] = []
    skipping = False
    for line in lines:
        if line.startswith("partitions"):
            skipping = True
            keep.append("partitions          (per-partition table: segstore stats PATH)")
            continue
        if skipping and not line.startswith(" "):
            skipping = False
        if not skipping:
            keep.append(line)
    return "\n".join(keep)

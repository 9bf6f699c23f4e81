"""Node processes for the cluster tests: ``segstore node --control`` on 127.0.0.1.

Each :class:`NodeProcess` is one real process, driven with JSON-line commands
(:func:`segstore.cluster.serve_control`); ``kill9`` sends SIGKILL. Replies are read
by a thread, so a hung node fails the test with a timeout instead of hanging it.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

ITERATIONS = int(os.environ.get("SEGSTORE_CLUSTER_ITERATIONS", "3000"))
"""Submissions of the convergence test (issue #5 asks 20,000: set the knob)."""


def free_ports(count: int) -> list[int]:
    """``count`` TCP ports free on 127.0.0.1 right now."""
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sockets.append(sock)
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


class NodeProcess:
    """One ``segstore node --control`` process."""

    def __init__(
        self,
        node_id: int,
        data_dir: Path,
        address: str,
        peers: list[str],
        partitions: int,
        env: dict[str, str] | None = None,
    ) -> None:
        self.env = env
        """Extra environment variables (e.g. SEGSTORE_RESERVED_LOG_ITEMS)."""
        self.node_id = node_id
        self.data_dir = data_dir
        self.address = address
        self.peers = peers
        self.partitions = partitions
        self.log_path = data_dir.parent / f"node{node_id}.stderr"
        self.proc: subprocess.Popen[str] | None = None
        self._replies: queue.Queue[str | None] = queue.Queue()

    def start(self) -> NodeProcess:
        command = [
            sys.executable,
            "-m",
            "segstore.cli",
            "node",
            "--id",
            str(self.node_id),
            "--dir",
            str(self.data_dir),
            "--address",
            self.address,
            "--partitions",
            str(self.partitions),
            "--control",
        ]
        for peer in self.peers:
            command += ["--peer", peer]
        self._replies = queue.Queue()
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(
                command,
                cwd=REPO,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                bufsize=1,
                env=None if self.env is None else {**os.environ, **self.env},
            )
        threading.Thread(target=self._read, args=(self.proc, self._replies), daemon=True).start()
        return self

    @staticmethod
    def _read(proc: subprocess.Popen[str], replies: queue.Queue[str | None]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            replies.put(line)
        replies.put(None)

    def call(self, op: str, timeout: float = 60.0, **args: Any) -> dict[str, Any]:
        """Send one command; return its reply (raises on error or timeout)."""
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        try:
            line = self._replies.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"node {self.node_id}: no reply to {op} in {timeout}s") from None
        if line is None:
            raise RuntimeError(f"node {self.node_id} exited; stderr in {self.log_path}")
        reply: dict[str, Any] = json.loads(line)
        if not reply.get("ok"):
            raise RuntimeError(f"node {self.node_id}: {op} failed: {reply.get('error')}")
        return reply

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def close(self) -> None:
        """Close cleanly (checkpoint), or kill if it does not answer."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.call("close", timeout=60)
            self.proc.wait(timeout=30)
        except Exception:
            self.proc.kill()
            self.proc.wait(timeout=30)


def start_cluster(
    tmp: Path, count: int, partitions: int, env: dict[str, str] | None = None
) -> list[NodeProcess]:
    """``count`` node processes forming one cluster, each with its own data dir."""
    addresses = [f"127.0.0.1:{port}" for port in free_ports(count)]
    nodes = []
    for i, address in enumerate(addresses):
        peers = [a for a in addresses if a != address]
        node = NodeProcess(i + 1, tmp / f"n{i + 1}", address, peers, partitions, env)
        nodes.append(node.start())
    return nodes


def compaction_env(reserved_log_items: int, interval_s: float = 0.2) -> dict[str, str]:
    """Environment of node processes that compact with a small reserved tail."""
    return {
        "SEGSTORE_RESERVED_LOG_ITEMS": str(reserved_log_items),
        "SEGSTORE_COMPACTION_INTERVAL_S": str(interval_s),
    }


def statuses(nodes: list[NodeProcess]) -> list[dict[str, Any]]:
    """Every node's status."""
    return [node.call("status")["status"] for node in nodes]


def wait_leader(nodes: list[NodeProcess], timeout: float = 60.0) -> str:
    """The address of the leader every given node agrees on."""
    deadline = time.monotonic() + timeout
    leaders: list[Any] = []
    while time.monotonic() < deadline:
        leaders = [node.call("status")["status"]["leader"] for node in nodes]
        if leaders[0] is not None and all(leader == leaders[0] for leader in leaders):
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

"""Driving ``segstore node --control`` processes: the cluster demo, tests and benchmarks.

A :class:`NodeProcess` is one real node process on loopback, driven with the JSON-line
commands of :func:`segstore.cluster.serve_control` (one reply line per command); its
base :class:`ControlledProcess` drives any such process (the cluster benchmark's stock
pysyncobj nodes too). Replies are read by a thread, so a hung process makes
:meth:`ControlledProcess.call` time out instead of hanging its caller;
:meth:`ControlledProcess.kill9` sends SIGKILL.
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
from collections.abc import Sequence
from typing import Any

from segstore.errors import SegstoreError

__all__ = ["ControlledProcess", "NodeProcess", "NodeProcessError", "free_ports"]


class NodeProcessError(SegstoreError):
    """A node process refused a command, exited, or did not answer in time."""


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


class ControlledProcess:
    """A process answering JSON-line commands on stdin, one reply line each (a
    ``segstore node --control``, or a benchmark's baseline node)."""

    def __init__(
        self, command: Sequence[str], name: str, stderr_path: str | os.PathLike[str]
    ) -> None:
        self.command = list(command)
        self.name = name
        self.stderr_path = os.fspath(stderr_path)
        self.proc: subprocess.Popen[str] | None = None
        self._replies: queue.Queue[str | None] = queue.Queue()
        self._stale = 0  # replies still owed to commands that timed out

    def start(self) -> ControlledProcess:
        """Spawn the process (again, after a kill)."""
        self._replies = queue.Queue()
        self._stale = 0
        os.makedirs(os.path.dirname(self.stderr_path) or ".", exist_ok=True)
        with open(self.stderr_path, "a") as log:
            self.proc = subprocess.Popen(
                self.command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                bufsize=1,
            )
        threading.Thread(target=self._read, args=(self.proc, self._replies), daemon=True).start()
        return self

    @staticmethod
    def _read(proc: subprocess.Popen[str], replies: queue.Queue[str | None]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            replies.put(line)
        replies.put(None)

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def call(self, op: str, timeout: float = 60.0, **args: Any) -> dict[str, Any]:
        """Send one command; return its reply (NodeProcessError on an error reply, an
        exited process or a timeout)."""
        if self.proc is None or self.proc.stdin is None:
            raise NodeProcessError(f"{self.name} was not started")
        try:
            self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
            self.proc.stdin.flush()
        except OSError as exc:
            raise NodeProcessError(f"{self.name} is gone ({exc})") from exc
        deadline = time.monotonic() + timeout
        try:
            # Replies come in command order: first skip those owed to timed-out calls.
            while True:
                line = self._replies.get(timeout=max(0.0, deadline - time.monotonic()))
                if line is None or not self._stale:
                    break
                self._stale -= 1
        except queue.Empty:
            self._stale += 1
            raise NodeProcessError(f"{self.name}: no reply to {op} in {timeout} s") from None
        if line is None:
            raise NodeProcessError(f"{self.name} exited; stderr in {self.stderr_path}")
        reply: dict[str, Any] = json.loads(line)
        if not reply.get("ok"):
            raise NodeProcessError(f"{self.name}: {op} failed: {reply.get('error')}")
        return reply

    def kill9(self) -> None:
        """SIGKILL the process and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def close(self) -> None:
        """Send ``close`` (a node checkpoints), or kill it if it does not answer."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.call("close", timeout=60)
            self.proc.wait(timeout=30)
        except (NodeProcessError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(timeout=30)


class NodeProcess(ControlledProcess):
    """One ``segstore node --control`` process (start it with :meth:`start`)."""

    def __init__(
        self,
        node_id: int,
        data_dir: str | os.PathLike[str],
        address: str,
        peers: Sequence[str],
        partitions: int,
        *,
        extra_args: Sequence[str] = (),
        stderr_path: str | os.PathLike[str] | None = None,
    ) -> None:
        """``extra_args``: more ``segstore node`` options (``--reserved-log-items``...);
        stderr goes to ``node<id>.stderr`` beside the data directory by default."""
        self.node_id = node_id
        self.data_dir = os.fspath(data_dir)
        self.address = address
        self.peers = list(peers)
        self.partitions = partitions
        command = [
            sys.executable,
            "-m",
            "segstore.cli",
            "node",
            "--id",
            str(node_id),
            "--dir",
            self.data_dir,
            "--address",
            address,
            "--partitions",
            str(partitions),
            "--control",
        ]
        for peer in self.peers:
            command += ["--peer", peer]
        default_stderr = os.path.join(os.path.dirname(self.data_dir), f"node{node_id}.stderr")
        super().__init__([*command, *extra_args], f"node{node_id}", stderr_path or default_stderr)

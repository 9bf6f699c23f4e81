#!/usr/bin/env python3
"""Cluster workloads (issue #5 section 5): three node processes on loopback.

C1  segstore: ``segstore node --control`` processes (pysyncobj over the segmented
    store, truly durable: one fdatasync per tick before any message leaves); a load
    generator in the leader's process submits ``count`` 256-byte payloads over 64
    partitions with ``window`` in flight. Throughput is acknowledged submissions per
    second; latency is from ``submit`` to the future resolved with the apply result
    on the submitting node. Then a light load (``count / 10`` submissions, 4 in
    flight): latency without queueing behind the window.
C2  leader failover: with C1's cluster idle, SIGKILL the leader; the time until the
    two survivors agree on a new leader and a submission through one of them is
    applied.
B1/B2  stock pysyncobj 0.3.17 replicating the same commands (a ``@replicated`` method
    appending the payload to its partition's list) with its ``MemoryJournal`` (B1) and
    ``FileJournal`` (B2, which never fsyncs: not durable), same tick and batching
    periods, same load generator semantics (latency to the commit callback).

Run ``python perf/cluster_workloads.py stock-node ...`` is what B1/B2's processes
execute; the comparison itself is perf/compare_cluster.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from segstore.node_process import ControlledProcess, NodeProcess, NodeProcessError, free_ports

PERF_DIR = Path(__file__).resolve().parent
REPO_ROOT = PERF_DIR.parent

PARTITIONS = 64
PAYLOAD_BYTES = 256
LIGHT_WINDOW = 4
"""In-flight submissions of the light-load phase (latency without queueing)."""

Metrics = dict[str, float]


def _addresses(count: int) -> list[str]:
    return [f"127.0.0.1:{port}" for port in free_ports(count)]


def segstore_cluster(root: Path, *, tick_ms: float, append_ms: float) -> list[ControlledProcess]:
    """Three ``segstore node --control`` processes."""
    addresses = _addresses(3)
    nodes: list[ControlledProcess] = []
    for i, address in enumerate(addresses):
        node = NodeProcess(
            i + 1,
            root / f"n{i + 1}",
            address,
            [peer for peer in addresses if peer != address],
            PARTITIONS,
            extra_args=["--tick-ms", str(tick_ms), "--append-ms", str(append_ms)],
            stderr_path=root / f"n{i + 1}.stderr",
        )
        nodes.append(node.start())
    return nodes


def stock_cluster(
    root: Path, *, journal: str, tick_ms: float, append_ms: float
) -> list[ControlledProcess]:
    """Three stock pysyncobj processes (``journal``: memory or file)."""
    addresses = _addresses(3)
    nodes = []
    root.mkdir(parents=True, exist_ok=True)
    for i, address in enumerate(addresses):
        command = [
            sys.executable,
            str(PERF_DIR / "cluster_workloads.py"),
            "stock-node",
            "--address",
            address,
            "--journal",
            journal,
            "--dir",
            str(root),
            "--tick-ms",
            str(tick_ms),
            "--append-ms",
            str(append_ms),
        ]
        for peer in addresses:
            if peer != address:
                command += ["--peer", peer]
        name = f"stock-{journal}-{i + 1}"
        nodes.append(ControlledProcess(command, name, root / f"{name}.stderr").start())
    return nodes


def leader_of(nodes: list[ControlledProcess], timeout: float = 60.0) -> ControlledProcess:
    """The node every live node agrees is the leader."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        leaders = [
            node.call("wait_leader", timeout_s=timeout)["status"]["leader"] for node in nodes
        ]
        if leaders[0] is not None and len(set(leaders)) == 1:
            for node in nodes:
                if node.call("status")["status"]["address"] == leaders[0]:
                    return node
        time.sleep(0.1)
    raise TimeoutError("no agreed leader")


def run_load(node: ControlledProcess, count: int, window: int, tag: str) -> Metrics:
    """``count`` submissions through ``node``; throughput and latency percentiles."""
    node.call(
        "load",
        count=count,
        window=window,
        prefix=f"{tag}-",
        payload_bytes=PAYLOAD_BYTES,
        partitions=PARTITIONS,
    )
    report = node.call("load_wait", timeout=900, timeout_s=880)["load"]
    if not report["done"] or report["failed"]:
        raise RuntimeError(f"load on {node.name} incomplete: {report}")
    return {
        "throughput_per_s": report["acked"] / report["seconds"],
        "p50_ms": report["p50_ms"],
        "p99_ms": report["p99_ms"],
    }


def failover_seconds(nodes: list[ControlledProcess]) -> float:
    """SIGKILL the leader; seconds until a submission through a survivor applies."""
    leader = leader_of(nodes)
    survivors = [node for node in nodes if node is not leader]
    killed_at = time.monotonic()
    leader.kill9()
    survivor = survivors[0]
    while True:
        try:
            survivor.call("submit", partition=0, payload="failover", timeout_s=60)
            break
        except NodeProcessError:
            if time.monotonic() - killed_at > 120:
                raise
            time.sleep(0.01)
    return time.monotonic() - killed_at


def run_config(
    kind: str, root: Path, *, count: int, window: int, tick_ms: float, append_ms: float
) -> Metrics:
    """One cluster of ``kind`` (segstore, memory, file): load, then failover."""
    root.mkdir(parents=True, exist_ok=True)
    if kind == "segstore":
        nodes = segstore_cluster(root, tick_ms=tick_ms, append_ms=append_ms)
    else:
        nodes = stock_cluster(root, journal=kind, tick_ms=tick_ms, append_ms=append_ms)
    try:
        leader = leader_of(nodes)
        leader.call("submit", partition=0, payload="warmup", timeout_s=60)
        metrics = run_load(leader, count, window, "c1")
        light = run_load(leader, max(count // 10, 100), LIGHT_WINDOW, "c1light")
        metrics["light_throughput_per_s"] = light["throughput_per_s"]
        metrics["light_p50_ms"] = light["p50_ms"]
        metrics["light_p99_ms"] = light["p99_ms"]
        metrics["failover_s"] = failover_seconds(nodes)
        return metrics
    finally:
        for node in nodes:
            node.close()


# -- profiling (py-spy, which must be installed: pip install py-spy) --------------


def _thread_cpu(node: ControlledProcess) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of ``node``'s process."""
    assert node.proc is not None
    tick = os.sysconf("SC_CLK_TCK")
    cpu = {}
    task_dir = Path(f"/proc/{node.proc.pid}/task")
    for task in task_dir.iterdir():
        try:
            fields = (task / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        cpu[int(task.name)] = (int(fields[11]) + int(fields[12])) / tick
    return cpu


def add_load_options(parser: argparse.ArgumentParser, *, count: int) -> None:
    """The load and timing options every cluster run takes (count, window, ticks)."""
    parser.add_argument("--count", type=int, default=count)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--tick-ms", type=float, default=5.0)
    parser.add_argument("--append-ms", type=float, default=10.0)


def profile_main(argv: list[str]) -> int:
    """``profile``: a segstore (or stock) cluster under C1's load, every node process
    sampled by py-spy (all threads, raw collapsed stacks); prints the heaviest frames
    per node (self and inclusive share of the samples) and writes the raw files."""
    import shutil
    import subprocess
    import tempfile
    from collections import Counter

    parser = argparse.ArgumentParser(prog="cluster_workloads.py profile")
    parser.add_argument("--kind", choices=["segstore", "memory", "file"], default="segstore")
    add_load_options(parser, count=40_000)
    parser.add_argument("--rate", type=int, default=200)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--gil", action="store_true", help="only samples holding the GIL")
    parser.add_argument("--out", default=None, help="directory for the raw stacks")
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    scratch = Path(tempfile.mkdtemp(prefix="segstore-cluster-profile-"))
    out = Path(args.out) if args.out else scratch / "profiles"
    out.mkdir(parents=True, exist_ok=True)
    if args.kind == "segstore":
        nodes = segstore_cluster(scratch, tick_ms=args.tick_ms, append_ms=args.append_ms)
    else:
        nodes = stock_cluster(
            scratch, journal=args.kind, tick_ms=args.tick_ms, append_ms=args.append_ms
        )
    spies = []
    try:
        leader = leader_of(nodes)
        leader.call("submit", partition=0, payload="warmup", timeout_s=60)
        for node in nodes:
            assert node.proc is not None
            role = "leader" if node is leader else "follower"
            raw = out / f"{node.name}-{role}.txt"
            command = [py_spy, "record", "--pid", str(node.proc.pid), "--threads"]
            command += ["--format", "raw", "--nolineno", "--rate", str(args.rate)]
            command += ["--output", str(raw), "--nonblocking"]
            command += ["--gil"] if args.gil else []
            spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            spies.append((spy, raw, f"{node.name} ({role})"))
        time.sleep(1.0)
        before = {node.name: _thread_cpu(node) for node in nodes}
        metrics = run_load(leader, args.count, args.window, "prof")
        print(json.dumps(metrics))
        for node in nodes:
            after = _thread_cpu(node)
            used = {tid: after[tid] - before[node.name].get(tid, 0.0) for tid in after}
            total_cpu = sum(used.values())
            busiest = sorted(used.items(), key=lambda item: -item[1])[:8]
            print(
                f"{node.name}: {total_cpu:.2f} CPU-s; by thread id: "
                + ", ".join(f"{tid} {cpu:.2f}" for tid, cpu in busiest)
            )
    finally:
        for spy, _, _ in spies:
            spy.send_signal(2)  # SIGINT: py-spy writes its output and exits
        for spy, _, _ in spies:
            spy.wait(timeout=60)
        for node in nodes:
            node.close()
    for _, raw, label in spies:
        own: Counter[str] = Counter()
        inclusive: Counter[str] = Counter()
        threads: Counter[str] = Counter()
        total = 0
        for line in raw.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            count = int(count_text)
            frames = stack.split(";")
            total += count
            threads[frames[0]] += count
            own[frames[-1]] += count
            for frame in set(frames[1:]):
                inclusive[frame] += count
        print(f"\n== {label}: {total} samples ({total / args.rate:.1f} thread-s)")
        for name, count in threads.most_common(8):
            print(f"  thread {100 * count / total:5.1f}%  {name}")
        print("  -- self")
        for name, count in own.most_common(args.top):
            print(f"  {100 * count / total:5.1f}%  {name}")
        print("  -- inclusive")
        for name, count in inclusive.most_common(args.top):
            print(f"  {100 * count / total:5.1f}%  {name}")
    print(f"\nraw stacks in {out}")
    return 0


# -- the stock pysyncobj node (B1/B2) ------------------------------------------------


def stock_node_main(argv: list[str]) -> int:
    """A stock pysyncobj node speaking the same JSON-line subset as ``segstore node``."""
    from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated

    parser = argparse.ArgumentParser(prog="cluster_workloads.py stock-node")
    parser.add_argument("--address", required=True)
    parser.add_argument("--peer", action="append", default=[])
    parser.add_argument("--journal", choices=["memory", "file"], required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--tick-ms", type=float, default=5.0)
    parser.add_argument("--append-ms", type=float, default=10.0)
    args = parser.parse_args(argv)

    class StockPartitions(SyncObj):  # type: ignore[misc]
        def __init__(self, conf: Any) -> None:
            self.parts: dict[int, list[bytes]] = {}
            super().__init__(args.address, args.peer, conf=conf)

        @replicated  # type: ignore[misc]
        def put(self, pid: int, payload: bytes) -> int:
            part = self.parts.setdefault(pid, [])
            part.append(payload)
            return len(part)

    journal_file = None
    if args.journal == "file":
        journal_file = os.path.join(args.dir, args.address.replace(":", "_") + ".journal")
    conf = SyncObjConf(
        journalFile=journal_file,
        autoTickPeriod=args.tick_ms / 1000,
        appendEntriesPeriod=args.append_ms / 1000,
        raftMinTimeout=1.0,
        raftMaxTimeout=2.5,
        connectionTimeout=3.5,
        connectionRetryTime=0.5,
        leaderFallbackTimeout=5.0,
        appendEntriesBatchSizeBytes=1 << 18,
        logCompactionMinEntries=2**62,
        logCompactionMinTime=1e12,
    )
    obj = StockPartitions(conf)
    load: dict[str, Any] = {}

    def reply(data: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(data) + "\n")
        sys.stdout.flush()

    def status() -> dict[str, Any]:
        raw = obj.getStatus()
        leader = raw.get("leader")
        return {
            "address": args.address,
            "leader": None if leader is None else leader.id,
            "commit_index": raw["commit_idx"],
        }

    def start_load(spec: dict[str, Any]) -> None:
        count, window = int(spec["count"]), int(spec["window"])
        slots = threading.Semaphore(window)
        lock = threading.Lock()
        latencies: list[float] = []
        state = {"acked": 0, "failed": 0, "outstanding": 0, "sent": False, "end": 0.0}
        done = threading.Event()
        started = time.monotonic()

        def finish(sent: float, _res: Any, err: Any) -> None:
            with lock:
                if err == FAIL_REASON.SUCCESS:
                    state["acked"] += 1
                    latencies.append(time.monotonic() - sent)
                else:
                    state["failed"] += 1
                state["outstanding"] -= 1
                if state["sent"] and state["outstanding"] == 0:
                    state["end"] = time.monotonic()
                    done.set()
            slots.release()

        def run() -> None:
            for i in range(count):
                slots.acquire()
                payload = f"{spec['prefix']}{i}".encode().ljust(int(spec["payload_bytes"]), b".")
                with lock:
                    state["outstanding"] += 1
                sent = time.monotonic()
                obj.put(
                    i % int(spec["partitions"]),
                    payload,
                    callback=lambda res, err, t=sent: finish(t, res, err),
                )
            with lock:
                state["sent"] = True
                if state["outstanding"] == 0:
                    state["end"] = time.monotonic()
                    done.set()

        load.update(latencies=latencies, state=state, done=done, started=started, lock=lock)
        threading.Thread(target=run, daemon=True).start()

    def report() -> dict[str, Any]:
        with load["lock"]:
            lat = sorted(load["latencies"])
            state = dict(load["state"])
        end = state["end"] or time.monotonic()

        def pct(q: float) -> float | None:
            return 1000 * lat[min(len(lat) - 1, int(q * len(lat)))] if lat else None

        return {
            "done": load["done"].is_set(),
            "acked": state["acked"],
            "failed": state["failed"],
            "seconds": end - load["started"],
            "p50_ms": pct(0.5),
            "p99_ms": pct(0.99),
        }

    for line in sys.stdin:
        try:
            cmd = json.loads(line)
            op = cmd["op"]
            if op in ("status", "wait_leader"):
                deadline = time.monotonic() + float(cmd.get("timeout_s", 0))
                while op == "wait_leader" and status()["leader"] is None:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
                reply({"ok": True, "status": status()})
            elif op == "submit":
                result = obj.put(0, str(cmd["payload"]).encode(), sync=True, timeout=10)
                reply({"ok": True, "result": result})
            elif op == "load":
                start_load(cmd)
                reply({"ok": True})
            elif op == "load_wait":
                load["done"].wait(float(cmd.get("timeout_s", 60)))
                reply({"ok": True, "load": report()})
            elif op == "close":
                obj.destroy()
                reply({"ok": True})
                return 0
            else:
                raise ValueError(f"unknown op {op}")
        except Exception as exc:
            reply({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "stock-node":
        sys.exit(stock_node_main(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "profile":
        sys.exit(profile_main(sys.argv[2:]))
    print(__doc__)
    sys.exit(2)

"""``segstore demo``: the cluster demo (three node processes, the leader SIGKILLed,
failover, catch-up, the convergence and exactly-once check), ``segstore demo
--embedded`` (writer process, SIGKILL, ``segstore stats`` of what it left, recovery and
the model check) and ``segstore demo --aof``, each run as a real command in a
subprocess, as a user runs them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

TIMEOUT = 180.0  # seconds; only ever a bound against hangs


def segstore(*argv: str) -> subprocess.CompletedProcess[str]:
    """``segstore argv...`` in a fresh interpreter: exit status and output."""
    return subprocess.run(
        [sys.executable, "-m", "segstore.cli", *argv],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def test_pipeline_demo_kills_recovers_and_passes_the_model_check(tmp_path: Path) -> None:
    result = segstore("demo", "--embedded", "--seconds", "2", "--dir", str(tmp_path))
    out = result.stdout
    assert result.returncode == 0, f"stdout:\n{out}\nstderr:\n{result.stderr}"
    assert "MODEL MISMATCH" not in result.stderr

    # The writer ran, printed its status and was killed.
    assert re.search(r"^t=\s*[\d.]+s\s+submitted\s+[\d,]+\s+durable", out, re.M), out
    killed = re.search(r"^SIGKILL sent to the writer at durable index ([\d,]+)$", out, re.M)
    assert killed, out
    durable_at_kill = int(killed.group(1).replace(",", ""))
    assert durable_at_kill > 0

    # segstore stats of what the killed writer left, printed before the recovery.
    stats_at = out.index("segstore stats ")
    recovered_at = out.index("recovered: ")
    assert stats_at < recovered_at
    stats = out[stats_at:recovered_at]
    assert str(tmp_path / "store") in stats.splitlines()[0]
    bound = re.search(r"^  min required raft\s+(\d+)\s+\(bound by ([^;]+);", stats, re.M)
    assert bound, stats
    holders = [name.strip() for name in bound.group(2).split(",")]
    assert holders
    for name in holders:
        assert re.fullmatch(r"partition \d+|routed_raft_index|applied_raft_floor", name), name
    held = re.search(r"^  held back by\s+(.+)$", stats, re.M)
    assert held, stats
    assert re.match(r"partition \d+|no partition \(|nothing: ", held.group(1)), held.group(1)

    # Recovery and the model check.
    recovered = re.search(r"durable index ([\d,]+), ([\d,]+) entries applied", out)
    assert recovered, out
    durable = int(recovered.group(1).replace(",", ""))
    assert durable >= durable_at_kill  # nothing reported durable was lost
    assert int(recovered.group(2).replace(",", "")) == durable
    assert re.search(
        r"^model check: all 64 partition states equal a model fed every committed entry "
        r"exactly once; nothing reported durable was lost$",
        out,
        re.M,
    ), out
    assert re.search(r"^after recovery: watermark [\d,]+ .* then [\d,]+", out, re.M), out

    # With --dir the data stays, and it is a sound store after the demo.
    verify = segstore("verify", str(tmp_path / "store"))
    assert verify.returncode == 0, f"stdout:\n{verify.stdout}\nstderr:\n{verify.stderr}"


def test_aof_demo(tmp_path: Path) -> None:
    result = segstore("demo", "--aof", "--records", "20000", "--dir", str(tmp_path))
    out = result.stdout
    assert result.returncode == 0, f"stdout:\n{out}\nstderr:\n{result.stderr}"
    assert re.search(r"^appended\s+20,000 records", out, re.M), out
    assert re.search(r"verified\s+20000 records: every CRC32C, index and length OK", out), out
    assert re.search(r"records\s+\[1, 20000\]", out), out


def test_cluster_demo_fails_over_and_converges_exactly_once(tmp_path: Path) -> None:
    result = segstore("demo", "--count", "1500", "--dir", str(tmp_path))
    out = result.stdout
    assert result.returncode == 0, f"stdout:\n{out}\nstderr:\n{result.stderr}"
    assert "MISMATCH" not in result.stderr
    leader = re.search(r"^node (\d) leads \(term 1\); node (\d) submits$", out, re.M)
    assert leader, out
    assert f"SIGKILL sent to leader node {leader.group(1)}" in out
    failover = re.search(r"failover: node (\d) leads term (\d+)", out)
    assert failover and failover.group(1) != leader.group(1), out
    assert int(failover.group(2)) > 1
    assert re.search(rf"^node {leader.group(1)} caught up; failover took [\d.]+ s$", out, re.M)
    assert re.search(r"^load done: 1,500 acknowledged, 0 failed", out, re.M), out
    assert re.search(
        r"^convergence: all 3 nodes hold identical states in all 64 partitions; all 1,500 "
        r"acknowledged submissions applied exactly once on every node$",
        out,
        re.M,
    ), out
    assert len(re.findall(r"^segstore stats .*/n[123]/store$", out, re.M)) == 3, out
    # With --dir the data stays: every node's store verifies after the demo.
    for node in ("n1", "n2", "n3"):
        verify = segstore("verify", str(tmp_path / node / "store"))
        assert verify.returncode == 0, f"{node}: {verify.stdout}\n{verify.stderr}"

"""``segstore demo``: the pipeline demo (writer process, SIGKILL, ``segstore stats`` of
what it left, recovery and the model check) and ``segstore demo --aof``, each run as a
real command in a subprocess, as a user runs them."""

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
    result = segstore("demo", "--seconds", "2", "--dir", str(tmp_path))
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

"""``segstore.node_process``: driving JSON-line control processes."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from segstore.node_process import ControlledProcess, NodeProcessError

# Replies {"ok": true, "op": <op>}; sleeps 1.5 s before answering "slow"; "fail"
# replies an error.
FAKE_NODE = """
import json, sys, time
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["op"] == "slow":
        time.sleep(1.5)
    ok = cmd["op"] != "fail"
    print(json.dumps({"ok": ok, "op": cmd["op"], "error": None if ok else "refused"}),
          flush=True)
    if cmd["op"] == "close":
        break
"""


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[ControlledProcess]:
    script = tmp_path / "fake_node.py"
    script.write_text(FAKE_NODE)
    process = ControlledProcess([sys.executable, str(script)], "fake", tmp_path / "err")
    process.start()
    yield process
    process.close()


def test_a_timed_out_command_does_not_shift_the_later_replies(fake: ControlledProcess) -> None:
    with pytest.raises(NodeProcessError, match="no reply to slow"):
        fake.call("slow", timeout=0.2)
    assert fake.call("status", timeout=10)["op"] == "status"  # not "slow"'s late reply
    assert fake.call("stats", timeout=10)["op"] == "stats"


def test_error_replies_and_exits_raise(fake: ControlledProcess) -> None:
    with pytest.raises(NodeProcessError, match="fail failed: refused"):
        fake.call("fail")
    fake.close()
    assert not fake.running
    with pytest.raises(NodeProcessError):
        fake.call("status", timeout=5)

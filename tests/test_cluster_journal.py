"""The pysyncobj adapter, scripted without a network (issue #5, section 2).

pysyncobj's own append_entries handler is driven with hand-written messages against
a :class:`StoreJournal` over a real :class:`SegmentedLogStore`: re-sent entries it
"deletes" and re-adds leave the store untouched, a real term conflict above the
commit index truncates with ``write_at``, and one at or below it is refused loudly
(fail-stop) with the committed entries intact. Also: group commit before sending,
durable term and vote, and the loopback rule.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import pytest
from pysyncobj import SyncObjConf
from pysyncobj.node import TCPNode
from pysyncobj.transport import TCPTransport, Transport

from segstore.cli import main
from segstore.cluster import Node, RecordingStateMachine, check_bind
from segstore.errors import ClusterError, InsecureBindError, TruncationRefusedError
from segstore.raft.host import FileStateMgr
from segstore.raft.log_entry import LogEntry, LogValType
from segstore.raft.partition_entry import encode_entry
from segstore.raft.pysyncobj_host import (
    GroupCommitTransport,
    StoreJournal,
    _SegstoreSyncObj,
    register_journal,
)
from segstore.raft.segmented_store import SegmentedLogStore
from segstore.raft.state_mgr import ClusterConfig, ServerConfig

LEADER = "127.0.0.1:2"


class _FakeTransport(Transport):  # type: ignore[misc]
    """A transport that is always ready and records what would be sent."""

    def __init__(self, syncObj: Any, selfNode: Any, otherNodes: Any) -> None:
        super().__init__(syncObj, selfNode, otherNodes)
        self.sent: list[tuple[Any, Any]] = []

    def send(self, node: Any, message: Any) -> bool:
        self.sent.append((node, message))
        return True

    def addNode(self, node: Any) -> None:
        pass

    def dropNode(self, node: Any) -> None:
        pass

    def destroy(self) -> None:
        pass


def _command(text: str, pid: int = 0) -> bytes:
    """A regular command as the host submits it: the type byte, then the value."""
    return bytes((0,)) + encode_entry(pid, text.encode())


def _state(tmp_path: Path, store: SegmentedLogStore) -> FileStateMgr:
    config = ClusterConfig(servers=(ServerConfig(1, "127.0.0.1:1"),))
    return FileStateMgr(str(tmp_path / "raft_state.json"), 1, config, store)


@pytest.fixture
def follower(tmp_path: Path) -> Any:
    store = SegmentedLogStore.open(tmp_path / "store", partitions=4)
    journal = StoreJournal(store, _state(tmp_path, store))
    conf = SyncObjConf(
        autoTick=False,
        journalFile=register_journal(journal),
        dynamicMembershipChange=True,
        logCompactionMinEntries=2**62,
        logCompactionMinTime=1e12,
    )
    syncobj = _SegstoreSyncObj("127.0.0.1:1", [LEADER], conf=conf, transportClass=_FakeTransport)
    yield syncobj, journal, store
    store.close()


def _append(
    syncobj: Any, term: int, prev: tuple[int, int], entries: list[Any], commit: int
) -> None:
    message = {
        "type": "append_entries",
        "term": term,
        "commit_index": commit,
        "entries": entries,
        "prevLogIdx": prev[0],
        "prevLogTerm": prev[1],
    }
    syncobj._SyncObj__onMessageReceived(TCPNode(LEADER), message)


def _stored(store: SegmentedLogStore) -> list[tuple[int, bytes]]:
    entries = store.log_entries(store.start_index(), store.next_slot())
    assert entries is not None
    return [(e.term, e.value) for e in entries]


def test_resent_entries_are_kept_not_rewritten(follower: Any) -> None:
    syncobj, journal, store = follower
    first = [(_command(f"e{i}"), i, 1) for i in range(2, 12)]
    _append(syncobj, 1, (1, 0), first, commit=8)
    assert store.next_slot() == 12
    assert journal.commit_index == 8
    journal.flush()
    before = _stored(store)
    flushes = journal.counters["flushes"]
    # A re-send overlapping the log: pysyncobj calls deleteEntriesFrom(4) and re-adds.
    _append(syncobj, 1, (3, 1), first[2:5], commit=8)
    assert journal.counters["deferred_deletes"] >= 1
    assert journal.counters["skipped_matching"] == 3
    assert journal.counters["truncations"] == 0
    assert _stored(store) == before  # nothing rewritten, nothing cut
    assert not journal.dirty and journal.counters["flushes"] == flushes
    # The visible end never drops below the commit index.
    assert len(journal) >= 8
    assert journal[-1][1] >= 8


def test_pysyncobj_apply_of_a_regular_command_unpickles_nothing(follower: Any) -> None:
    syncobj, journal, _ = follower
    # A regular command is the type byte and our value, not a pickle: pysyncobj's own
    # apply would fail to unpickle it; results come from the SegmentedStateMachine.
    assert syncobj._SyncObj__doApplyCommand(_command("not a pickle")) is None
    _append(syncobj, 1, (1, 0), [(_command(f"e{i}"), i, 1) for i in range(2, 6)], commit=5)
    syncobj._SyncObj__raftLastApplied = 1
    syncobj.doTick(0.0)  # pysyncobj applies entries 2..5 through the override
    assert syncobj.raftLastApplied == 5
    assert journal[2][0] == _command("e3")


def test_real_conflict_above_commit_truncates_with_write_at(follower: Any) -> None:
    syncobj, journal, store = follower
    _append(syncobj, 1, (1, 0), [(_command(f"e{i}"), i, 1) for i in range(2, 12)], commit=8)
    _append(syncobj, 2, (9, 1), [(_command("new10"), 10, 2)], commit=8)
    assert journal.counters["truncations"] == 1
    assert store.next_slot() == 11
    assert store.term_at(10) == 2
    entry = store.entry_at(10)
    assert entry is not None and entry.value.endswith(b"new10")
    assert store.term_at(9) == 1


def test_conflict_at_or_below_commit_is_refused_and_nothing_lost(follower: Any) -> None:
    syncobj, journal, store = follower
    _append(syncobj, 1, (1, 0), [(_command(f"e{i}"), i, 1) for i in range(2, 12)], commit=8)
    journal.flush()
    before = _stored(store)
    with pytest.raises(TruncationRefusedError) as caught:
        # A "leader" of term 3 claims index 6 holds another entry: 6 is committed.
        _append(syncobj, 3, (5, 1), [(_command("evil6"), 6, 3)], commit=8)
    assert caught.value.index == 6 and caught.value.commit_index == 8
    assert journal.counters["refused_truncations"] == 1
    assert _stored(store) == before
    assert store.last_durable_index() == 11
    # Fail-stop: the journal accepts nothing more.
    assert journal.failure is caught.value
    with pytest.raises(ClusterError):
        journal.add(_command("later"), 12, 3)


def test_restart_keeps_term_vote_and_commit(tmp_path: Path) -> None:
    store = SegmentedLogStore.open(tmp_path / "store", partitions=4)
    state = _state(tmp_path, store)
    journal = StoreJournal(store, state)
    journal.setCurrentTerm(5, "127.0.0.1:3")
    journal.add(bytes((1,)), 1, 0)
    journal.add(_command("a"), 2, 5)
    journal.setRaftCommitIndex(2)
    journal.flush()
    journal.save_commit_index(force=True)
    store.close()
    store = SegmentedLogStore.open(tmp_path / "store", partitions=4)
    again = StoreJournal(store, _state(tmp_path, store))
    assert again.getCurrentTerm() == 5
    assert again.getVotedForNodeId() == "127.0.0.1:3"
    assert again.getRaftCommitIndex() == 2
    assert len(again) == 2 and again[-1][2] == 5
    assert again[1][0] == _command("a")
    with pytest.raises(ValueError, match="move back"):
        _state(tmp_path, store).save_vote(4, None)
    store.close()


def test_group_commit_one_flush_before_held_messages(tmp_path: Path, monkeypatch: Any) -> None:
    store = SegmentedLogStore.open(tmp_path / "store", partitions=4)
    journal = StoreJournal(store, _state(tmp_path, store))
    sent: list[tuple[Any, int]] = []

    def tcp_send(self: Any, node: Any, message: Any) -> bool:
        sent.append((message, store.last_durable_index()))
        return True

    monkeypatch.setattr(TCPTransport, "send", tcp_send)
    transport = object.__new__(GroupCommitTransport)
    transport._journal = journal
    transport._outbox = []
    transport.held_messages = 0
    journal.add(bytes((1,)), 1, 0)
    for i in range(2, 102):
        journal.add(_command(f"e{i}"), i, 1)
        transport.send("peer", {"ack": i})
    assert sent == []  # nothing leaves while appends are not durable
    transport.flush_and_send()
    assert journal.counters["flushes"] == 1  # one fdatasync for 101 entries
    assert [m["ack"] for m, _ in sent] == list(range(2, 102))
    assert all(durable >= 101 for _, durable in sent)
    transport.send("peer", {"heartbeat": True})  # clean journal: sent at once
    assert sent[-1][0] == {"heartbeat": True}
    store.close()


def test_entries_map_to_partitions_and_pysyncobj_commands(tmp_path: Path) -> None:
    store = SegmentedLogStore.open(tmp_path / "store", partitions=4)
    journal = StoreJournal(store, _state(tmp_path, store))
    journal.add(bytes((1,)), 1, 0)  # pysyncobj's initial no-op
    journal.add(_command("x", pid=3), 2, 1)
    membership = bytes((2,)) + pickle.dumps(["add", "127.0.0.1:9", None])
    journal.add(membership, 3, 1)
    journal.flush()
    assert store.entry_at(1) == LogEntry(0, bytes((1,)), LogValType.custom)
    assert store.partition_of(2) == (3, 1)
    assert store.entry_at(3) == LogEntry(1, membership, LogValType.conf)
    assert [e[1] for e in journal[0:3]] == [1, 2, 3]
    assert journal[1][0] == bytes((0,)) + encode_entry(3, b"x")  # rebuilt from the value
    assert journal[2][0] == membership
    store.close()


@pytest.mark.parametrize("address", ["0.0.0.0:7000", "10.1.2.3:7000", "example.com:7000"])
def test_non_loopback_without_password_is_refused(tmp_path: Path, address: str) -> None:
    with pytest.raises(InsecureBindError, match="password"):
        Node(1, tmp_path, address, [], 4, lambda pid: RecordingStateMachine())
    with pytest.raises(InsecureBindError):
        Node(1, tmp_path, "127.0.0.1:7000", [address], 4, lambda pid: RecordingStateMachine())
    check_bind("127.0.0.1:7000", ["localhost:7001", "[::1]:7002"], None)
    assert not os.listdir(tmp_path)  # refused before touching the directory


def test_cli_node_refuses_non_loopback(tmp_path: Path, capsys: Any) -> None:
    code = main(["node", "--id", "1", "--dir", str(tmp_path / "n"), "--address", "0.0.0.0:7000"])
    assert code == 2
    assert "password" in capsys.readouterr().err
    assert not (tmp_path / "n").exists()

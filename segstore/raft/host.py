"""The engine-neutral host interface, and the durable Raft state a host keeps.

Layer 8 of DESIGN.md: a *host* runs the segmented log store and the segmented state
machine under a real Raft engine, across processes. :class:`RaftHost` is everything
:mod:`segstore.cluster` needs from an engine, so another engine (a NuRaft binding) can
replace pysyncobj (:mod:`segstore.raft.pysyncobj_host`) without touching the node:

* ``start()`` / ``close()``;
* ``submit(value, on_failed)``: replicate one app_log value (``encode_entry``); the
  result arrives through the state machine's applier, never through the engine, so
  ``on_failed(reason)`` is the only engine feedback (the outcome is then unknown:
  the node retries with the same request id);
* ``add_member`` / ``remove_member``;
* ``status()``: a :class:`HostStatus` snapshot, safe to read from any thread.

The host owns three duties the engine alone does not meet (docs/CLUSTER.md):
group commit before any message leaves, truncation only on real term conflicts and
never at or below the commit index, and term and vote durable before any message that
depends on them. The last one goes through :class:`FileStateMgr`, NuRaft's
``state_mgr`` over one small JSON file written temp + fsync + rename + fsync(dir).
"""

from __future__ import annotations

import abc
import json
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from segstore.errors import CorruptionError, InvalidArgumentError
from segstore.raft.log_store import LogStore
from segstore.raft.state_mgr import ClusterConfig, ServerConfig, ServerState, StateMgr

STATE_FORMAT_VERSION: Final = 1
"""``format`` field of the state file; a different one is refused."""

FailedCallback = Callable[[str], None]
"""``on_failed(reason)``: the engine gave up on a submission (outcome unknown)."""

DoneCallback = Callable[[bool, str], None]
"""``done(ok, reason)``: a membership change finished (``reason`` when not ok)."""


@dataclass(frozen=True)
class HostStatus:
    """What a host reports about its engine, as of its last tick.

    Attributes:
        endpoint: this member's address.
        leader: the leader's address as this member knows it (None: no leader).
        is_leader: this member is the leader.
        term: the current term.
        commit_index: the highest raft index known committed (never decreases).
        last_index: the last raft index of the engine's log view.
        durable_index: the store's durable index.
        applied_handed_index: raft index up to which committed entries were handed to
            the state machine.
        members: every voting member's address, this one included, sorted.
        match_indices: on the leader, each follower's match index.
        connected: each other member's address and whether it is connected.
        failed: why the host stopped (fail-stop), or None.
        counters: the adapter's counters (flushes, skipped re-adds, truncations...).
        log_start_index: the first raft index of the engine's log view (entries
            below it are compacted, or covered by an installed snapshot).
        snapshot_index: the last raft index of the latest snapshot created or
            installed (0: none).
        installed_snapshot_index: the last raft index of the latest snapshot
            installed from the leader in this process (0: none); the state machine
            jumped there, so entries up to it are never handed in.
    """

    endpoint: str
    leader: str | None = None
    is_leader: bool = False
    term: int = 0
    commit_index: int = 0
    last_index: int = 0
    durable_index: int = 0
    applied_handed_index: int = 0
    members: tuple[str, ...] = ()
    match_indices: Mapping[str, int] = field(default_factory=dict)
    connected: Mapping[str, bool] = field(default_factory=dict)
    failed: str | None = None
    counters: Mapping[str, int] = field(default_factory=dict)
    log_start_index: int = 0
    snapshot_index: int = 0
    installed_snapshot_index: int = 0


class RaftHost(abc.ABC):
    """One member of a Raft group, running a segmented store and state machine."""

    @abc.abstractmethod
    def start(self) -> None:
        """Start the engine (bind, connect, elect); returns without waiting for a leader."""

    @abc.abstractmethod
    def submit(self, value: bytes, on_failed: FailedCallback) -> None:
        """Replicate one app_log value (built with ``encode_entry``); never blocks."""

    @abc.abstractmethod
    def add_member(self, endpoint: str, done: DoneCallback) -> None:
        """Add a member (started beforehand with every current member as peer)."""

    @abc.abstractmethod
    def remove_member(self, endpoint: str, done: DoneCallback) -> None:
        """Remove a member."""

    def compact(self, required_raft_index: int) -> None:
        """Allow compacting the log below ``required_raft_index`` (the node's
        watermark: the oldest raft index anyone on this node still needs). The host
        compacts at its own pace, keeping its reserved tail; engines that never
        compact ignore it."""
        return None  # optional: an engine that never compacts needs nothing

    @abc.abstractmethod
    def status(self) -> HostStatus:
        """The engine's state as of its last tick."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop the engine; make the log and the commit index durable."""


def fsync_directory(path: str) -> None:
    """fsync a directory, so a rename inside it is durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomically(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data``: write temp, fsync, rename, fsync directory."""
    temp = path + ".tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
    fsync_directory(os.path.dirname(os.path.abspath(path)))


class FileStateMgr(StateMgr):
    """NuRaft ``state_mgr`` over one JSON file: cluster config, term, vote and the
    commit index, each change durable before the call returns.

    pysyncobj names members by address, not by id, so the vote is kept as the
    address voted for (``voted_for_endpoint``); :meth:`read_state` maps it to the
    member's id through the saved config (-1 when the config does not name it).
    """

    def __init__(
        self, path: str, server_id: int, initial_config: ClusterConfig, log_store: LogStore
    ) -> None:
        if initial_config.get_server(server_id) is None:
            raise InvalidArgumentError(f"the initial config does not name server {server_id}")
        self.path = path
        self._server_id = server_id
        self._log_store = log_store
        self._lock = threading.Lock()
        self._data: dict[str, Any] = {
            "format": STATE_FORMAT_VERSION,
            "term": 0,
            "voted_for_endpoint": None,
            "commit_index": 0,
            "config": asdict(initial_config),
        }
        if os.path.exists(path):
            self._data = self._load(path)

    @staticmethod
    def _load(path: str) -> dict[str, Any]:
        with open(path, "rb") as file:
            raw = file.read()
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise CorruptionError(path, 0, f"raft state is not JSON: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT_VERSION:
            raise CorruptionError(path, 0, f"raft state format {STATE_FORMAT_VERSION} expected")
        for key in ("term", "commit_index"):
            value = data.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise CorruptionError(path, 0, f"raft state {key} is {value!r}")
        voted = data.get("voted_for_endpoint")
        if voted is not None and not isinstance(voted, str):
            raise CorruptionError(path, 0, f"raft state voted_for_endpoint is {voted!r}")
        members = data.get("members")
        if members is not None and not (
            isinstance(members, dict)
            and isinstance(members.get("index"), int)
            and isinstance(members.get("members"), list)
            and all(isinstance(m, str) for m in members["members"])
        ):
            raise CorruptionError(path, 0, f"raft state members is {members!r}")
        return data

    def _store(self) -> None:
        blob = json.dumps(self._data, sort_keys=True).encode()
        write_file_atomically(self.path, blob)

    # -- the NuRaft contract -----------------------------------------------------------

    def load_config(self) -> ClusterConfig:
        with self._lock:
            raw = dict(self._data["config"])
        servers = tuple(ServerConfig(**server) for server in raw.pop("servers"))
        return ClusterConfig(**raw, servers=servers)

    def save_config(self, config: ClusterConfig) -> None:
        with self._lock:
            self._data["config"] = asdict(config)
            self._store()

    def save_state(self, state: ServerState) -> None:
        endpoint = None
        if state.voted_for >= 0:
            server = self.load_config().get_server(state.voted_for)
            if server is None:
                raise InvalidArgumentError(f"server {state.voted_for} is not in the config")
            endpoint = server.endpoint
        self.save_vote(state.term, endpoint)

    def read_state(self) -> ServerState | None:
        term, endpoint = self.vote()
        if term == 0 and endpoint is None:
            return None
        voted = -1
        for server in self.load_config().servers:
            if server.endpoint == endpoint:
                voted = server.id
        return ServerState(term=term, voted_for=voted)

    def load_log_store(self) -> LogStore:
        return self._log_store

    def server_id(self) -> int:
        return self._server_id

    def system_exit(self, exit_code: int) -> None:
        raise SystemExit(exit_code)

    # -- what a host needs beyond it -------------------------------------------------

    def save_vote(self, term: int, voted_for_endpoint: str | None) -> None:
        """Durably record the term and the address voted for in it (None: nobody)."""
        if isinstance(term, bool) or not isinstance(term, int) or term < 0:
            raise InvalidArgumentError(f"term must be a non-negative int, not {term!r}")
        with self._lock:
            if term < self._data["term"]:
                raise InvalidArgumentError(
                    f"term would move back from {self._data['term']} to {term}"
                )
            self._data["term"] = term
            self._data["voted_for_endpoint"] = voted_for_endpoint
            self._store()

    def vote(self) -> tuple[int, str | None]:
        """``(term, address voted for in it)``."""
        with self._lock:
            return int(self._data["term"]), self._data["voted_for_endpoint"]

    def save_commit_index(self, commit_index: int) -> None:
        """Durably record a commit index (ignored if not above the stored one)."""
        with self._lock:
            if commit_index <= self._data["commit_index"]:
                return
            self._data["commit_index"] = commit_index
            self._store()

    def commit_index(self) -> int:
        """The last commit index saved."""
        with self._lock:
            return int(self._data["commit_index"])

    def save_members(self, index: int, members: list[str]) -> None:
        """Durably record the voting members (addresses) as of raft ``index``: the
        membership a compaction or a snapshot install would otherwise lose (the log
        entries that changed it are gone)."""
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise InvalidArgumentError(f"index must be a non-negative int, not {index!r}")
        if not all(isinstance(member, str) for member in members):
            raise InvalidArgumentError("members must be addresses (str)")
        with self._lock:
            self._data["members"] = {"index": index, "members": sorted(members)}
            self._store()

    def members(self) -> tuple[int, frozenset[str]] | None:
        """``(index, members)`` last saved by :meth:`save_members`, or None."""
        with self._lock:
            saved = self._data.get("members")
        if saved is None:
            return None
        return int(saved["index"]), frozenset(saved["members"])


__all__ = [
    "DoneCallback",
    "FailedCallback",
    "FileStateMgr",
    "HostStatus",
    "RaftHost",
    "fsync_directory",
    "write_file_atomically",
]

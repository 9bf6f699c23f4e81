"""The ``StateMgr`` contract and the values it persists, after NuRaft.

Mirrors ``include/libnuraft/state_mgr.hxx`` (``state_mgr``), ``srv_state.hxx``
(``srv_state``), ``cluster_config.hxx`` and ``srv_config.hxx``. NuRaft's classes
are mutable and serialize themselves; here they are frozen values (change one
with ``dataclasses.replace``) and the serialization belongs to whichever
``StateMgr`` stores them.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

from segstore.errors import InvalidArgumentError
from segstore.raft.log_entry import U64_MAX, check_uint
from segstore.raft.log_store import LogStore

__all__ = ["ClusterConfig", "ServerConfig", "ServerState", "StateMgr"]

_I32_MIN = -(2**31)
_I32_MAX = 2**31 - 1


def _check_i32(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentError(f"{name} must be an int, got {type(value).__name__}")
    if not _I32_MIN <= value <= _I32_MAX:
        raise InvalidArgumentError(f"{name} must fit in an int32, got {value}")
    return value


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgumentError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def _check_str(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{name} must be a str, got {type(value).__name__}")
    return value


@dataclass(frozen=True, slots=True)
class ServerState:
    """NuRaft ``srv_state``: what a server must remember across restarts to vote safely.

    Attributes:
        term: the current term.
        voted_for: the server id voted for in ``term``; -1 for nobody.
        election_timer_allowed: False while the server must not start elections.
        catching_up: True while the server is joining and syncing its log.
        receiving_snapshot: True while a snapshot is being installed.
    """

    term: int = 0
    voted_for: int = -1
    election_timer_allowed: bool = True
    catching_up: bool = False
    receiving_snapshot: bool = False

    def __post_init__(self) -> None:
        check_uint("ServerState.term", self.term, U64_MAX)
        _check_i32("ServerState.voted_for", self.voted_for)
        _check_bool("ServerState.election_timer_allowed", self.election_timer_allowed)
        _check_bool("ServerState.catching_up", self.catching_up)
        _check_bool("ServerState.receiving_snapshot", self.receiving_snapshot)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """NuRaft ``srv_config``: one member of the cluster.

    Attributes:
        id: server id, positive.
        endpoint: address and port the member listens on.
        dc_id: datacenter id, 0 when unused.
        aux: opaque user string (NuRaft stores it as a C string: no NUL).
        learner: True for a member that neither votes nor counts for quorum.
        priority: leader-election priority; 0 never becomes leader.
    """

    id: int
    endpoint: str
    dc_id: int = 0
    aux: str = ""
    learner: bool = False
    priority: int = 1

    def __post_init__(self) -> None:
        if _check_i32("ServerConfig.id", self.id) <= 0:
            raise InvalidArgumentError(f"ServerConfig.id must be positive, got {self.id}")
        _check_str("ServerConfig.endpoint", self.endpoint)
        _check_i32("ServerConfig.dc_id", self.dc_id)
        if "\x00" in _check_str("ServerConfig.aux", self.aux):
            raise InvalidArgumentError("ServerConfig.aux must not contain NUL")
        _check_bool("ServerConfig.learner", self.learner)
        _check_i32("ServerConfig.priority", self.priority)


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """NuRaft ``cluster_config``: the membership as of one config log entry.

    Attributes:
        log_idx: index of the ``conf`` log entry that set this config (0 initially).
        prev_log_idx: ``log_idx`` of the config this one replaced.
        async_replication: NuRaft's asynchronous replication flag.
        user_ctx: opaque user data carried with the config.
        servers: the members, in NuRaft's list order.
    """

    log_idx: int = 0
    prev_log_idx: int = 0
    async_replication: bool = False
    user_ctx: str = ""
    servers: tuple[ServerConfig, ...] = ()

    def __post_init__(self) -> None:
        check_uint("ClusterConfig.log_idx", self.log_idx)
        check_uint("ClusterConfig.prev_log_idx", self.prev_log_idx)
        _check_bool("ClusterConfig.async_replication", self.async_replication)
        _check_str("ClusterConfig.user_ctx", self.user_ctx)
        servers: object = self.servers
        if isinstance(servers, list):
            object.__setattr__(self, "servers", tuple(servers))
        elif not isinstance(servers, tuple):
            raise InvalidArgumentError(
                f"ClusterConfig.servers must be a tuple, got {type(servers).__name__}"
            )
        ids: set[int] = set()
        for server in self.servers:
            if not isinstance(server, ServerConfig):
                raise InvalidArgumentError(
                    f"ClusterConfig.servers holds a {type(server).__name__}, not a ServerConfig"
                )
            if server.id in ids:
                raise InvalidArgumentError(f"ClusterConfig.servers repeats id {server.id}")
            ids.add(server.id)

    def get_server(self, server_id: int) -> ServerConfig | None:
        """The member with ``server_id``, or None (NuRaft ``get_server``)."""
        for server in self.servers:
            if server.id == server_id:
                return server
        return None


class StateMgr(abc.ABC):
    """NuRaft ``state_mgr``: persists config and vote state, and hands out the log store."""

    @abc.abstractmethod
    def load_config(self) -> ClusterConfig:
        """The last saved cluster config; on first start, an initial config that
        includes this server (never None, as NuRaft requires)."""

    @abc.abstractmethod
    def save_config(self, config: ClusterConfig) -> None:
        """Durably save ``config``."""

    @abc.abstractmethod
    def save_state(self, state: ServerState) -> None:
        """Durably save ``state`` (term and vote) before the server acts on it."""

    @abc.abstractmethod
    def read_state(self) -> ServerState | None:
        """The last saved server state; None on the very first start."""

    @abc.abstractmethod
    def load_log_store(self) -> LogStore:
        """The log store of this server (the same instance on every call)."""

    @abc.abstractmethod
    def server_id(self) -> int:
        """This server's id."""

    @abc.abstractmethod
    def system_exit(self, exit_code: int) -> None:
        """Called on abnormal termination of the Raft server with NuRaft's error code."""

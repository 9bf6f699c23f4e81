"""Multi-node clusters: one :class:`Node` per process, replicating over Raft.

Issue #5, layer 8 of DESIGN.md. A :class:`Node` opens its data directory (the
segmented log store in ``<data_dir>/store`` and the durable Raft state in
``<data_dir>/raft_state.json``), wraps every partition's state machine so that client
requests apply exactly once, and runs a :class:`~segstore.raft.host.RaftHost`
(pysyncobj today, :mod:`segstore.raft.pysyncobj_host`)::

    node = Node(1, "data/n1", "127.0.0.1:7001", ["127.0.0.1:7002", "127.0.0.1:7003"],
                partitions=64, state_machine_factory=factory)
    node.start()
    future = node.submit(3, b"set x=1")   # resolved with partition 3's apply result
    node.status()                          # leader, term, commit index, partitions...
    node.close()

Exactly once
------------
Every submission carries a request id ``(client_id, seq)`` and the client's *floor*
(every seq below it is resolved, so its result may be forgotten) in a 36-byte header
before the payload (:data:`REQUEST_HEADER`). Each partition's state machine is wrapped
in a :class:`DedupStateMachine` that keeps, per client, the results of the requests at
or above the floor, in its snapshot: a request seen again (a retry, or pysyncobj
forwarding a command twice) returns the first result and does not reach the user's
``apply``. Because of that the node retries freely: when pysyncobj reports a failure
(its "leader changed" can come for a command that committed), or when no result came
after ``retry_after_s``, the same request is submitted again, until ``submit_timeout_s``.

Threads: pysyncobj's tick thread runs the engine, the group commit and the hand-off of
committed entries to the applier; the applier's workers apply and resolve futures; a
maintenance thread retries submissions, lands committed entries in the
:class:`~segstore.quorum.AckTracker` with the leader's match indices, follows the
membership with the :class:`~segstore.masters.MasterPolicy` and checkpoints.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import json
import os
import pickle
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import IO, Any, Final, NamedTuple

import numpy as np

from segstore.applier import PartitionStateMachine, StateMachineFactory
from segstore.errors import (
    ClosedError,
    ClusterError,
    InsecureBindError,
    InvalidArgumentError,
    SubmitError,
)
from segstore.masters import MasterPolicy
from segstore.quorum import AckTracker
from segstore.raft.host import FileStateMgr, RaftHost
from segstore.raft.partition_entry import NO_PARTITION, encode_entry
from segstore.raft.segmented_state_machine import SegmentedStateMachine
from segstore.raft.segmented_store import SegmentedLogStore
from segstore.raft.state_mgr import ClusterConfig, ServerConfig

REQUEST_MAGIC: Final = b"SRQ1"
REQUEST_HEADER: Final = struct.Struct("<4s16sQQ")
"""magic, client id (16 bytes), seq (u64), floor (u64): before every payload."""

STORE_DIR: Final = "store"
STATE_FILE: Final = "raft_state.json"
MAINTENANCE_INTERVAL_S: Final = 0.02
"""How often the maintenance thread retries due submissions."""
QUORUM_INTERVAL_S: Final = 0.1
"""How often committed entries are landed in the AckTracker and acks fed (each pass
costs a numpy search per partition: not per tick)."""
LAND_BATCH_MAX: Final = 1 << 14


class RequestResult(NamedTuple):
    """What a :class:`DedupStateMachine` returns for one request."""

    client_id: bytes
    seq: int
    result: Any
    duplicate: bool


def encode_request(client_id: bytes, seq: int, floor: int, payload: bytes) -> bytes:
    """The payload as replicated: request header, then the user's payload."""
    return REQUEST_HEADER.pack(REQUEST_MAGIC, client_id, seq, floor) + bytes(payload)


def decode_request(data: bytes) -> tuple[bytes, int, int, bytes]:
    """``(client_id, seq, floor, payload)`` of :func:`encode_request`'s bytes."""
    if len(data) < REQUEST_HEADER.size:
        raise InvalidArgumentError(f"a request of {len(data)} bytes has no request header")
    magic, client_id, seq, floor = REQUEST_HEADER.unpack_from(data)
    if magic != REQUEST_MAGIC:
        raise InvalidArgumentError(f"request header magic {magic!r}, not {REQUEST_MAGIC!r}")
    return client_id, seq, floor, bytes(data[REQUEST_HEADER.size :])


class DedupStateMachine(PartitionStateMachine):
    """A user's partition state machine behind exactly-once request ids.

    The user's ``apply`` must be a plain (not ``async``) method, and its results
    picklable: they are kept, for requests at or above the client's floor, in this
    partition's snapshot.
    """

    SNAPSHOT_VERSION: Final = 1

    def __init__(self, inner: PartitionStateMachine) -> None:
        self.inner = inner
        # client id -> (floor, {seq: result})
        self.clients: dict[bytes, tuple[int, dict[int, Any]]] = {}

    def apply(self, partition_index: int, payload: bytes) -> RequestResult:
        client_id, seq, floor, body = decode_request(payload)
        known_floor, results = self.clients.get(client_id, (0, {}))
        if floor > known_floor:
            results = {s: r for s, r in results.items() if s >= floor}
            known_floor = floor
        self.clients[client_id] = (known_floor, results)
        if seq in results:
            return RequestResult(client_id, seq, results[seq], True)
        if seq < known_floor:
            # The client already resolved this request: it is a stale copy.
            return RequestResult(client_id, seq, None, True)
        result = self.inner.apply(partition_index, body)
        results[seq] = result
        return RequestResult(client_id, seq, result, False)

    def snapshot(self) -> bytes:
        return pickle.dumps(
            (self.SNAPSHOT_VERSION, self.inner.snapshot(), self.clients),
            protocol=pickle.HIGHEST_PROTOCOL,
        )

    def restore(self, snapshot: bytes) -> None:
        version, inner, clients = pickle.loads(snapshot)
        if version != self.SNAPSHOT_VERSION:
            raise InvalidArgumentError(f"dedup snapshot version {version} is not supported")
        self.inner.restore(inner)
        self.clients = clients


class RecordingStateMachine(PartitionStateMachine):
    """Records every payload applied, in order; ``apply`` returns how many there are.

    The built-in state machine of ``segstore node`` and of the cluster tests: its
    state is the exact sequence of applied payloads, so two nodes agree iff their
    :meth:`digest` agree, and an entry applied twice shows as a duplicate.
    """

    _LEN = struct.Struct("<I")

    def __init__(self) -> None:
        self.payloads: list[bytes] = []
        # The snapshot, kept up to date by apply: the applier checkpoints (snapshots)
        # every changed partition every checkpoint interval, so re-encoding the whole
        # history each time would cost O(state) in Python per checkpoint.
        self._blob = bytearray()

    def apply(self, partition_index: int, payload: bytes) -> int:
        payload = bytes(payload)
        self.payloads.append(payload)
        self._blob += self._LEN.pack(len(payload))
        self._blob += payload
        return len(self.payloads)

    def snapshot(self) -> bytes:
        return bytes(self._blob)

    def restore(self, snapshot: bytes) -> None:
        payloads, offset = [], 0
        while offset < len(snapshot):
            (size,) = self._LEN.unpack_from(snapshot, offset)
            payloads.append(snapshot[offset + 4 : offset + 4 + size])
            offset += 4 + size
        self.payloads = payloads
        self._blob = bytearray(snapshot)

    def digest(self) -> str:
        return hashlib.sha256(self.snapshot()).hexdigest()


def _host_of(address: str) -> str:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgumentError(f"address {address!r} is not host:port")
    return host


def is_loopback(address: str) -> bool:
    """``host:port`` names a loopback interface."""
    host = _host_of(address).strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(address: str, peers: Iterable[str], password: str | None) -> None:
    """Refuse non-loopback addresses without a password (the transport is pickles)."""
    for where in (address, *peers):
        if not is_loopback(where) and password is None:
            raise InsecureBindError(
                f"{where} is not a loopback address and no password is set: the Raft "
                "transport exchanges pickles, which let any peer run code in this "
                "process. Bind 127.0.0.1, or pass password=... (pysyncobj's encryption; "
                "pip install cryptography)"
            )
    if password is not None:
        try:
            import cryptography  # type: ignore[import-not-found]  # noqa: F401
        except ImportError:
            raise ClusterError(
                "a password needs pysyncobj's encryption, which needs the 'cryptography' "
                "package: pip install cryptography"
            ) from None


@dataclass
class _Pending:
    partition_id: int
    value: bytes
    future: Future[Any]
    retry_at: float
    deadline: float
    attempts: int = 1


class Node:
    """One member of a segstore cluster (see the module docstring)."""

    def __init__(
        self,
        node_id: int,
        data_dir: str | os.PathLike[str],
        address: str,
        peers: Sequence[str],
        partitions: int,
        state_machine_factory: StateMachineFactory,
        *,
        password: str | None = None,
        apply_threads: int = 4,
        tick_period_s: float = 0.005,
        append_period_s: float = 0.01,
        election_timeout_s: tuple[float, float] = (1.0, 2.5),
        checkpoint_interval_s: float = 0.5,
        retry_after_s: float = 3.0,
        submit_timeout_s: float = 60.0,
        reserved_log_items: int | None = None,
        compaction_interval_s: float | None = None,
        host_factory: Callable[..., RaftHost] | None = None,
    ) -> None:
        if isinstance(node_id, bool) or not isinstance(node_id, int) or node_id <= 0:
            raise InvalidArgumentError(f"node_id must be a positive int, not {node_id!r}")
        if isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1:
            raise InvalidArgumentError(f"partitions must be a positive int, not {partitions!r}")
        if not callable(state_machine_factory):
            raise InvalidArgumentError("state_machine_factory must be callable: f(pid)")
        peers = tuple(peers)
        if address in peers:
            raise InvalidArgumentError(f"address {address!r} is also named in peers")
        check_bind(address, peers, password)
        self.node_id = node_id
        self.data_dir = os.fspath(data_dir)
        self.address = address
        self.peers = peers
        self.partitions = partitions
        self._factory = state_machine_factory
        self._password = password
        self._apply_threads = apply_threads
        self._tick_period_s = tick_period_s
        self._append_period_s = append_period_s
        self._election_timeout_s = election_timeout_s
        self._checkpoint_interval_s = checkpoint_interval_s
        self._retry_after_s = retry_after_s
        self._submit_timeout_s = submit_timeout_s
        self._host_factory = host_factory
        self._host_options: dict[str, Any] = {}
        if reserved_log_items is not None:
            self._host_options["reserved_log_items"] = reserved_log_items
        if compaction_interval_s is not None:
            self._host_options["compaction_interval_s"] = compaction_interval_s
        self.client_id = os.urandom(16)
        """This node's client id: its request ids are ``(client_id, seq)``."""
        self._lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._next_seq = 1
        self._floor = 1  # no seq below it is pending (see _floor_locked)
        self._started = False
        self._closed = False
        self._stopping = threading.Event()
        self._store: SegmentedLogStore | None = None
        self._sm: SegmentedStateMachine | None = None
        self._host: RaftHost | None = None
        self._maintenance: threading.Thread | None = None
        self._processed = 0
        self._members: tuple[str, ...] = ()
        self.acks = AckTracker([address, *peers])
        """Quorum per partition, fed with the leader's match indices."""
        self.masters = MasterPolicy.automatic(partitions, [address, *peers])
        """Partition masters over the cluster's members."""

    # -- lifetime ----------------------------------------------------------------------

    def start(self) -> None:
        """Open (or create) the data directory, recover, and join the cluster."""
        if self._started:
            raise ClusterError("a node starts once; make a new Node to restart")
        self._started = True
        os.makedirs(self.data_dir, exist_ok=True)
        store = SegmentedLogStore.open(
            os.path.join(self.data_dir, STORE_DIR), partitions=self.partitions
        )
        try:
            factory = self._factory

            def wrapped(pid: int) -> PartitionStateMachine:
                return DedupStateMachine(factory(pid))

            sm = SegmentedStateMachine(store, wrapped, apply_threads=self._apply_threads)
            config = ClusterConfig(
                servers=(ServerConfig(self.node_id, self.address),),
            )
            state = FileStateMgr(
                os.path.join(self.data_dir, STATE_FILE), self.node_id, config, store
            )
            sm.applier.on_applied(self._on_applied)
            if self._host_factory is not None:
                host = self._host_factory(
                    endpoint=self.address,
                    peers=self.peers,
                    store=store,
                    state_machine=sm,
                    state_mgr=state,
                )
            else:
                from segstore.raft.pysyncobj_host import PysyncobjHost

                host = PysyncobjHost(
                    endpoint=self.address,
                    peers=self.peers,
                    store=store,
                    state_machine=sm,
                    state_mgr=state,
                    password=self._password,
                    tick_period_s=self._tick_period_s,
                    append_period_s=self._append_period_s,
                    election_timeout_s=self._election_timeout_s,
                    **self._host_options,
                )
            # The quorum term of invariant 6 (the landing of committed entries in the
            # AckTracker reads them from the log): a retention hold of the store.
            store.add_retention(self._quorum_required)
        except BaseException:
            store.close()
            raise
        self._store, self._sm, self._host = store, sm, host
        self._processed = sm.last_commit_index()
        host.start()
        self._maintenance = threading.Thread(
            target=self._maintain, name=f"segstore-node-{self.node_id}", daemon=True
        )
        self._maintenance.start()

    def close(self) -> None:
        """Leave the cluster (stop the engine), apply and checkpoint what is
        committed, close the store; pending submissions fail with SubmitError."""
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        if self._maintenance is not None:
            self._maintenance.join()
        try:
            if self._host is not None:
                self._host.close()
            if self._sm is not None:
                self._sm.close()
        finally:
            if self._store is not None:
                self._store.close()
            with self._lock:
                pending, self._pending = self._pending, {}
            for item in pending.values():
                if not item.future.done():
                    item.future.set_exception(SubmitError("the node closed"))

    def __enter__(self) -> Node:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- requests ----------------------------------------------------------------------

    def submit(self, partition_id: int, payload: bytes) -> Future[Any]:
        """Replicate ``payload`` to ``partition_id``; the future is resolved with the
        partition state machine's result once this node applied it (exactly once,
        retries included), or fails with :class:`SubmitError`. Raises
        :class:`~segstore.errors.BackpressureError` when the partition is backed up."""
        if isinstance(partition_id, bool) or not isinstance(partition_id, int):
            raise InvalidArgumentError(f"partition_id must be an int, not {partition_id!r}")
        if not 0 <= partition_id < self.partitions:
            raise InvalidArgumentError(
                f"partition {partition_id} does not exist (there are {self.partitions})"
            )
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise InvalidArgumentError(f"payload must be bytes, not {type(payload).__name__}")
        host, sm = self._running()
        sm.applier.check_capacity(partition_id)
        future: Future[Any] = Future()
        now = time.monotonic()
        with self._lock:
            seq = self._next_seq
            self._next_seq += 1
            floor = self._floor_locked(seq)
            value = encode_entry(
                partition_id, encode_request(self.client_id, seq, floor, bytes(payload))
            )
            self._pending[seq] = _Pending(
                partition_id, value, future, now + self._retry_after_s, now + self._submit_timeout_s
            )
        host.submit(value, functools.partial(self._on_failed, seq))
        return future

    def _floor_locked(self, seq: int) -> int:
        """The least pending seq (``seq`` if none): every seq below it is resolved.
        Amortised O(1): the floor only moves up, past seqs no longer pending."""
        floor, pending = self._floor, self._pending
        while floor < seq and floor not in pending:
            floor += 1
        self._floor = floor
        return floor

    def _on_failed(self, seq: int, reason: str) -> None:
        """pysyncobj gave up on a submission: its outcome is unknown, so retry soon
        (the request id makes a retry of a committed request harmless)."""
        with self._lock:
            item = self._pending.get(seq)
            if item is not None:
                item.retry_at = min(item.retry_at, time.monotonic() + 0.05)

    def _on_applied(
        self, pid: int, first_index: int, first_raft_index: int, results: list[Any]
    ) -> None:
        resolved = []
        with self._lock:
            for result in results:
                if isinstance(result, RequestResult) and result.client_id == self.client_id:
                    item = self._pending.pop(result.seq, None)
                    if item is not None:
                        resolved.append((item.future, result.result))
        for future, value in resolved:
            if not future.done():
                future.set_result(value)

    def add_member(self, address: str, timeout_s: float = 30.0) -> None:
        """Add a member; start its node first, with every current member as a peer."""
        check_bind(address, (), self._password)
        self._membership("add", address, timeout_s)

    def remove_member(self, address: str, timeout_s: float = 30.0) -> None:
        """Remove a member (not this one)."""
        if address == self.address:
            raise InvalidArgumentError("a node cannot remove itself; ask another member")
        host, _ = self._running()
        if host.status().leader == address:
            # pysyncobj 0.3.17 denies a leader's removal of itself (REQUEST_DENIED).
            raise ClusterError(
                f"{address} is the leader, and pysyncobj cannot remove its leader: stop "
                "that node (another member takes over), then remove it"
            )
        self._membership("remove", address, timeout_s)

    def _membership(self, kind: str, address: str, timeout_s: float) -> None:
        host, _ = self._running()
        deadline = time.monotonic() + timeout_s
        last = "timeout"

        def reached() -> bool:
            return (address in host.status().members) == (kind == "add")

        while time.monotonic() < deadline:
            if reached():
                return
            done = threading.Event()
            outcome: list[tuple[bool, str]] = []

            def callback(
                ok: bool,
                reason: str,
                out: list[tuple[bool, str]] = outcome,
                event: threading.Event = done,
            ) -> None:
                out.append((ok, reason))
                event.set()

            if kind == "add":
                host.add_member(address, callback)
            else:
                host.remove_member(address, callback)
            done.wait(max(0.0, deadline - time.monotonic()))
            if outcome and outcome[0][0]:
                while time.monotonic() < deadline and not reached():
                    time.sleep(0.05)
                if reached():
                    return
            last = outcome[0][1] if outcome else "timeout"
            time.sleep(0.2)
        raise ClusterError(f"{kind} member {address} did not complete: {last}")

    # -- observing ---------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Leader, term, commit index, members and per-partition progress: applied
        index, quorum index, master and the oldest raft index the partition needs."""
        host, sm = self._running()
        hs = host.status()
        routed_required, routed_by_pid = self._store_required()
        applied_by_pid = sm.applier.required_raft_indices()
        partitions = []
        for st in sm.applier.statuses():
            pid = st.partition_id
            terms = [
                t
                for t in (
                    routed_by_pid.get(pid),
                    applied_by_pid.get(pid),
                    self.acks.first_pending_raft_index(pid),
                )
                if t is not None
            ]
            partitions.append(
                {
                    "partition_id": pid,
                    "applied_index": st.applied_index,
                    "applied_raft_index": st.applied_raft_index,
                    "pending": st.pending,
                    "quorum_index": self.acks.quorum_index(pid),
                    "master": self.masters.master_of(pid),
                    "required_raft_index": min(terms) if terms else None,
                    "error": None if st.error is None else str(st.error),
                }
            )
        return {
            "node_id": self.node_id,
            "address": self.address,
            "leader": hs.leader,
            "is_leader": hs.is_leader,
            "term": hs.term,
            "commit_index": hs.commit_index,
            "last_index": hs.last_index,
            "durable_index": hs.durable_index,
            "applied_index": sm.last_commit_index(),
            "members": list(hs.members),
            "match_indices": dict(hs.match_indices),
            "connected": dict(hs.connected),
            "failed": hs.failed,
            "counters": dict(hs.counters),
            "pending_submissions": len(self._pending),
            "watermark_terms": {
                "router": routed_required,
                "applier": sm.applier.required_raft_index(),
                "quorum": self._quorum_required(),
            },
            "watermark": min(
                routed_required, sm.applier.required_raft_index(), self._quorum_required()
            ),
            "log_start_index": hs.log_start_index,
            "store_start_index": self._store.start_index() if self._store else 0,
            "first_retained_index": self._store.first_retained_index() if self._store else 0,
            "snapshot_index": hs.snapshot_index,
            "installed_snapshot_index": hs.installed_snapshot_index,
            "partitions": partitions,
        }

    def _quorum_required(self) -> int:
        """The AckTracker's term of invariant 6: the first committed entry not yet
        landed in it, and on the leader (which feeds it every follower's match index)
        the first landed entry not quorum-acknowledged. A follower only learns its own
        acknowledgements; the leader's commit index is its proof of a quorum, so its
        tracker holds nothing beyond what is not landed."""
        unlanded = self._processed + 1
        host = self._host
        if host is None or not host.status().is_leader:
            return unlanded
        first = self.acks.oldest_pending_raft_index()
        return unlanded if first is None else min(first, unlanded)

    def watermark(self) -> int:
        """The global minimum required raft index of invariant 6 on this node: the
        log may be compacted below it (the host also keeps its reserved tail)."""
        store, sm = self._store, self._sm
        if store is None or sm is None:
            raise ClusterError(f"node {self.node_id} is not started (call start())")
        routed_required, _ = store.required_raft_indices()
        return min(routed_required, sm.applier.required_raft_index(), self._quorum_required())

    def _store_required(self) -> tuple[int, dict[int, int]]:
        store = self._store
        if store is None:
            raise ClosedError("the node is not started")
        return store.required_raft_indices()

    def state_machine(self, partition_id: int) -> PartitionStateMachine:
        """Partition ``partition_id``'s user state machine (read it only while idle)."""
        _, sm = self._running()
        wrapper = sm.applier.state_machine(partition_id)
        return wrapper.inner if isinstance(wrapper, DedupStateMachine) else wrapper

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Block until every entry handed to the applier is applied."""
        _, sm = self._running()
        return sm.applier.wait_idle(timeout_s)

    def _running(self) -> tuple[RaftHost, SegmentedStateMachine]:
        if self._closed:
            raise ClosedError(f"node {self.node_id} is closed")
        if self._host is None or self._sm is None:
            raise ClusterError(f"node {self.node_id} is not started (call start())")
        return self._host, self._sm

    # -- maintenance -------------------------------------------------------------------

    def _maintain(self) -> None:
        last_checkpoint = last_quorum = time.monotonic()
        while not self._stopping.wait(MAINTENANCE_INTERVAL_S):
            try:
                self._retry_due()
                now = time.monotonic()
                if now - last_quorum >= QUORUM_INTERVAL_S:
                    last_quorum = now
                    self._follow_members()
                    self._land_and_ack()
                if now - last_checkpoint >= self._checkpoint_interval_s:
                    last_checkpoint = now
                    if self._sm is not None and self._host is not None:
                        self._sm.applier.checkpoint()
                        self._host.compact(self.watermark())
            except Exception as exc:  # keep the node observable; status shows it
                print(f"segstore node {self.node_id}: maintenance: {exc!r}", file=sys.stderr)

    def _retry_due(self) -> None:
        host = self._host
        if host is None:
            return
        now = time.monotonic()
        due: list[tuple[int, bytes]] = []
        expired: list[_Pending] = []
        failed = host.status().failed
        with self._lock:
            for seq, item in list(self._pending.items()):
                if now >= item.deadline or failed is not None:
                    expired.append(self._pending.pop(seq))
                elif now >= item.retry_at:
                    item.retry_at = now + self._retry_after_s
                    item.attempts += 1
                    due.append((seq, item.value))
        for item in expired:
            reason = f"node failed: {failed}" if failed else "no result before submit_timeout_s"
            if not item.future.done():
                item.future.set_exception(SubmitError(f"submission not confirmed: {reason}"))
        for seq, value in due:
            host.submit(value, functools.partial(self._on_failed, seq))

    def _follow_members(self) -> None:
        host = self._host
        if host is None:
            return
        members = host.status().members
        if members and members != self._members:
            self._members = members
            self.masters.set_members(members)
            self.acks.set_replicas(None, members)

    def _land_and_ack(self) -> None:
        host, store = self._host, self._store
        if host is None or store is None:
            return
        status = host.status()
        handed = status.applied_handed_index
        if status.installed_snapshot_index > self._processed:
            # The state machine jumped to a snapshot: the entries up to it are never
            # handed in, and the partitions' indices restart after the snapshot's.
            self.acks = AckTracker(list(self._members) or [self.address, *self.peers])
            self._processed = status.installed_snapshot_index
        while self._processed < handed:
            low = self._processed + 1
            high = min(handed, low + LAND_BATCH_MAX - 1)
            headers, _ = store.read_records(low, high + 1)
            pids = headers["partition_id"]
            routed = pids != NO_PARTITION
            if routed.any():
                rafts = np.arange(low, high + 1, dtype=np.uint64)
                self.acks.record_landed_many(
                    pids[routed], headers["partition_index"][routed], rafts[routed]
                )
            self._processed = high
        if status.durable_index:
            self.acks.ack(self.address, status.durable_index)
        if status.is_leader:
            for member, index in status.match_indices.items():
                if index:
                    self.acks.ack(member, index)
        self.acks.truncate_before(self._processed + 1)


# -- the scriptable node process (segstore node --control) ---------------------------


class _Load:
    """A load generator inside a node process: ``count`` submissions, ``window`` in
    flight, each acknowledged payload appended to ``acked_path`` as it resolves."""

    def __init__(self, node: Node, spec: dict[str, Any]) -> None:
        self.node = node
        self.count = int(spec["count"])
        self.window = int(spec.get("window", 256))
        self.prefix = str(spec.get("prefix", f"n{node.node_id}-"))
        self.payload_bytes = int(spec.get("payload_bytes", 0))
        self.partitions = int(spec.get("partitions", node.partitions))
        self.acked_path = spec.get("acked_path")
        self.acked = 0
        self.failed = 0
        self.latencies_s: list[float] = []
        self.started = time.monotonic()
        self.finished: float | None = None
        self._slots = threading.Semaphore(self.window)
        self._lock = threading.Lock()
        self._outstanding = 0
        self._all_sent = False
        self.done = threading.Event()
        self._file: IO[str] | None = (
            open(self.acked_path, "a", buffering=1) if self.acked_path else None  # noqa: SIM115
        )
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _payload(self, i: int) -> bytes:
        text = f"{self.prefix}{i}".encode()
        return text.ljust(self.payload_bytes, b".")

    def _run(self) -> None:
        for i in range(self.count):
            self._slots.acquire()
            payload = self._payload(i)
            sent = time.monotonic()
            while True:
                try:
                    future = self.node.submit(i % self.partitions, payload)
                    break
                except Exception:
                    if self.node._closed:
                        self._finish_one(False, payload, sent)
                        future = None
                        break
                    time.sleep(0.05)
            if future is None:
                continue
            with self._lock:
                self._outstanding += 1
            future.add_done_callback(functools.partial(self._on_done, payload, sent))
        with self._lock:
            self._all_sent = True
            if self._outstanding == 0:
                self._complete()

    def _on_done(self, payload: bytes, sent: float, future: Future[Any]) -> None:
        self._finish_one(future.exception() is None, payload, sent)

    def _finish_one(self, ok: bool, payload: bytes, sent: float) -> None:
        with self._lock:
            if ok:
                self.acked += 1
                self.latencies_s.append(time.monotonic() - sent)
                if self._file is not None:
                    self._file.write(payload.decode().rstrip(".") + "\n")
            else:
                self.failed += 1
            self._outstanding -= 1
            if self._all_sent and self._outstanding == 0:
                self._complete()
        self._slots.release()

    def _complete(self) -> None:
        self.finished = time.monotonic()
        if self._file is not None:
            self._file.flush()
        self.done.set()

    def report(self) -> dict[str, Any]:
        with self._lock:
            latencies = sorted(self.latencies_s)
        end = self.finished or time.monotonic()

        def pct(q: float) -> float | None:
            if not latencies:
                return None
            return 1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))]

        return {
            "done": self.done.is_set(),
            "acked": self.acked,
            "failed": self.failed,
            "seconds": end - self.started,
            "p50_ms": pct(0.5),
            "p99_ms": pct(0.99),
        }


def serve_control(node: Node, stdin: IO[str], stdout: IO[str]) -> None:
    """Answer JSON-line commands on ``stdin`` (what tests, benchmarks and demos drive a
    node process with): status, submit, load, load_wait, digest, payloads, add_member,
    remove_member, wait_leader, close. One JSON reply line per command."""
    load: _Load | None = None

    def reply(obj: dict[str, Any]) -> None:
        stdout.write(json.dumps(obj, default=str) + "\n")
        stdout.flush()

    for line in stdin:
        if not line.strip():
            continue
        try:
            cmd = json.loads(line)
            op = cmd["op"]
            if op == "status":
                reply({"ok": True, "status": node.status()})
            elif op == "wait_leader":
                deadline = time.monotonic() + float(cmd.get("timeout_s", 30))
                while time.monotonic() < deadline:
                    status = node.status()
                    if status["leader"] is not None and status["commit_index"] > 0:
                        break
                    time.sleep(0.05)
                reply({"ok": True, "status": node.status()})
            elif op == "submit":
                future = node.submit(int(cmd["partition"]), str(cmd["payload"]).encode())
                reply({"ok": True, "result": future.result(float(cmd.get("timeout_s", 30)))})
            elif op == "load":
                load = _Load(node, cmd)
                reply({"ok": True})
            elif op == "load_wait":
                if load is None:
                    raise ClusterError("no load was started")
                load.done.wait(float(cmd.get("timeout_s", 60)))
                reply({"ok": True, "load": load.report()})
            elif op == "digest":
                node.wait_idle(float(cmd.get("timeout_s", 30)))
                status = node.status()
                digests = {}
                for pid in range(node.partitions):
                    sm = node.state_machine(pid)
                    digests[pid] = (
                        sm.digest()
                        if isinstance(sm, RecordingStateMachine)
                        else hashlib.sha256(sm.snapshot()).hexdigest()
                    )
                reply({"ok": True, "digests": digests, "status": status})
            elif op == "payloads":
                node.wait_idle(float(cmd.get("timeout_s", 30)))
                payloads = {}
                for pid in range(node.partitions):
                    sm = node.state_machine(pid)
                    if isinstance(sm, RecordingStateMachine):
                        payloads[pid] = [p.decode().rstrip(".") for p in sm.payloads]
                reply({"ok": True, "payloads": payloads})
            elif op == "add_member":
                node.add_member(str(cmd["address"]), float(cmd.get("timeout_s", 30)))
                reply({"ok": True})
            elif op == "remove_member":
                node.remove_member(str(cmd["address"]), float(cmd.get("timeout_s", 30)))
                reply({"ok": True})
            elif op == "close":
                node.close()
                reply({"ok": True})
                return
            else:
                raise InvalidArgumentError(f"unknown op {op!r}")
        except Exception as exc:
            reply({"ok": False, "error": f"{type(exc).__name__}: {exc}"})


def run_node(
    node_id: int,
    data_dir: str,
    address: str,
    peers: Sequence[str],
    partitions: int,
    *,
    password: str | None = None,
    control: bool = False,
    tick_period_s: float = 0.005,
    append_period_s: float = 0.01,
    reserved_log_items: int | None = None,
    compaction_interval_s: float | None = None,
) -> int:
    """``segstore node``: run one node with :class:`RecordingStateMachine` partitions,
    printing a status line every second (or serving ``--control`` on stdin/stdout)
    until stdin closes (``--control``) or SIGINT / SIGTERM.

    ``reserved_log_items`` and ``compaction_interval_s``: None keeps the node's
    defaults."""
    import signal

    node = Node(
        node_id,
        data_dir,
        address,
        peers,
        partitions,
        lambda pid: RecordingStateMachine(),
        password=password,
        tick_period_s=tick_period_s,
        append_period_s=append_period_s,
        reserved_log_items=reserved_log_items,
        compaction_interval_s=compaction_interval_s,
    )
    node.start()
    stop = threading.Event()

    def on_sigterm(*_args: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        if control:
            serve_control(node, sys.stdin, sys.stdout)
        else:
            while not stop.wait(1.0):
                st = node.status()
                print(
                    f"node {node_id} {address}: leader={st['leader']} term={st['term']} "
                    f"commit={st['commit_index']} applied={st['applied_index']} "
                    f"members={len(st['members'])} failed={st['failed']}",
                    flush=True,
                )
    except KeyboardInterrupt:
        pass
    finally:
        node.close()
    return 0


__all__ = [
    "REQUEST_HEADER",
    "DedupStateMachine",
    "Node",
    "RecordingStateMachine",
    "RequestResult",
    "check_bind",
    "decode_request",
    "encode_request",
    "is_loopback",
    "run_node",
    "serve_control",
]

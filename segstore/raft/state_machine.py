"""The ``StateMachine`` contract and ``Snapshot``, after NuRaft.

Mirrors ``include/libnuraft/state_machine.hxx`` (``state_machine``) and
``snapshot.hxx``. NuRaft's ``buffer&`` arguments become ``bytes`` (already a copy,
so NuRaft's "clone it if you keep it" warning does not apply), out-parameters
become return values, and failure codes become exceptions.

Left out, being deprecated or unused by segstore: ``save_snapshot_data`` /
``read_snapshot_data`` (raw-binary snapshots), the ``*_ext`` variants, and
``adjust_commit_index``.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from segstore.errors import InvalidArgumentError
from segstore.raft.log_entry import check_uint
from segstore.raft.state_mgr import ClusterConfig

__all__ = [
    "Snapshot",
    "SnapshotDoneCallback",
    "SnapshotObject",
    "SnapshotType",
    "StateMachine",
]

SnapshotDoneCallback = Callable[[bool, "BaseException | None"], None]
"""``when_done(result, error)`` of ``create_snapshot`` (NuRaft ``async_result<bool>``)."""


class SnapshotType(enum.IntEnum):
    """NuRaft ``snapshot::type``."""

    raw_binary = 1
    logical_object = 2


@dataclass(frozen=True, slots=True)
class Snapshot:
    """NuRaft ``snapshot``: which log prefix a state-machine snapshot covers.

    Attributes:
        last_log_idx: the last log index the snapshot includes.
        last_log_term: the term of that entry.
        last_config: the cluster config as of ``last_log_idx``.
        size: size in bytes if known, else 0.
        type: logical objects (segstore's kind) or NuRaft's deprecated raw binary.
    """

    last_log_idx: int
    last_log_term: int
    last_config: ClusterConfig
    size: int = 0
    type: SnapshotType = SnapshotType.logical_object

    def __post_init__(self) -> None:
        check_uint("Snapshot.last_log_idx", self.last_log_idx)
        check_uint("Snapshot.last_log_term", self.last_log_term)
        check_uint("Snapshot.size", self.size)
        if not isinstance(self.last_config, ClusterConfig):
            raise InvalidArgumentError(
                "Snapshot.last_config must be a ClusterConfig, got "
                f"{type(self.last_config).__name__}"
            )
        if not isinstance(self.type, SnapshotType):
            raise InvalidArgumentError(
                f"Snapshot.type must be a SnapshotType, got {type(self.type).__name__}"
            )


class SnapshotObject(NamedTuple):
    """One logical snapshot object read by ``read_logical_snp_obj``.

    Attributes:
        data: the object's bytes.
        is_last_obj: True if no object follows.
        user_snp_ctx: state to pass to the next read of the same snapshot (NuRaft's
            in/out ``void*& user_snp_ctx``); freed with ``free_user_snp_ctx``.
    """

    data: bytes
    is_last_obj: bool
    user_snp_ctx: object | None


class StateMachine(abc.ABC):
    """NuRaft ``state_machine``: where committed entries take effect.

    Abstract here: ``commit`` (NuRaft gives it a default that drops the entry,
    which is never what segstore wants), ``apply_snapshot``, ``last_snapshot``,
    ``last_commit_index`` and ``create_snapshot``. The rest keep NuRaft's defaults.
    """

    @abc.abstractmethod
    def commit(self, log_idx: int, data: bytes) -> bytes | None:
        """Apply the committed ``app_log`` entry at ``log_idx``; return its result."""

    def commit_config(self, log_idx: int, new_conf: ClusterConfig) -> None:  # noqa: B027
        """A ``conf`` entry at ``log_idx`` committed; NuRaft's default ignores it."""

    def pre_commit(self, log_idx: int, data: bytes) -> bytes | None:
        """Called once the entry is appended, before quorum; NuRaft's default: None."""
        return None

    def rollback(self, log_idx: int, data: bytes) -> None:  # noqa: B027
        """Undo a ``pre_commit`` of an entry that will not commit (newest first)."""

    def rollback_config(self, log_idx: int, conf: ClusterConfig) -> None:  # noqa: B027
        """An uncommitted ``conf`` entry at ``log_idx`` was rolled back."""

    def get_next_batch_size_hint_in_bytes(self) -> int:
        """Follower's preferred size of the next batch: 0 any, >0 about that many
        bytes (at least one entry), <0 none for now. This is what reaches
        ``LogStore.log_entries_ext`` on the leader."""
        return 0

    def save_logical_snp_obj(
        self,
        s: Snapshot,
        obj_id: int,
        data: bytes,
        is_first_obj: bool,
        is_last_obj: bool,
    ) -> int:
        """Store snapshot object ``obj_id`` (receiver side); return the next object id
        wanted (NuRaft's in/out ``obj_id``). NuRaft's default keeps nothing."""
        return obj_id + 1

    @abc.abstractmethod
    def apply_snapshot(self, s: Snapshot) -> bool:
        """Replace the state with the received snapshot ``s``; True on success."""

    def read_logical_snp_obj(
        self, s: Snapshot, user_snp_ctx: object | None, obj_id: int
    ) -> SnapshotObject:
        """Read snapshot object ``obj_id`` (sender side). NuRaft's default returns one
        empty last object. Raise on failure (NuRaft returns a negative number)."""
        return SnapshotObject(data=b"", is_last_obj=True, user_snp_ctx=user_snp_ctx)

    def free_user_snp_ctx(self, user_snp_ctx: object | None) -> None:  # noqa: B027
        """Release what ``read_logical_snp_obj`` put in ``user_snp_ctx``."""

    @abc.abstractmethod
    def last_snapshot(self) -> Snapshot | None:
        """The latest snapshot (durable across restarts), or None."""

    @abc.abstractmethod
    def last_commit_index(self) -> int:
        """The last committed log index (durable across restarts)."""

    @abc.abstractmethod
    def create_snapshot(self, s: Snapshot, when_done: SnapshotDoneCallback) -> None:
        """Create snapshot ``s``, then call ``when_done(result, error)`` once."""

    def chk_create_snapshot(self) -> bool:
        """Whether to create a snapshot now that Raft would; NuRaft's default: True."""
        return True

    def allow_leadership_transfer(self) -> bool:
        """Whether Raft may hand leadership to another member; default True."""
        return True

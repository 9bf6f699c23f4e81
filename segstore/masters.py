"""Which member masters each partition: deterministic, and stable across membership changes.

Layer 7 of DESIGN.md, invariant 7 (issue #4). Pure and in memory.

Modes
-----
Every partition ``0 .. partition_count - 1`` is in one of three modes: the policy's
default mode, or a per-partition override.

* :class:`Automatic`: rendezvous (highest random weight) hashing over the current
  members; no members means no master.
* :class:`Fixed` ``(member)``: that member, whatever the membership. A fixed master need
  not be a member and stays master when it leaves: fixed means the operator decides.
* :class:`Disabled`: unowned (``None``).

:meth:`MasterPolicy.automatic`, :meth:`MasterPolicy.fixed` and
:meth:`MasterPolicy.disabled` build the three common policies; ``fixed`` leaves
unlisted partitions unowned unless given another default.

The hash (fixed forever: changing it moves partitions, and a golden test pins it)
--------------------------------------------------------------------------------
``score(member, partition_id)`` is the big-endian unsigned 64-bit integer of the 8-byte
BLAKE2b digest (``hashlib.blake2b(data, digest_size=8)``: digest length 8 in the
parameter block, no key, salt or personalisation; not a truncated 64-byte digest) of::

    data = member.encode("utf-8") + b"\\x00" + str(partition_id).encode("ascii")

(the partition id in decimal ASCII with no sign or leading zeros). A partition's
automatic master is the member with the highest score; equal scores (about one chance
in 2**64 per pair) go to the member whose name sorts first by code point. BLAKE2b is in
every CPython's ``hashlib`` and never depends on ``PYTHONHASHSEED``, the platform or the
build, unlike the built-in ``hash()``.

Why it moves as little as possible: a partition's master changes only if the member that
joins outscores the current master (the newcomer takes it; each of the M + 1 members is
the top scorer with the same probability, so about 1 / (M + 1) of the partitions move),
or if the current master leaves (only its partitions move, spread over the rest).
:meth:`MasterPolicy.set_members` computes exactly that incrementally: one hash per
partition and joining member, and a full recomputation only for partitions whose master
left.

Publishing and threading
------------------------
:meth:`MasterPolicy.snapshot` returns every partition's master; ``generation`` counts
the changes that moved at least one partition. :meth:`MasterPolicy.on_change` callbacks
get ``(partition_id, old, new)`` for each partition that moved, in partition order per
change. One lock guards the state. Callbacks run outside it, in the order of the
changes, on whichever thread is not already delivering (the same scheme as
``segstore.quorum``): a callback may call the policy again. If callbacks raise, every
callback still sees every event, and the first exception is re-raised afterwards.

Memory and time: O(partition_count) for the assignment; building it costs
partition_count x members hashes (about 1 us each).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final, TypeAlias

from segstore.errors import InvalidArgumentError
from segstore.events import EventQueue

PARTITION_ID_MAX: Final = 0xFFFFFFFE
"""Same bound as ``segstore.raft.partition_entry.PARTITION_ID_MAX``."""

MasterChangeCallback: TypeAlias = Callable[[int, str | None, str | None], object]
"""``callback(partition_id, old_master, new_master)`` for each partition that moved."""


# -- the hash ---------------------------------------------------------------------------


def rendezvous_score(member: str, partition_id: int) -> int:
    """The fixed, documented score of ``member`` for ``partition_id`` (module docstring)."""
    data = member.encode("utf-8") + b"\x00" + str(partition_id).encode("ascii")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def _beats(score: int, member: str, best_score: int, best_member: str) -> bool:
    return score > best_score or (score == best_score and member < best_member)


def _best(members: Iterable[str], partition_id: int) -> tuple[str, int] | None:
    best: tuple[str, int] | None = None
    for member in members:
        score = rendezvous_score(member, partition_id)
        if best is None or _beats(score, member, best[1], best[0]):
            best = (member, score)
    return best


def rendezvous_master(members: Iterable[str], partition_id: int) -> str | None:
    """The automatic master of ``partition_id`` among ``members`` (None if empty)."""
    best = _best(_check_members(members), _check_partition_id(partition_id))
    return None if best is None else best[0]


# -- modes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Automatic:
    """Rendezvous hashing over the policy's members."""


@dataclass(frozen=True)
class Fixed:
    """Always ``member``."""

    member: str

    def __post_init__(self) -> None:
        _check_member(self.member)


@dataclass(frozen=True)
class Disabled:
    """No master (unowned)."""


MasterMode: TypeAlias = Automatic | Fixed | Disabled
AUTOMATIC: Final = Automatic()
DISABLED: Final = Disabled()


# -- argument checks --------------------------------------------------------------------


def _check_member(member: object) -> str:
    if not isinstance(member, str):
        raise InvalidArgumentError(f"a member id must be a str, got {type(member).__name__}")
    if not member:
        raise InvalidArgumentError("a member id must not be empty")
    try:
        member.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidArgumentError(f"member id {member!r} is not valid UTF-8 text") from exc
    return member


def _check_members(members: object) -> frozenset[str]:
    if isinstance(members, (str, bytes)) or not isinstance(members, Iterable):
        raise InvalidArgumentError(
            f"members must be an iterable of member ids, got {type(members).__name__}"
        )
    return frozenset(_check_member(member) for member in members)


def _check_int(name: str, value: object, value_min: int, value_max: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentError(f"{name} must be an int, got {type(value).__name__}")
    if not value_min <= value <= value_max:
        raise InvalidArgumentError(f"{name} must be in [{value_min}, {value_max}], got {value}")
    return value


def _check_partition_id(partition_id: object) -> int:
    return _check_int("partition_id", partition_id, 0, PARTITION_ID_MAX)


def _check_mode(mode: object) -> MasterMode:
    if not isinstance(mode, (Automatic, Fixed, Disabled)):
        raise InvalidArgumentError(
            f"unknown master mode {mode!r}: use Automatic(), Fixed(member) or Disabled()"
        )
    return mode


# -- the policy -------------------------------------------------------------------------


class MasterPolicy:
    """The master of every partition ``0 .. partition_count - 1``; thread-safe."""

    def __init__(
        self,
        partition_count: int,
        members: Iterable[str] = (),
        default: MasterMode = AUTOMATIC,
        overrides: Mapping[int, MasterMode] | None = None,
    ) -> None:
        self._partition_count = _check_int(
            "partition_count", partition_count, 1, PARTITION_ID_MAX + 1
        )
        self._members = _check_members(members)
        self._default = _check_mode(default)
        self._overrides: dict[int, MasterMode] = {}
        for pid, mode in (overrides or {}).items():
            self._overrides[self._check_pid(pid)] = _check_mode(mode)
        # Per partition: master and, for automatic ones, the winning score.
        self._masters: list[str | None] = [None] * self._partition_count
        self._scores: list[int] = [0] * self._partition_count
        for pid in range(self._partition_count):
            self._masters[pid], self._scores[pid] = self._compute(pid)
        self._generation = 0
        self._lock = threading.Lock()
        self._events = EventQueue(self._lock)

    @classmethod
    def automatic(cls, partition_count: int, members: Iterable[str]) -> MasterPolicy:
        """Every partition mastered by rendezvous hashing over ``members``."""
        return cls(partition_count, members, AUTOMATIC)

    @classmethod
    def fixed(
        cls,
        partition_count: int,
        assignment: Mapping[int, str],
        *,
        members: Iterable[str] = (),
        default: MasterMode = DISABLED,
    ) -> MasterPolicy:
        """``assignment[pid]`` masters ``pid``; the others follow ``default`` (unowned)."""
        if not isinstance(assignment, Mapping):
            raise InvalidArgumentError(
                f"assignment must map partition ids to members, got {type(assignment).__name__}"
            )
        overrides: dict[int, MasterMode] = {pid: Fixed(m) for pid, m in assignment.items()}
        return cls(partition_count, members, default, overrides)

    @classmethod
    def disabled(cls, partition_count: int) -> MasterPolicy:
        """No partition has a master."""
        return cls(partition_count, (), DISABLED)

    # -- queries ---------------------------------------------------------------------------

    @property
    def partition_count(self) -> int:
        return self._partition_count

    @property
    def members(self) -> frozenset[str]:
        with self._lock:
            return self._members

    @property
    def generation(self) -> int:
        """How many changes moved at least one partition."""
        with self._lock:
            return self._generation

    def mode_of(self, partition_id: int) -> MasterMode:
        pid = self._check_pid(partition_id)
        with self._lock:
            return self._overrides.get(pid, self._default)

    def master_of(self, partition_id: int) -> str | None:
        """The master of ``partition_id``, or None if it is unowned."""
        pid = self._check_pid(partition_id)
        with self._lock:
            return self._masters[pid]

    def snapshot(self) -> dict[int, str | None]:
        """Every partition's master, ``{pid: member or None}``."""
        with self._lock:
            return dict(enumerate(self._masters))

    def partitions_of(self, member: str) -> list[int]:
        """The partitions ``member`` masters, in order."""
        _check_member(member)
        with self._lock:
            return [pid for pid, master in enumerate(self._masters) if master == member]

    def on_change(self, callback: MasterChangeCallback) -> None:
        """Call ``callback(partition_id, old, new)`` for every partition that moves."""
        if not callable(callback):
            raise InvalidArgumentError(f"callback must be callable, got {type(callback).__name__}")
        self._events.subscribe(callback)

    # -- changes ---------------------------------------------------------------------------

    def set_members(self, members: Iterable[str]) -> dict[int, tuple[str | None, str | None]]:
        """Change the membership; returns ``{pid: (old, new)}`` of the partitions that
        moved (only automatic ones can) and fires ``on_change`` for each."""
        new_members = _check_members(members)
        with self._lock:
            joined = sorted(new_members - self._members)
            left = self._members - new_members
            self._members = new_members
            moved: dict[int, tuple[str | None, str | None]] = {}
            if joined or left:
                for pid in range(self._partition_count):
                    if isinstance(self._overrides.get(pid, self._default), Automatic):
                        self._rehash(pid, joined, left, moved)
            self._record(moved)
        self._events.deliver()
        return moved

    def set_default(self, mode: MasterMode) -> dict[int, tuple[str | None, str | None]]:
        """Change the mode of every partition without an override."""
        checked = _check_mode(mode)
        with self._lock:
            self._default = checked
            moved = self._recompute(
                pid for pid in range(self._partition_count) if pid not in self._overrides
            )
        self._events.deliver()
        return moved

    def set_mode(
        self, partition_id: int, mode: MasterMode | None
    ) -> dict[int, tuple[str | None, str | None]]:
        """Override one partition's mode, or (``None``) return it to the default."""
        pid = self._check_pid(partition_id)
        checked = None if mode is None else _check_mode(mode)
        with self._lock:
            if checked is None:
                self._overrides.pop(pid, None)
            else:
                self._overrides[pid] = checked
            moved = self._recompute([pid])
        self._events.deliver()
        return moved

    # -- internals -------------------------------------------------------------------------

    def _check_pid(self, partition_id: object) -> int:
        pid = _check_partition_id(partition_id)
        if pid >= self._partition_count:
            raise InvalidArgumentError(
                f"partition_id {pid} is out of range: the policy has "
                f"{self._partition_count} partitions"
            )
        return pid

    def _compute(self, pid: int) -> tuple[str | None, int]:
        mode = self._overrides.get(pid, self._default)
        if isinstance(mode, Fixed):
            return mode.member, 0
        if isinstance(mode, Disabled):
            return None, 0
        best = _best(self._members, pid)
        return (None, 0) if best is None else best

    def _rehash(
        self,
        pid: int,
        joined: list[str],
        left: frozenset[str],
        moved: dict[int, tuple[str | None, str | None]],
    ) -> None:
        """Re-elect an automatic partition after members joined or left (lock held)."""
        old = self._masters[pid]
        if old is None or old in left:
            master, score = self._compute(pid)
        else:
            master, score = old, self._scores[pid]
            for member in joined:
                candidate = rendezvous_score(member, pid)
                if _beats(candidate, member, score, master):
                    master, score = member, candidate
        self._masters[pid], self._scores[pid] = master, score
        if master != old:
            moved[pid] = (old, master)

    def _recompute(self, pids: Iterable[int]) -> dict[int, tuple[str | None, str | None]]:
        moved: dict[int, tuple[str | None, str | None]] = {}
        for pid in pids:
            old = self._masters[pid]
            self._masters[pid], self._scores[pid] = self._compute(pid)
            if self._masters[pid] != old:
                moved[pid] = (old, self._masters[pid])
        self._record(moved)
        return moved

    def _record(self, moved: Mapping[int, tuple[str | None, str | None]]) -> None:
        if moved:
            self._generation += 1
            self._events.extend((pid, old, new) for pid, (old, new) in sorted(moved.items()))


__all__ = [
    "AUTOMATIC",
    "DISABLED",
    "Automatic",
    "Disabled",
    "Fixed",
    "MasterChangeCallback",
    "MasterMode",
    "MasterPolicy",
    "rendezvous_master",
    "rendezvous_score",
]

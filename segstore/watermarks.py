"""Truncation watermarks: what each partition still needs from the segmented log.

DESIGN.md invariant 6. An entry of a partition is *done* once it is durable in the
partition log (checkpointed), applied and covered by an applied checkpoint, and
quorum-acknowledged. A partition's **minimum required raft index** is the raft index of
its oldest entry that is not done; the **global minimum** is the least of those, of the
first entry not yet routed to a partition log, and of the first entry not yet committed.
The segmented log is physically truncated only below the global minimum (and never above
what the Raft engine allowed with ``compact``).

Each source reports its own term, so nothing here reads a file:

* the router: the first raft index after a partition's durable checkpoint while the
  partition has records above it, and the first record not routed;
* the applier: the first raft index not covered by a partition's applied checkpoint;
* the ack tracker: the first landed raft index not yet quorum-visible.

Pure and in memory; :func:`combine` is the one place the terms meet.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["PartitionWatermarks", "Watermarks", "combine"]


@dataclass(frozen=True)
class PartitionWatermarks:
    """One partition's indices and what it needs from the log.

    Attributes:
        partition_id: the partition.
        durable_index: partition log index durable and checkpointed.
        applied_index: partition index applied (in memory; may be ahead of the
            checkpoint).
        checkpointed_applied_index: partition index covered by the applied checkpoint.
        quorum_index: published quorum index (visibility point).
        required_raft_index: oldest raft index this partition needs, or None.
    """

    partition_id: int
    durable_index: int
    applied_index: int
    checkpointed_applied_index: int
    quorum_index: int
    required_raft_index: int | None


@dataclass(frozen=True)
class Watermarks:
    """A consistent-enough picture of every watermark (each source read once).

    Attributes:
        durable_index: the segmented log's durable index.
        commit_index: the highest committed raft index.
        log_first_index: the segmented log's first physically retained index.
        required_raft_index: the global minimum; the log may be truncated below it.
        holders: the partitions whose requirement equals the global minimum (empty
            when a global term, routing or commit, holds it).
        partitions: every partition's watermarks, by id.
    """

    durable_index: int
    commit_index: int
    log_first_index: int
    required_raft_index: int
    holders: tuple[int, ...]
    partitions: Mapping[int, PartitionWatermarks]


def _least(terms: Iterable[int | None]) -> int | None:
    present = [term for term in terms if term is not None]
    return min(present) if present else None


def combine(
    *,
    durable_index: int,
    commit_index: int,
    log_first_index: int,
    global_terms: Iterable[int],
    partition_terms: Mapping[int, Iterable[int | None]],
    indices: Mapping[int, tuple[int, int, int, int]],
) -> Watermarks:
    """Combine the sources' terms.

    ``global_terms``: raft indices needed regardless of partition (first unrouted,
    first uncommitted, the applier's floor + 1). ``partition_terms[pid]``: that
    partition's terms (None: the source needs nothing of it). ``indices[pid]``:
    ``(durable, applied, checkpointed_applied, quorum)`` for the report.
    """
    partitions: dict[int, PartitionWatermarks] = {}
    for pid in sorted(set(indices) | set(partition_terms)):
        durable, applied, checkpointed, quorum = indices.get(pid, (0, 0, 0, 0))
        partitions[pid] = PartitionWatermarks(
            partition_id=pid,
            durable_index=durable,
            applied_index=applied,
            checkpointed_applied_index=checkpointed,
            quorum_index=quorum,
            required_raft_index=_least(partition_terms.get(pid, ())),
        )
    overall = _least(list(global_terms) + [p.required_raft_index for p in partitions.values()])
    required = overall if overall is not None else commit_index + 1
    holders = tuple(pid for pid, p in partitions.items() if p.required_raft_index == required)
    return Watermarks(
        durable_index=durable_index,
        commit_index=commit_index,
        log_first_index=log_first_index,
        required_raft_index=required,
        holders=holders,
        partitions=partitions,
    )

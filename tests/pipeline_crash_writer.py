"""A writer process for the Pipeline kill -9 test (tests/test_pipeline_crash.py), and the
payload model the pipeline tests share.

Usage: ``python pipeline_crash_writer.py DIRECTORY SEED PARTITIONS``. Opens (or creates)
a :class:`~segstore.pipeline.Pipeline` with :class:`KeyValueStateMachine` partitions and
two simulated replicas in DIRECTORY, continues from whatever it recovered, and runs
forever: batches of ``submit_many`` to random partitions, ``flush``, acknowledgements of
the replicas (lagging by random amounts), explicit ``checkpoint`` calls besides the
driver's own (a short ``checkpoint_interval_s``, so checkpoints and compactions happen all
the time). The parent kills it with SIGKILL at a random time.

Entry ``k`` of partition ``p`` always carries :func:`payload_for` ``(p, k)``, so the state
a partition must have after its first ``n`` entries is :func:`model_state` ``(p, n)``,
whatever order the partitions were written in.

Protocol (one line per event on stdout, flushed):

``O <durable> <count_0> ... <count_{P-1}>``
    opened; everything up to raft index ``durable`` is durable, and partition ``p``
    holds ``count_p`` entries.
``D <durable> <count_0> ... <count_{P-1}>``
    ``flush`` returned: everything appended so far (``count_p`` entries of partition
    ``p``) is durable up to raft index ``durable``.
"""

from __future__ import annotations

import random
import sys
import time

SEGMENT_BYTES = 64 << 10
REPLICAS = ("r1", "r2")


def payload_for(pid: int, index: int) -> bytes:
    """Entry ``index`` of partition ``pid``: ``key=value``, keys reused, 20 to ~150 bytes."""
    pad = "x" * ((pid * 31 + index * 17) % 128)
    return f"k{index % 7}=p{pid}.{index}.{pad}".encode()


def model_state(pid: int, count: int) -> tuple[dict[bytes, bytes], int]:
    """A key-value state machine's (data, apply count) after partition ``pid``'s entries
    1..count, each applied exactly once."""
    data: dict[bytes, bytes] = {}
    for index in range(1, count + 1):
        key, _, value = payload_for(pid, index).partition(b"=")
        data[key] = value
    return data, count


def model_result(pid: int, count: int) -> list[bytes | None]:
    """What each apply of entries 1..count returns (the key's previous value)."""
    data: dict[bytes, bytes] = {}
    results: list[bytes | None] = []
    for index in range(1, count + 1):
        key, _, value = payload_for(pid, index).partition(b"=")
        results.append(data.get(key))
        data[key] = value
    return results


def main() -> None:
    from segstore.errors import BackpressureError
    from segstore.pipeline import Pipeline
    from segstore.testing.kv import KeyValueStateMachine

    directory, seed, partitions = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)

    def emit(kind: str, durable: int, counts: list[int]) -> None:
        sys.stdout.write(f"{kind} {durable} {' '.join(map(str, counts))}\n")
        sys.stdout.flush()

    pipeline = Pipeline.open(
        directory,
        partitions=partitions,
        state_machine_factory=lambda pid: KeyValueStateMachine(),
        replicas=REPLICAS,
        checkpoint_interval_s=rng.choice([0.02, 0.05, 0.2]),
        segment_bytes=SEGMENT_BYTES,
        max_pending=5_000,
    )
    nexts = pipeline.store.partition_next_indices()
    counts = [nexts.get(pid, 1) - 1 for pid in range(partitions)]
    emit("O", pipeline.store.last_durable_index(), counts)
    while True:
        size = rng.choice([1, 5, 40, 200])
        pids = [rng.randrange(partitions) for _ in range(size)]
        payloads = []
        for pid in pids:
            counts[pid] += 1
            payloads.append(payload_for(pid, counts[pid]))
        try:
            pipeline.submit_many(pids, payloads)
        except BackpressureError:
            for pid in pids:
                counts[pid] -= 1
            time.sleep(0.005)
            continue
        roll = rng.random()
        if roll < 0.5:
            durable = pipeline.flush()
            emit("D", durable, counts)
            for replica in REPLICAS:
                target = durable - rng.choice([0, 0, 10, 500])
                if target >= 1 and rng.random() < 0.7:
                    pipeline.ack(replica, target)
        elif roll < 0.55:
            pipeline.checkpoint()


if __name__ == "__main__":
    main()

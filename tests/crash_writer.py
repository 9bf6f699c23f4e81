"""A writer process for the kill -9 test (tests/test_aof_crash.py).

Usage: ``python crash_writer.py DIRECTORY SEED``. Opens (or creates) the Aof in
DIRECTORY and appends and syncs in a loop forever, printing ``durable <index>`` to stdout
(flushed) each time the durable index advances, whether it learnt so from ``sync()`` or
from an ``on_durable`` callback. Payloads and headers are derived from the index alone
(:func:`payload_for`, :func:`header_for`) so a checker can verify content without any
other record of what was written. The parent kills it with SIGKILL at a random time.
"""

from __future__ import annotations

import hashlib
import random
import sys
import threading

import numpy as np

HEADER_DTYPE = np.dtype([("term", "<u8"), ("partition", "<u4"), ("pindex", "<u4")])
SEGMENT_BYTES = 64 << 10


def payload_for(index: int) -> bytes:
    """The payload of record ``index``: its size (1..3000 bytes) and bytes from a hash."""
    digest = hashlib.blake2b(index.to_bytes(8, "little"), digest_size=16).digest()
    size = 1 + int.from_bytes(digest[:2], "little") % 3000
    return (digest * (size // 16 + 1))[:size]


def header_for(index: int) -> tuple[int, int, int]:
    """The header of record ``index``."""
    return (index * 7 + 3, index % 13, index // 13)


def main() -> None:
    from segstore.aof.aof import Aof

    directory, seed = sys.argv[1], int(sys.argv[2])
    rng = random.Random(seed)
    out_lock = threading.Lock()
    reported = [0]

    def report(durable: int | BaseException) -> None:
        if isinstance(durable, BaseException):
            return
        with out_lock:
            if durable > reported[0]:
                reported[0] = durable
                sys.stdout.write(f"durable {durable}\n")
                sys.stdout.flush()

    aof = Aof.open(
        directory,
        header_dtype=HEADER_DTYPE,
        segment_bytes=SEGMENT_BYTES,
        autosync=rng.random() < 0.5,
    )
    aof.on_durable(report)
    sys.stdout.write(f"opened {aof.first_index} {aof.last_index}\n")
    sys.stdout.flush()
    while True:
        start = aof.last_index + 1
        count = rng.choice([1, 1, 3, 20])
        if count == 1:
            index = aof.append(payload_for(start), header_for(start))
        else:
            indices = range(start, start + count)
            headers = np.array([header_for(i) for i in indices], HEADER_DTYPE)
            index = aof.append_batch([payload_for(i) for i in indices], headers)
        if rng.random() < 0.5:
            durable = aof.sync()
            if durable < index:
                raise AssertionError(f"sync returned {durable} < {index}")
            report(durable)


if __name__ == "__main__":
    main()

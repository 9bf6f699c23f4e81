"""segstore: inspect and exercise segstore data directories.

PATH is a single Aof directory (it has aof.meta) or a whole segmented log store (it
has log/ and checkpoints.lmdb/): the log, partitions/<id>/ and the checkpoints.

Usage:
  segstore dump PATH [--records] [--partition N] [--start N] [--limit N]
      An Aof: segments, index ranges and sizes; checks every CRC. --records prints
      each record's index, payload size and header fields.
      A store: the log's summary, its partition columns (entries and partition index
      range per partition, entries in no partition), each partition log (partition
      and raft index ranges, records, bytes) and the checkpoints (durable, durable
      raft and applied index per partition, routed raft index); then verify's checks.
      --records prints the log's records with their partition columns (raft indices
      from --start, --limit of them); --partition N prints partition N's records
      instead (partition index, raft index, payload size; --start and --limit in
      partition indices).
  segstore verify PATH
      An Aof: recovery's checks plus every record's CRC32C, index and length.
      A store: every CRC of the log and of each partition log, then cross-checks:
      each partition record whose raft index the log retains is the log's record of
      that partition (same raft and partition index, payload = log value after its
      16-byte partition header); partition indices are contiguous; no checkpoint's
      durable index is past its partition log's end; routed_raft_index is not past
      the log's end. Records not yet routed (a store not closed cleanly) are noted,
      not counted as problems. Every problem is printed with where and what.
      Exit status 0 when all is well, 1 on corruption or any problem, 2 when PATH is
      no store.
  segstore stats PATH [--json]
      A store only: which partition holds the log's truncation watermark back, from
      the log's header columns and the checkpoints (no payload or partition log is
      read). Prints the log's first and last index, durable extent, segments and
      bytes; routed_raft_index and applied_raft_floor; per partition its records and
      payload bytes in the retained log, its router checkpoint (durable index and
      raft index), its applied checkpoint (applied index, applied raft index,
      snapshot size) and its minimum required raft index: the smallest raft index of
      a retained record of the partition above its durable raft index or with a
      partition index above its applied index ("-": none). The watermark is the
      minimum of those, routed_raft_index + 1 and applied_raft_floor + 1; the
      partitions equal to it (when it is below the log's end) are named with the log
      records and bytes only they keep. Quorum acknowledgements live in memory only,
      so stats cannot show quorum offline. --json prints one stable dict instead
      (format_version 1). Exit status 1 if the checkpoints cannot be read.
  segstore demo [--count N] [--dir DIR] [--keep]
      A three-node cluster (issue #5): three `segstore node` processes on
      127.0.0.1 with 64 partitions, N submissions of 256 B (default 6,000) through a
      follower, a live view (leader, term, commit and applied indices, throughput,
      partition lag, masters, watermarks); the leader is killed with SIGKILL a third
      of the way, the failover is shown, the node restarted and caught up; then every
      node must hold identical partition states and every acknowledged submission
      must be applied exactly once everywhere; `segstore stats` of each data
      directory ends it. Exit status 1 if the check fails.
  segstore demo --embedded [--seconds S] [--dir DIR] [--keep]
      The single-node pipeline (issue #4) in a writer process: 64 partitions of
      key-value state machines, a producer, three simulated replicas (one lagging)
      and a slow partition meeting backpressure, with a live display of throughput,
      acknowledgements, quorum indices, apply lag and watermarks. After S seconds
      (default 5) the writer is killed with SIGKILL; `segstore stats` shows what it
      left; the store is recovered and every partition state is checked against a
      model fed each committed entry exactly once. Exit status 1 if the check fails.
  segstore demo --aof [--records N] [--dir DIR] [--keep]
      The Aof alone: append N records (default 1,000,000) with group commit,
      reopen, verify every CRC, and print throughput, recovery time and a dump
      summary.
  segstore node --id N --dir DIR --address HOST:PORT [--peer HOST:PORT ...]
               [--partitions N] [--password-env VAR] [--control] [--tick-ms MS]
               [--append-ms MS] [--reserved-log-items N] [--compaction-interval-s S]
      One member of a multi-node cluster (issue #5, docs/CLUSTER.md) over pysyncobj,
      with the built-in recording state machine in every partition. Prints a status
      line every second until SIGINT or SIGTERM, then closes cleanly. --control reads
      JSON-line commands on stdin instead (status, submit, load, load_wait, digest,
      payloads, add_member, remove_member, wait_leader, close) and answers one JSON
      line each: what the cluster demo, tests and benchmarks drive. A non-loopback
      address is refused unless a password is set (read from the environment
      variable named by --password-env): the transport exchanges pickles.
      --reserved-log-items: log entries kept below the commit index when compacting;
      --compaction-interval-s: how often the node compacts.

The tools open everything readonly and take each Aof's lock: stop the process using
the store first. Progress bars appear only on a terminal.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from segstore.errors import CorruptionError, SegstoreError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segstore",
        description="Inspect and exercise segstore data directories.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    dump = commands.add_parser("dump", help="segments, ranges, sizes; checks CRCs")
    dump.add_argument("path")
    dump.add_argument("--records", action="store_true", help="print every record's header")
    dump.add_argument(
        "--partition", type=int, default=None, help="a store: print this partition's records"
    )
    dump.add_argument("--start", type=int, default=None, help="first record to print")
    dump.add_argument("--limit", type=int, default=None, help="how many records to print")
    verify = commands.add_parser("verify", help="check everything; exit 1 on corruption")
    verify.add_argument("path")
    stats = commands.add_parser("stats", help="which partition holds the watermark back")
    stats.add_argument("path")
    stats.add_argument("--json", action="store_true", help="print one JSON dict")
    demo = commands.add_parser("demo", help="a cluster, a SIGKILLed leader, a check")
    kind = demo.add_mutually_exclusive_group()
    kind.add_argument("--embedded", action="store_true", help="the single-node pipeline")
    kind.add_argument("--aof", action="store_true", help="the Aof alone")
    demo.add_argument("--count", type=int, default=6_000, help="submissions (cluster)")
    demo.add_argument("--seconds", type=float, default=5.0, help="run time (--embedded)")
    demo.add_argument("--records", type=int, default=1_000_000, help="records (--aof)")
    demo.add_argument("--dir", default=None, help="data directory (default: a temp dir)")
    demo.add_argument("--keep", action="store_true", help="keep the data directory")
    node = commands.add_parser("node", help="run one member of a multi-node cluster")
    node.add_argument("--id", type=int, required=True, help="this node's id (positive)")
    node.add_argument("--dir", required=True, help="data directory")
    node.add_argument("--address", default="127.0.0.1:7001", help="host:port to listen on")
    node.add_argument("--peer", action="append", default=[], help="another member's host:port")
    node.add_argument("--partitions", type=int, default=64, help="partitions (at creation)")
    node.add_argument("--password-env", default=None, help="env variable holding a password")
    node.add_argument("--control", action="store_true", help="JSON-line commands on stdin")
    node.add_argument("--tick-ms", type=float, default=5.0, help="engine tick period")
    node.add_argument("--append-ms", type=float, default=10.0, help="append batching period")
    node.add_argument(
        "--reserved-log-items", type=int, default=None, help="log entries kept below commit"
    )
    node.add_argument(
        "--compaction-interval-s", type=float, default=None, help="seconds between compactions"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``segstore`` console script."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "dump":
            from segstore.inspection import dump

            return dump(
                args.path,
                sys.stdout,
                records=args.records,
                start=args.start,
                limit=args.limit,
                partition=args.partition,
            )
        if args.command == "verify":
            from segstore.inspection import verify

            return verify(args.path, sys.stdout)
        if args.command == "stats":
            from segstore.inspection import stats

            return stats(args.path, sys.stdout, as_json=args.json)
        if args.command == "node":
            import os

            from segstore.cluster import run_node

            password = os.environ.get(args.password_env) if args.password_env else None
            return run_node(
                args.id,
                args.dir,
                args.address,
                args.peer,
                args.partitions,
                password=password,
                control=args.control,
                tick_period_s=args.tick_ms / 1000,
                append_period_s=args.append_ms / 1000,
                reserved_log_items=args.reserved_log_items,
                compaction_interval_s=args.compaction_interval_s,
            )
        if args.aof:
            from segstore.aof_demo import run_aof_demo

            return run_aof_demo(records=args.records, directory=args.dir, keep=args.keep)
        if args.embedded:
            from segstore.pipeline_demo import run_pipeline_demo

            return run_pipeline_demo(seconds=args.seconds, directory=args.dir, keep=args.keep)
        from segstore.cluster_demo import run_cluster_demo

        return run_cluster_demo(count=args.count, directory=args.dir, keep=args.keep)
    except CorruptionError as exc:
        print(f"segstore {args.command}: CORRUPT: {exc}", file=sys.stderr)
        return 1
    except SegstoreError as exc:
        print(f"segstore {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

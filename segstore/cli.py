"""segstore: inspect and exercise segstore data directories.

Usage:
  segstore dump PATH [--records] [--start N] [--limit N]
      Segments, index ranges and sizes of the Aof at PATH; checks every CRC.
      --records prints each record's index, payload size and header fields.
  segstore verify PATH
      Recovery's checks plus every record's CRC32C, index and length.
      Exit status 0 when all is well, 1 on corruption, 2 when PATH is no store.
  segstore demo [--records N] [--dir DIR] [--keep]
      Append N records (default 1,000,000) with group commit, reopen, verify every
      CRC, and print throughput, recovery time and a dump summary.

The tools open a store readonly and take its lock: stop the process using it first.
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
    dump.add_argument("--start", type=int, default=None, help="first record to print")
    dump.add_argument("--limit", type=int, default=None, help="how many records to print")
    verify = commands.add_parser("verify", help="check everything; exit 1 on corruption")
    verify.add_argument("path")
    demo = commands.add_parser("demo", help="append, reopen, verify, report")
    demo.add_argument("--records", type=int, default=1_000_000)
    demo.add_argument("--dir", default=None, help="data directory (default: a temp dir)")
    demo.add_argument("--keep", action="store_true", help="keep the data directory")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``segstore`` console script."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "dump":
            from segstore.inspection import dump_aof

            return dump_aof(
                args.path, sys.stdout, records=args.records, start=args.start, limit=args.limit
            )
        if args.command == "verify":
            from segstore.inspection import verify_aof

            return verify_aof(args.path, sys.stdout)
        from segstore.demo import run_demo

        return run_demo(records=args.records, directory=args.dir, keep=args.keep)
    except CorruptionError as exc:
        print(f"segstore {args.command}: CORRUPT: {exc}", file=sys.stderr)
        return 1
    except SegstoreError as exc:
        print(f"segstore {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

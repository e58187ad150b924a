"""``python -m dslab.bench [NAME ...] [--quick]``: run benchmarks; the last line of each is its headline figure."""

from __future__ import annotations

import argparse
import sys

from dslab.bench import BENCHMARKS, run
from dslab.runtime import num_threads


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dslab.bench", description=__doc__)
    p.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of {', '.join(BENCHMARKS) or 'none'})")
    p.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    p.add_argument("--threads", type=int, help="torch intra-op threads for the run (default: torch's own choice)")
    args = p.parse_args(argv)
    names = args.names or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        p.error(f"unknown benchmark(s) {', '.join(unknown)}; available: {', '.join(BENCHMARKS) or '(none yet)'}")
    if not names:
        print("no benchmarks registered yet")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    for name in names:
        with num_threads(args.threads):
            result = run(name, quick=args.quick)
        for key, value in result.details.items():
            print(f"  {key}: {value}")
        print(result.line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The long fuzz run: mutants of the RFC 4475 torture messages through the SIP core.

    .venv/bin/python tests/bench/fuzz.py [--count 10000000] [--seed 1] [--jobs 2]
    CALLTRACKD_PURE_PYTHON=1 .venv/bin/python tests/bench/fuzz.py ...   # the sources

The same mutations and target as the fuzz test of the default run (tests/unit/sip/
fuzzing.py: parser, stream framer, transaction layer over UDP and TCP, a dialog and a
response built from each request that parses), `--count` of them split over `--jobs`
processes (seeds --seed, --seed + 1, ...). Prints the SIP core used (compiled or pure
Python), the mutations run, how many raised something other than ParseError (by the line
it came from, with the first mutant that did), and the rate. Exit status 1 when any did.
Not part of the test run.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.unit.sip import fuzzing  # noqa: E402


def job(args: tuple[int, int]) -> tuple[int, Counter[str], dict[str, bytes]]:
    count, seed = args
    result = fuzzing.run(list(fuzzing.torture_messages()), count, seed)
    return result.mutations, result.escaped, result.examples


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=10_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=1)
    args = ap.parse_args()
    import calltrackd.sip

    print(f"command: {' '.join(sys.argv)}")
    print(f"SIP core: {calltrackd.sip.NATIVE}")
    shares = [args.count // args.jobs + (i < args.count % args.jobs) for i in range(args.jobs)]
    started = time.perf_counter()
    total = 0
    escaped: Counter[str] = Counter()
    examples: dict[str, bytes] = {}
    with multiprocessing.Pool(args.jobs) as pool:
        for mutations, found, first in pool.imap_unordered(
                job, [(n, args.seed + i) for i, n in enumerate(shares)]):
            total += mutations
            escaped.update(found)
            for where, data in first.items():
                examples.setdefault(where, data)
    seconds = time.perf_counter() - started
    print(f"mutations: {total:,}")
    print(f"exceptions other than ParseError: {sum(escaped.values()):,}")
    for where, n in escaped.most_common():
        print(f"  {n:>8,}  {where}  first: {examples[where][:160]!r}")
    print(f"time: {seconds:.1f} s, {total / seconds:,.0f} mutations/s over {args.jobs} "
          f"process(es)")
    return 1 if escaped else 0


if __name__ == "__main__":
    sys.exit(main())

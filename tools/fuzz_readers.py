"""Fuzz every file reader of jaxbp long: `python tools/fuzz_readers.py [--examples N]`.

Runs the cases of `tests/test_fuzz_readers.py` (checkpoints through `load_checkpoint`,
`read_meta`, `read_arrays`, a run folder's `load_run` and `RunFolder.saved`/`load`;
`metrics.jsonl`; `summary.json`; `.npz`, `.csv` and IDX data files through
`jaxbp.datasets.load_file`) with N examples each (default 2000; the suite runs 25,
`JAXBP_FUZZ_EXAMPLES`), from a checkout with jaxbp installed (or `PYTHONPATH=src`):

    python tools/fuzz_readers.py --examples 5000
    python tools/fuzz_readers.py --only csv idx --examples 20000

Every outcome is tallied by reader: `read` (a correct read), `refused` (the documented
error, one line naming the file) or `crash: CLASS` (anything else: an exception of
another type, an error that does not name the file, a read that breaks the format's
rules). It prints the counts and one message per crash class, and exits 1 if any case
crashed or a case could not be built (0 otherwise). Hypothesis draws the cases at
random: each run tries new ones.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000, help="cases per fuzzed test")
    parser.add_argument(
        "--only",
        nargs="+",
        default=(),
        help="run the tests whose name contains one of these (checkpoint, run_folder, "
        "metrics, summary, npz, csv, idx)",
    )
    args = parser.parse_args(argv)
    os.environ["JAXBP_FUZZ_EXAMPLES"] = str(args.examples)
    sys.path.insert(0, str(TESTS))
    import conftest  # noqa: F401  (the suite's JAX settings: float64 on, strict promotion)
    import test_fuzz_readers as fuzz

    tests = [t for t in fuzz.FUZZ_TESTS if not args.only or any(o in t.__name__ for o in args.only)]
    broken = 0
    with fuzz.recording() as tally:
        for test in tests:
            start = time.perf_counter()
            try:
                test()
            except Exception as err:  # the harness itself, not a reader: say so, go on
                broken += 1
                print(f"{test.__name__}: the fuzz case itself failed: {err!r}", file=sys.stderr)
            print(f"{test.__name__}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    crashed = 0
    for reader, counts in tally.items():
        tried = sum(counts.values())
        print(f"{reader}: {tried} inputs")
        for outcome, n in sorted(counts.items(), key=lambda kv: (kv[0].startswith("crash"), kv[0])):
            print(f"    {n:>7}  {outcome}")
            if outcome.startswith("crash"):
                crashed += n
    if fuzz.EXAMPLE:
        print("\nOne message per crash class:")
        for (reader, kind), message in sorted(fuzz.EXAMPLE.items()):
            print(f"  {reader} / {kind}: {message}")
    print(f"\n{crashed} crashes in {sum(sum(c.values()) for c in tally.values())} inputs")
    return 1 if crashed or broken else 0


if __name__ == "__main__":
    sys.exit(main())

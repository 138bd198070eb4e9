"""Fuzz model bundles longer than the test suite does (issue 27, part 4).

Runs the properties of ``Testing/fuzz/test_fuzz_bundles.py`` (manifest mutations through ``load_bundle``,
``kidneytumorseg info`` and ``segment``; weight file mutations through loading and building the
networks), each example in a forked child under a memory limit, for ``--examples`` examples each. Unlike
the tests, a failing example does not stop the run: every distinct failure (its first line, numbers and
paths left out) is counted once and printed with the first example that showed it.

    python benchmarks/fuzz_bundles.py --examples 300 [--properties load info segment weights] [--seed 0]

Exit status 1 when any property failed.
"""
from __future__ import annotations

import argparse
import reprlib
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "Testing" / "fuzz"), str(ROOT / "Testing")]


def signature(problem: str) -> str:
    """What kind of failure ``problem`` is: its first line without paths and numbers."""
    line = problem.splitlines()[0] if problem else ""
    line = re.sub(r"(/[^\s:'\"]+)+", "<path>", line)
    line = re.sub(r"stage '[^']*'|stage #\d+", "stage S", line)
    return re.sub(r"\d+", "N", line)[:120]


def run_property(fz, name: str, examples: int, seed: int) -> Tuple[int, int, Dict[str, Tuple[str, str]], float]:
    """(examples run, examples failed, {failure signature: (first example, its problem)}, seconds) of property
    ``name``."""
    from hypothesis import HealthCheck, Phase, given, seed as hseed, settings
    from fuzz_bundle_edits import PROPERTIES

    strategy, method = PROPERTIES[name]
    found: Dict[str, Tuple[str, str]] = {}
    count = [0, 0]
    short = reprlib.Repr()
    short.maxstring = short.maxother = 80

    @hseed(seed)
    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def prop(args):
        problems = getattr(fz, method)(*args)
        count[0] += 1
        count[1] += bool(problems)
        for problem in problems:
            found.setdefault(signature(problem), (short.repr(args), problem))

    t0 = time.perf_counter()
    prop()
    return count[0], count[1], found, time.perf_counter() - t0


def main(argv: Optional[List[str]] = None) -> int:
    from fuzz_bundle_edits import PROPERTIES, Fuzz

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=200, help="examples per property")
    p.add_argument("--properties", nargs="+", choices=sorted(PROPERTIES), default=list(PROPERTIES))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    import warnings

    import torch

    warnings.filterwarnings("ignore", message="Generating overly large repr")
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="fuzz-bundles-") as tmp:
        fz = Fuzz(Path(tmp))
        for name in args.properties:
            n, failed, found, seconds = run_property(fz, name, args.examples, args.seed)
            rows.append((name, n, failed, len(found), seconds))
            print(f"{name:8s} {n:5d} examples  {failed:4d} failed  {len(found):3d} distinct failures  "
                  f"{seconds:7.1f} s", flush=True)
            for sig, (example, problem) in found.items():
                print(f"  FAIL {sig}\n       example: {example}\n       {problem[:600]}", flush=True)
    n, failed, distinct, seconds = (sum(r[i] for r in rows) for i in (1, 2, 3, 4))
    print(f"total    {n:5d} examples  {failed:4d} failed  {distinct:3d} distinct failures  {seconds:7.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Fuzzing the CT readers for longer than the test suite does (issue 27, part 4).

Runs the properties of ``Testing/fuzz/test_fuzz_inputs.py`` (defined in ``fuzz_input_specs.py`` and ``fuzz_input_checks.py``) (files written by
SimpleITK, NIfTI header bytes, NRRD and MetaImage header text, each read with
``read_volume`` then ``validate_ct``; and the ``segment`` command end to end on
each kind) with many more examples. A failing example does not stop the run:
every failure is counted, and the first example of each kind of failure is
printed (a spec that can be pasted into an ``@example``). Prints, per property,
the examples run, the outcomes (read and valid / read but not a usable CT /
refused), the failures and the time. Exit status 1 when anything failed.

    python benchmarks/fuzz_inputs.py [--examples 2000] [--cli-examples 50] [--seed 0] [--only nifti,nrrd]

``--memory-gb`` caps the address space (Linux), so a header claiming a huge
image makes the allocation fail (reported as a failure) instead of exhausting
the machine.
"""
from __future__ import annotations

import argparse
import collections
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "Testing" / "fuzz"), str(ROOT / "Testing")]


def _signature(exc: BaseException) -> str:
    """The kind of a failure: its type and first line, with paths and numbers blanked."""
    text = (str(exc).strip().splitlines() or [""])[0]
    text = re.sub(r"/\S+", "<path>", text)
    text = re.sub(r"0x[0-9a-f]+|\d+(\.\d+)?(e[-+]?\d+)?", "#", text)
    return f"{type(exc).__name__}: {text[:160]}"


def run_property(name, strategy, check, examples: int, seed, show: int, trace=None, messages=0) -> bool:
    from hypothesis import given, seed as hseed, settings
    from hypothesis.errors import HypothesisException

    import fuzz_input_checks as fz

    outcomes: collections.Counter = collections.Counter()
    said: collections.Counter = collections.Counter()
    failures: "collections.OrderedDict[str, list]" = collections.OrderedDict()

    @settings(max_examples=examples, **{**fz.FAST, "derandomize": seed is None})
    @given(spec=strategy)
    def prop(spec):
        if trace is not None:  # the example under way, in case it crashes the interpreter
            trace.write(f"{name} {spec!r}\n")
            trace.flush()
        try:
            outcome, message = check(spec)
            outcomes[outcome] += 1
            if message:
                said[re.sub(r"-?\d+(\.\d+)?(e[-+]?\d+)?", "#", message)[:200]] += 1
        except HypothesisException:  # reject(): an example that cannot be built
            raise
        except Exception as exc:  # counted, not raised: the run goes on
            outcomes["FAILED"] += 1
            failures.setdefault(_signature(exc), []).append(spec)

    if seed is not None:
        prop = hseed(seed)(prop)
    t0 = time.perf_counter()
    prop()
    elapsed = time.perf_counter() - t0
    n = sum(outcomes.values())
    detail = ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))
    print(f"{name:10s} examples {n:6d}  failures {outcomes['FAILED']:5d}  kinds {len(failures):3d}  "
          f"{elapsed:7.1f} s  ({detail})", flush=True)
    for text, count in said.most_common(messages):
        print(f"    said {count:5d} x {text}")
    for sig, specs in failures.items():
        print(f"    {len(specs):5d} x {sig}")
        for spec in specs[:show]:
            print(f"            {spec!r}")
    return not failures


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=2000, help="examples per reader property (default 2000; 0: none)")
    ap.add_argument("--cli-examples", type=int, default=50, help="examples per CLI property (default 50; 0: none)")
    ap.add_argument("--seed", type=int, help="random seed (default: derandomized, the same examples every run)")
    ap.add_argument("--only", help="comma-separated kinds: written, nifti, nrrd, mha")
    ap.add_argument("--show", type=int, default=1, help="examples printed per kind of failure (default 1)")
    ap.add_argument("--messages", type=int, default=0, help="print the N most frequent refusal messages")
    ap.add_argument("--trace", help="append each example to this file before running it (to find one that crashes)")
    ap.add_argument("--memory-gb", type=float, default=8.0, help="address-space cap in GiB (default 8; 0: none)")
    args = ap.parse_args(argv)
    if args.memory_gb > 0:
        try:
            import resource

            cap = int(args.memory_gb * (1 << 30))
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        except (ImportError, ValueError, OSError) as exc:
            print(f"(no memory cap: {exc})")
    import logging

    import torch

    import fuzz_input_checks as fz
    from helpers_bundle import make_tiny_bundle

    # The CLI's messages go to the checks' handler only (a handler here keeps the CLI's basicConfig away).
    logging.getLogger().addHandler(logging.NullHandler())
    logging.getLogger().setLevel(logging.WARNING)
    torch.set_num_threads(1)
    kinds = args.only.split(",") if args.only else sorted(fz.SPECS)
    ok = True
    trace = open(args.trace, "a", encoding="utf-8") if args.trace else None
    t0 = time.perf_counter()
    print(f"fuzzing {', '.join(kinds)}: {args.examples} examples per reader property, "
          f"{args.cli_examples} per CLI property, seed {args.seed if args.seed is not None else 'derandomized'}")
    for kind in kinds if args.examples else []:
        ok &= run_property(kind, fz.SPECS[kind], fz.check_read, args.examples, args.seed, args.show, trace,
                           args.messages)
    if args.cli_examples:
        with tempfile.TemporaryDirectory() as tmp:
            bundle = make_tiny_bundle(Path(tmp) / "bundle", fg_bias=-8.0).path
            for kind in kinds:
                ok &= run_property(f"cli-{kind}", fz.SPECS[kind], lambda spec: (f"rc {fz.check_cli(spec, bundle)}", ""),
                                   args.cli_examples, args.seed, args.show, trace)
    print(f"total {time.perf_counter() - t0:.1f} s; {'no failures' if ok else 'FAILURES'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Batch throughput of ``kidneytumorseg segment``: cases per minute in one process and with torchrun ranks.

Writes ``--cases`` phantoms (default 24, 64x128x128 at 3x2.5x2.5 mm) once, then segments all of them with
the shipped model: one process with ``--threads`` threads, and ``torchrun --nproc_per_node R`` with the
threads shared among the ranks (each rank one model load, every R-th case). The wall time of the whole
command is timed (Python start, model loads and the summary included), ``--repeats`` times; the median
gives cases per minute, and the ratio against one process. On a GPU machine, ranks take one GPU each.

    python benchmarks/bench_batch.py [--cases 24] [--ranks 2] [--threads 2] [--repeats 3] [--device cpu]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(cmd, env) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{done.stderr[-2000:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=24)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads in all (shared among the ranks)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    try:
        data = work / "cases"
        subprocess.run([sys.executable, "-m", "KidneyTumorSegLib", "phantom", str(data), "-n", str(args.cases),
                        "--shape", "64", "128", "128", "--spacing", "2.5", "2.5", "3"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = ["-m", "KidneyTumorSegLib", "segment", str(data), "--device", args.device, "--no-progress",
                "--overwrite"]
        per_rank = max(args.threads // args.ranks, 1)
        setups = {
            "1 process": ([sys.executable] + base + ["--threads", str(args.threads)], {}),
            f"torchrun, {args.ranks} ranks": (
                [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.ranks)]
                + base + ["--threads", str(per_rank)], {"OMP_NUM_THREADS": str(per_rank)}),
        }
        times = {}
        for name, (cmd, extra) in setups.items():
            env = dict(os.environ, **extra)
            times[name] = [run(cmd + ["-o", str(work / f"out-{n}")], env) for n in range(args.repeats)]
        one = statistics.median(times["1 process"])
        print(f"{args.cases} phantoms (64x128x128), shipped model, device {args.device}, {args.threads} threads in all, "
              f"median of {args.repeats}")
        print("| run | median s | cases/min | speed-up |")
        print("| --- | --- | --- | --- |")
        for name, ts in times.items():
            med = statistics.median(ts)
            print(f"| {name} | {med:.1f} | {60 * args.cases / med:.1f} | {one / med:.2f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

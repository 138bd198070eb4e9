"""Does a change leave every output as it was? Phantoms and segmentations of an older commit against this tree.

For a refactor that must change nothing: checks out ``--base`` (a git revision) into a worktree under
``--work``, then with each tree's code
  1. writes phantoms (held-out seeds 0..N-1, plus a few option sets) and compares every file
     (``phantom_info.json`` with its wall-clock ``timing_s`` left out);
  2. segments the base tree's phantoms with the shipped model (fast mode, and ``--full`` TTA and a
     tumor-growth run on two of them) and compares: label and candidate maps byte for byte, the
     ``.seg.nrrd`` voxels and header (its gzip stream carries a time stamp), the report without timings.
Prints one line per group and exits 1 when anything differs.

    python benchmarks/same_outputs.py --base b7fa537 --work /tmp/same [--cases 10]
"""
from __future__ import annotations

import argparse
import filecmp
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHANTOM_RUNS = {  # name: extra options of `phantom` (the held-out set is added from --cases)
    "lesions": ["--seed", "2", "--tumors", "3", "--cysts", "2", "--shape", "64", "96", "96", "--spacing", "1.5", "1.5", "3"],
    "randomised": ["-n", "2", "--seed", "10000", "--randomize-intensity", "--cyst-label"],
    "hypervascular": ["--seed", "5", "--hypervascular", "1", "--bowel-contact", "1"],
}


def run_core(tree: Path, *args) -> None:
    """``python -m KidneyTumorSegLib ARGS`` with ``tree``'s code."""
    env = dict(os.environ, PYTHONPATH=str(tree / "KidneyTumorSeg"), PYTHONWARNINGS="ignore::DeprecationWarning")
    subprocess.run([sys.executable, "-m", "KidneyTumorSegLib", *map(str, args)], env=env, check=True,
                   stdout=subprocess.DEVNULL)


def make_phantoms(tree: Path, out: Path, cases: int) -> None:
    run_core(tree, "phantom", out / "heldout", "-n", cases, "--seed", 0)
    for name, opts in PHANTOM_RUNS.items():
        run_core(tree, "phantom", out / name, *opts)


def segment(tree: Path, phantoms: Path, out: Path) -> None:
    common = ["--no-progress", "--no-preview", "--threads", "2"]
    run_core(tree, "segment", phantoms / "heldout", "-o", out / "fast", "--save-candidates", *common)
    two = sorted((phantoms / "heldout").iterdir())[:2]
    run_core(tree, "segment", *two, "-o", out / "full", "--full", *common)
    run_core(tree, "segment", two[-1], "-o", out / "growth", "--tumor-growth", 2, "--candidate-threshold", 0.6, *common)


def _without_timings(doc):
    if isinstance(doc, dict):
        return {k: _without_timings(v) for k, v in doc.items() if k not in ("seconds", "timings_s", "timing_s")}
    if isinstance(doc, list):
        return [_without_timings(v) for v in doc]
    return doc


def same_file(a: Path, b: Path) -> bool:
    """Equal as far as the change is concerned (see the module docstring)."""
    if a.name.endswith(".json"):
        return _without_timings(json.loads(a.read_text())) == _without_timings(json.loads(b.read_text()))
    if a.name.endswith(".seg.nrrd"):
        import nrrd
        import numpy as np

        (da, ha), (db, hb) = nrrd.read(str(a)), nrrd.read(str(b))
        return bool(np.array_equal(da, db)) and str(ha) == str(hb)
    return filecmp.cmp(a, b, shallow=False)


def compare(a: Path, b: Path):
    """(files compared, the relative paths that differ or are missing)."""
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    others = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    bad = sorted(set(files) ^ set(others))
    bad += [r for r in files if (b / r).is_file() and not same_file(a / r, b / r)]
    return len(files), bad


def worktree(rev: str, where: Path) -> Path:
    if not where.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), rev], check=True,
                       stdout=subprocess.DEVNULL)
    return where


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="git revision to compare this tree against")
    ap.add_argument("--work", type=Path, required=True, help="folder for the worktree and all outputs")
    ap.add_argument("--cases", type=int, default=10, help="held-out phantoms, seeds 0..N-1 (default 10)")
    args = ap.parse_args()
    work = args.work.resolve()
    trees = {"base": worktree(args.base, work / "base-tree"), "this": ROOT}
    failed = False
    for name, tree in trees.items():
        make_phantoms(tree, work / f"phantoms-{name}", args.cases)
    n, bad = compare(work / "phantoms-base", work / "phantoms-this")
    print(f"phantoms: {n} files compared, {len(bad)} differ {bad[:5]}")
    failed |= bool(bad)
    for name, tree in trees.items():
        segment(tree, work / "phantoms-base", work / f"segment-{name}")
    n, bad = compare(work / "segment-base", work / "segment-this")
    print(f"segmentations: {n} files compared, {len(bad)} differ {bad[:5]}")
    failed |= bool(bad)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

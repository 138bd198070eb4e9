"""The report recipes (``training/recipes/``) side by side: same training phantoms, same wall-clock budget each.

Every recipe is trained by :func:`ktstrain.recipe.train_recipe` on the same
training phantoms (a quarter shaped by real KiTS19 label maps, cases below
150, when ``../shared/data`` has them) with ``--time-budget`` seconds for the
whole recipe (its runs share it; preprocessing counts), at the recipe's
``--size`` (``cpu``: its own smaller patches and widths). Epochs are short
(``--iterations`` steps) so that the budget, not a long first epoch, decides
when a run ends; the learning-rate schedules follow the planned end. Each
bundle then segments the same held-out phantoms (random ones, seeds 0..,
and ones shaped by KiTS19 cases 152 and up) through the command line, and
the real abdominal CT (no labels: two kidneys of plausible size and no
tumor are expected). The shipped default model is scored the same way as
the baseline (it was trained over many rounds, not within the budget).

    taskset -c 0 python benchmarks/compare_recipes.py --time-budget 480 --work /tmp/compare \\
        --out docs/recipes-comparison.md

writes the table (markdown) to ``--out`` and the per-case rows to
``WORK/results.json``. Phantoms and finished recipes are kept in ``WORK``
between runs, and so are the scores in ``WORK/results.json`` of recipes
trained before (``--retrain`` trains and scores again). The ranking at equal budget is
the result; absolute Dice after minutes of CPU training is not.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
sys.path[:0] = [str(ROOT / "training"), str(ROOT / "KidneyTumorSeg")]
KITS_EVAL = ["00152", "00153", "00161", "00162"]
PHANTOM_SHAPE = (80, 288, 288)  # the CPU training rounds' small low-resolution phantoms
DEFAULT = "shipped default model 0.5.1"


def make_phantoms(work: Path, n_train: int, n_random: int, n_kits: int) -> None:
    """``work/phantoms/{train,eval}``, made once (each case written whole or not at all)."""
    from device_phantoms import make_phantoms as run_jobs, phantom_jobs

    root = work / "phantoms"
    labels = SHARED / "kits19-labels"
    train_labels = sorted(labels.glob("case_00[01]*.nii.gz"))[: max(n_train // 4, 0)] if labels.is_dir() else []
    jobs = phantom_jobs(root, n_train, n_random, PHANTOM_SHAPE, PHANTOM_SHAPE, train_labels)
    if labels.is_dir():
        for n, case in enumerate(KITS_EVAL[:n_kits]):
            jobs.append({"dest": str(root / "eval" / f"case_{10000 + n:05d}"), "seed": 30000 + n, "kwargs": {},
                         "kits_label": str(labels / f"case_{case}.nii.gz")})
    todo = [j for j in jobs if not Path(j["dest"]).exists()]
    if todo:
        print(f"making {len(todo)} phantoms", flush=True)
        failed = run_jobs(todo, time.monotonic() + 3600, processes=2)
        if failed:
            raise SystemExit("phantoms failed: " + "; ".join(failed))


def train(recipe, work: Path, args) -> Dict[str, Any]:
    """Train ``recipe`` within the budget (or reuse what an earlier run of this script trained)."""
    import torch

    from ktstrain.data import discover_cases
    from ktstrain.recipe import train_recipe

    done = work / "trained" / f"{recipe.name}.json"
    if done.exists() and not args.retrain:
        return json.loads(done.read_text())
    torch.set_num_threads(args.threads)
    overrides = {"all": {"train": {"iterations_per_epoch": args.iterations, "num_workers": 0, "val_every": 10 ** 6}}}
    cases = discover_cases(work / "phantoms" / "train")
    t0 = time.perf_counter()
    res = train_recipe(recipe, cases, work / "runs" / recipe.name, work / "bundles" / recipe.name, size=args.size,
                       overrides=overrides, time_budget_s=args.time_budget, device="cpu", overwrite=True)
    info = {"bundle": str(res.bundle), "train_s": round(time.perf_counter() - t0, 1), "parameters": res.parameters,
            "runs": sum(len(v) for v in res.runs.values()), "epochs": _epochs(res.runs)}
    done.parent.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(info, indent=1))
    return info


def _epochs(runs) -> List[int]:
    """Epochs each run trained (rows of its training log)."""
    from ktstrain.logs import read_log

    logs = [Path(r) / "training_log.csv" for rs in runs.values() for r in rs]
    return [len(read_log(log)) if log.exists() else 0 for log in logs]


def segment(model: Optional[str], inputs: Path, out: Path, threads: int, reuse: bool = False) -> None:
    """Segment ``inputs`` with the command line (``reuse``: never; score what ``out`` holds)."""
    if reuse:
        return
    cmd = [sys.executable, "-m", "KidneyTumorSegLib", "segment", str(inputs), "-o", str(out), "--device", "cpu",
           "--tta", "1", "--overwrite", "--no-progress", "--threads", str(threads)]
    cmd += ["--model", model] if model else []
    subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def score(name: str, model: Optional[str], work: Path, threads: int, reuse: bool = False) -> Dict[str, Any]:
    """Held-out Dice (per case and means), the stages' time per case (the reports' timings: reading and writing
    not counted), and the real CT's kidneys and tumors."""
    from evaluate_default import evaluate_folder

    ev = work / "phantoms" / "eval"
    pred = work / "pred" / name
    segment(model, ev, pred, threads, reuse)
    rows = evaluate_folder(pred, ev, work / "pred" / f"{name}.csv")
    times = [sum(json.loads(p.read_text())["timings_s"].values()) for p in pred.glob("*/*.report.json")]
    out = {"rows": [{k: r[k] for k in ("case_id", "kidney_dice", "tumor_dice", "composite")} for r in rows],
           "seconds_per_case": round(statistics.mean(times), 1) if times else float("nan")}
    for key in ("kidney_dice", "tumor_dice", "composite"):
        out[key] = statistics.mean(r[key] for r in rows) if rows else 0.0
    out["real_ct"] = real_ct(model, work / "pred_real" / name, threads, reuse)
    return out


def real_ct(model: Optional[str], out: Path, threads: int, reuse: bool = False) -> str:
    """The real CT's result in words: kidneys' volumes and kept tumors (expected: two kidneys, no tumor)."""
    real = SHARED / "real-abdominal-ct-dicom"
    if not real.is_dir():
        return "n/a (no ../shared)"
    if reuse and not out.is_dir():
        return "not run"
    segment(model, real, out, threads, reuse)
    reports = list(out.glob("*/*.report.json"))
    if not reports:
        return "no kidney found"
    rep = json.loads(reports[0].read_text())
    kidneys = ", ".join(f"{k['side'][0].upper()} {k['volume_ml']:.0f}" for k in rep["kidneys"])
    return f"{kidneys} mL; {rep['kept_tumors']} tumor(s)"


def table(results: Dict[str, Dict[str, Any]], args) -> str:
    """The comparison as markdown: one row per model, best composite first."""
    lines = ["| recipe | kidney Dice | tumor Dice | composite | parameters | stages' CPU s / case | training s (runs, epochs) | "
             "real CT (kidneys; tumors) |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    order = sorted(results, key=lambda k: -results[k]["composite"])
    for name in order:
        r = results[name]
        trained = (f"{r['train_s']:.0f} ({r['runs']}, {'/'.join(map(str, r['epochs']))})" if "train_s" in r
                   else "shipped model (many rounds)")
        params = f"{r['parameters'] / 1e6:.2f}M" if r.get("parameters") else "-"
        lines.append(f"| {name} | {r['kidney_dice']:.3f} | {r['tumor_dice']:.3f} | {r['composite']:.3f} | {params} | "
                     f"{r['seconds_per_case']:.1f} | {trained} | {r['real_ct']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    from ktstrain.recipe import find_recipe, list_recipes

    work = Path(args.work)
    make_phantoms(work, args.train, args.random, args.kits)
    recipes = [find_recipe(n) for n in args.recipes] if args.recipes else list_recipes()
    done = json.loads((work / "results.json").read_text()) if (work / "results.json").exists() else {}
    results: Dict[str, Dict[str, Any]] = {}
    for recipe in recipes:
        print(f"== {recipe.name}: training ({args.time_budget:.0f} s budget)", flush=True)
        info = train(recipe, work, args)
        old = done.get(recipe.name, {})
        if old.get("bundle") == info["bundle"] and old.get("train_s") == info["train_s"] and not args.retrain:
            results[recipe.name] = old  # trained and scored by an earlier run of this script
        else:
            results[recipe.name] = dict(info, **score(recipe.name, info["bundle"], work, args.threads, args.reuse))
        print(json.dumps({k: v for k, v in results[recipe.name].items() if k != "rows"}), flush=True)
    if not args.no_default:
        results[DEFAULT] = done.get(DEFAULT) or score("default", None, work, args.threads, args.reuse)
    (work / "results.json").write_text(json.dumps(results, indent=1))
    text = table(results, args)
    print(text)
    if args.out:
        write_doc(Path(args.out), text, args)


def write_doc(path: Path, text: str, args) -> None:
    """The table with the command that made it, written atomically; an existing file only with --overwrite."""
    from KidneyTumorSegLib.io.atomic import atomic_write_text

    command = "taskset -c 0 python benchmarks/compare_recipes.py " + " ".join(sys.argv[1:])
    head = (f"Made by `{command}` on {time.strftime('%Y-%m-%d')}: {args.train} training phantoms, "
            f"{args.random} random and {args.kits} KiTS19-shaped held-out phantoms, "
            f"{args.time_budget:.0f} s of training per recipe on {args.threads} CPU thread(s), size `{args.size}`.\n\n")
    atomic_write_text(path, head + text, overwrite=args.overwrite)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--time-budget", type=float, required=True, help="training seconds per recipe (all its runs)")
    ap.add_argument("--work", required=True, help="working folder (phantoms, runs, bundles, predictions)")
    ap.add_argument("--recipes", nargs="+", help="recipe names (default: every recipe)")
    ap.add_argument("--size", default="cpu", help="the recipes' size (cpu, tiny; 'report' is not a size)")
    ap.add_argument("--train", type=int, default=16, help="training phantoms (a quarter KiTS19-shaped)")
    ap.add_argument("--random", type=int, default=4, help="random held-out phantoms")
    ap.add_argument("--kits", type=int, default=2, help="KiTS19-shaped held-out phantoms")
    ap.add_argument("--iterations", type=int, default=20, help="optimiser steps per epoch")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--retrain", action="store_true", help="train again recipes this work folder has trained")
    ap.add_argument("--reuse-predictions", dest="reuse", action="store_true",
                    help="segment nothing: score the predictions WORK/pred* holds (a case without one scores 0)")
    ap.add_argument("--no-default", action="store_true", help="do not score the shipped default model")
    ap.add_argument("--out", help="markdown file for the table (docs/recipes-comparison.md)")
    ap.add_argument("--overwrite", action="store_true", help="replace --out")
    return ap.parse_args()


if __name__ == "__main__":
    main()

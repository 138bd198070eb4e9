"""Issue 3's GPU work in one command that fits a lent machine's fixed time.

A task that is lent a GPU gets 15 minutes of device time in all (start-up
and idle time included) and at most 10 minutes a command, so the work is
one prepared command with a wall-clock budget (default 540 s), in phases
that each have a deadline (a failed benchmark does not stop the rest; too
few phantoms or a failed export end the session there):

1. ``bench``: part 8's throughput benchmark (``benchmarks/bench_training.py``,
   both modes: the GPU-sized stage-2 network at 128^3 in bf16, and the real
   loader with GPU augmentation) into ``OUT/bench.json``;
2. ``phantoms``: training phantoms (seeds 50000 and up, never used before;
   the mix of the CPU rounds: cysts as hard negatives, bowel and organ
   contact, large, small and hypervascular tumors, plus phantoms shaped by
   KiTS19 label maps of cases < 150 when ``--kits-labels`` has them) and the
   10 held-out evaluation phantoms (seeds 0-9), made in parallel on every
   CPU core until the phase's deadline; a phantom still being made then is
   dropped whole (each is written to a temporary folder and renamed);
3. ``train``: the three stages at once on the one GPU
   (``training/configs/device/``), each ``kidneytumorseg-train train
   --time-budget`` so that all end before the export's reserve;
4. ``export``: the bundle (``OUT/bundle``: manifest and three weight files
   of 5.7 MB) with the shipped model's stage-4 settings;
5. ``eval``: the bundle on the held-out phantoms, KiTS19 Dice per case,
   if time is left (the full evaluation, with the KiTS-shaped phantoms and
   the real CT, runs afterwards on a CPU: ``training/evaluate_default.py
   --model OUT/bundle``).

``OUT/session.json`` (rewritten after every phase, so a run killed at the
command's limit still says how far it got) and ``OUT/session.log`` hold
the figures; at most 8 files come back from a lent machine and all of them
are in ``OUT``. On the lent machine, through ``training/device_session.sh``,
which unpacks the packages it lacks (``training/device_prepare.sh`` packs
them here first)::

    bash training/device_prepare.sh        # here: .devkit/ (packages for Python 3.12, KiTS19 label maps)
    # device run, carry [".devkit"], timeout 600:
    bash training/device_session.sh --out $OUT --budget 540

Everything also runs on a CPU with small sizes (``Testing/training/test_device_session.py``).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

# the phantoms phase's work, beside this script (whose folder Python puts on sys.path)
from device_phantoms import TRAIN_SEED0, make_phantoms, phantom_jobs

ROOT = Path(__file__).resolve().parents[1]
STAGES = (("roi", "coarse"), ("kidney", "kidney"), ("tumor", "tumor"))  # (role, configuration file stem)
SHIPPED_POST = ["tumor_growth_passes=1", "tumor_growth_mm=13"]  # the shipped model 0.5.1's stage-4 settings

log = logging.getLogger("device_session")


def _env() -> Dict[str, str]:
    """The environment for child processes: the project importable without installing it."""
    env = dict(os.environ)
    paths = [str(ROOT / "KidneyTumorSeg"), str(ROOT / "training")]
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class Session:
    """Phases with deadlines; ``OUT/session.json`` after each."""

    def __init__(self, out: Path, budget_s: float) -> None:
        self.out, self.budget = out, float(budget_s)
        self.t0 = time.monotonic()
        self.summary: Dict[str, Any] = {"budget_s": self.budget, "phases": {}}
        self.out.mkdir(parents=True, exist_ok=True)

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def at(self, seconds: float) -> float:
        """The monotonic time ``seconds`` after the session's start."""
        return self.t0 + seconds

    def record(self, phase: str, **info: Any) -> None:
        self.summary["phases"][phase] = dict(info, ended_at_s=round(self.elapsed(), 1))
        self.save()

    def save(self) -> None:
        from KidneyTumorSegLib.io.jsonfile import write_json

        write_json(self.summary, self.out / "session.json", overwrite=True, indent=1)


def start_logged(cmd: Sequence[Any], logfile: Path) -> subprocess.Popen:
    """Start ``cmd`` (items made strings) with its output in ``logfile``."""
    log.info("$ %s", " ".join(str(c) for c in cmd))
    with open(logfile, "w") as f:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT)


def wait_or_kill(p: subprocess.Popen, timeout: float) -> int:
    """``p``'s return code; killed (rc -9) past ``timeout`` seconds."""
    try:
        return p.wait(timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        return -9


def run_logged(cmd: Sequence[Any], logfile: Path, timeout: float) -> int:
    """Run ``cmd`` with its output in ``logfile``; killed (rc -9) past ``timeout`` seconds."""
    return wait_or_kill(start_logged(cmd, logfile), timeout)


def tail(path: Path, n: int = 15) -> List[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return []


def phase_bench(s: Session, args) -> None:
    cmd = [sys.executable, ROOT / "benchmarks" / "bench_training.py", "--mode", "both", "--config", args.bench_config,
           "--device", args.device, "--iters", args.bench_iters, "--repeats", 3, "--warmup", 3,
           "--cases", args.bench_cases, "--workers", args.bench_workers, "--prep-workers", args.workers,
           "--json", s.out / "bench.json", "--overwrite"]
    if args.bench_patch:
        cmd += ["--patch", *args.bench_patch]
    if args.bench_phantom_shape:
        cmd += ["--phantom-shape", *args.bench_phantom_shape]
    logfile = args.work / "bench.log"
    t = time.monotonic()
    rc = run_logged(cmd, logfile, min(args.bench_seconds, s.at(args.budget * 0.3) - time.monotonic()))
    info: Dict[str, Any] = {"ok": rc == 0, "rc": rc, "seconds": round(time.monotonic() - t, 1), "log_tail": tail(logfile)}
    if rc == 0 and (s.out / "bench.json").is_file():
        info["results"] = json.loads((s.out / "bench.json").read_text())
    s.record("bench", **info)


def phase_phantoms(s: Session, args) -> Dict[str, Any]:
    kits = sorted(Path(args.kits_labels).glob("case_*.nii.gz")) if args.kits_labels else []
    jobs = phantom_jobs(args.work / "phantoms", args.max_phantoms, args.eval, args.phantom_shape, args.eval_shape, kits)
    deadline = min(time.monotonic() + args.phantom_seconds, s.at(args.budget * 0.5))
    t = time.monotonic()
    failed = make_phantoms(jobs, deadline, args.workers)
    n_train, n_eval = (len(list((args.work / "phantoms" / part).glob("case_*"))) for part in ("train", "eval"))
    info = {"ok": n_train >= 5,  # 5-fold splits are written even for --fold all
            "seconds": round(time.monotonic() - t, 1), "train": n_train, "eval": n_eval, "failed": failed[:10],
            "kits_shaped_available": len(kits)}
    s.record("phantoms", **info)
    return info


def phase_train(s: Session, args) -> Dict[str, Path]:
    from ktstrain.config import load_config
    from ktstrain.logs import read_log

    data = args.work / "phantoms" / "train"
    runs = args.work / "runs"
    end = s.at(args.budget) - args.export_reserve
    budget = max(end - time.monotonic(), 30.0)  # earlier phases overran: train a little all the same
    procs, runs_of = {}, {}
    prep_workers = max(1, args.workers // len(STAGES))
    for role, stem in STAGES:
        cfg = Path(args.configs) / f"{stem}.json"
        logfile = args.work / f"train_{role}.log"
        cmd = [sys.executable, "-m", "ktstrain", "train", "--config", cfg, "--data", data, "--out", runs,
               "--cache", runs / f"cache_{role}", "--fold", "all", "--device", args.device, "--workers", prep_workers,
               "--time-budget", f"{budget:.0f}", "--no-progress", "--overwrite"]
        procs[role] = (start_logged(cmd, logfile), logfile)
        runs_of[role] = runs / f"{load_config(cfg).stage.name}_foldall"
    info: Dict[str, Any] = {"budget_s": round(budget, 1)}
    for role, (p, logfile) in procs.items():
        # a run over its budget by more than the reserve's half is stopped; its last checkpoint still exports
        rc = wait_or_kill(p, end + args.export_reserve / 2 - time.monotonic())
        csv_path = runs_of[role] / "training_log.csv"
        rows = read_log(csv_path) if csv_path.is_file() else []
        info[role] = {"ok": rc == 0, "rc": rc, "epochs": len(rows),
                      "first_loss": rows[0]["train_loss"] if rows else None,
                      "last_loss": rows[-1]["train_loss"] if rows else None,
                      "median_epoch_s": statistics.median(float(r["seconds"]) for r in rows) if rows else None,
                      "log_tail": tail(logfile, 8)}
    info["ok"] = all(info[r]["ok"] for r, _ in STAGES)
    s.record("train", **info)
    return runs_of


def phase_export(s: Session, args, runs_of: Dict[str, Path], phantoms: Dict[str, Any]) -> bool:
    which = "final" if all((r / "checkpoint_final.pt").is_file() for r in runs_of.values()) else "latest"
    data = (f"{phantoms.get('train', 0)} synthetic phantoms made in the session (seeds {TRAIN_SEED0} and up; "
            f"{min(phantoms.get('kits_shaped_available', 0), phantoms.get('train', 0) // 4)} at most shaped by KiTS19 "
            f"label maps of cases < 150)")
    cmd = [sys.executable, "-m", "ktstrain", "export", "--roi", runs_of["roi"], "--kidney", runs_of["kidney"],
           "--tumor", runs_of["tumor"], "--which", which, "-o", s.out / "bundle", "--overwrite",
           "--name", "kidneytumorseg-device-phantom", "--version", args.version,
           "--description", "GPU-sized cascade (1.4M parameters per stage) trained in one short session on a lent "
                            "GPU on synthetic phantoms only (training/device_session.py)",
           "--data-description", data,
           "--limitations", "trained for minutes on synthetic phantoms only, never on real CT; not evaluated on real "
                            "scans with labels. Not for clinical use: check every kidney outline and tumor candidate.",
           "--post", *SHIPPED_POST]
    logfile = args.work / "export.log"
    rc = run_logged(cmd, logfile, max(s.at(args.budget) - time.monotonic(), 30.0))
    ok = rc == 0 and (s.out / "bundle" / "manifest.json").is_file()
    s.record("export", ok=ok, rc=rc, which=which, log_tail=tail(logfile, 6))
    return ok


def phase_eval(s: Session, args) -> None:
    gt = args.work / "phantoms" / "eval"
    cases = sorted(gt.glob("case_*"))
    if not cases:
        s.record("eval", ok=False, error="no evaluation phantom was made in time")
        return
    pred = args.work / "pred_eval"
    cmd = [sys.executable, "-m", "KidneyTumorSegLib", "segment", gt, "-o", pred, "--model", s.out / "bundle",
           "--device", args.device, "--overwrite", "--no-progress"]
    logfile = args.work / "eval.log"
    t = time.monotonic()
    rc = run_logged(cmd, logfile, s.at(args.budget) - time.monotonic())
    info: Dict[str, Any] = {"rc": rc, "seconds": round(time.monotonic() - t, 1), "cases": len(cases)}
    try:
        from KidneyTumorSegLib.evaluation.evaluate import evaluate

        rows, _ = evaluate(pred, gt)
        info["rows"] = [{k: r[k] for k in ("case_id", "kidney_dice", "tumor_dice")} for r in rows]
        if rows:
            info["median_kidney_dice"] = statistics.median(r["kidney_dice"] for r in rows)
            info["median_tumor_dice"] = statistics.median(r["tumor_dice"] for r in rows)
        info["ok"] = rc == 0 and bool(rows)
    except Exception as exc:  # the bundle is what matters; a failed scoring is reported, not fatal
        info.update(ok=False, error=f"{type(exc).__name__}: {exc}", log_tail=tail(logfile, 8))
    s.record("eval", **info)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="what comes back: session.json, session.log, bench.json, bundle/")
    p.add_argument("--work", type=Path, help="phantoms, caches, runs (default: a temporary folder)")
    p.add_argument("--budget", type=float, default=540.0, help="wall-clock seconds for everything (default 540)")
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1), help="CPU processes")
    p.add_argument("--configs", default=str(ROOT / "training" / "configs" / "device"),
                   help="folder with coarse.json, kidney.json, tumor.json")
    p.add_argument("--version", default="0.6.0-device")
    g = p.add_argument_group("phases")
    g.add_argument("--no-bench", action="store_true")
    g.add_argument("--bench-config", default=str(ROOT / "training" / "configs" / "kidney.json"),
                   help="the network benchmarked (default: the GPU-sized stage 2)")
    g.add_argument("--bench-patch", nargs=3, type=int, default=[128, 128, 128])
    g.add_argument("--bench-iters", type=int, default=10)
    g.add_argument("--bench-cases", type=int, default=6)
    g.add_argument("--bench-workers", type=int, default=8)
    g.add_argument("--bench-phantom-shape", nargs=3, type=int)
    g.add_argument("--bench-seconds", type=float, default=110.0)
    g.add_argument("--max-phantoms", type=int, default=2000, help="training phantoms at most (the deadline decides)")
    g.add_argument("--phantom-seconds", type=float, default=100.0)
    g.add_argument("--phantom-shape", nargs=3, type=int, help="training phantoms' shape (default 80 288 288)")
    g.add_argument("--kits-labels", help="folder of KiTS19 label maps case_*.nii.gz to shape a quarter of them by")
    g.add_argument("--eval", type=int, default=10, help="held-out phantoms (seeds 0..N-1) to score the bundle on")
    g.add_argument("--eval-shape", nargs=3, type=int, help="their shape (default: the held-out set's, full size)")
    g.add_argument("--export-reserve", type=float, default=90.0,
                   help="seconds kept after training for the export and the evaluation")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    s = Session(out, args.budget)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        handlers=[logging.StreamHandler(sys.stdout), logging.FileHandler(out / "session.log")])
    tmp = None
    if args.work is None:
        tmp = tempfile.TemporaryDirectory(prefix="kts-device-")
        args.work = Path(tmp.name)
    args.work.mkdir(parents=True, exist_ok=True)
    try:
        import torch

        s.summary["environment"] = {"python": sys.version.split()[0], "torch": torch.__version__,
                                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                                    "cpus": os.cpu_count()}
        s.save()
        log.info("environment: %s", s.summary["environment"])
        if not args.no_bench:
            phase_bench(s, args)
        phantoms = phase_phantoms(s, args)
        if not phantoms["ok"]:
            log.error("too few training phantoms made: %s", phantoms)
            return 1
        runs_of = phase_train(s, args)
        if not phase_export(s, args, runs_of, phantoms):
            return 1
        if args.eval:
            phase_eval(s, args)
        return 0
    finally:
        s.summary["seconds"] = round(s.elapsed(), 1)
        s.save()
        log.info("session: %.0f s of %.0f; %s", s.elapsed(), s.budget,
                 ", ".join(f"{k} {'ok' if v.get('ok') else 'FAILED'}" for k, v in s.summary["phases"].items()))
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())

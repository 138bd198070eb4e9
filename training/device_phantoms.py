"""The phantoms of ``device_session.py``'s ``phantoms`` phase: which ones, and making them against a deadline.

Training phantoms have seeds 50000 and up (never used before) and cycle over
the CPU rounds' kinds, a quarter shaped by KiTS19 label maps when there are
some; the held-out evaluation phantoms (seeds 0-9) come first. Each is
written to a temporary folder and renamed into place, so one cut off by the
deadline is dropped whole.
"""
from __future__ import annotations

import multiprocessing as mp
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

TRAIN_SEED0 = 50000  # never used before: CPU rounds 10000-14019, 20000+, 30000+ and 40000+ KiTS case; evaluation 0-9, 30000+


def phantom_kind(i: int) -> Dict[str, Any]:
    """The keyword arguments of training phantom ``i``: a fixed cycle over the CPU rounds' kinds."""
    small = {"randomize_intensity": True, "shape": None}
    kinds = [
        dict(small, organ_contact=0.5, bowel_contact=0.5, cyst_label=True, n_cysts=1),  # rounds 5-6
        dict(small, organ_contact=0.7, n_tumors=1, tumor_diameter_mm=(45.0, 110.0)),  # large exophytic (round 12)
        dict(small, organ_contact=0.5, bowel_contact=0.5, cyst_label=True, n_cysts=1, n_tumors=3,
             tumor_diameter_mm=(8.0, 35.0)),  # small tumors (round 9)
        dict(small, organ_contact=0.5, cyst_label=True, n_cysts=1, n_tumors=2, hypervascular=0.7),  # round 13
        dict(small, organ_contact=1.0, bowel_contact=0.7),  # no fat plane, bowel against the kidneys (rounds 3, 5)
        dict(small, organ_contact=0.5, bowel_contact=0.5, cyst_label=True, n_cysts=2, n_tumors=2,
             tumor_diameter_mm=(6.0, 20.0)),  # round 9's second kind
    ]
    return dict(kinds[i % len(kinds)])


def _make_one(job: Dict[str, Any]) -> str:
    """Write one phantom case (a pool task): into a temporary folder, then renamed into place."""
    from KidneyTumorSegLib.phantom import write_phantom_cases

    dest = Path(job["dest"])
    tmp = dest.parent.parent / "_tmp" / f"{dest.parent.name}_{dest.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    kwargs = dict(job["kwargs"])
    if job.get("kits_label"):
        from KidneyTumorSegLib.io.volume_io import read_label

        kwargs["kits_label"] = read_label(job["kits_label"])
    write_phantom_cases(tmp, 1, seed0=job["seed"], start_index=0, **kwargs)
    dest.parent.mkdir(parents=True, exist_ok=True)
    (tmp / "case_00000").rename(dest)
    shutil.rmtree(tmp, ignore_errors=True)
    return str(dest)


def phantom_jobs(root: Path, n_train: int, n_eval: int, shape: Optional[Sequence[int]],
                 eval_shape: Optional[Sequence[int]], kits_labels: Sequence[Path]) -> List[Dict[str, Any]]:
    """The evaluation phantoms first (seeds 0.., the held-out set), then training ones, KiTS-shaped mixed in."""
    jobs = [{"dest": str(root / "eval" / f"case_{s:05d}"), "seed": s,
             "kwargs": {"shape": tuple(eval_shape) if eval_shape else None}} for s in range(n_eval)]
    kits = list(kits_labels)
    for i in range(n_train):
        if kits and i % 4 == 3:  # a quarter shaped by real KiTS19 label maps while there are some left
            label = kits.pop(0)
            jobs.append({"dest": str(root / "train" / f"case_{i:05d}"), "seed": TRAIN_SEED0 + i,
                         "kwargs": {"randomize_intensity": i % 8 == 7, "bowel_contact": 0.3 if i % 8 == 7 else 0.0},
                         "kits_label": str(label)})
            continue
        kw = phantom_kind(i)
        if shape:
            kw["shape"] = tuple(shape)
        elif kw.get("shape") is None:
            kw["shape"] = (80, 288, 288)  # the CPU rounds' small low-resolution phantoms (2-4 s each)
        jobs.append({"dest": str(root / "train" / f"case_{i:05d}"), "seed": TRAIN_SEED0 + i, "kwargs": kw})
    return jobs


def make_phantoms(jobs: Sequence[Dict[str, Any]], deadline: float, processes: int) -> Dict[str, Any]:
    """Run ``jobs`` on ``processes`` workers until ``deadline`` (``time.monotonic()``).

    Returns the failures; what was made are the jobs' ``dest`` folders that
    exist (a case is renamed into place whole, also one finished after the
    first still running at the deadline).
    """
    failed: List[str] = []
    ctx = mp.get_context("spawn")  # no inherited torch / CUDA state in the workers
    pool = ctx.Pool(processes)
    try:
        pending = [pool.apply_async(_make_one, (job,)) for job in jobs]
        for job, res in zip(jobs, pending):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                res.get(timeout=left)
            except mp.TimeoutError:
                break
            except Exception as exc:  # one bad phantom must not stop the session
                failed.append(f"{job['dest']}: {type(exc).__name__}: {exc}")
    finally:
        pool.terminate()
        pool.join()
    return failed

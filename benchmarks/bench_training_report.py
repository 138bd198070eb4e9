"""The report of ``bench_training.py``: the device, the targets and the printed table.

Targets (one H100, bf16): >= 60 128^3-equivalent patches/s and the GPU
>= 90 % busy with the real loader; on a CPU they are shown for reference only.
"""
from __future__ import annotations

import math
import platform
from pathlib import Path
from typing import Any, Dict, List

import torch

TARGET_EQ_PATCHES_S = 60.0
TARGET_GPU_BUSY = 0.90


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)} ({dev})"
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {model}, {torch.get_num_threads()} torch thread(s)"


def targets(rows: List[Dict[str, Any]], dev: torch.device, precision: str) -> List[Dict[str, Any]]:
    applies = dev.type == "cuda" and precision == "bf16"
    out = []
    for r in rows:
        out.append({"what": f"{r['mode']}: 128^3-equivalent patches/s", "target": TARGET_EQ_PATCHES_S,
                    "value": r["eq_patches_per_s"], "ratio": r["eq_patches_per_s"] / TARGET_EQ_PATCHES_S,
                    "met": r["eq_patches_per_s"] >= TARGET_EQ_PATCHES_S, "applies": applies})
        if r["mode"] == "loader":
            b = r.get("gpu_busy")
            out.append({"what": f"loader: GPU busy ({r.get('busy_source') or 'no GPU'})", "target": TARGET_GPU_BUSY,
                        "value": b, "ratio": None if b is None else b / TARGET_GPU_BUSY,
                        "met": None if b is None else b >= TARGET_GPU_BUSY, "applies": applies and b is not None})
    return out


def _fmt(v, spec: str, none: str = "-") -> str:
    return none if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def print_report(res: Dict[str, Any]) -> None:
    print(f"\nTraining throughput - config {res['config']}, stage {res['stage']}")
    print(f"device: {res['device']}; precision {res['precision']}; torch {res['torch']}; "
          f"cudnn.benchmark {res['cudnn_benchmark']}; {res['warmup']} warm-up + {res['repeats']} x {res['iters']} "
          f"timed iterations (median window)")
    head = (f"{'mode':8} {'network':38} {'patch':>12} {'batch':>5} {'it/s':>8} {'patch/s':>8} {'128^3-eq/s':>10} "
            f"{'GPU busy':>10} {'data wait':>9} {'peak MB':>11}")
    print(head)
    print("-" * len(head))
    for r in res["rows"]:
        busy = "-"
        if r.get("gpu_busy") is not None:
            busy = f"{100 * r['gpu_busy']:.0f}% {r['busy_source']}"
        wait = _fmt(None if "data_wait" not in r else 100 * r["data_wait"], ".1f")
        wait = wait + "%" if wait != "-" else wait
        print(f"{r['mode']:8} {r['network'][:38]:38} {'x'.join(map(str, r['patch'])):>12} {r['batch']:>5} "
              f"{r['iters_per_s']:>8.3f} {r['patches_per_s']:>8.3f} {r['eq_patches_per_s']:>10.3f} {busy:>10} "
              f"{wait:>9} {r['peak_mb']:>7.0f} {r['peak_kind']:<3}")
    for r in res["rows"]:
        if r["mode"] == "loader":
            print(f"loader: {r['cases']} case(s) of {r['data']} ({r['cache_items']} item(s)), {r['workers']} worker(s); "
                  f"phantoms {r['phantom_s']:.1f} s, preprocessing {r['preprocess_s']:.1f} s (not in the rates)")
            if r.get("nvml_unavailable"):
                print(f"  GPU busy from CUDA events (upper bound), NVML unavailable: {r['nvml_unavailable']}")
    print("memory format: " + ", ".join(f"{r['mode']} {r['memory_format']}" for r in res["rows"]))
    print("targets (one H100, bf16):")
    for t in res["targets"]:
        if t["value"] is None:
            print(f"  {t['what']}: >= {t['target']:g}: not measured here (no GPU; the data-wait fraction is above)")
            continue
        state = ("met" if t["met"] else "MISSED") if t["applies"] else ("met" if t["met"] else "below")
        note = "" if t["applies"] else f"  [reference only: this run is {res['device_type']} {res['precision']}]"
        print(f"  {t['what']} >= {t['target']:g}: {t['value']:.3g} = {t['ratio']:.3g}x of target -> {state}{note}")

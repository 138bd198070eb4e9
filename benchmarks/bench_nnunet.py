"""An nnU-Net model over the whole scan (``nnUNetv2_predict``) against our cascade running it inside the ROI only.

Model: an nnU-Net v2 trained-model folder with a KiTS-like 3d configuration
(PlainConvUNet, 6 stages, 16-160 features: half nnU-Net's default widths,
patch 64x128x128 at 2.5x1.6x1.6 mm), made from the test fixture's genuine KiTS19 folder (its
plans, dataset.json and checkpoint format) with the architecture widened in
``plans.json`` and random weights (seeded): no KiTS weights can be had here.
Both sides load the same folder.

Case: a 512x512x200 phantom at 0.78x0.78x2.5 mm (seed ``--seed``).

* **nnU-Net**: ``nnUNetv2_predict_from_modelfolder -f 0 --disable_tta -device cpu -npp 1 -nps 1``
  on the whole scan (its own CLI, a fresh process).
* **ours, whole scan**: ``kidneytumorseg segment --no-postprocess`` (the same work through our loader).
* **ours, cascade**: ``kidneytumorseg segment`` with a bundle from ``import-model``: stage 1 from
  the shipped model, stages 2 and 3 from the nnU-Net folder. The random-weight model would not find
  kidneys, so (as ``bench_cascade.py`` does) the nnU-Net stages run their real prediction (timed)
  and then answer with the phantom's reference, which gives stage 3 the kidney boxes a trained
  model gives it (inside stage 2's region: answered from the same run, not run again).

Each run is a fresh process timed from outside (``/usr/bin/time``: wall seconds and the peak RSS
of the largest process of its tree). Medians of ``--runs``; ratios nnU-Net / ours.
Agreement: nnU-Net's own label map of the whole scan against its label map of the ROI crop
(the same model, our loader) inside the reference kidneys' boxes: what running inside the ROI
changes. With random weights this measures the effect of the crop (less context, other tiling),
not accuracy.

    python benchmarks/bench_nnunet.py --runs 3 --threads 2 --work /tmp/bench-nnunet
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "Testing"))

# nnU-Net's 3d layout for KiTS at half its default widths (32-320): at full width one whole-scan run took
# 378 s on 2 CPU cores, too long to repeat three times on each side
ARCH = {"n_stages": 6, "features_per_stage": [16, 32, 64, 128, 160, 160],
        "kernel_sizes": [[3, 3, 3]] * 6,
        "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]],
        "n_conv_per_stage": [2] * 6, "n_conv_per_stage_decoder": [2] * 5}
SPACING, PATCH = [2.5, 1.6, 1.6], [64, 128, 128]


def make_model(work: Path) -> Path:
    """The benchmark's trained-model folder (see the module docstring), made once in ``work``."""
    import shutil

    import torch
    from nnunet_fixture import build_nnunet_results

    dst = work / "nnUNet_results" / "Dataset040_KiTS19bench" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    if (dst / "fold_0" / "checkpoint_final.pth").is_file():
        return dst
    src = next(build_nnunet_results(ROOT / ".cache" / "nnunet-fixture", "kits19").glob("*__3d_fullres"))
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src / "dataset.json", dst / "dataset.json")
    plans = json.loads((src / "plans.json").read_text())
    conf = plans["configurations"]["3d_fullres"]
    conf.update(spacing=SPACING, patch_size=PATCH)
    conf["architecture"]["arch_kwargs"].update(ARCH)
    (dst / "plans.json").write_text(json.dumps(plans, indent=2))
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    a = conf["architecture"]
    torch.manual_seed(0)
    net = get_network_from_plans(a["network_class_name"], a["arch_kwargs"], a["_kw_requires_import"], 1, 3,
                                 deep_supervision=False)
    ckpt = torch.load(str(src / "fold_0" / "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    ckpt["network_weights"] = net.state_dict()  # trusted: built by the fixture on this machine
    (dst / "fold_0").mkdir(exist_ok=True)
    torch.save(ckpt, str(dst / "fold_0" / "checkpoint_final.pth"))
    return dst


def make_case(work: Path, seed: int):
    import SimpleITK as sitk

    from KidneyTumorSegLib.phantom import make_phantom
    from KidneyTumorSegLib.io.volume_io import volume_to_sitk
    from KidneyTumorSegLib.io.writers import write_labelmap

    img, lab = work / "in" / "case_0000.nii.gz", work / "label.nii.gz"
    if not img.is_file():
        img.parent.mkdir(parents=True, exist_ok=True)
        ph = make_phantom(seed=seed, shape=(200, 512, 512), spacing=(0.78, 0.78, 2.5), n_tumors=2)
        sitk.WriteImage(volume_to_sitk(ph.image), str(img))
        write_labelmap(ph.label, lab, overwrite=True)
    return img, lab


def timed(cmd, env) -> dict:
    """Wall seconds and peak RSS (MB, largest process of the tree) of ``cmd``, run to completion."""
    t = time.perf_counter()
    out = subprocess.run(["/usr/bin/time", "-f", "MAXRSS %M"] + cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if out.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    rss = [ln for ln in out.stderr.splitlines() if ln.startswith("MAXRSS ")]
    return {"s": wall, "peak_rss_mb": int(rss[-1].split()[1]) / 1024 if rss else float("nan"), "stdout": out.stdout}


def child_cascade(args) -> None:
    """Our cascade with the nnU-Net stages answering with the reference after their real prediction."""
    import torch

    from KidneyTumorSegLib.config import RuntimeConfig
    from KidneyTumorSegLib.io.outputs import write_case_outputs
    from KidneyTumorSegLib.pipeline import Segmenter
    from KidneyTumorSegLib.engine.reference import reference_predictors
    from KidneyTumorSegLib.io.volume_io import read_label, read_volume

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    seg = Segmenter(args.bundle, RuntimeConfig(device="cpu", threads=args.threads))
    refs = reference_predictors(read_label(args.label), tumor_probability=1.0)
    runs = next(iter(seg.nnunet_runs.values()))
    real = dict(seg.predictors)
    for role in ("kidney", "tumor"):
        seg.predictors[role] = _Answering(real[role], refs[role])
    image = read_volume(args.image)
    res = seg.segment(image)
    out = Path(args.out)
    write_case_outputs(res, image, out, "case_0000", overwrite=True, preview=False)
    print("RESULT " + json.dumps({"s": time.perf_counter() - t0, "model_runs": runs.runs, "status": res.status,
                                  "roi_lps_mm": res.roi_lps_mm, "timings_s": res.timings_s}))


class _Answering:
    def __init__(self, real, ref):
        self.real, self.ref = real, ref

    def predict(self, vol, progress=None):
        self.real.predict(vol)
        return self.ref.predict(vol)


def agreement(model_dir: Path, image: Path, label: Path, roi_lps) -> dict:
    """nnU-Net's label map of the whole scan vs of the ROI crop, inside the reference kidneys' boxes."""
    import numpy as np

    from KidneyTumorSegLib.bundles.nnunet_folder import resolve
    from KidneyTumorSegLib.engine.nnunet_model import open_model
    from KidneyTumorSegLib.io.volume_io import read_label, read_volume

    model = open_model(resolve(model_dir, folds=["0"]))
    vol, ref = read_volume(image), read_label(label)
    whole = model.segment(vol.array, vol.spacing_zyx)
    lo = np.floor(vol.world_to_index(np.asarray(roi_lps[0]))).astype(int)[::-1]
    hi = np.ceil(vol.world_to_index(np.asarray(roi_lps[1]))).astype(int)[::-1] + 1
    box = tuple(slice(max(a, 0), min(b, n)) for a, b, n in zip(lo, hi, vol.shape))
    crop = model.segment(np.ascontiguousarray(vol.array[box]), vol.spacing_zyx)
    inside = np.zeros(vol.shape, bool)
    import cc3d
    comps = cc3d.connected_components(ref.array > 0)
    for sl in __import__("scipy.ndimage", fromlist=["find_objects"]).find_objects(comps):
        inside[sl] = True
    a, b = whole[box][inside[box]], crop[inside[box]]
    fa, fb = a > 0, b > 0
    dice = 2 * float((fa & fb).sum()) / max(1, int(fa.sum() + fb.sum()))
    return {"voxels": int(a.size), "equal_fraction": float((a == b).mean()), "foreground_dice": dice,
            "kidney_boxes_outside_roi": int(inside.sum() - inside[box].sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--work", help="folder for the model, the case and the outputs (reused); required")
    ap.add_argument("--json", help="write all figures here")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name in ("image", "label", "bundle", "out"):
        ap.add_argument(f"--{name}", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child_cascade(args)
    if not args.work:
        ap.error("--work is required")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model = make_model(work)
    image, label = make_case(work, args.seed)
    bundle = work / "bundle"
    from KidneyTumorSegLib.bundles.bundle import default_bundle_path
    from KidneyTumorSegLib.bundles.nnunet_bundle import import_model

    import_model(bundle, {"roi": str(default_bundle_path()), "kidney": str(model), "tumor": str(model)},
                 folds=["0"], overwrite=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), nnUNet_def_n_proc=str(args.threads),
               PYTHONUNBUFFERED="1")
    cmds = {
        "nnunet_whole": ["nnUNetv2_predict_from_modelfolder", "-i", str(image.parent), "-o", str(work / "out_nnunet"),
                         "-m", str(model), "-f", "0", "--disable_tta", "-device", "cpu", "-npp", "1", "-nps", "1",
                         "--disable_progress_bar"],
        "ours_whole": ["kidneytumorseg", "segment", str(image), "-o", str(work / "out_whole"), "--model", str(model),
                       "--folds", "0", "--no-postprocess", "--device", "cpu", "--threads", str(args.threads),
                       "--overwrite", "--no-progress"],
        "ours_cascade": [sys.executable, __file__, "--child", "--image", str(image), "--label", str(label),
                         "--bundle", str(bundle), "--out", str(work / "out_cascade"), "--threads", str(args.threads)],
    }
    runs = {k: [] for k in cmds}
    for r in range(args.runs):
        for name, cmd in cmds.items():  # alternating, so drift hits every side alike
            runs[name].append(timed(cmd, env))
            print(f"run {r + 1} {name}: {runs[name][-1]['s']:.1f} s, {runs[name][-1]['peak_rss_mb']:.0f} MB", flush=True)
    res = [ln for ln in runs["ours_cascade"][-1]["stdout"].splitlines() if ln.startswith("RESULT ")]
    cascade = json.loads(res[0][7:])
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("s", "peak_rss_mb")} for k, v in runs.items()}
    report = {"median": med, "cascade_last_run": cascade, "threads": args.threads, "runs": args.runs,
              "agreement": agreement(model, image, label, cascade["roi_lps_mm"])}
    for k in ("ours_whole", "ours_cascade"):
        report[f"ratio_time_nnunet_over_{k}"] = med["nnunet_whole"]["s"] / med[k]["s"]
        report[f"ratio_rss_nnunet_over_{k}"] = med["nnunet_whole"]["peak_rss_mb"] / med[k]["peak_rss_mb"]
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

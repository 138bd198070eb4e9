"""Evaluate a model bundle (default: the shipped one) the way issue 3 asks.

1. 10 random phantoms with seeds 0..9 (training used seeds >= 10000);
2. phantoms shaped by real KiTS19 label maps of cases >= 150 (training used
   cases < 150), geometry and kidney/tumor shapes from the real labels;
3. phantoms shaped by real KiTS23 label maps with cysts (label 3) of cases
   >= 560 (training used cases < 540): kidney and tumor Dice with the cysts
   as background (the training label map's convention), and how much cyst
   the model calls tumor;
4. with ``--hypervascular N``: N random phantoms with seeds 0..N-1 whose
   tumors all enhance almost as much as the cortex (``phantom
   --hypervascular 1``), as clear-cell RCC often does in the arterial phase
   and no phantom before round 13 had; the same anatomy as group 1;
5. the real abdominal CT (no labels): kidneys found, their side, volume and
   position, and whether any tumor is called;
6. with ``--real-variants``: the same real CT as other scanners and
   protocols would give it (see :func:`real_variants`): thicker and thinner
   slices, more noise, a softer kernel, the field of view cut to one kidney
   or through both kidneys, and another storage orientation. No labels, so
   what is checked is what holds on any real scan: the kidneys found where
   they are, no tumor called, volumes close to the original's.

Prints KiTS19 Dice per case and the medians, and writes everything (the
predictions, metrics CSVs, the real CT's preview PNG) under ``--work``.

    python training/evaluate_default.py --work eval-default [--model BUNDLE] [--kits 6] [--kits23 6]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
KITS_EVAL = ["00152", "00153", "00161", "00162", "00163", "00164", "00166", "00167", "00168", "00169"]
# KiTS23 cases >= 560 with at least 4 mL of cyst and at most 200 slices
KITS23_EVAL = ["00565", "00567", "00568", "00571", "00586", "00587"]


def sh(*args) -> None:
    print("$", " ".join(str(a) for a in args), flush=True)
    subprocess.run([str(a) for a in args], check=False)


def evaluate_folder(pred: Path, gt: Path, csv: Path):
    from KidneyTumorSegLib.evaluation.evaluate import evaluate

    rows, summary = evaluate(pred, gt, out_csv=csv, overwrite=True)
    # a case the model wrote nothing for (no kidney found) scores 0, not "missing"
    for cid in summary.get("missing_predictions", []):
        rows.append({"case_id": cid, "kidney_dice": 0.0, "tumor_dice": 0.0, "composite": 0.0})
    return sorted(rows, key=lambda r: r["case_id"])


def shaped_phantom(exe, folder: Path, name: str, label: Path, seed: int, *options) -> None:
    """``folder/name``: a phantom shaped by the KiTS label map ``label`` (made once; kept between runs)."""
    dst = folder / name
    if not dst.exists():
        tmp = folder / f"tmp_{name}"
        sh(*exe, "phantom", tmp, "--seed", seed, "--kits-label", label, *options)
        (tmp / "case_00000").rename(dst)
        tmp.rmdir()


def cyst_rows(pred: Path, gt: Path):
    """Per case: kidney Dice (reference kidney + tumor; cysts are background), tumor Dice, cyst and cyst called tumor (mL).

    A case the model wrote nothing for (no kidney found) is scored against an empty prediction."""
    import numpy as np

    from KidneyTumorSegLib.evaluation.evaluate import load_pair
    from KidneyTumorSegLib.evaluation.metrics import dice

    rows = []
    for case in sorted(p for p in gt.glob("case_*") if p.is_dir()):
        ref_path = case / "segmentation.nii.gz"
        out = pred / case.name / f"{case.name}.label.nii.gz"
        lab, ref, spacing = load_pair(case.name, out if out.exists() else ref_path, ref_path)
        if not out.exists():
            lab = np.zeros_like(ref)
        ml = float(np.prod(spacing)) / 1000.0
        rows.append({"case_id": case.name, "kidney_dice": dice(lab > 0, (ref == 1) | (ref == 2)),
                     "tumor_dice": dice(lab == 2, ref == 2), "cyst_ml": float(np.count_nonzero(ref == 3) * ml),
                     "cyst_called_tumor_ml": float(np.count_nonzero((ref == 3) & (lab == 2)) * ml)})
    return rows


def real_variants(src: Path, dst: Path) -> list:
    """Write variants of the real CT at ``src`` into ``dst`` (NIfTI, made once; kept between runs).

    Returns ``[(name, what it checks)]``. All are derived with SimpleITK from the one real scan
    (1.07 x 1.07 x 3 mm): ``slices_5mm`` (a 5 mm reconstruction: z blurred to a 5 mm slab, then
    resampled), ``slices_1.5mm`` (z interpolated), ``noise_plus20`` (correlated noise of 20 HU sd
    added, a lower dose), ``soft_kernel`` (in-plane Gaussian blur, sigma 0.8 mm), ``left_half``
    (field of view cut at the midline: only the patient's left kidney), ``upper_half`` (cut through
    both kidneys at z 290 mm), ``orientation_pir`` (the same voxels stored in another axis order).
    """
    import numpy as np
    import SimpleITK as sitk

    from KidneyTumorSegLib.io import volume_io

    variants = [
        ("original", "as read from DICOM"),
        ("slices_5mm", "5 mm slices"),
        ("slices_1.5mm", "1.5 mm slices"),
        ("noise_plus20", "20 HU more noise"),
        ("soft_kernel", "softer kernel"),
        ("left_half", "only the left kidney in the field of view"),
        ("upper_half", "both kidneys cut by the field of view"),
        ("orientation_pir", "another storage orientation, same voxels"),
    ]
    if all((dst / f"{name}.nii.gz").exists() for name, _ in variants):
        return variants
    dst.mkdir(parents=True, exist_ok=True)
    img = volume_io.volume_to_sitk(volume_io.read_volume(src))
    img = sitk.Cast(img, sitk.sitkFloat32)
    out = {
        "original": img,
        "slices_5mm": _resample_z(sitk.SmoothingRecursiveGaussian(img, [0.01, 0.01, 5.0 / 2.355]), 5.0),
        "slices_1.5mm": _resample_z(img, 1.5),
        "noise_plus20": _noisy(img),
        "soft_kernel": sitk.SmoothingRecursiveGaussian(img, [0.8, 0.8, 0.01]),
        "left_half": _keep_above(img, 0, 10.0),  # LPS: +x is the patient's left
        "upper_half": _keep_above(img, 2, 290.0),
        "orientation_pir": sitk.DICOMOrient(img, "PIR"),
    }
    for name, _ in variants:
        v = sitk.GetImageFromArray(np.rint(sitk.GetArrayFromImage(out[name])).astype(np.int16))
        v.CopyInformation(out[name])
        tmp = dst / f".{name}.tmp.nii.gz"
        sitk.WriteImage(v, str(tmp))
        tmp.replace(dst / f"{name}.nii.gz")
    return variants


def _resample_z(image, z):
    """``image`` resampled linearly to ``z`` mm slices (every sample inside the scan)."""
    import SimpleITK as sitk

    sp = image.GetSpacing()
    size = list(image.GetSize())
    size[2] = int((size[2] - 1) * sp[2] / z) + 1  # every sample inside the scan
    return sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(),
                         (sp[0], sp[1], z), image.GetDirection(), -1024.0, sitk.sitkFloat32)


def _keep_above(image, world_axis, c):
    """The part of ``image`` whose world coordinate along ``world_axis`` (0 x, 2 z) is at least ``c`` mm."""
    import numpy as np
    import SimpleITK as sitk

    d = np.array(image.GetDirection()).reshape(3, 3)
    a = int(np.argmax(abs(d[world_axis])))  # the array axis along that world axis
    pt = list(image.GetOrigin())
    pt[world_axis] = c
    at = image.TransformPhysicalPointToContinuousIndex(pt)[a]
    n = image.GetSize()[a]
    lo, hi = (int(np.ceil(at)), n) if d[world_axis, a] > 0 else (0, int(np.floor(at)) + 1)
    index, size = [0, 0, 0], list(image.GetSize())
    index[a], size[a] = max(lo, 0), min(hi, n) - max(lo, 0)
    return sitk.RegionOfInterest(image, size, index)


def _noisy(img):
    """``img`` plus in-plane correlated Gaussian noise of 20 HU sd (a fixed seed: the same every run)."""
    import numpy as np
    import SimpleITK as sitk

    rng = np.random.default_rng(20261204)
    arr = sitk.GetArrayFromImage(img)
    noise = sitk.GetImageFromArray(rng.standard_normal(arr.shape).astype(np.float32))
    noise.CopyInformation(img)
    noise = sitk.SmoothingRecursiveGaussian(noise, [0.6, 0.6, 0.01])
    narr = sitk.GetArrayFromImage(noise)
    noisy = sitk.GetImageFromArray(arr + narr * np.float32(20.0 / narr.std()))
    noisy.CopyInformation(img)
    return noisy


def main() -> None:
    args = _parse_args()
    work = Path(args.work)
    model = ["--model", args.model] if args.model else []
    exe = [sys.executable, "-m", "KidneyTumorSegLib"]
    common = model + ["--device", "cpu", "--tta", str(args.tta), "--overwrite", "--no-progress"]
    groups = _phantom_groups(args, work, exe, common)
    _print_groups(groups)
    real = SHARED / "real-abdominal-ct-dicom"
    if real.is_dir():
        _real_ct(real, work, exe, common)
    if real.is_dir() and args.real_variants:
        _real_variants(real, work, exe, common)


def _parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="eval-default")
    ap.add_argument("--model", default=None)
    ap.add_argument("--phantoms", type=int, default=10)
    ap.add_argument("--kits", type=int, default=6)
    ap.add_argument("--kits23", type=int, default=6)
    ap.add_argument("--tta", type=int, default=1)
    ap.add_argument("--hypervascular", type=int, default=0,
                    help="also N random phantoms (seeds 0..N-1) with hypervascular tumors (default 0: none)")
    ap.add_argument("--real-variants", action="store_true",
                    help="also the real CT as other protocols would give it (slices, noise, kernel, field of view, orientation)")
    return ap.parse_args()


def _phantom_groups(args, work: Path, exe: list, common: list) -> dict:
    """Segment and score the phantom groups (made once, kept between runs); returns name -> per-case rows."""
    groups = {}
    ph = work / "phantoms"
    if not ph.exists():
        sh(*exe, "phantom", ph, "-n", args.phantoms, "--seed", 0)
    sh(*exe, "segment", ph, "-o", work / "pred_phantoms", *common)
    groups["random phantoms (seeds 0..%d)" % (args.phantoms - 1)] = evaluate_folder(work / "pred_phantoms", ph, work / "phantoms.csv")

    if args.hypervascular:
        hp = work / "hypervascular_phantoms"
        if not hp.exists():
            sh(*exe, "phantom", hp, "-n", args.hypervascular, "--seed", 0, "--hypervascular", 1)
        sh(*exe, "segment", hp, "-o", work / "pred_hypervascular", *common)
        groups["random phantoms with hypervascular tumors (seeds 0..%d)" % (args.hypervascular - 1)] = evaluate_folder(
            work / "pred_hypervascular", hp, work / "hypervascular.csv")

    kits_dir = SHARED / "kits19-labels"
    if kits_dir.is_dir() and args.kits:
        kp = work / "kits_phantoms"
        for n, case in enumerate(KITS_EVAL[: args.kits]):
            shaped_phantom(exe, kp, f"case_{case}", kits_dir / f"case_{case}.nii.gz", 30000 + n)
        sh(*exe, "segment", kp, "-o", work / "pred_kits", *common)
        groups["phantoms shaped by KiTS19 labels"] = evaluate_folder(work / "pred_kits", kp, work / "kits.csv")

    kits23_dir = SHARED / "kits23-labels"
    if kits23_dir.is_dir() and args.kits23:
        kp = work / "kits23_phantoms"
        for n, case in enumerate(KITS23_EVAL[: args.kits23]):
            shaped_phantom(exe, kp, f"case_{2000 + n:05d}", kits23_dir / f"case_{case}.nii.gz", 30000 + int(case),
                           "--cyst-label", "--randomize-intensity", "--bowel-contact", 0.3)
        sh(*exe, "segment", kp, "-o", work / "pred_kits23", *common)
        groups["phantoms shaped by KiTS23 labels with cysts (cysts as background)"] = cyst_rows(work / "pred_kits23", kp)
    return groups


def _print_groups(groups: dict) -> None:
    for name, rows in groups.items():
        print(f"\n== {name}")
        cysts = rows and "cyst_ml" in rows[0]
        last = f"{'cyst mL':>8s} {'of it tumor':>11s}" if cysts else f"{'composite':>9s}"
        print(f"{'case':12s} {'kidney Dice':>11s} {'tumor Dice':>10s} {last}")
        for r in rows:
            end = f"{r['cyst_ml']:8.1f} {r['cyst_called_tumor_ml']:11.1f}" if cysts else f"{r['composite']:9.4f}"
            print(f"{r['case_id']:12s} {r['kidney_dice']:11.4f} {r['tumor_dice']:10.4f} {end}")
        if rows:
            print(f"median: kidney {statistics.median(r['kidney_dice'] for r in rows):.4f}, "
                  f"tumor {statistics.median(r['tumor_dice'] for r in rows):.4f}; "
                  f"mean: kidney {statistics.mean(r['kidney_dice'] for r in rows):.4f}, "
                  f"tumor {statistics.mean(r['tumor_dice'] for r in rows):.4f}")


def _real_ct(real: Path, work: Path, exe: list, common: list) -> None:
    """Segment the real CT and print what was found (no labels to score against)."""
    out = work / "pred_real"
    sh(*exe, "segment", real, "-o", out, *common)
    reports = list(out.glob("*/*.report.json"))
    print("\n== real abdominal CT (no labels)")
    if not reports:
        print("no report written (see the messages above)")
    for rp in reports:
        rep = json.loads(rp.read_text())
        for k in rep["kidneys"]:
            print(f"kidney {k['side']}: {k['volume_ml']:.0f} mL (with tumor {k['volume_with_tumor_ml']:.0f} mL), "
                  f"centre LPS {k['centre_lps_mm']}")
        print(f"tumors kept: {rep['kept_tumors']}, candidates: {len(rep['tumor_candidates'])}")
        print("messages:", "; ".join(rep["messages"]))
        print("preview:", rp.with_name(rp.name.replace(".report.json", ".preview.png")))


def _real_variants(real: Path, work: Path, exe: list, common: list) -> None:
    """Segment the real CT's variants (:func:`real_variants`) and print one line each."""
    variants = real_variants(real, work / "real_variants")
    out = work / "pred_real_variants"
    sh(*exe, "segment", work / "real_variants", "-o", out, *common)
    print("\n== the real CT as other protocols would give it (no labels: two kidneys expected, no tumor)")
    print(f"{'variant':16s} {'left mL':>8s} {'right mL':>8s} {'tumors':>6s} {'listed':>6s}  notes")
    for name, what in variants:
        rp = out / name / f"{name}.report.json"
        if not rp.exists():
            print(f"{name:16s} no report written ({what})")
            continue
        rep = json.loads(rp.read_text())
        vol = {k["side"]: k["volume_ml"] for k in rep["kidneys"]}
        edge = [k["side"] for k in rep["kidneys"] if k["touches_fov_edge"]]
        notes = [what] + ([f"at the edge: {', '.join(edge)}"] if edge else [])
        notes += [f"{c['side']} {c['volume_ml']:.1f} mL p {c['mean_probability']:.2f}" for c in rep["tumor_candidates"] if c["kept"]]
        print(f"{name:16s} {vol.get('left', 0):8.0f} {vol.get('right', 0):8.0f} {rep['kept_tumors']:6d} "
              f"{len(rep['tumor_candidates']):6d}  {'; '.join(notes)}")


if __name__ == "__main__":
    main()

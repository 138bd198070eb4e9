"""Per-kidney volumes of the real KiTS19/KiTS23 label maps in ../shared/data: where plausibility's range comes from.

Each label map's foreground (kidney, tumor and cyst: what the cascade reports as a kidney's
``volume_with_tumor_ml``) is split into 26-connected components; every component of at least 5 mL
is one kidney (smaller ones are specks and cut-off slivers). Prints the distribution of those
volumes and of the kidney tissue alone (label 1), and the number of kidneys per scan.

    python benchmarks/kidney_volumes.py [--shared ../shared/data] [--json out.json]

Figures of the run on 2026-12-06 are in KidneyTumorSegLib/plausibility.py (KIDNEY_ML_RANGE).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

MIN_COMPONENT_ML = 5.0


def kidney_volumes(path: Path):
    """(with-tumor mL, tissue mL) of each kidney-sized component of one label map."""
    import cc3d
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    label = sitk.GetArrayFromImage(image)
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    components = cc3d.connected_components(label > 0, connectivity=26)
    counts = np.bincount(components.ravel())
    tissue = np.bincount(components.ravel(), weights=(label == 1).ravel(), minlength=len(counts))
    out = []
    for c in range(1, len(counts)):
        if counts[c] * voxel_ml >= MIN_COMPONENT_ML:
            out.append((counts[c] * voxel_ml, tissue[c] * voxel_ml))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--json", help="also write every scan's volumes here")
    args = parser.parse_args(argv)
    files = sorted(Path(args.shared).glob("kits*-labels/case_*.nii.gz"))
    if not files:
        print(f"no label maps under {args.shared}", file=sys.stderr)
        return 1
    per_scan = {}
    for n, path in enumerate(files, 1):
        per_scan[path.name] = kidney_volumes(path)
        if n % 50 == 0:
            print(f"{n}/{len(files)}", file=sys.stderr)
    whole = np.array([v for vols in per_scan.values() for v, _ in vols])
    tissue = np.array([t for vols in per_scan.values() for _, t in vols])
    counts = np.bincount([len(v) for v in per_scan.values()])
    q = (0, 0.5, 1, 5, 50, 95, 99, 99.5, 100)
    print(f"{len(files)} label maps, {len(whole)} kidneys (components >= {MIN_COMPONENT_ML} mL)")
    print("kidneys per scan:", {n: int(c) for n, c in enumerate(counts) if c})
    for name, values in (("kidney with tumor and cyst (mL)", whole), ("kidney tissue, label 1 (mL)", tissue)):
        print(name + ": " + ", ".join(f"p{p:g} {np.percentile(values, p):.1f}" for p in q))
    if args.json:
        Path(args.json).write_text(json.dumps(per_scan, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

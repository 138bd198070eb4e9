"""How round are real kidney tumors? Compactness of the tumors in the real KiTS19/KiTS23 label maps.

Compactness = volume / volume of the sphere whose diameter is the tumor's largest 3D diameter (1 for
a ball, near 0 for a thin or elongated shape), with the diameter measured as the cascade measures
candidates (``KidneyTumorSegLib.findings.measure.max_diameter_3d_mm``). Every 26-connected tumor component
(label 2) of at least ``--min-ml`` mL counts. KidneyTumorSegLib/plausibility.py takes its
``MIN_TUMOR_COMPACTNESS`` from this distribution.

    python benchmarks/tumor_shapes.py [--shared ../shared/data] [--min-ml 5]
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np


def compactness_of(path: Path, min_ml: float):
    """[(volume mL, largest 3D diameter mm, compactness)] of the tumors of one label map."""
    import cc3d
    import SimpleITK as sitk

    from KidneyTumorSegLib.findings.measure import max_diameter_3d_mm

    image = sitk.ReadImage(str(path))
    label = sitk.GetArrayFromImage(image)
    spacing_zyx = tuple(image.GetSpacing())[::-1]
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    out = []
    components, n = cc3d.connected_components(label == 2, connectivity=26, return_N=True)
    for box_id, box in enumerate(cc3d.statistics(components)["bounding_boxes"]):
        if box_id == 0:
            continue
        sub = components[box] == box_id
        ml = float(sub.sum()) * voxel_ml
        if ml < min_ml:
            continue
        d = max_diameter_3d_mm(sub, spacing_zyx)
        out.append((ml, d, ml / (math.pi / 6.0 * (d / 10.0) ** 3)))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--min-ml", type=float, default=5.0)
    args = parser.parse_args(argv)
    files = sorted(Path(args.shared).glob("kits*-labels/case_*.nii.gz"))
    if not files:
        print(f"no label maps under {args.shared}", file=sys.stderr)
        return 1
    tumors = []
    for n, path in enumerate(files, 1):
        tumors += [(path.name,) + t for t in compactness_of(path, args.min_ml)]
        if n % 50 == 0:
            print(f"{n}/{len(files)}", file=sys.stderr, flush=True)
    c = np.array([t[3] for t in tumors])
    print(f"{len(files)} label maps, {len(tumors)} tumors of at least {args.min_ml:g} mL")
    print("compactness: " + ", ".join(f"p{p:g} {np.percentile(c, p):.3f}" for p in (0, 0.5, 1, 5, 50, 95, 100)))
    for name, ml, d, k in sorted(tumors, key=lambda t: t[3])[:5]:
        print(f"least compact: {name} {ml:.1f} mL, {d:.1f} mm, compactness {k:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

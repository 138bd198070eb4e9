"""Which diameter agrees with the radiologists? KiTS19 tumor diameters against ``kits.json``'s ``radiographic_size``.

For every KiTS19 label map in ``../shared/data/kits19-labels`` whose tumor (label 2) is one 26-connected
component of at least ``--min-ml`` mL (so the radiologist's size and the mask name the same tumor), the
tumor's largest diameter is measured four ways on the canonical grid (``findings.measure``): axial
(largest in-slice) or 3D, each edge to edge (voxels as boxes, as calipers) or centre to centre (between
voxel centres). Printed per convention: median signed and absolute error against ``radiographic_size``
(cm), the 90th percentile of the absolute error, and how often the R.E.N.A.L. R points (<= 4 cm 1,
< 7 cm 2, >= 7 cm 3) agree with those of the radiologist's size. The convention with the smallest
median absolute error is what ``findings.nephrometry`` uses for R.

    python benchmarks/renal_diameter.py [--shared ../shared/data] [--min-ml 0.5] [--limit N]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

CONVENTIONS = (("axial", True), ("axial", False), ("3d", True), ("3d", False))


def r_points(cm: float) -> int:
    return 1 if cm <= 4.0 else 2 if cm < 7.0 else 3


def diameters(path: Path, min_ml: float):
    """The four diameters (mm) of the case's single tumor, or None when it has none or several."""
    import cc3d
    import SimpleITK as sitk

    from KidneyTumorSegLib.findings.measure import max_axial_diameter_mm, max_diameter_3d_mm
    from KidneyTumorSegLib.geometry.records import canonical_reorient
    from KidneyTumorSegLib.geometry.volume import Volume

    img = sitk.ReadImage(str(path))
    vol = Volume(sitk.GetArrayFromImage(img), img.GetSpacing(), img.GetOrigin(), img.GetDirection())
    can = canonical_reorient(vol).volume(vol)
    comps, n = cc3d.connected_components(can.array == 2, connectivity=26, return_N=True)
    if n == 0:
        return None
    counts = np.bincount(comps.ravel())[1:] * can.voxel_volume_ml()
    if int(np.sum(counts >= min_ml)) != 1:
        return None
    tumor = comps == int(np.argmax(counts)) + 1
    out = {}
    for kind, edge in CONVENTIONS:
        fn = max_axial_diameter_mm if kind == "axial" else max_diameter_3d_mm
        out[(kind, edge)] = fn(tumor, can.spacing_zyx, edge_to_edge=edge)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    ap.add_argument("--min-ml", type=float, default=0.5)
    ap.add_argument("--limit", type=int, help="only the first N cases (a quick look)")
    args = ap.parse_args()
    folder = Path(args.shared) / "kits19-labels"
    if not (folder / "kits.json").is_file():
        sys.exit(f"no KiTS19 labels at {folder}")
    sizes = {c["case_id"]: c.get("radiographic_size") for c in json.loads((folder / "kits.json").read_text())}
    rows = []
    for path in sorted(folder.glob("case_*.nii.gz"))[: args.limit]:
        case = path.name[: -len(".nii.gz")]
        if not sizes.get(case):
            continue
        d = diameters(path, args.min_ml)
        if d is not None:
            rows.append((case, float(sizes[case]), d))
    print(f"{len(rows)} KiTS19 cases with one tumor of >= {args.min_ml:g} mL and a radiographic size")
    print("| diameter | median error (cm) | median abs. error (cm) | 90th pct abs. error (cm) | R points agree |")
    print("| --- | --- | --- | --- | --- |")
    for kind, edge in CONVENTIONS:
        err = [d[(kind, edge)] / 10.0 - size for _, size, d in rows]
        agree = np.mean([r_points(d[(kind, edge)] / 10.0) == r_points(size) for _, size, d in rows])
        name = f"{kind}, {'edge to edge' if edge else 'centre to centre'}"
        print(f"| {name} | {statistics.median(err):+.2f} | {statistics.median(np.abs(err)):.2f} | "
              f"{np.percentile(np.abs(err), 90):.2f} | {100 * agree:.0f} % |")


if __name__ == "__main__":
    main()

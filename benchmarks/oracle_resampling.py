"""How far the cascade's geometry alone moves the labels (issue 2, part 10).

The cascade is driven by exact reference predictors (``reference.py``): every
stage is answered with the reference label resampled onto the grid the stage
asks about. With the stage spacing equal to the scan's, the output equals the
reference exactly (a test asserts it); with the default stage spacings
(3.4 mm, 3.22x1.62x1.62 mm, 2.0x1.2x1.2 mm) the only loss is resampling to
those grids and back. This prints that loss as KiTS19 Dice, per case and as
median/min, on phantoms and on real KiTS19 label maps, and counts how many
reference tumors (connected components) stage 4 keeps.

    python benchmarks/oracle_resampling.py --phantoms 10 --kits 10
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import cc3d
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def run(label, image):
    from KidneyTumorSegLib.cascade import run_cascade
    from KidneyTumorSegLib.evaluation.metrics import dice
    from KidneyTumorSegLib.presets import default_stages
    from KidneyTumorSegLib.engine.reference import reference_predictors

    st = {s.role: s for s in default_stages()}
    t = time.perf_counter()
    res = run_cascade(image, st, reference_predictors(label, tumor_probability=1.0), keep_canonical=False)
    secs = time.perf_counter() - t
    p, g = res.label.array, label.array
    n_ref = cc3d.connected_components(g == 2, connectivity=26, return_N=True)[1]
    return {
        "kidney": dice(p > 0, g > 0),
        "tumor": dice(p > 1, g > 1),
        "kept": sum(c.kept for c in res.tumors),
        "ref_tumors": int(n_ref),
        "seconds": secs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phantoms", type=int, default=10)
    ap.add_argument("--kits", type=int, default=10)
    args = ap.parse_args()
    from KidneyTumorSegLib.phantom import make_phantom
    from KidneyTumorSegLib.io.volume_io import read_label

    groups = {}
    rows = []
    for seed in range(1000, 1000 + args.phantoms):
        ph = make_phantom(seed=seed, shape=(120, 256, 256), spacing=(1.5, 1.5, 2.5))
        rows.append((f"phantom seed {seed}", run(ph.label, ph.image)))
    groups["phantoms"] = rows
    rows = []
    paths = sorted((SHARED / "kits19-labels").glob("case_*.nii.gz"))
    # every k-th case: spread over the data set, geometry as stored (swapped axes)
    step = max(1, len(paths) // max(args.kits, 1))
    for p in paths[::step][: args.kits]:
        label = read_label(p)
        image = label.with_array(np.where(label.array > 0, 150, 0).astype(np.int16))
        rows.append((p.name[:10], run(label, image)))
    groups["KiTS19 label maps"] = rows
    for name, rows in groups.items():
        if not rows:
            continue
        print(f"\n== {name}")
        print(f"{'case':22s} {'kidney Dice':>11s} {'tumor Dice':>10s} {'tumors kept/ref':>16s} {'s':>6s}")
        for cid, r in rows:
            print(f"{cid:22s} {r['kidney']:11.4f} {r['tumor']:10.4f} {r['kept']:>7d}/{r['ref_tumors']:<8d} {r['seconds']:6.1f}")
        kd = [r["kidney"] for _, r in rows]
        td = [r["tumor"] for _, r in rows if r["ref_tumors"]]
        print(f"median kidney Dice {statistics.median(kd):.4f} (min {min(kd):.4f}); "
              f"median tumor Dice {statistics.median(td):.4f} (min {min(td):.4f}) over {len(td)} cases with tumor")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "KidneyTumorSeg"))
    main()

"""What the shipped model's tumor growth pass costs (issue 3, model 0.4).

Model 0.4 runs stage 3 once more around kept tumors that reach past stage 2's
kidney outline (``postprocess.tumor_growth_passes`` 1). This times the whole
cascade (``Segmenter.segment``, the model already loaded, no file I/O) on the
same cases with the bundle's settings and with growth turned off
(``RuntimeConfig(tumor_growth_passes=0)``; model 0.3 had none), the two
alternating case by case so that both see the same machine state. It prints,
per case, the median over ``--runs`` of each and their ratio, and the median
over cases. Cases: the random phantoms of ``training/evaluate_default.py``
(seeds 0..N-1; generated into ``--work`` when absent) and the real abdominal CT
in ``../shared/data`` when present.

    python benchmarks/bench_growth.py --work bench-growth --runs 3 --threads 2
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="bench-growth", help="folder for the phantoms (kept between runs)")
    ap.add_argument("--phantoms", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default=None, help="bundle folder (default: the shipped model)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    sys.path.insert(0, str(ROOT / "KidneyTumorSeg"))
    from KidneyTumorSegLib.config import RuntimeConfig
    from KidneyTumorSegLib.phantom.phantom_io import write_phantom_cases
    from KidneyTumorSegLib.pipeline import Segmenter
    from KidneyTumorSegLib.io.volume_io import read_volume

    work = Path(args.work)
    phantoms = work / "phantoms"
    if not phantoms.is_dir():
        write_phantom_cases(phantoms, args.phantoms, 0)
    cases = [(p.name, p / "imaging.nii.gz") for p in sorted(phantoms.glob("case_*"))][: args.phantoms]
    real = SHARED / "real-abdominal-ct-dicom"
    if real.is_dir():
        cases.append(("real CT", real))

    on = Segmenter(args.model, RuntimeConfig(device=args.device, threads=args.threads))
    off = Segmenter(args.model, RuntimeConfig(device=args.device, threads=args.threads, tumor_growth_passes=0))
    print(f"model {on.bundle.name} {on.bundle.version}: growth {on.post.tumor_growth_passes} pass(es) of "
          f"{on.post.tumor_growth_mm:g} mm against {off.post.tumor_growth_passes}; {args.runs} runs a case, "
          f"{args.threads} threads, {args.device}")
    print(f"{'case':14s} {'growth on (s)':>13s} {'off (s)':>8s} {'ratio':>6s} {'stage 3+4 on':>12s} {'off':>6s}")
    ratios, t_on_all, t_off_all = [], [], []
    for name, path in cases:
        image = read_volume(path)
        t = {"on": [], "off": []}
        s3 = {"on": [], "off": []}
        for _ in range(args.runs):
            for key, seg in (("on", on), ("off", off)):
                t0 = time.perf_counter()
                res = seg.segment(image)
                t[key].append(time.perf_counter() - t0)
                s3[key].append(res.timings_s.get("tumor", 0.0))
        m_on, m_off = statistics.median(t["on"]), statistics.median(t["off"])
        ratios.append(m_on / m_off)
        t_on_all.append(m_on)
        t_off_all.append(m_off)
        print(f"{name:14s} {m_on:13.2f} {m_off:8.2f} {m_on / m_off:6.2f} {statistics.median(s3['on']):12.2f} "
              f"{statistics.median(s3['off']):6.2f}")
    print(f"median over {len(cases)} cases: growth on {statistics.median(t_on_all):.2f} s, off "
          f"{statistics.median(t_off_all):.2f} s; ratio median {statistics.median(ratios):.2f}, max {max(ratios):.2f}")


if __name__ == "__main__":
    main()

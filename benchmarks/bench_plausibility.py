"""Does plausibility flag the failures and only them? (issue 27, part 3)

Three groups, segmented in process on the CPU with the shipped model (fast mode):

1. the 10 held-out random phantoms (seeds 0-9, never used in training): none should be flagged;
2. the one real abdominal CT of ``../shared/data`` and its variants (``training/evaluate_default.py``'s
   ``real_variants``): the ones the README lists as failures (5 mm slices, field of view cut at the
   midline or through both kidneys) should be flagged, the others not;
3. broken models on phantom seed 0: the kidney stage replaced by the ROI stage's network, and by a
   randomly initialised network: the result should be flagged (or no kidney found).

Prints one line per case (status and reasons) and the counts.

    python benchmarks/bench_plausibility.py [--work W] [--phantoms 10]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "training"))
REAL = ROOT.parent / "shared" / "data" / "real-abdominal-ct-dicom"
FAILURES = {"slices_5mm", "left_half", "upper_half"}  # the README's failed variants


def _line(name: str, result) -> str:
    reasons = "; ".join(result.plausibility.get("reasons", [])) or "-"
    return f"{name:22s} {result.status:12s} {reasons}"


def phantoms(segmenter, n: int):
    from KidneyTumorSegLib.phantom import make_phantom

    flagged = 0
    for seed in range(n):
        result = segmenter.segment(make_phantom(seed).image)
        flagged += result.status == "implausible"
        print(_line(f"phantom seed {seed}", result), flush=True)
    print(f"held-out phantoms flagged: {flagged} of {n} (0 wanted)\n", flush=True)


def real_variants(segmenter, work: Path):
    from evaluate_default import real_variants as make_variants

    from KidneyTumorSegLib.io import volume_io

    right = 0
    variants = make_variants(REAL, work / "real_variants")
    for name, _what in variants:
        result = segmenter.segment(volume_io.read_volume(work / "real_variants" / f"{name}.nii.gz"))
        flagged = result.status in ("implausible", "no_kidney")
        right += flagged == (name in FAILURES)
        print(_line(name, result) + ("" if flagged == (name in FAILURES) else "   <- not as expected"), flush=True)
    print(f"real CT variants judged as expected: {right} of {len(variants)} "
          f"(flagged wanted for {', '.join(sorted(FAILURES))})\n", flush=True)


def broken_models(runtime):
    import torch

    from KidneyTumorSegLib.engine.inference import NetworkPredictor
    from KidneyTumorSegLib.engine.networks import build_network
    from KidneyTumorSegLib.phantom import make_phantom
    from KidneyTumorSegLib.pipeline import Segmenter, StageNetwork

    image = make_phantom(0).image
    segmenter = Segmenter(None, runtime)
    kidney_stage = segmenter.stages["kidney"]
    torch.manual_seed(0)
    random_net = StageNetwork(NetworkPredictor(kidney_stage, [build_network(kidney_stage.network)], runtime))
    for what, kidney in (("ROI network as kidney", segmenter.predictors["roi"]), ("random kidney network", random_net)):
        broken = Segmenter(None, runtime)
        broken.predictors = dict(broken.predictors, kidney=kidney)
        print(_line(what, broken.segment(image)), flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(ROOT / ".cache" / "bench-plausibility"))
    parser.add_argument("--phantoms", type=int, default=10)
    args = parser.parse_args(argv)
    from KidneyTumorSegLib.config import RuntimeConfig
    from KidneyTumorSegLib.pipeline import Segmenter

    runtime = RuntimeConfig(device="cpu", tta=1)
    segmenter = Segmenter(None, runtime)
    t0 = time.perf_counter()
    phantoms(segmenter, args.phantoms)
    if REAL.is_dir():
        real_variants(segmenter, Path(args.work))
    else:
        print(f"skipped the real CT: {REAL} is absent\n")
    broken_models(runtime)
    print(f"\n{time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

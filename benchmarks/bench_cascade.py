"""Per-stage time and peak memory of the cascade (issue 2's benchmark).

Case: a 512x512x200 phantom at 0.78x0.78x2.5 mm, the default architecture
(residual U-Net, ``presets.DEFAULT_NETWORK``), one model per stage, no TTA;
and the real abdominal CT in ``../shared/data/real-abdominal-ct-dicom``
(DICOM read included).

The networks have random weights (the trained default model comes with the
training issue), so on their own they would not find kidneys and the later
stages would see unrealistic regions. Each stage therefore runs its real
network forward pass (timed, output discarded) and then answers with the
reference label (``reference.ReferencePredictor``), so the crops that stages
2 and 3 see have the size they have with a trained model. The reference
lookup's own time is measured and subtracted. For the real CT, which has no
labels, the reference is two kidney-sized ellipsoids beside the spine.

Each run is a fresh process (read, segment, write all outputs), so the peak
RSS is that of one end-to-end command. Figures are medians over ``--runs``.

    python benchmarks/bench_cascade.py --runs 3 --threads 2
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


class TimedReference:
    """Runs the real network (timed) and answers with the reference."""

    def __init__(self, net_predictor, reference, log):
        self.net, self.ref, self.log = net_predictor, reference, log

    def predict(self, vol, progress=None):
        import torch

        t = time.perf_counter()
        self.net.predict(vol.array)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t_net = time.perf_counter() - t
        t = time.perf_counter()
        out = self.ref.predict(vol)
        self.log.append({"net_s": t_net, "ref_s": time.perf_counter() - t, "voxels": int(vol.array.size), "shape": list(vol.shape)})
        return out


def _network_stage_times(timings_s, logs):
    """The cascade's stage times without the reference predictors' share (the network's answer is timed, not used)."""
    stage_s = dict(timings_s)
    for role in ("roi", "kidney", "tumor"):
        if role in stage_s:
            stage_s[role] -= sum(e["ref_s"] for e in logs[role])
    return stage_s


def child(args) -> None:
    t_all = time.perf_counter()
    import torch

    from KidneyTumorSegLib.cascade import run_cascade
    from KidneyTumorSegLib.config import RuntimeConfig
    from KidneyTumorSegLib.engine.device import resolve_device
    from KidneyTumorSegLib.engine.inference import NetworkPredictor
    from KidneyTumorSegLib.bundles.bundle import load_bundle
    from KidneyTumorSegLib.io.outputs import write_case_outputs
    from KidneyTumorSegLib.engine.reference import reference_predictors
    from KidneyTumorSegLib.io.volume_io import read_label, read_volume

    if args.threads:
        torch.set_num_threads(args.threads)
    t_import = time.perf_counter() - t_all
    rss_after_import = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    runtime = RuntimeConfig(device=args.device, tta=1, overlap=0.25, sw_batch_size=args.batch)
    bundle = load_bundle(args.bundle)
    t = time.perf_counter()
    nets = {role: NetworkPredictor(st, bundle.build_models(role), runtime) for role, st in bundle.stages.items()}
    t_model = time.perf_counter() - t
    reference = read_label(args.label)  # not part of the timed pipeline
    refs = reference_predictors(reference, tumor_probability=1.0)
    logs = {role: [] for role in nets}
    preds = {role: TimedReference(nets[role], refs[role], logs[role]) for role in nets}
    # the device the run got, not its name: "auto" on a GPU machine runs on the GPU. Asked once the
    # models are loaded, so that starting CUDA stays in the model load time as before
    gpu = resolve_device(args.device).type == "cuda"
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    image = read_volume(args.image)
    t_read = time.perf_counter() - t0
    t = time.perf_counter()
    res = run_cascade(image, bundle.stages, preds, bundle.postprocess)
    t_cascade = time.perf_counter() - t
    ref_s = sum(e["ref_s"] for role in logs for e in logs[role])
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        write_case_outputs(res, image, out, "bench")
    t_write = time.perf_counter() - t
    out = {
        "import_s": t_import,
        "model_load_s": t_model,
        "read_s": t_read,
        "stages_s": _network_stage_times(res.timings_s, logs),
        "network_s": {role: sum(e["net_s"] for e in logs[role]) for role in logs},
        "write_s": t_write,
        "end_to_end_s": t_read + (t_cascade - ref_s) + t_write + t_model,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_import_mb": rss_after_import,
        "stage_inputs": {role: [e["shape"] for e in logs[role]] for role in logs},
        "kidneys": [k.side for k in res.kidneys],
        "status": res.status,
    }
    if gpu:
        out["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print("RESULT " + json.dumps(out))


def make_inputs(tmp: Path, args):
    """Phantom (image + label) and a random-weight default bundle in ``tmp``."""
    import torch

    from KidneyTumorSegLib.bundles.bundle import save_bundle
    from KidneyTumorSegLib.engine.networks import build_network
    from KidneyTumorSegLib.phantom import make_phantom
    from KidneyTumorSegLib.presets import DEFAULT_POSTPROCESS, default_stages
    from KidneyTumorSegLib.io.writers import write_labelmap
    import SimpleITK as sitk

    torch.manual_seed(0)
    stages = default_stages()
    save_bundle(tmp / "bundle", stages, {s.role: [build_network(s.network).state_dict()] for s in stages},
                DEFAULT_POSTPROCESS, name="random-default-architecture")
    t = time.perf_counter()
    ph = make_phantom(seed=args.seed, shape=(200, 512, 512), spacing=(0.78, 0.78, 2.5), n_tumors=2)
    print(f"phantom 512x512x200 generated in {time.perf_counter() - t:.1f} s")
    from KidneyTumorSegLib.io.volume_io import volume_to_sitk
    sitk.WriteImage(volume_to_sitk(ph.image), str(tmp / "phantom.nii.gz"))
    write_labelmap(ph.label, tmp / "phantom_label.nii.gz")
    cases = [("phantom 512x512x200", tmp / "phantom.nii.gz", tmp / "phantom_label.nii.gz")]
    real = SHARED / "real-abdominal-ct-dicom"
    if real.is_dir() and not args.phantom_only:
        from KidneyTumorSegLib.io.volume_io import read_volume

        ct = read_volume(real)
        write_labelmap(_pseudo_kidneys(ct), tmp / "real_pseudo_label.nii.gz")
        cases.append(("real CT (DICOM 512x512x134)", real, tmp / "real_pseudo_label.nii.gz"))
    return tmp / "bundle", cases


def _pseudo_kidneys(ct):
    """Two 11x6x5 cm ellipsoids beside the spine at mid-scan (for region sizes only)."""
    import numpy as np

    from KidneyTumorSegLib.geometry.records import canonical_reorient

    rec = canonical_reorient(ct)
    can = rec.volume(ct)
    sz, sy, sx = can.spacing_zyx
    body = can.array > -500
    cols = np.nonzero(body.any(axis=(0, 1)))[0]
    rows = np.nonzero(body.any(axis=(0, 2)))[0]
    ci = (cols.min() + cols.max()) / 2 * sx
    cj = (rows.min() + 0.7 * (rows.max() - rows.min())) * sy
    ck = can.shape[0] / 2 * sz
    k, j, i = np.ogrid[: can.shape[0], : can.shape[1], : can.shape[2]]
    lab = np.zeros(can.shape, np.uint8)
    for dx in (-70, 70):
        d = ((k * sz - ck) / 55) ** 2 + ((j * sy - cj) / 30) ** 2 + ((i * sx - ci - dx) / 25) ** 2
        lab[d <= 1] = 1
    return ct.with_array(rec.invert(lab))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--phantom-only", action="store_true")
    ap.add_argument("--json", help="write all figures to this JSON file")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--image", help=argparse.SUPPRESS)
    ap.add_argument("--label", help=argparse.SUPPRESS)
    ap.add_argument("--bundle", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    report = {"device": args.device, "threads": args.threads, "runs": args.runs, "cases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        bundle, cases = make_inputs(Path(tmp), args)
        for name, image, label in cases:
            runs = []
            for r in range(args.runs):
                cmd = [sys.executable, __file__, "--child", "--image", str(image), "--label", str(label), "--bundle", str(bundle),
                       "--device", args.device, "--threads", str(args.threads), "--batch", str(args.batch)]
                out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
                line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
                if out.returncode != 0 or not line:
                    sys.exit(f"benchmark run failed:\n{out.stdout}\n{out.stderr}")
                runs.append(json.loads(line[0][7:]))
            report["cases"][name] = {"runs": runs, "median": _median(runs)}
            _print_case(name, runs, args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


def _median(runs):
    med = {}
    for key in ("read_s", "model_load_s", "write_s", "end_to_end_s", "peak_rss_mb", "gpu_peak_mb"):
        vals = [r[key] for r in runs if key in r]
        if vals:
            med[key] = statistics.median(vals)
    for group in ("stages_s", "network_s"):
        med[group] = {k: statistics.median(r[group][k] for r in runs) for k in runs[0][group]}
    return med


def _print_case(name, runs, args):
    m = _median(runs)
    # the children resolved the device ("auto" may be a GPU); only one that ran on a GPU reports its peak,
    # and resolving here too would give this parent process a CUDA context of its own
    gpu = "gpu_peak_mb" in runs[0]
    target_s, target_mem = (2.0, 3072) if gpu else (30.0, 2048)
    print(f"\n== {name}: median of {len(runs)} runs on {args.device}" + ("" if gpu else f", {args.threads} threads"))
    print(f"  stage inputs (voxels at stage spacing): {runs[0]['stage_inputs']}")
    print(f"  kidneys found: {runs[0]['kidneys']}")
    print(f"  read            {m['read_s']:7.2f} s")
    print(f"  model load      {m['model_load_s']:7.2f} s")
    for k, v in m["stages_s"].items():
        net = m["network_s"].get(k)
        print(f"  stage {k:10s}{v:7.2f} s" + (f"   (network forward {net:.2f} s)" if net is not None else ""))
    print(f"  write outputs   {m['write_s']:7.2f} s")
    e2e = m["end_to_end_s"]
    print(f"  END TO END      {e2e:7.2f} s   target {target_s:.0f} s -> {'met' if e2e <= target_s else 'MISSED'} (ratio {e2e / target_s:.2f})")
    mem = m.get("gpu_peak_mb") if gpu else m["peak_rss_mb"]
    label = "GPU peak" if gpu else "peak RSS"
    print(f"  {label:15s} {mem:7.0f} MB  target {target_mem} MB -> {'met' if mem <= target_mem else 'MISSED'} (ratio {mem / target_mem:.2f})")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "KidneyTumorSeg"))
    main()

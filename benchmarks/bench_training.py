"""Training throughput of one stage (issue 3 part 8's benchmark).

Two measurements, both with the training package's own pieces:

* ``compute``: the network, loss, optimiser step and gradient clipping of
  ``ktstrain.train`` on synthetic tensors already on the device (no data
  loading, no augmentation), ``--warmup`` untimed iterations, then
  ``--repeats`` windows of ``--iters`` iterations, each timed between two
  ``torch.cuda.synchronize()`` calls; the median window is reported. This is
  the ceiling the real loop can reach.
* ``loader``: the real pipeline. Phantoms (``--cases``, written with
  ``KidneyTumorSegLib.phantom.write_phantom_cases`` into a temporary folder;
  ``--data`` uses a KiTS-layout folder instead), ``preprocess_stage``,
  ``PatchSampler``, a ``DataLoader`` with ``--workers`` processes, GPU
  augmentation (``augment_batch``, the configuration's probabilities) and the
  same step as ``train_stage`` (including its per-step ``float(loss)``, which
  synchronises). Reports iterations/s and:

  - on CUDA, how busy the GPU was: ``nvml`` = the mean of
    ``torch.cuda.utilization()`` sampled every 50 ms during the timed windows
    (needs ``pynvml``; NVML counts the fraction of time a kernel was
    running); without NVML, ``events`` = the sum of CUDA-event times from
    the host-to-device copy to the optimiser step of each iteration divided
    by the wall time. ``events`` is an upper bound: it also counts the gaps
    between kernels inside a step. The table says which one was used.
  - everywhere, the data-wait fraction: time spent waiting for the next
    batch from the loader divided by the wall time.

Throughput is also given as "128^3-equivalent patches/s" = patches/s *
prod(patch) / 128^3, so different patch sizes compare against one target.
Targets (one H100, bf16): >= 60 128^3-equivalent patches/s and the GPU
>= 90 % busy with the real loader; they are printed with the ratio reached
and ``met`` / ``MISSED``; on a CPU they are shown for reference only.

    python benchmarks/bench_training.py                                 # kidney stage, both modes
    python benchmarks/bench_training.py --mode compute --patch 128 128 128 --batch 2
    python benchmarks/bench_training.py --config training/configs/cpu/kidney.json --iters 5 --threads 1
    python benchmarks/bench_training.py --mode compute --config training/configs/cpu/kidney.json --memory-format channels_last
    python benchmarks/bench_training.py --mode loader --data kits19/data --cases 20 --workers 8 --json out.json
"""
from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT / "training", ROOT / "KidneyTumorSeg", ROOT / "benchmarks"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from KidneyTumorSegLib.config import StageConfig  # noqa: E402
from KidneyTumorSegLib.engine.device import autocast_dtype, resolve_device  # noqa: E402
from KidneyTumorSegLib.engine.networks import build_network, count_parameters, required_divisor  # noqa: E402
from ktstrain.augment import augment_batch  # noqa: E402
from ktstrain.config import StageTraining, load_config  # noqa: E402
from ktstrain.losses import build_training_loss  # noqa: E402
from ktstrain.schedules import build_optimizer  # noqa: E402
from ktstrain.train import _step_seed, training_step  # noqa: E402  (the real loop's seed and step)

from bench_training_report import device_name, print_report, targets  # noqa: E402
from gpu_utilization import UtilSampler  # noqa: E402

log = logging.getLogger("bench_training")

REF_VOXELS = 128 ** 3
DEFAULT_CONFIG = ROOT / "training" / "configs" / "kidney.json"


# --------------------------------------------------------------------------
# Set-up shared by both modes
# --------------------------------------------------------------------------
def stage_for(cfg: StageTraining, patch: Optional[Sequence[int]], channels: Optional[Sequence[int]]) -> StageConfig:
    """The configuration's stage with ``--patch`` (k, j, i voxels) and ``--channels`` applied; checks divisibility."""
    stage = cfg.stage
    net = stage.network
    if channels:
        ch = tuple(int(c) for c in channels)
        strides = net.strides if len(net.strides) == len(ch) else (1,) + (2,) * (len(ch) - 1)
        net = replace(net, channels=ch, strides=tuple(strides),
                      deep_supervision_levels=min(net.deep_supervision_levels, max(0, len(ch) - 2)))
    ps = tuple(int(p) for p in (patch or stage.patch_size))
    div = required_divisor(net)
    if len(ps) != len(div) or any(p % d for p, d in zip(ps, div)):
        raise SystemExit(f"patch {'x'.join(map(str, ps))} is not a multiple of {'x'.join(map(str, div))} "
                         f"(the network's total stride per axis)")
    return replace(stage, network=net, patch_size=ps)


class Trainer:
    """Model, optimiser and loss as ``train_stage`` builds them; :meth:`step` is its inner loop body."""

    def __init__(self, cfg: StageTraining, stage: StageConfig, dev: torch.device, amp: Optional[torch.dtype],
                 channels_last: bool = False):
        ts = cfg.train
        torch.manual_seed(ts.seed)
        self.model = build_network(stage.network).to(dev)
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last_3d)
        self.opt = build_optimizer(self.model, ts.optimizer, lr=ts.lr, weight_decay=ts.weight_decay,
                                   momentum=ts.momentum, nesterov=ts.nesterov)
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
        self.loss_fn = build_training_loss(ts.loss, ts.loss_params, ds_decay=ts.ds_decay, downsample=ts.ds_downsample)
        self.loss_fn.set_epoch(0, ts.epochs)
        self.grad_clip = ts.grad_clip
        self.dev, self.amp = dev, amp
        self.model.train()

    def step(self, img: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
        if self.channels_last:  # as train_stage does after augmentation
            img = img.contiguous(memory_format=torch.channels_last_3d)
        return training_step(self.model, self.model, img, lab, self.opt, self.scaler, self.loss_fn, self.amp,
                             self.grad_clip)


def _channels_last(cfg: StageTraining, args) -> bool:
    """``--memory-format``: the configuration's ``train.channels_last``, or forced on/off."""
    return {"config": cfg.train.channels_last, "channels_last": True, "contiguous": False}[args.memory_format]


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _reset_peak(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)


def _peak_mb(dev: torch.device) -> Tuple[float, str]:
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20, "GPU"
    # ru_maxrss is KiB on Linux, bytes on macOS; process-wide and never reset
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**20 if sys.platform == "darwin" else 2**10), "RSS"


def _describe(stage: StageConfig, model: torch.nn.Module) -> str:
    net = stage.network
    ds = f" ds{net.deep_supervision_levels}" if net.deep_supervision and net.deep_supervision_levels else ""
    return f"{net.architecture} {'-'.join(map(str, net.channels))}{ds} ({count_parameters(model) / 1e6:.1f}M)"


def _base_row(mode: str, stage: StageConfig, tr: "Trainer", batch: int) -> Dict[str, Any]:
    return {"mode": mode, "network": _describe(stage, tr.model), "patch": list(stage.patch_size), "batch": batch,
            "eq_factor": float(np.prod(stage.patch_size)) / REF_VOXELS,
            "memory_format": "channels_last_3d" if tr.channels_last else "contiguous"}


def _rates(row: Dict[str, Any], its_per_s: Sequence[float]) -> None:
    med = statistics.median(its_per_s)
    row.update(iters_per_s=med, iters_per_s_all=[round(v, 4) for v in its_per_s],
               patches_per_s=med * row["batch"], eq_patches_per_s=med * row["batch"] * row["eq_factor"])


# --------------------------------------------------------------------------
# Mode 1: compute
# --------------------------------------------------------------------------
def bench_compute(cfg: StageTraining, stage: StageConfig, dev: torch.device, amp, args) -> Dict[str, Any]:
    batch = args.batch or cfg.train.batch_size
    tr = Trainer(cfg, stage, dev, amp, _channels_last(cfg, args))
    gen = torch.Generator(device=dev).manual_seed(0)
    img = torch.randn((batch, stage.network.in_channels) + stage.patch_size, generator=gen, device=dev)
    lab = torch.randint(0, 2, (batch,) + stage.patch_size, generator=gen, device=dev)  # binary stage target
    _reset_peak(dev)
    for _ in range(args.warmup):
        tr.step(img, lab)
    _sync(dev)
    rates = []
    for r in range(args.repeats):
        t = time.perf_counter()
        for _ in range(args.iters):
            loss = tr.step(img, lab)
        _sync(dev)
        dt = time.perf_counter() - t
        rates.append(args.iters / dt)
        log.info("compute window %d/%d: %.3f it/s (loss %.4f)", r + 1, args.repeats, rates[-1], float(loss.detach()))
    row = _base_row("compute", stage, tr, batch)
    _rates(row, rates)
    row["peak_mb"], row["peak_kind"] = _peak_mb(dev)
    return row


# --------------------------------------------------------------------------
# Mode 2: loader
# --------------------------------------------------------------------------
def _cases(args, tmp: Path):
    from ktstrain.data import discover_cases

    if args.data:
        cases = discover_cases(args.data)
        return cases[: args.cases] if args.cases else cases, 0.0
    from KidneyTumorSegLib.phantom import write_phantom_cases

    t = time.perf_counter()
    write_phantom_cases(tmp / "phantoms", args.cases, seed0=args.seed, shape=tuple(args.phantom_shape),
                        spacing=tuple(args.phantom_spacing), n_tumors=1)
    return discover_cases(tmp / "phantoms"), time.perf_counter() - t


def bench_loader(cfg: StageTraining, stage: StageConfig, dev: torch.device, amp, args, tmp: Path) -> Dict[str, Any]:
    """The real pipeline's result row: phantoms (or ``--data``), preprocessing, sampler, loader, augmentation, step."""
    from ktstrain.preprocess import preprocess_stage
    from ktstrain.sampler import PatchSampler

    ts = cfg.train
    batch = args.batch or ts.batch_size
    workers = ts.num_workers if args.workers is None else args.workers
    cases, t_gen = _cases(args, tmp)
    t = time.perf_counter()
    pre = preprocess_stage(cases, stage, Path(args.cache) if args.cache else tmp / "cache", cfg.preprocess,
                           workers=args.prep_workers)
    t_pre = time.perf_counter() - t
    cache = pre.cache
    if stage.normalization == "zscore" and pre.intensity is not None:
        stage = pre.intensity.apply(stage)
    n_iter = args.warmup + args.repeats * args.iters
    sampler = PatchSampler(cache, stage, samples_per_epoch=n_iter * batch, fg_fraction=ts.fg_fraction,
                           hard_negative_fraction=ts.hard_negative_fraction, seed=ts.seed)
    loader = torch.utils.data.DataLoader(sampler, batch_size=batch, shuffle=False, num_workers=workers,
                                         pin_memory=dev.type == "cuda", drop_last=True,
                                         persistent_workers=workers > 0)
    tr = Trainer(cfg, stage, dev, amp, _channels_last(cfg, args))
    spacing = stage.spacing
    why_no_nvml = UtilSampler.available(dev)
    busy_source = "nvml" if why_no_nvml is None else ("events" if dev.type == "cuda" else None)
    if dev.type == "cuda" and why_no_nvml:
        log.info("GPU busy from CUDA events (torch.cuda.utilization unavailable: %s)", why_no_nvml)
    _reset_peak(dev)
    rates, waits, busy_nvml, busy_ev = _loader_windows(tr, loader, dev, cfg, spacing, args, busy_source == "nvml")
    row = _base_row("loader", stage, tr, batch)
    _rates(row, rates)
    row.update(workers=workers, data_wait=statistics.median(waits), data_wait_all=[round(w, 4) for w in waits],
               cases=len(cases), cache_items=len(cache.items), phantom_s=round(t_gen, 2), preprocess_s=round(t_pre, 2),
               data="phantoms" if not args.data else str(args.data), busy_source=busy_source)
    if busy_source == "nvml":
        vals = [b for b in busy_nvml if b is not None]
        row["gpu_busy"] = statistics.median(vals) if vals else None
        row["gpu_busy_events"] = statistics.median(busy_ev) if busy_ev else None
    elif busy_source == "events":
        row["gpu_busy"] = statistics.median(busy_ev)
        row["nvml_unavailable"] = why_no_nvml
    row["peak_mb"], row["peak_kind"] = _peak_mb(dev)
    return row


def _loader_windows(tr: Trainer, loader, dev: torch.device, cfg: StageTraining, spacing, args,
                    nvml: bool) -> Tuple[List[float], List[float], List[Optional[float]], List[float]]:
    """The warm-up, then ``--repeats`` timed windows of ``--iters`` loader steps; per window: iterations/s, the
    data-wait fraction, the NVML busy fraction (with ``nvml``) and the CUDA-event busy fraction (on CUDA)."""
    ts = cfg.train
    rates, waits, busy_nvml, busy_ev = [], [], [], []
    with ExitStack() as stack:
        util = stack.enter_context(UtilSampler(dev)) if nvml else None
        it = iter(loader)
        t_first = time.perf_counter()
        for step in range(args.warmup):
            _loader_step(tr, next(it), dev, cfg, spacing, step, ts.seed)
        _sync(dev)
        log.info("loader warm-up (%d it, worker start-up included): %.1f s", args.warmup, time.perf_counter() - t_first)
        step = args.warmup
        for r in range(args.repeats):
            wait, events = 0.0, []
            if util is not None:
                util.take()
                util.active.set()
            t0 = time.perf_counter()
            for _ in range(args.iters):
                tw = time.perf_counter()
                b = next(it)
                wait += time.perf_counter() - tw
                events.append(_loader_step(tr, b, dev, cfg, spacing, step, ts.seed, timed=dev.type == "cuda"))
                step += 1
            _sync(dev)
            wall = time.perf_counter() - t0
            if util is not None:
                util.active.clear()
                busy_nvml.append(util.take())
            if dev.type == "cuda":
                busy_ev.append(sum(a.elapsed_time(b) for a, b in events) / 1000.0 / wall)
            rates.append(args.iters / wall)
            waits.append(wait / wall)
            log.info("loader window %d/%d: %.3f it/s, data wait %.1f %%", r + 1, args.repeats, rates[-1], 100 * waits[-1])
    return rates, waits, busy_nvml, busy_ev


def _loader_step(tr: Trainer, batch, dev, cfg, spacing, step: int, seed: int, timed: bool = False):
    """``train_stage``'s loop body for one batch; with ``timed``, CUDA events around the GPU part."""
    ev = None
    if timed:
        ev = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        ev[0].record()
    img = batch["image"].to(dev, non_blocking=True)
    lab = batch["label"].to(dev, non_blocking=True).long()
    gen = torch.Generator(device=dev)
    gen.manual_seed(_step_seed(seed, 0, step, 0))
    img, lab = augment_batch(img, lab, cfg.augment, generator=gen, spacing=spacing)
    loss = tr.step(img, lab)
    if ev is not None:
        ev[1].record()
    float(loss.detach())  # the real loop reads the loss every step, which synchronises
    return ev


# --------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["compute", "loader", "both"], default="both")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="stage training configuration (patch, network, batch, "
                   "loss, optimiser, augmentation, workers)")
    p.add_argument("--patch", nargs=3, type=int, metavar=("K", "J", "I"), help="patch size in voxels (default: config)")
    p.add_argument("--channels", nargs="+", type=int, help="network channels per level (default: config)")
    p.add_argument("--batch", type=int, help="batch size (default: config)")
    p.add_argument("--iters", type=int, default=20, help="timed iterations per window")
    p.add_argument("--repeats", type=int, default=3, help="timed windows; the median is reported")
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations first (cuDNN autotuning, worker start-up)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--precision", default="auto", help="auto (bf16 on a GPU, fp32 on CPU) | fp32 | bf16 | fp16")
    p.add_argument("--no-cudnn-benchmark", action="store_true", help="leave torch.backends.cudnn.benchmark off")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--memory-format", choices=["config", "contiguous", "channels_last"], default="config",
                   help="network/input memory layout (default: the configuration's train.channels_last)")
    g = p.add_argument_group("loader mode")
    g.add_argument("--data", help="KiTS-layout folder to use instead of generated phantoms")
    g.add_argument("--cases", type=int, default=4, help="phantoms to generate (with --data: use the first N; 0 = all)")
    g.add_argument("--cache", help="preprocessing cache folder to build or reuse (default: a temporary folder)")
    g.add_argument("--workers", type=int, help="DataLoader worker processes (default: config train.num_workers)")
    g.add_argument("--prep-workers", type=int, default=1, help="preprocessing processes")
    g.add_argument("--phantom-shape", nargs=3, type=int, default=[80, 160, 160], metavar=("K", "J", "I"))
    g.add_argument("--phantom-spacing", nargs=3, type=float, default=[2.4, 2.4, 3.5], metavar=("X", "Y", "Z"),
                   help="phantom voxel size, mm (x, y, z)")
    g.add_argument("--seed", type=int, default=5000, help="seed of the first phantom")
    p.add_argument("--json", help="also write the results as JSON to this file ('-' = stdout)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    if min(args.iters, args.repeats) < 1 or args.warmup < 0:
        raise SystemExit("--iters and --repeats must be >= 1, --warmup >= 0")
    if args.json and args.json != "-" and Path(args.json).exists() and not args.overwrite:
        raise SystemExit(f"output exists: {args.json} (use --overwrite to replace it)")
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    amp = autocast_dtype(dev, args.precision)
    precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp]
    torch.backends.cudnn.benchmark = not args.no_cudnn_benchmark
    cfg = load_config(args.config)
    stage = stage_for(cfg, args.patch, args.channels)
    rows = []
    if args.mode in ("compute", "both"):
        rows.append(bench_compute(cfg, stage, dev, amp, args))
    if args.mode in ("loader", "both"):
        with tempfile.TemporaryDirectory(prefix="bench_training_") as tmp:
            rows.append(bench_loader(cfg, stage, dev, amp, args, Path(tmp)))
    cfg_path = Path(args.config).resolve()
    shown = cfg_path.relative_to(ROOT) if ROOT in cfg_path.parents else cfg_path
    res = {"config": str(shown), "stage": stage.name, "device": device_name(dev), "device_type": dev.type,
           "precision": precision, "torch": torch.__version__, "cudnn_benchmark": torch.backends.cudnn.benchmark,
           "iters": args.iters, "repeats": args.repeats, "warmup": args.warmup, "rows": rows}
    res["targets"] = targets(rows, dev, precision)
    print_report(res)
    if args.json:
        text = json.dumps(res, indent=1, default=str)
        if args.json == "-":
            print(text)
        else:
            from KidneyTumorSegLib.io.atomic import atomic_write_text

            atomic_write_text(args.json, text + "\n", overwrite=args.overwrite)
    return res


if __name__ == "__main__":
    main()

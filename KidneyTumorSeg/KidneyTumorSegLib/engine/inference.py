"""Network inference of one stage: sliding window, TTA, ensemble, OOM fallback.

Arrays are ``(k, j, i)`` (slice, row, column) on the stage's grid; tensors
``(N, C, k, j, i)``; probabilities come back as float32 ``(C, k, j, i)``.

Stitching is MONAI's ``sliding_window_inference``. What it does that we rely
on (checked in MONAI 1.3-1.6): windows of several positions go through the
predictor in one call (``sw_batch_size``); windows are blended with
``compute_importance_map``'s Gaussian, which clamps its minimum to
``max(min, 1e-3)``, so the weights have no zeros and every voxel's weight sum
is positive; images smaller than the patch are padded (constant ``cval``,
symmetrically) and the output cropped back; windows are predicted on
``sw_device`` and stitched on ``device``. What it does not: the Gaussian map
is recomputed on every call (we pass a cached one as ``roi_weight_map``),
progress is a tqdm bar only (we count windows in a predictor wrapper), and it
weights the predictor's output *in place*, which would corrupt the input
image for a predictor returning (a view of) its input: the wrapper clones
such outputs.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from monai.data.utils import compute_importance_map, dense_patch_slices
from monai.inferers import sliding_window_inference

from ..config import RuntimeConfig, StageConfig
from .device import autocast_dtype, resolve_device, warn_if_low_memory
from .intensity import normalise, normalised_value
from .networks import required_divisor
from .tta import MAX_TTA, TTATransform, tta_transforms

logger = logging.getLogger(__name__)

Predictor = Callable[[torch.Tensor], torch.Tensor]
ProgressFn = Callable[[float], None]
Model = Union[nn.Module, Predictor]

_SIGMA_SCALE = 0.125  # Gaussian sigma = 1/8 of the patch, as nnU-Net
_SLICES_PER_CHUNK = 16  # 2D/2.5D: slices stitched per sliding-window call (bounds the stack's memory)


# -- sliding window ------------------------------------------------------------

def importance_map(patch_size: Sequence[int], mode: str = "gaussian", device: Union[str, torch.device] = "cpu") -> torch.Tensor:
    """Blending weights of one window, shape ``patch_size``; cached per (patch, mode, device), never zero."""
    return _importance_map(tuple(int(p) for p in patch_size), mode, str(torch.device(device)))


@functools.lru_cache(maxsize=8)
def _importance_map(patch_size: Tuple[int, ...], mode: str, device: str) -> torch.Tensor:
    # A normal tensor even when first asked for under inference_mode, so a
    # later caller with autograd on (validation during training) can use it.
    with torch.inference_mode(False):
        return compute_importance_map(patch_size, mode=mode, sigma_scale=_SIGMA_SCALE, device=device,
                                      dtype=torch.float32)


def count_windows(image_size: Sequence[int], patch_size: Sequence[int], overlap: float) -> int:
    """Windows MONAI's sliding window visits on one image (after padding it up to the patch)."""
    size = [max(int(s), int(p)) for s, p in zip(image_size, patch_size)]
    # MONAI's scan interval rule (monai.inferers.utils._get_scan_interval, private).
    interval = [p if p == s else max(int(p * (1 - overlap)), 1) for s, p in zip(size, patch_size)]
    return len(dense_patch_slices(size, patch_size, interval))


def sliding_window(
    image: torch.Tensor,
    predictor: Predictor,
    patch_size: Sequence[int],
    overlap: float = 0.25,
    sw_batch_size: int = 2,
    mode: str = "gaussian",
    device: Optional[Union[str, torch.device]] = None,
    out_device: Optional[Union[str, torch.device]] = None,
    progress: Optional[ProgressFn] = None,
    pad_value: float = 0.0,
) -> torch.Tensor:
    """Run ``predictor`` over ``image`` window by window and blend the outputs.

    ``image``: ``(N, C, k, j, i)`` (or ``(N, C, j, i)`` with a 2D
    ``patch_size``), float. ``predictor``: any callable from ``(B, C, *patch)``
    to ``(B, C_out, *patch)``, called with up to ``sw_batch_size`` windows at
    once on ``device`` (default: the image's). Outputs are blended with a
    Gaussian (``mode="gaussian"``) or flat (``"constant"``) weight and
    returned as ``(N, C_out, *spatial)`` on ``out_device`` (default: the
    image's). Images smaller than the patch are padded with ``pad_value`` and
    cropped back. ``progress(fraction)`` is called after every predictor call.
    """
    if image.ndim != len(patch_size) + 2:
        raise ValueError(f"image of shape {tuple(image.shape)} does not match a {len(patch_size)}D patch {tuple(patch_size)}")
    patch = tuple(int(p) for p in patch_size)
    device = torch.device(device) if device is not None else image.device
    out_device = torch.device(out_device) if out_device is not None else image.device
    total = max(1, count_windows(image.shape[2:], patch, overlap) * image.shape[0])
    done = [0]

    def wrapped(x: torch.Tensor) -> torch.Tensor:
        out = predictor(x)
        if isinstance(out, torch.Tensor) and out.untyped_storage().data_ptr() == x.untyped_storage().data_ptr():
            out = out.clone()  # MONAI multiplies outputs by the weights in place
        done[0] += x.shape[0]
        if progress is not None:
            progress(min(1.0, done[0] / total))
        return out

    weights = importance_map(patch, mode, device) if mode == "gaussian" else None
    return sliding_window_inference(
        image, roi_size=patch, sw_batch_size=max(1, int(sw_batch_size)), predictor=wrapped, overlap=overlap,
        mode=mode, sigma_scale=_SIGMA_SCALE, padding_mode="constant", cval=float(pad_value),
        sw_device=device, device=out_device, roi_weight_map=weights,
    )


# -- OOM fallback ---------------------------------------------------------------

@dataclass(frozen=True)
class Attempt:
    """Where one try runs: windows predicted on ``compute``, stitched on ``stitch``."""

    compute: torch.device
    stitch: torch.device
    sw_batch_size: int
    label: str


def fallback_plan(device: torch.device, sw_batch_size: int) -> List[Attempt]:
    """Tries in order: all on the GPU; stitching on the CPU; one window per pass; all on the CPU."""
    cpu = torch.device("cpu")
    b = max(1, int(sw_batch_size))
    if device.type == "cpu":
        plan = [Attempt(cpu, cpu, b, "on the CPU")]
        if b > 1:
            plan.append(Attempt(cpu, cpu, 1, "on the CPU, one window per pass"))
        return plan
    plan = [Attempt(device, device, b, f"on {device}"),
            Attempt(device, cpu, b, f"on {device}, stitching on the CPU")]
    if b > 1:
        plan.append(Attempt(device, cpu, 1, f"on {device}, stitching on the CPU, one window per pass"))
    plan.append(Attempt(cpu, cpu, b, "entirely on the CPU (slow)"))
    return plan


def run_with_fallback(run: Callable[[Attempt], torch.Tensor], plan: Sequence[Attempt]) -> torch.Tensor:
    """``run(attempt)`` for each attempt until one does not run out of GPU memory."""
    for n, attempt in enumerate(plan):
        try:
            return run(attempt)
        except torch.cuda.OutOfMemoryError:
            if n == len(plan) - 1:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            logger.warning("out of GPU memory running %s; retrying %s", attempt.label, plan[n + 1].label)
    raise ValueError("empty fallback plan")


# -- one stage's prediction -----------------------------------------------------------

class _Progress:
    """Forward passes done / total; monotone across retries (a retry restarts the count)."""

    def __init__(self, callback: Optional[ProgressFn], total: int) -> None:
        self.callback, self.total, self.done, self.best = callback, max(1, total), 0, 0.0

    def restart(self) -> None:
        self.done = 0

    def tick(self, n: int) -> None:
        self.done += n
        fraction = min(1.0, self.done / self.total)
        if self.callback is not None and fraction > self.best:
            self.best = fraction
            self.callback(fraction)


def _seg_logits(out: object) -> torch.Tensor:
    # Networks return a tensor in eval mode; tolerate training-mode forms from plain callables.
    if isinstance(out, dict):
        out = out["seg"]
    while isinstance(out, (list, tuple)):
        out = out[0]
    return out  # type: ignore[return-value]


def _window_predictor(models: Sequence[Model], transforms: Sequence[TTATransform], device: torch.device,
                      precision: str, tick: Callable[[int], None]) -> Predictor:
    """Mean over models and augmentations of the per-window probabilities (softmax, or sigmoid for 1 channel)."""
    amp = autocast_dtype(device, precision)
    n = len(models) * len(transforms)

    def predict(x: torch.Tensor) -> torch.Tensor:
        acc: Optional[torch.Tensor] = None
        for model in models:
            for t in transforms:
                ctx = torch.autocast(device_type=device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
                with ctx:
                    logits = _seg_logits(model(t.forward(x))).float()
                probs = torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)
                probs = t.inverse(probs)
                acc = probs.contiguous() if acc is None else acc.add_(probs)
                tick(x.shape[0])
        assert acc is not None
        return acc.div_(n) if n > 1 else acc

    return predict


def choose_transforms(stage: StageConfig, runtime: RuntimeConfig) -> List[TTATransform]:
    """The TTA transforms a stage runs with.

    ``n = min(runtime.tta, stage.tta)`` clamped to ``[1, 12]``: the stage's
    ``tta`` is the most its bundle was validated with, ``runtime.tta`` what
    the user will pay for. Axial rotations need equal j/i spacing and a patch
    the network takes transposed; 2D/2.5D stages never flip k. When fewer
    transforms are valid, the valid ones are used and it is logged.
    """
    n = max(1, min(int(runtime.tta), int(stage.tta), MAX_TTA))
    two_d = stage.input_mode != "3d"
    _, sj, si = (float(s) for s in stage.spacing)
    pj, pi = stage.patch_size[1], stage.patch_size[2]
    div = stage_divisor(stage)
    dj, di = div[-2], div[-1]
    rotations = math.isclose(sj, si, rel_tol=1e-3) and (pj == pi or (pj % di == 0 and pi % dj == 0))
    chosen = tta_transforms(n, rotations=rotations, flip_k=not two_d)
    if len(chosen) < n:
        logger.info("stage %s: %d test-time augmentations requested, %d valid (%s)", stage.name, n, len(chosen),
                    ", ".join(t.name for t in chosen))
    return chosen


def _check_stage(stage: StageConfig) -> Tuple[int, ...]:
    """The window size the network runs on: ``(k, j, i)`` for 3D, ``(j, i)`` for 2D/2.5D stages."""
    net = stage.network
    if stage.input_mode == "3d":
        window, want_dims, want_in = tuple(stage.patch_size), 3, 1
    else:
        window, want_dims = tuple(stage.patch_size[1:]), 2
        want_in = 2 * stage.context_slices + 1 if stage.input_mode == "2.5d" else 1
        if stage.input_mode == "2d" and stage.context_slices:
            raise ValueError(f"stage {stage.name!r}: input_mode '2d' takes no context_slices (use '2.5d')")
    if net.spatial_dims != want_dims:
        raise ValueError(f"stage {stage.name!r}: input_mode {stage.input_mode!r} needs a {want_dims}D network, "
                         f"got spatial_dims={net.spatial_dims}")
    if net.in_channels != want_in:
        raise ValueError(f"stage {stage.name!r}: input_mode {stage.input_mode!r} with context_slices="
                         f"{stage.context_slices} feeds {want_in} channel(s), network has in_channels={net.in_channels}")
    div = stage_divisor(stage)
    if any(p % d for p, d in zip(window, div)):
        names = sorted({m.architecture for m in stage.member_network_configs(1)})
        raise ValueError(f"stage {stage.name!r}: patch {window} is not a multiple of {div}, "
                         f"which {' and '.join(repr(n) for n in names)} need(s)")
    return window


def stage_divisor(stage: StageConfig) -> Tuple[int, ...]:
    """Per-axis factor the window must be a multiple of: the least common multiple over the stage's networks."""
    div = np.ones(stage.network.spatial_dims, dtype=np.int64)
    for net in [stage.network, *stage.member_networks]:
        div = np.lcm(div, np.asarray(required_divisor(net), dtype=np.int64))
    return tuple(int(d) for d in div)


class NetworkPredictor:
    """Runs one stage's networks (an ensemble) on HU images of the stage's grid.

    The constructor takes runtime settings only; the stage configuration and
    the networks come from the model bundle. Networks are moved to
    :attr:`device` and put in eval mode; plain callables are used as they are.
    :meth:`predict` normalises, runs the sliding window with Gaussian blending,
    averages the softmax of every model and test-time augmentation per window,
    and falls back to CPU stitching / smaller batches / the CPU on GPU
    out-of-memory.
    """

    def __init__(self, stage: StageConfig, models: Sequence[Model], runtime: RuntimeConfig) -> None:
        if not models:
            raise ValueError(f"stage {stage.name!r}: no networks to run")
        self.stage, self.runtime = stage, runtime
        self.window = _check_stage(stage)
        self.device = resolve_device(runtime.device)
        self.models: List[Model] = [m.to(self.device).eval() if isinstance(m, nn.Module) else m for m in models]
        self.transforms = choose_transforms(stage, runtime)

    def predict(self, image_hu: np.ndarray, progress: Optional[ProgressFn] = None) -> np.ndarray:
        """Probabilities ``(C, k, j, i)`` float32 of ``image_hu`` ``(k, j, i)`` (HU, on the stage's grid)."""
        if image_hu.ndim != 3:
            raise ValueError(f"expected a (k, j, i) image, got shape {image_hu.shape}")
        stage = self.stage
        x = torch.from_numpy(normalise(image_hu, stage))
        pad = normalised_value(stage.window[0], stage)  # pad with air, as report 000 pads with -1024 HU
        per_image = count_windows(x.shape[1:] if stage.input_mode != "3d" else x.shape, self.window,
                                  self.runtime.overlap)
        n_images = x.shape[0] if stage.input_mode != "3d" else 1
        meter = _Progress(progress, per_image * n_images * len(self.models) * len(self.transforms))

        def attempt_run(a: Attempt) -> torch.Tensor:
            meter.restart()
            models = self._models_on(a.compute)
            try:
                predictor = _window_predictor(models, self.transforms, a.compute, self.runtime.precision, meter.tick)
                if stage.input_mode == "3d":
                    out = sliding_window(x[None, None].to(a.stitch), predictor, self.window, self.runtime.overlap,
                                         a.sw_batch_size, device=a.compute, out_device=a.stitch, pad_value=pad)
                    return out[0].to("cpu")
                return self._predict_slices(x, predictor, a, pad)
            finally:
                if a.compute != self.device:
                    self._models_on(self.device)

        plan = fallback_plan(self.device, self.runtime.sw_batch_size)
        if stage.input_mode == "3d" and self.device.type == "cuda":
            # Stitching on the GPU holds the input, the output and the weight sum there.
            need = x.numel() * 4 * (stage.network.out_channels + 2)
            if warn_if_low_memory(self.device, need, f"stage {stage.name} stitching"):
                logger.info("stage %s: stitching on the CPU from the start", stage.name)
                plan = plan[1:]
        with torch.inference_mode():
            out = run_with_fallback(attempt_run, plan)
        if progress is not None and meter.best < 1.0:
            progress(1.0)
        return np.ascontiguousarray(out.numpy(), dtype=np.float32)

    def _models_on(self, device: torch.device) -> List[Model]:
        # Outside inference mode: weights moved under it would become inference
        # tensors that a later training step could not use.
        with torch.inference_mode(False):
            return [m.to(device) if isinstance(m, nn.Module) else m for m in self.models]

    def _predict_slices(self, x: torch.Tensor, predictor: Predictor, a: Attempt, pad: float) -> torch.Tensor:
        """2D/2.5D: each slice k with its ``context_slices`` neighbours (edge-replicated) as channels."""
        c = self.stage.context_slices if self.stage.input_mode == "2.5d" else 0
        depth = x.shape[0]
        out: Optional[torch.Tensor] = None
        step = max(_SLICES_PER_CHUNK, self.runtime.sw_batch_size)
        for s0 in range(0, depth, step):
            s1 = min(depth, s0 + step)
            idx = torch.arange(s0 - c, s1 + c).clamp_(0, depth - 1)
            stack = x[idx].unfold(0, 2 * c + 1, 1).permute(0, 3, 1, 2)  # (slices, 2c+1, j, i)
            res = sliding_window(stack.to(a.stitch).contiguous(), predictor, self.window, self.runtime.overlap,
                                 a.sw_batch_size, device=a.compute, out_device=a.stitch, pad_value=pad)
            if out is None:
                out = torch.empty((res.shape[1], depth) + tuple(res.shape[2:]), dtype=torch.float32)
            out[:, s0:s1] = res.permute(1, 0, 2, 3).to("cpu")
        assert out is not None
        return out

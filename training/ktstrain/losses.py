"""Training losses: segmentation losses, deep supervision, regression of extra heads.

Shapes: logits ``(N, C, k, j, i)`` (or ``(N, C, j, i)`` for 2D stages);
targets are integer label maps ``(N, k, j, i)`` (a singleton channel
``(N, 1, k, j, i)`` is accepted too) with values in ``[0, C)``. ``C >= 2``
means softmax over classes; ``C == 1`` means one sigmoid foreground channel
and the target must be 0/1 (the binary stages of report 000 may use either).

Every loss is a sum of MONAI / PyTorch terms (MONAI's own ``DiceCELoss`` and
``DiceFocalLoss`` are not used as is: ``DiceCELoss`` applies class weights to
its Dice term as well, and ``DiceFocalLoss`` computes a *sigmoid* focal term
even for a softmax network; see :func:`build_loss`).
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from monai.losses import DiceLoss, FocalLoss, TverskyLoss

from KidneyTumorSegLib.engine.networks import unpack_outputs

logger = logging.getLogger(__name__)

# name -> (region term, voxel term, class weights apply to the region term)
_RECIPES: Dict[str, Tuple[Optional[str], Optional[str], bool]] = {
    "dice_ce": ("dice", "ce", False),        # nnU-Net's default (the project default)
    "dice": ("dice", None, True),             # reports 002 (kidney) / 003
    "ce": (None, "ce", False),                # report 000's second fine model (BCE)
    "soft_jaccard": ("jaccard", None, True),  # report 000
    "tversky": ("tversky", None, False),      # report 001
    "focal_dice": ("dice", "focal", True),    # report 002 (tumor): focal + weighted Dice
    "wce_dice": ("dice", "ce", False),        # report 004: weighted CE + Dice
}
LOSSES = tuple(_RECIPES)
_COMMON = {"class_weights", "include_background", "batch_dice", "lambda_region", "lambda_voxel",
           "smooth_nr", "smooth_dr"}
_EXTRA = {"tversky": {"alpha", "beta"}, "focal_dice": {"gamma"}}


def _to_label_channel(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """``(N, *spatial)`` or ``(N, 1, *spatial)`` labels -> ``(N, 1, *spatial)``, checked against ``logits``."""
    if target.dim() == logits.dim() - 1:
        target = target.unsqueeze(1)
    if target.dim() != logits.dim() or target.shape[1] != 1 or target.shape[2:] != logits.shape[2:]:
        raise ValueError(f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}: "
                         f"expected a label map (N, *spatial) with spatial {tuple(logits.shape[2:])}")
    return target


class SegmentationLoss(nn.Module):
    """``lambda_region * region(logits, target) + lambda_voxel * voxel(logits, target)``.

    Holds a softmax variant and a sigmoid variant (both built up front, so
    ``.to(device)`` moves every weight) and picks one by ``logits.shape[1]``.
    Computed in float32 whatever the autocast dtype of the logits.
    """

    def __init__(self, name: str, softmax_terms: List[Tuple[float, nn.Module]],
                 sigmoid_terms: List[Tuple[float, nn.Module]], n_classes: Optional[int]) -> None:
        super().__init__()
        self.name = name
        self.n_classes = n_classes
        self.softmax_terms = nn.ModuleList([m for _, m in softmax_terms])
        self.softmax_lambdas = [float(w) for w, _ in softmax_terms]
        self.sigmoid_terms = nn.ModuleList([m for _, m in sigmoid_terms])
        self.sigmoid_lambdas = [float(w) for w, _ in sigmoid_terms]

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = _to_label_channel(target, logits)
        logits = logits.float()
        c = logits.shape[1]
        if self.n_classes is not None and c != self.n_classes and c > 1:
            raise ValueError(f"loss {self.name!r} was built with {self.n_classes} class weights, "
                             f"the logits have {c} channels")
        t_max = int(target.max()) if target.numel() else 0
        t_min = int(target.min()) if target.numel() else 0
        if t_min < 0 or t_max >= max(c, 2):
            raise ValueError(f"target labels span [{t_min}, {t_max}] but the logits have {c} channel(s): "
                             f"labels must lie in [0, {max(c, 2) - 1}]")
        if c == 1:
            target = target.float()
            terms, lambdas = self.sigmoid_terms, self.sigmoid_lambdas
        else:
            target = target.long()
            terms, lambdas = self.softmax_terms, self.softmax_lambdas
        total = logits.new_zeros(())
        for lam, term in zip(lambdas, terms):
            if lam:
                total = total + lam * term(logits, target)
        return total


class _CrossEntropy(nn.Module):
    """``nn.CrossEntropyLoss`` taking the ``(N, 1, *spatial)`` label map MONAI's losses take."""

    def __init__(self, weight: Optional[torch.Tensor]) -> None:
        super().__init__()
        self.ce = nn.CrossEntropyLoss(weight=weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.ce(logits, target[:, 0])


def build_loss(name: str = "dice_ce", **params: Any) -> SegmentationLoss:
    """A segmentation loss by name: ``loss(logits (N,C,*sp), labels (N,*sp)) -> scalar``.

    Names (terms; MONAI classes unless noted):

    * ``dice_ce`` (default, nnU-Net): soft Dice + cross-entropy.
    * ``wce_dice`` (report 004): soft Dice + class-weighted cross-entropy
      (``class_weights`` expected; without them it equals ``dice_ce``).
    * ``dice``: soft Dice. ``ce``: cross-entropy (BCE with one channel).
    * ``soft_jaccard`` (report 000): ``DiceLoss(jaccard=True)``, 1 - soft IoU.
    * ``tversky`` (report 001): ``TverskyLoss``, ``alpha`` weighs false
      positives, ``beta`` false negatives (defaults 0.3 / 0.7 as in the report).
    * ``focal_dice`` (report 002): softmax ``FocalLoss`` (``gamma`` 2) +
      class-weighted soft Dice; ``class_weights`` weigh both terms.

    Parameters: ``class_weights`` (one per class incl. background, e.g.
    ``(1, 1, 3)``; see :func:`class_weights_from_counts`); for the Dice-type
    term the background entry is dropped when the background is excluded.
    With a single sigmoid channel, ``w[1] / w[0]`` becomes the BCE
    ``pos_weight`` and the other terms are unweighted. ``include_background``
    (False: nnU-Net's choice, the foreground overlap is what is scored),
    ``batch_dice`` (Dice over the whole batch), ``lambda_region`` /
    ``lambda_voxel`` (term weights, 1 / 1), ``smooth_nr`` / ``smooth_dr``.
    """
    if name not in _RECIPES:
        raise ValueError(f"unknown loss {name!r} (expected one of {', '.join(LOSSES)})")
    allowed = _COMMON | _EXTRA.get(name, set())
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(f"loss {name!r} does not take {unknown}; accepted: {sorted(allowed)}")
    cw = params.get("class_weights")
    weights = None if cw is None else torch.as_tensor([float(w) for w in cw], dtype=torch.float32)
    if weights is not None and (weights.dim() != 1 or len(weights) < 2 or bool((weights < 0).any())):
        raise ValueError(f"class_weights must be >= 2 non-negative numbers (one per class), got {cw!r}")
    if name == "wce_dice" and weights is None:
        logger.warning("loss 'wce_dice' without class_weights is plain Dice + cross-entropy")
    include_bg = bool(params.get("include_background", False))
    common = dict(batch=bool(params.get("batch_dice", False)), smooth_nr=float(params.get("smooth_nr", 1e-5)),
                  smooth_dr=float(params.get("smooth_dr", 1e-5)))
    lambdas = (float(params.get("lambda_region", 1.0)), float(params.get("lambda_voxel", 1.0)))

    def terms(binary: bool) -> List[Tuple[float, nn.Module]]:
        region, voxel, weight_region = _RECIPES[name]
        out = []
        for lam, term in zip(lambdas, (_region_term(region, weight_region, params, weights, include_bg, common, binary),
                                       _voxel_term(voxel, params, weights, binary))):
            if term is not None:
                out.append((lam, term))
        return out

    return SegmentationLoss(name, terms(False), terms(True), None if weights is None else len(weights))


def _region_term(region: Optional[str], weight_region: bool, params: Mapping[str, Any], weights: Optional[torch.Tensor],
                 include_bg: bool, common: Dict[str, Any], binary: bool) -> Optional[nn.Module]:
    """The Dice-type term (Dice, Jaccard, Tversky; MONAI) of a loss, or None when it has none."""
    if region is None:
        return None
    act = dict(sigmoid=True) if binary else dict(softmax=True, to_onehot_y=True)
    bg = True if binary else include_bg
    if region == "tversky":
        return TverskyLoss(include_background=bg, alpha=float(params.get("alpha", 0.3)),
                           beta=float(params.get("beta", 0.7)), **act, **common)
    w = None
    if weight_region and weights is not None and not binary:
        w = weights if bg else weights[1:]
    return DiceLoss(include_background=bg, jaccard=region == "jaccard", weight=w, **act, **common)


def _voxel_term(voxel: Optional[str], params: Mapping[str, Any], weights: Optional[torch.Tensor],
                binary: bool) -> Optional[nn.Module]:
    """The per-voxel term (cross-entropy, BCE, focal) of a loss, or None when it has none."""
    if voxel is None:
        return None
    if voxel == "ce":
        if binary:
            pos = None if weights is None else (weights[1] / weights[0].clamp_min(1e-12)).reshape(1)
            return nn.BCEWithLogitsLoss(pos_weight=pos)
        return _CrossEntropy(weights)
    gamma = float(params.get("gamma", 2.0))
    if binary:
        return FocalLoss(include_background=True, gamma=gamma, use_softmax=False)
    # Background included: the focal term is a per-voxel classification loss over all classes.
    return FocalLoss(include_background=True, to_onehot_y=True, gamma=gamma, weight=weights, use_softmax=True)


def class_weights_from_counts(voxel_counts: Sequence[float], power: float = 0.5) -> List[float]:
    """Class weights ``(total / count_c) ** power`` normalised to mean 1 (inverse-frequency; 0.5 softens it).

    ``voxel_counts``: voxels per class, background first (e.g. summed over
    the training label maps). A class with no voxels gets the largest weight.
    """
    counts = np.asarray(voxel_counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size < 2 or (counts < 0).any() or counts.sum() <= 0:
        raise ValueError(f"voxel_counts must be >= 2 non-negative counts with a positive sum, got {voxel_counts!r}")
    present = counts > 0
    raw = np.zeros_like(counts)
    raw[present] = (counts.sum() / counts[present]) ** float(power)
    raw[~present] = raw[present].max()
    return [float(v) for v in raw / raw.mean()]


class WeightedMSELoss(nn.Module):
    """Report 003's weighted MSE for landmark / boundary heat-map regression.

    ``WMSE = (sum_{t>0} (l-t)^2 / sum_{t>0} t  +  sum_{t<=0} (l-t)^2 / #{t<=0}) / 2``
    over all voxels and channels of the batch: errors on the (small) positive
    heat-map and on the (large) empty background count equally. The report
    prints ``sum_{t<=0} t`` as the second denominator, which is zero for a
    heat map, so the count of those voxels is used. A term whose region is
    empty is left out of the mean. ``pred`` and ``target``: ``(N, C, *spatial)``.
    """

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape != target.shape:
            raise ValueError(f"regression head output {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        pred, target = pred.float(), target.float()
        sq = (pred - target) ** 2
        pos = target > 0
        terms = []
        if bool(pos.any()):
            terms.append(sq[pos].sum() / target[pos].sum().clamp_min(1e-6))
        if bool((~pos).any()):
            terms.append(sq[~pos].mean())
        if not terms:
            return pred.sum() * 0.0
        return torch.stack(terms).mean()


def downsample_labels(target: torch.Tensor, size: Sequence[int], mode: str = "nearest") -> torch.Tensor:
    """Label map ``(N, *spatial)`` -> ``(N, *size)`` for a coarser deep-supervision output.

    ``nearest`` (default, as nnU-Net): keeps voxel ``floor(o * in / out)``,
    i.e. voxel ``2o`` for a factor 2, the centre of the stride-2 convolution
    that produced coarse voxel ``o``. ``max``: the largest label in each
    block; KiTS labels nest (tumor 2 inside kidney 1), so a coarse voxel that
    touches a small tumor stays tumor instead of vanishing, at the price of
    slightly dilated foreground. Both keep integer labels.
    """
    size = tuple(int(s) for s in size)
    if tuple(target.shape[1:]) == size:
        return target
    x = target.unsqueeze(1).float()
    if mode == "nearest":
        y = F.interpolate(x, size=size, mode="nearest")
    elif mode == "max":
        pool = F.adaptive_max_pool3d if len(size) == 3 else F.adaptive_max_pool2d
        y = pool(x, size)
    else:
        raise ValueError(f"unknown downsampling mode {mode!r} (expected 'nearest' or 'max')")
    return y[:, 0].to(target.dtype)


class DeepSupervisionLoss(nn.Module):
    """Loss over a network output of any form (tensor, ``[full, coarser...]``, dict with extra heads).

    ``loss = sum_l w_l * base(seg_l, target_l) + sum_h head_weights[h] * WMSE(out_h, head_targets[h])``
    where ``target_l`` is ``target`` downsampled to output ``l``'s size
    (:func:`downsample_labels`, ``downsample`` mode).

    ``weights``: per output, full resolution first; default nnU-Net's 1, 1/2,
    1/4... for as many outputs as the network returns; always normalised to
    sum 1. ``levels``: the number of segmentation outputs expected (checked
    when given). ``decay`` (report 002): ``{"initial": 0.33, "factor": 0.8,
    "every": 15}`` multiplies the coarser outputs' weights by
    ``initial * factor ** (epoch // every)`` before normalising, so deep
    supervision fades out; ``{"initial": p, "until": "end"}`` fades it
    linearly to 0 at the last epoch instead. Call :meth:`set_epoch` once per
    epoch. The report's formula for how ``p`` enters is not printed; this
    scaling of the auxiliary terms is our reading of it.

    A single-tensor output (no deep supervision, eval mode) uses weight 1.
    After each call ``last_terms`` maps ``seg0``, ``seg1``... and head names to
    the detached unweighted term values.
    """

    def __init__(self, base: nn.Module, weights: Optional[Sequence[float]] = None, levels: Optional[int] = None,
                 decay: Optional[Mapping[str, Any]] = None, head_weights: Optional[Mapping[str, float]] = None,
                 head_loss: Optional[nn.Module] = None, downsample: str = "nearest") -> None:
        super().__init__()
        self.base = base
        self.head_loss = head_loss if head_loss is not None else WeightedMSELoss()
        if weights is not None and (len(weights) == 0 or any(float(w) < 0 for w in weights) or sum(weights) <= 0):
            raise ValueError(f"deep supervision weights must be non-negative with a positive sum, got {weights!r}")
        if weights is not None and levels is not None and len(weights) != levels:
            raise ValueError(f"{len(weights)} deep supervision weights for {levels} levels")
        self.weights = None if weights is None else [float(w) for w in weights]
        self.levels = None if levels is None else int(levels)
        self.decay = dict(decay) if decay else None
        if self.decay is not None:
            if "initial" not in self.decay or not ({"every", "until"} & set(self.decay)):
                raise ValueError(f"decay needs 'initial' and 'every' (step) or 'until' (linear), got {decay!r}")
        self.head_weights = {k: float(v) for k, v in (head_weights or {}).items()}
        if downsample not in ("nearest", "max"):
            raise ValueError(f"unknown downsampling mode {downsample!r} (expected 'nearest' or 'max')")
        self.downsample = downsample
        self.epoch, self.total_epochs = 0, 1
        self.last_terms: Dict[str, torch.Tensor] = {}

    def set_epoch(self, epoch: int, total: int) -> None:
        """Use the weights of ``epoch`` (0-based) of ``total`` from now on."""
        self.epoch, self.total_epochs = int(epoch), max(int(total), 1)

    def aux_factor(self, epoch: int, total: int) -> float:
        """The factor on the coarser outputs' weights at ``epoch`` of ``total`` (1 without decay)."""
        if self.decay is None:
            return 1.0
        p0 = float(self.decay["initial"])
        if "every" in self.decay:
            return p0 * float(self.decay.get("factor", 0.8)) ** (int(epoch) // max(int(self.decay["every"]), 1))
        return p0 * max(0.0, 1.0 - float(epoch) / max(int(total) - 1, 1))

    def weights_at(self, epoch: int, total: int, n_outputs: Optional[int] = None) -> List[float]:
        """Normalised weights of the ``n_outputs`` segmentation outputs (full resolution first) at ``epoch``."""
        n = n_outputs if n_outputs is not None else (len(self.weights) if self.weights else self.levels)
        if n is None:
            raise ValueError("number of outputs unknown: pass n_outputs, weights or levels")
        if self.weights is not None:
            if len(self.weights) != n:
                raise ValueError(f"{len(self.weights)} deep supervision weights but the network returned {n} outputs")
            w = list(self.weights)
        else:
            w = [0.5 ** i for i in range(n)]
        f = self.aux_factor(epoch, total)
        w = [w[0]] + [x * f for x in w[1:]]
        s = sum(w)
        if s <= 0:
            raise ValueError(f"deep supervision weights {w} sum to zero at epoch {epoch}")
        return [x / s for x in w]

    def forward(self, output: Any, target: torch.Tensor,
                head_targets: Optional[Mapping[str, torch.Tensor]] = None) -> torch.Tensor:
        """``output``: network output in any form; ``target``: labels ``(N, *spatial)`` at full resolution;
        ``head_targets``: ``{head: (N, C_h, *spatial)}`` for every extra head the output carries."""
        segs, extras = unpack_outputs(output)
        if self.levels is not None and len(segs) not in (1, self.levels):
            raise ValueError(f"expected {self.levels} segmentation outputs, got {len(segs)}")
        if target.dim() == segs[0].dim():
            target = target[:, 0]
        weights = [1.0] if len(segs) == 1 else self.weights_at(self.epoch, self.total_epochs, len(segs))
        terms: Dict[str, torch.Tensor] = {}
        total = segs[0].new_zeros((), dtype=torch.float32)
        for lvl, (seg, w) in enumerate(zip(segs, weights)):
            if w == 0:
                continue
            value = self.base(seg, downsample_labels(target, seg.shape[2:], self.downsample))
            terms[f"seg{lvl}"] = value.detach()
            total = total + w * value
        head_targets = dict(head_targets or {})
        for name, pred in extras.items():
            if name not in head_targets:
                raise ValueError(f"the network has an extra head {name!r} but no target was given for it "
                                 f"(head_targets has {sorted(head_targets)})")
            value = self.head_loss(pred, head_targets[name])
            terms[name] = value.detach()
            total = total + self.head_weights.get(name, 1.0) * value
        self.last_terms = terms
        return total


def build_training_loss(name: str = "dice_ce", loss_params: Optional[Mapping[str, Any]] = None,
                        ds_weights: Optional[Sequence[float]] = None, ds_levels: Optional[int] = None,
                        ds_decay: Optional[Mapping[str, Any]] = None,
                        head_weights: Optional[Mapping[str, float]] = None,
                        downsample: str = "nearest") -> DeepSupervisionLoss:
    """``DeepSupervisionLoss(build_loss(name, **loss_params), ...)``: one call for the training loop."""
    return DeepSupervisionLoss(build_loss(name, **dict(loss_params or {})), weights=ds_weights, levels=ds_levels,
                               decay=ds_decay, head_weights=head_weights, downsample=downsample)


__all__ = ["LOSSES", "build_loss", "SegmentationLoss", "class_weights_from_counts", "WeightedMSELoss",
           "downsample_labels", "DeepSupervisionLoss", "build_training_loss"]

"""Optimisers and epoch-based learning-rate schedules that resume exactly.

Schedules are closed forms of the epoch (``poly``, ``cosine``, ``constant``)
or a small explicit state (``plateau_ema``), not PyTorch's chainable
``lr_scheduler`` classes: a value that depends only on the epoch number (and a
state dict of plain numbers) is the same after a resume, bit for bit, however
the run was interrupted.

Use::

    sched = build_scheduler(optimizer, "poly", max_epochs=600)
    for epoch in range(start, 600):
        sched.start_epoch(epoch)          # sets the LR of every param group
        ... train ...
        sched.end_epoch(epoch, train_loss)  # plateau_ema learns from it; others ignore it

``start_epoch`` also takes a fractional epoch (``epoch + it / iters``) for
per-iteration updates (report 003's poly is per iteration).
"""
from __future__ import annotations

import logging
import math
from typing import Any, Dict, Iterable, List, Optional, Union

import torch
from torch import nn

logger = logging.getLogger(__name__)

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("poly", "cosine", "plateau_ema", "constant")


def build_optimizer(params: Union[nn.Module, Iterable[Any]], name: str = "adam", lr: float = 1e-3,
                    weight_decay: float = 0.0, momentum: float = 0.99, nesterov: bool = True) -> torch.optim.Optimizer:
    """``adam`` (reports 000/001/003/004; ``weight_decay`` is L2 as in report 003's 5e-4), ``adamw``
    (decoupled decay), or ``sgd`` (momentum 0.99, Nesterov: nnU-Net). ``params``: a module or its parameters."""
    if isinstance(params, nn.Module):
        params = params.parameters()
    name = name.lower()
    if lr <= 0:
        raise ValueError(f"learning rate must be positive, got {lr}")
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum,
                               nesterov=bool(nesterov) and momentum > 0)
    raise ValueError(f"unknown optimizer {name!r} (expected one of {', '.join(OPTIMIZERS)})")


class EpochSchedule:
    """Base: ``lr(epoch) = base_lr_g * factor(epoch)`` per param group ``g``, with optional linear warm-up.

    Warm-up: over the first ``warmup_epochs`` epochs the factor rises linearly
    from ``warmup_start`` to 1; the schedule proper then runs over the
    remaining ``max_epochs - warmup_epochs`` epochs.
    """

    kind = "base"

    def __init__(self, optimizer: torch.optim.Optimizer, max_epochs: int, warmup_epochs: int = 0,
                 warmup_start: float = 0.01) -> None:
        if max_epochs < 1:
            raise ValueError(f"max_epochs must be >= 1, got {max_epochs}")
        if not 0 <= warmup_epochs < max_epochs:
            raise ValueError(f"warmup_epochs must be in [0, {max_epochs}), got {warmup_epochs}")
        self.optimizer = optimizer
        self.max_epochs = int(max_epochs)
        self.warmup_epochs = int(warmup_epochs)
        self.warmup_start = float(warmup_start)
        self.base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self.last_epoch: float = -1

    def _factor(self, t: float, span: float) -> float:
        """Schedule factor at ``t`` epochs after warm-up, of ``span`` epochs in all."""
        raise NotImplementedError

    def factor(self, epoch: float) -> float:
        if epoch < self.warmup_epochs:
            return self.warmup_start + (1.0 - self.warmup_start) * epoch / self.warmup_epochs
        return self._factor(epoch - self.warmup_epochs, self.max_epochs - self.warmup_epochs)

    def lrs_at(self, epoch: float) -> List[float]:
        """Learning rate of every param group at ``epoch`` (0-based, may be fractional)."""
        f = self.factor(float(epoch))
        return [b * f for b in self.base_lrs]

    def lr_at(self, epoch: float) -> float:
        """Learning rate of the first param group at ``epoch``."""
        return self.lrs_at(epoch)[0]

    def start_epoch(self, epoch: float) -> float:
        """Set every group's LR for ``epoch`` and return the first group's."""
        lrs = self.lrs_at(epoch)
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self.last_epoch = epoch
        return lrs[0]

    def end_epoch(self, epoch: int, train_loss: Optional[float] = None) -> None:
        """Record the finished ``epoch`` (only :class:`PlateauEMA` uses the loss)."""

    def state_dict(self) -> Dict[str, Any]:
        return {"kind": self.kind, "base_lrs": list(self.base_lrs), "last_epoch": self.last_epoch,
                "max_epochs": self.max_epochs, "warmup_epochs": self.warmup_epochs,
                "warmup_start": self.warmup_start}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(f"scheduler state is for {state.get('kind')!r}, this scheduler is {self.kind!r}")
        if len(state["base_lrs"]) != len(self.base_lrs):
            raise ValueError(f"scheduler state has {len(state['base_lrs'])} param groups, "
                             f"the optimizer has {len(self.base_lrs)}")
        self.base_lrs = [float(v) for v in state["base_lrs"]]
        self.last_epoch = state["last_epoch"]
        self.max_epochs = int(state["max_epochs"])
        self.warmup_epochs = int(state["warmup_epochs"])
        self.warmup_start = float(state["warmup_start"])


class ConstantLR(EpochSchedule):
    """Constant learning rate (after warm-up); report 001."""

    kind = "constant"

    def _factor(self, t: float, span: float) -> float:
        return 1.0


class PolyLR(EpochSchedule):
    """nnU-Net / report 003: ``lr * (1 - epoch / max_epochs) ** exponent`` (exponent 0.9)."""

    kind = "poly"

    def __init__(self, optimizer: torch.optim.Optimizer, max_epochs: int, exponent: float = 0.9, **kw: Any) -> None:
        super().__init__(optimizer, max_epochs, **kw)
        self.exponent = float(exponent)

    def _factor(self, t: float, span: float) -> float:
        return max(0.0, 1.0 - t / span) ** self.exponent

    def state_dict(self) -> Dict[str, Any]:
        return dict(super().state_dict(), exponent=self.exponent)

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.exponent = float(state["exponent"])


class CosineLR(EpochSchedule):
    """Report 000: cosine annealing from ``lr`` (1e-3) at the first epoch to ``min_lr`` (1e-7) at the last.

    ``lr_g(e) = min_lr + (base_g - min_lr) * (1 + cos(pi * e / (max_epochs - 1))) / 2``
    (after warm-up; ``min_lr`` is the same floor for every param group).
    """

    kind = "cosine"

    def __init__(self, optimizer: torch.optim.Optimizer, max_epochs: int, min_lr: float = 1e-7, **kw: Any) -> None:
        super().__init__(optimizer, max_epochs, **kw)
        self.min_lr = float(min_lr)

    def lrs_at(self, epoch: float) -> List[float]:
        epoch = float(epoch)
        if epoch < self.warmup_epochs:
            return super().lrs_at(epoch)
        span = max(self.max_epochs - self.warmup_epochs - 1, 1)
        t = min(epoch - self.warmup_epochs, span)
        c = 0.5 * (1.0 + math.cos(math.pi * t / span))
        return [self.min_lr + (b - self.min_lr) * c for b in self.base_lrs]

    def _factor(self, t: float, span: float) -> float:  # lrs_at is overridden: the floor is absolute
        raise AssertionError("unused")

    def state_dict(self) -> Dict[str, Any]:
        return dict(super().state_dict(), min_lr=self.min_lr)

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.min_lr = float(state["min_lr"])


class PlateauEMA(EpochSchedule):
    """Report 004: multiply the LR by ``factor`` (0.2) when the EMA of the training loss has not
    improved for ``patience`` (30) epochs.

    After each epoch ``ema = momentum * ema + (1 - momentum) * loss`` (the
    first loss starts it). The EMA improves when it drops below
    ``best * (1 - threshold)``; every ``patience`` epochs without improvement
    the scale is multiplied by ``factor`` (never below ``min_lr``) and the
    count restarts. Warm-up epochs neither count nor reduce.
    """

    kind = "plateau_ema"

    def __init__(self, optimizer: torch.optim.Optimizer, max_epochs: int, patience: int = 30, factor: float = 0.2,
                 momentum: float = 0.9, threshold: float = 1e-4, min_lr: float = 0.0, **kw: Any) -> None:
        super().__init__(optimizer, max_epochs, **kw)
        if patience < 1 or not 0 < factor < 1 or not 0 <= momentum < 1:
            raise ValueError(f"plateau_ema needs patience >= 1, 0 < factor < 1, 0 <= momentum < 1; "
                             f"got {patience}, {factor}, {momentum}")
        self.patience, self.factor_, self.momentum = int(patience), float(factor), float(momentum)
        self.threshold, self.min_lr = float(threshold), float(min_lr)
        self.scale = 1.0
        self.ema: Optional[float] = None
        self.best = math.inf
        self.bad_epochs = 0
        self.reductions: List[int] = []

    def _factor(self, t: float, span: float) -> float:
        return self.scale

    def lrs_at(self, epoch: float) -> List[float]:
        return [max(lr, self.min_lr) if epoch >= self.warmup_epochs else lr for lr in super().lrs_at(epoch)]

    def end_epoch(self, epoch: int, train_loss: Optional[float] = None) -> None:
        if train_loss is None or epoch < self.warmup_epochs:
            return
        loss = float(train_loss)
        if not math.isfinite(loss):
            logger.warning("plateau_ema: epoch %d training loss is %s; not counted", epoch, loss)
            return
        self.ema = loss if self.ema is None else self.momentum * self.ema + (1.0 - self.momentum) * loss
        if self.ema < self.best * (1.0 - self.threshold):
            self.best, self.bad_epochs = self.ema, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs >= self.patience:
            self.scale *= self.factor_
            self.bad_epochs = 0
            self.reductions.append(int(epoch))
            logger.info("plateau_ema: loss EMA flat for %d epochs; LR scale now %.3g (after epoch %d)",
                        self.patience, self.scale, epoch)

    def state_dict(self) -> Dict[str, Any]:
        return dict(super().state_dict(), patience=self.patience, factor=self.factor_, momentum=self.momentum,
                    threshold=self.threshold, min_lr=self.min_lr, scale=self.scale, ema=self.ema,
                    best=self.best, bad_epochs=self.bad_epochs, reductions=list(self.reductions))

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.patience, self.factor_ = int(state["patience"]), float(state["factor"])
        self.momentum, self.threshold = float(state["momentum"]), float(state["threshold"])
        self.min_lr, self.scale = float(state["min_lr"]), float(state["scale"])
        self.ema = None if state["ema"] is None else float(state["ema"])
        self.best, self.bad_epochs = float(state["best"]), int(state["bad_epochs"])
        self.reductions = [int(e) for e in state["reductions"]]


_CLASSES = {"poly": PolyLR, "cosine": CosineLR, "plateau_ema": PlateauEMA, "constant": ConstantLR}


def build_scheduler(optimizer: torch.optim.Optimizer, name: str = "poly", max_epochs: int = 1000,
                    **params: Any) -> EpochSchedule:
    """Schedule by name (see :data:`SCHEDULES`); ``params`` go to its class:

    ``poly``: ``exponent`` (0.9). ``cosine``: ``min_lr`` (1e-7).
    ``plateau_ema``: ``patience`` (30), ``factor`` (0.2), ``momentum`` (0.9),
    ``threshold`` (1e-4), ``min_lr`` (0). All: ``warmup_epochs`` (0),
    ``warmup_start`` (0.01, fraction of the base LR). The base LR is each
    param group's ``lr`` when the schedule is built.
    """
    if name not in _CLASSES:
        raise ValueError(f"unknown LR schedule {name!r} (expected one of {', '.join(SCHEDULES)})")
    try:
        return _CLASSES[name](optimizer, max_epochs, **params)
    except TypeError as exc:
        raise ValueError(f"bad parameters for LR schedule {name!r}: {exc}") from None

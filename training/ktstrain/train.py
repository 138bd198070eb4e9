"""Train one stage of the cascade.

Everything that decides a step is a function of ``(seed, epoch, index)``:
the patch sampler draws patch ``index`` of ``epoch`` from its own RNG and
the augmentation of step ``s`` uses a generator seeded from
``(seed, epoch, s, rank)``. The global generators (Python, NumPy, torch)
are seeded from ``seed`` at the start; with the model, optimiser, scheduler,
scaler and global RNG states in the checkpoint, ``--resume`` continues a
killed run exactly where its last checkpoint left it (tests check the
weights and the whole state, after a SIGKILL too), from the newest readable
checkpoint when the latest one is damaged.
"""
from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from KidneyTumorSegLib.config import StageConfig, to_dict
from KidneyTumorSegLib.engine.device import autocast_dtype, parse_device, resolve_device
from KidneyTumorSegLib.io.jsonfile import write_json
from KidneyTumorSegLib.engine.networks import build_network

from .augment import augment_batch
from .checkpoint import CheckpointManager, capture_rng, restore_rng
from .config import StageTraining
from .data import Case
from .distributed import World, all_mean, barrier, init_world
from .heads import head_targets
from .init_weights import load_init_weights
from .logs import TrainingLog
from .losses import build_training_loss
from .preprocess import preprocess_stage
from .sampler import PatchSampler
from .schedules import build_optimizer, build_scheduler
from .slices import as_slices, training_patch_size
from .splits import fold_cases, get_or_create_splits
from .stage_cache import StageCache
from .validation import validate

log = logging.getLogger(__name__)


def _step_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch) * 10_007 + int(step) * 101 + int(rank)) % (2**63 - 1)


def train_stage(
    cfg: StageTraining,
    cases: Sequence[Case],
    run_dir: Path,
    cache_root: Path,
    fold: Any = 0,
    splits_path: Optional[Path] = None,
    resume: bool = False,
    device: str = "auto",
    overwrite: bool = False,
    workers: int = 1,
    epochs: Optional[int] = None,
    show_progress: bool = True,
    tensorboard: bool = False,
    init: Optional[Path] = None,
    time_budget_s: Optional[float] = None,
) -> Path:
    """Train ``cfg``'s stage on ``cases``; returns the run folder.

    The run folder gets ``config.json``, ``training_log.csv``,
    ``progress.png`` and ``checkpoint_{latest,best,final,epochNNNN}.pt``; each
    checkpoint carries the final ``StageConfig`` (with the training data's
    intensity statistics) that ``export`` writes into the bundle.

    ``init`` (a checkpoint file or a run folder) starts a new run from that
    run's weights with a fresh optimiser and schedule (warm start, fine-tuning);
    the network must have the same architecture. ``resume`` ignores it.

    ``time_budget_s`` fits the run into that much wall-clock time, counted
    from this call (preprocessing included): after each epoch the planned
    epochs become what the remaining time holds at the last epoch's pace
    (:func:`fit_epochs`; at most the configured epochs, never fewer than
    those done), and the learning-rate schedule and the deep-supervision
    weights follow the new total. For a session on a lent machine whose
    time is fixed; it cannot be combined with ``resume``.
    """
    t_start = time.perf_counter()
    _check_budget(time_budget_s, resume)
    world = init_world(device)
    run_dir = Path(run_dir)
    configured = int(epochs or cfg.train.epochs)
    # under torchrun each rank trains on the GPU of its LOCAL_RANK, as init_world chose it
    on_cpu = parse_device(device)[0] == "cpu"
    dev = resolve_device(device if not world.distributed or on_cpu else f"cuda:{world.local_rank}")
    splits_path = Path(splits_path) if splits_path else run_dir.parent / "splits.json"
    part, train_cache, val_cache, stage = _data(cfg, cases, world, splits_path, fold, cache_root, workers)
    r = _Run(cfg, stage, world, dev, run_dir, fold, part, val_cache, n_epochs=configured, configured_epochs=configured,
             budget_s=time_budget_s, t_start=t_start)
    _build(r, init, resume)
    start_epoch = _start_epoch(r, resume, overwrite)
    if world.is_main:
        _open_run_folder(r, splits_path, start_epoch, resume, overwrite, tensorboard)
    sampler, indices = _sampler(r, train_cache)
    _run_epochs(r, sampler, indices, start_epoch, show_progress)
    barrier(world)
    return run_dir


@dataclass
class _Run:
    """One training run's settings and objects, as its steps below build and use them."""

    cfg: StageTraining
    stage: StageConfig  # the configuration's, with the training data's statistics when z-scored
    world: World
    dev: torch.device
    run_dir: Path
    fold: Any
    part: Dict[str, List[str]]  # the fold's train / val case ids
    val_cache: Optional[StageCache]
    n_epochs: int  # planned; a time budget may change it after each epoch
    configured_epochs: int
    budget_s: Optional[float] = None
    t_start: float = 0.0
    model: Optional[torch.nn.Module] = None
    net: Optional[torch.nn.Module] = None  # what runs the forward pass: the DDP wrapper when distributed
    opt: Any = None
    sched: Any = None
    scaler: Any = None
    loss_fn: Any = None
    amp: Optional[torch.dtype] = None
    ckpt: Optional[CheckpointManager] = None
    init_from: Optional[str] = None
    best: float = -math.inf
    tlog: Optional[TrainingLog] = None


def _check_budget(time_budget_s: Optional[float], resume: bool) -> None:
    if time_budget_s is not None:
        if time_budget_s <= 0:
            raise ValueError(f"time budget must be positive, got {time_budget_s} s")
        if resume:
            raise ValueError("a time budget cannot be combined with --resume: the resumed run keeps the epochs "
                             "its checkpoints planned")


def _data(cfg: StageTraining, cases: Sequence[Case], world: World, splits_path: Path, fold: Any, cache_root: Path,
          workers: int) -> Tuple[Dict[str, List[str]], StageCache, Optional[StageCache], StageConfig]:
    """The fold's cases, its train and validation caches, and the stage with the training data's statistics.

    The main rank writes the split file and the cache first, so the others only read them.
    """
    ts = cfg.train
    ids = [c.case_id for c in cases]
    if world.is_main:
        folds = get_or_create_splits(splits_path, ids, n_folds=ts.n_folds, seed=ts.seed, fit=fold == "all")
    barrier(world)
    if not world.is_main:
        folds = get_or_create_splits(splits_path, ids, n_folds=ts.n_folds, seed=ts.seed, fit=fold == "all")
    part = fold_cases(folds, fold)

    # preprocessing (main rank first, so the others only read the cache)
    if world.is_main:
        pre = preprocess_stage(cases, cfg.stage, cache_root, cfg.preprocess, workers=workers)
    barrier(world)
    if not world.is_main:
        pre = preprocess_stage(cases, cfg.stage, cache_root, cfg.preprocess, workers=1)
    train_cache = StageCache(pre.cache_dir, part["train"])
    val_cache = StageCache(pre.cache_dir, part["val"]) if part["val"] else None
    stats = train_cache.intensity_statistics(cfg.stage.window)
    stage = stats.apply(cfg.stage) if cfg.stage.normalization == "zscore" else cfg.stage
    return part, train_cache, val_cache, stage


def _build(r: _Run, init: Optional[Path], resume: bool) -> None:
    """The network (seeded; ``init``'s weights unless resuming), optimiser, schedule, scaler, loss, checkpoints."""
    ts, dev, stage = r.cfg.train, r.dev, r.stage
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed patch sizes: let cuDNN pick the fastest kernels
    seed_everything(ts.seed)
    model = build_network(stage.network).to(dev)
    if init is not None and not resume:
        r.init_from = load_init_weights(model, init)
        log.info("initialised %s from %s", stage.name, r.init_from)
    if ts.channels_last and stage.network.spatial_dims == 3:
        model = model.to(memory_format=torch.channels_last_3d)
    r.model = r.net = model
    r.opt = build_optimizer(model, ts.optimizer, lr=ts.lr, weight_decay=ts.weight_decay, momentum=ts.momentum,
                            nesterov=ts.nesterov)
    r.sched = build_scheduler(r.opt, ts.scheduler, max_epochs=r.n_epochs, **ts.scheduler_params)
    r.amp = autocast_dtype(dev, ts.precision)
    r.scaler = torch.amp.GradScaler("cuda", enabled=r.amp == torch.float16)
    r.loss_fn = build_training_loss(ts.loss, ts.loss_params, ds_decay=ts.ds_decay, downsample=ts.ds_downsample)
    r.ckpt = CheckpointManager(r.run_dir, keep_last=ts.keep_last, every=ts.checkpoint_every)


def _start_epoch(r: _Run, resume: bool, overwrite: bool) -> int:
    """The first epoch to train (after the checkpoint resumed from, else 0); wraps the model for DDP.

    A run folder that has checkpoints is refused unless ``resume`` or ``overwrite``.
    """
    start_epoch = 0
    if resume:
        start_epoch, r.best = resume_from(r.ckpt, r.model, r.opt, r.sched, r.scaler, discard=r.world.is_main)
    elif r.world.is_main and r.ckpt.latest() is not None and not overwrite:
        raise FileExistsError(f"output exists: {r.run_dir} has checkpoints (use --resume to continue, --overwrite to start over)")
    if r.world.distributed:
        r.net = torch.nn.parallel.DistributedDataParallel(
            r.model, device_ids=[r.dev.index] if r.dev.type == "cuda" else None)
    return start_epoch


def _open_run_folder(r: _Run, splits_path: Path, start_epoch: int, resume: bool, overwrite: bool,
                     tensorboard: bool) -> None:
    """Main rank: the run folder with ``config.json`` (the final stage, the fold's cases) and the training log."""
    r.run_dir.mkdir(parents=True, exist_ok=True)
    write_json(dict(r.cfg.to_dict(), final_stage=to_dict(r.stage), fold=r.fold, splits=str(splits_path),
                    train_cases=r.part["train"], val_cases=r.part["val"], init_from=r.init_from),
               r.run_dir / "config.json", overwrite=True)
    r.tlog = TrainingLog(r.run_dir, resume_epoch=start_epoch - 1 if resume else None, overwrite=overwrite,
                         tensorboard=tensorboard)


def _sampler(r: _Run, train_cache: StageCache) -> Tuple[PatchSampler, List[int]]:
    """The patch sampler of all ranks' patches of an epoch, and the indices of this rank's."""
    ts, world = r.cfg.train, r.world
    per_rank = ts.iterations_per_epoch * ts.batch_size
    sampler = PatchSampler(train_cache, r.stage, samples_per_epoch=per_rank * world.size,
                           patch_size=training_patch_size(r.stage), fg_fraction=ts.fg_fraction,
                           hard_negative_fraction=ts.hard_negative_fraction, tumor_fraction=ts.tumor_fraction,
                           seed=ts.seed)
    return sampler, list(range(world.rank, per_rank * world.size, world.size))


def _run_epochs(r: _Run, sampler: PatchSampler, indices: List[int], start_epoch: int, show_progress: bool) -> None:
    """The epochs from ``start_epoch`` to the planned end: training, re-planning, validation, checkpoints."""
    for epoch in range(start_epoch, r.n_epochs):
        if epoch >= r.n_epochs:  # a time budget shortened the plan (the range was fixed at the start)
            break
        t0 = time.perf_counter()
        sampler.set_epoch(epoch)
        lr = r.sched.start_epoch(epoch)
        r.loss_fn.set_epoch(epoch, r.n_epochs)
        train_loss = _train_epoch(r, sampler, indices, epoch, show_progress)
        r.sched.end_epoch(epoch, train_loss)
        if r.budget_s is not None:
            _replan(r, epoch, start_epoch, t0)
        last = epoch == r.n_epochs - 1
        if not r.world.is_main:
            continue
        _end_epoch(r, epoch, lr, train_loss, last, t0)


def _train_epoch(r: _Run, sampler: PatchSampler, indices: List[int], epoch: int, show_progress: bool) -> float:
    """One epoch's optimiser steps on this rank's patches; returns the mean loss over steps and ranks."""
    ts, dev = r.cfg.train, r.dev
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(sampler, indices), batch_size=ts.batch_size,
                                         shuffle=False, num_workers=ts.num_workers,
                                         pin_memory=dev.type == "cuda", drop_last=True)
    r.net.train()
    losses = []
    bar = _bar(show_progress and r.world.is_main, len(loader), f"{r.stage.name} epoch {epoch + 1}/{r.n_epochs}")
    for step, batch in enumerate(loader):
        img = batch["image"].to(dev, non_blocking=True)
        lab = batch["label"].to(dev, non_blocking=True).long()
        gen = torch.Generator(device=dev)
        gen.manual_seed(_step_seed(ts.seed, epoch, step, r.world.rank))
        img, lab = augment_batch(img, lab, r.cfg.augment, generator=gen, spacing=r.stage.spacing)
        img, lab = as_slices(img, lab, r.stage)
        if ts.channels_last and img.dim() == 5:
            img = img.contiguous(memory_format=torch.channels_last_3d)
        targets = head_targets(lab, r.stage.network.heads, r.stage.role) if r.stage.network.heads else None
        loss = training_step(r.net, r.model, img, lab, r.opt, r.scaler, r.loss_fn, r.amp, ts.grad_clip, targets)
        losses.append(float(loss.detach()))
        if bar is not None:
            bar.set_postfix(loss=f"{np.mean(losses):.4f}")
            bar.update(1)
    if bar is not None:
        bar.close()
    return all_mean(float(np.mean(losses)) if losses else float("nan"), r.world, dev)


def _replan(r: _Run, epoch: int, start_epoch: int, t0: float) -> None:
    """Fit the planned epochs (and the schedule's end) into the time budget at this epoch's pace."""
    # every rank plans from the same (averaged) figures, so all stop after the same epoch
    pace = all_mean(time.perf_counter() - t0, r.world, r.dev)
    left = r.budget_s - all_mean(time.perf_counter() - r.t_start, r.world, r.dev)
    # the first epoch (cuDNN autotuning, loader start-up) may only shorten the plan; the second,
    # the first at the run's real pace, may also lengthen it back up to the configuration's
    ceiling = r.n_epochs if epoch != start_epoch + 1 else r.configured_epochs
    planned = fit_epochs(epoch, pace, left, ceiling, r.sched.warmup_epochs)
    if planned != r.n_epochs:
        log.info("%s: time budget %.0f s, %.0f s left at %.1f s an epoch: %d epochs planned (was %d)",
                 r.stage.name, r.budget_s, left, pace, planned, r.n_epochs)
        r.n_epochs = planned
        r.sched.max_epochs = r.n_epochs


def _end_epoch(r: _Run, epoch: int, lr: float, train_loss: float, last: bool, t0: float) -> None:
    """Main rank: validation when due, the log row, and the checkpoints due."""
    ts = r.cfg.train
    row: Dict[str, Any] = {"lr": lr, "train_loss": train_loss}
    is_best = False
    if r.val_cache is not None and ((epoch + 1) % ts.val_every == 0 or last):
        scores = validate(r.model, r.val_cache, r.stage, str(r.dev), ts.val_overlap)
        row.update(scores)
        metric = next(iter(scores.values()), -math.inf)
        if metric > r.best:
            r.best, is_best = metric, True
    row["seconds"] = round(time.perf_counter() - t0, 2)
    r.tlog.append(epoch, **row)
    log.info("%s epoch %d: %s", r.stage.name, epoch, ", ".join(f"{k} {v:.4g}" for k, v in row.items()))
    if (epoch + 1) % ts.checkpoint_every == 0 or last or is_best:
        state = {"model": r.model.state_dict(), "optimizer": r.opt.state_dict(), "scheduler": r.sched.state_dict(),
                 "scaler": r.scaler.state_dict(), "rng": capture_rng(), "best": r.best, "stage": to_dict(r.stage),
                 "config": r.cfg.to_dict(), "fold": str(r.fold),
                 "val": {k: v for k, v in row.items() if k.endswith("dice")},
                 "train_cases": list(r.part["train"]), "val_cases": list(r.part["val"]), "epochs": r.n_epochs,
                 "init_from": r.init_from}
        r.ckpt.save(state, epoch, is_best=is_best, final=last)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators, so that a run starts from the same random state
    whatever its process drew before (and a resumed run, which restores the states its checkpoint saved,
    goes on as the uninterrupted run would)."""
    random.seed(int(seed))
    np.random.seed(int(seed) % 2**32)
    torch.manual_seed(int(seed))


def resume_from(ckpt: CheckpointManager, model, opt, sched, scaler, discard: bool = True) -> Tuple[int, float]:
    """Load the run's checkpoint to resume from (:meth:`CheckpointManager.resume_state`: the latest, or the
    newest readable earlier one) into the training objects and the global generators; returns the epoch to
    start at and the best metric so far. ``discard``: delete the epoch checkpoints after it (main rank)."""
    path, state = ckpt.resume_state(map_location="cpu")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    restore_rng(state["rng"])
    done = int(state["epoch"])
    log.info("resuming %s after epoch %d (%s)", ckpt.folder, done, path.name)
    if discard:
        ckpt.discard_after(done)
    return done + 1, float(state.get("best", -math.inf))


def fit_epochs(epoch: int, pace_s: float, left_s: float, ceiling: int, warmup_epochs: int = 0) -> int:
    """Epochs in all once ``epoch`` (0-based) is done, with ``left_s`` seconds left at ``pace_s`` an epoch.

    As many more epochs as fit whole into the time left, at most ``ceiling``
    in all and never fewer than those done; more than ``warmup_epochs`` when
    the schedule has a warm-up, so the schedule stays valid.
    """
    more = int(max(left_s, 0.0) // max(pace_s, 1e-9))
    return max(epoch + 1, warmup_epochs + 1, min(int(ceiling), epoch + 1 + more))


def training_step(net, model, img, lab, opt, scaler, loss_fn, amp, grad_clip: float,
                  head_targets=None) -> torch.Tensor:
    """One optimiser step (autocast forward, float32 loss, scaled backward, clipping); returns the loss.

    ``net`` is what runs the forward pass (the DDP wrapper when distributed),
    ``model`` the bare module whose gradients are clipped; ``head_targets``:
    the targets of a network's extra heads (:mod:`.heads`).
    """
    opt.zero_grad(set_to_none=True)
    with torch.autocast(img.device.type, dtype=amp, enabled=amp is not None):
        out = net(img)
    loss = loss_fn(_float(out), lab, head_targets)
    scaler.scale(loss).backward()
    if grad_clip:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(opt)
    scaler.update()
    return loss


def _float(out):
    """Network outputs in float32 for the loss (autocast may give bf16)."""
    if isinstance(out, torch.Tensor):
        return out.float()
    if isinstance(out, (list, tuple)):
        return type(out)(_float(o) for o in out)
    if isinstance(out, dict):
        return {k: _float(v) for k, v in out.items()}
    return out


def _bar(enabled: bool, total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True) if enabled else None

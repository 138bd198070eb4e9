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
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from KidneyTumorSegLib.config import RuntimeConfig, to_dict
from KidneyTumorSegLib.device import autocast_dtype, resolve_device
from KidneyTumorSegLib.inference import NetworkPredictor
from KidneyTumorSegLib.networks import build_network

from .augment import augment_batch
from .checkpoint import CheckpointManager, capture_rng, load_checkpoint, restore_rng
from .config import StageTraining
from .data import Case
from .distributed import all_mean, barrier, init_world
from .logs import TrainingLog
from .losses import build_training_loss
from .preprocess import StageCache, preprocess_stage
from .sampler import PatchSampler, stage_target
from .schedules import build_optimizer, build_scheduler
from .splits import fold_cases, get_or_create_splits

log = logging.getLogger(__name__)


def _step_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch) * 10_007 + int(step) * 101 + int(rank)) % (2**63 - 1)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * float(np.logical_and(a, b).sum()) / s


def validate(model: torch.nn.Module, cache: StageCache, stage, device: str, overlap: float = 0.25) -> Dict[str, float]:
    """Stage Dice on whole validation items with the real inference engine (no TTA).

    The roi and kidney stages report kidney Dice (label > 0), the tumor
    stage tumor Dice (label 2), as the KiTS19 metrics define them.
    """
    was_training = model.training
    model.eval()
    runtime = RuntimeConfig(device=device, tta=1, overlap=overlap, sw_batch_size=2)
    predictor = NetworkPredictor(stage, [model], runtime)
    scores: List[float] = []
    try:
        for item in cache.items:
            probs = predictor.predict(np.asarray(item.image()))
            pred = stage.foreground(probs) >= stage.threshold
            scores.append(_dice(pred, stage_target(np.asarray(item.label()), stage) > 0))
    finally:
        model.train(was_training)
    name = "tumor_dice" if stage.role == "tumor" else "kidney_dice"
    return {name: float(np.mean(scores))} if scores else {}


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
    if time_budget_s is not None:
        if time_budget_s <= 0:
            raise ValueError(f"time budget must be positive, got {time_budget_s} s")
        if resume:
            raise ValueError("a time budget cannot be combined with --resume: the resumed run keeps the epochs "
                             "its checkpoints planned")
    world = init_world(device)
    run_dir = Path(run_dir)
    ts = cfg.train
    n_epochs = int(epochs or ts.epochs)
    dev = resolve_device(device if not world.distributed or device == "cpu" else f"cuda:{world.local_rank}")
    ids = [c.case_id for c in cases]
    splits_path = Path(splits_path) if splits_path else run_dir.parent / "splits.json"
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

    # model, optimisation
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed patch sizes: let cuDNN pick the fastest kernels
    seed_everything(ts.seed)
    model = build_network(stage.network).to(dev)
    init_from = None
    if init is not None and not resume:
        init_from = load_init_weights(model, init)
        log.info("initialised %s from %s", stage.name, init_from)
    if ts.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    opt = build_optimizer(model, ts.optimizer, lr=ts.lr, weight_decay=ts.weight_decay, momentum=ts.momentum,
                          nesterov=ts.nesterov)
    sched = build_scheduler(opt, ts.scheduler, max_epochs=n_epochs, **ts.scheduler_params)
    amp = autocast_dtype(dev, ts.precision)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    loss_fn = build_training_loss(ts.loss, ts.loss_params, ds_decay=ts.ds_decay, downsample=ts.ds_downsample)
    ckpt = CheckpointManager(run_dir, keep_last=ts.keep_last, every=ts.checkpoint_every)

    start_epoch, best = 0, -math.inf
    if resume:
        start_epoch, best = resume_from(ckpt, model, opt, sched, scaler, discard=world.is_main)
    elif world.is_main and ckpt.latest() is not None and not overwrite:
        raise FileExistsError(f"output exists: {run_dir} has checkpoints (use --resume to continue, --overwrite to start over)")
    net = model
    if world.distributed:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)

    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        from KidneyTumorSegLib.jsonfile import write_json

        write_json(dict(cfg.to_dict(), final_stage=to_dict(stage), fold=fold, splits=str(splits_path),
                        train_cases=part["train"], val_cases=part["val"], init_from=init_from),
                   run_dir / "config.json", overwrite=True)
        tlog = TrainingLog(run_dir, resume_epoch=start_epoch - 1 if resume else None, overwrite=overwrite,
                           tensorboard=tensorboard)

    per_rank = ts.iterations_per_epoch * ts.batch_size
    sampler = PatchSampler(train_cache, stage, samples_per_epoch=per_rank * world.size, fg_fraction=ts.fg_fraction,
                           hard_negative_fraction=ts.hard_negative_fraction, tumor_fraction=ts.tumor_fraction,
                           seed=ts.seed)
    indices = list(range(world.rank, per_rank * world.size, world.size))
    spacing = stage.spacing
    for epoch in range(start_epoch, n_epochs):
        if epoch >= n_epochs:  # a time budget shortened the plan (the range was fixed at the start)
            break
        t0 = time.perf_counter()
        sampler.set_epoch(epoch)
        lr = sched.start_epoch(epoch)
        loss_fn.set_epoch(epoch, n_epochs)
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(sampler, indices), batch_size=ts.batch_size,
                                             shuffle=False, num_workers=ts.num_workers,
                                             pin_memory=dev.type == "cuda", drop_last=True)
        net.train()
        losses = []
        bar = _bar(show_progress and world.is_main, len(loader), f"{stage.name} epoch {epoch + 1}/{n_epochs}")
        for step, batch in enumerate(loader):
            img = batch["image"].to(dev, non_blocking=True)
            lab = batch["label"].to(dev, non_blocking=True).long()
            gen = torch.Generator(device=dev)
            gen.manual_seed(_step_seed(ts.seed, epoch, step, world.rank))
            img, lab = augment_batch(img, lab, cfg.augment, generator=gen, spacing=spacing)
            if ts.channels_last:
                img = img.contiguous(memory_format=torch.channels_last_3d)
            loss = training_step(net, model, img, lab, opt, scaler, loss_fn, amp, ts.grad_clip)
            losses.append(float(loss.detach()))
            if bar is not None:
                bar.set_postfix(loss=f"{np.mean(losses):.4f}")
                bar.update(1)
        if bar is not None:
            bar.close()
        train_loss = all_mean(float(np.mean(losses)) if losses else float("nan"), world, dev)
        sched.end_epoch(epoch, train_loss)
        if time_budget_s is not None:
            # every rank plans from the same (averaged) figures, so all stop after the same epoch
            pace = all_mean(time.perf_counter() - t0, world, dev)
            left = time_budget_s - all_mean(time.perf_counter() - t_start, world, dev)
            # the first epoch (cuDNN autotuning, loader start-up) may only shorten the plan; the second,
            # the first at the run's real pace, may also lengthen it back up to the configuration's
            ceiling = n_epochs if epoch != start_epoch + 1 else int(epochs or ts.epochs)
            planned = fit_epochs(epoch, pace, left, ceiling, sched.warmup_epochs)
            if planned != n_epochs:
                log.info("%s: time budget %.0f s, %.0f s left at %.1f s an epoch: %d epochs planned (was %d)",
                         stage.name, time_budget_s, left, pace, planned, n_epochs)
                n_epochs = planned
                sched.max_epochs = n_epochs
        last = epoch == n_epochs - 1
        if not world.is_main:
            continue
        row: Dict[str, Any] = {"lr": lr, "train_loss": train_loss}
        is_best = False
        if val_cache is not None and ((epoch + 1) % ts.val_every == 0 or last):
            scores = validate(model, val_cache, stage, str(dev), ts.val_overlap)
            row.update(scores)
            metric = next(iter(scores.values()), -math.inf)
            if metric > best:
                best, is_best = metric, True
        row["seconds"] = round(time.perf_counter() - t0, 2)
        tlog.append(epoch, **row)
        log.info("%s epoch %d: %s", stage.name, epoch, ", ".join(f"{k} {v:.4g}" for k, v in row.items()))
        if (epoch + 1) % ts.checkpoint_every == 0 or last or is_best:
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                     "scaler": scaler.state_dict(), "rng": capture_rng(), "best": best, "stage": to_dict(stage),
                     "config": cfg.to_dict(), "fold": str(fold), "val": {k: v for k, v in row.items() if k.endswith("dice")},
                     "train_cases": list(part["train"]), "val_cases": list(part["val"]), "epochs": n_epochs,
                     "init_from": init_from}
            ckpt.save(state, epoch, is_best=is_best, final=last)
    barrier(world)
    return run_dir


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


def load_init_weights(model: torch.nn.Module, init) -> str:
    """Copy the weights of a checkpoint (file, or run folder: its final, else latest) or of a bundle's
    ``.safetensors`` weight file into ``model``.

    Returns the checkpoint's path. A different architecture is refused with
    the names of the first mismatching tensors.
    """
    path = Path(init)
    if path.is_file() and path.suffix == ".safetensors":
        # a model bundle's weight file (e.g. the shipped default model's kidney_0.safetensors)
        from safetensors.torch import load_file

        weights = load_file(str(path), device="cpu")
        return _copy_weights(model, weights, path)
    if path.is_dir():
        found = [path / n for n in ("checkpoint_final.pt", "checkpoint_latest.pt") if (path / n).is_file()]
        if not found:
            raise FileNotFoundError(f"--init: no checkpoint_final.pt or checkpoint_latest.pt in {path}")
        path = found[0]
    elif not path.is_file():
        raise FileNotFoundError(f"--init: checkpoint not found: {path}")
    return _copy_weights(model, load_checkpoint(path, map_location="cpu")["model"], path)


def _copy_weights(model: torch.nn.Module, weights: Dict[str, Any], path: Path) -> str:
    own = model.state_dict()
    weights = dict(weights)
    for k in own:
        if k in weights and _widened_head(k, tuple(weights[k].shape), tuple(own[k].shape)):
            # a two-class stage (background, kidney+tumor) into a three-class one (background, kidney,
            # tumor): the new classes start as copies of the old last class, so the foreground (their sum)
            # starts near the old model's (a little above it: the copies share the softmax with background)
            w = weights[k]
            extra = w[-1:].repeat((own[k].shape[0] - w.shape[0],) + (1,) * (w.dim() - 1))
            weights[k] = torch.cat([w, extra], dim=0)
            log.info("--init: %s widened from %d to %d classes", k, w.shape[0], own[k].shape[0])
    bad = sorted(k for k in set(own) | set(weights)
                 if k not in own or k not in weights or tuple(own[k].shape) != tuple(weights[k].shape))
    if bad:
        raise ValueError(f"--init: {path} has a different network ({len(bad)} mismatching tensors, first: "
                         f"{', '.join(bad[:3])})")
    model.load_state_dict(weights)
    return str(path)


def _widened_head(name: str, old: Tuple[int, ...], new: Tuple[int, ...]) -> bool:
    """Whether tensor ``name`` is a segmentation head's weight or bias with more output classes than before."""
    return (name.startswith("seg_heads.") and len(old) == len(new) and old[1:] == new[1:]
            and 2 <= old[0] < new[0])


def training_step(net, model, img, lab, opt, scaler, loss_fn, amp, grad_clip: float) -> torch.Tensor:
    """One optimiser step (autocast forward, float32 loss, scaled backward, clipping); returns the loss.

    ``net`` is what runs the forward pass (the DDP wrapper when distributed),
    ``model`` the bare module whose gradients are clipped.
    """
    opt.zero_grad(set_to_none=True)
    with torch.autocast(img.device.type, dtype=amp, enabled=amp is not None):
        out = net(img)
    loss = loss_fn(_float(out), lab)
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
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)

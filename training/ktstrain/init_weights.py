"""Warm starts (``--init``): a new run's network from another run's checkpoint or a bundle's weight file.

A two-class stage's head loads into a three-class network of the same
architecture (its last class copied); any other difference is refused.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Tuple

import torch

from .checkpoint import load_checkpoint

# the messages keep the logger name they had when this code was part of train.py
log = logging.getLogger("ktstrain.train")


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

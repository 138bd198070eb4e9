"""What the test_train_* files share: tiny synthetic KiTS cases and their stage caches, tiny training
configurations and the phantom runs made with them, and a tiny model for optimisers and checkpoints.

The fixtures built from them (data_root, caches, phantoms, runs) are in this folder's conftest.py, built
once a session as when these files were one module.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from KidneyTumorSegLib.config import StageConfig
from ktstrain.config import parse_config
from ktstrain.preprocess import PreprocessOptions

# --------------------------------------------------------------------------
# synthetic KiTS cases and their stage caches (data, preprocess, sampler)
# --------------------------------------------------------------------------
SHAPE = (24, 48, 48)  # (k, j, i)
SPACING_ZYX = (3.0, 1.5, 1.5)
# KiTS19 stores the slice axis first in i order: columns of the direction are the index axes' world axes
KITS_DIRECTION = (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0)


def _ball(shape, spacing_zyx, centre_mm, r_mm):
    k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return ((k * spacing_zyx[0] - centre_mm[0]) ** 2 + (j * spacing_zyx[1] - centre_mm[1]) ** 2
            + (i * spacing_zyx[2] - centre_mm[2]) ** 2) <= r_mm ** 2


def make_case(seed: int, cyst: bool = True):
    """Canonical-grid image (int16 HU) and raw label: two kidneys, a tumor, optionally a cyst (label 3)."""
    rng = np.random.default_rng(seed)
    img = np.full(SHAPE, -1000, np.int16)
    lab = np.zeros(SHAPE, np.uint8)
    ext = np.array(SHAPE) * np.array(SPACING_ZYX)
    body = _ball(SHAPE, SPACING_ZYX, ext / 2, 34.0)
    img[body] = 40
    cz, cy = ext[0] / 2 + rng.uniform(-3, 3), ext[1] / 2 + rng.uniform(-3, 3)
    for x in (ext[2] * 0.3, ext[2] * 0.7):
        lab[_ball(SHAPE, SPACING_ZYX, (cz, cy, x), 9.0)] = 1
    lab[_ball(SHAPE, SPACING_ZYX, (cz + 3, cy, ext[2] * 0.7 + 5), 4.0)] = 2
    if cyst:
        lab[_ball(SHAPE, SPACING_ZYX, (cz - 3, cy, ext[2] * 0.3 - 6), 3.5)] = 3
    img[lab == 1] = 180
    img[lab == 2] = 70
    img[lab == 3] = 10
    img = (img + rng.normal(0, 8, SHAPE) * body).astype(np.int16)
    return img, lab


def write_case(folder: Path, img: np.ndarray, lab: np.ndarray, kits19_axes: bool = False,
               label_name: str = "segmentation.nii.gz") -> None:
    """Write a KiTS case folder; ``kits19_axes`` stores the arrays with KiTS19's swapped axes."""
    folder.mkdir(parents=True, exist_ok=True)
    sp = SPACING_ZYX[::-1]
    direction = (1, 0, 0, 0, 1, 0, 0, 0, 1)
    if kits19_axes:
        img, lab = np.ascontiguousarray(img.transpose(2, 1, 0)), np.ascontiguousarray(lab.transpose(2, 1, 0))
        sp, direction = SPACING_ZYX, KITS_DIRECTION
    for arr, name in ((img, "imaging.nii.gz"), (lab, label_name)):
        im = sitk.GetImageFromArray(arr)
        im.SetSpacing(sp)
        im.SetOrigin((-30.0, 20.0, 100.0))
        im.SetDirection(direction)
        sitk.WriteImage(im, str(folder / name), True)


def stages():
    return {
        "roi": StageConfig("coarse", "roi", spacing=(4.5, 4.5, 4.5), patch_size=(16, 16, 16),
                           normalization="zscore", norm_mean=-300.0, norm_std=500.0),
        "kidney": StageConfig("kidney", "kidney", spacing=(3.0, 2.0, 2.0), patch_size=(16, 24, 24), margin_mm=6.0),
        "tumor": StageConfig("tumor", "tumor", spacing=(2.0, 1.2, 1.2), patch_size=(16, 24, 24), margin_mm=6.0,
                             mask_outside=True, mask_value=-1024.0, mask_dilation_mm=2.0, norm_std=300.0),
    }


OPTS = PreprocessOptions(kidney_extra_margin_mm=10.0, min_kidney_ml=1.0, locations_per_class=500, intensity_samples=2000)


# --------------------------------------------------------------------------
# tiny training runs on phantoms (run, export)
# --------------------------------------------------------------------------
TINY_NET = {"channels": [4, 8, 16], "strides": [1, 2, 2], "deep_supervision": True, "deep_supervision_levels": 1}
TRAIN = {"epochs": 4, "iterations_per_epoch": 3, "batch_size": 2, "num_workers": 0, "val_every": 2,
         "checkpoint_every": 1, "lr": 3e-3, "n_folds": 2}


def tiny_config(role, **train):
    stage = {"network": TINY_NET, "patch_size": [16, 32, 32]}
    stage["spacing"] = {"roi": [8.0, 8.0, 8.0], "kidney": [6.0, 4.0, 4.0], "tumor": [5.0, 3.0, 3.0]}[role]
    return parse_config({"role": role, "stage": stage, "train": dict(TRAIN, **train),
                         "augment": {"p_rotation": 0.3, "p_scale": 0.3}})


def train_log(run):
    import csv

    with open(run / "training_log.csv") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------
# a tiny model (schedules, checkpoint)
# --------------------------------------------------------------------------
def tiny_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3), torch.nn.InstanceNorm3d(2, affine=True))

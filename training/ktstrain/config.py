"""One training configuration file per stage (JSON).

::

    {
      "role": "kidney",                     # roi | kidney | tumor | kidney_alone
      "stage": {"spacing": [3.22, 1.62, 1.62], "network": {"channels": [16, 32, 64, 128, 256]}},
      "train": {"epochs": 300, "batch_size": 2, "loss": "dice_ce", ...},
      "augment": {"p_rotation": 0.2, ...},
      "preprocess": {"kidney_extra_margin_mm": 30},
      "label_map": {"mapping": {"0": 0, "1": 1, "2": 2, "3": 0}, "cyst_labels": [3]}
    }

``stage`` overrides the core's default stage of that role
(``KidneyTumorSegLib.presets``) field by field (``network`` too), so a
configuration states only what differs; the result is the core's own
``StageConfig`` that the exported bundle carries.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Dict, Optional

from KidneyTumorSegLib.config import StageConfig, from_dict, to_dict
from KidneyTumorSegLib.io.jsonfile import read_json
from KidneyTumorSegLib.presets import default_stages

from .augment import AugmentConfig
from .cache_keys import PreprocessOptions
from .data import LabelMap


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings of one stage (see ``losses``, ``schedules``)."""

    epochs: int = 300
    iterations_per_epoch: int = 250
    batch_size: int = 2
    num_workers: int = 2
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.99
    nesterov: bool = True
    scheduler: str = "poly"
    scheduler_params: Dict[str, Any] = field(default_factory=dict)
    loss: str = "dice_ce"
    loss_params: Dict[str, Any] = field(default_factory=dict)
    ds_decay: Optional[Dict[str, Any]] = None
    ds_downsample: str = "nearest"
    grad_clip: float = 12.0
    fg_fraction: float = 0.33
    hard_negative_fraction: float = 0.1
    tumor_fraction: float = 0.0  # extra patches centred on tumor (kidney stage: exophytic tumors are its misses)
    val_every: int = 10
    checkpoint_every: int = 10
    keep_last: int = 3
    seed: int = 0
    precision: str = "auto"
    n_folds: int = 5
    val_overlap: float = 0.25
    channels_last: bool = False  # channels_last_3d memory format: ~1.7x faster 3D convolutions on CPU (benchmarks/)


@dataclass(frozen=True)
class StageTraining:
    stage: StageConfig
    train: TrainSettings
    augment: AugmentConfig
    preprocess: PreprocessOptions
    label_map: LabelMap
    source: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "role": self.stage.role,
            "stage": to_dict(self.stage),
            "train": to_dict(self.train),
            "augment": self.augment.to_dict(),
            # the label map is a top-level key of a configuration (the cache key keeps it in preprocess)
            "preprocess": {k: v for k, v in self.preprocess.to_dict().items() if k != "label_map"},
            "label_map": self.label_map.to_dict(),
        }


def merge_stage(base: StageConfig, over: Dict[str, Any]) -> StageConfig:
    """``base`` with the fields of ``over`` (``network`` field by field)."""
    over = dict(over)
    net = over.pop("network", None)
    merged = to_dict(base)
    if net:
        merged["network"] = dict(merged["network"], **net)
    merged.update(over)
    return from_dict(StageConfig, merged)


def parse_config(data: Dict[str, Any]) -> StageTraining:
    """Validate and complete a configuration dict (unknown keys are errors)."""
    known = {"role", "stage", "train", "augment", "preprocess", "label_map", "comment"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown configuration key(s): {', '.join(unknown)}")
    role = data.get("role")
    presets = {s.role: s for s in default_stages()}
    # report 003's K networks: the kidney stage's setting, the kidney alone as foreground
    presets["kidney_alone"] = replace(presets["kidney"], name="kidney_alone", role="kidney_alone",
                                      labels=("background", "kidney"))
    if role not in presets:
        raise ValueError(f"configuration role must be one of {sorted(presets)}, got {role!r}")
    stage = merge_stage(presets[role], data.get("stage", {}))
    train = from_dict(TrainSettings, data.get("train", {}))
    augment = AugmentConfig.from_dict(data.get("augment", {}))
    pre = data.get("preprocess", {})
    pre_names = {f.name for f in fields(PreprocessOptions)} - {"label_map"}
    bad = sorted(set(pre) - pre_names)
    if bad:
        raise ValueError(f"unknown preprocess option(s): {', '.join(bad)}")
    label_map = LabelMap.from_dict(data.get("label_map"))
    options = PreprocessOptions(**dict(pre, label_map=label_map))
    return StageTraining(stage, train, augment, options, label_map, source=dict(data))


def load_config(path) -> StageTraining:
    path = Path(path)
    data = read_json(path, "configuration file")
    try:
        return parse_config(data)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: {exc}") from exc

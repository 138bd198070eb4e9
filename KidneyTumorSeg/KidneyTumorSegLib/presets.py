"""The default cascade configuration (report 000's stages, report 004's network).

Spacings are ``(z, y, x)`` mm. Stage 1 works at report 000's 3.4 mm
isotropic with HU clipped to [-1024, 1500]; stage 2 at report 004's
3.22 x 1.62 x 1.62 mm; stage 3 finer in-plane, on one kidney's crop with the
outside masked to -1024 HU. The normalisation statistics here are
placeholders that training replaces with the training data's own.

Also the run presets the Slicer panel offers (:class:`Quality`, :class:`TumorGrowth`): each choice
and what it means for a run, defined here once for the panel, scripts and the command line.
"""
from __future__ import annotations

import enum
from typing import List, Optional

from .config import NetworkConfig, PostprocessConfig, StageConfig

DEFAULT_NETWORK = NetworkConfig(
    architecture="resunet",
    channels=(16, 32, 64, 128, 256),
    strides=(1, 2, 2, 2, 2),
    deep_supervision=True,
    deep_supervision_levels=2,
)


def default_stages(network: NetworkConfig = DEFAULT_NETWORK) -> List[StageConfig]:
    return [
        StageConfig(
            name="coarse", role="roi", network=network, spacing=(3.4, 3.4, 3.4), window=(-1024.0, 1500.0),
            normalization="zscore", norm_mean=-300.0, norm_std=500.0, patch_size=(96, 96, 96),
            labels=("background", "kidney+tumor"), margin_mm=20.0, keep_components=2, min_component_ml=5.0,
        ),
        StageConfig(
            name="kidney", role="kidney", network=network, spacing=(3.22, 1.62, 1.62), window=(-1024.0, 1500.0),
            normalization="zscore", norm_mean=0.0, norm_std=300.0, patch_size=(64, 128, 128),
            labels=("background", "kidney+tumor"), keep_components=2, min_component_ml=5.0,
        ),
        StageConfig(
            name="tumor", role="tumor", network=network, spacing=(2.0, 1.2, 1.2), window=(-1024.0, 1500.0),
            normalization="zscore", norm_mean=0.0, norm_std=300.0, patch_size=(64, 128, 128),
            labels=("background", "tumor"), margin_mm=8.0, mask_outside=True, mask_value=-1024.0,
            mask_dilation_mm=3.0, tta=12,
        ),
    ]


# new bundles get the water-attenuation and kidney-contact rules and the size floors (bundles written
# before them have them off): a candidate under 0.1 mL is rejected, a speck under 0.05 mL not listed (the
# smallest tumor of 369 real KiTS19/KiTS23 cases is 0.198 mL; see PostprocessConfig)
DEFAULT_POSTPROCESS = PostprocessConfig(candidate_threshold=0.8, tumor_threshold=0.5, cyst_max_hu=20.0,
                                        min_kidney_contact=0.3, min_candidate_ml=0.1, min_listed_ml=0.05)
# tumor growth passes asked for at run time look this far past kept candidates unless the bundle or the
# user says otherwise: the widest mask the shipped tumor stage was trained on (mask_dilation_mm 3 plus
# tumor_mask_extra_mm 10)
DEFAULT_TUMOR_GROWTH_MM = 13.0



class Quality(enum.Enum):
    """Speed against accuracy: how many test-time augmentations a run uses (:attr:`tta`; each stage caps it
    at what its bundle was validated with). ``--full`` of the command line is :attr:`FULL`."""

    FAST = "fast"
    BALANCED = "balanced"
    FULL = "full"

    @property
    def tta(self) -> int:
        return _QUALITY_TTA[self.value]

    def label(self) -> str:
        """The text of this choice in the Slicer panel's combo box."""
        return _QUALITY_LABELS[self.value]


# Model 0.4, 22 held-out phantoms on 2 CPU cores: fast 7 s a phantom, mean composite 0.699; balanced
# 14 s, 0.710; full 31 s, 0.713. The shipped model 0.5 (two tumor members): fast 9 s, 0.722; balanced
# 21 s, 0.727; full 42 s, 0.716 (training/README.md).
_QUALITY_TTA = {"fast": 1, "balanced": 4, "full": 12}
_QUALITY_LABELS = {"fast": "Fast (no test-time augmentation)", "balanced": "Balanced (4 test-time flips)",
                   "full": "Full (12 test-time augmentations)"}


class TumorGrowth(enum.Enum):
    """Tumor growth passes past the kidney stage's outline (:attr:`passes`; see
    ``PostprocessConfig.tumor_growth_passes``): the model's own setting, off, or 1 to 3."""

    MODEL = "model"
    OFF = "off"
    ONE = "1"
    TWO = "2"
    THREE = "3"

    @property
    def passes(self) -> Optional[int]:
        """None keeps the model's own setting (the shipped model 0.5: one pass)."""
        return _GROWTH_PASSES[self.value]

    def label(self) -> str:
        """The text of this choice in the Slicer panel's combo box."""
        return _GROWTH_LABELS[self.value]


_GROWTH_PASSES = {"model": None, "off": 0, "1": 1, "2": 2, "3": 3}
_GROWTH_LABELS = {"model": "Model's setting", "off": "Off", "1": "1 pass", "2": "2 passes", "3": "3 passes"}

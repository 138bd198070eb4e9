"""The default cascade configuration (report 000's stages, report 004's network).

Spacings are ``(z, y, x)`` mm. Stage 1 works at report 000's 3.4 mm
isotropic with HU clipped to [-1024, 1500]; stage 2 at report 004's
3.22 x 1.62 x 1.62 mm; stage 3 finer in-plane, on one kidney's crop with the
outside masked to -1024 HU. The normalisation statistics here are
placeholders that training replaces with the training data's own.
"""
from __future__ import annotations

from dataclasses import replace
from typing import List

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


def with_network(stages: List[StageConfig], network: NetworkConfig) -> List[StageConfig]:
    return [replace(s, network=network) for s in stages]

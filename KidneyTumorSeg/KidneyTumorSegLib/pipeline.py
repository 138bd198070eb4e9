"""The user-facing segmenter: a model bundle plus runtime settings, run on volumes."""
from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Dict, Optional, Union

import torch

from .bundle import Bundle, default_bundle_path, load_bundle, BundleError
from .cascade import Progress, RoiWorld, run_cascade
from .config import RuntimeConfig
from .findings import CascadeResult
from .presets import DEFAULT_TUMOR_GROWTH_MM
from .volume import Volume

log = logging.getLogger(__name__)


class StageNetwork:
    """Adapts an array predictor (``NetworkPredictor``) to the cascade's volume protocol."""

    def __init__(self, predictor) -> None:
        self.predictor = predictor

    def predict(self, vol: Volume):
        return self.predictor.predict(vol.array)


class Segmenter:
    """Runs the cascade of a bundle.

    The constructor takes the bundle and runtime settings only; everything
    about the model (architecture, spacing, windows, thresholds) comes from
    the bundle's manifest. ``runtime.candidate_threshold``,
    ``runtime.keep_components`` and the tumor growth settings override the
    bundle's values when set.
    """

    def __init__(self, bundle: Union[Bundle, str, os.PathLike, None] = None, runtime: RuntimeConfig = RuntimeConfig()) -> None:
        from .device import resolve_device
        from .inference import NetworkPredictor

        if bundle is None:
            path = default_bundle_path()
            if not (path / "manifest.json").is_file():
                raise BundleError(f"{path}: no default model is installed; pass a model bundle folder (--model)")
            bundle = path
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        self.runtime = runtime
        if runtime.threads:
            torch.set_num_threads(int(runtime.threads))
        self.device = resolve_device(runtime.device)
        stages = dict(self.bundle.stages)
        if runtime.keep_components is not None:
            stages["kidney"] = replace(stages["kidney"], keep_components=int(runtime.keep_components))
        self.stages = stages
        self.post = self.bundle.postprocess
        if runtime.candidate_threshold is not None:
            self.post = replace(self.post, candidate_threshold=float(runtime.candidate_threshold))
        if runtime.tumor_growth_passes is not None:
            mm = self.post.tumor_growth_mm or DEFAULT_TUMOR_GROWTH_MM
            self.post = replace(self.post, tumor_growth_passes=int(runtime.tumor_growth_passes), tumor_growth_mm=mm)
        if runtime.tumor_growth_mm is not None:
            self.post = replace(self.post, tumor_growth_mm=float(runtime.tumor_growth_mm))
        self.predictors: Dict[str, StageNetwork] = {}
        for role, stage in stages.items():
            models = self.bundle.build_models(role)
            self.predictors[role] = StageNetwork(NetworkPredictor(stage, models, runtime))
        log.info("model %s on %s", self.bundle.name, self.device)

    def segment(self, image: Volume, roi: Optional[RoiWorld] = None, progress: Optional[Progress] = None) -> CascadeResult:
        """Segment one CT volume (HU). See :func:`cascade.run_cascade`.

        A segmentation's messages end with the model's limitations, when its
        bundle states any, so every report (and the Slicer status line) shows them.
        """
        result = run_cascade(image, self.stages, self.predictors, self.post, roi=roi, progress=progress)
        if result.status == "ok" and self.bundle.limitations:
            result.messages.append(f"Model {self.bundle.name}: {self.bundle.limitations}")
        return result

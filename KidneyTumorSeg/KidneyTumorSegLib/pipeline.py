"""The user-facing segmenter: a model bundle plus runtime settings, run on volumes."""
from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Dict, Optional, Union

import torch

from .bundles.bundle import Bundle, default_bundle_path, BundleError
from .cascade import Progress, RoiWorld, run_cascade
from .config import RuntimeConfig
from .findings.findings import CascadeResult
from .presets import DEFAULT_TUMOR_GROWTH_MM
from .geometry.volume import Volume

log = logging.getLogger(__name__)


class StageNetwork:
    """Adapts an array predictor (``NetworkPredictor``) to the cascade's volume protocol."""

    def __init__(self, predictor) -> None:
        self.predictor = predictor

    def predict(self, vol: Volume, progress=None):
        return self.predictor.predict(vol.array, progress)

    def head(self, vol: Volume, name: str):
        """The networks' extra head ``name`` on ``vol`` (report 003's landmarks; :mod:`engine.landmarks`)."""
        from .engine.landmarks import head_maps

        p = self.predictor
        return head_maps(p.models, p.stage, vol.array, name, p.device)


class Segmenter:
    """Runs the cascade of a bundle.

    The constructor takes the bundle and runtime settings only; everything
    about the model (architecture, spacing, windows, thresholds) comes from
    the bundle's manifest. ``bundle`` may also be an nnU-Net v2 model (a
    trained-model folder, its dataset folder or an exported zip), with
    ``nnunet`` options ``configuration``, ``folds``, ``checkpoint``,
    ``orientation``, ``labels`` (see :func:`nnunet_bundle.bundle_from_nnunet`).
    ``runtime``: a :class:`config.RuntimeConfig`, e.g. the command line's
    :class:`run_settings.RunSettings`; its ``candidate_threshold``,
    ``keep_components`` and tumor growth settings override the bundle's values
    when set (None keeps the bundle's).
    """

    def __init__(self, bundle: Union[Bundle, str, os.PathLike, None] = None, runtime: RuntimeConfig = RuntimeConfig(),
                 nnunet: Optional[Dict] = None) -> None:
        from .engine.device import resolve_device
        from .engine.inference import NetworkPredictor

        if bundle is None:
            path = default_bundle_path()
            if not (path / "manifest.json").is_file():
                raise BundleError(f"{path}: no default model is installed; pass a model bundle folder (--model)")
            bundle = path
        if isinstance(bundle, Bundle):
            self.bundle = bundle
        else:
            from .bundles.nnunet_bundle import model_bundle

            self.bundle = model_bundle(bundle, **(nnunet or {}))
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
        self.predictors: Dict[str, object] = {}
        self.nnunet_runs: Dict[tuple, object] = {}  # one ModelRuns per nnU-Net model, shared by its stages
        for role, stage in stages.items():
            if stage.nnunet is not None:
                self.predictors[role] = self._nnunet_stage(role, stage)
                continue
            models = self.bundle.build_models(role)
            self.predictors[role] = StageNetwork(NetworkPredictor(stage, models, runtime))
        log.info("model %s on %s", self.bundle.name, self.device)

    def _nnunet_stage(self, role: str, stage):
        from .bundles.nnunet_folder import open_model_folder
        from .engine.nnunet_model import open_model
        from .engine.nnunet_stage import ModelRuns, NnunetStage

        src = stage.nnunet
        key = (str(self.bundle.nnunet_path(role)), src.folds, src.checkpoint, src.orientation,
               tuple(sorted((r, tuple(n)) for r, n in src.labels.items())))
        if key not in self.nnunet_runs:
            folder = open_model_folder(self.bundle.nnunet_path(role), src.folds, src.checkpoint)
            model = open_model(folder, device=str(self.device), tta=self.runtime.tta > 1,
                               label_overrides={r: list(n) for r, n in src.labels.items()} or None)
            self.nnunet_runs[key] = ModelRuns(model, src.orientation)
        return NnunetStage(self.nnunet_runs[key], role, reuse=not stage.mask_outside)

    def nnunet_model(self):
        """The one nnU-Net model all nnU-Net stages of this bundle use, or None (several, or none)."""
        runs = list(self.nnunet_runs.values())
        return runs[0].model if len(runs) == 1 and all(s.nnunet for s in self.stages.values()) else None

    def segment_raw(self, image: Volume):
        """The nnU-Net model's own label map of ``image`` as stored (no cascade, no stage 4), on its grid.

        Exactly what ``nnUNetv2_predict`` writes for the same file, folds and
        TTA setting: nnU-Net's preprocessing, sliding window and argmax / region
        decoding on the array as stored, with its spacing. Returns the label
        Volume and ``{value: name}`` of the model's labels.
        """
        model = self.nnunet_model()
        if model is None:
            raise BundleError(f"{self.bundle.name}: --no-postprocess needs a model whose every stage is one nnU-Net "
                              "model (a trained-model folder, its dataset folder or zip given as --model)")
        from .bundles.nnunet_labels import value_names

        seg = model.segment(image.array, image.spacing_zyx)
        names = value_names(model.predictor.dataset_json)
        return image.with_array(seg, meta={}), names

    def segment(self, image: Volume, roi: Optional[RoiWorld] = None, progress: Optional[Progress] = None) -> CascadeResult:
        """Segment one CT volume (HU). See :func:`cascade.run_cascade`.

        A segmentation's messages end with the model's limitations, when its
        bundle states any, so every report (and the Slicer status line) shows them.
        """
        try:
            result = run_cascade(image, self.stages, self.predictors, self.post, roi=roi, progress=progress)
        finally:
            for runs in self.nnunet_runs.values():
                runs.forget()  # the last run's probabilities served this scan's later stages only
        if result.status != "no_kidney" and self.bundle.limitations:
            result.messages.append(f"Model {self.bundle.name}: {self.bundle.limitations}")
        return result

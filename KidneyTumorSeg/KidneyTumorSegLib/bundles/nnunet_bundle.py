"""Bundles whose stages are nnU-Net v2 models: one model given as ``--model``, or a manifest from ``import-model``.

``--model FOLDER`` (a trained-model folder, its dataset folder or an exported
zip) becomes a bundle in memory: the model is the kidney stage on the whole
scan and, when it has a tumor label, the tumor stage on each kidney's crop,
answered from the same run (:mod:`nnunet_stage`), so a KiTS model runs once
and our stage 4 judges its tumor probabilities. A model with kidneys but no
tumor label (TotalSegmentator) gives kidneys only.

``import-model`` writes a small manifest that takes each stage from a source:
an nnU-Net model (referenced by path, every file it reads hashed) or a
KidneyTumorSeg bundle's stage (its weights copied). E.g. stage 1 and 2 from
TotalSegmentator's fast 3 mm model and stage 3 from a KiTS model, which then
runs only inside each kidney's box.
"""
from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Mapping, Optional, Sequence

from .bundle import Bundle, BundleError, load_bundle, save_bundle, sha256_file
from ..config import NnunetSource, PostprocessConfig, StageConfig
from .nnunet_folder import NnunetFolder, resolve
from .nnunet_labels import LabelRoles, label_roles
from ..presets import DEFAULT_POSTPROCESS, DEFAULT_TUMOR_GROWTH_MM

log = logging.getLogger(__name__)

# stage 4 on an nnU-Net model's probabilities: the rules of new bundles, one tumor growth pass
NNUNET_POSTPROCESS = replace(DEFAULT_POSTPROCESS, tumor_growth_passes=1, tumor_growth_mm=DEFAULT_TUMOR_GROWTH_MM)
TOTALSEG_NAMES = ("kidney_left", "kidney_right")


def default_orientation(roles: LabelRoles) -> str:
    """``RAS`` for TotalSegmentator-style models (left/right kidney labels), else KiTS's stored ``IPL``."""
    names = {n.lower() for n in roles.labels}
    return "RAS" if all(n in names for n in TOTALSEG_NAMES) else "IPL"


def nnunet_source(folder: NnunetFolder, orientation: Optional[str] = None,
                  labels: Optional[Mapping[str, Sequence[str]]] = None, hashes: bool = True) -> NnunetSource:
    """The manifest entry of a model: where it is, what is used, and (``hashes``) the SHA-256 of every file read.

    A model given straight as ``--model`` has no manifest to check against: no hashes (hashing five
    folds of a large model takes seconds on every run)."""
    roles = label_roles(folder.read_json("dataset.json"), labels)
    base = folder.path.parent
    files = {f.relative_to(base).as_posix(): sha256_file(f) for f in folder.files()} if hashes else {}
    return NnunetSource(path=str(folder.path.resolve()), configuration=folder.configuration, folds=folder.folds,
                        checkpoint=folder.checkpoint, orientation=orientation or default_orientation(roles),
                        labels={r: tuple(n) for r, n in (labels or {}).items()}, files=files)


def nnunet_stage(role: str, source: NnunetSource, dataset: str) -> StageConfig:
    """A stage running ``source`` for ``role``, with the cascade's settings for a model that resamples itself.

    The tumor stage sees each kidney's box with 10 mm of context and nothing
    masked (an nnU-Net KiTS model was trained on whole scans); candidates are
    kept to the kidney dilated by 3 mm, widened by the growth pass.
    """
    name = f"nnunet-{dataset}-{source.configuration}-{role}"
    common = dict(name=name, role=role, nnunet=source, labels=("background", "kidney+tumor"), tta=8,
                  provenance={"nnunet": source.path})
    if role == "roi":
        return StageConfig(margin_mm=20.0, keep_components=2, min_component_ml=5.0, **common)
    if role == "kidney":
        return StageConfig(keep_components=2, min_component_ml=5.0, **common)
    if role == "tumor":
        common["labels"] = ("background", "tumor")
        return StageConfig(margin_mm=10.0, mask_outside=False, mask_dilation_mm=3.0, **common)
    raise ValueError(f"unknown stage role {role!r}")


def bundle_from_nnunet(path: os.PathLike, configuration: Optional[str] = None, folds: Optional[Sequence] = None,
                       checkpoint: Optional[str] = None, orientation: Optional[str] = None,
                       labels: Optional[Mapping[str, Sequence[str]]] = None) -> Bundle:
    """An in-memory bundle of one nnU-Net model (see the module docstring)."""
    folder = resolve(path, configuration, folds, checkpoint)
    roles = label_roles(folder.read_json("dataset.json"), labels)
    source = nnunet_source(folder, orientation, labels, hashes=False)
    stages = {"kidney": nnunet_stage("kidney", source, folder.dataset)}
    if roles.has("tumor"):
        stages["tumor"] = nnunet_stage("tumor", source, folder.dataset)
    log.info("nnU-Net model %s, %s, folds %s (%s): %s", folder.dataset, folder.configuration, ",".join(folder.folds),
             folder.checkpoint, "kidneys and tumors" if roles.has("tumor") else "kidneys only (no tumor label)")
    return Bundle(path=folder.path, name=f"nnunet:{folder.name}", version=folder.checkpoint,
                  description=f"nnU-Net v2 model {folder.name}, folds {','.join(folder.folds)}",
                  stages=stages, postprocess=NNUNET_POSTPROCESS, files={},
                  provenance={"nnunet": source.path, "labels": roles.describe()},
                  limitations="" if roles.has("tumor") else "this model segments no kidney tumors: kidneys only")


def _stage_from(role: str, spec: str, configuration, folds, checkpoint, orientation, labels, seen):
    """(stage, state dicts) for ``role`` from a KidneyTumorSeg bundle folder or an nnU-Net model
    (``seen``: nnU-Net sources already hashed, by spec)."""
    p = Path(spec)
    if (p / "manifest.json").is_file():
        b = load_bundle(p)
        if role not in b.stages:
            raise BundleError(f"{p}: the bundle has no {role!r} stage")
        stage = b.stages[role]
        return stage, ([] if stage.nnunet else b.load_state_dicts(role))
    if spec not in seen:
        folder = resolve(p, configuration, folds, checkpoint)
        seen[spec] = (nnunet_source(folder, orientation, labels), folder.dataset)
    return nnunet_stage(role, *seen[spec]), []


def import_model(out: os.PathLike, sources: Mapping[str, str], *, configuration: Optional[str] = None,
                 folds: Optional[Sequence] = None, checkpoint: Optional[str] = None, orientation: Optional[str] = None,
                 labels: Optional[Mapping[str, Sequence[str]]] = None, postprocess: Optional[PostprocessConfig] = None,
                 name: str = "", overwrite: bool = False) -> Bundle:
    """Write a bundle at ``out`` whose stages come from ``sources`` (role -> model path); see the module docstring."""
    if "kidney" not in sources:
        raise BundleError("a bundle needs a kidney stage (--kidney)")
    stages, weights, seen = [], {}, {}
    for role in ("roi", "kidney", "tumor"):
        if role in sources:
            stage, sds = _stage_from(role, sources[role], configuration, folds, checkpoint, orientation, labels, seen)
            stages.append(stage)
            weights[role] = sds
    post = postprocess or NNUNET_POSTPROCESS
    return save_bundle(out, stages, weights, postprocess=post, name=name or Path(out).name, version="1",
                       description="stages: " + ", ".join(f"{r} from {s}" for r, s in sources.items()),
                       provenance={"imported": dict(sources)}, overwrite=overwrite)


def model_bundle(spec, **options) -> Bundle:
    """The bundle for ``--model``: a KidneyTumorSeg bundle folder, or an nnU-Net model (folder or zip)."""
    from .nnunet_folder import looks_like_nnunet

    p = Path(spec)
    if (p / "manifest.json").is_file() or not looks_like_nnunet(p):
        if any(v for v in options.values()):
            log.warning("%s is a KidneyTumorSeg bundle: nnU-Net options (%s) are ignored", p,
                        ", ".join(k for k, v in options.items() if v))
        return load_bundle(p)
    return bundle_from_nnunet(p, **options)

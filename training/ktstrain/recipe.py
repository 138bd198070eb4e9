"""Training recipes: one reported system as the stage configurations, folds and export settings that make it.

A recipe is a JSON file ``training/recipes/<report>/<name>.recipe.json``::

    {
      "name": "004-residual",
      "report": "004",
      "summary": "one line: what the system is",
      "stages": {"kidney": ["kidney.json"]},       # role -> stage configurations (several = an ensemble)
      "folds": ["0", "1", "2", "3", "4"],           # each configuration is trained on each fold ("all": every case)
      "derive": {"tumor": {"from": "kidney", "stage": {"foreground_channel": 2, ...}}},
      "export": {"tta": {"tumor": 12}, "post": {"candidate_threshold": 0.8}},
      "sizes": {"cpu": {"all": {"stage": {...}, "train": {...}}, "kidney": {...}}}
    }

Stage configurations are the files ``kidneytumorseg-train train --config`` takes, named relative to the
recipe. ``derive`` makes a stage of another stage's networks (one network for kidney and tumor, as in
reports 001 and 004). ``sizes`` are named overrides of every (``all``) or one role's configurations (a
recipe's own smaller version for a CPU; the report's sizes stay the configuration files'); ``overrides``
given to :func:`recipe_configs` apply last (tests, time-budgeted comparisons).
:func:`train_recipe` trains every configuration on every fold and exports the bundle.
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from KidneyTumorSegLib.io.jsonfile import read_json

from KidneyTumorSegLib.config import ROLES

from .config import StageTraining, parse_config

log = logging.getLogger(__name__)

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
_KEYS = {"name", "report", "summary", "comment", "stages", "folds", "derive", "export", "sizes"}
_ROLES = ROLES


@dataclass(frozen=True)
class Recipe:
    path: Path
    name: str
    report: str
    summary: str
    stages: Dict[str, Tuple[str, ...]]
    folds: Tuple[str, ...] = ("all",)
    derive: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    export: Dict[str, Any] = field(default_factory=dict)
    sizes: Dict[str, Dict[str, Any]] = field(default_factory=dict)


def load_recipe(path) -> Recipe:
    """Read and check a recipe file (unknown keys, roles, missing configuration files are errors)."""
    path = Path(path)
    data = read_json(path, "recipe")
    bad = sorted(set(data) - _KEYS)
    if bad:
        raise ValueError(f"{path}: unknown recipe key(s): {', '.join(bad)}")
    stages = {r: tuple(v) for r, v in dict(data.get("stages", {})).items()}
    derive = dict(data.get("derive", {}))
    for role in list(stages) + list(derive):
        if role not in _ROLES:
            raise ValueError(f"{path}: unknown stage role {role!r} (expected one of {_ROLES})")
    if "kidney" not in stages:
        raise ValueError(f"{path}: a recipe needs a kidney stage")
    for role, spec in derive.items():
        if role in stages or spec.get("from") not in stages:
            raise ValueError(f"{path}: derived stage {role!r} must not be trained itself and must name a trained "
                             f"stage in 'from', got {spec.get('from')!r}")
    for name in (n for names in stages.values() for n in names):
        if not (path.parent / name).is_file():
            raise ValueError(f"{path}: stage configuration {name!r} not found next to the recipe")
    folds = tuple(str(f) for f in data.get("folds", ["all"]))
    return Recipe(path=path, name=str(data.get("name", path.stem)), report=str(data.get("report", "")),
                  summary=str(data.get("summary", "")), stages=stages, folds=folds, derive=derive,
                  export=dict(data.get("export", {})), sizes=dict(data.get("sizes", {})))


def list_recipes(root: Path = RECIPES) -> List[Recipe]:
    """Every ``*.recipe.json`` under ``root``, in name order."""
    return [load_recipe(p) for p in sorted(Path(root).glob("*/*.recipe.json"))]


def find_recipe(name_or_path: str, root: Path = RECIPES) -> Recipe:
    """A recipe by file path or by its name (``004-residual``)."""
    p = Path(name_or_path)
    if p.is_file():
        return load_recipe(p)
    found = [r for r in list_recipes(root) if r.name == name_or_path]
    if not found:
        names = ", ".join(r.name for r in list_recipes(root))
        raise ValueError(f"no recipe {name_or_path!r} (recipes: {names})")
    return found[0]


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> Dict[str, Any]:
    """``base`` with ``over`` merged in, objects key by key (lists and values replaced)."""
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else copy.deepcopy(v)
    return out


def recipe_configs(recipe: Recipe, size: Optional[str] = None,
                   overrides: Optional[Mapping[str, Any]] = None) -> Dict[str, List[StageTraining]]:
    """Each trained role's stage configurations, with the recipe's ``size`` and then ``overrides`` applied
    (both ``{"all" | role: {configuration keys}}``)."""
    if size is not None and size not in recipe.sizes:
        raise ValueError(f"recipe {recipe.name}: no size {size!r} (sizes: {', '.join(recipe.sizes) or 'none'})")
    layers = [recipe.sizes.get(size, {}) if size else {}, dict(overrides or {})]
    out: Dict[str, List[StageTraining]] = {}
    for role, names in recipe.stages.items():
        for name in names:
            data = read_json(recipe.path.parent / name, "configuration file")
            for layer in layers:
                data = deep_merge(data, layer.get("all", {}))
                data = deep_merge(data, layer.get(role, {}))
            try:
                out.setdefault(role, []).append(parse_config(data))
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{recipe.path.parent / name}: {exc}") from exc
    names = [c.stage.name for cs in out.values() for c in cs]
    if len(set(names)) != len(names):
        raise ValueError(f"recipe {recipe.name}: stage names must differ (run folders are named after them): {names}")
    return out


@dataclass
class RecipeResult:
    bundle: Path
    runs: Dict[str, List[Path]]
    train_seconds: float
    parameters: int


def train_recipe(recipe: Recipe, cases: Sequence[Any], out: Path, bundle: Path, size: Optional[str] = None,
                 overrides: Optional[Mapping[str, Any]] = None, time_budget_s: Optional[float] = None,
                 device: str = "cpu", workers: int = 1, show_progress: bool = False,
                 overwrite: bool = False, folds: Optional[Sequence[str]] = None) -> RecipeResult:
    """Train every configuration of ``recipe`` on each of its folds into ``out``, then export ``bundle``.

    ``time_budget_s``: the whole recipe's wall-clock time, shared equally by its runs (each run's
    preprocessing counted in its share; a run left with less than its share by earlier runs gets what is left,
    at least a tenth of its share). ``folds`` replaces the recipe's folds (a quick run of a 5-fold recipe).
    """
    from .export import export_bundle
    from .train import train_stage

    if Path(bundle).exists() and not overwrite:  # before hours of training, not after
        raise FileExistsError(f"output exists: {bundle} (use --overwrite to replace it)")
    configs = recipe_configs(recipe, size, overrides)
    jobs = [(role, cfg, str(fold)) for role, cfgs in configs.items() for cfg in cfgs for fold in folds or recipe.folds]
    for role, cfg, fold in jobs:
        if fold != "all" and not 0 <= int(fold) < cfg.train.n_folds:
            raise ValueError(f"recipe {recipe.name}: fold {fold} of stage {cfg.stage.name!r}, whose configuration "
                             f"splits the cases into {cfg.train.n_folds} folds")
    t0 = time.perf_counter()
    runs: Dict[str, List[Path]] = {}
    out = Path(out)
    for n, (role, cfg, fold) in enumerate(jobs):
        share = None
        if time_budget_s is not None:
            left = time_budget_s - (time.perf_counter() - t0)
            share = max(left / (len(jobs) - n), 0.1 * time_budget_s / len(jobs))
        run = out / f"{cfg.stage.name}_fold{fold}"
        log.info("recipe %s: run %d/%d %s%s", recipe.name, n + 1, len(jobs), run.name,
                 f" ({share:.0f} s)" if share else "")
        train_stage(cfg, cases, run, out / "cache", fold=fold if fold == "all" else int(fold),
                    splits_path=out / "splits.json", device=device, workers=workers, show_progress=show_progress,
                    overwrite=overwrite, time_budget_s=share)
        runs.setdefault(role, []).append(run)
    seconds = time.perf_counter() - t0
    b = export_bundle(runs, Path(bundle), name=recipe.name, version="0", overwrite=overwrite,
                      description=f"recipe {recipe.name} (report {recipe.report}): {recipe.summary}",
                      data=f"{len(cases)} training cases", tta=recipe.export.get("tta"),
                      postprocess=_post(recipe.export.get("post", {})), derived=_derived(recipe))
    return RecipeResult(b.path, runs, seconds, bundle_parameters(b))


def _derived(recipe: Recipe) -> Dict[str, Tuple[str, Dict[str, Any]]]:
    return {role: (spec["from"], dict(spec.get("stage", {}))) for role, spec in recipe.derive.items()}


def _post(changes: Mapping[str, Any]):
    from dataclasses import replace

    from KidneyTumorSegLib.presets import DEFAULT_POSTPROCESS

    return replace(DEFAULT_POSTPROCESS, **dict(changes))


def bundle_parameters(bundle) -> int:
    """Parameters of a bundle's networks, each weight file counted once (a derived stage shares its source's)."""
    import numpy as np

    from KidneyTumorSegLib.bundles.bundle_weights import read_header

    total, seen = 0, set()
    for stage in bundle.stages.values():
        for w in stage.weights:
            sha = bundle.sha256_of(w)
            if sha in seen:
                continue
            seen.add(sha)
            header, _ = read_header(bundle.checked_weight(w))
            total += sum(int(np.prod(e["shape"])) for k, e in (header or {}).items()
                         if k != "__metadata__" and "running_" not in k and "num_batches" not in k)
    return total

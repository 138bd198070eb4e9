"""``kidneytumorseg-train`` (also ``python -m ktstrain``; ``torchrun ... -m ktstrain train`` for DDP).

::

    kidneytumorseg-train train --config training/configs/kidney.json --data kits19/data --out runs/ --fold 0
    kidneytumorseg-train train --config training/configs/tumor.json --data phantoms/ --synthetic 40 --out runs/
    kidneytumorseg-train train ... --resume                 # continue a killed run
    kidneytumorseg-train preprocess --config ... --data ... --cache runs/cache
    kidneytumorseg-train export --roi runs/coarse_fold0 --kidney runs/kidney_fold0 --tumor runs/tumor_fold* -o my_model
    kidneytumorseg-train recipe 004-residual --data kits19/data --out runs/004 -o my_model   # training/recipes/
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

log = logging.getLogger("ktstrain")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kidneytumorseg-train", description="Train the KidneyTumorSeg cascade headless.")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train one stage")
    t.add_argument("--config", required=True, help="stage configuration JSON (training/configs/*.json)")
    t.add_argument("--data", required=True, nargs="+",
                   help="KiTS-layout folder(s) (case_XXXXX/imaging.nii.gz + segmentation.nii.gz); case ids must be unique")
    t.add_argument("--out", required=True, help="runs folder; the run goes to <out>/<stage>_fold<k>")
    t.add_argument("--fold", default="0", help="fold 0-4, or 'all' (train on every case, no validation)")
    t.add_argument("--splits", help="split file to honour (default <out>/splits.json, created if absent)")
    t.add_argument("--cache", help="preprocessing cache folder (default <out>/cache)")
    t.add_argument("--synthetic", type=int, default=0, help="first generate this many phantoms into --data")
    t.add_argument("--synthetic-seed", type=int, default=10000, help="seed of the first generated phantom")
    t.add_argument("--epochs", type=int, help="override the configuration's epochs")
    t.add_argument("--time-budget", type=float, metavar="SECONDS",
                   help="finish within this wall-clock time, preprocessing included: the planned epochs (at most "
                        "the configuration's) and the learning-rate schedule shrink to what fits")
    t.add_argument("--device", default="auto")
    t.add_argument("--workers", type=int, default=1, help="preprocessing processes")
    t.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    t.add_argument("--init", help="start from the weights of this checkpoint or run folder (new optimiser and schedule)")
    t.add_argument("--overwrite", action="store_true", help="start over in a run folder that has checkpoints")
    t.add_argument("--tensorboard", action="store_true")
    t.add_argument("--no-progress", action="store_true")

    _add_recipe_parser(sub)

    pp = sub.add_parser("preprocess", help="only build the stage's preprocessing cache")
    pp.add_argument("--config", required=True)
    pp.add_argument("--data", required=True, nargs="+")
    pp.add_argument("--cache", required=True)
    pp.add_argument("--workers", type=int, default=1)

    e = sub.add_parser("export", help="write the model bundle the core loads")
    for role in ("roi", "kidney", "tumor", "kidney_alone"):
        e.add_argument(f"--{role.replace('_', '-')}", nargs="+", default=[],
                       help=f"run folder(s) of the {role} stage (several = ensemble), "
                       "or a bundle folder: alone, its stage is taken over unchanged; beside others, its "
                       "weights join the ensemble")
    e.add_argument("-o", "--output", required=True)
    e.add_argument("--which", default="final",
                   help="final, best, latest, or epochNNNN (a periodic checkpoint, 0-based epoch: epoch0089)")
    e.add_argument("--name", default="")
    e.add_argument("--version", default="0")
    e.add_argument("--description", default="")
    e.add_argument("--data-description", default="", help="what the model was trained on (provenance)")
    e.add_argument("--limitations", default="", help="what users must know before trusting the output; shown with every result")
    e.add_argument("--tta", nargs="+", default=[], metavar="ROLE=N",
                   help="most test-time augmentations a stage was validated with (e.g. kidney=4); caps --tta/--full")
    e.add_argument("--post", nargs="+", default=[], metavar="KEY=VALUE",
                   help="stage-4 settings that differ from the defaults (fields of PostprocessConfig), "
                        "e.g. tumor_growth_passes=3 tumor_growth_mm=13 min_kidney_contact=0.3; none turns "
                        "cyst_max_hu, min_kidney_contact or max_tumors_per_kidney off")
    e.add_argument("--overwrite", action="store_true")
    return p


def _add_recipe_parser(sub) -> None:
    r = sub.add_parser("recipe", help="train a report's system (training/recipes/) and export its bundle")
    r.add_argument("recipe", help="recipe name (e.g. 004-residual) or recipe file")
    r.add_argument("--data", required=True, nargs="+", help="KiTS-layout folder(s), as for train")
    r.add_argument("--out", required=True, help="runs folder (one run per configuration and fold)")
    r.add_argument("-o", "--output", required=True, help="the bundle folder to write")
    r.add_argument("--size", help="one of the recipe's sizes (cpu, tiny); default: the report's")
    r.add_argument("--folds", nargs="+", help="train these folds instead of the recipe's")
    r.add_argument("--time-budget", type=float, metavar="SECONDS", help="wall-clock time of the whole recipe")
    r.add_argument("--synthetic", type=int, default=0, help="first generate this many phantoms into --data")
    r.add_argument("--device", default="auto")
    r.add_argument("--workers", type=int, default=1, help="preprocessing processes")
    r.add_argument("--overwrite", action="store_true")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    from KidneyTumorSegLib.bundles.bundle import BundleError
    from KidneyTumorSegLib.geometry.volume import InputError

    try:
        if args.command == "train":
            return _train(args)
        if args.command == "preprocess":
            return _preprocess(args)
        if args.command == "recipe":
            return _recipe(args)
        return _export(args)
    except (InputError, BundleError, FileExistsError, FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        return 1


def _cases(data, synthetic: int = 0, seed: int = 10000):
    """The cases of one or more data folders (``--synthetic`` generates into the first)."""
    from .data import discover_cases
    from KidneyTumorSegLib.geometry.volume import InputError

    roots = [Path(d) for d in ([data] if isinstance(data, (str, Path)) else data)]
    cases = _cases_of(roots[0], synthetic, seed)
    for root in roots[1:]:
        cases += discover_cases(root)
    seen = {}
    for c in cases:
        if c.case_id in seen:
            raise InputError(f"case id {c.case_id} is in two data folders: '{seen[c.case_id]}' and "
                             f"'{Path(c.image_path).parent}'")
        seen[c.case_id] = Path(c.image_path).parent
    return sorted(cases, key=lambda c: c.case_id)


def _cases_of(root: Path, synthetic: int = 0, seed: int = 10000):
    from .data import discover_cases

    if synthetic:
        from KidneyTumorSegLib.phantom import write_phantom_cases

        existing = sorted(root.glob("case_*")) if root.is_dir() else []
        todo = synthetic - len(existing)
        if todo > 0:
            log.info("generating %d phantom(s) into %s", todo, root)
            write_phantom_cases(root, todo, seed0=seed + len(existing), start_index=len(existing),
                                randomize_intensity=True)
    return discover_cases(root)


def _train(args) -> int:
    from .config import load_config
    from .train import train_stage

    cfg = load_config(args.config)
    cases = _cases(args.data, args.synthetic, args.synthetic_seed)
    fold = args.fold if args.fold == "all" else int(args.fold)
    out = Path(args.out)
    run = out / f"{cfg.stage.name}_fold{fold}"
    train_stage(cfg, cases, run, Path(args.cache) if args.cache else out / "cache", fold=fold,
                splits_path=Path(args.splits) if args.splits else None, resume=args.resume, device=args.device,
                overwrite=args.overwrite, workers=args.workers, epochs=args.epochs,
                show_progress=not args.no_progress and sys.stderr.isatty(), tensorboard=args.tensorboard,
                init=Path(args.init) if args.init else None, time_budget_s=args.time_budget)
    log.info("finished: %s", run)
    return 0


def _recipe(args) -> int:
    from .recipe import find_recipe, train_recipe

    recipe = find_recipe(args.recipe)
    res = train_recipe(recipe, _cases(args.data, args.synthetic), Path(args.out), Path(args.output), size=args.size,
                       time_budget_s=args.time_budget, device=args.device, workers=args.workers,
                       show_progress=sys.stderr.isatty(), overwrite=args.overwrite, folds=args.folds)
    log.info("recipe %s: %d run(s) in %.0f s, bundle %s (%d parameters)", recipe.name,
             sum(len(v) for v in res.runs.values()), res.train_seconds, res.bundle, res.parameters)
    return 0


def _preprocess(args) -> int:
    from .config import load_config
    from .preprocess import preprocess_stage

    cfg = load_config(args.config)
    res = preprocess_stage(_cases(args.data), cfg.stage, Path(args.cache), cfg.preprocess, workers=args.workers)
    log.info("cache %s: %d processed, %d reused", res.cache_dir, len(res.processed), len(res.reused))
    return 0


def _export(args) -> int:
    from .export import export_bundle

    runs = {"roi": args.roi, "kidney": args.kidney, "tumor": args.tumor, "kidney_alone": args.kidney_alone}
    b = export_bundle(runs, Path(args.output), which=args.which,
                      name=args.name, version=args.version, description=args.description, data=args.data_description,
                      overwrite=args.overwrite, limitations=args.limitations, tta=_parse_tta(args.tta),
                      postprocess=_parse_post(args.post))
    log.info("bundle written: %s (%s)", b.path, ", ".join(f"{r}: {len(s.weights)} model(s)" for r, s in b.stages.items()))
    return 0


def _parse_tta(items) -> dict:
    out = {}
    for item in items:
        role, sep, n = item.partition("=")
        if not sep or not n.strip().isdigit():
            raise ValueError(f"--tta takes ROLE=N (e.g. kidney=4), got {item!r}")
        out[role.strip()] = int(n)
    return out


_OPTIONAL_RULES = ("cyst_max_hu", "min_kidney_contact", "max_tumors_per_kidney")


def _parse_post(items):
    """``--post KEY=VALUE ...`` over the default stage-4 settings; each value takes the type of the default."""
    from dataclasses import fields, replace

    from KidneyTumorSegLib.presets import DEFAULT_POSTPROCESS

    names = [f.name for f in fields(DEFAULT_POSTPROCESS)]
    changes = {}
    for item in items:
        key, sep, text = (x.strip() for x in item.partition("="))
        if not sep or key not in names:
            raise ValueError(f"--post takes KEY=VALUE with KEY one of {', '.join(names)}; got {item!r}")
        default = getattr(DEFAULT_POSTPROCESS, key)
        try:
            if text.lower() == "none" and key in _OPTIONAL_RULES:  # rules that None turns off
                changes[key] = None
            elif key == "max_tumors_per_kidney":
                changes[key] = int(text)
            elif isinstance(default, str):
                changes[key] = text
            else:
                changes[key] = int(text) if isinstance(default, int) else float(text)
        except ValueError:
            kind = "an integer" if isinstance(default, int) else "a number"
            raise ValueError(f"--post {key}: {text!r} is not {kind}") from None
    return replace(DEFAULT_POSTPROCESS, **changes)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

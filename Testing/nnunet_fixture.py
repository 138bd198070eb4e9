"""Genuine nnU-Net v2 trained-model folders, built here on CPU in about a minute each, for tests.

``build_nnunet_results(cache_root, kind)`` returns
``<cache>/nnUNet_results/DatasetNNN_Name``, laid out exactly as
``nnUNetv2_train`` leaves it (``<Trainer>__nnUNetPlans__<configuration>/``
with ``dataset.json``, ``plans.json``, ``dataset_fingerprint.json`` and
``fold_N/checkpoint_final.pth``). Everything is nnU-Net's own code: raw
dataset (``ktstrain.nnunet_export`` of tiny phantoms, array (k, j, i) =
(40, 64, 64) voxels of 5 mm), fingerprint, planner, preprocessing, trainer
(``run_training`` then ``perform_actual_validation``, as ``nnUNetv2_train``
does), only with very few iterations, narrower networks (``plans.json``
post-edited before preprocessing, as a user's custom plans would be) and a
2-fold ``splits_final.json`` (nnU-Net's 5-fold split needs 5 cases).

The build runs in a child Python process (nnU-Net sets torch's thread count
and spawns worker pools; the test process keeps its state) with
``nnUNet_raw``/``nnUNet_preprocessed``/``nnUNet_results`` pointing into a
temporary folder, renamed to ``<cache_root>/<kind>-<key>`` once complete
(``build.log`` inside); ``key`` hashes this file, ``ktstrain/nnunet_export.py``
and the nnunetv2 version, so a changed builder rebuilds and a half-built
cache is never used. ``python nnunet_fixture.py KIND OUTDIR`` builds one kind
into OUTDIR (with the nnU-Net variables set by the caller).
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Dict, Iterator, NamedTuple, Optional, Sequence, Tuple, Union

PLANS = "nnUNetPlans"
SHAPE = (40, 64, 64)  # phantom array shape (k, j, i) = (slices, rows, columns)
SPACING = (5.0, 5.0, 5.0)  # phantom voxel size (x, y, z) in mm
N_CASES = 4
ITERATIONS = dict(num_epochs=1, num_iterations_per_epoch=2, num_val_iterations_per_epoch=1)
FEATURE_DIVISOR = 4  # the planner's features_per_stage are divided by this (at least 4 remain)
Folds = Sequence[Union[int, str]]


class Kind(NamedTuple):
    dataset_id: int
    name: str
    table: str  # label table of ktstrain.nnunet_export
    trainer: str
    runs: Tuple[Tuple[str, int], ...]  # (configuration, fold) in training order
    seed0: int  # phantom seeds seed0 .. seed0 + N_CASES - 1
    cascade: bool = False  # add 3d_lowres + 3d_cascade_fullres to the plans


KINDS: Dict[str, Kind] = {
    "kits19": Kind(40, "KiTS19", "kits19", "nnUNetTrainer",
                   (("2d", 0), ("3d_fullres", 0), ("3d_fullres", 1), ("3d_lowres", 0), ("3d_lowres", 1),
                    ("3d_cascade_fullres", 0)), 900000, cascade=True),
    "kits21": Kind(135, "KiTS2021", "kits21", "nnUNetTrainer", (("3d_fullres", 0),), 900100),
    "totalseg": Kind(291, "TotalSegmentator_part1_organs", "totalseg", "nnUNetTrainerNoMirroring",
                     (("3d_fullres", 0),), 900200),
}


def dataset_folder_name(kind: str) -> str:
    k = KINDS[kind]
    return f"Dataset{k.dataset_id:03d}_{k.name}"


def cache_key() -> str:
    """Hash of this file's and ``ktstrain/nnunet_export.py``'s source and the nnunetv2 version (12 hex digits)."""
    from importlib.metadata import version

    from ktstrain import nnunet_export

    h = hashlib.sha256(Path(__file__).read_bytes())
    h.update(Path(nnunet_export.__file__).read_bytes())
    h.update(version("nnunetv2").encode())
    return h.hexdigest()[:12]


@contextlib.contextmanager
def environ(**values: str) -> Iterator[None]:
    """Set environment variables for the block; restore the old values (or their absence) afterwards."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def nnunet_env(root: Path, **extra: str) -> "contextlib.AbstractContextManager[None]":
    """``nnUNet_raw``/``nnUNet_preprocessed``/``nnUNet_results`` = ``root/<that name>`` (and ``extra``) for a block."""
    return environ(nnUNet_raw=str(root / "nnUNet_raw"), nnUNet_preprocessed=str(root / "nnUNet_preprocessed"),
                   nnUNet_results=str(root / "nnUNet_results"), **extra)


_PRIMUS = "nnunetv2.training.nnUNetTrainer.primus.primus_trainers"
_primus_importable: Optional[bool] = None


@contextlib.contextmanager
def trainer_lookup() -> Iterator[None]:
    """Let nnU-Net find trainer classes by name where ``timm``/``torchvision`` cannot be imported.

    ``recursive_find_trainer_class_by_name`` imports the modules under
    ``nnunetv2/training/nnUNetTrainer`` one by one until one has the class;
    ``primus/primus_trainers.py`` comes before ``variants/`` (where
    ``nnUNetTrainerNoMirroring`` is) and imports timm, hence torchvision, which
    raises ``RuntimeError: operator torchvision::nms does not exist`` when
    torchvision was built for another torch (PyPI's torchvision 0.28.0 beside
    torch 2.13.0+cpu here). Only if that module fails to import, an empty
    module stands in for it during the block; nothing changes where it imports.
    """
    global _primus_importable
    if _primus_importable is None:
        try:
            importlib.import_module(_PRIMUS)
            _primus_importable = True
        except Exception:  # noqa: BLE001 - a broken optional dependency of an unused trainer
            _primus_importable = False
    if _primus_importable or _PRIMUS in sys.modules:
        yield
        return
    sys.modules[_PRIMUS] = types.ModuleType(_PRIMUS)
    try:
        yield
    finally:
        sys.modules.pop(_PRIMUS, None)


def build_nnunet_results(cache_root: Path, kind: str) -> Path:
    """The ``nnUNet_results/DatasetNNN_Name`` folder of ``kind``, built once under ``cache_root/<kind>-<key>``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    cache_root = Path(cache_root)
    final = cache_root / f"{kind}-{cache_key()}"
    results = final / "nnUNet_results" / dataset_folder_name(kind)
    if final.is_dir():
        return results
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{kind}-", dir=str(cache_root)))
    try:
        log = tmp / "build.log"
        # nnUNet_def_n_proc: one worker per pool; nnUNet_n_proc_DA: the planner needs >= 1 (training uses 0)
        with nnunet_env(tmp, nnUNet_def_n_proc="1", nnUNet_n_proc_DA="1", nnUNet_compile="f"), \
                open(log, "wb") as out:
            proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), kind, str(tmp)],
                                  stdout=out, stderr=subprocess.STDOUT, cwd=str(tmp))
        if proc.returncode != 0:
            tail = log.read_text(errors="replace")[-4000:]
            raise RuntimeError(f"nnU-Net build of {kind!r} failed (exit {proc.returncode}):\n{tail}")
        tmp.chmod(0o755)  # mkdtemp made it private
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():  # else a concurrent builder finished first: use its folder
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return results


def _trainer_of(results_dataset_folder: Path, configurations: Sequence[str]) -> str:
    names = {p.name.split("__")[0] for c in configurations
             for p in results_dataset_folder.glob(f"*__{PLANS}__{c}") if p.is_dir()}
    if len(names) != 1:
        raise ValueError(f"expected one trainer with {PLANS} models of {list(configurations)} in "
                         f"{results_dataset_folder}, found {sorted(names)}")
    return names.pop()


def export_zip(results_dataset_folder: Path, config: Union[str, Sequence[str]], folds: Folds, out_zip: Path) -> Path:
    """The zip ``nnUNetv2_export_model_to_zip`` writes, made by nnunetv2's own ``export_pretrained_model``.

    ``config`` is one configuration or several (e.g. ``("3d_lowres",
    "3d_cascade_fullres")``), each with all ``folds``. Written under a
    temporary name, then renamed onto ``out_zip``.
    """
    from nnunetv2.model_sharing.model_export import export_pretrained_model

    folder = Path(results_dataset_folder).resolve()
    configs = (config,) if isinstance(config, str) else tuple(config)
    folds = tuple(f if f == "all" else int(f) for f in folds)
    out_zip = Path(out_zip)
    tmp = out_zip.with_name(f".tmp-{os.getpid()}-{out_zip.name}")
    try:
        with environ(nnUNet_results=str(folder.parent)):
            export_pretrained_model(folder.name, str(tmp), configurations=configs,
                                    trainer=_trainer_of(folder, configs), plans_identifier=PLANS, folds=folds,
                                    strict=True)
        os.replace(tmp, out_zip)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out_zip


def predict_with_nnunet(model_folder: Path, folds: Folds, input_file: Path, output_file: Path,
                        disable_tta: bool = True, prev_stage_predictions: Optional[Path] = None,
                        checkpoint_name: str = "checkpoint_final.pth") -> Path:
    """Segment ``input_file`` with nnU-Net's own predictor as ``nnUNetv2_predict -f FOLDS [--disable_tta] -device cpu``.

    The CLI's settings (``predict_entry_point``): tile_step_size 0.5, Gaussian
    weighting, mirroring unless ``disable_tta``, perform_everything_on_device
    (the predictor turns it off on CPU), torch threads = CPU count while it
    runs (restored after), ``initialize_from_trained_model_folder`` then
    ``predict_from_files``; only the worker counts are 1 (preprocessing and
    export), which does not change the result. ``output_file`` must end with
    the model's file ending (``.nii.gz``); nnU-Net also writes
    ``predict_from_raw_data_args.json``, ``dataset.json`` and ``plans.json``
    beside it. A cascade stage (``3d_cascade_fullres``) takes the previous
    stage's segmentation from ``prev_stage_predictions`` (the CLI's
    ``-prev_stage_predictions``: ``<case>.nii.gz`` for the input
    ``<case>_0000.nii.gz``); without it the previous stage's sibling model
    folder predicts it first, with the same folds, as a user would.
    """
    model_folder = Path(model_folder)
    ending = json.loads((model_folder / "dataset.json").read_text())["file_ending"]
    if not str(output_file).endswith(ending):
        raise ValueError(f"output_file must end with {ending!r}: {output_file}")
    parts = model_folder.name.split("__")  # <Trainer>__<Plans>__<configuration>, as nnU-Net names it
    configs = json.loads((model_folder / "plans.json").read_text())["configurations"]
    previous = configs.get(parts[-1], {}).get("previous_stage") if len(parts) == 3 else None
    if previous is None or prev_stage_predictions is not None:
        return _predict(model_folder, folds, Path(input_file), str(output_file)[:-len(ending)], disable_tta,
                        prev_stage_predictions, checkpoint_name)
    with tempfile.TemporaryDirectory(prefix="nnunet-prev-stage-") as prev:
        case = Path(input_file).name[:-(len(ending) + 5)]  # nnU-Net's own case id rule (strips _0000<ending>)
        predict_with_nnunet(model_folder.parent / f"{parts[0]}__{parts[1]}__{previous}", folds, input_file,
                            Path(prev) / f"{case}{ending}", disable_tta, None, checkpoint_name)
        return predict_with_nnunet(model_folder, folds, input_file, output_file, disable_tta, Path(prev),
                                   checkpoint_name)


def _predict(model_folder: Path, folds: Folds, input_file: Path, output_truncated: str, disable_tta: bool,
             prev_stage_predictions: Optional[Path], checkpoint_name: str) -> Path:
    import multiprocessing

    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    threads = torch.get_num_threads()
    torch.set_num_threads(multiprocessing.cpu_count())  # as the CLI does for -device cpu
    try:
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=not disable_tta,
                                    perform_everything_on_device=True, device=torch.device("cpu"), verbose=False,
                                    verbose_preprocessing=False, allow_tqdm=False)
        with trainer_lookup():
            predictor.initialize_from_trained_model_folder(
                str(model_folder), [f if f == "all" else int(f) for f in folds], checkpoint_name)
        predictor.predict_from_files(
            [[str(input_file)]], [output_truncated], save_probabilities=False, overwrite=True,
            num_processes_preprocessing=1, num_processes_segmentation_export=1,
            folder_with_segs_from_prev_stage=None if prev_stage_predictions is None else str(prev_stage_predictions),
            num_parts=1, part_id=0)
    finally:
        torch.set_num_threads(threads)
    return Path(output_truncated + predictor.dataset_json["file_ending"])


# --------------------------------------------------------------------------- the build, in the child process
def _make_raw(kind: str, root: Path) -> None:
    """Phantom cases (KiTS layout) -> ``nnUNet_raw/DatasetNNN_Name`` with ``kind``'s label table."""
    from KidneyTumorSegLib.phantom.phantom_io import write_phantom_cases
    from ktstrain.nnunet_export import export_nnunet_dataset

    k = KINDS[kind]
    cases = write_phantom_cases(root / "kits_cases", N_CASES, k.seed0, shape=SHAPE, spacing=SPACING,
                                cyst_label=True, n_cysts=1, write_info=False)
    export_nnunet_dataset(cases[0].parent, root / "nnUNet_raw", k.dataset_id, k.name, k.table)


def _shrink(config: dict) -> None:
    """Narrow one plans configuration's network: ``features_per_stage`` / ``FEATURE_DIVISOR``."""
    arch = config.get("architecture")
    if arch:
        kw = arch["arch_kwargs"]
        kw["features_per_stage"] = [max(4, int(f) // FEATURE_DIVISOR) for f in kw["features_per_stage"]]


def _add_lowres(planner, plans: dict) -> None:
    """Add 3d_lowres (twice 3d_fullres' spacing) and 3d_cascade_fullres as nnU-Net's planner writes them.

    The planner drops 3d_lowres for images this small; its own
    ``get_plans_for_configuration`` makes the configuration here, and the
    keys, flags and order are those of ``ExperimentPlanner.plan_experiment``.
    """
    import numpy as np

    configs = plans["configurations"]
    full = configs["3d_fullres"]
    spacing = np.array(full["spacing"], float) * 2.0
    shape = [int(round(s / 2.0)) for s in full["median_image_size_in_voxels"]]
    lowres = planner.get_plans_for_configuration(spacing, shape, planner.generate_data_identifier("3d_lowres"),
                                                 float(np.prod(shape) * len(planner.dataset)), {})
    lowres["batch_dice"], full["batch_dice"] = False, True
    lowres["next_stage"] = "3d_cascade_fullres"
    plans["configurations"] = {"2d": configs["2d"], "3d_lowres": lowres, "3d_fullres": full,
                               "3d_cascade_fullres": {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}}


def _plan(kind: str, root: Path) -> None:
    """Fingerprint, plan, post-edit the plans, write a 2-fold split, preprocess (nnU-Net's API, 1 process)."""
    from batchgenerators.utilities.file_and_folder_operations import load_json, save_json
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprints, plan_experiments,
                                                                      preprocess)

    k = KINDS[kind]
    extract_fingerprints([k.dataset_id], num_processes=1, check_dataset_integrity=True, show_progress_bar=False)
    plan_experiments([k.dataset_id])
    planner = ExperimentPlanner(k.dataset_id)
    plans_file = root / "nnUNet_preprocessed" / dataset_folder_name(kind) / f"{PLANS}.json"
    plans = load_json(str(plans_file))
    if k.cascade:
        _add_lowres(planner, plans)
    for config in plans["configurations"].values():
        _shrink(config)
    planner.save_plans(plans)
    # two folds whose validation cases cover every case: 3d_lowres folds 0 + 1 predict all the cascade needs
    ids = sorted(planner.dataset)
    half = len(ids) // 2
    save_json([{"train": ids[half:], "val": ids[:half]}, {"train": ids[:half], "val": ids[half:]}],
              str(plans_file.parent / "splits_final.json"))
    configs = sorted({c for c, _ in k.runs} - {"3d_cascade_fullres"})  # the cascade trains on 3d_fullres' data
    preprocess([k.dataset_id], PLANS, configs, [1] * len(configs), show_progress_bar=False)


def _train(kind: str, configuration: str, fold: int) -> None:
    """What ``nnUNetv2_train ID CONFIG FOLD -tr TRAINER -device cpu`` does, for ``ITERATIONS`` only."""
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    with trainer_lookup():
        trainer = get_trainer_from_args(str(KINDS[kind].dataset_id), configuration, fold, KINDS[kind].trainer,
                                        PLANS, device=torch.device("cpu"))
    for name, value in ITERATIONS.items():
        setattr(trainer, name, value)
    trainer.run_training()
    trainer.perform_actual_validation(False)  # 3d_lowres: also writes predicted_next_stage/3d_cascade_fullres


def _build(kind: str, root: Path) -> None:
    import multiprocessing

    import torch

    torch.set_num_threads(multiprocessing.cpu_count())  # as nnUNetv2_train -device cpu
    t0 = time.perf_counter()
    _make_raw(kind, root)
    _plan(kind, root)
    print(f"[nnunet_fixture] {kind}: data, plans, preprocessing {time.perf_counter() - t0:.1f} s", flush=True)
    os.environ["nnUNet_n_proc_DA"] = "0"  # nnU-Net's single-threaded augmenter: no data loader processes
    for configuration, fold in KINDS[kind].runs:
        t = time.perf_counter()
        _train(kind, configuration, fold)
        print(f"[nnunet_fixture] {kind}: {configuration} fold {fold} trained in {time.perf_counter() - t:.1f} s",
              flush=True)
    print(f"[nnunet_fixture] {kind}: built in {time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    _build(sys.argv[1], Path(sys.argv[2]))

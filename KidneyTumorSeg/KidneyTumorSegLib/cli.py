"""``kidneytumorseg``: segment, make phantoms, evaluate, show the model card.

Exit status: 0 when every case succeeded, 1 when any case failed or had no
kidney (nothing is written for it), 2 for bad arguments or an unusable model.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from . import __version__
from .cli_checks import dicom_seg_problem, duplicate_case_problem, events_problem, output_problem
from .cli_models import add_import_parser, add_model_options, cmd_import_model
from .cli_web import add_web_parser, cmd_web
from .run_settings import add_run_options

log = logging.getLogger("kidneytumorseg")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kidneytumorseg", description="Kidney and kidney-tumor segmentation in abdominal CT.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    sub = p.add_subparsers(dest="command", required=True)
    _add_segment_parser(sub)
    _add_phantom_parser(sub)
    ev = sub.add_parser("evaluate", help="KiTS19 metrics of predictions against references")
    ev.add_argument("pred", help="prediction file or folder")
    ev.add_argument("gt", help="reference file or folder")
    ev.add_argument("--csv", help="per-case CSV (default: <pred>/metrics.csv when pred is a folder)")
    ev.add_argument("--summary", help="summary JSON")
    ev.add_argument("--overwrite", action="store_true")

    inf = sub.add_parser("info", help="show the model card, the device that will be used and the models installed")
    inf.add_argument("--model", help="model bundle folder or nnU-Net model (default: the shipped model)")
    add_model_options(inf)
    inf.add_argument("--device", default="auto")
    add_import_parser(sub)
    add_web_parser(sub)
    return p


def _add_segment_parser(sub) -> None:
    s = sub.add_parser("segment", help="segment kidneys and tumors in CT scans")
    s.add_argument("inputs", nargs="+", help="CT file (NIfTI, NRRD, MHA), DICOM folder, KiTS case folder, folder of "
                                             "cases, glob, or a .csv list of cases (columns path and optional case_id)")
    s.add_argument("-o", "--output", required=True, help="output folder (one subfolder per case)")
    s.add_argument("--model", help="model bundle folder, or an nnU-Net v2 trained-model folder, its dataset folder "
                                   "or exported zip (default: the shipped model)")
    add_model_options(s)
    s.add_argument("--no-postprocess", action="store_true",
                   help="nnU-Net models: write the model's own label map of the whole scan (its argmax or region "
                        "decoding, its label values), as nnUNetv2_predict does; no cascade, no candidate choice")
    add_run_options(s)  # device, quality, sliding window, model values, ROI, optional outputs (RunSettings)
    s.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    s.add_argument("--resume", action="store_true",
                   help="skip cases whose output files are all there and segment the rest (a killed or failed run "
                        "goes on; failed cases are tried again); <output>/summary.csv lists every case")
    s.add_argument("--events", help="write machine-readable progress events to this file ('-' = stderr)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_phantom_parser(sub) -> None:
    ph = sub.add_parser("phantom", help="write synthetic abdominal CT cases with reference labels (KiTS layout)")
    ph.add_argument("output", help="output folder")
    ph.add_argument("-n", "--cases", type=int, default=1, help="number of cases (default 1)")
    ph.add_argument("--seed", type=int, default=0, help="seed of the first case (case n uses seed+n)")
    ph.add_argument("--shape", type=int, nargs=3, metavar=("K", "J", "I"), help="array shape (slices, rows, columns)")
    ph.add_argument("--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"), help="voxel spacing in mm")
    ph.add_argument("--tumors", type=int, help="tumors per case (default random 0..3)")
    ph.add_argument("--cysts", type=int, help="simple renal cysts per case, 0..10 (default random 0..2)")
    ph.add_argument("--cyst-label", action="store_true",
                    help="label cysts 3 (KiTS21/23 convention; training samples them as hard negatives); default 0")
    ph.add_argument("--randomize-intensity", action="store_true",
                    help="domain-randomised tissue intensities (as the shipped model's training phantoms)")
    ph.add_argument("--kits-label", help="KiTS19 or KiTS21/23 label map whose kidneys, tumors, cysts and geometry "
                                         "shape the phantom")
    ph.add_argument("--organ-contact", type=float, default=0.5,
                    help="probability per kidney that liver/spleen touch it with no fat plane (default 0.5)")
    ph.add_argument("--bowel-contact", type=float, default=0.0,
                    help="probability per side that enhancing small-bowel loops reach the kidney (default 0)")
    ph.add_argument("--hypervascular", type=float, default=0.0,
                    help="probability per tumor that it enhances almost as much as the cortex, as clear-cell RCC "
                         "in the arterial phase (default 0)")
    ph.add_argument("--dicom", action="store_true", help="also write each CT as a DICOM series in <case>/dicom/ "
                                                         "(needs kidneytumorseg[dicom])")
    ph.add_argument("--overwrite", action="store_true")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        return {"segment": cmd_segment, "phantom": cmd_phantom, "evaluate": cmd_evaluate, "info": cmd_info,
                "import-model": cmd_import_model, "web": cmd_web}[args.command](args)
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130


# --------------------------------------------------------------------------
def cmd_segment(args) -> int:
    import dataclasses

    from .batch import Ranks, end_group, rank_device, start_group, summary_problem, wants_summary
    from .run_settings import RunSettings

    ranks = Ranks.from_env()
    settings = RunSettings.from_args(args)
    settings = dataclasses.replace(settings, device=rank_device(settings.device, ranks))
    problem = dicom_seg_problem(settings, args.no_postprocess)
    cases = None if problem else _checked_cases(args)
    if cases is not None and wants_summary(args, len(cases), ranks):
        problem = summary_problem(args.output, args)
    if problem or cases is None:
        if problem:
            log.error("%s", problem)
        return 2
    start_group(ranks, settings.device)
    try:
        return _segment_run(args, settings, cases, ranks)
    finally:
        end_group(ranks)


def _segment_run(args, settings, cases, ranks) -> int:
    """Load the model (once per rank) and segment the cases; the exit status."""
    from .batch import all_ok
    from .bundles.bundle import BundleError
    from .cli_models import model_options
    from .events import EventWriter
    from .pipeline import Segmenter

    with _event_stream(args.events if ranks.main else None) as stream:
        events = EventWriter(stream)
        seg, why = None, ""
        try:
            seg = Segmenter(args.model, settings, nnunet=model_options(args))
        except (BundleError, RuntimeError, ValueError, OSError) as exc:
            why = str(exc)
        if seg is not None and args.no_postprocess and (seg.nnunet_model() is None or settings.roi):
            why = "--no-postprocess: " + ("--roi does not apply: the model runs on the whole scan" if settings.roi else
                                          f"{seg.bundle.name}: --no-postprocess needs an nnU-Net model given as "
                                          "--model (every stage one model)")
        if not all_ok(not why, ranks):
            log.error("%s", why or "another rank could not load the model")
            if seg is None:
                events.emit("case_failed", case=None, error=why)
            events.emit("done", ok=0, failed=len(cases))
            return 2
        events.emit("start", cases=len(cases), model=seg.bundle.name, device=str(seg.device))
        log.info("%d case(s); model %s; device %s; TTA %d%s", len(cases), seg.bundle.name, seg.device, settings.tta,
                 f"; rank {ranks.rank} of {ranks.world}" if ranks.world > 1 else "")
        if seg.bundle.limitations and ranks.main:
            log.warning("%s", f"Model {seg.bundle.name}: {seg.bundle.limitations}")
        failed = _segment_cases(args, seg, cases, events, ranks)
    return 0 if failed == 0 else 1


def _checked_cases(args):
    """The cases of ``args.inputs`` (``[(case_id, path), ...]``), or None (logged why) when the run is refused:
    an input that cannot be found, two inputs for one output folder, an unusable ``--events`` or output folder."""
    from .geometry.volume import InputError
    from .io.volume_io import find_cases

    cases = []
    try:
        for spec in args.inputs:
            cases.extend(find_cases(spec))
    except InputError as exc:
        log.error("%s", exc)
        return None
    problem = (duplicate_case_problem(cases, args.output) or events_problem(args.events, [p for _, p in cases])
               or output_problem(args.output))
    if problem:
        log.error("%s", problem)
        return None
    return cases


def _segment_cases(args, seg, cases, events, ranks) -> int:
    """Segment this rank's share of the pending cases (one plan of files each, checked before it is read) and,
    on rank 0, write the summary (``batch``); returns how many cases failed (on rank 0: on every rank)."""
    from .batch import COMPLETE, RankLog, pending, run_cases, share, wait_for_ranks, wants_summary, write_summary
    from .cli_progress import CaseProgress
    from .io.outputs import RAW_KINDS, case_kinds, plan_case

    settings = seg.runtime
    kinds = RAW_KINDS if args.no_postprocess else case_kinds(settings.preview, settings.save_candidates,
                                                             settings.dicom_seg)
    input_paths = [p for _, p in cases]
    plans = {case_id: plan_case(args.output, case_id, kinds, args.overwrite, input_paths) for case_id, _ in cases}
    logs = Path(args.output) / ".batch"
    if ranks.main:
        for old in logs.glob("rank*.jsonl"):  # an earlier run's; before any rank opens its own
            old.unlink()
    todo, skipped = share(pending(cases, plans, args.resume) if ranks.main else None, ranks)
    if skipped and ranks.main:
        log.info("%d case(s) skipped: %s (--resume)", len(skipped), COMPLETE)
    mine = todo[ranks.rank::ranks.world]
    summary = wants_summary(args, len(cases), ranks)
    rank_log = RankLog(args.output, ranks, to_file=summary)
    t0 = time.perf_counter()
    failed = run_cases(mine, len(todo), ranks, lambda n, case_id, path: _segment_one(
        args, seg, plans[case_id], path, events,
        CaseProgress(events, case_id, n, len(mine), bar=not args.no_progress and ranks.main)), rank_log, t0)
    rank_log.finish()
    events.emit("done", ok=len(rank_log.rows) - failed, failed=failed)
    if not ranks.main:
        return failed
    rows = wait_for_ranks(logs, ranks, len(todo), t0) if ranks.world > 1 else rank_log.rows
    if summary:
        log.info("summary: %s", write_summary(list(skipped) + rows, args.output))
    return sum(r["status"] == "failed" for r in rows)


def _segment_one(args, seg, plan, path, events, progress) -> Optional[str]:
    """Segment one case (:func:`_segment_case`), log and emit the outcome; None, or why it failed. Any error
    fails this case only: a batch of thousands goes on (an unexpected one is logged with its traceback)."""
    from .geometry.volume import InputError

    t0 = time.perf_counter()
    try:
        outs, messages = _segment_case(args, seg, plan, path, progress, t0)
    except Exception as exc:  # noqa: BLE001 - recorded in the summary, the run goes on
        progress.close()
        expected = isinstance(exc, (InputError, FileExistsError, ValueError, RuntimeError, OSError))
        why = str(exc) if expected else f"unexpected {type(exc).__name__}: {exc}"
        (log.error if expected else log.exception)("%s: %s", plan.case_id, why)
        events.emit("case_failed", case=plan.case_id, error=why)
        return why
    progress.close()
    for m in messages:
        log.info("%s: %s", plan.case_id, m)
    log.info("%s: written to %s (%.1f s)", plan.case_id, plan.folder, time.perf_counter() - t0)
    events.emit("case_done", case=plan.case_id, status="ok", outputs={k: str(v) for k, v in outs.items()},
                messages=messages)
    return None


def _segment_case(args, seg, plan, path, progress, t0):
    """Segment one case and write the files of its ``plan``; returns (paths written, messages). Raises on
    failure, writing nothing."""
    from .io.outputs import write_planned_case, write_raw_outputs
    from .geometry.volume import InputError
    from .io.volume_io import read_volume, validate_ct

    plan.check()
    image = read_volume(path)
    for w in validate_ct(image):
        log.warning("%s: %s", plan.case_id, w)
    if "dicom_seg" in plan.paths:
        from .io.dicom_seg import series_files
        series_files(image)  # a DICOM series input, or refused before any inference
    extra = {"model": seg.bundle.name, "model_version": seg.bundle.version, "model_sha256": seg.bundle.manifest_sha256(),
             "device": str(seg.device), "tta": seg.runtime.tta}
    if args.no_postprocess:
        progress("kidney", 0.0, "running the model on the whole scan")
        label, names = seg.segment_raw(image)
        progress("write", 0.0, "writing results")
        extra["seconds"] = round(time.perf_counter() - t0, 2)
        outs = write_raw_outputs(label, names, image, plan, extra_report=extra)
        progress("write", 1.0, "done")
        return outs, ["the model's own label map (no cascade, no candidate choice)"]
    result = seg.segment(image, roi=seg.runtime.roi, progress=progress)
    if result.status == "no_kidney":
        raise InputError("; ".join(result.messages) + " (nothing written)")
    for reason in result.plausibility.get("reasons", []):
        log.warning("%s: implausible result: %s", plan.case_id, reason)
    progress("write", 0.0, "writing results")
    extra.update(tumor_growth={"passes": seg.post.tumor_growth_passes, "mm": seg.post.tumor_growth_mm},
                 seconds=round(time.perf_counter() - t0, 2))
    outs = write_planned_case(result, image, plan, extra_report=extra)
    progress("write", 1.0, "done")
    return outs, result.messages


def cmd_phantom(args) -> int:
    from .phantom import write_phantom_cases
    from .geometry.volume import InputError

    if args.dicom:
        from .io.dicom_seg import INSTALL_HINT
        import importlib.util

        if importlib.util.find_spec("pydicom") is None:
            log.error("--dicom needs pydicom: %s", INSTALL_HINT)
            return 2
    kits = None
    if args.kits_label:
        from .io.volume_io import read_label
        try:
            kits = read_label(args.kits_label)
        except InputError as exc:
            log.error("%s", exc)
            return 2
    try:
        paths = write_phantom_cases(args.output, args.cases, seed0=args.seed, shape=tuple(args.shape) if args.shape else None,
                                    spacing=tuple(args.spacing) if args.spacing else None, n_tumors=args.tumors,
                                    n_cysts=args.cysts, kits_label=kits, overwrite=args.overwrite,
                                    organ_contact=args.organ_contact, bowel_contact=args.bowel_contact,
                                    hypervascular=args.hypervascular,
                                    cyst_label=args.cyst_label, randomize_intensity=args.randomize_intensity,
                                    dicom=args.dicom)
    except (FileExistsError, ValueError) as exc:
        log.error("%s", exc)
        return 1
    for p in paths:
        log.info("wrote %s", p)
    return 0


def cmd_evaluate(args) -> int:
    from .evaluation.evaluate import evaluate
    from .geometry.volume import InputError

    csv = args.csv
    if csv is None and Path(args.pred).is_dir():
        csv = str(Path(args.pred) / "metrics.csv")
    try:
        rows, summary = evaluate(args.pred, args.gt, out_csv=csv, summary_json=args.summary, overwrite=args.overwrite)
    except (InputError, FileExistsError, ValueError) as exc:
        log.error("%s", exc)
        return 1
    print(json.dumps(summary, indent=2))
    return 0


def cmd_info(args) -> int:
    import torch

    from .bundles.bundle import BundleError, default_bundle_path
    from .cli_models import model_options
    from .engine.device import resolve_device
    from .bundles.nnunet_bundle import model_bundle
    from .bundles.nnunet_folder import discover_models

    info = {"kidneytumorseg": __version__, "python": sys.version.split()[0], "torch": torch.__version__}
    try:
        dev = resolve_device(args.device)
        info["device"] = str(dev)
        if dev.type == "cuda":
            info["gpu"] = torch.cuda.get_device_name(dev)
            info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(dev).total_memory / 2**30, 1)
        else:
            info["cpu_threads"] = torch.get_num_threads()
    except (RuntimeError, ValueError) as exc:
        info["device_error"] = str(exc)
    path = Path(args.model) if args.model else default_bundle_path()
    try:
        info["model"] = model_bundle(path, **model_options(args)).card()
    except (BundleError, ValueError, OSError) as exc:
        info["model_error"] = str(exc)
    info["installed_models"] = discover_models()
    print(json.dumps(info, indent=2))
    return 0 if "model" in info and "device_error" not in info else 2


# --------------------------------------------------------------------------
@contextlib.contextmanager
def _event_stream(target: Optional[str]):
    if not target:
        yield None
    elif target == "-":
        yield sys.stderr
    else:
        with open(target, "w", encoding="utf-8") as f:
            yield f


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The files written for one segmented case.

``<outdir>/<case>/``:

* ``<case>.label.nii.gz``: KiTS labels 0/1/2, uint8, on the input grid
* ``<case>.seg.nrrd``: Slicer segmentation (Kidney left / right, Kidney tumor)
* ``<case>.report.json``: kidneys, tumor candidates, messages, timings, model
* ``<case>.preview.png``: axial and coronal views through the largest tumor
* ``<case>.candidates.nii.gz`` (optional): every tumor candidate's id (kept
  or rejected, as in the report), uint16, so an annotator can add a rejected
  candidate or remove a kept one
* ``<case>.seg.dcm`` (optional, for a DICOM series input): the segments of the ``.seg.nrrd`` as a
  DICOM SEG referencing the source series (``dicom_seg``)

A case's files are written together (``case_folder``): into a staging folder, then moved into the
case folder only once all of them are written, so the case folder is complete or absent. Where they
go is decided once per case (:func:`plan_case`): the plan is checked before anything is read or
computed (:meth:`CasePlan.check`), so a refused case leaves the folder as it was, and the writers
write exactly the plan's files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple

import numpy as np

from .atomic import check_not_input, exists_message
from ..findings.findings import CascadeResult, segment_map
from ..findings.terminology import SEG_NRRD_SEGMENTS
from ..geometry.volume import Volume

SUFFIXES = {
    "label": ".label.nii.gz",
    "segmentation": ".seg.nrrd",
    "report": ".report.json",
    "preview": ".preview.png",
    "candidates": ".candidates.nii.gz",
    "dicom_seg": ".seg.dcm",
}
# what --no-postprocess writes: the model's own label map, as a segmentation too, and the report
RAW_KINDS = ("label", "segmentation", "report")


def case_folder(outdir: os.PathLike, case_id: str) -> Path:
    """The folder of case ``case_id``'s files in the output folder ``outdir``."""
    return Path(outdir) / case_id


def case_kinds(preview: bool = True, candidates: bool = False, dicom_seg: bool = False) -> Tuple[str, ...]:
    """The kinds of file a segmented case gets (module docstring): the preview unless left out, the
    candidate map and the DICOM SEG when asked for."""
    wanted = {"preview": preview, "candidates": candidates, "dicom_seg": dicom_seg}
    return tuple(k for k in SUFFIXES if wanted.get(k, True))


@dataclass
class CasePlan:
    """Where one case's files go: ``paths`` (kind -> file) of the kinds written, whether existing files
    may be replaced (``overwrite``), and the run's inputs, which are never written over."""

    case_id: str
    paths: Dict[str, Path]
    overwrite: bool = False
    inputs: Tuple[Path, ...] = ()

    @property
    def folder(self) -> Path:
        return next(iter(self.paths.values())).parent

    def check(self) -> None:
        """Raise before anything is written if a target exists (without ``overwrite``) or is an input."""
        for p in self.paths.values():
            check_not_input(p, self.inputs)
            if p.exists() and not self.overwrite:
                raise FileExistsError(exists_message(p))


def plan_case(outdir: os.PathLike, case_id: str, kinds: Sequence[str] = case_kinds(), overwrite: bool = False,
              inputs: Iterable[os.PathLike] = ()) -> CasePlan:
    """The plan of case ``case_id``'s files of ``kinds`` (keys of :data:`SUFFIXES`) in ``outdir``."""
    folder = case_folder(outdir, case_id)
    return CasePlan(case_id, {k: folder / f"{case_id}{SUFFIXES[k]}" for k in kinds}, overwrite,
                    tuple(Path(p) for p in inputs))


def write_case_outputs(
    result: CascadeResult,
    image: Volume,
    outdir: os.PathLike,
    case_id: str,
    overwrite: bool = False,
    preview: bool = True,
    candidates: bool = False,
    extra_report: Optional[Dict[str, Any]] = None,
    inputs: Iterable[os.PathLike] = (),
) -> Dict[str, Path]:
    """Check and write the case's files, all or none (``case_folder``); returns their paths by kind."""
    plan = plan_case(outdir, case_id, case_kinds(preview, candidates), overwrite, inputs)
    plan.check()
    return write_planned_case(result, image, plan, extra_report)


def write_planned_case(result: CascadeResult, image: Volume, plan: CasePlan,
                       extra_report: Optional[Dict[str, Any]] = None) -> Dict[str, Path]:
    """Write the files of ``plan`` (checked by the caller), all or none; returns their paths by kind."""
    from .preview import write_preview
    from .jsonfile import write_json
    from .dicom_seg import algorithm, series_files, write_dicom_seg
    from .writers import write_labelmap, write_seg_nrrd

    seg = result.label.with_array(segment_map(result.label.array, result.sides.array))
    report = dict(case=plan.case_id, source=str(image.meta.get("source", "")), **result.report())
    report["outputs"] = {k: p.name for k, p in plan.paths.items()}
    if extra_report:
        report.update(extra_report)
    writers = {
        "label": lambda path: write_labelmap(result.label, path),
        "segmentation": lambda path: write_seg_nrrd(seg, path, SEG_NRRD_SEGMENTS),
        "report": lambda path: write_json(report, path),
        "candidates": lambda path: write_candidates(result.candidates, path),
        "preview": lambda path: write_preview(result.canonical_image, result.canonical_label, path,
                                              focus=_largest_kept_tumor_centre(result, result.canonical_image)),
        "dicom_seg": lambda path: write_dicom_seg(seg, series_files(image), path, algorithm(report)),
    }
    _write_staged(plan, writers)
    return dict(plan.paths)


def _write_staged(plan: CasePlan, writers: Dict[str, Any]) -> None:
    """Write every file of ``plan`` with its kind's writer in a staging folder, then move them in together."""
    from .case_folder import staged_case_folder, write_file

    with staged_case_folder(plan.folder, overwrite=plan.overwrite) as staging:
        for kind, final in plan.paths.items():
            write_file(final, staging / final.name, writers[kind])


def _largest_kept_tumor_centre(result: CascadeResult, can: Volume):
    """Canonical ``(k, j, i)`` index of the largest kept tumor's centre, or ``None``."""
    kept = [c for c in result.tumors if c.kept]
    if not kept or can is None:
        return None
    biggest = max(kept, key=lambda c: c.volume_ml)
    i, j, k = np.rint(can.world_to_index(np.asarray(biggest.centre_lps_mm))).astype(int)
    return (int(k), int(j), int(i))


def write_candidates(cand: Volume, path: Path, overwrite: bool = False) -> None:
    """The uint16 candidate-id map as NIfTI, atomically."""
    import SimpleITK as sitk

    from .atomic import atomic_write
    from .volume_io import volume_to_sitk

    img = volume_to_sitk(cand.with_array(cand.array.astype(np.uint16)))
    atomic_write(path, lambda tmp: sitk.WriteImage(img, tmp, True), overwrite=overwrite)


def write_raw_outputs(label: Volume, names: Dict[int, str], image: Volume, plan: CasePlan,
                      extra_report: Optional[Dict[str, Any]] = None) -> Dict[str, Path]:
    """A model's own label map (``--no-postprocess``; ``plan`` of :data:`RAW_KINDS`, checked by the caller):
    ``<case>.label.nii.gz`` with the model's label values, ``<case>.seg.nrrd`` with a segment per label
    name, and ``<case>.report.json`` naming the values. No candidates, no findings and no preview: stage 4
    did not run."""
    from ..findings.terminology import segments_for_names
    from .jsonfile import write_json
    from .writers import write_labelmap, write_seg_nrrd

    present = sorted(int(v) for v in names if int(v) and np.any(label.array == int(v)))
    report = {"case": plan.case_id, "source": str(image.meta.get("source", "")), "status": "ok", "postprocess": False,
              "label_values": {str(v): n for v, n in sorted(names.items())}, "labels_present": present,
              "messages": ["the model's own label map: no cascade, no candidate choice (--no-postprocess)"],
              "outputs": {k: p.name for k, p in plan.paths.items()}}
    report.update(extra_report or {})
    _write_staged(plan, {"label": lambda path: write_labelmap(label, path),
                         "segmentation": lambda path: write_seg_nrrd(label, path, segments_for_names(names)),
                         "report": lambda path: write_json(report, path)})
    return dict(plan.paths)

"""The settings of one ``segment`` run: one object from the Slicer panel to the :class:`pipeline.Segmenter`.

:class:`RunSettings` is a :class:`config.RuntimeConfig` (what the predictors take) plus the run's
region of interest and its optional outputs. The command line's options for these settings are
defined here (:func:`add_run_options`), next to the two conversions: :meth:`RunSettings.to_argv`
(the Slicer module's background process builds its command line with it) and
:meth:`RunSettings.from_args` (the command line builds the object from its parsed arguments). A
round trip settings -> argv -> parser -> settings gives the same settings.

The fields that replace a model's own value (``candidate_threshold``, ``keep_components``,
``tumor_growth_passes``, ``tumor_growth_mm``) are None unless set; None runs with the model's value
and puts no option on the command line.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import List, Optional

from .cli_checks import float_arg, int_arg, roi_arg
from .config import RuntimeConfig
from .engine.device import PRECISIONS
from .presets import Quality
from .geometry.volume import RoiWorld


@dataclass(frozen=True)
class RunSettings(RuntimeConfig):
    """A :class:`config.RuntimeConfig` (device, TTA, sliding window, precision, threads and the
    model values a run may replace) plus ``roi`` (a :class:`volume.RoiWorld` that replaces stage 1),
    ``save_candidates`` (also write the candidate map), ``preview`` (write the PNG preview) and ``dicom_seg``
    (also write a DICOM SEG, for a DICOM series input)."""

    roi: Optional[RoiWorld] = None
    save_candidates: bool = False
    preview: bool = True
    dicom_seg: bool = False

    def to_argv(self) -> List[str]:
        """The ``segment`` options that give these settings (none for a value left at its default)."""
        argv: List[str] = []
        for name, flag in _VALUE_OPTIONS:
            value = getattr(self, name)
            if value != getattr(_DEFAULTS, name):  # the parser gives the default anyway
                # repr: a float comes back exactly as it was
                argv += [flag, repr(float(value)) if isinstance(value, float) else str(value)]
        if self.roi is not None:
            # "=": the value may start with a minus sign, which would read as an option
            argv.append("--roi=" + ",".join(repr(float(v)) for v in tuple(self.roi.lo) + tuple(self.roi.hi)))
        if self.save_candidates:
            argv.append("--save-candidates")
        if not self.preview:
            argv.append("--no-preview")
        if self.dicom_seg:
            argv.append("--dicom-seg")
        return argv

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> "RunSettings":
        """The settings of the options :func:`add_run_options` defined, from parsed arguments."""
        return cls(device=ns.device, tta=Quality.FULL.tta if ns.full else ns.tta,
                   overlap=ns.overlap, sw_batch_size=ns.batch, precision=ns.precision, threads=ns.threads,
                   candidate_threshold=ns.candidate_threshold, keep_components=ns.keep_components,
                   tumor_growth_passes=ns.tumor_growth, tumor_growth_mm=ns.tumor_growth_mm,
                   roi=None if ns.roi is None else RoiWorld(tuple(ns.roi[:3]), tuple(ns.roi[3:])),  # lo < hi: roi_arg
                   save_candidates=ns.save_candidates, preview=not ns.no_preview, dicom_seg=ns.dicom_seg)


_DEFAULTS = RunSettings()
# (field, option) of the settings given as an option with a value (the rest: --roi= and three switches)
_VALUE_OPTIONS = (("device", "--device"), ("tta", "--tta"), ("overlap", "--overlap"), ("sw_batch_size", "--batch"),
                  ("precision", "--precision"), ("threads", "--threads"),
                  ("candidate_threshold", "--candidate-threshold"), ("keep_components", "--keep-components"),
                  ("tumor_growth_passes", "--tumor-growth"), ("tumor_growth_mm", "--tumor-growth-mm"))


def add_run_options(s: argparse.ArgumentParser) -> None:
    """The ``segment`` options of :class:`RunSettings` (their defaults are its defaults)."""
    d = _DEFAULTS
    s.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N (default auto)")
    q = s.add_mutually_exclusive_group()
    q.add_argument("--fast", action="store_true", help="no test-time augmentation (default)")
    q.add_argument("--full", action="store_true", help=f"report 000's {Quality.FULL.tta} test-time augmentations")
    q.add_argument("--tta", type=int_arg(1, 12), default=d.tta, help="number of test-time augmentations, 1 to 12")
    s.add_argument("--overlap", type=float_arg(0.0, 0.9), default=d.overlap,
                   help=f"sliding-window overlap 0..0.9 (default {d.overlap:g})")
    s.add_argument("--batch", type=int_arg(1), default=d.sw_batch_size,
                   help=f"windows per forward pass (default {d.sw_batch_size})")
    s.add_argument("--precision", default=d.precision, choices=list(PRECISIONS))
    s.add_argument("--threads", type=int_arg(0), default=d.threads, help="CPU threads for torch (default: torch's choice)")
    s.add_argument("--candidate-threshold", type=float_arg(0.0, 1.0),
                   help="keep a tumor candidate when its mean probability is at least this (model default 0.8)")
    s.add_argument("--keep-components", type=int, choices=[1, 2], help="kidneys to keep (model default 2)")
    s.add_argument("--tumor-growth", type=int, metavar="PASSES",
                   help="run the tumor stage again, at most PASSES (0-8) more times, around kept tumors that reach "
                        "past the kidney stage's outline (exophytic tumors it missed); default: the model's setting "
                        "(the shipped model: 1)")
    s.add_argument("--tumor-growth-mm", type=float_arg(0.0, 50.0), metavar="MM",
                   help="how far past those tumors a growth pass looks (default: the model's, else 13 mm)")
    s.add_argument("--roi", type=roi_arg, metavar="X0,Y0,Z0,X1,Y1,Z1", help="region of interest in LPS mm; replaces stage 1")
    s.add_argument("--no-preview", action="store_true", help="do not write the PNG preview")
    s.add_argument("--save-candidates", action="store_true", help="also write <case>.candidates.nii.gz (tumor candidate ids)")
    s.add_argument("--dicom-seg", action="store_true",
                   help="also write <case>.seg.dcm, a DICOM SEG referencing the input DICOM series (needs "
                        "kidneytumorseg[dicom])")

"""Checks of ``kidneytumorseg segment``'s arguments, made before anything is read, loaded or written.

The ``*_arg`` factories make argparse ``type=`` functions: a bad value is
refused by the parser (``error: argument --tta: ...``, exit status 2). The
pre-run checks need the cases found or the file system and return a message
(``None`` when all is well) that the command logs before it exits with status 2.
"""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional, Sequence, Tuple

from .io.atomic import check_not_input

ROI_FIELDS = ("X0", "Y0", "Z0", "X1", "Y1", "Z1")


def int_arg(lo: int, hi: Optional[int] = None) -> Callable[[str], int]:
    """A whole number from ``lo`` to ``hi`` (no upper limit when ``hi`` is None)."""
    what = f"a whole number from {lo} to {hi}" if hi is not None else f"a whole number of at least {lo}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    return parse


def float_arg(lo: float, hi: float) -> Callable[[str], float]:
    """A finite number from ``lo`` to ``hi`` (both included); ``nan`` and ``inf`` are refused."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and lo <= value <= hi):
            raise argparse.ArgumentTypeError(f"must be a finite number from {lo:g} to {hi:g}, got {text!r}")
        return value

    return parse


def roi_arg(text: str) -> Tuple[float, ...]:
    """``X0,Y0,Z0,X1,Y1,Z1`` (commas or spaces): finite numbers, each low corner value below its high one."""
    parts = text.replace(",", " ").split()
    if len(parts) != len(ROI_FIELDS):
        raise argparse.ArgumentTypeError(f"expected 6 numbers {','.join(ROI_FIELDS)}, got {text!r}")
    values = []
    for name, part in zip(ROI_FIELDS, parts):
        try:
            value = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {part!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{name} must be a finite number, got {part!r}")
        values.append(value)
    for axis in range(3):
        if not values[axis] < values[axis + 3]:
            lo, hi = ROI_FIELDS[axis], ROI_FIELDS[axis + 3]
            raise argparse.ArgumentTypeError(f"{lo} must be less than {hi}, got {lo}={parts[axis]} and "
                                             f"{hi}={parts[axis + 3]}")
    return tuple(values)


def _same_file_key(path: os.PathLike) -> str:
    return os.path.normcase(str(Path(path).resolve()))


def duplicate_case_problem(cases: Sequence[Tuple[str, Path]], output: str) -> Optional[str]:
    """Why ``cases`` (``[(case_id, path), ...]``) cannot be run together, or None.

    Refused: one input named twice (also through its folder, a glob or another
    spelling), and two inputs whose case ids give one output folder; ids that
    differ only in letter case count as one, as they do on Windows and macOS.
    """
    from .io.outputs import case_folder

    by_path: Dict[str, str] = {}
    by_folder: Dict[str, Tuple[str, Path]] = {}
    for case_id, path in cases:
        key = _same_file_key(path)
        if key in by_path:
            return f"the input '{path}' is given more than once (case id '{by_path[key]}'); nothing was run"
        by_path[key] = case_id
        folder = case_id.casefold()
        if folder in by_folder:
            first_id, first = by_folder[folder]
            target = case_folder(output, case_id)
            if first_id == case_id:
                why = (f"case id '{case_id}' of '{path}' is also that of '{first}': both would be written to the "
                       f"folder '{target}'")
            else:
                why = (f"case ids '{first_id}' of '{first}' and '{case_id}' of '{path}' differ only in letter case: "
                       f"on Windows and macOS both would be written to the folder '{target}'")
            return why + "; rename one, or segment them in separate runs; nothing was run"
        by_folder[folder] = (case_id, path)
    return None


def events_problem(target: Optional[str], inputs: Iterable[os.PathLike] = ()) -> Optional[str]:
    """Why ``--events target`` cannot be written, or None (also for no target and ``-``, stderr).

    Nothing is created: the file is opened only once every check has passed.
    """
    if not target or target == "-":
        return None
    path = Path(target)
    if path.is_dir():
        return f"--events: '{target}' is a folder; give a file name (or '-' for stderr)"
    try:
        check_not_input(path, inputs)
    except ValueError:
        return f"--events: '{target}' is an input; writing the events there would replace it"
    folder = path.absolute().parent
    if not folder.exists():
        return f"--events: cannot write '{target}': the folder '{folder}' does not exist"
    if not folder.is_dir():
        return f"--events: cannot write '{target}': '{folder}' is not a folder"
    if path.exists():
        if not os.access(path, os.W_OK):
            return f"--events: cannot write '{target}': no permission to write this file"
    elif not os.access(folder, os.W_OK | os.X_OK):
        return f"--events: cannot write '{target}': no permission to write in the folder '{folder}'"
    return None


def output_problem(outdir: os.PathLike) -> Optional[str]:
    """Why nothing could be written in the output folder, or None; nothing is created. Found before inference."""
    from .io.case_folder import OutputError, check_output_folder

    try:
        check_output_folder(outdir)
    except OutputError as exc:
        return str(exc)
    return None


def dicom_seg_problem(settings, no_postprocess: bool) -> Optional[str]:
    """Why ``--dicom-seg`` cannot be honoured before any case is read (None when it can, or was not asked)."""
    if not settings.dicom_seg:
        return None
    if no_postprocess:
        return "--dicom-seg: not with --no-postprocess (the SEG holds the kidneys and kept tumors of the cascade)"
    from .geometry.volume import InputError
    from .io.dicom_seg import require_highdicom

    try:
        require_highdicom()
    except InputError as exc:
        return f"--dicom-seg: {exc}"
    return None

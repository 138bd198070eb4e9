"""What kind of input a path is: image suffixes, KiTS file names, DICOM detection.

The bottom layer shared by the reader (``volume_io``) and case discovery
(``cases``); it imports neither, so neither imports the other.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Tuple, Union

import SimpleITK as sitk

PathLike = Union[str, Path]

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
KITS_IMAGE = "imaging.nii.gz"
KITS_LABEL = "segmentation.nii.gz"
SUPPORTED = "NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd), a DICOM series folder or a KiTS case folder"


def image_suffix(path: PathLike) -> str:
    """The image suffix of ``path`` (lower case, ``.nii.gz`` whole), or ``''``."""
    name = Path(path).name.lower()
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    return ""


def is_dicom_file(p: Path) -> bool:
    """True when ``p`` is a DICOM Part 10 file, whatever its name."""
    # Part 10 files carry "DICM" after a 128-byte preamble.
    try:
        with open(p, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def dicom_series(folder: PathLike) -> List[Tuple[str, Tuple[str, ...]]]:
    """DICOM series directly in ``folder`` (not in subfolders): ``[(series uid, files), ...]``."""
    try:
        if not any(entry.is_file() for entry in Path(folder).iterdir()):
            return []
    except OSError:
        return []
    folder = str(folder)
    # ITK prints "No Series were found" to stderr for every folder without DICOM;
    # here that is an answer, not a problem.
    warn = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.GlobalWarningDisplayOff()
    try:
        ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder)
        out = []
        for sid in ids:
            files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, sid)
            if files:
                out.append((sid, tuple(files)))
    except RuntimeError:
        return []
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warn)
    return out

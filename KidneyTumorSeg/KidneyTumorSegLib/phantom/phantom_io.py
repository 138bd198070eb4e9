"""Write phantoms to disk as KiTS case folders (atomic, non-overwriting)."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import List

import numpy as np

from ..io.atomic import atomic_write, atomic_write_text, exists_message
from .phantom_make import make_phantom
from ..geometry.volume import InputError, Volume

log = logging.getLogger(__name__)


def write_phantom_cases(outdir, n: int, seed0: int = 0, *, layout: str = "kits", overwrite: bool = False,
                        start_index: int = 0, write_info: bool = True, dicom: bool = False,
                        **phantom_kwargs) -> List[Path]:
    """Write ``n`` phantoms as KiTS case folders ``outdir/case_XXXXX/{imaging,segmentation}.nii.gz``.

    Case ``start_index + i`` uses seed ``seed0 + i``; ``phantom_kwargs`` go to
    :func:`make_phantom`. Files are written atomically
    (``atomic.atomic_write``: temporary name, then a rename); an existing case folder raises ``FileExistsError``
    unless ``overwrite=True``. ``write_info`` adds ``phantom_info.json``; ``dicom`` the CT as a DICOM series
    in ``case_XXXXX/dicom/`` too (``io.dicom_write``, needs pydicom), for trying DICOM in, DICOM SEG out.
    Returns the case folders.
    """
    if layout != "kits":
        raise InputError(f'layout must be "kits", got {layout!r}')
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise InputError(f"n must be a non-negative integer, got {n!r}")
    out = Path(outdir)
    cases = [out / f"case_{start_index + i:05d}" for i in range(int(n))]
    if not overwrite:
        for c in cases:
            if c.exists():
                raise FileExistsError(exists_message(c))
    for i, case in enumerate(cases):
        ph = make_phantom(int(seed0) + i, **phantom_kwargs)  # first: invalid arguments leave no empty case folder
        case.mkdir(parents=True, exist_ok=True)
        _write_nifti(ph.image, case / "imaging.nii.gz", overwrite)
        _write_nifti(ph.label, case / "segmentation.nii.gz", overwrite)
        if dicom:
            from ..io.dicom_write import write_dicom_series
            write_dicom_series(ph.image, case / "dicom", patient_id=case.name, overwrite=overwrite)
        if write_info:
            atomic_write_text(case / "phantom_info.json", json.dumps(ph.info, indent=1), overwrite=overwrite)
        log.info("wrote %s (seed %d)", case, int(seed0) + i)
    return cases


def _write_nifti(vol: Volume, path: Path, overwrite: bool) -> None:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(vol.array))
    img.SetSpacing(vol.spacing)
    img.SetOrigin(vol.origin)
    img.SetDirection(vol.direction)
    atomic_write(path, lambda tmp: sitk.WriteImage(img, tmp, True), overwrite=overwrite)

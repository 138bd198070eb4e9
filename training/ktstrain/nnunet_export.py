"""Write KiTS-layout training cases as an nnU-Net v2 raw dataset.

Input: case folders ``case_XXXXX/imaging.nii.gz`` + ``segmentation.nii.gz``
(KiTS19/21/23, or phantoms from ``kidneytumorseg phantom``; label values 0
background, 1 kidney, 2 tumour, 3 cyst). Output, under ``nnUNet_raw``::

    DatasetNNN_Name/imagesTr/<case>_0000.nii.gz   CT in HU, the case's own file content
    DatasetNNN_Name/labelsTr/<case>.nii.gz        uint8 labels of the chosen table
    DatasetNNN_Name/dataset.json

Every image keeps its geometry exactly (size, spacing in mm, origin, direction
in SimpleITK's LPS convention); arrays are SimpleITK's ``(k, j, i)`` =
(slice, row, column) order. Label tables (``table``):

* ``"kits19"``: background 0, kidney 1, tumor 2; cysts (3) become kidney, as in KiTS19.
* ``"kits21"``: the region-based KiTS21/23 nnU-Net setup: label file values
  0-3 unchanged, regions kidney = {1, 2, 3}, masses = {2, 3}, tumor = {2},
  ``regions_class_order`` [1, 3, 2].
* ``"totalseg"``: TotalSegmentator's ``class_map_part_organs`` (24 organs).
  Kidney (with its tumours) is split into kidney_right / kidney_left and cysts
  into kidney_cyst_right / kidney_cyst_left by the patient midline: voxels
  whose world x (mm, LPS: +x is the patient's left) exceeds the body's mid-x
  are left. Organs a KiTS label cannot give (spleen, liver...) have no voxels.

The dataset is assembled in a hidden temporary folder and renamed into place,
so a reader never sees a half-written dataset; an existing dataset (or one
with the same number) is never overwritten.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from KidneyTumorSegLib.io.atomic import staged_folder
from KidneyTumorSegLib.io.jsonfile import write_json

from .data import Case, discover_cases

TABLES = ("kits19", "kits21", "totalseg")
FILE_ENDING = ".nii.gz"
BODY_HU = -500.0  # voxels above this (HU) count as body when finding the midline

# TotalSegmentator v2 ``class_map_part_organs`` (Dataset291_TotalSegmentator_part1_organs), values 1..24.
TOTALSEG_ORGANS = (
    "spleen", "kidney_right", "kidney_left", "gallbladder", "liver", "stomach", "pancreas",
    "adrenal_gland_right", "adrenal_gland_left", "lung_upper_lobe_left", "lung_lower_lobe_left",
    "lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right", "esophagus", "trachea",
    "thyroid_gland", "small_bowel", "duodenum", "colon", "urinary_bladder", "prostate",
    "kidney_cyst_left", "kidney_cyst_right",
)
TOTALSEG = {name: i + 1 for i, name in enumerate(TOTALSEG_ORGANS)}


def dataset_json(table: str, num_training: int, name: str = "") -> Dict[str, object]:
    """The ``dataset.json`` nnU-Net v2 reads for ``table`` (see the module docstring)."""
    _check_table(table)
    if table == "kits19":
        labels: Dict[str, object] = {"background": 0, "kidney": 1, "tumor": 2}
    elif table == "kits21":
        labels = {"background": 0, "kidney": [1, 2, 3], "masses": [2, 3], "tumor": 2}
    else:
        labels = {"background": 0, **TOTALSEG}
    out: Dict[str, object] = {"channel_names": {"0": "CT"}, "labels": labels}
    if table == "kits21":
        out["regions_class_order"] = [1, 3, 2]
    out.update({"numTraining": int(num_training), "file_ending": FILE_ENDING, "name": name,
                "description": f"KiTS-layout cases exported with the '{table}' label table by ktstrain.nnunet_export"})
    return out


def convert_label(label: np.ndarray, table: str, image=None, label_image=None) -> np.ndarray:
    """KiTS label array (values 0-3, any shape) -> uint8 array of ``table``'s label values.

    ``"totalseg"`` needs ``image`` (the CT as a SimpleITK image, HU) for the
    body's mid-x and ``label_image`` (SimpleITK image with the label's
    geometry) for each voxel's world x; the other tables ignore both.
    """
    _check_table(table)
    label = np.asarray(label)
    bad = sorted(set(np.unique(label).tolist()) - {0, 1, 2, 3})
    if bad:
        raise ValueError(f"label values {bad} are not KiTS labels (0 background, 1 kidney, 2 tumor, 3 cyst)")
    if table == "kits21":
        return label.astype(np.uint8)
    if table == "kits19":
        return np.where(label == 3, 1, label).astype(np.uint8)
    if image is None or label_image is None:
        raise ValueError('table "totalseg" needs the CT image and the label image for the left/right split')
    left = _left_of_midline(label > 0, _body_mid_x(image), label_image)
    out = np.zeros(label.shape, np.uint8)
    kidney, cyst = (label == 1) | (label == 2), label == 3
    out[kidney & ~left] = TOTALSEG["kidney_right"]
    out[kidney & left] = TOTALSEG["kidney_left"]
    out[cyst & ~left] = TOTALSEG["kidney_cyst_right"]
    out[cyst & left] = TOTALSEG["kidney_cyst_left"]
    return out


def _world_x(img, index_kji: Sequence[np.ndarray]) -> np.ndarray:
    """World x (mm) of voxels given as arrays of (k, j, i) indices."""
    d = np.asarray(img.GetDirection(), float).reshape(3, 3)
    coef = d[0] * np.asarray(img.GetSpacing(), float)  # mm per step along i, j, k
    k, j, i = (np.asarray(a, float) for a in index_kji)
    return img.GetOrigin()[0] + coef[0] * i + coef[1] * j + coef[2] * k


def _body_mid_x(image) -> float:
    """Middle (mm) of the body's world-x extent: the bounding box of voxels above ``BODY_HU``.

    Falls back to the middle of the whole grid when no voxel is above the
    threshold. Exact for axis-aligned grids, the box's middle for oblique ones.
    """
    import SimpleITK as sitk

    body = sitk.GetArrayViewFromImage(image) > BODY_HU
    shape = body.shape
    box = []
    for axis in range(3):
        hit = np.flatnonzero(body.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append((hit[0], hit[-1]) if hit.size else (0, shape[axis] - 1))
    corners = np.array(np.meshgrid(*box, indexing="ij")).reshape(3, -1)
    xs = _world_x(image, corners)
    return float((xs.min() + xs.max()) / 2.0)


def _left_of_midline(mask: np.ndarray, mid_x: float, label_image) -> np.ndarray:
    """Boolean array: True where ``mask`` is set and the voxel's world x > ``mid_x`` (patient's left)."""
    idx = np.nonzero(mask)
    left = np.zeros(mask.shape, bool)
    left[idx] = _world_x(label_image, idx) > mid_x
    return left


def _check_table(table: str) -> None:
    if table not in TABLES:
        raise ValueError(f"table must be one of {', '.join(TABLES)}, got {table!r}")


def _dataset_folder_name(dataset_id: int, dataset_name: str) -> str:
    if not isinstance(dataset_id, (int, np.integer)) or not 1 <= int(dataset_id) <= 999:
        raise ValueError(f"dataset_id must be an integer 1..999 (nnU-Net's DatasetNNN), got {dataset_id!r}")
    if not dataset_name or any(c in dataset_name for c in "/\\ ") or dataset_name.startswith("."):
        raise ValueError(f"dataset_name must be a plain name without spaces or slashes, got {dataset_name!r}")
    return f"Dataset{int(dataset_id):03d}_{dataset_name}"


def _refuse_existing(raw: Path, folder_name: str) -> None:
    target = raw / folder_name
    if target.exists():
        raise FileExistsError(f"nnU-Net dataset exists: {target} (remove it or choose another id/name; "
                              f"it is never overwritten)")
    same_id = sorted(p.name for p in raw.glob(folder_name[:10] + "_*")) if raw.is_dir() else []
    if same_id:
        raise FileExistsError(f"nnU-Net dataset id {folder_name[7:10]} is taken in {raw}: {', '.join(same_id)} "
                              f"(nnU-Net needs unique dataset ids)")


def _write_case(case: Case, dest: Path, table: str) -> None:
    """Copy one case's CT and write its converted label, both with the case's own geometry."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(case.image_path))
    label_img = sitk.ReadImage(str(case.label_path))
    if image.GetSize() != label_img.GetSize():
        raise ValueError(f"{case.case_id}: image size {image.GetSize()} != label size {label_img.GetSize()}")
    label = convert_label(sitk.GetArrayViewFromImage(label_img), table, image, label_img)
    out = sitk.GetImageFromArray(label)
    out.CopyInformation(label_img)
    sitk.WriteImage(image, str(dest / "imagesTr" / f"{case.case_id}_0000{FILE_ENDING}"), True)
    sitk.WriteImage(out, str(dest / "labelsTr" / f"{case.case_id}{FILE_ENDING}"), True)


def export_nnunet_dataset(cases: Union[str, os.PathLike, Sequence[Case]], nnunet_raw: Union[str, os.PathLike],
                          dataset_id: int, dataset_name: str, table: str = "kits19") -> Path:
    """Write ``cases`` as ``nnunet_raw/DatasetNNN_<dataset_name>`` for nnU-Net v2; returns that folder.

    ``cases`` is a folder of KiTS case folders (or one case folder; see
    ``ktstrain.data.discover_cases``) or a list of ``Case``. Case ids become
    nnU-Net identifiers (``case_00000_0000.nii.gz``). Raises
    ``FileExistsError`` when the dataset folder, or another folder with the
    same dataset number, exists; ``ValueError`` for an unknown table or
    label values outside 0-3.
    """
    _check_table(table)
    folder_name = _dataset_folder_name(dataset_id, dataset_name)
    raw = Path(nnunet_raw)
    case_list: List[Case] = list(discover_cases(cases)) if isinstance(cases, (str, os.PathLike)) else list(cases)
    if not case_list:
        raise ValueError("no cases to export")
    _refuse_existing(raw, folder_name)
    with staged_folder(raw / folder_name) as tmp:
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        for case in case_list:
            _write_case(case, tmp, table)
        meta = dataset_json(table, len(case_list), folder_name)
        write_json(meta, tmp / "dataset.json")
        _refuse_existing(raw, folder_name)  # again: another writer may have finished meanwhile
    return raw / folder_name


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m ktstrain.nnunet_export CASES NNUNET_RAW --id 64 --name KiTS19 [--table kits19]``."""
    p = argparse.ArgumentParser(prog="python -m ktstrain.nnunet_export", description=__doc__.split("\n")[0])
    p.add_argument("cases", help="folder of KiTS case folders (case_XXXXX/imaging.nii.gz + segmentation.nii.gz)")
    p.add_argument("nnunet_raw", help="the nnUNet_raw folder to write DatasetNNN_Name into")
    p.add_argument("--id", type=int, required=True, help="dataset number NNN (1-999)")
    p.add_argument("--name", required=True, help="dataset name, e.g. KiTS19")
    p.add_argument("--table", choices=TABLES, default="kits19", help="label table (default kits19)")
    a = p.parse_args(argv)
    print(export_nnunet_dataset(a.cases, a.nnunet_raw, a.id, a.name, a.table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

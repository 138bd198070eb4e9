"""ktstrain.data: finding KiTS and phantom cases, and the label map, on tiny synthetic KiTS cases."""
from __future__ import annotations

import json

import numpy as np
import pytest

from KidneyTumorSegLib.geometry.volume import InputError
from KidneyTumorSegLib.io.volume_io import read_label
from ktstrain.data import Case, LabelMap, discover_cases

from helpers_train import make_case, write_case

# module-scoped fixtures from helpers_train (this module gets its own copy): pytest finds them by these names


def test_discover_kits_layouts(tmp_path, data_root):
    cases = discover_cases(data_root)
    assert [c.case_id for c in cases] == ["case_00000", "case_00001", "case_00002"]
    assert cases[1] == Case("case_00001", data_root / "case_00001" / "imaging.nii.gz",
                            data_root / "case_00001" / "segmentation.nii.gz", "kits", None)
    # KiTS21's repository label name; a case without label is skipped; one case folder works as root
    img, lab = make_case(3)
    write_case(tmp_path / "case_00100", img, lab, label_name="aggregated_MAJ_seg.nii.gz")
    write_case(tmp_path / "case_00101", img, lab)
    (tmp_path / "case_00101" / "segmentation.nii.gz").unlink()
    (tmp_path / ".hidden").mkdir()
    got = discover_cases(tmp_path)
    assert [(c.case_id, c.label_path.name) for c in got] == [("case_00100", "aggregated_MAJ_seg.nii.gz")]
    assert [c.case_id for c in discover_cases(tmp_path / "case_00100")] == ["case_00100"]
    assert len(discover_cases(tmp_path, require_label=False)) == 2
    with pytest.raises(InputError, match="case_00999"):
        discover_cases(data_root, case_ids=["case_00001", "case_00999"])
    with pytest.raises(InputError, match="no training cases"):
        discover_cases(tmp_path / ".hidden")


def test_several_data_folders_combine_and_duplicate_ids_are_refused(tmp_path, data_root):
    import shutil

    from ktstrain.cli import _cases

    other = tmp_path / "more"
    img, lab = make_case(4)
    write_case(other / "case_00010", img, lab)
    got = _cases([str(data_root), str(other)])
    assert [c.case_id for c in got] == ["case_00000", "case_00001", "case_00002", "case_00010"]
    assert got[-1].image_path == other / "case_00010" / "imaging.nii.gz"
    shutil.copytree(data_root / "case_00001", other / "case_00001")
    import re

    with pytest.raises(InputError, match=re.escape(f"case id case_00001 is in two data folders: "
                                                   f"'{data_root / 'case_00001'}' and '{other / 'case_00001'}'")):
        _cases([str(data_root), str(other)])


def test_discover_phantom_cases(tmp_path):
    from KidneyTumorSegLib.phantom import write_phantom_cases

    write_phantom_cases(tmp_path, 1, seed0=4, shape=(16, 40, 40), spacing=(8.0, 8.0, 10.0), n_tumors=1,
                        n_cysts=1, cyst_label=True, kidneys="both")
    (c,) = discover_cases(tmp_path)
    assert (c.case_id, c.layout, c.cyst_labelled) == ("case_00000", "phantom", True)
    info = json.loads((tmp_path / "case_00000" / "phantom_info.json").read_text())
    info["cyst_label"] = False
    (tmp_path / "case_00000" / "phantom_info.json").write_text(json.dumps(info))
    assert discover_cases(tmp_path)[0].cyst_labelled is False
    raw = read_label(c.label_path).array
    mapped, cyst = LabelMap().apply(raw)
    assert set(np.unique(mapped)) <= {0, 1, 2}
    assert cyst is None or (cyst == (raw == 3)).all()


def test_label_map():
    raw = np.array([[[0, 1, 2, 3, 3, 1]]], np.uint8)
    mapped, cyst = LabelMap().apply(raw)
    assert mapped.tolist() == [[[0, 1, 2, 0, 0, 1]]] and mapped.dtype == np.uint8
    assert cyst.tolist() == [[[False, False, False, True, True, False]]]
    assert LabelMap().apply(np.array([[[0, 1, 2]]], np.uint8))[1] is None  # KiTS19: no cyst labels at all
    lm = LabelMap.from_dict({"mapping": {"0": 0, "1": 1, "2": 2, "3": 1}, "cyst_labels": [3]})
    assert lm.apply(raw)[0].tolist() == [[[0, 1, 2, 1, 1, 1]]]
    assert LabelMap.from_dict({"0": 0, "1": 1, "2": 1}).mapping == {0: 0, 1: 1, 2: 1}
    with pytest.raises(InputError, match=r"label value\(s\) \[4\] are not in the label map"):
        LabelMap().apply(np.array([[[0, 4]]], np.uint8), name="case_x")
    with pytest.raises(ValueError, match="unknown field"):
        LabelMap.from_dict({"mapping": {}, "colour": 1})


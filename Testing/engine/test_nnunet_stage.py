"""An nnU-Net model as a cascade stage: its training orientation, and answers reused from the last run."""
import numpy as np
import pytest
import SimpleITK as sitk

from KidneyTumorSegLib.engine.nnunet_stage import ModelRuns, NnunetStage, from_orientation, orientation_plan, to_orientation
from KidneyTumorSegLib.geometry.volume import Volume


@pytest.mark.parametrize("code", ["LPS", "RAS", "IPL", "PIR", "ASL", "SLA"])
def test_orientation_matches_simpleitks_dicomorient_and_is_undone_exactly(code):
    a = np.random.default_rng(0).random((4, 5, 6)).astype(np.float32)  # canonical (k, j, i): S, P, L
    img = sitk.GetImageFromArray(a)
    img.SetSpacing((1.0, 2.0, 3.0))
    ref = sitk.DICOMOrient(img, code)
    ours, spacing = to_orientation(a, (3.0, 2.0, 1.0), code)
    assert np.array_equal(ours, sitk.GetArrayFromImage(ref))
    assert spacing == ref.GetSpacing()[::-1]
    assert np.array_equal(from_orientation(ours[None], code)[0], a)


def test_a_bad_orientation_code_is_refused():
    with pytest.raises(ValueError, match="is not a 3-letter code"):
        orientation_plan("RAR")


class _Model:
    """Kidney probability = 1 where the image is above 0 HU, tumor = 1 above 100 HU; counts its runs."""

    def role_probabilities(self, image, spacing, roles):
        return np.stack([(image > 0).astype(np.float32), (image > 100).astype(np.float32)])


def _scan():
    arr = np.full((10, 12, 14), -1024.0, np.float32)
    arr[3:7, 4:9, 5:10] = 40.0
    arr[4:6, 5:7, 6:8] = 150.0
    return Volume(arr, spacing=(1.0, 1.0, 2.0), origin=(10.0, 20.0, 30.0))


def test_a_later_stage_inside_the_last_run_is_answered_from_it():
    runs = ModelRuns(_Model(), "RAS")
    scan = _scan()
    kidney = NnunetStage(runs, "kidney").predict(scan)
    assert runs.runs == 1 and np.array_equal(kidney[1], (scan.array > 0).astype(np.float32))
    # a crop inside the scan, and one reaching past its edge (padded with air): both from the same run
    inner = scan.with_array(scan.array[2:8, 3:10, 4:11].copy(), origin=tuple(scan.index_to_world([4, 3, 2])))
    tumor = NnunetStage(runs, "tumor").predict(inner)
    assert runs.runs == 1 and np.array_equal(tumor[1], (inner.array > 100).astype(np.float32))
    padded = np.full((12, 14, 16), -1024.0, np.float32)
    padded[1:11, 1:13, 1:15] = scan.array
    edge = scan.with_array(padded, origin=tuple(scan.index_to_world([-1, -1, -1])))
    assert NnunetStage(runs, "tumor").predict(edge)[1].sum() == (scan.array > 100).sum() and runs.runs == 1


def test_a_masked_crop_or_unseen_tissue_runs_the_model_again():
    runs = ModelRuns(_Model(), "IPL")
    scan = _scan()
    inner = scan.with_array(scan.array[2:8, 3:10, 4:11].copy(), origin=tuple(scan.index_to_world([4, 3, 2])))
    NnunetStage(runs, "kidney").predict(inner)
    masked = inner.array.copy()
    masked[2] = -1024.0  # a slice through the kidney, as mask_outside sets it
    NnunetStage(runs, "tumor").predict(inner.with_array(masked))
    assert runs.runs == 2
    NnunetStage(runs, "tumor").predict(scan)  # tissue the last run did not see
    assert runs.runs == 3
    NnunetStage(runs, "tumor", reuse=False).predict(scan)
    assert runs.runs == 4

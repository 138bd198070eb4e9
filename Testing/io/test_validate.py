"""CT plausibility checks: every fatal message and the warnings for odd but usable scans."""
from __future__ import annotations

import numpy as np
import pytest

from helpers_ct import KITS_DIRECTION, ct_array, ct_volume
from KidneyTumorSegLib.io.validate import validate_ct
from KidneyTumorSegLib.geometry.volume import InputError, Volume


def test_non_ct_modality_from_meta():
    # Volumes from Slicer that carry a modality get the same check as DICOM reads.
    with pytest.raises(InputError) as err:
        validate_ct(ct_volume(meta={"modality": "PT", "source": "pet"}))
    assert str(err.value) == "'pet' is a PT series (DICOM Modality PT), not CT; this tool segments CT scans only"
    assert validate_ct(ct_volume(meta={"modality": " ct "})) == []


@pytest.mark.parametrize("shift,message", [
    (2000, "its intensities range from {lo} to {hi}, but a CT has air near -1000 HU"),  # raw, no rescale
    (-2000, "its intensities range from {lo} to {hi}, so nothing is as dense as soft tissue"),
])
def test_intensities_not_hu(shift, message):
    arr = ct_array() + shift
    vol = Volume(arr, spacing=(0.8, 0.8, 3.0), meta={"source": "x.nrrd"})
    expected = "'x.nrrd' does not look like a CT in Hounsfield units: " + message.format(lo=arr.min(), hi=arr.max())
    with pytest.raises(InputError) as err:
        validate_ct(vol)
    assert str(err.value).startswith(expected)


def test_unsigned_storage_with_intercept_is_fine():
    # GDCM applies the rescale intercept: uint16 storage arrives as signed HU; a
    # float CT (after a resampling, say) is fine too.
    vol = Volume(ct_array().astype(np.float32), spacing=(0.8, 0.8, 3.0), origin=(1, 2, 3))
    assert validate_ct(vol) == []


@pytest.mark.parametrize("spacing", [(0.8, 0.8, 200.0), (0.001, 0.8, 3.0)])
def test_absurd_spacing(spacing):
    vol = Volume(ct_array(), spacing=spacing, meta={"source": "s.nii"})
    with pytest.raises(InputError, match=r"^'s.nii' has implausible voxel spacing .* mm \(x, y, z\)"):
        validate_ct(vol)


def test_warnings_for_odd_but_usable_scans():
    arr = ct_array()
    arr[arr == arr.max()] = 12000  # one metal voxel
    vol = Volume(arr, spacing=(2.5, 0.8, 8.0), origin=(1, 2, 3), meta={"source": "odd"})
    w = validate_ct(vol)
    assert "'odd': thick slices (8 mm); results are less accurate above 5 mm" in w
    assert "'odd': unusual pixel size 2.5 x 0.8 mm for a CT" in w
    assert any("extreme intensities" in x for x in w)
    # KiTS19 layout: the slice axis is i, found from the direction, not assumed to be k.
    kits = Volume(ct_array(), spacing=(3.0, 0.8, 0.8), direction=KITS_DIRECTION, origin=(1, 2, 3))
    assert not any("thick" in x or "pixel size" in x for x in validate_ct(kits))
    default = Volume(ct_array())
    assert any("default geometry" in x for x in validate_ct(default))


def test_validate_ct_on_a_volume_without_source():
    # Volumes built from Slicer arrays carry no path; messages still read well.
    with pytest.raises(InputError, match="^the image is empty: every voxel has the value 0$"):
        validate_ct(Volume(np.zeros((4, 5, 6), np.int16)))
    assert validate_ct(Volume(ct_array(), spacing=(0.8, 0.8, 3.0), origin=(1, 2, 3))) == []

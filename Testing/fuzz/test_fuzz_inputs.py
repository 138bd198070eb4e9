"""Fuzzing the CT readers (issue 27, part 4).

Every file either reads (and then passes ``validate_ct`` or fails it with an
``InputError``) or is refused with an ``InputError`` whose message is one line
naming the file: never another exception, a hang, a huge allocation, or a
volume holding voxels the file does not have. Files are written by SimpleITK
where it can (sizes, spacings, directions, voxel types, dimensions) and edited
where it cannot: the bytes of the 348-byte NIfTI-1 header, the text of NRRD
and MetaImage headers. The command line runs end to end on a few files of
each kind and must leave complete case folders or none.

Bounded and repeatable here (``derandomize``); ``benchmarks/fuzz_inputs.py``
runs the same properties longer. A spec is a plain dict, so a failing example
prints as one and can be kept as an ``@example``.
"""
from __future__ import annotations

import gzip
from typing import Any, Dict

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import example, given, settings

from KidneyTumorSegLib.geometry.volume import InputError
from KidneyTumorSegLib.io.volume_io import read_volume, validate_ct
from fuzz_input_specs import FAST, INF, NAN, _write_sitk, build_text, ct_voxels, nifti_spec, text_spec
from fuzz_input_checks import (SPECS, check_cli, check_message, check_read)  # noqa: F401

Spec = Dict[str, Any]
# --------------------------------------------------------------------------
# Tests (bounded; benchmarks/fuzz_inputs.py runs more examples)
# --------------------------------------------------------------------------
def written_spec(fmt: str, spacing=(0.8, 0.7, 2.5), direction="identity") -> Spec:
    return dict(kind="written", fmt=fmt, shape=(6, 7, 8), dtype="int16", components=1, values="ct", spacing=spacing,
                direction=direction, compress=False, seed=0)


# The @examples are what the fuzzing found, each failing before its fix.
@settings(max_examples=300, **FAST)
@given(spec=SPECS["written"])
@example(spec=written_spec(".nii", spacing=(NAN, 1.0, 1.0)))  # NaN origin and direction passed validate_ct
@example(spec=written_spec(".nrrd", direction="nan"))  # "itk::ERROR: NrrdImageIO(0x55...)" and 400 characters of teem
def test_written_images_read_exactly_or_are_refused(spec):
    check_read(spec)


@settings(max_examples=300, **FAST)
@given(spec=SPECS["nifti"])
@example(spec=nifti_spec([("dim", 3, 13)]))  # 13 slices claimed, 6 stored: read with 7 slices of zeros
@example(spec=nifti_spec([("dim_info", 0, 0)], cut=100))  # data cut short: the end read as zeros
@example(spec=nifti_spec([("dim", 3, 13)], gz=True))  # the same in .nii.gz (its truncation check missed it)
@example(spec=nifti_spec([("dim", 2, 32767), ("dim", 3, 32767)]))  # 17 GB allocated for a 1 kB file
@example(spec=nifti_spec([("srow", 0, NAN)]))  # NaN direction passed validate_ct
@example(spec=nifti_spec([("datatype", 0, 1536)]))  # "Unknown component type: itk::CommonEnums::..."
def test_nifti_header_bytes(spec):
    check_read(spec)


@settings(max_examples=300, **FAST)
@given(spec=SPECS["nrrd"])
@example(spec=text_spec("nrrd", [("set", "sizes", "8 1048576 1048576")]))  # 17 TB allocation tried
@example(spec=text_spec("nrrd", [("set", "sizes", "8 -7 6")]))  # "itk::ERROR: NrrdImageIO(0x55...)" and the chain
@example(spec=text_spec("nrrd", [("set", "data file", "/dev/zero"), ("set", "sizes", "8 1024 65536")]))  # 2 GB
def test_nrrd_header_text(spec):
    check_read(spec)


@settings(max_examples=300, **FAST)
@given(spec=SPECS["mha"])
@example(spec=text_spec("mha", [("set", "NDims", "-1")]))  # segmentation fault
@example(spec=text_spec("mha", [("set", "NDims", "100")]))  # abort
@example(spec=text_spec("mha", [("set", "CompressedDataSize", "-1")], compress=True))  # std::bad_alloc
@example(spec=text_spec("mha", [("set", "DimSize", "8 7 13")], compress=True))  # missing slices read as zeros
@example(spec=text_spec("mha", [("set", "DimSize", "8 1048576 1048576")]))  # 17 TB allocation tried
@example(spec=text_spec("mha", [], cut=100))  # "Reason: No such file or directory" for a file that is there
@example(spec=text_spec("mha", [("set", "ElementDataFile", "/dev/zero"), ("set", "DimSize", "8 1024 65536")]))
def test_metaimage_header_text(spec):
    check_read(spec)


@pytest.mark.parametrize("size", ["1", "100", "0", "9999999"])
def test_metaimage_compressed_data_size_never_gives_wrong_voxels(tmp_path, size):
    """Found by fuzzing: ``CompressedDataSize`` 1 or 0 read a complete-looking image with wrong voxels."""
    spec = text_spec("mha", [("set", "CompressedDataSize", size)], compress=True)
    path, _, _ = build_text(spec, tmp_path)
    try:
        vol = read_volume(path, validate=False)
    except InputError as exc:
        check_message(exc, path)
    else:
        np.testing.assert_array_equal(vol.array, ct_voxels(spec["shape"], spec["dtype"], "ct", 0))


@pytest.mark.parametrize("geometry", [dict(origin=(NAN, 0.0, 0.0)), dict(origin=(0.0, -INF, 0.0)),
                                      dict(direction=(NAN, 0, 0, 0, 1, 0, 0, 0, 1)),
                                      dict(direction=(1, 0, 0, 0, 1, 0, 0, 0, INF))])
def test_validate_ct_refuses_a_non_finite_origin_or_direction(geometry):
    """Found by fuzzing (a NIfTI ``srow`` of NaN): such a scan passed ``validate_ct``."""
    from KidneyTumorSegLib.geometry.volume import Volume

    vol = Volume(ct_voxels((6, 7, 8), "int16", "ct", 0), spacing=(0.8, 0.7, 2.5), meta={"source": "ct.nii"}, **geometry)
    with pytest.raises(InputError, match=r"^'ct.nii' has a non-finite origin .* check the file's header$"):
        validate_ct(vol)


@pytest.mark.parametrize("x", [2.1e16, -1e6, 100001.0])
def test_validate_ct_refuses_an_origin_far_away(x):
    """Found by fuzzing (an NRRD ``space origin`` of 2.1e16 mm): the cascade failed on it after validation."""
    from KidneyTumorSegLib.geometry.volume import Volume

    vol = Volume(ct_voxels((6, 7, 8), "int16", "ct", 0), spacing=(0.8, 0.7, 2.5), origin=(x, 0.0, -400.0),
                 meta={"source": "ct.nii"})
    with pytest.raises(InputError, match=r"^'ct.nii' has an implausible origin .* check the file's header$"):
        validate_ct(vol)
    validate_ct(vol.with_array(vol.array, origin=(-99999.0, 0.0, 2000.0)))


@pytest.mark.parametrize("cut", [1, 3, 6])
def test_nan_restoration_leaves_a_shorter_file_alone(tmp_path, cut):
    """Found by fuzzing (a float NIfTI cut by 2 bytes): ValueError "buffer size must be a multiple of element size"."""
    from KidneyTumorSegLib.io.volume_io import nifti_nonfinite_restored

    arr = ct_voxels((6, 7, 8), "float32", "ct", 0)
    arr[2, 3, 4] = 0.0  # a voxel of the value ITK puts in place of NaN: the stored floats are scanned
    _write_sitk(arr, tmp_path / "ct.nii")
    img = sitk.ReadImage(str(tmp_path / "ct.nii"))
    (tmp_path / "cut.nii").write_bytes((tmp_path / "ct.nii").read_bytes()[:-cut])
    assert nifti_nonfinite_restored(tmp_path / "cut.nii", img) is img


def test_large_files_read_whole(tmp_path):
    """The checks before ITK reads measure compressed data to the end: a large scan still reads exactly."""
    arr = ct_voxels((40, 256, 256), "int16", "ct", 1)
    for name in ("ct.nii.gz", "ct.mha", "ct.nrrd", "ct.nii"):
        _write_sitk(arr, tmp_path / name, compress=not name.endswith(".nii"))
        np.testing.assert_array_equal(read_volume(tmp_path / name).array, arr)
    raw = (tmp_path / "ct.nii").read_bytes()  # two gzip members: no length trailer to trust
    (tmp_path / "two.nii.gz").write_bytes(gzip.compress(raw[:100000]) + gzip.compress(raw[100000:]))
    np.testing.assert_array_equal(read_volume(tmp_path / "two.nii.gz").array, arr)
    (tmp_path / "cut.nii.gz").write_bytes(gzip.compress(raw[:100000]) + gzip.compress(raw[100000:-2]))
    with pytest.raises(InputError, match="holds only 5242878 bytes of voxel data"):
        read_volume(tmp_path / "cut.nii.gz")


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    from helpers_bundle import make_tiny_bundle

    return make_tiny_bundle(tmp_path_factory.mktemp("fuzz") / "bundle", fg_bias=-8.0).path


CLI_EXAMPLES = {  # each failed before its fix
    "written": [written_spec(".nii", spacing=(NAN, 1.0, 1.0))],  # "voxel spacing must be positive" from the cascade
    "nifti": [nifti_spec([("srow", 0, NAN)])],  # the same
    "nrrd": [text_spec("nrrd", [("set", "data file", "/dev/zero"), ("set", "sizes", "8 1024 65536")]),  # 2 GB read
             text_spec("nrrd", [("set", "space origin", "(2.1e16,0,0)")])],  # the cascade lost its spacing to rounding
    "mha": [text_spec("mha", [("set", "NDims", "-1")])],  # segmentation fault
}


@pytest.mark.parametrize("kind", sorted(SPECS))
def test_cli_end_to_end(kind, tiny_bundle):
    def run(spec):
        check_cli(spec, tiny_bundle)

    for spec in CLI_EXAMPLES[kind]:
        run = example(spec=spec)(run)
    settings(max_examples=8, **FAST)(given(spec=SPECS[kind])(run))()

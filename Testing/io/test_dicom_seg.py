"""DICOM SEG output (``io.dicom_seg``): written over real and phantom DICOM series, read back with highdicom and
pydicom (segments, codes, algorithm, references, per-frame positions, voxels)."""
from __future__ import annotations

import hashlib
import logging

import highdicom as hd
import numpy as np
import pytest

from KidneyTumorSegLib.findings.terminology import KIDNEY_CODE, LEFT, NEOPLASM, RIGHT
from KidneyTumorSegLib.geometry.volume import InputError
from KidneyTumorSegLib.io.dicom_seg import Algorithm, series_files, write_dicom_seg
from KidneyTumorSegLib.io.dicom_write import write_dicom_series
from KidneyTumorSegLib.io.volume_io import read_volume
from helpers_ct import assert_same_geometry, ct_volume, shared
from helpers_dicom import seg_voxels, source_of

ALGO = Algorithm("test-model", "1.2.3", "ab" * 32, "0.1.0")


def _label_on(vol):
    """Left kidney, right kidney and a tumor inside the left one, as blocks on ``vol``'s grid."""
    k, j, i = vol.shape
    lab = np.zeros(vol.shape, np.uint8)
    lab[k // 4: 3 * k // 4, j // 4: j // 2, i // 8: 3 * i // 8] = 1
    lab[k // 4: k // 2, j // 4: j // 2, 5 * i // 8: 7 * i // 8] = 2
    lab[k // 3: k // 2, j // 3: j // 2, i // 6: i // 4] = 3
    return vol.with_array(lab)


def _check_segments(path, sha):
    """Segment numbers, names, SNOMED CT codes (laterality as a type modifier) and the algorithm, by highdicom."""
    seg = hd.seg.segread(str(path))
    assert seg.number_of_segments == 3 and seg.SegmentationType == "BINARY"
    by_number = {d.segment_number: d for d in seg.SegmentSequence}
    assert [by_number[n].segment_label for n in (1, 2, 3)] == ["Kidney left", "Kidney right", "Kidney tumor"]
    for n, side in ((1, LEFT), (2, RIGHT)):
        prop = by_number[n].SegmentedPropertyTypeCodeSequence[0]
        assert (prop.CodingSchemeDesignator, prop.CodeValue) == KIDNEY_CODE[:2]
        assert prop.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == side[1]
    tumor = by_number[3]
    assert tumor.segmented_property_type.value == NEOPLASM[1]
    assert tumor.AnatomicRegionSequence[0].CodeValue == KIDNEY_CODE[1]
    algo = tumor.SegmentationAlgorithmIdentificationSequence[0]
    assert (algo.AlgorithmName, algo.AlgorithmVersion) == ("KidneyTumorSeg test-model", "1.2.3")
    assert sha in str(algo.AlgorithmParameters)
    return seg


def _check_real(folder, tmp_path):
    vol = read_volume(folder, validate=False)
    files = series_files(vol)
    lab = _label_on(vol)
    out = write_dicom_seg(lab, files, tmp_path / "case.seg.dcm", ALGO)
    _check_segments(out, ALGO.sha256)
    voxels, ds = seg_voxels(out, files, vol.shape)
    assert np.array_equal(voxels, lab.array)
    uids, _, first = source_of(files)
    referenced = {i.ReferencedSOPInstanceUID for s in ds.ReferencedSeriesSequence for i in s.ReferencedInstanceSequence}
    assert referenced == set(uids)
    assert ds.FrameOfReferenceUID == first.FrameOfReferenceUID and ds.Modality == "SEG"
    return ds, first


def test_seg_over_the_real_abdominal_series_references_it_and_keeps_every_voxel(tmp_path):
    folder = shared("real-abdominal-ct-dicom")
    ds, first = _check_real(folder, tmp_path)
    assert ds.StudyInstanceUID == first.StudyInstanceUID and ds.PatientID == first.PatientID
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == first.SeriesInstanceUID
    assert ds.SeriesInstanceUID != first.SeriesInstanceUID


def test_seg_over_the_compressed_anonymised_series_gets_stable_derived_uids(tmp_path, caplog):
    # JPEG 2000 slices whose SOP, study and series UIDs are empty: headers only are read, UIDs repaired in memory
    folder = shared("dicom-ct-series")
    with caplog.at_level(logging.WARNING):
        ds, first = _check_real(folder, tmp_path)
    assert str(first.StudyInstanceUID) == ""  # the source is not written
    assert "has no StudyInstanceUID (anonymised?)" in caplog.text and ds.StudyInstanceUID
    again = _check_real(folder, tmp_path / "again")[0]
    assert again.StudyInstanceUID == ds.StudyInstanceUID  # derived from the frame of reference, every run
    assert again.SOPInstanceUID != ds.SOPInstanceUID


def test_phantom_written_as_dicom_reads_back_on_the_same_grid(tmp_path):
    vol = ct_volume()  # rotated in-plane, non-unit spacing
    files = write_dicom_series(vol, tmp_path / "dicom")
    back = read_volume(tmp_path / "dicom", validate=False)
    assert_same_geometry(back, vol, atol=1e-4)
    assert np.array_equal(back.array, vol.array) and back.meta["format"] == "dicom"
    assert list(series_files(back)) == [str(f) for f in files]
    lab = _label_on(back)
    out = write_dicom_seg(lab, files, tmp_path / "x.seg.dcm", ALGO)
    assert np.array_equal(seg_voxels(out, files, vol.shape)[0], lab.array)


def test_series_writer_replaces_a_folder_only_with_overwrite_and_as_a_whole(tmp_path):
    vol = ct_volume()
    write_dicom_series(vol, tmp_path / "dicom")
    before = sorted(p.name for p in (tmp_path / "dicom").iterdir())
    with pytest.raises(FileExistsError, match="use --overwrite to replace it"):
        write_dicom_series(vol, tmp_path / "dicom")
    assert sorted(p.name for p in (tmp_path / "dicom").iterdir()) == before
    fewer = vol.with_array(vol.array[:5])
    write_dicom_series(fewer, tmp_path / "dicom", overwrite=True)
    assert len(list((tmp_path / "dicom").iterdir())) == 5  # no slice of the old series left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dicom"]  # no staging folder either


def test_seg_refuses_a_grid_that_is_not_the_series_and_writes_nothing(tmp_path):
    vol = ct_volume()
    files = write_dicom_series(vol, tmp_path / "dicom")
    lab = _label_on(vol)
    with pytest.raises(ValueError, match=r"the segmentation has 11 slices, the DICOM series 12 files"):
        write_dicom_seg(lab.with_array(lab.array[1:]), files, tmp_path / "a.seg.dcm", ALGO)
    shifted = lab.with_array(lab.array, origin=tuple(np.add(vol.origin, (0.0, 0.0, 1.0))))
    with pytest.raises(ValueError, match=r"slice 0 of the DICOM series lies at .* not the same grid"):
        write_dicom_seg(shifted, files, tmp_path / "b.seg.dcm", ALGO)
    bad = lab.with_array(np.where(lab.array == 3, 4, lab.array).astype(np.uint8))
    with pytest.raises(ValueError, match=r"label values \[4\] have no segment definition"):
        write_dicom_seg(bad, files, tmp_path / "c.seg.dcm", ALGO)
    out = write_dicom_seg(lab, files, tmp_path / "d.seg.dcm", ALGO)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    with pytest.raises(FileExistsError, match="use --overwrite to replace it"):
        write_dicom_seg(lab, files, out, ALGO)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.seg.dcm", "dicom"]


def test_seg_output_needs_a_dicom_series_input():
    with pytest.raises(InputError, match=r"DICOM SEG output needs a DICOM series as input; 'x.nii.gz' was read as "
                                         r"nifti, not as a DICOM series"):
        series_files(ct_volume().with_array(np.zeros((2, 2, 2)), meta={"source": "x.nii.gz", "format": "nifti"}))

"""Tests of the synthetic abdominal CT phantom generator."""
from __future__ import annotations

import json
import time
from pathlib import Path

import cc3d
import numpy as np
import pytest
from scipy import ndimage as ndi

from KidneyTumorSegLib.phantom import make_phantom, write_phantom_cases
from KidneyTumorSegLib.phantom.phantom_place import scan_geometry
from KidneyTumorSegLib.phantom.phantom_params import KIDNEY_CODES, T
from KidneyTumorSegLib.geometry.volume import InputError, Volume

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def is_tumor(codes):
    """Tissue codes of tumor voxels (phantom_params.tumor_code's range)."""
    return codes >= T.TUMOR0


def is_cyst(codes):
    return (codes >= T.CYST0) & (codes < T.CYST0 + T.N_CYST_CODES)


SMALL = dict(shape=(48, 128, 128), spacing=(2.8, 2.8, 4.0))


@pytest.fixture(scope="module")
def lesion_case():
    return make_phantom(7, n_tumors=3, n_cysts=2, **SMALL)


def _erode(mask, n=2):
    return ndi.binary_erosion(mask, iterations=n) if mask.any() else mask


def test_same_seed_same_bytes_and_different_seed_differs():
    a = make_phantom(3, shape=(24, 64, 64), spacing=(5.0, 5.0, 8.0))
    b = make_phantom(3, shape=(24, 64, 64), spacing=(5.0, 5.0, 8.0))
    c = make_phantom(4, shape=(24, 64, 64), spacing=(5.0, 5.0, 8.0))
    assert a.image.array.dtype == np.int16 and a.label.array.dtype == np.uint8
    assert a.image.array.tobytes() == b.image.array.tobytes()
    assert a.label.array.tobytes() == b.label.array.tobytes()
    strip = lambda i: {k: v for k, v in i.items() if k != "timing_s"}  # noqa: E731
    assert json.dumps(strip(a.info), sort_keys=True) == json.dumps(strip(b.info), sort_keys=True)
    assert a.image.array.tobytes() != c.image.array.tobytes()
    assert a.info["seed"] == 3 and a.image.shape == (24, 64, 64) and a.image.spacing == (5.0, 5.0, 8.0)


def test_labels_match_tissues_and_lie_in_kidneys(lesion_case):
    lab, tis = lesion_case.label.array, lesion_case.tissue
    assert set(np.unique(lab)) <= {0, 1, 2}
    assert np.isin(tis[lab == 1], KIDNEY_CODES).all()
    assert is_tumor(tis[lab == 2]).all()
    assert (lab[np.isin(tis, KIDNEY_CODES)] == 1).all()
    # every labelled voxel is near one of the kidneys the info describes
    idx = np.argwhere(lab > 0)[:, ::-1]
    xyz = lesion_case.image.index_to_world(idx)
    cents = np.array([k["centre_xyz"] for k in lesion_case.info["kidneys"].values()])
    reach = max(max(k["half_axes_mm"]) for k in lesion_case.info["kidneys"].values()) + 100 / 2 * 1.1
    d = np.linalg.norm(xyz[:, None, :] - cents[None], axis=2).min(1)
    assert d.max() < reach


def test_tumors_touch_kidneys_and_cysts_are_not_tumor(lesion_case):
    lab, tis = lesion_case.label.array, lesion_case.tissue
    assert len(lesion_case.info["tumors"]) == 3 and len(lesion_case.info["cysts"]) == 2
    comps, n = cc3d.connected_components(lab == 2, connectivity=26, return_N=True)
    assert n >= 1
    for c in range(1, n + 1):
        grown = ndi.binary_dilation(comps == c, iterations=2)
        assert (lab[grown] == 1).any(), "tumour component does not touch a kidney"
    cyst = is_cyst(tis)
    assert cyst.any()
    assert (lab[cyst] == 0).all()
    labelled = make_phantom(7, n_tumors=3, n_cysts=2, cyst_label=True, **SMALL)
    assert (labelled.label.array[cyst] == 3).all()
    assert np.array_equal(labelled.label.array[~cyst], lab[~cyst])


def test_no_tumours_and_kidney_options():
    ph = make_phantom(2, n_tumors=0, n_cysts=0, **SMALL)
    assert not (ph.label.array == 2).any() and (ph.label.array == 1).any()
    left = make_phantom(2, n_tumors=1, kidneys="left", **SMALL)
    assert set(left.info["kidneys"]) == {"left"}
    xyz = left.image.index_to_world(np.argwhere(left.label.array > 0)[:, ::-1])
    assert (xyz[:, 0] > left.info["anatomy"]["cx"]).all()  # LPS +x is the patient's left
    none = make_phantom(2, kidneys="none", **SMALL)
    assert not none.label.array.any() and none.info["tumors"] == []
    with pytest.raises(InputError, match="without kidneys cannot have tumors"):
        make_phantom(2, kidneys="none", n_tumors=1, **SMALL)


def test_tumour_diameters_in_range():
    for seed in (11, 12):
        ph = make_phantom(seed, n_tumors=2, n_cysts=0, tumor_diameter_mm=(20.0, 40.0), **SMALL)
        for t in ph.info["tumors"]:
            assert 20.0 <= t["diameter_mm"] <= 40.0
            assert t["voxels"] > 0
            assert max(t["extent_mm"]) <= 1.2 * t["diameter_mm"] + 2 * max(ph.image.spacing)
            assert t["side"] in ("left", "right") and isinstance(t["exophytic"], bool)
            assert isinstance(t["necrotic"], bool) and len(t["centre_xyz"]) == 3


def test_anatomy_is_where_it_belongs(lesion_case):
    tis, img = lesion_case.tissue, lesion_case.image
    cx = lesion_case.info["anatomy"]["cx"]

    def centre(code):
        idx = np.argwhere(tis == code)
        return img.index_to_world(idx[:, ::-1].mean(0))

    assert centre(T.LIVER)[0] < cx < centre(T.SPLEEN)[0]  # liver on the patient's right (-x)
    assert centre(T.IVC)[0] < centre(T.AORTA)[0]
    assert centre(T.LUNG)[2] > centre(T.CORTEX)[2]  # array axis 0 runs inferior -> superior
    assert lesion_case.info["kidneys"]["left"]["centre_xyz"][0] > cx > lesion_case.info["kidneys"]["right"]["centre_xyz"][0]


# tissue: (low, high) median HU, portal-venous-like contrast CT
HU_RANGES = {
    T.SUBFAT: (-125, -75), T.VFAT: (-125, -70), T.MUSCLE: (30, 80), T.LIVER: (65, 140), T.SPLEEN: (90, 150),
    T.CORTEX: (130, 260), T.AORTA: (110, 330), T.CANCELLOUS: (150, 400), T.LUNG: (-950, -700), T.AIR: (-1024, -950),
    T.BOWEL_FLUID: (-10, 45),
}


def test_tissue_hu_in_realistic_ranges():
    for seed in (21, 22):
        ph = make_phantom(seed, n_tumors=2, n_cysts=2, shape=(40, 160, 160), spacing=(2.2, 2.2, 5.0))
        img, tis = ph.image.array.astype(np.float32), ph.tissue
        for code, (lo, hi) in HU_RANGES.items():
            m = _erode(tis == code)
            if m.sum() < 30:
                continue
            med = float(np.median(img[m]))
            assert lo <= med <= hi, (code, med)
        cortex = float(np.median(img[_erode(tis == T.CORTEX, 1)]))
        tum = _erode(ph.label.array == 2, 1)
        if tum.sum() > 30:
            assert 20 <= float(np.median(img[tum])) < cortex
        cyst = _erode(is_cyst(tis), 1)
        if cyst.sum() > 30:
            assert -15 <= float(np.median(img[cyst])) <= 35
        fat = _erode(tis == T.SUBFAT, 2)
        sd = float(np.std(img[fat] - ndi.uniform_filter(img, 5)[fat]))
        assert 3 <= sd <= 30


def test_randomize_intensity_changes_only_intensities():
    a = make_phantom(5, **SMALL)
    b = make_phantom(5, randomize_intensity=True, **SMALL)
    assert np.array_equal(a.label.array, b.label.array)
    assert not np.array_equal(a.image.array, b.image.array)
    assert b.info["randomize_intensity"] is True


def _organ_voxels_touching_kidney(ph):
    tis = np.asarray(ph.tissue)
    kidney = np.isin(tis, list(KIDNEY_CODES))
    shell = ndi.binary_dilation(kidney, iterations=1) & ~kidney
    return int(np.isin(tis[shell], [T.LIVER, T.SPLEEN]).sum())


def test_organ_contact_removes_the_fat_plane_and_nothing_else():
    # 0: perirenal fat always separates liver and spleen from the kidneys (phantoms before the option)
    sep = make_phantom(5, organ_contact=0.0, **SMALL)
    touch = make_phantom(5, organ_contact=1.0, **SMALL)
    assert _organ_voxels_touching_kidney(sep) == 0
    assert _organ_voxels_touching_kidney(touch) > 20
    assert touch.info["anatomy"]["left_contact"] == 1.0 and touch.info["organ_contact"] == 1.0
    # the kidneys and lesions (the labels) do not move
    assert np.array_equal(sep.label.array, touch.label.array)
    with pytest.raises(InputError, match=r"organ_contact must be a probability in \[0, 1\], got 1.5"):
        make_phantom(5, organ_contact=1.5, **SMALL)


def _bowel_wall_near_kidney(ph, mm=15.0):
    tis = np.asarray(ph.tissue)
    kidney = np.isin(tis, list(KIDNEY_CODES))
    dist = ndi.distance_transform_edt(~kidney, sampling=ph.image.spacing[::-1])
    return int(((tis == T.BOWEL_WALL) & (dist < mm)).sum())


def test_bowel_contact_brings_enhancing_loops_to_the_kidneys():
    base = make_phantom(5, **SMALL)
    # 0 (the default) paints exactly what phantoms before the option had
    assert np.array_equal(make_phantom(5, bowel_contact=0.0, **SMALL).image.array, base.image.array)
    near = make_phantom(5, bowel_contact=1.0, **SMALL)
    assert near.info["bowel_contact"] == 1.0 and near.info["anatomy"]["left_bowel_reach"] >= 20.0
    assert _bowel_wall_near_kidney(near) > 1.2 * _bowel_wall_near_kidney(base)
    assert near.info["intensity"]["mean"]["bowel_wall"] - base.info["intensity"]["mean"]["bowel_wall"] >= 15.0
    # kidneys and lesions stay where they were
    assert np.array_equal(near.label.array, base.label.array)
    with pytest.raises(InputError, match=r"bowel_contact must be a probability in \[0, 1\], got -0.1"):
        make_phantom(5, bowel_contact=-0.1, **SMALL)



def test_hypervascular_tumors_enhance_almost_like_the_cortex(tmp_path):
    kw = dict(n_tumors=2, **SMALL)
    base = make_phantom(7, **kw)
    # 0 (the default) paints exactly what phantoms before the option had
    assert np.array_equal(make_phantom(7, hypervascular=0.0, **kw).image.array, base.image.array)
    hyper = make_phantom(7, hypervascular=1.0, **kw)
    assert hyper.info["hypervascular"] == 1.0 and base.info["hypervascular"] == 0.0
    # the same anatomy, kidneys and lesions; only the tumors' HU change
    assert np.array_equal(hyper.label.array, base.label.array)
    assert np.array_equal(hyper.tissue, base.tissue)
    img, img0 = hyper.image.array.astype(np.float32), base.image.array.astype(np.float32)
    cortex = float(np.median(img[_erode(hyper.tissue == T.CORTEX, 1)]))
    tum = _erode(hyper.label.array == 2, 1)
    assert tum.sum() > 30
    med, med0 = float(np.median(img[tum])), float(np.median(img0[tum]))
    assert med0 < min(120.0, cortex - 20) and 100.0 <= med < cortex and med > med0 + 20
    # nothing changes farther than 10 mm from a tumor (partial-volume blur reaches just past its edge)
    far = ndi.distance_transform_edt(hyper.label.array != 2, sampling=hyper.image.spacing[::-1]) > 10.0
    assert np.array_equal(img[far], img0[far])
    for t in hyper.info["tumors"]:
        assert max(100.0, hyper.info["intensity"]["mean"]["cortex"] - 70) <= t["hu"] <= \
            hyper.info["intensity"]["mean"]["cortex"] - 5
    with pytest.raises(InputError, match=r"hypervascular must be a probability in \[0, 1\], got 1.5"):
        make_phantom(7, hypervascular=1.5, **kw)
    # the command line passes it on
    from KidneyTumorSegLib.cli import main
    shape = [str(v) for v in SMALL["shape"]]
    spacing = [str(v) for v in SMALL["spacing"]]
    assert main(["phantom", str(tmp_path / "p"), "--seed", "7", "--tumors", "2", "--hypervascular", "1",
                 "--shape", *shape, "--spacing", *spacing]) == 0
    info = json.loads((tmp_path / "p" / "case_00000" / "phantom_info.json").read_text())
    assert info["hypervascular"] == 1.0 and [t["hu"] for t in info["tumors"]] == [t["hu"] for t in hyper.info["tumors"]]

def test_default_geometry_is_realistic():
    for seed in range(20):
        shape, sp = scan_geometry(np.random.default_rng(seed), None, None)
        assert shape[1:] == (512, 512) and 0.6 <= sp[0] == sp[1] <= 0.9 and 0.5 <= sp[2] <= 5.0
        assert shape[0] <= 400 and 150 <= shape[0] * sp[2] <= 400
    shape, sp = scan_geometry(np.random.default_rng(0), (30, 100, 100), None)
    assert shape == (30, 100, 100) and 300 <= sp[0] * 100 <= 460


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(InputError, match="seed must be a non-negative integer"):
        make_phantom(-1, **SMALL)
    with pytest.raises(InputError, match="kidneys must be"):
        make_phantom(1, kidneys="three", **SMALL)
    with pytest.raises(InputError, match="shape must be three positive integers"):
        make_phantom(1, shape=(0, 10, 10), spacing=(1, 1, 1))
    with pytest.raises(InputError, match="z_supersample must be a positive odd integer"):
        make_phantom(1, z_supersample=2, **SMALL)


def _small_kits_label():
    import SimpleITK as sitk

    path = DATA / "kits19-labels" / "case_00061.nii.gz"  # 29 slices of 5 mm: the smallest KiTS19 case
    if not path.exists():
        pytest.skip(f"real KiTS19 labels not available ({path} missing)")
    img = sitk.ReadImage(str(path))
    arr = sitk.GetArrayFromImage(img)
    sp = img.GetSpacing()
    # keep every 3rd voxel along the two in-plane axes (numpy axes 0 and 1 here: the slice axis is last)
    return Volume(np.ascontiguousarray(arr[::3, ::3, :]), (sp[0], sp[1] * 3, sp[2] * 3), img.GetOrigin(),
                  img.GetDirection())


def test_kits_label_is_reproduced_exactly_with_its_geometry():
    ref = _small_kits_label()
    ph = make_phantom(9, kits_label=ref)
    assert ph.image.same_grid(ref) and ph.label.same_grid(ref)
    assert ph.label.array.dtype == np.uint8 and np.array_equal(ph.label.array, ref.array)
    img = ph.image.array.astype(np.float32)
    kid = _erode(ref.array == 1, 1)
    assert float(np.median(img[kid])) > 80  # enhancing kidney where the label says kidney
    assert np.isin(ph.tissue[ref.array == 1], KIDNEY_CODES).all() and is_tumor(ph.tissue[ref.array == 2]).all()
    assert float(np.median(img[0, 0])) < -900  # air in the corner of the field of view
    sides = set(ph.info["kidneys"])
    assert sides <= {"left", "right"} and len(sides) >= 1
    assert ph.info["from_kits_label"] and len(ph.info["tumors"]) >= 1
    with pytest.raises(InputError, match="come from kits_label"):
        make_phantom(9, kits_label=ref, shape=(10, 10, 10))


def test_find_kidneys_of_a_label_without_kidneys_is_empty():
    from KidneyTumorSegLib.phantom.phantom_field import Grid
    from KidneyTumorSegLib.phantom.phantom_kits import find_kidneys

    grid = Grid(np.arange(4.0), np.arange(5.0), np.arange(3.0))
    assert find_kidneys(np.zeros((3, 5, 4), np.uint8), grid) == []


def test_phantom_modules_import_one_another_without_a_cycle():
    import ast

    import KidneyTumorSegLib
    from KidneyTumorSegLib import phantom
    from KidneyTumorSegLib.phantom import phantom_io
    from KidneyTumorSegLib.phantom import phantom_make

    root = Path(KidneyTumorSegLib.__file__).parent
    mods = {p.stem: p for p in root.glob("phantom*.py")}
    # every relative import, also those inside functions: a late import is still a cycle
    graph = {m: {n.module for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, ast.ImportFrom)
                 and n.level == 1 and n.module in mods} for m, p in mods.items()}
    done = set()

    def visit(m, path):
        assert m not in path, "import cycle: " + " -> ".join(path + [m])
        if m not in done:
            for d in sorted(graph[m]):
                visit(d, path + [m])
            done.add(m)

    for m in sorted(graph):
        visit(m, [])
    assert phantom.make_phantom is phantom_make.make_phantom and phantom.Phantom is phantom_make.Phantom
    assert phantom.write_phantom_cases is phantom_io.write_phantom_cases


def test_write_phantom_cases_layout_readback_and_no_overwrite(tmp_path):
    import SimpleITK as sitk

    cases = write_phantom_cases(tmp_path, 2, seed0=40, shape=(20, 64, 64), spacing=(5.0, 5.0, 8.0))
    assert [c.name for c in cases] == ["case_00000", "case_00001"]
    for i, case in enumerate(cases):
        assert sorted(p.name for p in case.iterdir()) == ["imaging.nii.gz", "phantom_info.json", "segmentation.nii.gz"]
        ref = make_phantom(40 + i, shape=(20, 64, 64), spacing=(5.0, 5.0, 8.0))
        img = sitk.ReadImage(str(case / "imaging.nii.gz"))
        seg = sitk.ReadImage(str(case / "segmentation.nii.gz"))
        assert np.array_equal(sitk.GetArrayFromImage(img), ref.image.array)
        assert np.array_equal(sitk.GetArrayFromImage(seg), ref.label.array)
        assert np.allclose(img.GetSpacing(), (5.0, 5.0, 8.0)) and np.allclose(img.GetOrigin(), ref.image.origin)
        assert json.loads((case / "phantom_info.json").read_text())["seed"] == 40 + i
    before = (cases[0] / "imaging.nii.gz").stat().st_mtime_ns
    with pytest.raises(FileExistsError, match=r"output exists: .*case_00000 \(use --overwrite to replace it\)"):
        write_phantom_cases(tmp_path, 1, seed0=99, shape=(20, 64, 64), spacing=(5.0, 5.0, 8.0))
    assert (cases[0] / "imaging.nii.gz").stat().st_mtime_ns == before
    write_phantom_cases(tmp_path, 1, seed0=99, overwrite=True, shape=(20, 64, 64), spacing=(5.0, 5.0, 8.0))
    assert json.loads((cases[0] / "phantom_info.json").read_text())["seed"] == 99
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]
    with pytest.raises(InputError, match='layout must be "kits"'):
        write_phantom_cases(tmp_path, 1, layout="flat")


def test_small_phantom_is_fast():
    make_phantom(1, shape=(16, 32, 32), spacing=(8.0, 8.0, 10.0))  # warm imports
    t = time.perf_counter()
    make_phantom(30, **SMALL)
    assert time.perf_counter() - t < 2.0


@pytest.mark.slow
def test_benchmark_size_within_budget():
    t = time.perf_counter()
    ph = make_phantom(0, shape=(200, 512, 512), spacing=(0.78, 0.78, 2.5))
    assert time.perf_counter() - t < 25.0
    assert ph.image.shape == (200, 512, 512)

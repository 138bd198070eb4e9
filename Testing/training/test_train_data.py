"""ktstrain data discovery, stage preprocessing cache and patch sampler, on tiny synthetic KiTS cases."""
from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from KidneyTumorSegLib.cascade import kidney_crop
from KidneyTumorSegLib.config import StageConfig
from KidneyTumorSegLib.geometry.records import Crop, canonical_reorient, resample_record
from KidneyTumorSegLib.engine.intensity import normalise, normalised_value
from KidneyTumorSegLib.geometry.volume import InputError
from KidneyTumorSegLib.io.volume_io import read_label, read_volume
from ktstrain import preprocess as pp
from ktstrain.data import Case, LabelMap, discover_cases
from ktstrain.preprocess import PreprocessOptions, StageCache, preprocess_stage, resample_label
from ktstrain.sampler import PatchSampler, stage_target

SHAPE = (24, 48, 48)  # (k, j, i)
SPACING_ZYX = (3.0, 1.5, 1.5)
# KiTS19 stores the slice axis first in i order: columns of the direction are the index axes' world axes
KITS_DIRECTION = (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0)


def _ball(shape, spacing_zyx, centre_mm, r_mm):
    k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return ((k * spacing_zyx[0] - centre_mm[0]) ** 2 + (j * spacing_zyx[1] - centre_mm[1]) ** 2
            + (i * spacing_zyx[2] - centre_mm[2]) ** 2) <= r_mm ** 2


def make_case(seed: int, cyst: bool = True):
    """Canonical-grid image (int16 HU) and raw label: two kidneys, a tumor, optionally a cyst (label 3)."""
    rng = np.random.default_rng(seed)
    img = np.full(SHAPE, -1000, np.int16)
    lab = np.zeros(SHAPE, np.uint8)
    ext = np.array(SHAPE) * np.array(SPACING_ZYX)
    body = _ball(SHAPE, SPACING_ZYX, ext / 2, 34.0)
    img[body] = 40
    cz, cy = ext[0] / 2 + rng.uniform(-3, 3), ext[1] / 2 + rng.uniform(-3, 3)
    for x in (ext[2] * 0.3, ext[2] * 0.7):
        lab[_ball(SHAPE, SPACING_ZYX, (cz, cy, x), 9.0)] = 1
    lab[_ball(SHAPE, SPACING_ZYX, (cz + 3, cy, ext[2] * 0.7 + 5), 4.0)] = 2
    if cyst:
        lab[_ball(SHAPE, SPACING_ZYX, (cz - 3, cy, ext[2] * 0.3 - 6), 3.5)] = 3
    img[lab == 1] = 180
    img[lab == 2] = 70
    img[lab == 3] = 10
    img = (img + rng.normal(0, 8, SHAPE) * body).astype(np.int16)
    return img, lab


def write_case(folder: Path, img: np.ndarray, lab: np.ndarray, kits19_axes: bool = False,
               label_name: str = "segmentation.nii.gz") -> None:
    """Write a KiTS case folder; ``kits19_axes`` stores the arrays with KiTS19's swapped axes."""
    folder.mkdir(parents=True, exist_ok=True)
    sp = SPACING_ZYX[::-1]
    direction = (1, 0, 0, 0, 1, 0, 0, 0, 1)
    if kits19_axes:
        img, lab = np.ascontiguousarray(img.transpose(2, 1, 0)), np.ascontiguousarray(lab.transpose(2, 1, 0))
        sp, direction = SPACING_ZYX, KITS_DIRECTION
    for arr, name in ((img, "imaging.nii.gz"), (lab, label_name)):
        im = sitk.GetImageFromArray(arr)
        im.SetSpacing(sp)
        im.SetOrigin((-30.0, 20.0, 100.0))
        im.SetDirection(direction)
        sitk.WriteImage(im, str(folder / name), True)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kits")
    write_case(root / "case_00000", *make_case(0, cyst=False), kits19_axes=True)
    write_case(root / "case_00001", *make_case(1, cyst=True))
    write_case(root / "case_00002", *make_case(2, cyst=True))
    return root


def stages():
    return {
        "roi": StageConfig("coarse", "roi", spacing=(4.5, 4.5, 4.5), patch_size=(16, 16, 16),
                           normalization="zscore", norm_mean=-300.0, norm_std=500.0),
        "kidney": StageConfig("kidney", "kidney", spacing=(3.0, 2.0, 2.0), patch_size=(16, 24, 24), margin_mm=6.0),
        "tumor": StageConfig("tumor", "tumor", spacing=(2.0, 1.2, 1.2), patch_size=(16, 24, 24), margin_mm=6.0,
                             mask_outside=True, mask_value=-1024.0, mask_dilation_mm=2.0, norm_std=300.0),
    }


OPTS = PreprocessOptions(kidney_extra_margin_mm=10.0, min_kidney_ml=1.0, locations_per_class=500, intensity_samples=2000)


@pytest.fixture(scope="module")
def caches(data_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    cases = discover_cases(data_root)
    return root, {role: preprocess_stage(cases, st, root, OPTS) for role, st in stages().items()}


# --------------------------------------------------------------------------
# discovery and labels
# --------------------------------------------------------------------------
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


# --------------------------------------------------------------------------
# preprocessing cache
# --------------------------------------------------------------------------
def _canonical(case: Case):
    img = read_volume(case.image_path, validate=False)
    reo = canonical_reorient(img)
    return reo.volume(img), reo.apply(read_label(case.label_path).array)


def test_roi_stage_matches_canonical_resampling(caches, data_root):
    root, res = caches
    st = stages()["roi"]
    cache = res["roi"].cache
    assert [it.case_id for it in cache.items] == ["case_00000", "case_00001", "case_00002"]
    case = discover_cases(data_root)[0]  # stored with KiTS19's swapped axes
    can, raw = _canonical(case)
    rec = resample_record(can.shape, can.spacing_zyx, st.spacing)
    item = cache.items[0]
    want = np.clip(np.rint(rec.apply(can.array.astype(np.float32))), -32768, 32767).astype(np.int16)
    assert item.image().dtype == np.int16 and isinstance(item.image(), np.memmap)
    np.testing.assert_array_equal(item.image(), want)
    np.testing.assert_array_equal(item.label(), resample_label(LabelMap().apply(raw)[0], rec))
    assert np.allclose(item.spacing_zyx, [a * b / c for a, b, c in zip(can.spacing_zyx, can.shape, rec.out_shape)])
    # the other case had the same anatomy stored canonically: the grids agree in the world
    assert np.allclose(item.volume().origin, cache.items[1].volume().origin, atol=1e-4)
    locs = item.locations()
    lab = np.asarray(item.label())
    assert len(locs["fg"]) and (lab[tuple(locs["fg"].T)] > 0).all() and (lab[tuple(locs["tumor"].T)] == 2).all()
    assert "cyst" not in locs and "cyst" in cache.items[1].locations()


def test_tumor_stage_is_kidney_crop(caches, data_root):
    root, res = caches
    st = stages()["tumor"]
    cache = res["tumor"].cache
    case = discover_cases(data_root)[1]
    items = [it for it in cache.items if it.case_id == case.case_id]
    assert [it.name for it in items] == ["k0", "k1"]
    can, raw = _canonical(case)
    mapped, cyst = LabelMap().apply(raw)
    region = (mapped > 0) | cyst
    import cc3d

    cc = cc3d.connected_components(region, connectivity=26)
    cuts = []  # redo each kidney's cut the way inference does
    for c in range(1, int(cc.max()) + 1):
        kc = kidney_crop(can, cc == c, (0, 0, 0), st)
        rec = resample_record(kc.volume.shape, kc.volume.spacing_zyx, st.spacing)
        cuts.append((kc, rec, rec.volume(kc.volume, array=np.zeros((1, 1, 1)))))
    assert len(cuts) == 2
    for it in items:
        (kc, rec, geo), = [c for c in cuts if np.allclose(c[2].origin, it.origin, atol=1e-4)]
        assert np.allclose(geo.spacing, it.spacing)
        vol, allowed = kc.volume, kc.allowed
        np.testing.assert_array_equal(it.image(), np.rint(rec.apply(vol.array.astype(np.float32))))
        assert (vol.array[~allowed] == -1024).all() and (vol.array[allowed] > -1024).all()
        klab = Crop(kc.box, can.shape).apply(mapped)
        klab[~allowed] = 0
        np.testing.assert_array_equal(it.label(), resample_label(klab, rec))
    assert {it.voxels["tumor"] > 0 for it in items} == {True, False}
    assert sum(it.voxels["cyst"] for it in items) > 0  # the cyst lies inside its kidney's crop (hard negative)


def test_tumor_stage_wide_mask_items(data_root, tmp_path):
    """tumor_mask_extra_mm: a second item per kidney whose mask lets in what surrounds the kidney, no more tumor."""
    st = stages()["tumor"]
    cases = discover_cases(data_root)[1:2]
    narrow = preprocess_stage(cases, st, tmp_path, OPTS).cache
    wide = preprocess_stage(cases, st, tmp_path, replace(OPTS, tumor_mask_extra_mm=8.0)).cache
    assert wide.cache_dir != narrow.cache_dir
    assert [it.name for it in wide.items] == ["k0", "k0w", "k1", "k1w"]
    by = {it.name: it for it in wide.items}
    for n in ("k0", "k1"):
        np.testing.assert_array_equal(by[n].image(), {it.name: it for it in narrow.items}[n].image())
        a, b = by[n], by[n + "w"]
        visible = lambda it: int((np.asarray(it.image()) > -1024).sum())
        assert visible(b) > 1.5 * visible(a)  # more of the surroundings shows through the mask
        assert a.voxels["tumor"] == pytest.approx(b.voxels["tumor"], rel=0.02)  # the same tumor, nothing added
    # the option left at 0 keeps the key (and so the caches) of runs made before it existed
    assert "tumor_mask_extra_mm" not in OPTS.to_dict()
    with pytest.raises(ValueError, match="tumor_mask_extra_mm must be >= 0"):
        replace(OPTS, tumor_mask_extra_mm=-1.0)


def test_tumor_stage_cut_mask_items(data_root, tmp_path):
    """tumor_mask_cut_mm: a kidney with tumor gets an item whose mask (and so its label) stops part way
    into the tumor, as stage 2's masks do; kidneys without tumor get none."""
    st = stages()["tumor"]
    cases = discover_cases(data_root)[1:2]
    base = {it.name: it for it in preprocess_stage(cases, st, tmp_path, OPTS).cache.items}
    cut = preprocess_stage(cases, st, tmp_path, replace(OPTS, tumor_mask_cut_mm=4.0)).cache
    assert [it.name for it in cut.items] == ["k0", "k1", "k1c"] and base["k0"].voxels["tumor"] == 0
    by = {it.name: it for it in cut.items}
    a, c = base["k1"], by["k1c"]
    assert 0 < c.voxels["tumor"] < 0.8 * a.voxels["tumor"]
    assert c.voxels["kidney"] == pytest.approx(a.voxels["kidney"], rel=0.02)
    image, label = np.asarray(c.image()), np.asarray(c.label())
    assert not ((label > 0) & (image <= -1024)).any()  # no label where the mask hides the image
    assert "tumor_mask_cut_mm" not in OPTS.to_dict()
    with pytest.raises(ValueError, match="tumor_mask_cut_mm must be >= 0"):
        replace(OPTS, tumor_mask_cut_mm=-1.0)


def test_kidney_stage_crop_and_intensity_stats(caches, data_root):
    root, res = caches
    r = res["kidney"]
    cache = r.cache
    it = cache.items[1]
    lab = np.asarray(it.label())
    margin = (stages()["kidney"].margin_mm + OPTS.kidney_extra_margin_mm)
    fb = it.fg_box
    assert fb is not None and all(a >= 0 and b <= n for (a, b), n in zip(fb, it.shape))
    # margin around the region, except where the image ends
    assert fb[2][0] * it.spacing_zyx[2] >= margin - 2 * it.spacing_zyx[2] or fb[2][0] == 0
    assert set(np.unique(lab)) == {0, 1, 2}
    # exact foreground statistics of the full-resolution canonical voxels
    vals = []
    for c in discover_cases(data_root):
        can, raw = _canonical(c)
        vals.append(can.array[LabelMap().apply(raw)[0] > 0].astype(float))
    v = np.concatenate(vals)
    s = r.intensity
    assert s.n_cases == 3 and s.n_voxels == v.size
    assert s.mean == pytest.approx(v.mean()) and s.std == pytest.approx(v.std())
    assert s.p00_5 <= s.mean <= s.p99_5
    st2 = s.apply(stages()["kidney"])
    assert st2.norm_mean == pytest.approx(v.mean(), abs=1e-3) and st2.norm_std == pytest.approx(v.std(), abs=1e-3)
    assert json.loads((r.cache_dir / "intensity.json").read_text())["n_voxels"] == v.size


def test_cache_reuse_invalidation_and_changed_case(tmp_path):
    for n in range(2):
        write_case(tmp_path / "data" / f"case_{n:05d}", *make_case(10 + n))
    cases = discover_cases(tmp_path / "data")
    st = stages()["kidney"]
    r1 = preprocess_stage(cases, st, tmp_path / "c", OPTS)
    assert r1.processed == ["case_00000", "case_00001"] and r1.reused == []
    files = sorted(p for p in r1.cache_dir.rglob("*.npy"))
    mtimes = [p.stat().st_mtime_ns for p in files]
    r2 = preprocess_stage(cases, st, tmp_path / "c", OPTS)
    assert r2.processed == [] and r2.reused == ["case_00000", "case_00001"] and r2.cache_dir == r1.cache_dir
    assert [p.stat().st_mtime_ns for p in files] == mtimes
    # a changed case file is rebuilt under a new entry, the old entry goes
    img, lab = make_case(99)
    write_case(tmp_path / "data" / "case_00001", img, lab)
    os.utime(tmp_path / "data" / "case_00001" / "imaging.nii.gz", ns=(1, 10 ** 18))
    r3 = preprocess_stage(discover_cases(tmp_path / "data"), st, tmp_path / "c", OPTS)
    assert r3.processed == ["case_00001"] and r3.reused == ["case_00000"]
    assert len(list((r3.cache_dir / "cases").glob("case_00001.*"))) == 1
    # a changed configuration gets a new cache; prune removes the old one
    r4 = preprocess_stage(cases, replace(st, spacing=(3.0, 2.5, 2.5)), tmp_path / "c", OPTS, prune=True)
    assert r4.cache_dir != r1.cache_dir and len(r4.processed) == 2 and not r1.cache_dir.exists()
    # normalisation is not part of the key: HU is stored
    r5 = preprocess_stage(cases, replace(st, spacing=(3.0, 2.5, 2.5), norm_mean=55.0, window=(-200.0, 400.0)),
                          tmp_path / "c", OPTS)
    assert r5.cache_dir == r4.cache_dir and r5.processed == []
    assert pp.cache_key(st, OPTS) != pp.cache_key(st, replace(OPTS, label_interpolation="nearest"))
    assert not list(tmp_path.rglob(".tmp-*"))


def test_killed_write_leaves_no_entry(tmp_path, monkeypatch):
    write_case(tmp_path / "data" / "case_00000", *make_case(5))
    cases = discover_cases(tmp_path / "data")
    st = stages()["tumor"]
    real_save, calls = np.save, []

    def failing_save(path, arr, *a, **k):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed half way through the entry
        return real_save(path, arr, *a, **k)

    monkeypatch.setattr(np, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        preprocess_stage(cases, st, tmp_path / "c", OPTS)
    monkeypatch.setattr(np, "save", real_save)
    cdir = pp.stage_cache_dir(tmp_path / "c", st, OPTS)
    assert list((cdir / "cases").iterdir()) == []
    r = preprocess_stage(cases, st, tmp_path / "c", OPTS)
    assert r.processed == ["case_00000"] and len(r.cache.items) == 2
    assert not [p for p in (tmp_path / "c").rglob("*") if p.name.startswith(".tmp")]


def test_workers_give_the_same_bytes(tmp_path, data_root):
    cases = discover_cases(data_root)[1:]
    st = stages()["tumor"]
    a = preprocess_stage(cases, st, tmp_path / "a", OPTS, workers=1)
    b = preprocess_stage(cases, st, tmp_path / "b", OPTS, workers=2)
    fa = sorted(p.relative_to(a.cache_dir) for p in a.cache_dir.rglob("*.np*"))
    assert fa == sorted(p.relative_to(b.cache_dir) for p in b.cache_dir.rglob("*.np*")) and fa
    for rel in fa:
        if rel.suffix == ".npy":
            assert (a.cache_dir / rel).read_bytes() == (b.cache_dir / rel).read_bytes(), rel
        else:  # zip members carry their write time
            with np.load(a.cache_dir / rel) as za, np.load(b.cache_dir / rel) as zb:
                assert za.files == zb.files and all(np.array_equal(za[f], zb[f]) for f in za.files), rel


def test_empty_label_is_skipped_for_crop_stages(tmp_path):
    img, lab = make_case(7)
    write_case(tmp_path / "data" / "case_00000", img, np.zeros_like(lab))
    r = preprocess_stage(discover_cases(tmp_path / "data"), stages()["tumor"], tmp_path / "c", OPTS)
    assert r.skipped == {"case_00000": "no kidney in the label map"} and r.cache.items == [] and r.intensity is None
    with pytest.raises(ValueError, match="no items"):
        PatchSampler(r.cache, stages()["tumor"])


# --------------------------------------------------------------------------
# sampler
# --------------------------------------------------------------------------
def test_sampler_fractions_and_determinism(caches):
    root, res = caches
    st = stages()["tumor"]
    s = PatchSampler(res["tumor"].cache, st, samples_per_epoch=600, fg_fraction=0.33, hard_negative_fraction=0.1, seed=3)
    kinds = [s.draw(i)[1] for i in range(600)]
    assert abs(kinds.count("fg") / 600 - 0.33) < 0.06
    assert abs(kinds.count("cyst") / 600 - 0.10) < 0.04
    a, b = s[17], s[17]
    assert a["image"].dtype == np.float32 and a["image"].shape == (1,) + st.patch_size
    assert a["label"].dtype == np.uint8 and a["label"].shape == st.patch_size
    np.testing.assert_array_equal(a["image"], b["image"])
    s2 = PatchSampler(res["tumor"].cache, st, samples_per_epoch=600, seed=3)
    assert [s2.draw(i)[2].tolist() for i in range(20)] == [s.draw(i)[2].tolist() for i in range(20)]
    s2.set_epoch(1)
    assert [s2.draw(i)[2].tolist() for i in range(20)] != [s.draw(i)[2].tolist() for i in range(20)]
    import pickle

    s3 = pickle.loads(pickle.dumps(s))  # as DataLoader workers get it
    np.testing.assert_array_equal(s3[5]["image"], s[5]["image"])


def test_stage_targets_by_role_and_classes():
    lab = np.array([0, 1, 2, 0, 2], np.uint8)
    st = stages()
    np.testing.assert_array_equal(stage_target(lab, st["tumor"]), [0, 0, 1, 0, 1])
    np.testing.assert_array_equal(stage_target(lab, st["kidney"]), [0, 1, 1, 0, 1])
    np.testing.assert_array_equal(stage_target(lab, st["roi"]), [0, 1, 1, 0, 1])
    # kidney and tumor as separate classes: the labels themselves
    three = replace(st["kidney"], network=replace(st["kidney"].network, out_channels=3),
                    labels=("background", "kidney", "tumor"), foreground_channels=(1, 2))
    np.testing.assert_array_equal(stage_target(lab, three), lab)


def test_sampler_centres_on_tumor_and_cyst(caches):
    root, res = caches
    st = stages()["tumor"]
    s = PatchSampler(res["tumor"].cache, st, samples_per_epoch=200, seed=1, centre_jitter=0.0,
                     fg_fraction=0.5, hard_negative_fraction=0.5, target="labels")
    centre = tuple(p // 2 for p in st.patch_size)
    got = {"fg": 0, "cyst": 0}
    for i in range(60):
        d = s[i]
        n, kind, start, _ = s.draw(i)
        if kind == "cyst":
            cy = s.items[n].cyst()
            assert cy[tuple(start + np.array(centre))]
        elif kind == "fg" and s.items[n].voxels["tumor"]:
            assert d["label"][centre] == 2
        got[kind] = got.get(kind, 0) + 1
    assert got["fg"] and got["cyst"]
    # the stage target of the tumor stage is label == 2
    bin_ = PatchSampler(res["tumor"].cache, st, seed=1, centre_jitter=0.0, fg_fraction=0.5, hard_negative_fraction=0.5)
    np.testing.assert_array_equal(bin_[3]["label"], stage_target(s[3]["label"], st))


def test_kidney_sampler_tumor_fraction(caches):
    """Extra tumor-centred patches for the kidney stage, whose misses are exophytic tumors."""
    root, res = caches
    st = stages()["kidney"]
    cache = res["kidney"].cache
    assert any(it.voxels["tumor"] for it in cache.items)
    s = PatchSampler(cache, st, samples_per_epoch=400, seed=4, centre_jitter=0.0, fg_fraction=0.3, tumor_fraction=0.3,
                     hard_negative_fraction=0.1, target="labels", margin_mm_range=(500.0, 500.0))
    draws = [s.draw(i) for i in range(400)]
    kinds = [d[1] for d in draws]
    assert abs(kinds.count("tumor") / 400 - 0.3) < 0.07 and abs(kinds.count("fg") / 400 - 0.3) < 0.07
    centre = tuple(p // 2 for p in st.patch_size)
    tumor_draws = [i for i, d in enumerate(draws) if d[1] == "tumor"][:15]
    assert tumor_draws and all(s.items[draws[i][0]].voxels["tumor"] > 0 for i in tumor_draws)
    assert all(s[i]["label"][centre] == 2 for i in tumor_draws)
    # tumor_fraction 0 draws exactly what a sampler without the option draws (earlier runs stay reproducible)
    a = PatchSampler(cache, st, samples_per_epoch=50, seed=4, fg_fraction=0.3, hard_negative_fraction=0.1)
    b = PatchSampler(cache, st, samples_per_epoch=50, seed=4, fg_fraction=0.3, hard_negative_fraction=0.1,
                     tumor_fraction=0.0)
    assert [a.draw(i)[2].tolist() for i in range(50)] == [b.draw(i)[2].tolist() for i in range(50)]
    with pytest.raises(ValueError, match="add up to at most 1"):
        PatchSampler(cache, st, fg_fraction=0.6, tumor_fraction=0.5, hard_negative_fraction=0.0)


def test_sampler_pads_at_the_border(caches):
    root, res = caches
    st = stages()["roi"]
    big = (40, 40, 40)  # larger than the coarse image: always padded
    s = PatchSampler(res["roi"].cache, st, patch_size=big, fg_fraction=0.0, hard_negative_fraction=0.0, seed=0)
    d = s[0]
    n, kind, start, roi = s.draw(0)
    assert kind == "random" and roi is None
    item = s.items[n]
    img, lab = d["image"][0], d["label"]
    pad = normalised_value(-1024.0, st)
    inside = tuple(slice(-a, -a + m) for a, m in zip(start, item.shape))
    np.testing.assert_allclose(img[inside], normalise(item.image(), st))
    np.testing.assert_array_equal(lab[inside], stage_target(np.asarray(item.label()), st))
    outside = np.ones(big, bool)
    outside[inside] = False
    assert outside.any() and np.all(img[outside] == pad) and not lab[outside].any()


def test_kidney_sampler_simulates_the_roi(caches):
    root, res = caches
    st = stages()["kidney"]
    s = PatchSampler(res["kidney"].cache, st, patch_size=(24, 64, 64), seed=2, fg_fraction=1.0,
                     hard_negative_fraction=0.0, centre_jitter=0.0, margin_mm_range=(2.0, 2.0))
    d = s[0]
    n, _, start, roi = s.draw(0)
    assert roi is not None
    pad = normalised_value(st.window[0], st)
    keep = np.zeros(s.patch_size, bool)
    keep[tuple(slice(max(a - s0, 0), max(b - s0, 0)) for (a, b), s0 in zip(roi, start))] = True
    assert (d["image"][0][~keep] == pad).all() and (d["image"][0][keep] != pad).any()
    assert d["label"].sum() == d["label"][keep].sum() > 0
    # default range: the stage margin up to the cached extra margin
    assert PatchSampler(res["kidney"].cache, st).margin_mm_range == (6.0, 16.0)
    assert PatchSampler(res["tumor"].cache, stages()["tumor"]).margin_mm_range is None


def test_stage_cache_subset_and_errors(caches, tmp_path):
    root, res = caches
    c = StageCache(res["roi"].cache_dir, ["case_00002"])
    assert [it.case_id for it in c.items] == ["case_00002"] and c.role == "roi"
    with pytest.raises(InputError, match="case_00042"):
        StageCache(res["roi"].cache_dir, ["case_00042"])
    with pytest.raises(InputError, match="not a stage cache"):
        StageCache(tmp_path)

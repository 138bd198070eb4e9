"""ktstrain.preprocess: the stage preprocessing cache (its items, reuse, atomic writes) on tiny synthetic KiTS cases."""
from __future__ import annotations

import json
import os
from dataclasses import replace

import numpy as np
import pytest

# the submodule, not the package's name: once the submodule is loaded, the package's attribute
# kidney_crop is that module, so which one the package gives depends on import order
from KidneyTumorSegLib.cascade import kidney_crop
from KidneyTumorSegLib.geometry.records import Crop, canonical_reorient, resample_record
from KidneyTumorSegLib.geometry.volume import InputError
from KidneyTumorSegLib.io.volume_io import read_label, read_volume
from ktstrain import preprocess as pp
from ktstrain.data import Case, LabelMap, discover_cases
from ktstrain.preprocess import StageCache, preprocess_stage, resample_label
from ktstrain.sampler import PatchSampler

from helpers_train import OPTS, make_case, stages, write_case

# module-scoped fixtures from helpers_train (this module gets its own copy): pytest finds them by these names


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


def test_stage_cache_subset_and_errors(caches, tmp_path):
    root, res = caches
    c = StageCache(res["roi"].cache_dir, ["case_00002"])
    assert [it.case_id for it in c.items] == ["case_00002"] and c.role == "roi"
    with pytest.raises(InputError, match="case_00042"):
        StageCache(res["roi"].cache_dir, ["case_00042"])
    with pytest.raises(InputError, match="not a stage cache"):
        StageCache(tmp_path)

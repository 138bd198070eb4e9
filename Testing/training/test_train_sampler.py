"""ktstrain.sampler: patch sampling (fractions, centres, padding, the simulated ROI) and stage targets."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from KidneyTumorSegLib.engine.intensity import normalise, normalised_value
from ktstrain.sampler import PatchSampler, stage_target

from helpers_train import stages

# module-scoped fixtures from helpers_train (this module gets its own copy): pytest finds them by these names


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

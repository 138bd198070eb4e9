"""A recipe's bundle (training/recipes/) in Slicer: the module's logic runs it on real MRML like any model.

Report 001's two 2D ENet stages with a derived tumor stage, and report 003's heads and ensemble of two
different networks, each trained a few iterations on small phantoms, segment one of them from the scene.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mrml_fixtures import SKIP_WITHOUT_SLICER_CORE

pytestmark = SKIP_WITHOUT_SLICER_CORE


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import torch

    from KidneyTumorSegLib.phantom import write_phantom_cases
    from ktstrain.data import discover_cases
    from ktstrain.recipe import find_recipe, train_recipe

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("slicer-recipes")
    write_phantom_cases(root / "phantoms", 4, seed0=300, shape=(32, 96, 96), spacing=(3.5, 3.5, 5.0), n_tumors=1)
    cases = discover_cases(root / "phantoms")
    bundles = {name: train_recipe(find_recipe(name), cases, root / "runs" / name, root / name, size="tiny").bundle
               for name in ("001-enet", "003-fusion")}
    return Path(cases[0].image_path), bundles


@pytest.mark.parametrize("name", ["001-enet", "003-fusion"])
def test_a_recipe_bundle_segments_from_the_scene(harness, trained, name):
    import slicer

    slicer.mrmlScene.Clear(0)
    image, bundles = trained
    volume = slicer.util.loadVolume(str(image))
    logic = harness.module.KidneyTumorSegLogic()
    segmentation, table = logic.segment(volume, model=str(bundles[name]), device="cpu")
    ids = harness.helper("nodes").segmentIds(segmentation)
    kidneys = [k for k in ids if k.startswith("kidney_") and k != "kidney_tumor"]
    assert kidneys, sorted(ids)
    voxels = sum(int(np.count_nonzero(harness.helper("labelmaps").segmentArray(segmentation, ids[k], volume)))
                 for k in kidneys)
    assert voxels > 0
    assert table.GetNumberOfRows() >= 1

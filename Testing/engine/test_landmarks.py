"""Report 003's landmark heat maps at inference and its mixed box rule (engine/landmarks.py, cascade/roi.py)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from KidneyTumorSegLib.cascade.roi import stage_roi
from KidneyTumorSegLib.config import NetworkConfig, StageConfig
from KidneyTumorSegLib.engine.landmarks import head_maps, landmark_box, mixed_box
from KidneyTumorSegLib.engine.networks import Renormalised, build_network
from KidneyTumorSegLib.engine.intensity import normalise
from KidneyTumorSegLib.geometry.volume import Volume

NET = NetworkConfig(channels=(4, 8, 16), strides=(1, 2, 2), deep_supervision=False, heads={"landmarks": 5})
STAGE = StageConfig("coarse", "roi", network=NET, spacing=(4.0, 4.0, 4.0), window=(-200.0, 300.0),
                    normalization="minmax", box_rule="mixed_landmarks", margin_mm=0.0, keep_components=2)


def test_head_maps_are_the_trained_head_on_the_whole_padded_volume():
    torch.manual_seed(0)
    net = build_network(NET)
    image = np.random.default_rng(0).uniform(-300, 400, (9, 14, 11)).astype(np.float32)
    maps = head_maps([net], STAGE, image, "landmarks", torch.device("cpu"))
    assert maps.shape == (5, 9, 14, 11)
    padded = np.pad(normalise(image, STAGE), [(0, 3), (0, 2), (0, 1)], constant_values=0.0)  # air is 0 after minmax
    net.train()
    with torch.no_grad():
        expected = net(torch.from_numpy(padded)[None, None])["landmarks"][0, :, :9, :14, :11].numpy()
    np.testing.assert_allclose(maps, expected, atol=1e-5)
    net.eval()
    assert isinstance(net(torch.zeros(1, 1, 8, 8, 8)), torch.Tensor)  # eval mode gives the segmentation alone again
    # a member with its own statistics (Renormalised) and an ensemble of two: the mean of both
    zs = replace(STAGE, normalization="zscore", norm_mean=0.0, norm_std=100.0)
    both = head_maps([Renormalised(net, (0.0, 100.0), (0.0, 100.0)), net], zs, image, "landmarks", torch.device("cpu"))
    np.testing.assert_allclose(both, head_maps([net], zs, image, "landmarks", torch.device("cpu")), atol=1e-5)
    with pytest.raises(ValueError, match="the network has no 'boundary' head"):
        head_maps([net], STAGE, image, "boundary", torch.device("cpu"))


def test_mixed_box_rule():
    maps = np.zeros((5, 10, 20, 40), np.float32)
    maps[0, 4, 10, 3] = 0.9  # left point of one kidney
    maps[2, 5, 12, 36] = 0.8  # right point of the other
    maps[4, 2, 1, 20] = 0.3  # below the peak: not a point
    lm = landmark_box(maps)
    assert lm == ((4, 6), (10, 13), (3, 37))
    assert landmark_box(np.zeros_like(maps)) is None
    one_kidney = ((3, 8), (8, 15), (2, 18))
    assert mixed_box(one_kidney, lm) == lm  # 16 voxels wide against 34: one kidney missed
    both = ((3, 8), (8, 15), (4, 34))
    assert mixed_box(both, lm) == both  # 30 against 34: about the same
    assert mixed_box(None, lm) == lm and mixed_box(one_kidney, None) == one_kidney and mixed_box(None, None) is None


class _OneKidneyLocaliser:
    """Segments only the right kidney; its landmarks hold both (as report 003's rule expects)."""

    def __init__(self, both: bool):
        self.both = both

    def _mask(self, vol, xs):
        k, j, i = np.indices(vol.shape)
        world = vol.index_to_world(np.stack([i, j, k], -1).reshape(-1, 3)).reshape(vol.shape + (3,))
        return np.any([np.linalg.norm(world - np.array([x, 0.0, 0.0]), axis=-1) <= 20 for x in xs], axis=0)

    def predict(self, vol, progress=None):
        fg = self._mask(vol, [-60.0, 60.0] if self.both else [-60.0]).astype(np.float32)
        return np.stack([1 - fg, fg])

    def head(self, vol, name):
        maps = np.zeros((5,) + vol.shape, np.float32)
        maps[4] = self._mask(vol, [-60.0, 60.0])
        return maps


def test_stage_one_takes_the_landmarks_box_when_the_segmentation_misses_a_kidney():
    arr = np.full((40, 60, 80), 40, np.int16)  # all body: 320 x 240 x 160 mm (i, j, k)
    can = Volume(arr, spacing=(4.0, 4.0, 4.0), origin=(-160.0, -120.0, -80.0))
    box, messages = stage_roi(can, STAGE, _OneKidneyLocaliser(both=False))
    assert box[2][0] <= (-80 + 160) / 4 and box[2][1] >= (80 + 160) / 4  # both kidneys (x = -60 and 60, r 20)
    assert messages and "the landmarks' box (164 mm wide) replaced the segmentation's (44)" in messages[0]
    box, messages = stage_roi(can, STAGE, _OneKidneyLocaliser(both=True))
    assert messages == [] and box[2][1] - box[2][0] == 41  # the segmentation's own box: both kidneys found
    plain, messages = stage_roi(can, replace(STAGE, box_rule="segmentation"), _OneKidneyLocaliser(both=False))
    assert messages == [] and plain[2][1] - plain[2][0] <= 11  # the one kidney's box
    with pytest.raises(ValueError, match="box_rule 'mixed_landmarks' needs a network with a 'landmarks' head"):
        replace(STAGE, network=replace(NET, heads={}))

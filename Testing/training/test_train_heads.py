"""Report 003's regression targets: landmark and boundary heat maps made per slice from a batch's labels."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ktstrain.heads import boundary_points, head_targets, landmark_points


def _two_kidneys():
    mask = np.zeros((2, 20, 30), bool)
    mask[0, 5:10, 3:9] = True  # one kidney: rows 5-9, columns 3-8
    mask[0, 12:15, 20:26] = True  # the other
    return mask


def test_landmarks_are_each_kidneys_extreme_points_and_centre_in_each_slice():
    pts = landmark_points(_two_kidneys())
    assert pts.shape == (5, 2, 20, 30) and not pts[:, 1].any()  # nothing in the empty slice
    left, top, right, bottom, centre = (set(map(tuple, np.argwhere(p[0]))) for p in pts)
    assert {(5, 3), (12, 20)} == left and {(5, 3), (12, 20)} == top  # first voxel of the extreme column / row
    assert {(5, 8), (12, 25)} == right and {(9, 3), (14, 20)} == bottom
    assert centre == {(7, 6), (13, 22)}  # the centroids (7, 5.5) and (13, 22.5), rounded half to even


def test_boundary_is_the_in_slice_edge():
    edge = boundary_points(_two_kidneys())[0, 0]
    assert edge[5, 3:9].all() and edge[9, 3:9].all() and edge[5:10, 3].all()
    assert not edge[6:9, 4:8].any()  # the inside
    assert edge.sum() == (2 * 6 + 2 * 3) + (2 * 6 + 2 * 1)


def test_targets_are_gaussians_scaled_to_one_per_slice_for_3d_and_2d_batches():
    lab = torch.from_numpy(_two_kidneys().astype(np.int64))[None].repeat(2, 1, 1, 1)
    t = head_targets(lab, {"landmarks": 5, "boundary": 1}, "roi")
    assert t["landmarks"].shape == (2, 5, 2, 20, 30) and t["boundary"].shape == (2, 1, 2, 20, 30)
    for maps in t.values():
        assert torch.allclose(maps[:, :, 0].amax(dim=(-2, -1)), torch.ones(1)) and not maps[:, :, 1].any()
    flat = head_targets(lab[:, 0], {"boundary": 1}, "tumor")["boundary"]
    assert flat.shape == (2, 1, 20, 30)
    narrow, wide = flat[0, 0, 7].numpy(), t["boundary"][0, 0, 0, 7].numpy()  # tumor sigma 2 vs 3
    assert (narrow > 0.05).sum() < (wide > 0.05).sum()
    with pytest.raises(ValueError, match=r"no training target for head\(s\) \['distance'\]"):
        head_targets(lab, {"distance": 1}, "roi")
    with pytest.raises(ValueError, match=r"head 'landmarks' has 3 channel\(s\); its target has 5"):
        head_targets(lab, {"landmarks": 3}, "roi")

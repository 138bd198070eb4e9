"""PNG preview: size and physical aspect, outline colours where the labels are, orientation, no overwrite."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from KidneyTumorSegLib.io import preview
from KidneyTumorSegLib.io.preview import COLOURS, GAP, HEADER, PANEL_SIZE, default_focus, write_preview
from KidneyTumorSegLib.geometry.volume import Volume

SHAPE = (20, 64, 80)  # (k, j, i)
SPACING_XYZ = (0.6, 0.5, 4.0)  # thick slices: the coronal panel must be stretched 8x vertically
KIDNEY = ((4, 16), (20, 44), (10, 30))  # half-open (k, j, i) boxes
TUMOR = ((10, 14), (24, 34), (50, 70))  # patient's left (high i), superior half


def make_volumes():
    lab = np.zeros(SHAPE, np.uint8)
    (k0, k1), (j0, j1), (i0, i1) = KIDNEY
    lab[k0:k1, j0:j1, i0:i1] = 1
    (k0, k1), (j0, j1), (i0, i1) = TUMOR
    lab[k0:k1, j0:j1, i0:i1] = 2
    ct = np.full(SHAPE, 40.0, np.float32)  # the window's level: mid grey
    ct[:, :, :5] = -1000.0
    ct[:, :, -5:] = 1000.0
    return Volume(ct, spacing=SPACING_XYZ), Volume(lab, spacing=SPACING_XYZ)


def mm_per_px() -> float:
    sz, sy, sx = SPACING_XYZ[::-1]
    return max(SHAPE[0] * sz, SHAPE[1] * sy, SHAPE[2] * sx) / PANEL_SIZE


def colour_box(rgb: np.ndarray, colour) -> tuple:
    ys, xs = np.nonzero(np.all(rgb == np.array(colour, np.uint8), axis=-1))
    return ys.min(), ys.max(), xs.min(), xs.max()


@pytest.fixture
def rendered(tmp_path):
    image, label = make_volumes()
    path = write_preview(image, label, tmp_path / "p.preview.png", focus=(12, 30, 60))
    return path, np.asarray(Image.open(path).convert("RGB"))


def test_size_and_physical_aspect(rendered):
    path, rgb = rendered
    s = mm_per_px()
    width = round(SHAPE[2] * SPACING_XYZ[0] / s)
    heights = (round(SHAPE[1] * SPACING_XYZ[1] / s), round(SHAPE[0] * SPACING_XYZ[2] / s))
    assert Image.open(path).format == "PNG"
    assert rgb.shape == (HEADER + max(heights), 2 * width + GAP, 3)
    # the kidney outline in the coronal panel spans 12 slices * 4 mm by 20 columns * 0.6 mm
    cor = rgb[:, width + GAP:]
    y0, y1, x0, x1 = colour_box(cor, COLOURS[1])
    assert (y1 - y0 + 1) == pytest.approx(12 * 4.0 / s, abs=2)
    assert (x1 - x0 + 1) == pytest.approx(20 * 0.6 / s, abs=2)


def test_outlines_where_the_labels_are(rendered):
    _, rgb = rendered
    s = mm_per_px()
    sx, sy, sz = SPACING_XYZ
    width = round(SHAPE[2] * sx / s)
    axial = rgb[:, :width]
    ax_top = HEADER + (rgb.shape[0] - HEADER - round(SHAPE[1] * sy / s)) // 2
    # axial: tumor columns at i * sx, rows at j * sy below the panel's top (anterior up)
    y0, y1, x0, x1 = colour_box(axial, COLOURS[2])
    (_, _), (j0, j1), (i0, i1) = TUMOR
    assert x0 == pytest.approx(i0 * sx / s, abs=2) and x1 == pytest.approx(i1 * sx / s, abs=2)
    assert y0 - ax_top == pytest.approx(j0 * sy / s, abs=2) and y1 - ax_top == pytest.approx(j1 * sy / s, abs=2)
    # the patient's left (high i) is on the image's right in both panels
    assert x0 > width / 2
    cor = rgb[:, width + GAP:]
    cy0, cy1, cx0, _ = colour_box(cor, COLOURS[2])
    assert cx0 == pytest.approx(x0, abs=1)
    # coronal: superior up, so slices 10..14 of 20 sit in the upper half, k = 14 at the top
    (k0, k1), _, _ = TUMOR
    cor_top = HEADER
    assert cy0 - cor_top == pytest.approx((SHAPE[0] - k1) * sz / s, abs=2)
    assert cy1 - cor_top == pytest.approx((SHAPE[0] - k0) * sz / s, abs=2)
    # kidney outline green, its inside plain grey at the window's level
    ky0, ky1, kx0, kx1 = colour_box(axial, COLOURS[1])
    inside = axial[(ky0 + ky1) // 2, (kx0 + kx1) // 2]
    assert abs(int(inside[0]) - 127) <= 2 and inside[0] == inside[1] == inside[2]
    # the CT window clips: -1000 HU black, +1000 HU white
    mid_row = ax_top + 10
    assert tuple(axial[mid_row, 1]) == (0, 0, 0) and tuple(axial[mid_row, width - 2]) == (255, 255, 255)


def test_refuses_to_overwrite_and_leaves_no_temp_files(rendered):
    path, _ = rendered
    image, label = make_volumes()
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="p.preview.png"):
        write_preview(image, label, path)
    assert path.read_bytes() == before
    write_preview(image, label.with_array(np.zeros(SHAPE, np.uint8)), path, overwrite=True)
    assert path.read_bytes() != before
    assert sorted(p.name for p in path.parent.iterdir()) == ["p.preview.png"]


def test_default_focus():
    lab = np.zeros((10, 30, 30), np.uint8)
    assert default_focus(lab) == (5, 15, 15)
    lab[2:8, 2:10, 2:10] = 1
    assert default_focus(lab) == (4, 5, 5)  # nearest kidney voxel to the centroid (4.5, 5.5, 5.5)
    lab[1:3, 20:22, 20:22] = 2
    lab[5:9, 20:26, 20:26] = 2  # the larger tumor wins
    k, j, i = default_focus(lab)
    assert 5 <= k < 9 and 20 <= j < 26 and 20 <= i < 26


def test_rejects_mismatched_shapes(tmp_path):
    image, label = make_volumes()
    with pytest.raises(preview.InputError, match="differ"):
        write_preview(image, Volume(label.array[:-1]), tmp_path / "x.png")

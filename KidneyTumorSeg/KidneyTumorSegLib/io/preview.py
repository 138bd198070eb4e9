"""PNG preview of a result: axial and coronal CT slices with label outlines.

Inputs are canonical volumes (:func:`geometry.canonical_reorient`): array
axis 0 runs inferior -> superior, axis 1 anterior -> posterior, axis 2 the
patient's right -> left (LPS ``+x``). Views follow the radiological
convention: the patient's right is on the image's left in both panels,
anterior is up in the axial panel and superior is up in the coronal panel.
Both panels share one scale in mm per pixel, so thick slices are stretched to
their physical height. Pillow only (no matplotlib): the core stays lean.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from ..geometry.volume import InputError, Volume

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

WINDOW = (400.0, 40.0)  # soft-tissue width / level, HU
PANEL_SIZE = 512  # the longest physical side of the three axes maps to this many pixels
HEADER = 18  # pixels above the panels for their titles
GAP = 4  # pixels between the panels
# Outline colours (RGB). Kidney is drawn around label > 0 (kidney with its
# tumor), then every higher label on top in its own colour.
COLOURS = {1: (0, 230, 0), 2: (255, 40, 40), 3: (0, 170, 255)}
_OTHER_COLOUR = (255, 0, 255)
_TEXT = (235, 235, 235)
_TICK = (255, 210, 0)


def write_preview(
    image: Volume,
    label: Volume,
    path: PathLike,
    focus: Optional[Sequence[int]] = None,
    overwrite: bool = False,
) -> Path:
    """Write the two-panel PNG to ``path`` (atomically) and return the path.

    ``image``: canonical CT in HU; ``label``: canonical KiTS labels (0
    background, 1 kidney, 2 tumor, 3 cyst) on the same grid. ``focus``: the
    ``(k, j, i)`` index the slices pass through; default
    :func:`default_focus`. Raises ``FileExistsError`` if ``path`` exists and
    ``overwrite`` is False.
    """
    from .atomic import atomic_write, exists_message

    if Path(path).exists() and not overwrite:  # before rendering: fail fast
        raise FileExistsError(exists_message(path))
    png = render_preview(image, label, focus)
    atomic_write(path, lambda tmp: png.save(tmp, format="PNG"), overwrite=overwrite)
    return Path(path)


def render_preview(image: Volume, label: Volume, focus: Optional[Sequence[int]] = None) -> Image.Image:
    """The preview as an RGB ``PIL.Image`` (see :func:`write_preview`)."""
    if image.shape != label.shape:
        raise InputError(f"image shape {image.shape} and label shape {label.shape} differ")
    lab = np.asarray(label.array)
    if focus is None:
        focus = default_focus(lab, image.spacing_zyx)
    k, j, i = (int(np.clip(int(round(f)), 0, n - 1)) for f, n in zip(focus, image.shape))
    sz, sy, sx = image.spacing_zyx
    nk, nj, ni = image.shape
    mm_per_px = max(nk * sz, nj * sy, ni * sx) / PANEL_SIZE
    width = _px(ni * sx, mm_per_px)
    # axial: rows anterior -> posterior, columns right -> left, as stored
    axial = _panel(image.array[k], lab[k], (width, _px(nj * sy, mm_per_px)))
    # coronal: flip rows so superior is up
    coronal = _panel(image.array[::-1, j, :], lab[::-1, j, :], (width, _px(nk * sz, mm_per_px)))

    height = HEADER + max(axial.height, coronal.height)
    canvas = Image.new("RGB", (2 * width + GAP, height), (0, 0, 0))
    font = ImageFont.load_default()
    draw = ImageDraw.Draw(canvas)
    places = []
    for n, (panel, title, row_frac, (top, bottom)) in enumerate((
        (axial, "Axial", (j + 0.5) / nj, ("A", "P")),
        (coronal, "Coronal", 1.0 - (k + 0.5) / nk, ("S", "I")),
    )):
        x0 = n * (width + GAP)
        y0 = HEADER + (height - HEADER - panel.height) // 2
        canvas.paste(panel, (x0, y0))
        places.append((x0, y0))
        _text(draw, (x0 + 4, 3), title, font)
        _orientation_marks(draw, font, x0, y0, panel.size, top, bottom)
        # ticks on both edges at the row where the other panel's plane cuts this one
        y = y0 + int(row_frac * panel.height)
        for xa, xb in ((x0, x0 + 6), (x0 + panel.width - 7, x0 + panel.width - 1)):
            draw.line([(xa, y), (xb, y)], fill=_TICK, width=1)
    return canvas


def default_focus(label: np.ndarray, spacing_zyx: Sequence[float] = (1.0, 1.0, 1.0)) -> Tuple[int, int, int]:
    """``(k, j, i)`` to look at: the largest tumor component's centre, else the kidneys', else the middle.

    The centre is the voxel of the object nearest its centroid (in mm), so the
    slices always cut the object even when it is curved or in two pieces.
    """
    import cc3d

    tumor = label == 2
    if tumor.any():
        comps = cc3d.connected_components(tumor, connectivity=26)
        sizes = np.bincount(comps.ravel())
        sizes[0] = 0
        target = comps == int(np.argmax(sizes))
    elif (label > 0).any():
        target = label > 0
    else:
        return tuple(int(n) // 2 for n in label.shape)  # type: ignore[return-value]
    idx = np.argwhere(target)
    sp = np.asarray(spacing_zyx, dtype=float)
    centre = idx.mean(axis=0)
    nearest = idx[int(np.argmin((((idx - centre) * sp) ** 2).sum(axis=1)))]
    return tuple(int(v) for v in nearest)  # type: ignore[return-value]


# --------------------------------------------------------------------------
def _px(mm: float, mm_per_px: float) -> int:
    return max(1, int(round(mm / mm_per_px)))


def _panel(ct: np.ndarray, lab: np.ndarray, size: Tuple[int, int]) -> Image.Image:
    """One slice (rows, columns) as RGB at ``size`` (width, height) with label outlines."""
    width, level = WINDOW
    lo = level - width / 2.0
    grey = np.clip((np.asarray(ct, dtype=np.float32) - lo) * (255.0 / width), 0, 255).astype(np.uint8)
    img = Image.fromarray(grey).resize(size, Image.BILINEAR).convert("RGB")
    lab = np.asarray(lab)
    if not lab.any():
        return img
    # outlines are found after resampling, so they stay one display pixel thin
    big = np.asarray(Image.fromarray(lab.astype(np.uint8)).resize(size, Image.NEAREST))
    rgb = np.array(img)
    regions = [(big > 0, COLOURS[1])] + [
        (big == v, COLOURS.get(int(v), _OTHER_COLOUR)) for v in np.unique(big) if v > 1
    ]
    for mask, colour in regions:
        edge = mask & ~ndimage.binary_erosion(mask, border_value=0)
        rgb[edge] = colour
    return Image.fromarray(rgb)


def _orientation_marks(draw, font, x0: int, y0: int, size: Tuple[int, int], top: str, bottom: str) -> None:
    w, h = size
    _text(draw, (x0 + 3, y0 + h // 2 - 6), "R", font)
    _text(draw, (x0 + w - 10, y0 + h // 2 - 6), "L", font)
    _text(draw, (x0 + w // 2 - 3, y0 + 2), top, font)
    _text(draw, (x0 + w // 2 - 3, y0 + h - 13), bottom, font)


def _text(draw, xy: Tuple[int, int], text: str, font) -> None:
    # a dark halo keeps the letters readable on bone and air alike (works with bitmap fonts too)
    x, y = xy
    for dx, dy in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        draw.text((x + dx, y + dy), text, fill=(0, 0, 0), font=font)
    draw.text((x, y), text, fill=_TEXT, font=font)

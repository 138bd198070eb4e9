"""Per-epoch training log: ``training_log.csv``, ``progress.png`` (Pillow only), optional TensorBoard.

The CSV gets one row per epoch, appended as the epoch ends, so a crash loses
nothing and a resumed run continues the same file. On resume, rows after the
epoch the run resumes from are dropped (they belong to the interrupted run's
lost epochs and would otherwise appear twice).
"""
from __future__ import annotations

import csv
import io
import logging
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from PIL import Image, ImageDraw, ImageFont

from KidneyTumorSegLib.io.atomic import atomic_write, atomic_write_text

logger = logging.getLogger(__name__)

LOG_NAME = "training_log.csv"
PLOT_NAME = "progress.png"
COLUMNS = ("epoch", "lr", "train_loss", "val_loss", "kidney_dice", "tumor_dice", "composite", "seconds")


def read_log(path: Union[str, os.PathLike]) -> List[Dict[str, Any]]:
    """Rows of a training log CSV: ``epoch`` as int, other numbers as float, empty cells as None."""
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for raw in csv.DictReader(f):
            row: Dict[str, Any] = {}
            for k, v in raw.items():
                if v is None or v == "":
                    row[k] = None
                elif k == "epoch":
                    row[k] = int(v)
                else:
                    try:
                        row[k] = float(v)
                    except ValueError:
                        row[k] = v
            rows.append(row)
    return rows


def _csv_text(columns: Sequence[str], rows: Sequence[Dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k)) for k in columns})
    return buf.getvalue()


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)  # shortest exact round-trip form
    if hasattr(v, "item"):  # 0-d tensors and numpy scalars
        return _cell(v.item())
    return v


class TrainingLog:
    """``folder/training_log.csv`` + ``folder/progress.png`` (+ ``folder/tensorboard/`` when asked).

    ``resume_epoch``: the last completed epoch of the checkpoint a run resumes
    from; rows with a larger epoch are dropped. Without it an existing
    non-empty log raises ``FileExistsError`` unless ``overwrite`` (then the
    log starts afresh). ``tensorboard``: also write scalars with
    ``torch.utils.tensorboard`` if the ``tensorboard`` package is installed
    (otherwise one warning, and CSV/PNG only).
    """

    def __init__(self, folder: Union[str, os.PathLike], resume_epoch: Optional[int] = None, overwrite: bool = False,
                 tensorboard: bool = False, plot_every: int = 1) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.folder / LOG_NAME
        self.plot_path = self.folder / PLOT_NAME
        self.plot_every = max(int(plot_every), 1)
        self.columns: List[str] = list(COLUMNS)
        self.rows: List[Dict[str, Any]] = []
        if self.csv_path.exists():
            old = read_log(self.csv_path)
            if resume_epoch is None and old and not overwrite:
                raise FileExistsError(f"output exists: {self.csv_path} (resume from a checkpoint, or use "
                                      f"--overwrite to start the log afresh)")
            if resume_epoch is not None:
                with open(self.csv_path, newline="", encoding="utf-8") as f:
                    header = next(csv.reader(f), [])
                self.columns += [c for c in header if c not in self.columns]
                self.rows = [r for r in old if r.get("epoch") is not None and r["epoch"] <= resume_epoch]
                if len(self.rows) != len(old):
                    logger.info("training log: dropped %d row(s) after epoch %d", len(old) - len(self.rows),
                                resume_epoch)
        self._rewrite()
        self.writer = self._open_tensorboard() if tensorboard else None

    def _rewrite(self) -> None:
        atomic_write_text(self.csv_path, _csv_text(self.columns, self.rows), overwrite=True)

    def _open_tensorboard(self) -> Any:
        try:
            import tensorboard  # torch.utils.tensorboard needs it: fail here with the clear message below
            from torch.utils.tensorboard import SummaryWriter

            del tensorboard  # only its presence matters
        except ImportError:
            logger.warning("TensorBoard logging requested but the 'tensorboard' package is not installed "
                           "(pip install tensorboard); logging to %s and %s only", LOG_NAME, PLOT_NAME)
            return None
        return SummaryWriter(log_dir=str(self.folder / "tensorboard"))

    def append(self, epoch: int, **values: Any) -> None:
        """Record epoch ``epoch``: ``lr``, ``train_loss``, ``val_loss``, ``kidney_dice``, ``tumor_dice``,
        ``composite``, ``seconds`` and any further numbers (new names become new columns)."""
        row = {"epoch": int(epoch)}
        row.update({k: (v.item() if hasattr(v, "item") else v) for k, v in values.items()})
        if self.rows and row["epoch"] <= self.rows[-1]["epoch"]:
            raise ValueError(f"training log: epoch {epoch} is not after the last logged epoch "
                             f"{self.rows[-1]['epoch']}")
        self.rows.append(row)
        new = [k for k in row if k not in self.columns]
        if new:
            self.columns += new
            self._rewrite()  # the header changes: rewrite the (small) file once
        else:
            with open(self.csv_path, "a", newline="", encoding="utf-8") as f:
                csv.DictWriter(f, fieldnames=self.columns, lineterminator="\n").writerow(
                    {k: _cell(row.get(k)) for k in self.columns})
        if self.writer is not None:
            for k, v in row.items():
                if k != "epoch" and isinstance(v, (int, float)):
                    self.writer.add_scalar(k, float(v), row["epoch"])
            self.writer.flush()
        if len(self.rows) % self.plot_every == 0:
            self.plot()

    def plot(self) -> Path:
        """Write ``progress.png`` from the logged rows and return its path."""
        return plot_progress(self.rows, self.plot_path)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


# --- Pillow line plots (matplotlib is not a dependency) ---------------------------------------------

_COLORS = {"train_loss": (31, 119, 180), "val_loss": (255, 127, 14), "kidney_dice": (44, 160, 44),
           "tumor_dice": (214, 39, 40), "composite": (148, 103, 189), "lr": (60, 60, 60)}
_PANELS = (
    ("Loss", ("train_loss", "val_loss"), False, None),
    ("Validation Dice", ("kidney_dice", "tumor_dice", "composite"), False, (0.0, 1.0)),
    ("Learning rate", ("lr",), True, None),
)


def _font(size: int) -> Any:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _nice_ticks(lo: float, hi: float, n: int = 5) -> List[float]:
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(v: float, log: bool) -> str:
    if log:
        return f"1e{int(round(math.log10(v)))}"
    return f"{v:.3g}"


def _series(rows: Sequence[Dict[str, Any]], key: str, log: bool) -> List[Tuple[float, float]]:
    pts = []
    for r in rows:
        v = r.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v) and (not log or v > 0):
            pts.append((float(r["epoch"]), math.log10(v) if log else float(v)))
    return pts


def _panel(draw: ImageDraw.ImageDraw, box: Tuple[int, int, int, int], title: str, keys: Sequence[str], log: bool,
           y_range: Optional[Tuple[float, float]], rows: Sequence[Dict[str, Any]], font: Any, small: Any) -> None:
    left, top, right, bottom = box
    x0, y0, x1, y1 = left + 70, top + 28, right - 170, bottom - 40  # plot area; legend on the right
    draw.text((x0, top + 4), title, fill="black", font=font)
    data = {k: _series(rows, k, log) for k in keys}
    xs = [p[0] for pts in data.values() for p in pts] or [0.0, 1.0]
    ys = [p[1] for pts in data.values() for p in pts] or [0.0, 1.0]
    xlo, xhi = min(xs), max(max(xs), min(xs) + 1)
    if y_range is not None:
        ylo, yhi = y_range
    elif log:
        ylo, yhi = math.floor(min(ys)), math.ceil(max(ys))
        yhi = yhi if yhi > ylo else ylo + 1
    else:
        pad = 0.05 * (max(ys) - min(ys) or 1.0)
        ylo, yhi = min(ys) - pad, max(ys) + pad

    def px(x: float) -> float:
        return x0 + (x - xlo) / (xhi - xlo) * (x1 - x0)

    def py(y: float) -> float:
        return y1 - (y - ylo) / (yhi - ylo) * (y1 - y0)

    yticks = [float(e) for e in range(int(ylo), int(yhi) + 1)] if log else _nice_ticks(ylo, yhi)
    for t in yticks:
        y = py(t)
        draw.line([(x0, y), (x1, y)], fill=(225, 225, 225))
        draw.line([(x0 - 5, y), (x0, y)], fill="black")
        label = _fmt(10 ** t if log else t, log)
        w = draw.textlength(label, font=small)
        draw.text((x0 - 8 - w, y - 7), label, fill="black", font=small)
    xticks = [t for t in _nice_ticks(xlo, xhi, 6) if abs(t - round(t)) < 1e-9]
    for t in xticks:
        x = px(t)
        draw.line([(x, y1), (x, y1 + 5)], fill="black")
        label = str(int(round(t)))
        draw.text((x - draw.textlength(label, font=small) / 2, y1 + 8), label, fill="black", font=small)
    draw.rectangle([x0, y0, x1, y1], outline="black")
    draw.text(((x0 + x1) / 2 - 18, y1 + 22), "epoch", fill="black", font=small)
    ly = y0 + 4
    for k in keys:
        pts = [(px(x), py(y)) for x, y in data[k]]
        color = _COLORS.get(k, (0, 0, 0))
        if len(pts) > 1:
            draw.line(pts, fill=color, width=2)
        for x, y in pts if len(pts) <= 60 else []:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=color)
        draw.line([(x1 + 12, ly + 8), (x1 + 36, ly + 8)], fill=color, width=3)
        draw.text((x1 + 42, ly), k.replace("_", " "), fill="black", font=small)
        ly += 20


def plot_progress(rows: Sequence[Dict[str, Any]], path: Union[str, os.PathLike],
                  size: Tuple[int, int] = (1000, 900)) -> Path:
    """Loss, validation Dice and learning-rate curves against the epoch, as a PNG at ``path`` (replaced atomically).

    ``rows``: dicts with ``epoch`` and any of the :data:`COLUMNS` (missing or
    non-finite values are skipped).
    """
    width, height = size
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font, small = _font(16), _font(13)
    ph = height // len(_PANELS)
    for i, (title, keys, log, y_range) in enumerate(_PANELS):
        _panel(draw, (0, i * ph, width, (i + 1) * ph), title, keys, log, y_range, rows, font, small)
    return atomic_write(path, lambda tmp: img.save(tmp, format="PNG"), overwrite=True)

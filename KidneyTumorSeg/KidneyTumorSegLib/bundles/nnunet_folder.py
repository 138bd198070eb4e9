"""Finding nnU-Net v2 trained models on disk: a trained-model folder, its dataset folder, or an exported zip.

nnU-Net v2's results layout::

    <nnUNet_results>/DatasetNNN_Name/                     a dataset folder
        <Trainer>__<Plans>__<configuration>/             a trained-model folder
            dataset.json  plans.json
            fold_0/checkpoint_final.pth  (or checkpoint_best.pth)  ...  fold_all/

``nnUNetv2_export_model_to_zip`` packs dataset folders into a zip. TotalSegmentator
keeps its downloaded weights as such folders under ``$TOTALSEG_HOME_DIR/nnunet/results``
(default ``~/.totalsegmentator``). This module reads only JSON and file names; loading
checkpoints is :mod:`nnunet_model`'s job.
"""
from __future__ import annotations

import json
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..io.atomic import staged_folder
from .bundle import sha256_file

log = logging.getLogger(__name__)

CONFIGURATIONS = ("3d_fullres", "3d_cascade_fullres", "3d_lowres", "2d")  # preference order when several exist
CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_best.pth")


class NnunetFolderError(ValueError):
    """A path that is not a usable nnU-Net v2 model; the message says what is missing."""


@dataclass(frozen=True)
class NnunetFolder:
    """One trained-model folder and the folds / checkpoint chosen from it.

    ``previous``: for ``3d_cascade_fullres``, the ``3d_lowres`` model it needs
    (same trainer, plans and folds).
    """

    path: Path
    dataset: str
    trainer: str
    plans: str
    configuration: str
    folds: Tuple[str, ...]
    checkpoint: str
    previous: Optional["NnunetFolder"] = None

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.path.name}"

    def checkpoint_paths(self) -> List[Path]:
        return [self.path / f"fold_{f}" / self.checkpoint for f in self.folds]

    def files(self) -> List[Path]:
        """Every file inference reads (the previous stage's too), for hashing."""
        own = [self.path / "dataset.json", self.path / "plans.json"] + self.checkpoint_paths()
        return own + (self.previous.files() if self.previous else [])

    def read_json(self, name: str) -> dict:
        p = self.path / name
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise NnunetFolderError(f"{p}: cannot read it as JSON: {exc}") from exc


def is_model_folder(path: Path) -> bool:
    return (path / "dataset.json").is_file() and (path / "plans.json").is_file()


def looks_like_nnunet(path: os.PathLike) -> bool:
    """True for a trained-model folder, a dataset folder holding some, or a zip (cheap: names only)."""
    p = Path(path)
    if p.is_file():
        return p.suffix.lower() == ".zip" and _zip_holds_model(p)
    return p.is_dir() and (is_model_folder(p) or any(is_model_folder(c) for c in _children(p)))


def _zip_holds_model(p: Path) -> bool:
    """An nnU-Net export (plans.json inside), not a zipped KidneyTumorSeg bundle (manifest.json)."""
    try:
        with zipfile.ZipFile(p) as z:
            names = [Path(n).name for n in z.namelist()]
    except (OSError, zipfile.BadZipFile):
        return False
    return "plans.json" in names and "manifest.json" not in names


def _children(p: Path) -> List[Path]:
    try:
        return sorted(c for c in p.iterdir() if c.is_dir())
    except OSError:
        return []


def _split_name(path: Path) -> Tuple[str, str, str]:
    parts = path.name.split("__")
    if len(parts) != 3:
        raise NnunetFolderError(f"{path}: not named <Trainer>__<Plans>__<configuration> as nnU-Net names its "
                                "trained-model folders")
    return parts[0], parts[1], parts[2]


def available_folds(path: Path, checkpoint: str) -> List[str]:
    """Fold names (``"0"``, ``"all"``) whose folder holds ``checkpoint``, numeric ones first."""
    out = [c.name[5:] for c in _children(path) if c.name.startswith("fold_") and (c / checkpoint).is_file()]
    return sorted(out, key=lambda f: (not f.isdigit(), int(f) if f.isdigit() else 0, f))


def _choose_checkpoint(path: Path, checkpoint: Optional[str]) -> str:
    if checkpoint:
        return checkpoint
    for name in CHECKPOINTS:
        if available_folds(path, name):
            return name
    raise NnunetFolderError(f"{path}: no fold_N/checkpoint_final.pth or checkpoint_best.pth (is training finished?)")


def open_model_folder(path: Path, folds: Optional[Sequence] = None, checkpoint: Optional[str] = None) -> NnunetFolder:
    """A trained-model folder with its folds (default: all present) and checkpoint (default: final, else best)."""
    path = Path(path)
    if not is_model_folder(path):
        raise NnunetFolderError(f"{path}: not an nnU-Net trained-model folder (dataset.json and plans.json expected)")
    trainer, plans, configuration = _split_name(path)
    ckpt = _choose_checkpoint(path, checkpoint)
    have = available_folds(path, ckpt)
    chosen = [str(f) for f in folds] if folds else [f for f in have if f != "all"] or have
    missing = [f for f in chosen if f not in have]
    if missing:
        raise NnunetFolderError(f"{path}: fold(s) {', '.join(missing)} have no {ckpt} (folds present: "
                                f"{', '.join(have) or 'none'})")
    previous = None
    if configuration == "3d_cascade_fullres":
        low = path.with_name(f"{trainer}__{plans}__3d_lowres")
        if not is_model_folder(low):
            raise NnunetFolderError(f"{path}: 3d_cascade_fullres needs the 3d_lowres model beside it ({low.name})")
        previous = open_model_folder(low, chosen, ckpt)
    return NnunetFolder(path, path.parent.name, trainer, plans, configuration, tuple(chosen), ckpt, previous)


def resolve(path: os.PathLike, configuration: Optional[str] = None, folds: Optional[Sequence] = None,
            checkpoint: Optional[str] = None, cache: Optional[Path] = None) -> NnunetFolder:
    """A trained-model folder from a trained-model folder, a dataset folder or an exported zip.

    A dataset folder with several trained configurations: ``configuration``
    picks one; without it the first of :data:`CONFIGURATIONS` present is taken
    and logged. A zip is unpacked once into ``cache`` (default
    ``~/.cache/kidneytumorseg/nnunet``), keyed by its SHA-256.
    """
    p = Path(path)
    if p.is_file() and p.suffix.lower() == ".zip":
        p = unpack_zip(p, cache)
    if not p.exists():
        raise NnunetFolderError(f"{p}: not found")
    if is_model_folder(p):
        if configuration and _split_name(p)[2] != configuration:
            raise NnunetFolderError(f"{p}: is a {_split_name(p)[2]} model, not {configuration}")
        return open_model_folder(p, folds, checkpoint)
    return open_model_folder(_pick_configuration(p, configuration), folds, checkpoint)


def _pick_configuration(p: Path, configuration: Optional[str]) -> Path:
    models = [c for c in _children(p) if is_model_folder(c) and len(c.name.split("__")) == 3]
    if not models:
        datasets = [c for c in _children(p) if any(is_model_folder(m) for m in _children(c))]
        if len(datasets) == 1:
            return _pick_configuration(datasets[0], configuration)
        raise NnunetFolderError(f"{p}: no nnU-Net trained-model folder (<Trainer>__<Plans>__<configuration>) in it"
                                + (f"; it holds several datasets: {', '.join(d.name for d in datasets)}" if datasets else ""))
    by_conf: Dict[str, List[Path]] = {}
    for m in models:
        by_conf.setdefault(m.name.split("__")[2], []).append(m)
    if configuration:
        if configuration not in by_conf:
            raise NnunetFolderError(f"{p}: no {configuration} model (configurations: {', '.join(sorted(by_conf))})")
        chosen = by_conf[configuration]
    else:
        order = [c for c in CONFIGURATIONS if c in by_conf] + sorted(c for c in by_conf if c not in CONFIGURATIONS)
        chosen = by_conf[order[0]]
        if len(by_conf) > 1:
            log.info("%s: using the %s model (also present: %s; choose with --configuration)", p.name, order[0],
                     ", ".join(c for c in order[1:]))
    if len(chosen) > 1:
        raise NnunetFolderError(f"{p}: several {chosen[0].name.split('__')[2]} models ({', '.join(m.name for m in chosen)}): "
                                "give the trained-model folder itself")
    return chosen[0]


def default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kidneytumorseg" / "nnunet"


def unpack_zip(zpath: Path, cache: Optional[Path] = None) -> Path:
    """Unpack an ``nnUNetv2_export_model_to_zip`` file once (atomically) and return the folder it made."""
    cache = Path(cache) if cache else default_cache()
    target = cache / sha256_file(zpath)[:16]
    if not target.is_dir():
        try:
            with staged_folder(target) as tmp, zipfile.ZipFile(zpath) as z:
                for info in z.infolist():
                    dest = (tmp / info.filename).resolve()
                    if not str(dest).startswith(str(tmp.resolve()) + os.sep):
                        raise NnunetFolderError(f"{zpath}: member {info.filename!r} would be written outside the folder")
                z.extractall(tmp)
        except zipfile.BadZipFile as exc:
            raise NnunetFolderError(f"{zpath}: not a valid zip file: {exc}") from exc
    return target


# -- models already on this machine ------------------------------------------------------------
def totalsegmentator_home() -> Path:
    return Path(os.environ.get("TOTALSEG_HOME_DIR") or Path.home() / ".totalsegmentator")


def search_roots() -> List[Tuple[str, Path]]:
    """Where installed models live: TotalSegmentator's weights and ``$nnUNet_results``."""
    roots = [("TotalSegmentator", totalsegmentator_home() / "nnunet" / "results")]
    if os.environ.get("nnUNet_results"):
        roots.append(("nnUNet_results", Path(os.environ["nnUNet_results"])))
    return roots


def discover_models(roots: Optional[Sequence[Tuple[str, Path]]] = None) -> List[Dict[str, str]]:
    """Trained-model folders under the search roots, each with its source, dataset and configuration."""
    out = []
    for source, root in roots if roots is not None else search_roots():
        for ds in _children(root):
            for m in _children(ds):
                if not is_model_folder(m) or len(m.name.split("__")) != 3:
                    continue
                trainer, plans, conf = m.name.split("__")
                folds = next((available_folds(m, c) for c in CHECKPOINTS if available_folds(m, c)), [])
                if folds:
                    out.append({"source": source, "dataset": ds.name, "configuration": conf, "trainer": trainer,
                                "plans": plans, "folds": ",".join(folds), "path": str(m)})
    return out

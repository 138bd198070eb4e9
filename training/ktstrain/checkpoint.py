"""Training checkpoints that load with ``torch.load(weights_only=True)`` and resume exactly.

A checkpoint is a dict of plain data: ``model`` / ``optimizer`` / ``scheduler``
/ ``scaler`` state dicts, ``epoch`` (the last *completed* epoch, 0-based; a
resumed run continues at ``epoch + 1``), ``rng`` (:func:`capture_rng`),
``sampler`` state, ``best_metric``, ``config``, anything else the caller adds.

``weights_only=True`` (PyTorch >= 2.6's default, and the safe way to open a
file someone else wrote) unpickles only tensors, containers and primitive
values. Optimizer, scheduler and GradScaler state dicts are made of those
already; RNG states are stored as tensors and lists here (NumPy's legacy state
holds an ndarray); :func:`to_safe` turns NumPy scalars and arrays, paths,
sets and dataclasses elsewhere in the state into such values before saving,
so every checkpoint this module writes loads with ``weights_only=True``.

A file that cannot be read (cut short by a full disk or an interrupted copy,
damaged) raises :class:`CheckpointError`, one line naming it. A resume
(:meth:`CheckpointManager.resume_state`) then falls back to the newest
readable earlier checkpoint: an epoch checkpoint or, in a run that keeps none
(``keep_last=0``), ``checkpoint_previous.pt``, the latest one before the last
save.
"""
from __future__ import annotations

import dataclasses
import io
import logging
import os
import random
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from KidneyTumorSegLib.io.atomic import atomic_write

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
LATEST, BEST, FINAL = "checkpoint_latest.pt", "checkpoint_best.pt", "checkpoint_final.pt"
PREVIOUS = "checkpoint_previous.pt"
_EPOCH_RE = re.compile(r"^checkpoint_epoch(\d{4,})\.pt$")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded (truncated, corrupt, or holding objects ``weights_only`` refuses)."""


def epoch_name(epoch: int) -> str:
    """``checkpoint_epochNNNN.pt`` for ``epoch``."""
    return f"checkpoint_epoch{int(epoch):04d}.pt"


def to_safe(obj: Any, where: str = "state") -> Any:
    """``obj`` with every value made loadable by ``torch.load(weights_only=True)``.

    NumPy arrays become tensors (uint32 -> int64), NumPy scalars Python
    numbers, paths strings, sets sorted lists, dataclasses dicts. Anything else
    that is not a tensor, container or primitive raises ``TypeError`` naming
    where it sits (better than a checkpoint that only loads unsafely).
    """
    if obj is None or isinstance(obj, (bool, int, float, str, bytes, torch.Tensor, torch.Size, torch.dtype,
                                       torch.device)):
        return obj
    if isinstance(obj, np.ndarray):
        arr = obj.astype(np.int64) if obj.dtype == np.uint32 else obj
        return torch.from_numpy(np.ascontiguousarray(arr))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_safe(dataclasses.asdict(obj), where)
    if isinstance(obj, dict):
        out = type(obj)((k, to_safe(v, f"{where}[{k!r}]")) for k, v in obj.items())
        if hasattr(obj, "_metadata"):  # module state dicts carry per-module versions load_state_dict reads
            out._metadata = obj._metadata
        return out
    if isinstance(obj, (list, tuple)):
        items = [to_safe(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    if isinstance(obj, (set, frozenset)):
        return sorted(to_safe(v, where) for v in obj)
    raise TypeError(f"{where}: a {type(obj).__name__} cannot be stored in a weights_only checkpoint; "
                    f"store its state as tensors, numbers, strings, lists or dicts")


def capture_rng() -> Dict[str, Any]:
    """The global RNG states (Python ``random``, NumPy legacy, torch CPU, torch CUDA when available)."""
    version, internal, gauss = random.getstate()
    np_name, np_key, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state: Dict[str, Any] = {
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {"name": str(np_name), "key": torch.from_numpy(np_key.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Dict[str, Any]) -> None:
    """Restore the global RNGs from :func:`capture_rng`'s dict, or from a checkpoint holding it as ``rng``.

    CUDA states are restored when CUDA is available and the device count
    matches (else a warning: CUDA random streams then differ from the run's).
    """
    if "rng" in state and "python" not in state:
        state = state["rng"]
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["name"], np.asarray(n["key"].numpy(), dtype=np.uint32), int(n["pos"]),
                         int(n["has_gauss"]), float(n["gauss"])))
    torch.set_rng_state(state["torch"].to(torch.uint8).cpu())
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.to(torch.uint8).cpu() for s in cuda])
        else:
            logger.warning("checkpoint has CUDA RNG states for %d device(s), this machine has %d; not restored",
                           len(cuda), torch.cuda.device_count())


def _serialise(state: Dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(to_safe(dict(state)), buf)
    return buf.getvalue()


def _write_bytes(path: PathLike, data: bytes, overwrite: bool) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "xb") as f:
            f.write(data)
    return atomic_write(path, write, overwrite=overwrite)


def save_checkpoint(path: PathLike, state: Dict[str, Any], overwrite: bool = False) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file + rename): a crash mid-write leaves the old file.

    ``state`` passes through :func:`to_safe`. Raises ``FileExistsError`` if
    ``path`` exists and ``overwrite`` is False.
    """
    return _write_bytes(path, _serialise(state), overwrite)


def load_checkpoint(path: PathLike, map_location: Any = "cpu", weights_only: bool = True) -> Dict[str, Any]:
    """Read a checkpoint. ``weights_only=True`` (default) refuses arbitrary pickled objects; every file
    :func:`save_checkpoint` writes loads that way. Pass ``False`` only for a file from a trusted source."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:  # outside the try: a file that cannot be opened is not a corrupt one
        try:
            state = torch.load(f, map_location=map_location, weights_only=weights_only)
        except MemoryError:
            raise
        except Exception as exc:
            if weights_only and "weights_only" in str(exc).lower():
                raise CheckpointError(f"{path}: the checkpoint holds objects that weights_only loading refuses "
                                      f"(it was not written by ktstrain.checkpoint); load it with weights_only="
                                      f"False only if you trust its source. Detail: {str(exc).splitlines()[0]}"
                                      ) from None
            if "deserialize object on" in str(exc):  # saved on a device map_location does not map; not damage
                raise
            # a damaged file fails anywhere in torch's zip reader or unpickler, with any exception type
            raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({_reason(exc)})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a checkpoint dict, got {type(state).__name__}")
    return state


def _reason(exc: BaseException) -> str:
    """The first sentence of ``exc``'s message (torch's zip reader appends a paragraph of advice)."""
    lines = str(exc).strip().splitlines()
    first = re.split(r"\. (?=[A-Z])", lines[0])[0] if lines else ""
    if first and isinstance(exc, RuntimeError):
        return first
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


class CheckpointManager:
    """The checkpoint files of one training folder.

    :meth:`save` always writes ``checkpoint_latest.pt`` (what a resume
    reads); every ``every`` epochs also ``checkpoint_epochNNNN.pt``, keeping the
    newest ``keep_last`` of those; ``checkpoint_best.pt`` when ``is_best``;
    ``checkpoint_final.pt`` when ``final``. The state is serialised once and
    written to each name atomically. With ``keep_last=0`` (no epoch
    checkpoints) the last ``checkpoint_latest.pt`` is first renamed to
    ``checkpoint_previous.pt`` (one atomic rename), so a resume still has an
    earlier checkpoint when the latest one is unreadable.
    """

    def __init__(self, folder: PathLike, keep_last: int = 3, every: int = 1) -> None:
        self.folder = Path(folder)
        self.keep_last = max(int(keep_last), 0)
        self.every = max(int(every), 1)
        self._rotate = True  # False after a resume fell back from an unreadable checkpoint_latest.pt

    def epoch_files(self) -> Dict[int, Path]:
        """``{epoch: path}`` of the epoch checkpoints present."""
        if not self.folder.is_dir():
            return {}
        out = {}
        for p in self.folder.iterdir():
            m = _EPOCH_RE.match(p.name)
            if m:
                out[int(m.group(1))] = p
        return dict(sorted(out.items()))

    def save(self, state: Dict[str, Any], epoch: int, is_best: bool = False, final: bool = False) -> List[Path]:
        """Write the files due for ``epoch`` (also stored in the state as ``epoch``); returns them."""
        state = dict(state, epoch=int(epoch))
        data = _serialise(state)
        latest = self.folder / LATEST
        if self.keep_last == 0 and self._rotate and latest.is_file():
            # a kill between this rename and the write below leaves checkpoint_previous.pt alone: resume_state
            # takes it
            os.replace(latest, self.folder / PREVIOUS)
        self._rotate = True  # (an unreadable latest file is overwritten, never kept as the previous one)
        names = [LATEST]
        if self.keep_last and (epoch + 1) % self.every == 0:
            names.append(epoch_name(epoch))
        if is_best:
            names.append(BEST)
        if final:
            names.append(FINAL)
        written = [_write_bytes(self.folder / n, data, overwrite=True) for n in names]
        self._prune()
        return written

    def _prune(self) -> None:
        files = self.epoch_files()
        for epoch in list(files)[:max(len(files) - self.keep_last, 0)]:
            files[epoch].unlink()

    def discard_after(self, epoch: int) -> None:
        """Delete epoch checkpoints newer than ``epoch`` (left by the interrupted part of a resumed run)."""
        for e, p in self.epoch_files().items():
            if e > epoch:
                p.unlink()
                logger.info("removed %s: newer than the resumed epoch %d", p.name, epoch)

    def latest(self) -> Optional[Path]:
        """``checkpoint_latest.pt`` if present, else ``checkpoint_previous.pt``, else the newest epoch
        checkpoint, else None (files present, not necessarily readable: see :meth:`resume_state`)."""
        for p in (self.folder / LATEST, self.folder / PREVIOUS):
            if p.is_file():
                return p
        files = self.epoch_files()
        return files[max(files)] if files else None

    def resume_state(self, map_location: Any = "cpu") -> Tuple[Path, Dict[str, Any]]:
        """The checkpoint a resume starts from, and its state.

        ``checkpoint_latest.pt`` when readable. When it is missing or
        unreadable: of ``checkpoint_previous.pt`` and the epoch checkpoints, the
        readable one with the highest epoch, logged with the name of both files.
        ``FileNotFoundError`` when the folder has no checkpoint at all;
        :class:`CheckpointError` (one line naming the file) when none is readable.
        """
        latest = self.folder / LATEST
        epochs = list(reversed(self.epoch_files().values()))
        if not latest.is_file() and not epochs and not (self.folder / PREVIOUS).is_file():
            raise FileNotFoundError(f"--resume: no checkpoint in {self.folder}")
        error: Optional[CheckpointError] = None
        if latest.is_file():
            try:
                return latest, load_checkpoint(latest, map_location)
            except CheckpointError as exc:
                error = exc
        found = self._newest_readable(epochs, map_location)
        if found is None:
            reason = str(error) if error else f"{latest} is missing"
            raise CheckpointError(f"cannot resume: {reason} and {self.folder} holds no earlier readable "
                                  f"checkpoint; start over with --overwrite")
        if error is None:
            logger.warning("%s is missing: resuming from %s", latest, found[0])
        else:
            logger.error("%s", error)
            logger.warning("falling back to the previous checkpoint %s (%s is unreadable)", found[0], latest)
            self._rotate = False  # the next save replaces the unreadable file instead of keeping it
        return found

    def _newest_readable(self, epochs: List[Path], map_location: Any) -> Optional[Tuple[Path, Dict[str, Any]]]:
        """Of the newest readable epoch checkpoint and ``checkpoint_previous.pt``, the one of the later epoch."""
        found: Optional[Tuple[Path, Dict[str, Any]]] = None
        previous = self.folder / PREVIOUS
        for p in epochs + ([previous] if previous.is_file() else []):
            if found is not None and p != previous:
                continue  # older epoch checkpoints: the newest readable one is found
            try:
                state = load_checkpoint(p, map_location)
            except CheckpointError as exc:
                logger.warning("%s", exc)
                continue
            if found is None or int(state["epoch"]) > int(found[1]["epoch"]):
                found = (p, state)
        return found

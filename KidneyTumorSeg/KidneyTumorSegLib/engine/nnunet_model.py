"""Running an nnU-Net v2 trained model with nnU-Net's own predictor, loaded safely.

What is nnU-Net's and what is ours:

* preprocessing (crop to non-zero, normalisation, resampling), the sliding
  window, mirroring TTA, the resampling of the output back and the argmax /
  region decoding are nnunetv2's own functions (``nnUNetPredictor``,
  ``PreprocessAdapterFromNpy``, ``convert_predicted_logits_to_segmentation_with_correct_shape``):
  nothing of nnU-Net is re-implemented here;
* loading is ours: nnU-Net's ``initialize_from_trained_model_folder`` unpickles
  checkpoints with ``weights_only=False``, which runs any code a checkpoint
  carries. Here checkpoints are read with ``torch.load(weights_only=True)`` and
  an allow-list of the plain numpy types nnU-Net's training log holds
  (:data:`ALLOWED_GLOBALS`); a checkpoint that needs anything else is refused
  unread. The trainer class is looked up only among nnunetv2's own trainers
  (never ``nnUNet_extTrainer`` or the model folder), the network class only in
  ``dynamic_network_architectures``, its building blocks only in ``torch.nn``;
* the role probabilities (kidney, tumor) are taken from nnU-Net's probabilities
  at the network's resolution and only those channels are resampled back, with
  nnU-Net's own resampling function: a 118-class model's probabilities on a
  512x512x200 grid would need 24 GB.

Arrays are ``(z, y, x)`` = ``(k, j, i)`` as SimpleITK reads them; spacings in
the same order, mm: what nnU-Net's ``SimpleITKIO`` hands its predictor.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
from typing import Any, Dict, List, Sequence

import numpy as np
import torch

from ..bundles.nnunet_folder import NnunetFolder, NnunetFolderError
from ..bundles.nnunet_labels import LabelRoles, label_roles

log = logging.getLogger(__name__)

NETWORK_PACKAGE = "dynamic_network_architectures."
BLOCK_PACKAGE = "torch.nn."


class NnunetError(ValueError):
    """An nnU-Net model that cannot be loaded or run; the message names the file."""


def _allowed_globals() -> List[Any]:
    """Plain data types found in nnU-Net v2 checkpoints (numpy scalars in the training log)."""
    import numpy

    out: List[Any] = [numpy.dtype]
    try:
        from numpy._core.multiarray import scalar  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    out.append(scalar)
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # pragma: no cover
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    out.append(_reconstruct)
    out.append(numpy.ndarray)
    # checkpoints saved under numpy 1.x name these numpy.core.multiarray.*
    out += [(scalar, "numpy.core.multiarray.scalar"), (_reconstruct, "numpy.core.multiarray._reconstruct")]
    for name in ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType", "Float16DType"):
        if hasattr(numpy, "dtypes") and hasattr(numpy.dtypes, name):
            out.append(getattr(numpy.dtypes, name))
    return out


def load_checkpoint(path) -> Dict[str, Any]:
    """An nnU-Net checkpoint read with ``weights_only=True`` and the numpy allow-list; anything else refused."""
    import pickle

    if not hasattr(torch.serialization, "safe_globals"):
        raise NnunetError(f"{path}: loading nnU-Net checkpoints safely needs torch >= 2.5 (installed {torch.__version__})")
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).split("\n\n")[0].split("\n")[-1] if str(exc) else type(exc).__name__
        raise NnunetError(f"{path}: refused: the checkpoint holds Python objects beyond tensors and plain data, "
                          f"which are not loaded ({first.strip()})") from exc
    except (RuntimeError, OSError, EOFError) as exc:
        raise NnunetError(f"{path}: not a readable PyTorch checkpoint: {str(exc).splitlines()[0] if str(exc) else exc}") from exc
    if not isinstance(ckpt, dict) or "network_weights" not in ckpt:
        raise NnunetError(f"{path}: not an nnU-Net v2 checkpoint (no network_weights)")
    return ckpt


def _trainer_class(name: str):
    """A trainer class of nnunetv2's own package only.

    Found by reading the trainer package's sources for ``class <name>(`` and
    importing only the module that defines it: nnU-Net's own lookup imports
    every trainer module (some pull in timm and torchvision, which may be
    absent or broken where nnU-Net runs fine) and also searches
    ``nnUNet_extTrainer`` folders, which are never imported here.
    """
    import importlib
    import re

    import nnunetv2

    if not str(name).isidentifier():
        raise NnunetError(f"trainer name {name!r} is not a class name")
    root = os.path.join(nnunetv2.__path__[0], "training", "nnUNetTrainer")
    pattern = re.compile(rf"^class\s+{re.escape(name)}\s*[(:]", re.MULTILINE)
    for folder, _, files in sorted(os.walk(root)):
        for fname in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(folder, fname)
            with open(path, encoding="utf-8", errors="replace") as f:
                if not pattern.search(f.read()):
                    continue
            rel = os.path.relpath(path[:-3], root).replace(os.sep, ".")
            try:
                module = importlib.import_module(f"nnunetv2.training.nnUNetTrainer.{rel}")
            except Exception as exc:  # noqa: BLE001 - whatever the module's imports raise
                raise NnunetError(f"trainer {name!r}: importing nnunetv2's module {rel} failed: {exc}") from exc
            cls = getattr(module, name, None)
            if isinstance(cls, type):
                return cls
    raise NnunetError(f"trainer {name!r} is not one of nnunetv2's trainers (installed nnunetv2 "
                      f"{_version('nnunetv2')}); custom trainers are not imported")


def _check_architecture(conf_manager, where: str) -> None:
    """The plans name a network class of dynamic_network_architectures and building blocks of torch.nn only."""
    cls = str(conf_manager.network_arch_class_name)
    if not cls.startswith(NETWORK_PACKAGE):
        raise NnunetError(f"{where}: network class {cls!r} is not from {NETWORK_PACKAGE.rstrip('.')}; not imported")
    kwargs = conf_manager.network_arch_init_kwargs
    for key in conf_manager.network_arch_init_kwargs_req_import:
        value = kwargs.get(key)
        if value is not None and not str(value).startswith(BLOCK_PACKAGE):
            raise NnunetError(f"{where}: network building block {key}={value!r} is not from torch.nn; not imported")


def _version(pkg: str) -> str:
    try:
        from importlib.metadata import version
        return version(pkg)
    except Exception:  # noqa: BLE001 - only for a message
        return "?"


def _build_predictor(folder: NnunetFolder, device: torch.device, mirroring: bool, step: float):
    """nnU-Net's predictor, initialised by hand from safely loaded checkpoints."""
    import inspect

    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    dataset_json, plans = folder.read_json("dataset.json"), folder.read_json("plans.json")
    try:
        plans_manager = PlansManager(plans)
        conf = plans_manager.get_configuration(folder.configuration)
    except (KeyError, TypeError, ValueError, AssertionError) as exc:
        raise NnunetError(f"{folder.path / 'plans.json'}: no usable {folder.configuration!r} configuration: {exc}") from exc
    _check_architecture(conf, str(folder.path / "plans.json"))
    params, first = [], {}
    for path in folder.checkpoint_paths():  # one at a time: a checkpoint also holds the optimizer's state
        ckpt = load_checkpoint(path)
        params.append(ckpt["network_weights"])
        first = first or {k: ckpt.get(k) for k in ("trainer_name", "inference_allowed_mirroring_axes")}
        del ckpt
    trainer = _trainer_class(first["trainer_name"] or folder.trainer)
    label_manager = plans_manager.get_label_manager(dataset_json)
    n_in = determine_num_input_channels(plans_manager, conf, dataset_json)
    n_out = label_manager.num_segmentation_heads
    if "plans_manager" in inspect.signature(trainer.build_network_architecture).parameters:
        network = trainer.build_network_architecture(plans_manager, conf, n_in, n_out, enable_deep_supervision=False)
    else:  # pragma: no cover - nnunetv2 < 2.5
        network = trainer.build_network_architecture(conf.network_arch_class_name, conf.network_arch_init_kwargs,
                                                     conf.network_arch_init_kwargs_req_import, n_in, n_out,
                                                     enable_deep_supervision=False)
    try:
        network.load_state_dict(params[0])
    except RuntimeError as exc:
        raise NnunetError(f"{folder.checkpoint_paths()[0]}: weights do not fit the network of plans.json: "
                          f"{str(exc).splitlines()[0]}") from exc
    axes = first["inference_allowed_mirroring_axes"]
    with contextlib.redirect_stdout(io.StringIO()):  # its constructor prints a note for CPU devices
        predictor = nnUNetPredictor(tile_step_size=step, use_gaussian=True, use_mirroring=mirroring,
                                    perform_everything_on_device=device.type == "cuda", device=device,
                                    verbose=False, allow_tqdm=False)
    predictor.manual_initialization(network, plans_manager, conf, params, dataset_json, trainer.__name__,
                                    tuple(axes) if axes is not None else None)
    return predictor


class NnunetModel:
    """One nnU-Net trained model (its folds an ensemble), run by nnU-Net's predictor.

    ``mirroring``: nnU-Net's mirroring TTA over the checkpoint's
    ``inference_allowed_mirroring_axes``. ``step``: nnU-Net's tile step (0.5,
    its default). ``label_overrides``: see :func:`nnunet_labels.label_roles`.
    """

    def __init__(self, folder: NnunetFolder, device: str = "cpu", mirroring: bool = False, step: float = 0.5,
                 label_overrides=None) -> None:
        try:
            import nnunetv2  # noqa: F401
        except ImportError as exc:
            raise NnunetError("running nnU-Net models needs the nnunetv2 package: "
                              "pip install 'kidneytumorseg[nnunet]' (keep torch pinned)") from exc
        self.folder = folder
        self.device = torch.device(device)
        self.roles: LabelRoles = label_roles(folder.read_json("dataset.json"), label_overrides)
        self.predictor = _build_predictor(folder, self.device, mirroring, step)
        self.previous = (NnunetModel(folder.previous, device, mirroring, step, label_overrides)
                         if folder.previous else None)

    @property
    def label_manager(self):
        return self.predictor.label_manager

    def _preprocessed(self, image: np.ndarray, spacing_zyx: Sequence[float]) -> Dict[str, Any]:
        """nnU-Net's preprocessing of one image (and the previous stage's segmentation, for a cascade)."""
        from nnunetv2.inference.data_iterators import PreprocessAdapterFromNpy

        data = np.ascontiguousarray(image, dtype=np.float32)[None]
        prev = None
        if self.previous is not None:
            # (1, z, y, x) float32: how nnU-Net's reader hands a previous stage's segmentation over
            prev = self.previous.segment(image, spacing_zyx)[None].astype(np.float32)
        p = self.predictor
        props = {"spacing": [float(s) for s in spacing_zyx]}
        adapter = PreprocessAdapterFromNpy([data], [prev], [props], [None], p.plans_manager, p.dataset_json,
                                           p.configuration_manager, num_threads_in_multithreaded=1)
        return next(adapter)

    def _logits(self, image: np.ndarray, spacing_zyx: Sequence[float]):
        dct = self._preprocessed(image, spacing_zyx)
        return self.predictor.predict_logits_from_preprocessed_data(dct["data"]).cpu(), dct["data_properties"]

    def segment(self, image: np.ndarray, spacing_zyx: Sequence[float]) -> np.ndarray:
        """nnU-Net's own label map of ``image`` ``(z, y, x)``: argmax or region decoding, its label values."""
        from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

        logits, props = self._logits(image, spacing_zyx)
        p = self.predictor
        return np.asarray(convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, p.plans_manager, p.configuration_manager, p.label_manager, props, return_probabilities=False))

    def role_probabilities(self, image: np.ndarray, spacing_zyx: Sequence[float],
                           roles: Sequence[str] = ("kidney", "tumor")) -> np.ndarray:
        """Probabilities ``(len(roles), z, y, x)`` float32 of each role on ``image``'s grid (0 for a missing role)."""
        from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image

        logits, props = self._logits(image, spacing_zyx)
        p = self.predictor
        lm, pm, conf = p.label_manager, p.plans_manager, p.configuration_manager
        probs = lm.apply_inference_nonlin(logits)
        probs = torch.as_tensor(probs)
        chans = torch.stack([probs[list(self.roles.channels[r])].sum(0) if self.roles.has(r)
                             else torch.zeros(probs.shape[1:], dtype=probs.dtype) for r in roles])
        del probs, logits
        spacing_t = [props["spacing"][i] for i in pm.transpose_forward]
        shape = props["shape_after_cropping_and_before_resampling"]
        current = conf.spacing if len(conf.spacing) == len(shape) else [spacing_t[0], *conf.spacing]
        chans = conf.resampling_fn_probabilities(chans, shape, current, spacing_t)
        chans = np.asarray(chans.cpu().numpy() if isinstance(chans, torch.Tensor) else chans, dtype=np.float32)
        full = np.zeros((len(roles), *props["shape_before_cropping"]), np.float32)
        full = insert_crop_into_image(full, chans, props["bbox_used_for_cropping"])
        full = np.asarray(full).transpose([0] + [i + 1 for i in pm.transpose_backward])
        return np.ascontiguousarray(full)


def open_model(folder: NnunetFolder, device: str = "cpu", tta: bool = False, label_overrides=None) -> NnunetModel:
    """:class:`NnunetModel` with errors of the folder, labels and checkpoints as :class:`NnunetError`."""
    try:
        return NnunetModel(folder, device=device, mirroring=tta, label_overrides=label_overrides)
    except NnunetFolderError as exc:
        raise NnunetError(str(exc)) from exc

"""The core's Python packages in Slicer: which are missing, and installing them (pip; PyTorch by its extension)."""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
from typing import List, Optional, Sequence

import slicer
from slicer.i18n import tr as _

# pip requirements of the core with the bounds of the repository's pyproject.toml
# (Testing/slicer/test_slicer_module.py keeps the two equal). torch is not in this list:
# it comes from the PyTorch extension, which picks the build matching the GPU driver,
# and it must be there before monai so that pip does not pull a generic torch.
TORCH_REQUIREMENT = "torch>=2.1,<3"
CORE_REQUIREMENTS = (
    "numpy>=1.22,<3",
    "scipy>=1.9,<2",
    "monai>=1.3,<1.7",
    "SimpleITK>=2.3,<3",
    "connected-components-3d>=3.12,<5",
    "slicerio>=1.0,<2",
    "pynrrd>=1.0,<2",
    "safetensors>=0.4,<1",
    "pillow>=9,<14",
    "tqdm>=4.60,<5",
)
PIP_OPTIONS = ("--timeout", "20", "--retries", "1")
# optional: running nnU-Net v2 models (TotalSegmentator's weights, KiTS models); pyproject's [nnunet] extra
NNUNET_REQUIREMENT = "nnunetv2>=2.5,<2.9"
# optional: DICOM SEG export; pyproject's [dicom] extra (on Python 3.9 pip picks highdicom 0.22 and pydicom 2.4)
DICOM_REQUIREMENTS = ("highdicom>=0.22,<0.29", "pydicom>=2.4,<4")


class MissingExtensionError(RuntimeError):
    """A Slicer extension the module needs (PyTorch) is not installed."""


# import names of distributions whose module name differs; used when a package that
# Slicer bundles has no pip metadata
_IMPORT_NAMES = {"connected-components-3d": "cc3d", "pillow": "PIL", "pynrrd": "nrrd"}


def missingRequirements() -> List[str]:
    """Requirements (torch included) that are absent or outside their version bounds."""
    return [r for r in (TORCH_REQUIREMENT,) + CORE_REQUIREMENTS if not requirementSatisfied(r)]


def ensureDependencies(askConfirmation: bool = True) -> bool:
    """Install missing packages after asking; False when the user declined or installation failed."""
    missing = missingRequirements()
    if not missing:
        return True
    ask = askConfirmation and not slicer.app.testingEnabled()
    try:
        if TORCH_REQUIREMENT in missing and not _installTorch(ask):
            return False
        pipMissing = [r for r in missing if r != TORCH_REQUIREMENT]
        if pipMissing:
            if ask and not slicer.util.confirmOkCancelDisplay(
                    _("KidneyTumorSeg needs these Python packages. Download and install them now? "
                      "This can take a few minutes.\n\n{packages}").format(packages="\n".join(pipMissing)),
                    windowTitle=_("KidneyTumorSeg: install dependencies")):
                return False
            with slicer.util.WaitCursor():
                # offline, pip gives up after about a minute instead of retrying for several
                slicer.util.pip_install(list(PIP_OPTIONS) + list(pipMissing))
    except MissingExtensionError as exc:  # nothing to do with the network: say what to install
        slicer.util.errorDisplay(str(exc), windowTitle=_("KidneyTumorSeg: install dependencies"))
        return False
    except Exception as exc:
        logging.exception("KidneyTumorSeg: installing dependencies failed")
        slicer.util.errorDisplay(_installHelp(missing, exc), windowTitle=_("KidneyTumorSeg: install dependencies"))
        return False
    importlib.invalidate_caches()
    still = missingRequirements()
    if still:
        slicer.util.errorDisplay(_installHelp(still, None), windowTitle=_("KidneyTumorSeg: install dependencies"))
        return False
    return True


def ensureNnunet(askConfirmation: bool = True) -> bool:
    """Install nnunetv2 for nnU-Net models, torch pinned to the installed build (else pip pulls another torch)."""
    if requirementSatisfied(NNUNET_REQUIREMENT):
        return True
    import torch

    ask = askConfirmation and not slicer.app.testingEnabled()
    if ask and not slicer.util.confirmOkCancelDisplay(
            _("Running nnU-Net models needs the nnunetv2 package. Download and install it now?\n\n{package}").format(
                package=NNUNET_REQUIREMENT), windowTitle=_("KidneyTumorSeg: install nnU-Net")):
        return False
    pinned = "torch==" + torch.__version__.split("+")[0]
    try:
        with slicer.util.WaitCursor():
            slicer.util.pip_install(list(PIP_OPTIONS) + [NNUNET_REQUIREMENT, pinned])
    except Exception as exc:
        logging.exception("KidneyTumorSeg: installing nnunetv2 failed")
        slicer.util.errorDisplay(_("nnunetv2 could not be installed: {error}\nIn Slicer's Python console: "
                                   "slicer.util.pip_install(['{req}', '{torch}'])").format(
                                       error=exc, req=NNUNET_REQUIREMENT, torch=pinned),
                                 windowTitle=_("KidneyTumorSeg: install nnU-Net"))
        return False
    importlib.invalidate_caches()
    return requirementSatisfied(NNUNET_REQUIREMENT)


def ensureDicomSeg(askConfirmation: bool = True) -> bool:
    """Install highdicom and pydicom (pyproject's [dicom] extra) for DICOM SEG export, after asking."""
    missing = [r for r in DICOM_REQUIREMENTS if not requirementSatisfied(r)]
    if not missing:
        return True
    ask = askConfirmation and not slicer.app.testingEnabled()
    if ask and not slicer.util.confirmOkCancelDisplay(
            _("Exporting DICOM SEG needs these Python packages. Download and install them now?\n\n{packages}").format(
                packages="\n".join(missing)), windowTitle=_("KidneyTumorSeg: install highdicom")):
        return False
    try:
        with slicer.util.WaitCursor():
            slicer.util.pip_install(list(PIP_OPTIONS) + missing)
    except Exception as exc:
        logging.exception("KidneyTumorSeg: installing highdicom failed")
        slicer.util.errorDisplay(_installHelp(missing, exc), windowTitle=_("KidneyTumorSeg: install highdicom"))
        return False
    importlib.invalidate_caches()
    return all(requirementSatisfied(r) for r in DICOM_REQUIREMENTS)


def requirementSatisfied(requirement: str) -> bool:
    """True when ``requirement`` ("name>=a,<b") is installed within its bounds."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # Slicer versions without a top-level packaging install
        from pip._vendor.packaging.requirements import Requirement

    req = Requirement(requirement)
    try:
        version = importlib.metadata.version(req.name)
    except importlib.metadata.PackageNotFoundError:
        # packages built into Slicer may lack pip metadata; importable counts as present
        return importlib.util.find_spec(_IMPORT_NAMES.get(req.name, req.name)) is not None
    return req.specifier.contains(version, prereleases=True)


def _installTorch(askConfirmation: bool) -> bool:
    try:
        import PyTorchUtils
    except ImportError:
        raise MissingExtensionError(_("The PyTorch extension is not installed: install 'PyTorch' from the "
                                      "Extensions Manager, restart Slicer, and try again."))
    logic = PyTorchUtils.PyTorchUtilsLogic()
    bounds = TORCH_REQUIREMENT[len("torch"):]
    try:
        torch = logic.installTorch(askConfirmation=askConfirmation, torchVersionRequirement=bounds)
    except TypeError:  # PyTorch extensions before version requirements were supported
        torch = logic.installTorch(askConfirmation=askConfirmation)
    return torch is not None


def _installHelp(missing: Sequence[str], exc: Optional[BaseException]) -> str:
    text = _("KidneyTumorSeg could not install the Python packages it needs (no internet connection?).\n\n"
             "Install them by hand, then restart Slicer:\n"
             "- PyTorch ({torch}): with the PyTorch Utils module of the PyTorch extension\n"
             "- in Slicer's Python console: slicer.util.pip_install({packages})").format(
                 torch=TORCH_REQUIREMENT, packages=[r for r in missing if r != TORCH_REQUIREMENT] or list(CORE_REQUIREMENTS))
    if exc is not None:
        text += "\n\n" + _("Error: {error}").format(error=exc)
    return text

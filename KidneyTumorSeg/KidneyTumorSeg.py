"""3D Slicer module: kidney and kidney-tumor segmentation in abdominal CT.

A thin adapter over the Slicer-independent core in ``KidneyTumorSegLib``: the
input volume is exported to a temporary NRRD, the core's command line runs in a
separate PythonSlicer process (progress is read from its event stream, and it
can be cancelled), and the results are loaded into the scene only once the run
has finished. Order follows Slicer's scripted-module template: module,
sample data, parameter node, widget, logic, test.
"""
import enum
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Annotated, Callable, Dict, List, Optional, Sequence, Tuple

import qt
import vtk

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin
from slicer.parameterNodeWrapper import parameterNodeWrapper, WithinRange

from slicer import vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode

# pip requirements of the core with the bounds of the repository's pyproject.toml
# (Testing/test_slicer_module.py keeps the two equal). torch is not in this list:
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
# import names of distributions whose module name differs; used when a package that
# Slicer bundles has no pip metadata
_IMPORT_NAMES = {"connected-components-3d": "cc3d", "pillow": "PIL", "pynrrd": "nrrd"}

# node references and attributes that tie a result together (saved with the scene)
REF_INPUT = "KidneyTumorSeg.Input"
REF_FINDINGS = "KidneyTumorSeg.Findings"
REF_CANDIDATES = "KidneyTumorSeg.Candidates"
ATTR_REPORT = "KidneyTumorSeg.Report"

# segment ids written by the core (terminology.SEG_NRRD_SEGMENTS)
SEGMENT_KIDNEY_LEFT = "kidney_left"
SEGMENT_KIDNEY_RIGHT = "kidney_right"
SEGMENT_TUMOR = "kidney_tumor"


#
# KidneyTumorSeg
#


class KidneyTumorSeg(ScriptedLoadableModule):
    """Module description shown in Slicer (see ScriptedLoadableModule in Slicer's Base/Python)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("KidneyTumorSeg")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["Segmentations", "Markups", "SubjectHierarchy"]
        self.parent.contributors = ["KidneyTumorSeg developers"]
        self.parent.helpText = _("""
Segments the kidneys (left and right) and kidney tumors in an abdominal CT with a three-stage
3D cascade: a coarse search for the kidneys at 3.4 mm, fine kidney segmentation in that region,
then tumor segmentation on each kidney with every tumor candidate scored by its mean probability
(kept from 0.8). Results: a segmentation (Kidney left, Kidney right, Kidney tumor, with standard
terminology) and a findings table (kidney volumes; tumor volumes, diameters and scores, kept or
rejected). Rejected candidates can be added back and kept ones removed.
<br><br>
The default model is trained on synthetic phantoms only. Research use only; not for clinical use.
<br><br>
Methods (KiTS 2019 challenge reports):
<ul>
<li>A. Zakirov. Technical report KiTS 2019: coarse ROI, fine kidney, per-kidney tumor candidates,
choice by mean probability, 12 test-time augmentations.</li>
<li>Y. Zhang. UNet-based segmentation of kidney and kidney tumor in 3D computed tomography images:
plain, residual and pre-activation 3D U-Nets (the residual U-Net is the default network).</li>
<li>N. Dahiya, A. Sharma. Segmentation of kidney tumor: two-stage 2D ENet, Tversky loss.</li>
<li>J. Zhang, K. He, T. Qin, J. Chen, L. Yang. Segmentation of kidney and kidney tumor by cascaded
fusion FCNs with soft-boundary regression.</li>
<li>KiTS19 report: 3D ResUNet with deep supervision for the kidney; 2.5D V-Net with multi-scale
input, squeeze-and-excitation, attention gates and hybrid dilated convolution for the tumor.</li>
</ul>
Data: N. Heller et al. The KiTS19 Challenge Data: 300 Kidney Tumor Cases with Clinical Context,
CT Semantic Segmentations, and Surgical Outcomes. arXiv:1904.00445, 2019.
""")
        self.parent.acknowledgementText = _("""
Built on 3D Slicer, PyTorch (through the SlicerPyTorch extension), MONAI, SimpleITK and
connected-components-3d. The methods are those of the KiTS 2019 challenge participants cited in
the help; KiTS19 label maps (CC BY-NC-SA 4.0) are used in tests only.
""")
        slicer.app.connect("startupCompleted()", registerSampleData)


#
# Sample data: a synthetic phantom CT made locally by the core (nothing is downloaded)
#

SAMPLE_NAME = "KidneyTumorSegPhantom"
PHANTOM_SEED = 7
PHANTOM_SHAPE = (96, 384, 384)  # array (k, j, i): slices, rows, columns
PHANTOM_SPACING = (0.9, 0.9, 3.0)  # (x, y, z) mm, inside the range the default model is trained on


def phantomSamplePaths() -> Tuple[Path, Path]:
    """Paths of the phantom CT and its reference KiTS label map in Slicer's cache folder."""
    from KidneyTumorSegLib import __version__

    cache = Path(slicer.mrmlScene.GetCacheManager().GetRemoteCacheDirectory())
    stem = f"{SAMPLE_NAME}-{__version__}-seed{PHANTOM_SEED}"
    return cache / f"{stem}.nrrd", cache / f"{stem}.label.nrrd"


def ensurePhantomSample() -> Tuple[Path, Path]:
    """Generate the phantom into the cache on first request; returns (CT path, reference label path)."""
    imagePath, labelPath = phantomSamplePaths()
    if imagePath.is_file() and labelPath.is_file():
        return imagePath, labelPath
    if not KidneyTumorSegLogic.ensureDependencies():
        raise RuntimeError(_("The Python packages KidneyTumorSeg needs are not installed."))
    import SimpleITK as sitk
    from KidneyTumorSegLib.atomic import atomic_write
    from KidneyTumorSegLib.phantom import make_phantom
    from KidneyTumorSegLib.volume_io import volume_to_sitk

    with slicer.util.WaitCursor():
        phantom = make_phantom(PHANTOM_SEED, shape=PHANTOM_SHAPE, spacing=PHANTOM_SPACING, n_tumors=1)
        # the label first: the CT's presence marks a complete pair
        for volume, path in ((phantom.label, labelPath), (phantom.image, imagePath)):
            image = volume_to_sitk(volume)
            atomic_write(path, lambda tmp, img=image: sitk.WriteImage(img, tmp, True), overwrite=True)
    return imagePath, labelPath


def _loadPhantomFromSampleData(source):
    import SampleData

    with slicer.util.tryWithErrorDisplay(_("The KidneyTumorSeg phantom could not be made."), waitCursor=True):
        ensurePhantomSample()
        SampleData.SampleDataLogic().downloadFromSource(source)


def loadPhantomSample():
    """Generate (if needed) and load the phantom CT; returns its volume node."""
    import SampleData

    registerSampleData()
    ensurePhantomSample()
    return SampleData.SampleDataLogic().downloadSample(SAMPLE_NAME)


def registerSampleData():
    """Add the phantom to the Sample Data module.

    The file URI points into the cache, where the phantom is generated on first
    request, so SampleData finds the file and never downloads anything.
    """
    import SampleData

    iconsPath = os.path.join(os.path.dirname(__file__), "Resources", "Icons")
    imagePath, _labelPath = phantomSamplePaths()
    if hasattr(SampleData.SampleDataLogic, "registerCustomSampleDataCategory"):
        SampleData.SampleDataLogic.registerCustomSampleDataCategory("KidneyTumorSeg", title=_("KidneyTumorSeg"))
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="KidneyTumorSeg",
        sampleName=SAMPLE_NAME,
        thumbnailFileName=os.path.join(iconsPath, "KidneyTumorSeg.png"),
        uris=imagePath.as_uri(),
        fileNames=imagePath.name,
        nodeNames=SAMPLE_NAME,
        customDownloader=_loadPhantomFromSampleData,
    )


#
# KidneyTumorSegParameterNode
#


class Device(enum.Enum):
    AUTO = "auto"
    CPU = "cpu"
    GPU = "cuda"

    def label(self):
        return {"AUTO": _("Auto"), "CPU": _("CPU"), "GPU": _("GPU (CUDA)")}[self.name]


class Quality(enum.Enum):
    FAST = "fast"
    FULL = "full"

    def label(self):
        return {"FAST": _("Fast (no test-time augmentation)"), "FULL": _("Full (12 test-time augmentations)")}[self.name]


@parameterNodeWrapper
class KidneyTumorSegParameterNode:
    """The module's settings, saved with the scene.

    inputVolume - CT to segment.
    modelPath - folder of the model bundle (the shipped default or an imported one).
    device - where the networks run.
    quality - fast (one pass) or full (12 test-time augmentations).
    outputSegmentation - segmentation to overwrite; none creates a new one.
    show3D - also show the result as surfaces in 3D.
    candidateThreshold - a tumor candidate is kept from this mean probability.
    keepComponents - kidneys kept (largest components), 1 or 2.
    roiNode - optional box around the kidneys that replaces stage 1.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    modelPath: str = ""
    device: Device = Device.AUTO
    quality: Quality = Quality.FAST
    outputSegmentation: vtkMRMLSegmentationNode
    show3D: bool = False
    candidateThreshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.8
    keepComponents: Annotated[int, WithinRange(1, 2)] = 2
    roiNode: vtkMRMLMarkupsROINode


#
# KidneyTumorSegWidget
#


class KidneyTumorSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel. State lives in the parameter node; runs go through the logic's async path."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._run = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/KidneyTumorSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = KidneyTumorSegLogic()

        self.ui.gpuWarningLabel.hide()
        self.ui.progressBar.hide()
        self.ui.findingsTableView.setSelectionBehavior(qt.QAbstractItemView.SelectRows)
        self.ui.findingsTableView.setSelectionMode(qt.QAbstractItemView.SingleSelection)
        importMenu = qt.QMenu(self.ui.importModelButton)
        importMenu.addAction(_("From a folder…")).connect("triggered()", self.onImportModelFolder)
        importMenu.addAction(_("From a file (manifest.json or .zip)…")).connect("triggered()", self.onImportModelFile)
        self.ui.importModelButton.setMenu(importMenu)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelSelected)
        self.ui.addCandidateButton.connect("clicked(bool)", lambda: self.onChangeCandidate(keep=True))
        self.ui.removeCandidateButton.connect("clicked(bool)", lambda: self.onChangeCandidate(keep=False))
        self.ui.editInSegmentEditorButton.connect("clicked(bool)", self.onEditInSegmentEditor)
        self.ui.show3DCheckBox.connect("toggled(bool)", self.onShow3DToggled)
        self.ui.findingsTableView.connect("selectionChanged()", self._updateCandidateButtons)

        self.refreshModelList()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self._cancelRun()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        # a running segmentation keeps going; its result is loaded when it finishes
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGuiState)

    def onSceneStartClose(self, caller, event) -> None:
        self._cancelRun()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode
        if not self._parameterNode.modelPath:
            self._parameterNode.modelPath = self.logic.defaultModelPath()

    def setParameterNode(self, inputParameterNode: Optional[KidneyTumorSegParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGuiState)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # widgets carry a "SlicerParameterName" dynamic property in the .ui
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGuiState)
            self._updateGuiState()

    # -- GUI state ---------------------------------------------------------

    def _updateGuiState(self, caller=None, event=None) -> None:
        p = self._parameterNode
        if p is None:
            return
        self._syncModelCombo(p.modelPath)
        self._updateSegmentButton()
        warning = self.logic.gpuMemoryWarning(p.device.value)
        self.ui.gpuWarningLabel.text = warning
        self.ui.gpuWarningLabel.visible = bool(warning)
        segmentation = p.outputSegmentation
        table = segmentation.GetNodeReference(REF_FINDINGS) if segmentation else None
        shown = self.ui.findingsTableView.mrmlTableNode()
        if (shown.GetID() if shown else None) != (table.GetID() if table else None):
            self.ui.findingsTableView.setMRMLTableNode(table)
        self.ui.editInSegmentEditorButton.enabled = segmentation is not None and self._run is None
        self._updateCandidateButtons()

    def _segmentBlocker(self) -> str:
        """Why Segment cannot run now (empty when it can)."""
        p = self._parameterNode
        if p is None or p.inputVolume is None:
            return _("Select an input CT volume.")
        problem = self.logic.modelProblem(p.modelPath)
        if problem:
            return problem
        return ""

    def _updateSegmentButton(self) -> None:
        running = self._run is not None
        for section in (self.ui.inputsCollapsibleButton, self.ui.outputsCollapsibleButton,
                        self.ui.advancedCollapsibleButton):
            section.enabled = not running
        if running:
            self.ui.segmentButton.text = _("Cancel")
            self.ui.segmentButton.toolTip = _("Stop the segmentation; the scene is left as it was.")
            self.ui.segmentButton.enabled = True
            return
        self.ui.segmentButton.text = _("Segment")
        blocker = self._segmentBlocker()
        self.ui.segmentButton.enabled = not blocker
        self.ui.segmentButton.toolTip = blocker or _("Segment the kidneys and kidney tumors in the input CT.")

    # -- models --------------------------------------------------------------

    def refreshModelList(self) -> None:
        combo = self.ui.modelComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for label, path in self.logic.availableModels():
            combo.addItem(label, path)
        combo.blockSignals(wasBlocked)
        if self._parameterNode:
            self._syncModelCombo(self._parameterNode.modelPath)

    def _syncModelCombo(self, modelPath: str) -> None:
        combo = self.ui.modelComboBox
        index = combo.findData(modelPath)
        if index < 0 and modelPath:
            combo.addItem(_("Other: {name}").format(name=Path(modelPath).name), modelPath)
            index = combo.count - 1
        if index != combo.currentIndex:
            wasBlocked = combo.blockSignals(True)
            combo.currentIndex = index
            combo.blockSignals(wasBlocked)

    def onModelSelected(self, index: int) -> None:
        if self._parameterNode and index >= 0:
            self._parameterNode.modelPath = self.ui.modelComboBox.itemData(index)

    def onImportModelFolder(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("Import model bundle folder"))
        if folder:
            self._importModel(folder)

    def onImportModelFile(self) -> None:
        path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), _("Import model bundle"), "",
                                              _("Model bundle (manifest.json *.zip)"))
        if path:
            self._importModel(path)

    def _importModel(self, source: str) -> None:
        with slicer.util.tryWithErrorDisplay(_("The model could not be imported."), waitCursor=True):
            target = self.logic.modelImportTarget(source)
            overwrite = False
            if target.exists():
                if not slicer.util.confirmOkCancelDisplay(
                        _("A model named '{name}' is already in your models folder. Replace it?").format(name=target.name)):
                    return
                overwrite = True
            path = self.logic.importModel(source, overwrite=overwrite)
            self.refreshModelList()
            self._parameterNode.modelPath = str(path)
            slicer.util.showStatusMessage(_("Model imported into {path}").format(path=path), 5000)

    # -- running -----------------------------------------------------------

    def onSegmentButton(self) -> None:
        if self._run is not None:
            self._cancelRun()
            return
        if not self.logic.ensureDependencies(askConfirmation=True):
            return
        p = self._parameterNode
        self.ui.progressBar.value = 0
        self.ui.progressBar.show()
        self.ui.statusLabel.text = _("Starting…")
        try:
            self._run = self.logic.startSegmentation(
                p.inputVolume, model=p.modelPath, device=p.device.value, quality=p.quality.value,
                candidateThreshold=p.candidateThreshold, keepComponents=p.keepComponents, roiNode=p.roiNode,
                outputSegmentation=p.outputSegmentation, show3D=p.show3D,
                progressCallback=self._onProgress, finishCallback=self._onFinished)
        except Exception as exc:
            self.ui.progressBar.hide()
            self.ui.statusLabel.text = ""
            logging.exception("KidneyTumorSeg could not start")
            slicer.util.errorDisplay(_("Segmentation could not start:\n{error}").format(error=exc))
            return
        self._updateGuiState()

    def _cancelRun(self) -> None:
        if self._run is not None:
            self.logic.cancel(self._run)

    def _onProgress(self, fraction: float, text: str) -> None:
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.statusLabel.text = text

    def _onFinished(self, run) -> None:
        self._run = None
        self.ui.progressBar.hide()
        if run.status == "cancelled":
            self.ui.statusLabel.text = _("Cancelled; the scene was not changed.")
        elif run.status == "failed":
            self.ui.statusLabel.text = _("Failed.")
            slicer.util.errorDisplay(_("Segmentation failed:\n{error}").format(error=run.error))
        else:
            self.ui.statusLabel.text = "\n".join(run.messages) or _("Done.")
            if self._parameterNode:
                self._parameterNode.outputSegmentation = run.segmentationNode
        self._updateGuiState()

    # -- results -----------------------------------------------------------

    def _selectedCandidate(self) -> Optional[Dict]:
        """The findings row of the selected tumor candidate, or None."""
        segmentation = self._parameterNode.outputSegmentation if self._parameterNode else None
        table = segmentation.GetNodeReference(REF_FINDINGS) if segmentation else None
        view = self.ui.findingsTableView
        if table is None or view.selectionModel() is None:
            return None
        indexes = view.selectionModel().selectedIndexes()
        if not indexes:
            return None
        # the view may be sorted: map back to the table's own row
        row = view.sortFilterProxyModel().mapToSource(indexes[0]).row()
        return self.logic.candidateOfRow(table, row)

    def _updateCandidateButtons(self, *args) -> None:
        candidate = self._selectedCandidate() if self._run is None else None
        self.ui.addCandidateButton.enabled = candidate is not None and not candidate["kept"]
        self.ui.removeCandidateButton.enabled = candidate is not None and candidate["kept"]

    def onChangeCandidate(self, keep: bool) -> None:
        candidate = self._selectedCandidate()
        if candidate is None:
            return
        with slicer.util.tryWithErrorDisplay(_("The tumor candidate could not be changed."), waitCursor=True):
            self.logic.setCandidateKept(self._parameterNode.outputSegmentation, candidate["id"], keep)
        self._updateCandidateButtons()

    def onShow3DToggled(self, checked: bool) -> None:
        segmentation = self._parameterNode.outputSegmentation if self._parameterNode else None
        if segmentation is not None and self._run is None:
            self.logic.showSegmentation3D(segmentation, checked)

    def onEditInSegmentEditor(self) -> None:
        segmentation = self._parameterNode.outputSegmentation
        volume = segmentation.GetNodeReference(REF_INPUT) or self._parameterNode.inputVolume
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.SegmentEditorWidget.editor
        editor.setSegmentationNode(segmentation)
        if hasattr(editor, "setSourceVolumeNode"):
            editor.setSourceVolumeNode(volume)
        else:  # Slicer before 5.2
            editor.setMasterVolumeNode(volume)


#
# KidneyTumorSegLogic
#


class SegmentationRun:
    """One background run: its settings, process, progress and outcome.

    ``status``: "running", "done", "failed" or "cancelled". Nothing is added to
    the scene before the process has finished successfully.
    """

    def __init__(self, volumeNode, options: Dict, workDir: Path, outputSegmentation=None, show3D=False):
        self.volumeNode = volumeNode
        self.options = options
        self.workDir = workDir
        self.outputSegmentation = outputSegmentation
        self.show3D = show3D
        self.process = None
        self.timer = None
        self.status = "running"
        self.error = ""
        self.fraction = 0.0
        self.stageText = ""
        self.messages: List[str] = []
        self.segmentationNode = None
        self.tableNode = None
        self.progressCallback: Optional[Callable[[float, str], None]] = None
        self.finishCallback: Optional[Callable[["SegmentationRun"], None]] = None


class KidneyTumorSegLogic(ScriptedLoadableModuleLogic):
    """Everything the module does, usable from scripts without the panel.

    Scripting: ``slicer.util.getModuleLogic("KidneyTumorSeg").segment(volumeNode)``
    returns ``(segmentationNode, tableNode)``.
    """

    POLL_INTERVAL_MS = 200
    MIN_GPU_MEMORY_GIB = 4.0  # the cascade's GPU target is 3 GB, plus the CUDA context

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._gpuWarnings: Dict[str, str] = {}

    def getParameterNode(self):
        return KidneyTumorSegParameterNode(super().getParameterNode())

    # -- dependencies ----------------------------------------------------------

    @staticmethod
    def missingRequirements() -> List[str]:
        """Requirements (torch included) that are absent or outside their version bounds."""
        return [r for r in (TORCH_REQUIREMENT,) + CORE_REQUIREMENTS if not _requirementSatisfied(r)]

    @staticmethod
    def ensureDependencies(askConfirmation: bool = True) -> bool:
        """Install missing packages after asking; False when the user declined or installation failed."""
        missing = KidneyTumorSegLogic.missingRequirements()
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
                    slicer.util.pip_install(list(pipMissing))
        except Exception as exc:
            logging.exception("KidneyTumorSeg: installing dependencies failed")
            slicer.util.errorDisplay(_installHelp(missing, exc), windowTitle=_("KidneyTumorSeg: install dependencies"))
            return False
        importlib.invalidate_caches()
        still = KidneyTumorSegLogic.missingRequirements()
        if still:
            slicer.util.errorDisplay(_installHelp(still, None), windowTitle=_("KidneyTumorSeg: install dependencies"))
            return False
        return True

    # -- models ------------------------------------------------------------------

    @staticmethod
    def defaultModelPath() -> str:
        from KidneyTumorSegLib.bundle import default_bundle_path

        return str(default_bundle_path())

    @staticmethod
    def userModelsFolder() -> Path:
        """``<Slicer user settings folder>/KidneyTumorSeg/models``: imported model bundles."""
        settingsDir = os.path.dirname(slicer.app.slicerUserSettingsFilePath)
        return Path(settingsDir) / "KidneyTumorSeg" / "models"

    def availableModels(self) -> List[Tuple[str, str]]:
        """(label, folder) of the shipped default model and every bundle in the user models folder."""
        default = self.defaultModelPath()
        label = _("Default model") if (Path(default) / "manifest.json").is_file() else _("Default model (not installed)")
        models = [(label, default)]
        folder = self.userModelsFolder()
        if folder.is_dir():
            for sub in sorted(folder.iterdir()):
                if (sub / "manifest.json").is_file():
                    models.append((sub.name, str(sub)))
        return models

    @staticmethod
    def modelProblem(modelPath: str) -> str:
        """Why ``modelPath`` cannot be used (empty when it looks usable; hashes are checked at run time)."""
        if not modelPath:
            return _("Select a model.")
        if not (Path(modelPath) / "manifest.json").is_file():
            if Path(modelPath) == Path(KidneyTumorSegLogic.defaultModelPath()):
                return _("No model: the default model is not installed. Import a model bundle with 'Import model…'.")
            return _("No model: {path} has no manifest.json. Import a model bundle with 'Import model…'.").format(path=modelPath)
        return ""

    def modelImportTarget(self, source: str) -> Path:
        """Where ``importModel(source)`` will put the bundle (its manifest's name)."""
        with _bundleSource(source) as folder:
            return self.userModelsFolder() / _safeFolderName(_manifestName(folder))

    def importModel(self, source: str, overwrite: bool = False) -> Path:
        """Verify a model bundle (every SHA-256) and copy it into the user models folder.

        ``source``: a bundle folder, its manifest.json, or a .zip of the folder.
        Returns the new folder. Raises the core's ``BundleError`` for a bad bundle and
        ``FileExistsError`` when a model of that name exists and ``overwrite`` is False.
        """
        from KidneyTumorSegLib.bundle import MANIFEST, load_bundle

        with _bundleSource(source) as folder:
            bundle = load_bundle(folder)
            target = self.userModelsFolder() / _safeFolderName(_manifestName(folder))
            if target.exists() and not overwrite:
                raise FileExistsError(_("A model named '{name}' is already imported: {path}").format(
                    name=target.name, path=target))
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.import-", dir=target.parent))
            try:
                for name in [MANIFEST] + sorted(bundle.files):
                    (staging / name).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(folder / name, staging / name)
                load_bundle(staging)  # the copy is checked too before it replaces anything
                if target.exists():
                    shutil.rmtree(target)
                os.replace(staging, target)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        return target

    # -- device ------------------------------------------------------------------

    def gpuMemoryWarning(self, device: str) -> str:
        """A warning when ``device`` ("auto", "cpu", "cuda") would use a GPU that is missing or too small."""
        if device == Device.CPU.value:
            return ""
        if importlib.util.find_spec("torch") is None:
            return ""  # torch is installed on the first run; nothing to judge before
        if device not in self._gpuWarnings:
            self._gpuWarnings[device] = self._computeGpuWarning(device)
        return self._gpuWarnings[device]

    def _computeGpuWarning(self, device: str) -> str:
        try:
            import torch

            if not torch.cuda.is_available():
                if device == Device.GPU.value:
                    return _("No CUDA GPU is available to PyTorch: choose Auto or CPU.")
                return ""
            props = torch.cuda.get_device_properties(0)
        except Exception as exc:  # a broken driver must not break the panel
            logging.warning("KidneyTumorSeg: GPU query failed: %s", exc)
            return ""
        gib = props.total_memory / 2**30
        if gib < self.MIN_GPU_MEMORY_GIB:
            return _("The GPU ({name}) has {gib:.1f} GiB of memory; at least {need:.0f} GiB are needed. "
                     "Choose CPU (slower) to avoid running out of memory.").format(
                         name=props.name, gib=gib, need=self.MIN_GPU_MEMORY_GIB)
        return ""

    # -- running -----------------------------------------------------------------

    def segment(self, volumeNode, model=None, device="auto", quality="fast", candidateThreshold=0.8,
                keepComponents=2, roiNode=None, outputSegmentation=None, show3D=False):
        """Segment ``volumeNode`` and wait for the result (for scripts; the panel runs asynchronously).

        ``model``: bundle folder (None: the shipped default); ``device``: "auto", "cpu" or "cuda";
        ``quality``: "fast" (no test-time augmentation) or "full" (12); ``roiNode``: optional
        vtkMRMLMarkupsROINode that replaces stage 1; ``outputSegmentation``: node to overwrite
        (None: a new one). Returns ``(segmentationNode, tableNode)``; raises RuntimeError with
        the core's message when the run fails (the scene is then unchanged).
        """
        from KidneyTumorSegLib.background import run_segmentation

        run = self._prepareRun(volumeNode, model, device, quality, candidateThreshold, keepComponents, roiNode,
                               outputSegmentation, show3D)
        try:
            outputs = run_segmentation(progress=_logProgress, **run.options)
            self._loadResults(run, outputs)
        finally:
            shutil.rmtree(run.workDir, ignore_errors=True)
        return run.segmentationNode, run.tableNode

    def startSegmentation(self, volumeNode, model=None, device="auto", quality="fast", candidateThreshold=0.8,
                          keepComponents=2, roiNode=None, outputSegmentation=None, show3D=False,
                          progressCallback=None, finishCallback=None) -> SegmentationRun:
        """Start a background run and return at once; arguments as :meth:`segment`.

        ``progressCallback(fraction, text)`` gets the overall fraction (0..1) and the stage's
        name; ``finishCallback(run)`` is called once with ``run.status`` "done", "failed"
        (``run.error`` holds the core's message) or "cancelled".
        """
        from KidneyTumorSegLib.background import SegmentationProcess

        run = self._prepareRun(volumeNode, model, device, quality, candidateThreshold, keepComponents, roiNode,
                               outputSegmentation, show3D)
        run.progressCallback = progressCallback
        run.finishCallback = finishCallback
        try:
            run.process = SegmentationProcess(**run.options)
            run.process.start()
        except Exception:
            shutil.rmtree(run.workDir, ignore_errors=True)
            raise
        run.timer = qt.QTimer()
        run.timer.setInterval(self.POLL_INTERVAL_MS)
        run.timer.connect("timeout()", lambda: self._poll(run))
        run.timer.start()
        return run

    def cancel(self, run: SegmentationRun) -> None:
        """Stop ``run``; the scene is left exactly as it was before it started."""
        if run.status != "running":
            return
        if run.timer is not None:
            run.timer.stop()
        if run.process is not None:
            run.process.cancel()
        self._finish(run, "cancelled")

    def _prepareRun(self, volumeNode, model, device, quality, candidateThreshold, keepComponents, roiNode,
                    outputSegmentation, show3D) -> SegmentationRun:
        """Export the input and collect the core's arguments; adds nothing to the scene."""
        if volumeNode is None:
            raise ValueError(_("No input volume."))
        if not self.ensureDependencies(askConfirmation=True):
            raise RuntimeError(_("KidneyTumorSeg cannot run: these Python packages are missing: {packages}").format(
                packages=", ".join(self.missingRequirements())))
        device = device.value if isinstance(device, Device) else str(device)
        quality = quality.value if isinstance(quality, Quality) else str(quality)
        if quality not in ("fast", "full"):
            raise ValueError(_("quality must be 'fast' or 'full', not {value!r}").format(value=quality))
        modelPath = str(model) if model else self.defaultModelPath()
        problem = self.modelProblem(modelPath)
        if problem:
            raise RuntimeError(problem)
        workDir = Path(tempfile.mkdtemp(prefix="KidneyTumorSeg-", dir=slicer.app.temporaryPath))
        try:
            inputPath = workDir / "input.nrrd"
            self._exportVolume(volumeNode, inputPath)
            options = dict(
                input_path=str(inputPath), output_dir=str(workDir / "out"), model=modelPath, device=device,
                tta=12 if quality == "full" else 1, candidate_threshold=float(candidateThreshold),
                keep_components=int(keepComponents), roi=self._roiOf(roiNode, volumeNode), save_candidates=True,
                python=_pythonSlicerExecutable(), env=_processEnvironment(),
            )
        except Exception:
            shutil.rmtree(workDir, ignore_errors=True)
            raise
        return SegmentationRun(volumeNode, options, workDir, outputSegmentation, show3D)

    def _poll(self, run: SegmentationRun) -> None:
        if run.status != "running":
            return
        try:
            self._pollOnce(run)
        except Exception as exc:  # an error in a timer slot must end the run, not repeat every tick
            logging.exception("KidneyTumorSeg: the run failed")
            run.timer.stop()
            if run.process is not None and run.process.running:
                run.process.cancel()
            self._finish(run, "failed", str(exc))

    def _pollOnce(self, run: SegmentationRun) -> None:
        from KidneyTumorSegLib.events import STAGE_TITLES

        for event in run.process.poll():
            if event.get("event") != "progress":
                continue
            run.fraction = float(event.get("fraction", run.fraction))
            title = STAGE_TITLES.get(event.get("stage", ""), event.get("stage", ""))
            message = event.get("message") or ""
            run.stageText = title if not message or message == title else f"{title}: {message}"
            if run.progressCallback:
                run.progressCallback(run.fraction, run.stageText)
        if run.process.running:
            return
        run.timer.stop()
        outputs = run.process.outputs
        if run.process.returncode != 0 or not outputs:
            self._finish(run, "failed", run.process.error_message() or
                         _("the segmentation process stopped with exit status {code}").format(code=run.process.returncode))
            return
        self._loadResults(run, outputs)
        self._finish(run, "done")

    def _finish(self, run: SegmentationRun, status: str, error: str = "") -> None:
        run.status = status
        run.error = error
        shutil.rmtree(run.workDir, ignore_errors=True)
        if run.finishCallback:
            run.finishCallback(run)

    # -- input -------------------------------------------------------------------

    @staticmethod
    def _exportVolume(volumeNode, path: Path) -> None:
        """Write the volume's voxels and geometry (its own frame, RAS to LPS) as NRRD, leaving the node untouched."""
        import SimpleITK as sitk
        from KidneyTumorSegLib.slicer_geometry import volume_from_slicer
        from KidneyTumorSegLib.validate import validate_ct
        from KidneyTumorSegLib.volume_io import volume_to_sitk

        ijkToRas = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(ijkToRas)
        volume = volume_from_slicer(slicer.util.arrayFromVolume(volumeNode), slicer.util.arrayFromVTKMatrix(ijkToRas),
                                    meta={"source": volumeNode.GetName()})
        for warning in validate_ct(volume):  # raises InputError with the core's message for unusable input
            logging.warning("KidneyTumorSeg: %s", warning)
        sitk.WriteImage(volume_to_sitk(volume), str(path), False)

    @staticmethod
    def _roiOf(roiNode, volumeNode):
        """The ROI box in the input volume's own frame (the frame the core segments in), or None."""
        if roiNode is None:
            return None
        import numpy as np
        from KidneyTumorSegLib.slicer_geometry import roi_from_slicer

        objectToWorld = vtk.vtkMatrix4x4()
        roiNode.GetObjectToWorldMatrix(objectToWorld)
        matrix = slicer.util.arrayFromVTKMatrix(objectToWorld)
        transform = volumeNode.GetParentTransformNode()
        if transform is not None:
            if not transform.IsTransformToWorldLinear():
                raise ValueError(_("The input volume is under a non-linear transform: harden it first."))
            worldToVolume = vtk.vtkMatrix4x4()
            transform.GetMatrixTransformFromWorld(worldToVolume)
            matrix = slicer.util.arrayFromVTKMatrix(worldToVolume) @ matrix
        scale = np.linalg.norm(matrix[:3, :3], axis=0)  # non-zero: a transform of an ROI is invertible
        axes = matrix[:3, :3] / scale
        return roi_from_slicer(matrix[:3, 3], np.asarray(roiNode.GetSize()) * scale, axes)

    # -- results -----------------------------------------------------------------

    def _loadResults(self, run: SegmentationRun, outputs: Dict[str, str]) -> None:
        """Bring the finished run's files into the scene (the only place a run changes the scene)."""
        report = json.loads(Path(outputs["report"]).read_text(encoding="utf-8"))
        volumeNode = run.volumeNode
        if volumeNode.GetScene() is None:
            raise RuntimeError(_("The input volume was removed from the scene during the run."))
        segmentation = run.outputSegmentation
        if segmentation is not None and segmentation.GetScene() is None:
            segmentation = None  # removed during the run: make a new one
        loaded = candidates = None
        try:
            loaded = slicer.util.loadSegmentation(str(outputs["segmentation"]))
            candidates = slicer.util.loadLabelVolume(str(outputs["candidates"]), {
                "name": slicer.mrmlScene.GenerateUniqueName(f"{volumeNode.GetName()} tumor candidates"), "show": False})
        except Exception:
            _removeNodeWithDependents(loaded)
            _removeNodeWithDependents(candidates)
            raise
        if segmentation is None:
            segmentation = slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLSegmentationNode", slicer.mrmlScene.GenerateUniqueName(f"{volumeNode.GetName()} kidneys"))
            segmentation.CreateDefaultDisplayNodes()
        try:
            _replaceSegments(segmentation, loaded)
        finally:
            _removeNodeWithDependents(loaded)
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        segmentation.SetNodeReferenceID(REF_INPUT, volumeNode.GetID())
        segmentation.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
        candidates.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
        _removeNodeWithDependents(segmentation.GetNodeReference(REF_CANDIDATES))
        segmentation.SetNodeReferenceID(REF_CANDIDATES, candidates.GetID())

        table = segmentation.GetNodeReference(REF_FINDINGS)
        if table is None:
            table = slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLTableNode", slicer.mrmlScene.GenerateUniqueName(f"{volumeNode.GetName()} findings"))
            segmentation.SetNodeReferenceID(REF_FINDINGS, table.GetID())
        _writeFindings(table, report)

        for node in (segmentation, table, candidates):
            _placeBesides(node, volumeNode)
        self.showSegmentation(segmentation, volumeNode, run.show3D)
        run.segmentationNode = segmentation
        run.tableNode = table
        run.messages = list(report.get("messages", []))

    @staticmethod
    def showSegmentation(segmentation, volumeNode, show3D: bool = False) -> None:
        """Show the segmentation over ``volumeNode`` in the slice views, and in 3D when asked."""
        slicer.util.setSliceViewerLayers(background=volumeNode)
        display = segmentation.GetDisplayNode()
        if display is not None:
            display.SetVisibility(True)
            display.SetVisibility2D(True)
        KidneyTumorSegLogic.showSegmentation3D(segmentation, show3D)

    @staticmethod
    def showSegmentation3D(segmentation, show3D: bool) -> None:
        if show3D:
            segmentation.CreateClosedSurfaceRepresentation()
        display = segmentation.GetDisplayNode()
        if display is not None:
            display.SetVisibility3D(bool(show3D))

    @staticmethod
    def candidateOfRow(table, row: int) -> Optional[Dict]:
        """``{"id", "kept"}`` of the tumor candidate in findings-table ``row``, or None for another row."""
        report = json.loads(table.GetAttribute(ATTR_REPORT) or "{}")
        from KidneyTumorSegLib.findings_table import findings_rows

        rows = findings_rows(report)
        if not 0 <= row < len(rows):
            return None
        candidateId = rows[row].get("candidate_id")
        if candidateId in (None, ""):
            return None
        for candidate in report.get("tumor_candidates", []):
            if candidate["id"] == int(candidateId):
                return {"id": int(candidate["id"]), "kept": bool(candidate["kept"])}
        return None

    def setCandidateKept(self, segmentation, candidateId: int, keep: bool) -> None:
        """Add (``keep``) or remove tumor candidate ``candidateId`` and update the findings table.

        Added: the candidate's voxels (from the candidate map) become Kidney tumor. Removed:
        they become the nearest kidney segment, since the kidney stage segments kidney and
        tumor together as one foreground.
        """
        import numpy as np
        from KidneyTumorSegLib.findings_table import kept_ids_after

        table = segmentation.GetNodeReference(REF_FINDINGS)
        candidates = segmentation.GetNodeReference(REF_CANDIDATES)
        if table is None or candidates is None:
            raise ValueError(_("This segmentation has no KidneyTumorSeg findings or candidate map."))
        report = json.loads(table.GetAttribute(ATTR_REPORT) or "{}")
        kept = kept_ids_after(report, add=[candidateId] if keep else [], remove=[] if keep else [candidateId])
        mask = slicer.util.arrayFromVolume(candidates) == int(candidateId)
        if not mask.any():
            raise ValueError(_("Tumor candidate {id} is not in the candidate map.").format(id=candidateId))
        segmentIds = _segmentIds(segmentation)
        if SEGMENT_TUMOR not in segmentIds:
            from KidneyTumorSegLib.terminology import KIDNEY_TUMOR

            segmentation.GetSegmentation().AddEmptySegment(KIDNEY_TUMOR.segment_id, KIDNEY_TUMOR.name, KIDNEY_TUMOR.color)
            segmentIds = _segmentIds(segmentation)
        arrays = {sid: slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, sid, candidates).astype(bool)
                  for sid in segmentIds}
        tumorId = segmentIds[SEGMENT_TUMOR]
        kidneyIds = [segmentIds[k] for k in (SEGMENT_KIDNEY_LEFT, SEGMENT_KIDNEY_RIGHT) if k in segmentIds]
        spacingKji = tuple(candidates.GetSpacing())[::-1]
        updates = _candidateUpdates(arrays, mask, keep, tumorId, kidneyIds, spacingKji)
        # shrink segments before growing others, so no voxel is in two segments at any step
        for sid in sorted(updates, key=lambda s: int(updates[s].sum()) - int(arrays[s].sum())):
            slicer.util.updateSegmentBinaryLabelmapFromArray(updates[sid].astype(np.uint8), segmentation, sid, candidates)
        _writeFindings(table, _reportWithKept(report, kept, candidateId, keep))


def _requirementSatisfied(requirement: str) -> bool:
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
        raise RuntimeError(_("The PyTorch extension is not installed: install 'PyTorch' from the Extensions "
                             "Manager, restart Slicer, and try again."))
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


def _pythonSlicerExecutable() -> str:
    """PythonSlicer, the launcher of Slicer's own Python (same packages, no GUI)."""
    exe = shutil.which("PythonSlicer")
    if exe:
        return exe
    name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
    candidate = os.path.join(slicer.app.slicerHome, "bin", name)
    if os.path.isfile(candidate):
        return candidate
    raise RuntimeError(_("PythonSlicer was not found next to Slicer ({path}).").format(path=candidate))


def _processEnvironment() -> Dict[str, str]:
    """Environment of the background process: this module's folder first on PYTHONPATH, for KidneyTumorSegLib."""
    env = dict(os.environ)
    moduleDir = os.path.dirname(os.path.abspath(__file__))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (moduleDir, env.get("PYTHONPATH", "")) if p)
    return env


def _logProgress(event: Dict) -> None:
    """Progress of a blocking run goes to the log (events as in KidneyTumorSegLib.events)."""
    if event.get("event") == "progress" and event.get("stage_fraction") == 0.0:
        logging.info("KidneyTumorSeg: %3.0f%% %s", 100 * float(event.get("fraction", 0.0)), event.get("message", ""))


class _bundleSource:
    """Context manager: the bundle folder behind ``source`` (folder, manifest.json or .zip, extracted to a temp dir)."""

    def __init__(self, source: str):
        self.source = Path(source)
        self._tmp = None

    def __enter__(self) -> Path:
        src = self.source
        if src.is_dir():
            return src
        if src.name == "manifest.json":
            return src.parent
        if src.suffix.lower() == ".zip":
            self._tmp = Path(tempfile.mkdtemp(prefix="KidneyTumorSeg-import-", dir=slicer.app.temporaryPath))
            shutil.unpack_archive(str(src), str(self._tmp))
            found = sorted(p.parent for p in self._tmp.rglob("manifest.json"))
            if len(found) != 1:
                raise ValueError(_("{path}: expected one model bundle (manifest.json) in the archive, found {n}").format(
                    path=src, n=len(found)))
            return found[0]
        raise ValueError(_("{path}: not a model bundle folder, manifest.json or .zip archive").format(path=src))

    def __exit__(self, *exc) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)


def _manifestName(folder: Path) -> str:
    try:
        name = json.loads((folder / "manifest.json").read_text(encoding="utf-8")).get("name")
    except (OSError, ValueError, AttributeError):
        name = None
    return str(name or folder.name)


def _safeFolderName(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("._")
    return cleaned or "model"


def _segmentIds(segmentation) -> Dict[str, str]:
    """Segment ids by the core's ids (falling back to the segment names for renamed ids)."""
    from KidneyTumorSegLib.terminology import SEG_NRRD_SEGMENTS

    seg = segmentation.GetSegmentation()
    ids = {}
    for definition in SEG_NRRD_SEGMENTS.values():
        if seg.GetSegment(definition.segment_id) is not None:
            ids[definition.segment_id] = definition.segment_id
        else:
            byName = seg.GetSegmentIdBySegmentName(definition.name)
            if byName:
                ids[definition.segment_id] = byName
    return ids


def _candidateUpdates(arrays: Dict, mask, keep: bool, tumorId: str, kidneyIds: Sequence[str],
                      spacingKji: Sequence[float]) -> Dict:
    """New binary arrays [k, j, i] of the segments that change when candidate ``mask`` is added or removed.

    Added: the mask joins the tumor and leaves the kidneys. Removed: it leaves the tumor and
    joins the nearest kidney (``spacingKji``: voxel size in mm, array order).
    """
    if keep:
        updates = {k: arrays[k] & ~mask for k in kidneyIds}
        updates[tumorId] = arrays[tumorId] | mask
    else:
        updates = _assignToNearestKidney(mask, {k: arrays[k] for k in kidneyIds}, spacingKji)
        updates[tumorId] = arrays[tumorId] & ~mask
    return updates


def _reportWithKept(report: Dict, kept, candidateId: int, keep: bool) -> Dict:
    """``report`` with candidates ``kept`` kept (and the rest rejected), totals updated, the edit recorded."""
    report = json.loads(json.dumps(report))
    for candidate in report.get("tumor_candidates", []):
        candidate["kept"] = int(candidate["id"]) in kept
    keptCandidates = [c for c in report.get("tumor_candidates", []) if c["kept"]]
    report["kept_tumors"] = len(keptCandidates)
    report["total_tumor_volume_ml"] = round(sum(c["volume_ml"] for c in keptCandidates), 3)
    report.setdefault("manual_changes", []).append({"candidate": int(candidateId), "kept": bool(keep)})
    return report


def _assignToNearestKidney(mask, kidneys: Dict, spacingKji: Sequence[float], margin: int = 16) -> Dict:
    """Kidney arrays with every ``mask`` voxel added to the nearest kidney segment (array [k, j, i], spacing mm).

    The distance transform runs on the mask's box plus ``margin`` voxels (a whole CT would need
    gigabytes for the nearest-voxel indices), and on the whole array only if no kidney is that near.
    """
    import numpy as np
    from scipy import ndimage

    if not kidneys:
        return {}
    order = list(kidneys)
    labels = np.zeros(mask.shape, np.uint8)
    for n, sid in enumerate(order, start=1):
        labels[kidneys[sid] & ~mask] = n
    if not labels.any():
        return {order[0]: kidneys[order[0]] | mask}
    where = np.nonzero(mask)
    box = tuple(slice(max(int(w.min()) - margin, 0), int(w.max()) + margin + 1) for w in where)
    if not labels[box].any():
        box = tuple(slice(0, n) for n in mask.shape)
    sub = labels[box]
    nearest = ndimage.distance_transform_edt(sub == 0, sampling=spacingKji, return_distances=False, return_indices=True)
    nearestLabel = np.zeros(mask.shape, np.uint8)
    nearestLabel[box] = sub[tuple(nearest)]
    return {sid: kidneys[sid] | (mask & (nearestLabel == n)) for n, sid in enumerate(order, start=1)}


def _replaceSegments(target, source) -> None:
    """Make ``target``'s segments those of ``source`` (ids, names, colours and terminology kept)."""
    segmentation = target.GetSegmentation()
    wasModifying = target.StartModify()
    segmentation.RemoveAllSegments()
    sourceSegmentation = source.GetSegmentation()
    for index in range(sourceSegmentation.GetNumberOfSegments()):
        segmentation.CopySegmentFromSegmentation(sourceSegmentation, sourceSegmentation.GetNthSegmentID(index))
    target.EndModify(wasModifying)


def _removeNodeWithDependents(node) -> None:
    """Remove ``node`` with its display and storage nodes (no-op for None)."""
    if node is None or node.GetScene() is None:
        return
    dependents = []
    if hasattr(node, "GetNumberOfDisplayNodes"):
        dependents += [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    if hasattr(node, "GetStorageNode"):
        dependents.append(node.GetStorageNode())
    slicer.mrmlScene.RemoveNode(node)
    for dependent in dependents:
        if dependent is not None and dependent.GetScene() is not None:
            slicer.mrmlScene.RemoveNode(dependent)


def _placeBesides(node, volumeNode) -> None:
    """Put ``node`` under the input volume's parent (its study) in the subject hierarchy."""
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    volumeItem = sh.GetItemByDataNode(volumeNode)
    item = sh.GetItemByDataNode(node)
    if volumeItem and item:
        sh.SetItemParent(item, sh.GetItemParent(volumeItem))


def _writeFindings(table, report: Dict) -> None:
    """Fill ``table`` with the core's findings rows and keep the report with it."""
    from KidneyTumorSegLib.findings_table import TABLE_COLUMNS, findings_rows

    rows = findings_rows(report)
    vtkTable = vtk.vtkTable()
    for name, kind in TABLE_COLUMNS:
        values = [row.get(name) for row in rows]
        # numbers stay numeric where every row has one; a column with gaps (kidney rows have no
        # diameter or probability) is text, so the gaps show empty rather than "nan"
        column = _vtkColumn(kind if all(v is not None for v in values) else "string")
        column.SetName(name)
        for value in values:
            _appendValue(column, value)
        vtkTable.AddColumn(column)
    wasModifying = table.StartModify()
    table.SetAndObserveTable(vtkTable)
    table.SetAttribute(ATTR_REPORT, json.dumps(report))
    table.SetLocked(True)
    table.EndModify(wasModifying)


def _vtkColumn(kind: str):
    """A VTK array for a findings column of type "int", "float" or "string"."""
    if kind == "int":
        return vtk.vtkIntArray()
    if kind == "float":
        return vtk.vtkDoubleArray()
    return vtk.vtkStringArray()


def _appendValue(column, value) -> None:
    if isinstance(column, vtk.vtkStringArray):
        column.InsertNextValue("" if value is None else str(value))
    elif isinstance(column, vtk.vtkIntArray):
        column.InsertNextValue(0 if value is None else int(value))
    else:
        column.InsertNextValue(float("nan") if value is None else float(value))


#
# KidneyTumorSegTest
#


class KidneyTumorSegTest(ScriptedLoadableModuleTest):
    """Runs the real pipeline on the sample phantom with the shipped default model."""

    KIDNEY_DICE_MIN = 0.9
    TUMOR_DICE_MIN = 0.7

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SegmentPhantom()
        self.setUp()
        self.test_CancelLeavesSceneUnchanged()

    def _requireDefaultModel(self):
        from KidneyTumorSegLib.bundle import default_bundle_path

        path = default_bundle_path()
        self.assertTrue((path / "manifest.json").is_file(),
                        f"The default model is missing: {path} has no manifest.json. This test trains nothing; "
                        "train and export the default model (see README), then run it again.")

    def _predictedLabel(self, segmentation, volume):
        """KiTS label array [k, j, i] on ``volume``'s grid: 1 kidney, 2 tumor."""
        import numpy as np

        ids = _segmentIds(segmentation)
        label = None
        for key, value in ((SEGMENT_KIDNEY_LEFT, 1), (SEGMENT_KIDNEY_RIGHT, 1), (SEGMENT_TUMOR, 2)):
            self.assertIn(key, ids, f"segment {key} is missing")
            arr = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, ids[key], volume)
            label = np.zeros(arr.shape, np.uint8) if label is None else label
            label[arr > 0] = value
        return label

    def _sceneSnapshot(self):
        nodes = slicer.mrmlScene.GetNodes()
        return sorted((n.GetID(), n.GetClassName(), n.GetName() or "") for n in
                      (nodes.GetItemAsObject(i) for i in range(nodes.GetNumberOfItems())))

    def test_SegmentPhantom(self):
        self.delayDisplay("Segmenting the sample phantom")
        self.assertTrue(KidneyTumorSegLogic.ensureDependencies(askConfirmation=False))
        self._requireDefaultModel()
        from KidneyTumorSegLib.metrics import dice
        from KidneyTumorSegLib.volume_io import read_label

        volume = loadPhantomSample()
        reference = read_label(str(phantomSamplePaths()[1])).array
        logic = KidneyTumorSegLogic()
        segmentation, table = logic.segment(volume)

        names = {segmentation.GetSegmentation().GetNthSegment(i).GetName()
                 for i in range(segmentation.GetSegmentation().GetNumberOfSegments())}
        self.assertEqual(names, {"Kidney left", "Kidney right", "Kidney tumor"})
        self.assertGreater(table.GetNumberOfRows(), 0)
        self.assertIs(segmentation.GetNodeReference(REF_INPUT), volume)
        predicted = self._predictedLabel(segmentation, volume)
        self.assertEqual(predicted.shape, reference.shape)
        kidneyDice = dice(predicted > 0, reference > 0)
        tumorDice = dice(predicted > 1, reference > 1)
        self.delayDisplay(f"Kidney Dice {kidneyDice:.3f}, tumor Dice {tumorDice:.3f}")
        self.assertGreaterEqual(kidneyDice, self.KIDNEY_DICE_MIN)
        self.assertGreaterEqual(tumorDice, self.TUMOR_DICE_MIN)

        # a second run into the same node gives the same result and adds no nodes
        before = self._sceneSnapshot()
        again, againTable = logic.segment(volume, outputSegmentation=segmentation)
        self.assertIs(again, segmentation)
        self.assertIs(againTable, table)
        self.assertTrue((self._predictedLabel(again, volume) == predicted).all())
        self.assertEqual(len(self._sceneSnapshot()), len(before))
        self.delayDisplay("Test passed")

    def test_CancelLeavesSceneUnchanged(self):
        self.delayDisplay("Cancelling a run")
        self.assertTrue(KidneyTumorSegLogic.ensureDependencies(askConfirmation=False))
        self._requireDefaultModel()
        volume = loadPhantomSample()
        before = self._sceneSnapshot()
        finished = []
        logic = KidneyTumorSegLogic()
        run = logic.startSegmentation(volume, finishCallback=finished.append)
        deadline = time.time() + 120
        while run.fraction <= 0 and run.status == "running" and time.time() < deadline:
            slicer.app.processEvents()
            time.sleep(0.05)
        self.assertEqual(run.status, "running", run.error)
        logic.cancel(run)
        slicer.app.processEvents()
        self.assertEqual(run.status, "cancelled")
        self.assertEqual(finished, [run])
        self.assertFalse(run.workDir.exists())
        self.assertEqual(self._sceneSnapshot(), before)
        self.delayDisplay("Test passed")

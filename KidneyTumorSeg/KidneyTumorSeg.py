"""3D Slicer module: kidney and kidney-tumor segmentation in abdominal CT.

A thin adapter over the Slicer-independent core in ``KidneyTumorSegLib``: the
input volume is exported to a temporary NRRD, the core's command line runs in a
separate PythonSlicer process (progress is read from its event stream, and it
can be cancelled), and the results are loaded into the scene only once the run
has finished. Order follows Slicer's scripted-module template: module,
sample data, parameter node, widget, logic, test. The Slicer-side helpers
(dependencies, models, sample data, runs, results, candidate edits) are in
``KidneyTumorSegSlicer``.
"""
import enum
import logging
import shutil
import time
from typing import Annotated, Dict, Optional

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

from KidneyTumorSegLib.presets import Quality, TumorGrowth  # the panel's quality and tumor growth choices
from KidneyTumorSegSlicer import candidates, dependencies, dicomexport, gpu, labelmaps, models, panel, results, \
    runs, runsettings, sampledata
from KidneyTumorSegSlicer.nodes import REF_FINDINGS, REF_INPUT, SEGMENT_KIDNEY_LEFT, SEGMENT_KIDNEY_RIGHT, \
    SEGMENT_TUMOR, segmentIds
from KidneyTumorSegSlicer.runs import SegmentationRun

# module-level API of earlier versions, for scripts
ensurePhantomSample, loadPhantomSample, phantomSamplePaths = (
    sampledata.ensurePhantomSample, sampledata.loadPhantomSample, sampledata.phantomSamplePaths)


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
# Sample data: a synthetic phantom CT made locally by the core (KidneyTumorSegSlicer.sampledata)
#


def registerSampleData():
    """Add the phantom to the Sample Data module (generated into the cache on first request)."""
    sampledata.registerSampleData()


#
# KidneyTumorSegParameterNode
#


class Device(enum.Enum):
    AUTO = "auto"
    CPU = "cpu"
    GPU = "cuda"

    def label(self):
        return {"AUTO": _("Auto"), "CPU": _("CPU"), "GPU": _("GPU (CUDA)")}[self.name]


@parameterNodeWrapper
class KidneyTumorSegParameterNode:
    """The module's settings, saved with the scene.

    inputVolume - CT to segment.
    modelPath - folder of the model bundle (the shipped default or an imported one).
    device - where the networks run.
    quality - fast (one pass), balanced (4 test-time flips) or full (12 test-time augmentations).
    outputSegmentation - segmentation to overwrite; none creates a new one.
    show3D - also show the result as surfaces in 3D.
    candidateThreshold - a tumor candidate is kept from this mean probability (starts at the model's value).
    keepComponents - kidneys kept (largest components), 1 or 2 (starts at the model's value).
    tumorGrowth - tumor growth passes past the kidney stage's outline: the model's setting, off, or 1-3.
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
    tumorGrowth: TumorGrowth = TumorGrowth.MODEL
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
        self._lastInputID = None
        self._modelPathShown = None  # the model whose own values the model-value widgets were set to
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
        panel.addImportMenu(self.ui.importModelButton, self.onImportModelFolder, self.onImportModelFile)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        # a qMRMLTableView without a table view node empties itself on batch processing (scene import,
        # DICOM loading): show the findings table again afterwards
        for event in (slicer.mrmlScene.EndImportEvent, slicer.mrmlScene.EndBatchProcessEvent):
            self.addObserver(slicer.mrmlScene, event, self.onSceneEndBatch)

        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelSelected)
        self.ui.addCandidateButton.connect("clicked(bool)", lambda: self.onChangeCandidate(keep=True))
        self.ui.removeCandidateButton.connect("clicked(bool)", lambda: self.onChangeCandidate(keep=False))
        self.ui.editInSegmentEditorButton.connect("clicked(bool)", self.onEditInSegmentEditor)
        self.ui.exportDicomSegButton.connect("clicked(bool)", lambda: panel.exportDicomSegDialog(self._parameterNode))
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

    def onSceneEndBatch(self, caller, event) -> None:
        self.ui.findingsTableView.setMRMLTableNode(None)  # so that _updateGuiState sets it anew
        self._updateGuiState()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode
        if not self._parameterNode.modelPath:
            self._parameterNode.modelPath = self.logic.preferredModelPath()

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
        forgot, self._lastInputID = panel.forgetOutputOfOtherInput(p, self._lastInputID)
        if forgot:
            return  # the parameter node changed: this runs again from its Modified event
        self._showModelValues(p)
        panel.syncModelCombo(self.ui.modelComboBox, p.modelPath)
        blocker = _("Select an input CT volume.") if p.inputVolume is None else self.logic.modelProblem(p.modelPath)
        panel.showRunState(self.ui, self._run is not None, blocker)
        warning = self.logic.gpuMemoryWarning(p.device.value)
        self.ui.gpuWarningLabel.text = warning
        self.ui.gpuWarningLabel.visible = bool(warning)
        panel.showFindingsTable(self.ui.findingsTableView, p.outputSegmentation)
        done = p.outputSegmentation is not None and self._run is None
        self.ui.editInSegmentEditorButton.enabled = self.ui.exportDicomSegButton.enabled = done
        self._updateCandidateButtons()

    def _showModelValues(self, p) -> None:
        """When another model is chosen, start the candidate threshold and kidney count at its own values:
        a run passes on only the values the user then changes (runsettings.panelOverrides)."""
        if p.modelPath == self._modelPathShown:
            return
        self._modelPathShown = p.modelPath
        for name, value in runsettings.panelValues(self.logic.modelValues(p.modelPath)).items():
            setattr(p, name, value)

    # -- models --------------------------------------------------------------

    def refreshModelList(self) -> None:
        panel.fillModelCombo(self.ui.modelComboBox, self.logic.availableModels())
        if self._parameterNode:
            panel.syncModelCombo(self.ui.modelComboBox, self._parameterNode.modelPath)

    def onModelSelected(self, index: int) -> None:
        if self._parameterNode and index >= 0:
            self._parameterNode.modelPath = self.ui.modelComboBox.itemData(index)

    def onImportModelFolder(self) -> None:
        self._importModel(panel.askModelSource(folder=True))

    def onImportModelFile(self) -> None:
        self._importModel(panel.askModelSource(folder=False))

    def _importModel(self, source: str) -> None:
        path = panel.importModel(self.logic, source)
        if path is not None:
            self.refreshModelList()
            self._parameterNode.modelPath = str(path)

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
        overrides = runsettings.panelOverrides(p.candidateThreshold, p.keepComponents,
                                               self.logic.modelValues(p.modelPath))
        try:
            self._run = self.logic.startSegmentation(
                p.inputVolume, model=p.modelPath, device=p.device, quality=p.quality, roiNode=p.roiNode,
                outputSegmentation=p.outputSegmentation, show3D=p.show3D, tumorGrowth=p.tumorGrowth,
                progressCallback=self._onProgress, finishCallback=self._onFinished, **overrides)
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
        self.ui.statusLabel.text = runs.statusText(run)
        if run.status == "failed":
            slicer.util.errorDisplay(_("Segmentation failed:\n{error}").format(error=run.error))
        elif run.status == "done" and self._parameterNode:
            self._parameterNode.outputSegmentation = run.segmentationNode
        self._updateGuiState()

    # -- results -----------------------------------------------------------

    def _selectedCandidate(self) -> Optional[Dict]:
        """The findings row of the selected tumor candidate, or None."""
        segmentation = self._parameterNode.outputSegmentation if self._parameterNode else None
        table = segmentation.GetNodeReference(REF_FINDINGS) if segmentation else None
        row = panel.selectedTableRow(self.ui.findingsTableView) if table is not None else None
        return None if row is None else self.logic.candidateOfRow(table, row)

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
        panel.openInSegmentEditor(segmentation, volume)


#
# KidneyTumorSegLogic
#


class KidneyTumorSegLogic(ScriptedLoadableModuleLogic):
    """Everything the module does, usable from scripts without the panel.

    Scripting: ``slicer.util.getModuleLogic("KidneyTumorSeg").segment(volumeNode)``
    returns ``(segmentationNode, tableNode)``. Dependencies, models and results are
    handled by ``KidneyTumorSegSlicer``; this class runs and polls the segmentations.
    """

    POLL_INTERVAL_MS = 200
    MIN_GPU_MEMORY_GIB = gpu.MIN_GPU_MEMORY_GIB

    def getParameterNode(self):
        return KidneyTumorSegParameterNode(super().getParameterNode())

    # -- dependencies (KidneyTumorSegSlicer.dependencies) -------------------------

    missingRequirements = staticmethod(dependencies.missingRequirements)
    ensureDependencies = staticmethod(dependencies.ensureDependencies)

    # -- models (KidneyTumorSegSlicer.models) ------------------------------------

    defaultModelPath = staticmethod(models.defaultModelPath)
    modelValues = staticmethod(models.modelValues)
    preferredModelPath = staticmethod(models.preferredModelPath)
    userModelsFolder = staticmethod(models.userModelsFolder)
    modelProblem = staticmethod(models.modelProblem)
    availableModels = staticmethod(models.availableModels)
    modelImportTarget = staticmethod(models.modelImportTarget)
    importModel = staticmethod(models.importModel)

    # -- results (KidneyTumorSegSlicer.results, .candidates) ------------------------

    showSegmentation = staticmethod(results.showSegmentation)
    showSegmentation3D = staticmethod(results.showSegmentation3D)
    candidateOfRow = staticmethod(results.candidateOfRow)
    setCandidateKept = staticmethod(candidates.setCandidateKept)
    exportDicomSeg = staticmethod(dicomexport.exportDicomSeg)

    # -- device (KidneyTumorSegSlicer.gpu): a GPU that is missing or too small, asked once per choice --

    gpuMemoryWarning = staticmethod(gpu.cachedGpuMemoryWarning)

    # -- running -----------------------------------------------------------------

    def segment(self, volumeNode, model=None, device="auto", quality="fast", candidateThreshold=None,
                keepComponents=None, roiNode=None, outputSegmentation=None, show3D=False, tumorGrowth=None):
        """Segment ``volumeNode`` and wait for the result (for scripts; the panel runs asynchronously).

        ``model``: bundle folder (None: the shipped default); ``device``: "auto", "cpu", "cuda" or
        "cuda:N"; ``quality``: "fast" (no test-time augmentation), "balanced" (4 flips, about twice
        the time of fast) or "full" (12, about four times); ``candidateThreshold`` (0..1) and
        ``keepComponents`` (1 or 2): None keeps the model's own value (the shipped model: 0.8 and 2);
        ``roiNode``: optional vtkMRMLMarkupsROINode that replaces stage 1; ``outputSegmentation``:
        node to overwrite (None: a new one); ``tumorGrowth``: tumor growth passes around kept tumors
        that reach past the kidney stage's outline, None (the model's setting; the shipped model: 1),
        "off" or 0..8.
        Returns ``(segmentationNode, tableNode)``; raises RuntimeError with the core's message when
        the run fails (the scene is then unchanged).
        """
        from KidneyTumorSegLib.background import run_segmentation

        run = self._prepareRun(volumeNode, model, device, quality, candidateThreshold, keepComponents, roiNode,
                               outputSegmentation, show3D, tumorGrowth)
        try:
            outputs = run_segmentation(progress=runs.logProgress, **run.options)
            self._loadResults(run, outputs)
        finally:
            shutil.rmtree(run.workDir, ignore_errors=True)
        return run.segmentationNode, run.tableNode

    def startSegmentation(self, volumeNode, model=None, device="auto", quality="fast", candidateThreshold=None,
                          keepComponents=None, roiNode=None, outputSegmentation=None, show3D=False, tumorGrowth=None,
                          progressCallback=None, finishCallback=None) -> SegmentationRun:
        """Start a background run and return at once; arguments as :meth:`segment`.

        ``progressCallback(fraction, text)`` gets the overall fraction (0..1) and the stage's
        name; ``finishCallback(run)`` is called once with ``run.status`` "done", "failed"
        (``run.error`` holds the core's message) or "cancelled".
        """
        run = self._prepareRun(volumeNode, model, device, quality, candidateThreshold, keepComponents, roiNode,
                               outputSegmentation, show3D, tumorGrowth)
        run.progressCallback = progressCallback
        run.finishCallback = finishCallback
        runs.start(run, lambda: self._poll(run), self.POLL_INTERVAL_MS)
        return run

    cancel = staticmethod(runs.cancel)  # stop a run; the scene is left exactly as it was before it started

    def _prepareRun(self, volumeNode, model, device, quality, candidateThreshold, keepComponents, roiNode,
                    outputSegmentation, show3D, tumorGrowth=None) -> SegmentationRun:
        """Export the input and collect the core's arguments (its ``RunSettings`` in ``run.options``); adds
        nothing to the scene, and writes nothing for a refused choice."""
        if volumeNode is None:
            raise ValueError(_("No input volume."))
        if not self.ensureDependencies(askConfirmation=True):
            raise RuntimeError(_("KidneyTumorSeg cannot run: these Python packages are missing: {packages}").format(
                packages=", ".join(self.missingRequirements())))
        settings = runsettings.runSettings(device, quality, candidateThreshold, keepComponents, tumorGrowth)
        modelPath = str(model) if model else self.defaultModelPath()
        if models.usesNnunet(modelPath) and not dependencies.ensureNnunet(askConfirmation=True):
            raise RuntimeError(_("This model is an nnU-Net model, and the nnunetv2 package is not installed."))
        return runs.newRun(volumeNode, modelPath, settings, roiNode, outputSegmentation, show3D)

    def _poll(self, run: SegmentationRun) -> None:
        # self._loadResults is looked up on every tick (tests replace it on the instance)
        runs.poll(run, self._loadResults)

    def _loadResults(self, run: SegmentationRun, outputs: Dict[str, str]) -> None:
        """Bring the finished run's files into the scene (the only place a run changes the scene)."""
        results.loadResults(run, outputs)


#
# KidneyTumorSegTest
#


class KidneyTumorSegTest(ScriptedLoadableModuleTest):
    """Runs the real pipeline on the sample phantom with the shipped default model."""

    # the bar the core's Testing/test_default_model.py checks on the same phantom
    from KidneyTumorSegLib.phantom.sample import KIDNEY_DICE_MIN, TUMOR_DICE_MIN

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SegmentPhantom()
        self.setUp()
        self.test_CancelLeavesSceneUnchanged()

    def _requireDefaultModel(self):
        from KidneyTumorSegLib.bundles.bundle import default_bundle_path

        path = default_bundle_path()
        self.assertTrue((path / "manifest.json").is_file(),
                        f"The default model is missing: {path} has no manifest.json. This test trains nothing; "
                        "train and export the default model (see README), then run it again.")

    def _predictedLabel(self, segmentation, volume):
        """KiTS label array [k, j, i] on ``volume``'s grid: 1 kidney, 2 tumor."""
        import numpy as np

        from KidneyTumorSegLib.findings.terminology import KITS_KIDNEY, KITS_TUMOR

        ids = segmentIds(segmentation)
        label = None
        for key, value in ((SEGMENT_KIDNEY_LEFT, KITS_KIDNEY), (SEGMENT_KIDNEY_RIGHT, KITS_KIDNEY), (SEGMENT_TUMOR, KITS_TUMOR)):
            self.assertIn(key, ids, f"segment {key} is missing")
            # not slicer.util.arrayFromSegmentBinaryLabelmap: it leaves a display node in the scene
            arr = labelmaps.segmentArray(segmentation, ids[key], volume)
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
        from KidneyTumorSegLib.evaluation.metrics import dice
        from KidneyTumorSegLib.io.volume_io import read_label

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


"""One run of the core in Slicer: its state, its inputs (volume, ROI, PythonSlicer setup), starting and polling its process.

Nothing here adds to the scene: the caller's ``loadResults(run, outputs)`` does, once a run has succeeded.
Used by the Slicer module (a Qt timer polls the run) and by the browser front-end (``KidneyTumorSegWeb``,
whose asyncio loop polls it): ``qt`` is imported only by :func:`start`.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import vtk

import slicer
from slicer.i18n import tr as _


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


def newRun(volumeNode, modelPath: str, settings, roiNode=None, outputSegmentation=None, show3D=False,
           python: Optional[str] = None) -> SegmentationRun:
    """A run of ``modelPath`` on ``volumeNode``, not started: its input exported, its arguments collected.

    ``RuntimeError`` with the reason when the model cannot be used (nothing is written then).
    ``python``: the interpreter of the background process (None: Slicer's PythonSlicer).
    """
    from .models import modelProblem

    problem = modelProblem(modelPath)
    if problem:
        raise RuntimeError(problem)
    workDir, options = prepareWork(volumeNode, roiNode, modelPath, settings, python)
    return SegmentationRun(volumeNode, options, workDir, outputSegmentation, show3D)


def prepareWork(volumeNode, roiNode, modelPath: str, settings, python: Optional[str] = None) -> Tuple[Path, Dict]:
    """A new temporary folder holding the exported input, and the core's arguments for it.

    ``settings``: the run's ``RunSettings`` (``runsettings.runSettings``); the ROI box, in the
    volume's own frame, is added here. The folder is removed again when the export fails.
    """
    from dataclasses import replace

    workDir = Path(tempfile.mkdtemp(prefix="KidneyTumorSeg-", dir=slicer.app.temporaryPath))
    try:
        inputPath = workDir / "input.nrrd"
        exportVolume(volumeNode, inputPath)
        options = dict(
            input_path=str(inputPath), output_dir=str(workDir / "out"), model=modelPath,
            settings=replace(settings, roi=roiInVolumeFrame(roiNode, volumeNode)),
            python=python or pythonSlicerExecutable(), env=processEnvironment(),
        )
    except Exception:
        shutil.rmtree(workDir, ignore_errors=True)
        raise
    return workDir, options


def start(run: SegmentationRun, tick: Callable[[], None], intervalMs: int) -> None:
    """Start ``run``'s background process, and a Qt timer that calls ``tick`` every ``intervalMs`` ms
    (which polls it, see :func:`poll`)."""
    import qt

    startProcess(run)
    run.timer = qt.QTimer()
    run.timer.setInterval(intervalMs)
    run.timer.connect("timeout()", tick)
    run.timer.start()


def startProcess(run: SegmentationRun) -> None:
    """Start ``run``'s background process (the caller polls it, see :func:`poll`); the run's folder is
    removed when the process cannot start."""
    from KidneyTumorSegLib.background import SegmentationProcess

    try:
        run.process = SegmentationProcess(**run.options)
        run.process.start()
    except Exception:
        shutil.rmtree(run.workDir, ignore_errors=True)
        raise


def poll(run: SegmentationRun, loadResults: Callable[[SegmentationRun, Dict[str, str]], None]) -> None:
    """One timer tick of a background run: report progress; when the process has ended, load or fail."""
    if run.status != "running":
        return
    try:
        _pollOnce(run, loadResults)
    except Exception as exc:  # an error in a timer slot must end the run, not repeat every tick
        logging.exception("KidneyTumorSeg: the run failed")
        _stopTimer(run)
        if run.process is not None and run.process.running:
            run.process.cancel()
        finish(run, "failed", str(exc))


def _pollOnce(run: SegmentationRun, loadResults) -> None:
    from KidneyTumorSegLib.events import stage_text

    for event in run.process.poll():
        if event.get("event") != "progress":
            continue
        # the overall fraction (stage weight times the fraction within the stage) and the stage's message
        run.fraction = float(event.get("fraction", run.fraction))
        run.stageText = stage_text(str(event.get("stage", "")), event.get("message") or "")
        if run.progressCallback:
            run.progressCallback(run.fraction, run.stageText)
    if run.process.running:
        return
    _stopTimer(run)
    outputs = run.process.outputs
    if run.process.returncode != 0 or not outputs:
        finish(run, "failed", run.process.error_message() or
               _("the segmentation process stopped with exit status {code}").format(code=run.process.returncode))
        return
    loadResults(run, outputs)
    finish(run, "done")


def cancel(run: SegmentationRun) -> None:
    """Stop ``run``; the scene is left exactly as it was before it started."""
    if run.status != "running":
        return
    _stopTimer(run)
    if run.process is not None:
        run.process.cancel()
    finish(run, "cancelled")


def _stopTimer(run: SegmentationRun) -> None:
    if run.timer is not None:  # none when the caller polls from its own loop
        run.timer.stop()


def finish(run: SegmentationRun, status: str, error: str = "") -> None:
    """End ``run`` with ``status`` ("done", "failed", "cancelled"): remove its folder, then call back once."""
    run.status = status
    run.error = error
    shutil.rmtree(run.workDir, ignore_errors=True)
    if run.finishCallback:
        run.finishCallback(run)


def statusText(run: SegmentationRun) -> str:
    """The panel's status line once ``run`` has ended."""
    if run.status == "cancelled":
        return _("Cancelled; the scene was not changed.")
    if run.status == "failed":
        return _("Failed.")
    return "\n".join(run.messages) or _("Done.")


def exportVolume(volumeNode, path: Path) -> None:
    """Write the volume's voxels and geometry (its own frame, RAS to LPS) as NRRD, leaving the node untouched."""
    import SimpleITK as sitk
    from KidneyTumorSegLib.geometry.slicer_geometry import volume_from_slicer
    from KidneyTumorSegLib.io.validate import validate_ct
    from KidneyTumorSegLib.io.volume_io import volume_to_sitk

    if volumeNode.GetImageData() is None:
        raise ValueError(_("The volume '{name}' has no voxels.").format(name=volumeNode.GetName()))
    ijkToRas = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(ijkToRas)
    volume = volume_from_slicer(slicer.util.arrayFromVolume(volumeNode), slicer.util.arrayFromVTKMatrix(ijkToRas),
                                meta={"source": volumeNode.GetName()})
    for warning in validate_ct(volume):  # raises InputError with the core's message for unusable input
        logging.warning("KidneyTumorSeg: %s", warning)
    sitk.WriteImage(volume_to_sitk(volume), str(path), False)


def roiInVolumeFrame(roiNode, volumeNode):
    """The ROI box in the input volume's own frame (the frame the core segments in), or None."""
    if roiNode is None:
        return None
    import numpy as np
    from KidneyTumorSegLib.geometry.slicer_geometry import roi_from_slicer

    # vtkMRMLMarkupsROINode::GetObjectToWorldMatrix() returns the node's own matrix (it takes no argument)
    matrix = slicer.util.arrayFromVTKMatrix(roiNode.GetObjectToWorldMatrix())
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


def pythonSlicerExecutable() -> str:
    """PythonSlicer, the launcher of Slicer's own Python (same packages, no GUI)."""
    exe = shutil.which("PythonSlicer")
    if exe:
        return exe
    name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
    candidate = os.path.join(slicer.app.slicerHome, "bin", name)
    if os.path.isfile(candidate):
        return candidate
    raise RuntimeError(_("PythonSlicer was not found next to Slicer ({path}).").format(path=candidate))


def processEnvironment() -> Dict[str, str]:
    """Environment of the background process: the module's folder first on PYTHONPATH, for KidneyTumorSegLib."""
    env = dict(os.environ)
    # this package sits in the module's folder, next to KidneyTumorSegLib
    moduleDir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (moduleDir, env.get("PYTHONPATH", "")) if p)
    return env


def logProgress(event: Dict) -> None:
    """Progress of a blocking run goes to the log (events as in KidneyTumorSegLib.events)."""
    if event.get("event") == "progress" and event.get("stage_fraction") == 0.0:
        logging.info("KidneyTumorSeg: %3.0f%% %s", 100 * float(event.get("fraction", 0.0)), event.get("message", ""))

"""One browser session's work on the server's MRML scene: the CT, the run, the result, its downloads.

Everything here is the Slicer module's own code path (``KidneyTumorSegSlicer``: the run, its background
process and event stream, loading results, candidate edits, the segments as a label map, DICOM SEG
export) on the scene trame-slicer renders, with ``KidneyTumorSegSlicer.headless`` standing in for
Slicer's application. Nothing is added to the scene until a step has succeeded: a CT that cannot be read,
or a run that fails or is cancelled, leaves the scene as it was.
"""
from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from .datafolder import DataFolder

log = logging.getLogger("kidneytumorseg.web")

DOWNLOADS = {  # kind: (suffix, what it is)
    "seg.nrrd": (".seg.nrrd", "Slicer segmentation (Kidney left / right, Kidney tumor)"),
    "nifti": (".label.nii.gz", "KiTS label map (1 kidney, 2 tumor), NIfTI"),
    "dicom-seg": (".seg.dcm", "DICOM SEG referencing the source series"),
}
QUALITIES = ("fast", "balanced", "full")


class WebSession:
    """The CT in the scene, its run and its result; ``folder``: the data folder; ``extra_models``: the
    administrator's model folders."""

    def __init__(self, folder: DataFolder, extra_models: Sequence[str] = ()):
        self.folder = folder
        self.extra_models = list(extra_models)
        self.volumeNode = None
        self.caseName = ""
        self.dicomFiles: Tuple[str, ...] = ()
        self.run = None
        self.segmentation = None

    # -- the CT -------------------------------------------------------------------------------------

    def open_ct(self, path: Path, image=None) -> List[str]:
        """Read the CT at ``path`` (inside the data folder) with the core's checks, then replace the scene's
        content with it; returns the core's warnings. A CT that is refused leaves the scene as it was.
        ``image``: the CT already read (by the upload's check) from where it was staged before it moved to ``path``."""
        import slicer
        from KidneyTumorSegLib.geometry.slicer_geometry import ijk_to_ras_from_volume
        from KidneyTumorSegLib.io.cases import case_id_for
        from KidneyTumorSegLib.io.volume_io import read_volume

        if image is None:
            image = read_volume(path)  # InputError with the core's message for anything that is not a usable CT
        self.cancel()
        slicer.mrmlScene.Clear(0)
        node = slicer.util.addVolumeFromArray(image.array, ijk_to_ras_from_volume(image), case_id_for(path))
        self.volumeNode, self.caseName, self.segmentation, self.run = node, case_id_for(path), None, None
        self.dicomFiles = _series_files(image, Path(path))
        return list(image.meta.get("warnings") or [])

    # -- the run ------------------------------------------------------------------------------------

    def start(self, model_key: str, quality: str = "fast"):
        """Start a background run of the listed model ``model_key`` on the CT (as the Slicer module does)."""
        from KidneyTumorSegLib.geometry.volume import InputError
        from KidneyTumorSegSlicer import models, runs, runsettings

        if self.volumeNode is None:
            raise InputError("Open a CT first.")
        if self.running:
            raise InputError("A segmentation is already running.")
        if quality not in QUALITIES:
            raise InputError(f"Quality is one of {', '.join(QUALITIES)}.")
        modelPath = self.folder.model_path(model_key, self.extra_models)
        if models.usesNnunet(modelPath) and not _has("nnunetv2"):
            raise RuntimeError("This model is an nnU-Net model: install the nnunetv2 package on the server.")
        settings = runsettings.runSettings("auto", quality)
        run = runs.newRun(self.volumeNode, modelPath, settings, outputSegmentation=self.segmentation,
                          show3D=True, python=sys.executable)
        runs.startProcess(run)
        self.run = run
        return run

    @property
    def running(self) -> bool:
        return self.run is not None and self.run.status == "running"

    def poll(self) -> None:
        """One tick: read the run's events; load its result into the scene once it has succeeded."""
        from KidneyTumorSegSlicer import results, runs

        if self.run is None:
            return
        runs.poll(self.run, results.loadResults)
        if self.run.status == "done":
            self.segmentation = self.run.segmentationNode

    def cancel(self) -> None:
        from KidneyTumorSegSlicer import runs

        if self.run is not None:
            runs.cancel(self.run)

    # -- the result ---------------------------------------------------------------------------------

    def findings(self) -> List[Dict]:
        """The findings table's rows (``findings_table.findings_rows`` of the result's report)."""
        from KidneyTumorSegLib.findings.findings_table import findings_rows
        from KidneyTumorSegSlicer.dicomexport import resultReport

        if self.segmentation is None:
            return []
        return findings_rows(resultReport(self.segmentation))

    def set_kept(self, candidate_id: int, keep: bool) -> None:
        """Accept (``keep``) or reject tumor candidate ``candidate_id``: the Slicer module's candidate edit."""
        from KidneyTumorSegLib.geometry.volume import InputError
        from KidneyTumorSegSlicer.candidates import setCandidateKept

        if self.segmentation is None:
            raise InputError("Segment the CT first.")
        setCandidateKept(self.segmentation, int(candidate_id), bool(keep))

    def download(self, kind: str) -> Tuple[str, bytes]:
        """The segmentation as it is now (with the annotator's edits) as ``(file name, bytes)``."""
        import slicer
        from KidneyTumorSegLib.findings.findings import kits_labels
        from KidneyTumorSegLib.findings.terminology import SEG_NRRD_SEGMENTS
        from KidneyTumorSegLib.geometry.volume import InputError
        from KidneyTumorSegLib.io.writers import write_labelmap, write_seg_nrrd
        from KidneyTumorSegSlicer.dicomexport import exportDicomSegFromFiles, segmentGrid

        if kind not in DOWNLOADS:
            raise InputError(f"Unknown download '{kind}'.")
        if self.segmentation is None or self.segmentation.GetScene() is None:
            raise InputError("Segment the CT first.")
        if kind == "dicom-seg" and not self.dicomFiles:
            raise InputError("A DICOM SEG needs a CT opened from a DICOM series.")
        name = f"{self.caseName}{DOWNLOADS[kind][0]}"
        with tempfile.TemporaryDirectory(dir=slicer.app.temporaryPath) as tmp:
            path = Path(tmp) / name
            if kind == "dicom-seg":
                exportDicomSegFromFiles(self.segmentation, self.volumeNode, self.dicomFiles, path)
            elif kind == "seg.nrrd":
                write_seg_nrrd(segmentGrid(self.segmentation, self.volumeNode), path, SEG_NRRD_SEGMENTS)
            else:
                grid = segmentGrid(self.segmentation, self.volumeNode)
                write_labelmap(grid.with_array(kits_labels(grid.array)), path)
            return name, path.read_bytes()

    def status(self) -> Dict:
        """What the panel shows of the run: running, fraction, stage, status and messages."""
        from KidneyTumorSegSlicer import runs

        run = self.run
        if run is None:
            return {"running": False, "fraction": 0.0, "stage": "", "status": "", "messages": []}
        done = run.status != "running"
        text = runs.statusText(run) if done else ""
        return {"running": not done, "fraction": float(run.fraction), "stage": run.stageText, "status": run.status,
                "messages": ([run.error] if run.error else []) + ([text] if text else [])}


def _series_files(image, path: Path) -> Tuple[str, ...]:
    """The DICOM files ``image`` was read from, where they are now (``path``: the series' folder or its one file)."""
    if image.meta.get("format") != "dicom":
        return ()
    files = image.meta.get("dicom_paths") or ()
    return tuple(str(path / Path(f).name) if path.is_dir() else str(path) for f in files)


def _has(package: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(package) is not None

"""Sample data: a synthetic phantom CT made locally by the core (nothing is downloaded)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Tuple

import slicer
from slicer.i18n import tr as _

from KidneyTumorSegLib.phantom import sample

from .dependencies import ensureDependencies

SAMPLE_NAME = "KidneyTumorSegPhantom"
# the module's Resources folder (this package sits next to KidneyTumorSeg.py)
_ICONS_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "Resources", "Icons")


def phantomSamplePaths() -> Tuple[Path, Path]:
    """Paths of the phantom CT and its reference KiTS label map in Slicer's cache folder."""
    from KidneyTumorSegLib import __version__

    cache = Path(slicer.mrmlScene.GetCacheManager().GetRemoteCacheDirectory())
    stem = f"{SAMPLE_NAME}-{__version__}-seed{sample.SEED}"
    return cache / f"{stem}.nrrd", cache / f"{stem}.label.nrrd"


def ensurePhantomSample() -> Tuple[Path, Path]:
    """Generate the phantom into the cache on first request; returns (CT path, reference label path)."""
    imagePath, labelPath = phantomSamplePaths()
    if imagePath.is_file() and labelPath.is_file():
        return imagePath, labelPath
    if not ensureDependencies():
        raise RuntimeError(_("The Python packages KidneyTumorSeg needs are not installed."))
    import SimpleITK as sitk
    from KidneyTumorSegLib.io.atomic import atomic_write
    from KidneyTumorSegLib.io.volume_io import volume_to_sitk

    with slicer.util.WaitCursor():
        phantom = sample.make_sample_phantom()
        # the label first: the CT's presence marks a complete pair
        for volume, path in ((phantom.label, labelPath), (phantom.image, imagePath)):
            image = volume_to_sitk(volume)
            atomic_write(path, lambda tmp, img=image: sitk.WriteImage(img, tmp, True), overwrite=True)
    return imagePath, labelPath


def loadPhantomSample():
    """Generate (if needed) and load the phantom CT; returns its volume node."""
    import SampleData

    registerSampleData()
    ensurePhantomSample()
    return SampleData.SampleDataLogic().downloadSample(SAMPLE_NAME)


def registerSampleData() -> None:
    """Add the phantom to the Sample Data module.

    The file URI points into the cache, where the phantom is generated on first
    request, so SampleData finds the file and never downloads anything.
    """
    import SampleData

    imagePath, _labelPath = phantomSamplePaths()
    if hasattr(SampleData.SampleDataLogic, "registerCustomSampleDataCategory"):
        SampleData.SampleDataLogic.registerCustomSampleDataCategory("KidneyTumorSeg", title=_("KidneyTumorSeg"))
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="KidneyTumorSeg",
        sampleName=SAMPLE_NAME,
        thumbnailFileName=os.path.join(_ICONS_PATH, "KidneyTumorSeg.png"),
        uris=imagePath.as_uri(),
        fileNames=imagePath.name,
        nodeNames=SAMPLE_NAME,
        customDownloader=_loadPhantomFromSampleData,
    )


def _loadPhantomFromSampleData(source):
    import SampleData

    with slicer.util.tryWithErrorDisplay(_("The KidneyTumorSeg phantom could not be made."), waitCursor=True):
        ensurePhantomSample()
        SampleData.SampleDataLogic().downloadFromSource(source)

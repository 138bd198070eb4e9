"""Model bundles in Slicer: the shipped default, the user models folder, and importing a bundle into it."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, List, Tuple

import slicer
from slicer.i18n import tr as _


def defaultModelPath() -> str:
    from KidneyTumorSegLib.bundles.bundle import default_bundle_path

    return str(default_bundle_path())


def userModelsFolder() -> Path:
    """``<Slicer user settings folder>/KidneyTumorSeg/models``: imported model bundles."""
    settingsDir = os.path.dirname(slicer.app.slicerUserSettingsFilePath)
    return Path(settingsDir) / "KidneyTumorSeg" / "models"


def availableModels() -> List[Tuple[str, str]]:
    """(label, folder) of the shipped default model, every bundle in the user models folder, and the nnU-Net
    models already on this machine (TotalSegmentator's downloaded weights, ``$nnUNet_results``)."""
    default = defaultModelPath()
    label = _("Default model") if (Path(default) / "manifest.json").is_file() else _("Default model (not installed)")
    models = [(label, default)]
    folder = userModelsFolder()
    if folder.is_dir():
        for sub in sorted(folder.iterdir()):
            if (sub / "manifest.json").is_file():
                models.append((sub.name, str(sub)))
    from KidneyTumorSegLib.bundles.nnunet_folder import discover_models

    for m in discover_models():
        models.append((f"{m['source']}: {m['dataset']} ({m['configuration']})", m["path"]))
    return models


def preferredModelPath() -> str:
    """The panel's first choice: a real model already on this machine (one with a tumor label first, then one
    with kidneys, e.g. TotalSegmentator's weights), else the shipped phantom model, which fails on real CT."""
    from KidneyTumorSegLib.bundles.nnunet_folder import discover_models
    from KidneyTumorSegLib.bundles.nnunet_labels import LabelError, label_roles

    withKidney = []
    for m in discover_models():
        try:
            roles = label_roles(json.loads((Path(m["path"]) / "dataset.json").read_text(encoding="utf-8")))
        except (OSError, ValueError, LabelError):
            continue
        if roles.has("tumor"):
            return m["path"]
        withKidney.append(m["path"])
    return withKidney[0] if withKidney else defaultModelPath()


def usesNnunet(modelPath: str) -> bool:
    """An nnU-Net model, or a bundle with a stage that is one (needs the nnunetv2 package)."""
    if isNnunetModel(modelPath):
        return True
    try:
        manifest = json.loads((Path(modelPath) / "manifest.json").read_text(encoding="utf-8"))
        return any(isinstance(s, dict) and s.get("nnunet") for s in manifest.get("stages", []))
    except (OSError, ValueError, AttributeError):
        return False


def isNnunetModel(modelPath: str) -> bool:
    from KidneyTumorSegLib.bundles.nnunet_folder import looks_like_nnunet

    return bool(modelPath) and not (Path(modelPath) / "manifest.json").is_file() and looks_like_nnunet(modelPath)


def modelProblem(modelPath: str) -> str:
    """Why ``modelPath`` cannot be used (empty when it looks usable; hashes are checked at run time)."""
    if not modelPath:
        return _("Select a model.")
    if isNnunetModel(modelPath):
        return ""
    if not (Path(modelPath) / "manifest.json").is_file():
        if Path(modelPath) == Path(defaultModelPath()):
            return _("No model: the default model is not installed. Import a model bundle with 'Import model…'.")
        return _("No model: {path} has no manifest.json. Import a model bundle with 'Import model…'.").format(path=modelPath)
    return ""


def modelValues(modelPath: str) -> Dict:
    """The model's own ``candidateThreshold`` and ``keepComponents``: what a run uses unless the panel
    overrides them (``runsettings.panelOverrides``). Read from the manifest without hashing the weights
    (that happens at run time); {} when the model cannot be read."""
    from KidneyTumorSegLib.bundles.bundle import BundleError, load_bundle

    try:
        if isNnunetModel(modelPath):
            if Path(modelPath).suffix.lower() == ".zip":  # not unpacked just to ask
                return {}
            from KidneyTumorSegLib.bundles.nnunet_bundle import bundle_from_nnunet

            bundle = bundle_from_nnunet(modelPath)
        else:
            bundle = load_bundle(modelPath, verify=False)
        return {"candidateThreshold": float(bundle.postprocess.candidate_threshold),
                "keepComponents": int(bundle.stages["kidney"].keep_components)}
    except (BundleError, OSError, ValueError, KeyError):
        return {}


def modelImportTarget(source: str) -> Path:
    """Where ``importModel(source)`` will put the bundle (its manifest's name, or the nnU-Net model's)."""
    if isNnunetModel(source):
        if Path(source).suffix.lower() == ".zip":  # named after the file: not unpacked just to ask
            return userModelsFolder() / _safeFolderName("nnunet-" + Path(source).stem)
        from KidneyTumorSegLib.bundles.nnunet_folder import resolve

        return userModelsFolder() / _safeFolderName("nnunet-" + resolve(source).name.replace("/", "-"))
    with _bundleSource(source) as folder:
        return userModelsFolder() / _safeFolderName(_manifestName(folder))


def importModel(source: str, overwrite: bool = False) -> Path:
    """Verify a model bundle (every SHA-256) and copy it into the user models folder.

    ``source``: a bundle folder, its manifest.json, or a .zip of the folder.
    Returns the new folder. Raises the core's ``BundleError`` for a bad bundle and
    ``FileExistsError`` when a model of that name exists and ``overwrite`` is False.
    """
    from KidneyTumorSegLib.bundles.bundle import MANIFEST, load_bundle
    from KidneyTumorSegLib.io.atomic import staged_folder

    if isNnunetModel(source):
        return _importNnunet(source, overwrite)
    with _bundleSource(source) as folder:
        bundle = load_bundle(folder)
        target = userModelsFolder() / _safeFolderName(_manifestName(folder))
        if target.exists() and not overwrite:
            raise FileExistsError(_("A model named '{name}' is already imported: {path}").format(
                name=target.name, path=target))
        with staged_folder(target, overwrite=overwrite) as staging:
            for name in [MANIFEST] + sorted(bundle.files):
                (staging / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(folder / name, staging / name)
            load_bundle(staging)  # the copy is checked too before it replaces anything
    return target


def _importNnunet(source: str, overwrite: bool) -> Path:
    """An nnU-Net model (folder or zip) as a bundle in the user models folder: a manifest that references it
    (a zip is unpacked next to the manifest's folder first), every file it reads recorded by SHA-256."""
    from KidneyTumorSegLib.bundles.nnunet_bundle import bundle_from_nnunet, import_model

    target = modelImportTarget(source)
    if target.exists() and not overwrite:
        raise FileExistsError(_("A model named '{name}' is already imported: {path}").format(name=target.name, path=target))
    if Path(source).suffix.lower() == ".zip":
        from KidneyTumorSegLib.bundles.nnunet_folder import unpack_zip

        source = str(unpack_zip(Path(source), userModelsFolder() / ".nnunet-unpacked"))
    probe = bundle_from_nnunet(source)
    roles = {"kidney": source, **({"tumor": source} if "tumor" in probe.stages else {})}
    return import_model(target, roles, overwrite=overwrite).path


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

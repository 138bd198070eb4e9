"""Model bundles: a folder with one versioned JSON manifest and weight files.

Layout::

    mybundle/
      manifest.json          schema, stages (StageConfig), postprocess, files -> sha256
      roi_0.safetensors      weights (safetensors: no pickled objects are ever loaded)
      kidney_0.safetensors
      tumor_0.safetensors
      tumor_1.safetensors    several files per stage = an ensemble

A stage may instead reference an nnU-Net v2 trained-model folder
(``StageConfig.nnunet``: its path, folds, and the SHA-256 of every file
inference reads); those hashes are checked the same way before loading. A
bundle whose kidney stage is an nnU-Net model may have no tumor stage (a
model such as TotalSegmentator's that segments kidneys only).

This is the only module that reads or writes the manifest. The manifest is
checked completely when a bundle is loaded (:mod:`bundle_checks`: types,
ranges, weight file names that are plain names of files in the bundle
folder), before any file it names is opened. Every weight file is checked
against its SHA-256 (looked up by :meth:`Bundle.sha256_of` only) and its
safetensors header before use (:mod:`bundle_weights`); a wrong hash, a
missing file, a file that is not safetensors or an unknown schema version
raises :class:`BundleError` naming the file. A stage's network is compared
with its weight files' headers (names, shapes, floating point) before it is
allocated, so a manifest cannot make a small bundle allocate a large network.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ..io.atomic import staged_folder
from .bundle_checks import IN_BUNDLE_RULE, ManifestError, plain_name, show, validate_manifest
from .bundle_weights import network_tensors, safetensors_problem, tensors_problem
from ..config import PostprocessConfig, StageConfig, from_dict, short, to_dict

SCHEMA = "kidneytumorseg-bundle"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 16 << 20


class BundleError(ValueError):
    """A model bundle that cannot be used; the message names the file."""


@dataclass(frozen=True)
class Bundle:
    path: Path
    name: str
    version: str
    description: str
    stages: Dict[str, StageConfig]  # by role
    postprocess: PostprocessConfig
    files: Dict[str, str]  # file name -> sha256
    provenance: Dict[str, Any] = field(default_factory=dict)
    created: str = ""
    limitations: str = ""  # what users must know before trusting the output (shown with every result)

    def stage(self, role: str) -> Optional[StageConfig]:
        return self.stages.get(role)

    def weight_paths(self, role: str) -> List[Path]:
        return [weight_path(self.path, w) for w in self.stages[role].weights]

    def sha256_of(self, name: str) -> str:
        """The SHA-256 the manifest records for weight file ``name`` (as a stage lists it): the one look-up."""
        digest = self.files.get(name)
        if digest is None:
            raise BundleError(f"{weight_path(self.path, name)}: the manifest lists no SHA-256 for this weight file")
        return digest

    def manifest_sha256(self) -> str:
        """The SHA-256 of the bundle's ``manifest.json``, which records every weight file's SHA-256: the one
        figure that names these exact weights (DICOM SEG's algorithm identification, the reports). A bundle
        made in memory (an nnU-Net model folder given as ``--model``) has no manifest file: the SHA-256 of
        its name, version and file hashes, as JSON with sorted keys."""
        manifest = self.path / MANIFEST
        if manifest.is_file():
            return sha256_file(manifest)
        text = json.dumps({"name": self.name, "version": self.version, "files": self.files}, sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def checked_weight(self, name: str) -> Path:
        """The path of weight file ``name`` once its name, SHA-256 and safetensors header are checked."""
        path = weight_path(self.path, name)
        _verify(path, self.sha256_of(name))
        problem = safetensors_problem(path)
        if problem:
            raise BundleError(f"{path}: not a safetensors weight file ({problem})")
        return path

    def nnunet_path(self, role: str) -> Path:
        """The trained-model folder of an nnU-Net stage (a relative path is the bundle folder's)."""
        src = self.stages[role].nnunet
        if src is None:
            raise BundleError(f"stage {short(self.stages[role].name)} is not an nnU-Net model")
        return (self.path / src.path) if not Path(src.path).is_absolute() else Path(src.path)

    def load_state_dicts(self, role: str) -> List[Dict[str, Any]]:
        """The verified state dicts of a stage's ensemble members (tensors only, no pickle)."""
        return [_load_file(self.checked_weight(name)) for name in self.stages[role].weights]

    def build_models(self, role: str):
        """Networks of a stage with their weights loaded, in eval mode; a member trained with other
        normalisation statistics than the stage's (``member_norm``) re-normalises its input. Each weight
        file's header is compared with the network (built on the meta device) before anything is allocated."""
        from ..engine.networks import Renormalised, build_network

        stage = self.stages[role]
        own = (float(stage.norm_mean), float(stage.norm_std))
        models = []
        for name, mn, cfg in zip(stage.weights, stage.member_statistics(), stage.member_network_configs()):
            expected, problem = network_tensors(cfg)
            if problem:
                raise BundleError(f"{self.path / MANIFEST}: stage {short(stage.name)}: its network cannot be built: "
                                  f"{problem}")
            p = self.checked_weight(name)
            problem = tensors_problem(p, expected)
            if problem:
                raise BundleError(f"{p}: weights do not match the {cfg.architecture!r} network of stage "
                                  f"{short(stage.name)}: {problem}")
            sd = _load_file(p)
            net = build_network(cfg)
            try:
                net.load_state_dict(sd, strict=True)
            except RuntimeError as exc:
                raise BundleError(f"{p}: weights do not match the {cfg.architecture!r} network of stage "
                                  f"{short(stage.name)}: {str(exc).splitlines()[0]}") from exc
            if mn != own:
                net = Renormalised(net, own, mn)
            net.eval()
            models.append(net)
        return models

    def card(self) -> Dict[str, Any]:
        """A short human-readable model card."""
        return {
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "limitations": self.limitations,
            "created": self.created,
            "path": str(self.path),
            "stages": {
                role: {
                    "name": s.name,
                    "architecture": " + ".join(dict.fromkeys(n.architecture for n in s.member_network_configs(1)
                                                             + list(s.member_networks))),
                    "spacing_zyx_mm": list(s.spacing),
                    "window_hu": list(s.window),
                    "patch_size": list(s.patch_size),
                    "ensemble": len(s.weights) or (len(s.nnunet.folds) if s.nnunet else 0),
                    "provenance": s.provenance,
                    **({"nnunet": {"path": str(self.nnunet_path(role)), "configuration": s.nnunet.configuration,
                                   "folds": list(s.nnunet.folds), "checkpoint": s.nnunet.checkpoint,
                                   "orientation": s.nnunet.orientation}} if s.nnunet else {}),
                }
                for role, s in self.stages.items()
            },
            "postprocess": to_dict(self.postprocess),
            "provenance": self.provenance,
        }


def _load_file(p: Path) -> Dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(p))
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise BundleError(f"{p}: not a safetensors weight file ({str(exc).splitlines()[0]})") from exc


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weight_path(folder: Path, name: str) -> Path:
    """The path of weight file ``name`` of the bundle at ``folder``: only a plain name of a file in that folder."""
    if not plain_name(name):
        raise BundleError(f"{folder}: weight file name {name!r} {IN_BUNDLE_RULE}")
    return folder / name


def _verify(path: Path, expected: Optional[str]) -> None:
    try:
        if not path.exists():
            raise BundleError(f"{path}: weight file listed in the manifest is missing")
        if not path.is_file():
            raise BundleError(f"{path}: weight file listed in the manifest is not a regular file")
        if expected is None:
            raise BundleError(f"{path}: the manifest lists no SHA-256 for this weight file")
        got = sha256_file(path)
    except OSError as exc:
        raise BundleError(f"{path}: weight file listed in the manifest cannot be read: {exc.strerror or exc}") from exc
    if got != expected:
        raise BundleError(f"{path}: SHA-256 mismatch (manifest {expected[:12]}..., file {got[:12]}...); "
                          "the file is corrupt or was replaced")


def verify_nnunet(bundle: "Bundle", role: str, done: Optional[set] = None) -> None:
    """Check every file an nnU-Net stage reads against the SHA-256 the manifest recorded (those not in ``done``,
    which collects the files checked: stages of one model share them)."""
    src = bundle.stages[role].nnunet
    assert src is not None
    base = bundle.nnunet_path(role).parent
    if not src.files:
        raise BundleError(f"{bundle.path / MANIFEST}: stage {short(bundle.stages[role].name)} lists no SHA-256 for "
                          "its nnU-Net files")
    for rel, digest in sorted(src.files.items()):
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise BundleError(f"{bundle.path / MANIFEST}: nnU-Net file {short(rel)} is not inside the model's folder")
        if done is None or (base / rel, digest) not in done:
            _verify(base / rel, digest)
            if done is not None:
                done.add((base / rel, digest))


def read_manifest(path: Path) -> Dict[str, Any]:
    """The manifest of the bundle folder ``path``, checked completely (:func:`bundle_checks.validate_manifest`)
    before any file it names is opened; :class:`BundleError` naming the manifest and the field otherwise."""
    mpath = path / MANIFEST
    if not path.is_dir():
        raise BundleError(f"{path}: model bundle folder not found")
    if not mpath.is_file():
        raise BundleError(f"{mpath}: model bundle has no manifest")
    if mpath.stat().st_size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{mpath}: manifest is larger than {MAX_MANIFEST_BYTES >> 20} MiB")
    try:
        data = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:  # ValueError: JSON, a 5000-digit number
        raise BundleError(f"{mpath}: manifest is not valid JSON: {str(exc).split(';')[0]}") from exc
    schema = data.get("schema") if isinstance(data, dict) else None
    if schema != SCHEMA:
        raise BundleError(f"{mpath}: not a KidneyTumorSeg model manifest (schema {show(schema)})")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(f"{mpath}: unknown schema version {show(version)} (this KidneyTumorSeg reads version "
                          f"{SCHEMA_VERSION})")
    try:
        validate_manifest(data)
    except ManifestError as exc:
        raise BundleError(f"{mpath}: {exc}") from exc
    return data


def load_bundle(path: os.PathLike, verify: bool = True) -> Bundle:
    """Read and check a bundle folder (``verify`` hashes every weight file now)."""
    path = Path(path)
    mpath = path / MANIFEST
    data = read_manifest(path)
    try:
        stages = [from_dict(StageConfig, s) for s in data["stages"]]
        post = from_dict(PostprocessConfig, data.get("postprocess", {}))
        files = dict(data["files"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{mpath}: invalid manifest: {exc}") from exc
    by_role: Dict[str, StageConfig] = {}
    for s in stages:
        if s.role in by_role:
            raise BundleError(f"{mpath}: two stages with role {s.role!r}")
        if not s.weights and s.nnunet is None:
            raise BundleError(f"{mpath}: stage {short(s.name)} lists no weight files")
        if s.member_norm and len(s.member_norm) != len(s.weights):
            raise BundleError(f"{mpath}: stage {short(s.name)} lists {len(s.member_norm)} member_norm entries for "
                              f"{len(s.weights)} weight files")
        if s.member_networks and len(s.member_networks) != len(s.weights):
            raise BundleError(f"{mpath}: stage {short(s.name)} lists {len(s.member_networks)} member_networks for "
                              f"{len(s.weights)} weight files")
        by_role[s.role] = s
    kidney_nnunet = "kidney" in by_role and by_role["kidney"].nnunet is not None
    for role in ("kidney",) if kidney_nnunet else ("kidney", "tumor"):
        if role not in by_role:
            raise BundleError(f"{mpath}: the bundle has no {role!r} stage")
    if (post.fusion == "label_assignment") != ("kidney_alone" in by_role):
        raise BundleError(f"{mpath}: the label_assignment fusion and a 'kidney_alone' stage go together; "
                          f"fusion is {post.fusion!r}, stages are {', '.join(by_role)}")
    bundle = Bundle(
        path=path,
        name=str(data.get("name", path.name)),
        version=str(data.get("version", "")),
        description=str(data.get("description", "")),
        stages=by_role,
        postprocess=post,
        files=files,
        provenance=dict(data.get("provenance", {})),
        created=str(data.get("created", "")),
        limitations=str(data.get("limitations", "")),
    )
    checked: set = set()
    for s in stages:
        for w in s.weights:
            if verify:
                bundle.checked_weight(w)
            else:
                bundle.sha256_of(w)
        if s.nnunet is not None and verify:
            verify_nnunet(bundle, s.role, checked)
    return bundle


def _write_weights(folder: Path, stages: Sequence[StageConfig], state_dicts: Mapping[str, Sequence[Mapping[str, Any]]]):
    """Each stage's ensemble members as ``<role>_<n>.safetensors`` in ``folder``: the stages naming their
    files, and ``{file: sha256}``. An nnU-Net stage's weights are referenced, not copied; a state dict given
    for two stages (a stage derived from another's networks) is written once and named by both."""
    from safetensors.torch import save_file

    files: Dict[str, str] = {}
    written: Dict[int, str] = {}  # id of a state dict already written -> its file
    out_stages = []
    for stage in stages:
        sds = list(state_dicts.get(stage.role, ()))
        if stage.nnunet is not None:  # its files' hashes are in the stage
            out_stages.append(replace(stage, weights=()))
            continue
        if not sds:
            raise ValueError(f"no weights given for stage {short(stage.name)} ({stage.role})")
        if stage.member_norm and len(stage.member_norm) != len(sds):
            raise ValueError(f"stage {short(stage.name)}: {len(stage.member_norm)} member_norm entries for "
                             f"{len(sds)} ensemble members")
        names = []
        for n, sd in enumerate(sds):
            fname = written.get(id(sd)) or f"{stage.role}_{n}.safetensors"
            if fname not in files:
                save_file({k: v.detach().cpu().contiguous() for k, v in sd.items()}, str(folder / fname))
                files[fname] = sha256_file(folder / fname)
                written[id(sd)] = fname
            names.append(fname)
        out_stages.append(replace(stage, weights=tuple(names)))
    return out_stages, files


def save_bundle(
    path: os.PathLike,
    stages: Sequence[StageConfig],
    state_dicts: Mapping[str, Sequence[Mapping[str, Any]]],
    postprocess: PostprocessConfig = PostprocessConfig(),
    name: str = "",
    version: str = "0",
    description: str = "",
    provenance: Optional[Dict[str, Any]] = None,
    overwrite: bool = False,
    limitations: str = "",
) -> Bundle:
    """Write a bundle folder atomically: built in a temporary sibling, then renamed.

    ``state_dicts`` maps a stage's role to the state dicts of its ensemble
    members; weight file names are ``<role>_<n>.safetensors``.
    """
    path = Path(path)
    with staged_folder(path, overwrite=overwrite) as tmp:
        out_stages, files = _write_weights(tmp, stages, state_dicts)
        manifest = {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "name": name or path.name,
            "version": version,
            "description": description,
            "limitations": limitations,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "stages": [to_dict(s) for s in out_stages],
            "postprocess": to_dict(postprocess),
            "files": files,
            "provenance": provenance or {},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return load_bundle(path)


def default_bundle_path() -> Path:
    """The model shipped inside the package (may be absent before one is trained)."""
    return Path(__file__).resolve().parents[1] / "models" / "default"  # KidneyTumorSegLib/models

"""Export trained stages as the model bundle the core loads.

Each stage takes one or more run folders (several = an ensemble, e.g. the
five folds), or an existing bundle whose stage is taken over unchanged (a
new kidney stage beside the ROI stage of an earlier model). Beside other
members, a bundle's stage joins the ensemble with all its weight files. Members
trained with different z-score statistics (folds, other runs) each keep their
own (``StageConfig.member_norm``); members may be different networks taking and giving the same
channels (``StageConfig.member_networks``: report 000's two kidney encoders); the stage's other
settings are the first member's. A stage may also be derived from another stage's networks with
some fields changed (``derived``: reports 001 and 004 read one network's tumor channel). The bundle
records SHA-256s (written by the core's ``save_bundle``) and provenance:
data, split, configuration, commit, epochs and validation scores of every
member.
"""
from __future__ import annotations

import re
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from KidneyTumorSegLib.bundles.bundle import Bundle, save_bundle, sha256_file
from KidneyTumorSegLib.config import ROLES, NetworkConfig, PostprocessConfig, StageConfig, from_dict
from KidneyTumorSegLib.presets import DEFAULT_POSTPROCESS

from .checkpoint import load_checkpoint

CHECKPOINTS = {"final": "checkpoint_final.pt", "best": "checkpoint_best.pt", "latest": "checkpoint_latest.pt"}


def git_commit(path: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=str(path), capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def export_bundle(
    runs: Mapping[str, Sequence[Path]],
    out: Path,
    which: str = "final",
    postprocess: PostprocessConfig = DEFAULT_POSTPROCESS,
    name: str = "",
    version: str = "0",
    description: str = "",
    data: str = "",
    overwrite: bool = False,
    limitations: str = "",
    tta: Optional[Mapping[str, int]] = None,
    derived: Optional[Mapping[str, Tuple[str, Mapping[str, Any]]]] = None,
) -> Bundle:
    """Bundle the ``which`` checkpoint of each run (final, best, latest or epochNNNN); ``runs`` maps role ->
    run folders and bundle folders (one bundle folder alone: its stage as it is). ``tta`` maps role -> the
    most test-time augmentations that stage was validated with (the stage's ``tta``, which caps
    ``--tta``/``--full`` at inference); other stages keep their configuration's.

    ``derived`` maps a role to ``(source role, stage fields)``: that stage is the source stage's networks
    and weights with those fields changed (report 001 and 004 train one network for kidney and tumor;
    the tumor stage is the kidney stage's network read at its tumor channel)."""
    checkpoint = _checkpoint_name(which)
    tta = _check_tta(tta or {})
    derived = dict(derived or {})
    stages: List[StageConfig] = []
    weights: Dict[str, list] = {}
    members: Dict[str, list] = {}
    for role in ROLES:
        folders = [Path(p) for p in runs.get(role, ())]
        if role in derived:
            stages.append(_derived_stage(role, *derived[role], stages, weights, members, folders))
            continue
        if not folders:
            if role in ("roi", "kidney_alone"):  # optional stages
                continue
            raise ValueError(f"no training run given for the {role!r} stage")
        if len(folders) == 1 and (folders[0] / "manifest.json").is_file():
            # a stage taken over from an existing bundle, as it is
            stages.append(_stage_from_bundle(folders[0], role, weights, members))
            continue
        stages.append(_ensemble_stage(role, folders, checkpoint, weights, members, data))
    stages = [replace(s, tta=tta[s.role]) if s.role in tta else s for s in stages]
    missing = sorted(set(tta) - {s.role for s in stages})
    if missing:
        raise ValueError(f"tta given for stage(s) the bundle does not have: {', '.join(missing)}")
    repo = Path(__file__).resolve().parents[2]
    provenance = {"data": data, "commit": git_commit(repo), "trained_with": "ktstrain", "members": members}
    return save_bundle(out, stages, weights, postprocess, name=name or Path(out).name, version=version,
                       description=description, provenance=provenance, overwrite=overwrite,
                       limitations=limitations)


def _ensemble_stage(role: str, folders: Sequence[Path], checkpoint: str, weights: Dict[str, list],
                    members: Dict[str, list], data: str) -> StageConfig:
    """Stage ``role`` of run folders and bundle folders (an ensemble); adds their weights and provenance to
    ``weights[role]`` and ``members[role]``. Members must agree in network, spacing, window and normalization."""
    stage = None
    norms: List[Tuple[float, float]] = []  # each member's z-score statistics
    nets: List[NetworkConfig] = []  # each member's network
    for folder in folders:
        if (folder / "manifest.json").is_file():  # a bundle's stage (all its members) joins the ensemble
            part_w: Dict[str, list] = {}
            part_m: Dict[str, list] = {}
            st = _stage_from_bundle(folder, role, part_w, part_m)
            sds, member, label = part_w[role], part_m[role][0], str(folder)
            member_norms, member_nets = st.member_statistics(len(sds)), st.member_network_configs(len(sds))
        else:
            st, sds, member, label = _run_member(folder / checkpoint, role)
            member_norms, member_nets = st.member_statistics(1), [st.network]
        if stage is not None and (_io(st.network) != _io(stage.network) or st.spacing != stage.spacing
                                  or st.window != stage.window or st.normalization != stage.normalization):
            raise ValueError(f"{label}: ensemble members of stage {role!r} differ in network input or output, "
                             "spacing, window or normalization")
        stage = stage or st
        weights.setdefault(role, []).extend(sds)
        members.setdefault(role, []).append(member)
        norms.extend(member_norms)
        nets.extend(member_nets)
    differ = any(n != stage.network for n in nets)
    stage = replace(stage, member_norm=_member_norm(stage, norms), member_networks=tuple(nets) if differ else ())
    return _with_provenance(stage, members[role], data)


def _derived_stage(role: str, source: str, fields: Mapping[str, Any], stages: Sequence[StageConfig],
                   weights: Dict[str, list], members: Dict[str, list], folders: Sequence[Path]) -> StageConfig:
    """Stage ``role`` as the already exported stage ``source`` with ``fields`` changed; adds its weights."""
    from .config import merge_stage

    if folders:
        raise ValueError(f"the {role!r} stage is derived from the {source!r} stage; give it no runs of its own")
    base = next((s for s in stages if s.role == source), None)
    if base is None:
        raise ValueError(f"the {role!r} stage is derived from a {source!r} stage the bundle does not have "
                         "(stages are exported in the order roi, kidney, tumor)")
    weights[role] = list(weights[source])
    members[role] = [{"derived_from": source, "fields": dict(fields)}]
    return merge_stage(replace(base, role=role, name=role), fields)


def _io(net: NetworkConfig) -> Tuple[int, int, int]:
    """What ensemble members must share (their architectures may differ: report 000's two kidney encoders)."""
    return net.spatial_dims, net.in_channels, net.out_channels


def _run_member(path: Path, role: str) -> Tuple[StageConfig, list, dict, str]:
    """A training run's checkpoint as an ensemble member: its stage, weights, provenance record and name."""
    state = load_checkpoint(path)
    st = from_dict(StageConfig, state["stage"])
    if st.role != role:
        raise ValueError(f"{path}: is a {st.role!r} stage, given for {role!r}")
    cfg = state.get("config", {})
    member = {
        "run": path.parent.name, "checkpoint": path.name, "epoch": int(state["epoch"]) + 1,
        "epochs_planned": int(state.get("epochs", 0)), "fold": state.get("fold"),
        "validation": state.get("val", {}), "train_cases": len(state.get("train_cases", [])),
        "val_cases": len(state.get("val_cases", [])), "loss": cfg.get("train", {}).get("loss"),
        "init_from": _init_chain(state),
    }
    return st, [state["model"]], member, str(path)


def _member_norm(stage: StageConfig, norms: Sequence[Tuple[float, float]]) -> Tuple[Tuple[float, float], ...]:
    """``member_norm`` of an ensemble: empty when every member was trained with the statistics of the
    stage (the first member's), else one entry per member so that each sees its own normalisation."""
    own = (float(stage.norm_mean), float(stage.norm_std))
    if stage.normalization != "zscore" or all(n == own for n in norms):
        return ()
    return tuple(norms)


def _check_tta(tta: Mapping[str, int]) -> Dict[str, int]:
    from KidneyTumorSegLib.engine.tta import MAX_TTA

    out = {}
    for role, n in tta.items():
        if role not in ROLES:
            raise ValueError(f"tta: unknown stage {role!r} (roi, kidney or tumor)")
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_TTA:
            raise ValueError(f"tta of the {role} stage must be an integer from 1 to {MAX_TTA}, got {n!r}")
        out[role] = n
    return out


def _checkpoint_name(which: str) -> str:
    """``final``/``best``/``latest``, or ``epochNNNN`` (a periodic checkpoint: 0-based epoch, 4 digits)."""
    if which in CHECKPOINTS:
        return CHECKPOINTS[which]
    if re.fullmatch(r"epoch\d{4}", which):
        return f"checkpoint_{which}.pt"
    raise ValueError(f"which must be one of {sorted(CHECKPOINTS)} or epochNNNN, got {which!r}")


def _stage_from_bundle(folder: Path, role: str, weights: Dict[str, list], members: Dict[str, list]) -> StageConfig:
    """Stage ``role`` of the bundle in ``folder``: its configuration, verified weights and provenance unchanged."""
    from KidneyTumorSegLib.bundles.bundle import load_bundle

    b = load_bundle(folder)
    st = b.stage(role)
    if st is None:
        raise ValueError(f"{folder}: the bundle has no {role!r} stage")
    weights[role] = b.load_state_dicts(role)
    members[role] = [{"bundle": b.name, "bundle_version": b.version, "weights": list(st.weights),
                      "sha256": [b.files[w] for w in st.weights],
                      "members": b.provenance.get("members", {}).get(role, [])}]
    return replace(st, weights=())


def _init_chain(state) -> list:
    """The checkpoints this run started from (``--init``), nearest first, as far as they are still on disk."""
    chain, seen = [], set()
    src = state.get("init_from")
    while src and src not in seen and len(chain) < 20:
        seen.add(src)
        entry = {"checkpoint": src}
        if str(src).endswith(".safetensors"):  # a bundle's weight file (--init from a bundle): its hash ends the chain
            entry["sha256"] = _sha256_or_none(src)
            chain.append(entry)
            break
        try:
            prev = load_checkpoint(src, map_location="cpu")
        except (OSError, RuntimeError, ValueError):  # moved or deleted since: record the path only
            chain.append(entry)
            break
        entry.update(epoch=int(prev.get("epoch", -1)) + 1, train_cases=len(prev.get("train_cases", [])))
        chain.append(entry)
        src = prev.get("init_from")
    return chain


def _sha256_or_none(path) -> Optional[str]:
    try:
        return sha256_file(Path(path))
    except OSError:
        return None


def _with_provenance(stage: StageConfig, members: list, data: str) -> StageConfig:
    return replace(stage, provenance={"data": data, "ensemble": members}, weights=())



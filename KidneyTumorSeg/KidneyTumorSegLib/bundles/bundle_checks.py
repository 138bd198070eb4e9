"""Checks of a model bundle's manifest and weight files, made before anything they name is opened or loaded.

:func:`validate_manifest` checks a parsed ``manifest.json`` completely: its
nesting, missing and unknown fields, and every field's type and range
(spacings, patch sizes, HU windows, normalisation, the network's
hyper-parameters, stage 4's rules, weight file names and SHA-256 digests).
The first problem raises :class:`ManifestError`, one line naming the stage
and field; :mod:`bundle` reports it as a ``BundleError`` naming the manifest.
Rules between fields of a built configuration (labels per output channel,
foreground channels) stay in :mod:`config`.

:func:`plain_name` is the rule for weight file names: a plain name of a file
in the bundle folder. A weight file's header is checked by :mod:`bundle_weights`.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

from ..config import BOX_RULES, FUSION_RULES, INPUT_MODES, NORMALISATIONS, ROLES, NetworkConfig

# Bounds that keep a hostile manifest away from the allocator; every real model is far inside them.
MAX_PATCH_SIDE = 1024
MAX_PATCH_VOXELS = 256 ** 3
MAX_CHANNELS = 1024
MAX_LEVELS = 8
MAX_MEMBERS = 64  # networks of one stage's ensemble
SPACING_MM = (0.01, 100.0)
# Mirrors of networks.ARCHITECTURES and tta.MAX_TTA (those modules import torch; a test keeps them equal).
ARCHITECTURES = ("resunet", "unet", "preact_resunet", "vnet", "enet", "vnet25d", "triplanar")
UNETS = ("resunet", "unet", "preact_resunet")
MAX_TTA = 12
NORMS = ("instance", "batch", "group")
ACTIVATIONS = ("leakyrelu", "relu", "elu", "prelu", "gelu")
MAX_NAME_BYTES = 255  # the longest file name of common file systems
MAX_LISTED = 5  # unknown fields named in one message
PLAIN_RULE = "a plain file name (no path separators, no '..', not absolute)"
IN_BUNDLE_RULE = "is not a plain file name in the bundle folder (no path separators, no '..', not absolute)"

_SHA256 = re.compile(r"[0-9a-f]{64}")
_FOLD = re.compile(r"[A-Za-z0-9_]+")
_AXES = {"L": 0, "R": 0, "P": 1, "A": 1, "S": 2, "I": 2}

Check = Callable[[Any], Optional[str]]  # None when the value is right, else what is wrong with it


class ManifestError(ValueError):
    """The first problem of a manifest, one line naming the stage and field."""


def show(value: Any, limit: int = 60) -> str:
    """``value`` as the manifest spells it (JSON), cut to ``limit`` characters, on one line."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def plain_name(name: Any) -> bool:
    """True for a plain file name: no folder, no '..', not absolute, nothing unprintable."""
    return (isinstance(name, str) and name not in ("", ".", "..") and not any(c in name for c in "/\\:")
            and name.isprintable() and len(name.encode("utf-8")) <= MAX_NAME_BYTES)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(v: Any, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _rule(expect: str, ok: Callable[[Any], bool]) -> Check:
    def check(value: Any) -> Optional[str]:
        try:
            good = bool(ok(value))
        except (TypeError, ValueError, OverflowError):
            good = False
        return None if good else f"must be {expect}, got {show(value)}"
    return check


def _number(lo: float = -math.inf, hi: float = math.inf, null: bool = False, positive: bool = False) -> Check:
    expect = ("a finite number > 0" if positive else "a finite number" if lo == -math.inf
              else f"a number from {lo:g} to {hi:g}")
    return _rule(("null or " if null else "") + expect,
                 lambda v: (null and v is None) or (_finite(v) and lo <= v <= hi and (v > 0 or not positive)))


def _integer(lo: int, hi: int) -> Check:
    return _rule(f"an integer from {lo} to {hi}", lambda v: _int(v, lo, hi))


def _choice(options: Sequence[str], fold_case: bool = False) -> Check:
    return _rule("one of " + ", ".join(map(repr, options)),
                 lambda v: isinstance(v, str) and (v.lower() if fold_case else v) in options)


def _list_of(expect: str, ok: Callable[[Any], bool], n: Optional[int] = None) -> Check:
    return _rule(expect, lambda v: isinstance(v, list) and (n is None or len(v) == n) and all(ok(e) for e in v))


_TEXT = _rule("a string", lambda v: isinstance(v, str))
_NAME = _rule("a non-empty string", lambda v: isinstance(v, str) and v != "")
_BOOL = _rule("true or false", lambda v: isinstance(v, bool))
_OBJECT = _rule("an object", lambda v: isinstance(v, dict))
_STRINGS = _list_of("a list of strings", lambda e: isinstance(e, str))


def _patch(v: Any) -> bool:
    return (isinstance(v, list) and len(v) == 3 and all(_int(p, 1, MAX_PATCH_SIDE) for p in v)
            and v[0] * v[1] * v[2] <= MAX_PATCH_VOXELS)


def _orientation(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 3 and set(v.upper()) <= set(_AXES) and \
        len({_AXES[c] for c in v.upper()}) == 3


def _names_to_sha256(names: str, names_ok: Callable[[Any], bool], what: str) -> Check:
    """A check of ``{name: SHA-256}`` whose ``names`` satisfy ``names_ok`` (else: ``what`` is wrong with one)."""
    def check(value: Any) -> Optional[str]:
        if not isinstance(value, dict):
            return f"must be an object of {names} to SHA-256 digests, got {show(value)}"
        for name, digest in value.items():
            if not names_ok(name):
                return f"entry {show(name)} {what}"
            if not (isinstance(digest, str) and _SHA256.fullmatch(digest)):
                return f"entry {show(name)} must be a SHA-256 (64 lowercase hex digits), got {show(digest)}"
        return None
    return check


def _relative_path(rel: Any) -> bool:
    parts = rel.split("/") if isinstance(rel, str) else [""]
    return all(plain_name(p) for p in parts)


def _weights(value: Any) -> Optional[str]:
    if not isinstance(value, list):
        return f"must be a list of file names, got {show(value)}"
    for w in value:
        if not plain_name(w):
            return f"entry {show(w)} {IN_BUNDLE_RULE}"
    return None


class Nested:
    """An object-valued field checked by its own table (``null``: may be null instead)."""

    def __init__(self, checks: Mapping[str, Any], required: Sequence[str] = (), null: bool = False,
                 after: Optional[Callable[[dict], Optional[str]]] = None) -> None:
        self.checks, self.required, self.null, self.after = checks, tuple(required), null, after


def _strides(net: dict) -> Optional[str]:
    """Cross-field rule of a network: one stride (an int, or one per spatial axis) per level of ``channels``."""
    if net.get("architecture", NetworkConfig.architecture) not in UNETS:
        return None  # strides are the U-Nets' (the others down-sample by their own design)
    channels = net.get("channels", list(NetworkConfig.channels))
    strides = net.get("strides", list(NetworkConfig.strides))
    dims = net.get("spatial_dims", NetworkConfig.spatial_dims)

    def ok(s: Any) -> bool:
        return _int(s, 1, 8) or (isinstance(s, list) and len(s) == dims and all(_int(e, 1, 8) for e in s))

    if not (isinstance(strides, list) and len(strides) == len(channels) and all(ok(s) for s in strides)):
        return f"network.strides must be one stride per level of network.channels ({len(channels)}), each an " \
               f"integer from 1 to 8 or a list of spatial_dims of them, got {show(strides)}"
    if strides[0] not in (1, [1] * dims):
        return f"network.strides must start with 1 (the output has the resolution of the first level), " \
               f"got {show(strides)}"
    return None


NETWORK_CHECKS: Dict[str, Any] = {
    "architecture": _choice(ARCHITECTURES),
    "spatial_dims": _integer(2, 3),
    "in_channels": _integer(1, 64),
    "out_channels": _integer(2, 64),
    "channels": _rule(f"a list of 2 to {MAX_LEVELS} integers from 1 to {MAX_CHANNELS}",
                      lambda v: isinstance(v, list) and 2 <= len(v) <= MAX_LEVELS
                      and all(_int(e, 1, MAX_CHANNELS) for e in v)),
    "strides": _rule("a list", lambda v: isinstance(v, list)),  # checked with channels in _strides
    "kernel_size": _rule("an odd integer from 1 to 7", lambda v: _int(v, 1, 7) and v % 2 == 1),
    "deep_supervision": _BOOL,
    "deep_supervision_levels": _integer(0, MAX_LEVELS - 1),
    "norm": _choice(NORMS, fold_case=True),
    "act": _choice(ACTIVATIONS, fold_case=True),
    "dropout": _rule("a number from 0 to less than 1", lambda v: _finite(v) and 0 <= v < 1),
    "heads": _rule("an object of head names to integers from 1 to 64",  # names: letters, digits, _; not "seg"
                   lambda v: isinstance(v, dict) and all(_FOLD.fullmatch(h) and h != "seg" and _int(n, 1, 64)
                                                         for h, n in v.items())),
}

NNUNET_CHECKS: Dict[str, Any] = {
    "path": _rule("a non-empty path", lambda v: isinstance(v, str) and v != "" and "\0" not in v),
    "configuration": _NAME,
    "folds": _rule("a non-empty list of fold names (letters, digits, _)",
                   lambda v: isinstance(v, list) and v != [] and all(
                       _int(f, 0, 999) or (isinstance(f, str) and _FOLD.fullmatch(f)) for f in v)),
    "checkpoint": _rule(PLAIN_RULE, plain_name),
    "orientation": _rule("a 3-letter code of one of L/R, P/A, S/I each (e.g. RAS, IPL)", _orientation),
    "labels": _rule("an object of roles to lists of label names",
                    lambda v: isinstance(v, dict) and all(_STRINGS(n) is None for n in v.values())),
    "files": _names_to_sha256("file paths", _relative_path, "is not a relative path inside the model's dataset folder"),
}

STAGE_CHECKS: Dict[str, Any] = {
    "name": _NAME,
    "role": _choice(ROLES),
    "network": Nested(NETWORK_CHECKS, after=_strides),
    "spacing": _list_of(f"3 numbers from {SPACING_MM[0]:g} to {SPACING_MM[1]:g} (mm)",
                        lambda e: _finite(e) and SPACING_MM[0] <= e <= SPACING_MM[1], n=3),
    "window": _rule("2 finite numbers, lower < upper (HU)",
                    lambda v: isinstance(v, list) and len(v) == 2 and all(map(_finite, v)) and v[0] < v[1]),
    "normalization": _choice(NORMALISATIONS),
    "norm_mean": _number(),
    "norm_std": _number(positive=True),
    "patch_size": _rule(f"3 integers from 1 to {MAX_PATCH_SIDE}, at most {MAX_PATCH_VOXELS} voxels in all", _patch),
    "input_mode": _choice(INPUT_MODES),
    "context_slices": _integer(0, 32),
    "labels": _STRINGS,
    "foreground_channel": _integer(0, 63),
    "foreground_channels": _list_of("a list of integers from 0 to 63", lambda e: _int(e, 0, 63)),
    "threshold": _number(0, 1),
    "margin_mm": _number(0, 500),
    "mask_outside": _BOOL,
    "mask_value": _number(),
    "mask_dilation_mm": _number(0, 100),
    "keep_components": _integer(1, 64),
    "min_component_ml": _number(0, 10000),
    "tta": _integer(1, MAX_TTA),
    "weights": _weights,
    "member_norm": _list_of("a list of [norm_mean, norm_std > 0] pairs of finite numbers",
                            lambda e: isinstance(e, list) and len(e) == 2 and all(map(_finite, e)) and e[1] > 0),
    "box_rule": _choice(BOX_RULES),
    "member_networks": _rule("a list of network objects (as network)", lambda v: isinstance(v, list)),  # _members
    "provenance": _OBJECT,
    "nnunet": Nested(NNUNET_CHECKS, required=("path",), null=True),
}

POSTPROCESS_CHECKS: Dict[str, Any] = {
    "fusion": _choice(FUSION_RULES),
    "candidate_threshold": _number(0, 1),
    "tumor_threshold": _number(0, 1),
    "min_candidate_ml": _number(0, 1000),
    "horseshoe_crossing_mm": _number(0, 500),
    "cyst_max_hu": _number(null=True),
    "tumor_growth_passes": _integer(0, 8),
    "tumor_growth_mm": _number(0, 50),
    "min_kidney_contact": _number(0, 1, null=True),
    "min_listed_ml": _number(0, 1000),
    "min_slice_component_mm2": _number(0, 10000),
    "max_tumors_per_kidney": _rule("an integer from 1 to 64, or null",
                                   lambda v: v is None or _int(v, 1, 64)),
}

TOP_CHECKS: Dict[str, Any] = {
    "schema": _TEXT,  # its value is checked by bundle.load_bundle first
    "schema_version": _rule("an integer", lambda v: _int(v, 0, 1 << 31)),
    "name": _TEXT, "version": _TEXT, "description": _TEXT, "limitations": _TEXT, "created": _TEXT,
    "stages": None,  # a list: validate_manifest
    "postprocess": Nested(POSTPROCESS_CHECKS),
    "files": None,  # after the stages, so that a bad weight name is reported with its stage: FILES_CHECK
    "provenance": _OBJECT,
}
FILES_CHECK = _names_to_sha256("weight file names", plain_name, IN_BUNDLE_RULE)


def _key(k: str) -> str:
    return k if k.isidentifier() and len(k) <= 40 else show(k, 40)


def check_fields(obj: dict, checks: Mapping[str, Any], where: str = "", prefix: str = "",
                 required: Sequence[str] = ()) -> None:
    """Check ``obj``'s fields with the table ``checks``; raise :class:`ManifestError` for the first problem."""
    unknown = [k for k in obj if k not in checks]
    if unknown:
        names = ", ".join(prefix + _key(k) for k in unknown[:MAX_LISTED])
        more = f" and {len(unknown) - MAX_LISTED} more" if len(unknown) > MAX_LISTED else ""
        raise ManifestError(f"{where}unknown field(s) {names}{more}")
    for key in required:
        if key not in obj:
            raise ManifestError(f"{where}{prefix}{key} is missing")
    for key, value in obj.items():
        check = checks[key]
        if isinstance(check, Nested):
            if value is None and check.null:
                continue
            if not isinstance(value, dict):
                raise ManifestError(f"{where}{prefix}{key} must be an object, got {show(value)}")
            inner = (where, f"{prefix}{key}.") if where else (f"{key}: ", "")  # top level: "postprocess: field"
            check_fields(value, check.checks, inner[0], inner[1], check.required)
            problem = check.after(value) if check.after else None
            if problem:
                raise ManifestError(f"{inner[0]}{problem}")
        elif check is not None:
            problem = check(value)
            if problem:
                raise ManifestError(f"{where}{prefix}{key} {problem}")


def _stage_label(i: int, stage: Any) -> str:
    name = stage.get("name") if isinstance(stage, dict) else None
    if isinstance(name, str) and name:
        return f"stage {name[:40]!r}" if len(name) <= 40 else f"stage {name[:37] + '...'!r}"
    return f"stage #{i + 1}"


def _check_member_networks(members: list, label: str) -> None:
    """Each entry of a stage's ``member_networks`` by the table of ``network``."""
    for n, net in enumerate(members[:MAX_MEMBERS]):
        where = f"member_networks[{n}]"
        if not isinstance(net, dict):
            raise ManifestError(f"{label}: {where} must be an object, got {show(net)}")
        check_fields(net, NETWORK_CHECKS, f"{label}: ", f"{where}.")
        problem = _strides(net)
        if problem:
            raise ManifestError(f"{label}: {where}: {problem}")
    if len(members) > MAX_MEMBERS:
        raise ManifestError(f"{label}: member_networks lists {len(members)} networks, at most {MAX_MEMBERS}")


def validate_manifest(data: Any) -> None:
    """Check a parsed manifest completely (see the module docstring); :class:`ManifestError` for the first problem."""
    if not isinstance(data, dict):
        raise ManifestError(f"the manifest must be an object, got {show(data)}")
    check_fields(data, TOP_CHECKS, required=("stages", "files"))
    stages = data["stages"]
    if not isinstance(stages, list) or not stages:
        raise ManifestError(f"stages must be a non-empty list of stage objects, got {show(stages)}")
    for i, stage in enumerate(stages):
        label = _stage_label(i, stage)
        if not isinstance(stage, dict):
            raise ManifestError(f"{label} must be an object, got {show(stage)}")
        check_fields(stage, STAGE_CHECKS, f"{label}: ", required=("name", "role"))
        _check_member_networks(stage.get("member_networks", []), label)
    problem = FILES_CHECK(data["files"])
    if problem:
        raise ManifestError(f"files {problem}")

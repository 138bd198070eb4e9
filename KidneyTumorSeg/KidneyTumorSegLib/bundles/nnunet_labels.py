"""Which outputs of an nnU-Net v2 model are kidney, tumor and cyst: labels matched by name.

An nnU-Net model's ``dataset.json`` names its labels. The cascade needs three
roles from them; this module is the one table that maps names to roles:

==========  ==========================================================================
role        label names (case-insensitive; spaces and hyphens read as ``_``)
==========  ==========================================================================
kidney      ``kidney``, ``kidney_left``, ``kidney_right``, ``left_kidney``,
            ``right_kidney``, ``kidneys``
tumor       ``tumor``, ``tumour``, ``kidney_tumor``, ``kidney_tumour``, ``renal_tumor``,
            ``kidney_mass``, ``renal_mass``, ``tumor_left``, ``tumor_right``
cyst        ``cyst``, ``kidney_cyst``, ``kidney_cyst_left``, ``kidney_cyst_right``,
            ``renal_cyst``, ``cyst_left``, ``cyst_right``
==========  ==========================================================================

The stage probabilities built from them:

* **kidney** (stage 1 and 2: kidney + tumor foreground, as KiTS scores "kidney"):
  softmax models: the sum of the kidney, tumor and cyst labels' probabilities;
  region-based models (KiTS21/23: ``"kidney": [1, 2, 3]``, sigmoid outputs):
  the probability of the region named kidney, which holds the masses already.
* **tumor** (stage 3): the tumor label's probability, or the tumor region's.
* **cyst**: KiTS21/23's cyst is ``masses`` minus ``tumor``; it is not a role of
  the cascade (stage 4's water-attenuation rule judges cysts), only named in
  the model card.

KiTS19 (``kidney 1, tumor 2``), KiTS21/23 region training and TotalSegmentator's
organ task (``kidney_left``, ``kidney_right`` and ``kidney_cyst_left/right`` among
other organs) all match without options. ``overrides`` replaces the table for a
role: ``{"kidney": ["kidney_left", "kidney_right"], "tumor": []}``; names or label
values (as strings) are accepted. A model without a kidney label is refused with
a message naming the labels it has.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

ROLE_NAMES: Dict[str, Tuple[str, ...]] = {
    "kidney": ("kidney", "kidney_left", "kidney_right", "left_kidney", "right_kidney", "kidneys"),
    "tumor": ("tumor", "tumour", "kidney_tumor", "kidney_tumour", "renal_tumor", "kidney_mass", "renal_mass",
              "tumor_left", "tumor_right"),
    "cyst": ("cyst", "kidney_cyst", "kidney_cyst_left", "kidney_cyst_right", "renal_cyst", "cyst_left", "cyst_right"),
}
ROLES = tuple(ROLE_NAMES)

LabelValue = Union[int, Tuple[int, ...]]


class LabelError(ValueError):
    """A model whose labels cannot serve the cascade; the message names its labels."""


def _norm(name: str) -> str:
    return str(name).strip().lower().replace(" ", "_").replace("-", "_")


@dataclass(frozen=True)
class LabelRoles:
    """The channels of one model that make each role's probability.

    ``region_based``: outputs are sigmoid regions (one channel per foreground
    region, no background channel); otherwise softmax over every label value
    (channel ``c`` is label value ``all_labels[c]``). ``channels[role]``: the
    output channels summed for that role (empty: the model has no such label).
    ``names[role]``: the label names they come from.
    """

    region_based: bool
    channels: Dict[str, Tuple[int, ...]]
    names: Dict[str, Tuple[str, ...]]
    labels: Dict[str, LabelValue]  # dataset.json's labels, as read

    def has(self, role: str) -> bool:
        return bool(self.channels.get(role))

    def describe(self) -> Dict[str, List[str]]:
        return {role: list(n) for role, n in self.names.items() if n}


def _as_value(v) -> LabelValue:
    if isinstance(v, (list, tuple)):
        vals = tuple(int(x) for x in v)
        return vals[0] if len(vals) == 1 else vals
    return int(v)


def read_labels(dataset_json: Mapping) -> Dict[str, LabelValue]:
    """``dataset.json``'s ``labels`` as ``{name: value or region tuple}``."""
    labels = dataset_json.get("labels")
    if not isinstance(labels, Mapping) or not labels:
        raise LabelError("dataset.json has no 'labels' table")
    try:
        return {str(k): _as_value(v) for k, v in labels.items()}
    except (TypeError, ValueError) as exc:
        raise LabelError(f"dataset.json's labels are not label values or regions: {exc}") from exc


def _pick(labels: Mapping[str, LabelValue], role: str, override: Optional[Sequence[str]]) -> List[str]:
    if override is None:
        wanted = set(ROLE_NAMES[role])
        return [n for n in labels if _norm(n) in wanted]
    out = []
    by_value = {str(v): n for n, v in labels.items() if isinstance(v, int)}
    for item in override:
        name = item if item in labels else by_value.get(str(item))
        if name is None:
            raise LabelError(f"label {item!r} given for {role} is not one of the model's labels: "
                             f"{', '.join(f'{n} ({v})' for n, v in labels.items())}")
        out.append(name)
    return out


def label_roles(dataset_json: Mapping, overrides: Optional[Mapping[str, Sequence[str]]] = None) -> LabelRoles:
    """Match a model's labels to the cascade's roles (see the module docstring); refuse one with no kidney."""
    labels = read_labels(dataset_json)
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(ROLES))
    if unknown:
        raise LabelError(f"unknown role(s) {', '.join(unknown)} in the label table (roles: {', '.join(ROLES)})")
    region_based = any(isinstance(v, tuple) for v in labels.values())
    if region_based:
        regions = [(n, v) for n, v in labels.items() if v != 0]
        channel_of = {n: c for c, (n, _) in enumerate(regions)}
    else:
        values = sorted({int(v) for v in labels.values()})  # type: ignore[arg-type]
        channel_of = {n: values.index(int(v)) for n, v in labels.items()}  # type: ignore[arg-type]
    names = {role: tuple(_pick(labels, role, overrides.get(role))) for role in ROLES}
    if not names["kidney"]:
        raise LabelError("the model has no kidney label (its labels: " +
                         ", ".join(f"{n} ({v})" for n, v in labels.items()) +
                         "); give one with --labels kidney=NAME if one of them is kidney")
    if region_based:
        # the kidney region of KiTS21/23 holds the masses: it alone is kidney + tumor
        kid = names["kidney"]
        chans = {"kidney": tuple(channel_of[n] for n in kid)}
    else:
        kid = names["kidney"] + names["tumor"] + names["cyst"]
        chans = {"kidney": tuple(sorted({channel_of[n] for n in kid}))}
    chans["tumor"] = tuple(channel_of[n] for n in names["tumor"])
    chans["cyst"] = tuple(channel_of[n] for n in names["cyst"])
    return LabelRoles(region_based=region_based, channels=chans, names=names, labels=labels)


def value_names(dataset_json: Mapping) -> Dict[int, str]:
    """``{label value: name}`` of the label map nnU-Net writes for this model.

    Region-based models write ``regions_class_order[n]`` where region ``n`` (in
    ``labels`` order, background left out) is on: KiTS21/23 give 1 kidney,
    3 masses (masses that are not tumor: cyst), 2 tumor.
    """
    labels = read_labels(dataset_json)
    if not any(isinstance(v, tuple) for v in labels.values()):
        return {int(v): n for n, v in labels.items()}  # type: ignore[arg-type]
    order = dataset_json.get("regions_class_order") or []
    regions = [n for n, v in labels.items() if v != 0]
    out = {0: "background"}
    for name, value in zip(regions, order):
        out[int(value)] = name
    return out


def parse_overrides(items: Sequence[str]) -> Dict[str, List[str]]:
    """``["kidney=kidney_left+kidney_right", "tumor="]`` -> ``{"kidney": [...], "tumor": []}`` (CLI form)."""
    out: Dict[str, List[str]] = {}
    for item in items:
        role, sep, rest = str(item).partition("=")
        if not sep:
            raise LabelError(f"label table entry {item!r} is not ROLE=NAME[+NAME...] (roles: {', '.join(ROLES)})")
        out[role.strip()] = [n.strip() for n in rest.split("+") if n.strip()]
    return out

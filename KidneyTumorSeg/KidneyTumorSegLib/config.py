"""Typed configuration of the cascade: one frozen dataclass per concern.

Only :mod:`bundle` turns these into JSON and back (``to_dict`` /
``from_dict``); everything else reads the typed fields. Spacings and patch
sizes are in array order ``(k, j, i)`` = ``(z, y, x)``, millimetres / voxels.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, List, Optional, Tuple

from .io.jsonfile import jsonable

# Stage roles the cascade knows. A stage's role says where in the cascade it
# runs and what its output means: ``kidney_alone`` (report 003's K networks)
# segments the kidney without its tumor in the kidney stage's region, for the
# label-assignment fusion.
ROLES = ("roi", "kidney", "tumor", "kidney_alone")
# Input layouts: 3D patches, 2D slices, or 2.5D (a stack of neighbouring
# slices as channels, ``context_slices`` on each side).
INPUT_MODES = ("3d", "2d", "2.5d")
NORMALISATIONS = ("zscore", "minmax", "none")
# How the stages' outputs make the labels: report 000's candidate rule (the default), or with report
# 003's label assignment also the kidney_alone stage: kidney = kidney stage and kidney_alone, tumor on top.
FUSION_RULES = ("candidate_mean_probability", "label_assignment")
# How stage 1 makes its box: around its segmentation, or report 003's mixed rule with its landmark head.
BOX_RULES = ("segmentation", "mixed_landmarks")


def short(value: Any, limit: int = 40) -> str:
    """``repr(value)`` for a message: a string cut to ``limit`` characters, the whole at most twice that."""
    if isinstance(value, str) and len(value) > limit:
        value = value[: limit - 3] + "..."
    text = repr(value)
    return text if len(text) <= 2 * limit else text[: 2 * limit - 3] + "..."


@dataclass(frozen=True)
class NetworkConfig:
    """A network architecture and its hyper-parameters.

    ``architecture``: ``resunet`` (report 004's residual block, the default),
    ``unet`` (plain), ``preact_resunet`` (pre-activation residual), ``vnet``
    (report 000's coarse stage), ``enet`` (report 001's 2D ENet;
    ``spatial_dims=2``, the channel and stride settings do not apply),
    ``vnet25d`` (report 002's 2.5D tumor V-Net; ``spatial_dims=2``,
    ``channels`` per level, strides do not apply), ``triplanar`` (report
    003's 2.5D U-Net: three 2D U-Nets of ``channels`` along the three axes of
    a 3D patch, 5 slices each). ``heads`` names extra outputs besides the
    segmentation (e.g. ``{"boundary": 1}`` for report 003's regression
    branch); the segmentation head always has ``out_channels`` channels.
    """

    architecture: str = "resunet"
    spatial_dims: int = 3
    in_channels: int = 1
    out_channels: int = 2
    channels: Tuple[int, ...] = (16, 32, 64, 128, 256)
    strides: Tuple[Any, ...] = (1, 2, 2, 2, 2)
    kernel_size: int = 3
    deep_supervision: bool = True
    deep_supervision_levels: int = 2
    norm: str = "instance"
    act: str = "leakyrelu"
    dropout: float = 0.0
    heads: Dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class NnunetSource:
    """A stage whose model is an nnU-Net v2 trained-model folder, run by nnU-Net's own predictor.

    ``path``: the trained-model folder (``<Trainer>__<Plans>__<configuration>``),
    absolute or relative to the bundle folder. ``folds``: its folds used (an
    ensemble); ``checkpoint``: ``checkpoint_final.pth`` or ``checkpoint_best.pth``.
    ``orientation``: SimpleITK orientation code of the arrays the model was
    trained on (``IPL``: KiTS19/21/23 files as stored; ``RAS``: TotalSegmentator);
    see :mod:`nnunet_stage`. ``labels``: role -> label names replacing the
    table of :mod:`nnunet_labels` (empty: the table). ``files``: SHA-256 of
    every file inference reads, by path relative to the folder's parent (the
    dataset folder), checked before loading.
    """

    path: str
    configuration: str = "3d_fullres"
    folds: Tuple[str, ...] = ("0",)
    checkpoint: str = "checkpoint_final.pth"
    orientation: str = "IPL"
    labels: Dict[str, Tuple[str, ...]] = field(default_factory=dict)
    files: Dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StageConfig:
    """One stage of the cascade: what it sees, how it is normalised, its weights.

    ``window``: HU clip range. ``normalization``: ``zscore`` with
    ``norm_mean``/``norm_std`` (fixed statistics from training, HU),
    ``minmax`` to [0, 1] over the window, or ``none``. ``threshold`` turns the
    foreground probability into a mask: that of channel
    ``foreground_channel``, or, when ``foreground_channels`` is given, the sum
    of those channels (a kidney stage trained with kidney and tumor as
    separate classes, whose foreground is kidney + tumor). ``weights``: file
    names inside the bundle; several are averaged as an ensemble.
    ``member_norm``: with ``zscore``, one ``(norm_mean, norm_std)`` per weight
    file, the statistics that member was trained with, where members differ
    (folds see different training cases; members can come from different
    runs); each member then sees its own normalisation. Empty: every member
    uses ``norm_mean``/``norm_std``. ``member_networks``: one network per
    weight file where members differ in architecture (report 000's kidney
    ensemble of two encoders); they must agree with ``network`` in spatial
    dims, input and output channels. Empty: every member is ``network``.
    ``box_rule`` (roi stage): ``segmentation`` (the box around its largest
    components) or ``mixed_landmarks`` (report 003: the landmark head's box
    where the segmentation's is not about as wide; the network needs a
    ``landmarks`` head of 5 channels; :mod:`engine.landmarks`).
    ``nnunet``: the stage's model is an
    nnU-Net folder (then ``weights``, ``network``, ``spacing``, ``window`` and
    the normalisation are unused: nnU-Net's plans hold them).
    """

    name: str
    role: str
    network: NetworkConfig = field(default_factory=NetworkConfig)
    spacing: Tuple[float, float, float] = (3.4, 3.4, 3.4)
    window: Tuple[float, float] = (-1024.0, 1500.0)
    normalization: str = "zscore"
    norm_mean: float = 0.0
    norm_std: float = 1.0
    patch_size: Tuple[int, int, int] = (64, 64, 64)
    input_mode: str = "3d"
    context_slices: int = 0
    labels: Tuple[str, ...] = ("background", "foreground")
    foreground_channel: int = 1
    foreground_channels: Tuple[int, ...] = ()
    threshold: float = 0.5
    margin_mm: float = 10.0
    mask_outside: bool = False
    mask_value: float = -1024.0
    mask_dilation_mm: float = 2.0
    keep_components: int = 2
    min_component_ml: float = 0.0
    tta: int = 1
    weights: Tuple[str, ...] = ()
    member_norm: Tuple[Tuple[float, float], ...] = ()
    member_networks: Tuple[NetworkConfig, ...] = ()
    box_rule: str = "segmentation"
    provenance: Dict[str, Any] = field(default_factory=dict)
    nnunet: Optional[NnunetSource] = None

    @property
    def native_grid(self) -> bool:
        """True when the stage's model resamples by itself (nnU-Net): the cascade hands it the image as is."""
        return self.nnunet is not None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"stage {short(self.name)}: unknown role {self.role!r} (expected one of {ROLES})")
        if self.input_mode not in INPUT_MODES:
            raise ValueError(f"stage {short(self.name)}: unknown input_mode {self.input_mode!r} "
                             f"(expected one of {INPUT_MODES})")
        if self.normalization not in NORMALISATIONS:
            raise ValueError(f"stage {short(self.name)}: unknown normalization {self.normalization!r}")
        if not self.window[0] < self.window[1]:  # NaN too
            raise ValueError(f"stage {short(self.name)}: window {self.window} is empty")
        if self.member_norm:
            if self.normalization != "zscore":
                raise ValueError(f"stage {short(self.name)}: member_norm needs zscore normalization, "
                                 f"not {self.normalization!r}")
            for mn in self.member_norm:
                if len(mn) != 2 or not float(mn[1]) > 0:
                    raise ValueError(f"stage {short(self.name)}: member_norm entries are (norm_mean, norm_std > 0), "
                                     f"got {tuple(mn)!r}")
        self._check_member_networks()
        if self.box_rule not in BOX_RULES:
            raise ValueError(f"stage {short(self.name)}: unknown box_rule {self.box_rule!r} (expected one of {BOX_RULES})")
        if self.box_rule == "mixed_landmarks" and self.network.heads.get("landmarks") != 5:
            raise ValueError(f"stage {short(self.name)}: box_rule 'mixed_landmarks' needs a network with a 'landmarks' "
                             f"head of 5 channels, got heads {dict(self.network.heads)}")
        n_out = self.network.out_channels
        for c in tuple(self.foreground_channels) or (self.foreground_channel,):
            if not 1 <= int(c) < n_out:
                raise ValueError(f"stage {short(self.name)}: foreground channel {c} is not one of the network's "
                                 f"{n_out} output channels other than background (0)")
        if len(self.labels) != n_out:
            raise ValueError(f"stage {short(self.name)}: {len(self.labels)} labels {short(tuple(self.labels), 60)} for "
                             f"{n_out} output channels")

    def _check_member_networks(self) -> None:
        net = self.network
        for n, m in enumerate(self.member_networks):
            if not isinstance(m, NetworkConfig):
                raise ValueError(f"stage {short(self.name)}: member_networks[{n}] is not a network configuration")
            if (m.spatial_dims, m.in_channels, m.out_channels) != (net.spatial_dims, net.in_channels, net.out_channels):
                raise ValueError(f"stage {short(self.name)}: member_networks[{n}] ({m.architecture}, {m.spatial_dims}D, "
                                 f"{m.in_channels} -> {m.out_channels} channels) does not take and give what the "
                                 f"stage's network does ({net.spatial_dims}D, {net.in_channels} -> "
                                 f"{net.out_channels} channels)")

    def member_network_configs(self, n: Optional[int] = None) -> List[NetworkConfig]:
        """The network of each of the ``n`` members (default: one per weight file): ``member_networks``, or
        the stage's ``network`` for every member."""
        if self.member_networks:
            return list(self.member_networks)
        return [self.network] * (len(self.weights) if n is None else n)

    def member_statistics(self, n: Optional[int] = None) -> List[Tuple[float, float]]:
        """``(norm_mean, norm_std)`` of each of the ``n`` members (default: one per weight file):
        ``member_norm``, or the stage's for every member."""
        if self.member_norm:
            return [(float(m), float(s)) for m, s in self.member_norm]
        return [(float(self.norm_mean), float(self.norm_std))] * (len(self.weights) if n is None else n)

    def foreground(self, probs):
        """The foreground probability ``(k, j, i)`` from class probabilities ``(C, k, j, i)``."""
        if not self.foreground_channels:
            return probs[self.foreground_channel]
        return sum(probs[int(c)] for c in self.foreground_channels)


@dataclass(frozen=True)
class PostprocessConfig:
    """Stage 4 and the final merge.

    ``fusion``: ``candidate_mean_probability`` (report 000) or
    ``label_assignment`` (report 003; the bundle then has a ``kidney_alone``
    stage): a voxel is kidney where the kidney stage (kidney + tumor) and the
    kidney_alone stage both say so, tumor where a kept candidate is; the rest
    of the kidney stage's region is background. Candidates are chosen by
    report 000's rule in both.

    ``candidate_threshold``: a tumor candidate (connected component of the
    tumor mask) is kept when its mean tumor probability is at least this
    (report 000: 0.8). ``tumor_threshold``: voxel probability that makes a
    voxel a tumor candidate voxel. ``cyst_max_hu``: a candidate whose
    attenuation (median HU of its core, 2 mm inside its edge) is at most this
    many HU (water) is a probable simple cyst, not a tumor, and is rejected
    whatever its probability (Bosniak 2019: homogeneous masses of -9 to 20 HU
    are benign cysts; renal cell carcinoma enhances above that). None (the
    default, so bundles written before this rule behave as they did) turns
    the rule off; new bundles get 20.

    ``min_candidate_ml``: a candidate smaller than this is rejected (listed,
    with the reason) whatever its probability. ``min_listed_ml``: a component
    of the tumor mask smaller than this is a speck, not a candidate: it is not
    listed nor in the candidate map, only counted in one message (an
    uncertain model leaves dozens of them). It may not exceed
    ``min_candidate_ml``, so that nothing stage 4 could keep goes unlisted.
    Both 0 (the default) keep the behaviour of bundles written before; new
    bundles get 0.1 and 0.05 mL, chosen from the 510 tumor components of 369
    real KiTS19/KiTS23 label maps: the smallest tumor of any case is 0.198 mL,
    and all 96 components under 0.05 mL are fragments beside a larger tumor.

    ``tumor_growth_passes`` and ``tumor_growth_mm``: stage 3 sees only stage
    2's kidney (dilated by the tumor stage's ``mask_dilation_mm``), so a
    tumor that bulges out where stage 2 missed it is cut at that rim. When
    kept candidates reach into the rim, stage 3 runs again on the region
    widened to the kept candidates dilated by ``tumor_growth_mm``, at most
    ``tumor_growth_passes`` more times. Stage 3 must have been trained on
    masks that wide (``tumor_mask_extra_mm``). 0 passes (the default, so
    bundles written before behave as they did) is one pass.

    ``min_kidney_contact``: a renal tumor grows from the parenchyma, so it
    borders the kidney over a broad base (the "claw sign"); a mass beside the
    kidney (bowel, spleen, adrenal) touches it over a small part of its
    surface. A candidate whose surface borders stage 2's kidney over less than
    this fraction of its area (0..1) is rejected as probably outside the
    kidney. None (the default, so bundles written before behave as they did)
    turns the rule off.

    ``max_tumors_per_kidney``: of the candidates stage 4 keeps on one kidney,
    only this many, the largest, stay kept; the others are listed as rejected
    (report 002 keeps the largest connected component: 1). None (the
    default) keeps them all.

    ``min_slice_component_mm2``: before candidates are formed, the tumor
    mask loses every 2D connected component of an axial slice smaller than
    this area (report 003 keeps components of more than 64 voxels a slice at
    0.78 mm: 39 mm2). 0 (the default) keeps them all.
    """

    fusion: str = "candidate_mean_probability"
    candidate_threshold: float = 0.8
    tumor_threshold: float = 0.5
    min_candidate_ml: float = 0.0
    horseshoe_crossing_mm: float = 15.0
    cyst_max_hu: Optional[float] = None
    tumor_growth_passes: int = 0
    tumor_growth_mm: float = 0.0
    min_kidney_contact: Optional[float] = None
    min_listed_ml: float = 0.0
    max_tumors_per_kidney: Optional[int] = None
    min_slice_component_mm2: float = 0.0

    def __post_init__(self) -> None:
        if self.max_tumors_per_kidney is not None and (not isinstance(self.max_tumors_per_kidney, int)
                                                       or self.max_tumors_per_kidney < 1):
            raise ValueError(f"max_tumors_per_kidney must be a positive integer or None, "
                             f"got {self.max_tumors_per_kidney!r}")
        if not 0.0 <= self.min_slice_component_mm2 <= 10000.0:
            raise ValueError(f"min_slice_component_mm2 must be from 0 to 10000 mm2, got {self.min_slice_component_mm2!r}")
        if self.fusion not in FUSION_RULES:
            raise ValueError(f"unknown fusion rule {self.fusion!r} (expected one of {FUSION_RULES})")
        if not 0.0 <= self.min_candidate_ml <= 1000.0:
            raise ValueError(f"min_candidate_ml must be from 0 to 1000 mL, got {self.min_candidate_ml!r}")
        if not 0.0 <= self.min_listed_ml <= self.min_candidate_ml:
            raise ValueError(f"min_listed_ml must be from 0 to min_candidate_ml ({self.min_candidate_ml:g} mL), "
                             f"got {self.min_listed_ml!r}: a candidate stage 4 could keep must be listed")
        if not isinstance(self.tumor_growth_passes, int) or not 0 <= self.tumor_growth_passes <= 8:
            raise ValueError(f"tumor_growth_passes must be an integer from 0 to 8, got {self.tumor_growth_passes!r}")
        if not 0.0 <= self.tumor_growth_mm <= 50.0:
            raise ValueError(f"tumor_growth_mm must be from 0 to 50 mm, got {self.tumor_growth_mm!r}")
        if self.min_kidney_contact is not None and not 0.0 <= self.min_kidney_contact <= 1.0:
            raise ValueError(f"min_kidney_contact must be a fraction from 0 to 1, got {self.min_kidney_contact!r}")


@dataclass(frozen=True)
class RuntimeConfig:
    """Settings of a run, not of a model (a predictor's constructor takes only these).

    ``device``: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``. ``tta``: number of
    test-time augmentations (1 = none, at most 12; capped by each stage's own
    ``tta``). ``overlap``: sliding-window overlap fraction. ``sw_batch_size``:
    windows per forward pass. ``precision``: ``auto`` (bf16 on CUDA where
    supported, else fp16 on CUDA, fp32 on CPU) | ``fp32`` | ``bf16`` | ``fp16``.
    ``candidate_threshold``, ``keep_components``, ``tumor_growth_passes``,
    ``tumor_growth_mm``: when set, replace the bundle's values (see
    :class:`PostprocessConfig`). :class:`run_settings.RunSettings` extends it
    with a run's ROI and optional outputs, and reads and writes the command line.
    """

    device: str = "auto"
    tta: int = 1
    overlap: float = 0.25
    sw_batch_size: int = 2
    precision: str = "auto"
    threads: int = 0
    candidate_threshold: Optional[float] = None
    keep_components: Optional[int] = None
    tumor_growth_passes: Optional[int] = None
    tumor_growth_mm: Optional[float] = None


def to_dict(obj: Any) -> Dict[str, Any]:
    """Dataclass to plain JSON-able dict (tuples become lists)."""
    return jsonable(asdict(obj))


def from_dict(cls: Any, data: Dict[str, Any]) -> Any:
    """Build dataclass ``cls`` from a dict, rejecting unknown keys by name."""
    names = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {', '.join(unknown)}")
    kw: Dict[str, Any] = {}
    for k, v in data.items():
        if k == "network" and isinstance(v, dict):
            v = from_dict(NetworkConfig, v)
        elif k == "member_networks" and isinstance(v, list):
            v = tuple(from_dict(NetworkConfig, e) if isinstance(e, dict) else e for e in v)
        elif k == "nnunet" and isinstance(v, dict):
            v = from_dict(NnunetSource, v)
        elif k == "labels" and isinstance(v, dict):
            v = {str(r): tuple(n) for r, n in v.items()}
        elif isinstance(v, list):
            v = tuple(tuple(e) if isinstance(e, list) else e for e in v)
        kw[k] = v
    return cls(**kw)

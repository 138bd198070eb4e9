"""The panel's (or a script's) choices as the core's run settings (``KidneyTumorSegLib.run_settings``).

The choices are those of ``KidneyTumorSegLogic.segment``: device, quality, candidate threshold,
kidney count and tumor growth. A candidate threshold, kidney count or growth choice of None leaves
the model's own value; the panel starts its widgets at the model's values and passes on only those
the user changed (:func:`panelOverrides`), so an imported model runs with its own settings.
"""
from __future__ import annotations

from typing import Dict, Optional

from slicer.i18n import tr as _

# the panel's candidate threshold spin box shows 2 decimals
THRESHOLD_DECIMALS = 2


def runSettings(device="auto", quality="fast", candidateThreshold=None, keepComponents=None, tumorGrowth=None):
    """The core's ``RunSettings`` for these choices (no ROI yet: it needs the exported volume's frame).

    ``device``: "auto", "cpu", "cuda" or "cuda:N" (or the panel's enum); ``quality``: a
    ``presets.Quality`` or its value; ``tumorGrowth``: see :func:`growthPasses`. The candidate
    map is always written: the panel's candidate edits need it. Raises ValueError for an unknown
    quality or growth choice, before anything is written.
    """
    from KidneyTumorSegLib.run_settings import RunSettings

    return RunSettings(
        device=str(getattr(device, "value", device)), tta=qualityTta(quality),
        candidate_threshold=None if candidateThreshold is None else float(candidateThreshold),
        keep_components=None if keepComponents is None else int(keepComponents),
        tumor_growth_passes=growthPasses(tumorGrowth), save_candidates=True)


def qualityTta(value) -> int:
    """Test-time augmentations of a quality choice (a ``presets.Quality`` or its value)."""
    from KidneyTumorSegLib.presets import Quality

    try:
        return Quality(getattr(value, "value", value)).tta
    except ValueError:
        raise ValueError(_("quality must be 'fast', 'balanced' or 'full', not {value!r}").format(value=value)) from None


def growthPasses(value) -> Optional[int]:
    """Tumor growth passes to ask the core for: None (the model's setting) or 0..8.

    ``value``: None, a ``presets.TumorGrowth`` or its value ("model", "off", "1".."3"), or an integer 0..8.
    """
    from KidneyTumorSegLib.presets import TumorGrowth

    value = getattr(value, "value", value)
    if value is None:
        return None
    if isinstance(value, str) and value in {g.value for g in TumorGrowth}:
        return TumorGrowth(value).passes
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 8:
        return value
    raise ValueError(_("tumorGrowth must be None (the model's setting), 'off' or a number of passes from 0 to 8, "
                       "not {value!r}").format(value=value))


def panelOverrides(candidateThreshold: float, keepComponents: int, modelValues: Dict) -> Dict:
    """``candidateThreshold`` / ``keepComponents`` arguments for a run from the panel's values: each is passed
    on only where it differs from the model's own value (``modelValues``, see ``models.modelValues``), else
    None, so that the model's value stays. A model whose values are unknown (it cannot be read) gets none."""
    threshold, components = modelValues.get("candidateThreshold"), modelValues.get("keepComponents")
    # within half the spin box's last digit: the widget's rounding of the model's value, not the user's change
    sameThreshold = threshold is None or abs(candidateThreshold - threshold) <= 0.5 * 10 ** -THRESHOLD_DECIMALS + 1e-9
    return {"candidateThreshold": None if sameThreshold else float(candidateThreshold),
            "keepComponents": None if components is None or keepComponents == components else int(keepComponents)}


def panelValues(modelValues: Dict) -> Dict:
    """The parameter-node values that show the model's own values (``models.modelValues``): those the panel's
    widgets can hold (a threshold 0..1, one or two kidneys)."""
    values = {}
    threshold, components = modelValues.get("candidateThreshold"), modelValues.get("keepComponents")
    if threshold is not None and 0.0 <= threshold <= 1.0:
        values["candidateThreshold"] = float(threshold)
    if components in (1, 2):
        values["keepComponents"] = int(components)
    return values

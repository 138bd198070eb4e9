"""Report 000's four-stage cascade, independent of how each stage predicts.

(1) coarse kidney+tumor foreground at ~3.4 mm -> ROI box with a margin;
(2) fine kidney+tumor foreground in the ROI -> the largest components are
    the kidneys (two, or one where there is one);
(3) tumor probability on each kidney's crop with everything outside that
    kidney set to -1024 HU;
(4) tumor candidates = connected components, kept when their mean
    probability is at least the candidate threshold (report 000: 0.8).

One module per job: :mod:`.run` orchestrates; :mod:`.roi` is stage 1,
:mod:`.predict` runs any stage's predictor on a grid (the predictor
protocol is described there), :mod:`.anatomy` names the kidneys left and
right, :mod:`.crop` cuts stage 3's input (training uses it too),
:mod:`.tumors` is stage 3 with its growth passes, :mod:`.candidates` is
stage 4 and :mod:`.describe` words the result for the user.
"""
from .._lazy import lazy_names

# loaded on first use, as in every subpackage: importing the package imports nothing heavy
_NAMES = {"KidneyCrop": "crop", "kidney_crop": "crop", "Progress": "run", "run_cascade": "run",
          "RoiWorld": "run"}
__all__ = sorted(_NAMES)

__getattr__ = lazy_names(__name__, _NAMES)

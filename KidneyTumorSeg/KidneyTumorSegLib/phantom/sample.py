"""The sample phantom: the CT the Slicer module registers with SampleData and its self-test segments.

One definition for the Slicer side (``KidneyTumorSegSlicer.sampledata``, the
module's ``KidneyTumorSegTest``) and the core's test of the shipped default
model (``Testing/test_default_model.py``), so both check the same case against
the same bar. Importing this module loads nothing heavy (no numpy, no torch).
"""
from __future__ import annotations

SEED = 7
SHAPE = (96, 384, 384)  # array (k, j, i): slices, rows, columns
SPACING = (0.9, 0.9, 3.0)  # (x, y, z) mm, inside the range the default model is trained on
N_TUMORS = 1

# What the shipped default model reaches on the sample phantom, less a margin (fast mode, no TTA):
# the Slicer self-test and the core test fail below these. The preliminary CPU-trained model
# 0.4 (0.3's weights with one tumor growth pass) measured kidney 0.948, tumor 0.652 (0.3: 0.930, 0.342;
# 0.2: 0.926, 0.291; 0.1: 0.921, 0.246); issue 3's bar (0.95 / 0.85) is not met yet, and these rise
# with the model that meets it.
KIDNEY_DICE_MIN = 0.9
TUMOR_DICE_MIN = 0.55


def make_sample_phantom():
    """The sample phantom (a ``Phantom``: ``image``, ``label``, ``info``), the same bytes every time."""
    from . import make_phantom

    return make_phantom(SEED, shape=SHAPE, spacing=SPACING, n_tumors=N_TUMORS)

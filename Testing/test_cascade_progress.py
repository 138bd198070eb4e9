"""Progress within a stage reaches the caller: the sliding window's windows, not only each stage's start and end."""
from __future__ import annotations

from KidneyTumorSegLib.cascade import run_cascade
from KidneyTumorSegLib.config import PostprocessConfig
from KidneyTumorSegLib.engine.reference import reference_predictors

from test_cascade import stages, toy_case


class Halfway:
    """Answers as ``inner`` does, saying it is half done, then done, as a sliding window would."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def predict(self, vol, progress=None):
        if progress is not None:
            progress(0.5)
        out = self.inner.predict(vol)
        if progress is not None:
            progress(1.0)
        return out


def _events(post=PostprocessConfig()):
    image, label = toy_case()
    preds = {role: Halfway(p) for role, p in reference_predictors(label, tumor_probability=1.0).items()}
    events = []
    run_cascade(image, stages(), preds, post, progress=lambda s, f, m: events.append((s, round(f, 3), m)))
    return events


def test_each_stage_reports_its_predictions_progress():
    events = _events()
    assert [e for e in events if e[0] == "roi"] == [
        ("roi", 0.0, "locating kidneys"), ("roi", 0.5, "locating kidneys"), ("roi", 1.0, "locating kidneys"), ("roi", 1.0, "")]
    assert ("kidney", 0.5, "segmenting kidneys") in events
    tumor = [e for e in events if e[0] == "tumor"]
    # two kidneys, one pass each: half of the first kidney is a quarter of the stage
    assert [f for _, f, _ in tumor] == [0.0, 0.25, 0.5, 0.5, 0.75, 1.0, 1.0]
    assert {m for _, _, m in tumor[:-1]} == {"tumors in the left kidney", "tumors in the right kidney"}
    assert [e[0] for e in events if e[2] == "" and e[1] == 1.0] == ["prepare", "roi", "kidney", "tumor", "candidates"]


def test_growth_passes_share_their_kidneys_part_of_the_bar():
    tumor = [f for s, f, _ in _events(PostprocessConfig(tumor_growth_passes=3, tumor_growth_mm=13.0)) if s == "tumor"]
    assert tumor == sorted(tumor) and tumor[0] == 0.0 and tumor[-1] == 1.0
    # the first pass of the first kidney is a quarter of its half, when three growth passes may follow
    assert tumor[1] == 0.062

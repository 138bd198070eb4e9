"""Progress within a stage: the overall fraction, the message, and a throttled event stream.

The core reports many fractions per stage (a sliding window's windows, e.g. ``progress("kidney",
0.13, "window 3 of 24")``). The command line's bar and its events show the overall fraction (the
stages before plus the stage's weight times its fraction) with the message; the event writer passes
at most one event per ``PROGRESS_INTERVAL_S`` per stage, each stage's first and its 0 and 1 always.
"""
from __future__ import annotations

import io

import pytest

from KidneyTumorSegLib.cli_progress import CaseProgress
from KidneyTumorSegLib.events import (PROGRESS_INTERVAL_S, STAGE_ORDER, STAGE_WEIGHTS, EventWriter, overall_fraction,
                                      parse_event, stage_text)


class _Clock:
    """A clock the test moves by hand."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class _Bar:
    """A tqdm stand-in that records what the bar shows."""

    def __init__(self):
        self.total = 0.0
        self.descriptions = []
        self.closed = False

    def set_description(self, text, refresh=True):
        self.descriptions.append(text)

    def update(self, n):
        assert n >= 0
        self.total += n

    def close(self):
        self.closed = True


def _events(stream):
    return [parse_event(line) for line in stream.getvalue().splitlines()]


def _fake_case(progress, clock, windows=24, step_s=0.01):
    """A case as the core will report it: every stage from 0 to 1, the kidney and tumor stages window by window."""
    for stage in STAGE_ORDER:
        progress(stage, 0.0, "")
        if stage in ("kidney", "tumor"):
            for w in range(1, windows + 1):
                clock.now += step_s
                progress(stage, w / windows, f"window {w} of {windows}")
        clock.now += step_s
        progress(stage, 1.0, "")


def test_overall_fraction_is_the_stage_weight_times_its_fraction():
    before_kidney = STAGE_WEIGHTS["prepare"] + STAGE_WEIGHTS["roi"]
    assert overall_fraction("kidney", 0.0) == pytest.approx(before_kidney)
    assert overall_fraction("kidney", 0.5) == pytest.approx(before_kidney + 0.5 * STAGE_WEIGHTS["kidney"])
    assert overall_fraction("write", 1.0) == pytest.approx(1.0)
    assert stage_text("kidney", "window 3 of 24") == "Segmenting kidneys: window 3 of 24"
    assert stage_text("kidney", "") == stage_text("kidney", "Segmenting kidneys") == "Segmenting kidneys"


def test_the_writer_throttles_each_stage_and_always_passes_its_ends():
    stream, clock = io.StringIO(), _Clock()
    writer = EventWriter(stream, clock=clock)
    progress = CaseProgress(writer, "case_1", 1, 2, bar=False)
    _fake_case(progress, clock, windows=100, step_s=0.01)  # 100 windows a second: 10 times the limit
    events = _events(stream)
    by_stage = {s: [e for e in events if e["stage"] == s] for s in STAGE_ORDER}
    for stage, evs in by_stage.items():
        fractions = [e["stage_fraction"] for e in evs]
        assert fractions[0] == 0.0 and fractions[-1] == 1.0, stage
        assert fractions == sorted(fractions), stage
    kidney = by_stage["kidney"]
    assert 8 <= len(kidney) <= 14, len(kidney)  # ~1 s of windows: about 10 events, not 102
    within = [e for e in kidney if 0.0 < e["stage_fraction"] < 1.0]
    assert within and all(e["message"].startswith("window ") for e in within)
    # case 2 of 2: the overall fraction runs from one half to one
    overall = [e["fraction"] for e in events]
    assert overall == sorted(overall) and overall[0] == pytest.approx(0.5) and overall[-1] == pytest.approx(1.0)
    for e in kidney:
        assert e["fraction"] == pytest.approx((1 + overall_fraction("kidney", e["stage_fraction"])) / 2, abs=1e-4)
        assert e["case"] == "case_1" and e["index"] == 1


def test_slow_windows_all_pass_and_a_new_stage_is_never_held_back():
    stream, clock = io.StringIO(), _Clock()
    writer = EventWriter(stream, clock=clock)
    _fake_case(CaseProgress(writer, "c", 0, 1, bar=False), clock, windows=6, step_s=PROGRESS_INTERVAL_S + 0.01)
    kidney = [e["stage_fraction"] for e in _events(stream) if e["stage"] == "kidney"]
    assert kidney == [0.0] + [round(w / 6, 4) for w in range(1, 7)] + [1.0]
    assert [e["stage"] for e in _events(stream)][-1] == "write"
    clock.now += 1.0
    assert writer.progress("c", 0, "kidney", 0.5, 0.4) is True  # True: written
    clock.now += 0.001
    assert writer.progress("c", 0, "kidney", 0.6, 0.45) is False
    assert writer.progress("c", 0, "kidney", 1.0, 0.5) is True


def test_the_bar_shows_the_overall_fraction_and_the_message():
    writer = EventWriter(None)  # no --events: the bar alone
    progress = CaseProgress(writer, "case_7", 0, 1, bar=False)
    progress.bar = _Bar()
    progress("prepare", 0.0, "reorienting")
    progress("kidney", 0.13, "window 3 of 24")
    assert progress.bar.descriptions[-1] == "case_7: Segmenting kidneys: window 3 of 24"
    assert progress.bar.total == pytest.approx(100 * overall_fraction("kidney", 0.13))
    progress("kidney", 0.5, "window 12 of 24")
    progress("kidney", 0.25, "a fraction going back does not move the bar back")
    assert progress.bar.total == pytest.approx(100 * overall_fraction("kidney", 0.5))
    progress("write", 1.0, "done")
    assert progress.bar.total == pytest.approx(100.0)
    progress.close()
    assert progress.bar.closed


def test_without_a_terminal_a_stage_logs_once(caplog):
    import logging

    progress = CaseProgress(EventWriter(None), "case_7", 0, 1, bar=False)
    with caplog.at_level(logging.INFO, logger="kidneytumorseg"):
        for f in (0.0, 0.25, 0.5, 1.0):
            progress("kidney", f, f"window {f}")
    assert [r.getMessage() for r in caplog.records] == ["case_7: Segmenting kidneys"]

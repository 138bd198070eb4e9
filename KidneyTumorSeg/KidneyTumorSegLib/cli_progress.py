"""The progress of one case of ``kidneytumorseg segment``: events for a reader (``--events``, e.g. the
Slicer module) and a progress bar, or log lines when there is no terminal, for a person."""
from __future__ import annotations

import logging
import sys
from typing import Optional

from .events import STAGE_TITLES, EventWriter, overall_fraction, stage_text

log = logging.getLogger("kidneytumorseg")


class CaseProgress:
    """The cascade's ``progress(stage, fraction, message)`` callback for case ``index`` of ``cases``.

    A stage may call it many times (a sliding window's windows): the overall fraction is the case's
    place among the cases plus the stages before and the stage's weight times ``fraction``
    (:func:`events.overall_fraction`); the bar shows it with the message, the event writer passes
    the events on throttled (:meth:`events.EventWriter.progress`).
    """

    def __init__(self, events: EventWriter, case_id: str, index: int, cases: int, bar: bool = True) -> None:
        self.events = events
        self.case_id = case_id
        self.index = index
        self.cases = cases
        self.bar = _bar(case_id) if bar else None
        self._shown = 0.0  # percent of the case the bar shows

    def __call__(self, stage: str, fraction: float, message: str = "") -> None:
        overall = overall_fraction(stage, fraction)
        self.events.progress(self.case_id, self.index, stage, fraction, (self.index + overall) / self.cases,
                             message or STAGE_TITLES.get(stage, stage))
        if self.bar is None:
            if fraction == 0.0:  # a log line per stage, not per window
                log.info("%s: %s", self.case_id, STAGE_TITLES.get(stage, stage))
            return
        self.bar.set_description(f"{self.case_id}: {stage_text(stage, message)}", refresh=False)
        self.bar.update(max(0.0, overall * 100 - self._shown))
        self._shown = max(self._shown, overall * 100)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _bar(case_id: str) -> Optional[object]:
    """A tqdm bar of one case in percent, or None when stderr is not a terminal."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=100, desc=case_id, unit="%", bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}")

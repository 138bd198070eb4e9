"""A machine-readable progress stream: one JSON object per line.

The command line writes it (``--events FILE`` or ``--events -`` for
stderr); the Slicer module runs the command line in a separate process and
reads it with :func:`parse_event`. Every line starts with the marker
``KTS-EVENT `` so it can share a stream with ordinary log lines.

Events (``event`` field):

* ``start``: ``cases`` (number of cases), ``model``, ``device``
* ``progress``: ``case``, ``index`` (0-based case number), ``stage``,
  ``stage_fraction``, ``fraction`` (overall 0..1: the stages before plus
  the stage's weight times ``stage_fraction``), ``message``; a stage may
  report many fractions (a sliding window's windows), of which the writer
  passes at most one per :data:`PROGRESS_INTERVAL_S` (each stage's first
  and its fractions 0 and 1 always)
* ``case_done``: ``case``, ``status``, ``outputs`` (name -> path), ``messages``
* ``case_failed``: ``case``, ``error``
* ``done``: ``ok``, ``failed``
"""
from __future__ import annotations

import json
import threading
import time
from typing import IO, Any, Callable, Dict, Optional, Tuple

MARKER = "KTS-EVENT "
STAGE_ORDER = ("prepare", "roi", "kidney", "tumor", "candidates", "write")
STAGE_WEIGHTS = {"prepare": 0.05, "roi": 0.15, "kidney": 0.3, "tumor": 0.35, "candidates": 0.05, "write": 0.1}
STAGE_TITLES = {
    "prepare": "Preparing",
    "roi": "Locating kidneys",
    "kidney": "Segmenting kidneys",
    "tumor": "Segmenting tumors",
    "candidates": "Choosing tumor candidates",
    "write": "Writing results",
}
PROGRESS_INTERVAL_S = 0.1  # at most ~10 progress events a second per stage: readers redraw on each


def overall_fraction(stage: str, stage_fraction: float) -> float:
    """Fraction of one case done when ``stage`` is ``stage_fraction`` done."""
    done = 0.0
    for s in STAGE_ORDER:
        if s == stage:
            return min(1.0, done + STAGE_WEIGHTS[s] * max(0.0, min(1.0, stage_fraction)))
        done += STAGE_WEIGHTS[s]
    return done


def stage_text(stage: str, message: str = "") -> str:
    """What a progress display shows: the stage's title, and the message when it says more."""
    title = STAGE_TITLES.get(stage, stage)
    return title if not message or message == title else f"{title}: {message}"


class EventWriter:
    """Writes events to a text stream, one flushed line each (thread-safe); ``clock`` times the
    progress throttle (:meth:`progress`)."""

    def __init__(self, stream: Optional[IO[str]], min_interval: float = PROGRESS_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.min_interval = min_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._last_progress: Dict[Tuple[Any, str], float] = {}  # (case index, stage) -> when last written

    def progress(self, case: Any, index: int, stage: str, stage_fraction: float, fraction: float,
                 message: str = "") -> bool:
        """Write a ``progress`` event unless this stage of this case wrote one less than ``min_interval``
        seconds ago; a stage's first event and its fractions 0 and 1 are always written. True if written."""
        key, now = (index, stage), self._clock()
        last = self._last_progress.get(key)
        if last is not None and 0.0 < stage_fraction < 1.0 and now - last < self.min_interval:
            return False
        self._last_progress[key] = now
        self.emit("progress", case=case, index=index, stage=stage, stage_fraction=round(stage_fraction, 4),
                  fraction=round(fraction, 4), message=message)
        return True

    def emit(self, event: str, **fields: Any) -> None:
        if self.stream is None:
            return
        line = MARKER + json.dumps(dict(event=event, **fields), separators=(",", ":"), default=str)
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()


def parse_event(line: str) -> Optional[Dict[str, Any]]:
    """The event in ``line``, or ``None`` for a line that is not an event (log output)."""
    line = line.strip()
    if not line.startswith(MARKER):
        return None
    try:
        obj = json.loads(line[len(MARKER):])
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or "event" not in obj:
        return None
    return obj
